"""The ``ngram`` family: the estimate against a pure-Python twin, normalisation, the discounts,
ARPA in and out (and KenLM reading ours), fitting through ``arlm train``. The family contract
(decoding, speculative drafting, checkpoints) is in test_contract.py."""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.cli import main as cli
from arlm_jax.convert import arpa
from arlm_jax.errors import ConfigError
from arlm_jax.models.ngram import NGramConfig, fit_tables
from arlm_jax.models.ngram import counts as C
from arlm_jax.models.ngram import tables
from arlm_jax.models.ngram.query import query
from ngram_reference import Reference

V = 10
SMOOTHINGS = ("modified_kn", "kn", "add_k")


def markov(n: int, seed: int = 0, vocab: int = V, peak: float = 0.3) -> np.ndarray:
    """n tokens of a random first-order Markov chain (skewed transitions: a mix of frequent and
    rare n-grams, so every count-of-count up to 4 is non-zero)."""
    rng = np.random.default_rng(seed)
    trans = np.cumsum(rng.dirichlet(np.full(vocab, peak), size=vocab), axis=1)
    toks = [0]
    for u in rng.random(n - 1):
        toks.append(min(int(np.searchsorted(trans[toks[-1]], u)), vocab - 1))
    return np.asarray(toks, np.int64)


TOKENS = markov(2500)


