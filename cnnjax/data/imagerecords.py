"""Image datasets read by index through Grain: what ``folder:`` and ArrayRecord ``tfds:`` share.

A source here is a list of *records* per split (:class:`ImageRecords`: ``records[i] -> (what PIL.Image.open
takes, label)``: a file path for ``folder:``, the stored image bytes of a TFDS example for ``tfds:``); everything
after that is common:

* :class:`ImageElements`, the picklable element function of a :class:`~cnnjax.data.grainpipe.Stream`: element
  ``j`` is this process's row ``j % local`` of batch ``j // local`` (counted over epochs); train rows are shuffled
  by (seed, epoch) (:func:`~cnnjax.data.base.epoch_permutation`) and augmented by (seed, epoch, position in the
  epoch) with :func:`cnnjax.data.pil_transforms.train_image`; val rows are in index order with the eval transform
  (:func:`~cnnjax.data.pil_transforms.eval_image`), padded past the last example (``mask`` False). The source's
  train options (:meth:`~cnnjax.data.base.DataSource.set_train_options`): ``ra_reps`` repeats examples in the
  train order (:func:`~cnnjax.data.base.repeated_order`; each copy augmented by its own position),
  ``train_size`` is the train crop's side, ``val_resize`` the val resize before the centre crop. A record that
  cannot be read or decoded becomes a zero image with ``mask`` False (logged once);
* elements cross processes as uint8 and are normalised per batch in the training process (:class:`Finish`);
* :class:`ImageRecordSource`, the :class:`~cnnjax.data.base.DataSource` part: one live stream per (split, batch
  size, process) (:class:`~cnnjax.data.grainpipe.Streams`), ``get_state()`` / ``state=`` for exact resume, per-process
  rows, ``close()``.

A subclass supplies ``info``, ``seed``, ``workers``, ``eval_preprocess`` (or None), ``exact`` and
:meth:`ImageRecordSource._records`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import logging
import os
from typing import Any, Protocol

import numpy as np

from cnnjax.data import grainpipe
from cnnjax.data import pil_transforms as T
from cnnjax.data.base import TAG_AUGMENT, DataSource, TrainView, epoch_permutation, make_rng, num_batches_for
from cnnjax.data.preprocess import Preprocess

_log = logging.getLogger(__name__)
_decode_failures = 0


class ImageRecords(Protocol):
    """The examples of one split, by index (picklable: it goes to Grain's worker processes)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """(a path or binary file object for ``PIL.Image.open``, the label)."""

    def describe(self, index: int) -> str:
        """The example in a log line (its file, its split and index ...)."""


def default_workers() -> int:
    """Grain decoding processes: ``$CNNJAX_DATA_WORKERS``, else 0 (threads of the training process).

    Threads are the default because PIL releases the GIL while it decodes and resizes, so they scale with the
    cores without the second or two each worker process needs to start (and its memory); see BENCHMARKS.md
    ("Input pipeline") for 0 vs 1 vs 2 worker processes."""
    value = os.environ.get("CNNJAX_DATA_WORKERS", "").strip()
    return int(value) if value else 0


def _decode_failed(what: str, example: str, error: Exception) -> None:
    global _decode_failures
    _decode_failures += 1
    if _decode_failures == 1:
        _log.warning("%s: cannot decode %s (%s); it gets mask=False (further failures not logged)", what, example,
                     error)


@functools.lru_cache(maxsize=4)
def _order(n: int, seed: int, epoch: int, reps: int = 1, global_batch_size: int | None = None) -> np.ndarray:
    return epoch_permutation(n, seed, epoch, reps, global_batch_size)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageElements:
    """Element ``j`` of an image stream (picklable: it runs in Grain's worker processes).

    ``j`` counts this process's rows over epochs: batch ``b`` of epoch ``e`` is ``(j // local) = e * nb + b`` and
    its row ``row0 + j % local`` of the global batch. ``train`` elements are shuffled by (seed, epoch) and
    augmented by (seed, epoch, position); otherwise in index order, padded past the last record (``mask``
    False), with the eval transform ``eval_spec`` (None: a plain resize to ``size``).
    """

    records: ImageRecords
    train: bool
    global_batch_size: int
    local: int
    row0: int
    batches_per_epoch: int
    seed: int
    size: int
    channels: int
    eval_spec: Preprocess | None
    exact: bool = False
    what: str = "dataset"  # the source in log lines
    view: TrainView = TrainView()  # the train transform's crop (train elements only)
    ra_reps: int = 1  # repeated augmentation: each example this many times per epoch (augmented by position)

    def __call__(self, j: int) -> dict:
        b_abs, r = divmod(int(j), self.local)
        epoch, b = divmod(b_abs, self.batches_per_epoch)
        pos = b * self.global_batch_size + self.row0 + r
        n = len(self.records)
        index = (int(_order(n, self.seed, epoch, self.ra_reps, self.global_batch_size)[pos]) if self.train
                 else (pos if pos < n else -1))
        image = np.zeros((self.size, self.size, self.channels), np.uint8)
        if index < 0:
            return {"image": image, "label": np.int32(0), "mask": np.False_}
        label = 0
        try:
            source, label = self.records[index]
            if self.train:
                image = T.train_image(source, self.size, self.channels, make_rng(self.seed, epoch, pos, TAG_AUGMENT),
                                      exact=self.exact, scale=self.view.rrc_scale, crop=self.view.crop,
                                      eval_spec=self.eval_spec)
            else:
                image = T.eval_image(source, self.size, self.channels, self.eval_spec)
            ok = np.True_
        except Exception as e:  # noqa: BLE001  (an example that cannot be decoded is masked out, not fatal)
            _decode_failed(self.what, self.records.describe(index), e)
            ok = np.False_
        return {"image": image, "label": np.int32(label), "mask": ok}


@dataclasses.dataclass(frozen=True)
class Finish:
    """uint8 stacked elements -> the interface's batch (normalised float32, zero padding rows)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, item: dict) -> dict:
        mask = np.array(item["mask"], dtype=bool)  # copies: nothing may keep a worker's shared memory alive
        x = T.normalize_batch(np.asarray(item["image"]), self.mean, self.std)
        x[~mask] = 0.0
        return {"image": x, "label": np.where(mask, np.asarray(item["label"], np.int32), 0).astype(np.int32),
                "mask": mask}


class ImageRecordSource(DataSource):
    """Batches of ``(local, S, S, C)`` float32 NHWC images decoded with PIL from :class:`ImageRecords` through Grain
    (see the module docstring). Subclasses set the attributes below and implement :meth:`_records`; they call
    :meth:`_start_streams` in ``__init__``.

    Attributes:
        seed: the run seed (shuffling, augmentation).
        workers: Grain decoding processes (0: threads of this process only).
        eval_preprocess: the val transform (a :class:`Preprocess`), or None for the default
            (:func:`cnnjax.data.pil_transforms.default_eval`).
        exact: decode JPEGs at full scale even when random-resized-crop shrinks them.
        what: the source in log lines (e.g. ``"folder dataset"``).
        train_view: the train images' random crop (:class:`~cnnjax.data.base.TrainView`).
    """

    seed: int
    workers: int
    supports_sizes = True  # --train-crop-size, --val-resize-size (DataSource.set_train_options)
    eval_preprocess: Preprocess | None = None
    exact: bool = False
    what: str = "dataset"
    train_view: TrainView = TrainView()

    def _start_streams(self) -> None:
        self._streams = grainpipe.Streams()

    @abc.abstractmethod
    def _records(self, data: str) -> ImageRecords:
        """The records of split ``data`` (``'train'`` or ``'val'``)."""

    def _batches(self, split, global_batch_size, local, *, epoch, start_batch, process_index, process_count,
                 state=None):
        return self._read(split, split, global_batch_size, local, epoch=epoch, start_batch=start_batch,
                          process_index=process_index, state=state)

    def _plain_train_batches(self, global_batch_size, local, *, process_index, process_count):
        return self._read("train", "val", global_batch_size, local, epoch=0, start_batch=0,
                          process_index=process_index)

    def _read(self, data: str, split: str, global_batch_size: int, local: int, *, epoch: int, start_batch: int,
              process_index: int, state: dict | None = None) -> grainpipe.EpochIterator:
        """Batches of the ``data`` split's records, read as ``split`` is (train: shuffled, augmented; val: in order,
        the eval transform, padded)."""
        records = self._records(data)
        nb = num_batches_for(split, len(records), global_batch_size)
        train = split == "train"
        size, channels = self.info.image_size, self.info.channels
        eval_spec = self.eval_preprocess or (Preprocess(resize=self.val_resize, crop=size) if self.val_resize
                                             else T.default_eval(size))  # (its mean/std are not used: Finish's are)
        elements = ImageElements(
            records=records, train=train, global_batch_size=global_batch_size, local=local,
            row0=process_index * local, batches_per_epoch=nb, seed=self.seed,
            size=(self.train_size or size) if train else size, channels=channels, eval_spec=eval_spec,
            exact=self.exact, what=self.what, view=self.train_view, ra_reps=self.ra_reps if train else 1)
        finish = Finish(self.info.mean, self.info.std)

        def make(start: int) -> grainpipe.Stream:
            return grainpipe.Stream(elements, elements_per_batch=local, start=start, finalize=finish,
                                    workers=self.workers, batches_per_epoch=nb)

        return self._streams.epoch((data, split, global_batch_size, local, process_index), make, epoch=epoch,
                                   start_batch=start_batch, batches_per_epoch=nb, state=state, repeat=not train)

    def close(self) -> None:
        self._streams.close()
