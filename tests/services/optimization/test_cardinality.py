"""Cardinality and minimum position size (``services.optimization._cardinality``) against exhaustive enumeration.

Truth: on 8 to 12 S&P 500 stocks of skfolio's data set (the last 756 daily returns; PyPortfolioOpt's mean
historical return and sample covariance), every support of at most K names (every sign pattern of it when
shorting is allowed with a minimum position) is solved here as a continuous convex program — plain cvxpy
formulations written in this file, solved by Clarabel — and the best of them is the optimum of the mixed-integer
problem. Without a minimum position only the supports of exactly K names are needed (a smaller support's program
is a restriction of any K-superset's). The engine's result must reach the enumeration's objective within 1e-6
relative, hold at most K names (|w_i| > 1e-8) and meet every constraint, checked here with NumPy.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from pypfopt import expected_returns, risk_models

from services.errors import DeadlineExceededError, InfeasibleError, InvalidInputError
from services.optimization import (
    MultiObjectiveWeights,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    RiskMeasure,
    SectorLimit,
    check_constraints,
    conditional_value_at_risk,
    optimize_cardinality,
    optimize_mean_variance,
    optimize_risk_measure,
)
from services.types import Moments
from tests.services.market_data import SP500_SECTORS

DAYS = 756
OBJECTIVE_RTOL = 1e-6
FEASIBILITY_TOLERANCE = 1e-6
HELD = 1e-8
RISK_FREE_RATE = 0.02
ALPHA = 0.95


# --- data ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_window(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    return sp500_prices.iloc[-(DAYS + 1) :]


@pytest.fixture(scope="module")
def sp500_moments(sp500_window: pd.DataFrame) -> Moments:
    mu = expected_returns.mean_historical_return(sp500_window)
    cov = risk_models.sample_cov(sp500_window)
    return Moments(expected_returns=mu.to_numpy(), covariance=cov.to_numpy())


def first(moments: Moments, n: int) -> Moments:
    return Moments(expected_returns=moments.expected_returns[:n], covariance=moments.covariance[:n, :n])


def tickers(sp500_window: pd.DataFrame, n: int) -> tuple[str, ...]:
    return tuple(sp500_window.columns[:n])


def make_problem(
    ids: tuple[str, ...], objective: Objective, lower: float = 0.0, upper: float = 1.0, **options: object
) -> PortfolioProblem:
    n = len(ids)
    return PortfolioProblem(
        symbols=ids,
        objective=objective,
        lower_bounds=np.full(n, lower),
        upper_bounds=np.full(n, upper),
        **options,  # type: ignore[arg-type]
    )


def holdings(weights: np.ndarray) -> int:
    return int((np.abs(weights) > HELD).sum())


# --- the enumeration (independent of the engine) ------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    value: float
    weights: np.ndarray
    solved: int


def supports(n: int, sizes: range | list[int]) -> Iterator[tuple[int, ...]]:
    for size in sizes:
        yield from itertools.combinations(range(n), size)


def signed(n: int, sizes: range | list[int]) -> Iterator[tuple[int, ...]]:
    """Every sign pattern (+1 long, −1 short) of every support: tuples of signed (index + 1)."""
    for support in supports(n, sizes):
        for signs in itertools.product((1, -1), repeat=len(support)):
            yield tuple(s * (i + 1) for i, s in zip(support, signs, strict=True))


def support_bounds(
    n: int, pattern: tuple[int, ...], lower: np.ndarray, upper: np.ndarray, minimum: float | None, *, signs: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of one support: 0 outside; [l, u] inside, or [max(l, m), u] long / [l, min(u, −m)] short."""
    lo, hi = np.zeros(n), np.zeros(n)
    m = 0.0 if minimum is None else minimum
    for entry in pattern:
        i, sign = (abs(entry) - 1, int(np.sign(entry))) if signs else (entry, 1)
        if minimum is None:
            lo[i], hi[i] = lower[i], upper[i]
        elif sign > 0:
            lo[i], hi[i] = max(lower[i], m), upper[i]
        else:
            lo[i], hi[i] = lower[i], min(upper[i], -m)
    return lo, hi


