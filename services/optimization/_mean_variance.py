"""Mean-variance optimization (Markowitz, 1952) as convex programs solved by Clarabel through cvxpy.

Formulations (w: weights, μ: expected returns, Σ = F Fᵀ: covariance, l ≤ w ≤ u: bounds, A_s: sector
membership):

- min volatility: minimise wᵀΣw s.t. 1ᵀw = 1, l ≤ w ≤ u, sector bounds, [μᵀw ≥ r_min], [‖Fᵀw‖ ≤ σ_max];
- max return: maximise μᵀw under the same constraints (an LP, or an SOCP with σ_max);
- quadratic utility: maximise μᵀw − δ/2 wᵀΣw;
- max Sharpe: the homogenised problem of Cornuejols and Tütüncü (2007, §8.2) that PyPortfolioOpt also uses:
  minimise yᵀΣy s.t. (μ − r_f)ᵀy = 1, 1ᵀy = κ, κ ≥ 0, lκ ≤ y ≤ uκ, sector bounds times κ,
  [μᵀy ≥ r_min κ], [‖Fᵀy‖ ≤ σ_max κ]; then w = y / κ.

Each problem is checked for feasibility by cheap pre-checks first (named in the error), and the returned
weights are checked against every constraint independently of the solver's status.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import cvxpy as cp
import numpy as np

from services.errors import (
    DeadlineExceededError,
    InfeasibleError,
    InvalidInputError,
    OptimizationError,
    PreconditionViolation,
)
from services.types import (
    FloatArray,
    Moments,
    MultiObjectiveWeights,
    Objective,
    OptimizationResult,
    PortfolioPerformance,
    PortfolioProblem,
)

TOLERANCE = 1e-6
"""Tolerance of the post-solve constraint check (weights, sums, sector totals, return and volatility)."""
HELD_THRESHOLD = 1e-8
"""|w_i| above which a strategy counts as held (cardinality and minimum position size)."""

_SOLVER = "CLARABEL"
CLARABEL_SETTINGS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8}
_FALLBACK_SOLVER = "SCS"
SCS_SETTINGS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}
"""The fallback's settings: SCS (first-order, splitting) to its tightest practical accuracy."""
_DECISIVE = {
    cp.OPTIMAL,
    cp.OPTIMAL_INACCURATE,
    cp.INFEASIBLE,
    cp.INFEASIBLE_INACCURATE,
    cp.UNBOUNDED,
    cp.UNBOUNDED_INACCURATE,
}
"""Statuses that settle a solve; anything else (an error, a limit) goes to the fallback solver."""
CLARABEL_DEFAULTS = {"tol_gap_abs": 1e-8, "tol_gap_rel": 1e-8, "tol_feas": 1e-8, "tol_ktratio": 1e-6}
"""Clarabel's own defaults, passed explicitly on the fallback solve: cvxpy keeps a re-solved problem's solver
settings from the previous call unless they are given again."""
"""Tighter than Clarabel's defaults (1e-8): objective values agree with an exact solve to ~1e-10 relative for
about one extra interior-point iteration."""


@dataclass(frozen=True, slots=True)
class _SectorRows:
    name: str
    members: FloatArray  # (N,) 0/1 membership
    min_weight: float | None
    max_weight: float | None


def portfolio_performance(weights: FloatArray, moments: Moments, risk_free_rate: float) -> PortfolioPerformance:
    """Annualised expected return, volatility and Sharpe ratio of a weight vector.

    Parameters
    ----------
    weights : ndarray of shape (N,)
        Portfolio weights (fractions).
    moments : Moments
        Annualised expected returns (N,) and covariance (N, N).
    risk_free_rate : float
        Annualised risk-free rate (decimal).

    Returns
    -------
    PortfolioPerformance
        ``μᵀw + (1 − Σw)·r_f``, ``sqrt(wᵀΣw)`` and the Sharpe ratio ``(that − r_f) / sqrt(wᵀΣw)`` (0 when the
        volatility is 0). The cash leg ``(1 − Σw)·r_f`` is zero for fully invested weights; it matters only with
        net exposure bounds, where the part of the capital not invested earns the risk-free rate.
    """
    expected = float(moments.expected_returns @ weights) + (1.0 - float(weights.sum())) * risk_free_rate
    volatility = float(np.sqrt(max(float(weights @ moments.covariance @ weights), 0.0)))
    sharpe = (expected - risk_free_rate) / volatility if volatility > 0 else 0.0
    return PortfolioPerformance(expected_return=expected, volatility=volatility, sharpe_ratio=sharpe)


def _sector_rows(problem: PortfolioProblem) -> list[_SectorRows]:
    """One membership row per group limit, in any classification scheme (sector or ``classifications``)."""
    schemes = dict(problem.classifications)
    rows = []
    for k, limit in enumerate(problem.sector_limits):
        if limit.scheme:
            if limit.scheme not in schemes:
                known = ", ".join(sorted(schemes)) or "none"
                raise InvalidInputError.for_field(
                    f"constraints.sector_limits[{k}].scheme",
                    f"no strategy is classified under scheme '{limit.scheme}' (schemes given: {known})",
                )
            groups = schemes[limit.scheme]
        else:
            groups = problem.sectors
        members = np.array([1.0 if s == limit.sector else 0.0 for s in groups])
        if not members.any():
            where = f"scheme '{limit.scheme}'" if limit.scheme else "sector"
            raise InvalidInputError.for_field(
                f"constraints.sector_limits[{k}].sector", f"no strategy has {where} '{limit.sector}'"
            )
        name = f"{limit.scheme}:{limit.sector}" if limit.scheme else limit.sector
        rows.append(_SectorRows(name, members, limit.min_weight, limit.max_weight))
    return rows


def net_exposure_range(problem: PortfolioProblem) -> tuple[float, float] | None:
    """The net exposure bounds (low, high) of Σw (±inf where one side is open), or None for the budget Σw = 1.

    Raises
    ------
    InvalidInputError
        A NaN bound, or ``min_net_exposure`` above ``max_net_exposure``.
    """
    low, high = problem.min_net_exposure, problem.max_net_exposure
    if low is None and high is None:
        return None
    for value, name in ((low, "min_net_exposure"), (high, "max_net_exposure")):
        if value is not None and not np.isfinite(value):
            raise InvalidInputError.for_field(f"constraints.{name}", f"must be finite, got {value}")
    lo = -np.inf if low is None else float(low)
    hi = np.inf if high is None else float(high)
    if lo > hi:
        raise InvalidInputError.for_field(
            "constraints.min_net_exposure", f"min_net_exposure {lo:g} is above max_net_exposure {hi:g}"
        )
    return lo, hi


