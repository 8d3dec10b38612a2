"""AllocateShares through gRPC against PyPortfolioOpt itself (issue 12, point 5): real server, real PostgreSQL.

Truth: ``DiscreteAllocation.greedy_portfolio`` / ``lp_portfolio`` run live on the latest prices of
``data/stock_prices.csv`` and the ``clean_weights()`` of PyPortfolioOpt's max-Sharpe portfolio (long-only and
long-short); the LP objective is evaluated on both answers (``tests.services.trading.test_pypfopt_parity``).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import grpc
import pandas as pd
import pytest

from stratopt.v1 import trading_service_pb2 as trading_pb
from tests.command_side.test_optimize_service import field_violations
from tests.conftest import DATA_DIR
from tests.services.trading.test_pypfopt_parity import BUDGET, LP_TOLERANCE, max_sharpe, pypfopt, pypfopt_lp_objective

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def latest() -> pd.Series:
    prices = pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")
    return prices.ffill().iloc[-1]


@pytest.fixture(scope="module")
def books() -> dict[str, dict[str, float]]:
    return {"long": max_sharpe((0.0, 1.0)), "long_short": max_sharpe((-1.0, 1.0))}


def request_of(weights: dict[str, float], latest: pd.Series, **fields: Any) -> trading_pb.AllocateSharesRequest:
    request = trading_pb.AllocateSharesRequest(
        portfolio_id=f"parity-{uuid.uuid4().hex[:10]}", extra_cash=BUDGET, **fields
    )
    for symbol, weight in weights.items():
        request.targets.add(symbol=symbol, target_weight=weight, price=float(latest[symbol]))
    return request


def shares_of(response: Any) -> dict[str, int]:
    return {line.symbol: line.final_shares for line in response.lines if line.final_shares}


@pytest.mark.parametrize("reinvest", [False, True])
@pytest.mark.parametrize("book", ["long", "long_short"])
def test_pypfopt_greedy_gives_greedy_portfolio_shares(
    trading: Any, latest: pd.Series, books: dict[str, dict[str, float]], book: str, reinvest: bool
) -> None:
    weights = books[book]
    expected, leftover = pypfopt(weights, latest, "greedy_portfolio", reinvest=reinvest)
    request = request_of(
        weights, latest, strategy=trading_pb.ALLOCATION_STRATEGY_PYPFOPT_GREEDY, reinvest=reinvest, bypass_cache=True
    )
    response = trading.AllocateShares(request, timeout=30)
    assert shares_of(response) == expected
    assert response.metrics.unused_budget == pytest.approx(leftover, abs=1e-9)
    assert response.metrics.solver == "GREEDY"
    assert not response.metrics.weights_renormalised


@pytest.mark.parametrize("reinvest", [False, True])
@pytest.mark.parametrize("book", ["long", "long_short"])
def test_pypfopt_lp_reaches_lp_portfolio_objective(
    trading: Any, latest: pd.Series, books: dict[str, dict[str, float]], book: str, reinvest: bool
) -> None:
    weights = books[book]
    expected, _ = pypfopt(weights, latest, "lp_portfolio", reinvest=reinvest)
    request = request_of(
        weights, latest, strategy=trading_pb.ALLOCATION_STRATEGY_PYPFOPT_LP, reinvest=reinvest, bypass_cache=True
    )
    response = trading.AllocateShares(request, timeout=30)
    ours = pypfopt_lp_objective(weights, latest, shares_of(response), reinvest=reinvest)
    assert ours == pytest.approx(pypfopt_lp_objective(weights, latest, expected, reinvest=reinvest), abs=LP_TOLERANCE)
    assert response.metrics.lp_objective == pytest.approx(ours, abs=1e-9)
    assert response.metrics.solver == "HIGHS" and response.metrics.solver_status == "OPTIMAL"
    if book == "long_short":
        assert min(line.final_shares for line in response.lines) < 0


def test_short_ratio_is_passed_to_the_short_book(
    trading: Any, latest: pd.Series, books: dict[str, dict[str, float]]
) -> None:
    from pypfopt.discrete_allocation import DiscreteAllocation

    weights = books["long_short"]
    expected, _ = DiscreteAllocation(weights, latest, total_portfolio_value=BUDGET, short_ratio=0.3).greedy_portfolio()
    request = request_of(weights, latest, strategy=trading_pb.ALLOCATION_STRATEGY_PYPFOPT_GREEDY, short_ratio=0.3)
    assert shares_of(trading.AllocateShares(request, timeout=30)) == dict(expected)


def test_clean_weights_are_accepted_and_renormalised(
    trading: Any, latest: pd.Series, books: dict[str, dict[str, float]]
) -> None:
    weights = books["long"]
    weight_sum = math.fsum(weights.values())
    assert weight_sum != 1.0
    response = trading.AllocateShares(request_of(weights, latest), timeout=30)
    assert response.metrics.weights_renormalised
    assert response.metrics.weight_sum == weight_sum
    assert sum(line.target_weight for line in response.lines) == pytest.approx(1.0, abs=1e-15)


def test_weights_beyond_the_tolerance_name_targets(trading: Any, latest: pd.Series) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        trading.AllocateShares(request_of({"GOOG": 0.5, "AAPL": 0.498}, latest), timeout=30)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == ["targets"]


def test_absolute_deviation_mode_bounds_the_weights_in_points(trading: Any, latest: pd.Series) -> None:
    weights = {"GOOG": 0.1, "AAPL": 0.3, "AMZN": 0.3, "MA": 0.3}
    request = request_of(weights, latest, deviation_mode=trading_pb.DEVIATION_MODE_ABSOLUTE)
    for target in request.targets:
        target.allowed_deviation = 0.02
    response = trading.AllocateShares(request, timeout=30)
    assert response.metrics.relaxation == "NONE"
    for line in response.lines:
        assert abs(line.actual_weight - weights[line.symbol]) <= 0.02 + 1e-12
