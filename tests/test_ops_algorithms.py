"""Winograd and FFT convolutions agree with ``lax.conv_general_dilated`` in values and gradients.

Every comparison jits the value and both gradients (``jax.grad`` of ``vdot(out, cotangent)`` w.r.t. x and w) in
one function, so each hypothesis example compiles once per algorithm. Errors are measured as the maximum absolute
difference relative to the reference's largest magnitude (at least 1), which keeps the tolerances honest for
outputs that sum many products.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from cnnjax.ops import conv2d
from cnnjax.ops import winograd as winograd_mod
from cnnjax.ops.fft import conv2d_fft, next_fast_len
from cnnjax.ops.winograd import TRANSFORMS, conv2d_winograd, supports_winograd


def _lax_conv(x, w, stride, padding, dilation, groups):
    return lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                                    precision=lax.Precision.HIGHEST)


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if b.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1.0))


def _check(fn: Callable, x, w, stride, padding, dilation, groups, tol: float, seed: int = 0) -> None:
    """Assert ``fn(x, w)`` matches the lax convolution in value and in the gradients w.r.t. x and w."""
    ref_fn = lambda x, w: _lax_conv(x, w, stride, padding, dilation, groups)  # noqa: E731
    out_shape = jax.eval_shape(ref_fn, x, w).shape
    cot = jnp.asarray(np.random.default_rng(seed).normal(size=out_shape), jnp.float32)

    def value_and_grads(f):
        return jax.jit(lambda x, w: (f(x, w), jax.grad(lambda x, w: jnp.vdot(f(x, w), cot), (0, 1))(x, w)))(x, w)

    ours, (gx, gw) = value_and_grads(fn)
    ref, (rgx, rgw) = value_and_grads(ref_fn)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    for name, a, b in (("value", ours, ref), ("grad x", gx, rgx), ("grad w", gw, rgw)):
        err = _rel_err(a, b)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g}"


def _inputs(seed: int, n: int, h: int, w_: int, cin: int, kh: int, kw: int, cin_g: int, cout: int):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, h, w_, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kh, kw, cin_g, cout)), jnp.float32)
    return x, w


KERNELS, STRIDES, DILATIONS = st.integers(1, 5), st.integers(1, 3), st.integers(1, 2)
side_pads = st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2)))


@st.composite
def conv_cases(draw, kernels=KERNELS, strides=STRIDES, dilations=DILATIONS, asymmetric: bool = True):
    """(n, h, w, groups, cin_g, cout_g, (kh, kw), stride, padding, dilation) with a non-empty output."""
    kh, kw = draw(kernels), draw(kernels)
    stride = (draw(strides), draw(strides))
    dilation = (draw(dilations), draw(dilations))
    if asymmetric:
        padding = draw(side_pads)
    else:
        p = draw(st.integers(0, 2))
        padding = ((p, p), (p, p))
    # Draw sizes that leave at least one output row/column.
    min_h = max(1, dilation[0] * (kh - 1) + 1 - sum(padding[0]))
    min_w = max(1, dilation[1] * (kw - 1) + 1 - sum(padding[1]))
    h, w_ = draw(st.integers(min_h, max(min_h, 10))), draw(st.integers(min_w, max(min_w, 10)))
    return (draw(st.integers(1, 2)), h, w_, draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 3)),
            draw(st.integers(1, 3)), (kh, kw), stride, padding, dilation)


def _run_case(fn: Callable, case, tol: float, **kwargs) -> None:
    n, h, w_, g, cg, og, (kh, kw), stride, padding, dilation = case
    seed = abs(hash(case)) % 2**32
    x, w = _inputs(seed, n, h, w_, g * cg, kh, kw, cg, g * og)
    _check(lambda x, w: fn(x, w, stride, padding, dilation, g, **kwargs), x, w, stride, padding, dilation, g,
           tol, seed)


# --- Winograd -------------------------------------------------------------------------------------------------


# F(4x4,3x3) runs the same code as F(2x2,3x3) with other transform matrices (checked against float64 below, and
# on the fallback cases): the edit loop runs tile 2, the full suite both
@pytest.mark.parametrize("tile", [2, pytest.param(4, marks=pytest.mark.slow)])
@settings(max_examples=5, deadline=None)  # each example compiles value + both gradients (~1 s)
@given(conv_cases(kernels=st.just(3), strides=st.just(1), dilations=st.just(1)))
def test_winograd_equals_lax_conv_with_gradients(tile, case):
    """3x3 stride-1 cases (asymmetric padding, groups 1/2/4 incl. depthwise) take the Winograd path."""
    assert supports_winograd(case[6], case[7], case[9], case[3])
    # <= 12 input channels, N(0, 1) data: F(2,3) errors are ~1e-7 and F(4,3) ~1e-6 relative; 1e-4 is a safe bound.
    _run_case(conv2d_winograd, case, tol=1e-4, tile=tile)


@settings(max_examples=4, deadline=None)
@given(conv_cases(kernels=st.integers(1, 3), asymmetric=False), st.sampled_from([2, 4]))
def test_winograd_fallback_equals_lax_conv_with_gradients(case, tile):
    """Stride > 1, dilation 2, 1x1/2x2 kernels and non-square 3xk kernels fall back to gemm and stay exact."""
    assume(not supports_winograd(case[6], case[7], case[9], case[3]))
    _run_case(conv2d_winograd, case, tol=1e-5, tile=tile)


@pytest.mark.parametrize("kernel, stride, dilation", [((3, 3), 2, 1), ((1, 1), 1, 1), ((3, 3), 1, 2),
                                                      ((3, 1), 1, 1)])
def test_winograd_falls_back_to_gemm_exactly_when_unsupported(monkeypatch, kernel, stride, dilation):
    calls = []
    real = winograd_mod.conv2d_gemm

    def spy(*args, **kwargs):
        calls.append(args[2:5])
        return real(*args, **kwargs)

    monkeypatch.setattr(winograd_mod, "conv2d_gemm", spy)
    # Tracing (eval_shape) runs the Python dispatch without compiling anything.
    x, w = jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32), jax.ShapeDtypeStruct((*kernel, 2, 3), jnp.float32)
    jax.eval_shape(lambda x, w: conv2d_winograd(x, w, stride, 1, dilation), x, w)
    assert not supports_winograd(kernel, stride, dilation, 1)
    assert calls == [((stride, stride), ((1, 1), (1, 1)), (dilation, dilation))]
    calls.clear()
    for tile in (2, 4):
        for groups in (1, 2):
            w = jax.ShapeDtypeStruct((3, 3, 2 // groups, 4), jnp.float32)
            jax.eval_shape(lambda x, w, t=tile, g=groups: conv2d_winograd(x, w, 1, 1, 1, g, tile=t), x, w)
    assert calls == [], "a supported 3x3 stride-1 convolution must not fall back"


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_transforms_compute_1d_correlation_exactly(m):
    """1-D identity behind F(m, 3): A^T [(G g) ⊙ (B^T d)] = correlate(d, g), in float64 to rounding."""
    b_t, g_mat, a_t = TRANSFORMS[m]
    rng = np.random.default_rng(m)
    d, g = rng.normal(size=m + 2), rng.normal(size=3)
    np.testing.assert_allclose(a_t @ ((g_mat @ g) * (b_t @ d)), np.correlate(d, g, "valid"), rtol=1e-12, atol=1e-12)


def _numpy_conv_f64(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Direct float64 stride-1 cross-correlation: one einsum per kernel tap."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = np.asarray(w, np.float64)
    kh, kw = w.shape[:2]
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nhwc,co->nhwo", x[:, i:i + oh, j:j + ow], w[i, j])
    return y


def test_winograd_float32_error_against_float64_reference():
    """Numerical error of Winograd in float32, relative to a float64 NumPy convolution.

    x (2, 16, 16, 64), w (3, 3, 64, 16), N(0, 1), padding 1; error = max |y - y64| / max |y64| (max |y64| ~ 90).
    Measured on XLA CPU (seeds 0-3): F(2x2,3x3) 1.8e-7 - 2.2e-7, F(4x4,3x3) 2.5e-6 - 3.4e-6, direct lax conv
    (HIGHEST) 3.0e-7 - 3.3e-7. F(2,3) is as accurate as the direct method; F(4,3)'s larger transform entries
    cost about an order of magnitude — the known price of its 4x fewer multiplications.
    """
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 16, 16, 64)), rng.normal(size=(3, 3, 64, 16))
    ref = _numpy_conv_f64(x, w, 1)
    xf, wf = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    err2, err4 = (_rel_err(jax.jit(lambda x, w, t=t: conv2d_winograd(x, w, 1, 1, 1, tile=t))(xf, wf), ref)
                  for t in (2, 4))
    err_lax = _rel_err(_lax_conv(xf, wf, (1, 1), ((1, 1), (1, 1)), (1, 1), 1), ref)
    assert err2 < 2e-6 and err_lax < 2e-6
    assert err4 < 3e-5
    assert err4 > 3 * err2 and err4 > 3 * err_lax, (err2, err4, err_lax)


# --- FFT ------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # > 5 s (CI durations)
@settings(max_examples=8, deadline=None)
@given(conv_cases())
def test_fft_equals_lax_conv_with_gradients(case):
    """Any kernel 1..5 (non-square), stride and dilation per axis, asymmetric padding, groups 1/2/4."""
    _run_case(conv2d_fft, case, tol=1e-4)


def test_fft_depthwise_and_large_kernel():
    x, w = _inputs(1, 2, 10, 9, 6, 5, 5, 1, 12)  # depthwise with channel multiplier 2
    _check(lambda x, w: conv2d_fft(x, w, 1, 2, 1, 6), x, w, (1, 1), ((2, 2), (2, 2)), (1, 1), 6, tol=1e-4)
    x, w = _inputs(2, 1, 10, 10, 2, 7, 7, 2, 2)
    _check(lambda x, w: conv2d_fft(x, w, 2, 3, 1), x, w, (2, 2), ((3, 3), (3, 3)), (1, 1), 1, tol=1e-4)


def test_next_fast_len():
    assert [next_fast_len(n) for n in (1, 7, 11, 13, 17, 49, 97)] == [1, 8, 12, 15, 18, 50, 100]


# --- Low precision -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, tol", [(lambda *a, **k: conv2d_winograd(*a, **k, tile=2), 2e-2),
                                     (lambda *a, **k: conv2d_winograd(*a, **k, tile=4), 0.2),
                                     (conv2d_fft, 1e-2)], ids=["winograd2", "winograd4", "fft"])
def test_bfloat16_inputs(fn, tol):
    """bfloat16 in, bfloat16 out (float32 with ``preferred_element_type``), near the float32 result.

    Measured (8 -> 4 channels, relative max error): a bf16 lax conv 3.8e-3; the FFT computes in float32, so only
    the input/output rounding shows (3.8e-3, 2.4e-3 with float32 out); F(2,3) 5.9e-3; F(4,3) 7.7e-2 — rounding
    the transformed tiles V = B^T d B to bfloat16 (8 mantissa bits) and the output transform's entries up to 8
    make F(4x4,3x3) unsuitable for bfloat16 inputs.
    """
    x, w = _inputs(3, 1, 8, 8, 8, 3, 3, 8, 4)
    ref = _lax_conv(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = jax.jit(lambda x, w: fn(x, w, 1, 1, 1))(xb, wb)
    assert out.dtype == jnp.bfloat16
    assert _rel_err(out, ref) < tol
    out32 = jax.jit(lambda x, w: fn(x, w, 1, 1, 1, preferred_element_type=jnp.float32))(xb, wb)
    assert out32.dtype == jnp.float32
    assert _rel_err(out32, ref) < tol


@pytest.mark.parametrize("impl", ["gemm", "winograd"])
@pytest.mark.parametrize("groups", [1, 2])
def test_bfloat16_gradients(impl, groups):
    """bf16 values and both gradients (mixed-precision products, :mod:`cnnjax.ops.products`) near a bf16 lax
    convolution's, also grouped (XLA:CPU rejects some bf16 x bf16 -> f32 batched products; this must run)."""
    x, w = _inputs(5, 2, 9, 8, 8, 3, 3, 8 // groups, 6)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    _check(lambda x, w: conv2d(x, w, stride=1, padding=1, groups=groups, impl=impl), xb, wb, (1, 1),
           ((1, 1), (1, 1)), (1, 1), groups, tol=3e-2)


