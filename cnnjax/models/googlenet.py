"""GoogLeNet / Inception v1 (Szegedy et al. 2015), exactly as torchvision builds it.

NHWC throughout: input (N, H, W, 3); at 224x224 the feature map after ``inception5b`` is (N, 7, 7, 1024).
The smallest accepted input is 15x15 (as torchvision's ``min_size``). ``width_mult`` (not in torchvision; default
1.0, torchvision's net exactly) scales every layer's channel count, the auxiliary heads' included, to
``max(1, round(c * width_mult))``: a narrow GoogLeNet for small-budget experiments (``--model-opt width_mult=0.25``).

Parameter tree (torchvision key in brackets; conv kernels are HWIO = torch (O, I, kh, kw) transposed to
(kh, kw, I, O), linear kernels are torch (O, I) transposed; BN ``scale``/``bias`` = ``weight``/``bias``,
batch_stats ``mean``/``var`` = ``running_mean``/``running_var``)::

    conv1/{conv,bn}, conv2/{conv,bn}, conv3/{conv,bn}        [conv1.conv, conv1.bn, ...]  BasicConv2d
    inception{3a,3b,4a,...,4e,5a,5b}/
        branch1/{conv,bn}                                     [inception3a.branch1.{conv,bn}]
        branch2_0/{conv,bn}, branch2_1/{conv,bn}              [inception3a.branch2.{0,1}.{conv,bn}]
        branch3_0/{conv,bn}, branch3_1/{conv,bn}              [inception3a.branch3.{0,1}.{conv,bn}]
        branch4_1/{conv,bn}                                   [inception3a.branch4.1.{conv,bn}] (4_0 is the pool)
    aux1/{conv/{conv,bn}, fc1, fc2}, aux2/...                 [aux1.conv.{conv,bn}, aux1.fc1, aux1.fc2]
    head                                                      [fc]

i.e. a torchvision key maps over by replacing ``.`` with ``/``, ``branchK.I`` with ``branchK_I`` and ``fc``
with ``head``. The aux heads exist only with ``aux_logits=True``; they are created at ``init`` even when
initialising in eval mode, so the parameter tree is always complete. Their fc1 flattens the (N, 4, 4, 128)
map in PyTorch's (C, H, W) order, so torchvision weights drop in unchanged.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ConvNormAct, ModuleDef, flatten_nchw
from cnnjax.models.registry import ModulePath, imagenet1k_v1, register


class GoogLeNetOutputs(NamedTuple):
    """Training-mode output with auxiliary heads, in torchvision's order."""

    logits: jax.Array
    aux_logits2: jax.Array
    aux_logits1: jax.Array


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool 3/1->1x1.

    The third branch is nominally "5x5" but, as in torchvision (a long-standing quirk kept for weight
    compatibility), uses a 3x3 conv. Output channels ``ch1x1 + ch3x3 + ch5x5 + pool_proj``.
    """

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        block = functools.partial(ConvNormAct, conv=self.conv, norm=self.norm)
        b1 = block(self.ch1x1, 1, name="branch1")(x)
        b2 = block(self.ch3x3red, 1, name="branch2_0")(x)
        b2 = block(self.ch3x3, 3, padding=1, name="branch2_1")(b2)
        b3 = block(self.ch5x5red, 1, name="branch3_0")(x)
        b3 = block(self.ch5x5, 3, padding=1, name="branch3_1")(b3)
        b4 = cnn.MaxPool2d(3, 1, 1, ceil_mode=True, name="branch4_0")(x)
        b4 = block(self.pool_proj, 1, name="branch4_1")(b4)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive avg pool to 4x4 -> 1x1 conv 128 -> fc1 2048->1024 + ReLU -> dropout ->
    fc2 1024->num_classes. (N, H, W, C) -> (N, num_classes). ``conv_ch`` / ``fc_ch``: the 128 and 1024 (scaled
    by GoogLeNet's ``width_mult``)."""

    num_classes: int
    conv: ModuleDef
    norm: ModuleDef
    linear: ModuleDef
    dropout: float = 0.7
    conv_ch: int = 128
    fc_ch: int = 1024

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = cnn.adaptive_avg_pool2d(x, (4, 4))
        x = ConvNormAct(self.conv_ch, 1, self.conv, self.norm, name="conv")(x)
        x = flatten_nchw(x)
        x = nn.relu(self.linear(self.fc_ch, name="fc1")(x))
        x = cnn.Dropout(self.dropout)(x, deterministic=not train)
        return self.linear(self.num_classes, name="fc2")(x)


