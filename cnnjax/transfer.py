"""Transfer learning: choose which parameters train, and freeze the rest for real.

Paths are ``'/'``-joined parameter names (``'stage1_block0/conv1/kernel'``, ``'head/bias'``). A *trainable*
spec is ``None`` (everything), a regular expression searched in each path, or a predicate on the path.

* :func:`split` / :func:`merge` partition a parameter tree so that gradients are taken only of the trainable
  part (the frozen part is a constant of the loss: no backward pass through its weights' gradients, no
  optimizer state, no weight decay).
* :func:`freeze` wraps an optax optimizer for users who keep the full tree: ``optax.multi_transform`` with
  ``optax.set_to_zero()`` for frozen leaves, so they get zero updates and no optimizer state (unlike
  ``optax.masked``, which passes the raw gradient through for masked-out leaves).
* :func:`frozen_module_predicate` tells :func:`cnnjax.nn.frozen_batchnorm` which BatchNorm layers belong to the
  frozen part, so their statistics stay bit-identical and they normalise with running averages.
* :func:`load_pretrained` loads pretrained variables strictly, re-initialising the ``head`` when the class
  count differs; ``match="partial"`` copies only the leaves whose path and shape match and keeps the rest as
  freshly initialised (VGG's staged training: a deep net started from a shallow one).
* Linear-probe feature cache: :func:`head_inputs` runs the (frozen) model once in inference mode and returns what
  its ``head`` receives, (N, D); :class:`HeadOnFeatures` is a model made of that head alone, whose parameter tree is
  ``{'head': ...}``, so the full model's variables apply to it unchanged and a probe trained on cached features
  is a probe of the full model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import optax
from flax import traverse_util

from cnnjax.ops.tracing import shape_only

Trainable = str | Callable[[str], bool] | None

#: Modes of ``train.main --transfer``.
MODES = ("finetune", "linear-probe", "freeze:<pattern>")


def predicate(trainable: Trainable) -> Callable[[str], bool]:
    """``trainable`` as a function of the parameter path."""
    if trainable is None:
        return lambda path: True
    if isinstance(trainable, str):
        pattern = re.compile(trainable)
        return lambda path: pattern.search(path) is not None
    return trainable


def mode_predicate(mode: str) -> Callable[[str], bool]:
    """The trainable predicate of a ``--transfer`` mode: ``finetune`` (all), ``linear-probe`` (only ``head``),
    ``freeze:<regex>`` (every parameter whose path matches the regex is frozen)."""
    if mode == "finetune":
        return predicate(None)
    if mode == "linear-probe":
        return predicate(r"^head/")
    if mode.startswith("freeze:") and mode[len("freeze:"):]:
        frozen = re.compile(mode[len("freeze:"):])
        return lambda path: frozen.search(path) is None
    raise ValueError(f"unknown transfer mode {mode!r}; valid choices: {', '.join(MODES)}")


def paths(tree: Any) -> dict[str, Any]:
    """``{'a/b/kernel': leaf, ...}`` for a nested dict of arrays."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def labels(params: Any, trainable: Trainable) -> Any:
    """A tree like ``params`` with ``'trainable'`` or ``'frozen'`` at each leaf."""
    keep = predicate(trainable)
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: "trainable" if keep("/".join(k)) else "frozen" for k in flat})


def split(params: Any, trainable: Trainable) -> tuple[dict, dict]:
    """``(trainable_part, frozen_part)``: two nested dicts whose leaves together are those of ``params``."""
    keep = predicate(trainable)
    flat = traverse_util.flatten_dict(params)
    t = {k: v for k, v in flat.items() if keep("/".join(k))}
    f = {k: v for k, v in flat.items() if not keep("/".join(k))}
    return traverse_util.unflatten_dict(t), traverse_util.unflatten_dict(f)


def merge(trainable_part: dict, frozen_part: dict) -> dict:
    """Inverse of :func:`split`."""
    flat = {**traverse_util.flatten_dict(frozen_part), **traverse_util.flatten_dict(trainable_part)}
    return traverse_util.unflatten_dict(flat)


def freeze(optimizer: optax.GradientTransformation, params: Any, trainable: Trainable
           ) -> optax.GradientTransformation:
    """``optimizer`` for the trainable leaves, zero updates and no state for the frozen ones."""
    return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()},
                                 labels(params, trainable))


def frozen_module_predicate(params: Any, trainable: Trainable) -> Callable[[str], bool]:
    """True for a module path (e.g. ``'stage1_block0/bn1'``) all of whose parameters are frozen."""
    keep = predicate(trainable)
    modules: dict[str, bool] = {}
    for path in paths(params):
        module = path.rsplit("/", 1)[0]
        modules[module] = modules.get(module, True) and not keep(path)
    return lambda module_path: modules.get(module_path, False)


#: ``match`` modes of :func:`load_pretrained` (``train.main --init-match``).
MATCH_MODES = ("strict", "partial")


