"""Models by name: ``create('resnet50', num_classes=10)``, ``names()``, and one :class:`ArchRecord` per
architecture (timm's ``default_cfgs`` style): ``record('resnet50')``, ``records()``.

Each model file registers its variants next to their ``functools.partial`` with :func:`register`, which stores an
:class:`ArchRecord`: the factory, the default input side, and, for the architectures torchvision also has, the
cnnjax -> torchvision module-name map (``torchvision_map``), the classifier modules (``head_modules``) and the
torchvision weights the architecture can load (one :class:`WeightsRecord` per member of torchvision's weight
enum, e.g. ``IMAGENET1K_V1`` and ``IMAGENET1K_V2``, one of them its ``DEFAULT``: URL, SHA-256 prefix, eval
transform, categories, published accuracy, parameter count). The records are pure data (no torch, no
download); :mod:`cnnjax.weights` derives its architecture list, URL table, module maps and eval transforms from
them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn

#: A module path in a parameter tree, e.g. ``('stage1_block0', 'conv1')``.
ModulePath = tuple[str, ...]

#: ``(module path, all module paths of the tree) -> torchvision module name`` (the state-dict key without its
#: last component). It raises ``KeyError`` / ``ValueError`` / ``AttributeError`` / ``TypeError`` for a path it
#: does not know.
TorchvisionMap = Callable[[ModulePath, frozenset[ModulePath]], str]

_IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
_IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """torchvision's evaluation transform of a set of weights (``weights.transforms()``): resize the shorter side
    to ``resize`` with ``interpolation`` (antialiased), centre-crop ``crop``, normalise with ``mean``/``std``."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: torchvision's ``Weights.DEFAULT`` (the best weights of an architecture), accepted wherever an enum name is.
DEFAULT = "DEFAULT"


@dataclasses.dataclass(frozen=True)
class WeightsRecord:
    """One set of pretrained torchvision weights of an architecture (torchvision's ``Weights`` enum member).

    ``name``: the enum member (``'IMAGENET1K_V1'``, ``'IMAGENET1K_V2'``, ...); ``url``: the checkpoint (its file
    name, unique per enum, is also the cache file's); ``sha256_prefix``: the hex digits after the last ``-`` of
    its file name (torch.hub checks the download against them); ``transform``: the eval transform;
    ``categories``: the label set (``'imagenet-1k'``: the 1000 ImageNet classes; None: weights without a usable
    classifier, such as VGG-16's ``IMAGENET1K_FEATURES``); ``top1`` / ``top5``: torchvision's published accuracy
    (%) on it (None where torchvision publishes none); ``num_params``: the parameter count (for GoogLeNet without
    the auxiliary heads); ``default``: whether this is torchvision's ``DEFAULT`` for the architecture.
    """

    name: str
    url: str
    sha256_prefix: str
    transform: EvalTransform
    top1: float | None
    top5: float | None
    num_params: int
    categories: str | None = "imagenet-1k"
    default: bool = False

    def __post_init__(self):
        stem = self.url.rsplit("/", 1)[-1].split(".")[0]
        if not re.fullmatch(r"[0-9a-f]{6,64}", self.sha256_prefix) or not stem.endswith(f"-{self.sha256_prefix}"):
            raise ValueError(f"sha256_prefix {self.sha256_prefix!r} is not the hash in the file name of {self.url}")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", self.name) or self.name == DEFAULT:
            raise ValueError(f"weights name {self.name!r} is not a torchvision enum member name")
        if self.categories not in _NUM_CATEGORIES:
            raise ValueError(f"categories {self.categories!r}: expected one of {list(_NUM_CATEGORIES)}")

    @property
    def num_categories(self) -> int:
        """Classifier outputs the weights were trained for (1000 for ``imagenet-1k``; 0 without categories)."""
        return _NUM_CATEGORIES[self.categories]


_NUM_CATEGORIES: dict[str | None, int] = {"imagenet-1k": 1000, None: 0}


def torchvision_weights(name: str, filename: str, top1: float | None, top5: float | None, num_params: int,
                        resize: int = 256, crop: int = 224, interpolation: str = "bilinear",
                        mean: tuple[float, float, float] = _IMAGENET_MEAN,
                        std: tuple[float, float, float] = _IMAGENET_STD, *, categories: str | None = "imagenet-1k",
                        default: bool = False) -> WeightsRecord:
    """torchvision's ``name`` weights stored as ``download.pytorch.org/models/<filename>`` (the hash prefix is
    read from the file name), with that eval transform (default 256/224 bilinear, ImageNet mean/std)."""
    prefix = filename.split(".")[0].rsplit("-", 1)[-1]
    return WeightsRecord(name, TORCHVISION_URL + filename, prefix,
                         EvalTransform(resize, crop, interpolation, tuple(mean), tuple(std)), top1, top5, num_params,
                         categories, default)