def budget_range(problem: PortfolioProblem) -> tuple[float, float]:
    """(low, high) of Σw: (1, 1) for a fully invested portfolio, else the net exposure bounds."""
    net = net_exposure_range(problem)
    return (1.0, 1.0) if net is None else net


def multi_objective_weights(problem: PortfolioProblem) -> MultiObjectiveWeights:
    """The validated weights of ``Objective.MULTI_OBJECTIVE``.

    Missing weights are the defaults of ``MultiObjectiveWeights`` (return 1, variance 1, turnover 0, L2 0).

    Raises
    ------
    InvalidInputError
        A negative or non-finite weight, or return and variance weights both zero
        (``risk_parameters.multi_objective.*``).
    """
    weights = problem.multi_objective if problem.multi_objective is not None else MultiObjectiveWeights()
    for name in ("return_weight", "variance_weight", "turnover_weight", "l2_weight"):
        value = getattr(weights, name)
        if not np.isfinite(value) or value < 0:
            raise InvalidInputError.for_field(
                f"risk_parameters.multi_objective.{name}", f"must be finite and non-negative, got {value:g}"
            )
    if weights.return_weight == 0 and weights.variance_weight == 0:
        raise InvalidInputError.for_field(
            "risk_parameters.multi_objective", "return_weight and variance_weight cannot both be 0"
        )
    return weights


@dataclass(frozen=True, slots=True)
class _Desk:
    """The desk constraint families of a problem, validated and resolved to arrays (None = family absent)."""

    current: FloatArray
    """w₀ (zeros when not given)."""
    turnover_limit: float | None
    turnover_caps: FloatArray | None
    """Per-name caps with inf where none; None when no cap is finite."""
    leverage_limit: float | None
    costs: FloatArray | None
    """Linear cost rates c_i/1e4 (fractions of traded value); None when absent or all zero."""
    benchmark: FloatArray | None
    """b, present only with a tracking-error limit."""
    tracking_error_limit: float | None
    betas: FloatArray | None
    """β, present only with a beta tolerance."""
    beta_tolerance: float | None

    @property
    def trades(self) -> bool:
        """Whether the program needs the trade variable t ≥ |w − w₀|."""
        return self.turnover_limit is not None or self.turnover_caps is not None or self.costs is not None

    def cost(self, weights: FloatArray) -> float:
        """Transaction cost cᵀ|w − w₀|/1e4 of moving from w₀ to ``weights`` (0 without costs)."""
        return 0.0 if self.costs is None else float(self.costs @ np.abs(weights - self.current))


def _desk_vector(value: FloatArray | None, field: str, n_assets: int, *, allow_inf: bool = False) -> FloatArray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (n_assets,):
        raise InvalidInputError.for_field(f"constraints.{field}", f"has {array.size} values for {n_assets} strategies")
    bad = np.flatnonzero(np.isnan(array) if allow_inf else ~np.isfinite(array))
    if bad.size:
        raise InvalidInputError.for_field(
            f"constraints.{field}[{int(bad[0])}]", "must be finite" if not allow_inf else "must not be NaN"
        )
    return array


