"""ExportData through the real gRPC server on stored events, read back with pyarrow.

Truth: the same rows read through GetHistory and ListRebalanceEvents (every page), and the stored turnover and
metadata read with SQL. The portfolio's runs: two on the bundled S&P 500 closes and six on caller's moments.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pyarrow as pa
import pytest
from google.protobuf import timestamp_pb2

from query_side.export import (
    HISTORY_SCHEMA,
    REBALANCE_EVENTS_SCHEMA,
    WEIGHTS_SCHEMA,
    ipc_messages,
    record_batch,
)
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as tpb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_rebalancing import setup

pytestmark = pytest.mark.integration

HISTORY = query_pb.EXPORT_DATASET_OPTIMIZATION_HISTORY
WEIGHTS = query_pb.EXPORT_DATASET_WEIGHTS
REBALANCE = query_pb.EXPORT_DATASET_REBALANCE_EVENTS
SYMBOLS = ("AAPL", "JPM", "KO", "XOM")


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def export(queries: Any, portfolio_id: str, dataset: int, **fields: Any) -> tuple[list[int], pa.Table]:
    """Rows per message and every message's batch concatenated (each message read on its own)."""
    counts, tables = [], []
    for message in queries.ExportData(
        query_pb.ExportDataRequest(portfolio_id=portfolio_id, dataset=dataset, **fields), timeout=60
    ):
        table = pa.ipc.open_stream(message.arrow_ipc_stream).read_all()
        assert table.num_rows == message.row_count
        counts.append(message.row_count)
        tables.append(table)
    assert tables, "an export sends at least one message"
    assert all(t.schema == tables[0].schema for t in tables)
    return counts, pa.concat_tables(tables)


@pytest.fixture(scope="module")
def portfolio(commands: Any, stored_prices: dict[str, str]) -> str:
    """A portfolio with 2 runs on stored closes and 6 on moments (3 or 4 symbols, a zero weight or two)."""
    assert set(SYMBOLS) <= set(stored_prices)
    portfolio_id = f"export-{uuid.uuid4().hex[:8]}"
    for end in ("2020-12-31", "2021-06-30"):
        commands.Optimize(
            cmd_pb.OptimizeRequest(
                portfolio_id=portfolio_id,
                strategies=[pb.Strategy(symbol=s) for s in SYMBOLS],
                market_data=pb.MarketDataWindow(
                    start=stamp(datetime(2018, 1, 1, tzinfo=UTC)),
                    end=stamp(datetime.fromisoformat(end).replace(tzinfo=UTC)),
                ),
                objective=pb.OBJECTIVE_MIN_VOLATILITY,
            ),
            timeout=120,
        )
    for k in range(6):
        commands.Optimize(
            cmd_pb.OptimizeRequest(
                portfolio_id=portfolio_id,
                request_id=f"moments-{k}",
                strategies=[pb.Strategy(symbol=s) for s in ("A", "B", "C")],
                moments=pb.MomentsInput(
                    expected_returns=[0.08, 0.05, 0.03],
                    covariance=[0.04 + 0.01 * k, 0.0, 0.0, 0.0, 0.02, 0.0, 0.0, 0.0, 0.01 + 0.005 * k],
                ),
                objective=pb.OBJECTIVE_MIN_VOLATILITY,
            ),
            timeout=60,
        )
    return portfolio_id


def history(queries: Any, portfolio_id: str) -> list[pb.PortfolioOptimizedEvent]:
    """Every event through GetHistory, oldest first."""
    events: list[pb.PortfolioOptimizedEvent] = []
    request = query_pb.GetHistoryRequest(portfolio_id=portfolio_id, page_size=3)
    while True:
        page = queries.GetHistory(request, timeout=30)
        events.extend(page.events)
        if not page.next_page_token:
            return events[::-1]
        request.page_token = page.next_page_token


def weight_rows(events: list[pb.PortfolioOptimizedEvent]) -> list[tuple[datetime, str, str, float]]:
    return [
        (e.timestamp.ToDatetime(tzinfo=UTC), e.event_id, symbol, weight)
        for e in events
        for symbol, weight in sorted(e.weights.items())
    ]


