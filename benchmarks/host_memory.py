"""What :func:`cnnjax.training.host_memory.compile_ahead`'s release of the compiler's freed heap buys: the ResNet-50
train step with and without it, one fresh process per case, alternating.

    python -m benchmarks.host_memory --batch 16 --steps 10 --rounds 3

Each child builds ``train.benchmark.BenchmarkStep`` (which compiles ahead and releases the free heap) — with
``--no-release`` the release is a no-op — and reports ``VmHWM`` (peak resident memory, MiB) after the first step
and at the end, XLA's own buffer sizes for the step (``compiled.memory_analysis()``: the temp block, the
arguments) and the steady step times. The parent prints one row per child and the median step per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def child(batch: int, steps: int, release: bool) -> dict:
    from cnnjax.training import host_memory
    from train.benchmark import BenchmarkStep
    from train.config import TrainConfig

    if not release:
        host_memory.release_free_heap = lambda: False  # compile_ahead looks it up at call time
    step = BenchmarkStep(TrainConfig(arch="resnet50", batch_size=batch, image_size=224, zero_init_residual="off"))
    first = _hwm_mib()
    mem = step.step_fn.lower(step.state, step.batch).compile().memory_analysis()  # the executable is cached
    times = [step() for _ in range(steps)]
    return {"release": release, "batch": batch, "hwm_after_first_step_mib": round(first),
            "hwm_end_mib": round(_hwm_mib()), "xla_temp_mib": round(mem.temp_size_in_bytes / 2**20),
            "xla_arguments_mib": round(mem.argument_size_in_bytes / 2**20), "step_s": [round(t, 3) for t in times]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=("release", "no-release"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.batch, args.steps, args.child == "release")))
        return
    rows = []
    for _ in range(args.rounds):
        for case in ("no-release", "release"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.host_memory", "--child", case, "--batch",
                                  str(args.batch), "--steps", str(args.steps)], check=True, capture_output=True,
                                 text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nresnet50 fp32 224x224, batch {args.batch}; MiB, steady step medians in s\n")
    print("| case | peak RSS (VmHWM) | XLA temp | XLA arguments | median step |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {'release' if r['release'] else 'no release'} | {r['hwm_end_mib']} | {r['xla_temp_mib']} | "
              f"{r['xla_arguments_mib']} | {statistics.median(r['step_s']):.2f} |")


if __name__ == "__main__":
    main()
