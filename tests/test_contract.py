"""The family contract: one suite, parametrised over model families, through the public API only.

Every test here calls ``arlm_jax.init/forward/generate/beam_search/speculative_generate``,
``family_of(cfg)``'s interface (models/api.py) and the training loop, never a family's
internals, so a new family joins by adding a ``Case`` to CASES (docs/model-families.md).
Shapes are tiny and shared between tests (same config, batch, prompt length and
max_new_tokens), so the jitted programs compile once and are reused.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.checkpoint import Checkpointer
from arlm_jax.config import DataConfig, MeshConfig, RunConfig, from_dict, to_dict
from arlm_jax.data.tokenizer import decode, load_tokenizer
from arlm_jax.decode.sampling import process
from arlm_jax.errors import ConfigError
from arlm_jax.models.bigram import BigramConfig
from arlm_jax.parallel import hosts, mesh as mesh_lib, shardings as sh
from arlm_jax.train import optim, step as T
from arlm_jax.train.loop import train
from arlm_jax.train.run_dir import abstract_state, load_run
from conftest import randomise, tiny
from test_train import _tc, corpus  # noqa: F401  (corpus is a fixture)


# ---- the cases -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: Callable[[], Any]  # -> a validated model config
    params: Callable[[Any, int], Any] | None = None  # (config, seed) -> random params, non-flat logits
    # for a family fitted to data: (config, seed) -> (fitted config, params), fitted to a corpus
    # drawn with that seed
    fitted: Callable[[Any, int], tuple[Any, Any]] | None = None


def _transformer_params(cfg, seed):
    return randomise(A.init(jax.random.key(seed), cfg), seed=seed + 1, scale=0.3)


def _scaled_params(cfg, seed):  # the bigram's init std (0.02) gives near-uniform logits
    return jax.tree.map(lambda x: 50.0 * x, A.init(jax.random.key(seed), cfg))


def _recurrent_params(cfg, seed):  # a larger embedding (and head) than the init's: non-flat logits
    params = A.init(jax.random.key(seed), cfg)
    big = {k: jax.tree.map(lambda x: 20.0 * x, params[k]) for k in ("embed", "lm_head") if k in params}
    return {**params, **big}


def _ngram_fitted(cfg, seed):
    """Fitted to 3,000 tokens of a random Markov chain (peaked transitions: non-flat logits)."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(cfg.vocab_size, 0.2), size=cfg.vocab_size)
    toks = [0]
    for u in rng.random(3000):
        toks.append(min(int(np.searchsorted(np.cumsum(trans[toks[-1]]), u)), cfg.vocab_size - 1))
    fitted = A.fit(cfg, np.asarray(toks))
    return fitted.cfg, fitted.params


def _recurrent(family: str, **kw):
    return lambda: dataclasses.replace(A.model_preset("tiny", family), **kw).validate()


CASES = [
    Case("transformer-rope", lambda: tiny(pos="rope", n_kv_heads=2), _transformer_params),
    Case("transformer-learned", lambda: tiny(), _transformer_params),
    Case("bigram", lambda: BigramConfig(vocab_size=64, d_model=16, decay=0.5).validate(), _scaled_params),
    Case("lstm", _recurrent("lstm"), _recurrent_params),
    Case("gru", _recurrent("gru"), _recurrent_params),
    Case("rnn", _recurrent("rnn"), _recurrent_params),
    Case("lstm-untied", _recurrent("lstm", tie_embeddings=False, n_layers=3, d_hidden=48, history=4),
         _recurrent_params),
    Case("ngram", lambda: A.model_preset("tiny", "ngram"), fitted=_ngram_fitted),
]
BY_NAME = {c.name: c for c in CASES}


def _first_of_each_family(cases: list[Case]) -> list[Case]:
    firsts: dict[str, Case] = {}
    for c in cases:
        firsts.setdefault(c.config().family, c)
    return list(firsts.values())


# The first case of each family, for the slow tests (whole training runs, big sampled batches).
FAMILY_CASES = _first_of_each_family(CASES)

per_case = pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
per_family = pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c.name)


