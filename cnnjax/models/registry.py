"""Models by name: ``create('resnet50', num_classes=10)`` and ``names()``."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add ``factory`` (a module class or a ``functools.partial`` of one) under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory


def names() -> list[str]:
    """All registered architecture names, sorted."""
    return sorted(_REGISTRY)


def _module_class(factory: Callable[..., nn.Module]) -> type:
    while hasattr(factory, "func"):
        factory = factory.func  # type: ignore[attr-defined]
    return factory  # type: ignore[return-value]


def unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, names(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown architecture {name!r}{hint}; valid choices: {', '.join(names())}"


def options(name: str) -> set[str]:
    """The fields ``create(name, ...)`` accepts as overrides."""
    if name not in _REGISTRY:
        raise ValueError(unknown_name_message(name))
    return {f.name for f in dataclasses.fields(_module_class(_REGISTRY[name]))} - {"parent", "name"}


def create(name: str, num_classes: int | None = None, **overrides) -> nn.Module:
    """Build the architecture ``name`` with ``num_classes`` outputs (default: the architecture's own, 1000 for
    the ImageNet models, 10 for LeNet and the CIFAR ResNets); ``overrides`` set any other field
    (``in_channels``, ``dtype``, ``param_dtype``, ``conv_impl``, family options such as ``skip``)."""
    if name not in _REGISTRY:
        raise ValueError(unknown_name_message(name))
    factory, fields = _REGISTRY[name], options(name)
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"{name} has no option(s) {', '.join(bad)}; valid options: {', '.join(sorted(fields))}")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return factory(**overrides)
