"""``tfds:NAME[/CONFIG]``: a TFDS image-classification dataset ALREADY PREPARED under ``data_dir``.

Two pipelines, chosen by the file format the dataset was prepared in (``builder.info``'s format and its
alternative formats):

* **ArrayRecord** (prepared with ``tfds build NAME --file_format array_record``, ``download_and_prepare(
  file_format='array_record')``, or converted with ``tfds convert_format``): :class:`TFDSArrayRecordSource`, no
  TensorFlow. Examples are read by index through TFDS's random-access data source (``builder.as_data_source``,
  what ``tfds.data_source`` returns) with the image feature left encoded (``SkipDecoding``), and go through the
  same Grain pipeline as ``folder:`` (:mod:`cnnjax.data.imagerecords`): decoded with PIL in threads or Grain worker
  processes (``workers``, default ``$CNNJAX_DATA_WORKERS`` or 0), shuffled per epoch from (seed, epoch)
  (:func:`~cnnjax.data.base.epoch_permutation`, as every other source), augmented per example from (seed, epoch,
  position) with :mod:`cnnjax.data.pil_transforms` (random-resized-crop + flip above 64 pixels, pad-and-crop + flip
  at and below; val torchvision's resize/centre-crop eval transform, or ``eval_preprocess``'s), uint8 between
  processes, normalised per batch; each process decodes only its rows; the iterator's ``get_state()`` restores
  exactly through ``state=`` (what a checkpoint keeps). TensorFlow is never imported on this path (TFDS parses
  the stored ``tf.train.Example`` protos with NumPy/protobuf).
* **TFRecord** (TFDS's default format): :class:`TFDSSource`, tf.data, which needs TensorFlow (without it the
  error is one line naming ``pip install tensorflow-cpu`` and the ArrayRecord commands). Transforms of
  :mod:`cnnjax.data.tfpipe` (the same recipes, approximated with ``tf.image``); ``eval_preprocess``'s val images
  are decoded by PIL (converted to RGB) and transformed exactly as torchvision's ``Resize(resize, interpolation,
  antialias=True)``, ``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean, std)`` in a thread pool
  (:mod:`cnnjax.data.pilpipe`). Train order: TFDS file shuffling and a 10,000-example shuffle buffer, both seeded
  from (seed, epoch); ``start_batch`` is implemented with ``Dataset.skip`` (records are skipped before decoding);
  no iterator state (a resumed run restarts the epoch's stream at ``start_batch``).

Offline by construction: ``NO_GCE_CHECK=true`` is set (if unset) before TFDS is imported, TFDS's GCS switch
``tensorflow_datasets.core.utils.gcs_utils._is_gcs_disabled`` is forced to True, ``tfds.builder`` gets
``try_gcs=False``, namespaced names (``huggingface:...``, community datasets) are refused, and nothing ever calls
``download_and_prepare``: an unprepared dataset fails within seconds with instructions.

Common to both:

* ``data_dir``: the ``data_dir`` argument, else ``$TFDS_DATA_DIR``, else TFDS's default ``~/tensorflow_datasets``.
* Splits: ``train`` for train; ``validation`` for val, else ``test``.
* Features: the builder's ``supervised_keys`` (else ``image``/``label``); the label must be a ``ClassLabel``.
* Channels: the image feature's (1 or 3); 3 with ``eval_preprocess``. ``image_size`` defaults to the images'
  fixed side if it is <= 64 (e.g. 32 for cifar10), else 224; to ``eval_preprocess.crop`` (which it must equal
  when both are given).
* Normalisation: ImageNet mean/std (their averages for grayscale), or ``eval_preprocess``'s (then for the train
  split too).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from typing import Any

from cnnjax.data import grainpipe, pilpipe, tfpipe
from cnnjax.data.base import DatasetInfo, DataSource, MissingDependencyError, TrainView, make_rng, num_batches_for
from cnnjax.data.imagerecords import ImageRecordSource, default_workers
from cnnjax.data.preprocess import Preprocess, resolve_preprocess

SHUFFLE_BUFFER = 10_000
DEFAULT_SIZE = 224
ARRAY_RECORD = "array_record"
#: TFDS datasets of digits and letters (a mirrored glyph is another glyph): ``DatasetInfo.orientation_sensitive``.
ORIENTATION_SENSITIVE = frozenset({"mnist", "emnist", "kmnist", "svhn_cropped", "cmaterdb"})


def import_tfds() -> Any:
    """Import ``tensorflow_datasets`` with every GCS access switched off (TensorFlow is not imported)."""
    os.environ.setdefault("NO_GCE_CHECK", "true")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise MissingDependencyError("the tfds: datasets need tensorflow-datasets: pip install 'cnnjax[tfds]' "
                                     "(ArrayRecord-prepared datasets; TFRecord ones need TensorFlow too: "
                                     "'cnnjax[data]')") from None
    from tensorflow_datasets.core.utils import gcs_utils

    gcs_utils._is_gcs_disabled = True
    return tfds


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "DATA_DIR"
    return (f"cnnjax never downloads data. Prepare the dataset on a machine with internet access, e.g. "
            f"`tfds build {name} --data_dir {where} --file_format array_record` (read without TensorFlow; "
            f"without --file_format TFDS writes TFRecord, which needs TensorFlow) or "
            f"`tfds.builder({name!r}, data_dir={where!r}, file_format='array_record').download_and_prepare()` "
            f"(datasets with manual downloads, such as imagenet2012, need their archives in "
            f"{where}/downloads/manual), then copy {where} here and pass it as data_dir or $TFDS_DATA_DIR.")


def _tfrecord_hint(name: str, version_dir: str, formats: str) -> str:
    return (f"tfds dataset {name!r} is prepared as {formats} in {version_dir}, which cnnjax reads with TensorFlow "
            f"(tf.data), and TensorFlow is not installed: pip install tensorflow-cpu, or re-prepare it as "
            f"ArrayRecord, which cnnjax reads without TensorFlow: `tfds build {name} --data_dir NEW_DATA_DIR "
            f"--file_format array_record` (or convert these files where TensorFlow and apache-beam are installed: "
            f"`tfds convert_format --dataset_version_dir {version_dir} --out_file_format array_record`)")


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A prepared dataset's builder and what was checked about it (shared by both pipelines)."""

    name: str
    builder: Any
    info: DatasetInfo
    val_split: str
    image_key: str
    label_key: str
    eval_preprocess: Preprocess | None
    formats: tuple[str, ...]  # the file formats the dataset is stored in

    @property
    def array_record(self) -> bool:
        return ARRAY_RECORD in self.formats


