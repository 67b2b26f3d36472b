"""In-memory datasets (digits, shapes, cached features): :class:`ArraySource`, NumPy arrays read batch by batch.

With Grain installed, batches are made one thread ahead of the training loop by a Grain stream
(:mod:`cnnjax.data.grainpipe`) whose state is checkpointable; without it, by a plain generator. Both give the same
batches (a batch is a function of (seed, epoch, batch index) only).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cnnjax.data import grainpipe
from cnnjax.data.base import (
    TAG_AUGMENT,
    Batch,
    DatasetInfo,
    DataSource,
    TrainView,
    batch_indices,
    epoch_permutation,
    make_rng,
    normalize,
    num_batches_for,
    pad_and_crop,
    process_rows,
    resize_images,
)


class ArraySource(DataSource):
    """A dataset held in memory as NumPy arrays (digits, shapes).

    Args:
        info: the dataset's info; ``info.image_size`` is the output size.
        train_images / val_images: NHWC arrays at any (source) size, any dtype (uint8 keeps memory low);
            ``raw = stored * scale`` must lie in ``[0, 1]``. Converted, resized and normalised per batch.
        train_labels / val_labels: int ``(N,)``.
        pad: train-time translation in output pixels (pad-and-crop with zeros); 0 switches it off.
        seed: the run seed (shuffling and augmentation).
        scale: factor from stored values to raw ``[0, 1]`` pixels (1/255 for uint8 images).
        train_view: ``crop=False`` switches the translation off (``--augment none``); no ``rrc_scale`` here.

    Flips are not made here: they run on the device (:mod:`cnnjax.augment`).
    """

    def __init__(self, info: DatasetInfo, train_images: np.ndarray, train_labels: np.ndarray,
                 val_images: np.ndarray, val_labels: np.ndarray, *, pad: int = 0, seed: int = 0,
                 scale: float = 1.0, train_view: TrainView = TrainView()):
        self.info = info
        self._data = {"train": (np.asarray(train_images), np.asarray(train_labels, np.int32)),
                      "val": (np.asarray(val_images), np.asarray(val_labels, np.int32))}
        for split, (x, y) in self._data.items():
            if x.ndim != 4 or x.shape[-1] != info.channels or len(x) != len(y):
                raise ValueError(f"{info.name} {split}: images {x.shape} / labels {y.shape} do not match "
                                 f"(N, H, W, {info.channels}) / (N,)")
        if train_view.rrc_scale is not None:
            raise ValueError(f"dataset {info.name!r}: rrc_scale (--rrc-scale) applies to decoded image files "
                             "(folder:, tfds:) only; this dataset's train augmentation is a pad-and-crop shift")
        self.pad = int(pad) if train_view.crop else 0
        self.seed, self.scale, self.train_view = int(seed), float(scale), train_view

    def _batches(self, split, global_batch_size, local, *, epoch, start_batch, process_index, process_count,
                 state=None):
        if not grainpipe.grain_available():  # the same batches, made on demand in this thread
            return self._read(split, split, global_batch_size, epoch=epoch, start_batch=start_batch,
                              process_index=process_index, process_count=process_count)
        nb = num_batches_for(split, len(self._data[split][1]), global_batch_size)
        make_batch = _ArrayBatches(self, split, global_batch_size, process_rows(global_batch_size, process_index,
                                                                                process_count), nb)

        def make(start: int) -> grainpipe.Stream:  # one thread makes whole batches, two ahead of the loop
            return grainpipe.Stream(make_batch, elements_per_batch=1, start=start, finalize=_identity, threads=1,
                                    batches_per_epoch=nb)

        if getattr(self, "_streams", None) is None:
            self._streams = grainpipe.Streams()
        return self._streams.epoch((split, global_batch_size, local, process_index), make, epoch=epoch,
                                   start_batch=start_batch, batches_per_epoch=nb, state=state,
                                   repeat=split != "train")

    def close(self) -> None:
        if getattr(self, "_streams", None) is not None:
            self._streams.close()

    def _plain_train_batches(self, global_batch_size, local, *, process_index, process_count):
        return self._read("train", "val", global_batch_size, epoch=0, start_batch=0,
                          process_index=process_index, process_count=process_count)

    def _read(self, data: str, split: str, global_batch_size: int, *, epoch: int, start_batch: int,
              process_index: int, process_count: int) -> Iterator[Batch]:
        """Batches of the ``data`` split read as ``split`` is (train: shuffled, augmented; val: in order)."""
        n = len(self._data[data][1])
        perm = epoch_permutation(n, self.seed, epoch, self.ra_reps, global_batch_size) if split == "train" else None
        rows = process_rows(global_batch_size, process_index, process_count)
        for b in range(start_batch, num_batches_for(split, n, global_batch_size)):
            yield self.batch(data, split, global_batch_size, epoch, b, rows, perm)

    def batch(self, data: str, split: str, global_batch_size: int, epoch: int, b: int, rows: slice,
              perm: np.ndarray | None) -> Batch:
        """Rows ``rows`` of global batch ``b`` of ``epoch``; ``perm`` is the epoch's order (train)."""
        images, labels = self._data[data]
        n = len(labels)
        size = self.info.image_size
        idx = batch_indices(split, n, global_batch_size, b, seed=self.seed, epoch=epoch, perm=perm)
        if split == "train":
            # Drawn for the whole global batch, then sliced: sharding does not change the result.
            rng = make_rng(self.seed, epoch, b, TAG_AUGMENT)
            offsets = rng.integers(0, 2 * self.pad + 1, size=(global_batch_size, 2))
        idx = idx[rows]
        mask = idx >= 0
        safe = np.where(mask, idx, 0)
        x = resize_images(images[safe].astype(np.float32) * np.float32(self.scale), size)
        if split == "train":
            x = pad_and_crop(x, self.pad, offsets[rows])
        x = normalize(x, self.info.mean, self.info.std)
        x[~mask] = 0.0
        y = np.where(mask, labels[safe], 0).astype(np.int32)
        return {"image": x, "label": y, "mask": mask}


def _identity(batch: Batch) -> Batch:
    return batch


class _ArrayBatches:
    """Batch number ``j`` (counted over epochs) of an :class:`ArraySource` split, for a Grain stream."""

    def __init__(self, source: ArraySource, split: str, global_batch_size: int, rows: slice, batches_per_epoch: int):
        self.source, self.split, self.global_batch_size = source, split, global_batch_size
        self.rows, self.batches_per_epoch = rows, batches_per_epoch
        self._perm: tuple[int, np.ndarray | None] = (-1, None)

    def __call__(self, j: int) -> Batch:
        epoch, b = divmod(int(j), self.batches_per_epoch)
        if self.split != "train":
            epoch, perm = 0, None
        else:
            if self._perm[0] != epoch:
                self._perm = (epoch, epoch_permutation(len(self.source._data["train"][1]), self.source.seed, epoch,
                                                       self.source.ra_reps, self.global_batch_size))
            perm = self._perm[1]
        return self.source.batch(self.split, self.split, self.global_batch_size, epoch, b, self.rows, perm)
