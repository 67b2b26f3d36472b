"""On-device augmentation (:mod:`cnnjax.augment`) against torchvision v2 and against the laws it must follow.

Each op runs on the same image as torchvision.transforms.v2's own dispatch (``_apply_image_or_video_transform``,
what its RandAugment/TrivialAugmentWide/AutoAugment call) at the same magnitude, twice: on the float tensor
``uint8 * (1/255)`` (torchvision's ``to_dtype(float32, scale=True)``, the input this library gets) and on the
uint8 tensor itself (the reference training recipe's PIL/uint8 path, result divided by 255). Tolerances:

============================  ==============================  =====================================================
op                            vs v2 on the float tensor       vs v2 on the uint8 tensor (why)
============================  ==============================  =====================================================
Identity, Invert, Solarize,   exact                           the same uint8 value (abs <= 1e-6: ``1 - k/255``
Equalize, flip                                                against ``(255 - k)/255`` in float32); Equalize
                                                              quantises ``x * 255.999`` as v2's float kernel does
ShearX/Y, TranslateX/Y,       exact, except at a tie: where   same. Both compute the source coordinate in float32
Rotate (nearest)              the exact (float64) source      and round it half to even, but a coordinate that is
                              coordinate is within 1e-3 of    exactly .5 in real arithmetic (ShearY at m = 0.6,
                              a .5, either neighbour (or the  column 2: row + 1.5) lands an ulp above or below
                              fill outside) is accepted       depending on the order of float ops (torchvision's
                                                              float64 matrix and bmm, XLA's fusions): noise, not
                                                              a definition
Brightness, Color, Contrast,  abs <= 1e-6 (float32 rounding   abs <= 2/255: torch truncates the blended value to
Sharpness                     order of the same formula)      uint8 (< 1 unit) after flooring (Color/Contrast's
                                                              gray) or rounding (Sharpness's blur) the degenerate
                                                              image (< 1 unit x abs(1 - ratio) <= 0.99)
AutoContrast                  abs <= 1e-6                     abs <= 1/255: truncation of the rescaled value
Posterize                     exact                           abs <= 1/255: v2's float kernel ``floor(x 2^b)/2^b``
                                                              against uint8's bit mask ``(k & mask)/255``: the same
                                                              level, the level's value differs by < 1 unit
============================  ==============================  =====================================================

MixUp/CutMix: each target row sums to 1 (hypothesis), CutMix's pasted share equals ``1 - lambda_corrected``
exactly, MixUp's lambda and CutMix's raw lambda pass a Kolmogorov-Smirnov test against Beta(alpha, alpha) at
p > 0.001 while a Beta(2 alpha, 2 alpha) draw fails the same test, and CutMix's corrected areas and RandomErasing's
areas follow torchvision's own transforms (two-sample KS, with a failing negative case for CutMix).

The fast tier jits each op once (vmapped over a batch of magnitudes); the sweeps over every magnitude bin, square
and grayscale images are marked ``slow``. torchvision comparisons are marked ``parity`` and skip without torch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from cnnjax import augment
from cnnjax.augment import mix, ops, policies
from cnnjax.data import base

pytestmark = pytest.mark.slow  # ~45 s of compiles: the full suite runs them, the edit loop does not

P_MIN = 1e-3  # KS tests: a correct law passes at p > 0.001, a wrong one must fail at the same level
TIE = 1e-3  # a source coordinate this close to k + 0.5 is a rounding tie (float32 errors are < 1e-4 here)
BLEND = ("Brightness", "Color", "Contrast", "Sharpness")


@pytest.fixture(scope="module")
def tv():
    """(torch, v2 transform whose dispatch applies a named op, v2 module)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cnnjax[torch]')")
    v2 = pytest.importorskip("torchvision.transforms.v2")
    return torch, v2.TrivialAugmentWide(), v2