def contexts(order: int, q: int = 48, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """q contexts [q, N-1] (half seen in TOKENS, half random, so many unseen) and lengths in 0..N-1."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, V, size=(q, order - 1))
    starts = rng.integers(0, len(TOKENS) - order, size=q // 2)
    ctx[: q // 2] = np.stack([TOKENS[s:s + order - 1] for s in starts]) if order > 1 else ctx[: q // 2]
    ctx_len = rng.integers(0, order, size=q)
    ctx_len[:4] = order - 1
    return ctx, ctx_len


def probs64(cfg, ctx, ctx_len, tokens=TOKENS) -> tuple[np.ndarray, NGramConfig]:
    """float64 probabilities [Q, V] of float64 tables, under jax_enable_x64."""
    with jax.enable_x64(True):
        params, fitted, _ = fit_tables(cfg, tokens, np.float64)
        lp = query(jax.tree.map(jnp.asarray, params), fitted, jnp.asarray(ctx), jnp.asarray(ctx_len))
        assert lp.dtype == jnp.float64
        return np.exp(np.asarray(lp)), fitted


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_probabilities_equal_the_pure_python_reference(smoothing, order):
    cfg = NGramConfig(vocab_size=V, order=order, smoothing=smoothing).validate()
    ctx, ctx_len = contexts(order)
    got, _ = probs64(cfg, ctx, ctx_len)
    ref = Reference(TOKENS.tolist(), order, V, smoothing)
    want = np.array([[ref.prob(tuple(c[len(c) - n:]) if n else (), w) for w in range(V)]
                     for c, n in zip(ctx, ctx_len)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=0, atol=1e-6)  # seen and unseen contexts alike
    if order > 1:  # the contexts really lead to different distributions
        assert len(np.unique(got.round(6), axis=0)) >= 8


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_float32_distributions_sum_to_one(smoothing):
    """Every context (seen, unseen, short) of a 257-id byte model sums to 1 in float32 too."""
    text = np.frombuffer(open(C.__file__, "rb").read(), np.uint8).astype(np.int64)
    cfg = NGramConfig(vocab_size=257, order=4, smoothing=smoothing)
    fitted = A.fit(cfg, text)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(text) - 4, size=200)
    ctx = np.concatenate([np.stack([text[s:s + 3] for s in starts]), rng.integers(0, 257, size=(200, 3))])
    ctx_len = np.concatenate([np.full(200, 3), rng.integers(0, 4, size=200)])
    lp = np.asarray(query(fitted.params, fitted.cfg, jnp.asarray(ctx), jnp.asarray(ctx_len)))
    assert lp.dtype == np.float32
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(1), 1.0, rtol=0, atol=1e-6)


def test_discounts_equal_the_formulas_from_the_counts_of_counts():
    order = 3
    ref = Reference(TOKENS.tolist(), order, V)
    levels = C.count_ngrams(TOKENS, order, V)
    est = C.estimate(levels, "modified_kn")  # order 1 falls back (see below); 2 and 3 are estimated
    plain = C.estimate(levels, "kn")
    for n in (2, 3):  # order 1 of 10 ids has no count-of-count 1: see the fallback test
        cc = Counter(ref.adjusted[n].values())
        n1, n2, n3, n4 = cc[1], cc[2], cc[3], cc[4]
        assert min(n1, n2, n3, n4) > 0
        assert C.discounts(est.adjusted[n - 1], "modified_kn", n, fallback=False) == tuple(est.discounts[n - 1])
        y = n1 / (n1 + 2 * n2)
        np.testing.assert_allclose(est.discounts[n - 1],
                                   [1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3], rtol=1e-12)
        np.testing.assert_allclose(plain.discounts[n - 1], [y] * 3, rtol=1e-12)
        # and the adjusted counts are the continuation counts below the top order
        got = dict(zip(map(tuple, _grams(levels, n)), est.adjusted[n - 1].tolist()))
        assert got == {g: a for g, a in ref.adjusted[n].items()}


def _grams(levels, n):
    """Tokens [M_n, n] of order n's ids (walking the suffix links)."""
    toks = levels[0].first[:, None]
    for m in range(2, n + 1):
        toks = np.concatenate([levels[m - 1].first[:, None], toks[levels[m - 1].suffix]], axis=1)
    return toks


def test_discounts_that_cannot_be_estimated_fall_back_or_fail_in_one_line():
    levels = C.count_ngrams(TOKENS, 2, V)  # 10 unigrams seen hundreds of times: n1 = 0
    assert C.counts_of_counts(C.adjusted_counts(levels, "modified_kn")[0])[0] == 0
    est = C.estimate(levels, "modified_kn", fallback=True)
    np.testing.assert_array_equal(est.discounts[0], C.KENLM_FALLBACK)
    with pytest.raises(ConfigError) as err:
        C.estimate(levels, "modified_kn", fallback=False)
    msg = str(err.value)
    assert "order 1" in msg and "model.discount_fallback" in msg and "\n" not in msg


def test_fitting_is_deterministic_and_reads_the_token_cache_dtypes():
    cfg = NGramConfig(vocab_size=V, order=4)
    a = A.fit(cfg, TOKENS)
    b = A.fit(cfg, TOKENS.astype(np.uint16))  # the token cache's dtype
    assert a.cfg == b.cfg and a.cfg.sizes[0] == V and len(a.cfg.fanouts) == 3
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert "distinct n-grams" in a.note
    with pytest.raises(ConfigError, match="needs at least 4 training tokens"):
        A.fit(cfg, TOKENS[:3])


def test_an_unfitted_model_is_uniform():
    cfg = A.model_preset("tiny", "ngram")
    params = A.init(jax.random.key(0), cfg)
    logits, _ = A.forward(params, jnp.asarray([[1, 2, 3, 4]]), cfg)
    np.testing.assert_allclose(np.asarray(logits), -np.log(cfg.vocab_size), rtol=1e-6)


def test_fitted_tables_with_the_unfitted_config_are_refused():
    """The query reads cfg.fanouts words per context: the unfitted config's (1, ...) would
    silently read one word of each (a bench once decoded a 5-gram draft that way)."""
    cfg = NGramConfig(vocab_size=V, order=3).validate()
    fitted = A.fit(cfg, TOKENS)
    ctx = jnp.asarray([TOKENS[:6]])
    for call in (lambda c: A.forward(fitted.params, ctx, c),
                 lambda c: A.generate(fitted.params, c, ctx, jax.random.key(0), max_new_tokens=2)):
        call(fitted.cfg)
        with pytest.raises(ConfigError, match=r"model.sizes=\[\] does not match the parameter tables") as err:
            call(cfg)
        assert "\n" not in str(err.value)


def test_train_returns_the_fitted_config(tmp_path):
    from arlm_jax.config import DataConfig, MeshConfig, RunConfig, TrainConfig
    from arlm_jax.train.loop import train
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "m.py").write_text("".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(200)))
    run = RunConfig(preset="custom", model=NGramConfig(order=3),
                    train=TrainConfig(batch_size=4, seq_len=16, eval_batches=1, progress=False, sample_tokens=0,
                                      out_dir=str(tmp_path / "run")),
                    data=DataConfig(corpus=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache")),
                    mesh=MeshConfig(devices=1)).validate()
    res = train(run, out=io.StringIO())
    assert res.run.model == dataclasses.replace(run.model, sizes=res.run.model.sizes, fanouts=res.run.model.fanouts)
    assert len(res.run.model.sizes) == 3 and res.run.model.sizes[1] > 1
    logits, _ = A.forward(res.state.params, jnp.asarray([[100, 101, 102]]), res.run.model)
    np.testing.assert_allclose(np.exp(np.asarray(logits, np.float64)).sum(-1), 1.0, atol=1e-5)


def test_bad_sizes_are_one_line():
    with pytest.raises(ConfigError, match="model.sizes has 2 entries"):
        NGramConfig(vocab_size=V, order=3, sizes=(V, 4), fanouts=(2, 2)).validate()


# ---- ARPA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 3, 5])
def test_arpa_round_trip_preserves_every_probability(tmp_path, order):
    cfg = NGramConfig(vocab_size=V, order=order).validate()
    params, fitted, _ = fit_tables(cfg, TOKENS, np.float64)
    path = arpa.write(tmp_path / "lm.arpa", params, fitted)
    back, cfg2 = arpa.read(path, V, np.float64)
    assert cfg2.sizes == fitted.sizes and cfg2.order == order
    for (t1, p1, g1), (t2, p2, g2) in zip(tables.grams_of(params, V), tables.grams_of(back, V)):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_allclose(p2, p1, rtol=1e-13)
        if g1 is not None:
            np.testing.assert_allclose(g2, g1, rtol=1e-13)
    ctx, ctx_len = contexts(order)
    with jax.enable_x64(True):
        a = query(jax.tree.map(jnp.asarray, params), fitted, jnp.asarray(ctx), jnp.asarray(ctx_len))
        b = query(jax.tree.map(jnp.asarray, back), cfg2, jnp.asarray(ctx), jnp.asarray(ctx_len))
        np.testing.assert_allclose(np.exp(np.asarray(b)), np.exp(np.asarray(a)), rtol=0, atol=1e-12)


def test_kenlm_scores_our_arpa_file_as_we_do(tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm package (pip install kenlm) reads ARPA files")
    order = 4  # KenLM needs at least a bigram model
    fitted = A.fit(NGramConfig(vocab_size=V, order=order), TOKENS)
    path = arpa.write(tmp_path / "lm.arpa", fitted.params, fitted.cfg)
    model = kenlm.Model(str(path))
    sent = markov(60, seed=9)  # text the model has not seen
    theirs = np.array([s[0] for s in model.full_scores(" ".join(map(str, sent)), bos=False, eos=False)])
    logits, _ = A.forward(fitted.params, jnp.asarray(sent[None, :-1]), fitted.cfg)  # P(sent[t+1] | ..sent[t])
    first = query(fitted.params, fitted.cfg, jnp.zeros((1, order - 1), jnp.int32), jnp.zeros((1,), jnp.int32))
    ours = np.concatenate([np.asarray(first)[0, sent[:1]], np.asarray(logits)[0, np.arange(59), sent[1:]]])
    np.testing.assert_allclose(theirs, ours / np.log(10), rtol=0, atol=2e-5)  # KenLM stores float32
    assert model.score(" ".join(map(str, sent)), bos=False, eos=False) == pytest.approx(theirs.sum(), abs=1e-4)


def test_arpa_errors_are_one_line(tmp_path):
    kn = A.fit(NGramConfig(vocab_size=V, order=2, smoothing="add_k"), TOKENS)
    with pytest.raises(ConfigError, match="not a backoff model"):
        arpa.write(tmp_path / "x.arpa", kn.params, kn.cfg)
    bad = tmp_path / "words.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\thello\n-1.0\t3\n\n\\end\\\n")
    with pytest.raises(ConfigError) as err:
        arpa.read(bad)
    assert "'hello' is not a token id" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "none.arpa").write_text("hello\n")
    with pytest.raises(ConfigError, match="not an ARPA file"):
        arpa.read(tmp_path / "none.arpa")


