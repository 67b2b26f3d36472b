"""``python -m cnnjax.export --format stablehlo`` (issue #15): the artifact, reloaded in a fresh process that does
not import cnnjax, gives the JAX model's logits on real images at any batch size."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnjax import checkpoint, export, models, predict

RELOAD = """
import json, sys
import numpy as np
from jax import export
exp = export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
x = np.load(sys.argv[2])
out = {str(n): np.asarray(exp.call(x[:n])).tolist() for n in (1, len(x))}
assert not any(m == "cnnjax" or m.startswith("cnnjax.") for m in sys.modules), "cnnjax was imported"
print(json.dumps(out))
"""


def _reload(artifact: pathlib.Path, x: np.ndarray, tmp_path: pathlib.Path) -> dict[str, np.ndarray]:
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(artifact), str(tmp_path / "x.npy")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {k: np.asarray(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from train.config import TrainConfig
    from train.main import train

    run = tmp_path_factory.mktemp("export") / "run"
    train(TrainConfig(arch="lenet5", max_steps=3, batch_size=32, workdir=str(run), progress=False),
          log=lambda _: None)
    return run


@pytest.mark.parametrize("include_preprocess", [False, True])
def test_stablehlo_of_a_run_reloads_without_cnnjax(digits_run, tmp_path, include_preprocess, capsys):
    """Real digits (the bundled val images as PNGs, read as predict reads them): the reloaded artifact's logits
    equal ``model.apply`` of the restored run at batch 1 and 6 (one symbolic batch dimension), rel. error
    <= 1e-4; ``--include-preprocess`` takes the uint8 pixels; the sidecar says how to feed it."""
    from cnnjax import data

    out = tmp_path / "lenet5.stablehlo"
    argv = ["--arch", "lenet5", "--init", str(digits_run), "--out", str(out)]
    assert export.main(argv + (["--include-preprocess"] if include_preprocess else [])) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["input"]["shape"] == ["b", 32, 32, 1] and meta["class_names"] == [str(d) for d in range(10)]
    source = data.load("digits")
    raw = next(source.batches("val", 6))["image"] * np.float32(source.info.std) + np.float32(source.info.mean)
    pixels = np.clip(np.rint(raw * 255), 0, 255).astype(np.uint8)
    x = pixels if include_preprocess else ((pixels / np.float32(255) - np.float32(meta["mean"]))
                                           / np.float32(meta["std"])).astype(np.float32)
    model = models.create("lenet5", num_classes=10, in_channels=1, conv_impl="xla")
    normalised = ((pixels / np.float32(255) - np.float32(meta["mean"])) / np.float32(meta["std"])).astype(np.float32)
    want = np.asarray(model.apply(checkpoint.restore(digits_run), normalised, False))
    got = _reload(out, x, tmp_path)
    assert _rel(got["6"], want) <= 1e-4 and _rel(got["1"], want[:1]) <= 1e-4
    assert meta["input"]["dtype"] == ("uint8" if include_preprocess else "float32")


def test_bad_export_arguments_exit_2(tmp_path, capsys):
    assert export.main(["--arch", "lenet5", "--init", str(tmp_path), "--out", str(tmp_path / "m"),
                        "--format", "tflite"]) == 2
    assert "valid choices: stablehlo" in capsys.readouterr().err
    assert export.main(["--arch", "lenet5", "--init", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "no config.json" in capsys.readouterr().err


def _photos(size: int) -> np.ndarray:
    """Two real photos (the lecture's sample photo, matplotlib's grace_hopper.jpg), PIL's torchvision-style eval
    view at ``size``: uint8 (2, S, S, 3)."""
    import matplotlib.cbook
    from PIL import Image

    from cnnjax.analysis.filters import load_photo
    from cnnjax.data import pil_transforms as T
    from cnnjax.data.preprocess import Preprocess

    spec = Preprocess(resize=int(round(size / 0.875)), crop=size)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = T.eval_image(f, size, 3, spec)
    lecture = np.asarray(Image.fromarray((load_photo(None) * 255).astype(np.uint8)).convert("RGB"))
    path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"cnnjax-photo-{os.getpid()}.png"
    Image.fromarray(lecture).save(path)
    try:
        photo = T.eval_image(str(path), size, 3, spec)
    finally:
        path.unlink()
    return np.stack([hopper, photo])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2", "convnext_tiny"])
def test_stablehlo_of_torchvision_weights_matches_on_photos(arch, tmp_path, monkeypatch):
    """``--init torchvision:ARCH`` (random weights in torchvision's format in the cache), 224x224: the reloaded
    artifact's logits on two real photos equal the JAX model's, rel. error <= 1e-4 (fp32)."""
    from cnnjax import weights

    model = models.create(arch, conv_impl="xla")
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    name = pathlib.Path(weights.torchvision_info(arch)["url"]).name
    weights.export_npz(weights.to_torchvision(arch, jax.device_get(variables)),
                       tmp_path / "torchvision" / pathlib.Path(name).with_suffix(".npz").name)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    out = tmp_path / f"{arch}.stablehlo"
    assert export.main(["--arch", arch, "--init", f"torchvision:{arch}", "--out", str(out),
                        "--include-preprocess"]) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["class_names"] == predict.imagenet_classes() and meta["crop"] == 224
    pixels = _photos(224)
    x = ((pixels / np.float32(255) - np.float32(meta["mean"])) / np.float32(meta["std"])).astype(np.float32)
    want = np.asarray(jax.jit(lambda v, x: model.apply(v, x, False))(weights.load_torchvision(arch), x))
    got = _reload(out, pixels, tmp_path)
    assert _rel(got["2"], want) <= 1e-4
