"""Parameter counts, FLOPs per token (each family counts its own) and accelerator peaks, for MFU."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arlm_jax.models import family_of


def param_count(params: dict) -> int:
    """Total number of scalars in a parameter tree."""
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def flops_per_token(cfg: Any, seq_len: int | None = None) -> float:
    """Training FLOPs per token of any family's model at a sequence length (its own count)."""
    return family_of(cfg).flops_per_token(cfg, seq_len)


# Dense peak FLOP/s per device from vendor data sheets (no sparsity).
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 494e12,  # float32 matmuls run as TF32
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 494e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 156e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5e", "bfloat16"): 197e12, ("TPU v5p", "bfloat16"): 459e12,
    ("TPU v6 lite", "bfloat16"): 918e12,
}


def measured_matmul_peak(dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul on the default device: the practical CPU peak."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def peak_flops(dtype: str = "float32", device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number comes from) for MFU.

    Accelerators use the data-sheet table above; a CPU (or an unknown device) uses a measured
    1024² matmul, so CPU MFU reads as "fraction of what XLA's best matmul achieves here".
    """
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for (name, dt), value in PEAK_FLOPS.items():
        if name.lower() in kind.lower() and dt == dtype:
            return value, f"data sheet ({name}, {dt})"
    return measured_matmul_peak(jnp.float32 if dtype == "float32" else jnp.bfloat16), \
        f"measured {kind or device.platform} matmul"
