"""Scenario risk measures (CVaR, MAD, CDaR) against skfolio, Riskfolio-Lib and hand-computed values.

Truth: skfolio's ``MeanRisk`` on the same daily returns with an ``EmpiricalPrior`` (skfolio works per period: its
μ is the daily mean, our annualised μ is 252 times it, so risk values and per-period ratios compare directly),
Riskfolio-Lib's ``Portfolio.optimization(model="Classic")``, ``skfolio.measures`` for the measure of any weight
vector, hand-worked scenario sets, and feasibility checked here with NumPy.

Riskfolio-Lib's ``rm="MAD"`` objective is the mean downside deviation, half the MAD (its ``RiskFunctions.MAD`` is the
full MAD): the optimal weights agree with ours, so its weights are compared through the MAD we and skfolio compute.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import riskfolio as rp
import skfolio.measures as skm
from skfolio import RiskMeasure as SkRiskMeasure
from skfolio.optimization import MeanRisk, ObjectiveFunction
from skfolio.prior import EmpiricalPrior

from services.errors import DeadlineExceededError, InfeasibleError, InvalidInputError
from services.optimization import (
    SCENARIO_BACKENDS,
    SCENARIO_CONIC,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    RiskMeasure,
    ScenarioBackend,
    check_constraints,
    conditional_drawdown_at_risk,
    conditional_value_at_risk,
    drawdowns,
    max_drawdown,
    mean_absolute_deviation,
    optimize_risk_measure,
    risk_measure_value,
)
from services.optimization import _risk_measures as risk_measures
from services.types import Moments
from tests.services.optimization.sp500_problems import make_problem, sector_inequalities

PERIODS = 252
DAYS = 756
RISK_FREE_RATE = 0.02
ALPHA = 0.95
OBJECTIVE_RTOL = 1e-6
FEASIBILITY_TOLERANCE = 1e-6
SKFOLIO_TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
SKFOLIO_MEASURE = {
    RiskMeasure.CVAR: SkRiskMeasure.CVAR,
    RiskMeasure.MAD: SkRiskMeasure.MEAN_ABSOLUTE_DEVIATION,
    RiskMeasure.CDAR: SkRiskMeasure.CDAR,
}
SKFOLIO_MAX_RISK = {
    RiskMeasure.CVAR: "max_cvar",
    RiskMeasure.MAD: "max_mean_absolute_deviation",
    RiskMeasure.CDAR: "max_cdar",
}
RISKFOLIO_MEASURE = {RiskMeasure.CVAR: "CVaR", RiskMeasure.MAD: "MAD", RiskMeasure.CDAR: "CDaR"}


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daily_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    """The last 756 daily simple returns of the 20 S&P 500 stocks."""
    return sp500_prices.iloc[-(DAYS + 1) :].pct_change().iloc[1:]


@pytest.fixture(scope="module")
def scenarios(daily_returns: pd.DataFrame) -> np.ndarray:
    return daily_returns.to_numpy()


@pytest.fixture(scope="module")
def moments(scenarios: np.ndarray) -> Moments:
    """Arithmetic annualisation of skfolio's empirical prior: μ = 252·mean, Σ = 252·cov (ddof 1)."""
    return Moments(
        expected_returns=scenarios.mean(axis=0) * PERIODS, covariance=np.cov(scenarios, rowvar=False) * PERIODS
    )


def skfolio_risk(risk_measure: RiskMeasure, portfolio_returns: np.ndarray, alpha: float = ALPHA) -> float:
    """The measure as skfolio.measures computes it."""
    if risk_measure is RiskMeasure.CVAR:
        return float(skm.cvar(portfolio_returns, beta=alpha))
    if risk_measure is RiskMeasure.MAD:
        return float(skm.mean_absolute_deviation(portfolio_returns))
    return float(skm.cdar(skm.get_drawdowns(portfolio_returns), beta=alpha))


def skfolio_weights(
    daily_returns: pd.DataFrame,
    risk_measure: SkRiskMeasure,
    objective: ObjectiveFunction,
    lower: float,
    upper: float,
    *,
    with_sectors: bool = False,
    **options: object,
) -> np.ndarray:
    if with_sectors:
        options["left_inequality"], options["right_inequality"] = sector_inequalities(list(daily_returns.columns))
    options = {"cvar_beta": ALPHA, "cdar_beta": ALPHA, **options}
    model = MeanRisk(
        risk_measure=risk_measure,
        objective_function=objective,
        prior_estimator=EmpiricalPrior(),
        min_weights=lower,
        max_weights=upper,
        risk_free_rate=RISK_FREE_RATE / PERIODS,
        solver_params=SKFOLIO_TIGHT,
        **options,  # type: ignore[arg-type]
    )
    model.fit(daily_returns)
    return np.asarray(model.weights_, dtype=np.float64)


