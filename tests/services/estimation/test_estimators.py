"""Estimators against PyPortfolioOpt, pandas and closed forms on the real price data sets.

Truth: ``pandas.DataFrame.cov`` (pairwise-complete covariance), ``pypfopt.expected_returns`` (mean
historical, EMA, CAPM, ``returns_from_prices``), ``pypfopt.risk_models`` (``sample_cov``, ``exp_cov``,
``CovarianceShrinkage.ledoit_wolf``, ``fix_nonpositive_semidefinite``), a PSD projection solved by cvxpy,
and matrices built from a known eigendecomposition.
"""

from __future__ import annotations

import cvxpy as cp
import grpc
import numpy as np
import pandas as pd
import pytest
from pypfopt import expected_returns, risk_models

from services.errors import InvalidInputError
from services.estimation import (
    estimate_moments,
    exponential_covariance,
    nearest_psd,
    pairwise_covariance,
    prices_to_returns,
)
from services.types import (
    CovarianceEstimator,
    EstimationSettings,
    MissingDataPolicy,
    ReturnsEstimator,
)
from stratopt.rpc_errors import status_code
from tests.services.market_data import load_spy_prices, return_history

PERIODS_PER_YEAR = 252


def returns_of(prices: pd.DataFrame) -> pd.DataFrame:
    """Our simple returns of a price frame, indexed by the later date of each pair (NaN rows kept)."""
    return pd.DataFrame(prices_to_returns(prices.to_numpy()), index=prices.index[1:], columns=prices.columns)


@pytest.fixture(scope="module")
def stock_returns(stock_prices: pd.DataFrame) -> pd.DataFrame:
    return returns_of(stock_prices)


@pytest.fixture(scope="module")
def sp500_small_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    """5 S&P 500 stocks over their last 400 daily returns (complete)."""
    prices = sp500_prices.iloc[-401:, :5]
    return prices.pct_change(fill_method=None).iloc[1:]


# --- prices_to_returns ----------------------------------------------------------------------------------------


def test_prices_to_returns_equals_pypfopt_returns_from_prices(stock_prices: pd.DataFrame) -> None:
    ours = returns_of(stock_prices)
    theirs = expected_returns.returns_from_prices(stock_prices)
    assert ours.shape == (len(stock_prices) - 1, stock_prices.shape[1])
    # pypfopt drops all-NaN rows; every row it kept we have, with the same NaN pattern and values.
    aligned = ours.reindex(theirs.index)
    assert aligned.index.equals(theirs.index)
    np.testing.assert_array_equal(aligned.isna().to_numpy(), theirs.isna().to_numpy())
    np.testing.assert_allclose(aligned.to_numpy(), theirs.to_numpy(), rtol=1e-14, atol=0.0, equal_nan=True)
    dropped = ours.index.difference(theirs.index)
    assert ours.loc[dropped].isna().all(axis=None)


def test_prices_to_returns_keeps_gaps_and_all_nan_rows_missing(stock_prices: pd.DataFrame) -> None:
    prices = stock_prices.iloc[:50].copy()
    prices.iloc[20, :] = np.nan  # a market holiday row
    prices.iloc[30, 1] = np.nan  # one missing quote
    ours = returns_of(prices)
    theirs = expected_returns.returns_from_prices(prices)
    # The holiday makes two all-NaN return rows (into and out of it); pypfopt drops them, we keep them.
    assert ours.iloc[19].isna().all() and ours.iloc[20].isna().all()
    assert len(ours) - len(theirs) == 2
    assert np.isnan(ours.iloc[29, 1]) and np.isnan(ours.iloc[30, 1])
    np.testing.assert_allclose(
        ours.reindex(theirs.index).to_numpy(), theirs.to_numpy(), rtol=1e-14, atol=0.0, equal_nan=True
    )


# --- pairwise_covariance ------------------------------------------------------------------------------------


def test_pairwise_covariance_equals_pandas_cov_with_listing_gaps(stock_returns: pd.DataFrame) -> None:
    assert stock_returns.isna().any(axis=None)  # the data has pre-listing gaps
    ours = pairwise_covariance(stock_returns.to_numpy())
    theirs = stock_returns.cov().to_numpy()
    assert not np.isnan(theirs).any()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-18)
    np.testing.assert_array_equal(ours, ours.T)


def test_pairwise_covariance_equals_pandas_cov_with_scattered_gaps(sp500_prices: pd.DataFrame) -> None:
    returns = sp500_prices.iloc[-1001:].pct_change(fill_method=None).iloc[1:]
    rng = np.random.default_rng(7)
    holes = rng.random(returns.shape) < 0.15
    holed = returns.mask(holes)
    np.testing.assert_allclose(pairwise_covariance(holed.to_numpy()), holed.cov().to_numpy(), rtol=1e-12, atol=1e-18)


