"""Tokenizer tests: round trips, special tokens, BPE training, the .tiktoken file, errors.

No test touches the network: named encodings are exercised only on their error paths,
with tiktoken's downloader replaced by one that fails at once.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import regex
import tiktoken
import tiktoken.load
import tiktoken.registry
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm_jax.data import bpe, tokenizer as tok
from arlm_jax.errors import ConfigError

EOT = "<|endoftext|>"
_WORDS = ("def class return self value index result import from for while if else elif try except "
          "finally with lambda yield None True False print len range list dict tuple str int").split()


def _code_like(n_lines: int, seed: int) -> str:
    """Deterministic Python-ish text: the in-test corpus for BPE training."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        indent = " " * 4 * rng.randint(0, 3)
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 6))]
        lines.append(f"{indent}{' '.join(words)}({rng.randint(0, 999)}):  # {rng.choice(_WORDS)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def trained() -> tiktoken.Encoding:
    return tok.train_bpe([_code_like(150, seed=s) for s in range(3)], 400)


# Arbitrary unicode without lone surrogates (those are not UTF-8, so cannot round trip).
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_byte_round_trip(s):
    enc = tok.byte_encoding()
    ids = tok.encode(enc, s)
    assert len(ids) == len(s.encode("utf-8"))
    assert tok.decode(enc, ids) == s


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_trained_round_trip(trained, s):
    assert tok.decode(trained, tok.encode(trained, s)) == s


def test_byte_encoding_layout():
    enc = tok.byte_encoding()
    assert enc.name == "byte" and enc.n_vocab == 257 and tok.eot_id(enc) == 256
    assert [enc.decode_single_token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]


def test_trained_layout(trained):
    ranks = trained._mergeable_ranks
    assert {i: b for b, i in ranks.items() if i < 256} == {i: bytes([i]) for i in range(256)}
    assert sorted(ranks.values()) == list(range(len(ranks)))  # contiguous, no gaps
    assert trained.n_vocab == 400 and tok.eot_id(trained) == 399
    # every merged token is the concatenation of two tokens with smaller ranks
    by_rank = sorted(ranks, key=ranks.get)
    for rank, token in enumerate(by_rank[256:], 256):
        assert any(token[:k] in ranks and token[k:] in ranks
                   and max(ranks[token[:k]], ranks[token[k:]]) < rank for k in range(1, len(token)))


@pytest.mark.parametrize("name", ["byte", "trained"])
def test_special_token(trained, name):
    enc = tok.byte_encoding() if name == "byte" else trained
    eot = tok.eot_id(enc)
    assert enc.encode(EOT, allowed_special={EOT}) == [eot]
    assert enc.decode(enc.encode(f"a{EOT}b", allowed_special="all")) == f"a{EOT}b"
    plain = tok.encode(enc, f"user text {EOT} more")
    assert eot not in plain and len(plain) > 1
    assert tok.decode(enc, plain) == f"user text {EOT} more"
    assert tok.encode_batch(enc, [f"x{EOT}", "y"]) == [tok.encode(enc, f"x{EOT}"), tok.encode(enc, "y")]


def test_bpe_compresses_held_out_text(trained):
    held_out = _code_like(200, seed=99)
    ratio = len(tok.encode(trained, held_out)) / len(held_out.encode())
    assert ratio < 0.5, ratio  # tokens per byte; the byte tokenizer is 1.0


@pytest.fixture(scope="module")
def trained_cl100k() -> tiktoken.Encoding:
    return tok.train_bpe([_code_like(100, seed=1)], 300, pattern="cl100k")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab Z9'\n\t\r.:(#é漢 ", max_size=60) | TEXT)
def test_tiktoken_splits_like_the_trainer(trained, trained_cl100k, text):
    """tiktoken (Rust fancy-regex) and the trainer (Python ``regex``) split text alike: encoding
    piece by piece, as the trainer saw words, gives the same ids as encoding the whole."""
    for enc in (trained, trained_cl100k):
        pieces = regex.findall(enc._pat_str, text)
        assert "".join(pieces) == text
        assert tok.encode(enc, text) == [i for p in pieces for i in tok.encode(enc, p)]


def test_cl100k_pattern_trains(trained_cl100k):
    enc = trained_cl100k
    assert enc._pat_str == bpe.CL100K_PAT and enc.n_vocab == 300
    assert tok.decode(enc, tok.encode(enc, "x = 12345\n")) == "x = 12345\n"


def test_training_is_deterministic():
    texts = [_code_like(100, seed=3)]
    a, b = tok.train_bpe(texts, 320), tok.train_bpe(list(texts), 320)
    assert a._mergeable_ranks == b._mergeable_ranks


def test_vocab_stops_when_corpus_is_exhausted():
    enc = tok.train_bpe(["ab ab ab"], 1000)  # only a handful of merges exist
    assert enc.n_vocab < 1000 and tok.eot_id(enc) == enc.n_vocab - 1
    assert tok.encode(enc, "ab") == [enc.encode_single_token(b"ab")]


def _naive_ranks(word_counts: dict[bytes, int], n_ranks: int) -> dict[bytes, int]:
    """Slow twin of ``bpe.learn_ranks``: recount every pair before every merge."""
    vocab = [bytes([i]) for i in range(256)]
    words = [(list(w), c) for w, c in word_counts.items()]
    while len(vocab) < n_ranks:
        counts: dict = {}
        for w, c in words:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + c
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))
        merged = vocab[a] + vocab[b]
        new = vocab.index(merged) if merged in vocab else len(vocab)
        vocab += [merged] if new == len(vocab) else []
        words = [(bpe._merge_word(w, (a, b), new), c) for w, c in words]
    return {t: i for i, t in enumerate(vocab)}


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.binary(min_size=1, max_size=12).map(lambda b: bytes(97 + x % 3 for x in b)),
                       st.integers(1, 20), min_size=1, max_size=12))
