"""Black-Litterman posterior against an independent NumPy closed form, skfolio, and published properties.

Truth: the information form μ_bl = [(τΣ)⁻¹ + PᵀΩ⁻¹P]⁻¹[(τΣ)⁻¹π + PᵀΩ⁻¹Q], Σ_bl = Σ + [(τΣ)⁻¹ + PᵀΩ⁻¹P]⁻¹
(Black and Litterman, 1992; He and Litterman, 1999) evaluated here with explicit inverses (the engine goes through
PyPortfolioOpt's Woodbury form); π = δΣw_mkt + r_f and δ = (E[r_m] − r_f)/σ_m² computed here from the data;
Idzorek's (2005) tilt property of a single view; He and Litterman's w* = w_mkt/(1 + τ) without views; and
skfolio's ``BlackLitterman`` (views as strings) on the same covariance, prior and views.

Data: the last 756 daily returns of the 20 stocks of ``sp500_dataset.csv.gz`` and of the S&P 500 index
(``sp500_index.csv.gz``). The market capitalisations are rounded end-2022 figures in $bn, for illustration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import grpc
import numpy as np
import pandas as pd
import pytest
from skfolio.moments import EquilibriumMu
from skfolio.prior import BlackLitterman, EmpiricalPrior

from services.errors import InvalidInputError
from services.estimation import (
    DEFAULT_RISK_AVERSION,
    BlackLittermanPosterior,
    BlackLittermanSpec,
    OmegaMethod,
    black_litterman_posterior,
    implied_risk_aversion,
    market_prior_returns,
    validate_moments,
)
from stratopt.rpc_errors import status_code
from tests.services.market_data import DATA_DIR

DAYS = 756
PERIODS_PER_YEAR = 252
TAU = 0.05
RISK_FREE_RATE = 0.02
CLOSED_FORM_ATOL = 1e-10

MARKET_CAPS_BN = {
    "AAPL": 2066.0,
    "AMD": 104.0,
    "BAC": 265.0,
    "BBY": 18.0,
    "CVX": 347.0,
    "GE": 73.0,
    "HD": 322.0,
    "JNJ": 462.0,
    "JPM": 393.0,
    "KO": 275.0,
    "LLY": 347.0,
    "MRK": 281.0,
    "MSFT": 1787.0,
    "PEP": 249.0,
    "PFE": 288.0,
    "PG": 357.0,
    "RRC": 6.0,
    "UNH": 495.0,
    "WMT": 382.0,
    "XOM": 454.0,
}

# (weights by ticker, annualised expected return): one absolute view, two relative, one on a basket.
VIEWS = (
    ({"AAPL": 1.0}, 0.10),
    ({"JPM": 1.0, "BAC": -1.0}, 0.02),
    ({"XOM": 1.0, "CVX": -1.0}, -0.01),
    ({"KO": 0.5, "PEP": 0.5, "PG": -1.0}, 0.015),
)


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daily_returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    """Last 756 daily simple returns of the 20 stocks."""
    return sp500_prices.pct_change().iloc[-DAYS:]


@pytest.fixture(scope="module")
def index_prices(daily_returns: pd.DataFrame) -> pd.Series:
    """S&P 500 index prices over the same window (757 prices for 756 returns)."""
    index = pd.read_csv(DATA_DIR / "sp500_index.csv.gz", parse_dates=["Date"], index_col="Date")["SP500"]
    window = index.loc[: daily_returns.index[-1]].iloc[-(DAYS + 1) :]
    assert window.index[1:].equals(daily_returns.index)
    return window


@pytest.fixture(scope="module")
def tickers(daily_returns: pd.DataFrame) -> list[str]:
    return list(daily_returns.columns)


@pytest.fixture(scope="module")
def covariance(daily_returns: pd.DataFrame) -> np.ndarray:
    """Annualised sample covariance (ddof = 1)."""
    return np.cov(daily_returns.to_numpy(), rowvar=False) * PERIODS_PER_YEAR


@pytest.fixture(scope="module")
def market_caps(tickers: list[str]) -> np.ndarray:
    return np.array([MARKET_CAPS_BN[t] for t in tickers])


@pytest.fixture(scope="module")
def views(tickers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """P (4, 20) and Q (4,) of ``VIEWS``."""
    picking = np.zeros((len(VIEWS), len(tickers)))
    for k, (weights, _) in enumerate(VIEWS):
        for ticker, weight in weights.items():
            picking[k, tickers.index(ticker)] = weight
    return picking, np.array([q for _, q in VIEWS])


@pytest.fixture(scope="module")
def spec(covariance: np.ndarray, market_caps: np.ndarray, views: tuple[np.ndarray, np.ndarray]) -> BlackLittermanSpec:
    """Market-caps prior, δ = 2.5, r_f = 2 %, He-Litterman Ω."""
    picking, view_returns = views
    return BlackLittermanSpec(
        covariance=covariance,
        picking_matrix=picking,
        view_returns=view_returns,
        market_caps=market_caps,
        risk_aversion=2.5,
        risk_free_rate=RISK_FREE_RATE,
        tau=TAU,
    )


def closed_form(
    covariance: np.ndarray,
    prior: np.ndarray,
    picking: np.ndarray,
    view_returns: np.ndarray,
    omega: np.ndarray,
    tau: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Information form of the posterior with explicit inverses (needs Ω invertible)."""
    prior_precision = np.linalg.inv(tau * covariance)
    omega_inverse = np.linalg.inv(omega)
    mean_uncertainty = np.linalg.inv(prior_precision + picking.T @ omega_inverse @ picking)
    posterior = mean_uncertainty @ (prior_precision @ prior + picking.T @ omega_inverse @ view_returns)
    return posterior, covariance + mean_uncertainty


