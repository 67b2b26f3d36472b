"""``shapes``: procedurally generated coloured shapes; the class is the shape type.

Each image is ``image_size x image_size`` RGB (default 32): a background of a random colour with a gentle linear
gradient and a little pixel noise, and one shape of a random colour (kept far from the background colour), random
size (radius 15-28 % of the side), random rotation and random position, drawn antialiased (2x2 supersampling up to
64 pixels, point sampling above). The classes (default all six, balanced): ``circle square triangle cross star ring``.

Regions confine the shape CENTRES (the centroid of every shape is its centre), for shift-generalisation experiments
such as "train on the left half, test on the right half":

* ``all``: anywhere the whole shape fits;
* ``left`` / ``right``: centre x in the left / right half (``cx <= W/2`` / ``cx >= W/2``), y anywhere;
* ``top`` / ``bottom``: centre y in the top / bottom half.

The data is a function of ``data_seed`` only (default 0; NOT the run seed, so runs with different seeds see the same
images); train and val come from different streams. Pixels are stored as uint8, raw = value / 255; the
normalisation constants are the train split's per-channel mean/std. There is NO augmentation (a flip or shift
would move shapes across the region boundary of the shift experiment).

Spec options (comma-separated ``key=value``): ``num_train`` (2000), ``num_val`` (500), ``image_size`` (32),
``train_region`` / ``val_region`` (``all``), ``classes`` (``+``-separated subset, e.g. ``circle+square+triangle``),
``data_seed`` (0). Example: ``shapes:train_region=left,val_region=right,num_train=2000,num_val=500``.
"""

from __future__ import annotations

import numpy as np

from cnnjax.data.arrays import ArraySource
from cnnjax.data.base import (
    DatasetInfo,
    TrainView,
    channel_stats,
    make_rng,
    parse_options,
    positive_int,
    resolve_image_size,
)

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
REGIONS = ("all", "left", "right", "top", "bottom")
DEFAULT_SIZE = 32
RADIUS_RANGE = (0.15, 0.28)  # fraction of the image side


def _regular(n: int, radius: float = 1.0, phase_deg: float = 90.0) -> np.ndarray:
    a = np.deg2rad(phase_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.45, 90.0 + 36.0)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def _cross(w: float = 0.32) -> np.ndarray:
    return np.array([(w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1),
                     (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1), (w, 1)], dtype=np.float64)