def test_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, C): a gradient plus noise, each channel in its own sub-range (so AutoContrast acts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((h, w, c), np.uint8)
    for k in range(c):
        lo, hi = 20 + 15 * k, 200 - 10 * k
        base_ = lo + (hi - lo) * (0.5 * xx / max(w - 1, 1) + 0.3 * yy / max(h - 1, 1))
        out[..., k] = np.clip(base_ + rng.normal(0, 25, (h, w)), lo, hi).astype(np.uint8)
    return out


test_image.__test__ = False  # a helper, not a test


def to_float(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) * np.float32(1 / 255)  # torchvision's uint8 -> float32 (scale=True)


def torchvision_op(tv, name: str, image_hwc: np.ndarray, magnitude: float) -> np.ndarray:
    """v2's op ``name`` at ``magnitude`` on an HWC uint8 or float32 array; HWC float32 in [0, 1] out."""
    torch, dispatch, _ = tv
    t = torch.from_numpy(np.array(image_hwc)).permute(2, 0, 1)  # a writable copy
    out = dispatch._apply_image_or_video_transform(t, name, float(magnitude), interpolation=dispatch.interpolation,
                                                   fill=dispatch._fill)
    out = out.permute(1, 2, 0).numpy()
    return to_float(out) if out.dtype == np.uint8 else out


def torchvision_source_coordinates(name: str, h: int, w: int, magnitude: float) -> tuple[np.ndarray, np.ndarray]:
    """float64 (rows, cols) ``(H, W)`` that torchvision's op ``name`` samples for each output pixel, from its own
    ``_get_inverse_affine_matrix`` with the arguments its dispatch and ``rotate_image`` pass."""
    import math

    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    corner = [-0.5 * w, -0.5 * h]  # center=[0, 0] relative to the image centre
    args = {"ShearX": (corner, 0.0, [0.0, 0.0], [math.degrees(math.atan(magnitude)), 0.0]),
            "ShearY": (corner, 0.0, [0.0, 0.0], [0.0, math.degrees(math.atan(magnitude))]),
            "TranslateX": ([0.0, 0.0], 0.0, [float(int(magnitude)), 0.0], [0.0, 0.0]),
            "TranslateY": ([0.0, 0.0], 0.0, [0.0, float(int(magnitude))], [0.0, 0.0]),
            "Rotate": ([0.0, 0.0], -(magnitude % 360), [0.0, 0.0], [0.0, 0.0])}[name]
    m = _get_inverse_affine_matrix(args[0], args[1], args[2], 1.0, args[3])
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = x - (w - 1) / 2, y - (h - 1) / 2
    return m[3] * x + m[4] * y + m[5] + (h - 1) / 2, m[0] * x + m[1] * y + m[2] + (w - 1) / 2


def assert_geometric_equal(name: str, magnitude: float, image: np.ndarray, ours: np.ndarray, ref: np.ndarray,
                           fill: float = 0.0) -> None:
    """``ours == ref`` at every pixel whose source coordinate is not a .5 tie; at a tie, ``ours`` is the value of
    one of the (up to 4) pixels the coordinate lies between (``fill`` outside the image)."""
    h, w, _ = image.shape
    rows, cols = torchvision_source_coordinates(name, h, w, magnitude)
    tie_r = np.abs(rows - np.floor(rows) - 0.5) < TIE
    tie_c = np.abs(cols - np.floor(cols) - 0.5) < TIE
    tie = tie_r | tie_c
    np.testing.assert_array_equal(ours[~tie], ref[~tie], err_msg=f"{name} m={magnitude} away from ties")
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), constant_values=fill)
    for i, j in zip(*np.nonzero(tie)):
        rs = {np.floor(rows[i, j]), np.ceil(rows[i, j])} if tie_r[i, j] else {np.round(rows[i, j])}
        cs = {np.floor(cols[i, j]), np.ceil(cols[i, j])} if tie_c[i, j] else {np.round(cols[i, j])}
        cands = [padded[int(np.clip(r, -1, h)) + 1, int(np.clip(c, -1, w)) + 1] for r in rs for c in cs]
        assert any(np.array_equal(ours[i, j], v) for v in cands), f"{name} m={magnitude} tie at {(i, j)}"


@functools.cache
def batched_op(name: str):
    """``op`` jitted once, vmapped over magnitudes: (image (H, W, C), magnitudes (M,)) -> (M, H, W, C)."""
    return jax.jit(jax.vmap(ops.FUNCTIONS[name], in_axes=(None, 0)))