def test_incremental_trainer_matches_naive(word_counts):
    assert bpe.learn_ranks(word_counts, 290) == _naive_ranks(word_counts, 290)


def test_save_load_identical(tmp_path, trained, monkeypatch):
    path = tmp_path / "vocab.tiktoken"
    tok.save_tiktoken(trained, path)
    loaded = tok.load_tokenizer(str(path))
    assert loaded.n_vocab == trained.n_vocab and loaded.name == trained.name
    assert loaded._mergeable_ranks == trained._mergeable_ranks
    assert loaded._special_tokens == trained._special_tokens
    text = _code_like(30, seed=5) + EOT
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert tok.tokenizer_identity(loaded) == tok.tokenizer_identity(trained)
    # the file is tiktoken's own format
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == trained._mergeable_ranks


def test_load_rewritten_file_is_not_stale(tmp_path):
    path = tmp_path / "v.tiktoken"
    tok.save_tiktoken(tok.train_bpe(["hello hello"], 300), path)
    first = tok.load_tiktoken_file(path)
    tok.save_tiktoken(tok.train_bpe(["world world"], 300), path)
    assert tok.load_tiktoken_file(path)._mergeable_ranks != first._mergeable_ranks


def test_save_bare_ranks(tmp_path, trained):
    path = tmp_path / "ranks.tiktoken"
    tok.save_tiktoken(dict(trained._mergeable_ranks), path)
    enc = tok.load_tiktoken_file(path)
    assert enc.name == "ranks" and enc._mergeable_ranks == trained._mergeable_ranks
    assert tok.eot_id(enc) == tok.eot_id(trained)


def test_load_without_sidecar(tmp_path, trained):
    path = tmp_path / "bare.tiktoken"
    tok.save_tiktoken(trained, path)
    os.remove(f"{path}.json")
    enc = tok.load_tiktoken_file(path)
    assert enc.name == "bare" and tok.eot_id(enc) == len(trained._mergeable_ranks)


