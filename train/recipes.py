"""Named training recipes (``--recipe NAME``) and configuration files (``--config FILE``).

A run's settings are composed in this order, each layer overriding the one before:

1. the defaults of :class:`~train.config.TrainConfig`;
2. the recipe (``--recipe``, or a ``recipe`` key in the file): :data:`RECIPES`;
3. the file (``--config``): a run's saved ``config.json``, a JSON object, or a Python file defining
   ``get_config()`` that returns a dict or an ``ml_collections.ConfigDict`` (as the Flax examples and big_vision
   write them); keys are :class:`TrainConfig` field names;
4. the flags given on the command line.

So ``python -m train.main --config RUN/config.json --workdir NEW`` repeats a run exactly (the saved ``workdir``
and ``resume`` are never taken from a file, nor the values the run derived: class count, steps, devices), and
``--config RUN/config.json --lr 0.05`` repeats it with one change. A recipe that gives ``lr_per_256`` scales the
learning rate with the batch (``lr = lr_per_256 x batch / 256``) unless the file or the command line sets
``--lr``.

Each recipe lists, flag by flag, the published command it follows and what cnnjax sets for it
(:attr:`Recipe.table`, printed by ``python -m train.recipes``); a published setting cnnjax cannot reproduce yet
is listed in :attr:`Recipe.missing` and named in a warning when the recipe is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from train import config as C

#: Keys of a saved ``config.json`` that are not settings: derived by the run, or where it ran.
DERIVED_KEYS = {"num_classes", "channels", "steps_per_epoch", "total_steps", "devices", "processes",
                "resume_history", "class_names", "mean", "std", "torchvision_weights", "val_preprocess"}
#: Settings never taken from a file: the run directory and whether to continue it.
NOT_FROM_FILES = {"workdir", "resume", "config"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published training recipe: ``settings`` (TrainConfig fields), ``lr_per_256`` (peak learning rate per
    256 images of global batch), and ``table``: (published flag, its value, the cnnjax setting) rows."""

    name: str
    source: str
    settings: dict[str, Any]
    table: tuple[tuple[str, str, str], ...]
    lr_per_256: float | None = None
    missing: tuple[str, ...] = ()

    def markdown(self) -> str:
        rows = ["| published | value | cnnjax |", "|---|---|---|"]
        rows += [f"| `{flag}` | {value} | {ours} |" for flag, value, ours in self.table]
        return f"#### `--recipe {self.name}`\n\n{self.source}\n\n" + "\n".join(rows) + "\n"


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="torchvision-v1",
        source="torchvision's classic ResNet recipe (`references/classification/README.md`, \"ResNet\": "
               "`torchrun --nproc_per_node=8 train.py --model $MODEL`, i.e. the defaults of `train.py`; the "
               "IMAGENET1K_V1 weights, ResNet-50 76.130 top-1).",
        settings={"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
                  "decay_params": "all", "schedule": "step", "lr_step_size": 30.0, "lr_gamma": 0.1, "epochs": 90,
                  "warmup_epochs": 0.0, "batch_size": 256, "label_smoothing": 0.0, "zero_init_residual": "off"},
        lr_per_256=0.1,
        table=(("--batch-size", "32 per GPU x 8 = 256", "`--batch-size 256`"),
               ("--lr", "0.1", "`--lr 0.1 x batch / 256` (0.1 at 256)"),
               ("--opt", "sgd (no Nesterov)", "`--optimizer sgd --no-nesterov`"),
               ("--momentum", "0.9", "`--momentum 0.9`"),
               ("--wd", "1e-4, on every parameter (`--norm-weight-decay` unset)",
                "`--weight-decay 1e-4 --decay-params all`"),
               ("--lr-scheduler", "steplr", "`--schedule step`"),
               ("--lr-step-size / --lr-gamma", "30 / 0.1", "`--lr-step-size 30 --lr-gamma 0.1`"),
               ("--lr-warmup-epochs", "0", "`--warmup-epochs 0`"),
               ("--epochs", "90", "`--epochs 90`"),
               ("--label-smoothing", "0.0", "`--label-smoothing 0`"),
               ("zero_init_residual", "False (torchvision's default)", "`--zero-init-residual off`"),
               ("train transform", "RandomResizedCrop(224) + horizontal flip", "`--augment default`: the "
                "dataset's own (host random-resized crop + device flip for natural images)"),
               ("val transform", "resize 256, centre crop 224, bilinear", "the dataset's eval transform")),
    ),
    Recipe(
        name="torchvision-v2",
        source="torchvision's new recipe (`references/classification/README.md`, \"ResNet\", the IMAGENET1K_V2 "
               "command; ResNet-50 80.858 top-1): `torchrun --nproc_per_node=8 train.py --model $MODEL "
               "--batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 "
               "--lr-warmup-method linear --auto-augment ta_wide --epochs 600 --random-erase 0.1 --weight-decay "
               "0.00002 --norm-weight-decay 0.0 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 "
               "--train-crop-size 176 --model-ema --val-resize-size 232 --ra-sampler --ra-reps 4`.",
        settings={"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 2e-5,
                  "decay_params": "no-norms", "schedule": "cosine", "lr_min": 0.0, "warmup_epochs": 5.0,
                  "warmup_start_factor": 0.01, "epochs": 600, "batch_size": 1024, "label_smoothing": 0.1,
                  "ema_decay": 0.99998, "ema_every": 32, "ema_adjust": True, "zero_init_residual": "off",
                  "augment": "trivialaugment", "random_erasing": 0.1, "mixup": 0.2, "cutmix": 1.0,
                  "mix_switch_prob": 0.5, "train_crop_size": 176, "val_resize_size": 232, "ra_reps": 4},
        lr_per_256=0.125,
        table=(("--batch-size", "128 per GPU x 8 = 1024", "`--batch-size 1024`"),
               ("--lr", "0.5", "`--lr 0.5 x batch / 1024` (0.125 per 256)"),
               ("--opt / --momentum", "sgd, 0.9 (no Nesterov)", "`--optimizer sgd --momentum 0.9 --no-nesterov`"),
               ("--lr-scheduler", "cosineannealinglr (eta_min 0)", "`--schedule cosine --lr-min 0`"),
               ("--lr-warmup-epochs / -method / -decay", "5 / linear / 0.01 (default)",
                "`--warmup-epochs 5 --warmup-start-factor 0.01`"),
               ("--epochs", "600", "`--epochs 600`"),
               ("--weight-decay / --norm-weight-decay", "2e-5 / 0.0",
                "`--weight-decay 2e-5 --decay-params no-norms`"),
               ("--label-smoothing", "0.1", "`--label-smoothing 0.1`"),
               ("--model-ema (steps 32, decay 0.99998)", "on", "`--ema-decay 0.99998 --ema-every 32` with "
                "torchvision's adjustment"),
               ("--auto-augment", "ta_wide (after RandomResizedCrop + flip)", "`--augment trivialaugment` "
                "(TrivialAugmentWide on the device, after the host's crop and the device's flip)"),
               ("--random-erase", "0.1 (value 0 after normalisation)", "`--random-erasing 0.1`"),
               ("--mixup-alpha / --cutmix-alpha", "0.2 / 1.0, one of the two per batch (RandomChoice)",
                "`--mixup 0.2 --cutmix 1.0 --mix-switch-prob 0.5` (per global batch, not per GPU)"),
               ("--train-crop-size / --val-resize-size", "176 / 232",
                "`--train-crop-size 176 --val-resize-size 232` (tfds:/folder: only; not applied to other datasets, "
                "with a warning)"),
               ("--val-crop-size", "224 (default)", "`--image-size` (224 by default for tfds: and folder: photos)"),
               ("--ra-sampler --ra-reps", "4", "`--ra-reps 4` (each image 4 times per epoch, different crops, on "
                "different devices; the epoch keeps its length)")),
    ),
)}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (--recipe); valid choices: {', '.join(RECIPES)}")
    return RECIPES[name]


