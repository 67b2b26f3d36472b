"""``python -m train.experiments gradients``: do the plain nets' gradients vanish?

For the ``degradation`` runs (in ``OUT/../degradation/runs``, trained there first if missing; the same
budget), at initialisation (the run's seed) and at the end of epoch 1 (the run's checkpoint), on one batch of up to 256
training images without augmentation, BatchNorm in training mode as in a training step: the RMS gradient of
the cross-entropy with respect to each block's parameters, and the RMS of each block's output. Writes
``OUT/results.json``, ``OUT/table.md`` and ``OUT/gradients.png`` (per-block norms against block index, log
scale). The measure of vanishing is log10(RMS gradient of the first block / that of the last block).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib

from train.experiments import degradation as D
from train.experiments import runner as R

NAME = "gradients"
BUDGETS = D.BUDGETS
BATCH = 256

CLAIM = R.Claim(
    lecture_ru="В начале люди старались учить \"глубокие\" нейросети, но резко столкнулись с проблемой затухания "
               "градиентов, даже при правильных функциях активации. […] Ниже представлена схема и изначальная "
               "мотивация к использованию skip connections, а именно решение проблемы затухания градиентов.",
    lecture_en="At first people tried to train \"deep\" networks but ran straight into the vanishing-gradient "
               "problem, even with the right activation functions. […] Below is the scheme and the original "
               "motivation for skip connections, namely solving the vanishing-gradient problem.",
    literature="He et al. 2015 §4.1: with BatchNorm the plain nets' forward signals have non-zero variance and the "
               "backward gradients healthy norms, so degradation is 'unlikely to be caused by vanishing "
               "gradients' but an optimisation difficulty. Balduzzi et al. 2017 ('The shattered gradients "
               "problem', Fig. 1/3): plain-net gradients keep their norm but decorrelate (become white noise) "
               "with depth; residual gradients stay correlated.",
)


@functools.lru_cache(maxsize=8)
def _loss_and_grads(arch: str, channels: int):
    """The jitted ``(params, batch_stats, images, labels) -> ((loss, intermediates), grads)`` of ``arch``
    (BatchNorm in training mode, each block's output captured): the variables and the batch are arguments, not
    constants of the program, so one compile serves the initialisation and the checkpoint of every seed."""
    import jax
    import optax

    from cnnjax import models
    from cnnjax.models.cifar_resnet import CifarBasicBlock

    model = models.create(arch, num_classes=10, in_channels=channels)

    def loss_fn(params, batch_stats, images, labels):
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                  mutable=["batch_stats", "intermediates"],
                                  capture_intermediates=lambda m, method: isinstance(m, CifarBasicBlock)
                                  and method == "__call__")
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, upd["intermediates"]

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def block_stats(arch: str, variables: dict, images, labels) -> dict:
    """Per block (network order): RMS of the loss gradient over its parameters and RMS of its output, for the
    batch ``images``/``labels`` with BatchNorm in training mode."""
    import jax
    import jax.numpy as jnp

    from cnnjax.models.cifar_resnet import block_names

    names = block_names(int(arch.removeprefix("resnet").split("_")[0]))
    (loss, inter), grads = _loss_and_grads(arch, images.shape[-1])(variables["params"], variables["batch_stats"],
                                                                  jnp.asarray(images), jnp.asarray(labels))

    def rms(tree):
        leaves = jax.tree.leaves(tree)
        return float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves) / sum(g.size for g in leaves)))

    return {"loss": float(loss), "grad_rms": [rms(grads[n]) for n in names],
            "act_rms": [rms(inter[n]["__call__"]) for n in names]}


def log_ratio(values: list[float]) -> float:
    """log10(first / last)."""
    return math.log10(values[0] / values[-1]) if values[0] > 0 and values[-1] > 0 else -math.inf


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:

    from cnnjax import checkpoint, models
    from cnnjax import data as cdata
    from cnnjax.training.state import init_variables

    budget, seeds, runner, trained = D.reuse_trained(out, budget_name, seeds, log)
    out = pathlib.Path(out)
    source = cdata.load(budget.dataset)
    n = min(BATCH, source.info.num_train)
    batch = next(iter(source.plain_batches("train", n)))
    images, labels = batch["image"], batch["label"]
    stats = {}
    for arch, t in trained.items():
        for rid in t["runs"]:
            cached = out / "stats" / f"{rid}.json"  # a rerun (another table, an interruption) recomputes nothing
            if cached.exists():
                stats[rid] = json.loads(cached.read_text())
                continue
            cfg = json.loads((runner.workdir(rid) / "config.json").read_text())
            model = models.create(arch, num_classes=cfg["num_classes"], in_channels=cfg["channels"])
            init = init_variables(model, (1, cfg["image_size"], cfg["image_size"], cfg["channels"]), cfg["seed"])
            epoch1 = checkpoint.restore(runner.workdir(rid), step=cfg["steps_per_epoch"])
            stats[rid] = {"arch": arch, "seed": cfg["seed"], "init": block_stats(arch, init, images, labels),
                          "epoch1": block_stats(arch, epoch1, images, labels), "batch_images": n}
            cached.parent.mkdir(exist_ok=True)
            R.write_atomic(cached, json.dumps(stats[rid]))
            log(f"[gradients] {rid}: log10(first/last grad) init {log_ratio(stats[rid]['init']['grad_rms']):+.2f}, "
                f"epoch 1 {log_ratio(stats[rid]['epoch1']['grad_rms']):+.2f}")

    def ratios(arch: str, when: str) -> list[float]:
        return [log_ratio(s[when]["grad_rms"]) for s in stats.values() if s["arch"] == arch]

    rows = []
    for arch in trained:
        for when in ("init", "epoch1"):
            ss = [s[when] for s in stats.values() if s["arch"] == arch]
            rows.append([f"`{arch}`", when, R.fmt(ratios(arch, when), 2),
                         R.fmt([math.log10(max(s["grad_rms"]) / min(s["grad_rms"])) for s in ss], 2),
                         R.fmt([s["act_rms"][-1] for s in ss], 3)])
    measured = R.markdown_table(["architecture", "when", "log10(first / last block RMS grad)",
                                 "log10(max / min block RMS grad)", "last block output RMS"], rows)
    deep = max(budget.depths)
    verdicts = []
    for when in ("init", "epoch1"):
        verdicts.append(R.verdict(ratios(f"resnet{deep}_plain", when), ratios(f"resnet{deep}", when), "less",
                                  f"plain-{deep}'s gradient falls more from the last block to the first than "
                                  f"ResNet-{deep}'s ({when})"))
        verdicts.append(R.verdict(ratios(f"resnet{deep}_plain", when), -1.0, "less",
                                  f"plain-{deep}'s first-block gradient is < 1/10 of its last block's, i.e. "
                                  f"vanishing ({when})"))
    if deep != 20:
        verdicts.append(R.verdict(ratios(f"resnet{deep}_plain", "init"), ratios("resnet20_plain", "init"), "less",
                                  f"the plain net's gradient falls more at depth {deep} than at depth 20 (init)"))
    plot(stats, out / "gradients.png", budget)
    setup = (f"The `degradation` runs (`--budget {budget_name}`, seeds {list(seeds)}, their swept learning "
             f"rates) at initialisation and after epoch 1; one batch of {n} training images of "
             f"`{budget.dataset}`, BatchNorm in training mode. RMS gradient = sqrt(mean of squared loss gradients "
             "over the block's parameters: two convolutions, two BatchNorms).")
    notes = (f"Reproduce: `python -m train.experiments gradients --budget {budget_name}` (reuses the "
             "`degradation` runs in `OUT/../degradation/runs`). A log ratio near 0 means the first block gets as "
             "much gradient per parameter as the last; -1 means ten times less.")
    results = {"budget_config": dataclasses.asdict(budget), "seeds": list(seeds), "batch_images": n,
               "stats": stats}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results, ["gradients.png"], notes)
    return results


def plot(stats: dict, path: pathlib.Path, budget) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = dict(zip(budget.depths, ("tab:blue", "tab:red", "tab:green"), strict=False))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    arches = sorted({s["arch"] for s in stats.values()})
    for arch in arches:
        depth = int(arch.removeprefix("resnet").split("_")[0])
        plain = arch.endswith("_plain")
        label = f"plain-{depth}" if plain else f"ResNet-{depth}"
        for col, when in enumerate(("init", "epoch1")):
            for row, key in enumerate(("grad_rms", "act_rms")):
                arr = np.array([s[when][key] for s in stats.values() if s["arch"] == arch])
                x = np.linspace(0, 1, arr.shape[1])
                axes[row, col].plot(x, arr.mean(0), "--" if plain else "-", color=colors[depth], label=label)
    for col, when in enumerate(("at initialisation", "after epoch 1")):
        axes[0, col].set(title=f"RMS loss gradient per block, {when}", yscale="log")
        axes[1, col].set(title=f"RMS block output, {when}", yscale="log",
                         xlabel="block position (0 = first, 1 = last)")
    for ax in axes.flat:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
