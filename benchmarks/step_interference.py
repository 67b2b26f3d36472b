"""Does a torchvision step slow the next cnnjax step in the same process? Step times and minor page faults.

    python -m benchmarks.step_interference [--batch 16] [--no-torch]

One process builds the cnnjax ResNet-50 train step (``train.benchmark.BenchmarkStep``, the CLI's defaults, fp32,
224x224) and the torchvision one (``benchmarks.torch_step.TorchStep``), warms both up, then times: cnnjax alone
(3 steps), cnnjax each right after a torch step and a 0.1 s pause (3), cnnjax alone again (3), then torch alone
(4). Each line gives the step times and the minor page faults per step (``getrusage``: fresh pages the kernel
mapped). ``--no-torch`` builds only the cnnjax step (e.g. to try ``MALLOC_*`` glibc tunables on it).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch  # before anything that could import TensorFlow (see tests/conftest.py)

from benchmarks.isolated import cnnjax_trainer, torch_trainer


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(step, n: int, before=None) -> tuple[list[float], list[int]]:
    """``n`` steps of ``step`` (each after ``before()`` and a 0.1 s pause, if given): seconds and faults."""
    times, faults = [], []
    for _ in range(n):
        if before is not None:
            before()
            time.sleep(0.1)
        f = _faults()
        times.append(step())
        faults.append(_faults() - f)
        time.sleep(0.1)
    return times, faults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ours = cnnjax_trainer({"arch": "resnet50", "batch_size": args.batch, "image_size": 224,
                           "zero_init_residual": "off"})
    theirs = None if args.no_torch else torch_trainer(["resnet50", args.batch, 224, "fp32", "cpu", False])
    for step in (ours, theirs):
        if step is not None:
            step(), step()
    phases = [("cnnjax alone", ours, None)]
    if theirs is not None:
        phases += [("cnnjax after torch", ours, theirs), ("cnnjax alone", ours, None), ("torch alone", theirs, None)]
    for name, step, before in phases:
        times, faults = timed(step, 4 if name == "torch alone" else 3, before)
        print(f"{name}: step s {[round(t, 2) for t in times]}, minor faults/step {faults}", flush=True)


if __name__ == "__main__":
    main()
