import dataclasses

import jax
import pytest

from arlm_jax.config import ModelConfig


def tiny(**overrides) -> ModelConfig:
    """The tiny test model with some options changed; validated."""
    return dataclasses.replace(ModelConfig.tiny(), **overrides).validate()


@pytest.fixture
def key():
    return jax.random.key(0)
