"""Tokenizers as plain ``tiktoken.Encoding`` objects: byte-level, named, or trained BPE.

Every tokenizer the library uses is a ``tiktoken.Encoding`` so that encoding is always
tiktoken's fast Rust code, whatever produced the vocabulary:

  * ``"byte"`` -- built in, no file: 256 byte tokens + ``<|endoftext|>`` = 256.
  * ``"gpt2" | "cl100k_base" | "o200k_base"`` -- tiktoken's own files. They are downloaded
    on first use; offline, they load only from tiktoken's cache (``TIKTOKEN_CACHE_DIR``).
  * a ``.tiktoken`` file -- e.g. one written by ``save_tiktoken(train_bpe(texts, 4096), p)``.

Special tokens: ``encode`` treats text as *ordinary* text, so a user's document that
happens to contain the string ``<|endoftext|>`` is encoded as plain characters and can
never inject a document boundary; the data pipeline appends ``eot_id(enc)`` itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterable

import tiktoken

from arlm_jax.data.bpe import GPT2_PAT, train_ranks
from arlm_jax.errors import ConfigError

EOT = "<|endoftext|>"
# Special tokens that end a document, in the order ``eot_id`` looks for them: GPT-2's and ours,
# LLaMA-3's, and SentencePiece's (a converted Hugging Face tokenizer keeps its own names).
DOC_ENDS = (EOT, "<|end_of_text|>", "</s>")
NAMED = ("gpt2", "cl100k_base", "o200k_base")
_HOST = "openaipublic.blob.core.windows.net"
# The blobs tiktoken_ext.openai_public reads for each name; tiktoken caches a blob as
# <cache dir>/sha1(url), which lets us tell "cached" from "needs the network" up front.
_BLOBS = {
    "gpt2": (f"https://{_HOST}/gpt-2/encodings/main/vocab.bpe",
             f"https://{_HOST}/gpt-2/encodings/main/encoder.json"),
    "cl100k_base": (f"https://{_HOST}/encodings/cl100k_base.tiktoken",),
    "o200k_base": (f"https://{_HOST}/encodings/o200k_base.tiktoken",),
}


# ---- built-in and named encodings ----------------------------------------------------------

def byte_encoding() -> tiktoken.Encoding:
    """The file-free byte tokenizer: rank i is ``bytes([i])``, ``<|endoftext|>`` = 256 (n_vocab 257)."""
    return tiktoken.Encoding(name="byte", pat_str=GPT2_PAT,
                             mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={EOT: 256})


def _tiktoken_cache_dir() -> str:
    """Where tiktoken looks for cached blobs (same rule as ``tiktoken.load.read_file_cached``)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _is_cached(name: str) -> bool:
    cache = _tiktoken_cache_dir()
    return bool(cache) and all(
        os.path.exists(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())) for url in _BLOBS[name])


