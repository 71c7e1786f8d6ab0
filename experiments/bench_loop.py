"""End-to-end training rate of ``arlm train`` against its own jitted step, in separate processes.

    python experiments/bench_loop.py --rounds 2                  # the demo, as a user runs it
    python experiments/bench_loop.py -- --model.bias false ...   # any `arlm train` options

Each round runs two processes one after the other:
  loop  ``arlm train`` itself (console entry point, default logging, eval and checkpoint
        cadence, a fresh out_dir), timed by its wall clock and by its own ``loop:`` line (the
        stepping phase after the first, compiling, step: validations, metric fetches and
        checkpoint queuing included).
  step  the same run's config (read back from that run's config.json), its train step built
        the same way (``make_train_step`` on the same mesh) and dispatched back to back on
        prepared batches, with nothing else in the process: the step's own rate.
The ratio of the medians over rounds, loop tokens/s over step tokens/s, is what the loop costs
(issue 13's target: >= 0.95). Writes JSON to --out (default experiments/results/bench_loop.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arlm_run import arlm_train, loop_figures  # noqa: E402
from results_io import write_result  # noqa: E402

def run_loop(train_args: list[str], out_dir: Path) -> dict:
    """One ``arlm train`` in its own process -> its wall clock and its loop line."""
    wall, out = arlm_train(train_args, out_dir, "bench_loop")
    return {"wall_s": wall, **loop_figures(out, "bench_loop")}


def step_worker(config_json: str, steps: int) -> dict:
    """The train step of a run's config alone: ``steps`` dispatched back to back, three times."""
    import jax
    import numpy as np

    from arlm_jax.config import from_dict
    from arlm_jax.parallel.hosts import global_batch
    from arlm_jax.parallel.mesh import mesh_of
    from arlm_jax.train.optim import make_optimizer
    from arlm_jax.train.step import init_sharded_state, make_train_step

    run = from_dict(json.loads(Path(config_json).read_text())).validate()
    tc, cfg, seq = run.train, run.model, run.seq_len
    mesh = mesh_of(run.mesh)
    opt = make_optimizer(tc, cfg)
    step = make_train_step(cfg, tc, opt, mesh=mesh)
    state = init_sharded_state(jax.random.key(tc.seed), cfg, opt, mesh)
    rng = np.random.default_rng(0)
    batches = [{"tokens": global_batch(rng.integers(0, 256, (tc.batch_size, seq + 1), dtype=np.int32),
                                       tc.batch_size, mesh)} for _ in range(8)]
    state, m = step(state, batches[0])
    jax.block_until_ready(m)  # compiled
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(steps):
            state, m = step(state, batches[i % len(batches)])
        jax.block_until_ready((state, m))
        rates.append(tc.batch_size * seq * steps / (time.perf_counter() - t0))
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_all": rates, "steps": steps,
            "jax_version": jax.__version__}


def run_step(config_json: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(config_json), "--step-count", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_loop: the step worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="loop, step pairs (alternating)")
    ap.add_argument("--step-count", type=int, default=100, help="steps per timing window of the step worker")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    ap.add_argument("train_args", nargs="*", help="options for `arlm train` (after --)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(step_worker(args.worker, args.step_count)))
        return
    loops, steps = [], []
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        for r in range(args.rounds):
            out_dir = Path(tmp) / f"run{r}"
            loops.append(run_loop(args.train_args, out_dir))
            steps.append(run_step(out_dir / "config.json", args.step_count))
            print(f"round {r}: loop {loops[-1]['tokens_per_s']:,.0f} tok/s, "
                  f"step {steps[-1]['tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)
        config = json.loads((Path(tmp) / "run0" / "config.json").read_text())
    loop_med = statistics.median(x["tokens_per_s"] for x in loops)
    step_med = statistics.median(x["tokens_per_s"] for x in steps)
    result = {
        "method": "one process per side, alternating loop, step; ratio of medians",
        "train_args": args.train_args, "rounds": args.rounds,
        "batch_size": config["train"]["batch_size"], "steps": config["train"]["steps"],
        "loop": {"tokens_per_s": loop_med, "runs": loops},
        "step": {"tokens_per_s": step_med, "runs": steps},
        "loop_over_step": loop_med / step_med,
        "wall_s_median": statistics.median(x["wall_s"] for x in loops),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    write_result(result, args.out, "bench_loop.json")


if __name__ == "__main__":
    main()
