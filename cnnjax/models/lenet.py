"""LeNet-5 (LeCun et al. 1998) on 32x32 inputs, and a ``modern`` variant with ReLU and max-pooling.

Layers (paper names): C1 conv 6@5x5 -> S2 2x2 subsampling -> C3 conv 16@5x5 -> S4 2x2 subsampling ->
C5 conv 120@5x5 (1x1 output at 32x32, as in the paper) -> F6 84 -> output.
Classic: scaled tanh ``1.7159 tanh(2x/3)`` (the paper's squashing function) and average-pool subsampling;
the paper's trainable subsampling coefficients, sparse C3 connection table and RBF output are replaced by
their usual modern equivalents (full C3, linear output). ``modern=True`` uses ReLU and max-pooling.
Parameter tree: ``c1``, ``c3``, ``c5``, ``f6``, ``head``. NHWC (N, 32, 32, C) -> logits;
``features`` -> (N, 1, 1, 120) (the C5 map). 61,706 parameters for 1 input channel and 10 classes.
``feature_maps`` (VGG's rule: the activation before each subsampling, then the last map): ``c1`` (6 channels,
reduction 1: 28x28 at 32x32), ``c3`` (16, 2: 10x10), ``c5`` (120, 4: 1x1).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import flatten_nchw
from cnnjax.models.registry import register

lecun_tanh = cnn.activations.lecun_tanh


class LeNet5(ImageClassifier):
    """LeNet-5; ``modern`` switches to ReLU + max-pooling; ``act`` (a name of :data:`cnnjax.nn.ACTIVATIONS`
    or a function) overrides the activation of either variant (``None``: the variant's own)."""

    in_channels: int = 1
    num_classes: int = 10
    modern: bool = False
    act: str | Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        act = cnn.activation(self.act) if self.act is not None else nn.relu if self.modern else lecun_tanh
        pool = functools.partial(cnn.MaxPool2d if self.modern else cnn.AvgPool2d, 2, 2)
        conv = self.conv_def()
        dense = self.linear_def()
        x = pool(name="s2")(stage_end(act(conv(6, 5, name="c1")(x)), "c1", 1))
        x = pool(name="s4")(stage_end(act(conv(16, 5, name="c3")(x)), "c3", 2))
        x = stage_end(act(conv(120, 5, name="c5")(x)), "c5", 4)
        if features_only:
            return x
        x = flatten_nchw(x)
        x = act(dense(84, name="f6")(x))
        return dense(self.num_classes, name="head")(x)


register("lenet5", LeNet5, input_size=32)
register("lenet5_modern", functools.partial(LeNet5, modern=True), input_size=32)
