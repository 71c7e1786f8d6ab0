"""The recurrent families (rnn, lstm, gru) beyond the contract suite: each cell against a slow
numpy reference step by step and against flax.nnx's cells, the whole stacked model against
numpy, gradients over a long sequence, the rollback ring's limit, and the AWD regularisers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import arlm_jax as A
from arlm_jax.errors import ConfigError
from arlm_jax.models.rnn import cells
from arlm_jax.models.rnn.config import RecurrentConfig

FAMILIES = ("rnn", "lstm", "gru")


# ---- slow numpy twins ------------------------------------------------------------------------
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_cell(kind: str, p: dict, carry: tuple, x: np.ndarray) -> tuple:
    """One step in float64, written from the equations (cells.py's docstring), gate by gate."""
    w_i, w_h, b = (np.asarray(p[k], np.float64) for k in ("w_i", "w_h", "b"))
    h = carry[0]
    hidden = w_h.shape[0]
    pre_x, pre_h = x @ w_i + b, h @ w_h
    gate = lambda a, j: a[:, j * hidden:(j + 1) * hidden]  # noqa: E731
    if kind == "rnn":
        return (np.tanh(pre_x + pre_h),)
    if kind == "lstm":
        c = carry[1]
        i, f, g, o = (gate(pre_x + pre_h, j) for j in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        return _sigmoid(o) * np.tanh(c), c
    r = _sigmoid(gate(pre_x, 0) + gate(pre_h, 0))
    z = _sigmoid(gate(pre_x, 1) + gate(pre_h, 1))
    n = np.tanh(gate(pre_x, 2) + r * (gate(pre_h, 2) + np.asarray(p["b_hn"], np.float64)))
    return ((1 - z) * n + z * h,)


def np_forward(params: dict, tokens: np.ndarray, cfg: RecurrentConfig) -> np.ndarray:
    """The stacked model in float64, one time step and one layer at a time -> logits [B, T, V]."""
    embed = np.asarray(params["embed"], np.float64)
    b, t = tokens.shape
    carries = [tuple(np.zeros((b, h)) for _ in cells.CARRY_PARTS[cfg.family]) for h in cfg.hidden_sizes()]
    out = []
    for s in range(t):
        x = embed[tokens[:, s]]
        for i, p in enumerate(params["layers"]):
            carries[i] = np_cell(cfg.family, p, carries[i], x)
            x = carries[i][0]
        w = embed.T if cfg.tie_embeddings else np.asarray(params["lm_head"]["w"], np.float64)
        out.append(x @ w)
    return np.stack(out, 1)


def _cfg(family: str, **kw) -> RecurrentConfig:
    return dataclasses.replace(A.model_preset("tiny", family), **kw).validate()


def _random_layer(kind: str, key, n_in: int, hidden: int) -> dict:
    g = cells.GATES[kind]
    k = jax.random.split(key, 4)
    p = {"w_i": jax.random.normal(k[0], (n_in, g * hidden)) * 0.5, "w_h": jax.random.normal(k[1], (hidden, g * hidden)) * 0.5,
         "b": jax.random.normal(k[2], (g * hidden,)) * 0.5}
    if kind == "gru":
        p["b_hn"] = jax.random.normal(k[3], (hidden,)) * 0.5
    return p


# ---- cells -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAMILIES)
def test_each_cell_equals_numpy_step_by_step(kind):
    b, n_in, hidden, t = 3, 5, 7, 12
    p = _random_layer(kind, jax.random.key(0), n_in, hidden)
    x = np.asarray(jax.random.normal(jax.random.key(1), (t, b, n_in)))
    carry0 = tuple(np.asarray(jax.random.normal(jax.random.key(2 + i), (b, hidden))) * 0.5
                   for i in range(len(cells.CARRY_PARTS[kind])))
    _, ys = cells.layer(kind, p, jnp.asarray(x, jnp.float32), tuple(jnp.asarray(c, jnp.float32) for c in carry0))
    ref = carry0
    for s in range(t):
        ref = np_cell(kind, p, ref, x[s])
        for got, want in zip(ys, ref):
            np.testing.assert_allclose(np.asarray(got[s]), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("kind", FAMILIES)
def test_the_batched_backward_pass_equals_autodiff_of_the_plain_scan(kind):
    """``recurrence``'s own VJP (weight gradients as one matmul after the loop) against autodiff
    of ``scan_layer``: every parameter, the input and the initial carry, with a loss on every
    carry part (the LSTM's cell state too)."""
    b, n_in, hidden, t = 3, 5, 6, 9
    p = _random_layer(kind, jax.random.key(7), n_in, hidden)
    x = jax.random.normal(jax.random.key(8), (t, b, n_in))
    carry0 = tuple(jax.random.normal(jax.random.key(9 + i), (b, hidden)) * 0.5
                   for i in range(len(cells.CARRY_PARTS[kind])))
    weights = [jax.random.normal(jax.random.key(20 + i), (t, b, hidden)) for i in range(len(carry0))]

    def loss(run, p, x, c0):
        ys = run(kind, p, x, c0)
        return sum(jnp.sum(w * jnp.sin(y)) for w, y in zip(weights, ys))

    fast = jax.grad(lambda *a: loss(lambda *b: cells.layer(*b)[1], *a), argnums=(0, 1, 2))(p, x, carry0)
    slow = jax.grad(lambda *a: loss(cells.scan_layer, *a), argnums=(0, 1, 2))(p, x, carry0)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(slow)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5, err_msg=str(path))


def _flax_cell(kind: str, p: dict, n_in: int, hidden: int):
    """flax.nnx's cell of this kind with our weights in it (its own gate layout is the same)."""
    rngs = nnx.Rngs(0)
    if kind == "lstm":
        cell = nnx.OptimizedLSTMCell(n_in, hidden, rngs=rngs)
        cell.dense_i.kernel[...], cell.dense_h.kernel[...], cell.dense_h.bias[...] = p["w_i"], p["w_h"], p["b"]
    elif kind == "gru":  # flax's GRU has no b_hn (the bias inside r * (W_hn h + b_hn))
        cell = nnx.GRUCell(n_in, hidden, rngs=rngs)
        cell.dense_i.kernel[...], cell.dense_i.bias[...], cell.dense_h.kernel[...] = p["w_i"], p["b"], p["w_h"]
    else:
        cell = nnx.SimpleCell(n_in, hidden, rngs=rngs)
        cell.dense_i.kernel[...], cell.dense_i.bias[...], cell.dense_h.kernel[...] = p["w_i"], p["b"], p["w_h"]
    return cell


@pytest.mark.parametrize("kind", FAMILIES)
def test_each_cell_equals_flax_nnx(kind):
    b, n_in, hidden, t = 2, 6, 8, 10
    p = _random_layer(kind, jax.random.key(3), n_in, hidden)
    if kind == "gru":
        p["b_hn"] = jnp.zeros((hidden,))
    cell = _flax_cell(kind, p, n_in, hidden)
    x = jax.random.normal(jax.random.key(4), (t, b, n_in))
    ours = cells.zero_carry(kind, b, hidden)
    theirs = (ours[1], ours[0]) if kind == "lstm" else ours[0]  # flax's LSTM carry is (c, h)
    _, ys = cells.layer(kind, p, x, ours)
    for s in range(t):
        theirs, y = cell(theirs, x[s])
        np.testing.assert_allclose(np.asarray(ys[0][s]), np.asarray(y), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [True, False])
def test_the_stacked_model_equals_numpy(family, tied):
    cfg = _cfg(family, n_layers=3, tie_embeddings=tied)
    params = A.init(jax.random.key(5), cfg)
    params = {**params, "embed": 20.0 * params["embed"]}
    tokens = np.asarray(jax.random.randint(jax.random.key(6), (2, 15), 0, cfg.vocab_size))
    logits, state = A.forward(params, jnp.asarray(tokens), cfg)
    assert state is None and logits.shape == (2, 15, cfg.vocab_size) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), np_forward(params, tokens, cfg), rtol=0, atol=2e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_layers_table_of_input_sides_equals_the_row_by_row_matmul(family, monkeypatch):
    """With fewer token ids than tokens in the batch, the first layer's x W_i + b is looked up
    from a [V, G*H] table: logits and every parameter's gradient equal the B*T-row matmul's.
    Dropout on the embeddings turns the table off (its mask differs per token)."""
    from arlm_jax.models.rnn import model

    cfg = _cfg(family, n_layers=2, tie_embeddings=False)
    params = A.init(jax.random.key(5), cfg)
    params = {**params, "embed": 20.0 * params["embed"]}
    tokens = jax.random.randint(jax.random.key(6), (4, 24), 0, cfg.vocab_size)  # 96 tokens, 64 ids
    assert model._input_by_table(cfg, tokens, None)
    assert not model._input_by_table(cfg, tokens[:1, :8], None)
    assert not model._input_by_table(dataclasses.replace(cfg, dropout=0.1), tokens, jax.random.key(0))

    def loss(p):
        logits = A.forward(p, tokens, cfg)[0]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 3]), logits

    (fast_loss, fast_logits), fast = jax.value_and_grad(loss, has_aux=True)(params)
    monkeypatch.setattr(model, "_input_by_table", lambda *a: False)
    (slow_loss, slow_logits), slow = jax.value_and_grad(loss, has_aux=True)(params)
    np.testing.assert_allclose(np.asarray(fast_logits), np.asarray(slow_logits), rtol=0, atol=2e-5)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(slow)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6, err_msg=str(path))


