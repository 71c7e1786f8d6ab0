"""Approaches 1 and 2: compute-optimal allocation from the lower envelope of loss against
FLOPs, and from IsoFLOP parabolas. Each regression runs for R weightings of the points at once
(row 0 is the data itself, rows 1.. bootstrap resamples as multinomial counts; numpy, float64).

Approach 1: the frontier (lower envelope) and log-log power laws through it.
Approach 2: IsoFLOP groups, a parabola of loss in ln N per group, power laws through the
groups' minima. Axis letters: R weightings, P points, G groups, n a group's points.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GROUP_RTOL = 0.05    # points whose FLOPs are within 5% of a group's smallest form one IsoFLOP group
MIN_SIZES = 3        # a parabola needs 3 distinct model sizes


def line_fit(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y = slope·x + intercept over the points each row keeps.

    x [P] or [R, P], y [P] or [R, P], mask [R, P] (0/1 or counts: point weights)
    -> (slope [R], intercept [R]); NaN where a row keeps fewer than 2 distinct x.
    """
    x, y, m = np.broadcast_arrays(x, y, mask.astype(np.float64))
    x, y = np.where(m > 0, x, 0.0), np.where(m > 0, y, 0.0)  # dropped entries may be NaN
    sw = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = (m * x).sum(axis=1) / sw, (m * y).sum(axis=1) / sw
        dx = x - mx[:, None]
        vx = (m * dx * dx).sum(axis=1)
        slope = (m * dx * (y - my[:, None])).sum(axis=1) / vx
        ok = vx > 1e-12 * np.maximum((m * x * x).sum(axis=1), 1e-300)
    return np.where(ok, slope, np.nan), np.where(ok, my - slope * mx, np.nan)