def test_optimization_history_is_every_event_with_its_stored_figures(
    queries: Any, portfolio: str, db: psycopg.Connection[Any]
) -> None:
    events = history(queries, portfolio)
    assert len(events) == 8
    counts, table = export(queries, portfolio, HISTORY)
    assert counts == [8] and table.schema == HISTORY_SCHEMA
    rows = table.to_pylist()
    stored = {
        str(event_id): (turnover, metadata)
        for event_id, turnover, metadata in db.execute(
            "SELECT event_id, turnover, metadata FROM portfolio_optimized WHERE portfolio_id = %s", [portfolio]
        ).fetchall()
    }
    for row, event in zip(rows, events, strict=True):
        assert row["event_id"] == event.event_id
        assert row["timestamp"] == event.timestamp.ToDatetime(tzinfo=UTC)
        assert (row["portfolio_id"], row["configuration_version"]) == (portfolio, event.configuration_version)
        assert row["request_id"] == (event.request_id or None)
        assert row["objective"] == pb.Objective.Name(event.objective)
        assert (row["expected_return"], row["volatility"], row["sharpe_ratio"]) == (
            event.expected_return,
            event.volatility,
            event.sharpe_ratio,
        )
        turnover, metadata = stored[event.event_id]
        assert row["turnover"] == turnover
        assert json.loads(row["metadata"]) == metadata
        if event.metadata.HasField("window_end"):
            assert row["window_end"] == event.metadata.window_end.ToDatetime(tzinfo=UTC)
            assert row["window_start"] == event.metadata.window_start.ToDatetime(tzinfo=UTC)
        else:
            assert row["window_start"] is None and row["window_end"] is None
    assert rows[0]["turnover"] is None and all(r["turnover"] is not None for r in rows[1:])
    assert [r["window_end"] is not None for r in rows] == [True, True] + [False] * 6
    assert [r["request_id"] for r in rows[2:]] == [f"moments-{k}" for k in range(6)]


def test_weights_are_the_long_form_of_the_stored_weights(queries: Any, portfolio: str) -> None:
    truth = weight_rows(history(queries, portfolio))
    counts, table = export(queries, portfolio, WEIGHTS)
    assert table.schema == WEIGHTS_SCHEMA and counts == [len(truth)]
    assert [tuple(r.values()) for r in table.to_pylist()] == truth
    assert {r[2] for r in truth} == {*SYMBOLS, "A", "B", "C"}


@pytest.mark.parametrize(("dataset", "batch_rows"), [(HISTORY, 3), (WEIGHTS, 5), (WEIGHTS, 1)])
def test_a_multi_batch_export_has_every_row_once(queries: Any, portfolio: str, dataset: int, batch_rows: int) -> None:
    _, whole = export(queries, portfolio, dataset)
    counts, paged = export(queries, portfolio, dataset, max_batch_rows=batch_rows)
    full, rest = divmod(whole.num_rows, batch_rows)
    assert counts == [batch_rows] * full + ([rest] if rest else [])
    assert paged.equals(whole)
    keys = [(r["timestamp"], r["event_id"], r.get("symbol")) for r in paged.to_pylist()]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)


def test_a_time_range_exports_its_events_and_an_empty_one_its_schema(queries: Any, portfolio: str) -> None:
    events = history(queries, portfolio)
    start, end = events[2].timestamp, events[6].timestamp  # [start, end): events 2 to 5
    _, table = export(queries, portfolio, HISTORY, start=start, end=end, max_batch_rows=2)
    assert table.column("event_id").to_pylist() == [e.event_id for e in events[2:6]]
    _, weights = export(queries, portfolio, WEIGHTS, start=start, end=end, max_batch_rows=4)
    assert [tuple(r.values()) for r in weights.to_pylist()] == weight_rows(events[2:6])

    before = stamp(datetime(2001, 1, 1, tzinfo=UTC))
    counts, empty = export(queries, portfolio, WEIGHTS, end=before)
    assert counts == [0] and empty.schema == WEIGHTS_SCHEMA


