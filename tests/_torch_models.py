"""Shared by the parity tests: make a torch model's normalisation layers matter before comparing; compare
``feature_maps`` with torchvision's ``create_feature_extractor``."""

from __future__ import annotations

import numpy as np


def randomize_norms(tm, layer_scale_suffix: str = "layer_scale"):
    """Random BatchNorm running statistics and BatchNorm/LayerNorm affines, and layer scales (parameters whose
    name ends in ``layer_scale_suffix``: torchvision's ``layer_scale``, timm's ``gamma``) in [0.2, 0.6]
    instead of 1e-6, which would make every ConvNeXt block an identity; generator seed 1. Returns ``tm``."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in tm.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) * 1.5 + 0.5)
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.2)
        for name, p in tm.named_parameters():
            if name.endswith(layer_scale_suffix):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.4 + 0.2)
    return tm


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.abs(got - want).max() / np.abs(want).max())


def _vgg_nodes(arch: str) -> list[str]:
    """torchvision VGG ``features`` indices: the ReLU before each max-pool, then the last max-pool."""
    from cnnjax.models.vgg import CONFIGS, torchvision_feature_indices

    bn = arch.endswith("_bn")
    convs = torchvision_feature_indices(CONFIGS[arch.removesuffix("_bn")], bn)
    last = {}
    for s, _, i in convs:
        last[s] = i
    relus = [last[s] + (2 if bn else 1) for s in sorted(last)]
    return [f"features.{i}" for i in relus] + [f"features.{relus[-1] + 1}"]


def torchvision_nodes(arch: str) -> list[str]:
    """The torchvision graph nodes (``create_feature_extractor`` return nodes) of ``feature_info(arch)``."""
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    if arch.startswith("convnext"):
        return ["features.1", "features.3", "features.5", "features.7"]
    if arch.startswith("densenet"):  # cnnjax's norm5 level includes DenseNet.forward's F.relu
        return ["features.relu0", "features.denseblock1", "features.denseblock2", "features.denseblock3", "relu"]
    if arch.startswith("vgg"):
        return _vgg_nodes(arch)
    fixed = {
        "alexnet": [1, 4, 11, 12],
        "mobilenet_v2": [1, 3, 6, 13, 17],
        "mobilenet_v3_large": [1, 3, 6, 12, 16],
        "mobilenet_v3_small": [0, 1, 3, 8, 12],
        "efficientnet_b0": [1, 2, 3, 5, 7],
        "efficientnet_v2_s": [1, 2, 3, 5, 6],
    }
    if arch in fixed:
        return [f"features.{i}" for i in fixed[arch]]
    if arch == "googlenet":
        return ["conv1", "conv3", "inception3b", "inception4e", "inception5b"]
    raise KeyError(arch)


def check_feature_maps(arch: str, tm, x: np.ndarray, got, tol: float) -> None:
    """``got`` (cnnjax's ``feature_maps`` of ``x``, NHWC) equals torchvision's ``create_feature_extractor`` of
    the torch model ``tm`` at the nodes of ``feature_info(arch)``, level by level: same shapes, max rel. error
    below ``tol``."""
    import torch
    from torchvision.models.feature_extraction import create_feature_extractor

    from cnnjax import models

    nodes = torchvision_nodes(arch)
    info = models.feature_info(arch)
    assert len(nodes) == len(info) == len(got)
    extractor = create_feature_extractor(tm, return_nodes={n: str(i) for i, n in enumerate(nodes)}).eval()
    with torch.no_grad():
        out = extractor(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    errors = []
    for i, (f, node, g) in enumerate(zip(info, nodes, got, strict=True)):
        g, t = np.asarray(g), out[str(i)].numpy().transpose(0, 2, 3, 1)
        assert g.shape == t.shape, (f, node, g.shape, t.shape)
        errors.append((f.module, node, rel_err(g, t)))
    print(f"\n{arch} feature maps: " + "; ".join(f"{m} [{n}] {e:.1e}" for m, n, e in errors))
    for m, n, e in errors:
        assert e < tol, f"{arch} {m} vs torchvision {n}: max rel err {e:.2e}"
