"""Signals for the rotation: raw model scores to risk-scaled z-scores, and the risk inputs beside them.

A score per symbol (one or several horizons) is divided by the symbol's volatility σ (EWMA of squared returns,
RiskMetrics; or the average true range of the price, Wilder), combined across horizons, standardised across the
cross-section and winsorised. The correlation the QP rotation uses is the sample correlation shrunk towards a
target (Ledoit-Wolf's scaled identity, or the constant-correlation target of Ledoit and Wolf 2004, both from
PyPortfolioOpt's ``CovarianceShrinkage``); betas against a market series come from
``services.estimation.estimate_betas``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pypfopt import risk_models

from services.errors import InvalidInputError
from services.types import FloatArray


class VolatilityModel(enum.StrEnum):
    """How σ, the divisor of a raw score, is estimated from stored prices."""

    EWMA = "EWMA"
    """Exponentially weighted root mean square of the returns (zero mean, RiskMetrics), a return (decimal)."""
    ATR = "ATR"
    """Average true range of the price (Wilder's smoothing), relative to the last price (decimal)."""


class CorrelationTarget(enum.StrEnum):
    """The target the sample correlation is shrunk towards."""

    LEDOIT_WOLF = "LEDOIT_WOLF"
    """Scaled identity (Ledoit and Wolf, 2004, "A well-conditioned estimator ..."; scikit-learn's)."""
    CONSTANT_CORRELATION = "CONSTANT_CORRELATION"
    """Every pair at the average correlation (Ledoit and Wolf, 2004, "Honey, I shrunk the sample covariance")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalSettings:
    """How raw scores become z-scores.

    Attributes
    ----------
    volatility : VolatilityModel
        σ from EWMA returns (default) or the average true range.
    ewma_span : int
        Span of the EWMA in periods (32: decay λ = 1 − 2/(span + 1) ≈ 0.94, RiskMetrics' daily value).
    atr_periods : int
        Periods of Wilder's average true range (14).
    winsor_limit : float
        The standardised scores are clipped to ±this many cross-sectional standard deviations (3.0).
    horizon_weights : tuple of float, optional
        Weights of the horizons when scores come per horizon (default equal).
    """

    volatility: VolatilityModel = VolatilityModel.EWMA
    ewma_span: int = 32
    atr_periods: int = 14
    winsor_limit: float = 3.0
    horizon_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.ewma_span < 1 or self.atr_periods < 1:
            raise InvalidInputError.for_field("ewma_span", "ewma_span and atr_periods must be ≥ 1")
        if not 0 < self.winsor_limit < math.inf:
            raise InvalidInputError.for_field("winsor_limit", f"must be finite and > 0, got {self.winsor_limit}")


def ewma_volatility(returns: FloatArray, span: int) -> FloatArray:
    """EWMA volatility per column: ``sqrt`` of the exponentially weighted mean of squared returns (zero mean).

    The RiskMetrics estimator (J.P. Morgan, 1996): ``σ²_t = λ σ²_{t-1} + (1 − λ) r²_t`` with
    ``λ = 1 − 2 / (span + 1)``, started at the first squared return (pandas ``ewm(span, adjust=False)``).

    Parameters
    ----------
    returns : ndarray, shape (T, N)
        Periodic simple returns (decimals); NaN periods are skipped.
    span : int
        Span in periods.

    Returns
    -------
    ndarray, shape (N,)
        σ per period (decimal), at the last period.

    Raises
    ------
    InvalidInputError
        ``returns`` is not 2-D or a column has no observation.
    """
    if returns.ndim != 2 or returns.shape[0] == 0:
        raise InvalidInputError.for_field("returns", f"needs shape (T, N) with T ≥ 1, got {returns.shape}")
    variance = pd.DataFrame(returns**2).ewm(span=span, adjust=False, ignore_na=True).mean().ffill().iloc[-1]
    sigma: FloatArray = np.sqrt(variance.to_numpy(dtype=np.float64))
    if np.isnan(sigma).any():
        raise InvalidInputError.for_field(f"returns[:, {int(np.flatnonzero(np.isnan(sigma))[0])}]", "has no data")
    return sigma


def average_true_range(prices: FloatArray, periods: int) -> FloatArray:
    """Wilder's average true range per column from closing prices, in price units.

    With closes only (what ``market_data`` stores), the true range of a period is ``abs(close_t − close_{t-1})``;
    Wilder's smoothing is an exponential average with ``α = 1 / periods`` (pandas ``ewm(alpha, adjust=False)``;
    Wilder, 1978, "New Concepts in Technical Trading Systems").

    Parameters
    ----------
    prices : ndarray, shape (T, N)
        Closing prices (> 0), T ≥ 2; NaN periods are skipped.
    periods : int
        Smoothing periods (14 in Wilder's book).

    Returns
    -------
    ndarray, shape (N,)
        ATR at the last period, in the prices' units.

    Raises
    ------
    InvalidInputError
        Fewer than 2 prices, or a column without two observations.
    """
    if prices.ndim != 2 or prices.shape[0] < 2:
        raise InvalidInputError.for_field("prices", f"needs shape (T, N) with T ≥ 2, got {prices.shape}")
    frame = pd.DataFrame(prices)
    true_range = frame.apply(lambda column: column.dropna().diff().abs())
    atr = true_range.ewm(alpha=1.0 / periods, adjust=False, ignore_na=True).mean().ffill().iloc[-1]
    values: FloatArray = atr.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise InvalidInputError.for_field(f"prices[:, {int(np.flatnonzero(np.isnan(values))[0])}]", "needs 2 prices")
    return values


def signal_volatility(prices: FloatArray, settings: SignalSettings) -> FloatArray:
    """σ per symbol from closing prices, as ``settings.volatility`` says, as a decimal return per period.

    EWMA: :func:`ewma_volatility` of the simple returns. ATR: :func:`average_true_range` divided by the last
    price.

    Parameters
    ----------
    prices : ndarray, shape (T, N)
        Closing prices (> 0).
    settings : SignalSettings

    Returns
    -------
    ndarray, shape (N,)
        σ (decimal per period).
    """
    if settings.volatility is VolatilityModel.ATR:
        last = pd.DataFrame(prices).ffill().iloc[-1].to_numpy(dtype=np.float64)
        relative: FloatArray = average_true_range(prices, settings.atr_periods) / last
        return relative
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = pd.DataFrame(prices).pct_change(fill_method=None).iloc[1:].to_numpy(dtype=np.float64)
    return ewma_volatility(returns, settings.ewma_span)


def risk_scaled_z(scores: FloatArray, sigma: FloatArray, settings: SignalSettings | None = None) -> FloatArray:
    """Risk-scaled, cross-sectionally standardised and winsorised z-scores.

    ``x_i = Σ_h a_h s_{h,i} / σ_i`` (``a`` the normalised horizon weights), then ``z = (x − mean(x)) / std(x)``
    over the cross-section (population standard deviation), clipped to ``±winsor_limit``.

    Parameters
    ----------
    scores : ndarray, shape (N,) or (H, N)
        Raw model scores, one row per horizon.
    sigma : ndarray, shape (N,)
        Volatility of each symbol (> 0), in the units the scores are scaled by (e.g. :func:`signal_volatility`).
    settings : SignalSettings, optional

    Returns
    -------
    ndarray, shape (N,)
        z-scores (mean 0 and standard deviation 1 before the clipping).

    Raises
    ------
    InvalidInputError
        Non-finite scores, σ ≤ 0 or non-finite, mismatched shapes, fewer than 2 symbols, a cross-section whose
        scaled scores are all equal, or horizon weights that do not match the horizons.
    """
    s = settings or SignalSettings()
    matrix = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    sigma = np.asarray(sigma, dtype=np.float64)
    horizons, n = matrix.shape
    if sigma.shape != (n,):
        raise InvalidInputError.for_field("sigma", f"needs shape ({n},), got {sigma.shape}")
    if n < 2:
        raise InvalidInputError.for_field("scores", "a cross-section needs at least 2 symbols")
    if not np.all(np.isfinite(matrix)):
        raise InvalidInputError.for_field("scores", "must be finite")
    bad = np.flatnonzero(~np.isfinite(sigma) | (sigma <= 0))
    if bad.size:
        raise InvalidInputError.for_field(f"sigma[{int(bad[0])}]", f"must be finite and > 0, got {sigma[bad[0]]}")
    weights = np.ones(horizons) if s.horizon_weights is None else np.asarray(s.horizon_weights, dtype=np.float64)
    if weights.shape != (horizons,) or np.any(weights < 0) or not weights.sum() > 0:
        raise InvalidInputError.for_field("horizon_weights", f"need {horizons} weights ≥ 0 with a positive sum")
    scaled = (weights / weights.sum()) @ (matrix / sigma)
    spread = scaled.std()
    if not spread > 0:
        raise InvalidInputError.for_field("scores", "the risk-scaled scores are all equal: no cross-section to rank")
    return np.asarray(np.clip((scaled - scaled.mean()) / spread, -s.winsor_limit, s.winsor_limit), dtype=np.float64)


def shrunk_correlation(returns: FloatArray, target: CorrelationTarget = CorrelationTarget.LEDOIT_WOLF) -> FloatArray:
    """The sample correlation shrunk towards ``target`` (PyPortfolioOpt's ``CovarianceShrinkage.ledoit_wolf``).

    The shrunk covariance ``δ F + (1 − δ) S`` (δ the optimal intensity of Ledoit and Wolf) divided by the outer
    product of its own standard deviations.

    Parameters
    ----------
    returns : ndarray, shape (T, N)
        Periodic simple returns; rows with a NaN are dropped (the estimator needs complete rows).
    target : CorrelationTarget

    Returns
    -------
    ndarray, shape (N, N)
        Symmetric positive semidefinite correlation matrix with a unit diagonal.

    Raises
    ------
    InvalidInputError
        Fewer than 2 complete rows, or a column without variance.
    """
    frame = pd.DataFrame(returns).dropna()
    if len(frame) < 2:
        raise InvalidInputError.for_field("returns", f"needs at least 2 complete periods, got {len(frame)}")
    if np.any(frame.std().to_numpy() == 0):
        raise InvalidInputError.for_field("returns", "a column does not vary: no correlation")
    shrink_to = "constant_correlation" if target is CorrelationTarget.CONSTANT_CORRELATION else "constant_variance"
    covariance = risk_models.CovarianceShrinkage(frame, returns_data=True, frequency=1).ledoit_wolf(shrink_to)
    values = covariance.to_numpy(dtype=np.float64)
    sd = np.sqrt(np.diag(values))
    correlation = values / np.outer(sd, sd)
    np.fill_diagonal(correlation, 1.0)
    return np.asarray((correlation + correlation.T) / 2.0, dtype=np.float64)
