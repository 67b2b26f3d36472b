"""Per-image transforms on the host with PIL: decode, convert, random-resized-crop / resize / centre crop.

Each function maps one image file (a path, or a binary file object such as ``io.BytesIO`` of the encoded bytes
a TFDS dataset stores) to uint8 ``(S, S, C)``; normalisation happens once per batch (:func:`normalize_batch`).
Randomness comes from a ``numpy.random.Generator`` the caller derives from (seed, epoch, example position), so an
example's augmentation does not depend on workers, threads or sharding.

* train, ``S > SMALL`` or an explicit ``scale`` (``--rrc-scale``): torchvision's ``RandomResizedCrop(S,
  scale=(0.08, 1), ratio=(3/4, 4/3))`` (the same parameter draw: 10 tries, log-uniform ratio, then a centre crop
  clamped to the ratio range) resized with PIL bilinear (antialiased). JPEGs are decoded at a reduced scale
  (``Image.draft``, a DCT-domain downscale by 2, 4 or 8) when the crop still covers at least ``S x S`` pixels
  there: the result differs from a full decode by interpolation noise only, and decoding is up to several times
  faster (``exact=True`` turns it off);
* train, ``S <= SMALL``: resize to ``S x S``, pad ``S // 8`` zero pixels per side, random ``S x S`` crop (the CIFAR
  recipe);
* train with ``crop=False`` (``--augment none``): the eval view.

No flip here: the horizontal flip (``RandomHorizontalFlip``) runs on the device with the other per-image policies
(:mod:`cnnjax.augment`), and only for datasets that are not orientation-sensitive.
* eval, ``S > SMALL``: torchvision's ``Resize(round(S / 0.875))`` + ``CenterCrop(S)`` (bilinear), or a given
  :class:`~cnnjax.data.preprocess.Preprocess`; eval, ``S <= SMALL``: resize to ``S x S``.

Channels: 3 converts like torchvision's ``ImageFolder`` loader (:func:`~cnnjax.data.preprocess.to_rgb`); 1 is
PIL's ``convert('L')`` (ITU-R 601-2 luma, as torchvision's ``Grayscale``), 16-bit grayscale scaled to 8 bits.
"""

from __future__ import annotations

import math
from typing import BinaryIO

import numpy as np
from PIL import Image

from cnnjax.data.preprocess import WIDE_INT_MODES, Preprocess, _center_crop, resized_size, to_rgb

SMALL = 64  # image sizes up to this use pad-and-crop instead of random-resized-crop
EVAL_CROP_FRACTION = 0.875
GRAY_MODES = ("1", "L", "LA", "I", "F", *WIDE_INT_MODES)
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """``image`` as 8-bit RGB (``channels == 3``) or grayscale ``L`` (``channels == 1``), pixels loaded."""
    if channels == 3:
        return to_rgb(image)
    if image.mode in WIDE_INT_MODES:
        return to_rgb(image).convert("L")
    return image.convert("L")


def rrc_params(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float] = RRC_SCALE,
               ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop, drawn as torchvision's ``RandomResizedCrop.get_params``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_image(path: str | BinaryIO, size: int, channels: int, rng: np.random.Generator,
                exact: bool = False, *, scale: tuple[float, float] | None = None, crop: bool = True,
                eval_spec: Preprocess | None = None) -> np.ndarray:
    """The training view of one image file (path or binary file object): uint8 ``(size, size, channels)`` (see
    the module docstring). ``scale``: the random-resized crop's area range (default :data:`RRC_SCALE` above
    :data:`SMALL` pixels; given, the crop is used at every size); ``crop=False``: no random crop, the eval view
    ``eval_spec`` (:func:`eval_image`)."""
    if not crop:
        return eval_image(path, size, channels, eval_spec)
    with Image.open(path) as im:
        if size > SMALL or scale is not None:
            width, height = im.size
            top, left, h, w = rrc_params(rng, width, height, RRC_SCALE if scale is None else scale)
            if not exact and im.format == "JPEG":
                reduce = min(w, h) / size  # how much the crop is shrunk; draft shrinks by at most this
                if reduce >= 2:
                    im.draft(im.mode, (math.ceil(width / reduce), math.ceil(height / reduce)))
            fx, fy = im.size[0] / width, im.size[1] / height
            img = to_mode(im, channels)
            img = img.resize((size, size), Image.BILINEAR,
                             box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))
            return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
        img = to_mode(im, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    pad = size // 8
    if pad:
        top, left = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
        padded = np.zeros((size + 2 * pad, size + 2 * pad, channels), np.uint8)
        padded[pad:pad + size, pad:pad + size] = x
        x = padded[top:top + size, left:left + size]
    return x


def default_eval(size: int) -> Preprocess | None:
    """The eval transform for ``size``: resize ``round(size / 0.875)`` + centre crop above :data:`SMALL`, else
    None (resize to ``size x size``)."""
    return Preprocess(resize=int(round(size / EVAL_CROP_FRACTION)), crop=size) if size > SMALL else None


def eval_image(path: str | BinaryIO, size: int, channels: int, spec: Preprocess | None) -> np.ndarray:
    """The evaluation view of one image file (path or binary file object): uint8 ``(size, size, channels)``;
    ``spec``'s resize, interpolation and crop (its mean/std are applied per batch), or a plain ``size x size``
    resize when ``spec`` is None."""
    from cnnjax.data.preprocess import _PIL_MODES

    with Image.open(path) as im:
        img = to_mode(im, channels)
    if spec is None:
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
    else:
        if spec.resize is not None:
            new_h, new_w = resized_size(img.height, img.width, spec.resize)
            if (new_h, new_w) != (img.height, img.width):
                img = img.resize((new_w, new_h), _PIL_MODES[spec.interpolation])
        img = _center_crop(img, spec.crop, spec.crop)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)


def normalize_batch(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 NHWC -> float32 ``(x / 255 - mean) / std`` (the same float32 operations as
    :func:`cnnjax.data.preprocess.transform`, so the eval path matches it bit for bit)."""
    x = images.astype(np.float32) / np.float32(255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return x
