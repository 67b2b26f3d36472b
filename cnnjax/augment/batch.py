"""What the train step calls: the policy spec (``--augment POLICY``) and the batch functions.

* :func:`parse_policy` reads ``none | default | flip | randaugment[:N,M] | trivialaugment | autoaugment[:imagenet]
  | rotate[:DEG] | rot180`` into a :class:`Policy`; :func:`resolve_policy` turns ``default`` into the dataset's
  own on-device policy:
  ``none`` for a dataset whose ``DatasetInfo.orientation_sensitive`` is True (digits, shapes, MNIST-like sets:
  their shifts are made on the host; a mirror would change the class), ``flip`` otherwise (natural images; the
  random-resized crop is made on the host).
* :func:`augment_batch` applies a policy to raw images ``(N, H, W, C)`` in ``[0, 1]``.
* :func:`train_augmentation` turns the CLI options into an :class:`Augmentation`; :func:`host_crop` says whether
  the host makes its random crop.
* :func:`augment_train_batch` is the whole on-device part of a train batch in torchvision's reference order:
  flip and policy on raw pixels, normalisation, random erasing, MixUp/CutMix; it returns normalised images and
  soft targets ``(N, K)``; :func:`batch_augmenter` wraps it for the train step (normalised batches in).

Keying for exact resume: ``key = jax.random.fold_in(jax.random.key(seed), step)`` with the global step, made
inside the jitted step (or a jitted pre-step); image ``n`` of the GLOBAL batch is keyed by ``fold_in`` of
``n``, so the result does not depend on the number of devices or processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cnnjax.augment import mix, policies
from cnnjax.augment.ops import Fill

POLICIES = ("none", "default", "flip", "randaugment[:N,M]", "trivialaugment", "autoaugment[:imagenet]",
            "rotate[:DEG]", "rot180")
_NAMES = ("none", "default", "flip", "randaugment", "trivialaugment", "autoaugment", "rotate", "rot180")
OP_POLICIES = ("randaugment", "trivialaugment", "autoaugment", "rotate", "rot180")  # run after the dataset's flip

# fold_in tags that keep the streams of the stages apart
TAG_POLICY, TAG_ERASING, TAG_MIX, TAG_FLIP = 0x504F, 0x4552, 0x4D58, 0x464C


@dataclasses.dataclass(frozen=True)
class Policy:
    """A parsed ``--augment`` value (hashable: a static argument of ``jax.jit``).

    Attributes:
        name: one of ``none default flip randaugment trivialaugment autoaugment``.
        num_ops: RandAugment's ops per image (N, default 2).
        magnitude: RandAugment's magnitude bin (M, 0..30, default 9).
        variant: AutoAugment's policy table (``imagenet``).
        degrees: ``rotate``'s range: an angle uniform in ``[-degrees, degrees]`` (default 15).
    """

    name: str = "none"
    num_ops: int = 2
    magnitude: int = 9
    variant: str = "imagenet"
    degrees: float = 15.0

    def __str__(self) -> str:
        if self.name == "rotate":
            return f"rotate:{self.degrees:g}"
        if self.name == "randaugment":
            return f"randaugment:{self.num_ops},{self.magnitude}"
        if self.name == "autoaugment":
            return f"autoaugment:{self.variant}"
        return self.name


def _bad(text: str, why: str = "") -> ValueError:
    return ValueError(f"bad augmentation policy {text!r}{': ' + why if why else ''}; valid choices are "
                      f"{', '.join(POLICIES)}")


def parse_policy(text: str | Policy) -> Policy:
    """Parse ``--augment``'s value (see :data:`POLICIES`); ``ValueError`` names the valid choices."""
    if isinstance(text, Policy):
        return text
    if not isinstance(text, str):
        raise _bad(repr(text), "not a string")
    name, colon, rest = text.strip().lower().partition(":")
    if name not in _NAMES:
        raise _bad(text)
    if name == "randaugment":
        if not colon:
            return Policy("randaugment")
        parts = [p.strip() for p in rest.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise _bad(text, "N and M must be integers") from None
        if len(values) not in (1, 2):
            raise _bad(text, "expected randaugment:N or randaugment:N,M")
        num_ops, magnitude = values[0], values[1] if len(values) == 2 else 9
        if num_ops < 0 or not 0 <= magnitude < policies.NUM_BINS:
            raise _bad(text, f"need N >= 0 and 0 <= M <= {policies.NUM_BINS - 1}")
        return Policy("randaugment", num_ops=num_ops, magnitude=magnitude)
    if name == "autoaugment":
        variant = rest.strip() if colon else "imagenet"
        if variant not in policies.AUTOAUGMENT_POLICIES:
            raise _bad(text, f"AutoAugment policies: {', '.join(policies.AUTOAUGMENT_POLICIES)}")
        return Policy("autoaugment", variant=variant)
    if name == "rotate":
        if not colon:
            return Policy("rotate")
        try:
            degrees = float(rest)
        except ValueError:
            raise _bad(text, "DEG must be a number of degrees") from None
        if not 0 < degrees <= 180:
            raise _bad(text, "need 0 < DEG <= 180")
        return Policy("rotate", degrees=degrees)
    if colon:
        raise _bad(text, f"{name} takes no options")
    return Policy(name)


def resolve_policy(policy: str | Policy, orientation_sensitive: bool) -> Policy:
    """The policy to run: ``default`` becomes ``none`` for an orientation-sensitive dataset (never a flip) and
    ``flip`` otherwise; any other policy is returned parsed."""
    policy = parse_policy(policy)
    if policy.name == "default":
        return Policy("none" if orientation_sensitive else "flip")
    return policy


def augment_batch(key: jax.Array, images_raw01: jax.Array, policy: str | Policy, *, fill: Fill = 0.0,
                  orientation_sensitive: bool | None = None) -> jax.Array:
    """Apply ``policy`` to raw images NHWC ``(N, H, W, C)`` float32 in ``[0, 1]``; same shape and range out.

    Image ``n`` is keyed by ``fold_in(key, n)``. ``fill`` (raw units, scalar or per channel) is what the
    geometric ops put outside the image. ``default`` needs ``orientation_sensitive`` (the dataset's flag)."""
    policy = parse_policy(policy)
    if policy.name == "default":
        if orientation_sensitive is None:
            raise ValueError("augmentation policy 'default' needs the dataset's orientation_sensitive flag")
        policy = resolve_policy(policy, orientation_sensitive)
    if policy.name == "none":
        return images_raw01
    if policy.name == "flip":
        fn = policies.batched(policies.flip)
    elif policy.name == "randaugment":
        fn = policies.batched(policies.randaugment, num_ops=policy.num_ops, magnitude=policy.magnitude, fill=fill)
    elif policy.name == "trivialaugment":
        fn = policies.batched(policies.trivialaugment, fill=fill)
    elif policy.name == "rotate":
        fn = policies.batched(policies.random_rotate, degrees=policy.degrees, fill=fill)
    elif policy.name == "rot180":
        fn = policies.batched(policies.rot180)
    else:
        fn = policies.batched(policies.autoaugment, policy=policy.variant, fill=fill)
    return fn(key, images_raw01)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The on-device augmentation of a run (hashable; the CLI options ``--augment``, ``--mixup``, ``--cutmix``,
    ``--random-erasing``; :func:`train_augmentation` builds it from them).

    Attributes:
        flip: a random horizontal flip (p = 1/2) of each image before ``policy`` (torchvision's reference order:
            crop, ``RandomHorizontalFlip``, then AutoAugment/RandAugment/TrivialAugmentWide).
        policy: the per-image policy, resolved (:func:`resolve_policy`): ``default`` raises ``ValueError``.
        mixup_alpha / cutmix_alpha: Beta parameters; 0 switches that one off.
        switch_prob: probability of CutMix for a batch when both are on.
        erasing_p: RandomErasing probability per image (0: off).
        erasing_value: what erasing writes, in NORMALISED units (0 = the mean colour) or ``"random"``.
        fill: what geometric ops put outside the image, raw units.
    """

    policy: Policy = Policy("none")
    flip: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    erasing_p: float = 0.0
    erasing_value: float | tuple[float, ...] | str = 0.0
    fill: float | tuple[float, ...] = 0.0

    @property
    def active(self) -> bool:
        return self.flip or self.policy.name != "none" or self.mixup_alpha > 0 or self.cutmix_alpha > 0 \
            or self.erasing_p > 0

    def describe(self) -> str:
        """One line for the run's log, e.g. ``flip + trivialaugment, mixup 0.2, cutmix 1, random erasing 0.1``."""
        parts = [" + ".join(p for p in ("flip" if self.flip else "", "" if self.policy.name == "none"
                                        else str(self.policy)) if p) or "no per-image policy"]
        parts += [f"{name} {v:g}" for name, v in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha),
                                                    ("random erasing", self.erasing_p)) if v > 0]
        return ", ".join(parts)


