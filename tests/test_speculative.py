"""Speculative decoding against plain decoding: same greedy tokens, the target's distribution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.errors import ConfigError
from arlm_jax.decode.speculative import _speculative, speculative_generate
from conftest import randomise, tiny


def _models(vocab=64, **opts):
    cfg = tiny(vocab_size=vocab, pos="rope", n_kv_heads=2, **opts)
    dcfg = tiny(vocab_size=vocab, pos="learned", n_layers=1, d_model=16, n_heads=2)
    return (cfg, randomise(A.init(jax.random.key(0), cfg), scale=0.3),
            dcfg, randomise(A.init(jax.random.key(5), dcfg), scale=0.3))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_greedy_speculative_equals_greedy_generate(k, drafter):
    cfg, tp, dcfg, dp = _models()
    toks, lens = A.pad_prompts([[1, 2, 3, 1, 2], [4, 5, 6, 7, 8, 9, 4, 5], [9]], bucket=8)  # ragged
    plain = A.generate(tp, cfg, toks, jax.random.key(0), max_new_tokens=12, lengths=lens)
    draft = (dp, dcfg) if drafter == "model" else (None, None)
    spec = speculative_generate(tp, cfg, *draft, toks, jax.random.key(1), k=k, max_new_tokens=12,
                                lengths=lens, prompt_lookup=2)
    np.testing.assert_array_equal(spec.out.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.out.lengths, plain.lengths)
    np.testing.assert_allclose(spec.out.logprobs, plain.logprobs, atol=1e-4)
    assert np.all(np.asarray(spec.target_calls) >= -(-11 // (k + 1)))  # at most k+1 tokens per pass


def test_draft_equal_to_target_accepts_everything():
    cfg, tp, _, _ = _models()
    prompts = jnp.asarray([[1, 2, 3], [7, 7, 7]])
    for sampler in (None, A.Sampler(temperature=0.9, top_k=20)):
        spec = speculative_generate(tp, cfg, tp, cfg, prompts, jax.random.key(3), k=4, max_new_tokens=13,
                                    sampler=sampler)
        np.testing.assert_allclose(spec.acceptance_rate, 1.0, atol=0.02)
        np.testing.assert_array_equal(spec.target_calls, [3, 3])  # 1 + 3 x (4 + 1) >= 13 tokens


@pytest.mark.parametrize("sampler", [A.Sampler(temperature=1.0), A.Sampler(temperature=0.7, top_k=3),
                                     A.Sampler(temperature=1.2, top_p=0.8)], ids=["t1", "t0.7,k3", "t1.2,p0.8"])
@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_sampled_output_follows_the_target_distribution(sampler, drafter):
    """Two-token continuations over a 4-token vocabulary: empirical frequencies from speculative
    sampling against the exact target probabilities of the same sampler."""
    cfg, tp, dcfg, dp = _models(vocab=4)
    tp = randomise(tp, seed=2, scale=0.5)  # spread out, and far from the draft
    prompt = [1, 3, 0, 2]
    n = 8000
    draft = (dp, dcfg) if drafter == "model" else (None, None)
    spec = speculative_generate(tp, cfg, *draft, jnp.asarray([prompt] * n), jax.random.key(11), k=2,
                                max_new_tokens=2, sampler=sampler, prompt_lookup=1)
    pairs = np.asarray(spec.out.tokens)
    freq = np.bincount(pairs[:, 0] * 4 + pairs[:, 1], minlength=16) / n
    # exact: p(a) p(b | a) under the processed target distribution
    from arlm_jax.decode.sampling import process
    seqs = np.array(list(itertools.product(range(4), repeat=2)))
    full = jnp.asarray(np.concatenate([np.tile(prompt, (16, 1)), seqs], 1))
    logits = A.forward(tp, full, cfg)[0]  # [16, 6, 4]
    probs = np.asarray(jax.nn.softmax(process(logits, sampler)[1], axis=-1), np.float64)
    want = probs[np.arange(16), 3, seqs[:, 0]] * probs[np.arange(16), 4, seqs[:, 1]]
    assert abs(want.sum() - 1) < 1e-5
    tv = 0.5 * np.abs(freq - want).sum()
    assert tv < 0.035, (tv, freq.round(3), want.round(3))  # sampling noise at n = 8000: ~0.017
    assert float(np.mean(spec.acceptance_rate)) < 0.999  # the draft really was rejected sometimes


def test_loop_compiles_once():
    cfg, tp, dcfg, dp = _models()
    before = _speculative._cache_size()
    for seed, prompt in enumerate(([[1, 2, 3, 4]], [[9, 8, 7, 6]])):
        speculative_generate(tp, cfg, dp, dcfg, jnp.asarray(prompt), jax.random.key(seed), k=3,
                             max_new_tokens=8, sampler=A.Sampler(temperature=0.5 + seed))
    assert _speculative._cache_size() == before + 1


def test_stop_sequences_end_rows_like_generate():
    cfg, tp, dcfg, dp = _models()
    prompts = jnp.asarray([[1, 2, 3], [5, 6, 7]])
    free = A.generate(tp, cfg, prompts, jax.random.key(0), max_new_tokens=16)
    stop = [tuple(free.tokens[0, 4:6].tolist())]
    plain = A.generate(tp, cfg, prompts, jax.random.key(0), max_new_tokens=16, stop=stop)
    spec = speculative_generate(tp, cfg, dp, dcfg, prompts, jax.random.key(0), k=3, max_new_tokens=16, stop=stop)
    np.testing.assert_array_equal(spec.out.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.out.finished, plain.finished)
    np.testing.assert_array_equal(spec.out.lengths, plain.lengths)


@pytest.mark.parametrize("change, match", [
    (dict(k=0), "k=0"),
    (dict(k=30), "allowed k <="),
    (dict(dcfg_vocab=65), "vocab_size=65 differs"),
    (dict(draft=None), "prompt_lookup"),
    (dict(sampler=A.Sampler(repetition_penalty=1.2)), "penalties"),
])
def test_bad_speculative_input(change, match):
    cfg, tp, dcfg, dp = _models()
    if "dcfg_vocab" in change:
        dcfg = tiny(vocab_size=change.pop("dcfg_vocab"), n_layers=1, d_model=16, n_heads=2)
        dp = A.init(jax.random.key(1), dcfg)
    if "draft" in change:
        dp, dcfg = change.pop("draft"), None
    args = dict(k=2, max_new_tokens=8) | change
    with pytest.raises(ConfigError, match=match) as err:
        speculative_generate(tp, cfg, dp, dcfg, jnp.asarray([[1, 2, 3]]), jax.random.key(0), **args)
    assert "\n" not in str(err.value)


def test_prompt_lookup_proposals():
    from arlm_jax.decode.speculative import _lookup
    ctx = jnp.asarray([[1, 2, 3, 1, 2, 3, 1, 2, 0, 0],    # loop of 3: continue it
                       [7, 7, 7, 7, 7, 0, 0, 0, 0, 0],    # a run: more of it
                       [5, 6, 9, 1, 2, 8, 4, 5, 6, 0],    # "5 6" seen before: what followed it
                       [1, 2, 3, 4, 0, 0, 0, 0, 0, 0]])   # no earlier "3 4": repeat the last token
    got = _lookup(ctx, jnp.asarray([8, 5, 9, 4]), k=4, n=2)
    assert got.tolist() == [[3, 1, 2, 3], [7, 7, 7, 7], [9, 1, 2, 8], [4, 4, 4, 4]]
