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

