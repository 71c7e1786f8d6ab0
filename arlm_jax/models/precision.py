"""What ``matmul_dtype='auto'`` means on the machine at hand: bfloat16 matmul operands where
the hardware multiplies bfloat16 natively, else the compute dtype.

bfloat16 operands with float32 accumulation (``layers.mixed_matmul``) are the usual recipe on
GPUs and TPUs. On a CPU they pay only with native bfloat16 dot products: x86's AVX-512-BF16
(``vdpbf16ps``) or AMX. Without them XLA:CPU converts the operands and the matmuls get slower
than float32 ones, so 'auto' keeps float32 there (docs/benchmarks.md, issue 13).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax

AUTO = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of x86's bfloat16 dot products


@functools.cache
def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of this machine's CPU as Linux lists them (the first ``flags`` line of
    /proc/cpuinfo); empty where there is no such file (macOS, Windows)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_matmul_reason(backend: str | None = None, flags: frozenset[str] | None = None) -> str | None:
    """Why bfloat16 matmul operands are fast here (a few words), or None where they are not.
    ``backend``: a JAX platform name (default: ``jax.default_backend()``); ``flags``: CPU
    feature flags (default: ``cpu_flags()``)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return f"{backend} backend"
    have = [f for f in BF16_CPU_FLAGS if f in (cpu_flags() if flags is None else flags)]
    return f"CPU with {' and '.join(have)}" if have else None


def resolve_matmul_dtype(matmul_dtype: str, dtype: str, backend: str | None = None,
                         flags: frozenset[str] | None = None) -> str:
    """The operand dtype of the projection and MLP matmuls: ``matmul_dtype`` when it names one,
    ``dtype`` when it is '', and for 'auto' bfloat16 where ``bf16_matmul_reason`` finds a reason,
    else ``dtype``."""
    if matmul_dtype == AUTO:
        return "bfloat16" if bf16_matmul_reason(backend, flags) else dtype
    return matmul_dtype or dtype
