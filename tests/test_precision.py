"""matmul_dtype='auto': what it resolves to per backend and CPU, and that a model with it computes
exactly what the dtype it resolved to computes."""

import dataclasses

import jax
import numpy as np
import pytest

import arlm_jax as A
from arlm_jax.models import precision
from arlm_jax.models.precision import bf16_matmul_reason, cpu_flags, resolve_matmul_dtype
from arlm_jax.models.transformer.config import TransformerConfig
from conftest import randomise, tiny

BF16 = frozenset({"fpu", "avx512f", "avx512_bf16"})
AMX = frozenset({"fpu", "avx512f", "amx_bf16", "amx_tile"})
PLAIN = frozenset({"fpu", "avx2", "avx512f"})


@pytest.mark.parametrize("matmul_dtype,dtype,backend,flags,want", [
    ("", "float32", "cpu", BF16, "float32"),          # '' follows the compute dtype
    ("", "bfloat16", "cpu", PLAIN, "bfloat16"),
    ("float32", "float32", "gpu", BF16, "float32"),   # a named dtype is kept everywhere
    ("bfloat16", "float32", "cpu", PLAIN, "bfloat16"),
    ("auto", "float32", "cpu", BF16, "bfloat16"),     # AVX-512-BF16
    ("auto", "float32", "cpu", AMX, "bfloat16"),      # AMX
    ("auto", "float32", "cpu", PLAIN, "float32"),     # no native bfloat16 dot products
    ("auto", "float32", "cpu", frozenset(), "float32"),  # no /proc/cpuinfo (macOS, Windows)
    ("auto", "bfloat16", "cpu", PLAIN, "bfloat16"),
    ("auto", "float32", "gpu", PLAIN, "bfloat16"),    # accelerators: the usual mixed precision
    ("auto", "float32", "tpu", frozenset(), "bfloat16"),
])
def test_auto_resolves_per_backend_and_cpu_flags(matmul_dtype, dtype, backend, flags, want):
    assert resolve_matmul_dtype(matmul_dtype, dtype, backend, flags) == want


def test_the_reason_names_what_was_found():
    assert bf16_matmul_reason("cpu", AMX) == "CPU with amx_bf16"
    assert bf16_matmul_reason("cpu", BF16 | AMX) == "CPU with avx512_bf16 and amx_bf16"
    assert bf16_matmul_reason("gpu", PLAIN) == "gpu backend"
    assert bf16_matmul_reason("cpu", PLAIN) is None


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx512_bf16\n")
    assert precision.cpu_flags.__wrapped__(info) == {"fpu", "sse2", "avx512_bf16"}
    assert precision.cpu_flags.__wrapped__(tmp_path / "absent") == frozenset()
    assert isinstance(cpu_flags(), frozenset)  # this machine's, whatever they are


@pytest.mark.parametrize("flags,resolved", [(BF16, "bfloat16"), (PLAIN, "float32")])
def test_a_model_with_auto_computes_what_its_resolved_dtype_computes(monkeypatch, flags, resolved):
    monkeypatch.setattr(precision, "cpu_flags", lambda path=None: flags)
    auto = tiny(matmul_dtype="auto")
    params = randomise(A.init(jax.random.key(0), auto))
    batch = {"tokens": jax.random.randint(jax.random.key(1), (2, 13), 0, auto.vocab_size)}

    def loss_and_grads(cfg):  # a fresh jit per config: the resolution happens at trace time
        return jax.jit(jax.value_and_grad(lambda p: A.loss_fn(p, batch, cfg)[0]))(params)
    got = loss_and_grads(auto)
    want = loss_and_grads(dataclasses.replace(auto, matmul_dtype=resolved))
    other = loss_and_grads(dataclasses.replace(auto, matmul_dtype={"bfloat16": "float32"}.get(resolved, "bfloat16")))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(got[0]) != float(other[0])  # the two dtypes really differ at this size


def test_the_demo_decides_its_matmul_dtype_and_says_so(monkeypatch):
    demo = TransformerConfig.demo().validate()
    assert demo.matmul_dtype == "auto"
    family = A.models.get_family("transformer")
    monkeypatch.setattr(precision, "cpu_flags", lambda path=None: BF16)
    assert "bfloat16 matmul operands (auto: CPU with avx512_bf16)" in family.describe(demo)
    monkeypatch.setattr(precision, "cpu_flags", lambda path=None: PLAIN)
    assert "float32 matmul operands (auto: no native bfloat16 dot products)" in family.describe(demo)
    assert "matmul" not in family.describe(tiny())
