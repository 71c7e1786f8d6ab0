import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.errors import ConfigError
from arlm_jax.models.transformer.config import PRESETS as MODEL_PRESETS, TransformerConfig as ModelConfig
from conftest import randomise, tiny
import reference

POS = ["learned", "sinusoidal", "rope", "alibi", "relative"]


def _tokens(cfg, b=2, t=12, seed=3):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, cfg.vocab_size)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("kv", [4, 2, 1])
def test_causal_every_position_encoding(pos, kv):
    cfg = tiny(pos=pos, n_kv_heads=kv)
    params = randomise(A.init(jax.random.key(0), cfg))
    toks = _tokens(cfg, t=16)
    fwd = jax.jit(lambda p, x: A.forward(p, x, cfg)[0])
    base = fwd(params, toks)
    for t in (0, 5, 14):
        changed = toks.at[:, t + 1:].set((toks[:, t + 1:] + 7) % cfg.vocab_size)
        out = fwd(params, changed)
        np.testing.assert_array_equal(np.asarray(out[:, : t + 1]), np.asarray(base[:, : t + 1]))
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


REFERENCE_CASES = [
    dict(),
    dict(pos="sinusoidal", norm_position="post"),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, bias=False, tie_embeddings=False),
    dict(pos="alibi", n_kv_heads=1),
    dict(pos="relative", norm="rmsnorm", norm_position="post"),
    dict(pos="alibi", n_heads=6, d_model=48, n_kv_heads=3),  # non-power-of-two ALiBi slopes
    dict(pos="relative", rel_buckets=8, rel_max_distance=12),  # log-spaced buckets are used
]


@pytest.mark.parametrize("opts", REFERENCE_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "gpt2")
def test_forward_matches_numpy_reference(opts):
    cfg = tiny(**opts)
    params = randomise(A.init(jax.random.key(0), cfg))
    toks = _tokens(cfg, t=14)
    ours = np.asarray(jax.jit(lambda p, x: A.forward(p, x, cfg)[0])(params, toks))
    ref = reference.forward(jax.tree.map(np.asarray, params), np.asarray(toks), cfg)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4)


OPTION_GRID = [
    dict(pos=p, norm=n, norm_position=np_, mlp=m, n_kv_heads=kv, tie_embeddings=tie, bias=bias)
    for (p, n, np_, m, kv, tie, bias) in itertools.product(
        POS, ["layernorm", "rmsnorm"], ["pre", "post"], ["gelu", "swiglu"], [4, 2, 1], [True, False], [True])
][::7] + [dict(bias=False), dict(dtype="bfloat16"), dict(remat="full"), dict(remat="dots"), dict(dropout=0.1),
           dict(scan_unroll=2)]


@pytest.mark.parametrize("opts", OPTION_GRID, ids=str)
def test_shapes_and_dtypes(opts):
    cfg = tiny(**opts)
    params = A.init(jax.random.key(0), cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert params["blocks"]["attn"]["wk"].shape[:3] == (cfg.n_layers, cfg.d_model, cfg.kv_heads) \
        if "wk" in params["blocks"]["attn"] else True
    toks = _tokens(cfg, b=3, t=10)
    logits, cache = jax.jit(lambda p, x: A.forward(p, x, cfg))(params, toks)
    assert logits.shape == (3, 10, cfg.vocab_size) and logits.dtype == jnp.float32
    assert cache is None
    assert np.isfinite(np.asarray(logits)).all()
    g = jax.jit(jax.grad(lambda p: A.loss_fn(p, {"tokens": toks}, cfg)[0]))(params)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))


def test_gqa_and_mqa_store_fewer_kv_weights():
    full = A.param_count(A.init(jax.random.key(0), tiny()))
    gqa = A.param_count(A.init(jax.random.key(0), tiny(n_kv_heads=2)))
    mqa = A.param_count(A.init(jax.random.key(0), tiny(n_kv_heads=1)))
    assert full > gqa > mqa


