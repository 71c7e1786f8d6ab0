"""Corpora and the tokenised memmap cache (batches.py draws windows from it).

Pipeline: a corpus spec -> documents ``(doc_id, text)`` -> each document assigned to train or
validation by a hash of its id -> tokenised once, documents joined by ``<|endoftext|>``, into
two flat memmaps in the cache -> batches.py's ``get_batch`` draws windows keyed by
``(seed, step)``, so a resumed run sees exactly the batches it would have seen, and its
``eval_batches`` gives the same fixed validation windows at every evaluation.

Corpus specs:
  "stdlib"  the running Python's standard-library ``.py`` sources (directory of ``os.__file__``)
            without ``site-packages``/``dist-packages`` and without the test suites (folders
            named ``test``, ``tests``, ``idle_test``: ~60% of the bytes, much of it generated
            data and deliberately malformed files), plus the ``pydoc_data`` topics, one
            document per topic. The name is reserved: a file called ``stdlib`` needs ``./stdlib``.
  a file    one document.
  a folder  every file below it, recursively, sorted by relative path; hidden files and
            folders (``.git``) and binary files (a NUL byte in the first 8 KiB) are skipped.
  a glob    (``*``, ``?`` or ``[`` in the spec; ``**`` recurses) the matching files, and
            matching folders as above, sorted by the matched path.
Files are decoded as UTF-8 with ``errors="replace"`` (bad bytes become U+FFFD, whose UTF-8
bytes count in ``bytes_per_token``); documents that are empty or whitespace only are skipped.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from arlm_jax.config import DataConfig
from arlm_jax.errors import ConfigError
from arlm_jax.files import atomic_write, cache_root, remove_stale_temporaries, sha256_of
from arlm_jax.data.tokenizer import eot_id, tokenizer_identity

FORMAT_VERSION = 2  # bump when corpus rules or the cache layout change: old caches miss
# (2: each split's SHA-256 in the meta, checked when the entry is opened)
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests",
                               "idle_test"})
_SNIFF_BYTES = 8192
_ENCODE_CHUNK_CHARS = 1 << 22  # text handed to one encode_ordinary_batch call (~4 MiB)


# ---- corpus ---------------------------------------------------------------------------------
def _pydoc_topics_path() -> Path | None:
    try:
        import pydoc_data.topics  # some distributions strip it
    except ImportError:
        return None
    return Path(pydoc_data.topics.__file__).resolve()


def _is_text(path: Path) -> bool:
    with open(path, "rb") as fh:
        return b"\0" not in fh.read(_SNIFF_BYTES)


def _walk(root: Path, skip_dirs: frozenset[str] = frozenset(), suffix: str = ""
          ) -> list[tuple[str, Path]]:
    """(relative posix name, path) of the text files below ``root`` -- or, given ``suffix``,
    of the files ending so, unsniffed. Hidden entries and ``skip_dirs`` are skipped and
    symlinked folders are not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and not d.startswith(".")]
        for f in filenames:
            p = Path(dirpath, f)
            if not f.startswith(".") and (f.endswith(suffix) if suffix else p.is_file() and _is_text(p)):
                out.append((p.relative_to(root).as_posix(), p))
    return out


def _resolve(spec: str) -> list[tuple[str, Path]]:
    """The corpus as sorted ``(name, path)`` pairs; names become document ids."""
    if spec == "stdlib":
        return sorted(_walk(Path(os.__file__).resolve().parent, _STDLIB_SKIP_DIRS, ".py"))
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        files = [(path.name, path)] if _is_text(path) else []
    elif path.is_dir():
        files = _walk(path)
    elif any(c in spec for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True))
        if not matches:
            raise ConfigError(f"data.corpus={spec!r}: no such file, folder or glob match")
        files = []
        for m in matches:
            if m.is_dir():
                files += [(f"{m.as_posix()}/{n}", p) for n, p in _walk(m)]
            elif _is_text(m):
                files.append((m.as_posix(), m))
    else:
        raise ConfigError(f"data.corpus={spec!r}: no such file, folder or glob match")
    if not files:
        raise ConfigError(f"data.corpus={spec!r} holds no text")
    return sorted(dict(files).items())


def corpus_files(spec: str) -> list[Path]:
    """The files of a corpus spec (see the module docstring), in document order.

    For "stdlib" the list holds ``pydoc_data/topics.py``, which ``iter_documents`` expands into
    one document per topic. Raises ConfigError for a missing path or an empty match.
    """
    return [p for _, p in _resolve(spec)]


