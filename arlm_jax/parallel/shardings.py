"""Shardings of parameters, train states and batches, from logical axes and the rule table.

Typical use (what ``train.step.make_train_step(..., mesh=mesh)`` does)::

    mesh = make_mesh(data=2, fsdp=-1, tensor=2)               # -1: what is left of the devices
    family = family_of(cfg)
    abstract = jax.eval_shape(lambda: family.init(key, cfg))
    shardings = param_shardings(abstract, family.param_axes(abstract), mesh)
    params = jax.jit(family.init, static_argnums=1, out_shardings=shardings)(key, cfg)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arlm_jax.parallel.mesh import ShardingError
from arlm_jax.parallel.rules import DEFAULT_RULES, axis_size, describe_axes, logical_to_spec


def path_keys(path: tuple) -> tuple[str, ...]:
    """The dict keys (or attribute names) of a pytree path, as strings."""
    return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def _check_divisible(what: str, shape: Sequence[int], names: Sequence, spec: P, mesh: Mesh) -> None:
    for dim, (size, name, entry) in enumerate(zip(shape, names, spec)):
        n = axis_size(mesh, entry)
        if size % n:
            raise ShardingError(
                f"sharding: {what} dimension {dim} ({name}={size}) is not divisible by mesh "
                f"axis {describe_axes(mesh, entry)}; choose a mesh size that divides {size} or "
                f"change the model shape")



def param_shardings(params: Any, axes: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """``NamedSharding`` per parameter (arrays or ShapeDtypeStructs), from its logical ``axes``
    (a tree like ``params`` of tuples of names: ``Family.param_axes``) and the rule table.

    A dimension that its mesh axes do not divide is a ``ShardingError`` naming the parameter.
    """
    def one(path: tuple, leaf: Any, names: tuple) -> NamedSharding:
        spec = logical_to_spec(names, rules)
        _check_divisible("/".join(path_keys(path)), leaf.shape, names, spec, mesh)
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map_with_path(one, params, axes, is_leaf=lambda x: x is None)


def state_shardings(state: Any, axes: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Shardings of a whole train state (abstract or concrete), ``axes`` those of its params.

    Parameters follow the rule table; each optimizer-state leaf whose dict path ends in a
    parameter's path and has its shape (AdamW's mu and nu) gets that parameter's sharding;
    everything else (step counters) is replicated.
    """
    params = state.params
    by_path = {path_keys(p): (leaf.shape, s) for (p, leaf), s in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(param_shardings(params, axes, mesh, rules)))}
    replicated = NamedSharding(mesh, P())

    def one(path: tuple, leaf: Any) -> NamedSharding:
        keys = tuple(k for p, k in zip(path, path_keys(path)) if isinstance(p, jax.tree_util.DictKey))
        for n in range(len(keys), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated
    return jax.tree_util.tree_map_with_path(one, state)


def abstract_with_shardings(state: Any, axes: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """ShapeDtypeStructs of ``state`` carrying ``state_shardings``: what a checkpoint restore
    needs to put each array straight into its place on ``mesh`` (whatever mesh saved it)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        state, state_shardings(state, axes, mesh, rules))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Rows over the batch axes (data x fsdp), the rest replicated: for tokens [B, T]."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def batch_parallelism(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways the batch is split (data x fsdp with the default rules)."""
    return axis_size(mesh, dict(rules)["batch"])


def check_batch(batch_size: int, mesh: Mesh, grad_accum: int = 1, field: str = "train.batch_size",
                rules=DEFAULT_RULES) -> None:
    """ShardingError unless every micro-batch splits evenly over the batch axes."""
    n = batch_parallelism(mesh, rules)
    if batch_size % (n * grad_accum):
        also = f" x train.grad_accum={grad_accum}" if grad_accum > 1 else ""
        raise ShardingError(f"{field}={batch_size} must be divisible by "
                            f"{describe_axes(mesh, dict(rules)['batch'])}{also} = "
                            f"{n * grad_accum} (each device takes an equal share of every micro-batch)")


