"""``python -m train.main --arch ARCH [options]``: train a zoo architecture and report validation accuracy.

With no option beyond ``--arch`` it trains on the bundled ``digits`` dataset (no network needed). :func:`train`
turns a :class:`~train.config.TrainConfig` into a run of the training core (:mod:`cnnjax.training`): data,
model, optimizer, state (fresh, pretrained or resumed), the jitted steps, and the loop with its hooks
(progress, evaluation -> ``metrics.jsonl``/``curves.png`` and TensorBoard event files, checkpoints); at the end,
``per_class.json`` and ``confusion.png`` of the last evaluation.

Exact resume: a checkpoint holds the train state and the data position (epoch, next batch) plus the running
sums of the epoch's training metrics; the data pipeline is a pure function of (seed, epoch, batch), so a run
resumed from any checkpoint continues bit-identically. SIGINT/SIGTERM finish the current step, save, and exit.
"""

from __future__ import annotations

import contextlib
import datetime
import pathlib
import shutil
import signal
import sys
from collections.abc import Callable, Sequence

import jax
import optax

from cnnjax import checkpoint, models, transfer
from cnnjax import data as cdata
from cnnjax.checkpoint import CheckpointStore, StorageError, abstract_like
from cnnjax.data.preprocess import Preprocess
from cnnjax.nn import InputTooSmallError
from cnnjax.training import compile_cache, optim, parallel
from cnnjax.training import hooks as H
from cnnjax.training.loop import Hook, Loop, NonFiniteLossError, evaluate, source_batches
from cnnjax.training.state import TrainState, init_state
from cnnjax.training.step import EMA, adjusted_decay, jit_steps
from cnnjax.weights.torchvision import init_string, torchvision_arch, torchvision_init
from train import config as C
from train import report, trainopts
from train.config import PRECISIONS, TrainConfig
from train.tensorboard import TensorBoard


def trainable_of(cfg: TrainConfig) -> transfer.Trainable:
    """The trainable predicate of the run (``None``: every parameter trains)."""
    return None if cfg.transfer in (None, "finetune") else transfer.mode_predicate(cfg.transfer)


def apply_init(spec: str, arch: str, fresh: dict, match: str = "strict") -> tuple[dict, list[str]]:
    """``fresh`` variables overlaid with pretrained ones from a cnnjax run directory / checkpoint or
    ``torchvision:ARCH[.WEIGHTS]`` (strict; heads re-initialised when the class count differs). ``match``
    (``--init-match``, cnnjax checkpoints only): ``"partial"`` copies the leaves whose path and shape match and
    keeps the rest fresh (:func:`cnnjax.transfer.load_pretrained`)."""
    from cnnjax.weights.torchvision import head_modules

    record = torchvision_init(spec, arch)
    if record is not None:
        from cnnjax import weights

        return weights.init_from_torchvision(arch, fresh, weights=record.name), []
    return transfer.load_pretrained(fresh, checkpoint.restore(spec), tuple("/".join(h) for h in head_modules(arch)),
                                    match=match)


def lr_schedule(cfg: TrainConfig, total_steps: int, steps_per_epoch: int, lr: float | None = None
                ) -> optax.Schedule:
    """The run's learning rate per step (``--schedule`` after ``--warmup-epochs``), peaking at ``lr`` (default
    ``--lr``)."""
    return optim.learning_rate_schedule(cfg.lr if lr is None else lr, total_steps,
                                        round(cfg.warmup_epochs * steps_per_epoch), schedule_of(cfg),
                                        steps_per_epoch)


def schedule_of(cfg: TrainConfig) -> optim.Schedule:
    return optim.Schedule(kind=cfg.schedule, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma,
                          milestones=optim.parse_milestones(cfg.lr_milestones), lr_min=cfg.lr_min,
                          warmup_start=cfg.warmup_start_factor)


