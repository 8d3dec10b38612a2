"""Robust (worst-case expected return) mean-variance against skfolio, Riskfolio-Lib and closed forms.

Truth: skfolio's ``MeanRisk`` with ``EmpiricalMuUncertaintySet(diagonal=False)`` (the ellipsoid) and with a box
``UncertaintySet(norm=inf)`` sized here from the sample standard errors; Riskfolio-Lib's ``wc_optimization`` with
the box of its own ``wc_stats(box="n")``; the nominal ``optimize_mean_variance`` when the set shrinks to a point;
the minimising μ of each set written out by hand; the greedy fill of the box max-return LP; and the ellipsoidal
max Sharpe, which is the nominal tangency portfolio (the penalty κ·sqrt(P/T)·σ(w) lowers every Sharpe ratio by the
same amount).

skfolio and Riskfolio-Lib work per period on daily returns; our moments are 252 times their mean and covariance
(arithmetic), so the per-period problems have the same optimal weights and our annual values are 252 times theirs.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import riskfolio as rp
from scipy import stats
from skfolio import RiskMeasure as SkRiskMeasure
from skfolio.optimization import MeanRisk, ObjectiveFunction
from skfolio.prior import EmpiricalPrior
from skfolio.uncertainty_set import BaseMuUncertaintySet, EmpiricalMuUncertaintySet, UncertaintySet

from services.errors import InfeasibleError, InvalidInputError
from services.optimization import (
    MuUncertaintySet,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    Uncertainty,
    check_constraints,
    mu_uncertainty_set,
    optimize_mean_variance,
    optimize_robust,
)
from services.types import Moments
from tests.services.optimization.sp500_problems import make_problem as sp500_problem
from tests.services.optimization.sp500_problems import sector_inequalities

PERIODS = 252
DAYS = 756
CONFIDENCE = 0.9
RISK_FREE_RATE = 0.02
RISK_AVERSION = 3.0
OBJECTIVE_RTOL = 1e-6
FEASIBILITY_TOLERANCE = 1e-6
SKFOLIO_TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


ROBUST_OBJECTIVES = [o for o in Objective if o is not Objective.MULTI_OBJECTIVE]
"""Robust optimization has no multi-objective (the service rejects the combination)."""


# --- fixtures and helpers -------------------------------------------------------------------------------------


def last_returns(prices: pd.DataFrame, days: int) -> pd.DataFrame:
    return prices.iloc[-(days + 1) :].pct_change().iloc[1:]


def arithmetic_moments(returns: pd.DataFrame) -> Moments:
    values = returns.to_numpy()
    return Moments(expected_returns=values.mean(axis=0) * PERIODS, covariance=np.cov(values, rowvar=False) * PERIODS)


@pytest.fixture(scope="module")
def daily_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    return last_returns(sp500_prices, DAYS)


@pytest.fixture(scope="module")
def moments(daily_returns: pd.DataFrame) -> Moments:
    return arithmetic_moments(daily_returns)


@pytest.fixture(scope="module")
def riskfolio_portfolio(daily_returns: pd.DataFrame) -> Any:
    """Riskfolio-Lib's portfolio with its own normal box (δ = z_{1−q/2} sqrt(diag(Σ)/T)) at q = 1 − confidence.

    The box of each stock depends on that stock alone, so ``wc_stats`` runs on groups of 5 stocks: on all 20 its
    unused covariance-set simulation decomposes 400 x 400 matrices (seconds).
    """
    half_widths = []
    for start in range(0, daily_returns.shape[1], 5):
        group = rp.Portfolio(returns=daily_returns.iloc[:, start : start + 5])
        group.assets_stats(method_mu="hist", method_cov="hist")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group.wc_stats(box="n", ellip="n", q=1.0 - CONFIDENCE, n_sim=20, seed=0)
        half_widths.append(group.d_mu)
    portfolio = rp.Portfolio(returns=daily_returns)
    portfolio.assets_stats(method_mu="hist", method_cov="hist")
    portfolio.d_mu = pd.concat(half_widths, axis=1)
    # Read by wc_optimization but unused with Umu="box", Ucov="hist".
    portfolio.cov_l = portfolio.cov_u = portfolio.cov_mu = portfolio.cov
    portfolio.cov_sigma = pd.DataFrame(np.eye(1))
    portfolio.k_mu = portfolio.k_sigma = 0.0
    portfolio.solvers = ["CLARABEL"]
    portfolio.sol_params = {"CLARABEL": SKFOLIO_TIGHT}
    return portfolio


class BoxMuUncertaintySet(BaseMuUncertaintySet):
    """A box for skfolio: |μ_i − μ̂_i| ≤ z_{(1+c)/2} s_i / sqrt(T) with s_i the sample standard deviation."""

    def __init__(self, confidence_level: float = 0.95) -> None:
        super().__init__(prior_estimator=None)
        self.confidence_level = confidence_level

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> BoxMuUncertaintySet:
        values = np.asarray(X)
        standard_errors = values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
        radius = stats.norm.ppf(0.5 + 0.5 * self.confidence_level)
        self.uncertainty_set_ = UncertaintySet(radius=radius, geometry=np.diag(standard_errors), norm=np.inf)
        return self


def make_problem(
    objective: Objective, tickers: list[str], lower: float, upper: float, **options: object
) -> PortfolioProblem:
    """The shared S&P 500 problem at this module's risk aversion."""
    return sp500_problem(objective, tickers, lower, upper, risk_aversion=RISK_AVERSION, **options)


