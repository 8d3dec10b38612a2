"""Helpers of the bad-input tests: call any RPC of both sides, read its status, count every table's rows."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2  # type: ignore[attr-defined]
from grpc_status import rpc_status
from psycopg import sql

from stratopt.v1 import backtest_pb2 as bt_pb
from stratopt.v1 import (
    command_service_pb2,
    execution_service_pb2,
    query_service_pb2,
    rotation_service_pb2,
    trading_service_pb2,
)
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import execution_service_pb2 as ex_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import types_pb2 as pb

T0 = 1_600_000_000
"""A valid timestamp (2020-09-13), seconds."""
DAY = 86_400
RECOMMENDATION = "00000000-0000-4000-8000-000000000000"
"""A well-formed recommendation id no recommendation has."""

SERVICES = (
    command_service_pb2.DESCRIPTOR.services_by_name["OptimizationCommandService"],
    trading_service_pb2.DESCRIPTOR.services_by_name["TradingCommandService"],
    rotation_service_pb2.DESCRIPTOR.services_by_name["RotationCommandService"],
    execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionCommandService"],
    query_service_pb2.DESCRIPTOR.services_by_name["OptimizationQueryService"],
)
"""Every service of the contract, both sides."""
METHODS = tuple(method for service in SERVICES for method in service.methods)
"""Every RPC of the contract (descriptors), in declaration order."""


@dataclass(frozen=True)
class Outcome:
    """What an RPC answered: its code, message and the ``BadRequest`` field paths of its details."""

    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...]
    trailer_bytes: int


STREAM_WAIT_S = 1.0
"""How long a server-streaming call is watched for an error before it counts as accepted."""


def call(channel: grpc.Channel, method: Any, request: Message | Sequence[Message], timeout_s: float = 60) -> Outcome:
    """Call ``method`` (a ``MethodDescriptor``) with ``request`` (a list of messages for a client stream).

    Returns
    -------
    Outcome
        OK with no fields for an answer; otherwise the status code, message and field paths.
    """
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = type(request[0] if isinstance(request, Sequence) else request).SerializeToString
    stub: Any
    if method.server_streaming and method.client_streaming:  # BatchOptimizeStream: read every answer
        assert isinstance(request, Sequence)
        stub = channel.stream_stream(path, request_serializer=serialize, response_deserializer=bytes)
        try:
            for _ in stub(iter(request), timeout=timeout_s):
                pass
        except grpc.RpcError as error:
            return outcome_of(error)
        return Outcome(grpc.StatusCode.OK, "", (), 0)
    if method.server_streaming:
        # A live stream (WatchEvents) does not end: a request still open after STREAM_WAIT_S was accepted.
        stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=bytes)
        try:
            for _ in stream(request, timeout=STREAM_WAIT_S):
                pass
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                return Outcome(grpc.StatusCode.OK, "", (), 0)
            return outcome_of(error)
        return Outcome(grpc.StatusCode.OK, "", (), 0)
    if method.client_streaming:
        assert isinstance(request, Sequence)
        stub = channel.stream_unary(path, request_serializer=serialize, response_deserializer=bytes)
        arguments: Any = iter(request)
    else:
        stub = channel.unary_unary(path, request_serializer=serialize, response_deserializer=bytes)
        arguments = request
    try:
        stub(arguments, timeout=timeout_s)
    except grpc.RpcError as error:
        return outcome_of(error)
    return Outcome(grpc.StatusCode.OK, "", (), 0)


def outcome_of(error: Any) -> Outcome:
    """The outcome of a failed call (an ``grpc.RpcError`` that is also a ``grpc.Call``)."""
    fields: list[str] = []
    status = rpc_status.from_call(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                fields.extend(v.field for v in bad_request.field_violations)
    trailers = error.trailing_metadata() or ()
    size = sum(len(key) + len(value) for key, value in trailers)
    return Outcome(error.code(), error.details() or "", tuple(fields), size)


def row_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every table of the ``public`` schema (hypertables included), by table name."""
    tables = [
        row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    ]
    counts = {}
    for table in tables:
        row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    return counts


