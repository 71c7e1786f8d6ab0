"""Running a sweep: every run of a shard trained in turn, finished runs skipped, interrupted ones
resumed, one row per finished run appended to the results table.

A run is finished when its folder holds ``result.json`` (written atomically after its final
validation); the results CSV is appended under an exclusive lock, so the shards of a sweep
(a SLURM job array, pod slices) can share one table on a shared filesystem, and it is
completed from the ``result.json`` files when a process died between the two writes. A run
that was interrupted resumes from its newest intact checkpoint (train/loop.py). A run that
fails for a known reason (divergence, device memory) is recorded in ``failed.json`` and the
sweep goes on; it is retried only with ``retry_failed``.

With several processes (jax.distributed) every process runs the same runs in the same order,
each run on all their devices, as ``arlm train`` does; process 0 alone writes the files.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import jax

from arlm_jax.errors import ConfigError, ResourceError, known_failure
from arlm_jax.files import atomic_write_text
from arlm_jax.scaling.sweep import read_sweep, run_of, shard_of

COLUMNS = ("name", "budget", "params", "tokens", "flops", "loss", "bpb", "ppl", "accuracy", "params_total",
           "params_non_embedding", "width", "depth", "steps", "wall_s", "tokens_per_s", "resumed_from")
RESULT, FAILED = "result.json", "failed.json"


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows (COLUMNS) to a results CSV under an exclusive lock, with the header when the
    file is new or empty; each row reaches the disk before the lock is released."""
    if not rows:
        return
    try:
        with open(path, "a", newline="") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
                if fh.tell() == 0:
                    writer.writeheader()
                writer.writerows(rows)
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError as err:
        raise ResourceError(f"scaling run: cannot append to {path} ({err.strerror or err}); the finished "
                            f"runs' result.json files are intact and the next run adds their rows") from None


def names_in(path: Path) -> set[str]:
    """The run names a results CSV holds (empty when it does not exist)."""
    if not path.exists():
        return set()
    with open(path, newline="") as fh:
        return {row.get("name", "") for row in csv.DictReader(fh)}


def result_row(entry: dict, val: dict, wall: float, start_step: int) -> dict:
    """The results-table row of a finished run: the sweep's figures and its final validation
    (loss in nats per token), wall seconds and end-to-end tokens/s of this process's part."""
    trained = (entry["steps"] - start_step) * entry["tokens"] / entry["steps"]
    keep = ("name", "budget", "params", "tokens", "flops", "params_total", "params_non_embedding",
            "width", "depth", "steps")
    return {**{k: entry[k] for k in keep}, "loss": val["loss"], "bpb": val["bpb"], "ppl": val["ppl"],
            "accuracy": val["accuracy"], "wall_s": round(wall, 2),
            "tokens_per_s": round(trained / wall, 1) if wall > 0 else None, "resumed_from": start_step}


def run_sweep(path: str | Path, *, shard: tuple[int, int] = (0, 1), results: str | Path | None = None,
              retry_failed: bool = False, out: TextIO | None = None) -> dict:
    """Train the runs of shard ``shard`` (I, N) of the sweep at ``path`` (a sweep.json or its
    folder) -> counts of what happened {"trained", "skipped", "failed"}. Results go to
    ``results`` (default: results.csv in the sweep's folder); each run's log to
    ``train.log`` in its folder."""
    from arlm_jax.data.tokenizer import load_tokenizer
    sweep, folder = read_sweep(path)
    table = Path(results) if results else folder / "results.csv"
    lead = jax.process_index() == 0
    out = out or sys.stdout
    say = (lambda msg: print(msg, file=out, flush=True)) if lead else (lambda msg: None)  # noqa: E731
    mine = shard_of(sweep["runs"], shard)
    say(f"scaling run: shard {shard[0]}/{shard[1]} holds {len(mine)} of the sweep's {len(sweep['runs'])} runs; "
        f"results in {table}")
    if lead:
        _complete_table(mine, folder, table)
    enc = load_tokenizer(sweep["base"]["data"]["tokenizer"])
    counts = {"trained": 0, "skipped": 0, "failed": 0}
    for k, entry in enumerate(mine, 1):
        run = run_of(entry, folder)
        run_dir = Path(run.train.out_dir)
        head = f"[{k}/{len(mine)}] {entry['name']} ({entry['params']:,} params, {entry['tokens']:,} tokens)"
        if (run_dir / RESULT).exists():
            counts["skipped"] += 1
            say(f"{head}: finished, skipped")
            continue
        if (run_dir / FAILED).exists() and not retry_failed:
            counts["failed"] += 1
            say(f"{head}: failed before ({_failure(run_dir)}); --retry-failed trains it again")
            continue
        status = _train_one(entry, run, lead, table, enc)
        counts[status["status"]] += 1
        say(f"{head}: {status['line']}")
        jax.clear_caches()  # each run compiles its own programs; keep one run's, not the sweep's
    say(f"scaling run: {counts['trained']} trained, {counts['skipped']} skipped (finished), "
        f"{counts['failed']} failed")
    return counts


def _train_one(entry: dict, run, lead: bool, table: Path, enc) -> dict:
    """Train (or resume) one run and record it -> {"status", "line"}."""
    from arlm_jax.train.loop import train
    run_dir = Path(run.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "a") if lead else open(os.devnull, "w") as log:
        try:
            res = train(run, resume=True, out=log, enc=enc)
        except Exception as err:
            if (line := known_failure(err)) is None:
                raise
            if lead:
                atomic_write_text(run_dir / FAILED, json.dumps({"error": line}) + "\n")
            return {"status": "failed", "line": f"failed: {line}"}
    wall = time.perf_counter() - t0
    row = result_row(entry, res.val, wall, res.start_step)
    if lead:
        atomic_write_text(run_dir / RESULT, json.dumps(row, indent=1) + "\n")
        (run_dir / FAILED).unlink(missing_ok=True)
        append_rows(table, [row])
    how = f"resumed at step {res.start_step}, " if res.start_step else ""
    return {"status": "trained", "line": f"{how}loss {row['loss']:.4f} nats/token, bits/byte {row['bpb']:.3f}, "
                                         f"{wall:.1f}s, {row['tokens_per_s'] or 0:,.0f} tokens/s"}


def _complete_table(runs: list[dict], folder: Path, table: Path) -> None:
    """Append the rows of finished runs the table lacks (a process that died between writing
    a run's result.json and its row)."""
    have = names_in(table)
    missing = []
    for entry in runs:
        done = Path(run_of(entry, folder).train.out_dir) / RESULT
        if entry["name"] not in have and done.exists():
            try:
                missing.append(json.loads(done.read_text()))
            except ValueError:
                raise ConfigError(f"scaling run: {done} is not JSON; remove it to train that run again") from None
    append_rows(table, missing)


def _failure(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / FAILED).read_text()).get("error", "?")
    except (OSError, ValueError):
        return "see its train.log"
