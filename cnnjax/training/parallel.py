"""Devices and hosts: JAX's own multi-host runtime, a 1-D ``data`` mesh, and batch placement.

Data parallelism is expressed with ``jax.jit`` and ``NamedSharding`` (no ``pmap``): parameters are replicated,
the batch is split over the ``data`` axis; inside the step, means over the batch (losses, BatchNorm statistics)
are global. Each process passes only its local rows (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> None:
    """Start JAX's multi-host runtime: explicit (coordinator, count, id) or auto-detected (TPU pods, SLURM...).

    On CPU the cross-process collectives use gloo.
    """
    if coordinator is None and not auto:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)


def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis name ``data``."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """``(replicated, batch)`` shardings on ``mesh``."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def global_batch(local: dict[str, np.ndarray], batch_sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble this process's rows into global arrays sharded over ``data``."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}


def check_batch_size(global_batch_size: int) -> None:
    """The global batch must split evenly over devices and processes (clear error before any compile)."""
    n_dev, n_proc = jax.device_count(), jax.process_count()
    if global_batch_size % n_dev or global_batch_size % n_proc:
        raise ValueError(f"--batch-size {global_batch_size} must be divisible by the {n_dev} device(s) "
                         f"and {n_proc} process(es)")
