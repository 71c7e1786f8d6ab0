"""muP (``--model.parametrization mup``): standard unchanged, the coordinate check of Yang et
al. (activations stay flat across widths under muP and grow under the standard
parametrization), the Adam learning-rate multipliers, cached decoding, and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import arlm_jax as A
from arlm_jax.cli import main as cli
from arlm_jax.config import TrainConfig
from arlm_jax.errors import ConfigError
from arlm_jax.models import family_of
from arlm_jax.models.api import hidden_matrix
from arlm_jax.models.transformer import model as M
from arlm_jax.models.transformer.cache import init_cache
from arlm_jax.train import optim as O
from conftest import randomise, tiny


def _tc(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(optimizer="adamw", schedule="constant", warmup_steps=0), **kw).validate()


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _axes(cfg) -> dict:
    params = jax.eval_shape(lambda: A.init(jax.random.key(0), cfg))
    flat = jax.tree_util.tree_leaves_with_path(family_of(cfg).param_axes(params), is_leaf=lambda x: isinstance(x, tuple))
    return {jax.tree_util.keystr(p, simple=True, separator="/"): a for p, a in flat}


# ---- 1. the standard parametrization, and muP at its base width, are what they were ---------
def test_standard_is_the_default_and_mup_at_its_base_width_equals_it():
    """Same key -> bit-identical params, logits and optimizer: with the fields at their
    defaults, with standard and another mup_base_width (ignored), and with mup at m = 1
    (d_model == mup_base_width: every multiplier is exactly 1, so no extra optimizer step and
    the same optimizer state). In this change the standard path was also checked bit-for-bit
    against the previous commit: init, forward and three AdamW and three Muon train steps of
    four configs (gpt2-like, llama-like, alibi, relative)."""
    base = tiny(tie_embeddings=False)
    toks = jax.random.randint(jax.random.key(1), (2, 12), 0, base.vocab_size)
    params = A.init(jax.random.key(0), base)
    logits = np.asarray(A.forward(params, toks, base)[0])
    grads = randomise(jax.tree.map(jnp.zeros_like, params), seed=2)
    update = lambda tc, cfg: jax.jit(O.make_optimizer(tc, cfg).update)(  # noqa: E731
        grads, O.make_optimizer(tc, cfg).init(params), params)[0]
    for other in (dataclasses.replace(base, parametrization="standard", mup_base_width=7),
                  dataclasses.replace(base, parametrization="mup", mup_base_width=base.d_model)):
        assert other.width_mult == 1.0
        p = A.init(jax.random.key(0), other)
        jax.tree.map(np.testing.assert_array_equal, p, params)
        np.testing.assert_array_equal(np.asarray(A.forward(p, toks, other)[0]), logits)
        for tc in (_tc(optimizer="adamw"), _tc(optimizer="muon")):
            state = jax.eval_shape(O.make_optimizer(tc, other).init, params)
            assert jax.tree.structure(state) == jax.tree.structure(jax.eval_shape(O.make_optimizer(tc, base).init, params))
    tc = _tc(optimizer="adamw", weight_decay=0.1)
    jax.tree.map(np.testing.assert_array_equal, update(tc, other), update(tc, base))


# ---- 2. the coordinate check ---------------------------------------------------------------
WIDTHS = (64, 128, 256, 512)
BASE = 128


def _coordinates(parametrization: str, width: int) -> dict:
    """Five AdamW steps (lr 3e-3, constant) of a 2-layer, 4-head Transformer of this width on
    fixed random tokens [8, 33] (vocab 64), and what they did to its activations (mean
    absolute value per coordinate): the logits after training and their change, and the
    change of the last block's MLP output on the step-0 final features (hidden matrices)."""
    cfg = tiny(d_model=width, vocab_size=64, parametrization=parametrization, mup_base_width=BASE)
    tc = _tc(lr=3e-3, weight_decay=0.0)
    opt = O.make_optimizer(tc, cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 33)), jnp.int32)

    def loss(p):  # -> (mean NLL, (final features [B, T, D], logits [B, T, V]))
        x = M.hidden(p, tokens[:, :-1], cfg)[0]
        logits = M.head(p, x, cfg)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean(), (x, logits)

    @jax.jit
    def step(p, s):  # one compile: the step also reports the activations of the params it got
        (_, aux), g = jax.value_and_grad(loss, has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, aux

    params = A.init(jax.random.key(0), cfg)
    state, seen = opt.init(params), []
    for _ in range(6):  # activations of the params after 0..5 steps
        seen.append(params)
        params, state, aux = step(params, state)
        if len(seen) == 1:
            x0, logits0 = map(np.asarray, aux)
    logits5 = np.asarray(aux[1])

    def mlp(p):  # the last block's gelu MLP (numpy), on the step-0 features x0
        m = {k: np.asarray(v[-1]) for k, v in p["blocks"]["mlp"].items()}
        h = x0 @ m["w_in"] + m["b_in"]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        return h @ m["w_out"] + m["b_out"]
    return {"logits": np.abs(logits5).mean(), "dlogits": np.abs(logits5 - logits0).mean(),
            "dmlp": np.abs(mlp(seen[5]) - mlp(seen[0])).mean()}


@pytest.fixture(scope="module")
def coordinates() -> dict:
    """{parametrization: {width: measurements}}. At the base width muP is bit-identical to the
    standard parametrization (the test above), so that point is measured once."""
    mup = {w: _coordinates("mup", w) for w in WIDTHS}
    standard = {w: mup[w] if w == BASE else _coordinates("standard", w) for w in WIDTHS}
    for name, got in (("standard", standard), ("mup", mup)):  # the table in docs/optimizers.md (-s)
        print("\n" + name, " ".join(f"d={w}: " + ", ".join(f"{k} {v:.3f}" for k, v in got[w].items()) for w in WIDTHS))
    return {"standard": standard, "mup": mup}


def _spread(got: dict, key: str) -> float:
    values = [got[w][key] for w in WIDTHS]
    return max(values) / min(values)


@pytest.mark.parametrize("key", ["logits", "dlogits", "dmlp"])
def test_coordinate_check_mup_stays_flat_across_widths(coordinates, key):
    # measured (2-vCPU AMD EPYC VM, 2026-12-03), d = 64, 128, 256, 512:
    #   logits  0.480 0.414 0.366 0.351 (spread 1.37);  dlogits 0.499 0.421 0.367 0.348 (1.44)
    #   dmlp    0.087 0.077 0.064 0.058 (1.51)
    assert _spread(coordinates["mup"], key) < 2.0, coordinates["mup"]


@pytest.mark.parametrize("key, factor", [("logits", 3.0), ("dlogits", 3.0), ("dmlp", 10.0)])
def test_coordinate_check_standard_grows_with_width(coordinates, key, factor):
    """The check can fail: without muP the same lr moves the wide models' activations more.
    Measured, d = 64 -> 512: logits 0.257 -> 1.207 (4.7x), dlogits 0.249 -> 1.243 (5.0x),
    dmlp 0.031 -> 0.927 (30x); every step up in width grows each of them."""
    got = coordinates["standard"]
    assert got[WIDTHS[-1]][key] > factor * got[WIDTHS[0]][key], got
    assert all(got[a][key] < got[b][key] for a, b in zip(WIDTHS, WIDTHS[1:])), got


# ---- 3. the learning-rate multipliers ------------------------------------------------------
def test_adam_update_of_a_hidden_matrix_at_twice_the_base_width_is_halved():
    """Same params and gradients, two AdamW steps with weight decay: under muP at m = 2 the
    hidden matrices' updates are exactly half the standard ones (decay included); the
    embeddings, the untied head, norms and biases get exactly the standard updates."""
    std = tiny(d_model=64, tie_embeddings=False)
    mup = dataclasses.replace(std, parametrization="mup", mup_base_width=32).validate()
    assert mup.width_mult == 2.0
    params = randomise(A.init(jax.random.key(0), std))
    grads = [randomise(jax.tree.map(jnp.zeros_like, params), seed=s) for s in (2, 3)]
    updates = {}
    for cfg in (std, mup):
        opt = O.make_optimizer(_tc(weight_decay=0.1), cfg)
        state = opt.init(params)
        for g in grads:
            u, state = jax.jit(opt.update)(g, state, params)
        updates[cfg.parametrization] = _leaves(u)
    axes, halved = _axes(mup), set()
    for name, u in updates["standard"].items():
        if hidden_matrix(axes[name]):
            halved.add(name)
            np.testing.assert_array_equal(updates["mup"][name], 0.5 * u, err_msg=name)
        else:
            np.testing.assert_array_equal(updates["mup"][name], u, err_msg=name)
    assert halved == {f"blocks/attn/{w}" for w in ("wq", "wk", "wv", "wo")} | {"blocks/mlp/w_in", "blocks/mlp/w_out"}


def test_under_muon_the_multipliers_leave_muons_matrices_alone():
    """train.optimizer=muon: the hidden matrices are Muon's (its step's spectral size is already
    width-independent) and every AdamW leaf has multiplier 1, so muP changes only the init and
    the forward's scales; the optimizer is exactly the standard one."""
    cfg = tiny(d_model=64, parametrization="mup", mup_base_width=32)
    axes = family_of(cfg).param_axes(jax.eval_shape(lambda: A.init(jax.random.key(0), cfg)))
    assert set(jax.tree.leaves(O.lr_multipliers(_tc(optimizer="muon"), cfg, axes))) == {1.0}
    assert set(jax.tree.leaves(O.lr_multipliers(_tc(optimizer="adamw"), cfg, axes))) == {1.0, 0.5}


def test_mup_init_and_forward_scales_at_twice_the_base_width():
    cfg = tiny(d_model=64, parametrization="mup", mup_base_width=32)
    std = dataclasses.replace(cfg, parametrization="standard")
    p, q = _leaves(A.init(jax.random.key(0), cfg)), _leaves(A.init(jax.random.key(0), std))
    axes = _axes(cfg)
    for name in p:  # same draws; hidden matrices' std / sqrt(2)
        np.testing.assert_allclose(p[name], q[name] / np.sqrt(2.0) if hidden_matrix(axes[name]) else q[name], rtol=1e-6)
    head = A.init(jax.random.key(0), std)
    x = jax.random.normal(jax.random.key(5), (3, cfg.d_model))
    np.testing.assert_allclose(M.head(head, x, cfg), M.head(head, x, std) / 2.0, rtol=1e-6)
    # attention: scores scaled by sqrt(E0)/E = sqrt(8)/16 (E0 = 32 / 4 heads), not 1/sqrt(16)
    assert cfg.attn_scale == pytest.approx(np.sqrt(8.0) / 16.0) and std.attn_scale is None
    assert dataclasses.replace(cfg, mup_base_head_dim=16).attn_scale == 0.25


# ---- 4. decoding ---------------------------------------------------------------------------
def test_mup_cached_decode_and_prefill_match_the_full_forward():
    """At m = 2 (logits / 2, attention scale != 1/sqrt(E)): a ragged prefill, then one token at
    a time through the KV cache, and the family's prefill, all give the full forward's logits."""
    cfg = tiny(d_model=64, parametrization="mup", mup_base_width=32, pos="rope", n_kv_heads=2)
    params = randomise(A.init(jax.random.key(0), cfg), scale=0.3)
    seqs = np.asarray(jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size))
    full = np.asarray(A.forward(params, jnp.asarray(seqs), cfg)[0])  # [2, 16, V]
    lens = np.array([3, 8])
    prompts = jnp.asarray(np.where(np.arange(8) < lens[:, None], seqs[:, :8], 0))
    step = jax.jit(lambda p, t, c: A.forward(p, t, cfg, c))
    logits, cache = step(params, prompts, init_cache(cfg, 2, 20))
    cache = cache.replace(lengths=jnp.asarray(lens, jnp.int32))
    for r in range(2):
        np.testing.assert_allclose(np.asarray(logits)[r, :lens[r]], full[r, :lens[r]], atol=2e-5)
    for i in range(6):
        toks = seqs[np.arange(2), lens + i][:, None]
        logits, cache = step(params, jnp.asarray(toks), cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), lens + i], atol=2e-5)
    _, last = family_of(cfg).prefill(family_of(cfg).decode_params(params, cfg), cfg, prompts, jnp.asarray(lens), 20)
    np.testing.assert_allclose(np.asarray(last), full[np.arange(2), lens - 1], atol=2e-5)


# ---- 5. bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--model.parametrization", "foo"], "model.parametrization='foo' is not allowed; choose one of standard, mup"),
    (["--model.mup_base_width", "0"], "model.mup_base_width=0 must be > 0"),
    (["--model.mup_base_head_dim", "-1"], "model.mup_base_head_dim=-1 must be >= 0"),
])
def test_bad_mup_options_are_one_line_config_errors(argv, needle, capsys):
    assert cli.main(["info", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arlm: error: ") and err.count("\n") == 1 and needle in err, err
    field, value = argv[0].removeprefix("--model."), argv[1]
    with pytest.raises(ConfigError, match="^" + needle.replace("(", r"\(").replace(")", r"\)") + "$"):
        dataclasses.replace(A.ModelConfig.tiny(), **{field: value if field == "parametrization" else int(value)}).validate()
