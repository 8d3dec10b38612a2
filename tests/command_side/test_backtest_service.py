"""The Backtest RPC end to end: real server, real stored prices, results checked against skfolio's WalkForward."""

from __future__ import annotations

import threading
import uuid
import warnings
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import pandas as pd
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stratopt.v1 import backtest_pb2 as bt_pb
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, precondition_types
from tests.services.market_data import load_sp500_prices

pytestmark = pytest.mark.integration

SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "GE", "JNJ", "JPM", "KO", "MSFT", "PG"]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _ts(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return stamp


def _configure(commands: Any, objective: int = pb.OBJECTIVE_MAX_SHARPE, symbols: list[str] = SYMBOLS) -> str:
    portfolio_id = _unique("bt")
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=s) for s in symbols],
        objective=objective,
        risk_parameters=pb.RiskParameters(compounding=False),  # skfolio's arithmetic mean
        enabled=True,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    return portfolio_id


def _run(commands: Any, request: bt_pb.BacktestRequest) -> tuple[list[bt_pb.BacktestProgress], bt_pb.BacktestSummary]:
    progress: list[bt_pb.BacktestProgress] = []
    result = None
    for message in commands.Backtest(request, timeout=120):
        if message.HasField("progress"):
            assert result is None, "progress after the result"
            progress.append(message.progress)
        else:
            result = message.result
    assert result is not None
    return progress, result