def _model(case: Case, seed: int = 0, **overrides) -> tuple[Any, Any]:
    """The case's config (with ``overrides`` of fields every family's config has: vocab_size,
    dtype) and its random parameters for ``seed``."""
    cfg = case.config()
    dtype = overrides.pop("dtype", None)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides).validate()
    if case.fitted is not None:
        cfg, params = _fit(case, cfg, seed)
    else:
        params = _params(case, cfg, seed)
    return (cfg if dtype is None else dataclasses.replace(cfg, dtype=dtype).validate()), params


@functools.cache
def _fit(case: Case, cfg, seed: int):
    return case.fitted(cfg, seed)


@functools.cache
def _params(case: Case, cfg, seed: int):
    # Eagerly: a jitted init + randomise compiles for seconds per config, while the eager ops'
    # executables are shared by every config and seed after the first.
    return case.params(cfg, seed)


@functools.cache
def _full(cfg):
    """The jitted teacher-forced forward of ``cfg``: tokens [B, T] -> logits [B, T, V]."""
    return jax.jit(lambda p, x: A.forward(p, x, cfg)[0])


FULL_SHAPE = (2, 20)  # every full forward of a case's config reads [2, 20]: one compile per config
# Shared decoding inputs: ragged rows of two lengths (so "alone" compiles twice, not four times).
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [20, 21, 22, 23, 24, 25, 26, 27, 28]]
N_NEW = 8


def _ragged():
    return A.pad_prompts(PROMPTS, bucket=16)  # int32 [4, 16], lengths [3, 9, 3, 9]


def _needs(op: str, *cfgs) -> None:
    """Skip the test for a family that lacks the optional operation ``op`` it needs."""
    for cfg in cfgs:
        if getattr(A.family_of(cfg), op) is None:
            pytest.skip(f"model.family={cfg.family!r} has no {op!r}")


def _needs_steps(cfg) -> None:
    """Skip the test for a family fitted by ``Family.fit`` rather than trained by steps."""
    if A.family_of(cfg).fit is not None:
        pytest.skip(f"model.family={cfg.family!r} is fitted, not trained by steps")


def _greedy(params, cfg):
    toks, lens = _ragged()
    return A.generate(params, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens)


# ---- the model function ----------------------------------------------------------------------
@per_case
def test_causality(case):
    cfg, params = _model(case)
    toks = jax.random.randint(jax.random.key(3), FULL_SHAPE, 0, cfg.vocab_size)
    base = np.asarray(_full(cfg)(params, toks))
    for t in (0, 5, 18):
        changed = toks.at[:, t + 1:].set((toks[:, t + 1:] + 7) % cfg.vocab_size)
        out = np.asarray(_full(cfg)(params, changed))
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


@functools.cache
def _decoders(cfg):
    """The jitted ``Family.prefill`` and one-token ``forward`` with a state, of ``cfg``."""
    return (jax.jit(A.family_of(cfg).prefill, static_argnums=(1, 4)),
            jax.jit(lambda p, t, s: A.forward(p, t, cfg, s)))


def _stepwise(params, cfg, seqs: np.ndarray, lens: np.ndarray, n_steps: int) -> np.ndarray:
    """Ragged prefill of seqs[:, :8] (row r: its first lens[r] tokens, right-padded with 0), then
    ``forward`` one token at a time with the state; -> the logits of each row's positions
    lens[r]-1 .. lens[r]-1+n_steps, float32 [B, n_steps + 1, V]."""
    dp = A.family_of(cfg).decode_params(params, cfg)
    prompts = np.where(np.arange(8) < lens[:, None], seqs[:, :8], 0)
    prefill, step = _decoders(cfg)
    state, logits = prefill(dp, cfg, jnp.asarray(prompts), jnp.asarray(lens), int(lens.max()) + n_steps)
    out = [np.asarray(logits)]
    rows = np.arange(len(lens))
    for i in range(n_steps):  # row r reads its own next token, at position lens[r] + i
        logits, state = step(dp, jnp.asarray(seqs[rows, lens + i][:, None]), state)
        out.append(np.asarray(logits[:, 0]))
    return np.stack(out, 1)


def _stepwise_case(cfg, params):
    seqs = np.asarray(jax.random.randint(jax.random.key(1), FULL_SHAPE, 0, cfg.vocab_size))
    lens = np.array([3, 8])
    full = np.asarray(_full(cfg)(params, jnp.asarray(seqs)))  # [2, 20, V]
    at = lens[:, None] - 1 + np.arange(11)[None]  # the positions _stepwise returns
    return _stepwise(params, cfg, seqs, lens, 10), full[np.arange(2)[:, None], at], full


