"""Module-scoped fixtures over the real price data sets."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.services.market_data import load_sp500_prices, load_stock_prices


@pytest.fixture(scope="module")
def stock_prices() -> pd.DataFrame:
    return load_stock_prices()


@pytest.fixture(scope="module")
def sp500_prices() -> pd.DataFrame:
    return load_sp500_prices()
