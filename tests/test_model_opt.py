"""``--model-opt KEY=VALUE``: parsing (Python literals), checking against the architecture's options, what
``config.json`` keeps, and that the option reaches the model."""

from __future__ import annotations

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
