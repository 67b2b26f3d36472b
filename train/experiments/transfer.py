"""``python -m train.experiments transfer``: which transfer mode overfits, and which finds the better solution?

A CIFAR ResNet-20 is pretrained on a source that is larger than the target and different from it: ``mnist5k``
(4,000 training images of MNIST, all ten digits, 28x28 pen strokes resized to 32x32). The target is the bundled
UCI ``digits`` 5–9 (8x8 block counts upsampled to 32x32: other writers, another sensor), learnt from 5 or 50
labelled images per class, in six modes, each a run of the one training core:

* ``from scratch``: no pretraining;
* ``linear probe``: the pretrained backbone frozen (BatchNorm on its running statistics), a new head trained;
* ``freeze stem+stage1``: the stem and the first stage frozen, the rest trained;
* ``fine-tune``: everything trained from the pretrained weights (new head);
* ``fine-tune, backbone lr x0.1``: the same with ``--backbone-lr-mult 0.1``;
* ``LP-FT`` (Kumar et al. 2022): fine-tune everything starting from the *linear probe's* run (its trained head
  kept), so the first fine-tuning steps do not push the features around to fit a random head.

Each mode and size gets its AdamW learning rate from a sweep on the first seed; the other seeds train at the best
one. Measured on every run's final weights: val top-1 (every val image of digits 5–9), the top-1 on two out-of-
distribution copies of the val set (shifted by ``ood_shift`` pixels right and down with zero fill, beyond the
2-pixel training shifts; and with Gaussian pixel noise of standard deviation ``ood_noise``, clipped to [0, 1]), and
the train top-1 on the clean (un-augmented) training images, whose difference to val top-1 is the overfitting gap.
Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/transfer.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "transfer"
ARCH = "resnet20"
SOURCE = "mnist5k"
TARGET = "digits:classes=5+6+7+8+9"
TARGET_CLASSES = 5
NUM_SOURCE_TRAIN = 4000


@dataclasses.dataclass(frozen=True)
class Mode:
    key: str
    label: str
    transfer: str | None  # the --transfer mode (None: from scratch)
    init: str  # "none", "pretrain" (the source run) or "probe" (this seed's linear-probe run: LP-FT)
    backbone_lr_mult: float = 1.0


SCRATCH = Mode("scratch", "from scratch", None, "none")
PROBE = Mode("probe", "linear probe", "linear-probe", "pretrain")
FREEZE = Mode("freeze", "freeze stem+stage1", "freeze:^(stem|stage1)", "pretrain")
FINETUNE = Mode("finetune", "fine-tune", "finetune", "pretrain")
FINETUNE_SLOW = Mode("finetune-bb0.1", "fine-tune, backbone lr x0.1", "finetune", "pretrain", 0.1)
LPFT = Mode("lpft", "LP-FT", "finetune", "probe")
MODES = (SCRATCH, PROBE, FREEZE, FINETUNE, FINETUNE_SLOW, LPFT)


@dataclasses.dataclass(frozen=True)
class Budget:
    modes: tuple[Mode, ...]
    sizes: tuple[int, ...]  # labelled training images per target class
    steps: int  # optimizer steps of every target run
    lrs: tuple[float, ...]  # swept per mode and size on the first seed (the modes that train the backbone)
    probe_lrs: tuple[float, ...]  # the same for the linear probe (a head alone wants larger rates)
    seeds: tuple[int, ...]
    pretrain_steps: int
    batch_size: int = 25
    warmup_steps: int = 10
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    ood_shift: int = 4  # pixels at 32x32, right and down
    ood_noise: float = 0.25  # std of the Gaussian pixel noise, raw pixels in [0, 1]


BUDGETS = {
    "smoke": Budget((PROBE, LPFT), (5,), 3, (1e-3,), (1e-2,), (0,), 3, warmup_steps=1, pretrain_batch=32),
    # measured on the 2-core CPU: ~15 s a run (~5 s a probe), pretraining ~100 s. A sweep over (1e-3, 3e-3) for
    # every mode, then (3e-3, 1e-2, 3e-2) for the probe, put the probe's best at the grid's top each time (train
    # top-1 0.87 at 50/class): a head alone on frozen features wants far larger rates, so it gets its own grid
    "default": Budget(MODES, (5, 50), 100, (1e-3, 3e-3), (1e-2, 3e-2, 1e-1, 3e-1), (0, 1, 2), 300),
    "full": Budget(MODES, (5, 10, 50, 100), 500, (3e-4, 1e-3, 3e-3), (1e-2, 3e-2, 1e-1, 3e-1), (0, 1, 2, 3, 4),
                   3000),
}

CLAIM = R.Claim(
    lecture_ru="Рассмотренные подходы можно комбинировать, например заморозить только первые слои, а обучать "
               "остальные и тому подобное. […] Вопрос: В каком режиме обучения модель больше подвержена "
               "переобучению? […] Вопрос: В каком режиме можно найти более хорошее решение задачи, то есть "
               "выбрать выше качество?",
    lecture_en="The approaches can be combined, e.g. freeze only the first layers and train the rest. Question: in "
               "which training mode is the model more prone to overfitting? Question: in which mode can a better "
               "solution be found, i.e. a higher quality?",
    literature="Yosinski et al. 2014 (Fig. 2): fine-tuned transferred features beat both fixed features and "
               "training from scratch, even on a large target set; Kornblith et al. 2019 (Table 2, 12 datasets): "
               "fine-tuning beats a logistic-regression probe on fixed ImageNet features on almost every dataset; "
               "Kumar et al. 2022 (LP-FT, Table 1): linear probe then fine-tune gains ~1% in distribution and ~10% "
               "out of distribution over plain fine-tuning, because fine-tuning from a random head distorts the "
               "pretrained features.",
)


def pretrain_id(budget: Budget) -> str:
    return f"pretrain-{SOURCE}-t{budget.pretrain_steps}-b{budget.pretrain_batch}-lr{budget.pretrain_lr:g}-s0"


def run_id(mode: Mode, size: int, lr: float, budget: Budget, seed: int, probe_lr: float | None = None) -> str:
    """``probe_lr``: LP-FT's, the rate of the linear-probe run it starts from (part of what the run is)."""
    start = "" if probe_lr is None else f"-lp{probe_lr:g}"
    return f"{mode.key}{start}-n{size}-t{budget.steps}-lr{lr:g}-s{seed}"


