"""The step-indexed training loop and its hooks.

:class:`Loop` runs ``for step in range(start, total)`` with ``epoch, batch = divmod(step, steps_per_epoch)``:
the data of a step is a pure function of (seed, epoch, batch), so a loop started at any step continues exactly
where an earlier one stopped. After each step every :class:`Hook` whose cadence is :func:`due` runs on the host
(evaluation, checkpoints, logging, progress; see :mod:`cnnjax.training.hooks`), in the order given.

Training metrics are kept on the device until a hook or the end of an epoch asks for them
(:meth:`Loop.flush`): then they are fetched once, checked for non-finite values and added to the epoch's
running sums, which a checkpoint stores so that a resumed epoch reports the same means, and each step's metrics
(every key the train step returns, e.g. a learning rate or gradient norm) go to every hook's
:meth:`Hook.on_metrics` (e.g. a TensorBoard writer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cnnjax.data import DataSource
from cnnjax.training import parallel
from cnnjax.training.host_memory import compile_ahead
from cnnjax.training.state import TrainState
from cnnjax.training.step import jit_eval_step


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or parameters)."""


def due(step: int, every: int | None, total: int | None = None) -> bool:
    """Whether a cadence of ``every`` steps is due after ``step`` completed steps (``step >= 1``): ``every``
    divides ``step``, or ``step`` is ``total`` (the last step; pass ``None`` to exclude it). ``every`` of
    ``None`` or 0 is never due except at ``total``. The one cadence rule of the training core."""
    if total is not None and step == total:
        return True
    return bool(every) and step > 0 and step % every == 0


#: Optional step metrics (present for some models only, e.g. GoogLeNet's ``loss_main`` / ``loss_aux`` with
#: auxiliary heads, :func:`cnnjax.training.step.loss_terms`) whose epoch means the records also carry, as
#: ``train_<key>``.
OPTIONAL_MEANS = ("loss_main", "loss_aux")


def zero_sums() -> list:
    """Running sums of an epoch's training metrics: ``[loss, top1, top5, steps]``."""
    return [0.0, 0.0, 0.0, 0]


class Hook:
    """Host-side work at a cadence. :class:`Loop` calls :meth:`begin` once before the first step,
    :meth:`after_step` after every step for which :meth:`is_due` holds (default: ``due(step, every, total if
    at_end)``), and :meth:`end` once when the loop finishes or is stopped (not when it raises).
    :meth:`on_metrics` gets each step's fetched metrics (:meth:`Loop.flush`), whatever the cadence."""

    every: int | None = None
    at_end: bool = False

    def is_due(self, loop: Loop) -> bool:
        return due(loop.step, self.every, loop.total_steps if self.at_end else None)

    def begin(self, loop: Loop) -> None:
        pass

    def after_step(self, loop: Loop) -> None:
        pass

    def end(self, loop: Loop) -> None:
        pass

    def on_metrics(self, loop: Loop, step: int, metrics: dict) -> None:
        """The host metrics of step ``step`` (1-based), every key of the train step's dict (NumPy scalars),
        called in step order when :meth:`Loop.flush` fetches them (before its non-finite check)."""


