"""``python -m cnnjax.export --arch A --init torchvision:A[.WEIGHTS]|RUN_DIR --format stablehlo|savedmodel|onnx
--out PATH``.

Writes a trained model as a self-contained artifact that runs without cnnjax (issue #15):

* ``stablehlo``: :func:`jax.export.export` of the eval-mode forward pass with the weights baked in as constants
  and a symbolic batch dimension ``b``: input float32 NHWC ``(b, S, S, C)``, output float32 logits ``(b, K)``.
  ``PATH`` gets the serialized bytes (``jax.export.deserialize(open(PATH, 'rb').read()).call(x)`` in any
  process with jax; cnnjax need not be installed), and ``PATH.json`` the sidecar.
* ``savedmodel``: a TensorFlow SavedModel directory at ``PATH`` (needs TensorFlow, the ``data`` extra; imported
  only for this format) made with :func:`jax.experimental.jax2tf.convert` and a polymorphic batch
  (``polymorphic_shapes=["(b, ...)"]``): the weights are ``tf.Variable`` s of the module, the graph is one
  ``XlaCallModule`` op (jax2tf's native serialization, lowered for ``cpu`` unless ``--platforms`` says otherwise),
  and the ``serving_default`` signature maps ``images`` ``(None, S, S, C)`` to ``logits`` ``(None, K)``
  (``tf.saved_model.load(PATH).signatures["serving_default"](images=x)["logits"]``, or ``.serve(x)``; TensorFlow
  only, no jax or cnnjax). ``PATH.json``: the same sidecar, plus the signature's names.

* ``onnx``: an ONNX model file at ``PATH`` (opset 18; needs the ``export`` extra's ``onnx``, imported only for this
  format) written by cnnjax's own jaxpr converter :mod:`cnnjax.export_onnx` (jax2tf's SavedModel is one
  ``XlaCallModule`` op that tf2onnx cannot convert, and jax2onnx 0.17.1 requires orbax-checkpoint 0.11): input
  ``images`` ``(N, S, S, C)`` NHWC with a dynamic batch ``N``, output ``logits`` ``(N, K)``, the weights as
  initializers (``onnxruntime.InferenceSession(PATH).run(None, {"images": x})[0]``; no jax or cnnjax).

The sidecar JSON says how to feed it: ``input`` (layout, shape with ``"b"``, dtype), the eval transform
(``resize`` shorter side, ``crop``, ``interpolation``: torchvision's PIL ``Resize`` + ``CenterCrop``; ``resize``
null: a plain resize to ``crop x crop``), ``mean``/``std`` of the ``[0, 1]`` pixels, whether normalisation is
inside the graph (``--include-preprocess``: the input is then uint8 ``(b, S, S, C)`` pixels already resized and
cropped, and the graph divides by 255 and normalises; the resize/crop stays outside, being PIL's), the class
names, the architecture and the weights' origin.

Exported graphs use ``conv_impl='xla'`` (``lax.conv_general_dilated``) unless ``--conv-impl`` asks for another
algorithm, so they stay portable to any backend; ``--platforms cpu,cuda,tpu`` lowers for several at once
(default: this machine's backend; not used by onnx).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from cnnjax.data.base import MissingDependencyError

FORMATS = ("stablehlo", "savedmodel", "onnx")
SIGNATURE = {"name": "serving_default", "input": "images", "output": "logits"}


def apply_fn(predictor, include_preprocess: bool = False):
    """``fn(variables, x) -> logits`` of a :class:`cnnjax.predict.Predictor` (eval mode; with
    ``include_preprocess``, uint8 pixels in, divided by 255 and normalised in the graph)."""
    import jax.numpy as jnp

    model = predictor.model
    mean = jnp.asarray(predictor.mean, jnp.float32)
    std = jnp.asarray(predictor.std, jnp.float32)

    def fn(variables, x):
        if include_preprocess:
            x = (x.astype(jnp.float32) / 255.0 - mean) / std
        return model.apply(variables, x, False).astype(jnp.float32)

    return fn


def forward(predictor, include_preprocess: bool = False):
    """``fn(x) -> logits`` of a :class:`cnnjax.predict.Predictor`, the weights closed over (constants)."""
    fn, variables = apply_fn(predictor, include_preprocess), predictor.variables
    return lambda x: fn(variables, x)


def import_tf():
    """TensorFlow for ``--format savedmodel`` (:func:`cnnjax.data.tfpipe.import_tf`: no GPU for TF, quiet)."""
    from cnnjax.data.tfpipe import import_tf as _import_tf

    return _import_tf("--format savedmodel needs TensorFlow", "tensorflow-cpu")


def sidecar(predictor, arch: str, init: str, include_preprocess: bool, fmt: str) -> dict[str, Any]:
    """The JSON that travels with an artifact (see the module docstring)."""
    spec = predictor.spec
    s, c = predictor.size, predictor.channels
    return {"format": fmt, "arch": arch, "init": init,
            "input": {"layout": "NHWC", "shape": ["b", s, s, c], "dtype": "uint8" if include_preprocess else
                      "float32", "normalised_in_graph": include_preprocess},
            "output": {"shape": ["b", len(predictor.class_names)], "dtype": "float32", "kind": "logits"},
            "resize": None if spec is None else spec.resize, "crop": s,
            "interpolation": "bilinear" if spec is None else spec.interpolation,
            "mean": list(predictor.mean), "std": list(predictor.std), "class_names": predictor.class_names}


def export_stablehlo(predictor, out: pathlib.Path, *, include_preprocess: bool = False,
                     platforms: Sequence[str] | None = None) -> bytes:
    """Serialize the forward pass with a symbolic batch dimension; returns (and writes to ``out``) the bytes."""
    import jax
    import jax.numpy as jnp
    from jax import export

    (b,) = export.symbolic_shape("b")
    s, c = predictor.size, predictor.channels
    dtype = jnp.uint8 if include_preprocess else jnp.float32
    exported = export.export(jax.jit(forward(predictor, include_preprocess)),
                             platforms=tuple(platforms) if platforms else None)(
        jax.ShapeDtypeStruct((b, s, s, c), dtype))
    blob = bytes(exported.serialize())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    return blob


def export_savedmodel(predictor, out: pathlib.Path, *, include_preprocess: bool = False,
                      platforms: Sequence[str] | None = None) -> int:
    """Write a SavedModel directory at ``out`` (see the module docstring); returns its size in bytes."""
    import shutil

    import jax
    import numpy as np

    tf = import_tf()
    from jax.experimental import jax2tf

    if out.exists() and not (out.is_dir() and (out / "saved_model.pb").exists()):
        raise FileExistsError(f"--out {out} exists and is not a SavedModel; not overwriting it")
    s, c = predictor.size, predictor.channels
    dtype = tf.uint8 if include_preprocess else tf.float32
    converted = jax2tf.convert(apply_fn(predictor, include_preprocess), polymorphic_shapes=[None, "(b, ...)"],
                               with_gradient=False, native_serialization_platforms=tuple(platforms or ("cpu",)))
    module = tf.Module()
    params = jax.tree.map(lambda a: tf.Variable(np.asarray(a), trainable=False), jax.device_get(predictor.variables))
    module.params = params  # tracked: the SavedModel's variables

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, s, s, c], dtype, name=SIGNATURE["input"])])
    def serve(images):
        return {SIGNATURE["output"]: converted(params, images)}

    module.serve = serve
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, str(tmp), signatures={SIGNATURE["name"]: serve})
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def export_onnx(predictor, out: pathlib.Path, *, include_preprocess: bool = False) -> int:
    """Write the ONNX model of the forward pass to ``out`` (see the module docstring); returns its size in bytes."""
    import numpy as np

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--format onnx needs onnx: pip install 'cnnjax[export]'") from None
    from cnnjax.export_onnx import to_onnx

    s, c = predictor.size, predictor.channels
    model = to_onnx(forward(predictor, include_preprocess), (1, s, s, c),
                    np.uint8 if include_preprocess else np.float32,
                    input_name=SIGNATURE["input"], output_name=SIGNATURE["output"])
    blob = model.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(out)
    return len(blob)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cnnjax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True)
    p.add_argument("--init", required=True, help="torchvision:ARCH[.WEIGHTS] (WEIGHTS: IMAGENET1K_V1 by default, "
                   "IMAGENET1K_V2, DEFAULT, ...) or a train.main run directory / checkpoint")
    p.add_argument("--format", default="stablehlo", help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="the artifact's path (PATH.json: the sidecar)")
    p.add_argument("--include-preprocess", action="store_true",
                   help="uint8 pixels in; /255 and the normalisation inside the graph")
    p.add_argument("--conv-impl", default="xla", help="convolution algorithm in the graph (default xla: portable)")
    p.add_argument("--platforms", default=None, help="comma-separated: cpu, cuda, rocm, tpu (default: this "
                   "machine's for stablehlo, cpu for savedmodel)")
    p.add_argument("--use-ema", action="store_true", help="a run's EMA weights")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest readable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from cnnjax import predict

    args = build_parser().parse_args(argv)
    if args.format not in FORMATS:
        print(f"error: unknown --format {args.format!r}; valid choices: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    try:
        predictor = predict.build(args.arch, args.init, use_ema=args.use_ema, step=args.step,
                                  conv_impl=args.conv_impl)
        platforms = [p.strip() for p in args.platforms.split(",")] if args.platforms else None
        if args.format == "savedmodel":
            size = export_savedmodel(predictor, out, include_preprocess=args.include_preprocess, platforms=platforms)
        elif args.format == "onnx":
            size = export_onnx(predictor, out, include_preprocess=args.include_preprocess)
        else:
            size = len(export_stablehlo(predictor, out, include_preprocess=args.include_preprocess,
                                        platforms=platforms))
    except (ValueError, FileNotFoundError, RuntimeError, OSError, MissingDependencyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = sidecar(predictor, args.arch, args.init, args.include_preprocess, args.format)
    if args.format in ("savedmodel", "onnx"):
        meta["signature"] = dict(SIGNATURE)
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {args.format}, input {meta['input']['dtype']} "
          f"(b, {predictor.size}, {predictor.size}, {predictor.channels}) NHWC) and {out.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
