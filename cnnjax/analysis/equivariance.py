"""Shift equivariance of convolutions and shift invariance of classifiers.

Laws (exact up to float rounding; the property tests in ``tests/test_analysis_equivariance.py`` check them):

* a convolution with circular padding commutes with every circular shift: ``f(roll(x, s)) == roll(f(x), s)``;
* with zero padding it commutes on the interior, away from the borders (by the kernel radius plus the shift);
* with stride ``r`` only shifts that are multiples of ``r`` commute, and the output moves by ``s / r``;
* compositions of equivariant layers are equivariant, and a conv stack followed by global average pooling is
  invariant to circular shifts.

Max-pooling or striding with a shift that is not a multiple of the stride breaks the law (aliasing); so does a
dense layer. :func:`equivariance_error` measures how far any function is from the law, and :func:`consistency`
measures the shift invariance of a classifier's predictions as Zhang (2019), "Making Convolutional Networks
Shift-Invariant Again": the fraction of images whose top-1 class is the same under two random translations.
Images are NHWC (N, H, W, C); shifts are (dy, dx) in pixels, positive = down/right.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.ops import conv2d

Shift = tuple[int, int]


def circular_shift(x: jax.Array, shift: Shift) -> jax.Array:
    """Roll NHWC ``x`` by ``shift = (dy, dx)`` pixels along H and W (content leaving one side re-enters)."""
    return jnp.roll(x, shift, axis=(1, 2))


def translate(x: jax.Array, shift: Shift, fill: float = 0.0) -> jax.Array:
    """Translate NHWC ``x`` by ``(dy, dx)`` pixels, filling the uncovered border with ``fill``."""
    dy, dx = int(shift[0]), int(shift[1])
    h, w = x.shape[1], x.shape[2]
    rows = jnp.arange(h) - dy
    cols = jnp.arange(w) - dx
    y = jnp.take(jnp.take(x, jnp.clip(rows, 0, h - 1), axis=1), jnp.clip(cols, 0, w - 1), axis=2)
    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    return jnp.where(valid[None, :, :, None], y, jnp.asarray(fill, x.dtype))


def shift_images(x: jax.Array, shift: Shift, mode: str = "circular", fill: float = 0.0) -> jax.Array:
    """:func:`circular_shift` (``mode='circular'``) or :func:`translate` (``mode='zeros'``, with ``fill``)."""
    if mode == "circular":
        return circular_shift(x, shift)
    if mode == "zeros":
        return translate(x, shift, fill)
    raise ValueError(f"mode must be 'circular' or 'zeros', got {mode!r}")


def conv_circular(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """Convolution with circular ("wrap") padding: NHWC ``x`` (N, H, W, C), HWIO ``w`` (k, k, C, O) with odd
    ``k``; output (N, ceil(H / stride), ceil(W / stride), O). Exactly equivariant to circular shifts (by
    multiples of ``stride``)."""
    kh, kw = w.shape[0], w.shape[1]
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="wrap")
    return conv2d(xp, w, stride=stride)


def _output_shift(in_hw: tuple[int, int], out_hw: tuple[int, int], shift: Shift) -> tuple[Shift, bool]:
    """The shift of the output that corresponds to ``shift`` of the input, and whether it is a whole number of
    output units (the ratio of the sizes is the stride)."""
    out = []
    exact = True
    for n_in, n_out, s in zip(in_hw, out_hw, shift):
        num = s * n_out
        exact &= num % n_in == 0
        out.append(int(round(num / n_in)))
    return (out[0], out[1]), exact


def interior_mask(out_hw: tuple[int, int], out_shift: Shift, border: int) -> np.ndarray:
    """(H', W') bool mask of output units ``i`` with both ``i`` and ``i - shift`` at least ``border`` units from
    every edge: where a zero-padded layer with a field of radius ``border`` must commute with a shift."""
    masks = []
    for n, s in zip(out_hw, out_shift):
        i = np.arange(n)
        masks.append((i >= border) & (i < n - border) & (i - s >= border) & (i - s < n - border))
    return masks[0][:, None] & masks[1][None, :]


def equivariance_error(apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array, shift: Shift, *,
                       mode: str = "circular", border: int = 0, norm: str = "max") -> jax.Array:
    """How far ``apply_fn`` is from commuting with the shift of ``x`` by ``shift`` (relative, unitless).

    ``apply_fn`` maps NHWC ``x`` (N, H, W, C) to either

    * a spatial map (N, H', W', C'): the error is ``max |f(T x) - T' f(x)| / max |f(x)|`` where ``T`` shifts by
      ``shift`` pixels and ``T'`` by ``shift * H' / H`` output units (rounded when not whole: then the law cannot
      hold), both circularly with ``mode='circular'``; with ``mode='zeros'`` the input is translated with zero
      fill and only output units at least ``border`` units from the edges (for both positions) are compared;
    * anything else (e.g. logits (N, K)): the invariance error ``max |f(T x) - f(x)| / max |f(x)|``.

    ``norm='l2'`` uses ``||.||_2`` ratios instead of max-abs (less dominated by one unit). 0 (to float
    rounding) where the law holds. Jit-able for a static ``shift``.
    """
    if norm not in ("max", "l2"):
        raise ValueError(f"norm must be 'max' or 'l2', got {norm!r}")

    def size(a):
        return jnp.max(jnp.abs(a)) if norm == "max" else jnp.sqrt(jnp.sum(jnp.square(a)))

    y0 = apply_fn(x)
    y1 = apply_fn(shift_images(x, shift, mode))
    if y0.ndim != 4:
        return size(y1 - y0) / jnp.maximum(size(y0), 1e-30)
    out_shift, _ = _output_shift((x.shape[1], x.shape[2]), (y0.shape[1], y0.shape[2]), shift)
    expected = shift_images(y0, out_shift, mode)
    diff = y1 - expected
    if mode == "zeros" or border:
        mask = jnp.asarray(interior_mask((y0.shape[1], y0.shape[2]), out_shift, border))[None, :, :, None]
        diff = jnp.where(mask, diff, 0.0)
        y0 = jnp.where(mask, y0, 0.0)
    return size(diff) / jnp.maximum(size(y0), 1e-30)


# ------------------------------------------------------------------------------------------- consistency


def random_shifts(key: jax.Array, n: int, max_shift: int) -> jax.Array:
    """(n, 2) int32 shifts (dy, dx), each uniform in ``[-max_shift, max_shift]``."""
    return jax.random.randint(key, (n, 2), -max_shift, max_shift + 1)


def shift_each(x: jax.Array, shifts: jax.Array, mode: str = "circular", fill: float = 0.0) -> jax.Array:
    """Shift image ``i`` of NHWC ``x`` by ``shifts[i] = (dy, dx)`` (traced values allowed): circularly, or by
    translation with ``fill`` (``mode='zeros'``)."""
    h, w = x.shape[1], x.shape[2]

    def one(img, s):
        rows = jnp.arange(h) - s[0]
        cols = jnp.arange(w) - s[1]
        if mode == "circular":
            return img[rows % h][:, cols % w]
        y = img[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
        valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        return jnp.where(valid[:, :, None], y, jnp.asarray(fill, img.dtype))

    return jax.vmap(one)(x, shifts)


def consistency(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array, key: jax.Array, *,
                max_shift: int = 4, mode: str = "circular", labels: jax.Array | None = None,
                batch_size: int = 256, repeats: int = 1) -> dict[str, float]:
    """Zhang's (2019) consistency of a classifier ``apply_fn`` (NHWC (N, H, W, C) -> logits (N, K)).

    Each image is shifted twice by independent random ``(dy, dx)`` in ``[-max_shift, max_shift]`` pixels
    (circularly, or translated with zero fill with ``mode='zeros'``); returns ``consistency``: the fraction of
    pairs whose two top-1 classes agree, and, with ``labels``, ``accuracy`` (on unshifted images) and
    ``shifted_accuracy`` (over all shifted copies). ``repeats`` draws that many pairs per image (less noise
    from the shift sampling). Fractions in [0, 1].
    """
    n = images.shape[0]
    pred = jax.jit(lambda x: jnp.argmax(apply_fn(x), -1))
    shifted = jax.jit(lambda x, s: jnp.argmax(apply_fn(shift_each(x, s, mode)), -1))
    p0, agree, hits = [], [], []
    y = None if labels is None else jnp.asarray(labels)
    for r, k in enumerate(jax.random.split(key, repeats)):
        k1, k2 = jax.random.split(k)
        s1, s2 = random_shifts(k1, n, max_shift), random_shifts(k2, n, max_shift)
        for i in range(0, n, batch_size):
            xb = images[i:i + batch_size]
            if labels is not None and r == 0:
                p0.append(pred(xb))
            a, b = shifted(xb, s1[i:i + batch_size]), shifted(xb, s2[i:i + batch_size])
            agree.append(a == b)
            if y is not None:
                yb = y[i:i + batch_size]
                hits += [a == yb, b == yb]
    out = {"consistency": float(jnp.mean(jnp.concatenate(agree)))}
    if y is not None:
        out["accuracy"] = float(jnp.mean(jnp.concatenate(p0) == y))
        out["shifted_accuracy"] = float(jnp.mean(jnp.concatenate(hits)))
    return out


def invariance_profile(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array, max_shift: int = 4,
                       mode: str = "circular") -> np.ndarray:
    """Mean over images of ``P(class | shifted image)`` of the unshifted top-1 class, for every shift:
    (2 * max_shift + 1, 2 * max_shift + 1) array indexed ``[dy + max_shift, dx + max_shift]``, in [0, 1]."""
    fn = jax.jit(lambda x: jax.nn.softmax(apply_fn(x), -1))
    top = jnp.argmax(fn(images), -1)
    size = 2 * max_shift + 1
    out = np.zeros((size, size), np.float32)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            p = fn(shift_images(images, (dy, dx), mode))
            out[dy + max_shift, dx + max_shift] = float(jnp.mean(jnp.take_along_axis(p, top[:, None], -1)))
    return out
