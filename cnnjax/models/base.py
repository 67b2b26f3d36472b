"""What every zoo model shares: the ``__call__``/``features``/``feature_maps`` interface and the input-size check.

A model subclasses :class:`ImageClassifier` and implements one ``@nn.compact`` method,
``forward(x, train, features_only)``, marking the end of each stage with :func:`stage_end`. Then

* ``model.apply(variables, x, train=False)`` -> logits (N, num_classes) for NHWC ``x`` (N, H, W, in_channels);
* ``model.apply(variables, x, train, method='features')`` -> the last spatial feature map (N, h, w, C)
  before global pooling / flatten;
* ``model.apply(variables, x, train, method='feature_maps', out_indices=None)`` -> the multi-scale feature
  maps (timm's ``features_only=True`` / ``forward_intermediates``): a tuple of NHWC maps, one per stage end, in
  order of increasing reduction (output stride), the same forward pass as the two above; :func:`feature_info`
  describes the levels (channels, reduction, module);
* the classifier is the submodule ``head``, so transfer learning can replace it;
* an input too small for the architecture raises :class:`InputTooSmallError` at trace time (before any
  compile) naming the smallest valid square size.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.models.registry import create, record
from cnnjax.nn import InputTooSmallError
from cnnjax.ops.tracing import shape_only

_SEARCHING = contextvars.ContextVar("cnnjax_min_size_search", default=False)

# The feature levels being collected by ImageClassifier.feature_maps: [(module, reduction, map)], or None (no
# collection: __call__ and features).
_LEVELS: contextvars.ContextVar[list | None] = contextvars.ContextVar("cnnjax_feature_levels", default=None)

#: ``feature_maps``' ``out_indices``: None (every level), an int n (the last n levels) or a sequence of level
#: indices (negative ones count from the end), as timm's ``out_indices`` / ``forward_intermediates(indices=)``.
OutIndices = int | Sequence[int] | None


class NoFeatureLevelsError(ValueError):
    """The model has no spatial stages (an MLP flattens the image first), so no multi-scale feature maps."""


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One feature level of :meth:`ImageClassifier.feature_maps` (timm's ``feature_info`` entry).

    ``index``: its position among all the model's levels (what ``out_indices`` selects); ``module``: where it is
    taken, the output of this cnnjax module path after the activation that follows it (a stage of blocks by its
    name prefix: ``stage1`` for ResNet's ``stage1_block*``, ``denseblock1`` for DenseNet's concatenation);
    ``channels``: C of the (N, H, W, C) map (timm's ``num_chs``); ``reduction``: the output stride, the
    product of the strides before it, so the map is about (H / reduction, W / reduction): ``floor`` or
    ``ceil`` of it for the padded networks, a little less where convs are unpadded (LeNet, AlexNet).
    """

    index: int
    module: str
    channels: int
    reduction: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def stage_end(x: jax.Array, module: str, reduction: int) -> jax.Array:
    """Mark ``x`` (N, H, W, C) as the end of a stage: a level of :meth:`ImageClassifier.feature_maps` taken at
    ``module`` (see :class:`FeatureInfo`) with output stride ``reduction``. Returns ``x`` unchanged; outside
    ``feature_maps`` it only returns ``x``, so ``__call__``, ``features`` and ``feature_maps`` are one forward.
    Call it from ``forward`` (or a submodule it calls) in network order."""
    levels = _LEVELS.get()
    if levels is not None:
        levels.append((module, reduction, x))
    return x


def take_indices(levels: Sequence[tuple[str, int]], out_indices: OutIndices, owner: str) -> list[int]:
    """The level indices ``out_indices`` selects among ``levels`` (``(module, reduction)`` each), in network
    order (timm's ``feature_take_indices``): None -> all; an int n -> the last n; a sequence -> those indices,
    negative ones from the end. Bad indices raise ``ValueError`` naming the valid ones, others ``TypeError``."""
    n = len(levels)
    valid = ", ".join(f"{i}: {m} (reduction {r})" for i, (m, r) in enumerate(levels))
    if out_indices is None:
        return list(range(n))
    if isinstance(out_indices, bool) or not isinstance(out_indices, (int, Sequence)) or isinstance(out_indices, str):
        raise TypeError(f"out_indices must be None, an int (the last n levels) or a sequence of ints, "
                        f"got {out_indices!r}")
    if isinstance(out_indices, int):
        if not 1 <= out_indices <= n:
            raise ValueError(f"out_indices={out_indices}: {owner} has {n} feature levels, so the last n must be "
                             f"1..{n} (levels {valid})")
        return list(range(n - out_indices, n))
    if not out_indices:
        raise ValueError(f"out_indices is empty; {owner} has {n} feature levels ({valid})")
    taken = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"out_indices must hold ints, got {i!r} in {tuple(out_indices)!r}")
        if not -n <= i < n:
            raise ValueError(f"out_indices: level {i} is out of range: {owner} has {n} feature levels, indices "
                             f"0..{n - 1} or -{n}..-1 ({valid})")
        taken.append(i % n)
    if len(set(taken)) != len(taken):
        raise ValueError(f"out_indices {tuple(out_indices)!r} names a level twice (levels {valid})")
    return sorted(taken)


