"""Pooling with PyTorch's exact output sizes and divisors, on NHWC tensors.

``max_pool2d``/``avg_pool2d`` follow ``torch.nn.functional`` including ``ceil_mode`` (a last window that
would start in the right padding is dropped) and ``count_include_pad``; ``adaptive_avg_pool2d`` uses
PyTorch's bins ``[floor(i * H / out), ceil((i + 1) * H / out))`` for any input size.
The modules wrap the functions so that pools appear as named layers in summaries.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.nn.errors import check_output_size
from cnnjax.ops.gemm import window_taps
from cnnjax.ops.geometry import IntPair, conv_output_size, pair


def _window_geometry(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool, layer: str):
    out = conv_output_size(size, k, s, p, d, ceil_mode)
    hi = max((out - 1) * s + d * (k - 1) + 1 - size - p, 0)
    return out, (p, hi)


def _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode, layer):
    (kh, kw) = pair(kernel_size, "kernel_size")
    (sh, sw) = pair(stride if stride is not None else (kh, kw), "stride")
    (ph, pw) = pair(padding, "padding")
    (dh, dw) = pair(dilation, "dilation")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{layer}: padding {padding} must be at most half the kernel size {kernel_size}")
    h, w = x.shape[-3], x.shape[-2]
    oh, pad_h = _window_geometry(h, kh, sh, ph, dh, ceil_mode, layer)
    ow, pad_w = _window_geometry(w, kw, sw, pw, dw, ceil_mode, layer)
    check_output_size(layer, (h, w), (oh, ow), f"{kh}x{kw} window, stride {sh}, padding {ph}")
    return (kh, kw), (sh, sw), (dh, dw), (pad_h, pad_w), (oh, ow)


def max_pool2d(x: jax.Array, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, *, layer: str = "max_pool2d") -> jax.Array:
    """``F.max_pool2d`` on (N, H, W, C) -> (N, H', W', C).

    The gradient goes to the first maximum of each window in row-major window order, as PyTorch's and XLA's
    ``select_and_scatter`` route it, but is computed with one mask per window tap (:func:`_max_pool_jvp`).
    """
    k, s, d, pads, (oh, ow) = _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode, layer)
    return _max_pool(k, s, d, pads, x)[:, :oh, :ow, :]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _max_pool(k, s, d, pads, x: jax.Array) -> jax.Array:
    init = np.array(-np.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)),
                             window_dilation=(1, *d, 1))


@_max_pool.defjvp
def _max_pool_jvp(k, s, d, pads, primals, tangents):
    """Each output's derivative is that of the first window tap equal to the maximum (row-major window order),
    as PyTorch and XLA's ``select_and_scatter`` route gradients. Written as k*k masked strided views, the
    reverse mode JAX derives from it is k*k masked strided placements (elementwise work XLA fuses) instead of
    ``select_and_scatter``, which XLA:CPU expands into index iotas and a variadic reduce-window (ResNet's 3x3/2 stem
    pool, batch 16: 296 -> 127 ms forward + backward, ``benchmarks/max_pool_grad.py``). Forward mode (``jax.jvp``)
    works as well."""
    (x,), (t,) = primals, tangents
    y = _max_pool(k, s, d, pads, x)
    spatial = ((0, 0), *pads, (0, 0))
    x_taps = window_taps(jnp.pad(x, spatial, constant_values=-np.inf), k, s, d)
    t_taps = window_taps(jnp.pad(t, spatial), k, s, d)
    claimed = jnp.zeros(y.shape, bool)
    out = jnp.zeros(y.shape, t.dtype)
    for x_tap, t_tap in zip(x_taps, t_taps):
        first = (x_tap == y) & ~claimed
        claimed = claimed | first
        out = out + jnp.where(first, t_tap, jnp.zeros((), t.dtype))
    return y, out


def _avg_divisor(size: int, k: int, s: int, p: int, out: int, count_include_pad: bool) -> np.ndarray:
    """PyTorch's avg-pool divisor for each output position along one axis."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if count_include_pad:
        return (end - start).astype(np.float32)
    return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float32)


def avg_pool2d(x: jax.Array, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, *,
               layer: str = "avg_pool2d") -> jax.Array:
    """``F.avg_pool2d`` on (N, H, W, C) -> (N, H', W', C)."""
    k, s, _, pads, (oh, ow) = _pool_setup(x, kernel_size, stride, padding, 1, ceil_mode, layer)
    total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, (1, *k, 1), (1, *s, 1),
                              ((0, 0), *pads, (0, 0)))[:, :oh, :ow, :]
    div_h = _avg_divisor(x.shape[-3], k[0], s[0], pads[0][0], oh, count_include_pad)
    div_w = _avg_divisor(x.shape[-2], k[1], s[1], pads[1][0], ow, count_include_pad)
    return (total / jnp.asarray(np.outer(div_h, div_w)[:, :, None], x.dtype)).astype(x.dtype)


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix with PyTorch's adaptive bins."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool2d(x: jax.Array, output_size: IntPair) -> jax.Array:
    """``F.adaptive_avg_pool2d`` on (N, H, W, C) -> (N, oh, ow, C), any H, W >= 1."""
    oh, ow = pair(output_size, "output_size")
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == (oh, ow):
        return x
    mh = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
    return jnp.einsum("nhwc,oh,pw->nopc", x, mh, mw)


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """Mean over H and W: (N, H, W, C) -> (N, C) (or (N, 1, 1, C) with ``keepdims``)."""
    return jnp.mean(x, axis=(-3, -2), keepdims=keepdims)


def _layer_name(module: nn.Module) -> str:
    return "/".join(module.scope.path) if module.scope is not None else type(module).__name__


class MaxPool2d(nn.Module):
    """``torch.nn.MaxPool2d`` on NHWC."""

    kernel_size: IntPair
    stride: IntPair | None = None
    padding: IntPair = 0
    dilation: IntPair = 1
    ceil_mode: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                          layer=_layer_name(self))


class AvgPool2d(nn.Module):
    """``torch.nn.AvgPool2d`` on NHWC."""

    kernel_size: IntPair
    stride: IntPair | None = None
    padding: IntPair = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, layer=_layer_name(self))


class AdaptiveAvgPool2d(nn.Module):
    """``torch.nn.AdaptiveAvgPool2d`` on NHWC."""

    output_size: IntPair

    def __call__(self, x: jax.Array) -> jax.Array:
        return adaptive_avg_pool2d(x, self.output_size)