def _desk_limit(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    if not np.isfinite(value) or value < 0:
        raise InvalidInputError.for_field(f"constraints.{field}", f"must be finite and non-negative, got {value:g}")
    return float(value)


def _desk(problem: PortfolioProblem) -> _Desk:
    """Validate and resolve the desk constraint families (turnover, leverage, costs, tracking error, beta).

    Raises
    ------
    InvalidInputError
        A wrong-length or non-finite vector, a negative limit, cap or cost, or a tracking-error limit without
        benchmark weights (beta tolerance without betas); the field is named ``constraints.<field>[i]``.
    """
    n = problem.n_assets
    current = _desk_vector(problem.current_weights, "current_weights", n)
    turnover_limit = _desk_limit(problem.turnover_limit, "turnover_limit")
    caps = _desk_vector(problem.turnover_caps, "turnover_caps", n, allow_inf=True)
    if caps is not None:
        bad = np.flatnonzero(caps < 0)
        if bad.size:
            raise InvalidInputError.for_field(f"constraints.turnover_caps[{int(bad[0])}]", "must be non-negative")
        if not np.isfinite(caps).any():
            caps = None
    leverage_limit = _desk_limit(problem.leverage_limit, "leverage_limit")
    costs = _desk_vector(problem.transaction_costs_bps, "transaction_costs_bps", n)
    if costs is not None:
        bad = np.flatnonzero(costs < 0)
        if bad.size:
            raise InvalidInputError.for_field(
                f"constraints.transaction_costs_bps[{int(bad[0])}]", "must be non-negative"
            )
        costs = costs / 1e4 if costs.any() else None
    tracking_error_limit = _desk_limit(problem.tracking_error_limit, "tracking_error_limit")
    benchmark = _desk_vector(problem.benchmark_weights, "benchmark_weights", n)
    if tracking_error_limit is None:
        benchmark = None
    elif benchmark is None:
        raise InvalidInputError.for_field("constraints.benchmark_weights", "required with a tracking_error_limit")
    beta_tolerance = _desk_limit(problem.beta_tolerance, "beta_tolerance")
    betas = _desk_vector(problem.betas, "betas", n)
    if beta_tolerance is None:
        betas = None
    elif betas is None:
        raise InvalidInputError.for_field("constraints.betas", "required with a beta_tolerance")
    return _Desk(
        current=current if current is not None else np.zeros(n),
        turnover_limit=turnover_limit,
        turnover_caps=caps,
        leverage_limit=leverage_limit,
        costs=costs,
        benchmark=benchmark,
        tracking_error_limit=tracking_error_limit,
        betas=betas,
        beta_tolerance=beta_tolerance,
    )


def max_achievable_return(
    expected_returns: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    budget: tuple[float, float] = (1.0, 1.0),
) -> float:
    """Largest μᵀw over l ≤ w ≤ u with low ≤ Σw ≤ high (bounds only): the LP's greedy closed form.

    Start at l; by descending μ, add what positive μ_i can take up to ``high``, and what ``low`` still forces
    where μ_i ≤ 0 (largest first).

    Parameters
    ----------
    expected_returns : ndarray of shape (N,)
        Annualised expected returns μ (or any linear coefficients, e.g. betas).
    lower, upper : ndarray of shape (N,)
        Weight bounds with Σl ≤ high and Σu ≥ low.
    budget : tuple of float
        (low, high) of Σw; default (1, 1), the fully invested budget.

    Returns
    -------
    float
        The maximum; it ignores sector limits, so it bounds from above the value a constrained problem can reach.
    """
    weights = lower.astype(np.float64).copy()
    need = budget[0] - weights.sum()  # still to add (≤ 0: nothing forced)
    room = budget[1] - weights.sum()  # may add at most
    for i in np.argsort(-expected_returns, kind="stable"):
        if room <= 0:
            break
        take = min(upper[i] - lower[i], room) if expected_returns[i] > 0 else min(upper[i] - lower[i], need)
        if take <= 0:
            continue
        weights[i] += take
        need -= take
        room -= take
    return float(expected_returns @ weights)


def precheck(problem: PortfolioProblem, moments: Moments) -> None:
    """Cheap feasibility checks that name the conflicting constraints before any solve.

    Parameters
    ----------
    problem : PortfolioProblem
        The problem.
    moments : Moments
        Its annualised moments.

    Raises
    ------
    InvalidInputError
        A lower bound above its upper bound, or a sector minimum above its maximum.
    InfeasibleError
        With ``PreconditionViolation`` details: ``BOUNDS_SUM`` (Σ lower > 1 or Σ upper < 1), ``SECTOR_MINIMA``
        (sector minima sum above 1), ``SECTOR_BOUNDS`` (a sector limit its members' bounds cannot meet),
        ``TARGET_RETURN`` (min_return above the highest return the bounds allow), ``NO_EXCESS_RETURN`` (max
        Sharpe where no portfolio within the bounds beats the risk-free rate). All hold with shorting allowed.
    """
    lower, upper = problem.lower_bounds, problem.upper_bounds
    crossed = np.flatnonzero(lower > upper + 1e-12)
    if crossed.size:
        sid = problem.strategy_ids[int(crossed[0])]
        raise InvalidInputError.for_field(
            f"constraints.strategy_bounds[{sid}]",
            f"min_weight {lower[crossed[0]]:g} is above max_weight {upper[crossed[0]]:g}",
        )
    violations: list[PreconditionViolation] = []
    budget = budget_range(problem)
    low_name = "1" if problem.min_net_exposure is None else "min_net_exposure"
    high_name = "1" if problem.max_net_exposure is None else "max_net_exposure"
    if problem.min_net_exposure is None and problem.max_net_exposure is not None:
        low_name = "-inf"
    if problem.max_net_exposure is None and problem.min_net_exposure is not None:
        high_name = "inf"
    if lower.sum() > budget[1] + 1e-9:
        violations.append(
            PreconditionViolation(
                "BOUNDS_SUM",
                "constraints.min_weight",
                f"minimum weights sum to {lower.sum():.6g} > {high_name} ({budget[1]:g})",
            )
        )
    if upper.sum() < budget[0] - 1e-9:
        violations.append(
            PreconditionViolation(
                "BOUNDS_SUM",
                "constraints.max_weight",
                f"maximum weights sum to {upper.sum():.6g} < {low_name} ({budget[0]:g})",
            )
        )
    if problem.objective is Objective.MULTI_OBJECTIVE:
        multi_objective_weights(problem)
    rows = _sector_rows(problem)
    # The least total weight the group minima of one scheme force: each limited group holds at least max(its
    # minimum, its members' lower bounds); every other strategy at least its lower bound (negative when shorting).
    for k, row in enumerate(rows):
        subject = f"constraints.sector_limits[{k}]"
        if row.min_weight is not None and row.max_weight is not None and row.min_weight > row.max_weight:
            raise InvalidInputError.for_field(
                subject, f"min_weight {row.min_weight:g} is above max_weight {row.max_weight:g}"
            )
        if row.min_weight is not None:
            reachable = float(row.members @ upper)
            if row.min_weight > reachable + 1e-9:
                violations.append(
                    PreconditionViolation(
                        "SECTOR_BOUNDS",
                        subject,
                        f"sector '{row.name}' minimum {row.min_weight:g} exceeds its members' maximum weights "
                        f"({reachable:.6g})",
                    )
                )
        if row.max_weight is not None:
            floor = float(row.members @ lower)
            if row.max_weight < floor - 1e-9:
                violations.append(
                    PreconditionViolation(
                        "SECTOR_BOUNDS",
                        subject,
                        f"sector '{row.name}' maximum {row.max_weight:g} is below its members' minimum weights "
                        f"({floor:.6g})",
                    )
                )
    # Rows of different schemes overlap, so the sum of minima is a valid bound only within one scheme.
    for scheme in sorted({limit.scheme for limit in problem.sector_limits}):
        in_scheme = [row for row, limit in zip(rows, problem.sector_limits, strict=True) if limit.scheme == scheme]
        if not any(r.min_weight is not None for r in in_scheme):
            continue
        covered = np.zeros(problem.n_assets, dtype=bool)
        forced = 0.0
        for row in in_scheme:
            covered |= row.members > 0
            forced += max(row.min_weight if row.min_weight is not None else -np.inf, float(row.members @ lower))
        forced += float(lower[~covered].sum())
        if forced > budget[1] + 1e-9:
            label = f"scheme '{scheme}' group" if scheme else "sector"
            violations.append(
                PreconditionViolation(
                    "SECTOR_MINIMA",
                    "constraints.sector_limits",
                    f"{label} minima (with the other strategies at their lower bounds) sum to {forced:.6g} > "
                    f"{budget[1]:g}",
                )
            )
    mu = moments.expected_returns
    bounds_ok = lower.sum() <= budget[1] + 1e-9 and upper.sum() >= budget[0] - 1e-9
    if bounds_ok:
        best = max_achievable_return(mu, lower, upper, budget)
        best_excess = max_achievable_return(mu - problem.risk_free_rate, lower, upper, budget)
        if net_exposure_range(problem) is not None:
            # The cash leg (1 − Σw)·r_f: the best total return is r_f + the best excess return.
            best = problem.risk_free_rate + best_excess
    else:  # already infeasible; long-only, no portfolio can beat the best single return either
        best = float(mu.max()) if float(lower.min()) >= 0 else float("inf")
        best_excess = best - problem.risk_free_rate
    if problem.min_return is not None and problem.min_return > best + 1e-12:
        violations.append(
            PreconditionViolation(
                "TARGET_RETURN",
                "constraints.min_return",
                f"min_return {problem.min_return:g} is above the highest expected return the weight bounds allow "
                f"({best:.6g})",
            )
        )
    if problem.objective is Objective.MAX_SHARPE and best_excess <= 0:
        violations.append(
            PreconditionViolation(
                "NO_EXCESS_RETURN",
                "risk_parameters.risk_free_rate",
                f"max Sharpe needs a portfolio with expected return above the risk-free rate "
                f"{problem.risk_free_rate:g}; the highest the weight bounds allow is {best:.6g}",
            )
        )
    violations += _desk_violations(problem, _desk(problem), bounds_ok, budget)
    if violations:
        raise InfeasibleError(
            "infeasible constraints: " + "; ".join(v.description for v in violations),
            precondition_violations=tuple(violations),
        )


def _desk_violations(
    problem: PortfolioProblem, desk: _Desk, bounds_ok: bool, budget: tuple[float, float]
) -> list[PreconditionViolation]:
    """Pre-checks of the desk families; each names a necessary condition of feasibility."""
    lower, upper, current = problem.lower_bounds, problem.upper_bounds, desk.current
    found: list[PreconditionViolation] = []
    if desk.turnover_limit is not None:
        # Σ|w − w₀| ≥ |Σ(w − w₀)| ≥ the distance of Σw₀ to the budget [low, high], and ≥ the distance of w₀ to
        # the bounds' box.
        held = float(current.sum())
        budget_gap = max(budget[0] - held, held - budget[1], 0.0)
        box_gap = float(np.sum(np.maximum(lower - current, 0.0) + np.maximum(current - upper, 0.0)))
        needed = max(budget_gap, box_gap)
        if needed > desk.turnover_limit + 1e-9:
            found.append(
                PreconditionViolation(
                    "TURNOVER",
                    "constraints.turnover_limit",
                    f"turnover_limit {desk.turnover_limit:g} is below the turnover the budget and weight bounds "
                    f"force ({needed:.6g})",
                )
            )
    if desk.turnover_caps is not None:
        # Each name is confined to [w₀ − cap, w₀ + cap] ∩ [l, u]; those intervals must be non-empty and admit Σw = 1.
        low = np.maximum(lower, current - desk.turnover_caps)
        high = np.minimum(upper, current + desk.turnover_caps)
        empty = np.flatnonzero(low > high + 1e-9)
        if empty.size:
            i = int(empty[0])
            found.append(
                PreconditionViolation(
                    "TURNOVER",
                    f"constraints.turnover_caps[{i}]",
                    f"{problem.strategy_ids[i]}: no weight within cap {desk.turnover_caps[i]:g} of its current "
                    f"weight {current[i]:g} lies within its bounds [{lower[i]:g}, {upper[i]:g}]",
                )
            )
        elif bounds_ok and (low.sum() > budget[1] + 1e-9 or high.sum() < budget[0] - 1e-9):
            found.append(
                PreconditionViolation(
                    "TURNOVER",
                    "constraints.turnover_caps",
                    f"within the per-name turnover caps the weights sum to between {low.sum():.6g} and "
                    f"{high.sum():.6g}, never within [{budget[0]:g}, {budget[1]:g}]",
                )
            )
    # Gross exposure Σ|w| ≥ |Σw| ≥ the distance of 0 to the budget [low, high].
    least_gross = max(budget[0], -budget[1], 0.0)
    if desk.leverage_limit is not None and desk.leverage_limit < least_gross - 1e-9:
        found.append(
            PreconditionViolation(
                "LEVERAGE",
                "constraints.leverage_limit",
                f"leverage_limit {desk.leverage_limit:g} < {least_gross:g}: weights with net exposure in "
                f"[{budget[0]:g}, {budget[1]:g}] have gross exposure Σ|w| ≥ {least_gross:g}",
            )
        )
    if desk.betas is not None and desk.beta_tolerance is not None and bounds_ok:
        highest = max_achievable_return(desk.betas, lower, upper, budget)
        lowest = -max_achievable_return(-desk.betas, lower, upper, budget)
        if lowest > desk.beta_tolerance + 1e-9 or highest < -desk.beta_tolerance - 1e-9:
            found.append(
                PreconditionViolation(
                    "BETA",
                    "constraints.beta_tolerance",
                    f"the weight bounds allow portfolio betas in [{lowest:.6g}, {highest:.6g}], outside "
                    f"±{desk.beta_tolerance:g}",
                )
            )
    return found


def _covariance_factor(covariance: FloatArray) -> FloatArray:
    """F with F Fᵀ = Σ (Cholesky, or the eigen-factor for a singular Σ)."""
    try:
        return np.asarray(np.linalg.cholesky(covariance), dtype=np.float64)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        return np.asarray(eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None)), dtype=np.float64)


