"""The n-gram family's parameter tables: packed from an estimate (fitting) or from a list of
n-grams with probabilities (ARPA import), and unpacked back to n-grams (ARPA export). NumPy.

The params tree (M_n distinct n-grams of order n, ids as in counts.py; M_1 = V):

    orders[0]     {"alpha": [V], "gamma": [1]}             the unigrams; gamma: the uniform's share
    orders[n-1]   {"offsets": int32 [M_{n-1} + 1],         n >= 2: the words seen after context c
                   "words": int32 [M_n],                   (an (n-1)-gram id) are words[offsets[c]:
                   "alpha": [M_n],                         offsets[c+1]], sorted, with their alpha;
                   "gamma": [M_{n-1}]}                     gamma[c]: the mass c passes to order n-1
    trie[m-2]     {"offsets": int32 [M_{m-1} + 1],         m = 2..N-1: the m-grams that extend the
                   "first": int32 [M_m]}                   (m-1)-gram s to the left are the ids
                                                           offsets[s]..offsets[s+1], sorted by
                                                           their first token ``first``
    discounts     [N, 3]                                   D1, D2, D3+ per order (for reading)
"""

from __future__ import annotations

import numpy as np

from arlm_jax.errors import ConfigError

Grams = list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]  # per order: tokens [M, n], P [M], gamma [M]


def _offsets(group: np.ndarray, groups: int) -> np.ndarray:
    """int64 [groups + 1]: where each group starts in ``group`` (sorted ids)."""
    return np.concatenate([[0], np.cumsum(np.bincount(group, minlength=groups))]).astype(np.int64)


def pack(alpha1: np.ndarray, gammas: list[np.ndarray], tries: list[tuple[np.ndarray, np.ndarray]],
         predictions: list[tuple[np.ndarray, np.ndarray, np.ndarray]], discounts: np.ndarray,
         dtype=np.float32) -> tuple[dict, tuple[int, ...], tuple[int, ...]]:
    """(params, sizes, fanouts) from the unigram alpha [V], gamma per order (order 1's [1]),
    the trie per depth m = 2..N-1 as (suffix, first) [M_m] in id order, and per order n = 2..N
    the (context id, word, alpha) of each n-gram in any order."""
    vocab = len(alpha1)
    sizes = [vocab] + [len(p[0]) for p in predictions]
    orders = [{"alpha": np.asarray(alpha1, dtype), "gamma": np.asarray(gammas[0], dtype).reshape(1)}]
    fanouts = []
    for n, (prefix, word, alpha) in enumerate(predictions, start=2):
        perm = np.lexsort((word, prefix))
        per_context = np.bincount(prefix, minlength=sizes[n - 2])
        fanouts.append(int(per_context.max(initial=1)))
        orders.append({"offsets": _offsets(prefix[perm], sizes[n - 2]).astype(np.int32),
                       "words": word[perm].astype(np.int32), "alpha": np.asarray(alpha, dtype)[perm],
                       "gamma": np.asarray(gammas[n - 1], dtype)})
    trie = [{"offsets": _offsets(suffix, sizes[m - 2]).astype(np.int32), "first": first.astype(np.int32)}
            for m, (suffix, first) in enumerate(tries, start=2)]
    params = {"orders": orders, "trie": trie, "discounts": np.asarray(discounts, dtype)}
    return params, tuple(int(s) for s in sizes), tuple(fanouts)


def _parents(offsets: np.ndarray) -> np.ndarray:
    """int64 [M]: the group of each row, from a table's offsets [G + 1]."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def trie_keys(params: dict, vocab: int) -> list[np.ndarray]:
    """Per depth m = 2..N-1, the sorted int64 keys suffix_id * V + first of its ids."""
    return [_parents(np.asarray(t["offsets"], np.int64)) * vocab + np.asarray(t["first"], np.int64)
            for t in params["trie"]]


def trie_ids(keys: list[np.ndarray], grams: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids (int64 [K]) of m-grams ``grams`` [K, m], and whether each was found (bool [K]):
    the query's walk (query.py), right to left, in NumPy. m - 1 <= len(keys)."""
    grams = np.asarray(grams, np.int64)
    ids, found = grams[:, -1].copy(), np.ones(len(grams), bool)
    for depth in range(2, grams.shape[1] + 1):
        k = keys[depth - 2]
        if len(k) == 0:
            return np.zeros_like(ids), np.zeros(len(grams), bool)
        want = ids * vocab + grams[:, -depth]
        ids = np.minimum(np.searchsorted(k, want), len(k) - 1)
        found &= k[ids] == want
    return ids, found


def _lookup(params: dict, n: int, contexts: np.ndarray, words: np.ndarray, vocab: int) -> np.ndarray:
    """Rows in order n's table (n >= 2) of (context id, word) pairs that are in it."""
    o = params["orders"][n - 1]
    table = _parents(np.asarray(o["offsets"], np.int64)) * vocab + np.asarray(o["words"], np.int64)
    want = contexts * vocab + words
    pos = np.minimum(np.searchsorted(table, want), len(table) - 1)
    if not np.array_equal(table[pos], want):
        raise ConfigError(f"ngram tables: an n-gram of order {n + 1} has a suffix missing from order {n}")
    return pos


