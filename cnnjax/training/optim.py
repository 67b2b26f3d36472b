"""Optimizers and learning-rate schedules.

* :func:`make_optimizer`: SGD with momentum (Nesterov or classic) or AdamW, weight decay masked off biases and
  normalisation parameters (every parameter with fewer than 2 dimensions), optional clipping of the gradient's
  global norm before anything else (as ``torch.nn.utils.clip_grad_norm_`` before ``optimizer.step()``).
* :func:`learning_rate_schedule`: a linear warmup, then ``cosine`` (default), ``step``, ``multistep``,
  ``linear`` or ``constant``. As torchvision's ``references/classification/train.py`` (``SequentialLR`` of the
  warmup and the main scheduler), the main schedule counts from the end of the warmup; unlike it, every
  schedule is evaluated per optimizer step (torchvision steps its schedulers per epoch), so ``step`` and
  ``multistep`` change the rate at the first step of the epoch they name — counted, as in torchvision, from the
  end of the warmup (``--lr-milestones 30,60`` with 5 warmup epochs decays at epochs 35 and 65).
* :func:`layer_decay_scales` + :func:`scale_by_layer`: timm's layer-wise learning-rate decay (``--layer-decay``):
  layer groups from the top-level module names (:data:`LAYER_RULES`), each group's whole update scaled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "multistep", "linear", "constant")


#: Which parameters get weight decay: ``kernels`` (cnnjax's default: every parameter with >= 2 dimensions, never
#: a bias or a normalisation scale/shift), ``all`` (PyTorch's and torchvision's references' default),
#: ``no-norms`` (all but normalisation layers: torchvision's ``--norm-weight-decay 0.0``; biases of convolutions
#: and dense layers do get it).
DECAY_PARAMS = ("kernels", "all", "no-norms")


def decay_mask(params: Any, which: str = "kernels") -> Any:
    """A tree like ``params``: True where the weight gets weight decay (see :data:`DECAY_PARAMS`). A
    normalisation layer is a module with a ``scale`` parameter (flax's BatchNorm, LayerNorm, GroupNorm); all of
    its parameters count as normalisation parameters."""
    if which not in DECAY_PARAMS:
        raise ValueError(f"unknown weight-decay selection {which!r}; valid choices: {', '.join(DECAY_PARAMS)}")
    if which == "kernels":
        return jax.tree.map(lambda p: p.ndim >= 2, params)
    if which == "all":
        return jax.tree.map(lambda p: True, params)

    def walk(tree: Any) -> Any:
        if not isinstance(tree, dict):
            return True
        if "scale" in tree and not isinstance(tree["scale"], dict):  # a normalisation layer's own parameters
            return {k: jax.tree.map(lambda p: False, v) for k, v in tree.items()}
        return {k: walk(v) for k, v in tree.items()}

    return walk(dict(params))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The shape of a learning-rate schedule; epochs are converted to steps with ``steps_per_epoch``.

    ``kind``: ``cosine`` (half cosine from the peak to ``lr_min``), ``step`` (x ``gamma`` every ``step_size``
    epochs), ``multistep`` (x ``gamma`` at each epoch of ``milestones``), ``linear`` (straight line to
    ``lr_min``), ``constant``. ``warmup_start``: the warmup starts at ``warmup_start x lr`` (torchvision's
    ``--lr-warmup-decay``; 0 = from zero)."""

    kind: str = "cosine"
    step_size: float = 30.0
    gamma: float = 0.1
    milestones: tuple[float, ...] = ()
    lr_min: float = 0.0
    warmup_start: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; valid choices: {', '.join(SCHEDULES)}")
        if self.kind == "multistep" and not self.milestones:
            raise ValueError("the multistep schedule needs milestones (epochs, e.g. --lr-milestones 30,60,80)")


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int, schedule: Schedule | None = None,
                           steps_per_epoch: int = 1) -> optax.Schedule:
    """Linear warmup from ``schedule.warmup_start x lr`` to ``lr`` over ``warmup_steps``, then ``schedule``
    (default: cosine decay to 0 at ``total_steps``) over the remaining steps. Returns ``step -> lr``."""
    s = schedule or Schedule()
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    start = s.warmup_start * lr
    if s.kind == "cosine":
        return optax.warmup_cosine_decay_schedule(start, lr, warmup_steps, max(total_steps, warmup_steps + 1),
                                                  s.lr_min)
    rest = max(total_steps - warmup_steps, 1)
    if s.kind == "constant":
        main = optax.constant_schedule(lr)
    elif s.kind == "linear":
        main = optax.linear_schedule(lr, s.lr_min, rest)
    else:
        # epochs counted from the end of the warmup, as torchvision's SequentialLR restarts the main scheduler
        epochs = (tuple(float(m) for m in s.milestones) if s.kind == "multistep"
                  else tuple(s.step_size * k for k in range(1, int(rest / (s.step_size * steps_per_epoch)) + 2)))
        main = optax.piecewise_constant_schedule(lr, {max(round(e * steps_per_epoch), 1): s.gamma for e in epochs})
    if warmup_steps == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(start, lr, warmup_steps), main], [warmup_steps])


