"""``folder:PATH``: an image folder laid out as ``PATH/train/<class>/...`` and ``PATH/val/<class>/...``.

* Layout: ``PATH/val/`` is required. ``PATH/train/`` may be missing (an evaluation-only folder such as the
  ImageNet validation set sorted into class directories): the classes then come from ``val/``, ``num_train`` is 0
  and asking for the train split raises ``ValueError`` naming the missing ``train/`` directory.
* Files: ``.jpg .jpeg .png .bmp .gif`` (any case), found recursively under each class directory; other files are
  ignored. Every candidate's header is opened with PIL when the source is built (its size and mode are kept);
  files PIL cannot open are skipped and reported in ONE ``UserWarning`` with their count. (A file whose header
  opens but whose pixels fail to decode later becomes a zero image with ``mask`` False, logged once.)
* Classes: the sorted names of the subdirectories of ``train/`` (of ``val/`` without ``train/``; hidden ones
  skipped), as torchvision's ``ImageFolder``; ``val/`` may lack classes but may not have unknown ones. An empty
  class directory, a missing ``val/`` or a folder with no class directory raises ``ValueError`` naming the path.
* Size and channels: ``image_size`` defaults to the data's typical size -- the median shorter side of the
  images, at most 224 (:data:`DEFAULT_SIZE`) -- and ``channels`` to 1 when every image is grayscale, else 3
  (:attr:`FolderSource.typical` records what was found; :meth:`FolderSource.resized` changes the size without
  rescanning). ``eval_preprocess`` fixes both (its crop, RGB).
* Pixels: decoded with PIL in Grain worker processes/threads (:mod:`cnnjax.data.imagerecords`, the pipeline
  ArrayRecord ``tfds:`` datasets share; no TensorFlow) and transformed as :mod:`cnnjax.data.pil_transforms`
  describes: train random-resized-crop + flip (pad-and-crop + flip at 64 pixels and below), keyed by (seed,
  epoch, position in the epoch); val torchvision's ``Resize``/``CenterCrop`` eval transform, or
  ``eval_preprocess``'s (torchvision-exact, per architecture).
* Normalisation: ImageNet mean/std (their averages for grayscale), or ``eval_preprocess``'s.
* Multi-host: each process decodes only its rows ``[p * local, (p + 1) * local)`` of every global batch.
* A relative ``PATH`` is taken relative to ``data_dir`` when one is given.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnnjax.data import grainpipe
from cnnjax.data import pil_transforms as T
from cnnjax.data.base import DatasetInfo, TrainView
from cnnjax.data.imagerecords import ImageRecordSource, default_workers
from cnnjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, resolve_preprocess

__all__ = ["DEFAULT_SIZE", "EXTENSIONS", "FileRecords", "FolderSource", "Typical", "default_workers", "load_folder",
           "scan_folder"]

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DEFAULT_SIZE = 224  # the largest default image size (photos are trained at 224 unless --image-size says more)


def _header(path: str) -> tuple[int, int, bool] | None:
    """(width, height, grayscale) from the file's header, or None if PIL cannot open it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode in T.GRAY_MODES
    except Exception:  # noqa: BLE001  (anything PIL cannot open is skipped)
        return None


def _list_images(class_dir: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(EXTENSIONS))
    return found


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


@dataclasses.dataclass(frozen=True)
class Typical:
    """What a folder's images look like: the median (height, width) and shorter side, and whether all are gray."""

    height: int
    width: int
    short: int
    grayscale: bool

    def describe(self) -> str:
        return f"{self.height}x{self.width} {'grayscale' if self.grayscale else 'colour'}"


