"""``impl='auto'``: pick the fastest convolution algorithm per layer by measurement, like ``cudnn.benchmark``.

The first time a convolution configuration is traced — the key is (input shape, kernel shape, dtype, stride,
padding, dilation, groups, precision, backend and device kind) — every applicable algorithm of
:data:`ALGORITHMS` is compiled and its forward + backward pass (output, input gradient, kernel gradient) is
timed on random data of those shapes; the fastest wins. Winners are kept in memory and in a JSON file that later
runs (and other processes) reuse, so a configuration is measured once per machine.

* Cache file: ``$CNNJAX_AUTOTUNE_CACHE`` if set, else ``$CNNJAX_CACHE/autotune.json``, else
  ``~/.cache/cnnjax/autotune.json``. Written atomically (temporary file + rename), merged with what is there.
* Modes (``$CNNJAX_AUTOTUNE`` or :func:`configure`): ``benchmark`` (default: measure, use the cache) and
  ``deterministic`` (no timing, no cache: the fixed per-shape rule of :func:`fixed_choice`, so every machine
  and run computes the same algorithms and results are reproducible bit for bit).
* The tuning runs eagerly even when ``conv2d`` is being traced inside ``jax.jit`` (it escapes the trace with
  ``jax.ensure_compile_time_eval``); its cost is a compile of each candidate, paid once per configuration.
  Shapes are the traced ones: under a data-sharded ``jit`` that is the global batch, timed on one device.
* Not tuned: traces inside :func:`shape_only` (input-size checks, batch-1 initialisation) and runs with several
  processes (each could choose differently); both use :func:`fixed_choice`. The cache key includes
  :data:`ALGORITHMS_VERSION` and the JAX version, so measurements of older code are not reused.
* ``impl='fast'`` (the default of every layer) is the fixed rule :func:`fixed_choice`; ``$CNNJAX_FAST_IMPL``
  (or ``configure(fast_impl=...)``) set to one algorithm name makes ``fast`` stand for that algorithm everywhere
  in the process (the variable: also in the subprocesses it starts) — :func:`fast_impl`.
* :func:`records` lists what was measured (milliseconds per algorithm and the winner), which
  ``benchmarks/conv_algorithms.py`` prints as a per-layer table.
* The candidates are given, not imported: :func:`choose`, :func:`tune` and :func:`measure` take
  ``candidates={name: algorithm}`` (``conv2d`` passes :data:`cnnjax.ops.conv.CONV_ALGORITHMS`), so this module
  never imports :mod:`cnnjax.ops.conv`. :func:`shape_only` lives in the leaf :mod:`cnnjax.ops.tracing` and is
  re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.ops.tracing import in_shape_only
from cnnjax.ops.tracing import shape_only as shape_only  # re-exported: ``cnnjax.ops.autotune.shape_only``
from cnnjax.ops.winograd import supports_winograd

#: A convolution algorithm: ``f(x, w, stride, padding, dilation, groups, precision, preferred_element_type)`` on
#: NHWC ``x`` (N, H, W, C_in) and HWIO ``w`` (kH, kW, C_in // groups, C_out) -> (N, H', W', C_out), with
#: ``stride``/``dilation`` as pairs and ``padding`` per side ``((top, bottom), (left, right))``.
Algorithm = Callable[..., jax.Array]

#: Algorithms ``auto`` chooses among (each only where :func:`applicable`): the names of
#: :data:`cnnjax.ops.conv.CONV_ALGORITHMS`, which ``conv2d`` passes as the candidates.
ALGORITHMS = ("xla", "gemm", "winograd", "fft")
MODES = ("benchmark", "deterministic")
#: Part of every cache key: bump when an algorithm's implementation or the candidate set changes, so that old
#: measurements are not reused.
ALGORITHMS_VERSION = 3

_lock = threading.Lock()
_memory: dict[str, dict] = {}
_settings: dict[str, Any] = {"mode": None, "cache_path": None, "repeats": 3, "fast_impl": None}
#: What ``impl='fast'`` may stand for (:func:`fast_impl`): the per-shape rule, or one algorithm everywhere.
FAST_IMPLS = ("rule", *ALGORITHMS)


def configure(mode: str | None = None, cache_path: str | os.PathLike | None = None,
              repeats: int | None = None, fast_impl: str | None = None) -> dict:
    """Set the mode (``benchmark``/``deterministic``), the JSON cache path, the timed runs per candidate
    (the median is used) and what ``impl='fast'`` stands for (:data:`FAST_IMPLS`; over ``$CNNJAX_FAST_IMPL``).
    ``None`` leaves a setting as it is. Returns the previous settings."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown autotune mode {mode!r}; valid choices: {', '.join(MODES)}")
    if fast_impl is not None and fast_impl not in FAST_IMPLS:
        raise ValueError(f"unknown fast_impl {fast_impl!r}; valid choices: {', '.join(FAST_IMPLS)}")
    old = dict(_settings)
    if fast_impl is not None:
        _settings["fast_impl"] = fast_impl
    if mode is not None:
        _settings["mode"] = mode
    if cache_path is not None:
        _settings["cache_path"] = str(cache_path)
    if repeats is not None:
        _settings["repeats"] = max(1, int(repeats))
    return old


