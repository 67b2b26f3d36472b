"""Per-layer convolution algorithm table: forward + backward time of every algorithm for each conv of a model.

    python -m benchmarks.conv_algorithms --arch resnet50 --image-size 224 --batch-size 16 [--precision bf16]

Finds every convolution the model runs (layer names, input and kernel shapes, stride, padding, groups) by an
abstract trace, times each applicable algorithm of :data:`cnnjax.ops.autotune.ALGORITHMS` on each distinct
configuration exactly as ``impl='auto'`` does (:func:`cnnjax.ops.autotune.tune`: compile, then the median of
``--repeats`` forward + backward runs; results already in the autotune cache are reused, new ones are saved
there, so a later ``--conv-impl auto`` run starts tuned), and prints a markdown table: layers, shapes,
milliseconds per algorithm, the winner, and totals over the whole network per algorithm (layer time x number of
layers with that shape).
"""

from __future__ import annotations

import argparse
import collections
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import models
from cnnjax import nn as cnn
from cnnjax.ops import CONV_ALGORITHMS, autotune, normalize_padding, pair

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def conv_layers(model: nn.Module, image_size: int, batch_size: int, dtype) -> dict[tuple, list[str]]:
    """``{(x_shape, w_shape, dtype, stride, padding, dilation, groups): [layer paths]}`` of a training forward."""
    found: dict[tuple, list[str]] = collections.defaultdict(list)

    def grab(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, cnn.Conv) and context.method_name == "__call__":
            x = args[0]
            kh, kw = pair(m.kernel_size)
            key = (tuple(x.shape), (kh, kw, x.shape[-1] // m.groups, m.features), str(jnp.dtype(m.dtype or x.dtype)),
                   pair(m.stride), normalize_padding(m.padding), pair(m.dilation), m.groups)
            found[key].append("/".join(m.scope.path))
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, model.in_channels), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), x)
    with nn.intercept_methods(grab):
        jax.eval_shape(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"],
                                                rngs={"dropout": jax.random.key(0)}), variables, x)
    return found


def _layers(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    autotune.configure(repeats=args.repeats)
    model = models.create(args.arch, dtype=DTYPES[args.precision])
    layers = conv_layers(model, args.image_size, args.batch_size, DTYPES[args.precision])
    rows = []
    for (xs, ws, dt, stride, padding, dilation, groups), paths in layers.items():
        rec = autotune.tune(xs, ws, jnp.dtype(dt), stride, padding, dilation, groups,  # measured or cached
                            candidates=CONV_ALGORITHMS)
        rows.append({"layers": paths, "x": xs, "w": ws, "stride": stride, "groups": groups, **rec})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "layers"} | {"first": paths[0]}), flush=True)
    algos = autotune.ALGORITHMS
    print(f"\n{args.arch}, {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.precision}, "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind}): forward + backward ms per call\n")
    print("| layers | input (NHWC) | kernel (HWIO) | stride | groups | " + " | ".join(algos) + " | best |")
    print("|---|---|---|---|---|" + "---|" * len(algos) + "---|")
    totals = dict.fromkeys((*algos, "best", "fast"), 0.0)
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[a]:.1f}" if ms.get(a) is not None else "–" for a in algos]
        print(f"| {_layers(r['layers'])} | {'x'.join(map(str, r['x']))} | {'x'.join(map(str, r['w']))} | "
              f"{r['stride'][0]} | {r['groups']} | " + " | ".join(cells) + f" | **{r['impl']}** |")
        n = len(r["layers"])
        for a in algos:
            totals[a] += n * (ms[a] if ms.get(a) is not None else ms["gemm"])  # not applicable: gemm fallback
        totals["best"] += n * ms[r["impl"]]
        fast = autotune.fixed_choice(r["x"], r["w"], r["groups"], stride=tuple(r["stride"]),
                                     dilation=tuple(r["dilation"]), dtype=r["dtype"])
        totals["fast"] += n * (ms.get(fast) if ms.get(fast) is not None else ms["gemm"])
    print("\nwhole network, sum over conv layers (ms, forward + backward; where an algorithm does not apply, "
          "gemm's time is counted): " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "totals_ms": totals, "arch": args.arch, "image_size": args.image_size,
                       "batch_size": args.batch_size, "precision": args.precision}, f, indent=1)


if __name__ == "__main__":
    main()
