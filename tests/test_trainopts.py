"""``--layer-decay``, ``--ra-reps``, ``--train-crop-size`` / ``--val-resize-size`` (issue #14).

References: the closed form of layer-wise decay (the update of group i is ``rate ** (G-1-i)`` times the undecayed
one) and torch's SGD/AdamW with timm-style per-group learning rates; torchvision's ``RASampler`` index arithmetic
(``references/classification/sampler.py``, restated below); torchvision's ``Resize`` + ``CenterCrop`` eval
transform for the val images.
"""

from __future__ import annotations

import collections
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import cnnjax.data as data
from cnnjax import models
from cnnjax.data import base
from cnnjax.training import optim
from train import config as C
from train import main as M
from train import trainopts

# ------------------------------------------------------------------------------------------------------------------
# --layer-decay
# ------------------------------------------------------------------------------------------------------------------

TINY = ("stem", "stage1_block0", "stage1_block1", "stage2_block0", "head")  # G = 5


def _tiny_params(rng):
    return {name: {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)} for name in TINY}


def _opt(name):
    return optim.make_optimizer(name, 0.1, 0.05 if name == "adamw" else 1e-2, total_steps=10,
                                schedule=optim.Schedule("constant"), nesterov=False, decay_params="all")


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_layer_decay_scales_each_group_update_by_the_closed_form(name):
    """With the same gradients, parameters and state, the update of every parameter in group i is exactly
    ``rate ** (G - 1 - i)`` times the undecayed update (weight decay included), step after step."""
    rate, rng = 0.6, np.random.default_rng(0)
    params = _tiny_params(rng)
    scales = optim.layer_decay_scales(list(params), rate)
    assert scales == {n: rate ** (4 - i) for i, n in enumerate(TINY)}
    plain, decayed = _opt(name), optax.chain(_opt(name), optim.scale_by_layer(scales))
    s_plain, s_dec = plain.init(params), decayed.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        u_plain, s_plain = plain.update(grads, s_plain, params)
        u_dec, s_dec = decayed.update(grads, s_dec, params)
        for i, n in enumerate(TINY):
            for k in ("kernel", "bias"):
                np.testing.assert_allclose(u_dec[n][k], rate ** (4 - i) * u_plain[n][k], rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, u_plain)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_layer_decay_matches_torch_param_groups_with_scaled_lr(name):
    """timm's layer decay is a torch param group per layer with ``lr x scale`` (torch multiplies weight decay by
    the group's lr): three steps of ours equal three steps of torch's SGD (momentum 0.9, classic) / AdamW."""
    torch = pytest.importorskip("torch")
    rate, lr, rng = 0.5, 0.1, np.random.default_rng(1)
    wd = 0.05 if name == "adamw" else 1e-2
    params = _tiny_params(rng)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(3)]
    scales = optim.layer_decay_scales(list(params), rate)
    tx = optax.chain(_opt(name), optim.scale_by_layer(scales))
    state, ours = tx.init(params), params
    for g in grads:
        u, state = tx.update(g, state, ours)
        ours = optax.apply_updates(ours, u)

    tparams = {(n, k): torch.tensor(np.asarray(params[n][k]), requires_grad=True) for n in TINY
               for k in ("kernel", "bias")}
    groups = [{"params": [tparams[(n, "kernel")], tparams[(n, "bias")]], "lr": lr * scales[n]} for n in TINY]
    opt = (torch.optim.AdamW(groups, lr=lr, weight_decay=wd) if name == "adamw"
           else torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd))
    for g in grads:
        for (n, k), p in tparams.items():
            p.grad = torch.tensor(np.asarray(g[n][k]))
        opt.step()
    for (n, k), p in tparams.items():
        np.testing.assert_allclose(np.asarray(ours[n][k]), p.detach().numpy(), rtol=1e-5, atol=1e-6)


def _names(arch, size=32, **kw):
    model = models.create(arch, num_classes=10, **kw)
    return list(trainopts.param_shapes(model, size, getattr(model, "in_channels", 3)))