def implied_prior(market_caps: np.ndarray, risk_aversion: float, covariance: np.ndarray, rf: float) -> np.ndarray:
    return np.asarray(risk_aversion * covariance @ (market_caps / market_caps.sum()) + rf)


def assert_matches_closed_form(posterior: BlackLittermanPosterior, spec: BlackLittermanSpec) -> None:
    expected_mean, expected_covariance = closed_form(
        spec.covariance, posterior.prior_returns, spec.picking_matrix, spec.view_returns, posterior.omega, spec.tau
    )
    np.testing.assert_allclose(posterior.posterior_returns, expected_mean, rtol=0.0, atol=CLOSED_FORM_ATOL)
    np.testing.assert_allclose(posterior.posterior_covariance, expected_covariance, rtol=0.0, atol=CLOSED_FORM_ATOL)


# --- the posterior against the closed form --------------------------------------------------------------------


def test_he_litterman_posterior_matches_closed_form(spec: BlackLittermanSpec, market_caps: np.ndarray) -> None:
    posterior = black_litterman_posterior(spec)

    P, Sigma = spec.picking_matrix, spec.covariance
    np.testing.assert_allclose(posterior.omega, np.diag(np.diag(TAU * P @ Sigma @ P.T)), rtol=1e-14, atol=0.0)
    assert posterior.omega_method is OmegaMethod.HE_LITTERMAN
    np.testing.assert_allclose(
        posterior.prior_returns, implied_prior(market_caps, 2.5, Sigma, RISK_FREE_RATE), rtol=1e-13, atol=0.0
    )
    assert_matches_closed_form(posterior, spec)
    assert posterior.risk_aversion == 2.5
    assert posterior.tau == TAU
    np.testing.assert_array_equal(posterior.posterior_covariance, posterior.posterior_covariance.T)
    validate_moments(posterior.moments, len(spec.covariance))
    # The views pull the posterior of each view portfolio from the prior towards Q.
    prior_views, posterior_views = P @ posterior.prior_returns, P @ posterior.posterior_returns
    assert np.all(np.abs(posterior_views - spec.view_returns) < np.abs(prior_views - spec.view_returns))


