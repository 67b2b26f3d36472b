"""``python -m train.experiments landscape``: the loss surface with and without shortcuts (Li et al. 2018).

With the trained nets of ``degradation`` (ResNet-20/56 and their ``_plain`` twins, the budget's seeds; cached in
``OUT/../degradation/runs``, trained there first if missing), around each run's final weights θ: the
cross-entropy ``L(θ + α δ + β η)`` on an ``n x n`` grid of α, β in [-1, 1] (Li et al.'s range), for two
Gaussian directions δ, η with Li et al.'s filter normalisation (each filter of a direction has the norm of the
weights' filter; biases and BatchNorm parameters are not moved). Directions are drawn from the seed, so
ResNet-d and plain-d of one seed (the same parameter shapes) get the same raw directions: a paired comparison.
The loss is taken on a fixed batch of training images without augmentation (the surface of the training
objective, as in Li et al. Fig. 5), BatchNorm in inference mode with the run's running statistics (a fixed
function of the parameters; Li et al. evaluate with ``net.eval()`` too).

Roughness, per run (:mod:`cnnjax.analysis.landscape`):

* **non-convex share**: the share of interior grid points where the 2x2 Hessian of the sampled surface (central
  differences, step 2 / (n - 1)) has a negative eigenvalue — a grid-resolution, 2-D analogue of Li et al.'s
  Fig. 7 maps of ``|λ_min / λ_max|``;
* **|λ_min / λ_max|** of the full-parameter Hessian at θ (all parameters, BatchNorm's included), by Lanczos
  on Hessian-vector products over the same images (Li et al. §6). Few iterations fit the CPU budget: the
  extreme Ritz values are inside the spectrum, λ_max converges fast, λ_min (the edge of a dense band near 0)
  slowly, so |λ_min| and most likely the ratio are underestimated, the same way for every network.

Writes ``OUT/results.json``, ``OUT/table.md``, ``OUT/landscape.png`` (contours of seed 0's surfaces on one
shared log colour scale and shared levels) and ``OUT/landscape_roughness.png`` (the 1-D slices β = 0 of every
seed and both roughness numbers per run). Each run's grid and eigenvalues are cached in ``OUT/grids/``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time

from train.experiments import degradation as D
from train.experiments import runner as R

NAME = "landscape"
BUDGETS = D.BUDGETS
SPAN = 1.0  # α, β in [-SPAN, SPAN], Li et al.'s range for filter-normalised directions
VMAX = 10.0  # the contour plot's top level in nats, as in Li et al.'s plot_2D.py


@dataclasses.dataclass(frozen=True)
class Grid:
    points: int  # grid points per axis (odd: the trained point is on the grid)
    images: int  # training images the loss is averaged over
    lanczos: int  # Lanczos iterations (Hessian-vector products) per run


GRIDS = {"smoke": Grid(points=3, images=32, lanczos=4),
         # on the shared 2-core CPU ResNet-56's forward pass over 256 16x16 images takes 0.34 s, so the 121-point
         # grid of one run 41 s, and one Hessian-vector product 3.4 s: 256 images and 8 Lanczos steps keep the 12
         # runs near 10 minutes (the degradation runs they read are trained first, ~10 minutes more)
         "default": Grid(points=11, images=256, lanczos=8),
         "full": Grid(points=21, images=1024, lanczos=40)}

CLAIM = R.Claim(
    lecture_ru="Почему skip connections работают? (еще одно объяснение) […] Существуют отдельные направления "
               "исследования ландшафта функции потерь нейронной сети (зависимость ошибки от параметров модели). "
               "В работе Li et al., 2017 например изобразили ландшафт функции потерь в архитектуре с skip "
               "connections и без них. […] Figure 1: The loss surfaces of ResNet-56 with/without skip "
               "connections. The proposed filter normalization scheme is used to enable comparisons of "
               "sharpness/flatness between the two figures.",
    lecture_en="Why do skip connections work? (another explanation) […] There is a separate line of research on "
               "the loss landscape of a neural network (how the error depends on the model's parameters). Li et "
               "al., 2017, for example, drew the loss landscape of an architecture with and without skip "
               "connections. […] (The lecture shows Li et al.'s Fig. 1 as that explanation but states no "
               "prediction in words; the prediction tested here — smooth, convex-like with shortcuts, chaotic "
               "without them at depth 56, both smooth at depth 20 — is Li et al.'s.)",
    literature="Li, Xu, Taylor, Studer & Goldstein 2018 ('Visualizing the Loss Landscape of Neural Nets', "
               "NeurIPS), Fig. 1 and Fig. 5 (CIFAR-10, filter-normalised 2-D surfaces, α, β in [-1, 1]): "
               "ResNet-20/56/110 have smooth, nearly convex basins; without shortcuts the surface becomes "
               "chaotic with depth — plain-20 still smooth, plain-56 chaotic with many local minima, plain-110 "
               "worse. Fig. 7 / §6: |λ_min/λ_max| of the Hessian stays near 0 (blue) over the ResNet-56 surface "
               "and is large (yellow) over much of plain-56's.",
)


def _depth(arch: str) -> int:
    return int(arch.removeprefix("resnet").split("_")[0])


@functools.lru_cache(maxsize=8)
def loss_fn(arch: str, channels: int, num_classes: int = 10):
    """``loss(params, batch_stats, images, labels)``: the mean cross-entropy (nats) of ``arch`` on ``images``
    (N, H, W, C) / ``labels`` (N,), BatchNorm in inference mode with ``batch_stats``. One function object per
    architecture, so the grid evaluator and the Hessian-vector product compile once for all its seeds."""
    import optax

    from cnnjax import models

    model = models.create(arch, num_classes=num_classes, in_channels=channels)

    def loss(params, batch_stats, images, labels):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def analyse_run(arch: str, variables: dict, images, labels, grid: Grid, seed: int, num_classes: int = 10) -> dict:
    """One run's surface and roughness numbers: ``{"alphas", "betas", "surface" (n, n) nats, "nonconvex_share",
    "lam_min", "lam_max", "ratio", "ritz", "parameters", "seconds_grid", "seconds_hessian"}`` (seconds include
    the first compilation for an architecture)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnnjax.analysis import landscape as L

    params = variables["params"]
    loss = loss_fn(arch, images.shape[-1], num_classes)
    data = (variables["batch_stats"], jnp.asarray(images), jnp.asarray(labels))
    k1, k2 = jax.random.split(jax.random.key(10_000 + seed))  # the same raw directions for ResNet-d and plain-d
    d1, d2 = L.random_direction(k1, params), L.random_direction(k2, params)
    axis = np.linspace(-SPAN, SPAN, grid.points)
    t0 = time.perf_counter()
    surface = L.loss_surface(loss, params, d1, d2, axis, axis, *data)
    t1 = time.perf_counter()
    hvp, n = L.hvp_fn(loss, params, *data)
    ritz = L.lanczos(hvp, n, grid.lanczos, jax.random.key(seed))
    t2 = time.perf_counter()
    h = float(axis[1] - axis[0])
    lam_min, lam_max = float(ritz[0]), float(ritz[-1])
    return {"alphas": axis.tolist(), "betas": axis.tolist(), "surface": surface.tolist(),
            "nonconvex_share": L.nonconvex_share(surface, h, h), "lam_min": lam_min, "lam_max": lam_max,
            "ratio": L.curvature_ratio(lam_min, lam_max), "ritz": ritz.tolist(), "parameters": n,
            "seconds_grid": t1 - t0, "seconds_hessian": t2 - t1}


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:
    import numpy as np

    from cnnjax import checkpoint
    from cnnjax import data as cdata

    t_start = time.perf_counter()
    budget, seeds, runner, trained = D.reuse_trained(out, budget_name, seeds, log)
    t_trained = time.perf_counter()
    out = pathlib.Path(out)
    grid = GRIDS[budget_name]
    source = cdata.load(budget.dataset)
    n_img = min(grid.images, source.info.num_train)
    batch = next(iter(source.plain_batches("train", n_img)))
    images, labels = batch["image"], batch["label"]
    per_run = {}
    for arch, t in trained.items():
        for rid in t["runs"]:
            cached = out / "grids" / f"{rid}-g{grid.points}-n{n_img}-k{grid.lanczos}.json"
            if cached.exists():  # a rerun (another table, an interruption) recomputes nothing
                per_run[rid] = json.loads(cached.read_text())
                continue
            cfg = json.loads((runner.workdir(rid) / "config.json").read_text())
            res = analyse_run(arch, checkpoint.restore(runner.workdir(rid)), images, labels, grid, cfg["seed"],
                              cfg["num_classes"])
            per_run[rid] = {"arch": arch, "depth": _depth(arch), "seed": cfg["seed"], "images": n_img, **res}
            cached.parent.mkdir(exist_ok=True)
            R.write_atomic(cached, json.dumps(per_run[rid]))
            log(f"[landscape] {rid}: centre loss {res['surface'][grid.points // 2][grid.points // 2]:.4f}, "
                f"non-convex share {res['nonconvex_share']:.2f}, λ_min {res['lam_min']:+.3g}, λ_max "
                f"{res['lam_max']:.3g}, ratio {res['ratio']:.3g} ({res['seconds_grid']:.1f} s grid, "
                f"{res['seconds_hessian']:.1f} s Hessian)")

    def vals(arch: str, key: str) -> list[float]:
        return [r[key] for r in per_run.values() if r["arch"] == arch]

    def by_seed(arch: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in per_run.values() if r["arch"] == arch}

    c = grid.points // 2
    rows = []
    for arch in trained:
        rr = [r for r in per_run.values() if r["arch"] == arch]
        rows.append([f"`{arch}`", R.fmt([r["surface"][c][c] for r in rr], 4),
                     "{:.3g} ± {:.2g}".format(*R.mean_std([float(np.max(r["surface"])) for r in rr])),
                     R.fmt(vals(arch, "nonconvex_share"), 3), R.fmt(vals(arch, "lam_max"), 3),
                     R.fmt(vals(arch, "lam_min"), 3), R.fmt(vals(arch, "ratio"), 4)])
    measured = R.markdown_table(["network", "loss at θ (nats)", "max loss on the grid", "non-convex share",
                                 "λ_max", "λ_min", "|λ_min / λ_max|"], rows)
    # the plain - ResNet difference at each depth, with its interval, as numbers (Li et al. expect ~0 at depth
    # 20: a verdict cannot say "no difference", so the depth-20 contrast is reported and tested as an interaction)
    diff_rows = []
    for d in budget.depths:
        cells = [f"{d}"]
        for key in ("nonconvex_share", "ratio"):
            diff, lo, hi = R.welch_interval(vals(f"resnet{d}_plain", key), vals(f"resnet{d}", key))
            cells.append(f"{diff:+.4g} [{lo:+.4g}, {hi:+.4g}]")
        diff_rows.append(cells)
    measured += "\n\nplain − ResNet at each depth (mean difference, Welch 95% CI):\n\n" + R.markdown_table(
        ["depth", "non-convex share", "|λ_min / λ_max|"], diff_rows)

    names = {"nonconvex_share": "non-convex share of the grid", "ratio": "|λ_min/λ_max|"}
    verdicts = []
    shallow = min(budget.depths)
    deep_ones = [d for d in budget.depths if d != shallow] or [shallow]
    for d in deep_ones:
        for key, label in names.items():
            verdicts.append(R.verdict(vals(f"resnet{d}_plain", key), vals(f"resnet{d}", key), "greater",
                                      f"plain-{d}'s surface is rougher than ResNet-{d}'s ({label})"))
        if d == shallow:
            continue
        for key, label in names.items():
            verdicts.append(R.verdict(vals(f"resnet{d}_plain", key), vals(f"resnet{shallow}_plain", key),
                                      "greater", f"without shortcuts depth makes the surface rougher: plain-{d} "
                                      f"> plain-{shallow} ({label})"))
        for key, label in names.items():
            gaps = {}
            for dd in (d, shallow):
                p, r = by_seed(f"resnet{dd}_plain", key), by_seed(f"resnet{dd}", key)
                gaps[dd] = [p[s] - r[s] for s in sorted(set(p) & set(r))]  # paired: the same directions
            verdicts.append(R.verdict(gaps[d], gaps[shallow], "greater",
                                      f"shortcuts matter more at depth {d} than at {shallow}: (plain − ResNet) "
                                      f"at {d} > at {shallow} ({label}, per-seed differences)"))
    plot(per_run, out, budget.depths)
    seconds = {"degradation_runs_s": t_trained - t_start,
               "grid_s": sum(r["seconds_grid"] for r in per_run.values()),
               "hessian_s": sum(r["seconds_hessian"] for r in per_run.values())}
    setup = (f"The trained nets of `degradation --budget {budget_name}` at depths {list(budget.depths)} (seeds "
             f"{list(seeds)}, their swept learning rates, final checkpoint). Loss: mean cross-entropy over "
             f"{n_img} training images of `{budget.dataset}` (no augmentation), BatchNorm in inference mode. "
             f"Grid {grid.points}x{grid.points}, α, β in [-{SPAN:g}, {SPAN:g}] along two filter-normalised "
             "Gaussian directions (biases and BatchNorm parameters not moved; the same raw directions for "
             "ResNet-d and plain-d of a seed). Non-convex share: interior points whose central-difference 2x2 "
             "Hessian of the surface has a negative eigenvalue beyond 10⁻³ of the point's positive one (and "
             "beyond float32 rounding). λ_min, λ_max:"
             f" extreme Ritz values of {grid.lanczos} Lanczos steps on Hessian-vector products of the full "
             f"parameter vector (units: nats per squared parameter unit).")
    notes = (f"Reproduce: `python -m train.experiments landscape --budget {budget_name}` (reuses the "
             "`degradation` runs in `OUT/../degradation/runs`). Li et al. trained for 300 epochs on CIFAR-10; "
             f"these nets had {budget.epochs} epochs on 8x8 digits. Few Lanczos steps: λ_min is an estimate from "
             "inside the spectrum, so |λ_min| (and most likely the ratio) is underestimated. Time: the grids "
             f"{seconds['grid_s']:.0f} s, the Hessians {seconds['hessian_s']:.0f} s (this invocation; cached "
             "runs count their first computation).")
    results = {"budget_config": dataclasses.asdict(budget), "grid": dataclasses.asdict(grid), "seeds": list(seeds),
               "images": n_img, "seconds": seconds, "runs": [runner.record(rid) for t in trained.values()
                                                              for rid in t["runs"]],
               "landscapes": per_run}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results,
                    ["landscape.png", "landscape_roughness.png"], notes)
    return results


