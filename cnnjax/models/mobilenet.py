"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 (Howard et al. 2019), exactly as torchvision builds them.

NHWC throughout: input (N, H, W, 3) -> logits (N, num_classes); ``features`` gives (N, H/32, W/32, C) with
C = 1280 (v2), 576 (v3 small) or 960 (v3 large) at width 1.0.

``feature_maps`` (as timm's ``features_only``; :func:`is_stage_end`): the last block before each stride-2 block
(the stem when the first block strides), then the last map: for V2 the last block (``block17``, 320 channels:
timm's V2 keeps the final 1x1 conv out of its levels), for V3 ``last_conv`` (960 / 576 channels, which timm
counts as its last stage). Levels, reductions 2, 4, 8, 16, 32 (torchvision ``features`` index):
V2 ``block1/3/6/13/17`` (1, 3, 6, 13, 17), 16/24/32/96/320 channels; V3-large ``block1/3/6/12``,
``last_conv`` (1, 3, 6, 12, 16), 16/24/40/112/960; V3-small ``stem``, ``block1/3/8``, ``last_conv``
(0, 1, 3, 8, 12), 16/16/24/48/576.

Parameter tree (``params``; BN statistics live under the same paths in ``batch_stats`` as ``mean``/``var``)
and the torchvision ``state_dict`` keys it corresponds to. Conv kernels are HWIO (torch OIHW transposed by
(2, 3, 1, 0)), linear kernels (in, out) (torch weight transposed); BN ``scale``/``bias``/``mean``/``var`` are
torch ``weight``/``bias``/``running_mean``/``running_var``.

MobileNetV2::

    stem/{conv,bn}                       features.0.{0,1}
    block{i}/expand/{conv,bn}            features.{i}.conv.0.{0,1}     (i = 1..17; absent in block1, t = 1)
    block{i}/depthwise/{conv,bn}         features.{i}.conv.{1,2}.{0,1}  (conv.0 in block1)
    block{i}/project/conv, .../bn        features.{i}.conv.{2,3}        (conv.{1,2} in block1)
    last_conv/{conv,bn}                  features.18.{0,1}
    head                                 classifier.1

MobileNetV3 (blocks are numbered like their ``features`` index; the ``block.k`` index counts the present parts)::

    stem/{conv,bn}                       features.0.{0,1}
    block{i}/expand/{conv,bn}            features.{i}.block.0.{0,1}     (only when expanded != input channels)
    block{i}/depthwise/{conv,bn}         features.{i}.block.{k}.{0,1}
    block{i}/se/{fc1,fc2}                features.{i}.block.{k}.{fc1,fc2}  (only where the config uses SE)
    block{i}/project/{conv,bn}           features.{i}.block.{k}.{0,1}
    last_conv/{conv,bn}                  features.{n + 1}.{0,1}
    pre_head                             classifier.0
    head                                 classifier.3
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ConvNormAct, ModuleDef
from cnnjax.models.registry import ModulePath, TorchvisionMap, imagenet1k_v1, register, v1_and_v2


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round ``v`` to a multiple of ``divisor``, never below 90% of ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def is_stage_end(strides: Sequence[int], i: int) -> bool:
    """Whether block (or stage) ``i`` of blocks with these ``strides`` ends a feature level: it is the last one,
    or the next one subsamples (timm's ``_efficientnet_builder`` rule)."""
    return i + 1 == len(strides) or strides[i + 1] > 1


def hardsigmoid(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardsigmoid``: relu6(x + 3) / 6."""
    return jax.nn.relu6(x + 3.0) / 6.0


def hardswish(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardswish``: x * relu6(x + 3) / 6."""
    return x * jax.nn.relu6(x + 3.0) / 6.0


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation``: x * scale_act(fc2(act(fc1(mean_hw(x))))), fc1/fc2 1x1 convs with bias.

    (N, H, W, C) -> (N, H, W, C); ``fc1`` maps C -> ``squeeze_channels``, ``fc2`` back to C.
    """

    squeeze_channels: int
    conv: ModuleDef
    act: str | Callable[[jax.Array], jax.Array] = nn.relu
    scale_act: str | Callable[[jax.Array], jax.Array] = nn.sigmoid

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = cnn.global_avg_pool(x, keepdims=True)
        s = self.conv(self.squeeze_channels, 1, use_bias=True, bias_init=cnn.init.zeros, name="fc1")(s)
        s = cnn.activation(self.scale_act)(self.conv(x.shape[-1], 1, use_bias=True, bias_init=cnn.init.zeros,
                                                     name="fc2")(cnn.activation(self.act)(s)))
        return x * s


class InvertedResidualV2(nn.Module):
    """MobileNetV2 block: [1x1 expand-BN-ReLU6] -> 3x3 depthwise-BN-ReLU6 -> 1x1 project-BN (+ x if it fits)."""

    features: int
    stride: int
    expand_ratio: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        hidden = int(round(cin * self.expand_ratio))
        y = x
        if self.expand_ratio != 1:
            y = ConvNormAct(hidden, 1, self.conv, self.norm, act=jax.nn.relu6, name="expand")(y)
        y = ConvNormAct(hidden, 3, self.conv, self.norm, stride=self.stride, groups=hidden, act=jax.nn.relu6,
                        name="depthwise")(y)
        y = ConvNormAct(self.features, 1, self.conv, self.norm, act=None, name="project")(y)
        return x + y if self.stride == 1 and cin == self.features else y


#: torchvision's MobileNetV2 setting: (expand ratio t, channels c, repeats n, first stride s).
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))


class MobileNetV2(ImageClassifier):
    """torchvision's ``MobileNetV2(width_mult, round_nearest=8, dropout=0.2)`` on NHWC input."""

    width_mult: float = 1.0
    round_nearest: int = 8
    dropout: float = 0.2
    setting: Sequence[Sequence[int]] = V2_SETTING

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out)
        norm = self.norm_def(train)
        x = ConvNormAct(make_divisible(32 * self.width_mult, self.round_nearest), 3, conv, norm, stride=2,
                        act=jax.nn.relu6, name="stem")(x)
        strides = [s for *_, s in self.setting]
        reduction = 2
        if strides[0] > 1:
            x = stage_end(x, "stem", reduction)
        i = 0
        for g, (t, c, n, s) in enumerate(self.setting):
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for j in range(n):
                i += 1
                x = InvertedResidualV2(out, s if j == 0 else 1, t, conv, norm, name=f"block{i}")(x)
            reduction *= s
            if is_stage_end(strides, g):
                x = stage_end(x, f"block{i}", reduction)
        last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        x = ConvNormAct(last, 1, conv, norm, act=jax.nn.relu6, name="last_conv")(x)
        if features_only:
            return x
        x = cnn.global_avg_pool(x)
        x = cnn.Dropout(self.dropout)(x, deterministic=not train)
        return cnn.Linear(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=cnn.init.normal(0.01), bias_init=cnn.init.zeros, name="head")(x)


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: [1x1 expand-BN-act] -> kxk depthwise-BN-act -> [SE] -> 1x1 project-BN (+ x if it fits)."""

    expanded: int
    features: int
    kernel_size: int
    stride: int
    use_se: bool
    use_hs: bool
    conv: ModuleDef
    norm: ModuleDef
    dilation: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        act = hardswish if self.use_hs else nn.relu
        y = x
        if self.expanded != cin:
            y = ConvNormAct(self.expanded, 1, self.conv, self.norm, act=act, name="expand")(y)
        d = self.dilation
        dconv = functools.partial(self.conv, dilation=d) if d > 1 else self.conv
        y = ConvNormAct(self.expanded, self.kernel_size, dconv, self.norm, stride=1 if d > 1 else self.stride,
                        padding=(self.kernel_size - 1) // 2 * d, groups=self.expanded, act=act, name="depthwise")(y)
        if self.use_se:
            y = SqueezeExcitation(make_divisible(self.expanded // 4, 8), self.conv, nn.relu, hardsigmoid,
                                  name="se")(y)
        y = ConvNormAct(self.features, 1, self.conv, self.norm, act=None, name="project")(y)
        return x + y if self.stride == 1 and cin == self.features else y


#: torchvision's MobileNetV3 settings: (input, kernel, expanded, out, use_se, activation, stride), and the
#: width of the penultimate linear layer.
V3_LARGE = ((16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
            (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1))
V3_SMALL = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1))


class MobileNetV3(ImageClassifier):
    """torchvision's ``MobileNetV3`` (BN eps 1e-3, torch momentum 0.01) on NHWC input."""

    setting: Sequence[tuple] = V3_LARGE
    last_channel: int = 1280
    width_mult: float = 1.0
    dropout: float = 0.2

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out)
        norm = self.norm_def(train, epsilon=1e-3, momentum=0.99)

        def adjust(c: int) -> int:
            return make_divisible(c * self.width_mult, 8)

        x = ConvNormAct(adjust(self.setting[0][0]), 3, conv, norm, stride=2, act=hardswish, name="stem")(x)
        strides = [row[6] for row in self.setting] + [1]  # last_conv (1x1) ends the last level
        reduction = 2
        if strides[0] > 1:
            x = stage_end(x, "stem", reduction)
        for i, (_, k, exp, out, se, act, s) in enumerate(self.setting, start=1):
            x = InvertedResidualV3(adjust(exp), adjust(out), k, s, se, act == "HS", conv, norm, name=f"block{i}")(x)
            reduction *= s
            if is_stage_end(strides, i - 1):
                x = stage_end(x, f"block{i}", reduction)
        x = ConvNormAct(6 * x.shape[-1], 1, conv, norm, act=hardswish, name="last_conv")(x)
        x = stage_end(x, "last_conv", reduction)
        if features_only:
            return x
        x = cnn.global_avg_pool(x)
        linear = self.linear_def(kernel_init=cnn.init.normal(0.01), bias_init=cnn.init.zeros)
        x = hardswish(linear(adjust(self.last_channel), name="pre_head")(x))
        x = cnn.Dropout(self.dropout)(x, deterministic=not train)
        return linear(self.num_classes, name="head")(x)


