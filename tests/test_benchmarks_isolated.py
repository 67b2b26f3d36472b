"""``benchmarks/isolated.py``: a trainer built and stepped in its own process."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # a child process imports JAX and compiles a LeNet step (~10 s)
def test_isolated_trainer_steps_in_a_child_and_reports_failures():
    from benchmarks.compare_torchvision import alternate
    from benchmarks.isolated import Isolated

    fields = {"arch": "lenet5", "batch_size": 4, "image_size": 32, "zero_init_residual": "off"}
    child = Isolated({"kind": "cnnjax", "cfg": fields})
    try:
        assert child.first_step_s > 0 and child.proc.pid > 0
        times = alternate({"a": child}, warmup=1, repeats=2)
        assert len(times["a"]) == 2 and all(t > 0 for t in times["a"])
    finally:
        child.close()
    assert child.proc.returncode == 0
    with pytest.raises(RuntimeError, match="failed to build"):  # a bad spec: the parent gets an error, not a hang
        Isolated({"kind": "cnnjax", "cfg": {"arch": "no_such_arch"}})
