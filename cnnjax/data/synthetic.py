"""``synthetic``: random images and labels of any size, made on the fly (for smoke tests and throughput runs).

Nothing is stored: every row of a batch is drawn from its own generator keyed by
(seed, split, epoch, global row) for train and (seed, split, example index) for val, so only this process's rows
are ever generated, resume and sharding are exact, and val is the same in every epoch. Images are standard
normal float32 -- already "normalised" (``mean = 0``, ``std = 1`` per channel); labels are uniform over the
classes. Train examples never repeat: ``num_train`` only sets the length of an epoch. There is nothing to learn.

Spec options: ``image_size`` (32), ``num_classes`` (10), ``channels`` (3), ``num_train`` (1024), ``num_val`` (256);
e.g. ``synthetic:image_size=224,num_classes=1000,num_train=12800``.
"""

from __future__ import annotations

import numpy as np

from cnnjax.data.base import (
    TAG_SYNTH,
    DatasetInfo,
    DataSource,
    TrainView,
    make_rng,
    num_batches_for,
    parse_options,
    positive_int,
    resolve_image_size,
)

DEFAULT_SIZE = 32


class SyntheticSource(DataSource):
    """Random NHWC float32 images ``(local, S, S, C)`` ~ N(0, 1) and int32 labels; see the module docstring."""

    supports_ra_reps = False  # no example is ever seen twice: nothing to repeat

    def __init__(self, info: DatasetInfo, seed: int = 0):
        self.info = info
        self.seed = int(seed)

    def _row(self, key: tuple[int, ...]) -> tuple[np.ndarray, int]:
        rng = make_rng(self.seed, TAG_SYNTH, *key)
        label = int(rng.integers(self.info.num_classes))
        s, c = self.info.image_size, self.info.channels
        return rng.standard_normal((s, s, c), dtype=np.float32), label

    def _batches(self, split, global_batch_size, local, *, epoch, start_batch, process_index, process_count):
        n = self.info.num_train if split == "train" else self.info.num_val
        s, c = self.info.image_size, self.info.channels
        for b in range(start_batch, num_batches_for(split, n, global_batch_size)):
            image = np.zeros((local, s, s, c), np.float32)
            label = np.zeros((local,), np.int32)
            mask = np.zeros((local,), bool)
            for i in range(local):
                g = b * global_batch_size + process_index * local + i  # row of the epoch
                if split == "train":
                    image[i], label[i] = self._row((0, epoch, g))
                    mask[i] = True
                elif g < n:
                    image[i], label[i] = self._row((1, g))
                    mask[i] = True
            yield {"image": image, "label": label, "mask": mask}


def load_synthetic(options: str = "", *, image_size: int | None = None, seed: int = 0,
                   train_view: TrainView = TrainView()) -> SyntheticSource:
    """Build the ``synthetic`` source; ``options`` is the text after ``synthetic:`` (see the module docstring).
    Its images are noise: no host augmentation (``train_view.crop`` changes nothing; ``rrc_scale`` is refused)."""
    if train_view.rrc_scale is not None:
        raise ValueError("dataset 'synthetic': rrc_scale (--rrc-scale) applies to decoded image files (folder:, "
                         "tfds:) only")
    opts = parse_options("synthetic", options, {"image_size": positive_int, "num_classes": positive_int,
                                                "channels": positive_int, "num_train": positive_int,
                                                "num_val": positive_int})
    size = resolve_image_size("synthetic", opts.get("image_size"), image_size, DEFAULT_SIZE)
    k, c = opts.get("num_classes", 10), opts.get("channels", 3)
    info = DatasetInfo(name="synthetic", num_classes=k, image_size=size, channels=c,
                       num_train=opts.get("num_train", 1024), num_val=opts.get("num_val", 256),
                       class_names=[f"class_{i}" for i in range(k)], mean=(0.0,) * c, std=(1.0,) * c)
    return SyntheticSource(info, seed=seed)
