"""Counting n-grams and estimating smoothed probabilities, vectorised with NumPy (float64).

Every n-gram gets an integer id per order. Order 1's ids are the token ids. An n-gram of order
n >= 2 is packed into one int64 key, ``id(its last n-1 tokens) * V + its first token``, and
the distinct keys, sorted, are the ids. So ids are sorted by (suffix, first token): the
n-grams that extend one (n-1)-gram to the left are contiguous. That is a trie over contexts
read right to left, which the query walks (query.py); the same ids index every table.

    count_ngrams(tokens, order, V) -> [Level]        distinct n-grams of orders 1..N
    estimate(levels, cfg) -> Estimate                alpha, gamma and the discounts per order

The smoothed distribution of order n after a context c (its last n-1 tokens) is

    P_n(w | c) = alpha_n(c, w) + gamma_n(c) * P_{n-1}(w | c')       c' = c without its first token
    P_0(w) = 1 / V                                                  the uniform bottom

Interpolated Kneser-Ney (Chen and Goodman 1998, as KenLM estimates it):
    a(c, w)    the count of (c, w) at the top order; at lower orders its continuation count,
               the distinct words seen before it, N1+(. c w) (+1 for the n-gram that starts the
               stream: nothing precedes it, KenLM's <s>)
    alpha_n    max(a - D_n(a), 0) / S(c)                 S(c) = sum over w of a(c, w)
    gamma_n    (D1 N1(c) + D2 N2(c) + D3+ N3+(c)) / S(c)  N_r(c): words after c with a = r (r >= 3)
               1 where c was never followed by anything (all the mass passes to order n-1)
    D_n        modified KN: Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2,
               D3+ = 3 - 4Y n4/n3 from the counts-of-counts n_r of a at that order;
               plain KN: one D = Y for every count.
Add-k (Lidstone) at the top order: alpha = c(c, w) / (S(c) + kV), gamma = kV / (S(c) + kV), with
raw counts at every order (a row near the stream's start uses the longest order it can).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arlm_jax.errors import ConfigError

KENLM_FALLBACK = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback


@dataclass(frozen=True)
class Level:
    """The distinct n-grams of one order n, in id order (sorted by (suffix id, first token)).
    All arrays are int64 [M_n]; order 1 has M_1 = V rows, one per token id (seen or not)."""

    first: np.ndarray  # the first token
    suffix: np.ndarray  # id of its last n-1 tokens at order n-1 (order 1: 0)
    prefix: np.ndarray  # id of its first n-1 tokens at order n-1: the context (order 1: 0)
    word: np.ndarray  # the last token: the word predicted after the context
    count: np.ndarray  # occurrences in the stream
    at_start: np.ndarray  # bool: it is the n-gram at position 0

    @property
    def size(self) -> int:
        return len(self.first)


@dataclass(frozen=True)
class Estimate:
    alpha: list[np.ndarray]  # float64 [M_n] per order: the discounted mass of (context, word)
    gamma: list[np.ndarray]  # float64 [M_{n-1}] per order (order 1: [1]): mass left per context
    discounts: np.ndarray  # float64 [N, 3]: D1, D2, D3+ per order (add-k: zeros)
    adjusted: list[np.ndarray]  # int64 [M_n] per order: the counts the formulas used


def count_ngrams(tokens: np.ndarray, order: int, vocab: int) -> list[Level]:
    """The distinct n-grams of orders 1..``order`` in ``tokens`` (int [L], ids < ``vocab``)."""
    tok = np.asarray(tokens).astype(np.int64, copy=False)
    if len(tok) < order:
        raise ConfigError(f"model.order={order} needs at least {order} training tokens; the corpus has {len(tok)}")
    arange = np.arange(vocab, dtype=np.int64)
    zeros = np.zeros(vocab, np.int64)
    at_start = np.zeros(vocab, bool)
    at_start[tok[0]] = True
    levels = [Level(first=arange, suffix=zeros, prefix=zeros, word=arange,
                    count=np.bincount(tok, minlength=vocab).astype(np.int64), at_start=at_start)]
    ids = tok  # [L - n + 1]: the id of the n-gram at each position, for the order just built
    for n in range(2, order + 1):
        keys = ids[1:] * vocab + tok[:len(tok) - n + 1]  # [L - n + 1]: (id of tok[i+1:i+n], tok[i])
        last = n == order
        out = np.unique(keys, return_index=True, return_inverse=not last, return_counts=True)
        uniq, rep, counts = out[0], out[1], out[-1]
        start = np.zeros(len(uniq), bool)
        start[np.searchsorted(uniq, keys[0])] = True
        levels.append(Level(first=uniq % vocab, suffix=uniq // vocab, prefix=ids[rep], word=tok[rep + n - 1],
                            count=counts.astype(np.int64), at_start=start))
        if not last:
            ids = out[2].reshape(-1)
        del keys
    return levels


def adjusted_counts(levels: list[Level], smoothing: str) -> list[np.ndarray]:
    """The counts the estimate uses: raw at the top order (and everywhere for add-k); at lower
    orders of Kneser-Ney the continuation counts."""
    if smoothing == "add_k":
        return [lv.count for lv in levels]
    out = []
    for n, lv in enumerate(levels[:-1]):
        higher = levels[n + 1]
        out.append(np.bincount(higher.suffix, minlength=lv.size).astype(np.int64) + lv.at_start)
    return out + [levels[-1].count]


def counts_of_counts(adjusted: np.ndarray, up_to: int = 4) -> np.ndarray:
    """int64 [up_to]: n_1..n_up_to, how many n-grams have each adjusted count."""
    return np.bincount(np.minimum(adjusted, up_to + 1), minlength=up_to + 2)[1:up_to + 1].astype(np.int64)


def discounts(adjusted: np.ndarray, smoothing: str, n: int, fallback: bool) -> tuple[float, float, float]:
    """(D1, D2, D3+) of order ``n`` from its counts-of-counts (plain KN: one D three times).
    Where they cannot be estimated (a zero count-of-count, or a discount outside [0, r]):
    KenLM's fallback when ``fallback``, else a one-line ConfigError naming the order."""
    n1, n2, n3, n4 = (float(x) for x in counts_of_counts(adjusted))
    if smoothing == "kn":
        d = (n1 / (n1 + 2 * n2),) * 3 if n1 > 0 and n2 > 0 else None
    elif n1 > 0 and n2 > 0 and n3 > 0 and n4 > 0:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    else:
        d = None
    if d is not None and all(0.0 <= x <= r for r, x in enumerate(d, start=1)):
        return d
    if fallback:
        return KENLM_FALLBACK if smoothing == "modified_kn" else (KENLM_FALLBACK[0],) * 3
    raise ConfigError(f"model.smoothing={smoothing!r}: the discounts of order {n} cannot be estimated from its "
                      f"counts-of-counts n1..n4={[int(x) for x in (n1, n2, n3, n4)]} (too little data); "
                      f"set model.discount_fallback true for KenLM's fallback, a lower model.order, or more data")


