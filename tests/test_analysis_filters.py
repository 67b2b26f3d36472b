"""Filters, 1x1 convolutions, parameter counts, pooling as convolution, and output sizes against XLA's shapes."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax import lax

from cnnjax import nn as cnn
from cnnjax.analysis import filters as flt
from cnnjax.ops import conv_output_size


def test_lecture_kernels():
    k = flt.KERNELS
    np.testing.assert_array_equal(k["edge4"], [[0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    np.testing.assert_array_equal(k["edge8"], [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(k["sharpen"], [[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    np.testing.assert_allclose(k["box_blur"], np.full((3, 3), 1 / 9))
    assert k["identity"].sum() == 1 and k["identity"][1, 1] == 1
    g = flt.gaussian_kernel(5, 1.0)
    assert g.shape == (5, 5) and abs(g.sum() - 1) < 1e-6 and g[2, 2] == g.max()
    np.testing.assert_allclose(g, g.T)
    assert flt.kernel("gaussian:7:2").shape == (7, 7)
    with pytest.raises(ValueError, match="unknown filter"):
        flt.kernel("nope")


def test_filters_on_the_photo():
    photo = flt.load_photo(32)
    assert photo.shape == (32, 32, 3) and photo.dtype == np.float32 and photo.min() >= 0 and photo.max() <= 1
    x = jnp.asarray(photo)[None]
    chex.assert_trees_all_close(flt.apply_filter(x, flt.KERNELS["identity"]), x)
    # sum-zero kernels kill constants; sum-one kernels keep them (away from the zero-padded border)
    c = jnp.full((1, 9, 9, 3), 0.7)
    for name in ("edge4", "edge8", "sobel_x", "sobel_y"):
        chex.assert_trees_all_close(flt.apply_filter(c, flt.kernel(name))[:, 1:-1, 1:-1], 0.0, atol=1e-6)
    for name in ("sharpen", "box_blur"):
        chex.assert_trees_all_close(flt.apply_filter(c, flt.kernel(name))[:, 1:-1, 1:-1], 0.7, atol=1e-6)
    # Sobel-x of a horizontal ramp x is 8 (1 * 2 + 2 * 2 + 1 * 2) in the interior, Sobel-y is 0
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (1, 8, 8, 1))
    chex.assert_trees_all_close(flt.apply_filter(ramp, flt.KERNELS["sobel_x"])[:, 1:-1, 1:-1], 8.0)
    chex.assert_trees_all_close(flt.apply_filter(ramp, flt.KERNELS["sobel_y"])[:, 1:-1, 1:-1], 0.0)


def test_rgb_to_gray_and_red_plus_green_are_1x1_convs():
    rng = np.random.default_rng(0)
    x = rng.random((2, 5, 6, 3), np.float32)
    w = flt.rgb_to_gray_conv()
    assert w.shape == (1, 1, 3, 1)
    gray = flt.conv1x1(jnp.asarray(x), w)
    np.testing.assert_allclose(gray[..., 0], 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2], rtol=1e-6)
    w4 = flt.append_red_plus_green_conv()
    assert w4.shape == (1, 1, 3, 4)
    y = np.asarray(flt.conv1x1(jnp.asarray(x), w4))
    np.testing.assert_allclose(y[..., :3], x, rtol=1e-6)
    np.testing.assert_allclose(y[..., 3], x[..., 0] + x[..., 1], rtol=1e-6)


@given(k=st.integers(1, 7), s=st.integers(1, 16), t=st.integers(1, 16), bias=st.booleans(), g=st.sampled_from([1, 2]))
def test_conv_param_count_matches_the_module(k, s, t, bias, g):
    assume(s % g == 0 and t % g == 0)
    conv = cnn.Conv(t, k, groups=g, use_bias=bias)
    shapes = jax.eval_shape(lambda: conv.init(jax.random.key(0), jnp.zeros((1, k + 2, k + 2, s))))
    counted = sum(math.prod(v.shape) for v in jax.tree.leaves(shapes))
    assert counted == flt.conv_param_count(k, s, t, bias=bias, groups=g)
    if g == 1 and bias:
        assert counted == k * k * s * t + t


@settings(max_examples=10)
@given(k=st.integers(1, 4), extra=st.sampled_from([0, 3]), c=st.sampled_from([1, 3]))
def test_avg_pool_is_a_depthwise_conv_with_stride_k(k, extra, c):
    n = 2 * k + extra
    x = jnp.asarray(np.random.default_rng(k * 10 + extra).standard_normal((1, n, n, c)), jnp.float32)
    chex.assert_trees_all_close(flt.avg_pool_as_conv(x, k), cnn.avg_pool2d(x, k, k), atol=1e-5)


# ----------------------------------------------------------------------------- conv_output_size vs XLA shapes

geometry = st.tuples(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4), st.integers(0, 3), st.integers(1, 3))


@given(geometry, st.integers(0, 3))
def test_conv_output_size_is_xlas_conv_shape(geom, extra_hi):
    size, k, s, p, d = geom
    pads = (p, p + extra_hi)
    assume(size + pads[0] + pads[1] >= d * (k - 1) + 1)
    out = jax.eval_shape(lambda x, w: lax.conv_general_dilated(x, w, (s,), [pads], rhs_dilation=(d,),
                                                               dimension_numbers=("NHC", "HIO", "NHC")),
                         jax.ShapeDtypeStruct((1, size, 1), jnp.float32), jax.ShapeDtypeStruct((k, 1, 1), jnp.float32))
    assert out.shape[1] == conv_output_size(size, k, s, pads, d)


@given(geometry)
def test_conv_output_size_is_xlas_reduce_window_shape(geom):
    size, k, s, p, d = geom
    assume(size + 2 * p >= d * (k - 1) + 1)
    out = jax.eval_shape(lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (k,), (s,), [(p, p)], window_dilation=(d,)),
                         jax.ShapeDtypeStruct((size,), jnp.float32))
    assert out.shape[0] == conv_output_size(size, k, s, p, d)


@given(geometry, st.booleans())
def test_conv_output_size_is_max_pool2d_shape_with_ceil_mode(geom, ceil_mode):
    size, k, s, p, d = geom
    assume(p <= k // 2 and size + 2 * p >= d * (k - 1) + 1)
    out = jax.eval_shape(lambda x: cnn.max_pool2d(x, k, s, p, d, ceil_mode),
                         jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
    expected = conv_output_size(size, k, s, p, d, ceil_mode)
    assert out.shape[1:3] == (expected, expected)
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.max_pool2d(torch.zeros(1, 1, size, size), k, s, p, d, ceil_mode=ceil_mode)
    assert tuple(ref.shape[2:]) == (expected, expected)
