"""Checkpoints with orbax-checkpoint's ``CheckpointManager``: the train state and its meta.

A run directory holds ``config.json`` (the resolved ``RunConfig``), ``metrics.jsonl`` and
``checkpoints/<step>/`` with two items:
  state  the ``TrainState`` pytree (params, optimizer state, step), via ``StandardSave``;
  meta   JSON: step, data position (``seed``, next batch index), resolved config, tokenizer
         identity -- what a resumed or evaluated run must check before it trusts the state.
orbax writes each step to a temporary folder and renames it into place, so a run that fails
mid-save (or later) leaves every earlier checkpoint intact; the last ``keep`` are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from arlm_jax.errors import ConfigError

# orbax logs every save and restore through absl; our own progress output says enough.
logging.getLogger("absl").setLevel(logging.ERROR)


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, corrupt or does not match the run."""


class Checkpointer:
    """Save and restore ``(state, meta)`` pairs under ``<directory>/checkpoints``.

    ``keep`` is how many of the newest steps survive; ``async_save`` lets training go on while
    the arrays (already copied to host memory when ``save`` returns) are written.
    """

    def __init__(self, directory: str | Path, keep: int = 3, *, async_save: bool = True,
                 read_only: bool = False):
        self.directory = Path(directory).resolve() / "checkpoints"
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint: no checkpoints folder in {str(directory)!r}; "
                                  f"give the out_dir of a training run")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               read_only=read_only,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Queue step ``step``; ``wait()`` (or the next save) makes sure it is on disk."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def _step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"checkpoint: no checkpoint in {str(self.directory)!r}")
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"checkpoint: step={step} is not saved in {str(self.directory)!r}; "
                                  f"choose one of {', '.join(map(str, sorted(steps)))}")
        return step

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON meta of ``step`` (default: the newest)."""
        step = self._step(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(out["meta"])
        except Exception as err:  # orbax raises many types for a damaged folder
            raise _corrupt(self.directory, step, err) from err

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of ``step`` (default: the newest), arrays laid out as ``abstract_state``
        (a pytree of ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``): each goes where its
        sharding says (``parallel.shardings.abstract_with_shardings``: any mesh, whatever mesh saved it),
        or onto the default device when it has none."""
        step = self._step(step)
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_state = jax.tree.map(
            lambda a: a if getattr(a, "sharding", None) is not None
            else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract_state)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            state = out["state"]
            leaves = jax.tree.leaves(state)
        except Exception as err:
            raise _corrupt(self.directory, step, err) from err
        if len(leaves) != len(jax.tree.leaves(abstract_state)):
            raise CheckpointError(f"checkpoint: step {step} in {str(self.directory)!r} holds a "
                                  f"different state tree than this config builds")
        return state, dict(out["meta"])

    def wait(self) -> None:
        """Block until queued saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _corrupt(directory: Path, step: int, err: Exception) -> CheckpointError:
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return CheckpointError(f"checkpoint: step {step} in {str(directory)!r} is unreadable or corrupt "
                           f"({type(err).__name__}: {reason})")
