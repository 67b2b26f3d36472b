"""``digits``: the UCI handwritten digits (1,797 8x8 grayscale images, 10 classes), bundled with the package.

The data is ``assets/digits.npz`` (``images`` uint8 ``(1797, 8, 8)`` with values 0..16 = "on" pixels counted in
4x4 blocks, ``labels`` uint8 ``(1797,)``); provenance and licence in ``assets/README.md``.

* Split: stratified 80/20 (1,438 train / 359 val), from a fixed seed that does not depend on the run seed.
* Pixels: raw = count / 16 in ``[0, 1]``; upsampled bilinearly (half-pixel centres, like
  ``jax.image.resize(method="linear")``) from 8x8 to ``image_size`` (default 32) when a batch is made.
* Channels: 1 by default; ``digits:channels=3`` repeats the gray channel (for RGB-only architectures).
* Normalisation: the train split's mean/std at 32x32 (the same constants for every ``image_size``).
* Train augmentation: random translation by pad-and-crop with zeros (pad 2 pixels at 32x32, ``image_size // 16``
  in general; ``pad=N`` sets it, ``pad=0`` switches augmentation off). No flips: a mirrored digit is a different
  glyph.

Subsets (for transfer experiments): ``classes=5+6+7+8+9`` keeps those digits, relabelled 0..k-1 in the order
given (val keeps every example of them); ``per_class=N`` keeps the first N training examples of each class.

Spec options: ``digits:channels=3,image_size=64,classes=0+1+2+3+4,per_class=10,pad=0``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from cnnjax.data.arrays import ArraySource
from cnnjax.data.base import (
    DatasetInfo,
    TrainView,
    channel_stats,
    parse_options,
    resize_images,
    resolve_image_size,
)

ASSET = Path(__file__).parent / "assets" / "digits.npz"
NUM_EXAMPLES = 1797
VAL_FRACTION = 0.2
SPLIT_SEED = 1797  # fixed: the split must not change with the run seed
DEFAULT_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A bundled grayscale digit set: ``asset`` holds ``images`` uint8 ``(num, side, side)`` with values
    ``0..levels`` and ``labels`` uint8 ``(num,)`` in 0..9; raw pixels are ``value / levels`` in ``[0, 1]``."""

    name: str
    asset: Path
    num: int
    side: int
    levels: int
    split_seed: int  # fixed: the split must not change with the run seed


DIGITS = Bundle("digits", ASSET, NUM_EXAMPLES, 8, 16, SPLIT_SEED)


@functools.lru_cache(maxsize=4)
def _raw(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    with np.load(bundle.asset) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    if images.shape != (bundle.num, bundle.side, bundle.side) or labels.shape != (bundle.num,):
        raise RuntimeError(f"corrupt {bundle.name} asset {bundle.asset}: shapes {images.shape}, {labels.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """The bundled arrays: images uint8 ``(1797, 8, 8)`` in 0..16 and labels int64 ``(1797,)`` in 0..9."""
    return _raw(DIGITS)


def split_indices(bundle: Bundle = DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 (train, val) indices: per class, ``round(0.2 * n_class)`` examples go to val."""
    _, labels = _raw(bundle)
    rng = np.random.default_rng(bundle.split_seed)
    val = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        val.append(rng.permutation(members)[: int(round(VAL_FRACTION * len(members)))])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def load_digits(options: str = "", *, image_size: int | None = None, seed: int = 0,
                train_view: TrainView = TrainView()) -> ArraySource:
    """Build the ``digits`` source; ``options`` is the text after ``digits:`` (see the module docstring)."""
    return load_bundle(DIGITS, options, image_size=image_size, seed=seed, train_view=train_view)


def load_bundle(bundle: Bundle, options: str = "", *, image_size: int | None = None, seed: int = 0,
                train_view: TrainView = TrainView()) -> ArraySource:
    """Build the source of a bundled digit set (``digits``, ``mnist5k``) from its spec ``options``: channels,
    image_size, classes, per_class, pad (see the module docstring)."""
    name = bundle.name
    opts = parse_options(name, options, {"channels": int, "image_size": int,
                                         "classes": functools.partial(_class_list, name=name),
                                         "per_class": int, "pad": int})
    channels = opts.get("channels", 1)
    if channels not in (1, 3):
        raise ValueError(f"{name}: channels must be 1 or 3, got {channels}")
    size = resolve_image_size(name, opts.get("image_size"), image_size, DEFAULT_SIZE)
    images, labels = _raw(bundle)
    stored = images[..., None]  # (N, side, side, 1) uint8; raw = value / levels in [0, 1]
    train_idx, val_idx = split_indices(bundle)
    mean, std = channel_stats(resize_images(stored[train_idx] / np.float32(bundle.levels), DEFAULT_SIZE))
    if channels == 3:
        stored = np.repeat(stored, 3, axis=-1)
        mean, std = mean * 3, std * 3
    classes = opts.get("classes", list(range(10)))
    relabel = np.full(10, -1, np.int64)
    relabel[classes] = np.arange(len(classes))
    labels = relabel[labels]
    train_idx, val_idx = train_idx[labels[train_idx] >= 0], val_idx[labels[val_idx] >= 0]
    if "per_class" in opts:
        if opts["per_class"] < 1:
            raise ValueError(f"{name}: per_class must be >= 1, got {opts['per_class']}")
        train_idx = np.sort(np.concatenate([train_idx[labels[train_idx] == c][: opts["per_class"]]
                                            for c in range(len(classes))]))
    pad = opts.get("pad", max(1, size // 16))
    if pad < 0:
        raise ValueError(f"{name}: pad must be >= 0, got {pad}")
    info = DatasetInfo(name=name, num_classes=len(classes), image_size=size, channels=channels,
                       num_train=len(train_idx), num_val=len(val_idx), class_names=[str(d) for d in classes],
                       mean=mean, std=std, orientation_sensitive=True)
    return ArraySource(info, stored[train_idx], labels[train_idx], stored[val_idx], labels[val_idx],
                       pad=pad, seed=seed, scale=1 / bundle.levels, train_view=train_view)


def _class_list(text: str, name: str = "digits") -> list[int]:
    """``'5+6+7'`` -> ``[5, 6, 7]`` (distinct digits 0..9)."""
    try:
        classes = [int(t) for t in text.split("+")]
    except ValueError:
        raise ValueError(f"{name}: classes must look like 0+1+2, got {text!r}") from None
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
        raise ValueError(f"{name}: classes must be distinct digits 0..9 joined by '+', got {text!r}")
    return classes
