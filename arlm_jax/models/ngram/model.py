"""The ``ngram`` family's functions: fit (counting), init, forward, the decoding state.

The decoding state is each row's last tokens: a ring ``ring`` int32 [B, W] of its last W = N-1 +
history tokens (token p of the row in slot p % W) and ``lengths`` [B]. The query reads the last
N-1; the ``history`` beyond them are what a rollback (speculative decoding) returns to.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from arlm_jax.models.api import Fitted
from arlm_jax.models.ngram import counts, tables
from arlm_jax.models.ngram.config import NGramConfig
from arlm_jax.models.ngram.query import query

Array = jax.Array


@flax.struct.dataclass
class NGramState:
    ring: Array  # int32 [B, W]: the row's token p in slot p % W, for its last W tokens
    lengths: Array  # int32 [B]: tokens read per row


def fit_tables(cfg: NGramConfig, tokens: np.ndarray, dtype=np.float32) -> tuple[dict, NGramConfig, counts.Estimate]:
    """Count ``tokens`` and estimate (counts.py): NumPy params with float ``dtype``, the config
    with its table sizes set, and the estimate (for inspection)."""
    levels = counts.count_ngrams(tokens, cfg.order, cfg.vocab_size)
    est = counts.estimate(levels, cfg.smoothing, cfg.add_k, cfg.discount_fallback)
    tries = [(lv.suffix, lv.first) for lv in levels[1:-1]]
    predictions = [(lv.prefix, lv.word, a) for lv, a in zip(levels[1:], est.alpha[1:])]
    params, sizes, fanouts = tables.pack(est.alpha[0], est.gamma, tries, predictions, est.discounts, dtype)
    return params, dataclasses.replace(cfg, sizes=sizes, fanouts=fanouts).validate(), est


def fit(cfg: NGramConfig, tokens: np.ndarray, train_cfg=None) -> Fitted:
    """``Family.fit``: the smoothed model of the training tokens (train_cfg is not needed)."""
    del train_cfg
    params, fitted, est = fit_tables(cfg, tokens)
    d = ", ".join(f"{n}: {' '.join(f'{x:.3f}' for x in row)}" for n, row in enumerate(est.discounts, start=1))
    note = (f"{cfg.order}-gram ({cfg.smoothing}): {', '.join(f'{s:,}' for s in fitted.sizes)} distinct n-grams of orders 1..{cfg.order}"
            + (f"; discounts D1 D2 D3+ by order {d}" if cfg.interpolated else ""))
    return Fitted(params=jax.tree.map(jnp.asarray, params), cfg=fitted, note=note)


def init(key: Array, cfg: NGramConfig) -> dict:
    """Tables of the config's sizes holding the uniform distribution (an unfitted model, or the
    shapes a checkpoint restores into); ``key`` is unused."""
    del key
    sizes, vocab = cfg.table_sizes(), cfg.vocab_size
    i32 = lambda n: jnp.zeros((n,), jnp.int32)  # noqa: E731
    orders = [{"alpha": jnp.zeros((vocab,), jnp.float32), "gamma": jnp.ones((1,), jnp.float32)}]
    orders += [{"offsets": i32(sizes[n - 2] + 1), "words": i32(sizes[n - 1]),
                "alpha": jnp.zeros((sizes[n - 1],), jnp.float32), "gamma": jnp.ones((sizes[n - 2],), jnp.float32)}
               for n in range(2, cfg.order + 1)]
    trie = [{"offsets": i32(sizes[m - 2] + 1), "first": i32(sizes[m - 1])} for m in range(2, cfg.order)]
    return {"orders": orders, "trie": trie, "discounts": jnp.zeros((cfg.order, 3), jnp.float32)}


def param_axes(params: dict) -> dict:
    """Every table is replicated: its axes are n-gram rows, not features."""
    return jax.tree.map(lambda a: ("ngrams",) * a.ndim, params)


def _contexts(padded: Array, t: int, width: int) -> Array:
    """[B, T, width]: for each of T positions, the ``width`` tokens of ``padded`` [B, width + T]
    ending at that position's token."""
    idx = jnp.arange(t)[:, None] + 1 + jnp.arange(width)[None, :]  # [T, width]
    return padded[:, idx]


