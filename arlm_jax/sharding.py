"""Named-mesh sharding: one mesh helper, one rule table, logical axis names on every weight.

The mesh always has the three axes ``data`` (pure data parallelism: replicas), ``fsdp``
(data parallelism whose replicas also split the weights and optimizer state: ZeRO-3 / FSDP)
and ``tensor`` (Megatron-style tensor parallelism: heads and the MLP hidden axis split), with
``AxisType.Auto`` so XLA's partitioner inserts the collectives. Sizes of 1 switch an axis off.

Every parameter dimension has a *logical* name (``embed``, ``heads``, ``mlp``, ...; see
``logical_axes``) and one rule table maps logical names to mesh axes. The same table shards
activations: ``constrain`` pins the batch of the residual stream at block boundaries and of
the KV cache, and is a no-op when no mesh is set (``jax.set_mesh``), so the model code runs
unchanged on one device.

Typical use (what ``train.make_train_step(..., mesh=mesh)`` does)::

    mesh = make_mesh(data=2, fsdp=-1, tensor=2)               # -1: what is left of the devices
    abstract = jax.eval_shape(lambda: init(key, cfg))
    shardings = param_shardings(abstract, mesh)                # NamedSharding per leaf
    params = jax.jit(init, static_argnums=1, out_shardings=shardings)(key, cfg)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from arlm_jax.config import ConfigError, MeshConfig

Array = jax.Array

MESH_AXES = ("data", "fsdp", "tensor")

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
)

# Per-leaf logical axes of one block's weights (a stacked tree adds "layers" in front).
_LEAF_AXES = {
    "wq": ("embed", "heads", "head_dim"), "wk": ("embed", "kv_heads", "head_dim"),
    "wv": ("embed", "kv_heads", "head_dim"), "wo": ("heads", "head_dim", "embed"),
    "bq": ("heads", "head_dim"), "bk": ("kv_heads", "head_dim"), "bv": ("kv_heads", "head_dim"),
    "bo": ("norm",),
    "w_in": ("embed", "mlp"), "w_gate": ("embed", "mlp"), "w_up": ("embed", "mlp"),
    "w_out": ("mlp", "embed"), "w_down": ("mlp", "embed"), "b_in": ("mlp",), "b_out": ("norm",),
    "scale": ("norm",), "bias": ("norm",),
}
_TOP_AXES = {("embed", "tok"): ("vocab", "embed"), ("embed", "pos"): ("length", "embed"),
             ("rel_bias",): (None, None), ("lm_head", "w"): ("embed", "vocab")}


class ShardingError(ConfigError):
    """A mesh or a shape that cannot be laid out on the devices; a one-line message."""


# ---- the mesh -----------------------------------------------------------------------------------
def mesh_shape(data: int = 1, fsdp: int = -1, tensor: int = 1, n_devices: int | None = None
               ) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with the one -1 filled so the product is ``n_devices``."""
    n = jax.device_count() if n_devices is None else n_devices
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    bad = [f"{k}={v}" for k, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ShardingError(f"mesh: {bad[0]} is not allowed; each of data, fsdp, tensor is a "
                            f"positive size or -1 (fill with the remaining devices)")
    fill = [k for k, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise ShardingError(f"mesh: {' and '.join(fill)} are both -1; at most one axis may be -1")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if fill:
        if n % fixed:
            raise ShardingError(f"mesh: {n} devices cannot be split with "
                                f"{_describe(sizes)}; the other sizes must multiply to a divisor of {n}")
        sizes[fill[0]] = n // fixed
    if math.prod(sizes.values()) != n:
        raise ShardingError(f"mesh: {_describe(sizes)} = {math.prod(sizes.values())} devices, but "
                            f"there are {n}; choose sizes whose product is {n} (or -1 for one axis)")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def _describe(sizes: dict) -> str:
    return " x ".join(f"{k}={v}" for k, v in sizes.items())


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all, every process's) with axes data, fsdp, tensor.

    One size may be -1: it takes the devices left over. Auto axes: XLA propagates shardings
    from the inputs, the outputs and the ``constrain`` calls, and inserts the collectives.
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_of(mc: MeshConfig) -> Mesh:
    """The mesh a run's ``mesh`` section asks for (``devices`` > 0: the first N devices)."""
    devices = jax.devices()
    if mc.devices:
        if mc.devices > len(devices):
            raise ShardingError(f"mesh.devices={mc.devices} but there are only {len(devices)} devices; "
                                f"choose 1..{len(devices)} or 0 (all)")
        if jax.process_count() > 1:
            raise ShardingError(f"mesh.devices={mc.devices}: a multi-process run uses every device; "
                                f"set mesh.devices=0")
        devices = devices[:mc.devices]
    return make_mesh(mc.data, mc.fsdp, mc.tensor, devices)


# ---- logical names and specs --------------------------------------------------------------------
def _keys(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def _leaf_axes(keys: tuple[str, ...], ndim: int) -> tuple[str | None, ...] | None:
    """Logical names of a parameter at dict path ``keys`` with ``ndim`` dims, or None."""
    for top, axes in _TOP_AXES.items():
        if keys[-len(top):] == top and len(axes) == ndim:
            return axes
    if keys and keys[-1] in _LEAF_AXES:
        axes = _LEAF_AXES[keys[-1]]
        if ndim == len(axes) + 1:  # stacked blocks [L, ...]
            return ("layers",) + axes
        if ndim == len(axes):  # per-layer list (decode layout), final_norm, ...
            return axes
    return None


def logical_axes(params: Any) -> Any:
    """A tree like ``params`` (arrays or ShapeDtypeStructs) of tuples of logical axis names.

    Works on the stacked training layout and on ``model.unstack_blocks``' decode layout.
    """
    def axes(path: tuple, leaf: Any) -> tuple:
        found = _leaf_axes(_keys(path), len(leaf.shape))
        if found is None:
            raise ShardingError(f"sharding: no logical axes for parameter {'/'.join(_keys(path))} "
                                f"of shape {tuple(leaf.shape)}; add it to sharding._LEAF_AXES")
        return found
    return jax.tree_util.tree_map_with_path(axes, params)


def logical_to_spec(names: Sequence[str | None], rules=DEFAULT_RULES) -> P:
    """``P`` of mesh axes for a tuple of logical names (unknown names and None: replicated)."""
    table = dict(rules)
    return P(*(None if n is None else table.get(n) for n in names))


def _mesh_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes of one spec entry (None, a name or a tuple of names)."""
    return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def _axis_size(mesh: Mesh, entry: Any) -> int:
    return math.prod(mesh.shape[a] for a in _mesh_axes(entry))


def _describe_axes(mesh: Mesh, entry: Any) -> str:
    return " x ".join(f"{a}={mesh.shape[a]}" for a in _mesh_axes(entry))


def _check_divisible(what: str, shape: Sequence[int], names: Sequence, spec: P, mesh: Mesh) -> None:
    for dim, (size, name, entry) in enumerate(zip(shape, names, spec)):
        n = _axis_size(mesh, entry)
        if size % n:
            raise ShardingError(
                f"sharding: {what} dimension {dim} ({name}={size}) is not divisible by mesh "
                f"axis {_describe_axes(mesh, entry)}; choose a mesh size that divides {size} or "
                f"change the model shape")


def param_shardings(params: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """``NamedSharding`` per parameter (arrays or ShapeDtypeStructs), from the rule table.

    A dimension that its mesh axes do not divide is a ``ShardingError`` naming the parameter.
    """
    def one(path: tuple, leaf: Any, names: tuple) -> NamedSharding:
        spec = logical_to_spec(names, rules)
        _check_divisible("/".join(_keys(path)), leaf.shape, names, spec, mesh)
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map_with_path(one, params, logical_axes(params))


def state_shardings(state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Shardings of a whole train state (abstract or concrete).

    Parameters follow the rule table; each optimizer-state leaf whose dict path ends in a
    parameter's path and has its shape (AdamW's mu and nu) gets that parameter's sharding;
    everything else (step counters) is replicated.
    """
    params = state.params
    by_path = {_keys(p): (leaf.shape, s) for (p, leaf), s in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(param_shardings(params, mesh, rules)))}
    replicated = NamedSharding(mesh, P())

    def one(path: tuple, leaf: Any) -> NamedSharding:
        keys = tuple(k for p, k in zip(path, _keys(path)) if isinstance(p, jax.tree_util.DictKey))
        for n in range(len(keys), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated
    return jax.tree_util.tree_map_with_path(one, state)


def abstract_with_shardings(state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """ShapeDtypeStructs of ``state`` carrying ``state_shardings``: what a checkpoint restore
    needs to put each array straight into its place on ``mesh`` (whatever mesh saved it)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        state, state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Rows over the batch axes (data x fsdp), the rest replicated: for tokens [B, T]."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def batch_parallelism(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways the batch is split (data x fsdp with the default rules)."""
    return _axis_size(mesh, dict(rules)["batch"])


def check_batch(batch_size: int, mesh: Mesh, grad_accum: int = 1, field: str = "train.batch_size",
                rules=DEFAULT_RULES) -> None:
    """ShardingError unless every micro-batch splits evenly over the batch axes."""
    n = batch_parallelism(mesh, rules)
    if batch_size % (n * grad_accum):
        also = f" x train.grad_accum={grad_accum}" if grad_accum > 1 else ""
        raise ShardingError(f"{field}={batch_size} must be divisible by "
                            f"{_describe_axes(mesh, dict(rules)['batch'])}{also} = "
                            f"{n * grad_accum} (each device takes an equal share of every micro-batch)")


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
    return P(*(entry if size % _axis_size(mesh, entry) == 0 else None for size, entry in zip(shape, spec)))


# ---- host data -> global arrays -----------------------------------------------------------------
def process_rows(batch_size: int, mesh: Mesh, rules=DEFAULT_RULES) -> slice:
    """The rows of a global batch this process must load: its devices' shares, contiguous.

    With one process this is every row. With several, ``batch_sharding`` puts the rows of each
    device of this process together (``make_mesh`` orders devices by process).
    """
    idx = batch_sharding(mesh, rules).addressable_devices_indices_map((batch_size,))
    spans = sorted({s[0].indices(batch_size)[:2] for s in idx.values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise ShardingError("sharding: this process's batch rows are not contiguous; order the "
                            "mesh devices by process (make_mesh does)")
    return slice(lo, hi)


def to_host(x: Array) -> np.ndarray:
    """The whole of ``x`` as numpy on every process (gathered when other processes hold parts)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(local: np.ndarray, batch_size: int, mesh: Mesh, rules=DEFAULT_RULES) -> Array:
    """A global [B, ...] array sharded over the batch axes, from this process's rows of it."""
    shape = (batch_size,) + tuple(local.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharding(mesh, rules), local, shape)