def train_augmentation(augment: str | Policy = "default", orientation_sensitive: bool = False, *,
                       mixup: float = 0.0, cutmix: float = 0.0, random_erasing: float = 0.0,
                       switch_prob: float = 0.5, fill: float | tuple[float, ...] = 0.0) -> Augmentation:
    """The on-device part of ``--augment POLICY`` (with ``--mixup``, ``--cutmix``, ``--random-erasing``).

    ``none``: nothing (the host makes no random crop either). ``default``: the dataset's own: a flip unless the
    dataset is ``orientation_sensitive`` (digits, shapes, MNIST-like sets: their augmentation is the host's
    shift). ``flip``: a flip, whatever the dataset says. ``randaugment[:N,M]``, ``trivialaugment``,
    ``autoaugment[:imagenet]``, ``rotate[:DEG]``, ``rot180``: the dataset's default flip, then the policy, as
    torchvision's reference adds ``--auto-augment`` after its crop and flip. The host's random crop
    (random-resized or pad-and-crop) is on for every policy but ``none``: :func:`host_crop`."""
    policy = parse_policy(augment)
    for name, v in (("--mixup", mixup), ("--cutmix", cutmix)):
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0 (a Beta alpha; 0 switches it off), got {v}")
    if not 0 <= random_erasing <= 1:
        raise ValueError(f"--random-erasing must be a probability in [0, 1], got {random_erasing}")
    if not 0 <= switch_prob <= 1:
        raise ValueError(f"--mix-switch-prob must be a probability in [0, 1], got {switch_prob}")
    flip = policy.name == "flip" or (policy.name != "none" and not orientation_sensitive)
    op = policy if policy.name in OP_POLICIES else Policy("none")
    return Augmentation(policy=op, flip=flip, mixup_alpha=float(mixup), cutmix_alpha=float(cutmix),
                        erasing_p=float(random_erasing), switch_prob=float(switch_prob),
                        fill=fill)


