"""Peak resident memory of the ResNet-50 training step: cnnjax vs torchvision, one fresh process per case.

    python -m benchmarks.memory --arch resnet50 --batches 16 64

Each case runs in its own child process (``python -m benchmarks.memory --child FRAMEWORK --batch N``): import the
framework, build the step exactly as ``benchmarks/compare_torchvision.py`` does (cnnjax: ``train.main``'s jitted
step, the CLI's default ``--conv-impl``; torchvision: eager, ``channels_last``, SGD with Nesterov momentum), run
``--steps`` steps. The parent reads the child's peak resident set size from ``os.wait4`` — the number
``/usr/bin/time -v`` prints as "Maximum resident set size" — and the child reports its own high-water mark
(``VmHWM`` in ``/proc/self/status``) after the imports, after the first step (for cnnjax: with the XLA compile)
and at the end, so the table tells the framework's baseline, the compile's peak and the steady step's apart.
Cases run one after another (never two at once) and alternate frameworks. fp32 unless ``--precision bf16``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _hwm_mib() -> float:
    """This process's peak resident memory so far (``VmHWM``), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(framework: str, arch: str, batch: int, image_size: int, precision: str, steps: int) -> dict:
    """Build and run one training step ``steps + 1`` times; the high-water marks along the way, MiB."""
    if framework == "torchvision":
        import torch

        from benchmarks.torch_step import TorchStep
        torch.set_num_threads(os.cpu_count() or 1)
        imported = _hwm_mib()
        step = TorchStep(arch, batch, image_size, precision, "cpu", False)
        step()
    else:
        from train.benchmark import BenchmarkStep
        from train.config import TrainConfig
        imported = _hwm_mib()
        step = BenchmarkStep(TrainConfig(arch=arch, batch_size=batch, image_size=image_size, precision=precision,
                                         zero_init_residual="off"))  # the constructor runs the first step
    first = _hwm_mib()
    times = [step() for _ in range(steps)]
    return {"framework": framework, "arch": arch, "batch_size": batch, "image_size": image_size,
            "precision": precision, "hwm_after_import_mib": imported, "hwm_after_first_step_mib": first,
            "hwm_end_mib": _hwm_mib(), "step_s": times}


def measure(framework: str, args: argparse.Namespace, batch: int) -> dict:
    """Run one case in a fresh child process; its report plus the peak RSS that ``wait4`` gives, MiB."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", framework, "--arch", args.arch, "--batches",
           str(batch), "--image-size", str(args.image_size), "--precision", args.precision, "--steps", str(args.steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} batch {batch}: the child failed (exit {proc.returncode})")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=2, help="steps after the first (the steady state's memory)")
    p.add_argument("--child", choices=("cnnjax", "torchvision"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.arch, args.batches[0], args.image_size, args.precision,
                               args.steps)), flush=True)
        return
    rows = []
    for batch in args.batches:
        for framework in ("cnnjax", "torchvision"):
            rows.append(measure(framework, args, batch))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.arch}, {args.image_size}x{args.image_size}, {args.precision}; MiB (peak RSS = /usr/bin/time -v's "
          "maximum resident set size)\n")
    print("| batch | framework | after imports | after first step | peak RSS | ratio cnnjax/torchvision | "
          "steady step s |")
    print("|---|---|---|---|---|---|---|")
    peak = {(r["batch_size"], r["framework"]): r["peak_rss_mib"] for r in rows}
    for r in rows:
        ratio = r["peak_rss_mib"] / peak[(r["batch_size"], "torchvision")]
        print(f"| {r['batch_size']} | {r['framework']} | {r['hwm_after_import_mib']:.0f} | "
              f"{r['hwm_after_first_step_mib']:.0f} | {r['peak_rss_mib']:.0f} | {ratio:.2f} | "
              f"{min(r['step_s']):.2f} |")


if __name__ == "__main__":
    main()
