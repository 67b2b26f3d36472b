"""``impl='auto'``: measured choice per configuration, JSON cache reuse, deterministic mode, models train with
every algorithm."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cnnjax import models
from cnnjax.ops import CONV_ALGORITHMS, CONV_IMPLS, autotune, conv2d
from cnnjax.training import TrainState, make_train_step


@pytest.fixture()
def cache(tmp_path):
    autotune.clear_memory()
    with autotune.settings(cache_path=tmp_path / "autotune.json", mode="benchmark", repeats=1):
        yield tmp_path / "autotune.json"
    autotune.clear_memory()


def _data(shape=(2, 6, 6, 3), kernel=(3, 3, 3, 4)):
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.asarray(rng.normal(size=kernel), jnp.float32))


def _ref(x, w, padding=1):
    return lax.conv_general_dilated(x, w, (1, 1), ((padding, padding),) * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)


def test_auto_measures_once_caches_in_json_and_is_correct_under_jit(cache, monkeypatch):
    x, w = _data()
    f = jax.jit(lambda x, w: conv2d(x, w, padding=1, impl="auto"))
    np.testing.assert_allclose(np.asarray(f(x, w)), np.asarray(_ref(x, w)), rtol=1e-4, atol=1e-4)
    g = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, padding=1, impl="auto") ** 2), (0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(_ref(x, w) ** 2), (0, 1))(x, w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 1
    (key, record), = entries.items()
    assert json.loads(key)["x"] == [2, 6, 6, 3] and json.loads(key)["backend"] == jax.default_backend()
    assert set(record["ms"]) == {"xla", "gemm", "winograd", "fft"}  # 3x3 stride 1: every algorithm applies
    assert record["impl"] == min(record["ms"], key=lambda k: record["ms"][k])
    [row] = autotune.records()
    assert row["impl"] == record["impl"] and row["w"] == [3, 3, 3, 4]

    # a later run (fresh memory) reuses the file without timing anything
    autotune.clear_memory()
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured again despite the cache"))
    assert autotune.choose(x.shape, w.shape, x.dtype, (1, 1), ((1, 1), (1, 1)), (1, 1), 1) == record["impl"]


def test_a_cached_choice_is_obeyed(cache):
    """Plant 'fft' as the winner: the traced computation then contains FFTs (and still equals lax.conv)."""
    x, w = _data()
    key = autotune.config_key(x.shape, w.shape, x.dtype, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, None, None)
    cache.write_text(json.dumps({"version": 1, "entries": {key: {"impl": "fft", "ms": {}}}}))
    jaxpr = str(jax.make_jaxpr(lambda x, w: conv2d(x, w, padding=1, impl="auto"))(x, w))
    assert "fft" in jaxpr and "conv_general_dilated" not in jaxpr
    np.testing.assert_allclose(np.asarray(conv2d(x, w, padding=1, impl="auto")), np.asarray(_ref(x, w)),
                               rtol=1e-4, atol=1e-4)
    # negative case: with 'xla' planted instead, the same check sees a lax convolution and no FFT
    autotune.clear_memory()
    cache.write_text(json.dumps({"version": 1, "entries": {key: {"impl": "xla", "ms": {}}}}))
    jaxpr = str(jax.make_jaxpr(lambda x, w: conv2d(x, w, padding=1, impl="auto"))(x, w))
    assert "fft" not in jaxpr and "conv_general_dilated" in jaxpr


def test_corrupt_cache_file_is_measured_again_and_rewritten(cache):
    cache.write_text("{not json")
    x, w = _data((1, 5, 5, 2), (1, 1, 2, 2))
    impl = autotune.choose(x.shape, w.shape, x.dtype, (1, 1), ((0, 0), (0, 0)), (1, 1), 1,
                           candidates=CONV_ALGORITHMS)
    record = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert impl == record["impl"] and set(record["ms"]) == {"xla", "gemm"}  # 1x1: no winograd, no fft


def test_deterministic_mode_uses_the_fixed_rule_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNJAX_AUTOTUNE", "deterministic")
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("deterministic mode must not time"))
    with autotune.settings(cache_path=tmp_path / "a.json"):
        x, w = _data()
        np.testing.assert_allclose(np.asarray(conv2d(x, w, padding=1, impl="auto")), np.asarray(_ref(x, w)),
                                   rtol=1e-4, atol=1e-4)
        assert autotune.choose(x.shape, w.shape, x.dtype, (1, 1), ((1, 1),) * 2, (1, 1), 1) == \
            autotune.fixed_choice(x.shape, w.shape, 1)
    assert not (tmp_path / "a.json").exists()
    with pytest.raises(ValueError, match="valid choices: benchmark, deterministic"):
        autotune.configure(mode="fastest")


@pytest.mark.slow
def test_a_model_trains_with_every_algorithm(cache):
    """One SGD step of a CIFAR ResNet of depth 8 (one block per stage; 3x3 convs, where Winograd applies, strided
    ones, where it falls back) gives the same parameters with every ``conv_impl`` as with ``lax.conv``."""
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32), "mask": jnp.ones(4, bool)}
    tx = optax.sgd(0.5)
    results = {}
    # the parameters do not depend on the algorithm: initialise once (jitted; eager init compiles op by op)
    variables = jax.jit(models.create("resnet20", num_classes=10, depth=8).init)(jax.random.key(0), batch["image"])
    # 'auto' and 'fast' run one of the others per layer ('auto': a timing outcome; measuring all of them per layer
    # here would double this test's time, and auto under jit is tested above; 'fast': gemm or xla by shape)
    for impl in [i for i in CONV_IMPLS if i not in ("auto", "fast")]:
        model = models.create("resnet20", num_classes=10, depth=8, conv_impl=impl)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                           rng=jax.random.key_data(jax.random.key(1)))
        state, metrics = jax.jit(make_train_step(model, tx))(state, batch)
        results[impl] = (state.params, float(metrics["loss"]))
    ref_params, ref_loss = results["xla"]
    for impl, (params, loss) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-4), impl
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4, err_msg=impl)


def test_shape_only_traces_and_init_never_tune(cache, monkeypatch):
    """Input-size checks and batch-1 initialisation of an ``auto`` model measure nothing (they are not the shapes
    that will run); the same conv outside ``shape_only`` does measure."""
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured in a shape-only trace"))
    model = models.create("resnet20", num_classes=10, depth=8, conv_impl="auto")
    models.check_input_size(model, 8)
    with autotune.shape_only():
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    assert not cache.exists()
    x, w = _data()
    with pytest.raises(pytest.fail.Exception, match="measured"):
        conv2d(x, w, padding=1, impl="auto")


def test_unwritable_cache_only_warns(tmp_path):
    autotune.clear_memory()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with autotune.settings(cache_path=blocker / "autotune.json", mode="benchmark", repeats=1), \
            pytest.warns(RuntimeWarning, match="cannot write the cache"):
        x, w = _data((1, 4, 4, 2), (1, 1, 2, 2))
        assert autotune.choose(x.shape, w.shape, x.dtype, (1, 1), ((0, 0), (0, 0)), (1, 1), 1,
                               candidates=CONV_ALGORITHMS) in ("xla", "gemm")
    autotune.clear_memory()
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind


def test_candidates_are_given_not_imported(cache):
    """``measure`` times exactly the algorithms it is handed (conv2d hands it CONV_ALGORITHMS, in ALGORITHMS'
    order); the leaf modules keep the old import paths working."""
    from cnnjax.ops import conv, geometry, tracing

    assert tuple(CONV_ALGORITHMS) == autotune.ALGORITHMS
    assert autotune.shape_only is tracing.shape_only
    assert conv.pair is geometry.pair and conv.normalize_padding is geometry.normalize_padding
    assert conv.conv_output_size is geometry.conv_output_size
    calls = []

    def recording_gemm(*args):
        calls.append(args[2:])  # (stride, padding, dilation, groups, precision, preferred)
        return CONV_ALGORITHMS["gemm"](*args)

    record = autotune.measure((1, 5, 5, 2), (3, 3, 2, 2), jnp.float32, (1, 1), ((1, 1), (1, 1)), (1, 1), 1,
                              candidates={"xla": CONV_ALGORITHMS["xla"], "gemm": recording_gemm})
    assert set(record["ms"]) == {"xla", "gemm"} and record["impl"] in ("xla", "gemm")
    assert calls and calls[0] == ((1, 1), ((1, 1), (1, 1)), (1, 1), 1, None, None)
    with pytest.raises(ValueError, match="candidates"):  # nothing cached, nothing to time
        autotune.tune((1, 7, 7, 2), (3, 3, 2, 2), jnp.float32, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)


@pytest.mark.parametrize(("x", "w", "groups", "kw", "want"), [
    ((16, 56, 56, 64), (3, 3, 64, 64), 1, {}, "winograd"),                       # 3x3 s1, map >= 14, fp32
    ((16, 14, 20, 64), (3, 3, 64, 64), 1, {}, "winograd"),
    ((16, 7, 7, 512), (3, 3, 512, 512), 1, {}, "gemm"),                          # map < 14
    ((16, 56, 56, 128), (3, 3, 128, 128), 1, {"stride": (2, 2)}, "gemm"),         # strided
    ((16, 56, 56, 64), (3, 3, 64, 64), 1, {"dilation": (2, 2)}, "gemm"),          # dilated
    ((16, 56, 56, 32), (3, 3, 32, 64), 1, {}, "xla"),                            # < 64 channels
    ((16, 8, 8, 32), (3, 3, 32, 32), 1, {"stride": (2, 2)}, "xla"),
    ((16, 32, 32, 3), (3, 3, 3, 16), 1, {}, "gemm"),                             # a stem on RGB
    ((16, 224, 224, 3), (7, 7, 3, 64), 1, {"stride": (2, 2)}, "gemm"),           # the 7x7 stem
    ((16, 224, 224, 3), (7, 7, 3, 64), 1, {"stride": (2, 2), "dtype": jnp.bfloat16}, "gemm"),
    ((16, 56, 56, 64), (1, 1, 64, 256), 1, {}, "gemm"),                          # 1x1
    ((8, 56, 56, 32), (3, 3, 1, 32), 32, {}, "gemm"),                            # depthwise
    ((8, 56, 56, 32), (3, 3, 4, 32), 8, {}, "xla"),                              # grouped
    ((16, 56, 56, 64), (3, 3, 64, 64), 1, {"dtype": jnp.bfloat16}, "xla"),       # bf16: XLA won these
    ((16, 4, 4, 64), (3, 3, 64, 64), 1, {"dtype": jnp.bfloat16}, "gemm"),        # tiny map, any dtype
    ((16, 56, 56, 64), (3, 3, 64, 64), 1, {"backend": "gpu"}, "xla"),
    ((16, 56, 56, 64), (1, 1, 64, 256), 1, {"backend": "tpu"}, "xla"),
])
def test_fixed_choice_is_the_documented_cpu_rule(x, w, groups, kw, want):
    assert autotune.fixed_choice(x, w, groups, **{"backend": "cpu", **kw}) == want


def test_fast_equals_lax_conv_on_every_branch_of_the_rule():
    """``impl='fast'`` through each algorithm the rule picks (winograd, gemm stem, gemm 1x1, xla grouped):
    the same output as ``lax.conv`` in float32 (one jit)."""
    rng = np.random.default_rng(1)
    c = autotune.WIDE_CHANNELS
    cases = [((1, 14, 15, c), (3, 3, c, c), 1, 1), ((1, 14, 15, 3), (3, 3, 3, 4), 1, 2),
             ((1, 14, 15, 8), (1, 1, 8, 4), 1, 1), ((1, 14, 15, 8), (3, 3, 2, 4), 4, 1)]
    data = [(jnp.asarray(rng.normal(size=xs), jnp.float32), jnp.asarray(rng.normal(size=ws), jnp.float32), g, s)
            for xs, ws, g, s in cases]
    picked = {autotune.fixed_choice(x.shape, w.shape, g, "cpu", stride=(s, s)) for x, w, g, s in data}
    assert picked == {"winograd", "gemm", "xla"}

    conf = [(g, s, w.shape[0] // 2) for _, w, g, s in data]

    @jax.jit
    def both(xs, ws):
        ours = [conv2d(x, w, stride=s, padding=p, groups=g, impl="fast") for x, w, (g, s, p) in zip(xs, ws, conf)]
        ref = [lax.conv_general_dilated(x, w, (s, s), ((p, p),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=g, precision=lax.Precision.HIGHEST)
               for x, w, (g, s, p) in zip(xs, ws, conf)]
        return ours, ref

    with jax.default_matmul_precision("float32"), autotune.settings(fast_impl="rule"):
        ours, ref = both([d[0] for d in data], [d[1] for d in data])
    for a, b in zip(ours, ref, strict=True):  # error relative to the output's scale (Winograd: ~1e-6 in fp32)
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and np.abs(a - b).max() / np.abs(b).max() < 2e-5


def test_fast_impl_follows_the_setting_then_the_environment_then_the_rule(monkeypatch):
    """``fast`` is the rule unless ``configure(fast_impl=...)`` or ``$CNNJAX_FAST_IMPL`` names one algorithm (the
    setting wins); an unknown name is refused, naming the valid choices. A wide 3x3 layer tells them apart: the
    rule traces no ``lax.conv`` for it (Winograd), ``xla`` exactly one."""
    x, w = jnp.ones((1, 16, 16, autotune.WIDE_CHANNELS)), jnp.ones((3, 3, autotune.WIDE_CHANNELS, 64))

    def convs():
        eqns = jax.make_jaxpr(lambda x, w: conv2d(x, w, padding=1, impl="fast"))(x, w).jaxpr.eqns
        return sum(e.primitive.name == "conv_general_dilated" for e in eqns)

    monkeypatch.delenv(autotune.FAST_IMPL_ENV, raising=False)
    assert autotune.fast_impl(x.shape, w.shape, 1) == autotune.fixed_choice(x.shape, w.shape, 1)
    assert convs() == 0  # the rule: winograd on CPU
    monkeypatch.setenv(autotune.FAST_IMPL_ENV, "xla")
    assert convs() == 1
    with autotune.settings(fast_impl="rule"):
        assert convs() == 0
    assert convs() == 1  # the block ended
    monkeypatch.setenv(autotune.FAST_IMPL_ENV, "cudnn")
    with pytest.raises(ValueError, match="CNNJAX_FAST_IMPL='cudnn'; valid choices: rule, xla, gemm"):
        convs()
    with pytest.raises(ValueError, match="valid choices: rule, xla"):
        autotune.configure(fast_impl="fastest")
