"""On-device augmentation wired into training (issue #14): ``--augment``, ``--mixup``, ``--cutmix``,
``--random-erasing``, ``--rrc-scale``, the host's train view, and the train step's soft-target loss.

The ops and policies themselves are checked against torchvision in ``test_augment.py``; exact resume and
device-count independence with every stage on are checked in ``test_train.py`` (the EMA/accumulation resume
run and the eight-device run train with them).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import augment, data
from cnnjax.data import TrainView
from cnnjax.data.base import resize_images
from cnnjax.data.digits import load_raw, split_indices
from cnnjax.data.tfds import orientation_sensitive
from cnnjax.training import parallel
from cnnjax.training.state import init_state
from cnnjax.training.step import TAG_AUGMENT, make_train_step
from train import config as C
from train import main as M


def test_default_policy_follows_the_dataset():
    """``default``: a flip for natural images only; ``flip`` forces it; the op policies keep the dataset's flip;
    ``none`` switches the host crop off as well."""
    assert not augment.train_augmentation("default", orientation_sensitive=True).active
    assert augment.train_augmentation("default", orientation_sensitive=False) == augment.Augmentation(flip=True)
    assert augment.train_augmentation("flip", orientation_sensitive=True).flip
    ta = augment.train_augmentation("trivialaugment", orientation_sensitive=True)
    assert not ta.flip and ta.policy == augment.Policy("trivialaugment")
    ra = augment.train_augmentation("randaugment:3,5", orientation_sensitive=False, mixup=0.2, cutmix=1.0,
                                    random_erasing=0.1)
    assert ra.flip and (ra.policy.num_ops, ra.policy.magnitude) == (3, 5)
    assert (ra.mixup_alpha, ra.cutmix_alpha, ra.erasing_p) == (0.2, 1.0, 0.1)
    assert not augment.train_augmentation("none", orientation_sensitive=False).active
    assert not augment.host_crop("none") and augment.host_crop("default") and augment.host_crop("autoaugment")
    assert orientation_sensitive("mnist") and orientation_sensitive("emnist/letters")
    assert not orientation_sensitive("cifar10")


def test_digits_train_step_gets_no_flip_under_default():
    """The bundled digits (orientation-sensitive) under the default flags: no on-device stage at all (the
    host's shift is their augmentation); a dataset of natural images gets the flip."""
    cfg = C.resolve_defaults(C.TrainConfig(arch="lenet5"))
    assert M.batch_augment(cfg, data.load("digits").info) is None
    natural = data.load("synthetic").info
    assert not natural.orientation_sensitive and M.batch_augment(cfg, natural) is not None
    cfg_none = C.resolve_defaults(C.TrainConfig(arch="lenet5", augment="none"))
    assert M.batch_augment(cfg_none, natural) is None


def test_host_view_crop_off_and_rrc_scale_refused_for_arrays():
    """``TrainView(crop=False)``: digits train images are the un-shifted source images; ``rrc_scale`` is for
    decoded files only, with a clear error."""
    plain = data.load("digits", train_view=TrainView(crop=False))
    images, _ = load_raw()
    train, _ = split_indices()
    b = next(plain.batches("train", 16, epoch=2))
    perm = data.base.epoch_permutation(len(train), 0, 2)[:16]
    want = resize_images(images[train[perm], :, :, None] / np.float32(16), 32)
    i = plain.info
    np.testing.assert_allclose(b["image"], (want - i.mean[0]) / i.std[0], atol=1e-5)
    shifted = next(data.load("digits").batches("train", 16, epoch=2))["image"]
    assert not np.allclose(shifted, b["image"], atol=1e-3)  # the default view does shift
    with pytest.raises(ValueError, match="folder:, tfds:"):
        data.load("digits", train_view=TrainView(rrc_scale=(0.5, 1.0)))
    with pytest.raises(ValueError, match="0 < lo <= hi <= 1"):
        TrainView(rrc_scale=(0.9, 0.5))


class _Linear(nn.Module):
    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _np_soft_ce(logits, targets, eps):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    t = (1 - eps) * np.asarray(targets, np.float64) + eps / k
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-(t * logp).sum(-1).mean())


