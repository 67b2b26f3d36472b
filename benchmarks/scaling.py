"""How the ResNet-50 training step's cost grows with the batch and the image size: cnnjax vs torchvision.

    python -m benchmarks.scaling --batches 8 16 32 64 --sizes 128 160 224

One table: the batch sizes at the largest image size, then the image sizes at ``--size-batch`` (16). Every row
builds both trainers of ``benchmarks/compare_torchvision.py`` (cnnjax: ``train.main``'s jitted step with the
CLI's default ``--conv-impl``; torchvision: eager, ``channels_last``) and alternates their steps in one loop
(medians of ``--repeats``). "cost per image-pixel" is the step time divided by batch x height x width, relative to
the first row: 1.00 everywhere is linear scaling; above 1 the work costs more per pixel than there (memory
traffic, cache spills), below 1 less (fixed per-step costs spread over more images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch  # before anything that could import TensorFlow (see tests/conftest.py)

from benchmarks.compare_torchvision import alternate
from benchmarks.isolated import cnnjax_trainer, torch_trainer


def row(arch: str, batch: int, size: int, precision: str, warmup: int, repeats: int, isolate: bool = False) -> dict:
    fields = {"arch": arch, "batch_size": batch, "image_size": size, "precision": precision,
              "zero_init_residual": "off"}
    torch_args = [arch, batch, size, precision, "cpu", False]
    ours, theirs = cnnjax_trainer(fields, isolate), torch_trainer(torch_args, isolate)
    times = alternate({"cnnjax": ours, "torchvision": theirs}, warmup, repeats, pause=0.1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "batch_size": batch, "image_size": size, "precision": precision,
            "cnnjax_step_s": med["cnnjax"], "torchvision_step_s": med["torchvision"],
            "cnnjax_img_s": batch / med["cnnjax"], "torchvision_img_s": batch / med["torchvision"],
            "ratio": med["torchvision"] / med["cnnjax"], "cnnjax_first_step_s": ours.first_step_s,
            "times": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32, 64])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 160, 224])
    p.add_argument("--size-batch", type=int, default=16, help="the batch size of the image-size rows")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--isolate", action="store_true",
                   help="each trainer in its own process, still alternating (benchmarks/isolated.py)")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    top = max(args.sizes)
    cases = [(b, top) for b in args.batches] + [(args.size_batch, s) for s in args.sizes
                                                if (args.size_batch, s) not in [(b, top) for b in args.batches]]
    rows = []
    for batch, size in cases:
        rows.append(row(args.arch, batch, size, args.precision, args.warmup, args.repeats, args.isolate))
        print(json.dumps(rows[-1]), flush=True)
    base = {k: rows[0][f"{k}_step_s"] / (rows[0]["batch_size"] * rows[0]["image_size"] ** 2)
            for k in ("cnnjax", "torchvision")}
    print(f"\n{args.arch} train step, {args.precision}, medians of {args.repeats} alternating steps\n")
    print("| batch | px | cnnjax img/s | torchvision img/s | ratio | cnnjax cost per image-pixel | "
          "torchvision cost per image-pixel |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per = {k: r[f"{k}_step_s"] / (r["batch_size"] * r["image_size"] ** 2) / base[k]
               for k in ("cnnjax", "torchvision")}
        print(f"| {r['batch_size']} | {r['image_size']} | {r['cnnjax_img_s']:.2f} | {r['torchvision_img_s']:.2f} | "
              f"{r['ratio']:.2f} | {per['cnnjax']:.2f} | {per['torchvision']:.2f} |")


if __name__ == "__main__":
    main()
