"""The architecture records (``cnnjax.models.record``): every URL, hash prefix, eval transform, parameter count and
published accuracy against the reference tables in tests/data (and, with torchvision installed, against
torchvision's own weight metadata for every architecture), the README's table row by row, default input sizes,
and what cnnjax.weights derives from them. Abstract traces only; nothing is downloaded."""

from __future__ import annotations

import csv
import functools
import pathlib
import re
import subprocess
import sys

import pytest

from cnnjax import models, weights
from cnnjax.models import registry
from cnnjax.weights import download as dl

ROOT = pathlib.Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# the zoo's torchvision architectures as cnnjax.weights listed them by hand before the records
TORCHVISION_ARCHS = (
    "alexnet",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "googlenet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2",
    "densenet121", "densenet161", "densenet169", "densenet201",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
)
SMALL = {"lenet5", "lenet5_modern", "mlp", "mlp_10m", "vgg_small"} | {f"resnet{d}{s}" for d in (20, 32, 44, 56, 110)
                                                        for s in ("", "_plain")}


def _tsv(name: str) -> list[dict[str, str]]:
    with open(DATA / name) as f:
        return list(csv.DictReader((ln for ln in f if not ln.startswith("#")), delimiter="\t"))


def _v1(arch: str) -> models.WeightsRecord:
    return models.record(arch).weights_for("IMAGENET1K_V1")


def test_records_match_the_url_reference():
    rows = _tsv("torchvision-weight-urls.tsv")
    assert len(rows) == 19
    for row in rows:
        w = _v1(row["arch"])
        assert w.url == row["url"], row["arch"]
        assert w.sha256_prefix == re.fullmatch(r".*-([0-9a-f]+)\.pth", row["url"])[1], row["arch"]
        t = w.transform
        assert (t.resize, t.crop, t.interpolation) == (int(row["resize"]), int(row["crop"]), row["interpolation"])
        assert (t.mean, t.std) == (IMAGENET_MEAN, IMAGENET_STD), row["arch"]
        assert (w.name, w.categories) == ("IMAGENET1K_V1", "imagenet-1k")


def test_records_match_the_accuracy_reference():
    rows = _tsv("torchvision-imagenet1k-v1.tsv")
    assert len(rows) == 19
    for row in rows:
        w = _v1(row["arch"])
        assert (w.num_params, w.top1, w.top5) == (int(row["params"]), float(row["acc1"]), float(row["acc5"])), row


@pytest.mark.parity
@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_records_match_torchvision_metadata(arch):
    """Every architecture (also those the two tables leave out) against torchvision's ``Weights`` enum: the
    metadata is in torchvision's source, nothing is downloaded."""
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    kw = ref.transforms.keywords
    w = _v1(arch)
    assert w.url == ref.url and ref.url.endswith(f"-{w.sha256_prefix}.pth")
    assert w.num_params == ref.meta["num_params"]
    metrics = ref.meta["_metrics"]["ImageNet-1K"]
    assert (w.top1, w.top5) == (metrics["acc@1"], metrics["acc@5"])
    assert len(ref.meta["categories"]) == 1000 and w.categories == "imagenet-1k"
    interpolation = kw.get("interpolation")
    t = w.transform
    assert (t.resize, t.crop, t.interpolation) == (kw.get("resize_size", 256), kw["crop_size"],
                                                   interpolation.value if interpolation else "bilinear")
    assert (t.mean, t.std) == (tuple(kw.get("mean", IMAGENET_MEAN)), tuple(kw.get("std", IMAGENET_STD)))


def _readme_table() -> list[tuple[str, int, float, float]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## torchvision weights\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert lines[0].split("|")[1:4] == [" architecture ", " parameters ",
                                        " published top-1 / top-5 (torchvision IMAGENET1K_V1) "]
    rows = []
    for line in lines[2:]:
        m = re.fullmatch(r"\| `(\w+)` \| ([\d,]+) \| (\d+\.\d{3}) / (\d+\.\d{3}) \|", line)
        assert m, line
        rows.append((m[1], int(m[2].replace(",", "")), float(m[3]), float(m[4])))
    return rows


