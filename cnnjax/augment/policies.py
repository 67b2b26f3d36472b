"""The random policies of torchvision v2: RandAugment, TrivialAugmentWide, AutoAugment (ImageNet) and a flip.

Each policy is a pure function ``policy(key, image, ...) -> image`` of ONE raw ``(H, W, C)`` float32 image in
``[0, 1]`` and a JAX key; :func:`batched` turns it into ``(key, images (N, H, W, C)) -> images`` with image ``n``
keyed by ``jax.random.fold_in(key, n)``, so an image's augmentation depends on (key, its row) only. The random
choices follow torchvision/transforms/v2/_auto_augment.py (the streams differ, the laws are the same):

* RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31): ``num_ops`` times an op uniform over the 14 ops of
  :data:`RANDAUGMENT_OPS` at bin ``magnitude`` of its :func:`magnitudes` table, negated with probability 1/2
  for the signed ops;
* TrivialAugmentWide(num_magnitude_bins=31): one op uniform over the same 14 ops, a bin uniform over the 31
  bins of the "wide" table, a random sign;
* AutoAugment(IMAGENET): one of the 25 sub-policies of :data:`IMAGENET_POLICY` uniformly; each of its two
  (op, probability, bin) steps applied when ``uniform <= probability``, magnitudes from the 10-bin table;
* flip: mirrored left-right with probability 1/2;
* rotate(degrees): ``RandomRotation(degrees)``: an angle uniform in ``[-degrees, degrees]`` (nearest
  neighbour, ``fill`` outside), :func:`rotation_angle` draws it;
* rot180: rotated by 180° with probability 1/2 (exact: both axes reversed), the wrong augmentation of the
  lecture's 6 and 9.

Under ``vmap`` the op switch evaluates every op for every image and selects (the price of branch-free SIMD code);
``benchmarks/augment.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.augment import ops

RANDAUGMENT_OPS = ops.OPS[:14]  # Identity .. Equalize: RandAugment's and TrivialAugmentWide's op space
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness")
NUM_BINS = 31

#: torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, magnitude bin) steps.
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
AUTOAUGMENT_POLICIES = {"imagenet": IMAGENET_POLICY}


def magnitudes(space: str, num_bins: int, height: int, width: int) -> np.ndarray:
    """float32 ``(len(ops.OPS), num_bins)``: row ``k`` holds the unsigned magnitudes of op ``k`` (zeros for the
    ops without one), as torchvision's ``_AUGMENTATION_SPACE`` of RandAugment/AutoAugment (``space="standard"``)
    or TrivialAugmentWide (``"wide"``) at an image of ``height x width``."""
    if space not in ("standard", "wide"):
        raise ValueError(f"unknown magnitude space {space!r}: valid choices are 'standard', 'wide'")
    wide = space == "wide"
    lin = lambda hi: np.linspace(0.0, hi, num_bins, dtype=np.float32)  # noqa: E731
    table = np.zeros((len(ops.OPS), num_bins), np.float32)
    rows = {"ShearX": lin(0.99 if wide else 0.3), "ShearY": lin(0.99 if wide else 0.3),
            "TranslateX": lin(32.0 if wide else 150.0 / 331.0 * width),
            "TranslateY": lin(32.0 if wide else 150.0 / 331.0 * height),
            "Rotate": lin(135.0 if wide else 30.0),
            "Posterize": 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / (6 if wide else 4))),
            "Solarize": np.linspace(1.0, 0.0, num_bins, dtype=np.float32)}
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        rows[name] = lin(0.99 if wide else 0.9)
    for name, row in rows.items():
        table[ops.OPS.index(name)] = row
    return table


SIGNED_MASK = np.array([name in SIGNED for name in ops.OPS])


def _signed(key: jax.Array, op: jax.Array, magnitude: jax.Array) -> jax.Array:
    """``magnitude`` negated with probability 1/2 when op ``op`` is signed (torchvision: ``rand() <= 0.5``)."""
    flip = jax.random.bernoulli(key) & jnp.asarray(SIGNED_MASK)[op]
    return jnp.where(flip, -magnitude, magnitude)


def randaugment(key: jax.Array, image: jax.Array, num_ops: int = 2, magnitude: int = 9,
                num_bins: int = NUM_BINS, fill: ops.Fill = 0.0) -> jax.Array:
    """RandAugment on one raw image (H, W, C) in [0, 1]: ``num_ops`` random ops at bin ``magnitude``."""
    table = jnp.asarray(magnitudes("standard", num_bins, image.shape[0], image.shape[1]))
    for i in range(num_ops):
        k_op, k_sign = jax.random.split(jax.random.fold_in(key, i))
        op = jax.random.randint(k_op, (), 0, len(RANDAUGMENT_OPS))
        image = ops.apply_op(image, op, _signed(k_sign, op, table[op, magnitude]), fill=fill)
    return image


def trivialaugment(key: jax.Array, image: jax.Array, num_bins: int = NUM_BINS, fill: ops.Fill = 0.0) -> jax.Array:
    """TrivialAugmentWide on one raw image (H, W, C) in [0, 1]: one random op at a random bin."""
    op, magnitude = trivialaugment_params(key, image.shape[0], image.shape[1], num_bins)
    return ops.apply_op(image, op, magnitude, fill=fill)


def trivialaugment_params(key: jax.Array, height: int, width: int, num_bins: int = NUM_BINS
                          ) -> tuple[jax.Array, jax.Array]:
    """TrivialAugmentWide's random choice: (op index into :data:`ops.OPS`, signed magnitude)."""
    k_op, k_bin, k_sign = jax.random.split(key, 3)
    table = jnp.asarray(magnitudes("wide", num_bins, height, width))
    op = jax.random.randint(k_op, (), 0, len(RANDAUGMENT_OPS))
    return op, _signed(k_sign, op, table[op, jax.random.randint(k_bin, (), 0, num_bins)])


