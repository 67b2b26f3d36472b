"""Datasets for training: ``load(spec, ...) -> DataSource``.

Specs (``DATASETS``):

* ``digits`` (the default): UCI handwritten digits, bundled; 8x8 gray upsampled to 32x32x1 (``digits.py``);
* ``mnist5k``: 5,000 MNIST digits, bundled; 28x28 gray resized to 32x32x1, the options of ``digits``
  (``mnist5k.py``);
* ``shapes[:key=value,...]``: procedurally generated shapes with region control (``shapes.py``);
* ``synthetic[:key=value,...]``: random images and labels made on the fly (``synthetic.py``);
* ``tfds:NAME[/CONFIG]``: a TFDS dataset already prepared under ``data_dir`` / ``$TFDS_DATA_DIR`` (``tfds.py``):
  stored as ArrayRecord it is read by index with TFDS's data source and the Grain + PIL pipeline of ``folder:``
  (no TensorFlow); stored as TFRecord (TFDS's default) through tf.data (TensorFlow needed);
* ``folder:PATH``: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` image files, or ``val/`` alone for
  evaluation (``folder.py``).

Every source yields dicts of NumPy arrays for this process: ``image`` float32 NHWC ``(local, S, S, C)`` normalised
with ``info.mean``/``info.std`` (raw pixels in ``[0, 1]``), ``label`` int32 ``(local,)``, ``mask`` bool ``(local,)``;
see :class:`~cnnjax.data.base.DataSource`. TensorFlow is imported only by TFRecord ``tfds:`` datasets;
``folder:`` and ArrayRecord ``tfds:`` decode with PIL through Grain (:mod:`cnnjax.data.imagerecords`,
:mod:`cnnjax.data.grainpipe`; their iterators have ``get_state()`` for exact resume), imported when such a
dataset is loaded.

``tfds:`` and ``folder:`` also take ``eval_preprocess``, a :class:`Preprocess` (resize, crop, interpolation,
mean, std): their val images are then decoded and transformed with PIL exactly as torchvision's
``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` eval transform (``preprocess.py``; per-architecture values:
:func:`cnnjax.weights.eval_preprocess`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnjax.data.base import DatasetInfo, DataSource, TrainView
from cnnjax.data.preprocess import Preprocess

DATASETS = ("digits", "mnist5k", "shapes", "synthetic", "tfds:NAME[/CONFIG]", "folder:PATH")
DEFAULT = "digits"
PREPROCESS_KINDS = ("tfds", "folder")  # the datasets that take eval_preprocess

__all__ = ["DATASETS", "DEFAULT", "PREPROCESS_KINDS", "DataSource", "DatasetInfo", "Preprocess", "TrainView", "load",
           "takes_eval_preprocess"]


def takes_eval_preprocess(spec: str) -> bool:
    """Whether the dataset named by ``spec`` accepts ``eval_preprocess`` (``tfds:`` and ``folder:``)."""
    return isinstance(spec, str) and spec.strip().partition(":")[0] in PREPROCESS_KINDS


def load(spec: str = DEFAULT, *, data_dir: str | None = None, image_size: int | None = None,
         seed: int = 0, eval_preprocess: Preprocess | Mapping[str, Any] | None = None, channels: int | None = None,
         workers: int | None = None, train_view: TrainView | None = None, ra_reps: int = 1,
         train_size: int | None = None, val_resize: int | None = None) -> DataSource:
    """Build the dataset named by ``spec``.

    Args:
        spec: one of ``DATASETS``; ``digits``/``shapes``/``synthetic`` take ``:key=value,...`` options.
        data_dir: where ``tfds:`` looks for prepared datasets (else ``$TFDS_DATA_DIR``); the base of a relative
            ``folder:`` path. Ignored by the built-in datasets.
        image_size: side in pixels of the square images batches come out at; each dataset has a default.
        seed: the run seed: train shuffling and augmentation (not the data of ``shapes``, see its ``data_seed``).
        eval_preprocess: ``tfds:`` and ``folder:`` only: a :class:`Preprocess` (or a mapping of its fields) for
            torchvision-exact val images; ``image_size`` then defaults to its ``crop`` and must equal it.
        channels: ``folder:`` only: 1 or 3 (default: 1 when every image is grayscale, else 3).
        workers: ``folder:`` and ArrayRecord ``tfds:``: Grain decoding processes (default ``$CNNJAX_DATA_WORKERS``
            or 0: threads); ignored by TFRecord ``tfds:`` (tf.data).
        train_view: how the host makes train images (:class:`TrainView`: the dataset's random crop on or off,
            ``rrc_scale`` for decoded files); default: the dataset's own crop. The host never flips: flips and
            the other per-image policies run on the device (:mod:`cnnjax.augment`).
        ra_reps, train_size, val_resize: repeated augmentation (every dataset with a fixed training set), the
            train crop side and the val resize before the centre crop (``tfds:`` and ``folder:``); see
            :meth:`DataSource.set_train_options`.

    Raises:
        ValueError: unknown spec or option, or a dataset that cannot be loaded (with the reason).
    """
    if (train_size is not None or val_resize is not None) and not takes_eval_preprocess(spec):
        raise ValueError(f"dataset {spec!r}: train_size / val_resize (--train-crop-size, --val-resize-size) apply "
                         "only to the tfds: and folder: datasets (decoded image files)")
    source = _load(spec, data_dir=data_dir, image_size=image_size, seed=seed, eval_preprocess=eval_preprocess,
                   channels=channels, workers=workers, train_view=train_view)
    if (ra_reps, train_size, val_resize) == (1, None, None):
        return source
    try:
        return source.set_train_options(ra_reps=ra_reps, train_size=train_size, val_resize=val_resize)
    except ValueError:
        source.close()
        raise


def _load(spec: str, *, data_dir, image_size, seed, eval_preprocess, channels, workers, train_view) -> DataSource:
    if not isinstance(spec, str):
        raise ValueError(f"dataset spec must be a string, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if channels is not None and kind != "folder":
        raise ValueError(f"dataset {spec!r}: channels applies only to the folder: dataset")
    if workers is not None and kind not in ("folder", "tfds"):
        raise ValueError(f"dataset {spec!r}: workers applies only to the folder: and tfds: datasets")
    if eval_preprocess is not None and kind not in PREPROCESS_KINDS:
        raise ValueError(f"dataset {spec!r}: eval_preprocess applies only to the tfds: and folder: datasets "
                         "(decoded image files)")
    view = {} if train_view is None else {"train_view": train_view}
    if kind == "digits":
        from cnnjax.data.digits import load_digits

        return load_digits(rest, image_size=image_size, seed=seed, **view)
    if kind == "mnist5k":
        from cnnjax.data.mnist5k import load_mnist5k

        return load_mnist5k(rest, image_size=image_size, seed=seed, **view)
    if kind == "shapes":
        from cnnjax.data.shapes import load_shapes

        return load_shapes(rest, image_size=image_size, seed=seed, **view)
    if kind == "synthetic":
        from cnnjax.data.synthetic import load_synthetic

        return load_synthetic(rest, image_size=image_size, seed=seed, **view)
    if kind == "tfds":
        from cnnjax.data.tfds import load_tfds

        return load_tfds(rest.strip(), data_dir=data_dir, image_size=image_size, seed=seed,
                         eval_preprocess=eval_preprocess, workers=workers, **view)
    if kind == "folder":
        from cnnjax.data.folder import load_folder

        return load_folder(rest, data_dir=data_dir, image_size=image_size, seed=seed,
                           eval_preprocess=eval_preprocess, channels=channels, workers=workers, **view)
    raise ValueError(f"unknown dataset {spec!r}: valid choices are {', '.join(DATASETS)}")
