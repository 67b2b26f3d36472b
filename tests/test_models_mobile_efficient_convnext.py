"""MobileNet, EfficientNet and ConvNeXt: torchvision's parameter counts, small forwards, stochastic depth."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax import nn as cnn
from cnnjax.models.convnext import CNBlock, ConvNeXt
from cnnjax.models.efficientnet import FusedMBConv, MBConv

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _variables(model, x):
    """Random variables of the right shapes without compiling ``init`` (slow on CPU): kernels N(0, 1/fan_in),
    scales and running variances 1, everything else 0."""
    shapes = jax.eval_shape(lambda x: model.init(RNGS, x), x)
    rs = np.random.RandomState(0)

    def make(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return jnp.asarray(rs.standard_normal(s.shape).astype(np.float32) / np.sqrt(np.prod(s.shape[:-1])))
        return jnp.ones(s.shape) if leaf in ("scale", "var", "layer_scale") else jnp.zeros(s.shape)

    return jax.tree_util.tree_map_with_path(make, shapes)


def _n_params(model, size=224):
    v = jax.eval_shape(lambda x: model.init(RNGS, x), jnp.zeros((1, size, size, 3)))
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(v["params"]))


@pytest.mark.parametrize("name, expected", [
    ("mobilenet_v2", 3_504_872),
    ("mobilenet_v3_small", 2_542_856),
    ("mobilenet_v3_large", 5_483_032),
    ("efficientnet_b0", 5_288_548),
    ("efficientnet_b1", 7_794_184),
    ("efficientnet_v2_s", 21_458_488),
    ("convnext_tiny", 28_589_128),
])
def test_param_counts_match_torchvision(name, expected):
    assert _n_params(models.create(name)) == expected


def test_param_count_with_other_num_classes():
    # convnext_tiny: head 768 x 1000 + 1000 replaced by 768 x 10 + 10
    assert _n_params(models.create("convnext_tiny", num_classes=10)) == 28_589_128 - 769 * 990


@pytest.mark.parametrize("name, channels", [("mobilenet_v2", 1280), ("efficientnet_b0", 1280),
                                            ("convnext_tiny", 768)])
def test_features_shape(name, channels):
    m = models.create(name)
    x = jnp.zeros((2, 64, 96, 3))
    f = jax.eval_shape(lambda x: m.init_with_output(RNGS, x, method="features")[0], x)
    assert f.shape == (2, 2, 3, channels)


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0", "convnext_tiny"])
def test_small_forward(name):
    m = models.create(name, num_classes=7)
    x = jax.random.normal(jax.random.key(2), (1, 32, 32, 3))
    variables = _variables(m, x)
    logits = jax.jit(lambda v, x: m.apply(v, x, train=False))(variables, x)
    assert logits.shape == (1, 7)
    assert bool(jnp.all(jnp.isfinite(logits)))


def _stochastic_depth_rates(model):
    """{block path: rate} of every StochasticDepth layer, read off an abstract trace."""
    rates = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, cnn.StochasticDepth) and context.method_name == "__call__":
            rates[context.module.scope.path[-2]] = context.module.rate
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(RNGS, x), jnp.zeros((1, 64, 64, 3)))
    return rates


def test_stochastic_depth_schedules_match_torchvision():
    # ConvNeXt: 0.1 * b / (18 - 1) on every block b = 0..17
    rates = _stochastic_depth_rates(models.create("convnext_tiny"))
    assert len(rates) == 18
    np.testing.assert_allclose(sorted(rates.values()), np.linspace(0.0, 0.1, 18), rtol=1e-12)
    assert rates["stage4_block2"] == pytest.approx(0.1)
    # EfficientNet-B0: 0.2 * b / 16 over all 16 blocks, applied on the 9 residual ones
    rates = _stochastic_depth_rates(models.create("efficientnet_b0"))
    block_ids = {"stage2_block1": 2, "stage3_block1": 4, "stage4_block1": 6, "stage4_block2": 7,
                 "stage5_block1": 9, "stage5_block2": 10, "stage6_block1": 12, "stage6_block2": 13,
                 "stage6_block3": 14}
    assert rates == pytest.approx({k: 0.2 * b / 16 for k, b in block_ids.items()})


@pytest.mark.parametrize("block", ["mbconv", "fused", "cnblock"])
def test_block_stochastic_depth_drops_whole_branches_in_training_only(block):
    conv = functools.partial(cnn.Conv, kernel_init=cnn.init.kaiming_normal_fan_out)
    norm = functools.partial(cnn.BatchNorm, use_running_average=True)
    if block == "cnblock":
        mod = CNBlock(0.5, 1.0, functools.partial(conv, use_bias=True), cnn.Linear, cnn.LayerNorm)
    else:
        mod = (MBConv if block == "mbconv" else FusedMBConv)(4, 3, 1, 16, 0.5, conv, norm)
    x = jax.random.normal(jax.random.key(3), (16, 4, 4, 16))

    @jax.jit
    def run(x):
        v = mod.init(RNGS, x, False)
        return (mod.apply(v, x, False), mod.apply(v, x, False, rngs={"dropout": jax.random.key(7)}),
                mod.apply(v, x, True, rngs={"dropout": jax.random.key(7)}))

    ev, ev2, tr = run(x)
    np.testing.assert_array_equal(ev, ev2)
    dropped = np.all(np.isclose(tr, x, rtol=0, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(tr - x, 2.0 * (ev - x), rtol=1e-5, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped ^ kept)  # every example: branch dropped, or kept and scaled by 1 / (1 - 0.5)
    assert 0 < dropped.sum() < 16


def test_convnext_training_differs_from_evaluation_only_by_stochastic_depth():
    x = jax.random.normal(jax.random.key(3), (8, 32, 32, 3))
    tiny = dict(widths=(8, 8, 8, 8), depths=(1, 1, 1, 1), num_classes=5)
    m, m0 = ConvNeXt(stochastic_depth_prob=0.5, **tiny), ConvNeXt(stochastic_depth_prob=0.0, **tiny)
    v = _variables(m, x)
    run = jax.jit(lambda x, key: (m.apply(v, x, True, rngs={"dropout": key}), m0.apply(v, x, True),
                                  m0.apply(v, x, False)))
    tr1, tr0, ev = run(x, jax.random.key(4))
    tr2, _, _ = run(x, jax.random.key(5))
    assert not np.allclose(tr1, ev) and not np.allclose(tr1, tr2)
    np.testing.assert_allclose(tr0, ev, rtol=1e-6, atol=1e-6)  # no BN, no dropout in ConvNeXt
    assert ev.shape == (8, 5)
