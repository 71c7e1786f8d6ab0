"""Time to quality: training recipes on the default corpus for a fixed wall-clock budget.

    python experiments/time_to_quality.py                       # 3 minutes, 3 seeds, every recipe
    python experiments/time_to_quality.py --budget 60 --seeds 1 --recipes adamw muon
    python experiments/time_to_quality.py --study history --budget 300 --seeds 1   # RNN, GRU, LSTM, Transformer

Each run is ``arlm train`` in its own process, as a user runs it (the demo's model, data and
cadence, plus the recipe's options), and the budget is that process's whole wall clock:
start-up, data, compilation, steps, validations and checkpoints. A recipe's step count is set
so its run fills the budget: one short calibration run per recipe measures its loop rate
(the ``loop:`` line) and its fixed costs, and the steps are what the rest of the budget holds.
The schedule (warmup, cosine) then spans exactly the run, as it would for a user who asked
for that many steps.

Runs alternate recipes within each seed (A B A B ...). The JSON (--out, default
experiments/results/time_to_quality.json) holds every run's validation curve (bits/byte
against elapsed seconds, from metrics.jsonl), the final figure per run, mean +- std per recipe,
and Welch's t-test p-value of each recipe against the best. A plot of the curves goes beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arlm_run import arlm_train, loop_figures  # noqa: E402
from results_io import RESULTS, write_result  # noqa: E402

CALLER = "time_to_quality"

# name -> `arlm train` options on top of the defaults (the demo). The matmul dtype is pinned:
# the demo's own (model.matmul_dtype auto) is bfloat16 or float32 depending on the CPU.
RECIPES: dict[str, list[str]] = {
    "adamw": ["--train.optimizer", "adamw", "--model.matmul_dtype", "float32"],
    "muon": ["--train.optimizer", "muon", "--model.matmul_dtype", "float32"],
    "muon-bf16mm": ["--train.optimizer", "muon", "--model.matmul_dtype", "bfloat16"],
}
# The history of autoregressive LMs, measured (--study history): each family at about the
# demo Transformer's 0.84M parameters (`arlm info` with these options: rnn 0.87M, gru 0.84M,
# lstm 0.85M, transformer 0.84M), the demo's data, optimizer and cadence.
HISTORY: dict[str, list[str]] = {
    "rnn": ["--model.family", "rnn", "--model.d_embed", "256", "--model.d_hidden", "640"],
    "gru": ["--model.family", "gru", "--model.d_embed", "192", "--model.d_hidden", "320"],
    "lstm": ["--model.family", "lstm", "--model.d_embed", "192", "--model.d_hidden", "256"],
    "transformer": [],
}
STUDIES = {"recipes": RECIPES, "history": HISTORY}


def calibrate(options: list[str], tmp: Path, budget: float, probe_steps: int) -> dict:
    """Steps that fill ``budget`` seconds: a short run gives the loop's seconds per step and the
    fixed cost (the wall clock outside the loop); a full run's extra validations are added."""
    wall, out = arlm_train([*options, "--train.steps", str(probe_steps), "--train.sample_tokens", "0"],
                           tmp / "probe", CALLER)
    loop = loop_figures(out, CALLER)
    n, loop_s = loop["loop_steps"], loop["loop_s"]
    per_step = loop_s / max(n, 1)
    fixed = wall - loop_s + 5.0  # + the final sample's compile and a margin
    steps = max(int((budget - fixed) / per_step), probe_steps)
    return {"probe_steps": probe_steps, "probe_wall_s": wall, "s_per_step": per_step, "fixed_s": fixed,
            "steps": steps}


