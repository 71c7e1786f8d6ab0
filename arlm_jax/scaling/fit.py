"""``arlm scaling fit``: Chinchilla's three approaches (Hoffmann et al. 2022) on one results
table, with percentile bootstrap intervals, as one JSON-ready dict.

Bootstrap: ``bootstrap`` resamples of the points with replacement, each a vector of
multinomial counts (so approach 3 fits all of them in one batched computation, law.py).
Approaches 1 and 3 use these; approach 2 resamples within each IsoFLOP group instead (the
design fixes how many models each budget trained). Row 0 of every weight matrix is the data
itself. Intervals are the draws' percentiles at ``confidence``, over resamples that gave a fit.

Every approach predicts N*(C) = g·C^a; D*(C) = C/(k·N*) for all three (k: FLOPs per parameter
per token), so k·N*·D* is exactly the budget. The dict's ``_draws`` key holds the resamples'
(a, log g) per approach for plots.py's bands: lists, so still JSON-ready, but long; callers
printing the result drop keys starting with "_". Point indices in the result (approach 1's
"frontier", approach 2's groups' "points") count rows of the table left after ``drop_outliers``
(``points.drop_highest(points, len(result["dropped"]))``, which plots.py re-derives).
"""

from __future__ import annotations

import math

import numpy as np

from arlm_jax.errors import ConfigError
from arlm_jax.scaling.allocation import GROUP_RTOL, MIN_SIZES, approach1, approach2, group_parabolas, isoflop_groups
from arlm_jax.scaling.law import HUBER_DELTA, fit_law, law_loss, optimal_allocation
from arlm_jax.scaling.points import Points, drop_highest

LAW_PARAMS = 5  # E, A, B, alpha, beta


def fit_all(points: Points, *, budget: float | None = None, bootstrap: int = 1000,
            drop_outliers: int = 0, confidence: float = 0.9, seed: int = 0,
            holdout: Points | None = None) -> dict:
    """Fit approaches 1-3 (and predict at ``budget`` FLOPs, and approach 3's loss for the
    ``holdout`` runs, which the fit does not see) -> a JSON-ready dict (module doc)."""
    _check(points, budget, bootstrap, drop_outliers, confidence)
    kept, dropped = drop_highest(points, drop_outliers)
    k = flops_per_param_token(kept)
    rng = np.random.default_rng(seed)
    n = len(kept)
    weights = np.vstack([np.ones((1, n), np.int64), rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap)])
    usable, ignored = isoflop_groups(kept.flops, kept.params)
    notes: list[str] = []
    fits = {"approach1": approach1(kept.params, kept.tokens, kept.loss, kept.flops, weights)}
    out1 = _summary1(fits["approach1"], confidence)
    a2 = _approach2(kept, usable, ignored, k, bootstrap, rng, confidence, notes)
    if a2 is not None:
        fits["approach2"], out2 = a2
    else:
        out2 = {"skipped": f"fewer than 2 IsoFLOP groups with >= {MIN_SIZES} distinct param counts and a "
                           f"loss minimum (points whose flops agree within {GROUP_RTOL:.0%} form a group)"}
    fits["approach3"], out3 = _approach3(kept, weights, k, confidence)
    if "skipped" in out1:
        del fits["approach1"]
    result = {
        "points": n, "dropped": [{"params": float(p), "tokens": float(t), "loss": float(v)}
                                 for p, t, v in zip(dropped.params, dropped.tokens, dropped.loss, strict=True)],
        "flops_given": kept.flops_given, "flops_per_param_token": k,
        "approach1": out1, "approach2": out2, "approach3": out3,
    }
    if budget is not None:
        result["budget"] = _budget(fits, float(budget), k, confidence)
    if holdout is not None:
        result["holdout"] = _holdout(fits["approach3"], holdout, confidence)
    failed = {name: int((~np.isfinite(f["a"][1:])).sum()) for name, f in fits.items()}
    result["bootstrap"] = {"resamples": bootstrap, "confidence": confidence, "seed": seed, "failed": failed}
    result["notes"] = notes
    result["_draws"] = {name: {"a": _floats(f["a"][1:]), "log_g": _floats(f["log_g"][1:])} for name, f in fits.items()}
    return result


