"""``tfds:NAME`` datasets: a tiny TFDS dataset generated offline into temporary data_dirs, prepared as TFRecord
(tf.data, needs TensorFlow) and as ArrayRecord (TFDS's data source + Grain, no TensorFlow)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

from _batches import concat as _concat  # noqa: E402
from _batches import same as _same  # noqa: E402

import cnnjax.data as data  # noqa: E402
from cnnjax.data import tfpipe  # noqa: E402
from cnnjax.data.base import MissingDependencyError  # noqa: E402
from cnnjax.data.tfds import TFDSArrayRecordSource, TFDSSource, import_tfds  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

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
            png = io.BytesIO()  # encoded here (PIL) rather than by TFDS (tf.image): ArrayRecord needs no TensorFlow
            Image.fromarray(np.full((16, 16, 3), 8 * i + offset, np.uint8)).save(png, "PNG")
            yield i, {"image": png.getvalue(), "label": i % 3}


def prepare(builder_cls, data_dir, file_format: str | None = None) -> str:
    """Generate and prepare the dataset of ``builder_cls`` into ``data_dir`` offline (TFDS's default TFRecord, or
    ``file_format``); returns ``data_dir``."""
    builder_cls(data_dir=str(data_dir)).download_and_prepare(
        file_format=file_format, download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(data_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    pytest.importorskip("tensorflow")  # TFDS writes TFRecord files with TensorFlow
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
    assert type(tiny) is TFDSSource and tiny.pipeline == "tf.data"


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


# --------------------------------------------------------------- ArrayRecord: TFDS data source + Grain, no TF


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory):
    pytest.importorskip("array_record")
    pytest.importorskip("grain")
    return prepare(CnnjaxTinyImages, tmp_path_factory.mktemp("tfds_ar"), file_format="array_record")


@pytest.fixture(scope="module")
def ar(ar_dir):
    with data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, seed=2) as src:
        yield src


def test_arrayrecord_info(ar, ar_dir):
    assert type(ar) is TFDSArrayRecordSource and ar.pipeline == "grain"
    i = ar.info
    assert (i.name, i.num_classes, i.class_names) == ("tfds:cnnjax_tiny_images", 3, ["a", "b", "c"])
    assert (i.num_train, i.num_val, i.image_size, i.channels) == (NUM_TRAIN, NUM_TEST, 16, 3)
    assert ar.val_split == "test" and ar.workers == 0
    assert sorted(p.name.split(".")[1].split("-")[0] for p in pathlib.Path(ar_dir).glob("*/*/*-*.*")) \
        == ["array_record", "array_record"]  # nothing but ArrayRecord shards: this is not the TFRecord path


def test_arrayrecord_val_batches_and_plain_train_batches(ar):
    """Val: every example once in the stored order, unaugmented (the fill value comes back exactly), the last batch
    padded; two passes are the same. ``plain_batches('train')``: each train example once, constant images kept."""
    batches = list(ar.batches("val", 4))
    assert len(batches) == ar.num_batches("val", 4) == 2
    assert batches[0]["image"].shape == (4, 16, 16, 3) and batches[0]["image"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * 7 + [False])
    values = _values(ar, batches)[mask]
    assert sorted(values.tolist()) == [8 * i + 4 for i in range(NUM_TEST)]
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[mask], ((values - 4) // 8) % 3)
    assert labels[~mask].tolist() == [0] and not np.concatenate([b["image"] for b in batches])[~mask].any()
    _same(list(ar.batches("val", 4)), batches)
    plain = list(ar.plain_batches("train", 5))
    pmask = np.concatenate([b["mask"] for b in plain])
    assert len(plain) == 5 and pmask.sum() == NUM_TRAIN and not pmask[NUM_TRAIN:].any()
    images = np.concatenate([b["image"] for b in plain])[pmask]
    assert np.ptp(images.reshape(len(images), -1, 3), axis=1).max() < 1e-6
    assert sorted(_values(ar, plain)[pmask].tolist()) == [8 * i for i in range(NUM_TRAIN)]


def test_arrayrecord_train_augmentation_determinism_and_shards(ar, ar_dir):
    """Train: an epoch visits every example once; 16-pixel images get pad-and-crop (zero borders) + flip, so each
    row holds only its fill value and zeros, and its label is the fill's; the batches are a function of (seed,
    epoch) (a new source gives the same, another epoch another order); the shards of 2 processes are the rows of
    the global batches; ``start_batch=k`` is the tail."""
    full = _concat(ar.batches("train", 11, epoch=1))  # 22 = 2 * 11
    assert full["mask"].all() and len(full["label"]) == NUM_TRAIN
    raw = np.rint((full["image"] * np.float32(ar.info.std) + np.float32(ar.info.mean)) * 255).astype(int)
    fills = raw.reshape(NUM_TRAIN, -1).max(axis=1)
    assert sorted(fills.tolist()) == [8 * i for i in range(NUM_TRAIN)]
    np.testing.assert_array_equal(full["label"], (fills // 8) % 3)
    for x, f in zip(raw, fills, strict=True):
        assert set(np.unique(x).tolist()) <= {0, int(f)}
    assert (raw.reshape(NUM_TRAIN, -1) == 0).any(axis=1).sum() > NUM_TRAIN // 2  # most crops are shifted

    b4 = list(ar.batches("train", 4, epoch=1))
    assert len(b4) == 5
    _same(list(ar.batches("train", 4, epoch=1, start_batch=3)), b4[3:])
    with data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, seed=2) as again:
        _same(list(again.batches("train", 4, epoch=1)), b4)
    other = list(ar.batches("train", 4, epoch=2))
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(b4, other))
    shards = [list(ar.batches("train", 4, epoch=1, process_index=p, process_count=2)) for p in (0, 1)]
    for w, a, b in zip(b4, *shards, strict=True):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), w[key])
    vshards = [list(ar.batches("val", 4, process_index=p, process_count=2)) for p in (0, 1)]
    for w, a, b in zip(list(ar.batches("val", 4)), *vshards, strict=True):
        np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), w["image"])


@pytest.mark.slow  # ~3.5 s
def test_arrayrecord_resume_from_saved_state_bit_identical(ar_dir):
    """``get_state()`` mid-epoch (JSON, what a checkpoint keeps) restores in a NEW source the remaining batches bit
    for bit; in a source with 2 Grain worker processes (the records are pickled into them and reopened there)
    the batches are the same too; a state for another position is refused."""
    a = data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, seed=5)
    b = data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, seed=5)
    c = data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, seed=5, workers=2)
    try:
        it = a.batches("train", 4, epoch=3)
        head = [next(it), next(it)]
        state = json.loads(json.dumps(it.get_state()))
        assert (state["epoch"], state["batch"], state["workers"]) == (3, 2, 0)
        rest = list(it)
        assert len(rest) == 3
        _same(list(b.batches("train", 4, epoch=3, start_batch=2, state=state)), rest)
        _same(list(b.batches("train", 4, epoch=3))[:2], head)
        _same(list(c.batches("train", 4, epoch=3, start_batch=2, state=state)), rest)
        with pytest.raises(ValueError, match="saved data iterator is at epoch 3, batch 2"):
            b.batches("train", 4, epoch=3, start_batch=1, state=state)
    finally:
        a.close()
        b.close()
        c.close()


def test_arrayrecord_eval_preprocess_and_image_size(ar_dir):
    """``eval_preprocess`` fixes the size to its crop and normalises with its mean/std (val: resize + centre crop
    of a constant image stays that constant); ``image_size`` resizes."""
    spec = {"resize": 20, "crop": 16, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    with data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, eval_preprocess=spec) as ds:
        assert (ds.info.image_size, ds.info.channels, ds.info.mean, ds.info.std) == (16, 3, spec["mean"], spec["std"])
        batches = list(ds.batches("val", 7))
        assert sorted(_values(ds, batches).tolist()) == [8 * i + 4 for i in range(NUM_TEST)]
    with data.load("tfds:cnnjax_tiny_images", data_dir=ar_dir, image_size=24) as ds:
        assert next(iter(ds.batches("train", 2)))["image"].shape == (2, 24, 24, 3)


def test_tfrecord_with_arrayrecord_alternative_uses_grain(data_dir, ar_dir, tmp_path):
    """A TFRecord dataset that also has ArrayRecord shards listed as an alternative format (what ``tfds
    convert_format`` leaves) is read through the ArrayRecord data source."""
    version = "cnnjax_tiny_images/1.0.0"
    both = tmp_path / version
    shutil.copytree(pathlib.Path(data_dir) / version, both)
    for shard in (pathlib.Path(ar_dir) / version).glob("*.array_record-*"):
        shutil.copy(shard, both / shard.name)
    info = json.loads((both / "dataset_info.json").read_text())
    assert info["fileFormat"] == "tfrecord"
    info["alternativeFileFormats"] = ["array_record"]
    (both / "dataset_info.json").write_text(json.dumps(info))
    with data.load("tfds:cnnjax_tiny_images", data_dir=str(tmp_path)) as ds:
        assert type(ds) is TFDSArrayRecordSource
        assert sorted(_values(ds, ds.batches("val", 7)).tolist()) == [8 * i + 4 for i in range(NUM_TEST)]


def test_tfrecord_without_tensorflow_is_one_line(data_dir, monkeypatch):
    def no_tf():
        raise MissingDependencyError("no TensorFlow")

    monkeypatch.setattr(tfpipe, "import_tf", no_tf)
    with pytest.raises(MissingDependencyError) as err:
        data.load("tfds:cnnjax_tiny_images", data_dir=data_dir)
    msg = str(err.value)
    assert "\n" not in msg and "prepared as tfrecord" in msg and "pip install tensorflow-cpu" in msg
    assert "tfds build cnnjax_tiny_images --data_dir NEW_DATA_DIR --file_format array_record" in msg
    assert "tfds convert_format --dataset_version_dir" in msg


# TensorFlow hidden as if it were not installed: `sys.modules['tensorflow'] = None` is not enough for TFDS, whose
# etils helpers treat 'tensorflow' in sys.modules as "TensorFlow is loaded" and then fail; find_spec must say None.
HIDE_TF = textwrap.dedent("""
    import sys

    class Hide:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] == 'tensorflow':
                return None
            find = getattr(self.finder, 'find_spec', None)
            return find(name, path, target) if find else None

        def __getattr__(self, attr):
            return getattr(self.finder, attr)

    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    try:
        import tensorflow  # noqa: F401
        raise SystemExit('TensorFlow is still importable')
    except ModuleNotFoundError:
        pass
    from train.main import main
    code = main({argv!r})
    loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')
    assert not loaded, loaded
    assert 'tensorflow_datasets' in sys.modules and 'array_record' in sys.modules
    sys.exit(code)
