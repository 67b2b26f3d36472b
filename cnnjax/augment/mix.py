"""Batch-level MixUp and CutMix (torchvision v2's ``MixUp``/``CutMix``, timm's switch), and RandomErasing.

``images`` are NHWC float32 ``(N, H, W, C)`` in any units (raw or normalised: mixing and pasting commute with a
per-channel affine normalisation), ``targets`` float32 ``(N, K)`` probability rows (one-hot labels, or already
mixed ones). Each example ``n`` is paired with example ``n - 1`` (``jnp.roll(x, 1, axis=0)``, as torchvision's
``roll(1, 0)``), and one ``lambda ~ Beta(alpha, alpha)`` is drawn per batch:

* :func:`mixup`: ``x = lambda x + (1 - lambda) x_rolled``, the targets likewise;
* :func:`cutmix`: a box centred at a uniform pixel with half-sides ``int(0.5 sqrt(1 - lambda) W)`` and
  ``int(0.5 sqrt(1 - lambda) H)``, clipped to the image, pasted from the rolled batch; the targets mix with the
  corrected ``lambda = 1 - box area / (H W)``, so each target row still sums to 1 and the pasted share of every
  image equals ``1 - lambda_corrected`` exactly;
* :func:`mixup_or_cutmix`: one of the two per batch, CutMix with probability ``switch_prob`` when both alphas
  are positive (timm's ``switch_prob``; torchvision's reference ``RandomChoice([MixUp, CutMix])`` is 0.5).

:func:`random_erasing` is torchvision's ``RandomErasing`` on ONE image ``(H, W, C)``: with probability ``p``, a
rectangle of area ``uniform(scale) * H * W`` and aspect ratio ``exp(uniform(log ratio))`` (sides rounded half to
even) at a uniform position is set to ``value`` (a number, one per channel, or ``"random"``: standard normal
noise). torchvision tries up to 10 such draws one after another and keeps the first that fits inside the image
(erasing nothing when none fits); here the 10 draws are made at once and the first that fits is kept -- the same
law, only the random numbers of the rejected draws are consumed too. torchvision's reference recipe erases
AFTER normalisation (value 0 = the dataset's mean colour), and so does :func:`cnnjax.augment.augment_train_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

ERASING_ATTEMPTS = 10


def _rolled(x: jax.Array) -> jax.Array:
    return jnp.roll(x, 1, axis=0)


def mixup(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """MixUp of a batch: ``(images (N, H, W, C), targets (N, K))`` mixed with the batch rolled by one."""
    lam = jax.random.beta(key, alpha, alpha).astype(images.dtype)
    mixed = _rolled(images) * (1.0 - lam) + images * lam
    return mixed, _rolled(targets) * (1.0 - lam) + targets * lam


def cutmix_box(key: jax.Array, height: int, width: int, alpha: float) -> tuple[jax.Array, ...]:
    """torchvision's CutMix box: int32 ``(y1, y2, x1, x2)`` (rows ``y1:y2``, columns ``x1:x2``) and the raw
    ``lambda ~ Beta(alpha, alpha)`` it was drawn from."""
    k_lam, k_x, k_y = jax.random.split(key, 3)
    lam = jax.random.beta(k_lam, alpha, alpha)
    cx = jax.random.randint(k_x, (), 0, width)
    cy = jax.random.randint(k_y, (), 0, height)
    r = 0.5 * jnp.sqrt(1.0 - lam)
    half_w = jnp.floor(r * width).astype(jnp.int32)
    half_h = jnp.floor(r * height).astype(jnp.int32)
    x1, x2 = jnp.maximum(cx - half_w, 0), jnp.minimum(cx + half_w, width)
    y1, y2 = jnp.maximum(cy - half_h, 0), jnp.minimum(cy + half_h, height)
    return y1, y2, x1, x2, lam


def _box_mask(height: int, width: int, y1, y2, x1, x2) -> jax.Array:
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)


def cutmix(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """CutMix of a batch: ``(images (N, H, W, C), targets (N, K))``; one box for the whole batch."""
    _, h, w, _ = images.shape
    y1, y2, x1, x2, _ = cutmix_box(key, h, w, alpha)
    mask = _box_mask(h, w, y1, y2, x1, x2)
    pasted = jnp.where(mask[None, :, :, None], _rolled(images), images)
    lam = (1.0 - (x2 - x1) * (y2 - y1) / (h * w)).astype(targets.dtype)
    return pasted, _rolled(targets) * (1.0 - lam) + targets * lam


def mixup_or_cutmix(key: jax.Array, images: jax.Array, targets: jax.Array, mixup_alpha: float = 0.0,
                    cutmix_alpha: float = 0.0, switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """MixUp or CutMix for the batch (CutMix with probability ``switch_prob`` when both alphas are > 0; the one
    that is > 0 otherwise; neither when both are 0). The alphas and ``switch_prob`` are Python floats."""
    if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1:
        raise ValueError(f"need alphas >= 0 and 0 <= switch_prob <= 1, got mixup_alpha={mixup_alpha}, "
                         f"cutmix_alpha={cutmix_alpha}, switch_prob={switch_prob}")
    k_switch, k_mix = jax.random.split(key)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return jax.lax.cond(jax.random.bernoulli(k_switch, switch_prob),
                            lambda x, t: cutmix(k_mix, x, t, cutmix_alpha),
                            lambda x, t: mixup(k_mix, x, t, mixup_alpha), images, targets)
    if mixup_alpha > 0:
        return mixup(k_mix, images, targets, mixup_alpha)
    if cutmix_alpha > 0:
        return cutmix(k_mix, images, targets, cutmix_alpha)
    return images, targets


def erasing_box(key: jax.Array, height: int, width: int, scale: Sequence[float] = (0.02, 0.33),
                ratio: Sequence[float] = (0.3, 3.3)) -> tuple[jax.Array, ...]:
    """RandomErasing's rectangle: int32 ``(top, left, h, w)`` and bool ``found`` (False: no draw of the 10 fit)."""
    k_area, k_ratio, k_i, k_j = jax.random.split(key, 4)
    area = height * width * jax.random.uniform(k_area, (ERASING_ATTEMPTS,), minval=scale[0], maxval=scale[1])
    log_r = jnp.log(jnp.asarray(ratio, jnp.float32))
    aspect = jnp.exp(jax.random.uniform(k_ratio, (ERASING_ATTEMPTS,), minval=log_r[0], maxval=log_r[1]))
    hs = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ws = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (hs < height) & (ws < width)
    first = jnp.argmax(fits)
    h, w = hs[first], ws[first]
    top = jax.random.randint(k_i, (), 0, height - h + 1)
    left = jax.random.randint(k_j, (), 0, width - w + 1)
    return top, left, h, w, jnp.any(fits)


def random_erasing(key: jax.Array, image: jax.Array, p: float = 0.5, scale: Sequence[float] = (0.02, 0.33),
                   ratio: Sequence[float] = (0.3, 3.3), value: float | Sequence[float] | str = 0.0) -> jax.Array:
    """torchvision's RandomErasing on one image ``(H, W, C)`` (see the module docstring); ``p`` a Python float."""
    h_img, w_img, c = image.shape
    k_apply, k_box, k_noise = jax.random.split(key, 3)
    top, left, h, w, found = erasing_box(k_box, h_img, w_img, scale, ratio)
    if isinstance(value, str):
        if value != "random":
            raise ValueError(f"random erasing value must be a number, one per channel, or 'random'; got {value!r}")
        fill = jax.random.normal(k_noise, image.shape, image.dtype)
    else:
        fill = jnp.broadcast_to(jnp.asarray(value, image.dtype), (c,))
    mask = _box_mask(h_img, w_img, top, top + h, left, left + w) & found & jax.random.bernoulli(k_apply, p)
    return jnp.where(mask[..., None], fill, image)
