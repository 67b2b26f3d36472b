"""Shared by the parity tests: make a torch model's normalisation layers matter before comparing."""

from __future__ import annotations


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
