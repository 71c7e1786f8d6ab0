"""Synthetic IsoFLOP results from a known law, for tests, benchmarks and trying the fit out."""

from __future__ import annotations

import numpy as np

from arlm_jax.scaling.law import optimal_allocation
from arlm_jax.scaling.points import Points, points_from_arrays

# Hoffmann et al. 2022's approach-3 fit (their eq. 10): E, A, B, alpha, beta.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def isoflop_points(budgets, sizes: int = 9, spread: float = 8.0, sigma: float = 0.01, seed: int = 0,
                   law: dict = CHINCHILLA) -> Points:
    """An IsoFLOP sweep: per budget C [G], ``sizes`` models log-spaced from N*/spread to
    N*·spread around the law's compute-optimal N*, each trained on D = C/(6N) tokens; losses
    are the law's times exp(sigma·standard normal). -> Points [G·sizes], flops column absent."""
    budgets = np.asarray(budgets, dtype=np.float64)
    n_opt, _ = optimal_allocation(law, budgets, 6.0)                                  # [G]
    params = (n_opt[:, None] * np.geomspace(1 / spread, spread, sizes)[None, :]).ravel()
    tokens = np.repeat(budgets, sizes) / (6.0 * params)
    loss = law["E"] + law["A"] / params ** law["alpha"] + law["B"] / tokens ** law["beta"]
    noise = np.random.default_rng(seed).standard_normal(loss.shape)
    return points_from_arrays(params, tokens, loss * np.exp(sigma * noise))