def _policy_arrays(policy: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(op indices, probabilities, bins) of a sub-policy table, each ``(len(policy), 2)``; bin 0 for no magnitude."""
    op = np.array([[ops.OPS.index(name) for name, _, _ in sub] for sub in policy], np.int32)
    prob = np.array([[p for _, p, _ in sub] for sub in policy], np.float32)
    bins = np.array([[0 if b is None else b for _, _, b in sub] for sub in policy], np.int32)
    return op, prob, bins


def autoaugment(key: jax.Array, image: jax.Array, policy: str = "imagenet", fill: ops.Fill = 0.0) -> jax.Array:
    """AutoAugment on one raw image (H, W, C) in [0, 1] with torchvision's ``policy`` table (``imagenet``)."""
    if policy not in AUTOAUGMENT_POLICIES:
        raise ValueError(f"unknown AutoAugment policy {policy!r}: valid choices are {', '.join(AUTOAUGMENT_POLICIES)}")
    op_t, prob_t, bin_t = (jnp.asarray(a) for a in _policy_arrays(AUTOAUGMENT_POLICIES[policy]))
    table = jnp.asarray(magnitudes("standard", 10, image.shape[0], image.shape[1]))
    k_sub, k_steps = jax.random.split(key)
    sub = jax.random.randint(k_sub, (), 0, op_t.shape[0])
    for i in range(op_t.shape[1]):
        k_apply, k_sign = jax.random.split(jax.random.fold_in(k_steps, i))
        op = op_t[sub, i]
        new = ops.apply_op(image, op, _signed(k_sign, op, table[op, bin_t[sub, i]]), fill=fill)
        image = jnp.where(jax.random.uniform(k_apply) <= prob_t[sub, i], new, image)
    return image


def flip(key: jax.Array, image: jax.Array) -> jax.Array:
    """Horizontal flip with probability 1/2 of one image (H, W, C)."""
    return jnp.where(jax.random.bernoulli(key), ops.hflip(image), image)


def rotation_angle(key: jax.Array, degrees: float) -> jax.Array:
    """The angle (degrees, counter-clockwise as ``F.rotate``) :func:`random_rotate` draws: uniform in
    ``[-degrees, degrees]``."""
    return jax.random.uniform(key, (), jnp.float32, -degrees, degrees)


def random_rotate(key: jax.Array, image: jax.Array, degrees: float, fill: ops.Fill = 0.0) -> jax.Array:
    """``RandomRotation(degrees)`` of one image (H, W, C): :func:`ops.rotate` by :func:`rotation_angle`."""
    return ops.rotate(image, rotation_angle(key, degrees), fill=fill)


def rot180(key: jax.Array, image: jax.Array) -> jax.Array:
    """Rotation by 180° with probability 1/2 of one image (H, W, C)."""
    return jnp.where(jax.random.bernoulli(key), image[::-1, ::-1], image)


def identity(key: jax.Array, image: jax.Array) -> jax.Array:
    return image


def batched(fn: Callable[..., jax.Array], **kwargs: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(key, images (N, H, W, C)) -> images``: ``fn(fold_in(key, n), images[n], **kwargs)`` for each row."""

    def apply(key: jax.Array, images: jax.Array) -> jax.Array:
        rows = jnp.arange(images.shape[0])
        return jax.vmap(lambda n, x: fn(jax.random.fold_in(key, n), x, **kwargs))(rows, images)

    return apply
