"""Classic image filters as convolutions, and the lecture's questions about the convolution itself.

Images are NHWC float arrays (or HWC for a single photo), pixel values in ``[0, 1]``; kernels are HWIO as
:func:`cnnjax.ops.conv2d` takes them. Every function here is pure and jit-able.

* :data:`KERNELS` / :func:`kernel`: identity, the two ridge/edge detectors (4- and 8-neighbour Laplacians),
  sharpen, normalised box blur, Gaussian, Sobel (x, y); :func:`apply_filter` convolves each channel with one
  of them (depthwise ``lax`` convolution, zero padding keeping the size).
* :func:`rgb_to_gray_conv` / :func:`append_red_plus_green_conv`: the 1x1 convolutions that turn RGB into gray
  (ITU-R BT.601 weights) and that append an R+G channel.
* :func:`conv_param_count`: ``k * k * S * T + T`` parameters of a k x k convolution from S to T channels.
* :func:`avg_pool_as_conv`: average pooling is a depthwise convolution with ``1 / k^2`` weights and stride k.
* :func:`load_photo`: a real photo to try filters on (matplotlib's sample image, no network needed).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.ops import conv2d

#: ITU-R BT.601 luma weights for R, G, B.
BT601 = (0.299, 0.587, 0.114)

#: The lecture's 3x3 kernels (row-major, as printed), plus Sobel.
KERNELS: dict[str, np.ndarray] = {
    "identity": np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32),
    "edge4": np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32),  # ridge/edge: 4-neighbour Laplacian
    "edge8": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32),  # 8-neighbour Laplacian
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
    "box_blur": np.full((3, 3), 1.0 / 9.0, np.float32),
    "sobel_x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),  # d/dx (responds to vertical edges)
    "sobel_y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32),  # d/dy (horizontal edges)
}


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """(size, size) Gaussian with standard deviation ``sigma`` pixels, normalised to sum 1."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def kernel(name: str) -> np.ndarray:
    """A 2-D kernel by name: one of :data:`KERNELS` or ``gaussian`` (5x5, sigma 1) / ``gaussian:SIZE:SIGMA``."""
    if name.startswith("gaussian"):
        parts = name.split(":")
        size = int(parts[1]) if len(parts) > 1 else 5
        sigma = float(parts[2]) if len(parts) > 2 else 1.0
        return gaussian_kernel(size, sigma)
    if name not in KERNELS:
        raise ValueError(f"unknown filter {name!r}; valid: {', '.join([*KERNELS, 'gaussian[:SIZE:SIGMA]'])}")
    return KERNELS[name]


def filter_names() -> list[str]:
    """Filter names shown by the ``filters`` tool, in display order."""
    return ["identity", "edge4", "edge8", "sharpen", "box_blur", "gaussian", "sobel_x", "sobel_y"]


