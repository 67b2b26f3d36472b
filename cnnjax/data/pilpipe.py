"""Val batches transformed with PIL in a thread pool (the ``eval_preprocess`` path of ``folder:`` and ``tfds:``).

Each row is loaded and transformed by a function of one record (a file path, encoded bytes ...) running in a
thread pool (PIL releases the GIL while decoding and resizing); rows are assembled in order, at most about two
batches ahead of the consumer. No TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from cnnjax.data.base import Batch, num_batches_for


def default_workers() -> int:
    """Threads for decoding: the CPUs this process may use, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def val_batches(records: Iterable[tuple[Any, int]], *, n: int, global_batch_size: int, local: int,
                start_batch: int, process_index: int, load: Callable[[Any], tuple[np.ndarray, bool]],
                shape: tuple[int, ...], workers: int | None = None) -> Iterator[Batch]:
    """This process's rows of the val batches ``start_batch ..``: ``records`` yields ``(record, label)`` in val
    order from example ``start_batch * global_batch_size`` on; ``load(record) -> (image of `shape` float32, ok)``
    (``ok`` False: the row's ``mask`` is False). Rows past the ``n`` examples are padding (zeros, label 0,
    mask False). Only this process's rows are loaded."""
    nb = num_batches_for("val", n, global_batch_size)
    lo, hi = process_index * local, (process_index + 1) * local

    def rows() -> Iterator[tuple[Any, int, bool]]:
        it = iter(records)
        for b in range(start_batch, nb):
            for r in range(global_batch_size):
                real = b * global_batch_size + r < n
                if real:
                    try:
                        record, label = next(it)
                    except StopIteration:
                        raise ValueError(f"val split: expected {n} examples, the records ended early") from None
                if lo <= r < hi:
                    yield (record, int(label), True) if real else (None, 0, False)

    def job(record: Any, real: bool) -> tuple[np.ndarray | None, bool]:
        return load(record) if real else (None, False)

    todo = rows()
    window = 2 * local  # rows in flight: the batch being assembled and the next one
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending: collections.deque = collections.deque()

        def fill() -> None:
            while len(pending) < window:
                row = next(todo, None)
                if row is None:
                    return
                record, label, real = row
                pending.append((pool.submit(job, record, real), label))

        fill()
        try:
            while pending:
                images = np.zeros((local, *shape), np.float32)
                labels = np.zeros((local,), np.int32)
                mask = np.zeros((local,), bool)
                for i in range(local):
                    future, label = pending.popleft()
                    image, ok = future.result()
                    if image is not None:
                        images[i] = image
                    labels[i], mask[i] = label, bool(ok)
                fill()
                yield {"image": images, "label": labels, "mask": mask}
        finally:
            for future, _ in pending:
                future.cancel()