def check_constraints(weights: FloatArray, problem: PortfolioProblem, moments: Moments) -> tuple[str, ...]:
    """Every constraint the weights violate by more than ``TOLERANCE``.

    Parameters
    ----------
    weights : ndarray of shape (N,)
        Weights to check.
    problem : PortfolioProblem
        The constraints.
    moments : Moments
        Annualised moments for the return and volatility constraints.

    Returns
    -------
    tuple of str
        One description per violated constraint; empty when all hold.
    """
    found: list[str] = []
    net = net_exposure_range(problem)
    total = float(weights.sum())
    if net is None and abs(total - 1.0) > TOLERANCE:
        found.append(f"weights sum to {total:.9g}, not 1")
    if net is not None and total < net[0] - TOLERANCE:
        found.append(f"net exposure {total:.9g} below {net[0]:g}")
    if net is not None and total > net[1] + TOLERANCE:
        found.append(f"net exposure {total:.9g} above {net[1]:g}")
    held = np.abs(weights) > HELD_THRESHOLD
    if problem.max_holdings is not None and int(held.sum()) > problem.max_holdings:
        found.append(f"{int(held.sum())} holdings above max_holdings {problem.max_holdings}")
    if problem.min_position_weight is not None:
        for i in np.flatnonzero(held & (np.abs(weights) < problem.min_position_weight - TOLERANCE)):
            found.append(
                f"{problem.strategy_ids[i]} weight {weights[i]:.9g} held below min_position_weight "
                f"{problem.min_position_weight:g}"
            )
    for i in np.flatnonzero(weights < problem.lower_bounds - TOLERANCE):
        found.append(f"{problem.strategy_ids[i]} weight {weights[i]:.9g} below {problem.lower_bounds[i]:g}")
    for i in np.flatnonzero(weights > problem.upper_bounds + TOLERANCE):
        found.append(f"{problem.strategy_ids[i]} weight {weights[i]:.9g} above {problem.upper_bounds[i]:g}")
    for row in _sector_rows(problem):
        total = float(row.members @ weights)
        if row.min_weight is not None and total < row.min_weight - TOLERANCE:
            found.append(f"sector {row.name} weight {total:.9g} below {row.min_weight:g}")
        if row.max_weight is not None and total > row.max_weight + TOLERANCE:
            found.append(f"sector {row.name} weight {total:.9g} above {row.max_weight:g}")
    desk = _desk(problem)
    performance = portfolio_performance(weights, moments, problem.risk_free_rate)
    net_return = performance.expected_return - desk.cost(weights)
    if problem.min_return is not None and net_return < problem.min_return - TOLERANCE:
        found.append(f"expected return net of costs {net_return:.9g} below {problem.min_return:g}")
    if problem.max_volatility is not None and performance.volatility > problem.max_volatility + TOLERANCE:
        found.append(f"volatility {performance.volatility:.9g} above {problem.max_volatility:g}")
    if problem.objective is Objective.MULTI_OBJECTIVE:
        multi_objective_weights(problem)
    trades = np.abs(weights - desk.current)
    if desk.turnover_limit is not None and trades.sum() > desk.turnover_limit + TOLERANCE:
        found.append(f"turnover {trades.sum():.9g} above {desk.turnover_limit:g}")
    if desk.turnover_caps is not None:
        for i in np.flatnonzero(trades > desk.turnover_caps + TOLERANCE):
            found.append(f"{problem.strategy_ids[i]} trade {trades[i]:.9g} above its cap {desk.turnover_caps[i]:g}")
    gross = float(np.abs(weights).sum())
    if desk.leverage_limit is not None and gross > desk.leverage_limit + TOLERANCE:
        found.append(f"leverage {gross:.9g} above {desk.leverage_limit:g}")
    if desk.benchmark is not None and desk.tracking_error_limit is not None:
        active = weights - desk.benchmark
        tracking_error = float(np.sqrt(max(float(active @ moments.covariance @ active), 0.0)))
        if tracking_error > desk.tracking_error_limit + TOLERANCE:
            found.append(f"tracking error {tracking_error:.9g} above {desk.tracking_error_limit:g}")
    if desk.betas is not None and desk.beta_tolerance is not None:
        beta = float(desk.betas @ weights)
        if abs(beta) > desk.beta_tolerance + TOLERANCE:
            found.append(f"portfolio beta {beta:.9g} outside ±{desk.beta_tolerance:g}")
    return tuple(found)


