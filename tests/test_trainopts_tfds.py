"""``--ra-reps`` and ``--train-crop-size`` / ``--val-resize-size`` on ``tfds:`` datasets, both pipelines (tf.data
for TFRecord, Grain for ArrayRecord), on the tiny dataset of ``test_data_tfds`` (example ``i`` of the train split
is filled with ``8 * i``, so a row's value names its example)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from test_data_tfds import NUM_TRAIN, _values, ar_dir, data_dir  # noqa: E402, F401  (fixtures)

import cnnjax.data as data  # noqa: E402

NAME = "tfds:cnnjax_tiny_images"


def _check_repeated(src, batch=4, reps=2):
    """Each global batch holds ``batch / reps`` examples, copy c of example j at row ``c * batch / reps + j``;
    every example of the used part appears ``reps`` times (the last one may be cut); a mid-epoch start equals the
    uninterrupted epoch."""
    epoch = list(src.batches("train", batch, epoch=1))
    assert len(epoch) == NUM_TRAIN // batch
    ids = _values(src, epoch) // 8
    per = batch // reps
    for b in range(len(epoch)):
        rows = ids[b * batch:(b + 1) * batch]
        for j in range(per):
            assert len({rows[j + per * c] for c in range(reps)}) == 1
    counts = collections.Counter(ids.tolist())
    assert sum(c != reps for c in counts.values()) <= 1 and len(counts) == len(ids) // reps
    rest = list(src.batches("train", batch, epoch=1, start_batch=2))
    np.testing.assert_array_equal(_values(src, rest), ids[2 * batch:] * 8)
    return ids


def test_tfrecord_repeats_and_sizes(data_dir):  # noqa: F811
    pytest.importorskip("tensorflow")
    src = data.load(NAME, data_dir=data_dir, seed=2, ra_reps=2, train_size=24, val_resize=20)
    _check_repeated(src)
    assert next(iter(src.batches("train", 4)))["image"].shape == (4, 24, 24, 3)
    val = list(src.batches("val", 4))
    assert val[0]["image"].shape == (4, 16, 16, 3)  # val stays at the image size
    np.testing.assert_array_equal(np.sort(_values(src, val)[:7]), 8 * np.arange(7) + 4)  # each once


def test_arrayrecord_repeats_in_the_shared_order(ar_dir):  # noqa: F811
    src = data.load(NAME, data_dir=ar_dir, seed=2, ra_reps=2, train_size=24)
    _check_repeated(src)
    assert next(iter(src.batches("train", 4)))["image"].shape == (4, 24, 24, 3)
    src.close()
