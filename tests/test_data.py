"""The dataset layer: interface, digits, shapes, synthetic (NumPy only, no TensorFlow needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnnjax.data as data
from cnnjax.data import base
from cnnjax.data.digits import load_raw, split_indices
from cnnjax.data.shapes import render_shapes

SMALL_SHAPES = "shapes:num_train=120,num_val=50"


def _all(it):
    return list(it)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x[k], y[k]) for k in ("image", "label", "mask")) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


# --------------------------------------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------------------------------------

def test_unknown_spec_lists_choices():
    with pytest.raises(ValueError) as e:
        data.load("mnist")
    for choice in ("digits", "mnist5k", "shapes", "synthetic", "tfds:NAME[/CONFIG]", "folder:PATH"):
        assert choice in str(e.value)


def test_bad_options():
    with pytest.raises(ValueError, match="num_train"):
        data.load("shapes:num_trian=5")
    with pytest.raises(ValueError, match="conflicts"):
        data.load("digits:image_size=64", image_size=32)
    with pytest.raises(ValueError, match="channels"):
        data.load("digits:channels=2")
    with pytest.raises(ValueError, match="region"):
        data.load("shapes:train_region=middle")


def test_split_and_batch_size_errors(digits):
    with pytest.raises(ValueError, match="'train', 'val'"):
        digits.batches("test", 32)
    with pytest.raises(ValueError, match="'train', 'val'"):
        digits.num_batches("validation", 32)
    with pytest.raises(ValueError, match="divisible by process_count=3"):
        digits.batches("train", 32, process_count=3)
    with pytest.raises(ValueError, match="no full batch"):
        digits.batches("train", 5000)
    with pytest.raises(ValueError, match="start_batch"):
        digits.batches("train", 32, start_batch=10_000)


# --------------------------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------------------------

def test_digits_info_and_counts(digits):
    images, labels = load_raw()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    i = digits.info
    assert (i.name, i.num_classes, i.image_size, i.channels) == ("digits", 10, 32, 1)
    assert i.num_train + i.num_val == 1797 and (i.num_train, i.num_val) == (1438, 359)
    assert i.class_names == [str(d) for d in range(10)]
    assert len(i.mean) == len(i.std) == 1
    assert digits.num_batches("train", 100) == 14 and digits.num_batches("val", 100) == 4


def test_digits_split_is_stratified_and_fixed():
    _, labels = load_raw()
    train, val = split_indices()
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1797
    frac = np.bincount(labels[val], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(frac - 0.2) < 0.01)
    # independent of the run seed
    assert data.load("digits", seed=5).info == data.load("digits", seed=0).info


def test_mnist5k_is_a_stratified_split_of_the_bundled_mnist_subset():
    """``mnist5k``: 5,000 MNIST digits (500 per class, 0..255), a fixed stratified 4,000 / 1,000 split; val images
    are the raw 28x28 pixels / 255 resized to 32x32 and normalised; ``classes``/``per_class`` as for digits."""
    from cnnjax.data.digits import _raw
    from cnnjax.data.mnist5k import MNIST5K

    images, labels = _raw(MNIST5K)
    assert images.shape == (5000, 28, 28) and images.max() == 255 and (np.bincount(labels) == 500).all()
    train, val = split_indices(MNIST5K)
    assert len(np.intersect1d(train, val)) == 0 and (np.bincount(labels[val]) == 100).all()
    src = data.load("mnist5k")
    i = src.info
    assert (i.name, i.num_train, i.num_val, i.image_size, i.channels) == ("mnist5k", 4000, 1000, 32, 1)
    b = next(iter(src.plain_batches("val", 1000)))
    expected = (base.resize_images(images[val, :, :, None] / np.float32(255), 32) - i.mean[0]) / i.std[0]
    np.testing.assert_allclose(b["image"], expected, atol=1e-5)
    np.testing.assert_array_equal(b["label"], labels[val])
    sub = data.load("mnist5k:classes=7+3,per_class=20")
    assert sub.info.num_train == 40 and sub.info.num_val == 200 and sub.info.class_names == ["7", "3"]
    with pytest.raises(ValueError, match="mnist5k: classes must be distinct digits"):
        data.load("mnist5k:classes=3+3")


def test_digits_batch_format(digits):
    b = next(digits.batches("train", 64))
    assert b["image"].shape == (64, 32, 32, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (64,) and b["label"].dtype == np.int32
    assert b["mask"].shape == (64,) and b["mask"].dtype == np.bool_ and b["mask"].all()
    assert b["label"].min() >= 0 and b["label"].max() <= 9


def test_digits_val_every_example_once_and_normalized(digits):
    i = digits.info
    batches = _all(digits.batches("val", 100))
    assert len(batches) == 4
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 359 and mask[:359].all() and not mask[359:].any()
    got = np.concatenate([b["image"] for b in batches])[mask]
    got_labels = np.concatenate([b["label"] for b in batches])[mask]
    images, labels = load_raw()
    _, val = split_indices()
    expected = base.resize_images(images[val, :, :, None] / np.float32(16), 32)
    expected = (expected - i.mean[0]) / i.std[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels[val])
    # normalised: roughly zero mean / unit variance, and inside the image of [0, 1]
    assert abs(got.mean()) < 0.1 and 0.8 < got.std() < 1.2
    assert got.min() >= (0 - i.mean[0]) / i.std[0] - 1e-5 and got.max() <= (1 - i.mean[0]) / i.std[0] + 1e-5
    # padding rows are zeros
    assert np.all(batches[-1]["image"][~batches[-1]["mask"]] == 0)


def test_digits_plain_train_batches_are_the_unaugmented_train_split_in_order(digits):
    """``plain_batches('train')`` (the linear-probe feature cache's input): every train image once, in index order,
    resized and normalised but not shifted; the synthetic source, with no fixed train set, refuses."""
    i = digits.info
    batches = _all(digits.plain_batches("train", 500))
    mask = np.concatenate([b["mask"] for b in batches])
    assert len(batches) == 3 and mask.sum() == 1438 and not mask[1438:].any()
    images, labels = load_raw()
    train, _ = split_indices()
    expected = (base.resize_images(images[train, :, :, None] / np.float32(16), 32) - i.mean[0]) / i.std[0]
    np.testing.assert_allclose(np.concatenate([b["image"] for b in batches])[mask], expected, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], labels[train])
    with pytest.raises(ValueError, match="no fixed training set"):
        data.load("synthetic").plain_batches("train", 4)


def test_digits_train_epoch_is_a_permutation(digits):
    _, labels = load_raw()
    train, _ = split_indices()
    batches = _all(digits.batches("train", 719))  # 1438 = 2 * 719: every train example once
    got = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(np.bincount(got, minlength=10), np.bincount(labels[train], minlength=10))
    # class balance of the train split
    counts = np.bincount(labels[train], minlength=10)
    assert counts.min() >= 139 and counts.max() <= 147


def test_digits_augmentation_is_translation_without_flip(digits):
    """Each train image is its source image shifted by at most 2 pixels (zero fill), never mirrored."""
    images, _ = load_raw()
    train, _ = split_indices()
    i = digits.info
    b = next(digits.batches("train", 16, epoch=2))
    perm = base.epoch_permutation(len(train), 0, 2)[:16]
    clean = base.resize_images(images[train[perm], :, :, None] / np.float32(16), 32)
    clean = (clean - i.mean[0]) / i.std[0]
    shifted = 0
    for k in range(16):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if np.allclose(base.pad_and_crop(clean[k:k + 1], 2, np.array([[dy, dx]]),
                                                    fill=-i.mean[0] / i.std[0]), b["image"][k:k + 1], atol=1e-5)]
        assert matches, f"row {k} is not a translation of its source image"
        shifted += (2, 2) not in matches
    assert shifted >= 8  # augmentation does something


def test_digits_determinism_and_seeds(digits):
    a = _all(digits.batches("train", 128, epoch=1))
    b = _all(data.load("digits", seed=0).batches("train", 128, epoch=1))
    assert _same(a, b)
    assert not np.array_equal(a[0]["label"], next(digits.batches("train", 128, epoch=0))["label"])
    c = next(data.load("digits", seed=1).batches("train", 128, epoch=1))
    assert not np.array_equal(a[0]["label"], c["label"])
    assert _same(_all(digits.batches("val", 128)), _all(data.load("digits", seed=7).batches("val", 128)))


def test_digits_resume_from_start_batch(digits):
    full = _all(digits.batches("train", 64, epoch=3))
    assert len(full) == digits.num_batches("train", 64) == 22
    assert _same(full[5:], _all(digits.batches("train", 64, epoch=3, start_batch=5)))
    assert _all(digits.batches("train", 64, epoch=3, start_batch=22)) == []
    val = _all(digits.batches("val", 64))
    assert _same(val[4:], _all(digits.batches("val", 64, start_batch=4)))


@pytest.mark.parametrize("split", ["train", "val"])
def test_digits_multiprocess_sharding(digits, split):
    whole = _all(digits.batches(split, 96, epoch=1))
    parts = [_all(digits.batches(split, 96, epoch=1, process_index=p, process_count=2)) for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for w, p0, p1 in zip(whole, *parts):
        assert p0["image"].shape[0] == 48
        for k in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), w[k])


def test_digits_image_size_and_channels():
    b = next(data.load("digits", image_size=64).batches("val", 8))
    assert b["image"].shape == (8, 64, 64, 1)
    rgb = data.load("digits:channels=3")
    assert rgb.info.channels == 3 and len(rgb.info.mean) == 3
    x = next(rgb.batches("train", 8))["image"]
    assert x.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_resize_matches_jax():
    jax = pytest.importorskip("jax")
    x = np.random.default_rng(0).random((2, 8, 11, 3)).astype(np.float32)
    for out in ((32, 20), (5, 4)):
        ref = np.asarray(jax.image.resize(x, (2, *out, 3), method="linear"))
        np.testing.assert_allclose(base.resize_images(x, *out), ref, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("region,axis,side", [("left", 0, -1), ("right", 0, 1), ("top", 1, -1), ("bottom", 1, 1)])
def test_shapes_region_confinement(region, axis, side):
    r = render_shapes(300, 32, region=region, seed=3)
    alpha = r["alpha"]
    assert alpha.sum(axis=(1, 2)).min() > 5  # every image has a visible shape
    coords = np.arange(32) + 0.5
    w = alpha.sum(axis=(1, 2))
    com_x = (alpha * coords[None, None, :]).sum(axis=(1, 2)) / w
    com_y = (alpha * coords[None, :, None]).sum(axis=(1, 2)) / w
    com = com_x if axis == 0 else com_y
    assert np.all(side * (com - 16.0) >= -0.5), f"{region}: centre of mass on the wrong side"
    # the other axis is unconstrained: both halves are used
    other = com_y if axis == 0 else com_x
    assert (other < 16).any() and (other > 16).any()


def test_shapes_left_right_experiment_through_load():
    ds = data.load("shapes:train_region=left,val_region=right,num_train=60,num_val=30,data_seed=4")
    i = ds.info
    assert (i.num_train, i.num_val, i.image_size, i.channels, i.num_classes) == (60, 30, 32, 3, 6)
    val = np.concatenate([b["image"] for b in ds.batches("val", 30)])
    raw = val * np.asarray(i.std, np.float32) + np.asarray(i.mean, np.float32)
    expected = render_shapes(30, 32, region="right", seed=4, stream=1)
    np.testing.assert_allclose(raw, expected["image"] / 255.0, atol=1e-5)
    assert np.all(expected["centre"][:, 0] >= 16)


def test_shapes_determinism_balance_and_options():
    a = data.load(SMALL_SHAPES)
    b = data.load(SMALL_SHAPES)
    assert _same(_all(a.batches("train", 40, epoch=1)), _all(b.batches("train", 40, epoch=1)))
    assert _same(_all(a.batches("train", 40))[1:], _all(a.batches("train", 40, start_batch=1)))
    r = render_shapes(120, 32)
    np.testing.assert_array_equal(np.bincount(r["label"]), [20] * 6)
    assert not np.array_equal(r["image"], render_shapes(120, 32, seed=1)["image"])
    three = data.load("shapes:classes=circle+square+triangle,num_train=30,num_val=9,image_size=48")
    assert three.info.class_names == ["circle", "square", "triangle"] and three.info.num_classes == 3
    x = next(three.batches("val", 9))
    assert x["image"].shape == (9, 48, 48, 3) and x["label"].max() <= 2


# --------------------------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------------------------

def test_synthetic_batches():
    ds = data.load("synthetic:image_size=48,num_classes=7,num_train=40,num_val=10", seed=3)
    i = ds.info
    assert (i.image_size, i.num_classes, i.channels, i.num_train, i.num_val) == (48, 7, 3, 40, 10)
    b = next(ds.batches("train", 8))
    assert b["image"].shape == (8, 48, 48, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["label"].max() < 7 and b["mask"].all()
    val = _all(ds.batches("val", 4))
    assert len(val) == 3 and sum(v["mask"].sum() for v in val) == 10
    assert _same(val, _all(ds.batches("val", 4, epoch=5)))
    train = _all(ds.batches("train", 8, epoch=1))
    assert _same(train[2:], _all(ds.batches("train", 8, epoch=1, start_batch=2)))
    p0 = next(ds.batches("train", 8, epoch=1, process_index=0, process_count=2))
    p1 = next(ds.batches("train", 8, epoch=1, process_index=1, process_count=2))
    np.testing.assert_array_equal(np.concatenate([p0["image"], p1["image"]]), train[0]["image"])
    assert data.load("synthetic", image_size=224).info.image_size == 224


def test_builtin_datasets_work_without_tensorflow():
    code = textwrap.dedent("""
        import sys
        sys.modules['tensorflow'] = None
        sys.modules['tensorflow_datasets'] = None
        sys.modules['grain'] = None  # (Grain imports JAX; without it the in-memory datasets are plain NumPy)
        import cnnjax.data as data
        for spec in ('digits', 'shapes:num_train=12,num_val=6', 'synthetic:num_train=8,num_val=4'):
            ds = data.load(spec)
            for split in ('train', 'val'):
                b = next(ds.batches(split, 4))
                assert b['image'].shape[0] == 4, spec
        assert 'jax' not in sys.modules
        try:
            data.load('tfds:cifar10')
        except ImportError as e:
            assert 'cnnjax[data]' in str(e)
        else:
            raise AssertionError('tfds: loaded without tensorflow')
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
