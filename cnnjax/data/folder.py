"""``folder:PATH``: an image folder laid out as ``PATH/train/<class>/...`` and ``PATH/val/<class>/...``.

* Files: ``.jpg .jpeg .png .bmp .gif`` (any case), found recursively under each class directory; other files are
  ignored. Every candidate's header is opened with PIL when the source is built; files PIL cannot open are
  skipped and reported in ONE ``UserWarning`` with their count. (A file whose header opens but whose pixels fail
  to decode later becomes a zero image with ``mask`` False, logged once.)
* Classes: the sorted names of the subdirectories of ``train/`` (hidden ones skipped); ``val/`` may lack classes
  but may not have unknown ones. An empty class directory or a missing split raises ``ValueError`` naming the path.
* Pixels: decoded by PIL and converted to RGB (grayscale, palette, RGBA, CMYK ... -> 3 channels, alpha dropped,
  like torchvision's ``ImageFolder``); augmented with tf.data (see :mod:`cnnjax.data.tfpipe`), normalised with the
  ImageNet mean/std. ``image_size`` defaults to 224.
* A relative ``PATH`` is taken relative to ``data_dir`` when one is given.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from cnnjax.data import tfpipe
from cnnjax.data.base import (
    DatasetInfo,
    DataSource,
    epoch_permutation,
    num_batches_for,
    process_rows,
    resolve_image_size,
)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_SIZE = 224
_log = logging.getLogger(__name__)
_decode_failures = 0


def _readable(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018  (the header parsed)
        return True
    except Exception:  # noqa: BLE001  (anything PIL cannot open is skipped)
        return False


def _list_images(class_dir: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(EXTENSIONS))
    return found


def scan_folder(root: str | os.PathLike) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names and, per split, (paths as a str array, labels int32) of the readable images under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder dataset: {root} is not a directory (expected {root}/train/<class>/... "
                         f"and {root}/val/<class>/...)")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(f"folder dataset: missing split directory {root / split} "
                             f"(expected {root}/train/<class>/... and {root}/val/<class>/...)")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"folder dataset: no class directories in {root / 'train'}")
    val_classes = sorted(d.name for d in (root / "val").iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [c for c in val_classes if c not in classes]
    if unknown:
        raise ValueError(f"folder dataset: classes {unknown} in {root / 'val'} are not in {root / 'train'}")

    candidates: dict[str, list[tuple[str, int]]] = {}
    for split, names in (("train", classes), ("val", val_classes)):
        candidates[split] = []
        for name in names:
            files = _list_images(root / split / name)
            if not files:
                raise ValueError(f"folder dataset: empty class directory {root / split / name} "
                                 f"(no {'/'.join(EXTENSIONS)} files)")
            candidates[split] += [(f, classes.index(name)) for f in files]

    everything = candidates["train"] + candidates["val"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(_readable, [f for f, _ in everything]))
    bad = [f for (f, _), good in zip(everything, ok) if not good]
    if bad:
        warnings.warn(f"folder dataset {root}: skipped {len(bad)} unreadable image file(s), e.g. "
                      f"{', '.join(bad[:3])}", UserWarning, stacklevel=3)
    bad_set = set(bad)
    out = {}
    for split in ("train", "val"):
        kept = [(f, y) for f, y in candidates[split] if f not in bad_set]
        counts = np.bincount([y for _, y in kept], minlength=len(classes))
        names = classes if split == "train" else val_classes
        for name in names:
            if counts[classes.index(name)] == 0:
                raise ValueError(f"folder dataset: class directory {root / split / name} has no readable image")
        out[split] = (np.array([f for f, _ in kept], dtype=str), np.array([y for _, y in kept], dtype=np.int32))
    return classes, out


def _pil_decode(path: bytes) -> tuple[np.ndarray, np.bool_]:
    """File -> uint8 ``(h, w, 3)`` RGB and True, or a 1x1 zero image and False if decoding fails."""
    global _decode_failures
    from PIL import Image

    try:
        with Image.open(path.decode() if isinstance(path, bytes) else str(path)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8), np.True_
    except Exception as e:  # noqa: BLE001
        _decode_failures += 1
        if _decode_failures == 1:
            _log.warning("folder dataset: cannot decode %s (%s); it gets mask=False (further failures not logged)",
                         path, e)
        return np.zeros((1, 1, 3), np.uint8), np.False_


class FolderSource(DataSource):
    """Batches of ``(local, S, S, 3)`` float32 NHWC images from an image folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, image_size: int, seed: int = 0):
        tfpipe.import_tf()  # fail now, not at the first batch, if TensorFlow is missing
        self.root = Path(root)
        self.seed = int(seed)
        classes, self._splits = scan_folder(self.root)
        self.info = DatasetInfo(name=f"folder:{self.root}", num_classes=len(classes), image_size=image_size,
                                channels=3, num_train=len(self._splits["train"][1]),
                                num_val=len(self._splits["val"][1]), class_names=classes,
                                mean=tfpipe.IMAGENET_MEAN, std=tfpipe.IMAGENET_STD)

    def _batches(self, split, global_batch_size, local, *, epoch, start_batch, process_index, process_count):
        tf = tfpipe.import_tf()
        paths, labels = self._splits[split]
        n, size = len(labels), self.info.image_size
        nb = num_batches_for(split, n, global_batch_size)
        rows = process_rows(global_batch_size, process_index, process_count)
        if split == "train":
            order = epoch_permutation(n, self.seed, epoch)[: nb * global_batch_size]
        else:
            order = np.arange(nb * global_batch_size)
            order[order >= n] = -1
        position = np.arange(nb * global_batch_size).reshape(nb, global_batch_size)[start_batch:, rows].ravel()
        index = order.reshape(nb, global_batch_size)[start_batch:, rows].ravel()
        mask = index >= 0
        index = np.where(mask, index, 0)
        base = tfpipe.epoch_base_seed(self.seed, epoch)
        mean, std = self.info.mean, self.info.std
        train = split == "train"

        def load(path, label, valid, pos):
            image, ok = tf.numpy_function(_pil_decode, [path], [tf.uint8, tf.bool], stateful=False)
            image.set_shape([None, None, 3])
            ok.set_shape([])
            if train:
                x = tfpipe.train_transform(tf, image, tf.stack([tf.constant(base, tf.int64), pos]), size)
            else:
                x = tfpipe.eval_transform(tf, image, size)
            return {"image": tfpipe.normalise(tf, x, mean, std), "label": label, "mask": tf.logical_and(valid, ok)}

        ds = tf.data.Dataset.from_tensor_slices((paths[index], labels[index], mask, position.astype(np.int64)))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from tfpipe.numpy_batches(tfpipe.finish(tf, ds, local))


def load_folder(path: str, *, data_dir: str | None = None, image_size: int | None = None,
                seed: int = 0) -> FolderSource:
    """Build the ``folder:PATH`` source (``PATH`` relative to ``data_dir`` if relative and ``data_dir`` given)."""
    if not path:
        raise ValueError("folder dataset: the spec needs a path, as in folder:/data/my_images")
    root = Path(path).expanduser()
    if not root.is_absolute() and data_dir is not None:
        root = Path(data_dir) / root
    size = resolve_image_size("folder", None, image_size, DEFAULT_SIZE)
    return FolderSource(root, image_size=size, seed=seed)
