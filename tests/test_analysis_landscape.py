"""Loss-landscape helpers (:mod:`cnnjax.analysis.landscape`): filter normalisation is exact per filter, the grid
Hessian is exact on quadratics, the non-convex share separates convex from saddle surfaces (a negative case),
and Lanczos on Hessian-vector products finds the extreme eigenvalues of a full Hessian from ``jax.hessian``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from cnnjax.analysis import landscape as L


def _params(seed: int, cin: int, cout: int, hidden: int) -> dict:
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    return {"conv": {"kernel": f(3, 3, cin, cout)}, "bn": {"scale": f(cout), "bias": f(cout)},
            "head": {"kernel": f(cout, hidden), "bias": f(hidden)}}


# few distinct shapes (each new shape compiles the eager ops once); the values vary freely
@pytest.mark.slow  # > 5 s (CI durations)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), cin=st.sampled_from([1, 3]), cout=st.sampled_from([1, 4]),
       hidden=st.sampled_from([1, 5]))
def test_filter_normalisation_gives_each_filter_the_weights_norm(seed, cin, cout, hidden):
    params = _params(seed, cin, cout, hidden)
    d = L.random_direction(jax.random.key(seed), params)
    assert jax.tree.structure(d) == jax.tree.structure(params)
    for name in ("conv", "head"):
        w, u = np.asarray(params[name]["kernel"]), np.asarray(d[name]["kernel"])
        axes = tuple(range(w.ndim - 1))  # a filter = one output channel (HWIO) / output unit (in, out)
        np.testing.assert_allclose(np.sqrt((u**2).sum(axes)), np.sqrt((w**2).sum(axes)), rtol=1e-5)
    assert not np.allclose(d["conv"]["kernel"], params["conv"]["kernel"])  # a random direction, not the weights
    for leaf in (d["bn"]["scale"], d["bn"]["bias"], d["head"]["bias"]):  # biases and BatchNorm: not moved
        assert not np.any(np.asarray(leaf))


def test_filter_normalisation_is_scale_invariant_and_checks_shapes():
    params = _params(0, 2, 3, 4)
    raw = jax.tree.map(lambda w: jax.random.normal(jax.random.key(1), w.shape), params)
    a = L.filter_normalize(raw, params)
    b = L.filter_normalize(jax.tree.map(lambda x: 7.0 * x, raw), params)  # the direction's scale does not matter
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)
    c = L.filter_normalize(raw, jax.tree.map(lambda w: 2.0 * w, params))  # twice the weights: twice the step
    np.testing.assert_allclose(c["conv"]["kernel"], 2 * a["conv"]["kernel"], rtol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        L.filter_normalize({"k": jnp.ones((2, 3))}, {"k": jnp.ones((3, 2))})


def _quadratic_surface(a: float, b: float, c: float, n: int = 7) -> tuple[np.ndarray, float]:
    x = np.linspace(-1, 1, n)
    al, be = np.meshgrid(x, x, indexing="ij")
    return a * al**2 + b * be**2 + c * al * be + 0.3 * al - 0.2 * be + 1.0, float(x[1] - x[0])


@settings(max_examples=30, deadline=None)
@given(a=st.floats(-5, 5), b=st.floats(-5, 5), c=st.floats(-5, 5))
def test_grid_hessian_is_exact_on_quadratics(a, b, c):
    f, h = _quadratic_surface(a, b, c)
    hess = L.grid_hessians(f, h, h)
    assert hess.shape == (5, 5, 2, 2)
    np.testing.assert_allclose(hess, np.broadcast_to([[2 * a, c], [c, 2 * b]], hess.shape), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(a=st.floats(0.05, 5), b=st.floats(0.05, 5), t=st.floats(-0.95, 0.95))
def test_nonconvex_share_zero_for_convex_one_for_saddle(a, b, t):
    c = t * 2 * np.sqrt(a * b)  # |c| < 2 sqrt(ab): positive definite
    convex, h = _quadratic_surface(a, b, c)
    assert L.nonconvex_share(convex, h, h) == 0.0
    saddle, _ = _quadratic_surface(a, -b, c)  # the negative case: indefinite everywhere
    assert L.nonconvex_share(saddle, h, h) == 1.0


def test_nonconvex_share_of_a_bumpy_surface_is_between():
    x = np.linspace(-1, 1, 11)
    al, be = np.meshgrid(x, x, indexing="ij")
    bumpy = al**2 + be**2 + 0.3 * np.cos(6 * al) * np.cos(6 * be)
    share = L.nonconvex_share(bumpy, x[1] - x[0], x[1] - x[0])
    assert 0.1 < share < 0.9
    assert L.nonconvex_share(np.zeros((5, 5))) == 0.0  # flat: nothing counts
    with pytest.raises(ValueError, match="3x3"):
        L.grid_hessians(np.zeros((2, 5)))


def test_loss_surface_matches_direct_evaluation():
    params = {"w": jnp.array([1.0, -2.0]), "m": jnp.array([[0.5, 1.0], [2.0, -1.0]])}
    d1 = {"w": jnp.array([1.0, 0.0]), "m": jnp.zeros((2, 2))}
    d2 = {"w": jnp.zeros(2), "m": jnp.array([[0.0, 1.0], [0.0, 0.0]])}

    def loss(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum(p["m"]) ** 2

    al, be = [-1.0, 0.0, 0.5], [-0.5, 0.25]
    s = L.loss_surface(loss, params, d1, d2, al, be)
    want = [[(1 + a) ** 2 + 4 + (2.5 + b) ** 2 for b in be] for a in al]
    np.testing.assert_allclose(s, want, rtol=1e-6)


def _mlp():
    k = jax.random.split(jax.random.key(3), 4)
    params = {"w1": 0.7 * jax.random.normal(k[0], (3, 4)), "b1": 0.1 * jax.random.normal(k[1], (4,)),
              "w2": 0.7 * jax.random.normal(k[2], (4, 2))}
    x = jax.random.normal(k[3], (16, 3))
    y = jnp.arange(16) % 2

    def loss(p):
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y])

    return loss, params


@pytest.mark.slow  # ~4 s: jax.hessian compile
def test_hvp_and_lanczos_match_the_full_hessian():
    loss, params = _mlp()
    flat, unravel = ravel_pytree(params)
    full = jax.hessian(lambda v: loss(unravel(v)))(flat)  # (n, n), n = 24
    eig = np.linalg.eigvalsh(np.asarray(full, np.float64))
    assert eig[0] < 0 < eig[-1]  # a non-convex point: both ends are tested
    hvp, n = L.hvp_fn(loss, params)
    v = jax.random.normal(jax.random.key(9), (n,))
    np.testing.assert_allclose(hvp(v), full @ v, rtol=1e-4, atol=1e-6)
    ritz = L.lanczos(hvp, n, n, jax.random.key(0))  # a full Krylov space: every eigenvalue
    np.testing.assert_allclose(ritz[[0, -1]], eig[[0, -1]], rtol=1e-3, atol=1e-5)
    few = L.lanczos(hvp, n, 10, jax.random.key(0))  # fewer steps: inside the spectrum, the top already close
    assert eig[0] - 1e-5 <= few[0] and few[-1] <= eig[-1] + 1e-5
    assert few[-1] == pytest.approx(eig[-1], rel=0.02)
    lo, hi = L.hessian_extremes(loss, params, iters=n)
    assert (lo, hi) == pytest.approx((eig[0], eig[-1]), rel=1e-3, abs=1e-5)
    assert L.curvature_ratio(lo, hi) == pytest.approx(abs(eig[0] / eig[-1]), rel=1e-2)


def test_lanczos_on_a_known_matrix_and_curvature_ratio():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    lam = np.array([-0.5, 0.01, 0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 2.0, 10.0])
    a = jnp.asarray(q @ np.diag(lam) @ q.T, jnp.float32)
    ritz = L.lanczos(lambda v: a @ v, 12, 30, jax.random.key(1))  # iters capped at n
    np.testing.assert_allclose(ritz, lam, atol=1e-4)
    assert L.curvature_ratio(-0.5, 10.0) == pytest.approx(0.05)
    assert L.curvature_ratio(0.2, 1.0) == pytest.approx(0.2) and L.curvature_ratio(0.0, 0.0) == 0.0
