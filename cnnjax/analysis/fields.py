"""Receptive fields traced from a model's own computation, and checked against input gradients.

:func:`receptive_field` traces ``model.apply(variables, x, False, method='features')`` to a jaxpr (abstractly:
nothing is computed or compiled) and follows the spatial axes of NHWC activations through every primitive:

* ``conv_general_dilated`` and ``reduce_window*`` (pools) grow the field and multiply the jump;
* strided ``slice`` (e.g. the CIFAR ResNet's ``x[:, ::2, ::2]`` shortcut) multiplies the jump, ``pad`` shifts it;
* elementwise ops pass fields through, and where two branches meet (``add`` of a residual, ``concatenate`` of
  Inception/DenseNet branches on channels) the field is the union: the *largest path* decides;
* a reduction over a spatial axis (global average pooling, squeeze-and-excitation) makes the field global.

Geometry, in input pixels (pixel ``i`` has its centre at coordinate ``i``): along each axis, output unit ``u``
of a layer sees input pixels ``[lo + u * jump, hi + u * jump]`` (inclusive; it may reach past the image into
the padding). ``size = hi - lo + 1``, ``start = (lo + hi) / 2`` is the centre of the first unit's field.

:func:`empirical_receptive_field` measures the same extent from the non-zero support of the input gradient of
one unit (re-draw the weights with :func:`randomize_variables` first so no zero-initialised branch hides part
of the field), and :func:`effective_receptive_field` is the gradient-magnitude map of Luo et al. (2016).

:mod:`cnnjax.analysis` re-exports the public names: ``cnnjax.analysis.receptive_field(model, image_size)`` is the
function of this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import core as jcore
from jax.extend import core as jex_core

from cnnjax.ops.tracing import lax_convolutions

INF = math.inf


@dataclasses.dataclass(frozen=True)
class AxisField:
    """The field of the first output unit along one axis: input pixels ``lo..hi`` (inclusive), unit step ``jump``.

    ``lo``/``hi`` are ``-inf``/``inf`` for a global field (after a reduction over this axis).
    """

    lo: float
    hi: float
    jump: float

    @property
    def size(self) -> float:
        return self.hi - self.lo + 1

    @property
    def start(self) -> float:
        return (self.lo + self.hi) / 2 if math.isfinite(self.size) else 0.0

    @property
    def is_global(self) -> bool:
        return not math.isfinite(self.size)

    def union(self, other: AxisField) -> AxisField:
        return AxisField(min(self.lo, other.lo), max(self.hi, other.hi), max(self.jump, other.jump))

    def window(self, kernel: int, stride: int, pad_lo: int, dilation: int = 1) -> AxisField:
        """After a window of ``kernel`` taps (``dilation`` apart), ``stride`` and ``pad_lo`` leading padding."""
        return AxisField(self.lo - pad_lo * self.jump, self.hi + (dilation * (kernel - 1) - pad_lo) * self.jump,
                         self.jump * stride)

    def extent(self, unit: int, length: int) -> tuple[int, int]:
        """Input pixels ``(first, last)`` seen by output unit ``unit``, clipped to an image of ``length`` pixels."""
        if self.is_global:
            return 0, length - 1
        return max(int(self.lo + unit * self.jump), 0), min(int(self.hi + unit * self.jump), length - 1)


GLOBAL = AxisField(-INF, INF, 1)


@dataclasses.dataclass(frozen=True)
class LayerField:
    """Receptive field of the output of one conv/pool layer (or of ``features``), per axis (H, W).

    Attributes:
        name: the layer's module path (e.g. ``stage1_block0/conv1``), or ``features`` for the model's output.
        kind: ``conv``, ``conv_dw`` (depthwise), ``max_pool``, ``avg_pool`` (any summing window), ``subsample``
            (a strided slice, e.g. the end of a BlurPool or a CIFAR ResNet's option-A shortcut) or ``features``.
        out_hw: spatial size (H', W') of this layer's output at the traced image size.
        fields: (H axis, W axis) :class:`AxisField`.
    """

    name: str
    kind: str
    out_hw: tuple[int, int]
    fields: tuple[AxisField, AxisField]

    @property
    def size(self) -> tuple[float, float]:
        """Field side in input pixels (H, W); ``inf`` for a global field."""
        return (self.fields[0].size, self.fields[1].size)

    @property
    def jump(self) -> tuple[float, float]:
        """Cumulative stride (H, W): input pixels between neighbouring output units."""
        return (self.fields[0].jump, self.fields[1].jump)

    @property
    def start(self) -> tuple[float, float]:
        """Centre (H, W) of the first output unit's field, in input pixel coordinates (may be negative)."""
        return (self.fields[0].start, self.fields[1].start)

    def extent(self, unit: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Input pixels ``(row0, row1, col0, col1)`` (inclusive) that output unit ``unit`` sees, clipped."""
        r = self.fields[0].extent(unit[0], image_hw[0])
        c = self.fields[1].extent(unit[1], image_hw[1])
        return (*r, *c)


# ----------------------------------------------------------------------------------------------- jaxpr walker

_Fields = dict[int, AxisField]  # tracked axis -> field


_ALL = -1  # key of a map whose value depends on every input pixel (after a reduction over a spatial axis)


def _union(maps: Sequence[_Fields]) -> _Fields:
    if any(_ALL in m for m in maps):
        return {_ALL: GLOBAL}
    out: _Fields = {}
    for m in maps:
        for a, f in m.items():
            out[a] = out[a].union(f) if a in out else f
    return out


def _axis(m: _Fields, a: int) -> AxisField:
    return GLOBAL if _ALL in m else m[a]


def _name_of(eqn, prefix: str) -> str:
    parts = [p for p in str(eqn.source_info.name_stack).split("/") if p and "." not in p]
    name = "/".join(parts)
    return f"{prefix}/{name}" if prefix and name else (prefix or name)


_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_CUSTOM_CALLS = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
               "argmin", "reduce_precision_sum")


class _Walker:
    """Propagates per-axis fields through a jaxpr; collects one :class:`LayerField` per conv/pool."""

    def __init__(self) -> None:
        self.records: list[tuple[LayerField, Any]] = []

    def walk(self, jaxpr, env: dict, prefix: str = "", top: bool = True) -> None:
        for eqn in jaxpr.eqns:
            ins = [env.get(v) if not isinstance(v, jex_core.Literal) else None for v in eqn.invars]
            if not any(ins):
                continue
            outs = self.rule(eqn, ins, prefix, top)
            for v, m in zip(eqn.outvars, outs):
                if m:
                    env[v] = m

    # one list of field maps (one per outvar) for each primitive
    def rule(self, eqn, ins: list[_Fields | None], prefix: str, top: bool) -> list[_Fields]:
        name = eqn.primitive.name
        p = eqn.params
        out_shapes = [v.aval.shape for v in eqn.outvars]
        tracked = [(v, m) for v, m in zip(eqn.invars, ins) if m]
        sub_call = any(key in p and p[key] is not None for key in _SUBJAXPR_PARAMS)
        if not sub_call and any(_ALL in m for _, m in tracked):
            if name == "conv_general_dilated" or name.startswith("reduce_window"):
                self._record_global(eqn, prefix, top)
            return [{_ALL: GLOBAL} for _ in out_shapes]
        for key in _SUBJAXPR_PARAMS:
            if key in p and p[key] is not None:
                sub = p[key]
                sub_jaxpr = sub.jaxpr if hasattr(sub, "jaxpr") else sub
                sub_env = {v: m for v, m in zip(sub_jaxpr.invars, ins) if m}
                # a custom-derivative wrapper (e.g. max_pool2d's custom JVP) is inlined at the top level: a layer
                # that is its output has a top-level value, the wrapper's output
                inline = top and name in _CUSTOM_CALLS
                first = len(self.records)
                self.walk(sub_jaxpr, sub_env, _name_of(eqn, prefix), top=inline)
                if inline:
                    outer = {v: o for v, o in zip(sub_jaxpr.outvars, eqn.outvars)
                             if not isinstance(v, jex_core.Literal)}
                    self.records[first:] = [(r, outer.get(v)) for r, v in self.records[first:]]
                return [sub_env.get(v, {}) if not isinstance(v, jex_core.Literal) else {}
                        for v in sub_jaxpr.outvars]
        if name == "conv_general_dilated":
            return [self._conv(eqn, ins, prefix, top)]
        if name.startswith("reduce_window"):
            return [self._pool(eqn, ins[0], prefix, top)]
        if name == "slice":
            m = ins[0]
            strides = p["strides"] or (1,) * len(p["start_indices"])
            out = {a: AxisField(f.lo + p["start_indices"][a] * f.jump, f.hi + p["start_indices"][a] * f.jump,
                                f.jump * strides[a]) for a, f in m.items()}
            if len(m) == 2 and any(strides[a] > 1 for a in m):  # subsampling (BlurPool, CIFAR shortcut A)
                self._record(eqn, prefix, "subsample", out, tuple(sorted(m)), top)  # type: ignore[arg-type]
            return [out]
        if name == "pad":
            m = ins[0]
            out = {}
            for a, f in m.items():
                lo, _, interior = p["padding_config"][a]
                if interior:
                    raise NotImplementedError("receptive_field: interior padding of a spatial axis")
                out[a] = f if f.is_global else AxisField(f.lo - lo * f.jump, f.hi - lo * f.jump, f.jump)
            return [out]
        if name == "transpose":
            perm = p["permutation"]
            return [{j: ins[0][perm[j]] for j in range(len(perm)) if perm[j] in ins[0]}]
        if name == "broadcast_in_dim":
            m, dims = ins[0], p["broadcast_dimensions"]
            in_shape = eqn.invars[0].aval.shape
            if any(in_shape[a] == 1 and out_shapes[0][dims[a]] != 1 for a in m):
                return [{_ALL: GLOBAL}]
            return [{dims[a]: f for a, f in m.items()}]
        if name == "reshape":
            return [self._reshape(eqn, ins[0])]
        if name in ("squeeze", "expand_dims"):
            return [self._reshape(eqn, ins[0])]
        if name in _REDUCTIONS:
            m, axes = ins[0], tuple(p["axes"])
            if any(a in axes for a in m):
                return [{_ALL: GLOBAL}]
            return [{a - sum(1 for r in axes if r < a): f for a, f in m.items()}]
        if name == "dot_general":
            return [self._dot(eqn, ins)]
        if name == "concatenate":
            dim = p["dimension"]
            if any(m and dim in m for m in ins):
                raise NotImplementedError("receptive_field: concatenate along a spatial axis")
            return [_union([m for m in ins if m])]
        # elementwise: every tracked operand has the output's rank, each axis equal or broadcast from 1
        if all(len(v.aval.shape) == len(s) and all(d in (1, e) for d, e in zip(v.aval.shape, s))
               for v, _ in tracked for s in out_shapes):
            if any(v.aval.shape[a] == 1 and s[a] != 1 for v, m in tracked for a in m for s in out_shapes):
                return [{_ALL: GLOBAL} for _ in out_shapes]  # one value spread over a spatial axis
            u = _union([m for _, m in tracked])
            return [u for _ in out_shapes]
        raise NotImplementedError(f"receptive_field: no rule for primitive {name!r} on a spatial activation "
                                  f"(operand shapes {[v.aval.shape for v, _ in tracked]}, outputs {out_shapes})")

    def _record(self, eqn, prefix, kind, fields: _Fields, axes: tuple[int, int], top: bool) -> None:
        shape = eqn.outvars[0].aval.shape
        rec = LayerField(_name_of(eqn, prefix) or f"{kind}{len(self.records)}", kind,
                         (shape[axes[0]], shape[axes[1]]), (fields[axes[0]], fields[axes[1]]))
        self.records.append((rec, eqn.outvars[0] if top else None))

    def _record_global(self, eqn, prefix, top) -> None:
        shape = eqn.outvars[0].aval.shape
        kind = "conv" if eqn.primitive.name == "conv_general_dilated" else "pool"
        rec = LayerField(_name_of(eqn, prefix) or f"{kind}{len(self.records)}", kind,
                         (shape[1], shape[2]) if len(shape) == 4 else (1, 1), (GLOBAL, GLOBAL))
        self.records.append((rec, eqn.outvars[0] if top else None))

    def _conv(self, eqn, ins, prefix, top) -> _Fields:
        p = eqn.params
        lhs, rhs = ins[0], ins[1]
        if rhs:
            raise NotImplementedError("receptive_field: a convolution whose kernel depends on the input")
        dn = p["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        if any(d != 1 for d in p["lhs_dilation"]):
            raise NotImplementedError("receptive_field: transposed (input-dilated) convolution")
        kshape = eqn.invars[1].aval.shape
        out: _Fields = {}
        for j in range(len(lhs_spec) - 2):
            a_in, a_out = lhs_spec[2 + j], out_spec[2 + j]
            if a_in not in lhs:
                continue
            f = lhs[a_in]
            out[a_out] = f if f.is_global else f.window(kshape[rhs_spec[2 + j]], p["window_strides"][j],
                                                        p["padding"][j][0], p["rhs_dilation"][j])
        if any(a in lhs for a in (lhs_spec[0], lhs_spec[1])):  # field tracked on batch/feature axes: not spatial
            out.update({a: GLOBAL for a in out})
        groups = p["feature_group_count"]
        kind = "conv_dw" if groups > 1 and groups == eqn.invars[0].aval.shape[lhs_spec[1]] else "conv"
        spatial = (out_spec[2], out_spec[3]) if len(out_spec) == 4 else None
        if spatial and all(a in out for a in spatial):
            self._record(eqn, prefix, kind, out, spatial, top)
        return out

    def _pool(self, eqn, m: _Fields | None, prefix, top) -> _Fields:
        if not m:
            return {}
        p = eqn.params
        if any(d != 1 for d in p["base_dilation"]):
            raise NotImplementedError("receptive_field: base-dilated reduce_window")
        out = {a: f if f.is_global else f.window(p["window_dimensions"][a], p["window_strides"][a],
                                                 p["padding"][a][0], p["window_dilation"][a])
               for a, f in m.items()}
        name = eqn.primitive.name
        if name == "reduce_window":  # generic form: look at the reducer
            prims = {e.primitive.name for e in p["jaxpr"].jaxpr.eqns} if hasattr(p["jaxpr"], "jaxpr") else \
                {e.primitive.name for e in p["jaxpr"].eqns}
            kind = "max_pool" if "max" in prims else "min_pool" if "min" in prims else "avg_pool"
        else:
            kind = {"reduce_window_max": "max_pool", "reduce_window_min": "min_pool"}.get(name, "avg_pool")
        moved = [a for a in m if p["window_dimensions"][a] > 1 or p["window_strides"][a] > 1]
        if len(moved) == 2 or (len(m) == 2 and moved):
            axes = tuple(sorted(m))
            self._record(eqn, prefix, kind, out, axes, top)  # type: ignore[arg-type]
        return out

    def _reshape(self, eqn, m: _Fields) -> _Fields:
        in_shape, out_shape = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
        out = {}
        for a, f in m.items():
            before = math.prod(in_shape[:a])
            match = [b for b in range(len(out_shape))
                     if out_shape[b] == in_shape[a] and math.prod(out_shape[:b]) == before]
            if not match:
                return {_ALL: GLOBAL}
            out[match[0]] = f
        return out

    def _dot(self, eqn, ins) -> _Fields:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lshape, rshape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
        lfree = [a for a in range(len(lshape)) if a not in lc and a not in lb]
        rfree = [a for a in range(len(rshape)) if a not in rc and a not in rb]
        maps = []
        for m, contract, batch, free, offset in ((ins[0], lc, lb, lfree, len(lb)),
                                                  (ins[1], rc, rb, rfree, len(lb) + len(lfree))):
            if not m:
                continue
            if any(a in contract for a in m):
                return {_ALL: GLOBAL}
            maps.append({(list(batch).index(a) if a in batch else offset + free.index(a)): f
                         for a, f in m.items()})
        return _union(maps)


def _abstract_variables(model: nn.Module, image_hw: tuple[int, int], batch: int = 1,
                        method: str | Callable | None = None):
    """Variable shapes (``jax.ShapeDtypeStruct``) of ``model`` when run through ``method`` only."""
    x = jax.ShapeDtypeStruct((batch, *image_hw, getattr(model, "in_channels", 3)), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda x: model.init(rngs, x, False, method=method), x), x


def _trace(model: nn.Module, image_hw: tuple[int, int], method: str | Callable | None, variables=None,
           batch: int = 1):
    def fn(v, x):
        return model.apply(v, x, False, method=method) if method else model.apply(v, x, False)

    with lax_convolutions():  # every layer's conv as one lax conv (same field, named records), whatever its impl
        abstract, x = _abstract_variables(model, image_hw, batch, method)
        variables = abstract if variables is None else variables
        closed = jax.make_jaxpr(fn)(variables, x)
    walker = _Walker()
    jaxpr = closed.jaxpr
    x_var = jaxpr.invars[-1]
    env = {x_var: {1: AxisField(0, 0, 1), 2: AxisField(0, 0, 1)}}
    walker.walk(jaxpr, env)
    out_var = jaxpr.outvars[0]
    if isinstance(out_var, jex_core.Literal) or out_var not in env:
        raise ValueError("receptive_field: the traced output does not depend on the input")
    return closed, walker.records, env[out_var], out_var


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def receptive_field(model: nn.Module, image_size: int | tuple[int, int] = 224,
                    method: str | Callable | None = "features") -> list[LayerField]:
    """Per-layer receptive fields of ``model`` on (1, H, W, in_channels) NHWC inputs, traced from its jaxpr.

    Returns one :class:`LayerField` per conv / pool / strided-subsampling layer in call order, then one named
    ``features`` for the output of ``method`` (default ``model.features``; ``None`` traces ``__call__``). Units:
    input pixels. Where branches merge, the union of their fields is reported (the largest path). Abstract
    trace only.

    Raises:
        NotImplementedError: a primitive on the path whose effect on the spatial axes is unknown.
    """
    hw = _as_hw(image_size)
    _, records, out_fields, out_var = _trace(model, hw, method)
    layers = [r for r, _ in records]
    shape = out_var.aval.shape
    layers.append(_features_record(out_fields, shape))
    return layers


def _features_record(out_fields: _Fields, shape: tuple[int, ...]) -> LayerField:
    if len(shape) == 4 and (_ALL in out_fields or (1 in out_fields and 2 in out_fields)):
        return LayerField("features", "features", (shape[1], shape[2]), (_axis(out_fields, 1), _axis(out_fields, 2)))
    return LayerField("features", "features", (1, 1), (GLOBAL, GLOBAL))


def format_table(layers: Sequence[LayerField], title: str = "") -> str:
    """Aligned text table: index, layer, kind, output H'xW', field size, jump, start (input pixels)."""

    def fmt(v: tuple[float, float]) -> str:
        s = ["global" if not math.isfinite(a) else (f"{a:g}") for a in v]
        return s[0] if s[0] == s[1] else f"{s[0]}x{s[1]}"

    header = ("#", "layer", "kind", "output", "size", "jump", "start")
    body = [(str(i), r.name, r.kind, f"{r.out_hw[0]}x{r.out_hw[1]}", fmt(r.size), fmt(r.jump),
             fmt(r.start) if all(math.isfinite(s) for s in r.size) else "-") for i, r in enumerate(layers)]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    line = "  ".join(f"{{:{'<' if i in (1, 2) else '>'}{w}}}" for i, w in enumerate(widths))
    out = [title] if title else []
    out += [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in body]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ random weights


def randomize_variables(variables: Any, seed: int = 0) -> Any:
    """Re-draw every variable so that no branch is hidden by a zero or constant initialisation.

    ``variables`` may hold arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape(model.init, ...)``,
    which avoids running the initialisers at all). Kernels (ndim >= 2) ~ N(0, 1/fan_in) with
    fan_in = prod(shape[:-1]); vectors named ``scale`` or ``var`` ~ U(0.5, 1.5) (positive, as BatchNorm in eval
    mode needs); every other vector ~ N(0, 0.1^2). Drawn with NumPy on the host (no compilation).
    """
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    new = []
    for path, leaf in leaves:
        last = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = tuple(leaf.shape), leaf.dtype
        if len(shape) >= 2:
            value = rng.standard_normal(shape, np.float32) / np.float32(math.sqrt(max(math.prod(shape[:-1]), 1)))
        elif last in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            value = np.float32(0.1) * rng.standard_normal(shape, np.float32)
        new.append(jnp.asarray(value, dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def random_variables(model: nn.Module, image_size: int | tuple[int, int], seed: int = 0,
                     method: str | Callable | None = None) -> Any:
    """:func:`randomize_variables` of ``model``'s variable shapes at this input size (no initialiser is run).

    With ``method='features'`` only the variables the feature extractor uses are made (no classifier head).
    """
    abstract, _ = _abstract_variables(model, _as_hw(image_size), method=method)
    return randomize_variables(abstract, seed)


# -------------------------------------------------------------------------------------- empirical checks


def _centre(hw: tuple[int, int]) -> tuple[int, int]:
    return ((hw[0] - 1) // 2, (hw[1] - 1) // 2)


def layer_gradients(model: nn.Module, variables: Any, x: jax.Array, method: str | Callable | None = "features",
                    layers: Sequence[int] | None = None, units: Sequence[tuple[int, int]] | None = None,
                    key: jax.Array | None = None) -> tuple[list[LayerField], jax.Array]:
    """Input gradients of one unit of several traced layers, in one jit.

    For each chosen record of :func:`receptive_field` (``layers``: indices into it, default all; ``-1`` is
    ``features``), the scalar is a random-weighted sum over channels (and the batch) of the unit ``units[i]``
    (default: the centre unit (⌊(H'-1)/2⌋, ⌊(W'-1)/2⌋)) of that layer's output. Returns the records and the
    gradients, shape (L, N, H, W, C) for ``x`` of shape (N, H, W, C). Nested (jit-ted) layers have no
    top-level value and are skipped unless they are ``features``.
    """
    hw = (x.shape[1], x.shape[2])
    closed, records, out_fields, out_var = _trace(model, hw, method, variables, batch=x.shape[0])
    shape = out_var.aval.shape
    feats = _features_record(out_fields, shape)
    all_recs = [(r, v) for r, v in records] + [(feats, out_var)]
    chosen = list(range(len(all_recs))) if layers is None else [i % len(all_recs) for i in layers]
    chosen = [i for i in chosen if all_recs[i][1] is not None]
    recs = [all_recs[i][0] for i in chosen]
    targets = [all_recs[i][1] for i in chosen]
    units = list(units) if units is not None else [_centre(r.out_hw) for r in recs]
    key = jax.random.key(0) if key is None else key
    weights = [jax.random.normal(k, (v.aval.shape[-1],)) for k, v in
               zip(jax.random.split(key, len(targets)), targets)]
    jaxpr = closed.jaxpr
    var_leaves = jax.tree.leaves(variables)

    def f(x):
        outs = jcore.eval_jaxpr(jaxpr.replace(outvars=targets), closed.consts, *var_leaves, x)
        return jnp.stack([jnp.sum(o[:, u[0], u[1], :] * w) for o, u, w in zip(outs, units, weights)])

    grads = jax.jit(jax.jacrev(f))(x)
    return recs, grads


def gradient_extent(grad: jax.Array | np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(row0, row1, col0, col1)`` (inclusive) of the non-zero entries of an (N, H, W, C)
    gradient, or None if it is all zero."""
    g = np.abs(np.asarray(grad)).sum(axis=(0, 3))
    rows, cols = np.flatnonzero(g.sum(1)), np.flatnonzero(g.sum(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def empirical_receptive_field(model: nn.Module, variables: Any, image_size: int | tuple[int, int],
                              batch: int = 2, key: jax.Array | None = None,
                              layers: Sequence[int] | None = (-1,)) -> list[tuple[LayerField, tuple, tuple]]:
    """Compare analytic and empirical fields: ``[(record, analytic_extent, empirical_extent), ...]``.

    The empirical extent is the bounding box of the non-zero input gradient of the centre unit on ``batch``
    N(0, 1) images (union over the batch, so max-pooling's single winner per window is not a problem); the
    analytic one is the record's field of that unit clipped to the image. Extents are ``(row0, row1, col0,
    col1)`` in input pixels, inclusive. Use :func:`randomize_variables` on ``variables`` first.
    """
    hw = _as_hw(image_size)
    key = jax.random.key(0) if key is None else key
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (batch, *hw, getattr(model, "in_channels", 3)))
    recs, grads = layer_gradients(model, variables, x, layers=layers, key=kw)
    return [(r, r.extent(_centre(r.out_hw), hw), gradient_extent(g)) for r, g in zip(recs, grads)]


def effective_receptive_field(apply_features: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
    """Luo et al. (2016): mean over images of |d (sum over channels of the centre unit) / d input|.

    ``apply_features`` maps NHWC images (N, H, W, C) to a spatial map (N, H', W', C'); returns an (H, W) map
    normalised to max 1 (summed over input channels).
    """

    def centre(x):
        y = apply_features(x)
        i, j = _centre((y.shape[1], y.shape[2]))
        return jnp.sum(y[:, i, j, :])

    g = jax.grad(centre)(images)
    m = jnp.abs(g).sum(axis=(0, 3))
    return m / jnp.maximum(m.max(), 1e-30)