@per_case
def test_stepwise_decoding_equals_the_full_forward(case):
    cfg, params = _model(case)
    steps, want, _ = _stepwise_case(cfg, params)
    scale = np.abs(want).max()
    np.testing.assert_allclose(steps, want, rtol=0, atol=2e-5 * max(scale, 1.0))


@per_case
def test_bfloat16_stepwise_decoding_is_close_to_the_full_forward_and_to_float32(case):
    cfg32, params = _model(case)
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16").validate()
    steps, want, full16 = _stepwise_case(cfg16, params)
    _, want32, full32 = _stepwise_case(cfg32, params)
    assert steps.dtype == np.float32 and not np.array_equal(full16, full32)  # bf16 really was used
    # bf16 keeps 8 significant bits (0.4%); measured: cached vs full bf16 <= 0.5% of the largest
    # logit, bf16 vs float32 <= 1.2% (float32 cached vs full: 4e-7)
    scale = np.abs(full32).max()
    np.testing.assert_allclose(steps, want, rtol=0, atol=0.015 * scale)
    np.testing.assert_allclose(steps, want32, rtol=0, atol=0.03 * scale)
    np.testing.assert_allclose(full16, full32, rtol=0, atol=0.03 * scale)


# ---- decoding --------------------------------------------------------------------------------
@per_case
def test_ragged_rows_of_generate_equal_the_rows_alone(case):
    cfg, params = _model(case)
    batch = _greedy(params, cfg)
    for r, p in enumerate(PROMPTS):
        alone = A.generate(params, cfg, jnp.asarray([p]), jax.random.key(0), max_new_tokens=N_NEW)
        assert batch.tokens[r].tolist() == alone.tokens[0].tolist()
        np.testing.assert_allclose(batch.logprobs[r], alone.logprobs[0], atol=1e-5)


@per_case
def test_greedy_generate_equals_an_argmax_loop_over_the_full_forward(case):
    cfg, params = _model(case)
    prompt = PROMPTS[1]
    out = A.generate(params, cfg, jnp.asarray([prompt]), jax.random.key(0), max_new_tokens=N_NEW)
    ids = list(prompt)
    buf = np.zeros(FULL_SHAPE, np.int32)  # the text left-aligned in row 0; causal: the rest is unread
    for _ in range(N_NEW + 1):
        buf[0, :len(ids)] = ids
        logits = _full(cfg)(params, jnp.asarray(buf))[0]
        ids.append(int(np.argmax(logits[len(ids) - 1])))
    new = ids[len(prompt):-1]
    assert out.tokens[0].tolist() == new
    assert len(set(new)) > 1  # not a flat argmax repeating one token
    lp = jax.nn.log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + N_NEW])  # the last pass read them all
    np.testing.assert_allclose(out.logprobs[0], lp[jnp.arange(N_NEW), out.tokens[0]], atol=1e-5)


@per_case
def test_beam_search_width_one_is_greedy(case):
    cfg, params = _model(case)
    _needs("reorder", cfg)
    toks, lens = _ragged()
    greedy = _greedy(params, cfg)
    beam = A.beam_search(params, cfg, toks, beams=1, max_new_tokens=N_NEW, lengths=lens)
    np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
    np.testing.assert_allclose(beam.logprobs[:, 0], greedy.logprobs.sum(1), atol=1e-4)


# (target, draft): each family drafting for itself (other weights), and across families: bigram,
# LSTM and GRU drafts for a Transformer target, a Transformer draft for an LSTM target, and an
# n-gram draft for a Transformer, an LSTM and a GRU.
CROSS_PAIRS = [(BY_NAME[t], BY_NAME[d]) for t, d in (("transformer-rope", "bigram"), ("transformer-rope", "lstm"),
                                                     ("transformer-learned", "gru"), ("lstm", "transformer-rope"),
                                                     ("transformer-rope", "ngram"), ("lstm", "ngram"),
                                                     ("gru", "ngram"))]
DRAFT_PAIRS = [(c, c) for c in FAMILY_CASES] + CROSS_PAIRS


