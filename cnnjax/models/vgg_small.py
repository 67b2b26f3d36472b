"""``vgg_small``: a narrow VGG-style stack of 3x3 convolutions for 32x32 inputs (the ``downsampling`` and
``vgg-depth`` experiments).

Three stages of 16, 32 and 64 channels; ``depth`` 3x3 convs (padding 1) spread over them as evenly as possible,
the earlier stages taking the remainder (8 -> 3, 3, 2; 11 -> 4, 4, 3; 30 -> 10, 10, 10); each conv is followed by
BatchNorm (``norm="batch"``; the conv then has no bias) or nothing (``norm="none"``; a zero-initialised bias),
then the activation ``act`` (default ReLU; a name of :data:`cnnjax.nn.ACTIVATIONS` such as ``"tanh"`` or
``"sigmoid"``, or a function: the ``activations`` experiment). Each stage ends with a 2x downsampling, ``downsample``:

* ``"max"``: 2x2 max pool, stride 2 (VGG's);
* ``"avg"``: 2x2 average pool, stride 2;
* ``"stride"``: the stage's last conv has stride 2 (no pooling layer; Springenberg et al. 2015's "Strided-CNN":
  the same parameters as ``"max"``, a quarter of that conv's multiply-adds);
* ``"blur"``: Zhang (2019)'s MaxBlurPool: 2x2 max pool with stride 1, then
  :class:`~cnnjax.models.resnet.BlurPool` (binomial [1, 2, 1] blur, then subsample by 2).

Then global average pooling and the linear ``head``. ``conv_init`` (not ``init``, flax's method): the convs'
kernels, ``"kaiming"`` (He et al. 2015, normal with variance 2 / fan_out, fan_out = 9 * C_out, as torchvision's
VGG) or ``"xavier"`` (Glorot & Bengio 2010, uniform in ±sqrt(6 / (fan_in + fan_out)): variance
2 / (fan_in + fan_out), ignoring ReLU's halving, which is why deep plain ReLU stacks stall with it).
The head keeps PyTorch's ``nn.Linear`` default init.

Parameter tree: ``stage{s}/conv{j}`` (+ ``stage{s}/bn{j}``), ``head``. NHWC (N, 32, 32, C) -> logits (N, K);
``features`` -> (N, 4, 4, 64) (every option: 32 -> 16 -> 8 -> 4). ``feature_maps``: the three stage ends after
their downsampling (``stage1..stage3``; 16, 32, 64 channels; reductions 2, 4, 8). Parameters (C input channels,
K classes, c_i the convs' widths in order, c_0 = C): sum_i 9 c_{i-1} c_i + 2 c_i (BN; or + c_i, a bias, without)
+ 64 K + K; depth 8, 3 channels, 10 classes, BN: 84,570.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ModuleDef
from cnnjax.models.registry import register
from cnnjax.models.resnet import BlurPool

WIDTHS = (16, 32, 64)
DOWNSAMPLES = ("max", "avg", "stride", "blur")
NORMS = ("batch", "none")
#: the conv kernel initialisers of ``conv_init``
INITS = {"kaiming": cnn.init.kaiming_normal_fan_out,
         "xavier": nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")}


def stage_depths(depth: int) -> tuple[int, int, int]:
    """The number of convs in each of the three stages: ``depth`` spread evenly, the earlier stages first."""
    base, extra = divmod(depth, len(WIDTHS))
    return tuple(base + (s < extra) for s in range(len(WIDTHS)))  # type: ignore[return-value]


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")


class VGGSmallStage(nn.Module):
    """``n`` 3x3 convs [+ BN] + ``act`` at ``width`` channels, then the 2x ``downsample``:
    (N, H, W, C) -> (N, H / 2, W / 2, width) (floor for max/avg/blur, ceil for stride)."""

    width: int
    n: int
    conv: ModuleDef
    norm: ModuleDef | None
    downsample: str
    act: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.n):
            stride = 2 if self.downsample == "stride" and j == self.n - 1 else 1
            x = self.conv(self.width, 3, stride, 1, use_bias=self.norm is None, name=f"conv{j}")(x)
            if self.norm is not None:
                x = self.norm(name=f"bn{j}")(x)
            x = self.act(x)
        if self.downsample == "max":
            return cnn.MaxPool2d(2, 2, name="pool")(x)
        if self.downsample == "avg":
            return cnn.AvgPool2d(2, 2, name="pool")(x)
        if self.downsample == "blur":
            return BlurPool(2, name="blur")(cnn.MaxPool2d(2, 1, name="pool")(x))
        return x


class VGGSmall(ImageClassifier):
    """The narrow VGG-style net of the module docstring; ``depth`` >= 3 (one conv per stage at least)."""

    num_classes: int = 10
    depth: int = 8
    norm: str = "batch"
    conv_init: str = "kaiming"  # not ``init``: that name is flax.linen.Module.init
    downsample: str = "max"
    act: str | Callable[[jax.Array], jax.Array] = "relu"

    def __post_init__(self):
        _check("downsample", self.downsample, DOWNSAMPLES)
        _check("norm", self.norm, NORMS)
        _check("conv_init", self.conv_init, tuple(INITS))
        if not isinstance(self.depth, int) or self.depth < len(WIDTHS):
            raise ValueError(f"depth must be an int >= {len(WIDTHS)} (conv layers over 3 stages), got {self.depth!r}")
        super().__post_init__()

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=INITS[self.conv_init], bias_init=cnn.init.zeros)
        norm = self.norm_def(train) if self.norm == "batch" else None
        for s, (width, n) in enumerate(zip(WIDTHS, stage_depths(self.depth), strict=True)):
            x = VGGSmallStage(width, n, conv, norm, self.downsample, cnn.activation(self.act), name=f"stage{s + 1}")(x)
            x = stage_end(x, f"stage{s + 1}", 2 ** (s + 1))
        if features_only:
            return x
        return self.linear_def()(self.num_classes, name="head")(cnn.global_avg_pool(x))


register("vgg_small", VGGSmall, input_size=32)