def apply_filter(images: jax.Array, k: np.ndarray | jax.Array) -> jax.Array:
    """Convolve every channel of NHWC ``images`` (N, H, W, C) with the 2-D kernel ``k`` (kh, kw), odd sides.

    A depthwise ``lax`` convolution (``groups = C``, kernel (kh, kw, 1, C)) with zero padding ``(k - 1) / 2``:
    the output has the input's shape. As in deep learning frameworks this is a cross-correlation (the kernel is
    not flipped). Pixel units are preserved (no clipping).
    """
    k = jnp.asarray(k, images.dtype)
    kh, kw = k.shape
    c = images.shape[-1]
    w = jnp.broadcast_to(k[:, :, None, None], (kh, kw, 1, c))
    return conv2d(images, w, padding=((kh // 2, kh // 2), (kw // 2, kw // 2)), groups=c)


def sobel_magnitude(images: jax.Array) -> jax.Array:
    """Gradient magnitude ``sqrt(Gx^2 + Gy^2)`` of NHWC images with the Sobel kernels, same shape."""
    gx = apply_filter(images, KERNELS["sobel_x"])
    gy = apply_filter(images, KERNELS["sobel_y"])
    return jnp.sqrt(gx**2 + gy**2)


# ------------------------------------------------------------------------------------ 1x1 convolutions


def rgb_to_gray_conv() -> jax.Array:
    """The 1x1 convolution kernel (1, 1, 3, 1) HWIO that maps RGB to gray: ``0.299 R + 0.587 G + 0.114 B``."""
    return jnp.asarray(BT601, jnp.float32).reshape(1, 1, 3, 1)


def append_red_plus_green_conv() -> jax.Array:
    """The 1x1 convolution kernel (1, 1, 3, 4) that keeps R, G, B and appends a fourth channel R + G."""
    w = np.zeros((3, 4), np.float32)
    w[:, :3] = np.eye(3)
    w[:, 3] = (1.0, 1.0, 0.0)
    return jnp.asarray(w).reshape(1, 1, 3, 4)


def conv1x1(images: jax.Array, w: jax.Array) -> jax.Array:
    """Apply a 1x1 kernel (1, 1, C_in, C_out) to NHWC images: (N, H, W, C_in) -> (N, H, W, C_out)."""
    return conv2d(images, w)


def conv_param_count(kernel_size: int, in_channels: int, out_channels: int, bias: bool = True,
                     groups: int = 1) -> int:
    """Trainable parameters of a ``kernel_size`` x ``kernel_size`` convolution from S to T channels:
    ``k * k * (S / groups) * T`` weights plus ``T`` biases."""
    return kernel_size * kernel_size * (in_channels // groups) * out_channels + (out_channels if bias else 0)


def avg_pool_as_conv(images: jax.Array, k: int) -> jax.Array:
    """Average pooling (window k, stride k, no padding) written as a convolution: depthwise (groups = C),
    every weight ``1 / k^2``, stride k. NHWC (N, H, W, C) -> (N, H // k, W // k, C)."""
    c = images.shape[-1]
    w = jnp.full((k, k, 1, c), 1.0 / (k * k), images.dtype)
    return conv2d(images, w, stride=k, groups=c)


# -------------------------------------------------------------------------------------------- the photo


def _sample_photo_path() -> Path | None:
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return Path(f.name)
    except Exception:  # matplotlib without its sample data
        return None


@functools.lru_cache(maxsize=4)
def _load_photo(size: int | None) -> np.ndarray:
    path = _sample_photo_path()
    if path is None:
        return synthetic_photo(size or 256)
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if size is not None:
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, np.float32) / 255.0
    arr.setflags(write=False)
    return arr


def load_photo(size: int | None = 256) -> np.ndarray:
    """A real RGB photo (H, W, 3) float32 in ``[0, 1]``: Grace Hopper, the sample image matplotlib ships
    (``matplotlib.cbook.get_sample_data('grace_hopper.jpg')``; US Navy photo, public domain). Resized so its
    short side is ``size`` and centre-cropped to (size, size); ``None`` keeps the original 600x512. Without
    matplotlib's sample data, :func:`synthetic_photo` is returned instead. Read-only array."""
    return _load_photo(size)


def synthetic_photo(size: int = 256) -> np.ndarray:
    """A deterministic (size, size, 3) test picture in ``[0, 1]``: smooth colour gradient, a disc, a square and
    stripes (so every filter has edges, flat areas and texture to act on)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    img = np.stack([xx, yy, 0.5 * (1 - xx)], -1) * 0.6 + 0.2
    disc = (xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.04
    img[disc] = (0.9, 0.8, 0.2)
    square = (np.abs(xx - 0.72) < 0.12) & (np.abs(yy - 0.7) < 0.12)
    img[square] = (0.1, 0.3, 0.8)
    stripes = (yy > 0.85) & (np.sin(xx * math.pi * 24) > 0)
    img[stripes] = 1.0
    return img.astype(np.float32)