def test_backtest_through_grpc_equals_skfolio(
    commands: Any, queries: Any, stored_prices: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    from skfolio.model_selection import WalkForward, cross_val_predict
    from skfolio.optimization import MeanRisk, ObjectiveFunction
    from skfolio.preprocessing import prices_to_returns

    portfolio_id = _configure(commands)
    request = bt_pb.BacktestRequest(
        portfolio_id=portfolio_id,
        start=_ts("2015-01-01"),
        end=_ts("2018-12-31"),
        estimation_periods=252,
        schedule=bt_pb.RebalanceSchedule(frequency=bt_pb.REBALANCE_FREQUENCY_PERIODS, every_periods=21),
        holding=bt_pb.BACKTEST_HOLDING_CONSTANT_WEIGHTS,
    )
    progress, summary = _run(commands, request)
    assert summary.portfolio_id == portfolio_id and summary.configuration_version == 1
    assert list(summary.symbols) == SYMBOLS
    assert summary.failed_decisions == 0 and summary.decisions == len(range(0, summary.observations, 21))
    assert progress and progress[-1].decisions_planned == summary.decisions
    assert summary.settings.estimation_periods == 252 and summary.settings.initial_cash == 1_000_000

    stored = queries.GetBacktest(query_pb.GetBacktestRequest(backtest_id=summary.backtest_id), timeout=10)
    assert stored.summary == summary
    assert len(stored.points) == summary.observations
    equity = np.array([p.equity for p in stored.points])
    dates = pd.DatetimeIndex([p.timestamp.ToDatetime() for p in stored.points])

    # skfolio on the same prices: the window ending at the first simulated close, then 21-day test folds.
    prices = load_sp500_prices()[SYMBOLS]
    first = prices.index.get_loc(dates[0])
    frame = prices.iloc[first - 252 : prices.index.get_loc(dates[-1]) + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = cross_val_predict(
            MeanRisk(
                objective_function=ObjectiveFunction.MAXIMIZE_RATIO,
                solver_params={"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11},
            ),
            prices_to_returns(frame),
            cv=WalkForward(train_size=252, test_size=21),
        )
    theirs = np.asarray(predicted.returns)
    ours = equity[1:] / equity[:-1] - 1
    assert theirs.size >= ours.size - 21
    np.testing.assert_allclose(ours[: theirs.size], theirs, atol=2e-5)
    # The metrics recomputed with pandas from the stored path.
    returns = pd.Series(equity, index=dates).pct_change().dropna()
    assert summary.metrics.volatility == pytest.approx(returns.std() * np.sqrt(252), rel=1e-9)
    assert summary.metrics.sharpe_ratio == pytest.approx(returns.mean() / returns.std() * np.sqrt(252), rel=1e-9)
    assert summary.metrics.final_value == pytest.approx(equity[-1], rel=1e-12)

    rows = db.execute(
        "SELECT (SELECT count(*) FROM backtests WHERE portfolio_id = %s), "
        "(SELECT count(*) FROM backtest_points WHERE backtest_id = %s)",
        (portfolio_id, summary.backtest_id),
    ).fetchone()
    assert rows == (1, summary.observations)
    listed = queries.ListBacktests(query_pb.ListBacktestsRequest(portfolio_id=portfolio_id), timeout=10)
    assert [b.backtest_id for b in listed.backtests] == [summary.backtest_id]


def test_list_backtests_pages_newest_first(commands: Any, queries: Any, stored_prices: dict[str, str]) -> None:
    portfolio_id = _configure(commands, pb.OBJECTIVE_MIN_VOLATILITY, SYMBOLS[:4])
    ids = []
    for year in ("2016", "2017", "2018"):
        request = bt_pb.BacktestRequest(
            portfolio_id=portfolio_id,
            start=_ts(f"{year}-01-01"),
            end=_ts(f"{year}-06-30"),
            schedule=bt_pb.RebalanceSchedule(frequency=bt_pb.REBALANCE_FREQUENCY_QUARTERLY),
        )
        ids.append(_run(commands, request)[1].backtest_id)
    seen: list[str] = []
    token = ""
    while True:
        page = queries.ListBacktests(
            query_pb.ListBacktestsRequest(portfolio_id=portfolio_id, page_size=2, page_token=token), timeout=10
        )
        seen += [b.backtest_id for b in page.backtests]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]


def test_whole_shares_buy_and_hold_with_costs(commands: Any, queries: Any, stored_prices: dict[str, str]) -> None:
    portfolio_id = _configure(commands, pb.OBJECTIVE_MIN_VOLATILITY)
    request = bt_pb.BacktestRequest(
        portfolio_id=portfolio_id,
        start=_ts("2017-01-01"),
        end=_ts("2018-12-31"),
        whole_shares=True,
        initial_cash=100_000,
        costs=bt_pb.BacktestCosts(commission_bps=2, spread_bps=5, commission_per_trade=1),
    )
    _, summary = _run(commands, request)
    stored = queries.GetBacktest(query_pb.GetBacktestRequest(backtest_id=summary.backtest_id), timeout=10)
    prices = load_sp500_prices()[SYMBOLS]
    for point in stored.points:
        close = prices.loc[pd.Timestamp(point.timestamp.ToDatetime())].to_numpy()
        shares = np.array(point.weights) * point.equity / close
        np.testing.assert_allclose(shares, np.round(shares), atol=1e-6)
    costs = sum(p.cost for p in stored.points)
    assert summary.metrics.total_costs == pytest.approx(costs) and costs > 0
    # Month ends: each rebalance is the last stored close of its month.
    rebalanced = [pd.Timestamp(p.timestamp.ToDatetime()) for p in stored.points if p.rebalanced]
    closes = prices.loc["2017":"2018"].index
    month_ends = set(closes.to_series().groupby(closes.to_period("M")).max())
    assert set(rebalanced[1:]) <= month_ends


def test_cancelled_backtest_stores_nothing(
    commands: Any, stored_prices: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id = _configure(commands)
    request = bt_pb.BacktestRequest(
        portfolio_id=portfolio_id,
        estimation_periods=60,
        schedule=bt_pb.RebalanceSchedule(frequency=bt_pb.REBALANCE_FREQUENCY_PERIODS, every_periods=1),
    )
    call = commands.Backtest(request, timeout=120)
    first = next(call)
    assert first.HasField("progress")
    call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    # The server stops solving: after a moment, still nothing is stored.
    threading.Event().wait(2.0)
    count = db.execute("SELECT count(*) FROM backtests WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
    assert count == (0,)


def test_backtest_errors_name_the_field(commands: Any, queries: Any, stored_prices: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        list(commands.Backtest(bt_pb.BacktestRequest(portfolio_id=_unique("none")), timeout=30))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    portfolio_id = _configure(commands)
    bad = bt_pb.BacktestRequest(
        portfolio_id=portfolio_id, schedule=bt_pb.RebalanceSchedule(frequency=bt_pb.REBALANCE_FREQUENCY_DRIFT)
    )
    with pytest.raises(grpc.RpcError) as drift:
        list(commands.Backtest(bad, timeout=30))
    assert drift.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(drift.value) == ["schedule"]
    early = bt_pb.BacktestRequest(portfolio_id=portfolio_id, end=_ts("1990-06-30"))
    with pytest.raises(grpc.RpcError) as short:
        list(commands.Backtest(early, timeout=30))
    assert short.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_types(short.value) == ["INSUFFICIENT_HISTORY"]
    with pytest.raises(grpc.RpcError) as unknown:
        queries.GetBacktest(query_pb.GetBacktestRequest(backtest_id=str(uuid.uuid4())), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