# ---- training --------------------------------------------------------------------------------
def test_a_loss_at_the_last_position_reaches_the_first_token():
    """Backpropagation through 128 steps: the first token's embedding (untied, so it is only an
    input, and its id appears nowhere else) gets a non-zero gradient from the last position's
    loss, in every cell; at init the LSTM's (forget gate open) is over a million times the Elman
    RNN's and the GRU's, the vanishing gradient the LSTM was made to fix."""
    first = {}
    for family in FAMILIES:
        cfg = _cfg(family, tie_embeddings=False)
        params = A.init(jax.random.key(0), cfg)
        tokens = jax.random.randint(jax.random.key(1), (1, 128), 1, cfg.vocab_size).at[0, 0].set(0)
        g = jax.grad(lambda p: -jax.nn.log_softmax(A.forward(p, tokens, cfg)[0][0, -1])[5])(params)["embed"]
        first[family] = float(jnp.abs(g[0]).max())
        assert first[family] > 0.0, family
        # and the loss at position 60 does not reach tokens read after it (causality)
        g_mid = jax.grad(lambda p: -jax.nn.log_softmax(A.forward(p, tokens, cfg)[0][0, 60])[5])(params)["embed"]
        later = np.setdiff1d(np.asarray(tokens[0, 61:]), np.asarray(tokens[0, :61]))
        assert len(later) and np.all(np.asarray(g_mid)[later] == 0.0), family
    assert first["lstm"] > 1e6 * max(first["rnn"], first["gru"]), first