def flops_per_param_token(points: Points) -> float:
    """k in C = k·N·D: the median of flops / (N·D) (6 when the table has no flops column)."""
    return float(np.median(points.flops / (points.params * points.tokens)))


def _check(points: Points, budget, bootstrap, drop_outliers, confidence) -> None:
    """One-line ConfigErrors for the options and too small a table."""
    if len(points) < LAW_PARAMS:
        raise ConfigError(f"scaling fit: {len(points)} points, but the law E + A/N^alpha + B/D^beta has "
                          f"{LAW_PARAMS} parameters; give at least {LAW_PARAMS} points")
    if not isinstance(drop_outliers, (int, np.integer)) or drop_outliers < 0:
        raise ConfigError(f"scaling fit: drop_outliers={_show(drop_outliers)} must be an integer >= 0")
    if len(points) - drop_outliers < LAW_PARAMS:
        raise ConfigError(f"scaling fit: drop_outliers={drop_outliers} leaves {len(points) - drop_outliers} of "
                          f"{len(points)} points; the law needs at least {LAW_PARAMS}")
    if not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ConfigError(f"scaling fit: bootstrap={_show(bootstrap)} must be an integer >= 0 (0: no intervals)")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ConfigError(f"scaling fit: confidence={_show(confidence)} must be a number in (0, 1), e.g. 0.9")
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ConfigError(f"scaling fit: budget={_show(budget)} must be a positive number of FLOPs, e.g. 1e21")


def _summary1(f: dict, confidence: float) -> dict:
    """Approach 1's JSON: exponents, coefficients, frontier point indices, intervals."""
    if not np.isfinite(f["a"][0]):
        return {"skipped": "the loss frontier has fewer than 2 points with different flops"}
    return {"a": _num(f["a"][0]), "b": _num(f["b"][0]), "params_coef": _num(np.exp(f["log_g"][0])),
            "loss_exponent": _num(f["s"][0]), "loss_coef": _num(np.exp(f["log_l"][0])),
            "frontier": [int(i) for i in np.flatnonzero(f["frontier"])],
            "intervals": _intervals({"a": f["a"], "b": f["b"]}, confidence)}


def _approach2(kept: Points, usable, ignored, k, bootstrap, rng, confidence, notes) -> tuple[dict, dict] | None:
    """Approach 2's fits (arrays [R+1]) and JSON, or None when it cannot run; notes appended."""
    if ignored:
        notes.append(f"approach 2: ignored {len(ignored)} IsoFLOP group(s) with fewer than {MIN_SIZES} distinct "
                     f"param counts (flops ~ {', '.join(f'{np.median(kept.flops[g]):.3g}' for g in ignored)})")
    if not usable:
        return None
    weights = np.zeros((bootstrap + 1, len(kept)), np.int64)
    weights[0] = 1
    for members in usable:  # resample within each group: every budget keeps its number of runs
        weights[1:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)),
                                               size=bootstrap)
    par = group_parabolas(kept.params, kept.loss, kept.flops, usable, weights)
    groups = []
    for g, members in enumerate(usable):
        lo, hi = float(kept.params[members].min()), float(kept.params[members].max())
        n_opt = par.n_opt[0, g]
        if not np.isfinite(n_opt):
            notes.append(f"approach 2: the IsoFLOP group at flops {par.flops[g]:.3g} has no loss minimum "
                         f"(its parabola opens downwards); it is left out")
        elif not lo <= n_opt <= hi:
            notes.append(f"approach 2: the IsoFLOP group at flops {par.flops[g]:.3g} has its minimum at params "
                         f"{n_opt:.3g}, outside its sampled range [{lo:.3g}, {hi:.3g}]: an extrapolation")
        groups.append({"flops": float(par.flops[g]), "points": [int(i) for i in members],
                       "params_range": [lo, hi], "center_log_params": float(par.center[g]),
                       "parabola": _floats(par.coef[0, g]), "params_opt": _num(n_opt),
                       "tokens_opt": _num(par.flops[g] / (k * n_opt)), "loss_min": _num(par.loss_min[0, g])})
    f = approach2(par, k)
    if not np.isfinite(f["a"][0]):
        return None
    out = {"a": _num(f["a"][0]), "b": _num(f["b"][0]), "params_coef": _num(np.exp(f["log_g"][0])),
           "loss_exponent": _num(f["s"][0]), "loss_coef": _num(np.exp(f["log_l"][0])), "groups": groups,
           "intervals": _intervals({"a": f["a"], "b": f["b"]}, confidence)}
    return f, out


