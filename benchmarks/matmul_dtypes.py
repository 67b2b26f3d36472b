"""XLA matrix products in fp32 and bf16 on this machine: forward + both gradients, the shapes of ResNet-50's 1x1
convolutions at batch 16 and a square 2048^3.

    python -m benchmarks.matmul_dtypes

Variants: fp32; bf16 inputs cast inside (bf16 output; f32 output via ``preferred_element_type``); bf16 arrays in
and out with JAX's own gradients, and with :func:`cnnjax.ops.products.einsum` (bf16 x bf16 -> f32 accumulation in
all three products, what cnnjax's convolution algorithms use for 16-bit inputs).
Then the forward product alone: fp32, bf16 -> bf16, bf16 -> f32 (``preferred_element_type``).
Median of 5 after a warm-up, GFLOP/s counting the three products (one for the forward line).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_ms
from cnnjax.ops import products

SHAPES = [(50176, 256, 64), (50176, 64, 256), (12544, 512, 128), (3136, 1024, 256), (2048, 2048, 2048)]


def _ms(f, *args) -> float:
    compiled = jax.jit(f).lower(*args).compile()
    return median_ms(lambda: jax.block_until_ready(compiled(*args)))


def _fwd_bwd(dtype, out_dtype, product=None):
    def f(x, w, g):
        y, vjp = jax.vjp(product or (lambda x, w: jnp.dot(x.astype(dtype), w.astype(dtype),
                                                           preferred_element_type=out_dtype)), x, w)
        return (y, *vjp(g.astype(y.dtype)))
    return f


def main() -> None:
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        x = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        w = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32) * 0.1)
        g = jnp.asarray(rng.standard_normal((m, n), dtype=np.float32))
        bf = [a.astype(jnp.bfloat16) for a in (x, w, g)]
        gflop = 3 * 2 * m * k * n / 1e9
        rows = {"fp32": _ms(_fwd_bwd(jnp.float32, None), x, w, g),
                "bf16 (cast in)": _ms(_fwd_bwd(jnp.bfloat16, None), x, w, g),
                "bf16 -> f32": _ms(_fwd_bwd(jnp.bfloat16, jnp.float32), x, w, g),
                "bf16 arrays": _ms(_fwd_bwd(jnp.bfloat16, None), *bf),
                "bf16 arrays, products.einsum": _ms(_fwd_bwd(None, None, lambda x, w: products.einsum(
                    "mk,kn->mn", x, w)), *bf)}
        print(f"({m}x{k})·({k}x{n}) fwd+bwd: " + ", ".join(f"{name} {t:.1f} ms ({gflop / t * 1e3:.0f} GFLOP/s)"
                                                         for name, t in rows.items()), flush=True)
        fwd = {"fp32": _ms(jnp.dot, x, w),
               "bf16 -> bf16": _ms(jnp.dot, *bf[:2]),
               "bf16 -> f32": _ms(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32), *bf[:2])}
        print(f"({m}x{k})·({k}x{n}) forward: " + ", ".join(f"{name} {t:.1f} ms ({gflop / 3 / t * 1e3:.0f} GFLOP/s)"
                                                         for name, t in fwd.items()), flush=True)


if __name__ == "__main__":
    main()
