"""Where the time of one training step goes: a ``jax.profiler`` trace summed by XLA operation kind.

    CNNJAX_AUTOTUNE_CACHE=/tmp/bench/at.json python -m benchmarks.profile_step --arch resnet50 --conv-impl auto

Builds ``train.benchmark.BenchmarkStep`` (224x224, batch 16 by default), traces two steps and prints the per-step
milliseconds and call counts of each operation kind (the XLA name without its ``.N`` suffix, e.g. ``ynn_fusion``,
``copy_bitcast_fusion``), largest first.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax

from train.benchmark import BenchmarkStep
from train.config import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    step = BenchmarkStep(TrainConfig(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size,
                                     precision=args.precision, conv_impl=args.conv_impl, zero_init_residual="off"))
    step()
    out = tempfile.mkdtemp(prefix="cnnjax-profile-")
    with jax.profiler.trace(out, create_perfetto_trace=True):
        step()
        step()
    with gzip.open(glob.glob(f"{out}/**/perfetto_trace.json.gz", recursive=True)[0]) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    ms, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(("ThunkExecutor", "$")):
            kind = re.sub(r"\.\d+$", "", e["name"])
            ms[kind] += e["dur"] / 1e3 / 2
            calls[kind] += 0.5
    print(f"{args.arch} {args.precision} {args.conv_impl}: {sum(ms.values()):.0f} ms of XLA operations per step")
    for kind, t in ms.most_common(args.top):
        print(f"{t:9.1f} ms {calls[kind]:6.0f}x  {kind}")


if __name__ == "__main__":
    main()
