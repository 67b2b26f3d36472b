"""The jaxpr -> ONNX converter (:mod:`cnnjax.export_onnx`) op family by op family: each small function, converted
and run by onnxruntime at batch 1 and 3 (the dynamic batch ``N``), equals ``lax`` / NumPy float32 (rel. 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from cnnjax.export_onnx import UnsupportedError, to_onnx  # noqa: E402

RNG = np.random.RandomState(0)


def _check(fn, shape, dtype=np.float32, tol: float = 1e-5) -> None:
    """``fn`` in onnxruntime equals ``fn`` in JAX (eager, float32) at batch 1 and 3."""
    model = to_onnx(fn, (1, *shape), dtype)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = (RNG.randint(0, 255, (n, *shape)) if dtype == np.uint8 else RNG.randn(n, *shape)).astype(dtype)
        want = np.asarray(fn(x))
        got = sess.run(None, {"images": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))


def _w(*shape) -> np.ndarray:
    return RNG.randn(*shape).astype(np.float32)


@pytest.mark.parametrize("stride,dilation,padding,groups", [
    (1, 1, "SAME", 1), (2, 1, ((3, 2), (0, 1)), 1), (1, 2, "VALID", 1), (2, 1, "SAME", 4), (1, 1, "SAME", 8)])
def test_conv_general_dilated(stride, dilation, padding, groups):
    w = _w(3, 3, 8 // groups, 8)

    def fn(x):
        return lax.conv_general_dilated(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    _check(fn, (9, 10, 8))


@pytest.mark.parametrize("kind,window,stride,padding", [
    ("max", 3, 2, ((0, 0), (1, 0), (1, 0), (0, 0))), ("max", 2, 2, "VALID"), ("sum", 2, 2, "VALID"),
    ("sum", 3, 1, "SAME")])
def test_pools(kind, window, stride, padding):
    init, op = (-jnp.inf, lax.max) if kind == "max" else (0.0, lax.add)

    def fn(x):
        return lax.reduce_window(x, init, op, (1, window, window, 1), (1, stride, stride, 1), padding)
    _check(fn, (7, 8, 3))


def test_matmul_einsum_and_reductions():
    w, w2 = _w(5, 4), _w(6, 5)

    def fn(x):  # (b, 3, 5): MatMul (last dim), a transposed rhs, a batched contraction (Einsum), reductions
        y = x @ w + jnp.dot(x, w2.T).sum(-1, keepdims=True)
        z = jnp.einsum("bij,bkj->bik", x, x)
        return jnp.concatenate([y.max(1), z.mean((1, 2))[:, None], jnp.tanh(y).min(1)], axis=1)
    _check(fn, (3, 5))


def test_elementwise_and_structural():
    def fn(x):  # uint8 in: cast, normalise; layer-norm/GELU-like arithmetic, pad/slice/transpose/reshape/select
        x = (x.astype(jnp.float32) / 255.0 - 0.5) / 0.25
        y = jax.nn.gelu(x, approximate=False) + jax.nn.sigmoid(x) * jnp.exp(-x ** 2) - jnp.sqrt(jnp.abs(x) + 1)
        y = y * lax.rsqrt(jnp.mean(jnp.square(y), -1, keepdims=True) + 1e-6) + jnp.log1p(jnp.abs(x)) ** 3
        y = jnp.where(x > 0, y, jnp.clip(-y, -1.0, 2.0))
        y = jnp.pad(y, ((0, 0), (1, 2), (0, 0), (0, 0)))
        y = lax.slice(y, (0, 1, 0, 0), (y.shape[0], 6, 3, 2), (1, 2, 1, 1))
        return jnp.transpose(y, (0, 3, 1, 2)).reshape(y.shape[0], -1)
    _check(fn, (4, 3, 2), np.uint8)


def test_unsupported_primitive_is_named():
    with pytest.raises(UnsupportedError, match="'cumsum'"):
        to_onnx(lambda x: jnp.cumsum(x, axis=1), (1, 4))
    with pytest.raises(UnsupportedError, match="lhs_dilation"):
        to_onnx(lambda x: lax.conv_general_dilated(x, _w(3, 3, 2, 2), (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")), (1, 4, 4, 2))