PARAMETRIC_MAX_ASSETS = 64
"""Up to this N a compiled program is cached per problem shape and re-solved with new parameter values (cvxpy
DPP: no re-canonicalisation; 13 ms -> 4 ms at N = 20). Above it the covariance enters as a constant quadratic
form, which Clarabel solves faster than the dense factor a parametric program needs (measured crossover between
N = 60 and 80 on this project's 2-core machine)."""
_CACHE_SIZE = 32


@dataclass(frozen=True, slots=True)
class _Shape:
    """What determines the structure of the convex program (its cache key)."""

    objective: Objective
    n_assets: int
    sector_minima: int
    sector_maxima: int
    min_return: bool
    max_volatility: bool
    parametric: bool
    turnover: bool = False
    turnover_caps: bool = False
    leverage: bool = False
    costs: bool = False
    tracking_error: bool = False
    beta: bool = False
    net_min: bool = False
    net_max: bool = False
    turnover_penalty: bool = False
    l2: bool = False


class _Program:
    """One mean-variance program in cvxpy with every datum a ``Parameter`` (except Σ above the DPP size).

    With ``scale`` = 1 it is the plain problem over weights x; for max Sharpe ``scale`` is the homogenising
    variable κ (x = κ·w) and the budget becomes ``(μ − r_f)ᵀx = 1``, ``1ᵀx = κ``.
    """

    def __init__(self, shape: _Shape, covariance: FloatArray | None) -> None:
        n = shape.n_assets
        self.shape = shape
        self.x = x = cp.Variable(n)
        self.lower, self.upper = cp.Parameter(n), cp.Parameter(n)
        self.mu = cp.Parameter(n)
        self.factor = cp.Parameter((n, n)) if shape.parametric else None
        sharpe = shape.objective is Objective.MAX_SHARPE
        scale: cp.Expression | float
        self.kappa: cp.Variable | None = None
        self.net_low, self.net_high = cp.Parameter(), cp.Parameter()
        if sharpe:
            self.excess = cp.Parameter(n)
            self.kappa = kappa = cp.Variable(nonneg=True)
            scale = kappa
            constraints = [self.excess @ x == 1]
        else:
            scale = 1.0
            constraints = []
        if shape.net_min or shape.net_max:
            # Net exposure bounds replace the budget; the rest of the capital is cash at r_f.
            if shape.net_min:
                constraints.append(cp.sum(x) >= self.net_low * scale)
            if shape.net_max:
                constraints.append(cp.sum(x) <= self.net_high * scale)
        else:
            constraints.append(cp.sum(x) == scale)
        constraints += [x >= cp.multiply(self.lower, scale), x <= cp.multiply(self.upper, scale)]
        self.sector_min_matrix = self.sector_min = self.sector_max_matrix = self.sector_max = None
        if shape.sector_minima:
            self.sector_min_matrix = cp.Parameter((shape.sector_minima, n))
            self.sector_min = cp.Parameter(shape.sector_minima)
            constraints.append(self.sector_min_matrix @ x >= cp.multiply(self.sector_min, scale))
        if shape.sector_maxima:
            self.sector_max_matrix = cp.Parameter((shape.sector_maxima, n))
            self.sector_max = cp.Parameter(shape.sector_maxima)
            constraints.append(self.sector_max_matrix @ x <= cp.multiply(self.sector_max, scale))
        # Desk families. Parameter-times-parameter-dependent products break DPP, so trades t ≥ |x − w₀·scale| and
        # the active position z = x − b·scale are variables of their own.
        self.current = cp.Parameter(n)
        self.turnover_limit = cp.Parameter(nonneg=True)
        self.turnover_caps = cp.Parameter(n, nonneg=True)
        self.costs = cp.Parameter(n, nonneg=True)
        self.leverage_limit = cp.Parameter(nonneg=True)
        self.benchmark = cp.Parameter(n)
        self.tracking_error_limit = cp.Parameter(nonneg=True)
        self.betas = cp.Parameter(n)
        self.beta_tolerance = cp.Parameter(nonneg=True)
        self.risk_free = cp.Parameter()
        self.cash_return = cp.Parameter()
        """a·r_f of the multi-objective's cash leg (a product of two parameters is not DPP)."""
        net_return: cp.Expression = self.mu @ x
        if shape.net_min or shape.net_max:
            net_return = net_return + self.risk_free * (scale - cp.sum(x))
        cost: cp.Expression | float = 0.0
        trades: cp.Variable | None = None
        if shape.turnover or shape.turnover_caps or shape.costs or shape.turnover_penalty:
            trades = cp.Variable(n, nonneg=True)
            moved = x - cp.multiply(self.current, scale)
            constraints += [trades >= moved, trades >= -moved]
            if shape.turnover:
                constraints.append(cp.sum(trades) <= self.turnover_limit * scale)
            if shape.turnover_caps:
                constraints.append(trades <= cp.multiply(self.turnover_caps, scale))
            if shape.costs:
                cost = self.costs @ trades
                net_return = net_return - cost
        if shape.leverage:
            constraints.append(cp.norm1(x) <= self.leverage_limit * scale)
        if shape.beta:
            exposure = self.betas @ x
            constraints += [exposure <= self.beta_tolerance * scale, exposure >= -self.beta_tolerance * scale]
        if sharpe and shape.costs:
            # Net excess return (μ − r_f)ᵀy − cᵀ|y − w₀κ| ≥ 1: concave ≥ constant; tight at the optimum.
            constraints[0] = self.excess @ x - cost >= 1
        self.min_return = cp.Parameter()
        if shape.min_return:
            constraints.append(net_return >= self.min_return * scale)
        # Every linear family so far; _cardinality builds its mixed-integer master on them (the cones below
        # become its cuts).
        self.linear_constraints: list[cp.Constraint] = list(constraints)
        self.scale, self.net_return, self.trades = scale, net_return, trades
        self.max_volatility = cp.Parameter(nonneg=True)
        factor: cp.Parameter | FloatArray | None = self.factor
        if factor is None and (shape.max_volatility or shape.tracking_error):
            assert covariance is not None
            factor = _covariance_factor(covariance)
        if shape.max_volatility:
            assert factor is not None
            constraints.append(cp.norm(factor.T @ x, 2) <= self.max_volatility * scale)
        if shape.tracking_error:
            assert factor is not None
            active = cp.Variable(n)
            constraints += [
                active == x - cp.multiply(self.benchmark, scale),
                cp.norm(factor.T @ active, 2) <= self.tracking_error_limit * scale,
            ]

        def risk(v: cp.Variable) -> cp.Expression:
            if self.factor is not None:
                return cast(cp.Expression, cp.sum_squares(self.factor.T @ v))
            assert covariance is not None
            # Validated PSD: psd_wrap skips cvxpy's own eigenvalue check.
            return cast(cp.Expression, cp.quad_form(v, cp.psd_wrap(covariance)))

        self.half_risk_aversion = cp.Parameter(nonneg=True)
        self.return_weight = cp.Parameter(nonneg=True)
        self.turnover_weight = cp.Parameter(nonneg=True)
        self.l2_weight = cp.Parameter(nonneg=True)
        self.objective_factor = cp.Parameter((n, n)) if shape.parametric else None
        objective: cp.Minimize | cp.Maximize
        if sharpe or shape.objective is Objective.MIN_VOLATILITY:
            objective = cp.Minimize(risk(x))
        elif shape.objective is Objective.MAX_RETURN:
            objective = cp.Maximize(net_return)
        elif shape.objective is Objective.MULTI_OBJECTIVE:
            # a·μᵀw is not DPP (parameter times parameter-affine): μ and c are pre-multiplied by a in set_values
            # (``mu_scaled``, ``costs_scaled``); b·wᵀΣw uses its own factor sqrt(b)·F (parametric) or b·Σ.
            self.mu_scaled = cp.Parameter(n)
            gain: cp.Expression = self.mu_scaled @ x
            if shape.net_min or shape.net_max:
                gain = gain + self.cash_return * (1.0 - cp.sum(x))  # a·r_f, one parameter (DPP)
            if shape.costs:
                assert trades is not None
                self.costs_scaled = cp.Parameter(n, nonneg=True)
                gain = gain - self.costs_scaled @ trades
            if self.objective_factor is not None:
                penalty: cp.Expression = cp.sum_squares(self.objective_factor.T @ x)
            else:
                assert covariance is not None
                penalty = self.half_risk_aversion * cp.quad_form(x, cp.psd_wrap(covariance))
            if shape.turnover_penalty:
                assert trades is not None
                penalty = penalty + self.turnover_weight * cp.sum(trades)
            if shape.l2:
                penalty = penalty + self.l2_weight * cp.sum_squares(x)
            objective = cp.Maximize(gain - penalty)
        elif self.factor is not None:
            # DPP forbids a parameter times a parametric quadratic: δ/2 is folded into the factor instead
            # (see ``risk_scale`` in ``set_values``).
            objective = cp.Maximize(net_return - risk(x))
        else:
            objective = cp.Maximize(net_return - self.half_risk_aversion * risk(x))
        self.problem = cp.Problem(objective, constraints)

    def set_values(self, problem: PortfolioProblem, rows: list[_SectorRows], moments: Moments) -> None:
        """Load one problem's data into the parameters."""
        mu = moments.expected_returns
        self.lower.value, self.upper.value = problem.lower_bounds, problem.upper_bounds
        self.mu.value = mu
        if self.shape.objective is Objective.MAX_SHARPE:
            self.excess.value = mu - problem.risk_free_rate
        # Parametric utility programs hold sqrt(δ/2)·F, so that sum_squares(factorᵀx) = δ/2·xᵀΣx; the volatility
        # cap on the same factor is scaled alike.
        risk_scale = 1.0
        if self.factor is not None and self.shape.objective is Objective.MAX_QUADRATIC_UTILITY:
            risk_scale = float(np.sqrt(0.5 * problem.risk_aversion))
        if self.factor is not None:
            self.factor.value = _covariance_factor(moments.covariance) * risk_scale
        minima = [r for r in rows if r.min_weight is not None]
        maxima = [r for r in rows if r.max_weight is not None]
        if self.sector_min_matrix is not None and self.sector_min is not None:
            self.sector_min_matrix.value = np.array([r.members for r in minima])
            self.sector_min.value = np.array([r.min_weight for r in minima], dtype=np.float64)
        if self.sector_max_matrix is not None and self.sector_max is not None:
            self.sector_max_matrix.value = np.array([r.members for r in maxima])
            self.sector_max.value = np.array([r.max_weight for r in maxima], dtype=np.float64)
        self.min_return.value = problem.min_return if problem.min_return is not None else 0.0
        self.max_volatility.value = risk_scale * (problem.max_volatility if problem.max_volatility is not None else 0.0)
        self.half_risk_aversion.value = 0.5 * problem.risk_aversion
        self.risk_free.value = problem.risk_free_rate
        net = net_exposure_range(problem)
        self.net_low.value = net[0] if net is not None and np.isfinite(net[0]) else 0.0
        self.net_high.value = net[1] if net is not None and np.isfinite(net[1]) else 0.0
        desk = _desk(problem)
        if self.shape.objective is Objective.MULTI_OBJECTIVE:
            weights = multi_objective_weights(problem)
            self.return_weight.value = weights.return_weight
            self.cash_return.value = weights.return_weight * problem.risk_free_rate
            self.turnover_weight.value = weights.turnover_weight
            self.l2_weight.value = weights.l2_weight
            self.mu_scaled.value = weights.return_weight * mu
            if self.shape.costs:
                assert desk.costs is not None
                self.costs_scaled.value = weights.return_weight * desk.costs
            if self.objective_factor is not None:
                self.objective_factor.value = _covariance_factor(moments.covariance) * np.sqrt(weights.variance_weight)
            else:
                self.half_risk_aversion.value = weights.variance_weight
        n = problem.n_assets
        self.current.value = desk.current
        self.turnover_limit.value = desk.turnover_limit if desk.turnover_limit is not None else 0.0
        if desk.turnover_caps is not None:
            # An infinite cap becomes one no feasible weight can reach: |w − w₀| ≤ max(|l|, |u|) + |w₀|.
            reach = np.maximum(np.abs(problem.lower_bounds), np.abs(problem.upper_bounds)) + np.abs(desk.current) + 1.0
            reach = np.where(np.isfinite(reach), reach, 1e6)
            self.turnover_caps.value = np.where(np.isfinite(desk.turnover_caps), desk.turnover_caps, reach)
        else:
            self.turnover_caps.value = np.zeros(n)
        self.costs.value = desk.costs if desk.costs is not None else np.zeros(n)
        self.leverage_limit.value = desk.leverage_limit if desk.leverage_limit is not None else 0.0
        self.benchmark.value = desk.benchmark if desk.benchmark is not None else np.zeros(n)
        te_limit = desk.tracking_error_limit if desk.tracking_error_limit is not None else 0.0
        self.tracking_error_limit.value = risk_scale * te_limit  # same factor scaling as the volatility cap
        self.betas.value = desk.betas if desk.betas is not None else np.zeros(n)
        self.beta_tolerance.value = desk.beta_tolerance if desk.beta_tolerance is not None else 0.0


