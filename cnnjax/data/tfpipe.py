"""tf.data image transforms of ``tfds:`` (TensorFlow is imported lazily, only here; ``folder:`` uses Grain).

All randomness is *stateless*: each example gets the seed ``(base, position)`` where ``base`` is a function of
(seed, epoch) and ``position`` is the example's row in the epoch (``batch * global_batch_size + row``), so an
augmented example does not depend on the pipeline's parallelism, on sharding or on where iteration started.

Transforms, on uint8 ``(h, w, C)`` images, ending in float32 ``(S, S, C)`` normalised with ``(x / 255 - mean) / std``:

* train, ``S > 64`` or an explicit ``rrc_scale``: random-resized-crop (area 8-100 % or ``rrc_scale``, aspect ratio
  3/4-4/3, up to 10 tries then the whole image) resized bilinearly with antialiasing to ``S x S``;
* train, ``S <= 64``: resize to ``S x S`` (no-op when the image already is), pad ``S // 8`` pixels of zeros per side
  (4 at 32x32), random crop ``S x S``;
* train without the crop (``--augment none``): the val transform;
* no flip here: flips run on the device (:mod:`cnnjax.augment`), for datasets that are not orientation-sensitive;
* val, ``S > 64`` (torchvision's eval transform): resize the shorter side to ``round(S / 0.875)`` (256 for 224)
  bilinearly with antialiasing, centre crop ``S x S``;
* val, ``S <= 64``: resize to ``S x S``;
* val with a given resize ``R`` (``--val-resize-size``), any ``S``: the shorter side to ``R``, centre crop ``S x S``.

Repeated augmentation (:func:`repeated`) repeats the encoded records before decoding, laid out per global batch as
:func:`cnnjax.data.base.repeated_order` does; each copy gets its own (position-keyed) seed.

(The val transform here differs from torchvision's PIL resize by up to 1/255 per pixel; the sources' exact,
per-architecture alternative is ``eval_preprocess``: :mod:`cnnjax.data.preprocess`, :mod:`cnnjax.data.pilpipe`.)
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from cnnjax.data.base import TAG_TF, MissingDependencyError, TrainView, make_rng
from cnnjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

SMALL = 64  # image sizes up to this use pad-and-crop instead of random-resized-crop
EVAL_CROP_FRACTION = 0.875


def import_tf(needed_by: str = "the tfds: datasets need TensorFlow for tf.data",
              packages: str = "tensorflow-cpu, tensorflow-datasets") -> Any:
    """Import TensorFlow without a GPU (the accelerator belongs to JAX), without the GCE metadata probe and
    quietly; ``MissingDependencyError`` ("``needed_by``: pip install 'cnnjax[data]' (``packages``)") if absent."""
    os.environ.setdefault("NO_GCE_CHECK", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no CPU-feature info lines at import
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # nor the oneDNN notice (tf.data image ops do not use it)
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(f"{needed_by}: pip install 'cnnjax[data]' ({packages})") from None

    with contextlib.suppress(RuntimeError, ValueError):  # raises once TF has initialised its devices
        tf.config.set_visible_devices([], "GPU")
    return tf


def epoch_base_seed(seed: int, epoch: int) -> int:
    """The first word of every example's stateless seed in ``epoch``."""
    return int(make_rng(seed, epoch, TAG_TF).integers(0, 2**62))


def channel_constants(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for RGB; their averages for grayscale."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (round(float(np.mean(IMAGENET_MEAN)), 4),) * channels, (round(float(np.mean(IMAGENET_STD)), 4),) * channels


def _resize(tf, image, hw):
    return tf.image.resize(image, hw, method="bilinear", antialias=True)


def train_transform(tf, image, seed, size: int, view: TrainView = TrainView()):
    """uint8 ``(h, w, C)`` + int64 seed ``(2,)`` -> float32 ``(size, size, C)`` in 0..255 (augmented; ``view``: the
    crop, :class:`~cnnjax.data.base.TrainView`)."""
    if not view.crop:
        return eval_transform(tf, image, size)
    channels = image.shape[-1]
    s_crop = tf.stack([seed[0], seed[1] * 4])
    if size <= SMALL and view.rrc_scale is None:
        x = _resize(tf, image, [size, size])
        pad = size // 8
        x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
        x = tf.image.stateless_random_crop(x, [size, size, channels], seed=s_crop)
    else:
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=s_crop,
            min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=view.rrc_scale or (0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        x = _resize(tf, tf.slice(image, begin, extent), [size, size])
    return tf.ensure_shape(x, [size, size, channels])


def eval_transform(tf, image, size: int, resize: int | None = None):
    """uint8 ``(h, w, C)`` -> float32 ``(size, size, C)`` in 0..255 (deterministic); ``resize``: the shorter side
    before the centre crop (default ``round(size / 0.875)``; given, it applies at any size)."""
    channels = image.shape[-1]
    if size <= SMALL and resize is None:
        return tf.ensure_shape(_resize(tf, image, [size, size]), [size, size, channels])
    short = int(resize) if resize is not None else int(round(size / EVAL_CROP_FRACTION))
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    h, w = hw[0], hw[1]
    # torchvision Resize(short): the shorter side becomes `short`, the other int(short * long / short_side).
    new_h = tf.where(h <= w, tf.constant(short, tf.float64), tf.floor(short * h / w))
    new_w = tf.where(h <= w, tf.floor(short * w / h), tf.constant(short, tf.float64))
    new_hw = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    x = _resize(tf, image, new_hw)
    top = tf.cast(tf.round(tf.cast(new_hw[0] - size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_hw[1] - size, tf.float64) / 2.0), tf.int32)
    x = tf.slice(x, tf.stack([top, left, 0]), [size, size, channels])
    return tf.ensure_shape(x, [size, size, channels])


def repeated(tf, ds, reps: int, global_batch_size: int, batches: int):
    """Repeated augmentation on a shuffled stream of examples (tuples): each example ``reps`` times, the rows
    of every global batch laid out as :func:`cnnjax.data.base.repeated_order` lays them out (grouped by copy
    number), ``batches`` global batches. Applied before decoding: only the records are repeated."""
    rows = batches * global_batch_size
    ds = ds.take(-(-rows // reps)).flat_map(lambda *ex: tf.data.Dataset.from_tensors(ex).repeat(reps))
    ds = ds.take(rows).batch(global_batch_size, drop_remainder=True).enumerate()

    def layout(b, ex):
        g = b * global_batch_size + tf.range(global_batch_size, dtype=tf.int64)
        order = tf.argsort(tf.math.floormod(g, reps), stable=True)
        return tuple(tf.gather(t, order) for t in ex)

    return ds.map(layout).unbatch()


def normalize(tf, x, mean, std):
    """float32 0..255 -> ``(x / 255 - mean) / std``."""
    return (x / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def finish(tf, ds, local: int):
    """Batch ``local`` rows, prefetch, fix the options for determinism."""
    options = tf.data.Options()
    options.deterministic = True
    return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(options)


def numpy_batches(ds):
    """Iterate a batched ``{'image', 'label', 'mask'}`` dataset as dicts of NumPy arrays with the interface's dtypes."""
    for item in ds.as_numpy_iterator():
        yield {"image": np.asarray(item["image"], np.float32), "label": np.asarray(item["label"], np.int32),
               "mask": np.asarray(item["mask"], bool)}
