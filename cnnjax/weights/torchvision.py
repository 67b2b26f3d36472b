"""torchvision ``state_dict`` <-> cnnjax ``variables``, for every zoo architecture torchvision also has.

Layouts (torchvision -> cnnjax):

* ``Conv2d.weight`` (O, I/groups, kh, kw)    -> ``params/.../kernel`` (kh, kw, I/groups, O)   (OIHW -> HWIO)
* ``Linear.weight`` (out, in)                 -> ``params/.../kernel`` (in, out)
* ``*.bias`` (C,)                             -> ``params/.../bias`` (C,)
* ``BatchNorm2d`` / ``LayerNorm(2d)`` ``.weight`` (C,) -> ``params/.../scale`` (C,)
* ``BatchNorm2d.running_mean`` / ``running_var`` -> ``batch_stats/.../mean`` / ``var``; ``num_batches_tracked``
  is dropped (and written back as 0 by :func:`to_torchvision`)
* ConvNeXt ``features.{f}.{j}.layer_scale`` (C, 1, 1) -> ``params/stage{s}_block{j}/layer_scale`` (C,)

AlexNet, VGG and GoogLeNet's auxiliary heads flatten in PyTorch's (C, H, W) order inside the model, so no linear
weight needs a permutation. The module-name correspondence is in each model file (its docstring, and its
``torchvision_name`` function, the ``torchvision_map`` of the architecture's :class:`~cnnjax.models.ArchRecord`,
which :func:`module_map` applies); it is written in the cnnjax -> torchvision direction, so one table serves both
ways. :data:`TORCHVISION_ARCHS` and :func:`head_modules` are read from the same records.

Conversion is strict: every torchvision key (except ``num_batches_tracked``) must be used, every leaf of the
model's own abstract parameter tree (``jax.eval_shape(model.init, ...)``) must be filled, and shapes must match;
otherwise :class:`WeightConversionError` lists what did not match on both sides. NumPy only: ``state_dict``
values may be torch tensors or NumPy arrays, and torch is never imported here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from cnnjax import models

# (collection, cnnjax leaf) <-> torchvision leaf
_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "layer_scale"): "layer_scale",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

Path = tuple[str, ...]


class WeightConversionError(ValueError):
    """A state dict and a cnnjax parameter tree do not correspond (missing, unused or mis-shaped entries)."""


def _torchvision_archs() -> tuple[str, ...]:
    return tuple(r.name for r in models.records() if r.torchvision_map is not None)


#: Zoo architectures with a torchvision counterpart of the same name: those whose
#: :class:`~cnnjax.models.ArchRecord` has a ``torchvision_map`` (in the order of ``cnnjax.models.names()``).
TORCHVISION_ARCHS: tuple[str, ...] = _torchvision_archs()


def parse_init(init: str) -> tuple[str, str]:
    """``'torchvision:ARCH[.WEIGHTS]'`` -> ``(ARCH, WEIGHTS)``; WEIGHTS (a torchvision enum name such as
    ``IMAGENET1K_V2``, or ``DEFAULT``) is ``IMAGENET1K_V1`` when left out. ``ValueError`` for another prefix."""
    if not init.startswith("torchvision:"):
        raise ValueError(f"--init {init}: not torchvision:ARCH[.WEIGHTS]")
    arch, _, name = init.split(":", 1)[1].partition(".")
    return arch, name or "IMAGENET1K_V1"


def torchvision_init(init: str | None, arch: str) -> models.WeightsRecord | None:
    """The :class:`~cnnjax.models.WeightsRecord` that ``--init torchvision:ARCH[.WEIGHTS]`` names (bare
    ``torchvision:ARCH``: ``IMAGENET1K_V1``; ``.DEFAULT``: torchvision's best, e.g. ``IMAGENET1K_V2`` for
    resnet50), or None for any other ``--init`` (a cnnjax run directory or checkpoint). ``ValueError`` when ARCH
    is not ``--arch``, has no torchvision counterpart, or has no such weights (the message lists the valid
    ones)."""
    if init is None or not init.startswith("torchvision:"):
        return None
    source, name = parse_init(init)
    if source != arch:
        raise ValueError(f"--init {init}: the weights are for {source} but --arch is {arch}")
    return weights_record(arch, name, flag=f"--init {init}")


def torchvision_arch(init: str, arch: str) -> str | None:
    """ARCH of ``--init torchvision:ARCH[.WEIGHTS]`` (checked as :func:`torchvision_init` does), or None for any
    other ``--init`` (a cnnjax run directory or checkpoint)."""
    return None if torchvision_init(init, arch) is None else arch


def check_classifier(init: str, record: models.WeightsRecord, num_classes: int | None = None) -> None:
    """``ValueError`` unless the torchvision weights ``record`` (of ``--init init``) can classify: they have
    categories and, when ``num_classes`` is given, that many."""
    if record.categories is None:
        raise ValueError(f"--init {init}: these weights have no usable classifier (torchvision publishes them for "
                         "feature extraction only); fine-tune them with train.main, or choose other weights")
    if num_classes is not None and num_classes != record.num_categories:
        raise ValueError(f"--init {init} has torchvision's {record.num_categories} ImageNet classes but "
                         f"the dataset has {num_classes}; evaluate on ImageNet (tfds:imagenet2012 or folder:) or "
                         "fine-tune with train.main")


def init_string(arch: str, record: models.WeightsRecord) -> str:
    """The canonical ``torchvision:ARCH.WEIGHTS`` of a record (``DEFAULT`` resolved)."""
    return f"torchvision:{arch}.{record.name}"


def check_arch(arch: str) -> None:
    """Raise ``ValueError`` unless ``arch`` has a torchvision counterpart (:data:`TORCHVISION_ARCHS`, or an
    architecture registered later with a ``torchvision_map``)."""
    supported = _torchvision_archs()
    if arch not in supported:
        raise ValueError(f"no torchvision weight mapping for architecture {arch!r}; supported: {', '.join(supported)}")


def module_map(arch: str, modules: Iterable[Path]) -> dict[Path, str]:
    """torchvision module name (state-dict key without its last component) of each cnnjax module path.

    ``modules`` are the module paths (leaf path minus collection and leaf name, e.g. ``('stage1_block0',
    'conv1')``) of a parameter tree of ``arch``; the whole set is needed because some names depend on siblings
    (e.g. whether an inverted-residual block has an ``expand`` conv shifts torchvision's indices).
    """
    check_arch(arch)
    modules = frozenset(modules)
    fn = models.record(arch).torchvision_map
    out = {}
    for path in modules:
        try:
            out[path] = fn(path, modules)
        except (AttributeError, KeyError, ValueError, TypeError) as err:
            raise WeightConversionError(f"{arch}: no torchvision name for cnnjax module {'/'.join(path)!r}") from err
    return out


def head_modules(arch: str) -> tuple[Path, ...]:
    """The classifier modules replaced when fine-tuning on another label set: ``head`` (and GoogLeNet's
    auxiliary classifiers' ``fc2``), from ``arch``'s :class:`~cnnjax.models.ArchRecord` (``(('head',),)`` for
    a name that is not registered)."""
    return models.record(arch).head_modules if arch in models.names() else (("head",),)


def weights_record(arch: str, name: str = "IMAGENET1K_V1", *, flag: str | None = None) -> models.WeightsRecord:
    """The :class:`~cnnjax.models.WeightsRecord` ``name`` of ``arch`` (``DEFAULT``: torchvision's best).
    ``ValueError`` for an architecture without a torchvision counterpart or without such weights (naming the
    valid ones; prefixed with ``flag``, e.g. ``'--init torchvision:resnet50.V9'``, when given)."""
    check_arch(arch)
    try:
        return models.record(arch).weights_for(name)
    except KeyError as err:
        raise ValueError(f"{flag}: {err.args[0]}" if flag else err.args[0]) from None


# ----------------------------------------------------------------------------------------------------------------
# abstract parameter trees


@functools.lru_cache(maxsize=16)
def _abstract(arch: str, num_classes: int, aux_logits: bool | None) -> dict[tuple[str, ...], Any]:
    """``{(collection, *module_path, leaf): ShapeDtypeStruct}`` of ``create(arch, num_classes)`` (abstract)."""
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict

    kw = {} if aux_logits is None else {"aux_logits": aux_logits}
    model = models.create(arch, num_classes=num_classes, **kw)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    size = models.record(arch).input_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(rngs, x, False), x)
    return flatten_dict(dict(tree))


def abstract_variables(arch: str, num_classes: int = 1000, aux_logits: bool | None = None) -> dict:
    """Flattened abstract variables ``{(collection, *path, leaf): jax.ShapeDtypeStruct}`` of
    ``cnnjax.models.create(arch, num_classes, [aux_logits])``; traced once per argument tuple (cached)."""
    check_arch(arch)
    return dict(_abstract(arch, num_classes, aux_logits))


def torchvision_keys(arch: str) -> dict[tuple[str, ...], str]:
    """``{(collection, *module_path, leaf): torchvision state-dict key}`` for every leaf of ``arch`` (1000 classes;
    GoogLeNet without auxiliary heads), e.g. ``('params', 'stem_conv', 'kernel'): 'features.0.0.weight'``."""
    abstract = abstract_variables(arch)
    names = module_map(arch, {k[1:-1] for k in abstract})
    return {k: f"{names[k[1:-1]]}.{_LEAF[(k[0], k[-1])]}" for k in abstract}


# ----------------------------------------------------------------------------------------------------------------
# conversion


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device; bf16/fp16 upcast) or array-like -> NumPy array (possibly a view)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                              r"running_var))$")


def _normalize_keys(arch: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip a ``module.`` (DataParallel) prefix and rename old DenseNet keys (``norm.1`` -> ``norm1``), as
    torchvision's own loader does."""
    strip = bool(state_dict) and all(k.startswith("module.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if strip else key
        if arch.startswith("densenet"):
            m = _LEGACY_DENSENET.match(key)
            if m:
                key = m[1] + m[2]
        out[key] = value
    return out


def _to_cnnjax_layout(leaf: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    if leaf == "layer_scale" and array.size == int(np.prod(shape)):
        return array.reshape(shape)
    return array


def _cnnjax_shape(leaf: str, torch_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape :func:`_to_cnnjax_layout` gives a torchvision array of ``torch_shape``."""
    if leaf == "kernel" and len(torch_shape) == 4:
        return tuple(torch_shape[i] for i in (2, 3, 1, 0))
    if leaf == "kernel" and len(torch_shape) == 2:
        return tuple(reversed(torch_shape))
    if leaf == "layer_scale" and int(np.prod(torch_shape)) == int(np.prod(shape)):
        return shape
    return torch_shape


def _to_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    if leaf == "layer_scale":
        return array.reshape(-1, 1, 1)
    return array


def _fmt(items: list[str], limit: int = 25) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n    {shown}{more}"


def _report(arch: str, direction: str, missing: list[str], unused: list[str], mismatched: list[str],
            source: str = "torchvision") -> None:
    if not (missing or unused or mismatched):
        return
    parts = [f"{arch}: {direction} does not match"]
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es) (cnnjax path [{source} key]: expected vs got):"
                     + _fmt(mismatched))
    if missing:
        parts.append(f"{len(missing)} cnnjax leaf/leaves with no {source} key:" + _fmt(missing))
    if unused:
        parts.append(f"{len(unused)} {source} key(s) not used by the cnnjax model:" + _fmt(unused))
    raise WeightConversionError("\n".join(parts))


def _head_key(arch: str, modules: Iterable[Path]) -> str:
    return module_map(arch, modules)[("head",)] + ".weight"


def _plan(arch: str, state_dict: Mapping[str, Any], drop_head: bool, *, source: str = "torchvision",
          shown: Callable[[str], str] = str) -> tuple[dict, list]:
    """Match ``state_dict`` (values need only ``.shape``) against the abstract tree of ``arch``; raise
    :class:`WeightConversionError` on any discrepancy, else return ``(state_dict with normalized keys,
    [(cnnjax key, torchvision key, cnnjax shape)])``. Errors name keys as ``shown(torchvision key)`` and the
    state dict's origin as ``source`` (:func:`cnnjax.weights.from_timm` passes timm's names)."""
    check_arch(arch)
    sd = _normalize_keys(arch, state_dict)
    aux = any(k.startswith("aux1.") for k in sd) if arch == "googlenet" else None
    abstract = abstract_variables(arch, 1000, aux)
    modules = {k[1:-1] for k in abstract}
    head = sd.get(_head_key(arch, modules))
    if not drop_head and head is not None and len(head.shape) == 2 and head.shape[0] != 1000:
        abstract = abstract_variables(arch, int(head.shape[0]), aux)
    names = module_map(arch, modules)
    dropped = set(head_modules(arch)) if drop_head else set()

    plan, used, missing, mismatched = [], set(), [], []
    for key, spec in abstract.items():
        coll, path, leaf = key[0], key[1:-1], key[-1]
        tkey = f"{names[path]}.{_LEAF[(coll, leaf)]}"
        shape = tuple(spec.shape)
        if tkey in sd:
            used.add(tkey)
        if path in dropped:
            continue
        if tkey not in sd:
            missing.append(f"{'/'.join(key)} {shape} [expects {shown(tkey)}]")
            continue
        torch_shape = tuple(sd[tkey].shape)
        if _cnnjax_shape(leaf, torch_shape, shape) != shape:
            mismatched.append(f"{'/'.join(key)} [{shown(tkey)}]: {shape} vs "
                              f"{_cnnjax_shape(leaf, torch_shape, shape)} ({source} shape {torch_shape})")
            continue
        plan.append((key, tkey, shape))
    unused = sorted(shown(k) for k in sd if k not in used and not k.endswith(".num_batches_tracked"))
    _report(arch, f"{source} state_dict -> cnnjax variables", missing, unused, mismatched, source)
    return sd, plan


def check_torchvision(arch: str, state_dict: Mapping[str, Any], *, drop_head: bool = False) -> None:
    """Check, without converting or copying anything, that ``state_dict`` converts to ``arch``: every key is
    used and every cnnjax leaf is filled with the right shape. Values need only a ``.shape`` (torch tensors on
    the ``meta`` device work). Raises :class:`WeightConversionError` like :func:`from_torchvision`."""
    _plan(arch, state_dict, drop_head)


def from_torchvision(arch: str, state_dict: Mapping[str, Any], *, drop_head: bool = False) -> dict[str, dict]:
    """Convert a torchvision ``state_dict`` of ``arch`` to cnnjax ``{'params': ..., 'batch_stats': ...}``.

    ``state_dict`` values may be torch tensors (any device/dtype) or NumPy arrays. The result holds fresh NumPy
    float32 arrays (copies, never views of torch memory) in cnnjax layouts (see the module docstring) and fits
    ``cnnjax.models.create(arch, num_classes=C)`` where C is the state dict's classifier size (1000 for the
    ImageNet weights). For ``googlenet`` the auxiliary heads are converted when the state dict has them
    (``aux1.*``/``aux2.*``; use ``create('googlenet', aux_logits=True)``), otherwise the result fits
    ``create('googlenet', aux_logits=False)``. A ``module.`` prefix on every key (``DataParallel``) and old
    DenseNet key spellings (``norm.1``) are accepted.

    ``drop_head=True`` leaves out the classifier (:func:`head_modules`: ``params['head']``, and GoogLeNet's
    ``aux{1,2}/fc2``); their torchvision keys are consumed without a shape check, so the caller can
    re-initialise the head for another ``num_classes``.

    Raises :class:`WeightConversionError` listing unused torchvision keys, unfilled cnnjax leaves and shape
    mismatches (before converting anything), and ``ValueError`` for an architecture without a torchvision
    counterpart.
    """
    return convert_planned(*_plan(arch, state_dict, drop_head))


def convert_planned(sd: Mapping[str, Any], plan: list) -> dict[str, dict]:
    """Fill ``{'params', 'batch_stats'}`` from a checked plan of :func:`_plan` (float32 copies, cnnjax layouts)."""
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, tkey, shape in plan:
        coll, path, leaf = key[0], key[1:-1], key[-1]
        node = variables[coll]
        for p in path:
            node = node.setdefault(p, {})
        array = _to_cnnjax_layout(leaf, _to_numpy(sd[tkey]), shape)
        node[leaf] = np.array(array, dtype=np.float32, order="C")  # always a copy
    return variables


def to_torchvision(arch: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Convert cnnjax ``{'params': ..., 'batch_stats': ...}`` of ``arch`` to a torchvision ``state_dict`` of
    NumPy arrays (float32, C-contiguous copies; torchvision layouts), with ``num_batches_tracked`` = 0 (int64,
    shape ()) for every BatchNorm. ``torchvision.models.<arch>(num_classes=C).load_state_dict({k:
    torch.from_numpy(v) ...})`` accepts it (for GoogLeNet with ``aux_logits`` matching the tree). Exact inverse of
    :func:`from_torchvision` (bit for bit). The tree must be complete: it is checked against the model's abstract
    tree (:class:`WeightConversionError` otherwise).
    """
    from flax.core import unfreeze
    from flax.traverse_util import flatten_dict

    check_arch(arch)
    flat = flatten_dict(unfreeze(dict(variables)))
    aux = any(k[:2] == ("params", "aux1") for k in flat) if arch == "googlenet" else None
    head = flat.get(("params", "head", "kernel"))
    num_classes = int(head.shape[-1]) if head is not None else 1000
    abstract = abstract_variables(arch, num_classes, aux)
    names = module_map(arch, {k[1:-1] for k in abstract})

    missing = [f"{'/'.join(k)} {tuple(s.shape)} [{names[k[1:-1]]}.{_LEAF[(k[0], k[-1])]}]"
               for k, s in abstract.items() if k not in flat]
    unused = sorted("/".join(k) for k in flat if k not in abstract)
    mismatched = [f"{'/'.join(k)}: {tuple(abstract[k].shape)} vs {tuple(np.shape(v))}"
                  for k, v in flat.items() if k in abstract and tuple(np.shape(v)) != tuple(abstract[k].shape)]
    _report(arch, "cnnjax variables -> torchvision state_dict", missing, unused, mismatched)

    out: dict[str, np.ndarray] = {}
    for key in abstract:
        coll, path, leaf = key[0], key[1:-1], key[-1]
        array = _to_torch_layout(leaf, np.asarray(flat[key], dtype=np.float32))
        out[f"{names[path]}.{_LEAF[(coll, leaf)]}"] = np.array(array, dtype=np.float32, order="C")
        if (coll, leaf) == ("batch_stats", "mean"):
            out[f"{names[path]}.num_batches_tracked"] = np.zeros((), np.int64)
    return out
