"""The training core: the cadence rule, the step loop and its hooks (with a fake step, no compile), hooks seen
across a resume of a real run, and the one-declaration config of the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax.training import Hook, Loop, NonFiniteLossError, TrainState, due
from cnnjax.training import hooks as H
from train import config as C

# ------------------------------------------------------------------------------------------- the cadence rule


@settings(max_examples=200, deadline=None)
@given(step=st.integers(1, 10_000), every=st.one_of(st.none(), st.integers(0, 500)),
       total=st.one_of(st.none(), st.integers(1, 10_000)))
def test_due_is_divisibility_or_the_last_step(step, every, total):
    expected = (every is not None and every > 0 and step % every == 0) or step == total
    assert due(step, every, total) == expected


def test_due_negative_cases():
    assert not due(7, 3)  # not a multiple
    assert not due(0, 3)  # nothing done yet
    assert not due(6, None) and not due(6, 0)
    assert due(7, 3, total=7)


# ------------------------------------------------------------------------------- the loop, with a fake step


def fake_state(step=0):
    return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.zeros(())}, batch_stats={},
                      opt_state=(), rng=jnp.zeros((2,), jnp.uint32))


def fake_step(state, batch):
    """Loss = the global index of the batch's first example (so epoch means have a closed form)."""
    loss = jnp.asarray(batch["x"][0], jnp.float32)
    new = state.replace(step=state.step + 1, params={"w": state.params["w"] + loss})
    return new, {"loss": loss, "top1": loss * 0 + 1, "top5": loss * 0 + 1, "finite": jnp.isfinite(loss)}


def fake_batches(spe, nan_at=None):
    seen = []

    def batches(epoch, start):
        for b in range(start, spe):
            seen.append((epoch, b))
            value = float("nan") if nan_at == epoch * spe + b + 1 else epoch * spe + b
            yield {"x": np.array([value])}

    return batches, seen


class Recorder(Hook):
    def __init__(self, every, at_end=False):
        self.every, self.at_end, self.calls, self.events = every, at_end, [], []

    def begin(self, loop):
        self.events.append(("begin", loop.step))

    def after_step(self, loop):
        self.calls.append(loop.step)

    def end(self, loop):
        self.events.append(("end", loop.step, loop.stopped))


class FakeStore:
    def __init__(self):
        self.saved = []

    def save(self, step, state, meta):
        self.saved.append((step, int(state["step"]), meta))


def make_loop(total, spe, hooks, state_step=0, sums=None, should_stop=lambda: False, nan_at=None):
    batches, seen = fake_batches(spe, nan_at)
    loop = Loop(fake_state(state_step), fake_step, batches, total_steps=total, steps_per_epoch=spe, batch_size=1,
                to_global=lambda b: b, hooks=hooks, sums=sums, should_stop=should_stop)
    return loop, seen


def test_loop_cadences_records_and_checkpoints():
    spe, total = 5, 13  # 2 full epochs and 3 steps of a third
    rec, rec_end = Recorder(3), Recorder(4, at_end=True)
    evaluation = H.Evaluate(2, lambda s: {"val": float(s.params["w"])})
    records = []
    evaluation.on_record.append(records.append)
    store = FakeStore()
    loop, seen = make_loop(total, spe, [rec, rec_end, evaluation, H.Checkpoint(store, every=4)])
    loop.run()
    assert seen == [(e, b) for e in range(3) for b in range(spe)][:total]
    assert rec.calls == [3, 6, 9, 12] and rec_end.calls == [4, 8, 12, 13]
    assert rec.events == [("begin", 0), ("end", 13, False)]
    # evaluation every 2 epochs (step 10) and at the end of the run (step 13), with the epoch's training means
    assert [(r["epoch"], r["step"]) for r in records] == [(2, 10), (3, 13)]
    assert records[0]["train_loss"] == pytest.approx(np.mean(range(5, 10)))
    assert records[1]["train_loss"] == pytest.approx(np.mean(range(10, 13)))
    assert records[1]["val"] == pytest.approx(sum(range(13)))
    # checkpoints every 4 steps, at each epoch end and at the end; positions are divmod(step, spe)
    assert [s for s, _, _ in store.saved] == [4, 5, 8, 10, 12, 13]
    for step, state_step, meta in store.saved:
        assert state_step == step and (meta["epoch"], meta["batch"]) == divmod(step, spe)
    meta12 = dict((s, m) for s, _, m in store.saved)[12]
    assert meta12["sums"][0] == pytest.approx(10 + 11) and meta12["sums"][3] == 2
    assert dict((s, m) for s, _, m in store.saved)[10]["sums"] == [0.0, 0.0, 0.0, 0]