def check_op(tv, name: str, u8: np.ndarray, mags: list[float]) -> None:
    x = to_float(u8)
    ours = np.asarray(batched_op(name)(jnp.asarray(x), jnp.asarray(mags, jnp.float32)))
    for m, got in zip(mags, ours):
        for ref, path in ((torchvision_op(tv, name, x, m), "float"), (torchvision_op(tv, name, u8, m), "uint8")):
            diff = np.abs(got - ref)
            where = f"{name} m={m} vs v2 {path} {u8.shape}"
            if name in ops.GEOMETRIC:
                assert_geometric_equal(name, m, x, got, ref)
            elif name in BLEND + ("AutoContrast",):
                tol = 1e-6 if path == "float" else (2 if name in BLEND else 1) / 255 + 1e-6
                assert diff.max() <= tol, where
            elif name == "Posterize" and path == "uint8":
                assert diff.max() <= 1 / 255 + 1e-6, where
            else:  # the uint8 path's result is the same uint8 value: k / 255 against 1 - j / 255 in float32
                assert diff.max() <= (0 if path == "float" else 1e-6), where


FAST_MAGNITUDES = {
    "Identity": [0.0], "ShearX": [0.3, -0.99, 0.51], "ShearY": [0.27, -0.6, 0.6], "TranslateX": [5.7, -9.9, 32.0],
    "TranslateY": [3.2, -14.0], "Rotate": [30.0, -135.0, 90.0, 17.3], "Brightness": [0.5, -0.99],
    "Color": [0.99, -0.7], "Contrast": [0.5, -0.93], "Sharpness": [0.99, -0.7], "Posterize": [0, 1, 4, 7, 8],
    "Solarize": [0.0, 0.5, 0.8, 1.0], "AutoContrast": [0.0], "Equalize": [0.0], "Invert": [0.0],
}


@pytest.mark.parity
@pytest.mark.parametrize("name", ops.OPS)
def test_op_matches_torchvision(tv, name):
    check_op(tv, name, test_image(20, 24, 3), FAST_MAGNITUDES[name])


@pytest.mark.parity
def test_flip_and_fill_match_torchvision(tv):
    torch, _, v2 = tv
    u8 = test_image(9, 14, 3)
    x = to_float(u8)
    ref = v2.functional.horizontal_flip(torch.from_numpy(x).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(ops.hflip(jnp.asarray(x))), ref)
    fill = [0.25, 0.5, 1.0]
    ref = v2.functional.rotate(torch.from_numpy(x).permute(2, 0, 1), 33.0, fill=fill).permute(1, 2, 0).numpy()
    ours = np.asarray(ops.rotate(jnp.asarray(x), 33.0, fill=fill))
    np.testing.assert_array_equal(ours, ref)
    assert np.any(np.all(ours == np.asarray(fill, np.float32), axis=-1))  # the corners are filled


@pytest.mark.parity
def test_magnitude_tables_match_torchvision(tv):
    _, _, v2 = tv
    h, w = 20, 24
    for cls, space, bins in ((v2.RandAugment, "standard", 31), (v2.TrivialAugmentWide, "wide", 31),
                             (v2.AutoAugment, "standard", 10)):
        table = policies.magnitudes(space, bins, h, w)
        for name, (fn, signed) in cls._AUGMENTATION_SPACE.items():
            k = ops.OPS.index(name)
            ref = fn(bins, h, w)
            expected = np.zeros(bins) if ref is None else ref.numpy()
            np.testing.assert_allclose(table[k], expected, rtol=1e-6, err_msg=f"{cls.__name__} {name}")
            assert policies.SIGNED_MASK[k] == signed, name
        assert set(cls._AUGMENTATION_SPACE) <= set(ops.OPS)
    assert tuple(v2.RandAugment._AUGMENTATION_SPACE) == policies.RANDAUGMENT_OPS
    assert tuple(v2.TrivialAugmentWide._AUGMENTATION_SPACE) == policies.RANDAUGMENT_OPS


@pytest.mark.parity
def test_imagenet_policy_is_torchvision_s(tv):
    _, _, v2 = tv
    ref = v2.AutoAugment()._get_policies(v2.AutoAugmentPolicy.IMAGENET)
    assert [tuple(map(tuple, sub)) for sub in ref] == [tuple(map(tuple, sub)) for sub in policies.IMAGENET_POLICY]


