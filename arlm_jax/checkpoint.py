"""Checkpoints with orbax-checkpoint's ``CheckpointManager``: the train state and its meta.

A run directory holds ``config.json`` (the resolved ``RunConfig``), ``metrics.jsonl`` and
``checkpoints/<step>/`` with two items:
  state  the ``TrainState`` pytree (params, optimizer state, step), via ``StandardSave``;
  meta   JSON: step, data position (``seed``, next batch index), resolved config, tokenizer
         identity -- what a resumed or evaluated run must check before it trusts the state.
orbax writes each step to a temporary folder and renames it into place, so a run that fails
mid-save (or later) leaves every earlier checkpoint intact; the last ``keep`` are kept.

Integrity: once a step is on disk, a background thread writes ``<step>/arlm_sha256.json``, the
SHA-256 of every file of the step, and every restore checks it first (docs/reliability.md gives
the cost). A step that fails its check, or that orbax cannot read, is a ``CorruptCheckpoint``;
``restore_newest`` then falls back to the newest intact step and moves the bad one to
``<out_dir>/set_aside/`` (never deleting it). A step without the file (the process stopped
between orbax's commit and the hash) restores unchecked.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from arlm_jax.errors import ConfigError, ResourceError
from arlm_jax.files import atomic_write_text, sha256_of

# orbax logs every save and restore through absl; our own progress output says enough.
logging.getLogger("absl").setLevel(logging.ERROR)


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, corrupt or does not match the run."""


class CorruptCheckpoint(CheckpointError):
    """A step whose files fail their checksum or that orbax cannot read."""


class CheckpointSaveError(ResourceError, CheckpointError):
    """Writing a step failed (e.g. a full disk); the earlier steps are intact."""


MANIFEST = "arlm_sha256.json"


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (but the manifest), by relative path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[str(path.relative_to(folder))] = sha256_of(path)
    return out


def write_manifest(folder: Path) -> None:
    """Hash a finished step's files into its manifest; a step deleted meanwhile is skipped."""
    try:
        atomic_write_text(folder / MANIFEST, json.dumps(_digests(folder), indent=0) + "\n")
    except FileNotFoundError:
        pass