def test_tied_and_untied_output():
    tied = A.init(jax.random.key(0), tiny())
    untied = A.init(jax.random.key(0), tiny(tie_embeddings=False))
    assert "lm_head" not in tied and untied["lm_head"]["w"].shape == (32, 64)


def test_bfloat16_compute_close_to_float32():
    cfg32 = tiny()
    cfg16 = tiny(dtype="bfloat16")
    params = randomise(A.init(jax.random.key(0), cfg32))
    toks = _tokens(cfg32)
    l32 = jax.jit(lambda p, x: A.forward(p, x, cfg32)[0])(params, toks)
    l16 = jax.jit(lambda p, x: A.forward(p, x, cfg16)[0])(params, toks)
    assert l16.dtype == jnp.float32
    assert not np.array_equal(np.asarray(l32), np.asarray(l16))  # bf16 really was used
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=0.1, rtol=0.05)


def test_gelu_tanh_and_its_own_backward_match_autodiff_of_jax_gelu():
    from arlm_jax.models.layers import gelu_tanh
    x = jnp.linspace(-6.0, 6.0, 1001)
    ref = lambda v: jax.nn.gelu(v, approximate=True)  # noqa: E731
    np.testing.assert_allclose(np.asarray(gelu_tanh(x)), np.asarray(ref(x)), rtol=1e-6, atol=1e-6)
    g = jax.vmap(jax.grad(gelu_tanh))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.vmap(jax.grad(ref))(x)), rtol=1e-5, atol=1e-5)
    assert float(g.min()) < -0.1 and float(g.max()) > 1.05  # the dip and the overshoot are there


def _round_bf16(x):
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


def test_mixed_matmul_and_its_gradients_match_numpy_on_rounded_operands():
    """Slow twin of layers.mixed_matmul: float64 numpy on the bfloat16-rounded operands, in the
    forward pass and in both backward matmuls (the cotangent rounded too)."""
    from arlm_jax.models.layers import mixed_matmul
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x, w, g = (jax.random.normal(k, s) for k, s in ((kx, (24, 16)), (kw, (16, 8)), (kg, (24, 8))))
    y, vjp = jax.vjp(lambda a, b: mixed_matmul(a, b, jnp.dtype(jnp.bfloat16)), x, w)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    xr, wr, gr = _round_bf16(x), _round_bf16(w), _round_bf16(g)
    np.testing.assert_allclose(np.asarray(y), xr @ wr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), gr @ wr.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), xr.T @ gr, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(y), np.asarray(x) @ np.asarray(w), rtol=1e-6, atol=1e-6)  # rounded


def test_bfloat16_matmuls_keep_float32_activations_close_to_float32():
    cfg32 = tiny()
    cfg_mm = tiny(matmul_dtype="bfloat16")
    params = randomise(A.init(jax.random.key(0), cfg32))
    batch = {"tokens": _tokens(cfg32)}
    loss = lambda cfg: jax.jit(jax.value_and_grad(lambda p: A.loss_fn(p, batch, cfg)[0]))(params)  # noqa: E731
    (l32, g32), (lmm, gmm) = loss(cfg32), loss(cfg_mm)
    assert float(l32) != float(lmm)  # bf16 really was used
    np.testing.assert_allclose(float(lmm), float(l32), rtol=0.02)
    for a, b in zip(jax.tree.leaves(gmm), jax.tree.leaves(g32)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.05 * float(np.abs(b).max()) + 1e-6)