def ema_of(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> EMA | None:
    """The run's weight EMA (``--ema-decay``; None without): updated every ``--ema-every`` steps, reset to the
    weights during the warmup epochs, with torchvision's decay adjustment unless ``--no-ema-adjust``
    (:func:`cnnjax.training.step.adjusted_decay`, over the run's epochs ``total_steps / steps_per_epoch``)."""
    if cfg.ema_decay is None:
        return None
    decay = cfg.ema_decay
    if cfg.ema_adjust:
        decay = adjusted_decay(decay, cfg.batch_size, cfg.ema_every, total_steps / steps_per_epoch)
    return EMA(decay=decay, every=cfg.ema_every, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))


def build_optimizer(cfg: TrainConfig, total_steps: int, steps_per_epoch: int,
                    layer_scales: dict[str, float] | None = None) -> optax.GradientTransformation:
    """The run's optimizer (:func:`cnnjax.training.optim.make_optimizer` with the run's schedule, momentum,
    clipping); with ``--backbone-lr-mult`` the non-head parameters get ``lr * mult`` (clipping stays global);
    ``layer_scales`` (``--layer-decay``: :func:`train.trainopts.layer_decay_scales`) then scale each top-level
    module's whole update (:func:`cnnjax.training.optim.scale_by_layer`)."""
    tx = _base_optimizer(cfg, total_steps, steps_per_epoch)
    return tx if layer_scales is None else optax.chain(tx, optim.scale_by_layer(layer_scales))


