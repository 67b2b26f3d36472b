"""ConvNeXt (Liu et al. 2022), exactly as torchvision builds it.

NHWC throughout: input (N, H, W, 3) -> logits (N, num_classes); ``features`` gives the last stage's map
(N, H/32, W/32, C) before pooling, C = 768 (tiny, small), 1024 (base) or 1536 (large). As in torchvision the
final LayerNorm belongs to the classifier and is applied after global average pooling. Inputs must be at
least 32x32. ``feature_maps``: the four stage ends ``stage1..stage4`` (reductions 4, 8, 16, 32; ``widths``
channels), as timm's ``stages.0..3``.

Parameter tree (``params``; there are no batch statistics) and the torchvision ``state_dict`` keys it
corresponds to. Conv kernels are HWIO (torch OIHW transposed by (2, 3, 1, 0)), linear kernels (in, out)
(torch weight transposed); LayerNorm ``scale``/``bias`` are torch ``weight``/``bias``; ``layer_scale`` is torch's
(C, 1, 1) parameter flattened to (C,). Stage ``s`` (1..4) is ``features.{2s - 1}``, blocks numbered from 0::

    stem_conv                              features.0.0
    stem_norm                              features.0.1
    stage{s}_block{j}/dwconv               features.{2s-1}.{j}.block.0
    stage{s}_block{j}/norm                 features.{2s-1}.{j}.block.2
    stage{s}_block{j}/pwconv1              features.{2s-1}.{j}.block.3
    stage{s}_block{j}/pwconv2              features.{2s-1}.{j}.block.5
    stage{s}_block{j}/layer_scale          features.{2s-1}.{j}.layer_scale
    downsample{s}/norm, downsample{s}/conv features.{2s}.{0,1}   (s = 1..3: between stage s and s + 1)
    head_norm                              classifier.0
    head                                   classifier.2
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ModuleDef
from cnnjax.models.registry import ModulePath, imagenet1k_v1, register


class CNBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> Linear 4C -> GELU -> Linear C, times ``layer_scale``, stochastic depth,
    plus the input. (N, H, W, C) -> (N, H, W, C)."""

    drop_rate: float
    layer_scale_init: float
    conv: ModuleDef
    linear: ModuleDef
    norm: ModuleDef
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        y = self.conv(c, 7, padding=3, groups=c, name="dwconv")(x)
        y = self.norm(name="norm")(y)
        y = self.linear(4 * c, name="pwconv1")(y)
        y = jax.nn.gelu(y, approximate=False)
        y = self.linear(c, name="pwconv2")(y)
        gamma = self.param("layer_scale", lambda _, shape, dtype: jnp.full(shape, self.layer_scale_init, dtype),
                           (c,), self.param_dtype)
        y = y * gamma.astype(y.dtype)
        return cnn.StochasticDepth(self.drop_rate)(y, deterministic=not train) + x


class Downsample(nn.Module):
    """LayerNorm on channels -> 2x2 stride-2 conv: (N, H, W, C) -> (N, H/2, W/2, features)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.features, 2, stride=2, name="conv")(self.norm(name="norm")(x))


class ConvNeXt(ImageClassifier):
    """torchvision's ``ConvNeXt`` on NHWC input.

    ``widths``/``depths`` give each stage's channels and block count; block ``b`` of ``total`` drops its
    residual branch with probability ``stochastic_depth_prob * b / (total - 1)`` in training.
    """

    widths: Sequence[int] = (96, 192, 384, 768)
    depths: Sequence[int] = (3, 3, 9, 3)
    stochastic_depth_prob: float = 0.1
    layer_scale: float = 1e-6

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        init = dict(kernel_init=cnn.init.trunc_normal(0.02), bias_init=cnn.init.zeros)
        conv = self.conv_def(use_bias=True, **init)
        linear = self.linear_def(**init)
        norm = functools.partial(cnn.LayerNorm, dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(self.widths[0], 4, stride=4, name="stem_conv")(x)
        x = norm(name="stem_norm")(x)
        total = sum(self.depths)
        block_id = 0
        for s, (width, depth) in enumerate(zip(self.widths, self.depths, strict=True), start=1):
            if s > 1:
                x = Downsample(width, conv, norm, name=f"downsample{s - 1}")(x)
            for j in range(depth):
                rate = self.stochastic_depth_prob * block_id / (total - 1.0)
                x = CNBlock(rate, self.layer_scale, conv, linear, norm, self.param_dtype,
                            name=f"stage{s}_block{j}")(x, train)
                block_id += 1
            x = stage_end(x, f"stage{s}", 2 ** (s + 1))  # torchvision's features.{2s - 1}, timm's stages.{s - 1}
        if features_only:
            return x
        x = norm(name="head_norm")(cnn.global_avg_pool(x))
        return linear(self.num_classes, name="head")(x)


_VARIANTS = {
    "convnext_tiny": dict(widths=(96, 192, 384, 768), depths=(3, 3, 9, 3), stochastic_depth_prob=0.1),
    "convnext_small": dict(widths=(96, 192, 384, 768), depths=(3, 3, 27, 3), stochastic_depth_prob=0.4),
    "convnext_base": dict(widths=(128, 256, 512, 1024), depths=(3, 3, 27, 3), stochastic_depth_prob=0.5),
    "convnext_large": dict(widths=(192, 384, 768, 1536), depths=(3, 3, 27, 3), stochastic_depth_prob=0.5),
}

_CNBLOCK = {"dwconv": "0", "norm": "2", "pwconv1": "3", "pwconv2": "5"}
_FIXED = {"stem_conv": "features.0.0", "stem_norm": "features.0.1", "head_norm": "classifier.0",
          "head": "classifier.2"}


def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
    """torchvision module name of the cnnjax module ``path`` (see the module docstring)."""
    if path[0] in _FIXED:
        return _FIXED[path[0]]
    m = re.fullmatch(r"stage(\d+)_block(\d+)", path[0])
    if m:
        base = f"features.{2 * int(m[1]) - 1}.{m[2]}"
        return base if len(path) == 1 else f"{base}.block.{_CNBLOCK[path[1]]}"
    d = int(path[0].removeprefix("downsample"))
    return f"features.{2 * d}." + {"norm": "0", "conv": "1"}[path[1]]


# torchvision's IMAGENET1K_V1 weights: file, published top-1 / top-5, parameters, eval resize (crop 224, bilinear)
_WEIGHTS = {
    "convnext_tiny": ("convnext_tiny-983f1562.pth", 82.520, 96.146, 28_589_128, 236),
    "convnext_small": ("convnext_small-0c510722.pth", 83.616, 96.650, 50_223_688, 230),
    "convnext_base": ("convnext_base-6075fbad.pth", 84.062, 96.870, 88_591_464, 232),
    "convnext_large": ("convnext_large-ea097f82.pth", 84.414, 96.976, 197_767_336, 232),
}
for _name, _kw in _VARIANTS.items():
    register(_name, functools.partial(ConvNeXt, **_kw), torchvision_map=torchvision_name,
             weights=(imagenet1k_v1(*_WEIGHTS[_name]),))
