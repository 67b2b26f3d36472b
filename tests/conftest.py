"""Shared test settings: small hypothesis budgets, float32 on CPU."""

import os

os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hypothesis import HealthCheck, settings  # noqa: E402

# torchvision must be imported before TensorFlow in one process: importing it after TensorFlow segfaults while
# loading triton (torch._dynamo -> triton's native library clashes with TensorFlow's). The library itself never
# imports torchvision; the parity tests and TF data tests share this pytest process, so settle the order here.
try:  # noqa: SIM105
    import torchvision.models  # noqa: E402, F401
except ImportError:  # torch is an optional extra: parity tests skip without it
    pass

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")
