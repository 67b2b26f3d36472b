"""``tfds:NAME[/CONFIG]``: a TFDS image-classification dataset ALREADY PREPARED under ``data_dir``.

Offline by construction: ``NO_GCE_CHECK=true`` is set (if unset) before TFDS is imported, TFDS's GCS switch
``tensorflow_datasets.core.utils.gcs_utils._is_gcs_disabled`` is forced to True, ``tfds.builder`` gets
``try_gcs=False``, namespaced names (``huggingface:...``, community datasets) are refused, and nothing ever calls
``download_and_prepare``: an unprepared dataset fails within seconds with instructions.

* ``data_dir``: the ``data_dir`` argument, else ``$TFDS_DATA_DIR``, else TFDS's default ``~/tensorflow_datasets``.
* Splits: ``train`` for train; ``validation`` for val, else ``test``.
* Features: the builder's ``supervised_keys`` (else ``image``/``label``); the label must be a ``ClassLabel``.
* Channels: the image feature's (1 or 3); 3 with ``eval_preprocess``. ``image_size`` defaults to the images'
  fixed side if it is <= 64 (e.g. 32 for cifar10), else 224; to ``eval_preprocess.crop`` (which it must equal
  when both are given).
* Transforms: those of :mod:`cnnjax.data.tfpipe` (random-resized-crop + flip above 64 pixels, pad-and-crop + flip
  at and below; torchvision's resize/centre-crop eval transform, approximated with tf.image), ImageNet mean/std
  (their averages for grayscale).
* ``eval_preprocess`` (a :class:`~cnnjax.data.preprocess.Preprocess`): the val images' stored bytes are decoded by
  PIL (converted to RGB) and transformed exactly as torchvision's ``Resize(resize, interpolation,
  antialias=True)``, ``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean, std)`` in a thread pool
  (:mod:`cnnjax.data.pilpipe`) -- what torchvision's ImageNet reference gets from the original JPEG files. Its
  mean/std then normalise the train split too.
* Train order: TFDS file shuffling and a 10,000-example shuffle buffer, both seeded from (seed, epoch);
  ``start_batch`` is implemented with ``Dataset.skip`` (records are skipped before decoding).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cnnjax.data import pilpipe, tfpipe
from cnnjax.data.base import DatasetInfo, DataSource, MissingDependencyError, make_rng, num_batches_for
from cnnjax.data.preprocess import Preprocess, resolve_preprocess

SHUFFLE_BUFFER = 10_000
DEFAULT_SIZE = 224


def import_tfds() -> Any:
    """Import ``tensorflow_datasets`` with every GCS access switched off."""
    os.environ.setdefault("NO_GCE_CHECK", "true")
    tfpipe.import_tf()
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise MissingDependencyError("the tfds: datasets need tensorflow-datasets: pip install 'cnnjax[data]'") \
            from None
    from tensorflow_datasets.core.utils import gcs_utils

    gcs_utils._is_gcs_disabled = True
    return tfds


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "DATA_DIR"
    return (f"cnnjax never downloads data. Prepare the dataset on a machine with internet access, e.g. "
            f"`tfds build {name} --data_dir {where}` or "
            f"`tfds.builder({name!r}, data_dir={where!r}).download_and_prepare()` (datasets with manual downloads, "
            f"such as imagenet2012, need their archives in {where}/downloads/manual), then copy {where} here "
            f"and pass it as data_dir or $TFDS_DATA_DIR.")


class TFDSSource(DataSource):
    """Batches of ``(local, S, S, C)`` float32 NHWC images from a prepared TFDS dataset (see the module docstring)."""

    def __init__(self, name: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
                 eval_preprocess: Preprocess | Mapping[str, Any] | None = None):
        if not name or ":" in name:
            raise ValueError(f"tfds dataset: bad name {name!r}; expected tfds:NAME or tfds:NAME/CONFIG "
                             f"(namespaced/community datasets are not supported offline)")
        tfds = import_tfds()
        data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
        self.name, self.seed = name, int(seed)
        try:
            builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(f"tfds dataset {name!r}: not found in TFDS's catalogue nor under "
                             f"{data_dir or '~/tensorflow_datasets'} ({str(e).splitlines()[0]}). "
                             + _prepare_hint(name, data_dir)) from None
        if not builder.is_prepared():
            raise ValueError(f"tfds dataset {name!r} is not prepared under {builder.data_dir}. "
                             + _prepare_hint(name, data_dir))
        self.builder = builder
        info = builder.info
        splits = info.splits
        if "train" not in splits:
            raise ValueError(f"tfds dataset {name!r} has no 'train' split (splits: {sorted(splits.keys())})")
        self.val_split = "validation" if "validation" in splits else "test" if "test" in splits else None
        if self.val_split is None:
            raise ValueError(f"tfds dataset {name!r} has neither a 'validation' nor a 'test' split "
                             f"(splits: {sorted(splits.keys())})")
        self.image_key, self.label_key = info.supervised_keys or ("image", "label")
        features = info.features
        if not isinstance(features, tfds.features.FeaturesDict) or self.image_key not in features \
                or self.label_key not in features:
            raise ValueError(f"tfds dataset {name!r}: expected features {self.image_key!r} and {self.label_key!r}, "
                             f"got {features}")
        image_f, label_f = features[self.image_key], features[self.label_key]
        if not isinstance(image_f, tfds.features.Image) or not isinstance(label_f, tfds.features.ClassLabel):
            raise ValueError(f"tfds dataset {name!r} is not an image classification dataset "
                             f"({self.image_key}: {type(image_f).__name__}, {self.label_key}: "
                             f"{type(label_f).__name__}; need Image and ClassLabel)")
        h, w, c = image_f.shape
        channels = c or 3
        if channels not in (1, 3):
            raise ValueError(f"tfds dataset {name!r}: images with {channels} channels are not supported")
        native = h if h is not None and h == w else None
        default = native if native is not None and native <= tfpipe.SMALL else DEFAULT_SIZE
        self.eval_preprocess, size = resolve_preprocess(f"tfds:{name}", eval_preprocess, image_size, default)
        if self.eval_preprocess is not None:
            channels = 3  # PIL converts to RGB, as torchvision's loader; train decodes to 3 channels too
            mean, std = self.eval_preprocess.mean, self.eval_preprocess.std
        else:
            mean, std = tfpipe.channel_constants(channels)
        self.info = DatasetInfo(name=f"tfds:{name}", num_classes=label_f.num_classes, image_size=size,
                                channels=channels, num_train=splits["train"].num_examples,
                                num_val=splits[self.val_split].num_examples, class_names=list(label_f.names),
                                mean=mean, std=std)

    def _batches(self, split, global_batch_size, local, *, epoch, start_batch, process_index, process_count):
        return self._read(split, split, global_batch_size, local, epoch=epoch, start_batch=start_batch,
                          process_index=process_index, process_count=process_count)

    def _plain_train_batches(self, global_batch_size, local, *, process_index, process_count):
        return self._read("train", "val", global_batch_size, local, epoch=0, start_batch=0,
                          process_index=process_index, process_count=process_count)

    def _read(self, data: str, split: str, global_batch_size: int, local: int, *, epoch: int, start_batch: int,
              process_index: int, process_count: int):
        """Batches of the ``data`` split's examples, read as ``split`` is (train: shuffled, augmented; val: in
        order, the eval transform, padded)."""
        tf = tfpipe.import_tf()
        tfds = import_tfds()
        train = split == "train"
        n = self.info.num_train if data == "train" else self.info.num_val
        nb = num_batches_for(split, n, global_batch_size)
        size, channels = self.info.image_size, self.info.channels
        mean, std = self.info.mean, self.info.std
        file_seed, buffer_seed = (int(v) for v in make_rng(self.seed, epoch, 0x7466).integers(0, 2**31, size=2))
        read_config = tfds.ReadConfig(shuffle_seed=file_seed, try_autocache=False, interleave_cycle_length=16,
                                      add_tfds_id=False)
        ds = self.builder.as_dataset(split="train" if data == "train" else self.val_split, shuffle_files=train,
                                     read_config=read_config,
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        if not train and self.eval_preprocess is not None:
            spec = self.eval_preprocess
            ds = ds.map(lambda ex: (ex[self.image_key], ex[self.label_key])).skip(start_batch * global_batch_size)
            yield from pilpipe.val_batches(
                ds.as_numpy_iterator(), n=n, global_batch_size=global_batch_size, local=local,
                start_batch=start_batch, process_index=process_index, load=lambda data: (spec(data), True),
                shape=(size, size, 3))
            return
        ds = ds.map(lambda ex: (ex[self.image_key], tf.cast(ex[self.label_key], tf.int32), tf.constant(True)))
        if train:
            ds = ds.shuffle(min(n, SHUFFLE_BUFFER), seed=buffer_seed, reshuffle_each_iteration=False)
            ds = ds.take(nb * global_batch_size)
        else:
            padding = nb * global_batch_size - n
            if padding:
                pad = ds.take(1).map(lambda img, y, m: (img, y, tf.constant(False))).repeat(padding)
                ds = ds.concatenate(pad)
        ds = ds.enumerate().skip(start_batch * global_batch_size)
        lo, hi = process_index * local, (process_index + 1) * local
        ds = ds.filter(lambda pos, ex: tf.logical_and(pos % global_batch_size >= lo, pos % global_batch_size < hi))
        base = tfpipe.epoch_base_seed(self.seed, epoch)

        def load(pos, ex):
            encoded, label, valid = ex
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False, dtype=tf.uint8)
            image.set_shape([None, None, channels])
            if train:
                x = tfpipe.train_transform(tf, image, tf.stack([tf.constant(base, tf.int64), pos]), size)
            else:
                x = tfpipe.eval_transform(tf, image, size)
            return {"image": tfpipe.normalize(tf, x, mean, std), "label": label, "mask": valid}

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from tfpipe.numpy_batches(tfpipe.finish(tf, ds, local))


def load_tfds(name: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
              eval_preprocess: Preprocess | Mapping[str, Any] | None = None) -> TFDSSource:
    """Build the ``tfds:NAME[/CONFIG]`` source (see the module docstring)."""
    return TFDSSource(name, data_dir=data_dir, image_size=image_size, seed=seed, eval_preprocess=eval_preprocess)

