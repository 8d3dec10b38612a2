"""The problem model: a validated portfolio problem as constraint objects, its objective, checks and result.

``ProblemModel.build(problem, moments)`` validates a ``PortfolioProblem`` once and turns it into the constraint
families of ``_constraints`` (one object per family present), the current weights w₀, the transaction cost rates and
the budget. Every backend reads the model instead of the problem's fields, and every backend reports through
``ProblemModel.result``: the same post-processing (solver noise within ``TOLERANCE`` outside a bound put on the
bound), the same solver-independent constraint check, performance and objective value, whichever solver answered.

The ratio objectives (max Sharpe; max return per unit of a scenario risk measure; the robust worst-case Sharpe) are
solved homogenised (Cornuejols & Tütüncü, 2007, §8.2): y = κw with κ ≥ 0, the numerator fixed at 1;
``_program.unscale`` is the one way back from y to w.

Why over 500 lines: it holds the validation of every field of a problem and the one result builder, which
belong together (a field validated here is read back through the same attributes by every backend).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np

from services.errors import InfeasibleError, InvalidInputError, PreconditionViolation
from services.optimization._constraints import (
    TOLERANCE,
    BetaNeutrality,
    Bounds,
    Budget,
    Cardinality,
    Constraint,
    GroupLimits,
    LeverageLimit,
    MaxVolatility,
    MinReturn,
    NetExposure,
    TrackingErrorLimit,
    TurnoverCaps,
    TurnoverLimit,
    limit,
    vector,
)
from services.optimization._metrics import covariance_factor, portfolio_performance
from services.optimization._problem import (
    MultiObjectiveWeights,
    Objective,
    OptimizationResult,
    PortfolioPerformance,
    PortfolioProblem,
    Relaxation,
)
from services.types import FloatArray, Moments

C = TypeVar("C", bound=Constraint)

_BEFORE_OBJECTIVE_PRECHECK = (Budget, NetExposure, Bounds, GroupLimits, MinReturn, MaxVolatility, Cardinality)
"""Families pre-checked before the objective's own condition (``NO_EXCESS_RETURN``); the trading limits after."""


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
        The maximum; it ignores group limits, so it bounds from above the value a constrained problem can reach.
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


def multi_objective_weights(problem: PortfolioProblem) -> MultiObjectiveWeights:
    """The validated weights of ``Objective.MULTI_OBJECTIVE`` (missing: the defaults of ``MultiObjectiveWeights``).

    Raises
    ------
    InvalidInputError
        A negative or non-finite weight, or return and variance weights both zero
        (``multi_objective.*``).
    """
    weights = problem.multi_objective if problem.multi_objective is not None else MultiObjectiveWeights()
    for name in ("return_weight", "variance_weight", "turnover_weight", "l2_weight"):
        value = getattr(weights, name)
        if not np.isfinite(value) or value < 0:
            raise InvalidInputError.for_field(
                f"multi_objective.{name}", f"must be finite and non-negative, got {value:g}"
            )
    if weights.return_weight == 0 and weights.variance_weight == 0:
        raise InvalidInputError.for_field("multi_objective", "return_weight and variance_weight cannot both be 0")
    return weights


def _net_exposure(problem: PortfolioProblem) -> NetExposure | None:
    low, high = problem.min_net_exposure, problem.max_net_exposure
    if low is None and high is None:
        return None
    for value, name in ((low, "min_net_exposure"), (high, "max_net_exposure")):
        if value is not None and not np.isfinite(value):
            raise InvalidInputError.for_field(name, f"must be finite, got {value}")
    lo = -np.inf if low is None else float(low)
    hi = np.inf if high is None else float(high)
    if lo > hi:
        raise InvalidInputError.for_field(
            "min_net_exposure", f"min_net_exposure {lo:g} is above max_net_exposure {hi:g}"
        )
    return NetExposure(lo, hi)