def _approach3(kept: Points, weights, k: float, confidence: float) -> tuple[dict, dict]:
    """The law fitted to every weighting: its fits (arrays [R+1], with a, b, log g of N*) and JSON."""
    fits = fit_law(kept.params, kept.tokens, kept.loss, weights)
    law = {name: getattr(fits, name) for name in ("E", "A", "B", "alpha", "beta")}
    with np.errstate(all="ignore"):
        total = law["alpha"] + law["beta"]
        law["a"], law["b"] = law["beta"] / total, law["alpha"] / total
        n_unit, _ = optimal_allocation(law, k, k)       # N* at C/k = 1 is G
        law["log_g"] = np.log(n_unit) - law["a"] * np.log(k)
    bad = ~np.all([np.isfinite(v) for v in law.values()], axis=0)
    law = {name: np.where(bad, np.nan, v) for name, v in law.items()}
    out = {name: _num(law[name][0]) for name in ("E", "A", "B", "alpha", "beta", "a", "b")}
    out.update({"G": _num(np.exp(law["log_g"][0] + law["a"][0] * np.log(k))), "huber_delta": HUBER_DELTA,
                "objective": _num(fits.objective[0]),
                "intervals": _intervals({n: law[n] for n in ("E", "A", "B", "alpha", "beta", "a", "b")}, confidence)})
    return law, out


def _budget(fits: dict, budget: float, k: float, confidence: float) -> dict:
    """N*, D*, D*/N* and the predicted loss at ``budget`` FLOPs, per approach, with intervals."""
    out: dict = {"flops": budget}
    for name, f in fits.items():
        with np.errstate(all="ignore"):
            n = np.exp(f["log_g"] + f["a"] * np.log(budget))
            d = budget / (k * n)
            if name == "approach3":
                loss = law_loss(f, n, d)
            else:  # the power law through the frontier (1) or through the groups' minima (2)
                loss = np.exp(f["log_l"] + f["s"] * np.log(budget))
        pred = {"params": n, "tokens": d, "tokens_per_param": d / n, "loss": loss}
        out[name] = {key: _num(v[0]) for key, v in pred.items()}
        out[name]["intervals"] = _intervals(pred, confidence)
    return out


def _holdout(law: dict, held: Points, confidence: float) -> list[dict]:
    """Approach 3's L(N, D) for each held-out run, with its interval over the resamples, beside
    the run's observed loss; ``error`` is observed / predicted - 1."""
    pred = law_loss({name: law[name][:, None] for name in ("E", "A", "B", "alpha", "beta")},
                    held.params[None, :], held.tokens[None, :])          # [R+1, H]
    rows = []
    for i in range(len(held)):
        iv = _intervals({"predicted": pred[:, i]}, confidence).get("predicted")
        rows.append({"params": float(held.params[i]), "tokens": float(held.tokens[i]),
                     "loss": float(held.loss[i]), "predicted": _num(pred[0, i]), "interval": iv,
                     "error": _num(held.loss[i] / pred[0, i] - 1.0), "inside": None if iv is None or None in iv
                     else bool(iv[0] <= held.loss[i] <= iv[1])})
    return rows


def _intervals(draws: dict[str, np.ndarray], confidence: float) -> dict:
    """{name: [lo, hi]} percentile intervals over rows 1.. (the resamples); {} with no resamples;
    a name is null when no resample gave a finite value."""
    out = {}
    for name, values in draws.items():
        v = values[1:]
        if v.size == 0:
            return {}
        v = v[np.isfinite(v)]
        tail = 50.0 * (1.0 - confidence)
        out[name] = _floats(np.percentile(v, [tail, 100.0 - tail])) if v.size else None
    return out


def _show(value) -> str:
    """A user's option as they would write it (numpy scalars without their type's name)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _num(x) -> float | None:
    """A JSON number: float, or None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(values) -> list:
    return [_num(v) for v in np.asarray(values).ravel()]