def robust(
    problem: PortfolioProblem, moments: Moments, uncertainty: str, confidence: float = CONFIDENCE, days: int = DAYS
) -> OptimizationResult:
    return optimize_robust(
        problem, moments, uncertainty=uncertainty, confidence=confidence, observations=days, periods_per_year=PERIODS
    )


def uncertainty_set(moments: Moments, uncertainty: str, confidence: float = CONFIDENCE) -> MuUncertaintySet:
    return mu_uncertainty_set(
        moments.covariance, uncertainty=uncertainty, confidence=confidence, observations=DAYS, periods_per_year=PERIODS
    )


def worst_case_mu(weights: np.ndarray, moments: Moments, uncertainty: str) -> np.ndarray:
    """The μ of the set that minimises μᵀw, written out: μ̂ − δ·sign(w) (box), μ̂ − κ Σ_μ w / ‖w‖_{Σ_μ} (ellipsoid)."""
    mu = moments.expected_returns
    error_covariance = moments.covariance * PERIODS / DAYS
    if uncertainty == "BOX":
        half_widths = stats.norm.ppf(0.5 + 0.5 * CONFIDENCE) * np.sqrt(np.diag(error_covariance))
        return np.asarray(mu - half_widths * np.sign(weights))
    radius = np.sqrt(stats.chi2.ppf(CONFIDENCE, len(mu)))
    direction = error_covariance @ weights
    return np.asarray(mu - radius * direction / np.sqrt(weights @ direction))


def objective_of(weights: np.ndarray, problem: PortfolioProblem, moments: Moments, uncertainty: str) -> float:
    """The robust objective of any weights, from the hand-written worst-case μ."""
    worst = worst_case_mu(weights, moments, uncertainty) @ weights
    variance = weights @ moments.covariance @ weights
    return float(
        {
            Objective.MAX_QUADRATIC_UTILITY: worst - 0.5 * problem.risk_aversion * variance,
            Objective.MAX_RETURN: worst,
            Objective.MIN_VOLATILITY: variance,
            Objective.MAX_SHARPE: (worst - problem.risk_free_rate) / np.sqrt(variance),
        }[problem.objective]
    )


def assert_feasible(result: OptimizationResult, problem: PortfolioProblem, moments: Moments, uncertainty: str) -> None:
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
        assert worst_case_mu(w, moments, uncertainty) @ w >= problem.min_return - tol
    if problem.max_volatility is not None:
        assert np.sqrt(w @ moments.covariance @ w) <= problem.max_volatility + tol
    assert result.constraints_satisfied
    assert result.violations == ()
    assert check_constraints(w, problem, moments) == ()
    assert result.performance.expected_return == pytest.approx(moments.expected_returns @ w, rel=1e-12)


