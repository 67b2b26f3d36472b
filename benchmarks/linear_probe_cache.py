"""Linear probing with and without the feature cache (``train.main --feature-cache``): wall time and accuracy.

    python -m benchmarks.linear_probe_cache --arch resnet18 --epochs 10

Pretrains ``--arch`` briefly on digits 0-4 (the backbone's quality does not matter for timing), then linear-probes
digits 5-9 both ways through ``train.main.train`` exactly as the CLI does, alternating the two modes ``--repeats``
times. Prints one JSON line per run and a summary: median wall time of the whole run (pretrained weights loaded,
features extracted, checkpoints and evaluation included) and the steady-state training throughput of the last
epoch (images/s), each with its speed-up, and the val top-1 of each mode. Digits
are augmented (random shifts) in the uncached run and not in the cached one, so accuracies may differ slightly.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

from train.config import TrainConfig
from train.main import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--target", default="digits:classes=5+6+7+8+9")
    args = p.parse_args()
    quiet = lambda s: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        train(TrainConfig(arch=args.arch, dataset="digits:classes=0+1+2+3+4", epochs=1, workdir=str(out / "pre"),
                          progress=False), log=quiet)
        runs = []
        for r in range(args.repeats):
            for cached in (False, True):
                t0 = time.perf_counter()
                rec = train(TrainConfig(arch=args.arch, dataset=args.target, epochs=args.epochs,
                                        batch_size=args.batch_size, init=str(out / "pre"), transfer="linear-probe",
                                        feature_cache=cached, workdir=str(out / f"probe-{r}-{cached}"),
                                        eval_every=args.epochs, progress=False), log=quiet)
                runs.append({"feature_cache": cached, "seconds": time.perf_counter() - t0,
                             "train_images_per_sec": rec["images_per_sec"],
                             "val_top1": rec["val_top1"], "train_top1": rec["train_top1"], "steps": rec["step"]})
                print(json.dumps(runs[-1]), flush=True)
    med = {c: statistics.median(r["seconds"] for r in runs if r["feature_cache"] == c) for c in (False, True)}
    acc = {c: statistics.mean(r["val_top1"] for r in runs if r["feature_cache"] == c) for c in (False, True)}
    rate = {c: statistics.median(r["train_images_per_sec"] for r in runs if r["feature_cache"] == c)
            for c in (False, True)}
    print(json.dumps({"arch": args.arch, "epochs": args.epochs, "target": args.target,
                      "uncached_s": med[False], "cached_s": med[True], "speedup": med[False] / med[True],
                      "uncached_train_img_s": rate[False], "cached_train_img_s": rate[True],
                      "steady_state_speedup": rate[True] / rate[False],
                      "uncached_val_top1": acc[False], "cached_val_top1": acc[True]}))


if __name__ == "__main__":
    main()
