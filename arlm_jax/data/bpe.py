"""Byte-level BPE training: learn tiktoken ``mergeable_ranks`` from a user's corpus.

The result plugs straight into ``tiktoken.Encoding`` (see ``tokenizer.train_bpe``), so
training and encoding share one definition of a token: ranks 0..255 are the single bytes
and every later rank is the concatenation of two earlier tokens, in the order learned.

Why it is fast enough for ~30 MB of text in pure Python:
  * the text is split once with the same regex tiktoken uses (``regex`` is a tiktoken
    dependency, so ``\\p{L}`` etc. are available) and only *unique* words are kept with
    their counts -- the Python standard library has ~8M words but only ~100k distinct ones;
  * pair counts are kept up to date incrementally: each merge rewrites only the words that
    contain the merged pair (an index pair -> word ids), and a max-heap with lazy deletion
    finds the next most frequent pair without rescanning.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Iterable

import regex

from arlm_jax.errors import ConfigError

# GPT-2's pre-tokeniser as tiktoken writes it (possessive form, same splits as the original).
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# cl100k_base's pre-tokeniser: keeps newline+indent runs together and splits digits in 3s.
CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
              r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
PATTERNS = {"gpt2": GPT2_PAT, "cl100k": CL100K_PAT}

Pair = tuple[int, int]


def count_words(texts: Iterable[str], pat_str: str) -> Counter[bytes]:
    """UTF-8 bytes of every regex piece of ``texts`` -> how often it occurs."""
    split = regex.compile(pat_str).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    return Counter({word.encode("utf-8", "surrogatepass"): n for word, n in counts.items()})


def _pairs(word: list[int]) -> Counter[Pair]:
    return Counter(zip(word, word[1:]))


def _merge_word(word: list[int], pair: Pair, new: int) -> list[int]:
    """Replace non-overlapping occurrences of ``pair``, left to right (as tiktoken does)."""
    a, b = pair
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_ranks(word_counts: Counter[bytes], n_ranks: int) -> dict[bytes, int]:
    """Greedy BPE over counted words until there are ``n_ranks`` tokens (or nothing to merge).

    Returns ``mergeable_ranks``: ``bytes([i]) -> i`` for i < 256, then each new token -> its
    merge order. Ties between equally frequent pairs go to the smaller (left id, right id),
    so the result is deterministic. A merge whose bytes already exist (e.g. ``aa+a`` after
    ``a+aa``) reuses that token instead of taking a new rank.
    """
    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    ranks: dict[bytes, int] = {tok: i for i, tok in enumerate(vocab)}
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())

    pair_count: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for wi, word in enumerate(words):
        for pair, n in _pairs(word).items():
            pair_count[pair] = pair_count.get(pair, 0) + n * freqs[wi]
            where.setdefault(pair, set()).add(wi)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < n_ranks and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry: the live count was pushed again when it changed
        merged = vocab[pair[0]] + vocab[pair[1]]
        new = ranks.get(merged)
        if new is None:
            new = ranks[merged] = len(vocab)
            vocab.append(merged)
        changed: set[Pair] = set()
        for wi in where.pop(pair, ()):
            word = words[wi]
            before = _pairs(word)
            if pair not in before:
                continue  # the index is append-only; this word lost the pair earlier
            words[wi] = word = _merge_word(word, pair, new)
            after = _pairs(word)
            f = freqs[wi]
            for p, n in before.items():
                d = after.get(p, 0) - n
                if d:
                    pair_count[p] += d * f
                    changed.add(p)
            for p, n in after.items():
                if p not in before:
                    pair_count[p] = pair_count.get(p, 0) + n * f
                    where.setdefault(p, set()).add(wi)
                    changed.add(p)
        pair_count.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                del pair_count[p]
    return ranks


def train_ranks(texts: Iterable[str], n_ranks: int, pattern: str = "gpt2") -> tuple[dict[bytes, int], str]:
    """Split ``texts`` with ``PATTERNS[pattern]`` and learn up to ``n_ranks`` mergeable ranks.

    Returns ``(mergeable_ranks, pat_str)``; the caller builds the ``tiktoken.Encoding``.
    """
    if pattern not in PATTERNS:
        raise ConfigError(f"bpe pattern={pattern!r} is unknown; choose one of {', '.join(PATTERNS)}")
    if n_ranks < 256:
        raise ConfigError(f"bpe n_ranks={n_ranks} must be >= 256 (one token per byte)")
    pat_str = PATTERNS[pattern]
    return learn_ranks(count_words(texts, pat_str), n_ranks), pat_str