def skfolio_weights(
    daily_returns: pd.DataFrame,
    uncertainty_estimator: BaseMuUncertaintySet,
    objective: Objective,
    lower: float,
    upper: float,
    **options: object,
) -> np.ndarray:
    settings: dict[str, Any] = {
        Objective.MAX_QUADRATIC_UTILITY: {
            "objective_function": ObjectiveFunction.MAXIMIZE_UTILITY,
            "risk_measure": SkRiskMeasure.VARIANCE,
            "risk_aversion": RISK_AVERSION / 2,  # skfolio: μᵀw − λ wᵀΣw
        },
        Objective.MAX_RETURN: {"objective_function": ObjectiveFunction.MAXIMIZE_RETURN},
        Objective.MIN_VOLATILITY: {"objective_function": ObjectiveFunction.MINIMIZE_RISK},
        Objective.MAX_SHARPE: {
            "objective_function": ObjectiveFunction.MAXIMIZE_RATIO,
            "risk_measure": SkRiskMeasure.STANDARD_DEVIATION,
            "risk_free_rate": RISK_FREE_RATE / PERIODS,
        },
    }[objective]
    model = MeanRisk(
        prior_estimator=EmpiricalPrior(),
        mu_uncertainty_set_estimator=uncertainty_estimator,
        min_weights=lower,
        max_weights=upper,
        solver_params=SKFOLIO_TIGHT,
        **settings,
        **options,
    )
    model.fit(daily_returns)
    return np.asarray(model.weights_, dtype=np.float64)


# --- the sets -------------------------------------------------------------------------------------------------


def test_sets_are_sized_like_skfolio_and_riskfolio(
    daily_returns: pd.DataFrame, moments: Moments, riskfolio_portfolio: Any
) -> None:
    ellipsoid = uncertainty_set(moments, "ELLIPSOIDAL")
    skfolio_set = EmpiricalMuUncertaintySet(confidence_level=CONFIDENCE, diagonal=False).fit(daily_returns)
    geometry = skfolio_set.uncertainty_set_.geometry
    assert ellipsoid.radius == pytest.approx(skfolio_set.uncertainty_set_.radius, rel=1e-14)
    np.testing.assert_allclose(ellipsoid.error_covariance, geometry @ geometry.T * PERIODS**2, rtol=1e-9, atol=1e-14)

    box = uncertainty_set(moments, "BOX")
    np.testing.assert_allclose(box.half_widths, riskfolio_portfolio.d_mu.to_numpy().ravel() * PERIODS, rtol=1e-12)
    # The standard error of an annualised mean: σ_ann / sqrt(T / P).
    sigma = np.sqrt(np.diag(moments.covariance))
    np.testing.assert_allclose(box.half_widths, stats.norm.ppf(0.95) * sigma / np.sqrt(DAYS / PERIODS), rtol=1e-12)


@pytest.mark.parametrize("uncertainty", ["BOX", "ELLIPSOIDAL"])
def test_worst_case_return_is_attained_by_a_point_of_the_set(moments: Moments, uncertainty: str) -> None:
    rng = np.random.default_rng(5)
    the_set = uncertainty_set(moments, uncertainty)
    mu = moments.expected_returns
    inverse = np.linalg.inv(the_set.error_covariance)
    for weights in [*rng.dirichlet(np.ones(len(mu)), size=3), rng.normal(0.05, 0.2, len(mu))]:
        worst_mu = worst_case_mu(weights, moments, uncertainty)
        gap = worst_mu - mu
        if uncertainty == "BOX":
            assert np.all(np.abs(gap) <= the_set.half_widths * (1 + 1e-12))
        else:
            assert gap @ inverse @ gap == pytest.approx(the_set.radius**2, rel=1e-9)
        assert the_set.worst_case_return(weights, mu) == pytest.approx(worst_mu @ weights, rel=1e-12)
        # No sampled point of the set does worse.
        directions = rng.normal(size=(2000, len(mu)))
        if uncertainty == "BOX":
            samples = mu + np.clip(directions, -1, 1) * the_set.half_widths
        else:
            factor = np.linalg.cholesky(the_set.error_covariance)
            unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
            samples = mu + the_set.radius * unit @ factor.T
        assert np.min(samples @ weights) >= worst_mu @ weights - 1e-12


