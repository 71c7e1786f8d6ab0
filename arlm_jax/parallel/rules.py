"""Logical axis names -> mesh axes: the one rule table, and pinning activations with it.

Every parameter dimension has a *logical* name (``embed``, ``heads``, ``mlp``, ...), given by
its model family (``Family.param_axes``), and one rule table maps logical names to the mesh
axes of mesh.py. The same table shards activations: ``constrain`` pins the batch of the
residual stream at block boundaries and of a decoding state, and is a no-op when no mesh is
set (``jax.set_mesh``), so model code runs unchanged on one device.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec as P

Array = jax.Array

# logical name -> mesh axis (or tuple of axes, or None: replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),  # examples of a batch, rows of the KV cache
    ("embed", "fsdp"),  # d_model of the weights (FSDP shards weights on it)
    ("heads", "tensor"),  # query heads
    ("kv_heads", "tensor"),  # key/value heads (weights and KV cache)
    ("mlp", "tensor"),  # the MLP hidden axis d_ff
    ("vocab", "tensor"),  # token embedding / output projection rows
    ("layers", None),  # the stacked-layer axis is scanned, never split
    ("head_dim", None),
    ("norm", None),  # norm scales and the d_model biases: small, replicated
    ("length", None),  # positions: learned table rows, sequence, cache slots
    ("act_embed", None),  # d_model of activations (replicated: no sequence parallelism)
    ("hidden", "fsdp"),  # a recurrent layer's units (its kernels' inputs: FSDP shards them)
    ("gates", None),  # a recurrent layer's gate pre-activations: every step needs all of them
    ("act_hidden", None),  # a recurrent decoding state's units
)


def logical_to_spec(names: Sequence[str | None], rules=DEFAULT_RULES) -> P:
    """``P`` of mesh axes for a tuple of logical names (unknown names and None: replicated)."""
    table = dict(rules)
    return P(*(None if n is None else table.get(n) for n in names))


def mesh_axes_of(entry: Any) -> tuple[str, ...]:
    """The mesh axes of one spec entry (None, a name or a tuple of names)."""
    return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def axis_size(mesh: Mesh, entry: Any) -> int:
    return math.prod(mesh.shape[a] for a in mesh_axes_of(entry))


def describe_axes(mesh: Mesh, entry: Any) -> str:
    return " x ".join(f"{a}={mesh.shape[a]}" for a in mesh_axes_of(entry))


# ---- activations --------------------------------------------------------------------------------
def constrain(x: Array, names: Sequence[str | None], rules=DEFAULT_RULES) -> Array:
    """Pin ``x``'s layout to the logical ``names`` when a mesh is set; else return ``x``.

    Mesh axes that do not divide a dimension (a batch of 1 on data=2) leave it replicated:
    activations may have any shape, only weights must divide exactly.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(x.shape, names, mesh, rules))


def fit_spec(shape: Sequence[int], names: Sequence[str | None], mesh: Any, rules=DEFAULT_RULES) -> P:
    """The spec of logical ``names``, with each dimension its mesh axes do not divide replicated."""
    spec = logical_to_spec(names, rules)
    return P(*(entry if size % axis_size(mesh, entry) == 0 else None for size, entry in zip(shape, spec)))




def in_mesh(fn, mesh: Mesh):
    """``fn`` traced with ``mesh`` as the abstract mesh, so ``constrain`` takes effect inside
    jit without the caller setting a mesh."""
    def wrapped(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return wrapped
