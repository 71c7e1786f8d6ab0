"""Host data to global arrays and back: each process loads only its rows of a batch."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from arlm_jax.parallel.mesh import ShardingError
from arlm_jax.parallel.rules import DEFAULT_RULES
from arlm_jax.parallel.shardings import batch_sharding

Array = jax.Array

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