def enumerate_best(
    n: int,
    patterns: Iterator[tuple[int, ...]],
    build: Callable[[cp.Parameter, cp.Parameter], tuple[cp.Problem, Callable[[], np.ndarray]]],
    value_of: Callable[[np.ndarray], float],
    *,
    lower: np.ndarray,
    upper: np.ndarray,
    minimum: float | None = None,
    maximise: bool,
    signs: bool = False,
) -> Truth:
    """Solve the program on every support (one compiled program, bounds as parameters); keep the best."""
    lo, hi = cp.Parameter(n), cp.Parameter(n)
    program, weights_of = build(lo, hi)
    best_value, best_weights, solved = -np.inf if maximise else np.inf, np.zeros(n), 0
    for pattern in patterns:
        lo.value, hi.value = support_bounds(n, pattern, lower, upper, minimum, signs=signs)
        if lo.value.sum() > 1 + 1e-12 or hi.value.sum() < 1 - 1e-12:
            continue  # the budget cannot be met on this support
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                program.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
                if program.status == cp.OPTIMAL_INACCURATE:  # the tight tolerances out of reach: the defaults
                    program.solve(solver="CLARABEL", tol_gap_abs=1e-8, tol_gap_rel=1e-8, tol_feas=1e-8)
        except cp.error.SolverError:
            continue
        if program.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            continue
        solved += 1
        weights = weights_of()
        value = value_of(weights)
        if (value > best_value) if maximise else (value < best_value):
            best_value, best_weights = value, weights
    return Truth(best_value, best_weights, solved)


def mean_variance_program(
    moments: Moments,
    objective: str,
    *,
    risk_aversion: float = 1.0,
    max_volatility: float | None = None,
    extra: Callable[[cp.Variable], list[cp.Constraint]] | None = None,
) -> Callable[[cp.Parameter, cp.Parameter], tuple[cp.Problem, Callable[[], np.ndarray]]]:
    """Builders of the textbook programs: Σw = 1, lo ≤ w ≤ hi, [‖L'w‖ ≤ σ_max], [extra(w)]."""
    mu, sigma = moments.expected_returns, moments.covariance
    factor = np.linalg.cholesky(sigma)

    def build(lo: cp.Parameter, hi: cp.Parameter) -> tuple[cp.Problem, Callable[[], np.ndarray]]:
        n = mu.size
        if objective == "sharpe":  # Cornuejols and Tütüncü's homogenisation: y = κw
            y, kappa = cp.Variable(n), cp.Variable(nonneg=True)
            constraints = [(mu - RISK_FREE_RATE) @ y == 1, cp.sum(y) == kappa, y >= lo * kappa, y <= hi * kappa]
            if max_volatility is not None:
                constraints.append(cp.norm(factor.T @ y) <= max_volatility * kappa)
            program = cp.Problem(cp.Minimize(cp.sum_squares(factor.T @ y)), constraints)
            return program, lambda: np.asarray(y.value) / float(kappa.value)
        w = cp.Variable(n)
        constraints = [cp.sum(w) == 1, w >= lo, w <= hi]
        if max_volatility is not None:
            constraints.append(cp.norm(factor.T @ w) <= max_volatility)
        if extra is not None:
            constraints += extra(w)
        variance = cp.sum_squares(factor.T @ w)
        goal = {
            "variance": cp.Minimize(variance),
            "utility": cp.Maximize(mu @ w - 0.5 * risk_aversion * variance),
            "return": cp.Maximize(mu @ w),
        }[objective]
        return cp.Problem(goal, constraints), lambda: np.asarray(w.value)

    return build


def variance(moments: Moments) -> Callable[[np.ndarray], float]:
    return lambda w: float(w @ moments.covariance @ w)


def sharpe(moments: Moments) -> Callable[[np.ndarray], float]:
    return lambda w: float((moments.expected_returns @ w - RISK_FREE_RATE) / np.sqrt(w @ moments.covariance @ w))


def utility(moments: Moments, risk_aversion: float) -> Callable[[np.ndarray], float]:
    return lambda w: float(moments.expected_returns @ w - 0.5 * risk_aversion * w @ moments.covariance @ w)


