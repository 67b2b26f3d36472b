"""Convolution operators and the algorithms that compute them (NHWC inputs, HWIO kernels).

Modules, bottom up (each imports only the ones above it): :mod:`~cnnjax.ops.geometry` (``pair``,
``normalize_padding``, ``conv_output_size``) and :mod:`~cnnjax.ops.tracing` (``shape_only``,
``lax_convolutions``), both leaves;
:mod:`~cnnjax.ops.products` (mixed-precision products); the algorithms :mod:`~cnnjax.ops.gemm`,
:mod:`~cnnjax.ops.winograd`, :mod:`~cnnjax.ops.fft`; :mod:`~cnnjax.ops.autotune` (``impl='auto'``, given the
candidates); :mod:`~cnnjax.ops.conv` (``conv2d`` and the table :data:`CONV_ALGORITHMS`), imported only here.
"""

from cnnjax.ops.conv import CONV_ALGORITHMS, CONV_IMPLS, conv2d
from cnnjax.ops.geometry import IntPair, Padding, conv_output_size, normalize_padding, pair
from cnnjax.ops.tracing import lax_convolutions, shape_only

__all__ = ["CONV_ALGORITHMS", "CONV_IMPLS", "IntPair", "Padding", "conv2d", "conv_output_size", "normalize_padding",
           "pair", "lax_convolutions", "shape_only"]
