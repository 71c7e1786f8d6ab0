"""The decoding engine against its slow twins: cached vs full forward, generate vs a no-cache loop."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.errors import ConfigError
from arlm_jax.decode.generate import _decode_jit, _generate
from arlm_jax.models.transformer.cache import init_cache
from conftest import randomise, tiny
import reference

POS = ["learned", "sinusoidal", "rope", "alibi", "relative"]


def _model(**opts):
    cfg = tiny(**opts)
    return cfg, randomise(A.init(jax.random.key(0), cfg), scale=0.3)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("kv", [4, 2, 1])  # MHA, GQA, MQA
def test_cached_decode_matches_full_forward(pos, kv):
    """Ragged prefill, then one token at a time: every step's logits equal the full forward's."""
    cfg, params = _model(pos=pos, n_kv_heads=kv, rel_buckets=8, rel_max_distance=16)
    seqs = np.asarray(jax.random.randint(jax.random.key(1), (2, 20), 0, cfg.vocab_size))
    full = np.asarray(A.forward(params, jnp.asarray(seqs), cfg)[0])  # [2, 20, V]
    lens = np.array([3, 8])
    prompts = np.where(np.arange(8) < lens[:, None], seqs[:, :8], 0)  # right-padded with junk-free 0s
    cache = init_cache(cfg, 2, 24)
    step = jax.jit(lambda p, t, c: A.forward(p, t, cfg, c))
    logits, cache = step(params, jnp.asarray(prompts), cache)
    cache = cache.replace(lengths=jnp.asarray(lens, jnp.int32))
    for r in range(2):  # prefill logits of each row's real tokens
        np.testing.assert_allclose(np.asarray(logits)[r, :lens[r]], full[r, :lens[r]], atol=2e-5)
    for i in range(10):  # row r feeds its own token at position lens[r] + i
        toks = seqs[np.arange(2), lens + i][:, None]
        logits, cache = step(params, jnp.asarray(toks), cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), lens + i], atol=2e-5)
    np.testing.assert_array_equal(np.asarray(cache.lengths), lens + 10)
    assert len(cache.k) == cfg.n_layers
    assert cache.k[0].shape == (2, kv, 24, cfg.head_dim)  # only the kv heads are stored


@pytest.mark.parametrize("opts", [dict(), dict(pos="rope", n_kv_heads=2, norm="rmsnorm", mlp="swiglu"),
                                  dict(pos="alibi", n_kv_heads=1, norm_position="post")])
def test_greedy_generate_equals_uncached_argmax_loop(opts):
    cfg, params = _model(**opts)
    prompt = [5, 9, 2, 33, 7]
    out = A.generate(params, cfg, jnp.asarray([prompt]), jax.random.key(0), max_new_tokens=12)
    assert out.tokens.shape == (1, 12) and out.logprobs.shape == (1, 12)
    assert out.tokens[0].tolist() == reference.greedy_uncached(params, cfg, prompt, 12)
    assert int(out.lengths[0]) == 12 and not bool(out.finished[0])
    # logprobs are the model's own log-probabilities of the chosen tokens
    seq = jnp.asarray([prompt + out.tokens[0].tolist()])
    lp = jax.nn.log_softmax(A.forward(params, seq, cfg)[0][0, len(prompt) - 1:-1])
    np.testing.assert_allclose(out.logprobs[0], lp[jnp.arange(12), out.tokens[0]], atol=1e-5)


@pytest.mark.parametrize("early_exit", [False, True])
def test_ragged_batch_rows_equal_single_rows(early_exit):
    cfg, params = _model(pos="rope", n_kv_heads=2)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13]]
    toks, lens = A.pad_prompts(prompts, bucket=16)
    assert toks.shape == (3, 16) and lens.tolist() == [3, 9, 1]
    batch = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=8, lengths=lens,
                       early_exit=early_exit)
    for r, p in enumerate(prompts):
        alone = A.generate(params, cfg, jnp.asarray([p]), jax.random.key(0), max_new_tokens=8)
        assert batch.tokens[r].tolist() == alone.tokens[0].tolist()
        np.testing.assert_allclose(batch.logprobs[r], alone.logprobs[0], atol=1e-5)


def test_same_key_same_tokens_and_keys_matter():
    cfg, params = _model()
    prompts = jnp.asarray([[1, 2, 3, 4]] * 4)
    s = A.Sampler(temperature=1.5)
    a = A.generate(params, cfg, prompts, jax.random.key(7), max_new_tokens=10, sampler=s)
    b = A.generate(params, cfg, prompts, jax.random.key(7), max_new_tokens=10, sampler=s)
    c = A.generate(params, cfg, prompts, jax.random.key(8), max_new_tokens=10, sampler=s)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert len({tuple(r) for r in np.asarray(a.tokens).tolist()}) > 1  # rows draw independently


def _first_end(row, seq):
    m = len(seq)
    for i in range(m - 1, len(row)):
        if row[i - m + 1:i + 1] == list(seq):
            return i + 1
    return None


@pytest.mark.parametrize("early_exit", [False, True])
def test_stop_sequences_end_rows_exactly(early_exit):
    cfg, params = _model(vocab_size=16)
    prompts = jnp.asarray([[1, 2, 3], [7, 7, 1]])
    s = A.Sampler(temperature=1.0)
    free = A.generate(params, cfg, prompts, jax.random.key(3), max_new_tokens=20, sampler=s)
    row0 = free.tokens[0].tolist()
    seq = tuple(row0[5:7])  # a two-token sequence that occurs in row 0 (maybe earlier, too)
    absent = (15, 15, 15, 15)
    stop = [seq, absent]
    got = A.generate(params, cfg, prompts, jax.random.key(3), max_new_tokens=20, sampler=s, stop=stop,
                     early_exit=early_exit, pad_id=0)
    for r in range(2):
        row = free.tokens[r].tolist()
        ends = [e for e in (_first_end(row, seq), _first_end(row, absent)) if e is not None]
        n = min(ends) if ends else 20
        assert int(got.lengths[r]) == n and bool(got.finished[r]) == bool(ends)
        assert got.tokens[r, :n].tolist() == row[:n]  # identical until the stop, then padding
        assert got.tokens[r, n:].tolist() == [0] * (20 - n)
        assert np.all(np.asarray(got.logprobs[r, n:]) == 0)
    assert bool(got.finished[0]) and int(got.lengths[0]) <= 7


def test_second_call_with_same_shapes_does_not_recompile():
    cfg, params = _model()
    before = _generate._cache_size()
    toks, lens = A.pad_prompts([[1, 2, 3], [4, 5]], bucket=8)
    A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=6, lengths=lens,
               sampler=A.Sampler(temperature=0.7, top_p=0.9))
    toks2, lens2 = A.pad_prompts([[9, 9, 9, 9, 9, 9, 9], [3]], bucket=8)  # new prompts, same bucket
    A.generate(params, cfg, toks2, jax.random.key(1), max_new_tokens=6, lengths=lens2,
               sampler=A.Sampler(temperature=1.3, top_p=0.5))  # new values, same fields
    assert _generate._cache_size() == before + 1


def test_stream_equals_generate_and_compiles_one_chunk_program():
    cfg, params = _model(pos="alibi")
    toks, lens = A.pad_prompts([[1, 2, 3], [4, 5, 6, 7]], bucket=8)
    whole = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=15, lengths=lens)
    before = _decode_jit._cache_size()
    chunks = list(A.stream(params, cfg, toks, jax.random.key(0), max_new_tokens=15, lengths=lens, chunk=4))
    got = np.concatenate([c for c, _, _ in chunks], axis=1)
    np.testing.assert_array_equal(got, whole.tokens)
    assert [c.shape[1] for c, _, _ in chunks] == [1, 4, 4, 4, 2]
    np.testing.assert_array_equal(chunks[-1][1], whole.lengths)
    assert _decode_jit._cache_size() == before + 1


def test_generate_inside_user_jit():
    cfg, params = _model()
    prompts = jnp.asarray([[1, 2, 3]])
    f = jax.jit(lambda p, x, k: A.generate(p, cfg, x, k, max_new_tokens=5).tokens)
    np.testing.assert_array_equal(f(params, prompts, jax.random.key(0)),
                                  A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=5).tokens)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=np.ones((1, 40), np.int32)), "longer than the context"),
    (dict(window_keep=0), r"window_keep=0 must be an integer in 1\.\.32"),  # past the context it slides
    (dict(max_new_tokens=0), "max_new_tokens=0"),
    (dict(sampler=A.Sampler(top_p=1.5)), r"sampler.top_p=1.5 .* \(0, 1\]"),
    (dict(sampler=A.Sampler(top_p=0.0)), "sampler.top_p=0.0"),
    (dict(sampler=A.Sampler(top_k=-1)), "sampler.top_k=-1"),
    (dict(sampler=A.Sampler(temperature=-0.5)), "sampler.temperature=-0.5"),
    (dict(sampler=A.Sampler(min_p=np.array([0.1, 2.0]))), "sampler.min_p"),
    (dict(lengths=[0]), "empty prompt"),
    (dict(prompts=np.full((1, 3), 99, np.int32)), "token ids must be in 0..63"),
    (dict(stop=[[]]), "empty stop sequence"),
])
def test_bad_input_is_one_line_error(kwargs, match):
    cfg, params = _model()
    args = dict(prompts=np.ones((1, 4), np.int32), max_new_tokens=8) | kwargs
    with pytest.raises(ConfigError, match=match) as err:
        A.generate(params, cfg, args.pop("prompts"), jax.random.key(0), **args)
    assert "\n" not in str(err.value)


def test_pad_prompts_rejects_empty_prompt():
    with pytest.raises(ConfigError, match="empty prompt"):
        A.pad_prompts([[1, 2], []])


def decode_loop_body(params, cfg, state, n_steps: int) -> str:
    """The compiled HLO text of the body of ``decode``'s ``n_steps``-step loop."""
    from arlm_jax.decode.generate import decode
    hlo = jax.jit(decode, static_argnums=(1, 3)).lower(params, cfg, state, n_steps).compile().as_text()
    comps = re.split(r"\n(?=\S)", hlo)
    loop = next(c for c in comps if f'"known_trip_count":{{"n":"{n_steps}"}}' in c)
    body_name = re.search(r"body=%([\w.\-]+)", loop).group(1)
    return next(c for c in comps if c.lstrip("%").startswith(body_name + " "))


@pytest.mark.parametrize("rows", [[[1, 2, 3], [4, 5]], [[1, 2, 3]]])
def test_decode_loop_updates_the_cache_in_place(rows):
    """The compiled decode loop carries the KV cache without copying it: no copy of a cache-shaped
    buffer inside the while body, with several rows and with one. Attention reads the old cache
    before the write (model.py); written first, XLA:CPU copied every buffer on every one-row step."""
    from arlm_jax.decode.generate import prefill
    cfg, params = _model(n_kv_heads=2)
    toks, lens = A.pad_prompts(rows, bucket=4)
    state, _, _ = prefill(params, cfg, jnp.asarray(toks), jnp.asarray(lens), jax.random.key(0), 16)
    body = decode_loop_body(params, cfg, state, 9)
    cache_shape = f"f32[{len(rows)},2,16,8]"  # [B, K, S, E]
    assert cache_shape in body  # the cache is in the loop ...
    copies = [ln for ln in body.splitlines() if " copy(" in ln and cache_shape in ln]
    assert not copies, copies  # ... and never copied
