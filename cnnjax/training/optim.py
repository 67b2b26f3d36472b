"""Optimizers: SGD with (Nesterov) momentum or AdamW, linear warmup + cosine decay, weight decay masked off
biases and normalisation parameters (every parameter with fewer than 2 dimensions)."""

from __future__ import annotations

from typing import Any

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")


def decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: kernels (ndim >= 2); False for biases, BN/LN scales and shifts."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)


def make_optimizer(name: str, lr: float, weight_decay: float, total_steps: int, warmup_steps: int = 0,
                   momentum: float = 0.9, nesterov: bool = True) -> optax.GradientTransformation:
    """``sgd``: L2 weight decay added to the gradient (PyTorch's SGD ``weight_decay``) then momentum SGD;
    ``adamw``: decoupled weight decay. Both with the masked decay and the warmup-cosine schedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    schedule = learning_rate_schedule(lr, total_steps, warmup_steps)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                           optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov and bool(momentum)))
    return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
