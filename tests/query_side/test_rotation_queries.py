"""The query side's rotation reads through a real gRPC channel: latest decision, history pages, reason counts.

The decisions come from RunRotationCycle on the stored S&P 500 prices (the hand-worked portfolio of
``tests.command_side.test_rotation_service``): the first cycle buys three names (three BUY_TOP_K, WMT's
HOLD_HYSTERESIS) and trades; its orders stay open, so the next two plan from the position they will leave and hold
those names (three HOLD_TOP_K each, WMT's HOLD_HYSTERESIS); the second is held by the kill-switch, the third is
outside a window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import query_service_pb2_grpc as query_grpc
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc
from tests.command_side.test_rotation_service import IN_WINDOW, portfolio, rotation, run

__all__ = ["portfolio", "rotation"]  # fixtures used below

pytestmark = pytest.mark.integration


def test_latest_history_and_reason_counts_of_three_cycles(
    rotation: rot_grpc.RotationCommandServiceStub,
    portfolio: tuple[str, str],
    queries: query_grpc.OptimizationQueryServiceStub,
) -> None:
    portfolio_id, _ = portfolio
    traded = run(rotation, portfolio_id).decision
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=True, reason="halt"))
    held = run(rotation, portfolio_id).decision
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=False, reason="resume"))
    between = run(rotation, portfolio_id, IN_WINDOW.replace(hour=15, minute=0)).decision

    latest = queries.GetLatestRotationDecision(query_pb.GetLatestRotationDecisionRequest(portfolio_id=portfolio_id))
    assert latest.decision == between  # the query side reads back exactly what the command side answered

    first = queries.ListRotationDecisions(query_pb.ListRotationDecisionsRequest(portfolio_id=portfolio_id, page_size=2))
    assert list(first.decisions) == [between, held] and first.next_page_token
    second = queries.ListRotationDecisions(
        query_pb.ListRotationDecisionsRequest(portfolio_id=portfolio_id, page_size=2, page_token=first.next_page_token)
    )
    assert list(second.decisions) == [traded] and not second.next_page_token

    counts = queries.CountRotationReasons(
        query_pb.CountRotationReasonsRequest(portfolio_id=portfolio_id, bucket_width=Duration(seconds=10**9))
    )
    (bucket,) = counts.buckets
    assert (bucket.decisions, bucket.trades, bucket.holds) == (3, 1, 2)
    assert dict(bucket.reasons) == {"BUY_TOP_K": 3, "HOLD_TOP_K": 6, "HOLD_HYSTERESIS": 3}
    assert dict(bucket.hold_reasons) == {"KILL_SWITCH": 1, "BLOCKED_WINDOW": 1}
    # Weekly buckets start on the Unix epoch's weekday (Thursday 1970-01-01), worked out here from the decision time.
    weekly = queries.CountRotationReasons(
        query_pb.CountRotationReasonsRequest(portfolio_id=portfolio_id, bucket_width=Duration(seconds=7 * 86400))
    )
    epoch, week = datetime(1970, 1, 1, tzinfo=UTC), timedelta(days=7)
    starts = [epoch + (d.decided_at.ToDatetime(tzinfo=UTC) - epoch) // week * week for d in (traded, held, between)]
    assert [b.bucket_start.ToDatetime(tzinfo=UTC) for b in weekly.buckets] == sorted(set(starts))
    assert sum(b.decisions for b in weekly.buckets) == 3


def test_a_portfolio_without_decisions(queries: query_grpc.OptimizationQueryServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        queries.GetLatestRotationDecision(query_pb.GetLatestRotationDecisionRequest(portfolio_id="never-rotated"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    empty = queries.ListRotationDecisions(query_pb.ListRotationDecisionsRequest(portfolio_id="never-rotated"))
    assert list(empty.decisions) == [] and not empty.next_page_token
    with pytest.raises(grpc.RpcError) as error:
        queries.CountRotationReasons(
            query_pb.CountRotationReasonsRequest(portfolio_id="never-rotated", bucket_width=Duration(nanos=1000))
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
