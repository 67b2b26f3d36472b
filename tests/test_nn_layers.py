"""Layers against independent references: float64 NumPy loops written from PyTorch's definitions, lax.conv,
and (marked ``parity``) torch itself."""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from cnnjax import nn as cnn
from cnnjax.ops import conv_output_size


# ---------------------------------------------------------------- float64 NumPy references (PyTorch's rules)
def ref_pool_out(size, k, s, p, d, ceil_mode):
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def ref_max_pool(x, k, s, p, d, ceil_mode):
    n, h, w, c = x.shape
    oh, ow = ref_pool_out(h, k, s, p, d, ceil_mode), ref_pool_out(w, k, s, p, d, ceil_mode)
    y = np.full((n, oh, ow, c), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for a in range(k):
                for b in range(k):
                    r, q = i * s - p + a * d, j * s - p + b * d
                    if 0 <= r < h and 0 <= q < w:
                        y[:, i, j] = np.maximum(y[:, i, j], x[:, r, q])
    return y


def ref_avg_pool(x, k, s, p, ceil_mode, count_include_pad):
    n, h, w, c = x.shape
    oh, ow = ref_pool_out(h, k, s, p, 1, ceil_mode), ref_pool_out(w, k, s, p, 1, ceil_mode)
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs2, ws2, he2, we2 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            total = x[:, hs2:he2, ws2:we2].sum(axis=(1, 2))
            y[:, i, j] = total / (size if count_include_pad else (he2 - hs2) * (we2 - ws2))
    return y


def ref_adaptive_avg(x, oh, ow):
    n, h, w, c = x.shape
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            h0, h1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
            w0, w1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


pool_params = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
                        st.booleans(), st.integers(1, 12), st.integers(1, 12)).filter(
    lambda t: t[2] <= t[0] // 2)


@given(pool_params)
def test_max_pool_matches_pytorch_definition(params):
    k, s, p, d, ceil_mode, h, w = params
    if ref_pool_out(h, k, s, p, d, ceil_mode) < 1 or ref_pool_out(w, k, s, p, d, ceil_mode) < 1:
        with pytest.raises(cnn.InputTooSmallError):
            cnn.max_pool2d(jnp.zeros((1, h, w, 1)), k, s, p, d, ceil_mode)
        return
    x = np.random.default_rng(h * 31 + w).normal(size=(2, h, w, 3))
    y = cnn.max_pool2d(jnp.asarray(x, jnp.float32), k, s, p, d, ceil_mode)
    np.testing.assert_allclose(np.asarray(y), ref_max_pool(x, k, s, p, d, ceil_mode), rtol=1e-6, atol=1e-6)


def _lax_max_pool(x, k, s, p, d, ceil_mode):
    """The plain ``lax.reduce_window`` max pool, differentiated by JAX (``select_and_scatter``)."""
    oh, ow = ref_pool_out(x.shape[1], k, s, p, d, ceil_mode), ref_pool_out(x.shape[2], k, s, p, d, ceil_mode)
    hi_h = max((oh - 1) * s + d * (k - 1) + 1 - x.shape[1] - p, 0)
    hi_w = max((ow - 1) * s + d * (k - 1) + 1 - x.shape[2] - p, 0)
    y = lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, k, k, 1), (1, s, s, 1),
                          ((0, 0), (p, hi_h), (p, hi_w), (0, 0)), window_dilation=(1, d, d, 1))
    return y[:, :oh, :ow]


