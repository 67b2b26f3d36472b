"""Recipe options of the training core against independent references: the learning-rate schedules against
``torch.optim.lr_scheduler`` (stepped per epoch, one step per epoch here), SGD with classic or Nesterov
momentum, weight decay and gradient clipping against ``torch.optim.SGD`` + ``clip_grad_norm_``, gradient
accumulation against one large batch (with the negative case of a missing average), and the weight EMA against a
NumPy transcription of torchvision's ``ExponentialMovingAverage`` + warmup reset."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.training import optim
from cnnjax.training.state import TrainState
from cnnjax.training.step import EMA, adjusted_decay, make_train_step, micro_batches
from train import config as C

torch = pytest.importorskip("torch")

LR, EPOCHS, WARMUP = 0.4, 20, 3


def torch_lrs(kind: str) -> list[float]:
    """torchvision's references' scheduler: SequentialLR(LinearLR warmup, main) stepped once per epoch."""
    from torch.optim import lr_scheduler as S

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    main = {"step": lambda: S.StepLR(opt, step_size=5, gamma=0.1),
            "multistep": lambda: S.MultiStepLR(opt, milestones=[8, 14], gamma=0.2),
            "cosine": lambda: S.CosineAnnealingLR(opt, T_max=EPOCHS - WARMUP, eta_min=1e-3),
            "linear": lambda: S.LinearLR(opt, start_factor=1.0, end_factor=1e-3 / LR, total_iters=EPOCHS - WARMUP),
            "constant": lambda: S.ConstantLR(opt, factor=1.0, total_iters=0)}[kind]()
    warm = S.LinearLR(opt, start_factor=0.01, total_iters=WARMUP)
    sched = S.SequentialLR(opt, [warm, main], milestones=[WARMUP])
    lrs = []
    for _ in range(EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("kind", optim.SCHEDULES)
def test_schedules_match_torchvision_references(kind):
    spec = optim.Schedule(kind=kind, step_size=5, gamma=0.2 if kind == "multistep" else 0.1, milestones=(8, 14),
                          lr_min=1e-3, warmup_start=0.01)
    ours = optim.learning_rate_schedule(LR, EPOCHS, WARMUP, spec, steps_per_epoch=1)
    np.testing.assert_allclose([float(ours(s)) for s in range(EPOCHS)], torch_lrs(kind), rtol=1e-5, atol=1e-7)


def test_step_schedule_counts_epochs_in_steps():
    f = optim.learning_rate_schedule(1.0, 100, 0, optim.Schedule("step", step_size=3), steps_per_epoch=10)
    assert [float(f(s)) for s in (0, 29, 30, 59, 60)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="milestones"):
        optim.Schedule("multistep")
    with pytest.raises(ValueError, match="valid choices"):
        optim.Schedule("exp")


@pytest.mark.parametrize("nesterov,clip", [(False, None), (True, None), (False, 0.5)])
def test_sgd_matches_torch(nesterov, clip):
    rng = np.random.default_rng(0)
    a, b, w0 = rng.normal(size=(6, 4)), rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    tx = optim.make_optimizer("sgd", 0.05, 1e-2, total_steps=5, momentum=0.9, nesterov=nesterov,
                              schedule=optim.Schedule("constant"), clip_grad_norm=clip)
    loss = lambda w: jnp.sum((jnp.asarray(a, jnp.float32) @ w - b) ** 2)  # noqa: E731
    w, st = jnp.asarray(w0, jnp.float32), None
    st = tx.init(w)
    tw = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    topt = torch.optim.SGD([tw], lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    for _ in range(5):
        upd, st = tx.update(jax.grad(loss)(w), st, w)
        w = optax.apply_updates(w, upd)
        topt.zero_grad()
        ((ta @ tw - tb) ** 2).sum().backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([tw], clip)
        topt.step()
    np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=2e-5, atol=2e-6)


class Dense2(nn.Module):
    """A two-layer perceptron without BatchNorm: accumulation must equal one big batch exactly (up to float
    rounding)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.tanh(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(x)


def _one_step(k: int, lr: float, batch: dict) -> jax.Array:
    model = Dense2()
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    tx = optax.sgd(lr)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    step = jax.jit(make_train_step(model, tx, accum_steps=k))
    for _ in range(2):
        state, metrics = step(state, batch)
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(state.params)]), metrics


def test_gradient_accumulation_equals_one_large_batch():
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(16, 2, 2, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 3, 16), jnp.int32)}
    big, m1 = _one_step(1, 0.5, batch)
    acc, m4 = _one_step(4, 0.5, batch)
    np.testing.assert_allclose(acc, big, rtol=1e-5, atol=1e-6)
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)  # the mean of the micro-batch means
    assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
    # negative case: summing the micro-batch gradients without the average is K times the step, and is caught
    summed, _ = _one_step(4, 0.5 * 4, batch)
    assert not np.allclose(summed, big, rtol=1e-5, atol=1e-6)


