"""CIFAR ResNets (He et al. 2015, section 4.2): ResNet-20/32/44/56/110 for 32x32 inputs, and their "plain"
counterparts without shortcuts (``skip=False``, registered as ``resnet20_plain`` ...).

3x3 conv 16 -> three stages of n basic blocks with 16, 32, 64 channels (stride 2 at the first block of
stages 2 and 3) -> global average pool -> ``head``; depth = 6n + 2. Shortcut option ``'A'`` (the paper's
CIFAR choice: identity, with stride-2 subsampling and zero-padded channels when the shape changes, no
parameters) or ``'B'`` (1x1 conv + BN projection when the shape changes). Parameter counts with option A
and 10 classes: 0.27M (20), 0.46M (32), 0.66M (44), 0.85M (56), 1.7M (110).
Parameter tree: ``stem/{conv,bn}``, ``stage{s}_block{b}/{conv1,bn1,conv2,bn2[,downsample]}``, ``head``.
``antialias=True`` (Zhang 2019) blurs before each subsampling with :class:`~cnnjax.models.resnet.BlurPool`:
the strided conv1 becomes conv1 (stride 1) -> BN -> ReLU -> BlurPool, and the shortcut blurs before its
stride-2 subsampling (option A) or 1x1 conv (option B); same shapes and parameters.
NHWC (N, 32, 32, C) -> logits; ``features`` -> (N, 8, 8, 64). ``feature_maps``: the three stage ends
``stage1..stage3`` (16, 32, 64 channels; reductions 1, 2, 4; the stem's map has stage 1's size and is not a
level).
``pool="flatten"`` replaces the global average pool by flattening the (N, H/4, W/4, 64) map (channel-major, as
:func:`~cnnjax.models.layers.flatten_nchw`) into the ``head``, a LeNet-style dense classifier that sees where
each feature is (the ``shift`` experiment compares the two); its ``head`` has (H/4)(W/4) times the inputs, so
it depends on the input size.

Zero-initialised last BN (``zero_init_last_bn``) is allowed with shortcuts (off by default and in the record:
``ArchRecord.zero_init_residual`` is False) and refused without (``_plain``: every block would output exactly 0).
It stalls these networks. Measured on the bundled digits, ``python -m train.main --arch A --epochs 4
--no-progress`` with ``--zero-init-residual on`` / ``off`` (val top-1): resnet20 0.153 / 0.964; at ``--lr 0.1``
0.240 / 0.983; resnet56 at ``--lr 0.1`` 0.323 / 0.933; with option-B shortcuts (``shortcut='B'``) resnet20
0.301 / 0.947, resnet56 at ``--lr 0.1`` 0.535 zero-initialised; the ImageNet resnet18 0.989 / 0.989. Why:

* At step 0 a zero-initialised network is its shortcut path, and a branch opens only through the gradient that
  reaches its zero scale. Here that path is the stem (one 3x3 conv, 16 channels; option B adds two 1x1
  projections) averaged over 8x8 positions: nearly the same vector for every image (between-image std / mean of
  a pooled feature 0.15; resnet18's 1x1 map at 32x32: 1.7). On a digits batch the gradient norm of the zero
  scales is 0.021 (option A) / 0.044 (B) against 1.1 for resnet18 and 1.2 for resnet50, and the head's 0.21
  against 2.7 without zero init; after 4 epochs the scales are still 0.002-0.03 and the loss near log 10.
* Option A adds a fixed point: where the shortcut zero-pads, the block outputs ReLU(0 + 0) and ReLU's
  gradient at 0 is 0, so those channels' scale and bias never get a gradient: 16 of 32 channels in stage 2 and
  48 of 64 in stage 3 (192 of the 336 zero scales) are still exactly 0 after training: the residual stream
  stays 16 channels wide (``tests/test_zero_init.py``). Option B has no such channels but is still slow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import nn as cnn
from cnnjax.models.base import ImageClassifier, stage_end
from cnnjax.models.layers import ConvNormAct, ModuleDef, flatten_nchw
from cnnjax.models.registry import register
from cnnjax.models.resnet import BlurPool, Downsample, check_zero_init


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut (option A or B) unless ``skip`` is False; ``act`` (default ReLU)
    after the first BN and after the sum.

    ``drop=True`` removes the residual branch (Veit et al. 2016's lesion): the block computes ``act(shortcut(x))``,
    its output with the branch's contribution set to zero: the identity when the shape is kept (``x`` is already
    the output of an ``act``), else the option-A strided subsampling with zero-padded channels (option B: the
    1x1 projection). A plain block (``skip=False``) has no shortcut; removing it leaves the same parameter-free
    path (identity, or subsampling + zero padding), so the two kinds of network lose the same thing.
    """

    features: int
    stride: int
    conv: ModuleDef
    norm: ModuleDef
    skip: bool = True
    shortcut: str = "A"
    zero_init_last: bool = False
    antialias: bool = False
    act: str | Callable[[jax.Array], jax.Array] = nn.relu
    drop: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.drop:
            return cnn.activation(self.act)(self._shortcut(x, self.skip))
        blur = self.antialias and self.stride > 1
        y = cnn.activation(self.act)(self.norm(name="bn1")(self.conv(self.features, 3, 1 if blur else self.stride, 1,
                                                     use_bias=False, name="conv1")(x)))
        if blur:
            y = BlurPool(self.stride, name="blur")(y)
        y = self.conv(self.features, 3, 1, 1, use_bias=False, name="conv2")(y)
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros if self.zero_init_last else
                      nn.initializers.ones)(y)
        if self.has_variable("lesion", "keep"):  # a run-time lesion mask (see CifarResNet.drop_blocks)
            keep = self.get_variable("lesion", "keep").astype(y.dtype)
            return cnn.activation(self.act)(keep * y + (1 - keep if not self.skip else 1) * self._shortcut(x, True))
        if not self.skip:
            return cnn.activation(self.act)(y)
        return cnn.activation(self.act)(y + self._shortcut(x, True))

    def _shortcut(self, x: jax.Array, with_params: bool) -> jax.Array:
        """The shortcut path: identity, option-A subsampling + zero padding, or (``with_params`` and option B) the
        projection."""
        if self.stride == 1 and x.shape[-1] == self.features:
            return x
        if self.shortcut == "B" and with_params:
            return Downsample(self.features, self.stride, self.conv, self.norm, antialias=self.antialias,
                              name="downsample")(x)
        blur = self.antialias and self.stride > 1
        sc = BlurPool(self.stride, name="shortcut_blur")(x) if blur else x[:, :: self.stride, :: self.stride, :]
        extra = self.features - x.shape[-1]
        return jnp.pad(sc, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


POOLS = ("avg", "flatten")  # CifarResNet.pool: what feeds the head


class CifarResNet(ImageClassifier):
    """ResNet-(6n+2) for CIFAR-sized inputs; ``depth`` in {20, 32, 44, 56, 110, ...}.

    ``act`` (default ReLU) is every activation (the stem's and the blocks'); it has no parameters, so the
    parameter tree does not depend on it.

    ``drop_blocks`` (block indices 0 .. 3n-1 in network order, stage by stage) removes those blocks' residual
    branches at apply time (:class:`CifarBasicBlock` ``drop``); the parameters stay the same tree (a dropped
    block's are simply unused). For many lesions without recompiling, pass a float vector of 3n keep factors as
    the variable collection ``lesion`` instead: ``{"lesion": lesion_mask(model, keep)}`` with 1 = keep, 0 =
    remove (:func:`lesion_mask`); the same result as ``drop_blocks`` for a 0/1 mask.
    """

    num_classes: int = 10
    depth: int = 20
    skip: bool = True
    shortcut: str = "A"
    zero_init_last_bn: bool = False
    antialias: bool = False
    act: str | Callable[[jax.Array], jax.Array] = nn.relu
    drop_blocks: tuple[int, ...] = ()
    pool: str = "avg"

    def __post_init__(self):
        check_zero_init(self)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        super().__post_init__()

    @nn.compact
    def forward(self, x: jax.Array, train: bool, features_only: bool) -> jax.Array:
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {self.depth}")
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        n = (self.depth - 2) // 6
        conv = self.conv_def(kernel_init=cnn.init.kaiming_normal_fan_out)
        norm = self.norm_def(train)
        bad = [i for i in self.drop_blocks if not 0 <= i < 3 * n]
        if bad:
            raise ValueError(f"drop_blocks: block indices must be in 0..{3 * n - 1} for depth {self.depth}, got {bad}")
        x = ConvNormAct(16, 3, conv, norm, act=self.act, name="stem")(x)
        for s, width in enumerate((16, 32, 64)):
            for b in range(n):
                x = CifarBasicBlock(width, 2 if s > 0 and b == 0 else 1, conv, norm, skip=self.skip,
                                    shortcut=self.shortcut, zero_init_last=self.zero_init_last_bn,
                                    antialias=self.antialias, act=self.act, drop=s * n + b in self.drop_blocks,
                                    name=f"stage{s + 1}_block{b}")(x)
            x = stage_end(x, f"stage{s + 1}", 2**s)
        if features_only:
            return x
        x = cnn.global_avg_pool(x) if self.pool == "avg" else flatten_nchw(x)
        return cnn.Linear(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)


def block_names(depth: int) -> list[str]:
    """The blocks' module names in network order (index = position in ``drop_blocks``)."""
    n = (depth - 2) // 6
    return [f"stage{s + 1}_block{b}" for s in range(3) for b in range(n)]


def downsampling_blocks(depth: int) -> list[int]:
    """Indices of the blocks that halve the resolution and widen the channels (first of stages 2 and 3)."""
    n = (depth - 2) // 6
    return [n, 2 * n]


def lesion_mask(depth: int, keep) -> dict:
    """The ``lesion`` collection for :class:`CifarResNet`: ``keep[i]`` (1 keep, 0 remove) for block ``i``."""
    return {name: {"keep": keep[i]} for i, name in enumerate(block_names(depth))}


for _depth in (20, 32, 44, 56, 110):  # zero_init_residual=False: see the module docstring
    register(f"resnet{_depth}", functools.partial(CifarResNet, depth=_depth), input_size=32,
             zero_init_residual=False)
    register(f"resnet{_depth}_plain", functools.partial(CifarResNet, depth=_depth, skip=False), input_size=32,
             zero_init_residual=False)
