"""The optimizer's Muon option: routing by logical axes, per-layer orthogonalisation, training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from arlm_jax.checkpoint import Checkpointer
from arlm_jax.config import TrainConfig, model_preset
from arlm_jax.errors import ConfigError
from arlm_jax.models import family_of
from arlm_jax.parallel.mesh import make_mesh
from arlm_jax.parallel.shardings import state_shardings
from arlm_jax.train import optim as O, step as T
from conftest import tiny


def _tc(**kw) -> TrainConfig:
    return dataclasses.replace(TrainConfig(optimizer="muon"), **kw).validate()


def _normal(cfg, seed: int) -> dict:
    """Random numpy values shaped like ``cfg``'s parameters (numpy: slicing compiles nothing)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: family_of(cfg).init(jax.random.key(0), cfg))
    return jax.tree.map(lambda a: rng.normal(0.0, 0.1, a.shape).astype(np.float32), shapes)


def _muon_leaves(cfg) -> set[str]:
    params = jax.eval_shape(lambda: family_of(cfg).init(jax.random.key(0), cfg))
    mask = O.muon_mask(family_of(cfg).param_axes(params))
    return {jax.tree_util.keystr(p, simple=True, separator="/")
            for p, on in jax.tree_util.tree_leaves_with_path(mask) if on}


@pytest.mark.parametrize("overrides", [{}, {"bias": True, "tie_embeddings": False},
                                       {"mlp": "swiglu", "pos": "relative", "n_kv_heads": 2}])
def test_muon_takes_exactly_the_attention_and_mlp_matrices(overrides):
    cfg = dataclasses.replace(model_preset("demo"), **overrides).validate()
    mlp = ("w_gate", "w_up", "w_down") if cfg.mlp == "swiglu" else ("w_in", "w_out")
    expected = {f"blocks/attn/{w}" for w in ("wq", "wk", "wv", "wo")} | {f"blocks/mlp/{w}" for w in mlp}
    assert _muon_leaves(cfg) == expected  # not embed/*, lm_head/w, rel_bias, norms or biases


def test_dimension_numbers_keep_layers_as_a_batch_axis():
    dims = O.muon_dims
    assert dims(("layers", "embed", "mlp")) == optax.contrib.MuonDimensionNumbers((1,), (2,))
    assert dims(("layers", "embed", "heads", "head_dim")) == optax.contrib.MuonDimensionNumbers((1,), (2, 3))
    assert dims(("layers", "heads", "head_dim", "embed")) == optax.contrib.MuonDimensionNumbers((1, 2), (3,))
    assert dims(("embed", "mlp")) == optax.contrib.MuonDimensionNumbers((0,), (1,))  # unstacked layout
    for adamw_leaf in [("vocab", "embed"), ("embed", "vocab"), ("length", "embed"), (None, None),
                       ("layers", "norm"), ("layers", "heads", "head_dim"), ("layers", "mlp"), ()]:
        assert dims(adamw_leaf) is None, adamw_leaf


def test_bigram_is_all_adamw_and_its_updates_are_plain_adamws():
    cfg = model_preset("tiny", "bigram")
    assert _muon_leaves(cfg) == set()
    params, grads = _normal(cfg, 0), _normal(cfg, 1)
    muon, adamw = (O.make_optimizer(_tc(optimizer=name), cfg) for name in ("muon", "adamw"))
    step = lambda opt: jax.jit(opt.update)(grads, opt.init(params), params)[0]  # noqa: E731
    for a, b in zip(jax.tree.leaves(step(muon)), jax.tree.leaves(step(adamw))):
        np.testing.assert_array_equal(a, b)


def _matrix(leaf: str, x: np.ndarray) -> np.ndarray:
    """One layer's weight as the 2-D matrix (inputs x outputs) Muon should orthogonalise."""
    return x.reshape(x.shape[0], -1) if leaf == "wq" else x.reshape(-1, x.shape[-1])