def assert_matches(
    result: OptimizationResult,
    truth: Truth,
    problem: PortfolioProblem,
    moments: Moments,
    value_of: Callable[[np.ndarray], float],
    *,
    path: str = "MIP_OUTER_APPROXIMATION",
) -> None:
    w = result.weights
    assert truth.solved > 0
    assert result.objective_value == pytest.approx(truth.value, rel=OBJECTIVE_RTOL)
    assert value_of(w) == pytest.approx(truth.value, rel=OBJECTIVE_RTOL)  # NumPy on the returned weights
    if problem.max_holdings is not None:
        assert holdings(w) <= problem.max_holdings
    if problem.min_position_weight is not None:
        assert np.all(np.abs(w[np.abs(w) > HELD]) >= problem.min_position_weight - FEASIBILITY_TOLERANCE)
    assert abs(w.sum() - 1.0) <= FEASIBILITY_TOLERANCE
    assert np.all(w >= problem.lower_bounds - FEASIBILITY_TOLERANCE)
    assert np.all(w <= problem.upper_bounds + FEASIBILITY_TOLERANCE)
    assert result.constraints_satisfied
    assert check_constraints(w, problem, moments) == ()
    assert result.status == "OPTIMAL"
    assert result.solver == "HIGHS"
    assert result.solve_path == path
    assert result.iterations >= 1


# --- mean-variance objectives against enumeration ---------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4])
def test_min_volatility_equals_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments, k: int) -> None:
    n = 12
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MIN_VOLATILITY, max_holdings=k)
    result = optimize_mean_variance(problem, moments)
    truth = enumerate_best(
        n,
        supports(n, [k]),
        mean_variance_program(moments, "variance"),
        variance(moments),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=False,
    )
    assert_matches(result, truth, problem, moments, variance(moments))
    # The continuous optimum holds more names: the constraint binds, and costs variance.
    relaxed = optimize_mean_variance(replace(problem, max_holdings=None), moments)
    assert holdings(relaxed.weights) > k
    assert relaxed.objective_value < result.objective_value


@pytest.mark.parametrize("k", [2, 3, 4])
def test_max_sharpe_equals_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments, k: int) -> None:
    n = 12
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MAX_SHARPE, upper=0.5, max_holdings=k, risk_free_rate=RISK_FREE_RATE)
    relaxed = optimize_mean_variance(replace(problem, max_holdings=None), moments)
    assert holdings(relaxed.weights) > k
    result = optimize_cardinality(problem, moments)
    truth = enumerate_best(
        n,
        supports(n, [k]),
        mean_variance_program(moments, "sharpe"),
        sharpe(moments),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=True,
    )
    assert_matches(result, truth, problem, moments, sharpe(moments))


def test_max_sharpe_under_a_volatility_cap_equals_enumeration(
    sp500_window: pd.DataFrame, sp500_moments: Moments
) -> None:
    """The cone in the homogenised form: outer-approximated by its gradient cuts."""
    n, k, cap = 12, 3, 0.22
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MAX_SHARPE, max_holdings=k, risk_free_rate=RISK_FREE_RATE, max_volatility=cap)
    result = optimize_cardinality(problem, moments)
    truth = enumerate_best(
        n,
        supports(n, [k]),
        mean_variance_program(moments, "sharpe", max_volatility=cap),
        sharpe(moments),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=True,
    )
    assert_matches(result, truth, problem, moments, sharpe(moments))
    assert result.performance.volatility <= cap + FEASIBILITY_TOLERANCE


@pytest.mark.parametrize("k", [2, 3, 4])
def test_quadratic_utility_equals_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments, k: int) -> None:
    n, delta = 12, 10.0
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MAX_QUADRATIC_UTILITY, max_holdings=k, risk_aversion=delta)
    result = optimize_cardinality(problem, moments)
    truth = enumerate_best(
        n,
        supports(n, [k]),
        mean_variance_program(moments, "utility", risk_aversion=delta),
        utility(moments, delta),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=True,
    )
    assert_matches(result, truth, problem, moments, utility(moments, delta))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_max_return_under_a_volatility_cap_equals_enumeration(
    sp500_window: pd.DataFrame, sp500_moments: Moments, k: int
) -> None:
    """A linear objective with a cone: OA on the cone alone (with its perspective split in weight space)."""
    n, cap = 12, 0.25
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MAX_RETURN, max_holdings=k, max_volatility=cap)
    result = optimize_cardinality(problem, moments)
    value_of: Callable[[np.ndarray], float] = lambda w: float(moments.expected_returns @ w)  # noqa: E731
    truth = enumerate_best(
        n,
        supports(n, [k]),
        mean_variance_program(moments, "return", max_volatility=cap),
        value_of,
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=True,
    )
    assert_matches(result, truth, problem, moments, value_of)
    assert result.performance.volatility <= cap + FEASIBILITY_TOLERANCE


