"""``python -m train.experiments shift``: shift equivariance and invariance (lecture; Zhang 2019).

Four classifiers train on ``shapes`` whose shape centres lie in the LEFT half of the image
(``train_region=left``; the in-region val set is also left, so the learning-rate sweep never sees the test):

* ``mlp``: flatten + dense layers (no convolution);
* ``resnet8_flatten``: a CIFAR ResNet-8 (``--arch resnet20 --model-opt depth=8``) whose head is dense over the
  flattened last feature map (``pool=flatten``, LeNet-style: it knows where each feature is);
* ``resnet8``: the same backbone with global average pooling before the head (the CIFAR ResNet's own);
* ``resnet8_blurpool``: ``resnet8`` anti-aliased (``antialias=True``: BlurPool before each subsampling, Zhang 2019).

The three CNNs share the backbone, so ``resnet8_flatten`` vs ``resnet8`` isolates the pooling head and ``resnet8``
vs ``resnet8_blurpool`` isolates BlurPool. Each model gets its best learning rate from a sweep on the first seed
(:func:`train.experiments.runner.sweep_lr`; those runs are that seed's runs). Then, for every trained run, at test
time (BatchNorm's running statistics):

* accuracy in the train region (left) and on the OTHER half (fresh val images with ``val_region=right``);
* accuracy against a horizontal circular shift of 0..S/2 pixels of probe images whose shape lies entirely in the
  left half (so at S/2 it lies entirely in the right half and never wraps; only the background wraps);
* Zhang's consistency (:func:`cnnjax.analysis.equivariance.consistency`): how often two random shifts of up to
  ``max_shift`` pixels in each direction give the same top-1 class;
* the equivariance error of the last feature map (N, S/4, S/4, 64) before the head
  (:func:`cnnjax.analysis.equivariance.equivariance_error`, L2, circular, edge units excluded): how far
  ``features(shift(x, s))`` is from ``shift(features(x), round(s / 4))``, for s = 1..S/2. The MLP has no feature
  map (its hidden layer is not indexed by position): N/A.

Writes ``OUT/results.json``, ``OUT/table.md``, ``OUT/shift_accuracy.png`` and ``OUT/shift_equivariance.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

from train.config import TrainConfig
from train.experiments import runner as R

NAME = "shift"

# model name -> (arch, --model-opt items without the depth); the CNNs take depth=Budget.depth
MODELS = {"mlp": ("mlp", ()), "resnet8_flatten": ("resnet20", ("pool=flatten",)), "resnet8": ("resnet20", ()),
          "resnet8_blurpool": ("resnet20", ("antialias=True",))}
LABELS = {"mlp": "MLP", "resnet8_flatten": "CNN + flatten + dense head", "resnet8": "CNN + GAP",
          "resnet8_blurpool": "CNN + GAP + BlurPool"}
COLORS = {"mlp": "tab:gray", "resnet8_flatten": "tab:orange", "resnet8": "tab:blue", "resnet8_blurpool": "tab:green"}


@dataclasses.dataclass(frozen=True)
class Budget:
    depth: int  # of the CIFAR ResNets (6n + 2)
    image_size: int
    num_train: int
    num_val: int
    probe: int  # probe images for the shift curve (shape entirely in the left half)
    epochs: int
    seeds: tuple[int, ...]
    batch_size: int
    lrs_mlp: tuple[float, ...]
    lrs_cnn: tuple[float, ...]
    shift_step: int  # pixels between the points of the shift curve
    max_shift: int  # consistency: random shifts in [-max_shift, max_shift] pixels, both axes
    repeats: int  # consistency: random pairs per image

    @property
    def dataset(self) -> str:
        return (f"shapes:train_region=left,val_region=left,num_train={self.num_train},num_val={self.num_val},"
                f"image_size={self.image_size}")


BUDGETS = {
    # the pipeline only: num_val = probe, so the left, right and probe sets share one compiled program per model
    "smoke": Budget(depth=8, image_size=24, num_train=96, num_val=24, probe=24, epochs=1, seeds=(0,), batch_size=32,
                    lrs_mlp=(0.02,), lrs_cnn=(0.1,), shift_step=6, max_shift=3, repeats=1),
    # measured on the 2-core CPU: a ResNet-8 run of 6 epochs x 4,000 images at 24x24 takes about 40-60 s (BlurPool:
    # about 65 s, its strided convolutions run at full resolution), an MLP run about 7 s; at 32x32 or with ResNet-20
    # the 16 runs do not fit in 15 minutes. Fewer steps leave the nets at chance (the shapes task has a plateau).
    "default": Budget(depth=8, image_size=24, num_train=4000, num_val=500, probe=500, epochs=6, seeds=(0, 1, 2),
                      batch_size=64, lrs_mlp=(0.02, 0.05), lrs_cnn=(0.05, 0.1), shift_step=1, max_shift=3,
                      repeats=4),
    "full": Budget(depth=20, image_size=32, num_train=10000, num_val=1000, probe=1000, epochs=30,
                   seeds=(0, 1, 2, 3, 4), batch_size=64, lrs_mlp=(0.01, 0.02, 0.05), lrs_cnn=(0.03, 0.05, 0.1, 0.2),
                   shift_step=1, max_shift=4, repeats=8),
}

CLAIM = R.Claim(
    lecture_ru="Мы бы хотели, чтобы модель учились распознавать объекты независимо от их пространственных "
               "координат: яблоко не перестанет быть яблоком, если мы его сдвинем чуть влево перед фотографией. […] "
               "Мы можем использовать в качестве базового блока не линейный слой, который не эквивариантен "
               "относительно сдвига, а обучаемый фильтр. […] Операция свертки эквивариантна относительно сдвигов, "
               "то есть закладывает inductive bias в нашу модель",
    lecture_en="We would like the model to learn to recognise objects regardless of their spatial coordinates: an "
               "apple does not stop being an apple if we move it a little to the left before taking the photo. […] "
               "As the basic block we can use, instead of a linear layer, which is not shift-equivariant, a "
               "trainable filter. […] Convolution is shift-equivariant, i.e. it builds an inductive bias into our "
               "model. (The lecture says no more on invariance of the prediction: that global average pooling over "
               "an equivariant map makes the classifier approximately shift-invariant, and that strided "
               "downsampling breaks equivariance, are the standard argument and Zhang 2019's finding, not the "
               "lecture's.)",
    literature="Zhang 2019 ('Making Convolutional Networks Shift-Invariant Again', ICML): standard CNNs are not "
               "shift-invariant (Fig. 1: the probability of the correct class jumps as an image is shifted "
               "pixel by pixel, AlexNet on ImageNet, VGG on CIFAR-10), because max-pooling and strided "
               "convolution alias; BlurPool (low-pass filter before subsampling) raises the consistency of "
               "ImageNet ResNet-50 under random shifts from about 89.2% to 91.3% (Bin-5 filter; Rect-2 and "
               "Tri-3 in between) and its top-1 accuracy by about 0.5-0.9 points (Table, ResNet-50 row).",
)


def depth_opt(budget: Budget) -> str:
    return f"depth={budget.depth}"


def base_config(budget: Budget, model: str) -> TrainConfig:
    arch, opts = MODELS[model]
    model_opt = opts if arch == "mlp" else (depth_opt(budget), *opts)
    return TrainConfig(arch=arch, dataset=budget.dataset, epochs=budget.epochs, batch_size=budget.batch_size,
                       eval_every=1, keep=1, model_opt=model_opt, progress=False)


def run_id(model: str, lr: float, budget: Budget, seed: int) -> str:
    name = model.replace("resnet8", f"resnet{budget.depth}")
    return f"{name}-lr{lr:g}-e{budget.epochs}-s{seed}"


def train_all(runner: R.Runner, budget: Budget, seeds: tuple[int, ...]) -> dict:
    """Sweep on ``seeds[0]`` (the best run is that seed's run), then the other seeds at the best rate:
    ``{model: {"lr", "sweep", "runs": [run ids]}}``."""
    return R.sweep_and_train(runner, MODELS, lambda m: base_config(budget, m),
                             lambda m: budget.lrs_mlp if m == "mlp" else budget.lrs_cnn,
                             lambda m, lr, seed: run_id(m, lr, budget, seed), seeds)


# ------------------------------------------------------------------------------------------ test-time probes


def probe_images(num: int, size: int, *, seed: int = 0, stream: int = 2, oversample: int = 8) -> dict:
    """``num`` ``shapes`` images (``image`` uint8 NHWC (num, S, S, 3), ``label`` (num,), ``alpha`` the shape's
    coverage (num, S, S) in [0, 1]) whose shape covers only columns
    ``< S / 2``: shifted right by up to S/2 pixels (circularly) the shape stays whole and ends in the right half.
    Drawn from ``oversample * num`` left-region images of their own stream (not the train or val images)."""
    import numpy as np

    from cnnjax.data.shapes import render_shapes

    d = render_shapes(oversample * num, size, region="left", seed=seed, stream=stream)
    cols = np.nonzero(d["alpha"].max(axis=1) > 0)  # (image, column) pairs the shape touches
    right_edge = np.full(len(d["label"]), -1)
    np.maximum.at(right_edge, cols[0], cols[1])
    keep = np.flatnonzero((right_edge >= 0) & (right_edge < size // 2))[:num]
    if len(keep) < num:
        raise ValueError(f"only {len(keep)} of {oversample * num} images have their shape in the left half")
    return {"image": d["image"][keep], "label": d["label"][keep], "alpha": d["alpha"][keep]}


def normalise(raw, mean, std):
    """uint8 NHWC -> float32 ``(raw / 255 - mean) / std`` (per channel), as the data pipeline feeds the model."""
    import numpy as np

    return ((raw.astype(np.float32) / np.float32(255.0)) - np.asarray(mean, np.float32)) / np.asarray(std,
                                                                                                       np.float32)


@functools.lru_cache(maxsize=16)
def _fns(arch: str, model_opt: tuple[str, ...], num_classes: int, channels: int):
    """Jitted ``logits(variables, x)`` and ``features(variables, x)`` (NHWC float32) of a run's model."""
    import jax

    from cnnjax import models
    from train.config import model_options

    model = models.create(arch, num_classes=num_classes, in_channels=channels,
                          **model_options(arch, model_opt))
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))
    feats = jax.jit(lambda v, x: model.apply(v, x, train=False, method="features"))
    return logits, feats


