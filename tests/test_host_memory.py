"""cnnjax.training.host_memory: compile ahead without compiling twice; glibc's free heap goes back to the system."""

import ctypes
import ctypes.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.training.host_memory import compile_ahead, release_free_heap


def _compiles(fn) -> int:
    """How many XLA compiles (JAX's ``backend_compile`` events) running ``fn()`` takes."""
    events = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(events)


def test_compile_ahead_compiles_once_and_the_call_reuses_it():
    f = jax.jit(lambda x, y: jnp.tanh(x) @ y + x, donate_argnums=0)
    x, y, x_other = jnp.ones((24, 16)), jnp.ones((16, 16)), jnp.ones((12, 16))
    assert _compiles(lambda: compile_ahead(f, x, y)) == 1
    assert not x.is_deleted()  # only looked at: donation happens at the real call
    assert _compiles(lambda: f(x, y).block_until_ready()) == 0
    # the negative case: a new shape does compile, so the counter sees compiles
    assert _compiles(lambda: f(x_other, y).block_until_ready()) == 1
    np.testing.assert_allclose(np.asarray(f(jnp.ones((24, 16)), y)), np.tanh(1.0) * 16 + 1.0, rtol=1e-6)


def test_compile_ahead_leaves_a_plain_function_alone():
    calls = []
    assert compile_ahead(lambda x: calls.append(x), 1.0) is False
    assert calls == []


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not release_free_heap(), reason="not glibc: malloc_trim is a no-op")
def test_release_free_heap_returns_freed_small_blocks_to_the_system():
    """64 MiB in 16 KiB blocks from glibc's malloc (below its mmap threshold: heap memory, like LLVM's), touched,
    then freed except the last block, which pins the heap's top so glibc cannot shrink it by itself: the freed
    pages stay resident until ``release_free_heap``. The negative case: freeing alone gives back (almost)
    nothing."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 16 * 1024, 4096
    release_free_heap()
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    touched = _rss_kib()
    for b in blocks[:-1]:
        libc.free(b)
    freed = _rss_kib()
    release_free_heap()
    released = _rss_kib()
    libc.free(blocks[-1])
    total = size * n // 1024
    assert touched - freed < total // 4, (touched, freed)  # freeing alone keeps the pages
    assert freed - released > total // 2, (freed, released)  # the release gives most of the 64 MiB back