def test_unknown_spec():
    with pytest.raises(ConfigError) as err:
        tok.load_tokenizer("gpt5")
    assert str(err.value) == ("data.tokenizer='gpt5' is unknown; choose byte, gpt2, cl100k_base, "
                              "o200k_base or a path to a .tiktoken file")


def test_missing_and_malformed_files(tmp_path):
    missing = str(tmp_path / "nope.tiktoken")
    with pytest.raises(ConfigError, match="nope.tiktoken") as err:
        tok.load_tokenizer(missing)
    assert "\n" not in str(err.value)
    junk = tmp_path / "junk.txt"
    junk.write_text("not a rank file at all\n")
    with pytest.raises(ConfigError, match="junk.txt.*not a .tiktoken file"):
        tok.load_tokenizer(str(junk))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty tiktoken cache and a downloader that fails at once."""
    def no_network(blobpath):
        raise ConnectionError(f"network disabled in tests: {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded earlier
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tok, "_host_reachable", lambda *a, **k: False)
    return tmp_path


@pytest.mark.parametrize("name", tok.NAMED)
def test_offline_named_encoding(offline, monkeypatch, name):
    # a failed probe must stop us before tiktoken's timeout-less download (which could hang)
    monkeypatch.setattr(tiktoken.load, "read_file", lambda url: pytest.fail(f"downloaded {url}"))
    with pytest.raises(ConfigError) as err:
        tok.load_tokenizer(name)
    msg = str(err.value)
    assert "TIKTOKEN_CACHE_DIR" in msg and "offline" in msg and name in msg and "\n" not in msg


def test_offline_download_failure_is_config_error(offline, monkeypatch):
    """The host answers the probe but the download itself fails (or the cache is corrupt)."""
    monkeypatch.setattr(tok, "_host_reachable", lambda *a, **k: True)
    with pytest.raises(ConfigError, match="TIKTOKEN_CACHE_DIR"):
        tok.load_tokenizer("cl100k_base")


def test_cached_blob_skips_the_probe(offline, monkeypatch):
    for url in tok._BLOBS["o200k_base"]:  # a (corrupt) cached copy: hash check fails -> refetch
        (offline / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"garbage")
    assert tok._is_cached("o200k_base") and not tok._is_cached("gpt2")
    monkeypatch.setattr(tok, "_host_reachable", lambda *a, **k: pytest.fail("probed the network"))
    with pytest.raises(ConfigError, match="TIKTOKEN_CACHE_DIR"):
        tok.load_tokenizer("o200k_base")


def test_identity(trained):
    byte = tok.byte_encoding()
    assert tok.tokenizer_identity(byte) == tok.tokenizer_identity(tok.byte_encoding())
    assert tok.tokenizer_identity(trained) == tok.tokenizer_identity(trained)
    assert tok.tokenizer_identity(byte).startswith("byte-")
    assert tok.tokenizer_identity(byte) != tok.tokenizer_identity(trained)
    other = tok.train_bpe([_code_like(150, seed=11)], 400)  # same name, different merges
    assert other.name == trained.name
    assert tok.tokenizer_identity(other) != tok.tokenizer_identity(trained)


def test_bad_training_arguments():
    with pytest.raises(ConfigError, match="vocab_size=100"):
        tok.train_bpe(["x"], 100)
    with pytest.raises(ConfigError, match="pattern='llama'"):
        tok.train_bpe(["x"], 300, pattern="llama")


def test_ids_past_the_tokenizer_decode_as_replacement_characters():
    """A model's vocabulary may be padded past its tokenizer's (a converted checkpoint, or
    model.vocab_size set by hand): its samples must still print."""
    enc = tok.byte_encoding()
    assert tok.decode(enc, [104, 105, 300, 257, 0xC3]) == "hi\ufffd\ufffd\ufffd"
    assert tok.token_bytes(enc, [104, 256]) == b"h<|endoftext|>"