def test_max_return_with_a_minimum_position_is_one_milp(sp500_window: pd.DataFrame, sp500_moments: Moments) -> None:
    """No quadratic, no cone: the master is the exact MILP, closed at the first iteration."""
    n, k, m = 12, 3, 0.3
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MAX_RETURN, upper=0.45, max_holdings=k, min_position_weight=m)
    result = optimize_cardinality(problem, moments)
    value_of: Callable[[np.ndarray], float] = lambda w: float(moments.expected_returns @ w)  # noqa: E731
    truth = enumerate_best(
        n,
        supports(n, range(1, k + 1)),
        mean_variance_program(moments, "return"),
        value_of,
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        minimum=m,
        maximise=True,
    )
    assert_matches(result, truth, problem, moments, value_of, path="MILP")
    assert result.iterations == 1


def test_multi_objective_equals_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments) -> None:
    """a·μᵀw − b·wᵀΣw − λ·‖w‖²: the quadratic is bΣ + λI."""
    n, k = 12, 3
    weights = MultiObjectiveWeights(return_weight=1.0, variance_weight=4.0, l2_weight=0.05)
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MULTI_OBJECTIVE, max_holdings=k, multi_objective=weights)
    result = optimize_cardinality(problem, moments)
    mu, sigma = moments.expected_returns, moments.covariance

    def value_of(w: np.ndarray) -> float:
        return float(mu @ w - 4.0 * w @ sigma @ w - 0.05 * w @ w)

    def build(lo: cp.Parameter, hi: cp.Parameter) -> tuple[cp.Problem, Callable[[], np.ndarray]]:
        w = cp.Variable(n)
        goal = mu @ w - 4.0 * cp.quad_form(w, cp.psd_wrap(sigma)) - 0.05 * cp.sum_squares(w)
        return cp.Problem(cp.Maximize(goal), [cp.sum(w) == 1, w >= lo, w <= hi]), lambda: np.asarray(w.value)

    truth = enumerate_best(
        n, supports(n, [k]), build, value_of, lower=problem.lower_bounds, upper=problem.upper_bounds, maximise=True
    )
    assert_matches(result, truth, problem, moments, value_of)


# --- minimum position size ----------------------------------------------------------------------------------------


def test_min_position_with_cardinality_equals_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments) -> None:
    n, k, m = 10, 4, 0.15
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MIN_VOLATILITY, max_holdings=k, min_position_weight=m)
    result = optimize_cardinality(problem, moments)
    truth = enumerate_best(
        n,
        supports(n, range(1, k + 1)),
        mean_variance_program(moments, "variance"),
        variance(moments),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        minimum=m,
        maximise=False,
    )
    assert_matches(result, truth, problem, moments, variance(moments))
    held = np.abs(result.weights) > HELD
    assert np.all(result.weights[held] >= m - FEASIBILITY_TOLERANCE)


def test_min_position_alone_equals_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments) -> None:
    """No cardinality: every support of the 8 names (255) with [m, u] inside."""
    n, m = 8, 0.2
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    problem = make_problem(ids, Objective.MIN_VOLATILITY, min_position_weight=m)
    relaxed = optimize_mean_variance(replace(problem, min_position_weight=None), moments)
    small = np.abs(relaxed.weights) > HELD
    assert np.any(relaxed.weights[small] < m)  # the continuous optimum holds positions below m
    result = optimize_mean_variance(problem, moments)
    truth = enumerate_best(
        n,
        supports(n, range(1, n + 1)),
        mean_variance_program(moments, "variance"),
        variance(moments),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        minimum=m,
        maximise=False,
    )
    assert_matches(result, truth, problem, moments, variance(moments))


@pytest.mark.parametrize("objective", ["variance", "utility"])
def test_shorting_with_min_position_equals_enumeration(
    sp500_window: pd.DataFrame, sp500_moments: Moments, objective: str
) -> None:
    """w_i ∈ {0} ∪ [l, −m] ∪ [m, u]: long and short binaries; the truth enumerates every sign pattern."""
    n, k, m, delta = 8, 3, 0.1, 10.0
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    goal = Objective.MIN_VOLATILITY if objective == "variance" else Objective.MAX_QUADRATIC_UTILITY
    problem = make_problem(ids, goal, lower=-0.3, upper=0.8, max_holdings=k, min_position_weight=m, risk_aversion=delta)
    result = optimize_cardinality(problem, moments)
    value_of = variance(moments) if objective == "variance" else utility(moments, delta)
    truth = enumerate_best(
        n,
        signed(n, range(1, k + 1)),
        mean_variance_program(moments, objective, risk_aversion=delta),
        value_of,
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        minimum=m,
        maximise=objective == "utility",
        signs=True,
    )
    assert_matches(result, truth, problem, moments, value_of)
    if objective == "utility":
        assert np.any(result.weights < -HELD)  # the optimum shorts a name
    held = np.abs(result.weights) > HELD
    assert np.all(np.abs(result.weights[held]) >= m - FEASIBILITY_TOLERANCE)


