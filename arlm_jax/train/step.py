"""One pure, jit-compiled train step (and its eval twin), for a model of any family.

The optimizer is in optim.py and the loop with data, logging and checkpoints in loop.py; this
file is what other JAX code reuses: ``init_state``, ``make_train_step``, ``make_eval_step``.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arlm_jax.config import TrainConfig
from arlm_jax.loss import loss_fn
from arlm_jax.models import family_of
from arlm_jax.parallel.rules import constrain, in_mesh
from arlm_jax.parallel.shardings import batch_sharding, check_batch, param_shardings, state_shardings
from arlm_jax.train.optim import lr_schedule

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training: a pytree, donated to each step."""

    step: Array  # int32 []
    params: dict
    opt_state: optax.OptState


def init_state(key: Array, cfg: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Fresh parameters (the family's ``init``) and optimizer state at step 0."""
    params = family_of(cfg).init(key, cfg)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def _grads(params: dict, batch: dict, cfg: Any, tc: TrainConfig, key: Array
           ) -> tuple[dict, dict]:
    """Gradient of the token-mean loss over the whole batch, accumulated over micro-batches.

    batch["tokens"] [B, T+1]. With grad_accum = A the batch is split into A micro-batches of
    B/A rows scanned in sequence; each micro loss is weighted by its share of the batch's
    tokens, so the summed gradient equals the full-batch gradient exactly.
    """
    tokens = batch["tokens"]
    mask = batch.get("mask")
    if mask is None:
        mask = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32)
    total = jnp.maximum(mask.sum(), 1.0)
    a = tc.grad_accum

    def micro(params: dict, mb: dict, k: Array) -> tuple[Array, dict]:
        loss, m = loss_fn(params, mb, cfg, dropout_key=k, z_loss=tc.z_loss)
        return loss * (m["tokens"] / total), m

    grad_fn = jax.grad(micro, has_aux=True)
    if a == 1:
        grads, m = grad_fn(params, {"tokens": tokens, "mask": mask}, key)
        return grads, {k: m[k] for k in ("nll_sum", "correct", "tokens")}

    def split(x: Array) -> Array:  # [B, ...] -> [A, B/A, ...]
        x = x.reshape(x.shape[0] // a, a, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

    mbs = {"tokens": split(tokens), "mask": split(mask)}
    keys = jax.random.split(key, a)

    def body(acc: tuple, inp: tuple) -> tuple[tuple, None]:
        g_acc, m_acc = acc
        mb, k = inp
        g, m = grad_fn(params, mb, k)
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        m_acc = {n: m_acc[n] + m[n] for n in m_acc}
        return (g_acc, m_acc), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    m0 = {n: jnp.zeros((), jnp.float32) for n in ("nll_sum", "correct", "tokens")}
    (grads, m), _ = jax.lax.scan(body, (zeros, m0), (mbs, keys))
    return grads, m


def make_train_step(cfg: Any, tc: TrainConfig, optimizer: optax.GradientTransformation,
                    *, mesh: Mesh | None = None, **jit_kwargs):
    """A jitted ``step(state, batch) -> (state, metrics)`` with the state donated.

    batch["tokens"] int32 [B, T+1], optional batch["mask"] float [B, T]. The dropout key is
    ``fold_in(key(seed), step)``, so a resumed run draws exactly the masks it would have.
    Metrics: loss (mean NLL of the batch), accuracy, grad_norm, lr, tokens.

    With a ``mesh`` (``parallel.mesh.make_mesh``) the step is compiled for it: parameters and
    optimizer state laid out by the rule table (``parallel.shardings.state_shardings``; FSDP over
    ``fsdp``, tensor parallelism over ``tensor``), the batch rows over ``data`` x ``fsdp``,
    activations pinned at block boundaries, metrics replicated. Inputs already laid out that
    way (``init_sharded_state``, ``parallel.hosts.global_batch``) are used in place.
    """
    schedule = lr_schedule(tc)
    base_key = jax.random.key(tc.seed + 1)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        grads, m = _grads(state.params, batch, cfg, tc, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        n = jnp.maximum(m["tokens"], 1.0)
        metrics = {"loss": m["nll_sum"] / n, "accuracy": m["correct"] / n,
                   "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                   "tokens": m["tokens"]}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=0, **jit_kwargs)
    check_batch(tc.batch_size, mesh, tc.grad_accum)
    abstract = jax.eval_shape(lambda: init_state(jax.random.key(0), cfg, optimizer))
    state_sh = state_shardings(abstract, family_of(cfg).param_axes(abstract.params), mesh)
    return jax.jit(in_mesh(step, mesh), donate_argnums=0, in_shardings=(state_sh, batch_sharding(mesh)),
                   out_shardings=(state_sh, NamedSharding(mesh, P())), **jit_kwargs)


def init_sharded_state(key: Array, cfg: Any, optimizer: optax.GradientTransformation,
                       mesh: Mesh) -> TrainState:
    """``init_state`` computed directly in its sharded layout: no device ever holds the whole
    model (what a model too big for one device needs). Same values as ``init_state``."""
    make = lambda k: init_state(k, cfg, optimizer)  # noqa: E731
    abstract = jax.eval_shape(make, key)
    shardings = state_shardings(abstract, family_of(cfg).param_axes(abstract.params), mesh)
    return jax.jit(make, out_shardings=shardings)(key)


def state_from_params(params: Any, cfg: Any, optimizer: optax.GradientTransformation,
                      mesh: Mesh) -> TrainState:
    """A step-0 train state around given params (fitted n-gram tables, or fine-tuning's
    ``train.init_from``), laid out as ``init_sharded_state`` lays out a fresh one."""
    make = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))  # noqa: E731
    abstract = jax.eval_shape(make, params)
    shardings = state_shardings(abstract, family_of(cfg).param_axes(abstract.params), mesh)
    return jax.jit(make, out_shardings=shardings)(params)


def make_eval_step(cfg: Any, *, mesh: Mesh | None = None, **jit_kwargs):
    """A jitted ``eval_step(params, batch) -> {nll_sum, correct, tokens}`` (sums, to combine).

    With a ``mesh``: params as laid out by the train step, batch rows over the batch axes.
    """
    def eval_step(params: dict, batch: dict) -> dict:
        _, m = loss_fn(params, batch, cfg)
        return {k: m[k] for k in ("nll_sum", "correct", "tokens")}
    if mesh is None:
        return jax.jit(eval_step, **jit_kwargs)
    fam = family_of(cfg)
    abstract = jax.eval_shape(lambda: fam.init(jax.random.key(0), cfg))
    params_sh = param_shardings(abstract, fam.param_axes(abstract), mesh)
    return jax.jit(in_mesh(eval_step, mesh), in_shardings=(params_sh, batch_sharding(mesh)),
                   out_shardings=NamedSharding(mesh, P()), **jit_kwargs)
