"""Hierarchical risk parity against PyPortfolioOpt's HRPOpt, skfolio's HierarchicalRiskParity and closed forms.

Truth: PyPortfolioOpt's ``HRPOpt`` run live on the same covariance (``cov_matrix=``, the path our distance
reproduces, with its correlation rounded to 6 decimals) and on the same return frame (``returns=``, its own pandas
correlation and covariance); skfolio's ``HierarchicalRiskParity`` with variance risk, ``min_weights`` /
``max_weights``, the standard angular distance of the prior's covariance (``CovarianceDistance("precomputed")``)
and plain leaf order (``optimal_ordering=False``), fitted on the same returns; the inverse-variance portfolio
(HRP's closed form for uncorrelated strategies, whatever the tree); and bounds, sums and signs checked here
with NumPy.
"""

from __future__ import annotations

import grpc
import numpy as np
import pandas as pd
import pytest
import scipy.cluster.hierarchy as sch
from pypfopt import HRPOpt
from skfolio.cluster import HierarchicalClustering, LinkageMethod
from skfolio.distance import CovarianceDistance
from skfolio.measures import RiskMeasure
from skfolio.optimization import HierarchicalRiskParity
from skfolio.seriation import HierarchicalSeriation

from services.engine import Method, MethodSettings, OptimizationJob, run_optimization
from services.errors import InfeasibleError, InvalidInputError
from services.estimation import pairwise_correlation, pairwise_covariance
from services.optimization import (
    LINKAGE_METHODS,
    HrpResult,
    Objective,
    PortfolioProblem,
    correlation_distance,
    hierarchical_risk_parity,
)
from services.types import EstimationSettings, FloatArray
from stratopt.rpc_errors import status_code
from tests.services.market_data import return_history

WEIGHT_ATOL = 1e-12
BOUND_ATOL = 1e-12
SP500_DAYS = 756


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    """The last 756 daily returns of skfolio's 20 S&P 500 stocks."""
    return sp500_prices.iloc[-(SP500_DAYS + 1) :].pct_change().iloc[1:]


@pytest.fixture(scope="module")
def stock_returns(stock_prices: pd.DataFrame) -> pd.DataFrame:
    """Daily returns of PyPortfolioOpt's 20 stocks on the days all of them have one (895 rows from 2014-09)."""
    return stock_prices.pct_change(fill_method=None).dropna()


@pytest.fixture(scope="module")
def factor_returns() -> pd.DataFrame:
    """Synthetic daily returns of 500 strategies over 1000 days from a seeded 5-factor model."""
    rng = np.random.default_rng(20160704)
    n_assets, n_days = 500, 1000
    loadings = rng.normal(0.0, 0.5, (n_assets, 5))
    loadings[:, 0] += 1.0
    idiosyncratic = rng.normal(0.0, 1.0, (n_days, n_assets)) * rng.uniform(0.008, 0.02, n_assets)
    returns = rng.normal(0.0, 0.01, (n_days, 5)) @ loadings.T + idiosyncratic
    return pd.DataFrame(returns, columns=[f"S{i:03d}" for i in range(n_assets)])


def pypfopt_hrp(covariance: pd.DataFrame, linkage: str) -> tuple[FloatArray, list[int]]:
    """PyPortfolioOpt's HRP weights on a covariance frame (in the frame's column order) and its leaf order."""
    reference = HRPOpt(cov_matrix=covariance)
    weights = reference.optimize(linkage_method=linkage)
    return pd.Series(weights)[covariance.columns].to_numpy(), sch.to_tree(reference.clusters).pre_order()