def changed_tables(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Tables whose row count differs, with both counts."""
    return {
        t: (before.get(t, 0), after.get(t, 0)) for t in before.keys() | after.keys() if before.get(t) != after.get(t)
    }


# --- valid requests, which the tests break one field of ------------------------------------------------------------


def optimize() -> cmd_pb.OptimizeRequest:
    request = cmd_pb.OptimizeRequest(portfolio_id="corpus", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    request.strategies.add(symbol="A", sector="tech", returns=[0.01, -0.02, 0.03, 0.0])
    request.strategies.add(symbol="B", sector="energy", returns=[0.0, 0.01, -0.01, 0.02])
    for k in range(4):
        request.returns.timestamps.add(seconds=T0 + k * DAY)
    return request


def with_market_data(request: cmd_pb.OptimizeRequest) -> cmd_pb.OptimizeRequest:
    for strategy in request.strategies:
        strategy.ClearField("returns")
    request.market_data.lookback_periods = 10
    return request


def configuration() -> cmd_pb.UpsertConfigurationRequest:
    request = cmd_pb.UpsertConfigurationRequest()
    config = request.configuration
    config.portfolio_id = "corpus"
    config.objective = pb.OBJECTIVE_MIN_VOLATILITY
    config.strategies.add(symbol="A")
    config.strategies.add(symbol="B")
    config.lookback_periods = 10
    return request


def frontier() -> cmd_pb.ComputeEfficientFrontierRequest:
    request = cmd_pb.ComputeEfficientFrontierRequest(points=5)
    request.problem.CopyFrom(optimize())
    return request


def bars() -> list[cmd_pb.IngestMarketDataRequest]:
    message = cmd_pb.IngestMarketDataRequest()
    message.bars.add(symbol="CORPUS", price=10.0).timestamp.seconds = T0
    return [message]


def allocate() -> trading_pb.AllocateSharesRequest:
    request = trading_pb.AllocateSharesRequest(portfolio_id="corpus", extra_cash=1000.0)
    request.targets.add(symbol="A", target_weight=0.5, price=10.0)
    request.targets.add(symbol="B", target_weight=0.5, price=20.0)
    request.holdings.add(symbol="A", shares=1, price=10.0)
    return request


def holdings() -> trading_pb.UpsertHoldingsRequest:
    request = trading_pb.UpsertHoldingsRequest(portfolio_id="corpus", cash=100.0)
    position = request.positions.add(symbol="A", shares=10, price=5.0)
    position.lots.add(lot_id="l1", shares=10, cost_basis=4.0).acquired.seconds = T0
    return request


def policy() -> trading_pb.UpsertRebalancePolicyRequest:
    request = trading_pb.UpsertRebalancePolicyRequest(portfolio_id="corpus")
    request.policy.drift_threshold = 0.05
    return request


def drift() -> trading_pb.CheckDriftRequest:
    return trading_pb.CheckDriftRequest(portfolio_id="corpus", target_weights={"A": 1.0}, prices={"A": 5.0})


def rebalance() -> trading_pb.GenerateRebalanceRequest:
    return trading_pb.GenerateRebalanceRequest(
        portfolio_id="corpus", target_weights={"A": 1.0}, prices={"A": 5.0}, request_id="r1"
    )


def history_token(payload: dict[str, Any] | str) -> str:
    raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def valid_requests() -> dict[str, Any]:
    """One valid request of every RPC, by ``Service.Method`` (a list of messages for IngestMarketData)."""
    return {
        "OptimizationCommandService.Optimize": optimize(),
        "OptimizationCommandService.BatchOptimize": cmd_pb.BatchOptimizeRequest(requests=[optimize()]),
        "OptimizationCommandService.BatchOptimizeStream": [cmd_pb.BatchOptimizeStreamRequest(requests=[optimize()])],
        "OptimizationCommandService.UpsertConfiguration": configuration(),
        "OptimizationCommandService.GetConfiguration": cmd_pb.GetConfigurationRequest(portfolio_id="corpus"),
        "OptimizationCommandService.ListConfigurations": cmd_pb.ListConfigurationsRequest(page_size=5),
        "OptimizationCommandService.RunConfiguration": cmd_pb.RunConfigurationRequest(portfolio_id="corpus"),
        "OptimizationCommandService.Backtest": bt_pb.BacktestRequest(portfolio_id="corpus"),
        "OptimizationCommandService.ComputeEfficientFrontier": frontier(),
        "OptimizationCommandService.IngestMarketData": bars(),
        "TradingCommandService.AllocateShares": allocate(),
        "TradingCommandService.GetCachedAllocation": trading_pb.GetCachedAllocationRequest(cache_key="k"),
        "TradingCommandService.ClearAllocationCache": trading_pb.ClearAllocationCacheRequest(cache_key="k"),
        "TradingCommandService.UpsertHoldings": holdings(),
        "TradingCommandService.UpsertRebalancePolicy": policy(),
        "TradingCommandService.CheckDrift": drift(),
        "TradingCommandService.GenerateRebalance": rebalance(),
        "TradingCommandService.ApproveRebalance": trading_pb.ApproveRebalanceRequest(recommendation_id=RECOMMENDATION),
        "TradingCommandService.RejectRebalance": trading_pb.RejectRebalanceRequest(
            recommendation_id=RECOMMENDATION, reason="no"
        ),
        "RotationCommandService.IngestSignals": [
            rot_pb.IngestSignalsRequest(
                signal_set="corpus", signals=[rot_pb.Signal(symbol="AAA", time=Timestamp(seconds=T0), score=1.0)]
            )
        ],
        "RotationCommandService.IngestQuotes": [
            rot_pb.IngestQuotesRequest(
                quotes=[rot_pb.Quote(symbol="AAA", time=Timestamp(seconds=T0), bid=99.9, ask=100.1)]
            )
        ],
        "RotationCommandService.UpsertRotationConfiguration": rot_pb.UpsertRotationConfigurationRequest(
            configuration=rot_pb.RotationConfiguration(
                portfolio_id="corpus",
                enabled=True,
                signal_set="corpus",
                universe=[rot_pb.RotationMember(symbol="AAA"), rot_pb.RotationMember(symbol="BBB")],
            )
        ),
        "RotationCommandService.RunRotationCycle": rot_pb.RunRotationCycleRequest(portfolio_id="corpus"),
        "RotationCommandService.PauseRotationScheduler": rot_pb.PauseRotationSchedulerRequest(
            paused=False, reason="corpus"
        ),
        "RotationCommandService.SetKillSwitch": rot_pb.SetKillSwitchRequest(
            portfolio_id="corpus", engaged=False, reason="corpus"
        ),
        "ExecutionCommandService.ExecuteOrders": ex_pb.ExecuteOrdersRequest(portfolio_id="corpus"),
        "ExecutionCommandService.ReportFills": ex_pb.ReportFillsRequest(
            portfolio_id="corpus",
            fills=[
                ex_pb.Fill(
                    fill_id="corpus-fill",
                    order_id=RECOMMENDATION,
                    symbol="AAA",
                    side="BUY",
                    shares=1.0,
                    price=10.0,
                    filled_at=Timestamp(seconds=T0),
                )
            ],
        ),
        "ExecutionCommandService.ClaimOrders": ex_pb.ClaimOrdersRequest(portfolio_id="corpus", limit=5),
        "ExecutionCommandService.CancelOrders": ex_pb.CancelOrdersRequest(
            portfolio_id="corpus", order_ids=[RECOMMENDATION], reason="corpus"
        ),
        "ExecutionCommandService.Reconcile": ex_pb.ReconcileRequest(
            portfolio_id="corpus", positions=[ex_pb.ReportedPosition(symbol="AAA", shares=1.0)]
        ),
        "OptimizationQueryService.GetLatest": query_pb.GetLatestRequest(portfolio_id="corpus"),
        "OptimizationQueryService.GetHistory": query_pb.GetHistoryRequest(portfolio_id="corpus", page_size=5),
        "OptimizationQueryService.WatchEvents": query_pb.WatchEventsRequest(portfolio_ids=["corpus"]),
        "OptimizationQueryService.GetRealisedPerformance": query_pb.GetRealisedPerformanceRequest(
            portfolio_id="corpus"
        ),
        "OptimizationQueryService.GetWeightHistory": query_pb.GetWeightHistoryRequest(portfolio_id="corpus"),
        "OptimizationQueryService.ComparePortfolios": query_pb.ComparePortfoliosRequest(portfolio_ids=["corpus"]),
        "OptimizationQueryService.GetRebalanceStatistics": query_pb.GetRebalanceStatisticsRequest(
            portfolio_id="corpus"
        ),
        "OptimizationQueryService.ExportData": query_pb.ExportDataRequest(
            portfolio_id="corpus", dataset=query_pb.EXPORT_DATASET_OPTIMIZATION_HISTORY
        ),
        "OptimizationQueryService.GetPortfolioAnalytics": query_pb.GetPortfolioAnalyticsRequest(portfolio_id="corpus"),
        "OptimizationQueryService.GetBacktest": query_pb.GetBacktestRequest(
            backtest_id="00000000-0000-4000-8000-000000000000"
        ),
        "OptimizationQueryService.ListBacktests": query_pb.ListBacktestsRequest(portfolio_id="corpus"),
        "OptimizationQueryService.GetSectorExposure": query_pb.GetSectorExposureRequest(portfolio_id="corpus"),
        "OptimizationQueryService.ListRecomputeJobs": query_pb.ListRecomputeJobsRequest(portfolio_id="corpus"),
        "OptimizationQueryService.GetRebalance": query_pb.GetRebalanceRequest(recommendation_id=RECOMMENDATION),
        "OptimizationQueryService.ListRebalanceEvents": query_pb.ListRebalanceEventsRequest(portfolio_id="corpus"),
        "OptimizationQueryService.GetLatestRotationDecision": query_pb.GetLatestRotationDecisionRequest(
            portfolio_id="corpus"
        ),
        "OptimizationQueryService.ListRotationDecisions": query_pb.ListRotationDecisionsRequest(
            portfolio_id="corpus", page_size=5
        ),
        "OptimizationQueryService.CountRotationReasons": query_pb.CountRotationReasonsRequest(portfolio_id="corpus"),
    }
