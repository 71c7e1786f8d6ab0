"""A byte-level BPE ``tokenizer.json`` (GPT-2 and LLaMA-3 style) as a ``tiktoken.Encoding``.

Byte-level BPE spells each token's bytes as printable characters (GPT-2's byte-to-unicode
table, ``BYTE_CHARS``), splits text with a regex (the ByteLevel pre-tokenizer's GPT-2 pattern,
or a ``Split`` pre-tokenizer's own pattern before a ByteLevel step that adds none), and merges
the adjacent pair whose merge comes first. tiktoken merges the pair whose merged token has the
lowest rank, so with rank = id the two agree when the ids follow the merge order, which is
checked here; the tests compare both encoders on varied unicode text. Added tokens become
tiktoken special tokens (``data.tokenizer.encode`` treats text as ordinary text, so they are
never matched inside a document).

What tiktoken cannot hold is refused with the field named: a normalizer, a SentencePiece-style
BPE (``byte_fallback``, the ``▁`` Metaspace pre-tokenizer of LLaMA 1-2 and TinyLlama), word
prefixes or suffixes, BPE dropout.
"""

from __future__ import annotations

import json
from pathlib import Path

import tiktoken

from arlm_jax.errors import ConfigError

# The regex of tokenizers' ByteLevel pre-tokenizer (use_regex=true): GPT-2's.
BYTE_LEVEL_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_chars() -> dict[str, int]:
    """GPT-2's printable spelling of the 256 bytes: character -> byte. Printable Latin-1 bytes
    stand for themselves; the other 68 take the code points 256, 257, ... in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_CHARS = _byte_chars()
BYTE_CHARS_INV = {b: c for c, b in BYTE_CHARS.items()}


def _bad(field: str, value, why: str) -> ConfigError:
    return ConfigError(f"hf tokenizer: tokenizer.json {field}={json.dumps(value)[:80]} cannot be held by tiktoken "
                       f"({why}); give another tokenizer (arlm convert --tokenizer SPEC)")


def _pattern(spec: dict) -> str:
    """The splitting regex of a ByteLevel or Sequence[Split, ByteLevel] pre-tokenizer."""
    pre = spec.get("pre_tokenizer")
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") if isinstance(s, dict) else None for s in steps]
    for s in steps:
        if isinstance(s, dict) and s.get("type") == "ByteLevel" and s.get("add_prefix_space"):
            raise _bad("pre_tokenizer.add_prefix_space", True, "tiktoken adds no space before the text")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return BYTE_LEVEL_PAT
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex") if isinstance(split.get("pattern"), dict) else None
        if regex is None or split.get("behavior") != "Isolated" or split.get("invert"):
            raise _bad("pre_tokenizer.pretokenizers[0]", split, "only an isolating Split on a regex")
        return regex
    raise _bad("pre_tokenizer", pre, "byte-level BPE needs ByteLevel, or Split then ByteLevel without its regex")


def _model(spec: dict) -> dict:
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise _bad("model.type", model.get("type"), "only byte-level BPE")
    if model.get("byte_fallback"):
        raise _bad("model.byte_fallback", True, "a SentencePiece-style BPE, as LLaMA 1-2 and TinyLlama use")
    for name in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(name):
            raise _bad(f"model.{name}", model[name], "tiktoken's tokens carry no word markers")
    if model.get("dropout"):
        raise _bad("model.dropout", model["dropout"], "BPE dropout is random")
    if spec.get("normalizer"):
        raise _bad("normalizer", spec["normalizer"].get("type"), "tiktoken does not normalise text")
    return model


def _bytes(token: str) -> bytes:
    try:
        return bytes(BYTE_CHARS[c] for c in token)
    except KeyError:
        raise _bad("model.vocab", token, "a token spelled outside the byte-level alphabet") from None


def encoding_from_tokenizer_json(path: str | Path, name: str | None = None) -> tiktoken.Encoding:
    """The ``tiktoken.Encoding`` of a byte-level BPE ``tokenizer.json``: ranks = the model's ids,
    special tokens = its added tokens. A one-line ConfigError for what tiktoken cannot hold."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"hf tokenizer: {str(path)!r} does not exist") from None
    except ValueError as err:
        raise ConfigError(f"hf tokenizer: {str(path)!r} is not valid JSON ({str(err).splitlines()[0]})") from None
    model = _model(spec)  # first: a SentencePiece-style file is named as such
    pat = _pattern(spec)
    ranks = {_bytes(tok): int(i) for tok, i in model.get("vocab", {}).items()}
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise _bad("model.vocab", f"lacks byte {missing[0]}", "byte-level BPE holds all 256 bytes")
    last = -1
    for i, merge in enumerate(model.get("merges", [])):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank = ranks.get(_bytes(a) + _bytes(b))
        if rank is None:
            raise _bad(f"model.merges[{i}]", merge, "its merged token is not in the vocabulary")
        if rank <= last:
            raise _bad(f"model.merges[{i}]", merge, "ids out of merge order: tiktoken ranks merges by id")
        last = rank
    specials = {}
    for tok in spec.get("added_tokens", []):
        content, i = tok["content"], int(tok["id"])
        spelled = "".join(BYTE_CHARS_INV[b] for b in content.encode("utf-8"))
        if model.get("vocab", {}).get(spelled) == i:
            if not tok.get("special"):
                continue  # an ordinary vocabulary entry that is also listed as added
            del ranks[_bytes(spelled)]  # GPT-2's <|endoftext|>: in the vocab, but special
        specials[content] = i
    taken = set(ranks.values())
    for content, i in specials.items():
        if i in taken:
            raise _bad("added_tokens", content, f"its id {i} is also an ordinary token's")
    try:
        return tiktoken.Encoding(name=name or path.parent.name or "hf", pat_str=pat, mergeable_ranks=ranks,
                                 special_tokens=specials)
    except ValueError as err:  # tiktoken checks the pattern and the ranks itself
        raise ConfigError(f"hf tokenizer: tiktoken refused {str(path)!r}: {str(err).splitlines()[0]}") from None


def tokenizer_from_hf(folder: str | Path) -> tiktoken.Encoding:
    """The tokenizer of a HF model folder as a ``tiktoken.Encoding``: tiktoken's own ``gpt2`` for
    a GPT-2 folder with its 50,257-token vocabulary when that loads (cached, or with network
    access), else the folder's ``tokenizer.json`` converted (``encoding_from_tokenizer_json``)."""
    from arlm_jax.convert.hf.files import read_config
    from arlm_jax.data.tokenizer import load_tokenizer

    folder = Path(folder)
    hf = read_config(folder)
    if hf.get("model_type") == "gpt2" and hf.get("vocab_size") == 50257:
        try:
            return load_tokenizer("gpt2")
        except ConfigError:
            pass  # offline and uncached: the folder's tokenizer.json holds the same vocabulary
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"hf tokenizer: {str(folder)!r} has no tokenizer.json; give a tokenizer (byte, gpt2, "
                          f"cl100k_base, o200k_base or a .tiktoken file: arlm convert --tokenizer SPEC)")
    # named after the folder, prefixed so that it never takes the name of one of tiktoken's own
    return encoding_from_tokenizer_json(folder / "tokenizer.json", name=f"hf-{folder.resolve().name}")