def test_full_omega_matches_closed_form(spec: BlackLittermanSpec) -> None:
    """A correlated Ω: PyPortfolioOpt's ``bl_cov`` says it assumes Ω diagonal, but its Woodbury form is exact."""
    rng = np.random.default_rng(7)
    factor = rng.normal(scale=0.05, size=(4, 4))
    omega = factor @ factor.T + np.diag([0.001, 0.002, 0.001, 0.003])
    posterior = black_litterman_posterior(replace(spec, omega=omega))

    assert posterior.omega_method is OmegaMethod.GIVEN
    np.testing.assert_allclose(posterior.omega, omega, rtol=0.0, atol=1e-18)
    assert_matches_closed_form(posterior, replace(spec, omega=omega))


def test_given_prior_returns_match_closed_form(spec: BlackLittermanSpec, daily_returns: pd.DataFrame) -> None:
    prior = daily_returns.mean().to_numpy() * PERIODS_PER_YEAR
    given = replace(spec, market_caps=None, prior_returns=prior)
    posterior = black_litterman_posterior(given)

    np.testing.assert_array_equal(posterior.prior_returns, prior)
    assert_matches_closed_form(posterior, given)


def test_idzorek_posterior_matches_closed_form(spec: BlackLittermanSpec) -> None:
    confidences = np.array([0.3, 0.6, 0.9, 0.5])
    posterior = black_litterman_posterior(replace(spec, view_confidences=confidences))

    P, Sigma = spec.picking_matrix, spec.covariance
    # Walters' closed form of Idzorek's method: ω_k = τ (1 − c_k)/c_k p_k Σ p_kᵀ.
    expected_omega = np.diag(TAU * (1 - confidences) / confidences * np.einsum("kn,nm,km->k", P, Sigma, P))
    np.testing.assert_allclose(posterior.omega, expected_omega, rtol=1e-13, atol=0.0)
    assert posterior.omega_method is OmegaMethod.IDZOREK
    assert_matches_closed_form(posterior, spec)


@pytest.mark.parametrize("confidence", [0.1, 0.5, 0.9])
def test_idzorek_single_view_tilts_by_its_confidence(
    spec: BlackLittermanSpec, confidence: float, market_caps: np.ndarray
) -> None:
    """Idzorek's definition: the unconstrained weights (δΣ)⁻¹μ_bl move c of the way to those of a 100 % view."""
    single = replace(spec, picking_matrix=spec.picking_matrix[1:2], view_returns=spec.view_returns[1:2])
    partial = black_litterman_posterior(replace(single, view_confidences=np.array([confidence])))
    certain = black_litterman_posterior(replace(single, view_confidences=np.array([1.0])))

    def weights(mu: np.ndarray) -> np.ndarray:
        return np.linalg.solve(2.5 * spec.covariance, mu)

    market_weights = weights(partial.prior_returns - RISK_FREE_RATE)
    np.testing.assert_allclose(market_weights, market_caps / market_caps.sum(), rtol=0.0, atol=1e-10)
    tilt = weights(partial.posterior_returns) - weights(partial.prior_returns)
    full_tilt = weights(certain.posterior_returns) - weights(certain.prior_returns)
    np.testing.assert_allclose(tilt, confidence * full_tilt, rtol=0.0, atol=1e-9)
    view_prior = single.picking_matrix @ partial.prior_returns
    np.testing.assert_allclose(
        single.picking_matrix @ partial.posterior_returns,
        view_prior + confidence * (single.view_returns - view_prior),
        rtol=0.0,
        atol=1e-12,
    )