def test_pairwise_covariance_is_nan_where_pairs_share_fewer_than_two_periods() -> None:
    returns = pd.DataFrame(
        {
            "a": [0.01, 0.02, np.nan, np.nan, -0.01],
            "b": [np.nan, 0.03, 0.01, -0.02, np.nan],
            "c": [0.02, -0.01, 0.00, 0.01, 0.03],
        }
    )
    ours = pairwise_covariance(returns.to_numpy())
    theirs = returns.cov().to_numpy()  # a and b share one period: NaN
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.isnan(ours[0, 1]) and np.isnan(ours[1, 0])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-18, equal_nan=True)


# --- exponential_covariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("span", [30, 180, 500])
def test_exponential_covariance_equals_pypfopt_exp_cov(sp500_small_returns: pd.DataFrame, span: int) -> None:
    ours = exponential_covariance(sp500_small_returns.to_numpy(), span)
    theirs = risk_models.exp_cov(sp500_small_returns, returns_data=True, span=span, frequency=1).to_numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=0.0)


def test_estimate_moments_exponential_covariance_is_annualised_exp_cov(sp500_small_returns: pd.DataFrame) -> None:
    settings = EstimationSettings(covariance_estimator=CovarianceEstimator.EXPONENTIAL, ema_span=180)
    estimated = estimate_moments(return_history(sp500_small_returns), settings)
    theirs = risk_models.exp_cov(sp500_small_returns, returns_data=True, span=180, frequency=PERIODS_PER_YEAR)
    np.testing.assert_allclose(estimated.moments.covariance, theirs.to_numpy(), rtol=1e-10, atol=0.0)


# --- Ledoit-Wolf ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_assets", [5, 20])
def test_ledoit_wolf_equals_pypfopt_covariance_shrinkage(sp500_prices: pd.DataFrame, n_assets: int) -> None:
    returns = sp500_prices.iloc[-401:, :n_assets].pct_change(fill_method=None).iloc[1:]
    settings = EstimationSettings(covariance_estimator=CovarianceEstimator.LEDOIT_WOLF)
    estimated = estimate_moments(return_history(returns), settings)
    theirs = risk_models.CovarianceShrinkage(returns, returns_data=True).ledoit_wolf().to_numpy()
    np.testing.assert_allclose(estimated.moments.covariance, theirs, rtol=1e-10, atol=0.0)
    assert estimated.missing_data_policy == "PAIRWISE"


def test_ledoit_wolf_with_gaps_shrinks_the_common_window(stock_prices: pd.DataFrame) -> None:
    returns = expected_returns.returns_from_prices(stock_prices)
    settings = EstimationSettings(covariance_estimator=CovarianceEstimator.LEDOIT_WOLF)
    estimated = estimate_moments(return_history(returns), settings)
    complete = returns.dropna()
    theirs = risk_models.CovarianceShrinkage(complete, returns_data=True).ledoit_wolf().to_numpy()
    np.testing.assert_allclose(estimated.moments.covariance, theirs, rtol=1e-10, atol=0.0)
    # The means still use every observation of each stock.
    np.testing.assert_allclose(
        estimated.moments.expected_returns,
        expected_returns.mean_historical_return(stock_prices).to_numpy(),
        rtol=1e-12,
    )
    assert estimated.missing_data_policy == "PAIRWISE (covariance: COMMON_WINDOW)"


# --- default (PAIRWISE) estimates, expected-returns estimators ------------------------------------------------


def test_default_estimates_equal_pypfopt_mean_historical_and_sample_cov(
    stock_prices: pd.DataFrame, stock_returns: pd.DataFrame
) -> None:
    estimated = estimate_moments(return_history(stock_returns), EstimationSettings())
    np.testing.assert_allclose(
        estimated.moments.expected_returns,
        expected_returns.mean_historical_return(stock_prices).to_numpy(),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        estimated.moments.covariance, risk_models.sample_cov(stock_prices).to_numpy(), rtol=1e-12, atol=1e-16
    )
    np.testing.assert_allclose(
        estimated.moments.covariance, stock_returns.cov().to_numpy() * PERIODS_PER_YEAR, rtol=1e-12, atol=1e-16
    )
    assert estimated.missing_data_policy == "PAIRWISE"


