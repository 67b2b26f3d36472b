"""Shared test settings: small hypothesis budgets, float32 on CPU, one compilation cache per session."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# JAX's persistent compilation cache, in a fresh folder per test session (nothing of an earlier session or of
# another checkout is reused), shared by this process and every subprocess the tests start (they inherit the
# environment): the subprocess CLI runs compile the same LeNet-5 programs again and again, about 4.5 s of a 9 s
# tiny run on the 2-core CPU, and in-process runs rebuild the same jitted steps. A cache hit skips only XLA's
# compile: tracing, and so every monkeypatched Python function, still runs; the executable is the one compiled
# before. Compiles under 0.5 s (the eager ops of the property tests) are not written. Tests that kill a run while
# it compiles take the variable out of their subprocess's environment (tests/test_reliability.py::_segment).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jit_cache = tempfile.mkdtemp(prefix="cnnjax-test-jit-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jit_cache
    atexit.register(shutil.rmtree, _jit_cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Every layer's default ``conv_impl='fast'`` is one ``lax.conv`` in the tests (and their subprocesses): on CPU the
# rule (cnnjax.ops.autotune.fixed_choice) computes stems, 1x1 and small-map layers as im2col products and wide 3x3
# ones by Winograd, whose extra operations cost compile time (the rule's choice measured 10 of the full suite's 41
# minutes) and no coverage the algorithm tests lack: those check each algorithm, and ``fast`` under the rule
# (``autotune.settings(fast_impl="rule")``), against lax.conv, values and gradients, in tests/test_ops_*.py.
os.environ.setdefault("CNNJAX_FAST_IMPL", "xla")

from hypothesis import HealthCheck, settings  # noqa: E402

# torchvision must be imported before TensorFlow in one process: importing it after TensorFlow segfaults while
# loading triton (torch._dynamo -> triton's native library clashes with TensorFlow's). The library itself never
# imports torchvision; the parity tests and TF data tests share this pytest process, so settle the order here.
try:  # noqa: SIM105
    import torchvision.models  # noqa: E402, F401
except ImportError:  # torch is an optional extra: parity tests skip without it
    pass

# ``ci`` (the default): the same examples on every run (derandomize), so a red CI names a reproducible case rather
# than a random draw (a clean-clone CI once aborted inside XLA on one FFT example no rerun found again);
# ``HYPOTHESIS_PROFILE=explore`` searches new random examples, more of them, to look for such cases on purpose.
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=_HEALTH)
settings.register_profile("explore", max_examples=100, deadline=None, suppress_health_check=_HEALTH)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