def test_checkpoint_cadence_longer_than_an_epoch_is_kept():
    """Tiny epochs (2 steps) and --checkpoint-every 5: every 5 steps and at the end, not at every epoch end."""
    store = FakeStore()
    make_loop(12, 2, [H.Checkpoint(store, every=5)])[0].run()
    assert [s for s, _, _ in store.saved] == [5, 10, 12]
    for step, _, meta in store.saved:
        assert (meta["epoch"], meta["batch"]) == divmod(step, 2)  # mid-epoch positions: a resume continues there


def test_loop_resumed_mid_epoch_continues_the_data_and_the_sums():
    spe, total = 5, 10
    full = H.Evaluate(1, lambda s: {})
    make_loop(total, spe, [full])[0].run()
    # stop after step 7 (a signal), then resume from the checkpoint written at the stop
    store, flag = FakeStore(), {"n": 0}

    def stop():
        flag["n"] += 1
        return flag["n"] == 7

    first = H.Evaluate(1, lambda s: {})
    loop, _ = make_loop(total, spe, [first, H.Checkpoint(store, every=100)], should_stop=stop)
    loop.run()
    assert loop.stopped and loop.step == 7 and store.saved[-1][0] == 7
    meta = store.saved[-1][2]
    second = H.Evaluate(1, lambda s: {})
    loop2, seen = make_loop(total, spe, [second], state_step=7, sums=meta["sums"])
    loop2.run()
    assert seen == [(1, 2), (1, 3), (1, 4)]
    assert [first.last["train_loss"], second.last["train_loss"]] == [pytest.approx(2.0), full.last["train_loss"]]


def test_non_finite_loss_raises_before_the_checkpoint_of_that_step():
    store = FakeStore()
    loop, _ = make_loop(10, 5, [H.FetchMetrics(100), H.Checkpoint(store, every=3)], nan_at=6)
    with pytest.raises(NonFiniteLossError, match="by step 6"):
        loop.run()
    assert [s for s, _, _ in store.saved] == [3, 5]  # never the NaN state of step 6


# ------------------------------------------------------------------ hooks across a resume of a real run


class Counter(Hook):
    def __init__(self, every, at_end=False, signal_at=None):
        self.every, self.at_end, self.signal_at, self.calls = every, at_end, signal_at, []

    def after_step(self, loop):
        self.calls.append(loop.step)
        if loop.step == self.signal_at:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop finishes the next step, saves and returns


@pytest.mark.slow
def test_hook_cadence_exact_across_a_resume_and_bit_identical_params(tmp_path):
    """A counting hook sees exactly its cadence, none twice and none missed, when the run is interrupted
    (SIGINT in-process) and resumed; the resumed run ends bit-identical to an uninterrupted one."""
    from cnnjax import checkpoint
    from train.config import TrainConfig
    from train.main import train

    base = dict(arch="lenet5", batch_size=64, max_steps=20, checkpoint_every=7, progress=False, seed=5)
    ref = Counter(3, at_end=True)
    train(TrainConfig(**base, workdir=str(tmp_path / "ref")), log=lambda s: None, hooks=[ref])
    assert ref.calls == [3, 6, 9, 12, 15, 18, 20]
    first, second = Counter(3, at_end=True, signal_at=9), Counter(3, at_end=True)
    out = train(TrainConfig(**base, workdir=str(tmp_path / "run")), log=lambda s: None, hooks=[first])
    assert out["interrupted"] and out["step"] == 10
    train(TrainConfig(**base, workdir=str(tmp_path / "run"), resume=True), log=lambda s: None, hooks=[second])
    assert first.calls + second.calls == ref.calls
    a, b = checkpoint.restore(tmp_path / "ref"), checkpoint.restore(tmp_path / "run")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(ln) for ln in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "images_per_sec"}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in ref_rows]


