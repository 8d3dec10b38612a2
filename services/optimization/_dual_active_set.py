"""Mean-variance with linear constraints at small N: DAQP's dual active set on the dense program.

Scope
-----
Min volatility, quadratic utility and max Sharpe under the linear families of ``_clarabel_direct`` (the budget or
net exposure bounds, finite per-name bounds, group limits of any classification scheme, a minimum expected
return) at N ≤ ``MAX_ASSETS``; max Sharpe only under the plain budget 1ᵀw = 1 (see the program below). Max return
(an LP: no positive definite Hessian) and everything else go to the next backend, ``CLARABEL_DIRECT``.

Why
---
At N = 20 Clarabel on the assembled matrices takes about 0.2 ms, and building those sparse matrices and checking
the answer as much again (``benchmarks/mean_variance_direct.py``). An active-set method solves such a small, dense
QP exactly (the answer of a linear system on the active constraints, not the end of an interior-point path) in
tens of microseconds. DAQP (Arnström, Bemporad & Axehill, 2022, "A dual active-set solver for embedded quadratic
programming using recursive LDLᵀ updates", IEEE Transactions on Automatic Control 67(8); MIT licence, the
``daqp`` package on PyPI, also behind ``qpsolvers``) takes the dense Hessian, simple bounds and two-sided rows as
they are, so nothing sparse is built. It is used up to ``MAX_ASSETS`` names, where it was measured faster than
Clarabel alone on the same problem (``benchmarks/mean_variance_direct.py`` prints both). Because its answers are
certified (below), ``optimize_mean_variance`` asks it before the pre-checks, which only name the constraints of an
infeasible problem and run when it declines (``_dispatch._certified_first_applies``).

The program
-----------
DAQP solves  minimise ½xᵀHx + fᵀx  subject to  l ≤ x ≤ u (simple bounds), lower ≤ Ax ≤ upper (rows), some rows
equalities. With w the weights (N,), Σ the covariance (N, N) and μ the expected returns (N,):

- min volatility: x = w, H = 2Σ, f = 0; quadratic utility (maximise μᵀw − δ/2 wᵀΣw): H = δΣ, f = −μ (μ − r_f
  with net exposure bounds, as ``_clarabel_direct``); the simple bounds are the per-name bounds, the rows those of
  the linear families (``Constraint.rows``: budget, net exposure, group minima and maxima, min_return).
- max Sharpe: the homogenised program of Cornuejols & Tütüncü (2007, §8.2) with κ = 1ᵀy eliminated (the budget
  1ᵀw = 1 is 1ᵀy = κ), so that H = 2Σ on y alone stays positive definite: minimise yᵀΣy subject to
  (μ − r_f)ᵀy = 1, y_i − l_i·1ᵀy ≥ 0 and y_i − u_i·1ᵀy ≤ 0 (rows; y_i ≥ 0 a simple bound where l_i = 0),
  (a − low·1)ᵀy ≥ 0 and (a − high·1)ᵀy ≤ 0 for each family row low ≤ aᵀw ≤ high, 1ᵀy ≥ 0; then w = y / 1ᵀy.

Certificate
-----------
An answer is taken only when DAQP reports it optimal and the KKT conditions of the program hold at it with DAQP's
multipliers λ (``kkt_holds``): stationarity Hx + f + [I; A]ᵀλ = 0, primal feasibility, λ_j > 0 only on a row or
bound at its upper side and λ_j < 0 only at its lower side. For a convex QP these make the answer the global
optimum. Otherwise (DAQP's exit flag, an infeasible program, the time limit) the backend returns None and
``CLARABEL_DIRECT`` solves the problem, proves infeasibility or reports the time limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import daqp
import numpy as np
from numpy.typing import NDArray

from services.optimization._clarabel_direct import supports as linear_supports
from services.optimization._constraints import Bounds, Budget
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult
from services.optimization._solver import remaining_time
from services.types import FloatArray

SOLVER = "DAQP"
SOLVE_PATH = "DUAL_ACTIVE_SET"
"""``OptimizationResult.solve_path`` of an answer of this module (``solver`` is ``DAQP``)."""
MAX_ASSETS = 256
"""Most names this backend takes. DAQP alone against Clarabel alone on ``benchmarks.mean_variance_direct``'s problems
(min volatility / max Sharpe, three group limits, min_return): 7.9× / 5.7× faster at N = 100, 3.6× / 2.5× at 300,
2.0× / 1.9× at 500 (one machine, 2026-12-06). Kept well below the crossover: an active set's iterations grow with
the constraints that bind, and a declined problem pays DAQP's time before Clarabel's."""
ELIGIBLE_OBJECTIVES = frozenset({Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY, Objective.MAX_SHARPE})
PRIMAL_TOL = 1e-10
"""DAQP's ``primal_tol``: how far a constraint may be violated before it enters the active set (absolute, in the
units of its row: weights, or annualised return for min_return)."""
KKT_RTOL = 1e-8
"""Tolerance of ``kkt_holds``, relative to the scale of the program's terms."""
_EQUALITY = 5
"""DAQP's ``sense`` of an equality row (active and immutable)."""


