"""Per-channel scale/shift and bias in bf16: parameter gradients summed in float32 (cnnjax/nn/channelwise.py),
checked against float64 NumPy sums of the same bf16 values; the plain bf16 formula is the negative case."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax import nn as cnn
from cnnjax.nn.channelwise import add_bias, scale_shift

SHAPE = (8, 32, 32, 4)  # 8192 positions per channel


def _data(dtype=jnp.bfloat16, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=SHAPE), dtype)
    g = jnp.asarray(rng.normal(size=SHAPE), dtype)
    return x, g


def _rel(a, ref):
    return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.mean(np.abs(ref)))


def test_batchnorm_scale_and_bias_gradients_sum_in_float32_for_bf16():
    x, g = _data()
    bn = cnn.BatchNorm(dtype=jnp.bfloat16)
    v = jax.jit(bn.init, static_argnums=2)(jax.random.key(0), x, False)

    @jax.jit
    def grads(params, x, g):
        def f(p):
            y, _ = bn.apply({"params": p, "batch_stats": v["batch_stats"]}, x, False, mutable=["batch_stats"])
            return jnp.vdot(y.astype(jnp.float32), g.astype(jnp.float32))
        return jax.grad(f)(params)

    gr = grads(v["params"], x, g)
    xd, gd = np.asarray(x, np.float64), np.asarray(g, np.float64)
    xhat = (xd - xd.mean((0, 1, 2))) / np.sqrt(xd.var((0, 1, 2)) + 1e-5)
    assert _rel(gr["scale"], (gd * xhat).sum((0, 1, 2))) < 1e-2  # x̂ itself is bf16-rounded in the layer
    assert _rel(gr["bias"], gd.sum((0, 1, 2))) < 1e-4


def test_plain_bf16_affine_gradients_are_far_off_the_negative_case():
    """What JAX's own differentiation of ``x * m + s`` in bf16 gives (the layer before this fix): sums in bf16."""
    x, g = _data()
    m, s = jnp.ones(4), jnp.zeros(4)

    @jax.jit
    def both(x, m, s, g):
        plain = jax.vjp(lambda m, s: x * m.astype(x.dtype) + s.astype(x.dtype), m, s)[1](g)
        ours = jax.vjp(lambda m, s: scale_shift(x, m, s), m, s)[1](g)
        return plain, ours

    plain, ours = both(x, m, s, g)
    xd, gd = np.asarray(x, np.float64), np.asarray(g, np.float64)
    ref_m, ref_s = (gd * xd).sum((0, 1, 2)), gd.sum((0, 1, 2))
    assert _rel(ours[0], ref_m) < 1e-4 and _rel(ours[1], ref_s) < 1e-4
    assert max(_rel(plain[0], ref_m), _rel(plain[1], ref_s)) > 1e-2


def test_conv_and_linear_bias_gradients_in_bf16():
    x, g = _data()
    conv = cnn.Conv(4, 1, dtype=jnp.bfloat16)
    v = conv.init(jax.random.key(0), x)
    gb = jax.jit(jax.grad(lambda p: jnp.vdot(conv.apply({"params": p}, x).astype(jnp.float32),
                                             g.astype(jnp.float32))))(v["params"])["bias"]
    assert gb.dtype == jnp.float32
    assert _rel(gb, np.asarray(g, np.float64).sum((0, 1, 2))) < 1e-4
    lin = cnn.Linear(4, dtype=jnp.bfloat16)
    xl, gl = x.reshape(-1, 4), g.reshape(-1, 4)
    vl = lin.init(jax.random.key(0), xl)
    gbl = jax.grad(lambda p: jnp.vdot(lin.apply({"params": p}, xl).astype(jnp.float32),
                                      gl.astype(jnp.float32)))(vl["params"])["bias"]
    assert _rel(gbl, np.asarray(gl, np.float64).sum(0)) < 1e-4


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]), st.integers(1, 3), st.integers(1, 5),
       st.integers(0, 2**16))
def test_forward_is_the_plain_formula_and_float32_gradients_are_jax_s(dtype, n, c, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 3, 2, c)), dtype)
    m, s = jnp.asarray(rng.normal(size=c), jnp.float32), jnp.asarray(rng.normal(size=c), jnp.float32)
    plain = x * m.astype(dtype) + s.astype(dtype)
    np.testing.assert_array_equal(np.asarray(scale_shift(x, m, s)), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(add_bias(x, s)), np.asarray(x + s.astype(dtype)))
    assert scale_shift(x, m, s).dtype == dtype
    if dtype == jnp.float32:  # plain JAX: the same gradients, and forward mode works (landscape's HVPs)
        g = jnp.asarray(rng.normal(size=x.shape), dtype)
        ours = jax.vjp(scale_shift, x, m, s)[1](g)
        ref = jax.vjp(lambda x, m, s: x * m + s, x, m, s)[1](g)
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        jax.jvp(lambda m: scale_shift(x, m, s), (m,), (m,))


def test_16_bit_forward_mode_is_refused_clearly():
    """The custom gradient has no forward mode: jvp through a bf16 scale_shift raises (rather than silently
    differentiating something else)."""
    x, _ = _data()
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda m: scale_shift(x, m, jnp.zeros(4)), (jnp.ones(4),), (jnp.ones(4),))
