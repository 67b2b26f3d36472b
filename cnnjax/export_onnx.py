"""A small jaxpr -> ONNX converter for eval-mode CNN forward passes (``--format onnx`` of :mod:`cnnjax.export`).

:func:`to_onnx` traces ``fn(x)`` with :func:`jax.make_jaxpr` at a symbolic batch dimension (``b``, emitted as the
ONNX ``dim_param`` ``"N"``), walks the equations (recursing into ``jit``/``pjit``/``closed_call``/``custom_jvp_call``
/``custom_vjp_call`` sub-jaxprs) and emits one or a few ONNX nodes per equation (opset 18); the closed-over weights
become initializers. Equations whose inputs are all constants are evaluated here (folded), so weight-only
arithmetic (batch-norm scales, ``rsqrt(var + eps)``) is not in the graph.

Layout: values keep JAX's layout (NHWC); a convolution or pool transposes its input to NCHW and its output back
(onnxruntime's transpose optimizer cancels the pairs between consecutive convolutions).

Broadcasts: ``broadcast_in_dim`` is emitted as a reshape to the output rank only (size-1 dims where JAX broadcasts);
ONNX's multidirectional broadcasting of the element-wise consumer restores the full shape. Such a "lazy" value is
expanded (``Expand``) before an op that needs its exact shape; one that would need the symbolic batch dimension
raises :class:`UnsupportedError`.

Supported primitives: see :data:`ELEMENTWISE` and :data:`STRUCTURAL`; any other raises :class:`UnsupportedError`
naming it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

OPSET = 18
BATCH = "N"


class UnsupportedError(NotImplementedError):
    """A primitive (or a parameter of one) that the ONNX converter cannot express."""


def _is_int(d) -> bool:
    return isinstance(d, (int, np.integer))


def _concrete(shape) -> tuple[int, ...] | None:
    return tuple(int(d) for d in shape) if all(_is_int(d) for d in shape) else None


class _Graph:
    """The ONNX nodes, initializers and the value of every jaxpr variable (an ONNX name or a NumPy constant)."""

    def __init__(self):
        import onnx

        self.onnx = onnx
        self.nodes: list = []
        self.inits: list = []
        self.names = itertools.count()
        self.shapes: dict[str, tuple] = {}  # ONNX name -> its shape (ints, or None for the symbolic dim)

    def fresh(self, hint: str = "t") -> str:
        return f"{hint}_{next(self.names)}"

    def const(self, value: np.ndarray) -> str:
        name = self.fresh("c")
        value = np.asarray(value)
        self.inits.append(self.onnx.numpy_helper.from_array(value, name))
        self.shapes[name] = value.shape
        return name

    def node(self, op: str, inputs: list, shape: tuple, **attrs) -> str:
        """Emit ``op`` on ``inputs`` (ONNX names or NumPy constants); returns the output's name."""
        names = [self.const(i) if isinstance(i, np.ndarray) else i for i in inputs]
        out = self.fresh(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, names, [out], **attrs))
        self.shapes[out] = tuple(shape)
        return out

    def shape(self, value) -> tuple:
        return value.shape if isinstance(value, np.ndarray) else self.shapes[value]


def _aval_shape(var) -> tuple:
    """A jaxpr variable's shape with the symbolic batch dimension as ``None``."""
    return tuple(int(d) if _is_int(d) else None for d in var.aval.shape)


def _i64(values) -> np.ndarray:
    return np.asarray(list(values), np.int64)


def _exact(g: _Graph, value, shape: tuple):
    """``value`` at exactly ``shape`` (``None``: the batch dim): a lazy broadcast is expanded."""
    have = g.shape(value)
    if tuple(have) == tuple(shape):
        return value
    if len(have) != len(shape) or any(h != s and h != 1 for h, s in zip(have, shape)):
        raise UnsupportedError(f"internal: value of shape {have} does not broadcast to {shape}")
    if any(s is None and h != s for h, s in zip(have, shape)):
        raise UnsupportedError(f"a broadcast to the symbolic batch dimension ({have} -> {shape}) is not supported")
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(np.broadcast_to(value, shape))
    return g.node("Expand", [value, _i64(shape)], shape)