def test_each_layer_gets_what_muon_gives_its_2d_matrix_alone():
    """Slow twin: two updates of the stacked leaves == optax muon on each layer's matrix, and
    the AdamW leaves get what AdamW alone gives them (same clipping and decay), to an ulp."""
    cfg = tiny(tie_embeddings=False)
    tc = _tc(schedule="constant", warmup_steps=0, muon_lr=0.05, weight_decay=0.1, grad_clip=0.0)
    params, grads = _normal(cfg, 0), [_normal(cfg, 1), _normal(cfg, 2)]
    opt, ref = O.make_optimizer(tc, cfg), O.make_optimizer(dataclasses.replace(tc, optimizer="adamw"), cfg)
    state, ref_state = opt.init(params), ref.init(params)
    for g in grads:
        updates, state = jax.jit(opt.update)(g, state, params)
        ref_updates, ref_state = jax.jit(ref.update)(g, ref_state, params)
    updates, ref_updates = jax.tree.map(np.asarray, (updates, ref_updates))
    muon_mask = O.muon_mask(family_of(cfg).param_axes(params))
    for u, r, on in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates), jax.tree.leaves(muon_mask)):
        if not on:  # the same AdamW arithmetic in two programs: XLA may round them apart by 1 ulp
            np.testing.assert_allclose(u, r, rtol=1e-6, atol=0)

    one = optax.contrib.muon(0.05, beta=0.95, weight_decay=0.1)  # the 2-D rule: x @ W, W [in, out]
    one_update = jax.jit(one.update)
    for group, leaf in [("mlp", "w_in"), ("mlp", "w_out"), ("attn", "wq"), ("attn", "wo")]:
        for layer in range(cfg.n_layers):
            w = {"w": _matrix(leaf, params["blocks"][group][leaf][layer])}
            one_state = one.init(w)
            for g in grads:
                expected, one_state = one_update({"w": _matrix(leaf, g["blocks"][group][leaf][layer])},
                                                 one_state, w)
            got = _matrix(leaf, updates["blocks"][group][leaf][layer])
            np.testing.assert_allclose(got, expected["w"], rtol=1e-4, atol=1e-6, err_msg=f"{leaf}[{layer}]")
            # an orthogonalised step: five quintic Newton-Schulz steps leave singular values in
            # about [0.68, 1.13], except the few that start near 0 (a random square matrix has some)
            scale = 0.05 * np.sqrt(max(1.0, got.shape[1] / got.shape[0]))
            sv = np.linalg.svd((got + 0.05 * 0.1 * w["w"]) / scale, compute_uv=False)
            assert sv.max() < 1.2 and np.mean(sv > 0.6) >= 0.9, (leaf, layer, sv)


@pytest.fixture(scope="module")
def trained():
    """20 Muon steps of the tiny model on a learnable cycle (one compile for three tests)."""
    cfg = tiny()
    tc = _tc(steps=20, warmup_steps=2, batch_size=4, lr=1e-2, muon_lr=0.02, seed=0)
    opt = O.make_optimizer(tc, cfg)
    batch = {"tokens": (jnp.arange(4)[:, None] + jnp.arange(33)[None, :]) % 8}  # [4, 33]
    step, state, losses, first = T.make_train_step(cfg, tc, opt), T.init_state(jax.random.key(0), cfg, opt), [], None
    for _ in range(tc.steps):
        state, m = step(state, batch)
        first = jax.tree.map(jnp.copy, state) if first is None else first  # the next step donates state
        losses.append(float(m["loss"]))
    return {"cfg": cfg, "tc": tc, "opt": opt, "batch": batch, "state": state, "first": first, "losses": losses}


def test_a_few_muon_steps_lower_the_loss(trained):
    losses = trained["losses"]
    assert losses[0] > 4.0 and losses[-1] < 1.2, losses  # ln(64) = 4.16 at init; 0.84 seen


def test_muon_state_survives_a_checkpoint_round_trip(tmp_path, trained):
    cfg, opt, state = trained["cfg"], trained["opt"], trained["state"]
    with Checkpointer(tmp_path) as ck:
        ck.save(20, state, {"step": 20})
        ck.wait()
        restored, _ = ck.restore(jax.eval_shape(lambda: T.init_state(jax.random.key(0), cfg, opt)), 20)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_muon_momentum_is_laid_out_like_its_parameter(trained):
    """On a mesh each Muon momentum leaf takes its parameter's sharding (FSDP x tensor), not a
    replicated copy. (A sharded Muon step equals the one-device step too; that costs a second
    compile, so test_sharding.py's AdamW twin stands for it.)"""
    cfg, opt = trained["cfg"], trained["opt"]
    abstract = jax.eval_shape(lambda: T.init_state(jax.random.key(0), cfg, opt))
    mesh = make_mesh(1, 2, 2, jax.devices()[:4])
    shardings = state_shardings(abstract, family_of(cfg).param_axes(abstract.params), mesh)
    wq = shardings.params["blocks"]["attn"]["wq"].spec
    muon_state = shardings.opt_state[1].inner_states["muon"]
    mus = [x.spec for x in jax.tree.leaves(muon_state) if x.spec != P()]
    assert wq == P(None, "fsdp", "tensor", None) and wq in mus and len(mus) == 6  # wq wk wv wo w_in w_out


@pytest.mark.parametrize("bad, message", [
    ({"optimizer": "sgd"}, r"^train\.optimizer='sgd' is not allowed; choose one of adamw, muon$"),
    ({"muon_lr": 0.0}, r"^train\.muon_lr=0\.0 must be > 0$"),
    ({"muon_beta": 1.0}, r"^train\.muon_beta=1\.0 must be in \[0, 1\)$"),
])
def test_bad_optimizer_options_are_one_line_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        _tc(**bad)

