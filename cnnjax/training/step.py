"""The pure training and evaluation steps, and :func:`jit_steps`, which compiles them with explicit shardings.

``train_step(state, batch) -> (state, metrics)`` and ``eval_step(state, batch) -> sums``; ``batch`` is a dict
of global arrays ``image`` (B, H, W, C) float32, ``label`` (B,) int32 and ``mask`` (B,) bool. ``metrics`` are
batch means (``loss``, ``top1``, ``top5``; with auxiliary heads also ``loss_main`` and ``loss_aux``, see
:func:`loss_terms`) and ``finite`` (loss and new parameters all finite); ``sums`` are
masked sums (``loss``, ``top1``, ``top5``, ``count``) over the batch, and ``confusion``, the (K, K) int32 counts
of (label, top-1 prediction) pairs of the unmasked rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from cnnjax import transfer
from cnnjax.nn import frozen_batchnorm
from cnnjax.training.state import TrainState

#: Weight of each auxiliary classifier's loss (GoogLeNet: 0.3, as in the paper and torchvision's reference).
AUX_WEIGHT = 0.3


def split_outputs(out: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """``(logits, aux_logits)``: GoogLeNet returns a tuple (logits, aux2, aux1) in training."""
    if isinstance(out, tuple):
        return out[0], tuple(out[1:])
    return out, ()


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross entropy in float32 with optional label smoothing (PyTorch's definition)."""
    return soft_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross entropy in float32 against target distributions ``(B, K)`` (MixUp/CutMix), smoothed
    as PyTorch's ``CrossEntropyLoss(label_smoothing=...)`` smooths probability targets:
    ``(1 - eps) * t + eps / K``."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets.astype(jnp.float32), label_smoothing))