def _open(name: str, *, data_dir: str | None, image_size: int | None,
          eval_preprocess: Preprocess | Mapping[str, Any] | None) -> _Prepared:
    """Find the prepared dataset (offline) and check it is an image classification dataset."""
    if not name or ":" in name:
        raise ValueError(f"tfds dataset: bad name {name!r}; expected tfds:NAME or tfds:NAME/CONFIG "
                         f"(namespaced/community datasets are not supported offline)")
    tfds = import_tfds()
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"tfds dataset {name!r}: not found in TFDS's catalogue nor under "
                         f"{data_dir or '~/tensorflow_datasets'} ({str(e).splitlines()[0]}). "
                         + _prepare_hint(name, data_dir)) from None
    if not builder.is_prepared():
        raise ValueError(f"tfds dataset {name!r} is not prepared under {builder.data_dir}. "
                         + _prepare_hint(name, data_dir))
    info = builder.info
    splits = info.splits
    if "train" not in splits:
        raise ValueError(f"tfds dataset {name!r} has no 'train' split (splits: {sorted(splits.keys())})")
    val_split = "validation" if "validation" in splits else "test" if "test" in splits else None
    if val_split is None:
        raise ValueError(f"tfds dataset {name!r} has neither a 'validation' nor a 'test' split "
                         f"(splits: {sorted(splits.keys())})")
    image_key, label_key = info.supervised_keys or ("image", "label")
    features = info.features
    if not isinstance(features, tfds.features.FeaturesDict) or image_key not in features \
            or label_key not in features:
        raise ValueError(f"tfds dataset {name!r}: expected features {image_key!r} and {label_key!r}, "
                         f"got {features}")
    image_f, label_f = features[image_key], features[label_key]
    if not isinstance(image_f, tfds.features.Image) or not isinstance(label_f, tfds.features.ClassLabel):
        raise ValueError(f"tfds dataset {name!r} is not an image classification dataset "
                         f"({image_key}: {type(image_f).__name__}, {label_key}: "
                         f"{type(label_f).__name__}; need Image and ClassLabel)")
    h, w, c = image_f.shape
    channels = c or 3
    if channels not in (1, 3):
        raise ValueError(f"tfds dataset {name!r}: images with {channels} channels are not supported")
    native = h if h is not None and h == w else None
    default = native if native is not None and native <= tfpipe.SMALL else DEFAULT_SIZE
    spec, size = resolve_preprocess(f"tfds:{name}", eval_preprocess, image_size, default)
    if spec is not None:
        channels = 3  # PIL converts to RGB, as torchvision's loader; train decodes to 3 channels too
        mean, std = spec.mean, spec.std
    else:
        mean, std = tfpipe.channel_constants(channels)
    formats = tuple(sorted(str(getattr(f, "value", f)) for f in info.available_file_formats()))
    return _Prepared(name=name, builder=builder, val_split=val_split, image_key=image_key, label_key=label_key,
                     eval_preprocess=spec, formats=formats,
                     info=DatasetInfo(name=f"tfds:{name}", num_classes=label_f.num_classes, image_size=size,
                                      channels=channels, num_train=splits["train"].num_examples,
                                      num_val=splits[val_split].num_examples, class_names=list(label_f.names),
                                      mean=mean, std=std,
                                      orientation_sensitive=orientation_sensitive(name)))


