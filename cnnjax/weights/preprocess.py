"""torchvision's evaluation transform (``weights.transforms()`` = ``ImageClassification``) per architecture.

The transform itself (PIL resize with antialiasing, centre crop, normalisation; equal to torchvision's up to
float32 rounding) lives in :mod:`cnnjax.data.preprocess`, where the ``folder:`` and ``tfds:`` datasets use it too;
it is re-exported here. This module adds each architecture's settings from torchvision's IMAGENET1K_V1 table
(:func:`cnnjax.weights.download.torchvision_info`): :func:`eval_transform` (a function of one image) and
:func:`eval_preprocess` (the :class:`~cnnjax.data.preprocess.Preprocess` spec the datasets take).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnjax.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    Preprocess,
    preprocess,
    resized_size,
    transform,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Preprocess", "eval_preprocess", "eval_transform",
           "preprocess", "resized_size", "transform"]


def _settings(arch: str) -> dict[str, Any]:
    from cnnjax.weights.download import torchvision_info

    info = torchvision_info(arch)
    return {key: info[key] for key in ("resize", "crop", "interpolation", "mean", "std")}


def eval_transform(arch: str) -> Callable[[Any], np.ndarray]:
    """``image -> (1, crop, crop, 3)`` float32: :func:`preprocess` with the resize / crop / interpolation /
    mean / std of ``arch``'s torchvision IMAGENET1K_V1 weights (e.g. 256/224 bilinear for ResNets,
    efficientnet_b0 256/224 bicubic, convnext_tiny 236/224). The settings are also the returned function's
    ``.keywords``."""
    return functools.partial(preprocess, **_settings(arch))


def eval_preprocess(arch: str) -> Preprocess:
    """The :class:`~cnnjax.data.preprocess.Preprocess` spec of ``arch``'s torchvision IMAGENET1K_V1 eval
    transform, for ``cnnjax.data.load(..., eval_preprocess=...)``."""
    return Preprocess(**_settings(arch))