# Polygons in unit coordinates (centroid at the origin, circumradius 1).
_POLYGONS = {"square": np.array([(0.75, 0.75), (-0.75, 0.75), (-0.75, -0.75), (0.75, -0.75)]),
             "triangle": _regular(3), "star": _star(), "cross": _cross()}


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the unit-coordinate points (u, v) lie inside ``shape`` (bool, same shape as u)."""
    if shape == "circle":
        return u * u + v * v <= 0.85 ** 2
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.95 ** 2) & (r2 >= 0.55 ** 2)
    poly = _POLYGONS[shape]
    inside = np.zeros(u.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def _centres(rng: np.random.Generator, radius: np.ndarray, size: int, region: str) -> np.ndarray:
    """Shape centres (N, 2) as (x, y) in pixels; the whole shape stays inside the image."""
    lo, hi = radius, size - radius
    mid = size / 2.0
    x_lo, x_hi, y_lo, y_hi = lo, hi, lo, hi
    if region == "left":
        x_hi = np.full_like(radius, mid)
    elif region == "right":
        x_lo = np.full_like(radius, mid)
    elif region == "top":
        y_hi = np.full_like(radius, mid)
    elif region == "bottom":
        y_lo = np.full_like(radius, mid)
    u = rng.random((len(radius), 2))
    return np.stack([x_lo + u[:, 0] * (x_hi - x_lo), y_lo + u[:, 1] * (y_hi - y_lo)], axis=1)


def render_shapes(num: int, image_size: int = DEFAULT_SIZE, *, classes: tuple[str, ...] = SHAPES,
                  region: str = "all", seed: int = 0, stream: int = 0) -> dict[str, np.ndarray]:
    """Generate ``num`` images deterministically from (seed, stream).

    Returns a dict with ``image`` uint8 ``(num, S, S, 3)`` NHWC (raw = value / 255), ``label`` int32 ``(num,)``
    (index into ``classes``, balanced), ``alpha`` float32 ``(num, S, S)`` = the shape's coverage of each pixel in
    ``[0, 1]`` (0 = background), ``centre`` float32 ``(num, 2)`` = (x, y) in pixels (pixel ``i`` spans ``[i, i+1)``),
    ``radius`` float32 ``(num,)`` in pixels.
    """
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}: valid regions are {', '.join(REGIONS)}")
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes:
        raise ValueError(f"unknown shape classes {unknown}: valid shapes are {', '.join(SHAPES)}")
    s = int(image_size)
    rng = make_rng(seed, stream, 0x5348415045)
    labels = rng.permutation(np.arange(num) % len(classes)).astype(np.int32)
    radius = rng.uniform(*RADIUS_RANGE, size=num) * s
    centre = _centres(rng, radius, s, region)
    angle = rng.uniform(0.0, 2 * np.pi, size=num)
    bg = rng.random((num, 3))
    candidates = rng.random((num, 8, 3))
    far = np.linalg.norm(candidates - bg[:, None], axis=-1) > 0.5
    colour = np.where(far.any(axis=1)[:, None], candidates[np.arange(num), far.argmax(axis=1)], 1.0 - bg)
    gradient_dir = rng.uniform(0.0, 2 * np.pi, size=num)
    gradient_amp = rng.uniform(0.0, 0.2, size=num)
    noise_seed = rng.integers(0, 2**63)

    ss = 2 if s <= 64 else 1
    fine = ((np.arange(s * ss) + 0.5) / ss).astype(np.float32)  # sample positions in pixels
    py, px = np.meshgrid(fine, fine, indexing="ij")
    alpha = np.zeros((num, s, s), np.float32)
    chunk = max(1, 4_000_000 // (s * s * ss * ss))
    for k, name in enumerate(classes):
        members = np.flatnonzero(labels == k)
        for start in range(0, len(members), chunk):
            m = members[start:start + chunk]
            f32 = np.float32
            dx = px[None] - centre[m, 0, None, None].astype(f32)
            dy = py[None] - centre[m, 1, None, None].astype(f32)
            inv_r = (1.0 / radius[m]).astype(f32)[:, None, None]
            c, sn = (np.cos(angle[m]).astype(f32)[:, None, None] * inv_r,
                     np.sin(angle[m]).astype(f32)[:, None, None] * inv_r)
            u = dx * c + dy * sn
            v = dy * c - dx * sn
            hit = _inside(name, u, v).reshape(len(m), s, ss, s, ss)
            alpha[m] = hit.mean(axis=(2, 4), dtype=np.float32)

    coords = ((np.arange(s) + 0.5) / s - 0.5).astype(np.float32)
    gx = (np.cos(gradient_dir) * gradient_amp).astype(np.float32)[:, None, None]
    gy = (np.sin(gradient_dir) * gradient_amp).astype(np.float32)[:, None, None]
    ramp = gx * coords[None, None, :] + gy * coords[None, :, None]
    img = make_rng(noise_seed).standard_normal((num, s, s, 3), dtype=np.float32)
    img *= np.float32(0.02)
    img += ramp[..., None]
    img += bg.astype(np.float32)[:, None, None, :]
    a = alpha[..., None]
    img *= 1.0 - a
    img += colour.astype(np.float32)[:, None, None, :] * a
    img = np.clip(img * np.float32(255.0) + np.float32(0.5), 0.0, 255.0)
    return {"image": img.astype(np.uint8), "label": labels, "alpha": alpha,
            "centre": centre.astype(np.float32), "radius": radius.astype(np.float32)}


def _classes(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split("+") if t.strip())
    bad = [n for n in names if n not in SHAPES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {'+'.join(SHAPES)}")
    return names


def _region(text: str) -> str:
    if text not in REGIONS:
        raise ValueError(f"valid regions are {', '.join(REGIONS)}")
    return text


def load_shapes(options: str = "", *, image_size: int | None = None, seed: int = 0,
                train_view: TrainView = TrainView()) -> ArraySource:
    """Build the ``shapes`` source; ``options`` is the text after ``shapes:`` (see the module docstring)."""
    opts = parse_options("shapes", options, {
        "num_train": positive_int, "num_val": positive_int, "image_size": positive_int, "classes": _classes,
        "train_region": _region, "val_region": _region, "data_seed": int})
    size = resolve_image_size("shapes", opts.get("image_size"), image_size, DEFAULT_SIZE)
    classes = opts.get("classes", SHAPES)
    data_seed = opts.get("data_seed", 0)
    train = render_shapes(opts.get("num_train", 2000), size, classes=classes, region=opts.get("train_region", "all"),
                          seed=data_seed, stream=0)
    val = render_shapes(opts.get("num_val", 500), size, classes=classes, region=opts.get("val_region", "all"),
                        seed=data_seed, stream=1)
    mean, std = channel_stats(train["image"] / np.float32(255.0))
    info = DatasetInfo(name="shapes", num_classes=len(classes), image_size=size, channels=3,
                       num_train=len(train["label"]), num_val=len(val["label"]), class_names=list(classes),
                       mean=mean, std=std, orientation_sensitive=True)
    return ArraySource(info, train["image"], train["label"], val["image"], val["label"], pad=0,
                       seed=seed, scale=1 / 255, train_view=train_view)