@pytest.mark.parametrize("target,draft", DRAFT_PAIRS, ids=lambda c: c.name)
def test_greedy_speculative_equals_greedy_generate(target, draft):
    cfg, tp = _model(target)
    dcfg, dp = _model(draft, seed=5, vocab_size=cfg.vocab_size)
    _needs("rollback", cfg, dcfg)
    toks, lens = _ragged()
    plain = _greedy(tp, cfg)
    spec = A.speculative_generate(tp, cfg, dp, dcfg, toks, jax.random.key(1), k=2, max_new_tokens=N_NEW,
                                  lengths=lens)
    np.testing.assert_array_equal(spec.out.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.out.lengths, plain.lengths)
    np.testing.assert_allclose(spec.out.logprobs, plain.logprobs, atol=1e-4)


# Sampled: each family drafting for itself, a recurrent draft for a Transformer target and the
# other way round, and an n-gram draft for a Transformer.
SAMPLED_PAIRS = [(c, c) for c in FAMILY_CASES] + [(BY_NAME["transformer-rope"], BY_NAME["lstm"]),
                                                  (BY_NAME["gru"], BY_NAME["transformer-learned"]),
                                                  (BY_NAME["transformer-rope"], BY_NAME["ngram"])]


@pytest.mark.parametrize("target,draft", SAMPLED_PAIRS, ids=lambda c: c.name)
def test_sampled_speculative_output_follows_the_target_distribution(target, draft):
    """Three sampled tokens over an 8-token vocabulary, 8,000 identical rows in one call: the
    empirical joint of (token 1, token 2) and of (token 2, token 3) against the exact target
    probabilities from the full forward (token 3 is an accepted draft, a residual draw after a
    rejection, or the next pass's first token after a rollback)."""
    v, n, sampler = 8, 8000, A.Sampler(temperature=1.0)
    cfg, tp = _model(target, seed=2, vocab_size=v)
    dcfg, dp = _model(draft, seed=7, vocab_size=v)
    _needs("rollback", cfg)
    prompt = [1, 3, 0, 2]
    spec = A.speculative_generate(tp, cfg, dp, dcfg, jnp.asarray([prompt] * n), jax.random.key(11), k=2,
                                  max_new_tokens=3, sampler=sampler)
    got = np.asarray(spec.out.tokens)
    seqs = np.array(list(itertools.product(range(v), repeat=3)))  # [512, 3]
    full = jnp.asarray(np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], 1))
    probs = np.asarray(jax.nn.softmax(process(_full(cfg)(tp, full), sampler)[1], -1), np.float64)
    t = len(prompt)
    joint = np.prod([probs[np.arange(len(seqs)), t - 1 + i, seqs[:, i]] for i in range(3)], 0)
    assert abs(joint.sum() - 1) < 1e-5
    joint = joint.reshape(v, v, v)
    for pair, want in (((0, 1), joint.sum(2)), ((1, 2), joint.sum(0))):
        want = want.reshape(-1)
        freq = np.bincount(got[:, pair[0]] * v + got[:, pair[1]], minlength=v * v) / n
        tv = 0.5 * np.abs(freq - want).sum()
        # The TV of n exact draws is about sum sqrt(p (1 - p) / (2 pi n)) (0.024-0.030 here), with a
        # spread of 12-14% of that (simulated), so 1.75x it is > 5 sigma; the draft's own
        # distribution is ~0.7 away, so a leak of a tenth of it fails.
        noise = np.sqrt(want * (1 - want) / (2 * np.pi * n)).sum()
        assert noise < 0.035 and tv < 1.75 * noise, (pair, tv, noise)
    assert float(np.mean(spec.acceptance_rate)) < 0.95  # the draft really was rejected sometimes


# ---- training, checkpoints, sharding ---------------------------------------------------------
def _run(tmp_path, corpus, cfg, **train_kw) -> RunConfig:
    train_kw = {"steps": 8, "batch_size": 4, "seq_len": 16, "eval_every": 4, "eval_batches": 1,
                "log_every": 1, "ckpt_every": 4, "progress": False, "sample_tokens": 0,
                "warmup_steps": 2, "out_dir": str(tmp_path / "run"), **train_kw}
    return RunConfig(preset="tiny", model=dataclasses.replace(cfg, vocab_size=257), train=_tc(**train_kw),
                     data=DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache")),
                     mesh=MeshConfig(devices=1)).validate()


