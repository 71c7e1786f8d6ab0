"""Beam search with static shapes: B prompts x W beams decoded as B*W state rows in one scan.

Each step scores every continuation of the W alive beams ([B, W*V]), keeps the top 2W: those
ending in a stop token move to a pool of finished hypotheses (score = sum of log-probs /
length ** length_penalty, the Hugging Face rule, length counting new tokens only), the best W
others stay alive, and the rows of the decoding state are reordered (``Family.reorder``) to follow their parents. After the last
step the alive beams join the pool too, and the ``n_best`` best hypotheses are returned.
With W >= V ** (N - 1) no prefix is ever dropped, so the result is the exhaustive optimum; width
1 without stop tokens is greedy decoding.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from arlm_jax.decode.inputs import check_inputs, normalize_stop
from arlm_jax.errors import ConfigError
from arlm_jax.models import family_of

Array = jax.Array
DEAD = -1e9  # score of an empty beam slot: far below any reachable sum of log-probs


@flax.struct.dataclass
class BeamResult:
    tokens: Array  # int32 [B, n, N], pad_id after a hypothesis ends
    scores: Array  # float32 [B, n] length-penalised, best first
    logprobs: Array  # float32 [B, n] sum of the tokens' log-probabilities
    lengths: Array  # int32 [B, n] new tokens (the stop token included)
    finished: Array  # bool [B, n] ended with a stop token


@flax.struct.dataclass
class _Beams:
    seqs: Array  # int32 [B, W, N]
    logp: Array  # float32 [B, W] sum of log-probs (alive) ...
    score: Array  # float32 [B, W] ... and the ranking score (finished pool)
    length: Array  # int32 [B, W]


def _take(beams: _Beams, idx: Array) -> _Beams:
    """Beams idx [B, M'] (indices into the beam axis) of beams [B, M, ...]."""
    pick = lambda a: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
    return jax.tree.map(pick, beams)


def _top(beams: _Beams, key: Array, w: int) -> tuple[_Beams, Array]:
    """The w beams of largest ``key`` [B, M], best first, and their indices [B, w]."""
    _, idx = jax.lax.top_k(key, w)
    return _take(beams, idx), idx


def _penalised(logp: Array, length: Array, alpha: Any) -> Array:
    return logp / jnp.maximum(length, 1).astype(jnp.float32) ** alpha


def _step(alive: _Beams, pool: _Beams, lp: Array, step: Array, stop_ids: Array, alpha: Any
          ) -> tuple[_Beams, _Beams, Array]:
    """Extend the alive beams by one token. lp float32 [B, W, V] -> (alive, pool, parents [B, W])."""
    b, w, v = lp.shape
    cand = (alive.logp[:, :, None] + lp).reshape(b, w * v)
    val, idx = jax.lax.top_k(cand, 2 * w)  # [B, 2W]
    parent, tok = idx // v, (idx % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive.seqs, parent[:, :, None], axis=1)
    seqs = jax.lax.dynamic_update_slice(seqs, tok[:, :, None], (0, 0, step))
    length = jnp.full((b, 2 * w), step + 1, jnp.int32)
    cands = _Beams(seqs=seqs, logp=val, score=_penalised(val, length, alpha), length=length)
    is_stop = jnp.any(tok[:, :, None] == stop_ids, axis=-1) & (val > DEAD / 2)
    # Finished pool: the best W of (old pool, candidates that just emitted a stop token).
    merged = jax.tree.map(lambda a, c: jnp.concatenate([a, c], axis=1), pool, cands)
    pool, _ = _top(merged, jnp.concatenate([pool.score, jnp.where(is_stop, cands.score, DEAD)], 1), w)
    alive, keep = _top(cands, jnp.where(is_stop, DEAD, val), w)
    return alive, pool, jnp.take_along_axis(parent, keep, axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "beams", "max_new_tokens", "n_best", "stop", "pad_id"))
