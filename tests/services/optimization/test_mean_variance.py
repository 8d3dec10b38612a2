"""Mean-variance optimization against PyPortfolioOpt, SciPy's LP solver, closed forms and KKT conditions.

Truth: PyPortfolioOpt's published figures on its ``stock_prices.csv`` (tests/test_efficient_frontier.py,
risk-free rate 0.02), its ``EfficientFrontier`` run live on the same moments, ``scipy.optimize.linprog``
(HiGHS) for max return, the greedy solution of the box-and-budget LP, the unconstrained closed forms
Σ⁻¹1/(1ᵀΣ⁻¹1), Σ⁻¹(μ−r_f)/(1ᵀΣ⁻¹(μ−r_f)) and Σ⁻¹(μ−λ1)/δ, the KKT conditions of min variance under bounds,
and feasibility checked here with NumPy.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import grpc
import numpy as np
import pandas as pd
import pytest
from pypfopt import EfficientFrontier, expected_returns, risk_models
from scipy.optimize import linprog

from services.errors import DeadlineExceededError, InfeasibleError, InvalidInputError, OptimizationError
from services.estimation import estimate_moments, validate_moments
from services.optimization import (
    CONIC,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    SectorLimit,
    check_constraints,
    max_achievable_return,
    optimize_mean_variance,
)
from services.types import EstimationSettings, Moments
from stratopt.rpc_errors import status_code
from tests.services.market_data import SP500_SECTORS, return_history

FEASIBILITY_TOLERANCE = 1e-6
OBJECTIVE_RTOL = 1e-6
SP500_DAYS = 756
SECTOR_LOWER = {"financials": 0.05, "staples": 0.10}
SECTOR_UPPER = {"tech": 0.20, "energy": 0.15, "health": 0.30}


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_frame_moments(sp500_prices: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """PyPortfolioOpt's mean historical return and sample covariance of the last 756 daily returns."""
    prices = sp500_prices.iloc[-(SP500_DAYS + 1) :]
    return expected_returns.mean_historical_return(prices), risk_models.sample_cov(prices)


@pytest.fixture(scope="module")
def sp500_moments(sp500_frame_moments: tuple[pd.Series, pd.DataFrame]) -> Moments:
    mu, cov = sp500_frame_moments
    return Moments(expected_returns=mu.to_numpy(), covariance=cov.to_numpy())


@pytest.fixture(scope="module")
def stock_moments(stock_prices: pd.DataFrame) -> Moments:
    """Our default estimates (mean historical, sample covariance, PAIRWISE) on PyPortfolioOpt's data."""
    returns = stock_prices.pct_change(fill_method=None).iloc[1:]
    return estimate_moments(return_history(returns), EstimationSettings()).moments


def sector_limits(lower: dict[str, float], upper: dict[str, float]) -> tuple[SectorLimit, ...]:
    return tuple(SectorLimit(s, lower.get(s), upper.get(s)) for s in sorted(set(lower) | set(upper)))


def make_problem(
    objective: Objective,
    tickers: list[str],
    lower: float | np.ndarray,
    upper: float | np.ndarray,
    *,
    with_sectors: bool = False,
    **options: object,
) -> PortfolioProblem:
    n = len(tickers)
    return PortfolioProblem(
        symbols=tuple(tickers),
        objective=objective,
        lower_bounds=np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy(),
        upper_bounds=np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy(),
        sectors=tuple(SP500_SECTORS[t] for t in tickers) if with_sectors else (),
        sector_limits=sector_limits(SECTOR_LOWER, SECTOR_UPPER) if with_sectors else (),
        **options,  # type: ignore[arg-type]
    )


def assert_feasible(result: OptimizationResult, problem: PortfolioProblem, moments: Moments) -> None:
    """Every constraint of ``problem`` checked on the weights with NumPy, to 1e-6."""
    w = result.weights
    tol = FEASIBILITY_TOLERANCE
    assert abs(w.sum() - 1.0) <= tol
    assert np.all(w >= problem.lower_bounds - tol)
    assert np.all(w <= problem.upper_bounds + tol)
    totals = pd.Series(w).groupby(list(problem.sectors)).sum() if problem.sectors else pd.Series(dtype=float)
    for limit in problem.sector_limits:
        if limit.min_weight is not None:
            assert totals[limit.sector] >= limit.min_weight - tol
        if limit.max_weight is not None:
            assert totals[limit.sector] <= limit.max_weight + tol
    expected_return = moments.expected_returns @ w
    volatility = np.sqrt(w @ moments.covariance @ w)
    if problem.min_return is not None:
        assert expected_return >= problem.min_return - tol
    if problem.max_volatility is not None:
        assert volatility <= problem.max_volatility + tol
    assert result.constraints_satisfied
    assert result.violations == ()
    assert check_constraints(w, problem, moments) == ()
    # The reported performance is that of the weights.
    assert result.performance.expected_return == pytest.approx(expected_return, rel=1e-12, abs=1e-15)
    assert result.performance.volatility == pytest.approx(volatility, rel=1e-12)


def pypfopt_frontier(
    frame_moments: tuple[pd.Series, pd.DataFrame], lower: float, upper: float, with_sectors: bool
) -> EfficientFrontier:
    mu, cov = frame_moments
    frontier = EfficientFrontier(mu, cov, weight_bounds=(lower, upper))
    if with_sectors:
        frontier.add_sector_constraints(SP500_SECTORS, SECTOR_LOWER, SECTOR_UPPER)
    return frontier


# --- PyPortfolioOpt's published figures (stock_prices.csv, risk-free rate 0.02) --------------------------------

PUBLISHED_MAX_SHARPE = (0.3047768672819914, 0.22165566922402932, 1.2847714127003216)
PUBLISHED_MIN_VOLATILITY = (0.15056821399482578, 0.15915084514118694, 0.8204054077060996)
PUBLISHED_MAX_SHARPE_SHORT = (0.4937195216716211, 0.29516576454651955, 1.6049270564945908)
PUBLISHED_MIN_VOLATILITY_SHORT = (0.1516319319875544, 0.1555915367269669, 0.8460095886741129)


def performance_tuple(result: OptimizationResult) -> tuple[float, float, float]:
    p = result.performance
    return (p.expected_return, p.volatility, p.sharpe_ratio)