_PROGRAMS: OrderedDict[_Shape, _Program] = OrderedDict()


def _program(problem: PortfolioProblem, rows: list[_SectorRows], covariance: FloatArray) -> _Program:
    """The cached program of this problem's shape (small N), or a new one built around Σ (large N)."""
    desk = _desk(problem)
    mo = multi_objective_weights(problem) if problem.objective is Objective.MULTI_OBJECTIVE else None
    shape = _Shape(
        turnover=desk.turnover_limit is not None,
        turnover_caps=desk.turnover_caps is not None,
        leverage=desk.leverage_limit is not None,
        costs=desk.costs is not None,
        tracking_error=desk.tracking_error_limit is not None,
        beta=desk.beta_tolerance is not None,
        net_min=problem.min_net_exposure is not None,
        net_max=problem.max_net_exposure is not None,
        turnover_penalty=mo is not None and mo.turnover_weight > 0,
        l2=mo is not None and mo.l2_weight > 0,
        objective=problem.objective,
        n_assets=problem.n_assets,
        sector_minima=sum(r.min_weight is not None for r in rows),
        sector_maxima=sum(r.max_weight is not None for r in rows),
        min_return=problem.min_return is not None,
        max_volatility=problem.max_volatility is not None,
        parametric=problem.n_assets <= PARAMETRIC_MAX_ASSETS,
    )
    if not shape.parametric:
        return _Program(shape, covariance)
    program = _PROGRAMS.get(shape)
    if program is None:
        program = _PROGRAMS[shape] = _Program(shape, None)
        if len(_PROGRAMS) > _CACHE_SIZE:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(shape)
    return program