def imagenet1k_v1(filename: str, top1: float, top5: float, num_params: int, resize: int = 256, crop: int = 224,
                  interpolation: str = "bilinear", mean: tuple[float, float, float] = _IMAGENET_MEAN,
                  std: tuple[float, float, float] = _IMAGENET_STD, *, default: bool = True) -> WeightsRecord:
    """:func:`torchvision_weights` ``IMAGENET1K_V1``: torchvision's ``DEFAULT`` unless ``default=False`` (the
    architectures that also have newer weights)."""
    return torchvision_weights("IMAGENET1K_V1", filename, top1, top5, num_params, resize, crop, interpolation, mean,
                               std, default=default)


def imagenet1k_v2(filename: str, top1: float, top5: float, num_params: int, resize: int = 232, crop: int = 224,
                  interpolation: str = "bilinear") -> WeightsRecord:
    """:func:`torchvision_weights` ``IMAGENET1K_V2``: the "new training recipe" weights, torchvision's
    ``DEFAULT`` wherever they exist (eval transform default 232/224 bilinear, ImageNet mean/std)."""
    return torchvision_weights("IMAGENET1K_V2", filename, top1, top5, num_params, resize, crop, interpolation,
                               default=True)


def v1_and_v2(v1: Sequence, v2: Sequence | None = None) -> tuple[WeightsRecord, ...]:
    """An architecture's weights: ``IMAGENET1K_V1`` from ``v1`` (the arguments of :func:`imagenet1k_v1`) and, when
    ``v2`` is given, ``IMAGENET1K_V2`` from ``v2`` = ``(filename, top1, top5[, resize, crop, interpolation])``
    with V1's parameter count; V2 is then the ``DEFAULT``."""
    if v2 is None:
        return (imagenet1k_v1(*v1),)
    filename, top1, top5, *transform = v2
    return imagenet1k_v1(*v1, default=False), imagenet1k_v2(filename, top1, top5, v1[3], *transform)


@dataclasses.dataclass(frozen=True)
class ArchRecord:
    """Everything the library knows about one architecture.

    ``factory``: the module class or a ``functools.partial`` of it (what :func:`create` calls); ``input_size``:
    the default square input side (224 for the ImageNet models, 32 for LeNet, the MLPs and the CIFAR ResNets);
    ``torchvision_map``: the cnnjax -> torchvision module-name map (None: no torchvision counterpart);
    ``head_modules``: the classifier modules replaced when fine-tuning on another label set (``head``, and
    GoogLeNet's auxiliary ``fc2``); ``weights``: the torchvision weights it can load.

    ``zero_init_residual``: whether the architecture, trained from scratch, should start with the last BN scale
    of each residual block at zero (the factory's ``zero_init_last_bn``; what ``python -m train.main
    --zero-init-residual auto`` does); set by each model file's :func:`register` call. A zero-initialised
    network starts as its shortcut path, and a branch opens only through the gradient reaching its zero scale.
    True for the ImageNet ResNets (Goyal et al. 2017, torchvision's ``zero_init_residual``): their shortcut
    path (7x7 stem, projections) gives that gradient (norm 1.1 for resnet18 on a digits batch) and it is what
    keeps deep ResNet-50 training stable (``BENCHMARKS.md``). False for the CIFAR ResNets, measured on the
    digits (4 epochs, val top-1 zero-initialised vs not: resnet20 0.153 vs 0.964, at ``--lr 0.1`` 0.240 vs
    0.983): their shortcut path is one 16-channel 3x3 conv averaged over 8x8 positions, nearly the same vector
    for every image, so the zero scales get a gradient 50x smaller (0.021) and the branches barely open; with
    their option-A shortcuts (zero-padded channels) the padded channels never train at all (ReLU(0 + 0) has
    gradient 0: 16 of 32 channels in stage 2 and 48 of 64 in stage 3 stay exactly 0). Details and commands:
    :mod:`cnnjax.models.cifar_resnet`. Never for a network without shortcuts (``_plain``): a zero last BN
    makes every block output exactly 0 (the models refuse it).
    """

    name: str
    factory: Callable[..., nn.Module]
    input_size: int = 224
    torchvision_map: TorchvisionMap | None = None
    head_modules: tuple[ModulePath, ...] = (("head",),)
    weights: tuple[WeightsRecord, ...] = ()
    zero_init_residual: bool = False

    def __post_init__(self):
        if self.weights and self.torchvision_map is None:
            raise ValueError(f"{self.name}: torchvision weights need a torchvision_map")
        if self.zero_init_residual and "zero_init_last_bn" not in _fields(self.factory):
            raise ValueError(f"{self.name}: zero_init_residual needs a factory with a zero_init_last_bn option")
        names = [w.name for w in self.weights]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: weights names repeat: {names}")
        if self.weights and sum(w.default for w in self.weights) != 1:
            raise ValueError(f"{self.name}: exactly one of its weights must be torchvision's DEFAULT, got "
                             f"{[w.name for w in self.weights if w.default]}")

    def weights_names(self) -> list[str]:
        """The names :meth:`weights_for` accepts: each record's enum name, then ``DEFAULT`` (none without
        weights)."""
        return [w.name for w in self.weights] + ([DEFAULT] if self.weights else [])

    def weights_for(self, name: str = "IMAGENET1K_V1") -> WeightsRecord:
        """The :class:`WeightsRecord` called ``name``, ``DEFAULT`` being torchvision's best (``KeyError`` naming
        the valid names if the architecture has no such weights)."""
        for w in self.weights:
            if w.name == name or (name == DEFAULT and w.default):
                return w
        default = next((f" (DEFAULT = {w.name})" for w in self.weights if w.default), "")
        raise KeyError(f"{self.name} has no torchvision weights {name!r}; valid: "
                       f"{', '.join(self.weights_names()) or 'none'}{default}")