# --- with trading limits ----------------------------------------------------------------------------------------


def test_sector_limit_and_turnover_equal_enumeration(sp500_window: pd.DataFrame, sp500_moments: Moments) -> None:
    n, k, delta = 12, 3, 10.0
    moments, ids = first(sp500_moments, n), tickers(sp500_window, n)
    sectors = tuple(SP500_SECTORS[t] for t in ids)
    current = np.zeros(n)
    current[[2, 5, 8]] = 1.0 / 3.0  # BAC, GE, JPM: none of them in the unconstrained optimum
    health_cap, turnover = 0.3, 1.5
    problem = make_problem(
        ids,
        Objective.MAX_QUADRATIC_UTILITY,
        max_holdings=k,
        risk_aversion=delta,
        sectors=sectors,
        sector_limits=(SectorLimit("health", max_weight=health_cap),),
        current_weights=current,
        turnover_limit=turnover,
    )
    result = optimize_cardinality(problem, moments)
    health = np.array([s == "health" for s in sectors], dtype=np.float64)

    def extra(w: cp.Variable) -> list[cp.Constraint]:
        return [health @ w <= health_cap, cp.norm1(w - current) <= turnover]

    truth = enumerate_best(
        n,
        supports(n, [k]),
        mean_variance_program(moments, "utility", risk_aversion=delta, extra=extra),
        utility(moments, delta),
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=True,
    )
    assert_matches(result, truth, problem, moments, utility(moments, delta))
    assert health @ result.weights <= health_cap + FEASIBILITY_TOLERANCE
    assert np.abs(result.weights - current).sum() <= turnover + FEASIBILITY_TOLERANCE
    unconstrained = optimize_cardinality(replace(problem, sector_limits=(), turnover_limit=None), moments)
    assert unconstrained.objective_value > result.objective_value + 1e-6  # the limits bind


def engine_enumeration(problem: PortfolioProblem, moments: Moments) -> float | None:
    """The best continuous optimum (``optimize_mean_variance``) over every support (sign pattern) allowed."""
    n, k, m = problem.n_assets, problem.max_holdings, problem.min_position_weight
    signs = (1, -1) if m is not None and bool(np.any(problem.lower_bounds < 0)) else (1,)
    sizes = [k] if m is None and k is not None else range(1, (k or n) + 1)
    best: float | None = None
    for size in sizes:
        for support in itertools.combinations(range(n), size):
            for pattern in itertools.product(signs, repeat=size):
                signed_support = tuple(s * (i + 1) for i, s in zip(support, pattern, strict=True))
                lo, hi = support_bounds(n, signed_support, problem.lower_bounds, problem.upper_bounds, m, signs=True)
                if np.any(lo > hi):
                    continue
                restricted = replace(problem, lower_bounds=lo, upper_bounds=hi, max_holdings=None)
                try:
                    value = optimize_mean_variance(
                        replace(restricted, min_position_weight=None), moments
                    ).objective_value
                except InfeasibleError:
                    continue
                minimise = problem.objective is Objective.MIN_VOLATILITY
                if best is None or (value < best if minimise else value > best):
                    best = value
    return best


