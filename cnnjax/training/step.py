"""The pure training and evaluation steps, and :func:`jit_steps`, which compiles them with explicit shardings.

``train_step(state, batch) -> (state, metrics)`` and ``eval_step(state, batch) -> sums``; ``batch`` is a dict
of global arrays ``image`` (B, H, W, C) float32, ``label`` (B,) int32 and ``mask`` (B,) bool. ``metrics`` are
batch means (``loss``, ``top1``, ``top5``) and ``finite`` (loss and new parameters all finite); ``sums`` are
masked sums (``loss``, ``top1``, ``top5``, ``count``) over the batch.
"""

from __future__ import annotations

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
    logits = logits.astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 if the label is among the ``k`` largest logits (k is capped at the class count)."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, label_smoothing: float = 0.0,
                    trainable: transfer.Trainable = None, frozen_modules: Callable[[str], bool] | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The training step: forward in training mode (BN batch statistics, dropout from ``fold_in(rng, step)``),
    loss in float32 (+ auxiliary losses), gradients, one optimizer update. Metrics are batch means.

    With ``trainable`` (transfer learning) only the trainable part of the parameters is differentiated and
    updated (``tx`` and its state cover that part alone); the frozen part passes through untouched, and the
    BatchNorm layers for which ``frozen_modules(path)`` holds run on their running statistics.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if trainable is None:
            train_part, frozen_part = state.params, {}
        else:
            train_part, frozen_part = transfer.split(state.params, trainable)

        def loss_fn(train_part):
            params = train_part if trainable is None else transfer.merge(train_part, frozen_part)
            variables = {"params": params, "batch_stats": state.batch_stats}
            with frozen_batchnorm(frozen_modules or (lambda path: False)):
                out, updates = model.apply(variables, batch["image"], True, rngs={"dropout": rng},
                                           mutable=["batch_stats"])
            logits, aux = split_outputs(out)
            loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
            for a in aux:
                loss = loss + AUX_WEIGHT * cross_entropy(a, batch["label"], label_smoothing).mean()
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_part)
        updates, opt_state = tx.update(grads, state.opt_state, train_part)
        params = optax.apply_updates(train_part, updates)
        if trainable is not None:
            params = transfer.merge(params, frozen_part)
        finite = jnp.isfinite(loss)
        for leaf in jax.tree.leaves(params):  # the new parameters too: a NaN state must never be checkpointed
            finite = finite & jnp.all(jnp.isfinite(leaf))
        metrics = {"loss": loss, "top1": topk_correct(logits, batch["label"], 1).mean(),
                   "top5": topk_correct(logits, batch["label"], 5).mean(), "finite": finite}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), \
            metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, dict], dict]:
    """The evaluation step: eval-mode forward, masked sums of loss, top-1 and top-5 hits, and the count."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], False)
        mask = batch["mask"].astype(jnp.float32)
        return {"loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
                "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
                "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
                "count": jnp.sum(mask)}

    return eval_step


def jit_steps(model: nn.Module, tx: optax.GradientTransformation, replicated: NamedSharding,
              batch_sharding: NamedSharding, *, label_smoothing: float = 0.0, trainable: transfer.Trainable = None,
              frozen_modules: Callable[[str], bool] | None = None) -> tuple[Callable, Callable]:
    """``(train_step, eval_step)``, each one ``jax.jit`` with explicit shardings: the state replicated, batches
    split over the mesh's ``data`` axis; the train step donates the old state."""
    train_step = jax.jit(make_train_step(model, tx, label_smoothing, trainable, frozen_modules),
                         in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                         donate_argnums=0)
    return train_step, jit_eval_step(model, replicated, batch_sharding)


def jit_eval_step(model: nn.Module, replicated: NamedSharding, batch_sharding: NamedSharding) -> Callable:
    """``eval_step`` jitted with the state replicated and the batch split over ``data``."""
    return jax.jit(make_eval_step(model), in_shardings=(replicated, batch_sharding), out_shardings=replicated)
