"""Where the time of one training step (or inference forward) goes: a ``jax.profiler`` trace summed by XLA
operation kind.

    python -m benchmarks.profile_step --arch resnet50 --precision bf16        # the default train step
    python -m benchmarks.profile_step --arch convnext_tiny --inference --batch-size 32

Builds ``train.benchmark.BenchmarkStep`` (224x224, batch 16 by default, the CLI's default ``--conv-impl``) — or,
with ``--inference``, the jitted eval-mode ``model.apply`` of ``benchmarks.inference`` (bf16: the model cloned with
``dtype=bfloat16``, float32 parameters) — traces two calls and prints the per-call milliseconds and call counts of
each operation kind (the XLA name without its ``.N`` suffix, e.g. ``ynn_fusion``, ``copy_bitcast_fusion``),
largest first.
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


def _forward(arch: str, batch: int, size: int, precision: str, conv_impl: str):
    """:func:`benchmarks.inference.cnnjax_forward` on a random (batch, size, size, 3) input, as a zero-argument
    function that runs it to completion."""
    import numpy as np

    from benchmarks.inference import cnnjax_forward

    _, variables, apply = cnnjax_forward(arch, precision, conv_impl)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    return lambda: jax.block_until_ready(apply(variables, x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--conv-impl", default=TrainConfig.conv_impl)
    p.add_argument("--inference", action="store_true", help="the eval-mode forward instead of the train step")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    if args.inference:
        step = _forward(args.arch, args.batch_size, args.image_size, args.precision, args.conv_impl)
    else:
        step = BenchmarkStep(TrainConfig(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size,
                                         precision=args.precision, conv_impl=args.conv_impl,
                                         zero_init_residual="off"))
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
    what = "forward" if args.inference else "step"
    print(f"{args.arch} {args.precision} {args.conv_impl} batch {args.batch_size}: {sum(ms.values()):.0f} ms of XLA "
          f"operations per {what}")
    for kind, t in ms.most_common(args.top):
        print(f"{t:9.1f} ms {calls[kind]:6.0f}x  {kind}")


if __name__ == "__main__":
    main()
