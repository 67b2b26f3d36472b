"""Compile + first step of the train step with JAX's persistent compilation cache cold vs warm.

    python -m benchmarks.compile_cache --arch resnet50 --batch-size 16

Runs ``python -m train.main --benchmark`` (the CLI with its default flags, which include the cache) ``--runs``
times in fresh processes on one fresh cache folder: the first run compiles and writes the programs, the later ones
load them. Reports each run's ``first_step_s`` (compile + one step, as ``train.main --benchmark`` measures it),
its whole wall time (imports, initialisation, tracing, timing included) and the cache size; a run with
``--no-compile-cache`` is the control.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_cli(args: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "train.main", *args], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=2, help="runs on the same cache folder (the first is cold)")
    args = p.parse_args()
    common = ["--arch", args.arch, "--benchmark", "--batch-size", str(args.batch_size), "--image-size",
              str(args.image_size), "--benchmark-steps", "1"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnjax-cc-") as folder:
        for i in range(args.runs):
            r, wall = run_cli([*common, "--compile-cache", folder])
            size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
            rows.append({"run": "cold" if i == 0 else "warm", "first_step_s": r["first_step_s"], "wall_s": wall,
                         "cache_mb": size / 2**20, "step_s": r["step_time_s"]})
            print(json.dumps(rows[-1]), flush=True)
    r, wall = run_cli([*common, "--no-compile-cache"])
    rows.append({"run": "no cache", "first_step_s": r["first_step_s"], "wall_s": wall, "cache_mb": 0.0,
                 "step_s": r["step_time_s"]})
    print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.arch}, batch {args.batch_size}, {args.image_size}px, train.main --benchmark defaults\n")
    print("| run | compile + first step s | whole process s | one step s | cache MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['first_step_s']:.1f} | {r['wall_s']:.1f} | {r['step_s']:.2f} | {r['cache_mb']:.1f} |")


if __name__ == "__main__":
    main()
