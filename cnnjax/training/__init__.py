"""The training core (library, no CLI): train state, pure jitted steps, optimizers, devices, the step loop.

* :mod:`~cnnjax.training.state`: :class:`TrainState`, :func:`init_state` (threefry keys from a seed);
* :mod:`~cnnjax.training.step`: the pure ``train_step``/``eval_step`` and :func:`jit_steps` (one ``jax.jit``
  each with explicit ``NamedSharding``s, the state donated);
* :mod:`~cnnjax.training.optim`: SGD/AdamW with warmup + cosine and masked weight decay;
* :mod:`~cnnjax.training.parallel`: JAX's multi-host runtime, the 1-D ``data`` mesh, global batches;
* :mod:`~cnnjax.training.loop`: the step-indexed :class:`Loop`, the one cadence rule :func:`due`,
  :class:`Hook`, and :func:`evaluate`;
* :mod:`~cnnjax.training.hooks`: metrics fetch, progress, evaluation, checkpoints;
* :mod:`~cnnjax.training.host_memory`: :func:`compile_ahead` (compile a step before it runs, then give the
  compiler's freed heap back: a lower peak resident memory).

``train.main`` (the CLI), ``train.experiments`` and :mod:`cnnjax.analysis.training` all train through it.
"""

from cnnjax.training import hooks, optim, parallel
from cnnjax.training.loop import (
    Hook,
    Loop,
    NonFiniteLossError,
    due,
    evaluate,
    evaluate_variables,
    source_batches,
    zero_sums,
)
from cnnjax.training.optim import OPTIMIZERS, make_optimizer
from cnnjax.training.state import TrainState, init_state, init_variables
from cnnjax.training.step import (
    cross_entropy,
    jit_eval_step,
    jit_steps,
    make_eval_step,
    make_train_step,
    split_outputs,
    topk_correct,
)

__all__ = [
    "OPTIMIZERS", "Hook", "Loop", "NonFiniteLossError", "TrainState", "cross_entropy", "due", "evaluate",
    "evaluate_variables", "jit_eval_step",
    "hooks", "init_state", "init_variables", "jit_steps", "make_eval_step", "make_optimizer", "make_train_step",
    "optim", "parallel", "source_batches", "split_outputs", "topk_correct", "zero_sums",
]
