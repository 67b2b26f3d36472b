"""EfficientNet B0-B7 (Tan & Le 2019) and EfficientNetV2 S/M/L (Tan & Le 2021), exactly as torchvision builds them.

NHWC throughout: input (N, H, W, 3) -> logits (N, num_classes); ``features`` gives (N, H/32, W/32, C) with
C = 4 x (last stage width) for B0-B7 (1280 for B0) and 1280 for V2. ``feature_maps`` (as timm's
``features_only``): the last stage before each stride-2 stage, and the last stage, before the final 1x1
``last_conv`` (reductions 2, 4, 8, 16, 32): ``stage1/2/3/5/7`` (torchvision's ``features.1/2/3/5/7``; B0: 16, 24,
40, 112, 320 channels), V2-S ``stage1/2/3/5/6`` (24, 48, 64, 160, 256).

torchvision's BatchNorm differs by variant and is copied here: B0-B4 use PyTorch's defaults (eps 1e-5, momentum
0.1); B5-B7 use eps 1e-3 and torch momentum 0.01 (flax 0.99); V2 uses eps 1e-3 with the default momentum.

Parameter tree (``params``; BN statistics under the same paths in ``batch_stats`` as ``mean``/``var``) and the
torchvision ``state_dict`` keys it corresponds to. Conv kernels are HWIO (torch OIHW transposed by (2, 3, 1, 0)),
the head kernel (in, out); BN ``scale``/``bias``/``mean``/``var`` are torch ``weight``/``bias``/
``running_mean``/``running_var``. Stages are numbered like their ``features`` index (1..7, or 1..6 for V2-S),
blocks from 0::

    stem/{conv,bn}                          features.0.{0,1}
    stage{i}_block{j}/expand/{conv,bn}      features.{i}.{j}.block.0.{0,1}   (absent when expand ratio is 1)
    stage{i}_block{j}/depthwise/{conv,bn}   features.{i}.{j}.block.{k}.{0,1}
    stage{i}_block{j}/se/{fc1,fc2}          features.{i}.{j}.block.{k}.{fc1,fc2}   (conv with bias)
    stage{i}_block{j}/project/{conv,bn}     features.{i}.{j}.block.{k}.{0,1}
    last_conv/{conv,bn}                     features.{n_stages + 1}.{0,1}
    head                                    classifier.1

Fused-MBConv blocks (the first V2 stages) have ``expand`` (the kxk conv, or the only conv when the ratio is 1,
``features.{i}.{j}.block.0``) and ``project`` (``block.1``) only.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ConvNormAct, ModuleDef
from cnnjax.models.mobilenet import (
    SqueezeExcitation,
    conv_bn_name,
    is_stage_end,
    last_feature,
    make_divisible,
    mb_index,
)
from cnnjax.models.registry import ModulePath, register, v1_and_v2


class _MBBlock(nn.Module):
    """Fields shared by the inverted-residual blocks."""

    expand_ratio: float
    kernel_size: int
    stride: int
    features: int
    drop_rate: float
    conv: ModuleDef
    norm: ModuleDef


class MBConv(_MBBlock):
    """1x1 expand-BN-SiLU -> kxk depthwise-BN-SiLU -> SE (input // 4 squeeze) -> 1x1 project-BN, with a
    stochastic-depth residual when stride is 1 and channels are kept."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cin = x.shape[-1]
        expanded = make_divisible(cin * self.expand_ratio, 8)
        y = x
        if expanded != cin:
            y = ConvNormAct(expanded, 1, self.conv, self.norm, act=nn.silu, name="expand")(y)
        y = ConvNormAct(expanded, self.kernel_size, self.conv, self.norm, stride=self.stride, groups=expanded,
                        act=nn.silu, name="depthwise")(y)
        y = SqueezeExcitation(max(1, cin // 4), self.conv, nn.silu, nn.sigmoid, name="se")(y)
        y = ConvNormAct(self.features, 1, self.conv, self.norm, act=None, name="project")(y)
        if self.stride == 1 and cin == self.features:
            return cnn.StochasticDepth(self.drop_rate)(y, deterministic=not train) + x
        return y


class FusedMBConv(_MBBlock):
    """kxk expand-BN-SiLU -> 1x1 project-BN (or a single kxk conv-BN-SiLU when the ratio is 1), with a
    stochastic-depth residual when stride is 1 and channels are kept."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cin = x.shape[-1]
        expanded = make_divisible(cin * self.expand_ratio, 8)
        if expanded != cin:
            y = ConvNormAct(expanded, self.kernel_size, self.conv, self.norm, stride=self.stride, act=nn.silu,
                            name="expand")(x)
            y = ConvNormAct(self.features, 1, self.conv, self.norm, act=None, name="project")(y)
        else:
            y = ConvNormAct(self.features, self.kernel_size, self.conv, self.norm, stride=self.stride, act=nn.silu,
                            name="expand")(x)
        if self.stride == 1 and cin == self.features:
            return cnn.StochasticDepth(self.drop_rate)(y, deterministic=not train) + x
        return y


#: Stage settings (block type, expand ratio, kernel, stride, input channels, output channels, layers).
B_SETTING = (("mb", 1, 3, 1, 32, 16, 1), ("mb", 6, 3, 2, 16, 24, 2), ("mb", 6, 5, 2, 24, 40, 2),
             ("mb", 6, 3, 2, 40, 80, 3), ("mb", 6, 5, 1, 80, 112, 3), ("mb", 6, 5, 2, 112, 192, 4),
             ("mb", 6, 3, 1, 192, 320, 1))
V2_S_SETTING = (("fused", 1, 3, 1, 24, 24, 2), ("fused", 4, 3, 2, 24, 48, 4), ("fused", 4, 3, 2, 48, 64, 4),
                ("mb", 4, 3, 2, 64, 128, 6), ("mb", 6, 3, 1, 128, 160, 9), ("mb", 6, 3, 2, 160, 256, 15))
V2_M_SETTING = (("fused", 1, 3, 1, 24, 24, 3), ("fused", 4, 3, 2, 24, 48, 5), ("fused", 4, 3, 2, 48, 80, 5),
                ("mb", 4, 3, 2, 80, 160, 7), ("mb", 6, 3, 1, 160, 176, 14), ("mb", 6, 3, 2, 176, 304, 18),
                ("mb", 6, 3, 1, 304, 512, 5))
V2_L_SETTING = (("fused", 1, 3, 1, 32, 32, 4), ("fused", 4, 3, 2, 32, 64, 7), ("fused", 4, 3, 2, 64, 96, 7),
                ("mb", 4, 3, 2, 96, 192, 10), ("mb", 6, 3, 1, 192, 224, 19), ("mb", 6, 3, 2, 224, 384, 25),
                ("mb", 6, 3, 1, 384, 640, 7))


class EfficientNet(ImageClassifier):
    """torchvision's ``EfficientNet`` on NHWC input.

    ``width_mult``/``depth_mult`` scale the MBConv stages (B1-B7; torchvision ignores them for the fused V2
    settings, and so does this); block ``b`` of ``total`` drops its residual branch with probability
    ``stochastic_depth_prob * b / total`` in training. ``last_channel=None`` means 4 x the last stage width.
    """

    setting: Sequence[tuple] = B_SETTING
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.2
    stochastic_depth_prob: float = 0.2
    last_channel: int | None = None
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9

    def _stages(self) -> list[tuple]:
        out = []
        for kind, t, k, s, cin, cout, n in self.setting:
            if kind == "mb":
                cin, cout = make_divisible(cin * self.width_mult, 8), make_divisible(cout * self.width_mult, 8)
                n = int(math.ceil(n * self.depth_mult))
            out.append((kind, t, k, s, cin, cout, n))
        return out

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out)
        norm = self.norm_def(train, epsilon=self.bn_eps, momentum=self.bn_momentum)
        stages = self._stages()
        x = ConvNormAct(stages[0][4], 3, conv, norm, stride=2, act=nn.silu, name="stem")(x)
        strides = [st[3] for st in stages]
        reduction = 2
        if strides[0] > 1:
            x = stage_end(x, "stem", reduction)
        total = sum(st[-1] for st in stages)
        block_id = 0
        for i, (kind, t, k, s, _, cout, n) in enumerate(stages, start=1):
            block = MBConv if kind == "mb" else FusedMBConv
            for j in range(n):
                rate = self.stochastic_depth_prob * float(block_id) / total
                x = block(t, k, s if j == 0 else 1, cout, rate, conv, norm, name=f"stage{i}_block{j}")(x, train)
                block_id += 1
            reduction *= s
            if is_stage_end(strides, i - 1):
                x = stage_end(x, f"stage{i}", reduction)
        last = self.last_channel if self.last_channel is not None else 4 * stages[-1][5]
        x = ConvNormAct(last, 1, conv, norm, act=nn.silu, name="last_conv")(x)
        if features_only:
            return x
        x = cnn.global_avg_pool(x)
        x = cnn.Dropout(self.dropout)(x, deterministic=not train)
        bound = 1.0 / math.sqrt(self.num_classes)
        return cnn.Linear(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=cnn.init.uniform_symmetric(bound), bias_init=cnn.init.zeros, name="head")(x)


_B_BN = dict(bn_eps=1e-3, bn_momentum=0.99)  # torchvision's B5-B7: BatchNorm2d(eps=1e-3, momentum=0.01)
_VARIANTS = {
    "efficientnet_b0": dict(width_mult=1.0, depth_mult=1.0, dropout=0.2),
    "efficientnet_b1": dict(width_mult=1.0, depth_mult=1.1, dropout=0.2),
    "efficientnet_b2": dict(width_mult=1.1, depth_mult=1.2, dropout=0.3),
    "efficientnet_b3": dict(width_mult=1.2, depth_mult=1.4, dropout=0.3),
    "efficientnet_b4": dict(width_mult=1.4, depth_mult=1.8, dropout=0.4),
    "efficientnet_b5": dict(width_mult=1.6, depth_mult=2.2, dropout=0.4, **_B_BN),
    "efficientnet_b6": dict(width_mult=1.8, depth_mult=2.6, dropout=0.5, **_B_BN),
    "efficientnet_b7": dict(width_mult=2.0, depth_mult=3.1, dropout=0.5, **_B_BN),
    "efficientnet_v2_s": dict(setting=V2_S_SETTING, last_channel=1280, dropout=0.2, bn_eps=1e-3),
    "efficientnet_v2_m": dict(setting=V2_M_SETTING, last_channel=1280, dropout=0.3, bn_eps=1e-3),
    "efficientnet_v2_l": dict(setting=V2_L_SETTING, last_channel=1280, dropout=0.4, bn_eps=1e-3),
}


def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
    """torchvision module name of the cnnjax module ``path`` (see the module docstring); the whole set of module
    paths decides the ``block.k`` indices and ``last_conv``'s."""
    if path == ("head",):
        return "classifier.1"
    if path[0] in ("stem", "last_conv"):
        return "features." + conv_bn_name(path, 0 if path[0] == "stem" else last_feature(modules))
    i, j = re.fullmatch(r"stage(\d+)_block(\d+)", path[0]).groups()
    k = mb_index(path[:1], modules)[path[1]]
    if path[1] == "se":
        return f"features.{i}.{j}.block.{k}.{path[2]}"
    return f"features.{i}.{j}.block." + conv_bn_name(path, k)


# torchvision's IMAGENET1K_V1 weights: file, published top-1 / top-5, parameters, eval transform (resize, crop,
# interpolation[, mean, std]: ImageNet's except V2-L's 0.5 / 0.5)
_HALF = (0.5, 0.5, 0.5)
_WEIGHTS = {
    "efficientnet_b0": ("efficientnet_b0_rwightman-7f5810bc.pth", 77.692, 93.532, 5_288_548, 256, 224, "bicubic"),
    "efficientnet_b1": ("efficientnet_b1_rwightman-bac287d4.pth", 78.642, 94.186, 7_794_184, 256, 240, "bicubic"),
    "efficientnet_b2": ("efficientnet_b2_rwightman-c35c1473.pth", 80.608, 95.310, 9_109_994, 288, 288, "bicubic"),
    "efficientnet_b3": ("efficientnet_b3_rwightman-b3899882.pth", 82.008, 96.054, 12_233_232, 320, 300, "bicubic"),
    "efficientnet_b4": ("efficientnet_b4_rwightman-23ab8bcd.pth", 83.384, 96.594, 19_341_616, 384, 380, "bicubic"),
    "efficientnet_b5": ("efficientnet_b5_lukemelas-1a07897c.pth", 83.444, 96.628, 30_389_784, 456, 456, "bicubic"),
    "efficientnet_b6": ("efficientnet_b6_lukemelas-24a108a5.pth", 84.008, 96.916, 43_040_704, 528, 528, "bicubic"),
    "efficientnet_b7": ("efficientnet_b7_lukemelas-c5b4e57e.pth", 84.122, 96.908, 66_347_960, 600, 600, "bicubic"),
    "efficientnet_v2_s": ("efficientnet_v2_s-dd5fe13b.pth", 84.228, 96.878, 21_458_488, 384, 384, "bilinear"),
    "efficientnet_v2_m": ("efficientnet_v2_m-dc08266a.pth", 85.112, 97.156, 54_139_356, 480, 480, "bilinear"),
    "efficientnet_v2_l": ("efficientnet_v2_l-59c71312.pth", 85.808, 97.788, 118_515_272, 480, 480, "bicubic",
                          _HALF, _HALF),
}
# torchvision's IMAGENET1K_V2 weights (the DEFAULT where they exist): file, top-1 / top-5, resize, crop, interpolation
_WEIGHTS_V2 = {"efficientnet_b1": ("efficientnet_b1-c27df63c.pth", 79.838, 94.934, 255, 240, "bilinear")}
for _name, _kw in _VARIANTS.items():
    register(_name, functools.partial(EfficientNet, **_kw), torchvision_map=torchvision_name,
             weights=v1_and_v2(_WEIGHTS[_name], _WEIGHTS_V2.get(_name)))
