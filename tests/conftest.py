import dataclasses
import os

# The suite is dominated by XLA compiles of small programs. LLVM's backend optimisation level
# changes only how fast the generated CPU code runs, not what the HLO computes (XLA's own graph
# passes still run), and level 0 cuts the suite from ~8 to ~5.5 minutes on 2 cores. Set before
# jax creates its backend; a flag the caller already set wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

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


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop jax's compiled programs after each test file. Every XLA:CPU executable holds a few
    memory maps of JIT code for as long as jax caches it, and one xdist worker runs half the
    suite: test_contract.py alone leaves ~30,000 maps, and past the kernel's vm.max_map_count
    (65,530) the next compile segfaults inside LLVM."""
    yield
    jax.clear_caches()
