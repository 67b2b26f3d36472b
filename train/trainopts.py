"""The model-side checks of ``--layer-decay`` and ``--train-crop-size``, run before anything is compiled.

* :func:`layer_decay_scales`: the learning-rate scale of each top-level module of the run's model
  (:func:`cnnjax.training.optim.layer_decay_scales` over its parameter tree, found with ``jax.eval_shape``: no
  compile, no memory), or None when ``--layer-decay`` is 1. An architecture whose modules have no grouping is a
  ``ValueError`` (exit 2).
* :func:`check_train_size`: with ``--train-crop-size T`` different from the val size ``S`` the train step runs at
  ``T x T`` and evaluation at ``S x S``; a model whose parameters depend on the input size (a dense layer on the
  flattened feature map: ``mlp``, ``lenet5``; ``alexnet``/``vgg`` pool adaptively and do not) cannot, and gets a
  ``ValueError`` naming the flag, as does a ``T`` below the model's smallest input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax import models
from cnnjax.nn import InputTooSmallError
from cnnjax.ops.tracing import shape_only
from cnnjax.training import optim


def param_shapes(model, size: int, channels: int) -> dict:
    """The model's parameter tree at input ``size x size x channels``, as ``jax.ShapeDtypeStruct`` leaves."""
    key = jax.random.PRNGKey(0)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    with shape_only():  # (``--conv-impl auto`` measures nothing for this abstract trace)
        variables = jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x, False), x)
    return dict(variables["params"])


def layer_decay_scales(model, arch: str, rate: float, size: int, channels: int) -> dict[str, float] | None:
    """``--layer-decay``'s scale per top-level module of ``model`` (None for ``rate == 1``)."""
    optim.check_layer_decay(rate)
    if rate == 1.0:
        return None
    return optim.layer_decay_scales(list(param_shapes(model, size, channels)), rate, arch)


def check_train_size(model, arch: str, train_size: int | None, size: int, channels: int) -> None:
    """Raise ``ValueError`` unless ``model`` can train at ``train_size`` and evaluate at ``size``."""
    if train_size is None or train_size == size:
        return
    try:
        models.check_input_size(model, train_size)
    except InputTooSmallError as err:
        raise ValueError(f"--train-crop-size {train_size}: {err}") from None
    flat = [{jax.tree_util.keystr(k): a.shape for k, a in jax.tree_util.tree_flatten_with_path(
        param_shapes(model, s, channels))[0]} for s in (train_size, size)]
    if flat[0] != flat[1]:
        differ = next(k for k in flat[0] if flat[0][k] != flat[1].get(k))
        raise ValueError(f"--train-crop-size {train_size}: {arch}'s parameters depend on the input size (e.g. "
                         f"{differ}: a dense layer on the flattened feature map), so it cannot train at "
                         f"{train_size}x{train_size} and evaluate at {size}x{size}; leave --train-crop-size unset "
                         f"or equal to the image size")


def describe(cfg, info, layer_scales: dict[str, float] | None) -> list[str]:
    """The log lines saying what these options do in this run (none when all are off)."""
    lines = []
    if layer_scales is not None:
        groups = sorted(set(layer_scales.values()))
        lines.append(f"layer decay {cfg.layer_decay:g}: {len(groups)} layer groups, learning rate x {groups[0]:.3g} "
                     "(stem) .. x 1 (head)")
    if cfg.ra_reps > 1:
        lines.append(f"repeated augmentation: each train image {cfg.ra_reps} times per epoch (about "
                     f"{info.num_train // cfg.ra_reps} distinct images an epoch)")
    if cfg.train_crop_size is not None or cfg.val_resize_size is not None:
        train = cfg.train_crop_size or info.image_size
        resize = f"resized to {cfg.val_resize_size}, " if cfg.val_resize_size else ""
        lines.append(f"train crops {train}x{train}; val images {resize}centre-cropped to "
                     f"{info.image_size}x{info.image_size}")
    return lines
