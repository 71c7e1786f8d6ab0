"""Byte-level BPE ``tokenizer.json`` -> ``tiktoken.Encoding`` (convert/hf/tokenizer.py), against
the ``tokenizers`` package: the slow reference encodes the same text with the original file."""

import json
import pathlib
import random
import sysconfig

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from arlm_jax.convert.hf.tokenizer import BYTE_CHARS_INV, encoding_from_tokenizer_json
from arlm_jax.data.bpe import CL100K_PAT
from arlm_jax.data.tokenizer import eot_id
from arlm_jax.errors import ConfigError

STDLIB = pathlib.Path(sysconfig.get_paths()["stdlib"])


def _texts(n=30):
    return [p.read_text(errors="replace") for p in sorted(STDLIB.glob("*.py"))[:n]]


def _train(style: str, path: pathlib.Path) -> Tokenizer:
    """A 1,000-token byte-level BPE in GPT-2's layout (ByteLevel splits with its regex) or
    LLaMA-3's (a Split on a cl100k-style regex, then ByteLevel without one)."""
    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<|endoftext|>"]
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CL100K_PAT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(path))
    return tok


def _samples() -> list[str]:
    rng = random.Random(0)
    planes = [(0x20, 0x250), (0x370, 0x700), (0x900, 0xE00), (0x3040, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF)]
    noise = ["".join(chr(rng.randrange(*rng.choice(planes))) if rng.random() < 0.7 else rng.choice(" \n\t'sd0")
                     for _ in range(500)) for _ in range(4)]
    return ["héllo wörld 你好世界 🙂👍🏽 naïve café", "  leading spaces\n\n\ttabs\r\n  trailing   ",
            "x = 1234567 + 0.5e-3  # émoji 🚀", "Ünïcödé ﬁ ǅ Ελληνικά русский עברית العربية हिन्दी ไทย",
            "don't I'll we've they're DON'T 'S", "zero\u200bwidth\u00a0nbsp\u3000ideographic", "\x00\x01\x7f",
            "", " ", *noise, (STDLIB / "os.py").read_text()[:20000], (STDLIB / "argparse.py").read_text()[:20000]]


@pytest.fixture(scope="module", params=["gpt2", "llama3"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    return request.param, _train(request.param, path), encoding_from_tokenizer_json(path)


def test_encodes_and_decodes_like_tokenizers(pair):
    _, tok, enc = pair
    for text in _samples():
        ids = tok.encode(text, add_special_tokens=False).ids
        assert enc.encode_ordinary(text) == ids, text[:60]
        assert enc.decode(ids) == tok.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_and_document_end(pair):
    style, tok, enc = pair
    names = ["<|endoftext|>"] if style == "gpt2" else ["<|begin_of_text|>", "<|end_of_text|>"]
    assert enc._special_tokens == {n: tok.token_to_id(n) for n in names}
    assert eot_id(enc) == tok.token_to_id(names[-1])
    assert enc.n_vocab == tok.get_vocab_size()
    assert enc.decode([eot_id(enc)]) == names[-1]


def _edited(tmp_path, edit) -> pathlib.Path:
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    _train("gpt2", path)
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    return path


def _swap_first_merges(spec):
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    merged = ["".join(m.split(" ") if isinstance(m, str) else m) for m in merges[:2]]
    vocab[merged[0]], vocab[merged[1]] = vocab[merged[1]], vocab[merged[0]]


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["model"].update(byte_fallback=True), "model.byte_fallback=true"),
    (lambda s: s.update(normalizer={"type": "NFC"}), 'normalizer="NFC"'),
    (lambda s: s["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (lambda s: s.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁"}), "pre_tokenizer="),
    (lambda s: s["model"].update(type="Unigram"), 'model.type="Unigram"'),
    (lambda s: s["model"]["vocab"].pop(BYTE_CHARS_INV[0]), "lacks byte 0"),
    (_swap_first_merges, "ids out of merge order"),
])
def test_what_tiktoken_cannot_hold_is_refused_in_one_line(tmp_path, edit, message):
    path = _edited(tmp_path, edit)
    with pytest.raises(ConfigError, match="^hf tokenizer: ") as err:
        encoding_from_tokenizer_json(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sentencepiece_style_bpe_is_refused(tmp_path):
    """LLaMA 1-2 and TinyLlama: a Metaspace BPE with byte fallback."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(_texts(5), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"],
                                                           show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="byte_fallback=true.*SentencePiece"):
        encoding_from_tokenizer_json(tmp_path / "tokenizer.json")
