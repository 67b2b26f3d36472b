"""``python -m train.experiments NAME [--budget smoke|default|full] [--seeds ...] [--out DIR]``.

``degradation``, ``gradients``, ``lesion`` and ``landscape`` run on :mod:`train.experiments.runner` (cached runs
under ``OUT/runs/``; the last three train nothing of their own: they use the ``degradation`` runs cached in the
sibling folder ``OUT/../degradation/runs``, training them there first if needed). ``transfer`` pretrains once on
``mnist5k`` and starts its LP-FT runs from its own linear-probe runs. ``vgg-depth`` trains its deep ``staged`` net
from its own shallow Kaiming runs (``--init-match partial``), so those run first.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from train.experiments import (
    activations,
    augmentation,
    aux_heads,
    degradation,
    downsampling,
    gradients,
    inductive_bias,
    landscape,
    lesion,
    param_audit,
    reproducibility,
    shift,
    transfer,
    vgg_depth,
)
from train.experiments import runner as R

EXPERIMENTS = {"transfer": transfer, "degradation": degradation, "gradients": gradients, "lesion": lesion,
               "landscape": landscape, "shift": shift, "inductive-bias": inductive_bias, "param-audit": param_audit,
               "augmentation": augmentation, "reproducibility": reproducibility,
               "downsampling": downsampling, "activations": activations, "vgg-depth": vgg_depth,
               "aux-heads": aux_heads}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m train.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--budget", choices=R.BUDGETS, default="default",
                   help="smoke: seconds, checks the pipeline; default: <= 15 min on a 2-core CPU; full: a GPU")
    p.add_argument("--seeds", type=int, nargs="+", help="default: the budget's (3 at default)")
    p.add_argument("--out", help="output directory (default experiments_out/NAME; runs are cached in OUT/runs)")
    args, rest = p.parse_known_args(argv)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    out = pathlib.Path(args.out) if args.out else R.default_out(args.name)
    EXPERIMENTS[args.name].run(out, args.budget, tuple(args.seeds) if args.seeds else None)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