@dataclass(frozen=True, slots=True)
class DenseProgram:
    """One problem in DAQP's form: minimise ½xᵀHx + fᵀx s.t. lower ≤ [x; Ax] ≤ upper.

    Attributes
    ----------
    H : ndarray of shape (n, n)
        The Hessian (positive definite; n = N).
    f : ndarray of shape (n,)
        Linear cost.
    A : ndarray of shape (m, n)
        The rows.
    upper, lower : ndarray of shape (n + m,)
        The simple bounds of x, then the rows' sides (±inf where open).
    sense : ndarray of int32, shape (n + m,)
        DAQP's constraint types: 0 inequality, 5 equality.
    homogenised : bool
        Whether x = y of the max Sharpe program (w = y / 1ᵀy).
    """

    H: FloatArray
    f: FloatArray
    A: FloatArray
    upper: FloatArray
    lower: FloatArray
    sense: NDArray[np.intc]
    homogenised: bool


def supports(model: ProblemModel) -> bool:
    """Whether this backend covers ``model``.

    ``_clarabel_direct.supports`` (linear families, finite data), one of ``ELIGIBLE_OBJECTIVES``, at most
    ``MAX_ASSETS`` names, and no net exposure bounds for max Sharpe.
    """
    if model.objective not in ELIGIBLE_OBJECTIVES or model.n_assets > MAX_ASSETS:
        return False
    if model.objective is Objective.MAX_SHARPE and model.has_net_exposure:
        return False
    return linear_supports(model)


def build_program(model: ProblemModel) -> DenseProgram:
    """DAQP's dense program of a supported model (see the module docstring).

    Parameters
    ----------
    model : ProblemModel
        A supported model (``supports``) over N strategies, with validated moments.

    Returns
    -------
    DenseProgram
        n = N variables; for max Sharpe the rows of the homogenised program with κ = 1ᵀy eliminated.
    """
    n = model.n_assets
    sigma = model.covariance
    sharpe = model.objective is Objective.MAX_SHARPE
    skipped = (Bounds, Budget) if sharpe else (Bounds,)  # max Sharpe: the budget is κ = 1ᵀy itself
    dense = [rows for family in model.constraints if not isinstance(family, skipped) if (rows := family.rows(model))]
    matrix = np.vstack([rows.matrix for rows in dense]) if dense else np.empty((0, n))
    low = np.concatenate([rows.lower for rows in dense]) if dense else np.empty(0)
    high = np.concatenate([rows.upper for rows in dense]) if dense else np.empty(0)
    lower_w, upper_w = model.lower, model.upper
    if sharpe:
        rows_a, rows_low, rows_high = _homogenised_rows(model.excess_returns, matrix, low, high, lower_w, upper_w)
        simple_low = np.where(lower_w >= 0.0, 0.0, -np.inf)
        simple_high = np.full(n, np.inf)
        H = 2.0 * sigma
        f = np.zeros(n)
    else:
        rows_a, rows_low, rows_high = matrix, low, high
        simple_low, simple_high = lower_w, upper_w
        if model.objective is Objective.MIN_VOLATILITY:
            H, f = 2.0 * sigma, np.zeros(n)
        else:
            H = float(model.problem.risk_aversion) * sigma
            f = -(model.excess_returns if model.has_net_exposure else model.expected_returns)
    lower = np.concatenate((simple_low, rows_low))
    upper = np.concatenate((simple_high, rows_high))
    sense = np.zeros(lower.size, dtype=np.intc)
    sense[lower == upper] = _EQUALITY
    return DenseProgram(
        H=np.ascontiguousarray(H),
        f=np.ascontiguousarray(f, dtype=np.float64),
        A=np.ascontiguousarray(rows_a, dtype=np.float64),
        upper=upper,
        lower=lower,
        sense=sense,
        homogenised=sharpe,
    )


