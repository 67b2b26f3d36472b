"""Every option of a training run, declared once.

Each field of :class:`TrainConfig` is declared with :func:`option`: its default, help text, command-line flag,
choices and range check. From that one declaration come the argument parser (:func:`build_parser`,
:func:`add_arguments`, also used by ``train.evaluate`` for the options it shares), the defaults, the
validation (:func:`validate`) and the run's ``config.json`` (:func:`to_json`). ``None`` means "the default for
this architecture, optimizer and dataset" (:func:`resolve_defaults`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import pathlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp

from cnnjax import data as cdata
from cnnjax import models, transfer
from cnnjax.ops import CONV_IMPLS
from cnnjax.ops.autotune import MODES as AUTOTUNE_MODES
from cnnjax.training import optim, parallel
from cnnjax.training.loop import NonFiniteLossError
from cnnjax.weights.torchvision import torchvision_init
from train.report import write_atomic

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
#: ``--zero-init-residual``; a ``config.json`` written before it had a boolean (:data:`LEGACY_ZERO_INIT`).
ZERO_INIT_MODES = ("auto", "on", "off")
LEGACY_ZERO_INIT = {True: "on", False: "off"}
#: Exit codes of the CLIs: 0 done; 2 bad input (nothing was run); 3 non-finite loss (the last good checkpoint is
#: kept); 4 storage (workdir unwritable or full, a checkpoint write failed; the last good one is kept);
#: 128 + N stopped by signal N after saving (130 SIGINT, 143 SIGTERM: "not finished, resume me").
#: 5 another process of a multi-process run was lost (the last committed checkpoint is intact).
EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_STORAGE, EXIT_LOST_PEER = 2, 3, 4, 5
EXIT_CODES_HELP = ("exit codes: 0 done; 2 bad input; 3 non-finite loss (the last good checkpoint is kept); "
                   "4 storage error (unwritable or full workdir, failed checkpoint write; the last good checkpoint "
                   "is kept); 5 another process of a multi-process run was lost (restart all with --resume); "
                   "130/143 stopped by SIGINT/SIGTERM after saving a checkpoint (run the same command with --resume "
                   "to continue)")


def option(default: Any, help: str, *, type: Callable | None = None, choices: Iterable | Callable | None = None,
           check: Callable[[Any], bool] | None = None, must: str = "", flag: str | None = None,
           group: str | None = None, metavar: str | None = None, negate: str | None = None,
           aliases: dict[str, Any] | None = None, saved: bool = True, resumable: bool = False,
           repeat: bool = False) -> Any:
    """A :class:`TrainConfig` field with everything the parser and the validation need.

    ``choices`` (a tuple, or a function returning one) and ``check`` (a predicate; ``must`` says what it
    requires, e.g. ``"> 0"``) validate a set value; ``flag`` overrides ``--field-name``; a boolean that is on by
    default is turned off by ``negate`` (e.g. ``--no-progress``); ``aliases`` maps further flags without a
    value to the value they set (``{"--no-zero-init-residual": "off"}``, kept for old command lines);
    ``saved=False`` keeps a process setting (multi-host addresses, benchmark mode) out of ``config.json``;
    ``resumable=True`` marks a setting that may differ when a run is resumed (logging and checkpoint cadence,
    ``--epochs``/``--max-steps`` to extend it); any other saved field must be the same (:func:`check_resume`).
    ``repeat=True``: a repeatable flag collecting its values into a tuple (``--model-opt``).
    """
    meta = {"help": help, "type": type, "choices": choices, "check": check, "must": must, "flag": flag,
            "group": group, "metavar": metavar, "negate": negate, "aliases": dict(aliases or {}), "saved": saved,
            "resumable": resumable, "repeat": repeat}
    return dataclasses.field(default=default, metadata=meta)


positive = (lambda v: v > 0), "> 0"
non_negative = (lambda v: v >= 0), ">= 0"
at_least_1 = (lambda v: v >= 1), ">= 1"
unit_interval = (lambda v: 0 <= v < 1), "in [0, 1)"


#: The --help group of --layer-decay, --ra-reps, --train-crop-size, --val-resize-size.
TRAIN_OPTS_GROUP = "fine-tuning, repeated augmentation, train/val sizes (torchvision v2, timm)"


def _check(pair: tuple[Callable, str]) -> dict:
    return {"check": pair[0], "must": pair[1]}


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run (``config.json`` in the run directory)."""

    arch: str = option("resnet50", "architecture", choices=models.names, metavar="NAME")
    config: str | None = option(None, "start from the settings in this file: a run's config.json, a JSON object "
                                      "or a Python file with get_config(); flags given override it",
                                metavar="FILE", saved=False)
    recipe: str | None = option(None, "a published training recipe: torchvision-v1, torchvision-v2 (flag by flag: "
                                      "python -m train.recipes); --config and flags override it", metavar="NAME")
    dataset: str = option(cdata.DEFAULT, "one of: " + ", ".join(cdata.DATASETS))
    data_dir: str | None = option(None, "TFDS data dir (else $TFDS_DATA_DIR); base of folder: paths", resumable=True)
    image_size: int | None = option(None, "input side in pixels (default: the dataset's; folder: the images' "
                                          "median size, within what --arch takes)", type=int, **_check(at_least_1))
    data_workers: int | None = option(None, "folder: and ArrayRecord tfds: Grain decoding processes (default "
                                            "$CNNJAX_DATA_WORKERS or 0: threads of this process)", type=int,
                                      **_check(non_negative), resumable=True)
    epochs: int | None = option(None, "default 10", type=int, **_check(at_least_1), resumable=True)
    max_steps: int | None = option(None, "stop after this many steps (overrides --epochs)", type=int,
                                   **_check(at_least_1), resumable=True)
    batch_size: int = option(64, "global batch size (all devices)", **_check(at_least_1))
    optimizer: str = option("sgd", "optimizer", choices=optim.OPTIMIZERS)
    lr: float | None = option(None, "peak learning rate (sgd: 0.1 x batch/256; adamw: 1e-3)", type=float,
                              **_check(positive))
    momentum: float = option(0.9, "SGD momentum", **_check(unit_interval))
    nesterov: bool = option(True, "classic momentum instead of Nesterov's (torchvision's references)",
                            negate="--no-nesterov")
    weight_decay: float | None = option(None, "sgd: 5e-5; adamw: 0.05 (on the parameters --decay-params names)",
                                        type=float, **_check(non_negative))
    decay_params: str = option("kernels", "parameters that get weight decay: kernels (never biases or norms), all "
                                          "(PyTorch's default), no-norms (torchvision's --norm-weight-decay 0)",
                               choices=optim.DECAY_PARAMS)
    warmup_epochs: float = option(1.0, "linear warmup to --lr over this many epochs", **_check(non_negative))
    warmup_start_factor: float = option(0.0, "the warmup starts at this fraction of --lr (torchvision's "
                                             "--lr-warmup-decay)", **_check(unit_interval))
    schedule: str = option("cosine", "learning-rate schedule after the warmup: cosine (to --lr-min), step (x "
                                     "--lr-gamma every --lr-step-size epochs), multistep (x --lr-gamma at each of "
                                     "--lr-milestones), linear (to --lr-min), constant", choices=optim.SCHEDULES)
    lr_step_size: float = option(30.0, "step: epochs between decays", **_check(positive))
    lr_gamma: float = option(0.1, "step/multistep: factor of each decay", **_check(positive))
    lr_milestones: str | None = option(None, "multistep: comma-separated epochs after the warmup, e.g. 30,60,80",
                                       metavar="EPOCHS")
    lr_min: float = option(0.0, "cosine/linear: the final learning rate", **_check(non_negative))
    layer_decay: float = option(1.0, "layer-wise learning-rate decay for fine-tuning (timm's --layer-decay): layer "
                                     "group i of G (the stem 0, then each block, the head G-1) learns at lr x "
                                     "RATE ** (G-1-i); 1 = off", group=TRAIN_OPTS_GROUP, metavar="RATE",
                                **_check(((lambda v: 0 < v <= 1), "in (0, 1] (1 = off)")))
    ra_reps: int = option(1, "repeated augmentation (torchvision's --ra-sampler --ra-reps): each train image N "
                             "times per epoch, with different crops, on different devices; an epoch keeps its "
                             "number of samples (so it holds about 1/N of the images)", group=TRAIN_OPTS_GROUP,
                          metavar="N", **_check(at_least_1))
    train_crop_size: int | None = option(None, "tfds:/folder: train images are random-resized-cropped to this side "
                                               "(torchvision's --train-crop-size; default --image-size); val stays "
                                               "at --image-size", type=int, group=TRAIN_OPTS_GROUP, metavar="S",
                                         **_check(at_least_1))
    val_resize_size: int | None = option(None, "tfds:/folder: the shorter side val images are resized to before "
                                               "the centre crop of --image-size (torchvision's --val-resize-size; "
                                               "default --image-size / 0.875)", type=int, group=TRAIN_OPTS_GROUP,
                                         metavar="S", **_check(at_least_1))
    clip_grad_norm: float | None = option(None, "clip the gradient's global L2 norm to this before the update",
                                          type=float, **_check(positive))
    grad_accum_steps: int = option(1, "split each --batch-size batch into this many micro-batches (summed "
                                      "gradients, one update; BatchNorm statistics per micro-batch)",
                                   **_check(at_least_1))
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights and BN statistics "
                                           "with this decay (torchvision: 0.99998), evaluated and checkpointed "
                                           "beside them", type=float, **_check(unit_interval))
    ema_every: int = option(32, "steps between EMA updates (torchvision's --model-ema-steps)", **_check(at_least_1))
    ema_adjust: bool = option(True, "use --ema-decay as given instead of torchvision's adjustment to batch size, "
                                    "--ema-every and epochs", negate="--no-ema-adjust")
    label_smoothing: float = option(0.0, "label smoothing of the cross entropy", **_check(unit_interval))
    augment: str = option("default", "per-image augmentation: none (no random crop either), default (the dataset's "
                                     "own: shifts for digits/MNIST-like sets and shapes, never a flip there; crop + "
                                     "flip for natural images), flip, randaugment[:N,M], trivialaugment, "
                                     "autoaugment[:imagenet], rotate[:DEG] (uniform in +-DEG, default 15), rot180 "
                                     "(180 degrees with p=1/2) (each after the dataset's crop and flip); on the "
                                     "device, keyed by (seed, step)", group="augmentation", metavar="POLICY")
    mixup: float = option(0.0, "MixUp with lambda ~ Beta(ALPHA, ALPHA) per batch (torchvision v2: 0.2; 0 = off)",
                          group="augmentation", metavar="ALPHA", **_check(non_negative))
    cutmix: float = option(0.0, "CutMix with lambda ~ Beta(ALPHA, ALPHA) per batch (torchvision v2: 1.0; 0 = off); "
                                "with --mixup too, one of the two per batch", group="augmentation",
                           metavar="ALPHA", **_check(non_negative))
    mix_switch_prob: float = option(0.5, "with both --mixup and --cutmix: probability that a batch gets CutMix",
                                    group="augmentation", check=lambda v: 0 <= v <= 1, must="in [0, 1]")
    random_erasing: float = option(0.0, "RandomErasing probability per image (torchvision v2: 0.1), after "
                                        "normalisation, filled with 0 (the mean colour)", group="augmentation",
                                   metavar="P", check=lambda v: 0 <= v <= 1, must="in [0, 1]")
    rrc_scale: str | None = option(None, "random-resized-crop area range LO,HI of the train images (torchvision's "
                                         "scale; default 0.08,1 above 64 px, pad-and-crop at and below); folder: "
                                         "and tfds: only", group="augmentation", metavar="LO,HI")
    precision: str = option("fp32", "bf16: bfloat16 compute, float32 parameters and loss",
                            choices=tuple(PRECISIONS))
    seed: int = option(0, "seed of initialisation, data order, augmentation and dropout")
    workdir: str | None = option(None, "run directory (default checkpoints/<arch>-<dataset>-<time>)", resumable=True)
    resume: bool = option(False, "continue the run in --workdir from its last checkpoint", resumable=True)
    checkpoint_every: int | None = option(None, "steps between checkpoints (default: 1 epoch); at most an epoch: "
                                                "also at every epoch end", type=int,
                                          **_check(at_least_1), resumable=True)
    keep: int = option(3, "checkpoints kept", **_check(at_least_1), resumable=True)
    eval_every: int = option(1, "epochs between evaluations", **_check(at_least_1), resumable=True)
    log_every: int = option(10, "steps between host metric fetches", **_check(at_least_1), resumable=True)
    conv_impl: str = option("fast", "convolution algorithm (auto: the fastest per layer, measured once and cached)",
                            choices=CONV_IMPLS)
    autotune: str | None = option(None, "--conv-impl auto: measure and cache (default; $CNNJAX_AUTOTUNE) or a "
                                        "fixed rule", choices=AUTOTUNE_MODES)
    compile_cache: str = option("auto", "JAX's persistent compilation cache folder: the same model, shapes and "
                                        "flags compile once, later runs load the program (auto: "
                                        "$JAX_COMPILATION_CACHE_DIR, else $CNNJAX_CACHE/jax or ~/.cache/cnnjax/jax; "
                                        "off: none)", aliases={"--no-compile-cache": "off"}, metavar="DIR",
                                saved=False)
    model_opt: tuple[str, ...] = option((), "an architecture option KEY=VALUE, repeatable; VALUE is a Python "
                                        "literal (0.2, True, (64, 32), 'relu'; a bare word is a string): e.g. "
                                        "--model-opt dropout=0.2 --model-opt antialias=True; a wrong KEY lists the "
                                        "architecture's options", repeat=True, metavar="KEY=VALUE")
    zero_init_residual: str = option("auto", "start the last BN scale of each residual block at zero (Goyal et al. "
                                             "2017): auto = per architecture (on for the ImageNet ResNets; off for "
                                             "the CIFAR ResNets, where it stalls training, and the _plain nets, "
                                             "which have no shortcut), on, off",
                                     choices=ZERO_INIT_MODES, aliases={"--no-zero-init-residual": "off"},
                                     resumable=True)
    init: str | None = option(None, "start from a cnnjax run directory/checkpoint or torchvision:ARCH[.WEIGHTS] "
                              "(WEIGHTS: a torchvision enum, e.g. IMAGENET1K_V2, or DEFAULT; default IMAGENET1K_V1)",
                              group="transfer learning", resumable=True)
    init_match: str = option("strict", "how --init (a cnnjax run or checkpoint) fills the model: strict (every "
                                       "leaf but the head must match) or partial (copy the leaves whose path and "
                                       "shape match, keep the rest freshly initialised: a deep net from a shallow "
                                       "one, as VGG trained its deeper nets)", choices=transfer.MATCH_MODES,
                             group="transfer learning", resumable=True)
    transfer: str | None = option(None, "finetune | linear-probe | freeze:<regex> (freeze parameters whose path "
                                        "matches)", group="transfer learning", metavar="MODE")
    backbone_lr_mult: float = option(1.0, "finetune: learning rate multiplier for every parameter outside the "
                                          "head", group="transfer learning", **_check(non_negative))
    feature_cache: bool = option(False, "linear-probe: run the frozen backbone once and train the head on the "
                                        "cached features (un-augmented; no dropout before the head)",
                                 group="transfer learning")
    progress: bool = option(True, "no progress bar", negate="--no-progress", resumable=True)
    benchmark: bool = option(False, "time the train step on synthetic data; prints one JSON line", saved=False)
    benchmark_steps: int = option(10, "steps timed by --benchmark", saved=False, **_check(at_least_1))
    distributed: bool = option(False, "jax.distributed.initialize() with auto-detection",
                               group="multi-host (JAX's runtime)", saved=False)
    coordinator: str | None = option(None, "host:port of process 0", group="multi-host (JAX's runtime)",
                                     saved=False)
    num_processes: int | None = option(None, "number of processes", type=int, group="multi-host (JAX's runtime)",
                                       saved=False)
    process_id: int | None = option(None, "this process's index", type=int, group="multi-host (JAX's runtime)",
                                    saved=False)
    heartbeat_timeout: int = option(20, "seconds after which JAX's coordination service declares a silent process "
                                        "lost and the others stop (JAX's own default is 100)",
                                    group="multi-host (JAX's runtime)", saved=False, **_check(at_least_1))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["negate"] or f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _choices(f: dataclasses.Field) -> tuple | None:
    c = f.metadata["choices"]
    return tuple(c()) if callable(c) else (tuple(c) if c is not None else None)


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str] | None = None,
                  defaults: dict[str, Any] | None = None, required: Iterable[str] = ()) -> None:
    """Add the flags of the fields ``names`` (default: all) to ``parser``, with ``defaults`` overriding the
    declared ones (``train.evaluate`` evaluates with batches of 100, say) and ``required`` flags."""
    defaults, required, groups = defaults or {}, set(required), {}
    for name in names or FIELDS:
        f = FIELDS[name]
        m, default = f.metadata, defaults.get(name, f.default)
        target = parser
        if m["group"]:
            target = groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        if m["repeat"]:
            target.add_argument(_flag(f), dest=name, action=_AppendTuple, type=str, default=tuple(default),
                                metavar=m["metavar"], help=m["help"])
            continue
        if isinstance(f.default, bool):
            action = "store_false" if m["negate"] else "store_true"
            target.add_argument(_flag(f), dest=name, action=action, default=default, help=m["help"])
            continue
        choices = _choices(f)
        kw: dict[str, Any] = {"dest": name, "help": m["help"], "metavar": m["metavar"]}
        if name in required:
            kw["required"] = True
        else:
            kw["default"] = default
        if choices is not None and name != "arch":  # --arch is checked with a did-you-mean message
            kw["choices"] = choices
        elif name == "arch":
            kw["help"] = f"{m['help']}: " + ", ".join(choices)
        kw["type"] = m["type"] or (type(f.default) if f.default is not None else str)
        target.add_argument(_flag(f), **kw)
        for alias, value in m["aliases"].items():
            target.add_argument(alias, dest=name, action="store_const", const=value, default=argparse.SUPPRESS,
                                help=f"the same as {_flag(f)} {value}")