@contextlib.contextmanager
def settings(**kwargs) -> Iterator[None]:
    """``with settings(mode='deterministic'): ...`` — :func:`configure` for a block."""
    old = configure(**kwargs)
    try:
        yield
    finally:
        _settings.update(old)


def mode() -> str:
    m = _settings["mode"] or os.environ.get("CNNJAX_AUTOTUNE", "benchmark")
    if m not in MODES:
        raise ValueError(f"CNNJAX_AUTOTUNE={m!r}; valid choices: {', '.join(MODES)}")
    return m


def cache_path() -> pathlib.Path:
    if _settings["cache_path"]:
        return pathlib.Path(_settings["cache_path"])
    if os.environ.get("CNNJAX_AUTOTUNE_CACHE"):
        return pathlib.Path(os.environ["CNNJAX_AUTOTUNE_CACHE"])
    root = os.environ.get("CNNJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cnnjax")
    return pathlib.Path(root) / "autotune.json"


def clear_memory() -> None:
    """Forget the in-memory winners (the JSON file is kept)."""
    with _lock:
        _memory.clear()


def applicable(impl: str, kernel_hw: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
               groups: int) -> bool:
    """Whether ``impl`` is worth timing for this configuration (``xla`` and ``gemm`` always are)."""
    if impl in ("xla", "gemm"):
        return True
    if impl == "winograd":
        return supports_winograd(kernel_hw, stride, dilation, groups)
    if impl == "fft":  # 1x1 is a plain product; strided FFT convs compute every output and subsample: never faster
        return max(kernel_hw) > 1 and tuple(stride) == (1, 1)
    raise ValueError(f"unknown algorithm {impl!r}; valid choices: {', '.join(ALGORITHMS)}")


#: ``fast`` uses Winograd and im2col products for k x k convolutions only from this many input and output
#: channels: their saving grows with C_in * C_out while their extra operations (slices per tile, forward and
#: backward) add compile time (a CIFAR ResNet-20 train step at 16-64 channels compiled 2-3x longer with
#: Winograd and products on every 3x3 layer).
WIDE_CHANNELS = 64
#: ``fast`` computes convolutions with fewer input channels than this (stems) as one im2col product.
GEMM_MAX_STEM_CHANNELS = 8