def load_file(path: str | pathlib.Path) -> dict[str, Any]:
    """The settings in a ``--config`` file (see the module docstring), checked: an unknown key raises
    ``ValueError`` naming the valid ones."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"_cnnjax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"--config {path}: a Python config must define get_config()")
        values = module.get_config()
        values = values.to_dict() if hasattr(values, "to_dict") else dict(values)
    else:
        try:
            values = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"--config {path}: not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"--config {path}: expected a JSON object of settings")
        values = {k: v for k, v in values.items() if k not in DERIVED_KEYS}
    values = {k: v for k, v in values.items() if k not in NOT_FROM_FILES}
    unknown = sorted(set(values) - set(C.FIELDS))
    if unknown:
        raise ValueError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(set(C.FIELDS) - NOT_FROM_FILES))}")
    if isinstance(values.get("zero_init_residual"), bool):
        values["zero_init_residual"] = C.LEGACY_ZERO_INIT[values["zero_init_residual"]]
    if "model_opt" in values:
        values["model_opt"] = tuple(values["model_opt"] or ())
    return values


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags actually given in ``argv`` (not left at their defaults)."""
    shadow = argparse.Namespace()  # parsed with every default suppressed: only what argv sets appears
    saved = [(a, a.default) for a in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parser.parse_known_args(list(argv), namespace=shadow)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(shadow))


