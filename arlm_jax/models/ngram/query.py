"""The jittable n-gram query: log-probabilities over the whole vocabulary for a batch of contexts.

    query(params, cfg, ctx int32 [Q, N-1], ctx_len int32 [Q]) -> logits [Q, V]

``ctx`` holds each row's last N-1 tokens, right-aligned; only the last ``ctx_len`` of them are
real (a row near the start of its text has fewer). Two passes over fixed-size arrays:

1. The context walk. Ids of the context's suffixes, longest last: node_1 is the last token; node_m
   is found among the children of node_{m-1} in the trie (tables.py) by a binary search of
   ceil(log2(V + 1)) steps, a lower bound over its sorted first tokens.
2. The mixture, from the longest order down (counts.py's formula unrolled):
       P(w) = sum_n beta_n * alpha_n(c_n, w) + beta_0 / V,
       beta_N = 1, beta_{n-1} = beta_n * gamma_n(c_n)
   where an order whose context was never seen (or is longer than ctx_len) passes all its
   mass down (gamma = 1, no alpha). Order 1's alpha is dense [V]; each higher order adds the
   F_n (the fanout: most words after one context) words after its context with one scatter-add.
   Add-k uses only one order: the longest the row has, min(ctx_len + 1, N).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from arlm_jax.errors import ConfigError
from arlm_jax.models.ngram.config import NGramConfig

Array = jax.Array


def _take(table: Array, idx: Array) -> Array:
    return jnp.take(table, idx, mode="clip")


def lower_bound(keys: Array, lo: Array, hi: Array, target: Array, steps: int) -> Array:
    """The first position in keys[lo:hi] (sorted) that is >= target, per row: int32 [Q].
    ``steps`` >= ceil(log2(max(hi - lo) + 1)) binary-search steps."""
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        less = _take(keys, mid) < target
        lo, hi = jnp.where(active & less, mid + 1, lo), jnp.where(active & ~less, mid, hi)
    return lo


def walk(params: dict, ctx: Array, vocab: int) -> tuple[list[Array], list[Array]]:
    """Ids and found flags of the context's suffixes of 1..N-1 tokens (lists of [Q])."""
    order = ctx.shape[1] + 1
    if order == 1:
        return [], []
    steps = math.ceil(math.log2(vocab + 1))
    nodes, found = [ctx[:, -1]], [jnp.ones(ctx.shape[:1], bool)]
    for m in range(2, order):
        t = params["trie"][m - 2]
        lo, hi = _take(t["offsets"], nodes[-1]), _take(t["offsets"], nodes[-1] + 1)
        target = ctx[:, order - 1 - m]
        pos = lower_bound(t["first"], lo, hi, target, steps)
        hit = found[-1] & (pos < hi) & (_take(t["first"], pos) == target)
        nodes.append(pos)
        found.append(hit)
    return nodes, found


def check_tables(params: dict, cfg: NGramConfig) -> None:
    """Refuse tables whose sizes are not the config's: the query reads ``cfg.fanouts`` words
    after each context, so an unfitted config with fitted tables would silently read too few."""
    have = tuple(int(o["alpha"].shape[0]) for o in params["orders"])
    if have != cfg.table_sizes():
        raise ConfigError(f"model.sizes={list(cfg.sizes)} does not match the parameter tables (n-grams of "
                          f"orders 1..{len(have)}: {list(have)}); decode with the config the fit returned "
                          f"(Fitted.cfg, TrainResult.run.model, or load_run's), not the unfitted one")


def query(params: dict, cfg: NGramConfig, ctx: Array, ctx_len: Array) -> Array:
    """Logits (natural-log probabilities) [Q, V] after each context (see the module docstring).
    Computed in cfg.dtype (float64 when the tables are float64, under jax_enable_x64)."""
    check_tables(params, cfg)
    n_max, vocab, q = cfg.order, cfg.vocab_size, ctx.shape[0]
    alpha1 = params["orders"][0]["alpha"]
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else alpha1.dtype
    nodes, found = walk(params, ctx, vocab)
    top = jnp.minimum(ctx_len + 1, n_max)  # the longest order each row has
    usable = [jnp.ones((q,), bool)] + [found[n - 2] & (ctx_len >= n - 1) for n in range(2, n_max + 1)]
    if not cfg.interpolated:
        usable = [u & (top == n) for n, u in enumerate(usable, start=1)]
    gammas = [jnp.where(usable[0], params["orders"][0]["gamma"][0], 1.0).astype(dtype)]
    gammas += [jnp.where(usable[n - 1], _take(params["orders"][n - 1]["gamma"], nodes[n - 2]), 1.0).astype(dtype)
               for n in range(2, n_max + 1)]
    betas = [jnp.ones((q,), dtype)]  # beta_N, ..., beta_0
    for g in reversed(gammas):
        betas.append(betas[-1] * g)
    betas = betas[::-1]  # beta_0, beta_1, ..., beta_N
    probs = (betas[0] / vocab)[:, None] + jnp.where(usable[0], betas[1], 0.0)[:, None] * alpha1.astype(dtype)[None, :]
    rows = jnp.arange(q)[:, None]
    for n in range(2, n_max + 1):
        o, fanout = params["orders"][n - 1], cfg.table_fanouts()[n - 2]
        node = nodes[n - 2]
        lo, hi = _take(o["offsets"], node), _take(o["offsets"], node + 1)
        pos = lo[:, None] + jnp.arange(fanout)[None, :]  # [Q, F_n]
        valid = (pos < hi[:, None]) & usable[n - 1][:, None]
        mass = jnp.where(valid, betas[n][:, None] * _take(o["alpha"], pos).astype(dtype), 0.0)
        probs = probs.at[rows, _take(o["words"], pos)].add(mass)
    out = jnp.float64 if dtype == jnp.float64 else jnp.float32
    return jnp.log(jnp.maximum(probs.astype(out), jnp.finfo(out).tiny))
