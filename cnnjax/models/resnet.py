"""ResNet v1.5 (He et al. 2016; stride on the 3x3 conv of the bottleneck), exactly as torchvision builds it.

Parameter tree: ``stem/{conv,bn}``, ``stage{1..4}_block{i}/{conv1,bn1,conv2,bn2[,conv3,bn3][,downsample]}``,
``head``. Also ResNeXt and Wide ResNet (torchvision's ``groups`` / ``width_per_group``).

``antialias=True`` is Zhang (2019), "Making Convolutional Networks Shift-Invariant Again": every
subsampling becomes "blur, then subsample" with :class:`BlurPool` (the [1, 2, 1] binomial filter): the stem's
max-pool becomes MaxBlurPool (3x3 max-pool with stride 1, then BlurPool stride 2), a strided 3x3 conv becomes
conv (stride 1) -> BN -> ReLU -> BlurPool, and the projection shortcut blurs before its 1x1 conv. Output
shapes and the parameter tree are unchanged (BlurPool has no parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ConvNormAct, ModuleDef
from cnnjax.models.registry import ModulePath, register, v1_and_v2


class BlurPool(nn.Module):
    """Anti-aliased subsampling (Zhang 2019): blur each channel with the binomial filter [1, 2, 1] x [1, 2, 1] / 16,
    then keep every ``stride``-th sample: (N, H, W, C) -> (N, ceil(H / stride), ceil(W / stride), C), the shape
    of a 3x3, padding-1 conv with that stride.

    Borders: zero padding of 1 pixel, renormalised by the filter mass inside the image (so a constant image stays
    constant). No parameters. Computed as two separable passes of shifted adds (much faster on CPU than XLA's
    depthwise convolution), then a strided slice.
    """

    stride: int = 2

    def __call__(self, x: jax.Array) -> jax.Array:
        p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        v = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
        y = v[:, :, :-2] + 2 * v[:, :, 1:-1] + v[:, :, 2:]
        y = y[:, :: self.stride, :: self.stride]
        mass = _blur_mass(x.shape[-3], self.stride)[:, None] * _blur_mass(x.shape[-2], self.stride)[None, :]
        return y * jnp.asarray(1.0 / (16.0 * mass[:, :, None]), x.dtype)


def _blur_mass(size: int, stride: int) -> np.ndarray:
    """Fraction of the 1-D [1, 2, 1] / 4 filter inside an axis of ``size`` pixels, per output sample."""
    ones = np.pad(np.ones(size), 1)
    full = np.convolve(ones, [0.25, 0.5, 0.25], mode="valid")
    return full[::stride]


class Downsample(nn.Module):
    """The projection shortcut: 1x1 conv (stride s) + BN (torchvision's ``downsample``); with ``antialias``,
    :class:`BlurPool` (stride s) then the 1x1 conv with stride 1."""

    features: int
    stride: int
    conv: ModuleDef
    norm: ModuleDef
    antialias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.antialias and self.stride > 1:
            x = BlurPool(self.stride, name="blur")(x)
            x = self.conv(self.features, 1, 1, use_bias=False, name="conv")(x)
        else:
            x = self.conv(self.features, 1, self.stride, use_bias=False, name="conv")(x)
        return self.norm(name="bn")(x)


class _ResidualBlock(nn.Module):
    """Fields shared by the two residual blocks (``expansion``: output channels per ``features``); ``act`` is the
    activation after each BN but the last and after the residual sum (ReLU in the paper and torchvision)."""

    features: int
    stride: int
    conv: ModuleDef
    norm: ModuleDef
    skip: bool = True
    groups: int = 1
    base_width: int = 64
    zero_init_last: bool = False
    antialias: bool = False
    act: str | Callable[[jax.Array], jax.Array] = nn.relu


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs; ``features`` output channels."""

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        blur = self.antialias and self.stride > 1
        y = self.conv(self.features, 3, 1 if blur else self.stride, 1, use_bias=False, name="conv1")(x)
        y = cnn.activation(self.act)(self.norm(name="bn1")(y))
        if blur:
            y = BlurPool(self.stride, name="blur")(y)
        y = self.conv(self.features, 3, 1, 1, use_bias=False, name="conv2")(y)
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros if self.zero_init_last else
                      nn.initializers.ones)(y)
        return cnn.activation(self.act)(y + _shortcut(self, x, self.features))


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (stride, groups) -> 1x1 with 4x expansion; ``features * 4`` output channels."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = int(self.features * (self.base_width / 64.0)) * self.groups
        blur = self.antialias and self.stride > 1
        y = cnn.activation(self.act)(self.norm(name="bn1")(self.conv(width, 1, use_bias=False, name="conv1")(x)))
        y = self.conv(width, 3, 1 if blur else self.stride, 1, groups=self.groups, use_bias=False,
                      name="conv2")(y)
        y = cnn.activation(self.act)(self.norm(name="bn2")(y))
        if blur:
            y = BlurPool(self.stride, name="blur")(y)
        y = self.conv(self.features * 4, 1, use_bias=False, name="conv3")(y)
        y = self.norm(name="bn3", scale_init=nn.initializers.zeros if self.zero_init_last else
                      nn.initializers.ones)(y)
        return cnn.activation(self.act)(y + _shortcut(self, x, self.features * 4))


