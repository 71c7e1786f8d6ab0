"""Generation: prefill the KV cache, then one compiled ``lax.scan`` for all new tokens.

    out = generate(params, cfg, prompts, key, max_new_tokens=64,
                   sampler=Sampler(temperature=0.8, top_p=0.95), stop=[[eos_id]])
    out.tokens    int32 [B, N]   new tokens; pad_id after a row has finished
    out.logprobs  float32 [B, N] the model's log-probability of each token (0 after finishing)
    out.finished  bool [B]       the row ended with a stop sequence
    out.lengths   int32 [B]      real new tokens per row (the stop sequence included)

Prompts are right-padded int32 [B, T] with per-row ``lengths`` [B] (``pad_prompts`` builds
them from lists, rounding T up to a bucket so new prompts reuse the compiled program). Row b
of a ragged batch produces exactly what it would alone: its tokens sit at positions
0..lengths[b]-1 of its own cache row and padding is never attended.

The pieces are public for other decode loops (streaming, speculative decoding): ``prefill``
returns a ``DecodeState`` and the first token, ``decode`` advances a state by a static number
of steps, ``decode_until_done`` is the early-exit ``lax.while_loop`` variant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from arlm_jax.config import ConfigError, ModelConfig
from arlm_jax.kvcache import KVCache, init_cache
from arlm_jax.model import forward, head, hidden, unstack_blocks
from arlm_jax.sampling import History, Sampler, init_history, sample, update_history

Array = jax.Array
Stop = tuple[tuple[int, ...], ...]


@flax.struct.dataclass
class DecodeState:
    cache: KVCache
    token: Array  # int32 [B] last emitted token: the next input
    done: Array  # bool [B] row has emitted a stop sequence
    n_out: Array  # int32 [B] real tokens emitted so far
    window: Array  # int32 [B, M] last M emitted tokens (-1 = none yet), M = longest stop sequence
    history: History | None  # token counts for the penalties (None when the sampler has none)
    key: Array


@flax.struct.dataclass
class Generation:
    tokens: Array  # int32 [B, N]
    logprobs: Array  # float32 [B, N]
    finished: Array  # bool [B]
    lengths: Array  # int32 [B]


# ---- input helpers -------------------------------------------------------------------------------
def normalize_stop(stop: Any) -> Stop:
    """Stop tokens and sequences as a hashable tuple of tuples: 7 -> ((7,),), [[1, 2], 7] -> ((1, 2), (7,))."""
    if stop is None:
        return ()
    if isinstance(stop, (int, np.integer)):
        stop = [stop]
    out = []
    for s in stop:
        seq = (int(s),) if isinstance(s, (int, np.integer)) else tuple(int(t) for t in s)
        if not seq:
            raise ConfigError("stop: an empty stop sequence would end every row at once")
        out.append(seq)
    return tuple(out)


def pad_prompts(prompts: Sequence[Sequence[int]], bucket: int = 16, pad_id: int = 0,
                max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to a length that is a multiple of ``bucket`` (but not past
    ``max_len`` when the longest prompt fits in it).

    -> (tokens int32 [B, T], lengths int32 [B]). Every prompt must hold at least one token.
    """
    lengths = np.array([len(p) for p in prompts], np.int32)
    if len(prompts) == 0 or lengths.min() == 0:
        raise ConfigError("prompt: empty prompt; give at least one token (e.g. a newline or <|endoftext|>)")
    longest = int(lengths.max())
    t = -(-longest // bucket) * bucket
    if max_len is not None and longest <= max_len:
        t = min(t, max_len)
    tokens = np.full((len(prompts), t), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return tokens, lengths


def check_room(cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> int:
    """Validate that a padded prompt and its new tokens fit the context; -> cache capacity.

    The last new token is never fed back, so the cache needs prompt_len + max_new_tokens - 1 slots.
    """
    if prompt_len > cfg.max_len:
        raise ConfigError(f"prompt: {prompt_len} tokens (padded) is longer than the context, "
                          f"model.max_len={cfg.max_len}")
    capacity = prompt_len + max_new_tokens - 1
    if capacity > cfg.max_len:
        raise ConfigError(f"max_new_tokens={max_new_tokens} after a {prompt_len}-token (padded) prompt "
                          f"exceeds the KV cache, model.max_len={cfg.max_len}; allowed at most "
                          f"{cfg.max_len - prompt_len + 1}")
    return capacity


# ---- the steps -------------------------------------------------------------------------------------
def push_stop_window(window: Array, tok: Array, live: Array, stop: Stop) -> tuple[Array, Array]:
    """Append tok [B] to the rows' windows of recent tokens [B, M] where ``live`` [B]; -> (window,
    bool [B] the window now ends with one of the stop sequences)."""
    if window.shape[1]:
        window = jnp.where(live[:, None], jnp.concatenate([window[:, 1:], tok[:, None]], axis=1), window)
    hit = jnp.zeros_like(live)
    for seq in stop:
        hit = hit | jnp.all(window[:, window.shape[1] - len(seq):] == jnp.asarray(seq, jnp.int32), axis=1)
    return window, hit


def _emit(state: DecodeState, logits: Array, sampler: Sampler | None, stop: Stop, pad_id: int
          ) -> tuple[DecodeState, Array, Array]:
    """Choose each row's next token from logits [B, V] and update the bookkeeping.

    -> (state, token int32 [B], logprob float32 [B]); rows already done emit pad_id and 0.
    """
    key, sub = (state.key, None) if sampler is None else jax.random.split(state.key)  # greedy: no RNG
    tok = sample(sub, logits, sampler, state.history)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), tok[:, None], axis=-1)[:, 0]
    live = ~state.done
    tok = jnp.where(live, tok, pad_id)
    logp = jnp.where(live, logp, 0.0)
    window, hit = push_stop_window(state.window, tok, live, stop)
    history = None if state.history is None else update_history(state.history, tok, live)
    state = state.replace(token=tok, done=state.done | (live & hit), n_out=state.n_out + live,
                          window=window, history=history, key=key)
    return state, tok, logp


def fill_cache(params: dict, cfg: ModelConfig, prompts: Array, lengths: Array, capacity: int
               ) -> tuple[KVCache, Array]:
    """Prefill a fresh cache of ``capacity`` slots with right-padded prompts [B, T] (``lengths``
    [B] real tokens) -> (cache, logits float32 [B, V] of each row's next token)."""
    x, cache = hidden(params, prompts, cfg, init_cache(cfg, prompts.shape[0], capacity))  # [B, T, D]
    logits = head(params, x[jnp.arange(prompts.shape[0]), lengths - 1], cfg)
    return cache.replace(lengths=lengths.astype(jnp.int32)), logits


def prefill(params: dict, cfg: ModelConfig, prompts: Array, lengths: Array, key: Array,
            capacity: int, sampler: Sampler | None = None, stop: Stop = (), pad_id: int = 0
            ) -> tuple[DecodeState, Array, Array]:
    """One forward over the padded prompts [B, T] fills a fresh cache of ``capacity`` slots and
    picks the first new token. -> (state, token [B], logprob [B])."""
    b = prompts.shape[0]
    cache, logits = fill_cache(params, cfg, prompts, lengths, capacity)
    history = init_history(prompts, lengths, cfg.vocab_size) if sampler is not None and sampler.uses_history else None
    m = max((len(s) for s in stop), default=0)
    state = DecodeState(cache=cache, token=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool),
                        n_out=jnp.zeros((b,), jnp.int32), window=jnp.full((b, m), -1, jnp.int32),
                        history=history, key=key)
    return _emit(state, logits, sampler, stop, pad_id)