def check_manifest(folder: Path) -> str | None:
    """Why the step in ``folder`` fails its manifest (a file changed or missing), or None when
    it passes or has no manifest."""
    try:
        want = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return f"its {MANIFEST} is not JSON"
    got = _digests(folder)
    for name, digest in want.items():
        if name not in got:
            return f"{name} is missing"
        if got[name] != digest:
            return f"{name} does not match its SHA-256"
    return None


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
        self._unhashed: list[int] = []  # saved steps whose manifest is not yet queued
        self._hashing: list[concurrent.futures.Future] = []
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="arlm-ckpt-hash")
        self._lead = jax.process_index() == 0  # one process hashes the shared folder
        self._closed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Queue step ``step``; ``wait()`` (or the next save) makes sure it is on disk."""
        self._finish_saves()  # orbax's save would wait for the previous one anyway
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as err:
            raise _save_failed(self.directory, step, err) from None
        self._unhashed.append(step)

    def _finish_saves(self) -> None:
        """Wait for orbax's queued save, then queue the manifests of the steps now on disk."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise _save_failed(self.directory, self._unhashed[-1] if self._unhashed else None, err) from None
        if self._lead:
            self._hashing += [self._hasher.submit(write_manifest, self.step_dir(s)) for s in self._unhashed]
        self._unhashed = []

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

    def _intact_step(self, step: int | None) -> int:
        """``step`` (default: the newest), which must pass its manifest check."""
        step = self._step(step)
        if why := check_manifest(self.step_dir(step)):
            raise CorruptCheckpoint(f"checkpoint: step {step} in {str(self.directory)!r} is corrupt ({why})")
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
        step = self._intact_step(step)
        abstract_state = _placed(abstract_state)
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

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, dict]:
        """(params, meta) of ``step`` (default: the newest): only the state's ``params`` are
        read, laid out as ``abstract_params`` (as in ``restore``), whatever optimizer state the
        step holds. Evaluation, decoding and fine-tuning (``train.init_from``) need no more."""
        step = self._intact_step(step)
        target = {"params": _placed(abstract_params)}
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
                meta=ocp.args.JsonRestore()))
            params = out["state"]["params"]
        except Exception as err:
            if _tree_mismatch(err):
                raise CheckpointError(f"checkpoint: step {step} in {str(self.directory)!r} holds different "
                                      f"parameters than this config builds ({_reason(err)})") from None
            raise _corrupt(self.directory, step, err) from err
        # orbax leaves a requested leaf it did not find as the ShapeDtypeStruct it was given
        missing = [jax.tree_util.keystr(k) for k, a in jax.tree_util.tree_leaves_with_path(params)
                   if isinstance(a, jax.ShapeDtypeStruct)]
        if missing:
            raise CheckpointError(f"checkpoint: step {step} in {str(self.directory)!r} holds different parameters "
                                  f"than this config builds (no params{missing[0]})")
        return params, dict(out["meta"])

    def restore_newest(self, abstract_state: Any, step: int | None = None,
                       check: Any = None) -> tuple[Any, dict, list[str]]:
        """(state, meta, notes) of the newest intact step (or of ``step``, which must be intact).

        ``check(meta)`` runs on each candidate's meta before its arrays are read (a ConfigError
        there is the caller's and propagates). Each corrupt newer step is moved to
        ``set_aside/<step>.corrupt`` beside the checkpoints folder and named in ``notes``;
        with an explicit ``step`` the newer steps are moved to ``set_aside/<step>.newer``, so
        that the resumed run can save them again."""
        def load(candidate: int) -> tuple[Any, dict]:
            if check is not None:
                check(self.read_meta(candidate))
            return self.restore(abstract_state, candidate)

        if step is not None:
            state, meta = load(self._step(step))
            notes = [f"step {newer} moved to {self._set_aside(newer, 'newer')} (resuming from step {step})"
                     for newer in sorted(s for s in self.all_steps() if s > step)]
            return state, meta, notes
        notes = []
        for candidate in sorted(self.all_steps(), reverse=True):
            try:
                state, meta = load(candidate)
                return state, meta, notes
            except CorruptCheckpoint as err:
                notes.append(f"skipped {err}; moved it to {self._set_aside(candidate, 'corrupt')}")
        raise CheckpointError(f"checkpoint: no intact checkpoint in {str(self.directory)!r} "
                              f"({'; '.join(notes) or 'none saved'})")

    def _set_aside(self, step: int, why: str) -> Path:
        """Move step ``step`` out of orbax's sight, keeping it; -> its new place."""
        dest = self.directory.parent / "set_aside" / f"{step}.{why}"
        if dest.exists():
            dest = dest.with_name(f"{dest.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        dest.parent.mkdir(exist_ok=True)
        os.replace(self.step_dir(step), dest)
        self._manager.reload()
        return dest

    def wait(self) -> None:
        """Block until queued saves are on disk, and their manifests written."""
        self._finish_saves()
        for f in self._hashing:
            f.result()
        self._hashing = []

    def close(self, quiet: bool = False) -> None:
        """Finish the queued saves and their manifests, then stop orbax's threads. Idempotent.
        ``quiet``: on an error path, where a failing save must not hide the first error."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        except Exception:
            if not quiet:
                raise
        finally:
            try:
                self._manager.close()
            except Exception:
                if not quiet:
                    raise
            self._hasher.shutdown()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(err: BaseException) -> str:
    """One line of an exception, following its causes to the deepest OSError (orbax wraps a
    full disk in several layers)."""
    deepest, e = err, err
    while e is not None:
        if isinstance(e, OSError):
            deepest = e
        e = e.__cause__ or e.__context__
    text = str(deepest).strip()
    return f"{type(deepest).__name__}: {text.splitlines()[0][:200]}" if text else type(deepest).__name__


def _placed(abstract: Any) -> Any:
    """``abstract`` with every leaf that has no sharding put on the first local device."""
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda a: a if getattr(a, "sharding", None) is not None
                        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)


def _tree_mismatch(err: BaseException) -> bool:
    """Whether orbax failed because a requested array's shape differs from the saved one (a
    config mismatch, not damage; a requested leaf that is not saved is caught after the restore)."""
    text = str(err)
    return "Requested shape" in text and "stored shape" in text


def _corrupt(directory: Path, step: int, err: Exception) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"checkpoint: step {step} in {str(directory)!r} is unreadable or corrupt "
                             f"({_reason(err)})")


def _save_failed(directory: Path, step: int | None, err: Exception) -> CheckpointError:
    what = "a checkpoint" if step is None else f"step {step}"
    return CheckpointSaveError(f"checkpoint: saving {what} in {str(directory)!r} failed ({_reason(err)}); "
                           f"the earlier checkpoints are intact; free space or choose another train.out_dir, "
                           f"then --resume")