def test_readme_table_matches_the_records():
    rows = _readme_table()
    archs = [r[0] for r in rows]
    assert len(archs) == len(set(archs))
    assert set(archs) == {r.name for r in models.records() if r.weights}
    for arch, params, top1, top5 in rows:
        w = _v1(arch)
        assert (params, top1, top5) == (w.num_params, w.top1, w.top5), arch


@pytest.mark.slow
@pytest.mark.parametrize("arch", models.names())
def test_every_architecture_has_a_record_with_an_accepted_input_size(arch):
    rec = models.record(arch)
    assert rec.name == arch and rec.factory is not None
    assert rec.input_size == (32 if arch in SMALL else 224)
    models.check_input_size(models.create(arch), rec.input_size)  # abstract trace (jax.eval_shape)


def test_derived_tables():
    assert set(weights.TORCHVISION_ARCHS) == set(TORCHVISION_ARCHS)
    assert len(weights.TORCHVISION_ARCHS) == len(TORCHVISION_ARCHS)
    assert set(dl._INFO) == set(TORCHVISION_ARCHS)
    assert {r.name for r in models.records() if r.weights} == set(TORCHVISION_ARCHS)
    assert [r.name for r in models.records()] == models.names()
    assert weights.head_modules("googlenet") == (("head",), ("aux1", "fc2"), ("aux2", "fc2"))
    assert all(weights.head_modules(a) == (("head",),) for a in models.names() if a != "googlenet")
    info = weights.torchvision_info("efficientnet_v2_l")
    assert (info["resize"], info["crop"], info["interpolation"], info["mean"], info["std"]) == (
        480, 480, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert info["filename"] == "efficientnet_v2_l-59c71312.pth" and info["sha256_prefix"] == "59c71312"
    assert weights.eval_preprocess("convnext_tiny").resize == 236
    with pytest.raises(ValueError, match="valid choices: .*resnet50"):
        models.record("resnet51")
    with pytest.raises(ValueError, match="no torchvision weight mapping for architecture 'lenet5'"):
        weights.eval_preprocess("lenet5")
    with pytest.raises(KeyError, match="no torchvision weights 'IMAGENET1K_V2'; valid: IMAGENET1K_V1, DEFAULT"):
        models.record("resnet18").weights_for("IMAGENET1K_V2")


def test_records_are_checked_and_frozen():
    rec = models.record("resnet18")
    with pytest.raises(AttributeError):
        rec.input_size = 32
    with pytest.raises(ValueError, match="not the hash in the file name"):
        models.WeightsRecord("IMAGENET1K_V1", "https://x/resnet18-f37072fd.pth", "0123abcd", models.EvalTransform(),
                             1.0, 2.0, 3)
    with pytest.raises(ValueError, match="need a torchvision_map"):
        models.ArchRecord("x", rec.factory, weights=rec.weights)


def test_a_record_registered_later_serves_the_weights_functions(monkeypatch):
    """One ``register`` call with its keywords is all a new architecture needs."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    base = models.record("resnet18")
    factory = functools.partial(base.factory, zero_init_last_bn=True)
    assert models.register("my_resnet18", factory, torchvision_map=base.torchvision_map,
                           weights=base.weights) is factory
    assert "my_resnet18" in models.names() and models.record("my_resnet18").input_size == 224
    info = weights.torchvision_info("my_resnet18")
    assert info["url"].endswith("resnet18-f37072fd.pth")
    sd = weights.to_torchvision("resnet18", {k: v for k, v in _zeros("resnet18").items()})
    assert weights.from_torchvision("my_resnet18", sd)["params"].keys() == _zeros("resnet18")["params"].keys()
    with pytest.raises(ValueError, match="already registered"):
        models.register("my_resnet18", factory)


def _zeros(arch: str) -> dict:
    import numpy as np

    from cnnjax.weights.torchvision import abstract_variables

    out: dict = {}
    for key, spec in abstract_variables(arch).items():
        node = out
        for p in key[:-1]:
            node = node.setdefault(p, {})
        node[key[-1]] = np.zeros(spec.shape, np.float32)
    return out


def test_models_import_neither_weights_data_analysis_nor_torch():
    code = ("import sys, cnnjax.models as m; m.records(); "
            "bad = sorted(k for k in sys.modules if k.split('.')[0] == 'torch' or k.startswith(('cnnjax.weights', "
            "'cnnjax.data', 'cnnjax.analysis'))); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)