def _homogenised_rows(
    excess: FloatArray, matrix: FloatArray, low: FloatArray, high: FloatArray, lower_w: FloatArray, upper_w: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The rows of the max Sharpe program in y (κ = 1ᵀy eliminated) and their two sides.

    ``low·κ ≤ aᵀy ≤ high·κ`` becomes ``(a − low·1)ᵀy ≥ 0`` and ``(a − high·1)ᵀy ≤ 0`` (one row ``= 0`` where
    ``low = high``); the per-name bounds ``l_i·κ ≤ y_i ≤ u_i·κ`` likewise (finite: ``supports``). Only the rows
    that bind anything are written: an infinite side has none, and ``l_i = 0`` is the simple bound ``y_i ≥ 0``.
    First ``(μ − r_f)ᵀy = 1`` and ``1ᵀy ≥ 0``.

    Returns
    -------
    (ndarray of shape (m, n), ndarray of shape (m,), ndarray of shape (m,))
        The rows, their lower and upper sides.
    """
    n = excess.size
    equal = low == high
    from_low = np.flatnonzero(np.isfinite(low) & ~equal)
    from_high = np.flatnonzero(np.isfinite(high))
    from_lower = np.flatnonzero(lower_w != 0.0)
    a, b, c = from_low.size, from_high.size, from_lower.size
    m = 2 + a + b + c + n
    rows = np.empty((m, n))
    rows[0] = excess
    rows[1] = 1.0
    rows[2 : 2 + a] = matrix[from_low] - low[from_low, None]
    rows[2 + a : 2 + a + b] = matrix[from_high] - high[from_high, None]
    start = 2 + a + b
    rows[start : start + c] = -lower_w[from_lower, None]
    rows[start + np.arange(c), from_lower] += 1.0
    bounds = rows[start + c :]
    bounds[:] = -upper_w[:, None]
    bounds.flat[:: n + 1] += 1.0
    side_low = np.empty(m)
    side_high = np.empty(m)
    side_low[:2], side_high[:2] = (1.0, 0.0), (1.0, np.inf)
    side_low[2 : 2 + a], side_high[2 : 2 + a] = 0.0, np.inf
    side_low[2 + a : 2 + a + b] = np.where(equal[from_high], 0.0, -np.inf)
    side_high[2 + a : 2 + a + b] = 0.0
    side_low[start : start + c], side_high[start : start + c] = 0.0, np.inf
    side_low[start + c :], side_high[start + c :] = -np.inf, 0.0
    return rows, side_low, side_high


def kkt_holds(program: DenseProgram, x: FloatArray, lam: FloatArray, rtol: float = KKT_RTOL) -> bool:
    """Whether (x, λ) meets the KKT conditions of ``program`` within ``rtol`` (see the module docstring).

    Parameters
    ----------
    program : DenseProgram
        The program DAQP solved.
    x : ndarray of shape (n,)
        Its primal answer.
    lam : ndarray of shape (n + m,)
        Its multipliers, simple bounds first (DAQP's ``info["lam"]``: positive at an upper side, negative at a
        lower side).
    rtol : float
        Tolerance relative to the largest term of stationarity (and to 1 for feasibility and complementarity,
        whose units are weights, or annualised return for a min_return row).

    Returns
    -------
    bool
    """
    n = x.size
    values = np.concatenate((x, program.A @ x))
    hx = program.H @ x
    pull = lam[:n] + program.A.T @ lam[n:]
    size = max(1.0, float(np.abs(np.concatenate((hx, program.f, pull))).max()))
    if not float(np.abs(hx + program.f + pull).max()) <= rtol * size:
        return False
    tolerance = rtol * max(1.0, float(np.abs(values).max()))
    to_upper = program.upper - values  # +inf where the side is open
    to_lower = values - program.lower
    if float(to_upper.min()) < -tolerance or float(to_lower.min()) < -tolerance:
        return False
    big = rtol * size
    return not bool(np.any(((lam > big) & (to_upper > tolerance)) | ((lam < -big) & (to_lower > tolerance))))


def solve_program(program: DenseProgram, time_limit_s: float = float("inf")) -> tuple[FloatArray, FloatArray, int, int]:
    """One DAQP solve of ``program`` with the engine's settings (``PRIMAL_TOL``; a time limit in seconds).

    Returns
    -------
    (ndarray of shape (n,), ndarray of shape (n + m,), int, int)
        x, the multipliers λ (simple bounds first), DAQP's exit flag (1: optimal) and its iterations.
    """
    x, _, flag, info = daqp.solve(
        program.H,
        program.f,
        program.A,
        program.upper,
        program.lower,
        program.sense,
        primal_tol=PRIMAL_TOL,
        time_limit=0.0 if time_limit_s == float("inf") else time_limit_s,  # DAQP: 0 is none
    )
    lam = np.asarray(info["lam"], dtype=np.float64)
    return np.asarray(x, dtype=np.float64), lam, int(flag), int(info["iterations"])


class DualActiveSetBackend:
    """DAQP's dual active set on the dense program for small N (see the module docstring)."""

    solve_path = SOLVE_PATH

    def supports(self, model: ProblemModel) -> bool:
        """See :func:`supports`."""
        return supports(model)

    def solve(self, model: ProblemModel, *, started: float, time_limit_s: float | None) -> OptimizationResult | None:
        """The KKT-certified optimum from DAQP, or None.

        Parameters
        ----------
        model : ProblemModel
            A supported, pre-checked model.
        started : float
            ``time.perf_counter()`` at the start of the call, for ``solve_time_ms`` and ``time_limit_s``.
        time_limit_s : float, optional
            Wall-clock limit of the whole call in seconds, measured from ``started``.

        Returns
        -------
        OptimizationResult or None
            Through ``model.result``, with ``solver`` ``DAQP``, ``solve_path`` ``DUAL_ACTIVE_SET``, DAQP's
            iteration count and status ``OPTIMAL``. None when DAQP does not report an optimum (an infeasible
            program, cycling, the time limit), the KKT check fails, 1ᵀy degenerates (max Sharpe), or the weights
            breach a constraint: ``CLARABEL_DIRECT`` then answers, proves infeasibility or raises.

        Raises
        ------
        DeadlineExceededError
            No time was left before the solve.
        """
        program = build_program(model)
        limit = remaining_time(started, time_limit_s)
        x, lam, flag, iterations = solve_program(program, limit)
        if flag != 1 or not kkt_holds(program, x, lam):
            return None
        if program.homogenised:
            kappa = float(x.sum())
            if not kappa > 1e-12:
                return None
            x = x / kappa
        result = model.result(
            x,
            status="OPTIMAL",
            solver=SOLVER,
            iterations=iterations,
            started=started,
            solve_path=SOLVE_PATH,
            # Certified to the KKT tolerance; rounding noise past a bound (e.g. -2.7e-15 for a lower bound 0) goes
            # back on the bound, so a long-only answer has no negative weight.
            snap=True,
        )
        return result if result.constraints_satisfied else None
