"""``eval_preprocess``: the val images of ``folder:`` and ``tfds:`` transformed exactly as torchvision's
``Resize(antialias=True)`` / ``CenterCrop`` / ``ToTensor`` / ``Normalize`` on real photographs (matplotlib's sample
data), evaluation-only folders, and ``train.evaluate`` choosing the per-architecture transform of
``--init torchvision:ARCH``. The comparisons with torchvision are marked ``parity`` and skip without torch."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import cnnjax.data as data
from cnnjax.data import Preprocess

CASES = [Preprocess(256, 224, "bilinear"), Preprocess(256, 224, "bicubic"),
         Preprocess(232, 224, "bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))]
IDS = ["256-224-bilinear", "256-224-bicubic", "232-224-bilinear-half"]


def make_photos(directory: pathlib.Path) -> list[pathlib.Path]:
    """Files ``directory/<class>/<name>`` of real images, sorted as torchvision's ``ImageFolder`` visits them:
    graphics/logo.png (RGBA, 542x130), graphics/present.png (RGBA, 128x128: upscaled), people/hopper.jpg (the
    Grace Hopper photograph, 512x600 RGB JPEG), people/hopper_gray.jpg (grayscale JPEG), people/hopper_wide.jpg
    (a 512x301 landscape JPEG crop)."""
    import matplotlib

    sample = pathlib.Path(matplotlib.get_data_path()) / "sample_data"
    (directory / "graphics").mkdir(parents=True)
    (directory / "people").mkdir(parents=True)
    shutil.copy(sample / "logo2.png", directory / "graphics/logo.png")
    shutil.copy(sample / "Minduka_Present_Blue_Pack.png", directory / "graphics/present.png")
    shutil.copy(sample / "grace_hopper.jpg", directory / "people/hopper.jpg")
    with Image.open(sample / "grace_hopper.jpg") as im:
        im.convert("L").save(directory / "people/hopper_gray.jpg", quality=90)
        im.crop((0, 150, 512, 451)).save(directory / "people/hopper_wide.jpg", quality=85)
    return sorted(directory.glob("*/*"))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> pathlib.Path:
    """An evaluation-only image folder: ``val/<class>/...`` and no ``train/``."""
    root = tmp_path_factory.mktemp("photos")
    make_photos(root / "val")
    return root


def _torchvision_transform(spec: Preprocess):
    pytest.importorskip("torch")
    T = pytest.importorskip("torchvision.transforms")
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[spec.interpolation]
    return T.Compose([T.Resize(spec.resize, interpolation=mode, antialias=True), T.CenterCrop(spec.crop),
                      T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def _raw(x: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Undo the normalisation: pixels in [0, 1]."""
    return x * np.float32(spec.std) + np.float32(spec.mean)


def _assert_pixels_equal(ours: np.ndarray, want: np.ndarray, spec: Preprocess, name: str) -> None:
    assert ours.shape == want.shape, name
    err = float(np.abs(_raw(ours, spec) - _raw(want, spec)).max())
    # the requirement is 1/255 per pixel; the transform is the same PIL code, so only float rounding remains
    assert err < 1e-5, (name, err)


def _concat(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in ("image", "label", "mask")}


@pytest.mark.parity
@pytest.mark.parametrize("spec", CASES, ids=IDS)
def test_folder_val_matches_torchvision_image_folder(photo_folder, spec):
    reference = pytest.importorskip("torchvision.datasets").ImageFolder(
        str(photo_folder / "val"), transform=_torchvision_transform(spec))
    ds = data.load(f"folder:{photo_folder}", eval_preprocess=spec)
    assert (ds.info.image_size, ds.info.channels, ds.info.mean, ds.info.std) == (224, 3, spec.mean, spec.std)
    assert ds.info.class_names == reference.classes == ["graphics", "people"] and ds.info.num_train == 0
    got = _concat(ds.batches("val", 2))  # 5 images: 3 batches, the last one padded
    np.testing.assert_array_equal(got["mask"], [True] * 5 + [False])
    assert got["image"].shape == (6, 224, 224, 3) and got["image"].dtype == np.float32
    for i, (path, label) in enumerate(reference.samples):
        want, _ = reference[i]
        assert got["label"][i] == label, path
        _assert_pixels_equal(got["image"][i], want.numpy().transpose(1, 2, 0), spec, path)


def test_folder_pil_val_sharding_resume_and_no_tensorflow_needed(photo_folder, monkeypatch):
    from cnnjax.data import tfpipe

    def no_tf():
        raise AssertionError("TensorFlow imported for a PIL val split")

    monkeypatch.setattr(tfpipe, "import_tf", no_tf)
    ds = data.load(f"folder:{photo_folder}", image_size=64, eval_preprocess={"resize": 72, "crop": 64})
    full = list(ds.batches("val", 4))
    assert len(full) == ds.num_batches("val", 4) == 2
    p1 = list(ds.batches("val", 4, process_index=1, process_count=2))
    resumed = list(ds.batches("val", 4, start_batch=1))
    assert len(resumed) == 1
    for key in ("image", "label", "mask"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in p1]),
                                      np.concatenate([b[key][2:] for b in full]))
        np.testing.assert_array_equal(resumed[0][key], full[1][key])
    np.testing.assert_array_equal(full[1]["mask"], [True, False, False, False])
    with pytest.raises(ValueError, match=r"no train split.*train does not exist"):
        ds.batches("train", 2)


