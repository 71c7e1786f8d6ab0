import dataclasses

import jax
import pytest

from arlm_jax.config import ModelConfig


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
