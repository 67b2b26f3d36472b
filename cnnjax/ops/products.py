"""Two-operand products (``einsum``) with 16-bit operands and float32 accumulation, forward and backward.

Every matrix product the convolution algorithms make (im2col, 1x1, Winograd's per-position products) goes
through :func:`einsum`. For float32 (or mixed, or integer) operands it is ``jnp.einsum``. For bf16/fp16 operands it
is a mixed-precision product as cuDNN and oneDNN compute one: 16-bit operands, float32 accumulation, output in
``preferred_element_type`` (default: the operand dtype) — and, unlike JAX's own differentiation of such a product,
the two gradient products are mixed-precision too: the incoming cotangent is cast to the operand dtype and each
gradient is a 16-bit x 16-bit product accumulated in float32, cast to its operand's dtype.

Why: on XLA:CPU (jaxlib 0.10, Sapphire Rapids) a bf16 x bf16 product with float32 output runs on the AMX units
(~850 GFLOP/s for a 2048^3 product, fp32 ~190), while bf16 x bf16 -> bf16 runs ~155 and JAX's default gradients
of a product with float32 output multiply a float32 cotangent by a bf16 operand (no AMX). See
``benchmarks/matmul_dtypes.py``. A gradient contracting over a long axis (the kernel gradient, summed over the
N*H*W rows) is computed with that axis split in two (``LONG_AXIS_SPLIT``) and the smaller operand first: XLA:CPU
then writes that operand transposed once and uses its fast bf16 product, where the unsplit form took 2-5x longer
(``benchmarks/matmul_dtypes.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

#: A gradient's contracted axis at least ``LONG_AXIS_MIN`` long and divisible by ``LONG_AXIS_SPLIT`` is split
#: into (LONG_AXIS_SPLIT, n / LONG_AXIS_SPLIT) before the product (same sum, faster XLA:CPU lowering).
LONG_AXIS_SPLIT = 8
LONG_AXIS_MIN = 4096


def einsum(spec: str, a: jax.Array, b: jax.Array, *, precision: lax.PrecisionLike = None,
           preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """``jnp.einsum(spec, a, b)`` with explicit output (``'ab,bc->ac'``); mixed precision for 16-bit operands.

    Every index of ``a`` must appear in ``b`` or the output, and likewise for ``b`` (no index summed within one
    operand), which holds for matrix products, batched and grouped ones.
    """
    dtype = jnp.result_type(a, b)
    if dtype not in LOW_PRECISION:
        return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=preferred_element_type)
    out = jnp.dtype(preferred_element_type) if preferred_element_type is not None else dtype
    return _mixed(spec, precision, out, a.astype(dtype), b.astype(dtype))


def _product(spec: str, a: jax.Array, b: jax.Array, precision, out: jnp.dtype) -> jax.Array:
    """One 16-bit product accumulated in float32, cast to ``out``; a long contracted axis split in two."""
    ins, res = spec.split("->")
    sa, sb = ins.split(",")
    for axis, letter in enumerate(sa):
        n = a.shape[axis]
        if letter in sb and letter not in res and n >= LONG_AXIS_MIN and n % LONG_AXIS_SPLIT == 0:
            new = next(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in spec)
            split = (LONG_AXIS_SPLIT, n // LONG_AXIS_SPLIT)
            a = a.reshape(a.shape[:axis] + split + a.shape[axis + 1:])
            ib = sb.index(letter)
            b = b.reshape(b.shape[:ib] + split + b.shape[ib + 1:])
            sa, sb = sa.replace(letter, new + letter), sb.replace(letter, new + letter)
            if a.size > b.size:  # XLA:CPU transposes the first operand: let that be the smaller one
                a, b, sa, sb = b, a, sb, sa
            break
    # batch indices first in both operands and the result: XLA:CPU's fallback dot kernel rejects a bf16 x bf16 ->
    # f32 product whose batch dimensions are not leading ("Unsupported element type for DotThunk")
    batch = [c for c in sa if c in sb and c in res]
    la, lb, lr = ("".join(batch) + "".join(c for c in s if c not in batch) for s in (sa, sb, res))
    a = jnp.transpose(a, [sa.index(c) for c in la])
    b = jnp.transpose(b, [sb.index(c) for c in lb])
    y = jnp.einsum(f"{la},{lb}->{lr}", a, b, precision=precision, preferred_element_type=jnp.float32)
    return jnp.transpose(y, [lr.index(c) for c in res]).astype(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _mixed(spec: str, precision, out: jnp.dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    return _product(spec, a, b, precision, out)


def _mixed_fwd(spec, precision, out, a, b):
    return _product(spec, a, b, precision, out), (a, b)


def _mixed_bwd(spec, precision, out, residuals, g):
    a, b = residuals
    ins, res = spec.split("->")
    sa, sb = ins.split(",")
    g = g.astype(a.dtype)
    return (_product(f"{res},{sb}->{sa}", g, b, precision, a.dtype),
            _product(f"{sa},{res}->{sb}", a, g, precision, b.dtype))


_mixed.defvjp(_mixed_fwd, _mixed_bwd)
