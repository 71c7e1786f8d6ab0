"""Planning an IsoFLOP sweep: a depth/width ladder of models, and for each compute budget the
models around its compute-optimal size, each trained for tokens = C / FLOPs-per-token(N).

FLOPs per token are the family's own exact count (``Family.flops_per_token``: for the
Transformer its matmuls, the output layer and attention's scores at the training length), not
6·N: at small scale attention and the output layer are most of the compute, and 6·N misleads.

The sweep file (``sweep.json`` in the sweep's folder) holds one full run config per run and
both parameter counts; ``param_count`` says which of them is each run's ``params`` (what the
results table and the fit use):
  total           every parameter (Chinchilla's convention)
  non-embedding   without the lookup tables (token and learned-position embeddings; an untied
                  output head counts), Kaplan et al.'s
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from arlm_jax.config import RunConfig, from_dict, to_dict
from arlm_jax.errors import ConfigError
from arlm_jax.files import atomic_write_text
from arlm_jax.models import family_of

FORMAT = "arlm-scaling-sweep/1"
COUNTS = ("total", "non-embedding")
LOOKUP_AXES = ("vocab", "length")  # a leaf whose rows are these is a lookup table (an embedding)


@dataclasses.dataclass(frozen=True)
class Ladder:
    """Model shapes of a sweep: each width (d_model, or a recurrent model's hidden units) with
    depth = round(width / aspect) layers, at least 1 (Kaplan et al.'s fixed aspect ratio)."""

    widths: tuple[int, ...]
    aspect: float

    def depth(self, width: int) -> int:
        return max(1, int(width / self.aspect + 0.5))


# cpu: the demo (d_model 128, 4 layers) is a rung; gpt: gpt2-124m (768, 12 layers) is one.
LADDERS = {
    "cpu": Ladder(widths=(16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512), aspect=32),
    "gpt": Ladder(widths=(256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 5120,
                          6144, 8192), aspect=64),
}


@dataclasses.dataclass(frozen=True)
class Rung:
    """One model of the ladder: its config, parameter counts and training FLOPs per token."""

    width: int
    depth: int
    model: Any
    params_total: int
    params_non_embedding: int
    flops_per_token: float

    def params(self, count: str) -> int:
        return self.params_total if count == "total" else self.params_non_embedding


def param_counts(cfg: Any) -> tuple[int, int]:
    """(every parameter, those outside lookup tables) of a model config, from abstract params
    and the family's logical axes."""
    family = family_of(cfg)
    shapes = jax.eval_shape(lambda: family.init(jax.random.key(0), cfg))
    axes = family.param_axes(shapes)
    sizes = jax.tree.leaves(jax.tree.map(lambda s: int(np.prod(s.shape)), shapes))
    lookup = jax.tree.leaves(jax.tree.map(_is_lookup, axes, is_leaf=lambda x: isinstance(x, tuple)))
    total = sum(sizes)
    return total, total - sum(n for n, emb in zip(sizes, lookup) if emb)


def _is_lookup(axes: tuple) -> bool:
    names = [a for a in axes if a != "layers"]
    return bool(names) and names[0] in LOOKUP_AXES


def ladder_rungs(base: RunConfig, ladder: Ladder) -> list[Rung]:
    """The ladder's models built from ``base.model`` (``Family.resize``), smallest first."""
    family = family_of(base.model)
    resize = family.require("resize", "arlm scaling plan")
    rungs = []
    for width in sorted(set(ladder.widths)):
        depth = ladder.depth(width)
        try:
            cfg = resize(base.model, width, depth).validate()
        except ConfigError as err:
            raise ConfigError(f"scaling plan: width {width} at depth {depth} is not a valid model ({err})") from None
        total, non_emb = param_counts(cfg)
        rungs.append(Rung(width, depth, cfg, total, non_emb, family.flops_per_token(cfg, base.seq_len)))
    return sorted(rungs, key=lambda r: r.params_total)


def choose_rungs(rungs: list[Rung], budget: float, sizes: int, tokens_per_param: float, count: str,
                 step_tokens: int, min_steps: int) -> tuple[list[Rung], list[str]]:
    """``sizes`` consecutive rungs around the one whose tokens/params at ``budget`` is nearest
    ``tokens_per_param`` (in log), moved down while the largest would train for fewer than
    ``min_steps`` steps. -> (rungs, notes on clipping)."""
    def steps(r: Rung) -> float:
        return budget / r.flops_per_token / step_tokens
    trainable = [r for r in rungs if steps(r) >= min_steps]
    if not trainable:
        small = rungs[0]
        need = min_steps * step_tokens * small.flops_per_token
        raise ConfigError(f"scaling plan: budget {budget:.3g} FLOPs trains the smallest model "
                          f"({small.params(count):,} params, width {small.width}) for only {steps(small):.1f} "
                          f"steps of {step_tokens} tokens; give budgets >= {need:.3g} (--min-steps {min_steps})")
    if len(trainable) < sizes:
        raise ConfigError(f"scaling plan: budget {budget:.3g} FLOPs leaves only {len(trainable)} ladder model(s) "
                          f"with >= {min_steps} steps, fewer than --sizes {sizes}; raise the budget or add "
                          f"smaller widths")
    ratio = [math.log(budget / r.flops_per_token / r.params(count) / tokens_per_param) for r in trainable]
    best = int(np.argmin(np.abs(ratio)))
    start = min(max(best - sizes // 2, 0), len(trainable) - sizes)
    notes = []
    if best != start + sizes // 2:
        edge = "smallest" if start == 0 else "largest trainable"
        notes.append(f"budget {budget:.3g}: its ~{tokens_per_param:g} tokens/param model is not central "
                     f"(the window stops at the {edge} ladder model); the IsoFLOP minimum may be off its range")
    return trainable[start:start + sizes], notes


def run_config(base: RunConfig, rung: Rung, steps: int, out_dir: str) -> RunConfig:
    """One run of the sweep: ``base`` at ``rung``'s shape for ``steps`` steps, validated once at
    the end, a checkpoint each quarter (so an interrupted run resumes), no sample."""
    tc = base.train
    train = dataclasses.replace(
        tc, steps=steps, warmup_steps=min(tc.warmup_steps, max(steps // 5, 1)), eval_every=steps,
        ckpt_every=max(min(tc.ckpt_every, steps // 4), 1), log_every=min(tc.log_every, steps),
        out_dir=out_dir, sample_tokens=0, progress=False)
    return dataclasses.replace(base, model=rung.model, train=train).validate()


def plan_sweep(base: RunConfig, budgets: list[float], sizes: int, ladder: Ladder, *, count: str = "total",
               tokens_per_param: float = 20.0, min_steps: int = 20) -> dict:
    """The sweep file's content: for each budget (FLOPs), ``sizes`` runs on its IsoFLOP curve."""
    _check_plan(budgets, sizes, count, tokens_per_param, min_steps)
    rungs = ladder_rungs(base, ladder)
    step_tokens = base.train.batch_size * base.seq_len
    runs, notes = [], []
    for budget in sorted(budgets):
        chosen, why = choose_rungs(rungs, budget, sizes, tokens_per_param, count, step_tokens, min_steps)
        notes += why
        for r in chosen:
            steps = max(int(round(budget / r.flops_per_token / step_tokens)), 1)
            name = f"c{budget:.2e}-w{r.width}-l{r.depth}".replace("+", "")
            cfg = run_config(base, r, steps, f"runs/{name}")
            tokens = steps * step_tokens
            runs.append({"name": name, "budget": budget, "width": r.width, "depth": r.depth,
                         "params": r.params(count), "params_total": r.params_total,
                         "params_non_embedding": r.params_non_embedding, "flops_per_token": r.flops_per_token,
                         "steps": steps, "tokens": tokens, "flops": tokens * r.flops_per_token,
                         "tokens_per_param": tokens / r.params(count), "config": to_dict(cfg)})
    return {"format": FORMAT, "family": base.model.family, "param_count": count,
            "flops": "the family's exact training FLOPs per token at train.seq_len, times tokens",
            "budgets": sorted(budgets), "sizes": sizes, "tokens_per_param_target": tokens_per_param,
            "ladder": {"widths": list(ladder.widths), "aspect": ladder.aspect}, "tokens_per_step": step_tokens,
            "base": to_dict(base), "runs": runs, "notes": notes}


def _check_plan(budgets: list[float], sizes: int, count: str, tokens_per_param: float, min_steps: int) -> None:
    if not budgets:
        raise ConfigError("scaling plan: --budgets is empty; give compute budgets in FLOPs, e.g. 1e13,3e13")
    if any(not (b > 0 and math.isfinite(b)) for b in budgets):
        raise ConfigError(f"scaling plan: --budgets {budgets} must all be positive FLOP counts")
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f"scaling plan: --budgets {budgets} repeats a budget")
    if sizes < 3:
        raise ConfigError(f"scaling plan: --sizes {sizes} must be >= 3 (a parabola per budget needs 3 points)")
    if count not in COUNTS:
        raise ConfigError(f"scaling plan: --count {count!r} is not allowed; choose one of {', '.join(COUNTS)}")
    if not tokens_per_param > 0:
        raise ConfigError(f"scaling plan: --tokens-per-param {tokens_per_param} must be > 0")
    if min_steps < 1:
        raise ConfigError(f"scaling plan: --min-steps {min_steps} must be >= 1")


def write_sweep(sweep: dict, folder: Path) -> Path:
    """Write ``folder/sweep.json``; refuses a folder that already holds a sweep (its runs would
    no longer match it)."""
    path = folder / "sweep.json"
    if path.exists():
        raise ConfigError(f"scaling plan: {path} already exists; choose another --out or remove that sweep")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(sweep, indent=1) + "\n")
    except OSError as err:
        raise ConfigError(f"scaling plan: cannot write {path} ({err.strerror or err})") from None
    return path


def read_sweep(path: str | Path) -> tuple[dict, Path]:
    """(the sweep, its folder) from a sweep file or the folder holding ``sweep.json``."""
    p = Path(path)
    p = p / "sweep.json" if p.is_dir() else p
    try:
        sweep = json.loads(p.read_text())
    except OSError as err:
        raise ConfigError(f"scaling run: cannot read the sweep file {str(p)!r} ({err.strerror or err})") from None
    except ValueError as err:
        raise ConfigError(f"scaling run: {str(p)!r} is not JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(sweep, dict) or sweep.get("format") != FORMAT:
        raise ConfigError(f"scaling run: {str(p)!r} is not a sweep file ({FORMAT}); write one with arlm scaling plan")
    return sweep, p.parent


def run_of(entry: dict, folder: Path) -> RunConfig:
    """A sweep entry's RunConfig, its out_dir under the sweep's folder (so the folder can move)."""
    cfg = from_dict(entry["config"])
    out = Path(cfg.train.out_dir)
    out = out if out.is_absolute() else folder / out
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(out))).validate()


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 0 <= I < N."""
    part, _, total = text.partition("/")
    try:
        i, n = int(part), int(total)
    except ValueError:
        raise ConfigError(f"--shard {text!r} must be I/N with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r} must be I/N with N >= 1 and 0 <= I < N")
    return i, n


def shard_of(runs: list[dict], shard: tuple[int, int]) -> list[dict]:
    """The I-th of N disjoint parts of a sweep (every N-th run from I, so each part mixes
    budgets and sizes); together the N parts are the sweep."""
    i, n = shard
    return runs[i::n]