class _AppendTuple(argparse.Action):
    """A repeatable flag whose values collect into a tuple (the field's type), after its default's items."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest, None) or ()), values))


def build_parser() -> argparse.ArgumentParser:
    """``python -m train.main``'s parser: every :class:`TrainConfig` field."""
    p = argparse.ArgumentParser(prog="python -m train.main",
                                description="Train a zoo architecture and report validation accuracy. With no "
                                            "option beyond --arch it trains on the bundled digits dataset.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=EXIT_CODES_HELP)
    add_arguments(p)
    return p


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of parsed arguments (fields the parser did not have keep their defaults)."""
    values = {k: v for k, v in vars(args).items() if k in FIELDS}
    for name, f in FIELDS.items():
        if f.metadata["repeat"] and name in values:
            values[name] = tuple(values[name] or ())
    return TrainConfig(**values)


#: Options of every architecture that the CLI sets itself (from the data or its own flags), never by --model-opt.
RESERVED_MODEL_OPTS = {"num_classes": "the dataset's classes", "in_channels": "the dataset's channels",
                       "dtype": "--precision", "param_dtype": "--precision", "conv_impl": "--conv-impl",
                       "zero_init_last_bn": "--zero-init-residual"}


#: ``"KEY=VALUE"`` -> ``(KEY, value)`` (:func:`cnnjax.models.registry.parse_option`).
parse_model_opt = models.registry.parse_option


def model_options(arch: str, items: Iterable[str]) -> dict[str, Any]:
    """The ``--model-opt`` items of a run as keyword arguments of ``arch``'s constructor, checked: an unknown or
    reserved key raises ``ValueError`` naming the valid ones, as does a value the model refuses."""
    opts: dict[str, Any] = {}
    for item in items:
        key, value = parse_model_opt(item)
        opts[key] = value
    if not opts:
        return opts
    valid = sorted(set(models.registry.options(arch)) - set(RESERVED_MODEL_OPTS))
    for key in opts:
        if key in RESERVED_MODEL_OPTS:
            raise ValueError(f"--model-opt {key}: set by {RESERVED_MODEL_OPTS[key]}, not by --model-opt; "
                             f"{arch}'s options: {', '.join(valid)}")
        if key not in valid:
            import difflib

            near = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(f"--model-opt {key}: {arch} has no option {key!r}{hint}; its options: "
                             f"{', '.join(valid)}")
    try:
        models.create(arch, **opts)  # the module's own checks (dataclass fields, __post_init__)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--model-opt: {arch} refuses {opts}: {err}") from None
    return opts


def canonical_model_opt(items: Iterable[str]) -> list[str]:
    """``--model-opt`` items as ``config.json`` keeps them: one per key (the last wins), sorted, the value
    written back as a Python literal, so equal settings compare equal on ``--resume``."""
    opts = dict(parse_model_opt(item) for item in items)
    return [f"{k}={v!r}" for k, v in sorted(opts.items())]


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill the per-optimizer defaults: SGD lr 0.1 x batch/256 (Goyal et al.), wd 5e-5; AdamW lr 1e-3, wd 0.05;
    10 epochs."""
    cfg = dataclasses.replace(cfg)
    if cfg.lr is None:
        cfg.lr = 0.1 * cfg.batch_size / 256 if cfg.optimizer == "sgd" else 1e-3
    if cfg.weight_decay is None:
        cfg.weight_decay = 5e-5 if cfg.optimizer == "sgd" else 0.05
    if cfg.epochs is None:
        cfg.epochs = 10
    return cfg


def check_value(name: str, value: Any) -> None:
    """Raise ``ValueError`` if ``value`` is not valid for the field ``name`` (its choices and range)."""
    f = FIELDS[name]
    if value is None or isinstance(f.default, bool):
        return
    choices = _choices(f)
    if choices is not None and value not in choices:
        if name == "arch":
            raise ValueError(models.registry.unknown_name_message(value))
        raise ValueError(f"unknown {name.replace('_', ' ')} {value!r} ({_flag(f)}); valid choices: "
                         f"{', '.join(map(str, choices))}")
    check = f.metadata["check"]
    if check is not None and (isinstance(value, float) and not math.isfinite(value) or not check(value)):
        raise ValueError(f"{_flag(f)} must be {f.metadata['must']}, got {value}")


def zero_init_last_bn(arch: str, mode: str) -> bool:
    """Whether ``--zero-init-residual mode`` starts ``arch`` with the last BN scale of each residual block at
    zero: ``auto`` follows the architecture's record (:attr:`cnnjax.models.ArchRecord.zero_init_residual`), ``on``
    and ``off`` force it; never for an architecture without the ``zero_init_last_bn`` option."""
    if "zero_init_last_bn" not in models.registry.options(arch):
        return False
    return models.record(arch).zero_init_residual if mode == "auto" else mode == "on"


def check_zero_init(arch: str, mode: str) -> None:
    """Raise ``ValueError`` (one line) if ``--zero-init-residual on`` cannot apply to ``arch``: it has no
    residual blocks, or no shortcuts (the model refuses it)."""
    if mode != "on":
        return
    if "zero_init_last_bn" not in models.registry.options(arch):
        raise ValueError(f"--zero-init-residual on: {arch} has no residual blocks whose last BN could start at zero; "
                         "use auto or off")
    try:
        models.create(arch, zero_init_last_bn=True)  # the model's own check, without building anything
    except ValueError as err:
        raise ValueError(f"--zero-init-residual on: {arch}: {err}; use auto or off") from None


def validate(cfg: TrainConfig) -> None:
    """Reject bad values early, before any data is read or anything compiled, naming the valid choices."""
    for name in FIELDS:
        check_value(name, getattr(cfg, name))
    check_zero_init(cfg.arch, cfg.zero_init_residual)
    if cfg.recipe is not None:
        from train.recipes import recipe

        recipe(cfg.recipe)  # raises on an unknown name
    model_options(cfg.arch, cfg.model_opt)
    parallel.check_batch_size(cfg.batch_size)
    if cfg.transfer is not None:
        transfer.mode_predicate(cfg.transfer)  # raises on an unknown mode
        if cfg.init is None:
            raise ValueError("--transfer needs --init (a cnnjax run directory or torchvision:ARCH)")
    if cfg.init_match != "strict" and (cfg.init is None or torchvision_init(cfg.init, cfg.arch) is not None):
        raise ValueError(f"--init-match {cfg.init_match} needs --init with a cnnjax run directory or checkpoint")
    if cfg.backbone_lr_mult != 1.0 and cfg.transfer not in (None, "finetune"):
        raise ValueError("--backbone-lr-mult applies to --transfer finetune only")
    if cfg.schedule == "multistep" and not optim.parse_milestones(cfg.lr_milestones):
        raise ValueError("--schedule multistep needs --lr-milestones (epochs, e.g. 30,60,80)")
    optim.parse_milestones(cfg.lr_milestones)
    if cfg.grad_accum_steps > 1:
        import jax

        parts = cfg.grad_accum_steps * jax.device_count()
        if cfg.batch_size % parts:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum-steps "
                             f"{cfg.grad_accum_steps} x {jax.device_count()} device(s) = {parts}")
    if cfg.feature_cache and cfg.transfer != "linear-probe":
        raise ValueError("--feature-cache applies to --transfer linear-probe only")
    augmentation_of(cfg, orientation_sensitive=False)  # raises on a bad --augment, --mixup, ...
    rrc_scale(cfg.rrc_scale)
    if cfg.feature_cache:
        from cnnjax import augment

        if augment.parse_policy(cfg.augment).name not in ("default", "none") or cfg.mixup or cfg.cutmix \
                or cfg.random_erasing or cfg.rrc_scale:
            raise ValueError("--feature-cache trains the head on features cached once, without augmentation: drop "
                             "--augment/--mixup/--cutmix/--random-erasing/--rrc-scale, or drop --feature-cache")
    check_train_opts(cfg)
    torchvision_init(cfg.init, cfg.arch)  # raises on another arch or unknown weights, naming the valid ones


