"""GoogLeNet and DenseNet: parameter counts (abstract traces, no compile), output structure, small forwards."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.models import create
from cnnjax.models.densenet import DenseLayer, DenseNet
from cnnjax.models.googlenet import GoogLeNetOutputs

# sum(p.numel() for p in torchvision_model.parameters()) at num_classes=1000 (torchvision 0.29).
TORCHVISION_PARAMS = {
    ("googlenet", False): 6_624_904,
    ("googlenet", True): 13_004_888,  # googlenet(aux_logits=True, init_weights=True)
    ("densenet121", None): 7_978_856,
    ("densenet161", None): 28_681_000,
    ("densenet169", None): 14_149_480,
    ("densenet201", None): 20_013_928,
}
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _abstract_init(model, size=224, train=False):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(RNGS, x, train), x)


def _count(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def _cheap_variables(model, x):
    """Variables with the model's tree and shapes, filled with numpy (skips compiling the initialisers)."""
    rng = np.random.default_rng(0)

    def fill(path, s):
        leaf = path[-1].key
        if leaf in ("scale", "var"):
            return np.ones(s.shape, np.float32)
        if leaf in ("bias", "mean"):
            return np.zeros(s.shape, np.float32)
        return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, x))


def _abstract_variables(model, x):
    return jax.eval_shape(lambda x: model.init(RNGS, x), x)


@pytest.mark.parametrize("aux", [False, True])
def test_googlenet_param_count(aux):
    variables = _abstract_init(create("googlenet", aux_logits=aux))
    assert _count(variables["params"]) == TORCHVISION_PARAMS[("googlenet", aux)]
    assert ("aux1" in variables["params"]) == aux and ("aux2" in variables["params"]) == aux
    assert set(variables["params"]) - set(variables["batch_stats"]) == {"head"}


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_densenet_param_count(name):
    assert _count(_abstract_init(create(name))["params"]) == TORCHVISION_PARAMS[(name, None)]


def test_googlenet_outputs_and_features_abstract():
    model = create("googlenet", num_classes=7)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = _abstract_init(model)
    # Eval: plain logits, even though the aux heads' parameters exist.
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (2, 7)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), variables, x)
    assert feats.shape == (2, 7, 7, 1024)
    # Without aux heads training also returns plain logits.
    plain = create("googlenet", num_classes=7, aux_logits=False)
    out = jax.eval_shape(lambda v, x: plain.apply(v, x, True, mutable=["batch_stats"],
                                                  rngs={"dropout": jax.random.key(0)})[0],
                         _abstract_init(plain), x)
    assert out.shape == (2, 7)
    # Initialising in training mode gives the same tree as in eval mode.
    assert jax.tree.structure(_abstract_init(model, train=True)) == jax.tree.structure(variables)


@pytest.mark.slow  # > 5 s (CI durations)
def test_googlenet_train_forward_returns_aux_outputs():
    model = create("googlenet", num_classes=5)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    variables = _cheap_variables(model, x)
    out, updates = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"],
                                                    rngs={"dropout": jax.random.key(3)}))(variables, x)
    assert isinstance(out, GoogLeNetOutputs)
    assert out._fields == ("logits", "aux_logits2", "aux_logits1")
    for logits in out:
        assert logits.shape == (2, 5)
        assert np.isfinite(np.asarray(logits)).all()
    assert not np.allclose(out.aux_logits1, out.aux_logits2)
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])


def test_smallest_inputs_accepted():
    # torchvision's min_size: 15x15 for GoogLeNet, 29x29 for DenseNet (the ceil-mode / floor-mode pools).
    assert _abstract_init(create("googlenet"), 15)["params"]["head"]["kernel"].shape == (1024, 1000)
    assert _abstract_init(create("densenet121"), 29)["params"]["head"]["kernel"].shape == (1024, 1000)


def test_densenet_features_shape_abstract():
    for name, channels in [("densenet121", 1024), ("densenet161", 2208)]:
        model = create(name)
        variables = _abstract_init(model)
        x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
        feats = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, method="features"), variables, x)
        assert feats.shape == (1, 7, 7, channels)


