"""cnnjax vs torchvision: the full training step on the same machine, in the same run, alternating.

    python -m benchmarks.compare_torchvision --archs resnet50 resnet18 mobilenet_v2 --precisions fp32 bf16

For each (architecture, precision) both trainers are built on one synthetic batch (224x224, batch 16 by default,
1000 classes): cnnjax through ``train.benchmark.BenchmarkStep`` (exactly what ``train.main --benchmark`` times:
jitted step, SGD with Nesterov momentum and weight decay, BatchNorm in training mode, one trainer per
``--conv-impl`` given), and
torchvision in eager mode with ``channels_last`` and the same optimizer (bf16: ``torch.autocast`` on CPU/GPU;
cnnjax: bf16 compute with float32 parameters). After ``--warmup`` steps each, ``--repeats`` rounds run one step of
every trainer in turn, so all see the same machine load, in an order rotated every round (PyTorch's OpenMP
threads spin on after its step and slowed whichever trainer came next by up to 1.6x); medians are reported.
``--isolate`` runs every trainer in its own process (``benchmarks/isolated.py``), still alternating: in one
process the cnnjax step also ran slower after torchvision's than alone.
Prints one JSON line per configuration and a markdown table at the end. Needs torch/torchvision
(``pip install -e '.[torch]'``); no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import torch  # torch before anything that could import TensorFlow (see tests/conftest.py); nothing here does
import torchvision

from benchmarks.isolated import cnnjax_trainer, torch_trainer
from train.config import TrainConfig


def alternate(steppers: dict[str, Callable[[], float]], warmup: int, repeats: int,
              pause: float = 0.0) -> dict[str, list[float]]:
    """Each stepper's step times (``step()`` returns seconds): ``warmup`` rounds untimed, then ``repeats`` rounds of
    one step each, in an order rotated every round (torch's OpenMP threads keep spinning after its step and slow
    whoever runs next), ``pause`` seconds after every step."""
    for _ in range(warmup):
        for step in steppers.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steppers}
    names = list(steppers)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(steppers[name]())
            time.sleep(pause)
    return times


def compare(arch: str, precision: str, args: argparse.Namespace) -> list[dict]:
    """One row per ``--conv-impl``; all of them and torchvision alternate step by step in one loop."""
    ours, build_s = {}, {}
    for impl in args.conv_impl:
        fields = {"arch": arch, "batch_size": args.batch_size, "image_size": args.image_size,
                  "precision": precision, "conv_impl": impl, "zero_init_residual": "off"}
        t0 = time.perf_counter()
        ours[impl] = cnnjax_trainer(fields, args.isolate)
        build_s[impl] = time.perf_counter() - t0
    torch_args = [arch, args.batch_size, args.image_size, precision, args.torch_device, args.torch_compile]
    theirs = torch_trainer(torch_args, args.isolate)
    times = alternate({**ours, "torchvision": theirs}, args.warmup, args.repeats, args.pause)
    tv = statistics.median(times["torchvision"])
    return [{"arch": arch, "precision": precision, "batch_size": args.batch_size, "image_size": args.image_size,
             "conv_impl": impl, "cnnjax_img_s": args.batch_size / statistics.median(times[impl]),
             "torchvision_img_s": args.batch_size / tv, "ratio": tv / statistics.median(times[impl]),
             "cnnjax_step_s": times[impl], "torchvision_step_s": times["torchvision"],
             "cnnjax_first_step_s": ours[impl].first_step_s, "cnnjax_build_s": build_s[impl],
             "repeats": args.repeats} for impl in ours]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "resnet18", "mobilenet_v2"])
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--conv-impl", nargs="+", default=[TrainConfig.conv_impl],
                   help="one or more cnnjax algorithms to time (default: the CLI's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.1, help="seconds between steps (lets idle threads settle)")
    p.add_argument("--torch-device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--torch-compile", action="store_true", help="torch.compile the torchvision model")
    p.add_argument("--isolate", action="store_true",
                   help="each trainer in its own process, still alternating (benchmarks/isolated.py)")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    env = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "jax": jax.__version__, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "torch": torch.__version__, "torchvision": torchvision.__version__}
    print(json.dumps(env), flush=True)
    rows = []
    for arch in args.archs:
        for precision in args.precisions:
            for row in compare(arch, precision, args):
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| arch | precision | conv impl | cnnjax img/s | torchvision img/s | ratio | compile + first step s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['precision']} | {r['conv_impl']} | {r['cnnjax_img_s']:.2f} | "
              f"{r['torchvision_img_s']:.2f} | {r['ratio']:.2f} | {r['cnnjax_first_step_s']:.1f} |")


if __name__ == "__main__":
    main()
