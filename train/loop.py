"""The training loop: data -> sharded batches -> jitted ``train_step`` -> evaluation, metrics, checkpoints.

Exact resume: a checkpoint holds the train state and the data position (epoch, next batch) plus the running
sums of the epoch's training metrics; the data pipeline is a pure function of (seed, epoch, batch), so a run
resumed from any checkpoint continues bit-identically. SIGINT/SIGTERM finish the current step, save, and exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from cnnjax import checkpoint, models, transfer
from cnnjax import data as cdata
from cnnjax.checkpoint import CheckpointStore, abstract_like
from cnnjax.ops.tracing import shape_only
from train import optim, parallel
from train.step import TrainState, make_eval_step, make_train_step

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
EXIT_NONFINITE = 3


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run (``config.json`` in the run directory). ``None`` means "the default for this
    architecture and dataset" (see :func:`resolve_defaults`)."""

    arch: str = "resnet50"
    dataset: str = cdata.DEFAULT
    data_dir: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    precision: str = "fp32"
    seed: int = 0
    workdir: str | None = None
    resume: bool = False
    checkpoint_every: int | None = None
    keep: int = 3
    eval_every: int = 1
    log_every: int = 10
    conv_impl: str = "fast"
    autotune: str | None = None
    zero_init_residual: bool = True
    init: str | None = None
    transfer: str | None = None
    backbone_lr_mult: float = 1.0
    feature_cache: bool = False
    progress: bool = True


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill the per-optimizer defaults: SGD lr 0.1 x batch/256 (Goyal et al.), wd 5e-5; AdamW lr 1e-3, wd 0.05."""
    cfg = dataclasses.replace(cfg)
    if cfg.lr is None:
        cfg.lr = 0.1 * cfg.batch_size / 256 if cfg.optimizer == "sgd" else 1e-3
    if cfg.weight_decay is None:
        cfg.weight_decay = 5e-5 if cfg.optimizer == "sgd" else 0.05
    if cfg.epochs is None:
        cfg.epochs = 10
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject bad values early, naming the valid choices."""
    if cfg.arch not in models.names():
        raise ValueError(models.registry.unknown_name_message(cfg.arch))
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if cfg.optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid choices: {', '.join(optim.OPTIMIZERS)}")
    from cnnjax.ops import CONV_IMPLS

    if cfg.conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {cfg.conv_impl!r}; valid choices: {', '.join(CONV_IMPLS)}")
    for name in ("batch_size", "keep", "eval_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    parallel.check_batch_size(cfg.batch_size)
    if cfg.transfer is not None:
        transfer.mode_predicate(cfg.transfer)  # raises on an unknown mode
        if cfg.init is None:
            raise ValueError("--transfer needs --init (a cnnjax run directory or torchvision:ARCH)")
    if cfg.backbone_lr_mult != 1.0 and cfg.transfer not in (None, "finetune"):
        raise ValueError("--backbone-lr-mult applies to --transfer finetune only")
    if cfg.feature_cache and cfg.transfer != "linear-probe":
        raise ValueError("--feature-cache applies to --transfer linear-probe only")


def trainable_of(cfg: TrainConfig) -> transfer.Trainable:
    """The trainable predicate of the run (``None``: every parameter trains)."""
    return None if cfg.transfer in (None, "finetune") else transfer.mode_predicate(cfg.transfer)


def torchvision_arch(init: str, arch: str) -> str | None:
    """ARCH of ``--init torchvision:ARCH`` (which must be ``--arch``), or None for a cnnjax run directory."""
    if not init.startswith("torchvision:"):
        return None
    source = init.split(":", 1)[1]
    if source != arch:
        raise ValueError(f"--init {init}: the weights are for {source} but --arch is {arch}")
    return source


def apply_init(spec: str, arch: str, fresh: dict) -> tuple[dict, list[str]]:
    """``fresh`` variables overlaid with pretrained ones from a cnnjax run directory / checkpoint or
    ``torchvision:ARCH`` (strict; heads re-initialised when the class count differs)."""
    from cnnjax.weights.torchvision import head_modules

    if torchvision_arch(spec, arch) is not None:
        from cnnjax import weights

        return weights.init_from_torchvision(arch, fresh), []
    return transfer.load_pretrained(fresh, checkpoint.restore(spec), tuple("/".join(h) for h in head_modules(arch)))


def build_optimizer(cfg: TrainConfig, total_steps: int, warmup_steps: int) -> optax.GradientTransformation:
    """The run's optimizer; with ``--backbone-lr-mult`` the non-head parameters get ``lr * mult``."""
    make = lambda lr: optim.make_optimizer(cfg.optimizer, lr, cfg.weight_decay, total_steps,  # noqa: E731
                                           warmup_steps, cfg.momentum)
    if cfg.backbone_lr_mult == 1.0:
        return make(cfg.lr)
    labels = lambda params: transfer.labels(params, r"^head/")  # noqa: E731
    return optax.multi_transform({"trainable": make(cfg.lr), "frozen": make(cfg.lr * cfg.backbone_lr_mult)},
                                 labels)


def build_model(cfg: TrainConfig, info: cdata.DatasetInfo):
    """The architecture for this dataset's classes and channels, at the chosen precision and conv algorithm.

    Residual networks that support it start with the last BN of each block at zero (Goyal et al. 2017), which
    makes from-scratch training of deep ResNets stable; ``--no-zero-init-residual`` turns it off.
    """
    if cfg.autotune is not None:
        from cnnjax.ops import autotune

        autotune.configure(mode=cfg.autotune)
    extra = {}
    if cfg.zero_init_residual and "zero_init_last_bn" in models.registry.options(cfg.arch):
        extra["zero_init_last_bn"] = True
    return models.create(cfg.arch, num_classes=info.num_classes, in_channels=info.channels,
                         dtype=PRECISIONS[cfg.precision], conv_impl=cfg.conv_impl, **extra)


def init_state(model, tx, cfg: TrainConfig, info: cdata.DatasetInfo, replicated, init: str | None = None,
               log: Callable[[str], None] = print) -> TrainState:
    """A fresh train state from ``cfg.seed`` (overlaid with the pretrained variables of ``init``), placed
    replicated on the mesh. The optimizer state covers only the trainable parameters."""
    key = jax.random.key(cfg.seed)
    x = jnp.zeros((1, info.image_size, info.image_size, info.channels), jnp.float32)
    # the parameters do not depend on the conv algorithm: don't autotune the batch-1 init forward
    with shape_only():
        variables = jax.jit(lambda: model.init({"params": key, "dropout": jax.random.fold_in(key, 1)}, x, False),
                            out_shardings=replicated)()
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if init is not None:
        variables, notes = apply_init(init, cfg.arch, jax.device_get(variables))
        variables = jax.device_put(variables, replicated)
        for note in notes:
            log(note)
    trainable = trainable_of(cfg)
    train_part = variables["params"] if trainable is None else transfer.split(variables["params"], trainable)[0]
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=jax.jit(tx.init, out_shardings=replicated)(train_part),
                      rng=jax.device_put(jax.random.key_data(jax.random.fold_in(key, 2)), replicated))