@functools.cache
def _apply_op_jit():
    return jax.jit(ops.apply_op)


def test_apply_op_switch_equals_each_op():
    x = jnp.asarray(to_float(test_image(10, 12, 3)))
    for k, name in enumerate(ops.OPS):
        m0 = FAST_MAGNITUDES[name][0]
        for m in (m0, -0.83 * m0) if policies.SIGNED_MASK[k] else (m0,):  # no .5 ties (jit and eager may differ)
            np.testing.assert_allclose(np.asarray(_apply_op_jit()(x, k, m)), np.asarray(ops.FUNCTIONS[name](x, m)),
                                       atol=1e-6, rtol=0, err_msg=f"{name} {m}")  # (float32 rounding order)


@pytest.mark.parity
def test_trivialaugment_is_torchvision_op_at_its_sampled_parameters(tv):
    """The policy's output is v2's op at the (op, signed magnitude) the policy drew (the draws' law: below)."""
    u8 = test_image(16, 16, 3)
    x = jnp.asarray(to_float(u8))
    run = jax.jit(policies.trivialaugment)
    for seed in range(6):
        key = jax.random.key(seed)
        op, m = policies.trivialaugment_params(key, 16, 16)
        got = np.asarray(run(key, x))
        name = ops.OPS[int(op)]
        ref = torchvision_op(tv, name, np.asarray(x), float(m))
        if name in ops.GEOMETRIC:
            assert_geometric_equal(name, float(m), np.asarray(x), got, ref)
        else:
            np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=name)


def test_policy_draws_are_uniform_over_ops_and_signs():
    keys = jax.random.split(jax.random.key(3), 4200)
    op, m = jax.vmap(lambda k: policies.trivialaugment_params(k, 32, 32))(keys)
    op, m = np.asarray(op), np.asarray(m)
    counts = np.bincount(op, minlength=14)
    assert len(counts) == 14 and stats.chisquare(counts).pvalue > P_MIN
    signed = policies.SIGNED_MASK[op] & (m != 0)
    assert stats.binomtest(int(np.sum(m[signed] < 0)), int(signed.sum())).pvalue > P_MIN
    assert np.all(m[~policies.SIGNED_MASK[op]] >= 0)


def test_randaugment_and_autoaugment_run_jitted_and_vmapped():
    x = jnp.asarray(to_float(test_image(16, 16, 3)))[None].repeat(8, axis=0)  # 8 copies of one image
    for spec in ("randaugment:3,15", "autoaugment", "flip"):  # (trivialaugment: test_augment_train_batch)
        f = jax.jit(functools.partial(augment.augment_batch, policy=augment.parse_policy(spec)))
        out = np.asarray(f(jax.random.key(0), x))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, spec
        np.testing.assert_array_equal(out, np.asarray(f(jax.random.key(0), x)))  # a function of the key
        assert len({row.tobytes() for row in out}) > 1, spec  # each row has its own key


# --------------------------------------------------------------------------------------------------------------------
# Laws that hold for every input (hypothesis).
# --------------------------------------------------------------------------------------------------------------------

MAX_MAGNITUDE = {"ShearX": 0.99, "ShearY": 0.99, "TranslateX": 32.0, "TranslateY": 32.0, "Rotate": 135.0,
                 "Brightness": 0.99, "Color": 0.99, "Contrast": 0.99, "Sharpness": 0.99}
IDENTITY_AT_ZERO = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") + BLEND


def _random_image(seed: int, h: int = 7, w: int = 9, c: int = 3) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (h, w, c))


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, len(ops.OPS) - 1), u=st.floats(-1.0, 1.0))
def test_every_op_keeps_shape_and_range(seed, k, u):
    name = ops.OPS[k]
    m = {"Posterize": 4 + 4 * u, "Solarize": 0.5 + 0.5 * u}.get(name, u * MAX_MAGNITUDE.get(name, 0.0))
    x = _random_image(seed)
    out = np.asarray(_apply_op_jit()(x, k, m))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0, (name, m)


