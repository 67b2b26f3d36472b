"""Input-pipeline throughput alone (no model): images/s of the ``folder:`` train view -- JPEG decode,
random-resized-crop to 224, horizontal flip, normalise, batches of 64 -- on a generated folder of ImageNet-like
JPEGs, in one run:

* ``cnnjax``: ``cnnjax.data.load('folder:...')`` (Grain + PIL) with decoding in this process's threads
  (``workers=0``, the default) and in 1 or 2 Grain worker processes; also ``exact`` (no reduced-scale JPEG
  decoding) to show what ``Image.draft`` buys;
* ``tf.data``: the pipeline cnnjax's ``folder:`` used before Grain (PIL decode through ``tf.numpy_function``,
  ``tf.image`` random-resized-crop + flip, ``AUTOTUNE`` parallelism); skipped without TensorFlow;
* ``torchvision``: ``datasets.ImageFolder`` + ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` +
  ``ToTensor`` + ``Normalize`` in a ``DataLoader(batch_size=64, num_workers=2)``; skipped without torch.

Each pipeline reads ``--images`` images (whole batches) once per round, in a fresh process of its own (nothing
prefetches while another pipeline runs; TensorFlow, torch and Grain never share a process); rounds alternate the
pipelines and the median img/s over rounds is reported, with the time to the first batch (start-up: worker
processes, the first decode) measured separately and left out of img/s. One JSON line per pipeline;
``--markdown`` prints a table.

    python -m benchmarks.data_loading --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np

BATCH = 64
SIZE = 224


def make_folder(root: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
    """``root/train/c{0..9}/*.jpg`` (+ a small ``val/``): ``n`` JPEGs of ImageNet-like sizes (sides 300-500,
    landscape and portrait; ImageNet's average is about 400x350) with photo-like content (smooth blobs and
    gradients plus sensor-like noise), quality 90. Reused when it exists with the same count."""
    from PIL import Image

    marker = root / f".made-{n}-{seed}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", 20)):
        for i in range(count):
            d = root / split / f"c{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = (int(rng.integers(350, 501)), int(rng.integers(280, 376)))
            if rng.random() < 0.3:
                w, h = h, w
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            img = np.zeros((h, w, 3), np.float32)
            for c in range(3):
                for _ in range(5):
                    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 150)
                    img[..., c] += rng.uniform(30, 110) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
                img[..., c] += xx / w * rng.uniform(0, 70) + yy / h * rng.uniform(0, 70)
            img += rng.normal(0, 6, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    marker.write_text("ok")
    return root


def cnnjax_pipeline(root: pathlib.Path, workers: int, exact: bool = False) -> Callable[[int], Iterable]:
    import cnnjax.data as data

    source = data.load(f"folder:{root}", image_size=SIZE, workers=workers)
    source.exact = exact

    def batches(epoch: int):
        return source.batches("train", BATCH, epoch=epoch)

    batches.close = source.close  # type: ignore[attr-defined]
    return batches


def tfdata_pipeline(root: pathlib.Path) -> Callable[[int], Iterable]:
    """cnnjax's tf.data folder pipeline before Grain (as of the commit that replaced it), rebuilt here."""
    from cnnjax.data import tfpipe
    from cnnjax.data.base import epoch_permutation
    from cnnjax.data.folder import scan_folder
    from cnnjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_rgb

    tf = tfpipe.import_tf()
    _, splits, _ = scan_folder(root)
    paths, labels = splits["train"]
    n = len(labels)

    def decode(path: bytes):
        from PIL import Image

        with Image.open(path.decode()) as im:
            return np.asarray(to_rgb(im), np.uint8), np.True_

    def batches(epoch: int):
        nb = n // BATCH
        index = epoch_permutation(n, 0, epoch)[: nb * BATCH]
        base = tfpipe.epoch_base_seed(0, epoch)

        def load(path, label, pos):
            image, ok = tf.numpy_function(decode, [path], [tf.uint8, tf.bool], stateful=False)
            image.set_shape([None, None, 3])
            x = tfpipe.train_transform(tf, image, tf.stack([tf.constant(base, tf.int64), pos]), SIZE)
            return {"image": tfpipe.normalize(tf, x, IMAGENET_MEAN, IMAGENET_STD), "label": label, "mask": ok}

        ds = tf.data.Dataset.from_tensor_slices((paths[index], labels[index], np.arange(nb * BATCH)))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return tfpipe.numpy_batches(tfpipe.finish(tf, ds, BATCH))

    return batches


def torchvision_pipeline(root: pathlib.Path, workers: int = 2) -> Callable[[int], Iterable]:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = datasets.ImageFolder(str(root / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         drop_last=True, prefetch_factor=2)

    def batches(epoch: int):
        torch.manual_seed(epoch)
        return iter(loader)

    return batches


def measure(batches: Callable[[int], Iterable], epoch: int, limit: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over the following batches up to ``limit`` images)."""
    t0 = time.perf_counter()
    it = iter(batches(epoch))
    next(it)
    first = time.perf_counter() - t0
    t1, seen = time.perf_counter(), 0
    for _ in it:
        seen += BATCH
        if seen + BATCH > limit:
            break
    return first, seen / (time.perf_counter() - t1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "cnnjax-bench-jpegs"))
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the generated folder (read per round)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated subset of pipeline names")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epoch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = make_folder(pathlib.Path(args.dir), args.images)

    candidates: dict[str, Callable[[], Callable[[int], Iterable]]] = {
        "cnnjax threads (workers=0)": lambda: cnnjax_pipeline(root, 0),
        "cnnjax 1 worker process": lambda: cnnjax_pipeline(root, 1),
        "cnnjax 2 worker processes": lambda: cnnjax_pipeline(root, 2),
        "cnnjax threads, exact decode": lambda: cnnjax_pipeline(root, 0, exact=True),
        "tf.data (before Grain)": lambda: tfdata_pipeline(root),
        "torchvision DataLoader, 2 workers": lambda: torchvision_pipeline(root, 2),
    }
    if args.one is not None:  # a child process: one pipeline, one round
        name = list(candidates)[args.one]
        try:
            batches = candidates[name]()
        except ImportError as err:
            print(json.dumps({"skipped": str(err)}))
            return
        first, rate = measure(batches, epoch=args.epoch, limit=args.images)
        getattr(batches, "close", lambda: None)()
        print(json.dumps({"first": first, "rate": rate}))
        return
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    chosen = [i for i, n in enumerate(candidates) if not wanted or any(w in n for w in wanted)]
    results: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for i in chosen:  # a fresh process per pipeline and round: nothing prefetches while another one runs,
            name = list(candidates)[i]  # and TensorFlow, torch and Grain never share a process
            out = subprocess.run([sys.executable, "-m", "benchmarks.data_loading", "--dir", args.dir, "--images",
                                  str(args.images), "--one", str(i), "--epoch", str(r)], capture_output=True,
                                 text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode or not lines:
                print(json.dumps({"pipeline": name, "failed": out.stderr[-500:]}))
                continue
            got = json.loads(lines[-1])
            if "skipped" in got:
                print(json.dumps({"pipeline": name, **got}))
                continue
            res = results.setdefault(name, {"first": [], "rate": []})
            res["first"].append(got["first"])
            res["rate"].append(got["rate"])
    ref = "torchvision DataLoader, 2 workers"
    rows = []
    for name, res in results.items():
        rate = float(np.median(res["rate"]))
        row = {"pipeline": name, "img_per_s": round(rate, 1), "img_per_s_rounds": [round(x, 1) for x in res["rate"]],
               "first_batch_s": round(float(np.median(res["first"])), 2)}
        if ref in results:
            row["vs_torchvision"] = round(rate / float(np.median(results[ref]["rate"])), 2)
        rows.append(row)
        print(json.dumps(row))
    if args.markdown:
        print(f"\n{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {args.images} JPEGs, "
              f"batch {BATCH}, {SIZE}px, median of {args.rounds} alternating rounds\n")
        print("| pipeline | img/s | vs torchvision | first batch (s) |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['pipeline']} | {row['img_per_s']} | {row.get('vs_torchvision', '-')} | "
                  f"{row['first_batch_s']} |")


if __name__ == "__main__":
    main()