def make_optimizer(name: str, lr: float, weight_decay: float, total_steps: int, warmup_steps: int = 0,
                   momentum: float = 0.9, nesterov: bool = True, schedule: Schedule | None = None,
                   steps_per_epoch: int = 1, clip_grad_norm: float | None = None, decay_params: str = "kernels",
                   ) -> optax.GradientTransformation:
    """``sgd``: L2 weight decay added to the gradient (PyTorch's SGD ``weight_decay``) then momentum SGD
    (Nesterov unless ``nesterov=False``); ``adamw``: decoupled weight decay. Both with the decay on
    ``decay_params`` (:data:`DECAY_PARAMS`) and
    :func:`learning_rate_schedule`; ``clip_grad_norm`` first scales the raw gradient to at most that global L2
    norm."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    lr_fn = learning_rate_schedule(lr, total_steps, warmup_steps, schedule, steps_per_epoch)
    mask = lambda params: decay_mask(params, decay_params)  # noqa: E731
    if name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=mask),
                         optax.sgd(lr_fn, momentum=momentum or None, nesterov=nesterov and bool(momentum)))
    else:
        tx = optax.adamw(lr_fn, weight_decay=weight_decay, mask=mask)
    return clipped(tx, clip_grad_norm)


def clipped(tx: optax.GradientTransformation, max_norm: float | None) -> optax.GradientTransformation:
    """``tx`` after clipping the gradient's global norm to ``max_norm`` (``None``: ``tx`` itself)."""
    return tx if max_norm is None else optax.chain(optax.clip_by_global_norm(max_norm), tx)