def decode_step(params: dict, cfg: ModelConfig, state: DecodeState, sampler: Sampler | None = None,
                stop: Stop = (), pad_id: int = 0) -> tuple[DecodeState, Array, Array]:
    """Feed each row's last token, emit the next. -> (state, token [B], logprob [B])."""
    logits, cache = forward(params, state.token[:, None], cfg, state.cache)
    return _emit(state.replace(cache=cache), logits[:, 0], sampler, stop, pad_id)


def decode(params: dict, cfg: ModelConfig, state: DecodeState, n_steps: int,
           sampler: Sampler | None = None, stop: Stop = (), pad_id: int = 0
           ) -> tuple[DecodeState, Array, Array]:
    """``n_steps`` decode steps in one ``lax.scan``. -> (state, tokens [B, n], logprobs [B, n])."""
    params = unstack_blocks(params)  # outside the loop: each step reads every layer in place

    def body(st: DecodeState, _: None) -> tuple[DecodeState, tuple[Array, Array]]:
        st, tok, logp = decode_step(params, cfg, st, sampler, stop, pad_id)
        return st, (tok, logp)

    state, (toks, logps) = jax.lax.scan(body, state, None, length=n_steps)
    return state, toks.T, logps.T


def decode_until_done(params: dict, cfg: ModelConfig, state: DecodeState, n_steps: int,
                      sampler: Sampler | None = None, stop: Stop = (), pad_id: int = 0
                      ) -> tuple[DecodeState, Array, Array]:
    """Like ``decode`` but a ``lax.while_loop`` that stops as soon as every row is done; the
    columns it did not reach hold pad_id and 0."""
    params = unstack_blocks(params)
    b = state.token.shape[0]
    toks = jnp.full((b, n_steps), pad_id, jnp.int32)
    logps = jnp.zeros((b, n_steps), jnp.float32)

    def cond(carry: tuple) -> Array:
        i, st, _, _ = carry
        return (i < n_steps) & ~jnp.all(st.done)

    def body(carry: tuple) -> tuple:
        i, st, toks, logps = carry
        st, tok, logp = decode_step(params, cfg, st, sampler, stop, pad_id)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        logps = jax.lax.dynamic_update_slice(logps, logp[:, None], (0, i))
        return i + 1, st, toks, logps

    _, state, toks, logps = jax.lax.while_loop(cond, body, (jnp.int32(0), state, toks, logps))
    return state, toks, logps