# --------------------------------------------------------------------------- the config, declared once


def test_every_field_is_a_flag_with_its_declared_default():
    parser = C.build_parser()
    args = parser.parse_args([])
    for f in dataclasses.fields(C.TrainConfig):
        assert getattr(args, f.name) == f.default, f.name
        assert C._flag(f) in parser.format_help(), f.name
    assert C.from_args(args) == C.TrainConfig()


def test_negated_booleans_and_evaluate_shares_the_declarations():
    args = C.build_parser().parse_args(["--no-progress", "--no-zero-init-residual", "--lr", "0.2"])
    cfg = C.from_args(args)
    assert (cfg.progress, cfg.zero_init_residual, cfg.lr) == (False, "off", 0.2)
    from train.evaluate import build_parser

    ev = build_parser().parse_args(["--arch", "lenet5", "--init", "x", "--conv-impl", "gemm"])
    assert (ev.batch_size, ev.conv_impl, ev.progress, ev.dataset) == (100, "gemm", True, C.TrainConfig().dataset)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--arch", "lenet5", "--init", "x", "--conv-impl", "nope"])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lr", -1.0, "--lr must be > 0"), ("lr", float("nan"), "--lr must be > 0"),
    ("weight_decay", -0.1, "--weight-decay must be >= 0"), ("momentum", 1.5, "--momentum must be in"),
    ("label_smoothing", 1.0, "--label-smoothing must be in"), ("batch_size", 0, "--batch-size must be >= 1"),
    ("epochs", 0, "--epochs must be >= 1"), ("precision", "fp8", "valid choices: fp32, bf16"),
    ("conv_impl", "magic", "valid choices: xla"), ("arch", "resnet5O", "did you mean"),
])
def test_validation_names_the_flag_and_the_valid_values(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        C.validate(C.resolve_defaults(dataclasses.replace(C.TrainConfig(), **{field: value})))


def test_valid_defaults_pass_and_config_json_holds_saved_fields_only():
    C.validate(C.resolve_defaults(C.TrainConfig()))
    saved = C.to_json(C.TrainConfig(), total_steps=5)
    assert saved["total_steps"] == 5 and "arch" in saved and "progress" in saved
    assert not {"benchmark", "coordinator", "process_id"} & set(saved)


# ------------------------------------------------------------- auxiliary heads: the main head's loss apart


def _np_cross_entropy(logits, labels):
    """Mean cross-entropy by NumPy (float64 log-softmax), the independent reference."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_loss_terms_are_main_plus_weighted_aux_cross_entropies():
    from cnnjax.training.step import AUX_WEIGHT, loss_terms

    rng = np.random.default_rng(0)
    main, a2, a1 = (rng.normal(size=(6, 4)).astype(np.float32) * s for s in (1.0, 2.0, 3.0))
    labels = rng.integers(0, 4, 6)
    targets = jax.nn.one_hot(labels, 4)
    loss, parts = loss_terms(jnp.asarray(main), (jnp.asarray(a2), jnp.asarray(a1)), targets)
    ce = [_np_cross_entropy(x, labels) for x in (main, a2, a1)]
    assert float(parts["loss_main"]) == pytest.approx(ce[0], rel=1e-5)
    assert float(parts["loss_aux"]) == pytest.approx(ce[1] + ce[2], rel=1e-5)
    assert float(loss) == pytest.approx(ce[0] + AUX_WEIGHT * (ce[1] + ce[2]), rel=1e-5)
    plain, none = loss_terms(jnp.asarray(main), (), targets)  # no aux heads: the main loss, no parts
    assert none == {} and float(plain) == pytest.approx(ce[0], rel=1e-5)


class _TwoHeads(nn.Module):
    """A linear 'main head' and a linear 'aux head' on flattened (N, H, W, C) input; training mode returns both,
    as GoogLeNet does."""

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        logits = nn.Dense(3, name="head")(x)
        aux = nn.Dense(3, name="aux1")(x)
        return (logits, aux) if train else logits


@pytest.mark.parametrize("accum", [1, 2])
def test_train_step_logs_the_main_head_loss_apart(accum):
    """The step's ``loss`` is the optimised total; ``loss_main`` is the main head's cross-entropy alone (NumPy on
    the main logits of the pre-update parameters) and ``loss_aux`` the aux head's, with or without accumulation."""
    import optax

    from cnnjax.training.step import AUX_WEIGHT, make_train_step

    model = _TwoHeads()
    x = np.random.default_rng(1).normal(size=(4, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 1], np.int32)
    variables = model.init(jax.random.key(0), jnp.asarray(x))
    tx = optax.sgd(0.1)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], batch_stats={},
                       opt_state=tx.init(variables["params"]), rng=jax.random.key_data(jax.random.key(1)))
    step = jax.jit(make_train_step(model, tx, accum_steps=accum))
    _, m = step(state, {"image": jnp.asarray(x), "label": jnp.asarray(labels), "mask": jnp.ones(4, bool)})
    p = jax.device_get(variables["params"])
    flat = x.reshape(4, -1)
    logits = {k: flat @ p[k]["kernel"] + p[k]["bias"] for k in ("head", "aux1")}
    halves = [slice(0, 4)] if accum == 1 else [slice(0, 2), slice(2, 4)]  # accumulation: mean of the halves' means
    ce = {k: np.mean([_np_cross_entropy(v[h], labels[h]) for h in halves]) for k, v in logits.items()}
    assert float(m["loss_main"]) == pytest.approx(ce["head"], rel=1e-5)
    assert float(m["loss_aux"]) == pytest.approx(ce["aux1"], rel=1e-5)
    assert float(m["loss"]) == pytest.approx(ce["head"] + AUX_WEIGHT * ce["aux1"], rel=1e-5)


