"""Per-class accuracy and the confusion matrix: the eval step's device counts against a float64 NumPy count,
``evaluate`` on a padded val split against the model applied to the raw arrays, the per-class law (their
count-weighted mean is the overall top-1), the PNG for 10 and 1000 classes, bad input, and one CLI run
(``train.main`` then ``train.evaluate --out``)."""

from __future__ import annotations

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnnjax.data.arrays import ArraySource
from cnnjax.data.base import DatasetInfo
from cnnjax.training import TrainState, evaluate_variables, make_eval_step
from train import report

K, B = 7, 24


class Identity(nn.Module):
    """A parameter-free "model": the batch's images are the logits."""

    @nn.compact
    def __call__(self, x, train):
        return x


class TinyNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _state(params) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=(),
                      rng=jnp.zeros((2,), jnp.uint32))


@functools.lru_cache(maxsize=1)
def _identity_eval_step():
    return jax.jit(make_eval_step(Identity()))


def reference_confusion(labels, preds, mask, k) -> np.ndarray:
    """float64 counts, one example at a time."""
    out = np.zeros((k, k), np.float64)
    for y, p, m in zip(labels, preds, mask):
        if m:
            out[int(y), int(p)] += 1.0
    return out


@given(logits=st.lists(st.lists(st.integers(-3, 3), min_size=K, max_size=K), min_size=B, max_size=B),
       labels=st.lists(st.integers(0, K - 1), min_size=B, max_size=B),
       mask=st.lists(st.booleans(), min_size=B, max_size=B))
def test_eval_step_confusion_is_the_count_of_label_prediction_pairs(logits, labels, mask):
    logits = np.asarray(logits, np.float32)  # small integers: many ties, broken towards the lowest index
    batch = {"image": jnp.asarray(logits), "label": jnp.asarray(labels, jnp.int32), "mask": jnp.asarray(mask)}
    out = jax.device_get(_identity_eval_step()(_state({}), batch))
    preds = [row.tolist().index(max(row.tolist())) for row in logits]  # first maximum, in plain Python
    expected = reference_confusion(labels, preds, mask, K)
    assert out["confusion"].shape == (K, K)
    np.testing.assert_array_equal(out["confusion"].astype(np.float64), expected)
    assert float(np.trace(out["confusion"])) == float(out["top1"])  # the diagonal is the top-1 sum
    assert float(out["confusion"].sum()) == float(out["count"]) == float(sum(mask))


def _tiny_source(k=5, n_val=53, size=4, seed=0):
    rng = np.random.default_rng(seed)
    info = DatasetInfo(name="tiny", num_classes=k, image_size=size, channels=1, num_train=8, num_val=n_val,
                       class_names=[f"c{i}" for i in range(k)], mean=(0.0,), std=(1.0,))
    train_x = rng.random((8, size, size, 1)).astype(np.float32)
    val_x = rng.random((n_val, size, size, 1)).astype(np.float32)
    return ArraySource(info, train_x, rng.integers(0, k, 8), val_x, rng.integers(0, k, n_val)), val_x


def test_evaluate_confusion_over_a_padded_val_split_matches_the_model_on_the_raw_arrays():
    source, val_x = _tiny_source()
    val_y = source._data["val"][1]
    model = TinyNet(5)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1)), False)
    result = evaluate_variables(model, variables, source, batch_size=16, confusion=True)  # 53 = 3 * 16 + 5 padded
    assert set(result) == {"val_loss", "val_top1", "val_top5", "val_count", "val_confusion"}
    assert set(evaluate_variables(model, variables, source, batch_size=16)) == {"val_loss", "val_top1", "val_top5",
                                                                                "val_count"}
    logits = np.asarray(model.apply(variables, jnp.asarray(val_x), False), np.float64)
    expected = reference_confusion(val_y, np.argmax(logits, axis=1), np.ones(len(val_y)), 5)
    np.testing.assert_array_equal(result["val_confusion"].astype(np.float64), expected)
    assert result["val_confusion"].dtype == np.int64 and result["val_count"] == 53
    assert result["val_top1"] == pytest.approx(np.trace(expected) / 53, abs=1e-12)


@given(st.integers(1, 12).flatmap(lambda k: st.lists(st.lists(st.integers(0, 40), min_size=k, max_size=k),
                                                      min_size=k, max_size=k)))
def test_per_class_top1_weighted_by_class_counts_is_the_overall_top1(rows):
    m = np.asarray(rows, np.int64)
    per_class = report.per_class_top1(m)
    counts = [sum(r) for r in rows]
    for k, (acc, n) in enumerate(zip(per_class, counts)):
        assert (acc is None) == (n == 0)
        if n:
            assert acc == rows[k][k] / n
    total = sum(counts)
    if total:
        weighted = sum(acc * n for acc, n in zip(per_class, counts) if acc is not None) / total
        assert weighted == pytest.approx(sum(rows[k][k] for k in range(len(rows))) / total, rel=1e-12)


