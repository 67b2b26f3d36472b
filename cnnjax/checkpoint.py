"""Checkpoints of training runs with orbax: atomic, asynchronous, with a fallback past a corrupt latest one.

A run directory ``WORKDIR`` holds ``WORKDIR/checkpoints/<step>/`` written by :class:`CheckpointStore`; each
checkpoint has two items: ``state`` (a pytree: ``params``, ``batch_stats``, ``opt_state``, ``step``, ``rng``)
and ``meta`` (JSON: data position, epoch accumulators). orbax writes into a temporary directory and renames it
when complete, so a run killed at any moment (SIGKILL included) leaves only complete checkpoints visible.

A failed write (disk full, I/O error) raises :class:`StorageError` from :meth:`CheckpointStore.save` or
:meth:`CheckpointStore.wait` — the earlier checkpoints stay complete and restorable — and half-written step
directories left by a killed process are ignored by :meth:`CheckpointStore.steps` and deleted when a store is
opened for writing.

For research use, :func:`restore` returns ``{'params': ..., 'batch_stats': ...}`` from a run directory.

Testing aid: ``CNNJAX_TEST_CHECKPOINT_DELAY=SECONDS`` makes every asynchronous write sleep that long inside the
write (after the temporary directory exists, before it is committed), to widen that window for fault-injection
tests.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def run_config(path: str | os.PathLike) -> tuple[pathlib.Path, dict] | None:
    """``(run directory, its config.json)`` for a ``train.main`` run directory or a checkpoint folder up to three
    levels below it; None when there is none or it is not JSON."""
    import json

    path = pathlib.Path(path).resolve()
    for folder in (path, *path.parents[:3]):
        if (folder / "config.json").is_file():
            try:
                return folder, json.loads((folder / "config.json").read_text())
            except ValueError:
                return None
    return None


def checkpoint_dir(path: str | os.PathLike) -> pathlib.Path:
    """The orbax directory of a run: ``path/checkpoints`` if it exists (a run directory), else ``path``."""
    path = pathlib.Path(path).absolute()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


class StorageError(OSError):
    """The run directory cannot be written: unwritable, full, or a checkpoint write failed."""


class _DelayedJsonHandler(ocp.JsonCheckpointHandler):
    """The ``meta`` item's handler, sleeping ``CNNJAX_TEST_CHECKPOINT_DELAY`` seconds inside the write."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    async def _save_fn(self, x, directory):  # runs in orbax's background commit thread
        time.sleep(self.delay)
        await super()._save_fn(x, directory)


@ocp.args.register_with_handler(_DelayedJsonHandler, for_save=True)
class _DelayedJsonSave(ocp.args.JsonSave):
    pass


@ocp.args.register_with_handler(_DelayedJsonHandler, for_restore=True)
class _DelayedJsonRestore(ocp.args.JsonRestore):
    pass


class CheckpointStore:
    """Numbered checkpoints of a training state in ``directory`` (keeps the newest ``keep``)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self.read_only = read_only
        # read_only: never create, delete or clean anything (orbax's own read_only flag only logs warnings here)
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=not read_only)
        delay = float(os.environ.get("CNNJAX_TEST_CHECKPOINT_DELAY", "0") or 0)
        delayed = delay > 0 and async_save and not read_only
        meta_handler = _DelayedJsonHandler(delay) if delayed else ocp.JsonCheckpointHandler()
        self._json_save = _DelayedJsonSave if delayed else ocp.args.JsonSave
        self._json_restore = _DelayedJsonRestore if delayed else ocp.args.JsonRestore
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": meta_handler})

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (a pytree of arrays) and ``meta`` (JSON-able) as checkpoint ``step`` (asynchronously).

        Raises :class:`StorageError` if this write cannot start or the previous asynchronous one failed (orbax
        waits for the previous write before starting the next one anyway)."""
        self.wait()
        self._requested = step
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=self._json_save(meta)), force=True)
        except Exception as err:  # noqa: BLE001 - orbax wraps OS errors in several types
            raise self._storage_error(step, err) from None

    def _storage_error(self, step: int, err: BaseException) -> StorageError:
        try:
            good = self.steps()
        except Exception:  # noqa: BLE001
            good = "?"
        return StorageError(f"writing checkpoint {step} to {self.directory} failed ({type(err).__name__}: "
                            f"{str(err)[:200]}); the last good checkpoints are kept (steps {good})")

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
                out = self.manager.restore(s, args=ocp.args.Composite(state=state_args, meta=self._json_restore()))
                if errors:
                    warnings.warn(f"checkpoint(s) {', '.join(str(e[0]) for e in errors)} in {self.directory} could "
                                  f"not be read ({errors[0][1]}); using step {s}"
                                  + ("" if self.read_only else "; the unreadable ones are deleted"), stacklevel=2)
                    if not self.read_only:  # so that training past them can write those steps again
                        for bad, _ in errors:
                            self.manager.delete(bad)
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
        """Block until asynchronous saves are on disk; :class:`StorageError` if one failed."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as err:  # noqa: BLE001
            raise self._storage_error(getattr(self, "_requested", -1), err) from None

    def close(self, raise_errors: bool = True) -> None:
        """Wait for pending writes and release orbax's threads. With ``raise_errors=False`` (closing on an
        error path) a failed write is only logged, so the original error is the one reported."""
        try:
            self.wait()
        except StorageError as err:
            if raise_errors:
                self._close_manager()
                raise
            log.warning("a pending checkpoint write failed while closing: %s", err)
        self._close_manager(quiet=not raise_errors)

    def _close_manager(self, quiet: bool = True) -> None:
        try:
            self.manager.close()
        except Exception as err:  # noqa: BLE001 - e.g. a barrier with a process that is gone
            if not quiet:
                raise
            log.warning("closing the checkpoint manager failed: %s", err)


def restore(path: str | os.PathLike, step: int | None = None, ema: bool = False) -> dict:
    """Variables ``{'params': ..., 'batch_stats': ...}`` of the newest (or ``step``) checkpoint of a run
    directory (or its ``checkpoints/`` folder), as nested dicts of arrays on the default device; ``ema=True``:
    the run's exponential moving average of them (a run trained with ``--ema-decay``; ``ValueError`` if
    there is none)."""
    store = CheckpointStore(checkpoint_dir(path), read_only=True, async_save=False)
    try:
        state, _, s = store.restore(step=step)
    finally:
        store.close()
    if ema:
        if not state.get("ema"):
            raise ValueError(f"checkpoint {s} in {path} holds no EMA weights (the run was trained without "
                             "--ema-decay); drop --use-ema")
        state = state["ema"]
    return {"params": state["params"], "batch_stats": state.get("batch_stats", {}) or {}}


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (with sharding) for each array of ``tree``: a restore target."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
                        tree)