@pytest.mark.parametrize("locked", [False, True])
def test_dropout_acts_only_in_training_and_locked_masks_are_shared_over_time(locked):
    cfg = _cfg("lstm", dropout=0.5, locked_dropout=locked, weight_drop=0.5)
    params = A.init(jax.random.key(0), cfg)
    tokens = jnp.zeros((2, 12), jnp.int32)  # one token repeated: a locked mask drops the same units
    plain = A.forward(params, tokens, cfg)[0]
    np.testing.assert_array_equal(plain, A.forward(params, tokens, dataclasses.replace(cfg, dropout=0.0,
                                                                                     weight_drop=0.0))[0])
    a = A.forward(params, tokens, cfg, dropout_key=jax.random.key(1))[0]
    b = A.forward(params, tokens, cfg, dropout_key=jax.random.key(2))[0]
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    # the embedding dropout's mask, seen at the first layer's input: the same over time if locked
    from arlm_jax.models.rnn.model import _drop
    x = jnp.ones((12, 2, 16))
    dropped = np.asarray(_drop(x, 0.5, jax.random.key(3), locked))
    same = np.all(dropped == dropped[:1])
    assert same == locked


def test_rnn_training_learns_through_the_cli_config(tmp_path):
    """``--model.family lstm`` end to end through train(): the loss falls, eval and the sample work."""
    import io
    from arlm_jax.config import DataConfig, MeshConfig, RunConfig
    from arlm_jax.train.loop import train
    from test_train import _tc

    corpus = tmp_path / "text.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n" * 300)
    run = RunConfig(preset="tiny", model=dataclasses.replace(_cfg("lstm"), vocab_size=257),
                    train=_tc(steps=300, warmup_steps=10, batch_size=8, seq_len=32, lr=1e-2, eval_every=300, eval_batches=1,
                              log_every=10, ckpt_every=300, progress=False, sample_tokens=8,
                              sample_temperature=0.0, out_dir=str(tmp_path / "run")),
                    data=DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache"), val_fraction=0.5),
                    mesh=MeshConfig(devices=1)).validate()
    res = train(run, out=io.StringIO())
    assert res.val["loss"] < 1.5  # uniform over 257 bytes is 5.5 nats; the text repeats
    assert res.sample.startswith("def ")


