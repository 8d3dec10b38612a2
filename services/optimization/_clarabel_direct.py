"""Mean-variance with linear constraints, assembled for Clarabel directly (no cvxpy canonicalisation).

Scope
-----
Problems whose constraints are all linear and whose objective is a variance or linear function: min volatility,
quadratic utility, max return and max Sharpe (homogenised), under the budget 1ᵀw = 1 (or net exposure bounds),
finite per-name bounds l ≤ w ≤ u, group limits of any classification scheme and a minimum expected return (the
families in ``FAMILIES``). Every other problem (a volatility cap, the trading limits — turnover, per-name caps,
leverage, tracking error, beta —, transaction costs, the multi-objective, cardinality, infinite bounds, a family
added later) is not supported and goes to the next backend, the cvxpy path of ``_conic``; ``solve`` returns None
when Clarabel fails, and the cvxpy path then tries again, with SCS as its fallback.

Large N: at or above ``WORKING_SET_MIN_ASSETS`` names the program is first solved on a working set of names,
grown by pricing the names left out with Clarabel's duals (``solve_working_set``; ``solve_path`` ``WORKING_SET``):
at N = 2000 with a 5 % cap and three group limits the whole program took 5-6 s, the working set 0.03-0.07 s
(min volatility, max Sharpe, quadratic utility; with and without min_return), the same optimum to Clarabel's
tolerance (2e-9 relative at N = 600). Why one module: the working set solves the program ``build_program``
assembles on a subset of its columns and prices the rest with that program's rows, so both share its layout.

Why: above ``PARAMETRIC_MAX_ASSETS`` cvxpy canonicalises the program anew on every call, about 75 % of the call at
N = 100; at or below it the cached (DPP) program still costs its parameter mapping and a larger factor-form
program (2.4 ms at N = 20 for a 0.3 ms solve). Assembling the same program with NumPy costs 0.1-0.3 ms up to
N = 100, so this path is used at every N. Measured by ``benchmarks/mean_variance_direct.py`` (min volatility and
max Sharpe with three group limits and a min_return, 2 busy cores), the whole engine call took 1.0-1.3 × the time
of Clarabel alone on the same matrices from N = 64 up (1.15 × at N = 100, 1.0 × at N = 500 and 1000), and about
2.3 × at N = 20, where the engine's pre- and post-solve checks (~0.3 ms) weigh as much as the solve; the cvxpy
path took 3-9 × up to N = 100 and 1.2-1.5 × at N = 500 and 1000.

The program
-----------
Clarabel (Goulart & Chen, 2024, "Clarabel: An interior-point solver for conic programs with quadratic
objectives", arXiv:2405.12762) solves

    minimise ½ xᵀPx + qᵀx  subject to  Ax + s = b,  s ∈ K,

with P given by its upper triangle (CSC) and K a product of the zero cone (equalities) and the non-negative orthant
(inequalities Ax ≤ b). With w the weights (N,), Σ the covariance (N, N), μ the expected returns (N,), r_f the
risk-free rate and m_k the 0/1 membership of group k:

- min volatility: x = w, P = 2Σ, q = 0;
- quadratic utility (maximise μᵀw − δ/2 wᵀΣw): P = δΣ, q = −μ;
- max return (an LP): P = 0, q = −μ;
- max Sharpe, the homogenised problem of Cornuejols & Tütüncü (2007, §8.2): x = (y, κ), P = 2Σ on y, q = 0,
  (μ − r_f)ᵀy = 1, 1ᵀy = κ, κ ≥ 0, lκ ≤ y ≤ uκ, group limits times κ, μᵀy ≥ r_min κ; then w = y / κ.

With net exposure bounds the budget becomes low ≤ 1ᵀw ≤ high (low·κ ≤ 1ᵀy ≤ high·κ for max Sharpe) and the
return carries the cash leg r_f(1 − 1ᵀw): μ is replaced by μ − r_f in the objective and min_return becomes
(μ − r_f)ᵀw ≥ r_min − r_f ((μ − r_f)ᵀy ≥ (r_min − r_f)κ). These are the programs the cvxpy path builds
(``_conic.MeanVarianceProgram``), so both paths have the same optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import clarabel
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from services.errors import DeadlineExceededError, InfeasibleError, PreconditionViolation
from services.optimization._constraints import Bounds, Budget, Constraint, GroupLimits, MinReturn, NetExposure
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult
from services.optimization._program import unscale
from services.optimization._solver import CLARABEL_DEFAULTS, CLARABEL_SETTINGS, remaining_time
from services.types import FloatArray

SOLVER = "CLARABEL"
SOLVE_PATH = "CLARABEL_DIRECT"
"""``OptimizationResult.solve_path`` of an answer of this module (``solver`` is ``CLARABEL``)."""
WORKING_SET_PATH = "WORKING_SET"
"""``solve_path`` of an answer found on a working set of names (``solve_working_set``; ``solver`` ``CLARABEL``)."""

ELIGIBLE_OBJECTIVES = frozenset(
    {Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY, Objective.MAX_RETURN, Objective.MAX_SHARPE}
)
FAMILIES: frozenset[type[Constraint]] = frozenset({Budget, NetExposure, Bounds, GroupLimits, MinReturn})
"""The constraint families this backend assembles; any other family present makes a problem unsupported."""


@dataclass(frozen=True, slots=True)
class ConicProgram:
    """One problem in Clarabel's standard form: minimise ½xᵀPx + qᵀx s.t. Ax + s = b, s ∈ K.

    Attributes
    ----------
    P : scipy.sparse.csc_array of shape (n, n)
        Upper triangle of the quadratic cost (n = N, or N + 1 for max Sharpe with κ last).
    q : ndarray of shape (n,)
        Linear cost.
    A : scipy.sparse.csc_array of shape (m, n)
        Constraint matrix: the ``n_equalities`` equality rows first, then the inequality rows.
    b : ndarray of shape (m,)
        Right-hand side.
    n_equalities : int
        Rows of the zero cone; the other m − n_equalities rows are in the non-negative orthant.
    homogenised : bool
        Whether x = (y, κ) is the max Sharpe program (w = y / κ).
    """

    P: sp.csc_array
    q: FloatArray
    A: sp.csc_array
    b: FloatArray
    n_equalities: int
    homogenised: bool

    def cones(self) -> list[Any]:
        """Clarabel's cones of the rows of A: ``ZeroConeT`` then ``NonnegativeConeT``."""
        cones = [clarabel.ZeroConeT(self.n_equalities)] if self.n_equalities else []
        return [*cones, clarabel.NonnegativeConeT(self.A.shape[0] - self.n_equalities)]