def parse_milestones(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"30,60,80"`` -> ``(30.0, 60.0, 80.0)`` (epochs, increasing)."""
    if text is None or text == "":
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items)
    except ValueError:
        raise ValueError(f"--lr-milestones {text!r}: expected comma-separated epochs, e.g. 30,60,80") from None
    if any(v <= 0 for v in values) or list(values) != sorted(values):
        raise ValueError(f"--lr-milestones {text!r}: epochs must be positive and increasing")
    return values



# --------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (timm's ``param_groups_layer_decay``, BEiT's recipe for fine-tuning).
# --------------------------------------------------------------------------------------------------------------------

#: How the top-level modules of every registered architecture are ordered into layer groups: each rule maps a
#: module name to a sort key (and whether it joins the group before it), as timm's per-model ``group_matcher``
#: does for its parameter names. One key is one group; the groups are numbered in key order: the stem is group 0,
#: then each block (ResNet/ResNeXt/EfficientNet/ConvNeXt ``stage{S}_block{B}``, MobileNet ``block{N}``, DenseNet
#: ``denseblock{S}_layer{L}``, GoogLeNet ``inception{N}{x}``, VGG ``stage{N}``, AlexNet/GoogLeNet ``conv{N}``,
#: LeNet ``c{N}``) in order, then the layers after the blocks (``last_conv``, ``fc{N}``, LeNet's ``f6``), and the head
#: last. As in timm: a ConvNeXt ``downsample{S}`` shares the group of the first block of the stage it starts
#: (timm's ``stages.S.downsample``), a DenseNet ``transition{S}`` the group of the block's last layer (timm's
#: ``MATCH_PREV_GROUP``), and what stands between the last block and the classifier (DenseNet ``norm5``, ConvNeXt
#: ``head_norm``, MobileNetV3 ``pre_head``) is in the head's group, as are GoogLeNet's auxiliary classifiers.
_HEAD = (4,)
LAYER_RULES: tuple[tuple[str, Any], ...] = (
    (r"stem(_\w+)?", lambda m: (0,)),
    (r"(?:conv|c)(\d+)", lambda m: (1, int(m[1]))),
    (r"stage(\d+)_block(\d+)", lambda m: (2, int(m[1]), int(m[2]))),
    (r"stage(\d+)", lambda m: (2, int(m[1]), 0)),
    (r"block(\d+)", lambda m: (2, int(m[1]), 0)),
    (r"downsample(\d+)", lambda m: (2, int(m[1]) + 1, 0)),
    (r"denseblock(\d+)_layer(\d+)", lambda m: (2, int(m[1]), int(m[2]))),
    (r"transition(\d+)", lambda m: (2, int(m[1]), "prev")),
    (r"inception(\d+)([a-z])", lambda m: (2, int(m[1]), ord(m[2]))),
    (r"last_conv", lambda m: (3, 0)),
    (r"(?:fc|f)(\d+)", lambda m: (3, int(m[1]))),
    (r"head|head_norm|pre_head|norm5|aux\d+", lambda m: _HEAD),
)


def _layer_key(name: str) -> tuple | None:
    import re

    for pattern, key in LAYER_RULES:
        m = re.fullmatch(pattern, name)
        if m:
            return key(m)
    return None


def layer_groups(names: Sequence[str], arch: str = "the model") -> dict[str, int]:
    """The layer group of each top-level module ``names`` (the keys of a model's ``params``): 0 for the stem,
    then the blocks in order, the head's group last (see :data:`LAYER_RULES`). Raises ``ValueError`` when a
    name matches no rule or there is nothing below the head to decay (``arch`` names the model in the
    message)."""
    keys = {}
    for name in names:
        key = _layer_key(name)
        if key is None:
            raise ValueError(f"--layer-decay: no layer grouping for {arch}: its top-level module {name!r} is not a "
                             f"stem, block or head this rule set knows (cnnjax.training.optim.LAYER_RULES)")
        keys[name] = key
    own = sorted({k for k in keys.values() if k[-1] != "prev"})
    if len(own) < 2 or own[-1] != _HEAD:
        raise ValueError(f"--layer-decay: {arch} has no layers below its head to decay "
                         f"(top-level modules: {', '.join(names)})")
    index = {k: i for i, k in enumerate(own)}
    groups = {}
    for name, key in keys.items():
        if key[-1] == "prev":  # the group of the last key before it (a DenseNet transition: its block's last layer)
            key = max((k for k in own if k < key[:-1] + (float("inf"),)), default=own[0])
        groups[name] = index[key]
    return groups


def layer_decay_scales(names: Sequence[str], rate: float, arch: str = "the model") -> dict[str, float]:
    """Learning-rate scale of each top-level module: ``rate ** (G - 1 - i)`` for group ``i`` of ``G``
    (:func:`layer_groups`), 1 for the head's group, as timm's ``param_groups_layer_decay`` (``min_scale`` 0)."""
    check_layer_decay(rate)
    groups = layer_groups(names, arch)
    top = max(groups.values())
    return {name: float(rate) ** (top - i) for name, i in groups.items()}


def check_layer_decay(rate: float) -> None:
    if not (isinstance(rate, int | float) and 0 < rate <= 1):
        raise ValueError(f"--layer-decay must be in (0, 1] (1 = off), got {rate}")


def scale_by_layer(scales: dict[str, float]) -> optax.GradientTransformation:
    """Multiply each parameter's update by the scale of its top-level module (``scales``, from
    :func:`layer_decay_scales`). Chained after an optimizer whose update already includes the learning rate
    and weight decay, it multiplies the whole update -- what timm's per-group ``lr_scale`` does with torch's SGD
    and AdamW, whose weight decay is multiplied by the group's learning rate too."""

    def update_fn(updates, state, params=None):
        del params

        def scale(path, u):
            key = getattr(path[0], "key", None) if path else None
            if key not in scales:
                raise ValueError(f"--layer-decay: parameter {jax.tree_util.keystr(path)} is outside the modules "
                                 f"the layer groups were made for")
            s = scales[key]
            return u if s == 1.0 else u * jax.numpy.asarray(s, u.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
