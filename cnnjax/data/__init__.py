"""Datasets for training: ``load(spec, ...) -> DataSource``.

Specs (``DATASETS``):

* ``digits`` (the default): UCI handwritten digits, bundled; 8x8 gray upsampled to 32x32x1 (``digits.py``);
* ``shapes[:key=value,...]``: procedurally generated shapes with region control (``shapes.py``);
* ``synthetic[:key=value,...]``: random images and labels made on the fly (``synthetic.py``);
* ``tfds:NAME[/CONFIG]``: a TFDS dataset already prepared under ``data_dir`` / ``$TFDS_DATA_DIR`` (``tfds.py``);
* ``folder:PATH``: ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` image files (``folder.py``).

Every source yields dicts of NumPy arrays for this process: ``image`` float32 NHWC ``(local, S, S, C)`` normalised
with ``info.mean``/``info.std`` (raw pixels in ``[0, 1]``), ``label`` int32 ``(local,)``, ``mask`` bool ``(local,)``;
see :class:`~cnnjax.data.base.DataSource`. TensorFlow is imported only by ``tfds:`` and ``folder:``.
"""

from __future__ import annotations

from cnnjax.data.base import DatasetInfo, DataSource

DATASETS = ("digits", "shapes", "synthetic", "tfds:NAME[/CONFIG]", "folder:PATH")
DEFAULT = "digits"

__all__ = ["DATASETS", "DEFAULT", "DataSource", "DatasetInfo", "load"]


def load(spec: str = DEFAULT, *, data_dir: str | None = None, image_size: int | None = None,
         seed: int = 0) -> DataSource:
    """Build the dataset named by ``spec``.

    Args:
        spec: one of ``DATASETS``; ``digits``/``shapes``/``synthetic`` take ``:key=value,...`` options.
        data_dir: where ``tfds:`` looks for prepared datasets (else ``$TFDS_DATA_DIR``); the base of a relative
            ``folder:`` path. Ignored by the built-in datasets.
        image_size: side in pixels of the square images batches come out at; each dataset has a default.
        seed: the run seed: train shuffling and augmentation (not the data of ``shapes``, see its ``data_seed``).

    Raises:
        ValueError: unknown spec or option, or a dataset that cannot be loaded (with the reason).
    """
    if not isinstance(spec, str):
        raise ValueError(f"dataset spec must be a string, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if kind == "digits":
        from cnnjax.data.digits import load_digits

        return load_digits(rest, image_size=image_size, seed=seed)
    if kind == "shapes":
        from cnnjax.data.shapes import load_shapes

        return load_shapes(rest, image_size=image_size, seed=seed)
    if kind == "synthetic":
        from cnnjax.data.synthetic import load_synthetic

        return load_synthetic(rest, image_size=image_size, seed=seed)
    if kind == "tfds":
        from cnnjax.data.tfds import load_tfds

        return load_tfds(rest.strip(), data_dir=data_dir, image_size=image_size, seed=seed)
    if kind == "folder":
        from cnnjax.data.folder import load_folder

        return load_folder(rest, data_dir=data_dir, image_size=image_size, seed=seed)
    raise ValueError(f"unknown dataset {spec!r}: valid choices are {', '.join(DATASETS)}")
