"""``python -m cnnjax.export --format stablehlo|savedmodel|onnx`` (issue #15): the artifact, reloaded in a fresh process
that does not import cnnjax (nor flax or jax2tf, for the SavedModel), gives the JAX model's logits on real images at
any batch size."""

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


RELOAD_TF = """
import json, os, sys
os.environ.update(TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", NO_GCE_CHECK="true", CUDA_VISIBLE_DEVICES="")
import numpy as np
import tensorflow as tf
meta = json.load(open(sys.argv[1] + ".json"))["signature"]
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures[meta["name"]]
x = np.load(sys.argv[2])
out = {str(n): serve(**{meta["input"]: tf.constant(x[:n])})[meta["output"]].numpy().tolist() for n in (1, len(x))}
assert np.allclose(loaded.serve(tf.constant(x[:2]))[meta["output"]].numpy(), out[str(len(x))][:2], atol=1e-6)
bad = [m for m in sys.modules if m.split(".")[0] in ("cnnjax", "flax") or m.startswith("jax.experimental.jax2")]
assert not bad, f"imported {bad[:3]}"
print(json.dumps(out))
"""


RELOAD_ORT = """
import json, sys
import numpy as np
import onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
out = {str(n): sess.run(["logits"], {"images": x[:n]})[0].tolist() for n in (1, len(x))}
bad = [m for m in sys.modules if m.split(".")[0] in ("cnnjax", "flax", "jax", "jaxlib")]
assert not bad, f"imported {bad[:3]}"
print(json.dumps(out))
"""


