"""The PNGs of ``arlm scaling fit``: what each approach saw and what it predicts.

    isoflop.png    loss against N per IsoFLOP group, each group's parabola and minimum (approach 2)
    frontier.png   loss against C, the frontier and its power law (approach 1), approach 3's L at N*
    optimal.png    N* and D* against C, every approach's power law over a wider range, bootstrap bands
    residuals.png  approach 3's log(observed) - log(predicted) against N and against D

Everything comes from the points and ``fit_all``'s result (its ``_draws`` for the bands; no
bands without it). A plot whose approach was skipped is not written. matplotlib (the optional
``plot`` extra) is imported here only, and used through ``Figure`` so no global pyplot state changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arlm_jax.errors import ConfigError
from arlm_jax.scaling.law import law_loss, optimal_allocation
from arlm_jax.scaling.points import Points, drop_highest

APPROACHES = (("approach1", "approach 1 (frontier)", "C0"), ("approach2", "approach 2 (IsoFLOP)", "C1"),
              ("approach3", "approach 3 (parametric)", "C2"))


def write_plots(points: Points, result: dict, out_dir: str | Path) -> list[Path]:
    """Write the PNGs for ``result = fit_all(points, ...)`` into ``out_dir``; -> their paths."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("scaling plots need matplotlib; install it with pip install 'arlm_jax[plot]'") from None
    kept, dropped = drop_highest(points, len(result["dropped"]))
    if len(kept) != result["points"]:
        raise ConfigError(f"scaling plots: the result was fitted to {result['points']} points, "
                          f"but this table leaves {len(kept)}; plot the table that was fitted")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("isoflop", _isoflop), ("frontier", _frontier), ("optimal", _optimal),
                       ("residuals", _residuals)):
        fig = Figure(figsize=(11, 4.5) if name in ("optimal", "residuals") else (7, 5), layout="constrained")
        if draw(fig, kept, dropped, result) is False:
            continue
        _sparse_minor_ticks(fig)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def _isoflop(fig, kept: Points, dropped: Points, result: dict):
    """Loss against N per IsoFLOP group, with each group's parabola and its minimum."""
    a2 = result["approach2"]
    if "skipped" in a2:
        return False
    ax = fig.add_subplot()
    colors = _cmap(len(a2["groups"]))
    for group, color in zip(a2["groups"], colors, strict=True):
        idx = np.asarray(group["points"])
        ax.scatter(kept.params[idx], kept.loss[idx], color=color, s=18, label=f"C = {group['flops']:.2g}")
        c2, c1, c0 = group["parabola"]
        lo, hi = np.log(group["params_range"])
        t = np.linspace(lo - 0.2, hi + 0.2, 100) - group["center_log_params"]
        ax.plot(np.exp(t + group["center_log_params"]), c2 * t * t + c1 * t + c0, color=color, lw=1)
        if group["params_opt"] is not None:
            ax.plot(group["params_opt"], group["loss_min"], marker="*", ms=12, color=color, mec="k")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss (nats/token)", title="IsoFLOP profiles (approach 2)")
    ax.legend(fontsize=7)


def _frontier(fig, kept: Points, dropped: Points, result: dict):
    """Loss against C: every point, the frontier, its power law, approach 3's loss at N*(C)."""
    a1 = result["approach1"]
    if "skipped" in a1:
        return False
    ax = fig.add_subplot()
    ax.scatter(kept.flops, kept.loss, s=12, color="0.65", label="runs")
    if len(dropped):
        ax.scatter(dropped.flops, dropped.loss, s=24, marker="x", color="r", label="dropped")
    on = np.asarray(a1["frontier"], dtype=int)
    ax.scatter(kept.flops[on], kept.loss[on], s=24, color="C0", label="frontier")
    c = _flops_range(kept, result)
    ax.plot(c, a1["loss_coef"] * c ** a1["loss_exponent"], color="C0",
            label=f"L = {a1['loss_coef']:.3g}·C^{a1['loss_exponent']:.3f}")
    law = result["approach3"]
    n, d = optimal_allocation(law, c, result["flops_per_param_token"])
    ax.plot(c, law_loss(law, n, d), "--", color="C2", label="approach 3: L(N*, D*)")
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="loss (nats/token)",
           title="loss frontier (approach 1)")
    ax.legend(fontsize=8)


