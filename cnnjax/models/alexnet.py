"""AlexNet (Krizhevsky et al. 2012) as torchvision builds it (the one-GPU "OWT" variant).

Parameter tree (torchvision key): ``conv1``..``conv5`` (``features.0/3/6/8/10``), ``fc6`` (``classifier.1``),
``fc7`` (``classifier.4``), ``head`` (``classifier.6``). NHWC input (N, H, W, 3) -> logits (N, num_classes);
``features`` -> (N, 6, 6, 256) at 224x224 (before the adaptive pooling). The flatten is in PyTorch's
(C, H, W) order so torchvision's ``fc6`` weights drop in. ``feature_maps`` (timm has no AlexNet; VGG's rule):
the ReLU before each max-pool, ``conv1`` (64 channels, reduction 4), ``conv2`` (192, 8), ``conv5`` (256, 16),
then ``pool5`` (256, 32): torchvision's ``features.1/4/11/12``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import flatten_nchw
from cnnjax.models.registry import ModulePath, imagenet1k_v1, register


class AlexNet(ImageClassifier):
    """torchvision ``alexnet``: 5 convs, 3 max-pools, adaptive average pool to 6x6, 3 linear layers."""

    dropout: float = 0.5
    act: str | Callable[[jax.Array], jax.Array] = "relu"  # a name of cnnjax.nn.ACTIVATIONS or a function

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def()
        dense = self.linear_def()
        act = cnn.activation(self.act)
        x = stage_end(act(conv(64, 11, 4, 2, name="conv1")(x)), "conv1", 4)
        x = cnn.MaxPool2d(3, 2, name="pool1")(x)
        x = stage_end(act(conv(192, 5, 1, 2, name="conv2")(x)), "conv2", 8)
        x = cnn.MaxPool2d(3, 2, name="pool2")(x)
        x = act(conv(384, 3, 1, 1, name="conv3")(x))
        x = act(conv(256, 3, 1, 1, name="conv4")(x))
        x = stage_end(act(conv(256, 3, 1, 1, name="conv5")(x)), "conv5", 16)
        x = stage_end(cnn.MaxPool2d(3, 2, name="pool5")(x), "pool5", 32)
        if features_only:
            return x
        x = flatten_nchw(cnn.AdaptiveAvgPool2d((6, 6), name="avgpool")(x))
        x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        x = act(dense(4096, name="fc6")(x))
        x = cnn.Dropout(self.dropout, deterministic=not train)(x)
        x = act(dense(4096, name="fc7")(x))
        return dense(self.num_classes, name="head")(x)


_TORCHVISION_NAMES = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
                      "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "head": "classifier.6"}


def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
    """torchvision module name of the cnnjax module ``path`` (see the module docstring)."""
    return _TORCHVISION_NAMES[path[0]]


register("alexnet", AlexNet, torchvision_map=torchvision_name,
         weights=(imagenet1k_v1("alexnet-owt-7be5be79.pth", 56.522, 79.066, 61_100_840),))
