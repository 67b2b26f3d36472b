"""``python -m cnnjax.data.to_folder SPEC DIR [--size S]``: write an in-memory dataset (``digits``, ``shapes``) as an
image folder ``DIR/train/<class>/*.png`` + ``DIR/val/<class>/*.png`` -- the layout ``folder:`` reads -- so the
practitioner's path (train on a folder of your own images) can be tried on any machine, offline.

Images are the dataset's raw pixels (no augmentation, no normalisation) resized to ``S x S`` (default: the
dataset's image size), 8-bit PNGs, grayscale for one channel.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

from cnnjax import data
from cnnjax.data.arrays import ArraySource
from cnnjax.data.base import resize_images


def write_folder(spec: str, out: str | pathlib.Path, size: int | None = None) -> pathlib.Path:
    """Write ``spec``'s train and val splits under ``out``; returns ``out``. Raises ``ValueError`` for a dataset
    that is not held in memory (``synthetic``, ``tfds:``, ``folder:``)."""
    source = data.load(spec)
    if not isinstance(source, ArraySource):
        raise ValueError(f"{spec!r} is not an in-memory dataset; choose digits or shapes")
    out = pathlib.Path(out)
    size = size or source.info.image_size
    names = [n.replace("/", "_") for n in source.info.class_names]
    for split, (images, labels) in source._data.items():
        raw = resize_images(images.astype(np.float32) * np.float32(source.scale), size)
        pixels = np.clip(np.round(raw * 255), 0, 255).astype(np.uint8)
        for i, (img, label) in enumerate(zip(pixels, labels, strict=True)):
            d = out / split / names[int(label)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(d / f"{i:05d}.png")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="digits or shapes[:options]")
    parser.add_argument("dir", help="output folder (train/ and val/ are created in it)")
    parser.add_argument("--size", type=int, default=None, help="side of the PNGs (default: the dataset's)")
    args = parser.parse_args(argv)
    try:
        out = write_folder(args.spec, args.dir, args.size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {split: sum(1 for _ in (out / split).rglob("*.png")) for split in ("train", "val")}
    print(f"wrote {counts['train']} train / {counts['val']} val PNGs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
