"""The summary tool: totals equal the parameter tree, per-layer FLOPs follow the closed forms, CLI output."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from cnnjax import models
from cnnjax.summary import main, summarize


def test_resnet50_summary_prints_torchvision_count(capsys):
    assert main(["--arch", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 25,557,032" in out
    assert "stage4_block2/conv3" in out


def test_lenet_rows_and_flops_closed_form():
    rows, totals = summarize(models.create("lenet5"), 32)
    by_path = {r.path: r for r in rows}
    # c1: 28*28 outputs x 6 channels x (5*5*1 MACs * 2 + bias)
    assert by_path["c1"].flops == 28 * 28 * 6 * (2 * 25 + 1)
    assert by_path["c1"].output_shape == (1, 28, 28, 6)
    assert by_path["c3"].params == 16 * 6 * 25 + 16
    assert sum(r.params for r in rows) == totals["params"] == 61_706
    if totals["xla_flops"]:  # XLA's own count agrees with the formulas to within elementwise work
        assert abs(totals["xla_flops"] - totals["flops"]) / totals["flops"] < 0.1


def test_summary_param_total_matches_tree_for_branching_models():
    for arch, size in (("googlenet", 64), ("mobilenet_v2", 32), ("resnet20", 32)):
        model = models.create(arch)
        rows, totals = summarize(model, size)
        v = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x),
                           jnp.zeros((1, size, size, model.in_channels)))
        assert totals["params"] == sum(math.prod(p.shape) for p in jax.tree.leaves(v["params"]))


def test_too_small_input_is_an_error_not_a_traceback(capsys):
    assert main(["--arch", "alexnet", "--image-size", "16"]) == 2
    assert "at least 63x63" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["alexnet", "vgg11", "googlenet", "convnext_tiny"])
def test_conv_dense_subtotals_match_torchvision_layer_types(arch):
    """``subtotals``' conv / dense / norm parameters equal torchvision's own module types (``Conv2d``, ``Linear``
    on a flat vector, ``BatchNorm2d``/``LayerNorm``), the model built on the meta device (no memory); ConvNeXt's
    pointwise ``Linear`` layers (on NHWC maps) count as conv. Negative case: the groups add up to the total."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    from cnnjax.summary import subtotals

    opts = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
    with torch.device("meta"):
        ref = tv.models.get_model(arch, weights=None, **opts)
    count = {"conv": 0, "dense": 0, "norm": 0}
    for name, m in ref.named_modules():
        n = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, torch.nn.Conv2d) or (isinstance(m, torch.nn.Linear) and ".block." in f".{name}."):
            count["conv"] += n
        elif isinstance(m, torch.nn.Linear):
            count["dense"] += n
        elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) or "LayerNorm2d" in type(m).__name__:
            count["norm"] += n
    model = models.create(arch, **({"aux_logits": False} if arch == "googlenet" else {}))
    rows, totals = summarize(model, 64 if arch != "alexnet" else 96)
    parts = subtotals(rows, totals)
    assert {k: parts[k]["params"] for k in count} == count
    assert sum(g["params"] for g in parts.values()) == totals["params"] == sum(p.numel() for p in ref.parameters())
    assert parts["other"]["flops"] == parts["norm"]["flops"] == 0 and parts["conv"]["flops"] > 0
