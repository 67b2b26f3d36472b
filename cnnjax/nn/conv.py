"""Convolution and linear layers with PyTorch's parameterisation and default initialisation."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from cnnjax.nn import init as inits
from cnnjax.nn.channelwise import add_bias
from cnnjax.nn.errors import check_output_size
from cnnjax.ops import conv2d
from cnnjax.ops.geometry import IntPair, Padding, conv_output_size, normalize_padding, pair

Initializer = Callable[..., jax.Array]


class Conv(nn.Module):
    """``torch.nn.Conv2d`` on NHWC: (N, H, W, C_in) -> (N, H', W', features).

    Parameters: ``kernel`` (kH, kW, C_in // groups, features) and, with ``use_bias``, ``bias`` (features,).
    ``padding`` is explicit (int, (ph, pw) or per-side pairs) and symmetric as in PyTorch.
    ``bias_init=None`` means PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    features: int
    kernel_size: IntPair
    stride: IntPair = 1
    padding: Padding = 0
    dilation: IntPair = 1
    groups: int = 1
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = inits.torch_default
    bias_init: Initializer | None = None
    impl: str = "fast"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = pair(self.kernel_size, "kernel_size")
        (sh, sw), (dh, dw) = pair(self.stride, "stride"), pair(self.dilation, "dilation")
        pad = normalize_padding(self.padding)
        cin = x.shape[-1]
        if cin % self.groups or self.features % self.groups:
            raise ValueError(f"{self.path_name}: in_channels {cin} and features {self.features} must both be "
                             f"divisible by groups={self.groups}")
        in_hw = (x.shape[-3], x.shape[-2])
        out_hw = (conv_output_size(in_hw[0], kh, sh, pad[0], dh), conv_output_size(in_hw[1], kw, sw, pad[1], dw))
        check_output_size(self.path_name, in_hw, out_hw, f"kernel {kh}x{kw}, stride {sh}, padding {pad}")
        fan_in = kh * kw * cin // self.groups
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // self.groups, self.features),
                            self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = self.bias_init or inits.torch_default_bias(fan_in)
            bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        x, kernel = promote_dtype(x, kernel, dtype=self.dtype)  # the bias keeps param_dtype: add_bias casts it
        y = conv2d(x, kernel, stride=(sh, sw), padding=pad, dilation=(dh, dw), groups=self.groups,
                   impl=self.impl)
        return y if bias is None else add_bias(y, bias)  # a float32 bias gradient also for bf16 (channelwise.py)

    @property
    def path_name(self) -> str:
        return "/".join(self.scope.path) if self.scope is not None else (self.name or "Conv")


class Linear(nn.Module):
    """``torch.nn.Linear`` on the last axis: (..., C_in) -> (..., features); ``kernel`` is (C_in, features).

    ``bias_init=None`` means PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    features: int
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = inits.torch_default
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (fan_in, self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init or inits.torch_default_bias(fan_in), (self.features,),
                              self.param_dtype)
        x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
        y = jnp.dot(x, kernel)
        return y if bias is None else add_bias(y, bias)
