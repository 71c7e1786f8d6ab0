"""Does a learning rate tuned at the smallest width hold across widths? Standard against μP.

    python experiments/mup_transfer.py                                   # 3 widths x 5 lrs x 2, ~35 min on 2 cores
    python experiments/mup_transfer.py --widths 64 128 --lrs 0.005 0.01 --steps 100   # a quick look

Each run is ``arlm train`` in its own process, as a user runs it: the demo's data (byte tokens,
context 128, batch 16), 2 layers of width W with 32-wide heads, AdamW with the default warmup
and cosine decay, one validation at the end. μP runs use ``--model.parametrization mup`` with the
smallest width as ``mup_base_width`` (head_dim 32 as its base), so at that width the two
parametrizations are the same model, trained once. Runs alternate the parametrizations
(A B A B). The JSON (--out, default experiments/results/mup_transfer.json) holds every run's
final bits/byte and, per parametrization, each width's best learning rate; the plot of
bits/byte against the learning rate goes to --plot (default docs/figures/mup_transfer.png).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arlm_run import arlm_train, loop_figures  # noqa: E402
from results_io import write_result  # noqa: E402

CALLER = "mup_transfer"
HEAD_DIM = 32


def options(width: int, lr: float, parametrization: str, base: int, steps: int) -> list[str]:
    """``arlm train`` options for one run."""
    opts = ["--model.d_model", str(width), "--model.n_layers", "2", "--model.n_heads", str(width // HEAD_DIM),
            "--train.optimizer", "adamw", "--train.lr", repr(lr), "--train.steps", str(steps),
            "--train.warmup_steps", str(max(steps // 10, 1)), "--train.eval_every", str(steps),
            "--train.ckpt_every", str(steps), "--train.sample_tokens", "0"]
    if parametrization == "mup":
        opts += ["--model.parametrization", "mup", "--model.mup_base_width", str(base),
                 "--model.mup_base_head_dim", str(HEAD_DIM)]
    return opts


def best_lrs(runs: list[dict], parametrization: str, widths: list[int]) -> dict[str, float]:
    """Each width's learning rate with the lowest final bits/byte."""
    out = {}
    for w in widths:
        mine = [r for r in runs if r["parametrization"] == parametrization and r["width"] == w]
        out[str(w)] = min(mine, key=lambda r: r["final_bpb"])["lr"]
    return out


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{CALLER}: matplotlib missing; no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, par in zip(axes, ("standard", "mup")):
        for i, w in enumerate(result["widths"]):
            pts = sorted((r["lr"], r["final_bpb"]) for r in result["runs"]
                         if r["parametrization"] == par and r["width"] == w)
            ax.plot(*zip(*pts), marker="o", color=f"C{i}", label=f"width {w}")
            best = min(pts, key=lambda p: p[1])
            ax.plot(*best, marker="*", ms=14, color=f"C{i}", markeredgecolor="k")
        ax.set(xscale="log", xlabel="AdamW learning rate", title="μP" if par == "mup" else "standard")
        ax.set_xticks(result["lrs"], [f"{lr:g}" for lr in result["lrs"]])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation bits/byte after {result['steps']} steps")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.00125, 0.0025, 0.005, 0.01, 0.02])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs/figures/mup_transfer.png"))
    args = ap.parse_args()
    if any(w % HEAD_DIM for w in args.widths):
        sys.exit(f"{CALLER}: --widths must be multiples of {HEAD_DIM} (the head width)")
    widths, base = sorted(args.widths), min(args.widths)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in widths:
            for lr in args.lrs:
                for par in ("standard", "mup"):
                    if par == "mup" and w == base:  # the same model as standard's run: reuse it
                        runs.append({**runs[-1], "parametrization": "mup", "same_as": "standard"})
                        continue
                    wall, stdout = arlm_train(options(w, lr, par, base, args.steps), Path(tmp) / f"{par}-{w}-{lr}",
                                              CALLER)
                    fig = loop_figures(stdout, CALLER)
                    runs.append({"parametrization": par, "width": w, "lr": lr, "final_bpb": fig["final_bpb"],
                                 "wall_s": round(wall, 2), "tokens_per_s": fig["tokens_per_s"]})
                    print(f"{par:8s} width {w:4d} lr {lr:.5f}: bits/byte {fig['final_bpb']:.4f} ({wall:.0f} s)",
                          file=sys.stderr)
    result = {"command": "python experiments/mup_transfer.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "widths": widths, "lrs": args.lrs, "steps": args.steps, "base_width": base,
              "best_lr": {par: best_lrs(runs, par, widths) for par in ("standard", "mup")}, "runs": runs}
    write_result(result, args.out, "mup_transfer.json")
    plot(result, Path(args.plot))


if __name__ == "__main__":
    main()