def test_layer_groups_of_a_few_architectures():
    """Stem 0, every block its own group in order, the head last (timm's fine ``group_matcher``: ResNet-18 has
    the stem, 8 blocks and the fc, 10 groups)."""
    g = optim.layer_groups(_names("resnet18"), "resnet18")
    assert g == {"stem": 0, **{f"stage{s}_block{b}": 2 * (s - 1) + b + 1 for s in range(1, 5) for b in range(2)},
                 "head": 9}
    assert optim.layer_groups(_names("mlp"), "mlp") == {"fc1": 0, "fc2": 1, "head": 2}
    assert optim.layer_groups(_names("alexnet", 64), "alexnet") == {
        **{f"conv{i}": i - 1 for i in range(1, 6)}, "fc6": 5, "fc7": 6, "head": 7}
    # timm's merges: a ConvNeXt downsample joins the next stage's first block, a DenseNet transition its block's
    # last layer; ConvNeXt's head norm / DenseNet's norm5 are in the head group
    assert optim.layer_groups(["stem_conv", "stem_norm", "stage1_block0", "downsample1", "stage2_block0",
                               "head_norm", "head"]) == {"stem_conv": 0, "stem_norm": 0, "stage1_block0": 1,
                                                         "downsample1": 2, "stage2_block0": 2, "head_norm": 3,
                                                         "head": 3}
    assert optim.layer_groups(["stem", "denseblock1_layer0", "denseblock1_layer1", "transition1",
                               "denseblock2_layer0", "norm5", "head"])["transition1"] == 2
    scales = optim.layer_decay_scales(_names("resnet18"), 0.75)
    assert scales["head"] == 1.0 and scales["stem"] == pytest.approx(0.75 ** 9)


def _call_order(arch, size):
    """The top-level modules in the order the model creates them (an un-jitted init inside eval_shape: the dict
    keeps insertion order there), an independent reference for the rule-based order."""
    model = models.create(arch, num_classes=10)
    order = []

    def init():
        v = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                       jnp.zeros((1, size, size, getattr(model, "in_channels", 3))), train=False)
        order.append(list(v["params"]))
        return v

    jax.eval_shape(init)
    return order[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", models.names())
def test_every_architecture_has_layer_groups_in_module_order(arch):
    """For every registered architecture: groups never decrease along the order the model calls its modules
    (auxiliary classifiers, which the rules put with the head, aside), the first module is group 0, the head
    the last group."""
    order = _call_order(arch, 64 if arch == "alexnet" else 32)
    groups = optim.layer_groups(order, arch)
    seq = [groups[n] for n in order if not n.startswith("aux")]
    assert seq == sorted(seq) and seq[0] == 0 and groups["head"] == max(groups.values()) >= 2


def test_layer_decay_bad_input():
    with pytest.raises(ValueError, match="no layer grouping for mynet: its top-level module 'mystery'"):
        optim.layer_groups(["stem", "mystery", "head"], "mynet")
    with pytest.raises(ValueError, match="no layers below its head"):
        optim.layer_groups(["head"], "tiny")
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"--layer-decay must be in \(0, 1\]"):
            C.validate(C.resolve_defaults(C.TrainConfig(arch="lenet5", layer_decay=bad)))
    assert trainopts.layer_decay_scales(None, "lenet5", 1.0, 32, 1) is None  # 1 = off: no transform


