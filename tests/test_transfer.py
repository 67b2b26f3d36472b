"""Transfer learning semantics: frozen parameters and BatchNorm statistics stay bit-identical, no optimizer state
or weight decay for frozen leaves, no gradient work for them, strict pretrained loading, and the CLI end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_train import (  # noqa: F401
    ROOT,
    _run_until_checkpoint_then_signal,
    assert_trees_equal,
    final_params,
    run_cli,
    run_main,
)

from cnnjax import checkpoint, models, transfer
from cnnjax.training import TrainState, make_train_step

# ------------------------------------------------------------------ the optax-level law, on random trees and masks
TREE = {"stem": {"kernel": jnp.linspace(-1, 1, 12).reshape(3, 4), "bias": jnp.arange(4.0)},
        "body": {"kernel": jnp.ones((4, 4)) * 0.5, "bias": jnp.full((4,), -0.25)},
        "head": {"kernel": jnp.linspace(0.1, 0.9, 8).reshape(4, 2), "bias": jnp.zeros(2)}}
NAMES = ["stem/kernel", "stem/bias", "body/kernel", "body/bias", "head/kernel", "head/bias"]
OPTIMIZERS = {
    "sgd+wd": lambda: optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9)),
    "adamw": lambda: optax.adamw(0.1, weight_decay=0.1),
}


def loss(params):
    x = jnp.ones((2, 3))
    h = jnp.tanh(x @ params["stem"]["kernel"] + params["stem"]["bias"])
    h = jnp.tanh(h @ params["body"]["kernel"] + params["body"]["bias"])
    return jnp.sum((h @ params["head"]["kernel"] + params["head"]["bias"]) ** 2)


def run_steps(tx, params, steps=3):
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def frozen_unchanged(before, after, keep):
    flat_b, flat_a = transfer.paths(before), transfer.paths(after)
    return all(np.array_equal(flat_b[p], flat_a[p]) for p in flat_b if not keep(p))


@pytest.mark.slow  # > 5 s (CI durations)
@settings(max_examples=10)  # a leaf that moves or keeps state shows in any mask; 25 examples: ~6 s
@given(st.sets(st.sampled_from(NAMES), min_size=1, max_size=5), st.sampled_from(sorted(OPTIMIZERS)))
def test_freeze_keeps_frozen_leaves_bit_identical_and_stateless(trainable_names, opt_name):
    keep = lambda path: path in trainable_names  # noqa: E731
    params, state = run_steps(transfer.freeze(OPTIMIZERS[opt_name](), TREE, keep), TREE)
    assert frozen_unchanged(TREE, params, keep)
    assert any(not np.array_equal(transfer.paths(TREE)[p], transfer.paths(params)[p]) for p in trainable_names)
    # no optimizer state of a frozen leaf's shape beyond what the trainable leaves need
    n_state = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim > 0)
    n_trainable = sum(transfer.paths(TREE)[p].size for p in trainable_names)
    assert n_state <= 2 * n_trainable  # adam: two moments per trainable element; frozen ones have none


@given(st.sets(st.sampled_from(NAMES), min_size=1, max_size=5))
def test_negative_optax_masked_does_not_freeze(trainable_names):
    """The trap: ``optax.masked`` passes the raw gradient through for masked-out leaves, so they move."""
    keep = lambda path: path in trainable_names  # noqa: E731
    mask = transfer.labels(TREE, keep)
    mask = jax.tree.map(lambda label: label == "trainable", mask)
    params, _ = run_steps(optax.masked(OPTIMIZERS["sgd+wd"](), mask), TREE)
    frozen_with_gradient = [p for p in NAMES if not keep(p) and p != "stem/kernel" or (p == "stem/kernel"
                                                                                      and not keep(p))]
    assert frozen_with_gradient
    assert not frozen_unchanged(TREE, params, keep)


def test_mode_predicates_and_errors():
    assert transfer.mode_predicate("linear-probe")("head/kernel")
    assert not transfer.mode_predicate("linear-probe")("stage1_block0/conv1/kernel")
    freeze_stem = transfer.mode_predicate("freeze:^(stem|stage1)")
    assert not freeze_stem("stem/conv/kernel") and freeze_stem("stage2_block0/conv1/kernel")
    with pytest.raises(ValueError, match="valid choices: finetune, linear-probe, freeze:<pattern>"):
        transfer.mode_predicate("probe")


# ------------------------------------------------------------------ the real train step on a BN network
@pytest.fixture(scope="module")
def cifar_setup():
    # depth 8: one block per stage (resnet20 has three), the same block and BN code; a third of the compile
    model = models.create("resnet20", num_classes=3, depth=8)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    # non-trivial running statistics so that "unchanged" means something
    bs = jax.tree.map(lambda v: v + 0.1, variables["batch_stats"])
    return model, variables["params"], bs, x


@pytest.mark.parametrize("mode", ["linear-probe", "freeze:^(stem|stage1)"])
def test_train_step_freezes_params_and_batchnorm_statistics(cifar_setup, mode):
    model, params, batch_stats, x = cifar_setup
    keep = transfer.mode_predicate(mode)
    tx = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.5, momentum=0.9))
    train_part, _ = transfer.split(params, keep)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(train_part), rng=jax.random.key_data(jax.random.key(0)))
    step = jax.jit(make_train_step(model, tx, 0.0, keep, transfer.frozen_module_predicate(params, keep)))
    batch = {"image": x, "label": jnp.array([0, 1, 2, 0]), "mask": jnp.ones(4, bool)}
    new = state
    for _ in range(3):
        new, metrics = step(new, batch)
    before, after = transfer.paths(params), transfer.paths(new.params)
    assert all(np.array_equal(before[p], after[p]) for p in before if not keep(p))
    assert any(not np.array_equal(before[p], after[p]) for p in before if keep(p))
    frozen_bn = transfer.frozen_module_predicate(params, keep)
    bs_before, bs_after = transfer.paths(batch_stats), transfer.paths(new.batch_stats)
    frozen_stats = [p for p in bs_before if frozen_bn(p.rsplit("/", 1)[0])]
    assert frozen_stats and all(np.array_equal(bs_before[p], bs_after[p]) for p in frozen_stats)
    moving = [p for p in bs_before if not frozen_bn(p.rsplit("/", 1)[0])]
    if moving:
        assert any(not np.array_equal(bs_before[p], bs_after[p]) for p in moving)
    # optimizer state exists only for trainable leaves
    n_state = sum(a.size for a in jax.tree.leaves(new.opt_state) if a.ndim > 0)
    assert n_state == sum(v.size for p, v in before.items() if keep(p))


def test_linear_probe_costs_little_more_than_inference(cifar_setup):
    """No gradient work for the frozen backbone: XLA's FLOP count of the linear-probe step is far below the full
    fine-tuning step (the backward pass through the convolutions is gone)."""
    model, params, batch_stats, x = cifar_setup
    tx = optax.sgd(0.1)
    batch = {"image": x, "label": jnp.array([0, 1, 2, 0]), "mask": jnp.ones(4, bool)}

    def flops(keep):
        train_part = params if keep is None else transfer.split(params, keep)[0]
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                           opt_state=tx.init(train_part), rng=jax.random.key_data(jax.random.key(0)))
        frozen = None if keep is None else transfer.frozen_module_predicate(params, keep)
        cost = jax.jit(make_train_step(model, tx, 0.0, keep, frozen)).lower(state, batch).cost_analysis()
        return (cost[0] if isinstance(cost, list | tuple) else cost)["flops"]

    probe, full = flops(transfer.mode_predicate("linear-probe")), flops(None)
    assert probe < 0.6 * full, (probe, full)


def test_load_pretrained_is_strict_and_reinitialises_a_different_head():
    src = jax.eval_shape(lambda: models.create("resnet20", num_classes=5).init(jax.random.key(0),
                                                                               jnp.zeros((1, 8, 8, 3))))
    src = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), src)
    dst = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: models.create("resnet20", num_classes=7).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))))
    out, notes = transfer.load_pretrained(dst, src)
    assert np.all(out["params"]["stem"]["conv"]["kernel"] == 0.5)
    assert np.all(out["params"]["head"]["kernel"] == 0.0) and "re-initialised" in notes[0]
    wrong = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: models.create("resnet32", num_classes=7).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))))
    with pytest.raises(ValueError, match="missing .*stage1_block3"):
        transfer.load_pretrained(wrong, src)


# ------------------------------------------------------------------ the CLI, from a cnnjax checkpoint
@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pre") / "shapes"
    assert run_main(["--arch", "lenet5_modern", "--dataset", "shapes:num_train=256,num_val=64", "--batch-size",
                     "32", "--max-steps", "8", "--no-progress", "--workdir", str(workdir)]) == 0  # in-process
    return workdir


@pytest.mark.slow
def test_cli_linear_probe_from_checkpoint_keeps_backbone(pretrained_run, tmp_path, capsys):
    args = ["--arch", "lenet5_modern", "--dataset", "digits:channels=3", "--batch-size", "32", "--max-steps", "6",
            "--no-progress", "--init", str(pretrained_run), "--transfer", "linear-probe"]
    assert run_main([*args, "--workdir", str(tmp_path / "probe")]) == 0  # in-process: the resume test below is not
    assert "head re-initialised" in capsys.readouterr().out
    src = transfer.paths(checkpoint.restore(pretrained_run)["params"])
    dst = transfer.paths(checkpoint.restore(tmp_path / "probe")["params"])
    assert all(np.array_equal(np.asarray(src[p]), np.asarray(dst[p])) for p in src if not p.startswith("head/"))
    assert json.loads((tmp_path / "probe" / "config.json").read_text())["transfer"] == "linear-probe"


@pytest.mark.slow
def test_cli_transfer_resume_is_exact(pretrained_run, tmp_path):
    import signal

    args = ["--arch", "lenet5_modern", "--dataset", "digits:channels=3", "--batch-size", "32", "--max-steps",
            "24", "--checkpoint-every", "4", "--no-progress", "--log-every", "1", "--init", str(pretrained_run),
            "--transfer", "freeze:^c1"]
    assert run_main([*args, "--workdir", str(tmp_path / "ref")]) == 0  # in-process; the killed run is a subprocess
    code, out = _run_until_checkpoint_then_signal([*args, "--workdir", str(tmp_path / "cut")], tmp_path / "cut",
                                                  signal.SIGKILL, min_steps=8)
    assert code == -signal.SIGKILL, out  # killed before the end
    run_cli([*args, "--workdir", str(tmp_path / "cut"), "--resume"])
    assert_trees_equal(final_params(tmp_path / "ref"), final_params(tmp_path / "cut"))


def test_transfer_without_init_is_refused(tmp_path):
    proc = run_cli(["--arch", "lenet5", "--transfer", "linear-probe", "--workdir", str(tmp_path / "x")],
                   check=False)
    assert proc.returncode == 2 and "--transfer needs --init" in proc.stderr


@pytest.mark.slow
def test_cli_linear_probe_from_torchvision_weights(tmp_path, monkeypatch, capsys):
    """`--init torchvision:resnet18` with a cached converted file: the backbone equals the torchvision weights
    after training, the 1000-class head is replaced by a fresh 4-class one."""
    from cnnjax import weights

    model = models.create("resnet18")
    pretrained = jax.device_get(jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 32, 32, 3))))
    name = weights.torchvision_info("resnet18")["url"].rsplit("/", 1)[1].replace(".pth", ".npz")
    weights.export_npz(weights.to_torchvision("resnet18", pretrained), tmp_path / "torchvision" / name)
    from train import main as train_main

    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))  # in-process: the subprocess CLI is tested above
    assert train_main.main(["--arch", "resnet18", "--init", "torchvision:resnet18.DEFAULT", "--transfer",
                            "linear-probe",
                            "--dataset", "synthetic:num_classes=4,image_size=32,num_train=32,num_val=8",
                            "--batch-size", "16", "--max-steps", "2", "--no-progress",
                            "--workdir", str(tmp_path / "tv")]) == 0
    assert "transfer linear-probe from torchvision:resnet18" in capsys.readouterr().out
    config = json.loads((tmp_path / "tv" / "config.json").read_text())  # DEFAULT resolved; synthetic: no PIL val
    assert (config["torchvision_weights"], config["val_preprocess"]) == ("torchvision:resnet18.IMAGENET1K_V1", None)
    after = transfer.paths(checkpoint.restore(tmp_path / "tv")["params"])
    before = transfer.paths(pretrained["params"])
    assert after["head/kernel"].shape == (512, 4)
    assert all(np.array_equal(np.asarray(before[p]), np.asarray(after[p])) for p in before if not p.startswith("head/"))


# ------------------------------------------------------------------ linear-probe feature cache
@pytest.mark.parametrize("arch", [pytest.param("lenet5", marks=pytest.mark.slow), "resnet20", "mlp"])
def test_head_on_cached_features_recomposes_the_model(arch):
    """head(head_inputs(x)) equals the full model's logits: the cache feeds the head exactly what it sees."""
    model = models.create(arch, num_classes=5, in_channels=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x, False)
    feats = transfer.head_inputs(model, variables, x)
    probe = transfer.HeadOnFeatures(transfer.head_module(model, x))
    logits = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(np.asarray(probe.apply(variables, feats)), logits, rtol=1e-5, atol=1e-6)
    # negative case: features from other images do not give this batch's logits
    wrong = probe.apply(variables, feats[::-1])
    assert not np.allclose(np.asarray(wrong), logits, atol=1e-4)


