"""The image operations of torchvision's AutoAugment family in JAX: pure functions of ONE image.

Every op is ``op(image, magnitude, *, fill=...) -> image``: ``image`` is ``(H, W, C)`` float32 with RAW pixels in
``[0, 1]`` (``C`` = 1 or 3), ``magnitude`` a Python or traced scalar, and the result has the same shape, dtype and
range. No op draws random numbers (the policies in :mod:`cnnjax.augment.policies` do, and pass the magnitude).
They run BEFORE normalisation: torchvision defines them on ``[0, 1]``/uint8 images (clamps at 0 and 1, solarize
thresholds, uint8 histograms), so the train step augments raw pixels and normalises afterwards.

Each op is torchvision.transforms.v2.functional's kernel for float tensors, with the magnitude passed the way
``_AutoAugmentBase._apply_image_or_video_transform`` (torchvision/transforms/v2/_auto_augment.py) passes it:

==============  ======================================================================================
op              definition (``m`` = magnitude)
==============  ======================================================================================
Identity        the image
ShearX/ShearY   ``F.affine(shear=[degrees(atan(m)), 0] / [0, degrees(atan(m))], center=[0, 0])``
TranslateX/Y    ``F.affine(translate=[int(m), 0] / [0, int(m)])`` (``int``: truncation towards 0)
Rotate          ``F.rotate(angle=m)`` degrees counter-clockwise about the image centre
Brightness      ``clip(x * (1 + m))``
Color           blend with the grayscale image ``0.2989 R + 0.587 G + 0.114 B``, ratio ``1 + m`` (1 channel: no-op)
Contrast        blend with the mean of that grayscale image, ratio ``1 + m``
Sharpness       blend with the 3x3 ``[[1,1,1],[1,5,1],[1,1,1]] / 13`` smoothing, ratio ``1 + m``; border kept
Posterize       ``floor(x * 2**b) / 2**b`` clipped to ``2**b - 1`` levels, ``b = int(m)`` bits
Solarize        ``1 - x`` where ``x >= m`` (``m`` a threshold in ``[0, 1]``, v2's convention)
AutoContrast    per channel ``(x - min) / (max - min)`` (a constant channel is kept)
Equalize        PIL's histogram equalisation per channel on ``uint8(x * 255.999)`` values, back to ``/ 255``
Invert          ``1 - x`` (AutoAugment only)
==============  ======================================================================================

Geometric ops sample with nearest interpolation as ``grid_sample(mode="nearest", align_corners=False)`` does (the
source coordinate rounded half to even) and put ``fill`` (scalar or per channel, raw units; torchvision's default
``None`` is 0) where the source pixel lies outside the image. Blends clip to ``[0, 1]``. dm-pix provides the ops
whose definition is torchvision's (:func:`hflip`, the grayscale of Color/Contrast, :func:`solarize`); its
brightness (additive), contrast (per-channel mean), saturation (HSV) and affine warp (pixel-centre origin, rounding
half away from zero) differ from torchvision's, so those are written in ``jnp`` here.

:func:`apply_op` applies op number ``index`` of :data:`OPS` with a traced index (``lax.switch``; the five
geometric ops share one warp), so a policy can be jitted and vmapped over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cnnjax.data.base import MissingDependencyError

Fill = float | Sequence[float]

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def pix() -> Any:
    """dm-pix, imported on first use (a core dependency, but ``import cnnjax`` and unaugmented training work
    without it)."""
    try:
        import dm_pix
    except ImportError:
        raise MissingDependencyError("on-device augmentation needs dm-pix: pip install dm-pix") from None
    return dm_pix


# --------------------------------------------------------------------------------------------------------------------
# Geometry: torchvision's inverse affine matrix and its nearest-neighbour grid sampling.
# --------------------------------------------------------------------------------------------------------------------

def inverse_affine(linear: tuple[Any, Any, Any, Any], translate: tuple[Any, Any], center: tuple[Any, Any]
                   ) -> jax.Array:
    """torchvision's ``_get_inverse_affine_matrix`` at scale 1: float32 ``(6,)`` mapping output to input
    coordinates centred on the image centre, from the inverse linear part ``(m0, m1, m3, m4)``, ``translate`` in
    pixels and ``center`` relative to the image centre. The callers build the linear part from ``tan(shear)``
    (= the magnitude) or ``cos``/``sin`` of the angle directly, as torchvision's float64 arithmetic ends up with
    after rounding to float32 (``tan(atan(m))`` in float32 would move sampling points that sit on a .5 tie)."""
    m0, m1, m3, m4 = (jnp.asarray(v, jnp.float32) for v in linear)
    cx, cy = (jnp.asarray(v, jnp.float32) for v in center)
    tx, ty = (jnp.asarray(v, jnp.float32) for v in translate)
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return jnp.stack([m0, m1, m2, m3, m4, m5])


def warp(image: jax.Array, matrix: jax.Array, fill: Fill = 0.0) -> jax.Array:
    """Resample ``image`` (H, W, C) at ``matrix`` (6,) (from :func:`inverse_affine`) with nearest interpolation,
    as torchvision's ``_affine_grid`` + ``grid_sample(mode="nearest", align_corners=False)``: the same float32
    arithmetic, the source index rounded half to even, ``fill`` outside the image."""
    h, w, _ = image.shape
    x = jnp.arange(w, dtype=jnp.float32) - (w - 1) * 0.5
    y = (jnp.arange(h, dtype=jnp.float32) - (h - 1) * 0.5)[:, None]
    t = matrix.astype(jnp.float32) / jnp.array([0.5 * w] * 3 + [0.5 * h] * 3, jnp.float32)
    gx = x * t[0] + y * t[1] + t[2]
    gy = x * t[3] + y * t[4] + t[5]
    ix = jnp.round(((gx + 1.0) * w - 1.0) * 0.5)
    iy = jnp.round(((gy + 1.0) * h - 1.0) * 0.5)
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    cols = jnp.clip(ix, 0, w - 1).astype(jnp.int32)
    rows = jnp.clip(iy, 0, h - 1).astype(jnp.int32)
    out = image[rows, cols]
    fill = jnp.broadcast_to(jnp.asarray(fill, image.dtype), image.shape[-1:])
    return jnp.where(inside[..., None], out, fill)


def _corner(image: jax.Array) -> tuple[float, float]:
    h, w, _ = image.shape
    return (-0.5 * w, -0.5 * h)  # center=[0, 0] (the top-left corner) relative to the image centre


def shear_x_matrix(image: jax.Array, magnitude: Any) -> jax.Array:
    # shear=[degrees(atan(m)), 0]: torchvision's RSS matrix is [[1, -m], [0, 1]], its inverse [[1, m], [0, 1]]
    return inverse_affine((1.0, magnitude, 0.0, 1.0), (0.0, 0.0), _corner(image))


def shear_y_matrix(image: jax.Array, magnitude: Any) -> jax.Array:
    return inverse_affine((1.0, 0.0, magnitude, 1.0), (0.0, 0.0), _corner(image))


def translate_x_matrix(image: jax.Array, magnitude: Any) -> jax.Array:
    return inverse_affine((1.0, 0.0, 0.0, 1.0), (jnp.trunc(magnitude), 0.0), (0.0, 0.0))


def translate_y_matrix(image: jax.Array, magnitude: Any) -> jax.Array:
    return inverse_affine((1.0, 0.0, 0.0, 1.0), (0.0, jnp.trunc(magnitude)), (0.0, 0.0))


def rotate_matrix(image: jax.Array, magnitude: Any) -> jax.Array:
    # F.rotate(angle) builds the affine matrix of -angle (clockwise): inverse [[cos, -sin], [sin, cos]] of angle
    rad = jnp.asarray(magnitude, jnp.float32) * (math.pi / 180.0)
    cos, sin = jnp.cos(rad), jnp.sin(rad)
    return inverse_affine((cos, -sin, sin, cos), (0.0, 0.0), (0.0, 0.0))


MATRICES = (shear_x_matrix, shear_y_matrix, translate_x_matrix, translate_y_matrix, rotate_matrix)


def identity(image: jax.Array, magnitude: Any = 0.0, *, fill: Fill = 0.0) -> jax.Array:
    return image


def shear_x(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return warp(image, shear_x_matrix(image, magnitude), fill)


def shear_y(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return warp(image, shear_y_matrix(image, magnitude), fill)


def translate_x(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return warp(image, translate_x_matrix(image, magnitude), fill)


def translate_y(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return warp(image, translate_y_matrix(image, magnitude), fill)


def rotate(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return warp(image, rotate_matrix(image, magnitude), fill)


def hflip(image: jax.Array, magnitude: Any = 0.0, *, fill: Fill = 0.0) -> jax.Array:
    """Mirror left-right (``F.horizontal_flip``)."""
    return pix().flip_left_right(image)


# --------------------------------------------------------------------------------------------------------------------
# Colour.
# --------------------------------------------------------------------------------------------------------------------

def _blend(image: jax.Array, other: jax.Array, ratio: Any) -> jax.Array:
    ratio = jnp.asarray(ratio, jnp.float32)
    return jnp.clip(image * ratio + other * (1.0 - ratio), 0.0, 1.0)


def grayscale(image: jax.Array) -> jax.Array:
    """(H, W, 1) luma ``0.2989 R + 0.587 G + 0.114 B`` of an RGB image (torchvision's and dm-pix's rec601)."""
    return pix().rgb_to_grayscale(image)


def brightness(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return jnp.clip(image * (1.0 + jnp.asarray(magnitude, jnp.float32)), 0.0, 1.0)


def color(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    if image.shape[-1] == 1:  # torchvision: "Match PIL behaviour"
        return image
    return _blend(image, grayscale(image), 1.0 + magnitude)


def contrast(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    gray = grayscale(image) if image.shape[-1] == 3 else image
    return _blend(image, jnp.mean(gray), 1.0 + magnitude)


def sharpness(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    h, w, _ = image.shape
    if h <= 2 or w <= 2:
        return image
    centre = image[1:-1, 1:-1]
    window = sum(image[i:i + h - 2, j:j + w - 2] for i in range(3) for j in range(3))
    blurred = (window - centre) * (1.0 / 13.0) + centre * (5.0 / 13.0)
    inner = centre + (blurred - centre) * (1.0 - jnp.asarray(1.0 + magnitude, jnp.float32))
    return jnp.clip(image.at[1:-1, 1:-1].set(inner), 0.0, 1.0)


def posterize(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    levels = jnp.exp2(jnp.trunc(jnp.asarray(magnitude, jnp.float32)))
    return jnp.clip(jnp.floor(image * levels), 0.0, levels - 1.0) * (1.0 / levels)


def solarize(image: jax.Array, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    return pix().solarize(image, jnp.asarray(magnitude, image.dtype))


def autocontrast(image: jax.Array, magnitude: Any = 0.0, *, fill: Fill = 0.0) -> jax.Array:
    lo = jnp.min(image, axis=(0, 1))
    hi = jnp.max(image, axis=(0, 1))
    flat = hi == lo
    scale = jnp.where(flat, 1.0, hi - lo)
    return jnp.clip((image - jnp.where(flat, 0.0, lo)) / scale, 0.0, 1.0)


def equalize(image: jax.Array, magnitude: Any = 0.0, *, fill: Fill = 0.0) -> jax.Array:
    """PIL's equalisation LUT per channel, as torchvision's ``equalize_image``, on ``uint8(x * 255.999)``."""
    h, w, c = image.shape
    values = (image * 255.999).astype(jnp.int32)  # torchvision's float -> uint8 (to_dtype(scale=True))
    flat = values + 256 * jnp.arange(c, dtype=jnp.int32)  # channel k's bins at 256k..256k+255: one scatter
    hist = jnp.zeros(256 * c, jnp.int32).at[flat.reshape(-1)].add(1).reshape(c, 256)
    cum = jnp.cumsum(hist, axis=1)
    last = jnp.take_along_axis(hist, jnp.argmax(cum, axis=1)[:, None], axis=1)[:, 0]  # count of the top value
    step = (h * w - last) // 255
    lut = jnp.clip((cum[:, :-1] + (step // 2)[:, None]) // jnp.maximum(step, 1)[:, None], 0, 255)
    lut = jnp.concatenate([jnp.zeros((c, 1), jnp.int32), lut], axis=1)
    lut = jnp.where((step != 0)[:, None], lut, jnp.arange(256, dtype=jnp.int32))  # step 0: the image as is
    return (lut.reshape(-1)[flat] * (1.0 / 255.0)).astype(image.dtype)


def invert(image: jax.Array, magnitude: Any = 0.0, *, fill: Fill = 0.0) -> jax.Array:
    return 1.0 - image


FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Rotate": rotate, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize, "AutoContrast": autocontrast,
    "Equalize": equalize, "Invert": invert,
}


def _geometric(image: jax.Array, index: jax.Array, magnitude: Any, fill: Fill) -> jax.Array:
    k = jnp.clip(index - OPS.index(GEOMETRIC[0]), 0, len(GEOMETRIC) - 1)
    matrix = jnp.stack([f(image, magnitude) for f in MATRICES])[k]
    return warp(image, matrix, fill)


def apply_op(image: jax.Array, index: Any, magnitude: Any, *, fill: Fill = 0.0) -> jax.Array:
    """Op number ``index`` of :data:`OPS` (traced int) at ``magnitude`` (traced float) on ``image`` (H, W, C)."""
    branches = [lambda x, i, m: identity(x)]
    branches.append(lambda x, i, m: _geometric(x, i, m, fill))
    branches += [lambda x, i, m, f=FUNCTIONS[name]: f(x, m) for name in OPS if name not in GEOMETRIC][1:]
    branch_of = [0] + [1] * len(GEOMETRIC) + list(range(2, len(branches)))
    index = jnp.asarray(index, jnp.int32)
    return jax.lax.switch(jnp.asarray(branch_of, jnp.int32)[index], branches, image, index,
                          jnp.asarray(magnitude, jnp.float32))
