"""``arlm scaling``: plan an IsoFLOP sweep, run it (resumably, in shards), fit and plot its laws.

    arlm scaling plan --budgets 1e12,2e12,4e12 [--sizes 5] [--ladder cpu|gpt] [--widths 64,96,...]
                      [--count total|non-embedding] --out DIR [--preset ... --model.* --train.* ...]
    arlm scaling run DIR [--shard I/N] [--results CSV] [--retry-failed] [--distributed ...]
    arlm scaling fit RESULTS.csv [--budget C] [--bootstrap 1000] [--drop-outliers K] [--plot DIR]

docs/scaling.md walks through a sweep; scaling/ holds the library code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jsonargparse

from arlm_jax.cli.options import Source, add_config_options, build_run, new_parser
from arlm_jax.cli.train import add_distributed_options, join, leave_now
from arlm_jax.errors import ConfigError

NAME = "scaling"
HELP = "scaling laws: plan an IsoFLOP sweep, run it, fit Chinchilla's three approaches"
CONFIG_OPTIONS = True


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Scaling-law experiments: plan | run | fit (docs/scaling.md).")
    subcommands.add_subcommand(NAME, p, help=HELP)  # before its own subcommands (as arpa.py)
    subs = p.add_subcommands(dest="scaling_command", required=True)
    subs.add_subcommand("plan", _plan_parser(source), help="write a sweep: runs on IsoFLOP curves")
    subs.add_subcommand("run", _run_parser(), help="train a sweep's runs (or one shard of them)")
    subs.add_subcommand("fit", _fit_parser(), help="fit a results CSV: approaches 1, 2, 3 with intervals")
    return p


def _plan_parser(source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Plan an IsoFLOP sweep: for each compute budget C, --sizes models of "
                               "the ladder around its compute-optimal size, each trained for "
                               "C / FLOPs-per-token(N) tokens (the family's exact count). The "
                               "--model.*/--train.*/--data.* options set the base run every run shares. "
                               "Example: arlm scaling plan --budgets 1e12,2e12,4e12,8e12 --out runs/sweep")
    # not required=True: every parser is built with a --config file's sections, and checks them
    p.add_argument("--budgets", type=str, default=None, metavar="C1,C2,...",
                   help="compute budgets in training FLOPs, comma-separated (required)")
    p.add_argument("--sizes", type=int, default=5, metavar="K", help="models per budget (>= 3)")
    p.add_argument("--ladder", type=str, default="cpu", metavar="NAME",
                   help="shape rule: cpu (widths 16..512, d_model/layers 32; the demo is a rung) | "
                        "gpt (widths 256..8192, ratio 64; gpt2-124m is a rung)")
    p.add_argument("--widths", type=str, default=None, metavar="W1,W2,...",
                   help="the ladder's widths instead of the named ladder's (d_model or hidden units)")
    p.add_argument("--aspect", type=float, default=None, metavar="R",
                   help="width / depth of the ladder (null: the named ladder's)")
    p.add_argument("--count", type=str, default="total", metavar="KIND",
                   help="the parameter count runs are placed and fitted by: total | non-embedding "
                        "(both are recorded)")
    p.add_argument("--tokens-per-param", type=float, default=20.0, metavar="R",
                   help="each budget's window of sizes is centred on the model with about this ratio")
    p.add_argument("--min-steps", type=int, default=20, metavar="S",
                   help="fewest optimizer steps a run may have; smaller budgets are refused")
    p.add_argument("--out", type=str, default="runs/scaling", metavar="DIR", help="the sweep's folder")
    add_config_options(p, source)
    return p


def _run_parser() -> jsonargparse.ArgumentParser:
    p = new_parser(description="Train the runs of a sweep in turn: finished runs are skipped, "
                               "interrupted ones resume from their newest checkpoint, and each "
                               "finished run appends a row to the results CSV. Every process of a "
                               "multi-process group runs the same runs on all its devices.")
    p.add_argument("sweep", type=str, help="the sweep's folder (or its sweep.json)")
    p.add_argument("--shard", type=str, default="0/1", metavar="I/N",
                   help="run the I-th of N disjoint parts (a SLURM array task, a pod slice)")
    p.add_argument("--results", type=str, default=None, metavar="CSV",
                   help="results table to append to (null: results.csv in the sweep's folder)")
    p.add_argument("--retry-failed", action="store_true", help="train runs that failed before again")
    add_distributed_options(p)
    return p


def _fit_parser() -> jsonargparse.ArgumentParser:
    p = new_parser(description="Fit scaling laws to any CSV with columns params,tokens,loss (loss in "
                               "nats per token; flops optional, else 6*N*D): approach 1 (the "
                               "frontier), 2 (IsoFLOP parabolas) and 3 (L = E + A/N^alpha + B/D^beta) "
                               "with bootstrap intervals. Prints JSON.")
    p.add_argument("results", type=str, help="the results CSV")
    p.add_argument("--budget", type=float, default=None, metavar="C",
                   help="predict N*, D*, tokens per parameter and loss for this many FLOPs")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="R", help="bootstrap resamples (0: none)")
    p.add_argument("--confidence", type=float, default=0.9, metavar="P", help="interval coverage")
    p.add_argument("--drop-outliers", type=int, default=0, metavar="K", help="drop the K highest-loss points")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--holdout", type=str, default=None, metavar="CSV",
                   help="runs the fit does not see (same columns): approach 3's predicted loss for each, "
                        "with its interval, beside the observed one")
    p.add_argument("--plot", type=str, default=None, metavar="DIR", help="write the PNGs into DIR")
    p.add_argument("--out", type=str, default=None, metavar="FILE", help="also write the JSON to FILE")
    return p


def run(args: jsonargparse.Namespace, source: Source) -> int:
    command = args.scaling_command
    return {"plan": _plan, "run": _run, "fit": _fit}[command](args[command], source)


def _numbers(text: str, option: str, kind: type) -> list:
    try:
        values = [kind(float(v)) if kind is int else kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be comma-separated numbers, e.g. 1e12,2e12") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ConfigError(f"{option} {text!r} must be positive numbers, comma-separated")
    return values


def _plan(args: jsonargparse.Namespace, source: Source) -> int:
    from arlm_jax.data.tokenizer import load_tokenizer
    from arlm_jax.scaling import sweep as sweep_lib

    if args.budgets is None:
        raise ConfigError("scaling plan: give --budgets C1,C2,... (training FLOPs of each IsoFLOP curve)")
    base, explicit = build_run(args, source)
    if "model.vocab_size" not in explicit:  # as arlm train: the vocabulary follows the tokenizer
        vocab = load_tokenizer(base.data.tokenizer).n_vocab
        base = dataclasses.replace(base, model=dataclasses.replace(base.model, vocab_size=vocab)).validate()
    if args.ladder not in sweep_lib.LADDERS:
        raise ConfigError(f"--ladder {args.ladder!r} is unknown; choose one of {', '.join(sweep_lib.LADDERS)}")
    ladder = sweep_lib.LADDERS[args.ladder]
    if args.widths is not None:
        ladder = dataclasses.replace(ladder, widths=tuple(_numbers(args.widths, "--widths", int)))
    if args.aspect is not None:
        if not args.aspect > 0:
            raise ConfigError(f"--aspect {args.aspect} must be > 0")
        ladder = dataclasses.replace(ladder, aspect=args.aspect)
    sweep = sweep_lib.plan_sweep(base, _numbers(args.budgets, "--budgets", float), args.sizes, ladder,
                                 count=args.count, tokens_per_param=args.tokens_per_param,
                                 min_steps=args.min_steps)
    path = sweep_lib.write_sweep(sweep, Path(args.out))
    print(format_sweep(sweep))
    print(f"wrote {path}; train it with: arlm scaling run {args.out}")
    return 0


def format_sweep(sweep: dict) -> str:
    """A table of a sweep's runs, with its notes."""
    lines = [f"{len(sweep['runs'])} runs of {sweep['family']}, {sweep['tokens_per_step']:,} tokens a step; "
             f"params = {sweep['param_count']} count",
             f"{'run':<26} {'params':>11} {'non-emb':>11} {'steps':>7} {'tokens':>12} {'tok/param':>9} {'FLOPs':>9}"]
    for r in sweep["runs"]:
        lines.append(f"{r['name']:<26} {r['params_total']:>11,} {r['params_non_embedding']:>11,} {r['steps']:>7,} "
                     f"{r['tokens']:>12,} {r['tokens_per_param']:>9.1f} {r['flops']:>9.3g}")
    return "\n".join(lines + [f"note: {n}" for n in sweep["notes"]])


