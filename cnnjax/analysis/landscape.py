"""Loss landscapes (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", NeurIPS).

The loss around trained weights θ along two random directions δ, η, ``L(θ + α δ + β η)`` on a grid of (α, β),
with Li et al.'s *filter normalisation* so that surfaces of different networks are comparable, and two numbers
that summarise how rough a surface is:

* :func:`random_direction` / :func:`filter_normalize`: a Gaussian direction with every filter rescaled to the
  norm of the weights' filter; biases and BatchNorm parameters (every leaf with ndim <= 1) get direction 0
  (Li et al.'s ``ignore='biasbn'``: their plots keep them fixed);
* :func:`loss_surface`: ``L`` on the grid, one jitted call per point (compiled once per ``loss_fn``);
* :func:`grid_hessians` / :func:`nonconvex_share`: the 2x2 Hessian of the *sampled* surface at each interior
  grid point by central differences, and the share of points where it has a negative eigenvalue (the surface
  curves down along some direction of the plane: locally non-convex). A 2-D, grid-resolution analogue of Li et
  al.'s Fig. 7 maps of ``|λ_min / λ_max|``;
* :func:`hvp_fn` / :func:`lanczos`: eigenvalues of the full-parameter Hessian at θ by the Lanczos iteration on
  Hessian-vector products (``jax.jvp`` of ``jax.grad``: forward-over-reverse, never the matrix), and
  :func:`hessian_extremes` -> ``(λ_min, λ_max)`` whose ratio ``|λ_min / λ_max|`` Li et al. (§6, Fig. 7) use
  as the non-convexity of a point: near 0 the point is convex in every direction the Hessian sees, large means
  strong negative curvature beside the positive one.

Everything works on any pytree of parameters (flax ``params`` dicts); shapes follow flax: convolution kernels
HWIO ``(kh, kw, in, out)``, dense kernels ``(in, out)``, so a *filter* (one output channel / output unit) is a
slice along the last axis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any


def filter_normalize(direction: PyTree, params: PyTree, eps: float = 1e-10) -> PyTree:
    """Li et al.'s filter normalisation of ``direction`` (same structure and shapes as ``params``).

    For every leaf with ndim >= 2 (a conv kernel HWIO or a dense kernel (in, out)), each filter ``d[..., f]`` is
    rescaled to ``d_f / ||d_f|| * ||θ_f||`` (Frobenius norms over all axes but the last); leaves with ndim <= 1
    (biases, BatchNorm scales and offsets) become 0, as in Li et al.'s plots. ``eps`` guards a zero filter of
    the direction. Same dtypes as ``direction``.
    """

    def one(d: jax.Array, w: jax.Array) -> jax.Array:
        if d.shape != w.shape:
            raise ValueError(f"direction leaf {d.shape} does not match the parameter's {w.shape}")
        if d.ndim <= 1:
            return jnp.zeros_like(d)
        axes = tuple(range(d.ndim - 1))
        dn = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        wn = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))
        return (d * (wn / (dn + eps))).astype(d.dtype)

    return jax.tree.map(one, direction, params)


def random_direction(key: jax.Array, params: PyTree) -> PyTree:
    """A standard Gaussian pytree shaped like ``params``, filter-normalised (:func:`filter_normalize`)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    gauss = [jax.random.normal(k, jnp.shape(w), jnp.result_type(w)) for k, w in zip(keys, leaves, strict=True)]
    return filter_normalize(jax.tree.unflatten(treedef, gauss), params)


