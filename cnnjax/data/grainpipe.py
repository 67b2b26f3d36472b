"""The Grain input pipeline behind ``folder:`` and the in-memory datasets: worker processes, prefetch, and a
data iterator whose state goes into the checkpoint.

A :class:`Stream` is one Grain iterator over consecutive epochs of one split for one process, from a start
position on: ``MapDataset.range`` of absolute element numbers -> ``map(element_fn)`` (a picklable, pure function
of the element number: which example, how it is augmented) -> ``batch`` -> ``to_iter_dataset`` (a thread pool per
process) -> ``mp_prefetch`` (``workers`` decoding processes, when > 0). Because an element is a function of its
number only, the batches are the same for any number of workers or threads, and a stream started at (epoch,
batch) yields what a stream started earlier yields from there.

:class:`Streams` keeps one live stream per (split, batch size, process) and hands out one epoch at a time
(:class:`EpochIterator`): when the loop asks for the next epoch the running stream (and its worker processes,
which take a second or two to start) goes on; asking for another position starts a new one. An
:class:`EpochIterator`'s :meth:`~EpochIterator.get_state` is JSON (the stream's start and Grain's own iterator
state); passed back as ``state=`` it restores the iterator exactly (Grain's ``set_state``), without replaying
the epoch.

Grain is imported lazily (:func:`import_grain`): ``import cnnjax`` and the in-memory datasets work without it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from cnnjax.data.base import Batch, MissingDependencyError
from cnnjax.data.pilpipe import default_workers as default_threads

_EXIT_HOOK = False
EPOCHS_AHEAD = 1 << 20  # a stream's range covers this many epochs past its start (lazily: nothing is materialised)


def import_grain() -> Any:
    """``import grain``, or :class:`MissingDependencyError` naming the install command.

    Grain reads absl flags (e.g. its debug options) from worker threads; outside an absl app they are never
    parsed, so they are marked parsed here (their defaults apply)."""
    try:
        import grain
    except ImportError:
        raise MissingDependencyError("this dataset loads images with Grain, which is not installed: pip install "
                                     "grain (a dependency of cnnjax: pip install -e . installs it)") from None
    from absl import flags

    global _EXIT_HOOK
    if not _EXIT_HOOK:  # registered after Grain's own exit handlers, so it runs before them
        atexit.register(_close_all)
        _EXIT_HOOK = True
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def grain_available() -> bool:
    try:
        import_grain()
    except MissingDependencyError:
        return False
    return True


def _quiet_worker(index: int, count: int) -> None:
    """Set up each Grain worker process. Ctrl-C or SIGTERM sent to the whole process group is the training
    process's to handle -- it saves, then closes the workers -- so workers ignore both (no tracebacks, no shared
    memory left behind). And a worker exits on its own once the training process is gone (killed with
    SIGKILL, say), instead of waiting forever as an orphan."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="cnnjax-parent-watch", daemon=True).start()


class Stream:
    """Batches of one split, epoch after epoch, from batch ``start`` (counted over epochs) on.

    Args:
        element_fn: picklable ``f(j) -> dict of NumPy arrays`` for element number ``j`` (absolute, over epochs).
        elements_per_batch: elements stacked into one batch (the local batch size for one-example elements; 1
            for elements that are whole batches already).
        start: the first batch, as ``epoch * batches_per_epoch + batch``.
        finalize: ``f(stacked dict) -> Batch`` run in this process (e.g. uint8 -> normalised float32).
        workers: decoding processes (0: decode in this process's threads).
        threads: threads per process, each reading whole batches (default: the CPUs shared by the workers).
        buffer: batches each worker (or this process) prepares ahead.
    """

    def __init__(self, element_fn: Callable[[int], dict], *, elements_per_batch: int, start: int,
                 finalize: Callable[[dict], Batch], workers: int = 0, threads: int | None = None, buffer: int = 2,
                 batches_per_epoch: int):
        grain = import_grain()
        self.start, self.next, self.finalize = int(start), int(start), finalize
        self.workers = int(workers)
        self.batches_per_epoch = int(batches_per_epoch)
        k = int(elements_per_batch)
        ds = grain.MapDataset.range(self.start * k, (self.start + EPOCHS_AHEAD * self.batches_per_epoch) * k)
        ds = ds.map(element_fn)
        if k > 1:
            ds = ds.batch(k, drop_remainder=True)
        # Threads read whole batches (so a batch is the same for any threads/workers); per process the CPUs are
        # shared among the workers. Buffers count batches.
        threads = threads or max(1, default_threads() // max(1, int(workers)))
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                     prefetch_buffer_size=max(1, buffer, threads)))
        if workers > 0:
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(workers),
                                                                   per_worker_buffer_size=max(1, buffer)),
                                      worker_init_fn=_quiet_worker)
        self._it = iter(it_ds)
        self._lock = threading.Lock()

    def position(self) -> tuple[int, int]:
        """(epoch, batch) of the next batch."""
        return divmod(self.next, self.batches_per_epoch)

    def __next__(self) -> Batch:
        with self._lock:
            if self._it is None:
                raise ValueError("this data stream was closed (its source was closed or moved elsewhere)")
            item = next(self._it)
            self.next += 1
        return self.finalize(item)

    def get_state(self) -> dict:
        """JSON: where this stream started, its worker processes and Grain's state of its iterator (the next
        batch)."""
        epoch, batch = self.position()
        return {"epoch": epoch, "batch": batch, "start": self.start, "workers": self.workers,
                "grain": self._it.get_state()}

    def set_state(self, state: dict) -> None:
        """Continue where the stream whose :meth:`get_state` gave ``state`` was (same ``start`` required)."""
        if int(state["start"]) != self.start:
            raise ValueError(f"data iterator state starts at batch {state['start']}, this stream at {self.start}")
        self._it.set_state(state["grain"])
        self.next = int(state["epoch"]) * self.batches_per_epoch + int(state["batch"])

    def close(self) -> None:
        """Stop the worker processes and threads now (not at interpreter exit, when Grain's cleanup fails)."""
        it, self._it = self._it, None
        if it is not None:
            with contextlib.suppress(Exception):
                it.close()