def loss_terms(logits: jax.Array, aux: tuple[jax.Array, ...], targets: jax.Array, label_smoothing: float = 0.0
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch and its parts. ``logits`` (B, K) of the main head, ``aux`` the auxiliary
    heads' (B, K) logits (GoogLeNet: ``(aux2, aux1)``; empty for other models), ``targets`` (B, K) target
    distributions. Loss = mean CE(main) + :data:`AUX_WEIGHT` * sum over heads of mean CE(aux head), as
    torchvision's reference (``loss1 + 0.3 * aux_loss1 + 0.3 * aux_loss2``). With auxiliary heads the parts
    are ``{"loss_main": mean CE(main), "loss_aux": sum of the aux heads' mean CEs}`` (so that a run with aux
    heads can be compared with one without on the main head's loss); without them ``{}`` (``loss`` is then the
    main head's)."""
    main = soft_cross_entropy(logits, targets, label_smoothing).mean()
    if not aux:
        return main, {}
    aux_sum = sum(soft_cross_entropy(a, targets, label_smoothing).mean() for a in aux)
    return main + AUX_WEIGHT * aux_sum, {"loss_main": main, "loss_aux": aux_sum}


#: ``fold_in`` tag of the on-device augmentation's key (beside dropout's ``fold_in(rng, step)``).
TAG_AUGMENT = 0x4147

#: ``augment(key, images, labels) -> (images, targets)``: the on-device augmentation of a train batch
#: (:func:`cnnjax.augment.batch_augmenter`): normalised NHWC images in and out, ``(B, K)`` float32 targets.
BatchAugment = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 if the label is among the ``k`` largest logits (k is capped at the class count)."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class EMA:
    """An exponential moving average of the weights and BatchNorm statistics (torchvision's
    ``ExponentialMovingAverage`` with ``use_buffers=True``), updated after every ``every``-th step:
    ``ema <- decay * ema + (1 - decay) * current``. As torchvision's references reset the average after every
    update made during the warmup epochs (``n_averaged.fill_(0)``), the first update, and every update whose
    previous update came at one of the first ``warmup_steps`` steps, copies the current weights instead.
    :func:`adjusted_decay` gives torchvision's decay."""

    decay: float
    every: int = 1
    warmup_steps: int = 0

    def update(self, ema: dict, current: dict, step: jax.Array) -> dict:
        """The EMA after completed step ``step`` (1-based count of optimizer steps)."""
        due = step % self.every == 0
        copy = step - self.every <= self.warmup_steps  # the previous update was the start or within the warmup
        d = jnp.where(copy, 0.0, self.decay)

        def one(e, c):
            if not jnp.issubdtype(e.dtype, jnp.floating):
                return jnp.where(due, c, e)
            return jnp.where(due, (d * e.astype(jnp.float32) + (1 - d) * c.astype(jnp.float32)).astype(e.dtype), e)

        return jax.tree.map(one, ema, current)


def adjusted_decay(decay: float, global_batch: int, every: int, epochs: float) -> float:
    """torchvision's references' EMA decay: ``alpha = min(1, (1 - decay) * global_batch * every / epochs)``,
    decay ``1 - alpha`` — so that the average spans about the same share of training whatever the batch size,
    update interval and run length."""
    return 1.0 - min(1.0, (1.0 - decay) * global_batch * every / max(epochs, 1e-9))


def micro_batches(x: jax.Array, k: int, shards: int = 1) -> jax.Array:
    """(B, ...) -> (k, B / k, ...): ``k`` micro-batches, each taking B / (k * shards) consecutive rows of every
    one of the ``shards`` equal blocks of the batch (one block per device), so each micro-batch stays spread over
    all devices and no data moves between them."""
    b = x.shape[0]
    m = b // (k * shards)
    return jnp.swapaxes(x.reshape(shards, k, m, *x.shape[1:]), 0, 1).reshape(k, shards * m, *x.shape[1:])


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, label_smoothing: float = 0.0,
                    trainable: transfer.Trainable = None, frozen_modules: Callable[[str], bool] | None = None,
                    *, accum_steps: int = 1, shards: int = 1, lr_schedule: optax.Schedule | None = None,
                    ema: EMA | None = None, augment: BatchAugment | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The training step: forward in training mode (BN batch statistics, dropout from ``fold_in(rng, step)``),
    loss in float32 (+ auxiliary losses), gradients, one optimizer update. Metrics are batch means, plus
    ``grad_norm`` (global L2 norm of the gradient, before any clipping) and ``lr`` (``lr_schedule(step)``, when
    given).

    With ``trainable`` (transfer learning) only the trainable part of the parameters is differentiated and
    updated (``tx`` and its state cover that part alone); the frozen part passes through untouched, and the
    BatchNorm layers for which ``frozen_modules(path)`` holds run on their running statistics.

    ``accum_steps = K > 1``: the batch is split into K micro-batches (:func:`micro_batches`, ``shards`` = the
    devices the batch is split over), run one after the other in a ``lax.scan`` (activation memory of one
    micro-batch); their gradients are averaged and applied in one update, so the optimizer batch is still the
    whole batch. BatchNorm normalises each micro-batch with its own statistics and updates the running averages
    K times (as PyTorch's accumulation loops do); dropout uses ``fold_in(step key, i)`` for micro-batch i.
    ``ema``: also update the state's moving average (:class:`EMA`).

    ``augment`` (:data:`BatchAugment`): on-device augmentation of the whole global batch before anything else,
    keyed by ``fold_in(fold_in(key(state.rng), step), TAG_AUGMENT)`` -- a function of (seed, step) only, so a
    resumed run sees the same augmented batches, on any number of devices. The loss is taken against its
    targets (soft under MixUp/CutMix); ``top1``/``top5`` count the batch's original labels (under MixUp/CutMix:
    the label of each row's own image).
    """

    def loss_fn(train_part, frozen_part, batch_stats, image, label, target, rng):
        params = train_part if trainable is None else transfer.merge(train_part, frozen_part)
        variables = {"params": params, "batch_stats": batch_stats}
        with frozen_batchnorm(frozen_modules or (lambda path: False)):
            out, updates = model.apply(variables, image, True, rngs={"dropout": rng}, mutable=["batch_stats"])
        logits, aux = split_outputs(out)
        if target is None:  # no augmentation: one-hot labels (the same numbers as cross_entropy)
            target = jax.nn.one_hot(label, logits.shape[-1])
        loss, parts = loss_terms(logits, aux, target, label_smoothing)
        return loss, (logits, updates.get("batch_stats", batch_stats), parts)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if trainable is None:
            train_part, frozen_part = state.params, {}
        else:
            train_part, frozen_part = transfer.split(state.params, trainable)
        image, label, target = batch["image"], batch["label"], None
        if augment is not None:
            image, target = augment(jax.random.fold_in(rng, TAG_AUGMENT), image, label)
        if accum_steps == 1:
            (loss, (logits, batch_stats, parts)), grads = grad_fn(train_part, frozen_part, state.batch_stats, image,
                                                                  label, target, rng)
            top1 = topk_correct(logits, label, 1).mean()
            top5 = topk_correct(logits, label, 5).mean()
        else:
            images = micro_batches(image, accum_steps, shards)
            labels = micro_batches(label, accum_steps, shards)
            targets = None if target is None else micro_batches(target, accum_steps, shards)

            def body(carry, xs):
                gsum, stats = carry
                i, image, label, target = xs
                (loss, (logits, stats, parts)), g = grad_fn(train_part, frozen_part, stats, image, label, target,
                                                            jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, gsum, g), stats), (loss, topk_correct(logits, label, 1).mean(),
                                                                 topk_correct(logits, label, 5).mean(), parts)

            zeros = jax.tree.map(jnp.zeros_like, train_part)
            (gsum, batch_stats), (losses, top1s, top5s, parts) = jax.lax.scan(
                body, (zeros, state.batch_stats), (jnp.arange(accum_steps), images, labels, targets))
            grads = jax.tree.map(lambda g: g / accum_steps, gsum)
            loss, top1, top5 = losses.mean(), top1s.mean(), top5s.mean()
            parts = {k: v.mean() for k, v in parts.items()}
        updates, opt_state = tx.update(grads, state.opt_state, train_part)
        params = optax.apply_updates(train_part, updates)
        if trainable is not None:
            params = transfer.merge(params, frozen_part)
        finite = jnp.isfinite(loss)
        for leaf in jax.tree.leaves(params):  # the new parameters too: a NaN state must never be checkpointed
            finite = finite & jnp.all(jnp.isfinite(leaf))
        metrics = {"loss": loss, "top1": top1, "top5": top5, "finite": finite, "grad_norm": optax.tree.norm(grads),
                   **parts}
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        if ema is not None and state.ema is not None:
            new = new.replace(ema=ema.update(state.ema, new.variables, new.step))
        return new, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, dict], dict]:
    """The evaluation step: eval-mode forward, masked sums of loss, top-1 and top-5 hits, and the count, and
    ``confusion``: (K, K) int32 counts of the unmasked rows, row = label, column = top-1 prediction (the class
    :func:`topk_correct` takes, lowest index on ties), so its trace is the ``top1`` sum. Summed on the device
    (one scatter-add per batch; K = 1000 is 4 MB)."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], False)
        mask = batch["mask"].astype(jnp.float32)
        k = logits.shape[-1]
        pred = jax.lax.top_k(logits.astype(jnp.float32), 1)[1][:, 0]
        confusion = jnp.zeros((k, k), jnp.int32).at[batch["label"], pred].add(batch["mask"].astype(jnp.int32))
        return {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
                "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
                "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
                "count": jnp.sum(mask), "confusion": confusion}

    return eval_step


def jit_steps(model: nn.Module, tx: optax.GradientTransformation, replicated: NamedSharding,
              batch_sharding: NamedSharding, *, label_smoothing: float = 0.0, trainable: transfer.Trainable = None,
              frozen_modules: Callable[[str], bool] | None = None, accum_steps: int = 1,
              lr_schedule: optax.Schedule | None = None, ema: EMA | None = None,
              augment: BatchAugment | None = None) -> tuple[Callable, Callable]:
    """``(train_step, eval_step)``, each one ``jax.jit`` with explicit shardings: the state replicated, batches
    split over the mesh's ``data`` axis; the train step donates the old state. The other options are
    :func:`make_train_step`'s."""
    shards = int(batch_sharding.mesh.size)
    step = make_train_step(model, tx, label_smoothing, trainable, frozen_modules, accum_steps=accum_steps,
                           shards=shards, lr_schedule=lr_schedule, ema=ema, augment=augment)
    train_step = jax.jit(step,
                         in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                         donate_argnums=0)
    return train_step, jit_eval_step(model, replicated, batch_sharding)


def jit_eval_step(model: nn.Module, replicated: NamedSharding, batch_sharding: NamedSharding) -> Callable:
    """``eval_step`` jitted with the state replicated and the batch split over ``data``."""
    return jax.jit(make_eval_step(model), in_shardings=(replicated, batch_sharding), out_shardings=replicated)
