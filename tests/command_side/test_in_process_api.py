"""``services.api.optimize`` in-process gives what the service's ``Optimize`` gives over gRPC for the same inputs.

Truth: the gRPC answer (its own estimation, engine run in a worker process, response mapping) and, independently,
PyPortfolioOpt on the same returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pypfopt import EfficientFrontier, expected_returns, risk_models

from services.api import optimize
from services.optimization import SectorLimit
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import SECTORS, returns_request, unique
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def sp500_returns() -> pd.DataFrame:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    return prices.pct_change().dropna().iloc[-756:]


@pytest.mark.parametrize(
    ("objective", "name"), [(pb.OBJECTIVE_MAX_SHARPE, "MAX_SHARPE"), (pb.OBJECTIVE_MIN_VOLATILITY, "MIN_VOLATILITY")]
)
def test_notebook_and_service_answer_alike(
    commands: Any, sp500_returns: pd.DataFrame, objective: int, name: str
) -> None:
    request = returns_request(
        sp500_returns,
        unique("api"),
        objective=objective,
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
    )
    request.constraints.max_weight = 0.2
    request.constraints.sector_limits.append(pb.SectorLimit(sector="Health", max_weight=0.3))
    response = commands.Optimize(request, timeout=60)
    portfolio = optimize(
        sp500_returns,
        objective=name,
        max_weight=0.2,
        sectors=SECTORS,
        sector_limits=(SectorLimit("Health", max_weight=0.3),),
        risk_free_rate=0.02,
    )
    service = pd.Series(dict(response.optimal_weights)).reindex(portfolio.weights.index)
    np.testing.assert_allclose(portfolio.weights.to_numpy(), service.to_numpy(), atol=1e-9)
    assert portfolio.sharpe_ratio == pytest.approx(response.sharpe_ratio, rel=1e-9)
    assert portfolio.volatility == pytest.approx(response.expected_volatility, rel=1e-9)


def test_prices_input_equals_pypfopt(sp500_returns: pd.DataFrame) -> None:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date").iloc[-757:]
    portfolio = optimize(prices=prices, objective="MAX_SHARPE", risk_free_rate=0.02)
    mu = expected_returns.mean_historical_return(prices)
    frontier = EfficientFrontier(mu, risk_models.sample_cov(prices))
    frontier.max_sharpe(risk_free_rate=0.02)
    _, _, sharpe = frontier.portfolio_performance(risk_free_rate=0.02)
    assert portfolio.sharpe_ratio == pytest.approx(sharpe, rel=1e-6)
    assert portfolio.weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert portfolio.risk_contributions.sum() == pytest.approx(1.0, abs=1e-9)


def test_exactly_one_input_is_required(sp500_returns: pd.DataFrame) -> None:
    from services.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="exactly one"):
        optimize()
    with pytest.raises(InvalidInputError, match="exactly one"):
        optimize(sp500_returns, prices=sp500_returns)
    with pytest.raises(InvalidInputError, match="not among the columns"):
        optimize(sp500_returns, max_weight={"NOPE": 0.1})