def ref_max_pool_derivatives(x, cot, t, k, s, p, d, ceil_mode):
    """PyTorch's rule in NumPy: each output depends on the first maximum of its window (row-major scan).
    Returns (gradient of sum(cot * pool(x)) w.r.t. x, directional derivative of pool at x along t)."""
    n, h, w, c = x.shape
    oh, ow = ref_pool_out(h, k, s, p, d, ceil_mode), ref_pool_out(w, k, s, p, d, ceil_mode)
    grad, jvp = np.zeros_like(x), np.zeros((n, oh, ow, c))
    for b_ in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, pos = -np.inf, None
                    for a in range(k):
                        for b in range(k):
                            r, q = i * s - p + a * d, j * s - p + b * d
                            if 0 <= r < h and 0 <= q < w and x[b_, r, q, ch] > best:
                                best, pos = x[b_, r, q, ch], (r, q)
                    if pos is not None:  # a window of padding only (possible with dilation) has no input
                        grad[b_, pos[0], pos[1], ch] += cot[b_, i, j, ch]
                        jvp[b_, i, j, ch] = t[b_, pos[0], pos[1], ch]
    return grad, jvp


@settings(max_examples=15)
@given(pool_params, st.integers(0, 2**16))
def test_max_pool_derivatives_route_to_the_first_maximum(params, seed):
    """Inputs with many ties (values in {0, 1, 2}): the mask-based reverse and forward modes give exactly PyTorch's
    routing (float64 NumPy reference), also with dilation, where JAX's own max-pool VJP is not implemented."""
    k, s, p, d, ceil_mode, h, w = params
    if ref_pool_out(h, k, s, p, d, ceil_mode) < 1 or ref_pool_out(w, k, s, p, d, ceil_mode) < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(2, h, w, 2)).astype(np.float32)
    t = rng.normal(size=x.shape).astype(np.float32)
    out_shape = (2, ref_pool_out(h, k, s, p, d, ceil_mode), ref_pool_out(w, k, s, p, d, ceil_mode), 2)
    cot = rng.normal(size=out_shape).astype(np.float32)
    pool = lambda x: cnn.max_pool2d(x, k, s, p, d, ceil_mode)  # noqa: E731
    g, jt = jax.jit(lambda x, t: (jax.grad(lambda x: jnp.vdot(pool(x), cot))(x), jax.jvp(pool, (x,), (t,))[1]))(x, t)
    g_ref, jt_ref = ref_max_pool_derivatives(x, cot, t, k, s, p, d, ceil_mode)
    np.testing.assert_allclose(np.asarray(g), g_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(jt), jt_ref)


def test_max_pool_gradient_check_can_fail():
    """Negative case: routing each window's gradient to its *last* maximum differs from the reference on ties."""
    x = jnp.zeros((1, 4, 4, 1))  # every window is a tie
    ref = jax.grad(lambda x: _lax_max_pool(x, 2, 2, 0, 1, False).sum())(x)
    ours = jax.grad(lambda x: cnn.max_pool2d(x, 2, 2).sum())(x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    last = jax.grad(lambda x: _lax_max_pool(jnp.flip(x, (1, 2)), 2, 2, 0, 1, False).sum())(x)  # last maximum
    assert not np.array_equal(np.asarray(last), np.asarray(ref))


@given(pool_params, st.booleans())
def test_avg_pool_matches_pytorch_definition(params, count_include_pad):
    k, s, p, _, ceil_mode, h, w = params
    if ref_pool_out(h, k, s, p, 1, ceil_mode) < 1 or ref_pool_out(w, k, s, p, 1, ceil_mode) < 1:
        return
    x = np.random.default_rng(h * 17 + w).normal(size=(2, h, w, 3))
    y = cnn.avg_pool2d(jnp.asarray(x, jnp.float32), k, s, p, ceil_mode, count_include_pad)
    np.testing.assert_allclose(np.asarray(y), ref_avg_pool(x, k, s, p, ceil_mode, count_include_pad),
                               rtol=1e-5, atol=1e-6)


@given(st.integers(1, 15), st.integers(1, 15), st.integers(1, 8), st.integers(1, 8))
def test_adaptive_avg_pool_bins(h, w, oh, ow):
    x = np.random.default_rng(h + 7 * w).normal(size=(2, h, w, 2))
    y = cnn.adaptive_avg_pool2d(jnp.asarray(x, jnp.float32), (oh, ow))
    np.testing.assert_allclose(np.asarray(y), ref_adaptive_avg(x, oh, ow), rtol=1e-5, atol=1e-6)


def test_ceil_mode_drops_window_starting_in_padding():
    # size 6, k 2, s 2, p 1, ceil: naive ceil gives 5 windows but the last would start in the right padding.
    assert conv_output_size(6, 2, 2, 1, 1, ceil_mode=True) == 4
    assert cnn.max_pool2d(jnp.zeros((1, 6, 6, 1)), 2, 2, 1, ceil_mode=True).shape == (1, 4, 4, 1)


# ---------------------------------------------------------------- convolution
def ref_conv(x, w, stride, pad, dil, groups):
    """Direct float64 convolution, NHWC x HWIO, PyTorch semantics."""
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, oh, ow, o))
    og = o // groups
    for g in range(groups):
        for a in range(kh):
            for b in range(kw):
                patch = xp[:, a * dil: a * dil + stride * (oh - 1) + 1: stride,
                           b * dil: b * dil + stride * (ow - 1) + 1: stride, g * cg:(g + 1) * cg]
                y[..., g * og:(g + 1) * og] += patch @ w[a, b, :, g * og:(g + 1) * og]
    return y


