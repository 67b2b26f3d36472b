"""Occlusion sensitivity on a model with a known answer; layer capture; PNG writers; the tiny trainer; the CLI."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import analyze, models
from cnnjax import nn as cnn
from cnnjax.analysis import occlusion as occ
from cnnjax.analysis import random_variables, training
from cnnjax.analysis import visualize as vis

REGION = (slice(5, 9), slice(10, 13))  # rows 5..8, cols 10..12 of a 16x16 image


def region_model(x):
    """Logits (N, 2): class 0 scores the sum of the pixels in REGION, class 1 is constant."""
    s = x[:, REGION[0], REGION[1], :].sum((1, 2, 3))
    return jnp.stack([s * 0.1, jnp.zeros_like(s)], -1)


@pytest.mark.parametrize("patch,stride", [(4, 2), (3, 5), (1, 1)])
def test_occlusion_is_non_zero_exactly_where_patches_overlap_the_region(patch, stride):
    image = jnp.ones((16, 16, 2))
    heat, rows, cols = occ.occlusion_sensitivity(region_model, image, 0, patch=patch, stride=stride, fill=0.0,
                                                 batch_size=32)
    assert heat.shape == (len(rows), len(cols)) and rows[-1] == 16 - patch and cols[-1] == 16 - patch
    overlap_r = (rows + patch > REGION[0].start) & (rows < REGION[0].stop)
    overlap_c = (cols + patch > REGION[1].start) & (cols < REGION[1].stop)
    expected = overlap_r[:, None] & overlap_c[None, :]
    np.testing.assert_array_equal(heat > 0, expected)
    np.testing.assert_array_equal(heat[~expected], 0.0)
    # the drop is a strictly increasing function of the number of region pixels the patch covers
    idx = np.arange(16)
    cover_r = [((idx >= r) & (idx < r + patch))[REGION[0]].sum() for r in rows]
    cover_c = [((idx >= c) & (idx < c + patch))[REGION[1]].sum() for c in cols]
    covered = np.outer(cover_r, cover_c).ravel()
    order = np.argsort(covered, kind="stable")
    h, c = heat.ravel()[order], covered[order]
    assert np.all((np.diff(h) > 0) == (np.diff(c) > 0))
    pix = occ.pixel_map(heat, rows, cols, patch, (16, 16))
    assert pix.shape == (16, 16) and pix[REGION].max() > 0 and pix[0].max() == 0
    if stride <= patch:  # every region pixel is covered by some patch
        assert pix[REGION].min() > 0


def test_patch_positions_validation():
    np.testing.assert_array_equal(occ.patch_positions(10, 4, 3), [0, 3, 6])
    np.testing.assert_array_equal(occ.patch_positions(10, 4, 4), [0, 4, 6])
    with pytest.raises(ValueError):
        occ.patch_positions(4, 5, 1)


def test_capture_named_layers_and_first_kernel():
    model = models.create("lenet5")
    v = random_variables(model, 32)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 1)), jnp.float32)
    names = {p: shape for p, _, shape in vis.layer_names(model, 32)}
    assert names["c1"] == (1, 28, 28, 6) and names["s4"] == (1, 5, 5, 16)
    c1 = vis.capture(model, v, x, "c1")
    ref = cnn.Conv(6, 5).apply({"params": v["params"]["c1"]}, x)
    np.testing.assert_allclose(c1, ref, rtol=1e-5, atol=1e-5)
    assert vis.capture(model, v, x, "s4").shape == (2, 5, 5, 16)
    with pytest.raises(KeyError, match="c1"):
        vis.capture(model, v, x, "nope")
    name, k = vis.first_conv_kernel(v)
    assert name == "c1" and k.shape == (5, 5, 1, 6)
    assert vis.first_conv_kernel(v, "c3")[1].shape == (5, 5, 6, 16)


def test_png_writers(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 3)).astype(np.float32)
    paths = [
        vis.save_image_grid(tmp_path / "grid.png", {"a": img, "b": img[..., 0]}, scale="p99"),
        vis.save_filter_grid(tmp_path / "filters.png", rng.standard_normal((3, 3, 3, 5))),
        vis.save_feature_maps(tmp_path / "fm.png", img, rng.random((8, 8, 4))),
        vis.save_overlay(tmp_path / "ov.png", img, rng.standard_normal((16, 16))),
        vis.save_maps(tmp_path / "maps.png", {"m": rng.random((16, 16))}, boxes={"m": [(2, 5, 3, 9)]}),
        vis.save_bars(tmp_path / "bars.png", {"x": {"a": 0.5, "b": 0.7}, "y": {"a": 0.6, "b": 0.9}}),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _TinyNet(models.ImageClassifier):
    in_channels: int = 1

    @nn.compact
    def forward(self, x, train, features_only):
        x = nn.relu(cnn.BatchNorm(use_running_average=not train, name="bn")(cnn.Conv(8, 3, 1, 1, name="c")(x)))
        if features_only:
            return x
        return cnn.Linear(self.num_classes, name="head")(x.reshape(x.shape[0], -1))


@pytest.mark.slow  # ~3 s of training
def test_quick_train_learns_and_checkpoints_round_trip(tmp_path):
    """The analysis trainer runs on the training core; its variables round-trip through the one (orbax)
    checkpoint format, which ``cnnjax.checkpoint.restore`` (what ``train.evaluate --init`` uses) also reads."""
    from cnnjax import checkpoint, data

    source = data.load("digits", image_size=8)
    model = _TinyNet(num_classes=10)
    variables, stats = training.quick_train(model, source, steps=40, lr=0.1, batch_size=128)
    assert stats["steps"] == 40 and stats["val_accuracy"] > 0.5  # chance is 0.1
    host = jax.tree.map(np.asarray, variables)
    path = training.save_variables(tmp_path / "run", variables)
    for back in (training.load_variables(path), checkpoint.restore(path)):
        assert jax.tree.structure(back) == jax.tree.structure(host)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(host)):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_legacy_msgpack_and_npz_still_read_and_convert(tmp_path):
    """Files of the old format (written here with flax serialization / np.savez directly, not by cnnjax) are
    read with a warning naming the conversion command, and ``analyze convert`` turns them into orbax."""
    from flax import serialization, traverse_util

    rng = np.random.default_rng(0)
    variables = {"params": {"c": {"kernel": rng.normal(size=(3, 3, 1, 4)).astype(np.float32)},
                            "head": {"bias": rng.normal(size=(10,)).astype(np.float32)}},
                 "batch_stats": {"bn": {"mean": rng.normal(size=(4,)).astype(np.float32)}}}
    (tmp_path / "v.msgpack").write_bytes(serialization.msgpack_serialize(variables))
    np.savez(tmp_path / "v.npz", **traverse_util.flatten_dict(variables, sep="/"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "variables.msgpack").write_bytes(serialization.msgpack_serialize(variables))
    for path in (tmp_path / "v.msgpack", tmp_path / "v.npz", tmp_path / "d"):
        with pytest.warns(UserWarning, match="analyze convert"):
            back = training.load_variables(path)
        assert traverse_util.flatten_dict(jax.tree.map(np.asarray, back)).keys() == \
            traverse_util.flatten_dict(variables).keys()
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
            np.testing.assert_array_equal(np.asarray(a), b)
    assert analyze.main(["convert", str(tmp_path / "v.npz"), str(tmp_path / "new")]) == 0
    back = training.load_variables(tmp_path / "new")  # orbax now: no warning needed
    np.testing.assert_array_equal(np.asarray(back["params"]["c"]["kernel"]), variables["params"]["c"]["kernel"])
    with pytest.raises(FileNotFoundError):
        training.load_variables(tmp_path / "missing")


@pytest.mark.parametrize("tool", ["filters", "receptive-field", "erf", "equivariance", "occlusion", "filter-grid",
                                  "feature-maps"])
def test_cli_help(tool, capsys):
    with pytest.raises(SystemExit) as exc:
        analyze.main([tool, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out


@pytest.mark.slow  # ~3.5 s: the CLI traces three models
def test_cli_receptive_field_table_and_check(tmp_path, capsys):
    assert analyze.main(["receptive-field", "--arch", "lenet5", "--image-size", "32", "--check", "--check-all",
                         "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "c5" in out and "NO" not in out and " 32 " in out
    assert (tmp_path / "receptive_field_lenet5.png").exists()


@pytest.mark.slow
def test_cli_tools_run_untrained(tmp_path, capsys):
    """The data-driven tools end to end on an untrained LeNet-5 (``--steps 0``), small settings (``erf`` and
    ``equivariance`` share their code paths: data, init, jit-ted apply, PNG)."""
    common = ["--arch", "lenet5", "--steps", "0", "--out", str(tmp_path)]
    assert analyze.main(["occlusion", *common, "--patch", "16", "--stride", "8"]) == 0
    assert analyze.main(["filter-grid", *common]) == 0
    assert analyze.main(["feature-maps", *common, "--layer", "s2"]) == 0
    assert analyze.main(["feature-maps", *common, "--list"]) == 0
    out = capsys.readouterr().out
    assert "largest drop" in out and "c1: kernel (5, 5, 1, 6)" in out and "s2: output (14, 14, 6)" in out
    assert "c5" in out
    for name in ("occlusion_lenet5.png", "filter_grid_lenet5.png", "feature_maps_lenet5_s2.png"):
        assert (tmp_path / name).exists(), name