# --- optimal portfolios against skfolio and Riskfolio-Lib ------------------------------------------------------


@pytest.mark.parametrize(
    ("uncertainty", "objective"),
    [
        ("BOX", Objective.MAX_QUADRATIC_UTILITY),
        ("BOX", Objective.MAX_RETURN),
        ("BOX", Objective.MAX_SHARPE),
        ("ELLIPSOIDAL", Objective.MAX_QUADRATIC_UTILITY),
        ("ELLIPSOIDAL", Objective.MAX_RETURN),
        # Ellipsoidal max Sharpe: no positive worst-case Sharpe ratio on 3 years; see the tangency test.
    ],
)
def test_objective_value_equals_skfolio(
    daily_returns: pd.DataFrame, moments: Moments, objective: Objective, uncertainty: str
) -> None:
    options: dict[str, object] = {}
    problem = make_problem(objective, list(daily_returns.columns), 0.0, 1.0)
    if objective is Objective.MAX_RETURN:
        # With a volatility cap; the ellipsoid alone already penalises volatility.
        problem = replace(problem, max_volatility=0.22)
        options["max_standard_deviation"] = 0.22 / np.sqrt(PERIODS)
    estimator: BaseMuUncertaintySet = (
        BoxMuUncertaintySet(CONFIDENCE)
        if uncertainty == "BOX"
        else EmpiricalMuUncertaintySet(confidence_level=CONFIDENCE, diagonal=False)
    )
    result = robust(problem, moments, uncertainty)
    reference = skfolio_weights(daily_returns, estimator, objective, 0.0, 1.0, **options)
    assert result.objective_value == pytest.approx(
        objective_of(result.weights, problem, moments, uncertainty), rel=1e-9
    )
    assert result.objective_value == pytest.approx(
        objective_of(reference, problem, moments, uncertainty), rel=OBJECTIVE_RTOL
    )
    assert result.status == "OPTIMAL"
    assert_feasible(result, problem, moments, uncertainty)


@pytest.mark.parametrize("objective", ROBUST_OBJECTIVES)
def test_box_objective_value_equals_riskfolio(
    daily_returns: pd.DataFrame, moments: Moments, riskfolio_portfolio: Any, objective: Objective
) -> None:
    problem = make_problem(objective, list(daily_returns.columns), 0.0, 1.0)
    result = robust(problem, moments, "BOX")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Riskfolio-Lib's own pandas and cvxpy deprecations
        frame = riskfolio_portfolio.wc_optimization(
            obj={
                Objective.MAX_QUADRATIC_UTILITY: "Utility",
                Objective.MAX_RETURN: "MaxRet",
                Objective.MIN_VOLATILITY: "MinRisk",
                Objective.MAX_SHARPE: "Sharpe",
            }[objective],
            rf=RISK_FREE_RATE / PERIODS,
            l=RISK_AVERSION / 2,  # Riskfolio-Lib: μᵀw − l wᵀΣw
            Umu="box",
            Ucov="hist",  # no covariance uncertainty
        )
    reference = frame.to_numpy().ravel()
    assert result.objective_value == pytest.approx(objective_of(reference, problem, moments, "BOX"), rel=OBJECTIVE_RTOL)
    assert result.objective_value == pytest.approx(objective_of(result.weights, problem, moments, "BOX"), rel=1e-9)