def pretrain_config(budget: Budget) -> TrainConfig:
    return R.step_config(ARCH, SOURCE, NUM_SOURCE_TRAIN, budget.pretrain_steps, budget.pretrain_batch,
                         budget.pretrain_lr, 0, budget.warmup_steps)


def config(mode: Mode, size: int, lr: float, budget: Budget, seed: int, init: pathlib.Path | None) -> TrainConfig:
    """The target run of ``mode``: ``init`` is the run directory it starts from (None: from scratch)."""
    return R.step_config(ARCH, f"{TARGET},per_class={size}", TARGET_CLASSES * size, budget.steps, budget.batch_size,
                         lr, seed, budget.warmup_steps, init=None if init is None else str(init),
                         transfer=mode.transfer, backbone_lr_mult=mode.backbone_lr_mult)


def train_all(runner: R.Runner, budget: Budget, seeds: tuple[int, ...]) -> dict:
    """Pretrain once, then every (size, mode): the learning-rate sweep on ``seeds[0]``, every seed at the best
    rate. Returns ``{"pretrain": run id, size: {mode key: {"lr", "sweep", "runs": [run ids]}}}``."""
    pre = pretrain_id(budget)
    runner.run(pre, pretrain_config(budget))
    out: dict = {"pretrain": pre}
    for size in budget.sizes:
        out[size] = {}
        for mode in budget.modes:
            probe_lr = out[size][PROBE.key]["lr"] if mode.init == "probe" else None

            def init(seed: int, mode: Mode = mode, size: int = size, probe_lr=probe_lr) -> pathlib.Path | None:
                if mode.init == "none":
                    return None
                if mode.init == "pretrain":
                    return runner.workdir(pre)
                # LP-FT starts from this seed's linear probe at the probe's best rate
                return runner.workdir(run_id(PROBE, size, probe_lr, budget, seed))

            lrs = budget.probe_lrs if mode.transfer == "linear-probe" else budget.lrs
            lr, sweep = R.sweep_lr(runner, config(mode, size, lrs[0], budget, seeds[0], init(seeds[0])), lrs,
                                   seed=seeds[0],
                                   run_id=lambda lr, m=mode, n=size, p=probe_lr: run_id(m, n, lr, budget, seeds[0], p))
            ids = []
            for seed in seeds:
                rid = run_id(mode, size, lr, budget, seed, probe_lr)
                runner.run(rid, config(mode, size, lr, budget, seed, init(seed)))
                ids.append(rid)
            out[size][mode.key] = {"lr": lr, "sweep": sweep, "runs": ids}
    return out


# ---------------------------------------------------------------------------------------------- evaluation


