"""The engine in-process, for an analyst in a notebook: pandas in, a portfolio out, the service's numbers.

``optimize`` builds the same ``OptimizationJob`` the command side builds from an ``OptimizeRequest`` and runs it
through the same ``services.engine.run_optimization`` the service's workers run, so a notebook and the service
answer alike for the same inputs and settings (``tests/command_side/test_in_process_api.py`` checks it through
gRPC). Example::

    import pandas as pd
    from services.api import optimize

    prices = pd.read_csv("data/stock_prices.csv", index_col="date", parse_dates=True)
    portfolio = optimize(prices=prices, objective="MAX_SHARPE", max_weight=0.25, risk_free_rate=0.02)
    portfolio.weights            # pandas Series of fractions summing to 1, indexed by column name
    portfolio.sharpe_ratio       # annualised, at r_f = 0.02

Everything ``PortfolioProblem`` takes (``sector_limits``, ``turnover_limit``, ``max_holdings`` …) passes through
``**constraints``; per-symbol arrays may be given as mappings from column name to value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from services.engine import Method, MethodSettings, OptimizationJob, OptimizationOutcome, run_optimization
from services.errors import InvalidInputError
from services.estimation import returns_between_observations
from services.optimization import Objective, PortfolioProblem, RiskMeasure
from services.types import EstimationSettings, FloatArray, Moments, ReturnHistory

_PER_SYMBOL_FIELDS = (
    "current_weights",
    "turnover_caps",
    "transaction_costs_bps",
    "benchmark_weights",
    "betas",
)
"""``PortfolioProblem`` fields of shape (N,) that may be given as a mapping from symbol to value."""


@dataclass(frozen=True, slots=True)
class Portfolio:
    """An optimized portfolio with the engine's full outcome.

    Attributes
    ----------
    weights : pandas.Series
        Weights (fractions; summing to 1, or within the net exposure bounds) indexed by symbol.
    expected_return, volatility, sharpe_ratio : float
        Annualised expected return and volatility (decimals) and the Sharpe ratio at the problem's risk-free rate.
    outcome : OptimizationOutcome
        Everything the service stores: the result (status, solver, solve path, violations …), the moments used,
        risk contributions and, for Black-Litterman, the posterior.
    """

    weights: pd.Series
    expected_return: float
    volatility: float
    sharpe_ratio: float
    outcome: OptimizationOutcome

    @property
    def risk_contributions(self) -> pd.Series:
        """Each symbol's share of portfolio variance (sums to 1)."""
        return pd.Series(self.outcome.risk_contributions, index=self.weights.index, name="risk_contribution")


def _history(returns: pd.DataFrame) -> ReturnHistory:
    values = returns.to_numpy(dtype=np.float64)
    index = pd.DatetimeIndex(returns.index)
    timestamps = index.tz_convert(None) if index.tz is not None else index
    return ReturnHistory(returns=values, timestamps=timestamps.to_numpy(dtype="datetime64[us]"))


def _per_symbol(value: Any, symbols: list[str], field: str, default: float) -> FloatArray:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(symbols))
        if unknown:
            raise InvalidInputError.for_field(field, f"symbols not among the columns: {', '.join(map(str, unknown))}")
        return np.array([float(value.get(symbol, default)) for symbol in symbols], dtype=np.float64)
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (len(symbols),)).copy()


