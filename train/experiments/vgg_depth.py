"""``python -m train.experiments vgg-depth``: a plain deep ReLU stack stalls with Xavier init; Kaiming init,
BatchNorm or VGG's staged training are the cures.

One narrow net, ``vgg_small`` (3x3 convs, 16/32/64 channels over three stages, each ending with a 2x2 max pool,
global average pooling, linear head; 32x32 inputs), at two depths, ``shallow`` (11 convs: 4, 4, 3 per stage) and
``deep`` (30: 10, 10, 10), in four variants, everything else equal (images, steps, optimizer, learning rate,
seeds):

* ``xavier``: no BatchNorm, ``conv_init=xavier`` (Glorot & Bengio 2010: variance 1 / fan_avg, which assumes a
  linear unit: each ReLU layer halves the signal's variance);
* ``kaiming``: no BatchNorm, ``conv_init=kaiming`` (He et al. 2015: variance 2 / fan_out; their Eq. 14 — the
  backward condition — which they show to be as good as the forward one, 2 / fan_in);
* ``bn``: BatchNorm after every conv, Xavier init (BN makes the net invariant to each conv's weight scale, so
  the init's scale no longer matters: Ioffe & Szegedy 2015);
* ``staged`` (deep only): VGG's recipe (Simonyan & Zisserman 2015, Sec. 3.1): first train the shallow net, then
  start the deep one from it. The deep Xavier net's fresh variables are overlaid with the trained shallow
  ``kaiming`` run of the same seed through ``--init RUN --init-match partial``
  (:func:`cnnjax.transfer.load_pretrained`): every variable whose path and shape match is copied. ``vgg_small``
  names its convs ``stage{s}/conv{j}``, so the shallow net's 4, 4, 3 convs become the *first* 4, 4, 3 convs of
  each deep stage, and the head is copied too; the other 6, 6, 7 convs keep their fresh Xavier init (VGG copied
  the first four convs and the three FC layers of net A and initialised the layers in between randomly). The
  shallow source is the Kaiming run because that is the shallow net that trains within the budget (VGG trained
  net A to convergence first); the comparison is against ``xavier`` deep, whose fresh init the staged run shares
  leaf for leaf.

One fixed learning rate for every variant (AdamW, the runner's optimizer; no sweep), as He et al. compared the
two inits at the same rate: the point is whether the *same* recipe trains the deep net. AdamW rescales each
parameter's gradient, which works against a vanishing-gradient stall, so a stall under it is conservative;
He et al. used SGD. Measured: the training loss per epoch (the running mean over the epoch's batches; no
augmentation) and at the end, val top-1. Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/vgg_depth.png``
(the training-loss curves, He et al. 2015 Fig. 3's analogue).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "vgg-depth"
ARCH = "vgg_small"
VARIANTS = ("xavier", "kaiming", "bn", "staged")
LABELS = {"xavier": "Xavier init", "kaiming": "Kaiming init", "bn": "BatchNorm (+ Xavier init)",
          "staged": "staged (shallow Kaiming run -> deep, rest Xavier)"}
COLORS = {"xavier": "tab:red", "kaiming": "tab:blue", "bn": "tab:green", "staged": "tab:purple"}
#: the staged run's source: this variant of the shallow net, same seed
STAGED_FROM = "kaiming"
CHANCE = math.log(10)  # the cross entropy of a uniform guess over the 10 digits


@dataclasses.dataclass(frozen=True)
class Budget:
    depths: tuple[int, int]  # (shallow, deep)
    per_class: int  # training images per class
    steps: int
    seeds: tuple[int, ...]
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, the same for every variant
    warmup_steps: int = 0
    shallow_variants: tuple[str, ...] = ("xavier", "kaiming", "bn")
    deep_variants: tuple[str, ...] = VARIANTS

    @property
    def dataset(self) -> str:
        return f"digits:pad=0,per_class={self.per_class}"


BUDGETS = {
    "smoke": Budget((3, 4), per_class=2, steps=2, seeds=(0,), batch_size=16, shallow_variants=(STAGED_FROM,),
                    deep_variants=("xavier", "bn", "staged")),  # 4 runs; staged compiles nothing new
    "default": Budget((11, 30), per_class=48, steps=150, seeds=(0, 1, 2)),  # ~13 min here
    "full": Budget((11, 30), per_class=143, steps=3000, seeds=(0, 1, 2, 3, 4), batch_size=64),
}

CLAIM = R.Claim(
    lecture_ru="При обучении нейросети с глубиной 8 уже начинались проблемы, а обучить 19 слоев крайне трудно. […] "
               "В работе **VGG** предложили обучать не `end-to-end`, то есть не обучать всю нейросеть сразу. "
               "Например, мы можем обучить сначала первые 5 слоев, потом следующие и так далее. […] Важно "
               "использование batch normalization тоже упрощает обучение более глубоких слоев, например, если "
               "добавить батч нормализацию к VGG можно обучать end-to-end.",
    lecture_en="Training a net of depth 8 already ran into problems, and 19 layers were extremely hard to train. "
               "VGG proposed training not end-to-end, not the whole net at once: e.g. first train the first 5 "
               "layers, then the next ones, and so on. […] Batch normalization also makes deeper layers easier "
               "to train: with it added, VGG can be trained end-to-end. (The lecture does not discuss the "
               "initialisation; the init claims tested are He et al.'s.)",
    literature="He, Zhang, Ren & Sun 2015 (PReLU paper), Fig. 3: a 30-layer plain ReLU net on ImageNet does not "
               "learn at all with Xavier init (\"completely stalls\"), and converges with their init (variance "
               "2 / n); at 22 layers both converge, Xavier more slowly (Fig. 2). Simonyan & Zisserman 2015 (VGG), "
               "Sec. 3.1: the deeper nets were started from the trained 11-layer net A (first four conv layers and "
               "the three FC layers; the rest random), and they note that Glorot init trains them without this "
               "pre-training. Ioffe & Szegedy 2015: with BatchNorm, training is robust to the weight scale and "
               "deep nets train from plain initialisations.",
)


def run_id(variant: str, depth: int, budget: Budget, seed: int) -> str:
    return f"{variant}-d{depth}-n{budget.per_class}-st{budget.steps}-lr{budget.lr:g}-s{seed}"


def model_opt(variant: str, depth: int) -> tuple[str, ...]:
    norm = "batch" if variant == "bn" else "none"
    init = "kaiming" if variant == "kaiming" else "xavier"
    return (f"depth={depth}", f"norm={norm!r}", f"conv_init={init!r}")


def config(variant: str, depth: int, budget: Budget, seed: int, init: str | None = None) -> TrainConfig:
    """A run of ``budget.steps`` AdamW steps, one evaluation (and training-loss row) per epoch, no augmentation;
    ``init``: a shallow run to start from (``staged``, partial match)."""
    cfg = R.step_config(ARCH, budget.dataset, 10 * budget.per_class, budget.steps, budget.batch_size, budget.lr,
                        seed, budget.warmup_steps, augment="none", model_opt=model_opt(variant, depth))
    cfg = dataclasses.replace(cfg, eval_every=1)
    if init is not None:
        cfg = dataclasses.replace(cfg, init=init, init_match="partial")
    return cfg


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None,
        log: Callable[[str], None] = print) -> dict:
    budget, seeds, out, runner = R.start(BUDGETS, budget_name, out, seeds, log)
    shallow, deep = budget.depths
    ids: dict[str, dict[str, list[str]]] = {}
    with R.compile_cache(out / "jax-cache"):
        for depth, variants in ((shallow, budget.shallow_variants), (deep, budget.deep_variants)):
            for variant in variants:
                for seed in seeds:
                    init = None
                    if variant == "staged":
                        init = str(runner.workdir(run_id(STAGED_FROM, shallow, budget, seed)))
                    rid = run_id(variant, depth, budget, seed)
                    runner.run(rid, config(variant, depth, budget, seed, init))
                    ids.setdefault(str(depth), {}).setdefault(variant, []).append(rid)
    records = {d: {v: [runner.record(r) for r in rs] for v, rs in vs.items()} for d, vs in ids.items()}
    summary = {d: {v: summarize(recs) for v, recs in vs.items()} for d, vs in records.items()}
    verdicts = make_verdicts(summary, shallow, deep)
    rows = [[f"{d}", f"`{v}`", LABELS[v], R.fmt(s["first_loss"], 3), R.fmt(s["train_loss"], 3),
             R.fmt(s["train_error"], 3), R.fmt(s["val_top1"], 3)]
            for d, vs in summary.items() for v, s in vs.items()]
    measured = R.markdown_table(["depth", "variant", "", "train loss, 1st epoch", "final train loss",
                                 "final train error", "val top-1"], rows)
    plot(records, out / "vgg_depth.png", budget)
    spe = max(1, 10 * budget.per_class // budget.batch_size)
    setup = (f"`{ARCH}` (no augmentation, 2x2 max pools) on `digits` (32x32, 10 classes), the first "
             f"{budget.per_class} training images of each class ({10 * budget.per_class} images), all 359 val "
             f"images; depths {shallow} and {deep} (convs per stage: {_per_stage(shallow)} and {_per_stage(deep)}). "
             f"{budget.steps} AdamW steps of batch {budget.batch_size} ({spe} per epoch), weight decay 0.05, "
             f"cosine decay from lr {budget.lr:g} with {budget.warmup_steps} warmup steps — one fixed rate for "
             "every variant and depth, not swept (He et al. compared the inits at the same rate; the question "
             "is whether the same recipe trains the deep net; the sweep would not fit the CPU budget either). "
             f"`staged`: the deep Xavier net started from the trained depth-{shallow} `{STAGED_FROM}` run of the "
             "same seed by `--init-match partial` (path + shape: the first convs of each stage and the head "
             f"copied, the other {deep - shallow} convs fresh Xavier). Seeds {list(seeds)}; chance loss ln 10 = "
             f"{CHANCE:.3f}.")
    notes = (f"Reproduce: `python -m train.experiments vgg-depth --budget {budget_name}`. \"Train loss\" is the "
             "mean cross entropy over an epoch's training batches (the net changes during the epoch); the staged "
             "run's shallow stage costs an extra shallow run that the table does not charge to it.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds), "staged_from": STAGED_FROM,
               "summary": summary, "runs": [r for vs in records.values() for recs in vs.values() for r in recs]}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["vgg_depth.png"], notes)
    return results


def _per_stage(depth: int) -> str:
    from cnnjax.models.vgg_small import stage_depths

    return ", ".join(str(n) for n in stage_depths(depth))


def curve(rec: dict) -> list[tuple[int, float]]:
    """(step, training loss of the epoch ending there) per evaluation row."""
    return [(m["step"], m["train_loss"]) for m in rec["metrics"] if "train_loss" in m]


def summarize(recs: list[dict]) -> dict:
    """Per-seed lists: training loss of the first and the last epoch, final training error, val top-1 (a diverged
    run counts as chance)."""
    def final(r: dict, key: str, default: float) -> float:
        v = r["final"].get(key, default)
        return default if r.get("diverged") or not math.isfinite(v) else v

    return {"first_loss": [(curve(r) or [(0, CHANCE)])[0][1] for r in recs],
            "train_loss": [final(r, "train_loss", CHANCE) for r in recs],
            "train_error": [1.0 - final(r, "train_top1", 0.1) for r in recs],
            "val_top1": [final(r, "val_top1", 0.1) for r in recs]}


def make_verdicts(summary: dict, shallow: int, deep: int) -> list[R.Verdict]:
    """From the final training losses: at the deep depth Kaiming < Xavier, Xavier stalls (within 5% of chance),
    Kaiming and BN train (below half of chance), BN < Xavier, staged < Xavier; at the shallow depth Kaiming <
    Xavier. A claim whose variants were not run (the ``smoke`` budget) is left out."""
    s, d = summary[str(shallow)], summary[str(deep)]
    claims = [(d, "kaiming", "xavier", f"depth {deep}: Kaiming init ends with a lower training loss than Xavier init",
               "less"),
              (d, "xavier", 0.95 * CHANCE, f"depth {deep}: Xavier init stalls (final training loss above 0.95 ln 10)",
               "greater"),
              (d, "kaiming", 0.5 * CHANCE, f"depth {deep}: Kaiming init trains (final training loss below 0.5 ln 10)",
               "less"),
              (d, "bn", 0.5 * CHANCE, f"depth {deep}: BatchNorm trains (final training loss below 0.5 ln 10)", "less"),
              (d, "bn", "xavier", f"depth {deep}: BatchNorm ends with a lower training loss than Xavier init "
                                  "without it", "less"),
              (d, "staged", "xavier", f"depth {deep}: staged training ends with a lower training loss than Xavier "
                                      "init", "less"),
              (s, "kaiming", "xavier", f"depth {shallow}: Kaiming init ends with a lower training loss than Xavier "
                                       "init", "less")]
    out = []
    for where, a, b, claim, direction in claims:
        if a not in where or (isinstance(b, str) and b not in where):
            continue
        other = where[b]["train_loss"] if isinstance(b, str) else b
        out.append(R.verdict(where[a]["train_loss"], other, direction, claim))
    return out


def plot(records: dict, path: pathlib.Path, budget: Budget) -> None:
    """Training loss per epoch against steps, one panel per depth, one colour per variant, every seed drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4.3), squeeze=False, sharey=True)
    for ax, (depth, variants) in zip(axes[0], records.items()):
        for variant, recs in variants.items():
            for i, r in enumerate(recs):
                pts = curve(r)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[variant], marker=".",
                        alpha=0.85, lw=1.6 if i == 0 else 0.8, label=LABELS[variant] if i == 0 else None)
        ax.axhline(CHANCE, color="grey", ls="--", lw=0.8, label="chance (ln 10)")
        ax.set(xlabel="step", ylabel="training loss (epoch mean)", title=f"vgg_small, {depth} conv layers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"digits 32x32, {10 * budget.per_class} training images, AdamW lr {budget.lr:g}: training loss "
                 "(cf. He et al. 2015 Fig. 3)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
