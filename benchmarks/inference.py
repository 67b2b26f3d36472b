"""CPU inference: cnnjax's jitted ``model.apply`` (the library's default ``conv_impl``, ``fast``) vs torchvision
(eager, ``channels_last``, ``torch.inference_mode``; bf16: ``torch.autocast``) vs onnxruntime running cnnjax's ONNX
export (:mod:`cnnjax.export_onnx`, fp32 only), the same weights, 224x224, batch 1 and 32; medians in ms.

``python -m benchmarks.inference --archs resnet50 mobilenet_v2 convnext_tiny --batches 1 32 --precisions fp32 bf16``
(prints a Markdown table; needs the ``torch`` and ``export`` extras; ``--no-onnx`` without the latter). cnnjax bf16
is ``models.create(arch, dtype=bfloat16)``: bf16 compute, float32 parameters, as in training.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_ms


def cnnjax_forward(arch: str, precision: str = "fp32", conv_impl: str | None = None):
    """``(model, variables, apply)``: ``models.create(arch)`` (``conv_impl`` if given, else the library's default)
    on random weights from ``jax.random.key(0)``, and the jitted eval-mode ``apply(variables, x)`` — bf16: the model
    cloned with ``dtype=bfloat16``, float32 parameters. Also what ``benchmarks.profile_step --inference`` traces."""
    from cnnjax import models

    model = models.create(arch, **({"conv_impl": conv_impl} if conv_impl else {}))
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    run_model = model.clone(dtype=jnp.bfloat16) if precision == "bf16" else model
    return model, variables, jax.jit(lambda v, x: run_model.apply(v, x, False))


def _frameworks(arch: str, x: np.ndarray, precision: str = "fp32", conv_impl: str | None = None,
                onnx: bool = True):
    """``{name: fn()}`` for one architecture and input ``x`` (NHWC float32): the same random weights in each."""
    import torch
    import torchvision

    from cnnjax import weights

    bf16 = precision == "bf16"
    model, variables, apply = cnnjax_forward(arch, precision, conv_impl)
    tv = getattr(torchvision.models, arch)().eval()
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in
             weights.to_torchvision(arch, jax.device_get(variables)).items()}
    tv.load_state_dict(state)
    tv = tv.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(memory_format=torch.channels_last)

    def torch_fn():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return tv(xt)

    fns = {"cnnjax": lambda: jax.block_until_ready(apply(variables, x)), "torchvision": torch_fn}
    if onnx and not bf16:
        import onnxruntime as ort

        from cnnjax.export_onnx import to_onnx

        onnx_model = to_onnx(lambda x: model.clone(conv_impl="xla").apply(variables, x, False), (1, *x.shape[1:]))
        sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        fns["onnxruntime"] = lambda: sess.run(None, {"images": x})
    return fns


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "mobilenet_v2", "convnext_tiny"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    p.add_argument("--conv-impl", default=None, help="cnnjax's algorithm (default: the library's, fast)")
    p.add_argument("--no-onnx", action="store_true", help="leave out onnxruntime (no 'export' extra)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    print("| arch | precision | batch | cnnjax ms | torchvision ms | cnnjax / torchvision speed | onnxruntime ms |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs:
        for precision in args.precisions:
            for n in args.batches:
                x = np.random.RandomState(0).rand(n, 224, 224, 3).astype(np.float32)
                fns = _frameworks(arch, x, precision, args.conv_impl, not args.no_onnx)
                ms = {k: median_ms(fn, runs=args.runs) for k, fn in fns.items()}
                ort_ms = f"{ms['onnxruntime']:.1f}" if "onnxruntime" in ms else "—"
                print(f"| {arch} | {precision} | {n} | {ms['cnnjax']:.1f} | {ms['torchvision']:.1f} | "
                      f"**{ms['torchvision'] / ms['cnnjax']:.2f}** | {ort_ms} |", flush=True)


if __name__ == "__main__":
    main()