def estimate(levels: list[Level], smoothing: str, add_k: float = 1.0, fallback: bool = True) -> Estimate:
    """alpha, gamma and the discounts of every order (see the module docstring)."""
    vocab = levels[0].size
    adjusted = adjusted_counts(levels, smoothing)
    alphas, gammas, ds = [], [], np.zeros((len(levels), 3))
    for n, (lv, a) in enumerate(zip(levels, adjusted), start=1):
        contexts = 1 if n == 1 else levels[n - 2].size
        s = np.bincount(lv.prefix, weights=a, minlength=contexts)  # [M_{n-1}] S(c)
        if smoothing == "add_k":
            denom = s + add_k * vocab
            alphas.append(a / denom[lv.prefix])
            gammas.append(add_k * vocab / denom)
            continue
        ds[n - 1] = discounts(a, smoothing, n, fallback)
        d_of = np.concatenate([[0.0], ds[n - 1]])[np.minimum(a, 3)]  # [M_n] D(a), 0 where a = 0
        safe = np.where(s > 0, s, 1.0)
        alphas.append(np.maximum(a - d_of, 0.0) / safe[lv.prefix])
        left = np.bincount(lv.prefix, weights=np.minimum(d_of, a), minlength=contexts)
        gammas.append(np.where(s > 0, left / safe, 1.0))
    return Estimate(alpha=alphas, gamma=gammas, discounts=ds, adjusted=adjusted)
