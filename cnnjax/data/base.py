"""The common dataset interface and the NumPy helpers behind it.

Conventions used everywhere in :mod:`cnnjax.data`:

* images are NHWC: ``(batch, height, width, channels)``;
* "raw" pixels are float32 in ``[0, 1]`` (uint8 sources are divided by 255, the digits' 0..16 counts by 16);
* batches leave as ``(raw - mean) / std`` per channel, with ``mean``/``std`` from :class:`DatasetInfo` (raw units);
* every random choice comes from a :class:`numpy.random.SeedSequence` built from integers
  (``seed``, ``epoch``, batch index, a tag), never from global state, so a batch depends only on those numbers.

Nothing here imports TensorFlow or JAX.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

SPLITS = ("train", "val")

# Tags that keep the random streams of different purposes apart.
TAG_SHUFFLE = 0x5348
TAG_AUGMENT = 0x4147
TAG_SYNTH = 0x5359
TAG_TF = 0x5446

Batch = dict[str, np.ndarray]


class MissingDependencyError(ImportError):
    """A package a dataset needs is not installed; the message is one line naming what to install (the CLI
    prints it without a traceback, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a train loop need to know about a dataset.

    Attributes:
        name: the dataset's name (e.g. ``"digits"``, ``"tfds:cifar10"``).
        num_classes: number of label values; labels are ``0 .. num_classes - 1``.
        image_size: side in pixels of the square images that batches come out at (``H == W == image_size``).
        channels: ``C`` of the NHWC batches (1 for grayscale, 3 for RGB).
        num_train: examples in the train split (an epoch uses ``num_train // global_batch_size`` full batches).
        num_val: examples in the val split (all of them are visited, the last batch is padded).
        class_names: ``num_classes`` human-readable names, index = label.
        mean: per-channel mean of the raw ``[0, 1]`` pixels, subtracted before division by ``std``.
        std: per-channel standard deviation of the raw ``[0, 1]`` pixels.
        orientation_sensitive: a horizontal mirror changes what an example means (a digit's or a letter's glyph;
            a shape's region in ``shapes``' shift experiments): augmentation policy ``default`` never flips it.
    """

    name: str
    num_classes: int
    image_size: int
    channels: int
    num_train: int
    num_val: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    orientation_sensitive: bool = False


@dataclasses.dataclass(frozen=True)
class TrainView:
    """How the host makes a training image, before the on-device augmentation (:mod:`cnnjax.augment`: flips and
    the other per-image policies, MixUp/CutMix, erasing).

    Attributes:
        crop: the dataset's own random crop: random-resized crop (decoded files above 64 px), pad-and-crop shifts
            (small images, ``digits``); False (``--augment none``): train images are made as val images are.
        rrc_scale: the random-resized crop's area range ``(lo, hi)`` (``--rrc-scale``; torchvision's ``scale``),
            used at every image size; None: the default ``(0.08, 1)`` above 64 px, pad-and-crop at and below.
            Decoded-file datasets only (``folder:``, ``tfds:``).
    """

    crop: bool = True
    rrc_scale: tuple[float, float] | None = None

    def __post_init__(self):
        if self.rrc_scale is not None:
            lo, hi = self.rrc_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"rrc_scale must satisfy 0 < lo <= hi <= 1, got {self.rrc_scale}")


def _u64(x: int) -> int:
    """Map any Python int to a non-negative SeedSequence entropy word."""
    return int(x) % (1 << 64)


def make_rng(*words: int) -> np.random.Generator:
    """A PCG64 generator determined by the integers ``words`` (any sign)."""
    return np.random.default_rng(np.random.SeedSequence([_u64(w) for w in words]))


def epoch_permutation(n: int, seed: int, epoch: int, reps: int = 1, global_batch_size: int | None = None
                      ) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``: int64 ``(n,)``, a function of (seed, epoch) only.

    With ``reps > 1`` (repeated augmentation, :func:`repeated_order`) the epoch's ``n`` rows hold about ``n / reps``
    examples ``reps`` times each, laid out per global batch of ``global_batch_size`` rows (then required)."""
    perm = make_rng(seed, epoch, TAG_SHUFFLE).permutation(n)
    if reps == 1:
        return perm
    if global_batch_size is None:
        raise ValueError("repeated augmentation (reps > 1) needs the global batch size")
    return repeated_order(perm, reps, global_batch_size)


def repeated_order(perm: np.ndarray, reps: int, global_batch_size: int) -> np.ndarray:
    """Repeated augmentation (Hoffer et al. 2020; torchvision's ``RASampler``, from DeiT): the epoch order of
    ``perm``'s examples with each one ``reps`` times.

    As ``RASampler``: the list ``perm[0] x reps, perm[1] x reps, ...`` is cut to ``len(perm)`` rows (the epoch keeps
    its number of samples, so it visits about ``1 / reps`` of the examples), and each global batch is ``B``
    consecutive rows of it. ``RASampler`` deals the list out to the replicas in turn (``indices[rank::world]``),
    so the copies of an example are on different GPUs; here the rows of each global batch are grouped by copy
    number (every example's first copy, then every second copy, ...), so copies are ``B / reps`` rows apart: with
    D >= ``reps`` devices (each takes ``B / D`` consecutive rows) they land on different devices, and with fewer
    they are spread over the devices evenly -- without the order depending on the device count. Each row is
    augmented by its position, so the copies get different random crops."""
    perm = np.asarray(perm, dtype=np.int64)
    reps, g = int(reps), np.arange(len(perm))
    if reps < 1 or global_batch_size < 1:
        raise ValueError(f"need reps >= 1 and a positive batch size, got reps={reps}, batch={global_batch_size}")
    order = np.lexsort((g, g % reps, g // global_batch_size))  # by batch, then copy number, then list position
    return perm[g // reps][order]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: valid splits are {', '.join(map(repr, SPLITS))}")


def local_batch_size(global_batch_size: int, process_count: int, process_index: int) -> int:
    """Rows per process; raises ``ValueError`` unless ``global_batch_size`` splits evenly over the processes."""
    if not isinstance(global_batch_size, int | np.integer) or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got process_index={process_index}, "
                         f"process_count={process_count}")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}: "
                         f"each process must get the same number of rows")
    return global_batch_size // process_count


def num_batches_for(split: str, n: int, global_batch_size: int) -> int:
    """Batches per epoch: ``floor(n / B)`` for train (remainder dropped), ``ceil(n / B)`` for val (padded)."""
    check_split(split)
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return n // global_batch_size if split == "train" else -(-n // global_batch_size)


def batch_indices(split: str, n: int, global_batch_size: int, batch: int, *, seed: int, epoch: int,
                  perm: np.ndarray | None = None, reps: int = 1) -> np.ndarray:
    """Example indices of one GLOBAL batch, int64 ``(B,)``; ``-1`` marks a padding row (val only).

    ``perm`` is the epoch's permutation for train (computed from (seed, epoch) and ``reps`` if not given).
    """
    start = batch * global_batch_size
    if split == "train":
        if perm is None:
            perm = epoch_permutation(n, seed, epoch, reps, global_batch_size)
        return np.asarray(perm[start:start + global_batch_size], dtype=np.int64)
    idx = np.arange(start, start + global_batch_size, dtype=np.int64)
    idx[idx >= n] = -1
    return idx


def process_rows(global_rows: int, process_index: int, process_count: int) -> slice:
    """The rows ``[p * local, (p + 1) * local)`` of a global batch that process ``p`` owns."""
    local = global_rows // process_count
    return slice(process_index * local, (process_index + 1) * local)


# --------------------------------------------------------------------------------------------------------------------
# Image helpers (NumPy, NHWC).
# --------------------------------------------------------------------------------------------------------------------

def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` float32 matrix of 1-D linear interpolation.

    Half-pixel centres (``align_corners=False``), a triangle kernel widened by the scale factor when
    downsampling (antialiasing) and weights renormalised at the borders -- the same convention as
    ``jax.image.resize(..., method="linear")`` and ``torch``'s ``interpolate(mode="bilinear", antialias=True)``.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale - 0.5
    taps = np.arange(in_size)
    w = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - taps[None, :]) / support)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resize_images(images: np.ndarray, out_h: int, out_w: int | None = None) -> np.ndarray:
    """Bilinear resize of NHWC float images to ``(N, out_h, out_w, C)`` float32 (see :func:`resize_matrix`)."""
    out_w = out_h if out_w is None else out_w
    n, h, w, c = images.shape
    images = images.astype(np.float32, copy=False)
    if (h, w) == (out_h, out_w):
        return images
    rh, rw = resize_matrix(h, out_h), resize_matrix(w, out_w)
    return np.einsum("oh,nhwc,pw->nopc", rh, images, rw, optimize=True).astype(np.float32, copy=False)


def pad_and_crop(images: np.ndarray, pad: int, offsets: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Random translation: pad each side by ``pad`` pixels with ``fill``, then crop back to ``H x W``.

    ``offsets`` is int ``(N, 2)`` of (top, left) in ``[0, 2 * pad]``; ``(pad, pad)`` is the identity.
    """
    if pad <= 0:
        return images
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    rows = offsets[:, 0, None] + np.arange(h)[None, :]
    cols = offsets[:, 1, None] + np.arange(w)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``(raw - mean) / std`` per channel; NHWC float32 in, NHWC float32 out."""
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    return ((images - m) / s).astype(np.float32, copy=False)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of NHWC raw images, rounded to 4 decimals so they read well in logs."""
    x = images.astype(np.float64)
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(max(v, 1e-3)), 4) for v in std)


# --------------------------------------------------------------------------------------------------------------------
# Option parsing for specs such as ``shapes:num_train=2000,train_region=left``.
# --------------------------------------------------------------------------------------------------------------------

def parse_options(name: str, text: str, schema: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Parse ``key=value,key=value`` against ``schema`` (key -> converter); unknown keys raise ``ValueError``."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in schema:
            raise ValueError(f"bad option {item!r} for dataset {name!r}: expected key=value with key in "
                             f"{', '.join(sorted(schema))}")
        try:
            out[key] = schema[key](value.strip())
        except ValueError as e:
            raise ValueError(f"bad value for option {key!r} of dataset {name!r}: {value!r} ({e})") from None
    return out


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise ValueError("must be a positive integer")
    return v


def resolve_image_size(name: str, from_spec: int | None, from_arg: int | None, default: int) -> int:
    """The image size: the ``image_size`` argument of ``load`` or the spec's option (they must agree), else default."""
    if from_spec is not None and from_arg is not None and from_spec != from_arg:
        raise ValueError(f"dataset {name!r}: image_size={from_spec} in the spec conflicts with image_size={from_arg}")
    size = from_arg if from_arg is not None else from_spec if from_spec is not None else default
    if size < 1:
        raise ValueError(f"image_size must be positive, got {size}")
    return int(size)


# --------------------------------------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------------------------------------

class DataSource(abc.ABC):
    """A dataset that yields fixed-size, deterministic, per-process batches.

    Each batch is a dict of NumPy arrays for THIS process only (``local = global_batch_size // process_count``
    rows; process ``p`` gets rows ``[p * local, (p + 1) * local)`` of the global batch):

    * ``image``: float32 ``(local, H, W, C)`` NHWC, normalised ``(raw - info.mean) / info.std``
      with raw pixels in ``[0, 1]`` and ``H == W == info.image_size``, ``C == info.channels``;
    * ``label``: int32 ``(local,)`` in ``[0, info.num_classes)``;
    * ``mask``: bool ``(local,)``, False for padding rows (only in the last val batch).

    Train batches are shuffled per epoch from (seed, epoch), augmented from (seed, epoch, batch index) and the
    last incomplete batch is dropped; ``batches('train', B, epoch=e, start_batch=k)`` equals the batches after
    the first ``k`` of ``batches('train', B, epoch=e)``. Val batches are in a fixed order, unaugmented, and
    visit every example exactly once. :meth:`set_train_options` adds repeated augmentation (the train order of
    :func:`repeated_order`) and, for decoded image files, a train size and a val resize of their own.
    """

    info: DatasetInfo
    #: Training options (:meth:`set_train_options`): repeated augmentation, the train crop and the val resize.
    ra_reps: int = 1
    train_size: int | None = None
    val_resize: int | None = None
    #: Which of them this kind of source implements.
    supports_ra_reps: bool = True
    supports_sizes: bool = False

    def set_train_options(self, *, ra_reps: int = 1, train_size: int | None = None,
                          val_resize: int | None = None) -> DataSource:
        """Set, before the first batch is read, ``ra_reps`` (each train example ``ra_reps`` times per epoch with
        different augmentation: :func:`repeated_order`), ``train_size`` (the side train batches come out at, e.g.
        176; ``info.image_size`` stays the val side) and ``val_resize`` (the shorter side val images are resized
        to before the centre crop of ``info.image_size``). The sizes apply to decoded image files only
        (``tfds:``, ``folder:``). Returns ``self``; a value the source cannot honour raises ``ValueError``."""
        name = self.info.name
        for key, value in (("ra_reps", ra_reps), ("train_size", train_size), ("val_resize", val_resize)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)
                                      or value < 1):
                raise ValueError(f"dataset {name!r}: {key} must be a positive int, got {value!r}")
        if ra_reps > 1 and not self.supports_ra_reps:
            raise ValueError(f"dataset {name!r}: repeated augmentation (--ra-reps) needs a fixed training set")
        if (train_size is not None or val_resize is not None) and not self.supports_sizes:
            raise ValueError(f"dataset {name!r}: a separate train crop / val resize (--train-crop-size, "
                             "--val-resize-size) applies only to the tfds: and folder: datasets (decoded image files)")
        if val_resize is not None:
            if getattr(self, "eval_preprocess", None) is not None:
                raise ValueError(f"dataset {name!r}: val_resize (--val-resize-size) and eval_preprocess both set "
                                 "the val transform; give one")
            if val_resize < self.info.image_size:
                raise ValueError(f"--val-resize-size {val_resize} is smaller than the val crop {self.info.image_size} "
                                 "(--image-size): the crop would be zero-padded")
        self.ra_reps = int(ra_reps)
        self.train_size = None if train_size is None else int(train_size)
        self.val_resize = None if val_resize is None else int(val_resize)
        return self

    def num_batches(self, split: str, global_batch_size: int) -> int:
        """Batches in one pass over ``split``: train ``floor(num_train / B)``, val ``ceil(num_val / B)``."""
        check_split(split)
        n = self.info.num_train if split == "train" else self.info.num_val
        return num_batches_for(split, n, global_batch_size)

    def batches(self, split: str, global_batch_size: int, *, epoch: int = 0, start_batch: int = 0,
                process_index: int = 0, process_count: int = 1, state: dict | None = None) -> Iterator[Batch]:
        """Iterate over one epoch of ``split`` from batch ``start_batch`` on (see the class docstring).

        The iterator of a source with a stateful pipeline (``folder:``, ArrayRecord ``tfds:``) has ``get_state()``:
        JSON that, passed back as ``state`` with the same (epoch, start_batch), restores the pipeline's iterator
        exactly (what a checkpoint keeps). Stateless sources ignore ``state``."""
        check_split(split)
        local = local_batch_size(global_batch_size, process_count, process_index)
        total = self.num_batches(split, global_batch_size)
        if split == "train" and total == 0:
            raise ValueError(f"global_batch_size={global_batch_size} is larger than the {self.info.num_train} "
                             f"training examples of {self.info.name!r}: no full batch")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= total:
            raise ValueError(f"start_batch={start_batch} outside [0, {total}] for split {split!r}")
        extra = {} if state is None else {"state": state}
        return self._batches(split, global_batch_size, local, epoch=epoch, start_batch=start_batch,
                             process_index=process_index, process_count=process_count, **extra)

    def close(self) -> None:
        """Stop the source's background work (decoding processes and threads); a no-op for in-memory data."""
        return None

    def __enter__(self) -> DataSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def plain_batches(self, split: str, global_batch_size: int, *, process_index: int = 0,
                      process_count: int = 1) -> Iterator[Batch]:
        """Every example of ``split`` once, in index order, without augmentation (the val transform); the last
        batch is padded with ``mask`` False rows. For ``val`` this is ``batches('val', ...)``; for ``train`` it
        is what a linear-probe feature cache reads (see :mod:`train.feature_cache`)."""
        check_split(split)
        if split == "val":
            return self.batches("val", global_batch_size, process_index=process_index, process_count=process_count)
        local = local_batch_size(global_batch_size, process_count, process_index)
        return self._plain_train_batches(global_batch_size, local, process_index=process_index,
                                         process_count=process_count)

    def _plain_train_batches(self, global_batch_size: int, local: int, *, process_index: int,
                             process_count: int) -> Iterator[Batch]:
        raise ValueError(f"dataset {self.info.name!r} has no fixed training set to read without augmentation")

    @abc.abstractmethod
    def _batches(self, split: str, global_batch_size: int, local: int, *, epoch: int, start_batch: int,
                 process_index: int, process_count: int) -> Iterator[Batch]:
        """Arguments already validated."""

    def __repr__(self) -> str:
        i = self.info
        return (f"{type(self).__name__}({i.name!r}, {i.num_train} train / {i.num_val} val, "
                f"{i.image_size}x{i.image_size}x{i.channels}, {i.num_classes} classes)")
