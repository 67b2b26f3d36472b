"""``--model-opt KEY=VALUE``: parsing (Python literals), checking against the architecture's options, what
``config.json`` keeps, and that the option reaches the model."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from cnnjax import data as cdata
from train import config as C
from train.main import build_model


def parse(argv):
    return C.from_args(C.build_parser().parse_args(argv))


@pytest.mark.parametrize("item,expected", [
    ("dropout=0.2", ("dropout", 0.2)), ("antialias=True", ("antialias", True)),
    ("hidden=(64, 32)", ("hidden", (64, 32))), ("hidden=[64,32]", ("hidden", (64, 32))),
    ("act='gelu'", ("act", "gelu")), ("act=gelu", ("act", "gelu")), ("stochastic-depth-prob = 0.1",
                                                                     ("stochastic_depth_prob", 0.1)),
])
def test_values_are_python_literals(item, expected):
    assert C.parse_model_opt(item) == expected


@pytest.mark.parametrize("item", ["dropout", "=3", "1x=2"])
def test_malformed_items_are_refused(item):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        C.parse_model_opt(item)


def test_the_flag_repeats_and_reaches_the_config():
    cfg = parse(["--arch", "mlp", "--model-opt", "hidden=(32,)", "--model-opt", "dropout=0.1"])
    assert cfg.model_opt == ("hidden=(32,)", "dropout=0.1")
    assert parse(["--arch", "mlp"]).model_opt == ()
    C.validate(cfg)
    assert C.to_json(cfg)["model_opt"] == ["dropout=0.1", "hidden=(32,)"]  # sorted, canonical literals


def test_unknown_key_names_the_valid_options():
    with pytest.raises(ValueError, match=r"did you mean antialias\?.*its options: .*skip"):
        C.validate(C.TrainConfig(arch="resnet18", model_opt=("antialiased=True",)))
    with pytest.raises(ValueError, match="set by --precision"):
        C.validate(C.TrainConfig(arch="resnet18", model_opt=("dtype='bfloat16'",)))
    with pytest.raises(ValueError, match="set by the dataset's classes"):
        C.validate(C.TrainConfig(arch="lenet5", model_opt=("num_classes=3",)))


def test_equal_settings_resume_and_different_ones_do_not(tmp_path):
    path = tmp_path / "config.json"
    cfg = C.TrainConfig(arch="mlp", model_opt=("hidden=(32, 16)", "dropout=0.1"))
    C.write_config(path, cfg)
    same = C.TrainConfig(arch="mlp", model_opt=("dropout=0.10", "hidden=[32,16]"))
    assert C.check_resume(path, same) == []
    with pytest.raises(ValueError, match="--model-opt"):
        C.check_resume(path, C.TrainConfig(arch="mlp", model_opt=("hidden=(32,)",)))
    assert json.loads(path.read_text())["model_opt"] == ["dropout=0.1", "hidden=(32, 16)"]


def test_the_option_reaches_the_model():
    info = cdata.DatasetInfo(name="t", num_classes=3, image_size=8, channels=1, num_train=1, num_val=1,
                             class_names=["a", "b", "c"], mean=(0.0,), std=(1.0,))
    cfg = C.TrainConfig(arch="mlp", model_opt=("hidden=(7, 5)",))
    model = build_model(cfg, info)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
    kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(shapes["params"])
               if "kernel" in jax.tree_util.keystr(path)]
    assert kernels == [(64, 7), (7, 5), (5, 3)]
    default = build_model(C.TrainConfig(arch="mlp"), info)  # negative case: without the option, other widths
    assert default.hidden != (7, 5)


def test_evaluate_reads_the_runs_own_options(tmp_path):
    from train.evaluate import saved_model_opt

    C.write_config(tmp_path / "config.json", C.TrainConfig(arch="mlp", model_opt=("hidden=(7,)",)))
    (tmp_path / "checkpoints" / "12").mkdir(parents=True)
    assert saved_model_opt(str(tmp_path)) == ("hidden=(7,)",)
    assert saved_model_opt(str(tmp_path / "checkpoints" / "12")) == ("hidden=(7,)",)
    assert saved_model_opt("torchvision:resnet18") == ()


@pytest.mark.parametrize("text,expected", [("false", False), ("False", False), ("FALSE", False), ("true", True),
                                           ("True", True)])
def test_true_false_in_any_case_are_booleans(text, expected):
    """A shell user's ``aux_logits=false`` must not become the (truthy) string ``'false'``."""
    assert C.parse_model_opt(f"aux_logits={text}") == ("aux_logits", expected)
    assert C.parse_model_opt("act=falsey") == ("act", "falsey")  # only the exact words


def test_googlenet_aux_logits_false_through_the_config():
    """``--model-opt aux_logits=false`` reaches GoogLeNet: no aux parameters, training returns plain logits;
    the default has both heads."""
    info = cdata.DatasetInfo(name="t", num_classes=4, image_size=32, channels=3, num_train=1, num_val=1,
                             class_names=list("abcd"), mean=(0.0,) * 3, std=(1.0,) * 3)
    cfg = parse(["--arch", "googlenet", "--model-opt", "aux_logits=false", "--model-opt", "width_mult=0.125"])
    C.validate(cfg)
    assert C.to_json(cfg)["model_opt"] == ["aux_logits=False", "width_mult=0.125"]
    x = jnp.zeros((2, 32, 32, 3))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    for model_opt, has_aux in ((cfg.model_opt, False), (("width_mult=0.125",), True)):
        model = build_model(dataclasses.replace(cfg, model_opt=model_opt), info)
        variables = jax.eval_shape(lambda m=model: m.init(rngs, x, False))
        assert ("aux1" in variables["params"]) == has_aux
        out = jax.eval_shape(lambda v, m=model: m.apply(v, x, True, mutable=["batch_stats"], rngs=rngs)[0],
                             variables)
        assert isinstance(out, tuple) == has_aux
        assert jax.eval_shape(lambda v, m=model: m.apply(v, x, False), variables).shape == (2, 4)  # eval: main head