@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([ops.OPS.index(n) for n in IDENTITY_AT_ZERO]))
def test_identity_at_magnitude_zero(seed, k):
    x = _random_image(seed)
    np.testing.assert_array_equal(np.asarray(_apply_op_jit()(x, k, 0.0)), np.asarray(x), err_msg=ops.OPS[k])


_mix = jax.jit(mix.mixup_or_cutmix, static_argnums=(3, 4, 5))


@pytest.mark.parametrize("alphas", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
@given(seed=st.integers(0, 2**31 - 1))
def test_mixed_targets_are_distributions(alphas, seed):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    images = jax.random.uniform(k1, (4, 6, 5, 2))
    targets = jax.nn.one_hot(jax.random.randint(k2, (4,), 0, 4), 4)
    out, mixed = _mix(k3, images, targets, *alphas, 0.5)
    mixed = np.asarray(mixed)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-6)
    assert mixed.min() >= 0.0 and np.asarray(out).min() >= 0 and np.asarray(out).max() <= 1


_cutmix = jax.jit(mix.cutmix)  # alpha traced: one compile


@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.1, 1.0, 3.0]))
def test_cutmix_pasted_share_is_one_minus_corrected_lambda(seed, alpha):
    n, h, w = 3, 11, 8
    images = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None], (n, h, w, 1))
    targets = jax.nn.one_hot(jnp.arange(n), n)
    out, mixed = _cutmix(jax.random.key(seed), images, targets, jnp.float32(alpha))
    out, mixed = np.asarray(out), np.asarray(mixed)
    for i in range(n):
        pasted = np.mean(out[i] == (i - 1) % n)
        assert abs(pasted - (1.0 - mixed[i, i])) < 1e-6
        assert abs(mixed[i, (i - 1) % n] - pasted) < 1e-6


# --------------------------------------------------------------------------------------------------------------------
# The Beta law of lambda (Kolmogorov-Smirnov) and torchvision's cut areas.
# --------------------------------------------------------------------------------------------------------------------

DRAWS = 2000


def _mixup_lambdas(alpha: float) -> np.ndarray:
    images = jnp.zeros((2, 1, 1, 1))
    targets = jnp.eye(2)
    keys = jax.random.split(jax.random.key(11), DRAWS)
    _, mixed = jax.vmap(lambda k: mix.mixup(k, images, targets, alpha))(keys)
    return np.asarray(mixed[:, 0, 0], np.float64)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_follows_beta(alpha):
    lam = _mixup_lambdas(alpha)
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > P_MIN
    assert stats.kstest(lam, stats.beta(2 * alpha, 2 * alpha).cdf).pvalue < P_MIN  # the test can fail


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_cutmix_raw_lambda_follows_beta(alpha):
    keys = jax.random.split(jax.random.key(5), DRAWS)
    lam = np.asarray(jax.vmap(lambda k: mix.cutmix_box(k, 16, 16, alpha)[-1])(keys), np.float64)
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > P_MIN
    assert stats.kstest(lam, stats.beta(2 * alpha, 2 * alpha).cdf).pvalue < P_MIN


def _torchvision_cutmix_lambdas(tv, alpha: float, h: int, w: int, n: int) -> np.ndarray:
    torch, _, v2 = tv
    torch.manual_seed(0)
    cutmix = v2.CutMix(alpha=alpha, num_classes=2)
    images, labels = torch.zeros(2, 1, h, w), torch.tensor([0, 1])
    return np.array([float(cutmix(images, labels)[1][0, 0]) for _ in range(n)])


@pytest.mark.parity
def test_cutmix_areas_follow_torchvision(tv):
    alpha, h, w = 1.0, 12, 20
    keys = jax.random.split(jax.random.key(8), DRAWS)
    _, mixed = jax.vmap(lambda k: mix.cutmix(k, jnp.zeros((2, h, w, 1)), jnp.eye(2), alpha))(keys)
    ours = np.asarray(mixed[:, 0, 0], np.float64)
    assert stats.ks_2samp(ours, _torchvision_cutmix_lambdas(tv, alpha, h, w, DRAWS)).pvalue > P_MIN
    assert stats.ks_2samp(ours, _torchvision_cutmix_lambdas(tv, 4 * alpha, h, w, DRAWS)).pvalue < P_MIN