@pytest.mark.parametrize(("uncertainty", "target"), [("BOX", -0.3), ("ELLIPSOIDAL", -0.42)])
def test_sectors_shorts_and_worst_case_target_equal_skfolio(
    daily_returns: pd.DataFrame, moments: Moments, uncertainty: str, target: float
) -> None:
    tickers = list(daily_returns.columns)
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, -0.1, 0.3, with_sectors=True, min_return=target)
    rows, bounds = sector_inequalities(tickers)
    estimator: BaseMuUncertaintySet = (
        BoxMuUncertaintySet(CONFIDENCE)
        if uncertainty == "BOX"
        else EmpiricalMuUncertaintySet(confidence_level=CONFIDENCE, diagonal=False)
    )
    result = robust(problem, moments, uncertainty)
    reference = skfolio_weights(
        daily_returns,
        estimator,
        Objective.MIN_VOLATILITY,
        -0.1,
        0.3,
        left_inequality=rows,
        right_inequality=bounds,
        min_return=target / PERIODS,  # skfolio applies it to the worst-case expected return too
    )
    assert result.objective_value == pytest.approx(
        objective_of(reference, problem, moments, uncertainty), rel=OBJECTIVE_RTOL
    )
    assert np.sum(result.weights < -1e-4) >= 3  # the |w| of the box is exercised
    # The target binds on the worst case, far below the nominal return.
    assert worst_case_mu(result.weights, moments, uncertainty) @ result.weights == pytest.approx(target, abs=1e-7)
    assert_feasible(result, problem, moments, uncertainty)


# --- closed forms ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ROBUST_OBJECTIVES)
@pytest.mark.parametrize("uncertainty", ["BOX", "ELLIPSOIDAL"])
def test_a_vanishing_set_gives_the_nominal_portfolio(
    daily_returns: pd.DataFrame, moments: Moments, objective: Objective, uncertainty: str
) -> None:
    problem = make_problem(objective, list(daily_returns.columns), 0.0, 0.3, with_sectors=True)
    if objective is Objective.MIN_VOLATILITY:
        problem = replace(problem, min_return=0.25)
    nominal = optimize_mean_variance(problem, moments)
    result = optimize_robust(
        problem, moments, uncertainty=uncertainty, confidence=CONFIDENCE, observations=10**18, periods_per_year=PERIODS
    )
    assert result.objective_value == pytest.approx(nominal.objective_value, rel=OBJECTIVE_RTOL)
    np.testing.assert_allclose(result.weights, nominal.weights, atol=1e-5)


def test_box_max_return_is_the_greedy_fill_by_worst_case_return(daily_returns: pd.DataFrame, moments: Moments) -> None:
    problem = make_problem(Objective.MAX_RETURN, list(daily_returns.columns), 0.0, 0.3)
    result = robust(problem, moments, "BOX")
    worst_mu = moments.expected_returns - uncertainty_set(moments, "BOX").half_widths
    expected = np.zeros(len(worst_mu))
    remaining = 1.0
    for i in np.argsort(-worst_mu):
        expected[i] = min(0.3, remaining)
        remaining -= expected[i]
    np.testing.assert_allclose(result.weights, expected, atol=1e-7)
    assert result.objective_value == pytest.approx(worst_mu @ expected, rel=1e-9)
    # Not the nominal greedy fill: the box reorders the stocks.
    nominal = optimize_mean_variance(problem, moments)
    assert np.abs(nominal.weights - expected).max() > 0.1


def test_ellipsoidal_max_sharpe_is_the_nominal_tangency_portfolio(sp500_prices: pd.DataFrame) -> None:
    days = 2520
    returns = last_returns(sp500_prices, days)
    decade = arithmetic_moments(returns)
    problem = make_problem(Objective.MAX_SHARPE, list(returns.columns), 0.0, 1.0)
    nominal = optimize_mean_variance(problem, decade)
    confidence = 0.2
    shift = np.sqrt(stats.chi2.ppf(confidence, len(returns.columns))) * np.sqrt(PERIODS / days)
    assert shift < nominal.objective_value
    result = robust(problem, decade, "ELLIPSOIDAL", confidence=confidence, days=days)
    assert result.objective_value == pytest.approx(nominal.objective_value - shift, rel=OBJECTIVE_RTOL)
    np.testing.assert_allclose(result.weights, nominal.weights, atol=1e-5)
    reference = skfolio_weights(
        returns, EmpiricalMuUncertaintySet(confidence_level=confidence, diagonal=False), Objective.MAX_SHARPE, 0.0, 1.0
    )
    worst_sharpe = (
        decade.expected_returns @ reference
        - shift * np.sqrt(reference @ decade.covariance @ reference)
        - RISK_FREE_RATE
    ) / np.sqrt(reference @ decade.covariance @ reference)
    assert result.objective_value == pytest.approx(worst_sharpe, rel=OBJECTIVE_RTOL)
    # At 50 % the shift exceeds the best nominal Sharpe ratio: no positive worst-case excess return exists.
    assert np.sqrt(stats.chi2.ppf(0.5, len(returns.columns))) * np.sqrt(PERIODS / days) > nominal.objective_value
    with pytest.raises(InfeasibleError) as raised:
        robust(problem, decade, "ELLIPSOIDAL", confidence=0.5, days=days)
    assert raised.value.precondition_violations[0].type == "NO_WORST_CASE_EXCESS_RETURN"


