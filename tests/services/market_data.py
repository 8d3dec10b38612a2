"""The real price data sets in ``data/`` and their conversion to the engine's return histories.

``stock_prices.csv`` is PyPortfolioOpt's test set (20 US stocks, 1989-2018, NaN before listings),
``sp500_dataset.csv.gz`` skfolio's (20 S&P 500 stocks, 1990-2022, no gaps) and ``spy_prices.csv`` the SPY ETF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from services.types import ReturnHistory

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

SP500_SECTORS = {
    "AAPL": "tech",
    "AMD": "tech",
    "MSFT": "tech",
    "BAC": "financials",
    "JPM": "financials",
    "BBY": "retail",
    "HD": "retail",
    "WMT": "retail",
    "CVX": "energy",
    "XOM": "energy",
    "RRC": "energy",
    "GE": "industrials",
    "JNJ": "health",
    "LLY": "health",
    "MRK": "health",
    "PFE": "health",
    "UNH": "health",
    "KO": "staples",
    "PEP": "staples",
    "PG": "staples",
}
"""GICS-like sector of each sp500_dataset stock (hand-assigned, for sector-limit tests)."""


def load_stock_prices() -> pd.DataFrame:
    """PyPortfolioOpt's ``stock_prices.csv``: (7126, 20) prices indexed by date, NaN before listings."""
    return pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")


def load_sp500_prices() -> pd.DataFrame:
    """Skfolio's S&P 500 data set: (8313, 20) prices indexed by date, complete."""
    return pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")


def load_spy_prices() -> pd.DataFrame:
    """SPY ETF prices (1993-2019), one column ``SPY`` indexed by date."""
    return pd.read_csv(DATA_DIR / "spy_prices.csv", parse_dates=["date"], index_col="date")


def return_history(returns: pd.DataFrame, market_returns: pd.Series | None = None) -> ReturnHistory:
    """The engine's ReturnHistory of a date-indexed frame of simple returns (NaN kept)."""
    return ReturnHistory(
        returns=returns.to_numpy(dtype=np.float64),
        timestamps=returns.index.to_numpy().astype("datetime64[us]"),
        market_returns=None if market_returns is None else market_returns.to_numpy(dtype=np.float64),
    )