def supports(model: ProblemModel) -> bool:
    """Whether this module covers ``model``: a variance or linear objective under linear families only.

    The objective must be one of ``ELIGIBLE_OBJECTIVES`` (quadratic utility with a finite positive risk aversion),
    the families among ``FAMILIES``, no transaction costs; bounds, the risk-free rate, min_return and group limits
    must be finite.
    """
    problem = model.problem
    if model.objective not in ELIGIBLE_OBJECTIVES or model.n_assets == 0:
        return False
    if not model.families <= FAMILIES or model.costs is not None:
        return False
    if model.objective is Objective.MAX_QUADRATIC_UTILITY and not (
        np.isfinite(problem.risk_aversion) and problem.risk_aversion > 0.0
    ):
        return False
    # One sum: finite exactly when every term is (±inf and NaN propagate; an overflow only declines).
    total = model.risk_free_rate + float(model.lower.sum()) + float(model.upper.sum())
    if problem.min_return is not None:
        total += float(problem.min_return)
    groups = model.get(GroupLimits)
    if groups is not None:
        total += float(groups.min_weights.sum()) + float(groups.max_weights.sum())
    return math.isfinite(total)


_PATTERN_CACHE_MAX_N = 256
"""Largest N whose upper-triangle pattern is cached (0.03 ms to build at N = 100, a tenth of a small solve; at
large N building it is negligible next to the solve, and caching would hold megabytes)."""