def test_loop_records_and_checkpoints_the_optional_means():
    """A step that returns ``loss_main``: the epoch record has its mean as ``train_loss_main``; a mid-epoch
    checkpoint keeps its running sum (``extra_sums``) and a resumed epoch reports the same mean."""
    def step(state, batch):
        new, m = fake_step(state, batch)
        return new, {**m, "loss_main": m["loss"] * 0.5}

    spe, total = 5, 10
    batches, _ = fake_batches(spe)
    full = H.Evaluate(1, lambda s: {})
    Loop(fake_state(), step, batches, total_steps=total, steps_per_epoch=spe, batch_size=1, to_global=lambda b: b,
         hooks=[full]).run()
    assert full.last["train_loss_main"] == pytest.approx(0.5 * np.mean(range(5, 10)))
    assert full.last["train_loss"] == pytest.approx(np.mean(range(5, 10)))
    store = FakeStore()
    batches, _ = fake_batches(spe)
    Loop(fake_state(), step, batches, total_steps=7, steps_per_epoch=spe, batch_size=1, to_global=lambda b: b,
         hooks=[H.Checkpoint(store, every=7)]).run()
    meta = store.saved[-1][2]
    assert meta["extra_sums"] == {"loss_main": pytest.approx(0.5 * (5 + 6))}
    second = H.Evaluate(1, lambda s: {})
    batches, _ = fake_batches(spe)
    Loop(fake_state(7), step, batches, total_steps=total, steps_per_epoch=spe, batch_size=1, to_global=lambda b: b,
         hooks=[second], sums=meta["sums"], extra_sums=meta["extra_sums"]).run()
    assert second.last["train_loss_main"] == pytest.approx(full.last["train_loss_main"])
    # a step without the optional metrics: no such keys, no extra_sums in the checkpoint
    store = FakeStore()
    loop, _ = make_loop(7, spe, [H.Checkpoint(store, every=7)])
    loop.run()
    assert "extra_sums" not in store.saved[-1][2] and "train_loss_main" not in loop.train_means()