@pytest.mark.slow  # > 5 s (CI durations)
@settings(max_examples=12)  # the module's forwarding of each argument: a wrong one fails most examples
@given(st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.sampled_from([1, 2]),
       st.integers(5, 10))
def test_conv_module_matches_direct_convolution(k, stride, pad, dil, groups, size):
    rng = np.random.default_rng(k * 100 + size)
    x = rng.normal(size=(2, size, size + 1, 4))
    conv = cnn.Conv(6, k, stride, pad, dil, groups)
    variables = conv.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
    y = conv.apply(variables, jnp.asarray(x, jnp.float32))
    w = np.asarray(variables["params"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(y), ref_conv(x, w, stride, pad, dil, groups) + b, rtol=1e-4, atol=1e-4)


def test_conv_default_init_is_pytorch_uniform():
    conv = cnn.Conv(64, 3)
    params = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 32)))["params"]
    bound = 1 / math.sqrt(3 * 3 * 32)
    for leaf in (params["kernel"], params["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.9 * bound  # really spans the range


def test_conv_rejects_bad_groups_and_sizes():
    with pytest.raises(ValueError, match="divisible by groups"):
        cnn.Conv(6, 3, groups=4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 6)))
    with pytest.raises(cnn.InputTooSmallError, match="would produce"):
        cnn.Conv(6, 5).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


@pytest.mark.slow  # > 5 s (CI durations)
def test_bf16_compute_keeps_fp32_params():
    conv = cnn.Conv(8, 3, padding=1, dtype=jnp.bfloat16)
    bn = cnn.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    x = jnp.ones((2, 6, 6, 3), jnp.float32)
    v = conv.init(jax.random.key(0), x)
    assert v["params"]["kernel"].dtype == jnp.float32
    y = conv.apply(v, x)
    assert y.dtype == jnp.bfloat16
    vb = bn.init(jax.random.key(0), y)
    assert vb["params"]["scale"].dtype == jnp.float32 and vb["batch_stats"]["mean"].dtype == jnp.float32
    z, _ = bn.apply(vb, y, mutable=["batch_stats"])
    assert z.dtype == jnp.bfloat16