@pytest.mark.parametrize("uncertainty", ["BOX", "ELLIPSOIDAL"])
def test_larger_confidence_lowers_the_worst_case_and_the_nominal_return(
    daily_returns: pd.DataFrame, moments: Moments, uncertainty: str
) -> None:
    problem = make_problem(Objective.MAX_QUADRATIC_UTILITY, list(daily_returns.columns), 0.0, 0.3)
    results = [robust(problem, moments, uncertainty, confidence=c) for c in (0.05, 0.5, 0.8, 0.95, 0.99)]
    worst_cases = [r.objective_value for r in results]
    nominal_returns = [r.performance.expected_return for r in results]
    assert np.all(np.diff(worst_cases) < 0)
    assert np.all(np.diff(nominal_returns) < 1e-9)
    assert nominal_returns[-1] < nominal_returns[0] - 0.01


@pytest.mark.parametrize("uncertainty", ["BOX", "ELLIPSOIDAL"])
def test_min_return_binds_on_the_worst_case_return(
    daily_returns: pd.DataFrame, moments: Moments, uncertainty: str
) -> None:
    tickers = list(daily_returns.columns)
    lowest = robust(make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 0.3), moments, uncertainty)
    highest = robust(make_problem(Objective.MAX_RETURN, tickers, 0.0, 0.3), moments, uncertainty)
    lowest_worst_case = uncertainty_set(moments, uncertainty).worst_case_return(
        lowest.weights, moments.expected_returns
    )
    target = 0.5 * (lowest_worst_case + highest.objective_value)
    problem = make_problem(Objective.MIN_VOLATILITY, tickers, 0.0, 0.3, min_return=target)
    result = robust(problem, moments, uncertainty)
    worst = worst_case_mu(result.weights, moments, uncertainty) @ result.weights
    assert worst == pytest.approx(target, abs=1e-7)
    assert result.performance.expected_return > target + 0.05
    assert result.objective_value > lowest.objective_value
    # Dearer than the nominal min variance with the same target on the nominal return.
    assert result.objective_value > optimize_mean_variance(problem, moments).objective_value
    assert_feasible(result, problem, moments, uncertainty)


# --- errors ---------------------------------------------------------------------------------------------------


def test_invalid_set_parameters_name_the_field(daily_returns: pd.DataFrame, moments: Moments) -> None:
    problem = make_problem(Objective.MAX_RETURN, list(daily_returns.columns), 0.0, 1.0)
    cases = [
        ({"confidence": 0.0}, "robust_confidence"),
        ({"confidence": 1.0}, "robust_confidence"),
        ({"observations": 0}, "robust_observations"),
        ({"periods_per_year": 0}, "periods_per_year"),
    ]
    for overrides, field in cases:
        arguments: dict[str, Any] = {
            "uncertainty": "BOX",
            "confidence": 0.9,
            "observations": DAYS,
            "periods_per_year": PERIODS,
        }
        arguments.update(overrides)
        with pytest.raises(InvalidInputError) as raised:
            optimize_robust(problem, moments, **arguments)
        assert raised.value.field_violations[0].field == field
    with pytest.raises(InvalidInputError) as raised:
        optimize_robust(
            problem, moments, uncertainty="SPHERE", confidence=0.9, observations=DAYS, periods_per_year=PERIODS
        )
    assert raised.value.field_violations[0].field == "uncertainty"
    assert Uncertainty("BOX") is Uncertainty.BOX