def _host_reachable(host: str = _HOST, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``host:443`` opens within ``timeout`` seconds.

    Runs in a daemon thread because DNS lookups ignore socket timeouts; tiktoken's own
    download (``requests.get`` without a timeout) could otherwise hang on a dead network.
    Behind an HTTPS proxy a direct connection proves nothing, so we leave it to requests.
    """
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    ok = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def named_encoding(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)``, failing fast with a ConfigError when offline and uncached."""
    cache = _tiktoken_cache_dir() or "<unset>"
    msg = (f"data.tokenizer={name!r} could not be loaded offline: its file is not in tiktoken's cache; "
           f"download it once with network access or set the TIKTOKEN_CACHE_DIR environment variable "
           f"to a folder holding the cached file (now {cache})")
    if not _is_cached(name) and not _host_reachable():
        raise ConfigError(msg)
    try:
        return tiktoken.get_encoding(name)
    except Exception as err:  # requests/hash/IO errors all mean "not loadable here"
        raise ConfigError(f"{msg} [{type(err).__name__}]") from err


# ---- trained BPE and the .tiktoken file format ---------------------------------------------

def train_bpe(texts: Iterable[str], vocab_size: int, *, pattern: str = "gpt2",
              name: str | None = None) -> tiktoken.Encoding:
    """Train a byte-level BPE with ``vocab_size`` ids in total, including ``<|endoftext|>``.

    Ranks 0..255 are single bytes, ranks 256.. are merges in the order learned, and
    ``<|endoftext|>`` takes the id right after the last rank -- ``vocab_size - 1`` unless the
    corpus runs out of pairs to merge first, in which case ``n_vocab < vocab_size``.
    ``pattern`` ("gpt2" or "cl100k") is the pre-tokenising regex; it becomes the
    Encoding's ``pat_str``, so tiktoken splits text exactly as the trainer did.
    """
    if vocab_size < 257:
        raise ConfigError(f"bpe vocab_size={vocab_size} must be >= 257 (256 bytes + <|endoftext|>)")
    ranks, pat_str = train_ranks(texts, vocab_size - 1, pattern)
    return tiktoken.Encoding(name=name or f"bpe{vocab_size}", pat_str=pat_str,
                             mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def save_tiktoken(enc: tiktoken.Encoding | dict[bytes, int], path: str | os.PathLike) -> None:
    """Write an Encoding's (or a bare ranks dict's) ranks as ``path`` plus a ``<path>.json`` sidecar.

    The rank file is tiktoken's own format (one ``base64(token_bytes) rank`` line per token,
    by rank), readable by ``tiktoken.load.load_tiktoken_bpe``; we write it ourselves since
    tiktoken's ``dump_tiktoken_bpe`` needs the optional ``blobfile`` package. The sidecar
    keeps what the rank file cannot: name, ``pat_str`` and special tokens (for a bare dict:
    the file's stem, the GPT-2 pattern and ``<|endoftext|>`` = len(ranks)).
    """
    path = Path(path)
    if isinstance(enc, dict):
        enc = tiktoken.Encoding(name=path.stem, pat_str=GPT2_PAT, mergeable_ranks=enc,
                                special_tokens={EOT: len(enc)})
    ranks = enc._mergeable_ranks  # tiktoken keeps no public accessor; pickling uses this too
    lines = (base64.b64encode(tok) + b" " + str(rank).encode()
             for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    path.write_bytes(b"\n".join(lines) + b"\n")
    meta = {"name": enc.name, "pat_str": enc._pat_str, "special_tokens": enc._special_tokens}
    Path(f"{path}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (the format of ``tiktoken.load.load_tiktoken_bpe``).

    Not ``load_tiktoken_bpe`` itself: it copies even local files into tiktoken's cache keyed
    by path and, with no expected hash, returns that stale copy after the file is rewritten.
    """
    ranks = {}
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:
            raise ConfigError(f"data.tokenizer={str(path)!r} line {i} is not 'base64 rank': "
                              f"not a .tiktoken file") from err
    return ranks


def load_tiktoken_file(path: str | os.PathLike) -> tiktoken.Encoding:
    """Load a ``.tiktoken`` rank file and its ``.json`` sidecar as a ``tiktoken.Encoding``.

    Without a sidecar (e.g. a file from elsewhere) we assume the GPT-2 pattern, the file's
    stem as name and ``<|endoftext|>`` = max rank + 1.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.tokenizer={str(path)!r} does not exist; give a path to a .tiktoken file")
    ranks = _read_ranks(path)
    if not ranks:
        raise ConfigError(f"data.tokenizer={str(path)!r} holds no tokens (an empty .tiktoken file); "
                          f"train one with arlm tokenizer train")
    sidecar = Path(f"{path}.json")
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except ValueError as err:
        raise ConfigError(f"{str(sidecar)!r} is not valid JSON; it should hold name, pat_str, special_tokens") from err
    specials = meta.get("special_tokens") or {EOT: max(ranks.values(), default=-1) + 1}
    if not any(end in specials for end in DOC_ENDS):
        raise ConfigError(f"{str(sidecar)!r} special_tokens must include one of {', '.join(DOC_ENDS)}")
    return tiktoken.Encoding(name=meta.get("name", path.stem), pat_str=meta.get("pat_str", GPT2_PAT),
                             mergeable_ranks=ranks, special_tokens=specials)


# ---- the one entry point and helpers -------------------------------------------------------

def load_tokenizer(spec: str) -> tiktoken.Encoding:
    """``data.tokenizer`` -> Encoding: "byte", a tiktoken name, or a path to a .tiktoken file."""
    if spec == "byte":
        return byte_encoding()
    if spec in NAMED:
        return named_encoding(spec)
    if spec.endswith(".tiktoken") or os.path.isfile(spec):
        return load_tiktoken_file(spec)
    raise ConfigError(f"data.tokenizer={spec!r} is unknown; choose byte, gpt2, cl100k_base, "
                      f"o200k_base or a path to a .tiktoken file")


def tokenizer_identity(enc: tiktoken.Encoding) -> str:
    """``"<name>-<12 hex>"``: sha256 over pat_str, ranks in order and special tokens.

    Stable across processes and machines, so it keys tokenised-data caches and is stored in
    checkpoints; two vocabularies with the same name still get different identities.
    """
    h = hashlib.sha256(enc._pat_str.encode())
    for tok, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(b"%d:%s\n" % (rank, base64.b64encode(tok)))
    h.update(json.dumps(sorted(enc._special_tokens.items())).encode())
    return f"{enc.name}-{h.hexdigest()[:12]}"


def eot_id(enc: tiktoken.Encoding) -> int:
    """Id of the document separator the data pipeline appends and decoding stops at: the first
    of ``DOC_ENDS`` the encoding has (``<|endoftext|>`` for every tokenizer arlm_jax makes)."""
    specials = enc._special_tokens
    for end in DOC_ENDS:
        if end in specials:
            return specials[end]
    raise ConfigError(f"data.tokenizer {enc.name!r} has no document-end token; it needs one of "
                      f"{', '.join(DOC_ENDS)} among its special tokens")


def encode(enc: tiktoken.Encoding, text: str) -> list[int]:
    """Ordinary-text ids of ``text``: special-token strings inside it stay plain text.

    Lone surrogates (not valid UTF-8) are encoded as U+FFFD by tiktoken.
    """
    return enc.encode(text, allowed_special=set(), disallowed_special=())


def encode_batch(enc: tiktoken.Encoding, texts: list[str]) -> list[list[int]]:
    """``encode`` over many documents using tiktoken's thread pool."""
    return enc.encode_ordinary_batch(texts)


def token_bytes(enc: tiktoken.Encoding, ids: Iterable[int]) -> bytes:
    """The bytes of ``ids``; an id the tokenizer does not have (a model whose vocabulary is padded
    past the tokenizer's, e.g. a converted checkpoint) reads as U+FFFD, not as an error."""
    out = []
    for t in ids:
        try:
            out.append(enc.decode_single_token_bytes(t))
        except KeyError:
            out.append("\ufffd".encode())
    return b"".join(out)


def decode(enc: tiktoken.Encoding, ids: Iterable[int]) -> str:
    """Text of ``ids``; byte sequences that are not valid UTF-8, and ids the tokenizer does not
    have, become U+FFFD."""
    ids = list(ids)
    try:
        return enc.decode(ids)  # tiktoken's Rust decode
    except KeyError:
        return token_bytes(enc, ids).decode("utf-8", errors="replace")
