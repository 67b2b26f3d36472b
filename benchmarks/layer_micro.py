"""Single layers, JAX vs PyTorch on the same CPU: is a gap in the convolutions or around them?

    python -m benchmarks.layer_micro

Times forward + backward (input and weight gradients) of (1) ResNet-50's 3x3 stride-1 convolution shapes and its
7x7 stem, as torchvision-style ``Conv2d`` in PyTorch (channels_last) and as ``cnnjax.ops.conv2d`` with every
algorithm (what ``impl='auto'`` measures), in the same run, and (2) a 1x1-BN-ReLU-1x1-BN-add bottleneck fragment
at 16x56x56x256 in PyTorch and in JAX with pixel-major (NHWC) and channel-major activations. Batch 16, fp32,
median of 3-7 runs.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.timing import median_ms

CONVS = [(16, 64, 56, 64, 3, 1), (16, 128, 28, 128, 3, 1), (16, 256, 14, 256, 3, 1), (16, 512, 7, 512, 3, 1),
         (16, 3, 224, 64, 7, 2)]  # (batch, in, side, out, kernel, stride)


def cnnjax_convs() -> None:
    """The same layers in cnnjax, every algorithm, exactly as ``impl='auto'`` times them (fwd + both gradients)."""
    from cnnjax.ops import CONV_ALGORITHMS, autotune

    for n, c, h, o, k, s in CONVS:
        rec = autotune.measure((n, h, h, c), (k, k, c, o), jnp.float32, (s, s), ((k // 2, k // 2),) * 2, (1, 1), 1,
                               candidates=CONV_ALGORITHMS)
        cells = ", ".join(f"{impl} {t:.1f}" for impl, t in rec["ms"].items() if t is not None)
        print(f"cnnjax conv2d {n}x{h}x{h}x{c} -> {o}, {k}x{k} stride {s}: {cells} ms fwd+bwd (best {rec['impl']})")


def torch_convs() -> None:
    for n, c, h, o, k, s in CONVS:
        x = torch.randn(n, c, h, h).to(memory_format=torch.channels_last).requires_grad_()
        conv = torch.nn.Conv2d(c, o, k, stride=s, padding=k // 2, bias=False).to(memory_format=torch.channels_last)
        g = torch.randn_like(conv(x))

        def step(conv=conv, x=x, g=g):
            conv(x).backward(g)

        print(f"torch Conv2d {n}x{h}x{h}x{c} -> {o}, {k}x{k} stride {s}: {median_ms(step, warmup=2):.1f} ms fwd+bwd")


def bottleneck_fragment() -> None:
    rng = np.random.default_rng(0)
    m, c, r = 16 * 56 * 56, 256, 64
    w1 = jnp.asarray(rng.standard_normal((c, r), dtype=np.float32) * 0.05)
    w2 = jnp.asarray(rng.standard_normal((r, c), dtype=np.float32) * 0.05)

    def bn(y, axis):
        mean = y.mean(axis, keepdims=True)
        return (y - mean) * jax.lax.rsqrt(((y - mean) ** 2).mean(axis, keepdims=True) + 1e-5)

    def rows(x, w1, w2):  # NHWC flattened: (pixels, channels)
        return jax.nn.relu(bn(jax.nn.relu(bn(x @ w1, 0)) @ w2, 0) + x)

    def cols(x, w1, w2):  # channel-major: (channels, pixels)
        return jax.nn.relu(bn(w2.T @ jax.nn.relu(bn(w1.T @ x, 1)), 1) + x)

    x = jnp.asarray(rng.standard_normal((m, c), dtype=np.float32))
    for name, f, xin in (("JAX pixel-major (NHWC)", rows, x), ("JAX channel-major", cols, x.T.copy())):
        g = jax.jit(jax.grad(lambda x, a, b, f=f: jnp.sum(f(x, a, b) ** 2), (0, 1, 2)))
        ms = median_ms(lambda g=g, xin=xin: jax.block_until_ready(g(xin, w1, w2)), runs=7, warmup=2)
        print(f"{name} 1x1-BN-ReLU-1x1-BN-add: {ms:.1f} ms fwd+bwd")
    xt = torch.randn(16, c, 56, 56).to(memory_format=torch.channels_last).requires_grad_()
    c1 = torch.nn.Conv2d(c, r, 1, bias=False).to(memory_format=torch.channels_last)
    c2 = torch.nn.Conv2d(r, c, 1, bias=False).to(memory_format=torch.channels_last)
    b1, b2 = torch.nn.BatchNorm2d(r), torch.nn.BatchNorm2d(c)

    def step():
        y = torch.relu(b2(c2(torch.relu(b1(c1(xt))))) + xt)
        (y ** 2).sum().backward()

    print(f"torch channels_last 1x1-BN-ReLU-1x1-BN-add: {median_ms(step, runs=7, warmup=2):.1f} ms fwd+bwd")


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    torch_convs()
    cnnjax_convs()
    bottleneck_fragment()
