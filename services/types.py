"""Domain types of the quant engine: plain frozen dataclasses over NumPy arrays.

Conventions: weights are fractions summing to 1; expected returns, volatilities and the risk-free rate are
annualised decimals; periodic returns are simple returns per observation period; N is the number of
strategies and T the number of return observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class Objective(StrEnum):
    """What the optimizer maximises or minimises."""

    MAX_SHARPE = "MAX_SHARPE"
    MIN_VOLATILITY = "MIN_VOLATILITY"
    MAX_RETURN = "MAX_RETURN"
    MAX_QUADRATIC_UTILITY = "MAX_QUADRATIC_UTILITY"


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


@dataclass(frozen=True, slots=True)
class SectorLimit:
    """Bounds on the summed weight of the strategies of one sector."""

    sector: str
    min_weight: float | None = None
    max_weight: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioProblem:
    """A mean-variance problem: objective, bounds and linear/risk constraints over N strategies.

    Attributes
    ----------
    strategy_ids : tuple of str, length N
        Unique strategy identifiers, in the order of every array.
    objective : Objective
        What to optimize.
    lower_bounds, upper_bounds : ndarray of shape (N,)
        Per-strategy weight bounds (fractions).
    sectors : tuple of str, length N
        Sector of each strategy ("" = none).
    sector_limits : tuple of SectorLimit
        Sector bounds.
    min_return : float or None
        Minimum annualised expected return (efficient return).
    max_volatility : float or None
        Maximum annualised volatility (efficient risk).
    risk_free_rate : float
        Annualised risk-free rate (decimal).
    risk_aversion : float
        Risk aversion delta of the quadratic utility.
    """

    strategy_ids: tuple[str, ...]
    objective: Objective
    lower_bounds: FloatArray
    upper_bounds: FloatArray
    sectors: tuple[str, ...] = ()
    sector_limits: tuple[SectorLimit, ...] = ()
    min_return: float | None = None
    max_volatility: float | None = None
    risk_free_rate: float = 0.0
    risk_aversion: float = 1.0
    current_weights: FloatArray | None = None
    """Current weights w₀ (N,), the reference of turnover and transaction costs; None = all zero."""
    turnover_limit: float | None = None
    """Two-way turnover cap: Σ|w − w₀| ≤ limit (fractions of portfolio value)."""
    turnover_caps: FloatArray | None = None
    """Per-strategy caps (N,) on |w_i − w₀_i|; inf where none."""
    leverage_limit: float | None = None
    """Gross exposure cap: Σ|w_i| ≤ limit."""
    transaction_costs_bps: FloatArray | None = None
    """Linear costs (N,) in basis points of traded value, c_i·|w_i − w₀_i|/1e4, subtracted from the expected
    return wherever it appears (objective, min_return)."""
    benchmark_weights: FloatArray | None = None
    """Benchmark weights b (N,) of the tracking-error limit."""
    tracking_error_limit: float | None = None
    """Annualised tracking-error cap: sqrt((w − b)ᵀΣ(w − b)) ≤ limit."""
    betas: FloatArray | None = None
    """Betas (N,) against the market, for beta neutrality."""
    beta_tolerance: float | None = None
    """Beta neutrality: |βᵀw| ≤ tolerance."""

    @property
    def n_assets(self) -> int:
        """Number of strategies N."""
        return len(self.strategy_ids)


@dataclass(frozen=True, slots=True)
class PortfolioPerformance:
    """Annualised performance of a weight vector."""

    expected_return: float
    volatility: float
    sharpe_ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationResult:
    """The optimal portfolio and how it was found.

    Attributes
    ----------
    weights : ndarray of shape (N,)
        Optimal weights (fractions summing to 1), in the order of ``PortfolioProblem.strategy_ids``.
    performance : PortfolioPerformance
        Expected return, volatility and Sharpe ratio of ``weights``.
    objective_value : float
        Objective at the optimum: Sharpe ratio (max Sharpe), variance w'Σw (min volatility), expected return
        (max return), or utility μ'w − δ/2 w'Σw (quadratic utility); returns net of transaction costs when the
        problem has them (``performance`` stays gross).
    status : str
        ``OPTIMAL`` or ``OPTIMAL_INACCURATE``.
    iterations : int
        Solver iterations.
    solver : str
        Solver name.
    solve_time_ms : float
        Wall time of problem construction and solve (milliseconds).
    constraints_satisfied : bool
        Whether ``weights`` satisfy every constraint within ``tolerance``, checked on the weights.
    violations : tuple of str
        Human-readable constraint violations (empty when satisfied).
    """

    weights: FloatArray
    performance: PortfolioPerformance
    objective_value: float
    status: str
    iterations: int
    solver: str
    solve_time_ms: float
    constraints_satisfied: bool
    violations: tuple[str, ...] = field(default=())
    fallback_used: bool = False
    """Whether the primary solver failed and the fallback solver produced the answer."""
