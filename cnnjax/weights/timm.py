"""timm ``state_dict`` -> cnnjax ``variables``, for the timm models whose structure is exactly a cnnjax one.

:func:`from_timm` renames each timm key to the torchvision key of the same tensor and then runs the strict
torchvision conversion (:mod:`cnnjax.weights.torchvision`: layouts, shape checks, every key used, every leaf
filled); errors name the timm keys. The renaming is written torchvision -> timm (:func:`timm_keys`), from the
architecture's own torchvision key set, so a key timm does not have is reported by its timm name.

Supported (:data:`TIMM_NAMES`, timm name -> cnnjax architecture; a pretrained tag such as ``resnet50.a1_in1k``
or a ``timm/`` hub prefix is accepted and ignored, since tags share the architecture):

* ResNet: ``resnet18/34/50/101/152``, ``resnext50_32x4d``, ``resnext101_32x8d``, ``wide_resnet50_2``,
  ``wide_resnet101_2`` (timm uses torchvision's own key names);
* ConvNeXt: ``convnext_tiny/small/base/large`` (``stem.{0,1}``, ``stages.{s}.blocks.{j}.{conv_dw, norm,
  mlp.fc1, mlp.fc2, gamma}``, ``stages.{s}.downsample.{0,1}``, ``head.norm``, ``head.fc``);
* EfficientNet ``efficientnet_b0`` .. ``efficientnet_b4`` and MobileNetV2 ``mobilenetv2_100``
  (``conv_stem``, ``bn1``, ``blocks.{s}.{j}.{conv_pw, bn1, conv_dw, bn2, se.conv_reduce, se.conv_expand,
  conv_pwl, bn3}``, ``conv_head``, ``bn2``, ``classifier``).

Excluded, because the timm network computes something else than torchvision's (:data:`TIMM_EXCLUDED`):
``efficientnet_b5/b6/b7`` and ``efficientnetv2_s/m/l`` (BatchNorm eps 1e-5; torchvision's use 1e-3),
``tf_efficientnet*`` / ``tf_efficientnetv2*`` / ``tf_mobilenetv3*`` (TensorFlow "SAME" padding, which is
asymmetric and input-size dependent), ``mobilenetv3_large_100`` / ``mobilenetv3_small_100`` (BatchNorm eps 1e-5
vs 1e-3, and a 1x1 ``conv_head`` after pooling where torchvision has a linear layer), and timm's ResNet variants
(``resnet50d`` deep stem and average-pool shortcut, ``seresnet``, ...) that torchvision does not have.
NumPy only: values may be torch tensors or arrays; neither torch nor timm is imported here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from cnnjax.weights.torchvision import WeightConversionError, _plan, convert_planned, torchvision_keys

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
            "wide_resnet50_2", "wide_resnet101_2")
_CONVNEXTS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")
_EFFICIENTNETS = tuple(f"efficientnet_b{i}" for i in range(5))

#: timm model name -> cnnjax architecture, for every timm model :func:`from_timm` converts.
TIMM_NAMES: dict[str, str] = {**{n: n for n in _RESNETS + _CONVNEXTS + _EFFICIENTNETS},
                              "mobilenetv2_100": "mobilenet_v2"}

_EPS = "BatchNorm eps 1e-5, where torchvision's (and cnnjax's) use 1e-3"
_SAME = "TensorFlow 'SAME' padding (asymmetric, input-size dependent), which cnnjax's torchvision models lack"
#: Name patterns of timm models deliberately not converted, with the reason.
TIMM_EXCLUDED: dict[str, str] = {
    r"tf_.*": _SAME,
    r"efficientnet_b[5-7]": _EPS,
    r"efficientnetv2_.*": _EPS,
    r"mobilenetv3_.*": _EPS + "; and a 1x1 conv_head after pooling instead of torchvision's linear layer",
}

# ----------------------------------------------------------------------------------------------------------------
# torchvision key -> timm key, per family (``keys``: all torchvision keys of the architecture)

_CONVNEXT_BLOCK = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
# inverted residual with an expansion conv / without one (timm's DepthwiseSeparableConv)
_EFF_EXPAND = {"block.0.0": "conv_pw", "block.0.1": "bn1", "block.1.0": "conv_dw", "block.1.1": "bn2",
               "block.2.fc1": "se.conv_reduce", "block.2.fc2": "se.conv_expand", "block.3.0": "conv_pwl",
               "block.3.1": "bn3"}
_EFF_DS = {"block.0.0": "conv_dw", "block.0.1": "bn1", "block.1.fc1": "se.conv_reduce",
           "block.1.fc2": "se.conv_expand", "block.2.0": "conv_pw", "block.2.1": "bn2"}
_MBV2_EXPAND = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
                "conv.2": "conv_pwl", "conv.3": "bn3"}
_MBV2_DS = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_MBV2_STAGES = (1, 2, 3, 4, 3, 3, 1)  # blocks per stage: torchvision's features.1..17 are timm's blocks.{s}.{j}
_MBV2_BLOCKS = tuple((s, j) for s, n in enumerate(_MBV2_STAGES) for j in range(n))


def _split(key: str) -> tuple[str, str]:
    module, leaf = key.rsplit(".", 1)
    return module, leaf


def _resnet_key(key: str, keys: frozenset[str]) -> str:
    return key


def _convnext_key(key: str, keys: frozenset[str]) -> str:
    if key.startswith("classifier."):
        return key.replace("classifier.0.", "head.norm.").replace("classifier.2.", "head.fc.")
    f, rest = re.fullmatch(r"features\.(\d+)\.(.+)", key).groups()
    f = int(f)
    if f == 0:
        return f"stem.{rest}"
    if f % 2 == 0:  # features.{2s} sits between stages s and s + 1: timm's stages.{s}.downsample
        return f"stages.{f // 2}.downsample.{rest}"
    j, sub = rest.split(".", 1)
    if sub == "layer_scale":
        sub = "gamma"
    else:
        module, leaf = _split(sub)
        sub = f"{_CONVNEXT_BLOCK[module]}.{leaf}"
    return f"stages.{(f - 1) // 2}.blocks.{j}.{sub}"


def _stem_head_key(key: str, keys: frozenset[str]) -> str:
    """Stem, head conv and classifier of timm's EfficientNet/MobileNetV2 (torchvision ``features.0``, the last
    ``features.{n}``, ``classifier.1``)."""
    last = max(int(k.split(".")[1]) for k in keys if k.startswith("features."))
    module, leaf = _split(key)
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1", f"features.{last}.0": "conv_head",
             f"features.{last}.1": "bn2", "classifier.1": "classifier"}
    return f"{names[module]}.{leaf}"


def _efficientnet_key(key: str, keys: frozenset[str]) -> str:
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.(block\..+)\.(\w+)", key)
    if not m:
        return _stem_head_key(key, keys)
    s, j, module, leaf = m.groups()
    table = _EFF_EXPAND if f"features.{s}.{j}.block.3.0.weight" in keys else _EFF_DS
    return f"blocks.{int(s) - 1}.{j}.{table[module]}.{leaf}"


def _mobilenet_v2_key(key: str, keys: frozenset[str]) -> str:
    m = re.fullmatch(r"features\.(\d+)\.(conv\..+)\.(\w+)", key)
    if not m:
        return _stem_head_key(key, keys)
    i, module, leaf = m.groups()
    table = _MBV2_EXPAND if f"features.{i}.conv.3.weight" in keys else _MBV2_DS
    s, j = _MBV2_BLOCKS[int(i) - 1]
    return f"blocks.{s}.{j}.{table[module]}.{leaf}"


def _family(arch: str):
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        return _resnet_key
    if arch.startswith("convnext"):
        return _convnext_key
    return _mobilenet_v2_key if arch == "mobilenet_v2" else _efficientnet_key


# ----------------------------------------------------------------------------------------------------------------
# public API


def timm_arch(name: str) -> str:
    """The cnnjax architecture of timm model ``name`` (``resnet50``, ``resnet50.a1_in1k``, ``timm/resnet50``).

    Raises ``ValueError`` naming the supported models, and the reason when ``name`` is deliberately excluded.
    """
    base = name.removeprefix("timm/").split(".", 1)[0]
    if base in TIMM_NAMES:
        return TIMM_NAMES[base]
    why = next((f" ({reason})" for pattern, reason in TIMM_EXCLUDED.items() if re.fullmatch(pattern, base)), "")
    raise ValueError(f"no cnnjax architecture matches timm model {name!r} exactly{why}; supported: "
                     f"{', '.join(TIMM_NAMES)}")


@functools.lru_cache(maxsize=32)
def _timm_keys(arch: str) -> tuple[tuple[str, str], ...]:
    keys = frozenset(torchvision_keys(arch).values())
    rename = _family(arch)
    pairs = []
    for key in sorted(keys):
        try:
            pairs.append((key, rename(key, keys)))
        except (AttributeError, KeyError, ValueError, IndexError) as err:
            raise WeightConversionError(f"{arch}: no timm name for torchvision key {key!r}") from err
    return tuple(pairs)


def timm_keys(name: str) -> dict[str, str]:
    """``{torchvision key: timm key}`` for every tensor of timm model ``name`` (``num_batches_tracked`` aside),
    e.g. ``'features.1.0.block.0.0.weight' -> 'blocks.0.0.conv_dw.weight'`` for ``efficientnet_b0``."""
    return dict(_timm_keys(timm_arch(name)))


def _timm_plan(name: str, state_dict: Mapping[str, Any], drop_head: bool) -> tuple[dict, list]:
    """Rename ``state_dict``'s timm keys to torchvision's and check it against ``timm_arch(name)`` (the
    torchvision ``_plan``, reporting timm keys)."""
    arch = timm_arch(name)
    to_timm = dict(_timm_keys(arch))
    to_tv = {v: k for k, v in to_timm.items()}
    strip = bool(state_dict) and all(k.startswith("module.") for k in state_dict)
    renamed: dict[str, Any] = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if strip else key
        if key.endswith(".num_batches_tracked"):
            continue
        tv_key = to_tv.get(key, key)
        if tv_key in renamed:
            raise WeightConversionError(f"{name}: timm keys {key!r} and {to_timm.get(tv_key, tv_key)!r} both "
                                        f"map to torchvision key {tv_key!r}")
        renamed[tv_key] = value
    return _plan(arch, renamed, drop_head, source="timm", shown=lambda k: to_timm.get(k, k))


def check_timm(name: str, state_dict: Mapping[str, Any], *, drop_head: bool = False) -> None:
    """Check, without converting anything, that ``state_dict`` converts (values need only ``.shape``: torch
    tensors on the ``meta`` device work). Raises like :func:`from_timm`."""
    _timm_plan(name, state_dict, drop_head)


def from_timm(name: str, state_dict: Mapping[str, Any], *, drop_head: bool = False) -> dict[str, dict]:
    """Convert the ``state_dict`` of timm model ``name`` to cnnjax ``{'params': ..., 'batch_stats': ...}``.

    The result fits ``cnnjax.models.create(timm_arch(name), num_classes=C)`` (C: the state dict's classifier
    size) and gives timm's eval-mode logits: ``model.apply(variables, x, train=False)`` with ``x`` (N, H, W, 3)
    the NHWC transpose of timm's NCHW input (parity-tested at random init). Values may be torch tensors or NumPy
    arrays; the result holds float32 NumPy copies. A ``module.`` prefix on every key is stripped and
    ``num_batches_tracked`` is ignored. ``drop_head=True`` leaves out the classifier (as
    :func:`~cnnjax.weights.from_torchvision`).

    Raises ``ValueError`` for a timm model outside :data:`TIMM_NAMES` (listing them, and why a known timm model
    is excluded: see the module docstring) and :class:`WeightConversionError` listing, by timm key, unused
    keys, cnnjax leaves with no key, and shape mismatches.
    """
    return convert_planned(*_timm_plan(name, state_dict, drop_head))