def test_rebalance_events_are_every_event_of_the_portfolio(trading: Any, queries: Any) -> None:
    portfolio_id = f"export-rebalance-{uuid.uuid4().hex[:8]}"
    setup(trading, portfolio_id, [tpb.Position(symbol="AAPL", shares=10)], 1000.0, approval_limit=100.0)
    for target, decide in ((0.0, "approve"), (0.2, "reject")):
        recommendation = trading.GenerateRebalance(
            tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": target})
        ).recommendation
        if decide == "approve":
            trading.ApproveRebalance(tpb.ApproveRebalanceRequest(recommendation_id=recommendation.recommendation_id))
        else:
            trading.RejectRebalance(
                tpb.RejectRebalanceRequest(recommendation_id=recommendation.recommendation_id, reason="no")
            )
    allocation = tpb.AllocateSharesRequest(portfolio_id=portfolio_id, extra_cash=1000.0)
    allocation.targets.add(symbol="A", target_weight=1.0, price=10.0)
    trading.AllocateShares(allocation)

    truth: list[tpb.RebalanceEvent] = []
    page = query_pb.ListRebalanceEventsResponse()
    while not truth or page.next_page_token:
        page = queries.ListRebalanceEvents(
            query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id, page_token=page.next_page_token)
        )
        truth.extend(page.events)
    truth.reverse()
    assert [e.event_type for e in truth] == ["CREATED", "APPROVED", "CREATED", "REJECTED", "SHARES_ALLOCATED"]

    counts, table = export(queries, portfolio_id, REBALANCE, max_batch_rows=2)
    assert counts == [2, 2, 1] and table.schema == REBALANCE_EVENTS_SCHEMA
    for row, event in zip(table.to_pylist(), truth, strict=True):
        assert row == {
            "timestamp": event.timestamp.ToDatetime(tzinfo=UTC),
            "event_id": event.event_id,
            "portfolio_id": portfolio_id,
            "recommendation_id": event.recommendation_id or None,
            "event_type": event.event_type,
            "status": row["status"],
            "actor": event.actor,
            "total_trade_value": event.total_trade_value,
        }
        assert tpb.RecommendationStatus.Name(event.status).endswith(row["status"])


def test_a_portfolio_without_rows_is_not_found(queries: Any, portfolio: str) -> None:
    for portfolio_id, dataset in (("export-nobody", HISTORY), (portfolio, REBALANCE)):
        with pytest.raises(grpc.RpcError) as caught:
            export(queries, portfolio_id, dataset)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_large_batch_is_split_into_messages_under_the_byte_limit() -> None:
    rows = [
        {"timestamp": datetime(2024, 1, 1, tzinfo=UTC), "event_id": str(k), "symbol": "S" * 1000, "weight": k / 7}
        for k in range(100)
    ]
    batch = record_batch(WEIGHTS_SCHEMA, rows)
    messages = list(ipc_messages(batch, max_bytes=20_000))
    assert len(messages) > 4 and all(len(data) <= 20_000 for data, _ in messages)
    parts = [pa.ipc.open_stream(data).read_all() for data, _ in messages]
    assert [p.num_rows for p in parts] == [rows for _, rows in messages]
    assert pa.concat_tables(parts).to_pylist() == rows


def test_backtest_points_are_the_stored_paths(commands: Any, queries: Any, stored_prices: dict[str, str]) -> None:
    """Two backtests of one portfolio, exported in small batches, equal their GetBacktest paths row for row."""
    from stratopt.v1 import backtest_pb2 as bt_pb

    portfolio_id = f"export-bt-{uuid.uuid4().hex[:8]}"
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=s) for s in ("AAPL", "KO", "XOM")],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        enabled=True,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    truth = []
    for year in (2017, 2018):
        request = bt_pb.BacktestRequest(
            portfolio_id=portfolio_id, start=stamp(datetime(year, 1, 1, tzinfo=UTC)),
            end=stamp(datetime(year, 3, 31, tzinfo=UTC)),
        )  # fmt: skip
        summary = [m.result for m in commands.Backtest(request, timeout=120) if m.HasField("result")][-1]
        stored = queries.GetBacktest(query_pb.GetBacktestRequest(backtest_id=summary.backtest_id), timeout=10)
        truth += [
            (summary.backtest_id, p.timestamp.ToDatetime(tzinfo=UTC), p.equity, list(p.weights), p.cost)
            for p in stored.points
        ]
    counts, table = export(queries, portfolio_id, query_pb.EXPORT_DATASET_BACKTEST_POINTS, max_batch_rows=7)
    assert sum(counts) == len(truth) and max(counts) == 7
    rows = table.to_pylist()
    assert [(r["backtest_id"], r["timestamp"], r["equity"], r["weights"], r["cost"]) for r in rows] == truth
    assert all(r["symbols"] == ["AAPL", "KO", "XOM"] for r in rows)
    ranged = export(
        queries, portfolio_id, query_pb.EXPORT_DATASET_BACKTEST_POINTS, start=stamp(datetime(2018, 1, 1, tzinfo=UTC))
    )[1]
    assert ranged.num_rows == sum(1 for t in truth if t[1].year == 2018)