def iter_documents(spec: str) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` in a deterministic order; doc ids are relative paths
    (``"json/decoder.py"``, ``"pydoc_data/topics.py#assert"``). ConfigError if no text at all."""
    topics_path = _pydoc_topics_path() if spec == "stdlib" else None
    found = False
    for name, path in _resolve(spec):
        if path == topics_path:
            import pydoc_data.topics
            docs = [(f"{name}#{t}", pydoc_data.topics.topics[t])
                    for t in sorted(pydoc_data.topics.topics)]
        else:
            docs = [(name, path.read_bytes().decode("utf-8", errors="replace"))]
        for doc_id, text in docs:
            if text.strip():
                found = True
                yield doc_id, text
    if not found:
        raise ConfigError(f"data.corpus={spec!r} holds no text")


# ---- train / validation split -----------------------------------------------------------------
def _val_score(doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by the doc id alone, so adding files moves no document."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2.0**64


def split_doc_ids(doc_ids: Sequence[str], val_fraction: float) -> frozenset[str]:
    """The ids held out for validation: those whose hash score is below ``val_fraction``.

    With >= 2 documents at least one lands on each side (the lowest score is forced into
    validation, the highest into train). With one document this returns an empty set and the
    caller splits its text instead (``split_text``).
    """
    scores = {d: _val_score(d) for d in doc_ids}
    if len(scores) < 2:
        return frozenset()
    val = {d for d, s in scores.items() if s < val_fraction}
    if not val:
        val.add(min(scores, key=scores.__getitem__))
    if len(val) == len(scores):
        val.discard(max(scores, key=scores.__getitem__))
    return frozenset(val)


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """Split one document into (train, val) at the line boundary nearest ``(1-val_fraction)``
    of its characters (at that character when it has no inner line break)."""
    cut = round(len(text) * (1.0 - val_fraction))
    cands = [p + 1 for p in (text.rfind("\n", 0, cut), text.find("\n", cut))
             if p >= 0 and 0 < p + 1 < len(text)]
    if cands:
        cut = min(cands, key=lambda p: abs(p - cut))
    return text[:cut], text[cut:]


# ---- token cache --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class TokenData:
    """The tokenised corpus. ``train``/``val`` are read-only memmaps of token ids, every
    document followed by the eot id. ``bytes_per_token`` = UTF-8 bytes of the validation text
    / validation tokens (eots included), to turn a per-token loss into bits per byte."""

    train: np.ndarray  # [N_train] uint16 | uint32
    val: np.ndarray  # [N_val]
    dtype: np.dtype
    n_train_docs: int
    n_val_docs: int
    bytes_per_token: float
    cache_path: Path  # the meta JSON; <stem>.train.bin and <stem>.val.bin lie beside it
    note: str = ""  # what happened to the entry on opening, for the user (a rebuild and why)


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id < n_vocab fits it, else uint32."""
    return np.dtype(np.uint16 if n_vocab <= 1 << 16 else np.uint32)


def check_token_ids(ids: np.ndarray, dtype: np.dtype) -> None:
    """ConfigError if any id in ``ids`` (int64 [N]) does not fit ``dtype``: a tokenizer whose
    ``n_vocab`` understates its ids would otherwise wrap silently in the cache."""
    top = np.iinfo(dtype).max
    if ids.size and (ids.max() > top or ids.min() < 0):
        bad = int(ids.max() if ids.max() > top else ids.min())
        raise ConfigError(f"data.tokenizer: token id {bad} overflows the {np.dtype(dtype).name} "
                          f"token cache (allowed 0..{top}); the tokenizer's n_vocab is too small")


def cache_dir_of(data_cfg: DataConfig) -> Path:
    """data.cache_dir, else ``files.cache_root()`` ($ARLM_CACHE, else ~/.cache/arlm_jax)."""
    return Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else cache_root()


def cache_key(data_cfg: DataConfig, enc) -> str:
    """Hash of everything the tokens depend on: the resolved file list with sizes and mtimes,
    the tokenizer identity, val_fraction and the format version."""
    files = []
    for name, path in _resolve(data_cfg.corpus):
        st = path.stat()
        files.append((name, str(path.resolve()), st.st_size, st.st_mtime_ns))
    payload = json.dumps({"format": FORMAT_VERSION, "corpus": data_cfg.corpus, "files": files,
                          "tokenizer": tokenizer_identity(enc),
                          "val_fraction": data_cfg.val_fraction}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _bin_paths(meta_path: Path) -> dict[str, Path]:
    stem = meta_path.name.removesuffix(".json")
    return {s: meta_path.with_name(f"{stem}.{s}.bin") for s in ("train", "val")}


def _read_meta(meta_path: Path, key: str) -> tuple[dict | None, str]:
    """(the meta of a complete, intact cache entry for ``key``, else None; why not, when the
    entry exists but is damaged). Each split's bytes are checked against the SHA-256 the build
    wrote (34 ms for the 11M-token default corpus, docs/reliability.md)."""
    try:
        meta = json.loads(meta_path.read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        ok = meta["key"] == key and meta["format"] == FORMAT_VERSION and all(
            p.stat().st_size == meta[f"n_{s}_tokens"] * itemsize
            for s, p in _bin_paths(meta_path).items())
    except (OSError, ValueError, KeyError, TypeError):
        return None, ""
    if not ok:
        return None, ""
    for split, path in _bin_paths(meta_path).items():
        if sha256_of(path) != meta.get(f"{split}_sha256"):
            return None, f"the cached {split} tokens in {path} failed their checksum; rebuilt them"
    return meta, ""


def _split_texts(spec: str, split: str, val_ids: frozenset[str], single: bool,
                 val_fraction: float) -> Iterator[str]:
    """The texts of one split ("train" | "val") in document order."""
    for doc_id, text in iter_documents(spec):
        if single:
            yield split_text(text, val_fraction)[1 if split == "val" else 0]
        elif (doc_id in val_ids) == (split == "val"):
            yield text


def _write_tokens(fh, enc, texts: Iterator[str], eot: int, dtype: np.dtype) -> dict:
    """Tokenise ``texts`` in ~4 MiB chunks (one threaded tiktoken call each) into ``fh``, an
    eot after every text; return the split's token, document and UTF-8 byte counts."""
    stats = {"tokens": 0, "docs": 0, "bytes": 0}
    sha = hashlib.sha256()

    def flush(chunk: list[str]) -> None:
        parts = []
        for ids in enc.encode_ordinary_batch(chunk, num_threads=2):
            parts += [np.asarray(ids, dtype=np.int64), np.array([eot], dtype=np.int64)]
        ids = np.concatenate(parts)
        check_token_ids(ids, dtype)
        raw = ids.astype(dtype).tobytes()
        sha.update(raw)
        fh.write(raw)
        stats["tokens"] += ids.size
        stats["docs"] += len(chunk)
        stats["bytes"] += sum(len(t.encode("utf-8")) for t in chunk)

    chunk, n_chars = [], 0
    for text in texts:
        chunk.append(text)
        n_chars += len(text)
        if n_chars >= _ENCODE_CHUNK_CHARS:
            flush(chunk)
            chunk, n_chars = [], 0
    if chunk:
        flush(chunk)
    return stats | {"sha256": sha.hexdigest()}


def _write_cache(data_cfg: DataConfig, enc, meta_path: Path, key: str) -> dict:
    """Tokenise both splits into their bins, then write the meta, which marks the entry complete."""
    t0 = time.perf_counter()
    meta_path.unlink(missing_ok=True)
    dtype, eot = token_dtype(enc.n_vocab), eot_id(enc)
    check_token_ids(np.array([eot]), dtype)
    spec, val_fraction = data_cfg.corpus, data_cfg.val_fraction
    doc_ids = [d for d, _ in iter_documents(spec)]  # a first pass for the names only
    val_ids = split_doc_ids(doc_ids, val_fraction)
    meta = {"key": key, "format": FORMAT_VERSION, "corpus": spec,
            "tokenizer": tokenizer_identity(enc), "val_fraction": val_fraction, "dtype": dtype.name}
    for split, path in _bin_paths(meta_path).items():
        texts = _split_texts(spec, split, val_ids, len(doc_ids) == 1, val_fraction)
        stats = atomic_write(path, lambda fh: _write_tokens(fh, enc, texts, eot, dtype))
        meta[f"{split}_sha256"] = stats.pop("sha256")
        meta.update({f"n_{split}_{k}": v for k, v in stats.items()})
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    return meta


def _open(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


def build_token_cache(data_cfg: DataConfig, enc, cache_dir: str | os.PathLike | None = None
                      ) -> TokenData:
    """Tokenise ``data_cfg.corpus`` with ``enc`` once and memory-map the result.

    The entry is keyed by ``cache_key`` and reused while no file, the tokenizer or
    val_fraction changes; it is written to temp files and renamed into place, so an
    interrupted build leaves no entry that looks complete. ``cache_dir`` overrides
    ``cache_dir_of(data_cfg)``.
    """
    data_cfg.validate()
    key = cache_key(data_cfg, enc)
    root = Path(cache_dir) if cache_dir is not None else cache_dir_of(data_cfg)
    meta_path = root / f"tokens-{key}.json"
    meta, note = _read_meta(meta_path, key)
    if meta is None:
        _make_cache_dir(root)
        remove_stale_temporaries(root)  # of builds that were killed
        meta = _write_cache(data_cfg, enc, meta_path, key)
    dtype = np.dtype(meta["dtype"])
    bins = _bin_paths(meta_path)
    n_val = meta["n_val_tokens"]
    return TokenData(train=_open(bins["train"], dtype, meta["n_train_tokens"]),
                     val=_open(bins["val"], dtype, n_val), dtype=dtype,
                     n_train_docs=meta["n_train_docs"], n_val_docs=meta["n_val_docs"],
                     bytes_per_token=meta["n_val_bytes"] / n_val if n_val else float("nan"),
                     cache_path=meta_path, note=note)


def _make_cache_dir(root: Path) -> None:
    """Create the token cache folder; a one-line ConfigError where it cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"data.cache_dir: the token cache folder {str(root)!r} cannot be written "
                          f"({err.strerror or type(err).__name__}); set data.cache_dir or $ARLM_CACHE "
                          f"to a folder you can write to") from None


def check_ids_below(data: TokenData, vocab_size: int) -> None:
    """ConfigError unless every token id of both splits is < ``vocab_size`` (one pass)."""
    for split, ids in (("train", data.train), ("val", data.val)):
        top = int(ids.max()) if ids.size else -1
        if top >= vocab_size:
            raise ConfigError(f"data: the token cache {data.cache_path} holds id {top} in its {split} split, "
                              f">= model.vocab_size={vocab_size}; delete the entry to rebuild it")
