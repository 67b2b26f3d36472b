"""The ``act`` option of the ResNets (ImageNet and CIFAR): every activation uses it, ReLU stays the default, and the
parameter tree does not depend on it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from cnnjax import models

# (arch, input side, activations: the stem's + per block: BasicBlock 2, Bottleneck 3)
CASES = [("resnet18", 64, 1 + 8 * 2), ("resnet20", 32, 1 + 9 * 2)]


def _count_tanh(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "tanh"
        for sub in jex_core.jaxprs_in_params(eqn.params):
            n += _count_tanh(sub)
    return n


@pytest.mark.slow
@pytest.mark.parametrize("arch,size,n_acts", CASES)
def test_act_is_used_and_relu_is_the_default(arch, size, n_acts):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size, 3)), jnp.float32)
    default = models.create(arch, num_classes=10)
    relu = models.create(arch, num_classes=10, act=nn.relu)
    tanh = models.create(arch, num_classes=10, act=jax.nn.tanh)
    key = jax.random.key(0)
    variables = jax.jit(default.init)(key, x)
    for other in (relu, tanh):  # same parameter tree, same initial values: act has no parameters
        v = jax.jit(other.init)(key, x)
        assert jax.tree.structure(v) == jax.tree.structure(variables)
        for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = {name: np.asarray(jax.jit(m.apply)(variables, x)) for name, m in
           (("default", default), ("relu", relu), ("tanh", tanh))}
    np.testing.assert_array_equal(out["relu"], out["default"])   # explicit ReLU: bit-identical to the default
    assert np.all(np.isfinite(out["tanh"]))
    assert np.max(np.abs(out["tanh"] - out["default"])) > 1e-3     # tanh really changes the network
    # every activation (the stem's and each block's) is tanh, none left as ReLU
    assert _count_tanh(jax.make_jaxpr(tanh.apply)(variables, x).jaxpr) == n_acts
    assert _count_tanh(jax.make_jaxpr(default.apply)(variables, x).jaxpr) == 0


def test_bottleneck_blocks_use_act():
    """ResNet-50 (abstract trace only): stem + 3 activations in each of its 16 bottleneck blocks."""
    model = models.create("resnet50", act=jax.nn.tanh)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert _count_tanh(jax.make_jaxpr(model.apply)(variables, x).jaxpr) == 1 + 16 * 3


@pytest.mark.parametrize("kw", [{"skip": False}, {"shortcut": "B"}, {"antialias": True}])
def test_cifar_block_variants_use_act(kw):
    """Every return path of the CIFAR block (no shortcut, projection, blurred option A) applies ``act``."""
    model = models.create("resnet20", act=jax.nn.tanh, **kw)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert _count_tanh(jax.make_jaxpr(model.apply)(variables, x).jaxpr) == 1 + 9 * 2


@pytest.mark.parametrize("arch,size,n_acts", [("resnet20", 32, 1 + 9 * 2), ("lenet5", 32, 4), ("vgg_small", 32, 8),
                                             ("alexnet", 64, 7)])
def test_act_by_name_from_the_command_line(arch, size, n_acts):
    """``--model-opt act=tanh``: the name reaches every activation (LeNet-5: C1, C3, C5, F6; vgg_small: its 8
    convs; AlexNet: 5 convs, fc6, fc7), as the function does; an unknown name is refused by ``create`` (before
    any trace) naming the valid ones."""
    from train.config import model_options

    model = models.create(arch, **model_options(arch, ["act=tanh"]))
    x = jax.ShapeDtypeStruct((1, size, size, 1 if arch == "lenet5" else 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert _count_tanh(jax.make_jaxpr(model.apply)(variables, x).jaxpr) == n_acts
    with pytest.raises(ValueError, match="unknown activation 'tahn'; valid names: relu, tanh, sigmoid"):
        model_options(arch, ["act=tahn"])


def test_named_activations_match_torch():
    torch = pytest.importorskip("torch")
    from cnnjax.nn import ACTIVATIONS

    x = np.linspace(-6, 6, 1001).astype(np.float32)
    ref = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": torch.nn.functional.gelu,
           "silu": torch.nn.functional.silu, "elu": torch.nn.functional.elu,
           "leaky_relu": torch.nn.functional.leaky_relu, "hardswish": torch.nn.functional.hardswish,
           "lecun_tanh": lambda t: 1.7159 * torch.tanh(t * 2 / 3)}
    assert set(ref) == set(ACTIVATIONS)
    for name, fn in ACTIVATIONS.items():
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), ref[name](torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_vgg_small_with_identity_act_is_affine():
    """``vgg_small`` without BN, with average pooling and ``act`` the identity is an affine map of its input, so
    f(x) + f(y) - f(0) = f(x + y) (float64 NumPy check); with ReLU (the default) it is not: the law fails."""
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32) for _ in range(2))
    zero = jnp.zeros_like(x)

    def residual(act) -> float:
        model = models.create("vgg_small", depth=3, norm="none", downsample="avg", act=act)
        variables = model.init(jax.random.key(0), x)
        variables = jax.tree.map(lambda v: v + 0.05, variables)  # non-zero biases too
        f = jax.jit(lambda v: model.apply(variables, v))
        fx, fy, f0, fxy = (np.asarray(f(v), np.float64) for v in (x, y, zero, x + y))
        return float(np.max(np.abs(fx + fy - f0 - fxy)) / np.max(np.abs(fxy)))

    assert residual(lambda v: v) < 1e-4
    assert residual("relu") > 1e-2
