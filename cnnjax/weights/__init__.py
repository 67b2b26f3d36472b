"""Pretrained weights: torchvision checkpoints <-> cnnjax variables, download/cache, and eval preprocessing.

* :func:`from_torchvision` / :func:`to_torchvision` convert a torchvision ``state_dict`` (torch tensors or NumPy
  arrays) to ``{'params', 'batch_stats'}`` and back, strictly (every key used, every leaf filled, shapes checked);
* :func:`load_torchvision` reads a local ``.pth``/``.npz`` or downloads torchvision's IMAGENET1K_V1 file into a
  cache (SHA-256 checked) and converts it; :func:`init_from_torchvision` overlays it on freshly initialised
  variables, keeping a re-initialised classifier for another ``num_classes`` (the ``--init torchvision:ARCH``
  hook);
* :func:`eval_transform` / :func:`preprocess` reproduce torchvision's evaluation transform in NumPy/PIL.
"""

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
from cnnjax.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD, eval_transform, preprocess
from cnnjax.weights.torchvision import (
    TORCHVISION_ARCHS,
    WeightConversionError,
    check_torchvision,
    from_torchvision,
    head_modules,
    to_torchvision,
)

__all__ = [
    "ChecksumError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHVISION_ARCHS",
    "WeightConversionError",
    "WeightsUnavailableError",
    "check_torchvision",
    "eval_transform",
    "export_npz",
    "from_torchvision",
    "get_cache_dir",
    "head_modules",
    "init_from_torchvision",
    "load_torchvision",
    "preprocess",
    "read_state_dict",
    "to_torchvision",
    "torchvision_info",
]