def shifted_accuracy(logits_fn, images, labels, shifts: list[int]) -> list[float]:
    """Top-1 accuracy of ``logits_fn`` (NHWC -> (N, K)) on ``images`` rolled right by each of ``shifts`` pixels."""
    import jax.numpy as jnp

    from cnnjax.analysis.equivariance import circular_shift

    y = jnp.asarray(labels)
    return [float(jnp.mean(jnp.argmax(logits_fn(circular_shift(images, (0, s))), -1) == y)) for s in shifts]


def feature_equivariance(feature_fn, images, shifts: list[int], border: int = 1) -> list[float]:
    """L2 equivariance error of ``feature_fn`` (NHWC -> (N, h, w, C)) for horizontal circular shifts of
    ``shifts`` pixels (the map shifted by ``round(s * w / W)`` units; ``border`` edge units left out)."""
    from cnnjax.analysis.equivariance import equivariance_error

    return [float(equivariance_error(feature_fn, images, (0, s), mode="circular", border=border, norm="l2"))
            for s in shifts]


def evaluate_run(cfg: dict, variables: dict, sets: dict, budget: Budget, num_classes: int) -> dict:
    """Every test-time number of one trained run (see the module docstring); fractions in [0, 1]."""
    import jax

    from cnnjax.analysis.equivariance import consistency

    logits, feats = _fns(cfg["arch"], tuple(cfg.get("model_opt") or ()), num_classes, 3)
    lg = functools.partial(logits, variables)
    half = budget.image_size // 2
    shifts = list(range(0, half + 1, budget.shift_step))
    if shifts[-1] != half:
        shifts.append(half)

    def acc(name):
        return shifted_accuracy(lg, sets[name]["image"], sets[name]["label"], [0])[0]

    out = {"in_region": acc("left"), "other_half": acc("right"), "shifts": shifts,
           "shift_accuracy": shifted_accuracy(lg, sets["probe"]["image"], sets["probe"]["label"], shifts)}
    # no labels: only the agreement is used (the accuracies are above), so the unshifted pass is not compiled
    c = consistency(lg, sets["left"]["image"], jax.random.key(cfg["seed"]), max_shift=budget.max_shift,
                    repeats=budget.repeats, batch_size=len(sets["left"]["label"]))
    out["consistency"] = c["consistency"]
    if cfg["arch"] == "mlp":
        out["feature_equivariance"] = None
    else:
        out["feature_equivariance"] = feature_equivariance(functools.partial(feats, variables),
                                                           sets["probe"]["image"], shifts[1:])
    return out