class EpochIterator:
    """The batches ``start_batch .. batches_per_epoch - 1`` of one epoch, read from a :class:`Stream`."""

    def __init__(self, stream: Stream, epoch: int, start_batch: int):
        self.stream, self.epoch = stream, epoch
        self.remaining = stream.batches_per_epoch - start_batch

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> Batch:
        if self.remaining <= 0:
            raise StopIteration
        self.remaining -= 1
        return next(self.stream)

    def get_state(self) -> dict:
        """The data iterator's state after the batches taken so far (JSON; see :meth:`Stream.get_state`)."""
        return self.stream.get_state()


class Streams:
    """One live :class:`Stream` per key; :meth:`epoch` continues it when asked for the position it is at.

    ``repeat=True`` (a val split: every pass is the same) treats every pass as epoch 0, so evaluation after
    evaluation reuses one stream.
    """

    def __init__(self):
        self._live: dict[Any, Stream] = {}
        self._lock = threading.Lock()
        _ALL.add(self)

    def epoch(self, key: Any, make: Callable[[int], Stream], *, epoch: int, start_batch: int, batches_per_epoch: int,
              state: dict | None = None, repeat: bool = False) -> EpochIterator:
        """An iterator over ``epoch`` from ``start_batch``; ``make(start)`` builds a stream starting at batch
        ``start`` (over epochs); ``state`` (from :meth:`EpochIterator.get_state`) restores Grain's iterator (or,
        saved with another number of worker processes, which Grain's state cannot be moved to, a stream starts at
        the saved position: the same batches)."""
        with self._lock:
            stream = self._live.get(key)
            want = (0 if repeat else epoch) * batches_per_epoch + start_batch
            if state is not None:
                saved = (int(state["epoch"]), int(state["batch"]))
                if saved != (epoch, start_batch):
                    raise ValueError(f"the saved data iterator is at epoch {saved[0]}, batch {saved[1]}; asked for "
                                     f"epoch {epoch}, batch {start_batch}")
            ok = stream is not None and state is None and (
                stream.next == want or (repeat and stream.position()[1] == start_batch))
            if not ok:
                if stream is not None:
                    stream.close()
                stream = make(int(state["start"]) if state is not None else want)
                if state is not None:
                    if int(state.get("workers", stream.workers)) == stream.workers:
                        stream.set_state(state)
                    else:
                        # Grain's state is per worker process; as an element is a function of its number, a
                        # stream started at the saved position yields the same batches.
                        stream.close()
                        stream = make(want)
                self._live[key] = stream
        return EpochIterator(stream, epoch, start_batch)

    def close(self) -> None:
        with self._lock:
            for stream in self._live.values():
                stream.close()
            self._live.clear()



_ALL: weakref.WeakSet[Streams] = weakref.WeakSet()


def _close_all() -> None:
    """Close every live stream before the interpreter tears modules down (Grain's own finalizers then fail)."""
    for streams in list(_ALL):
        streams.close()