@pytest.mark.parametrize("argv, message", [
    (["--layer-decay", "0"], r"--layer-decay must be in \(0, 1\] \(1 = off\), got 0.0"),
    (["--ra-reps", "0"], "--ra-reps must be >= 1"),
    (["--train-crop-size", "24"], "--train-crop-size applies only to the tfds: and folder: datasets"),
    (["--val-resize-size", "40"], "--val-resize-size applies only to the tfds: and folder: datasets"),
    (["--dataset", "synthetic", "--ra-reps", "2"], "--ra-reps: the synthetic dataset"),
])
def test_bad_cli_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = M.main(["--arch", "lenet5", "--workdir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before anything was written or compiled


# ------------------------------------------------------------------------------------------------------------------
# --ra-reps
# ------------------------------------------------------------------------------------------------------------------

def _ra_sampler(perm, reps, replicas, rank):
    """torchvision's RASampler.__iter__ on a given base permutation (its arithmetic, restated): each index
    ``reps`` times, padded to a multiple of the replicas, dealt out ``indices[rank::replicas]`` (the cut to
    ``num_selected_samples`` is left to the caller)."""
    n = len(perm)
    num_samples = -(-n * reps // replicas)
    indices = [int(e) for e in perm for _ in range(reps)]
    indices += indices[: num_samples * replicas - len(indices)]
    return indices[rank: num_samples * replicas: replicas]


@pytest.mark.parametrize("n, batch, reps", [(100, 16, 4), (103, 12, 3), (64, 8, 2)])
def test_repeated_order_is_rasampler_dealt_to_reps_devices(n, batch, reps):
    """With as many devices as copies (D = reps, each taking ``B / D`` consecutive rows), device k's rows of every
    global batch are exactly what RASampler gives rank k for that step; every index appears ``reps`` times within
    the epoch's used part (but the last one, which may be cut), and the epoch keeps ``n`` rows."""
    perm = base.epoch_permutation(n, 5, 2)
    order = base.epoch_permutation(n, 5, 2, reps=reps, global_batch_size=batch)
    assert order.shape == (n,)
    nb, local = n // batch, batch // reps
    used = order[: nb * batch]
    counts = collections.Counter(used.tolist())
    assert sum(c != reps for c in counts.values()) <= 1 and max(counts.values()) == reps
    assert len(counts) == -(-nb * batch // reps)  # about 1/reps of the examples per epoch
    if batch % reps == 0:
        for k in range(reps):
            theirs = _ra_sampler(perm, reps, reps, k)
            for b in range(nb):
                np.testing.assert_array_equal(used[b * batch + k * local: b * batch + (k + 1) * local],
                                              theirs[b * local: (b + 1) * local])


@pytest.mark.parametrize("devices", [4, 8])
def test_repeated_copies_land_on_different_devices(devices):
    batch, reps = 32, 4
    order = base.epoch_permutation(200, 0, 0, reps=reps, global_batch_size=batch)
    for b in range(200 // batch):
        rows = order[b * batch:(b + 1) * batch]
        device_of = collections.defaultdict(set)
        for r, idx in enumerate(rows):
            device_of[int(idx)].add(r // (batch // devices))
        copies = collections.Counter(rows.tolist())
        assert all(len(device_of[i]) == copies[i] for i in copies)  # no two copies share a device
    assert np.array_equal(base.epoch_permutation(50, 3, 1, reps=1), base.epoch_permutation(50, 3, 1))


def _rows(batches):
    return np.concatenate([b["image"] for b in batches])


def test_digits_repeats_with_different_shifts_and_resumes_exactly():
    """digits (ArraySource): every train batch holds each example 4 times, each copy shifted differently (its
    augmentation is keyed by its row); a mid-epoch start equals the rest of the uninterrupted epoch."""
    src = data.load("digits", seed=3, ra_reps=4)
    raw = data.load("digits", seed=3)
    epoch = list(src.batches("train", 32, epoch=1))
    assert len(epoch) == raw.num_batches("train", 32) == src.num_batches("train", 32)
    for batch in epoch[:3]:
        groups = collections.defaultdict(list)
        for r in range(32):
            groups[r % 8].append(batch["image"][r])  # copy c of example j sits at row c * 8 + j
        for j, imgs in groups.items():
            assert len({batch["label"][j + 8 * c] for c in range(4)}) == 1
            assert len({a.tobytes() for a in imgs}) > 1, j  # not four identical crops
    rest = list(src.batches("train", 32, epoch=1, start_batch=5))
    np.testing.assert_array_equal(_rows(rest), _rows(epoch[5:]))
    halves = [list(src.batches("train", 32, epoch=1, process_index=p, process_count=2)) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([_rows(halves[0][:1]), _rows(halves[1][:1])]), epoch[0]["image"])


def _rgb_folder(root: pathlib.Path, n_train=12, n_val=3, w=100, h=90) -> pathlib.Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                yy, xx = np.mgrid[0:h, 0:w]
                img = np.stack([(xx * rng.uniform(1, 2) + yy * rng.uniform(0, 1)) % 256,
                                (yy * rng.uniform(1, 2)) % 256, rng.integers(0, 256, (h, w))], -1)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    pytest.importorskip("grain")
    return _rgb_folder(tmp_path_factory.mktemp("trainopts"))


def test_folder_repeats_with_different_crops_and_resumes_exactly(photos):
    """folder: (Grain + PIL): each of the 4 copies of an image gets its own random-resized crop (keyed by its
    position in the epoch), the order is the repeated one, a mid-epoch start equals the uninterrupted epoch."""
    with data.load(f"folder:{photos}", image_size=72, seed=1, ra_reps=4) as src:
        epoch = list(src.batches("train", 8, epoch=0))
        order = base.epoch_permutation(24, 1, 0, reps=4, global_batch_size=8)
        labels = np.concatenate([b["label"] for b in epoch])
        np.testing.assert_array_equal(labels, np.array(src._files["train"].labels)[order[:24]])
        x = epoch[0]["image"]
        for j in range(2):  # rows j, j + 2, j + 4, j + 6: the copies of one image
            crops = {x[j + 2 * c].tobytes() for c in range(4)}
            assert len(crops) == 4
        rest = list(src.batches("train", 8, epoch=0, start_batch=1))
        np.testing.assert_array_equal(_rows(rest), _rows(epoch[1:]))


# ------------------------------------------------------------------------------------------------------------------
# --train-crop-size, --val-resize-size
# ------------------------------------------------------------------------------------------------------------------

def test_folder_train_crop_and_val_resize_follow_torchvision(photos):
    """Train batches come out at the train crop (72), val at the image size (80) through torchvision's
    ``Resize(96)`` + ``CenterCrop(80)`` + ``ToTensor`` + ``Normalize`` (float32 rounding)."""
    tv = pytest.importorskip("torchvision.transforms")
    with data.load(f"folder:{photos}", image_size=80, seed=0, train_size=72, val_resize=96) as src:
        assert src.info.image_size == 80
        train = next(iter(src.batches("train", 4)))
        val = list(src.batches("val", 4))
    assert train["image"].shape == (4, 72, 72, 3)
    ref = tv.Compose([tv.Resize(96), tv.CenterCrop(80), tv.ToTensor(), tv.Normalize(src.info.mean, src.info.std)])
    files = sorted(pathlib.Path(photos, "val").rglob("*.png"))
    want = np.stack([ref(Image.open(f).convert("RGB")).permute(1, 2, 0).numpy() for f in files])
    got = _rows(val)[: len(files)]
    assert got.shape == (6, 80, 80, 3)
    np.testing.assert_allclose(got, want, atol=2e-5)
    with data.load(f"folder:{photos}", image_size=80) as plain:  # the default: Resize(round(80 / 0.875) = 91)
        default = _rows(plain.batches("val", 6))
    assert np.abs(default - got).max() > 0.1


def test_train_size_needs_a_size_independent_model_and_decoded_files(photos, tmp_path, capsys):
    """A dense layer on the flattened feature map (mlp, lenet5) cannot train at one size and evaluate at
    another: a one-line exit-2 error naming --train-crop-size, before compiling; adaptive-pooling heads can."""
    for arch in ("mlp", "lenet5"):
        model = models.create(arch, num_classes=2)
        with pytest.raises(ValueError, match=f"--train-crop-size 40: {arch}'s parameters depend on the input size"):
            trainopts.check_train_size(model, arch, 40, 32, getattr(model, "in_channels", 3))
    for arch in ("resnet18", "vgg11", "alexnet"):
        trainopts.check_train_size(models.create(arch, num_classes=2), arch, 176, 224, 3)
    with pytest.raises(ValueError, match="--train-crop-size 16: .*at least 63x63"):
        trainopts.check_train_size(models.create("alexnet", num_classes=2), "alexnet", 16, 224, 3)
    code = M.main(["--arch", "mlp", "--dataset", f"folder:{photos}", "--image-size", "32", "--train-crop-size", "24",
                   "--workdir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--train-crop-size 24: mlp's parameters depend on the input size" in err[0]
    with pytest.raises(ValueError, match="--val-resize-size 60 is smaller than the val crop 72"):
        data.load(f"folder:{photos}", image_size=72, val_resize=60)
    with pytest.raises(ValueError, match="apply only to the tfds: and folder: datasets"):
        data.load("digits", train_size=24)


@pytest.mark.slow
def test_resume_after_sigkill_with_repeats_and_layer_decay_is_exact(tmp_path, capsys):
    """A lenet5 run with --ra-reps 2 --layer-decay 0.7 killed mid-epoch and resumed ends bit-identical to the
    uninterrupted run (the repeated order and the layer scales are pure functions of the run's settings)."""
    import signal

    from test_train import TINY, _run_until_checkpoint_then_signal, assert_trees_equal, final_params, run_cli, run_main

    args = [*TINY, "--epochs", "2", "--checkpoint-every", "5", "--ra-reps", "2", "--layer-decay", "0.7"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    capsys.readouterr()
    assert run_main([*args, "--workdir", str(ref)]) == 0  # in-process; the killed run is a subprocess
    out = capsys.readouterr().out
    assert "layer decay 0.7: 5 layer groups" in out and "each train image 2 times per epoch" in out
    code, _ = _run_until_checkpoint_then_signal([*args, "--workdir", str(killed)], killed, signal.SIGKILL,
                                                min_steps=10)
    assert code == -signal.SIGKILL
    run_cli([*args, "--workdir", str(killed), "--resume"])
    assert_trees_equal(final_params(ref), final_params(killed))
