"""``python -m train.experiments degradation``: the degradation problem (He et al. 2015, Fig. 6 / Table 6).

ResNet-20/56 (and 110 under ``--budget full``) against their ``_plain`` twins (the same layers without
shortcuts) on the same data without augmentation (``digits:pad=0``). Each architecture gets its best learning
rate from a sweep (:func:`train.experiments.runner.sweep_lr`, at the full run length on the first seed, so the
sweep's best run is also that seed's run); the other seeds train at that rate. Writes ``OUT/results.json``,
``OUT/table.md`` and ``OUT/degradation.png`` (training loss per epoch: plain dashed, residual solid, like He et
al. Fig. 6). Every run keeps all its per-epoch checkpoints: ``gradients`` reads epoch 1, ``lesion`` the last.
"""

from __future__ import annotations

import dataclasses
import pathlib

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "degradation"


@dataclasses.dataclass(frozen=True)
class Budget:
    depths: tuple[int, ...]
    epochs: int
    seeds: tuple[int, ...]
    dataset: str
    batch_size: int
    lrs: tuple[float, ...]


BUDGETS = {
    "smoke": Budget(depths=(20,), epochs=1, seeds=(0,), dataset="digits:pad=0,per_class=12,image_size=16",
                    batch_size=30, lrs=(0.05,)),
    # 16x16: the digits are 8x8, so 32x32 adds no information, only 4x the compute (ResNet-56 on the 2-core CPU:
    # about 32 s per epoch at 32x32)
    "default": Budget(depths=(20, 56), epochs=4, seeds=(0, 1, 2), dataset="digits:pad=0,image_size=16",
                      batch_size=64, lrs=(0.03, 0.1, 0.3)),
    "full": Budget(depths=(20, 56, 110), epochs=40, seeds=(0, 1, 2, 3, 4), dataset="digits:pad=0", batch_size=64,
                   lrs=(0.01, 0.03, 0.1, 0.3)),
}

CLAIM = R.Claim(
    lecture_ru="Поход с использованием skip connections позволил обучать нейросети со 152 слоями. […] Residual "
               "connections помогает течь градиентам лучше => можно брать сильно больше слоев!!!",
    lecture_en="The skip-connection approach made it possible to train networks with 152 layers. […] Residual "
               "connections help gradients flow better => one can stack many more layers. (The lecture does not"
               " describe degradation itself — training error rising with depth — it is He et al.'s "
               "observation; the lecture's claim tested here is that shortcuts let the deeper networks train.)",
    literature="He et al. 2015 (arXiv:1512.03385), Fig. 6 (CIFAR-10): plain-56 has higher training error than "
               "plain-20, ResNet-56 lower than ResNet-20; Table 6 test error ResNet-20 8.75%, ResNet-56 6.97%, "
               "ResNet-110 6.43% (plain nets: >10% at depth 56, Fig. 6 left).",
)


def arches(budget: Budget) -> list[str]:
    return [a for d in budget.depths for a in (f"resnet{d}", f"resnet{d}_plain")]


def base_config(budget: Budget, arch: str) -> TrainConfig:
    return TrainConfig(arch=arch, dataset=budget.dataset, epochs=budget.epochs, batch_size=budget.batch_size,
                       eval_every=1, keep=budget.epochs + 1, progress=False)


def run_id(arch: str, lr: float, budget: Budget, seed: int) -> str:
    return f"{arch}-lr{lr:g}-e{budget.epochs}-s{seed}"


def reuse_trained(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None, log,
                  depths: tuple[int, ...] | None = None) -> tuple[Budget, tuple[int, ...], R.Runner, dict]:
    """For the experiments built on this one (gradients, lesion): the budget, the seeds, a runner over the
    degradation runs and those runs
    (from ``OUT/../degradation/runs``, trained there first where missing), at ``depths`` (default: the budget's)."""
    budget = BUDGETS[budget_name]
    seeds = tuple(seeds or budget.seeds)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runner = R.Runner(out, log, runs=R.sibling_runs(out, "degradation"))
    chosen = budget if depths is None else dataclasses.replace(budget, depths=depths)
    return budget, seeds, runner, train_all(runner, chosen, seeds)


