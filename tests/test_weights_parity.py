"""Parity with torchvision: a torchvision model at random init (with non-trivial BatchNorm statistics, LayerNorm
affines and ConvNeXt layer scales), converted with ``cnnjax.weights.from_torchvision``, gives the same eval-mode
logits and last feature map in cnnjax (max error <= 1e-4 of the largest |value|), for every architecture of
tests/data/torchvision-imagenet1k-v1.tsv.

Sizes (batch 1) are chosen so the file runs in under 4 minutes on a 2-core CPU (measured: 175 s, most of it XLA
compiles; 213 s with three other jobs competing): 224x224 and the odd, non-square 193x257 for one model per
family and the cheaper ones; only 193x257 for resnet34/101/152; only 97x129 for the VGGs but vgg16 (7-20 GFLOP per
224 forward and a 100M-weight fc6; vgg16 runs both sizes). Every model is jitted once per input size (logits and
features in one compiled function), at float32 matmul precision (no TF32 on GPUs).
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cnnjax[torch]')")
torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'cnnjax[torch]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _torch_models import randomize_norms  # noqa: E402

from cnnjax import models  # noqa: E402
from cnnjax.weights import from_torchvision  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.slow]

DATA = pathlib.Path(__file__).parent / "data"
TOL = 1e-4

FULL = ((224, 224), (193, 257))  # the reference size and an odd, non-square one
ODD = ((193, 257),)
SMALL_ODD = ((97, 129),)  # the VGGs: 7 GFLOP+ per 224 forward and a 100M-weight fc6
CASES = {
    "alexnet": FULL,
    "vgg11": SMALL_ODD, "vgg13": SMALL_ODD, "vgg16": FULL, "vgg19": SMALL_ODD,
    "vgg11_bn": SMALL_ODD, "vgg13_bn": SMALL_ODD, "vgg16_bn": SMALL_ODD, "vgg19_bn": SMALL_ODD,
    "googlenet": FULL,
    "resnet18": FULL, "resnet34": ODD, "resnet50": FULL, "resnet101": ODD, "resnet152": ODD,
    "densenet121": FULL,
    "mobilenet_v2": FULL,
    "efficientnet_b0": FULL,
    "convnext_tiny": FULL,
}


def test_cases_cover_the_reference_table():
    with open(DATA / "torchvision-imagenet1k-v1.tsv") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")]
    assert set(CASES) == {r[0] for r in rows[1:]}


def _torch_model(arch: str):
    """torchvision ``arch`` at random init, eval mode, with randomised normalisation statistics/affines."""
    torch.manual_seed(0)
    kw = {"aux_logits": True, "transform_input": True, "init_weights": True} if arch == "googlenet" else {}
    tm = getattr(torchvision.models, arch)(**kw).eval()
    return randomize_norms(tm)


def _feature_hook(arch: str, tm):
    """The torchvision module whose output is cnnjax's ``features`` (and a function applied to it)."""
    if arch.startswith("resnet"):
        return tm.layer4, lambda y: y
    if arch == "googlenet":
        return tm.inception5b, lambda y: y
    if arch.startswith("densenet"):  # cnnjax's features include the final ReLU applied in DenseNet.forward
        return tm.features, torch.relu
    return tm.features, lambda y: y


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("arch", list(CASES))
def test_logits_and_features_match_torchvision(arch):
    tm = _torch_model(arch)
    variables = jax.tree_util.tree_map(jnp.asarray, from_torchvision(arch, tm.state_dict()))
    model = models.create(arch, transform_input=True) if arch == "googlenet" else models.create(arch)

    @jax.jit
    def run(variables, x):
        return model.apply(variables, x), model.apply(variables, x, method="features")

    module, post = _feature_hook(arch, tm)
    captured = {}
    module.register_forward_hook(lambda mod, inp, out: captured.update(features=post(out)))
    rng = np.random.RandomState(0)
    errors = []
    for h, w in CASES[arch]:
        x = rng.randn(1, h, w, 3).astype(np.float32)
        with torch.no_grad():
            want_logits = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        want_features = captured.pop("features").numpy().transpose(0, 2, 3, 1)
        with jax.default_matmul_precision("float32"):
            logits, features = (np.asarray(a) for a in run(variables, jnp.asarray(x)))
        assert features.shape == want_features.shape, (h, w)
        assert logits.shape == want_logits.shape == (1, 1000)
        errors.append((h, w, _rel_err(features, want_features), _rel_err(logits, want_logits)))
    print(f"\n{arch}: " + "; ".join(f"{h}x{w} features {ef:.1e} logits {el:.1e}" for h, w, ef, el in errors))
    for h, w, ef, el in errors:
        assert ef < TOL, f"{arch} {h}x{w}: features differ (max rel err {ef:.2e})"
        assert el < TOL, f"{arch} {h}x{w}: logits differ (max rel err {el:.2e})"