def check_train_opts(cfg: TrainConfig) -> None:
    """--ra-reps, --train-crop-size, --val-resize-size against the dataset (before any data is read)."""
    sizes = [f for f in ("train_crop_size", "val_resize_size") if getattr(cfg, f) is not None]
    if sizes and not cdata.takes_eval_preprocess(cfg.dataset):
        raise ValueError(f"{_flag(FIELDS[sizes[0]])} applies only to the tfds: and folder: datasets (decoded "
                         f"image files), not --dataset {cfg.dataset}")
    if cfg.ra_reps > 1 and cfg.dataset.strip().partition(":")[0] == "synthetic":
        raise ValueError("--ra-reps: the synthetic dataset never shows an example twice; nothing to repeat")
    for name in ("ra_reps", "train_crop_size"):
        if cfg.feature_cache and getattr(cfg, name) not in (None, 1):
            raise ValueError(f"{_flag(FIELDS[name])} does not apply to --feature-cache (the cached features are "
                             "computed once, un-augmented, at --image-size)")
    if cfg.val_resize_size is not None and cfg.image_size is not None and cfg.val_resize_size < cfg.image_size:
        raise ValueError(f"--val-resize-size {cfg.val_resize_size} is smaller than the val crop --image-size "
                         f"{cfg.image_size}: the crop would be zero-padded")


