"""Samplers against a plain numpy twin: exact filters, empirical frequencies, per-row parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arlm_jax.decode import sampling as S

LOGITS = np.array([2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, -3.0], np.float32)  # V = 8


# ---- the numpy twin: target distributions written from the definitions --------------------------
def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def target(logits, temperature=1.0, k=0, p=1.0, min_p=0.0):
    """Renormalised sampling distribution after temperature, top-k, top-p, min-p (in that order)."""
    probs = softmax(np.asarray(logits, np.float64) / temperature)
    keep = np.ones(len(probs), bool)
    order = np.argsort(-probs, kind="stable")
    if k:
        keep[order[k:]] = False
    if p < 1.0:
        q = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
        mass, kept = 0.0, np.zeros(len(q), bool)
        for i in order:  # smallest prefix reaching p
            if mass >= p:
                break
            kept[i], mass = True, mass + q[i]
        keep &= kept
    if min_p:
        q = np.where(keep, probs, 0)
        keep &= q >= min_p * q.max()
    out = np.where(keep, probs, 0)
    return out / out.sum()


CASES = [dict(temperature=0.7), dict(temperature=1.8), dict(k=3), dict(p=0.8), dict(min_p=0.3),
         dict(temperature=1.4, k=5, p=0.9, min_p=0.1)]


def _sampler(temperature=1.0, k=0, p=1.0, min_p=0.0):
    return S.Sampler(temperature=temperature, top_k=k or None, top_p=p if p < 1 else None,
                     min_p=min_p or None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_empirical_frequencies_match_target(case):
    n = 40_000
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, len(LOGITS)))
    toks = jax.jit(S.sample, static_argnums=())(jax.random.key(0), logits, _sampler(**case))
    freq = np.bincount(np.asarray(toks), minlength=len(LOGITS)) / n
    want = target(LOGITS, **case)
    assert np.all(freq[want == 0] == 0), "a filtered-out token was drawn"
    tv = 0.5 * np.abs(freq - want).sum()
    assert tv < 0.01, (freq, want)  # the sampling error at n = 40k is ~0.004


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_filters_match_numpy_exactly(case):
    _, final = S.process(jnp.asarray(LOGITS), _sampler(**case))
    kept = np.asarray(final) > S.NEG
    np.testing.assert_array_equal(kept, target(LOGITS, **case) > 0)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(final)), target(LOGITS, **case), atol=1e-6)


def test_top_k_one_and_temperature_zero_are_greedy():
    logits = jax.random.normal(jax.random.key(1), (16, 50)) * 3
    keys = jax.random.split(jax.random.key(2), 5)
    want = np.argmax(np.asarray(logits), -1)
    for k in keys:
        np.testing.assert_array_equal(S.sample(k, logits, S.Sampler(top_k=1)), want)
        np.testing.assert_array_equal(S.sample(k, logits, S.Sampler(temperature=0.0, top_p=0.3)), want)
    np.testing.assert_array_equal(S.sample(keys[0], logits, None), want)


def test_per_row_parameters_equal_rows_alone_and_vmap():
    logits = jax.random.normal(jax.random.key(1), (4, 30)) * 2
    s = S.Sampler(temperature=jnp.array([0.5, 1.0, 0.0, 2.0]), top_k=jnp.array([0, 5, 3, 10]),
                  top_p=jnp.array([1.0, 0.9, 0.5, 0.7]), min_p=jnp.array([0.0, 0.05, 0.0, 0.2]))
    _, batch = S.process(logits, s)
    rows = jax.vmap(lambda l, t, k, p, m: S.process(l, S.Sampler(temperature=t, top_k=k, top_p=p, min_p=m))[1])(
        logits, s.temperature, s.top_k, s.top_p, s.min_p)
    np.testing.assert_array_equal(batch, rows)
    for r in range(4):
        one = S.Sampler(temperature=float(s.temperature[r]), top_k=int(s.top_k[r]), top_p=float(s.top_p[r]),
                        min_p=float(s.min_p[r]))
        np.testing.assert_array_equal(batch[r], S.process(logits[r], one)[1])


def test_penalties_follow_the_documented_formulas_and_order():
    logits = jnp.asarray([[2.0, -1.0, 0.5, 3.0, -2.0]])
    prompt, lengths = jnp.asarray([[0, 1, 4]]), jnp.asarray([2])  # token 4 is padding
    h = S.init_history(prompt, lengths, 5)
    h = S.update_history(h, jnp.asarray([3]), jnp.asarray([True]))
    h = S.update_history(h, jnp.asarray([3]), jnp.asarray([True]))
    h = S.update_history(h, jnp.asarray([2]), jnp.asarray([False]))  # a finished row records nothing
    s = S.Sampler(temperature=2.0, repetition_penalty=1.5, presence_penalty=0.25, frequency_penalty=0.5,
                  banned=S.banned_mask([2], 5))
    penalised, final = S.process(logits, s, h)
    # repetition over prompt + output (tokens 0, 1, 3); presence/frequency over the output (3 twice)
    want = np.array([2.0 / 1.5, -1.0 * 1.5, S.NEG, 3.0 / 1.5 - 0.25 - 2 * 0.5, -2.0])
    np.testing.assert_allclose(penalised[0], want, rtol=1e-6)
    np.testing.assert_allclose(final[0, [0, 1, 3, 4]], want[[0, 1, 3, 4]] / 2.0, rtol=1e-6)
    assert float(final[0, 2]) == S.NEG


def test_processors_compose_and_stay_finite():
    logits = jnp.asarray([[1.0, 1.0, 1.0, -50.0]])
    out = S.min_p(S.top_p(S.top_k(S.temperature(logits, 0.5), 3), 0.6), 0.5)
    assert np.isfinite(np.asarray(out)).all()
    assert np.asarray(out > S.NEG).sum() == 3  # ties at the cut are all kept


def test_bisection_filters_equal_sort_based_numpy_on_random_rows():
    """top-k / top-p find their cut by bisection, not a sort: compare with sorting, ties included."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 500)).astype(np.float32) * rng.uniform(0.1, 8, size=(32, 1)).astype(np.float32)
    logits[:4] = np.round(logits[:4])  # many ties
    logits[4, :] = -3.0  # all equal
    ks = rng.integers(0, 600, size=32)
    ps = rng.uniform(0.01, 1.0, size=32).astype(np.float32)
    got_k = np.asarray(S.top_k(jnp.asarray(logits), jnp.asarray(ks))) > S.NEG
    got_p = np.asarray(S.top_p(jnp.asarray(logits), jnp.asarray(ps))) > S.NEG
    for r in range(32):
        s = np.sort(logits[r])[::-1]
        want_k = logits[r] >= s[min(ks[r], 500) - 1] if 0 < ks[r] < 500 else np.ones(500, bool)
        np.testing.assert_array_equal(got_k[r], want_k)
        probs = np.exp(s.astype(np.float64) - s[0])
        probs /= probs.sum()
        n_keep = max(int(np.sum(np.cumsum(probs) - probs < ps[r])), 1)
        np.testing.assert_array_equal(got_p[r], logits[r] >= s[n_keep - 1])


