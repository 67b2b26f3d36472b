"""Occlusion sensitivity (Zeiler & Fergus 2013): which parts of an image does a classifier rely on?

A grey square patch slides over the image; for each position the drop in the probability of the true class
``p(label | image) - p(label | occluded image)`` is recorded. A large drop means the covered region mattered.
The occluded images are built with ``jax.vmap`` and classified in fixed-size batches (one jit).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def patch_positions(size: int, patch: int, stride: int) -> np.ndarray:
    """Top-left coordinates along one axis: ``0, stride, ...`` while the patch fits, plus ``size - patch`` so the
    last rows/columns are covered too. int64 (n,)."""
    if not 1 <= patch <= size:
        raise ValueError(f"patch {patch} must be between 1 and the image side {size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return np.asarray(pos, np.int64)


def occlude(image: jax.Array, top: jax.Array, left: jax.Array, patch: int, fill: float | jax.Array = 0.0) -> jax.Array:
    """``image`` (H, W, C) with the ``patch`` x ``patch`` square at (top, left) set to ``fill`` (traced ok)."""
    h, w = image.shape[0], image.shape[1]
    rows = (jnp.arange(h) >= top) & (jnp.arange(h) < top + patch)
    cols = (jnp.arange(w) >= left) & (jnp.arange(w) < left + patch)
    mask = rows[:, None] & cols[None, :]
    return jnp.where(mask[:, :, None], jnp.asarray(fill, image.dtype), image)


def occlusion_sensitivity(apply_fn: Callable[[jax.Array], jax.Array], image: jax.Array, label: int, *,
                          patch: int = 8, stride: int = 4, fill: float | jax.Array = 0.0,
                          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop of the true-class probability for every patch position.

    Args:
        apply_fn: NHWC images (B, H, W, C) -> logits (B, K).
        image: one image (H, W, C), in the model's input units (normalised).
        label: the class whose probability is tracked.
        patch / stride: side and step of the square patch, in pixels.
        fill: the patch value in input units (0 = the dataset mean for normalised inputs: "grey").
        batch_size: occluded images per forward pass.

    Returns:
        ``(heat, rows, cols)``: ``heat`` float32 (len(rows), len(cols)), ``heat[i, j] = p - p_occluded`` for the
        patch with top-left corner ``(rows[i], cols[j])`` (probabilities, in [-1, 1]).
    """
    image = jnp.asarray(image)
    h, w = image.shape[0], image.shape[1]
    rows, cols = patch_positions(h, patch, stride), patch_positions(w, patch, stride)
    tops = np.repeat(rows, len(cols))
    lefts = np.tile(cols, len(rows))
    n = len(tops)
    pad = (-n) % batch_size
    tops_p = np.concatenate([tops, np.zeros(pad, np.int64)]).reshape(-1, batch_size)
    lefts_p = np.concatenate([lefts, np.zeros(pad, np.int64)]).reshape(-1, batch_size)

    @jax.jit
    def probs(tops_b, lefts_b):
        batch = jax.vmap(lambda a, b: occlude(image, a, b, patch, fill))(tops_b, lefts_b)
        return jax.nn.softmax(apply_fn(batch), -1)[:, label]

    base = float(jax.nn.softmax(apply_fn(image[None]), -1)[0, label])
    out = np.concatenate([np.asarray(probs(jnp.asarray(t), jnp.asarray(lft))) for t, lft in zip(tops_p, lefts_p)])
    heat = (base - out[:n]).reshape(len(rows), len(cols)).astype(np.float32)
    return heat, rows, cols


def pixel_map(heat: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch: int,
              image_hw: tuple[int, int]) -> np.ndarray:
    """Spread a patch heatmap back onto pixels: each pixel gets the mean drop over the patches covering it.
    (H, W) float32, same units as ``heat``."""
    total = np.zeros(image_hw, np.float64)
    count = np.zeros(image_hw, np.float64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            total[r:r + patch, c:c + patch] += heat[i, j]
            count[r:r + patch, c:c + patch] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)