def _upper_pattern(n: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int64]]:
    """Rows, columns (column-major order) and CSC column pointers of the upper triangle of an n × n matrix."""
    return _cached_upper_pattern(n) if n <= _PATTERN_CACHE_MAX_N else _new_upper_pattern(n)


def _new_upper_pattern(n: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int64]]:
    columns, rows = np.tril_indices(n)  # row-major over the lower triangle = column-major over the upper
    indptr = np.concatenate(([0], np.cumsum(np.arange(1, n + 1, dtype=np.int64))))
    return rows, columns, indptr


@lru_cache(maxsize=8)
def _cached_upper_pattern(n: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int64]]:
    pattern = _new_upper_pattern(n)
    for array in pattern:
        array.flags.writeable = False  # shared between calls (and threads)
    return pattern


def _upper_triangle(matrix: FloatArray, scale: float, n_vars: int) -> sp.csc_array:
    """``scale`` × the upper triangle of the symmetric ``matrix`` (N, N) in CSC, padded with zero columns to n_vars."""
    n = matrix.shape[0]
    rows, columns, indptr = _upper_pattern(n)
    data = scale * matrix[rows, columns]
    if n_vars > n:
        indptr = np.concatenate((indptr, np.full(n_vars - n, indptr[-1])))
    return sp.csc_array((data, rows, indptr), shape=(n_vars, n_vars))