def assert_feasible(result: OptimizationResult, problem: PortfolioProblem, moments: Moments) -> None:
    w, tol = result.weights, FEASIBILITY_TOLERANCE
    assert abs(w.sum() - 1.0) <= tol
    assert np.all(w >= problem.lower_bounds - tol)
    assert np.all(w <= problem.upper_bounds + tol)
    totals = pd.Series(w).groupby(list(problem.sectors)).sum() if problem.sectors else pd.Series(dtype=float)
    for limit in problem.sector_limits:
        if limit.min_weight is not None:
            assert totals[limit.sector] >= limit.min_weight - tol
        if limit.max_weight is not None:
            assert totals[limit.sector] <= limit.max_weight + tol
    if problem.min_return is not None:
        assert moments.expected_returns @ w >= problem.min_return - tol
    if problem.max_volatility is not None:
        assert np.sqrt(w @ moments.covariance @ w) <= problem.max_volatility + tol
    assert result.constraints_satisfied
    assert result.violations == ()
    assert check_constraints(w, problem, moments) == ()
    assert result.performance.expected_return == pytest.approx(moments.expected_returns @ w, rel=1e-12)
    assert result.performance.volatility == pytest.approx(np.sqrt(w @ moments.covariance @ w), rel=1e-12)


def per_period_ratio(scenarios: np.ndarray, weights: np.ndarray, risk_measure: RiskMeasure) -> float:
    excess = scenarios.mean(axis=0) @ weights - RISK_FREE_RATE / PERIODS
    return float(excess / skfolio_risk(risk_measure, scenarios @ weights))


# --- the measures in NumPy ------------------------------------------------------------------------------------


def test_cvar_of_a_hand_worked_sample_includes_a_fraction_of_the_boundary_loss() -> None:
    # 10 returns, α = 0.75: the tail holds 2.5 observations, the losses 0.05, 0.03 and half of 0.02.
    returns = np.array([-0.05, 0.01, -0.03, 0.02, -0.02, 0.00, 0.03, -0.01, 0.04, 0.05])
    assert conditional_value_at_risk(returns, 0.75) == pytest.approx((0.05 + 0.03 + 0.5 * 0.02) / 2.5, rel=1e-14)
    # An integer tail: α = 0.8 averages the two worst losses.
    assert conditional_value_at_risk(returns, 0.8) == pytest.approx(0.04, rel=1e-14)
    # A tail under one observation is the worst loss.
    assert conditional_value_at_risk(returns, 0.95) == pytest.approx(0.05, rel=1e-14)


def test_drawdowns_of_a_hand_worked_path_start_from_zero_wealth() -> None:
    # cumulative [-0.02, 0.08, 0.03, -0.07, 0.13, 0.12]: the first-period loss is a drawdown from C_0 = 0.
    returns = np.array([-0.02, 0.10, -0.05, -0.10, 0.20, -0.01])
    np.testing.assert_allclose(drawdowns(returns), [0.02, 0.0, 0.05, 0.15, 0.0, 0.01], atol=1e-15)
    # α = 0.5: the worst three drawdowns 0.15, 0.05, 0.02.
    assert conditional_drawdown_at_risk(returns, 0.5) == pytest.approx((0.15 + 0.05 + 0.02) / 3, rel=1e-14)
    assert mean_absolute_deviation(np.array([0.01, 0.03, -0.01, 0.05])) == pytest.approx(0.02, rel=1e-14)


def test_max_drawdown_by_hand_and_against_skfolio(scenarios: np.ndarray) -> None:
    """Values 1 → 0.9 → 0.99 → 0.693 → 0.7623: the fall from the peak 1.0 (the start) to 0.693 is 30.7 %."""
    returns = np.array([[-0.1, 0.0], [0.1, 0.0], [-0.3, 0.0], [0.1, 0.0]])
    assert max_drawdown(returns, np.array([1.0, 0.0])) == pytest.approx(0.307, rel=1e-12)
    # A row with a missing return is left out; no complete row: None.
    gappy = np.vstack([returns, [[np.nan, 0.5]]])
    assert max_drawdown(gappy, np.array([1.0, 0.0])) == pytest.approx(0.307, rel=1e-12)
    assert max_drawdown(np.full((3, 2), np.nan), np.array([0.5, 0.5])) is None
    # Real returns: skfolio's compounded drawdowns of the same portfolio returns.
    weights = np.full(scenarios.shape[1], 1.0 / scenarios.shape[1])
    expected = -float(np.min(skm.get_drawdowns(scenarios @ weights, compounded=True)))
    assert max_drawdown(scenarios, weights) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("risk_measure", list(RiskMeasure))