def optimize(
    returns: pd.DataFrame | None = None,
    *,
    prices: pd.DataFrame | None = None,
    moments: tuple[pd.Series, pd.DataFrame] | None = None,
    objective: Objective | str = Objective.MAX_SHARPE,
    method: Method | str | MethodSettings = Method.MEAN_VARIANCE,
    risk_measure: RiskMeasure | str | None = None,
    min_weight: float | Mapping[str, float] = 0.0,
    max_weight: float | Mapping[str, float] = 1.0,
    sectors: Mapping[str, str] | None = None,
    estimation: EstimationSettings | None = None,
    time_limit_s: float | None = None,
    **constraints: Any,
) -> Portfolio:
    """Optimize a portfolio in-process, exactly as the service's ``Optimize`` does.

    Parameters
    ----------
    returns : pandas.DataFrame of shape (T, N), optional
        Periodic simple returns (0.01 = 1 %), one column per symbol, a datetime index; NaN where a symbol has no
        observation (handled by ``estimation.missing_data_policy``, pairwise by default).
    prices : pandas.DataFrame of shape (T + 1, N), optional
        Positive prices instead of returns: each name's returns between its own consecutive observations.
    moments : tuple of (pandas.Series, pandas.DataFrame), optional
        Annualised expected returns (N,) and covariance (N, N), indexed by symbol, instead of a history.
    objective : Objective or str, default="MAX_SHARPE"
        ``MAX_SHARPE``, ``MIN_VOLATILITY``, ``MAX_RETURN``, ``MAX_QUADRATIC_UTILITY`` or ``MULTI_OBJECTIVE``.
    method : Method, str or MethodSettings, default="MEAN_VARIANCE"
        ``MEAN_VARIANCE``, ``BLACK_LITTERMAN``, ``RISK_PARITY``, ``HIERARCHICAL_RISK_PARITY`` or
        ``ROBUST_OPTIMIZATION``; a ``MethodSettings`` for the method's parameters (views, budgets, linkage …).
    risk_measure : RiskMeasure or str, optional
        ``CVAR``, ``MAD`` or ``CDAR`` on the historical scenarios instead of variance (mean-variance only).
    min_weight, max_weight : float or mapping of symbol to float
        Per-symbol weight bounds (fractions); defaults 0 and 1 (long only).
    sectors : mapping of symbol to str, optional
        Each symbol's sector, for ``sector_limits``.
    estimation : EstimationSettings, optional
        Estimators and annualisation; default the service's (mean historical compounded, sample covariance, 252
        periods per year, pairwise over gaps).
    time_limit_s : float, optional
        Wall-clock limit in seconds.
    **constraints
        Any other ``PortfolioProblem`` field (``risk_free_rate``, ``risk_aversion``, ``min_return``,
        ``max_volatility``, ``sector_limits``, ``turnover_limit``, ``current_weights`` …); per-symbol fields may be
        mappings from symbol to value.

    Returns
    -------
    Portfolio
        Weights by name, annualised performance and the engine's full outcome.

    Raises
    ------
    InvalidInputError
        Not exactly one of ``returns``, ``prices`` and ``moments``; a malformed input or constraint (the error
        names the field).
    InfeasibleError
        The constraints admit no portfolio (the violations name the conflicting limits and, for mean-variance,
        the smallest relaxation).
    DeadlineExceededError, OptimizationError
        The solve ran out of time or failed.
    """
    given = [
        name for name, value in (("returns", returns), ("prices", prices), ("moments", moments)) if value is not None
    ]
    if len(given) != 1:
        raise InvalidInputError.for_field("returns", f"give exactly one of returns, prices, moments (got {given})")
    inputs: ReturnHistory | Moments
    if moments is not None:
        expected, covariance = moments
        symbols = [str(name) for name in expected.index]
        inputs = Moments(
            expected_returns=expected.to_numpy(dtype=np.float64),
            covariance=covariance.loc[expected.index, expected.index].to_numpy(dtype=np.float64),
        )
    else:
        if prices is not None:
            frame = pd.DataFrame(
                returns_between_observations(prices.to_numpy(dtype=np.float64)),
                index=prices.index[1:],
                columns=prices.columns,
            )
        else:
            assert returns is not None
            frame = returns
        symbols = [str(name) for name in frame.columns]
        inputs = _history(frame)
    fields = dict(constraints)
    for field in _PER_SYMBOL_FIELDS:
        if field in fields and isinstance(fields[field], Mapping):
            fields[field] = _per_symbol(fields[field], symbols, field, 0.0 if field != "turnover_caps" else np.inf)
    problem = PortfolioProblem(
        symbols=tuple(symbols),
        objective=Objective(objective),
        lower_bounds=_per_symbol(min_weight, symbols, "min_weight", 0.0),
        upper_bounds=_per_symbol(max_weight, symbols, "max_weight", 1.0),
        sectors=tuple(sectors.get(symbol, "") for symbol in symbols) if sectors is not None else (),
        **fields,
    )
    if isinstance(method, MethodSettings):
        settings = method
    else:
        settings = MethodSettings(
            method=Method(method), risk_measure=None if risk_measure is None else RiskMeasure(risk_measure)
        )
    job = OptimizationJob(
        problem=problem,
        inputs=inputs,
        # The service estimates CAPM returns at the problem's risk-free rate: so does the default here.
        settings=estimation if estimation is not None else EstimationSettings(risk_free_rate=problem.risk_free_rate),
        method=settings,
        time_limit_s=time_limit_s,
    )
    outcome = run_optimization(job)
    result = outcome.result
    return Portfolio(
        weights=pd.Series(result.weights, index=symbols, name="weight"),
        expected_return=result.performance.expected_return,
        volatility=result.performance.volatility,
        sharpe_ratio=result.performance.sharpe_ratio,
        outcome=outcome,
    )
