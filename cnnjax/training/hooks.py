"""The standard hooks of the training loop: fetch metrics, progress bar, evaluation, checkpoints (and a time limit).

Each is a :class:`~cnnjax.training.loop.Hook` with a cadence in steps; :class:`~cnnjax.training.loop.Loop`
runs them in the order given after every step where they are due. Put :class:`Checkpoint` last: whatever the
other hooks wrote for a step (a metrics row, a log line) then exists before the checkpoint of that step. A run
killed later resumes from that checkpoint and recomputes the steps after it, so hooks run again for those
steps (the CLI drops the metrics rows past the restored step first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from cnnjax.checkpoint import CheckpointStore
from cnnjax.training.loop import Hook, Loop, due
from cnnjax.training.state import TrainState


class FetchMetrics(Hook):
    """Bring the step metrics to the host every ``every`` steps (non-finite check, progress postfix)."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, loop: Loop) -> None:
        loop.flush()


class Progress(Hook):
    """A tqdm bar per epoch (steps, last fetched loss, images/s)."""

    every = 1

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: tqdm | None = None
        self._loss: float | None = None

    def after_step(self, loop: Loop) -> None:
        if self.bar is None:
            self.bar = tqdm(total=loop.steps_per_epoch, initial=(loop.step - 1) % loop.steps_per_epoch,
                            desc=f"epoch {loop.epoch}/{loop.epochs}", disable=not self.enabled, unit="step",
                            dynamic_ncols=True)
        if loop.last_loss is not None and loop.last_loss != self._loss:
            self._loss = loop.last_loss
            self.bar.set_postfix(loss=f"{loop.last_loss:.3f}", img_s=f"{loop.images_per_sec:.1f}")
        self.bar.update(1)
        if loop.epoch_done:
            self.end(loop)

    def end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Evaluate(Hook):
    """At the end of every ``every_epochs``-th epoch and of the run: a record of the epoch's training means,
    ``evaluate(state)`` (a dict, e.g. :func:`cnnjax.training.loop.evaluate`) and the epoch's images/s, passed to
    each of ``on_record``. :attr:`last` holds the newest record. Array values of the evaluation (e.g.
    ``val_confusion`` of ``evaluate(..., confusion=True)``) stay out of the record, which is one JSON row:
    :attr:`arrays` holds the newest of them (already while ``on_record`` runs)."""

    at_end = True

    def __init__(self, every_epochs: int, evaluate: Callable[[TrainState], dict],
                 on_record: Sequence[Callable[[dict], None]] = ()):
        self.every_epochs, self.evaluate, self.on_record = every_epochs, evaluate, list(on_record)
        self.last: dict = {}
        self.arrays: dict[str, np.ndarray] = {}

    def is_due(self, loop: Loop) -> bool:
        return loop.epoch_done and due(loop.step, self.every_epochs * loop.steps_per_epoch, loop.total_steps)

    def after_step(self, loop: Loop) -> None:
        rate = loop.images_per_sec
        means = loop.train_means()  # flushes first: a non-finite state raises before it is evaluated
        result = self.evaluate(loop.state)
        arrays = {key: value for key, value in result.items() if isinstance(value, np.ndarray) and value.ndim}
        record = {"epoch": loop.epoch, "step": loop.step, **means,
                  **{key: value for key, value in result.items() if key not in arrays}, "images_per_sec": rate}
        self.arrays = arrays
        for fn in self.on_record:
            fn(record)
        self.last = record


class Checkpoint(Hook):
    """Save the state and data position every ``every`` steps, at the end of the run, when the loop is stopped
    (a signal), and at every epoch end unless ``every`` is longer than an epoch (then ``every`` is kept: a run
    of many tiny epochs, e.g. 100 training images, does not write a checkpoint every few steps; a resume
    continues mid-epoch from the data position). ``saved`` are steps already on disk (a resumed run's start)."""

    def __init__(self, store: CheckpointStore, every: int, saved: Sequence[int] = ()):
        self.store, self.every, self.saved = store, every, set(saved)

    def is_due(self, loop: Loop) -> bool:
        return (due(loop.step, self.every, loop.total_steps)
                or (loop.epoch_done and self.every <= loop.steps_per_epoch))

    def after_step(self, loop: Loop) -> None:
        self.save(loop)

    def end(self, loop: Loop) -> None:
        if loop.stopped:
            self.save(loop)

    def save(self, loop: Loop) -> None:
        if loop.step in self.saved:  # e.g. a signal right after a periodic checkpoint: that one holds this state
            return
        loop.flush()  # raises on a non-finite state: it must never be checkpointed
        self.store.save(loop.step, loop.state.as_dict(), loop.position())
        self.saved.add(loop.step)


class TimeLimit:
    """``should_stop`` for :class:`~cnnjax.training.loop.Loop`: true once ``seconds`` of wall time have passed
    since this object was made (``None``: never)."""

    def __init__(self, seconds: float | None):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def __call__(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.t0 > self.seconds