""")


@pytest.mark.slow
def test_arrayrecord_trains_one_step_without_tensorflow(ar_dir, tmp_path):
    """``python -m train.main --dataset tfds:...`` on the ArrayRecord dataset with TensorFlow not importable: one
    step trains and evaluates, and no ``tensorflow`` module was ever imported (TFDS and array_record were)."""
    argv = ["--arch", "lenet5", "--dataset", "tfds:cnnjax_tiny_images", "--data-dir", ar_dir, "--max-steps", "1",
            "--batch-size", "4", "--image-size", "32", "--no-progress", "--workdir", str(tmp_path / "run")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", HIDE_TF.format(argv=argv)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "val loss" in out.stdout and "Traceback" not in out.stderr


@pytest.mark.slow
def test_tfrecord_cli_start_is_quiet(data_dir, tmp_path):
    """The TFRecord (tf.data) path through the CLI prints cnnjax's lines only: no TensorFlow/absl start-up
    notices (oneDNN, CPU features, "All log messages before absl::InitializeLog()")."""
    pytest.importorskip("tensorflow")
    argv = ["-m", "train.main", "--arch", "lenet5", "--dataset", "tfds:cnnjax_tiny_images", "--data-dir", data_dir,
            "--max-steps", "1", "--batch-size", "4", "--image-size", "32", "--no-progress", "--workdir",
            str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")} | {"JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert lines[0].startswith("lenet5: ") and lines[1].startswith("epoch 1: "), lines
    assert not any(s in out.stderr for s in ("oneDNN", "InitializeLog", "cpu_feature_guard")), out.stderr
