"""Multi-scale features: ``model.apply(v, x, method='feature_maps', out_indices=...)`` and
``cnnjax.models.feature_info(name)``.

* shapes for every registered architecture at an odd, non-square input size, through ``jax.eval_shape``
  (nothing compiled), and for one architecture per family (the edit loop) at its default size too; the whole zoo
  under ``slow`` (a trace of the larger models takes seconds: the variants of a family differ in depth and width,
  which the odd size checks as well as two sizes do);
* ``feature_info`` against timm's ``features_only=True`` ``feature_info`` (channels, reduction), written out below
  from timm 1.0.31 (timm is not a dependency);
* ``out_indices`` selection (timm's rules) and its errors; MLPs raise :class:`NoFeatureLevelsError`;
* values equal to torchvision's ``create_feature_extractor`` at the corresponding nodes, after converting the
  same random torch weights with ``from_torchvision`` (the parity tolerance and torch models of
  ``tests/test_weights_parity.py``), at one small odd input (67x83), one compile per architecture: resnet18 in the
  edit loop, the other families under ``slow``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models import FeatureInfo, NoFeatureLevelsError

NO_LEVELS = ("mlp", "mlp_10m")
SPATIAL = [n for n in models.names() if n not in NO_LEVELS]
# one per family (and per level rule): the edit-loop tier; every other architecture runs under `slow`
FAST = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "lenet5", "mobilenet_v2",
        "mobilenet_v3_small", "resnet18", "resnet20", "vgg11_bn")
UNPADDED = ("alexnet", "lenet5", "lenet5_modern")  # unpadded convs: maps a little smaller than H / reduction

# timm 1.0.31, `timm.create_model(name, features_only=True).feature_info`: (channels, reduction) per level
TIMM = {
    "resnet18": ("resnet18", [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]),
    "resnet50": ("resnet50", [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
    "resnext50_32x4d": ("resnext50_32x4d", [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
    "wide_resnet50_2": ("wide_resnet50_2", [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]),
    "convnext_tiny": ("convnext_tiny", [(96, 4), (192, 8), (384, 16), (768, 32)]),
    "convnext_large": ("convnext_large", [(192, 4), (384, 8), (768, 16), (1536, 32)]),
    "efficientnet_b0": ("efficientnet_b0", [(16, 2), (24, 4), (40, 8), (112, 16), (320, 32)]),
    "efficientnet_b3": ("efficientnet_b3", [(24, 2), (32, 4), (48, 8), (136, 16), (384, 32)]),
    "efficientnet_b7": ("efficientnet_b7", [(32, 2), (48, 4), (80, 8), (224, 16), (640, 32)]),
    "efficientnet_v2_s": ("efficientnetv2_s", [(24, 2), (48, 4), (64, 8), (160, 16), (256, 32)]),
    "efficientnet_v2_m": ("efficientnetv2_m", [(24, 2), (48, 4), (80, 8), (176, 16), (512, 32)]),
    "efficientnet_v2_l": ("efficientnetv2_l", [(32, 2), (64, 4), (96, 8), (224, 16), (640, 32)]),
    "mobilenet_v2": ("mobilenetv2_100", [(16, 2), (24, 4), (32, 8), (96, 16), (320, 32)]),
    "mobilenet_v3_large": ("mobilenetv3_large_100", [(16, 2), (24, 4), (40, 8), (112, 16), (960, 32)]),
    "mobilenet_v3_small": ("mobilenetv3_small_100", [(16, 2), (16, 4), (24, 8), (48, 16), (576, 32)]),
    "densenet121": ("densenet121", [(64, 2), (256, 4), (512, 8), (1024, 16), (1024, 32)]),
    "densenet161": ("densenet161", [(96, 2), (384, 4), (768, 8), (2112, 16), (2208, 32)]),
    "vgg16": ("vgg16", [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16), (512, 32)]),
    "vgg11_bn": ("vgg11_bn", [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16), (512, 32)]),
}


def _tiered(names):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _abstract_maps(model, h: int, w: int, out_indices=None):
    """``feature_maps`` shapes of ``model`` on a (2, h, w, C) input: traced, never compiled."""
    x = jax.ShapeDtypeStruct((2, h, w, getattr(model, "in_channels", 3)), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda x: model.init_with_output(rngs, x, method="feature_maps",
                                                           out_indices=out_indices)[0], x)


def _second_size(arch: str) -> tuple[int, int]:
    """An odd, non-square size other than the default: 193x257 for the ImageNet models, 45x61 for 32x32 ones."""
    return (193, 257) if models.record(arch).input_size >= 224 else (45, 61)


@pytest.mark.parametrize("arch", _tiered(SPATIAL))
def test_feature_maps_shapes(arch):
    info = models.feature_info(arch)
    assert [f.index for f in info] == list(range(len(info))) and len(info) >= 3
    reductions = [f.reduction for f in info]
    assert reductions == sorted(set(reductions)), f"{arch}: reductions must strictly increase: {reductions}"
    assert all(r & (r - 1) == 0 for r in reductions)  # powers of two
    model = models.create(arch)
    size = models.record(arch).input_size
    for h, w in ((size, size), _second_size(arch)) if arch in FAST else (_second_size(arch),):
        maps = _abstract_maps(model, h, w)
        assert isinstance(maps, tuple) and len(maps) == len(info), (h, w)
        for f, m in zip(info, maps, strict=True):
            assert m.ndim == 4 and m.shape[0] == 2 and m.shape[-1] == f.channels, (h, w, f, m.shape)
            for side, got in ((h, m.shape[1]), (w, m.shape[2])):
                assert got <= math.ceil(side / f.reduction), (h, w, f, m.shape)
                if arch not in UNPADDED:
                    assert got >= side // f.reduction, (h, w, f, m.shape)
        sides = [m.shape[1] for m in maps]
        assert sides == sorted(sides, reverse=True), (h, w, sides)


@pytest.mark.parametrize("arch", _tiered(TIMM))
def test_feature_info_matches_timm(arch):
    timm_name, want = TIMM[arch]
    got = [(f.channels, f.reduction) for f in models.feature_info(arch)]
    assert got == want, f"{arch} vs timm {timm_name}"


def test_feature_info_names_and_records():
    info = models.feature_info("resnet50")
    assert all(isinstance(f, FeatureInfo) for f in info)
    assert [f.module for f in info] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert info[1].as_dict() == {"index": 1, "module": "stage1", "channels": 256, "reduction": 4}
    assert [f.module for f in models.feature_info("densenet121")] == ["stem", "denseblock1", "denseblock2",
                                                                      "denseblock3", "norm5"]
    assert [f.module for f in models.feature_info("mobilenet_v3_small")] == ["stem", "block1", "block3", "block8",
                                                                             "last_conv"]
    assert [f.module for f in models.feature_info("vgg11")][-2:] == ["stage5/conv1", "stage5"]
    # an instance with other widths is traced as it is
    wide = models.create("mobilenet_v2", width_mult=0.5)
    assert [f.channels for f in models.feature_info(wide)] == [8, 16, 16, 48, 160]
    # the module names are real cnnjax module paths (parameter-free ones included), or a stage's prefix of them
    for arch in ("resnet18", "vgg11_bn", "alexnet", "googlenet", "mobilenet_v3_small", "efficientnet_b0"):
        tree = jax.eval_shape(lambda x, arch=arch: models.create(arch).init(
            jax.random.key(0), x, capture_intermediates=True), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
        modules = {"/".join(k.key for k in path[:-2]) for path, _ in
                   jax.tree_util.tree_flatten_with_path(tree["intermediates"])[0]}
        for f in models.feature_info(arch):
            assert any(m == f.module or m.startswith(f.module + "_block") for m in modules), (arch, f.module)


def test_out_indices_select_as_timm():
    model = models.create("resnet18")
    all_maps = _abstract_maps(model, 64, 64)
    assert [m.shape for m in all_maps] == [(2, 32, 32, 64), (2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256),
                                           (2, 2, 2, 512)]
    cases = [((1, 2, 3), [1, 2, 3]), (2, [3, 4]), (5, [0, 1, 2, 3, 4]), ((-1,), [4]), ((0, -1), [0, 4]),
             ((3, 1), [1, 3]), ([4], [4]), (range(2), [0, 1])]  # maps always in network order, as timm
    for out_indices, want in cases:
        maps = _abstract_maps(model, 64, 64, out_indices)
        assert [m.shape for m in maps] == [all_maps[i].shape for i in want], out_indices
        assert [f.index for f in models.feature_info("resnet18", out_indices)] == want


@pytest.mark.parametrize("out_indices, error, match", [
    ((5,), ValueError, r"level 5 is out of range: ResNet has 5 feature levels, indices 0..4 or -5..-1"),
    ((-6,), ValueError, r"level -6 is out of range"),
    (0, ValueError, r"the last n must be 1..5"),
    (6, ValueError, r"the last n must be 1..5"),
    ((), ValueError, r"out_indices is empty"),
    ((1, 1), ValueError, r"names a level twice"),
    ((1, -4), ValueError, r"names a level twice"),
    ((1.0,), TypeError, r"must hold ints"),
    ("1", TypeError, r"must be None, an int"),
    (True, TypeError, r"must be None, an int"),
])
def test_bad_out_indices_raise_at_trace_time(out_indices, error, match):
    with pytest.raises(error, match=match):
        _abstract_maps(models.create("resnet18"), 64, 64, out_indices)
    with pytest.raises(error):
        models.feature_info("resnet18", out_indices)


def test_bad_out_indices_name_the_levels():
    with pytest.raises(ValueError, match=r"0: stem \(reduction 2\), 1: stage1 \(reduction 4\)"):
        models.feature_info("resnet18", (7,))


@pytest.mark.parametrize("arch", NO_LEVELS)
def test_models_without_spatial_stages_raise(arch):
    with pytest.raises(NoFeatureLevelsError, match="MLP has no spatial stages"):
        models.feature_info(arch)
    model = models.create(arch)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                                                  jnp.float32))
    with pytest.raises(NoFeatureLevelsError):
        jax.eval_shape(lambda v, x: model.apply(v, x, method="feature_maps"), variables,
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert issubclass(NoFeatureLevelsError, ValueError)


def test_feature_maps_use_the_classifier_variables_and_train_mode():
    """feature_maps runs on the variables of ``init`` (the classifier's tree, head unused), is the same forward in
    training mode (BatchNorm statistics updated through ``mutable``), and too-small inputs fail as ``__call__``."""
    model = models.create("resnet18")
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    trunk = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, method="feature_maps"), x)
    flat, trunk_flat = (dict(jax.tree_util.tree_flatten_with_path(v)[0]) for v in (variables, trunk))
    assert set(trunk_flat) < set(flat) and all(flat[k].shape == trunk_flat[k].shape for k in trunk_flat)
    assert "head" in variables["params"] and "head" not in trunk["params"]
    maps = jax.eval_shape(lambda v, x: model.apply(v, x, method="feature_maps", out_indices=(4,)), variables, x)
    assert [m.shape for m in maps] == [(2, 2, 2, 512)]
    maps, updates = jax.eval_shape(lambda v, x: model.apply(v, x, True, method="feature_maps",
                                                            mutable=["batch_stats"]), variables, x)
    assert len(maps) == 5
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])
    with pytest.raises(models.base.InputTooSmallError, match="AlexNet needs inputs of at least 63x63, got 32x32"):
        _abstract_maps(models.create("alexnet"), 32, 32)


# --------------------------------------------------------------------------------------------------------------
# values against torchvision's create_feature_extractor


# Here: resnet18 for the edit loop (tests/test_weights_parity.py is all slow) and the architectures without a
# logits parity case. Every architecture of tests/test_weights_parity.py (resnet18/34/50/101/152, convnext_tiny,
# densenet121, mobilenet_v2, efficientnet_b0, the eight VGGs, googlenet, alexnet) is compared there, at the same
# 67x83 input, in the same compiled function and on the same torch model as its logits (one torch init, one
# conversion, one compile per architecture).
PARITY = ("resnet18", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_v2_s")


@pytest.mark.parity
@pytest.mark.parametrize("arch", [a if a == "resnet18" else pytest.param(a, marks=pytest.mark.slow) for a in PARITY])
def test_feature_maps_match_torchvision_feature_extractor(arch):
    pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'cnnjax[torch]')")
    from _torch_models import check_feature_maps
    from test_weights_parity import SIZE, TOL, _torch_model

    from cnnjax.weights import from_torchvision

    tm = _torch_model(arch)
    variables = jax.tree_util.tree_map(jnp.asarray, from_torchvision(arch, tm.state_dict()))
    model = models.create(arch)
    x = np.random.RandomState(0).randn(1, *SIZE, 3).astype(np.float32)
    with jax.default_matmul_precision("float32"):
        got = jax.jit(lambda v, x: model.apply(v, x, method="feature_maps"))(variables, x)
    check_feature_maps(arch, tm, x, got, TOL)