@pytest.mark.slow
def test_feature_cache_gives_the_same_linear_probe(pretrained_run, tmp_path):
    """On un-augmented data (``shapes``) a cached linear probe trains the same head as the uncached one: same
    batches, same optimizer; the backbone stays bit-identical to the pretrained one in both."""
    from train.config import TrainConfig
    from train.main import train

    results = {}
    for cached in (False, True):
        cfg = TrainConfig(arch="lenet5_modern", dataset="shapes:num_train=96,num_val=40,data_seed=3", batch_size=32,
                          epochs=3, init=str(pretrained_run), transfer="linear-probe", feature_cache=cached,
                          workdir=str(tmp_path / f"cached{cached}"), progress=False)
        results[cached] = train(cfg, log=lambda s: None)
    before = transfer.paths(checkpoint.restore(pretrained_run)["params"])
    after = {c: transfer.paths(checkpoint.restore(tmp_path / f"cached{c}")["params"]) for c in (False, True)}
    for p in before:
        if not p.startswith("head/"):
            assert np.array_equal(np.asarray(before[p]), np.asarray(after[True][p])), p
    for p in ("head/kernel", "head/bias"):
        np.testing.assert_allclose(np.asarray(after[True][p]), np.asarray(after[False][p]), rtol=1e-4, atol=1e-6)
        assert not np.allclose(np.asarray(after[True][p]), np.asarray(before[p]))  # the head did train
    assert results[True]["val_top1"] == pytest.approx(results[False]["val_top1"], abs=1 / 40 + 1e-9)
    assert results[True]["step"] == results[False]["step"] == 9


