"""Convolution by the fast Fourier transform (convolution theorem), for any kernel size.

A cross-correlation ``y[i, j] = sum_{a, b} x[i + a, j + b] g[a, b]`` is, in the frequency domain, a product with
the complex conjugate of the kernel's transform:

    y = irfft2( rfft2(x) * conj(rfft2(g)) )

taken circularly over an L_h x L_w grid. With L at least the padded input size, the outputs of the valid
correlation never wrap around, so no extra padding is needed beyond the convolution's own; L is rounded up to
the next 2^a 3^b 5^c, sizes the FFT handles fast. Per (N, C_in, C_out) the cost is
O(L_h L_w log(L_h L_w)) for the transforms — computed once per image channel and per kernel, not per pair —
plus one complex multiply-add per frequency and channel pair, independent of the kernel size. Direct and
Winograd convolutions cost O(H W kH kW) per channel pair, so the FFT pays off for big kernels (roughly kH kW
above a few times log(H W)); for 3x3 kernels it usually loses.

Steps on NHWC ``x`` and an HWIO kernel ``w`` (kH, kW, C_in // groups, C_out), PyTorch padding semantics
(:mod:`cnnjax.ops.geometry`): pad the input; dilate the kernel by inserting zeros between taps (``lax.pad``
with interior padding); ``rfft2`` both over H, W; sum over input channels per group with one complex ``einsum``
(batched over frequencies and groups, so depthwise convolutions work too); ``irfft2``; crop the valid
part; apply the stride by strided slicing (the stride-1 result is computed and subsampled, which wastes work
for strided convolutions). All operations are differentiable ``jnp`` functions.

bfloat16/float16 inputs are computed in float32 (FFTs of low-precision types are unsupported or inaccurate)
and cast back, or to ``preferred_element_type`` when given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.ops.geometry import conv_output_size, normalize_padding, pair


def next_fast_len(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` (n >= 1): sizes with only small prime factors make fast FFTs."""
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = p35
            while q < n:
                q *= 2
            best = min(best, q)
            p35 *= 3
        p5 *= 5
    return best


def _compute_dtype(dtype: jnp.dtype, preferred_element_type: jnp.dtype | None) -> jnp.dtype:
    """float32 for low-precision/integer inputs, else the input dtype, widened to ``preferred_element_type``."""
    cdt = jnp.dtype(dtype)
    if not jnp.issubdtype(cdt, jnp.floating) or cdt.itemsize < 4:
        cdt = jnp.dtype(jnp.float32)
    if preferred_element_type is not None and jnp.issubdtype(preferred_element_type, jnp.floating):
        cdt = jnp.promote_types(cdt, preferred_element_type)
    return cdt


def conv2d_fft(x: jax.Array, w: jax.Array, stride: int | tuple[int, int], padding,
               dilation: int | tuple[int, int], groups: int = 1, precision: lax.PrecisionLike = None,
               preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """The convolution via ``rfft2``/``irfft2``; see the module docstring.

    ``x``: (N, H, W, C_in); ``w``: (kH, kW, C_in // groups, C_out); any kernel size, stride, dilation and groups.
    ``precision`` applies to the complex channel product.
    """
    stride, dilation, padding = pair(stride, "stride"), pair(dilation, "dilation"), normalize_padding(padding)
    (pt, pb), (pl, pr) = padding
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw, cin_g, cout = w.shape
    n, h, wd, c = x.shape
    if c != cin_g * groups:
        raise ValueError(f"input has {c} channels but the kernel expects {cin_g} x {groups} groups")
    dtype = jnp.result_type(x, w)
    out_dtype = jnp.dtype(preferred_element_type) if preferred_element_type is not None else dtype
    oh = conv_output_size(h, kh, sh, (pt, pb), dh)
    ow = conv_output_size(wd, kw, sw, (pl, pr), dw)
    if oh < 1 or ow < 1:
        return jnp.zeros((n, max(oh, 0), max(ow, 0), cout), out_dtype)

    cdt = _compute_dtype(dtype, preferred_element_type)
    x = jnp.pad(x.astype(cdt), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    w = w.astype(cdt)
    if dh > 1 or dw > 1:
        w = lax.pad(w, jnp.zeros((), cdt), ((0, 0, dh - 1), (0, 0, dw - 1), (0, 0, 0), (0, 0, 0)))
    hp, wp = x.shape[1], x.shape[2]
    lh, lw = next_fast_len(hp), next_fast_len(wp)

    xf = jnp.fft.rfft2(x, s=(lh, lw), axes=(1, 2))                  # (N, Lh, Lw//2+1, C_in)
    kf = jnp.conj(jnp.fft.rfft2(w, s=(lh, lw), axes=(0, 1)))        # (Lh, Lw//2+1, C_in/g, C_out)
    lwf = lw // 2 + 1
    og = cout // groups
    yf = jnp.einsum("nhwgc,hwcgo->nhwgo", xf.reshape(n, lh, lwf, groups, cin_g),
                    kf.reshape(lh, lwf, cin_g, groups, og), precision=precision)
    y = jnp.fft.irfft2(yf.reshape(n, lh, lwf, cout), s=(lh, lw), axes=(1, 2))
    y = y[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]
    return y.astype(out_dtype)
