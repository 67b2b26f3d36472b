"""Activation functions by name, so a model's ``act`` option can be set from the command line
(``--model-opt act=tanh``) as well as in Python (``act=jax.nn.gelu``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def lecun_tanh(x: jax.Array) -> jax.Array:
    """LeCun's squashing function ``1.7159 * tanh(2x / 3)`` (LeNet-5, LeCun et al. 1998)."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


#: name -> function; ``gelu`` is the exact (erf) form, as ``torch.nn.GELU()``; ``hardswish`` as
#: ``torch.nn.Hardswish``.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "lecun_tanh": lecun_tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False), "silu": jax.nn.silu, "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu, "hardswish": jax.nn.hard_swish,
}


def activation(act: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """``act`` itself if callable, else the function of that name in :data:`ACTIVATIONS` (``ValueError`` naming
    the valid names otherwise)."""
    if callable(act):
        return act
    if isinstance(act, str) and act in ACTIVATIONS:
        return ACTIVATIONS[act]
    raise ValueError(f"unknown activation {act!r}; valid names: {', '.join(ACTIVATIONS)} (or a function)")