def orientation_sensitive(name: str) -> bool:
    """Whether tfds dataset ``name`` (``NAME[/CONFIG][:VERSION]``) holds glyphs that a mirror turns into another
    class: :data:`ORIENTATION_SENSITIVE` (digits and letters; not fashion_mnist, whose classes survive a mirror)."""
    return name.split("/")[0].split(":")[0].strip().lower() in ORIENTATION_SENSITIVE


def open_array_record(version_dir: str, split: str, image_key: str, builder: Any = None) -> Any:
    """TFDS's random-access data source over one split of the ArrayRecord files in ``version_dir``, with the
    image feature's stored (encoded) bytes left undecoded. No TensorFlow."""
    tfds = import_tfds()
    builder = builder if builder is not None else tfds.builder_from_directory(version_dir)
    return builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()},
                                  file_format=ARRAY_RECORD)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayRecordExamples:
    """The examples of one split of an ArrayRecord-prepared dataset, by index
    (:class:`~cnnjax.data.imagerecords.ImageRecords`): ``(io.BytesIO of the stored image file, label)``.

    Picklable for Grain's worker processes: the open data source is not pickled; a worker reopens the files
    (:func:`open_array_record`) at its first example."""

    version_dir: str
    split: str
    image_key: str
    label_key: str
    length: int
    source: Any = dataclasses.field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "source": None}

    def _source(self) -> Any:
        if self.source is None:  # (two threads may both open it: harmless)
            object.__setattr__(self, "source", open_array_record(self.version_dir, self.split, self.image_key))
        return self.source

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[io.BytesIO, int]:
        example = self._source()[int(index)]
        return io.BytesIO(example[self.image_key]), int(example[self.label_key])

    def describe(self, index: int) -> str:
        return f"{self.split} example {index} of {self.version_dir}"


