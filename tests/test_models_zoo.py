"""The model zoo: registry, parameter counts against torchvision's published table, shapes (abstractly), one
real forward per family at small resolution, train/eval behaviour and the input-size check."""

from __future__ import annotations

import csv
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.nn import InputTooSmallError

REFERENCE = pathlib.Path(__file__).parent / "data" / "torchvision-imagenet1k-v1.tsv"
TORCHVISION_PARAMS = {row["arch"]: int(row["params"])
                      for row in csv.DictReader((ln for ln in REFERENCE.open() if not ln.startswith("#")),
                                                delimiter="\t")}
SMALL = {"lenet5", "lenet5_modern", "mlp", "mlp_10m", "vgg_small"} | {f"resnet{d}{s}" for d in (20, 32, 44, 56, 110)
                                                        for s in ("", "_plain")}


def abstract_init(model, size):
    x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x), x)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def test_registry_lists_the_lecture_architectures():
    expected = set(TORCHVISION_PARAMS) | {"lenet5", "mlp", "mlp_10m", "resnet20", "resnet32", "resnet44",
                                          "resnet56", "resnet110", "resnet20_plain"}
    assert expected <= set(models.names())


def test_unknown_name_and_option_errors_list_valid_choices():
    with pytest.raises(ValueError, match="valid choices: .*resnet50"):
        models.create("resnet51")
    with pytest.raises(TypeError, match="valid options: .*num_classes"):
        models.create("resnet18", no_such_option=True)


def cifar_resnet_params(depth: int, classes: int = 10) -> int:
    """Closed form for He et al.'s CIFAR ResNet with option-A shortcuts (conv without bias, BN scale+bias)."""
    n = (depth - 2) // 6
    total = 3 * 3 * 3 * 16 + 2 * 16
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * cin * width + 9 * width * width + 4 * width
            cin = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth,approx", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_resnet_counts(depth, approx):
    for suffix in ("", "_plain"):  # the plain variant has the same parameters, only no shortcuts
        n = count(abstract_init(models.create(f"resnet{depth}{suffix}"), 32)["params"])
        assert n == cifar_resnet_params(depth)
        assert abs(n - approx) / approx < 0.03  # the paper's rounded figures


def test_small_model_counts():
    # LeNet-5 on 1x32x32: c1 6*25+6, c3 16*6*25+16, c5 16*25*120+120, f6 120*84+84, head 84*10+10
    assert count(abstract_init(models.create("lenet5"), 32)["params"]) == 156 + 2416 + 48120 + 10164 + 850
    n = count(abstract_init(models.create("mlp_10m", num_classes=10, in_channels=3), 32)["params"])
    assert n == 3072 * 2048 + 2048 + 2048 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10
    assert 9.5e6 < n < 10.5e6


@pytest.mark.slow
@pytest.mark.parametrize("arch", models.names())
def test_every_model_traces_and_torchvision_counts_match(arch):
    """Abstract traces only (no compile): logits and features shapes, and for torchvision's architectures the
    exact published parameter count at num_classes=1000 (GoogLeNet counted without its auxiliary heads), from the
    reference table and from the architecture's record (which has every torchvision architecture)."""
    model = models.create(arch, **({"aux_logits": False} if arch == "googlenet" else {}))
    size = 32 if arch in SMALL else 224
    x = jax.ShapeDtypeStruct((2, size, size, model.in_channels), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    logits, variables = jax.eval_shape(lambda x: model.init_with_output(rngs, x, False), x)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, False, method="features"), variables, x)
    assert logits.shape == (2, model.num_classes)
    assert feats.ndim == 4 and feats.shape[0] == 2
    assert "head" in variables["params"]
    if arch in TORCHVISION_PARAMS:
        assert count(variables["params"]) == TORCHVISION_PARAMS[arch]
    if models.record(arch).weights:
        assert count(variables["params"]) == models.record(arch).weights_for("IMAGENET1K_V1").num_params


def test_reference_table_is_covered():
    assert set(TORCHVISION_PARAMS) <= set(models.names())


def test_features_is_the_last_spatial_map():
    model = models.create("resnet50")
    v = abstract_init(model, 224)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), v, x).shape == (1, 7, 7, 2048)


def test_input_too_small_names_the_smallest_size():
    with pytest.raises(InputTooSmallError, match=r"at least 63x63, got 16x16"):
        models.check_input_size(models.create("alexnet"), 16)
    models.check_input_size(models.create("alexnet"), 63)
    with pytest.raises(InputTooSmallError, match=r"at least 32x32"):  # 28x28 MNIST into LeNet-5 without padding
        models.check_input_size(models.create("lenet5"), 28)


def test_wrong_channel_count_is_explained():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        models.create("resnet18").init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


# One real forward (and one train-mode pass) per family at small resolution.
FAMILIES = [("resnet18", 32), ("alexnet", 63), ("vgg11_bn", 32), ("lenet5", 32), ("lenet5_modern", 32),
            ("mlp", 8), ("resnet20", 16), ("resnet20_plain", 16)]


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", FAMILIES)
def test_real_forward_and_batchnorm_modes(arch, size):
    model = models.create(arch, num_classes=5)
    x = jax.random.normal(jax.random.key(1), (2, size, size, model.in_channels))

    @jax.jit  # one compile: init, an eval pass, a train pass, an eval pass with a mutable collection
    def both(x):
        variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
        eval_out = model.apply(variables, x, False)
        train_out, updates = model.apply(variables, x, True, rngs={"dropout": jax.random.key(2)},
                                         mutable=["batch_stats"])
        frozen = model.apply(variables, x, False, mutable=["batch_stats"])[1]
        return variables, eval_out, train_out, updates, frozen

    variables, eval_out, train_out, updates, frozen = both(x)
    assert eval_out.shape == train_out.shape == (2, 5)
    assert np.isfinite(np.asarray(eval_out)).all() and np.isfinite(np.asarray(train_out)).all()
    if "batch_stats" in variables:  # statistics move only in training mode
        before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
        assert any(not np.allclose(a, b) for a, b in zip(before, after))
        assert all(np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(frozen["batch_stats"])))


def test_dropout_only_in_training():
    model = models.create("mlp", num_classes=4, dropout=0.5, hidden=(32,))
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
    v = model.init(jax.random.key(0), x)
    f = jax.jit(lambda v, x, k, train: model.apply(v, x, train, rngs={"dropout": k}), static_argnums=3)
    e1, e2 = f(v, x, jax.random.key(1), False), f(v, x, jax.random.key(2), False)
    t1, t2 = f(v, x, jax.random.key(1), True), f(v, x, jax.random.key(2), True)
    np.testing.assert_array_equal(e1, e2)
    assert not np.allclose(t1, t2)


@pytest.mark.slow
def test_zero_init_last_bn():
    model = models.create("resnet18", zero_init_last_bn=True)
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert float(jnp.abs(v["params"]["stage1_block0"]["bn2"]["scale"]).max()) == 0.0
    assert float(jnp.abs(v["params"]["stage1_block0"]["bn1"]["scale"]).min()) == 1.0
