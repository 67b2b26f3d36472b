"""``python -m train.experiments aux-heads``: GoogLeNet with and without its auxiliary classifiers.

GoogLeNet (torchvision's, ``--model-opt aux_logits=True|False``) trained on the generated ``shapes`` (6 classes,
the shape anywhere in the image), everything else equal (images, steps, batch, AdamW schedule, seeds). With
``aux_logits`` the two auxiliary heads (after ``inception4a`` and ``inception4d``: adaptive average pool to 4x4,
1x1 conv, two dense layers, dropout 0.7) add ``0.3 * CE`` each to the training loss
(:func:`cnnjax.training.step.loss_terms`); at test time they are dropped, so both variants are evaluated on the
same main head. At ``default`` the net is GoogLeNet at a quarter of its width (``width_mult=0.25``; the
full-width net is too slow on the 2-core CPU) on 64x64 images, where ``inception4a``'s map is 4x4 as the aux heads'
pooling expects (at 32x32 it would be 2x2, repeated up to 4x4).

Compared (per epoch and at the end, each variant at its own AdamW learning rate from a small sweep on the first
seed): the MAIN head's training loss (``train_loss_main`` of the aux runs, i.e. without the aux terms, so the two
curves measure the same thing), val top-1 and val loss. Early training = the evaluation nearest to 25% of the
steps. Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/aux-heads.png`` (main-head training loss and val
top-1 against the step).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "aux-heads"
ARCH = "googlenet"
VARIANTS = ("aux", "noaux")
LABELS = {"aux": "with aux heads", "noaux": "without aux heads"}
COLORS = {"aux": "tab:red", "noaux": "tab:blue"}
EARLY = 0.25  # "early training": the evaluation nearest this share of the steps


@dataclasses.dataclass(frozen=True)
class Budget:
    width_mult: float
    image_size: int
    num_train: int
    num_val: int
    steps: int
    seeds: tuple[int, ...]
    batch_size: int = 64
    warmup_steps: int = 30
    lrs: tuple[float, ...] = (1e-3, 3e-3)  # AdamW rates swept on the first seed
    sweep_both: bool = True  # False: only `aux` is swept, `noaux` trains at its rate (the CPU budget)

    @property
    def dataset(self) -> str:
        return f"shapes:num_train={self.num_train},num_val={self.num_val},image_size={self.image_size}"


BUDGETS = {
    "smoke": Budget(0.125, 16, 64, 32, 4, (0,), batch_size=32, warmup_steps=1, lrs=(3e-3,)),
    # sized for the 2-core CPU: 8 runs of 400 steps at 64x64 (31 steps an epoch, 13 evaluations), ~1-2 min each
    # (about a minute of it compiling; seeds 1 and 2 reuse the compiled steps)
    "default": Budget(0.25, 64, 2000, 500, 400, (0, 1, 2), sweep_both=False),
    "full": Budget(1.0, 96, 10000, 1000, 6000, (0, 1, 2, 3, 4), lrs=(3e-4, 1e-3, 3e-3)),
}

CLAIM = R.Claim(
    lecture_ru="GoogLeNet (a.k.a Inception, 2014) […] Не end-to-end обучение, использование вспомогательных "
               "классификаторов",
    lecture_en="GoogLeNet (a.k.a. Inception, 2014): not end-to-end training, the use of auxiliary classifiers. (The "
               "lecture only names them; the claims tested are the papers': the aux heads help a little, Szegedy et "
               "al. 2014, or do not speed up early training, Szegedy et al. 2016.)",
    literature="Szegedy et al. 2014 ('Going deeper with convolutions', §5): two auxiliary classifiers on inception "
               "(4a) and (4d), their losses weighted 0.3, discarded at inference; 'the auxiliary networks … "
               "[had] a relatively minor effect (around 0.5%)' on ImageNet top-1, 'only one of them was required to "
               "achieve the same effect'. Szegedy et al. 2016 ('Rethinking the Inception Architecture', §4, "
               "Inception-v3): the aux classifiers 'did not result in improved convergence early in training: the "
               "training progression of network with and without side head looks virtually identical before both "
               "models reach high accuracy'; near the end the net with the side branch overtakes the one without "
               "and plateaus higher; they act as regularisers (with BatchNorm or dropout in the side branch the "
               "main classifier does 0.4% better top-1).",
)


def run_id(variant: str, lr: float, budget: Budget, seed: int) -> str:
    return f"{variant}-w{budget.width_mult:g}-i{budget.image_size}-t{budget.steps}-lr{lr:g}-s{seed}"


def config(variant: str, budget: Budget, seed: int, lr: float) -> TrainConfig:
    """The run: :func:`runner.step_config` (AdamW, warmup then cosine), evaluated and checkpointed after every
    epoch (an interrupted run resumes from its last epoch)."""
    cfg = R.step_config(ARCH, budget.dataset, budget.num_train, budget.steps, budget.batch_size, lr, seed,
                        budget.warmup_steps,
                        model_opt=(f"aux_logits={variant == 'aux'}", f"width_mult={budget.width_mult!r}"))
    return dataclasses.replace(cfg, eval_every=1, checkpoint_every=max(1, budget.num_train // budget.batch_size))


def main_loss(row: dict) -> float:
    """The main head's training loss of a metrics row: ``train_loss_main`` when the run had aux heads (its
    ``train_loss`` includes them), else ``train_loss``."""
    return float(row.get("train_loss_main", row["train_loss"]))


def early_row(metrics: list[dict], steps: int) -> dict:
    """The evaluation row nearest to :data:`EARLY` of ``steps`` (the earlier one on a tie)."""
    rows = [m for m in metrics if "val_top1" in m]
    return min(rows, key=lambda m: (abs(m["step"] - EARLY * steps), m["step"]))


def summarize(recs: list[dict], steps: int) -> dict:
    """Per-seed lists of the compared numbers (fractions in [0, 1] for accuracies)."""
    early = [early_row(r["metrics"], steps) for r in recs]
    last = [r["metrics"][-1] for r in recs]
    return {"final_val_top1": [m["val_top1"] for m in last], "final_val_loss": [m["val_loss"] for m in last],
            "final_train_loss_main": [main_loss(m) for m in last],
            "early_step": [m["step"] for m in early], "early_train_loss_main": [main_loss(m) for m in early],
            "early_val_top1": [m["val_top1"] for m in early],
            "seconds": [r.get("seconds", math.nan) for r in recs]}


def make_verdicts(summary: dict) -> list[R.Verdict]:
    """With aux heads vs without: higher final val top-1 (Szegedy 2014), lower main-head training loss and higher
    val top-1 early in training (the 'helps the gradient reach the lower layers' reading; Szegedy 2016 says no)."""
    a, b = summary["aux"], summary["noaux"]
    return [
        R.verdict(a["final_val_top1"], b["final_val_top1"], "greater",
                  "with aux heads the final val top-1 is higher (Szegedy et al. 2014: ~0.5%)"),
        R.verdict(a["early_train_loss_main"], b["early_train_loss_main"], "less",
                  f"with aux heads the main head's training loss is lower early in training (~{EARLY:.0%} of the "
                  "steps; Szegedy et al. 2016 found no difference)"),
        R.verdict(a["early_val_top1"], b["early_val_top1"], "greater",
                  f"with aux heads the val top-1 is higher early in training (~{EARLY:.0%} of the steps)"),
    ]


def param_counts(budget: Budget, num_classes: int) -> dict[str, int]:
    """Parameters of each variant (from ``jax.eval_shape``; the aux heads' included, used only in training)."""
    import jax
    import jax.numpy as jnp

    from cnnjax import models

    out = {}
    for v in VARIANTS:
        m = models.create(ARCH, num_classes=num_classes, aux_logits=v == "aux", width_mult=budget.width_mult)
        x = jnp.zeros((1, budget.image_size, budget.image_size, 3))
        shapes = jax.eval_shape(lambda m=m, x=x: m.init(jax.random.key(0), x, False))
        out[v] = sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))
    return out


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None,
        log: Callable[[str], None] = print) -> dict:
    budget, seeds, out, runner = R.start(BUDGETS, budget_name, out, seeds, log)
    with R.compile_cache(out / "jax-cache"):
        trained: dict = {}
        for v in VARIANTS:
            lrs = budget.lrs if budget.sweep_both or not trained else (trained["aux"]["lr"],)
            trained |= R.sweep_and_train(runner, (v,), lambda v: config(v, budget, seeds[0], budget.lrs[0]),
                                         lambda v, lrs=lrs: lrs, lambda v, lr, seed: run_id(v, lr, budget, seed),
                                         seeds)
    per = {v: {"lr": t["lr"], "sweep": t["sweep"], "runs": [runner.record(rid) for rid in t["runs"]]}
           for v, t in trained.items()}
    summary = {v: summarize(d["runs"], budget.steps) for v, d in per.items()}
    params = param_counts(budget, 6)
    verdicts = make_verdicts(summary)
    early_step = summary["aux"]["early_step"][0]
    rows = [[f"`{v}` ({LABELS[v]})", f"{params[v]:,}", f"{per[v]['lr']:g}",
             R.fmt([100 * x for x in s["final_val_top1"]], 1), R.fmt(s["final_val_loss"], 3),
             R.fmt(s["final_train_loss_main"], 3), R.fmt(s["early_train_loss_main"], 3),
             R.fmt([100 * x for x in s["early_val_top1"]], 1), f"{R.mean_std(s['seconds'])[0]:.0f}"]
            for v, s in summary.items()]
    measured = R.markdown_table(
        ["variant", "parameters (training)", "lr (swept)", "final val top-1 %", "final val loss",
         "final main-head train loss", f"main-head train loss at step {early_step}",
         f"val top-1 % at step {early_step}", "s / run"], rows)
    plot(per, out / "aux-heads.png", budget, early_step)
    setup = (f"`{budget.dataset}` (6 classes, no augmentation); `{ARCH}` with `width_mult={budget.width_mult:g}` "
             f"({'torchvision-exact widths' if budget.width_mult == 1 else 'every channel count scaled'}), "
             f"`aux_logits=True` (two aux heads, 0.3 x CE each, dropped at test time) or `False`; {budget.steps} "
             f"AdamW steps of batch {budget.batch_size} ({budget.num_train // budget.batch_size} an epoch), "
             f"{budget.warmup_steps} warmup steps then cosine decay, evaluated after every epoch; learning rate: "
             + (f"per variant, best final val top-1 over {list(budget.lrs)} on seed {seeds[0]}" if budget.sweep_both
                else f"best final val top-1 of `aux` over {list(budget.lrs)} on seed {seeds[0]}, and `noaux` at the "
                "same rate (not swept, to fit the CPU budget: the two are the same net at test time)")
             + f" (the sweep's runs are seed {seeds[0]}'s); seeds {list(seeds)}. Train loss = the epoch's mean over "
             "batches (training mode: BatchNorm batch statistics, dropout) of the MAIN head's cross-entropy only "
             "(`train_loss_main`; the optimised loss of the aux runs also holds 0.3 x the two aux losses). "
             "Parameters: all of the training net's; the aux heads' are unused at test time, where both variants "
             "are the same net.")
    notes = (f"Reproduce: `python -m train.experiments aux-heads --budget {budget_name}`. 'Early' is the evaluation "
             f"nearest {EARLY:.0%} of the steps (step {early_step}). The learning rate was chosen on seed "
             f"{seeds[0]}'s final val top-1, which flatters seed {seeds[0]} a little in both variants alike.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds), "params": params,
               "summary": summary, "lr": {v: d["lr"] for v, d in per.items()},
               "sweeps": {v: d["sweep"] for v, d in per.items()},
               "runs": [r for d in per.values() for r in d["runs"]]}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["aux-heads.png"], notes)
    return results


