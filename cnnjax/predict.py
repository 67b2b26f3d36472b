"""``python -m cnnjax.predict --arch ARCH --init torchvision:ARCH|RUN_DIR IMAGE...``: what is in these images.

Prints the top-``k`` classes (name and softmax probability) of each image; ``--json`` prints one JSON object per
image instead (``image``, ``top``: a list of ``{"label", "name", "prob"}``; or ``error``).

* ``--init torchvision:ARCH[.WEIGHTS]``: torchvision's ImageNet-1k weights (``IMAGENET1K_V1`` unless WEIGHTS names
  another enum, e.g. ``IMAGENET1K_V2`` or ``DEFAULT``; the local cache, or a download with a SHA-256 check;
  :func:`cnnjax.weights.load_torchvision`), those weights' exact eval transform
  (:func:`cnnjax.weights.eval_preprocess`, e.g. resize 256 / centre crop 224, bilinear, ImageNet mean/std; 232 /
  224 for resnet50.IMAGENET1K_V2) and the 1000 ImageNet class names (``cnnjax/weights/imagenet_classes.txt``,
  torchvision's ``categories``);
* ``--init RUN_DIR`` (a ``train.main`` run directory or one of its checkpoint directories): the run's
  architecture options, input size, channels, normalisation and class names from its ``config.json``, and the
  val transform the run validated with (its ``val_preprocess``: the torchvision weights' eval transform it was
  fine-tuned from, when it validated with it; else above 64 px: resize ``round(S / 0.875)`` + centre crop
  ``S``; at and below: a plain resize to ``S x S``); ``--use-ema`` takes its weight average.

Images are decoded with PIL (any format it reads; converted as the training pipeline converts). A path that
does not exist or cannot be decoded gets a one-line error (on stderr, or as ``error`` with ``--json``) and the
others still run; the exit code is then 1 (2: bad arguments, nothing run).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnjax import models

CLASSES_FILE = pathlib.Path(__file__).parent / "weights" / "imagenet_classes.txt"


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (torchvision's weights' ``meta["categories"]``)."""
    return CLASSES_FILE.read_text().splitlines()


@dataclass
class Predictor:
    """A model ready to classify image files: ``variables``, the eval transform and the class names.

    Attributes:
        model: the flax module (``conv_impl`` as asked; ``xla`` is the portable default of export, ``fast``
            here).
        variables: ``{'params', 'batch_stats'}``.
        size / channels: the model's input ``(size, size, channels)``.
        spec: the PIL eval transform (:class:`~cnnjax.data.preprocess.Preprocess`) or None (plain resize).
        mean / std: per-channel normalisation of the ``[0, 1]`` pixels.
        class_names: one per output.
    """

    model: Any
    variables: dict
    size: int
    channels: int
    spec: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]

    def load_image(self, path: str) -> np.ndarray:
        """uint8 ``(size, size, channels)`` of one file; raises ``OSError``/``ValueError`` when unreadable."""
        from cnnjax.data import pil_transforms as T

        return T.eval_image(path, self.size, self.channels, self.spec)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC ``(N, size, size, channels)`` -> float32 ``(N, K)`` softmax probabilities."""
        import jax

        from cnnjax.data import pil_transforms as T

        x = T.normalize_batch(images, self.mean, self.std)
        if not hasattr(self, "_apply"):
            self._apply = jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, x, False).astype("float32")))
        return np.asarray(self._apply(self.variables, x))


def _run_config(init: str) -> tuple[pathlib.Path, dict]:
    """The ``config.json`` of the run that ``init`` names (:func:`cnnjax.checkpoint.run_config`)."""
    from cnnjax import checkpoint

    found = checkpoint.run_config(init)
    if found is None:
        raise ValueError(f"--init {init}: no config.json in it or above it; pass a train.main run directory or "
                         "torchvision:ARCH")
    return found


def _run_class_names(folder: pathlib.Path, config: dict, k: int) -> list[str]:
    names = config.get("class_names")
    if not names and (folder / "per_class.json").is_file():  # runs written before config.json kept them
        names = [c.get("name") for c in json.loads((folder / "per_class.json").read_text()).get("classes", [])]
    if not names or len(names) != k or not all(isinstance(n, str) for n in names):
        names = [f"class_{i}" for i in range(k)]
    return names


def run_transform(config: dict, size: int, mean: tuple[float, ...], std: tuple[float, ...]
                  ) -> tuple[Any, tuple[float, ...], tuple[float, ...]]:
    """``(spec, mean, std)`` a run validated with at ``size``: its ``config.json``'s ``val_preprocess`` (the
    torchvision weights' eval transform, with their mean/std) when it has one, else the default eval view of
    ``size`` (:func:`cnnjax.data.pil_transforms.default_eval`) and the run's ``mean`` / ``std``."""
    from cnnjax.data import pil_transforms as T
    from cnnjax.data.preprocess import Preprocess

    saved = config.get("val_preprocess")
    if isinstance(saved, dict):
        spec = Preprocess.from_value(saved)
        return spec, tuple(spec.mean), tuple(spec.std)
    return T.default_eval(size), mean, std


