"""The summary tool: totals equal the parameter tree, per-layer FLOPs follow the closed forms, CLI output."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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
