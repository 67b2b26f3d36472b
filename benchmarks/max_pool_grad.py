"""Max-pool forward + backward: cnnjax's mask-based derivative vs JAX's ``select_and_scatter`` (plain reduce-window).

    python -m benchmarks.max_pool_grad

ResNet's stem pool (3x3, stride 2, padding 1) on a ReLU output of 16x112x112x64, float32; median of 7 after a
warm-up, both compiled in the same process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.timing import median_ms
from cnnjax.nn.pool import max_pool2d


def main() -> None:
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (16, 112, 112, 64)))
    cot = jax.random.normal(jax.random.key(1), (16, 56, 56, 64))
    plain = lambda x: lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, 3, 3, 1),  # noqa: E731
                                        (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ours = lambda x: max_pool2d(x, 3, 2, 1)  # noqa: E731
    grads = {name: jax.jit(jax.grad(lambda x, f=f: jnp.vdot(f(x), cot))) for name, f in
             (("select_and_scatter", plain), ("cnnjax masks", ours))}
    same = np.array_equal(np.asarray(grads["select_and_scatter"](x)), np.asarray(grads["cnnjax masks"](x)))
    ms = {name: median_ms(lambda g=g: jax.block_until_ready(g(x)), runs=7) for name, g in grads.items()}
    print(", ".join(f"{name} {t:.1f} ms" for name, t in ms.items()) + f"; identical gradients: {same}")


if __name__ == "__main__":
    main()
