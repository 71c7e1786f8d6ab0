"""Generation: prefill the decoding state, then one compiled ``lax.scan`` for all new tokens.

    out = generate(params, cfg, prompts, key, max_new_tokens=64,
                   sampler=Sampler(temperature=0.8, top_p=0.95), stop=[[eos_id]])
    out.tokens    int32 [B, N]   new tokens; pad_id after a row has finished
    out.logprobs  float32 [B, N] the model's log-probability of each token (0 after finishing)
    out.finished  bool [B]       the row ended with a stop sequence
    out.lengths   int32 [B]      real new tokens per row (the stop sequence included)

Prompts are right-padded int32 [B, T] with per-row ``lengths`` [B] (``pad_prompts`` builds
them from lists, rounding T up to a bucket so new prompts reuse the compiled program). Row b
of a ragged batch produces exactly what it would alone: its tokens sit at positions
0..lengths[b]-1 of its own state row (for a Transformer, its KV cache row) and padding is never read.

Any number of new tokens: a family with a finite context (a Transformer's max_len) slides
its window when a row's state is full (window.py), as nanoGPT crops its context to the last
block_size tokens. The full row is refilled from the last ``window_keep`` tokens of its text,
at positions 0..keep-1 (a prefill of keep - 1 tokens, then the pending one), and grows again
from there; rows of a ragged batch slide on their own schedules. The cost is that refill each
time a row fills: with the default keep = the context length that is every step once the row
is full (what nanoGPT recomputes), with a smaller keep every C - keep + 1 steps. The refill
runs under a ``lax.cond`` in the same compiled step, only when some row is full. A request that
fits the context compiles exactly the program it did before (no cond, no extra state), and a
family with an unbounded context (``context_len`` None, e.g. an RNN) never slides. Prompts must
still fit the context (the CLI crops them); beam search and speculative decoding do not slide.

The pieces are public for other decode loops (streaming, speculative decoding): ``prefill``
returns a ``DecodeState`` and the first token, ``decode`` advances a state by a static number
of steps, ``decode_until_done`` is the early-exit ``lax.while_loop`` variant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from arlm_jax.decode import window as sliding
from arlm_jax.decode.inputs import Stop, check_inputs, check_window_keep, normalize_stop
from arlm_jax.decode.sampling import History, Sampler, init_history, sample, update_history
from arlm_jax.models import family_of

Array = jax.Array


@flax.struct.dataclass
class DecodeState:
    model: Any  # the family's decoding state (a KV cache, RNN states, ...), batch-leading leaves
    token: Array  # int32 [B] last emitted token: the next input
    done: Array  # bool [B] row has emitted a stop sequence
    n_out: Array  # int32 [B] real tokens emitted so far
    window: Array  # int32 [B, M] last M emitted tokens (-1 = none yet), M = longest stop sequence
    history: History | None  # token counts for the penalties (None when the sampler has none)
    key: Array
    # Only when the window slides (window.py; None otherwise, so a request that fits the
    # context carries nothing more):
    held: Array | None = None  # int32 [B] tokens the model state holds (the context length when full)
    tail: Array | None = None  # int32 [B, keep - 1] the last keep - 1 of them, to refill from


@flax.struct.dataclass
class Generation:
    tokens: Array  # int32 [B, N]
    logprobs: Array  # float32 [B, N]
    finished: Array  # bool [B]
    lengths: Array  # int32 [B]


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


def prefill(params: dict, cfg: Any, prompts: Array, lengths: Array, key: Array,
            capacity: int, sampler: Sampler | None = None, stop: Stop = (), pad_id: int = 0,
            keep: int | None = None) -> tuple[DecodeState, Array, Array]:
    """The family's prefill over the padded prompts [B, T] (a fresh state that holds up to
    ``capacity`` tokens), then the first new token. -> (state, token [B], logprob [B]).

    ``keep`` (1..context length): the decode steps slide the window, a full row keeping its
    last ``keep`` tokens (window.py); ``capacity`` must then be the family's context length."""
    b = prompts.shape[0]
    model_state, logits = family_of(cfg).prefill(params, cfg, prompts, lengths, capacity)
    history = init_history(prompts, lengths, cfg.vocab_size) if sampler is not None and sampler.uses_history else None
    m = max((len(s) for s in stop), default=0)
    state = DecodeState(model=model_state, token=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool),
                        n_out=jnp.zeros((b,), jnp.int32), window=jnp.full((b, m), -1, jnp.int32),
                        history=history, key=key)
    if keep is not None:
        state = state.replace(held=lengths.astype(jnp.int32), tail=sliding.init_tail(prompts, lengths, keep))
    return _emit(state, logits, sampler, stop, pad_id)


