"""Pretrained weights: torchvision checkpoints <-> cnnjax variables, download/cache, and eval preprocessing.

* :func:`from_torchvision` / :func:`to_torchvision` convert a torchvision ``state_dict`` (torch tensors or NumPy
  arrays) to ``{'params', 'batch_stats'}`` and back, strictly (every key used, every leaf filled, shapes checked);
* :func:`from_timm` converts a timm ``state_dict`` of the timm models whose structure is exactly a cnnjax one
  (:data:`TIMM_NAMES`: ResNets, ConvNeXts, EfficientNet-B0..B4, MobileNetV2; :mod:`cnnjax.weights.timm`);
* :func:`load_torchvision` reads a local ``.pth``/``.npz`` or downloads the file of one of torchvision's weight
  enums (``weights='IMAGENET1K_V1'`` by default; ``'IMAGENET1K_V2'``, ``'DEFAULT'``, ...) into a cache (SHA-256
  checked) and converts it; :func:`init_from_torchvision` overlays it on freshly initialised
  variables, keeping a re-initialised classifier for another ``num_classes`` (the ``--init torchvision:ARCH``
  hook; :func:`torchvision_init` resolves ``torchvision:ARCH[.WEIGHTS]`` to its record);
* :func:`eval_transform` / :func:`eval_preprocess` (:mod:`cnnjax.weights.transforms`) give an architecture's
  torchvision evaluation transform, reproduced in NumPy/PIL by :func:`preprocess` (:mod:`cnnjax.data.preprocess`).

Everything per architecture (torchvision module names, classifier modules, URL, SHA-256 prefix, eval transform,
published accuracy) comes from its :class:`cnnjax.models.ArchRecord` / :class:`cnnjax.models.WeightsRecord`.
"""

from cnnjax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from cnnjax.weights.download import (
    ChecksumError,
    WeightsUnavailableError,
    export_npz,
    get_cache_dir,
    init_from_torchvision,
    load_torchvision,
    read_state_dict,
    torchvision_info,
)
from cnnjax.weights.timm import TIMM_EXCLUDED, TIMM_NAMES, check_timm, from_timm, timm_arch, timm_keys
from cnnjax.weights.torchvision import (
    TORCHVISION_ARCHS,
    WeightConversionError,
    check_torchvision,
    from_torchvision,
    head_modules,
    to_torchvision,
    torchvision_init,
    weights_record,
)
from cnnjax.weights.transforms import eval_preprocess, eval_transform

__all__ = [
    "ChecksumError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TIMM_EXCLUDED",
    "TIMM_NAMES",
    "TORCHVISION_ARCHS",
    "WeightConversionError",
    "WeightsUnavailableError",
    "check_timm",
    "check_torchvision",
    "eval_preprocess",
    "eval_transform",
    "export_npz",
    "from_timm",
    "from_torchvision",
    "get_cache_dir",
    "head_modules",
    "init_from_torchvision",
    "load_torchvision",
    "preprocess",
    "read_state_dict",
    "to_torchvision",
    "timm_arch",
    "timm_keys",
    "torchvision_info",
    "torchvision_init",
    "weights_record",
]
