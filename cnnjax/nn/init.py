"""Weight initialisers under the names torchvision's models use.

Kernels are HWIO for convolutions and (in, out) for linear layers, so JAX's ``variance_scaling`` computes
the same fan-in/fan-out as PyTorch does for (out, in, kH, kW) and (out, in) weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.nn import initializers

#: ``torch.nn.Conv2d``/``Linear`` default weight init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +).
torch_default = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
#: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (ResNet, VGG, MobileNet, EfficientNet convs).
kaiming_normal_fan_out = initializers.variance_scaling(2.0, "fan_out", "normal")
#: ``kaiming_normal_()`` with its defaults (fan_in, leaky_relu a=0, i.e. gain sqrt(2)) — DenseNet convs.
kaiming_normal_fan_in = initializers.variance_scaling(2.0, "fan_in", "normal")
zeros = initializers.zeros
ones = initializers.ones


def normal(std: float) -> initializers.Initializer:
    """``nn.init.normal_(w, 0, std)``."""
    return initializers.normal(std)


def trunc_normal(std: float, lower: float = -2.0, upper: float = 2.0) -> initializers.Initializer:
    """``nn.init.trunc_normal_(w, std=std, a=lower, b=upper)``: bounds are absolute values, not sigmas."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return std * jax.random.truncated_normal(key, lower / std, upper / std, shape, dtype)

    return init


def uniform_symmetric(bound: float) -> initializers.Initializer:
    """``nn.init.uniform_(w, -bound, bound)``."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default_bias(fan_in: int) -> initializers.Initializer:
    """PyTorch's default bias init for a layer with ``fan_in`` inputs: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform_symmetric(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
