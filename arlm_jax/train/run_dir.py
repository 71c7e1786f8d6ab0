"""A run folder: its config, its metrics log, the resume check and loading a finished run.

A run folder (``train.out_dir``) holds:
  config.json     the resolved RunConfig
  metrics.jsonl   one JSON object per logged train step ({"split": "train", ...}) and per
                  validation ({"split": "val", ...}); a resumed run drops rows past its start
  checkpoints/    orbax steps (see ``checkpoint.py``)
  loss.png        train and validation loss curves (needs matplotlib)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from arlm_jax.checkpoint import CheckpointError, Checkpointer
from arlm_jax.config import RunConfig, from_dict, to_dict
from arlm_jax.errors import ConfigError
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
    for name in sorted(set(old) | set(new)):
        if name not in RESUMABLE_CHANGES and old.get(name) != new.get(name):
            raise ConfigError(f"--resume: {name}={new.get(name)!r} does not match the checkpoint's "
                              f"{old.get(name)!r} in {where}; use the same value or another train.out_dir")
    if saved_tokenizer != tokenizer:
        raise ConfigError(f"--resume: data.tokenizer is {tokenizer} but the checkpoint in {where} "
                          f"was trained with {saved_tokenizer}")


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` by a run that died before its next checkpoint."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= last_step]
        path.write_text("".join(r + "\n" for r in rows))


def plot_losses(metrics_path: Path, out: Path) -> str:
    """Write the loss curves as a PNG; returns a note for the user."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "loss plot skipped: matplotlib is not installed (pip install 'arlm_jax[plot]')"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
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
    """(config, params, meta) of a training run's checkpoint (default: the newest).

    With a ``mesh`` every array is restored straight into its place on it (the rule table's
    layout, whatever mesh saved it); without one, onto the default device."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    try:
        run = from_dict(json.loads(cfg_path.read_text())).validate()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint: {str(cfg_path)!r} is missing or unreadable; give the "
                              f"out_dir of a training run ({type(err).__name__})") from err
    with Checkpointer(run_dir, read_only=True) as ck:
        state, meta = ck.restore(abstract_state(run, mesh), step)
    return run, state.params, meta
