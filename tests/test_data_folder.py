"""``folder:PATH`` datasets: a tiny image folder made with PIL (Grain + PIL; no TensorFlow)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

import cnnjax.data as data
from cnnjax.data import pil_transforms


def _rgb(rng, h, w):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_folder(root, rng=None):
    """train: cat (3 JPEG, 1 grayscale PNG), dog (2 PNG, 1 palette GIF, 1 RGBA PNG, 1 corrupt JPEG, 1 text file);
    val: cat (1 grayscale PNG, 1 JPEG), dog (1 palette GIF). Image sides between 24 and 60 pixels."""
    rng = rng or np.random.default_rng(0)
    for d in ("train/cat", "train/dog", "val/cat", "val/dog"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        _rgb(rng, 30 + 5 * i, 40).save(root / f"train/cat/c{i}.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (32, 24), dtype=np.uint8)).save(root / "train/cat/gray.png")
    for i in range(2):
        _rgb(rng, 40, 30 + 10 * i).save(root / f"train/dog/d{i}.PNG")
    _rgb(rng, 36, 36).convert("P").save(root / "train/dog/palette.gif")
    Image.fromarray(rng.integers(0, 256, (28, 44, 4), dtype=np.uint8)).save(root / "train/dog/rgba.png")
    (root / "train/dog/corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "train/dog/notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "val/cat/a_gray.png")
    _rgb(rng, 60, 50).save(root / "val/cat/b.jpg")
    _rgb(rng, 32, 32).convert("P").save(root / "val/dog/p.gif")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def small(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.load(f"folder:{root}", image_size=32, seed=1)


def _median_short_side(files) -> int:
    """The default image size, computed independently of the loader: the median shorter side of the files."""
    sides = []
    for f in files:
        with Image.open(f) as im:
            sides.append(min(im.size))
    return int(np.median(sides))


def test_folder_info_and_skip_warning(root):
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\).*corrupt\.jpg") as record:
        ds = data.load(f"folder:{root}", image_size=32)
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    i = ds.info
    assert i.class_names == ["cat", "dog"] and i.num_classes == 2 and i.channels == 3
    assert (i.num_train, i.num_val, i.image_size) == (8, 3, 32)
    assert i.mean == (0.485, 0.456, 0.406) and i.std == (0.229, 0.224, 0.225)
    train_files = [f for f in (root / "train").glob("*/*") if f.suffix.lower() in (".jpg", ".png", ".gif")
                   and f.name != "corrupt.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = data.load(f"folder:{root.name}", data_dir=str(root.parent))
    assert default.info.image_size == _median_short_side(train_files) == 32  # not ImageNet's 224
    assert (default.typical.grayscale, default.info.channels) == (False, 3)  # mixed colour/gray -> RGB


def test_pil_decode_converts_modes(root):
    for name in ("train/cat/gray.png", "train/dog/palette.gif", "train/dog/rgba.png", "train/cat/c0.jpg"):
        with Image.open(root / name) as im:
            rgb = np.asarray(pil_transforms.to_mode(im, 3))
            gray = np.asarray(pil_transforms.to_mode(im, 1))
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
        assert gray.dtype == np.uint8 and gray.shape == rgb.shape[:2], name
        # ITU-R 601-2 luma, computed independently (PIL rounds L = (299 R + 587 G + 114 B) / 1000)
        luma = (rgb.astype(np.int64) @ np.array([299, 587, 114]) + 500) // 1000
        assert np.abs(gray.astype(np.int64) - luma).max() <= 1, name


def test_folder_val_batches(root, small):
    batches = list(small.batches("val", 2))
    assert len(batches) == small.num_batches("val", 2) == 2
    for b in batches:
        assert b["image"].shape == (2, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["mask"].dtype == np.bool_
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [True, True, True, False])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:3], [0, 0, 1])
    raw = batches[0]["image"] * np.float32(small.info.std) + np.float32(small.info.mean)
    gray = np.asarray(Image.open(root / "val/cat/a_gray.png"), np.float32) / 255
    for c in range(3):  # grayscale -> RGB, 32x32 kept as is
        np.testing.assert_allclose(raw[0, :, :, c], gray, atol=1e-4)
    pal = np.asarray(Image.open(root / "val/dog/p.gif").convert("RGB"), np.float32) / 255
    raw = batches[1]["image"][0] * np.float32(small.info.std) + np.float32(small.info.mean)
    np.testing.assert_allclose(raw, pal, atol=1e-4)


def test_folder_train_determinism_resume_sharding(root, small):
    full = list(small.batches("train", 4, epoch=2))
    assert len(full) == 2 and all(b["mask"].all() for b in full)
    assert sorted(np.concatenate([b["label"] for b in full]).tolist()) == [0] * 4 + [1] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = list(data.load(f"folder:{root}", image_size=32, seed=1).batches("train", 4, epoch=2))
    for a, b in zip(full, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    resumed = list(small.batches("train", 4, epoch=2, start_batch=1))
    np.testing.assert_array_equal(resumed[0]["image"], full[1]["image"])
    np.testing.assert_array_equal(resumed[0]["label"], full[1]["label"])
    p1 = list(small.batches("train", 4, epoch=2, process_index=1, process_count=2))
    np.testing.assert_array_equal(p1[0]["image"], full[0]["image"][2:])
    other = next(small.batches("train", 4, epoch=3))
    assert not np.array_equal(other["image"], full[0]["image"])


def test_folder_large_image_transforms(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.load(f"folder:{root}", image_size=224, seed=0)
    assert ds.info.image_size == 224
    b = next(ds.batches("train", 2))
    assert b["image"].shape == (2, 224, 224, 3) and np.isfinite(b["image"]).all()
    # val: torchvision's eval transform (shorter side -> 256 with antialiasing, centre crop 224), PIL bilinear
    v = next(ds.batches("val", 3))["image"][1]
    im = Image.open(root / "val/cat/b.jpg").convert("RGB")  # 50 wide, 60 high
    ref = np.asarray(im.resize((256, int(256 * 60 / 50)), Image.BILINEAR), np.float32) / 255
    top = int(round((ref.shape[0] - 224) / 2))
    ref = (ref[top:top + 224, 16:240] - np.float32(ds.info.mean)) / np.float32(ds.info.std)
    np.testing.assert_allclose(v, ref, rtol=0, atol=1e-5)  # the same PIL resize: float rounding only
    ds.close()


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="missing split directory .*val"):
        (tmp_path / "a/train/x").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "a/train/x/1.png")
        data.load(f"folder:{tmp_path / 'a'}")
    (tmp_path / "a/val/x").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a/val/x/1.png")
    (tmp_path / "a/train/empty").mkdir()
    with pytest.raises(ValueError, match=r"empty class directory .*train[/\\]empty"):
        data.load(f"folder:{tmp_path / 'a'}")
    (tmp_path / "a/train/empty").rmdir()
    (tmp_path / "a/val/zebra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a/val/zebra/1.png")
    with pytest.raises(ValueError, match=r"\['zebra'\].*not in"):
        data.load(f"folder:{tmp_path / 'a'}")
    with pytest.raises(ValueError, match="not a directory"):
        data.load(f"folder:{tmp_path / 'nowhere'}")


def test_folder_val_only(tmp_path):
    """An evaluation-only folder (val/ without train/): classes from val/'s directories, sorted; the train split
    is refused naming the missing directory."""
    rng = np.random.default_rng(3)
    for i, name in enumerate(["n02", "n01"]):
        (tmp_path / "v/val" / name).mkdir(parents=True)
        _rgb(rng, 40, 30 + 10 * i).save(tmp_path / "v/val" / name / "x.png")
    ds = data.load(f"folder:{tmp_path / 'v'}", image_size=32)
    assert ds.info.class_names == ["n01", "n02"] and (ds.info.num_train, ds.info.num_val) == (0, 2)
    batch = next(ds.batches("val", 2))
    assert batch["image"].shape == (2, 32, 32, 3) and batch["mask"].all()
    np.testing.assert_array_equal(batch["label"], [0, 1])
    for call in (lambda: ds.batches("train", 1), lambda: ds.num_batches("train", 1)):
        with pytest.raises(ValueError, match=r"no train split: .*v[/\\]train does not exist"):
            call()
    (tmp_path / "v/val/n03").mkdir()
    with pytest.raises(ValueError, match=r"empty class directory .*val[/\\]n03"):
        data.load(f"folder:{tmp_path / 'v'}")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"missing split directory .*none[/\\]val"):
        data.load(f"folder:{tmp_path / 'none'}")


def test_folder_plain_train_batches_read_train_files_like_val(root, tmp_path):
    """``plain_batches('train')`` of a folder equals ``batches('val')`` of a folder whose val/ holds the same files."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(root / "train", twin / "train")
    shutil.copytree(root / "train", twin / "val")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = data.load(f"folder:{root}", image_size=32)
        b = data.load(f"folder:{twin}", image_size=32)
    plain, val = list(a.plain_batches("train", 4)), list(b.batches("val", 4))
    assert len(plain) == len(val) == -(-a.info.num_train // 4)
    for p, v in zip(plain, val, strict=True):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(p[key], v[key])