@functools.lru_cache(maxsize=4)
def _logits_fn(num_classes: int):
    """Jitted ``logits(variables, x)`` (NHWC float32 (N, 32, 32, 1) -> (N, K)) of the runs' model."""
    import jax

    from cnnjax import models

    model = models.create(ARCH, num_classes=num_classes, in_channels=1)
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def ood_sets(images, mean: float, std: float, shift: int, noise: float, seed: int = 0) -> dict:
    """Two out-of-distribution copies of normalised NHWC ``images``: ``shifted`` (moved ``shift`` pixels right
    and down, the vacated rows and columns black) and ``noisy`` (Gaussian noise of std ``noise`` added to the raw
    pixels, clipped to [0, 1]); both normalised again with ``mean``/``std``."""
    import numpy as np

    raw = np.asarray(images, np.float32) * std + mean
    moved = np.zeros_like(raw)
    moved[:, shift:, shift:] = raw[:, :raw.shape[1] - shift, :raw.shape[2] - shift]
    noisy = np.clip(raw + np.random.default_rng(seed).normal(0.0, noise, raw.shape).astype(np.float32), 0, 1)
    return {k: ((v - mean) / std).astype(np.float32) for k, v in (("shifted", moved), ("noisy", noisy))}


def eval_sets(budget: Budget, size: int) -> dict:
    """``{"train": clean training images, "val", "shifted", "noisy"}`` of the target at ``size`` per class, each
    ``(images, labels)`` as NumPy arrays."""
    import numpy as np

    from cnnjax import data as cdata

    source = cdata.load(f"{TARGET},per_class={size}")
    (mean,), (std,) = source.info.mean, source.info.std

    def whole(split: str):
        n = source.info.num_train if split == "train" else source.info.num_val
        b = next(iter(source.plain_batches(split, n)))
        return np.asarray(b["image"]), np.asarray(b["label"])

    sets = {"train": whole("train"), "val": whole("val")}
    ood = ood_sets(sets["val"][0], mean, std, budget.ood_shift, budget.ood_noise)
    return {**sets, **{k: (v, sets["val"][1]) for k, v in ood.items()}}


def evaluate(variables: dict, sets: dict) -> dict:
    """Top-1 (fraction) of ``variables`` on each set of :func:`eval_sets`."""
    import jax.numpy as jnp

    logits = _logits_fn(TARGET_CLASSES)
    return {f"{k}_top1": float(jnp.mean(jnp.argmax(logits(variables, jnp.asarray(x)), -1) == jnp.asarray(y)))
            for k, (x, y) in sets.items()}


# --------------------------------------------------------------------------------------------------- run


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None,
        log: Callable[[str], None] = print) -> dict:
    from cnnjax import checkpoint

    budget, seeds, out, runner = R.start(BUDGETS, budget_name, out, seeds, log)
    with R.compile_cache(out / "jax-cache"):
        trained = train_all(runner, budget, seeds)
    pre = runner.done(trained["pretrain"])
    per: dict = {}
    for size in budget.sizes:
        sets = eval_sets(budget, size)
        per[size] = {}
        for mode in budget.modes:
            t = trained[size][mode.key]
            rows = []
            for rid in t["runs"]:
                e = evaluate(checkpoint.restore(runner.workdir(rid)), sets)
                rows.append({**e, "gap": e["train_top1"] - e["val_top1"], **runner.record(rid)})
            per[size][mode.key] = {"lr": t["lr"], "sweep": t["sweep"], "runs": rows}
            log(f"[transfer] {size}/class {mode.label}: val {R.fmt([r['val_top1'] for r in rows])}")
    summary = {size: {m: {k: [r[k] for r in v["runs"]] for k in KEYS} for m, v in modes.items()}
               for size, modes in per.items()}
    verdicts = make_verdicts(summary, budget)
    labels = {m.key: m.label for m in budget.modes}
    rows = [[size, labels[m], f"{per[size][m]['lr']:g}", *(R.fmt(v[k]) for k in KEYS[:-1]),
             f"{sum(v['seconds']) / len(v['seconds']):.1f}"] for size, modes in summary.items()
            for m, v in modes.items()]
    measured = R.markdown_table(["per class", "mode", "lr (swept)", "val top-1",
                                 f"OOD: shifted {budget.ood_shift} px", f"OOD: noise σ {budget.ood_noise:g}",
                                 "train top-1 (clean)", "train − val gap", "time (s)"], rows)
    plot(summary, labels, budget, out / "transfer.png")
    setup = (f"`{ARCH}` pretrained on `{SOURCE}` (all 10 digits, {NUM_SOURCE_TRAIN} training images; "
             f"{budget.pretrain_steps} AdamW steps of batch {budget.pretrain_batch}, lr {budget.pretrain_lr:g}, "
             f"seed 0: val top-1 {pre['final'].get('val_top1', float('nan')):.3f}). Target `{TARGET}` "
             f"(relabelled 0–4, a new head), the first N training images per class (N = "
             f"{', '.join(map(str, budget.sizes))}), with the digits' 2-pixel shift augmentation; "
             f"{budget.steps} AdamW steps of batch {budget.batch_size} (or the whole set when smaller), "
             f"{budget.warmup_steps} warmup steps, cosine; lr swept per mode and size on seed {seeds[0]} over "
             f"{list(budget.lrs)} (linear probe: {list(budget.probe_lrs)}), seeds {list(seeds)} at the best. "
             "Val: every val image of digits 5–9; the OOD sets "
             "are the same images shifted or noisier; train top-1 on the clean training images.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds),
               "pretrain": runner.record(trained["pretrain"]),
               "summary": {str(k): v for k, v in summary.items()},
               "runs": {str(s): modes for s, modes in per.items()}}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["transfer.png"],
                    answers(summary, labels, budget_name))
    return results