class TFDSArrayRecordSource(ImageRecordSource):
    """Batches of ``(local, S, S, C)`` float32 NHWC images from an ArrayRecord-prepared TFDS dataset, through Grain
    and PIL, without TensorFlow (see the module docstring).

    Args:
        name, data_dir, image_size, seed, eval_preprocess: as for :func:`load_tfds`.
        workers: Grain decoding processes (0: threads of this process only; default
            :func:`~cnnjax.data.imagerecords.default_workers`).
        exact: decode JPEGs at full scale even when random-resized-crop shrinks them.
    """

    pipeline = "grain"

    def __init__(self, name: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
                 eval_preprocess: Preprocess | Mapping[str, Any] | None = None, workers: int | None = None,
                 exact: bool = False, train_view: TrainView = TrainView(), _prepared: _Prepared | None = None):
        grainpipe.import_grain()  # fail now, in one line, not at the first batch
        p = _prepared or _open(name, data_dir=data_dir, image_size=image_size, eval_preprocess=eval_preprocess)
        if not p.array_record:
            raise ValueError(f"tfds dataset {name!r} is not stored as ArrayRecord (formats: {', '.join(p.formats)})")
        self.name, self.seed, self.exact, self.builder = name, int(seed), bool(exact), p.builder
        self.train_view = train_view
        self.val_split, self.image_key, self.label_key = p.val_split, p.image_key, p.label_key
        self.eval_preprocess, self.info, self.what = p.eval_preprocess, p.info, f"tfds dataset {name!r}"
        self.workers = default_workers() if workers is None else int(workers)
        version_dir = os.fspath(p.builder.data_dir)
        self._examples = {}
        for data, split, n in (("train", "train", p.info.num_train), ("val", p.val_split, p.info.num_val)):
            source = open_array_record(version_dir, split, p.image_key, builder=p.builder)
            if len(source) != n:
                raise ValueError(f"tfds dataset {name!r}: split {split!r} has {len(source)} ArrayRecord examples, "
                                 f"its info says {n}")
            self._examples[data] = ArrayRecordExamples(version_dir, split, p.image_key, p.label_key, n, source)
        self._start_streams()

    def _records(self, data: str) -> ArrayRecordExamples:
        return self._examples[data]


class TFDSSource(DataSource):
    """Batches of ``(local, S, S, C)`` float32 NHWC images from a TFRecord-prepared TFDS dataset through tf.data
    (see the module docstring); needs TensorFlow."""

    pipeline = "tf.data"
    supports_sizes = True  # --train-crop-size, --val-resize-size (DataSource.set_train_options)

    def __init__(self, name: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
                 eval_preprocess: Preprocess | Mapping[str, Any] | None = None, train_view: TrainView = TrainView(),
                 _prepared: _Prepared | None = None):
        p = _prepared or _open(name, data_dir=data_dir, image_size=image_size, eval_preprocess=eval_preprocess)
        try:
            tfpipe.import_tf()
        except MissingDependencyError:
            raise MissingDependencyError(_tfrecord_hint(name, os.fspath(p.builder.data_dir), "/".join(p.formats))) \
                from None
        self.name, self.seed, self.builder, self.train_view = name, int(seed), p.builder, train_view
        self.val_split, self.image_key, self.label_key = p.val_split, p.image_key, p.label_key
        self.eval_preprocess, self.info = p.eval_preprocess, p.info

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
        size, channels = (self.train_size or self.info.image_size) if train else self.info.image_size, \
            self.info.channels
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
            if self.ra_reps > 1:
                ds = tfpipe.repeated(tf, ds, self.ra_reps, global_batch_size, nb)
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
                x = tfpipe.train_transform(tf, image, tf.stack([tf.constant(base, tf.int64), pos]), size,
                                           self.train_view)
            else:
                x = tfpipe.eval_transform(tf, image, size, resize=self.val_resize)
            return {"image": tfpipe.normalize(tf, x, mean, std), "label": label, "mask": valid}

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from tfpipe.numpy_batches(tfpipe.finish(tf, ds, local))


def load_tfds(name: str, *, data_dir: str | None = None, image_size: int | None = None, seed: int = 0,
              eval_preprocess: Preprocess | Mapping[str, Any] | None = None,
              workers: int | None = None, train_view: TrainView = TrainView()
              ) -> TFDSArrayRecordSource | TFDSSource:
    """Build the ``tfds:NAME[/CONFIG]`` source: :class:`TFDSArrayRecordSource` (Grain, no TensorFlow) when the
    dataset is stored as ArrayRecord, else :class:`TFDSSource` (tf.data); see the module docstring. ``workers``
    (Grain decoding processes) applies to ArrayRecord datasets only (tf.data sizes its own parallelism)."""
    p = _open(name, data_dir=data_dir, image_size=image_size, eval_preprocess=eval_preprocess)
    if p.array_record:
        return TFDSArrayRecordSource(name, seed=seed, workers=workers, train_view=train_view, _prepared=p)
    return TFDSSource(name, seed=seed, train_view=train_view, _prepared=p)

