"""``python -m train.experiments lesion``: residual networks behave like ensembles (Veit et al. 2016).

With the trained nets of ``degradation`` at depth 20 and the deepest (56 at ``default``; cached in
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
    lecture_ru="Можно посмотреть на нейросети со skip connections как некоторый подход к ансамблированию [Veit "
               "et al., 2016]. […] Такая запись чем-то напоминает градиентный бустинг, а по интуиции из "
               "машинного обучения мы знаем, что ансамблирования это хороший способ поднять качество.",
    lecture_en="Networks with skip connections can be seen as a kind of ensembling [Veit et al., 2016]. […] The"
               " unrolled formula resembles gradient boosting, and from machine-learning intuition we know "
               "ensembling is a good way to raise quality. (The lesion prediction itself — removing one block "
               "barely hurts a ResNet but breaks a plain net — is Veit et al.'s, which the lecture cites.)",
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


def _masks(nb: int, ks: tuple[int, ...], samples: int, seed: int = 0) -> tuple[list, dict]:
    """Keep masks: intact, each block removed, then ``samples`` random draws of ``k`` blocks for each k."""
    import numpy as np

    rng = np.random.default_rng(seed)
    draws = {k: [rng.choice(nb, k, replace=False) for _ in range(samples)] for k in ks}
    masks = [np.ones(nb)] + [np.ones(nb) - np.eye(nb)[i] for i in range(nb)]
    for k in ks:
        for d in draws[k]:
            m = np.ones(nb)
            m[d] = 0
            masks.append(m)
    return masks, draws


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:
    import numpy as np

    from cnnjax import checkpoint
    from cnnjax import data as cdata
    from cnnjax.models.cifar_resnet import downsampling_blocks

    deep = max(BUDGETS[budget_name].depths)
    depths = tuple(d for d in BUDGETS[budget_name].depths if d in (20, deep))  # 20: a plain net that did train
    budget, seeds, runner, trained = D.reuse_trained(out, budget_name, seeds, log, depths=depths)
    out = pathlib.Path(out)
    source = cdata.load(budget.dataset)
    val = list(source.plain_batches("val", source.info.num_val))[0]
    images, labels = val["image"], val["label"]
    samples = SAMPLES[budget_name]
    info, per_run = {}, {}
    for depth in depths:
        nb = 3 * ((depth - 2) // 6)
        ks = tuple(k for k in KS[budget_name] if k < nb)
        masks, draws = _masks(nb, ks, samples)
        info[depth] = {"blocks": nb, "down": downsampling_blocks(depth), "ks": ks, "draws": draws}
        for arch in (f"resnet{depth}", f"resnet{depth}_plain"):
            for rid in trained[arch]["runs"]:
                cfg = json.loads((runner.workdir(rid) / "config.json").read_text())
                errs = lesion_errors(arch, checkpoint.restore(runner.workdir(rid)), images, labels, masks)
                base, single, rest = errs[0], errs[1:1 + nb], errs[1 + nb:]
                per_run[rid] = {"arch": arch, "depth": depth, "seed": cfg["seed"], "baseline": base, "single": single,
                                "random": {str(k): rest[j * samples:(j + 1) * samples] for j, k in enumerate(ks)}}
                log(f"[lesion] {rid}: baseline error {base:.3f}, one block removed {np.mean(single):.3f} (mean)")

    def runs_of(arch):
        return [r for r in per_run.values() if r["arch"] == arch]

    def inner(r):  # mean error over the removals of a non-downsampling block
        return float(np.mean([e for i, e in enumerate(r["single"]) if i not in info[r["depth"]]["down"]]))

    all_ks = sorted({k for d in depths for k in info[d]["ks"]})
    rows, verdicts = [], []
    for depth in depths:
        down, ks = info[depth]["down"], info[depth]["ks"]
        res, plain = f"resnet{depth}", f"resnet{depth}_plain"
        for arch in (res, plain):
            rr = runs_of(arch)
            rows.append([f"`{arch}`", R.fmt([100 * r["baseline"] for r in rr], 1),
                         R.fmt([100 * inner(r) for r in rr], 1), R.fmt([100 * max(r["single"]) for r in rr], 1),
                         R.fmt([100 * np.mean([r["single"][i] for i in down]) for r in rr], 1)]
                        + [R.fmt([100 * np.mean(r["random"][str(k)]) for r in rr], 1) if k in ks else "—"
                           for k in all_ks])
        verdicts += [
            R.verdict([inner(r) - r["baseline"] for r in runs_of(res)],
                      [inner(r) - r["baseline"] for r in runs_of(plain)], "less",
                      f"removing one (non-downsampling) block raises ResNet-{depth}'s error less than "
                      f"plain-{depth}'s"),
            R.verdict([inner(r) - r["baseline"] for r in runs_of(res)], 0.05, "less",
                      f"ResNet-{depth} degrades smoothly: one block removed costs < 5 points of error"),
            R.verdict([float(np.mean(r["single"])) for r in runs_of(plain)], 0.5, "greater",
                      f"plain-{depth} collapses: with one block removed its error is > 50% (chance: 90%)"),
        ]
    measured = R.markdown_table(["network", "val error % (intact)", "one non-downsampling block removed (mean)",
                                 "worst single removal", "a downsampling block removed"]
                                + [f"{k} random removed" for k in all_ks], rows)
    plot(per_run, out / "lesion.png", info)
    down_text = "; ".join(f"depth {d}: blocks {info[d]['down']} of {info[d]['blocks']}" for d in depths)
    setup = (f"The trained ResNets and plain nets of `degradation --budget {budget_name}` at depths "
             f"{list(depths)} (seeds {list(seeds)}), evaluated on all {len(labels)} validation images of "
             f"`{budget.dataset}` with BatchNorm's running statistics. Downsampling blocks (0-based): {down_text}. "
             f"k random removals: {samples} draws per k (the same draws for both networks of a depth).")
    notes = (f"Reproduce: `python -m train.experiments lesion --budget {budget_name}` (reuses the `degradation` "
             "runs in `OUT/../degradation/runs`).")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds),
               "blocks": {str(d): info[d]["blocks"] for d in depths},
               "downsampling_blocks": {str(d): info[d]["down"] for d in depths},
               "ks": {str(d): list(info[d]["ks"]) for d in depths},
               "draws": {str(d): {str(k): [x.tolist() for x in v] for k, v in info[d]["draws"].items()}
                         for d in depths},
               "lesions": per_run}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["lesion.png"], notes)
    return results


def plot(per_run: dict, path: pathlib.Path, info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(info), 2, figsize=(12, 4 * len(info)), squeeze=False)
    for (a, b), (depth, inf) in zip(axes, info.items(), strict=True):
        nb, down, ks = inf["blocks"], inf["down"], inf["ks"]
        for arch, color, label in ((f"resnet{depth}", "tab:blue", f"ResNet-{depth}"),
                                   (f"resnet{depth}_plain", "tab:red", f"plain-{depth}")):
            rr = [r for r in per_run.values() if r["arch"] == arch]
            style = "s--" if "plain" in label else "o-"
            single = 100 * np.array([r["single"] for r in rr])
            base = 100 * np.mean([r["baseline"] for r in rr])
            a.plot(range(nb), single.mean(0), style, color=color, ms=3, label=label)
            a.axhline(base, color=color, lw=0.8, ls=":")
            rand = 100 * np.array([[np.mean(r["random"][str(k)]) for k in ks] for r in rr])
            b.errorbar([0, *ks], [base, *rand.mean(0)], yerr=[0, *(rand.std(0) if len(rr) > 1 else 0 * rand[0])],
                       fmt=style, color=color, label=label, capsize=3)
        for i in down:
            a.axvline(i, color="gray", lw=0.8, alpha=0.6)
        for ax in (a, b):
            ax.axhline(90, color="k", lw=0.8, ls="--", alpha=0.4)
            ax.set(ylabel="val error (%)", ylim=(0, 100))
            ax.grid(alpha=0.3)
            ax.legend()
        a.set(xlabel="removed block (grey lines: downsampling blocks)", title=f"depth {depth}: one block removed "
              "(dotted: intact net)")
        b.set(xlabel="blocks removed at random", title=f"depth {depth}: k random blocks removed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