def _beam_search(params: dict, cfg: Any, prompts: Array, lengths: Array, length_penalty: Any,
                 beams: int, max_new_tokens: int, n_best: int, stop: tuple[int, ...], pad_id: int
                 ) -> BeamResult:
    b, t = prompts.shape
    w, n = beams, max_new_tokens
    stop_ids = jnp.asarray(stop if stop else (-1,), jnp.int32)
    fam = family_of(cfg)
    params = fam.decode_params(params, cfg)
    cache, logits = fam.prefill(params, cfg, prompts, lengths, t + n - 1)
    lp = jax.nn.log_softmax(logits)  # [B, V]
    cache = fam.reorder(cache, jnp.repeat(jnp.arange(b), w))  # row b*W + j is beam j of prompt b

    empty = _Beams(seqs=jnp.full((b, w, n), pad_id, jnp.int32), logp=jnp.full((b, w), DEAD),
                   score=jnp.full((b, w), DEAD), length=jnp.zeros((b, w), jnp.int32))
    alive = empty.replace(logp=empty.logp.at[:, 0].set(0.0))  # one live beam: no duplicates
    alive, pool, _ = _step(alive, empty, jnp.broadcast_to(lp[:, None], (b, w, lp.shape[-1])),
                           jnp.int32(0), stop_ids, length_penalty)

    def body(carry: tuple, step: Array) -> tuple[tuple, None]:
        alive, pool, cache = carry
        toks = jax.lax.dynamic_index_in_dim(alive.seqs, step - 1, axis=2, keepdims=False)  # [B, W]
        logits, cache = fam.forward(params, toks.reshape(b * w, 1), cfg, cache)
        lp = jax.nn.log_softmax(logits[:, 0]).reshape(b, w, -1)
        alive, pool, parent = _step(alive, pool, lp, step, stop_ids, length_penalty)
        cache = fam.reorder(cache, (jnp.arange(b)[:, None] * w + parent).reshape(-1))
        return (alive, pool, cache), None

    # The first _step's parents are all beam 0, whose state rows are identical: no reorder needed.
    (alive, pool, _), _ = jax.lax.scan(body, (alive, pool, cache), jnp.arange(1, n, dtype=jnp.int32))
    alive = alive.replace(score=_penalised(alive.logp, alive.length, length_penalty))
    merged = jax.tree.map(lambda a, c: jnp.concatenate([a, c], axis=1), pool, alive)
    finished = jnp.concatenate([jnp.ones((b, w), bool), jnp.zeros((b, w), bool)], axis=1)
    best, idx = _top(merged, merged.score, n_best)
    return BeamResult(tokens=best.seqs, scores=best.score, logprobs=best.logp, lengths=best.length,
                      finished=jnp.take_along_axis(finished, idx, axis=1) & (best.logp > DEAD / 2))


def beam_search(params: dict, cfg: Any, prompts: Any, *, beams: int, max_new_tokens: int,
                n_best: int = 1, length_penalty: float = 1.0, stop: Any = None, lengths: Any = None,
                pad_id: int = 0) -> BeamResult:
    """The ``n_best`` highest-scoring continuations of each prompt row.

    prompts int32 [B, T] right-padded (``lengths`` [B], default T); ``stop``: token ids that end
    a hypothesis (e.g. the end-of-text id); ``length_penalty`` alpha in score = sum log p / len**alpha
    (0 ranks by total log-probability). Compiled once per (config, B, T, beams, max_new_tokens,
    n_best, stop).
    """
    if not isinstance(beams, int) or beams < 1:
        raise ConfigError(f"beams={beams!r} must be an integer >= 1")
    if not isinstance(n_best, int) or not 1 <= n_best <= beams:
        raise ConfigError(f"n_best={n_best!r} must be an integer in 1..beams={beams}")
    family_of(cfg).require("reorder", "beam search")
    prompts, lengths = check_inputs(cfg, prompts, lengths, max_new_tokens, None)
    stops = normalize_stop(stop)
    if any(len(s) != 1 for s in stops):
        raise ConfigError("stop: beam search takes single stop tokens (e.g. <|endoftext|>), not sequences")
    if 2 * beams > beams * cfg.vocab_size:
        raise ConfigError(f"beams: the vocabulary ({cfg.vocab_size}) must have at least 2 tokens")
    return _beam_search(params, cfg, prompts, lengths, length_penalty, beams, max_new_tokens, n_best,
                        tuple(s[0] for s in stops), pad_id)