def _base_optimizer(cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def make(lr: float, clip: float | None) -> optax.GradientTransformation:
        return optim.make_optimizer(cfg.optimizer, lr, cfg.weight_decay, total_steps, warmup, cfg.momentum,
                                    nesterov=cfg.nesterov, schedule=schedule_of(cfg),
                                    steps_per_epoch=steps_per_epoch, clip_grad_norm=clip,
                                    decay_params=cfg.decay_params)

    if cfg.backbone_lr_mult == 1.0:
        return make(cfg.lr, cfg.clip_grad_norm)
    labels = lambda params: transfer.labels(params, r"^head/")  # noqa: E731
    return optim.clipped(optax.multi_transform({"trainable": make(cfg.lr, None),
                                                "frozen": make(cfg.lr * cfg.backbone_lr_mult, None)}, labels),
                         cfg.clip_grad_norm)


def batch_augment(cfg: TrainConfig, info: cdata.DatasetInfo, log: Callable[[str], None] | None = None):
    """The train step's on-device augmentation (:func:`cnnjax.augment.batch_augmenter`) for ``--augment``,
    ``--mixup``, ``--cutmix``, ``--random-erasing`` on this dataset, or None when there is none; ``log`` gets one
    line saying what runs where when anything but the default was asked for."""
    from cnnjax import augment

    aug = C.augmentation_of(cfg, info.orientation_sensitive)
    chosen = (cfg.augment != "default" or cfg.mixup or cfg.cutmix or cfg.random_erasing or cfg.rrc_scale
              or (aug.flip and info.orientation_sensitive))
    if log is not None and not cfg.feature_cache and chosen:  # the default says nothing
        host = "none" if not augment.host_crop(cfg.augment) else (
            f"random-resized crop {cfg.rrc_scale}" if cfg.rrc_scale else "the dataset's own crop/shift, if any")
        note = ""
        if info.orientation_sensitive and aug.flip:
            note = f" (note: {info.name} is orientation-sensitive: a mirrored example may be another class)"
        elif info.orientation_sensitive and augment.parse_policy(cfg.augment).name == "default":
            note = f" (no flip: {info.name} is orientation-sensitive)"
        log(f"augmentation: host {host}; device {aug.describe() if aug.active else 'none'}{note}")
    return augment.batch_augmenter(aug, info.num_classes, info.mean, info.std) if aug.active else None


def build_model(cfg: TrainConfig, info: cdata.DatasetInfo):
    """The architecture for this dataset's classes and channels, at the chosen precision and conv algorithm.

    ``--zero-init-residual`` (:func:`train.config.zero_init_last_bn`) decides whether the last BN of each residual
    block starts at zero (Goyal et al. 2017). ``auto`` (the default) follows the architecture's record
    (:attr:`cnnjax.models.ArchRecord.zero_init_residual`): on for the ImageNet ResNets, where it makes
    from-scratch training of deep ResNets stable; off for the CIFAR ResNets, where it stalls training (the zero
    scales barely get a gradient, and the zero-padded option-A shortcut channels none at all; see
    :mod:`cnnjax.models.cifar_resnet`), and for the ``_plain`` networks (no shortcut: every block would output 0).
    ``on``/``off`` force it (``on`` is refused by :func:`train.config.validate` where there is no shortcut).
    ``--model-opt KEY=VALUE`` items (:func:`train.config.model_options`) go to the constructor as they are.
    """
    if cfg.autotune is not None:
        from cnnjax.ops import autotune

        autotune.configure(mode=cfg.autotune)
    extra = C.model_options(cfg.arch, cfg.model_opt)
    if C.zero_init_last_bn(cfg.arch, cfg.zero_init_residual):
        extra["zero_init_last_bn"] = True
    return models.create(cfg.arch, num_classes=info.num_classes, in_channels=info.channels,
                         dtype=PRECISIONS[cfg.precision], conv_impl=cfg.conv_impl, **extra)


def initial_state(model, tx, cfg: TrainConfig, info: cdata.DatasetInfo, replicated, init: str | None = None,
                  log: Callable[[str], None] = print) -> TrainState:
    """The run's fresh state from ``cfg.seed``, overlaid with ``init``'s pretrained variables if given."""

    def overlay(fresh: dict) -> dict:
        variables, notes = apply_init(init, cfg.arch, fresh, cfg.init_match)
        for note in notes:
            log(note)
        return variables

    return init_state(model, tx, seed=cfg.seed, input_shape=(1, info.image_size, info.image_size, info.channels),
                      replicated=replicated, overlay=overlay if init is not None else None,
                      trainable=trainable_of(cfg))


def is_folder(spec: str) -> bool:
    return spec.strip().startswith("folder:")


def load_source(cfg: TrainConfig, log: Callable[[str], None] = print) -> cdata.DataSource:
    """The run's dataset. A ``folder:`` without ``--image-size`` trains at the images' typical (median) shorter
    side, raised to the architecture's smallest valid input and capped at its default input size; its channels
    follow the data (1 when every image is grayscale) except with ``--init torchvision:...`` (RGB, as the
    weights need). One line says what was chosen. With ``--init torchvision:ARCH[.WEIGHTS]`` on ``folder:`` /
    ``tfds:`` the val transform is the weights' eval transform when the run's size equals its crop
    (:func:`torchvision_val`)."""
    source = _load_source(cfg, log)
    try:
        return torchvision_val(cfg, source, log)
    except BaseException:
        source.close()
        raise


def val_preprocess(cfg: TrainConfig, image_size: int) -> tuple[Preprocess | None, str]:
    """The val transform ``--init torchvision:ARCH[.WEIGHTS]`` gives a ``folder:`` / ``tfds:`` run validating at
    ``image_size`` (the weights' eval transform, a :class:`Preprocess`; None: the dataset's default) and the
    line that says so. The weights' transform applies when ``image_size`` equals its crop and
    ``--val-resize-size`` is not given."""
    record = torchvision_init(cfg.init, cfg.arch)
    name = init_string(cfg.arch, record).split(":", 1)[1]
    t = record.transform
    if cfg.val_resize_size is not None:
        return None, (f"val transform: --val-resize-size {cfg.val_resize_size} + centre crop {image_size}, not "
                      f"{name}'s eval transform")
    if image_size != t.crop:
        return None, (f"val transform: the dataset's default at {image_size}x{image_size}, not {name}'s eval "
                      f"transform (its crop is {t.crop}; pass --image-size {t.crop} to use it)")
    from cnnjax import weights

    return weights.eval_preprocess(cfg.arch, record.name), (
        f"val transform: {name}'s eval transform (resize {t.resize} {t.interpolation}, centre crop {t.crop}, "
        f"mean {list(t.mean)}, std {[round(v, 5) for v in t.std]})")


def torchvision_val(cfg: TrainConfig, source: cdata.DataSource, log: Callable[[str], None]) -> cdata.DataSource:
    """``source`` with the val transform of :func:`val_preprocess` (reopened with it when it is the weights'; one
    line logged); ``source`` itself without ``--init torchvision:...`` or for another kind of dataset."""
    if torchvision_init(cfg.init, cfg.arch) is None or not cdata.takes_eval_preprocess(cfg.dataset):
        return source
    spec, line = val_preprocess(cfg, source.info.image_size)
    log(line)
    if spec is None:
        return source
    source.close()
    if is_folder(cfg.dataset):
        return source.with_eval_preprocess(spec)
    return cdata.load(cfg.dataset, data_dir=cfg.data_dir, image_size=spec.crop, seed=cfg.seed, eval_preprocess=spec,
                      workers=cfg.data_workers, train_view=C.train_view(cfg), ra_reps=cfg.ra_reps,
                      train_size=cfg.train_crop_size)


def run_weights(cfg: TrainConfig, source: cdata.DataSource) -> dict:
    """What ``config.json`` records of the pretrained weights and the val transform: ``torchvision_weights``
    (``torchvision:ARCH.WEIGHTS``, the enum resolved, e.g. ``DEFAULT`` -> ``IMAGENET1K_V2``; None without
    ``--init torchvision:...``) and ``val_preprocess`` (the PIL eval transform the run validates with, as
    :meth:`Preprocess.as_dict`, or None for the dataset's default), which ``train.evaluate``,
    ``cnnjax.predict`` and ``cnnjax.export`` apply to the run's weights."""
    record = torchvision_init(cfg.init, cfg.arch)
    spec = getattr(source, "eval_preprocess", None)
    return {"torchvision_weights": None if record is None else init_string(cfg.arch, record),
            "val_preprocess": None if spec is None else spec.as_dict()}


def _load_source(cfg: TrainConfig, log: Callable[[str], None]) -> cdata.DataSource:
    opts = {"ra_reps": cfg.ra_reps, "train_size": cfg.train_crop_size, "val_resize": cfg.val_resize_size}
    if not is_folder(cfg.dataset):
        workers = {"workers": cfg.data_workers} if cfg.dataset.strip().startswith("tfds:") else {}
        return cdata.load(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, seed=cfg.seed,
                          train_view=C.train_view(cfg), **workers, **opts)
    rgb = torchvision_arch(cfg.init, cfg.arch) is not None
    source = cdata.load(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, seed=cfg.seed,
                        channels=3 if rgb else None, workers=cfg.data_workers, train_view=C.train_view(cfg), **opts)
    typical, info = source.typical, source.info
    if cfg.image_size is not None:
        return source
    record = models.record(cfg.arch)
    size, why = min(typical.short, record.input_size), ""
    if typical.short > record.input_size:
        why = f" (capped at {cfg.arch}'s default input size)"
    model = models.create(cfg.arch, num_classes=info.num_classes, in_channels=info.channels,
                          **C.model_options(cfg.arch, cfg.model_opt))
    try:
        models.check_input_size(model, size)
    except InputTooSmallError:
        size, why = models.min_input_size(model), f" (raised to {cfg.arch}'s smallest input)"
    if size != info.image_size:
        source = source.resized(size)
    rgb_note = " as RGB (the torchvision weights need 3 channels)" if rgb and typical.grayscale else ""
    log(f"images are {typical.describe()} (median); training at {size}x{size}x{source.info.channels}{why}"
        f"{rgb_note} - pass --image-size to change")
    return source


def default_workdir(cfg: TrainConfig) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.dataset.replace(":", "_").replace("/", "_").replace(",", "_").replace("=", "")
    return pathlib.Path("checkpoints") / f"{cfg.arch}-{name}-{stamp}"


class StopFlag:
    """SIGINT/SIGTERM set a flag (the loop saves and exits after the current step); a second signal raises
    ``KeyboardInterrupt`` at once. Call the object to read the flag."""

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

    def __call__(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def unwritable(folder: pathlib.Path) -> OSError | None:
    """Create ``folder`` and write and delete a probe file in it; the ``OSError`` if that fails, else None."""
    probe = folder / f".write-test-{jax.process_index()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        return err
    return None


def check_workdir(workdir: pathlib.Path) -> None:
    """Create ``workdir`` and prove it writable, before any data is read or anything compiled; an unwritable
    or missing location is a clear ``OSError``-free :class:`~cnnjax.checkpoint.StorageError`."""
    err = unwritable(workdir)
    if err is not None:
        raise StorageError(f"--workdir {workdir} is not writable ({err.strerror or err}); choose another "
                           "--workdir")


def check_free_space(workdir: pathlib.Path, state: TrainState, keep: int) -> None:
    """Refuse to start when the disk under ``workdir`` cannot hold two more checkpoints of ``state`` (orbax
    writes a new one before deleting the oldest of ``keep``), before the train step is compiled."""
    need = 2 * sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state.as_dict())) + (16 << 20)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise StorageError(f"not enough free space under {workdir}: a checkpoint of this run needs about "
                           f"{need / 2**20:.0f} MiB (two in flight), {free / 2**20:.0f} MiB are free")