def build_program(model: ProblemModel, *, quadratic: bool = True) -> ConicProgram:
    """Clarabel's P, q, A, b and cones of a supported model.

    Parameters
    ----------
    model : ProblemModel
        A supported model (``supports``) over N strategies, with validated moments.
    quadratic : bool, default=True
        Whether to build P; False leaves it empty (the working set builds the P of its names only).

    Returns
    -------
    ConicProgram
        n = N variables (N + 1 for max Sharpe); the equality rows are the budget 1ᵀw = 1 (without net exposure
        bounds) and, for max Sharpe, (μ − r_f)ᵀy = 1; the inequality rows are −w ≤ −l, w ≤ u, then the dense rows
        of the linear families (net exposure, group minima and maxima, min_return: ``Constraint.rows``), then
        κ ≥ 0 for max Sharpe.
    """
    n = model.n_assets
    mu, sigma = model.expected_returns, model.covariance
    sharpe = model.objective is Objective.MAX_SHARPE
    # Each dense row: its coefficients a on w (N,) and right-hand side c, for aᵀw ≤ c or aᵀw = c. For max Sharpe
    # the row reads aᵀy − cκ ≤ 0 (κ coefficient −c, b = 0), except (μ − r_f)ᵀy = 1 (see κ's column below).
    blocks = [family.rows(model) for family in model.constraints if not isinstance(family, Bounds)]
    assert all(rows is not None for rows in blocks)  # every supported family has rows
    dense = [rows for rows in blocks if rows is not None]
    matrix = np.vstack([rows.matrix for rows in dense]) if dense else np.empty((0, n))
    low = np.concatenate([rows.lower for rows in dense]) if dense else np.empty(0)
    high = np.concatenate([rows.upper for rows in dense]) if dense else np.empty(0)
    equal = low == high
    eq_matrix, eq_rhs = matrix[equal], high[equal]
    if sharpe:
        eq_matrix = np.vstack((model.excess_returns, eq_matrix))
        eq_rhs = np.concatenate(([1.0], eq_rhs))
    # A row's ≥ side (−aᵀw ≤ −low) then its ≤ side (aᵀw ≤ high), where finite, in the order of the rows.
    signed = np.empty((2 * matrix.shape[0], n))
    signed[0::2], signed[1::2] = -matrix, matrix
    rhs = np.empty(2 * matrix.shape[0])
    rhs[0::2], rhs[1::2] = -low, high
    kept = np.empty(rhs.size, dtype=bool)
    kept[0::2], kept[1::2] = ~equal & np.isfinite(low), ~equal & np.isfinite(high)
    ineq_matrix, ineq_rhs = signed[kept], rhs[kept]
    n_eq, n_dense = eq_rhs.size, ineq_rhs.size
    m = n_eq + 2 * n + n_dense + (1 if sharpe else 0)
    n_vars = n + 1 if sharpe else n
    # Columns of w, all with the same n_eq + 2 + n_dense entries (rows in increasing order); zeros dropped below.
    per_column = n_eq + 2 + n_dense
    index = np.empty((n, per_column), dtype=np.int64)
    data = np.empty((n, per_column))
    arange = np.arange(n)
    index[:, :n_eq] = np.arange(n_eq)
    index[:, n_eq] = n_eq + arange
    index[:, n_eq + 1] = n_eq + n + arange
    index[:, n_eq + 2 :] = n_eq + 2 * n + np.arange(n_dense)
    data[:, :n_eq] = eq_matrix.T
    data[:, n_eq] = -1.0
    data[:, n_eq + 1] = 1.0
    data[:, n_eq + 2 :] = ineq_matrix.T
    lower, upper = model.lower, model.upper
    constant = np.concatenate((eq_rhs, -lower, upper, ineq_rhs, [0.0] if sharpe else []))
    # Explicit zeros (non-members of a group, a zero μ_i) would be structural entries of the KKT system: dropped.
    keep = data != 0.0
    index_flat, data_flat = index[keep], data[keep]  # row-major over (column, entry): column by column
    indptr = np.concatenate(([0], np.cumsum(keep.sum(axis=1))))
    if sharpe:
        # κ's column: every right-hand side c moves to the left as −cκ, except (μ − r_f)ᵀy = 1; then −κ ≤ 0.
        kappa = -constant
        kappa[0] = 0.0
        kappa[-1] = -1.0
        nonzero = np.flatnonzero(kappa)
        index_flat = np.concatenate((index_flat, nonzero))
        data_flat = np.concatenate((data_flat, kappa[nonzero]))
        indptr = np.append(indptr, indptr[-1] + nonzero.size)
        b = np.zeros(m)
        b[0] = 1.0
    else:
        b = constant
    A = sp.csc_array((data_flat, index_flat, indptr), shape=(m, n_vars))
    scale = _quadratic_scale(model)
    whole_p = quadratic and scale != 0.0  # the working set builds its own P (``solve_working_set``)
    P = _upper_triangle(sigma, scale, n_vars) if whole_p else sp.csc_array((n_vars, n_vars))
    q = np.zeros(n_vars)
    if model.objective in (Objective.MAX_RETURN, Objective.MAX_QUADRATIC_UTILITY):
        # The constant r_f of the cash leg does not move the optimum.
        q[:] = -(model.excess_returns if model.has_net_exposure else mu)
    return ConicProgram(P=P, q=q, A=A, b=b, n_equalities=n_eq, homogenised=sharpe)


def _quadratic_scale(model: ProblemModel) -> float:
    """P = this × Σ on the weights: 0 (max return), δ (quadratic utility) or 2 (min volatility, max Sharpe)."""
    if model.objective is Objective.MAX_RETURN:
        return 0.0
    if model.objective is Objective.MAX_QUADRATIC_UTILITY:
        return float(model.problem.risk_aversion)
    return 2.0