# ---------------------------------------------------------------- BatchNorm
def test_batchnorm_train_and_running_stats_follow_pytorch():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(4, 5, 5, 3))
    bn = cnn.BatchNorm(use_running_average=False)
    v = bn.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
    y, upd = bn.apply(v, jnp.asarray(x, jnp.float32), mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    n = 4 * 5 * 5
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    # eval mode uses the running statistics and changes nothing
    z = cnn.BatchNorm(use_running_average=True).apply({**v, **upd}, jnp.asarray(x, jnp.float32))
    rm, rv = np.asarray(upd["batch_stats"]["mean"]), np.asarray(upd["batch_stats"]["var"])
    np.testing.assert_allclose(np.asarray(z), (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-4, atol=1e-4)


def test_batchnorm_does_not_update_when_collection_immutable():
    bn = cnn.BatchNorm(use_running_average=False)
    x = jnp.arange(24.0).reshape(2, 2, 2, 3)
    v = bn.init(jax.random.key(0), x)
    y = bn.apply(v, x)  # training-mode normalisation without a mutable collection: allowed, no update
    chex.assert_shape(y, x.shape)


def test_stochastic_depth_only_in_training():
    sd = cnn.StochasticDepth(0.5)
    x = jnp.ones((64, 2, 2, 1))
    assert (sd.apply({}, x, deterministic=True) == x).all()
    y = sd.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    kept = np.asarray(y[:, 0, 0, 0])
    assert set(np.unique(kept)) <= {0.0, 2.0} and 0 < (kept == 0).sum() < 64


def test_layernorm_is_two_pass_pytorch_layernorm():
    x = np.random.default_rng(1).normal(1e3, 1.0, size=(2, 3, 3, 8))
    ln = cnn.LayerNorm()
    v = ln.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
    y = ln.apply(v, jnp.asarray(x, jnp.float32))
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-3, atol=2e-3)
    assert isinstance(ln, nn.LayerNorm)


# ---------------------------------------------------------------- torch itself
def _every_window_reads_input(size, k, s, p, d, ceil_mode) -> bool:
    return all(any(0 <= i * s - p + a * d < size for a in range(k)) for i in range(ref_pool_out(size, k, s, p, d,
                                                                                                  ceil_mode)))


@pytest.mark.parity
@pytest.mark.slow  # ~10 s of hypothesis examples against torch
@given(pool_params, st.booleans())
def test_pools_equal_torch(params, count_include_pad):
    torch = pytest.importorskip("torch")
    k, s, p, d, ceil_mode, h, w = params
    if ref_pool_out(h, k, s, p, d, ceil_mode) < 1 or ref_pool_out(w, k, s, p, d, ceil_mode) < 1:
        return
    x = np.random.default_rng(h * 13 + w).normal(size=(2, h, w, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    tm = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil_mode).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(cnn.max_pool2d(jnp.asarray(x), k, s, p, d, ceil_mode)), tm, atol=1e-6)
    # gradients with many equal values per window, where the routing shows; not when a (dilated) window holds
    # only padding: PyTorch's backward then indexes outside the input and aborts the process
    if _every_window_reads_input(h, k, s, p, d, ceil_mode) and _every_window_reads_input(w, k, s, p, d, ceil_mode):
        ties = np.round(x).astype(np.float32)
        tt = torch.from_numpy(ties).permute(0, 3, 1, 2).requires_grad_()
        torch.nn.functional.max_pool2d(tt, k, s, p, d, ceil_mode).pow(2).sum().backward()
        ours = jax.jit(jax.grad(lambda z: jnp.sum(cnn.max_pool2d(z, k, s, p, d, ceil_mode) ** 2)))(
            jnp.asarray(ties))
        np.testing.assert_allclose(np.asarray(ours), tt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    if ref_pool_out(h, k, s, p, 1, ceil_mode) >= 1 and ref_pool_out(w, k, s, p, 1, ceil_mode) >= 1:
        ta = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil_mode, count_include_pad).permute(0, 2, 3, 1).numpy()
        ours = cnn.avg_pool2d(jnp.asarray(x), k, s, p, ceil_mode, count_include_pad)
        np.testing.assert_allclose(np.asarray(ours), ta, rtol=1e-5, atol=1e-6)
    ad = torch.nn.functional.adaptive_avg_pool2d(xt, (max(1, h // 2 + 1), 3)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(cnn.adaptive_avg_pool2d(jnp.asarray(x), (max(1, h // 2 + 1), 3))), ad,
                               rtol=1e-5, atol=1e-6)