_REGISTRY: dict[str, ArchRecord] = {}


def register(name: str, factory: Callable[..., nn.Module], *, input_size: int = 224,
             torchvision_map: TorchvisionMap | None = None, head_modules: tuple[ModulePath, ...] = (("head",),),
             weights: tuple[WeightsRecord, ...] = (), zero_init_residual: bool = False) -> Callable[..., nn.Module]:
    """Add ``factory`` (a module class or a ``functools.partial`` of one) under ``name``, with the rest of its
    :class:`ArchRecord`; returns ``factory``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ArchRecord(name, factory, input_size, torchvision_map, tuple(head_modules), tuple(weights),
                                 zero_init_residual)
    return factory


def names() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_REGISTRY)


def record(name: str) -> ArchRecord:
    """The :class:`ArchRecord` of ``name`` (``ValueError`` naming the valid choices if there is none)."""
    if name not in _REGISTRY:
        raise ValueError(unknown_name_message(name))
    return _REGISTRY[name]


def records() -> list[ArchRecord]:
    """Every :class:`ArchRecord`, in the order of :func:`names`."""
    return [_REGISTRY[n] for n in names()]


def _module_class(factory: Callable[..., nn.Module]) -> type:
    while hasattr(factory, "func"):
        factory = factory.func  # type: ignore[attr-defined]
    return factory  # type: ignore[return-value]


def _fields(factory: Callable[..., nn.Module]) -> set[str]:
    return {f.name for f in dataclasses.fields(_module_class(factory))} - {"parent", "name"}


def unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown architecture {name!r}{hint}; valid choices: {', '.join(names())}"


def options(name: str) -> set[str]:
    """The fields ``create(name, ...)`` accepts as overrides."""
    return _fields(record(name).factory)


def parse_option(item: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` (a ``--model-opt`` item) -> ``(KEY, value)``: VALUE through :func:`ast.literal_eval`
    (``0.2``, ``True``, ``(64, 32)``, ``'relu'``); a VALUE that is not a Python literal is the string itself
    (``act=gelu``); a list becomes a tuple; ``true`` / ``false`` in any case are the booleans (a shell user's
    ``aux_logits=false`` must not become the truthy string ``'false'``). ``ValueError`` unless KEY is an
    identifier (``-`` reads as ``_``)."""
    import ast

    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise ValueError(f"--model-opt {item!r}: expected KEY=VALUE, e.g. --model-opt dropout=0.2")
    text = text.strip()
    if text.lower() in ("true", "false"):
        return key, text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(value, list):
        value = tuple(value)
    return key, value


def create(name: str, num_classes: int | None = None, **overrides) -> nn.Module:
    """Build the architecture ``name`` with ``num_classes`` outputs (default: the architecture's own, 1000 for
    the ImageNet models, 10 for LeNet and the CIFAR ResNets); ``overrides`` set any other field
    (``in_channels``, ``dtype``, ``param_dtype``, ``conv_impl``, family options such as ``skip``)."""
    factory, fields = record(name).factory, options(name)
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"{name} has no option(s) {', '.join(bad)}; valid options: {', '.join(sorted(fields))}")
    for key in ("act", "scale_act"):  # a name (``--model-opt act=tanh``) is checked now, not at the first call
        if isinstance(overrides.get(key), str):
            from cnnjax.nn.activations import activation

            activation(overrides[key])
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return factory(**overrides)