KEYS = ("val_top1", "shifted_top1", "noisy_top1", "train_top1", "gap", "seconds")


def answers(summary: dict, labels: dict, budget_name: str) -> str:
    """The lecture's two questions answered per size from the means (computed, not written by hand)."""
    import statistics

    lines = []
    for size, modes in summary.items():
        mean = {m: {k: statistics.fmean(v[k]) for k in KEYS} for m, v in modes.items()}
        gap = max(mean, key=lambda m: mean[m]["gap"])
        best = max(mean, key=lambda m: mean[m]["val_top1"])
        ood = max(mean, key=lambda m: (mean[m]["shifted_top1"] + mean[m]["noisy_top1"]) / 2)
        lines.append(f"- {size}/class: the largest train − val gap is **{labels[gap]}** "
                     f"({mean[gap]['gap']:+.3f}); the best val top-1 is **{labels[best]}** "
                     f"({mean[best]['val_top1']:.3f}); the best mean OOD top-1 is **{labels[ood]}**.")
    return ("The lecture's questions, answered from the means above (computed):\n\n" + "\n".join(lines) + "\n\n"
            f"Reproduce: `python -m train.experiments transfer --budget {budget_name}`.")


#: The verdicts, per size: (mode a, mode b, measure, direction of mean(a) - mean(b), claim).
CLAIMS = (
    ("finetune", "scratch", "val_top1", "greater", "pretraining on mnist5k raises val top-1 (fine-tune vs scratch)"),
    ("finetune", "probe", "val_top1", "greater", "fine-tuning beats fixed features (vs linear probe, val top-1)"),
    ("lpft", "probe", "val_top1", "greater", "LP-FT improves on the linear probe it starts from (val top-1)"),
    ("lpft", "finetune", "val_top1", "greater", "LP-FT beats fine-tuning in distribution (val top-1)"),
    ("lpft", "finetune", "shifted_top1", "greater", "LP-FT beats fine-tuning out of distribution (shifted val)"),
    ("lpft", "finetune", "noisy_top1", "greater", "LP-FT beats fine-tuning out of distribution (noisy val)"),
    ("scratch", "probe", "gap", "greater", "training from scratch overfits more than a linear probe (train − val)"),
)


def make_verdicts(summary: dict, budget: Budget) -> list[R.Verdict]:
    keys = {m.key for m in budget.modes}
    return [R.verdict(s[a][key], s[b][key], direction, f"{size}/class: {text}")
            for size, s in summary.items() for a, b, key, direction, text in CLAIMS if {a, b} <= keys]


def plot(summary: dict, labels: dict, budget: Budget, path: pathlib.Path) -> None:
    """Per size: val, OOD and clean-train top-1 of every mode (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    whats = [("val_top1", "val"), ("shifted_top1", f"OOD shifted {budget.ood_shift} px"),
             ("noisy_top1", f"OOD noise σ {budget.ood_noise:g}"), ("train_top1", "train (clean)")]
    sizes = list(summary)
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        modes = list(summary[size])
        width = 0.8 / len(whats)
        for j, (key, name) in enumerate(whats):
            vals = [summary[size][m][key] for m in modes]
            ax.bar(np.arange(len(modes)) + j * width, [np.mean(v) for v in vals], width,
                   yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals], capsize=2, label=name)
        ax.set_xticks(np.arange(len(modes)) + width * (len(whats) - 1) / 2,
                      [labels[m].replace(", ", ",\n") for m in modes], fontsize=8)
        ax.axhline(0.2, color="gray", ls="--", lw=0.8)  # chance: 5 classes
        ax.set(ylim=(0, 1.05), ylabel="top-1", title=f"digits 5–9, {size} labelled per class")
        ax.grid(alpha=0.3, axis="y")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(whats), fontsize=9)
    fig.suptitle(f"{ARCH} pretrained on {SOURCE}: transfer modes (mean ± std over seeds; dashed: chance)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