def skfolio_model(linkage: str, min_weights: FloatArray, max_weights: FloatArray) -> HierarchicalRiskParity:
    """Skfolio's HRP configured as ours: variance, angular distance of the covariance, plain leaf order."""
    return HierarchicalRiskParity(
        risk_measure=RiskMeasure.VARIANCE,
        min_weights=min_weights,
        max_weights=max_weights,
        distance_estimator=CovarianceDistance(covariance_estimator="precomputed"),
        seriation_estimator=HierarchicalSeriation(
            hierarchical_clustering_estimator=HierarchicalClustering(linkage_method=LinkageMethod(linkage)),
            optimal_ordering=False,
        ),
    )


def assert_portfolio(result: HrpResult, n_assets: int) -> None:
    assert result.weights.shape == (n_assets,)
    assert np.all(result.weights >= 0.0)
    assert result.weights.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_array_equal(np.sort(result.cluster_order), np.arange(n_assets))
    assert result.solve_time_ms > 0.0


def assert_within_bounds(weights: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
    assert np.all(weights >= lower - BOUND_ATOL), (weights - lower).min()
    assert np.all(weights <= upper + BOUND_ATOL), (upper - weights).min()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


# --- PyPortfolioOpt parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
@pytest.mark.parametrize("data", ["sp500_returns", "stock_returns"])
def test_equals_pypfopt_on_real_covariance(data: str, linkage: str, request: pytest.FixtureRequest) -> None:
    returns: pd.DataFrame = request.getfixturevalue(data)
    covariance = returns.cov()
    result = hierarchical_risk_parity(covariance.to_numpy(), linkage=linkage)
    weights, order = pypfopt_hrp(covariance, linkage)
    assert_portfolio(result, covariance.shape[0])
    np.testing.assert_array_equal(result.cluster_order, order)
    np.testing.assert_allclose(result.weights, weights, rtol=0.0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
@pytest.mark.parametrize("data", ["sp500_returns", "stock_returns"])
def test_equals_pypfopt_fitted_on_returns(data: str, linkage: str, request: pytest.FixtureRequest) -> None:
    """PyPortfolioOpt's returns path uses the unrounded pandas correlation: the same tree on real data."""
    returns: pd.DataFrame = request.getfixturevalue(data)
    reference = HRPOpt(returns=returns)
    weights = pd.Series(reference.optimize(linkage_method=linkage))[returns.columns].to_numpy()
    result = hierarchical_risk_parity(returns.cov().to_numpy(), linkage=linkage)
    np.testing.assert_allclose(result.weights, weights, rtol=0.0, atol=WEIGHT_ATOL)
    np.testing.assert_array_equal(result.cluster_order, sch.to_tree(reference.clusters).pre_order())


@pytest.fixture(scope="module")
def gapped_returns(stock_prices: pd.DataFrame) -> pd.DataFrame:
    """Daily returns of PyPortfolioOpt's 20 stocks 1989-2018 with their pre-IPO gaps (NaN before a listing)."""
    return stock_prices.pct_change(fill_method=None).iloc[1:]


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
def test_pairwise_correlation_equals_pypfopt_returns_path_with_gaps(gapped_returns: pd.DataFrame, linkage: str) -> None:
    """With gaps, ``HRPOpt(returns)`` clusters on ``returns.corr()``: given it, the weights are PyPortfolioOpt's."""
    reference = HRPOpt(returns=gapped_returns)
    weights = pd.Series(reference.optimize(linkage_method=linkage))[gapped_returns.columns].to_numpy()
    values = gapped_returns.to_numpy()
    correlation = pairwise_correlation(values)
    np.testing.assert_allclose(correlation, gapped_returns.corr().to_numpy(), rtol=0.0, atol=1e-13)
    result = hierarchical_risk_parity(pairwise_covariance(values) * 252, linkage=linkage, correlation=correlation)
    assert_portfolio(result, values.shape[1])
    np.testing.assert_array_equal(result.cluster_order, sch.to_tree(reference.clusters).pre_order())
    np.testing.assert_allclose(result.weights, weights, rtol=0.0, atol=WEIGHT_ATOL)
    # The correlation derived from the pairwise covariance differs there (the former path: off by 0.02 to 0.045).
    derived = hierarchical_risk_parity(pairwise_covariance(values), linkage=linkage)
    assert np.abs(derived.weights - weights).max() > 1e-2


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
def test_engine_with_gapped_returns_equals_pypfopt_returns_path(gapped_returns: pd.DataFrame, linkage: str) -> None:
    """The engine on a return history (sample covariance, pairwise) is ``HRPOpt(returns).optimize(linkage)``."""
    reference = pd.Series(HRPOpt(returns=gapped_returns).optimize(linkage_method=linkage))
    n = gapped_returns.shape[1]
    problem = PortfolioProblem(
        symbols=tuple(gapped_returns.columns),
        objective=Objective.MIN_VOLATILITY,
        lower_bounds=np.zeros(n),
        upper_bounds=np.ones(n),
    )
    outcome = run_optimization(
        OptimizationJob(
            problem=problem,
            inputs=return_history(gapped_returns),
            settings=EstimationSettings(),
            method=MethodSettings(method=Method.HIERARCHICAL_RISK_PARITY, linkage=linkage),
        )
    )
    np.testing.assert_allclose(
        outcome.result.weights, reference[gapped_returns.columns].to_numpy(), rtol=0.0, atol=WEIGHT_ATOL
    )


def test_given_correlation_of_the_wrong_shape_or_not_finite_is_invalid() -> None:
    with pytest.raises(InvalidInputError) as caught:
        hierarchical_risk_parity(np.eye(3), correlation=np.eye(2))
    assert [v.field for v in caught.value.field_violations] == ["correlation"]
    correlation = np.eye(3)
    correlation[0, 2] = np.nan
    with pytest.raises(InvalidInputError) as caught:
        hierarchical_risk_parity(np.eye(3), correlation=correlation)
    assert [v.field for v in caught.value.field_violations] == ["correlation[0, 2]"]


def test_annualisation_does_not_change_weights(sp500_returns: pd.DataFrame) -> None:
    covariance = sp500_returns.cov().to_numpy()
    daily = hierarchical_risk_parity(covariance, linkage="ward")
    annual = hierarchical_risk_parity(covariance * 252, linkage="ward")
    np.testing.assert_array_equal(annual.cluster_order, daily.cluster_order)
    np.testing.assert_allclose(annual.weights, daily.weights, rtol=0.0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize("linkage", ["single", "ward"])
def test_equals_pypfopt_on_synthetic_500(factor_returns: pd.DataFrame, linkage: str) -> None:
    covariance = factor_returns.cov() * 252
    result = hierarchical_risk_parity(covariance.to_numpy(), linkage=linkage)
    weights, order = pypfopt_hrp(covariance, linkage)
    assert_portfolio(result, 500)
    np.testing.assert_array_equal(result.cluster_order, order)
    np.testing.assert_allclose(result.weights, weights, rtol=0.0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
def test_rounded_correlation_ties_are_broken_as_pypfopt(linkage: str) -> None:
    """Correlations within 5e-7 are exact ties after rounding: the order (and so the weights) follows pypfopt."""
    correlation = np.array([[1.0, 0.5, 0.5 + 1e-7], [0.5, 1.0, 0.5 + 3e-7], [0.5 + 1e-7, 0.5 + 3e-7, 1.0]])
    volatilities = np.array([0.1, 0.2, 0.3])
    covariance = correlation * np.outer(volatilities, volatilities)
    names = ["A", "B", "C"]
    reference = HRPOpt(cov_matrix=pd.DataFrame(covariance, index=names, columns=names))
    weights = pd.Series(reference.optimize(linkage_method=linkage))[names].to_numpy()
    result = hierarchical_risk_parity(covariance, linkage=linkage)
    np.testing.assert_array_equal(result.cluster_order, sch.to_tree(reference.clusters).pre_order())
    np.testing.assert_allclose(result.weights, weights, rtol=0.0, atol=WEIGHT_ATOL)
    # Without the rounding, B and C (the most correlated) would pair up and A stand alone: other weights.
    unrounded = sch.leaves_list(sch.linkage(np.sqrt((1.0 - correlation[np.triu_indices(3, 1)]) / 2.0), linkage))
    assert unrounded.tolist() != result.cluster_order.tolist()


def test_constant_correlation_ties_equal_pypfopt() -> None:
    """Every distance equal: the tie-breaking of the linkage decides the order, identically."""
    rng = np.random.default_rng(3)
    volatilities = rng.uniform(0.1, 0.4, 11)
    correlation = np.full((11, 11), 0.3)
    np.fill_diagonal(correlation, 1.0)
    covariance = correlation * np.outer(volatilities, volatilities)
    names = [f"S{i:02d}" for i in range(11)]
    frame = pd.DataFrame(covariance, index=names, columns=names)
    for linkage in LINKAGE_METHODS:
        result = hierarchical_risk_parity(covariance, linkage=linkage)
        weights, order = pypfopt_hrp(frame, linkage)
        np.testing.assert_array_equal(result.cluster_order, order)
        np.testing.assert_allclose(result.weights, weights, rtol=0.0, atol=WEIGHT_ATOL)


def test_correlation_distance_equals_pypfopt_input(sp500_returns: pd.DataFrame) -> None:
    """The condensed distance handed to the linkage is PyPortfolioOpt's, bit for bit."""
    covariance = sp500_returns.cov()
    inverse_sd = np.diag(1.0 / np.sqrt(np.diag(covariance)))
    correlation = np.dot(inverse_sd, np.dot(covariance, inverse_sd)).round(6)
    expected = np.sqrt(np.clip((1.0 - correlation) / 2.0, 0.0, 1.0))[np.triu_indices(20, 1)]
    np.testing.assert_array_equal(correlation_distance(covariance.to_numpy()), expected)


# --- closed forms ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
def test_uncorrelated_strategies_get_inverse_variance_weights(linkage: str) -> None:
    """With Σ diagonal every split gives α = s_left / (s_left + s_right) (s: summed 1/σ²), so w_i ∝ 1/σ_i²."""
    variances = np.random.default_rng(11).uniform(0.01, 0.2, 37)
    result = hierarchical_risk_parity(np.diag(variances), linkage=linkage)
    np.testing.assert_allclose(result.weights, (1 / variances) / (1 / variances).sum(), rtol=1e-13, atol=0.0)


def test_two_strategies_split_by_inverse_variance() -> None:
    covariance = np.array([[0.04, 0.01], [0.01, 0.09]])
    result = hierarchical_risk_parity(covariance)
    np.testing.assert_allclose(result.weights, [0.09 / 0.13, 0.04 / 0.13], rtol=1e-15)


def test_single_strategy_gets_everything() -> None:
    result = hierarchical_risk_parity(np.array([[0.04]]), lower_bounds=np.array([0.5]))
    np.testing.assert_array_equal(result.weights, [1.0])
    np.testing.assert_array_equal(result.cluster_order, [0])


# --- bounds against skfolio -----------------------------------------------------------------------------------


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
def test_bounds_equal_skfolio_on_sp500(sp500_returns: pd.DataFrame, linkage: str) -> None:
    lower, upper = np.full(20, 0.02), np.full(20, 0.08)
    model = skfolio_model(linkage, lower, upper).fit(sp500_returns)
    covariance = model.prior_estimator_.return_distribution_.covariance
    result = hierarchical_risk_parity(covariance, linkage=linkage, lower_bounds=lower, upper_bounds=upper)
    unbounded = hierarchical_risk_parity(covariance, linkage=linkage)
    assert np.any(unbounded.weights > upper) and np.any(unbounded.weights < lower)  # the bounds bind
    assert_within_bounds(result.weights, lower, upper)
    np.testing.assert_array_equal(result.cluster_order, model.seriation_estimator_.ordering_)
    np.testing.assert_allclose(result.weights, model.weights_, rtol=0.0, atol=WEIGHT_ATOL)


def test_per_strategy_bounds_equal_skfolio_on_stock_prices(stock_returns: pd.DataFrame) -> None:
    rng = np.random.default_rng(5)
    lower, upper = rng.uniform(0.0, 0.04, 20), rng.uniform(0.05, 0.09, 20)
    model = skfolio_model("single", lower, upper).fit(stock_returns)
    covariance = model.prior_estimator_.return_distribution_.covariance
    result = hierarchical_risk_parity(covariance, lower_bounds=lower, upper_bounds=upper)
    unbounded = hierarchical_risk_parity(covariance)
    assert np.any(unbounded.weights > upper) and np.any(unbounded.weights < lower)
    assert_within_bounds(result.weights, lower, upper)
    np.testing.assert_allclose(result.weights, model.weights_, rtol=0.0, atol=WEIGHT_ATOL)


def test_bounds_equal_skfolio_on_synthetic_500(factor_returns: pd.DataFrame) -> None:
    rng = np.random.default_rng(9)
    lower, upper = rng.uniform(0.0, 0.0015, 500), rng.uniform(0.003, 0.004, 500)
    model = skfolio_model("ward", lower, upper).fit(factor_returns)
    covariance = model.prior_estimator_.return_distribution_.covariance
    result = hierarchical_risk_parity(covariance, linkage="ward", lower_bounds=lower, upper_bounds=upper)
    unbounded = hierarchical_risk_parity(covariance, linkage="ward")
    assert np.sum(unbounded.weights > upper) > 10 and np.sum(unbounded.weights < lower) > 10
    assert_portfolio(result, 500)
    assert_within_bounds(result.weights, lower, upper)
    np.testing.assert_allclose(result.weights, model.weights_, rtol=0.0, atol=WEIGHT_ATOL)


@pytest.mark.parametrize("linkage", LINKAGE_METHODS)
def test_slack_bounds_leave_the_weights_unchanged(sp500_returns: pd.DataFrame, linkage: str) -> None:
    covariance = sp500_returns.cov().to_numpy()
    unbounded = hierarchical_risk_parity(covariance, linkage=linkage)
    lower, upper = unbounded.weights * 0.5, np.minimum(unbounded.weights * 2.0, 1.0)
    bounded = hierarchical_risk_parity(covariance, linkage=linkage, lower_bounds=lower, upper_bounds=upper)
    np.testing.assert_allclose(bounded.weights, unbounded.weights, rtol=0.0, atol=1e-15)
    long_only = hierarchical_risk_parity(covariance, linkage=linkage, lower_bounds=np.zeros(20))
    np.testing.assert_allclose(long_only.weights, unbounded.weights, rtol=0.0, atol=1e-15)


def test_negative_lower_bounds_count_as_zero(sp500_returns: pd.DataFrame) -> None:
    covariance = sp500_returns.cov().to_numpy()
    unbounded = hierarchical_risk_parity(covariance, linkage="complete")
    slack = hierarchical_risk_parity(covariance, linkage="complete", lower_bounds=np.full(20, -0.5))
    np.testing.assert_allclose(slack.weights, unbounded.weights, rtol=0.0, atol=1e-15)
    # Σ lower = 0.9 as given, but 1.4 > 1 once the negative minimum is read as 0: infeasible for long-only.
    lower = np.concatenate([[-0.5], np.full(19, 1.4 / 19)])
    with pytest.raises(InfeasibleError) as caught:
        hierarchical_risk_parity(covariance, lower_bounds=lower)
    assert [v.type for v in caught.value.precondition_violations] == ["BOUNDS_SUM"]


def test_tight_bounds_that_sum_to_one_are_met_exactly(sp500_returns: pd.DataFrame) -> None:
    target = np.random.default_rng(2).dirichlet(np.ones(20))
    result = hierarchical_risk_parity(sp500_returns.cov().to_numpy(), lower_bounds=target, upper_bounds=target)
    np.testing.assert_allclose(result.weights, target, rtol=0.0, atol=1e-15)


def test_only_upper_bounds(sp500_returns: pd.DataFrame) -> None:
    upper = np.full(20, 0.06)
    result = hierarchical_risk_parity(sp500_returns.cov().to_numpy(), linkage="average", upper_bounds=upper)
    assert_within_bounds(result.weights, np.zeros(20), upper)
    assert result.weights.max() == pytest.approx(0.06, abs=1e-15)


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("linkage", ["centroid", "median", "weighted", "Ward", ""])
def test_unknown_linkage_is_invalid(linkage: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        hierarchical_risk_parity(np.eye(3), linkage=linkage)
    assert status_code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["linkage"]


@pytest.mark.parametrize(
    ("lower_sum", "upper_sum", "subjects"),
    [
        (1.2, 2.0, ["lower_bounds"]),
        (0.5, 0.9, ["upper_bounds"]),
    ],
)
def test_infeasible_bounds_sum(lower_sum: float, upper_sum: float, subjects: list[str]) -> None:
    lower, upper = np.full(4, lower_sum / 4), np.full(4, upper_sum / 4)
    with pytest.raises(InfeasibleError) as caught:
        hierarchical_risk_parity(np.eye(4), lower_bounds=lower, upper_bounds=upper)
    assert status_code(caught.value) is grpc.StatusCode.FAILED_PRECONDITION
    assert [v.type for v in caught.value.precondition_violations] == ["BOUNDS_SUM"] * len(subjects)
    assert [v.subject for v in caught.value.precondition_violations] == subjects


def test_lower_bound_above_upper_is_invalid() -> None:
    with pytest.raises(InvalidInputError) as caught:
        hierarchical_risk_parity(np.eye(3), lower_bounds=np.array([0.1, 0.5, 0.1]), upper_bounds=np.full(3, 0.4))
    assert caught.value.field_violations[0].field == "lower_bounds[1]"


@pytest.mark.parametrize(
    ("lower", "upper", "field"),
    [
        (np.full(2, 0.1), None, "lower_bounds"),
        (None, np.array([0.5, np.nan, 0.5]), "upper_bounds[1]"),
        (np.array([-1.0, 0.0, 0.0]), np.array([-0.5, 1.0, 1.0]), "upper_bounds[0]"),
    ],
)
def test_malformed_bounds_are_invalid(lower: FloatArray | None, upper: FloatArray | None, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        hierarchical_risk_parity(np.eye(3), lower_bounds=lower, upper_bounds=upper)
    assert caught.value.field_violations[0].field == field


def _not_psd() -> FloatArray:
    covariance = np.full((4, 4), -1.5)
    np.fill_diagonal(covariance, 1.0)
    return covariance


@pytest.mark.parametrize(
    ("covariance", "message"),
    [
        (np.zeros((0, 0)), "non-empty square"),
        (np.ones((2, 3)), "non-empty square"),
        (np.ones(4), "non-empty square"),
        (np.diag([0.04, 0.0, 0.09]), "positive variances"),
        (np.array([[0.04, 0.01], [0.02, 0.09]]), "not symmetric"),
        (_not_psd(), "not positive semidefinite"),
    ],
)
def test_malformed_covariance_is_invalid(covariance: FloatArray, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        hierarchical_risk_parity(covariance)
    assert caught.value.field_violations[0].field == "covariance"


def test_non_finite_covariance_names_the_entry() -> None:
    covariance = np.eye(3)
    covariance[1, 2] = np.inf
    with pytest.raises(InvalidInputError) as caught:
        hierarchical_risk_parity(covariance)
    assert caught.value.field_violations[0].field == "covariance[1, 2]"
