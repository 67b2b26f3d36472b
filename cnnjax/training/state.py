"""The train state and its initialisation.

:class:`TrainState` is everything that determines the rest of a run (parameters, BatchNorm statistics,
optimizer state, step, RNG); it is what a checkpoint holds. :func:`init_state` builds it from a seed with the
default (threefry) PRNG: ``key = jax.random.key(seed)``; ``params`` from ``key``, ``dropout`` at init from
``fold_in(key, 1)``, and the state's RNG (dropout during training, ``fold_in(rng, step)`` per step) from
``fold_in(key, 2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding

from cnnjax import transfer
from cnnjax.ops.tracing import shape_only


@struct.dataclass
class TrainState:
    """Everything that determines the rest of a run: parameters, BN statistics, optimizer state, step, RNG."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints hold plain arrays
    #: ``{'params', 'batch_stats'}``: the exponential moving average of the weights (``--ema-decay``), or None
    ema: Any = None

    def as_dict(self) -> dict:
        d = {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
             "opt_state": self.opt_state, "rng": self.rng}
        if self.ema is not None:
            d["ema"] = self.ema
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(step=d["step"], params=d["params"], batch_stats=d["batch_stats"], opt_state=d["opt_state"],
                   rng=d["rng"], ema=d.get("ema"))

    def with_ema(self) -> TrainState:
        """This state with its EMA started as a copy of the current weights and BN statistics."""
        import jax.numpy as jnp

        return self.replace(ema=jax.tree.map(jnp.copy, self.variables))

    def ema_state(self) -> TrainState:
        """The state whose weights and BN statistics are the EMA's (for evaluation)."""
        return self.replace(params=self.ema["params"], batch_stats=self.ema["batch_stats"])

    @property
    def variables(self) -> dict:
        """``{'params': ..., 'batch_stats': ...}``, what ``model.apply`` takes."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def init_variables(model: nn.Module, input_shape: tuple[int, int, int, int], seed: int,
                   sharding: NamedSharding | None = None) -> dict:
    """``{'params', 'batch_stats'}`` of ``model.init`` on zeros of ``input_shape`` (NHWC), jitted, from
    ``jax.random.key(seed)`` (see the module docstring). No convolution is autotuned for this forward pass."""
    key = jax.random.key(seed)
    x = jnp.zeros(input_shape, jnp.float32)
    # the parameters do not depend on the conv algorithm: don't autotune the batch-1 init forward
    with shape_only():
        variables = jax.jit(lambda: model.init({"params": key, "dropout": jax.random.fold_in(key, 1)}, x, False),
                            out_shardings=sharding)()
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_state(model: nn.Module, tx: optax.GradientTransformation, *, seed: int,
               input_shape: tuple[int, int, int, int], replicated: NamedSharding,
               overlay: Callable[[dict], dict] | None = None, trainable: transfer.Trainable = None) -> TrainState:
    """A fresh train state from ``seed``, placed replicated on the mesh.

    ``overlay`` maps the fresh variables (host NumPy/JAX arrays) to the ones to start from, e.g. pretrained
    weights loaded strictly over them (``--init``). With ``trainable`` (transfer learning) the optimizer state
    covers only the trainable part of the parameters.
    """
    variables = init_variables(model, input_shape, seed, replicated)
    if overlay is not None:
        variables = jax.device_put(overlay(jax.device_get(variables)), replicated)
    train_part = variables["params"] if trainable is None else transfer.split(variables["params"], trainable)[0]
    key = jax.random.key(seed)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=jax.jit(tx.init, out_shardings=replicated)(train_part),
                      rng=jax.device_put(jax.random.key_data(jax.random.fold_in(key, 2)), replicated))
