"""``python -m train.main --arch ARCH [options]``: train a zoo architecture and report validation accuracy.

With no option beyond ``--arch`` it trains on the bundled ``digits`` dataset (no network needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from cnnjax import data as cdata
from cnnjax import models
from cnnjax.ops import CONV_IMPLS, autotune
from train import optim
from train.loop import PRECISIONS, TrainConfig, benchmark, main_exit, train


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m train.main", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=d.arch, metavar="NAME", help="architecture: " + ", ".join(models.names()))
    p.add_argument("--dataset", default=d.dataset, help="one of: " + ", ".join(cdata.DATASETS))
    p.add_argument("--data-dir", default=None, help="TFDS data dir (else $TFDS_DATA_DIR); base of folder: paths")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the dataset's)")
    p.add_argument("--epochs", type=int, default=None, help="default 10")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (all devices)")
    p.add_argument("--optimizer", choices=optim.OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (sgd: 0.1 x batch/256; adamw: 1e-3)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (Nesterov)")
    p.add_argument("--weight-decay", type=float, default=None, help="sgd: 5e-5; adamw: 0.05 (never on biases/norms)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--precision", choices=tuple(PRECISIONS), default=d.precision,
                   help="bf16: bfloat16 compute, float32 parameters and loss")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workdir", default=None, help="run directory (default checkpoints/<arch>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 1 epoch)")
    p.add_argument("--keep", type=int, default=d.keep, help="checkpoints kept")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs between evaluations")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between host metric fetches")
    p.add_argument("--conv-impl", choices=CONV_IMPLS, default=d.conv_impl,
                   help="convolution algorithm (auto: the fastest per layer, measured once and cached)")
    p.add_argument("--autotune", choices=autotune.MODES, default=d.autotune,
                   help="--conv-impl auto: measure and cache (default; $CNNJAX_AUTOTUNE) or a fixed rule")
    t = p.add_argument_group("transfer learning")
    t.add_argument("--init", default=None, help="start from a cnnjax run directory/checkpoint or torchvision:ARCH")
    t.add_argument("--transfer", default=None, metavar="MODE",
                   help="finetune | linear-probe | freeze:<regex> (freeze parameters whose path matches)")
    t.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="finetune: learning rate multiplier for every parameter outside the head")
    t.add_argument("--feature-cache", action="store_true",
                   help="linear-probe: run the frozen backbone once and train the head on the cached features "
                        "(un-augmented; no dropout before the head)")
    p.add_argument("--no-zero-init-residual", dest="zero_init_residual", action="store_false",
                   help="keep torchvision's init of the last BN in residual blocks (default: zero, Goyal et al.)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--benchmark", action="store_true",
                   help="time the train step on synthetic data; prints one JSON line")
    p.add_argument("--benchmark-steps", type=int, default=10)
    g = p.add_argument_group("multi-host (JAX's runtime)")
    g.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with auto-detection")
    g.add_argument("--coordinator", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["progress"] = not args.no_progress
    return TrainConfig(**kw)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.arch not in models.names():
        parser.error(models.registry.unknown_name_message(args.arch))
    if args.resume and not args.workdir:
        parser.error("--resume needs --workdir (the run directory to continue)")
    from train import parallel

    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.distributed)
    cfg = config_from_args(args)
    if args.benchmark:
        return main_exit(lambda: benchmark(cfg, steps=args.benchmark_steps))
    return main_exit(lambda: train(cfg))


if __name__ == "__main__":
    sys.exit(main())