class ImageClassifier(nn.Module):
    """Base of every zoo model. Subclasses implement ``forward(x, train, features_only)``."""

    num_classes: int = 1000
    in_channels: int = 3
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "fast"

    def __call__(self, x: jax.Array, train: bool = False) -> Any:
        with self._explain_too_small(x):
            return self.forward(self._check_input(x), train, False)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The last spatial feature map (N, h, w, C), before global pooling and the head."""
        with self._explain_too_small(x):
            return self.forward(self._check_input(x), train, True)

    def feature_maps(self, x: jax.Array, train: bool = False, out_indices: OutIndices = None
                     ) -> tuple[jax.Array, ...]:
        """Multi-scale feature maps (timm's ``features_only=True``): a tuple of NHWC maps (N, H_i, W_i, C_i),
        one per stage end, in order of increasing reduction (output stride, e.g. 2, 4, 8, 16, 32:
        ``H_i ~ H / reduction_i``); :func:`feature_info` lists each level's channels, reduction and module.

        ``out_indices`` selects levels as timm does: None (all), an int n (the last n), or indices (negative
        from the end); the maps always come in network order. Bad indices raise ``ValueError`` at trace time.
        It is the forward of ``__call__`` and ``features`` (the head is never run; under ``jax.jit`` XLA also
        drops the layers after the last level selected, in inference); it uses the variables of ``init``
        unchanged. A model without spatial stages (an MLP) raises :class:`NoFeatureLevelsError`.
        """
        with self._explain_too_small(x):
            levels = self._feature_levels(self._check_input(x), train)
        take = take_indices([(m, r) for m, r, _ in levels], out_indices, type(self).__name__)
        return tuple(levels[i][2] for i in take)

    def _feature_levels(self, x: jax.Array, train: bool) -> list[tuple[str, int, jax.Array]]:
        """Run the forward (``features_only``) collecting every :func:`stage_end`: ``[(module, reduction, map)]``."""
        found: list[tuple[str, int, jax.Array]] = []
        token = _LEVELS.set(found)
        try:
            self.forward(x, train, True)
        finally:
            _LEVELS.reset(token)
        if not found:
            raise NoFeatureLevelsError(f"{type(self).__name__} has no spatial stages, so no multi-scale feature maps "
                                       "(feature_maps / feature_info need a convolutional architecture; an MLP "
                                       "flattens the image before its first layer)")
        return found

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


@functools.lru_cache(maxsize=256)
def _registered_info(name: str) -> tuple[FeatureInfo, ...]:
    return _trace_info(create(name), record(name).input_size)


def _trace_info(model: nn.Module, size: int) -> tuple[FeatureInfo, ...]:
    channels = getattr(model, "in_channels", 3)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    meta: list[tuple[str, int]] = []

    def levels(module: ImageClassifier, x: jax.Array) -> tuple[jax.Array, ...]:
        found = module._feature_levels(module._check_input(x), False)
        meta[:] = [(m, r) for m, r, _ in found]
        return tuple(y for *_, y in found)

    with shape_only():
        maps = jax.eval_shape(lambda x: model.init_with_output(rngs, x, method=levels)[0], x)
    return tuple(FeatureInfo(i, m, int(y.shape[-1]), r) for i, ((m, r), y) in enumerate(zip(meta, maps, strict=True)))


def feature_info(model: str | nn.Module, out_indices: OutIndices = None, *,
                 image_size: int = 224) -> tuple[FeatureInfo, ...]:
    """The feature levels of ``feature_maps`` (timm's ``feature_info``): one :class:`FeatureInfo` (index,
    module, channels, reduction) per level ``out_indices`` selects (default all), in network order.

    ``model`` is a registered name (``'resnet50'``; cached) or a model instance (traced at ``image_size``, for
    variants with other widths). Traces abstractly (``jax.eval_shape``): nothing is compiled or allocated.
    Raises :class:`NoFeatureLevelsError` for a model without spatial stages (``mlp``).
    """
    if isinstance(model, str):
        info = _registered_info(model)
        owner = model
    else:
        info = _trace_info(model.clone(parent=None, name=None), image_size)
        owner = type(model).__name__
    return tuple(info[i] for i in take_indices([(f.module, f.reduction) for f in info], out_indices, owner))