def train(cfg: TrainConfig, log: Callable[[str], None] = print, hooks: Sequence[Hook] = ()) -> dict:
    """Run training as configured; returns the last evaluation record (plus ``workdir``, ``step``, and
    ``interrupted``/``signal`` when a signal stopped it).

    ``hooks`` run after the standard progress/fetch hooks and before evaluation and checkpointing, each at its
    own cadence. ``cfg.resume`` continues the newest committed checkpoint in the workdir, or starts from step 0
    when there is none (a notice says so): the same command can be repeated after any crash or preemption.
    Raises :class:`~cnnjax.training.NonFiniteLossError` (the last good checkpoint is kept),
    :class:`~cnnjax.checkpoint.StorageError` (unwritable or full disk, failed save) and ``ValueError`` (bad
    input, or a resume whose configuration differs in what changes the computation).
    """
    cfg = C.resolve_defaults(cfg)
    C.validate(cfg)
    workdir = pathlib.Path(cfg.workdir) if cfg.workdir else default_workdir(cfg)
    check_workdir(workdir)
    store = CheckpointStore(workdir / "checkpoints", keep=cfg.keep)
    ok = False
    try:
        result = _train(cfg, workdir, store, log, hooks)
        ok = True
        return result
    finally:
        store.close(raise_errors=ok)