@pytest.mark.parametrize("alpha", [0.9, 0.95, 0.99])
def test_measures_equal_skfolio_measures(scenarios: np.ndarray, risk_measure: RiskMeasure, alpha: float) -> None:
    rng = np.random.default_rng(11)
    for weights in rng.dirichlet(np.ones(scenarios.shape[1]), size=5):
        ours = risk_measure_value(scenarios, weights, risk_measure=risk_measure, alpha=alpha)
        assert ours == pytest.approx(skfolio_risk(risk_measure, scenarios @ weights, alpha), rel=1e-12)


# --- optimal portfolios against skfolio and Riskfolio-Lib ------------------------------------------------------

OBJECTIVES = {
    "min-risk": (Objective.MIN_VOLATILITY, ObjectiveFunction.MINIMIZE_RISK),
    "max-ratio": (Objective.MAX_SHARPE, ObjectiveFunction.MAXIMIZE_RATIO),
}
CONFIGURATIONS = {
    "long-only": (0.0, 1.0, False, None),
    "box-sectors-min-return": (0.01, 0.25, True, 0.20),
}


@pytest.mark.parametrize("risk_measure", list(RiskMeasure))
@pytest.mark.parametrize("objective_name", list(OBJECTIVES))
@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_objective_value_equals_skfolio(
    daily_returns: pd.DataFrame,
    scenarios: np.ndarray,
    moments: Moments,
    risk_measure: RiskMeasure,
    objective_name: str,
    configuration: str,
) -> None:
    objective, skfolio_objective = OBJECTIVES[objective_name]
    lower, upper, with_sectors, min_return = CONFIGURATIONS[configuration]
    problem = make_problem(
        objective, list(daily_returns.columns), lower, upper, with_sectors=with_sectors, min_return=min_return
    )
    result = optimize_risk_measure(
        problem, scenarios, moments.expected_returns, risk_measure=risk_measure, covariance=moments.covariance
    )
    reference = skfolio_weights(
        daily_returns,
        SKFOLIO_MEASURE[risk_measure],
        skfolio_objective,
        lower,
        upper,
        with_sectors=with_sectors,
        min_return=None if min_return is None else min_return / PERIODS,
    )
    # The reported value is the measure of the returned weights, as skfolio.measures computes it.
    risk = skfolio_risk(risk_measure, scenarios @ result.weights)
    if objective is Objective.MIN_VOLATILITY:
        assert result.objective_value == pytest.approx(risk, rel=1e-9)
        assert result.objective_value == pytest.approx(
            skfolio_risk(risk_measure, scenarios @ reference), rel=OBJECTIVE_RTOL
        )
    else:
        assert result.objective_value == pytest.approx(
            per_period_ratio(scenarios, result.weights, risk_measure), rel=1e-9
        )
        assert result.objective_value == pytest.approx(
            per_period_ratio(scenarios, reference, risk_measure), rel=OBJECTIVE_RTOL
        )
    assert result.status == "OPTIMAL"
    assert_feasible(result, problem, moments)


@pytest.mark.parametrize("risk_measure", list(RiskMeasure))
@pytest.mark.parametrize("objective_name", list(OBJECTIVES))
def test_objective_value_equals_riskfolio(
    daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments, risk_measure: RiskMeasure, objective_name: str
) -> None:
    objective = OBJECTIVES[objective_name][0]
    problem = make_problem(objective, list(daily_returns.columns), 0.0, 1.0)
    result = optimize_risk_measure(problem, scenarios, moments.expected_returns, risk_measure=risk_measure)

    portfolio = rp.Portfolio(returns=daily_returns, alpha=1.0 - ALPHA)
    portfolio.assets_stats(method_mu="hist", method_cov="hist")
    portfolio.solvers = ["CLARABEL"]
    portfolio.sol_params = {"CLARABEL": SKFOLIO_TIGHT}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Riskfolio-Lib's own pandas and cvxpy deprecations
        frame = portfolio.optimization(
            model="Classic",
            rm=RISKFOLIO_MEASURE[risk_measure],
            obj="MinRisk" if objective is Objective.MIN_VOLATILITY else "Sharpe",
            rf=RISK_FREE_RATE / PERIODS,
            l=0,
            hist=True,
        )
    reference = frame.to_numpy().ravel()
    if objective is Objective.MIN_VOLATILITY:
        expected = skfolio_risk(risk_measure, scenarios @ reference)
    else:
        expected = per_period_ratio(scenarios, reference, risk_measure)
    assert result.objective_value == pytest.approx(expected, rel=OBJECTIVE_RTOL)