# ---- through the CLI ---------------------------------------------------------------------------
def test_arlm_train_fits_then_eval_generate_and_arpa_work_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"m{i}.py").write_text("".join(f"def g{j}(y):\n    return y * {j}\n" for j in range(50 + i)))
    run = tmp_path / "run"

    def arlm(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    out = arlm("train", "--model.family", "ngram", "--model.order", "5", "--data.corpus", corpus,
               "--train.out_dir", run, "--train.progress", "false", "--train.batch_size", "4",
               "--train.eval_batches", "2", "--train.sample_tokens", "12", "--train.sample_prompt", "def g",
               "--mesh.devices", "1")
    assert "fitted ngram on" in out and "discounts D1 D2 D3+" in out and "sample (temperature" in out
    saved = json.loads((run / "config.json").read_text())["model"]
    assert saved["family"] == "ngram" and len(saved["sizes"]) == 5 and saved["sizes"][0] == 257
    res = json.loads(arlm("eval", run, "--json", "--batches", "2"))
    assert 0 < res["bpb"] < 1.0  # the corpus repeats itself: a 5-gram predicts it well
    out = arlm("generate", "--checkpoint", run, "--prompt", "def g1", "--max-new-tokens", "8", "--temperature", "0")
    assert out.startswith("def g1")
    assert "beam" in arlm("generate", "--checkpoint", run, "--prompt", "def", "--max-new-tokens", "6",
                          "--beams", "2")
    # ARPA out and back in: the imported run scores exactly as the fitted one
    arlm("arpa", "export", run, tmp_path / "lm.arpa")
    arlm("arpa", "import", tmp_path / "lm.arpa", tmp_path / "imported")
    back = json.loads(arlm("eval", tmp_path / "imported", "--json", "--batches", "2", "--batch-size", "4",
                           "--corpus", corpus))
    for k in ("loss", "bpb", "accuracy"):
        np.testing.assert_allclose(back[k], res[k], rtol=1e-5)
    # a second fit of the same run is the same model: resuming a finished run changes nothing
    out = arlm("train", "--model.family", "ngram", "--model.order", "5", "--data.corpus", corpus,
               "--train.out_dir", run, "--train.progress", "false", "--train.batch_size", "4",
               "--train.eval_batches", "2", "--train.sample_tokens", "0", "--mesh.devices", "1", "--resume")
    assert f"resumed from step {1000}" in out
    # a changed order does not resume the other model
    code = cli.main(["train", "--model.family", "ngram", "--model.order", "4", "--data.corpus", str(corpus),
                     "--train.out_dir", str(run), "--train.progress", "false", "--mesh.devices", "1", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "model.order=4 does not match" in err and err.count("\n") == 1


def test_bfloat16_queries_are_close_to_float32():
    fitted = A.fit(NGramConfig(vocab_size=V, order=3), TOKENS)
    cfg16 = dataclasses.replace(fitted.cfg, dtype="bfloat16")
    toks = jnp.asarray(TOKENS[None, 100:140])
    a = np.exp(np.asarray(A.forward(fitted.params, toks, fitted.cfg)[0]))
    b = np.exp(np.asarray(A.forward(fitted.params, toks, cfg16)[0]))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, rtol=0, atol=0.01)  # bf16: 8 significant bits
