"""``--zero-init-residual auto|on|off``: under ``auto`` every conv of every ResNet's body learns from the start;
zero init is refused where no shortcut carries the signal; the option-A fixed point that makes ``auto`` off for
the CIFAR ResNets; old ``config.json`` booleans on resume."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.data.base import DatasetInfo
from cnnjax.models.cifar_resnet import CifarBasicBlock, CifarResNet
from cnnjax.models.registry import ModulePath
from train import config as C
from train.main import build_model, main

INFO = DatasetInfo("test", num_classes=10, image_size=32, channels=3, num_train=4, num_val=4,
                   class_names=[str(i) for i in range(10)], mean=(0.0,) * 3, std=(1.0,) * 3)
# one compile each; the others (same blocks, more of them, or a slower compile) are in the slow run
FAST = ("resnet20_plain",)  # the edit loop (at depth 8, ~3 s); the others run in the full suite
# Every architecture with the option, and the ones that are built and trained below: one per distinct body. The
# deeper CIFAR ResNets (32/44/56/110, plain or not) repeat resnet20's blocks (same code, more of them); resnet34
# repeats resnet18's BasicBlock, and wide_resnet50_2 and the 101/152-layer variants repeat resnet50's (or
# resnext50's grouped) Bottleneck with other numbers: they add minutes of compile and no new case. Their ``auto``
# decision is still checked, for every one, without building them (test_auto_is_on_for_exactly_the_imagenet_ones).
ALL = tuple(n for n in models.names() if "zero_init_last_bn" in models.registry.options(n))
ALL_IMAGENET = tuple(n for n in ALL if models.record(n).input_size == 224)
CIFAR = ("resnet20", "resnet20_plain")
IMAGENET = ("resnet18", "resnet50", "resnext50_32x4d")  # BasicBlock, Bottleneck, grouped Bottleneck
# The built cases' depth, as ``--model-opt`` items (the CLI's own path): the plain CIFAR net at depth 8 (one block
# per stage: the blocks of depth 20, fewer of them; resnet20 itself, with shortcuts, runs at depth 20); the
# bottleneck ResNets with stages of 2, 1, 1, 1 blocks instead of 3, 4, 6, 3: every kind of block the full nets
# have (stage 1's stride-1 projection from 64 to 256 channels, an identity shortcut, the strided projections of
# stages 2-4), built by the same ``ResNet.forward`` loop, and the same zero-init code; the other 11 blocks repeat
# them and add compile time, no new case. resnet18 keeps its own (2, 2, 2, 2).
DEPTH_OPTS = {"resnet20_plain": ("depth=8",), "resnet50": ("stage_sizes=(2,1,1,1)",),
              "resnext50_32x4d": ("stage_sizes=(2,1,1,1)",)}

def _batch(channels: int = 3) -> tuple[jax.Array, jax.Array]:
    return jax.random.normal(jax.random.key(1), (4, 32, 32, channels)), jnp.arange(4) % 10


def _loss(model: nn.Module, params, batch_stats, x, y):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _grads(model: nn.Module, steps: int = 0) -> tuple[dict, dict, dict]:
    """The initial parameters, the parameters after ``steps`` plain SGD steps (lr 0.1) and their gradient of a
    train-mode cross entropy, each flattened to ``{path: array}``."""
    x, y = _batch(model.in_channels)
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])
    grad = jax.jit(jax.grad(functools.partial(_loss, model)))
    params = init = variables["params"]
    g = grad(params, variables["batch_stats"], x, y)
    for _ in range(steps):
        params = jax.tree.map(lambda p, d: p - 0.1 * d, params, g)
        g = grad(params, variables["batch_stats"], x, y)
    flat = lambda tree: {tuple(k.key for k in path): np.asarray(v)  # noqa: E731
                         for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    return flat(init), flat(params), flat(g)


def _conv_kernels(g: dict[ModulePath, np.ndarray]) -> dict[ModulePath, np.ndarray]:
    """Every conv kernel of the body (4-D: the head is a matrix)."""
    kernels = {p: v for p, v in g.items() if v.ndim == 4}
    assert kernels and all(p[0] != "head" for p in kernels)
    return kernels


def _last_bn_scales(params: dict[ModulePath, np.ndarray]) -> list[ModulePath]:
    """The last BN scale of every block (``bn2`` of a basic block, ``bn3`` of a bottleneck)."""
    blocks = {p[0] for p in params if p[0].startswith("stage")}
    last = lambda b: (b, "bn3", "scale") if (b, "bn3", "scale") in params else (b, "bn2", "scale")  # noqa: E731
    return [last(b) for b in sorted(blocks)]


def _marks(names: tuple[str, ...]) -> list:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("arch", _marks(CIFAR + IMAGENET))
def test_every_conv_of_the_body_learns_under_auto(arch):
    """Built as the CLI builds it by default: without zero init every conv kernel gets a gradient at init. With
    it (the ImageNet ResNets) a branch's convs get theirs once its last BN scale has moved: after one step
    every conv kernel has a gradient and every channel of every last BN scale has moved or is about to (at
    32x32 a few channels only get a gradient at the second step: a 1x1 stride-2 projection of a 2x2 map passes
    the gradient to one position of four)."""
    opt = DEPTH_OPTS.get(arch, ())
    model = build_model(C.TrainConfig(arch=arch, image_size=32, model_opt=opt), INFO)
    if opt:
        assert (model.depth == 8) if arch == "resnet20_plain" else (tuple(model.stage_sizes) == (2, 1, 1, 1))
    zero = C.zero_init_last_bn(arch, "auto")
    assert zero == (arch in IMAGENET) and model.zero_init_last_bn == zero
    init, params, g = _grads(model, steps=1 if zero else 0)
    for path in _last_bn_scales(init) if zero else ():
        assert np.all(init[path] == 0) and np.all((params[path] != 0) | (g[path] != 0)), path
    dead = [path for path, v in _conv_kernels(g).items() if not np.any(v)]
    assert not dead, f"{arch}: conv kernels without a gradient: {dead}"



def test_the_representatives_cover_every_body():
    """The built cases above are one per (model class, block class, grouped or not, shortcut or not) of all the
    architectures with the option: a new kind of body fails here until it gets its own case."""
    def kind(name):
        f = models.record(name).factory
        kw = {**getattr(f, "keywords", {})}
        return (getattr(f, "func", f), kw.get("block_cls"), kw.get("groups", 1) > 1, kw.get("skip", True))

    assert set(CIFAR + IMAGENET) <= set(ALL) and len(ALL) > len(CIFAR + IMAGENET)
    assert {kind(n) for n in CIFAR + IMAGENET} == {kind(n) for n in ALL}


def test_auto_is_on_for_exactly_the_imagenet_ones():
    """``auto`` for every architecture with the option (those not built above too): on for the ImageNet ResNets
    (projection shortcuts), off for the CIFAR ones (option-A shortcuts), and the model built with it agrees."""
    for arch in ALL:
        zero = C.zero_init_last_bn(arch, "auto")
        assert zero == (arch in ALL_IMAGENET), arch
        model = build_model(C.TrainConfig(arch=arch, image_size=32), INFO)
        assert model.zero_init_last_bn == zero, arch
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2"} <= set(ALL_IMAGENET)
    assert not {"resnet20", "resnet56_plain", "resnet110"} & set(ALL_IMAGENET)

@pytest.mark.slow
def test_zero_init_on_a_plain_net_kills_the_body_gradient():
    """The negative case: zero init forced onto a plain net (past the model's own refusal) leaves only the
    head's bias with a gradient, and a block without a shortcut outputs exactly 0."""
    with pytest.raises(ValueError, match="needs shortcuts"):
        models.create("resnet20_plain", zero_init_last_bn=True)
    with pytest.raises(ValueError, match="needs shortcuts"):
        models.create("resnet18", skip=False, zero_init_last_bn=True)

    class Forced(CifarResNet):
        def __post_init__(self):
            super(CifarResNet, self).__post_init__()  # skip CifarResNet's check

    _, _, g = _grads(Forced(depth=8, skip=False, zero_init_last_bn=True))
    assert all(not np.any(v) for v in _conv_kernels(g).values())
    assert not np.any(g[("head", "kernel")]) and np.any(g[("head", "bias")])

    model = models.create("resnet20")
    block = CifarBasicBlock(16, 1, model.conv_def(), model.norm_def(train=True), skip=False, zero_init_last=True)
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 16))
    v = block.init(jax.random.key(0), x)
    f = lambda params, x: block.apply({**v, "params": params}, x, mutable=["batch_stats"])[0]  # noqa: E731
    assert not np.any(f(v["params"], x))
    gp, gx = jax.grad(lambda p, x: f(p, x).sum(), argnums=(0, 1))(v["params"], x)
    assert not np.any(gx) and all(not np.any(leaf) for leaf in jax.tree.leaves(gp))