def _optimal(fig, kept: Points, dropped: Points, result: dict):
    """N* and D* against C for every approach that ran, with bootstrap bands from ``_draws``."""
    k, c = result["flops_per_param_token"], _flops_range(kept, result, wide=True)
    axes = fig.subplots(1, 2)
    draws = result.get("_draws", {})
    conf = result["bootstrap"]["confidence"]
    for name, label, color in APPROACHES:
        fit = result[name]
        if "skipped" in fit:
            continue
        coef = fit["params_coef"] if name != "approach3" else fit["G"] * k ** -fit["a"]
        n = coef * c ** fit["a"]
        for ax, y in zip(axes, (n, c / (k * n)), strict=True):
            ax.plot(c, y, color=color, label=f"{label}: a = {fit['a']:.3f}" if ax is axes[0] else label)
        band = _band(draws.get(name), c, conf)
        if band is not None:
            lo, hi = band
            axes[0].fill_between(c, lo, hi, color=color, alpha=0.2, lw=0)
            axes[1].fill_between(c, c / (k * hi), c / (k * lo), color=color, alpha=0.2, lw=0)
    if "skipped" not in result["approach2"]:
        groups = result["approach2"]["groups"]
        axes[0].scatter([g["flops"] for g in groups], [g["params_opt"] for g in groups], color="C1", s=20, zorder=3)
        axes[1].scatter([g["flops"] for g in groups], [g["tokens_opt"] for g in groups], color="C1", s=20, zorder=3)
    for ax, what in zip(axes, ("N* (parameters)", "D* (tokens)"), strict=True):
        if "budget" in result:
            ax.axvline(result["budget"]["flops"], color="k", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel=what)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"compute-optimal allocation ({conf:.0%} bootstrap bands)")


def _residuals(fig, kept: Points, dropped: Points, result: dict):
    """Approach 3's log residuals against N and against D."""
    res = np.log(kept.loss) - np.log(law_loss(result["approach3"], kept.params, kept.tokens))
    panels = zip(fig.subplots(1, 2, sharey=True), (kept.params, kept.tokens), ("parameters N", "tokens D"), strict=True)
    for ax, x, what in panels:
        ax.scatter(x, res, s=14, c=np.log(kept.flops), cmap="viridis")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel=what)
    fig.axes[0].set_ylabel("log observed - log predicted")
    fig.suptitle("approach 3 residuals (colour: log FLOPs)")


def _sparse_minor_ticks(fig) -> None:
    """Minor ticks of log axes at 2 and 5 only: over about a decade matplotlib labels every one, and they overlap."""
    from matplotlib.ticker import LogLocator
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))


def _band(draws: dict | None, c: np.ndarray, confidence: float):
    """Percentile band of N*(C) = e^log_g·C^a over the resamples' (a, log g); None without them."""
    if not draws or not draws["a"]:
        return None
    a = np.asarray(draws["a"], dtype=float)
    log_g = np.asarray(draws["log_g"], dtype=float)
    ok = np.isfinite(a) & np.isfinite(log_g)
    if not ok.any():
        return None
    n = np.exp(log_g[ok, None] + a[ok, None] * np.log(c))          # [R, C]
    tail = 50.0 * (1.0 - confidence)
    return np.percentile(n, [tail, 100.0 - tail], axis=0)


def _flops_range(kept: Points, result: dict, wide: bool = False) -> np.ndarray:
    """Budgets to draw over: the data's (wide: a decade below to two above, and the budget)."""
    lo, hi = kept.flops.min(), kept.flops.max()
    if wide:
        lo, hi = lo / 10, max(hi * 100, result.get("budget", {}).get("flops", 0) * 3)
    return np.geomspace(lo, hi, 200)


def _cmap(n: int) -> list:
    from matplotlib import colormaps
    return [colormaps["viridis"](x) for x in np.linspace(0, 0.9, max(n, 1))]