def plot(per: dict, path: pathlib.Path, budget: Budget, early_step: int) -> None:
    """Two panels against the step: the main head's training loss (log scale; the aux runs' mean aux-head loss
    dashed) and val top-1; every seed drawn, the first one thicker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(12, 4.4))
    for v, d in per.items():
        for i, r in enumerate(d["runs"]):
            rows = [m for m in r["metrics"] if "val_top1" in m]
            steps = [m["step"] for m in rows]
            label = f"{LABELS[v]} (lr {d['lr']:g})" if i == 0 else None
            lw, alpha = (1.8, 0.9) if i == 0 else (0.9, 0.6)
            ax_l.plot(steps, [main_loss(m) for m in rows], color=COLORS[v], lw=lw, alpha=alpha, label=label)
            if "train_loss_aux" in rows[0]:
                ax_l.plot(steps, [m["train_loss_aux"] / 2 for m in rows], color=COLORS[v], lw=0.8, ls="--",
                          alpha=alpha, label="aux heads' mean loss" if i == 0 else None)
            ax_a.plot(steps, [100 * m["val_top1"] for m in rows], color=COLORS[v], lw=lw, alpha=alpha, label=label)
    for ax in (ax_l, ax_a):
        ax.axvline(early_step, color="grey", ls=":", lw=0.8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_xlabel("step")
    ax_l.set(yscale="log", ylabel="training loss (epoch mean)", title="main head's training cross-entropy")
    ax_a.set(ylabel="val top-1 %", title="val top-1 (main head, eval mode)")
    fig.suptitle(f"GoogLeNet (width x{budget.width_mult:g}) on shapes {budget.image_size}x{budget.image_size}, "
                 f"{budget.num_train} training images: with vs without aux heads (dotted: ~{EARLY:.0%} of steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
