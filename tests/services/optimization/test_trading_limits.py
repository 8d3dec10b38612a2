"""Trading limits of the mean-variance engine against independent plain-cvxpy formulations.

Families: two-way turnover Σ|w − w₀| ≤ T, per-name turnover caps |w_i − w₀_i| ≤ cap_i, leverage Σ|w| ≤ L,
linear transaction costs cᵀ|w − w₀|/1e4 (net of the expected return), tracking error sqrt((w − b)ᵀΣ(w − b)) ≤ TE
and the beta band |βᵀw| ≤ tol. Truth: every constraint measured on the weights with NumPy; min volatility,
max return and quadratic utility as straightforward (non-homogenised) cvxpy programs written here; max Sharpe
as a golden-section search over the net target return of that min-volatility reference. Data: the last 756
daily returns of skfolio's S&P 500 set (20 stocks), betas against their equal-weighted average.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import replace

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from pypfopt import expected_returns, risk_models

import services.optimization._conic as conic
from services.errors import InfeasibleError, InvalidInputError
from services.optimization import (
    MultiObjectiveWeights,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    ProblemModel,
    check_constraints,
    optimize_mean_variance,
)
from services.types import Moments

SP500_DAYS = 756
TOL = 1e-6
OBJECTIVE_RTOL = 1e-5
LOWER, UPPER = -0.2, 0.4
FAMILIES = ("turnover", "turnover_caps", "leverage", "costs", "tracking_error", "beta")
OBJECTIVES = (Objective.MIN_VOLATILITY, Objective.MAX_SHARPE)
RISK_FREE = 0.02


# --- data and helpers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(sp500_prices: pd.DataFrame) -> tuple[Moments, np.ndarray]:
    prices = sp500_prices.iloc[-(SP500_DAYS + 1) :]
    mu = expected_returns.mean_historical_return(prices).to_numpy()
    cov = risk_models.sample_cov(prices).to_numpy()
    returns = prices.pct_change().iloc[1:].to_numpy()
    market = returns.mean(axis=1)
    betas = np.array([np.cov(returns[:, i], market)[0, 1] for i in range(returns.shape[1])]) / market.var(ddof=1)
    return Moments(expected_returns=mu, covariance=cov), betas


def base_problem(objective: Objective, n: int, **fields: object) -> PortfolioProblem:
    return PortfolioProblem(
        symbols=tuple(f"s{i}" for i in range(n)),
        objective=objective,
        lower_bounds=np.full(n, LOWER),
        upper_bounds=np.full(n, UPPER),
        risk_free_rate=RISK_FREE,
        **fields,  # type: ignore[arg-type]
    )


def current_weights(n: int) -> np.ndarray:
    """A deterministic current portfolio summing to 1 (tilted equal weight)."""
    w0 = np.linspace(0.5, 1.5, n)
    return w0 / w0.sum()


def benchmark(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def measure(family: str, w: np.ndarray, problem: PortfolioProblem, moments: Moments) -> float:
    """The constrained quantity of a family, measured with NumPy (caps: the largest capped trade over its cap)."""
    w0 = problem.current_weights if problem.current_weights is not None else np.zeros_like(w)
    if family == "turnover":
        return float(np.abs(w - w0).sum())
    if family == "turnover_caps":
        assert problem.turnover_caps is not None
        capped = np.isfinite(problem.turnover_caps)
        return float(np.max(np.abs(w - w0)[capped] - problem.turnover_caps[capped]))
    if family == "leverage":
        return float(np.abs(w).sum())
    if family == "tracking_error":
        assert problem.benchmark_weights is not None
        active = w - problem.benchmark_weights
        return float(np.sqrt(active @ moments.covariance @ active))
    if family == "beta":
        assert problem.betas is not None
        return float(abs(problem.betas @ w))
    raise AssertionError(family)


def net_return(w: np.ndarray, problem: PortfolioProblem, moments: Moments) -> float:
    w0 = problem.current_weights if problem.current_weights is not None else np.zeros_like(w)
    costs = problem.transaction_costs_bps if problem.transaction_costs_bps is not None else np.zeros_like(w)
    return float(moments.expected_returns @ w - costs @ np.abs(w - w0) / 1e4)


def assert_feasible(result: OptimizationResult, problem: PortfolioProblem, moments: Moments) -> None:
    """Every constraint measured on the weights with NumPy, to 1e-6."""
    w = result.weights
    assert abs(w.sum() - 1) <= TOL
    assert np.all(w >= problem.lower_bounds - TOL) and np.all(w <= problem.upper_bounds + TOL)
    w0 = problem.current_weights if problem.current_weights is not None else np.zeros_like(w)
    if problem.turnover_limit is not None:
        assert np.abs(w - w0).sum() <= problem.turnover_limit + TOL
    if problem.turnover_caps is not None:
        assert np.all(np.abs(w - w0) <= problem.turnover_caps + TOL)
    if problem.leverage_limit is not None:
        assert np.abs(w).sum() <= problem.leverage_limit + TOL
    if problem.tracking_error_limit is not None:
        assert measure("tracking_error", w, problem, moments) <= problem.tracking_error_limit + TOL
    if problem.beta_tolerance is not None:
        assert measure("beta", w, problem, moments) <= problem.beta_tolerance + TOL
    if problem.min_return is not None:
        assert net_return(w, problem, moments) >= problem.min_return - TOL
    assert result.constraints_satisfied and result.violations == ()
    assert check_constraints(w, problem, moments) == ()


# --- independent references -----------------------------------------------------------------------------------


def reference_constraints(w: cp.Variable, problem: PortfolioProblem, moments: Moments) -> tuple[list, cp.Expression]:
    """The constraints of ``problem`` written directly over w, and the net expected return."""
    n = problem.n_assets
    w0 = problem.current_weights if problem.current_weights is not None else np.zeros(n)
    constraints = [cp.sum(w) == 1, w >= problem.lower_bounds, w <= problem.upper_bounds]
    if problem.turnover_limit is not None:
        constraints.append(cp.sum(cp.abs(w - w0)) <= problem.turnover_limit)
    if problem.turnover_caps is not None:
        constraints += [
            cp.abs(w[i] - w0[i]) <= problem.turnover_caps[i] for i in range(n) if np.isfinite(problem.turnover_caps[i])
        ]
    if problem.leverage_limit is not None:
        constraints.append(cp.sum(cp.abs(w)) <= problem.leverage_limit)
    if problem.tracking_error_limit is not None:
        assert problem.benchmark_weights is not None
        active = w - problem.benchmark_weights
        constraints.append(cp.quad_form(active, cp.psd_wrap(moments.covariance)) <= problem.tracking_error_limit**2)
    if problem.beta_tolerance is not None:
        assert problem.betas is not None
        constraints.append(cp.abs(problem.betas @ w) <= problem.beta_tolerance)
    net: cp.Expression = moments.expected_returns @ w
    if problem.transaction_costs_bps is not None:
        net = net - (problem.transaction_costs_bps / 1e4) @ cp.abs(w - w0)
    if problem.min_return is not None:
        constraints.append(net >= problem.min_return)
    return constraints, net


def reference_value(problem: PortfolioProblem, moments: Moments) -> float:
    """The optimal objective by a plain formulation (golden-section search over the target for max Sharpe)."""
    n = problem.n_assets
    w = cp.Variable(n)
    constraints, net = reference_constraints(w, problem, moments)
    variance = cp.quad_form(w, cp.psd_wrap(moments.covariance))
    if problem.objective is Objective.MIN_VOLATILITY:
        return float(cp.Problem(cp.Minimize(variance), constraints).solve(solver=cp.CLARABEL))
    if problem.objective is Objective.MAX_RETURN:
        return float(cp.Problem(cp.Maximize(net), constraints).solve(solver=cp.CLARABEL))
    if problem.objective is Objective.MAX_QUADRATIC_UTILITY:
        utility = net - 0.5 * problem.risk_aversion * variance
        return float(cp.Problem(cp.Maximize(utility), constraints).solve(solver=cp.CLARABEL))
    if problem.objective is Objective.MULTI_OBJECTIVE:
        mo = problem.multi_objective or MultiObjectiveWeights()
        current = problem.current_weights if problem.current_weights is not None else np.zeros(n)
        value = (
            mo.return_weight * net
            - mo.variance_weight * variance
            - mo.turnover_weight * cp.norm1(w - current)
            - mo.l2_weight * cp.sum_squares(w)
        )
        return float(cp.Problem(cp.Maximize(value), constraints).solve(solver=cp.CLARABEL))
    # Max Sharpe: Sharpe of the min-variance portfolio with net return ≥ r, maximised over r by golden section
    # (the frontier σ(r) is convex, so the Sharpe ratio along it is unimodal).
    target = cp.Parameter()
    frontier = cp.Problem(cp.Minimize(variance), [*constraints, net >= target])
    highest = float(cp.Problem(cp.Maximize(net), constraints).solve(solver=cp.CLARABEL))
    cp.Problem(cp.Minimize(variance), constraints).solve(solver=cp.CLARABEL)
    lowest = float(net.value)

    def sharpe(r: float) -> float:
        target.value = r
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an inaccurate point is dropped below
                frontier.solve(solver=cp.CLARABEL)
        except cp.error.SolverError:  # at the highest target the feasible set is a single point
            return -math.inf
        if frontier.status != cp.OPTIMAL:
            return -math.inf
        return (float(net.value) - problem.risk_free_rate) / math.sqrt(float(variance.value))

    ratio = (math.sqrt(5) - 1) / 2
    a, b = lowest, highest
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = sharpe(c), sharpe(d)
    while b - a > 1e-9:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = sharpe(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = sharpe(d)
    return max(fc, fd, sharpe(lowest))


def with_family(
    family: str,
    problem: PortfolioProblem,
    moments: Moments,
    betas: np.ndarray,
    limit: Callable[[float], float] | None,
    free: np.ndarray,
) -> PortfolioProblem:
    """``problem`` with one family added.

    ``limit`` maps the unconstrained measure (of weights ``free``) to the limit; None gives a loose default.
    """
    n = problem.n_assets
    w0 = current_weights(n)
    if family == "turnover":
        used = float(np.abs(free - w0).sum())
        return replace(problem, current_weights=w0, turnover_limit=limit(used) if limit else 2.0 * used)
    if family == "turnover_caps":
        trades = np.abs(free - w0)
        caps = np.full(n, np.inf)
        top = np.argsort(-trades)[:4]
        caps[top] = trades[top] * (0.5 if limit else 2.0)
        return replace(problem, current_weights=w0, turnover_caps=caps)
    if family == "leverage":
        used = float(np.abs(free).sum())
        return replace(problem, leverage_limit=limit(used) if limit else used + 0.5)
    if family == "costs":
        return replace(problem, current_weights=w0, transaction_costs_bps=np.linspace(5.0, 50.0, n))
    if family == "tracking_error":
        b = benchmark(n)
        used = float(np.sqrt((free - b) @ moments.covariance @ (free - b)))
        return replace(problem, benchmark_weights=b, tracking_error_limit=limit(used) if limit else 2.0 * used)
    if family == "beta":
        used = float(abs(betas @ free))
        return replace(problem, betas=betas, beta_tolerance=limit(used) if limit else used + 0.5)
    raise AssertionError(family)


def tighten(family: str) -> Callable[[float], float]:
    if family == "leverage":
        return lambda used: 1.0 + 0.5 * (used - 1.0)
    return lambda used: 0.5 * used


# --- tests ----------------------------------------------------------------------------------------------------


CASES = [(f, o, b) for f in FAMILIES for o in OBJECTIVES for b in (False, True) if not (f == "costs" and b)]
"""Costs are no constraint: they have no binding case."""


@pytest.mark.parametrize(("family", "objective", "binding"), CASES)
def test_family_holds_binds_and_matches_reference(
    data: tuple[Moments, np.ndarray], family: str, objective: Objective, binding: bool
) -> None:
    moments, betas = data
    n = len(betas)
    # Min volatility needs a return floor for costs to matter (they enter only through min_return).
    floor = 0.25 if objective is Objective.MIN_VOLATILITY and family == "costs" else None
    plain = base_problem(objective, n, min_return=floor)
    free = optimize_mean_variance(plain, moments).weights
    problem = with_family(family, plain, moments, betas, tighten(family) if binding else None, free)
    result = optimize_mean_variance(problem, moments)
    assert result.status == "OPTIMAL"
    assert_feasible(result, problem, moments)
    if binding:
        measured = measure(family, result.weights, problem, moments)
        unconstrained = measure(family, free, problem, moments)
        if family == "turnover_caps":
            assert unconstrained > 1e-3  # the free portfolio breaches the caps
            assert measured == pytest.approx(0.0, abs=TOL)  # ... and the tightest capped trade sits on its cap
        else:
            bound = {
                "turnover": problem.turnover_limit,
                "leverage": problem.leverage_limit,
                "tracking_error": problem.tracking_error_limit,
                "beta": problem.beta_tolerance,
            }[family]
            assert bound is not None and unconstrained > bound + 1e-3
            assert measured == pytest.approx(bound, abs=TOL)
    expected = reference_value(problem, moments)
    assert result.objective_value == pytest.approx(expected, rel=OBJECTIVE_RTOL)
    if family == "costs" and objective is Objective.MAX_SHARPE:
        assert result.objective_value < result.performance.sharpe_ratio  # net below gross
    if family == "costs" and objective is Objective.MIN_VOLATILITY:
        assert net_return(result.weights, problem, moments) == pytest.approx(0.25, abs=TOL)  # the net floor binds


def all_families(objective: Objective, moments: Moments, betas: np.ndarray, **fields: object) -> PortfolioProblem:
    n = len(betas)
    caps = np.full(n, np.inf)
    caps[:5] = 0.05
    defaults: dict[str, object] = {
        "current_weights": current_weights(n),
        "turnover_limit": 0.8,
        "turnover_caps": caps,
        "leverage_limit": 1.4,
        "transaction_costs_bps": np.linspace(5.0, 50.0, n),
        "benchmark_weights": benchmark(n),
        "tracking_error_limit": 0.04,
        "betas": betas,
        "beta_tolerance": 0.95,
        "risk_aversion": 4.0,
    }
    return base_problem(objective, n, **{**defaults, **fields})


@pytest.mark.parametrize("objective", list(Objective))
def test_all_families_together_match_reference(data: tuple[Moments, np.ndarray], objective: Objective) -> None:
    """Every family at once, every objective (utility checks the δ/2 scaling of the tracking-error cone)."""
    moments, betas = data
    floor = 0.15 if objective is not Objective.MAX_RETURN else None
    problem = all_families(objective, moments, betas, min_return=floor)
    result = optimize_mean_variance(problem, moments)
    assert_feasible(result, problem, moments)
    assert result.objective_value == pytest.approx(reference_value(problem, moments), rel=OBJECTIVE_RTOL)
    # The reported performance stays gross of costs.
    assert result.performance.expected_return == pytest.approx(moments.expected_returns @ result.weights, rel=1e-12)


@pytest.mark.parametrize("objective", list(Objective))
def test_cached_programs_are_dpp_and_agree_with_fresh_constant_programs(
    data: tuple[Moments, np.ndarray], objective: Objective, monkeypatch: pytest.MonkeyPatch
) -> None:
    moments, betas = data
    problems = [
        all_families(objective, moments, betas, min_return=0.15 if objective is not Objective.MAX_RETURN else None),
        all_families(objective, moments, betas * 0.9, tracking_error_limit=0.05, turnover_limit=0.7),
    ]
    cached = [optimize_mean_variance(p, moments) for p in [*problems, problems[0]]]
    for p in problems:
        program = conic.cached_program(ProblemModel.build(p, moments))
        assert program.parametric and program.problem.is_dpp()
    monkeypatch.setattr(conic, "PARAMETRIC_MAX_ASSETS", 0)
    fresh = [optimize_mean_variance(p, moments) for p in problems]
    for got, want in zip(cached, [*fresh, fresh[0]], strict=True):
        assert got.objective_value == pytest.approx(want.objective_value, rel=1e-7)
        np.testing.assert_allclose(got.weights, want.weights, atol=1e-5)


def test_costs_reduce_trading(data: tuple[Moments, np.ndarray]) -> None:
    """Max Sharpe net of costs trades less than gross, and its objective is the net Sharpe ratio."""
    moments, betas = data
    n = len(betas)
    w0 = current_weights(n)
    gross = optimize_mean_variance(base_problem(Objective.MAX_SHARPE, n, current_weights=w0), moments)
    problem = base_problem(Objective.MAX_SHARPE, n, current_weights=w0, transaction_costs_bps=np.full(n, 200.0))
    net = optimize_mean_variance(problem, moments)
    assert np.abs(net.weights - w0).sum() < np.abs(gross.weights - w0).sum() - 1e-3
    expected = (net_return(net.weights, problem, moments) - RISK_FREE) / net.performance.volatility
    assert net.objective_value == pytest.approx(expected, rel=1e-12)


# --- pre-checks -----------------------------------------------------------------------------------------------


def violation_types(problem: PortfolioProblem, moments: Moments) -> list[tuple[str, str]]:
    with pytest.raises(InfeasibleError) as caught:
        optimize_mean_variance(problem, moments)
    return [(v.type, v.subject) for v in caught.value.precondition_violations]


def test_prechecks_name_trading_limit_conflicts(data: tuple[Moments, np.ndarray]) -> None:
    moments, betas = data
    n = len(betas)
    half = np.full(n, 0.5 / n)  # sums to 0.5: the budget forces turnover ≥ 0.5
    problem = base_problem(Objective.MIN_VOLATILITY, n, current_weights=half, turnover_limit=0.4)
    assert violation_types(problem, moments) == [("TURNOVER", "turnover_limit")]
    # At a limit of 0.5 it is feasible (buy the missing half, within the bounds); the solver must find it.
    ok = replace(problem, turnover_limit=0.5)
    result = optimize_mean_variance(ok, moments)
    assert_feasible(result, ok, moments)
    caps = base_problem(Objective.MIN_VOLATILITY, n, current_weights=half, turnover_caps=np.full(n, 0.01))
    assert violation_types(caps, moments) == [("TURNOVER", "turnover_caps")]
    outside = np.zeros(n)
    outside[0] = 1.0  # above the 0.4 upper bound: a cap of 0.1 cannot reach it
    capped = base_problem(Objective.MIN_VOLATILITY, n, current_weights=outside, turnover_caps=np.full(n, 0.1))
    assert ("TURNOVER", "turnover_caps[0]") in violation_types(capped, moments)
    leverage = base_problem(Objective.MAX_SHARPE, n, leverage_limit=0.99)
    assert violation_types(leverage, moments) == [("LEVERAGE", "leverage_limit")]
    long_only = replace(base_problem(Objective.MIN_VOLATILITY, n), lower_bounds=np.zeros(n), upper_bounds=np.ones(n))
    beta = replace(long_only, betas=np.full(n, 1.0), beta_tolerance=0.5)  # every long-only portfolio has beta 1
    assert violation_types(beta, moments) == [("BETA", "beta_tolerance")]
    # Leverage exactly 1 is feasible long-only.
    exact = replace(long_only, leverage_limit=1.0)
    assert_feasible(optimize_mean_variance(exact, moments), exact, moments)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"turnover_limit": -0.1}, "turnover_limit"),
        ({"leverage_limit": -1.0}, "leverage_limit"),
        ({"tracking_error_limit": -0.01, "benchmark_weights": np.full(20, 0.05)}, "tracking_error_limit"),
        ({"beta_tolerance": -0.1, "betas": np.ones(20)}, "beta_tolerance"),
        ({"transaction_costs_bps": np.r_[np.ones(3), -1.0, np.ones(16)]}, "transaction_costs_bps[3]"),
        ({"turnover_caps": np.r_[np.full(19, np.inf), -0.1]}, "turnover_caps[19]"),
        ({"current_weights": np.ones(3)}, "current_weights"),
        ({"tracking_error_limit": 0.05}, "benchmark_weights"),
        ({"beta_tolerance": 0.1}, "betas"),
    ],
)
def test_invalid_trading_limit_inputs_name_the_field(
    data: tuple[Moments, np.ndarray], fields: dict[str, object], field: str
) -> None:
    moments, _ = data
    with pytest.raises(InvalidInputError) as caught:
        optimize_mean_variance(base_problem(Objective.MIN_VOLATILITY, 20, **fields), moments)
    assert [v.field for v in caught.value.field_violations] == [field]
