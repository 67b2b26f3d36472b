"""The experiment runner (verdicts, caching, outputs), the lesion option of the CIFAR ResNets, and each experiment's
``smoke`` budget end to end (the files and their structure, not the verdicts)."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax import nn as cnn
from cnnjax.models.cifar_resnet import CifarBasicBlock, block_names, downsampling_blocks, lesion_mask
from cnnjax.models.layers import ConvNormAct
from train.experiments import runner as R

# ------------------------------------------------------------------------------------------------ verdict()


@pytest.mark.parametrize("test", ["welch", "bootstrap"])
def test_verdict_supported_not_supported_mixed(test):
    hi, lo = [1.0, 1.1, 0.9, 1.05], [0.0, 0.1, -0.1, 0.05]
    v = R.verdict(hi, lo, "greater", "a > b", test=test)
    assert v.verdict == "supported" and v.low > 0 and v.diff == pytest.approx(1.0)
    assert R.verdict(hi, lo, "less", test=test).verdict == "not supported"  # the opposite direction
    assert R.verdict(lo, hi, "less", test=test).verdict == "supported"
    assert R.verdict(lo, hi, "greater", test=test).verdict == "not supported"
    overlap = R.verdict([0.0, 1.0, 2.0], [0.5, 1.5, 0.9], "greater", test=test)
    assert overlap.verdict == "mixed" and overlap.low < 0 < overlap.high
    assert test.split()[0] in {"welch": "welch", "bootstrap": "bootstrap"}[test]
    assert ("Welch" if test == "welch" else "bootstrap") in v.test


def test_verdict_welch_matches_scipy():
    from scipy import stats

    a, b = [3.1, 2.9, 3.4, 3.0], [2.0, 2.6, 2.2]
    diff, lo, hi = R.welch_interval(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high)) and diff == pytest.approx(np.mean(a) - np.mean(b))


def test_verdict_edge_cases():
    one = R.verdict([1.0], [0.0], "greater")  # one seed: no interval
    assert one.verdict == "mixed" and math.isinf(one.low) and math.isinf(one.high)
    assert R.verdict([1.0, 1.0], [0.0, 0.0], "greater").verdict == "supported"  # no spread: the point itself
    assert R.verdict([1.0, 1.0], [1.0, 1.0], "greater").verdict == "mixed"
    # against a threshold (one-sample t interval)
    assert R.verdict([0.9, 0.92, 0.88], 0.5, "greater").verdict == "supported"
    assert R.verdict([0.9, 0.92, 0.88], 0.5, "less").verdict == "not supported"
    assert R.verdict([0.4, 0.6, 0.5], 0.5, "less").verdict == "mixed"
    with pytest.raises(ValueError, match="direction"):
        R.verdict([1.0], [0.0], "up")
    with pytest.raises(ValueError, match="test"):
        R.verdict([1.0], [0.0], "less", test="z")
    line = R.verdict([1.0, 1.1], [0.0, 0.1], "greater", "x beats y").line()
    assert "supported" in line and "x beats y" in line and "95% CI" in line


def test_write_outputs(tmp_path):
    claim = R.Claim("глубже — хуже", "deeper is worse", "He et al. 2015, Fig. 6")
    v = R.verdict([1.0, 1.2, 1.1], [0.2, 0.1, 0.3], "greater", "deep > shallow")
    text = R.write_outputs(tmp_path, "demo", "smoke", claim, "setup", R.markdown_table(["a", "b"], [[1, 2]]),
                           [v], {"runs": [], "x": np.float32(1.5)}, ["demo.png"])
    assert (tmp_path / "table.md").read_text() == text
    for part in ("«глубже — хуже»", "deeper is worse", "He et al. 2015", "| a | b |", "**supported**", "Welch",
                 "![demo.png](demo.png)"):
        assert part in text
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["experiment"] == "demo" and res["verdicts"][0]["verdict"] == "supported" and res["x"] == 1.5
    assert R.fmt([1.0, 3.0], 2) == "2.00 ± 1.41"


def test_runner_caches_and_sweep(tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg, log):
        calls.append((cfg.arch, cfg.lr, cfg.seed))
        (tmp := __import__("pathlib").Path(cfg.workdir)).mkdir(parents=True, exist_ok=True)
        (tmp / "config.json").write_text(json.dumps({"arch": cfg.arch, "lr": cfg.lr, "seed": cfg.seed}))
        if cfg.lr > 0.5:
            from cnnjax.training.loop import NonFiniteLossError

            raise NonFiniteLossError("nan")
        return {"val_top1": 1 - abs(cfg.lr - 0.1), "val_loss": 0.1, "train_loss": 0.2, "workdir": cfg.workdir}

    monkeypatch.setattr(R, "train_run", fake_train)
    runner = R.Runner(tmp_path, log=lambda s: None)
    base = R.TrainConfig(arch="resnet20", epochs=1)
    lr, rows = R.sweep_lr(runner, base, [0.01, 0.1, 1.0], seed=3)
    assert lr == 0.1 and rows[2]["diverged"] and rows[2]["val_top1"] == 0.0
    assert len(calls) == 3
    again, _ = R.sweep_lr(runner, base, [0.01, 0.1, 1.0], seed=3)  # all cached
    assert again == 0.1 and len(calls) == 3
    rec = runner.record(rows[1]["run_id"])
    assert rec["config"]["lr"] == 0.1 and rec["final"]["val_top1"] == pytest.approx(1.0) and "seconds" in rec
    with pytest.raises(ValueError, match="another --out"):  # a cached run trained differently
        runner.run(rows[1]["run_id"], R.dataclasses.replace(base, lr=0.2, seed=3))


# ---------------------------------------------------------------------------------------------- lesion option


def _variables(arch, seed=0):
    model = models.create(arch, num_classes=10, in_channels=1)
    x = jnp.zeros((1, 16, 16, 1))
    v = jax.jit(model.init)(jax.random.key(seed), x)  # one compile (an eager init compiles op by op)
    # non-trivial BatchNorm statistics (a small spread around the init's, so that the plain net's signal
    # survives 20 layers in inference mode), so that a wrong path shows
    stats = jax.tree.map(lambda a: a * (1 + 0.05 * jax.random.uniform(jax.random.key(seed + 1), a.shape))
                         + 0.01 * jax.random.normal(jax.random.key(seed + 2), a.shape), v["batch_stats"])
    return model, {"params": v["params"], "batch_stats": stats}


def _manual(arch, variables, x, dropped):
    """The network computed block by block, with the blocks in ``dropped`` replaced by their shortcut path."""
    depth = int(arch.removeprefix("resnet").split("_")[0])
    skip = not arch.endswith("_plain")
    model = models.create(arch)
    conv, norm = model.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out), model.norm_def(False)
    p, s = variables["params"], variables["batch_stats"]
    x = ConvNormAct(16, 3, conv, norm).apply({"params": p["stem"], "batch_stats": s["stem"]}, x)
    n = (depth - 2) // 6
    for i, name in enumerate(block_names(depth)):
        width, stride = (16, 32, 64)[i // n], 2 if i in downsampling_blocks(depth) else 1
        if i in dropped:
            if stride == 2:
                x = x[:, ::2, ::2, :]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (width // 4, width // 4)))
            continue
        x = CifarBasicBlock(width, stride, conv, norm, skip=skip).apply({"params": p[name], "batch_stats": s[name]},
                                                                        x)
    return x.mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.slow  # ~16 s for resnet20 alone
@pytest.mark.parametrize("arch", ["resnet20", "resnet20_plain"])
def test_lesion_drop_blocks_is_the_net_without_them(arch):
    model, v = _variables(arch)
    x = jax.random.normal(jax.random.key(5), (3, 16, 16, 1))
    full = model.apply(v, x)
    np.testing.assert_allclose(_manual(arch, v, x, ()), full, rtol=1e-4, atol=1e-5)  # the manual net is the net
    np.testing.assert_array_equal(models.create(arch, num_classes=10, in_channels=1, drop_blocks=()).apply(v, x),
                                  full)  # removing none: unchanged
    np.testing.assert_array_equal(model.apply({**v, "lesion": lesion_mask(20, jnp.ones(9))}, x), full)
    for dropped in [(1,), (3,), (6,), (0, 4, 8)]:  # 3 and 6 are the downsampling blocks
        want = _manual(arch, v, x, dropped)
        got = models.create(arch, num_classes=10, in_channels=1, drop_blocks=dropped).apply(v, x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        keep = jnp.ones(9).at[jnp.array(dropped)].set(0.0)
        np.testing.assert_allclose(model.apply({**v, "lesion": lesion_mask(20, keep)}, x), want, rtol=1e-4,
                                   atol=1e-5)
        assert not np.allclose(got, full)


def test_lesion_bad_index():
    x = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)  # shapes only: the check runs while tracing
    v = jax.eval_shape(lambda x: models.create("resnet20", num_classes=10, in_channels=1).init(jax.random.key(0), x), x)
    with pytest.raises(ValueError, match=r"drop_blocks: block indices must be in 0..8 for depth 20, got \[9\]"):
        jax.eval_shape(models.create("resnet20", num_classes=10, in_channels=1, drop_blocks=(9,)).apply, v, x)
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        jax.eval_shape(models.create("resnet20", num_classes=10, in_channels=1, drop_blocks=(-1,)).apply, v, x)
    ok = models.create("resnet20", num_classes=10, in_channels=1, drop_blocks=(0, 8))  # the ends of the range
    assert jax.eval_shape(ok.apply, v, x).shape == (1, 10)
    assert downsampling_blocks(56) == [9, 18] and len(block_names(56)) == 27


def test_digits_pad_option():
    from cnnjax import data as cdata

    assert cdata.load("digits").pad == 2 and cdata.load("digits:pad=0").pad == 0
    src = cdata.load("digits:pad=0,per_class=3")
    a = next(iter(src.batches("train", 30, epoch=0)))
    b = next(iter(src.batches("train", 30, epoch=0)))
    np.testing.assert_array_equal(a["image"], b["image"])
    plain = next(iter(src.plain_batches("train", 30)))
    # without augmentation the (shuffled) training images are exactly the un-augmented ones
    assert sorted(map(bytes, a["image"])) == sorted(map(bytes, plain["image"]))
    with pytest.raises(ValueError, match="pad"):
        cdata.load("digits:pad=-1")


# ------------------------------------------------------------------------------------------- smoke budgets


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    from train.experiments.__main__ import main

    base = tmp_path_factory.mktemp("experiments")
    assert main(["degradation", "--budget", "smoke", "--out", str(base / "degradation")]) == 0
    return base


def _check_outputs(out, name, png):
    res = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert res["experiment"] == name and res["budget"] == "smoke" and res["verdicts"]
    for v in res["verdicts"]:
        assert v["verdict"] in ("supported", "not supported", "mixed") and "95%" in v["test"]
    assert "**Lecture:** «" in table and "**Literature:**" in table and "**Verdicts**" in table
    assert (out / png).stat().st_size > 1000
    return res, table


@pytest.mark.slow  # ~45 s for the three (plus landscape's ~10 s): the full suite runs them
def test_degradation_smoke(smoke_out):
    out = smoke_out / "degradation"
    res, table = _check_outputs(out, "degradation", "degradation.png")
    assert {r["config"]["arch"] for r in res["runs"]} == {"resnet20", "resnet20_plain"}
    for r in res["runs"]:
        assert r["metrics"] and r["final"]["train_loss"] > 0 and r["config"]["dataset"].startswith("digits:pad=0")
    assert "`resnet20_plain`" in table and set(res["lr"]) == {"resnet20", "resnet20_plain"}
    mtime = (out / "runs" / res["runs"][0]["run_id"] / "result.json").stat().st_mtime
    from train.experiments import degradation

    degradation.run(out, "smoke", log=lambda s: None)  # everything cached: nothing retrains
    assert (out / "runs" / res["runs"][0]["run_id"] / "result.json").stat().st_mtime == mtime


@pytest.mark.slow  # ~45 s for the three (plus landscape's ~10 s): the full suite runs them
def test_gradients_smoke(smoke_out):
    from train.experiments import gradients

    gradients.run(smoke_out / "gradients", "smoke", log=lambda s: None)
    res, _ = _check_outputs(smoke_out / "gradients", "gradients", "gradients.png")
    assert not (smoke_out / "gradients" / "runs").exists()  # reused degradation's runs
    for s in res["stats"].values():
        for when in ("init", "epoch1"):
            assert len(s[when]["grad_rms"]) == 9 and all(g > 0 for g in s[when]["grad_rms"])
            assert len(s[when]["act_rms"]) == 9


@pytest.mark.slow  # ~45 s for the three (plus landscape's ~10 s): the full suite runs them
def test_lesion_smoke(smoke_out):
    from train.experiments import lesion

    lesion.run(smoke_out / "lesion", "smoke", log=lambda s: None)
    res, _ = _check_outputs(smoke_out / "lesion", "lesion", "lesion.png")
    assert res["downsampling_blocks"] == {"20": [3, 6]}
    for r in res["lesions"].values():
        assert len(r["single"]) == 9 and set(r["random"]) == {"1", "2"} and 0 <= r["baseline"] <= 1


@pytest.mark.slow  # ~10 s on top of the degradation smoke runs
def test_landscape_smoke(smoke_out):
    from train.experiments import landscape

    out = smoke_out / "landscape"
    landscape.run(out, "smoke", log=lambda s: None)
    res, table = _check_outputs(out, "landscape", "landscape.png")
    assert (out / "landscape_roughness.png").stat().st_size > 1000
    assert not (out / "runs").exists()  # reused degradation's runs
    assert {r["arch"] for r in res["landscapes"].values()} == {"resnet20", "resnet20_plain"}
    for r in res["landscapes"].values():
        surface = np.asarray(r["surface"])
        assert surface.shape == (3, 3) and np.all(np.isfinite(surface)) and np.all(surface > 0)
        assert 0 <= r["nonconvex_share"] <= 1 and r["lam_min"] <= r["lam_max"] and r["lam_max"] > 0
        assert r["images"] == 32 and len(r["ritz"]) <= 4
    assert "non-convex share" in table and "|λ_min / λ_max|" in table
    cached = sorted((out / "grids").iterdir())
    assert len(cached) == 2
    mtime = cached[0].stat().st_mtime
    landscape.run(out, "smoke", log=lambda s: None)  # the grids are cached: nothing is recomputed
    assert cached[0].stat().st_mtime == mtime
@pytest.mark.slow  # ~20 s: 2 runs of 4 steps
def test_inductive_bias_smoke(tmp_path):
    from train.experiments.__main__ import main

    out = tmp_path / "inductive-bias"
    assert main(["inductive-bias", "--budget", "smoke", "--out", str(out)]) == 0
    res, table = _check_outputs(out, "inductive-bias", "inductive_bias.png")
    assert {(r["config"]["arch"], tuple(r["config"]["model_opt"])) for r in res["runs"]} == {
        ("mlp", ("hidden=(768, 256)",)), ("lenet5_modern", ())}
    for r in res["runs"]:  # equal budget: same data, steps and batch for every model, one evaluation at the end
        assert r["config"]["dataset"] == "digits:pad=0,per_class=10" and r["config"]["max_steps"] == 4
        assert r["config"]["batch_size"] == 20 and len(r["metrics"]) == 1
        assert r["final"]["step"] == 4 and 0 <= r["final"]["val_top1"] <= 1
    assert res["params"]["digits"] == {"mlp_1m": 986_634, "lenet5_modern": 61_706}
    assert len(res["verdicts"]) == 1 and "`lenet5_modern`" in table and "train − val" in table


def test_inductive_bias_params_and_verdicts():
    from train.experiments import inductive_bias as ib

    shapes, digits = ib.Data("shapes", (10, ib.ALL), 1, (1e-3,)), ib.Data("digits", (10, ib.ALL), 1, (1e-3,))
    assert ib.count_params(ib.MLP_10M, shapes) == 9_969_158 and ib.count_params(ib.LENET, shapes) == 61_666
    assert ib.count_params(ib.MLP_10M, digits) == 5_776_906 and ib.count_params(ib.MLP_1M, shapes) == 952_606
    assert ib.count_params(ib.RESNET8, digits) == 75_002 and ib.count_params(ib.MLP_1M, digits) == 986_634
    assert ib.data_info(shapes.spec(10))[:2] == (60, 6)  # balanced: 10 of each of the 6 shapes
    budget = dataclasses.replace(ib.BUDGETS["default"], data=(digits,))
    val = {"mlp_10m": 0.80, "mlp_1m": 0.70, "lenet5_modern": 0.79, "resnet8": 0.90}
    gap = {"mlp_10m": 0.20, "mlp_1m": 0.30, "lenet5_modern": 0.10, "resnet8": 0.05}

    def values(d, m, size, key):
        return [(gap if key == "gap" else val)[m] + 0.001 * i for i in range(3)]

    params = {"digits": {"mlp_10m": 5_000_000, "mlp_1m": 1_000_000, "lenet5_modern": 50_000, "resnet8": 75_000}}
    vs = ib.make_verdicts(budget, {}, values, params)
    assert len(vs) == 2 * 4 + 1  # 4 per size, the gap at the smallest size
    got = {v.claim.split(": ", 1)[1][:40]: v.verdict for v in vs if v.claim.startswith("digits, 10/")}
    assert list(got.values()) == ["supported", "supported", "not supported", "supported", "supported"]
    assert "100x its parameters" in vs[1].claim and "20x" in vs[0].claim


def test_inductive_bias_configs_are_an_equal_budget():
    from train.experiments import inductive_bias as ib

    budget = ib.BUDGETS["default"]
    digits = budget.data[0]
    for size in digits.sizes:
        cfgs = [ib.config(budget, digits, size, m, 1e-3, 0) for m in budget.models]
        assert {(c.dataset, c.max_steps, c.batch_size, c.optimizer) for c in cfgs} == {
            (digits.spec(size), digits.steps, budget.batch_size, "adamw")}
        spe = {10: 3, 50: 16, ib.ALL: 47}[size]  # 100 / 500 / 1438 images in batches of 30
        for c in cfgs:  # the same warmup in steps; one evaluation and one checkpoint, at the end
            assert round(c.warmup_epochs * spe) == budget.warmup_steps and c.eval_every * spe >= c.max_steps
            assert c.checkpoint_every == c.max_steps
    assert ib.Data("shapes", (10,), 1, (1e-3,)).spec(10) == "shapes:num_train=60"
    assert ib.MLP_1M.model_opt("shapes") == ("hidden=(300, 100)",) and ib.RESNET8.model_opt("digits") == ("depth=8",)
    assert ib.run_id(digits, ib.ALL, ib.LENET, 1e-3, budget, 2) == "digits-all-lenet5_modern-lr0.001-t150-b30-s2"


@pytest.mark.slow  # ~30 s: a 3-step pretraining, a 3-step linear probe and LP-FT from it
def test_transfer_smoke(tmp_path):
    from train.experiments.__main__ import main

    assert main(["transfer", "--budget", "smoke", "--out", str(tmp_path)]) == 0
    res, table = _check_outputs(tmp_path, "transfer", "transfer.png")
    assert res["pretrain"]["config"]["dataset"] == "mnist5k" and res["pretrain"]["config"]["max_steps"] == 3
    runs = res["runs"]["5"]
    assert set(runs) == {"probe", "lpft"}
    cfg = {m: runs[m]["runs"][0]["config"] for m in runs}
    assert cfg["probe"]["transfer"] == "linear-probe"
    assert cfg["probe"]["init"].endswith(res["pretrain"]["run_id"])
    assert cfg["lpft"]["init"].endswith(runs["probe"]["runs"][0]["run_id"]) and cfg["lpft"]["transfer"] == "finetune"
    for m in runs.values():
        r = m["runs"][0]
        assert r["config"]["dataset"] == "digits:classes=5+6+7+8+9,per_class=5"
        assert all(0 <= r[k] <= 1 for k in ("val_top1", "shifted_top1", "noisy_top1", "train_top1"))
        # the experiment's own val top-1 on the restored weights is the training core's final evaluation
        assert r["val_top1"] == pytest.approx(r["final"]["val_top1"], abs=1e-6)
    assert "LP-FT" in table and "largest train − val gap" in table


def test_transfer_ood_sets_shift_with_zero_fill_and_add_clipped_noise():
    from train.experiments.transfer import ood_sets

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    mean, std = 0.3, 0.4
    sets = ood_sets((raw - mean) / std, mean, std, shift=2, noise=0.5)
    moved = sets["shifted"] * std + mean
    np.testing.assert_allclose(moved[:, 2:, 2:], raw[:, :6, :6], atol=1e-6)
    np.testing.assert_allclose(moved[:, :2], 0, atol=1e-6)
    np.testing.assert_allclose(moved[:, :, :2], 0, atol=1e-6)
    noisy = sets["noisy"] * std + mean
    assert noisy.min() >= -1e-6 and noisy.max() <= 1 + 1e-6 and 0.2 < np.abs(noisy - raw).mean() < 0.5


def test_lecture_quotes_are_verbatim():
    """Every experiment's «quote» is the lecture's own words (its parts, joined by ' […] ', occur in the lecture
    text with Markdown bold and empty link targets removed), not a paraphrase."""
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "shared" / "lecture-cnn-ru.txt"
    if not path.exists():
        pytest.skip("the lecture text is not beside this checkout")
    lecture = path.read_text().replace("**", "").replace("(#)", "")
    from train.experiments import aux_heads, degradation, gradients, inductive_bias, landscape, lesion, shift, transfer

    for module in (degradation, gradients, lesion, landscape, shift, inductive_bias, aux_heads, transfer):
        claim = next(v for v in vars(module).values() if hasattr(v, "lecture_ru"))
        for part in claim.lecture_ru.split(" […] "):
            assert part in lecture, (module.__name__, part)
    assert "Residual-связи решают эту проблему" not in lecture  # the check can fail: a paraphrase is not found


# ---------------------------------------------------------------------------------------------- shift


def test_cifar_resnet_pool_option():
    x = jax.ShapeDtypeStruct((2, 24, 24, 3), jnp.float32)
    heads = {}
    for pool in ("avg", "flatten"):
        m = models.create("resnet20", num_classes=6, in_channels=3, depth=8, pool=pool)
        v = jax.eval_shape(lambda x, m=m: m.init(jax.random.key(0), x), x)
        assert jax.eval_shape(lambda v, x, m=m: m.apply(v, x), v, x).shape == (2, 6)
        assert jax.eval_shape(lambda v, x, m=m: m.apply(v, x, method="features"), v, x).shape == (2, 6, 6, 64)
        heads[pool] = v["params"]["head"]["kernel"].shape
    assert heads == {"avg": (64, 6), "flatten": (6 * 6 * 64, 6)}
    with pytest.raises(ValueError, match="pool"):
        models.create("resnet20", pool="max")
    from train.config import model_options

    assert model_options("resnet20", ["pool=flatten", "depth=8"]) == {"pool": "flatten", "depth": 8}


def test_shift_probe_images_and_normalisation():
    from cnnjax import data as cdata
    from cnnjax.data.shapes import render_shapes
    from train.experiments import shift

    p = shift.probe_images(20, 24)
    assert p["image"].shape == (20, 24, 24, 3) and p["label"].shape == (20,)
    touched = p["alpha"].max(axis=1) > 0  # (N, W): columns the shape covers
    assert touched.any(1).all() and not touched[:, 12:].any()  # wholly in the left half: a 12 px roll keeps it whole
    src = cdata.load("shapes:train_region=left,val_region=left,num_train=40,num_val=10,image_size=24")
    val = next(iter(src.plain_batches("val", 10)))
    raw = render_shapes(10, 24, region="left", seed=0, stream=1)["image"]
    np.testing.assert_allclose(shift.normalise(raw, src.info.mean, src.info.std), val["image"], atol=1e-5)


def test_shift_feature_equivariance_and_accuracy():
    from train.experiments import shift

    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 2))
    sub = lambda a: a[:, ::4, ::4, :]  # noqa: E731  stride-4 subsampling: equivariant only for multiples of 4
    err = shift.feature_equivariance(sub, x, [2, 4, 8])
    assert err[1] < 1e-6 and err[2] < 1e-6 and err[0] > 0.5
    pooled = lambda a: a.mean((1, 2))  # noqa: E731  global average pooling: invariant to circular shifts
    labels = jnp.argmax(pooled(x), -1)
    assert shift.shifted_accuracy(pooled, x, labels, [0, 3, 7]) == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_shift_smoke(tmp_path):
    from train.experiments.__main__ import main

    out = tmp_path / "shift"
    assert main(["shift", "--budget", "smoke", "--out", str(out)]) == 0
    res, table = _check_outputs(out, "shift", "shift_accuracy.png")
    assert (out / "shift_equivariance.png").stat().st_size > 1000
    assert set(res["evaluations"]) == {"mlp", "resnet8_flatten", "resnet8", "resnet8_blurpool"}
    assert res["shifts"][0] == 0 and res["shifts"][-1] == 12 and len(res["verdicts"]) == 7
    for model, evs in res["evaluations"].items():
        for e in evs:
            assert len(e["shift_accuracy"]) == len(res["shifts"]) and 0 <= e["consistency"] <= 1
            assert (e["feature_equivariance"] is None) == (model == "mlp")
    opts = {r["run_id"]: r["config"]["model_opt"] for r in res["runs"]}
    assert any("antialias=True" in o for o in opts.values()) and any("pool='flatten'" in o for o in opts.values())
    assert "`resnet8_blurpool`" in table


def test_exact_verdict_of_deterministic_counts():
    v = R.verdict([18.0], [25.0], "less", "two 3x3 < one 5x5", test="exact")
    assert (v.verdict, v.diff, v.low, v.high) == ("supported", -7.0, -7.0, -7.0) and "95%" in v.test
    assert R.verdict([0.106], 0.5, "greater", test="exact").verdict == "not supported"
    with pytest.raises(ValueError, match="deterministic"):  # a sampled quantity is not a count
        R.verdict([0.1, 0.2], 0.5, "greater", test="exact")


@pytest.mark.slow  # ~7 s: four ImageNet nets traced at 224x224
def test_param_audit_smoke(tmp_path):
    """No training: the counts at 224x224 in seconds. Kernel stacks: the traced fields equal r and the parameters
    the closed form 9·(r-1)/2·C² vs r²·C²; inception3a's counterfactual from its conv shapes."""
    from train.experiments import param_audit as P

    P.run(tmp_path, "smoke", log=lambda s: None)
    res, table = _check_outputs(tmp_path, "param-audit", "param_audit.png")
    for r, k in res["kernels"].items():
        r = int(r)
        assert k["stack"]["field"] == k["single"]["field"] == r
        assert (k["stack"]["params"], k["single"]["params"]) == (9 * (r - 1) // 2 * P.WIDTH**2, r * r * P.WIDTH**2)
    inc = res["inception3a"]
    assert inc["without_1x1"]["params"] == 64 * 192 + 128 * 9 * 192 + 32 * 9 * 192 + 32 * 192 + 2 * 256
    assert res["splits"]["vgg16"]["params"] == 138_357_544 and res["splits"]["alexnet"]["params"] == 61_100_840
    assert [v["verdict"] for v in res["verdicts"]][:3] == ["supported", "supported", "not supported"]
    assert all(v["verdict"] == "supported" for v in res["verdicts"][3:])
    assert "| vgg16 |" in table and "inception3a" in table


def test_param_audit_reads_inception_widths_off_the_model():
    """The branch widths come from the built block's rows, not a table: inception3a and 4a as in Szegedy et al.
    2014, Table 1 (#1x1, #3x3, #5x5 — torchvision's 3x3 — and pool proj; 192 and 480 input channels)."""
    from cnnjax import models, summary
    from train.experiments.param_audit import block_branches

    rows, _ = summary.summarize(models.create("googlenet", aux_logits=False), 224)
    got = {b: block_branches([r for r in rows if r.path.startswith(f"{b}/")]) for b in ("inception3a", "inception4a")}
    assert got == {
        "inception3a": (192, {"branch1": (64, 1), "branch2": (128, 3), "branch3": (32, 3), "branch4": (32, 1)}),
        "inception4a": (480, {"branch1": (192, 1), "branch2": (208, 3), "branch3": (48, 3), "branch4": (64, 1)})}


@pytest.mark.slow  # ~15 s: 2 runs of 4 steps
def test_augmentation_smoke(tmp_path):
    from train.experiments.__main__ import main

    assert main(["augmentation", "--budget", "smoke", "--out", str(tmp_path)]) == 0
    res, table = _check_outputs(tmp_path, "augmentation", "augmentation.png")
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    by_cond = {r["config"]["augment"]: r for r in res["runs"]}
    assert set(by_cond) == {"none", "rot180"}
    assert {r["config"]["dataset"] for r in res["runs"]} == {"digits:pad=0,per_class=10"}
    for r in res["runs"]:
        m = np.asarray(r["matrix"])
        assert m.shape == (10, 10) and m.sum() == 359 and np.trace(m) / 359 == pytest.approx(r["final"]["val_top1"])
    assert "6↔9 confusion" in table


def test_pair_confusion_counts_both_directions():
    from train.experiments.augmentation import pair_confusion

    m = np.zeros((10, 10), int)
    m[6, 6], m[6, 9], m[9, 9], m[9, 6], m[2, 5] = 8, 2, 5, 5, 3
    assert pair_confusion(m.tolist(), (6, 9)) == pytest.approx(7 / 20)
    assert pair_confusion(m.tolist(), (2, 5)) == pytest.approx(3 / 3) and pair_confusion(m.tolist(), (1, 3)) == 0


@pytest.mark.slow  # ~20 s: 5 runs of 1 epoch on 120 images
def test_reproducibility_smoke(tmp_path):
    from train.experiments import reproducibility as P

    P.run(tmp_path, "smoke", log=lambda s: None)
    res, table = _check_outputs(tmp_path, "reproducibility", "reproducibility.png")
    assert res["distance_rerun"] == [0.0] * len(res["steps"])  # same seed, same algorithm: bit-identical
    assert all(d > 0 for c in res["distance"]["gemm"] for d in c)  # gemm sums in another order
    assert min(res["distance_seed"]) > 100 * max(max(c) for c in res["distance"]["gemm"])
    assert res["verdicts"][0]["verdict"] == "supported" and "`gemm`" in table


def test_parameter_distance_is_relative_l2():
    from train.experiments.reproducibility import distance

    a = {"w": np.array([3.0, 4.0]), "b": {"c": np.array([0.0])}}
    b = {"w": np.array([0.0, 0.0]), "b": {"c": np.array([1.0])}}
    assert distance(a, b) == pytest.approx(math.sqrt(26.0)) and distance(a, a) == 0.0


@pytest.mark.slow  # ~20 s: 2 runs of 3 steps (depth 3 at 16x16)
def test_downsampling_smoke(tmp_path):
    from train.experiments.__main__ import main

    assert main(["downsampling", "--budget", "smoke", "--out", str(tmp_path)]) == 0
    res, table = _check_outputs(tmp_path, "downsampling", "downsampling.png")
    assert [r["config"]["model_opt"] for r in res["runs"]] == [["depth=3", "downsample='max'"],
                                                                ["depth=3", "downsample='blur'"]]
    for evals in res["evaluations"].values():
        for e in evals:
            assert 0 <= e["consistency"] <= 1 and e["val_top1"] == pytest.approx(
                next(r for r in res["runs"] if r["run_id"] == e["run_id"])["final"]["val_top1"], abs=1e-6)
    assert set(res["summary"]["max"]["params"]) == set(res["summary"]["blur"]["params"])
    assert "`blur` (MaxBlurPool (Zhang))" in table and "consistency %" in table


def test_downsampling_verdicts_follow_the_numbers():
    from train.experiments.downsampling import make_verdicts

    s = {"max": {"consistency": [0.80, 0.81, 0.79], "val_top1": [0.9, 0.91, 0.9]},
         "blur": {"consistency": [0.90, 0.91, 0.89], "val_top1": [0.8, 0.81, 0.8]}}
    by = {v.claim.split(" (")[0]: v.verdict for v in make_verdicts(s)}
    assert by == {"BlurPool is more shift-consistent than max pooling": "supported",
                  "BlurPool is more accurate than max pooling": "not supported"}


@pytest.mark.slow  # ~15 s: 2 runs of 2 epochs on 50 digits
def test_activations_smoke(tmp_path):
    from train.experiments import activations as A

    res = A.run(tmp_path, "smoke", log=lambda s: None)
    res2, table = _check_outputs(tmp_path, "activations", "activations.png")
    assert set(res["summary"]["lenet5"]) == {"relu", "tanh"}
    assert {r["config"]["model_opt"][-1] for r in res2["runs"]} == {"act='relu'", "act='tanh'"}
    assert A.epochs_to([{"epoch": 1, "train_top1": 0.5}, {"epoch": 2, "train_top1": 0.8}], 0.25) == 2.0
    assert A.epochs_to([{"epoch": 1, "train_top1": 0.5}], 0.25) == math.inf
    assert "epochs to 25% train error" in table


@pytest.mark.slow  # ~20 s: 4 runs of 2 steps (depths 3 and 4) on 20 digits
def test_vgg_depth_smoke(tmp_path):
    from train.experiments import vgg_depth as V

    res = V.run(tmp_path, "smoke", log=lambda s: None)
    _, table = _check_outputs(tmp_path, "vgg-depth", "vgg_depth.png")
    assert set(res["summary"]["3"]) == {"kaiming"} and set(res["summary"]["4"]) == {"xavier", "bn", "staged"}
    by_id = {r["run_id"]: r for r in res["runs"]}
    staged = by_id[V.run_id("staged", 4, V.BUDGETS["smoke"], 0)]["config"]
    source = tmp_path / "runs" / V.run_id("kaiming", 3, V.BUDGETS["smoke"], 0)
    assert staged["init_match"] == "partial" and staged["init"] == str(source)
    assert set(staged["model_opt"]) == {"depth=4", "norm='none'", "conv_init='xavier'"}
    assert "norm='batch'" in by_id[V.run_id("bn", 4, V.BUDGETS["smoke"], 0)]["config"]["model_opt"]
    assert "staged training ends with a lower training loss" in table and "| 4 | `staged` |" in table


def test_vgg_depth_verdicts_follow_the_numbers():
    from train.experiments.vgg_depth import CHANCE, make_verdicts

    stall, trains = [CHANCE, CHANCE - 0.001, CHANCE + 0.001], [0.3, 0.35, 0.25]
    d = {"11": {"xavier": {"train_loss": [1.0, 1.1, 0.9]}, "kaiming": {"train_loss": trains}},
         "30": {"xavier": {"train_loss": stall}, "kaiming": {"train_loss": stall}, "bn": {"train_loss": trains},
                "staged": {"train_loss": [2.0, 2.1, 1.9]}}}
    by = {v.claim: v.verdict for v in make_verdicts(d, 11, 30)}
    assert by == {"depth 30: Kaiming init ends with a lower training loss than Xavier init": "mixed",
                  "depth 30: Xavier init stalls (final training loss above 0.95 ln 10)": "supported",
                  "depth 30: Kaiming init trains (final training loss below 0.5 ln 10)": "not supported",
                  "depth 30: BatchNorm trains (final training loss below 0.5 ln 10)": "supported",
                  "depth 30: BatchNorm ends with a lower training loss than Xavier init without it": "supported",
                  "depth 30: staged training ends with a lower training loss than Xavier init": "supported",
                  "depth 11: Kaiming init ends with a lower training loss than Xavier init": "supported"}


# ------------------------------------------------------------------------------------------- aux-heads


@pytest.mark.slow  # ~160 s (over the 20 s target): 2 GoogLeNet runs of 4 steps, nearly all of it XLA compiling
def test_aux_heads_smoke(tmp_path):
    from train.experiments import aux_heads as A

    res = A.run(tmp_path, "smoke", log=lambda s: None)
    res2, table = _check_outputs(tmp_path, "aux-heads", "aux-heads.png")
    assert [r["config"]["model_opt"] for r in res2["runs"]] == [["aux_logits=True", "width_mult=0.125"],
                                                                 ["aux_logits=False", "width_mult=0.125"]]
    aux, noaux = res2["runs"]
    # the aux run logs the main head's loss apart; its optimised loss adds 0.3 x the two aux heads' losses
    for m in aux["metrics"]:
        assert m["train_loss"] == pytest.approx(m["train_loss_main"] + 0.3 * m["train_loss_aux"], rel=1e-4)
    assert all("train_loss_main" not in m for m in noaux["metrics"])
    assert res["params"]["aux"] > res["params"]["noaux"]
    assert res["summary"]["aux"]["early_train_loss_main"] == [A.main_loss(A.early_row(aux["metrics"], 4))]
    assert "main-head train loss" in table


def test_aux_heads_early_row_and_main_loss():
    from train.experiments.aux_heads import early_row, main_loss

    rows = [{"step": s, "val_top1": 0.1, "train_loss": 2.0} for s in (31, 62, 93, 124)]
    assert early_row(rows, 400)["step"] == 93  # nearest to 100
    assert early_row(rows, 124)["step"] == 31
    assert main_loss({"train_loss": 2.0, "train_loss_main": 1.5}) == 1.5 and main_loss({"train_loss": 2.0}) == 2.0


def test_aux_heads_verdicts_follow_the_numbers():
    from train.experiments.aux_heads import make_verdicts

    s = {"aux": {"final_val_top1": [0.9, 0.91, 0.9], "early_train_loss_main": [1.0, 1.1, 1.0],
                 "early_val_top1": [0.5, 0.5, 0.52]},
         "noaux": {"final_val_top1": [0.8, 0.81, 0.8], "early_train_loss_main": [0.5, 0.6, 0.5],
                   "early_val_top1": [0.5, 0.52, 0.5]}}
    assert [v.verdict for v in make_verdicts(s)] == ["supported", "not supported", "mixed"]
