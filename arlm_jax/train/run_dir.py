"""A run folder: its config, its metrics log, the resume check and loading a finished run.

A run folder (``train.out_dir``) holds:
  config.json     the resolved RunConfig
  metrics.jsonl   an append-only log: one JSON object per logged train step ({"split":
                  "train", ...}) and per validation ({"split": "val", ...}); a resumed run
                  drops rows past its start and any line that is not one whole JSON object
                  (a torn tail after a full disk or a kill), rewriting the file atomically
  .lock           the owner's advisory lock (lock.py)
  checkpoints/    orbax steps (see ``checkpoint.py``)
  loss.png        train and validation loss curves (needs matplotlib)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax

from arlm_jax.checkpoint import CheckpointError, Checkpointer
from arlm_jax.config import RunConfig, from_dict, to_dict
from arlm_jax.errors import ConfigError
from arlm_jax.files import atomic_write_text, require_new_folder
from arlm_jax.models import family_of
from arlm_jax.parallel.shardings import abstract_with_shardings
from arlm_jax.train.optim import make_optimizer
from arlm_jax.train.step import init_state

# Fields that may change between a run and its --resume: they steer logging and saving,
# not the trajectory. Any other difference would make the resumed losses differ.
RESUMABLE_CHANGES = frozenset({"train.eval_every", "train.eval_batches", "train.log_every",
                               "train.ckpt_every", "train.keep_checkpoints", "train.out_dir",
                               "train.progress", "train.sample_prompt", "train.sample_tokens",
                               "train.sample_temperature", "train.sample_top_p",
                               "train.init_from",  # the checkpoint supersedes it
                               "data.cache_dir", "mesh.data", "mesh.fsdp", "mesh.tensor",
                               "mesh.devices"})  # a run may resume on another mesh


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict, run: RunConfig, saved_tokenizer: str, tokenizer: str,
                    where: str) -> None:
    """ConfigError naming the first option that differs from the checkpoint's run. Options the
    saved config lacks (added to arlm_jax after it was written) take their defaults."""
    try:
        saved = to_dict(from_dict(saved))
    except ConfigError as err:
        raise ConfigError(f"--resume: the checkpoint's config in {where} is not one this version "
                          f"reads ({err})") from err
    old, new = _flatten(saved), _flatten(to_dict(run))
    for name in [*new, *(n for n in old if n not in new)]:  # in field order: what a user set comes first
        if name not in RESUMABLE_CHANGES and old.get(name) != new.get(name):
            raise ConfigError(f"--resume: {name}={new.get(name)!r} does not match the checkpoint's "
                              f"{old.get(name)!r} in {where}; use the same value or another train.out_dir")
    if saved_tokenizer != tokenizer:
        raise ConfigError(f"--resume: data.tokenizer is {tokenizer} but the checkpoint in {where} "
                          f"was trained with {saved_tokenizer}")


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(the rows of a metrics log, how many lines were dropped): a line that is not one whole
    JSON object with a ``step`` (torn by a kill or a full disk, or garbage) is dropped."""
    rows, bad = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Drop rows logged after ``last_step`` by a run that died before its next checkpoint, and
    lines that are not whole rows; rewritten atomically, and only when something is dropped.
    -> the number of bad lines dropped."""
    if not path.exists():
        return 0
    rows, bad = read_jsonl(path)
    kept = [r for r in rows if r["step"] <= last_step]
    if bad or len(kept) < len(rows):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return bad


def plot_losses(metrics_path: Path, out: Path) -> str:
    """Write the loss curves as a PNG; returns a note for the user."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "loss plot skipped: matplotlib is not installed (pip install 'arlm_jax[plot]')"
    rows, _ = read_jsonl(metrics_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in ("train", "val"):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
        if pts:
            ax.plot(*zip(*pts), marker="o" if split == "val" else None, label=split)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"loss curve: {out}"


def load_init_params(run: RunConfig, abstract_params: Any, tokenizer: str) -> tuple[Any, dict]:
    """``train.init_from``'s params (its newest checkpoint), laid out as ``abstract_params``
    (this run's mesh), and that checkpoint's meta. Its model must build the same parameters as
    ``run.model`` and its tokenizer identity must be ``tokenizer``; else a one-line ConfigError."""
    src = run.train.init_from
    if not Path(src).is_dir():
        raise ConfigError(f"train.init_from={src!r} is not a folder; give a run folder (arlm train's out_dir "
                          f"or arlm convert's --out)")
    with Checkpointer(src, read_only=True) as ck:
        meta = ck.read_meta()
        try:
            saved = from_dict(meta["config"]).model
        except (KeyError, TypeError, ConfigError):
            raise CheckpointError(f"train.init_from={src!r}: its step {meta.get('step')} has no config this "
                                  f"version reads") from None
        fam = family_of(run.model)
        if saved.family != run.model.family:
            raise ConfigError(f"train.init_from={src!r} holds a model.family={saved.family!r} model, not "
                              f"{run.model.family!r}")
        if (diff := _shape_field(fam, saved, run.model)) is not None:
            raise ConfigError(f"train.init_from={src!r}: model.{diff}={getattr(run.model, diff, None)!r} builds other "
                              f"parameters than its {getattr(saved, diff, None)!r}; keep its model config")
        if meta.get("tokenizer") != tokenizer:
            raise ConfigError(f"train.init_from={src!r} was made with tokenizer {meta.get('tokenizer')}, not this "
                              f"run's {tokenizer}; use its data.tokenizer")
        return ck.restore_params(abstract_params, meta["step"])


def _shape_field(fam: Any, saved: Any, model: Any) -> str | None:
    """None when ``model`` builds the parameter shapes ``saved`` does; else the first field whose
    value alone makes them differ (or "family" when no single field does)."""
    def shapes(cfg: Any) -> tuple:
        tree = jax.eval_shape(lambda: fam.init(jax.random.key(0), cfg))
        return jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)]

    theirs = shapes(saved)
    if shapes(model) == theirs:
        return None
    for f in dataclasses.fields(saved):
        if getattr(saved, f.name) != getattr(model, f.name):
            try:
                if shapes(dataclasses.replace(saved, **{f.name: getattr(model, f.name)}).validate()) != theirs:
                    return f.name
            except ConfigError:
                return f.name
    return "family"


