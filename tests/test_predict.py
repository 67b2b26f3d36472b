"""``python -m cnnjax.predict`` (issue #15): top-k classes of image files from torchvision weights or a run."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from cnnjax import checkpoint, predict


def _photo(path: pathlib.Path, w: int, h: int) -> pathlib.Path:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 255, yy / h * 255, 128 + 100 * np.sin(xx / 9) * np.cos(yy / 7)], -1)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parity
def test_torchvision_weights_give_torchvision_s_probabilities(tmp_path, monkeypatch, capsys):
    """``--init torchvision:resnet18`` (a cached checkpoint: random torch weights) classifies a photo as
    torchvision does: its weights' own eval transform, softmax of the eval-mode torch model, the weights'
    category names; a missing and a corrupt file get one error each while the photo still runs (exit 1)."""
    torch = pytest.importorskip("torch")
    import torchvision
    from torchvision.models import ResNet18_Weights

    from cnnjax import weights

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # random BN statistics, so the features are not all alike
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    name = pathlib.Path(weights.torchvision_info("resnet18")["url"]).name
    weights.export_npz(net.state_dict(), tmp_path / "torchvision" / pathlib.Path(name).with_suffix(".npz").name)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    photo = _photo(tmp_path / "photo.png", 320, 240)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    code = predict.main(["--arch", "resnet18", "--init", "torchvision:resnet18", "--json", "--top", "5",
                         str(photo), str(tmp_path / "missing.png"), str(tmp_path / "broken.jpg")])
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 1 and len(rows) == 3
    assert "no such file" in rows[1]["error"] and "cannot read" in rows[2]["error"]
    tv = ResNet18_Weights.IMAGENET1K_V1
    with torch.no_grad():
        probs = torch.softmax(net(tv.transforms()(Image.open(photo).convert("RGB"))[None]), -1)[0].numpy()
    want = np.argsort(-probs)[:5]
    got = rows[0]["top"]
    assert [t["label"] for t in got] == want.tolist()
    np.testing.assert_allclose([t["prob"] for t in got], probs[want], rtol=1e-3, atol=1e-5)
    assert [t["name"] for t in got] == [tv.meta["categories"][i] for i in want]
    assert predict.imagenet_classes() == tv.meta["categories"]


@pytest.mark.slow  # > 5 s (CI durations)
def test_a_run_directory_predicts_with_its_own_classes_and_transform(tmp_path, capsys):
    """A ``train.main`` run: its class names, size, channels and normalisation from ``config.json``; the
    probabilities equal the restored model on the PNG resized with PIL and normalised by hand."""
    from cnnjax import data, models
    from train.config import TrainConfig
    from train.main import train

    run = tmp_path / "run"
    train(TrainConfig(arch="lenet5", max_steps=3, batch_size=32, workdir=str(run), progress=False,
                      model_opt=("modern=True",)), log=lambda _: None)
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == [str(d) for d in range(10)] and len(config["mean"]) == 1
    source = data.load("digits")
    images = next(source.batches("val", 4))["image"]
    raw = images * np.float32(source.info.std) + np.float32(source.info.mean)
    paths = []
    for i, x in enumerate(raw):
        paths.append(str(tmp_path / f"d{i}.png"))
        Image.fromarray(np.clip(np.rint(x[..., 0] * 255), 0, 255).astype(np.uint8)).resize((20, 20)).save(paths[-1])
    assert predict.main(["--arch", "lenet5", "--init", str(run), "--top", "3", *paths]) == 0
    text = capsys.readouterr().out
    assert text.count(":\n") == 4 and "%" in text
    results = predict.predict(predict.build("lenet5", str(run)), paths, top=10)
    model = models.create("lenet5", num_classes=10, in_channels=1, modern=True)
    variables = checkpoint.restore(run)
    for path, r in zip(paths, results):
        x = np.asarray(Image.open(path).convert("L").resize((32, 32), Image.BILINEAR), np.float32) / 255
        x = ((x - source.info.mean[0]) / source.info.std[0])[None, :, :, None]
        want = np.asarray(jax.nn.softmax(model.apply(variables, x, False)))[0]
        got = np.zeros(10)
        for t in r["top"]:
            got[t["label"]] = t["prob"]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert r["top"][0]["name"] == str(int(np.argmax(want)))


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert predict.main(["--arch", "resnet18", "--init", "torchvision:resnet50", "x.png"]) == 2
    assert "weights are for resnet50" in capsys.readouterr().err
    assert predict.main(["--arch", "lenet5", "--init", str(tmp_path), "x.png"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert predict.main(["--arch", "nosuchnet", "--init", str(tmp_path), "x.png"]) == 2
    assert "valid choices" in capsys.readouterr().err
