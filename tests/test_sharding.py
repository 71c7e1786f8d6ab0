"""Sharded training, decoding and checkpoints on 8 simulated CPU devices against one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import arlm_jax as A
from arlm_jax.models.transformer.axes import param_axes as AX
from arlm_jax.parallel import hosts, mesh as mesh_lib, rules, shardings as sh
from arlm_jax.train import optim as T_optim, step as T
from arlm_jax.checkpoint import Checkpointer
from arlm_jax.config import MeshConfig, TrainConfig
from arlm_jax.decode.generate import _decode_jit, _prefill_jit
from arlm_jax.models.transformer.model import unstack_blocks
from arlm_jax.decode.speculative import speculative_generate
from conftest import randomise, tiny

def _laid_out(x, mesh, spec):
    return x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim)


def _mha():
    return tiny(n_heads=8, d_model=64, vocab_size=128)


def _gqa():  # llama-like: rope, rmsnorm, swiglu, untied head, no biases, 2 kv heads
    return tiny(n_heads=8, n_kv_heads=2, d_model=64, vocab_size=128, pos="rope", norm="rmsnorm",
                mlp="swiglu", tie_embeddings=False, bias=False)


# ---- the mesh and the rule table ------------------------------------------------------------------
def test_make_mesh_fills_minus_one_and_uses_auto_axes():
    mesh = mesh_lib.make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(mesh_lib.make_mesh(data=-1, fsdp=1, tensor=4).shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert dict(mesh_lib.mesh_of(MeshConfig(devices=1)).shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("sizes, needle", [
    ((2, 3, 1), "data=2 x fsdp=3 x tensor=1 = 6 devices, but there are 8"),
    ((3, -1, 1), "cannot be split"),
    ((-1, -1, 1), "at most one axis may be -1"),
    ((0, -1, 1), "data=0 is not allowed"),
])
def test_bad_mesh_sizes_are_one_line_errors(sizes, needle):
    with pytest.raises(mesh_lib.ShardingError, match=needle) as err:
        mesh_lib.make_mesh(*sizes)
    assert "\n" not in str(err.value)


def test_parameters_get_the_rule_tables_specs():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    params = jax.eval_shape(lambda: A.init(jax.random.key(0), _gqa()))
    specs = jax.tree.map(lambda s: s.spec, sh.param_shardings(params, AX(params), mesh))
    assert specs["embed"]["tok"] == P("tensor", "fsdp")
    assert specs["lm_head"]["w"] == P("fsdp", "tensor")
    attn, mlp = specs["blocks"]["attn"], specs["blocks"]["mlp"]
    assert attn["wq"] == P(None, "fsdp", "tensor", None)
    assert attn["wk"] == attn["wv"] == P(None, "fsdp", "tensor", None)
    assert attn["wo"] == P(None, "tensor", None, "fsdp")
    assert mlp["w_gate"] == mlp["w_up"] == P(None, "fsdp", "tensor")
    assert mlp["w_down"] == P(None, "tensor", "fsdp")
    assert specs["blocks"]["attn_norm"]["scale"] == P(None, None)
    assert specs["final_norm"]["scale"] == P(None)
    # the decode layout (one tree per layer) keeps the same specs without the layer axis
    per_layer = jax.eval_shape(unstack_blocks, params)
    per_layer = jax.tree.map(lambda s: s.spec, sh.param_shardings(per_layer, AX(per_layer), mesh))
    assert per_layer["blocks"][1]["attn"]["wo"] == P("tensor", None, "fsdp")
    # learned positions and biases (GPT-2 style)
    gpt = jax.eval_shape(lambda: A.init(jax.random.key(0), _mha()))
    gpt = jax.tree.map(lambda s: s.spec, sh.param_shardings(gpt, AX(gpt), mesh))
    assert gpt["embed"]["pos"] == P(None, "fsdp")
    assert gpt["blocks"]["attn"]["bq"] == P(None, "tensor", None)
    assert gpt["blocks"]["mlp"]["b_in"] == P(None, "tensor")
    assert gpt["blocks"]["mlp"]["b_out"] == P(None, None)


def test_optimizer_state_follows_the_parameters():
    cfg, tc = _gqa(), TrainConfig(batch_size=8, optimizer="adamw")
    opt = T_optim.make_optimizer(tc, cfg)
    state = jax.eval_shape(lambda: T.init_state(jax.random.key(0), cfg, opt))
    shardings = sh.state_shardings(state, AX(state.params), mesh_lib.make_mesh(1, 4, 2))
    adam = shardings.opt_state[1][0]
    assert adam.mu["blocks"]["mlp"]["w_down"].spec == P(None, "tensor", "fsdp")
    assert adam.nu["embed"]["tok"].spec == P("tensor", "fsdp")
    assert adam.count.spec == P() and shardings.step.spec == P()


def test_indivisible_dimension_names_the_parameter():
    mesh = mesh_lib.make_mesh(1, 1, 8)
    params = jax.eval_shape(lambda: A.init(jax.random.key(0), _gqa()))  # 2 kv heads on tensor=8
    with pytest.raises(mesh_lib.ShardingError, match=r"blocks/attn/wk dimension 2 \(kv_heads=2\) is not "
                                               r"divisible by mesh axis tensor=8") as err:
        sh.param_shardings(params, AX(params), mesh)
    assert "\n" not in str(err.value)


def test_batch_not_divisible_by_data_parallelism():
    cfg, tc = _mha(), TrainConfig(batch_size=12, grad_accum=2)
    with pytest.raises(mesh_lib.ShardingError, match=r"train.batch_size=12 must be divisible by "
                                               r"data=2 x fsdp=2 x train.grad_accum=2 = 8"):
        T.make_train_step(cfg, tc, T_optim.make_optimizer(tc, cfg), mesh=mesh_lib.make_mesh(2, 2, 2))


def test_constrain_is_a_no_op_without_a_mesh_and_pins_with_one():
    x = jnp.ones((8, 4))
    assert rules.constrain(x, ("batch", None)) is x
    mesh = mesh_lib.make_mesh(2, 2, 2)
    y = jax.jit(lambda a: rules.constrain(a * 2, ("batch", None)))
    with jax.set_mesh(mesh):
        assert _laid_out(y(x), mesh, P(("data", "fsdp"), None))
        # a batch the batch axes do not divide stays whole instead of failing
        assert jax.jit(lambda a: rules.constrain(a * 2, ("batch", None)))(jnp.ones((3, 4))).sharding \
            .is_fully_replicated


# ---- training --------------------------------------------------------------------------------------
_TOKENS = np.random.default_rng(0).integers(0, 128, (16, 33)).astype(np.int32)


@functools.cache
def _reference(cfg_fn):
    """Two single-device steps (grad_accum does not change the gradient, so one reference)."""
    cfg, tc = cfg_fn(), TrainConfig(batch_size=16)
    opt, step = T_optim.make_optimizer(tc, cfg), T.make_train_step(cfg, tc, T_optim.make_optimizer(tc, cfg))
    state = T.init_state(jax.random.key(0), cfg, opt)
    for _ in range(2):
        state, m = step(state, {"tokens": jnp.asarray(_TOKENS)})
    return jax.device_get((state, m))


@pytest.mark.parametrize("mesh_shape, cfg_fn, accum", [
    ((8, 1, 1), _mha, 1), ((2, 4, 1), _gqa, 2), ((2, 2, 2), _gqa, 1), ((1, 1, 8), _mha, 2)])
def test_sharded_train_step_equals_single_device(mesh_shape, cfg_fn, accum):
    # Compared after two AdamW steps in warmup (small lr): Adam turns a gradient that is zero
    # up to rounding (the key bias's) into a step of either sign, scaled by the lr.
    cfg, tc = cfg_fn(), TrainConfig(batch_size=16, grad_accum=accum)
    opt = T_optim.make_optimizer(tc, cfg)
    ref_state, ref_m = _reference(cfg_fn)

    mesh = mesh_lib.make_mesh(*mesh_shape)
    state = T.init_sharded_state(jax.random.key(0), cfg, opt, mesh)
    expected = sh.state_shardings(state, AX(state.params), mesh)
    assert jax.tree.all(jax.tree.map(lambda a, s: a.sharding == s, state, expected))
    step = T.make_train_step(cfg, tc, opt, mesh=mesh)
    batch = {"tokens": hosts.global_batch(_TOKENS, 16, mesh)}
    new = step(state, batch)[0]
    assert jax.tree.all(jax.tree.map(lambda a, s: a.sharding == s, new, expected))  # layout kept
    got_state, got_m = jax.device_get(step(new, batch))

    for k in ("loss", "grad_norm", "accuracy"):
        np.testing.assert_allclose(got_m[k], ref_m[k], rtol=2e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sharded_eval_step_equals_single_device():
    cfg = _gqa()
    params = randomise(A.init(jax.random.key(0), cfg))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (8, 17)).astype(np.int32)
    ref = T.make_eval_step(cfg)(params, {"tokens": tokens})
    mesh = mesh_lib.make_mesh(2, 2, 2)
    got = T.make_eval_step(cfg, mesh=mesh)(jax.device_put(params, sh.param_shardings(params, AX(params), mesh)),
                                           {"tokens": hosts.global_batch(tokens, 8, mesh)})
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5)


# ---- decoding --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decode_setup():
    cfg = _gqa()
    params = randomise(A.init(jax.random.key(0), cfg), scale=0.3)
    prompts, lengths = A.pad_prompts([[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11]], bucket=8)
    mesh = mesh_lib.make_mesh(2, 2, 2)
    sharded = jax.device_put(params, sh.param_shardings(params, AX(params), mesh))
    return cfg, params, sharded, prompts, lengths, mesh


def test_sharded_greedy_decode_equals_unsharded(decode_setup):
    cfg, params, sharded, prompts, lengths, mesh = decode_setup
    ref = A.generate(params, cfg, prompts, jax.random.key(1), max_new_tokens=12, lengths=lengths)
    with jax.set_mesh(mesh):
        got = A.generate(sharded, cfg, prompts, jax.random.key(1), max_new_tokens=12, lengths=lengths)
        sampled = A.generate(sharded, cfg, prompts, jax.random.key(2), max_new_tokens=12,
                             lengths=lengths, sampler=A.Sampler(temperature=0.8, top_p=0.9))
        layout = unstack_blocks(sharded)
        state = _prefill_jit(layout, cfg, prompts, lengths, jax.random.key(1), None, 16, (), 0)[0]
        after = _decode_jit(layout, cfg, state, None, 4, (), 0)[0]  # the scan keeps the layout
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)
    ref_sampled = A.generate(params, cfg, prompts, jax.random.key(2), max_new_tokens=12,
                             lengths=lengths, sampler=A.Sampler(temperature=0.8, top_p=0.9))
    np.testing.assert_array_equal(sampled.tokens, ref_sampled.tokens)
    # the cache is laid out as asked: rows over data x fsdp, kv heads over tensor
    for cache in (state.model, after.model):
        assert _laid_out(cache.k[-1], mesh, P(("data", "fsdp"), "tensor", None, None))
        assert _laid_out(cache.v[0], mesh, P(("data", "fsdp"), "tensor", None, None))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 4, 2)])
def test_sharded_greedy_decode_on_other_meshes(decode_setup, shape):
    """Pure data parallelism (8 replicas for 4 rows: the cache rows stay replicated) and FSDP with
    tensor parallelism give the one-device tokens too."""
    cfg, params, _, prompts, lengths, _ = decode_setup
    ref = A.generate(params, cfg, prompts, jax.random.key(1), max_new_tokens=8, lengths=lengths)
    mesh = mesh_lib.make_mesh(*shape)
    with jax.set_mesh(mesh):
        got = A.generate(jax.device_put(params, sh.param_shardings(params, AX(params), mesh)), cfg, prompts,
                         jax.random.key(1), max_new_tokens=8, lengths=lengths)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)


def test_sharded_beam_and_speculative_equal_unsharded(decode_setup):
    cfg, params, sharded, prompts, lengths, mesh = decode_setup
    dcfg = tiny(vocab_size=cfg.vocab_size, n_layers=1, d_model=16, n_heads=2)
    draft = randomise(A.init(jax.random.key(5), dcfg), scale=0.3)
    beam_ref = A.beam_search(params, cfg, prompts, beams=3, max_new_tokens=6, lengths=lengths)
    spec_ref = speculative_generate(params, cfg, draft, dcfg, prompts, jax.random.key(0), k=3,
                                    max_new_tokens=10, lengths=lengths)
    with jax.set_mesh(mesh):
        beam = A.beam_search(sharded, cfg, prompts, beams=3, max_new_tokens=6, lengths=lengths)
        spec = speculative_generate(sharded, cfg, jax.device_put(draft, sh.param_shardings(draft, AX(draft), mesh)),
                                    dcfg, prompts, jax.random.key(0), k=3, max_new_tokens=10,
                                    lengths=lengths)
    np.testing.assert_array_equal(beam.tokens, beam_ref.tokens)
    np.testing.assert_allclose(beam.scores, beam_ref.scores, rtol=1e-5)
    np.testing.assert_array_equal(spec.out.tokens, spec_ref.out.tokens)
    np.testing.assert_array_equal(spec.target_calls, spec_ref.target_calls)


# ---- checkpoints across meshes ------------------------------------------------------------------
def test_checkpoint_saved_on_one_mesh_restores_on_another_and_on_one_device(tmp_path):
    cfg, tc = _gqa(), TrainConfig(batch_size=8)
    opt = T_optim.make_optimizer(tc, cfg)
    mesh_a, mesh_b = mesh_lib.make_mesh(2, 4, 1), mesh_lib.make_mesh(1, 4, 2)
    state = T.init_sharded_state(jax.random.key(3), cfg, opt, mesh_a)
    state = state.replace(params=jax.tree.map(lambda x: x + 0.5, state.params))
    with Checkpointer(tmp_path) as ck:
        ck.save(7, state, {"step": 7})
        ck.wait()
    abstract = jax.eval_shape(lambda: T.init_state(jax.random.key(0), cfg, opt))
    with Checkpointer(tmp_path, read_only=True) as ck:
        on_b, _ = ck.restore(sh.abstract_with_shardings(abstract, AX(abstract.params), mesh_b))
        on_one, _ = ck.restore(abstract)
    want = jax.device_get(state)
    for restored, layout in ((on_b, sh.state_shardings(abstract, AX(abstract.params), mesh_b)), (on_one, None)):
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), b)
        if layout is not None:
            assert jax.tree.all(jax.tree.map(lambda a, s: a.sharding == s, restored, layout))
    assert len(on_one.params["blocks"]["attn"]["wq"].sharding.device_set) == 1


def test_global_batch_and_process_rows_on_one_process():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    assert hosts.process_rows(16, mesh) == slice(0, 16)
    rows = np.arange(16 * 3).reshape(16, 3)
    batch = hosts.global_batch(rows, 16, mesh)
    assert batch.sharding == NamedSharding(mesh, P(("data", "fsdp")))
    np.testing.assert_array_equal(hosts.to_host(batch), rows)