def grams_of(params: dict, vocab: int) -> Grams:
    """Every stored n-gram with its interpolated probability P_n and the gamma it passes on as a
    context of order n+1 (None at the top order): per order n, tokens int64 [M_n, n] in table
    order, P float64 [M_n], gamma float64 [M_n]."""
    orders, n_max = params["orders"], len(params["orders"])
    keys = trie_keys(params, vocab)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    by_id = [np.arange(vocab)[:, None]]  # tokens of each trie id, per depth
    for m, t in enumerate(params["trie"], start=2):
        parent = _parents(np.asarray(t["offsets"], np.int64))
        by_id.append(np.concatenate([np.asarray(t["first"], np.int64)[:, None], by_id[m - 2][parent]], axis=1))
    p1 = f64(orders[0]["alpha"]) + f64(orders[0]["gamma"])[0] / vocab
    out: Grams = [(by_id[0], p1, f64(orders[1]["gamma"]) if n_max > 1 else None)]
    for n in range(2, n_max + 1):
        o = orders[n - 1]
        ctx = _parents(np.asarray(o["offsets"], np.int64))
        words = np.asarray(o["words"], np.int64)
        tokens = np.concatenate([by_id[n - 2][ctx], words[:, None]], axis=1)
        if n == 2:
            lower = p1[words]
        else:
            shorter, _ = trie_ids(keys, tokens[:, 1:-1], vocab)
            lower = out[n - 2][1][_lookup(params, n - 1, shorter, words, vocab)]
        prob = f64(o["alpha"]) + f64(o["gamma"])[ctx] * lower
        gamma = None
        if n < n_max:
            ids, _ = trie_ids(keys, tokens, vocab)
            gamma = f64(orders[n]["gamma"])[ids]
        out.append((tokens, prob, gamma))
    return out


def from_grams(grams: Grams, vocab: int, dtype=np.float32) -> tuple[dict, tuple[int, ...], tuple[int, ...]]:
    """(params, sizes, fanouts) of a backoff model given as n-grams with probabilities and
    backoff weights (ARPA): per order n, tokens [M_n, n], P [M_n], gamma [M_n] (None at the
    top). alpha = P - gamma(context) * P_{n-1}(word | shorter context), so the query (which adds
    the orders) gives P back. Order 1 must list token ids; ids it lacks get probability 0.
    Every n-gram's context and suffix must be listed at order n-1 (ARPA files from KenLM,
    SRILM and ``arpa.write`` are)."""
    n_max = len(grams)
    tok1, p1, g1 = grams[0]
    alpha1 = np.zeros(vocab)
    alpha1[tok1[:, 0]] = p1
    gamma_of = [np.ones(vocab)]  # per depth, indexed by trie id: the gamma of that context
    if g1 is not None:
        gamma_of[0][tok1[:, 0]] = g1
    keys: list[np.ndarray] = []
    tries, predictions = [], []
    stored = [alpha1.copy()]  # per order, P of each n-gram by its position in `preds` order
    pred_keys = [np.arange(vocab)]  # per order, sorted context * V + word of its n-grams
    pred_perm = [np.arange(vocab)]
    for n in range(2, n_max + 1):
        tokens, prob, gamma = grams[n - 1]
        tokens = np.asarray(tokens, np.int64)
        ctx, ok = trie_ids(keys, tokens[:, :-1], vocab)
        if not ok.all():
            raise ConfigError(f"ARPA: the {n}-gram {tokens[~ok][0].tolist()} has a context missing from order {n - 1}")
        if n == 2:
            lower = alpha1[tokens[:, 1]]
        else:
            shorter, ok = trie_ids(keys, tokens[:, 1:-1], vocab)
            want = shorter * vocab + tokens[:, -1]
            pos = np.minimum(np.searchsorted(pred_keys[-1], want), max(len(pred_keys[-1]) - 1, 0))
            if not (ok.all() and np.array_equal(pred_keys[-1][pos], want)):
                raise ConfigError(f"ARPA: a {n}-gram's suffix is missing from order {n - 1}")
            lower = stored[-1][pred_perm[-1][pos]]
        alpha = np.asarray(prob, np.float64) - gamma_of[n - 2][ctx] * lower
        predictions.append((ctx, tokens[:, -1], alpha))
        perm = np.argsort(ctx * vocab + tokens[:, -1], kind="stable")
        pred_keys.append((ctx * vocab + tokens[:, -1])[perm])
        pred_perm.append(perm)
        stored.append(np.asarray(prob, np.float64))
        if n < n_max:  # this order's n-grams are contexts of the next: give them trie ids
            suffix, ok = trie_ids(keys, tokens[:, 1:], vocab)
            if not ok.all():
                raise ConfigError(f"ARPA: the {n}-gram {tokens[~ok][0].tolist()} has a suffix missing from "
                                  f"order {n - 1}")
            order = np.lexsort((tokens[:, 0], suffix))
            tries.append((suffix[order], tokens[order, 0]))
            keys.append(suffix[order] * vocab + tokens[order, 0])
            g = np.ones(len(tokens)) if gamma is None else np.asarray(gamma, np.float64)
            gamma_of.append(g[order])
    gammas = [np.zeros(1)] + gamma_of[:n_max - 1]
    return pack(alpha1, gammas, tries, predictions, np.zeros((n_max, 3)), dtype)
