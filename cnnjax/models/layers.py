"""Building blocks shared by several model families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn

ModuleDef = Any


class ConvNormAct(nn.Module):
    """Conv -> BatchNorm -> activation (torchvision's ``Conv2dNormActivation`` / GoogLeNet's ``BasicConv2d``).

    Submodules ``conv`` and ``bn``; ``act=None`` skips the activation. NHWC in, NHWC out.
    """

    features: int
    kernel_size: int | tuple[int, int]
    conv: ModuleDef
    norm: ModuleDef
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | None = None  # None: (k - 1) // 2, torchvision's default
    groups: int = 1
    act: str | Callable[[jax.Array], jax.Array] | None = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        pad = self.padding
        if pad is None:
            pad = (k - 1) // 2 if isinstance(k, int) else ((k[0] - 1) // 2, (k[1] - 1) // 2)
        x = self.conv(self.features, k, stride=self.stride, padding=pad, groups=self.groups, use_bias=False,
                      name="conv")(x)
        x = self.norm(name="bn")(x)
        return x if self.act is None else cnn.activation(self.act)(x)


def flatten_nchw(x: jax.Array) -> jax.Array:
    """Flatten (N, H, W, C) in PyTorch's (C, H, W) order, so torchvision's linear weights drop in."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
