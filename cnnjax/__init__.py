"""cnnjax: convolutional networks in JAX/Flax, faithful to the papers and to torchvision."""

__version__ = "0.1.0"
