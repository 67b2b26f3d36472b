"""Parity with timm: a timm model at random init (random BatchNorm statistics/affines, LayerNorm affines and
ConvNeXt ``gamma``), converted with ``cnnjax.weights.from_timm``, gives timm's eval-mode logits in cnnjax (max
error <= 1e-4 of the largest |logit|, the tolerance of tests/test_weights_parity.py) on a random 1x64x64 input.

One model per family is in the fast tier (about 2-3 s each, mostly the XLA compile); the other parity cases and
the key-for-key check of every :data:`~cnnjax.weights.TIMM_NAMES` entry (timm models built on torch's ``meta``
device, so no memory or compute) are ``slow``. Skipped without torch and timm (``pip install 'cnnjax[torch]'``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cnnjax[torch]')")
timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'cnnjax[torch]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _torch_models import randomize_norms  # noqa: E402

from cnnjax import models  # noqa: E402
from cnnjax.weights import (  # noqa: E402
    TIMM_NAMES,
    WeightConversionError,
    check_timm,
    from_timm,
    timm_arch,
    timm_keys,
)

pytestmark = pytest.mark.parity

TOL = 1e-4
FAST = ("resnet18", "convnext_tiny", "efficientnet_b0", "mobilenetv2_100")  # the smallest of each family
SLOW = ("resnet50", "resnext50_32x4d", "wide_resnet50_2", "convnext_small", "efficientnet_b2", "efficientnet_b4")


def _timm_model(name: str):
    """timm ``name`` at random init, eval mode, with randomised normalisation statistics/affines and gammas."""
    torch.manual_seed(0)
    tm = timm.create_model(name, pretrained=False).eval()
    return randomize_norms(tm, "gamma")


def _rel_err(name: str, tm, state_dict) -> float:
    """Max |cnnjax - timm| / max |timm| of the logits on one random (1, 64, 64, 3) input."""
    x = np.random.RandomState(0).randn(1, 64, 64, 3).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = models.create(timm_arch(name))
    variables = from_timm(name, state_dict)
    with jax.default_matmul_precision("float32"):
        got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x)))
    assert got.shape == want.shape == (1, 1000)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _check_parity(name: str) -> None:
    tm = _timm_model(name)
    err = _rel_err(name, tm, tm.state_dict())
    print(f"\n{name} -> {timm_arch(name)}: logits max rel err {err:.1e}")
    assert err < TOL, f"{name}: logits differ (max rel err {err:.2e})"


@pytest.mark.parametrize("name", FAST)
def test_logits_match_timm(name):
    _check_parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_logits_match_timm_slow(name):
    _check_parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_every_name_converts_key_for_key(name):
    with torch.device("meta"):
        state_dict = timm.create_model(name, pretrained=False).state_dict()
    check_timm(name, state_dict)  # strict: every timm key used, every cnnjax leaf filled, shapes equal
    assert set(timm_keys(name).values()) == {k for k in state_dict if not k.endswith("num_batches_tracked")}


def test_permuted_weight_breaks_parity():
    tm = _timm_model("resnet18")
    state_dict = dict(tm.state_dict())
    state_dict["layer1.0.conv1.weight"] = state_dict["layer1.0.conv1.weight"].flip(0)  # output channels reversed
    assert _rel_err("resnet18", tm, state_dict) > 100 * TOL


@pytest.fixture(scope="module")
def effnet_state_dict():
    return _timm_model("efficientnet_b0").state_dict()


def test_missing_unused_and_misshaped_keys_are_named_by_timm_key(effnet_state_dict):
    sd = dict(effnet_state_dict)
    del sd["blocks.1.0.conv_dw.weight"]
    sd["blocks.9.0.conv_dw.weight"] = torch.zeros(1)
    sd["blocks.0.0.se.conv_reduce.weight"] = torch.zeros(7, 32, 1, 1)
    with pytest.raises(WeightConversionError) as err:
        from_timm("efficientnet_b0", sd)
    msg = str(err.value)
    assert "no timm key" in msg and "[expects blocks.1.0.conv_dw.weight]" in msg
    assert "not used" in msg and "blocks.9.0.conv_dw.weight" in msg
    assert "shape mismatch" in msg and "[blocks.0.0.se.conv_reduce.weight]" in msg
    assert "features." not in msg  # no torchvision key names leak into the report


def test_module_prefix_tag_and_hub_name_are_accepted(effnet_state_dict):
    sd = {f"module.{k}": v for k, v in effnet_state_dict.items()}
    a = from_timm("timm/efficientnet_b0.ra_in1k", sd)
    b = from_timm("efficientnet_b0", effnet_state_dict)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


@pytest.mark.parametrize("name, words", [("resnet50d", ["supported: resnet18", "mobilenetv2_100"]),
                                         ("tf_efficientnet_b0", ["'SAME' padding"]),
                                         ("efficientnet_b5", ["eps 1e-5"]),
                                         ("mobilenetv3_large_100", ["conv_head"])])
def test_unknown_and_excluded_names_are_refused(name, words):
    with pytest.raises(ValueError) as err:
        timm_arch(name)
    assert all(w in str(err.value) for w in words), str(err.value)
