"""CPU inference, fp32: cnnjax's jitted ``model.apply`` vs torchvision (eager, ``no_grad``) vs onnxruntime running
cnnjax's ONNX export (:mod:`cnnjax.export_onnx`), the same weights, 224x224, batch 1 and 32; medians in ms.

``python -m benchmarks.inference --archs resnet50 mobilenet_v2 convnext_tiny --batches 1 32 --runs 3``
(prints a Markdown table; needs the ``torch`` and ``export`` extras).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.timing import median_ms


def _frameworks(arch: str, x: np.ndarray):
    """``{name: fn()}`` for one architecture and input ``x`` (NHWC float32): the same random weights in each."""
    import onnxruntime as ort
    import torch
    import torchvision

    from cnnjax import models, weights
    from cnnjax.export_onnx import to_onnx

    model = models.create(arch, conv_impl="xla")
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    apply = jax.jit(lambda v, x: model.apply(v, x, False))
    tv = getattr(torchvision.models, arch)().eval()
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in
             weights.to_torchvision(arch, jax.device_get(variables)).items()}
    tv.load_state_dict(state)
    tv = tv.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(memory_format=torch.channels_last)
    onnx_model = to_onnx(lambda x: model.apply(variables, x, False), (1, *x.shape[1:]))
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])

    def torch_fn():
        with torch.no_grad():
            return tv(xt)

    return {"cnnjax": lambda: jax.block_until_ready(apply(variables, x)), "torchvision": torch_fn,
            "onnxruntime": lambda: sess.run(None, {"images": x})}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "mobilenet_v2", "convnext_tiny"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    print("| arch | batch | cnnjax ms | torchvision ms | onnxruntime ms | img/s (cnnjax / torchvision / onnxruntime) |")
    print("|---|---|---|---|---|---|")
    for arch in args.archs:
        for n in args.batches:
            x = np.random.RandomState(0).rand(n, 224, 224, 3).astype(np.float32)
            ms = {k: median_ms(fn, runs=args.runs) for k, fn in _frameworks(arch, x).items()}
            rates = " / ".join(f"{n * 1e3 / v:.1f}" for v in ms.values())
            print(f"| {arch} | {n} | {ms['cnnjax']:.1f} | {ms['torchvision']:.1f} | {ms['onnxruntime']:.1f} | "
                  f"{rates} |", flush=True)


if __name__ == "__main__":
    main()