def objective_value_of(weights: FloatArray, problem: PortfolioProblem, moments: Moments) -> float:
    """The objective of ``problem`` at ``weights``, net of transaction costs.

    With ``transaction_costs_bps`` the expected return in the objective is μᵀw − cᵀ|w − w₀|/1e4: max Sharpe
    reports (μᵀw − cost − r_f)/σ, max return μᵀw − cost, quadratic utility μᵀw − cost − δ/2·wᵀΣw; min volatility
    reports the variance wᵀΣw (costs only enter through min_return), the multi-objective
    a·(μᵀw − cost) − b·wᵀΣw − g·Σ|w − w₀| − λ·‖w‖². ``portfolio_performance`` stays gross.
    """
    performance = portfolio_performance(weights, moments, problem.risk_free_rate)
    desk = _desk(problem)
    net_return = performance.expected_return - desk.cost(weights)
    variance = performance.volatility**2
    if problem.objective is Objective.MULTI_OBJECTIVE:
        mo = multi_objective_weights(problem)
        turnover = float(np.abs(weights - desk.current).sum())
        return (
            mo.return_weight * net_return
            - mo.variance_weight * variance
            - mo.turnover_weight * turnover
            - mo.l2_weight * float(weights @ weights)
        )
    if problem.objective is Objective.MAX_SHARPE:
        volatility = performance.volatility
        return (net_return - problem.risk_free_rate) / volatility if volatility > 0 else 0.0
    if problem.objective is Objective.MIN_VOLATILITY:
        return variance
    if problem.objective is Objective.MAX_RETURN:
        return net_return
    return net_return - 0.5 * problem.risk_aversion * variance


def _solve(
    cvx_problem: cp.Problem,
    options: Mapping[str, float | str],
    *,
    started: float,
    time_limit_s: float | None,
    solver: str = _SOLVER,
) -> str:
    """Run the solver once; return the cvxpy status (solver failures become domain errors)."""
    # Always set the time limit: a cached program would otherwise keep the previous call's (cvxpy re-uses the
    # solver object and its settings between solves of the same problem).
    remaining = float("inf")
    if time_limit_s is not None:
        remaining = time_limit_s - (time.perf_counter() - started)
        if remaining <= 0:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s")
    if solver == _SOLVER:
        options = {**options, "time_limit": remaining}
    else:  # SCS: 0 means no limit
        options = {**options, "time_limit_secs": remaining if np.isfinite(remaining) else 0.0}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")  # reported in the status
            cvx_problem.solve(solver=solver, **options)  # type: ignore[no-untyped-call]
    except cp.error.SolverError as exc:
        if time_limit_s is not None and time.perf_counter() - started >= time_limit_s:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s") from exc
        raise OptimizationError(f"{solver} failed: {exc}") from exc
    return str(cvx_problem.status)


@dataclass(frozen=True, slots=True)
class SolveOutcome:
    """How a convex program was solved."""

    status: str
    """``OPTIMAL`` or ``OPTIMAL_INACCURATE``."""
    solver: str
    """The solver whose answer the program's variables hold."""
    fallback_used: bool
    """Whether Clarabel failed and SCS answered."""


