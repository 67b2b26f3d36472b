"""Convolution operators and the algorithms that compute them (NHWC inputs, HWIO kernels)."""

from cnnjax.ops.conv import CONV_IMPLS, conv2d, conv_output_size, normalize_padding, pair

__all__ = ["CONV_IMPLS", "conv2d", "conv_output_size", "normalize_padding", "pair"]
