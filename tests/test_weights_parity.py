"""Parity with torchvision: a torchvision model at random init (with non-trivial BatchNorm statistics, LayerNorm
affines and ConvNeXt layer scales), converted with ``cnnjax.weights.from_torchvision``, gives the same eval-mode
logits and last feature map in cnnjax (max error <= 1e-4 of the largest |value|), for every architecture of
tests/data/torchvision-imagenet1k-v1.tsv; and every level of ``feature_maps`` equals torchvision's
``create_feature_extractor`` at the corresponding nodes (tests/test_features.py has the architectures not here).

One input (batch 1) per model, the odd, non-square 67x83 (AlexNet needs 63x63; every other model is smaller):
odd sides exercise the padding, ceil-mode pools and adaptive average pools (which pool overlapping bins here, not
the exact 7x7 of 224x224) more than the reference size does, and cost a fraction of its compute. Every model is
jitted once (logits and features in one compiled function), at float32 matmul precision (no TF32 on GPUs).
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
from _torch_models import check_feature_maps, randomize_norms, rel_err  # noqa: E402

from cnnjax import models  # noqa: E402
from cnnjax.weights import from_torchvision  # noqa: E402

pytestmark = [pytest.mark.parity, pytest.mark.slow]

DATA = pathlib.Path(__file__).parent / "data"
TOL = 1e-4

SIZE = (67, 83)
CASES = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "googlenet",
         "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "mobilenet_v2",
         "efficientnet_b0", "convnext_tiny")


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


@pytest.mark.parametrize("arch", CASES)
def test_logits_and_features_match_torchvision(arch):
    tm = _torch_model(arch)
    variables = jax.tree_util.tree_map(jnp.asarray, from_torchvision(arch, tm.state_dict()))
    model = models.create(arch, transform_input=True) if arch == "googlenet" else models.create(arch)

    @jax.jit
    def run(variables, x):  # one forward for XLA (common subexpressions): each output is a prefix of it
        return (model.apply(variables, x), model.apply(variables, x, method="features"),
                model.apply(variables, x, method="feature_maps"))

    module, post = _feature_hook(arch, tm)
    captured = {}
    hook = module.register_forward_hook(lambda mod, inp, out: captured.update(features=post(out)))
    h, w = SIZE
    x = np.random.RandomState(0).randn(1, h, w, 3).astype(np.float32)
    with torch.no_grad():
        want_logits = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    hook.remove()
    want_features = captured.pop("features").numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("float32"):
        logits, features, maps = run(variables, jnp.asarray(x))
    logits, features = np.asarray(logits), np.asarray(features)
    assert features.shape == want_features.shape
    assert logits.shape == want_logits.shape == (1, 1000)
    ef, el = rel_err(features, want_features), rel_err(logits, want_logits)
    print(f"\n{arch}: {h}x{w} features {ef:.1e} logits {el:.1e}")
    assert ef < TOL, f"{arch} {h}x{w}: features differ (max rel err {ef:.2e})"
    assert el < TOL, f"{arch} {h}x{w}: logits differ (max rel err {el:.2e})"
    check_feature_maps(arch, tm, x, maps, TOL)  # every feature level vs create_feature_extractor's