def check_zero_init(model: nn.Module) -> None:
    """Refuse ``zero_init_last_bn=True`` on a network without shortcuts (``skip=False``): there the block's
    output is ReLU(0) = 0 at init whatever its input, so nothing before the head would ever get a gradient."""
    if model.zero_init_last_bn and not model.skip:
        raise ValueError(f"zero_init_last_bn=True needs shortcuts, and {type(model).__name__}(skip=False) has "
                         "none: every block would output 0 at init and nothing before the head would get a gradient")


def _shortcut(block: nn.Module, x: jax.Array, out_features: int) -> jax.Array | float:
    if not block.skip:
        return 0.0
    if block.stride != 1 or x.shape[-1] != out_features:
        return Downsample(out_features, block.stride, block.conv, block.norm,
                          antialias=getattr(block, "antialias", False), name="downsample")(x)
    return x


class ResNet(ImageClassifier):
    """torchvision's ResNet on NHWC input (N, H, W, 3) -> logits (N, num_classes); features (N, H/32, W/32, C).

    ``feature_maps``: five levels as timm's ``features_only``: ``stem`` (the activation before the max-pool,
    64 channels, reduction 2), then ``stage1..stage4`` (torchvision's ``layer1..layer4``, reductions 4, 8, 16,
    32; 64..512 channels for the basic block, 256..2048 with the bottleneck).

    ``skip=False`` removes every shortcut (the "plain" network); ``zero_init_last_bn`` zero-initialises the
    last BN scale of each block (torchvision's ``zero_init_residual``; refused with ``skip=False``);
    ``antialias`` blurs before every subsampling (see the module docstring); ``act`` (default ReLU) is every
    activation: the stem's and the blocks' (after each BN but the last, and after the residual sum). It has no
    parameters, so the parameter tree does not depend on it.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block_cls: type = BasicBlock
    groups: int = 1
    width_per_group: int = 64
    skip: bool = True
    zero_init_last_bn: bool = False
    act: str | Callable[[jax.Array], jax.Array] = nn.relu
    antialias: bool = False

    def __post_init__(self):
        check_zero_init(self)
        super().__post_init__()

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out)
        norm = self.norm_def(train)
        x = ConvNormAct(64, 7, conv, norm, stride=2, padding=3, act=self.act, name="stem")(x)
        x = stage_end(x, "stem", 2)  # timm's act1 / torchvision's relu: before the max-pool
        if self.antialias:
            x = BlurPool(2, name="stem_blur")(cnn.MaxPool2d(3, 1, 1, name="stem_pool")(x))
        else:
            x = cnn.MaxPool2d(3, 2, 1, name="stem_pool")(x)
        for s, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                x = self.block_cls(64 * 2**s, stride=2 if s > 0 and b == 0 else 1, conv=conv, norm=norm,
                                   skip=self.skip, groups=self.groups, base_width=self.width_per_group,
                                   zero_init_last=self.zero_init_last_bn, antialias=self.antialias,
                                   act=self.act, name=f"stage{s + 1}_block{b}")(x)
            x = stage_end(x, f"stage{s + 1}", 4 * 2**s)  # torchvision's / timm's layer{s + 1}
        if features_only:
            return x
        x = cnn.global_avg_pool(x)
        return cnn.Linear(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)


_VARIANTS = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck),
    "resnet152": dict(stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck),
    "resnext50_32x4d": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, groups=32, width_per_group=4),
    "resnext101_32x8d": dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, groups=32, width_per_group=8),
    "wide_resnet50_2": dict(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, width_per_group=128),
    "wide_resnet101_2": dict(stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, width_per_group=128),
}


def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
    """torchvision module name of the cnnjax module ``path``: ``stem/{conv,bn}`` -> ``conv1``/``bn1``,
    ``stage{s}_block{b}/...`` -> ``layer{s}.{b}...`` (``downsample/{conv,bn}`` -> ``downsample.{0,1}``),
    ``head`` -> ``fc``."""
    if path[0] == "stem":
        return {"conv": "conv1", "bn": "bn1"}[path[1]]
    if path == ("head",):
        return "fc"
    stage, block = path[0].removeprefix("stage").split("_block")
    s, b = int(stage), int(block)
    if path[1] == "downsample":
        return f"layer{s}.{b}.downsample." + {"conv": "0", "bn": "1"}[path[2]]
    return f"layer{s}.{b}.{path[1]}"


# torchvision's IMAGENET1K_V1 weights (file, published top-1 / top-5, parameters), eval transform 256/224 bilinear
_WEIGHTS = {
    "resnet18": ("resnet18-f37072fd.pth", 69.758, 89.078, 11_689_512),
    "resnet34": ("resnet34-b627a593.pth", 73.314, 91.420, 21_797_672),
    "resnet50": ("resnet50-0676ba61.pth", 76.130, 92.862, 25_557_032),
    "resnet101": ("resnet101-63fe2227.pth", 77.374, 93.546, 44_549_160),
    "resnet152": ("resnet152-394f9c45.pth", 78.312, 94.046, 60_192_808),
    "resnext50_32x4d": ("resnext50_32x4d-7cdf4587.pth", 77.618, 93.698, 25_028_904),
    "resnext101_32x8d": ("resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526, 88_791_336),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", 78.468, 94.086, 68_883_240),
    "wide_resnet101_2": ("wide_resnet101_2-32ee1156.pth", 78.848, 94.284, 126_886_696),
}
# torchvision's IMAGENET1K_V2 weights (its "new training recipe", the DEFAULT): file, published top-1 / top-5;
# eval transform 232/224 bilinear
_WEIGHTS_V2 = {
    "resnet50": ("resnet50-11ad3fa6.pth", 80.858, 95.434),
    "resnet101": ("resnet101-cd907fc2.pth", 81.886, 95.780),
    "resnet152": ("resnet152-f82ba261.pth", 82.284, 96.002),
    "resnext50_32x4d": ("resnext50_32x4d-1a0047aa.pth", 81.198, 95.340),
    "resnext101_32x8d": ("resnext101_32x8d-110c445d.pth", 82.834, 96.228),
    "wide_resnet50_2": ("wide_resnet50_2-9ba9bcbe.pth", 81.602, 95.758),
    "wide_resnet101_2": ("wide_resnet101_2-d733dc28.pth", 82.510, 96.020),
}
for _name, _kw in _VARIANTS.items():
    register(_name, functools.partial(ResNet, **_kw), torchvision_map=torchvision_name,
             weights=v1_and_v2(_WEIGHTS[_name], _WEIGHTS_V2.get(_name)), zero_init_residual=True)
