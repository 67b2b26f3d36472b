"""Linear-probe feature cache: run the frozen backbone once, then train the head on what it saw.

In linear probing only ``head`` trains and the backbone runs in inference mode (frozen BatchNorm), so the head's
input for an image never changes. ``--feature-cache`` computes it once for every training and validation image
(:func:`cnnjax.transfer.head_inputs`, un-augmented, in index order), and the run then trains
:class:`cnnjax.transfer.HeadOnFeatures` on an in-memory dataset of those features: same optimizer, same
shuffling (same seed and example count), same checkpoints (the full model's parameters, backbone untouched).

It is the same computation as an uncached linear probe when the training data is not augmented and nothing
random sits between the backbone and the head; training-time augmentation and dropout before the head (VGG,
AlexNet, MobileNet, EfficientNet) are not applied to cached features, and GoogLeNet's auxiliary losses (which
only reach frozen parameters) are not computed. Shuffling is the same as uncached for in-memory, folder and
ArrayRecord ``tfds:`` datasets; TFRecord ``tfds:`` shuffles its files and a buffer instead, so the example order
differs there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cnnjax import transfer
from cnnjax.data import DatasetInfo, DataSource
from cnnjax.data.arrays import ArraySource
from cnnjax.data.base import num_batches_for
from cnnjax.training import parallel


def cache_features(model, state, source: DataSource, batch_size: int, seed: int, replicated, batch_sharding,
                   progress: bool = True, log: Callable[[str], None] = print) -> tuple[ArraySource, object]:
    """``(feature_source, head_model)``: the head inputs of every example of ``source`` as an
    :class:`~cnnjax.data.arrays.ArraySource` of (N, 1, 1, D) "images" (mean 0, std 1: used as they are) and the
    model that applies only ``head`` to them."""
    info = source.info

    def extract(params, batch_stats, batch):
        feats = transfer.head_inputs(model, {"params": params, "batch_stats": batch_stats}, batch["image"])
        return feats, batch["label"], batch["mask"]

    extract = jax.jit(extract, in_shardings=(replicated, replicated, batch_sharding),
                      out_shardings=(replicated, replicated, replicated))
    arrays = {}
    for split in ("train", "val"):
        feats, labels = [], []
        batches = source.plain_batches(split, batch_size, process_index=jax.process_index(),
                                       process_count=jax.process_count())
        # plain batches visit every example once, padded like val: ceil(n / B)
        total = num_batches_for("val", info.num_train if split == "train" else info.num_val, batch_size)
        for local in tqdm(batches, total=total, desc=f"caching {split} features", leave=False,
                          disable=not progress, unit="batch"):
            f, y, m = jax.device_get(extract(state.params, state.batch_stats,
                                             parallel.global_batch(local, batch_sharding)))
            feats.append(f[m])
            labels.append(y[m])
        arrays[split] = (np.concatenate(feats)[:, None, None, :], np.concatenate(labels).astype(np.int32))
    for split, n in (("train", info.num_train), ("val", info.num_val)):
        if len(arrays[split][1]) != n:  # e.g. image files that failed to decode (mask False)
            raise ValueError(f"feature cache: {n - len(arrays[split][1])} of {n} {split} images could not be read; "
                             "the cached run would not match the uncached one (run without --feature-cache)")
    dim = arrays["train"][0].shape[-1]
    feature_info = DatasetInfo(name=f"{info.name} (cached head inputs)", num_classes=info.num_classes,
                               image_size=1, channels=dim, num_train=len(arrays["train"][1]),
                               num_val=len(arrays["val"][1]), class_names=info.class_names,
                               mean=(0.0,) * dim, std=(1.0,) * dim)
    log(f"feature cache: {feature_info.num_train} train / {feature_info.num_val} val features of size {dim}")
    cached = ArraySource(feature_info, *arrays["train"], *arrays["val"], pad=0, seed=seed)
    head = transfer.head_module(model, jax.ShapeDtypeStruct((1, info.image_size, info.image_size, info.channels),
                                                            jnp.float32))
    return cached, transfer.HeadOnFeatures(head)
