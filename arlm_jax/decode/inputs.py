"""Decoding inputs, checked once at the boundary: prompts, lengths, stop sequences, room, window.

Every decode entry point (generate, stream, beam search, speculative decoding) calls
``check_inputs`` before compiling anything, so bad input is a one-line ConfigError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arlm_jax.errors import ConfigError
from arlm_jax.models import family_of

Stop = tuple[tuple[int, ...], ...]


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


def check_room(cfg: Any, prompt_len: int, max_new_tokens: int, *, slides: bool = False) -> int:
    """Validate that a padded prompt fits the model's context and, unless the caller ``slides``
    the window past it (generate and stream do, see window.py), its new tokens too; -> the
    number of tokens the decoding state would hold without sliding.

    The last new token is never fed back, so the state holds prompt_len + max_new_tokens - 1.
    A family without a context length (``Family.context_len`` None) always has room.
    """
    ctx = family_of(cfg).context_len(cfg)
    capacity = prompt_len + max_new_tokens - 1
    if ctx is None:
        return capacity
    if prompt_len > ctx:
        raise ConfigError(f"prompt: {prompt_len} tokens (padded) is longer than the context, "
                          f"model.max_len={ctx}")
    if capacity > ctx and not slides:
        raise ConfigError(f"max_new_tokens={max_new_tokens} after a {prompt_len}-token (padded) prompt "
                          f"exceeds the context, model.max_len={ctx}; allowed at most "
                          f"{ctx - prompt_len + 1} (only generate and stream slide the window past "
                          f"the context)")
    return capacity


def check_window_keep(cfg: Any, window_keep: Any) -> int | None:
    """Validate ``window_keep``, the tokens a full row keeps when its window slides (window.py);
    -> it, defaulting to the context length (nanoGPT's crop), or None for an unbounded family,
    which never slides (any integer >= 1 is accepted and unused)."""
    ctx = family_of(cfg).context_len(cfg)
    if window_keep is None:
        return ctx
    is_int = isinstance(window_keep, (int, np.integer)) and not isinstance(window_keep, bool)
    if not (is_int and 1 <= window_keep and (ctx is None or window_keep <= ctx)):
        allowed = "an integer >= 1" if ctx is None else f"an integer in 1..{ctx} (the context length)"
        raise ConfigError(f"window_keep={window_keep!r} must be {allowed}")
    return None if ctx is None else int(window_keep)


def check_inputs(cfg: Any, prompts: Any, lengths: Any, max_new_tokens: int,
                 sampler: Any, *, slides: bool = False) -> tuple[Any, Any]:
    """Validate prompts [B, T], lengths [B] and the settings; -> (prompts, lengths) as int32.
    ``slides``: the caller slides the window past the context (see ``check_room``).

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
    check_room(cfg, prompts.shape[1], max_new_tokens, slides=slides)
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


