"""PyTorch-exact layers on NHWC tensors, as ``flax.linen`` modules.

Every layer separates the computation ``dtype`` (e.g. bfloat16) from ``param_dtype`` (float32 by default),
and convolutions take ``impl`` to pick the algorithm in :mod:`cnnjax.ops`.
"""

from cnnjax.nn import init
from cnnjax.nn.activations import ACTIVATIONS, activation
from cnnjax.nn.conv import Conv, Linear
from cnnjax.nn.errors import InputTooSmallError
from cnnjax.nn.norm import BatchNorm, LayerNorm, frozen_batchnorm
from cnnjax.nn.pool import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    MaxPool2d,
    adaptive_avg_pool2d,
    avg_pool2d,
    global_avg_pool,
    max_pool2d,
)
from cnnjax.nn.regularize import Dropout, StochasticDepth

__all__ = [
    "ACTIVATIONS",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm",
    "Conv",
    "Dropout",
    "InputTooSmallError",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "StochasticDepth",
    "activation",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "frozen_batchnorm",
    "global_avg_pool",
    "init",
    "max_pool2d",
]
