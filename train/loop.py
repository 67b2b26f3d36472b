"""Compatibility: the names ``train.loop`` exported before the training core moved to :mod:`cnnjax.training`
and the CLI to ``train.config``/``train.main``/``train.benchmark``/``train.report``. New code imports those."""

from cnnjax.training.loop import NonFiniteLossError, evaluate
from cnnjax.training.state import TrainState
from cnnjax.training.step import jit_steps as _jit_steps
from train.benchmark import BenchmarkStep, benchmark
from train.config import EXIT_NONFINITE, PRECISIONS, TrainConfig, main_exit, resolve_defaults, validate
from train.main import (
    StopFlag,
    apply_init,
    build_model,
    build_optimizer,
    default_workdir,
    initial_state,
    torchvision_arch,
    train,
    trainable_of,
)
from train.report import plot_curves

init_state = initial_state


def jit_steps(model, tx, cfg, replicated, batch_sharding, trainable=None, frozen_modules=None):
    """The old signature of :func:`cnnjax.training.step.jit_steps` (``cfg`` for its label smoothing)."""
    return _jit_steps(model, tx, replicated, batch_sharding, label_smoothing=cfg.label_smoothing,
                      trainable=trainable, frozen_modules=frozen_modules)

__all__ = [
    "EXIT_NONFINITE", "PRECISIONS", "BenchmarkStep", "NonFiniteLossError", "StopFlag", "TrainConfig", "TrainState",
    "apply_init", "benchmark", "build_model", "build_optimizer", "default_workdir", "evaluate", "init_state",
    "jit_steps", "main_exit", "plot_curves", "resolve_defaults", "torchvision_arch", "train", "trainable_of",
    "validate",
]
