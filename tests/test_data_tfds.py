"""``tfds:NAME`` datasets: a tiny TFDS dataset generated offline into a temporary data_dir."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

import cnnjax.data as data  # noqa: E402
from cnnjax.data.tfds import import_tfds  # noqa: E402

tfds = import_tfds()
NUM_TRAIN, NUM_TEST = 22, 7


class CnnjaxTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """16x16 RGB images; example ``i`` of a split is filled with the value ``8 * i (+ 4 for test)``, label ``i % 3``.

    Not registered: ``tfds.builder`` must find it from the prepared files alone, as for a dataset prepared elsewhere.
    """

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, supervised_keys=("image", "label"),
            features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(16, 16, 3)),
                                                 "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(NUM_TRAIN, 0), "test": self._generate_examples(NUM_TEST, 4)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            yield i, {"image": np.full((16, 16, 3), 8 * i + offset, np.uint8), "label": i % 3}


def prepare(builder_cls, data_dir) -> str:
    """Generate and prepare the dataset of ``builder_cls`` into ``data_dir`` offline; returns ``data_dir``."""
    builder_cls(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(data_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare(CnnjaxTinyImages, tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def tiny(data_dir):
    return data.load("tfds:cnnjax_tiny_images", data_dir=data_dir, seed=2)


def _values(ds, batches):
    """The fill value of each row (undoing the normalisation), as ints."""
    raw = np.concatenate([b["image"] for b in batches]) * np.float32(ds.info.std) + np.float32(ds.info.mean)
    return np.rint(raw.reshape(len(raw), -1).max(axis=1) * 255).astype(int)


def test_tfds_info(tiny):
    i = tiny.info
    assert (i.name, i.num_classes, i.class_names) == ("tfds:cnnjax_tiny_images", 3, ["a", "b", "c"])
    assert (i.num_train, i.num_val, i.image_size, i.channels) == (NUM_TRAIN, NUM_TEST, 16, 3)
    assert tiny.val_split == "test"


def test_tfds_val_every_example_once(tiny):
    batches = list(tiny.batches("val", 4))
    assert len(batches) == tiny.num_batches("val", 4) == 2
    assert batches[0]["image"].shape == (4, 16, 16, 3) and batches[0]["image"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * 7 + [False])
    values = _values(tiny, batches)[mask]
    assert sorted(values.tolist()) == [8 * i + 4 for i in range(NUM_TEST)]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    np.testing.assert_array_equal(labels, ((values - 4) // 8) % 3)


def test_tfds_train_epoch_resume_sharding_determinism(tiny, data_dir):
    full = list(tiny.batches("train", 11, epoch=1))  # 22 = 2 * 11: every example once
    assert len(full) == 2 and all(b["mask"].all() for b in full)
    labels = np.concatenate([b["label"] for b in full])
    assert sorted(labels.tolist()) == sorted([i % 3 for i in range(NUM_TRAIN)])
    b4 = list(tiny.batches("train", 4, epoch=1))
    assert len(b4) == 5
    resumed = list(tiny.batches("train", 4, epoch=1, start_batch=3))
    for a, b in zip(b4[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    p0 = list(tiny.batches("train", 4, epoch=1, process_index=0, process_count=2))
    p1 = list(tiny.batches("train", 4, epoch=1, process_index=1, process_count=2))
    for w, a, b in zip(b4, p0, p1, strict=True):
        np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), w["image"])
    again = list(data.load("tfds:cnnjax_tiny_images", data_dir=data_dir, seed=2).batches("train", 4, epoch=1))
    for a, b in zip(b4, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = list(tiny.batches("train", 4, epoch=2))
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(b4, other))


def test_tfds_image_size_option(data_dir):
    ds = data.load("tfds:cnnjax_tiny_images", data_dir=data_dir, image_size=24)
    assert next(ds.batches("train", 2))["image"].shape == (2, 24, 24, 3)


def test_tfds_missing_dataset_fails_fast_and_offline(tmp_path, monkeypatch):
    from tensorflow_datasets.core.utils import gcs_utils

    tf = pytest.importorskip("tensorflow")
    calls = []

    def no_gcs(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"GCS accessed: {args}")

    monkeypatch.setattr(gcs_utils, "_is_gcs_disabled", False)  # load() must switch it back off
    # the helpers that really touch gs:// (the others return early while GCS is disabled)
    for fn in ("exists", "download_gcs_folder", "download_gcs_dataset"):
        monkeypatch.setattr(gcs_utils, fn, no_gcs)
    for fn in ("exists", "glob", "listdir", "isdir", "GFile"):
        orig = getattr(tf.io.gfile, fn)

        def guarded(path, *args, _orig=orig, **kwargs):
            if str(path).startswith("gs://"):
                no_gcs(path)
            return _orig(path, *args, **kwargs)

        monkeypatch.setattr(tf.io.gfile, fn, guarded)

    start = time.monotonic()
    with pytest.raises(ValueError, match="not prepared") as e:
        data.load("tfds:cifar10", data_dir=str(tmp_path))
    assert "tfds build cifar10" in str(e.value) and "never downloads" in str(e.value)
    with pytest.raises(ValueError, match="not found") as e:
        data.load("tfds:no_such_dataset_anywhere", data_dir=str(tmp_path))
    assert time.monotonic() - start < 5.0
    assert not calls and gcs_utils._is_gcs_disabled is True
    assert os.environ.get("NO_GCE_CHECK")
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created
    with pytest.raises(ValueError, match="namespaced"):
        data.load("tfds:huggingface:mnist", data_dir=str(tmp_path))


def test_tfds_plain_train_batches_every_example_once_unaugmented(tiny):
    """What a linear-probe feature cache reads: each train example once, with the val transform (a constant image
    stays constant: no crop/flip/colour change), the last batch padded."""
    batches = list(tiny.plain_batches("train", 5))
    mask = np.concatenate([b["mask"] for b in batches])
    assert len(batches) == 5 and mask.sum() == NUM_TRAIN and not mask[NUM_TRAIN:].any()
    images = np.concatenate([b["image"] for b in batches])[mask]
    assert np.ptp(images.reshape(len(images), -1, 3), axis=1).max() < 1e-6  # each channel constant
    assert sorted(_values(tiny, batches)[mask].tolist()) == [8 * i for i in range(NUM_TRAIN)]
