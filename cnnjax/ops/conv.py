"""2-D convolution with PyTorch's parameterisation on NHWC tensors.

``conv2d(x, w, stride, padding, dilation, groups, impl)`` takes ``x`` of shape (N, H, W, C_in) and a kernel
``w`` of shape (kH, kW, C_in // groups, C_out) and returns (N, H', W', C_out) with

    H' = floor((H + pad_top + pad_bottom - dilation * (kH - 1) - 1) / stride) + 1

exactly as ``torch.nn.functional.conv2d`` (padding is explicit and symmetric unless given per side; XLA's
asymmetric 'SAME' is never used).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

IntPair = int | tuple[int, int]
Padding = int | tuple[int, int] | Sequence[tuple[int, int]]

#: Convolution algorithms ``conv2d`` accepts:
#: ``xla``: ``lax.conv_general_dilated``; ``gemm``: im2col + one matrix product (:mod:`cnnjax.ops.gemm`);
#: ``winograd``: Winograd minimal filtering for 3x3 stride-1 convolutions, F(4x4, 3x3) in float32 and
#: F(2x2, 3x3) in bf16/fp16 (:mod:`cnnjax.ops.winograd`; other configurations use ``gemm``);
#: ``fft``: products in the Fourier domain, any kernel (:mod:`cnnjax.ops.fft`);
#: ``fast``: the fixed per-shape CPU rule of :func:`cnnjax.ops.autotune.fixed_choice` (``gemm`` for 1x1
#: convolutions and maps of at most 4x4, ``xla`` otherwise and on GPU/TPU);
#: ``auto``: the fastest per configuration, measured once and cached (:mod:`cnnjax.ops.autotune`).
CONV_IMPLS = ("xla", "gemm", "winograd", "fft", "fast", "auto")


def pair(v: IntPair, name: str = "value") -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def normalize_padding(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch-style padding to per-side pairs ``((top, bottom), (left, right))``.

    ``p`` pads every side by ``p``; ``(ph, pw)`` pads top/bottom by ``ph`` and left/right by ``pw``;
    ``((t, b), (l, r))`` is taken as it is.
    """
    if isinstance(padding, str):
        raise ValueError(f"padding must be explicit integers (PyTorch style), not {padding!r}")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    items = list(padding)
    if len(items) == 2 and all(isinstance(i, int) for i in items):
        return ((items[0], items[0]), (items[1], items[1]))
    if len(items) == 2 and all(len(i) == 2 for i in items):
        return (tuple(items[0]), tuple(items[1]))  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (ph, pw) or ((top, bottom), (left, right)); got {padding!r}")


def conv_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a convolution or pooling window along one axis, as PyTorch computes it.

    ``padding`` is one int (both sides) or ``(before, after)``. With ``ceil_mode`` (pooling only) the
    division rounds up, but a last window that would start in the right padding is dropped, as in PyTorch.
    A result below 1 means the input is too small.
    """
    lo, hi = (padding, padding) if isinstance(padding, int) else padding
    span = size + lo + hi - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + lo:
            out -= 1
        return max(out, 0)
    return max(span // stride + 1, 0)


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
    if impl == "fast":
        from cnnjax.ops.autotune import fixed_choice

        impl = fixed_choice(x.shape, w.shape, groups)
    elif impl == "auto":
        from cnnjax.ops.autotune import choose

        impl = choose(x.shape, w.shape, x.dtype, stride, padding, dilation, groups, precision, preferred_element_type)
    if impl == "xla":
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
    if impl == "gemm":
        from cnnjax.ops.gemm import conv2d_gemm as algorithm
    elif impl == "winograd":
        from cnnjax.ops.winograd import conv2d_winograd

        # F(4x4, 3x3) in float32; F(2x2, 3x3) for bf16/fp16, where F(4x4)'s transforms lose too much (~8e-2)
        tile = 4 if jnp.result_type(x, w) in (jnp.float32, jnp.float64) else 2
        return conv2d_winograd(x, w, stride, padding, dilation, groups, precision, preferred_element_type, tile=tile)
    else:
        from cnnjax.ops.fft import conv2d_fft as algorithm
    return algorithm(x, w, stride, padding, dilation, groups, precision, preferred_element_type)
