"""Approach 3: the parametric law L(N, D) = E + A/N^alpha + B/D^beta, fitted to many weightings
of the same points (the full data and every bootstrap resample) in one batched computation.

The objective is Chinchilla's: the Huber loss (delta = 1e-3) of log(predicted) - log(observed),
summed over points, with the law written as log L = LSE(a - alpha·log N, b - beta·log D, e)
(A = e^a, B = e^b, E = e^e), so A, B, E stay positive without constraints. A weight vector
w [P] (multinomial counts for a resample, ones for the data itself) multiplies each point's term.

How one weighting is fitted, and why:
  1. Start: variable projection on a grid of (alpha, beta). For fixed exponents the law is
     linear in (E, A, B), so non-negative least squares of relative errors (exact, by trying
     the 7 supports of 3 unknowns) gives the best constants; the grid point with the lowest
     true Huber objective starts step 2. A grid cannot be fooled by a bad initial guess.
  2. Refine: Levenberg-Marquardt on the true objective, with IRLS weights min(1, delta/|r|)
     (the quadratic that majorises the Huber loss at the current residuals) and a step kept
     only if it lowers the objective, so every accepted step descends. With delta = 1e-3
     most residuals lie on Huber's linear part, where plain Newton has no curvature to use.
log N and log D are centred on the data's means, which decorrelates a from alpha (and b from
beta) and keeps the 5x5 systems well conditioned. Everything runs in float64 (inside
``jax.enable_x64``, never changed globally): the objective differences that decide a step
are ~1e-9 of its value.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

HUBER_DELTA = 1e-3
GRID = np.linspace(0.05, 1.5, 21)  # alpha and beta starting values (real LMs: ~0.1-0.8)
STEPS = 120                        # LM steps: the objective stops moving (<1e-12 rel.) by ~60
BATCH = 64                         # weightings fitted side by side (bounds the grid's memory)
POINT_BUCKET = 16                  # tables are padded to a multiple of this many points
_SUPPORTS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], float)


@dataclasses.dataclass(frozen=True)
class LawFits:
    """The law fitted to R weightings: every field float64 [R]."""

    E: np.ndarray
    A: np.ndarray
    B: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    objective: np.ndarray  # summed Huber loss at the fit, under that row's weights


def fit_law(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray, weights: np.ndarray) -> LawFits:
    """Fit the law once per row of ``weights`` [R, P] to points N, D, L [P] (float64)."""
    x, y = np.log(params), np.log(tokens)
    x0, y0 = float(x.mean()), float(y.mean())
    # Pad P to a multiple of POINT_BUCKET (copies of point 0 at weight 0) and R to a multiple
    # of BATCH (rows of ones, discarded): tables of similar size then share one compiled
    # program, and lax.map compiles no separate remainder batch.
    n_rows, n_pts = weights.shape
    pad_p, pad_r = -n_pts % POINT_BUCKET, -n_rows % BATCH
    idx = np.concatenate([np.arange(n_pts), np.zeros(pad_p, np.int64)])
    w = np.pad(np.asarray(weights, np.float64), ((0, 0), (0, pad_p)))
    w = np.vstack([w, np.ones((pad_r, n_pts + pad_p))])
    with jax.enable_x64(True):
        theta, objective = _fit_batch(jnp.asarray(x[idx] - x0), jnp.asarray(y[idx] - y0),
                                      jnp.asarray(loss[idx], jnp.float64), jnp.asarray(w))
        theta, objective = np.asarray(theta)[:n_rows], np.asarray(objective)[:n_rows]
    e, a_c, b_c, alpha, beta = theta.T
    with np.errstate(over="ignore"):  # a diverged resample reads as inf, reported as failed later
        return LawFits(np.exp(e), np.exp(a_c + alpha * x0), np.exp(b_c + beta * y0), alpha, beta, objective)


def law_loss(law: dict, params, tokens):
    """L(N, D) of a law (a mapping with E, A, B, alpha, beta; arrays broadcast)."""
    return law["E"] + law["A"] / np.power(params, law["alpha"]) + law["B"] / np.power(tokens, law["beta"])


def optimal_allocation(law: dict, flops, k: float):
    """Compute-optimal (N*, D*) at budgets C under C = k·N·D: N* = G·(C/k)^a, D* = (C/k)/N*,
    G = (alpha·A / (beta·B))^(1/(alpha+beta)), a = beta/(alpha+beta). Arrays broadcast."""
    alpha, beta = law["alpha"], law["beta"]
    g = np.power(alpha * law["A"] / (beta * law["B"]), 1.0 / (alpha + beta))
    nd = np.asarray(flops) / k
    n = g * np.power(nd, beta / (alpha + beta))
    return n, nd / n


def huber(r, delta: float = HUBER_DELTA):
    """Huber loss of residuals (jnp or np arrays): r²/2 inside ±delta, delta·(|r| - delta/2) out."""
    m = jnp if isinstance(r, jax.Array) else np
    ar = m.abs(r)
    return m.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


@jax.jit
def _fit_batch(xc, yc, loss, weights):
    """xc, yc, loss [P], weights [R, P] -> (theta [R, 5] = (e, a_c, b_c, alpha, beta), objective [R]).
    a_c = a - alpha·mean(log N), b_c = b - beta·mean(log D) (the centred parametrisation)."""
    ea, eb = jnp.meshgrid(jnp.asarray(GRID), jnp.asarray(GRID), indexing="ij")
    exps = jnp.stack([ea.ravel(), eb.ravel()], axis=1)                                   # [G, 2]
    feats = jnp.stack([jnp.ones((exps.shape[0], xc.shape[0])), jnp.exp(-exps[:, :1] * xc),
                       jnp.exp(-exps[:, 1:] * yc)], axis=-1)                              # [G, P, 3]

    def one(w):
        theta0 = _grid_start(w, feats, exps, loss)
        return _refine(theta0, w, xc, yc, jnp.log(loss))
    return jax.lax.map(one, weights, batch_size=BATCH)


def _grid_start(w, feats, exps, loss):
    """Best grid point for weights w [P]: per (alpha, beta) [G, 2], NNLS of E, A, B on relative
    errors (features [G, P, 3] = 1, e^(-alpha·x), e^(-beta·y)), ranked by the true objective."""
    q = w / loss**2                                                     # relative errors ~ log errors
    gram = jnp.einsum("p,gpi,gpj->gij", q, feats, feats)                # [G, 3, 3]
    rhs = jnp.einsum("p,gpi->gi", q * loss, feats)                      # [G, 3]
    coef = jax.vmap(_nnls3)(gram, rhs)                                  # [G, 3] = E, A_c, B_c >= 0
    coef = jnp.maximum(coef, 1e-6 * jnp.mean(loss))                     # a log must exist
    pred = jnp.einsum("gpi,gi->gp", feats, coef)
    obj = jnp.sum(w * huber(jnp.log(pred) - jnp.log(loss)), axis=1)     # [G]
    obj = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj)
    return jnp.concatenate([jnp.log(coef[best]), exps[best]])


def _nnls3(gram, rhs):
    """argmin_{c >= 0} c·gram·c - 2 c·rhs for 3 unknowns: the best feasible of the 7 supports'
    unconstrained solutions is the constrained optimum (the optimum solves its own support)."""
    ridge = 1e-12 * jnp.trace(gram)

    def on(m):
        mat = gram * jnp.outer(m, m) + jnp.diag(1.0 - m) + ridge * jnp.eye(3)
        c = _solve3(mat, rhs * m) * m
        ok = jnp.all(c >= 0) & jnp.all(jnp.isfinite(c))
        return c, jnp.where(ok, c @ gram @ c - 2 * c @ rhs, jnp.inf)
    cs, sse = jax.vmap(on)(jnp.asarray(_SUPPORTS))
    return cs[jnp.argmin(sse)]


def _solve3(mat, rhs):
    """mat [3, 3] x = rhs [3] by Cramer's rule: elementwise, so ~10x faster than a batched LU
    of tiny systems on CPU (the grid solves 7 per grid point per weighting)."""
    c0, c1, c2 = mat[:, 0], mat[:, 1], mat[:, 2]
    cof = jnp.stack([jnp.cross(c1, c2), jnp.cross(c2, c0), jnp.cross(c0, c1)])   # rows: adj(mat)
    return cof @ rhs / jnp.dot(c0, cof[0])


def _residuals(theta, xc, yc, log_loss):
    """(log-residuals r [P], Jacobian dr/dtheta [P, 5]) of theta = (e, a_c, b_c, alpha, beta)."""
    e, a_c, b_c, alpha, beta = theta
    terms = jnp.stack([jnp.broadcast_to(e, xc.shape), a_c - alpha * xc, b_c - beta * yc], axis=1)  # [P, 3]
    lse = jax.nn.logsumexp(terms, axis=1)
    s = jnp.exp(terms - lse[:, None])                                    # each term's share of L
    jac = jnp.stack([s[:, 0], s[:, 1], s[:, 2], -s[:, 1] * xc, -s[:, 2] * yc], axis=1)
    return lse - log_loss, jac


@functools.partial(jax.jit, static_argnames=("steps",))
def _refine(theta, w, xc, yc, log_loss, steps: int = STEPS):
    """Levenberg-Marquardt with IRLS weights on sum_p w_p·huber(r_p), from theta [5].
    -> (theta [5], objective)."""
    def objective(t):
        f = jnp.sum(w * huber(_residuals(t, xc, yc, log_loss)[0]))
        return jnp.where(jnp.isfinite(f), f, jnp.inf)

    def step(carry, _):
        t, f, lam = carry
        r, jac = _residuals(t, xc, yc, log_loss)
        irls = w * jnp.minimum(1.0, HUBER_DELTA / jnp.maximum(jnp.abs(r), 1e-300))
        hess = jac.T @ (irls[:, None] * jac)                             # [5, 5] majoriser's curvature
        grad = jac.T @ (w * jnp.clip(r, -HUBER_DELTA, HUBER_DELTA))      # the true gradient
        diag = jnp.maximum(jnp.diag(hess), 1e-9 * jnp.max(jnp.diag(hess)) + 1e-300)
        trial = t - jnp.linalg.solve(hess + lam * jnp.diag(diag), grad)
        ft = objective(trial)
        ok = ft < f
        lam = jnp.clip(jnp.where(ok, lam * 0.3, lam * 4.0), 1e-12, 1e12)
        return (jnp.where(ok, trial, t), jnp.where(ok, ft, f), lam), None

    (theta, f, _), _ = jax.lax.scan(step, (theta, objective(theta), jnp.asarray(1e-3, theta.dtype)),
                                    None, length=steps)
    return theta, f
