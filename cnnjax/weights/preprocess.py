"""torchvision's evaluation transform (``weights.transforms()`` = ``ImageClassification``) in NumPy/PIL.

resize the shorter side to ``resize`` (PIL, which always antialiases bilinear/bicubic, exactly as torchvision
does for PIL input; the longer side is ``int(resize * long / short)``), centre-crop ``crop`` (offsets
``int(round((size - crop) / 2))``, zero padding if the image is smaller), scale to [0, 1], subtract ``mean``
and divide by ``std`` per channel (float32). The result matches torchvision applied to the same PIL image
(the ImageNet reference scripts load with PIL) up to float32 rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_PIL_MODES = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
              "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side ``size`` and the longer ``int(size * long / short)`` (torchvision's
    ``_compute_resized_output_size`` for an int size)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image (H, W[, C]) or a PIL image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return Image.fromarray(array).convert("RGB")


def _center_crop(image: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    """torchvision ``F.center_crop`` on a PIL image (zero padding when the crop is larger than the image)."""
    w, h = image.size
    if crop_w > w or crop_h > h:
        pad_l, pad_r = ((crop_w - w) // 2, (crop_w - w + 1) // 2) if crop_w > w else (0, 0)
        pad_t, pad_b = ((crop_h - h) // 2, (crop_h - h + 1) // 2) if crop_h > h else (0, 0)
        padded = Image.new(image.mode, (w + pad_l + pad_r, h + pad_t + pad_b))  # zero fill
        padded.paste(image, (pad_l, pad_t))
        image = padded
        w, h = image.size
        if (w, h) == (crop_w, crop_h):
            return image
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def preprocess(image: Any, resize: int | None = 256, crop: int | tuple[int, int] | None = 224,
               interpolation: str = "bilinear", mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """One image -> a float32 NHWC batch of one, ``(1, crop_h, crop_w, 3)``, as torchvision's eval transform.

    ``image``: uint8 array (H, W, 3) / (H, W) / (H, W, 4) (RGB[A]; converted to RGB) or a PIL image.
    ``resize``: shorter side after resizing (None: no resize); ``crop``: centre-crop size, int or (h, w) (None:
    no crop); ``interpolation``: 'bilinear', 'bicubic', 'nearest' (also 'box', 'hamming', 'lanczos').
    """
    if interpolation not in _PIL_MODES:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {', '.join(_PIL_MODES)}")
    img = _to_pil(image)
    if resize is not None:
        new_h, new_w = resized_size(img.height, img.width, int(resize))
        if (new_h, new_w) != (img.height, img.width):
            img = img.resize((new_w, new_h), _PIL_MODES[interpolation])
    if crop is not None:
        crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
        img = _center_crop(img, int(crop_h), int(crop_w))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x[None].astype(np.float32, copy=False)


def eval_transform(arch: str) -> Callable[[Any], np.ndarray]:
    """``image -> (1, crop, crop, 3)`` float32: :func:`preprocess` with the resize / crop / interpolation /
    mean / std of ``arch``'s torchvision IMAGENET1K_V1 weights (e.g. 256/224 bilinear for ResNets,
    efficientnet_b0 256/224 bicubic, convnext_tiny 236/224). The settings are also the returned function's
    ``.keywords``."""
    from cnnjax.weights.download import torchvision_info

    info = torchvision_info(arch)
    return functools.partial(preprocess, resize=info["resize"], crop=info["crop"],
                             interpolation=info["interpolation"], mean=info["mean"], std=info["std"])
