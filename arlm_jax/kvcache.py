"""The static-shape KV cache: one pytree carried through prefill, the decode loop and verify.

Layout (chosen so attention reads it without a transpose; see docs/benchmarks.md):

  k, v     [L, B, K, S, E]  compute dtype; only the K kv heads are stored (GQA/MQA save H/K x)
  lengths  int32 [B]        slots filled per row

Slot s of a row holds the token at position s, so positions, masks and positional biases all
come from slot indices: a query at position p may attend to slots 0..p, which are always
written before they are read (a forward writes its new keys, then attends). Rows may hold
different lengths (ragged prompts, speculative rows that accepted different counts); rolling a
row back is just lowering its length, since slots past the length are never attended.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from arlm_jax.config import ConfigError, ModelConfig

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class KVCache:
    k: Array  # [L, B, K, S, E]
    v: Array  # [L, B, K, S, E]
    lengths: Array  # int32 [B]

    @property
    def capacity(self) -> int:
        """S, the number of slots per row."""
        return self.k.shape[3]


def init_cache(cfg: ModelConfig, batch: int, capacity: int | None = None) -> KVCache:
    """An empty cache of ``capacity`` slots per row (default ``cfg.max_len``)."""
    capacity = cfg.max_len if capacity is None else capacity
    if not 0 < capacity <= cfg.max_len:
        raise ConfigError(f"cache capacity={capacity} must be in 1..model.max_len={cfg.max_len}")
    shape = (cfg.n_layers, batch, cfg.kv_heads, capacity, cfg.head_dim)
    zeros = jnp.zeros(shape, _DTYPES[cfg.dtype])
    return KVCache(k=zeros, v=zeros, lengths=jnp.zeros((batch,), jnp.int32))


def write_layer(buf: Array, layer: Array, new: Array, starts: Array) -> Array:
    """Write new keys (or values) of one layer at each row's own offset.

    buf [L, B, K, S, E], layer int32 scalar, new [B, T, K, E], starts int32 [B] -> buf with
    slots starts[b] .. starts[b]+T-1 of row b, layer ``layer``, replaced. A scatter of B*T
    slots, done in place when ``buf`` is a loop carry or donated.
    """
    new = new.astype(buf.dtype).transpose(0, 2, 1, 3)  # [B, K, T, E]

    def one_row(row: Array, upd: Array, start: Array) -> Array:  # row [L, K, S, E]
        zero = jnp.zeros((), jnp.int32)
        return jax.lax.dynamic_update_slice(row, upd[None], (layer, zero, start, zero))

    return jax.vmap(one_row, in_axes=(1, 0, 0), out_axes=1)(buf, new, starts)


def select_rows(cache: KVCache, rows: Array) -> KVCache:
    """Cache of the given rows, in that order (beam search reorders beams with it). rows int32 [B']."""
    return KVCache(k=cache.k[:, rows], v=cache.v[:, rows], lengths=cache.lengths[rows])
