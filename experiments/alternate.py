"""Fair A/B timing for the benchmarks: each side in its own process, alternating A B A B.

Two runtimes' thread pools in one process contend with each other (torch's OpenMP workers keep
spinning for a while after an op, and so do XLA's), which blurs both figures. So a benchmark
script runs as a parent that starts itself once per side per round (``--worker ours``, then
``--worker theirs``, and again); a worker builds one side only, times it and prints one JSON line;
the parent collects the lines and reports medians over every timed call of every round, and the
ratio of the two sides' medians. A worker never loads the other side's runtime: ``emit`` checks.

This module imports neither jax nor torch: the parent stays free of both.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import statistics
import subprocess
import sys

METHOD = "one process per side, alternating A B A B, ratio of medians"
METHOD_ALONE = "ours alone, one process per round, medians"  # --no-torch: nothing to alternate with
# the runtime each kind of worker must never import: "prepare" builds shared inputs with JAX
FORBIDDEN = {"prepare": "torch", "ours": "torch", "theirs": "jax"}


def importable(*modules: str) -> bool:
    """Whether every module can be imported, found without importing any."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


def add_worker_args(ap: argparse.ArgumentParser) -> None:
    """The hidden flags the parent passes to its workers."""
    ap.add_argument("--worker", choices=list(FORBIDDEN), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", default=None, help=argparse.SUPPRESS)  # folder from "prepare" for "theirs"


def parse_or_work(ap: argparse.ArgumentParser, workers: dict) -> argparse.Namespace | None:
    """Parse a benchmark's command line (with the hidden worker flags). In a worker process, run
    its side (``workers[role](args)``), print its JSON line and return None; in the parent,
    return the parsed arguments."""
    add_worker_args(ap)
    args = ap.parse_args()
    if args.worker:
        emit(args.worker, workers[args.worker](args))
        return None
    return args


def emit(role: str, result: dict) -> None:
    """Print a worker's result as its one JSON line, after checking it did not load the other runtime."""
    other = FORBIDDEN[role]
    if other in sys.modules:
        raise RuntimeError(f"the {role} worker imported {other}: its timings would not be of one runtime alone")
    print(json.dumps(result), flush=True)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_worker(script: str, argv: list[str], role: str) -> dict:
    """Run ``script argv --worker role`` in a fresh interpreter and return its JSON line.

    The worker's stderr goes straight through; other stdout lines (a library's chatter) go to
    stderr, so only the last JSON line is read.
    """
    cmd = [sys.executable, script, *argv, "--worker", role]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    # A parent stopped by SIGTERM (`timeout`, as in gpu_check.sh) takes its worker with it, so an
    # orphan does not run on into the next measurement.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        stdout, _ = proc.communicate()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = stdout.splitlines()
    json_lines = [line for line in lines if line.startswith("{")]
    for line in lines:
        if not line.startswith("{"):
            print(line, file=sys.stderr)
    if proc.returncode != 0 or not json_lines:
        raise SystemExit(f"{role} worker failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(json_lines[-1])


def alternate(script: str, argv: dict[str, list[str]], rounds: int, label: str = "") -> dict[str, list[dict]]:
    """Run each side of ``argv`` (side -> its arguments, in the order to run them) once per round,
    alternating A B A B ...; return side -> its workers' results, one per round."""
    runs: dict[str, list[dict]] = {side: [] for side in argv}
    for r in range(rounds):
        for side, args in argv.items():
            print(f"{label} round {r + 1}/{rounds}: {side}".strip(), file=sys.stderr, flush=True)
            runs[side].append(run_worker(script, args, side))
    return runs


def summary(per_round: list[list[float]], scale: float = 1e3) -> dict:
    """Times (seconds, one list per round) as ``scale`` units: the median and minimum over every
    timed call, every call (rounded to 0.01), and each round's own median."""
    flat = [t for ts in per_round for t in ts]
    return {"median": scale * statistics.median(flat), "min": scale * min(flat),
            "all": [round(scale * t, 2) for t in flat],
            "rounds": [scale * statistics.median(ts) for ts in per_round]}


def speed_ratios(ours: list[list[float]], theirs: list[list[float]]) -> tuple[float, list[float]]:
    """(ours speed / theirs speed from the medians over all rounds, the same for each round), for
    two sides timed on the same work per call: the ratio of tokens/s medians."""
    def med(rounds: list[list[float]]) -> float:
        return statistics.median(t for ts in rounds for t in ts)

    return med(theirs) / med(ours), [statistics.median(b) / statistics.median(a) for a, b in zip(ours, theirs)]