@pytest.mark.slow
def test_zero_init_with_option_a_shortcuts_never_trains_the_padded_channels():
    """Why ``auto`` is off for the CIFAR ResNets: where an option-A shortcut zero-pads the channels, a
    zero-initialised block outputs ReLU(0 + 0), whose gradient is 0, so those channels' last BN scale gets no
    gradient, not even after a step: 16 of 32 channels in stage 2, 48 of 64 in stage 3 stay 0 for good.
    Option-B (projection) shortcuts carry signal into every channel."""
    _, params, g = _grads(models.create("resnet20", zero_init_last_bn=True), steps=1)
    stuck = {p[0]: int(np.sum((params[p] == 0) & (g[p] == 0))) for p in _last_bn_scales(params)}
    assert all(stuck[f"stage1_block{b}"] == 0 for b in range(3))
    assert all(stuck[f"stage2_block{b}"] == 16 and stuck[f"stage3_block{b}"] == 48 for b in range(3)), stuck
    _, params, g = _grads(CifarResNet(depth=8, shortcut="B", zero_init_last_bn=True), steps=1)
    assert all(np.all((params[p] != 0) | (g[p] != 0)) for p in _last_bn_scales(params))


def test_record_field_needs_the_model_option():
    with pytest.raises(ValueError, match="zero_init_last_bn option"):
        models.ArchRecord("x", models.record("lenet5").factory, zero_init_residual=True)
    assert models.record("resnet50").zero_init_residual and not models.record("resnet20").zero_init_residual
    assert [C.zero_init_last_bn("lenet5", m) for m in C.ZERO_INIT_MODES] == [False] * 3


