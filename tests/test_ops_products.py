"""``cnnjax.ops.products.einsum``: 16-bit products accumulate in float32, forward and in both gradients.

References are float64 NumPy products of the bf16-rounded operands (and, for gradients, of the bf16-rounded
cotangent, which is what a mixed-precision backward multiplies). Tolerances separate float32 accumulation (error
~1e-7 of sum |a||b| before the final rounding) from bf16 accumulation (~2^-9 per partial sum).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax.ops import products

BF16 = jnp.bfloat16


def _bf16(rng, shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(BF16)


def _f64(a):
    return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


def _within_f32_accumulation(y, a, b, spec, out_dtype) -> None:
    """|y - ref| <= rounding to ``out_dtype`` + 1e-5 * sum |a||b| (float32 accumulation error with margin)."""
    ref = np.einsum(spec, _f64(a), _f64(b))
    scale = np.einsum(spec, np.abs(_f64(a)), np.abs(_f64(b)))
    ulp = 2.0 ** -8 if jnp.dtype(out_dtype) == BF16 else 2.0 ** -23
    bound = ulp * np.abs(ref) + 1e-5 * scale + 1e-30
    err = np.abs(_f64(y) - ref)
    assert (err <= bound).all(), f"max excess {(err - bound).max():.3g} ({spec})"


SPECS = {  # spec -> operand shapes from sizes (m, k, n, p)
    "mk,kn->mn": lambda m, k, n, p: ((m, k), (k, n)),
    "ptc,pco->pto": lambda m, k, n, p: ((p, m, k), (p, k, n)),
    "mgk,gko->mgo": lambda m, k, n, p: ((m, p, k), (p, k, n)),
}


@pytest.mark.slow  # > 5 s (CI durations)
@settings(max_examples=8)  # each example compiles one program (~0.4 s); a wrong accumulation fails any
@given(spec=st.sampled_from(sorted(SPECS)), m=st.integers(1, 40), k=st.integers(1, 300), n=st.integers(1, 24),
       p=st.integers(1, 3), out=st.sampled_from(["bf16", "f32"]), seed=st.integers(0, 2**16))
def test_mixed_product_and_gradients_against_float64(spec, m, k, n, p, out, seed):
    rng = np.random.default_rng(seed)
    sa, sb = SPECS[spec](m, k, n, p)
    a, b = _bf16(rng, sa), _bf16(rng, sb)
    out_dtype = BF16 if out == "bf16" else jnp.float32
    g = jnp.asarray(rng.normal(size=jax.eval_shape(lambda: jnp.einsum(spec, a, b)).shape), out_dtype)

    @jax.jit
    def value_and_grads(a, b, g):
        y, vjp = jax.vjp(lambda a, b: products.einsum(spec, a, b, preferred_element_type=out_dtype), a, b)
        return y, *vjp(g)

    y, ga, gb = value_and_grads(a, b, g)
    assert y.dtype == out_dtype
    _within_f32_accumulation(y, a, b, spec, out_dtype)
    assert ga.dtype == BF16 and gb.dtype == BF16
    ins, res = spec.split("->")
    ia, ib = ins.split(",")
    g16 = g.astype(BF16)  # the backward multiplies the cotangent rounded to the operand dtype
    _within_f32_accumulation(ga, g16, b, f"{res},{ib}->{ia}", BF16)
    _within_f32_accumulation(gb, a, g16, f"{ia},{res}->{ib}", BF16)


def test_long_contraction_split_gives_the_same_kernel_gradient():
    """The kernel gradient over N*H*W >= LONG_AXIS_MIN rows is computed split in two, smaller operand first."""
    rng = np.random.default_rng(0)
    m = products.LONG_AXIS_MIN * 2
    for k, n in ((24, 8), (8, 24)):  # either operand the smaller one
        a, b = _bf16(rng, (m, k)), _bf16(rng, (k, n))
        g = _bf16(rng, (m, n))
        _, vjp = jax.vjp(lambda a, b: products.einsum("mk,kn->mn", a, b), a, b)
        _within_f32_accumulation(vjp(g)[1], a, g, "mk,mn->kn", BF16)


def test_bound_detects_bf16_accumulation():
    """Negative case: a product accumulated in bf16 (running sum rounded every step) fails the bound above."""
    rng = np.random.default_rng(1)
    a, b = _bf16(rng, (4, 512)), _bf16(rng, (512, 3))
    terms = _f64(a)[:, :, None] * _f64(b)[None, :, :]
    acc = np.zeros((4, 3), ml_dtypes.bfloat16)
    for i in range(terms.shape[1]):
        acc = (acc.astype(np.float64) + terms[:, i]).astype(ml_dtypes.bfloat16)
    with pytest.raises(AssertionError):
        _within_f32_accumulation(jnp.asarray(acc.astype(np.float32)), a, b, "mk,kn->mn", jnp.float32)


def _grad_dot_types(product) -> list[str]:
    """The (lhs, rhs) -> result element types of every dot in the lowered value-and-gradient computation."""
    a, b = jnp.ones((8, 16), BF16), jnp.ones((16, 4), BF16)
    f = jax.value_and_grad(lambda a, b: product(a, b).astype(jnp.float32).sum(), (0, 1))
    text = jax.jit(f).lower(a, b).as_text()
    types = re.findall(r"stablehlo.dot_general.*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\) -> tensor<[^>]*x(\w+)>",
                       text)
    assert len(types) == 3, text
    return sorted(set(types))


def test_all_three_products_are_bf16_with_float32_accumulation():
    assert _grad_dot_types(lambda a, b: products.einsum("mk,kn->mn", a, b)) == [("bf16", "bf16", "f32")]
    # negative case: JAX's own gradient of a bf16 product with float32 output multiplies a float32 cotangent
    jax_own = _grad_dot_types(lambda a, b: jnp.einsum("mk,kn->mn", a, b, preferred_element_type=jnp.float32))
    assert jax_own != [("bf16", "bf16", "f32")]


def test_float32_operands_are_plain_einsum():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
    np.testing.assert_array_equal(products.einsum("mk,kn->mn", a, b), jnp.einsum("mk,kn->mn", a, b))
