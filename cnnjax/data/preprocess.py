"""torchvision's evaluation transform in NumPy/PIL, and :class:`Preprocess`, the spec the image datasets take.

``Compose([Resize(resize, interpolation, antialias=True), CenterCrop(crop), ToTensor(), Normalize(mean, std)])``
(what torchvision's ``weights.transforms()`` = ``ImageClassification`` does): resize the shorter side to ``resize``
(PIL, which always antialiases bilinear/bicubic, exactly as torchvision does for PIL input; the longer side is
``int(resize * long / short)``), centre-crop ``crop`` (offsets ``int(round((size - crop) / 2))``, zero padding if
the image is smaller), scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel (float32). The result
matches torchvision applied to the same PIL image (the ImageNet reference scripts load with PIL) up to float32
rounding.

This module knows no model: per-architecture settings (e.g. 232/224 bicubic) are in the architecture records
(:class:`cnnjax.models.WeightsRecord`), turned into a :class:`Preprocess` by :func:`cnnjax.weights.eval_preprocess`.
Only NumPy and PIL are imported.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cnnjax.data.base import resolve_image_size

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_PIL_MODES = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
              "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}
INTERPOLATIONS = tuple(_PIL_MODES)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side ``size`` and the longer ``int(size * long / short)`` (torchvision's
    ``_compute_resized_output_size`` for an int size)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


#: PIL modes of 16-bit (and 32-bit integer) single-channel images, e.g. 16-bit grayscale PNGs.
WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image.convert('RGB')`` as torchvision's ``ImageFolder`` loader does, except that 16-bit (or 32-bit
    integer) grayscale images are scaled to 8 bits (``round(v / 257)``: 65535 -> 255) instead of clipped at 255,
    which would turn nearly every pixel of a 16-bit PNG white."""
    if image.mode in WIDE_INT_MODES:
        wide = np.asarray(image, dtype=np.int64)
        scaled = np.clip((wide + 128) // 257, 0, 255) if wide.max(initial=0) > 255 else np.clip(wide, 0, 255)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")  # a loaded copy even for RGB: callers close the file afterwards


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image (any mode, converted like torchvision's ``ImageFolder`` loader), a uint8
    array ``(H, W)`` / ``(H, W, 1)`` / ``(H, W, 3)`` / ``(H, W, 4)`` (RGBA: alpha dropped), or encoded file bytes
    (JPEG, PNG, ... as stored by TFDS); 16-bit images are scaled to 8 bits (:func:`to_rgb`)."""
    if isinstance(image, bytes | bytearray | memoryview):
        with Image.open(io.BytesIO(bytes(image))) as im:
            return to_rgb(im)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else to_rgb(image)
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


def check_interpolation(interpolation: str) -> None:
    if interpolation not in _PIL_MODES:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {', '.join(_PIL_MODES)}")


def transform(image: Any, resize: int | None = 256, crop: int | tuple[int, int] | None = 224,
              interpolation: str = "bilinear", mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """One image -> float32 ``(crop_h, crop_w, 3)`` (HWC, no batch axis); arguments as in :func:`preprocess`."""
    check_interpolation(interpolation)
    img = to_pil(image)
    if resize is not None:
        new_h, new_w = resized_size(img.height, img.width, int(resize))
        if (new_h, new_w) != (img.height, img.width):
            img = img.resize((new_w, new_h), _PIL_MODES[interpolation])
    if crop is not None:
        crop_h, crop_w = (crop, crop) if isinstance(crop, int | np.integer) else crop
        img = _center_crop(img, int(crop_h), int(crop_w))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.astype(np.float32, copy=False)


def preprocess(image: Any, resize: int | None = 256, crop: int | tuple[int, int] | None = 224,
               interpolation: str = "bilinear", mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """One image -> a float32 NHWC batch of one, ``(1, crop_h, crop_w, 3)``, as torchvision's eval transform.

    ``image``: uint8 array (H, W, 3) / (H, W) / (H, W, 4) (RGB[A]; converted to RGB), a PIL image or encoded
    bytes. ``resize``: shorter side after resizing (None: no resize); ``crop``: centre-crop size, int or (h, w)
    (None: no crop); ``interpolation``: 'bilinear', 'bicubic', 'nearest' (also 'box', 'hamming', 'lanczos').
    """
    return transform(image, resize, crop, interpolation, mean, std)[None]


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The evaluation transform of the ``folder:`` / ``tfds:`` val split: square ``crop`` after resizing the shorter
    side to ``resize`` with ``interpolation`` (antialiased), normalised with ``mean``/``std`` (raw [0, 1] units).

    Calling it maps one image (see :func:`to_pil`) to float32 ``(crop, crop, 3)``. :meth:`from_value` also accepts
    a mapping with these keys, e.g. ``cnnjax.weights.eval_transform(arch).keywords``.
    """

    resize: int | None = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is None and name == "resize":
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"preprocess {name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        check_interpolation(self.interpolation)
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"preprocess {name} needs 3 values (RGB), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"preprocess std must be positive, got {self.std}")

    @classmethod
    def from_value(cls, value: Preprocess | Mapping[str, Any]) -> Preprocess:
        """A :class:`Preprocess` from itself or a mapping of its fields (unknown keys raise ``ValueError``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - fields)
            if unknown:
                raise ValueError(f"unknown preprocess keys {unknown}; valid keys: {', '.join(sorted(fields))}")
            return cls(**value)
        raise TypeError(f"eval_preprocess must be a cnnjax.data.Preprocess or a mapping of its fields, got "
                        f"{type(value).__name__}")

    def __call__(self, image: Any) -> np.ndarray:
        return transform(image, self.resize, self.crop, self.interpolation, self.mean, self.std)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}


def resolve_preprocess(name: str, eval_preprocess: Preprocess | Mapping[str, Any] | None, image_size: int | None,
                       default: int) -> tuple[Preprocess | None, int]:
    """(the :class:`Preprocess` or None, the image size): ``image_size`` defaults to the crop and must equal it."""
    if eval_preprocess is None:
        return None, resolve_image_size(name, None, image_size, default)
    spec = Preprocess.from_value(eval_preprocess)
    if image_size is not None and image_size != spec.crop:
        raise ValueError(f"dataset {name!r}: image_size={image_size} differs from the eval_preprocess crop "
                         f"{spec.crop}; pass one or make them equal")
    return spec, spec.crop
