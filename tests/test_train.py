"""The training CLI end to end on tiny runs (LeNet-5 on the bundled digits): outputs, determinism, exact resume
after SIGKILL and SIGTERM, non-finite loss, bad input, multi-device and multi-process agreement, evaluation."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnnjax import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # subprocess CLI runs

TINY = ["--arch", "lenet5", "--batch-size", "64", "--no-progress", "--log-every", "1"]


def run_cli(args, *, env=None, module="train.main", timeout=300, check=True):
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_main(args, module="train.main"):
    """``module.main(args)`` in this process (no interpreter start, no re-import: ~5 s less than :func:`run_cli`
    on the 2-core CPU); its exit code, ``SystemExit`` from argparse included. For runs that are not about process
    behaviour: what a signal, a kill or a second process does stays in subprocess tests."""
    import importlib

    try:
        return importlib.import_module(module).main(list(args))
    except SystemExit as exit_:
        return exit_.code


def final_params(workdir):
    return jax.tree.leaves(checkpoint.restore(workdir))


def assert_trees_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 2-epoch run with a checkpoint every 5 steps: the baseline for the resume tests."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    assert run_main([*TINY, "--epochs", "2", "--checkpoint-every", "5", "--workdir", str(workdir)]) == 0
    return workdir


def test_run_writes_metrics_config_curves_and_learns(reference_run):
    rows = [json.loads(ln) for ln in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_sec"):
        assert key in rows[-1]
    assert rows[-1]["step"] == 2 * (1438 // 64)
    assert rows[-1]["val_top1"] > 0.5  # two epochs of LeNet-5 on digits: far above chance (0.1)
    assert rows[-1]["val_count"] == 359  # every validation example exactly once
    config = json.loads((reference_run / "config.json").read_text())
    assert config["arch"] == "lenet5" and config["num_classes"] == 10
    assert (reference_run / "curves.png").stat().st_size > 1000


def _run_until_checkpoint_then_signal(args, workdir, sig, min_steps=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "train.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = _checkpoint_steps(workdir)
        if steps and max(steps) >= min_steps:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError("no checkpoint appeared")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def _checkpoint_steps(workdir):
    ckpts = workdir / "checkpoints"
    return [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []


def test_sigterm_saves_then_sigkill_and_resume_is_bit_identical(reference_run, tmp_path):
    """One chain of the same command line: SIGTERM after the first checkpoint saves and exits 143; the run
    continued with ``--resume`` is SIGKILLed after a checkpoint newer than the one it resumed from; a last
    ``--resume`` ends bit-identical (parameters and every validation) to the uninterrupted run."""
    workdir = tmp_path / "cut"
    args = [*TINY, "--epochs", "2", "--checkpoint-every", "5", "--workdir", str(workdir)]
    code, out = _run_until_checkpoint_then_signal(args, workdir, signal.SIGTERM, min_steps=5)
    assert code == 128 + signal.SIGTERM, out  # saved, but not finished: 143 tells a scheduler to requeue
    assert "continue with --resume" in out
    saved = max(_checkpoint_steps(workdir))
    assert saved < 44, out  # stopped before the end
    code, out = _run_until_checkpoint_then_signal([*args, "--resume"], workdir, signal.SIGKILL,
                                                  min_steps=saved + 1)
    assert code == -signal.SIGKILL, out
    assert f"resumed from {workdir} at step {saved}" in out
    run_cli([*args, "--resume"])
    assert_trees_equal(final_params(reference_run), final_params(workdir))
    a = (reference_run / "metrics.jsonl").read_text().splitlines()
    b = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["val_top1"] for x in a] == [json.loads(x)["val_top1"] for x in b]


def test_corrupt_latest_checkpoint_falls_back_with_warning(reference_run, tmp_path):
    import shutil

    workdir = tmp_path / "corrupt"
    shutil.copytree(reference_run, workdir)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    latest = workdir / "checkpoints" / str(steps[-1]) / "state"
    for f in latest.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="could not be read"):
        variables = checkpoint.restore(workdir)
    assert "params" in variables


def test_nonfinite_loss_stops_with_exit_code_and_keeps_good_checkpoint(tmp_path, capfd):
    code = run_main([*TINY, "--epochs", "1", "--lr", "1e12", "--optimizer", "sgd", "--checkpoint-every", "1",
                     "--warmup-epochs", "0", "--workdir", str(tmp_path / "nan")])
    err = capfd.readouterr().err
    assert code == 3, err
    assert "non-finite loss or parameters" in err
    ckpt = tmp_path / "nan" / "checkpoints"
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
        assert all(np.isfinite(np.asarray(x)).all() for x in final_params(tmp_path / "nan"))


@pytest.mark.parametrize("args,expected", [
    (["--arch", "resnet51"], "valid choices"),
    (["--arch", "lenet5", "--dataset", "mnist"], "valid choices are digits, mnist5k, shapes, synthetic"),
    (["--arch", "lenet5", "--optimizer", "lamb"], "invalid choice"),
    (["--arch", "lenet5", "--precision", "fp8"], "invalid choice"),
    (["--arch", "alexnet"], "at least 63x63, got 32x32"),
    (["--arch", "lenet5", "--batch-size", "0"], "must be >= 1"),
    (["--arch", "lenet5", "--model-opt", "dropout=0.1"], "lenet5 has no option 'dropout'; its options: act, modern"),
])
def test_bad_input_fails_early_with_the_valid_choices(args, expected, tmp_path, capfd):
    """In-process (argparse's exit and ``main``'s return code are the process's exit status; the subprocess
    path of exit 2 is tests/test_transfer.py::test_transfer_without_init_is_refused)."""
    t0 = time.time()
    code = run_main([*args, "--workdir", str(tmp_path / "bad"), "--no-progress"])
    assert code == 2
    assert expected in capfd.readouterr().err
    assert time.time() - t0 < 30


def test_eight_devices_give_the_same_losses_as_one(tmp_path):
    """... with every on-device augmentation stage on: its keys are per row of the GLOBAL batch."""
    common = [*TINY, "--max-steps", "6", "--checkpoint-every", "100", "--augment", "flip", "--mixup", "0.2",
              "--cutmix", "1.0", "--random-erasing", "0.5"]
    if jax.device_count() == 1:  # this process is the one-device run: no interpreter start
        assert run_main([*common, "--workdir", str(tmp_path / "one")]) == 0
    else:
        run_cli([*common, "--workdir", str(tmp_path / "one")],
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert json.loads((tmp_path / "one" / "config.json").read_text())["devices"] == 1
    run_cli([*common, "--workdir", str(tmp_path / "eight")],
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert json.loads((tmp_path / "eight" / "config.json").read_text())["devices"] == 8
    one = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    eight = json.loads((tmp_path / "eight" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", "val_loss", "val_top1"):
        assert eight[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5)
    for a, b in zip(final_params(tmp_path / "one"), final_params(tmp_path / "eight")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def test_two_processes_on_localhost_train_and_agree(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "train.main", *TINY, "--max-steps", "4", "--checkpoint-every",
                               "100", "--workdir", str(tmp_path / "mp"), "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = [[ln for ln in out.splitlines() if ln.startswith("epoch 1:")] for out in outs]
    assert lines[0] and lines[0][0].split("|")[:2] == lines[1][0].split("|")[:2]  # same train and val metrics
    config = json.loads((tmp_path / "mp" / "config.json").read_text())
    assert config["processes"] == 2 and config["devices"] == 2


def test_evaluate_cli_reproduces_the_final_validation(reference_run):
    proc = run_cli(["--arch", "lenet5", "--init", str(reference_run), "--no-progress"], module="train.evaluate")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    last = json.loads((reference_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["val_top1"] == pytest.approx(last["val_top1"], abs=1e-9)
    assert result["val_count"] == 359


def test_bf16_training_keeps_float32_parameters(tmp_path):
    assert run_main([*TINY, "--max-steps", "3", "--precision", "bf16", "--workdir", str(tmp_path / "bf16")]) == 0
    leaves = final_params(tmp_path / "bf16")
    assert all(np.asarray(x).dtype == np.float32 for x in leaves)
    row = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])


def test_evaluate_with_torchvision_weights_from_the_cache(tmp_path, monkeypatch, capsys):
    """`--init torchvision:ARCH` reads the cached file (here an .npz written from random variables): evaluation
    then equals the converted model's own predictions, and a class-count mismatch is refused (in-process: the
    subprocess CLI path is covered by the other evaluate test)."""
    from cnnjax import models, weights
    from train import evaluate

    model = models.create("resnet18", conv_impl="fast")  # the algorithm train.evaluate uses by default
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    name = pathlib.Path(weights.torchvision_info("resnet18")["url"]).name
    weights.export_npz(weights.to_torchvision("resnet18", jax.device_get(variables)),
                       tmp_path / "torchvision" / pathlib.Path(name).with_suffix(".npz").name)
    monkeypatch.setenv("CNNJAX_CACHE", str(tmp_path))
    spec = "synthetic:num_classes=1000,image_size=32,num_train=16,num_val=12"
    assert evaluate.main(["--arch", "resnet18", "--init", "torchvision:resnet18", "--dataset", spec,
                          "--batch-size", "4", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val_count"] == 12
    from cnnjax.data import load

    batches = list(load(spec).batches("val", 12))
    logits = model.apply(variables, batches[0]["image"], False)
    expected = float(np.mean(np.argmax(np.asarray(logits), -1) == batches[0]["label"]))
    assert result["val_top1"] == pytest.approx(expected, abs=1e-9)
    assert evaluate.main(["--arch", "resnet18", "--init", "torchvision:resnet18", "--dataset", "digits:channels=3",
                          "--no-progress"]) == 2
    assert "1000 ImageNet classes" in capsys.readouterr().err


def test_resume_with_ema_accumulation_and_clipping_is_exact(tmp_path, capsys):
    """A SIGKILLed run resumed equals the uninterrupted one bit for bit, with EMA, accumulation (soft targets
    split into micro-batches), clipping, a step schedule and on-device augmentation (RandAugment, MixUp/CutMix,
    erasing: keyed by (seed, step))."""
    recipe = [*TINY, "--epochs", "2", "--checkpoint-every", "5", "--ema-decay", "0.9", "--ema-every", "2",
              "--no-ema-adjust", "--grad-accum-steps", "4", "--clip-grad-norm", "1.0", "--schedule", "step",
              "--lr-step-size", "1", "--augment", "randaugment:1,5", "--mixup", "0.2", "--cutmix", "1.0",
              "--random-erasing", "0.1"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert run_main([*recipe, "--workdir", str(ref)]) == 0  # in-process: compiles once for the runs below
    code, _ = _run_until_checkpoint_then_signal([*recipe, "--workdir", str(killed)], killed, signal.SIGKILL,
                                                min_steps=10)
    assert code == -signal.SIGKILL
    run_cli([*recipe, "--workdir", str(killed), "--resume"])
    assert_trees_equal(final_params(ref), final_params(killed))
    ema = lambda w: jax.tree.leaves(checkpoint.restore(w, ema=True))  # noqa: E731
    assert_trees_equal(ema(ref), ema(killed))
    rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_top1_ema"] > 0.3 and "val_loss_ema" in rows[-1]
    with pytest.raises(AssertionError):  # the EMA is not the raw weights
        assert_trees_equal(ema(ref), final_params(ref))
    capsys.readouterr()
    assert run_main(["--arch", "lenet5", "--init", str(ref), "--use-ema", "--no-progress"], "train.evaluate") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["val_top1"] == pytest.approx(
        rows[-1]["val_top1_ema"])


def test_same_seed_and_config_file_repeat_a_run_bit_identically(reference_run, tmp_path):
    """A subprocess started from the saved config.json (same seed) repeats the in-process reference run: the
    same metrics and bit-identical parameters (determinism and the config round trip in one run)."""
    run_cli(["--config", str(reference_run / "config.json"), "--workdir", str(tmp_path / "again")])
    strip = lambda path: [{k: v for k, v in json.loads(x).items() if k != "images_per_sec"}  # noqa: E731
                          for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "again") == strip(reference_run)
    assert_trees_equal(final_params(reference_run), final_params(tmp_path / "again"))
