"""The model zoo: ``create(name, num_classes, **overrides)``, ``names()``, and ``record(name)`` / ``records()``:
one :class:`ArchRecord` per architecture (factory, default input size, torchvision module-name map, classifier
modules, the torchvision weights it can load as :class:`WeightsRecord`), registered in the model's own file.

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
from cnnjax.models.registry import (
    ArchRecord,
    EvalTransform,
    WeightsRecord,
    create,
    names,
    options,
    record,
    records,
    register,
)

__all__ = ["ArchRecord", "EvalTransform", "ImageClassifier", "WeightsRecord", "check_input_size", "create",
           "min_input_size", "names", "options", "record", "records", "register"]