def test_preprocess_spec_errors(photo_folder):
    with pytest.raises(ValueError, match="differs from the eval_preprocess crop 224"):
        data.load(f"folder:{photo_folder}", image_size=160, eval_preprocess=Preprocess())
    with pytest.raises(ValueError, match="only to the tfds: and folder: datasets"):
        data.load("digits", eval_preprocess=Preprocess())
    with pytest.raises(ValueError, match="unknown interpolation 'area'; choose from nearest, bilinear, bicubic"):
        Preprocess(interpolation="area")
    with pytest.raises(ValueError, match="unknown preprocess keys"):
        data.load(f"folder:{photo_folder}", eval_preprocess={"resize_size": 256})
    with pytest.raises(ValueError, match="crop must be a positive int"):
        Preprocess(crop=0)
    from cnnjax.weights import eval_preprocess, eval_transform

    assert eval_preprocess("efficientnet_b0") == Preprocess(256, 224, "bicubic")
    assert eval_preprocess("convnext_tiny") == Preprocess.from_value(eval_transform("convnext_tiny").keywords)


# ---------------------------------------------------------------------------------------------------------------
# tfds: the same photographs stored in a TFDS dataset (their file bytes as they are), 1000 classes


def _label(i: int) -> int:
    return 100 * i + 1


@pytest.fixture(scope="module", params=["tfrecord", "array_record"])
def tfds_photos(tmp_path_factory, request) -> tuple[str, list[pathlib.Path]]:
    """(data_dir, files) of ``tfds:cnnjax_tiny_photos``: validation = the photos (file ``i`` has label
    ``100 * i + 1`` of 1000 classes), train = the first two; stored as TFRecord (tf.data) or ArrayRecord
    (Grain)."""
    from test_data_tfds import prepare, tfds  # skips without tensorflow_datasets

    if request.param == "tfrecord":
        pytest.importorskip("tensorflow")

    files = make_photos(tmp_path_factory.mktemp("tfds_photos_src"))

    class CnnjaxTinyPhotos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                                     "label": tfds.features.ClassLabel(num_classes=1000)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(2), "validation": self._generate_examples(len(files))}

        def _generate_examples(self, n):
            for i in range(n):  # a path: TFDS stores the file's bytes without re-encoding
                yield i, {"image": str(files[i]), "label": _label(i)}

    file_format = None if request.param == "tfrecord" else request.param
    return prepare(CnnjaxTinyPhotos, tmp_path_factory.mktemp(f"tfds_photos_{request.param}"), file_format), files


