"""Many box-and-budget mean-variance problems at once: a batched primal-dual active set in JAX, certified by KKT.

Problems (B of them, each with its own N ≤ ``MAX_BATCH_ASSETS``): minimise ½ wᵀΣw − λ μᵀw subject to 1ᵀw = 1 and
l ≤ w ≤ u, with λ fixed (``MIN_VOLATILITY``: λ = 0; ``QUADRATIC_UTILITY``: λ = 1/δ) or the tangency λ of the
maximum Sharpe ratio (``MAX_SHARPE``: λ = wᵀΣw / (μ − r_f)ᵀw at the optimum). This is the single-problem method of
``_active_set`` (Hungerländer & Rendl's primal-dual active set on the critical lines of Markowitz's critical line
algorithm), run for a whole group in one ``jax.jit``-compiled ``lax.while_loop`` vectorised over the problems
(``jax.vmap``): each iteration solves every problem's partition at once, with the names fixed at a bound replaced
by identity rows so that one padded N × N solve per problem serves any free set. Problems are padded to a bucket
size (``_risk_budgeting.bucket_size``) with independent dummy names pinned at zero, so XLA compiles one executable
per (bucket, batch size), not per problem.

Every answer is then checked in NumPy, in float64, against the KKT conditions of its QP (primal bounds and budget,
stationarity on the free names, multipliers of the right sign at the bounds, to the tolerances of
``_active_set``); an answer that fails, or a problem whose iteration did not settle, is reported as not certified
and the caller solves it with the single-problem path. A certified answer is the exact optimum (the partition's
linear system solved in float64), so it equals the single path's to rounding.

Why one module: the padding, the batched iteration and the batched certificate share one representation of a
group of problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
from numpy.typing import NDArray

from services.optimization._risk_budgeting import bucket_size
from services.types import FloatArray

__all__ = ["MAX_BATCH_ASSETS", "BatchKind", "BatchSolution", "solve_batch"]

MAX_BATCH_ASSETS: Final = 256
"""Largest N solved in a batch; larger problems go through the single-problem path."""
MAX_ITERATIONS: Final = 12
"""Active-set iterations before a problem that has not settled is left to the single path."""
_TIE: Final = 1e-14
_KKT_TOL: Final = 1e-9
"""Relative tolerance of the certificate (on the gradient scale and on the bounds)."""


class BatchKind(StrEnum):
    """The λ rule of a batch."""

    FIXED_LAMBDA = "FIXED_LAMBDA"
    """λ given per problem: 0 for minimum volatility, 1/δ for quadratic utility."""
    TANGENCY = "TANGENCY"
    """The maximum Sharpe ratio at the risk-free rate of each problem."""


@dataclass(frozen=True, slots=True)
class BatchSolution:
    """The answers of a batch, in input order.

    Attributes
    ----------
    weights : list of ndarray of shape (N_k,)
        Each problem's weights (fractions); meaningful where ``certified``.
    lam : ndarray of shape (B,)
        λ at the answer (the tangency λ for ``TANGENCY``).
    certified : ndarray of shape (B,) of bool
        Whether the answer passed the KKT certificate (else: solve it with the single path).
    iterations : ndarray of shape (B,)
        Active-set iterations each problem took.
    """

    weights: list[FloatArray]
    lam: FloatArray
    certified: NDArray[np.bool_]
    iterations: NDArray[np.int64]


def _line(sigma: Any, mu: Any, lower: Any, upper: Any, state: Any) -> tuple[Any, ...]:
    """The critical line w = a + λ b of one partition (−1 lower, +1 upper, 0 free) and its multipliers g0 + λ g1."""
    free = state == 0
    fixed = jnp.where(state < 0, lower, jnp.where(state > 0, upper, 0.0))
    both = free[:, None] & free[None, :]
    matrix = jnp.where(both, sigma, jnp.eye(sigma.shape[0], dtype=sigma.dtype))
    sigma_fixed = sigma @ fixed
    rhs = jnp.stack((jnp.where(free, mu, 0.0), free.astype(sigma.dtype), jnp.where(free, sigma_fixed, 0.0)), axis=1)
    # Σ_FF ⊕ I is symmetric positive definite: one Cholesky (half an LU's flops).
    solved = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(matrix, lower=True), rhs)
    p, q, s = (jnp.where(free, solved[:, k], 0.0) for k in range(3))
    sum_q = q.sum()
    nu1 = p.sum() / sum_q
    nu0 = -(s.sum() + 1.0 - fixed.sum()) / sum_q
    a = jnp.where(free, -s - nu0 * q, fixed)
    b = jnp.where(free, p - nu1 * q, 0.0)
    sigma_a = sigma @ a
    sigma_b = sigma @ b
    g0 = jnp.where(free, 0.0, sigma_a + nu0)
    g1 = jnp.where(free, 0.0, sigma_b - mu + nu1)
    return a, b, g0, g1, sigma_a, sum_q


def _solve_one(
    sigma: Any, mu: Any, lower: Any, upper: Any, lam_given: Any, excess: Any, tangency: bool
) -> tuple[Any, Any, Any, Any]:
    """The batched iteration for one problem (vmapped): the final state's weights, λ, settled flag, iterations."""
    pinned = upper - lower <= 0.0
    diag = jnp.diag(sigma)
    diag_max = diag.max()
    coupling = diag.mean()
    mu_max = jnp.abs(mu).max()
    state0 = jnp.where(pinned, -1, 0).astype(jnp.int8)

    # A first λ of the right scale (λμ ~ Σw) for lines whose Sharpe ratio rises without end.
    lam_scale = coupling / jnp.maximum(jnp.abs(excess).max(), 1e-12)

    def evaluate(state: Any, previous: Any) -> tuple[Any, Any, Any, Any, Any]:
        a, b, g0, g1, sigma_a, sum_q = _line(sigma, mu, lower, upper, state)
        if tangency:
            denominator = excess @ a - 2.0 * (a @ (sigma @ b))
            tangent = (a @ sigma_a) / denominator
            on_line = (denominator > 0.0) & (a @ sigma_a > 0.0) & jnp.isfinite(tangent)
            # No tangency on this line: move λ up (doubling) and let the partition follow, as the single path's
            # bracketed search does while the bracket is open above.
            lam = jnp.where(on_line, tangent, jnp.where(previous > 0.0, 2.0 * previous, lam_scale))
        else:
            lam = lam_given
            on_line = jnp.array(True)
        usable = (sum_q > 0.0) & jnp.any(state == 0)
        w = a + lam * b
        g = g0 + lam * g1
        return w, g, lam, usable & jnp.all(jnp.isfinite(w)), on_line

    def next_state(w: Any, g: Any, lam: Any) -> Any:
        slack = _TIE * (diag_max * jnp.abs(w).sum() + jnp.abs(lam) * mu_max)
        to_lower = g - coupling * (w - lower)
        to_upper = coupling * (w - upper) - g
        state = jnp.where(to_upper > slack, 1, 0)
        state = jnp.where(to_lower > slack, -1, state)
        state = jnp.where(pinned, -1, state)
        # The budget needs a free name: if all would be fixed, the one nearest to staying free on the side of the
        # budget's excess (an upper bound if the fixed weights sum above 1) stays free (as ``_active_set``).
        excess_sum = jnp.where(state > 0, upper, lower).sum() - 1.0
        side = jnp.where(excess_sum > 0.0, state > 0, (state < 0) & ~pinned)
        margin = jnp.where(side, jnp.where(state > 0, to_upper, to_lower), jnp.inf)
        fallback = jnp.where(pinned, jnp.inf, jnp.maximum(to_lower, to_upper))
        margin = jnp.where(jnp.isfinite(margin).any(), margin, fallback)
        keep = jnp.argmin(margin)
        all_fixed = ~jnp.any(state == 0)
        state = jnp.where(all_fixed & (jnp.arange(state.shape[0]) == keep), 0, state)
        return state.astype(jnp.int8)

    def condition(carry: tuple[Any, ...]) -> Any:
        _, _, _, _, settled, failed, iteration = carry
        return (~settled) & (~failed) & (iteration < MAX_ITERATIONS)

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        state, _, previous, _, _, _, iteration = carry
        w, g, lam, usable, on_line = evaluate(state, previous)
        new = next_state(w, g, lam)
        settled = usable & on_line & jnp.all(new == state)
        return new, w, lam, g, settled, ~usable, iteration + 1

    zeros = jnp.zeros_like(mu)
    init = (state0, zeros, jnp.asarray(0.0, mu.dtype), zeros, jnp.array(False), jnp.array(False), 0)
    _, w, lam, _, settled, _, iterations = jax.lax.while_loop(condition, body, init)
    return w, lam, settled, iterations