def scan_folder(root: str | os.PathLike) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]], Typical]:
    """Class names, per split (paths as a str array, labels int32) of the readable images under ``root``, and
    the images' :class:`Typical` look (over the train split, or val without one).

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
        headers = dict(zip((f for f, _ in everything), pool.map(_header, [f for f, _ in everything])))
    bad = [f for f, _ in everything if headers[f] is None]
    if bad:
        warnings.warn(f"folder dataset {root}: skipped {len(bad)} unreadable image file(s), e.g. "
                      f"{', '.join(bad[:3])}", UserWarning, stacklevel=3)
    out = {}
    for split in splits:
        kept = [(f, y) for f, y in candidates[split] if headers[f] is not None]
        counts = np.bincount([y for _, y in kept], minlength=len(classes))
        for name in classes if split == "train" else val_classes:
            if counts[classes.index(name)] == 0:
                raise ValueError(f"folder dataset: class directory {root / split / name} has no readable image")
        out[split] = (np.array([f for f, _ in kept], dtype=str), np.array([y for _, y in kept], dtype=np.int32))
    looks = np.array([headers[f] for f in out[splits[0]][0]], dtype=np.int64)  # (n, 3): w, h, gray
    typical = Typical(height=int(np.median(looks[:, 1])), width=int(np.median(looks[:, 0])),
                      short=int(np.median(np.minimum(looks[:, 0], looks[:, 1]))), grayscale=bool(looks[:, 2].all()))
    return classes, out, typical


@dataclasses.dataclass(frozen=True, eq=False)
class FileRecords:
    """The image files of one split and their labels (:class:`~cnnjax.data.imagerecords.ImageRecords`)."""

    paths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return str(self.paths[index]), int(self.labels[index])

    def describe(self, index: int) -> str:
        return str(self.paths[index])


class FolderSource(ImageRecordSource):
    """Batches of ``(local, S, S, C)`` float32 NHWC images from an image folder (see the module docstring).

    Args:
        root: the folder.
        image_size: the side ``S`` (None: :attr:`typical`'s shorter side, at most :data:`DEFAULT_SIZE`).
        channels: 1 or 3 (None: 1 when every image is grayscale).
        seed: the run seed (shuffling, augmentation).
        eval_preprocess: the val transform (a :class:`Preprocess`; fixes ``S`` to its crop and RGB).
        workers: Grain decoding processes (0: threads of this process only; default :func:`default_workers`).
        exact: decode JPEGs at full scale even when random-resized-crop shrinks them (see
            :mod:`cnnjax.data.pil_transforms`).
        train_view: the train images' random crop (:class:`~cnnjax.data.base.TrainView`).
    """

    what = "folder dataset"

    def __init__(self, root: str | os.PathLike, *, image_size: int | None = None, channels: int | None = None,
                 seed: int = 0, eval_preprocess: Preprocess | Mapping[str, Any] | None = None,
                 workers: int | None = None, exact: bool = False, train_view: TrainView = TrainView(), _scan=None):
        grainpipe.import_grain()  # fail now, in one line, not at the first batch
        if eval_preprocess is not None:
            eval_preprocess = Preprocess.from_value(eval_preprocess)
            if image_size is not None and eval_preprocess.crop != image_size:
                raise ValueError(f"folder dataset: image_size={image_size} differs from the eval_preprocess crop "
                                 f"{eval_preprocess.crop}")
            if channels not in (None, 3):
                raise ValueError("folder dataset: eval_preprocess is an RGB transform; channels must be 3")
            image_size, channels = eval_preprocess.crop, 3
        if channels not in (None, 1, 3):
            raise ValueError(f"folder dataset: channels must be 1 or 3, got {channels!r}")
        self.root, self.seed, self.exact, self.train_view = Path(root), int(seed), bool(exact), train_view
        self.eval_preprocess = eval_preprocess
        self.workers = default_workers() if workers is None else int(workers)
        self._scan = _scan or scan_folder(self.root)
        classes, self._splits, self.typical = self._scan
        size = image_size if image_size is not None else min(self.typical.short, DEFAULT_SIZE)
        channels = channels if channels is not None else (1 if self.typical.grayscale else 3)
        if eval_preprocess is not None:
            mean, std = eval_preprocess.mean, eval_preprocess.std
        elif channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (round(float(np.mean(IMAGENET_MEAN)), 4),), (round(float(np.mean(IMAGENET_STD)), 4),)
        self.info = DatasetInfo(name=f"folder:{self.root}", num_classes=len(classes), image_size=int(size),
                                channels=channels, num_train=len(self._splits["train"][1]) if "train" in self._splits
                                else 0, num_val=len(self._splits["val"][1]), class_names=classes, mean=mean, std=std)
        self._files = {split: FileRecords(*rows) for split, rows in self._splits.items()}
        self._start_streams()

    def resized(self, image_size: int | None = None, channels: int | None = None) -> FolderSource:
        """The same folder (no rescan) at another size and/or channel count (and the same train options)."""
        if self.eval_preprocess is not None and image_size not in (None, self.info.image_size):
            raise ValueError("folder dataset: the size is fixed by eval_preprocess")
        return self._copy(image_size or self.info.image_size, channels or self.info.channels, self.eval_preprocess)

    def with_eval_preprocess(self, eval_preprocess: Preprocess | Mapping[str, Any]) -> FolderSource:
        """The same folder (no rescan) with ``eval_preprocess`` as its val transform (RGB at its crop; the same
        train options, which must not include a val resize)."""
        spec = Preprocess.from_value(eval_preprocess)
        return self._copy(spec.crop, 3, spec)

    def _copy(self, image_size: int, channels: int, eval_preprocess: Preprocess | None) -> FolderSource:
        return FolderSource(self.root, image_size=image_size, channels=channels, seed=self.seed,
                            eval_preprocess=eval_preprocess, workers=self.workers, exact=self.exact,
                            train_view=self.train_view, _scan=self._scan).set_train_options(
            ra_reps=self.ra_reps, train_size=self.train_size, val_resize=self.val_resize)

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

    def _plain_train_batches(self, global_batch_size, local, *, process_index, process_count):
        self._check_split("train")
        return super()._plain_train_batches(global_batch_size, local, process_index=process_index,
                                            process_count=process_count)

    def _records(self, data: str) -> FileRecords:
        return self._files[data]


def load_folder(path: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
                eval_preprocess: Preprocess | Mapping[str, Any] | None = None, channels: int | None = None,
                workers: int | None = None, train_view: TrainView = TrainView()) -> FolderSource:
    """Build the ``folder:PATH`` source (``PATH`` relative to ``data_dir`` if relative and ``data_dir`` given)."""
    if not path:
        raise ValueError("folder dataset: the spec needs a path, as in folder:/data/my_images")
    root = Path(path).expanduser()
    if not root.is_absolute() and data_dir is not None:
        root = Path(data_dir) / root
    spec, size = resolve_preprocess("folder", eval_preprocess, image_size, 0) if eval_preprocess is not None \
        else (None, image_size)
    return FolderSource(root, image_size=size, seed=seed, eval_preprocess=spec, channels=channels, workers=workers,
                        train_view=train_view)