def _bcast(*shapes: tuple) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        big = [d for d in dims if d != 1]
        out.append(None if None in big else (big[0] if big else 1))
    return tuple(out)


def _rsqrt(x):
    return 1.0 / jnp.sqrt(x)


def _pow_node(g: _Graph, x, n, shape):
    if n == 2:
        return g.node("Mul", [x, x], shape)
    return g.node("Pow", [x, np.asarray(float(n), np.float32)], shape)


def _erfc_node(g: _Graph, x, shape):
    erf = g.node("Erf", [x], shape)
    return g.node("Sub", [np.asarray(1.0, np.float32), erf], shape)


def _rsqrt_node(g: _Graph, x, shape):
    return g.node("Reciprocal", [g.node("Sqrt", [x], shape)], shape)


def _simple(op: str):
    return lambda g, eqn, ins, shape: g.node(op, ins, shape)


def _select_n(g, eqn, ins, shape):
    if len(ins) != 3:
        raise UnsupportedError(f"select_n with {len(ins) - 1} cases (only 2) is not supported")
    pred = ins[0] if eqn.invars[0].aval.dtype == np.bool_ else g.node("Cast", [ins[0]], g.shape(ins[0]), to=9)
    return g.node("Where", [pred, ins[2], ins[1]], shape)


def _cast(g, eqn, ins, shape):
    dtype = np.dtype(eqn.params["new_dtype"])
    return g.node("Cast", ins, shape, to=g.onnx.helper.np_dtype_to_tensor_dtype(dtype))


def _clamp(g, eqn, ins, shape):
    lo, x, hi = ins
    return g.node("Max", [g.node("Min", [x, hi], shape), lo], shape)


# primitive -> (emit(graph, eqn, inputs, out_shape) -> name, fold(*numpy inputs, **params) -> numpy)
ELEMENTWISE: dict[str, tuple[Callable, Callable]] = {
    "add": (_simple("Add"), lambda a, b: a + b), "sub": (_simple("Sub"), lambda a, b: a - b),
    "mul": (_simple("Mul"), lambda a, b: a * b), "div": (_simple("Div"), lambda a, b: a / b),
    "max": (_simple("Max"), jnp.maximum), "min": (_simple("Min"), jnp.minimum),
    "pow": (_simple("Pow"), jnp.power), "neg": (_simple("Neg"), jnp.negative), "exp": (_simple("Exp"), jnp.exp),
    "log": (_simple("Log"), jnp.log),
    "log1p": (lambda g, e, i, s: g.node("Log", [g.node("Add", [i[0], np.asarray(1, np.float32)], s)], s),
              jnp.log1p), "tanh": (_simple("Tanh"), jnp.tanh),
    "logistic": (_simple("Sigmoid"), jax.nn.sigmoid), "erf": (_simple("Erf"), jax.scipy.special.erf),
    "erfc": (lambda g, e, i, s: _erfc_node(g, i[0], s), jax.scipy.special.erfc),
    "sqrt": (_simple("Sqrt"), jnp.sqrt), "rsqrt": (lambda g, e, i, s: _rsqrt_node(g, i[0], s), _rsqrt),
    "abs": (_simple("Abs"), jnp.abs), "sign": (_simple("Sign"), jnp.sign),
    "square": (lambda g, e, i, s: _pow_node(g, i[0], 2, s), jnp.square),
    "integer_pow": (lambda g, e, i, s: _pow_node(g, i[0], e.params["y"], s), lambda x, y: x ** y),
    "gt": (_simple("Greater"), jnp.greater), "ge": (_simple("GreaterOrEqual"), jnp.greater_equal),
    "lt": (_simple("Less"), jnp.less), "le": (_simple("LessOrEqual"), jnp.less_equal),
    "eq": (_simple("Equal"), jnp.equal), "ne": (lambda g, e, i, s: g.node("Not", [g.node("Equal", i, s)], s),
                                               jnp.not_equal),
    "copy": (_simple("Identity"), lambda x: x), "copy_p": (_simple("Identity"), lambda x: x),
    "convert_element_type": (_cast, lambda x, new_dtype, **_: x.astype(new_dtype)),
    "select_n": (_select_n, lambda p, *c: jax.lax.select_n(p, *jnp.broadcast_arrays(*c))),
    "clamp": (_clamp, lambda lo, x, hi: jnp.clip(x, lo, hi)),
}