@per_family
def test_resume_is_exact(case, tmp_path, corpus):
    """2N steps in one run == N steps, resume from the checkpoint, N steps: bitwise. (A family
    that fits has no steps to resume: its fit is deterministic, tested by its own tests.)"""
    _needs_steps(case.config())
    run = _run(tmp_path / "a", corpus, case.config())
    straight = train(run, out=io.StringIO())
    b_dir = tmp_path / "b" / "run"  # the "crashed" run: the folder up to the step-4 checkpoint
    shutil.copytree(tmp_path / "a" / "run", b_dir)
    shutil.rmtree(b_dir / "checkpoints" / "8")
    resumed = train(dataclasses.replace(run, train=dataclasses.replace(run.train, out_dir=str(b_dir))),
                    resume=True, out=io.StringIO())
    assert resumed.start_step == 4 and int(resumed.state.step) == 8
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _train_state(cfg, params, tc):
    """A train state with these params and a non-trivial optimizer state (one AdamW update), a
    fresh copy each call (train steps donate their state); -> (state, optimizer)."""
    make, opt = _state_maker(cfg, tc)
    return make(params), opt


@functools.cache
def _state_maker(cfg, tc):
    opt = optim.make_optimizer(tc, cfg)

    @jax.jit
    def make(params):
        _, opt_state = opt.update(params, opt.init(params), params)  # grads = params: any non-zero tree
        return T.TrainState(step=jnp.int32(3), params=jax.tree.map(jnp.copy, params), opt_state=opt_state)
    return make, opt


@per_family
def test_checkpoint_round_trip(case, tmp_path):
    cfg, params = _model(case)
    run = RunConfig(preset="tiny", model=cfg, train=_tc(out_dir=str(tmp_path))).validate()
    state, _ = _train_state(cfg, params, run.train)
    (tmp_path / "config.json").write_text(json.dumps(to_dict(run)))
    with Checkpointer(tmp_path) as ck:
        ck.save(3, state, {"step": 3, "config": to_dict(run)})
        ck.wait()
    with Checkpointer(tmp_path, read_only=True) as ck:
        restored, meta = ck.restore(abstract_state(run))
    loaded_run, loaded, meta2 = load_run(tmp_path)  # the config comes from the checkpoint's meta
    assert meta == meta2 == {"step": 3, "config": to_dict(run)} and loaded_run == run
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


MESH = (2, 2, 2)  # data x fsdp x tensor: every tiny shape divides it


@per_family
def test_sharded_train_step_and_generate_equal_one_device(case):
    cfg, params = _model(case)
    mesh = mesh_lib.make_mesh(*MESH)
    axes = A.family_of(cfg).param_axes
    if A.family_of(cfg).fit is None:  # a family that fits has no train step: generate only
        _sharded_train_steps_equal_one_device(cfg, params, mesh)

    toks, lens = _ragged()
    sharded = jax.device_put(params, A.param_shardings(params, axes(params), mesh))
    with jax.set_mesh(mesh):
        out = A.generate(sharded, cfg, toks, jax.random.key(0), max_new_tokens=N_NEW, lengths=lens)
    one = _greedy(params, cfg)
    np.testing.assert_array_equal(out.tokens, one.tokens)
    np.testing.assert_allclose(out.logprobs, one.logprobs, atol=1e-5)