# ---- the public entry points --------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "stop", "early_exit", "pad_id"))
def _generate(params: dict, cfg: ModelConfig, prompts: Array, lengths: Array, key: Array,
              sampler: Sampler | None, max_new_tokens: int, stop: Stop, early_exit: bool,
              pad_id: int) -> Generation:
    t = prompts.shape[1]
    params = unstack_blocks(params)  # once, so the loop reads each layer's weights in place
    state, tok, logp = prefill(params, cfg, prompts, lengths, key, t + max_new_tokens - 1,
                               sampler, stop, pad_id)
    loop = decode_until_done if early_exit else decode
    state, toks, logps = loop(params, cfg, state, max_new_tokens - 1, sampler, stop, pad_id)
    return Generation(tokens=jnp.concatenate([tok[:, None], toks], axis=1),
                      logprobs=jnp.concatenate([logp[:, None], logps], axis=1),
                      finished=state.done, lengths=state.n_out)


def _check_inputs(cfg: ModelConfig, prompts: Any, lengths: Any, max_new_tokens: int,
                  sampler: Sampler | None) -> tuple[Any, Any]:
    """Validate prompts [B, T], lengths [B] and the settings; -> (prompts, lengths) as int32.

    Host inputs (lists, numpy) are checked and returned as numpy arrays: the jitted call moves
    them to the device once, where converting them first and reading them back for the checks
    cost ~0.5 ms per call. jax arrays keep their placement (sharded prompts stay sharded) and
    are read back for the checks; traced ones have only their shapes checked."""
    traced = isinstance(prompts, jax.core.Tracer)
    host = None if traced else np.asarray(prompts)
    prompts = prompts.astype(jnp.int32) if isinstance(prompts, jax.Array) else host.astype(np.int32)
    if prompts.ndim != 2 or prompts.shape[1] == 0:
        raise ConfigError(f"prompts: expected int tokens [batch, length] with length >= 1, got shape "
                          f"{tuple(prompts.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    check_room(cfg, prompts.shape[1], max_new_tokens)
    if lengths is None:
        lengths = np.full((prompts.shape[0],), prompts.shape[1], np.int32)
    if isinstance(lengths, jax.core.Tracer):
        lengths = lengths.astype(jnp.int32)
    else:
        n = np.asarray(lengths)
        if n.shape != (prompts.shape[0],) or n.min() < 1 or n.max() > prompts.shape[1]:
            raise ConfigError(f"lengths: need one length in 1..{prompts.shape[1]} per prompt row "
                              f"(an empty prompt is not allowed), got {n.tolist()}")
        lengths = lengths.astype(jnp.int32) if isinstance(lengths, jax.Array) else n.astype(np.int32)
    if host is not None and (host.min() < 0 or host.max() >= cfg.vocab_size):
        raise ConfigError(f"prompts: token ids must be in 0..{cfg.vocab_size - 1}")
    if sampler is not None:
        sampler.validate()
    return prompts, lengths


def generate(params: dict, cfg: ModelConfig, prompts: Any, key: Array, *, max_new_tokens: int,
             sampler: Sampler | None = None, stop: Any = None, lengths: Any = None,
             early_exit: bool = False, pad_id: int = 0) -> Generation:
    """Generate ``max_new_tokens`` tokens after each prompt row, in one compiled program.

    prompts int32 [B, T] (right-padded; ``lengths`` [B] gives the real lengths, default T);
    ``sampler`` None is greedy; ``stop`` token ids or sequences (see ``normalize_stop``) finish
    a row; ``early_exit`` swaps the scan for a while_loop that ends when all rows are done.
    Compiled once per (config, B, T, max_new_tokens, stop, sampler fields in use); works inside
    the caller's own ``jax.jit`` too (then pass static arguments as such).
    """
    prompts, lengths = _check_inputs(cfg, prompts, lengths, max_new_tokens, sampler)
    return _generate(params, cfg, prompts, lengths, key, sampler, max_new_tokens,
                     normalize_stop(stop), early_exit, pad_id)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity", "stop", "pad_id"))
def _prefill_jit(params, cfg, prompts, lengths, key, sampler, capacity, stop, pad_id):
    return prefill(params, cfg, prompts, lengths, key, capacity, sampler, stop, pad_id)


@functools.partial(jax.jit, static_argnames=("cfg", "n_steps", "stop", "pad_id"), donate_argnums=(2,))
def _decode_jit(params, cfg, state, sampler, n_steps, stop, pad_id):
    return decode(params, cfg, state, n_steps, sampler, stop, pad_id)


def stream(params: dict, cfg: ModelConfig, prompts: Any, key: Array, *, max_new_tokens: int,
           sampler: Sampler | None = None, stop: Any = None, lengths: Any = None,
           chunk: int = 8, pad_id: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Generate like ``generate`` but yield (tokens [B, n], lengths [B], done [B]) as chunks of up
    to ``chunk`` steps are ready; ``lengths`` counts each row's real tokens so far (a row that
    stops inside a chunk pads the rest of it). Every chunk runs the same compiled ``chunk``-step
    scan (the state is donated, so the cache is reused in place); it stops early once every row
    is done."""
    prompts, lengths = _check_inputs(cfg, prompts, lengths, max_new_tokens, sampler)
    stop = normalize_stop(stop)
    n_chunks = -(-(max_new_tokens - 1) // chunk)
    # The last chunk may run past max_new_tokens (its extra steps are dropped), so the cache
    # gets the whole chunks' room where the context allows it.
    capacity = min(prompts.shape[1] + n_chunks * chunk, cfg.max_len)
    params = jax.jit(unstack_blocks)(params)  # a per-layer copy shared by every chunk
    state, tok, _ = _prefill_jit(params, cfg, prompts, lengths, key, sampler, capacity, stop, pad_id)
    yield np.asarray(tok)[:, None], np.asarray(state.n_out), np.asarray(state.done)
    left = max_new_tokens - 1
    while left > 0 and not bool(np.all(state.done)):
        state, toks, _ = _decode_jit(params, cfg, state, sampler, chunk, stop, pad_id)
        n = min(chunk, left)
        left -= n
        toks = np.asarray(toks)[:, :n]  # steps past max_new_tokens are dropped, so are their counts
        lengths = np.minimum(np.asarray(state.n_out), max_new_tokens - left)
        yield toks, lengths, np.asarray(state.done)
