"""Every torchvision weight enum of the shared architectures (issue #15, "More weights"): the records against
torchvision's own ``Weights`` enums (url, eval transform, categories, published accuracy, DEFAULT), the
``torchvision:ARCH.WEIGHTS`` syntax (cache file per enum, unknown names exit 2 listing the valid ones) and
``train.main``'s val transform on ``folder:`` data (pixels against torchvision's ``weights.transforms()``).
No model is compiled or downloaded; fake weights go into a temporary ``CNNJAX_CACHE``."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from cnnjax import models, weights
from cnnjax.models import registry
from cnnjax.weights import download as dl
from cnnjax.weights.torchvision import abstract_variables, torchvision_init

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
V2_ARCHS = ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
            "wide_resnet101_2", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b1")


def _metric(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def enum_differences(arch: str, ours: tuple[models.WeightsRecord, ...], enum) -> list[str]:
    """What differs between our records of ``arch`` and torchvision's ``Weights`` enum class ``enum``: members
    missing on either side, and per member url, sha256 prefix, transform (resize, crop, interpolation, mean,
    std), category count, acc@1/acc@5, parameter count; and which one is DEFAULT."""
    by_name = {w.name: w for w in ours}
    diffs = [f"{arch}.{name}: not in torchvision" for name in by_name.keys() - {e.name for e in enum}]
    for e in enum:
        w = by_name.get(e.name)
        if w is None:
            diffs.append(f"{arch}.{e.name}: missing from the records")
            continue
        t = e.transforms()  # torchvision's ImageClassification of these weights
        metrics = e.meta["_metrics"]["ImageNet-1K"]
        want = {"url": e.url, "sha256_prefix": e.url.rsplit("-", 1)[1].split(".")[0],
                "transform": (t.resize_size[0], t.crop_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std)),
                "categories": len(e.meta["categories"] or ()),
                "top1/top5": (_metric(metrics["acc@1"]), _metric(metrics["acc@5"])),
                "num_params": e.meta["num_params"], "default": e is enum.DEFAULT}
        x = w.transform
        got = {"url": w.url, "sha256_prefix": w.sha256_prefix,
               "transform": (x.resize, x.crop, x.interpolation, x.mean, x.std), "categories": w.num_categories,
               "top1/top5": (w.top1, w.top5), "num_params": w.num_params, "default": w.default}
        diffs += [f"{arch}.{e.name} {k}: ours {got[k]!r}, torchvision {want[k]!r}" for k in want if got[k] != want[k]]
    return diffs


@pytest.fixture(scope="module")
def tv_models():
    return pytest.importorskip("torchvision").models


def test_every_torchvision_enum_is_recorded(tv_models):
    """Walks ``get_model_weights(arch)`` for every architecture cnnjax shares with torchvision: every member is
    in the records with torchvision's values, and nothing else is."""
    shared = sorted(set(tv_models.list_models(module=tv_models)) & set(models.names()))
    assert shared == sorted(weights.TORCHVISION_ARCHS)
    diffs = [d for arch in shared
             for d in enum_differences(arch, models.record(arch).weights, tv_models.get_model_weights(arch))]
    assert diffs == []
    counts = {arch: len(models.record(arch).weights) for arch in shared}
    assert sum(counts.values()) == 52 and {a for a, n in counts.items() if n == 2} == {*V2_ARCHS, "vgg16"}


def test_a_missing_fabricated_or_changed_enum_is_detected(tv_models):
    w = models.record("resnet50").weights
    v1, v2 = w
    enum = tv_models.get_model_weights("resnet50")
    assert enum_differences("resnet50", (v1,), enum) == ["resnet50.IMAGENET1K_V2: missing from the records"]
    fake = registry.torchvision_weights("IMAGENET1K_V3", "resnet50-0123abcd.pth", 81.0, 95.0, v1.num_params)
    assert enum_differences("resnet50", (*w, fake), enum) == ["resnet50.IMAGENET1K_V3: not in torchvision"]
    changed = dataclasses.replace(v2, transform=dataclasses.replace(v2.transform, resize=256), top5=95.435)
    diffs = enum_differences("resnet50", (v1, changed), enum)
    assert len(diffs) == 2 and "transform" in diffs[0] and "top1/top5" in diffs[1], diffs
    swapped = (dataclasses.replace(v1, default=True), dataclasses.replace(v2, default=False))
    assert [d.split(" ")[:2] for d in enum_differences("resnet50", swapped, enum)] == [
        ["resnet50.IMAGENET1K_V1", "default:"], ["resnet50.IMAGENET1K_V2", "default:"]]