def _nchw(g: _Graph, x, spec: tuple[int, ...]):
    """Transpose ``x`` so the dims listed in ``spec`` come first, in that order."""
    shape = g.shape(x)
    if tuple(spec) == tuple(range(len(shape))):
        return x
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.transpose(x, spec))
    return g.node("Transpose", [x], tuple(shape[p] for p in spec), perm=list(spec))


def _from_nchw(g: _Graph, y, spec: tuple[int, ...], shape: tuple):
    inverse = list(np.argsort(spec))
    if inverse == list(range(len(spec))):
        return y
    return g.node("Transpose", [y], shape, perm=inverse)


def _conv(g, eqn, ins, shape):
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise UnsupportedError("conv_general_dilated with lhs_dilation (transposed conv) or batch_group_count "
                               "is not supported")
    pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
    if min(pads) < 0:
        raise UnsupportedError("conv_general_dilated with negative padding is not supported")
    dn = p["dimension_numbers"]
    x = _nchw(g, _exact(g, ins[0], _aval_shape(eqn.invars[0])), dn.lhs_spec)
    w = _nchw(g, _exact(g, ins[1], _aval_shape(eqn.invars[1])), dn.rhs_spec)
    out = tuple(shape[d] for d in dn.out_spec)
    y = g.node("Conv", [x, w], out, strides=list(p["window_strides"]), pads=pads,
               dilations=list(p["rhs_dilation"]), group=int(p["feature_group_count"]))
    return _from_nchw(g, y, dn.out_spec, shape)


def _dot_general(g, eqn, ins, shape):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs = _exact(g, ins[0], _aval_shape(eqn.invars[0]))
    rhs = _exact(g, ins[1], _aval_shape(eqn.invars[1]))
    lrank, rrank = len(g.shape(lhs)), len(g.shape(rhs))
    if not lb and not rb and tuple(lc) == (lrank - 1,) and rrank == 2 and len(rc) == 1:
        if rc[0] == 1:
            rhs = _nchw(g, rhs, (1, 0))
        return g.node("MatMul", [lhs, rhs], shape)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lsub, rsub = [next(letters) for _ in range(lrank)], [None] * rrank
    for li, ri in zip(list(lc) + list(lb), list(rc) + list(rb)):
        rsub[ri] = lsub[li]
    rsub = [s or next(letters) for s in rsub]
    outsub = ([lsub[i] for i in lb] + [lsub[i] for i in range(lrank) if i not in lc and i not in lb]
              + [rsub[i] for i in range(rrank) if i not in rc and i not in rb])
    eq = f"{''.join(lsub)},{''.join(rsub)}->{''.join(outsub)}"
    return g.node("Einsum", [lhs, rhs], shape, equation=eq)


def _reduce(op: str):
    def emit(g, eqn, ins, shape):
        x = _exact(g, ins[0], _aval_shape(eqn.invars[0]))
        return g.node(op, [x, _i64(eqn.params["axes"])], shape, keepdims=0)
    return emit


def _pool(g, eqn, ins, shape, kind: str):
    p = eqn.params
    win, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    rank = len(win)
    outer = (0, rank - 1)
    if (rank < 3 or any(win[d] != 1 or strides[d] != 1 or tuple(padding[d]) != (0, 0) for d in outer)
            or any(d != 1 for d in p["base_dilation"])):
        raise UnsupportedError(f"reduce_window_{kind} other than a spatial pool over N, ..., C (window "
                               f"{tuple(win)}) is not supported")
    spatial = range(1, rank - 1)
    pads = [padding[d][0] for d in spatial] + [padding[d][1] for d in spatial]
    spec = (0, rank - 1, *spatial)
    x = _nchw(g, _exact(g, ins[0], _aval_shape(eqn.invars[0])), spec)
    out = tuple(shape[d] for d in spec)
    kernel = [win[d] for d in spatial]
    attrs = dict(kernel_shape=kernel, strides=[strides[d] for d in spatial], pads=pads)
    dilations = [p["window_dilation"][d] for d in spatial]
    if kind == "max":
        y = g.node("MaxPool", [x], out, dilations=dilations, **attrs)
    elif any(d != 1 for d in dilations):
        raise UnsupportedError("reduce_window_sum with window_dilation is not supported")
    else:
        y = g.node("AveragePool", [x], out, count_include_pad=1, **attrs)
        y = g.node("Mul", [y, np.asarray(float(np.prod(kernel)), np.float32)], out)
    return _from_nchw(g, y, spec, shape)