def plot(per_run: dict, out: pathlib.Path, depths: tuple[int, ...]) -> None:
    """``landscape.png``: one contour panel per network (rows: depth; columns: ResNet, plain) of the first seed's
    surface, one shared log colour scale and one shared set of contour levels; ``landscape_roughness.png``: the
    β = 0 slices of every seed (log loss) and both roughness numbers per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    arches = [a for d in depths for a in (f"resnet{d}", f"resnet{d}_plain")]
    first = {a: min((r for r in per_run.values() if r["arch"] == a), key=lambda r: r["seed"]) for a in arches}
    allv = np.concatenate([np.ravel(r["surface"]) for r in per_run.values()])
    # one colour scale and one set of levels for every panel, log-spaced from the lowest loss to VMAX nats; higher
    # losses take the top colour (Li et al.'s plot_2D.py draws levels 0.1..10 only)
    lo = max(float(allv.min()), 1e-4)
    hi = max(VMAX, 1.01 * lo)
    levels = np.geomspace(lo, hi, 22)
    norm = LogNorm(lo, hi)
    fig, axes = plt.subplots(len(depths), 2, figsize=(10, 4.8 * len(depths)), squeeze=False)
    cs = None
    for ax, arch in zip(axes.flat, arches, strict=True):
        r = first[arch]
        a, b = np.asarray(r["alphas"]), np.asarray(r["betas"])
        z = np.clip(np.asarray(r["surface"]), lo, None)
        bb, aa = np.meshgrid(b, a)
        cs = ax.contourf(aa, bb, z, levels=levels, norm=norm, cmap="viridis", extend="max")
        ax.contour(aa, bb, z, levels=levels, colors="k", linewidths=0.4, alpha=0.5)
        ax.plot(0, 0, "r+", ms=10)
        d = _depth(arch)
        label = f"plain-{d}" if arch.endswith("_plain") else f"ResNet-{d}"
        ax.set(title=f"{label} (seed {r['seed']}): loss at θ {r['surface'][len(a) // 2][len(b) // 2]:.3g}\n"
                     f"non-convex share {r['nonconvex_share']:.2f}, |λmin/λmax| {r['ratio']:.3f}",
               xlabel="α (direction δ)", ylabel="β (direction η)", aspect="equal")
        ax.title.set_fontsize(10)
    fig.colorbar(cs, ax=axes, label=f"training loss (nats, log scale, same levels in every panel; > {VMAX:g}: top "
                 "colour)", ticks=[t for t in (1e-3, 1e-2, 0.03, 0.1, 0.3, 1, 3, 10) if lo <= t <= hi])
    fig.suptitle("filter-normalised loss surfaces around the trained weights (Li et al. 2018)")
    fig.savefig(out / "landscape.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    colors = {a: c for a, c in zip(arches, ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple",
                                            "tab:brown"), strict=False)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arch in arches:
        d = _depth(arch)
        plain = arch.endswith("_plain")
        label = f"plain-{d}" if plain else f"ResNet-{d}"
        rr = sorted((r for r in per_run.values() if r["arch"] == arch), key=lambda r: r["seed"])
        for i, r in enumerate(rr):
            c = len(r["betas"]) // 2
            axes[0].plot(r["alphas"], np.asarray(r["surface"])[:, c], "--" if plain else "-", color=colors[arch],
                         label=label if i == 0 else None, lw=1.2, alpha=0.8)
        x = arches.index(arch)
        for ax, key in ((axes[1], "nonconvex_share"), (axes[2], "ratio")):
            v = [r[key] for r in rr]
            ax.bar(x, np.mean(v), color=colors[arch], alpha=0.5, hatch="//" if plain else None)
            ax.plot([x] * len(v), v, "ko", ms=4)
    names = [f"plain-{_depth(a)}" if a.endswith("_plain") else f"ResNet-{_depth(a)}" for a in arches]
    axes[0].set(yscale="log", xlabel="α (β = 0)", ylabel="training loss (nats)", title="1-D slices, every seed")
    axes[0].legend(fontsize=8)
    axes[1].set(title="share of grid points locally non-convex", ylim=(0, 1))
    axes[2].set(title="|λ_min / λ_max| of the Hessian at θ (Lanczos)")
    for ax in axes[1:]:
        ax.set_xticks(range(len(arches)), names)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "landscape_roughness.png", dpi=100)
    plt.close(fig)
