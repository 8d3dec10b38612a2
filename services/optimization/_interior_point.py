"""A primal-dual interior-point method on dense linear algebra for mean-variance with the trading families.

Scope
-----
Min volatility and quadratic utility with finite per-name bounds and any of: the budget or net exposure bounds,
group limits, min_return, beta neutrality, gross exposure (leverage), two-way turnover, per-name turnover caps and
per-name transaction costs (the families in ``FAMILIES``). These are the problems the QP rotation and Optimize
calls with trading limits pose; before this backend they went through cvxpy to Clarabel (``CONIC``).

Why a solver of our own: Clarabel factorises its KKT matrix with a sparse LDLᵀ (QDLDL). The covariance makes an
N × N dense block of it, factorised without blocked BLAS kernels at every iteration: at N = 300 that is most of a
110 ms solve (``benchmarks.rotation``). The problem's structure allows every Newton system to be reduced to one
dense N × N system, factorised by LAPACK's Cholesky (``dpotrf``), a few milliseconds at N = 300 for the whole solve.

The program
-----------
With w the weights (N,), t ≥ |w − w₀| the two-way trades (present with costs, turnover or turnover caps) and
u ≥ |w| the gross exposure per name (present with leverage), x = (w, t, u):

    minimise   ½ wᵀPw + qᵀw + cᵀt
    subject to l ≤ w ≤ h,              E w = f (the budget or any equality row),
               w − t ≤ w₀, −w − t ≤ −w₀, t ≤ m,   1ᵀt ≤ τ        (trades),
               w − u ≤ 0,  −w − u ≤ 0,   u ≤ r,   1ᵀu ≤ L        (gross exposure),
               D w ≤ e                   (net exposure, groups, min_return, beta: dense rows),

with P = 2Σ, q = 0 for min volatility and P = δΣ, q = −μ (−(μ − r_f) with net exposure bounds) for quadratic
utility, c the transaction cost rates (0 for min volatility, whose objective has no cost term, as in ``_conic``),
m the per-name caps (``TurnoverCaps.reach``, or a bound no feasible trade reaches) and r = max(|l|, |h|) (a bound
|w| never passes). These are the programs of the cvxpy path (``_conic.MeanVarianceProgram``): both paths have the
same optimum.

Method
------
Mehrotra's predictor-corrector primal-dual method for convex QPs (Nocedal & Wright, *Numerical Optimization*,
2nd ed., §16.6; Vandenberghe, "The CVXOPT linear and quadratic cone program solvers", 2010, for the starting point).
With slacks s and multipliers z of the inequalities Gx + s = h and W = diag(z / s), each Newton system reduces to

    (P + GᵀWG) Δx + Eᵀ Δy = r.

GᵀWG couples w only with its own t and u (diagonal blocks) and the sums 1ᵀt, 1ᵀu (rank one each), so t and u are
eliminated in closed form (Sherman-Morrison) and what is left is the N × N matrix

    P + diag(d) + Dᵀ diag(W_D) D + α_t v_t v_tᵀ + α_u v_u v_uᵀ,

factorised once per iteration (Cholesky) for both the predictor and the corrector; the equality rows are solved
through their Schur complement. It stops when the primal and dual residuals and the complementarity gap are within
``TOLERANCE`` relative to the problem's data (Clarabel's tight settings of this engine are 1e-10).

Certificate and fallback: the answer is returned only when those three conditions hold; an iteration cap, a
failed factorisation or a stalled step returns None and the next backend (cvxpy + Clarabel, which also proves
infeasibility) answers. The engine's own solver-independent constraint check (``ProblemModel.result``) runs on
every answer as on every backend's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, blas, cho_factor, cho_solve, lapack

from services.errors import DeadlineExceededError
from services.optimization._constraints import (
    BetaNeutrality,
    Bounds,
    Budget,
    Constraint,
    GroupLimits,
    LeverageLimit,
    MinReturn,
    NetExposure,
    TurnoverCaps,
    TurnoverLimit,
)
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult
from services.types import FloatArray

SOLVE_PATH = "DENSE_IPM"
"""``OptimizationResult.solve_path`` (and ``solver``) of an answer of this module."""
FAMILIES: frozenset[type[Constraint]] = frozenset(
    {
        Budget,
        NetExposure,
        Bounds,
        GroupLimits,
        MinReturn,
        BetaNeutrality,
        LeverageLimit,
        TurnoverLimit,
        TurnoverCaps,
    }
)
"""The constraint families this backend solves; any other family present makes a problem unsupported."""
ELIGIBLE_OBJECTIVES = frozenset({Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY})
TOLERANCE = 1e-10
"""Stopping tolerance of the relative primal and dual residuals and of the relative complementarity gap."""
MAX_ITERATIONS = 80
"""Newton iterations before giving up (returning None); 15-30 are typical."""
MAX_ASSETS = 3000
"""Largest N solved here (an iteration costs N³/3 flops; above it the conic path's sparsity may pay)."""
_STEP = 0.99
"""Fraction of the largest step to the boundary of s, z ≥ 0 taken."""


@dataclass(frozen=True, slots=True)
class DenseQp:
    """The program of the module docstring, assembled from a model.

    Attributes
    ----------
    P : ndarray, shape (N, N)
        Quadratic cost on w (symmetric positive semidefinite).
    q : ndarray, shape (N,)
        Linear cost on w.
    lower, upper : ndarray, shape (N,)
        Finite bounds l ≤ h.
    current : ndarray, shape (N,)
        w₀.
    equality_matrix : ndarray, shape (k, N)
        E (k ≥ 0 rows).
    equality_rhs : ndarray, shape (k,)
        f.
    dense_matrix : ndarray, shape (K, N)
        D (K ≥ 0 rows).
    dense_rhs : ndarray, shape (K,)
        e.
    trade_costs : ndarray, shape (N,), optional
        c; present (with ``trade_caps``) when the program has trade variables t.
    trade_caps : ndarray, shape (N,), optional
        m (finite).
    turnover_limit : float, optional
        τ.
    gross_caps : ndarray, shape (N,), optional
        r; present when the program has gross exposure variables u.
    gross_limit : float, optional
        L.
    """

    P: FloatArray
    q: FloatArray
    lower: FloatArray
    upper: FloatArray
    current: FloatArray
    equality_matrix: FloatArray
    equality_rhs: FloatArray
    dense_matrix: FloatArray
    dense_rhs: FloatArray
    trade_costs: FloatArray | None = None
    trade_caps: FloatArray | None = None
    turnover_limit: float | None = None
    gross_caps: FloatArray | None = None
    gross_limit: float | None = None


@dataclass(frozen=True, slots=True)
class DenseQpSolution:
    """A converged solution.

    Attributes
    ----------
    weights : ndarray, shape (N,)
    iterations : int
        Newton iterations.
    primal_residual, dual_residual, gap : float
        The relative residuals and complementarity gap at the answer (each ≤ ``TOLERANCE``).
    """

    weights: FloatArray
    iterations: int
    primal_residual: float
    dual_residual: float
    gap: float


def supports(model: ProblemModel) -> bool:
    """Whether ``model`` is in this module's scope (see the module docstring).

    An eligible objective (quadratic utility with a finite positive risk aversion), families among ``FAMILIES``
    whose limits are linear rows in w (not min_return net of transaction costs), finite bounds,
    1 ≤ N ≤ ``MAX_ASSETS``.
    """
    problem = model.problem
    if model.objective not in ELIGIBLE_OBJECTIVES or not 0 < model.n_assets <= MAX_ASSETS:
        return False
    if not model.families <= FAMILIES:
        return False
    if model.objective is Objective.MAX_QUADRATIC_UTILITY and not (
        np.isfinite(problem.risk_aversion) and problem.risk_aversion > 0.0
    ):
        return False
    if not (np.all(np.isfinite(model.lower)) and np.all(np.isfinite(model.upper))):
        return False
    if any(
        family.rows(model) is None
        for family in model.constraints
        if not isinstance(family, Bounds | TurnoverLimit | TurnoverCaps | LeverageLimit | BetaNeutrality)
    ):
        return False  # min_return net of costs: not a linear row in w alone
    return bool(np.isfinite(model.risk_free_rate))


def build(model: ProblemModel) -> DenseQp:
    """The program of a supported model (module docstring).

    Parameters
    ----------
    model : ProblemModel
        A supported model (``supports``) over N strategies.

    Returns
    -------
    DenseQp
        Its matrices; equality rows are those whose lower and upper limits coincide (the budget).
    """
    n = model.n_assets
    sigma = model.covariance
    if model.objective is Objective.MIN_VOLATILITY:
        P, q, costs = 2.0 * sigma, np.zeros(n), np.zeros(n)
    else:
        P = model.problem.risk_aversion * sigma
        q = -(model.excess_returns if model.has_net_exposure else model.expected_returns)
        costs = np.zeros(n) if model.costs is None else model.costs
    equalities: list[tuple[FloatArray, float]] = []
    inequalities: list[tuple[FloatArray, float]] = []
    for family in model.constraints:
        if isinstance(family, BetaNeutrality):
            inequalities += [(family.betas, family.tolerance), (-family.betas, family.tolerance)]
            continue
        if isinstance(family, Bounds | TurnoverLimit | TurnoverCaps | LeverageLimit):
            continue  # their own rows and variables below
        rows = family.rows(model)
        assert rows is not None, f"{family.name} has no linear rows"  # excluded by supports()
        for a, low, high in zip(rows.matrix, rows.lower, rows.upper, strict=True):
            if low == high:
                equalities.append((a, float(high)))
                continue
            if np.isfinite(low):
                inequalities.append((-a, -float(low)))
            if np.isfinite(high):
                inequalities.append((a, float(high)))
    turnover, caps = model.get(TurnoverLimit), model.get(TurnoverCaps)
    leverage = model.get(LeverageLimit)
    current = np.asarray(model.current, dtype=np.float64)
    lower, upper = model.lower, model.upper
    reach = np.maximum(np.abs(lower), np.abs(upper))
    has_trades = turnover is not None or caps is not None or bool(np.any(costs > 0))
    trade_caps = None
    if has_trades:
        trade_caps = caps.reach if caps is not None else reach + np.abs(current) + 1.0

    def stack(rows: list[tuple[FloatArray, float]]) -> tuple[FloatArray, FloatArray]:
        if not rows:
            return np.zeros((0, n)), np.zeros(0)
        return np.array([a for a, _ in rows], dtype=np.float64), np.array([c for _, c in rows], dtype=np.float64)

    E, f = stack(equalities)
    D, e = stack(inequalities)
    return DenseQp(
        P=np.asarray(P, dtype=np.float64),
        q=np.asarray(q, dtype=np.float64),
        lower=np.asarray(lower, dtype=np.float64),
        upper=np.asarray(upper, dtype=np.float64),
        current=current,
        equality_matrix=E,
        equality_rhs=f,
        dense_matrix=D,
        dense_rhs=e,
        trade_costs=np.asarray(costs, dtype=np.float64) if has_trades else None,
        trade_caps=None if trade_caps is None else np.asarray(trade_caps, dtype=np.float64),
        turnover_limit=None if turnover is None else float(turnover.limit),
        gross_caps=None if leverage is None else np.asarray(reach, dtype=np.float64),
        gross_limit=None if leverage is None else float(leverage.limit),
    )


class _Rows:
    """The inequality rows Gx ≤ h of a ``DenseQp`` as blocks (module docstring), with products by G and Gᵀ.

    Row blocks, in order: −w ≤ −l (N), w ≤ h (N); with trades w − t ≤ w₀ (N), −w − t ≤ −w₀ (N), t ≤ m (N) and
    1ᵀt ≤ τ (1, with a turnover limit); with gross exposure w − u ≤ 0 (N), −w − u ≤ 0 (N), u ≤ r (N) and
    1ᵀu ≤ L (1); then D w ≤ e (K).
    """

    def __init__(self, qp: DenseQp) -> None:
        n = qp.P.shape[0]
        self.n = n
        self.trades = qp.trade_caps is not None
        self.turnover = qp.turnover_limit is not None
        self.gross = qp.gross_caps is not None
        self.k = qp.dense_matrix.shape[0]
        sizes = [("lo", n), ("hi", n)]
        if self.trades:
            sizes += [("ta", n), ("tb", n), ("tc", n)]
            if self.turnover:
                sizes.append(("ts", 1))
        if self.gross:
            sizes += [("ua", n), ("ub", n), ("uc", n), ("us", 1)]
        sizes.append(("d", self.k))
        self.slices: dict[str, slice] = {}
        start = 0
        for name, size in sizes:
            self.slices[name] = slice(start, start + size)
            start += size
        self.m = start
        h = np.empty(self.m)
        h[self.slices["lo"]] = -qp.lower
        h[self.slices["hi"]] = qp.upper
        if self.trades:
            assert qp.trade_caps is not None
            h[self.slices["ta"]] = qp.current
            h[self.slices["tb"]] = -qp.current
            h[self.slices["tc"]] = qp.trade_caps
            if self.turnover:
                h[self.slices["ts"]] = qp.turnover_limit
        if self.gross:
            assert qp.gross_caps is not None
            assert qp.gross_limit is not None
            h[self.slices["ua"]] = 0.0
            h[self.slices["ub"]] = 0.0
            h[self.slices["uc"]] = qp.gross_caps
            h[self.slices["us"]] = qp.gross_limit
        h[self.slices["d"]] = qp.dense_rhs
        self.h = h
        self.D = qp.dense_matrix
        self.P_fortran = np.asfortranarray(qp.P)

    def __call__(self, z: FloatArray, name: str) -> FloatArray:
        """The block ``name`` of a row vector."""
        return z[self.slices[name]]

    def times(self, w: FloatArray, t: FloatArray, u: FloatArray) -> FloatArray:
        """G x."""
        out = np.empty(self.m)
        sl = self.slices
        out[sl["lo"]] = -w
        out[sl["hi"]] = w
        if self.trades:
            out[sl["ta"]] = w - t
            out[sl["tb"]] = -w - t
            out[sl["tc"]] = t
            if self.turnover:
                out[sl["ts"]] = t.sum()
        if self.gross:
            out[sl["ua"]] = w - u
            out[sl["ub"]] = -w - u
            out[sl["uc"]] = u
            out[sl["us"]] = u.sum()
        out[sl["d"]] = self.D @ w
        return out

    def transpose_times(self, z: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Gᵀ z as its (w, t, u) parts (t and u empty when absent)."""
        b = self.__call__
        gw = b(z, "hi") - b(z, "lo") + self.D.T @ b(z, "d")
        gt = gu = np.zeros(0)
        if self.trades:
            gw = gw + b(z, "ta") - b(z, "tb")
            gt = b(z, "tc") - b(z, "ta") - b(z, "tb")
            if self.turnover:
                gt = gt + b(z, "ts")[0]
        if self.gross:
            gw = gw + b(z, "ua") - b(z, "ub")
            gu = b(z, "uc") - b(z, "ua") - b(z, "ub") + b(z, "us")[0]
        return gw, gt, gu


class _Eliminated:
    """One block of auxiliary variables (t or u) eliminated from the Newton system: diag(d) + ω11ᵀ, coupling b."""

    def __init__(self, d: FloatArray, b: FloatArray, omega: float) -> None:
        self.inv_d = 1.0 / d
        self.b = b
        self.alpha = omega / (1.0 + omega * self.inv_d.sum()) if omega else 0.0

    def solve(self, r: FloatArray) -> FloatArray:
        """(diag(d) + ω11ᵀ)⁻¹ r (Sherman-Morrison)."""
        scaled = r * self.inv_d
        return scaled - self.alpha * scaled.sum() * self.inv_d if self.alpha else scaled


class _Newton:
    """The reduced Newton system of one iteration, factorised once (module docstring).

    The N × N matrix is assembled in Fortran order in its upper triangle (BLAS ``dsyrk`` for the dense rows and the
    two rank-one terms) and factorised in place (LAPACK ``dpotrf``).
    """

    def __init__(self, qp: DenseQp, rows: _Rows, weights: FloatArray) -> None:
        b = rows.__call__
        n = rows.n
        diagonal = b(weights, "lo") + b(weights, "hi")
        self.trades = self.gross = None
        if rows.trades:
            ta, tb = b(weights, "ta"), b(weights, "tb")
            omega = float(b(weights, "ts")[0]) if rows.turnover else 0.0
            self.trades = _Eliminated(ta + tb + b(weights, "tc"), tb - ta, omega)
            diagonal = diagonal + ta + tb - self.trades.b**2 * self.trades.inv_d
        if rows.gross:
            ua, ub = b(weights, "ua"), b(weights, "ub")
            self.gross = _Eliminated(ua + ub + b(weights, "uc"), ub - ua, float(b(weights, "us")[0]))
            diagonal = diagonal + ua + ub - self.gross.b**2 * self.gross.inv_d
        low_rank = [rows.D * np.sqrt(b(weights, "d"))[:, None]] if rows.k else []
        for block in (self.trades, self.gross):
            if block is not None and block.alpha:
                low_rank.append((np.sqrt(block.alpha) * block.b * block.inv_d)[None, :])
        matrix = rows.P_fortran.copy(order="F")
        if low_rank:
            stacked = np.concatenate(low_rank) if len(low_rank) > 1 else low_rank[0]
            matrix = blas.dsyrk(1.0, stacked, beta=1.0, c=matrix, trans=1, lower=0, overwrite_c=1)
        matrix[np.diag_indices(n)] += diagonal
        factor, info = lapack.dpotrf(matrix, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise LinAlgError(f"dpotrf: {info}")
        self.factor = factor
        E = qp.equality_matrix
        self.E = E
        if E.shape[0]:
            self.solved_E = self._solve(E.T)
            self.schur = cho_factor(E @ self.solved_E, lower=False, check_finite=False)

    def _solve(self, rhs: FloatArray) -> FloatArray:
        solution, info = lapack.dpotrs(self.factor, rhs, lower=0)
        if info != 0:
            raise LinAlgError(f"dpotrs: {info}")
        return np.asarray(solution)

    def solve(
        self, rw: FloatArray, rt: FloatArray, ru: FloatArray, r_eq: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(Δw, Δt, Δu, Δy) of [M Eᵀ; E 0] [Δx; Δy] = [r; r_eq], M = P + GᵀWG."""
        rhs = rw
        if self.trades is not None:
            rhs = rhs - self.trades.b * self.trades.solve(rt)
        if self.gross is not None:
            rhs = rhs - self.gross.b * self.gross.solve(ru)
        dw = self._solve(rhs)
        dy = np.zeros(self.E.shape[0])
        if self.E.shape[0]:
            dy = cho_solve(self.schur, self.E @ dw - r_eq, check_finite=False)
            dw = dw - self.solved_E @ dy
        dt = du = np.zeros(0)
        if self.trades is not None:
            dt = self.trades.solve(rt - self.trades.b * dw)
        if self.gross is not None:
            du = self.gross.solve(ru - self.gross.b * dw)
        return dw, dt, du, dy


def _step_to_boundary(values: FloatArray, steps: FloatArray) -> float:
    """Largest α ≤ 1 with values + α·steps ≥ 0 (values > 0)."""
    negative = steps < 0
    if not negative.any():
        return 1.0
    return float(min(1.0, np.min(-values[negative] / steps[negative])))


def solve_qp(qp: DenseQp, *, started: float | None = None, time_limit_s: float | None = None) -> DenseQpSolution | None:
    """Solve ``qp`` by Mehrotra's predictor-corrector method (module docstring).

    Parameters
    ----------
    qp : DenseQp
        The program.
    started : float, optional
        ``time.perf_counter()`` at the start of the call, for ``time_limit_s``.
    time_limit_s : float, optional
        Wall-clock limit from ``started`` in seconds.

    Returns
    -------
    DenseQpSolution or None
        The weights when the relative primal and dual residuals and gap are within ``TOLERANCE``; None when the
        method fails (iteration cap, a factorisation that fails, a step that stalls): the caller then solves the
        problem another way. An infeasible problem ends here as None.

    Raises
    ------
    DeadlineExceededError
        ``time_limit_s`` passed during the iterations.
    """
    started = time.perf_counter() if started is None else started
    rows = _Rows(qp)
    n, m = rows.n, rows.m
    nt = n if rows.trades else 0
    nu = n if rows.gross else 0
    c = qp.trade_costs if qp.trade_costs is not None else np.zeros(0)
    E, f = qp.equality_matrix, qp.equality_rhs
    scale_p = 1.0 + max(float(np.max(np.abs(qp.P))), float(np.max(np.abs(qp.q), initial=0.0)))
    scale_h = 1.0 + float(np.max(np.abs(rows.h)))
    scale_f = 1.0 + float(np.max(np.abs(f), initial=0.0))

    # Starting point (Vandenberghe, 2010, §10.3, for the orthant): the least-squares x of W = I, then s and z shifted
    # into the interior.
    w, t, u = np.zeros(n), np.zeros(nt), np.zeros(nu)
    y = np.zeros(E.shape[0])
    try:
        newton = _Newton(qp, rows, np.ones(m))
        gw, gt, gu = rows.transpose_times(rows.h)
        w, t, u, y = newton.solve(-qp.q + gw, -c + gt, gu, f)
    except (LinAlgError, ValueError):
        return None
    s = rows.h - rows.times(w, t, u)
    z = -s.copy()
    # Mehrotra's heuristic (Nocedal & Wright, §14.2): shift s and z into the orthant, then balance them.
    s = s + max(-1.5 * float(s.min()), 0.0)
    z = z + max(-1.5 * float(z.min()), 0.0)
    product = float(s @ z)
    s = s + 0.5 * product / max(float(z.sum()), 1e-300) + 1e-8
    z = z + 0.5 * product / max(float(s.sum()), 1e-300) + 1e-8

    for iteration in range(1, MAX_ITERATIONS + 1):
        if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s")
        gw, gt, gu = rows.transpose_times(z)
        Pw = qp.P @ w
        rw = Pw + qp.q + gw + (E.T @ y if E.shape[0] else 0.0)
        rt = c + gt
        ru = gu
        r_in = rows.times(w, t, u) + s - rows.h
        r_eq = E @ w - f
        gap = float(s @ z)
        primal = max(float(np.max(np.abs(r_in))) / scale_h, float(np.max(np.abs(r_eq), initial=0.0)) / scale_f)
        dual = max(float(np.max(np.abs(rw))), float(np.max(np.abs(rt), initial=0.0)),
                   float(np.max(np.abs(ru), initial=0.0))) / scale_p  # fmt: skip
        objective = 0.5 * float(w @ Pw) + float(qp.q @ w) + (float(c @ t) if nt else 0.0)
        relative_gap = gap / (1.0 + abs(objective))
        if primal <= TOLERANCE and dual <= TOLERANCE and relative_gap <= TOLERANCE:
            return DenseQpSolution(w, iteration - 1, primal, dual, relative_gap)
        try:
            newton = _Newton(qp, rows, z / s)
        except (LinAlgError, ValueError):
            return None
        mu = gap / m

        def direction(r_c: FloatArray) -> tuple[FloatArray, ...]:
            # Δz = W(GΔx) + S⁻¹(Z r_in − r_c); (P + GᵀWG)Δx + EᵀΔy = −r_d − GᵀS⁻¹(Z r_in − r_c).
            correction = (z * r_in - r_c) / s  # noqa: B023
            cw, ct, cu = rows.transpose_times(correction)
            dw, dt, du, dy = newton.solve(-rw - cw, -rt - ct, -ru - cu, -r_eq)  # noqa: B023
            g_dx = rows.times(dw, dt, du)
            dz = (z / s) * g_dx + correction  # noqa: B023
            ds = -r_in - g_dx  # noqa: B023
            return dw, dt, du, dy, ds, dz

        _, _, _, _, ds_aff, dz_aff = direction(s * z)
        alpha_aff = min(_step_to_boundary(s, ds_aff), _step_to_boundary(z, dz_aff))
        mu_aff = float((s + alpha_aff * ds_aff) @ (z + alpha_aff * dz_aff)) / m
        sigma = (mu_aff / mu) ** 3 if mu > 0 else 0.0
        dw, dt, du, dy, ds, dz = direction(s * z + ds_aff * dz_aff - sigma * mu)
        alpha = min(1.0, _STEP * min(_step_to_boundary(s, ds), _step_to_boundary(z, dz)))
        if alpha < 1e-12 or not np.all(np.isfinite(dw)):
            return None
        w, t, u, y = w + alpha * dw, t + alpha * dt, u + alpha * du, y + alpha * dy
        s, z = s + alpha * ds, z + alpha * dz
    return None


class DenseInteriorPointBackend:
    """The dense interior-point method for mean-variance with the trading families (see the module docstring)."""

    solve_path = SOLVE_PATH

    def supports(self, model: ProblemModel) -> bool:
        """See :func:`supports`."""
        return supports(model)

    def solve(self, model: ProblemModel, *, started: float, time_limit_s: float | None) -> OptimizationResult | None:
        """The converged optimum through ``model.result`` (solver and path ``DENSE_IPM``), or None.

        Raises
        ------
        DeadlineExceededError
            ``time_limit_s`` passed during the iterations.
        """
        solution = solve_qp(build(model), started=started, time_limit_s=time_limit_s)
        if solution is None:
            return None
        return model.result(
            solution.weights,
            status="OPTIMAL",
            solver=SOLVE_PATH,
            iterations=solution.iterations,
            started=started,
            solve_path=SOLVE_PATH,
        )