def _reload(artifact: pathlib.Path, x: np.ndarray, tmp_path: pathlib.Path, fmt: str = "stablehlo"
            ) -> dict[str, np.ndarray]:
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = {"savedmodel": RELOAD_TF, "onnx": RELOAD_ORT}.get(fmt, RELOAD)
    proc = subprocess.run([sys.executable, "-c", script, str(artifact), str(tmp_path / "x.npy")], cwd=tmp_path,
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


def _digits_inputs(meta: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 pixels, float32 normalised) of ``n`` bundled val digits, as the sidecar says."""
    from cnnjax import data

    source = data.load("digits")
    raw = next(source.batches("val", n))["image"] * np.float32(source.info.std) + np.float32(source.info.mean)
    pixels = np.clip(np.rint(raw * 255), 0, 255).astype(np.uint8)
    return pixels, ((pixels / np.float32(255) - np.float32(meta["mean"])) / np.float32(meta["std"])).astype(np.float32)


@pytest.mark.slow  # > 5 s (CI durations)
def test_savedmodel_of_a_run_runs_in_tensorflow(digits_run, tmp_path):
    """``--format savedmodel``: the SavedModel directory, loaded in a process with TensorFlow only (no cnnjax,
    flax or jax2tf; TF itself imports parts of jax where jax is installed), gives ``model.apply``'s logits on real
    digits through its serving signature at batch 1 and 6 (a polymorphic batch), rel. error <= 1e-4; the weights
    are variables, the sidecar names the signature."""
    pytest.importorskip("tensorflow")
    out = tmp_path / "lenet5.savedmodel"
    assert export.main(["--arch", "lenet5", "--init", str(digits_run), "--out", str(out),
                        "--format", "savedmodel"]) == 0
    assert (out / "saved_model.pb").exists() and any((out / "variables").iterdir())
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["format"] == "savedmodel" and meta["input"]["shape"] == ["b", 32, 32, 1]
    assert meta["signature"] == {"name": "serving_default", "input": "images", "output": "logits"}
    _, x = _digits_inputs(meta, 6)
    model = models.create("lenet5", num_classes=10, in_channels=1, conv_impl="xla")
    want = np.asarray(model.apply(checkpoint.restore(digits_run), x, False))
    got = _reload(out, x, tmp_path, "savedmodel")
    assert _rel(got["6"], want) <= 1e-4 and _rel(got["1"], want[:1]) <= 1e-4
    # a second export over the first replaces it; a non-SavedModel path is not overwritten
    assert export.main(["--arch", "lenet5", "--init", str(digits_run), "--out", str(out),
                        "--format", "savedmodel"]) == 0
    (tmp_path / "notes").mkdir()
    assert export.main(["--arch", "lenet5", "--init", str(digits_run), "--out", str(tmp_path / "notes"),
                        "--format", "savedmodel"]) == 2


def test_onnx_of_a_run_runs_in_onnxruntime(digits_run, tmp_path):
    """``--format onnx``: the ONNX file, run by onnxruntime in a process without jax or cnnjax, gives
    ``model.apply``'s logits on real digits at batch 1 and 6 (a dynamic batch ``N``), rel. error <= 1e-4."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "lenet5.onnx"
    assert export.main(["--arch", "lenet5", "--init", str(digits_run), "--out", str(out), "--format", "onnx"]) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["format"] == "onnx" and meta["signature"]["input"] == "images"
    _, x = _digits_inputs(meta, 6)
    model = models.create("lenet5", num_classes=10, in_channels=1, conv_impl="xla")
    want = np.asarray(model.apply(checkpoint.restore(digits_run), x, False))
    got = _reload(out, x, tmp_path, "onnx")
    assert _rel(got["6"], want) <= 1e-4 and _rel(got["1"], want[:1]) <= 1e-4


@pytest.mark.parametrize("module, fmt, out, extra", [("onnx", "onnx", "m.onnx", "cnnjax[export]"),
                                                     ("tensorflow", "savedmodel", "m", "cnnjax[data]")])
def test_a_format_without_its_package_names_the_extra(digits_run, tmp_path, monkeypatch, capsys, module, fmt, out,
                                                      extra):
    monkeypatch.setitem(sys.modules, module, None)  # import MODULE -> ImportError
    assert export.main(["--arch", "lenet5", "--init", str(digits_run), "--out", str(tmp_path / out),
                        "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert extra in err and len(err.strip().splitlines()) == 1


def test_bad_export_arguments_exit_2(tmp_path, capsys):
    assert export.main(["--arch", "lenet5", "--init", str(tmp_path), "--out", str(tmp_path / "m"),
                        "--format", "tflite"]) == 2
    assert "valid choices: stablehlo, savedmodel, onnx" in capsys.readouterr().err
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


# Each architecture of issue #15 in one format, each format for one architecture: the same export code serves
# every architecture (``export.forward`` of the restored model), and every format is also checked on the digits
# run above; each photo check at 224 exports, reloads in a fresh process and compiles the model.
PHOTO_CASES = [("resnet50", "stablehlo"), ("mobilenet_v2", "savedmodel"), ("convnext_tiny", "onnx")]


@pytest.mark.slow
@pytest.mark.parametrize("arch, fmt", PHOTO_CASES)
def test_export_of_torchvision_weights_matches_on_photos(arch, fmt, tmp_path, monkeypatch):
    """``--init torchvision:ARCH`` (random weights in torchvision's format in the cache), 224x224: the reloaded
    artifact's logits on two real photos (uint8, ``--include-preprocess``) equal the JAX model's at batch 1 and 2,
    rel. error <= 1e-4 (fp32). SavedModel only where TensorFlow is installed, ONNX where onnxruntime is."""
    from cnnjax import weights

    pytest.importorskip({"savedmodel": "tensorflow", "onnx": "onnxruntime"}.get(fmt, "jax"))
    assert {f for _, f in PHOTO_CASES} == set(export.FORMATS)
    model = models.create(arch, conv_impl="xla")
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    name = pathlib.Path(weights.torchvision_info(arch)["url"]).name
    weights.export_npz(weights.to_torchvision(arch, jax.device_get(variables)),
                       tmp_path / "torchvision" / pathlib.Path(name).with_suffix(".npz").name)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    pixels = _photos(224)
    out = tmp_path / f"{arch}.{fmt}"
    assert export.main(["--arch", arch, "--init", f"torchvision:{arch}", "--out", str(out), "--format", fmt,
                        "--include-preprocess"]) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["class_names"] == predict.imagenet_classes() and meta["crop"] == 224
    x = ((pixels / np.float32(255) - np.float32(meta["mean"])) / np.float32(meta["std"])).astype(np.float32)
    want = np.asarray(jax.jit(lambda v, x: model.apply(v, x, False))(weights.load_torchvision(arch), x))
    got = _reload(out, pixels, tmp_path, fmt)
    assert _rel(got["2"], want) <= 1e-4 and _rel(got["1"], want[:1]) <= 1e-4, fmt
