"""Convolution lowered to matrix products (im2col / GEMM).

A k x k convolution gathers the k*k shifted (strided, dilated) views of the padded input, concatenates them on
the channel axis — the im2col matrix of shape (N*H'*W', k*k*C) — and multiplies by the kernel reshaped to
(k*k*C, O). A 1x1 convolution is a plain product. Grouped convolutions use one batched product over groups;
depthwise ones (one input and one output channel per group), whose per-channel "product" is only kh*kw long,
are a multiply-add of the kh*kw shifted views instead (:func:`depthwise_shift_add`).
NHWC input, HWIO kernel, PyTorch padding semantics (:mod:`cnnjax.ops.geometry`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.ops import products


def window_taps(xp: jax.Array, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
                ) -> list[jax.Array]:
    """The strided views of an already padded (N, H, W, C) ``xp`` that the kernel offsets (i, j) read, offsets in
    row-major order, one (N, H', W', C) view each: view (i, j) holds ``xp[:, i*dh + sh*a, j*dw + sw*b]`` at output
    (a, b), for every window that fits (H' = (H - dh*(kh-1) - 1) // sh + 1)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    n, h, w, c = xp.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    return [lax.slice(xp, (0, i * dh, j * dw, 0), (n, i * dh + sh * (oh - 1) + 1, j * dw + sw * (ow - 1) + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


def im2col(x: jax.Array, kh: int, kw: int, stride: tuple[int, int], padding, dilation: tuple[int, int]
           ) -> jax.Array:
    """(N, H, W, C) -> (N, H', W', kh*kw*C), taps ordered (i, j, c) to match an HWIO kernel's reshape."""
    (pt, pb), (pl, pr) = padding
    cols = window_taps(jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))), (kh, kw), stride, dilation)
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def depthwise_shift_add(x: jax.Array, w: jax.Array, stride: tuple[int, int], padding, dilation: tuple[int, int],
                        preferred_element_type=None) -> jax.Array:
    """Depthwise convolution (``w``: (kh, kw, 1, C)) as ``sum_ij shift_ij(x) * w[i, j]``; NHWC in and out."""
    kh, kw = w.shape[:2]
    in_dtype = jnp.result_type(x, w)
    out_dtype = jnp.dtype(preferred_element_type) if preferred_element_type is not None else in_dtype
    # accumulate the kh*kw products in float32 for 16-bit inputs (as a product with f32 accumulation would)
    acc = jnp.promote_types(out_dtype, jnp.float32) if jnp.dtype(in_dtype).itemsize < 4 else \
        jnp.promote_types(in_dtype, out_dtype)
    (pt, pb), (pl, pr) = padding
    taps = window_taps(jnp.pad(x.astype(acc), ((0, 0), (pt, pb), (pl, pr), (0, 0))), (kh, kw), stride, dilation)
    w = w.astype(acc).reshape(kh * kw, -1)
    out = taps[0] * w[0]
    for t in range(1, kh * kw):
        out = out + taps[t] * w[t]
    return out.astype(out_dtype)


def conv2d_gemm(x: jax.Array, w: jax.Array, stride: tuple[int, int], padding, dilation: tuple[int, int],
                groups: int = 1, precision=None, preferred_element_type=None) -> jax.Array:
    """The convolution as im2col + one matrix product (per group)."""
    kh, kw, cin_g, cout = w.shape
    patches = im2col(x, kh, kw, stride, padding, dilation)
    n, oh, ow, _ = patches.shape
    if groups == 1:
        y = products.einsum("mk,ko->mo", patches.reshape(n * oh * ow, kh * kw * cin_g),
                            w.reshape(kh * kw * cin_g, cout), precision=precision,
                            preferred_element_type=preferred_element_type)
        return y.reshape(n, oh, ow, cout)
    og = cout // groups
    if cin_g == 1 and og == 1:
        # depthwise: the "product" is per channel, kh*kw taps long -- a multiply-add of shifted views (one fused
        # elementwise loop), far faster than a batched product of (.., kh*kw) x (kh*kw, 1) matrices
        return depthwise_shift_add(x, w, stride, padding, dilation, preferred_element_type)
    # patches: (..., kh*kw, groups, cin_g); kernel: (groups, kh*kw*cin_g, og)
    p = patches.reshape(n, oh, ow, kh * kw, groups, cin_g)
    p = jnp.moveaxis(p, 4, 3).reshape(n * oh * ow, groups, kh * kw * cin_g)
    k = w.reshape(kh * kw, cin_g, groups, og).transpose(2, 0, 1, 3).reshape(groups, kh * kw * cin_g, og)
    y = products.einsum("mgk,gko->mgo", p, k, precision=precision, preferred_element_type=preferred_element_type)
    return y.reshape(n, oh, ow, cout)