def test_densenet_small_forward():
    # A reduced DenseNet (same code path as the zoo variants) keeps the compile short on CPU.
    cfg = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, num_classes=6)
    model = DenseNet(**cfg)
    x = jax.random.normal(jax.random.key(4), (1, 32, 32, 3))
    variables = _cheap_variables(model, x)
    assert jax.tree.structure(_abstract_variables(DenseNet(**cfg, memory_efficient=True), x)) == \
        jax.tree.structure(variables)
    logits, feats = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method="features")))(variables, x)
    assert logits.shape == (1, 6) and np.isfinite(np.asarray(logits)).all()
    assert feats.shape == (1, 1, 1, 32)  # 32 -> 16 (conv0) -> 8 (pool0) -> 4 -> 2 -> 1; 16 + 2 * 8 channels
    assert (np.asarray(feats) >= 0).all()  # ReLU after norm5


def test_dense_layer_remat_same_values_and_gradients():
    import functools

    from cnnjax import nn as cnn

    norm = functools.partial(cnn.BatchNorm, use_running_average=False)
    layer, remat = (cls(8, 2, 0.0, cnn.Conv, norm, True) for cls in (DenseLayer, nn.remat(DenseLayer)))
    x = jax.random.normal(jax.random.key(5), (2, 6, 6, 12))
    variables = _cheap_variables(layer, x)
    assert jax.tree.structure(_abstract_variables(remat, x)) == jax.tree.structure(variables)

    def loss(m):
        return lambda p: m.apply({**variables, "params": p}, x, mutable=["batch_stats"])[0].sum()

    g1 = jax.jit(jax.grad(loss(layer)))(variables["params"])
    g2 = jax.jit(jax.grad(loss(remat)))(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def test_googlenet_width_mult_scales_every_layer():
    """``width_mult`` scales each channel count c to max(1, round(c * w)) (the aux heads' 128 and 1024 too);
    1.0 leaves torchvision's net (its parameter count is the test above). Shapes from ``jax.eval_shape``."""
    w = 0.25
    c = lambda n: max(1, round(n * w))  # noqa: E731
    model = create("googlenet", num_classes=6, width_mult=w)
    p = _abstract_init(model, 64)["params"]
    assert p["conv1"]["conv"]["kernel"].shape == (7, 7, 3, c(64))
    assert p["conv3"]["conv"]["kernel"].shape == (3, 3, c(64), c(192))
    i3a = p["inception3a"]
    assert [i3a[b]["conv"]["kernel"].shape[-1] for b in ("branch1", "branch2_0", "branch2_1", "branch3_0",
                                                         "branch3_1", "branch4_1")] == [c(k) for k in
                                                                                        (64, 96, 128, 16, 32, 32)]
    c4a = sum(c(k) for k in (192, 208, 48, 64))  # inception4a's output: the aux1 head's input
    assert p["aux1"]["conv"]["conv"]["kernel"].shape == (1, 1, c4a, c(128))
    assert p["aux1"]["fc1"]["kernel"].shape == (16 * c(128), c(1024))
    assert p["aux1"]["fc2"]["kernel"].shape == (c(1024), 6)
    c5b = sum(c(k) for k in (384, 384, 128, 128))
    assert p["head"]["kernel"].shape == (c5b, 6)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), _abstract_init(model, 64), x)
    assert feats.shape == (2, 2, 2, c5b)
    assert create("googlenet", width_mult=1.0).ch(192) == 192 and create("googlenet", width_mult=0.001).ch(64) == 1


@pytest.mark.parametrize("size", [15, 32, 64])
def test_googlenet_small_inputs_train_mode_with_aux(size):
    """From 15x15 up the aux heads work too (their adaptive pool makes 4x4 of inception4a's 1x1 .. 4x4 map)."""
    model = create("googlenet", num_classes=6, width_mult=0.25)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"], rngs=RNGS)[0],
                         _abstract_init(model, size), x)
    assert isinstance(out, GoogLeNetOutputs) and [o.shape for o in out] == [(2, 6)] * 3


@pytest.mark.parametrize("opts", [{"aux_logits": "false"}, {"transform_input": 1}, {"width_mult": 0},
                                  {"width_mult": -0.5}])
def test_googlenet_refuses_bad_options(opts):
    with pytest.raises(ValueError, match="must be"):
        create("googlenet", **opts)