def test_dropout_only_with_a_key():
    cfg = tiny(dropout=0.3)
    params = A.init(jax.random.key(0), cfg)
    toks = _tokens(cfg)
    fwd = jax.jit(lambda p, x, k, c: A.forward(p, x, c, dropout_key=k)[0], static_argnums=3)
    plain = jax.jit(lambda p, x: A.forward(p, x, cfg)[0])(params, toks)
    d1 = fwd(params, toks, jax.random.key(1), cfg)
    d2 = fwd(params, toks, jax.random.key(2), cfg)
    assert not np.allclose(d1, plain) and not np.allclose(d1, d2)
    # dropout=0 ignores the key: training and eval agree exactly
    cfg0 = tiny()
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda p, x: A.forward(p, x, cfg0)[0])(params, toks)),
                                  np.asarray(fwd(params, toks, jax.random.key(1), cfg0)))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_loss_and_grads(remat):
    params = randomise(A.init(jax.random.key(0), tiny()))
    toks = _tokens(tiny(), t=9)
    f = lambda cfg: jax.jit(jax.value_and_grad(lambda p: A.loss_fn(p, {"tokens": toks}, cfg)[0]))(params)
    (l0, g0), (l1, g1) = f(tiny()), f(tiny(remat=remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_unrolled_scan_is_the_same_function():
    params = randomise(A.init(jax.random.key(0), tiny(n_kv_heads=2)))
    toks = _tokens(tiny())
    l1 = jax.jit(lambda p, x: A.forward(p, x, tiny(n_kv_heads=2))[0])(params, toks)
    l2 = jax.jit(lambda p, x: A.forward(p, x, tiny(n_kv_heads=2, scan_unroll=2))[0])(params, toks)
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), rtol=1e-6, atol=1e-6)


def test_shifting_positions_changes_absolute_encodings_and_leaves_rope_unchanged():
    """``positions`` reaches the encoding: an absolute one (learned, sinusoidal) sees the shift;
    RoPE is relative (q.k depends on the distance only), so the logits stay the same."""
    for pos in ("learned", "sinusoidal", "rope"):
        cfg = tiny(pos=pos)
        params = randomise(A.init(jax.random.key(0), cfg))
        toks = _tokens(cfg, b=1, t=6)
        fwd = jax.jit(lambda p, x, q: A.forward(p, x, cfg, positions=q)[0])
        base = np.asarray(fwd(params, toks, jnp.arange(6)[None]))
        shifted = np.asarray(fwd(params, toks, jnp.arange(3, 9)[None]))
        if pos == "rope":
            np.testing.assert_allclose(shifted, base, rtol=1e-5, atol=1e-5)
        else:
            assert not np.allclose(shifted, base, rtol=1e-5, atol=1e-5), pos


@pytest.mark.parametrize("name,expected", [("gpt2-124m", 124.4e6), ("gpt2-350m", 354.8e6),
                                           ("gpt2-774m", 774.0e6), ("gpt2-1.5b", 1557.6e6),
                                           ("llama-125m", None), ("llama-1b", 1100.0e6),
                                           ("llama-7b", 6738.4e6)])
def test_presets_have_the_published_sizes(name, expected):
    cfg = A.model_preset(name).validate()
    shapes = jax.eval_shape(lambda k: A.init(k, cfg), jax.random.key(0))
    n = A.param_count(shapes)
    if expected is not None:
        assert abs(n - expected) / expected < 0.01, n
    assert A.flops_per_token(cfg) > 6 * 0.5 * n


def test_demo_and_tiny_presets_are_valid():
    for name in MODEL_PRESETS:
        A.model_preset(name).validate()


@pytest.mark.parametrize("opts,needle", [
    (dict(d_model=30, n_heads=4), "model.d_model=30 must be divisible by model.n_heads=4"),
    (dict(n_kv_heads=3), "model.n_heads=4 must be divisible by model.n_kv_heads=3"),
    (dict(n_layers=0), "model.n_layers=0 must be > 0"),
    (dict(vocab_size=-1), "model.vocab_size=-1 must be > 0"),
    (dict(pos="nope"), "model.pos='nope' is not allowed; choose one of learned, sinusoidal, rope, alibi, relative"),
    (dict(norm="batchnorm"), "model.norm='batchnorm'"),
    (dict(dtype="float16"), "choose one of float32, bfloat16"),
    (dict(dropout=1.0), "model.dropout=1.0 must be in [0, 1)"),
])
def test_bad_model_config_is_one_line_error(opts, needle):
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(ModelConfig.tiny(), **opts).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset='gpt5' is unknown for model.family='transformer'; choose one of tiny, demo"):
        A.model_preset("gpt5")