def test_certain_absolute_view_is_met(spec: BlackLittermanSpec, tickers: list[str]) -> None:
    """100 % confidence gives ω = 0: the view holds exactly, while the less certain views only pull."""
    confidences = np.array([1.0, 0.5, 0.5, 0.5])
    posterior = black_litterman_posterior(replace(spec, view_confidences=confidences))

    assert posterior.omega[0, 0] == 0.0
    assert posterior.posterior_returns[tickers.index("AAPL")] == pytest.approx(0.10, abs=1e-6)
    assert abs(posterior.posterior_returns[tickers.index("AAPL")] - 0.10) < 1e-13
    relative = spec.picking_matrix[1:] @ posterior.posterior_returns
    assert np.all(np.abs(relative - spec.view_returns[1:]) > 1e-4)


def test_zero_confidence_leaves_the_prior(spec: BlackLittermanSpec) -> None:
    """PyPortfolioOpt sets ω = 10⁶ (not ∞) for a confidence of 0: the prior moves by ~1e-9."""
    posterior = black_litterman_posterior(replace(spec, view_confidences=np.zeros(4)))

    np.testing.assert_array_equal(np.diag(posterior.omega), np.full(4, 1e6))
    np.testing.assert_allclose(posterior.posterior_returns, posterior.prior_returns, rtol=0.0, atol=1e-8)
    np.testing.assert_allclose(posterior.posterior_covariance, (1 + TAU) * spec.covariance, rtol=0.0, atol=1e-8)


def test_no_views_keeps_the_prior(spec: BlackLittermanSpec, covariance: np.ndarray, market_caps: np.ndarray) -> None:
    n = len(covariance)
    posterior = black_litterman_posterior(replace(spec, picking_matrix=np.zeros((0, n)), view_returns=np.zeros(0)))

    np.testing.assert_array_equal(posterior.posterior_returns, posterior.prior_returns)
    np.testing.assert_allclose(posterior.posterior_covariance, (1 + TAU) * covariance, rtol=1e-14, atol=0.0)
    assert posterior.omega.shape == (0, 0)
    # He and Litterman (1999): without views the unconstrained optimum is the market portfolio scaled by 1/(1 + τ).
    weights = np.linalg.solve(2.5 * posterior.posterior_covariance, posterior.posterior_returns - RISK_FREE_RATE)
    np.testing.assert_allclose(weights, market_caps / market_caps.sum() / (1 + TAU), rtol=0.0, atol=1e-10)


def test_duplicate_views_with_finite_uncertainty_are_allowed(spec: BlackLittermanSpec) -> None:
    """A repeated view with He-Litterman Ω counts twice: the same as one view with half the uncertainty."""
    twice = replace(spec, picking_matrix=np.repeat(spec.picking_matrix[:1], 2, axis=0), view_returns=np.full(2, 0.10))
    once = replace(spec, picking_matrix=spec.picking_matrix[:1], view_returns=np.array([0.10]))
    halved_omega = black_litterman_posterior(once).omega / 2
    np.testing.assert_allclose(
        black_litterman_posterior(twice).posterior_returns,
        black_litterman_posterior(replace(once, omega=halved_omega)).posterior_returns,
        rtol=0.0,
        atol=1e-14,
    )


# --- prior and risk aversion ----------------------------------------------------------------------------------


def test_market_prior_returns(covariance: np.ndarray, market_caps: np.ndarray) -> None:
    prior = market_prior_returns(market_caps, 3.0, covariance, 0.01)
    expected = np.array(
        [3.0 * sum(covariance[i, j] * market_caps[j] for j in range(20)) / market_caps.sum() + 0.01 for i in range(20)]
    )
    np.testing.assert_allclose(prior, expected, rtol=1e-13, atol=0.0)