# ---- drawing a token: the fast kernels against numpy ---------------------------------------------
def test_argmax_equals_numpy_with_ties_nan_and_inf():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(6, 3, 37)).astype(np.float32)  # many ties: the first index wins
    x[1, 2, [5, 9]] = np.nan  # the first NaN wins, as in numpy and jnp.argmax
    x[4, 0, :] = -np.inf
    x[5, 1, 36] = np.inf
    got = S.argmax(jnp.asarray(x))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.argmax(x, -1))
    np.testing.assert_array_equal(jax.jit(S.argmax)(jnp.asarray(x[0, 0])), np.argmax(x[0, 0]))


@pytest.mark.parametrize("v", [1, 2, 50, 65])
def test_categorical_frequencies_match_weights(v):
    """Two-level inverse CDF: chi-square against w / sum(w) at a fixed seed; zero weights (at block
    edges, in the padding's block, at both ends) are never drawn."""
    from scipy import stats
    rng = np.random.default_rng(v)
    w = rng.uniform(0, 1, size=v) ** 3  # a wide spread of probabilities
    if v >= 50:
        w[[0, 7, 8, v - 2, v - 1]] = 0.0  # block length is ceil(sqrt(V)) = 8 (V=50) or 9 (V=65)
    n = 100_000
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(w, jnp.float32)), (n, v))  # log(0) = -inf: weight 0
    toks = jax.jit(S.categorical)(jax.random.key(1), logits)
    counts = np.bincount(np.asarray(toks), minlength=v)
    p = w / w.sum()
    assert counts[p == 0].sum() == 0, "a zero-weight token was drawn"
    if v > 1:
        expected = n * p[p > 0]
        chi2 = ((counts[p > 0] - expected) ** 2 / expected).sum()
        assert chi2 < stats.chi2.ppf(0.999, df=(p > 0).sum() - 1), (counts, expected)


def test_categorical_keeps_leading_axes_and_the_same_key_gives_the_same_draws():
    logits = jax.random.normal(jax.random.key(0), (3, 4, 50))
    a, b = S.categorical(jax.random.key(5), logits), S.categorical(jax.random.key(5), logits)
    assert a.shape == (3, 4) and a.dtype == jnp.int32
    np.testing.assert_array_equal(a, b)
    rows = jax.vmap(lambda k, l: S.categorical(k, l))(jax.random.split(jax.random.key(6), 3), logits)
    assert rows.shape == (3, 4) and int(rows.max()) < 50


def test_inverse_cdf_never_lands_on_zero_weight_at_the_edges():
    below_one = jnp.float32(1 - 2 ** -24)  # the largest uniform draw
    assert int(S._inverse_cdf(jnp.asarray([1.0, 2.0, 0.0, 0.0]), below_one)) == 1
    assert int(S._inverse_cdf(jnp.asarray([3.0, 0.0]), below_one)) == 0
    assert int(S._inverse_cdf(jnp.asarray([0.0, 0.0, 1.0, 1.0]), jnp.float32(0.0))) == 2
    assert int(S._inverse_cdf(jnp.asarray([0.5, 0.5]), jnp.float32(0.5))) == 1  # cumsum[0] <= u*total
