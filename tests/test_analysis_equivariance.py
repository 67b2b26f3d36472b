"""Shift equivariance laws as properties (hypothesis + chex), the negative cases, consistency, BlurPool."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnnjax import models
from cnnjax import nn as cnn
from cnnjax.analysis import equivariance as eq
from cnnjax.analysis import random_variables
from cnnjax.models.resnet import BlurPool
from cnnjax.ops import conv2d

TOL = 1e-4  # relative, float32
BROKEN = 1e-2  # a broken law is off by far more than rounding


def _arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


# few distinct shapes (each new shape compiles the eager ops once); shifts and data vary freely
sizes = st.sampled_from([8, 11])
kernels = st.sampled_from([1, 3, 5])
shifts = st.tuples(st.integers(-6, 6), st.integers(-6, 6))
seeds = st.integers(0, 2**16)
few = settings(max_examples=8)


@few
@given(sizes, kernels, shifts, seeds)
def test_circular_conv_commutes_with_every_circular_shift(n, k, shift, seed):
    x, w = _arrays(seed, (2, n, n + 1, 3), (k, k, 3, 4))
    fx = eq.conv_circular(x, w)
    chex.assert_trees_all_close(eq.conv_circular(eq.circular_shift(x, shift), w), eq.circular_shift(fx, shift),
                                atol=1e-4, rtol=1e-4)
    assert float(eq.equivariance_error(lambda z: eq.conv_circular(z, w), x, shift)) < TOL


@few
@given(sizes, st.sampled_from([3, 5]), shifts, seeds)
def test_zero_padded_conv_commutes_on_the_interior(n, k, shift, seed):
    r = k // 2
    assume(max(abs(shift[0]), abs(shift[1])) + 2 * r < n)
    x, w = _arrays(seed, (1, n, n, 2), (k, k, 2, 3))

    def f(z):
        return conv2d(z, w, padding=r)

    # translating (zero fill) the input translates the output, exactly where no window touches a border
    assert float(eq.equivariance_error(f, x, shift, mode="zeros", border=r)) < TOL
    # ... but not near the borders, for a circular shift of a zero-padded conv
    if shift != (0, 0):
        assert float(eq.equivariance_error(f, x, shift)) > BROKEN


@few
@given(st.sampled_from([2, 3]), st.sampled_from([3, 4]), kernels, st.integers(-2, 2), st.integers(-2, 2), seeds)
def test_strided_conv_commutes_only_with_multiples_of_the_stride(s, m, k, a, b, seed):
    n = s * m
    x, w = _arrays(seed, (2, n, n, 2), (k, k, 2, 3))

    def f(z):
        return eq.conv_circular(z, w, s)

    assert float(eq.equivariance_error(f, x, (a * s, b * s))) < TOL
    # a shift that is not a multiple of the stride: the law breaks (aliasing)
    assert float(eq.equivariance_error(f, x, (a * s + 1, b * s))) > BROKEN


@few
@given(sizes, shifts, seeds)
def test_compositions_stay_equivariant_and_global_pooling_is_invariant(n, shift, seed):
    x, w1, w2 = _arrays(seed, (2, n, n, 3), (3, 3, 3, 5), (5, 5, 5, 4))

    def stack(z):
        return eq.conv_circular(jax.nn.gelu(eq.conv_circular(jax.nn.relu(z), w1)), w2)

    assert float(eq.equivariance_error(stack, x, shift)) < TOL
    assert float(eq.equivariance_error(lambda z: cnn.global_avg_pool(stack(z)), x, shift)) < TOL


@few
@given(st.sampled_from([3, 4]), seeds)
def test_max_pool_and_stride_break_the_law_for_odd_shifts(m, seed):
    (x,) = _arrays(seed, (2, 2 * m, 2 * m, 3))

    def pool(z):
        return cnn.max_pool2d(z, 2, 2)

    assert float(eq.equivariance_error(pool, x, (2, -2))) < TOL  # whole windows move: fine
    assert float(eq.equivariance_error(pool, x, (1, 0))) > BROKEN
    assert float(eq.equivariance_error(lambda z: z[:, ::2, ::2], x, (0, 1))) > BROKEN  # plain subsampling


@few
@given(st.sampled_from([4, 6]), shifts, seeds)
def test_a_dense_layer_is_not_equivariant(n, shift, seed):
    assume(shift[0] % n or shift[1] % n)
    x, w = _arrays(seed, (2, n, n, 2), (n * n * 2, n * n * 2))

    def dense(z):
        return (z.reshape(z.shape[0], -1) @ w).reshape(z.shape)

    assert float(eq.equivariance_error(dense, x, shift)) > BROKEN


def test_translate_and_shift_each():
    x = jnp.arange(2 * 4 * 5 * 1, dtype=jnp.float32).reshape(2, 4, 5, 1)
    t = eq.translate(x, (1, -2), fill=-1.0)
    np.testing.assert_array_equal(t[:, 1:, :3], x[:, :3, 2:])
    assert float(t[:, 0].max()) == -1 and float(t[:, :, 3:].max()) == -1
    s = jnp.asarray([[1, -2], [0, 3]])
    chex.assert_trees_all_close(eq.shift_each(x, s, "zeros", -1.0)[0], t[0])
    chex.assert_trees_all_close(eq.shift_each(x, s)[1], eq.circular_shift(x, (0, 3))[1])


def test_consistency_of_an_invariant_and_a_non_invariant_classifier():
    (x,) = _arrays(0, (64, 8, 8, 1))
    labels = jnp.zeros(64, jnp.int32)
    w = _arrays(1, (8 * 8, 3))[0]

    def invariant(z):  # global pooling of a circular conv: exactly shift invariant
        return jnp.stack([z.mean((1, 2, 3)), (z**2).mean((1, 2, 3)), jnp.abs(z).mean((1, 2, 3))], -1)

    def dense(z):
        return z.reshape(z.shape[0], -1) @ w

    res = eq.consistency(invariant, x, jax.random.key(0), max_shift=3, labels=labels)
    assert res["consistency"] == 1.0 and set(res) == {"consistency", "accuracy", "shifted_accuracy"}
    assert eq.consistency(dense, x, jax.random.key(0), max_shift=3)["consistency"] < 0.8
    prof = eq.invariance_profile(invariant, x[:8], max_shift=1)
    assert prof.shape == (3, 3) and np.allclose(prof, prof[1, 1])


# --------------------------------------------------------------------------------------------- BlurPool


def test_blurpool_shapes_constants_and_smoothing():
    x = jnp.full((1, 7, 8, 3), 2.5)
    y = BlurPool(2).apply({}, x)
    assert y.shape == (1, 4, 4, 3)
    chex.assert_trees_all_close(y, 2.5)  # renormalised borders: constants stay constant
    # a one-pixel checkerboard (the highest frequency) is removed in the interior; stride 2 would alias it
    checker = jnp.asarray(np.indices((8, 8)).sum(0) % 2, jnp.float32)[None, :, :, None]
    chex.assert_trees_all_close(BlurPool(2).apply({}, checker)[:, 1:-1, 1:-1], 0.5, atol=1e-6)


def _param_shapes(model, size):
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return jax.tree.map(lambda a: a.shape, v)


def test_antialias_keeps_parameters_shapes_and_the_default_model():
    for arch, size, extra in (("resnet18", 32, {}), ("resnet20", 32, {"shortcut": "B"})):
        plain = models.create(arch, **extra)
        assert plain.antialias is False
        aa = models.create(arch, antialias=True, **extra)
        assert _param_shapes(plain, size) == _param_shapes(aa, size)
    # same variables, same input: the option changes the function only when on
    model = models.create("resnet20", num_classes=4)
    x = _arrays(3, (2, 32, 32, 3))[0]
    v = random_variables(model, 32)
    y_plain = jax.jit(model.apply)(v, x)
    y_aa = jax.jit(models.create("resnet20", num_classes=4, antialias=True).apply)(v, x)
    assert y_plain.shape == y_aa.shape and not np.allclose(y_plain, y_aa)


def test_blurpool_makes_a_strided_layer_closer_to_equivariant():
    (x,) = _arrays(5, (4, 16, 16, 8))
    w = _arrays(6, (3, 3, 8, 8))[0]

    def strided(z):
        return eq.conv_circular(jax.nn.relu(eq.conv_circular(z, w)), w, 2)

    def blurred(z):
        y = jax.nn.relu(eq.conv_circular(z, w))
        return BlurPool(2).apply({}, eq.conv_circular(y, w))

    e_plain = float(eq.equivariance_error(strided, x, (1, 0), norm="l2"))
    e_blur = float(eq.equivariance_error(blurred, x, (1, 0), norm="l2"))
    assert e_blur < 0.5 * e_plain
    # and the globally pooled output becomes nearly invariant to a one-pixel shift
    inv_plain = float(eq.equivariance_error(lambda z: strided(z).mean((1, 2)), x, (1, 0), norm="l2"))
    inv_blur = float(eq.equivariance_error(lambda z: blurred(z).mean((1, 2)), x, (1, 0), norm="l2"))
    assert inv_blur < 0.3 * inv_plain