class Loop:
    """Train ``state`` from its step to ``total_steps``.

    ``batches(epoch, start_batch)`` yields the epoch's host batches from ``start_batch`` on (dicts of
    process-local NumPy arrays); ``to_global`` turns one into global arrays (see
    :func:`cnnjax.training.parallel.global_batch`); ``train_step(state, batch) -> (state, metrics)`` is the
    jitted step. ``sums`` are the running sums of the current epoch when starting mid-epoch (from a checkpoint),
    ``extra_sums`` those of the :data:`OPTIONAL_MEANS` the step returns (a checkpoint's ``extra_sums``).
    ``should_stop()`` is polled after every step (e.g. a signal flag): the loop then runs that step's hooks and
    the hooks' :meth:`Hook.end`, and returns with :attr:`stopped` set.
    """

    def __init__(self, state: TrainState, train_step: Callable, batches: Callable[[int, int], Iterable[dict]], *,
                 total_steps: int, steps_per_epoch: int, batch_size: int, to_global: Callable[[dict], Any],
                 hooks: Sequence[Hook] = (), sums: Sequence | None = None, extra_sums: dict | None = None,
                 should_stop: Callable[[], bool] = lambda: False):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.state, self.train_step, self.batches, self.to_global = state, train_step, batches, to_global
        self.total_steps, self.steps_per_epoch, self.batch_size = total_steps, steps_per_epoch, batch_size
        self.hooks, self.should_stop = list(hooks), should_stop
        self.step = int(state.step)
        self.sums = list(sums) if sums is not None and self.batch_in_epoch else zero_sums()
        self.extra_sums = dict(extra_sums) if extra_sums and self.batch_in_epoch else {}
        self.pending: list[dict] = []
        self.last_loss: float | None = None
        self.stopped = False
        self.epoch_seen, self.epoch_t0 = 0, time.perf_counter()
        self._it: Iterator[dict] | None = None

    @property
    def epochs(self) -> int:
        """Number of epochs the run touches: ``ceil(total_steps / steps_per_epoch)``."""
        return -(-self.total_steps // self.steps_per_epoch)

    @property
    def epoch(self) -> int:
        """1-based epoch of the last completed step (0 before any)."""
        return (self.step - 1) // self.steps_per_epoch + 1 if self.step else 0

    @property
    def batch_in_epoch(self) -> int:
        """Steps done in the current epoch: the next step's batch index (0 at an epoch boundary)."""
        return self.step % self.steps_per_epoch

    @property
    def epoch_done(self) -> bool:
        """The last step ended an epoch or the run."""
        return self.step > 0 and (self.batch_in_epoch == 0 or self.step == self.total_steps)

    @property
    def images_per_sec(self) -> float:
        """Training images per second since the current epoch started in this process (compile included)."""
        return self.epoch_seen / max(time.perf_counter() - self.epoch_t0, 1e-9)

    def position(self) -> dict:
        """The data position after the last step, as a checkpoint's ``meta``: epoch and batch of the next step
        and the running sums of the current epoch (zero at an epoch boundary; ``extra_sums``, those of the
        :data:`OPTIONAL_MEANS`, only mid-epoch and when the step returns any)."""
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        position = {"epoch": epoch, "batch": batch, "sums": list(self.sums) if batch else zero_sums()}
        if batch and self.extra_sums:
            position["extra_sums"] = dict(self.extra_sums)
        get_state = getattr(self._it, "get_state", None)
        if get_state is not None:  # a stateful pipeline (Grain): its iterator state, to restore exactly
            state = get_state()
            if (state.get("epoch"), state.get("batch")) == (epoch, batch):
                position["data"] = state
        return position

    def train_means(self) -> dict:
        """Means of the current epoch's training metrics so far (flushes first): ``train_loss``, ``train_top1``,
        ``train_top5`` and ``train_<key>`` of each :data:`OPTIONAL_MEANS` key the step returns."""
        self.flush()
        n = max(self.sums[3], 1)
        return {"train_loss": self.sums[0] / n, "train_top1": self.sums[1] / n, "train_top5": self.sums[2] / n,
                **{f"train_{k}": v / n for k, v in self.extra_sums.items()}}

    def flush(self) -> None:
        """Fetch pending step metrics, add them to the epoch sums, raise :class:`NonFiniteLossError` if any step
        produced a non-finite loss or parameters."""
        if not self.pending:
            return
        host, self.pending = jax.device_get(self.pending), []
        first = self.step - len(host) + 1  # the pending steps are the last len(host) ones
        for i, m in enumerate(host):
            self.sums = [self.sums[0] + float(m["loss"]), self.sums[1] + float(m["top1"]),
                         self.sums[2] + float(m["top5"]), self.sums[3] + 1]
            for key in OPTIONAL_MEANS:
                if key in m:
                    self.extra_sums[key] = self.extra_sums.get(key, 0.0) + float(m[key])
            for hook in self.hooks:
                on_metrics = getattr(hook, "on_metrics", None)  # a duck-typed hook may not have it
                if on_metrics is not None:
                    on_metrics(self, first + i, m)
        self.last_loss = float(host[-1]["loss"])
        if not all(bool(m["finite"]) for m in host):
            raise NonFiniteLossError(f"non-finite loss or parameters (last loss {self.last_loss}) by step "
                                     f"{self.step}")

    def run(self) -> Loop:
        """Train to ``total_steps`` (or until stopped); returns ``self``."""
        for hook in self.hooks:
            hook.begin(self)
        self._it = None
        start = self.step
        for step in range(start, self.total_steps):
            epoch, batch = divmod(step, self.steps_per_epoch)
            if batch == 0 or self._it is None:
                if batch == 0:
                    self.sums, self.extra_sums = zero_sums(), {}
                self._it = iter(self.batches(epoch, batch))
                self.epoch_seen, self.epoch_t0 = 0, time.perf_counter()
            inputs = self.to_global(next(self._it))
            if step == start:  # compiled before it runs: the compiler's freed heap goes back first
                compile_ahead(self.train_step, self.state, inputs)
            self.state, metrics = self.train_step(self.state, inputs)
            self.step, self.epoch_seen = step + 1, self.epoch_seen + self.batch_size
            self.pending.append(metrics)
            stop = self.should_stop()
            if stop or self.epoch_done:
                self.flush()
            for hook in self.hooks:
                if hook.is_due(self):
                    hook.after_step(self)
            if stop:
                self.stopped = self.step < self.total_steps  # a signal during the last step: the run is done
                break
        self.flush()
        for hook in self.hooks:
            hook.end(self)
        return self


def source_batches(source: DataSource, batch_size: int, state: dict | None = None
                   ) -> Callable[[int, int], Iterable[dict]]:
    """``batches(epoch, start_batch)`` of ``source``'s train split for :class:`Loop`, this process's shard.

    ``state`` is a checkpoint's data iterator state (``position['data']``, saved by :meth:`Loop.position` for a
    stateful pipeline): the first call at that position restores the iterator from it."""
    pending = [state]

    def batches(epoch: int, start_batch: int) -> Iterable[dict]:
        saved, pending[0] = pending[0], None
        if saved is not None and (saved.get("epoch"), saved.get("batch")) != (epoch, start_batch):
            saved = None
        return source.batches("train", batch_size, epoch=epoch, start_batch=start_batch,
                              process_index=jax.process_index(), process_count=jax.process_count(), state=saved)

    return batches


def evaluate(state: TrainState, eval_step: Callable, source: DataSource, batch_size: int, batch_sharding,
             progress: bool = False, confusion: bool = False) -> dict:
    """Top-1/top-5 and mean loss over every validation example exactly once (padded rows masked out):
    ``val_loss``, ``val_top1``, ``val_top5`` (fractions in [0, 1]) and ``val_count``. With ``confusion`` also
    ``val_confusion``: the (K, K) int64 NumPy confusion matrix (row = label, column = top-1 prediction; its
    trace / ``val_count`` is ``val_top1``), summed on the device from the eval step's ``confusion`` (an
    ``eval_step`` without one raises ``ValueError``)."""
    sums = None
    for local in tqdm(source.batches("val", batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count()),
                      total=source.num_batches("val", batch_size), desc="eval", leave=False, disable=not progress):
        batch = parallel.global_batch(local, batch_sharding)
        if sums is None:
            compile_ahead(eval_step, state, batch)
        out = eval_step(state, batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError(f"the validation split of {source.info.name} is empty: nothing to evaluate")
    sums = jax.device_get(sums)
    matrix = sums.pop("confusion", None)
    if confusion and matrix is None:
        raise ValueError("evaluate(confusion=True): the eval step returns no 'confusion' matrix")
    sums = {key: float(np.asarray(value)) for key, value in sums.items()}
    n = max(sums["count"], 1.0)
    result = {"val_loss": sums["loss"] / n, "val_top1": sums["top1"] / n, "val_top5": sums["top5"] / n,
              "val_count": int(sums["count"])}
    if confusion:
        result["val_confusion"] = np.asarray(matrix).astype(np.int64)
    return result


def evaluate_variables(model, variables: dict, source: DataSource, batch_size: int, progress: bool = False,
                       confusion: bool = False) -> dict:
    """:func:`evaluate` of ``variables`` (``params``, ``batch_stats``) without a training run: the eval-mode
    model on every validation example, replicated over the ``data`` mesh of all devices (``confusion``: add
    ``val_confusion``, as there)."""
    replicated, batch_sharding = parallel.shardings(parallel.data_mesh())
    state = jax.device_put(TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                      batch_stats=variables.get("batch_stats", {}) or {}, opt_state=(),
                                      rng=jnp.zeros((2,), jnp.uint32)), replicated)
    return evaluate(state, jit_eval_step(model, replicated, batch_sharding), source, batch_size, batch_sharding,
                    progress, confusion)
