"""A deliberately tiny training helper for the analysis tools (trained-vs-untrained comparisons).

This is NOT the training CLI (that lives in ``train/``): no checkpoints of optimiser state, no sharding, no
evaluation schedule. :func:`quick_train` runs SGD with momentum (optax) on a :mod:`cnnjax.data` dataset for a
fixed number of steps or seconds, whichever comes first, and returns the variables (``params`` and
``batch_stats``). :func:`save_variables` / :func:`load_variables` store a variables dict as flax msgpack
(``.msgpack``) or as a flat ``.npz`` (keys ``params/stem/conv/kernel``), the format ``--checkpoint`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from cnnjax.data import DataSource


def init_variables(model: nn.Module, image_size: int, channels: int, seed: int = 0) -> Any:
    """``model.init`` on a (1, image_size, image_size, channels) NHWC input, jit-compiled.

    Keys use the ``rbg`` PRNG: XLA compiles its bit generator several times faster on CPU than the default
    threefry (seconds saved per model); the model's own initialisers decide the distributions as usual.
    """
    x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
    rngs = {"params": jax.random.key(seed, impl="rbg"), "dropout": jax.random.key(seed + 1, impl="rbg")}
    return jax.jit(lambda x: model.init(rngs, x, False))(x)


def quick_train(model: nn.Module, source: DataSource, *, steps: int = 300, seconds: float | None = None,
                batch_size: int = 64, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                seed: int = 0, variables: Any = None,
                log: Callable[[str], None] | None = None) -> tuple[Any, dict[str, float]]:
    """Train ``model`` on the train split of ``source`` with SGD + momentum and a cosine learning rate.

    Stops after ``steps`` optimiser steps or ``seconds`` of wall time (checked between steps), whichever comes
    first. Returns ``(variables, stats)`` with ``stats``: ``steps``, ``seconds``, ``train_loss`` (mean of the last
    20 steps) and ``val_accuracy`` (fraction in [0, 1]).
    """
    info = source.info
    if variables is None:
        variables = init_variables(model, info.image_size, info.channels, seed)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    schedule = optax.cosine_decay_schedule(lr, max(steps, 1))
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, state, opt_state, x, y, key):
        def loss_fn(p):
            logits, new_state = model.apply({"params": p, **state}, x, True, mutable=list(state),
                                            rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), dict(new_state), opt_state, loss

    key = jax.random.key(seed + 2)
    t0 = time.perf_counter()
    losses: list[float] = []
    done, epoch = 0, 0
    while done < steps:
        for batch in source.batches("train", batch_size, epoch=epoch):
            key, sub = jax.random.split(key)
            params, state, opt_state, loss = step(params, state, opt_state, jnp.asarray(batch["image"]),
                                                  jnp.asarray(batch["label"]), sub)
            done += 1
            losses.append(float(loss))
            if log and done % 50 == 0:
                log(f"step {done}: loss {np.mean(losses[-50:]):.3f}")
            if done >= steps or (seconds is not None and time.perf_counter() - t0 > seconds):
                break
        epoch += 1
        if seconds is not None and time.perf_counter() - t0 > seconds:
            break
    variables = {"params": params, **state}
    stats = {"steps": done, "seconds": time.perf_counter() - t0, "train_loss": float(np.mean(losses[-20:])),
             "val_accuracy": evaluate(model, variables, source)}
    return variables, stats


def val_arrays(source: DataSource, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """All validation images (N, H, W, C) float32 (normalised) and labels (N,) int32, without padding rows."""
    xs, ys = [], []
    for batch in source.batches("val", batch_size):
        xs.append(batch["image"][batch["mask"]])
        ys.append(batch["label"][batch["mask"]])
    return np.concatenate(xs), np.concatenate(ys)


def evaluate(model: nn.Module, variables: Any, source: DataSource, batch_size: int = 256) -> float:
    """Top-1 accuracy on the validation split (fraction in [0, 1]), eval mode."""
    apply = jax.jit(lambda x: jnp.argmax(model.apply(variables, x, False), -1))
    correct = total = 0
    for batch in source.batches("val", batch_size):
        pred = np.asarray(apply(jnp.asarray(batch["image"])))
        m = batch["mask"]
        correct += int((pred[m] == batch["label"][m]).sum())
        total += int(m.sum())
    return correct / max(total, 1)


def save_variables(path: str | Path, variables: Any) -> Path:
    """Write ``variables`` to ``path`` (``.msgpack``: flax serialization; ``.npz``: flat ``a/b/c`` keys).
    A directory path gets ``variables.msgpack`` inside it. Returns the file written."""
    path = Path(path)
    if path.suffix not in (".msgpack", ".npz"):
        path.mkdir(parents=True, exist_ok=True)
        path = path / "variables.msgpack"
    path.parent.mkdir(parents=True, exist_ok=True)
    host = jax.tree.map(np.asarray, variables)
    if path.suffix == ".npz":
        flat = traverse_util.flatten_dict(serialization.to_state_dict(host), sep="/")
        np.savez(path, **flat)
    else:
        path.write_bytes(serialization.msgpack_serialize(serialization.to_state_dict(host)))
    return path


def load_variables(path: str | Path) -> dict:
    """Read a variables dict written by :func:`save_variables` (or any flax msgpack / flat-key npz of one).

    ``path`` is a file or a directory holding ``variables.msgpack`` or ``variables.npz``.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("variables.msgpack", "variables.npz"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path} holds neither variables.msgpack nor variables.npz")
    if path.suffix == ".npz":
        with np.load(path) as z:
            flat = {k: jnp.asarray(z[k]) for k in z.files}
        return traverse_util.unflatten_dict(flat, sep="/")
    restored = serialization.msgpack_restore(path.read_bytes())
    return jax.tree.map(jnp.asarray, restored)