_batched = jax.jit(
    jax.vmap(_solve_one, in_axes=(0, 0, 0, 0, 0, 0, None)),
    static_argnums=(6,),
)


def _certify(
    sigma: FloatArray, mu: FloatArray, lower: FloatArray, upper: FloatArray, w: FloatArray, lam: FloatArray
) -> NDArray[np.bool_]:
    """KKT of min ½wᵀΣw − λμᵀw, 1ᵀw = 1, l ≤ w ≤ u, for every problem of a padded batch (B, N)."""
    gradient = np.einsum("bij,bj->bi", sigma, w) - lam[:, None] * mu
    scale = np.max(np.abs(np.diagonal(sigma, axis1=1, axis2=2)), axis=1) * np.abs(w).sum(axis=1) + np.abs(lam) * np.abs(
        mu
    ).max(axis=1)
    tol = _KKT_TOL * np.maximum(scale, 1e-300)
    bound_tol = _KKT_TOL * np.maximum(1.0, np.maximum(np.abs(lower), np.abs(upper)))
    pinned = upper - lower <= 0.0
    at_lower = (w - lower <= bound_tol) & ~pinned
    at_upper = (upper - w <= bound_tol) & ~pinned
    free = ~(at_lower | at_upper | pinned)
    count = free.sum(axis=1)
    # ν from the free names (their gradient + ν = 0); with none free, the middle of the ν the bounds admit
    # (−g_i ≤ ν at a lower bound, ν ≤ −g_i at an upper one), whose emptiness the sign checks below reveal.
    low = np.max(np.where(at_lower, -gradient, -np.inf), axis=1)
    high = np.min(np.where(at_upper, -gradient, np.inf), axis=1)
    with np.errstate(invalid="ignore"):
        middle = np.where(
            np.isfinite(low) & np.isfinite(high), 0.5 * (low + high), np.where(np.isfinite(low), low, high)
        )
    nu = np.where(count > 0, -(gradient * free).sum(axis=1) / np.maximum(count, 1), middle)
    g = gradient + nu[:, None]
    stationary = np.all(np.where(free, np.abs(g) <= tol[:, None], True), axis=1)
    signs = np.all(np.where(at_lower, g >= -tol[:, None], True) & np.where(at_upper, g <= tol[:, None], True), axis=1)
    inside = np.all((w >= lower - bound_tol) & (w <= upper + bound_tol), axis=1)
    budget = np.abs(w.sum(axis=1) - 1.0) <= _KKT_TOL * np.maximum(1.0, np.abs(w).sum(axis=1))
    certified: NDArray[np.bool_] = (
        stationary & signs & inside & budget & np.isfinite(nu) & np.all(np.isfinite(w), axis=1)
    )
    return certified


