"""``python -m train.experiments lesion``: residual networks behave like ensembles (Veit et al. 2016).

With the trained deepest nets of ``degradation`` (56 layers at ``default``; cached in
``OUT/../degradation/runs``, trained there first if missing), at test time: remove each block
(``CifarResNet``'s ``lesion`` mask: the block computes only its shortcut path, the identity or, for a
downsampling block, option A's strided subsampling with zero padding; for the plain net the same parameter-free
path) -> val error per removed block; remove ``k`` random blocks -> val error against ``k``.
Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/lesion.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

from train.experiments import degradation as D
from train.experiments import runner as R

NAME = "lesion"
BUDGETS = D.BUDGETS
SAMPLES = {"smoke": 2, "default": 10, "full": 20}  # random draws per k
KS = {"smoke": (1, 2), "default": (1, 2, 3, 5, 8, 12), "full": (1, 2, 3, 5, 8, 12, 16, 20)}

CLAIM = R.Claim(
    lecture_ru="Residual-сеть можно рассматривать как ансамбль путей разной длины: если удалить один блок, "
               "качество почти не меняется, тогда как обычная сеть без skip-connection после удаления любого слоя "
               "ломается.",
    lecture_en="A residual network can be seen as an ensemble of paths of different lengths: removing one block "
               "barely changes its accuracy, while a plain network without skip connections breaks when any "
               "layer is removed.",
    literature="Veit, Wilber & Belongie 2016 ('Residual Networks Behave Like Ensembles of Relatively Shallow "
               "Networks'), Fig. 3 (CIFAR-10, ResNet-110): removing one block leaves the error near the "
               "baseline except the downsampling blocks; the plain VGG-like net goes to chance (90% error) after "
               "any removal; Fig. 5: error rises smoothly with the number of removed blocks.",
)


@functools.lru_cache(maxsize=8)
def _error_fn(arch: str, channels: int):
    """The jitted error rate of ``arch`` for (variables, keep mask, images, labels): one compile per shape."""
    import jax
    import jax.numpy as jnp

    from cnnjax import models
    from cnnjax.models.cifar_resnet import lesion_mask

    depth = int(arch.removeprefix("resnet").split("_")[0])
    model = models.create(arch, num_classes=10, in_channels=channels)

    @jax.jit
    def wrong(variables, keep, images, labels):
        logits = model.apply({**variables, "lesion": lesion_mask(depth, keep)}, images, train=False)
        return jnp.mean(jnp.argmax(logits, -1) != labels)

    return wrong


def lesion_errors(arch: str, variables: dict, images, labels, masks: list) -> list[float]:
    """Val error of ``arch`` with ``variables`` for each keep mask (3n floats, 1 keep / 0 remove)."""
    import numpy as np

    wrong = _error_fn(arch, images.shape[-1])
    return [float(wrong(variables, np.asarray(m, np.float32), images, labels)) for m in masks]


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:
    import numpy as np

    from cnnjax import checkpoint
    from cnnjax import data as cdata
    from cnnjax.models.cifar_resnet import downsampling_blocks

    budget = BUDGETS[budget_name]
    seeds = tuple(seeds or budget.seeds)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runner = R.Runner(out, log, runs=R.sibling_runs(out, "degradation"))
    deep = max(budget.depths)
    sub = dataclasses.replace(budget, depths=tuple(d for d in budget.depths if d in (20, deep)))
    trained = {a: t for a, t in D.train_all(runner, sub, seeds).items() if a.startswith(f"resnet{deep}")}
    source = cdata.load(budget.dataset)
    val = list(source.plain_batches("val", source.info.num_val))[0]
    images, labels = val["image"], val["label"]
    nb = 3 * ((deep - 2) // 6)
    down = downsampling_blocks(deep)
    ks = tuple(k for k in KS[budget_name] if k < nb)
    rng = np.random.default_rng(0)
    draws = {k: [rng.choice(nb, k, replace=False) for _ in range(SAMPLES[budget_name])] for k in ks}
    masks = [np.ones(nb)] + [np.ones(nb) - np.eye(nb)[i] for i in range(nb)]
    for k in ks:
        for d in draws[k]:
            m = np.ones(nb)
            m[d] = 0
            masks.append(m)
    per_run = {}
    for arch, t in trained.items():
        for rid in t["runs"]:
            cfg = json.loads((runner.workdir(rid) / "config.json").read_text())
            variables = checkpoint.restore(runner.workdir(rid))
            errs = lesion_errors(arch, variables, images, labels, masks)
            base, single, rest = errs[0], errs[1:1 + nb], errs[1 + nb:]
            by_k = {}
            for j, k in enumerate(ks):
                by_k[k] = rest[j * SAMPLES[budget_name]:(j + 1) * SAMPLES[budget_name]]
            per_run[rid] = {"arch": arch, "seed": cfg["seed"], "baseline": base, "single": single,
                            "random": {str(k): v for k, v in by_k.items()}}
            log(f"[lesion] {rid}: baseline error {base:.3f}, one block removed {np.mean(single):.3f} (mean)")

    def runs_of(arch):
        return [r for r in per_run.values() if r["arch"] == arch]

    def inner_increase(r):  # mean error increase over the non-downsampling blocks
        return float(np.mean([e for i, e in enumerate(r["single"]) if i not in down]) - r["baseline"])

    res, plain = f"resnet{deep}", f"resnet{deep}_plain"
    rows = []
    for arch in (res, plain):
        rr = runs_of(arch)
        rows.append([f"`{arch}`", R.fmt([100 * r["baseline"] for r in rr], 1),
                     R.fmt([100 * np.mean([e for i, e in enumerate(r["single"]) if i not in down]) for r in rr], 1),
                     R.fmt([100 * max(r["single"]) for r in rr], 1),
                     R.fmt([100 * np.mean([r["single"][i] for i in down]) for r in rr], 1)]
                    + [R.fmt([100 * np.mean(r["random"][str(k)]) for r in rr], 1) for k in ks])
    measured = R.markdown_table(["network", "val error % (intact)", "one non-downsampling block removed (mean)",
                                 "worst single removal", "a downsampling block removed"]
                                + [f"{k} random removed" for k in ks], rows)
    verdicts = [
        R.verdict([inner_increase(r) for r in runs_of(res)], [inner_increase(r) for r in runs_of(plain)], "less",
                  f"removing one (non-downsampling) block raises ResNet-{deep}'s error less than plain-{deep}'s"),
        R.verdict([inner_increase(r) for r in runs_of(res)], 0.05, "less",
                  f"ResNet-{deep} degrades smoothly: one block removed costs < 5 points of error"),
        R.verdict([float(np.mean(r["single"])) for r in runs_of(plain)], 0.5, "greater",
                  f"plain-{deep} collapses: with one block removed its error is > 50% (chance: 90%)"),
    ]
    plot(per_run, out / "lesion.png", res, plain, nb, down, ks)
    setup = (f"The trained `{res}` and `{plain}` of `degradation --budget {budget_name}` (seeds {list(seeds)}), "
             f"evaluated on all {len(labels)} validation images of `{budget.dataset}` with BatchNorm's running "
             f"statistics. Blocks {down} (0-based, of {nb}) are the downsampling blocks. k random removals: "
             f"{SAMPLES[budget_name]} draws per k (the same draws for every network).")
    notes = (f"Reproduce: `python -m train.experiments lesion --budget {budget_name}` (reuses the `degradation` "
             "runs in `OUT/../degradation/runs`).")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds), "blocks": nb,
               "downsampling_blocks": down, "ks": list(ks), "draws": {str(k): [d.tolist() for d in v]
                                                                        for k, v in draws.items()},
               "lesions": per_run}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["lesion.png"], notes)
    return results


def plot(per_run: dict, path: pathlib.Path, res: str, plain: str, nb: int, down: list[int], ks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for arch, color, label in ((res, "tab:blue", "ResNet"), (plain, "tab:red", "plain")):
        rr = [r for r in per_run.values() if r["arch"] == arch]
        single = 100 * np.array([r["single"] for r in rr])
        base = 100 * np.mean([r["baseline"] for r in rr])
        a.plot(range(nb), single.mean(0), "o-" if label == "ResNet" else "s--", color=color, ms=3, label=label)
        a.axhline(base, color=color, lw=0.8, ls=":")
        rand = 100 * np.array([[np.mean(r["random"][str(k)]) for k in ks] for r in rr])
        b.errorbar([0, *ks], [base, *rand.mean(0)], yerr=[0, *(rand.std(0) if len(rr) > 1 else 0 * rand[0])],
                   fmt="o-" if label == "ResNet" else "s--", color=color, label=label, capsize=3)
    for i in down:
        a.axvline(i, color="gray", lw=0.8, alpha=0.6)
    a.axhline(90, color="k", lw=0.8, ls="--", alpha=0.4)
    b.axhline(90, color="k", lw=0.8, ls="--", alpha=0.4)
    a.set(xlabel="removed block (grey lines: downsampling blocks)", ylabel="val error (%)",
          title="one block removed (dotted: intact net)", ylim=(0, 100))
    b.set(xlabel="blocks removed at random", ylabel="val error (%)", title="k random blocks removed", ylim=(0, 100))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