def decode_step(params: dict, cfg: Any, state: DecodeState, sampler: Sampler | None = None,
                stop: Stop = (), pad_id: int = 0) -> tuple[DecodeState, Array, Array]:
    """Feed each row's last token, emit the next. -> (state, token [B], logprob [B]).
    A state from ``prefill(..., keep=...)`` first refills its full rows (window.py)."""
    model_state = state.model
    if state.held is not None:  # the window slides: static, from the state's structure
        model_state, held = sliding.slide(params, cfg, model_state, state.held, state.tail)
        state = state.replace(held=held + 1, tail=sliding.push_tail(state.tail, state.token))
    logits, model_state = family_of(cfg).forward(params, state.token[:, None], cfg, model_state)
    return _emit(state.replace(model=model_state), logits[:, 0], sampler, stop, pad_id)


def decode(params: dict, cfg: Any, state: DecodeState, n_steps: int,
           sampler: Sampler | None = None, stop: Stop = (), pad_id: int = 0
           ) -> tuple[DecodeState, Array, Array]:
    """``n_steps`` decode steps in one ``lax.scan``. -> (state, tokens [B, n], logprobs [B, n])."""
    params = family_of(cfg).decode_params(params, cfg)  # outside the loop, read in place by every step

    def body(st: DecodeState, _: None) -> tuple[DecodeState, tuple[Array, Array]]:
        st, tok, logp = decode_step(params, cfg, st, sampler, stop, pad_id)
        return st, (tok, logp)

    state, (toks, logps) = jax.lax.scan(body, state, None, length=n_steps)
    return state, toks.T, logps.T


def decode_until_done(params: dict, cfg: Any, state: DecodeState, n_steps: int,
                      sampler: Sampler | None = None, stop: Stop = (), pad_id: int = 0
                      ) -> tuple[DecodeState, Array, Array]:
    """Like ``decode`` but a ``lax.while_loop`` that stops as soon as every row is done; the
    columns it did not reach hold pad_id and 0."""
    params = family_of(cfg).decode_params(params, cfg)
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
@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "stop", "early_exit", "pad_id",
                                           "keep"))
def _generate(params: dict, cfg: Any, prompts: Array, lengths: Array, key: Array,
              sampler: Sampler | None, max_new_tokens: int, stop: Stop, early_exit: bool,
              pad_id: int, keep: int | None = None) -> Generation:
    # keep (planned by generate): None when the request fits the context, else the window's
    capacity, keep = sliding.plan(cfg, prompts.shape[1] + max_new_tokens - 1, keep)
    params = family_of(cfg).decode_params(params, cfg)  # once, so the loop reads them in place
    state, tok, logp = prefill(params, cfg, prompts, lengths, key, capacity, sampler, stop, pad_id, keep)
    loop = decode_until_done if early_exit else decode
    state, toks, logps = loop(params, cfg, state, max_new_tokens - 1, sampler, stop, pad_id)
    return Generation(tokens=jnp.concatenate([tok[:, None], toks], axis=1),
                      logprobs=jnp.concatenate([logp[:, None], logps], axis=1),
                      finished=state.done, lengths=state.n_out)


