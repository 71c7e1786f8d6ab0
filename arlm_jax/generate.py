"""Text generation. For now the uncached reference decoder the training loop samples with.

``greedy_uncached`` re-runs the full forward over a fixed ``max_len`` buffer for every new
token: O(T^2) per token but a single compiled program and obviously correct, which makes it
the slow twin of the KV-cached ``lax.scan`` decode loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arlm_jax.config import ModelConfig
from arlm_jax.model import forward

Array = jax.Array


def greedy_uncached(params: dict, cfg: ModelConfig, prompt: list[int] | np.ndarray,
                    max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt, ``max_new_tokens`` ids (prompt not included).

    The context is the last ``cfg.max_len`` tokens, left-aligned in a [1, max_len] buffer, so
    every step reuses one compiled forward; positions past the context are causally invisible.
    """
    n = cfg.max_len

    @jax.jit
    def next_token(params: dict, buf: Array, length: Array) -> Array:
        logits, _ = forward(params, buf, cfg)  # [1, n, V]
        return jnp.argmax(logits[0, length - 1]).astype(jnp.int32)

    ids = [int(t) for t in prompt] or [0]
    out: list[int] = []
    for _ in range(max_new_tokens):
        ctx = ids[-n:]
        buf = np.zeros((1, n), np.int32)
        buf[0, :len(ctx)] = ctx
        tok = int(next_token(params, jnp.asarray(buf), jnp.int32(len(ctx))))
        ids.append(tok)
        out.append(tok)
    return out