def test_implied_risk_aversion_from_the_index(index_prices: pd.Series) -> None:
    prices = index_prices.to_numpy()
    returns = prices[1:] / prices[:-1] - 1
    assert returns.size == DAYS
    expected = (returns.mean() * PERIODS_PER_YEAR - RISK_FREE_RATE) / (returns.var(ddof=1) * PERIODS_PER_YEAR)

    from_returns = implied_risk_aversion(market_returns=returns, risk_free_rate=RISK_FREE_RATE)
    from_prices = implied_risk_aversion(market_prices=prices, risk_free_rate=RISK_FREE_RATE)

    assert expected > 0
    assert from_returns == pytest.approx(expected, rel=1e-10)
    assert from_prices == pytest.approx(expected, rel=1e-12)
    weekly = returns[: 5 * (DAYS // 5)].reshape(-1, 5).sum(axis=1)  # any period length: only the annualisation changes
    expected_weekly = (weekly.mean() * 52 - RISK_FREE_RATE) / (weekly.var(ddof=1) * 52)
    assert implied_risk_aversion(
        market_returns=weekly, periods_per_year=52, risk_free_rate=RISK_FREE_RATE
    ) == pytest.approx(expected_weekly, rel=1e-10)


def test_posterior_uses_the_implied_risk_aversion(
    spec: BlackLittermanSpec, index_prices: pd.Series, market_caps: np.ndarray
) -> None:
    returns = index_prices.pct_change().dropna().to_numpy(dtype=np.float64)
    implied = replace(spec, risk_aversion=None, market_returns=returns)
    posterior = black_litterman_posterior(implied)

    delta = implied_risk_aversion(market_returns=returns, risk_free_rate=RISK_FREE_RATE)
    assert posterior.risk_aversion == delta
    np.testing.assert_allclose(
        posterior.prior_returns,
        implied_prior(market_caps, delta, spec.covariance, RISK_FREE_RATE),
        rtol=1e-13,
        atol=0.0,
    )
    assert_matches_closed_form(posterior, implied)
    # A given δ wins over the market series; without either δ defaults to 1.
    assert black_litterman_posterior(replace(implied, risk_aversion=4.0)).risk_aversion == 4.0
    assert black_litterman_posterior(replace(spec, risk_aversion=None)).risk_aversion == DEFAULT_RISK_AVERSION


# --- skfolio ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("confidences", [None, [0.4, 0.8]])
def test_matches_skfolio(daily_returns: pd.DataFrame, market_caps: np.ndarray, confidences: list[float] | None) -> None:
    """Ours on annualised inputs is 252 × skfolio's ``BlackLitterman`` on the daily ones.

    skfolio works in the units of its returns (daily here) and adds r_f after the update, so its views are excess
    returns where ours are total returns: its absolute view is lowered by r_f (relative views are unchanged).
    BL is linear in the scale of (Σ, π, Q, Ω), and skfolio's He-Litterman and Idzorek Ω are PyPortfolioOpt's.
    """
    delta, daily_rf = 2.5, RISK_FREE_RATE / PERIODS_PER_YEAR
    weights = market_caps / market_caps.sum()
    sk_views = [f"AAPL == {0.10 / PERIODS_PER_YEAR - daily_rf!r}", f"JPM - BAC == {0.02 / PERIODS_PER_YEAR!r}"]
    model = BlackLitterman(
        views=sk_views,
        prior_estimator=EmpiricalPrior(mu_estimator=EquilibriumMu(risk_aversion=delta, weights=weights)),
        tau=TAU,
        view_confidences=None if confidences is None else np.array(confidences),
        risk_free_rate=daily_rf,
    ).fit(daily_returns)
    sk_covariance = model.prior_estimator_.return_distribution_.covariance
    tickers = list(daily_returns.columns)
    picking = np.zeros((2, len(tickers)))
    picking[0, tickers.index("AAPL")] = 1.0
    picking[1, tickers.index("JPM")], picking[1, tickers.index("BAC")] = 1.0, -1.0
    np.testing.assert_array_equal(model.picking_matrix_, picking)

    posterior = black_litterman_posterior(
        BlackLittermanSpec(
            covariance=sk_covariance * PERIODS_PER_YEAR,
            picking_matrix=picking,
            view_returns=np.array([0.10, 0.02]),
            market_caps=market_caps,
            risk_aversion=delta,
            risk_free_rate=RISK_FREE_RATE,
            view_confidences=None if confidences is None else np.array(confidences),
            tau=TAU,
        )
    )

    np.testing.assert_allclose(
        posterior.prior_returns,
        (model.prior_estimator_.return_distribution_.mu + daily_rf) * PERIODS_PER_YEAR,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        posterior.posterior_returns, model.return_distribution_.mu * PERIODS_PER_YEAR, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        posterior.posterior_covariance,
        model.return_distribution_.covariance * PERIODS_PER_YEAR,
        rtol=1e-10,
        atol=1e-14,
    )


# --- validation ------------------------------------------------------------------------------------------------


def _with_view_row(spec: BlackLittermanSpec, k: int, row: np.ndarray) -> BlackLittermanSpec:
    picking = spec.picking_matrix.copy()
    picking[k] = row
    return replace(spec, picking_matrix=picking)


def _with_value(values: np.ndarray, index: int, value: float) -> np.ndarray:
    changed = np.array(values, dtype=np.float64)
    changed[index] = value
    return changed


INVALID = {
    "zero view": (lambda s: _with_view_row(s, 2, np.zeros(20)), "black_litterman.picking_matrix[2]"),
    "nan view weight": (
        lambda s: _with_view_row(s, 1, _with_value(s.picking_matrix[1], 5, np.nan)),
        "black_litterman.picking_matrix[1]",
    ),
    "nan view return": (
        lambda s: replace(s, view_returns=_with_value(s.view_returns, 3, np.nan)),
        "black_litterman.view_returns[3]",
    ),
    "view columns": (lambda s: replace(s, picking_matrix=s.picking_matrix[:, :19]), "black_litterman.picking_matrix"),
    "view count": (lambda s: replace(s, view_returns=s.view_returns[:3]), "black_litterman.view_returns"),
    "confidence above 1": (
        lambda s: replace(s, view_confidences=np.array([0.5, 1.2, 0.5, 0.5])),
        "black_litterman.view_confidences[1]",
    ),
    "negative confidence": (
        lambda s: replace(s, view_confidences=np.array([0.5, 0.5, 0.5, -0.1])),
        "black_litterman.view_confidences[3]",
    ),
    "nan confidence": (
        lambda s: replace(s, view_confidences=np.array([np.nan, 0.5, 0.5, 0.5])),
        "black_litterman.view_confidences[0]",
    ),
    "confidence count": (lambda s: replace(s, view_confidences=np.full(3, 0.5)), "black_litterman.view_confidences"),
    "omega shape": (lambda s: replace(s, omega=np.eye(3) * 0.01), "black_litterman.omega"),
    "omega asymmetric": (
        lambda s: replace(s, omega=np.eye(4) * 0.01 + np.triu(np.ones((4, 4)), 1) * 1e-3),
        "black_litterman.omega",
    ),
    "omega not psd": (lambda s: replace(s, omega=np.diag([0.01, -0.01, 0.01, 0.01])), "black_litterman.omega"),
    "omega nan": (lambda s: replace(s, omega=np.full((4, 4), np.nan)), "black_litterman.omega"),
    "omega and confidences": (
        lambda s: replace(s, omega=np.eye(4) * 0.01, view_confidences=np.full(4, 0.5)),
        "black_litterman.omega",
    ),
    "negative cap": (
        lambda s: replace(s, market_caps=_with_value(s.market_caps, 4, -1.0)),
        "black_litterman.market_caps[4]",
    ),
    "nan cap": (
        lambda s: replace(s, market_caps=_with_value(s.market_caps, 7, np.nan)),
        "black_litterman.market_caps[7]",
    ),
    "zero caps": (lambda s: replace(s, market_caps=np.zeros(20)), "black_litterman.market_caps"),
    "cap count": (lambda s: replace(s, market_caps=s.market_caps[:19]), "black_litterman.market_caps"),
    "no prior": (lambda s: replace(s, market_caps=None), "black_litterman.market_caps"),
    "two priors": (lambda s: replace(s, prior_returns=np.zeros(20)), "black_litterman.market_caps"),
    "prior count": (
        lambda s: replace(s, market_caps=None, prior_returns=np.zeros(19)),
        "black_litterman.prior_returns",
    ),
    "nan prior": (
        lambda s: replace(s, market_caps=None, prior_returns=_with_value(np.zeros(20), 2, np.inf)),
        "black_litterman.prior_returns[2]",
    ),
    "zero tau": (lambda s: replace(s, tau=0.0), "black_litterman.tau"),
    "negative tau": (lambda s: replace(s, tau=-0.05), "black_litterman.tau"),
    "tau above 1": (lambda s: replace(s, tau=1.5), "black_litterman.tau"),
    "zero risk aversion": (lambda s: replace(s, risk_aversion=0.0), "black_litterman.risk_aversion"),
    "negative risk aversion": (lambda s: replace(s, risk_aversion=-2.0), "black_litterman.risk_aversion"),
    "nan market return": (
        lambda s: replace(s, risk_aversion=None, market_returns=np.array([0.01, np.nan, 0.02])),
        "market_returns[1]",
    ),
    "ruinous market return": (
        lambda s: replace(s, risk_aversion=None, market_returns=np.array([0.01, -1.0, 0.02])),
        "market_returns[1]",
    ),
    "falling market": (
        lambda s: replace(s, risk_aversion=None, market_returns=np.array([-0.01, 0.005, -0.02])),
        "market_returns",
    ),
    "flat market": (
        lambda s: replace(s, risk_aversion=None, market_returns=np.full(5, 0.001)),
        "market_returns",
    ),
    "one market return": (
        lambda s: replace(s, risk_aversion=None, market_returns=np.array([0.01])),
        "market_returns",
    ),
    "zero market price": (
        lambda s: replace(s, risk_aversion=None, market_prices=np.array([100.0, 0.0, 101.0])),
        "market_prices[1]",
    ),
    "returns and prices": (
        lambda s: replace(s, risk_aversion=None, market_returns=np.full(3, 0.01), market_prices=np.ones(4)),
        "market_prices",
    ),
    "covariance shape": (lambda s: replace(s, covariance=s.covariance[:19]), "covariance"),
    "certain duplicate views": (
        lambda s: replace(
            s,
            picking_matrix=np.repeat(s.picking_matrix[:1], 2, axis=0),
            view_returns=np.array([0.10, 0.12]),
            view_confidences=np.ones(2),
        ),
        "black_litterman.view_confidences",
    ),
    "certain dependent views": (
        lambda s: replace(
            s,
            picking_matrix=np.vstack([s.picking_matrix[1:3], s.picking_matrix[1:2] + s.picking_matrix[2:3]]),
            view_returns=np.array([0.02, -0.01, 0.01]),
            omega=np.zeros((3, 3)),
        ),
        "black_litterman.omega",
    ),
}


@pytest.mark.parametrize(("mutate", "field"), INVALID.values(), ids=INVALID.keys())
def test_invalid_inputs_name_the_field(
    spec: BlackLittermanSpec, mutate: Callable[[BlackLittermanSpec], BlackLittermanSpec], field: str
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        black_litterman_posterior(mutate(spec))
    assert [v.field for v in raised.value.field_violations] == [field]
    assert status_code(raised.value) is grpc.StatusCode.INVALID_ARGUMENT


def test_uncertain_views_may_be_dependent(spec: BlackLittermanSpec) -> None:
    """The singularity check refuses only dependent views held with certainty: a PD Ω makes A invertible."""
    dependent = np.vstack([spec.picking_matrix[1:3], spec.picking_matrix[1:2] + spec.picking_matrix[2:3]])
    given = replace(spec, picking_matrix=dependent, view_returns=np.array([0.02, -0.01, 0.01]))
    assert_matches_closed_form(black_litterman_posterior(given), given)