def _train(cfg: TrainConfig, workdir: pathlib.Path, store: CheckpointStore, log: Callable[[str], None],
           hooks: Sequence[Hook]) -> dict:
    steps = store.steps()
    if steps and not cfg.resume:
        raise ValueError(f"--workdir {workdir} already holds a run (checkpoints at steps {steps}); add --resume to "
                         "continue it, or choose a new --workdir")
    resuming = cfg.resume and bool(steps)
    history: list = []
    if resuming:
        history = C.check_resume(workdir / "config.json", cfg)  # before reading data or compiling
    elif cfg.resume:
        log(f"--resume: nothing to continue in {workdir} (no committed checkpoint yet); starting from step 0")
    source = load_source(cfg, log)
    try:
        return _train_on(cfg, workdir, store, log, hooks, source, resuming, history)
    finally:
        source.close()


def _train_on(cfg: TrainConfig, workdir: pathlib.Path, store: CheckpointStore, log: Callable[[str], None],
              hooks: Sequence[Hook], source: cdata.DataSource, resuming: bool, history: list) -> dict:
    metrics_path, is_main = workdir / "metrics.jsonl", jax.process_index() == 0
    info = source.info
    model = build_model(cfg, info)
    models.check_input_size(model, info.image_size)  # before any compile
    trainopts.check_train_size(model, cfg.arch, cfg.train_crop_size, info.image_size, info.channels)
    layer_scales = trainopts.layer_decay_scales(model, cfg.arch, cfg.layer_decay, info.image_size, info.channels)
    steps_per_epoch = source.num_batches("train", cfg.batch_size)
    if resuming:
        C.check_resume_data(workdir / "config.json", info.image_size, info.num_classes, steps_per_epoch,
                            info.channels)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    tx = build_optimizer(cfg, total_steps, steps_per_epoch, layer_scales)

    mesh = parallel.data_mesh()
    replicated, batch_sharding = parallel.shardings(mesh)
    state = initial_state(model, tx, cfg, info, replicated, None if resuming else cfg.init, log)
    ema = ema_of(cfg, steps_per_epoch, total_steps)
    if ema is not None:
        state = jax.jit(TrainState.with_ema, out_shardings=replicated)(state)
    check_free_space(workdir, state, cfg.keep)
    trainable = trainable_of(cfg)
    frozen_modules = None if trainable is None else transfer.frozen_module_predicate(state.params, trainable)
    sums, extra_sums, step, data_state = None, None, 0, None
    if resuming:
        restored, position, step = store.restore(abstract_like(state.as_dict()))
        state, sums, data_state = TrainState.from_dict(restored), position.get("sums"), position.get("data")
        extra_sums = position.get("extra_sums")
        expected = divmod(step, steps_per_epoch)
        if (position.get("epoch"), position.get("batch")) != expected:
            if not (position.get("batch") == 0 and position.get("epoch") == expected[0] + 1):  # old --max-steps end
                raise ValueError(f"--resume: checkpoint {step} was written at epoch {position.get('epoch')}, batch "
                                 f"{position.get('batch')}, but with this data step {step} is epoch {expected[0]}, "
                                 f"batch {expected[1]}: the data differs from the saved run's")
            sums = extra_sums = data_state = None
        if history and history[-1].get("from_step") is None:
            history[-1]["from_step"] = step
        log(f"resumed from {workdir} at step {step} (epoch {expected[0]}, batch {expected[1]})")
    if is_main:  # rows a killed run wrote after its last checkpoint (all of them when there is none) go
        report.truncate_metrics(metrics_path, step)
        report.plot_curves(metrics_path, workdir / "curves.png")
    recorded = run_weights(cfg, source)  # of the image source, before a feature cache replaces it
    if cfg.feature_cache:  # the frozen backbone runs once; the loop below trains the head on its outputs
        from train.feature_cache import cache_features

        source, model = cache_features(model, state, source, cfg.batch_size, cfg.seed, replicated, batch_sharding,
                                       progress=cfg.progress and is_main, log=log)
    train_step, eval_step = jit_steps(model, tx, replicated, batch_sharding, label_smoothing=cfg.label_smoothing,
                                      trainable=trainable, frozen_modules=frozen_modules,
                                      accum_steps=cfg.grad_accum_steps,
                                      lr_schedule=lr_schedule(cfg, total_steps, steps_per_epoch), ema=ema,
                                      augment=batch_augment(cfg, info, log if is_main else None))
    if is_main:
        C.write_config(workdir / "config.json", cfg, history=history, workdir=str(workdir),
                       num_classes=info.num_classes, image_size=info.image_size, channels=info.channels,
                       class_names=list(info.class_names), mean=list(info.mean), std=list(info.std),
                       **recorded,
                       steps_per_epoch=steps_per_epoch,
                       total_steps=total_steps, devices=jax.device_count(), processes=jax.process_count())
    n_params = sum(p.size for p in jax.tree.leaves(state.params))
    if trainable is not None:
        n_train = sum(p.size for p in jax.tree.leaves(transfer.split(state.params, trainable)[0]))
        log(f"transfer {cfg.transfer} from {cfg.init}: {n_train:,} of {n_params:,} parameters train")
    log(f"{cfg.arch}: {n_params:,} parameters | {info.name}: {info.num_train} train / {info.num_val} val, "
        f"{info.num_classes} classes, {info.image_size}x{info.image_size}x{info.channels} | "
        f"{jax.device_count()} device(s) | {total_steps} steps | workdir {workdir}")

    for line in trainopts.describe(cfg, info, layer_scales):
        log(line)

    def on_record(record: dict) -> None:
        log(report.epoch_line(record))

    if ema is not None:
        log(f"EMA of the weights and BN statistics: decay {ema.decay:.6g} every {ema.every} step(s)"
            + (f" (torchvision's adjustment of --ema-decay {cfg.ema_decay:g})" if cfg.ema_adjust else "")
            + "; evaluated as val_*_ema")

    def evaluate_all(s: TrainState) -> dict:
        record = evaluate(s, eval_step, source, cfg.batch_size, batch_sharding, confusion=True)
        if s.ema is not None:
            ema_record = evaluate(s.ema_state(), eval_step, source, cfg.batch_size, batch_sharding)
            record.update({f"{k}_ema": v for k, v in ema_record.items() if k != "val_count"})
        return record

    tensorboard = TensorBoard(workdir, start_step=step) if is_main else None
    evaluation = H.Evaluate(cfg.eval_every, evaluate_all,
                            on_record=([report.MetricsFile(workdir), tensorboard] if is_main else []) + [on_record])
    with StopFlag() as stop, contextlib.ExitStack() as closing:
        if tensorboard is not None:
            closing.callback(tensorboard.close)
            hooks = [*hooks, tensorboard]
        loop = Loop(state, train_step, source_batches(source, cfg.batch_size, data_state), total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, batch_size=cfg.batch_size,
                    to_global=lambda local: parallel.global_batch(local, batch_sharding), sums=sums,
                    extra_sums=extra_sums, should_stop=stop,
                    hooks=[H.FetchMetrics(cfg.log_every), H.Progress(cfg.progress and is_main), *hooks, evaluation,
                           H.Checkpoint(store, cfg.checkpoint_every or steps_per_epoch,
                                        saved=[step] if resuming else [])])
        try:
            loop.run()
            store.wait()  # a failed asynchronous write surfaces here, not after "done"
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; stopping. The last good checkpoint is kept in "
                                     f"{workdir / 'checkpoints'} (steps {store.steps()}); try a lower --lr.") from None
    if is_main and "val_confusion" in evaluation.arrays:
        report.write_confusion(workdir, evaluation.arrays["val_confusion"], info.class_names,
                               {k: evaluation.last[k] for k in ("epoch", "step", "val_top1", "val_count")})
    last_record = evaluation.last or (report.read_jsonl(metrics_path)[-1:] or [{}])[0]  # nothing left to run
    if loop.stopped:
        log(f"stopped by signal {stop.signum} at step {loop.step}; checkpoint saved in {workdir / 'checkpoints'}; "
            f"continue with --resume --workdir {workdir}")
        last_record = {**last_record, "interrupted": True, "signal": stop.signum}
    return {**last_record, "workdir": str(workdir), "step": loop.step}


def main(argv: Sequence[str] | None = None) -> int:
    from train import recipes

    parser = C.build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.arch not in models.names():
        parser.error(models.registry.unknown_name_message(args.arch))
    if args.resume and not args.workdir:
        parser.error("--resume needs --workdir (the run directory to continue)")
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.distributed,
                                    heartbeat_timeout=args.heartbeat_timeout)
    try:
        cfg = recipes.compose(args, recipes.given_flags(parser, argv))
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    compile_cache.configure(cfg.compile_cache)
    if cfg.benchmark:
        from train.benchmark import benchmark

        return C.main_exit(lambda: benchmark(cfg, steps=cfg.benchmark_steps) and 0)
    return C.main_exit(lambda: C.exit_code(train(cfg)))


if __name__ == "__main__":
    sys.exit(main())
