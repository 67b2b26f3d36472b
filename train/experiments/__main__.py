"""``python -m train.experiments transfer [--out DIR] [--seeds 0 1 2]``."""

from __future__ import annotations

import argparse
import sys

from train.experiments import transfer

EXPERIMENTS = {"transfer": transfer}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.experiments")
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    args, rest = p.parse_known_args(argv)
    return EXPERIMENTS[args.name].main(rest)


if __name__ == "__main__":
    sys.exit(main())
