"""``vgg_small``: shapes per downsampling option (abstract), parameter count against a closed form, max/avg
pooling against ``lax.reduce_window`` of the previous activation, and the Kaiming / Xavier init variances against
their closed forms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models.vgg_small import DOWNSAMPLES, stage_depths


def _abstract(model, h: int, w: int):
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    logits, v = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), v, x)
    return logits, feats, v


def closed_form_params(depth: int, norm: str, c_in: int = 3, classes: int = 10) -> int:
    total, prev = 0, c_in
    for width, n in zip((16, 32, 64), stage_depths(depth), strict=True):
        for _ in range(n):
            total += 9 * prev * width + (2 * width if norm == "batch" else width)
            prev = width
    return total + 64 * classes + classes


def test_stage_depths_spread_the_layers():
    assert stage_depths(8) == (3, 3, 2) and stage_depths(11) == (4, 4, 3) and stage_depths(30) == (10, 10, 10)
    assert sum(stage_depths(13)) == 13


@pytest.mark.parametrize("downsample", DOWNSAMPLES)
def test_shapes_per_option(downsample):
    model = models.create("vgg_small", downsample=downsample)
    logits, feats, _ = _abstract(model, 32, 32)
    assert logits.shape == (2, 10) and feats.shape == (2, 4, 4, 64)
    # an odd size: floor halving for the pools (45 -> 22 -> 11 -> 5), ceil for the strided conv (23, 12, 6)
    _, feats, _ = _abstract(model, 45, 45)
    assert feats.shape[1] == (6 if downsample == "stride" else 5)


@pytest.mark.parametrize("depth,norm", [(8, "batch"), (11, "none"), (30, "batch")])
def test_parameter_count_closed_form(depth, norm):
    counts = set()
    for downsample in DOWNSAMPLES:  # no option adds or removes parameters
        _, _, v = _abstract(models.create("vgg_small", depth=depth, norm=norm, downsample=downsample), 32, 32)
        counts.add(sum(math.prod(p.shape) for p in jax.tree.leaves(v["params"])))
        assert ("batch_stats" in v) == (norm == "batch")
    assert counts == {closed_form_params(depth, norm)}
    assert closed_form_params(8, "batch") == 84_570  # the module docstring's figure


def test_bad_options_name_the_choices():
    for kw, match in (({"downsample": "maxx"}, "max, avg, stride, blur"), ({"norm": "layer"}, "batch, none"),
                      ({"conv_init": "he"}, "kaiming, xavier"), ({"depth": 2}, "depth must be")):
        with pytest.raises(ValueError, match=match):
            models.create("vgg_small", **kw)


def _stage1(downsample: str, x: jax.Array):
    """(ReLU of stage1/conv0's output, stage1's pooled output) of a depth-3 net without norm."""
    model = models.create("vgg_small", depth=3, norm="none", downsample=downsample)
    v = model.init(jax.random.key(0), x)
    _, inter = model.apply(v, x, capture_intermediates=True)
    st = inter["intermediates"]["stage1"]
    return jax.nn.relu(st["conv0"]["__call__"][0]), st["pool"]["__call__"][0]


@pytest.mark.slow  # ~6 s: two eager inits and forwards
def test_max_and_avg_pool_equal_reduce_window_of_the_previous_activation():
    x = jax.random.normal(jax.random.key(3), (2, 12, 12, 3))
    win = ((1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    act, pooled = _stage1("max", x)
    ref_max = jax.lax.reduce_window(act, -jnp.inf, jax.lax.max, *win)
    np.testing.assert_allclose(pooled, ref_max, rtol=1e-6, atol=1e-6)
    act, pooled = _stage1("avg", x)
    ref_avg = jax.lax.reduce_window(act, 0.0, jax.lax.add, *win) / 4
    np.testing.assert_allclose(pooled, ref_avg, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(pooled) - np.asarray(jax.lax.reduce_window(act, -jnp.inf, jax.lax.max, *win))).max() > 0.1


def _kernels(conv_init: str) -> dict:
    model = models.create("vgg_small", depth=4, norm="none", conv_init=conv_init)  # convs 3-16-16 | 32 | 64
    return model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]


def _kurtosis(w: np.ndarray) -> float:
    w = w - w.mean()
    return float(np.mean(w**4) / np.mean(w**2) ** 2)


@pytest.mark.slow  # ~7 s: two eager inits
def test_init_variances_match_their_closed_forms():
    kaiming, xavier = _kernels("kaiming"), _kernels("xavier")
    # stage3/conv0: 32 -> 64 (18,432 weights); stage2/conv0: 16 -> 32 (4,608); stage1/conv1: 16 -> 16 (2,304)
    for stage, conv, cin, cout in (("stage3", "conv0", 32, 64), ("stage2", "conv0", 16, 32),
                                   ("stage1", "conv1", 16, 16)):
        wk = np.asarray(kaiming[stage][conv]["kernel"], np.float64).ravel()
        wx = np.asarray(xavier[stage][conv]["kernel"], np.float64).ravel()
        var_k = 2.0 / (9 * cout)  # He: 2 / fan_out
        var_x = 2.0 / (9 * (cin + cout))  # Glorot: 2 / (fan_in + fan_out)
        tol = 4 * math.sqrt(2 / len(wk))  # ~4 sigma of a sample variance (normal; uniform is tighter)
        assert abs(wk.var() / var_k - 1) < tol, (stage, conv)
        assert abs(wx.var() / var_x - 1) < tol, (stage, conv)
        # negative cases: each is far from the other's variance, and the shapes differ (normal vs uniform)
        assert abs(wx.var() / var_k - 1) > 3 * tol and abs(wk.var() / var_x - 1) > 3 * tol
        assert np.abs(wx).max() <= math.sqrt(3 * var_x) * (1 + 1e-6)
        assert abs(_kurtosis(wk) - 3.0) < 0.45 and abs(_kurtosis(wx) - 1.8) < 0.2
    assert np.all(np.asarray(kaiming["stage1"]["conv0"]["bias"]) == 0)