# ---- decoding --------------------------------------------------------------------------------
def test_rollback_reaches_back_history_minus_one_tokens():
    """After reading 10 tokens, rolling back r <= history - 1 and reading on equals reading the
    shorter text; speculative decoding refuses a k the ring cannot roll back, in one line."""
    cfg = _cfg("gru", history=4)
    fam = A.family_of(cfg)
    params = A.init(jax.random.key(0), cfg)
    params = {**params, "embed": 20.0 * params["embed"]}
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    full = np.asarray(A.forward(params, tokens, cfg)[0])
    for r in range(1, 4):
        state = fam.init_state(cfg, 2, 16)
        _, state = A.forward(params, tokens[:, :10], cfg, state)
        state = fam.rollback(state, jnp.full((2,), 10 - r))
        logits, _ = A.forward(params, tokens[:, 10 - r:10 - r + 2], cfg, state)
        np.testing.assert_allclose(np.asarray(logits), full[:, 10 - r:10 - r + 2], atol=2e-5)
    assert fam.max_rollback(cfg) == 3
    with pytest.raises(ConfigError) as err:
        A.speculative_generate(params, cfg, params, cfg, jnp.asarray([[1, 2, 3]]), jax.random.key(0), k=4,
                               max_new_tokens=4)
    msg = str(err.value)
    assert "k=4" in msg and "allowed k <= 3" in msg and "model.family='gru'" in msg and "\n" not in msg


def test_a_bad_recurrent_config_is_a_one_line_error():
    for kw, field in ((dict(family="transformer"), "model.family"), (dict(dropout=1.0), "model.dropout"),
                      (dict(history=1), "model.history"), (dict(d_hidden=0), "model.d_hidden")):
        with pytest.raises(ConfigError) as err:
            RecurrentConfig(**kw).validate()
        assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_flops_and_description_follow_the_shapes():
    cfg = RecurrentConfig(family="lstm", vocab_size=257, n_layers=2, d_embed=256, d_hidden=512)
    params = A.init(jax.random.key(0), cfg)
    matmul = sum(p["w_i"].size + p["w_h"].size for p in params["layers"]) + params["embed"].size
    assert A.family_of(cfg).flops_per_token(cfg, 128) == 6.0 * matmul
    assert [p["w_h"].shape for p in params["layers"]] == [(512, 2048), (256, 1024)]  # tied: the last has d_embed
    assert "lstm: 2 layers of 512/256 units" in A.family_of(cfg).describe(cfg)
