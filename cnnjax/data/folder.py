"""``folder:PATH``: an image folder laid out as ``PATH/train/<class>/...`` and ``PATH/val/<class>/...``.

* Layout: ``PATH/val/`` is required. ``PATH/train/`` may be missing (an evaluation-only folder such as the
  ImageNet validation set sorted into class directories): the classes then come from ``val/``, ``num_train`` is 0
  and asking for the train split raises ``ValueError`` naming the missing ``train/`` directory.
* Files: ``.jpg .jpeg .png .bmp .gif`` (any case), found recursively under each class directory; other files are
  ignored. Every candidate's header is opened with PIL when the source is built; files PIL cannot open are
  skipped and reported in ONE ``UserWarning`` with their count. (A file whose header opens but whose pixels fail
  to decode later becomes a zero image with ``mask`` False, logged once.)
* Classes: the sorted names of the subdirectories of ``train/`` (of ``val/`` without ``train/``; hidden ones
  skipped), as torchvision's ``ImageFolder``; ``val/`` may lack classes but may not have unknown ones. An empty
  class directory, a missing ``val/`` or a folder with no class directory raises ``ValueError`` naming the path.
* Pixels: decoded by PIL and converted to RGB (grayscale, palette, RGBA, CMYK ... -> 3 channels, alpha dropped,
  like torchvision's ``ImageFolder``; 16-bit grayscale PNGs are scaled to 8 bits, not clipped). Train: augmented
  with tf.data (see :mod:`cnnjax.data.tfpipe`). Val: by
  default tf.data's resize/centre crop (:mod:`cnnjax.data.tfpipe`); with ``eval_preprocess`` (a
  :class:`~cnnjax.data.preprocess.Preprocess`), PIL exactly as torchvision's
  ``Resize(resize, interpolation, antialias=True)``, ``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean,
  std)``, in a thread pool (:mod:`cnnjax.data.pilpipe`; no TensorFlow needed for the val split then).
* Normalisation: ImageNet mean/std, or ``eval_preprocess``'s (for both splits). ``image_size`` defaults to 224,
  or to ``eval_preprocess.crop`` (which it must equal when both are given).
* A relative ``PATH`` is taken relative to ``data_dir`` when one is given.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnnjax.data import pilpipe, tfpipe
from cnnjax.data.base import (
    DatasetInfo,
    DataSource,
    epoch_permutation,
    num_batches_for,
    process_rows,
)
from cnnjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, resolve_preprocess, to_rgb

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


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_folder(root: str | os.PathLike) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Class names and, per split, (paths as a str array, labels int32) of the readable images under ``root``.

    Without ``root/train`` (an evaluation-only folder) the classes are ``root/val``'s and the result has no
    ``'train'`` entry."""
    root = Path(root)
    layout = f"expected {root}/train/<class>/... and {root}/val/<class>/..., or only {root}/val/<class>/... " \
             f"for evaluation"
    if not root.is_dir():
        raise ValueError(f"folder dataset: {root} is not a directory ({layout})")
    if not (root / "val").is_dir():
        raise ValueError(f"folder dataset: missing split directory {root / 'val'} ({layout})")
    splits = ("train", "val") if (root / "train").is_dir() else ("val",)
    classes = _class_dirs(root / splits[0])
    if not classes:
        raise ValueError(f"folder dataset: no class directories in {root / splits[0]}")
    val_classes = _class_dirs(root / "val")
    unknown = [c for c in val_classes if c not in classes]
    if unknown:
        raise ValueError(f"folder dataset: classes {unknown} in {root / 'val'} are not in {root / 'train'}")

    candidates: dict[str, list[tuple[str, int]]] = {}
    for split in splits:
        candidates[split] = []
        for name in classes if split == "train" else val_classes:
            files = _list_images(root / split / name)
            if not files:
                raise ValueError(f"folder dataset: empty class directory {root / split / name} "
                                 f"(no {'/'.join(EXTENSIONS)} files)")
            candidates[split] += [(f, classes.index(name)) for f in files]

    everything = [row for split in splits for row in candidates[split]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(_readable, [f for f, _ in everything]))
    bad = [f for (f, _), good in zip(everything, ok) if not good]
    if bad:
        warnings.warn(f"folder dataset {root}: skipped {len(bad)} unreadable image file(s), e.g. "
                      f"{', '.join(bad[:3])}", UserWarning, stacklevel=3)
    bad_set = set(bad)
    out = {}
    for split in splits:
        kept = [(f, y) for f, y in candidates[split] if f not in bad_set]
        counts = np.bincount([y for _, y in kept], minlength=len(classes))
        for name in classes if split == "train" else val_classes:
            if counts[classes.index(name)] == 0:
                raise ValueError(f"folder dataset: class directory {root / split / name} has no readable image")
        out[split] = (np.array([f for f, _ in kept], dtype=str), np.array([y for _, y in kept], dtype=np.int32))
    return classes, out


def _pil_open(path: bytes | str):
    """The file as an RGB PIL image (pixels loaded), like torchvision's ``ImageFolder`` loader (16-bit images
    scaled to 8 bits rather than clipped: :func:`cnnjax.data.preprocess.to_rgb`)."""
    from PIL import Image

    with Image.open(path.decode() if isinstance(path, bytes) else str(path)) as im:
        return to_rgb(im)


