"""The optimizer, the pure train step, and the training loop (resume, divergence, data)."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import arlm_jax as A
from arlm_jax.models.transformer.axes import param_axes as AX
from arlm_jax.train import optim as T_optim, step as T
from arlm_jax.checkpoint import Checkpointer
from arlm_jax.errors import ConfigError
from arlm_jax.config import DataConfig, MeshConfig, RunConfig, TrainConfig
from arlm_jax.train.loop import TrainingDiverged, train
from conftest import tiny


def _tc(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), **kw).validate()


# ---- pure pieces ----------------------------------------------------------------------------
def test_lr_schedules():
    cos = T_optim.lr_schedule(_tc(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1))
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(10)) == pytest.approx(1.0)
    assert float(cos(100)) == pytest.approx(0.1, abs=1e-6)
    assert float(cos(55)) == pytest.approx(0.55, abs=1e-6)  # half-way down the cosine
    wsd = T_optim.lr_schedule(_tc(steps=100, warmup_steps=10, lr=1.0, schedule="wsd", decay_fraction=0.2))
    assert float(wsd(50)) == pytest.approx(1.0) and float(wsd(79)) == pytest.approx(1.0)
    assert float(wsd(90)) == pytest.approx(0.55) and float(wsd(100)) == pytest.approx(0.1)
    const = T_optim.lr_schedule(_tc(steps=100, warmup_steps=0, lr=0.5, schedule="constant"))
    assert float(const(0)) == float(const(99)) == 0.5


def test_weight_decay_mask_spares_norms_biases_embeddings():
    params = A.init(jax.random.key(0), tiny(pos="relative"))
    mask = T_optim.weight_decay_mask(AX(params))
    assert mask["blocks"]["attn"]["wq"] and mask["blocks"]["mlp"]["w_in"]
    assert not mask["blocks"]["attn"]["bq"] and not mask["blocks"]["attn_norm"]["scale"]
    assert not mask["embed"]["tok"] and not mask["rel_bias"]
    assert all(jax.tree.leaves(T_optim.weight_decay_mask(AX(params), decay_all=True)))


def test_gradient_accumulation_equals_full_batch():
    cfg = tiny()
    toks = jax.random.randint(jax.random.key(1), (4, 9), 0, cfg.vocab_size)
    mask = jnp.ones((4, 8)).at[0, :5].set(0.0)  # uneven real-token counts per micro-batch
    params = A.init(jax.random.key(0), cfg)
    grads = lambda tc: jax.jit(lambda p, b: T._grads(p, b, cfg, tc, jax.random.key(0)))  # noqa: E731
    g1, m1 = grads(_tc(grad_accum=1))(params, {"tokens": toks, "mask": mask})
    g4, m4 = grads(_tc(grad_accum=4, batch_size=4))(params, {"tokens": toks, "mask": mask})
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):  # |g| ~ 0.2: float32 order ~ 3e-8
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-7)
    np.testing.assert_allclose(m1["nll_sum"], m4["nll_sum"], rtol=1e-6)


def test_train_step_matches_a_hand_written_optax_update():
    # a large eps keeps Adam's first step away from sign(g), so clipping and decay both show
    cfg, tc = tiny(), _tc(lr=1e-2, warmup_steps=0, schedule="constant", grad_clip=0.05, eps=1e-3,
                          weight_decay=0.5, optimizer="adamw")
    opt = T_optim.make_optimizer(tc, cfg)
    state = T.init_state(jax.random.key(0), cfg, opt)
    toks = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
    grads = jax.jit(jax.grad(lambda p: A.loss_fn(p, {"tokens": toks}, cfg)[0]))(state.params)
    norm = float(optax.tree.norm(grads))
    assert norm > 0.05  # clipping is active
    clipped = jax.tree.map(lambda g: g * 0.05 / norm, grads)
    ref = optax.adamw(1e-2, b1=tc.beta1, b2=tc.beta2, eps=tc.eps, weight_decay=tc.weight_decay,
                      mask=lambda p: T_optim.weight_decay_mask(AX(p)))
    expected = jax.jit(lambda p, g: optax.apply_updates(p, ref.update(g, ref.init(p), p)[0]))(
        state.params, clipped)
    new, metrics = T.make_train_step(cfg, tc, opt)(state, {"tokens": toks})
    assert int(new.step) == 1 and float(metrics["lr"]) == pytest.approx(1e-2)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)


# ---- the loop ---------------------------------------------------------------------------------
def _run(tmp_path, corpus, **train_kw) -> RunConfig:
    train_kw = {"steps": 12, "batch_size": 4, "eval_every": 6, "eval_batches": 2, "log_every": 3,
                "ckpt_every": 6, "progress": False, "sample_tokens": 0, "warmup_steps": 2,
                "out_dir": str(tmp_path / "run"), **train_kw}
    return RunConfig(preset="tiny", model=tiny(vocab_size=257), train=_tc(**train_kw),
                     data=DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache")),
                     mesh=MeshConfig(devices=1)).validate()


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(6):
        (root / f"doc{i}.txt").write_text("".join(f"def f{j}(x): return x + {j}\n" for j in range(i, i + 40)))
    return root


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_resume_is_exact(tmp_path, corpus):
    """2N steps straight == N steps, restore, N steps (float32, 1e-6), including dropout."""
    straight = _run(tmp_path / "a", corpus, steps=12, ckpt_every=6, log_every=1)
    straight = dataclasses.replace(straight, model=dataclasses.replace(straight.model, dropout=0.1))
    res_a = train(straight, out=open("/dev/null", "w"))
    # the "crashed" run: the same folder up to the step-6 checkpoint, nothing after it
    b_dir = tmp_path / "b" / "run"
    shutil.copytree(tmp_path / "a" / "run", b_dir)
    shutil.rmtree(b_dir / "checkpoints" / "12")
    resumed = dataclasses.replace(straight, train=dataclasses.replace(straight.train, out_dir=str(b_dir)))
    res_b = train(resumed, resume=True, out=open("/dev/null", "w"))
    assert res_b.start_step == 6
    la, lb = _losses(tmp_path / "a" / "run"), _losses(b_dir)
    assert sorted(lb) == list(range(1, 13))  # rows past the checkpoint were replaced, not doubled
    np.testing.assert_allclose([lb[s] for s in range(7, 13)], [la[s] for s in range(7, 13)], rtol=0, atol=1e-6)
    for x, y in zip(jax.tree.leaves(res_a.state.params), jax.tree.leaves(res_b.state.params)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_tiny_repetitive_corpus_is_learned(tmp_path):
    (tmp_path / "rep.txt").write_text("abcdefgh" * 400)
    run = _run(tmp_path, tmp_path / "rep.txt", steps=150, lr=1e-2, warmup_steps=10, eval_every=150,
               ckpt_every=150, log_every=50, batch_size=8, sample_tokens=16, sample_prompt="abc",
               sample_temperature=0.0)
    res = train(run, out=open("/dev/null", "w"))
    assert res.val["loss"] < 0.05 and res.val["accuracy"] > 0.99
    assert res.sample.startswith("abcdefghabcdefgh")
    try:
        import matplotlib  # noqa: F401  (the optional [plot] extra)
        assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    except ImportError:
        assert not (tmp_path / "run" / "loss.png").exists()


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    from arlm_jax.train.run_dir import plot_losses
    (tmp_path / "m.jsonl").write_text('{"split": "train", "step": 1, "loss": 2.0}\n')
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import now fails
    assert "matplotlib is not installed" in plot_losses(tmp_path / "m.jsonl", tmp_path / "l.png")
    assert not (tmp_path / "l.png").exists()


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    real = T.make_train_step

    def poisoned(*args, **kw):  # the loss turns NaN from step 8 on
        step = real(*args, **kw)

        def wrapped(state, batch):
            new, m = step(state, batch)
            return new, m | {"loss": jnp.where(new.step >= 8, jnp.nan, m["loss"])}
        return wrapped

    monkeypatch.setattr("arlm_jax.train.loop.make_train_step", poisoned)
    run = _run(tmp_path, corpus, ckpt_every=3, log_every=1)
    with pytest.raises(TrainingDiverged, match=r"loss=nan .* at step 8; stopped.*step 6"):
        train(run, out=open("/dev/null", "w"))
    ck = Checkpointer(tmp_path / "run", read_only=True)
    assert ck.all_steps() == [3, 6]
    assert ck.read_meta(6)["step"] == 6


def test_resume_with_another_config_is_refused_and_loses_nothing(tmp_path, corpus):
    run = _run(tmp_path, corpus, steps=6)
    train(run, out=open("/dev/null", "w"))
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        train(run, out=open("/dev/null", "w"))
    other = dataclasses.replace(run, model=dataclasses.replace(run.model, n_layers=3))
    with pytest.raises(ConfigError, match=r"--resume: model.n_layers=3 does not match the checkpoint's 2"):
        train(other, resume=True, out=open("/dev/null", "w"))
    lr = dataclasses.replace(run, train=dataclasses.replace(run.train, lr=1e-4))
    with pytest.raises(ConfigError, match=r"train.lr=0.0001"):
        train(lr, resume=True, out=open("/dev/null", "w"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    # logistics may change: a finished run resumes to its evaluation at once
    more_logs = dataclasses.replace(run, train=dataclasses.replace(run.train, log_every=1))
    assert train(more_logs, resume=True, out=open("/dev/null", "w")).start_step == 6


def test_vocab_smaller_than_tokenizer_is_refused(tmp_path, corpus):
    run = _run(tmp_path, corpus)
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=64))
    with pytest.raises(ConfigError, match="model.vocab_size=64 is smaller than the tokenizer's 257"):
        train(run, out=open("/dev/null", "w"))
