"""``python -m train.evaluate --arch ARCH --init RUN_DIR --dataset D``: top-1/top-5 of saved weights, no training.

Prints a JSON line with ``val_top1``, ``val_top5``, ``val_loss`` and the example count.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cnnjax import checkpoint, models
from cnnjax import data as cdata
from train import parallel
from train.loop import PRECISIONS, TrainConfig, build_model, evaluate, main_exit, validate
from train.step import TrainState, make_eval_step


def load_variables(init: str, arch: str, num_classes: int, step: int | None = None) -> dict:
    """Variables from a cnnjax run directory/checkpoint or ``torchvision:ARCH`` (ImageNet-1k weights, cached or
    downloaded with a SHA-256 check; see :func:`cnnjax.weights.load_torchvision`)."""
    if not init.startswith("torchvision:"):
        return checkpoint.restore(init, step=step)
    source = init.split(":", 1)[1]
    if source != arch:
        raise ValueError(f"--init {init}: the weights are for {source} but --arch is {arch}")
    if num_classes != 1000:
        raise ValueError(f"--init {init} has torchvision's 1000 ImageNet classes but the dataset has {num_classes}; "
                         "evaluate on ImageNet (tfds:imagenet2012 or folder:) or fine-tune with train.main")
    from cnnjax import weights

    return weights.load_torchvision(arch)


def run(args: argparse.Namespace) -> dict:
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, batch_size=args.batch_size, precision=args.precision,
                      conv_impl=args.conv_impl, zero_init_residual=False)
    validate(cfg)
    source = cdata.load(args.dataset, data_dir=args.data_dir, image_size=args.image_size)
    model = build_model(cfg, source.info)
    models.check_input_size(model, source.info.image_size)
    variables = load_variables(args.init, args.arch, source.info.num_classes, args.step)
    replicated, batch_sharding = parallel.shardings(parallel.data_mesh())
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       batch_stats=variables["batch_stats"], opt_state=(), rng=jnp.zeros((2,), jnp.uint32))
    state = jax.device_put(state, replicated)
    eval_step = jax.jit(make_eval_step(model), in_shardings=(replicated, batch_sharding), out_shardings=replicated)
    result = evaluate(state, eval_step, source, args.batch_size, batch_sharding, progress=not args.no_progress)
    result = {"arch": args.arch, "dataset": args.dataset, "init": args.init, **result}
    print(json.dumps(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help="architecture: " + ", ".join(models.names()))
    p.add_argument("--init", required=True,
                   help="a cnnjax run directory (or its checkpoints/ folder), or torchvision:ARCH")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest readable)")
    p.add_argument("--dataset", default=cdata.DEFAULT, help="one of: " + ", ".join(cdata.DATASETS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    p.add_argument("--conv-impl", default="fast")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.arch not in models.names():
        p.error(models.registry.unknown_name_message(args.arch))
    return main_exit(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