@pytest.mark.parametrize(
    ("risk_measure", "max_risk"), [(RiskMeasure.CVAR, 0.03), (RiskMeasure.MAD, 0.009), (RiskMeasure.CDAR, 0.15)]
)
def test_max_return_under_a_risk_cap_equals_skfolio(
    daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments, risk_measure: RiskMeasure, max_risk: float
) -> None:
    problem = make_problem(Objective.MAX_RETURN, list(daily_returns.columns), 0.0, 1.0)
    result = optimize_risk_measure(
        problem, scenarios, moments.expected_returns, risk_measure=risk_measure, max_risk=max_risk
    )
    reference = skfolio_weights(
        daily_returns,
        SKFOLIO_MEASURE[risk_measure],
        ObjectiveFunction.MAXIMIZE_RETURN,
        0.0,
        1.0,
        **{SKFOLIO_MAX_RISK[risk_measure]: max_risk},
    )
    assert result.objective_value == pytest.approx(moments.expected_returns @ reference, rel=OBJECTIVE_RTOL)
    assert result.objective_value == pytest.approx(result.performance.expected_return, rel=1e-15)
    # The cap binds: the unconstrained max return is the single best stock, far riskier.
    assert skfolio_risk(risk_measure, scenarios @ result.weights) == pytest.approx(max_risk, rel=1e-6)
    assert_feasible(result, problem, moments)


@pytest.mark.parametrize("risk_measure", list(RiskMeasure))
def test_min_risk_under_a_volatility_cap_equals_skfolio(
    daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments, risk_measure: RiskMeasure
) -> None:
    unconstrained = optimize_risk_measure(
        make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0),
        scenarios,
        moments.expected_returns,
        risk_measure=risk_measure,
    )
    cap = 0.98 * unconstrained.performance.volatility
    problem = make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0, max_volatility=cap)
    result = optimize_risk_measure(problem, scenarios, moments.expected_returns, risk_measure=risk_measure)
    reference = skfolio_weights(
        daily_returns,
        SKFOLIO_MEASURE[risk_measure],
        ObjectiveFunction.MINIMIZE_RISK,
        0.0,
        1.0,
        max_standard_deviation=cap / np.sqrt(PERIODS),
    )
    assert result.objective_value == pytest.approx(
        skfolio_risk(risk_measure, scenarios @ reference), rel=OBJECTIVE_RTOL
    )
    assert result.objective_value > unconstrained.objective_value
    assert result.performance.volatility == pytest.approx(cap, rel=1e-6)
    assert_feasible(result, problem, moments)


def test_default_covariance_is_the_annualised_sample_covariance(
    daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments
) -> None:
    problem = make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0)
    result = optimize_risk_measure(problem, scenarios, moments.expected_returns, risk_measure=RiskMeasure.CVAR)
    w = result.weights
    portfolio_returns = scenarios @ w
    assert result.performance.volatility == pytest.approx(
        np.std(portfolio_returns, ddof=1) * np.sqrt(PERIODS), rel=1e-12
    )
    assert result.performance.sharpe_ratio == pytest.approx(
        (moments.expected_returns @ w - RISK_FREE_RATE) / result.performance.volatility, rel=1e-12
    )


def test_alpha_sets_the_tail(daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments) -> None:
    problem = make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0)
    values = [
        optimize_risk_measure(
            problem, scenarios, moments.expected_returns, risk_measure=RiskMeasure.CVAR, alpha=alpha
        ).objective_value
        for alpha in (0.9, 0.99)
    ]
    reference = skfolio_weights(
        daily_returns, SkRiskMeasure.CVAR, ObjectiveFunction.MINIMIZE_RISK, 0.0, 1.0, cvar_beta=0.99
    )
    assert values[1] == pytest.approx(skfolio_risk(RiskMeasure.CVAR, scenarios @ reference, 0.99), rel=OBJECTIVE_RTOL)
    assert values[0] < values[1]


# --- errors ---------------------------------------------------------------------------------------------------


