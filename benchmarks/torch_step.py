"""The torchvision training step the benchmarks time against (no JAX imported: ``benchmarks/memory.py`` measures
its process's memory alone)."""

from __future__ import annotations

import time

import torch
import torchvision


class TorchStep:
    """One torchvision training step (zero_grad, forward, cross-entropy, backward, SGD) on a fixed batch."""

    def __init__(self, arch: str, batch_size: int, image_size: int, precision: str, device: str, compile_: bool):
        torch.manual_seed(0)
        self.device = device
        model = getattr(torchvision.models, arch)(num_classes=1000).to(device)
        self.model = model.to(memory_format=torch.channels_last).train()
        lr = 0.1 * batch_size / 256
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-5}, {"params": no_decay, "weight_decay": 0}],
                                   lr=lr, momentum=0.9, nesterov=True)
        self.x = torch.randn(batch_size, 3, image_size, image_size, device=device).to(
            memory_format=torch.channels_last)
        self.y = torch.randint(0, 1000, (batch_size,), device=device)
        self.bf16 = precision == "bf16"
        self.forward = torch.compile(self.model) if compile_ else self.model

    def __call__(self) -> float:
        t = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16):
            loss = torch.nn.functional.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.opt.step()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        else:
            loss.item()
        return time.perf_counter() - t