def write_model_run(out: str | Path, params: Any, model: Any, tokenizer: str, enc: Any, source: str) -> RunConfig:
    """A run folder for a model that was not trained here (an ARPA file, a Hugging Face folder):
    ``config.json`` and one checkpoint, step 0, of ``params`` with no optimizer state, which
    ``arlm eval``, ``arlm generate`` and ``arlm train --init-from`` read (``load_run``). Its meta
    records ``converted_from``: ``source``. ``out`` must be new or empty. -> the run's config."""
    import jax.numpy as jnp
    import optax

    from arlm_jax.config import DataConfig, TrainConfig
    from arlm_jax.data.tokenizer import tokenizer_identity
    from arlm_jax.train.step import TrainState

    out = require_new_folder(out, "--out")
    run = RunConfig(preset=family_of(model).default_preset, model=model,
                    train=TrainConfig(out_dir=str(out), steps=1), data=DataConfig(tokenizer=tokenizer)).validate()
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.identity().init(params))
    out.mkdir(parents=True, exist_ok=True)
    with Checkpointer(out, 1) as ck:
        ck.save(0, state, {"step": 0, "data": {"seed": 0, "next_batch": 0}, "config": to_dict(run),
                           "tokenizer": tokenizer_identity(enc), "converted_from": source})
    atomic_write_text(out / "config.json", json.dumps(to_dict(run), indent=1) + "\n")
    return run


def abstract_state(run: RunConfig, mesh: Any = None) -> Any:
    """The train state of ``run`` as ShapeDtypeStructs (nothing allocated), laid out on ``mesh``
    by the rule table when one is given: what a checkpoint restore fills in."""
    cfg = run.model
    optimizer = make_optimizer(run.train, cfg)
    abstract = jax.eval_shape(lambda: init_state(jax.random.key(0), cfg, optimizer))
    if mesh is None:
        return abstract
    return abstract_with_shardings(abstract, family_of(cfg).param_axes(abstract.params), mesh)


def load_run(run_dir: str | Path, step: int | None = None, mesh=None) -> tuple[RunConfig, dict, dict]:
    """(config, params, meta) of a training run's checkpoint (default: the newest); only the
    params are read, not the optimizer state.

    The checkpoint's own config is authoritative; the folder's config.json must agree with it
    on every option that shapes the model and its training (``RESUMABLE_CHANGES`` may differ),
    else a one-line CheckpointError. With a ``mesh`` every array is restored straight into its
    place on it (the rule table's layout, whatever mesh saved it); without one, onto the
    default device."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    with Checkpointer(run_dir, read_only=True) as ck:
        meta = ck.read_meta(step)
        try:
            run = from_dict(meta["config"]).validate()
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"checkpoint: step {meta.get('step')} in {str(ck.directory)!r} has no config in "
                                  f"its meta; it was not written by arlm train") from None
        except ConfigError as err:
            raise CheckpointError(f"checkpoint: the config in step {meta['step']} of {str(ck.directory)!r} "
                                  f"is not one this version reads ({err})") from None
        _check_config_json(cfg_path, run)
        params, meta = ck.restore_params(abstract_state(run, mesh).params, meta["step"])
    return run, params, meta


def _check_config_json(path: Path, run: RunConfig) -> None:
    """CheckpointError where the run folder's config.json disagrees with the checkpoint's config."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return  # the checkpoint carries its own config
    except OSError as err:
        raise CheckpointError(f"checkpoint: {str(path)!r} is unreadable ({err.strerror})") from None
    try:
        written = _flatten(json.loads(text))
    except (ValueError, AttributeError):
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a JSON object; the checkpoint's own config "
                              f"is authoritative: delete or restore config.json") from None
    ours = _flatten(to_dict(run))
    for name in sorted(set(written) | set(ours)):
        if name not in RESUMABLE_CHANGES and name in written and written[name] != ours.get(name):
            raise CheckpointError(f"checkpoint: {str(path)!r} says {name}={written[name]!r} but the checkpoint "
                                  f"was trained with {ours.get(name)!r}; the checkpoint's config is "
                                  f"authoritative: restore config.json")