@dataclass(frozen=True, eq=False)
class ProblemModel:
    """A validated problem: its constraint families, w₀, cost rates and budget, with its moments.

    Build it with :meth:`build`. Attributes named like data (``expected_returns``, ``current``, ``factor`` …) are
    what programs read through ``ProgramBuilder.value``.
    """

    name: ClassVar[str] = "model"
    problem: PortfolioProblem
    moments: Moments
    constraints: tuple[Constraint, ...]
    """The families present, in a fixed order (budget, cardinality, bounds, groups, return and risk limits,
    trading limits)."""
    current: FloatArray
    """w₀ (N,): the current weights, zeros when not given."""
    costs: FloatArray | None
    """Linear transaction cost rates c_i/1e4 (fractions of traded value), None when absent or all zero."""
    budget: tuple[float, float]
    """(low, high) of 1ᵀw: (1, 1) fully invested, else the net exposure bounds."""
    has_net_exposure: bool
    multi_objective: MultiObjectiveWeights | None
    """The validated weights with ``Objective.MULTI_OBJECTIVE``, else None."""
    covariance_cholesky: FloatArray | None = None
    """Upper Cholesky factor C of Σ (CᵀC = Σ) when the caller has one (``validate_moments``'s proof of positive
    definiteness), for a backend to reuse instead of factorising Σ again; None otherwise."""

    @classmethod
    def build(
        cls, problem: PortfolioProblem, moments: Moments, *, covariance_cholesky: FloatArray | None = None
    ) -> ProblemModel:
        """Validate ``problem`` and build its constraint families.

        Parameters
        ----------
        problem : PortfolioProblem
            Objective and constraints over N strategies.
        moments : Moments
            Annualised expected returns (N,) and covariance (N, N), validated by the caller.
        covariance_cholesky : ndarray of shape (N, N), optional
            Upper Cholesky factor C of exactly this covariance (CᵀC = Σ), as ``validate_moments`` returns it; the
            active set starts from it instead of factorising Σ. A factor of another matrix does not make an answer
            wrong (every active-set answer is certified by the KKT conditions on Σ) but sends the problem to the
            next backend.

        Raises
        ------
        InvalidInputError
            A lower bound above its upper bound (``lower_bounds[i]``), NaN or crossed net exposure
            bounds, invalid multi-objective weights, an unknown or empty group or a crossed group limit, a
            wrong-length or non-finite vector, a negative limit, cap or cost, a tracking-error limit without
            benchmark weights (beta tolerance without betas), an invalid cardinality, a NaN bound, a non-finite
            ``risk_free_rate`` or ``min_return``, a negative or non-finite ``max_volatility``, or a negative or
            non-finite ``risk_aversion`` of the quadratic utility (each naming its field).
        """
        n = problem.n_assets
        lower, upper = problem.lower_bounds, problem.upper_bounds
        _check_scalars(problem)
        crossed = np.flatnonzero(lower > upper + 1e-12)
        if crossed.size:
            raise InvalidInputError.for_field(
                f"lower_bounds[{int(crossed[0])}]",
                f"min_weight {lower[crossed[0]]:g} is above max_weight {upper[crossed[0]]:g}",
            )
        net = _net_exposure(problem)
        budget_family: Constraint = net if net is not None else Budget()
        budget = (1.0, 1.0) if net is None else (net.low, net.high)
        low_name = "1" if problem.min_net_exposure is None else "min_net_exposure"
        high_name = "1" if problem.max_net_exposure is None else "max_net_exposure"
        if problem.min_net_exposure is None and problem.max_net_exposure is not None:
            low_name = "-inf"
        if problem.max_net_exposure is None and problem.min_net_exposure is not None:
            high_name = "inf"
        mo = multi_objective_weights(problem) if problem.objective is Objective.MULTI_OBJECTIVE else None
        groups = GroupLimits.build(problem.sector_limits, problem.sectors, problem.classifications, n)
        current = vector(problem.current_weights, "current_weights", n)
        current = current if current is not None else np.zeros(n)
        turnover_limit = limit(problem.turnover_limit, "turnover_limit")
        caps = vector(problem.turnover_caps, "turnover_caps", n, allow_inf=True)
        if caps is not None:
            bad = np.flatnonzero(caps < 0)
            if bad.size:
                raise InvalidInputError.for_field(f"turnover_caps[{int(bad[0])}]", "must be non-negative")
            if not np.isfinite(caps).any():
                caps = None
        leverage = limit(problem.leverage_limit, "leverage_limit")
        costs = vector(problem.transaction_costs_bps, "transaction_costs_bps", n)
        if costs is not None:
            bad = np.flatnonzero(costs < 0)
            if bad.size:
                raise InvalidInputError.for_field(f"transaction_costs_bps[{int(bad[0])}]", "must be non-negative")
            costs = costs / 1e4 if costs.any() else None
        tracking_error = limit(problem.tracking_error_limit, "tracking_error_limit")
        benchmark = vector(problem.benchmark_weights, "benchmark_weights", n)
        if tracking_error is not None and benchmark is None:
            raise InvalidInputError.for_field("benchmark_weights", "required with a tracking_error_limit")
        beta_tolerance = limit(problem.beta_tolerance, "beta_tolerance")
        betas = vector(problem.betas, "betas", n)
        if beta_tolerance is not None and betas is None:
            raise InvalidInputError.for_field("betas", "required with a beta_tolerance")
        cardinality = Cardinality.build(problem.max_holdings, problem.min_position_weight, lower, upper)
        families: list[Constraint | None] = [
            budget_family,
            cardinality,
            Bounds(lower, upper, low_name, high_name),
            groups,
            None if problem.min_return is None else MinReturn(float(problem.min_return)),
            None if problem.max_volatility is None else MaxVolatility(float(problem.max_volatility)),
            None if turnover_limit is None else TurnoverLimit(turnover_limit),
            None if caps is None else TurnoverCaps.build(caps, lower, upper, current),
            None if leverage is None else LeverageLimit(leverage),
            None if tracking_error is None or benchmark is None else TrackingErrorLimit(benchmark, tracking_error),
            None if beta_tolerance is None or betas is None else BetaNeutrality(betas, beta_tolerance),
        ]
        return cls(
            problem=problem,
            moments=moments,
            constraints=tuple(c for c in families if c is not None),
            current=current,
            costs=costs,
            budget=budget,
            has_net_exposure=net is not None,
            multi_objective=mo,
            covariance_cholesky=covariance_cholesky,
        )

    # --- the problem's data ----------------------------------------------------------------------------------------

    @property
    def n_assets(self) -> int:
        """N."""
        return self.problem.n_assets

    @property
    def objective(self) -> Objective:
        """What is optimised."""
        return self.problem.objective

    @property
    def symbols(self) -> tuple[str, ...]:
        """Identifiers (N) in the order of every array."""
        return self.problem.symbols

    @property
    def lower(self) -> FloatArray:
        """Lower weight bounds l (N,)."""
        return self.problem.lower_bounds

    @property
    def upper(self) -> FloatArray:
        """Upper weight bounds u (N,)."""
        return self.problem.upper_bounds

    @property
    def expected_returns(self) -> FloatArray:
        """μ (N,), annualised."""
        return self.moments.expected_returns

    @property
    def covariance(self) -> FloatArray:
        """Σ (N, N), annualised."""
        return self.moments.covariance

    @property
    def risk_free_rate(self) -> float:
        """r_f, annualised."""
        return self.problem.risk_free_rate

    @property
    def excess_returns(self) -> FloatArray:
        """μ − r_f (N,)."""
        return np.asarray(self.moments.expected_returns - self.problem.risk_free_rate, dtype=np.float64)

    @cached_property
    def factor(self) -> FloatArray:
        """F (N, N) with F Fᵀ = Σ (Cholesky, or the eigen-factor of a singular Σ)."""
        return covariance_factor(self.moments.covariance)

    @cached_property
    def families(self) -> frozenset[type[Constraint]]:
        """The types of the families present (what a backend's support is checked against)."""
        return frozenset(type(c) for c in self.constraints)

    def get(self, family: type[C]) -> C | None:
        """The family of this type, or None."""
        for constraint in self.constraints:
            if isinstance(constraint, family):
                return constraint
        return None

    @property
    def cardinality(self) -> Cardinality | None:
        """The mixed-integer family, if any."""
        return self.get(Cardinality)

    @property
    def convex_constraints(self) -> tuple[Constraint, ...]:
        """Every family but cardinality (what a convex program writes)."""
        return tuple(c for c in self.constraints if not isinstance(c, Cardinality))

    def structure(self) -> tuple[Any, ...]:
        """What determines the structure of this problem's programs (the cache key of a parametric program)."""
        mo = self.multi_objective
        return (
            self.objective,
            self.n_assets,
            tuple((c.name, c.structure()) for c in self.convex_constraints),
            self.costs is not None,
            mo is not None and mo.turnover_weight > 0,
            mo is not None and mo.l2_weight > 0,
        )

    # --- data of the objectives in a parametric program (``ProgramBuilder.value`` reads these) ---------------------

    @property
    def half_risk_aversion(self) -> float:
        """δ/2 of the quadratic utility, or the multi-objective's variance weight b."""
        if self.multi_objective is not None:
            return self.multi_objective.variance_weight
        return 0.5 * self.problem.risk_aversion

    @property
    def utility_factor(self) -> FloatArray:
        """sqrt(δ/2)·F (utility) or sqrt(b)·F (multi-objective): sum_squares(Gᵀx) is the variance penalty."""
        return np.asarray(self.factor * np.sqrt(self.half_risk_aversion), dtype=np.float64)

    @property
    def scaled_expected_returns(self) -> FloatArray:
        """a·μ of the multi-objective (a product of two parameters is not DPP)."""
        weight = self.multi_objective.return_weight if self.multi_objective is not None else 1.0
        return np.asarray(weight * self.moments.expected_returns, dtype=np.float64)

    @property
    def scaled_costs(self) -> FloatArray:
        """a·c of the multi-objective."""
        weight = self.multi_objective.return_weight if self.multi_objective is not None else 1.0
        return np.asarray(weight * (self.costs if self.costs is not None else np.zeros(self.n_assets)))

    @property
    def cash_return(self) -> float:
        """a·r_f of the multi-objective's cash leg."""
        weight = self.multi_objective.return_weight if self.multi_objective is not None else 1.0
        return weight * self.problem.risk_free_rate

    @property
    def turnover_weight(self) -> float:
        """G of the multi-objective."""
        return self.multi_objective.turnover_weight if self.multi_objective is not None else 0.0

    @property
    def l2_weight(self) -> float:
        """λ of the multi-objective."""
        return self.multi_objective.l2_weight if self.multi_objective is not None else 0.0

    # --- pre-checks --------------------------------------------------------------------------------------------------

    @property
    def bounds_ok(self) -> bool:
        """Whether the bounds admit a weight vector within the budget."""
        return bool(self.lower.sum() <= self.budget[1] + 1e-9 and self.upper.sum() >= self.budget[0] - 1e-9)

    def best_return(self, coefficients: FloatArray) -> float:
        """Largest cᵀw over the bounds and the budget (``max_achievable_return``)."""
        return max_achievable_return(coefficients, self.lower, self.upper, self.budget)

    @cached_property
    def best_total_return(self) -> float:
        """The highest total expected return (cash leg included) the bounds and the budget allow."""
        mu = self.expected_returns
        if self.bounds_ok:
            if self.has_net_exposure:
                return self.risk_free_rate + self.best_return(self.excess_returns)
            return self.best_return(mu)
        # Already infeasible; long-only, no portfolio can beat the best single return either.
        return float(mu.max()) if float(self.lower.min()) >= 0 else float("inf")

    def _objective_precheck(self) -> list[PreconditionViolation]:
        if self.objective is not Objective.MAX_SHARPE:
            return []
        if self.bounds_ok:
            best_excess = self.best_return(self.excess_returns)
        else:
            best_excess = self.best_total_return - self.risk_free_rate
        if best_excess > 0:
            return []
        return [
            PreconditionViolation(
                "NO_EXCESS_RETURN",
                "risk_free_rate",
                f"max Sharpe needs a portfolio with expected return above the risk-free rate "
                f"{self.risk_free_rate:g}; the highest the weight bounds allow is {self.best_total_return:.6g}",
            )
        ]

    def precheck(self) -> None:
        """Cheap feasibility checks that name the conflicting constraints before any solve.

        Raises
        ------
        InfeasibleError
            With ``PreconditionViolation`` details: ``BOUNDS_SUM``, ``SECTOR_BOUNDS``, ``SECTOR_MINIMA``,
            ``TARGET_RETURN``, ``NO_EXCESS_RETURN`` (max Sharpe where no portfolio within the bounds beats the
            risk-free rate), ``TURNOVER``, ``LEVERAGE``, ``BETA``; when all of those pass, ``CARDINALITY``.
        """
        found: list[PreconditionViolation] = []
        for constraint in self.constraints:
            if isinstance(constraint, _BEFORE_OBJECTIVE_PRECHECK) and not isinstance(constraint, Cardinality):
                found += constraint.precheck(self)
        found += self._objective_precheck()
        for constraint in self.constraints:
            if not isinstance(constraint, _BEFORE_OBJECTIVE_PRECHECK):
                found += constraint.precheck(self)
        if not found and self.cardinality is not None:
            found = self.cardinality.precheck(self)
        if found:
            raise InfeasibleError(
                "infeasible constraints: " + "; ".join(v.description for v in found),
                precondition_violations=tuple(found),
            )

    # --- checks, objective and the result ----------------------------------------------------------------------------

    def violations(self, weights: FloatArray) -> tuple[str, ...]:
        """Every constraint the weights violate by more than ``TOLERANCE`` (empty when all hold)."""
        found: list[str] = []
        for constraint in self.constraints:
            found += constraint.violations(weights, self)
        return tuple(found)

    def cost(self, weights: FloatArray) -> float:
        """Transaction cost cᵀ|w − w₀| of moving from w₀ to ``weights`` (0 without costs)."""
        return 0.0 if self.costs is None else float(self.costs @ np.abs(weights - self.current))

    def objective_value(self, weights: FloatArray) -> float:
        """The objective at ``weights``, net of transaction costs (see ``OptimizationResult.objective_value``).

        Max Sharpe reports (μᵀw − cost − r_f)/σ, max return μᵀw − cost, quadratic utility μᵀw − cost − δ/2·wᵀΣw,
        min volatility the variance wᵀΣw, the multi-objective a·(μᵀw − cost) − b·wᵀΣw − g·Σ|w − w₀| − λ·‖w‖².
        """
        return self._objective_value(weights, portfolio_performance(weights, self.moments, self.risk_free_rate))

    def _objective_value(self, weights: FloatArray, performance: PortfolioPerformance) -> float:
        """:meth:`objective_value` from the weights' performance (one quadratic form per result, not two)."""
        net_return = performance.expected_return - self.cost(weights)
        variance = performance.volatility**2
        if self.multi_objective is not None:
            mo = self.multi_objective
            turnover = float(np.abs(weights - self.current).sum())
            return (
                mo.return_weight * net_return
                - mo.variance_weight * variance
                - mo.turnover_weight * turnover
                - mo.l2_weight * float(weights @ weights)
            )
        if self.objective is Objective.MAX_SHARPE:
            volatility = performance.volatility
            return (net_return - self.risk_free_rate) / volatility if volatility > 0 else 0.0
        if self.objective is Objective.MIN_VOLATILITY:
            return variance
        if self.objective is Objective.MAX_RETURN:
            return net_return
        return net_return - 0.5 * self.problem.risk_aversion * variance

    def snap(self, raw: FloatArray) -> FloatArray:
        """Solver noise just outside a bound (≤ ``TOLERANCE``) put on the bound; larger breaches stay (reported)."""
        lower, upper = self.lower, self.upper
        weights = np.where((raw < lower) & (raw >= lower - TOLERANCE), lower, raw)
        return np.asarray(np.where((weights > upper) & (weights <= upper + TOLERANCE), upper, weights), np.float64)

    def result(
        self,
        raw: FloatArray,
        *,
        status: str,
        solver: str,
        iterations: int,
        started: float,
        solve_path: str,
        fallback_used: bool = False,
        objective_value: float | None = None,
        extra_violations: tuple[str, ...] = (),
        relaxations: tuple[Relaxation, ...] = (),
        snap: bool = True,
    ) -> OptimizationResult:
        """The one result builder of every backend.

        Parameters
        ----------
        raw : ndarray of shape (N,)
            The solver's weights (already divided by κ for a homogenised program, see ``unscale``).
        status, solver, iterations, solve_path, fallback_used
            How the solve went (see ``OptimizationResult``).
        started : float
            ``time.perf_counter()`` at the start of the call, for ``solve_time_ms``.
        objective_value : float, optional
            The objective at the weights when it is not mean-variance's (a scenario risk measure); by default
            :meth:`objective_value`.
        extra_violations : tuple of str
            Breaches of limits outside the model (a scenario risk cap).
        relaxations : tuple of Relaxation
            What was relaxed to reach a feasible problem.
        snap : bool, default=True
            Whether to put solver noise outside a bound on the bound (``snap``); an exact solver's weights (the
            active set's, KKT-certified) are taken as they are.

        Returns
        -------
        OptimizationResult
            Weights snapped to their bounds within ``TOLERANCE``, their performance, objective value and check.
        """
        weights = self.snap(raw) if snap else raw
        violations = self.violations(weights) + extra_violations
        performance = portfolio_performance(weights, self.moments, self.risk_free_rate)
        value = self._objective_value(weights, performance) if objective_value is None else objective_value
        return OptimizationResult(
            weights=weights,
            performance=performance,
            objective_value=float(value),
            status=status,
            iterations=iterations,
            solver=solver,
            solve_time_ms=(time.perf_counter() - started) * 1000.0,
            constraints_satisfied=not violations,
            violations=violations,
            fallback_used=fallback_used,
            solve_path=solve_path,
            relaxations=relaxations,
        )


