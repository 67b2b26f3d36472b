"""Analysis tools from the command line: ``python -m cnnjax.analyze TOOL [options]``.

Tools (each prints a table and writes PNGs under ``--out``, default ``analysis_out/``):

* ``filters``: classic kernels on a real photo; the 1x1 RGB->gray and RGB->RGB+(R+G) convolutions; conv
  parameter counts; average pooling as a convolution;
* ``receptive-field``: per-layer receptive field (size, jump, start) traced from ``--arch``; ``--check``
  compares with input gradients of a randomly re-drawn network;
* ``erf``: effective receptive field (Luo et al. 2016) of an untrained and a briefly trained network;
* ``equivariance``: the exact shift laws, then shift consistency (Zhang 2019) of a zoo model, with and without
  anti-aliasing (``--compare-antialias``);
* ``occlusion``: occlusion sensitivity map (Zeiler & Fergus 2013) of one validation image;
* ``filter-grid``: the first convolution's filters;
* ``feature-maps``: the output of any named layer for one image (``--list`` prints the layer names);
* ``convert``: rewrite a variables file of the old ``.msgpack``/``.npz`` format as an orbax run directory.

"Trained" models come from ``--checkpoint PATH`` (a ``train.main`` run directory or any orbax checkpoint of the
project, e.g. one written by ``--save-checkpoint``; old ``.msgpack``/``.npz`` files are still read) or from a
short in-process run of the training core (``--steps N``, 0 = untrained; :mod:`cnnjax.analysis.training`). The
training CLI lives in ``train/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax import nn as cnn
from cnnjax.analysis import equivariance as eq
from cnnjax.analysis import fields as rf
from cnnjax.analysis import filters as flt
from cnnjax.analysis import occlusion as occ
from cnnjax.analysis import training
from cnnjax.analysis import visualize as vis
from cnnjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from cnnjax.ops import conv2d

DEFAULT_OUT = "analysis_out"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths))] +
                     [line.format(*r) for r in body])


def _default_size(arch: str) -> int:
    from cnnjax.summary import default_image_size

    return default_image_size(arch)


def _photo_input(size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(display image (S, S, 3) in [0, 1], model input (1, S, S, channels) ImageNet-normalised)."""
    photo = flt.load_photo(size)
    x = (photo - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    if channels != 3:
        x = np.repeat(x.mean(-1, keepdims=True), channels, -1)
    return photo, x[None].astype(np.float32)


def _arch_check(parser: argparse.ArgumentParser, arch: str) -> None:
    if arch not in models.names():
        parser.error(models.registry.unknown_name_message(arch))


def _model_for_data(arch: str, source, **overrides):
    info = source.info
    return models.create(arch, num_classes=info.num_classes, in_channels=info.channels, **overrides)


def _load_data(spec: str, image_size: int | None, seed: int = 0):
    from cnnjax import data

    return data.load(spec, image_size=image_size, seed=seed)


def _trained_model(args):
    """``(source, model, variables)`` for the commands that look at a trained network (``--data``, ``--arch``,
    ``--steps``/``--checkpoint``)."""
    source = _load_data(args.data, args.image_size, args.seed)
    model = _model_for_data(args.arch, source)
    return source, model, _trained(model, source, args)


def _trained(model, source, args, log=print):
    """Variables from --checkpoint, else a quick SGD run of --steps (0: the initialisation)."""
    if getattr(args, "checkpoint", None):
        variables = training.load_variables(args.checkpoint)
        log(f"loaded variables from {args.checkpoint}; val accuracy "
            f"{training.evaluate(model, variables, source):.3f}")
        return variables
    if args.steps <= 0:
        return training.init_variables(model, source.info.image_size, source.info.channels, args.seed)
    log(f"training {args.arch} on {source.info.name} for {args.steps} steps (SGD, lr {args.lr}) ...")
    variables, stats = training.quick_train(model, source, steps=args.steps, seconds=args.seconds, lr=args.lr,
                                            batch_size=args.batch_size, seed=args.seed, log=log)
    log(f"  {stats['steps']} steps in {stats['seconds']:.0f} s, train loss {stats['train_loss']:.3f}, "
        f"val accuracy {stats['val_accuracy']:.3f}")
    if getattr(args, "save_checkpoint", None):
        log(f"  saved to {training.save_variables(args.save_checkpoint, variables)}")
    return variables


# ------------------------------------------------------------------------------------------------- tools


def cmd_filters(args) -> int:
    out = Path(args.out)
    photo = flt.load_photo(args.image_size)
    x = jnp.asarray(photo)[None]
    results = {"original": photo}
    rows = []
    for name in flt.filter_names():
        k = flt.kernel(name)
        y = np.asarray(flt.apply_filter(x, k))[0]
        shown = np.abs(y) if name.startswith(("edge", "sobel")) else y
        results[name] = shown if name in ("identity", "sharpen", "box_blur", "gaussian") else shown.mean(-1)
        rows.append((name, f"{k.shape[0]}x{k.shape[1]}", f"{k.sum():+.3f}", f"{y.min():+.3f}", f"{y.max():+.3f}",
                     f"{np.abs(y - photo).mean():.4f}"))
    results["sobel magnitude"] = np.asarray(flt.sobel_magnitude(x))[0].mean(-1)
    for key in ("identity", "sharpen", "box_blur", "gaussian"):
        results[key] = np.clip(results[key], 0, 1)
    print(f"photo: {photo.shape[0]}x{photo.shape[1]} RGB in [0, 1] (matplotlib's grace_hopper.jpg)")
    print(_table(("filter", "kernel", "sum", "out min", "out max", "mean |out - in|"), rows))
    path = vis.save_image_grid(out / "filters.png", results, cols=5, scale="p99", dpi=args.dpi,
                               suptitle="kernels as depthwise lax convolutions (|response| for edge detectors)")
    print(f"wrote {path}")

    gray = np.asarray(flt.conv1x1(x, flt.rgb_to_gray_conv()))[0, ..., 0]
    rgbg = np.asarray(flt.conv1x1(x, flt.append_red_plus_green_conv()))[0]
    formula = photo @ np.asarray(flt.BT601, np.float32)
    print("\nQ: the convolution that turns RGB into gray? A: 1x1, 3 -> 1 channels, weights (0.299, 0.587, 0.114)")
    print(f"   max |conv1x1 - 0.299 R - 0.587 G - 0.114 B| = {np.abs(gray - formula).max():.2e}")
    print("Q: the convolution that appends R + G? A: 1x1, 3 -> 4, identity on R, G, B and (1, 1, 0) for channel 4")
    print(f"   output shape {rgbg.shape}, max |ch4 - (R + G)| = "
          f"{np.abs(rgbg[..., 3] - photo[..., 0] - photo[..., 1]).max():.2e}")
    path = vis.save_image_grid(out / "conv1x1.png", {"RGB": photo, "1x1 conv -> gray (BT.601)": gray,
                                                      "4th channel: R + G": rgbg[..., 3] / 2},
                               cols=3, scale="clip", dpi=args.dpi)
    print(f"wrote {path}")

    print("\nQ: trainable parameters of a k x k conv from S to T channels? A: k*k*S*T + T")
    prow = []
    for k, s, t in ((1, 3, 1), (3, 3, 64), (3, 64, 128), (5, 6, 16), (7, 3, 64)):
        conv = cnn.Conv(t, k)
        variables = jax.eval_shape(lambda c=conv, s=s: c.init(jax.random.key(0), jnp.zeros((1, 8, 8, s))))
        counted = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
        prow.append((k, s, t, flt.conv_param_count(k, s, t), counted))
    print(_table(("k", "S", "T", "k*k*S*T + T", "cnnjax.nn.Conv"), prow))

    print("\nQ: a conv equivalent to k x k average pooling? A: depthwise, weights 1/k^2, stride k")
    for k in (2, 3, 4):
        diff = np.abs(np.asarray(flt.avg_pool_as_conv(x, k)) - np.asarray(cnn.avg_pool2d(x, k, k))).max()
        print(f"   k={k}: max |conv - avg_pool2d| = {diff:.2e}")
    return 0


def cmd_receptive_field(args) -> int:
    model = models.create(args.arch)
    size = args.image_size or _default_size(args.arch)
    try:
        layers = rf.receptive_field(model, size)
    except cnn.InputTooSmallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(rf.format_table(layers, f"{args.arch} at {size}x{size}: receptive field per layer "
                                  "(size and jump in input pixels, start = centre of the first unit's field)"))
    if args.check:
        t0 = time.perf_counter()
        variables = rf.random_variables(model, size, args.seed, method="features")
        res = rf.empirical_receptive_field(model, variables, size, layers=None if args.check_all else (-1,),
                                           key=jax.random.key(args.seed))
        print(f"\nempirical check (input gradient of the centre unit, random weights, "
              f"{time.perf_counter() - t0:.1f} s)")
        print(_table(("layer", "analytic (r0, r1, c0, c1)", "gradient support", "match"),
                     [(r.name, a, e, "yes" if a == e else "NO") for r, a, e in res]))
    photo, _ = _photo_input(size, 3)
    step = max(1, len(layers) // 8)
    shown = layers[::step][:-1] + [layers[-1]] if len(layers) > 8 else layers
    units = [((r.out_hw[0] - 1) // 2, (r.out_hw[1] - 1) // 2) for r in shown]
    path = vis.save_receptive_fields(Path(args.out) / f"receptive_field_{args.arch}.png", photo, shown, units,
                                     f"{args.arch} at {size}x{size}")
    print(f"wrote {path}")
    return 0


def _erf_maps(model, variables, images: np.ndarray) -> np.ndarray:
    fn = jax.jit(lambda x: rf.effective_receptive_field(
        lambda z: model.apply(variables, z, False, method="features"), x))
    return np.asarray(fn(jnp.asarray(images)))


def _erf_radius(m: np.ndarray) -> float:
    """Root-mean-square distance (pixels) of the ERF mass from its centre of mass."""
    m = m / m.sum()
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    cy, cx = (m * yy).sum(), (m * xx).sum()
    return float(np.sqrt((m * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()))


def cmd_erf(args) -> int:
    source = _load_data(args.data, args.image_size, args.seed)
    model = _model_for_data(args.arch, source)
    size = args.erf_size or source.info.image_size
    erf_source = source if size == source.info.image_size else _load_data(args.data, size, args.seed)
    images, _ = training.val_arrays(erf_source)
    images = images[: args.num_images]
    untrained = training.init_variables(model, source.info.image_size, source.info.channels, args.seed)
    trained = _trained(model, source, args)
    layers = rf.receptive_field(model, size)
    feat = layers[-1]
    unit = ((feat.out_hw[0] - 1) // 2, (feat.out_hw[1] - 1) // 2)
    box = feat.extent(unit, (size, size))
    maps = {"untrained (init)": _erf_maps(model, untrained, images)}
    label = "trained" if args.checkpoint or args.steps > 0 else "init (no training)"
    maps[label] = _erf_maps(model, trained, images)
    rows = [(name, f"{_erf_radius(m):.2f}", f"{(m > 0.1).mean():.3f}", f"{(m > 0.01).mean():.3f}")
            for name, m in maps.items()]
    print(f"{args.arch} trained on {source.info.name} {source.info.image_size}x{source.info.image_size}; "
          f"ERF measured on {len(images)} val images at {size}x{size}: theoretical field {feat.size[0]:g} px "
          f"(centre unit sees rows {box[0]}..{box[1]}, cols {box[2]}..{box[3]})")
    print(_table(("variables", "ERF rms radius (px)", "area > 0.1 max", "area > 0.01 max"), rows))
    path = vis.save_maps(Path(args.out) / f"erf_{args.arch}.png", maps,
                         f"effective receptive field of the centre unit of {args.arch}.features at {size}x{size}\n"
                         f"(mean |d unit / d input| over {len(images)} images, max = 1; cyan: theoretical field "
                         f"{feat.size[0]:g} px)", boxes={k: [box] for k in maps})
    print(f"wrote {path}")
    return 0


def _laws_table(seed: int = 0) -> list[tuple[str, str, str, str]]:
    """Each law on random data: (map, relative max error, holds/broken at 1e-4, as the theory predicts?)."""
    key = jax.random.key(seed)
    kx, kw, kd = jax.random.split(key, 3)
    x = jax.random.normal(kx, (2, 16, 16, 3))
    w = jax.random.normal(kw, (3, 3, 3, 4))
    dense = jax.random.normal(kd, (16 * 16 * 3, 10))
    rows = []

    def add(name, err, expected):
        holds = float(err) < 1e-4
        rows.append((name, f"{float(err):.2e}", "holds" if holds else "broken",
                     "yes" if holds == expected else "NO (unexpected)"))

    add("circular conv, shift (3, -5)", eq.equivariance_error(lambda z: eq.conv_circular(z, w), x, (3, -5)), True)
    add("zero-padded conv, interior, shift (2, 1)",
        eq.equivariance_error(lambda z: conv2d(z, w, padding=1), x, (2, 1), mode="zeros", border=1), True)
    add("zero-padded conv, whole map, circular shift (2, 1)",
        eq.equivariance_error(lambda z: conv2d(z, w, padding=1), x, (2, 1)), False)
    add("stride-2 circular conv, shift (2, 4)",
        eq.equivariance_error(lambda z: eq.conv_circular(z, w, 2), x, (2, 4)), True)
    add("stride-2 circular conv, shift (1, 0)",
        eq.equivariance_error(lambda z: eq.conv_circular(z, w, 2), x, (1, 0)), False)
    add("2x2 max-pool stride 2, shift (1, 0)",
        eq.equivariance_error(lambda z: cnn.max_pool2d(z, 2, 2), x, (1, 0)), False)
    w2 = jax.random.normal(kd, (3, 3, 4, 2))
    add("conv + ReLU + conv + global avg pool, shift (5, 7)",
        eq.equivariance_error(lambda z: jnp.mean(eq.conv_circular(jax.nn.relu(eq.conv_circular(z, w)), w2),
                                                 axis=(1, 2)), x, (5, 7)), True)
    add("dense layer on the flattened image, shift (1, 0)",
        eq.equivariance_error(lambda z: z.reshape(z.shape[0], -1) @ dense, x, (1, 0)), False)
    return rows


def cmd_equivariance(args) -> int:
    print("exact laws on random (2, 16, 16, 3) inputs (relative max error, float32; 'holds' below 1e-4):")
    print(_table(("map", "error", "law", "as predicted"), _laws_table(args.seed)))
    source = _load_data(args.data, args.image_size, args.seed)
    images, labels = training.val_arrays(source)
    variants = [False, True] if args.compare_antialias else [args.antialias]
    results: dict[str, dict[str, float]] = {}
    rows = []
    for aa in variants:
        overrides = {"antialias": True} if aa else {}
        model = _model_for_data(args.arch, source, **overrides)
        name = f"{args.arch}{' +BlurPool' if aa else ''}"
        stages = [("untrained", training.init_variables(model, source.info.image_size, source.info.channels,
                                                         args.seed))]
        if args.checkpoint or args.steps > 0:
            if args.checkpoint and aa and args.compare_antialias:
                print("note: --checkpoint is used for the plain model only; the BlurPool one is trained")
                saved = args.checkpoint
                args.checkpoint = None
                stages.append(("trained", _trained(model, source, args)))
                args.checkpoint = saved
            else:
                stages.append(("trained", _trained(model, source, args)))
        for stage, variables in stages:
            def apply(x, m=model, v=variables):
                return m.apply(v, x, False)

            res = eq.consistency(apply, jnp.asarray(images), jax.random.key(args.seed + 7), max_shift=args.max_shift,
                                 mode=args.mode, labels=jnp.asarray(labels), repeats=args.repeats)
            err = float(eq.equivariance_error(apply, jnp.asarray(images[:64]), (1, 1), mode=args.mode))
            classes = len(np.unique(np.asarray(jnp.argmax(jax.jit(apply)(jnp.asarray(images)), -1))))
            if stage == stages[-1][0]:  # the chart shows the last stage (trained if there is one)
                results[name] = {"accuracy": res["accuracy"], "accuracy on\nshifted images": res["shifted_accuracy"],
                                 "consistency": res["consistency"]}
            rows.append((name, stage, f"{res['accuracy']:.3f}", f"{res['shifted_accuracy']:.3f}",
                         f"{res['consistency']:.3f}", f"{err:.3f}", classes))
    print(f"\nshift invariance on {source.info.name} val ({len(images)} images x {args.repeats} pairs of random "
          f"{args.mode} shifts in [-{args.max_shift}, {args.max_shift}] px; consistency as in Zhang 2019):")
    print(_table(("model", "variables", "accuracy", "shifted acc.", "consistency", "logit err. (1,1)",
                  "classes predicted"), rows))
    print("(an untrained net predicts almost one class everywhere, so its consistency is trivially high; "
          "'logit err.' is equivariance_error of the logits for a (1, 1) px shift)")
    stage = stages[-1][0]
    path = vis.save_bars(Path(args.out) / f"equivariance_{args.arch}.png", results,
                         f"{args.arch} ({stage}) on {source.info.name} val: random {args.mode} shifts "
                         f"<= {args.max_shift} px",
                         ylim=(max(0.0, math.floor(min(v for r in results.values() for v in r.values()) * 20 - 1) / 20),
                               1.0))
    print(f"wrote {path}")
    return 0


def cmd_occlusion(args) -> int:
    source, model, variables = _trained_model(args)
    images, labels = training.val_arrays(source)
    image, label = images[args.index], int(labels[args.index])

    def apply(x):
        return model.apply(variables, x, False)

    probs = np.asarray(jax.nn.softmax(apply(jnp.asarray(image)[None]), -1))[0]
    t0 = time.perf_counter()
    heat, rows, cols = occ.occlusion_sensitivity(apply, image, label, patch=args.patch, stride=args.stride,
                                                 fill=args.fill)
    pix = occ.pixel_map(heat, rows, cols, args.patch, image.shape[:2])
    i, j = np.unravel_index(np.argmax(heat), heat.shape)
    names = source.info.class_names
    print(f"{args.arch}, val image {args.index}: label {label} ({names[label]}), predicted {int(probs.argmax())} "
          f"({names[int(probs.argmax())]}), p(label) = {probs[label]:.3f}")
    print(f"{heat.size} patches of {args.patch}x{args.patch} px, stride {args.stride}, fill {args.fill} "
          f"({time.perf_counter() - t0:.1f} s)")
    print(_table(("", "value"), [("largest drop of p(label)", f"{heat.max():+.3f} at top-left ({rows[i]}, {cols[j]})"),
                                 ("largest rise", f"{-heat.min():+.3f}"),
                                 ("patches with drop > 0.1", f"{(heat > 0.1).sum()} / {heat.size}")]))
    shown = image * np.asarray(source.info.std, np.float32) + np.asarray(source.info.mean, np.float32)
    path = vis.save_overlay(Path(args.out) / f"occlusion_{args.arch}.png", shown, pix,
                            f"occlusion sensitivity, {args.arch}, true class {names[label]!r} "
                            f"(p = {probs[label]:.2f})",
                            f"drop of p(label), patch {args.patch}, stride {args.stride}")
    print(f"wrote {path}")
    return 0


def cmd_filter_grid(args) -> int:
    source, model, variables = _trained_model(args)
    name, k = vis.first_conv_kernel(variables, args.layer)
    print(f"{args.arch} {name}: kernel {k.shape} (kh, kw, C_in, C_out); mean {k.mean():+.4f}, std {k.std():.4f}")
    norms = np.sqrt((k**2).sum(axis=(0, 1, 2)))
    print(_table(("filter", "L2 norm", "centre - mean"),
                 [(i, f"{norms[i]:.3f}", f"{k[k.shape[0] // 2, k.shape[1] // 2, :, i].mean() - k[..., i].mean():+.3f}")
                  for i in range(min(k.shape[-1], 16))]))
    state = "trained" if args.checkpoint or args.steps > 0 else "untrained"
    path = vis.save_filter_grid(Path(args.out) / f"filter_grid_{args.arch}.png", k,
                                f"{args.arch} {name} ({state}), {k.shape[0]}x{k.shape[1]}x{k.shape[2]}")
    print(f"wrote {path}")
    return 0


def cmd_feature_maps(args) -> int:
    source = None
    if args.image == "photo":
        model = models.create(args.arch)
        size = args.image_size or _default_size(args.arch)
    else:
        source = _load_data(args.data, args.image_size, args.seed)
        model = _model_for_data(args.arch, source)
        size = source.info.image_size
    names = vis.layer_names(model, size)
    if args.list:
        print(_table(("layer", "type", "output"), names))
        return 0
    layer = args.layer or next(p for p, t, _ in names if t == "Conv")
    if layer not in {p for p, _, _ in names}:
        print(f"error: no layer {layer!r}; layers: {', '.join(p for p, _, _ in names)}", file=sys.stderr)
        return 2
    if source is None:
        shown, x = _photo_input(size, getattr(model, "in_channels", 3))
        variables = (training.load_variables(args.checkpoint) if args.checkpoint
                     else training.init_variables(model, size, x.shape[-1], args.seed))
    else:
        variables = _trained(model, source, args)
        images, _ = training.val_arrays(source)
        x = images[int(args.image):int(args.image) + 1]
        shown = x[0] * np.asarray(source.info.std, np.float32) + np.asarray(source.info.mean, np.float32)
    fmap = np.asarray(jax.jit(lambda v, z: vis.capture(model, v, z, layer))(variables, jnp.asarray(x)))[0]
    print(f"{args.arch} {layer}: output {fmap.shape} (h, w, channels); per-channel mean |activation|:")
    act = np.abs(fmap).mean(axis=(0, 1))
    print(_table(("channel", "mean |a|", "max"), [(i, f"{act[i]:.3f}", f"{fmap[..., i].max():.3f}")
                                                  for i in range(min(len(act), 8))]))
    path = vis.save_feature_maps(Path(args.out) / f"feature_maps_{args.arch}_{layer.replace('/', '.')}.png",
                                 shown, fmap, f"{args.arch} {layer}")
    print(f"wrote {path}")
    return 0


def cmd_convert(args) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variables = training.load_variables(args.source)
    print(f"wrote {training.save_variables(args.dest, variables)}")
    return 0


# ---------------------------------------------------------------------------------------------------- CLI


def _add_training(p: argparse.ArgumentParser, steps: int, arch: str) -> None:
    p.add_argument("--arch", default=arch, help=f"architecture (default {arch})")
    p.add_argument("--data", default="digits", help="dataset spec for cnnjax.data.load (default digits)")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the dataset's)")
    p.add_argument("--checkpoint", default=None,
                   help="a train.main run directory or orbax checkpoint (old .msgpack/.npz files are read too); "
                        "overrides --steps")
    p.add_argument("--steps", type=int, default=steps, help=f"quick SGD steps, 0 = untrained (default {steps})")
    p.add_argument("--seconds", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--save-checkpoint", default=None,
                   help="save the quickly trained variables here (an orbax run directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cnnjax.analyze", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--out", default=DEFAULT_OUT, help=f"directory for PNGs (default {DEFAULT_OUT}/)")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(fn=fn)
        return p

    p = add("filters", cmd_filters, "classic kernels on a photo; 1x1 convs; parameter counts; pooling as conv")
    p.add_argument("--image-size", type=int, default=256, help="photo side in pixels (default 256)")
    p.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")

    p = add("receptive-field", cmd_receptive_field, "per-layer receptive field traced from the model")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (32 for small models)")
    p.add_argument("--check", action="store_true", help="compare with the input gradient of random weights")
    p.add_argument("--check-all", action="store_true", help="with --check: every layer, not only features")

    p = add("erf", cmd_erf, "effective receptive field (Luo et al. 2016), untrained vs trained")
    _add_training(p, 300, "resnet20")
    p.add_argument("--num-images", type=int, default=64, help="validation images averaged (default 64)")
    p.add_argument("--erf-size", type=int, default=None,
                   help="measure the ERF on val images at this side (default: the training size); a larger side "
                        "shows the whole theoretical field of a fully convolutional model")

    p = add("equivariance", cmd_equivariance, "shift laws and shift consistency (Zhang 2019) of a zoo model")
    _add_training(p, 0, "resnet20")
    p.add_argument("--max-shift", type=int, default=4, help="largest |dy|, |dx| in pixels (default 4)")
    p.add_argument("--mode", choices=("circular", "zeros"), default="circular")
    p.add_argument("--repeats", type=int, default=5, help="random shift pairs per image (default 5)")
    p.add_argument("--antialias", action="store_true", help="measure the BlurPool variant only")
    p.add_argument("--compare-antialias", action="store_true", help="measure with and without BlurPool")

    p = add("occlusion", cmd_occlusion, "occlusion sensitivity map (Zeiler & Fergus 2013)")
    _add_training(p, 300, "lenet5")
    p.add_argument("--index", type=int, default=0, help="validation image index")
    p.add_argument("--patch", type=int, default=8, help="patch side in pixels (default 8)")
    p.add_argument("--stride", type=int, default=2, help="patch step in pixels (default 2)")
    p.add_argument("--fill", type=float, default=0.0, help="patch value in normalised units (0 = mean grey)")

    p = add("filter-grid", cmd_filter_grid, "grid of the first convolution's filters")
    _add_training(p, 300, "lenet5")
    p.add_argument("--layer", default=None, help="module path of the conv (default: the first)")

    p = add("feature-maps", cmd_feature_maps, "feature maps of a named layer for one image")
    _add_training(p, 300, "lenet5")
    p.add_argument("--layer", default=None, help="module path, e.g. stage1_block0/conv1 (default: first conv)")
    p.add_argument("--image", default="0", help="validation image index, or 'photo' (untrained unless "
                                                 "--checkpoint; ImageNet normalisation)")
    p.add_argument("--list", action="store_true", help="print the layer names and exit")

    p = add("convert", cmd_convert, "rewrite an old .msgpack/.npz variables file as an orbax run directory")
    p.add_argument("source", help="the .msgpack or .npz file (or a directory holding variables.msgpack/.npz)")
    p.add_argument("dest", help="the run directory to write (then --checkpoint DEST)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "arch"):
        _arch_check(parser, args.arch)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
