"""Per-layer model summary: output shapes, parameters and FLOPs.

``python -m cnnjax.summary --arch resnet50 [--image-size 224] [--num-classes 1000]`` prints one row per layer
(conv, linear, norm, pool) in call order and the totals. Shapes come from an abstract trace
(``jax.eval_shape``: nothing is computed or compiled); per-layer FLOPs are exact formulas
(a multiply-add counts 2: conv ``2 * N * H' * W' * C_out * kH * kW * C_in / groups``, linear ``2 * N * in * out``,
plus the bias add); the total is also given from XLA's own cost analysis of the lowered forward pass.
:func:`subtotals` splits parameters and FLOPs into convolution, dense (linear), normalisation and other
(parameters outside those layers, e.g. ConvNeXt's layer scale), printed under the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import models
from cnnjax import nn as cnn

LEAF_TYPES: tuple[type, ...] = (cnn.Conv, cnn.Linear, cnn.BatchNorm, nn.LayerNorm, cnn.MaxPool2d, cnn.AvgPool2d,
                                cnn.AdaptiveAvgPool2d)


@dataclasses.dataclass
class LayerRow:
    """One layer call: its path in the parameter tree, type, output shape, parameter count and FLOPs."""

    path: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


def _layer_flops(module: nn.Module, x: jax.Array, y: jax.Array) -> int:
    if isinstance(module, cnn.Conv):
        kh, kw = cnn.conv.pair(module.kernel_size)
        cin_g = x.shape[-1] // module.groups
        return 2 * math.prod(y.shape) * kh * kw * cin_g + (math.prod(y.shape) if module.use_bias else 0)
    if isinstance(module, cnn.Linear):
        return 2 * math.prod(y.shape) * x.shape[-1] + (math.prod(y.shape) if module.use_bias else 0)
    return 0


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def summarize(model: nn.Module, image_size: int | tuple[int, int], batch: int = 1) -> tuple[list[LayerRow], dict]:
    """Trace ``model`` abstractly on (batch, H, W, in_channels) and return (rows, totals).

    ``totals`` has ``params`` (all parameters), ``flops`` (sum of the per-layer formulas), ``xla_flops``
    (XLA's cost analysis of the forward pass, or None if unavailable) and ``output_shape``.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = jax.ShapeDtypeStruct((batch, h, w, model.in_channels), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda x: model.init(rngs, x, False), x)
    params = variables.get("params", {})
    calls: list[tuple[nn.Module, tuple, object]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, LEAF_TYPES):
            calls.append((context.module, args, out))
        return out

    def forward(variables, x):
        with nn.intercept_methods(record):
            return model.apply(variables, x, False)

    out = jax.eval_shape(forward, variables, x)
    rows = []
    for module, args, y in calls:
        path = tuple(module.scope.path)
        sub = params
        for key in path:
            sub = sub.get(key, {}) if isinstance(sub, dict) else {}
        rows.append(LayerRow("/".join(path), type(module).__name__, tuple(y.shape), _count(sub),
                             _layer_flops(module, args[0], y)))
    try:
        cost = jax.jit(lambda v, x: model.apply(v, x, False)).lower(variables, x).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = int(cost.get("flops", 0)) if cost else None
    except Exception:  # cost analysis is best effort: not every backend implements it
        xla_flops = None
    totals = {"params": _count(params), "flops": sum(r.flops for r in rows), "xla_flops": xla_flops,
              "output_shape": tuple(out.shape)}
    return rows, totals


GROUPS = {"Conv": "conv", "Linear": "dense", "BatchNorm": "norm", "LayerNorm": "norm"}


def subtotals(rows: Sequence[LayerRow], totals: dict) -> dict[str, dict[str, int]]:
    """``{"conv" | "dense" | "norm" | "other": {"params": n, "flops": n}}``: the rows summed by layer kind
    (``GROUPS``). A ``Linear`` applied at every pixel of an NHWC map (ConvNeXt's pointwise MLP) is a 1x1
    convolution and counts as ``conv``: ``dense`` is a layer on a flat vector. ``other`` holds the parameters
    no conv/linear/norm layer owns (total minus the rest) and no FLOPs. A layer called twice (shared weights)
    would count its parameters twice: no model in the zoo does."""
    out = {k: {"params": 0, "flops": 0} for k in ("conv", "dense", "norm", "other")}
    for r in rows:
        kind = GROUPS.get(r.kind, "other")
        group = out["conv" if kind == "dense" and len(r.output_shape) > 2 else kind]
        group["params"] += r.params
        group["flops"] += r.flops
    out["other"]["params"] += totals["params"] - sum(g["params"] for g in out.values())
    return out


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_table(name: str, image_size: int, rows: Sequence[LayerRow], totals: dict) -> str:
    """The summary as aligned plain text."""
    header = ("#", "layer", "type", "output (N, H, W, C)", "params", "FLOPs")
    body = [(str(i), r.path, r.kind, str(r.output_shape), f"{r.params:,}", _human(r.flops) if r.flops else "-")
            for i, r in enumerate(rows)]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:{'<' if i in (1, 2, 3) else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [f"{name} on {image_size}x{image_size} input", fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in body]
    xla = _human(totals["xla_flops"]) if totals["xla_flops"] else "n/a"
    lines += ["", f"output shape: {totals['output_shape']}",
              f"total parameters: {totals['params']:,}",
              f"total FLOPs (conv + linear formulas): {totals['flops']:,} ({_human(totals['flops'])}); "
              f"XLA cost analysis: {xla}"]
    parts = subtotals(rows, totals)
    for what in ("params", "flops"):
        total = max(sum(g[what] for g in parts.values()), 1)
        lines.append(f"{'parameters' if what == 'params' else 'FLOPs'} by layer kind: " + ", ".join(
            f"{k} {_human(g[what])} ({100 * g[what] / total:.1f}%)" for k, g in parts.items() if g[what]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnjax.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, help="architecture name: " + ", ".join(models.names()))
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in pixels (default 224; 32 for lenet5, mlp and the CIFAR ResNets)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: the architecture's own")
    parser.add_argument("--in-channels", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    if args.arch not in models.names():
        parser.error(models.registry.unknown_name_message(args.arch))
    overrides = {} if args.in_channels is None else {"in_channels": args.in_channels}
    model = models.create(args.arch, num_classes=args.num_classes, **overrides)
    size = args.image_size or default_image_size(args.arch)
    try:
        rows, totals = summarize(model, size, args.batch)
    except cnn.InputTooSmallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(args.arch, size, rows, totals))
    return 0


def default_image_size(arch: str) -> int:
    """The architecture record's ``input_size``: 224 for the ImageNet architectures; 32 for LeNet, the MLPs and
    the CIFAR ResNets."""
    return models.record(arch).input_size


if __name__ == "__main__":
    sys.exit(main())