def _decode_failed(path, error: Exception) -> None:
    global _decode_failures
    _decode_failures += 1
    if _decode_failures == 1:
        _log.warning("folder dataset: cannot decode %s (%s); it gets mask=False (further failures not logged)",
                     path, error)


def _pil_decode(path: bytes) -> tuple[np.ndarray, np.bool_]:
    """File -> uint8 ``(h, w, 3)`` RGB and True, or a 1x1 zero image and False if decoding fails."""
    try:
        return np.asarray(_pil_open(path), dtype=np.uint8), np.True_
    except Exception as e:  # noqa: BLE001
        _decode_failed(path, e)
        return np.zeros((1, 1, 3), np.uint8), np.False_


def _pil_load(path: str, preprocess: Preprocess) -> tuple[np.ndarray | None, bool]:
    """File -> the ``eval_preprocess`` output and True, or (None, False) if decoding fails."""
    try:
        image = _pil_open(path)
    except Exception as e:  # noqa: BLE001
        _decode_failed(path, e)
        return None, False
    return preprocess(image), True


class FolderSource(DataSource):
    """Batches of ``(local, S, S, 3)`` float32 NHWC images from an image folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, image_size: int, seed: int = 0,
                 eval_preprocess: Preprocess | Mapping[str, Any] | None = None):
        if eval_preprocess is None:
            tfpipe.import_tf()  # fail now, not at the first batch, if TensorFlow is missing
        else:  # the val split needs no TensorFlow (the train split still imports it, at its first batch)
            eval_preprocess = Preprocess.from_value(eval_preprocess)
        self.root = Path(root)
        self.seed = int(seed)
        self.eval_preprocess = eval_preprocess
        if eval_preprocess is not None and eval_preprocess.crop != image_size:
            raise ValueError(f"folder dataset: image_size={image_size} differs from the eval_preprocess crop "
                             f"{eval_preprocess.crop}")
        classes, self._splits = scan_folder(self.root)
        mean, std = ((eval_preprocess.mean, eval_preprocess.std) if eval_preprocess is not None
                     else (IMAGENET_MEAN, IMAGENET_STD))
        self.info = DatasetInfo(name=f"folder:{self.root}", num_classes=len(classes), image_size=image_size,
                                channels=3, num_train=len(self._splits["train"][1]) if "train" in self._splits else 0,
                                num_val=len(self._splits["val"][1]), class_names=classes, mean=mean, std=std)

    def _check_split(self, split: str) -> None:
        if split == "train" and "train" not in self._splits:
            raise ValueError(f"folder dataset {self.root}: no train split: {self.root / 'train'} does not exist "
                             f"(a folder with only val/ can be evaluated, not trained on)")

    def num_batches(self, split: str, global_batch_size: int) -> int:
        self._check_split(split)
        return super().num_batches(split, global_batch_size)

    def batches(self, split: str, global_batch_size: int, **kwargs):
        self._check_split(split)
        return super().batches(split, global_batch_size, **kwargs)

    def _batches(self, split, global_batch_size, local, *, epoch, start_batch, process_index, process_count):
        return self._read(split, split, global_batch_size, local, epoch=epoch, start_batch=start_batch,
                          process_index=process_index, process_count=process_count)

    def _plain_train_batches(self, global_batch_size, local, *, process_index, process_count):
        self._check_split("train")
        return self._read("train", "val", global_batch_size, local, epoch=0, start_batch=0,
                          process_index=process_index, process_count=process_count)

    def _read(self, data: str, split: str, global_batch_size: int, local: int, *, epoch: int, start_batch: int,
              process_index: int, process_count: int):
        """Batches of the ``data`` split's files, read as ``split`` is (train: shuffled, augmented; val: in order,
        the eval transform, padded)."""
        paths, labels = self._splits[data]
        n, size = len(labels), self.info.image_size
        if split == "val" and self.eval_preprocess is not None:
            spec = self.eval_preprocess
            start = start_batch * global_batch_size
            yield from pilpipe.val_batches(
                zip(paths[start:].tolist(), labels[start:].tolist()), n=n, global_batch_size=global_batch_size,
                local=local, start_batch=start_batch, process_index=process_index,
                load=lambda path: _pil_load(path, spec), shape=(size, size, 3))
            return
        tf = tfpipe.import_tf()
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
            return {"image": tfpipe.normalize(tf, x, mean, std), "label": label, "mask": tf.logical_and(valid, ok)}

        ds = tf.data.Dataset.from_tensor_slices((paths[index], labels[index], mask, position.astype(np.int64)))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from tfpipe.numpy_batches(tfpipe.finish(tf, ds, local))


def load_folder(path: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
                eval_preprocess: Preprocess | Mapping[str, Any] | None = None) -> FolderSource:
    """Build the ``folder:PATH`` source (``PATH`` relative to ``data_dir`` if relative and ``data_dir`` given)."""
    if not path:
        raise ValueError("folder dataset: the spec needs a path, as in folder:/data/my_images")
    root = Path(path).expanduser()
    if not root.is_absolute() and data_dir is not None:
        root = Path(data_dir) / root
    spec, size = resolve_preprocess("folder", eval_preprocess, image_size, DEFAULT_SIZE)
    return FolderSource(root, image_size=size, seed=seed, eval_preprocess=spec)