def _logits(params: dict, cfg: NGramConfig, ctx: Array, ctx_len: Array) -> Array:
    """ctx [B, T, N-1], ctx_len [B, T] -> logits [B, T, V]."""
    b, t = ctx_len.shape
    out = query(params, cfg, ctx.reshape(b * t, cfg.order - 1), ctx_len.reshape(b * t))
    return out.reshape(b, t, cfg.vocab_size)


def init_state(cfg: NGramConfig, batch: int, capacity: int | None = None) -> NGramState:
    """An empty state; ``capacity`` is accepted for the interface (the ring's size is fixed)."""
    del capacity
    return NGramState(ring=jnp.zeros((batch, cfg.order - 1 + cfg.history), jnp.int32),
                      lengths=jnp.zeros((batch,), jnp.int32))


def _last_tokens(state: NGramState, k: int) -> Array:
    """int32 [B, k]: each row's last k tokens, oldest first (0 before its first token)."""
    w = state.ring.shape[1]
    pos = state.lengths[:, None] - k + jnp.arange(k)[None, :]  # [B, k]
    got = jnp.take_along_axis(state.ring, pos % w, axis=1)
    return jnp.where(pos >= 0, got, 0)


def forward(params: dict, tokens: Array, cfg: NGramConfig, state: NGramState | None = None, *,
            positions: Array | None = None, dropout_key: Array | None = None
            ) -> tuple[Array, NGramState | None]:
    """tokens int32 [B, T] -> (logits [B, T, V], state): position t's logits are the
    distribution of the token after tokens[:, t], given the N-1 tokens ending there.
    ``positions`` and ``dropout_key`` are accepted for the interface and unused."""
    del positions, dropout_key
    b, t = tokens.shape
    k = cfg.order - 1
    tokens = tokens.astype(jnp.int32)
    before = jnp.zeros((b,), jnp.int32) if state is None else state.lengths
    hist = jnp.zeros((b, k), jnp.int32) if state is None else _last_tokens(state, k)
    ctx = _contexts(jnp.concatenate([hist, tokens], axis=1), t, k)
    ctx_len = jnp.minimum(before[:, None] + jnp.arange(1, t + 1)[None, :], k)
    logits = _logits(params, cfg, ctx, ctx_len)
    if state is None:
        return logits, None
    w = state.ring.shape[1]
    m = min(t, w)  # only the last W tokens are kept
    slots = (state.lengths[:, None] + jnp.arange(t - m, t)[None, :]) % w
    ring = state.ring.at[jnp.arange(b)[:, None], slots].set(tokens[:, t - m:])
    return logits, NGramState(ring=ring, lengths=state.lengths + t)


def rollback(state: NGramState, lengths: Array) -> NGramState:
    """Rows cut back to ``lengths`` [B] tokens, at most ``history`` fewer than they hold."""
    return state.replace(lengths=lengths.astype(jnp.int32))


def prefill(params: dict, cfg: NGramConfig, prompts: Array, lengths: Array, capacity: int | None = None
            ) -> tuple[NGramState, Array]:
    """The state after each right-padded prompt [B, T] (its last W real tokens, gathered
    directly) and the logits [B, V] of each row's next token (one query per row)."""
    b, t = prompts.shape
    k, w = cfg.order - 1, cfg.order - 1 + cfg.history
    prompts, lengths = prompts.astype(jnp.int32), lengths.astype(jnp.int32)
    slot = jnp.arange(w)[None, :]
    pos = lengths[:, None] - 1 - ((lengths[:, None] - 1 - slot) % w)  # [B, W] the position held in each slot
    ring = jnp.where(pos >= 0, jnp.take_along_axis(prompts, jnp.clip(pos, 0, t - 1), axis=1), 0)
    state = NGramState(ring=ring, lengths=lengths)
    ctx = _last_tokens(state, k)
    return state, query(params, cfg, ctx, jnp.minimum(lengths, k))


def state_axes(state: NGramState) -> NGramState:
    return NGramState(ring=("batch", "length"), lengths=("batch",))


def describe(cfg: NGramConfig) -> str:
    fitted = (f"{', '.join(f'{s:,}' for s in cfg.sizes)} n-grams of orders 1..{cfg.order}" if cfg.sizes
              else "unfitted (uniform)")
    return f"ngram: order {cfg.order}, {cfg.smoothing}, vocab {cfg.vocab_size}, {fitted}"
