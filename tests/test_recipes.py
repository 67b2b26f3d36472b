"""``--recipe`` and ``--config``: the layers (defaults < recipe < file < given flags), the recipes' settings
against the published commands they cite, and the files a config can come from."""

from __future__ import annotations

import json

import pytest

from train import config as C
from train import recipes as R


def compose(argv, log=None):
    parser = C.build_parser()
    lines = []
    cfg = R.compose(parser.parse_args(argv), R.given_flags(parser, argv), log=log or lines.append)
    return cfg, lines


def test_given_flags_are_only_the_ones_on_the_command_line():
    parser = C.build_parser()
    argv = ["--arch", "lenet5", "--lr", "0.2", "--no-progress", "--model-opt", "modern=True"]
    assert R.given_flags(parser, argv) == {"arch", "lr", "progress", "model_opt"}
    assert parser.parse_args([]).lr is None  # the parser's defaults are restored afterwards


def test_torchvision_v1_is_the_classic_recipe():
    cfg, lines = compose(["--arch", "resnet50", "--recipe", "torchvision-v1"])
    # torchvision references/classification/train.py defaults: SGD momentum 0.9 (no Nesterov), lr 0.1 at batch
    # 8 x 32, wd 1e-4 on every parameter, StepLR(30, 0.1), 90 epochs, no warmup, no label smoothing
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.batch_size, cfg.lr) == ("sgd", 0.9, False, 256, 0.1)
    assert (cfg.weight_decay, cfg.decay_params, cfg.schedule, cfg.lr_step_size, cfg.lr_gamma) == \
        (1e-4, "all", "step", 30, 0.1)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.label_smoothing, cfg.recipe) == (90, 0, 0, "torchvision-v1")
    assert lines == []  # nothing missing
    small, _ = compose(["--arch", "resnet50", "--recipe", "torchvision-v1", "--batch-size", "64"])
    assert small.lr == pytest.approx(0.025)  # 0.1 per 256 images
    given, _ = compose(["--arch", "resnet50", "--recipe", "torchvision-v1", "--batch-size", "64", "--lr", "0.3"])
    assert given.lr == 0.3 and given.schedule == "step"


def test_torchvision_v2_sets_the_whole_published_command():
    cfg, lines = compose(["--arch", "resnet50", "--recipe", "torchvision-v2"])
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.decay_params) == (0.5, 1024, 2e-5, "no-norms")
    assert (cfg.ema_decay, cfg.ema_every, cfg.warmup_epochs, cfg.warmup_start_factor) == (0.99998, 32, 5, 0.01)
    assert (cfg.schedule, cfg.epochs, cfg.label_smoothing, cfg.nesterov) == ("cosine", 600, 0.1, False)
    assert (cfg.augment, cfg.mixup, cfg.cutmix, cfg.random_erasing) == ("trivialaugment", 0.2, 1.0, 0.1)
    assert (cfg.ra_reps, cfg.train_crop_size, cfg.val_resize_size) == (4, None, None)  # digits: no sizes...
    assert len(lines) == 1 and "--train-crop-size, --val-resize-size not applied" in lines[0]  # ... and says so
    assert "not reproduced yet" not in " ".join(lines)
    photos, lines = compose(["--arch", "resnet50", "--recipe", "torchvision-v2", "--dataset", "tfds:imagenet2012"])
    assert (photos.ra_reps, photos.train_crop_size, photos.val_resize_size) == (4, 176, 232) and lines == []
    table = R.RECIPES["torchvision-v2"].markdown()
    for published in ("--auto-augment", "--mixup-alpha", "--norm-weight-decay", "--model-ema"):
        assert published in table


def test_a_saved_config_repeats_the_run_and_flags_override_it(tmp_path):
    saved = C.TrainConfig(arch="lenet5", epochs=3, lr=0.07, seed=4, workdir=str(tmp_path / "old"),
                          model_opt=("modern=True",), schedule="linear")
    C.write_config(tmp_path / "config.json", saved, workdir=str(tmp_path / "old"), num_classes=10, image_size=32,
                   steps_per_epoch=23, total_steps=69, devices=1, processes=1)
    cfg, _ = compose(["--config", str(tmp_path / "config.json")])
    assert cfg == C.TrainConfig(arch="lenet5", epochs=3, lr=0.07, seed=4, model_opt=("modern=True",),
                                schedule="linear", config=str(tmp_path / "config.json"),
                                image_size=32)  # the size the run trained at, as it saved it
    again, _ = compose(["--config", str(tmp_path / "config.json"), "--lr", "0.01", "--workdir", "new"])
    assert (again.lr, again.workdir, again.epochs) == (0.01, "new", 3)


def test_python_configs_and_bad_files(tmp_path):
    (tmp_path / "exp.py").write_text("def get_config():\n    return {'arch': 'mlp', 'batch_size': 32, "
                                     "'recipe': 'torchvision-v1'}\n")
    cfg, _ = compose(["--config", str(tmp_path / "exp.py")])
    assert (cfg.arch, cfg.batch_size, cfg.recipe, cfg.schedule, cfg.lr) == ("mlp", 32, "torchvision-v1", "step",
                                                                            pytest.approx(0.0125))
    (tmp_path / "bad.json").write_text(json.dumps({"arch": "mlp", "learning_rate": 0.1}))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) learning_rate; valid: .*\blr\b"):
        compose(["--config", str(tmp_path / "bad.json")])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        compose(["--config", str(tmp_path / "broken.json")])
    with pytest.raises(FileNotFoundError, match="no such file"):
        compose(["--config", str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match="valid choices: torchvision-v1, torchvision-v2"):
        compose(["--recipe", "timm"])
