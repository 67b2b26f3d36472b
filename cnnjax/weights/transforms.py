"""Each architecture's torchvision evaluation transform (``weights.transforms()`` = ``ImageClassification``).

The settings (resize, crop, interpolation, mean/std) are the :class:`~cnnjax.models.EvalTransform` of one of the
architecture's :class:`~cnnjax.models.WeightsRecord` (``weights=``: IMAGENET1K_V1 unless another enum is named)
(registered in its model file). The transform itself (PIL resize with antialiasing, centre crop, normalisation;
equal to torchvision's up to float32 rounding) is :func:`cnnjax.data.preprocess.preprocess`, which the ``folder:``
and ``tfds:`` datasets use too. This module binds the two: :func:`eval_transform` (a function of one image) and
:func:`eval_preprocess` (the :class:`~cnnjax.data.preprocess.Preprocess` spec the datasets take). Both are
re-exported by :mod:`cnnjax.weights`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnjax.data.preprocess import Preprocess, preprocess
from cnnjax.weights.torchvision import weights_record

__all__ = ["eval_preprocess", "eval_transform"]


def _settings(arch: str, weights: str) -> dict[str, Any]:
    return weights_record(arch, weights).transform.as_dict()


def eval_transform(arch: str, weights: str = "IMAGENET1K_V1") -> Callable[[Any], np.ndarray]:
    """``image -> (1, crop, crop, 3)`` float32: :func:`~cnnjax.data.preprocess.preprocess` with the resize / crop
    / interpolation / mean / std of ``arch``'s torchvision ``weights`` (an enum name or ``DEFAULT``; e.g.
    IMAGENET1K_V1: 256/224 bilinear for ResNets, efficientnet_b0 256/224 bicubic, convnext_tiny 236/224;
    resnet50 IMAGENET1K_V2: 232/224). The settings are also the returned function's ``.keywords``."""
    return functools.partial(preprocess, **_settings(arch, weights))


def eval_preprocess(arch: str, weights: str = "IMAGENET1K_V1") -> Preprocess:
    """The :class:`~cnnjax.data.preprocess.Preprocess` spec of ``arch``'s torchvision ``weights`` eval
    transform, for ``cnnjax.data.load(..., eval_preprocess=...)``."""
    return Preprocess(**_settings(arch, weights))