def jit_steps(model, tx, cfg: TrainConfig, replicated, batch_sharding, trainable: transfer.Trainable = None,
              frozen_modules: Callable[[str], bool] | None = None) -> tuple[Callable, Callable]:
    """``(train_step, eval_step)`` jitted with explicit shardings: state replicated, batches split over ``data``;
    the train step donates the old state."""
    train_step = jax.jit(make_train_step(model, tx, cfg.label_smoothing, trainable, frozen_modules),
                         in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model), in_shardings=(replicated, batch_sharding), out_shardings=replicated)
    return train_step, eval_step


def default_workdir(cfg: TrainConfig) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.dataset.replace(":", "_").replace("/", "_").replace(",", "_").replace("=", "")
    return pathlib.Path("checkpoints") / f"{cfg.arch}-{name}-{stamp}"


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and exits after the current step."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _append_jsonl(path: pathlib.Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    """Drop records written after ``step`` (by a run that was killed before its next checkpoint)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def evaluate(state: TrainState, eval_step: Callable, source: cdata.DataSource, batch_size: int,
             batch_sharding, progress: bool = False) -> dict:
    """Top-1/top-5 and mean loss over every validation example exactly once (padded rows masked out)."""
    sums = None
    for local in tqdm(source.batches("val", batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count()),
                      total=source.num_batches("val", batch_size), desc="eval", leave=False, disable=not progress):
        out = eval_step(state, parallel.global_batch(local, batch_sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.tree.map(lambda a: float(np.asarray(a)), sums)
    n = max(sums["count"], 1.0)
    return {"val_loss": sums["loss"] / n, "val_top1": sums["top1"] / n, "val_top5": sums["top5"] / n,
            "val_count": int(sums["count"])}


def plot_curves(metrics_path: pathlib.Path, out_path: pathlib.Path) -> None:
    """``curves.png``: train/val loss and top-1 against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in rows], "o-", label="val")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    b.plot(ep, [r["train_top1"] for r in rows], "o-", label="train top-1")
    b.plot(ep, [r["val_top1"] for r in rows], "o-", label="val top-1")
    b.plot(ep, [r["val_top5"] for r in rows], "--", label="val top-5")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Run training as configured; returns the last evaluation record. Raises :class:`NonFiniteLossError`."""
    cfg = resolve_defaults(cfg)
    validate(cfg)
    workdir = pathlib.Path(cfg.workdir) if cfg.workdir else default_workdir(cfg)
    source = cdata.load(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, seed=cfg.seed)
    info = source.info
    model = build_model(cfg, info)
    models.check_input_size(model, info.image_size)  # before any compile
    steps_per_epoch = source.num_batches("train", cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    checkpoint_every = cfg.checkpoint_every or steps_per_epoch
    tx = build_optimizer(cfg, total_steps, round(cfg.warmup_epochs * steps_per_epoch))

    mesh = parallel.data_mesh()
    replicated, batch_sharding = parallel.shardings(mesh)
    state = init_state(model, tx, cfg, info, replicated, cfg.init if not cfg.resume else None, log)
    trainable = trainable_of(cfg)
    frozen_modules = None if trainable is None else transfer.frozen_module_predicate(state.params, trainable)
    metrics_path, is_main = workdir / "metrics.jsonl", jax.process_index() == 0
    store = CheckpointStore(workdir / "checkpoints", keep=cfg.keep)
    position = {"epoch": 0, "batch": 0, "sums": [0.0, 0.0, 0.0, 0]}
    if cfg.resume:
        if not store.steps():
            raise FileNotFoundError(f"--resume: no checkpoint in {workdir / 'checkpoints'}")
        restored, position, step = store.restore(abstract_like(state.as_dict()))
        state = TrainState.from_dict(restored)
        if is_main:
            _truncate_metrics(metrics_path, step)
        log(f"resumed from {workdir} at step {step} (epoch {position['epoch']}, batch {position['batch']})")
    if cfg.feature_cache:  # the frozen backbone runs once; the loop below trains the head on its outputs
        from train.feature_cache import cache_features

        source, model = cache_features(model, state, source, cfg.batch_size, cfg.seed, replicated, batch_sharding,
                                       progress=cfg.progress and jax.process_index() == 0, log=log)
    train_step, eval_step = jit_steps(model, tx, cfg, replicated, batch_sharding, trainable, frozen_modules)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "workdir": str(workdir),
                                                         "num_classes": info.num_classes,
                                                         "image_size": info.image_size,
                                                         "steps_per_epoch": steps_per_epoch,
                                                         "total_steps": total_steps,
                                                         "devices": jax.device_count(),
                                                         "processes": jax.process_count()}, indent=2))
    n_params = sum(p.size for p in jax.tree.leaves(state.params))
    if trainable is not None:
        n_train = sum(p.size for p in jax.tree.leaves(transfer.split(state.params, trainable)[0]))
        log(f"transfer {cfg.transfer} from {cfg.init}: {n_train:,} of {n_params:,} parameters train")
    log(f"{cfg.arch}: {n_params:,} parameters | {info.name}: {info.num_train} train / {info.num_val} val, "
        f"{info.num_classes} classes, {info.image_size}x{info.image_size}x{info.channels} | "
        f"{jax.device_count()} device(s) | {total_steps} steps | workdir {workdir}")

    step = int(state.step)
    last_record: dict = {}

    saved = {step} if cfg.resume else set()

    def save(epoch: int, batch: int, sums) -> None:
        if step in saved:  # e.g. a signal right after a periodic checkpoint: that one already holds this state
            return
        store.save(step, state.as_dict(), {"epoch": epoch, "batch": batch, "sums": sums})
        saved.add(step)

    with _StopFlag() as stop:
        try:
            epoch = position["epoch"]
            while epoch < epochs and step < total_steps:
                start_batch, sums = position["batch"], list(position["sums"])
                position = {"epoch": epoch + 1, "batch": 0, "sums": [0.0, 0.0, 0.0, 0]}
                pending: list[dict] = []
                t0, seen = time.perf_counter(), 0
                bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{epochs}",
                           disable=not (cfg.progress and is_main), unit="step", dynamic_ncols=True)
                batches = source.batches("train", cfg.batch_size, epoch=epoch, start_batch=start_batch,
                                         process_index=jax.process_index(), process_count=jax.process_count())
                b = start_batch
                for local in batches:
                    state, m = train_step(state, parallel.global_batch(local, batch_sharding))
                    step, b, seen = step + 1, b + 1, seen + cfg.batch_size
                    pending.append(m)
                    if len(pending) >= cfg.log_every or b == steps_per_epoch or step == total_steps \
                            or step % checkpoint_every == 0 or stop.signum is not None:
                        host = jax.device_get(pending)
                        pending = []
                        for hm in host:
                            sums = [sums[0] + float(hm["loss"]), sums[1] + float(hm["top1"]),
                                    sums[2] + float(hm["top5"]), sums[3] + 1]
                        loss = float(host[-1]["loss"])
                        if not all(bool(hm["finite"]) for hm in host):
                            raise NonFiniteLossError(
                                f"non-finite loss or parameters (last loss {loss}) by step {step}; stopping. "
                                f"The last good checkpoint is kept in {workdir / 'checkpoints'} "
                                f"(steps {store.steps()}); try a lower --lr.")
                        rate = seen / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.1f}")
                    bar.update(1)
                    if step % checkpoint_every == 0 and b < steps_per_epoch and step < total_steps:
                        save(epoch, b, sums)
                    if stop.signum is not None or step >= total_steps:
                        break
                bar.close()
                epoch_done = b >= steps_per_epoch or step >= total_steps
                if stop.signum is not None and not epoch_done:
                    save(epoch, b, sums)
                    break
                elapsed = time.perf_counter() - t0
                record = {"epoch": epoch + 1, "step": step, "train_loss": sums[0] / max(sums[3], 1),
                          "train_top1": sums[1] / max(sums[3], 1), "train_top5": sums[2] / max(sums[3], 1)}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs or step >= total_steps:
                    record.update(evaluate(state, eval_step, source, cfg.batch_size, batch_sharding))
                    record["images_per_sec"] = seen / max(elapsed, 1e-9)
                    if is_main:
                        _append_jsonl(metrics_path, record)
                        plot_curves(metrics_path, workdir / "curves.png")
                    log(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.4f}"
                        f" | val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.4f} "
                        f"top-5 {record['val_top5']:.4f} | {record['images_per_sec']:.1f} img/s")
                    last_record = record
                save(epoch + 1, 0, [0.0, 0.0, 0.0, 0])
                epoch += 1
                if stop.signum is not None:
                    break
        finally:
            store.close()
    if stop.signum is not None:
        log(f"stopped by signal {stop.signum} at step {step}; checkpoint saved in {workdir / 'checkpoints'}; "
            f"continue with --resume --workdir {workdir}")
        last_record = {**last_record, "interrupted": True, "signal": stop.signum}
    return {**last_record, "workdir": str(workdir), "step": step}


