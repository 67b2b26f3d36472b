"""Batch helpers shared by the data tests (imported as ``from _batches import ...``: pytest puts tests/ on the path)."""

from __future__ import annotations

import numpy as np

KEYS = ("image", "label", "mask")


def concat(batches) -> dict:
    """One dict of the batches' rows, concatenated per key."""
    batches = list(batches)
    return {k: np.concatenate([b[k] for b in batches]) for k in KEYS}


def same(a: list, b: list) -> None:
    """Assert two lists of batches are identical, bit for bit."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in KEYS:
            np.testing.assert_array_equal(x[key], y[key])
