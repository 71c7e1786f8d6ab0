"""The results a scaling fit reads: one row per trained model, its parameter count N, training
tokens D, final validation loss (nats/token) and, optionally, its training FLOPs C.

Any CSV with a header naming ``params``, ``tokens`` and ``loss`` is accepted (``flops`` is
optional, other columns and their order do not matter), so tables from other projects fit too.
Every value is checked once here, with a one-line ``ConfigError`` naming the row and column;
the fitting code after this boundary assumes finite, positive numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from arlm_jax.errors import ConfigError

NEEDED = ("params", "tokens", "loss")
OPTIONAL = ("flops",)
DEFAULT_FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6·N·D: forward 2·N·D plus backward 4·N·D FLOPs


@dataclasses.dataclass(frozen=True)
class Points:
    """A results table as arrays, all float64 [P] (P = number of trained models)."""

    params: np.ndarray  # [P] N, parameter count
    tokens: np.ndarray  # [P] D, training tokens
    loss: np.ndarray    # [P] final validation loss, nats/token
    flops: np.ndarray   # [P] training FLOPs C: the 'flops' column if present, else 6·N·D
    flops_given: bool   # whether the table had a 'flops' column

    def __len__(self) -> int:
        return int(self.params.shape[0])

    def take(self, idx) -> Points:
        """The rows ``idx`` (an index array or boolean mask [P]) as a new table."""
        return Points(self.params[idx], self.tokens[idx], self.loss[idx], self.flops[idx], self.flops_given)


def points_from_arrays(params, tokens, loss, flops=None) -> Points:
    """A checked ``Points`` from array-likes [P] (``flops`` None: C = 6·N·D), for library users."""
    columns = {"params": params, "tokens": tokens, "loss": loss}
    if flops is not None:
        columns["flops"] = flops
    arrays = {}
    for name, values in columns.items():
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"scaling points: {name} must be numbers") from None
        if arr.ndim != 1:
            raise ConfigError(f"scaling points: {name} must be one-dimensional, got shape {arr.shape}")
        arrays[name] = arr
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        given = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise ConfigError(f"scaling points: columns differ in length ({given})")
    if lengths["params"] == 0:
        raise ConfigError("scaling points: the table is empty; give at least one row of params, tokens, loss")
    for name, arr in arrays.items():
        bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(f"scaling points: {name}[{i}]={float(arr[i])!r} must be a positive finite number")
    return _build(arrays)


def read_points(path: str | Path) -> Points:
    """Read and check a results CSV (header ``params,tokens,loss[,flops]``, any extra columns)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise ConfigError(f"scaling points: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"scaling points: cannot read {path} ({_one_line(err)})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines carry no rows
    if not rows:
        raise ConfigError(f"scaling points: {path} is empty; it needs a header {','.join(NEEDED)} and rows")
    header = [cell.strip().lower() for cell in rows[0]]
    missing = [name for name in NEEDED if name not in header]
    if missing:
        raise ConfigError(f"scaling points: {path} has no column(s) {', '.join(missing)}; it needs "
                          f"{', '.join(NEEDED)} (flops optional), found {', '.join(header) or 'none'}")
    if len(rows) == 1:
        raise ConfigError(f"scaling points: {path} has a header but no rows")
    wanted = [name for name in NEEDED + OPTIONAL if name in header]
    arrays = {name: np.empty(len(rows) - 1) for name in wanted}
    for r, row in enumerate(rows[1:], start=1):
        for name in wanted:
            arrays[name][r - 1] = _cell(path, row, header.index(name), r, name)
    return _build(arrays)


def _cell(path: Path, row: list[str], col: int, r: int, name: str) -> float:
    """Row ``r``'s (1-based, after the header) value in column ``name``, checked."""
    text = row[col].strip() if col < len(row) else ""
    where = f"scaling points: {path} row {r} (line {r + 1}), column {name}"
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}: {text!r} must be a positive finite number")
    return value


def _build(arrays: dict[str, np.ndarray]) -> Points:
    n, d = arrays["params"], arrays["tokens"]
    given = "flops" in arrays
    flops = arrays["flops"] if given else DEFAULT_FLOPS_PER_PARAM_TOKEN * n * d
    return Points(n.copy(), d.copy(), arrays["loss"].copy(), np.array(flops, dtype=np.float64), given)


def drop_highest(points: Points, k: int) -> tuple[Points, Points]:
    """(the table without its ``k`` highest-loss rows, those rows): ``--drop-outliers``.
    Ties break by row order, so the split is deterministic."""
    order = np.argsort(-points.loss, kind="stable")
    dropped = np.zeros(len(points), dtype=bool)
    dropped[order[:k]] = True
    return points.take(~dropped), points.take(dropped)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
