import dataclasses
import os

# The suite is dominated by XLA compiles of small programs, so it runs with flags that make
# XLA:CPU compile faster without changing what the HLO computes (XLA's own graph passes still
# run): LLVM's backend optimisation level 0 (~8 -> ~5.5 minutes on 2 cores, when the suite was
# smaller); the classic loop emitters in place of the MLIR fusion emitters (compiles ~2.3x
# faster: tests/test_model.py 147 -> 81 s); and LLVM code generation in one piece, not split
# over threads that the two xdist workers leave no core for (~10% faster compiles; it can
# change float rounding by an ulp between two different programs, which tests compare with a
# tolerance). The flags go in the environment before jax creates its backend, so subprocesses
# inherit them; a flag the caller already set wins.
FAST_COMPILE_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false",
                      "xla_cpu_parallel_codegen_split_count": "1"}


def _accepted(flags: list[str]) -> bool:
    """Whether this jaxlib's XLA takes ``flags``: XLA aborts the process on an unknown flag (a
    later jaxlib may drop one), so they are tried in a child, once: the answer reaches xdist's
    workers and the tests' subprocesses through the environment."""
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
    return probe.returncode == 0


if "ARLM_TEST_XLA_FLAGS" not in os.environ:
    given = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{k}={v}" for k, v in FAST_COMPILE_FLAGS.items() if k not in given]
    if not _accepted(extra):
        extra = [f for f in extra if "xla_backend_optimization_level" in f or _accepted([f])]
    os.environ["XLA_FLAGS"] = " ".join([given, *extra]).strip()
    os.environ["ARLM_TEST_XLA_FLAGS"] = " ".join(extra)  # the added flags; workers skip the probe

# No persistent compilation cache unless a test sets one: `arlm` would otherwise keep programs
# in ~/.cache/arlm_jax/xla (cli/compile_cache.py), and a test run should leave nothing behind.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")

import jax
import pytest

# Eight simulated CPU devices, for the sharding tests (test_sharding.py, test_plan.py).
# Unsharded code runs on device 0 as on a one-device machine; the trainer tests pin
# mesh.devices=1 so they train on one device as a laptop would.
jax.config.update("jax_num_cpu_devices", 8)

from arlm_jax import ModelConfig


def tiny(**overrides) -> ModelConfig:
    """The tiny test model with some options changed; validated."""
    return dataclasses.replace(ModelConfig.tiny(), **overrides).validate()


def randomise(params, seed=1, scale=0.1):
    """Non-trivial values everywhere (init leaves biases at 0 and norm scales at 1)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture
def key():
    return jax.random.key(0)


MAX_MAPS = 40_000  # the kernel's usual vm.max_map_count is 65,530; one test adds a few thousand at most


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no such limit to keep under
        return 0


@pytest.fixture(autouse=True)
def _free_compiled_programs():
    """Drop jax's compiled programs after a test once this process holds many memory maps.
    Every XLA:CPU executable holds a few maps of JIT code for as long as jax caches it, and one
    xdist worker runs half the suite (test_contract.py alone leaves ~30,000 maps): past the
    kernel's vm.max_map_count the next compile segfaults inside LLVM. Below the threshold the
    programs stay cached, so later tests and files reuse what they share (eager ops, tiny models)."""
    yield
    if _memory_maps() > MAX_MAPS:
        jax.clear_caches()
