"""Winograd minimal filtering: 3x3 convolutions with fewer multiplications (Lavin & Gray, 2016).

``F(m x m, 3 x 3)`` computes an m x m block of outputs of a 3x3 cross-correlation from one
(m+2) x (m+2) input tile ``d`` and the kernel ``g`` as

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

where ``B^T`` ((m+2) x (m+2)), ``G`` ((m+2) x 3) and ``A^T`` (m x (m+2)) are fixed matrices derived from the
Chinese remainder theorem for the interpolation points {0, ±1, ±2, ...}. Summed over input channels, the
elementwise product becomes, for each of the (m+2)^2 transform positions (xi, nu), one matrix product

    M[xi, nu] = V[xi, nu] @ U[xi, nu],  V: (tiles, C_in),  U: (C_in, C_out),

computed here as a single batched product with the positions as the batch dimension
(:func:`cnnjax.ops.products.einsum`: mixed precision for 16-bit inputs, gradients included).

Multiplications per output and per (input, output) channel pair, against 9 for the direct method:

* ``F(2x2, 3x3)`` (``tile=2``, 4x4 input tiles): 16 / 4 = 4, i.e. **2.25x fewer**; transforms use only ±1
  and 1/2, so it is about as accurate as the direct convolution.
* ``F(4x4, 3x3)`` (``tile=4``, 6x6 input tiles, points 0, ±1, ±2 as in Lavin's paper): 36 / 16 = 2.25, i.e.
  **4x fewer**; the larger transform entries (up to 8 in ``A^T``, 5 in ``B^T``) amplify rounding errors, so
  float32 results are roughly an order of magnitude less accurate than the direct method.

The transforms themselves (additions and multiplications by constants) cost O(C) per tile, not O(C^2), so the
saving appears when the channel counts are large.

Layouts follow :mod:`cnnjax.ops.conv`: NHWC input ``x``, HWIO kernel ``w`` (3, 3, C_in // groups, C_out),
PyTorch padding semantics with padding normalised to ``((top, bottom), (left, right))``. The input is padded
(the convolution padding plus extra bottom/right rows and columns so the output is a whole number of m x m
tiles), the overlapping tiles are read with strided slices (no gathers), the transforms are written as sums of
slices times constants (they fuse into elementwise loops on XLA), and the result is untiled and cropped. Grouped
and depthwise convolutions use one product batched over positions and groups. Everything is plain ``jnp``, so
the function is differentiable with ``jax.grad`` and can be jitted.

Only 3x3, stride-1, dilation-1 convolutions are computed with Winograd (:func:`supports_winograd`); other
configurations fall back to the best supported algorithm — :func:`cnnjax.ops.gemm.conv2d_gemm`.

Transforms run in the input dtype with the matrices kept as NumPy/Python constants. With bfloat16/float16
inputs the channel product accumulates in float32 (or ``preferred_element_type`` when given), the output
transform runs in that type, and the result is cast back to the input dtype unless ``preferred_element_type``
is given, in which case the result has that dtype (as for ``conv2d_gemm``). Rounding the transformed tiles to
bfloat16 (8 mantissa bits) costs F(4x4, 3x3) dearly: about 8e-2 maximum relative error against 4e-3 for a
bfloat16 direct convolution (F(2x2, 3x3): 6e-3), so prefer ``tile=2`` or another algorithm for bfloat16.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops import products
from cnnjax.ops.gemm import conv2d_gemm
from cnnjax.ops.geometry import conv_output_size, normalize_padding, pair

#: Output tile sizes ``m`` of ``F(m x m, 3 x 3)`` that :func:`conv2d_winograd` implements.
WINOGRAD_TILES = (2, 4)

#: ``m -> (B^T, G, A^T)`` for ``F(m, 3)``; for ``F(4, 3)`` the points are 0, ±1, ±2 (Lavin & Gray, 2016).
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (
        np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64),
    ),
}

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def supports_winograd(kernel_hw: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                      dilation: int | tuple[int, int] = 1, groups: int = 1) -> bool:
    """Whether :func:`conv2d_winograd` computes this configuration with Winograd (3x3, stride 1, dilation 1).

    Any ``groups`` (including depthwise) is supported, through a product batched over groups.
    """
    return (pair(kernel_hw, "kernel_hw") == (3, 3) and pair(stride, "stride") == (1, 1)
            and pair(dilation, "dilation") == (1, 1) and groups >= 1)


def _combine(mat: np.ndarray, taps: Sequence[jax.Array], axis: int) -> jax.Array:
    """``stack([sum_i mat[r, i] * taps[i] for r], axis)`` with zero terms skipped and ±1 as add/subtract.

    Coefficients are weakly typed Python floats, so the arithmetic stays in the dtype of ``taps``.
    """
    rows = []
    for r in mat:
        acc = None
        for c, t in zip(r, taps):
            c = float(c)
            if c == 0.0:
                continue
            if acc is None:
                acc = t if c == 1.0 else (-t if c == -1.0 else t * c)
            elif c == 1.0:
                acc = acc + t
            elif c == -1.0:
                acc = acc - t
            else:
                acc = acc + t * c
        rows.append(acc if acc is not None else jnp.zeros_like(taps[0]))
    return jnp.stack(rows, axis=axis)


def _tile_taps(x: jax.Array, axis: int, m: int, n_tiles: int) -> list[jax.Array]:
    """The m+2 strided views ``x[a : a + m * (n_tiles - 1) + 1 : m]`` (a = 0..m+1) along ``axis``.

    View ``a`` holds row ``a`` of every overlapping (m+2)-long tile (tile ``t`` starts at ``t * m``).
    """
    return [lax.slice_in_dim(x, a, a + m * (n_tiles - 1) + 1, stride=m, axis=axis) for a in range(m + 2)]


def winograd_kernel_transform(w: jax.Array, tile: int = 4) -> jax.Array:
    """``U = G g G^T`` for every (input, output) channel pair: (3, 3, I, O) -> (m+2, m+2, I, O)."""
    _, g_mat, _ = TRANSFORMS[tile]
    u = _combine(g_mat, [w[i] for i in range(3)], axis=0)            # (m+2, 3, I, O)
    return _combine(g_mat, [u[:, j] for j in range(3)], axis=1)      # (m+2, m+2, I, O)


def conv2d_winograd(x: jax.Array, w: jax.Array, stride: int | tuple[int, int], padding,
                    dilation: int | tuple[int, int], groups: int = 1, precision: lax.PrecisionLike = None,
                    preferred_element_type: jnp.dtype | None = None, tile: int = 4) -> jax.Array:
    """3x3 stride-1 convolution by Winograd ``F(tile x tile, 3 x 3)``; see the module docstring.

    ``x``: (N, H, W, C_in); ``w``: (kH, kW, C_in // groups, C_out); ``padding`` as in :func:`conv2d` (normalised
    per side). ``tile`` is 2 or 4. Configurations :func:`supports_winograd` rejects fall back to the best
    supported algorithm, :func:`cnnjax.ops.gemm.conv2d_gemm`.
    """
    if tile not in WINOGRAD_TILES:
        raise ValueError(f"Winograd tile must be one of {WINOGRAD_TILES}, got {tile!r}")
    stride, dilation, padding = pair(stride, "stride"), pair(dilation, "dilation"), normalize_padding(padding)
    kh, kw, cin_g, cout = w.shape
    n, h, wd, c = x.shape
    if c != cin_g * groups:
        raise ValueError(f"input has {c} channels but the kernel expects {cin_g} x {groups} groups")
    if not supports_winograd((kh, kw), stride, dilation, groups):
        return conv2d_gemm(x, w, stride, padding, dilation, groups, precision, preferred_element_type)

    (pt, pb), (pl, pr) = padding
    oh = conv_output_size(h, 3, 1, (pt, pb))
    ow = conv_output_size(wd, 3, 1, (pl, pr))
    dtype = jnp.result_type(x, w)
    out_dtype = jnp.dtype(preferred_element_type) if preferred_element_type is not None else dtype
    if oh < 1 or ow < 1:
        return jnp.zeros((n, max(oh, 0), max(ow, 0), cout), out_dtype)
    acc_dtype = preferred_element_type
    if acc_dtype is None and dtype in _LOW_PRECISION:
        acc_dtype = jnp.float32

    m = tile
    b_t, _, a_t = TRANSFORMS[m]
    th, tw = -(-oh // m), -(-ow // m)
    # Padded size m * t + 2 covers t whole tiles; the extra bottom/right zeros only feed cropped outputs.
    x = jnp.pad(x.astype(dtype), ((0, 0), (pt, pb + m * th + 2 - (h + pt + pb)),
                                  (pl, pr + m * tw + 2 - (wd + pl + pr)), (0, 0)))

    # Input transform V = B^T d B, separably: rows (axis 1), then columns (axis 3 after the stack).
    v = _combine(b_t, _tile_taps(x, 1, m, th), axis=0)               # (m+2, N, th, Wp, C)
    v = _combine(b_t, _tile_taps(v, 3, m, tw), axis=1)               # (m+2, m+2, N, th, tw, C)
    p = (m + 2) ** 2
    t = n * th * tw
    u = winograd_kernel_transform(w.astype(dtype), m)                # (m+2, m+2, C_in/g, C_out)

    if groups == 1:
        prod = products.einsum("ptc,pco->pto", v.reshape(p, t, c), u.reshape(p, c, cout),
                               precision=precision, preferred_element_type=acc_dtype)
    else:
        og = cout // groups
        prod = products.einsum("ptgc,pcgo->ptgo", v.reshape(p, t, groups, cin_g), u.reshape(p, cin_g, groups, og),
                               precision=precision, preferred_element_type=acc_dtype)
    prod = prod.reshape(m + 2, m + 2, n, th, tw, cout)

    # Output transform Y = A^T M A, laid out directly as (N, th, m, tw, m, O) so untiling is a reshape.
    y = _combine(a_t, [prod[i] for i in range(m + 2)], axis=3)      # (m+2, N, th, m, tw, O)
    y = _combine(a_t, [y[j] for j in range(m + 2)], axis=4)         # (N, th, m, tw, m, O)
    y = y.reshape(n, th * m, tw * m, cout)[:, :oh, :ow]
    return y.astype(out_dtype)
