"""What a network looks at: first-layer filters, feature maps of named layers, and the PNG writers.

* :func:`layer_names` lists the module paths of a model's layers (``stem/conv``, ``stage1_block0/conv1`` ...);
* :func:`capture` returns the output of any named layer for a batch, via ``flax.linen.intercept_methods``;
* :func:`first_conv_kernel` finds the first convolution's kernel (kh, kw, C_in, C_out) in a variables dict;
* the ``save_*`` functions write PNGs with matplotlib's Agg backend (no display needed).

Arrays are NHWC; images for display are (H, W, C) or (H, W) floats (any range: each picture is min-max scaled
unless said otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import nn as cnn

CAPTURE_TYPES: tuple[type, ...] = (cnn.Conv, cnn.BatchNorm, cnn.MaxPool2d, cnn.AvgPool2d, cnn.Linear)


def _path(module: nn.Module) -> str:
    return "/".join(module.scope.path) if module.scope is not None else ""


def layer_names(model: nn.Module, image_size: int, method: str | None = None) -> list[tuple[str, str, tuple]]:
    """``(path, type, output shape)`` of every module call of ``model`` on a (1, S, S, in_channels) input, in
    call order (abstract trace: nothing is computed). Any of these paths can be passed to :func:`capture`."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, getattr(model, "in_channels", 3)), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda x: model.init(rngs, x, False), x)
    calls: list[tuple[str, str, tuple]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and hasattr(out, "shape"):
            path = _path(context.module)
            if path:
                calls.append((path, type(context.module).__name__, tuple(out.shape)))
        return out

    def forward(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, False, method=method) if method else model.apply(v, x, False)

    jax.eval_shape(forward, variables, x)
    return calls


def capture(model: nn.Module, variables: Any, x: jax.Array, layer: str, train: bool = False) -> jax.Array:
    """Output of the module at path ``layer`` (e.g. ``'stage1_block0/conv1'``) for NHWC input ``x``.

    Uses ``nn.intercept_methods`` on ``__call__``; the forward pass runs up to the model's output. Raises
    ``KeyError`` listing the available paths if no module has that path. Jit-able (``layer`` static).
    """
    found: list[jax.Array] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _path(context.module) == layer and not found:
            found.append(out)
        return out

    with nn.intercept_methods(record):
        model.apply(variables, x, train)
    if not found:
        names = [p for p, _, _ in layer_names(model, x.shape[1])]
        raise KeyError(f"no layer {layer!r}; layers: {', '.join(names)}")
    return found[0]


def first_conv_kernel(variables: Any, layer: str | None = None) -> tuple[str, np.ndarray]:
    """``(path, kernel)`` of the first 4-D ``kernel`` in parameter order (or of ``layer``): HWIO (kh, kw, C_in,
    C_out) float32 NumPy."""
    params = variables.get("params", variables)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        keys = [str(getattr(k, "key", k)) for k in path]
        name = "/".join(keys[:-1])
        if keys[-1] == "kernel" and np.ndim(leaf) == 4 and (layer is None or name == layer):
            return name, np.asarray(leaf, np.float32)
    raise KeyError(f"no 4-D conv kernel{' at ' + layer if layer else ''} in the parameters")


# ------------------------------------------------------------------------------------------------ pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _scale01(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _show(ax, img: np.ndarray, cmap: str = "gray", title: str | None = None, **kw) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap=None if img.ndim == 3 else cmap, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG, then re-encode it with a 256-colour palette (PIL) to keep files small."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path


def save_image_grid(path: str | Path, images: Mapping[str, np.ndarray], cols: int = 4, cmap: str = "gray",
                    scale: str = "each", size: float = 2.2, suptitle: str | None = None, dpi: int = 100) -> Path:
    """One titled panel per image ((H, W), (H, W, 1) or (H, W, 3)); ``scale='each'`` min-max scales every
    panel, ``'clip'`` clips to [0, 1], ``'p99'`` divides by the 99th percentile and clips (for sparse
    responses such as edges). Returns the path written."""
    plt = _plt()
    n = len(images)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.25) * rows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes.ravel(), images.items()):
        img = np.asarray(img, np.float32)
        if scale == "each":
            img = _scale01(img)
        elif scale == "p99":
            img = np.clip((img - img.min()) / max(float(np.percentile(img - img.min(), 99)), 1e-12), 0, 1)
        else:
            img = np.clip(img, 0, 1)
        ax.axis("on")
        _show(ax, img, cmap, title)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_filter_grid(path: str | Path, kernel: np.ndarray, title: str = "", max_filters: int = 64,
                     dpi: int = 100) -> Path:
    """First-layer filters (kh, kw, C_in, C_out) as a grid of C_out tiles: RGB when C_in == 3, else the mean
    over input channels in a diverging colour map; each tile min-max scaled (RGB) or symmetric around 0."""
    plt = _plt()
    k = np.asarray(kernel, np.float32)
    n = min(k.shape[-1], max_filters)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        f = k[..., i]
        if k.shape[2] == 3:
            ax.imshow(_scale01(f), interpolation="nearest")
        else:
            g = f.mean(-1)
            m = float(np.abs(g).max()) or 1.0
            ax.imshow(g, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(str(i), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_feature_maps(path: str | Path, image: np.ndarray, fmap: np.ndarray, title: str = "",
                      max_channels: int = 32, dpi: int = 100) -> Path:
    """The input ``image`` (H, W, C) and the first ``max_channels`` channels of one feature map (h, w, K)."""
    plt = _plt()
    f = np.asarray(fmap, np.float32)
    n = min(f.shape[-1], max_channels)
    cols = 8
    rows = 1 + math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].axis("on")
    img = np.asarray(image, np.float32)
    _show(axes[0, 0], _scale01(img), title="input")
    axes[0, 1].text(0, 0.5, f"{title}\n{f.shape[0]}x{f.shape[1]}x{f.shape[2]}", fontsize=8, va="center")
    for i in range(n):
        ax = axes.ravel()[cols + i]
        ax.axis("on")
        _show(ax, f[..., i], "viridis", str(i))
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_overlay(path: str | Path, image: np.ndarray, heat: np.ndarray, title: str = "",
                 heat_title: str = "", dpi: int = 100) -> Path:
    """Three panels: the image, the (H, W) heatmap (diverging, symmetric around 0) and the heatmap over it."""
    plt = _plt()
    img = _scale01(np.asarray(image, np.float32))
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    m = float(np.abs(heat).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    _show(axes[0], img, title="input")
    im = axes[1].imshow(heat, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title(heat_title, fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    _show(axes[2], img, title="overlay")
    axes[2].imshow(heat, cmap="jet", alpha=0.45, vmin=min(0.0, float(heat.min())), vmax=max(m, 1e-9),
                   interpolation="bilinear")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_maps(path: str | Path, maps: Mapping[str, np.ndarray], title: str = "", cmap: str = "magma",
              boxes: Mapping[str, Sequence[tuple[int, int, int, int]]] | None = None, dpi: int = 100) -> Path:
    """Side-by-side (H, W) maps with shared colour scale per panel; ``boxes[title]`` draws rectangles
    ``(row0, row1, col0, col1)`` (inclusive pixel extents) on that panel."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(np.asarray(m), cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
        for r0, r1, c0, c1 in (boxes or {}).get(name, ()):
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, ec="cyan", lw=1))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_receptive_fields(path: str | Path, image: np.ndarray, layers: Sequence[Any], unit_hw: Sequence[tuple],
                          title: str = "", dpi: int = 100) -> Path:
    """Left: ``image`` with the (clipped) field of one unit of several layers drawn as nested squares; right:
    field size and jump per layer (log scale). ``layers`` are :class:`~cnnjax.analysis.fields.LayerField`
    records, ``unit_hw[i]`` the unit whose field is drawn for ``layers[i]``."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    img = _scale01(np.asarray(image, np.float32))
    h, w = img.shape[0], img.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    _show(axes[0], img, title="field of the centre unit (clipped to the image)")
    cmap = plt.get_cmap("plasma")
    finite = [r for r in layers if math.isfinite(r.size[0])]
    for i, (r, u) in enumerate(zip(layers, unit_hw)):
        r0, r1, c0, c1 = r.extent(u, (h, w))
        axes[0].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False,
                                    ec=cmap(i / max(len(layers) - 1, 1)), lw=1.2))
    xs = np.arange(len(finite))
    axes[1].plot(xs, [r.size[0] for r in finite], "o-", label="field size (px)")
    axes[1].plot(xs, [r.jump[0] for r in finite], "s--", label="jump (px)")
    axes[1].axhline(h, color="gray", lw=0.8, ls=":", label=f"image side {h}")
    axes[1].set_yscale("log")
    axes[1].set_xticks(xs)
    axes[1].set_xticklabels([r.name for r in finite], rotation=75, fontsize=6)
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def save_bars(path: str | Path, groups: Mapping[str, Mapping[str, float]], title: str = "", ylabel: str = "",
              ylim: tuple[float, float] | None = (0.0, 1.0), dpi: int = 100) -> Path:
    """Grouped bar chart: ``groups[series][category] = value``; value printed on each bar."""
    plt = _plt()
    series = list(groups)
    cats = list(next(iter(groups.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(cats), 3.4))
    for i, s in enumerate(series):
        vals = [groups[s][c] for c in cats]
        xs = np.arange(len(cats)) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=s)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(cats)))
    ax.set_xticklabels(cats, fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)