# --- The checks can fail --------------------------------------------------------------------------------------

_NEG_X, _NEG_W = _inputs(4, 1, 7, 6, 3, 3, 3, 3, 2)
_NEG_ARGS = ((1, 1), ((1, 0), (2, 1)), (1, 1), 1)


def test_check_rejects_wrong_winograd_transform(monkeypatch):
    b_t, g_mat, a_t = TRANSFORMS[4]  # the true matrices pass: test_winograd_equals_lax_conv_with_gradients
    # G with reversed columns transforms the flipped kernel: a convolution instead of a cross-correlation.
    monkeypatch.setitem(TRANSFORMS, 4, (b_t, g_mat[:, ::-1], a_t))
    with pytest.raises(AssertionError, match="value"):
        _check(lambda x, w: conv2d_winograd(x, w, *_NEG_ARGS), _NEG_X, _NEG_W, *_NEG_ARGS, tol=1e-4)
    # One wrong entry of B^T (Lavin's -5 replaced by -4).
    bad_bt = b_t.copy()
    bad_bt[0, 2] = -4
    monkeypatch.setitem(TRANSFORMS, 4, (bad_bt, g_mat, a_t))
    with pytest.raises(AssertionError, match="value"):
        _check(lambda x, w: conv2d_winograd(x, w, *_NEG_ARGS), _NEG_X, _NEG_W, *_NEG_ARGS, tol=1e-4)


def test_check_rejects_flipped_fft_kernel_and_wrong_gradient():
    with pytest.raises(AssertionError, match="value"):
        _check(lambda x, w: conv2d_fft(x, w[::-1, ::-1], *_NEG_ARGS), _NEG_X, _NEG_W, *_NEG_ARGS, tol=1e-4)
    # Right values, no gradient for the kernel: only the gradient comparison catches it.
    with pytest.raises(AssertionError, match="grad w"):
        _check(lambda x, w: conv2d_fft(x, lax.stop_gradient(w), *_NEG_ARGS), _NEG_X, _NEG_W, *_NEG_ARGS,
               tol=1e-4)
