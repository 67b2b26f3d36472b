"""``python -m train.experiments reproducibility``: the same network, different convolution algorithms.

The lecture's ``cudnn.benchmark`` warning made measurable: a convolution "can be implemented by entirely
different algorithms under the hood", and that hurts reproducibility. ResNet-20 on ``digits`` (16x16, with the
digits' shifts) is trained with each ``--conv-impl`` (``xla``: ``lax.conv``; ``gemm``: im2col + one product;
``winograd``: F(4x4, 3x3); ``fft``; ``auto``: the fastest per layer, measured once and cached, which is what
``cudnn.benchmark`` does), the same seeds, everything else equal; ``xla`` seed 0 is trained twice.

Measured from checkpoints every few steps: the relative L2 distance ``||θ_alg − θ_xla|| / ||θ_xla||`` of the
parameters at each step (same seed), against the rerun's (same algorithm) and against another seed's (a
different initialisation: the scale of "a different network"); final val top-1. Writes ``OUT/results.json``,
``OUT/table.md`` and ``OUT/reproducibility.png``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "reproducibility"
ALGORITHMS = ("gemm", "winograd", "fft", "auto")  # each compared with xla


@dataclasses.dataclass(frozen=True)
class Budget:
    algorithms: tuple[str, ...]
    epochs: int
    seeds: tuple[int, ...]
    dataset: str
    batch_size: int = 64
    lr: float = 0.1  # ResNet-20's best SGD rate in the degradation sweep on the same digits
    every: int = 4  # steps between checkpoints
    model_opt: tuple[str, ...] = ()


BUDGETS = {
    "smoke": Budget(("gemm",), 1, (0, 1), "digits:per_class=12,image_size=16", batch_size=30, every=2,
                    model_opt=("depth=8",)),
    "default": Budget(ALGORITHMS, 8, (0, 1, 2), "digits:image_size=16"),
    "full": Budget(ALGORITHMS, 40, (0, 1, 2, 3, 4), "digits"),
}

CLAIM = R.Claim(
    lecture_ru="Для использования наиболее подходящего алгоритма под вашу задачу и систему стоит использовать […] "
               "`torch.backends.cudnn.benchmark = True` […] Что для нас важно, что мы пользуемся некой абстракцией, "
               "которая может быть реализована через совершенно разные алгоритмы под капотом. За этим следуют некие "
               "проблемы воспроизводимости […] В PyTorch есть разные реализации в зависимости от системы, что "
               "влияет на воспроизводимость",
    lecture_en="To use the algorithm best suited to your task and system, set […] `torch.backends.cudnn.benchmark "
               "= True` […] What matters for us is that we use an abstraction that can be implemented by entirely "
               "different algorithms under the hood. Reproducibility problems follow from that […] PyTorch has "
               "different implementations depending on the system, which affects reproducibility.",
    literature="PyTorch's 'Reproducibility' notes: cudnn.benchmark selects algorithms by timing, so results can "
               "differ between runs and machines; `torch.use_deterministic_algorithms`. Floating-point addition is "
               "not associative, so algorithms that sum in different orders (GEMM, Winograd's transforms, FFT) "
               "give results that differ in the last bits; training amplifies such differences (chaotic "
               "divergence of SGD trajectories), while the final accuracy varies about as much as with the seed "
               "(e.g. Pham et al. 2020, 'Problems and opportunities in training deep learning software systems: "
               "an analysis of variance', ASE: accuracy spread from non-determinism alone up to ~10% on some nets, "
               "typically well below 1%).",
)


def run_id(impl: str, budget: Budget, seed: int, rerun: bool = False) -> str:
    return f"{impl}-e{budget.epochs}-lr{budget.lr:g}-s{seed}" + ("-rerun" if rerun else "")


def config(impl: str, budget: Budget, seed: int) -> TrainConfig:
    """SGD (cnnjax's defaults) at ``budget.lr``, one evaluation at the end, a checkpoint every ``budget.every``
    steps, all kept."""
    return TrainConfig(arch="resnet20", dataset=budget.dataset, epochs=budget.epochs, batch_size=budget.batch_size,
                       lr=budget.lr, conv_impl=impl, seed=seed, eval_every=budget.epochs,
                       checkpoint_every=budget.every, keep=10_000, progress=False, model_opt=budget.model_opt)


def trajectory(workdir: pathlib.Path) -> dict[int, dict]:
    """``{step: params}`` of every checkpoint of a run (host NumPy arrays)."""
    import jax

    from cnnjax import checkpoint

    store = checkpoint.CheckpointStore(checkpoint.checkpoint_dir(workdir), read_only=True, async_save=False)
    try:  # one store for every step (checkpoint.restore would open one per step)
        return {s: jax.device_get(store.restore(step=s)[0]["params"]) for s in store.steps()}
    finally:
        store.close()


def distance(a, b) -> float:
    """Relative L2 distance ``||a − b|| / ||b||`` of two parameter trees (float64)."""
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in lb)
    return math.sqrt(num / den)


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None,
        log: Callable[[str], None] = print) -> dict:
    budget = BUDGETS[budget_name]
    seeds = tuple(seeds or budget.seeds)
    if len(seeds) < 2:
        raise ValueError("reproducibility needs at least 2 seeds (the seed-to-seed scale)")
    out = pathlib.Path(out)
    runner = R.Runner(out, log)
    ids = {impl: [run_id(impl, budget, s) for s in seeds] for impl in ("xla", *budget.algorithms)}
    rerun = run_id("xla", budget, seeds[0], rerun=True)
    with R.compile_cache(out / "jax-cache"):  # the seeds (and the rerun) of an algorithm share one compile
        for impl, rids in ids.items():
            for rid, seed in zip(rids, seeds):
                runner.run(rid, config(impl, budget, seed))
        runner.run(rerun, config("xla", budget, seeds[0]))
    ref = {seed: trajectory(runner.workdir(rid)) for rid, seed in zip(ids["xla"], seeds)}
    steps = sorted(ref[seeds[0]])

    def curve(traj: dict, base: dict) -> list[float]:
        return [distance(traj[s], base[s]) for s in steps]

    dist = {impl: [curve(trajectory(runner.workdir(rid)), ref[seed]) for rid, seed in zip(ids[impl], seeds)]
            for impl in budget.algorithms}
    dist_rerun = curve(trajectory(runner.workdir(rerun)), ref[seeds[0]])
    dist_seed = curve(ref[seeds[1]], ref[seeds[0]])
    acc = {impl: [runner.record(r)["final"]["val_top1"] for r in rids] for impl, rids in ids.items()}
    log(f"[reproducibility] rerun distance {max(dist_rerun):.3g}; final distances "
        + ", ".join(f"{i} {sum(c[-1] for c in d) / len(d):.3g}" for i, d in dist.items()))
    verdicts = make_verdicts(dist, dist_rerun, acc, seeds)
    rows = [[f"`{impl}`", _fmt_e([c[0] for c in dist[impl]]), _fmt_e([c[len(steps) // 2] for c in dist[impl]]),
             _fmt_e([c[-1] for c in dist[impl]]), R.fmt(acc[impl]),
             R.fmt([abs(a - b) for a, b in zip(acc[impl], acc["xla"])])] for impl in budget.algorithms]
    rows.append(["`xla` rerun (same seed)", f"{dist_rerun[0]:.2g}", f"{dist_rerun[len(steps) // 2]:.2g}",
                 f"{dist_rerun[-1]:.2g}", "—", "—"])
    mid = len(steps) // 2
    rows.append([f"`xla` seed {seeds[1]} vs seed {seeds[0]}", f"{dist_seed[0]:.3g}", f"{dist_seed[mid]:.3g}",
                 f"{dist_seed[-1]:.3g}", R.fmt(acc["xla"]), R.fmt(_seed_gaps(acc["xla"]))])
    measured = R.markdown_table(
        ["algorithm vs `xla` (same seed)", f"distance at step {steps[0]}", f"step {steps[len(steps) // 2]}",
         f"step {steps[-1]}", "val top-1", "|Δ val top-1| vs xla"], rows)
    plot(steps, dist, dist_rerun, dist_seed, out / "reproducibility.png")
    arch = "resnet20" + (f" ({', '.join(budget.model_opt)})" if budget.model_opt else "")
    setup = (f"`{arch}` on `{budget.dataset}` (the digits' random shifts on), SGD lr {budget.lr:g} (cnnjax's "
             f"defaults otherwise), batch {budget.batch_size}, {budget.epochs} epochs, seeds {list(seeds)}; "
             f"checkpoints every {budget.every} steps. Distance: relative L2 of all parameters (BatchNorm "
             "statistics excluded) to the `xla` run of the same seed at the same step. The last column of the "
             "seed row is |Δ| between pairs of seeds (the seed-to-seed spread). The runs of an algorithm share one "
             "compiled program (JAX's persistent cache): the rerun tests the execution, not the compiler.")
    notes = (f"Reproduce: `python -m train.experiments reproducibility --budget {budget_name}`. `auto` times the "
             "candidates once and caches the choice ($CNNJAX_AUTOTUNE), so two `auto` runs on one machine agree; "
             "on another machine (or after clearing the cache) it may pick other algorithms — "
             "`cudnn.benchmark`'s reproducibility problem.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds), "steps": steps,
               "distance": dist, "distance_rerun": dist_rerun, "distance_seed": dist_seed, "val_top1": acc,
               "runs": [runner.record(r) for rids in ids.values() for r in rids] + [runner.record(rerun)]}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["reproducibility.png"],
                    notes)
    return results


def _fmt_e(values: list[float]) -> str:
    m, s = R.mean_std(values)
    return f"{m:.2g} ± {s:.1g}"


def _seed_gaps(values: list[float]) -> list[float]:
    return [abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]]


def make_verdicts(dist: dict, dist_rerun: list[float], acc: dict, seeds: tuple[int, ...]) -> list[R.Verdict]:
    """The rerun is bit-identical (its largest distance below every algorithm's first one: exact); each
    algorithm's distance grows over training (last > first, Welch over seeds); each algorithm changes val top-1
    less than the seed does (its paired |Δ| vs xla < the |Δ| between seeds, Welch)."""
    first = min(c[0] for d in dist.values() for c in d)
    out = [R.verdict([max(dist_rerun)], [first], "less", "the same seed and algorithm twice gives bit-identical "
                     "parameters (the rerun's largest distance is below every other algorithm's smallest)",
                     test="exact")]
    def log10(x: float) -> float:
        return math.log10(max(x, 1e-30))

    for impl, d in dist.items():
        out.append(R.verdict([log10(c[-1]) for c in d], [log10(c[0]) for c in d], "greater",
                             f"`{impl}` vs `xla`: the parameter distance grows during training (log10, last vs "
                             "first checkpoint)"))
    gaps = _seed_gaps(acc["xla"])
    for impl in dist:
        out.append(R.verdict([abs(a - b) for a, b in zip(acc[impl], acc["xla"])], gaps, "less",
                             f"`{impl}` changes val top-1 less than the seed does (paired |Δ| vs xla, against "
                             "|Δ| between seeds)"))
    return out


def plot(steps: list[int], dist: dict, dist_rerun: list[float], dist_seed: list[float], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for impl, d in dist.items():
        arr = np.asarray(d)
        ax.plot(steps, arr.mean(0), marker="o", ms=3, label=f"{impl} vs xla (mean of {len(d)} seeds)")
        ax.fill_between(steps, arr.min(0), arr.max(0), alpha=0.15)
    ax.plot(steps, dist_seed, "k--", label="xla: another seed")
    if max(dist_rerun) > 0:
        ax.plot(steps, dist_rerun, "k:", label="xla rerun (same seed)")
    else:
        ax.text(0.02, 0.02, "xla rerun, same seed: distance exactly 0 at every step", transform=ax.transAxes,
                fontsize=8)
    ax.set(yscale="log", xlabel="step", ylabel="relative L2 distance of the parameters",
           title="ResNet-20 on digits: one network, different convolution algorithms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