def test_records_without_torchvision():
    """What the records say on their own (also without torchvision): V2 is DEFAULT where it exists, each enum
    has its own cache file, VGG-16's feature weights have no categories."""
    files = [dl.torchvision_info(a, w.name)["filename"] for a in weights.TORCHVISION_ARCHS
             for w in models.record(a).weights]
    assert len(files) == len(set(files)) == 52
    for arch in V2_ARCHS:
        assert models.record(arch).weights_for("DEFAULT").name == "IMAGENET1K_V2"
        assert weights.torchvision_info(arch)["url"] == models.record(arch).weights_for("IMAGENET1K_V1").url
    assert models.record("resnet18").weights_for("DEFAULT").name == "IMAGENET1K_V1"
    r50 = dl.torchvision_info("resnet50", "IMAGENET1K_V2")
    assert (r50["filename"], r50["resize"], r50["crop"]) == ("resnet50-11ad3fa6.pth", 232, 224)
    b1 = weights.eval_preprocess("efficientnet_b1", "DEFAULT")
    assert (b1.resize, b1.crop, b1.interpolation) == (255, 240, "bilinear")
    assert weights.eval_transform("efficientnet_b1").keywords["interpolation"] == "bicubic"  # V1
    feat = models.record("vgg16").weights_for("IMAGENET1K_FEATURES")
    assert (feat.categories, feat.num_categories, feat.top1, feat.default) == (None, 0, None, False)
    with pytest.raises(ValueError, match="exactly one of its weights must be torchvision's DEFAULT"):
        dataclasses.replace(models.record("resnet50"), weights=models.record("resnet18").weights
                            + (dataclasses.replace(models.record("resnet50").weights[1]),))


def test_init_syntax_and_unknown_names():
    v1 = torchvision_init("torchvision:resnet50", "resnet50")
    assert v1.name == "IMAGENET1K_V1" and v1.url.endswith("resnet50-0676ba61.pth")
    assert torchvision_init("torchvision:resnet50.IMAGENET1K_V2", "resnet50").transform.resize == 232
    assert torchvision_init("torchvision:resnet50.DEFAULT", "resnet50").name == "IMAGENET1K_V2"
    assert torchvision_init("checkpoints/run1", "resnet50") is None and torchvision_init(None, "resnet50") is None
    with pytest.raises(ValueError, match=r"--init torchvision:resnet50\.IMAGENET1K_V3: resnet50 has no torchvision "
                                         r"weights 'IMAGENET1K_V3'; valid: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT "
                                         r"\(DEFAULT = IMAGENET1K_V2\)"):
        torchvision_init("torchvision:resnet50.IMAGENET1K_V3", "resnet50")
    with pytest.raises(ValueError, match="weights are for resnet18 but --arch is resnet50"):
        torchvision_init("torchvision:resnet18.DEFAULT", "resnet50")


def _fake_cache(tmp_path, monkeypatch, arch: str, name: str) -> dict:
    """Random variables of ``arch`` (NumPy, from the abstract tree: nothing compiled; finite outputs) written as
    torchvision's ``name`` file (``.npz``) into a temporary ``CNNJAX_CACHE``; returns the variables."""
    rng = np.random.default_rng(0)
    variables: dict = {}
    for key, spec in abstract_variables(arch).items():
        node = variables
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = (rng.uniform(0.5, 1.5, spec.shape) if key[-1] == "var"  # BN variances: positive
                         else 0.05 * rng.standard_normal(spec.shape)).astype(np.float32)
    filename = pathlib.Path(dl.torchvision_info(arch, name)["filename"]).with_suffix(".npz").name
    weights.export_npz(weights.to_torchvision(arch, variables), tmp_path / "torchvision" / filename)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    return variables


def _offline(monkeypatch) -> list[str]:
    asked: list[str] = []

    def download(url, dest, **_):
        asked.append(pathlib.Path(dest).name)
        raise weights.WeightsUnavailableError(f"offline: {url}")

    monkeypatch.setattr(dl, "download", download)
    return asked


