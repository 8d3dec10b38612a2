r"""Ex-ante against realised: how each recommended weight vector did over the period after its estimation window.

Pure functions (NumPy) and the read of stored closes (:class:`PriceReads`). A run recommended weights :math:`w`
from data up to its ``window_end``; its **holding period** is ``(window_end, period_end]``: up to the next later
``window_end`` of the portfolio's runs (the weights were in force until a run on newer data), or ``window_end +
horizon`` when a horizon is given. On the stored closes of the period, with the weights held fixed (rebalanced
every period; the cash of weights summing below 1 earns nothing):

- portfolio returns :math:`r_t = \sum_i w_i R_{t,i}` on the periods where every held name has a return;
- total return :math:`\prod_t (1 + r_t) - 1`; annualised (CAGR) :math:`(1 + \text{total})^{P/T} - 1` with
  :math:`P` periods per year and :math:`T` periods;
- volatility :math:`\mathrm{std}(r)\sqrt{P}` (ddof 1);
- Sharpe :math:`(\bar r - r_f/P) / \mathrm{std}(r) \cdot \sqrt{P}`; Sortino the same over the downside deviation
  :math:`\sqrt{\mathrm{mean}(\min(r_t - r_f/P, 0)^2)}` (Sortino & Price, 1994, target = the risk-free rate);
- maximum drawdown of the compounded value from a peak, the start counting as one
  (``services.optimization.max_drawdown``); Calmar = CAGR / maximum drawdown (Young, 1991).

Fewer than two returns in the period leave the realised figures unset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from query_side.postgres_errors import postgres_errors
from services.optimization import max_drawdown
from services.types import FloatArray

MIN_RETURNS = 2
"""Fewest period returns for realised figures."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RealisedFigures:
    """Realised performance of fixed weights over one holding period (module docstring; decimals, annualised)."""

    observations: int
    """Period returns used."""
    total_return: float
    annualised_return: float
    volatility: float
    sharpe_ratio: float | None
    """None when the volatility is 0."""
    sortino_ratio: float | None
    """None when no return falls below the risk-free rate."""
    max_drawdown: float
    calmar_ratio: float | None
    """None when the maximum drawdown is 0."""


def realised_figures(
    returns: FloatArray, weights: FloatArray, *, risk_free_rate: float = 0.0, periods_per_year: int = 252
) -> RealisedFigures | None:
    """Realised figures of ``weights`` over a period's ``returns``.

    Parameters
    ----------
    returns : ndarray of shape (T, N)
        Simple returns of the held names per period (NaN = missing: the row is left out).
    weights : ndarray of shape (N,)
        Fractions of the portfolio.
    risk_free_rate : float
        Annualised (decimal).
    periods_per_year : int
        Periods per year of the returns (252 for daily closes).

    Returns
    -------
    RealisedFigures or None
        None with fewer than :data:`MIN_RETURNS` complete periods.
    """
    history = np.asarray(returns, dtype=np.float64)
    complete = history[~np.isnan(history).any(axis=1)] if history.size else history.reshape(0, len(weights))
    if complete.shape[0] < MIN_RETURNS:
        return None
    w = np.asarray(weights, dtype=np.float64)
    r = complete @ w
    periods = r.size
    total = float(np.prod(1.0 + r) - 1.0)
    with np.errstate(over="ignore"):  # a short period at a high frequency may annualise beyond float: inf
        annualised = float(np.power(1.0 + total, periods_per_year / periods)) - 1.0 if total > -1.0 else -1.0
    excess = r - risk_free_rate / periods_per_year
    deviation = float(np.std(r, ddof=1))
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    scale = math.sqrt(periods_per_year)
    drawdown = max_drawdown(complete, w)
    assert drawdown is not None  # complete rows exist
    return RealisedFigures(
        observations=periods,
        total_return=total,
        annualised_return=float(annualised),
        volatility=deviation * scale,
        sharpe_ratio=float(excess.mean() / deviation * scale) if deviation > 0 else None,
        sortino_ratio=float(excess.mean() / downside * scale) if downside > 0 else None,
        max_drawdown=drawdown,
        calmar_ratio=float(annualised / drawdown) if drawdown > 0 else None,
    )


def holding_periods(
    window_ends: list[datetime | None],
    horizon_end: list[datetime | None] | None = None,
    later_window_ends: Sequence[datetime] = (),
) -> list[tuple[datetime, datetime | None] | None]:
    """Each run's holding period ``(window_end, period_end]`` (module docstring).

    Parameters
    ----------
    window_ends : list of datetime or None
        The runs' estimation window ends, oldest run first (None: a run on the caller's moments).
    horizon_end : list of datetime or None, optional
        ``window_end + horizon`` per run when a horizon is given; otherwise the next later window end of any run
        (the weights were in force until a run on newer data; None for the latest: up to the latest stored close).
    later_window_ends : sequence of datetime, optional
        The window ends of the portfolio's runs after the range asked for (their figures are not asked for, but
        they end the periods of the range's last runs as well).

    Returns
    -------
    list
        ``(start, end)`` per run, or None for a run without a window.
    """
    periods: list[tuple[datetime, datetime | None] | None] = []
    for k, start in enumerate(window_ends):
        if start is None:
            periods.append(None)
            continue
        if horizon_end is not None:
            periods.append((start, horizon_end[k]))
            continue
        later = [e for e in (*window_ends, *later_window_ends) if e is not None and e > start]
        periods.append((start, min(later) if later else None))
    return periods


class PriceReads:
    """Stored closes for the realised figures (``market_data``), over asyncpg.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def closes(
        self, symbols: list[str], start: datetime, end: datetime | None
    ) -> tuple[list[datetime], FloatArray]:
        """Closes of ``symbols`` at ``start`` and after it (up to ``end`` inclusive; None: the latest).

        Returns
        -------
        tuple
            The distinct timestamps (ascending) and a (T, N) matrix of closes in the order of ``symbols`` (NaN where
            a symbol has none at a timestamp).

        Raises
        ------
        UnavailableError
            When the database cannot be reached.
        """
        query = (
            'SELECT symbol, "timestamp", price FROM market_data WHERE symbol = ANY($1::text[]) '
            'AND "timestamp" >= $2 AND ($3::timestamptz IS NULL OR "timestamp" <= $3) ORDER BY "timestamp"'
        )
        async with postgres_errors():
            rows = await self._pool.fetch(query, symbols, start, end)
        times = sorted({row["timestamp"] for row in rows})
        row_of = {t: k for k, t in enumerate(times)}
        column = {s: j for j, s in enumerate(symbols)}
        matrix = np.full((len(times), len(symbols)), np.nan)
        for row in rows:
            matrix[row_of[row["timestamp"]], column[row["symbol"]]] = row["price"]
        return times, matrix
