"""Shared vocabulary of the engine: return histories, moments and how they are estimated (frozen dataclasses).

The portfolio problem and its result live in ``services.optimization``.

Conventions: weights are fractions summing to 1; expected returns, volatilities and the risk-free rate are
annualised decimals; periodic returns are simple returns per observation period; N is the number of
strategies and T the number of return observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class ReturnsEstimator(StrEnum):
    """Expected-returns estimator."""

    MEAN_HISTORICAL = "MEAN_HISTORICAL"
    EMA = "EMA"
    CAPM = "CAPM"


class CovarianceEstimator(StrEnum):
    """Covariance estimator."""

    SAMPLE = "SAMPLE"
    LEDOIT_WOLF = "LEDOIT_WOLF"
    EXPONENTIAL = "EXPONENTIAL"


class MissingDataPolicy(StrEnum):
    """Treatment of missing observations in a return history."""

    PAIRWISE = "PAIRWISE"
    """Each mean uses every observation of its strategy, each covariance entry the periods both share."""
    COMMON_WINDOW = "COMMON_WINDOW"
    """Only periods in which every strategy has an observation are used."""


@dataclass(frozen=True, slots=True)
class ReturnHistory:
    """Periodic simple returns of N strategies over T periods.

    Attributes
    ----------
    returns : ndarray of shape (T, N)
        Simple returns per period (0.01 = 1 %); NaN marks a missing observation.
    timestamps : ndarray of shape (T,), dtype datetime64[us]
        End of each period, strictly increasing.
    market_returns : ndarray of shape (T,) or None
        Returns of a market proxy on the same periods (CAPM); NaN allowed.
    """

    returns: FloatArray
    timestamps: NDArray[np.datetime64]
    market_returns: FloatArray | None = None


@dataclass(frozen=True, slots=True)
class Moments:
    """Annualised first and second moments of N strategies.

    Attributes
    ----------
    expected_returns : ndarray of shape (N,)
        Annualised expected returns (decimal).
    covariance : ndarray of shape (N, N)
        Annualised covariance, symmetric positive semidefinite.
    """

    expected_returns: FloatArray
    covariance: FloatArray


@dataclass(frozen=True, slots=True, kw_only=True)
class EstimationSettings:
    """How moments are estimated from a return history."""

    returns_estimator: ReturnsEstimator = ReturnsEstimator.MEAN_HISTORICAL
    covariance_estimator: CovarianceEstimator = CovarianceEstimator.SAMPLE
    periods_per_year: int = 252
    """Observation periods per year used to annualise."""
    ema_span: int = 500
    """Span in periods of the exponentially weighted estimators (PyPortfolioOpt's default)."""
    compounding: bool = True
    """Geometric (compounded) annualised mean when true, arithmetic mean times periods_per_year when false."""
    missing_data_policy: MissingDataPolicy = MissingDataPolicy.PAIRWISE
    risk_free_rate: float = 0.0
    """Annualised risk-free rate (decimal), used by CAPM."""


@dataclass(frozen=True, slots=True)
class EstimatedMoments:
    """Moments with a record of how they were estimated."""

    moments: Moments
    observations: int
    """Return periods that entered the estimation (rows with at least one observation)."""
    missing_data_policy: str
    """Policy applied, e.g. ``PAIRWISE``, ``COMMON_WINDOW``, or ``NONE`` for caller-given moments."""
    window_start: np.datetime64 | None = None
    window_end: np.datetime64 | None = None