class BenchmarkStep:
    """The full train step of ``cfg`` on one synthetic batch, compiled and ready to time (``train.main
    --benchmark`` and ``benchmarks/compare_torchvision.py`` both use it). ``first_step_s`` is the first call:
    compile plus one step."""

    def __init__(self, cfg: TrainConfig):
        cfg = resolve_defaults(cfg)
        validate(cfg)
        self.cfg, self.size = cfg, cfg.image_size or 224
        source = cdata.load(f"synthetic:num_classes=1000,image_size={self.size},num_train={cfg.batch_size * 2}")
        model = build_model(cfg, source.info)
        models.check_input_size(model, self.size)
        tx = optim.make_optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay, 1000, 0, cfg.momentum)
        replicated, batch_sharding = parallel.shardings(parallel.data_mesh())
        self.step_fn, _ = jit_steps(model, tx, cfg, replicated, batch_sharding)
        self.state = init_state(model, tx, cfg, source.info, replicated)
        local = next(iter(source.batches("train", cfg.batch_size, process_index=jax.process_index(),
                                         process_count=jax.process_count())))
        self.batch = parallel.global_batch(local, batch_sharding)
        t0 = time.perf_counter()
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
              "first_step_s": bench.first_step_s, "steps_timed": steps}
    log(json.dumps(result))
    return result


def main_exit(fn: Callable[[], Any]) -> int:
    """Run ``fn`` mapping the known failures to clear messages and exit codes."""
    try:
        fn()
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