def fixed_choice(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int, backend: str | None = None,
                 *, stride: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1),
                 dtype: Any = jnp.float32) -> str:
    """The deterministic rule (also ``impl='fast'``, the default of every layer and model): close to what ``auto``
    measured on a CPU (BENCHMARKS.md, per-layer table of ResNet-50) without measuring, and without the compile
    time of an algorithm where it gains little.

    On CPU: ``gemm`` (matrix products) for 1x1 convolutions, depthwise ones (a shifted multiply-add), feature
    maps of at most 4x4 (where XLA's CPU convolution is pathologically slow) and convolutions of fewer than
    :data:`GEMM_MAX_STEM_CHANNELS` input channels (stems on RGB or grey images: 1.5-3x faster); in float32,
    for ungrouped convolutions with at least :data:`WIDE_CHANNELS` input and output channels, ``winograd``
    F(4x4, 3x3) for 3x3 stride-1 undilated ones on maps of at least 14x14 (1.7-2x faster than ``lax.conv``)
    and ``gemm`` for the others (strided, small maps: 1.1-1.6x); ``xla`` otherwise (also grouped convolutions
    and bf16/fp16 3x3 layers, where XLA won). On GPU/TPU always ``xla`` (cuDNN / the TPU convolution units)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "xla"
    depthwise = groups > 1 and w_shape[2] == 1 and w_shape[3] == groups
    if ((w_shape[0] == w_shape[1] == 1 or w_shape[2] < GEMM_MAX_STEM_CHANNELS) and groups == 1) or depthwise \
            or max(x_shape[1:3]) <= 4:
        return "gemm"
    if groups == 1 and jnp.dtype(dtype) == jnp.float32 and min(w_shape[2:]) >= WIDE_CHANNELS:
        winograd = supports_winograd(tuple(w_shape[:2]), stride, dilation, groups) and min(x_shape[1:3]) >= 14
        return "winograd" if winograd else "gemm"
    return "xla"


#: The environment variable that overrides what ``impl='fast'`` stands for (:func:`fast_impl`).
FAST_IMPL_ENV = "CNNJAX_FAST_IMPL"


def fast_impl(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int, *, stride: tuple[int, int] = (1, 1),
              dilation: tuple[int, int] = (1, 1), dtype: Any = jnp.float32) -> str:
    """The algorithm ``impl='fast'`` runs for this convolution: :func:`fixed_choice` (``rule``, the default),
    or the one algorithm of :data:`ALGORITHMS` that ``configure(fast_impl=...)`` or else ``$CNNJAX_FAST_IMPL``
    names. That is for whole runs that should not use the rule: ``xla`` computes every default layer as one
    ``lax.conv``. The test suite sets it (tests/conftest.py) to spare its tiny models the compile time of the
    products and Winograd transforms; the algorithm tests check those against ``lax.conv`` under the rule."""
    choice = _settings["fast_impl"] or os.environ.get(FAST_IMPL_ENV) or "rule"
    if choice == "rule":
        return fixed_choice(x_shape, w_shape, groups, stride=stride, dilation=dilation, dtype=dtype)
    if choice not in ALGORITHMS:
        raise ValueError(f"{FAST_IMPL_ENV}={choice!r}; valid choices: {', '.join(FAST_IMPLS)}")
    return choice  # every algorithm computes every configuration (winograd falls back to gemm where it cannot)


def config_key(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision, preferred) -> str:
    dev = jax.devices()[0]
    return json.dumps({"version": ALGORITHMS_VERSION, "jax": jax.__version__,
                       "x": list(x_shape), "w": list(w_shape), "dtype": str(jnp.dtype(dtype)),
                       "stride": list(stride), "padding": [list(p) for p in padding], "dilation": list(dilation),
                       "groups": groups, "precision": str(precision),
                       "preferred": None if preferred is None else str(jnp.dtype(preferred)),
                       "backend": jax.default_backend(), "device": dev.device_kind}, sort_keys=True)


def _load_file() -> dict[str, dict]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable cache is only a cache: measure again and rewrite it
    return data.get("entries", {}) if isinstance(data, dict) else {}


def _save_entry(key: str, record: dict) -> None:
    """Merge ``record`` into the JSON file atomically; a cache that cannot be written only costs a warning."""
    path = cache_path()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _load_file()
        entries[key] = record
        fd, tmp = tempfile.mkstemp(prefix=".autotune-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(f"autotune: cannot write the cache {path} ({err}); choices are kept in memory only",
                      RuntimeWarning, stacklevel=2)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _time_candidate(algorithm: Algorithm, x, w, cot, args: tuple, repeats: int) -> tuple[float, float]:
    """(compile seconds, median seconds of one forward + backward of ``algorithm(x, w, *args)``)."""

    def fwd_bwd(x, w, cot):
        y, vjp = jax.vjp(lambda x, w: algorithm(x, w, *args), x, w)
        return (y, *vjp(cot))

    t0 = time.perf_counter()
    compiled = jax.jit(fwd_bwd).lower(x, w, cot).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(x, w, cot))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(x, w, cot))
        times.append(time.perf_counter() - t)
    return compile_s, float(np.median(times))


def measure(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision=None, preferred=None, *,
            candidates: Mapping[str, Algorithm]) -> dict:
    """Time every applicable candidate; ``{'impl': winner, 'ms': {impl: ms}, 'compile_s': {...}}``.

    ``candidates``: ``{name: algorithm}`` (names from :data:`ALGORITHMS`), timed in that order; ``stride`` and
    ``dilation`` are pairs, ``padding`` is per side. The reference output shape is ``xla``'s (else the first
    candidate's).
    """
    if not candidates:
        raise ValueError("autotune.measure needs candidates={name: algorithm}, e.g. cnnjax.ops.CONV_ALGORITHMS")
    args = (stride, padding, dilation, groups, precision, preferred)
    reference = candidates["xla"] if "xla" in candidates else next(iter(candidates.values()))
    with jax.ensure_compile_time_eval():
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(x_shape, dtype=np.float32), dtype)
        w = jnp.asarray(rng.standard_normal(w_shape, dtype=np.float32) * 0.1, dtype)
        out = jax.eval_shape(lambda x, w: reference(x, w, *args), x, w)
        cot = jnp.asarray(rng.standard_normal(out.shape, dtype=np.float32), out.dtype)
        ms, compile_s = {}, {}
        for impl, algorithm in candidates.items():
            if not applicable(impl, tuple(w_shape[:2]), stride, dilation, groups):
                continue
            try:
                c, t = _time_candidate(algorithm, x, w, cot, args, _settings["repeats"])
            except Exception as err:  # noqa: BLE001  (a candidate that fails to compile just does not compete)
                ms[impl] = None
                compile_s[impl] = repr(err)[:200]
                continue
            ms[impl], compile_s[impl] = t * 1e3, c
    timed = {k: v for k, v in ms.items() if v is not None}
    return {"impl": min(timed, key=timed.get), "ms": ms, "compile_s": compile_s, "jax": jax.__version__}


def tune(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision=None, preferred=None, *,
         candidates: Mapping[str, Algorithm] | None = None) -> dict:
    """The record of this configuration — from memory, from the JSON file, or measured now (and saved).

    Measuring times ``candidates`` (see :func:`measure`); without them only a known configuration is answered
    and an unknown one raises ``ValueError``.
    """
    key = config_key(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision, preferred)
    with _lock:
        if key in _memory:
            return _memory[key]
        from_file = _load_file().get(key)
        if from_file is not None and from_file.get("impl") in ALGORITHMS:
            _memory[key] = from_file
            return from_file
        if candidates is None:
            raise ValueError("autotune: this configuration is not measured yet and no candidates were given "
                             "(pass candidates=cnnjax.ops.CONV_ALGORITHMS)")
        record = measure(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision, preferred,
                         candidates=candidates)
        _memory[key] = record
        _save_entry(key, record)
    return record


def choose(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision=None, preferred=None, *,
           candidates: Mapping[str, Algorithm] | None = None) -> str:
    """The algorithm for this configuration: cached, measured now among ``candidates`` (``{name: algorithm}``,
    see :func:`measure`), or (deterministic mode, :func:`shape_only` traces, several processes) the fixed rule."""
    if mode() == "deterministic" or in_shape_only():
        return fixed_choice(x_shape, w_shape, groups, stride=stride, dilation=dilation, dtype=dtype)
    if jax.process_count() > 1:  # processes timing on their own could pick different programs: stay consistent
        if not _warned_multiprocess:
            _warn_multiprocess()
        return fixed_choice(x_shape, w_shape, groups, stride=stride, dilation=dilation, dtype=dtype)
    return tune(x_shape, w_shape, dtype, stride, padding, dilation, groups, precision, preferred,
                candidates=candidates)["impl"]


_warned_multiprocess = False


def _warn_multiprocess() -> None:
    global _warned_multiprocess
    _warned_multiprocess = True
    warnings.warn("conv impl 'auto' with several processes uses the deterministic rule (each process timing on its "
                  "own could choose different algorithms)", RuntimeWarning, stacklevel=3)


def records() -> list[dict]:
    """What this process has chosen: the configuration, per-algorithm milliseconds and the winner."""
    with _lock:
        return [{**json.loads(k), **v} for k, v in _memory.items()]
