"""``python -m train.main --benchmark``: steady-state images/s of the full train step on synthetic data.

:class:`BenchmarkStep` is the step ``train.main`` would run for a config (same model, optimizer, shardings and
jitted step, with the config's on-device augmentation: ``--augment default`` is the flip of a natural-image
dataset), on one synthetic batch; ``benchmarks/compare_torchvision.py`` and ``benchmarks/profile_step.py``
time it too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jax
import numpy as np

from cnnjax import data as cdata
from cnnjax import models
from cnnjax.training import optim, parallel
from cnnjax.training.host_memory import compile_ahead
from cnnjax.training.step import jit_steps
from train import config as C
from train.config import TrainConfig
from train.main import batch_augment, build_model, initial_state


class BenchmarkStep:
    """The full train step of ``cfg`` on one synthetic batch, compiled and ready to time. ``first_step_s`` is
    the first call: compile plus one step."""

    def __init__(self, cfg: TrainConfig):
        cfg = C.resolve_defaults(cfg)
        C.validate(cfg)
        self.cfg, self.size = cfg, cfg.image_size or 224
        source = cdata.load(f"synthetic:num_classes=1000,image_size={self.size},num_train={cfg.batch_size * 2}")
        model = build_model(cfg, source.info)
        models.check_input_size(model, self.size)
        tx = optim.make_optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay, 1000, 0, cfg.momentum)
        replicated, batch_sharding = parallel.shardings(parallel.data_mesh())
        self.step_fn, _ = jit_steps(model, tx, replicated, batch_sharding, label_smoothing=cfg.label_smoothing,
                                    augment=batch_augment(cfg, source.info))
        self.state = initial_state(model, tx, cfg, source.info, replicated)
        local = next(iter(source.batches("train", cfg.batch_size, process_index=jax.process_index(),
                                         process_count=jax.process_count())))
        self.batch = parallel.global_batch(local, batch_sharding)
        t0 = time.perf_counter()
        compile_ahead(self.step_fn, self.state, self.batch)  # as the training loop does
        self()
        self.first_step_s = time.perf_counter() - t0

    def __call__(self) -> float:
        """Run one step to completion; returns its wall time in seconds."""
        t = time.perf_counter()
        self.state, m = self.step_fn(self.state, self.batch)
        jax.block_until_ready(m)
        return time.perf_counter() - t


def benchmark(cfg: TrainConfig, warmup: int = 3, steps: int = 10, log: Callable[[str], None] = print) -> dict:
    """Steady-state images/s of the full train step on synthetic data (compile and warm-up excluded)."""
    bench = BenchmarkStep(cfg)
    for _ in range(warmup - 1):
        bench()
    med = float(np.median([bench() for _ in range(steps)]))
    cfg = bench.cfg
    result = {"images_per_sec": cfg.batch_size / med, "step_time_s": med, "arch": cfg.arch,
              "batch_size": cfg.batch_size, "image_size": bench.size, "precision": cfg.precision,
              "conv_impl": cfg.conv_impl, "devices": jax.device_count(), "backend": jax.default_backend(),
              "first_step_s": bench.first_step_s, "steps_timed": steps,
              "compile_cache": jax.config.jax_compilation_cache_dir,
              "augment": C.augmentation_of(cfg, False).describe()}
    log(json.dumps(result))
    return result
