"""``python -m train.evaluate --arch ARCH --init RUN_DIR --dataset D``: top-1/top-5 of saved weights, no training.

Prints a JSON line with ``val_top1``, ``val_top5``, ``val_loss``, the example count, ``val_per_class_top1``
(the top-1 of each true class, index = label; null for a class without val examples; weighted by the class
counts they average to ``val_top1``) and ``preprocessing``, the val transform used. ``--out DIR`` also writes
``DIR/per_class.json`` (the summary, each class's label, name, count and top-1, and the confusion matrix: row =
true label, column = top-1 prediction) and ``DIR/confusion.png`` (see :func:`train.report.plot_confusion`), the
files a training run leaves in its workdir.

Preprocessing of the ``folder:`` and ``tfds:`` datasets (decoded image files): with ``--init
torchvision:ARCH[.WEIGHTS]`` the val images get the eval transform of those torchvision weights (PIL
``Resize(resize, interpolation, antialias=True)``, ``CenterCrop(crop)``, ``ToTensor``, ``Normalize(mean, std)``;
bare ``torchvision:ARCH`` is IMAGENET1K_V1: 256/224 bilinear for resnet50, 236/224 for convnext_tiny, 256/224
bicubic for efficientnet_b0; ``torchvision:resnet50.IMAGENET1K_V2``: 232/224) and ``--image-size`` defaults to its
crop; a cnnjax run that validated with such a transform (its ``config.json``'s ``val_preprocess``, e.g. one
fine-tuned from torchvision weights at their crop) gets the same one. ``--resize-size``, ``--crop-size`` and
``--interpolation`` override those values, and select the same PIL transform for any ``--init`` (unset values then:
crop ``--image-size`` or 224, resize ``round(crop / 0.875)``, bilinear, ImageNet mean/std). Otherwise the dataset's
own val transform is used (for a cnnjax run: the one its training validated with).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from cnnjax import checkpoint, models
from cnnjax import data as cdata
from cnnjax.data.preprocess import Preprocess
from cnnjax.training.loop import evaluate_variables
from cnnjax.weights.torchvision import check_classifier, init_string, torchvision_init
from train import config as C
from train import report
from train.config import TrainConfig
from train.main import build_model, unwritable

INTERPOLATIONS = ("bilinear", "bicubic")
_FLAGS = (("resize", "resize_size", "--resize-size"), ("crop", "crop_size", "--crop-size"),
          ("interpolation", "interpolation", "--interpolation"))


def resolve_preprocess(args: argparse.Namespace) -> tuple[Preprocess | None, str | None]:
    """The val transform for ``args.dataset`` and where its values come from, or (None, None) for the dataset's
    own (see the module docstring). Raises ``ValueError`` for bad values, naming the valid ones."""
    for _, attr, flag in _FLAGS[:2]:
        value = getattr(args, attr)
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive number of pixels, got {value}")
    if args.interpolation is not None and args.interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown --interpolation {args.interpolation!r}; valid choices: {', '.join(INTERPOLATIONS)}")
    if args.image_size is not None and args.crop_size is not None and args.image_size != args.crop_size:
        raise ValueError(f"--image-size {args.image_size} and --crop-size {args.crop_size} differ: the crop is the "
                         "model's input, pass one of them")
    flags = [flag for _, attr, flag in _FLAGS if getattr(args, attr) is not None]
    record = torchvision_init(args.init, args.arch)
    if not cdata.takes_eval_preprocess(args.dataset):
        if flags:
            raise ValueError(f"{', '.join(flags)}: only the tfds: and folder: datasets (decoded image files) take a "
                             f"resize/crop transform, not {args.dataset!r}")
        return None, None
    saved = run_val_preprocess(args.init) if record is None else None
    if record is None and saved is None and not flags:
        return None, None
    if record is not None:
        values = record.transform.as_dict()
        origin = [init_string(args.arch, record)]
    elif saved is not None:
        values, origin = saved, ["the run's config.json"]
    else:
        values = {"crop": args.image_size or 224, "interpolation": "bilinear"}
        origin = []
    if args.image_size is not None and args.crop_size is None:
        values["crop"] = args.image_size
        origin.append("--image-size")
    for key, attr, _ in _FLAGS:
        if getattr(args, attr) is not None:
            values[key] = getattr(args, attr)
    values.setdefault("resize", int(round(values["crop"] / 0.875)))
    return Preprocess.from_value(values), ", ".join(origin + flags)


def run_val_preprocess(init: str) -> dict | None:
    """The ``val_preprocess`` that the cnnjax run ``init`` names recorded in its ``config.json`` (the PIL eval
    transform it validated with, e.g. the torchvision weights' it was fine-tuned from), or None."""
    found = checkpoint.run_config(init)
    saved = found[1].get("val_preprocess") if found is not None else None
    return dict(saved) if isinstance(saved, dict) else None


def load_variables(init: str, arch: str, num_classes: int, step: int | None = None, ema: bool = False) -> dict:
    """Variables from a cnnjax run directory/checkpoint (its EMA weights with ``ema``) or
    ``torchvision:ARCH[.WEIGHTS]`` (cached or downloaded with a SHA-256 check; see
    :func:`cnnjax.weights.load_torchvision`)."""
    record = torchvision_init(init, arch)
    if record is None:
        return checkpoint.restore(init, step=step, ema=ema)
    if ema:
        raise ValueError("--use-ema applies to a cnnjax run trained with --ema-decay, not to torchvision weights")
    check_classifier(init, record, num_classes)
    from cnnjax import weights

    return weights.load_torchvision(arch, weights=record.name)



def saved_model_opt(init: str) -> tuple[str, ...]:
    """The ``--model-opt`` items of the cnnjax run that ``init`` names (its ``config.json``, in the run directory
    or above a checkpoint directory); () for torchvision weights or a run without them."""
    if init.startswith("torchvision:"):
        return ()
    found = checkpoint.run_config(init)
    return tuple(found[1].get("model_opt", ())) if found is not None else ()


def check_out(out: str | None) -> pathlib.Path | None:
    """``--out DIR`` created and proved writable before any data is read (a clear ``ValueError`` otherwise)."""
    if out is None:
        return None
    folder = pathlib.Path(out)
    err = unwritable(folder)
    if err is not None:
        raise ValueError(f"--out {out} is not a writable directory ({err.strerror or err}); choose another --out")
    return folder


def run(args: argparse.Namespace) -> dict:
    out = check_out(args.out)
    model_opt = tuple(args.model_opt) if args.model_opt else saved_model_opt(args.init)
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, batch_size=args.batch_size, precision=args.precision,
                      conv_impl=args.conv_impl, zero_init_residual="off", model_opt=model_opt)
    C.validate(cfg)
    spec, origin = resolve_preprocess(args)
    source = cdata.load(args.dataset, data_dir=args.data_dir, image_size=args.image_size, eval_preprocess=spec)
    info = source.info
    if spec is not None:
        preprocessing = {"method": "pil", **spec.as_dict(), "from": origin}
    else:
        preprocessing = {"method": "dataset", "image_size": info.image_size, "mean": list(info.mean),
                         "std": list(info.std)}
    model = build_model(cfg, source.info)
    models.check_input_size(model, source.info.image_size)
    variables = load_variables(args.init, args.arch, source.info.num_classes, args.step, ema=args.use_ema)
    result = evaluate_variables(model, variables, source, args.batch_size, progress=args.progress, confusion=True)
    matrix = result.pop("val_confusion")
    result = {"arch": args.arch, "dataset": args.dataset, "init": args.init, "ema": args.use_ema,
              "preprocessing": preprocessing, **result, "val_per_class_top1": report.per_class_top1(matrix)}
    if out is not None:
        summary = {k: result[k] for k in ("arch", "dataset", "init", "ema", "val_top1", "val_count")}
        if args.step is not None:
            summary["step"] = args.step
        report.write_confusion(out, matrix, info.class_names, summary)
    print(json.dumps(result))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    C.add_arguments(p, ["arch", "init"], required=["arch", "init"])
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest readable)")
    p.add_argument("--use-ema", action="store_true",
                   help="evaluate the run's moving average of the weights (a run trained with --ema-decay)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="also write DIR/per_class.json (per-class top-1, confusion matrix) and DIR/confusion.png")
    C.add_arguments(p, ["dataset", "data_dir"])
    p.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: the crop size of the val transform, else the dataset's)")
    p.add_argument("--resize-size", type=int, default=None,
                   help="folder:/tfds: val transform: resize the shorter side to this (default: the torchvision "
                        "arch's for --init torchvision:ARCH, else round(crop / 0.875))")
    p.add_argument("--crop-size", type=int, default=None,
                   help="folder:/tfds: val transform: centre crop, the model's input (default: --image-size, else "
                        "the torchvision arch's, else 224)")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help="folder:/tfds: val transform: resize interpolation, antialiased (default: the torchvision "
                        "arch's, else bilinear)")
    C.add_arguments(p, ["batch_size", "precision", "conv_impl", "progress"], defaults={"batch_size": 100})
    C.add_arguments(p, ["model_opt"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.arch not in models.names():
        p.error(models.registry.unknown_name_message(args.arch))
    return C.main_exit(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
