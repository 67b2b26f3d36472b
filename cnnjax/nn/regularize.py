"""Dropout and stochastic depth (both draw from the ``dropout`` RNG stream and act only in training)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

#: ``torch.nn.Dropout``: flax's, with ``deterministic`` passed per call (``deterministic=not train``).
Dropout = nn.Dropout


class StochasticDepth(nn.Module):
    """``torchvision.ops.StochasticDepth(p, mode='row')``: drop the whole residual branch per example.

    In training each example's branch is zeroed with probability ``rate`` and survivors are scaled by
    ``1 / (1 - rate)``; in evaluation it is the identity. Input (N, ...) -> same shape.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)
