"""Deterministic batches of windows from a split's tokens (a memmap of the token cache,
tokens.py): ``get_batch`` draws training windows keyed by ``(seed, step)``, so a resumed run
replays exactly its batches; ``eval_batches`` gives the same evenly spaced validation windows at
every evaluation. Both can gather only some rows of the global batch (one process's share)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from arlm_jax.errors import ConfigError


def check_window(n_tokens: int, seq_len: int, split: str = "train") -> None:
    """ConfigError if a split of ``n_tokens`` cannot hold one window of ``seq_len + 1``."""
    if n_tokens < seq_len + 1:
        hint = "smaller" if split == "train" else "larger"
        raise ConfigError(
            f"data: the {split} split has {n_tokens} tokens, fewer than one window of "
            f"seq_len+1={seq_len + 1}; use a larger corpus, a smaller train.seq_len or a "
            f"{hint} data.val_fraction")


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """[len(starts), seq_len + 1] int32 windows of ``tokens`` at ``starts``."""
    return np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int, *,
              rows: slice | None = None, split: str = "train") -> np.ndarray:
    """Training windows: int32 [B, seq_len + 1]; inputs ``[:, :-1]``, targets ``[:, 1:]``.

    Window starts are uniform in [0, len(tokens) - seq_len - 1], drawn from
    ``np.random.default_rng((seed, step))`` (both >= 0): a pure function of (seed, step), so a
    resumed run replays its batches. ``rows`` selects rows of that global batch (every process draws
    all B starts and gathers only its rows). ``split`` only names the split in errors.
    """
    check_window(len(tokens), seq_len, split)
    starts = np.random.default_rng((seed, step)).integers(0, len(tokens) - seq_len, size=batch_size)
    return _gather(tokens, starts[rows] if rows is not None else starts, seq_len)


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int, *,
                 rows: slice | None = None, split: str = "validation") -> Iterator[np.ndarray]:
    """``n_batches`` evaluation batches, int32 [B, seq_len + 1] each (``rows`` as in get_batch).

    The ``batch_size * n_batches`` window starts are evenly spaced from the first to the last
    possible start (no randomness), so every evaluation scores the same windows, spread over
    the whole split; they overlap only when the split holds fewer windows than asked for.
    """
    check_window(len(tokens), seq_len, split)  # here, not at the first next()
    starts = np.linspace(0, len(tokens) - seq_len - 1, batch_size * n_batches).round()
    starts = starts.astype(np.int64).reshape(n_batches, batch_size)
    return (_gather(tokens, s[rows] if rows is not None else s, seq_len) for s in starts)