def curve(run_dir: Path) -> list[dict]:
    """The run's validation rows: step, elapsed seconds, bits/byte, loss."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "elapsed_s": r.get("elapsed_s"), "bpb": r["bpb"], "loss": r["loss"]}
            for r in rows if r.get("split") == "val"]


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value of equal means (None with fewer than 2 runs a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def table(result: dict) -> str:
    """The study as a Markdown table: steps in the budget, final bits/byte, p against the best."""
    rows = ["| arm | steps in the budget | final bits/byte | p vs best |", "|---|---|---|---|"]
    for name, rec in result["recipes"].items():
        p = rec["p_value_vs_best"]
        p_text = "best" if name == result["best"] else ("—" if p is None else f"{p:.2g}")
        rows.append(f"| {name} | {rec['steps']:,} | {rec['final_bpb_mean']:.3f} ± {rec['final_bpb_std']:.3f} "
                    f"| {p_text} |")
    return "\n".join(rows)


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("time_to_quality: matplotlib missing; no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, rec) in enumerate(result["recipes"].items()):
        for j, run in enumerate(rec["runs"]):
            pts = [(p["elapsed_s"], p["bpb"]) for p in run["curve"] if p["elapsed_s"] is not None]
            ax.plot(*zip(*pts), color=f"C{i}", marker="o", ms=3, alpha=0.8,
                    label=f"{name}: {rec['final_bpb_mean']:.3f} ± {rec['final_bpb_std']:.3f}" if j == 0 else None)
    ax.set_xlabel("seconds since `arlm train` opened the run")
    ax.set_ylabel("validation bits/byte")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    what = "time to quality" if result.get("study", "recipes") == "recipes" else "one model of each family"
    ax.set_title(f"{what}, {result['budget_s']:.0f} s budget, {result['seeds']} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=180.0, help="wall-clock seconds per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--study", choices=list(STUDIES), default="recipes",
                    help="recipes: optimizers on the demo model; history: one model of each family")
    ap.add_argument("--recipes", nargs="+", default=None, help="arms of the study (default: all)")
    ap.add_argument("--probe-steps", type=int, default=60, help="steps of each calibration run")
    ap.add_argument("--out", default=None)
    ap.add_argument("extra", nargs="*", help="`arlm train` options for every recipe (after --)")
    args = ap.parse_args()
    arms = STUDIES[args.study]
    args.recipes = args.recipes or list(arms)
    unknown = [r for r in args.recipes if r not in arms]
    if unknown:
        ap.error(f"--recipes {unknown[0]!r} is not in --study {args.study}; choose from {', '.join(arms)}")

    result: dict = {"study": args.study, "budget_s": args.budget, "seeds": args.seeds, "extra_options": args.extra,
                    "method": "each run its own `arlm train` process; recipes alternate within a seed",
                    "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%d"), "recipes": {}}
    with tempfile.TemporaryDirectory(prefix="ttq_") as tmp:
        plan = {}
        for name in args.recipes:
            options = [*arms[name], *args.extra]
            plan[name] = calibrate(options, Path(tmp) / name, args.budget, args.probe_steps)
            print(f"{name}: {plan[name]['steps']} steps fill {args.budget:.0f} s", file=sys.stderr, flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in args.recipes}
        for seed in range(args.seeds):
            for name in args.recipes:
                run_dir = Path(tmp) / f"{name}_seed{seed}"
                options = [*arms[name], *args.extra, "--train.steps", str(plan[name]["steps"]),
                           "--train.seed", str(seed)]
                wall, _ = arlm_train(options, run_dir, CALLER)
                pts = curve(run_dir)
                runs[name].append({"seed": seed, "wall_s": wall, "final_bpb": pts[-1]["bpb"], "curve": pts})
                print(f"{name} seed {seed}: {pts[-1]['bpb']:.3f} bits/byte in {wall:.0f} s", file=sys.stderr,
                      flush=True)
    finals = {name: [r["final_bpb"] for r in rs] for name, rs in runs.items()}
    best = min(finals, key=lambda n: statistics.mean(finals[n]))
    for name in args.recipes:
        xs = finals[name]
        result["recipes"][name] = {
            "options": arms[name], "calibration": plan[name], "steps": plan[name]["steps"],
            "final_bpb_mean": statistics.mean(xs), "final_bpb_std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "wall_s_mean": statistics.mean(r["wall_s"] for r in runs[name]),
            "p_value_vs_best": None if name == best else welch_p(xs, finals[best]), "runs": runs[name]}
    result["best"] = best
    result["table"] = table(result)
    print(result["table"], file=sys.stderr)
    name = "time_to_quality" if args.study == "recipes" else args.study
    path = write_result(result, args.out, f"{name}.json")
    plot(result, path.with_suffix(".png") if args.out else RESULTS / f"{name}.png")
    if not math.isfinite(result["recipes"][best]["final_bpb_mean"]):
        sys.exit("time_to_quality: the best recipe's figure is not finite")


if __name__ == "__main__":
    main()