CURRENT = np.array([0.3, 0.0, 0.0, 0.2, 0.0, 0.2, 0.0, 0.3])
TRADING_LIMIT_CASES = {
    "max Sharpe, transaction costs": dict(
        objective=Objective.MAX_SHARPE, transaction_costs_bps=np.full(8, 50.0), current_weights=CURRENT
    ),
    "min volatility, tracking error": dict(
        objective=Objective.MIN_VOLATILITY, benchmark_weights=np.full(8, 1 / 8), tracking_error_limit=0.13
    ),
    "utility, tracking error": dict(
        objective=Objective.MAX_QUADRATIC_UTILITY, benchmark_weights=np.full(8, 1 / 8), tracking_error_limit=0.12
    ),
    "utility, shorting and leverage": dict(
        objective=Objective.MAX_QUADRATIC_UTILITY, lower_bounds=np.full(8, -0.5), leverage_limit=1.6
    ),
    "min volatility, shorting, leverage, min position": dict(
        objective=Objective.MIN_VOLATILITY, lower_bounds=np.full(8, -0.5), leverage_limit=1.6, min_position_weight=0.1
    ),
    "utility, net exposure": dict(
        objective=Objective.MAX_QUADRATIC_UTILITY, min_net_exposure=0.5, max_net_exposure=1.0, risk_aversion=8.0
    ),
    "utility, beta": dict(
        objective=Objective.MAX_QUADRATIC_UTILITY, betas=np.linspace(0.5, 1.5, 8), beta_tolerance=0.9
    ),
    "multi-objective, turnover penalty": dict(
        objective=Objective.MULTI_OBJECTIVE,
        multi_objective=MultiObjectiveWeights(1.0, 3.0, 0.02, 0.01),
        current_weights=CURRENT,
    ),
    "max Sharpe, shorting, min position": dict(
        objective=Objective.MAX_SHARPE, lower_bounds=np.full(8, -0.3), min_position_weight=0.1
    ),
    "max Sharpe, net exposure": dict(objective=Objective.MAX_SHARPE, min_net_exposure=0.8, max_net_exposure=1.0),
    "max Sharpe, tracking error": dict(
        objective=Objective.MAX_SHARPE, benchmark_weights=np.full(8, 1 / 8), tracking_error_limit=0.14
    ),
    "max return, volatility cap, turnover caps": dict(
        objective=Objective.MAX_RETURN, max_volatility=0.22, current_weights=CURRENT, turnover_caps=np.full(8, 0.45)
    ),
}


@pytest.mark.parametrize("case", list(TRADING_LIMIT_CASES))
def test_trading_limits_equal_the_continuous_solver_on_every_support(
    sp500_window: pd.DataFrame, sp500_moments: Moments, case: str
) -> None:
    """Every constraint family in the master: the truth is the engine's continuous solver on each support of 8."""
    n = 8
    moments = first(sp500_moments, n)
    options = {"risk_aversion": 5.0, "risk_free_rate": RISK_FREE_RATE, "max_holdings": 3, **TRADING_LIMIT_CASES[case]}
    lower = options.pop("lower_bounds", np.zeros(n))
    problem = replace(make_problem(tickers(sp500_window, n), **options), lower_bounds=lower)  # type: ignore[arg-type]
    truth = engine_enumeration(problem, moments)
    assert truth is not None
    result = optimize_cardinality(problem, moments)
    assert result.objective_value == pytest.approx(truth, rel=OBJECTIVE_RTOL)
    assert holdings(result.weights) <= 3
    assert result.constraints_satisfied, result.violations
    assert result.status == "OPTIMAL"


# --- CVaR ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_SHARPE])
def test_cvar_with_cardinality_equals_enumeration(sp500_window: pd.DataFrame, objective: Objective) -> None:
    """Min CVaR and max return/CVaR with at most 3 of 12 names: MILPs; the truth solves Rockafellar-Uryasev's LP."""
    n, k, periods = 12, 3, 252
    scenarios = sp500_window.pct_change().iloc[1:, :n].to_numpy()
    mu = scenarios.mean(axis=0) * periods
    ids = tickers(sp500_window, n)
    problem = make_problem(ids, objective, max_holdings=k, risk_free_rate=RISK_FREE_RATE)
    result = optimize_risk_measure(problem, scenarios, mu, risk_measure=RiskMeasure.CVAR, alpha=ALPHA)
    t = scenarios.shape[0]

    def build(lo: cp.Parameter, hi: cp.Parameter) -> tuple[cp.Problem, Callable[[], np.ndarray]]:
        x, tau, excess = cp.Variable(n), cp.Variable(), cp.Variable(t, nonneg=True)
        scale: cp.Variable | float = 1.0
        constraints = [excess >= -(scenarios @ x) - tau]
        if objective is Objective.MAX_SHARPE:
            scale = cp.Variable(nonneg=True)
            constraints.append((mu - RISK_FREE_RATE) @ x == 1)
        constraints += [cp.sum(x) == scale, x >= lo * scale, x <= hi * scale]
        program = cp.Problem(cp.Minimize(tau + cp.sum(excess) / ((1 - ALPHA) * t)), constraints)
        return program, lambda: np.asarray(x.value) / float(np.sum(x.value))

    def value_of(w: np.ndarray) -> float:
        cvar = conditional_value_at_risk(scenarios @ w, ALPHA)
        if objective is Objective.MIN_VOLATILITY:
            return cvar
        return float((mu @ w - RISK_FREE_RATE) / periods / cvar)

    truth = enumerate_best(
        n,
        supports(n, [k]),
        build,
        value_of,
        lower=problem.lower_bounds,
        upper=problem.upper_bounds,
        maximise=objective is Objective.MAX_SHARPE,
    )
    assert result.objective_value == pytest.approx(truth.value, rel=OBJECTIVE_RTOL)
    assert value_of(result.weights) == pytest.approx(truth.value, rel=OBJECTIVE_RTOL)
    assert holdings(result.weights) <= k
    assert result.constraints_satisfied
    assert (result.status, result.solver, result.solve_path) == ("OPTIMAL", "HIGHS", "MILP")
    relaxed = optimize_risk_measure(
        replace(problem, max_holdings=None), scenarios, mu, risk_measure=RiskMeasure.CVAR, alpha=ALPHA
    )
    assert holdings(relaxed.weights) > k


