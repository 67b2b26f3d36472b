"""Per-channel scale and shift of (..., C) activations whose parameter gradients sum in float32.

``x * m + s`` with a (C,) ``m`` and ``s`` broadcast over the N*H*W positions: differentiated by JAX, the gradients
of ``m`` and ``s`` are sums over those positions in ``x``'s dtype. For bf16 activations XLA then accumulates tens of
thousands of terms in bf16 (8-bit mantissa): on a (16, 56, 56, 64) activation the BatchNorm scale and bias
gradients came out 37% and 60% off a float64 reference (max error over channels, relative to the mean gradient;
tests/test_nn_channelwise.py). Here the forward pass is the same products in ``x``'s dtype, and the backward pass
sums ``g`` and ``g * x`` in float32 (the converts fuse into the reductions) — what cuDNN's and oneDNN's
batch-norm and bias kernels do. Only 16-bit ``x`` takes the custom gradient: float32 (and wider) ``x`` is plain
JAX, so forward-mode differentiation (the Hessian-vector products of :mod:`cnnjax.analysis.landscape`) still
works there. BatchNorm's apply and the convolution bias use these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _sum_positions(g: jax.Array, x: jax.Array | None = None) -> jax.Array:
    """Σ over every axis but the last of ``g`` (or ``g * x``), accumulated in float32 (at least)."""
    acc = jnp.promote_types(g.dtype, jnp.float32)
    g = g.astype(acc)
    if x is not None:
        g = g * x.astype(acc)
    return jnp.sum(g, axis=tuple(range(g.ndim - 1)))


def _low(x: jax.Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize < 4


def scale_shift(x: jax.Array, mult: jax.Array, shift: jax.Array) -> jax.Array:
    """``x * mult + shift`` in ``x``'s dtype, ``mult``/``shift`` of shape (C,) (any float dtype), ``x`` (..., C);
    for 16-bit ``x`` the gradients of ``mult`` and ``shift`` are float32 sums, returned in their own dtypes."""
    return _scale_shift(x, mult, shift) if _low(x) else x * mult.astype(x.dtype) + shift.astype(x.dtype)


def add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x + bias`` in ``x``'s dtype, ``bias`` of shape (C,); for 16-bit ``x`` its gradient is a float32 sum."""
    return _add_bias(x, bias) if _low(x) else x + bias.astype(x.dtype)


@jax.custom_vjp
def _scale_shift(x: jax.Array, mult: jax.Array, shift: jax.Array) -> jax.Array:
    return x * mult.astype(x.dtype) + shift.astype(x.dtype)


def _scale_shift_fwd(x, mult, shift):
    return _scale_shift(x, mult, shift), (x, mult, shift)


def _scale_shift_bwd(res, g):
    x, mult, shift = res
    return ((g * mult.astype(g.dtype)).astype(x.dtype), _sum_positions(g, x).astype(mult.dtype),
            _sum_positions(g).astype(shift.dtype))


_scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


@jax.custom_vjp
def _add_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    return x + bias.astype(x.dtype)


def _add_bias_fwd(x, bias):
    return _add_bias(x, bias), bias


def _add_bias_bwd(bias, g):
    return g, _sum_positions(g).astype(bias.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