def solve_batch(
    covariances: list[FloatArray],
    expected_returns: list[FloatArray],
    lowers: list[FloatArray],
    uppers: list[FloatArray],
    *,
    kind: BatchKind,
    lam: FloatArray | None = None,
    risk_free_rates: FloatArray | None = None,
) -> BatchSolution:
    """Solve a group of box-and-budget problems at once (module docstring); certify each answer.

    Parameters
    ----------
    covariances : list of ndarray of shape (N_k, N_k)
        Σ of each problem (symmetric positive definite, annualised); N_k ≤ ``MAX_BATCH_ASSETS``.
    expected_returns : list of ndarray of shape (N_k,)
        μ (annualised, decimal).
    lowers, uppers : list of ndarray of shape (N_k,)
        Weight bounds with l ≤ u and Σl ≤ 1 ≤ Σu.
    kind : BatchKind
        ``FIXED_LAMBDA`` (give ``lam``) or ``TANGENCY`` (give ``risk_free_rates``).
    lam : ndarray of shape (B,), optional
        λ of each problem (0: minimum volatility; 1/δ: quadratic utility with risk aversion δ).
    risk_free_rates : ndarray of shape (B,), optional
        r_f of each problem (annualised, decimal); default 0.

    Returns
    -------
    BatchSolution
        Weights, λ, certificate and iterations per problem; uncertified ones are to be solved singly.

    Raises
    ------
    ValueError
        Mismatched lengths, N_k above ``MAX_BATCH_ASSETS``, or ``FIXED_LAMBDA`` without ``lam``.

    References
    ----------
    P. Hungerländer and F. Rendl, "A feasible active set method for strictly convex quadratic problems with simple
    bounds", SIAM J. Optim. 25(3), 2015; H. Markowitz, "The optimization of a quadratic function subject to linear
    constraints", Naval Research Logistics Quarterly 3, 1956.
    """
    count = len(covariances)
    if not (len(expected_returns) == len(lowers) == len(uppers) == count):
        raise ValueError("one covariance, expected returns and bounds per problem")
    if kind is BatchKind.FIXED_LAMBDA and lam is None:
        raise ValueError("FIXED_LAMBDA needs lam")
    sizes = [c.shape[0] for c in covariances]
    if count and max(sizes) > MAX_BATCH_ASSETS:
        raise ValueError(f"at most {MAX_BATCH_ASSETS} assets per batched problem")
    lam_given = np.zeros(count) if lam is None else np.asarray(lam, dtype=np.float64)
    rates = np.zeros(count) if risk_free_rates is None else np.asarray(risk_free_rates, dtype=np.float64)
    weights: list[FloatArray] = [np.empty(0)] * count
    lam_out = np.zeros(count)
    certified = np.zeros(count, dtype=bool)
    iterations = np.zeros(count, dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for k, n in enumerate(sizes):
        groups.setdefault(bucket_size(n), []).append(k)
    for size, members in groups.items():
        b = len(members)
        # The group count is padded too (to a power of two, at least 8) with a well-posed dummy problem (Σ = I,
        # μ = 1, weights in [0, 1]; it settles at once), so a server sees few distinct shapes to compile.
        padded = max(8, 1 << (b - 1).bit_length())
        sigma = np.tile(np.eye(size), (padded, 1, 1))
        mu = np.ones((padded, size))
        lower = np.zeros((padded, size))
        upper = np.ones((padded, size))
        for row, k in enumerate(members):
            n = sizes[k]
            c = np.asarray(covariances[k], dtype=np.float64)
            sigma[row, :n, :n] = c
            if size > n:  # independent dummies pinned at 0 (l = u = 0, μ = 0), on Σ's scale
                sigma[row, n:, n:] = np.eye(size - n) * float(np.max(np.diag(c)))
            mu[row, :n] = expected_returns[k]
            mu[row, n:] = 0.0
            lower[row, :n] = lowers[k]
            upper[row, :n] = uppers[k]
            upper[row, n:] = 0.0
        excess = mu.copy()
        lengths = np.array([sizes[k] for k in members])
        excess[:b] = np.where(np.arange(size)[None, :] < lengths[:, None], mu[:b] - rates[members][:, None], 0.0)
        lam_padded = np.zeros(padded)
        lam_padded[:b] = lam_given[members]
        with jax.enable_x64(True):
            w, lam_b, settled, its = _batched(sigma, mu, lower, upper, lam_padded, excess, kind is BatchKind.TANGENCY)
            w, lam_b, settled, its = (np.asarray(x) for x in (w, lam_b, settled, its))
        ok = settled & _certify(sigma, mu, lower, upper, w, lam_b)
        if kind is BatchKind.TANGENCY:  # λ is the tangency: λ (μ − r_f)ᵀw = wᵀΣw
            gain = np.einsum("bi,bi->b", excess, w)
            variance = np.einsum("bi,bij,bj->b", w, sigma, w)
            ok &= (gain > 0.0) & (np.abs(lam_b * gain - variance) <= 1e-9 * variance)
        for row, k in enumerate(members):
            weights[k] = w[row, : sizes[k]].copy()
            lam_out[k] = lam_b[row]
            certified[k] = bool(ok[row])
            iterations[k] = int(its[row])
    return BatchSolution(weights=weights, lam=lam_out, certified=certified, iterations=iterations)