# --- pre-checks, limits, wiring -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_holdings": 0}, "max_holdings"),
        ({"max_holdings": -2}, "max_holdings"),
        ({"min_position_weight": -0.1}, "min_position_weight"),
        ({"min_position_weight": 1.5}, "min_position_weight"),
        ({"min_position_weight": float("nan")}, "min_position_weight"),
    ],
)
def test_invalid_values_name_the_field(
    sp500_window: pd.DataFrame, sp500_moments: Moments, options: dict[str, float], field: str
) -> None:
    n = 10
    problem = make_problem(tickers(sp500_window, n), Objective.MIN_VOLATILITY, **options)
    with pytest.raises(InvalidInputError) as error:
        optimize_mean_variance(problem, first(sp500_moments, n))
    assert error.value.field_violations[0].field == field


@pytest.mark.parametrize(
    ("lower", "upper", "options", "subject"),
    [
        # Three names must be held (lower bound 0.05), at most two allowed.
        ([0.05, 0.05, 0.05], 1.0, {"max_holdings": 2}, "max_holdings"),
        # The 3 largest upper bounds sum to 0.9 < 1.
        (0.0, 0.3, {"max_holdings": 3}, "max_holdings"),
        # No name can reach m = 0.6 under its 0.5 cap.
        (0.0, 0.5, {"min_position_weight": 0.6}, "min_position_weight"),
        # Reaching 1 takes 3 names (0.45 caps), each at least 0.4: 1.2 > 1.
        (0.0, 0.45, {"min_position_weight": 0.4}, "min_position_weight"),
        # A name forced in (lower bound 0.1) cannot reach m = 0.3 under its 0.2 cap.
        ([0.1], [0.2], {"min_position_weight": 0.3}, "min_position_weight"),
    ],
)
def test_infeasible_cardinality_is_named(
    sp500_window: pd.DataFrame,
    sp500_moments: Moments,
    lower: float | list[float],
    upper: float | list[float],
    options: dict[str, float],
    subject: str,
) -> None:
    n = 10
    lo, hi = np.zeros(n), np.ones(n)
    lo[: len(np.atleast_1d(lower))] = lower
    hi[: len(np.atleast_1d(upper))] = upper
    if np.ndim(upper) == 0:
        hi[:] = upper
    problem = replace(make_problem(tickers(sp500_window, n), Objective.MIN_VOLATILITY, **options), lower_bounds=lo)
    problem = replace(problem, upper_bounds=hi)
    with pytest.raises(InfeasibleError) as error:
        optimize_mean_variance(problem, first(sp500_moments, n))
    violations = error.value.precondition_violations
    assert any(v.type == "CARDINALITY" and v.subject == subject for v in violations), violations


def test_a_tiny_time_limit_gives_the_incumbent_or_deadline_exceeded(
    sp500_window: pd.DataFrame, sp500_moments: Moments
) -> None:
    n, k = 12, 3
    moments = first(sp500_moments, n)
    problem = make_problem(tickers(sp500_window, n), Objective.MAX_QUADRATIC_UTILITY, max_holdings=k, risk_aversion=10)
    for limit in (1e-4, 0.05):
        try:
            result = optimize_cardinality(problem, moments, time_limit_s=limit)
        except DeadlineExceededError:
            continue
        assert result.status in ("OPTIMAL", "OPTIMAL_INACCURATE")
        assert holdings(result.weights) <= k
        assert result.constraints_satisfied


