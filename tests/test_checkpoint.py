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


_CRASH_MID_SAVE = r"""
import os, sys, time
import jax, jax.numpy as jnp
from arlm_jax.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1], keep=3)
ck.save(1, {"w": jnp.full((256, 1024), 1.0)}, {"step": 1})
ck.wait()
ck.save(2, {"w": jnp.full((4096, 4096), 2.0)}, {"step": 2})  # 64 MiB, written in the background
print("queued", flush=True)
os._exit(3)  # the process dies while step 2 is being written
"""


def test_a_crash_during_an_async_save_keeps_the_previous_checkpoint(tmp_path):
    """save() returns before the write ends (async checkpointing); a process that dies then
    leaves the earlier step readable and the half-written one invisible."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _CRASH_MID_SAVE, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3 and "queued" in proc.stdout, proc.stderr[-2000:]
    ck = Checkpointer(tmp_path, read_only=True)
    assert ck.latest_step() in (1, 2)  # 2 only if the write had finished before the exit
    abstract = {"w": jax.ShapeDtypeStruct((256, 1024), jnp.float32)}
    state, meta = ck.restore(abstract, 1)
    assert meta == {"step": 1} and float(state["w"].min()) == float(state["w"].max()) == 1.0
    if ck.latest_step() == 2:  # a finished step must then be whole
        big, _ = ck.restore({"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}, 2)
        assert float(big["w"].min()) == 2.0
