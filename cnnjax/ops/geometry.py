"""Window geometry shared by convolutions and pools, with PyTorch's parameterisation; a leaf module.

* :func:`pair`: an int or a pair of ints as ``(h, w)`` (kernel sizes, strides, dilations);
* :func:`normalize_padding`: PyTorch-style padding as per-side pairs ``((top, bottom), (left, right))``;
* :func:`conv_output_size`: the output length along one axis of a convolution or pooling window,

      H' = floor((H + pad_top + pad_bottom - dilation * (kH - 1) - 1) / stride) + 1

  (rounded up with ``ceil_mode``, as PyTorch's pools do).

Plain Python on ints: no arrays, and nothing imported from ``cnnjax``, so every layer (the algorithms of
:mod:`cnnjax.ops`, the layers of :mod:`cnnjax.nn`) can use it without importing :mod:`cnnjax.ops.conv`.
"""

from __future__ import annotations

from collections.abc import Sequence

#: An int (the same along H and W) or ``(h, w)``.
IntPair = int | tuple[int, int]
#: ``p`` (every side), ``(ph, pw)`` (top/bottom, left/right) or ``((top, bottom), (left, right))``.
Padding = int | tuple[int, int] | Sequence[tuple[int, int]]


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