def generate(params: dict, cfg: Any, prompts: Any, key: Array, *, max_new_tokens: int,
             sampler: Sampler | None = None, stop: Any = None, lengths: Any = None,
             early_exit: bool = False, pad_id: int = 0, window_keep: int | None = None) -> Generation:
    """Generate ``max_new_tokens`` tokens after each prompt row, in one compiled program.

    prompts int32 [B, T] (right-padded; ``lengths`` [B] gives the real lengths, default T);
    ``sampler`` None is greedy; ``stop`` token ids or sequences (see ``normalize_stop``) finish
    a row; ``early_exit`` swaps the scan for a while_loop that ends when all rows are done.
    Past the context, a full row's window slides to its last ``window_keep`` tokens (1..the
    context length, default the context length: nanoGPT's crop); see the module docstring.
    Compiled once per (config, B, T, max_new_tokens, stop, sampler fields in use, window_keep
    when it slides); works inside the caller's own ``jax.jit`` too (then pass static arguments
    as such).
    """
    prompts, lengths = check_inputs(cfg, prompts, lengths, max_new_tokens, sampler, slides=True)
    keep = check_window_keep(cfg, window_keep)
    # keep only when the window slides: a request that fits compiles one program for every keep
    _, keep = sliding.plan(cfg, prompts.shape[1] + max_new_tokens - 1, keep)
    return _generate(params, cfg, prompts, lengths, key, sampler, max_new_tokens,
                     normalize_stop(stop), early_exit, pad_id, keep)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity", "stop", "pad_id", "keep"))
def _prefill_jit(params, cfg, prompts, lengths, key, sampler, capacity, stop, pad_id, keep=None):
    return prefill(params, cfg, prompts, lengths, key, capacity, sampler, stop, pad_id, keep)


@functools.partial(jax.jit, static_argnames=("cfg", "n_steps", "stop", "pad_id"), donate_argnums=(2,))
def _decode_jit(params, cfg, state, sampler, n_steps, stop, pad_id):
    return decode(params, cfg, state, n_steps, sampler, stop, pad_id)


def stream(params: dict, cfg: Any, prompts: Any, key: Array, *, max_new_tokens: int,
           sampler: Sampler | None = None, stop: Any = None, lengths: Any = None,
           chunk: int = 8, pad_id: int = 0, window_keep: int | None = None
           ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Generate like ``generate`` but yield (tokens [B, n], lengths [B], done [B]) as chunks of up
    to ``chunk`` steps are ready; ``lengths`` counts each row's real tokens so far (a row that
    stops inside a chunk pads the rest of it). Every chunk runs the same compiled ``chunk``-step
    scan (the state is donated, so the cache is reused in place); it stops early once every row
    is done. Past the context the window slides as in ``generate`` (``window_keep``)."""
    prompts, lengths = check_inputs(cfg, prompts, lengths, max_new_tokens, sampler, slides=True)
    keep = check_window_keep(cfg, window_keep)
    stop = normalize_stop(stop)
    n_chunks = -(-(max_new_tokens - 1) // chunk)
    capacity, keep = sliding.plan(cfg, prompts.shape[1] + max_new_tokens - 1, keep)
    if keep is None:
        # The last chunk may run past max_new_tokens (its extra steps are dropped), so the cache
        # gets the whole chunks' room where the context allows it (a sliding one holds it all).
        capacity = prompts.shape[1] + n_chunks * chunk
        ctx = family_of(cfg).context_len(cfg)
        capacity = capacity if ctx is None else min(capacity, ctx)
    params = jax.jit(family_of(cfg).decode_params, static_argnums=1)(params, cfg)  # shared by every chunk
    state, tok, _ = _prefill_jit(params, cfg, prompts, lengths, key, sampler, capacity, stop, pad_id, keep)
    yield np.asarray(tok)[:, None], np.asarray(state.n_out), np.asarray(state.done)
    left = max_new_tokens - 1
    while left > 0 and not bool(np.all(state.done)):
        state, toks, _ = _decode_jit(params, cfg, state, sampler, chunk, stop, pad_id)
        n = min(chunk, left)
        left -= n
        toks = np.asarray(toks)[:, :n]  # steps past max_new_tokens are dropped, so are their counts
        lengths = np.minimum(np.asarray(state.n_out), max_new_tokens - left)
        yield toks, lengths, np.asarray(state.done)