def frontier_mask(flops: np.ndarray, loss: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Which points lie on the lower envelope of loss against FLOPs: of each budget's points
    (``budget_levels``), the lowest-loss one, if no smaller budget has a lower loss. present
    [R, P] bool (the points each weighting keeps) -> [R, P] bool, in the original point order."""
    # One budget is one level: a sweep's runs at one budget differ in FLOPs by the rounding to
    # whole steps, and the cheapest of them must not become a frontier point on that alone.
    level = budget_levels(flops)
    order = np.lexsort((loss, level))                        # by budget, then loss
    lo = np.where(present[:, order], loss[order], np.inf)    # [R, P]
    best_before = np.concatenate([np.full((lo.shape[0], 1), np.inf),
                                  np.minimum.accumulate(lo, axis=1)[:, :-1]], axis=1)
    on_sorted = present[:, order] & (loss[order] < best_before)
    on = np.empty_like(on_sorted)
    on[:, order] = on_sorted
    return on


def approach1(params, tokens, loss, flops, weights) -> dict[str, np.ndarray]:
    """Power laws N = e^log_g·C^a, D ∝ C^b, L = e^log_l·C^s fitted (log-log least squares) to
    each weighting's frontier points, each counted once. weights [R, P] -> arrays [R] and
    "frontier" [P] bool (row 0's)."""
    on = frontier_mask(flops, loss, weights > 0)
    lc = np.log(flops)
    a, log_g = line_fit(lc, np.log(params), on)
    b, _ = line_fit(lc, np.log(tokens), on)
    s, log_l = line_fit(lc, np.log(loss), on)
    return {"a": a, "log_g": log_g, "b": b, "s": s, "log_l": log_l, "frontier": on[0]}


def budget_levels(flops: np.ndarray) -> np.ndarray:
    """Each point's budget, an index from 0 in order of FLOPs: a budget starts at the smallest
    unassigned FLOPs and takes every point within GROUP_RTOL of it (anchoring on the first
    point stops a chain of near neighbours becoming one budget). flops [P] -> [P] int."""
    level = np.empty(len(flops), dtype=np.int64)
    current, anchor = -1, -np.inf
    for i in np.argsort(flops, kind="stable"):
        if flops[i] > anchor * (1 + GROUP_RTOL):
            current, anchor = current + 1, flops[i]
        level[i] = current
    return level


def isoflop_groups(flops: np.ndarray, params: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(usable groups, ignored groups) as index arrays into the points, smallest FLOPs first:
    one group per budget (``budget_levels``), usable with at least MIN_SIZES distinct
    parameter counts."""
    level = budget_levels(flops)
    usable, ignored = [], []
    for g in range(level.max() + 1 if len(level) else 0):
        members = np.flatnonzero(level == g)
        (usable if len(np.unique(params[members])) >= MIN_SIZES else ignored).append(members)
    return usable, ignored


@dataclasses.dataclass(frozen=True)
class Parabolas:
    """Each group's parabola loss = c2·t² + c1·t + c0, t = ln N - center, and its minimum, for R
    weightings. Arrays [R, G] (center, flops: [G]); NaN where a weighting keeps fewer than 3
    sizes of a group or its parabola opens downwards (no minimum)."""

    center: np.ndarray   # [G] mean ln N of the group's points
    flops: np.ndarray    # [G] the group's budget C: geometric mean of its points' FLOPs
    coef: np.ndarray     # [R, G, 3] (c2, c1, c0)
    n_opt: np.ndarray    # [R, G] the minimum's N
    loss_min: np.ndarray  # [R, G] the minimum's loss


def group_parabolas(params, loss, flops, groups: list[np.ndarray], weights) -> Parabolas:
    """Weighted least-squares parabolas of loss in ln N per group; weights [R, P]."""
    centers, budgets, coefs = [], [], []
    for members in groups:
        t_all = np.log(params[members])
        center = float(t_all.mean())
        t, w = t_all - center, weights[:, members].astype(np.float64)       # [n], [R, n]
        design = np.stack([t * t, t, np.ones_like(t)], axis=1)               # [n, 3]
        gram = np.einsum("rn,ni,nj->rij", w, design, design)
        rhs = np.einsum("rn,ni,n->ri", w, design, loss[members])
        sizes = np.stack([(w[:, params[members] == p] > 0).any(axis=1) for p in np.unique(params[members])])
        ok = sizes.sum(axis=0) >= MIN_SIZES                                  # [R]
        gram = np.where(ok[:, None, None], gram, np.eye(3))
        coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
        coefs.append(np.where(ok[:, None], coef, np.nan))
        centers.append(center)
        budgets.append(float(np.exp(np.log(flops[members]).mean())))
    coef = np.stack(coefs, axis=1)                                           # [R, G, 3]
    c2, c1, c0 = coef[..., 0], coef[..., 1], coef[..., 2]
    center = np.asarray(centers)
    with np.errstate(all="ignore"):  # a nearly flat resampled parabola puts its minimum far away
        convex = c2 > 0
        t_min = np.where(convex, -c1 / (2 * c2), np.nan)
        loss_min = np.where(convex, c0 - c1 * c1 / (4 * c2), np.nan)
        n_opt = np.exp(center + t_min)
    return Parabolas(center, np.asarray(budgets), coef, n_opt, loss_min)


def approach2(parabolas: Parabolas, k: float) -> dict[str, np.ndarray]:
    """Power laws through the groups' minima: N_opt = e^log_g·C^a, D_opt = C/(k·N_opt) ∝ C^b,
    L_min = e^log_l·C^s. -> arrays [R] (NaN where fewer than 2 groups have a minimum)."""
    ok = np.isfinite(parabolas.n_opt) & np.isfinite(parabolas.loss_min) & (parabolas.loss_min > 0)
    lc = np.log(parabolas.flops)
    with np.errstate(invalid="ignore", divide="ignore"):
        ln_n = np.log(parabolas.n_opt)
        a, log_g = line_fit(lc, ln_n, ok)
        b, _ = line_fit(lc, lc - np.log(k) - ln_n, ok)
        s, log_l = line_fit(lc, np.log(parabolas.loss_min), ok)
    return {"a": a, "log_g": log_g, "b": b, "s": s, "log_l": log_l}