def test_feature_cache_needs_linear_probe():
    from train.config import TrainConfig, validate

    with pytest.raises(ValueError, match="--feature-cache applies to --transfer linear-probe only"):
        validate(TrainConfig(arch="lenet5", init="x", transfer="finetune", feature_cache=True))


# ------------------------------------------------------------------ partial loading (--init-match partial)
def _vgg_vars(depth: int, classes: int, channels: int, fill: int) -> dict:
    """``vgg_small`` variables with distinct random values per ``fill`` (abstract init, numpy leaves)."""
    model = models.create("vgg_small", depth=depth, num_classes=classes, in_channels=channels)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, channels))))
    rng = np.random.default_rng(fill)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def test_load_pretrained_partial_copies_matching_leaves_and_keeps_the_rest_fresh():
    # source: depth 3 (one conv per stage), RGB, 5 classes; target: depth 6 (two per stage), gray, 7 classes
    src, dst = _vgg_vars(3, 5, 3, fill=1), _vgg_vars(6, 7, 1, fill=2)
    out, notes = transfer.load_pretrained(dst, src, match="partial")
    # written out by hand: conv0 + bn0 of stages 2 and 3 match; stage1/conv0 sees 1 vs 3 input channels, the head
    # 7 vs 5 classes (shape mismatches); conv1/bn1 exist only in the target
    copied = {f"stage{s}/{leaf}" for s in (2, 3) for leaf in ("conv0/kernel", "bn0/scale", "bn0/bias")}
    copied |= {"stage1/bn0/scale", "stage1/bn0/bias"}
    copied_stats = {f"stage{s}/bn0/{k}" for s in (1, 2, 3) for k in ("mean", "var")}
    for collection, want in (("params", copied), ("batch_stats", copied_stats)):
        got, s, d = (transfer.paths(t[collection]) for t in (out, src, dst))
        assert set(got) == set(d)  # the target's tree, leaf for leaf
        for path, leaf in got.items():
            expected = s[path] if path in want else d[path]
            assert np.array_equal(np.asarray(leaf), expected), (collection, path)
        assert want <= set(s) and all(not np.array_equal(s[p], d[p]) for p in want if s[p].shape == d[p].shape)
    got = transfer.paths(out["params"])
    assert got["stage1/conv0/kernel"].shape == (3, 3, 1, 16) and got["head/kernel"].shape == (64, 7)
    assert np.array_equal(got["stage1/conv1/kernel"], transfer.paths(dst["params"])["stage1/conv1/kernel"])
    n_params = len(transfer.paths(dst["params"]))
    assert notes[0] == (f"params: partial init: {len(copied)} of {n_params} leaves copied from the pretrained model, "
                        f"{n_params - len(copied)} kept fresh (3 of them shape mismatches), 0 pretrained leaves unused")
    assert notes[1].startswith(f"batch_stats: partial init: {len(copied_stats)} of 12 leaves copied")
    # the same pair in strict mode still raises, naming a missing leaf and the shape mismatch
    with pytest.raises(ValueError, match=r"missing .*stage1/conv1.*shape mismatches .*stage1/conv0/kernel"):
        transfer.load_pretrained(dst, src)
    with pytest.raises(ValueError, match="strict, partial"):
        transfer.load_pretrained(dst, src, match="loose")
    with pytest.raises(ValueError, match="no leaf"):  # nothing in common: surely the wrong checkpoint
        transfer.load_pretrained(dst, {"params": {"other": {"kernel": np.zeros(3)}}}, match="partial")


def test_init_match_partial_needs_a_cnnjax_init():
    from train.config import TrainConfig, validate

    for init in (None, "torchvision:resnet18"):
        with pytest.raises(ValueError, match="--init-match partial needs --init"):
            validate(TrainConfig(arch="resnet18", dataset="digits", init=init, init_match="partial"))
