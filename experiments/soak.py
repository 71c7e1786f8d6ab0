"""Soak test of preemption safety: kill -9 and SIGTERM a small run over and over, resume it
each time, and check its final parameters are bit-identical to an uninterrupted run's.

    python experiments/soak.py [--cycles 50] [--steps 1000] [--seed 0]

Each cycle starts ``arlm train`` (with ``--resume`` after the first), waits until the run has
logged a step, then sleeps a seeded random 0..--max-delay seconds and sends SIGKILL or SIGTERM
(a seeded coin). Then the run is resumed to the end once more and its final checkpoint compared,
array by array, with an uninterrupted run of the same config. Not part of the test suite
(minutes); tests/test_faults.py pins each case once. Writes experiments/results/soak.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402


def argv(args, corpus: Path, cache: Path, out_dir: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "arlm_jax.cli", "train", "--preset", "tiny", "--data.corpus", str(corpus),
            "--data.cache_dir", str(cache), "--train.out_dir", str(out_dir), "--train.steps", str(args.steps),
            "--train.ckpt_every", str(args.ckpt_every), "--train.log_every", "1", "--train.eval_every",
            str(args.steps), "--train.progress", "false", "--train.sample_tokens", "0", "--mesh.devices", "1",
            *(["--resume"] if resume else [])]


def params_of(run_dir: Path) -> list[np.ndarray]:
    import jax

    from arlm_jax.train.run_dir import load_run
    return [np.asarray(a) for a in jax.tree.leaves(load_run(run_dir)[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--max-delay", type=float, default=1.0, help="seconds after the first logged step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    root = Path(tempfile.mkdtemp(prefix="arlm-soak-"))
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} - {i}\n" for j in range(60)))
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    t0 = time.perf_counter()
    ref = subprocess.run(argv(args, corpus, root / "cache", root / "reference", False), env=env,
                         capture_output=True, text=True)
    if ref.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed: {ref.stderr[-2000:]}")

    run, cycles = root / "soaked", []
    for i in range(args.cycles):
        sig = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
        delay = float(rng.uniform(0, args.max_delay))
        p = subprocess.Popen(argv(args, corpus, root / "cache", run, i > 0), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for line in p.stdout:
            if line.startswith("step"):
                break
        time.sleep(delay)
        p.send_signal(sig)
        out, err = p.communicate(timeout=300)
        steps = sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit())
        cycles.append({"signal": sig.name, "delay_s": round(delay, 3), "rc": p.returncode,
                       "newest_checkpoint": steps[-1] if steps else None,
                       "stderr_tail": err.strip().splitlines()[-1] if err.strip() else ""})
        print(f"cycle {i + 1}/{args.cycles}: {sig.name} after {delay:.2f}s -> rc {p.returncode}, newest "
              f"checkpoint {cycles[-1]['newest_checkpoint']}", file=sys.stderr, flush=True)
        if p.returncode == 0:  # finished before the signal: start again from scratch
            shutil.rmtree(run)
    final = subprocess.run(argv(args, corpus, root / "cache", run, True), env=env, capture_output=True, text=True)
    if final.returncode != 0:
        raise SystemExit(f"the final resume failed: {final.stderr[-2000:]}")
    a, b = params_of(run), params_of(root / "reference")
    identical = len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
    expected = {"SIGKILL": -9, "SIGTERM": 143}
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": platform.processor() or
        platform.machine(), "cpu_count": os.cpu_count(), "cycles": args.cycles, "steps": args.steps,
        "ckpt_every": args.ckpt_every, "seed": args.seed,
        "signals": {s: sum(c["signal"] == s for c in cycles) for s in expected},
        "unexpected_exits": [c for c in cycles if c["rc"] not in (expected[c["signal"]], 0)],
        "sigterm_lines_ok": all(c["stderr_tail"].startswith("arlm: stopped by SIGTERM")
                                for c in cycles if c["signal"] == "SIGTERM" and c["rc"] == 143),
        "final_params_bit_identical": identical, "wall_s": round(time.perf_counter() - t0, 1), "cycle_log": cycles,
    }
    write_result(result, args.out, "soak.json")
    shutil.rmtree(root, ignore_errors=True)
    if not identical or result["unexpected_exits"]:
        raise SystemExit("soak: FAILED (see the JSON)")


if __name__ == "__main__":
    main()
