"""The loss and its metrics against the one-token-at-a-time numpy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import arlm_jax as A
from conftest import tiny
import reference


def test_loss_equals_numpy_reference_with_mask():
    cfg = tiny(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2)
    params = A.init(jax.random.key(0), cfg)
    toks = jax.random.randint(jax.random.key(1), (3, 11), 0, cfg.vocab_size)
    mask = (jax.random.uniform(jax.random.key(2), (3, 10)) > 0.3).astype(jnp.float32).at[0, -1].set(0.0)
    loss, m = jax.jit(lambda p: A.loss_fn(p, {"tokens": toks, "mask": mask}, cfg))(params)
    logits = reference.forward(jax.tree.map(np.asarray, params), np.asarray(toks[:, :-1]), cfg)
    ref = reference.cross_entropy(logits, np.asarray(toks[:, 1:]), np.asarray(mask))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert float(m["tokens"]) == float(mask.sum())
    # a masked-out target really is ignored (the last token is a target only, never an input)
    toks2 = toks.at[0, -1].set((toks[0, -1] + 1) % cfg.vocab_size)
    loss2, _ = A.loss_fn(params, {"tokens": toks2, "mask": mask}, cfg)
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def test_cross_entropy_metrics_and_z_loss():
    logits = jnp.array([[[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]])  # [1, 2, 3]
    targets = jnp.array([[0, 2]])
    loss, m = A.cross_entropy(logits, targets)
    lse = np.log(np.exp(np.asarray(logits[0])).sum(-1))
    nll = [lse[0] - 2.0, lse[1] - 0.0]
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-6)
    assert float(m["accuracy"]) == 0.5 and float(m["tokens"]) == 2
    zl, _ = A.cross_entropy(logits, targets, z_loss=1e-2)
    np.testing.assert_allclose(float(zl), np.mean(nll) + 1e-2 * np.mean(lse**2), rtol=1e-6)


def test_bf16_logits_are_upcast_before_the_loss():
    logits = jnp.full((1, 1, 50000), 0.0, jnp.bfloat16).at[0, 0, 0].set(1.0)
    loss, _ = A.cross_entropy(logits, jnp.array([[0]]))
    exact = math.log(math.e + 49999) - 1.0
    np.testing.assert_allclose(float(loss), exact, rtol=1e-6)


def test_perplexity_and_bits_per_byte():
    assert A.perplexity(math.log(7.0)) == 7.0 or abs(A.perplexity(math.log(7.0)) - 7.0) < 1e-9
    assert abs(A.bits_per_byte(math.log(2.0) * 3, 1.5) - 2.0) < 1e-12
    assert math.isfinite(A.perplexity(1e6))  # clipped, not OverflowError
