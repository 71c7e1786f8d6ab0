"""Checkpointer: bitwise round trip, keep-last-N, clear errors for missing or damaged steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arlm_jax.checkpoint import CheckpointError, Checkpointer
from arlm_jax.config import TrainConfig
from arlm_jax.train.optim import make_optimizer
from arlm_jax.train.step import init_state
from conftest import tiny


def _state(seed):
    opt = make_optimizer(TrainConfig(), tiny())
    st = init_state(jax.random.key(seed), tiny(), opt)
    return st.replace(step=jnp.int32(seed)), opt


def test_round_trip_keep_last_n_and_meta(tmp_path):
    ck = Checkpointer(tmp_path, keep=2)
    states = {}
    for s in (1, 2, 3):
        states[s], opt = _state(s)
        ck.save(s, states[s], {"step": s, "tokenizer": "byte-x"})
    ck.wait()
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    abstract = jax.eval_shape(lambda: init_state(jax.random.key(0), tiny(), opt))
    restored, meta = ck.restore(abstract, 2)
    assert meta == {"step": 2, "tokenizer": "byte-x"} and int(restored.step) == 2
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ck.close()


def test_errors_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints folder"):
        Checkpointer(tmp_path / "nothing", read_only=True)
    ck = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ck.read_meta()
    st, opt = _state(1)
    ck.save(1, st, {"step": 1})
    ck.wait()
    with pytest.raises(CheckpointError, match=r"step=5 is not saved .* choose one of 1"):
        ck.read_meta(5)
    (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match="step 1 in .* is unreadable or corrupt"):
        ck.read_meta(1)
