"""What every zoo model shares: the ``__call__``/``features`` interface and the input-size check.

A model subclasses :class:`ImageClassifier` and implements one ``@nn.compact`` method,
``forward(x, train, features_only)``. Then

* ``model.apply(variables, x, train=False)`` -> logits (N, num_classes) for NHWC ``x`` (N, H, W, in_channels);
* ``model.apply(variables, x, train, method='features')`` -> the last spatial feature map (N, h, w, C)
  before global pooling / flatten;
* the classifier is the submodule ``head``, so transfer learning can replace it;
* an input too small for the architecture raises :class:`InputTooSmallError` at trace time (before any
  compile) naming the smallest valid square size.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.nn import InputTooSmallError
from cnnjax.ops.tracing import shape_only

_SEARCHING = contextvars.ContextVar("cnnjax_min_size_search", default=False)


class ImageClassifier(nn.Module):
    """Base of every zoo model. Subclasses implement ``forward(x, train, features_only)``."""

    num_classes: int = 1000
    in_channels: int = 3
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "xla"

    def __call__(self, x: jax.Array, train: bool = False) -> Any:
        with self._explain_too_small(x):
            return self.forward(self._check_input(x), train, False)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The last spatial feature map (N, h, w, C), before global pooling and the head."""
        with self._explain_too_small(x):
            return self.forward(self._check_input(x), train, True)

    def forward(self, x: jax.Array, train: bool, features_only: bool) -> Any:  # pragma: no cover
        raise NotImplementedError

    def conv_def(self, **overrides) -> Callable[..., nn.Module]:
        """``cnn.Conv`` with this model's dtype, param_dtype and conv algorithm (plus ``overrides``)."""
        return functools.partial(cnn.Conv, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.conv_impl,
                                 **overrides)

    def norm_def(self, train: bool, **overrides) -> Callable[..., nn.Module]:
        """``cnn.BatchNorm`` in training or inference mode with this model's dtypes (plus ``overrides``)."""
        return functools.partial(cnn.BatchNorm, use_running_average=not train, dtype=self.dtype,
                                 param_dtype=self.param_dtype, **overrides)

    def linear_def(self, **overrides) -> Callable[..., nn.Module]:
        """``cnn.Linear`` with this model's dtypes (plus ``overrides``)."""
        return functools.partial(cnn.Linear, dtype=self.dtype, param_dtype=self.param_dtype, **overrides)

    def _check_input(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects NHWC input (N, H, W, {self.in_channels}); "
                             f"got shape {tuple(x.shape)}")
        return x

    @contextlib.contextmanager
    def _explain_too_small(self, x: jax.Array) -> Iterator[None]:
        try:
            yield
        except InputTooSmallError as err:
            if _SEARCHING.get():
                raise
            unbound = self.clone(parent=None, name=None)
            smallest = min_input_size(unbound)
            raise InputTooSmallError(err.layer, err.in_hw, err.out_hw,
                                     f"{type(self).__name__} needs inputs of at least {smallest}x{smallest}, "
                                     f"got {x.shape[1]}x{x.shape[2]}") from None


def _fits(model: nn.Module, size: int, channels: int) -> bool:
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    try:
        with shape_only():
            jax.eval_shape(lambda x: model.init(rngs, x, False), x)
    except InputTooSmallError:
        return False
    return True


def min_input_size(model: nn.Module, max_size: int = 4096) -> int:
    """Smallest square input side the (unbound) model accepts, found by bisection over abstract traces."""
    channels = getattr(model, "in_channels", 3)
    token = _SEARCHING.set(True)
    try:
        if not _fits(model, max_size, channels):
            raise ValueError(f"{type(model).__name__} accepts no input up to {max_size}x{max_size}")
        lo, hi = 0, max_size  # lo does not fit (or is 0), hi fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _fits(model, mid, channels) else (mid, hi)
        return hi
    finally:
        _SEARCHING.reset(token)


def check_input_size(model: nn.Module, image_size: int | tuple[int, int]) -> None:
    """Raise :class:`InputTooSmallError` (naming the smallest valid size) if ``model`` cannot take this size.

    Traces abstractly (``jax.eval_shape``): nothing is compiled or allocated.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = jax.ShapeDtypeStruct((1, h, w, getattr(model, "in_channels", 3)), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with shape_only():
        jax.eval_shape(lambda x: model.init(rngs, x, False), x)
