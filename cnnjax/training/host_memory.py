"""Host memory around XLA's compile: compile a step ahead of its first run and hand the compiler's freed heap back.

XLA's CPU compile of a ResNet-50 train step allocates ~0.6 GB in many small blocks (LLVM) and frees them when it
is done; glibc's ``malloc`` keeps those pages (they are free inside its arenas, not returned to the system), and
the step's own buffers (one large temporary block, ~1.8 GB at batch 16) are then mapped fresh on top. So the
process's peak resident memory is the compile's leftovers plus the step, 0.55 GB more than it needs at batch 16
(BENCHMARKS.md, "Peak memory of the training step"). :func:`compile_ahead` compiles a jitted function for its
arguments (JAX caches the executable, so the next ``fn(*args)`` runs without compiling), then
:func:`release_free_heap` asks glibc to return the free pages (``malloc_trim(0)``). Elsewhere than glibc (macOS,
musl) the release is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import Any

__all__ = ["compile_ahead", "release_free_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap pages glibc holds free to the operating system (``malloc_trim(0)``: every arena, whole
    free pages only; live allocations are untouched). ``True`` where glibc did it, ``False`` elsewhere."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def compile_ahead(fn: Callable, *args: Any) -> bool:
    """Compile ``fn`` (a ``jax.jit`` function) for ``args`` now, then :func:`release_free_heap`, so its first
    real call runs with the compiler's freed memory back with the system. A function without ``.lower`` (not
    jitted) is left alone. ``args`` are only looked at (shapes, dtypes, shardings), not consumed: donation happens
    at the real call. Returns whether it compiled."""
    lower = getattr(fn, "lower", None)
    if lower is None:
        return False
    lower(*args).compile()
    release_free_heap()
    return True
