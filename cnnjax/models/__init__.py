"""The model zoo: ``create(name, num_classes, **overrides)``, ``names()``, and ``record(name)`` / ``records()``:
one :class:`ArchRecord` per architecture (factory, default input size, torchvision module-name map, classifier
modules, the torchvision weights it can load as :class:`WeightsRecord`), registered in the model's own file.

Every model is a pure ``flax.linen`` module used as ``model.apply(variables, x, train)`` on NHWC input;
``model.apply(variables, x, method='feature_maps', out_indices=...)`` gives its multi-scale NHWC feature maps
(one per stage end) and :func:`feature_info` describes them (channels, reduction, module per level).
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
    vgg_small,
)
from cnnjax.models.base import (
    FeatureInfo,
    ImageClassifier,
    NoFeatureLevelsError,
    check_input_size,
    feature_info,
    min_input_size,
    stage_end,
)
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

__all__ = ["ArchRecord", "EvalTransform", "FeatureInfo", "ImageClassifier", "NoFeatureLevelsError", "WeightsRecord",
           "check_input_size", "create", "feature_info", "min_input_size", "names", "options", "record", "records",
           "register", "stage_end"]
