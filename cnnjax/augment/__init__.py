"""On-device data augmentation in pure JAX (issue #14): per-image policies, MixUp/CutMix, random erasing.

The split of the work: the host pipeline (:mod:`cnnjax.data`) decodes, random-resize-crops (or pads and crops)
and resizes to a fixed size, keyed by (seed, epoch, index); everything here runs on the device inside the jitted
train step or a jitted pre-step, keyed by ``jax.random.fold_in(jax.random.key(seed), step)``, so exact resume
holds with every policy on and no TensorFlow is needed.

* :mod:`~cnnjax.augment.ops`: the 15 ops of torchvision's AutoAugment family + horizontal flip, pure functions
  ``op(image, magnitude)`` of ONE raw image ``(H, W, C)`` float32 in ``[0, 1]``, torchvision v2's definitions;
* :mod:`~cnnjax.augment.policies`: RandAugment, TrivialAugmentWide, AutoAugment (ImageNet), flip, and
  :func:`~cnnjax.augment.policies.batched` (per-image keys ``fold_in(key, row)``);
* :mod:`~cnnjax.augment.mix`: batch-level MixUp / CutMix (one per batch) and RandomErasing;
* :mod:`~cnnjax.augment.batch`: the ``--augment`` spec (:func:`parse_policy`, :func:`resolve_policy`),
  :func:`augment_batch` (a policy on raw images) and :func:`augment_train_batch` (policy, normalise, erase, mix:
  normalised images and soft targets for the loss).

Images are NHWC; the policies run on RAW pixels, before normalisation (their clamps, thresholds and histograms
are defined on ``[0, 1]``). dm-pix, a dependency imported on first use, provides the flip, grayscale and
solarize; the rest is ``jnp``.

How a train step uses it (``aug`` a static :class:`Augmentation`, ``mean``/``std`` from ``DatasetInfo``)::

    key = jax.random.fold_in(jax.random.key(seed), state.step)
    raw = batch["image"] * std + mean                     # DataSource batches arrive normalised
    images, targets = augment_train_batch(key, raw, batch["label"], num_classes, mean, std, aug)
    loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing)).mean()
"""

from cnnjax.augment.batch import (
    POLICIES,
    Augmentation,
    Policy,
    augment_batch,
    augment_train_batch,
    batch_augmenter,
    host_crop,
    parse_policy,
    resolve_policy,
    train_augmentation,
)

__all__ = ["POLICIES", "Augmentation", "Policy", "augment_batch", "augment_train_batch", "batch_augmenter",
           "host_crop", "parse_policy", "resolve_policy", "train_augmentation"]
