"""A slow pure-Python twin of the n-gram estimate (dicts of tuples, one n-gram at a time),
written from Chen and Goodman (1998) and KenLM's conventions, for the tests of the ``ngram`` family.
"""

from __future__ import annotations

from collections import Counter


class Reference:
    """Interpolated modified / plain Kneser-Ney or add-k, of ``order`` over ids < ``vocab``."""

    def __init__(self, tokens: list[int], order: int, vocab: int, smoothing: str = "modified_kn",
                 k: float = 1.0):
        self.order, self.vocab, self.smoothing, self.k = order, vocab, smoothing, k
        toks = [int(t) for t in tokens]
        self.raw = {n: Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)) for n in range(1, order + 1)}
        self.adjusted = {order: dict(self.raw[order])}
        for n in range(1, order):
            if smoothing == "add_k":
                self.adjusted[n] = dict(self.raw[n])
                continue
            left: dict[tuple, set] = {}
            for g in self.raw[n + 1]:
                left.setdefault(g[1:], set()).add(g[0])
            self.adjusted[n] = {g: len(left.get(g, ())) + (g == tuple(toks[:n])) for g in self.raw[n]}
        self.discount = {n: self._discounts(n) for n in range(1, order + 1)}
        self.total: dict[int, Counter] = {}  # S(c) per order
        self.left_mass: dict[int, Counter] = {}  # sum over w of D(a(c, w)) per order
        for n in range(1, order + 1):
            s, d = Counter(), Counter()
            for g, a in self.adjusted[n].items():
                s[g[:-1]] += a
                d[g[:-1]] += min(self.d(n, a), a)
            self.total[n], self.left_mass[n] = s, d

    def _discounts(self, n: int) -> tuple[float, float, float]:
        if self.smoothing == "add_k":
            return (0.0, 0.0, 0.0)
        cc = Counter(self.adjusted[n].values())
        n1, n2, n3, n4 = (cc[r] for r in (1, 2, 3, 4))
        if self.smoothing == "kn":
            if n1 and n2:
                y = n1 / (n1 + 2 * n2)
                if y <= 1:
                    return (y, y, y)
            return (0.5, 0.5, 0.5)  # KenLM's fallback
        if n1 and n2 and n3 and n4:
            y = n1 / (n1 + 2 * n2)
            d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
            if all(0 <= x <= r for r, x in zip((1, 2, 3), d)):
                return d
        return (0.5, 1.0, 1.5)

    def d(self, n: int, a: int) -> float:
        return 0.0 if a == 0 else self.discount[n][min(a, 3) - 1]

    def prob(self, context: tuple, w: int) -> float:
        """P(w | context): the last order-1 tokens of ``context`` (fewer at a text's start)."""
        context = tuple(context)[max(len(context) - (self.order - 1), 0):]
        if self.smoothing == "add_k":
            n = len(context) + 1
            s = self.total[n].get(context, 0)
            if s == 0:
                return 1.0 / self.vocab
            return (self.raw[n].get(context + (w,), 0) + self.k) / (s + self.k * self.vocab)
        return self._interpolated(context, w)

    def _interpolated(self, context: tuple, w: int) -> float:
        n = len(context) + 1
        lower = 1.0 / self.vocab if n == 1 else self._interpolated(context[1:], w)
        s = self.total[n].get(context, 0)
        if s == 0:  # a context never followed by anything passes everything down
            return lower
        a = self.adjusted[n].get(context + (w,), 0)
        alpha = max(a - self.d(n, a), 0.0) / s
        return alpha + self.left_mass[n][context] / s * lower
