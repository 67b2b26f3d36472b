"""VGG (Simonyan & Zisserman 2014) as torchvision builds it, with and without BatchNorm.

Parameter tree: ``stage{s}/conv{j}`` (+ ``stage{s}/bn{j}`` for ``_bn``), ``fc6``, ``fc7``, ``head``; the
torchvision key of ``stage{s}/conv{j}`` is ``features.{i}`` where ``i`` counts modules in its ``features``
Sequential (see :func:`torchvision_feature_indices`), and ``fc6``/``fc7``/``head`` are ``classifier.0/3/6``.
NHWC input (N, H, W, 3) -> logits; ``features`` -> (N, 7, 7, 512) at 224x224. Flatten in (C, H, W) order.
``feature_maps``: six levels, as timm's VGG: each stage's last conv (+ BN) + ReLU before its max-pool
(``stage{s}/conv{j}`` or ``stage{s}/bn{j}``; reductions 1, 2, 4, 8, 16), then the last max-pool (``stage5``,
reduction 32).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ModuleDef, flatten_nchw
from cnnjax.models.registry import ModulePath, TorchvisionMap, imagenet1k_v1, register, torchvision_weights

#: Conv widths per stage (each stage ends with a 2x2 max-pool): configurations A, B, D, E of the paper.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def torchvision_feature_indices(stages: Sequence[Sequence[int]], batch_norm: bool) -> list[tuple[int, int, int]]:
    """``(stage, conv, index)``: the index of each conv in torchvision's ``features`` Sequential (the BN is
    at ``index + 1``)."""
    out, i = [], 0
    for s, widths in enumerate(stages):
        for j in range(len(widths)):
            out.append((s + 1, j, i))
            i += 3 if batch_norm else 2  # conv, [bn], relu
        i += 1  # max-pool
    return out


class VGGStage(nn.Module):
    """3x3 convs (padding 1) [+ BN] + ReLU, then a 2x2 max-pool; ``reduction``: the stride before it (the
    pre-pool map is a feature level)."""

    widths: Sequence[int]
    conv: ModuleDef
    norm: ModuleDef | None
    reduction: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j, width in enumerate(self.widths):
            x = self.conv(width, 3, 1, 1, name=f"conv{j}")(x)
            if self.norm is not None:
                x = self.norm(name=f"bn{j}")(x)
            x = nn.relu(x)
        last = f"{'conv' if self.norm is None else 'bn'}{len(self.widths) - 1}"
        x = stage_end(x, f"{self.name}/{last}", self.reduction)
        return cnn.MaxPool2d(2, 2, name="pool")(x)


class VGG(ImageClassifier):
    """torchvision ``vgg*``: five conv stages, adaptive average pool to 7x7, three linear layers."""

    stages: Sequence[Sequence[int]] = CONFIGS["vgg16"]
    batch_norm: bool = False
    dropout: float = 0.5

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out, bias_init=cnn.init.zeros)
        norm = self.norm_def(train) if self.batch_norm else None
        dense = self.linear_def(kernel_init=cnn.init.normal(0.01), bias_init=cnn.init.zeros)
        for s, widths in enumerate(self.stages):
            x = VGGStage(tuple(widths), conv, norm, 2**s, name=f"stage{s + 1}")(x)
        x = stage_end(x, f"stage{len(self.stages)}", 2 ** len(self.stages))
        if features_only:
            return x
        x = flatten_nchw(cnn.AdaptiveAvgPool2d((7, 7), name="avgpool")(x))
        x = nn.relu(dense(4096, name="fc6")(x))
        x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(dense(4096, name="fc7")(x))
        x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_classes, name="head")(x)


def torchvision_names(stages: Sequence[Sequence[int]], batch_norm: bool) -> TorchvisionMap:
    """The torchvision module name of each cnnjax module path of ``VGG(stages, batch_norm)`` (see the module
    docstring)."""
    index = {(s, j): i for s, j, i in torchvision_feature_indices(stages, batch_norm)}

    def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
        if path[0] in ("fc6", "fc7", "head"):
            return "classifier." + {"fc6": "0", "fc7": "3", "head": "6"}[path[0]]
        s = int(path[0].removeprefix("stage"))
        kind, j = re.fullmatch(r"(conv|bn)(\d+)", path[1]).groups()
        return f"features.{index[(s, int(j))] + (kind == 'bn')}"

    return torchvision_name


# torchvision's IMAGENET1K_V1 weights (file, published top-1 / top-5, parameters), eval transform 256/224 bilinear
_WEIGHTS = {
    "vgg11": ("vgg11-8a719046.pth", 69.020, 88.628, 132_863_336),
    "vgg13": ("vgg13-19584684.pth", 69.928, 89.246, 133_047_848),
    "vgg16": ("vgg16-397923af.pth", 71.592, 90.382, 138_357_544),
    "vgg19": ("vgg19-dcbb9e9d.pth", 72.376, 90.876, 143_667_240),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 70.370, 89.810, 132_868_840),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 71.586, 90.374, 133_053_736),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 73.360, 91.516, 138_365_992),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 74.218, 91.842, 143_678_248),
}
# VGG-16's IMAGENET1K_FEATURES (ported from the paper's Caffe model by amdegroot): only ``features`` is valid (the
# classifier is not: no categories, no accuracy), for 0-255 input less the mean pixel (std 1/255)
_FEATURES = {"vgg16": (torchvision_weights("IMAGENET1K_FEATURES", "vgg16_features-amdegroot-88682ab5.pth", None, None,
                                           138_357_544, mean=(0.48235, 0.45882, 0.40784), std=(1 / 255,) * 3,
                                           categories=None),)}
for _name, _stages in CONFIGS.items():
    register(_name, functools.partial(VGG, stages=_stages), torchvision_map=torchvision_names(_stages, False),
             weights=(imagenet1k_v1(*_WEIGHTS[_name]), *_FEATURES.get(_name, ())))
    register(f"{_name}_bn", functools.partial(VGG, stages=_stages, batch_norm=True),
             torchvision_map=torchvision_names(_stages, True), weights=(imagenet1k_v1(*_WEIGHTS[f"{_name}_bn"]),))
