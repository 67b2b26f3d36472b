"""Analysis tools from the CNN lecture: filters, receptive fields, equivariance, occlusion, pictures.

Every tool is a library function (NHWC arrays, pure and jit-able where that makes sense) and a subcommand of
``python -m cnnjax.analyze`` that prints a table and writes PNGs:

* :mod:`~cnnjax.analysis.filters`: classic kernels as ``lax`` convolutions; 1x1 convolutions; parameter counts;
  average pooling as a convolution;
* :mod:`~cnnjax.analysis.fields`: per-layer receptive fields traced from the model's jaxpr
  (:func:`receptive_field` ``(model, image_size)`` -> one :class:`LayerField` per layer), checked against input
  gradients (:func:`empirical_receptive_field`, on weights from :func:`random_variables`); the effective
  receptive field (:func:`effective_receptive_field`);
* :mod:`~cnnjax.analysis.equivariance`: shift equivariance laws, :func:`equivariance_error`, Zhang's
  consistency; anti-aliased ResNets are ``models.create('resnet20', antialias=True)``;
* :mod:`~cnnjax.analysis.occlusion`: occlusion sensitivity (Zeiler & Fergus);
* :mod:`~cnnjax.analysis.visualize`: filter grids, feature maps of named layers, PNG writers (matplotlib Agg);
* :mod:`~cnnjax.analysis.training`: a tiny in-process trainer for trained-vs-untrained comparisons.
* :mod:`~cnnjax.analysis.landscape`: loss surfaces along filter-normalised directions (Li et al. 2018), their
  grid non-convexity, Hessian eigenvalues by Lanczos on Hessian-vector products (``from cnnjax.analysis import
  landscape``).
"""

from cnnjax.analysis.equivariance import (
    circular_shift,
    consistency,
    conv_circular,
    equivariance_error,
    shift_images,
    translate,
)
from cnnjax.analysis.fields import (
    AxisField,
    LayerField,
    effective_receptive_field,
    empirical_receptive_field,
    gradient_extent,
    layer_gradients,
    random_variables,
    randomize_variables,
    receptive_field,
)
from cnnjax.analysis.filters import (
    KERNELS,
    append_red_plus_green_conv,
    apply_filter,
    avg_pool_as_conv,
    conv_param_count,
    gaussian_kernel,
    load_photo,
    rgb_to_gray_conv,
)
from cnnjax.analysis.occlusion import occlusion_sensitivity, pixel_map
from cnnjax.analysis.visualize import capture, first_conv_kernel, layer_names

__all__ = [
    "KERNELS",
    "AxisField",
    "LayerField",
    "append_red_plus_green_conv",
    "apply_filter",
    "avg_pool_as_conv",
    "capture",
    "circular_shift",
    "consistency",
    "conv_circular",
    "conv_param_count",
    "effective_receptive_field",
    "empirical_receptive_field",
    "equivariance_error",
    "first_conv_kernel",
    "gaussian_kernel",
    "gradient_extent",
    "layer_gradients",
    "layer_names",
    "load_photo",
    "occlusion_sensitivity",
    "pixel_map",
    "random_variables",
    "randomize_variables",
    "receptive_field",
    "rgb_to_gray_conv",
    "shift_images",
    "translate",
]