def _broadcast_in_dim(g, eqn, ins, shape):
    dims = eqn.params["broadcast_dimensions"]
    have = g.shape(ins[0])
    lazy = [1] * len(shape)
    for i, d in enumerate(dims):
        lazy[d] = have[i]
    return _reshape_to(g, ins[0], tuple(lazy))


def _reshape_to(g: _Graph, x, shape: tuple):
    if tuple(g.shape(x)) == tuple(shape):
        return x
    if isinstance(x, np.ndarray):
        return x.reshape(shape)
    if sum(d is None for d in shape) > 1:
        raise UnsupportedError(f"reshape to {shape} with more than one symbolic dimension")
    return g.node("Reshape", [x, _i64(-1 if d is None else d for d in shape)], shape)


def _reshape(g, eqn, ins, shape):
    if eqn.params.get("dimensions") is not None:
        raise UnsupportedError("reshape with dimensions= is not supported")
    return _reshape_to(g, _exact(g, ins[0], _aval_shape(eqn.invars[0])), shape)


def _structural(fn: Callable):
    """An op that needs its (only) input at its exact shape: ``fn(g, eqn, x, shape)``."""
    def emit(g, eqn, ins, shape):
        return fn(g, eqn, _exact(g, ins[0], _aval_shape(eqn.invars[0])), shape)
    return emit


def _pad(g, eqn, ins, shape):
    config = eqn.params["padding_config"]
    if any(i != 0 for _, _, i in config) or any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise UnsupportedError("pad with interior or negative padding is not supported")
    x = _exact(g, ins[0], _aval_shape(eqn.invars[0]))
    value = np.asarray(ins[1]).reshape(()) if isinstance(ins[1], np.ndarray) else ins[1]
    pads = _i64([lo for lo, _, _ in config] + [hi for _, hi, _ in config])
    return g.node("Pad", [x, pads, value], shape, mode="constant")


def _slice(g, eqn, x, shape):
    p = eqn.params
    rank = len(p["start_indices"])
    steps = p["strides"] or (1,) * rank
    limits = [d if _is_int(d) else 2**62 for d in p["limit_indices"]]  # the symbolic batch: to its end
    return g.node("Slice", [x, _i64(p["start_indices"]), _i64(limits), _i64(range(rank)),
                            _i64(steps)], shape)


def _concatenate(g, eqn, ins, shape):
    xs = [_exact(g, x, _aval_shape(v)) for x, v in zip(ins, eqn.invars)]
    return g.node("Concat", xs, shape, axis=int(eqn.params["dimension"]))


STRUCTURAL: dict[str, Callable] = {
    "conv_general_dilated": _conv, "dot_general": _dot_general,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"), "reduce_min": _reduce("ReduceMin"),
    "reduce_window_max": lambda g, e, i, s: _pool(g, e, i, s, "max"),
    "reduce_window_sum": lambda g, e, i, s: _pool(g, e, i, s, "sum"),
    "broadcast_in_dim": _broadcast_in_dim, "reshape": _reshape,
    "squeeze": _structural(lambda g, e, x, s: g.node("Squeeze", [x, _i64(e.params["dimensions"])], s)),
    "transpose": _structural(lambda g, e, x, s: _nchw(g, x, tuple(e.params["permutation"]))),
    "pad": _pad, "slice": _structural(_slice), "concatenate": _concatenate,
}
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
         "remat", "checkpoint")


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None:
            return sub
    raise UnsupportedError(f"{eqn.primitive.name}: no sub-jaxpr found")


