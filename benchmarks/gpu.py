"""The GPU check: correctness on the accelerator, then ResNet-50 bf16 training speed vs torchvision, one JSON file.

    PYTHONPATH=. python -m benchmarks.gpu --out gpu.json          # what benchmarks/gpu.sh runs (< 5 min)
    PYTHONPATH=. python -m benchmarks.gpu --smoke --out /tmp/g.json  # tiny sizes: the same code path on a CPU

Needs only what the GPU image has (jax, flax, optax, orbax, chex, torch, torchvision; no TensorFlow, Grain,
dm-pix or network). Sections, each recorded with its time and ``ok``; a failing section is recorded with its error
and the next one still runs:

1. ``parity``: resnet18, mobilenet_v2 and convnext_tiny at random init (randomised norms), converted with
   ``cnnjax.weights.from_torchvision``: eval logits of cnnjax (on the JAX device, float32 matmul precision) and
   torchvision (on CUDA, TF32 off) agree to 1e-4 of the largest logit.
2. ``conv``: ``cnnjax.ops.conv2d`` with each algorithm (xla, gemm, winograd, fft) and its input and kernel
   gradients equal ``lax.conv_general_dilated`` at HIGHEST precision on a few shapes (stride, dilation, groups).
3. ``train_bf16``: a short bf16 ``resnet20`` run on the bundled digits through ``train.main.train`` (6 epochs,
   132 steps): the last epoch's train loss must be below the first's and below 2.0.
4. ``speed``: the ResNet-50 train step, bf16, batch 256 (``--batch-size``), synthetic 224x224: cnnjax
   (``train.benchmark.BenchmarkStep``, ``--conv-impl xla``) vs torchvision eager channels_last with AMP
   (``benchmarks.torch_step.TorchStep``, ``cudnn.benchmark`` on), alternating, medians; targets
   >= 1.0x torchvision and >= 6,000 img/s on an H200.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch  # before anything that could import TensorFlow (tests/conftest.py); nothing here does

PARITY_ARCHS = ("resnet18", "mobilenet_v2", "convnext_tiny")
CONV_CASES = (  # (x shape NHWC, kernel HWIO, stride, padding, dilation, groups)
    ((2, 17, 19, 16), (3, 3, 16, 32), 1, 1, 1, 1),
    ((2, 17, 19, 16), (3, 3, 16, 32), 2, 1, 1, 1),
    ((2, 17, 19, 16), (3, 3, 4, 32), 1, 2, 2, 4),
    ((2, 16, 16, 8), (5, 5, 8, 8), 1, 2, 1, 1),
    ((2, 16, 16, 8), (1, 1, 8, 24), 1, 0, 1, 1),
)


def section(results: dict, name: str, fn: Callable[[], dict]) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as err:  # record and go on: one broken section must not hide the others
        results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                         "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps({name: {k: v for k, v in results[name].items() if k != "traceback"}}), flush=True)


def parity(size: int, device: str) -> dict:
    import jax
    import jax.numpy as jnp
    import torchvision

    from cnnjax import models
    from cnnjax.weights import from_torchvision
    from tests._torch_models import randomize_norms, rel_err

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    errors = {}
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    for arch in PARITY_ARCHS:
        torch.manual_seed(0)
        tm = randomize_norms(getattr(torchvision.models, arch)().eval()).to(device)
        variables = jax.tree_util.tree_map(jnp.asarray, from_torchvision(arch, {k: v.cpu() for k, v in
                                                                                tm.state_dict().items()}))
        model = models.create(arch)
        with jax.default_matmul_precision("float32"):
            ours = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
        with torch.inference_mode():
            theirs = tm(torch.from_numpy(x).permute(0, 3, 1, 2).to(device)).float().cpu().numpy()
        errors[arch] = rel_err(ours, theirs)
    return {"ok": all(e <= 1e-4 for e in errors.values()), "rel_err": errors, "tolerance": 1e-4}


def _sin_sum(f: Callable) -> Callable:
    """A scalar of a convolution's output whose gradient weights every output element differently."""
    import jax.numpy as jnp

    return lambda x, w: jnp.sum(jnp.sin(f(x, w)))


