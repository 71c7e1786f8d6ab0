"""The ``ngram`` family's config, validated once, and its presets.

Most fields are chosen by the user (order, smoothing). Two are set by fitting and by ARPA
import, because the parameter tables' shapes depend on the corpus: ``sizes`` (how many distinct
n-grams of each order were seen) and ``fanouts`` (the most words seen after any one context of
each order). A config with them empty is an unfitted model: uniform over the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from arlm_jax.errors import ConfigError, check_choice, check_positive

SMOOTHINGS = ("modified_kn", "kn", "add_k")
DTYPES = ("float32", "bfloat16")
INTERPOLATED = ("modified_kn", "kn")  # the smoothings that mix every order (and export to ARPA)


@dataclass(frozen=True, kw_only=True)
class NGramConfig:
    """An n-gram LM (``--model.family ngram``), counted from the training tokens by ``arlm train``.

    Axis legend: Q queries (contexts), N order, V vocabulary, M_n distinct n-grams of order n,
    F_n the most words seen after one context of order n.
    """

    family: str = "ngram"
    """the model family (--model.family): ngram"""
    vocab_size: int = 257
    """token ids; `arlm train` sets it to the tokenizer's unless given"""
    order: int = 5
    """N: each token is predicted from the N-1 before it (1: unigram)"""
    smoothing: str = "modified_kn"
    """modified_kn (interpolated, discounts D1, D2, D3+ per order) | kn (interpolated, one discount) | add_k"""
    add_k: float = 1.0
    """add_k: the pseudo-count added to every word after a context of order N (1: Laplace)"""
    discount_fallback: bool = True
    """when an order's counts-of-counts cannot give discounts (a zero count-of-count, small data):
    use KenLM's fallback (0.5, 1, 1.5); false: a one-line error naming the order"""
    history: int = 16
    """tokens a decoding state keeps beyond the N-1 it reads, for rollback (speculative k <= history)"""
    dtype: str = "float32"
    """compute dtype of the queries (float32 or bfloat16); tables stay float32, logits float32"""
    sizes: tuple[int, ...] = ()
    """set by fitting: distinct n-grams of orders 1..N (order 1: vocab_size); () = unfitted"""
    fanouts: tuple[int, ...] = ()
    """set by fitting: the most words after one context, for orders 2..N; () = unfitted"""

    def __post_init__(self) -> None:  # a config read back from JSON holds lists
        for name in ("sizes", "fanouts"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    @property
    def interpolated(self) -> bool:
        return self.smoothing in INTERPOLATED

    def table_sizes(self) -> tuple[int, ...]:
        """M_1..M_N of the parameter tables: ``sizes``, or an unfitted model's (V, 1, ..., 1)."""
        return self.sizes or (self.vocab_size,) + (1,) * (self.order - 1)

    def table_fanouts(self) -> tuple[int, ...]:
        """F_2..F_N: ``fanouts``, or an unfitted model's (1, ..., 1)."""
        return self.fanouts or (1,) * (self.order - 1)

    def validate(self) -> "NGramConfig":
        p = "model"
        check_choice(self, "family", ("ngram",), p)
        for name in ("vocab_size", "order", "history"):
            check_positive(self, name, p)
        check_choice(self, "smoothing", SMOOTHINGS, p)
        check_choice(self, "dtype", DTYPES, p)
        if self.smoothing == "add_k":
            check_positive(self, "add_k", p)
        if self.sizes or self.fanouts:
            if len(self.sizes) != self.order or len(self.fanouts) != self.order - 1:
                raise ConfigError(f"model.sizes has {len(self.sizes)} entries and model.fanouts "
                                  f"{len(self.fanouts)}; a fitted model of order {self.order} has "
                                  f"{self.order} and {self.order - 1} (they are set by fitting: leave both empty)")
            if self.sizes[0] != self.vocab_size or min(self.sizes) < 1 or min(self.fanouts, default=1) < 1:
                raise ConfigError(f"model.sizes={list(self.sizes)} must start with model.vocab_size="
                                  f"{self.vocab_size} and, like model.fanouts, hold positive counts")
        return self


def presets() -> dict:
    """``tiny`` (tests: a trigram over 64 ids), ``demo`` (a byte 5-gram), ``7gram``."""
    return {"tiny": lambda: NGramConfig(vocab_size=64, order=3),
            "demo": lambda: NGramConfig(),
            "7gram": lambda: NGramConfig(order=7)}