def test_published_long_only_max_sharpe(stock_prices: pd.DataFrame, stock_moments: Moments) -> None:
    problem = make_problem(Objective.MAX_SHARPE, list(stock_prices.columns), 0.0, 1.0, risk_free_rate=0.02)
    result = optimize_mean_variance(problem, stock_moments)
    np.testing.assert_allclose(performance_tuple(result), PUBLISHED_MAX_SHARPE, rtol=1e-7)
    assert result.objective_value == pytest.approx(PUBLISHED_MAX_SHARPE[2], rel=1e-7)
    assert result.status == "OPTIMAL"
    assert_feasible(result, problem, stock_moments)


def test_published_long_only_min_volatility(stock_prices: pd.DataFrame, stock_moments: Moments) -> None:
    problem = make_problem(Objective.MIN_VOLATILITY, list(stock_prices.columns), 0.0, 1.0, risk_free_rate=0.02)
    result = optimize_mean_variance(problem, stock_moments)
    assert result.performance.volatility == pytest.approx(PUBLISHED_MIN_VOLATILITY[1], rel=1e-7)
    # The min-variance weights are determined less sharply than the variance; return and Sharpe to 1e-5.
    np.testing.assert_allclose(performance_tuple(result), PUBLISHED_MIN_VOLATILITY, rtol=1e-5)
    # pypfopt run live on its own estimates of the same data.
    frontier = EfficientFrontier(
        expected_returns.mean_historical_return(stock_prices), risk_models.sample_cov(stock_prices)
    )
    frontier.min_volatility()
    live_volatility = frontier.portfolio_performance()[1]
    assert result.objective_value == pytest.approx(live_volatility**2, rel=OBJECTIVE_RTOL)
    assert_feasible(result, problem, stock_moments)


@pytest.mark.parametrize(
    ("objective", "published"),
    [(Objective.MAX_SHARPE, PUBLISHED_MAX_SHARPE_SHORT), (Objective.MIN_VOLATILITY, PUBLISHED_MIN_VOLATILITY_SHORT)],
)
def test_published_unbounded_short_portfolios(
    stock_prices: pd.DataFrame, stock_moments: Moments, objective: Objective, published: tuple[float, ...]
) -> None:
    # pypfopt's weight_bounds=(None, None); ±10 bounds that the optimum does not touch.
    problem = make_problem(objective, list(stock_prices.columns), -10.0, 10.0, risk_free_rate=0.02)
    result = optimize_mean_variance(problem, stock_moments)
    assert np.abs(result.weights).max() < 9.0
    np.testing.assert_allclose(performance_tuple(result), published, rtol=1e-7)


# --- every objective against pypfopt's EfficientFrontier on the S&P 500 data ------------------------------------

CONFIGURATIONS = {
    "long-only": (0.0, 1.0, False),
    "max-weight-0.3": (0.0, 0.3, False),
    "box-and-sectors": (0.01, 0.25, True),
    "short-and-sectors": (-0.2, 0.5, True),
}
CASES = {
    # name: (our objective, our options, pypfopt call returning its objective value)
    "max-sharpe": (
        Objective.MAX_SHARPE,
        {"risk_free_rate": 0.02},
        lambda ef: (ef.max_sharpe(risk_free_rate=0.02), ef.portfolio_performance(risk_free_rate=0.02)[2])[1],
    ),
    "min-volatility": (
        Objective.MIN_VOLATILITY,
        {},
        lambda ef: (ef.min_volatility(), ef.portfolio_performance()[1] ** 2)[1],
    ),
    "quadratic-utility-1": (
        Objective.MAX_QUADRATIC_UTILITY,
        {"risk_aversion": 1.0},
        lambda ef: quadratic_utility(ef, 1.0),
    ),
    "quadratic-utility-5": (
        Objective.MAX_QUADRATIC_UTILITY,
        {"risk_aversion": 5.0},
        lambda ef: quadratic_utility(ef, 5.0),
    ),
    "efficient-return-0.25": (
        Objective.MIN_VOLATILITY,
        {"min_return": 0.25},
        lambda ef: (ef.efficient_return(0.25), ef.portfolio_performance()[1] ** 2)[1],
    ),
    "efficient-risk-0.22": (
        Objective.MAX_RETURN,
        {"max_volatility": 0.22},
        lambda ef: (ef.efficient_risk(0.22), ef.portfolio_performance()[0])[1],
    ),
}


def quadratic_utility(frontier: EfficientFrontier, risk_aversion: float) -> float:
    frontier.max_quadratic_utility(risk_aversion=risk_aversion)
    expected_return, volatility, _ = frontier.portfolio_performance()
    return float(expected_return - 0.5 * risk_aversion * volatility**2)


@pytest.mark.filterwarnings("ignore:Sector constraints may not produce reasonable results")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_objective_value_equals_pypfopt(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, configuration: str, case: str
) -> None:
    lower, upper, with_sectors = CONFIGURATIONS[configuration]
    objective, options, pypfopt_objective = CASES[case]
    tickers = list(sp500_frame_moments[0].index)
    problem = make_problem(objective, tickers, lower, upper, with_sectors=with_sectors, **options)
    result = optimize_mean_variance(problem, sp500_moments)
    theirs = pypfopt_objective(pypfopt_frontier(sp500_frame_moments, lower, upper, with_sectors))
    assert result.objective_value == pytest.approx(theirs, rel=OBJECTIVE_RTOL)
    assert_feasible(result, problem, sp500_moments)


def linprog_max_return(mu: np.ndarray, problem: PortfolioProblem) -> float:
    """Max μᵀw under budget, bounds and sector limits, by SciPy's HiGHS."""
    rows, limits = [], []
    for limit in problem.sector_limits:
        members = np.array([1.0 if s == limit.sector else 0.0 for s in problem.sectors])
        if limit.max_weight is not None:
            rows.append(members)
            limits.append(limit.max_weight)
        if limit.min_weight is not None:
            rows.append(-members)
            limits.append(-limit.min_weight)
    solution = linprog(
        -mu,
        A_ub=np.array(rows) if rows else None,
        b_ub=np.array(limits) if limits else None,
        A_eq=np.ones((1, len(mu))),
        b_eq=[1.0],
        bounds=list(zip(problem.lower_bounds, problem.upper_bounds, strict=True)),
        method="highs",
    )
    assert solution.status == 0
    return float(-solution.fun)


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_max_return_equals_scipy_linprog(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, configuration: str
) -> None:
    lower, upper, with_sectors = CONFIGURATIONS[configuration]
    tickers = list(sp500_frame_moments[0].index)
    problem = make_problem(Objective.MAX_RETURN, tickers, lower, upper, with_sectors=with_sectors)
    result = optimize_mean_variance(problem, sp500_moments)
    assert result.objective_value == pytest.approx(
        linprog_max_return(sp500_moments.expected_returns, problem), rel=OBJECTIVE_RTOL
    )
    assert_feasible(result, problem, sp500_moments)


