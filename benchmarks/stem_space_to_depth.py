"""Is the 7x7/2 stem faster as a 4x4/1 convolution on a 2x2 space-to-depth input (MLPerf's TPU ResNet trick)?

    python -m benchmarks.stem_space_to_depth [--bf16]

ResNet-50's stem at batch 16, 224x224: forward + kernel gradient (all a training step needs of the stem; its input
gradient is dead code), jitted, alternating, medians of 7. Variants: ``lax.conv`` (``xla``), im2col + product
(``gemm``, what ``fast`` picks), and both on the space-to-depth rewrite below (exact: the same products, the padded
taps multiply zeros). Also prints the largest kernel-gradient difference to ``xla``.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.ops.conv import conv2d_xla
from cnnjax.ops.gemm import conv2d_gemm


def space_to_depth_conv(x: jax.Array, w: jax.Array, stride: tuple[int, int], padding
                        ) -> tuple[jax.Array, jax.Array]:
    """A strided, undilated, ungrouped convolution rewritten as a stride-1 one on a space-to-depth input.

    With the kernel zero-padded to (KH, KW) = multiples of the stride (sh, sw), output (a, b) reads
    ``xp[sh*a + sh*p + r, sw*b + sw*q + s]`` for p < KH/sh, r < sh (likewise q, s): the (sh x sw) blocks of the
    padded input ``xp``, stacked on the channel axis, convolved with stride 1 by the kernel rearranged the same
    way. Returns ``(S, W)``: S of shape (N, H'', W'', sh*sw*C), W of (KH/sh, KW/sw, sh*sw*C, O), whose stride-1
    valid convolution equals the original exactly (the same products; the padded taps multiply zeros). MLPerf's
    TPU ResNets compute the 7x7/2 stem on 3 channels as this 4x4/1 one on 12: each of the fewer, wider window
    taps gathers 4x the channels."""
    (sh, sw), ((pt, pb), (pl, pr)) = stride, padding
    kh, kw, c, o = w.shape
    n, h, wd, _ = x.shape
    oh, ow = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
    big_h, big_w = -(-kh // sh) * sh, -(-kw // sw) * sw
    need_h, need_w = (oh - 1) * sh + big_h, (ow - 1) * sw + big_w  # padded extent the blocks must cover
    xp = jnp.pad(x, ((0, 0), (pt, max(0, need_h - h - pt)), (pl, max(0, need_w - wd - pl)), (0, 0)))
    xp = xp[:, :need_h, :need_w]
    s = xp.reshape(n, need_h // sh, sh, need_w // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
    s = s.reshape(n, need_h // sh, need_w // sw, sh * sw * c)
    wp = jnp.pad(w, ((0, big_h - kh), (0, big_w - kw), (0, 0), (0, 0)))
    wp = wp.reshape(big_h // sh, sh, big_w // sw, sw, c, o).transpose(0, 2, 1, 3, 4, 5)
    return s, wp.reshape(big_h // sh, big_w // sw, sh * sw * c, o)


def main() -> None:
    dt = jnp.bfloat16 if "--bf16" in sys.argv else jnp.float32
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 224, 224, 3)), dt)
    w = jnp.asarray(rng.normal(size=(7, 7, 3, 64)) * 0.1, dt)
    pad = ((3, 3), (3, 3))

    def plain(alg):
        return lambda x, w: alg(x, w, (2, 2), pad, (1, 1), 1)

    def s2d(alg):
        def f(x, w):
            s, k = space_to_depth_conv(x, w, (2, 2), pad)
            return alg(s, k, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
        return f

    variants = {"xla": plain(conv2d_xla), "gemm": plain(conv2d_gemm), "s2d+xla": s2d(conv2d_xla),
                "s2d+gemm": s2d(conv2d_gemm)}
    cot = jnp.asarray(rng.normal(size=(16, 112, 112, 64)), dt)
    jits = {}
    for name, f in variants.items():
        def step(x, w, cot, f=f):
            y, vjp = jax.vjp(lambda w: f(x, w), w)
            return y, vjp(cot)[0]
        jits[name] = jax.jit(step)
        jax.block_until_ready(jits[name](x, w, cot))
    ref = jits["xla"](x, w, cot)[1].astype(jnp.float32)
    times = {k: [] for k in jits}
    for _ in range(7):
        for name, fn in jits.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(x, w, cot))
            times[name].append(time.perf_counter() - t)
    for name, fn in jits.items():
        diff = float(jnp.max(jnp.abs(fn(x, w, cot)[1].astype(jnp.float32) - ref)))
        print(f"{name}: {np.median(times[name]) * 1e3:.1f} ms forward + kernel gradient (max |dW - xla's| {diff:.2g})")


if __name__ == "__main__":
    main()