def train_all(runner: R.Runner, budget: Budget, seeds: tuple[int, ...]) -> dict:
    """Sweep, then train every (arch, seed); returns ``{arch: {"lr", "sweep", "runs": [run ids]}}``. The
    ``gradients`` and ``lesion`` experiments call this too: everything comes from the cache once trained."""
    return R.sweep_and_train(runner, arches(budget), lambda a: base_config(budget, a), lambda a: budget.lrs,
                             lambda a, lr, seed: run_id(a, lr, budget, seed), seeds)


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:
    budget = BUDGETS[budget_name]
    seeds = tuple(seeds or budget.seeds)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runner = R.Runner(out, log)
    trained = train_all(runner, budget, seeds)
    records = {arch: [runner.record(rid) for rid in t["runs"]] for arch, t in trained.items()}

    def final(arch: str, key: str) -> list[float]:
        return [r["final"][key] for r in records[arch]]

    rows = []
    for arch, t in trained.items():
        rows.append([f"`{arch}`", f"{t['lr']:g}", R.fmt(final(arch, "train_loss"), 4),
                     R.fmt([100 * (1 - v) for v in final(arch, "val_top1")], 2),
                     R.fmt([100 * (1 - v) for v in final(arch, "train_top1")], 2),
                     f"{sum(r.get('seconds', 0) for r in records[arch]) / len(records[arch]):.0f}"])
    measured = R.markdown_table(["architecture", "lr (swept)", "final train loss", "val error %",
                                 "train error %", "s / run"], rows)
    verdicts = []
    shallow = min(budget.depths)
    for d in budget.depths:
        if d != shallow:
            verdicts += [
                R.verdict(final(f"resnet{d}_plain", "train_loss"), final(f"resnet{shallow}_plain", "train_loss"),
                          "greater", f"plain-{d} ends with a higher training loss than plain-{shallow} (degradation)"),
                R.verdict(final(f"resnet{d}", "train_loss"), final(f"resnet{shallow}", "train_loss"), "less",
                          f"ResNet-{d} ends with a lower training loss than ResNet-{shallow} (depth helps with "
                          "shortcuts)"),
            ]
        verdicts += [
            R.verdict(final(f"resnet{d}", "train_loss"), final(f"resnet{d}_plain", "train_loss"), "less",
                      f"ResNet-{d} ends with a lower training loss than plain-{d}"),
            R.verdict([1 - v for v in final(f"resnet{d}", "val_top1")],
                      [1 - v for v in final(f"resnet{d}_plain", "val_top1")], "less",
                      f"ResNet-{d} has a lower val error than plain-{d}"),
        ]
    plot(records, out / "degradation.png", budget)
    setup = (f"`{budget.dataset}` (no augmentation), {budget.epochs} epochs, batch {budget.batch_size}, SGD "
             f"(Nesterov 0.9, cosine schedule, 1 warmup epoch, weight decay 5e-5), seeds {list(seeds)}. Learning "
             f"rate per architecture: best final val top-1 over {list(budget.lrs)} on seed {seeds[0]} (those "
             f"runs are seed {seeds[0]}'s runs, so its val numbers are slightly optimistic). Train loss is the "
             "mean over the last epoch's batches (BatchNorm in training mode), as in a training curve.")
    size = records[next(iter(records))][0]["config"]["image_size"]
    notes = (f"Reproduce: `python -m train.experiments degradation --budget {budget_name}`. The digits are 1,438 "
             f"training images of 8x8 pixels (upsampled to {size}x{size}), not CIFAR-10's 50,000 at 32x32: a much "
             f"easier task, trained for {budget.epochs} epoch(s) instead of 164, so the absolute errors are not "
             "comparable with He et al.'s; only the direction of each difference is.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds),
               "sweeps": {a: t["sweep"] for a, t in trained.items()},
               "lr": {a: t["lr"] for a, t in trained.items()},
               "runs": [r for recs in records.values() for r in recs]}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["degradation.png"], notes)
    return results


def plot(records: dict, path: pathlib.Path, budget: Budget) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = dict(zip(budget.depths, ("tab:blue", "tab:red", "tab:green"), strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arch, recs in records.items():
        depth = int(arch.removeprefix("resnet").split("_")[0])
        plain = arch.endswith("_plain")
        label = f"plain-{depth}" if plain else f"ResNet-{depth}"
        for ax, key, f in ((axes[0], "train_loss", lambda v: v), (axes[1], "val_top1", lambda v: 100 * (1 - v))):
            curves = [[f(m[key]) for m in r["metrics"]] for r in recs if r["metrics"]]
            if not curves:
                continue
            n = min(map(len, curves))
            arr = np.array([c[:n] for c in curves])
            ep = np.arange(1, n + 1)
            ax.plot(ep, arr.mean(0), "--" if plain else "-", color=colors[depth], label=label, lw=2 if plain else 1.5)
            if len(arr) > 1:
                ax.fill_between(ep, arr.min(0), arr.max(0), color=colors[depth], alpha=0.12)
    axes[0].set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log",
                title="training loss (dashed: plain, solid: ResNet)")
    axes[1].set(xlabel="epoch", ylabel="val error (%)", yscale="log", title="validation error")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("degradation on digits (mean over seeds, band = min..max)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
