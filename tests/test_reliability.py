"""Runs that survive anything: ``--resume`` as "continue if there is anything to continue", configuration
checks on resume, storage faults (unwritable, full, failed writes, half-written steps), SIGKILL at many moments
resumed bit-identically, exit codes, and bad image files."""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from cnnjax import checkpoint
from cnnjax.checkpoint import CheckpointStore, StorageError
from train import config as C
from train.config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--arch", "lenet5", "--batch-size", "64", "--no-progress", "--log-every", "1"]
QUIET = dict(arch="lenet5", batch_size=64, progress=False)


def cli_env(**extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **extra}


def run_cli(args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=ROOT, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def leaves(workdir):
    return [np.asarray(x) for x in jax.tree.leaves(checkpoint.restore(workdir))]


def rows(workdir):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [{k: v for k, v in json.loads(ln).items() if k != "images_per_sec"}
            for ln in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------ configuration checks on resume


def test_resume_config_check_lists_computation_fields_and_records_allowed_changes(tmp_path):
    path = tmp_path / "config.json"
    saved = C.resolve_defaults(TrainConfig(arch="lenet5", epochs=2))
    C.write_config(path, saved, total_steps=44, image_size=32)
    same = dataclasses.replace(saved, resume=True, workdir="elsewhere")
    assert C.check_resume(path, same, 10) == [{"from_step": 10, "changed": {"workdir": [None, "elsewhere"]}}]
    moved = dataclasses.replace(saved, resume=True, init="/new/place/of/pretrained")
    assert C.check_resume(path, moved)[-1]["changed"] == {"init": [None, "/new/place/of/pretrained"]}
    extended = dataclasses.replace(saved, resume=True, epochs=4, log_every=1)
    history = C.check_resume(path, extended, 22)
    assert history[-1]["changed"] == {"epochs": [2, 4], "log_every": [10, 1]}
    changed = dataclasses.replace(saved, resume=True, seed=1, lr=0.5, batch_size=32)
    with pytest.raises(ValueError) as err:
        C.check_resume(path, changed, 22)
    for text in ("--seed: saved 0, now 1", "--lr: saved 0.025, now 0.5", "--batch-size: saved 64, now 32"):
        assert text in str(err.value)
    assert "--epochs" not in str(err.value)
    C.write_config(path, saved, total_steps=44, image_size=32, num_classes=10, steps_per_epoch=22)
    C.check_resume_data(path, 32, 10, 22)
    with pytest.raises(ValueError, match="trained at 32x32 but the data now gives 48x48; pass --image-size 32"):
        C.check_resume_data(path, 48, 10, 22)
    with pytest.raises(ValueError, match="had steps per epoch 22, the data now gives 21"):
        C.check_resume_data(path, 32, 10, 21)
    with pytest.raises(ValueError, match="had num classes 10, the data now gives 5"):
        C.check_resume_data(path, 32, 5, 22)
    with pytest.raises(ValueError, match="--image-size: saved 32, now 48"):
        C.check_resume(path, dataclasses.replace(saved, image_size=48), 22)


def test_existing_run_without_resume_is_refused_before_any_work(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "run" / "checkpoints", async_save=False)
    store.save(3, {"x": np.zeros(2)}, {})
    store.close()
    from train import main as M

    monkeypatch.setattr(M.cdata, "load", lambda *a, **k: pytest.fail("read data before refusing"))
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoints at steps \[3\]\); add --resume"):
        M.train(TrainConfig(**QUIET, workdir=str(tmp_path / "run")), log=lambda s: None)


# --------------------------------------------------------------------------------------- storage faults


def test_unwritable_workdir_is_reported_before_reading_data(tmp_path, monkeypatch, capsys):
    from train import main as M

    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setattr(M.cdata, "load", lambda *a, **k: pytest.fail("read data before the storage check"))
    code = C.main_exit(lambda: M.train(TrainConfig(**QUIET, workdir=str(tmp_path / "file" / "run"))))
    err = capsys.readouterr().err
    assert code == C.EXIT_STORAGE and "is not writable" in err and "Traceback" not in err


def test_full_disk_is_reported_before_the_train_step_compiles(tmp_path, monkeypatch, capsys):
    from train import main as M

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(M.shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    monkeypatch.setattr(M, "jit_steps", lambda *a, **k: pytest.fail("compiled before the free-space check"))
    code = C.main_exit(lambda: M.train(TrainConfig(**QUIET, workdir=str(tmp_path / "run"))))
    err = capsys.readouterr().err
    assert code == C.EXIT_STORAGE and "not enough free space" in err and "MiB are free" in err


def test_half_written_steps_are_ignored_and_cleaned(tmp_path):
    store = CheckpointStore(tmp_path, async_save=False)
    store.save(1, {"x": np.ones(2)}, {"m": 1})
    store.close()
    partial = tmp_path / "2.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"half")
    store = CheckpointStore(tmp_path)
    assert store.steps() == [1]
    assert store.restore()[1:] == ({"m": 1}, 1)
    store.close()
    deadline = time.time() + 10
    while partial.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not partial.exists()


def _fail_writes_after(monkeypatch, good: int):
    """Patch orbax's JSON writer (the ``meta`` item of every checkpoint) to fail with ENOSPC after ``good``
    writes, as a full disk would."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as J

    original, count = J.JsonCheckpointHandler._save_fn, {"n": 0}

    async def failing(self, x, directory):
        count["n"] += 1
        if count["n"] > good:
            raise OSError(errno.ENOSPC, "No space left on device")
        await original(self, x, directory)

    monkeypatch.setattr(J.JsonCheckpointHandler, "_save_fn", failing)


@pytest.mark.slow
def test_failed_checkpoint_write_exits_4_and_keeps_the_last_good_one(tmp_path, monkeypatch, capfd):
    from train import main as M

    _fail_writes_after(monkeypatch, good=1)
    workdir = tmp_path / "run"
    code = C.main_exit(lambda: M.train(TrainConfig(**QUIET, max_steps=12, checkpoint_every=4,
                                                   workdir=str(workdir)), log=lambda s: None))
    err = capfd.readouterr().err
    assert code == C.EXIT_STORAGE, err
    assert "writing checkpoint 8" in err and "last good checkpoints are kept (steps [4])" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    store = checkpoint.CheckpointStore(workdir / "checkpoints", read_only=True)
    assert store.steps() == [4]
    store.close()
    assert "params" in checkpoint.restore(workdir)


@pytest.mark.slow
def test_training_resumes_past_a_corrupt_latest_checkpoint(tmp_path):
    """The newest checkpoint is unreadable: resume falls back to the previous one, deletes the unreadable one
    (else the loop could never write that step again) and ends bit-identical to an uninterrupted run."""
    from train import main as M

    base = dict(QUIET, max_steps=12, checkpoint_every=4)
    M.train(TrainConfig(**base, workdir=str(tmp_path / "ref")), log=lambda s: None)
    M.train(TrainConfig(**base, workdir=str(tmp_path / "run")), log=lambda s: None)
    for f in (tmp_path / "run" / "checkpoints" / "12" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="could not be read.*the unreadable ones are deleted"):
        out = M.train(TrainConfig(**base, workdir=str(tmp_path / "run"), resume=True), log=lambda s: None)
    assert out["step"] == 12 and rows(tmp_path / "run") == rows(tmp_path / "ref")
    for a, b in zip(leaves(tmp_path / "ref"), leaves(tmp_path / "run"), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ resume: nothing, or everything


@pytest.mark.slow
def test_resume_with_nothing_to_continue_starts_from_zero_and_drops_orphan_rows(tmp_path):
    from train import main as M

    ref = M.train(TrainConfig(**QUIET, max_steps=6, workdir=str(tmp_path / "ref")), log=lambda s: None)
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 3, "train_loss": 9.0}) + "\n")
    notes = []
    out = M.train(TrainConfig(**QUIET, max_steps=6, workdir=str(workdir), resume=True), log=notes.append)
    assert any("nothing to continue" in n and "starting from step 0" in n for n in notes)
    assert out["step"] == 6 and rows(workdir) == rows(tmp_path / "ref")
    assert ref["val_top1"] == out["val_top1"]
    for a, b in zip(leaves(tmp_path / "ref"), leaves(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (workdir / "curves.png").exists()


def _segment(args, workdir: pathlib.Path, kind: str, env) -> bool:
    """Start ``train.main ... --resume`` and SIGKILL it at the moment ``kind``; False if it finished first."""
    ckpts, metrics = workdir / "checkpoints", workdir / "metrics.jsonl"
    committed = lambda: {int(p.name) for p in ckpts.glob("*") if p.name.isdigit()} if ckpts.exists() else set()  # noqa: E731
    temporary = lambda: {p.name for p in ckpts.iterdir() if ".orbax-checkpoint-tmp" in p.name} if ckpts.exists() \
        else set()  # noqa: E731
    last_row = lambda: max((json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.strip()),  # noqa: E731
                           default=-1) if metrics.exists() else -1
    before, tmp_before = committed(), temporary()
    newest = max(before, default=0)
    # no compilation cache (tests/conftest.py): the fixed delays are to land while the run compiles, and a kill
    # inside a cache write would leave a truncated entry for the later runs
    env = {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # and no cache of the CLI's own:
    proc = subprocess.Popen([sys.executable, "-m", "train.main", *args, "--resume", "--no-compile-cache"], cwd=ROOT,
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, deadline = time.time(), time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if kind.startswith("after:") and time.time() - t0 >= float(kind[6:]):
            break
        if kind == "writing" and temporary() - tmp_before:  # a write this process started
            break
        if kind == "committed" and committed() - before:
            break
        if kind == "evaluated" and last_row() > newest:  # a row past the checkpoint this process resumed from
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_every_moment_then_resume_is_bit_identical(tmp_path):
    """The same command line (``--resume``) killed with SIGKILL once in each phase of a run — while starting
    (0.5 s after start: nothing written yet), right after a checkpoint commit (mid-epoch), inside an
    asynchronous checkpoint write (widened by ``CNNJAX_TEST_CHECKPOINT_DELAY``), right after an evaluation row
    was written past the newest checkpoint (the end of epoch 1, step 22, is not a multiple of 4), while
    restoring and compiling after a resume (4 s after start, 24 steps and 6 slowed writes before the end) — and
    run once more to the end gives bit-identical
    parameters and the same ``metrics.jsonl`` as an uninterrupted run; repeating the command after the run
    finished changes nothing. (One kill per phase: a second kill in the same phase runs the same code.)"""
    from train import main as M

    common = [*TINY, "--epochs", "2", "--checkpoint-every", "4"]
    ref = tmp_path / "ref"
    assert M.main([*common, "--workdir", str(ref)]) == 0  # in-process: the reference is not about processes
    workdir = tmp_path / "killed"
    args = [*common, "--workdir", str(workdir)]
    env = cli_env(CNNJAX_TEST_CHECKPOINT_DELAY="0.5")
    moments = ["after:0.5", "committed", "writing", "evaluated", "after:4"]
    kills = [m for m in moments if _segment(args, workdir, m, env)]
    assert kills == moments, kills  # every phase was hit before the run finished
    # killed before the end. No row need be left: the "evaluated" kill lands on the epoch-1 row (step 22) past
    # the newest checkpoint (20), the resume drops it, and a slow machine may still be compiling at the last kill
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) < 44 and max((r["step"] for r in rows(workdir)), default=0) < 44
    done = run_cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr
    for a, b in zip(leaves(ref), leaves(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert rows(workdir) == rows(ref)
    # the same command after the run finished: nothing changes
    steps_before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    params_before, rows_before = leaves(workdir), rows(workdir)
    assert M.main([*args, "--resume"]) == 0  # in-process: the command, not the process, is what is repeated
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == steps_before
    assert rows(workdir) == rows_before
    for a, b in zip(params_before, leaves(workdir), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------- bad data


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from cnnjax.data.pil_transforms import to_mode

    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as im:
        assert im.mode.startswith("I")
        clipped = np.asarray(im.convert("RGB"))[..., 0]
    with Image.open(tmp_path / "wide.png") as im:
        got = np.asarray(to_mode(im, 3))
        gray = np.asarray(to_mode(im, 1))
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert (gray == expected).all()
    assert got.shape == (64, 64, 3) and (got == expected[..., None]).all()
    assert (clipped == 255).mean() > 0.9  # what a plain convert("RGB") does: the check above can fail


def test_folder_skips_non_image_and_broken_files_with_one_warning(tmp_path):
    from cnnjax.data.folder import scan_folder

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
            Image.fromarray((rng.integers(0, 65535, (8, 8))).astype(np.uint16)).save(d / "wide.png")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file"):
        classes, splits, _ = scan_folder(tmp_path)
    assert classes == ["a", "b"]
    assert len(splits["train"][0]) == 6 and not any(f.endswith((".txt", "broken.jpg")) for f in splits["train"][0])


# --------------------------------------------------------------------------------------------- exit codes


def test_exit_codes_are_documented_in_help():
    text = C.build_parser().format_help()
    for code in ("0 done", "2 bad input", "3 non-finite", "4 storage", "5 another process", "130/143"):
        assert code in " ".join(text.split()), code


def test_storage_error_message_names_the_failed_step(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(1, {"x": np.ones(2)}, {})
    store.wait()
    _fail_writes_after(monkeypatch, good=0)
    with pytest.raises(StorageError, match=r"writing checkpoint 2 .*steps \[1\]"):
        store.save(2, {"x": np.ones(2)}, {})
        store.wait()
    store.close(raise_errors=False)
    store = CheckpointStore(tmp_path, read_only=True)
    assert store.steps() == [1]
    store.close()


# ------------------------------------------------------------------------------------- multi-host faults


def _two_processes(args, workdir, port, heartbeat="5"):
    return [subprocess.Popen([sys.executable, "-m", "train.main", *args, "--workdir", str(workdir), "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                              "--heartbeat-timeout", heartbeat], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lost_process_survivor_exits_cleanly_and_both_resume_exactly(tmp_path):
    """SIGKILL of process 1 of a 2-process run: process 0 exits with code 5 and one line naming the lost
    process within --heartbeat-timeout + 15 s (no C++ abort), the committed checkpoints stay restorable, and
    restarting both with --resume ends bit-identical to an uninterrupted 2-process run."""
    args = [*TINY, "--epochs", "2", "--checkpoint-every", "5"]
    ref = _two_processes(args, tmp_path / "ref", _free_port())
    assert [p.wait(timeout=300) for p in ref] == [0, 0], [p.stdout.read() for p in ref]
    workdir = tmp_path / "cut"
    procs = _two_processes(args, workdir, _free_port())
    ckpts, deadline = workdir / "checkpoints", time.time() + 240
    while not (ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpts.iterdir())):
        assert time.time() < deadline and procs[0].poll() is None, "no checkpoint appeared"
        time.sleep(0.02)
    procs[1].kill()
    t0 = time.time()
    out = procs[0].communicate(timeout=120)[0]
    assert procs[0].returncode == C.EXIT_LOST_PEER, out
    assert time.time() - t0 < 5 + 15, out
    assert "lost process(es) 1 of 2" in out and "Check failure" not in out and "Traceback" not in out
    procs[1].wait()
    assert "params" in checkpoint.restore(workdir)
    again = _two_processes([*args, "--resume"], workdir, _free_port())
    outs = [p.communicate(timeout=300)[0] for p in again]
    assert [p.returncode for p in again] == [0, 0], outs
    for a, b in zip(leaves(tmp_path / "ref"), leaves(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert rows(workdir) == rows(tmp_path / "ref")


@pytest.mark.slow
def test_full_disk_while_writing_metrics_is_a_storage_error(tmp_path, monkeypatch, capfd):
    from train import main as M
    from train import report

    def full(path, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "append_jsonl", full)
    code = C.main_exit(lambda: M.train(TrainConfig(**QUIET, max_steps=4, workdir=str(tmp_path / "run")),
                                       log=lambda s: None))
    err = capfd.readouterr().err
    assert code == C.EXIT_STORAGE and "metrics.jsonl failed (No space left on device)" in err, err
    assert "Traceback" not in err