def test_invalid_inputs_name_the_field(daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments) -> None:
    problem = make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0)
    mu = moments.expected_returns
    gappy = scenarios.copy()
    gappy[3, 2] = np.nan
    cases: list[tuple[dict[str, object], str]] = [
        ({"scenarios": scenarios[:, :5]}, "scenarios"),
        ({"scenarios": scenarios[:1]}, "scenarios"),
        ({"scenarios": gappy}, "scenarios[3, 2]"),
        ({"alpha": 1.0}, "confidence_level"),
        ({"periods_per_year": 0}, "periods_per_year"),
        ({"max_risk": -0.01}, "max_risk"),
        ({"expected_returns": mu[:3]}, "expected_returns"),
        ({"risk_measure": "VARIANCE"}, "risk_measure"),
    ]
    for overrides, field in cases:
        arguments: dict[str, object] = {"scenarios": scenarios, "expected_returns": mu, "risk_measure": "CVAR"}
        arguments.update(overrides)
        with pytest.raises(InvalidInputError) as raised:
            optimize_risk_measure(problem, **arguments)  # type: ignore[arg-type]
        assert raised.value.field_violations[0].field == field

    with pytest.raises(InvalidInputError) as raised:
        optimize_risk_measure(
            replace(problem, objective=Objective.MAX_QUADRATIC_UTILITY), scenarios, mu, risk_measure=RiskMeasure.MAD
        )
    assert raised.value.field_violations[0].field == "objective"


def test_infeasible_problems_are_reported(daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments) -> None:
    problem = make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0)
    mu = moments.expected_returns
    # Pre-check: a target above every expected return.
    with pytest.raises(InfeasibleError) as raised:
        optimize_risk_measure(replace(problem, min_return=float(mu.max()) + 0.01), scenarios, mu, risk_measure="CDAR")
    assert raised.value.precondition_violations[0].type == "TARGET_RETURN"
    # Solver: a CVaR cap below the min-CVaR portfolio's.
    with pytest.raises(InfeasibleError) as raised:
        optimize_risk_measure(
            replace(problem, objective=Objective.MAX_RETURN), scenarios, mu, risk_measure="CVAR", max_risk=0.02
        )
    assert raised.value.precondition_violations[0].type == "SOLVER_INFEASIBLE"


def test_no_time_left_is_a_deadline_error(daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments) -> None:
    problem = make_problem(Objective.MIN_VOLATILITY, list(daily_returns.columns), 0.0, 1.0)
    with pytest.raises(DeadlineExceededError):
        optimize_risk_measure(
            problem, scenarios, moments.expected_returns, risk_measure=RiskMeasure.MAD, time_limit_s=0.0
        )


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_SHARPE, Objective.MAX_RETURN])
def test_cvar_by_the_simplex_equals_the_interior_point_answer(
    daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments, objective: Objective, monkeypatch: Any
) -> None:
    """CVaR LPs go to HiGHS first (a vertex); Clarabel (interior point, 1e-10) gives the same optimum."""
    tickers = list(daily_returns.columns)
    problem = make_problem(objective, tickers, 0.0, 0.3, with_sectors=True)
    max_risk = 0.05 if objective is Objective.MAX_RETURN else None

    def solve(backends: tuple[ScenarioBackend, ...]) -> OptimizationResult:
        return optimize_risk_measure(
            problem,
            scenarios,
            moments.expected_returns,
            risk_measure="CVAR",
            covariance=moments.covariance,
            max_risk=max_risk,
            backends=backends,
        )

    simplex = solve(SCENARIO_BACKENDS)
    assert (simplex.solver, simplex.solve_path) == ("HIGHS", "SIMPLEX")
    interior = solve((SCENARIO_CONIC,))
    assert (interior.solver, interior.solve_path) == ("CLARABEL", "CONIC")
    assert simplex.objective_value == pytest.approx(interior.objective_value, rel=1e-7)
    assert not check_constraints(simplex.weights, problem, moments)


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_SHARPE, Objective.MAX_RETURN])
def test_mad_by_the_highs_interior_point_equals_clarabel(
    daily_returns: pd.DataFrame, scenarios: np.ndarray, moments: Moments, objective: Objective, monkeypatch: Any
) -> None:
    """MAD above QDLDL_MAX_ASSETS goes to HiGHS's IPM (crossover: a vertex); Clarabel (1e-10) and skfolio agree.

    The 20 real names are made to count as a large problem (``QDLDL_MAX_ASSETS`` patched to 10) so that every
    objective, sectors and caps take the new path; the MAD of the weights is recomputed with skfolio.
    """
    monkeypatch.setattr(risk_measures, "QDLDL_MAX_ASSETS", 10)
    tickers = list(daily_returns.columns)
    problem = make_problem(objective, tickers, 0.0, 0.3, with_sectors=True)
    max_risk = 0.008 if objective is Objective.MAX_RETURN else None

    def solve(backends: tuple[ScenarioBackend, ...]) -> OptimizationResult:
        return optimize_risk_measure(
            problem,
            scenarios,
            moments.expected_returns,
            risk_measure="MAD",
            covariance=moments.covariance,
            max_risk=max_risk,
            backends=backends,
        )

    ipm = solve(SCENARIO_BACKENDS)
    assert (ipm.solver, ipm.solve_path) == ("HIGHS", "HIGHS_IPM")
    interior = solve((SCENARIO_CONIC,))
    assert ipm.objective_value == pytest.approx(interior.objective_value, rel=1e-7)
    assert not check_constraints(ipm.weights, problem, moments)
    mad = float(skm.mean_absolute_deviation(scenarios @ ipm.weights))
    if objective is Objective.MIN_VOLATILITY:
        assert ipm.objective_value == pytest.approx(mad, rel=1e-12)
    if max_risk is not None:
        assert mad <= max_risk * (1 + 1e-7)


