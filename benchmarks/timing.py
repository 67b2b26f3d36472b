"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_ms(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of ``runs`` calls of ``fn`` after ``warmup`` calls (compiles, caches). ``fn`` must
    block until its work is done (``jax.block_until_ready``, a synchronous PyTorch step)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3