@pytest.mark.slow  # > 5 s (CI durations)
def test_step_loss_is_the_soft_cross_entropy_of_the_augmented_batch():
    """With ``augment``, the step's loss is the smoothed soft-target cross entropy (float64 NumPy) of the
    model on the AUGMENTED images against the augmenter's targets, and top-1 counts the original labels;
    the augmenter's key is ``fold_in(fold_in(key, step), TAG_AUGMENT)``. Negative case: the loss against the
    one-hot labels of the un-augmented batch is another number."""
    model, tx = _Linear(), optax.sgd(0.0)
    replicated, _ = parallel.shardings(parallel.data_mesh())
    state = init_state(model, tx, seed=3, input_shape=(1, 4, 4, 1), replicated=replicated)
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.normal(size=(8, 4, 4, 1)), jnp.float32)
    label = jnp.asarray(rng.integers(0, 4, 8), jnp.int32)
    soft = jnp.asarray(rng.dirichlet(np.ones(4), 8), jnp.float32)

    def stub(key, x, y):  # a key-dependent image change and fixed soft targets
        return x * 0.5 + jax.random.normal(key, x.shape), soft

    step = jax.jit(make_train_step(model, tx, label_smoothing=0.1, augment=stub))
    _, metrics = step(state, {"image": image, "label": label, "mask": jnp.ones(8, bool)})
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), TAG_AUGMENT)
    seen = image * 0.5 + jax.random.normal(key, image.shape)
    logits = model.apply({"params": state.params}, seen)
    assert float(metrics["loss"]) == pytest.approx(_np_soft_ce(logits, soft, 0.1), rel=1e-5)
    top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(label)))
    assert float(metrics["top1"]) == pytest.approx(top1)
    plain = _np_soft_ce(model.apply({"params": state.params}, image), jax.nn.one_hot(label, 4), 0.1)
    assert abs(float(metrics["loss"]) - plain) > 1e-3


@pytest.mark.slow  # > 5 s (CI durations)
def test_augmented_batches_depend_on_seed_and_step_only():
    """The real augmenter (flip, MixUp/CutMix, erasing; the op policies are as cheap to key but slow to compile)
    keyed as the step keys it: the same (seed, step) gives the same batch twice, the next step another."""
    aug = augment.train_augmentation("default", False, mixup=0.2, cutmix=1.0, random_erasing=0.5)
    fn = jax.jit(augment.batch_augmenter(aug, 4, (0.5,), (0.25,)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8, 1)), jnp.float32)
    y = jnp.arange(6, dtype=jnp.int32) % 4
    k = lambda step: jax.random.fold_in(jax.random.fold_in(jax.random.key(0), step), TAG_AUGMENT)  # noqa: E731
    a, ta = fn(k(5), x, y)
    b, tb = fn(k(5), x, y)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ta), np.asarray(tb))
    np.testing.assert_allclose(np.asarray(ta).sum(-1), 1.0, atol=1e-6)
    c, _ = fn(k(6), x, y)
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_flip_on_normalised_images_equals_flip_on_raw():
    """The train step flips the normalised batch (no raw round trip): the same as flipping raw pixels and
    normalising, since the normalisation is per channel."""
    aug = augment.Augmentation(flip=True)
    mean, std = (0.2, 0.4, 0.6), (0.3, 0.2, 0.1)
    raw = jnp.asarray(np.random.default_rng(2).uniform(size=(5, 6, 6, 3)), jnp.float32)
    key = jax.random.key(7)
    via_raw, _ = augment.augment_train_batch(key, raw, jnp.zeros(5, jnp.int32), 3, mean, std, aug)
    normalised = (raw - jnp.asarray(mean)) / jnp.asarray(std)
    direct, _ = augment.batch_augmenter(aug, 3, mean, std)(key, normalised, jnp.zeros(5, jnp.int32))
    np.testing.assert_allclose(np.asarray(direct), np.asarray(via_raw), atol=1e-5)
    out, x = np.asarray(direct), np.asarray(normalised)
    mirrored = [np.allclose(out[i], x[i, :, ::-1]) for i in range(5)]
    assert all(mirrored[i] or np.allclose(out[i], x[i]) for i in range(5)) and 0 < sum(mirrored) < 5


@pytest.mark.parametrize("argv, message", [
    (["--augment", "bogus"], "valid choices are none, default, flip"),
    (["--augment", "randaugment:2,99"], "0 <= M <= 30"),
    (["--mixup", "-1"], "--mixup must be >= 0"),
    (["--random-erasing", "1.5"], "--random-erasing must be in [0, 1]"),
    (["--rrc-scale", "0.5"], "--rrc-scale must be LO,HI"),
    (["--rrc-scale", "0.9,0.2"], "0 < LO <= HI <= 1"),
    (["--rrc-scale", "0.2,1"], "folder:, tfds:"),
    (["--transfer", "linear-probe", "--init", "torchvision:lenet5", "--feature-cache", "--mixup", "0.2"],
     "--feature-cache trains the head"),
])
def test_bad_augmentation_flags_exit_2_naming_the_choices(argv, message, tmp_path, capsys):
    code = M.main(["--arch", "lenet5", "--max-steps", "1", "--no-progress", "--workdir", str(tmp_path / "w"),
                   *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err