def rrc_scale(text: str | None) -> tuple[float, float] | None:
    """``--rrc-scale LO,HI`` as a pair; ``ValueError`` unless 0 < LO <= HI <= 1."""
    if text is None:
        return None
    parts = str(text).split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--rrc-scale must be LO,HI (two numbers, e.g. 0.08,1), got {text!r}") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"--rrc-scale {text}: need 0 < LO <= HI <= 1 (fractions of the image's area)")
    return lo, hi


def augmentation_of(cfg: TrainConfig, orientation_sensitive: bool):
    """The run's on-device augmentation (:class:`cnnjax.augment.Augmentation`) for a dataset with this
    orientation flag; ``--feature-cache`` runs have none (the cached features are not images)."""
    from cnnjax import augment

    if cfg.feature_cache:
        return augment.Augmentation()
    return augment.train_augmentation(cfg.augment, orientation_sensitive, mixup=cfg.mixup, cutmix=cfg.cutmix,
                                      random_erasing=cfg.random_erasing, switch_prob=cfg.mix_switch_prob)


def train_view(cfg: TrainConfig) -> cdata.TrainView:
    """How the host makes the run's train images: the dataset's random crop unless ``--augment none``, with
    ``--rrc-scale``."""
    from cnnjax import augment

    return cdata.TrainView(crop=augment.host_crop(cfg.augment), rrc_scale=rrc_scale(cfg.rrc_scale))


def to_json(cfg: TrainConfig, **derived: Any) -> dict:
    """What ``config.json`` holds: every saved field, then ``derived`` values (class count, steps, devices)."""
    saved = {k: v for k, v in dataclasses.asdict(cfg).items() if FIELDS[k].metadata["saved"]}
    saved["model_opt"] = canonical_model_opt(cfg.model_opt)
    return {**saved, **derived}


def check_resume(path: pathlib.Path, cfg: TrainConfig, step: int | None = None) -> list[dict]:
    """The resume history to record, after checking ``cfg`` against the run's saved ``config.json``.

    Raises ``ValueError`` listing every saved field that differs and changes the computation (architecture,
    data, batch size, seed, precision, optimizer settings, ...). Fields declared ``resumable`` may differ;
    those changes are appended to the saved ``resume_history`` (returned). Changing ``--epochs`` or
    ``--max-steps`` extends (or shortens) the run: the learning-rate schedule is recomputed for the new total.
    ``--zero-init-residual`` only decides the fresh initialisation, which a resume replaces with the checkpoint:
    the boolean of an older ``config.json`` reads as ``on``/``off``, and two values that give ``arch`` the same
    initialisation (``on`` and ``auto`` on resnet50) are equal.
    An unset ``--image-size`` is compared with the data's size once the data is loaded (:func:`check_resume_data`).
    """
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if isinstance(saved.get("zero_init_residual"), bool):  # written before --zero-init-residual auto|on|off
        saved["zero_init_residual"] = LEGACY_ZERO_INIT[saved["zero_init_residual"]]
    now = to_json(cfg)
    changed, forbidden = {}, []
    for name, value in now.items():
        if name == "resume" or name not in saved or saved[name] == value:
            continue
        if name == "zero_init_residual" and saved.get("arch") == cfg.arch and _same_init(cfg.arch, saved[name], value):
            continue  # e.g. the old boolean true and auto on resnet50: the same initialisation
        if name == "image_size" and value is None:  # saved is the size the data gave: checked after loading it
            continue
        if FIELDS[name].metadata["resumable"]:
            changed[name] = [saved[name], value]
        else:
            forbidden.append(f"{_flag(FIELDS[name])}: saved {saved[name]!r}, now {value!r}")
    if forbidden:
        raise ValueError(f"--resume: the configuration differs from {path} in what changes the computation: "
                         f"{'; '.join(forbidden)}. Pass the saved values, or start a new --workdir")
    history = list(saved.get("resume_history", []))
    if changed:
        history.append({"from_step": step, "changed": changed})
    return history


def _same_init(arch: str, saved: Any, now: str) -> bool:
    try:
        return zero_init_last_bn(arch, saved) == zero_init_last_bn(arch, now)
    except Exception:  # noqa: BLE001 - an unknown architecture or value: the plain comparison decides
        return False


def check_resume_data(path: pathlib.Path, image_size: int, num_classes: int, steps_per_epoch: int,
                      channels: int | None = None) -> None:
    """Raise ``ValueError`` if the resumed run's data is not what the saved run trained on: another image size,
    class count, channel count or number of steps per epoch (other data under ``--data-dir``, another split
    size...)."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("image_size") not in (None, image_size):
        raise ValueError(f"--resume: the run in {path.parent} trained at {saved['image_size']}x{saved['image_size']}"
                         f" but the data now gives {image_size}x{image_size}; pass --image-size {saved['image_size']}")
    for key, now in (("num_classes", num_classes), ("steps_per_epoch", steps_per_epoch), ("channels", channels)):
        if saved.get(key) not in (None, now):
            raise ValueError(f"--resume: the run in {path.parent} had {key.replace('_', ' ')} {saved[key]}, the data "
                             f"now gives {now}: it is not the data this run trained on")


def write_config(path: pathlib.Path, cfg: TrainConfig, history: list | None = None, **derived: Any) -> None:
    """Write ``config.json`` atomically (temporary file + rename)."""
    record = to_json(cfg, **derived)
    if history:
        record["resume_history"] = history
    write_atomic(path, json.dumps(record, indent=2))


def exit_code(result: dict) -> int:
    """0 for a finished run, 128 + N for one stopped by signal N (after saving)."""
    return 128 + int(result["signal"]) if result.get("interrupted") else 0


class _NoOrbaxLogs(logging.Filter):
    """Drops orbax's own log records (a failed background write is logged there with a traceback; the CLI
    reports it once, as a :class:`~cnnjax.checkpoint.StorageError` line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname


def quiet_logs() -> None:
    """The CLI's logging: no tracebacks or info lines from orbax's background threads on stderr."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _NoOrbaxLogs) for f in absl.filters):
        absl.addFilter(_NoOrbaxLogs())


def main_exit(fn: Callable[[], Any]) -> int:
    """Run ``fn`` mapping the known failures to one-line messages and exit codes (no traceback); an ``int``
    that ``fn`` returns is the exit code."""
    from cnnjax.checkpoint import StorageError
    from cnnjax.data.base import MissingDependencyError

    quiet_logs()
    parallel.ENDING.clear()
    parallel.watch_peers(_exit_lost_peer)
    try:
        code = fn()
    except NonFiniteLossError as err:
        code, message = EXIT_NONFINITE, str(err)
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM while the first one's checkpoint was being prepared
        parallel.ENDING.set()
        print("error: interrupted again: stopped at once; the committed checkpoints are kept (resume with "
              "--resume)", file=sys.stderr)
        return 130
    except Exception as err:
        try:
            lost = parallel.lost_processes() if not isinstance(err, ValueError | TypeError | ImportError) else []
        except Exception:  # noqa: BLE001 - the coordination service is gone too
            lost = []
        if lost:  # a collective or checkpoint barrier failed because a process is gone
            _exit_lost_peer(lost)
        if not isinstance(err, StorageError | ValueError | FileNotFoundError | TypeError | MissingDependencyError):
            parallel.ENDING.set()
            raise
        code, message = (EXIT_STORAGE if isinstance(err, StorageError) else EXIT_BAD_INPUT), str(err)
    else:
        message = None
        code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    if message is not None:
        print(f"error: {message}", file=sys.stderr, flush=True)
    _end_together(timeout_s=300.0 if message is None else 20.0)
    return code


def _end_together(timeout_s: float) -> None:
    """The ordered multi-process shutdown (:func:`cnnjax.training.parallel.sync_end`); a peer that does not
    arrive within ``timeout_s`` is reported in one line rather than a traceback."""
    try:
        parallel.sync_end(timeout_s)
    except Exception as err:  # noqa: BLE001
        print(f"warning: not every process reached the end within {timeout_s:.0f} s ({str(err)[:160]})",
              file=sys.stderr)


def _exit_lost_peer(lost: list[int]) -> None:
    """One line on stderr, then exit at once with :data:`EXIT_LOST_PEER` (the main thread may be stuck in a
    collective with the lost process, so no clean-up is attempted; committed checkpoints are complete)."""
    import jax

    if parallel.ENDING.is_set():
        return
    print(f"error: lost process(es) {', '.join(map(str, lost))} of {jax.process_count()} (no heartbeat for "
          f"--heartbeat-timeout seconds); stopping. Committed checkpoints are intact: restart every process with "
          f"the same command and --resume", file=sys.stderr, flush=True)
    os._exit(EXIT_LOST_PEER)