def greedy_max_return(mu: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Closed form of max μᵀw s.t. 1ᵀw = 1, l ≤ w ≤ u: start at l, fill by descending μ up to u."""
    weights = lower.copy()
    budget = 1.0 - lower.sum()
    for i in np.argsort(-mu):
        step = min(upper[i] - lower[i], budget)
        weights[i] += step
        budget -= step
    return weights


def box(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "max-weight-0.3":
        return np.zeros(n), np.full(n, 0.3)
    if kind == "0.02-to-0.3":
        return np.full(n, 0.02), np.full(n, 0.3)
    rng = np.random.default_rng(5)  # per-strategy bounds
    return rng.uniform(0.0, 0.03, n).round(3), rng.uniform(0.05, 0.4, n).round(3)


@pytest.mark.parametrize("kind", ["max-weight-0.3", "0.02-to-0.3", "per-strategy"])
def test_max_return_is_the_greedy_fill_by_descending_expected_return(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, kind: str
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    lower, upper = box(kind, len(tickers))
    problem = make_problem(Objective.MAX_RETURN, tickers, lower, upper)
    result = optimize_mean_variance(problem, sp500_moments)
    expected = greedy_max_return(sp500_moments.expected_returns, lower, upper)
    np.testing.assert_allclose(result.weights, expected, rtol=0.0, atol=1e-7)
    assert result.objective_value == pytest.approx(sp500_moments.expected_returns @ expected, rel=1e-8)
    if kind == "max-weight-0.3":  # RRC, LLY, UNH at 0.3, XOM takes the last 0.1
        top = pd.Series(result.weights, index=tickers).round(6)
        assert top[top > 0].to_dict() == {"LLY": 0.3, "RRC": 0.3, "UNH": 0.3, "XOM": 0.1}


# --- KKT conditions and closed forms -----------------------------------------------------------------------------


@pytest.mark.parametrize(("lower", "upper"), [(0.0, 1.0), (0.0, 0.15), (0.02, 0.1), (-0.05, 0.12)])
def test_min_volatility_satisfies_kkt_conditions_under_bounds(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, lower: float, upper: float
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    result = optimize_mean_variance(make_problem(Objective.MIN_VOLATILITY, tickers, lower, upper), sp500_moments)
    w = result.weights
    gradient = 2.0 * sp500_moments.covariance @ w
    margin = 1e-6
    inside = (w > lower + margin) & (w < upper - margin)
    at_lower = w <= lower + margin
    at_upper = w >= upper - margin
    assert inside.any()
    assert (inside | at_lower | at_upper).all()
    # Stationarity: ∇ = λ1 + ν_lower − ν_upper with ν ≥ 0, so the gradient is equal on free assets (= λ),
    # not below λ where the lower bound is active and not above λ where the upper bound is.
    multiplier = gradient[inside].mean()
    np.testing.assert_allclose(gradient[inside], multiplier, rtol=1e-6)
    assert np.all(gradient[at_lower] >= multiplier * (1 - 1e-6))
    assert np.all(gradient[at_upper] <= multiplier * (1 + 1e-6))
    # wᵀ∇ = 2wᵀΣw = λ + ν_lᵀl − ν_uᵀu, the complementary-slackness identity, with ν read off the gradient.
    nu_lower = np.where(at_lower, gradient - multiplier, 0.0)
    nu_upper = np.where(at_upper, multiplier - gradient, 0.0)
    assert 2.0 * result.objective_value == pytest.approx(
        multiplier + nu_lower.sum() * lower - nu_upper.sum() * upper, rel=1e-6
    )


def test_unconstrained_min_variance_is_the_closed_form(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    result = optimize_mean_variance(make_problem(Objective.MIN_VOLATILITY, tickers, -5.0, 5.0), sp500_moments)
    inverse_ones = np.linalg.solve(sp500_moments.covariance, np.ones(len(tickers)))
    expected = inverse_ones / inverse_ones.sum()
    assert expected.min() < 0  # the closed form shorts: the bounds really are wide
    np.testing.assert_allclose(result.weights, expected, rtol=0.0, atol=1e-6)
    assert result.objective_value == pytest.approx(1.0 / inverse_ones.sum(), rel=1e-8)


def test_unconstrained_max_sharpe_is_the_tangency_portfolio(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    rf = 0.02
    problem = make_problem(Objective.MAX_SHARPE, tickers, -5.0, 5.0, risk_free_rate=rf)
    result = optimize_mean_variance(problem, sp500_moments)
    excess = sp500_moments.expected_returns - rf
    direction = np.linalg.solve(sp500_moments.covariance, excess)
    assert direction.sum() > 0  # the tangency portfolio exists (positive net exposure)
    np.testing.assert_allclose(result.weights, direction / direction.sum(), rtol=0.0, atol=1e-6)
    assert result.objective_value == pytest.approx(np.sqrt(excess @ direction), rel=1e-8)


@pytest.mark.parametrize("risk_aversion", [1.0, 3.0, 10.0])
def test_unconstrained_quadratic_utility_is_the_closed_form(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, risk_aversion: float
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    problem = make_problem(Objective.MAX_QUADRATIC_UTILITY, tickers, -5.0, 5.0, risk_aversion=risk_aversion)
    result = optimize_mean_variance(problem, sp500_moments)
    sigma, mu = sp500_moments.covariance, sp500_moments.expected_returns
    inverse_ones, inverse_mu = np.linalg.solve(sigma, np.ones(len(mu))), np.linalg.solve(sigma, mu)
    budget_multiplier = (inverse_mu.sum() - risk_aversion) / inverse_ones.sum()
    expected = (inverse_mu - budget_multiplier * inverse_ones) / risk_aversion
    assert np.abs(expected).max() < 4.5
    np.testing.assert_allclose(result.weights, expected, rtol=0.0, atol=1e-6)
    utility = mu @ expected - 0.5 * risk_aversion * expected @ sigma @ expected
    assert result.objective_value == pytest.approx(utility, rel=1e-8)


# --- constraints bind and hold ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def min_volatility_reference(sp500_frame_moments: tuple[pd.Series, pd.DataFrame]) -> tuple[float, float]:
    """Return and volatility of pypfopt's long-only min-volatility portfolio."""
    mu, cov = sp500_frame_moments
    frontier = EfficientFrontier(mu, cov)
    frontier.min_volatility()
    expected_return, volatility, _ = frontier.portfolio_performance()
    return expected_return, volatility


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
@pytest.mark.parametrize("with_sectors", [False, True])
def test_efficient_return_binds_at_targets_above_the_min_volatility_return(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    fraction: float,
    with_sectors: bool,
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 0.4, with_sectors=with_sectors)
    # Targets between pypfopt's min-volatility return and the highest reachable return (HiGHS).
    frontier = pypfopt_frontier(sp500_frame_moments, 0.0, 0.4, with_sectors)
    frontier.min_volatility()
    min_volatility_return = frontier.portfolio_performance()[0]
    highest = linprog_max_return(sp500_moments.expected_returns, problem)
    target = min_volatility_return + fraction * (highest - min_volatility_return)
    problem = replace(problem, min_return=target)
    result = optimize_mean_variance(problem, sp500_moments)
    assert_feasible(result, problem, sp500_moments)
    assert abs(result.performance.expected_return - target) <= FEASIBILITY_TOLERANCE


def test_efficient_return_below_the_min_volatility_return_is_slack(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    min_volatility_reference: tuple[float, float],
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    target = min_volatility_reference[0] - 0.05
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 1.0, min_return=target)
    result = optimize_mean_variance(problem, sp500_moments)
    assert_feasible(result, problem, sp500_moments)
    assert result.performance.expected_return > target + 0.01
    assert result.objective_value == pytest.approx(min_volatility_reference[1] ** 2, rel=OBJECTIVE_RTOL)


@pytest.mark.parametrize(
    ("objective", "options"),
    [
        (Objective.MAX_RETURN, {}),
        (Objective.MAX_QUADRATIC_UTILITY, {"risk_aversion": 0.5}),
        (Objective.MAX_SHARPE, {"risk_free_rate": 0.02}),
    ],
)
@pytest.mark.parametrize("cap", [0.195, 0.21, 0.25])
def test_max_volatility_binds_when_the_unconstrained_optimum_is_riskier(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    min_volatility_reference: tuple[float, float],
    objective: Objective,
    options: dict[str, float],
    cap: float,
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    uncapped = optimize_mean_variance(make_problem(objective, tickers, 0.0, 0.4, **options), sp500_moments)
    assert min_volatility_reference[1] < cap < uncapped.performance.volatility
    problem = make_problem(objective, tickers, 0.0, 0.4, max_volatility=cap, **options)
    result = optimize_mean_variance(problem, sp500_moments)
    assert_feasible(result, problem, sp500_moments)
    assert abs(result.performance.volatility - cap) <= FEASIBILITY_TOLERANCE


def test_max_sharpe_with_min_return_above_the_tangency_return_binds(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    tangency = optimize_mean_variance(
        make_problem(Objective.MAX_SHARPE, tickers, 0.0, 0.4, risk_free_rate=0.02), sp500_moments
    )
    target = tangency.performance.expected_return + 0.05
    problem = make_problem(Objective.MAX_SHARPE, tickers, 0.0, 0.4, risk_free_rate=0.02, min_return=target)
    result = optimize_mean_variance(problem, sp500_moments)
    assert_feasible(result, problem, sp500_moments)
    assert abs(result.performance.expected_return - target) <= FEASIBILITY_TOLERANCE
    assert result.objective_value < tangency.objective_value


@pytest.mark.parametrize("objective", list(Objective))
def test_per_strategy_bounds_and_sector_limits_hold(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, objective: Objective
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    lower, upper = box("per-strategy", len(tickers))
    lower[tickers.index("KO")], upper[tickers.index("KO")] = 0.08, 0.2  # a strategy forced in
    upper[tickers.index("RRC")] = 0.02  # and the highest-return one capped
    problem = make_problem(objective, tickers, lower, upper, with_sectors=True, risk_free_rate=0.02)
    result = optimize_mean_variance(problem, sp500_moments)
    assert_feasible(result, problem, sp500_moments)
    assert result.weights[tickers.index("KO")] >= 0.08 - FEASIBILITY_TOLERANCE
    assert result.weights[tickers.index("RRC")] <= 0.02 + FEASIBILITY_TOLERANCE


# --- check_constraints on hand-made violations ---------------------------------------------------------------------

HAND_MOMENTS = Moments(
    expected_returns=np.array([0.10, 0.05, 0.08, 0.12]), covariance=np.diag([0.04, 0.01, 0.09, 0.16])
)
HAND_PROBLEM = PortfolioProblem(
    symbols=("a", "b", "c", "d"),
    objective=Objective.MIN_VOLATILITY,
    lower_bounds=np.zeros(4),
    upper_bounds=np.ones(4),
    sectors=("x", "x", "y", "y"),
)


@pytest.mark.parametrize(
    ("changes", "weights", "expected_words"),
    [
        ({}, [0.25, 0.25, 0.25, 0.26], ["sum", "1.01"]),
        ({"lower_bounds": np.array([0.0, 0.0, 0.1, 0.0])}, [0.3, 0.3, 0.05, 0.35], ["c", "0.05", "below 0.1"]),
        ({"upper_bounds": np.full(4, 0.4)}, [0.45, 0.2, 0.2, 0.15], ["a", "0.45", "above 0.4"]),
        ({"sector_limits": (SectorLimit("x", max_weight=0.5),)}, [0.3, 0.3, 0.2, 0.2], ["sector x", "above 0.5"]),
        ({"sector_limits": (SectorLimit("y", min_weight=0.5),)}, [0.3, 0.3, 0.2, 0.2], ["sector y", "below 0.5"]),
        ({"min_return": 0.1}, [0.25, 0.25, 0.25, 0.25], ["expected return", "0.0875", "below 0.1"]),
        # volatility of equal weights: sqrt(0.0625 * 0.30) = 0.1369306
        ({"max_volatility": 0.1}, [0.25, 0.25, 0.25, 0.25], ["volatility", "0.13693", "above 0.1"]),
    ],
    ids=["sum", "lower-bound", "upper-bound", "sector-max", "sector-min", "min-return", "max-volatility"],
)
def test_check_constraints_reports_each_hand_made_violation(
    changes: dict[str, object], weights: list[float], expected_words: list[str]
) -> None:
    problem = replace(HAND_PROBLEM, **changes)  # type: ignore[arg-type]
    violations = check_constraints(np.array(weights), problem, HAND_MOMENTS)
    assert len(violations) == 1
    for word in expected_words:
        assert word in violations[0]


def test_check_constraints_accepts_a_feasible_vector_and_tolerates_1e_minus_6() -> None:
    problem = replace(
        HAND_PROBLEM,
        upper_bounds=np.full(4, 0.4),
        sector_limits=(SectorLimit("x", 0.2, 0.7), SectorLimit("y", None, 0.7)),
        min_return=0.08,
        max_volatility=0.2,
    )
    assert check_constraints(np.array([0.3, 0.2, 0.2, 0.3]), problem, HAND_MOMENTS) == ()
    # 0.5e-6 over a bound is within tolerance, 2e-6 is not.
    assert check_constraints(np.array([0.4 + 5e-7, 0.2, 0.2, 0.2 - 5e-7]), problem, HAND_MOMENTS) == ()
    breached = check_constraints(np.array([0.4 + 2e-6, 0.2, 0.2, 0.2 - 2e-6]), problem, HAND_MOMENTS)
    assert len(breached) == 1 and breached[0].startswith("a weight")


def test_check_constraints_reports_every_violation_at_once() -> None:
    problem = replace(
        HAND_PROBLEM,
        upper_bounds=np.full(4, 0.4),
        sector_limits=(SectorLimit("x", 0.2, 0.3), SectorLimit("y", 0.9, None)),
        min_return=0.5,
        max_volatility=0.05,
    )
    # sum 1.1; a above 0.4; sector x 0.8 above 0.3; sector y 0.3 below 0.9; return 0.082 < 0.5; vol > 0.05
    violations = check_constraints(np.array([0.5, 0.3, 0.3, 0.0]), problem, HAND_MOMENTS)
    assert len(violations) == 6


# --- pre-checks and solver-proven infeasibility ---------------------------------------------------------------------


def infeasibility_types(problem: PortfolioProblem, moments: Moments) -> list[str]:
    with pytest.raises(InfeasibleError) as caught:
        optimize_mean_variance(problem, moments)
    assert status_code(caught.value) is grpc.StatusCode.FAILED_PRECONDITION
    return [v.type for v in caught.value.precondition_violations]


@pytest.mark.parametrize(("lower", "upper", "subject"), [(0.0, 0.04, "upper_bounds"), (0.06, 1.0, "lower_bounds")])
def test_bounds_that_cannot_sum_to_one_fail_the_bounds_sum_precheck(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    lower: float,
    upper: float,
    subject: str,
) -> None:
    tickers = list(sp500_frame_moments[0].index)  # 20 strategies: 20 * 0.04 = 0.8 < 1, 20 * 0.06 = 1.2 > 1
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, lower, upper)
    with pytest.raises(InfeasibleError) as caught:
        optimize_mean_variance(problem, sp500_moments)
    assert [(v.type, v.subject) for v in caught.value.precondition_violations] == [("BOUNDS_SUM", subject)]


@pytest.mark.parametrize(
    ("lower", "upper", "sector_lower", "sector_upper", "expected"),
    [
        (0.0, 1.0, {"tech": 0.6, "health": 0.6}, {}, ["SECTOR_MINIMA"]),  # minima sum to 1.2
        (0.0, 0.1, {"energy": 0.5}, {}, ["SECTOR_BOUNDS"]),  # 3 energy stocks reach at most 0.3
        (0.02, 1.0, {}, {"health": 0.05}, ["SECTOR_BOUNDS"]),  # 5 health stocks hold at least 0.1
    ],
    ids=["minima", "minimum-unreachable", "maximum-below-floor"],
)
def test_sector_limits_the_bounds_cannot_meet_fail_the_sector_prechecks(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    lower: float,
    upper: float,
    sector_lower: dict[str, float],
    sector_upper: dict[str, float],
    expected: list[str],
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    problem = replace(
        make_problem(Objective.MIN_VOLATILITY, tickers, lower, upper, with_sectors=True),
        sector_limits=sector_limits(sector_lower, sector_upper),
    )
    assert infeasibility_types(problem, sp500_moments) == expected


def test_min_return_above_every_expected_return_fails_the_target_precheck(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    target = float(sp500_frame_moments[0].max()) + 0.01
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 1.0, min_return=target)
    assert infeasibility_types(problem, sp500_moments) == ["TARGET_RETURN"]


@pytest.mark.parametrize("above_max", [0.0, 0.05])
def test_max_sharpe_without_excess_return_fails_the_precheck(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, above_max: float
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    rf = float(sp500_frame_moments[0].max()) + above_max
    with pytest.raises(ValueError, match="risk-free rate"):  # pypfopt refuses it too
        EfficientFrontier(*sp500_frame_moments).max_sharpe(risk_free_rate=rf)
    problem = make_problem(Objective.MAX_SHARPE, tickers, 0.0, 1.0, risk_free_rate=rf)
    assert infeasibility_types(problem, sp500_moments) == ["NO_EXCESS_RETURN"]
    # The risk-free rate does not matter to min volatility.
    min_volatility = replace(problem, objective=Objective.MIN_VOLATILITY)
    assert optimize_mean_variance(min_volatility, sp500_moments).constraints_satisfied


def test_max_sharpe_without_excess_return_under_a_group_limit_is_no_excess_return_not_a_conflict(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    """A sector floor that leaves no portfolio above r_f: NO_EXCESS_RETURN, not a conflict among the constraints.

    The constraints hold (min volatility solves), so the answer names the risk-free rate, with the highest return
    they allow (scipy's linprog on the same constraints); the solver alone says "infeasible".
    """
    mu = sp500_frame_moments[0]
    tickers = list(mu.index)
    low = [t for t in tickers if mu[t] < float(mu.median())]
    sectors = tuple("low" if t in low else "high" for t in tickers)
    problem = replace(
        make_problem(Objective.MAX_SHARPE, tickers, 0.0, 1.0),
        sectors=sectors,
        sector_limits=(SectorLimit(sector="low", min_weight=0.9),),
    )
    in_low = np.array([s == "low" for s in sectors], dtype=float)
    best = linprog(-mu.to_numpy(), A_ub=[-in_low], b_ub=[-0.9], A_eq=[np.ones(len(tickers))], b_eq=[1.0],
                   bounds=(0.0, 1.0), method="highs")  # fmt: skip
    best_return = -float(best.fun)
    # r_f between the best return the floor allows and the best without it: only the floor takes the excess away.
    rf = (best_return + float(mu.max())) / 2
    problem = replace(problem, risk_free_rate=rf)
    with pytest.raises(InfeasibleError) as caught:
        optimize_mean_variance(problem, sp500_moments)
    assert [v.type for v in caught.value.precondition_violations] == ["NO_EXCESS_RETURN"]
    assert f"the highest the constraints allow (net of costs) is {best_return:.6g}" in str(caught.value)
    assert optimize_mean_variance(replace(problem, objective=Objective.MIN_VOLATILITY), sp500_moments)


def test_every_failed_precheck_is_reported(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    problem = make_problem(Objective.MAX_SHARPE, tickers, 0.0, 0.04, min_return=5.0, risk_free_rate=5.0)
    assert infeasibility_types(problem, sp500_moments) == ["BOUNDS_SUM", "TARGET_RETURN", "NO_EXCESS_RETURN"]


@pytest.mark.parametrize("objective", list(Objective))
def test_max_volatility_below_the_min_volatility_portfolio_is_solver_infeasible(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    min_volatility_reference: tuple[float, float],
    objective: Objective,
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    cap = 0.15
    assert cap < min_volatility_reference[1]  # pypfopt's least volatile long-only portfolio: ~0.19
    problem = make_problem(objective, tickers, 0.0, 1.0, max_volatility=cap, risk_free_rate=0.02)
    assert infeasibility_types(problem, sp500_moments) == ["SOLVER_INFEASIBLE"]


def test_min_return_above_the_reachable_return_is_caught_by_the_precheck(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    lower, upper = np.zeros(len(tickers)), np.full(len(tickers), 0.3)
    reachable = sp500_moments.expected_returns @ greedy_max_return(sp500_moments.expected_returns, lower, upper)
    target = reachable + 0.02
    assert target < sp500_moments.expected_returns.max()  # below the best single return, above what 0.3 caps allow
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, lower, upper, min_return=target)
    assert infeasibility_types(problem, sp500_moments) == ["TARGET_RETURN"]
    # Just below the reachable maximum the problem is feasible and the return binds.
    feasible = make_problem(Objective.MIN_VOLATILITY, tickers, lower, upper, min_return=reachable - 1e-4)
    result = optimize_mean_variance(feasible, sp500_moments)
    assert sp500_moments.expected_returns @ result.weights == pytest.approx(reachable - 1e-4, abs=1e-6)


def test_sector_caps_below_the_target_are_solver_infeasible(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    """Sector limits are not in the greedy pre-check: the solver proves this conflict."""
    tickers = list(sp500_frame_moments[0].index)
    mu = sp500_moments.expected_returns
    best = tickers[int(np.argmax(mu))]
    problem = replace(
        make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 1.0, min_return=float(mu.max()) - 1e-3),
        sectors=tuple("top" if t == best else "rest" for t in tickers),
        sector_limits=(SectorLimit("top", max_weight=0.1),),
    )
    assert infeasibility_types(problem, sp500_moments) == ["SOLVER_INFEASIBLE"]


def test_crossed_strategy_bounds_are_invalid(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    lower, upper = np.zeros(len(tickers)), np.full(len(tickers), 0.5)
    lower[3], upper[3] = 0.3, 0.2
    with pytest.raises(InvalidInputError) as caught:
        optimize_mean_variance(make_problem(Objective.MIN_VOLATILITY, tickers, lower, upper), sp500_moments)
    assert [v.field for v in caught.value.field_violations] == ["lower_bounds[3]"]


def test_crossed_sector_limit_is_invalid(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    problem = replace(
        make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 1.0, with_sectors=True),
        sector_limits=(SectorLimit("energy", 0.1, 0.2), SectorLimit("tech", 0.3, 0.2)),
    )
    with pytest.raises(InvalidInputError) as caught:
        optimize_mean_variance(problem, sp500_moments)
    assert [v.field for v in caught.value.field_violations] == ["sector_limits[1]"]


def test_sector_limit_on_an_unknown_sector_is_invalid(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments
) -> None:
    tickers = list(sp500_frame_moments[0].index)
    problem = replace(
        make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 1.0, with_sectors=True),
        sector_limits=(SectorLimit("energy", max_weight=0.2), SectorLimit("crypto", max_weight=0.1)),
    )
    with pytest.raises(InvalidInputError) as caught:
        optimize_mean_variance(problem, sp500_moments)
    assert [v.field for v in caught.value.field_violations] == ["sector_limits[1].sector"]
    assert status_code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("seed", range(12))
def test_max_achievable_return_equals_scipy_linprog(seed: int) -> None:
    """The greedy closed form (vectorised) against HiGHS on the LP max μᵀw s.t. l ≤ w ≤ u, low ≤ 1ᵀw ≤ high.

    Cases: long-only, caps, shorts, ties in μ, non-positive μ that the budget's low end forces in, zero spans
    (pinned names) and net exposure bounds.
    """
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    mu = np.round(rng.normal(0.02 if seed % 3 else -0.05, 0.1, n), 2)  # rounded: ties
    lower = np.where(rng.random(n) < 0.3, -rng.uniform(0.0, 0.2, n), 0.0) if seed % 2 else np.zeros(n)
    upper = lower + np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.01, 3.0 / n + 0.05, n))
    low, high = [(1.0, 1.0), (0.5, 1.2), (0.9, np.inf), (-np.inf, 0.8)][seed % 4]
    low, high = max(low, float(lower.sum())), min(high, float(upper.sum()))
    if low > high:
        low = high
    solution = linprog(
        -mu,
        A_ub=np.vstack((np.ones(n), -np.ones(n))),
        b_ub=np.array([high, -low]),
        bounds=list(zip(lower, upper, strict=True)),
        method="highs",
    )
    assert solution.status == 0
    assert max_achievable_return(mu, lower, upper, (low, high)) == pytest.approx(-solution.fun, rel=1e-9, abs=1e-12)


# --- validate_moments --------------------------------------------------------------------------------------------

N_SMALL = 5


def small_moments() -> Moments:
    rng = np.random.default_rng(2)
    factor = rng.standard_normal((N_SMALL, N_SMALL)) * 0.1
    return Moments(
        expected_returns=rng.uniform(0.0, 0.2, N_SMALL), covariance=factor @ factor.T + 0.01 * np.eye(N_SMALL)
    )


def with_covariance_entry(row: int, column: int, value: float) -> Moments:
    moments = small_moments()
    covariance = moments.covariance.copy()
    covariance[row, column] = value
    return Moments(moments.expected_returns, covariance)


def with_spectrum(eigenvalues: list[float]) -> Moments:
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((N_SMALL, N_SMALL)))
    covariance = q @ np.diag(eigenvalues) @ q.T
    return Moments(small_moments().expected_returns, (covariance + covariance.T) / 2.0)


@pytest.mark.parametrize(
    ("moments", "field", "words"),
    [
        (with_covariance_entry(0, 1, 0.5), "covariance", "symmetric"),
        (with_spectrum([0.04, 0.03, 0.02, 0.01, -0.005]), "covariance", "positive semidefinite"),
        (with_covariance_entry(1, 2, np.nan), "covariance[1, 2]", "finite"),
        (with_covariance_entry(4, 4, np.inf), "covariance[4, 4]", "finite"),
        (
            Moments(np.array([0.1, 0.2, np.nan, 0.0, 0.1]), small_moments().covariance),
            "expected_returns[2]",
            "finite",
        ),
        (Moments(np.zeros(N_SMALL + 1), small_moments().covariance), "expected_returns", "6 values"),
        (Moments(np.zeros(N_SMALL), np.eye(N_SMALL - 1)), "covariance", "5x5"),
        (Moments(np.zeros(N_SMALL), np.eye(N_SMALL).ravel()), "covariance", "5x5"),
    ],
    ids=["asymmetric", "negative-eigenvalue", "nan", "inf", "nan-return", "returns-shape", "cov-shape", "cov-flat"],
)
def test_validate_moments_rejects_bad_moments(moments: Moments, field: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_moments(moments, N_SMALL)
    assert [v.field for v in caught.value.field_violations] == [field]
    assert words in caught.value.field_violations[0].description


def test_validate_moments_returns_the_cholesky_factor_of_an_exactly_symmetric_covariance() -> None:
    """The proof of positive definiteness is returned for reuse: C upper with CᵀC = Σ (NumPy's L = Cᵀ)."""
    moments = small_moments()
    covariance = (moments.covariance + moments.covariance.T) / 2.0  # exactly symmetric
    factor = validate_moments(Moments(moments.expected_returns, covariance), N_SMALL)
    assert factor is not None and factor.shape == (N_SMALL, N_SMALL)
    upper = np.triu(factor)  # the strict lower triangle is left as LAPACK found it
    np.testing.assert_allclose(upper.T, np.linalg.cholesky(covariance), rtol=0, atol=1e-15)
    np.testing.assert_allclose(upper.T @ upper, covariance, rtol=0, atol=1e-15)
    noisy = covariance.copy()
    noisy[0, 1] *= 1 + 1e-14  # symmetric only to the tolerance: its factor would be of (Σ + Σᵀ)/2
    assert validate_moments(Moments(moments.expected_returns, noisy), N_SMALL) is None
    assert validate_moments(with_spectrum([0.04, 0.03, 0.0, 0.0, 0.0]), N_SMALL) is None  # singular PSD
    returns = np.random.default_rng(5).standard_normal((900, 600))  # N = 600: several blocks of 256
    large = np.cov(returns, rowvar=False)
    large = (large + large.T) / 2
    assert validate_moments(Moments(np.zeros(600), large), 600) is not None
    skewed = large.copy()
    skewed[590, 3] += 1e-3  # an asymmetry in an off-diagonal block of the blocked comparison
    with pytest.raises(InvalidInputError, match="symmetric"):
        validate_moments(Moments(np.zeros(600), skewed), 600)


def test_validate_moments_accepts_psd_and_rounding_noise() -> None:
    validate_moments(small_moments(), N_SMALL)
    validate_moments(with_spectrum([0.04, 0.03, 0.0, 0.0, 0.0]), N_SMALL)  # singular PSD
    noisy = small_moments()
    covariance = noisy.covariance.copy()
    covariance[0, 1] *= 1 + 1e-14
    validate_moments(Moments(noisy.expected_returns, covariance), N_SMALL)


def test_cached_parametric_program_equals_a_fresh_constant_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-solving a cached program with other data of the same shape gives what a fresh build gives."""
    import services.optimization._conic as conic

    rng = np.random.default_rng(7)
    n = 12
    problems = []
    for _ in range(3):
        loadings = rng.normal(size=(n, 3))
        covariance = loadings @ loadings.T * 0.01 + np.diag(rng.uniform(0.01, 0.05, n))
        moments = Moments(expected_returns=rng.uniform(0.0, 0.25, n), covariance=covariance)
        problem = PortfolioProblem(
            symbols=tuple(f"s{i}" for i in range(n)),
            objective=Objective.MAX_SHARPE,
            lower_bounds=np.zeros(n),
            upper_bounds=np.full(n, rng.uniform(0.2, 0.5)),
            risk_free_rate=0.01,
        )
        problems.append((problem, moments))
    cached = [optimize_mean_variance(p, m, backends=(CONIC,)).weights for p, m in problems + problems[:1]]
    monkeypatch.setattr(conic, "PARAMETRIC_MAX_ASSETS", 0)
    fresh = [optimize_mean_variance(p, m, backends=(CONIC,)).weights for p, m in problems]
    for got, expected in zip(cached, [*fresh, fresh[0]], strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-7)


def test_prechecks_allow_what_shorting_makes_feasible() -> None:
    """Pre-checks let through what shorting makes feasible.

    With negative lower bounds a target above every μ, an r_f above every μ and sector minima over 1 can all be
    feasible; the solver must find the portfolio (checked by hand below).
    """
    mu = np.array([0.08, 0.07, 0.01])
    moments = Moments(expected_returns=mu, covariance=np.diag([0.04, 0.03, 0.02]))

    def problem(**fields: object) -> PortfolioProblem:
        base: dict[str, object] = {
            "symbols": ("a", "b", "c"),
            "objective": Objective.MIN_VOLATILITY,
            "lower_bounds": np.full(3, -1.0),
            "upper_bounds": np.ones(3),
            "sectors": ("x", "y", "z"),
        }
        base.update(fields)
        return PortfolioProblem(**base)  # type: ignore[arg-type]

    # w = (1, 1, -1) sums to 1 with return 0.14: above every single μ.
    target = optimize_mean_variance(problem(min_return=0.10), moments)
    assert float(mu @ target.weights) >= 0.10 - 1e-6
    sharpe = optimize_mean_variance(problem(objective=Objective.MAX_SHARPE, risk_free_rate=0.09), moments)
    assert float(mu @ sharpe.weights) > 0.09
    sectors = (SectorLimit("x", min_weight=0.6), SectorLimit("y", min_weight=0.6))
    minima = optimize_mean_variance(problem(sector_limits=sectors), moments)
    assert minima.weights[0] >= 0.6 - 1e-6 and minima.weights[1] >= 0.6 - 1e-6
    assert minima.weights.sum() == pytest.approx(1.0, abs=1e-6)


def test_a_deadline_does_not_stick_to_a_cached_program(sp500_moments: Moments, monkeypatch: pytest.MonkeyPatch) -> None:
    """A time limit must not leak into the next call (cvxpy keeps a re-solved problem's solver settings)."""
    n = len(sp500_moments.expected_returns)
    problem = PortfolioProblem(
        symbols=tuple(f"s{i}" for i in range(n)),
        objective=Objective.MIN_VOLATILITY,
        lower_bounds=np.zeros(n),
        upper_bounds=np.ones(n),
    )
    for limit in (0.001, 0.002, 0.004):  # long enough to reach the solver, too short to finish it
        with contextlib.suppress(DeadlineExceededError):
            optimize_mean_variance(problem, sp500_moments, time_limit_s=limit, backends=(CONIC,))
        assert optimize_mean_variance(problem, sp500_moments, backends=(CONIC,)).status == "OPTIMAL"


def test_a_failing_primary_solver_falls_back_to_scs(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame], sp500_moments: Moments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clarabel made to fail (a fake of the solver call only): SCS answers, the result says so and is right."""
    import services.optimization._solver as solver

    tickers = list(sp500_frame_moments[0].index)
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 0.3)
    exact = optimize_mean_variance(problem, sp500_moments, backends=(CONIC,))
    real_solve = solver._solve

    def failing_clarabel(*args: object, solver: str = "CLARABEL", **kwargs: object) -> str:
        if solver == "CLARABEL":
            raise OptimizationError("CLARABEL failed: simulated numerical trouble")
        return real_solve(*args, solver=solver, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(solver, "_solve", failing_clarabel)
    result = optimize_mean_variance(problem, sp500_moments, backends=(CONIC,))
    assert result.solver == "SCS" and result.fallback_used
    assert result.constraints_satisfied
    # SCS is first-order: its optimum agrees with Clarabel's to its own accuracy.
    assert result.objective_value == pytest.approx(exact.objective_value, rel=1e-5)
    assert not exact.fallback_used and exact.solver == "CLARABEL"


def test_a_portfolio_without_risk_has_zero_risk_contributions() -> None:
    """All weights 0 (a market-neutral book pinned flat): every contribution 0, not 0/0 = NaN, single and stacked."""
    from services.optimization._metrics import risk_contributions, stacked_risk_contributions

    sigma = np.array([[0.04, 0.01], [0.01, 0.09]])
    flat, held = np.zeros(2), np.array([0.5, 0.5])
    assert risk_contributions(flat, sigma).tolist() == [0.0, 0.0]
    stacked = stacked_risk_contributions([flat, held], [sigma, sigma])
    assert stacked[0].tolist() == [0.0, 0.0]
    # w_i (Σw)_i / wᵀΣw by hand: Σw = (0.025, 0.05), wᵀΣw = 0.0375.
    np.testing.assert_allclose(stacked[1], [0.0125 / 0.0375, 0.025 / 0.0375], rtol=1e-12)


@pytest.mark.parametrize(
    ("objective", "fields", "field"),
    [
        (Objective.MIN_VOLATILITY, {"min_return": float("nan")}, "min_return"),
        (Objective.MAX_SHARPE, {"risk_free_rate": float("nan")}, "risk_free_rate"),
        (Objective.MAX_RETURN, {"max_volatility": -0.1}, "max_volatility"),
        (Objective.MAX_QUADRATIC_UTILITY, {"risk_aversion": -1.0}, "risk_aversion"),
        (Objective.MAX_QUADRATIC_UTILITY, {"risk_aversion": float("inf")}, "risk_aversion"),
    ],
)
def test_the_engine_itself_names_a_bad_scalar(
    sp500_frame_moments: tuple[pd.Series, pd.DataFrame],
    sp500_moments: Moments,
    objective: Objective,
    fields: dict[str, float],
    field: str,
) -> None:
    """What the gRPC mapping refuses, the engine refuses too (in-process callers: ``services.api``), by field.

    Before, a NaN floor was dropped, a NaN r_f gave NaN figures and a negative δ a cvxpy ValueError.
    """
    problem = make_problem(objective, list(sp500_frame_moments[0].index), 0.0, 1.0, **fields)
    with pytest.raises(InvalidInputError) as caught:
        optimize_mean_variance(problem, sp500_moments)
    assert [v.field for v in caught.value.field_violations] == [field]
