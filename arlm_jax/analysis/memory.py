"""Memory a train state needs per device, what a device has, and the check that refuses a run
whose state alone cannot fit before anything is allocated (``arlm train``, ``arlm plan``).

The state's bytes are exact (from the shardings of ``jax.eval_shape``'s result); activations
and the compiler's temporaries come on top, so the check is a lower bound: it refuses what
certainly cannot fit (a ``--model.d_model 100000`` typo), not what merely might not.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from arlm_jax.errors import ConfigError

GiB = 2 ** 30


def tree_bytes_per_device(tree: Any) -> int:
    """Per-device bytes of a tree of ShapeDtypeStructs (with shardings, else whole)."""
    def one(a: Any) -> int:
        sharding = getattr(a, "sharding", None)
        shape = sharding.shard_shape(a.shape) if sharding is not None else a.shape
        return math.prod(shape) * jnp.dtype(a.dtype).itemsize
    return sum(one(a) for a in jax.tree.leaves(tree))


def _mem_available() -> int | None:
    """The host's available memory (Linux /proc/meminfo), in bytes."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def device_memory(device: jax.Device, sharing: int = 1) -> int | None:
    """Bytes one device can hold: the accelerator's own limit, or for CPU devices (which share
    the host's memory) the host's available memory over ``sharing`` devices. None if unknown."""
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend implements it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        avail = _mem_available()
        return avail // max(sharing, 1) if avail else None
    return None


def check_state_fits(abstract_state: Any, mesh: Any) -> None:
    """ConfigError when the train state (parameters + optimizer state, laid out on ``mesh``)
    needs more memory per device than a device of ``mesh`` has."""
    need = tree_bytes_per_device(abstract_state)
    params = tree_bytes_per_device(abstract_state.params)
    device = mesh.devices.flat[0]
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    have = device_memory(device, sharing=local if device.platform == "cpu" else 1)
    if have is not None and need > have:
        raise ConfigError(
            f"model: the train state needs {need / GiB:.1f} GiB per device (parameters {params / GiB:.1f} "
            f"GiB, the rest optimizer state) but {device.platform} device {device.id} has "
            f"{have / GiB:.1f} GiB{' available' if device.platform == 'cpu' else ''}; choose a smaller model or more "
            f"devices (arlm plan --devices N estimates a mesh)")