@given(st.lists(st.lists(st.integers(0, 5), min_size=6, max_size=6), min_size=6, max_size=6), st.integers(1, 40))
def test_most_confused_lists_the_largest_off_diagonal_cells(rows, top):
    pairs = report.most_confused(np.asarray(rows), top)
    cells = sorted((-rows[r][c], r, c) for r in range(6) for c in range(6) if r != c and rows[r][c] > 0)
    assert pairs == [(r, c, -neg) for neg, r, c in cells[:top]]


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_write_confusion_writes_per_class_json_and_png(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.integers(0, 9, (10, 10)) + np.diag(rng.integers(20, 40, 10))
    names = [f"digit {i}" for i in range(10)]
    report.write_confusion(tmp_path, m, names, {"step": 7, "val_top1": np.trace(m) / m.sum()})
    data = json.loads((tmp_path / "per_class.json").read_text())
    assert data["step"] == 7 and data["confusion"] == m.tolist()
    assert [c["name"] for c in data["classes"]] == names and [c["count"] for c in data["classes"]] == \
        m.sum(axis=1).tolist()
    assert [c["top1"] for c in data["classes"]] == pytest.approx((np.diag(m) / m.sum(axis=1)).tolist(), rel=1e-12)
    width, height = _png_size(tmp_path / "confusion.png")
    assert width > 300 and height > 300
    report.write_confusion(tmp_path, m, ["too", "few"])  # names that do not fit: the label indices instead
    assert [c["name"] for c in json.loads((tmp_path / "per_class.json").read_text())["classes"]] == \
        [str(i) for i in range(10)]


def test_plot_confusion_of_1000_classes(tmp_path):
    rng = np.random.default_rng(1)
    k = 1000
    m = np.diag(rng.integers(30, 50, k))
    rows, cols = rng.integers(0, k, 3000), rng.integers(0, k, 3000)
    np.add.at(m, (rows, cols), 1)
    report.plot_confusion(m, [f"n{i:08d} a long class name" for i in range(k)], tmp_path / "c.png")
    width, height = _png_size(tmp_path / "c.png")
    assert width >= 1000 and height >= 500


@pytest.mark.parametrize("matrix, names, message", [
    (np.zeros((3, 4)), None, "square"),
    (np.zeros((0, 0)), None, "square"),
    (np.array([[1, -1], [0, 2]]), None, "non-negative"),
    (np.array([[1.5, 0], [0, 2]]), None, "integers"),
    (np.array([[1, np.nan], [0, 2]]), None, "finite"),
    (np.eye(3, dtype=int), ["a", "b"], "2 class names for a 3-class"),
])
def test_bad_confusion_input_is_a_clear_error(tmp_path, matrix, names, message):
    with pytest.raises(ValueError, match=message):
        report.plot_confusion(matrix, names, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow
def test_cli_writes_per_class_and_confusion_and_evaluate_agrees(tmp_path):
    from tests.test_train import TINY, run_cli

    workdir = tmp_path / "run"
    run_cli([*TINY, "--max-steps", "30", "--workdir", str(workdir)])  # evaluations at step 22 (epoch end) and 30
    rows = report.read_jsonl(workdir / "metrics.jsonl")
    data = json.loads((workdir / "per_class.json").read_text())
    m = np.asarray(data["confusion"])
    assert m.shape == (10, 10) and m.sum() == rows[-1]["val_count"] == 359 and data["step"] == 30
    assert [c["name"] for c in data["classes"]] == [str(d) for d in range(10)]  # digits' class names
    counts = [c["count"] for c in data["classes"]]
    weighted = sum(c["top1"] * c["count"] for c in data["classes"]) / sum(counts)
    assert weighted == pytest.approx(rows[-1]["val_top1"], abs=1e-12)
    assert _png_size(workdir / "confusion.png")[0] > 300
    assert "val_confusion" not in rows[-1]  # the rows stay scalars

    out = tmp_path / "eval"
    proc = run_cli(["--arch", "lenet5", "--init", str(workdir), "--out", str(out)], module="train.evaluate")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["val_top1"] == pytest.approx(rows[-1]["val_top1"], abs=1e-9)  # the same weights
    per_class = result["val_per_class_top1"]
    assert len(per_class) == 10
    assert sum(a * n for a, n in zip(per_class, counts)) / sum(counts) == pytest.approx(result["val_top1"], abs=1e-12)
    evaluated = json.loads((out / "per_class.json").read_text())
    assert evaluated["confusion"] == data["confusion"] and evaluated["val_count"] == 359
    assert _png_size(out / "confusion.png")[0] > 300

    bad = run_cli(["--arch", "lenet5", "--init", str(workdir), "--out", str(workdir / "config.json")],
                  module="train.evaluate", check=False)
    assert bad.returncode == 2 and "--out" in bad.stderr and "not a writable directory" in bad.stderr