def test_the_iteration_cap_returns_the_incumbent(
    sp500_window: pd.DataFrame, sp500_moments: Moments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped before the gap closes: the best support found so far, feasible, flagged OPTIMAL_INACCURATE."""
    n, k = 12, 3
    moments = first(sp500_moments, n)
    problem = make_problem(tickers(sp500_window, n), Objective.MAX_QUADRATIC_UTILITY, max_holdings=k, risk_aversion=10)
    exact = optimize_cardinality(problem, moments)
    assert exact.iterations > 1
    monkeypatch.setattr("services.optimization._cardinality.MAX_ITERATIONS", 1)
    capped = optimize_cardinality(problem, moments)
    assert capped.status == "OPTIMAL_INACCURATE"
    assert capped.iterations == 1
    assert holdings(capped.weights) <= k
    assert capped.constraints_satisfied
    assert capped.objective_value <= exact.objective_value + 1e-12


def test_the_deadline_in_the_search_returns_the_incumbent(
    sp500_window: pd.DataFrame, sp500_moments: Moments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadline after the first incumbents (the rounded continuous optimum): that incumbent, OPTIMAL_INACCURATE."""
    n, k = 12, 3
    moments = first(sp500_moments, n)
    problem = make_problem(tickers(sp500_window, n), Objective.MIN_VOLATILITY, max_holdings=k)

    def out_of_time(*_: object) -> None:
        raise DeadlineExceededError("the mixed-integer master hit the time limit")

    monkeypatch.setattr("services.optimization._cardinality._Master.solve", out_of_time)
    result = optimize_cardinality(problem, moments)
    assert result.status == "OPTIMAL_INACCURATE"
    assert result.iterations == 0
    assert holdings(result.weights) <= k
    assert result.constraints_satisfied


def test_max_sharpe_without_a_rounded_incumbent_searches_weight_space(
    sp500_window: pd.DataFrame, sp500_moments: Moments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rounded support: S_lb (for κ_max) comes from the OA search on the net return; same optimum."""
    n, k = 12, 3
    moments = first(sp500_moments, n)
    problem = make_problem(
        tickers(sp500_window, n), Objective.MAX_SHARPE, upper=0.5, max_holdings=k, risk_free_rate=RISK_FREE_RATE
    )
    reference = optimize_cardinality(problem, moments)
    monkeypatch.setattr("services.optimization._cardinality._rounded_patterns", lambda *_: [])
    result = optimize_cardinality(problem, moments)
    assert result.objective_value == pytest.approx(reference.objective_value, rel=1e-9)
    assert result.status == "OPTIMAL"


def test_max_sharpe_with_no_excess_return_within_k_names_is_infeasible(
    sp500_window: pd.DataFrame, sp500_moments: Moments
) -> None:
    """Two names cannot beat the risk-free rate: the weight-space search proves it.

    Five names return 20 % but are capped at 0.2 each, three return −5 %: the continuous optimum beats r_f = 5 %,
    but two names reach at most 0.2·20 % + 0.8·(−5 %) = 0.
    """
    n = 8
    mu = np.array([0.2] * 5 + [-0.05] * 3)
    moments = Moments(expected_returns=mu, covariance=sp500_moments.covariance[:n, :n])
    problem = replace(
        make_problem(tickers(sp500_window, n), Objective.MAX_SHARPE, max_holdings=2, risk_free_rate=0.05),
        upper_bounds=np.array([0.2] * 5 + [1.0] * 3),
    )
    assert optimize_mean_variance(replace(problem, max_holdings=None), moments).objective_value > 0
    with pytest.raises(InfeasibleError) as error:
        optimize_cardinality(problem, moments)
    (violation,) = error.value.precondition_violations
    assert (violation.type, violation.subject) == ("CARDINALITY", "max_holdings")
    assert "risk-free rate" in violation.description


def test_a_non_binding_cardinality_returns_the_continuous_optimum(
    sp500_window: pd.DataFrame, sp500_moments: Moments
) -> None:
    n = 12
    moments = first(sp500_moments, n)
    problem = make_problem(tickers(sp500_window, n), Objective.MIN_VOLATILITY)
    continuous = optimize_mean_variance(problem, moments)
    result = optimize_mean_variance(replace(problem, max_holdings=n), moments)
    np.testing.assert_allclose(result.weights, continuous.weights, atol=1e-9)
    assert result.solve_path == continuous.solve_path  # the continuous solver's answer, no MIP
