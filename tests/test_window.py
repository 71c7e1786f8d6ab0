"""Generation past the context window (decode/window.py) against its slow twin: every token
recomputed by the plain full forward over the cropped window, with no decoding state."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.decode.generate import _decode_jit, _generate, prefill
from arlm_jax.decode.sampling import sample
from arlm_jax.decode.window import plan
from arlm_jax.errors import ConfigError
from arlm_jax.models import families, family_of
from conftest import randomise, tiny
from test_generate import decode_loop_body

CTX = 16  # context length of every model here
N_NEW = 40  # new tokens: the window slides several times


def _model(**opts):
    cfg = tiny(max_len=CTX, rel_buckets=8, rel_max_distance=16, **opts)
    return cfg, randomise(A.init(jax.random.key(0), cfg), scale=0.3)


def cropped_reference(params, cfg, prompts, n_new, keep, sampler=None, key=None):
    """The slow twin. Before predicting s[n] from the text s[0..n-1] with window start w:
    if n - w > C then w = n - keep; the logits are the full forward's at the last token of
    s[w:n]. The rows are left-aligned in one [B, C] buffer, so one program serves every step
    (attention is causal: what follows a row's window is never read). Sampling draws with the
    key sequence generate uses: key, sub = split(key) per step, one draw for all rows.
    -> (tokens int32 [B, n_new], logprobs float32 [B, n_new]), numpy."""
    ctx = family_of(cfg).context_len(cfg)
    full = jax.jit(lambda p, buf: family_of(cfg).forward(p, buf, cfg)[0])
    draw = jax.jit(sample)
    seqs, starts = [list(p) for p in prompts], [0] * len(prompts)
    toks, logps = [], []
    for _ in range(n_new):
        buf, last = np.zeros((len(seqs), ctx), np.int32), []
        for r, s in enumerate(seqs):
            if len(s) - starts[r] > ctx:
                starts[r] = len(s) - keep
            win = s[starts[r]:]
            buf[r, :len(win)] = win
            last.append(len(win) - 1)
        logits = full(params, jnp.asarray(buf))[jnp.arange(len(seqs)), jnp.asarray(last)]  # [B, V]
        sub = None
        if sampler is not None:
            key, sub = jax.random.split(key)
        tok = np.asarray(draw(sub, logits, sampler))
        logps.append(np.asarray(jax.nn.log_softmax(logits))[np.arange(len(seqs)), tok])
        toks.append(tok)
        for r, s in enumerate(seqs):
            s.append(int(tok[r]))
    return np.stack(toks, 1), np.stack(logps, 1)


PROMPTS = [[5, 9, 2, 33, 7], [1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]  # ragged: the rows slide on different steps


@pytest.mark.parametrize("pos, keep", [(p, k) for p in ["learned", "rope", "alibi", "relative", "sinusoidal"]
                                       for k in (CTX, 5)] + [("rope", 1)])
def test_greedy_past_the_window_equals_cropped_recompute(pos, keep):
    cfg, params = _model(pos=pos)
    toks, lens = A.pad_prompts(PROMPTS, bucket=CTX)
    out = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens,
                     window_keep=keep)
    ref_toks, ref_logps = cropped_reference(params, cfg, PROMPTS, N_NEW, keep)
    np.testing.assert_array_equal(out.tokens, ref_toks)
    np.testing.assert_allclose(out.logprobs, ref_logps, atol=2e-5)
    assert out.lengths.tolist() == [N_NEW] * 2


def test_while_loop_with_a_stop_past_the_window_equals_the_scan():
    """The early-exit loop slides too; a stop token first met after the window moved ends the
    row exactly where the reference text has it."""
    cfg, params = _model(pos="rope", n_kv_heads=2)
    toks, lens = A.pad_prompts(PROMPTS, bucket=CTX)
    ref, _ = cropped_reference(params, cfg, PROMPTS, N_NEW, 7)
    scan = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens, window_keep=7)
    loop = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens, window_keep=7,
                      early_exit=True)
    np.testing.assert_array_equal(scan.tokens, ref)
    np.testing.assert_array_equal(loop.tokens, ref)
    row = ref[0].tolist()
    stop = next(t for i, t in enumerate(row) if i >= CTX and t not in row[:i])  # first seen past the window
    n = row.index(stop) + 1
    got = A.generate(params, cfg, toks[:1], jax.random.key(0), max_new_tokens=N_NEW, lengths=lens[:1],
                     window_keep=7, early_exit=True, stop=stop, pad_id=0)
    assert int(got.lengths[0]) == n and bool(got.finished[0])
    assert got.tokens[0].tolist() == row[:n] + [0] * (N_NEW - n)


@pytest.mark.parametrize("early_exit", [False, True])
def test_ragged_rows_slide_on_their_own_schedule_and_equal_rows_alone(early_exit):
    cfg, params = _model(pos="alibi", n_kv_heads=1)
    prompts = [[1, 2, 3], list(range(20, 20 + CTX)), [9, 8, 7, 6, 5, 4, 3]]  # one row full at once
    toks, lens = A.pad_prompts(prompts, bucket=CTX)
    batch = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens,
                       window_keep=6, early_exit=early_exit)
    for r, p in enumerate(prompts):
        alone = A.generate(params, cfg, jnp.asarray([p]), jax.random.key(0), max_new_tokens=N_NEW, window_keep=6)
        assert batch.tokens[r].tolist() == alone.tokens[0].tolist()
        np.testing.assert_allclose(batch.logprobs[r], alone.logprobs[0], atol=1e-5)


def test_sampled_past_the_window_equals_reference_with_the_same_keys():
    cfg, params = _model(pos="relative")
    s = A.Sampler(temperature=1.0, top_k=20)
    toks, lens = A.pad_prompts(PROMPTS, bucket=CTX)
    out = A.generate(params, cfg, toks, jax.random.key(5), max_new_tokens=N_NEW, lengths=lens, sampler=s,
                     window_keep=9)
    ref_toks, ref_logps = cropped_reference(params, cfg, PROMPTS, N_NEW, 9, s, jax.random.key(5))
    np.testing.assert_array_equal(out.tokens, ref_toks)
    np.testing.assert_allclose(out.logprobs, ref_logps, atol=2e-5)
    assert len(set(out.tokens[0].tolist())) > 5  # it did sample


@pytest.mark.parametrize("keep", [CTX, 4])
def test_stream_equals_generate_past_the_window(keep):
    cfg, params = _model(pos="learned")
    toks, lens = A.pad_prompts(PROMPTS, bucket=CTX)
    whole = A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens, window_keep=keep)
    before = _decode_jit._cache_size()
    chunks = list(A.stream(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens, chunk=8,
                           window_keep=keep))
    np.testing.assert_array_equal(np.concatenate([c for c, _, _ in chunks], axis=1), whole.tokens)
    assert [c.shape[1] for c, _, _ in chunks] == [1, 8, 8, 8, 8, 7]
    np.testing.assert_array_equal(chunks[-1][1], whole.lengths)
    assert _decode_jit._cache_size() == before + 1  # one chunk program, sliding included


@pytest.mark.parametrize("keep", [0, CTX + 1, -3, 2.5, "4", True])
def test_bad_window_keep_is_a_one_line_error(keep):
    cfg, params = _model()
    prompts = np.ones((1, 4), np.int32)
    for call in (lambda: A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=N_NEW, window_keep=keep),
                 lambda: next(A.stream(params, cfg, prompts, jax.random.key(0), max_new_tokens=N_NEW,
                                       window_keep=keep))):
        with pytest.raises(ConfigError, match=rf"window_keep={re.escape(repr(keep))} must be an integer in "
                                              rf"1\.\.{CTX}") as err:
            call()
        assert "\n" not in str(err.value)


def test_a_request_that_fits_compiles_the_program_it_did_before():
    """No cond, no extra state, and one program whatever window_keep says; past the context the
    cond appears."""
    cfg, params = _model()
    prompts = jnp.asarray([[1, 2, 3]])
    program = lambda n, keep: str(jax.make_jaxpr(  # noqa: E731
        lambda p, x: A.generate(p, cfg, x, jax.random.key(0), max_new_tokens=n, window_keep=keep).tokens)(params, prompts))
    assert " cond[" not in program(CTX - 2, None) and " cond[" in program(CTX - 1, None)
    assert program(CTX - 2, None) == program(CTX - 2, 3)
    before = _generate._cache_size()
    for keep in (None, 3, 7):
        A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=CTX - 2, window_keep=keep)
    assert _generate._cache_size() <= before + 1
    state, _, _ = prefill(params, cfg, prompts, jnp.asarray([3]), jax.random.key(0), CTX)
    assert state.held is None and state.tail is None


@pytest.mark.parametrize("rows", [[[1, 2, 3], [4, 5]], [[1, 2, 3]]])
def test_sliding_decode_loop_updates_the_cache_in_place(rows):
    """As test_generate's check: the while body never copies a cache-shaped buffer. The refill
    branch of the cond may (its prefill builds a fresh cache, selected into the full rows): it
    runs only on the steps where some row is full, so it is not searched."""
    cfg, params = _model(n_kv_heads=2)
    toks, lens = A.pad_prompts(rows, bucket=4)
    state, _, _ = prefill(params, cfg, jnp.asarray(toks), jnp.asarray(lens), jax.random.key(0), CTX, keep=8)
    body = decode_loop_body(params, cfg, state, 9)
    cache_shape = f"f32[{len(rows)},2,{CTX},8]"  # [B, K, S, E]
    assert cache_shape in body and " conditional(" in body  # the cache and the refill are in the loop ...
    copies = [ln for ln in body.splitlines() if " copy(" in ln and cache_shape in ln]
    assert not copies, copies  # ... and the loop never copies the cache


def test_beam_search_and_speculative_still_refuse_past_the_context():
    cfg, params = _model()
    prompts = jnp.asarray([[1, 2, 3, 4]])
    calls = [lambda: A.beam_search(params, cfg, prompts, beams=2, max_new_tokens=N_NEW),
             lambda: A.speculative_generate(params, cfg, params, cfg, prompts, jax.random.key(0), k=2,
                                            max_new_tokens=N_NEW)]
    for call in calls:
        with pytest.raises(ConfigError, match=f"max_new_tokens={N_NEW} .* exceeds the context, model.max_len={CTX}; "
                                              "allowed at most 13 .*only generate and stream slide") as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="longer than the context"):  # prompts are still the caller's to crop
        A.generate(params, cfg, np.ones((1, CTX + 1), np.int32), jax.random.key(0), max_new_tokens=2)


def test_sharded_sliding_equals_one_device():
    """Under a data x fsdp x tensor mesh the refill keeps the cache's layout and the tokens."""
    from arlm_jax.models.transformer.axes import param_axes
    from arlm_jax.parallel import mesh as mesh_lib, shardings as sh

    cfg, params = _model(n_heads=8, n_kv_heads=2, d_model=64, pos="rope", norm="rmsnorm", mlp="swiglu")
    toks, lens = A.pad_prompts([[1, 2, 3], list(range(20, 20 + CTX)), [9], [10, 11, 12, 13, 14]], bucket=CTX)
    ref = A.generate(params, cfg, toks, jax.random.key(1), max_new_tokens=N_NEW, lengths=lens, window_keep=6)
    mesh = mesh_lib.make_mesh(2, 2, 2)
    with jax.set_mesh(mesh):
        sharded = jax.device_put(params, sh.param_shardings(params, param_axes(params), mesh))
        got = A.generate(sharded, cfg, toks, jax.random.key(1), max_new_tokens=N_NEW, lengths=lens, window_keep=6)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)


@pytest.mark.skipif("bigram" not in families(), reason="the bigram family is not registered")
def test_an_unbounded_family_never_slides():
    cfg = A.get_family("bigram").preset("tiny")
    params = randomise(A.init(jax.random.key(0), cfg), scale=0.3)
    assert plan(cfg, 10_000, None) == (10_000, None)
    prompts = jnp.asarray([[1, 2, 3]])
    out = A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=N_NEW)
    np.testing.assert_array_equal(
        A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=N_NEW, window_keep=3).tokens, out.tokens)
    with pytest.raises(ConfigError, match=r"window_keep=0 must be an integer >= 1"):
        A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=N_NEW, window_keep=0)