# ----------------------------------------------------------------------------------------------------------------
# torchvision module names (shared with EfficientNet)

MB_ORDER = ("expand", "depthwise", "se", "project")  # torchvision's order inside (Fused)MBConv / InvertedResidual


@functools.lru_cache(maxsize=1024)
def mb_index(block: ModulePath, modules: frozenset[ModulePath]) -> dict[str, int]:
    """Position of each part of an inverted-residual block in torchvision's ``block`` Sequential."""
    parts = {p[len(block)] for p in modules if p[:len(block)] == block and len(p) > len(block)}
    unknown = parts - set(MB_ORDER)
    if unknown:
        raise ValueError(f"unexpected submodules {sorted(unknown)} in {'/'.join(block)}")
    return {name: i for i, name in enumerate(n for n in MB_ORDER if n in parts)}


def last_feature(modules: frozenset[ModulePath]) -> int:
    """Index of ``last_conv`` in torchvision's ``features``: one after the last block / stage."""
    nums = [int(m[1]) for p in modules if (m := re.fullmatch(r"(?:block|stage)(\d+).*", p[0]))]
    return max(nums) + 1


def conv_bn_name(path: ModulePath, i: int) -> str:
    """``ConvNormAct`` (``conv``/``bn``) at ``i``: torchvision's ``Conv2dNormActivation`` (``.0``/``.1``)."""
    return f"{i}." + {"conv": "0", "bn": "1"}[path[-1]]


