"""The device mesh: always the three axes ``data``, ``fsdp`` and ``tensor``.

``data`` is pure data parallelism (replicas), ``fsdp`` data parallelism whose replicas also
split the weights and optimizer state (ZeRO-3 / FSDP), ``tensor`` Megatron-style tensor
parallelism (heads and the MLP hidden axis split). Axes are ``AxisType.Auto``, so XLA's
partitioner inserts the collectives. Sizes of 1 switch an axis off.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import AxisType, Mesh

from arlm_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


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


def mesh_of(mc: Any) -> Mesh:
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