WORKING_SET_MIN_ASSETS = 512
"""Fewest names for which ``ClarabelDirectBackend`` first solves the program on a working set of names
(``solve_working_set``): at N = 500 the whole program took 0.14-0.16 s, at N = 2000 5-6 s."""
WORKING_SET_START = 64
"""Names of the first working set (before the groups' minima and min_return add theirs), and most names a round
adds."""
WORKING_SET_MAX = 512
"""Largest working set before the whole program is solved instead."""
REDUCED_COST_RTOL = 1e-9
"""A name left out joins when its reduced cost is below −this × the scale of the program's terms."""


def first_working_set(model: ProblemModel) -> NDArray[np.bool_] | None:
    """The first working set of ``solve_working_set`` (and ``_scenario_working_set``'s), or None.

    Every name of non-zero lower bound, the best ranked names, and what the constraints need to be feasible on
    it (the budget under the caps, each group's minimum, min_return); None when more than ``WORKING_SET_START``
    names have a non-zero lower bound (they could not stay out at zero).

    Rank: the solution with Σ replaced by its diagonal and no constraint but the budget — (μ_i − r_f)/Σ_ii for max
    Sharpe, (ν + μ_i/δ)/Σ_ii for quadratic utility, 1/Σ_ii for min volatility — and μ_i for max return.
    """
    n = model.n_assets
    lower, upper, mu = model.lower, model.upper, model.expected_returns
    required = np.flatnonzero(lower != 0.0)
    if required.size > WORKING_SET_START:
        return None
    diag = np.diag(model.covariance)
    objective = model.objective
    if objective is Objective.MAX_SHARPE:
        score = model.excess_returns / diag
    elif objective is Objective.MAX_QUADRATIC_UTILITY:
        tolerance = 1.0 / float(model.problem.risk_aversion)
        nu = (1.0 - tolerance * float((mu / diag).sum())) / float((1.0 / diag).sum())
        score = (nu + tolerance * mu) / diag
    elif objective is Objective.MAX_RETURN:
        score = mu.copy()
    else:
        score = 1.0 / diag
    rank = np.argsort(np.where(upper > 0.0, -score, np.inf), kind="stable")
    rank = rank[upper[rank] > 0.0]
    chosen = np.zeros(n, dtype=bool)
    chosen[required] = True
    chosen[rank[:WORKING_SET_START]] = True

    def cover(candidates: NDArray[np.intp], amount: float) -> None:
        """Add candidates in order until their caps with the chosen ones' reach ``amount``."""
        have = float(upper[candidates[chosen[candidates]]].sum())
        extra = candidates[~chosen[candidates]]
        if have < amount and extra.size:
            chosen[extra[: int(np.searchsorted(np.cumsum(upper[extra]), amount - have)) + 1]] = True

    budget_low = float(model.budget[0]) if model.has_net_exposure else 1.0
    cover(rank, max(budget_low, 1.0))
    groups = model.get(GroupLimits)
    if groups is not None:
        for members, minimum in zip(groups.min_matrix, groups.min_weights, strict=True):
            in_rank = rank[members[rank] != 0.0]
            cover(in_rank, float(minimum))
    if model.get(MinReturn) is not None:
        best = np.argsort(-mu, kind="stable")
        chosen[best[upper[best] > 0.0][: WORKING_SET_START // 4]] = True
    return chosen


def solve_working_set(
    model: ProblemModel, program: ConicProgram, started: float, time_limit_s: float | None
) -> tuple[Any, FloatArray, int] | None:
    """Clarabel on the program restricted to a working set of names, grown by pricing the names left out.

    Column generation over the weights (as ``_scenario_working_set`` for the scenario LPs and
    ``_active_set._screened`` for the box-and-budget QP): the names left out stay at their zero lower bound; with
    Clarabel's duals z of the restricted program (stationarity Px + q + Aᵀz = 0), the multiplier of name i's bound
    w_i ≥ 0 would be d_i = (Px)_i + q_i + a_iᵀz over the rows other than its bounds (a_i: its column of A), which
    must be ≥ 0; the names left out with d_i < −``REDUCED_COST_RTOL`` × scale join (the most negative
    ``WORKING_SET_START`` a round) and the program is solved again. With no such name, the restricted optimum with
    zeros elsewhere meets the whole program's KKT conditions (to Clarabel's tolerance), so it is its optimum.

    Returns
    -------
    (clarabel.DefaultSolution, ndarray of shape (N,), int) or None
        The last restricted solution, the weights (w = y / κ for max Sharpe) and the Clarabel iterations of all
        rounds; None when the first set cannot be built (``first_working_set``), a restricted program does not end
        ``Solved`` (infeasible on the set, numerical trouble, the time limit), κ degenerates, or the set outgrows
        ``WORKING_SET_MAX``: the whole program is then solved.
    """
    chosen = first_working_set(model)
    if chosen is None:
        return None
    n = model.n_assets
    n_eq = program.n_equalities
    m = program.A.shape[0]
    sharpe = program.homogenised
    scale = _quadratic_scale(model)
    sigma = model.covariance
    rows = program.A.tocsr()
    # The rows other than the per-name bounds (equalities, dense rows, κ ≥ 0), and their part on the weights.
    other = np.concatenate((np.arange(n_eq), np.arange(n_eq + 2 * n, m)))
    on_weights = rows[other][:, :n]
    q_weights = program.q[:n]
    iterations = 0
    while True:
        working = np.flatnonzero(chosen)
        k = working.size
        if k > WORKING_SET_MAX:
            return None
        columns = np.append(working, n) if sharpe else working
        kept = np.concatenate((np.arange(n_eq), n_eq + working, n_eq + n + working, np.arange(n_eq + 2 * n, m)))
        restricted = ConicProgram(
            P=sp.csc_array((columns.size, columns.size))
            if scale == 0.0
            else _upper_triangle(sigma[np.ix_(working, working)], scale, columns.size),
            q=program.q[columns],
            A=sp.csc_array(rows[kept][:, columns]),
            b=program.b[kept],
            n_equalities=n_eq,
            homogenised=sharpe,
        )
        solution = solve(restricted, CLARABEL_SETTINGS, remaining_time(started, time_limit_s))
        iterations += int(solution.iterations)
        if str(solution.status) != "Solved":
            return None
        x = np.asarray(solution.x, dtype=np.float64)
        z = np.asarray(solution.z, dtype=np.float64)
        z_other = np.concatenate((z[:n_eq], z[n_eq + 2 * k :]))
        reduced = q_weights + on_weights.T @ z_other
        if scale != 0.0:
            reduced = reduced + scale * (sigma[:, working] @ x[:k])
        size = max(1.0, float(np.abs(q_weights).max(initial=0.0)), float(np.abs(z_other).max(initial=0.0)))
        if scale != 0.0:
            size = max(size, scale * float(np.diag(sigma).max()) * float(np.abs(x[:k]).sum()))
        violation = np.where(chosen | (model.upper <= 0.0), 0.0, -reduced)
        violators = np.flatnonzero(violation > REDUCED_COST_RTOL * size)
        if violators.size == 0:
            weights = np.zeros(n)
            weights[working] = x[:k]
            if sharpe:
                kappa = float(x[-1])
                if not kappa > 1e-12:
                    return None
                weights = weights / kappa
            return solution, weights, iterations
        chosen[violators[np.argsort(-violation[violators], kind="stable")[:WORKING_SET_START]]] = True


def _settings(overrides: dict[str, float], time_limit: float) -> Any:
    """Clarabel's settings: quiet, ``overrides`` (tolerances) and a time limit in seconds (inf: none)."""
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    for name, value in overrides.items():
        setattr(settings, name, value)
    settings.time_limit = time_limit
    return settings


def solve(program: ConicProgram, settings: dict[str, float], time_limit: float = float("inf")) -> Any:
    """One Clarabel solve of ``program`` (``clarabel.DefaultSolution``: x, status, iterations ...)."""
    solver = clarabel.DefaultSolver(
        program.P, program.q, program.A, program.b, program.cones(), _settings(settings, time_limit)
    )
    return solver.solve()


def _infeasible(model: ProblemModel, status: str) -> InfeasibleError:
    """The error of the cvxpy path (``solve_program``) for a solver-proved infeasible problem."""
    return InfeasibleError(
        "the solver proved the constraints infeasible (no portfolio meets all the constraints together)",
        precondition_violations=(
            PreconditionViolation(
                "SOLVER_INFEASIBLE", "constraints", f"{SOLVER} reported {status} for {model.objective}"
            ),
        ),
    )


class ClarabelDirectBackend:
    """Clarabel on matrices assembled with NumPy for the linear families (see the module docstring)."""

    solve_path = SOLVE_PATH

    def supports(self, model: ProblemModel) -> bool:
        """See :func:`supports`."""
        return supports(model)

    def solve(self, model: ProblemModel, *, started: float, time_limit_s: float | None) -> OptimizationResult | None:
        """The optimum from Clarabel called on the assembled program, or None.

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
            Through ``model.result`` (as every backend), with ``solver`` ``CLARABEL``, ``solve_path``
            ``CLARABEL_DIRECT`` and Clarabel's iteration count. Status ``OPTIMAL`` when Clarabel reports ``Solved``;
            on ``AlmostSolved`` the program is solved again with Clarabel's default tolerances, as the cvxpy path
            does, and the answer is ``OPTIMAL`` if that one is ``Solved``, else the first answer with
            ``OPTIMAL_INACCURATE``. None when Clarabel ends otherwise (numerical trouble, iteration limit, unbounded,
            a degenerate κ = 0): the next backend (cvxpy, with its SCS fallback) then answers.

        Raises
        ------
        InfeasibleError
            Clarabel proved the constraints infeasible (``SOLVER_INFEASIBLE``, as the cvxpy path).
        DeadlineExceededError
            No time was left before the solve, or Clarabel hit the time limit.
        """
        large = model.n_assets >= WORKING_SET_MIN_ASSETS
        program = build_program(model, quadratic=not large)
        if large:
            found = solve_working_set(model, program, started, time_limit_s)
            if found is not None:
                _, weights, iterations = found
                return model.result(
                    weights,
                    status="OPTIMAL",
                    solver=SOLVER,
                    iterations=iterations,
                    started=started,
                    solve_path=WORKING_SET_PATH,
                )
            program = build_program(model)  # the whole program, with its P
        solution = solve(program, CLARABEL_SETTINGS, remaining_time(started, time_limit_s))
        status = str(solution.status)
        if status == "AlmostSolved":
            retry = solve(program, {**CLARABEL_SETTINGS, **CLARABEL_DEFAULTS}, remaining_time(started, time_limit_s))
            if str(retry.status) == "Solved":
                solution, status = retry, "Solved"
        if status in ("PrimalInfeasible", "AlmostPrimalInfeasible"):
            raise _infeasible(model, "infeasible" if status == "PrimalInfeasible" else "infeasible_inaccurate")
        if status == "MaxTime":
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s or 0.0:.3f} s")
        if status not in ("Solved", "AlmostSolved"):
            return None
        x = np.asarray(solution.x, dtype=np.float64)
        raw = x[: model.n_assets]
        if program.homogenised:
            kappa = float(x[-1])
            if not kappa > 1e-12:
                return None  # degenerate: the cvxpy path decides (and reports it)
            raw = unscale(raw, kappa)
        return model.result(
            raw,
            status="OPTIMAL" if status == "Solved" else "OPTIMAL_INACCURATE",
            solver=SOLVER,
            iterations=int(solution.iterations),
            started=started,
            solve_path=SOLVE_PATH,
        )
