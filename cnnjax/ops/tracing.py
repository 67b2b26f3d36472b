"""Trace context flags; a leaf module (nothing imported from ``cnnjax``).

:func:`shape_only` marks abstract traces — input-size checks, batch-1 parameter initialisation, finding a
submodule — whose shapes are not the ones that will run. ``conv2d(..., impl='auto')`` then uses the fixed
per-shape rule and measures nothing (:mod:`cnnjax.ops.autotune`); :func:`in_shape_only` tells whether such a
block is active. Models (:mod:`cnnjax.models.base`), :mod:`cnnjax.transfer` and the training loop open it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_shape_only = contextvars.ContextVar("cnnjax_autotune_shape_only", default=False)


@contextlib.contextmanager
def shape_only() -> Iterator[None]:
    """Within this block ``auto`` uses the fixed rule and measures nothing: for abstract traces (input-size checks,
    parameter initialisation) whose shapes (e.g. batch 1) are not the ones that will run."""
    token = _shape_only.set(True)
    try:
        yield
    finally:
        _shape_only.reset(token)


def in_shape_only() -> bool:
    """Whether the caller runs inside a :func:`shape_only` block (of this thread / context)."""
    return _shape_only.get()


_lax_convolutions = contextvars.ContextVar("cnnjax_lax_convolutions", default=False)


@contextlib.contextmanager
def lax_convolutions() -> Iterator[None]:
    """Within this block every ``conv2d`` is one ``lax.conv_general_dilated``, whatever its ``impl`` (layers
    default to ``fast``, whose products and Winograd transforms hide the convolution): for analyses that read
    convolutions from the traced program, such as :func:`cnnjax.analysis.receptive_field`. Same values up to
    floating-point rounding."""
    token = _lax_convolutions.set(True)
    try:
        yield
    finally:
        _lax_convolutions.reset(token)


def in_lax_convolutions() -> bool:
    """Whether the caller runs inside a :func:`lax_convolutions` block (of this thread / context)."""
    return _lax_convolutions.get()