def host_crop(augment: str | Policy) -> bool:
    """Whether the host pipeline makes its random crop under ``--augment`` (all policies but ``none``)."""
    return parse_policy(augment).name != "none"


def augment_train_batch(key: jax.Array, images_raw01: jax.Array, labels: jax.Array, num_classes: int,
                        mean: Sequence[float], std: Sequence[float], aug: Augmentation
                        ) -> tuple[jax.Array, jax.Array]:
    """On-device augmentation of one train batch.

    Args:
        key: ``fold_in(key(seed), step)``.
        images_raw01: NHWC ``(N, H, W, C)`` float32 raw pixels in ``[0, 1]`` (a batch that arrives normalised is
            ``images * std + mean``).
        labels: int ``(N,)``.
        num_classes: ``K``.
        mean / std: the dataset's per-channel normalisation (raw units).
        aug: what to apply.

    Returns:
        ``(images, targets)``: normalised NHWC float32 ``(N, H, W, C)`` and float32 ``(N, K)`` target
        distributions (one-hot rows without MixUp/CutMix), each row summing to 1. Label smoothing, if any, is
        applied to these targets by the loss (``optax.smooth_labels``), as torchvision's reference does.
    """
    return _pipeline(key, images_raw01, labels, num_classes, mean, std, aug, normalised=False)


def _pipeline(key: jax.Array, x: jax.Array, labels: jax.Array, num_classes: int, mean: Sequence[float],
              std: Sequence[float], aug: Augmentation, *, normalised: bool) -> tuple[jax.Array, jax.Array]:
    """Flip, policy (on raw pixels), normalisation, erasing, MixUp/CutMix. ``x`` raw or ``normalised``: a flip
    commutes with the per-channel normalisation, so only a policy needs the raw pixels (no round trip
    otherwise)."""
    m, s = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    x = x.astype(jnp.float32)
    if aug.flip:
        x = augment_batch(jax.random.fold_in(key, TAG_FLIP), x, "flip")
    if aug.policy.name != "none":
        raw = x * s + m if normalised else x
        x = (augment_batch(jax.random.fold_in(key, TAG_POLICY), raw, aug.policy, fill=aug.fill) - m) / s
    elif not normalised:
        x = (x - m) / s
    if aug.erasing_p > 0:
        value = aug.erasing_value
        erase = policies.batched(lambda k, im: mix.random_erasing(k, im, aug.erasing_p, value=value))
        x = erase(jax.random.fold_in(key, TAG_ERASING), x)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return mix.mixup_or_cutmix(jax.random.fold_in(key, TAG_MIX), x, targets, aug.mixup_alpha, aug.cutmix_alpha,
                               aug.switch_prob)


def batch_augmenter(aug: Augmentation, num_classes: int, mean: Sequence[float], std: Sequence[float]):
    """``fn(key, images, labels) -> (images, targets)`` for the train step: ``images`` NHWC float32 as the data
    sources deliver them, NORMALISED (``(raw - mean) / std``); the same pipeline as :func:`augment_train_batch`
    (the policy sees ``images * std + mean``). Returns normalised images and ``(N, K)`` float32 targets."""

    def fn(key: jax.Array, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _pipeline(key, images, labels, num_classes, mean, std, aug, normalised=True)

    return fn
