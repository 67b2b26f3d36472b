"""Normalisation layers with PyTorch's semantics on NHWC tensors."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.nn import init as inits
from cnnjax.nn.channelwise import scale_shift

_FROZEN = contextvars.ContextVar("cnnjax_frozen_batchnorm", default=None)


@contextlib.contextmanager
def frozen_batchnorm(is_frozen: Callable[[str], bool]) -> Iterator[None]:
    """Within this context (at trace time), every :class:`BatchNorm` whose path (``'stage1_block0/bn1'``)
    satisfies ``is_frozen`` runs in inference mode — running averages, no statistics update — even when the
    model is applied with ``train=True``. This is how a frozen backbone keeps its BN statistics bit-identical."""
    token = _FROZEN.set(is_frozen)
    try:
        yield
    finally:
        _FROZEN.reset(token)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` over the last (channel) axis of (N, H, W, C) or (N, C) inputs.

    Flax's convention for ``momentum``: ``running = momentum * running + (1 - momentum) * batch``, so the
    default 0.9 is PyTorch's ``momentum=0.1``. As in PyTorch, normalisation uses the biased batch variance
    and the running variance is updated with the unbiased one (n / (n - 1)). Statistics are computed in
    float32 whatever ``dtype`` is; the running averages live in the ``batch_stats`` collection
    (``mean``, ``var``) and are updated only in training mode when that collection is mutable.
    Under ``jax.jit`` with a batch sharded over devices the mean is over the global batch.
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    use_scale: bool = True
    use_bias: bool = True
    scale_init: inits.initializers.Initializer = inits.ones
    bias_init: inits.initializers.Initializer = inits.zeros

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        frozen = _FROZEN.get()
        if frozen is not None and frozen("/".join(self.scope.path)):
            use_ra = True
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if use_ra:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
                n = x.size // c
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
        mult = jax.lax.rsqrt(var + self.epsilon)
        shift = -mean * mult
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (c,), self.param_dtype).astype(jnp.float32)
            mult, shift = mult * scale, shift * scale
        if self.use_bias:
            shift = shift + self.param("bias", self.bias_init, (c,), self.param_dtype).astype(jnp.float32)
        dtype = self.dtype or jnp.result_type(x, self.param_dtype)
        # the scale and shift gradients sum over N*H*W positions: in float32 also for bf16 x (channelwise.py)
        return scale_shift(x.astype(dtype), mult, shift)


#: ``torch.nn.LayerNorm`` over the channel axis (ConvNeXt's LayerNorm2d on NHWC is the same thing), eps 1e-6,
#: with the two-pass variance PyTorch uses.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False)
