"""Generation past the context window: when a row's state is full, slide its window.

nanoGPT generates any number of tokens by cropping its context to the last ``block_size``
tokens before every step and recomputing. A decode loop with a state does the same thing
lazily. With C = the family's context length and ``keep`` in 1..C, a row reads tokens into
its state until it holds C of them; the step that would feed one more first refills the row:
a fresh state from the last keep - 1 tokens it holds (a prefill, so positions restart at 0),
and then the pending token goes in as usual. So the model sees the last ``keep`` tokens of the
text, at positions 0..keep-1, exactly what a full forward over that cropped window computes.
The window then grows by one token a step until it holds C tokens again.

    window start w (text s[0..n-1] before the step that predicts s[n], w = 0 at first):
        if n - w > C: w = n - keep            the model reads s[w:n]

keep = C is nanoGPT's per-step crop (a refill of C - 1 tokens on every step once full); a
smaller keep refills less often (every C - keep + 1 steps) from a shorter window.

All of it is one compiled step with static shapes: the refill runs under a ``lax.cond`` only
when some row is full, and its result replaces only the full rows (a per-row select over the
state's batch-leading leaves); the other rows keep their state. The decode state carries, per
row, how many tokens the model state holds (``held``) and the last keep - 1 of them (``tail``).
A request that fits the context never builds either, so its program is unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from arlm_jax.models import family_of

Array = jax.Array


def plan(cfg: Any, fed: int, keep: int | None) -> tuple[int, int | None]:
    """(state capacity, keep or None) for a request whose state would hold ``fed`` tokens.

    The window slides (keep is returned) only for a family with a context length that the
    request would overflow; then the state holds the whole context. ``keep`` comes from
    ``check_window_keep`` (None only for an unbounded family)."""
    ctx = family_of(cfg).context_len(cfg)
    if ctx is None or fed <= ctx:
        return fed, None
    return ctx, keep


def init_tail(prompts: Array, lengths: Array, keep: int) -> Array:
    """The last keep - 1 real tokens of each right-padded prompt [B, T] (``lengths`` [B]) ->
    int32 [B, keep - 1], right-aligned; slots before a short prompt's first token hold 0 (they
    are pushed out before the row can fill, so a refill never reads them)."""
    idx = lengths[:, None] - (keep - 1) + jnp.arange(keep - 1)[None, :]  # [B, keep-1]
    toks = jnp.take_along_axis(prompts, jnp.clip(idx, 0, prompts.shape[1] - 1), axis=1)
    return jnp.where(idx >= 0, toks, 0).astype(jnp.int32)


def push_tail(tail: Array, tok: Array) -> Array:
    """Append the tokens tok [B] just fed to the rows' tails [B, keep - 1]."""
    if not tail.shape[1]:
        return tail
    return jnp.concatenate([tail[:, 1:], tok[:, None].astype(tail.dtype)], axis=1)


def select_rows(rows: Array, new: Any, old: Any) -> Any:
    """Row b of ``new`` where rows[b] (bool [B]), else of ``old``: two states of one structure
    whose array leaves are batch-leading."""
    def pick(a: Array, b: Array) -> Array:
        return jnp.where(rows.reshape(rows.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, new, old)


def slide(params: Any, cfg: Any, model: Any, held: Array, tail: Array) -> tuple[Any, Array]:
    """Refill the full rows of a decoding state before the next token is fed.

    model: the family's state (capacity C = context_len); held int32 [B] tokens it holds;
    tail int32 [B, keep - 1] the last of them. -> (state, held): a full row (held == C) holds
    its last keep - 1 tokens at positions 0..keep-2, the others are untouched. The refill (a
    prefill of all B rows, then the select) runs only when some row is full."""
    fam = family_of(cfg)
    ctx = fam.context_len(cfg)
    b, keep = held.shape[0], tail.shape[1] + 1
    full = held >= ctx  # [B]

    def refill(model: Any) -> Any:
        if keep == 1:  # the window restarts from the pending token alone
            fresh = fam.init_state(cfg, b, ctx)
        else:
            fresh, _ = fam.prefill(params, cfg, tail, jnp.full((b,), keep - 1, jnp.int32), ctx)
        return select_rows(full, fresh, model)

    model = jax.lax.cond(jnp.any(full), refill, lambda m: m, model)
    return model, jnp.where(full, keep - 1, held)