@pytest.mark.parity
def test_random_erasing_follows_torchvision(tv):
    torch, _, v2 = tv
    h, w, p = 20, 16, 0.7
    keys = jax.random.split(jax.random.key(2), DRAWS)
    out = jax.jit(jax.vmap(lambda k: mix.random_erasing(k, jnp.ones((h, w, 1)), p, value=0.0)))(keys)
    ours = np.asarray(jnp.mean(out == 0, axis=(1, 2, 3)), np.float64)
    torch.manual_seed(0)
    erase = v2.RandomErasing(p=p, value=0.0)
    ref = np.array([float((erase(torch.ones(1, h, w)) == 0).float().mean()) for _ in range(DRAWS)])
    erased = [[np.sum(ours > 0), np.sum(ours == 0)], [np.sum(ref > 0), np.sum(ref == 0)]]
    assert stats.chi2_contingency(erased).pvalue > P_MIN  # the share of erased images
    assert stats.ks_2samp(ours[ours > 0], ref[ref > 0]).pvalue > P_MIN


def test_random_erasing_random_value_and_box_bounds():
    h, w = 24, 30
    keys = jax.random.split(jax.random.key(4), 400)
    boxes = jax.jit(jax.vmap(lambda k: mix.erasing_box(k, h, w)))(keys)
    top, left, bh, bw, found = (np.asarray(a) for a in boxes)
    assert found.all() and np.all(bh < h) and np.all(bw < w) and np.all(top + bh <= h) and np.all(left + bw <= w)
    area = bh * bw / (h * w)
    assert area.min() > 0.005 and area.max() < 0.45  # scale (0.02, 0.33), sides rounded
    erase = jax.jit(lambda k, x: mix.random_erasing(k, x, 1.0, value="random"))
    out = np.asarray(erase(jax.random.key(1), jnp.full((h, w, 3), 7.0)))
    assert np.any(out != 7.0) and np.all((out == 7.0) | (np.abs(out) < 6))
    with pytest.raises(ValueError, match="random"):
        mix.random_erasing(jax.random.key(1), jnp.zeros((h, w, 3)), 1.0, value="noise")


# --------------------------------------------------------------------------------------------------------------------
# The policy spec, the dataset flag, the train-batch function.
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("none", augment.Policy("none")), ("default", augment.Policy("default")), ("flip", augment.Policy("flip")),
    ("randaugment", augment.Policy("randaugment", 2, 9)), ("RandAugment:3,15", augment.Policy("randaugment", 3, 15)),
    ("randaugment:1", augment.Policy("randaugment", 1, 9)), ("trivialaugment", augment.Policy("trivialaugment")),
    ("autoaugment", augment.Policy("autoaugment")), ("autoaugment:imagenet", augment.Policy("autoaugment")),
    ("rotate", augment.Policy("rotate", degrees=15.0)), ("rotate:7.5", augment.Policy("rotate", degrees=7.5)),
    ("rot180", augment.Policy("rot180")),
])
def test_parse_policy(text, expected):
    assert augment.parse_policy(text) == expected
    assert augment.parse_policy(str(expected)) == expected


@pytest.mark.parametrize("text", ["mixup", "randaugment:2,31", "randaugment:a,b", "randaugment:1,2,3",
                                  "autoaugment:cifar10", "flip:1", "", "trivialaugment:5", "rotate:0",
                                  "rotate:181", "rotate:x", "rot180:2"])
def test_parse_policy_errors_name_the_choices(text):
    with pytest.raises(ValueError, match="valid choices are none, default, flip, randaugment"):
        augment.parse_policy(text)