def _sharded_train_steps_equal_one_device(cfg, params, mesh):
    tc = _tc(batch_size=8)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 17)).astype(np.int32)
    axes = A.family_of(cfg).param_axes

    def two_steps(step, state, batch):
        for _ in range(2):  # the second step reads the first's AdamW moments
            state, m = step(state, batch)
        return jax.device_get((state, m))

    state, opt = _train_state(cfg, params, tc)
    ref, ref_m = two_steps(T.make_train_step(cfg, tc, opt), state, {"tokens": jnp.asarray(tokens)})
    state, _ = _train_state(cfg, params, tc)  # the first copy was donated
    placed = jax.device_put(state, sh.state_shardings(state, axes(state.params), mesh))
    got, got_m = two_steps(T.make_train_step(cfg, tc, opt, mesh=mesh), placed,
                           {"tokens": hosts.global_batch(tokens, 8, mesh)})
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=2e-5)
    np.testing.assert_allclose(got_m["grad_norm"], ref_m["grad_norm"], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---- the optional operations: fit, and families that lack reorder / rollback ------------------
def _register(family: A.Family) -> A.Family:
    """Register a test family once, even if pytest imports this module twice."""
    return A.get_family(family.name) if family.name in A.families() else A.register(family)


FIT_CALLS: list[tuple] = []


def _fit_counts(cfg, tokens, train_cfg) -> A.Fitted:
    """Add-one bigram counts as bigram params: with decay 0 and d_model = vocab_size, embed = I
    makes the state the one-hot of the last token, and out = log P(next | last)."""
    tokens = np.asarray(tokens, np.int64)
    counts = np.ones((cfg.vocab_size, cfg.vocab_size))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1.0)
    params = {"embed": jnp.eye(cfg.vocab_size, dtype=jnp.float32),
              "out": jnp.asarray(np.log(counts / counts.sum(1, keepdims=True)), jnp.float32)}
    FIT_CALLS.append((cfg, train_cfg, params))  # the test checks what train() passed
    return A.Fitted(params=params, cfg=cfg, note="add-one bigram counts")


COUNTED = _register(dataclasses.replace(A.get_family("bigram"), name="bigram-counted", fit=_fit_counts))
FIXED = _register(dataclasses.replace(A.get_family("bigram"), name="bigram-fixed", reorder=None, rollback=None))


def test_fit_replaces_the_optimizer_steps(tmp_path, corpus):
    cfg = BigramConfig(family="bigram-counted", vocab_size=257, d_model=257, decay=0.0).validate()
    run = _run(tmp_path, corpus, cfg, steps=5, sample_tokens=6, sample_prompt="def ",
               sample_temperature=0.0)
    FIT_CALLS.clear()
    res = train(run, out=io.StringIO())
    assert len(FIT_CALLS) == 1 and FIT_CALLS[0][:2] == (run.model, run.train)
    fitted = FIT_CALLS[0][2]
    for a, b in zip(jax.tree.leaves(res.state.params), jax.tree.leaves(fitted)):  # no optax step moved them
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["val"] and rows[0]["step"] == 5  # evaluated, never stepped
    assert res.val["loss"] < np.log(257) - 1  # the counts beat a uniform model by > 1 nat
    with Checkpointer(tmp_path / "run", read_only=True) as ck:
        assert ck.all_steps() == [5]
    ids, out = [ord(" ")], np.asarray(fitted["out"])  # greedy sample: the most frequent successors
    for _ in range(6):
        ids.append(int(np.argmax(out[ids[-1]])))
    assert res.sample == "def " + decode(load_tokenizer("byte"), ids[1:])
    _, loaded, meta = load_run(tmp_path / "run")
    assert meta["step"] == 5
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(fitted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_operation_a_family_lacks_is_a_one_line_error():
    cfg = BigramConfig(family="bigram-fixed", vocab_size=64, d_model=16).validate()
    params = A.init(jax.random.key(0), cfg)
    prompts = jnp.asarray([[1, 2, 3]])
    calls = [(lambda: A.beam_search(params, cfg, prompts, beams=2, max_new_tokens=4), "beam search", "reorder"),
             (lambda: A.speculative_generate(params, cfg, params, cfg, prompts, jax.random.key(0),
                                             max_new_tokens=4), "speculative decoding", "rollback")]
    for call, who, op in calls:
        with pytest.raises(ConfigError) as err:
            call()
        msg = str(err.value)
        assert who in msg and f"'{op}'" in msg and "model.family='bigram-fixed'" in msg and "\n" not in msg
    # where neither is needed the family decodes as usual: greedy generate
    assert A.generate(params, cfg, prompts, jax.random.key(0), max_new_tokens=2).tokens.shape == (1, 2)


def test_an_unknown_family_lists_the_registered_ones():
    for call in (lambda: A.get_family("nope"), lambda: from_dict({"model": {"family": "nope"}})):
        with pytest.raises(ConfigError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith("model.family='nope' is unknown; choose one of") and "\n" not in msg
        assert all(name in msg for name in A.families())
        assert {"transformer", "bigram", "bigram-counted", "bigram-fixed"} <= set(A.families())