def build(arch: str, init: str, *, use_ema: bool = False, step: int | None = None, conv_impl: str = "fast"
          ) -> Predictor:
    """A :class:`Predictor` for ``--init`` (see the module docstring); ``ValueError`` for bad input."""
    from cnnjax import checkpoint

    if arch not in models.names():
        raise ValueError(models.registry.unknown_name_message(arch))
    from cnnjax.weights.torchvision import check_classifier, torchvision_init

    record = torchvision_init(init, arch)
    if record is not None:
        if use_ema:
            raise ValueError("--use-ema applies to a cnnjax run trained with --ema-decay, not to torchvision weights")
        check_classifier(init, record)
        from cnnjax import weights

        spec = weights.eval_preprocess(arch, record.name)
        variables = weights.load_torchvision(arch, weights=record.name)
        model = models.create(arch, conv_impl=conv_impl)
        return Predictor(model, variables, spec.crop, 3, spec, tuple(spec.mean), tuple(spec.std), imagenet_classes())
    folder, config = _run_config(init)
    if config.get("arch") != arch:
        raise ValueError(f"--init {init}: the run trained {config.get('arch')}, not --arch {arch}")
    for key in ("num_classes", "image_size", "channels"):
        if not isinstance(config.get(key), int):
            raise ValueError(f"--init {init}: its config.json has no {key}")
    k, size, channels = config["num_classes"], config["image_size"], config["channels"]
    if "mean" not in config or "std" not in config:  # runs written before config.json kept them
        from cnnjax import data as cdata

        info = cdata.load(config["dataset"], data_dir=config.get("data_dir"), image_size=size).info
        mean, std = info.mean, info.std
    else:
        mean, std = tuple(config["mean"]), tuple(config["std"])
    opts = dict(models.registry.parse_option(item) for item in config.get("model_opt", []))
    model = models.create(arch, num_classes=k, in_channels=channels, conv_impl=conv_impl, **opts)
    variables = checkpoint.restore(init, step=step, ema=use_ema)
    spec, mean, std = run_transform(config, size, tuple(mean), tuple(std))
    return Predictor(model, variables, size, channels, spec, mean, std, _run_class_names(folder, config, k))


def predict(predictor: Predictor, paths: Sequence[str], top: int = 5, batch_size: int = 32) -> list[dict]:
    """One dict per path, in order: ``{"image", "top": [{"label", "name", "prob"}, ...]}`` (the ``top`` most
    probable classes, most probable first) or ``{"image", "error"}`` for a file that cannot be read."""
    results: list[dict] = [{"image": p} for p in paths]
    good: list[tuple[int, np.ndarray]] = []
    for i, p in enumerate(paths):
        try:
            if not pathlib.Path(p).is_file():
                raise FileNotFoundError("no such file")
            good.append((i, predictor.load_image(p)))
        except Exception as err:  # noqa: BLE001 - any decoding failure is this file's error, not the run's
            results[i]["error"] = f"cannot read {p}: {getattr(err, 'strerror', None) or err}"
    k = min(top, len(predictor.class_names))
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        probs = predictor.probabilities(np.stack([img for _, img in chunk]))
        for (i, _), row in zip(chunk, probs):
            order = np.argsort(-row, kind="stable")[:k]
            results[i]["top"] = [{"label": int(j), "name": predictor.class_names[j], "prob": float(row[j])}
                                 for j in order]
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cnnjax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help="architecture (python -m cnnjax.summary lists them)")
    p.add_argument("--init", required=True, help="torchvision:ARCH[.WEIGHTS] (WEIGHTS: IMAGENET1K_V1 by default, "
                   "IMAGENET1K_V2, DEFAULT, ...) or a train.main run directory / checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--use-ema", action="store_true", help="the run's EMA weights (trained with --ema-decay)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest readable)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--conv-impl", default="fast", help="convolution algorithm (see train.main --help)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        print("error: --top and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        predictor = build(args.arch, args.init, use_ema=args.use_ema, step=args.step, conv_impl=args.conv_impl)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = predict(predictor, args.images, args.top, args.batch_size)
    for r in results:
        if args.json:
            print(json.dumps(r))
        elif "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['image']}:")
            for t in r["top"]:
                print(f"  {t['prob']:7.2%}  {t['name']} ({t['label']})")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
