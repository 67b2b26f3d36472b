"""The Grain pipeline of ``folder:`` datasets: torchvision's random-resized-crop, worker processes and threads
giving the same batches, per-process shards whose union is the global batch, exact resume from the data
iterator's saved state, image size/channel defaults, and training with TensorFlow (or Grain) absent."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _batches import concat as _concat  # noqa: E402
from _batches import same as _same  # noqa: E402
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import cnnjax.data as data
from cnnjax.data import grainpipe
from cnnjax.data import pil_transforms as T
from cnnjax.data.base import TAG_AUGMENT, make_rng

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("grain")


def digits_folder(root: pathlib.Path, per_class: int = 6, val: int = 2, size: int = 28, classes: int = 3,
                  mode: str = "L") -> pathlib.Path:
    """``root/{train,val}/<class>/*.png``: random-texture PNGs of ``size`` x ``size`` (grayscale ``L`` or RGB)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size, size) if mode == "L" else (size, size, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _photo(path: pathlib.Path, w: int, h: int, seed: int, fmt: str = "JPEG") -> pathlib.Path:
    """A smooth colour image (gradients + blobs, like a photo rather than noise) of w x h pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, max(w, h) / 2)
            img[..., c] += rng.uniform(40, 120) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img[..., c] += xx / w * rng.uniform(0, 80) + yy / h * rng.uniform(0, 80)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, fmt, **({"quality": 90} if fmt == "JPEG"
                                                                              else {}))
    return path


@pytest.fixture(scope="module")
def gray28(tmp_path_factory) -> pathlib.Path:
    return digits_folder(tmp_path_factory.mktemp("gray28"))


# ------------------------------------------------------------------------------------- random-resized-crop


def crop_ok(width: int, height: int, crop: tuple[int, int, int, int]) -> bool:
    """The law every crop obeys: a non-empty rectangle inside the image."""
    top, left, h, w = crop
    return top >= 0 and left >= 0 and h >= 1 and w >= 1 and top + h <= height and left + w <= width


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_rrc_params_stay_inside_the_image(width, height, seed):
    crop = T.rrc_params(np.random.default_rng(seed), width, height)
    assert crop_ok(width, height, crop)
    top, left, h, w = crop
    if min(width, height) >= 20 and (h, w) != (height, width):  # a sampled (not fallback) crop of a real image
        area, ratio = h * w / (width * height), w / h
        fallback = top == (height - h) // 2 and left == (width - w) // 2 and (h == height or w == width)
        if not fallback:  # rounding to whole pixels moves area and ratio a little
            assert 0.08 * 0.8 <= area <= 1.0 and 0.75 * 0.85 <= ratio <= 4 / 3 * 1.15


def test_crop_law_can_fail():
    assert not crop_ok(100, 50, (10, 0, 45, 20))  # 10 + 45 > 50
    assert not crop_ok(100, 50, (0, 0, 0, 20))


def test_rrc_params_follow_torchvision_distribution():
    """Two-sample Kolmogorov-Smirnov tests of crop area fraction and aspect ratio, ours vs torchvision's
    ``RandomResizedCrop.get_params`` on a 500x375 image (2000 draws each): no detectable difference; and the
    same test tells a scale range of (0.3, 1) apart (the negative case)."""
    torch = pytest.importorskip("torch")
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = torch.zeros(3, 375, 500)
    theirs = np.array([RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(2000)])
    ours = np.array([T.rrc_params(rng, 500, 375) for _ in range(2000)])
    narrow = np.array([T.rrc_params(rng, 500, 375, scale=(0.3, 1.0)) for _ in range(2000)])

    def area(c):
        return c[:, 2] * c[:, 3] / (500 * 375)

    def ratio(c):
        return c[:, 3] / c[:, 2]

    assert ks_2samp(area(ours), area(theirs)).pvalue > 1e-3
    assert ks_2samp(ratio(ours), ratio(theirs)).pvalue > 1e-3
    assert ks_2samp(area(narrow), area(theirs)).pvalue < 1e-6


@pytest.mark.parity
def test_train_view_is_torchvision_resized_crop(tmp_path):
    """Given the same crop, the train view of a PNG equals torchvision's ``F.resized_crop`` (PIL bilinear,
    antialiased) on the same PIL image, never mirrored (flips run on the device); with ``scale`` (``--rrc-scale``)
    the crop's area range is torchvision's ``scale``, at any size; a JPEG decoded at reduced scale (draft) stays
    within interpolation noise of the full decode."""
    pytest.importorskip("torch")
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    for i, (w, h, size, scale) in enumerate([(500, 375, 224, None), (375, 500, 160, None), (640, 480, 96, None),
                                             (300, 200, 32, (0.5, 0.9))]):
        png = _photo(tmp_path / f"p{i}.png", w, h, i, "PNG")
        for seed in range(4):
            ours = T.train_image(str(png), size, 3, make_rng(seed, 0, i, TAG_AUGMENT), scale=scale)
            rng = make_rng(seed, 0, i, TAG_AUGMENT)
            top, left, ch, cw = T.rrc_params(rng, w, h, scale or T.RRC_SCALE)
            if scale is not None:
                assert scale[0] * 0.9 <= ch * cw / (w * h) <= scale[1] * 1.1, (ch, cw)
            want = np.asarray(F.resized_crop(Image.open(png).convert("RGB"), top, left, ch, cw, [size, size],
                                             InterpolationMode.BILINEAR, antialias=True))
            assert ours.shape == want.shape == (size, size, 3)
            # PIL's box resize takes filter taps from just outside the crop, torchvision crops first: at the
            # borders of a strong (~8x) reduction that is up to 2/255; at the others' <= 2x, 1/255
            tol = 1 if scale is None else 2
            assert np.abs(ours.astype(int) - want.astype(int)).max() <= tol, (i, seed)
        jpg = _photo(tmp_path / f"p{i}.jpg", 2 * w, 2 * h, i)
        diffs = []
        for seed in range(8):
            fast = T.train_image(str(jpg), size, 3, make_rng(seed, 1, i, TAG_AUGMENT))
            exact = T.train_image(str(jpg), size, 3, make_rng(seed, 1, i, TAG_AUGMENT), exact=True)
            diffs.append(np.abs(fast.astype(np.float32) - exact.astype(np.float32)).mean())
        assert np.mean(diffs) < 3.0, diffs  # of 255: smooth-image interpolation noise, not a different crop


def test_small_images_pad_and_crop_without_flip(gray28):
    """At <= 64 px the train view is resize -> pad size // 8 zeros -> random crop: every output is a shifted
    copy of the resized image (never a mirrored one: flips run on the device), the shift within the padding;
    without the crop (``--augment none``) it is the eval view."""
    path = sorted((gray28 / "train" / "c0").iterdir())[0]
    src = np.asarray(Image.open(path).resize((32, 32), Image.BILINEAR))
    assert not np.array_equal(src, src[:, ::-1])
    shifted = 0
    for seed in range(20):
        out = T.train_image(str(path), 32, 1, make_rng(seed, 0, 0, TAG_AUGMENT))[..., 0]
        padded = np.pad(src, 4)
        found = [(dy, dx) for dy in range(9) for dx in range(9) if np.array_equal(padded[dy:dy + 32, dx:dx + 32], out)]
        assert found, seed
        shifted += (4, 4) not in found
    assert shifted >= 10
    plain = T.train_image(str(path), 32, 1, make_rng(0, 0, 0, TAG_AUGMENT), crop=False)
    np.testing.assert_array_equal(plain, T.eval_image(str(path), 32, 1, None))


# ----------------------------------------------------------------------------- workers, shards and resume


@pytest.mark.slow  # > 5 s (CI durations)
def test_worker_processes_threads_and_shards_give_the_same_batches(gray28):
    """The batches of one epoch are identical with 0 or 2 decoding processes; process p of 2 gets rows
    [p * B/2, (p + 1) * B/2) of every global batch, so the union of the shards is the global batch (train and
    val); the next epoch is a different shuffle."""
    threads = data.load(f"folder:{gray28}", seed=3, workers=0)
    procs = data.load(f"folder:{gray28}", seed=3, workers=2)
    try:
        ref = list(threads.batches("train", 6, epoch=1))
        _same(list(procs.batches("train", 6, epoch=1)), ref)
        _same(list(procs.batches("val", 4)), list(threads.batches("val", 4)))
        for split in ("train", "val"):
            kw = {"epoch": 1} if split == "train" else {}
            whole = _concat(threads.batches(split, 6, **kw))
            shards = [list(threads.batches(split, 6, process_index=p, process_count=2, **kw)) for p in (0, 1)]
            joined = {k: np.concatenate([np.concatenate([a[k], b[k]]) for a, b in zip(*shards, strict=True)])
                      for k in ("image", "label", "mask")}
            for key in whole:
                np.testing.assert_array_equal(joined[key], whole[key])
        assert not np.array_equal(next(threads.batches("train", 6, epoch=2))["image"], ref[0]["image"])
        assert sorted(_concat(ref)["label"].tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    finally:
        threads.close()
        procs.close()


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_saved_iterator_state_resumes_bit_identically(gray28, workers):
    """Stop mid-epoch, keep ``get_state()`` (what a checkpoint stores, JSON), restore it in a NEW source object
    (as after a restart): the remaining batches are bit-identical, as are those of ``start_batch=k``; a state
    for another position is refused."""
    a = data.load(f"folder:{gray28}", seed=5, workers=workers)
    b = data.load(f"folder:{gray28}", seed=5, workers=workers)
    try:
        it = a.batches("train", 4, epoch=2)
        head = [next(it), next(it)]
        state = json.loads(json.dumps(it.get_state()))
        assert (state["epoch"], state["batch"]) == (2, 2)
        rest = list(it)
        _same(list(b.batches("train", 4, epoch=2, start_batch=2, state=state)), rest)
        _same(list(b.batches("train", 4, epoch=2, start_batch=2)), rest)
        _same(list(b.batches("train", 4, epoch=2))[:2], head)
        with pytest.raises(ValueError, match="saved data iterator is at epoch 2, batch 2"):
            b.batches("train", 4, epoch=2, start_batch=1, state=state)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("spec", ["digits", "shapes:num_train=40,num_val=10"])
def test_in_memory_datasets_give_the_same_batches_through_grain(spec):
    """digits/shapes batches through the Grain stream (prefetched in a thread, resumable by state) equal the
    plain NumPy generator's, for train (shuffled, augmented) and val, whole and sharded."""
    ds = data.load(spec, seed=4)
    try:
        for split, epoch in (("train", 3), ("val", 0)):
            for p, count in ((0, 1), (1, 2)):
                got = list(ds.batches(split, 8, epoch=epoch, process_index=p, process_count=count))
                want = list(ds._read(split, split, 8, epoch=epoch, start_batch=0, process_index=p,
                                     process_count=count))
                _same(got, want)
        it = ds.batches("train", 8, epoch=1, start_batch=1)
        next(it)
        state = it.get_state()
        _same(list(data.load(spec, seed=4).batches("train", 8, epoch=1, start_batch=2, state=state)), list(it))
    finally:
        ds.close()


def test_grayscale_folder_defaults_and_decode_failure(tmp_path):
    """A folder of 28x28 grayscale PNGs defaults to 28x28x1 (not 224x224x3); a file whose header parses but whose
    pixels do not becomes a masked-out zero row, not a crash."""
    root = digits_folder(tmp_path / "g", per_class=3, val=1)
    good = (root / "train/c0/0.png").read_bytes()
    (root / "train/c0/0.png").write_bytes(good[: len(good) // 2])  # truncated: header fine, data cut
    with data.load(f"folder:{root}") as ds:
        assert (ds.info.image_size, ds.info.channels) == (28, 1)
        assert ds.info.mean == (0.449,) and ds.info.std == (0.226,)
        batch = _concat(ds.plain_batches("train", 9))
        assert batch["image"].shape == (9, 28, 28, 1)
        assert batch["mask"].tolist() == [False] + [True] * 8
        assert (batch["image"][0] == 0).all()


def test_load_source_picks_size_and_channels_for_the_architecture(gray28, tmp_path):
    """``train.main.load_source``: 28x28 gray digits -> 32x32x1 for lenet5 (its smallest input) but 28x28x1 for
    resnet20 (global average pooling takes 28), each with a one-line notice; RGB for ``--init torchvision:``;
    large photos capped at the architecture's default input size; an explicit --image-size is kept."""
    from train.config import TrainConfig
    from train.main import load_source

    lines = []
    for arch, size in (("lenet5", 32), ("resnet20", 28)):
        with load_source(TrainConfig(arch=arch, dataset=f"folder:{gray28}"), lines.append) as src:
            assert (src.info.image_size, src.info.channels) == (size, 1), arch
    assert lines == ["images are 28x28 grayscale (median); training at 32x32x1 (raised to lenet5's smallest "
                     "input) - pass --image-size to change",
                     "images are 28x28 grayscale (median); training at 28x28x1 - pass --image-size to change"]
    with load_source(TrainConfig(arch="resnet18", dataset=f"folder:{gray28}", init="torchvision:resnet18"),
                     lines.append) as src:
        assert (src.info.image_size, src.info.channels) == (28, 3) and src.eval_preprocess is None
    assert "as RGB" in lines[-2]
    assert lines[-1] == ("val transform: the dataset's default at 28x28, not resnet18.IMAGENET1K_V1's eval transform "
                         "(its crop is 224; pass --image-size 224 to use it)")
    photos = tmp_path / "photos"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (photos / split / c).mkdir(parents=True)
            _photo(photos / split / c / "x.jpg", 400, 300, hash(c) % 100)
    with load_source(TrainConfig(arch="resnet18", dataset=f"folder:{photos}"), lines.append) as src:
        assert (src.info.image_size, src.info.channels) == (224, 3)
    assert "300x400 colour" in lines[-1] and "capped at resnet18's default input size" in lines[-1]
    with load_source(TrainConfig(arch="lenet5", dataset=f"folder:{gray28}", image_size=48), lines.append) as src:
        assert src.info.image_size == 48


@pytest.mark.slow
def test_training_resumes_mid_epoch_from_the_saved_data_iterator(gray28, tmp_path):
    """A folder run checkpointed mid-epoch keeps the Grain iterator state in the checkpoint; resuming from that
    checkpoint ends with parameters bit-identical to the uninterrupted run."""
    import shutil

    import jax

    from cnnjax import checkpoint
    from cnnjax.checkpoint import CheckpointStore
    from train.config import TrainConfig
    from train.main import train

    cfg = dict(arch="lenet5", dataset=f"folder:{gray28}", batch_size=4, epochs=2, checkpoint_every=2, keep=10,
               progress=False)
    full = tmp_path / "full"
    train(TrainConfig(**cfg, workdir=str(full)), log=lambda s: None)
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for step_dir in (cut / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > 6:
            shutil.rmtree(step_dir)
    store = CheckpointStore(cut / "checkpoints")
    _, meta, step = store.restore()
    store.close()
    assert step == 6 and (meta["epoch"], meta["batch"]) == (1, 2) and meta["data"]["batch"] == 2
    train(TrainConfig(**cfg, workdir=str(cut), resume=True), log=lambda s: None)
    for x, y in zip(jax.tree.leaves(checkpoint.restore(full)), jax.tree.leaves(checkpoint.restore(cut)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------- without TensorFlow / Grain


BLOCK = textwrap.dedent("""
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` now raises ImportError, as where it is not installed
    from train.main import main
    codes = []
    for argv in {argvs!r}:  # one interpreter start for several runs
        try:
            codes.append(main(argv))
        except SystemExit as exit_:
            codes.append(exit_.code)
    assert not any(m.split('.')[0] in {blocked!r} for m in sys.modules if sys.modules[m] is not None), \\
        'a blocked package was imported'
    print('exit codes:', codes)
""")


def _run_blocked(blocked: list[str], *argvs: list[str]) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``train.main.main`` on each of ``argvs`` in one subprocess where importing any of ``blocked``
    fails; the process and the exit code of each run (the process itself fails if a blocked package got
    imported)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", BLOCK.format(blocked=blocked, argvs=list(argvs))], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("exit codes: "), out.stdout[-3000:]
    return out, json.loads(line[len("exit codes: "):])


@pytest.mark.slow  # ~11 s: a subprocess training run
def test_folder_trains_with_tensorflow_blocked(gray28, tmp_path):
    out, codes = _run_blocked(["tensorflow", "tensorflow_datasets"],
                              ["--arch", "lenet5", "--dataset", f"folder:{gray28}", "--max-steps", "1", "--batch-size",
                               "4", "--no-progress", "--workdir", str(tmp_path / "run")])
    assert codes == [0], out.stderr[-3000:]
    assert "training at 32x32x1" in out.stdout and "val loss" in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_without_tensorflow_and_grain_synthetic_trains_and_folder_is_one_line(gray28, tmp_path):
    """The GPU image has no TensorFlow (and may lack Grain): importing cnnjax and training on synthetic data
    must need neither; a ``folder:`` dataset without Grain fails with one line naming the package."""
    out, codes = _run_blocked(
        ["tensorflow", "tensorflow_datasets", "grain"],
        ["--arch", "lenet5", "--dataset", "synthetic:image_size=32,num_classes=4,num_train=64,num_val=16",
         "--batch-size", "16", "--max-steps", "2", "--no-progress", "--workdir", str(tmp_path / "syn")],
        ["--arch", "lenet5", "--dataset", f"folder:{gray28}", "--max-steps", "1", "--no-progress", "--workdir",
         str(tmp_path / "a")])
    assert codes == [0, 2], out.stderr[-3000:]
    assert "epoch 1:" in out.stdout
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "pip install grain" in lines[-1] and "Traceback" not in out.stderr


TWO_PROCESS = textwrap.dedent("""
    import sys, numpy as np, jax
    jax.distributed.initialize({coordinator!r}, num_processes=2, process_id=int(sys.argv[1]))
    import cnnjax.data as data
    from cnnjax.training.loop import source_batches
    with data.load({spec!r}, seed=7) as src:
        batches = list(source_batches(src, 6)(1, 0))
    np.savez(sys.argv[2], **{{f"{{k}}{{i}}": b[k] for i, b in enumerate(batches) for k in b}})
    jax.distributed.shutdown()
""")


@pytest.mark.slow
def test_two_process_run_shards_the_folder_into_the_global_batches(gray28, tmp_path):
    """Two processes of a JAX multi-process run (``jax.distributed``) each read their shard through
    ``source_batches`` (``jax.process_index()``); concatenated, the shards are the one-process batches."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = TWO_PROCESS.format(coordinator=f"127.0.0.1:{port}", spec=f"folder:{gray28}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(tmp_path / f"p{i}.npz")], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    shards = [np.load(tmp_path / f"p{i}.npz") for i in (0, 1)]
    with data.load(f"folder:{gray28}", seed=7) as src:
        whole = list(src.batches("train", 6, epoch=1))
    for i, batch in enumerate(whole):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([shards[0][f"{key}{i}"], shards[1][f"{key}{i}"]]),
                                          batch[key])


def test_grain_import_error_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)
    with pytest.raises(grainpipe.MissingDependencyError, match=r"^this dataset loads images with Grain.*pip install "
                                                               r"grain") as err:
        grainpipe.import_grain()
    assert "\n" not in str(err.value)


def _start_with_workers(folder: pathlib.Path, workdir: pathlib.Path) -> subprocess.Popen:
    """A CLI run with 2 Grain worker processes, in its own session."""
    pytest.importorskip("psutil")
    argv = [sys.executable, "-m", "train.main", "--arch", "lenet5", "--dataset", f"folder:{folder}", "--epochs",
            "500", "--batch-size", "4", "--no-progress", "--data-workers", "2", "--workdir", str(workdir)]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _workers_after_first_epoch(proc: subprocess.Popen) -> list:
    """The worker processes (psutil) of a run of :func:`_start_with_workers`, once its first epoch is done."""
    import psutil

    for line in proc.stdout:
        if line.startswith("epoch 1:"):
            break
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) >= 2
    return workers


@pytest.mark.slow
def test_signals_with_worker_processes_leave_nothing_behind(gray28, tmp_path):
    """SIGTERM to the whole process group: the run saves and exits 143 without worker tracebacks or leaked
    shared memory, and its workers are gone; SIGKILL of the training process alone: the orphaned workers exit
    by themselves within seconds."""
    import signal

    import psutil

    # both runs start at once (their imports and compiles overlap on the 2 cores); each has its own workdir
    term, killed = _start_with_workers(gray28, tmp_path / "term"), _start_with_workers(gray28, tmp_path / "kill")
    try:
        workers = _workers_after_first_epoch(term)
        os.killpg(term.pid, signal.SIGTERM)
        rest = term.stdout.read()
        assert term.wait(timeout=60) == 143, rest
        assert "Traceback" not in rest and "leaked" not in rest and "stopped by signal 15" in rest, rest
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive
        workers = _workers_after_first_epoch(killed)
        killed.kill()  # the training process alone: its workers are orphaned
        killed.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, "worker processes outlived the killed training process"
    finally:  # whatever failed above, no run or worker of this test outlives it
        for proc in (term, killed):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