def check_constraints(weights: FloatArray, problem: PortfolioProblem, moments: Moments) -> tuple[str, ...]:
    """Every constraint of ``problem`` the weights violate by more than ``TOLERANCE``.

    Parameters
    ----------
    weights : ndarray of shape (N,)
        Weights to check.
    problem : PortfolioProblem
        The constraints.
    moments : Moments
        Annualised moments for the return, volatility and tracking-error limits.

    Returns
    -------
    tuple of str
        One description per violated constraint; empty when all hold.

    Raises
    ------
    InvalidInputError
        The problem is malformed (see ``ProblemModel.build``).
    """
    return ProblemModel.build(problem, moments).violations(weights)


def objective_value_of(weights: FloatArray, problem: PortfolioProblem, moments: Moments) -> float:
    """The objective of ``problem`` at ``weights``, net of transaction costs (``ProblemModel.objective_value``)."""
    return ProblemModel.build(problem, moments).objective_value(weights)


def _check_scalars(problem: PortfolioProblem) -> None:
    """The problem's scalar inputs, as the gRPC mapping checks them, for callers of the engine itself.

    Raises
    ------
    InvalidInputError
        Naming ``risk_free_rate``, ``min_return``, ``max_volatility``, ``risk_aversion`` or ``lower_bounds[i]`` /
        ``upper_bounds[i]`` (NaN; ±inf bounds are "no bound").
    """
    for name in ("risk_free_rate", "min_return"):
        value = getattr(problem, name)
        if value is not None and not math.isfinite(value):
            raise InvalidInputError.for_field(name, f"must be finite, got {value}")
    limit(problem.max_volatility, "max_volatility")
    if problem.objective is Objective.MAX_QUADRATIC_UTILITY and not 0 <= problem.risk_aversion < math.inf:
        raise InvalidInputError.for_field("risk_aversion", f"must be finite and >= 0, got {problem.risk_aversion}")
    for name in ("lower_bounds", "upper_bounds"):
        nan = np.flatnonzero(np.isnan(getattr(problem, name)))
        if nan.size:
            raise InvalidInputError.for_field(f"{name}[{int(nan[0])}]", "must not be NaN")
