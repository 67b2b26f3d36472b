"""The model zoo: ``create(name, num_classes, **overrides)`` and ``names()``.

Every model is a pure ``flax.linen`` module used as ``model.apply(variables, x, train)`` on NHWC input.
"""

from cnnjax.models import (  # noqa: F401  (register the families)
    alexnet,
    cifar_resnet,
    convnext,
    densenet,
    efficientnet,
    googlenet,
    lenet,
    mlp,
    mobilenet,
    resnet,
    vgg,
)
from cnnjax.models.base import ImageClassifier, check_input_size, min_input_size
from cnnjax.models.registry import create, names, register

__all__ = ["ImageClassifier", "check_input_size", "create", "min_input_size", "names", "register"]
