"""Beam search against exhaustive enumeration and greedy decoding on a tiny vocabulary."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.errors import ConfigError
from conftest import randomise, tiny


def _model(**opts):
    cfg = tiny(vocab_size=5, n_layers=1, d_model=16, n_heads=2, **opts)
    return cfg, randomise(A.init(jax.random.key(0), cfg), scale=0.6)


def _seq_logprobs(params, cfg, prompt, seqs):
    """Sum of log-probabilities of each continuation in seqs [M, N] after prompt, by full forward."""
    seqs = np.asarray(seqs)
    full = jnp.asarray(np.concatenate([np.broadcast_to(prompt, (len(seqs), len(prompt))), seqs], 1))
    lp = jax.nn.log_softmax(A.forward(params, full, cfg)[0])
    t = len(prompt)
    return np.asarray(sum(lp[np.arange(len(seqs)), t - 1 + i, seqs[:, i]] for i in range(seqs.shape[1])))


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_wide_beam_finds_the_exhaustive_optimum(pos):
    cfg, params = _model(pos=pos)
    prompt, n = [1, 2, 3], 3
    seqs = np.array(list(itertools.product(range(cfg.vocab_size), repeat=n)))
    scores = _seq_logprobs(params, cfg, prompt, seqs)
    order = np.argsort(-scores)[:3]
    got = A.beam_search(params, cfg, jnp.asarray([prompt]), beams=25, max_new_tokens=n, n_best=3,
                        length_penalty=0.0)  # 25 = V ** (N - 1): no prefix is ever dropped
    assert got.tokens[0].tolist() == seqs[order].tolist()
    np.testing.assert_allclose(got.scores[0], scores[order], atol=1e-5)
    np.testing.assert_allclose(got.logprobs[0], scores[order], atol=1e-5)


def test_width_one_is_greedy():
    cfg, params = _model(pos="alibi")
    prompts, lens = A.pad_prompts([[1, 2, 3], [4]], bucket=4)
    greedy = A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=8, lengths=lens)
    beam = A.beam_search(params, cfg, prompts, beams=1, max_new_tokens=8, lengths=lens)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_allclose(beam.logprobs[:, 0], greedy.logprobs.sum(1), atol=1e-5)


def test_stop_tokens_end_hypotheses_and_scores_use_the_length_penalty():
    cfg, params = _model()
    prompt = [1, 2, 3]
    got = A.beam_search(params, cfg, jnp.asarray([prompt]), beams=4, max_new_tokens=6, n_best=4,
                        stop=[0], length_penalty=0.7, pad_id=4)
    assert np.all(np.diff(np.asarray(got.scores[0])) <= 0)  # best first
    for j in range(4):
        toks, n = got.tokens[0, j].tolist(), int(got.lengths[0, j])
        if bool(got.finished[0, j]):
            assert toks[n - 1] == 0 and 0 not in toks[:n - 1] and toks[n:] == [4] * (6 - n)
        else:
            assert n == 6 and 0 not in toks
        lp = _seq_logprobs(params, cfg, prompt, [toks[:n]])[0]
        np.testing.assert_allclose(float(got.logprobs[0, j]), lp, atol=1e-5)
        np.testing.assert_allclose(float(got.scores[0, j]), lp / n ** 0.7, rtol=1e-5)
    assert bool(got.finished.any())


def test_ragged_batch_equals_single_prompts():
    cfg, params = _model(pos="relative")
    prompts = [[1, 2, 3, 4, 1], [2]]
    toks, lens = A.pad_prompts(prompts, bucket=8)
    batch = A.beam_search(params, cfg, toks, beams=3, max_new_tokens=5, n_best=2, lengths=lens, stop=[0])
    for r, p in enumerate(prompts):
        one = A.beam_search(params, cfg, jnp.asarray([p]), beams=3, max_new_tokens=5, n_best=2, stop=[0])
        np.testing.assert_array_equal(batch.tokens[r], one.tokens[0])
        np.testing.assert_allclose(batch.scores[r], one.scores[0], atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(beams=0), "beams=0"),
    (dict(n_best=5), "n_best=5"),
    (dict(stop=[[1, 2]]), "single stop tokens"),
    (dict(max_new_tokens=40), "exceeds the context"),
])
def test_bad_beam_arguments(kwargs, match):
    cfg, params = _model()
    args = dict(beams=2, max_new_tokens=4) | kwargs
    with pytest.raises(ConfigError, match=match):
        A.beam_search(params, cfg, jnp.asarray([[1, 2]]), **args)