def compose(args: argparse.Namespace, given: set[str], log=print) -> C.TrainConfig:
    """The run's config from the layers of the module docstring: defaults, recipe, file, given flags."""
    values = dataclasses.asdict(C.TrainConfig())
    from_file = load_file(args.config) if getattr(args, "config", None) else {}
    name = args.recipe if "recipe" in given else from_file.get("recipe")
    lr_set = "lr" in given or from_file.get("lr") is not None
    if name:
        r = recipe(name)
        values.update(r.settings)
        if r.missing:
            log(f"warning: --recipe {name}: not reproduced yet: {'; '.join(r.missing)} (see "
                "`python -m train.recipes`)")
    values.update(from_file)
    values.update({k: v for k, v in vars(args).items() if k in given and k in C.FIELDS})
    values["recipe"] = name
    _sizes_where_they_apply(values, name, given, from_file, log)
    if name and RECIPES[name].lr_per_256 is not None and not lr_set:
        values["lr"] = RECIPES[name].lr_per_256 * values["batch_size"] / 256
    for key, f in C.FIELDS.items():
        if f.metadata["repeat"]:
            values[key] = tuple(values[key] or ())
    return C.TrainConfig(**values)


def _sizes_where_they_apply(values: dict, name: str | None, given: set[str], from_file: dict, log) -> None:
    """A recipe's ``--train-crop-size`` / ``--val-resize-size`` are for decoded photos (tfds:, folder:): on another
    dataset they are dropped with a warning, unless the file or the command line set them (then validation says
    why they cannot apply)."""
    from cnnjax import data as cdata

    if not name or cdata.takes_eval_preprocess(values.get("dataset") or ""):
        return
    dropped = [k for k in ("train_crop_size", "val_resize_size")
               if k in RECIPES[name].settings and k not in given and k not in from_file]
    for key in dropped:
        values[key] = None
    if dropped:
        log(f"warning: --recipe {name}: {', '.join('--' + k.replace('_', '-') for k in dropped)} not applied: "
            f"they apply to tfds:/folder: images, not --dataset {values.get('dataset')}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.recipes``: every recipe's flag-by-flag table (Markdown)."""
    del argv
    for r in RECIPES.values():
        print(r.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
