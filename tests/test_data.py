"""Corpus resolution, the document split, the token cache and deterministic batches."""

import os
import pathlib

import numpy as np
import pytest
import tiktoken

from arlm_jax.data import batches as batch_lib, tokens as data
from arlm_jax.errors import ConfigError
from arlm_jax.config import DataConfig

PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_enc(name: str = "byte", eot: int = 256, **extra: int) -> tiktoken.Encoding:
    return tiktoken.Encoding(name=name, pat_str=PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": eot, **extra})


def write_corpus(root: pathlib.Path, n: int = 40) -> dict[str, str]:
    """``n`` documents of distinct words, so any leak of one into another split is visible."""
    docs = {}
    for i in range(n):
        name = f"d{i // 10}/doc{i:03d}.txt"
        docs[name] = "".join(f"line {j} of document {i} says w{i}x{j}\n" for j in range(5 + i % 7))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(docs[name])
    return docs


def cfg(corpus, **kw) -> DataConfig:
    return DataConfig(corpus=str(corpus), **kw)


def decode_docs(tokens: np.ndarray, eot: int = 256) -> list[str]:
    """Split a token stream at eot and decode each document (byte encoding)."""
    assert tokens[-1] == eot
    cuts = np.flatnonzero(np.asarray(tokens) == eot)
    return [bytes(tokens[a + 1 if k else 0:b].astype(np.uint8)).decode()
            for k, (a, b) in enumerate(zip(np.r_[-1, cuts[:-1]], cuts))]


# ---- corpus ---------------------------------------------------------------------------------
def test_stdlib_corpus_is_sorted_deterministic_and_has_pydoc_topics():
    files = data.corpus_files("stdlib")
    assert files == data.corpus_files("stdlib") and len(files) > 100
    root = pathlib.Path(os.__file__).resolve().parent
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and "os.py" in rel and "pydoc_data/topics.py" in rel
    assert not any(set(pathlib.PurePosixPath(r).parts) & {"site-packages", "test", "tests"} for r in rel)
    ids = [d for d, _ in data.iter_documents("stdlib")]
    assert len(ids) == len(set(ids)) and "pydoc_data/topics.py#assert" in ids
    assert "pydoc_data/topics.py" not in ids  # expanded into topics, not read as source


def test_folder_and_glob_specs(tmp_path):
    docs = write_corpus(tmp_path, 12)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: main\n")
    (tmp_path / "d0" / "blob.bin").write_bytes(b"\x00\x01binary")
    (tmp_path / "d1" / "latin1.txt").write_bytes(b"caf\xe9\n")
    got = dict(data.iter_documents(str(tmp_path)))
    assert list(got) == sorted([*docs, "d1/latin1.txt"])
    assert got["d1/latin1.txt"] == "caf\ufffd\n"  # invalid UTF-8 decoded with replacement
    assert data.corpus_files(str(tmp_path)) == [tmp_path / n for n in got]
    globbed = data.corpus_files(str(tmp_path / "d0" / "*.txt"))
    assert globbed == sorted(tmp_path / n for n in docs if n.startswith("d0/"))
    assert data.corpus_files(str(tmp_path / "**" / "doc00[0-1].txt")) == [
        tmp_path / "d0/doc000.txt", tmp_path / "d0/doc001.txt"]
    assert [d for d, _ in data.iter_documents(str(tmp_path / "d1/doc010.txt"))] == ["doc010.txt"]


@pytest.mark.parametrize("kind,msg", [("missing", "no such file, folder or glob match"),
                                      ("noglob", "no such file, folder or glob match"),
                                      ("emptydir", "holds no text"), ("blank", "holds no text")])
def test_missing_or_empty_corpus_errors(tmp_path, kind, msg):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    (tmp_path / "blank" / "b.txt").write_text(" \n\n")
    spec = {"missing": tmp_path / "nope", "noglob": tmp_path / "*.nope"}.get(kind, tmp_path / kind)
    with pytest.raises(ConfigError) as err:
        list(data.iter_documents(str(spec)))
    assert str(err.value) == f"data.corpus={str(spec)!r}: {msg}" or str(err.value) == (
        f"data.corpus={str(spec)!r} {msg}")
    assert "\n" not in str(err.value)


# ---- split -----------------------------------------------------------------------------------
def test_split_by_document_never_trains_on_validation_text(tmp_path):
    docs = write_corpus(tmp_path / "c")
    td = data.build_token_cache(cfg(tmp_path / "c", val_fraction=0.25), byte_enc(), tmp_path / "cache")
    train, val = decode_docs(td.train), decode_docs(td.val)
    assert sorted(train + val) == sorted(docs.values())  # every document exactly once
    assert (td.n_train_docs, td.n_val_docs) == (len(train), len(val)) and len(val) >= 3
    train_text = "".join(train)
    for text in val:
        assert text not in train_text and text.split()[-1] not in train_text
    # the order inside a split is the document order, with eot after every document
    assert train == [docs[n] for n in sorted(docs) if docs[n] in train]
    assert td.bytes_per_token == pytest.approx(sum(map(len, val)) / len(td.val))


def test_split_is_stable_and_guarantees_both_sides():
    ids = [f"f{i}.py" for i in range(200)]
    val = data.split_doc_ids(ids, 0.1)
    assert val == data.split_doc_ids(list(reversed(ids)), 0.1) and 5 < len(val) < 40
    assert data.split_doc_ids(ids[:150], 0.1) == {d for d in val if d in ids[:150]}  # adding files moves none
    assert len(data.split_doc_ids(ids[:2], 1e-9)) == 1
    assert len(data.split_doc_ids(ids[:2], 1 - 1e-9)) == 1
    assert data.split_doc_ids(ids[:1], 0.5) == frozenset()


def test_single_document_is_split_at_a_line_boundary(tmp_path):
    text = "".join(f"line {i}\n" for i in range(100))
    (tmp_path / "one.txt").write_text(text)
    train, val = data.split_text(text, 0.1)
    assert train + val == text and train.endswith("\n") and 0.85 < len(train) / len(text) < 0.95
    assert data.split_text("no newline here", 0.2) == ("no newline h", "ere")
    td = data.build_token_cache(cfg(tmp_path / "one.txt", val_fraction=0.1), byte_enc(), tmp_path / "c")
    assert decode_docs(td.train) == [train] and decode_docs(td.val) == [val]


# ---- cache -----------------------------------------------------------------------------------
def count_encodes(monkeypatch, enc) -> list[int]:
    calls = []
    real = enc.encode_ordinary_batch

    def counting(texts, **kw):
        calls.append(len(texts))
        return real(texts, **kw)

    monkeypatch.setattr(enc, "encode_ordinary_batch", counting)
    return calls


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    write_corpus(tmp_path / "c", 8)
    enc, c = byte_enc(), cfg(tmp_path / "c")
    calls = count_encodes(monkeypatch, enc)
    first = data.build_token_cache(c, enc, tmp_path / "cache")
    n = len(calls)
    assert n > 0 and isinstance(first.train, np.memmap) and first.dtype == np.uint16
    again = data.build_token_cache(c, enc, tmp_path / "cache")
    assert len(calls) == n and again.cache_path == first.cache_path  # reused: no tokenising
    np.testing.assert_array_equal(again.train, first.train)
    other = data.build_token_cache(c, byte_enc("byte2"), tmp_path / "cache")  # new tokenizer id
    assert other.cache_path != first.cache_path
    f = tmp_path / "c" / "d0" / "doc000.txt"
    f.write_text(f.read_text() + "an edit\n")
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    edited = data.build_token_cache(c, enc, tmp_path / "cache")
    assert len(calls) > n and edited.cache_path != first.cache_path
    assert len(edited.train) + len(edited.val) == len(first.train) + len(first.val) + 8


def test_cache_dir_from_config_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "env"))
    assert data.cache_dir_of(DataConfig()) == tmp_path / "env"
    assert data.cache_dir_of(DataConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("ARLM_CACHE")
    assert data.cache_dir_of(DataConfig()) == pathlib.Path.home() / ".cache" / "arlm_jax"


def test_interrupted_build_leaves_no_entry(tmp_path, monkeypatch):
    write_corpus(tmp_path / "c", 8)
    enc, c = byte_enc(), cfg(tmp_path / "c")
    monkeypatch.setattr(enc, "encode_ordinary_batch", lambda texts, **kw: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        data.build_token_cache(c, enc, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no temp files, no meta
    monkeypatch.undo()
    assert len(data.build_token_cache(c, enc, tmp_path / "cache").train) > 0


def test_uint32_for_large_vocab_and_overflow_check(tmp_path, monkeypatch):
    assert data.token_dtype(65536) == np.uint16 and data.token_dtype(65537) == np.uint32
    write_corpus(tmp_path / "c", 4)
    td = data.build_token_cache(cfg(tmp_path / "c"), byte_enc(eot=70000), tmp_path / "cache")
    assert td.dtype == np.uint32 and td.train.dtype == np.uint32 and td.train[-1] == 70000
    data.check_token_ids(np.array([0, 65535]), np.dtype(np.uint16))
    with pytest.raises(ConfigError, match="token id 65536 overflows the uint16"):
        data.check_token_ids(np.array([3, 65536]), np.dtype(np.uint16))
    enc = byte_enc()  # n_vocab 257 -> uint16, but it "emits" an id past uint16
    monkeypatch.setattr(enc, "encode_ordinary_batch", lambda texts, **kw: [[70000] for _ in texts])
    with pytest.raises(ConfigError, match="overflows"):
        data.build_token_cache(cfg(tmp_path / "c"), enc, tmp_path / "cache2")


@pytest.mark.slow
def test_stdlib_tokenises_with_the_byte_encoding(tmp_path):
    td = data.build_token_cache(DataConfig(), byte_enc(), tmp_path)
    assert len(td.train) > 1_000_000 and len(td.val) > 10_000 and td.n_val_docs >= 1
    assert 0.99 < td.bytes_per_token < 1.0  # bytes, less the eot separators


# ---- batches ---------------------------------------------------------------------------------
def test_get_batch_is_deterministic_shifted_and_row_sliceable():
    tokens = np.arange(1000, dtype=np.uint16)
    b = batch_lib.get_batch(tokens, 8, 16, seed=3, step=7)
    assert b.shape == (8, 17) and b.dtype == np.int32
    np.testing.assert_array_equal(b, batch_lib.get_batch(tokens, 8, 16, seed=3, step=7))
    assert not np.array_equal(b, batch_lib.get_batch(tokens, 8, 16, seed=3, step=8))
    assert not np.array_equal(b, batch_lib.get_batch(tokens, 8, 16, seed=4, step=7))
    np.testing.assert_array_equal(b[:, 1:], b[:, :-1] + 1)  # targets = inputs shifted by one
    for rows in (slice(0, 4), slice(4, 8), slice(2, 3)):
        np.testing.assert_array_equal(batch_lib.get_batch(tokens, 8, 16, 3, 7, rows=rows), b[rows])
    # starts cover [0, len - seq_len - 1] inclusive, and never go past the end
    starts = {int(batch_lib.get_batch(tokens[:19], 4, 16, 0, s)[i, 0]) for s in range(50) for i in range(4)}
    assert starts == {0, 1, 2}


def test_eval_batches_are_fixed_and_spread_over_the_split():
    tokens = np.arange(10_000, dtype=np.uint16)
    batches = list(batch_lib.eval_batches(tokens, 4, 32, n_batches=3))
    assert len(batches) == 3 and all(b.shape == (4, 33) and b.dtype == np.int32 for b in batches)
    starts = np.concatenate([b[:, 0] for b in batches])
    assert starts[0] == 0 and starts[-1] == 10_000 - 33 and np.all(np.diff(starts) >= 32)
    again = list(batch_lib.eval_batches(tokens, 4, 32, 3, rows=slice(1, 3)))
    for a, b in zip(again, batches):
        np.testing.assert_array_equal(a, b[1:3])


def test_too_short_split_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        batch_lib.get_batch(np.zeros(50, np.uint16), 2, 64, 0, 0, split="validation")
    assert str(err.value) == ("data: the validation split has 50 tokens, fewer than one window of "
                              "seq_len+1=65; use a larger corpus, a smaller train.seq_len or a "
                              "larger data.val_fraction")
    with pytest.raises(ConfigError, match="train split has 64 tokens"):
        batch_lib.eval_batches(np.zeros(64, np.uint16), 2, 64, 1, split="train")  # raised eagerly
    assert batch_lib.get_batch(np.zeros(65, np.uint16), 2, 64, 0, 0).shape == (2, 65)
