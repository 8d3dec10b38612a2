"""Problems on the real S&P 500 sample shared by the scenario-measure and robust tests: sectors and their limits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.optimization import Objective, PortfolioProblem, SectorLimit
from tests.services.market_data import SP500_SECTORS

RISK_FREE_RATE = 0.02
SECTOR_LOWER = {"financials": 0.05, "staples": 0.10}
SECTOR_UPPER = {"tech": 0.20, "energy": 0.15, "health": 0.30}


def make_problem(
    objective: Objective,
    tickers: list[str],
    lower: float,
    upper: float,
    *,
    with_sectors: bool = False,
    **options: object,
) -> PortfolioProblem:
    """A long-only (or boxed) problem over ``tickers`` at r_f = 2 %, with the sector limits above when asked."""
    n = len(tickers)
    limits = tuple(
        SectorLimit(s, SECTOR_LOWER.get(s), SECTOR_UPPER.get(s)) for s in sorted(set(SECTOR_LOWER) | set(SECTOR_UPPER))
    )
    fields: dict[str, object] = {"risk_free_rate": RISK_FREE_RATE, **options}
    return PortfolioProblem(
        symbols=tuple(tickers),
        objective=objective,
        lower_bounds=np.full(n, lower),
        upper_bounds=np.full(n, upper),
        sectors=tuple(SP500_SECTORS[t] for t in tickers) if with_sectors else (),
        sector_limits=limits if with_sectors else (),
        **fields,  # type: ignore[arg-type]
    )


def sector_inequalities(tickers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The sector limits as skfolio's A w ≤ b, built from the sector map independently of the engine."""
    rows, bounds = [], []
    for sector, minimum in SECTOR_LOWER.items():
        rows.append([-1.0 if SP500_SECTORS[t] == sector else 0.0 for t in tickers])
        bounds.append(-minimum)
    for sector, maximum in SECTOR_UPPER.items():
        rows.append([1.0 if SP500_SECTORS[t] == sector else 0.0 for t in tickers])
        bounds.append(maximum)
    return np.array(rows), np.array(bounds)


def benchmark_problem(prices: pd.DataFrame, seed: int, index: int) -> tuple:
    """Problem ``index`` of ``benchmarks.batch``'s generator with ``seed``: (Σ, μ, lower, upper).

    N in 12..50 of the 20 names and their returns shifted by one and two days, a 2-year window, μ and Σ
    annualised, long only with a 25 % cap on odd problems.
    """
    returns = prices.pct_change().dropna()
    shifted = pd.concat([returns, returns.shift(1).add_suffix("_1"), returns.shift(2).add_suffix("_2")], axis=1)
    shifted = shifted.dropna()
    rng = np.random.default_rng(seed)
    for _ in range(index + 1):
        n = int(rng.integers(12, 51))
        columns = rng.choice(shifted.columns, n, replace=False)
        end = int(rng.integers(600, len(shifted)))
    window = shifted.iloc[end - 504 : end][columns]
    mu, sigma = window.mean().to_numpy() * 252, window.cov().to_numpy() * 252
    return sigma, mu, np.zeros(n), np.full(n, 0.25 if index % 2 else 1.0)