def eval_sets(budget: Budget, source) -> dict:
    """Normalised NHWC float32 sets: ``left`` (the run's val split), ``right`` (the other half, its own
    images) and ``probe`` (:func:`probe_images`)."""
    import jax.numpy as jnp

    from cnnjax.data.shapes import render_shapes

    mean, std = source.info.mean, source.info.std
    val = next(iter(source.plain_batches("val", source.info.num_val)))
    right = render_shapes(budget.num_val, budget.image_size, region="right", seed=0, stream=1)
    probe = probe_images(budget.probe, budget.image_size)
    return {"left": {"image": jnp.asarray(val["image"]), "label": jnp.asarray(val["label"])},
            "right": {"image": jnp.asarray(normalise(right["image"], mean, std)), "label": right["label"]},
            "probe": {"image": jnp.asarray(normalise(probe["image"], mean, std)), "label": probe["label"]}}


# -------------------------------------------------------------------------------------------------- run


def run(out: pathlib.Path, budget_name: str, seeds: tuple[int, ...] | None = None, log=print) -> dict:
    import numpy as np

    from cnnjax import checkpoint
    from cnnjax import data as cdata

    budget = BUDGETS[budget_name]
    seeds = tuple(seeds or budget.seeds)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runner = R.Runner(out, log)
    trained = train_all(runner, budget, seeds)
    source = cdata.load(budget.dataset)
    sets = eval_sets(budget, source)
    evals: dict[str, list[dict]] = {}
    for model, t in trained.items():
        evals[model] = []
        for rid in t["runs"]:
            cfg = json.loads((runner.workdir(rid) / "config.json").read_text())
            e = evaluate_run(cfg, checkpoint.restore(runner.workdir(rid)), sets, budget, source.info.num_classes)
            evals[model].append({"run_id": rid, "seed": cfg["seed"], **e})
            log(f"[shift] {rid}: in-region {e['in_region']:.3f}, other half {e['other_half']:.3f}, "
                f"consistency {e['consistency']:.3f}")

    def col(model, key):
        return [e[key] for e in evals[model]]

    def drop(model):  # in-region minus other-half accuracy (points lost by moving to the other half)
        return [e["in_region"] - e["other_half"] for e in evals[model]]

    def eq_mean(model):
        return [float(np.mean(e["feature_equivariance"])) for e in evals[model]]

    shifts = evals["mlp"][0]["shifts"]
    stride_shifts = [i for i, s in enumerate(shifts[1:]) if s % 4 == 0]
    rows = []
    for model, t in trained.items():
        eq = "N/A (no feature map)" if model == "mlp" else R.fmt(eq_mean(model), 3)
        eq4 = ("—" if model == "mlp" or not stride_shifts else
               R.fmt([float(np.mean([e["feature_equivariance"][i] for i in stride_shifts])) for e in evals[model]], 3))
        rows.append([f"`{model}` ({LABELS[model]})", f"{t['lr']:g}",
                     R.fmt([100 * v for v in col(model, "in_region")], 1),
                     R.fmt([100 * v for v in col(model, "other_half")], 1),
                     R.fmt([100 * e["shift_accuracy"][-1] for e in evals[model]], 1),
                     R.fmt([100 * v for v in col(model, "consistency")], 1), eq, eq4])
    measured = R.markdown_table(
        ["model", "lr (swept)", "val acc % in region (left)", "val acc % other half (right)",
         f"probe acc % at shift {shifts[-1]} px", f"consistency % (±{budget.max_shift} px)",
         f"feature equivariance error (mean, s = 1..{shifts[-1]} px)", "… at s = multiples of 4 px"], rows)
    curve_rows = [[f"`{m}`"] + [R.fmt([100 * e["shift_accuracy"][i] for e in evals[m]], 1) for i in
                                range(len(shifts))] for m in MODELS]
    measured += "\n\nProbe accuracy % against the horizontal shift (px):\n\n" + R.markdown_table(
        ["model"] + [str(s) for s in shifts], curve_rows)
    verdicts = [
        R.verdict(col("resnet8", "other_half"), col("mlp", "other_half"), "greater",
                  "the GAP CNN is more accurate on the other half than the MLP"),
        R.verdict(col("resnet8", "other_half"), col("resnet8_flatten", "other_half"), "greater",
                  "the GAP CNN is more accurate on the other half than the same CNN with a flatten + dense head"),
        R.verdict(drop("resnet8"), drop("resnet8_flatten"), "less",
                  "the GAP CNN loses less accuracy from its train half to the other half than the flatten CNN"),
        R.verdict(drop("resnet8_flatten"), drop("mlp"), "less",
                  "the flatten CNN loses less accuracy to the other half than the MLP (equivariant features help "
                  "even without pooling)"),
        R.verdict(col("resnet8_blurpool", "consistency"), col("resnet8", "consistency"), "greater",
                  "BlurPool raises the consistency under small shifts (Zhang 2019)"),
        R.verdict(eq_mean("resnet8_blurpool"), eq_mean("resnet8"), "less",
                  "BlurPool lowers the feature equivariance error (Zhang 2019)"),
        R.verdict(col("resnet8_blurpool", "other_half"), col("resnet8", "other_half"), "greater",
                  "BlurPool raises the accuracy on the other half"),
    ]
    plot_accuracy(evals, out / "shift_accuracy.png", budget)
    plot_equivariance(evals, out / "shift_equivariance.png", budget)
    nets = f"ResNet-{budget.depth}"
    setup = (f"`{budget.dataset}` (6 classes, no augmentation; chance 16.7%), {budget.epochs} epochs, batch "
             f"{budget.batch_size}, SGD (Nesterov 0.9, cosine schedule, 1 warmup epoch, weight decay 5e-5), seeds "
             f"{list(seeds)}. The CNNs are one CIFAR {nets} backbone (`--arch resnet20 --model-opt "
             f"{depth_opt(budget)}`, 16/32/64 channels, total stride 4) with a flatten + dense head (`pool=flatten`),"
             f" global average pooling (its own head) or GAP plus BlurPool (`antialias=True`); the MLP is `mlp` "
             f"(hidden 512, 256). Learning rate per model: best final in-region val top-1 over "
             f"{list(budget.lrs_mlp)} (MLP) / {list(budget.lrs_cnn)} (CNNs) on seed {seeds[0]} (those runs are "
             f"seed {seeds[0]}'s runs). Test sets: {budget.num_val} val images in the train region (left) and "
             f"{budget.num_val} in the other half (right); {len(sets['probe']['label'])} probe images whose shape "
             f"lies entirely in the left half, shifted right circularly by 0..{shifts[-1]} px (at "
             f"{shifts[-1]} px the shape lies entirely in the right half). Consistency: Zhang's, on the in-region "
             f"val images, random circular shifts in [-{budget.max_shift}, {budget.max_shift}] px on both axes, "
             f"{budget.repeats} pairs per image. Feature equivariance error: ||F(shift_s x) - shift_(s/4) F(x)|| / "
             f"||F(x)|| (L2 over the probe images) of the last feature map before the head, s/4 rounded to whole "
             f"feature units, edge units excluded; it is 0 only for an exactly equivariant map and can hold only "
             f"for s a multiple of the stride 4.")
    notes = (f"Reproduce: `python -m train.experiments shift --budget {budget_name}`. Small synthetic images "
             f"({budget.image_size}x{budget.image_size}) and {budget.epochs} epochs, sized for a 2-core CPU: the "
             "absolute accuracies are not comparable with Zhang's ImageNet numbers; only the directions are.")
    results = {"budget_config": {**dataclasses.asdict(budget), "dataset": budget.dataset}, "seeds": list(seeds),
               "models": {m: {"arch": a, "model_opt": list(base_config(budget, m).model_opt)}
                          for m, (a, _o) in MODELS.items()},
               "sweeps": {m: t["sweep"] for m, t in trained.items()}, "lr": {m: t["lr"] for m, t in trained.items()},
               "shifts": shifts, "evaluations": evals,
               "runs": [runner.record(rid) for t in trained.values() for rid in t["runs"]]}
    R.write_outputs(out, NAME, budget_name, CLAIM, setup, measured, verdicts, results,
                    ["shift_accuracy.png", "shift_equivariance.png"], notes)
    return results


