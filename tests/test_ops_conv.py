"""Convolution algorithms agree with ``lax.conv_general_dilated`` (values and gradients) for random shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from cnnjax.ops import CONV_IMPLS, autotune, conv2d

conv_cases = st.tuples(
    st.integers(1, 2),          # batch
    st.integers(1, 9),          # height
    st.integers(1, 9),          # width
    st.sampled_from([1, 2, 4]),  # groups
    st.integers(1, 3),          # in channels per group
    st.integers(1, 3),          # out channels per group
    st.integers(1, 3),          # kernel
    st.integers(1, 3),          # stride
    st.integers(0, 2),          # padding
    st.integers(1, 2),          # dilation
)


def _reference(x, w, s, p, d, g):
    return lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g,
                                    precision=lax.Precision.HIGHEST)


# winograd and fft have their own, deeper property tests (tests/test_ops_algorithms.py); auto is tested in
# tests/test_ops_autotune.py (it times candidates, too slow per hypothesis example)
@pytest.mark.parametrize("impl", ["gemm", "fast"])
@settings(max_examples=6, deadline=None)  # each example compiles forward and both gradients (one jit each side)
@given(conv_cases)
def test_algorithm_equals_lax_conv_with_gradients(impl, case):
    n, h, w_, g, cg, og, k, s, p, d = case
    if h + 2 * p < d * (k - 1) + 1 or w_ + 2 * p < d * (k - 1) + 1:
        return  # no valid output
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = jnp.asarray(rng.normal(size=(n, h, w_, g * cg)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cg, g * og)), jnp.float32)
    ref_shape = jax.eval_shape(lambda x, w: _reference(x, w, s, p, d, g), x, w).shape
    cot = jnp.asarray(rng.normal(size=ref_shape), jnp.float32)

    def value_and_grads(f):  # the output and both gradients in one compiled program (eager: one per op)
        @jax.jit
        def run(x, w, cot):
            y, vjp = jax.vjp(f, x, w)
            return (y, *vjp(cot))
        return [np.asarray(a) for a in run(x, w, cot)]

    with autotune.settings(fast_impl="rule"):  # fast: the CPU rule, not the suite's lax.conv (tests/conftest.py)
        ours = value_and_grads(lambda x, w: conv2d(x, w, stride=s, padding=p, dilation=d, groups=g, impl=impl))
    ref = value_and_grads(lambda x, w: _reference(x, w, s, p, d, g))
    assert ours[0].shape == ref_shape
    for a, b in zip(ours, ref, strict=True):  # output, d/dx, d/dw
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unknown_impl_lists_choices():
    with pytest.raises(ValueError, match="valid choices: xla, gemm"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="winograd9")
    assert set(CONV_IMPLS) == {"xla", "gemm", "winograd", "fft", "fast", "auto"}


def test_negative_check_detects_a_wrong_kernel_layout():
    """The comparison above can fail: a kernel flipped spatially (correlation vs convolution) does not match."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)
    flipped = conv2d(x, w[::-1, ::-1], padding=1, impl="gemm")
    assert not np.allclose(np.asarray(flipped), np.asarray(_reference(x, w, 1, 1, 1, 1)), atol=1e-3)


@pytest.mark.parametrize("impl", ["gemm", "fast"])
def test_depthwise_shift_add_equals_lax_conv(impl):
    """The depthwise path (a multiply-add of shifted views): stride 2, dilation 2, asymmetric padding, values and
    both gradients in fp32; bf16 accumulates in float32 (error at bf16 rounding of the output, not of each tap)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 11, 9, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 6)), jnp.float32)
    pad = ((1, 2), (0, 1))

    @jax.jit  # one compile each (and one per dtype), not one per op
    def ref(x, w):
        return lax.conv_general_dilated(x, w, (2, 2), pad, rhs_dilation=(2, 2), feature_group_count=6,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)

    @jax.jit
    def ours(x, w):
        with autotune.settings(fast_impl="rule"):  # fast: the CPU rule (depthwise: gemm), not the suite's lax.conv
            return conv2d(x, w, stride=2, padding=pad, dilation=2, groups=6, impl=impl)

    np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(ref(x, w)), rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.normal(size=ref(x, w).shape), jnp.float32)
    for a, b in zip(jax.grad(lambda x, w: jnp.vdot(ours(x, w), cot), (0, 1))(x, w),
                    jax.grad(lambda x, w: jnp.vdot(ref(x, w), cot), (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    exact = ref(xb.astype(jnp.float32), wb.astype(jnp.float32))
    low = ours(xb, wb)
    assert low.dtype == jnp.bfloat16
    err = float(jnp.max(jnp.abs(low.astype(jnp.float32) - exact)) / jnp.max(jnp.abs(exact)))
    assert err < 2 ** -8  # one bf16 rounding of the result
    wide = ours(xb, wb) if impl == "fast" else conv2d(xb, wb, stride=2, padding=pad, dilation=2, groups=6,
                                                       impl=impl, preferred_element_type=jnp.float32)
    if impl == "gemm":
        assert wide.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(wide), np.asarray(exact), rtol=1e-5, atol=1e-5)


def test_lax_convolutions_makes_every_impl_one_lax_conv():
    """Inside ``lax_convolutions()`` each impl traces to one ``conv_general_dilated`` (what the receptive-field
    walker reads); outside, ``fast`` on a wide 3x3 layer (Winograd) has none — the negative case."""
    from cnnjax.ops import lax_convolutions

    x, w = jnp.ones((1, 16, 16, 64)), jnp.ones((3, 3, 64, 64))

    def prims(impl):
        with autotune.settings(fast_impl="rule"):
            eqns = jax.make_jaxpr(lambda x, w: conv2d(x, w, padding=1, impl=impl))(x, w).jaxpr.eqns
        return [e.primitive.name for e in eqns]

    assert "conv_general_dilated" not in prims("fast")
    with lax_convolutions():
        for impl in ("fast", "gemm", "winograd", "fft"):
            assert prims(impl) == ["conv_general_dilated"], impl
    assert "conv_general_dilated" not in prims("fast")  # the block ended