def _fold(eqn, ins: list[np.ndarray]):
    """Evaluate an equation whose inputs are all constants; ``None`` where it is not done here."""
    name = eqn.primitive.name
    if any(_concrete(v.aval.shape) is None for v in eqn.outvars) or len(eqn.outvars) != 1:
        return None
    if name in ELEMENTWISE:
        params = {k: v for k, v in eqn.params.items() if k in ("y", "new_dtype")}
        out = ELEMENTWISE[name][1](*ins, **params)
        return np.asarray(out, eqn.outvars[0].aval.dtype)
    if name == "broadcast_in_dim":
        return None  # kept lazy (no materialised full-size constants)
    full = [np.ascontiguousarray(np.broadcast_to(x, _concrete(v.aval.shape))) for x, v in zip(ins, eqn.invars)]
    return np.asarray(eqn.primitive.bind(*full, **eqn.params), eqn.outvars[0].aval.dtype)


def _read(env: dict, var):
    if isinstance(var, Literal):
        return np.asarray(var.val, var.aval.dtype)
    return env[var]


def _walk(g: _Graph, jaxpr, consts: list, args: list) -> list:
    env: dict[Any, Any] = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = np.asarray(c)
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [_read(env, v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in CALLS:
            sub = _sub_jaxpr(eqn)
            closed = sub if hasattr(sub, "consts") else None
            outs = _walk(g, closed.jaxpr if closed else sub, closed.consts if closed else [], ins)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
            continue
        if name not in ELEMENTWISE and name not in STRUCTURAL:
            raise UnsupportedError(f"the ONNX export does not support the JAX primitive {name!r} "
                                   f"(supported: {', '.join(sorted([*ELEMENTWISE, *STRUCTURAL]))})")
        folded = _fold(eqn, ins) if all(isinstance(i, np.ndarray) for i in ins) else None
        if folded is not None:
            env[eqn.outvars[0]] = folded
            continue
        if name in ELEMENTWISE:
            shape = _bcast(*[g.shape(i) for i in ins]) if ins else _aval_shape(eqn.outvars[0])
            env[eqn.outvars[0]] = ELEMENTWISE[name][0](g, eqn, ins, shape)
        else:
            env[eqn.outvars[0]] = STRUCTURAL[name](g, eqn, ins, _aval_shape(eqn.outvars[0]))
    return [_read(env, v) for v in jaxpr.outvars]


def to_onnx(fn: Callable, shape: tuple[int, ...], dtype=np.float32, *, input_name: str = "images",
            output_name: str = "logits", doc: str = ""):
    """The ONNX ``ModelProto`` of ``fn(x)`` for ``x`` of ``shape`` (NHWC, the batch dim ignored: symbolic ``N``)
    and ``dtype``; one output. Checked with :func:`onnx.checker.check_model`. Raises :class:`UnsupportedError`
    naming a primitive it cannot convert."""
    import onnx
    from jax import export

    (b,) = export.symbolic_shape("b")
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((b, *shape[1:]), dtype))
    g = _Graph()
    x = "images_in"
    g.shapes[x] = (None, *shape[1:])
    (out,) = _walk(g, closed.jaxpr, closed.consts, [x])
    out_shape = _aval_shape(closed.jaxpr.outvars[0])
    out = _exact(g, out, out_shape)
    if isinstance(out, np.ndarray):
        raise UnsupportedError("the output does not depend on the input")
    g.nodes.append(onnx.helper.make_node("Identity", [out], [output_name]))
    # the graph's input: rename the placeholder where it is consumed
    for node in g.nodes:
        for i, name in enumerate(node.input):
            if name == x:
                node.input[i] = input_name
    odtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(closed.jaxpr.outvars[0].aval.dtype))
    dims = lambda s: [BATCH if d is None else d for d in s]  # noqa: E731
    graph = onnx.helper.make_graph(
        g.nodes, "cnnjax", [onnx.helper.make_tensor_value_info(
            input_name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims(g.shapes[x]))],
        [onnx.helper.make_tensor_value_info(output_name, odtype, dims(out_shape))], initializer=g.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="cnnjax", doc_string=doc)
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model
