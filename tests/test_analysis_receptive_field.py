"""Receptive fields traced from the jaxpr: known values, branch merging, and analytic == empirical."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import analysis, models
from cnnjax import nn as cnn
from cnnjax.analysis import (
    empirical_receptive_field,
    gradient_extent,
    random_variables,
    randomize_variables,
)
from cnnjax.analysis import fields as fields_module
from cnnjax.analysis import receptive_field as rf_fn
from cnnjax.analysis.fields import format_table


class Tiny(models.ImageClassifier):
    """conv 3 -> maxpool 2/2 -> [conv 3 | conv 5 dilated 1, stride 1] concat -> strided slice -> pad."""

    in_channels: int = 1
    num_classes: int = 2

    @nn.compact
    def forward(self, x, train, features_only):
        x = nn.relu(cnn.Conv(4, 3, padding=1, name="c1")(x))
        x = cnn.MaxPool2d(2, 2, name="p1")(x)
        a = cnn.Conv(2, 3, padding=1, name="a")(x)
        b = cnn.Conv(2, 3, padding=2, dilation=2, name="b")(x)
        x = jnp.concatenate([a, b], -1)
        x = x[:, 1::2, 1::2, :]
        return jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))


def test_package_exports_the_receptive_field_function():
    """``cnnjax.analysis.receptive_field(model, image_size)`` is the function (the module is ``fields``)."""
    assert callable(analysis.receptive_field) and not isinstance(analysis.receptive_field, type(fields_module))
    for name in ("receptive_field", "empirical_receptive_field", "effective_receptive_field", "random_variables",
                 "randomize_variables", "LayerField", "AxisField"):
        assert getattr(analysis, name) is getattr(fields_module, name), name
    model = models.create("lenet5")
    assert analysis.receptive_field(model, 32) == fields_module.receptive_field(model, 32)
    assert [r.name for r in analysis.receptive_field(Tiny(), 16)][-1] == "features"


def test_hand_computed_fields():
    recs = rf_fn(Tiny(), 16)
    by = {r.name: r for r in recs}
    assert [r.name for r in recs][:4] == ["c1", "p1", "a", "b"] and recs[-1].name == "features"
    assert [r.kind for r in recs] == ["conv", "max_pool", "conv", "conv", "subsample", "features"]
    assert by["c1"].size == (3, 3) and by["c1"].jump == (1, 1) and by["c1"].start == (0, 0)
    assert by["p1"].size == (4, 4) and by["p1"].jump == (2, 2) and by["p1"].start == (0.5, 0.5)
    assert by["a"].size == (8, 8) and by["a"].start == (0.5, 0.5)
    assert by["b"].size == (12, 12) and by["b"].start == (0.5, 0.5)  # dilation 2: 5 taps wide
    f = by["features"]  # union of a and b (largest path), then slice 1::2 and pad 1 before
    assert f.size == (12, 12) and f.jump == (4, 4)
    assert f.start == (0.5 + 2 - 4, 0.5 + 2 - 4)
    assert f.out_hw == (5, 5)
    assert "features" in format_table(recs)


@pytest.mark.parametrize("arch,size,expected", [
    ("lenet5", 32, [("c1", 5, 1, 2), ("s2", 6, 2, 2.5), ("c3", 14, 2, 6.5), ("s4", 16, 4, 7.5), ("c5", 32, 4, 15.5)]),
    ("alexnet", 224, [("conv1", 11, 4, 3), ("pool1", 19, 8, 7), ("conv2", 51, 8, 7), ("pool2", 67, 16, 15),
                      ("conv5", 163, 16, 15), ("pool5", 195, 32, 31)]),
    ("vgg16", 224, [("stage1/conv0", 3, 1, 0), ("stage1/pool", 6, 2, 0.5), ("stage5/pool", 212, 32, 15.5)]),
    ("resnet18", 224, [("stem/conv", 7, 2, 0), ("stem_pool", 11, 4, 0), ("stage4_block1/conv2", 435, 32, 0)]),
    ("resnet50", 224, [("stage4_block2/conv3", 427, 32, 0)]),
])
def test_known_receptive_fields(arch, size, expected):
    recs = {r.name: r for r in rf_fn(models.create(arch), size)}
    for name, s, j, start in expected:
        r = recs[name]
        assert (r.size[0], r.jump[0], r.start[0]) == (s, j, start), name
    assert recs["features"].size == recs[expected[-1][0]].size


def test_branching_models_report_the_largest_path():
    recs = rf_fn(models.create("googlenet"), 224)
    inc = [r for r in recs if r.name.startswith("inception3a/")]
    feats = recs[-1]
    assert max(r.size[0] for r in inc) < feats.size[0]
    # squeeze-and-excitation (a global average inside the block) makes the field global
    se = rf_fn(models.create("mobilenet_v3_small"), 64)
    assert se[-1].fields[0].is_global and not se[0].fields[0].is_global


def test_randomize_variables_draws_every_leaf():
    shapes = {"params": {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)},
                         "bn": {"scale": jax.ShapeDtypeStruct((4,), jnp.float32),
                                "bias": jax.ShapeDtypeStruct((4,), jnp.float32)}},
              "batch_stats": {"bn": {"mean": jax.ShapeDtypeStruct((4,), jnp.float32),
                                     "var": jax.ShapeDtypeStruct((4,), jnp.float32)}}}
    v = randomize_variables(shapes, seed=3)
    assert np.all(np.asarray(v["params"]["bn"]["scale"]) >= 0.5)
    assert np.all(np.asarray(v["batch_stats"]["bn"]["var"]) >= 0.5)
    assert np.all(np.asarray(v["params"]["conv"]["kernel"]) != 0)
    assert abs(float(np.std(v["params"]["conv"]["kernel"])) - 1 / np.sqrt(18)) < 0.1


def test_gradient_extent():
    g = np.zeros((2, 6, 7, 1))
    assert gradient_extent(g) is None
    g[1, 2, 3] = 1e-30
    g[0, 4, 1] = -2
    assert gradient_extent(g) == (2, 4, 1, 3)


# Input sizes: small enough for a few seconds each, large enough that the selected intermediate layer's field
# is not clipped (its analytic extent is strictly inside the image); features are compared on clipped extents.
@pytest.mark.parametrize("arch,size,layer", [
    ("lenet5", 32, None), ("alexnet", 96, "pool2"), ("vgg16", 48, "stage3/conv2"),
    ("resnet18", 64, "stage2_block0/downsample/conv"), ("resnet50", 64, "stage2_block1/conv1"),
])
@pytest.mark.slow
def test_analytic_equals_empirical(arch, size, layer):
    model = models.create(arch, num_classes=10)
    recs = rf_fn(model, size)
    names = [r.name for r in recs]
    layers = None if layer is None else (names.index(layer), -1)
    variables = random_variables(model, size, seed=1, method="features")
    res = empirical_receptive_field(model, variables, size, batch=1, layers=layers, key=jax.random.key(2))
    assert len(res) == (len(recs) if layer is None else 2)
    for rec, analytic, empirical in res:
        assert analytic == empirical, (rec.name, analytic, empirical)
    if layer is not None:
        r0, r1, c0, c1 = res[0][1]
        assert r0 > 0 and r1 < size - 1 and c0 > 0 and c1 < size - 1  # this one is not clipped
