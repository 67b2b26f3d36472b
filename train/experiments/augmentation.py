"""``python -m train.experiments augmentation``: a correct augmentation must not change the class.

LeNet-5 (``lenet5_modern``: ReLU, max pooling) on the bundled ``digits`` (8x8 upsampled to 32x32) with few
training examples per class, trained under five augmentations, everything else equal (the same images, steps,
batch, AdamW learning rate and schedule):

* ``none``: ``digits:pad=0`` and ``--augment none``;
* ``shift``: the digits' own augmentation, random translation by pad-and-crop (2 pixels at 32x32);
* ``flip``: a horizontal mirror with probability 1/2 (``--augment flip``), which maps a 2 to something like a 5;
* ``rot180``: a rotation by 180° with probability 1/2 (``--augment rot180``), which maps a 6 to a 9;
* ``rotate15``: a small rotation, uniform in ±15° (``--augment rotate:15``), one of LeCun's class-preserving
  distortions.

Measured: val top-1 (all 359 val images, un-augmented) and the confusion between the classes the wrong
augmentations map onto each other: the share of the val 6s and 9s predicted as the other one, the same for 2 and
5; confusion matrices (seed 0) as PNGs. Writes ``OUT/results.json``, ``OUT/table.md``, ``OUT/augmentation.png``
and ``OUT/confusion.png``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "augmentation"
ARCH = "lenet5_modern"
PAIRS = ((6, 9), (2, 5))  # (rot180's pair, flip's pair)


@dataclasses.dataclass(frozen=True)
class Condition:
    key: str
    augment: str
    pad: bool = False  # the digits' host shift (pad-and-crop)

    def spec(self, per_class: int) -> str:
        return f"digits:{'' if self.pad else 'pad=0,'}per_class={per_class}"


NONE, SHIFT = Condition("none", "none"), Condition("shift", "default", pad=True)
FLIP, ROT180, ROT15 = Condition("flip", "flip"), Condition("rot180", "rot180"), Condition("rotate15", "rotate:15")


@dataclasses.dataclass(frozen=True)
class Budget:
    conditions: tuple[Condition, ...]
    sizes: tuple[int, ...]  # training examples per class
    steps: int
    seeds: tuple[int, ...]
    batch_size: int = 30
    warmup_steps: int = 10
    lr: float = 3e-3  # lenet5_modern's best AdamW rate on digits in the inductive-bias sweep (3e-4, 1e-3, 3e-3)


BUDGETS = {
    "smoke": Budget((NONE, ROT180), (10,), 4, (0,), batch_size=20, warmup_steps=1),
    # measured on the 2-core CPU: ~12 s a run (LeNet at 32x32, 0.03 s a step + compile and evaluation)
    "default": Budget((NONE, SHIFT, FLIP, ROT180, ROT15), (10, 50), 300, (0, 1, 2)),
    "full": Budget((NONE, SHIFT, FLIP, ROT180, ROT15), (5, 10, 50, 100), 1000, (0, 1, 2, 3, 4)),
}

CLAIM = R.Claim(
    lecture_ru="Например, если немного сдвинуть изображения цифры, то человек все еще сможет распознать, что именно "
               "изображено, именно на таких предположениях мы строили аугментации. Правильная аугментация не должна "
               "изменять класс. […] Примеры \"неправильных\" аугментаций: - Отражение цифр, - Поворот текста, […]",
    lecture_en="For example, if a digit's image is shifted a little, a person can still tell what it shows; "
               "augmentations were built on such assumptions. A correct augmentation must not change the class. "
               "[…] Examples of 'wrong' augmentations: mirroring digits, rotating text, […] (The 180° rotation "
               "and its 6↔9 pair are our instance of 'rotating text' for digits.)",
    literature="LeCun et al. 1998, §III.C / Fig. 9: training LeNet-5 on MNIST with random affine distortions "
               "(translation, scaling, squeezing, shearing) lowered the test error from 0.95% to 0.8%; Simard, "
               "Steinkraus & Platt 2003: elastic and affine distortions are the most useful MNIST augmentation. "
               "No paper is needed for the negative case: a mirrored 2 and a rotated 6 are other digits' shapes.",
)


def run_id(cond: Condition, per_class: int, budget: Budget, seed: int) -> str:
    return f"{cond.key}-n{per_class}-t{budget.steps}-lr{budget.lr:g}-s{seed}"


def config(cond: Condition, per_class: int, budget: Budget, seed: int) -> TrainConfig:
    spec = cond.spec(per_class)
    return R.step_config(ARCH, spec, 10 * per_class, budget.steps, budget.batch_size, budget.lr, seed,
                         budget.warmup_steps, augment=cond.augment)


def pair_confusion(matrix, pair: tuple[int, int]) -> float:
    """The share of the val examples of the two classes of ``pair`` predicted as the other one (rows: true)."""
    a, b = pair
    return (matrix[a][b] + matrix[b][a]) / max(sum(matrix[a]) + sum(matrix[b]), 1)


def raised_pairs(per_size: dict, cond: str, top: int = 3) -> list[tuple[int, int, float]]:
    """The ``top`` class pairs whose pair confusion ``cond`` raises most over ``none`` (mean over seeds):
    ``[(a, b, increase)]``, a < b."""
    import numpy as np

    def mean_pairs(key: str) -> np.ndarray:
        ms = [np.asarray(r["matrix"], float) for r in per_size[key]]
        out = np.zeros((10, 10))
        for a in range(10):
            for b in range(a + 1, 10):
                out[a, b] = np.mean([pair_confusion(m.tolist(), (a, b)) for m in ms])
        return out

    diff = mean_pairs(cond) - mean_pairs("none")
    order = sorted(((a, b) for a in range(10) for b in range(a + 1, 10)), key=lambda p: -diff[p])
    return [(a, b, float(diff[a, b])) for a, b in order[:top]]


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None,
        log: Callable[[str], None] = print) -> dict:
    budget, seeds, out, runner = R.start(BUDGETS, budget_name, out, seeds, log)
    per: dict = {}
    with R.compile_cache(out / "jax-cache"):
        for size in budget.sizes:
            for cond in budget.conditions:
                for seed in seeds:
                    rid = run_id(cond, size, budget, seed)
                    runner.run(rid, config(cond, size, budget, seed))
                    matrix = json.loads((runner.workdir(rid) / "per_class.json").read_text())["confusion"]
                    per.setdefault(size, {}).setdefault(cond.key, []).append(
                        {"run_id": rid, "seed": seed, "matrix": matrix, **runner.record(rid)})
    summary = {size: {c: {"val_top1": [r["final"]["val_top1"] for r in rs],
                          **{f"confusion_{a}_{b}": [pair_confusion(r["matrix"], (a, b)) for r in rs] for a, b in PAIRS}}
                      for c, rs in conds.items()} for size, conds in per.items()}
    verdicts = make_verdicts(summary, budget)
    rows = [[size, f"`{c}`", R.fmt(v["val_top1"]), *(R.fmt(v[f"confusion_{a}_{b}"]) for a, b in PAIRS)]
            for size, conds in summary.items() for c, v in conds.items()]
    measured = R.markdown_table(["per class", "augmentation", "val top-1",
                                 *(f"{a}↔{b} confusion" for a, b in PAIRS)], rows)
    plot(summary, out / "augmentation.png")
    plot_confusions(per, out / "confusion.png")
    setup = (f"`{ARCH}` on `digits` (32x32, 10 classes), the first N training images of each class (N = "
             f"{', '.join(map(str, budget.sizes))}); {budget.steps} AdamW steps of batch {budget.batch_size}, lr "
             f"{budget.lr:g} ({budget.warmup_steps} warmup steps, cosine), the same for every augmentation; seeds "
             f"{list(seeds)} (initialisation, data order, augmentation draws). Val: all 359 val images, "
             "un-augmented. Pair confusion: the share of the val images of the two classes predicted as the other.")
    raised = {size: {c: raised_pairs(per[size], c) for c in ("flip", "rot180") if c in per[size]}
              for size in per if "none" in per[size]}
    lines = [f"- {size}/class, `{c}`: " + ", ".join(f"{a}↔{b} {100 * d:+.1f} points" for a, b, d in pairs)
             for size, by in raised.items() for c, pairs in by.items()]
    notes = ("The class pairs each wrong augmentation confuses most, over `none` (increase of the pair confusion, "
             "mean over seeds; computed):\n\n" + "\n".join(lines) + "\n\n" if lines else "") + (
             f"Reproduce: `python -m train.experiments augmentation --budget {budget_name}`. One learning rate for "
             "every augmentation (LeNet's best without augmentation in the inductive-bias sweep): an augmented run "
             "might prefer another, which would favour `none`.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds),
               "summary": {str(k): v for k, v in summary.items()},
               "raised_pairs": {str(k): v for k, v in raised.items()},
               "runs": [r for conds in per.values() for rs in conds.values() for r in rs]}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results,
                    ["augmentation.png", "confusion.png"], notes)
    return results


def make_verdicts(summary: dict, budget: Budget) -> list[R.Verdict]:
    """Per size: shift and small rotations raise val top-1 over none; flips and 180° rotations lower it; rot180
    raises the 6↔9 confusion and flips the 2↔5 confusion."""
    keys = {c.key for c in budget.conditions}
    out = []
    for size, s in summary.items():
        def v(cond: str, what: str = "val_top1", s: dict = s) -> list[float]:
            return s[cond][what]

        for cond, direction, text in (("shift", "greater", "random shifts raise"),
                                      ("rotate15", "greater", "small rotations (±15°) raise"),
                                      ("flip", "less", "horizontal flips lower"),
                                      ("rot180", "less", "180° rotations lower")):
            if cond in keys:
                out.append(R.verdict(v(cond), v("none"), direction,
                                     f"{size}/class: {text} val top-1 (vs no augmentation)"))
        for cond, (a, b) in (("rot180", PAIRS[0]), ("flip", PAIRS[1])):
            if cond in keys:
                out.append(R.verdict(v(cond, f"confusion_{a}_{b}"), v("none", f"confusion_{a}_{b}"), "greater",
                                     f"{size}/class: {cond} raises the {a}↔{b} confusion"))
    return out


def plot(summary: dict, path: pathlib.Path) -> None:
    """Val top-1 and the two pair confusions per augmentation, one group of bars per size (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    whats = [("val_top1", "val top-1")] + [(f"confusion_{a}_{b}", f"{a}↔{b} confusion") for a, b in PAIRS]
    fig, axes = plt.subplots(1, len(whats), figsize=(5 * len(whats), 4))
    sizes = list(summary)
    conds = list(summary[sizes[0]])
    width = 0.8 / len(conds)
    for ax, (key, title) in zip(axes, whats):
        for j, c in enumerate(conds):
            vals = [summary[s][c][key] for s in sizes]
            ax.bar(np.arange(len(sizes)) + j * width, [100 * np.mean(v) for v in vals], width,
                   yerr=[100 * np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals], capsize=3, label=c)
        ax.set_xticks(np.arange(len(sizes)) + width * (len(conds) - 1) / 2, [f"{s}/class" for s in sizes])
        ax.set(title=title, ylabel="%")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle("digits, LeNet-5: class-preserving vs class-changing augmentations (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusions(per: dict, path: pathlib.Path) -> None:
    """Row-normalised val confusion matrices of seed 0 at the smallest size, one panel per augmentation, the
    cells of the two pairs outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    size = min(per)
    conds = per[size]
    fig, axes = plt.subplots(1, len(conds), figsize=(3.6 * len(conds), 4.4), squeeze=False)
    for ax, (c, rs) in zip(axes[0], conds.items()):
        m = np.asarray(rs[0]["matrix"], float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        for a, b in PAIRS:
            for i, j in ((a, b), (b, a)):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
                ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7, color="red")
        ax.set(title=f"{c} (top-1 {rs[0]['final']['val_top1']:.3f})", xlabel="predicted", ylabel="true",
               xticks=range(10), yticks=range(10))
        ax.tick_params(labelsize=7)
    fig.suptitle(f"val confusion (rows: true digit, normalised; seed {per[size][next(iter(conds))][0]['seed']}, "
                 f"{size}/class; red: 6↔9 and 2↔5, %)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
