"""2-D convolution with PyTorch's parameterisation on NHWC tensors, and the table of algorithms computing it.

``conv2d(x, w, stride, padding, dilation, groups, impl)`` takes ``x`` of shape (N, H, W, C_in) and a kernel
``w`` of shape (kH, kW, C_in // groups, C_out) and returns (N, H', W', C_out) with

    H' = floor((H + pad_top + pad_bottom - dilation * (kH - 1) - 1) / stride) + 1

exactly as ``torch.nn.functional.conv2d`` (padding is explicit and symmetric unless given per side; XLA's
asymmetric 'SAME' is never used).

This module sits on top of :mod:`cnnjax.ops`: it imports the algorithm modules (:mod:`~cnnjax.ops.gemm`,
:mod:`~cnnjax.ops.winograd`, :mod:`~cnnjax.ops.fft`) and :mod:`~cnnjax.ops.autotune` and none of them imports it
back. :data:`CONV_ALGORITHMS` maps each algorithm's name to its function; ``impl='auto'`` hands that table to
:func:`cnnjax.ops.autotune.choose`, which times the candidates it is given. The window geometry
(:func:`pair`, :func:`normalize_padding`, :func:`conv_output_size`) lives in :mod:`cnnjax.ops.geometry` and is
re-exported here for compatibility.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.ops import autotune
from cnnjax.ops.autotune import Algorithm
from cnnjax.ops.fft import conv2d_fft
from cnnjax.ops.gemm import conv2d_gemm
from cnnjax.ops.geometry import IntPair, Padding, conv_output_size, normalize_padding, pair
from cnnjax.ops.tracing import in_lax_convolutions
from cnnjax.ops.winograd import conv2d_winograd

__all__ = ["CONV_ALGORITHMS", "CONV_IMPLS", "IntPair", "Padding", "conv2d", "conv2d_xla", "conv_output_size",
           "normalize_padding", "pair"]


def conv2d_xla(x: jax.Array, w: jax.Array, stride: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]],
               dilation: tuple[int, int], groups: int = 1, precision: lax.PrecisionLike = None,
               preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """``lax.conv_general_dilated`` on NHWC ``x`` (N, H, W, C_in) and HWIO ``w``; padding per side."""
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _conv2d_winograd_by_dtype(x: jax.Array, w: jax.Array, stride: tuple[int, int],
                              padding: tuple[tuple[int, int], tuple[int, int]], dilation: tuple[int, int],
                              groups: int = 1, precision: lax.PrecisionLike = None,
                              preferred_element_type: jnp.dtype | None = None) -> jax.Array:
    """:func:`~cnnjax.ops.winograd.conv2d_winograd` with the tile ``conv2d`` uses: F(4x4, 3x3) in float32;
    F(2x2, 3x3) for bf16/fp16, where F(4x4)'s transforms lose too much (~8e-2)."""
    tile = 4 if jnp.result_type(x, w) in (jnp.float32, jnp.float64) else 2
    return conv2d_winograd(x, w, stride, padding, dilation, groups, precision, preferred_element_type, tile=tile)


#: The algorithms by name, each ``f(x, w, stride, padding, dilation, groups, precision, preferred_element_type)``
#: with ``stride``/``dilation`` pairs and ``padding`` per side (NHWC ``x``, HWIO ``w``, NHWC result):
#: ``xla``: ``lax.conv_general_dilated``; ``gemm``: im2col + one matrix product (:mod:`cnnjax.ops.gemm`);
#: ``winograd``: Winograd minimal filtering for 3x3 stride-1 convolutions, F(4x4, 3x3) in float32 and
#: F(2x2, 3x3) in bf16/fp16 (:mod:`cnnjax.ops.winograd`; other configurations use ``gemm``);
#: ``fft``: products in the Fourier domain, any kernel (:mod:`cnnjax.ops.fft`).
#: They are the candidates of ``impl='auto'`` (:data:`cnnjax.ops.autotune.ALGORITHMS`, in the same order).
CONV_ALGORITHMS: dict[str, Algorithm] = {
    "xla": conv2d_xla,
    "gemm": conv2d_gemm,
    "winograd": _conv2d_winograd_by_dtype,
    "fft": conv2d_fft,
}

#: Convolution algorithms ``conv2d`` accepts: those of :data:`CONV_ALGORITHMS`, and
#: ``fast``: the fixed per-shape rule of :func:`cnnjax.ops.autotune.fixed_choice` (on CPU ``gemm`` for 1x1,
#: depthwise and small-map convolutions, fp32 ``winograd`` for 3x3 stride-1 ones on maps >= 14x14, ``gemm`` for
#: the other ungrouped fp32 ones, ``xla`` otherwise; ``xla`` on GPU/TPU): the default of every layer and model
#: (``$CNNJAX_FAST_IMPL=xla``, say, makes it one algorithm everywhere: :func:`cnnjax.ops.autotune.fast_impl`);
#: ``auto``: the fastest per configuration, measured once and cached (:mod:`cnnjax.ops.autotune`).
CONV_IMPLS = (*CONV_ALGORITHMS, "fast", "auto")


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    impl: str = "xla",
    precision: lax.PrecisionLike = None,
    preferred_element_type: jnp.dtype | None = None,
) -> jax.Array:
    """Convolve NHWC ``x`` with HWIO ``w``; see the module docstring for the shape formula."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; valid choices: {', '.join(CONV_IMPLS)}")
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d expects x of shape (N, H, W, C) and w of shape (kH, kW, C/groups, O); "
                         f"got {x.shape} and {w.shape}")
    if x.shape[-1] != w.shape[2] * groups:
        raise ValueError(f"input has {x.shape[-1]} channels but the kernel expects {w.shape[2]} x {groups} groups")
    stride, dilation, padding = pair(stride, "stride"), pair(dilation, "dilation"), normalize_padding(padding)
    if in_lax_convolutions():
        impl = "xla"
    elif impl == "fast":
        impl = autotune.fast_impl(x.shape, w.shape, groups, stride=stride, dilation=dilation, dtype=x.dtype)
    elif impl == "auto":
        impl = autotune.choose(x.shape, w.shape, x.dtype, stride, padding, dilation, groups, precision,
                               preferred_element_type, candidates=CONV_ALGORITHMS)
    return CONV_ALGORITHMS[impl](x, w, stride, padding, dilation, groups, precision, preferred_element_type)
