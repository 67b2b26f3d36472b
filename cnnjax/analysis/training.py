"""Short in-process training for the analysis tools (trained-vs-untrained comparisons), on the training core.

:func:`quick_train` trains a model on a :mod:`cnnjax.data` dataset for a fixed number of steps or seconds,
whichever comes first, through :mod:`cnnjax.training` — the same state initialisation (threefry keys from the
seed), jitted train step, optimizer (SGD with Nesterov momentum, cosine learning rate, weight decay off biases
and norms) and step loop as ``python -m train.main`` — and returns the variables (``params`` and
``batch_stats``). There are no checkpoints during training, no evaluation schedule and no CLI (that is
``train/``).

:func:`save_variables` / :func:`load_variables` store a variables dict in the one checkpoint format of the
project (orbax, as a run directory ``PATH/checkpoints/0/``), so ``cnnjax.analyze --checkpoint``, ``train.evaluate
--init`` and ``train.main --init`` read each other's files. :func:`load_variables` also reads the flax
``.msgpack`` and flat ``.npz`` files earlier versions wrote (with a note on converting them).
"""

from __future__ import annotations

import collections
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from cnnjax import checkpoint
from cnnjax.data import DataSource
from cnnjax.training import hooks as H
from cnnjax.training import optim, parallel
from cnnjax.training.loop import Hook, Loop, evaluate_variables, source_batches
from cnnjax.training.state import init_state
from cnnjax.training.state import init_variables as _core_init_variables
from cnnjax.training.step import jit_steps


def init_variables(model: nn.Module, image_size: int, channels: int, seed: int = 0) -> Any:
    """``model.init`` on a (1, image_size, image_size, channels) NHWC input from ``jax.random.key(seed)``, as
    the training core initialises (:func:`cnnjax.training.init_variables`)."""
    return _core_init_variables(model, (1, image_size, image_size, channels), seed)


class _RecentLosses(Hook):
    """Keeps the last ``n`` step losses (on the device until read); logs the mean every ``log_every`` steps."""

    every = 1

    def __init__(self, n: int, log: Callable[[str], None] | None, log_every: int = 50):
        self.losses: collections.deque = collections.deque(maxlen=n)
        self.log, self.log_every = log, log_every

    def after_step(self, loop: Loop) -> None:
        self.losses.append(loop.pending[-1]["loss"] if loop.pending else jnp.float32(loop.last_loss))
        if self.log and loop.step % self.log_every == 0:
            self.log(f"step {loop.step}: loss {self.mean(self.log_every):.3f}")

    def mean(self, last: int | None = None) -> float:
        values = list(self.losses)[-last:] if last else list(self.losses)
        return float(np.mean(jax.device_get(values))) if values else float("nan")


def quick_train(model: nn.Module, source: DataSource, *, steps: int = 300, seconds: float | None = None,
                batch_size: int = 64, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                seed: int = 0, variables: Any = None,
                log: Callable[[str], None] | None = None) -> tuple[Any, dict[str, float]]:
    """Train ``model`` on the train split of ``source`` with SGD + Nesterov momentum and a cosine learning rate
    (no warmup) through the training core.

    Stops after ``steps`` optimiser steps or ``seconds`` of wall time (checked after every step), whichever
    comes first; ``variables`` (optional) are the starting point instead of a fresh initialisation from
    ``seed``. Returns ``(variables, stats)`` with ``stats``: ``steps``, ``seconds``, ``train_loss`` (mean of the
    last 20 steps) and ``val_accuracy`` (fraction in [0, 1]).
    """
    info = source.info
    tx = optim.make_optimizer("sgd", lr, weight_decay, max(steps, 1), 0, momentum)
    replicated, batch_sharding = parallel.shardings(parallel.data_mesh())
    start = variables
    state = init_state(model, tx, seed=seed, input_shape=(1, info.image_size, info.image_size, info.channels),
                       replicated=replicated,
                       overlay=None if start is None else (lambda fresh: {"params": start["params"],
                                                                          "batch_stats": start.get("batch_stats",
                                                                                                   {})}))
    train_step, _ = jit_steps(model, tx, replicated, batch_sharding)
    recent = _RecentLosses(50, log)
    t0 = time.perf_counter()
    loop = Loop(state, train_step, source_batches(source, batch_size), total_steps=steps,
                steps_per_epoch=source.num_batches("train", batch_size), batch_size=batch_size,
                to_global=lambda local: parallel.global_batch(local, batch_sharding),
                hooks=[recent], should_stop=H.TimeLimit(seconds)).run()
    variables = jax.device_get(loop.state.variables)
    stats = {"steps": loop.step, "seconds": time.perf_counter() - t0, "train_loss": recent.mean(20),
             "val_accuracy": evaluate(model, variables, source)}
    return variables, stats


def val_arrays(source: DataSource, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """All validation images (N, H, W, C) float32 (normalised) and labels (N,) int32, without padding rows."""
    xs, ys = [], []
    for batch in source.batches("val", batch_size):
        xs.append(batch["image"][batch["mask"]])
        ys.append(batch["label"][batch["mask"]])
    return np.concatenate(xs), np.concatenate(ys)


def evaluate(model: nn.Module, variables: Any, source: DataSource, batch_size: int = 256) -> float:
    """Top-1 accuracy on the validation split (fraction in [0, 1]), eval mode, with the core's eval step."""
    return evaluate_variables(model, variables, source, batch_size)["val_top1"]


def save_variables(path: str | Path, variables: Any) -> Path:
    """Write ``variables`` (``params``, ``batch_stats``) as an orbax checkpoint in the run directory ``path``
    (``path/checkpoints/0/``), readable by :func:`load_variables`, :func:`cnnjax.checkpoint.restore` and
    ``train.evaluate --init``; variables saved there before are replaced. Returns ``path``."""
    path = Path(path)
    store = checkpoint.CheckpointStore(path / "checkpoints", keep=1, async_save=False)
    try:
        for old in store.steps():
            store.manager.delete(old)
        host = jax.tree.map(np.asarray, {"params": variables["params"],
                                         "batch_stats": variables.get("batch_stats", {}) or {}})
        store.save(0, host, {"source": "cnnjax.analysis.training.save_variables"})
    finally:
        store.close()
    return path


def _read_legacy(path: Path) -> dict:
    if path.suffix == ".npz":
        with np.load(path) as z:
            flat = {k: jnp.asarray(z[k]) for k in z.files}
        return traverse_util.unflatten_dict(flat, sep="/")
    return jax.tree.map(jnp.asarray, serialization.msgpack_restore(path.read_bytes()))


def load_variables(path: str | Path) -> dict:
    """Read a variables dict: an orbax run directory / checkpoint (what :func:`save_variables` and
    ``train.main`` write), or a legacy flax ``.msgpack`` / flat-key ``.npz`` file (or a directory holding
    ``variables.msgpack`` / ``variables.npz``), which is read with a warning saying how to convert it."""
    path = Path(path)
    legacy = path if path.suffix in (".msgpack", ".npz") and path.is_file() else None
    if legacy is None and path.is_dir():
        legacy = next((path / n for n in ("variables.msgpack", "variables.npz") if (path / n).exists()), None)
    if legacy is None:
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return checkpoint.restore(path)
    variables = _read_legacy(legacy)
    warnings.warn(f"{legacy} is in the old .msgpack/.npz format; convert it to the orbax format once with "
                  f"`python -m cnnjax.analyze convert {legacy} NEW_DIR`", stacklevel=2)
    return variables