def test_resnet50_v2_loads_from_its_own_cache_file(tmp_path, monkeypatch):
    """``torchvision:resnet50.IMAGENET1K_V2`` reads V2's file (train.main's hook and load_torchvision); bare
    ``torchvision:resnet50`` asks for V1's file, which is not there."""
    import jax
    from flax.traverse_util import flatten_dict

    from train.main import apply_init

    want = _fake_cache(tmp_path, monkeypatch, "resnet50", "IMAGENET1K_V2")
    asked = _offline(monkeypatch)
    fresh = jax.tree.map(np.zeros_like, want)
    got, _ = apply_init("torchvision:resnet50.IMAGENET1K_V2", "resnet50", fresh)
    for c in ("params", "batch_stats"):
        a, b = flatten_dict(got[c]), flatten_dict(want[c])
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    loaded = weights.load_torchvision("resnet50", weights="DEFAULT")
    np.testing.assert_array_equal(loaded["params"]["head"]["kernel"], want["params"]["head"]["kernel"])
    assert asked == []
    with pytest.raises(weights.WeightsUnavailableError):
        apply_init("torchvision:resnet50", "resnet50", fresh)
    assert asked == ["resnet50-0676ba61.pth"]


@pytest.mark.parametrize("module", ["train.main", "train.evaluate", "cnnjax.predict", "cnnjax.export"])
def test_an_unknown_enum_exits_2_listing_the_valid_ones(module, tmp_path, capsys):
    import importlib

    init = "torchvision:mobilenet_v2.IMAGENET1K_V9"
    args = {"train.main": ["--workdir", str(tmp_path / "w")], "train.evaluate": [],
            "cnnjax.predict": [str(tmp_path / "x.jpg")], "cnnjax.export": ["--out", str(tmp_path / "m")]}[module]
    assert importlib.import_module(module).main(["--arch", "mobilenet_v2", "--init", init, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "valid: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT (DEFAULT = IMAGENET1K_V2)" in err[0], err
    assert not (tmp_path / "w").exists() and not (tmp_path / "m").exists()


def test_feature_only_weights_cannot_predict(capsys):
    from cnnjax import predict

    assert predict.main(["--arch", "vgg16", "--init", "torchvision:vgg16.IMAGENET1K_FEATURES", "x.jpg"]) == 2
    assert "no usable classifier" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# train.main's val transform on folder: data


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> pathlib.Path:
    """train/ and val/ of two classes; PNG noise (any resize difference shows) of several shapes, all larger than
    224 on the shorter side (so an unset --image-size trains at 224)."""
    root = tmp_path_factory.mktemp("enum_folder")
    rng = np.random.default_rng(3)
    shapes = {"train": [(260, 300), (300, 240), (250, 250)], "val": [(257, 311), (400, 240)]}
    for split, sizes in shapes.items():
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _cfg(root, **kw):
    from train.config import TrainConfig

    return TrainConfig(arch="mobilenet_v2", dataset=f"folder:{root}", data_workers=0, **kw)


@pytest.mark.parity
@pytest.mark.parametrize("image_size", [224, None])
def test_train_val_uses_the_enum_s_eval_transform(photo_folder, image_size):
    """``--init torchvision:mobilenet_v2.IMAGENET1K_V2`` at the weights' crop (given, or chosen from the data):
    val images equal torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V2.transforms()`` through ``ImageFolder``,
    and config.json records the enum and the transform."""
    from train.main import load_source, run_weights

    tv = pytest.importorskip("torchvision")
    enum = tv.models.MobileNet_V2_Weights.IMAGENET1K_V2
    lines: list[str] = []
    cfg = _cfg(photo_folder, init="torchvision:mobilenet_v2.DEFAULT", image_size=image_size)
    with load_source(cfg, lines.append) as source:
        assert source.eval_preprocess.as_dict() == {"resize": 232, "crop": 224, "interpolation": "bilinear",
                                                    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        batches = list(source.batches("val", 4))
        assert (source.info.image_size, source.info.channels) == (224, 3)
        assert run_weights(cfg, source) == {"torchvision_weights": "torchvision:mobilenet_v2.IMAGENET1K_V2",
                                            "val_preprocess": source.eval_preprocess.as_dict()}
    assert [ln for ln in lines if ln.startswith("val transform")] == [
        "val transform: mobilenet_v2.IMAGENET1K_V2's eval transform (resize 232 bilinear, centre crop 224, mean "
        "[0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])"]
    reference = tv.datasets.ImageFolder(str(photo_folder / "val"), transform=enum.transforms())
    got = np.concatenate([b["image"] for b in batches])
    assert got.shape == (4, 224, 224, 3)
    for i in range(len(reference)):
        want = reference[i][0].numpy().transpose(1, 2, 0)
        assert float(np.abs(got[i] - want).max()) < 1e-4, reference.samples[i]
    # the V1 transform (resize 256) is a different image: the check above can fail
    v1 = tv.datasets.ImageFolder(str(photo_folder / "val"), transform=enum.__class__.IMAGENET1K_V1.transforms())
    assert float(np.abs(got[0] - v1[0][0].numpy().transpose(1, 2, 0)).max()) > 0.1


@pytest.mark.parametrize("kw, why", [
    ({"image_size": 160}, "the dataset's default at 160x160, not mobilenet_v2.IMAGENET1K_V2's eval transform (its "
                          "crop is 224; pass --image-size 224 to use it)"),
    ({"image_size": 224, "val_resize_size": 240}, "--val-resize-size 240 + centre crop 224, not "
                                                  "mobilenet_v2.IMAGENET1K_V2's eval transform"),
])
def test_train_val_keeps_the_default_otherwise(photo_folder, kw, why):
    from train.main import load_source, run_weights

    lines: list[str] = []
    cfg = _cfg(photo_folder, init="torchvision:mobilenet_v2.IMAGENET1K_V2", **kw)
    with load_source(cfg, lines.append) as source:
        assert source.eval_preprocess is None and source.info.image_size == kw["image_size"]
        assert run_weights(cfg, source)["val_preprocess"] is None
    assert f"val transform: {why}" in lines


def test_evaluate_and_predict_read_the_run_s_val_transform(tmp_path):
    """A run that validated with the weights' transform (its config.json's ``val_preprocess``): train.evaluate
    and cnnjax.predict (and so cnnjax.export) use the same one."""
    import argparse

    from cnnjax import predict
    from train import evaluate

    spec = weights.eval_preprocess("resnet50", "IMAGENET1K_V2").as_dict()
    (tmp_path / "config.json").write_text(json.dumps({"arch": "resnet50", "val_preprocess": spec}))
    args = argparse.Namespace(resize_size=None, crop_size=None, interpolation=None, image_size=None,
                              init=str(tmp_path), arch="resnet50", dataset="folder:/nowhere")
    got, origin = evaluate.resolve_preprocess(args)
    assert (got.as_dict(), origin) == (spec, "the run's config.json")
    assert predict.run_transform({"val_preprocess": spec}, 224, (0.5,) * 3, (0.5,) * 3) == (
        got, IMAGENET_MEAN, IMAGENET_STD)
    default, mean, _ = predict.run_transform({}, 224, (0.5,) * 3, (0.5,) * 3)
    assert (default.resize, mean) == (256, (0.5,) * 3)
    args.init = "torchvision:resnet50.IMAGENET1K_V2"
    got, origin = evaluate.resolve_preprocess(args)
    assert (got.resize, origin) == (232, "torchvision:resnet50.IMAGENET1K_V2")


@pytest.mark.slow
def test_a_run_at_the_crop_records_and_reuses_the_enum_s_transform(photo_folder, tmp_path, monkeypatch, capsys):
    """train.main from ``torchvision:mobilenet_v2.DEFAULT`` on the folder at 224 (a linear probe on cached
    features: one forward compile) validates with the V2 transform, records it, and cnnjax.predict of the run
    applies it."""
    from cnnjax import predict
    from train import main as train_main

    _fake_cache(tmp_path, monkeypatch, "mobilenet_v2", "IMAGENET1K_V2")
    _offline(monkeypatch)
    run = tmp_path / "run"
    assert train_main.main(["--arch", "mobilenet_v2", "--init", "torchvision:mobilenet_v2.DEFAULT", "--transfer",
                            "linear-probe", "--feature-cache", "--dataset", f"folder:{photo_folder}",
                            "--data-workers", "0", "--batch-size", "2", "--max-steps", "1", "--no-progress",
                            "--workdir", str(run)]) == 0
    assert "val transform: mobilenet_v2.IMAGENET1K_V2's eval transform" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    spec = weights.eval_preprocess("mobilenet_v2", "IMAGENET1K_V2")
    assert config["torchvision_weights"] == "torchvision:mobilenet_v2.IMAGENET1K_V2"
    assert (config["val_preprocess"], config["image_size"]) == (spec.as_dict(), 224)
    predictor = predict.build("mobilenet_v2", str(run))
    assert (predictor.spec, predictor.mean, predictor.std) == (spec, spec.mean, spec.std)
