"""GetRebalance and ListRebalanceEvents end to end: real gRPC server, real PostgreSQL + TimescaleDB.

Recommendations are created through the trading command service with given prices (no stored market data
needed), so every number below is hand-checkable: 10 shares at 100 plus 1000 cash, sold down to a target.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2

from stratopt.identity import LOCAL_PRINCIPAL
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as tpb
from tests.command_side.test_optimize_service import field_violations

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def portfolio(trading: Any, approval_limit: float = 10_000.0) -> str:
    """A portfolio of 10 XYZ shares and 1000 cash (value 2000 at a price of 100)."""
    portfolio_id = unique("rq")
    trading.UpsertHoldings(
        tpb.UpsertHoldingsRequest(
            portfolio_id=portfolio_id, positions=[tpb.Position(symbol="XYZ", shares=10)], cash=1000.0
        )
    )
    trading.UpsertRebalancePolicy(
        tpb.UpsertRebalancePolicyRequest(
            portfolio_id=portfolio_id, policy=tpb.RebalancePolicy(approval_limit=approval_limit)
        )
    )
    return portfolio_id


def generate(trading: Any, portfolio_id: str, target: float) -> tpb.RebalanceRecommendation:
    request = tpb.GenerateRebalanceRequest(
        portfolio_id=portfolio_id, target_weights={"XYZ": target}, prices={"XYZ": 100.0}
    )
    recommendation: tpb.RebalanceRecommendation = trading.GenerateRebalance(request).recommendation
    return recommendation


def expect_invalid(call: Any, request: Any) -> list[str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return field_violations(caught.value)


def test_get_rebalance_returns_the_recommendation_as_created(trading: Any, queries: Any) -> None:
    portfolio_id = portfolio(trading)
    created = generate(trading, portfolio_id, 0.25)  # 2000 × 0.25 = 500 = 5 shares: sell 5
    assert [(t.symbol, t.side, t.shares, t.value) for t in created.trades] == [("XYZ", tpb.TRADE_SIDE_SELL, 5, 500.0)]
    assert created.status == tpb.RECOMMENDATION_STATUS_AUTO_APPROVED
    assert created.drift_before == pytest.approx(0.5)  # |0.5 - 0.25| + |0.5 - 0.75|
    assert created.drift_after == 0.0
    read = queries.GetRebalance(query_pb.GetRebalanceRequest(recommendation_id=created.recommendation_id))
    assert read.recommendation == created


def test_get_rebalance_errors(queries: Any) -> None:
    assert expect_invalid(queries.GetRebalance, query_pb.GetRebalanceRequest(recommendation_id="nope")) == [
        "recommendation_id"
    ]
    with pytest.raises(grpc.RpcError) as caught:
        queries.GetRebalance(query_pb.GetRebalanceRequest(recommendation_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_rebalance_events_pages_newest_first(trading: Any, queries: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = portfolio(trading, approval_limit=100.0)
    # Each decided before the next is generated (a new recommendation supersedes a pending one). The approved
    # SELL of 5 stays open, so the next ones plan from 5 shares (a weight of 0.25): 0.5 buys $500, 0.35 $200.
    ids = [generate(trading, portfolio_id, 0.25).recommendation_id]
    trading.ApproveRebalance(tpb.ApproveRebalanceRequest(recommendation_id=ids[0]))
    ids.append(generate(trading, portfolio_id, 0.5).recommendation_id)
    trading.RejectRebalance(tpb.RejectRebalanceRequest(recommendation_id=ids[1], reason="no"))
    ids.append(generate(trading, portfolio_id, 0.35).recommendation_id)

    stored = db.execute(
        """SELECT event_id::text, recommendation_id::text, event_type FROM rebalance_events WHERE portfolio_id = %s
           ORDER BY "timestamp" DESC, event_id DESC""",
        [portfolio_id],
    ).fetchall()
    assert [row[2] for row in stored] == ["CREATED", "REJECTED", "CREATED", "APPROVED", "CREATED"]

    seen: list[tpb.RebalanceEvent] = []
    token = ""
    pages = 0
    while True:
        page = queries.ListRebalanceEvents(
            query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id, page_size=2, page_token=token)
        )
        seen += page.events
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [(e.event_id, e.recommendation_id, e.event_type) for e in seen] == stored
    assert [e.recommendation_id for e in seen if e.event_type == "CREATED"] == ids[::-1]
    by_type = {e.event_type: e for e in seen}
    local = LOCAL_PRINCIPAL.name  # the test server runs without authentication
    assert (by_type["APPROVED"].actor, by_type["APPROVED"].status) == (local, tpb.RECOMMENDATION_STATUS_APPROVED)
    assert (by_type["REJECTED"].actor, by_type["REJECTED"].status) == (local, tpb.RECOMMENDATION_STATUS_REJECTED)
    assert all(e.portfolio_id == portfolio_id for e in seen)
    assert by_type["APPROVED"].total_trade_value == 500.0  # 5 shares at 100
    stamps = [e.timestamp.ToDatetime() for e in seen]
    assert stamps == sorted(stamps, reverse=True)

    # [start, end): from the APPROVED (inclusive) to the newest CREATED (exclusive).
    start, end = seen[3].timestamp, seen[0].timestamp
    window = queries.ListRebalanceEvents(
        query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id, start=start, end=end)
    )
    assert [e.event_id for e in window.events] == [e.event_id for e in seen[1:4]]
    assert window.next_page_token == ""

    # A token is bound to its portfolio and range.
    first = queries.ListRebalanceEvents(query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id, page_size=1))
    other = query_pb.ListRebalanceEventsRequest(portfolio_id=unique("other"), page_token=first.next_page_token)
    assert expect_invalid(queries.ListRebalanceEvents, other) == ["page_token"]
    narrowed = query_pb.ListRebalanceEventsRequest(
        portfolio_id=portfolio_id, start=start, page_token=first.next_page_token
    )
    assert expect_invalid(queries.ListRebalanceEvents, narrowed) == ["page_token"]


def test_list_rebalance_events_validation_and_empty_portfolio(queries: Any) -> None:
    empty = queries.ListRebalanceEvents(query_pb.ListRebalanceEventsRequest(portfolio_id=unique("none")))
    assert list(empty.events) == [] and empty.next_page_token == ""
    assert expect_invalid(queries.ListRebalanceEvents, query_pb.ListRebalanceEventsRequest()) == ["portfolio_id"]
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(datetime.now(UTC))
    before = timestamp_pb2.Timestamp()
    before.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    crossed = query_pb.ListRebalanceEventsRequest(portfolio_id="p", start=now, end=before)
    assert expect_invalid(queries.ListRebalanceEvents, crossed) == ["end"]
    bad_token = query_pb.ListRebalanceEventsRequest(portfolio_id="p", page_token="garbage!")
    assert expect_invalid(queries.ListRebalanceEvents, bad_token) == ["page_token"]