def conv() -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from cnnjax.ops import conv2d

    rng = np.random.default_rng(0)
    worst = {}
    for xs, ws, s, p, d, g in CONV_CASES:
        x = jnp.asarray(rng.normal(size=xs), jnp.float32)
        w = jnp.asarray(rng.normal(size=ws), jnp.float32)

        def ref(x, w, s=s, p=p, d=d, g=g):
            return lax.conv_general_dilated(x, w, (s, s), ((p, p),) * 2, rhs_dilation=(d, d),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g,
                                            precision=lax.Precision.HIGHEST)

        want = [ref(x, w), *jax.grad(_sin_sum(ref), (0, 1))(x, w)]
        for impl in ("xla", "gemm", "winograd", "fft"):
            def ours(x, w, impl=impl, s=s, p=p, d=d, g=g):
                return conv2d(x, w, stride=s, padding=p, dilation=d, groups=g, impl=impl,
                              precision=lax.Precision.HIGHEST)

            with jax.default_matmul_precision("float32"):
                got = [ours(x, w), *jax.grad(_sin_sum(ours), (0, 1))(x, w)]
            err = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(got, want, strict=True))
            worst[impl] = max(worst.get(impl, 0.0), err)
    return {"ok": all(e < 1e-4 for e in worst.values()), "max_rel_err": worst, "tolerance": 1e-4,
            "cases": len(CONV_CASES)}


def train_bf16(epochs: int) -> dict:
    from train.config import TrainConfig
    from train.main import train
    from train.report import read_jsonl

    with tempfile.TemporaryDirectory() as workdir:
        cfg = TrainConfig(arch="resnet20", dataset="digits", precision="bf16", batch_size=64, epochs=epochs,
                          lr=0.1, progress=False, workdir=workdir + "/run", compile_cache="off")
        train(cfg, log=lambda _: None)
        metrics = read_jsonl(pathlib.Path(workdir) / "run" / "metrics.jsonl")
    losses = [m["train_loss"] for m in metrics]
    return {"ok": len(losses) >= 2 and losses[-1] < losses[0] and losses[-1] < 2.0, "train_loss": losses,
            "val_top1": metrics[-1].get("val_top1"), "epochs": epochs,
            "rule": "the last epoch's train loss < the first's and < 2.0 (chance: ln 10 = 2.30)"}


def speed(batch: int, size: int, repeats: int, device: str) -> dict:
    from benchmarks.compare_torchvision import alternate
    from benchmarks.torch_step import TorchStep
    from train.benchmark import BenchmarkStep
    from train.config import TrainConfig

    torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(arch="resnet50", batch_size=batch, image_size=size, precision="bf16", conv_impl="xla",
                      zero_init_residual="off", compile_cache="off")
    ours = BenchmarkStep(cfg)
    theirs = TorchStep("resnet50", batch, size, "bf16", device, False)
    times = alternate({"cnnjax": ours, "torchvision": theirs}, 3, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch / v for k, v in med.items()}
    ratio = ips["cnnjax"] / ips["torchvision"]
    return {"ok": True, "images_per_sec": ips, "ratio": ratio, "step_s": times, "batch_size": batch,
            "image_size": size, "cnnjax_first_step_s": ours.first_step_s,
            "targets": {"ratio >= 1.0": ratio >= 1.0, "cnnjax >= 6000 img/s": ips["cnnjax"] >= 6000}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (the same code path on a CPU, seconds)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--skip", nargs="*", default=[], choices=("parity", "conv", "train_bf16", "speed"))
    args = p.parse_args()
    import jax

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict = {"env": {"jax": jax.__version__, "backend": jax.default_backend(),
                             "jax_device": jax.devices()[0].device_kind, "devices": jax.device_count(),
                             "torch": torch.__version__, "torch_device": device,
                             "cuda": torch.version.cuda, "python": platform.python_version(), "smoke": args.smoke}}
    print(json.dumps(results["env"]), flush=True)
    plan = {"parity": lambda: parity(64 if args.smoke else 160, device), "conv": conv,
            "train_bf16": lambda: train_bf16(2 if args.smoke else 6),
            "speed": lambda: speed(4 if args.smoke else args.batch_size, 64 if args.smoke else 224,
                                   3 if args.smoke else args.repeats, device)}
    for name, fn in plan.items():
        if name not in args.skip:
            section(results, name, fn)
            write(results, args.out)  # after every section: a run cut off by gpu.sh's timeout keeps what it did
    write(results, args.out, done=True)
    print(f"wrote {args.out}; all checks ok: {results['ok']}")


def write(results: dict, path: str, done: bool = False) -> None:
    """``results`` to ``path`` atomically (a temporary file, then ``os.replace``), with ``ok`` over the
    sections so far and ``complete``: whether every planned section ran."""
    results["ok"] = all(v.get("ok", True) for k, v in results.items() if isinstance(v, dict) and k != "env")
    results["complete"] = done
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
