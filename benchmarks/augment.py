"""Cost of on-device augmentation against the train step: images/s of (jitted augmentation pre-step + train step)
for each policy, against the train step alone (no augmentation).

    python -m benchmarks.augment --markdown                                  # resnet18, 128x128, batch 32
    python -m benchmarks.augment --arch resnet50 --image-size 224 --batch-size 32 --markdown

The train step is ``train.benchmark.BenchmarkStep`` (the step ``train.main`` runs, synthetic data, 1000 classes).
Each policy runs as ONE jitted pre-step, :func:`cnnjax.augment.augment_train_batch` on the same batch
(``(seed, step)`` keys, raw images in ``[0, 1]``, normalised images and soft targets out), timed on its own
(median of ``--runs`` calls after a warm-up); the step with augmentation is ``t_step + t_aug`` (the pre-step's
output is what the step would read; on one device nothing overlaps). ``cost`` is ``t_aug / t_step``, the target
< 10 %. Rows: ``none`` (the pre-step only normalises), ``flip``, ``randaugment`` (2 ops, magnitude 9),
``trivialaugment``, ``autoaugment`` (ImageNet), ``mixup 0.2 / cutmix 1.0`` (one per batch), ``random erasing
0.25``, and ``reference`` = TrivialAugment + MixUp 0.2 / CutMix 1.0 + random erasing 0.1 (torchvision's recipe
for its v2 ImageNet weights).

``--fused`` also times the train step that ``train.main`` really runs with the reference augmentation inside it
(``--augment trivialaugment --mixup 0.2 --cutmix 1.0 --random-erasing 0.1``: one jitted step, augmentation
fused in), alternating with the plain step, so the two are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import jax
import jax.numpy as jnp

from benchmarks.timing import median_ms
from cnnjax.augment import Augmentation, augment_train_batch, parse_policy

ROWS = {
    "none": Augmentation(),
    "flip": Augmentation(policy=parse_policy("flip")),
    "randaugment:2,9": Augmentation(policy=parse_policy("randaugment")),
    "trivialaugment": Augmentation(policy=parse_policy("trivialaugment")),
    "autoaugment:imagenet": Augmentation(policy=parse_policy("autoaugment")),
    "mixup 0.2 / cutmix 1.0": Augmentation(mixup_alpha=0.2, cutmix_alpha=1.0),
    "random erasing 0.25": Augmentation(erasing_p=0.25),
    "reference (trivialaugment + mixup/cutmix + erasing 0.1)": Augmentation(
        policy=parse_policy("trivialaugment"), mixup_alpha=0.2, cutmix_alpha=1.0, erasing_p=0.1),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--conv-impl", default="fast")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rows", nargs="*", default=list(ROWS), help=f"subset of: {', '.join(ROWS)}")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--fused", action="store_true", help="also time the real train step with the reference "
                   "augmentation inside it, alternating with the plain step")
    args = p.parse_args()

    from train.benchmark import BenchmarkStep
    from train.config import TrainConfig

    base = dict(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size, conv_impl=args.conv_impl)
    step = BenchmarkStep(TrainConfig(**base, augment="none"))
    t_step = median_ms(step, runs=args.runs, warmup=1)
    b, s = args.batch_size, args.image_size
    raw = jax.random.uniform(jax.random.key(0), (b, s, s, 3))
    labels = jnp.arange(b) % 1000
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    results = []
    for name in args.rows:
        aug = ROWS[name]
        pre = jax.jit(lambda key, x, y, aug=aug: augment_train_batch(key, x, y, 1000, mean, std, aug))
        counter = iter(range(10**9))
        key = jax.random.key(0)

        def run(pre=pre, counter=counter, key=key):
            jax.block_until_ready(pre(jax.random.fold_in(key, next(counter)), raw, labels))

        t_aug = median_ms(run, runs=args.runs, warmup=1)
        results.append({"policy": name, "arch": args.arch, "image_size": s, "batch_size": b,
                        "step_ms": t_step, "augment_ms": t_aug, "images_per_sec": b / (t_step + t_aug) * 1e3,
                        "images_per_sec_no_aug": b / t_step * 1e3, "cost": t_aug / t_step})
        print(json.dumps(results[-1]), flush=True)
    fused = None
    if args.fused:
        with_aug = BenchmarkStep(TrainConfig(**base, augment="trivialaugment", mixup=0.2, cutmix=1.0,
                                             random_erasing=0.1))
        with_aug(), step()
        plain_ms, aug_ms = [], []
        for _ in range(args.runs):  # alternating: the shared machine's drift hits both alike
            plain_ms.append(step() * 1e3)
            aug_ms.append(with_aug() * 1e3)
        fused = {"policy": "reference, fused in the train step", "step_ms": statistics.median(plain_ms),
                 "fused_step_ms": statistics.median(aug_ms)}
        fused["cost"] = fused["fused_step_ms"] / fused["step_ms"] - 1
        print(json.dumps(fused), flush=True)
    if args.markdown:
        print(f"\n{args.arch}, {s}x{s}, batch {b}, --conv-impl {args.conv_impl}; {platform.processor() or 'cpu'}, "
              f"jax {jax.__version__}, {jax.default_backend()}; train step alone: {t_step:.0f} ms = "
              f"{b / t_step * 1e3:.1f} images/s\n")
        print("| policy | augmentation pre-step (ms) | images/s, step + augmentation | cost vs the step |")
        print("|---|---|---|---|")
        for r in results:
            print(f"| {r['policy']} | {r['augment_ms']:.1f} | {r['images_per_sec']:.1f} | "
                  f"{100 * r['cost']:.1f} % |")
        if fused is not None:
            print(f"\nFused, alternating ({args.runs} pairs): plain step {fused['step_ms']:.0f} ms, step with the "
                  f"reference augmentation inside {fused['fused_step_ms']:.0f} ms: {100 * fused['cost']:+.1f} %")


if __name__ == "__main__":
    main()