# ------------------------------------------------------------------------------------------------- plots


def _band(ax, x, curves, color, label, style="-"):
    import numpy as np

    arr = np.asarray(curves, float)
    ax.plot(x, arr.mean(0), style, color=color, label=label, lw=1.8, marker="o", ms=3)
    if len(arr) > 1:
        ax.fill_between(x, arr.min(0), arr.max(0), color=color, alpha=0.15)


def plot_accuracy(evals: dict, path: pathlib.Path, budget: Budget) -> None:
    """Probe accuracy against the shift (band: min..max over seeds) and the bar chart of the scalar metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.3, 1]})
    for model, ev in evals.items():
        _band(a, ev[0]["shifts"], [[100 * v for v in e["shift_accuracy"]] for e in ev], COLORS[model], LABELS[model])
    half = budget.image_size // 2
    a.axhline(100 / 6, color="k", ls="--", lw=0.8, alpha=0.5, label="chance")
    a.set(xlabel=f"horizontal shift (px; {half} px = shape moved wholly into the untrained right half)",
          ylabel="probe accuracy (%)", ylim=(0, 100),
          title="accuracy vs test-time shift (trained on the left half)")
    metrics = [("in_region", "in region"), ("other_half", "other half"), ("consistency", "consistency")]
    width = 0.8 / len(evals)
    for j, (model, ev) in enumerate(evals.items()):
        vals = np.array([[100 * e[k] for k, _ in metrics] for e in ev])
        b.bar(np.arange(len(metrics)) + (j - (len(evals) - 1) / 2) * width, vals.mean(0), width,
              yerr=vals.std(0) if len(vals) > 1 else None, color=COLORS[model], label=LABELS[model], capsize=3)
    b.set_xticks(range(len(metrics)), [m for _, m in metrics])
    b.set(ylabel="%", ylim=(0, 105), title="accuracy and consistency (mean ± std over seeds)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_equivariance(evals: dict, path: pathlib.Path, budget: Budget) -> None:
    """Feature equivariance error against the shift, one line per CNN (band: min..max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, ev in evals.items():
        if ev[0]["feature_equivariance"] is None:
            continue
        _band(ax, ev[0]["shifts"][1:], [e["feature_equivariance"] for e in ev], COLORS[model], LABELS[model])
    for s in range(4, budget.image_size // 2 + 1, 4):
        ax.axvline(s, color="gray", lw=0.8, alpha=0.5)
    ax.set(xlabel="horizontal shift (px; grey: multiples of the stride 4)",
           ylabel="||F(shift x) - shift F(x)|| / ||F(x)||", ylim=(0, None),
           title="equivariance error of the last feature map (MLP: none)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
