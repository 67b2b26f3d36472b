"""DenseNet-BC (Huang et al. 2017), exactly as torchvision builds it: densenet121, 161, 169 and 201.

NHWC throughout: input (N, H, W, 3); at 224x224 the feature map after ``norm5`` + ReLU is (N, 7, 7, C) with
C = 1024 (121), 2208 (161), 1664 (169), 1920 (201). The smallest accepted input is 29x29 (torchvision's
``min_size``). ``feature_maps``: five levels, as timm's DenseNet: ``stem`` (after its ReLU, before the max-pool;
reduction 2), ``denseblock1..3`` (each block's concatenated output, before its transition; 4, 8, 16) and
``norm5`` (after its ReLU; 32): torchvision's ``features.relu0``, ``features.denseblock{1,2,3}`` and ``relu``.

Parameter tree (torchvision key in brackets; conv kernels are HWIO = torch (O, I, kh, kw) transposed to
(kh, kw, I, O), the head kernel is torch's (O, I) transposed; BN ``scale``/``bias`` = ``weight``/``bias``,
batch_stats ``mean``/``var`` = ``running_mean``/``running_var``)::

    stem/conv, stem/bn                              [features.conv0, features.norm0]
    denseblock{b}_layer{i}/{norm1,conv1,norm2,conv2} [features.denseblock{b}.denselayer{i+1}.{norm1,...}]
    transition{b}/{norm,conv}                       [features.transition{b}.{norm,conv}]  (b = 1..3)
    norm5                                           [features.norm5]
    head                                            [classifier]

Layer indices ``i`` are 0-based (torchvision's ``denselayer`` numbers are 1-based). Old checkpoints that spell
``norm.1`` / ``conv.2`` are the same keys with the dot (torchvision's ``_load_state_dict`` renames them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ConvNormAct, ModuleDef
from cnnjax.models.registry import ModulePath, imagenet1k_v1, register


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (``bn_size * growth_rate``) -> BN-ReLU-3x3 conv (``growth_rate``) -> dropout.

    (N, H, W, C) -> (N, H, W, growth_rate): returns only the new features; the block concatenates.
    """

    growth_rate: int
    bn_size: int
    drop_rate: float
    conv: ModuleDef
    norm: ModuleDef
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(self.bn_size * self.growth_rate, 1, use_bias=False, name="conv1")(
            nn.relu(self.norm(name="norm1")(x)))
        y = self.conv(self.growth_rate, 3, 1, 1, use_bias=False, name="conv2")(nn.relu(self.norm(name="norm2")(y)))
        if self.drop_rate > 0:
            y = cnn.Dropout(self.drop_rate)(y, deterministic=not self.train)
        return y


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (``features``) -> 2x2 average pool, stride 2: (N, H, W, C) -> (N, H/2, W/2, features)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(self.features, 1, use_bias=False, name="conv")(nn.relu(self.norm(name="norm")(x)))
        return cnn.AvgPool2d(2, 2, name="pool")(x)


class DenseNet(ImageClassifier):
    """torchvision's DenseNet on NHWC input (N, H, W, 3) -> logits (N, num_classes).

    ``memory_efficient`` rematerialises each dense layer in the backward pass (``nn.remat``; torchvision
    checkpoints the concat + bottleneck), trading compute for activation memory; the parameters are unchanged.
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    memory_efficient: bool = False

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_in)
        norm = self.norm_def(train)
        layer_cls = nn.remat(DenseLayer) if self.memory_efficient else DenseLayer

        x = ConvNormAct(self.num_init_features, 7, conv, norm, stride=2, padding=3, name="stem")(x)
        x = stage_end(x, "stem", 2)
        x = cnn.MaxPool2d(3, 2, 1, name="stem_pool")(x)
        num_features = self.num_init_features
        for b, num_layers in enumerate(self.block_config):
            for i in range(num_layers):
                new = layer_cls(self.growth_rate, self.bn_size, self.drop_rate, conv, norm, train,
                                name=f"denseblock{b + 1}_layer{i}")(x)
                x = jnp.concatenate([x, new], axis=-1)
            num_features += num_layers * self.growth_rate
            if b != len(self.block_config) - 1:
                x = stage_end(x, f"denseblock{b + 1}", 4 * 2**b)
                num_features //= 2
                x = Transition(num_features, conv, norm, name=f"transition{b + 1}")(x)
        x = stage_end(nn.relu(norm(name="norm5")(x)), "norm5", 2 ** (len(self.block_config) + 1))
        if features_only:
            return x
        x = cnn.global_avg_pool(x)
        return cnn.Linear(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                          bias_init=cnn.init.zeros, name="head")(x)


_VARIANTS = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet161": dict(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96),
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
    "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64),
}


def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
    """torchvision module name of the cnnjax module ``path`` (see the module docstring)."""
    if path == ("head",):
        return "classifier"
    if path[0] == "stem":
        return {"conv": "features.conv0", "bn": "features.norm0"}[path[1]]
    m = re.fullmatch(r"denseblock(\d+)_layer(\d+)", path[0])
    if m:
        return f"features.denseblock{m[1]}.denselayer{int(m[2]) + 1}.{path[1]}"
    return "features." + ".".join(path)


# torchvision's IMAGENET1K_V1 weights (file, published top-1 / top-5, parameters), eval transform 256/224 bilinear
_WEIGHTS = {
    "densenet121": ("densenet121-a639ec97.pth", 74.434, 91.972, 7_978_856),
    "densenet161": ("densenet161-8d451a50.pth", 77.138, 93.560, 28_681_000),
    "densenet169": ("densenet169-b2777c0a.pth", 75.600, 92.806, 14_149_480),
    "densenet201": ("densenet201-c1103571.pth", 76.896, 93.370, 20_013_928),
}
for _name, _kw in _VARIANTS.items():
    register(_name, functools.partial(DenseNet, **_kw), torchvision_map=torchvision_name,
             weights=(imagenet1k_v1(*_WEIGHTS[_name]),))