class GoogLeNet(ImageClassifier):
    """torchvision's GoogLeNet on NHWC input (N, H, W, 3) -> logits (N, num_classes).

    With ``aux_logits`` and ``train=True`` the call returns :class:`GoogLeNetOutputs`
    ``(logits, aux_logits2, aux_logits1)``; otherwise plain logits. ``transform_input`` re-normalises an
    ImageNet-normalised input to the (x - 0.5) / 0.5 scaling the original weights expect (torchvision sets it
    for its pretrained weights). ``features`` returns (N, H/32, W/32, 1024) (ceil-mode pooling, so e.g. 7x7
    at 224). ``feature_maps`` (timm has no GoogLeNet; its Inception-v3's rule: the last map before each
    max-pool, then the last one): ``conv1`` (64 channels, reduction 2), ``conv3`` (192, 4), ``inception3b``
    (480, 8), ``inception4e`` (832, 16), ``inception5b`` (1024, 32), the torchvision modules of those names
    (the channel counts times ``width_mult``, see the module docstring).
    """

    aux_logits: bool = True
    transform_input: bool = False
    dropout: float = 0.2
    dropout_aux: float = 0.7
    width_mult: float = 1.0

    def __post_init__(self):
        for name in ("aux_logits", "transform_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.width_mult, (int, float)) and self.width_mult > 0):
            raise ValueError(f"width_mult must be a positive number, got {self.width_mult!r}")
        super().__post_init__()

    def ch(self, c: int) -> int:
        """A layer's channel count: torchvision's ``c`` scaled by ``width_mult``."""
        return c if self.width_mult == 1 else max(1, round(c * self.width_mult))

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool):
        conv = self.conv_def(kernel_init=cnn.init.trunc_normal(0.01))
        norm = self.norm_def(train, epsilon=1e-3)
        linear = self.linear_def(kernel_init=cnn.init.trunc_normal(0.01))
        c = self.ch

        def inception(*chs: int, name: str) -> Inception:
            return Inception(*(c(k) for k in chs), conv=conv, norm=norm, name=name)

        aux = functools.partial(InceptionAux, self.num_classes, conv, norm, linear, self.dropout_aux, c(128),
                                c(1024))
        # Aux heads run in training; at init they are built in any mode so the parameter tree is complete.
        run_aux = self.aux_logits and not features_only and (train or self.is_initializing())

        if self.transform_input:
            x = _transform_input(x)
        x = ConvNormAct(c(64), 7, conv, norm, stride=2, padding=3, name="conv1")(x)
        x = cnn.MaxPool2d(3, 2, ceil_mode=True, name="maxpool1")(stage_end(x, "conv1", 2))
        x = ConvNormAct(c(64), 1, conv, norm, name="conv2")(x)
        x = ConvNormAct(c(192), 3, conv, norm, padding=1, name="conv3")(x)
        x = cnn.MaxPool2d(3, 2, ceil_mode=True, name="maxpool2")(stage_end(x, "conv3", 4))

        x = inception(64, 96, 128, 16, 32, 32, name="inception3a")(x)
        x = inception(128, 128, 192, 32, 96, 64, name="inception3b")(x)
        x = stage_end(x, "inception3b", 8)
        x = cnn.MaxPool2d(3, 2, ceil_mode=True, name="maxpool3")(x)
        x = inception(192, 96, 208, 16, 48, 64, name="inception4a")(x)
        aux1 = aux(name="aux1")(x, train) if run_aux else None
        x = inception(160, 112, 224, 24, 64, 64, name="inception4b")(x)
        x = inception(128, 128, 256, 24, 64, 64, name="inception4c")(x)
        x = inception(112, 144, 288, 32, 64, 64, name="inception4d")(x)
        aux2 = aux(name="aux2")(x, train) if run_aux else None
        x = inception(256, 160, 320, 32, 128, 128, name="inception4e")(x)
        x = cnn.MaxPool2d(2, 2, ceil_mode=True, name="maxpool4")(stage_end(x, "inception4e", 16))
        x = inception(256, 160, 320, 32, 128, 128, name="inception5a")(x)
        x = stage_end(inception(384, 192, 384, 48, 128, 128, name="inception5b")(x), "inception5b", 32)
        if features_only:
            return x

        x = cnn.global_avg_pool(x)
        x = cnn.Dropout(self.dropout)(x, deterministic=not train)
        logits = linear(self.num_classes, name="head")(x)
        if train and self.aux_logits:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits


def _transform_input(x: jax.Array) -> jax.Array:
    """torchvision's ``_transform_input``: per channel ``x * (std / 0.5) + (mean - 0.5) / 0.5`` (NHWC)."""
    mean = jnp.asarray([0.485, 0.456, 0.406])
    std = jnp.asarray([0.229, 0.224, 0.225])
    return (x * (std / 0.5) + (mean - 0.5) / 0.5).astype(x.dtype)


def torchvision_name(path: ModulePath, modules: frozenset[ModulePath]) -> str:
    """torchvision module name of the cnnjax module ``path`` (see the module docstring)."""
    if path == ("head",):
        return "fc"
    return ".".join(re.sub(r"^(branch\d)_(\d)$", r"\1.\2", p) for p in path)


register("googlenet", GoogLeNet, torchvision_map=torchvision_name,
         head_modules=(("head",), ("aux1", "fc2"), ("aux2", "fc2")),
         weights=(imagenet1k_v1("googlenet-1378be20.pth", 69.778, 89.530, 6_624_904),))