def torchvision_names(v2: bool) -> TorchvisionMap:
    """The torchvision module name of each cnnjax module path of MobileNetV2 (``v2``) or V3 (see the module
    docstring); the whole set of module paths decides the ``block.k`` / ``conv.k`` indices."""

    def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
        if path == ("head",):
            return "classifier.1" if v2 else "classifier.3"
        if path == ("pre_head",):
            return "classifier.0"
        if path[0] in ("stem", "last_conv"):
            return "features." + conv_bn_name(path, 0 if path[0] == "stem" else last_feature(modules))
        i = int(path[0].removeprefix("block"))
        k = mb_index(path[:1], modules)[path[1]]
        if v2:  # features.{i}.conv: [expand ConvNormAct], depthwise ConvNormAct, project Conv2d, project BN
            if path[1] == "project":
                return f"features.{i}.conv.{k + {'conv': 0, 'bn': 1}[path[2]]}"
            return f"features.{i}.conv." + conv_bn_name(path, k)
        if path[1] == "se":
            return f"features.{i}.block.{k}.{path[2]}"
        return f"features.{i}.block." + conv_bn_name(path, k)

    return torchvision_name


register("mobilenet_v2", MobileNetV2, torchvision_map=torchvision_names(v2=True),
         weights=v1_and_v2(("mobilenet_v2-b0353104.pth", 71.878, 90.286, 3_504_872),
                           ("mobilenet_v2-7ebf99e0.pth", 72.154, 90.822)))
register("mobilenet_v3_large", functools.partial(MobileNetV3, setting=V3_LARGE, last_channel=1280),
         torchvision_map=torchvision_names(v2=False),
         weights=v1_and_v2(("mobilenet_v3_large-8738ca79.pth", 74.042, 91.340, 5_483_032),
                           ("mobilenet_v3_large-5c1a4163.pth", 75.274, 92.566)))
register("mobilenet_v3_small", functools.partial(MobileNetV3, setting=V3_SMALL, last_channel=1024),
         torchvision_map=torchvision_names(v2=False),
         weights=(imagenet1k_v1("mobilenet_v3_small-047dcff4.pth", 67.668, 87.402, 2_542_856),))