@pytest.mark.parametrize("compounding", [True, False])
@pytest.mark.parametrize("periods_per_year", [252, 52])
def test_mean_historical_return_equals_pypfopt(
    stock_prices: pd.DataFrame, stock_returns: pd.DataFrame, compounding: bool, periods_per_year: int
) -> None:
    settings = EstimationSettings(compounding=compounding, periods_per_year=periods_per_year)
    estimated = estimate_moments(return_history(stock_returns), settings)
    theirs = expected_returns.mean_historical_return(stock_prices, compounding=compounding, frequency=periods_per_year)
    np.testing.assert_allclose(estimated.moments.expected_returns, theirs.to_numpy(), rtol=1e-12)


def test_arithmetic_mean_return_is_the_column_mean_times_periods(stock_returns: pd.DataFrame) -> None:
    estimated = estimate_moments(return_history(stock_returns), EstimationSettings(compounding=False))
    np.testing.assert_allclose(
        estimated.moments.expected_returns, stock_returns.mean().to_numpy() * PERIODS_PER_YEAR, rtol=1e-12
    )


@pytest.mark.parametrize("compounding", [True, False])
@pytest.mark.parametrize("span", [100, 500])
def test_ema_return_equals_pypfopt(
    stock_prices: pd.DataFrame, stock_returns: pd.DataFrame, compounding: bool, span: int
) -> None:
    settings = EstimationSettings(returns_estimator=ReturnsEstimator.EMA, compounding=compounding, ema_span=span)
    estimated = estimate_moments(return_history(stock_returns), settings)
    theirs = expected_returns.ema_historical_return(stock_prices, compounding=compounding, span=span)
    np.testing.assert_allclose(estimated.moments.expected_returns, theirs.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("compounding", [True, False])
def test_capm_return_with_equal_weight_market_equals_pypfopt(
    stock_prices: pd.DataFrame, stock_returns: pd.DataFrame, compounding: bool
) -> None:
    settings = EstimationSettings(returns_estimator=ReturnsEstimator.CAPM, compounding=compounding, risk_free_rate=0.02)
    estimated = estimate_moments(return_history(stock_returns), settings)
    theirs = expected_returns.capm_return(stock_prices, compounding=compounding, risk_free_rate=0.02)
    np.testing.assert_allclose(estimated.moments.expected_returns, theirs.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("compounding", [True, False])
def test_capm_return_with_spy_market_equals_pypfopt(
    stock_prices: pd.DataFrame, stock_returns: pd.DataFrame, compounding: bool
) -> None:
    spy = load_spy_prices().reindex(stock_prices.index)  # NaN before SPY's 1993 listing
    market = returns_of(spy)["SPY"]
    settings = EstimationSettings(returns_estimator=ReturnsEstimator.CAPM, compounding=compounding, risk_free_rate=0.02)
    estimated = estimate_moments(return_history(stock_returns, market), settings)
    theirs = expected_returns.capm_return(stock_prices, market_prices=spy, compounding=compounding, risk_free_rate=0.02)
    np.testing.assert_allclose(estimated.moments.expected_returns, theirs.to_numpy(), rtol=1e-12)
    # Closed form: beta_i = cov(r_i, m) / var(m) over the periods both are observed (pandas pairwise).
    joined = stock_returns.assign(mkt=market)
    cov = joined.cov()
    betas = (cov["mkt"] / cov.loc["mkt", "mkt"]).drop("mkt").to_numpy()
    if compounding:
        market_mean = (1 + market).prod() ** (PERIODS_PER_YEAR / market.count()) - 1
    else:
        market_mean = market.mean() * PERIODS_PER_YEAR
    np.testing.assert_allclose(estimated.moments.expected_returns, 0.02 + betas * (market_mean - 0.02), rtol=1e-10)


# --- missing-data policies ------------------------------------------------------------------------------------


def test_common_window_equals_estimates_on_dropna_data(stock_returns: pd.DataFrame) -> None:
    settings = EstimationSettings(missing_data_policy=MissingDataPolicy.COMMON_WINDOW)
    estimated = estimate_moments(return_history(stock_returns), settings)
    complete = stock_returns.dropna()
    assert len(complete) < len(stock_returns)
    np.testing.assert_allclose(
        estimated.moments.expected_returns,
        expected_returns.mean_historical_return(complete, returns_data=True).to_numpy(),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        estimated.moments.covariance, complete.cov().to_numpy() * PERIODS_PER_YEAR, rtol=1e-12, atol=1e-16
    )
    assert estimated.observations == len(complete)
    assert estimated.missing_data_policy == "COMMON_WINDOW"
    assert estimated.window_start == complete.index[0].to_datetime64()
    assert estimated.window_end == complete.index[-1].to_datetime64()


@pytest.mark.parametrize(
    "returns_estimator", [ReturnsEstimator.MEAN_HISTORICAL, ReturnsEstimator.EMA, ReturnsEstimator.CAPM]
)
def test_common_window_expected_returns_equal_pypfopt_on_dropna_data(
    stock_returns: pd.DataFrame, returns_estimator: ReturnsEstimator
) -> None:
    settings = EstimationSettings(
        missing_data_policy=MissingDataPolicy.COMMON_WINDOW, returns_estimator=returns_estimator
    )
    estimated = estimate_moments(return_history(stock_returns), settings)
    complete = stock_returns.dropna()
    theirs = {
        ReturnsEstimator.MEAN_HISTORICAL: expected_returns.mean_historical_return,
        ReturnsEstimator.EMA: expected_returns.ema_historical_return,
        ReturnsEstimator.CAPM: expected_returns.capm_return,
    }[returns_estimator](complete, returns_data=True)
    np.testing.assert_allclose(estimated.moments.expected_returns, theirs.to_numpy(), rtol=1e-12)


def test_pairwise_observations_count_rows_with_any_observation(stock_returns: pd.DataFrame) -> None:
    # Insert market-holiday rows (every strategy missing): they must be ignored, not decay the EMA.
    holidays = pd.DataFrame(
        np.nan, index=stock_returns.index[[100, 2000, 5000]] + pd.Timedelta(hours=12), columns=stock_returns.columns
    )
    with_holidays = pd.concat([stock_returns, holidays]).sort_index()
    settings = EstimationSettings(returns_estimator=ReturnsEstimator.EMA)
    estimated = estimate_moments(return_history(with_holidays), settings)
    assert estimated.observations == int(with_holidays.notna().any(axis=1).sum()) == len(stock_returns)
    theirs = expected_returns.ema_historical_return(stock_returns, returns_data=True)
    np.testing.assert_allclose(estimated.moments.expected_returns, theirs.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        estimated.moments.covariance, stock_returns.cov().to_numpy() * PERIODS_PER_YEAR, rtol=1e-12, atol=1e-16
    )
    assert estimated.window_start == stock_returns.index[0].to_datetime64()
    assert estimated.window_end == stock_returns.index[-1].to_datetime64()


# --- nearest_psd ----------------------------------------------------------------------------------------------


def random_rotation(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def test_nearest_psd_leaves_a_positive_definite_matrix_unchanged(sp500_small_returns: pd.DataFrame) -> None:
    covariance = sp500_small_returns.cov().to_numpy() * PERIODS_PER_YEAR
    np.testing.assert_array_equal(nearest_psd(covariance), covariance)


def test_nearest_psd_leaves_a_singular_psd_matrix_unchanged() -> None:
    factor = np.random.default_rng(3).standard_normal((6, 2)) * 0.1
    singular = factor @ factor.T  # rank 2: PSD, four zero eigenvalues
    np.testing.assert_allclose(nearest_psd(singular), singular, rtol=0.0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:The covariance matrix is non positive semidefinite")
@pytest.mark.parametrize(
    "eigenvalues",
    [(0.09, 0.04, 0.01, -0.1), (0.2, 0.05, -0.003, -0.02, 0.0)],
    ids=["one-negative", "two-negative"],
)
def test_nearest_psd_clips_negative_eigenvalues_of_a_known_spectrum(eigenvalues: tuple[float, ...]) -> None:
    rotation = random_rotation(len(eigenvalues), seed=11)
    indefinite = rotation @ np.diag(eigenvalues) @ rotation.T
    indefinite = (indefinite + indefinite.T) / 2.0
    fixed = nearest_psd(indefinite)
    # Closed form from the spectrum we built: Q diag(max(lambda, 0)) Q^T.
    expected = rotation @ np.diag(np.clip(eigenvalues, 0.0, None)) @ rotation.T
    np.testing.assert_allclose(fixed, expected, rtol=0.0, atol=1e-14)
    assert np.linalg.eigvalsh(fixed)[0] >= -1e-14
    np.testing.assert_allclose(fixed, fixed.T, rtol=0.0, atol=0.0)
    # PyPortfolioOpt's spectral fix agrees, and so does the Frobenius-nearest PSD matrix solved by cvxpy.
    pypfopt_fixed = risk_models.fix_nonpositive_semidefinite(indefinite, fix_method="spectral")
    np.testing.assert_allclose(fixed, pypfopt_fixed, rtol=0.0, atol=1e-14)
    projection = cp.Variable(indefinite.shape, symmetric=True)
    projection_problem = cp.Problem(cp.Minimize(cp.norm(projection - indefinite, "fro")), [projection >> 0])
    nearest_distance = projection_problem.solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(np.linalg.norm(fixed - indefinite, "fro"), nearest_distance, rtol=1e-6)
    np.testing.assert_allclose(fixed, projection.value, rtol=0.0, atol=1e-5)  # SDP solver accuracy


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("observed", [0, 1])
@pytest.mark.parametrize("column", [0, 3])
def test_strategy_with_fewer_than_two_observations_is_invalid(
    sp500_small_returns: pd.DataFrame, observed: int, column: int
) -> None:
    returns = sp500_small_returns.copy()
    returns.iloc[observed:, column] = np.nan
    with pytest.raises(InvalidInputError) as caught:
        estimate_moments(return_history(returns), EstimationSettings())
    assert [v.field for v in caught.value.field_violations] == [f"returns[:, {column}]"]
    assert status_code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.filterwarnings("ignore:Some returns are NaN")  # pypfopt, on strategy 1's trailing gap
def test_pair_without_two_shared_observations_is_invalid(sp500_small_returns: pd.DataFrame) -> None:
    returns = sp500_small_returns.copy()
    returns.iloc[200:, 1] = np.nan  # strategy 1 stops where strategy 4 starts
    returns.iloc[:200, 4] = np.nan
    with pytest.raises(InvalidInputError) as caught:
        estimate_moments(return_history(returns), EstimationSettings())
    assert [v.field for v in caught.value.field_violations] == ["returns[:, 1]"]
    assert "returns[:, 4]" in caught.value.field_violations[0].description


def test_common_window_with_fewer_than_two_complete_periods_is_invalid(sp500_small_returns: pd.DataFrame) -> None:
    returns = sp500_small_returns.copy()
    returns.iloc[1:200, 1] = np.nan
    returns.iloc[200:, 4] = np.nan  # only period 0 is complete
    settings = EstimationSettings(missing_data_policy=MissingDataPolicy.COMMON_WINDOW)
    with pytest.raises(InvalidInputError) as caught:
        estimate_moments(return_history(returns), settings)
    assert [v.field for v in caught.value.field_violations] == ["missing_data_policy"]


# A constant return series has zero variance, whatever the constant: floating-point means differ from a
# non-zero constant by an ulp, so a check on the computed variance alone would miss it.


@pytest.mark.parametrize(
    ("constant", "with_gaps"),
    [
        (0.0, False),
        (0.0, True),
        (1e-4, False),
        (0.01, False),
        (0.01, True),
    ],
)
def test_zero_variance_strategy_is_invalid(sp500_small_returns: pd.DataFrame, constant: float, with_gaps: bool) -> None:
    returns = sp500_small_returns.copy()
    returns.iloc[:, 2] = constant
    if with_gaps:
        returns.iloc[:10, 0] = np.nan
    assert returns.iloc[:, 2].nunique() == 1  # constant: no variance at all
    with pytest.raises(InvalidInputError) as caught:
        estimate_moments(return_history(returns), EstimationSettings())
    assert [v.field for v in caught.value.field_violations] == ["returns[:, 2]"]


def test_returns_too_large_for_a_covariance_are_named_as_such(sp500_small_returns: pd.DataFrame) -> None:
    """Returns of 1e155 (their squares overflow float64) are refused as too large, not as zero variance."""
    returns = sp500_small_returns.copy()
    returns.iloc[::2, 1] = 1e155
    with pytest.raises(InvalidInputError) as caught:
        estimate_moments(return_history(returns), EstimationSettings())
    assert [v.field for v in caught.value.field_violations] == ["returns[:, 1]"]
    assert "too large" in str(caught.value) and "zero variance" not in str(caught.value)


def test_returns_between_observations_keep_the_move_across_a_missing_quote(stock_prices: pd.DataFrame) -> None:
    from services.estimation import returns_between_observations

    prices = stock_prices.iloc[:60].copy()
    prices.iloc[30, 1] = np.nan  # a missing quote inside a series
    prices.iloc[40:43, 3] = np.nan  # three missing quotes
    ours = returns_between_observations(prices.to_numpy())
    for j, column in enumerate(prices.columns):
        expected = prices[column].dropna().pct_change().reindex(prices.index).iloc[1:].to_numpy()
        np.testing.assert_allclose(ours[:, j], expected, rtol=1e-14, atol=0.0, equal_nan=True)
    # The move over the gap is booked on the next observed date, not lost.
    gap_return = prices.iloc[31, 1] / prices.iloc[29, 1] - 1.0
    assert ours[30, 1] == pytest.approx(gap_return, rel=1e-14)
