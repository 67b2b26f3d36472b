"""cnnjax.weights: strict torchvision <-> cnnjax conversion, round trips, downloads (local HTTP server only),
.pth/.npz reading and the evaluation preprocessing. Torch-free where possible; tests that need torch/torchvision
are marked ``parity`` and skip without them. Nothing here touches the internet."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import pathlib
import sys
import threading

import numpy as np
import pytest

from cnnjax import weights
from cnnjax.weights import download as dl
from cnnjax.weights.torchvision import abstract_variables

DATA = pathlib.Path(__file__).parent / "data"


def _random_variables(arch: str, seed: int = 0, **kw) -> dict:
    """Random float32 arrays with the shapes of ``arch``'s parameter tree (no model init, no compile)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for key, spec in abstract_variables(arch, **kw).items():
        node = out
        for p in key[:-1]:
            node = node.setdefault(p, {})
        node[key[-1]] = rng.standard_normal(spec.shape, dtype=np.float32)
    return out


def _leaves(tree: dict, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
    return out


# ---------------------------------------------------------------------------------------------------------------
# conversion, NumPy only


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["alexnet", "googlenet", "resnet18", "resnext50_32x4d", "densenet121",
                                  "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
                                  "convnext_tiny"])
def test_round_trip_is_bitwise(arch):
    variables = _random_variables(arch)
    sd = weights.to_torchvision(arch, variables)
    assert all(v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32) for k, v in sd.items())
    assert all(v.flags.c_contiguous for v in sd.values())
    back = weights.from_torchvision(arch, sd)
    a, b = _leaves(variables), _leaves(back)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == np.float32 and np.array_equal(a[k], b[k]), k
    sd2 = weights.to_torchvision(arch, back)
    assert sd.keys() == sd2.keys() and all(np.array_equal(sd[k], sd2[k]) for k in sd)