def solve_program(
    cvx_problem: cp.Problem,
    settings: Mapping[str, float | str],
    *,
    description: str,
    started: float,
    time_limit_s: float | None,
) -> SolveOutcome:
    """Solve with Clarabel (its defaults if the given tolerances prove out of reach, SCS if it fails).

    Every program of the engine (mean-variance, CVaR/MAD/CDaR, robust) is solved here, so they share the
    tolerance retry, the fallback and the mapping of solver outcomes to domain errors.

    Parameters
    ----------
    cvx_problem : cvxpy.Problem
        The program; its variables hold the solution on return.
    settings : dict
        Clarabel settings of the first attempt.
    description : str
        What was solved, for error messages (e.g. ``MIN_VOLATILITY with CVAR``).
    started : float
        ``time.perf_counter()`` at the start of the call, for ``time_limit_s``.
    time_limit_s : float, optional
        Wall-clock limit of the whole call in seconds.

    Returns
    -------
    SolveOutcome
        Status, the solver that answered and whether the fallback was used.

    Raises
    ------
    InfeasibleError
        The solver proved the constraints infeasible (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        No time was left, or the solver hit ``time_limit_s``.
    OptimizationError
        Unbounded, or both solvers failed.
    """
    if time_limit_s is not None and time_limit_s <= 0:
        raise DeadlineExceededError("no time left before the call's deadline to solve")
    solver, fallback_used = _SOLVER, False
    try:
        status = _solve(cvx_problem, dict(settings), started=started, time_limit_s=time_limit_s)
    except OptimizationError:
        status = "solver_error"
    if status not in _DECISIVE:
        # Clarabel failed (numerical trouble, iteration limit): the first-order SCS is the second opinion.
        solver, fallback_used = _FALLBACK_SOLVER, True
        status = _solve(cvx_problem, dict(SCS_SETTINGS), started=started, time_limit_s=time_limit_s, solver=solver)
    elif status == cp.OPTIMAL_INACCURATE:
        # The tight tolerances were out of reach (e.g. a binding cone): Clarabel's defaults may still certify
        # optimality; keep whichever answer is better certified.
        tight = {variable: variable.value for variable in cvx_problem.variables()}
        status = _solve(cvx_problem, {**settings, **CLARABEL_DEFAULTS}, started=started, time_limit_s=time_limit_s)
        if status != cp.OPTIMAL:
            status = cp.OPTIMAL_INACCURATE
            for variable, value in tight.items():
                variable.value = value
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise InfeasibleError(
            "the solver proved the constraints infeasible (no portfolio meets all the constraints together)",
            precondition_violations=(
                PreconditionViolation(
                    "SOLVER_INFEASIBLE", "constraints", f"{solver} reported {status} for {description}"
                ),
            ),
        )
    if status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
        raise OptimizationError(f"{solver} reported {description} unbounded")
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        if time_limit_s is not None and time.perf_counter() - started >= time_limit_s:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s")
        raise OptimizationError(f"{solver} ended with status {status} for {description}")
    return SolveOutcome("OPTIMAL" if status == cp.OPTIMAL else "OPTIMAL_INACCURATE", solver, fallback_used)


def optimize_mean_variance(
    problem: PortfolioProblem, moments: Moments, *, time_limit_s: float | None = None
) -> OptimizationResult:
    """Solve a mean-variance problem: exact active set (``fast_qp``), direct Clarabel (``clarabel_direct``) or cvxpy.

    Budget and bounds only: the active set; linear constraints only: Clarabel on matrices assembled with NumPy;
    anything else (and what those decline): Clarabel through cvxpy, with SCS as its fallback.

    Parameters
    ----------
    problem : PortfolioProblem
        Objective and constraints over N strategies.
    moments : Moments
        Annualised expected returns (N,) and covariance (N, N), validated.
    time_limit_s : float, optional
        Wall-clock limit for the solver in seconds (from the call's deadline).

    Returns
    -------
    OptimizationResult
        Optimal weights (N,), their performance and the solve metadata.

    Raises
    ------
    InvalidInputError
        Inconsistent bounds (see ``precheck``).
    InfeasibleError
        A pre-check failed, or the solver proved the constraints infeasible (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        The solver hit ``time_limit_s``.
    OptimizationError
        The solver failed otherwise (numerical trouble, unbounded problem).
    """
    precheck(problem, moments)
    if problem.max_holdings is not None or problem.min_position_weight is not None:
        from services.optimization._cardinality import (
            optimize_cardinality,  # mixed-integer: outer approximation with HiGHS
        )

        return optimize_cardinality(problem, moments, time_limit_s=time_limit_s)
    started = time.perf_counter()
    from services.optimization._active_set import (
        try_fast_path,  # budget + bounds only: exact active set (else Clarabel below)
    )

    fast = try_fast_path(problem, moments, started=started) if time_limit_s is None or time_limit_s > 0 else None
    if fast is not None:
        return fast
    from services.optimization._clarabel_direct import (
        try_direct_path,  # linear constraints only: Clarabel without cvxpy
    )

    if time_limit_s is None or time_limit_s > 0:
        direct = try_direct_path(problem, moments, started=started, time_limit_s=time_limit_s)
        if direct is not None:
            return direct
    rows = _sector_rows(problem)
    lower, upper = problem.lower_bounds, problem.upper_bounds
    program = _program(problem, rows, moments.covariance)
    program.set_values(problem, rows, moments)
    cvx_problem, variable = program.problem, program.x

    options: dict[str, float] = dict(CLARABEL_SETTINGS)
    if time_limit_s is not None and time_limit_s <= 0:
        raise DeadlineExceededError("no time left before the call's deadline to solve")
    outcome = solve_program(
        cvx_problem, options, description=str(problem.objective), started=started, time_limit_s=time_limit_s
    )
    if variable.value is None:
        raise OptimizationError(f"{outcome.solver} returned no solution for {problem.objective}")

    raw = np.asarray(variable.value, dtype=np.float64)
    if program.kappa is not None:
        kappa = float(program.kappa.value) if program.kappa.value is not None else 0.0
        if kappa <= 1e-12:
            raise OptimizationError("max Sharpe solution degenerated (κ = 0)")
        raw = raw / kappa
    # Solver noise just outside a bound (≤ TOLERANCE) is put on the bound; larger breaches stay and are reported.
    weights = np.where((raw < lower) & (raw >= lower - TOLERANCE), lower, raw)
    weights = np.where((weights > upper) & (weights <= upper + TOLERANCE), upper, weights)
    violations = check_constraints(weights, problem, moments)
    performance = portfolio_performance(weights, moments, problem.risk_free_rate)
    objective_value = objective_value_of(weights, problem, moments)
    stats = cvx_problem.solver_stats
    return OptimizationResult(
        weights=weights,
        performance=performance,
        objective_value=float(objective_value),
        status=outcome.status,
        iterations=int(stats.num_iters or 0) if stats is not None else 0,
        solver=outcome.solver,
        solve_time_ms=(time.perf_counter() - started) * 1000.0,
        constraints_satisfied=not violations,
        violations=violations,
        fallback_used=outcome.fallback_used,
        solve_path="CONIC",
    )
