"""Devices and hosts: JAX's own multi-host runtime, a 1-D ``data`` mesh, and batch placement.

Data parallelism is expressed with ``jax.jit`` and ``NamedSharding`` (no ``pmap``): parameters are replicated,
the batch is split over the ``data`` axis; inside the step, means over the batch (losses, BatchNorm statistics)
are global. Each process passes only its local rows (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False,
                           heartbeat_timeout: int | None = None) -> None:
    """Start JAX's multi-host runtime: explicit (coordinator, count, id) or auto-detected (TPU pods, SLURM...).

    On CPU the cross-process collectives use gloo. ``heartbeat_timeout`` (seconds; JAX's default 100) is how
    long JAX's coordination service waits for a silent process before it declares it lost. The runtime is
    started recoverable (``jax_enable_recoverability``), so the service does not abort the survivors with a
    fatal C++ error; :func:`watch_peers` notices the lost process and lets the program exit cleanly.
    """
    if coordinator is None and not auto:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {} if heartbeat_timeout is None else {"heartbeat_timeout_seconds": int(heartbeat_timeout)}
    jax.config.update("jax_enable_recoverability", True)
    if coordinator is None:
        jax.distributed.initialize(**kw)
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, **kw)


#: Set when this process is ending on purpose (done, or an error it reports itself): peers that disconnect
#: from then on are not "lost".
ENDING = threading.Event()


_WATCHDOG: list[threading.Thread] = []


def lost_processes() -> list[int]:
    """Processes of this multi-process run that JAX's coordination service no longer sees alive (they stopped
    sending heartbeats for ``heartbeat_timeout`` seconds, or disconnected); ``[]`` for a single process, on
    processes other than 0 (which host no coordination service; see :func:`watch_peers`) or if unknown."""
    from jax._src import distributed

    client, n = distributed.global_state.client, jax.process_count()
    if client is None or n == 1 or jax.process_index() != 0 or ENDING.is_set() \
            or not hasattr(client, "get_live_nodes"):
        return []
    live = client.get_live_nodes(list(range(n)))  # raises when the service (process 0) is unreachable
    return [] if ENDING.is_set() else sorted(set(range(n)) - set(live))


def watch_peers(on_lost: Callable[[list[int]], None], interval: float = 0.5) -> threading.Thread | None:
    """On process 0 of a multi-process run, a daemon thread asking JAX's coordination service (hosted by
    process 0) every ``interval`` seconds which processes are alive, calling ``on_lost(processes)`` once when
    one is lost (``on_lost`` should end the program, e.g. with ``os._exit``: the main thread may be blocked in a
    collective with the lost process). ``get_live_nodes`` can block until the set of live processes changes,
    so only process 0 watches (the others would otherwise be blocked in it when they exit), and
    :func:`sync_end` joins the thread once the others have disconnected."""
    if jax.process_count() == 1 or jax.process_index() != 0:
        return None

    def run() -> None:
        while not ENDING.is_set():
            try:
                lost = lost_processes()
            except Exception:  # noqa: BLE001 - the service is shutting down
                return
            if lost and not ENDING.is_set():
                on_lost(lost)
                return
            time.sleep(interval)

    thread = threading.Thread(target=run, name="cnnjax-watch-peers", daemon=True)
    thread.start()
    _WATCHDOG[:] = [thread]
    return thread


def sync_end(timeout_s: float = 300.0) -> None:
    """End a multi-process run in order: the peer watchdog stops, every process waits at a barrier, then the
    others disconnect from JAX's coordination service while process 0 (which hosts it) waits for them to be gone
    before it exits. (A recoverable runtime has no shutdown barrier of its own; a process whose coordinator
    vanished first would abort at exit.) Raises the barrier's error after ``timeout_s``."""
    from jax._src import distributed

    ENDING.set()
    client, n = distributed.global_state.client, jax.process_count()
    if client is None or n == 1:
        return
    client.wait_at_barrier("cnnjax_end", int(timeout_s * 1000))
    if jax.process_index() != 0:
        jax.distributed.shutdown()
        return
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if not set(client.get_live_nodes(list(range(n)))) - {0}:
                break
        except Exception:  # noqa: BLE001
            break
        time.sleep(0.05)
    for thread in _WATCHDOG:  # its pending call returned when the others disconnected
        thread.join(timeout=5)


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