@pytest.mark.parity
@pytest.mark.parametrize("spec", CASES, ids=IDS)
def test_tfds_val_matches_torchvision(tfds_photos, spec):
    data_dir, files = tfds_photos
    reference = _torchvision_transform(spec)
    ds = data.load("tfds:cnnjax_tiny_photos", data_dir=data_dir, eval_preprocess=spec)
    assert (ds.info.image_size, ds.info.channels, ds.info.num_val) == (224, 3, len(files))
    got = _concat(ds.batches("val", 2))
    np.testing.assert_array_equal(got["mask"], [True] * 5 + [False])
    labels = got["label"][got["mask"]].tolist()
    assert sorted(labels) == [_label(i) for i in range(len(files))]
    for row, label in enumerate(labels):  # TFDS stores examples in its own order
        path = files[(label - 1) // 100]
        with Image.open(path) as im:  # torchvision's ImageFolder loader
            want = reference(im.convert("RGB")).numpy().transpose(1, 2, 0)
        _assert_pixels_equal(got["image"][row], want, spec, str(path))
    if spec is CASES[0]:  # the train split keeps working, at the crop size, in RGB
        train = next(ds.batches("train", 2))
        assert train["image"].shape == (2, 224, 224, 3) and np.isfinite(train["image"]).all()


@pytest.mark.parity
def test_train_main_tfds_val_uses_the_weights_transform(tfds_photos):
    """train.main on ``tfds:`` with ``--init torchvision:resnet50.IMAGENET1K_V2`` and no --image-size (224, the
    weights' crop) reopens the dataset with V2's eval transform (resize 232): val pixels equal torchvision's
    ``ResNet50_Weights.IMAGENET1K_V2.transforms()``."""
    tv = pytest.importorskip("torchvision")
    from train.config import TrainConfig
    from train.main import load_source

    data_dir, files = tfds_photos
    lines: list[str] = []
    cfg = TrainConfig(arch="resnet50", dataset="tfds:cnnjax_tiny_photos", data_dir=data_dir,
                      init="torchvision:resnet50.IMAGENET1K_V2", data_workers=0)
    with load_source(cfg, lines.append) as ds:
        spec = ds.eval_preprocess
        got = _concat(ds.batches("val", 5))
    assert (spec.resize, spec.crop, spec.interpolation) == (232, 224, "bilinear")
    assert lines[-1].startswith("val transform: resnet50.IMAGENET1K_V2's eval transform (resize 232")
    reference = tv.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    for row, label in enumerate(got["label"][got["mask"]].tolist()):
        path = files[(label - 1) // 100]
        with Image.open(path) as im:
            want = reference(im.convert("RGB")).numpy().transpose(1, 2, 0)
        _assert_pixels_equal(got["image"][row], want, spec, str(path))


# ---------------------------------------------------------------------------------------------------------------
# train.evaluate


def _args(*argv: str):
    from train.evaluate import build_parser

    return build_parser().parse_args(["--arch", "resnet50", *argv])


def test_evaluate_resolves_the_transform(photo_folder):
    from train.evaluate import resolve_preprocess

    folder = ["--dataset", f"folder:{photo_folder}"]
    for arch, want in [("resnet50", Preprocess(256, 224, "bilinear")), ("convnext_tiny", Preprocess(236, 224)),
                       ("efficientnet_b0", Preprocess(256, 224, "bicubic")),
                       ("efficientnet_v2_l", Preprocess(480, 480, "bicubic", (0.5,) * 3, (0.5,) * 3))]:
        args = _args("--init", f"torchvision:{arch}", *folder)
        args.arch = arch
        assert resolve_preprocess(args) == (want, f"torchvision:{arch}.IMAGENET1K_V1"), arch  # the enum resolved
    assert resolve_preprocess(_args("--init", "torchvision:resnet50", *folder, "--crop-size", "160",
                                    "--interpolation", "bicubic")) == \
        (Preprocess(256, 160, "bicubic"), "torchvision:resnet50.IMAGENET1K_V1, --crop-size, --interpolation")
    assert resolve_preprocess(_args("--init", "torchvision:resnet50", *folder, "--image-size", "192")) == \
        (Preprocess(256, 192), "torchvision:resnet50.IMAGENET1K_V1, --image-size")
    # a cnnjax run: the dataset's own val transform, unless asked for
    assert resolve_preprocess(_args("--init", "runs/x", *folder)) == (None, None)
    assert resolve_preprocess(_args("--init", "runs/x", *folder, "--crop-size", "160")) == \
        (Preprocess(183, 160), "--crop-size")
    assert resolve_preprocess(_args("--init", "runs/x", *folder, "--resize-size", "232")) == \
        (Preprocess(232, 224), "--resize-size")
    # datasets without image files keep their transform; asking for one is an error
    assert resolve_preprocess(_args("--init", "torchvision:resnet50", "--dataset", "synthetic")) == (None, None)
    for argv, match in [(["--dataset", "digits", "--crop-size", "224"], "only the tfds: and folder: datasets"),
                        ([*folder, "--resize-size", "0"], "--resize-size must be a positive"),
                        ([*folder, "--image-size", "200", "--crop-size", "224"], "differ"),
                        ([*folder, "--init", "torchvision:resnet18"], "weights are for resnet18")]:
        with pytest.raises(ValueError, match=match):
            resolve_preprocess(_args("--init", "torchvision:resnet50", *argv))


def test_evaluate_rejects_an_unknown_interpolation(capsys):
    with pytest.raises(SystemExit) as e:
        _args("--init", "torchvision:resnet50", "--interpolation", "area")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--interpolation: invalid choice: 'area'" in err and "bilinear" in err and "bicubic" in err


@pytest.mark.slow
def test_evaluate_cli_uses_the_torchvision_transform(tfds_photos, tmp_path, monkeypatch, capsys):
    """`--init torchvision:resnet18 --dataset tfds:...` (weights: random arrays in an .npz in the cache) evaluates
    every photo at resnet18's 256/224 bilinear transform and says so in its JSON line."""
    from test_weights import _leaves, _random_variables

    from cnnjax import weights
    from train import evaluate

    variables = _random_variables("resnet18")
    for path, leaf in _leaves(variables).items():
        leaf *= 0.05
        if path[-1] == "var":
            np.abs(leaf, out=leaf)
            leaf += 1.0
    name = pathlib.Path(weights.torchvision_info("resnet18")["url"]).with_suffix(".npz").name
    weights.export_npz(weights.to_torchvision("resnet18", variables), tmp_path / "torchvision" / name)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    data_dir, files = tfds_photos
    assert evaluate.main(["--arch", "resnet18", "--init", "torchvision:resnet18", "--dataset",
                          "tfds:cnnjax_tiny_photos", "--data-dir", data_dir, "--batch-size", "8",
                          "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["preprocessing"] == {"method": "pil", "resize": 256, "crop": 224, "interpolation": "bilinear",
                                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                       "from": "torchvision:resnet18.IMAGENET1K_V1"}
    assert result["val_count"] == len(files) and np.isfinite(result["val_loss"])
