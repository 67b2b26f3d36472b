"""Checkpoints of training runs with orbax: atomic, asynchronous, with a fallback past a corrupt latest one.

A run directory ``WORKDIR`` holds ``WORKDIR/checkpoints/<step>/`` written by :class:`CheckpointStore`; each
checkpoint has two items: ``state`` (a pytree: ``params``, ``batch_stats``, ``opt_state``, ``step``, ``rng``)
and ``meta`` (JSON: data position, epoch accumulators). orbax writes into a temporary directory and renames it
when complete, so a run killed at any moment (SIGKILL included) leaves only complete checkpoints visible.

For research use, :func:`restore` returns ``{'params': ..., 'batch_stats': ...}`` from a run directory.
"""

from __future__ import annotations

import logging
import os
import pathlib
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def checkpoint_dir(path: str | os.PathLike) -> pathlib.Path:
    """The orbax directory of a run: ``path/checkpoints`` if it exists (a run directory), else ``path``."""
    path = pathlib.Path(path).absolute()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


class CheckpointStore:
    """Numbered checkpoints of a training state in ``directory`` (keeps the newest ``keep``)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        # read_only: never create, delete or clean anything (orbax's own read_only flag only logs warnings here)
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (a pytree of arrays) and ``meta`` (JSON-able) as checkpoint ``step`` (asynchronously)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, target: Any = None, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore ``(state, meta, step)``: the given step, or the newest one that reads back completely.

        ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings) giving structure, dtypes
        and placement; ``None`` restores plain nested dicts on this process's first device. A corrupt or
        partial checkpoint is skipped with a warning (only when ``step`` is not given). Raises
        ``FileNotFoundError`` when there is none.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors = []
        for s in candidates:
            try:
                abstract = target if target is not None else self._local_target(s)
                state_args = ocp.args.StandardRestore(abstract)
                out = self.manager.restore(s, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
                if errors:
                    warnings.warn(f"checkpoint(s) {', '.join(str(e[0]) for e in errors)} in {self.directory} could "
                                  f"not be read ({errors[0][1]}); using step {s}", stacklevel=2)
                return out["state"], dict(out["meta"] or {}), s
            except Exception as err:  # noqa: BLE001 - any read failure means this checkpoint is unusable
                if step is not None:
                    raise
                errors.append((s, f"{type(err).__name__}: {err}"[:300]))
        raise FileNotFoundError(f"no readable checkpoint in {self.directory}: {errors}")

    def _local_target(self, step: int) -> Any:
        """Restore target from the checkpoint's own metadata: every array on this process's first device, so a
        checkpoint written on any topology (8 devices, several hosts) reads back here."""
        meta = self.manager.item_metadata(step)["state"]
        if meta is None:
            raise ValueError(f"checkpoint {step} has no readable state metadata")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore(path: str | os.PathLike, step: int | None = None) -> dict:
    """Variables ``{'params': ..., 'batch_stats': ...}`` of the newest (or ``step``) checkpoint of a run
    directory (or its ``checkpoints/`` folder), as nested dicts of arrays on the default device."""
    store = CheckpointStore(checkpoint_dir(path), read_only=True, async_save=False)
    try:
        state, _, _ = store.restore(step=step)
    finally:
        store.close()
    return {"params": state["params"], "batch_stats": state.get("batch_stats", {}) or {}}


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (with sharding) for each array of ``tree``: a restore target."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
                        tree)