@functools.lru_cache(maxsize=32)
def _point_fn(loss_fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``L(θ + a u + b v, *args)``, jitted once per ``loss_fn`` (compiled once per shape)."""

    @jax.jit  # the pytrees are arguments, not constants baked into the program: one compile serves every run
    def at(p: PyTree, u: PyTree, v: PyTree, a: jax.Array, b: jax.Array, *args: Any) -> jax.Array:
        return loss_fn(jax.tree.map(lambda w, x, y: w + a * x + b * y, p, u, v), *args)

    return at


def loss_surface(loss_fn: Callable[..., jax.Array], params: PyTree, d1: PyTree, d2: PyTree,
                 alphas: Sequence[float], betas: Sequence[float], *args: Any) -> np.ndarray:
    """``L(θ + α d1 + β d2, *args)`` for every α of ``alphas`` (rows) and β of ``betas`` (columns): float64
    (len(alphas), len(betas)), in the units of ``loss_fn`` (e.g. nats of cross-entropy).

    ``loss_fn(params, *args)`` returns a scalar; ``args`` (data, BatchNorm statistics ...) are traced arguments,
    so a module-level ``loss_fn`` compiles once for all runs of the same shapes (the jitted evaluator is cached
    per ``loss_fn``); (α, β) are traced too: the grid compiles once.
    """
    at = _point_fn(loss_fn)
    out = np.empty((len(alphas), len(betas)), np.float64)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            out[i, j] = float(at(params, d1, d2, jnp.float32(a), jnp.float32(b), *args))
    return out


def grid_hessians(surface: np.ndarray, h_alpha: float = 1.0, h_beta: float = 1.0) -> np.ndarray:
    """The 2x2 Hessian of a sampled surface at each interior grid point by central differences.

    ``surface`` (A, B) on a uniform grid with steps ``h_alpha`` (rows) and ``h_beta`` (columns); returns float64
    (A - 2, B - 2, 2, 2): ``[[f_αα, f_αβ], [f_αβ, f_ββ]]`` at point (i + 1, j + 1). Exact for a quadratic.
    """
    f = np.asarray(surface, np.float64)
    if f.ndim != 2 or min(f.shape) < 3:
        raise ValueError(f"need a 2-D surface of at least 3x3 points, got shape {f.shape}")
    c = f[1:-1, 1:-1]
    faa = (f[2:, 1:-1] - 2 * c + f[:-2, 1:-1]) / h_alpha**2
    fbb = (f[1:-1, 2:] - 2 * c + f[1:-1, :-2]) / h_beta**2
    fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * h_alpha * h_beta)
    return np.stack([np.stack([faa, fab], -1), np.stack([fab, fbb], -1)], -2)


def nonconvex_share(surface: np.ndarray, h_alpha: float = 1.0, h_beta: float = 1.0, rtol: float = 1e-3,
                    ftol: float = 1e-5) -> float:
    """Share (0..1) of interior grid points that are locally non-convex: the discrete Hessian
    (:func:`grid_hessians`) has an eigenvalue ``λ_min < -max(rtol * |λ_max|, ftol * f / (h_α h_β))`` at that
    point, ``f`` the largest |value| of its 3x3 stencil.

    Both tolerances are per point, so a surface spanning many orders of magnitude (a steep wall at the grid's
    edge) does not hide the curvature near its minimum: ``rtol`` ignores negative curvature that is tiny next
    to the point's positive curvature (Li et al.'s ``|λ_min / λ_max|`` near 0 counts as convex), ``ftol`` (about
    100x float32 rounding of the loss) keeps rounding on a flat patch from counting. 0 for a convex quadratic,
    1 for a saddle whose negative curvature exceeds ``rtol`` of the positive one.
    """
    f = np.abs(np.asarray(surface, np.float64))
    eig = np.linalg.eigvalsh(grid_hessians(surface, h_alpha, h_beta))  # (A-2, B-2, 2), ascending
    stencil = np.max(np.stack([f[i:i + f.shape[0] - 2, j:j + f.shape[1] - 2] for i in range(3) for j in range(3)]),
                     axis=0)
    floor = np.maximum(rtol * np.abs(eig[..., 1]), ftol * stencil / (h_alpha * h_beta))
    return float(np.mean(eig[..., 0] < -floor))


@functools.lru_cache(maxsize=32)
def _hvp_tree(loss_fn: Callable[..., jax.Array]) -> Callable[..., PyTree]:
    """``(params, v, *args) -> H v`` on pytrees, jitted once per ``loss_fn``."""

    @jax.jit
    def hvp(params: PyTree, v: PyTree, *args: Any) -> PyTree:
        return jax.jvp(lambda p: jax.grad(loss_fn)(p, *args), (params,), (v,))[1]

    return hvp


def hvp_fn(loss_fn: Callable[..., jax.Array], params: PyTree,
           *args: Any) -> tuple[Callable[[jax.Array], jax.Array], int]:
    """A Hessian-vector product at ``params`` on flat vectors: ``(v (n,) -> H v (n,), n)``, with ``H`` the
    Hessian of ``loss_fn(params, *args)`` over every leaf of ``params`` (n = total size), by forward-over-reverse
    ``jax.jvp(jax.grad(loss))``: the cost of about two gradients, never the n x n matrix. The jitted product is
    cached per ``loss_fn`` (``args`` are traced), so runs of the same shapes compile it once."""
    flat, unravel = ravel_pytree(params)
    hvp = _hvp_tree(loss_fn)

    def matvec(v: jax.Array) -> jax.Array:
        return ravel_pytree(hvp(params, unravel(jnp.asarray(v, flat.dtype)), *args))[0]

    return matvec, int(flat.size)


def lanczos(matvec: Callable[[jax.Array], jax.Array], n: int, iters: int, key: jax.Array,
            dtype: Any = jnp.float32) -> np.ndarray:
    """Ritz values (ascending, float64 (k,), k <= ``iters``) of a symmetric operator of size ``n`` given by
    ``matvec`` (called on ``dtype`` vectors), after ``iters`` Lanczos steps from a random unit vector (``key``).

    The recurrence and the full re-orthogonalisation run in float64 NumPy on the host (the basis is kept:
    ``iters * n`` floats), only the products on the device. The extreme Ritz values converge to the extreme
    eigenvalues first, from inside the spectrum (``λ_min <= ritz[0]``, ``ritz[-1] <= λ_max``); with
    ``iters >= n`` they are all the eigenvalues. Stops early when the Krylov space is exhausted.
    """
    iters = min(iters, n)
    v = np.asarray(jax.random.normal(key, (n,), jnp.float32), np.float64)
    basis = np.zeros((iters, n))
    basis[0] = v / np.linalg.norm(v)
    alphas: list[float] = []
    betas: list[float] = []
    for k in range(iters):
        w = np.asarray(matvec(jnp.asarray(basis[k], dtype)), np.float64)
        alphas.append(float(basis[k] @ w))
        q = basis[:k + 1]
        for _ in range(2):  # classical Gram-Schmidt, twice ("twice is enough")
            w -= q.T @ (q @ w)
        b = float(np.linalg.norm(w))
        if k == iters - 1 or b < 1e-6 * max(1.0, max(abs(x) for x in alphas)):
            break
        betas.append(b)
        basis[k + 1] = w / b
    t = np.diag(np.asarray(alphas))
    if betas:
        off = np.asarray(betas)
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigvalsh(t)


def hessian_extremes(loss_fn: Callable[..., jax.Array], params: PyTree, *args: Any, iters: int = 20,
                     key: jax.Array | None = None) -> tuple[float, float]:
    """``(λ_min, λ_max)`` estimates of the Hessian of ``loss_fn`` at ``params`` (over all leaves): the extreme
    Ritz values of ``iters`` Lanczos steps on :func:`hvp_fn`, in units of ``loss`` per squared parameter unit.
    Both lie inside the true range; λ_max converges first, so ``|λ_min / λ_max|`` is most likely underestimated."""
    hvp, n = hvp_fn(loss_fn, params, *args)
    ritz = lanczos(hvp, n, iters, jax.random.key(0) if key is None else key,
                   ravel_pytree(params)[0].dtype)
    return float(ritz[0]), float(ritz[-1])


def curvature_ratio(lam_min: float, lam_max: float) -> float:
    """``|λ_min / λ_max|`` (Li et al. §6): near 0 at a convex-like point (λ_min >= 0, or negative but tiny next
    to λ_max), large with strong negative curvature. ``λ_max == 0``: inf (0 when both are 0)."""
    if lam_max == 0:
        return 0.0 if lam_min == 0 else float("inf")
    return abs(lam_min / lam_max)
