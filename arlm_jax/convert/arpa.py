"""ARPA files, the text format of backoff n-gram models that KenLM and SRILM read and write.

    write(path, params, cfg)      an ``ngram`` model (interpolated Kneser-Ney) -> ARPA
    read(path, vocab_size=None)   ARPA -> (params, cfg) of an ``ngram`` model

Words are token ids written in decimal ("104 101 108"), so a sentence KenLM scores is a line of
ids. Each line holds log10 P(word | context), the n-gram and, below the top order, the log10
backoff weight of the n-gram as a context. An interpolated model is exactly such a backoff
model: P stored for every n-gram seen is the whole interpolated sum, and the backoff weight of
a context is its gamma (tables.py), so P(w | c) = P(w | c) if stored, else bow(c) * P(w | c').
``<s>``, ``</s>`` and ``<unk>`` are written at log10 P = -99 (never predicted) because KenLM
expects them; reading drops them from order 1 and refuses them above it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arlm_jax.errors import ConfigError, ResourceError
from arlm_jax.files import atomic_write_text
from arlm_jax.models.ngram import tables
from arlm_jax.models.ngram.config import NGramConfig

MARKERS = ("<s>", "</s>", "<unk>")
FLOOR = -99.0  # log10 of "never": what KenLM writes for <s>


def _log10(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log10(np.asarray(x, np.float64)), FLOOR)


def to_text(params: dict, cfg: NGramConfig) -> str:
    """The ARPA text of an interpolated ``ngram`` model (params as NumPy or JAX arrays)."""
    if not cfg.interpolated:
        raise ConfigError(f"ARPA export: model.smoothing={cfg.smoothing!r} is not a backoff model; "
                          f"export modified_kn or kn")
    grams = tables.grams_of(_numpy(params), cfg.vocab_size)
    top = len(grams)
    lines = ["", "\\data\\"] + [f"ngram {n}={len(g[0]) + (len(MARKERS) if n == 1 else 0)}"
                                for n, g in enumerate(grams, start=1)]
    for n, (tokens, prob, gamma) in enumerate(grams, start=1):
        lines += ["", f"\\{n}-grams:"]
        if n == 1:
            lines += [f"{FLOOR:.1f}\t{m}" + ("\t0" if top > 1 else "") for m in MARKERS]
        words = [" ".join(map(str, row)) for row in tokens.tolist()]
        logp = [repr(float(x)) for x in _log10(prob)]
        if gamma is None:
            lines += [f"{p}\t{w}" for p, w in zip(logp, words)]
        else:
            bow = [repr(float(x)) for x in _log10(gamma)]
            lines += [f"{p}\t{w}\t{b}" for p, w, b in zip(logp, words, bow)]
    return "\n".join(lines + ["", "\\end\\", ""])


def write(path: str | Path, params: dict, cfg: NGramConfig) -> Path:
    """Write the ARPA file (atomically: a failed write leaves no partial file)."""
    path = Path(path)
    atomic_write_text(path, to_text(params, cfg))
    return path


def _numpy(params: dict) -> dict:
    import jax
    return jax.tree.map(np.asarray, params)


def parse(text: str, where: str = "ARPA") -> tables.Grams:
    """Per order n: (tokens int64 [M_n, n], P float64 [M_n], backoff weight float64 [M_n] or None
    at the top order), from ARPA text whose words are decimal token ids."""
    lines = text.splitlines()
    counts: dict[int, int] = {}
    i = 0
    while i < len(lines) and lines[i].strip() != "\\data\\":
        i += 1
    if i == len(lines):
        raise ConfigError(f"{where}: no \\data\\ section; not an ARPA file")
    i += 1
    while i < len(lines) and lines[i].startswith("ngram "):
        n, _, m = lines[i][6:].partition("=")
        counts[int(n)] = int(m)
        i += 1
    if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
        raise ConfigError(f"{where}: the \\data\\ section lists orders {sorted(counts)}; expected 1..N")
    top = len(counts)
    out: tables.Grams = []
    for n in range(1, top + 1):
        while i < len(lines) and lines[i].strip() != f"\\{n}-grams:":
            i += 1
        if i == len(lines):
            raise ConfigError(f"{where}: the \\{n}-grams: section is missing")
        body = lines[i + 1:i + 1 + counts[n]]
        i += 1 + counts[n]
        toks, probs, bows = [], [], []
        for k, line in enumerate(body):
            parts = line.split()
            if len(parts) not in (n + 1, n + 2):
                raise ConfigError(f"{where}: line {k + 1} of \\{n}-grams: has {len(parts)} fields, not {n + 1} or "
                                  f"{n + 2}: {line[:60]!r}")
            words = parts[1:n + 1]
            if any(w in MARKERS for w in words):
                if n == 1:
                    continue  # never predicted by our models
                raise ConfigError(f"{where}: the {n}-gram {' '.join(words)!r} holds a sentence marker; only "
                                  f"token-id n-grams (written by arlm) can be read")
            try:
                toks.append([int(w) for w in words])
            except ValueError:
                raise ConfigError(f"{where}: the word {next(w for w in words if not w.isdigit())!r} is not a "
                                  f"token id; ARPA files read here have decimal token ids as words") from None
            probs.append(float(parts[0]))
            bows.append(float(parts[n + 1]) if len(parts) == n + 2 else 0.0)
        out.append((np.asarray(toks, np.int64).reshape(-1, n), 10.0 ** np.asarray(probs),
                    10.0 ** np.asarray(bows) if n < top else None))
    return out


def read(path: str | Path, vocab_size: int | None = None, dtype=np.float32) -> tuple[dict, NGramConfig]:
    """(params, cfg) of the ARPA file's model; ``vocab_size`` defaults to the largest id + 1
    (ids the file lacks get probability 0)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ResourceError(f"ARPA: cannot read {str(path)!r} ({err.strerror or err})") from None
    grams = parse(text, f"ARPA {str(path)!r}")
    largest = int(grams[0][0].max(initial=-1))
    vocab = vocab_size or largest + 1
    if largest >= vocab:
        raise ConfigError(f"ARPA {str(path)!r}: token id {largest} is >= vocab_size={vocab}")
    params, sizes, fanouts = tables.from_grams(grams, vocab, dtype)
    cfg = NGramConfig(vocab_size=vocab, order=len(grams), smoothing="modified_kn", sizes=sizes, fanouts=fanouts)
    return params, cfg.validate()