def test_layouts():
    sd = weights.to_torchvision("resnet18", _random_variables("resnet18"))
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)  # OIHW
    assert sd["fc.weight"].shape == (1000, 512)  # (out, in)
    assert sd["layer2.0.downsample.1.running_var"].shape == (128,)
    assert sd["bn1.num_batches_tracked"].shape == () and sd["bn1.num_batches_tracked"] == 0
    v = weights.from_torchvision("resnet18", sd)
    np.testing.assert_array_equal(v["params"]["stem"]["conv"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(v["params"]["head"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(v["batch_stats"]["stage2_block0"]["downsample"]["bn"]["var"],
                                  sd["layer2.0.downsample.1.running_var"])
    cn = weights.to_torchvision("convnext_tiny", _random_variables("convnext_tiny"))
    assert cn["features.1.0.layer_scale"].shape == (96, 1, 1)
    assert cn["features.1.0.block.0.weight"].shape == (96, 1, 7, 7)  # depthwise


def test_outputs_are_float32_copies():
    sd = weights.to_torchvision("resnet18", _random_variables("resnet18"))
    sd = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in sd.items()}
    v = weights.from_torchvision("resnet18", sd)
    bias = v["params"]["head"]["bias"]
    assert bias.dtype == np.float32 and not np.shares_memory(bias, sd["fc.bias"])
    sd["fc.bias"][:] = 123.0
    assert not np.any(bias == 123.0)


def test_strict_errors_name_both_sides():
    sd = weights.to_torchvision("resnet18", _random_variables("resnet18"))
    bad = dict(sd)
    del bad["layer3.1.bn2.running_mean"]
    bad["layer9.0.conv1.weight"] = np.zeros((1,), np.float32)
    bad["layer1.0.conv1.weight"] = np.zeros((64, 64, 3, 5), np.float32)
    with pytest.raises(weights.WeightConversionError) as err:
        weights.from_torchvision("resnet18", bad)
    msg = str(err.value)
    assert "batch_stats/stage3_block1/bn2/mean" in msg and "layer3.1.bn2.running_mean" in msg
    assert "layer9.0.conv1.weight" in msg
    assert "params/stage1_block0/conv1/kernel" in msg and "(3, 3, 64, 64) vs (3, 5, 64, 64)" in msg

    variables = _random_variables("resnet18")
    del variables["params"]["stage1_block0"]["bn1"]
    variables["params"]["extra"] = {"kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(weights.WeightConversionError, match=r"(?s)stage1_block0/bn1/scale.*params/extra/kernel"):
        weights.to_torchvision("resnet18", variables)


def test_unknown_arch():
    with pytest.raises(ValueError, match="no torchvision weight mapping for architecture 'resnet20'"):
        weights.from_torchvision("resnet20", {})


def test_drop_head_and_num_classes():
    sd = weights.to_torchvision("mobilenet_v3_small", _random_variables("mobilenet_v3_small"))
    v = weights.from_torchvision("mobilenet_v3_small", sd, drop_head=True)
    assert "head" not in v["params"] and "pre_head" in v["params"]
    sd10 = weights.to_torchvision("resnet18", _random_variables("resnet18", num_classes=10))
    assert sd10["fc.weight"].shape == (10, 512)
    assert weights.from_torchvision("resnet18", sd10)["params"]["head"]["kernel"].shape == (512, 10)
    assert "head" not in weights.from_torchvision("resnet18", sd10, drop_head=True)["params"]


def test_googlenet_with_and_without_aux_heads():
    sd = weights.to_torchvision("googlenet", _random_variables("googlenet"))
    assert "aux1.fc2.weight" in sd and "fc.weight" in sd
    assert "aux2" in weights.from_torchvision("googlenet", sd)["params"]
    no_aux = {k: v for k, v in sd.items() if not k.startswith("aux")}
    v = weights.from_torchvision("googlenet", no_aux)
    assert "aux1" not in v["params"] and "aux2" not in v["params"]
    dropped = weights.from_torchvision("googlenet", sd, drop_head=True)["params"]
    assert "head" not in dropped and "fc2" not in dropped["aux1"] and "fc1" in dropped["aux1"]


def test_key_normalization():
    sd = weights.to_torchvision("densenet121", _random_variables("densenet121"))
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    a, b = _leaves(weights.from_torchvision("densenet121", sd)), _leaves(weights.from_torchvision("densenet121",
                                                                                                legacy))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    wrapped = {"module." + k: v for k, v in sd.items()}
    assert _leaves(weights.from_torchvision("densenet121", wrapped)).keys() == a.keys()


# ---------------------------------------------------------------------------------------------------------------
# with torch: every architecture's keys and shapes, and torchvision accepting to_torchvision's output


def _reference_archs() -> set[str]:
    with open(DATA / "torchvision-imagenet1k-v1.tsv") as f:
        return {r[0] for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")} - {"arch"}


@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.parametrize("arch", [a for a in weights.TORCHVISION_ARCHS if a not in _reference_archs()])
def test_every_torchvision_arch_converts_strictly(arch):
    """Key coverage and shapes (meta-device torchvision models: no memory, no init) for the architectures that
    tests/test_weights_parity.py does not convert (it covers the 19 of tests/data/torchvision-imagenet1k-v1.tsv)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    kw = {"aux_logits": True, "init_weights": False} if arch == "googlenet" else {}
    with torch.device("meta"):
        tm = getattr(torchvision.models, arch)(**kw)
    weights.check_torchvision(arch, tm.state_dict())
    weights.check_torchvision(arch, tm.state_dict(), drop_head=True)


@pytest.mark.parity
@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "convnext_tiny", "mobilenet_v3_small"])
def test_torchvision_loads_to_torchvision_output(arch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    kw = {"aux_logits": True, "init_weights": True} if arch == "googlenet" else {}
    torch.manual_seed(0)
    src = getattr(torchvision.models, arch)(**kw)
    with torch.no_grad():
        for name, buf in src.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    sd = src.state_dict()
    variables = weights.from_torchvision(arch, sd)  # torch tensors in
    back = weights.to_torchvision(arch, variables)
    dst = getattr(torchvision.models, arch)(**kw)
    dst.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for k, v in dst.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, sd[k]), k


# ---------------------------------------------------------------------------------------------------------------
# URL table, reading, downloading


def test_url_table_matches_reference():
    with open(DATA / "torchvision-weight-urls.tsv") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")][1:]
    assert len(rows) == 19
    for arch, url, resize, crop, interpolation in rows:
        info = weights.torchvision_info(arch)
        assert (info["url"], info["resize"], info["crop"], info["interpolation"]) == (url, int(resize), int(crop),
                                                                                      interpolation)
        assert info["sha256_prefix"] and url.endswith(f"-{info['sha256_prefix']}.pth")
    assert set(dl._INFO) == set(weights.TORCHVISION_ARCHS)
    assert weights.torchvision_info("alexnet")["sha256_prefix"] == "7be5be79"


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CNNJAX_CACHE", raising=False)
    assert weights.get_cache_dir() == pathlib.Path.home() / ".cache" / "cnnjax" / "torchvision"
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    assert weights.get_cache_dir() == tmp_path / "torchvision"
    assert weights.get_cache_dir(tmp_path / "x") == tmp_path / "x"


class _Server:
    """Serves ``files`` ({name: bytes}) on 127.0.0.1; ``/truncated/<name>`` announces more bytes than it sends.
    Counts GET requests in ``hits``."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                name = self.path.rsplit("/", 1)[-1]
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                self.send_response(200)
                truncated = self.path.startswith("/truncated/")
                self.send_header("Content-Length", str(len(body) + (100 if truncated else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _npz_bytes(sd: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **sd)
    return buf.getvalue()


def _hashed_name(stem: str, data: bytes, suffix: str) -> str:
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}"


def test_download_caches_and_checks_the_hash(server, tmp_path, monkeypatch):
    variables = _random_variables("resnet18")
    data = _npz_bytes(weights.to_torchvision("resnet18", variables))
    name = _hashed_name("resnet18", data, ".npz")
    server.files[name] = data
    cache = tmp_path / "cache"
    v = weights.load_torchvision("resnet18", f"{server.url}/{name}", cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no .part left behind
    assert np.array_equal(v["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
    # the default URL (redirected to the local server) and the cache: a second load does not download again
    monkeypatch.setitem(dl._INFO, "resnet18", dict(dl._INFO["resnet18"], url=f"{server.url}/{name}"))
    hits = server.hits
    weights.load_torchvision("resnet18", cache_dir=cache, progress=False)
    assert server.hits == hits
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path / "env"))
    weights.load_torchvision("resnet18", progress=False)
    assert (tmp_path / "env" / "torchvision" / name).is_file() and server.hits == hits + 1


def test_corrupted_download_leaves_nothing(server, tmp_path):
    data = _npz_bytes(weights.to_torchvision("resnet18", _random_variables("resnet18")))
    name = "resnet18-0123abcd.npz"  # a hash prefix the content does not have
    server.files[name] = data
    cache = tmp_path / "cache"
    with pytest.raises(weights.ChecksumError, match="0123abcd"):
        weights.load_torchvision("resnet18", f"{server.url}/{name}", cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []
    good = _hashed_name("resnet18", data, ".npz")
    server.files[good] = data
    with pytest.raises(weights.WeightsUnavailableError, match="truncated"):
        weights.load_torchvision("resnet18", f"{server.url}/truncated/{good}", cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(server, tmp_path, monkeypatch):
    port = server.httpd.server_address[1]
    server.close()  # nothing listens there any more: connection refused, as offline
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    monkeypatch.setitem(dl._INFO, "resnet18", dict(dl._INFO["resnet18"], url=url))
    with pytest.raises(weights.WeightsUnavailableError) as err:
        weights.load_torchvision("resnet18", cache_dir=tmp_path, progress=False, timeout=5)
    msg = str(err.value)
    assert url in msg and str(tmp_path / "resnet18-f37072fd.pth") in msg
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        weights.load_torchvision("resnet18", tmp_path / "missing.pth")


def test_http_error(server, tmp_path):
    with pytest.raises(weights.WeightsUnavailableError, match="404"):
        weights.load_torchvision("resnet18", f"{server.url}/nothing-here.pth", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cached_npz_used_when_pth_absent(tmp_path, monkeypatch):
    variables = _random_variables("resnet18")
    weights.export_npz(weights.to_torchvision("resnet18", variables), tmp_path / "resnet18-f37072fd.npz")
    url = "http://127.0.0.1:9/resnet18-f37072fd.pth"  # never contacted
    monkeypatch.setitem(dl._INFO, "resnet18", dict(dl._INFO["resnet18"], url=url))
    v = weights.load_torchvision("resnet18", cache_dir=tmp_path, progress=False)
    assert np.array_equal(v["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])


def test_init_from_torchvision_keeps_a_fresh_head(tmp_path):
    pretrained = _random_variables("resnet18", seed=1)
    path = weights.export_npz(weights.to_torchvision("resnet18", pretrained), tmp_path / "r18.npz")
    fresh = _random_variables("resnet18", seed=2, num_classes=10)
    out = weights.init_from_torchvision("resnet18", fresh, path)
    assert out["params"]["head"]["kernel"] is fresh["params"]["head"]["kernel"]
    a, b = _leaves(out), _leaves(pretrained)
    assert all(np.array_equal(a[k], b[k]) for k in a if k[1] != "head")
    same = weights.init_from_torchvision("resnet18", _random_variables("resnet18", seed=3), path)
    np.testing.assert_array_equal(same["params"]["head"]["kernel"], pretrained["params"]["head"]["kernel"])
    # GoogLeNet: the checkpoint's aux heads are ignored by a model without them
    g = weights.export_npz(weights.to_torchvision("googlenet", _random_variables("googlenet")), tmp_path / "g.npz")
    out = weights.init_from_torchvision("googlenet", _random_variables("googlenet", aux_logits=False,
                                                                         num_classes=5), g)
    assert "aux1" not in out["params"] and out["params"]["head"]["kernel"].shape == (1024, 5)
    with pytest.raises(weights.WeightConversionError, match="do not match the torchvision weights.*missing"):
        bad = {"params": {**fresh["params"], "extra": {"bias": np.zeros(3)}}, "batch_stats": fresh["batch_stats"]}
        weights.init_from_torchvision("resnet18", bad, path)


def test_pth_without_torch_explains(tmp_path, monkeypatch):
    path = tmp_path / "resnet18-f37072fd.pth"
    path.write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ImportError, match="needs torch.*export_npz"):
        weights.load_torchvision("resnet18", path)


@pytest.mark.parity
def test_pth_download_and_export_npz(server, tmp_path):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tm = torchvision.models.resnet18()
    buf = io.BytesIO()
    torch.save(tm.state_dict(), buf)
    data = buf.getvalue()
    name = _hashed_name("resnet18", data, ".pth")
    server.files[name] = data
    v = weights.load_torchvision("resnet18", f"{server.url}/{name}", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(v["params"]["head"]["kernel"], tm.fc.weight.detach().numpy().T)
    npz = weights.export_npz(tmp_path / name)
    assert npz == tmp_path / name.replace(".pth", ".npz")
    v2 = weights.load_torchvision("resnet18", npz)
    a, b = _leaves(v), _leaves(v2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------------
# preprocessing


def _photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with edges and noise (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(9 * xx + 3 * yy), np.cos(7 * yy - 2 * xx), np.sin(15 * xx * yy)], -1) * 90 + 128
    img[h // 3: h // 2, w // 4: w // 2] = [250, 20, 40]  # a hard-edged patch
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _images():
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    return {"grace_hopper": hopper, "landscape": _photo_like(301, 451), "portrait": _photo_like(517, 240, 1),
            "small": _photo_like(120, 97, 2)}


def test_preprocess_shapes_and_values():
    img = _photo_like(300, 400)
    x = weights.preprocess(img)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    assert weights.preprocess(img, resize=None, crop=None).shape == (1, 300, 400, 3)
    # resize=None, crop larger than the image: zero padding (0 -> -mean / std after normalisation)
    padded = weights.preprocess(img, resize=None, crop=(311, 405))
    np.testing.assert_allclose(padded[0, 0, 0], -np.array(weights.IMAGENET_MEAN) / weights.IMAGENET_STD, rtol=1e-6)
    assert weights.eval_transform("convnext_tiny").keywords["resize"] == 236
    assert weights.eval_transform("efficientnet_b0").keywords["interpolation"] == "bicubic"
    with pytest.raises(ValueError, match="interpolation"):
        weights.preprocess(img, interpolation="area")


@pytest.mark.parity
@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b0", "convnext_tiny", "efficientnet_v2_l"])
def test_eval_transform_matches_torchvision(arch):
    pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from PIL import Image

    reference = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.transforms()  # no download
    ours = weights.eval_transform(arch)
    for name, img in _images().items():
        want = reference(Image.fromarray(img)).numpy().transpose(1, 2, 0)[None]
        got = ours(img)
        assert got.shape == want.shape, name
        # pixel for pixel, in units of the uint8 input (1/255 allowed; in practice float rounding only)
        err = np.abs(got - want).max() * max(ours.keywords["std"])
        assert err <= 1e-6, (name, err)


@pytest.mark.parity
def test_center_crop_padding_matches_torchvision():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from PIL import Image
    from torchvision import transforms as T

    img = _photo_like(50, 71)
    for crop in [(64, 80), (50, 90), (61, 71), (33, 40)]:
        want = T.Compose([T.CenterCrop(crop), T.ToTensor(), T.Normalize(weights.IMAGENET_MEAN,
                                                                         weights.IMAGENET_STD)])(Image.fromarray(img))
        got = weights.preprocess(img, resize=None, crop=crop)
        np.testing.assert_allclose(got[0], want.numpy().transpose(1, 2, 0), atol=1e-6, err_msg=str(crop))
