"""Multi-layer perceptron baselines: the image is flattened and fed to fully connected layers.

``mlp`` has configurable ``hidden`` widths; ``mlp_10m`` is the lecture's ~10M-parameter MLP baseline
(9,971,210 parameters on 32x32x3 input with 10 classes) for the LeNet / ResNet-18 / MLP comparison.
Parameter tree: ``fc1``..``fc{k}``, ``head``. NHWC (N, H, W, C) -> logits. An MLP has no spatial map:
``features`` returns the last hidden layer as (N, 1, 1, D), so "global pool + head" still holds; there are no
stages, so ``feature_maps`` / ``feature_info`` raise :class:`~cnnjax.models.base.NoFeatureLevelsError`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier
from cnnjax.models.layers import flatten_nchw
from cnnjax.models.registry import register


class MLP(ImageClassifier):
    """Flatten, then ``Linear -> ReLU [-> Dropout]`` per hidden width, then the ``head``."""

    hidden: Sequence[int] = (512, 256)
    dropout: float = 0.0

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        x = flatten_nchw(x)
        for i, width in enumerate(self.hidden):
            x = nn.relu(cnn.Linear(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i + 1}")(x))
            if self.dropout:
                x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        if features_only:
            return x[:, None, None, :]
        return cnn.Linear(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)


register("mlp", MLP, input_size=32)
register("mlp_10m", functools.partial(MLP, hidden=(2048, 1024, 1024, 512)), input_size=32)