def test_mad_at_large_n_takes_the_highs_interior_point() -> None:
    """N = 250 > QDLDL_MAX_ASSETS unpatched: HiGHS's IPM answers, at Clarabel's optimum (1e-7) and no worse."""
    rng = np.random.default_rng(12)
    n, periods = 250, 400
    returns = 0.01 * rng.standard_normal((periods, 3)) @ rng.normal(0.5, 0.3, (3, n)) + 0.012 * rng.standard_normal(
        (periods, n)
    )
    mu = 252 * returns.mean(axis=0)
    problem = PortfolioProblem(
        symbols=tuple(f"s{i}" for i in range(n)),
        objective=Objective.MIN_VOLATILITY,
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, 0.02),
    )
    ipm = optimize_risk_measure(problem, returns, mu, risk_measure="MAD")
    assert ipm.solve_path == "HIGHS_IPM"
    interior = optimize_risk_measure(problem, returns, mu, risk_measure="MAD", backends=(SCENARIO_CONIC,))
    assert ipm.objective_value == pytest.approx(interior.objective_value, rel=1e-7)
    assert ipm.objective_value <= interior.objective_value * (1 + 1e-9)
    assert ipm.objective_value == pytest.approx(float(skm.mean_absolute_deviation(returns @ ipm.weights)), rel=1e-12)


def test_a_ratio_to_a_cvar_that_can_be_negative_has_no_maximum() -> None:
    """At α = 0.3 trending assets have CVaR below 0: max ratio is refused (UNBOUNDED_RATIO).

    Return per unit of CVaR is unbounded (its supremum is +∞ as CVaR tends to 0 from above); the negative-CVaR
    portfolio used to be answered as OPTIMAL. Checked here with NumPy: 25 % / 75 % of the first two assets has
    excess return > 0 and its worst 70 % of losses (175 of 250 periods) average below 0.
    """
    rng = np.random.default_rng(0)
    scenarios = np.column_stack([0.004 + 0.01 * rng.standard_normal(250), 0.002 + 0.004 * rng.standard_normal(250),
                                 0.001 + 0.02 * rng.standard_normal(250)])  # fmt: skip
    mu = scenarios.mean(axis=0) * 252
    mix = scenarios @ np.array([0.25, 0.75, 0.0])
    worst = np.sort(-mix)[::-1][:175]  # (1 − α) T = 175 periods: no fractional boundary term
    assert mix.mean() > 0 and worst.mean() < 0
    problem = PortfolioProblem(
        symbols=("a", "b", "c"), objective=Objective.MAX_SHARPE, lower_bounds=np.zeros(3), upper_bounds=np.ones(3)
    )
    with pytest.raises(InfeasibleError) as caught:
        optimize_risk_measure(problem, scenarios, mu, risk_measure="CVAR", alpha=0.3)
    assert [v.type for v in caught.value.precondition_violations] == ["UNBOUNDED_RATIO"]
    # At α = 0.95 every portfolio's CVaR is positive: the ratio has a maximum and is answered.
    assert optimize_risk_measure(problem, scenarios, mu, risk_measure="CVAR", alpha=0.95).constraints_satisfied