def test_flags_old_and_new():
    parse = lambda *a: C.build_parser().parse_args(list(a)).zero_init_residual  # noqa: E731
    assert (parse(), parse("--no-zero-init-residual"), parse("--zero-init-residual", "on")) == ("auto", "off", "on")
    with pytest.raises(SystemExit):
        parse("--zero-init-residual", "yes")


@pytest.mark.parametrize("arch,expected", [
    ("resnet20_plain", "--zero-init-residual on: resnet20_plain: zero_init_last_bn=True needs shortcuts"),
    ("lenet5", "--zero-init-residual on: lenet5 has no residual blocks"),
])
def test_cli_refuses_on_without_shortcuts_before_reading_data(arch, expected, tmp_path, monkeypatch, capsys):
    from train import main as M

    monkeypatch.setattr(M.cdata, "load", lambda *a, **k: pytest.fail("read data before the check"))
    code = main(["--arch", arch, "--zero-init-residual", "on", "--workdir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == C.EXIT_BAD_INPUT and err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch,saved,now,history", [
    ("resnet50", True, "auto", []),       # the old default and the new one: the same initialisation
    ("resnet50", False, "off", []),       # --no-zero-init-residual, then and now
    ("lenet5", True, "auto", []),         # nothing to zero-initialise either way
    ("resnet20", True, "auto", [["on", "auto"]]),  # only the fresh init differed: recorded, not refused
])
def test_resume_reads_the_old_boolean(arch, saved, now, history, tmp_path):
    cfg = C.TrainConfig(arch=arch, zero_init_residual=now, resume=True, workdir=str(tmp_path))
    record = C.to_json(cfg)
    record["zero_init_residual"] = saved
    (tmp_path / "config.json").write_text(json.dumps(record))
    got = C.check_resume(tmp_path / "config.json", cfg, step=5)
    assert [h["changed"]["zero_init_residual"] for h in got] == history
