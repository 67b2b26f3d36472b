"""A trainer in its own process, stepped from the parent: ``Isolated(spec)()`` runs one step there and returns its
seconds, so :func:`benchmarks.compare_torchvision.alternate` can alternate trainers that share nothing.

Why: in one process, the cnnjax ResNet-50 step ran 1.3-1.5x slower right after torchvision's steps than on its
own (BENCHMARKS.md, session 13), for reasons not found (not page faults, not OpenMP spinning alone). Alternating
*processes* keeps what alternation is for (every trainer sees the same machine load) without that interference:
each child imports only its framework (the cnnjax child never imports torch, the torchvision child never JAX)
and blocks on its pipe while the other one runs.

Specs: ``{"kind": "cnnjax", "cfg": {TrainConfig fields}}`` (``train.benchmark.BenchmarkStep``) or
``{"kind": "torchvision", "args": [arch, batch_size, image_size, precision, device, compile]}``
(``benchmarks.torch_step.TorchStep``). Protocol: the child prints ``ready <first_step_s>`` once built, then
answers each ``step`` line with the step's seconds; its own output goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


class Isolated:
    """A stepper built and run in a child process (``python -m benchmarks.isolated SPEC``)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.isolated", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            self.close()
            raise RuntimeError(f"the {spec['kind']} child failed to build its trainer (see its stderr above)")
        self.first_step_s = float(line[1])

    def __call__(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the {self.spec['kind']} child exited (see its stderr above)")
        return float(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


def cnnjax_trainer(fields: dict, isolate: bool = False):
    """``BenchmarkStep(TrainConfig(**fields))`` here, or the same in a child process when ``isolate``."""
    spec = {"kind": "cnnjax", "cfg": fields}
    return Isolated(spec) if isolate else _build(spec)


def torch_trainer(args: list, isolate: bool = False):
    """``TorchStep(*args)`` here, or the same in a child process when ``isolate``."""
    spec = {"kind": "torchvision", "args": args}
    return Isolated(spec) if isolate else _build(spec)


def _build(spec: dict):
    """The stepper of ``spec``, built in this process (torch: on every CPU thread)."""
    if spec["kind"] == "torchvision":
        import torch

        from benchmarks.torch_step import TorchStep

        torch.set_num_threads(os.cpu_count() or 1)
        return TorchStep(*spec["args"])
    if spec["kind"] == "cnnjax":
        from train.benchmark import BenchmarkStep
        from train.config import TrainConfig

        return BenchmarkStep(TrainConfig(**spec["cfg"]))
    raise ValueError(f"unknown trainer kind {spec['kind']!r}; valid: cnnjax, torchvision")


def serve(spec: dict) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # everything else the child prints goes to stderr
    step = _build(spec)
    first = step.first_step_s if hasattr(step, "first_step_s") else step()  # torch: its first step, timed here
    protocol.write(f"ready {first}\n")
    for line in sys.stdin:
        if line.strip() == "step":
            protocol.write(f"{step()}\n")


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