@pytest.mark.parity
def test_rotation_policies(tv):
    """``rotate:DEG`` is torchvision's ``F.rotate`` at the angle it draws (bit-equal, nearest neighbour), the
    angles are uniform on [-DEG, DEG] (KS test; negative case: not uniform on twice the range); ``rot180`` is
    the image reversed on both axes or the image itself, each about half the time."""
    torch, _, v2 = tv
    x = to_float(test_image(11, 13, 3))
    key = jax.random.key(3)
    for n in range(3):
        k = jax.random.fold_in(key, n)
        angle = float(policies.rotation_angle(k, 20.0))
        ref = v2.functional.rotate(torch.from_numpy(x).permute(2, 0, 1), angle).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(np.asarray(policies.random_rotate(k, jnp.asarray(x), 20.0)), ref)
    angles = np.asarray(jax.vmap(lambda k: policies.rotation_angle(k, 20.0))(jax.random.split(key, 2000)))
    assert stats.kstest(angles, stats.uniform(-20, 40).cdf).pvalue > 1e-3
    assert stats.kstest(angles, stats.uniform(-40, 80).cdf).pvalue < 1e-6
    out = np.asarray(augment.augment_batch(key, jnp.asarray(np.stack([x] * 200)), "rot180"))
    turned = np.all(out == x[::-1, ::-1], axis=(1, 2, 3))
    assert np.all(turned | np.all(out == x, axis=(1, 2, 3))) and 60 < turned.sum() < 140


def test_default_never_flips_a_digits_dataset():
    from cnnjax import data

    info = data.load("digits").info
    assert info.orientation_sensitive and data.load("shapes:num_train=12,num_val=6").info.orientation_sensitive
    assert not data.load("synthetic").info.orientation_sensitive
    assert augment.resolve_policy("default", info.orientation_sensitive) == augment.Policy("none")
    assert augment.resolve_policy("default", False) == augment.Policy("flip")
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    run = jax.jit(lambda k: augment.augment_batch(k, x, "default", orientation_sensitive=info.orientation_sensitive))
    for seed in range(8):
        np.testing.assert_array_equal(np.asarray(run(jax.random.key(seed))), np.asarray(x))
    with pytest.raises(ValueError, match="orientation_sensitive"):
        augment.augment_batch(jax.random.key(0), x, "default")


def test_tfds_orientation_flag():
    from cnnjax.data.tfds import orientation_sensitive

    assert all(orientation_sensitive(n) for n in ("mnist", "emnist/letters", "kmnist:3.0.1", "svhn_cropped"))
    assert not any(orientation_sensitive(n) for n in ("cifar10", "fashion_mnist", "imagenette/320px"))
    assert not base.DatasetInfo("x", 2, 8, 3, 1, 1, ["a", "b"], (0.0,), (1.0,)).orientation_sensitive


def test_augment_train_batch():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    raw = jax.random.uniform(jax.random.key(0), (6, 10, 10, 3))
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    plain = augment.Augmentation()
    assert not plain.active
    x, t = augment.augment_train_batch(jax.random.key(1), raw, labels, 5, mean, std, plain)
    np.testing.assert_allclose(np.asarray(x), (np.asarray(raw) - mean) / np.asarray(std), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(t), np.eye(5)[np.asarray(labels)])
    aug = augment.Augmentation(policy=augment.parse_policy("trivialaugment"), mixup_alpha=0.2, cutmix_alpha=1.0,
                               erasing_p=0.5)
    step = jax.jit(lambda k: augment.augment_train_batch(k, raw, labels, 5, mean, std, aug))
    base_key = jax.random.key(42)
    a, ta = step(jax.random.fold_in(base_key, 7))
    b, tb = step(jax.random.fold_in(base_key, 7))
    c, _ = step(jax.random.fold_in(base_key, 8))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # (seed, step) determines the batch
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_allclose(np.asarray(ta).sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="orientation_sensitive"):
        augment.augment_train_batch(base_key, raw, labels, 5, mean, std,
                                    augment.Augmentation(augment.Policy("default")))


# --------------------------------------------------------------------------------------------------------------------
# Slow sweeps: every magnitude bin of the three policies, a square and a grayscale image.
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.parametrize("shape", [(32, 32, 3), (15, 27, 1)])
@pytest.mark.parametrize("name", ops.OPS)
def test_op_matches_torchvision_at_every_bin(tv, name, shape):
    h, w, _ = shape
    mags = set()
    for space, bins in (("standard", 31), ("wide", 31), ("standard", 10)):
        row = policies.magnitudes(space, bins, h, w)[ops.OPS.index(name)]
        mags |= {float(m) for m in row} | ({-float(m) for m in row} if policies.SIGNED_MASK[ops.OPS.index(name)]
                                           else set())
    check_op(tv, name, test_image(*shape, seed=1), sorted(mags))
