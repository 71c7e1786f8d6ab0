"""The static-shape KV cache: one pytree carried through prefill, the decode loop and verify.

Layout (chosen by measurement on XLA:CPU, docs/benchmarks.md):

  k, v     tuples of L arrays [B, K, S, E]  compute dtype; only the K kv heads are stored
                                            (GQA/MQA save H/K x); head-major, so attention reads
                                            them without a transpose
  lengths  int32 [B]                        slots filled per row

One array per layer rather than one [L, ...] array: a decode step that reads layer l of a
stacked cache through a loop index copies it (the whole cache, every step), while separate
per-layer buffers are read in place and written in place by a B*T-slot scatter.

Slot s of a row holds the token at position s, so positions, masks and positional biases all
come from slot indices. A forward over T new tokens attends to the slots filled before them
(0..length-1) and to its own T keys, then writes those keys into slots length..length+T-1:
reading before writing lets XLA update every buffer in place (model.py). Rows may hold
different lengths (ragged prompts, speculative rows that accepted different counts); rolling a
row back is just lowering its length, since slots past the length are never attended.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from arlm_jax.errors import ConfigError
from arlm_jax.models.transformer.axes import CACHE_AXES
from arlm_jax.models.transformer.config import TransformerConfig as ModelConfig
from arlm_jax.parallel.rules import constrain

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class KVCache:
    k: tuple[Array, ...]  # L x [B, K, S, E]
    v: tuple[Array, ...]  # L x [B, K, S, E]
    lengths: Array  # int32 [B]

    @property
    def capacity(self) -> int:
        """S, the number of slots per row."""
        return self.k[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, capacity: int | None = None) -> KVCache:
    """An empty cache of ``capacity`` slots per row (default ``cfg.max_len``)."""
    capacity = cfg.max_len if capacity is None else capacity
    if not 0 < capacity <= cfg.max_len:
        raise ConfigError(f"cache capacity={capacity} must be in 1..model.max_len={cfg.max_len}")
    shape = (batch, cfg.kv_heads, capacity, cfg.head_dim)
    # Under a mesh (parallel/rules.py): rows over the batch axes, kv heads over the tensor axis.
    zeros = tuple(constrain(jnp.zeros(shape, _DTYPES[cfg.dtype]), CACHE_AXES)
                  for _ in range(cfg.n_layers))
    lengths = constrain(jnp.zeros((batch,), jnp.int32), ("batch",))
    # Opaque to the compiler: a prefill reads the cache before writing it (model.py), and XLA
    # would otherwise constant-fold that read of known zeros (8 s of compile for 8 x 64 tokens).
    zeros, lengths = jax.lax.optimization_barrier((zeros, lengths))
    return KVCache(k=zeros, v=zeros, lengths=lengths)


def write(buf: Array, new: Array, starts: Array) -> Array:
    """Write one layer's new keys (or values) at each row's own offset.

    buf [B, K, S, E], new [B, T, K, E], starts int32 [B] -> buf with slots
    starts[b] .. starts[b]+T-1 of row b replaced; done in place when ``buf`` is a loop carry or
    donated and every read of the old buffer comes first (model.py orders them).
    """
    b, t = new.shape[:2]
    rows = jnp.arange(b)[:, None]  # [B, 1]
    slots = starts[:, None] + jnp.arange(t)[None, :]  # [B, T]
    # buf[rows, :, slots, :] is the [B, T, K, E] view being replaced; slots past S are dropped
    # (the surplus steps of a last streamed chunk).
    return buf.at[rows, :, slots, :].set(new.astype(buf.dtype), unique_indices=True,
                                         indices_are_sorted=True, mode="drop")

