"""GetRebalanceStatistics through gRPC after real rebalancing flows (generate, approve, reject, auto-approve).

Truth: the counts of what the test did, and the sums of the trade values and costs the GenerateRebalance answers
reported for the approved recommendations.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.protobuf import duration_pb2

from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as tpb
from tests.command_side.test_rebalancing import setup

pytestmark = pytest.mark.integration


def generate(trading: Any, portfolio_id: str, target: float) -> tpb.RebalanceRecommendation:
    recommendation: tpb.RebalanceRecommendation = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": target})
    ).recommendation
    return recommendation


def test_counts_values_and_costs_of_approved_recommendations(
    trading: Any, queries: Any, stored_prices: dict[str, str]
) -> None:
    portfolio_id = f"stats-{uuid.uuid4().hex[:8]}"
    setup(
        trading,
        portfolio_id,
        [tpb.Position(symbol="AAPL", shares=10)],
        1000.0,
        approval_limit=100.0,
        commission_per_trade=1.5,
    )
    approved = generate(trading, portfolio_id, 0.0)
    trading.ApproveRebalance(tpb.ApproveRebalanceRequest(recommendation_id=approved.recommendation_id))
    rejected = generate(trading, portfolio_id, 0.2)
    trading.RejectRebalance(tpb.RejectRebalanceRequest(recommendation_id=rejected.recommendation_id, reason="no"))
    setup(
        trading,
        portfolio_id,
        [tpb.Position(symbol="AAPL", shares=10)],
        1000.0,
        approval_limit=1e9,
        commission_per_trade=1.5,
    )
    auto = generate(trading, portfolio_id, 0.3)
    assert auto.status == tpb.RECOMMENDATION_STATUS_AUTO_APPROVED

    answer = queries.GetRebalanceStatistics(
        query_pb.GetRebalanceStatisticsRequest(
            portfolio_id=portfolio_id, bucket_width=duration_pb2.Duration(seconds=30 * 86_400)
        )
    )
    buckets = list(answer.buckets)
    assert 1 <= len(buckets) <= 2  # a second of events: one 30-day bucket (two only across a border)

    def total(name: str) -> float:
        return sum(getattr(b, name) for b in buckets)

    assert tuple(total(n) for n in ("created", "approved", "rejected", "expired")) == (3, 2, 1, 0)
    value = approved.total_trade_value + auto.total_trade_value
    cost = approved.total_cost + auto.total_cost
    assert total("approved_trade_value") == pytest.approx(value, rel=1e-12)
    assert total("approved_cost") == pytest.approx(cost, rel=1e-12) and cost > 0
    if len(buckets) == 1:
        assert buckets[0].cost_bps == pytest.approx(1e4 * cost / value, rel=1e-12)

    empty = queries.GetRebalanceStatistics(query_pb.GetRebalanceStatisticsRequest(portfolio_id="stats-nobody"))
    assert list(empty.buckets) == []