def test_micro_batches_keep_every_row_on_its_device():
    x = np.arange(24)
    out = np.asarray(micro_batches(jnp.asarray(x), k=3, shards=2))  # device 0 holds rows 0-11, device 1 12-23
    assert out.tolist() == [[0, 1, 2, 3, 12, 13, 14, 15], [4, 5, 6, 7, 16, 17, 18, 19],
                            [8, 9, 10, 11, 20, 21, 22, 23]]
    assert sorted(out.ravel().tolist()) == x.tolist()


def torchvision_ema(weights: list[np.ndarray], decay: float, every: int, warmup_steps: int) -> np.ndarray:
    """torchvision references' loop: update every ``every`` steps; AveragedModel copies when n_averaged == 0;
    during the warmup (0-based step index < warmup_steps) n_averaged is reset after each update."""
    ema, n = weights[0].copy(), 0  # AveragedModel starts as a deep copy of the model
    for index, w in enumerate(weights[1:]):  # weights[t] are the weights after step t (t = index + 1)
        if (index + 1) % every == 0:
            ema = w.copy() if n == 0 else decay * ema + (1 - decay) * w
            n += 1
            if index < warmup_steps:
                n = 0
    return ema


@pytest.mark.parametrize("every,warmup", [(1, 0), (2, 0), (3, 7), (2, 6)])
def test_ema_follows_torchvision(every, warmup):
    rng = np.random.default_rng(every + warmup)
    weights = [rng.normal(size=(5,)).astype(np.float32) for _ in range(21)]
    ema_rule = EMA(decay=0.7, every=every, warmup_steps=warmup)
    ema = {"w": jnp.asarray(weights[0])}
    for t in range(1, 21):
        ema = ema_rule.update(ema, {"w": jnp.asarray(weights[t])}, jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(ema["w"]), torchvision_ema(weights, 0.7, every, warmup), rtol=1e-5)
    # negative case: without the warmup reset the average differs
    if warmup:
        assert not np.allclose(np.asarray(ema["w"]), torchvision_ema(weights, 0.7, every, 0), rtol=1e-5)


def test_adjusted_decay_is_torchvisions():
    # torchvision's V2 ResNet-50 recipe: 8 GPUs x 128, --model-ema-steps 32, --model-ema-decay 0.99998, 600 epochs
    alpha = (1 - 0.99998) * 8 * 128 * 32 / 600
    assert adjusted_decay(0.99998, 1024, 32, 600) == pytest.approx(1 - alpha)
    assert adjusted_decay(0.9, 1024, 32, 1) == 0.0  # alpha capped at 1


@pytest.mark.parametrize("kw,match", [
    ({"schedule": "multistep"}, "needs --lr-milestones"),
    ({"lr_milestones": "30,10"}, "increasing"),
    ({"lr_milestones": "a,b"}, "comma-separated"),
    ({"batch_size": 30, "grad_accum_steps": 4}, "divisible by --grad-accum-steps"),
    ({"schedule": "exp"}, "valid choices"),
])
def test_bad_recipe_options_fail_early(kw, match):
    with pytest.raises(ValueError, match=match):
        C.validate(C.TrainConfig(arch="lenet5", **kw))


def test_decay_selection_follows_torchvision_parameter_groups():
    """``no-norms`` as torchvision's ``set_weight_decay(norm_weight_decay=0)``: the norm layers' weight and bias
    get no decay, every other parameter (conv/linear weights and biases) does; checked on torchvision's own
    grouping of a ResNet-18 mapped onto our parameter tree by shape and count."""
    import torchvision

    from cnnjax import models

    tv = torchvision.models.resnet18(num_classes=10)
    tv_all = list(tv.parameters())
    tv_norm = [p for m in tv.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    tv_kernels = [p for p in tv_all if p.ndim >= 2]
    model = models.create("resnet18", num_classes=10)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    tv_no_norms = [p for p in tv_all if not any(p is q for q in tv_norm)]
    for which, expected in (("kernels", tv_kernels), ("all", tv_all), ("no-norms", tv_no_norms)):
        mask = optim.decay_mask(params, which)
        pairs = zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
        decayed = sorted(int(np.prod(leaf.shape)) for leaf, m in pairs if m)
        assert decayed == sorted(p.numel() for p in expected), which
    with pytest.raises(ValueError, match="valid choices"):
        optim.decay_mask(params, "none")