def load_pretrained(fresh: dict, pretrained: dict, heads: tuple[str, ...] = ("head",),
                    match: str = "strict") -> tuple[dict, list[str]]:
    """Fill ``fresh`` variables (``{'params', 'batch_stats'}`` of the target model) from ``pretrained``.

    ``match="strict"``: every non-head leaf must exist in ``pretrained`` with the same shape and every pretrained
    non-head leaf must be used (else ``ValueError`` listing the names). The head modules (``heads``: GoogLeNet
    also has ``aux1/fc2``, ``aux2/fc2``) are taken from ``pretrained`` when their shapes match, and otherwise kept
    as freshly initialised.

    ``match="partial"``: each leaf of ``fresh`` (heads included) whose path exists in ``pretrained`` with the
    same shape is copied; every other leaf keeps its fresh value; pretrained leaves the model lacks are ignored.
    One note per collection counts the copied leaves, the fresh ones (and how many of those were shape
    mismatches) and the unused pretrained ones. Raises ``ValueError`` if nothing at all matches (a wrong
    checkpoint, most likely).

    Returns ``(variables, notes)``.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if match == "partial":
        return _load_partial(fresh, pretrained)
    out, notes = {}, []
    for collection in ("params", "batch_stats"):
        target = paths(fresh.get(collection, {}))
        source = paths(pretrained.get(collection, {}))
        is_head = lambda p: any(p == h or p.startswith(h + "/") for h in heads)  # noqa: E731
        missing = sorted(p for p in target if not is_head(p) and p not in source)
        unused = sorted(p for p in source if not is_head(p) and p not in target)
        shape = sorted(f"{p}: {tuple(source[p].shape)} vs {tuple(target[p].shape)}" for p in target
                       if not is_head(p) and p in source and tuple(source[p].shape) != tuple(target[p].shape))
        if missing or unused or shape:
            raise ValueError(f"pretrained {collection} do not match the model: missing {missing[:20]}, "
                             f"unexpected {unused[:20]}, shape mismatches {shape[:20]}")
        head_paths = [p for p in target if is_head(p)]
        head_ok = head_paths and all(p in source and tuple(source[p].shape) == tuple(target[p].shape)
                                     for p in head_paths)
        if head_paths and not head_ok:
            notes.append(f"{collection}: head re-initialised (class count differs from the pretrained model)")
        merged = {p: (source[p] if (not is_head(p) or head_ok) else v) for p, v in target.items()}
        out[collection] = _unflatten(merged)
    return out, notes


def _unflatten(flat: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in flat.items()})


def _load_partial(fresh: dict, pretrained: dict) -> tuple[dict, list[str]]:
    """``load_pretrained(..., match="partial")``: copy the leaves whose path and shape match, keep the rest."""
    out, notes, copied_any = {}, [], False
    for collection in ("params", "batch_stats"):
        if collection not in fresh:
            continue
        target = paths(fresh[collection])
        source = paths(pretrained.get(collection, {}))
        same = {p for p, v in target.items() if p in source and tuple(source[p].shape) == tuple(v.shape)}
        shape = sum(1 for p in target if p in source and p not in same)
        unused = sum(1 for p in source if p not in target)
        copied_any = copied_any or bool(same)
        out[collection] = _unflatten({p: (source[p] if p in same else v) for p, v in target.items()})
        notes.append(f"{collection}: partial init: {len(same)} of {len(target)} leaves copied from the pretrained "
                     f"model, {len(target) - len(same)} kept fresh ({shape} of them shape mismatches), {unused} "
                     "pretrained leaves unused")
    if not copied_any:
        raise ValueError("partial init: no leaf of the pretrained variables matches the model in path and shape")
    return out, notes


def _is_top_head(context: nn.module.InterceptorContext) -> bool:
    module = context.module
    return context.method_name == "__call__" and module.name == "head" and module.scope is not None \
        and tuple(module.scope.path) == ("head",)


def head_module(model: nn.Module, example: jax.Array | jax.ShapeDtypeStruct) -> nn.Module:
    """The (unbound) ``head`` submodule of ``model`` as it is built for inputs like ``example`` (NHWC).

    Found by an abstract trace (nothing is computed). Raises ``ValueError`` if the model has no top-level
    module named ``head``.
    """
    found: list[nn.Module] = []

    def grab(next_fun, args, kwargs, context):
        if _is_top_head(context) and not found:
            m = context.module
            fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)
                      if f.init and f.name not in ("parent", "name")}
            found.append(type(m)(**fields))
        return next_fun(*args, **kwargs)

    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with nn.intercept_methods(grab), shape_only():
        jax.eval_shape(lambda x: model.init(rngs, x, False), example)
    if not found:
        raise ValueError(f"{type(model).__name__} has no top-level 'head' module to probe")
    return found[0]


def head_inputs(model: nn.Module, variables: dict, x: jax.Array) -> jax.Array:
    """What ``model``'s ``head`` receives for NHWC ``x`` in inference mode (running BN statistics, no dropout),
    flattened to (N, D) float32. Jit-friendly; this is the linear-probe feature of each image."""
    captured: list[jax.Array] = []

    def grab(next_fun, args, kwargs, context):
        if _is_top_head(context):
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        model.apply(variables, x, False)
    if len(captured) != 1:
        raise ValueError(f"{type(model).__name__}: expected one call of 'head', saw {len(captured)}")
    return captured[0].reshape(x.shape[0], -1).astype(jax.numpy.float32)


class HeadOnFeatures(nn.Module):
    """A model that is only ``head``: maps cached features (N, D) — or (N, 1, 1, D) — to logits (N, classes).

    Its parameters are ``{'head': ...}``; any other variables passed to ``apply`` (the frozen backbone's) are
    ignored, so a full model's variables can be used as they are. ``train`` is accepted for the common
    ``apply(variables, x, train)`` signature; the head has no dropout or BatchNorm of its own.
    """

    head: nn.Module

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(x.reshape(x.shape[0], -1))
