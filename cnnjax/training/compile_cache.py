"""JAX's persistent compilation cache: a rerun of the same model, shapes and flags skips XLA's compile.

The CLI (``train.main``) turns it on by default (``--compile-cache auto``; ``--no-compile-cache`` turns it off);
the library leaves JAX's settings alone unless asked. The folder is, in order: the ``path`` given,
``$JAX_COMPILATION_CACHE_DIR`` (JAX's own variable, also what the tests set), ``$CNNJAX_CACHE/jax``, or
``~/.cache/cnnjax/jax``. A cache hit skips only the XLA compile: tracing and lowering still run, and the program
is the one compiled before for the same HLO, jax/jaxlib version, device and flags (JAX's cache key), so results
are bit-identical to a cold run's. Entries are written atomically by JAX; a damaged entry is recompiled.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

import jax

#: The ``jax.config`` keys this module sets.
KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")


def default_dir() -> pathlib.Path:
    """Where ``auto`` caches: ``$JAX_COMPILATION_CACHE_DIR``, ``$CNNJAX_CACHE/jax`` or ``~/.cache/cnnjax/jax``."""
    if jax.config.jax_compilation_cache_dir:
        return pathlib.Path(jax.config.jax_compilation_cache_dir)
    root = os.environ.get("CNNJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cnnjax")
    return pathlib.Path(root) / "jax"


def _set_dir(folder: str | None) -> None:
    """Point JAX at ``folder``; JAX opens its cache once per process, so a change resets it first."""
    if jax.config.jax_compilation_cache_dir != folder:
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", folder)


def configure(path: str | os.PathLike | None = "auto", min_compile_time_s: float | None = None) -> pathlib.Path | None:
    """Cache compiled programs in ``path`` (``"auto"``: :func:`default_dir`; ``None`` or ``"off"``: no cache).

    ``min_compile_time_s``: programs that compiled faster are not written (JAX's default, 1 s, unless given;
    0 caches everything). Returns the folder, or ``None`` when off. A folder that cannot be created turns the
    cache off with a warning rather than failing the run.
    """
    if path is None or str(path) == "off":
        _set_dir(None)
        return None
    folder = default_dir() if str(path) == "auto" else pathlib.Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        import warnings

        warnings.warn(f"compilation cache off: cannot create {folder} ({err})", stacklevel=2)
        _set_dir(None)
        return None
    _set_dir(str(folder))
    if min_compile_time_s is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


@contextlib.contextmanager
def enabled(path: str | os.PathLike, min_compile_time_s: float = 0.0) -> Iterator[pathlib.Path | None]:
    """:func:`configure` for the duration of a ``with`` block; JAX's previous settings are restored after."""
    old = {k: getattr(jax.config, k) for k in KEYS}
    try:
        yield configure(path, min_compile_time_s)
    finally:
        _set_dir(old.pop(KEYS[0]))
        for k, v in old.items():
            jax.config.update(k, v)