def _run(args: jsonargparse.Namespace, source: Source) -> int:
    from arlm_jax.scaling import sweep as sweep_lib
    from arlm_jax.scaling.runner import run_sweep

    shard = sweep_lib.parse_shard(args.shard)
    sweep_lib.read_sweep(args.sweep)  # a bad path is one line before any process group forms
    multi = join(args)
    try:
        counts = run_sweep(args.sweep, shard=shard, results=args.results, retry_failed=args.retry_failed)
    except BaseException as err:
        if not multi:
            raise
        leave_now(err)
    return 1 if counts["failed"] else 0


def _fit(args: jsonargparse.Namespace, source: Source) -> int:
    from arlm_jax.scaling.fit import fit_all
    from arlm_jax.scaling.points import read_points

    points = read_points(args.results)
    holdout = read_points(args.holdout) if args.holdout else None
    result = fit_all(points, budget=args.budget, bootstrap=args.bootstrap, drop_outliers=args.drop_outliers,
                     confidence=args.confidence, seed=args.seed, holdout=holdout)
    printed = {k: v for k, v in result.items() if not k.startswith("_")}  # "_" keys: plot data
    text = json.dumps(printed, indent=1)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n")
        except OSError as err:
            raise ConfigError(f"--out {args.out!r} cannot be written ({err.strerror or err})") from None
    if args.plot:
        from arlm_jax.scaling.plots import write_plots
        try:
            Path(args.plot).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--plot {args.plot!r} cannot be created ({err.strerror or err})") from None
        result["plots"] = [str(p) for p in write_plots(points, result, args.plot)]
        printed["plots"] = result["plots"]
        text = json.dumps(printed, indent=1)
    print(text)
    return 0
