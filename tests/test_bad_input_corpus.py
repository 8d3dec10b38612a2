"""A bounded corpus of bad and hostile requests, every RPC of both sides, against the real server.

Each case is one valid request with one bad field (a NUL in a string of every kind, a 10 KB id or symbol, a
timestamp outside 0001–9999 or with ``nanos`` ≥ 1e9, an invalid Duration, a page token that is garbage, too long or
decodes to a NUL, a frontier method or risk measure the frontier does not have). The server runs on real
PostgreSQL + TimescaleDB over a real gRPC channel (``tests/conftest.py``); each case asserts the exact status code,
that the ``google.rpc.BadRequest`` detail names exactly the field at fault, that the message is short (at most
1 KiB, never the 10 KB value) and that no table of the database gained or lost a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from stratopt.request_limits import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS
from stratopt.v1 import backtest_pb2 as bt_pb
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import execution_service_pb2 as ex_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import types_pb2 as pb
from tests.bad_input import (
    METHODS,
    RECOMMENDATION,
    T0,
    allocate,
    bars,
    call,
    changed_tables,
    configuration,
    drift,
    frontier,
    history_token,
    holdings,
    optimize,
    policy,
    rebalance,
    row_counts,
    with_market_data,
)

pytestmark = pytest.mark.integration

NUL = "a\x00b"
LONG = "x" * 10_000
INVALID = grpc.StatusCode.INVALID_ARGUMENT
BY_NAME = {f"{m.containing_service.name}.{m.name}": m for m in METHODS}


# --- the corpus -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad request: the RPC (``Service.Method``), the request and the field it must name."""

    id: str
    rpc: str
    build: Callable[[], Message | Sequence[Message]]
    field: str
    code: grpc.StatusCode = INVALID


def _set(make: Callable[[], Any], change: Callable[[Any], object]) -> Callable[[], Any]:
    def build() -> Any:
        request = make()
        change(request)
        return request

    return build


def _field(name: str, value: Any) -> Callable[[Any], None]:
    def change(message: Any) -> None:
        target = message
        *path, last = name.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)

    return change


def _ts(path: str, seconds: int, nanos: int = 0) -> Callable[[Any], None]:
    def change(message: Any) -> None:
        target = message
        for part in path.split("."):
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        target.seconds, target.nanos = seconds, nanos

    return change


OPT = "OptimizationCommandService."
TRADE = "TradingCommandService."
QUERY = "OptimizationQueryService."
ROT = "RotationCommandService."
EXE = "ExecutionCommandService."


def _fill_report() -> ex_pb.ReportFillsRequest:
    return ex_pb.ReportFillsRequest(
        portfolio_id="corpus",
        fills=[
            ex_pb.Fill(
                fill_id="f",
                order_id=RECOMMENDATION,
                symbol="AAA",
                side="BUY",
                shares=1.0,
                price=10.0,
                filled_at=Timestamp(seconds=T0),
            )
        ],
    )


def _signals() -> list[rot_pb.IngestSignalsRequest]:
    return [
        rot_pb.IngestSignalsRequest(
            signal_set="corpus",
            signals=[rot_pb.Signal(symbol="AAA", score=1.0), rot_pb.Signal(symbol="BBB", score=2.0)],
        )
    ]


def _quotes() -> list[rot_pb.IngestQuotesRequest]:
    return [
        rot_pb.IngestQuotesRequest(
            quotes=[rot_pb.Quote(symbol="AAA", bid=99.9, ask=100.1), rot_pb.Quote(symbol="BBB", bid=49.9, ask=50.0)]
        )
    ]


def _quote_change(change: Callable[[Any], object]) -> Callable[[], Any]:
    def build() -> Any:
        requests = _quotes()
        for quote in requests[0].quotes:
            quote.time.seconds = T0
        change(requests[0])
        return requests

    return build


def _rotation() -> rot_pb.UpsertRotationConfigurationRequest:
    return rot_pb.UpsertRotationConfigurationRequest(
        configuration=rot_pb.RotationConfiguration(
            portfolio_id="corpus-rotation",
            enabled=True,
            signal_set="corpus",
            universe=[rot_pb.RotationMember(symbol="AAA"), rot_pb.RotationMember(symbol="BBB")],
        )
    )


def _signal_change(change: Callable[[Any], object]) -> Callable[[], Any]:
    def build() -> Any:
        requests = _signals()
        for signal in requests[0].signals:
            signal.time.seconds = T0
        change(requests[0])
        return requests

    return build


BAD_TIMES = {"year-10000": (MAX_TIMESTAMP_SECONDS + 1, 0), "year-0": (MIN_TIMESTAMP_SECONDS - 1, 0)}
BAD_TIMES["nanos-1e9"] = (T0, 1_000_000_000)
BAD_TIMES["nanos-negative"] = (T0, -1)


def _nan_covariance(request: cmd_pb.OptimizeRequest) -> None:
    """Moments input whose covariance holds a NaN: refused by the engine, whose path the adapter translates."""
    for strategy in request.strategies:
        strategy.ClearField("returns")
    request.moments.CopyFrom(pb.MomentsInput(expected_returns=[0.1, 0.2], covariance=[0.04, float("nan"), 0.0, 0.09]))


def _cases() -> list[Case]:
    cases = [
        # Optimize: every string kind, ids too long, timestamps out of range
        Case("optimize-portfolio-nul", OPT + "Optimize", _set(optimize, _field("portfolio_id", NUL)), "portfolio_id"),
        Case("optimize-portfolio-10kb", OPT + "Optimize", _set(optimize, _field("portfolio_id", LONG)), "portfolio_id"),
        Case("optimize-request-nul", OPT + "Optimize", _set(optimize, _field("request_id", NUL)), "request_id"),
        Case("optimize-request-10kb", OPT + "Optimize", _set(optimize, _field("request_id", LONG)), "request_id"),
        Case(
            "optimize-symbol-nul",
            OPT + "Optimize",
            _set(optimize, lambda r: setattr(r.strategies[1], "symbol", NUL)),
            "strategies[1].symbol",
        ),
        Case(
            "optimize-symbol-65",
            OPT + "Optimize",
            _set(optimize, lambda r: setattr(r.strategies[0], "symbol", "S" * 65)),
            "strategies[0].symbol",
        ),
        Case(
            "optimize-sector-nul",
            OPT + "Optimize",
            _set(optimize, lambda r: setattr(r.strategies[0], "sector", NUL)),
            "strategies[0].sector",
        ),
        Case(
            "optimize-classification-key-nul",
            OPT + "Optimize",
            _set(optimize, lambda r: r.strategies[0].classifications.update({NUL: "x"})),
            "strategies[0].classifications",
        ),
        Case(
            "optimize-classification-value-nul",
            OPT + "Optimize",
            _set(optimize, lambda r: r.strategies[0].classifications.update({"gics": NUL})),
            "strategies[0].classifications[gics]",
        ),
        Case(
            "optimize-sector-limit-nul",
            OPT + "Optimize",
            _set(optimize, lambda r: r.constraints.sector_limits.add(sector=NUL, max_weight=0.5)),
            "constraints.sector_limits[0].sector",
        ),
        Case(
            "optimize-sector-limit-scheme-10kb",
            OPT + "Optimize",
            _set(optimize, lambda r: r.constraints.sector_limits.add(sector="tech", scheme=LONG, max_weight=0.5)),
            "constraints.sector_limits[0].scheme",
        ),
        Case(
            "optimize-bounds-key-nul",
            OPT + "Optimize",
            _set(optimize, lambda r: r.constraints.strategy_bounds[NUL].SetInParent()),
            "constraints.strategy_bounds",
        ),
        Case(
            "optimize-turnover-caps-key-10kb",
            OPT + "Optimize",
            _set(optimize, lambda r: r.constraints.turnover_caps.update({LONG: 0.1})),
            "constraints.turnover_caps",
        ),
        Case(
            "optimize-market-symbol-nul",
            OPT + "Optimize",
            _set(lambda: with_market_data(optimize()), _field("market_data.market_symbol", NUL)),
            "market_data.market_symbol",
        ),
        Case(
            "optimize-market-symbol-10kb",
            OPT + "Optimize",
            _set(lambda: with_market_data(optimize()), _field("market_data.market_symbol", LONG)),
            "market_data.market_symbol",
        ),
        Case(
            "optimize-window-start-year-10000",
            OPT + "Optimize",
            _set(lambda: with_market_data(optimize()), _ts("market_data.start", MAX_TIMESTAMP_SECONDS + 1)),
            "market_data.start",
        ),
        *(
            Case(
                f"optimize-returns-timestamp-{name}",
                OPT + "Optimize",
                _set(optimize, _ts("returns.timestamps.2", *value)),
                "returns.timestamps[2]",
            )
            for name, value in BAD_TIMES.items()
        ),
        # UpsertConfiguration: under configuration.
        Case(
            "upsert-configuration-portfolio-nul",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.portfolio_id", NUL)),
            "configuration.portfolio_id",
        ),
        Case(
            "upsert-configuration-market-symbol-10kb",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.market_symbol", LONG)),
            "configuration.market_symbol",
        ),
        Case(
            "upsert-configuration-symbol-nul",
            OPT + "UpsertConfiguration",
            _set(configuration, lambda r: setattr(r.configuration.strategies[1], "symbol", NUL)),
            "configuration.strategies[1].symbol",
        ),
        Case(
            "upsert-configuration-created-at-nanos",
            OPT + "UpsertConfiguration",
            _set(configuration, _ts("configuration.created_at", T0, 1_000_000_000)),
            "configuration.created_at",
        ),
        Case(
            "upsert-configuration-lookback-past-int32",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.lookback_periods", 2**32 - 1)),
            "configuration.lookback_periods",
        ),
        Case(
            "upsert-configuration-recompute-debounce-negative",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.recompute.debounce_seconds", -1.0)),
            "configuration.recompute.debounce_seconds",
        ),
        Case(
            "upsert-configuration-recompute-drift-above-two",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.recompute.drift_threshold", 2.5)),
            "configuration.recompute.drift_threshold",
        ),
        Case(
            "upsert-configuration-recompute-drift-zero",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.recompute.drift_threshold", 0.0)),
            "configuration.recompute.drift_threshold",
        ),
        Case(
            "upsert-configuration-recompute-debounce-nan",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.recompute.debounce_seconds", float("nan"))),
            "configuration.recompute.debounce_seconds",
        ),
        Case(
            "upsert-configuration-recompute-schedule-half-second",
            OPT + "UpsertConfiguration",
            _set(configuration, _field("configuration.recompute.schedule_interval_seconds", 0.5)),
            "configuration.recompute.schedule_interval_seconds",
        ),
        Case(
            "optimize-lookback-past-int32",
            OPT + "Optimize",
            _set(lambda: with_market_data(optimize()), _field("market_data.lookback_periods", 2**32 - 1)),
            "market_data.lookback_periods",
        ),
        # GetConfiguration, ListConfigurations, RunConfiguration
        Case(
            "get-configuration-nul",
            OPT + "GetConfiguration",
            lambda: cmd_pb.GetConfigurationRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "get-configuration-10kb",
            OPT + "GetConfiguration",
            lambda: cmd_pb.GetConfigurationRequest(portfolio_id=LONG),
            "portfolio_id",
        ),
        Case(
            "list-configurations-token-decodes-to-nul",
            OPT + "ListConfigurations",
            lambda: cmd_pb.ListConfigurationsRequest(page_token=history_token("configurations:v1:a\x00b")),
            "page_token",
        ),
        Case(
            "list-configurations-token-nul",
            OPT + "ListConfigurations",
            lambda: cmd_pb.ListConfigurationsRequest(page_token=NUL),
            "page_token",
        ),
        Case(
            "list-configurations-token-10kb",
            OPT + "ListConfigurations",
            lambda: cmd_pb.ListConfigurationsRequest(page_token=LONG),
            "page_token",
        ),
        Case(
            "list-configurations-token-garbage",
            OPT + "ListConfigurations",
            lambda: cmd_pb.ListConfigurationsRequest(page_token="!!not-a-token!!"),
            "page_token",
        ),
        Case(
            "run-configuration-nul",
            OPT + "RunConfiguration",
            lambda: cmd_pb.RunConfigurationRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "run-configuration-10kb",
            OPT + "RunConfiguration",
            lambda: cmd_pb.RunConfigurationRequest(portfolio_id=LONG),
            "portfolio_id",
        ),
        Case(
            "run-configuration-request-nul",
            OPT + "RunConfiguration",
            lambda: cmd_pb.RunConfigurationRequest(portfolio_id="corpus", request_id=NUL),
            "request_id",
        ),
        # Backtest: every setting named
        Case("backtest-empty", OPT + "Backtest", lambda: bt_pb.BacktestRequest(), "portfolio_id"),
        Case("backtest-nul", OPT + "Backtest", lambda: bt_pb.BacktestRequest(portfolio_id=NUL), "portfolio_id"),
        Case(
            "backtest-window-1",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(portfolio_id="corpus", estimation_periods=1),
            "estimation_periods",
        ),
        Case(
            "backtest-negative-cash",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(portfolio_id="corpus", initial_cash=-5),
            "initial_cash",
        ),
        Case(
            "backtest-nan-commission",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(
                portfolio_id="corpus", costs=bt_pb.BacktestCosts(commission_bps=float("nan"))
            ),
            "costs.commission_bps",
        ),
        Case(
            "backtest-band-without-drift",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(portfolio_id="corpus", schedule=bt_pb.RebalanceSchedule(absolute_band=0.05)),
            "schedule.frequency",
        ),
        Case(
            "backtest-unknown-frequency",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(portfolio_id="corpus", schedule=bt_pb.RebalanceSchedule(frequency=99)),  # type: ignore[arg-type]
            "schedule.frequency",
        ),
        Case(
            "backtest-impact-without-volume",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(portfolio_id="corpus", costs=bt_pb.BacktestCosts(impact_model=2)),  # type: ignore[arg-type]
            "costs.average_daily_volume",
        ),
        Case(
            "backtest-whole-shares-constant",
            OPT + "Backtest",
            lambda: bt_pb.BacktestRequest(
                portfolio_id="corpus", whole_shares=True, holding=bt_pb.BACKTEST_HOLDING_CONSTANT_WEIGHTS
            ),
            "whole_shares",
        ),
        Case(
            "backtest-start-after-end",
            OPT + "Backtest",
            _set(lambda: bt_pb.BacktestRequest(portfolio_id="corpus", end=Timestamp(seconds=0)), _ts("start", 10, 0)),
            "start",
        ),
        # ComputeEfficientFrontier: every path under problem., the method's own field when the method is at fault
        Case(
            "frontier-portfolio-nul",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, _field("problem.portfolio_id", NUL)),
            "problem.portfolio_id",
        ),
        Case(
            "frontier-symbol-10kb",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, lambda r: setattr(r.problem.strategies[0], "symbol", LONG)),
            "problem.strategies[0].symbol",
        ),
        Case(
            "frontier-timestamp-year-0",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, _ts("problem.returns.timestamps.0", MIN_TIMESTAMP_SECONDS - 1)),
            "problem.returns.timestamps[0]",
        ),
        Case(
            "frontier-risk-parity",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, _field("problem.method", pb.OPTIMIZATION_METHOD_RISK_PARITY)),
            "problem.method",
        ),
        Case(
            "frontier-hrp",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, _field("problem.method", pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY)),
            "problem.method",
        ),
        Case(
            "frontier-robust",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, _field("problem.method", pb.OPTIMIZATION_METHOD_ROBUST_OPTIMIZATION)),
            "problem.method",
        ),
        Case(
            "frontier-cvar",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, _field("problem.risk_parameters.risk_measure", pb.RISK_MEASURE_CVAR)),
            "problem.risk_parameters.risk_measure",
        ),
        Case(
            "frontier-crossed-bounds",
            OPT + "ComputeEfficientFrontier",
            _set(
                frontier,
                lambda r: (
                    _field("problem.constraints.min_weight", 0.6)(r),
                    _field("problem.constraints.max_weight", 0.5)(r),
                ),
            ),
            "problem.constraints.min_weight",
        ),
        Case(
            "frontier-unknown-bound-key",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, lambda r: r.problem.constraints.strategy_bounds["ZZ"].SetInParent()),
            "problem.constraints.strategy_bounds[ZZ]",
        ),
        Case(
            "frontier-one-strategy",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, lambda r: r.problem.strategies.__delitem__(1)),
            "problem.strategies",
        ),
        Case(
            "frontier-engine-error-non-finite-covariance",
            OPT + "ComputeEfficientFrontier",
            _set(frontier, lambda r: _nan_covariance(r.problem)),
            "problem.moments.covariance[1]",
        ),
        Case(
            "optimize-engine-error-non-finite-covariance",
            OPT + "Optimize",
            _set(optimize, _nan_covariance),
            "moments.covariance[1]",
        ),
        Case("frontier-points", OPT + "ComputeEfficientFrontier", _set(frontier, _field("points", 1000)), "points"),
        Case(
            "batch-stream-message-of-1001-requests",
            OPT + "BatchOptimizeStream",
            lambda: [cmd_pb.BatchOptimizeStreamRequest(requests=[optimize()] * 1001)],
            "requests",
        ),
        # IngestMarketData: symbols and bar timestamps
        Case(
            "ingest-symbol-nul",
            OPT + "IngestMarketData",
            _set(bars, lambda m: setattr(m[0].bars[0], "symbol", NUL)),
            "bars[0].symbol",
        ),
        Case(
            "ingest-symbol-10kb",
            OPT + "IngestMarketData",
            _set(bars, lambda m: setattr(m[0].bars[0], "symbol", LONG)),
            "bars[0].symbol",
        ),
        *(
            Case(
                f"ingest-timestamp-{name}",
                OPT + "IngestMarketData",
                _set(bars, _ts("0.bars.0.timestamp", *value)),
                "bars[0].timestamp",
            )
            for name, value in BAD_TIMES.items()
        ),
        # AllocateShares, GetCachedAllocation, ClearAllocationCache
        Case(
            "allocate-portfolio-nul",
            TRADE + "AllocateShares",
            _set(allocate, _field("portfolio_id", NUL)),
            "portfolio_id",
        ),
        Case(
            "allocate-portfolio-10kb",
            TRADE + "AllocateShares",
            _set(allocate, _field("portfolio_id", LONG)),
            "portfolio_id",
        ),
        Case(
            "allocate-target-symbol-nul",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: setattr(r.targets[1], "symbol", NUL)),
            "targets[1].symbol",
        ),
        Case(
            # Found by the property test: fsum of the fees overflowed (INTERNAL) before amounts had a ceiling.
            "allocate-commission-1e308",
            TRADE + "AllocateShares",
            _set(allocate, _field("commission_per_trade", 1e308)),
            "commission_per_trade",
        ),
        Case(
            "allocate-price-1e300",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: setattr(r.targets[0], "price", 1e300)),
            "targets[0].price",
        ),
        Case(
            "allocate-holding-symbol-10kb",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: setattr(r.holdings[0], "symbol", LONG)),
            "holdings[0].symbol",
        ),
        Case(
            "allocate-cache-ttl-10001-years",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: setattr(r.cache_ttl, "seconds", 315_576_000_001)),
            "cache_ttl",
        ),
        Case(
            "allocate-deviation-mode-unknown",
            TRADE + "AllocateShares",
            _set(allocate, _field("deviation_mode", 7)),
            "deviation_mode",
        ),
        Case(
            "allocate-weights-sum-beyond-1e-3",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: setattr(r.targets[0], "target_weight", 0.502)),
            "targets",
        ),
        Case(
            "allocate-short-ratio-without-pypfopt",
            TRADE + "AllocateShares",
            _set(allocate, _field("short_ratio", 0.3)),
            "short_ratio",
        ),
        Case(
            "allocate-reinvest-without-pypfopt",
            TRADE + "AllocateShares",
            _set(allocate, _field("reinvest", True)),
            "reinvest",
        ),
        Case(
            "allocate-pypfopt-short-ratio-negative",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: (setattr(r, "strategy", 4), setattr(r, "short_ratio", -0.1))),
            "short_ratio",
        ),
        Case(
            "allocate-pypfopt-lot-size",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: (setattr(r, "strategy", 5), setattr(r.targets[1], "lot_size", 10))),
            "targets[1].lot_size",
        ),
        Case(
            "allocate-pypfopt-fee",
            TRADE + "AllocateShares",
            _set(allocate, lambda r: (setattr(r, "strategy", 4), setattr(r, "fee_per_share", 0.01))),
            "fee_per_share",
        ),
        Case(
            "allocate-pypfopt-short-ratio-zero-with-shorts",
            TRADE + "AllocateShares",
            _set(
                allocate,
                lambda r: (
                    setattr(r, "strategy", 4),
                    setattr(r, "short_ratio", 0.0),
                    setattr(r.targets[0], "target_weight", -0.5),
                    setattr(r.targets[1], "target_weight", 1.5),
                ),
            ),
            "short_ratio",
        ),
        Case(
            "allocate-cache-ttl-mixed-signs",
            TRADE + "AllocateShares",
            _set(allocate, _ts("cache_ttl", 5, -1)),
            "cache_ttl",
        ),
        Case(
            "cached-allocation-nul",
            TRADE + "GetCachedAllocation",
            lambda: trading_pb.GetCachedAllocationRequest(cache_key=NUL),
            "cache_key",
        ),
        Case(
            "cached-allocation-10kb",
            TRADE + "GetCachedAllocation",
            lambda: trading_pb.GetCachedAllocationRequest(cache_key=LONG),
            "cache_key",
        ),
        Case(
            "clear-cache-nul",
            TRADE + "ClearAllocationCache",
            lambda: trading_pb.ClearAllocationCacheRequest(cache_key=NUL),
            "cache_key",
        ),
        # UpsertHoldings, UpsertRebalancePolicy, CheckDrift, GenerateRebalance
        Case(
            "holdings-portfolio-nul",
            TRADE + "UpsertHoldings",
            _set(holdings, _field("portfolio_id", NUL)),
            "portfolio_id",
        ),
        Case(
            "holdings-symbol-nul",
            TRADE + "UpsertHoldings",
            _set(holdings, lambda r: setattr(r.positions[0], "symbol", NUL)),
            "positions[0].symbol",
        ),
        Case(
            "holdings-lot-id-10kb",
            TRADE + "UpsertHoldings",
            _set(holdings, lambda r: setattr(r.positions[0].lots[0], "lot_id", LONG)),
            "positions[0].lots[0].lot_id",
        ),
        Case(
            "holdings-lot-acquired-year-10000",
            TRADE + "UpsertHoldings",
            _set(holdings, _ts("positions.0.lots.0.acquired", MAX_TIMESTAMP_SECONDS + 1)),
            "positions[0].lots[0].acquired",
        ),
        Case(
            "policy-portfolio-10kb",
            TRADE + "UpsertRebalancePolicy",
            _set(policy, _field("portfolio_id", LONG)),
            "portfolio_id",
        ),
        Case(
            "policy-band-key-nul",
            TRADE + "UpsertRebalancePolicy",
            _set(policy, lambda r: r.policy.bands[NUL].SetInParent()),
            "policy.bands",
        ),
        Case(
            "policy-approval-ttl-nanos",
            TRADE + "UpsertRebalancePolicy",
            _set(policy, lambda r: setattr(r.policy.approval_ttl, "nanos", 1_000_000_000)),
            "policy.approval_ttl",
        ),
        Case("drift-portfolio-nul", TRADE + "CheckDrift", _set(drift, _field("portfolio_id", NUL)), "portfolio_id"),
        Case(
            "drift-target-key-nul",
            TRADE + "CheckDrift",
            _set(drift, lambda r: r.target_weights.update({NUL: 0.0})),
            "target_weights",
        ),
        Case(
            "drift-price-key-10kb", TRADE + "CheckDrift", _set(drift, lambda r: r.prices.update({LONG: 1.0})), "prices"
        ),
        Case(
            "rebalance-portfolio-nul",
            TRADE + "GenerateRebalance",
            _set(rebalance, _field("portfolio_id", NUL)),
            "portfolio_id",
        ),
        Case(
            "rebalance-request-10kb",
            TRADE + "GenerateRebalance",
            _set(rebalance, _field("request_id", LONG)),
            "request_id",
        ),
        Case(
            "rebalance-market-key-nul",
            TRADE + "GenerateRebalance",
            _set(rebalance, lambda r: r.market[NUL].SetInParent()),
            "market",
        ),
        Case(
            "rebalance-as-of-nanos",
            TRADE + "GenerateRebalance",
            _set(rebalance, _ts("as_of", T0, 1_000_000_000)),
            "as_of",
        ),
        # ApproveRebalance, RejectRebalance (approver is being removed from the contract: not part of the corpus)
        Case(
            "approve-recommendation-nul",
            TRADE + "ApproveRebalance",
            lambda: trading_pb.ApproveRebalanceRequest(recommendation_id=NUL),
            "recommendation_id",
        ),
        Case(
            "approve-reason-nul",
            TRADE + "ApproveRebalance",
            lambda: trading_pb.ApproveRebalanceRequest(recommendation_id=RECOMMENDATION, reason=NUL),
            "reason",
        ),
        Case(
            "reject-recommendation-10kb",
            TRADE + "RejectRebalance",
            lambda: trading_pb.RejectRebalanceRequest(recommendation_id=LONG, reason="no"),
            "recommendation_id",
        ),
        Case(
            "reject-reason-10kb",
            TRADE + "RejectRebalance",
            lambda: trading_pb.RejectRebalanceRequest(recommendation_id=RECOMMENDATION, reason=LONG),
            "reason",
        ),
        # The query side
        Case("latest-nul", QUERY + "GetLatest", lambda: query_pb.GetLatestRequest(portfolio_id=NUL), "portfolio_id"),
        Case("latest-10kb", QUERY + "GetLatest", lambda: query_pb.GetLatestRequest(portfolio_id=LONG), "portfolio_id"),
        Case("history-nul", QUERY + "GetHistory", lambda: query_pb.GetHistoryRequest(portfolio_id=NUL), "portfolio_id"),
        Case(
            "realised-rf-nan",
            QUERY + "GetRealisedPerformance",
            lambda: query_pb.GetRealisedPerformanceRequest(portfolio_id="corpus", risk_free_rate=float("nan")),
            "risk_free_rate",
        ),
        Case(
            "realised-periods-huge",
            QUERY + "GetRealisedPerformance",
            lambda: query_pb.GetRealisedPerformanceRequest(portfolio_id="corpus", periods_per_year=4_000_000_000),
            "periods_per_year",
        ),
        Case(
            "realised-horizon-huge",
            QUERY + "GetRealisedPerformance",
            lambda: query_pb.GetRealisedPerformanceRequest(portfolio_id="corpus", horizon_days=4_000_000_000),
            "horizon_days",
        ),
        Case(
            "weights-max-runs-huge",
            QUERY + "GetWeightHistory",
            lambda: query_pb.GetWeightHistoryRequest(portfolio_id="corpus", max_runs=4_000_000_000),
            "max_runs",
        ),
        Case(
            "weights-portfolio-nul",
            QUERY + "GetWeightHistory",
            lambda: query_pb.GetWeightHistoryRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "compare-none",
            QUERY + "ComparePortfolios",
            query_pb.ComparePortfoliosRequest,
            "portfolio_ids",
        ),
        Case(
            "compare-empty-id",
            QUERY + "ComparePortfolios",
            lambda: query_pb.ComparePortfoliosRequest(portfolio_ids=["corpus", ""]),
            "portfolio_ids[1]",
        ),
        Case(
            "rebalance-stats-bucket-1ms",
            QUERY + "GetRebalanceStatistics",
            lambda: query_pb.GetRebalanceStatisticsRequest(
                portfolio_id="corpus", bucket_width=Duration(nanos=1_000_000)
            ),
            "bucket_width",
        ),
        Case("get-backtest-empty", QUERY + "GetBacktest", lambda: query_pb.GetBacktestRequest(), "backtest_id"),
        Case(
            "get-backtest-not-uuid",
            QUERY + "GetBacktest",
            lambda: query_pb.GetBacktestRequest(backtest_id="nope"),
            "backtest_id",
        ),
        Case(
            "get-backtest-10kb",
            QUERY + "GetBacktest",
            lambda: query_pb.GetBacktestRequest(backtest_id=LONG),
            "backtest_id",
        ),
        Case(
            "sector-exposure-runs",
            QUERY + "GetSectorExposure",
            lambda: query_pb.GetSectorExposureRequest(portfolio_id="corpus", max_runs=10_001),
            "max_runs",
        ),
        Case(
            "sector-exposure-empty",
            QUERY + "GetSectorExposure",
            lambda: query_pb.GetSectorExposureRequest(),
            "portfolio_id",
        ),
        Case("list-backtests-empty", QUERY + "ListBacktests", lambda: query_pb.ListBacktestsRequest(), "portfolio_id"),
        Case(
            "list-backtests-token-garbage",
            QUERY + "ListBacktests",
            lambda: query_pb.ListBacktestsRequest(portfolio_id="corpus", page_token="!!garbage!!"),
            "page_token",
        ),
        Case(
            "list-recompute-jobs-portfolio-nul",
            QUERY + "ListRecomputeJobs",
            lambda: query_pb.ListRecomputeJobsRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "list-recompute-jobs-status-unknown",
            QUERY + "ListRecomputeJobs",
            lambda: query_pb.ListRecomputeJobsRequest(status=99),  # type: ignore[arg-type]
            "status",
        ),
        Case(
            "list-recompute-jobs-token-garbage",
            QUERY + "ListRecomputeJobs",
            lambda: query_pb.ListRecomputeJobsRequest(page_token="!!garbage!!"),
            "page_token",
        ),
        Case(
            "export-portfolio-empty",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(dataset=query_pb.EXPORT_DATASET_WEIGHTS),
            "portfolio_id",
        ),
        Case(
            "export-portfolio-nul",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(portfolio_id=NUL, dataset=query_pb.EXPORT_DATASET_WEIGHTS),
            "portfolio_id",
        ),
        Case(
            "export-portfolio-10kb",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(portfolio_id=LONG, dataset=query_pb.EXPORT_DATASET_WEIGHTS),
            "portfolio_id",
        ),
        Case(
            "export-dataset-unset",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(portfolio_id="corpus"),
            "dataset",
        ),
        Case(
            "export-dataset-unknown",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(portfolio_id="corpus", dataset=99),  # type: ignore[arg-type]
            "dataset",
        ),
        Case(
            "export-end-before-start",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(
                portfolio_id="corpus",
                dataset=query_pb.EXPORT_DATASET_REBALANCE_EVENTS,
                start=Timestamp(seconds=T0 + 1),
                end=Timestamp(seconds=T0),
            ),
            "end",
        ),
        Case(
            "export-start-year-10000",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(
                portfolio_id="corpus",
                dataset=query_pb.EXPORT_DATASET_OPTIMIZATION_HISTORY,
                start=Timestamp(seconds=MAX_TIMESTAMP_SECONDS + 1),
            ),
            "start",
        ),
        Case(
            "export-batch-rows-huge",
            QUERY + "ExportData",
            lambda: query_pb.ExportDataRequest(
                portfolio_id="corpus", dataset=query_pb.EXPORT_DATASET_WEIGHTS, max_batch_rows=4_000_000_000
            ),
            "max_batch_rows",
        ),
        Case(
            "watch-portfolio-10kb",
            QUERY + "WatchEvents",
            lambda: query_pb.WatchEventsRequest(portfolio_ids=["corpus", LONG]),
            "portfolio_ids[1]",
        ),
        Case(
            "watch-token-nul",
            QUERY + "WatchEvents",
            lambda: query_pb.WatchEventsRequest(portfolio_ids=["corpus"], resume_token="AA"),
            "resume_token",
        ),
        Case(
            "watch-kind-unknown",
            QUERY + "WatchEvents",
            lambda: query_pb.WatchEventsRequest(
                portfolio_ids=["corpus"], kinds=[query_pb.WATCH_EVENT_KIND_REBALANCE, 2_000_000_000]
            ),
            "kinds[1]",
        ),
        Case(
            "history-10kb", QUERY + "GetHistory", lambda: query_pb.GetHistoryRequest(portfolio_id=LONG), "portfolio_id"
        ),
        *(
            Case(
                f"history-start-{name}",
                QUERY + "GetHistory",
                _set(lambda: query_pb.GetHistoryRequest(portfolio_id="corpus"), _ts("start", *value)),
                "start",
            )
            for name, value in BAD_TIMES.items()
        ),
        Case(
            "history-token-escaped-nul",
            QUERY + "GetHistory",
            lambda: query_pb.GetHistoryRequest(
                portfolio_id="corpus", page_token=history_token({"v": 1, "t": 0, "e": "\x00", "q": "\x00"})
            ),
            "page_token",
        ),
        Case(
            "history-token-raw-nul",
            QUERY + "GetHistory",
            lambda: query_pb.GetHistoryRequest(portfolio_id="corpus", page_token=history_token('{"v":1,"e":"\x00"}')),
            "page_token",
        ),
        Case(
            "history-token-nul",
            QUERY + "GetHistory",
            lambda: query_pb.GetHistoryRequest(portfolio_id="corpus", page_token=NUL),
            "page_token",
        ),
        Case(
            "history-token-10kb",
            QUERY + "GetHistory",
            lambda: query_pb.GetHistoryRequest(portfolio_id="corpus", page_token=LONG),
            "page_token",
        ),
        Case(
            "history-token-huge-time",
            QUERY + "GetHistory",
            lambda: query_pb.GetHistoryRequest(
                portfolio_id="corpus", page_token=history_token({"v": 1, "t": 10**30, "e": RECOMMENDATION, "q": "x"})
            ),
            "page_token",
        ),
        Case(
            "analytics-nul",
            QUERY + "GetPortfolioAnalytics",
            lambda: query_pb.GetPortfolioAnalyticsRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "analytics-bucket-10001-years",
            QUERY + "GetPortfolioAnalytics",
            _set(
                lambda: query_pb.GetPortfolioAnalyticsRequest(portfolio_id="corpus"),
                lambda r: setattr(r.bucket_width, "seconds", 315_576_000_001),
            ),
            "bucket_width",
        ),
        Case(
            "analytics-end-year-10000",
            QUERY + "GetPortfolioAnalytics",
            _set(
                lambda: query_pb.GetPortfolioAnalyticsRequest(portfolio_id="corpus"),
                _ts("end", MAX_TIMESTAMP_SECONDS + 1),
            ),
            "end",
        ),
        Case(
            "rebalance-query-nul",
            QUERY + "GetRebalance",
            lambda: query_pb.GetRebalanceRequest(recommendation_id=NUL),
            "recommendation_id",
        ),
        Case(
            "rebalance-query-10kb",
            QUERY + "GetRebalance",
            lambda: query_pb.GetRebalanceRequest(recommendation_id=LONG),
            "recommendation_id",
        ),
        Case(
            "rebalance-events-10kb",
            QUERY + "ListRebalanceEvents",
            lambda: query_pb.ListRebalanceEventsRequest(portfolio_id=LONG),
            "portfolio_id",
        ),
        Case(
            "rebalance-events-token-nul",
            QUERY + "ListRebalanceEvents",
            lambda: query_pb.ListRebalanceEventsRequest(portfolio_id="corpus", page_token=NUL),
            "page_token",
        ),
        Case(
            "rebalance-events-end-nanos",
            QUERY + "ListRebalanceEvents",
            _set(lambda: query_pb.ListRebalanceEventsRequest(portfolio_id="corpus"), _ts("end", T0, 1_000_000_000)),
            "end",
        ),
        # Execution
        Case(
            "execute-spread-negative",
            EXE + "ExecuteOrders",
            lambda: ex_pb.ExecuteOrdersRequest(
                portfolio_id="corpus", settings=ex_pb.PaperBrokerSettings(spread_bps=-1)
            ),
            "settings.spread_bps",
        ),
        Case(
            "execute-impact-coefficient-zero",
            EXE + "ExecuteOrders",
            lambda: ex_pb.ExecuteOrdersRequest(
                portfolio_id="corpus", settings=ex_pb.PaperBrokerSettings(impact_coefficient=0.0)
            ),
            "settings.impact_coefficient",
        ),
        Case(
            "execute-impact-lookback-1",
            EXE + "ExecuteOrders",
            lambda: ex_pb.ExecuteOrdersRequest(
                portfolio_id="corpus", settings=ex_pb.PaperBrokerSettings(impact_lookback_periods=1)
            ),
            "settings.impact_lookback_periods",
        ),
        Case(
            "execute-impact-model-unknown",
            EXE + "ExecuteOrders",
            lambda: ex_pb.ExecuteOrdersRequest(
                portfolio_id="corpus",
                settings=ex_pb.PaperBrokerSettings(impact_model=99),  # type: ignore[arg-type]
            ),
            "settings.impact_model",
        ),
        Case(
            "execute-adv-negative",
            EXE + "ExecuteOrders",
            lambda: ex_pb.ExecuteOrdersRequest(
                portfolio_id="corpus", settings=ex_pb.PaperBrokerSettings(average_daily_volume={"AAA": -5.0})
            ),
            "settings.average_daily_volume[AAA]",
        ),
        Case(
            "execute-portfolio-nul",
            EXE + "ExecuteOrders",
            lambda: ex_pb.ExecuteOrdersRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "fills-order-not-uuid",
            EXE + "ReportFills",
            _set(_fill_report, lambda r: setattr(r.fills[0], "order_id", "x")),
            "fills[0].order_id",
        ),
        Case(
            "fills-price-nan",
            EXE + "ReportFills",
            _set(_fill_report, lambda r: setattr(r.fills[0], "price", float("nan"))),
            "fills[0].price",
        ),
        Case(
            "fills-side",
            EXE + "ReportFills",
            _set(_fill_report, lambda r: setattr(r.fills[0], "side", "HOLD")),
            "fills[0].side",
        ),
        Case(
            "fills-id-10kb",
            EXE + "ReportFills",
            _set(_fill_report, lambda r: setattr(r.fills[0], "fill_id", LONG)),
            "fills[0].fill_id",
        ),
        Case(
            "reconcile-negative-shares",
            EXE + "Reconcile",
            lambda: ex_pb.ReconcileRequest(
                portfolio_id="corpus", positions=[ex_pb.ReportedPosition(symbol="A", shares=-1)]
            ),
            "positions[0].shares",
        ),
        Case("claim-limit-over", EXE + "ClaimOrders", lambda: ex_pb.ClaimOrdersRequest(limit=1001), "limit"),
        Case(
            "claim-portfolio-nul",
            EXE + "ClaimOrders",
            lambda: ex_pb.ClaimOrdersRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "cancel-no-orders",
            EXE + "CancelOrders",
            lambda: ex_pb.CancelOrdersRequest(portfolio_id="corpus"),
            "order_ids",
        ),
        Case(
            "cancel-not-a-uuid",
            EXE + "CancelOrders",
            lambda: ex_pb.CancelOrdersRequest(portfolio_id="corpus", order_ids=["order-1"]),
            "order_ids[0]",
        ),
        Case(
            "cancel-repeated",
            EXE + "CancelOrders",
            lambda: ex_pb.CancelOrdersRequest(portfolio_id="corpus", order_ids=[RECOMMENDATION, RECOMMENDATION]),
            "order_ids[1]",
        ),
        Case(
            "cancel-reason-nul",
            EXE + "CancelOrders",
            lambda: ex_pb.CancelOrdersRequest(portfolio_id="corpus", order_ids=[RECOMMENDATION], reason=NUL),
            "reason",
        ),
        Case(
            "cancel-no-portfolio",
            EXE + "CancelOrders",
            lambda: ex_pb.CancelOrdersRequest(order_ids=[RECOMMENDATION]),
            "portfolio_id",
        ),
        # Rotation reads
        Case(
            "latest-rotation-nul",
            QUERY + "GetLatestRotationDecision",
            lambda: query_pb.GetLatestRotationDecisionRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "rotation-decisions-token-nul",
            QUERY + "ListRotationDecisions",
            lambda: query_pb.ListRotationDecisionsRequest(portfolio_id="corpus", page_token=NUL),
            "page_token",
        ),
        Case(
            "rotation-decisions-start-year-0",
            QUERY + "ListRotationDecisions",
            _set(
                lambda: query_pb.ListRotationDecisionsRequest(portfolio_id="corpus"),
                _ts("start", MIN_TIMESTAMP_SECONDS - 1),
            ),
            "start",
        ),
        Case(
            "rotation-reasons-10kb",
            QUERY + "CountRotationReasons",
            lambda: query_pb.CountRotationReasonsRequest(portfolio_id=LONG),
            "portfolio_id",
        ),
        # Rotation: signals, configurations, cycles, kill-switches
        Case("signals-set-nul", ROT + "IngestSignals", _signal_change(_field("signal_set", NUL)), "signal_set"),
        Case(
            "signals-symbol-65",
            ROT + "IngestSignals",
            _signal_change(lambda r: setattr(r.signals[1], "symbol", "S" * 65)),
            "signals[1].symbol",
        ),
        Case(
            "signals-score-nan",
            ROT + "IngestSignals",
            _signal_change(lambda r: setattr(r.signals[0], "score", float("nan"))),
            "signals[0].score",
        ),
        Case("signals-time-unset", ROT + "IngestSignals", _signals, "signals[0].time"),
        Case(
            "signals-time-year-10000",
            ROT + "IngestSignals",
            _signal_change(_ts("signals.1.time", MAX_TIMESTAMP_SECONDS + 1)),
            "signals[1].time",
        ),
        Case("quotes-time-unset", ROT + "IngestQuotes", _quotes, "quotes[0].time"),
        Case(
            "quotes-symbol-nul",
            ROT + "IngestQuotes",
            _quote_change(lambda r: setattr(r.quotes[1], "symbol", NUL)),
            "quotes[1].symbol",
        ),
        Case(
            "quotes-bid-zero",
            ROT + "IngestQuotes",
            _quote_change(lambda r: setattr(r.quotes[0], "bid", 0.0)),
            "quotes[0].bid",
        ),
        Case(
            "quotes-ask-below-bid",
            ROT + "IngestQuotes",
            _quote_change(lambda r: setattr(r.quotes[1], "ask", 49.0)),
            "quotes[1].ask",
        ),
        Case(
            "quotes-ask-inf",
            ROT + "IngestQuotes",
            _quote_change(lambda r: setattr(r.quotes[0], "ask", float("inf"))),
            "quotes[0].ask",
        ),
        Case(
            "rotation-winsor-infinite",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, _field("configuration.signals.winsor_limit", float("inf"))),
            "configuration.signals.winsor_limit",
        ),
        Case(
            "rotation-spread-lookback-0",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, _field("configuration.policy.spread_lookback_days", 0)),
            "configuration.policy.spread_lookback_days",
        ),
        Case(
            "rotation-quote-age-negative",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, _field("configuration.policy.max_quote_age_minutes", -1.0)),
            "configuration.policy.max_quote_age_minutes",
        ),
        Case(
            "rotation-portfolio-10kb",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, _field("configuration.portfolio_id", LONG)),
            "configuration.portfolio_id",
        ),
        Case(
            "rotation-duplicate-symbol",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, lambda r: setattr(r.configuration.universe[1], "symbol", "AAA")),
            "configuration.universe[1].symbol",
        ),
        Case(
            "rotation-negative-cost",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, lambda r: setattr(r.configuration.universe[0], "cost_bps", -1.0)),
            "configuration.universe[0].cost_bps",
        ),
        Case(
            "rotation-k-buy-over-k",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, _field("configuration.greedy.k_buy", 30)),
            "configuration.greedy.k_buy",
        ),
        Case(
            "rotation-window-25h",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, lambda r: r.configuration.policy.windows.append("25:00")),
            "configuration.policy.windows[0]",
        ),
        Case(
            "rotation-unknown-calendar",
            ROT + "UpsertRotationConfiguration",
            _set(_rotation, _field("configuration.policy.calendar", "NOPE")),
            "configuration.policy.calendar",
        ),
        Case(
            "cycle-portfolio-nul",
            ROT + "RunRotationCycle",
            lambda: rot_pb.RunRotationCycleRequest(portfolio_id=NUL),
            "portfolio_id",
        ),
        Case(
            "cycle-as-of-nanos",
            ROT + "RunRotationCycle",
            _set(lambda: rot_pb.RunRotationCycleRequest(portfolio_id="corpus"), _ts("as_of", T0, 1_000_000_000)),
            "as_of",
        ),
        Case(
            "scheduler-reason-nul",
            ROT + "PauseRotationScheduler",
            lambda: rot_pb.PauseRotationSchedulerRequest(paused=True, reason=NUL),
            "reason",
        ),
        Case(
            "kill-switch-no-reason",
            ROT + "SetKillSwitch",
            lambda: rot_pb.SetKillSwitchRequest(portfolio_id="corpus", engaged=True),
            "reason",
        ),
        Case(
            "kill-switch-portfolio-10kb",
            ROT + "SetKillSwitch",
            lambda: rot_pb.SetKillSwitchRequest(portfolio_id=LONG, engaged=True, reason="r"),
            "portfolio_id",
        ),
    ]
    return cases


CASES = _cases()


def test_the_corpus_covers_every_rpc() -> None:
    covered = {case.rpc for case in CASES} | {OPT + "BatchOptimize"}  # BatchOptimize: its own test below
    assert covered == set(BY_NAME)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_a_client_error_naming_the_field_and_writes_nothing(
    case: Case, grpc_channel: grpc.Channel, db: psycopg.Connection[Any]
) -> None:
    before = row_counts(db)
    outcome = call(grpc_channel, BY_NAME[case.rpc], case.build())
    after = row_counts(db)
    assert (outcome.code, outcome.fields) == (case.code, (case.field,)), outcome.message
    assert len(outcome.message.encode()) <= 1024
    assert LONG[:100] not in outcome.message and "\x00" not in outcome.message
    assert outcome.trailer_bytes < 8192
    assert changed_tables(before, after) == {}


def test_a_bad_batch_item_is_its_own_invalid_argument_and_writes_nothing(
    grpc_channel: grpc.Channel, db: psycopg.Connection[Any]
) -> None:
    request = cmd_pb.BatchOptimizeRequest()
    for change in (_field("portfolio_id", NUL), _field("request_id", LONG), _ts("returns.timestamps.0", T0, -5)):
        item = request.requests.add()
        item.CopyFrom(optimize())
        change(item)
    before = row_counts(db)
    stub = grpc_channel.unary_unary(
        "/stratopt.v1.OptimizationCommandService/BatchOptimize",
        request_serializer=cmd_pb.BatchOptimizeRequest.SerializeToString,
        response_deserializer=cmd_pb.BatchOptimizeResponse.FromString,
    )
    response = stub(request, timeout=60)
    assert changed_tables(before, row_counts(db)) == {}
    assert (response.succeeded, response.failed) == (0, 3)
    errors = [result.error for result in response.results]
    assert [e.code for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 3
    assert [e.message.split(":")[0] for e in errors] == ["portfolio_id", "request_id", "returns.timestamps[0]"]


def test_page_size_beyond_the_largest_page_is_capped_not_an_error(grpc_channel: grpc.Channel) -> None:
    """``page_size`` is a uint32 (never negative on the wire); the largest value reads one capped page."""
    largest = 2**32 - 1
    for rpc, request in (
        (OPT + "ListConfigurations", cmd_pb.ListConfigurationsRequest(page_size=largest)),
        (QUERY + "GetHistory", query_pb.GetHistoryRequest(portfolio_id="corpus", page_size=largest)),
        (QUERY + "ListRebalanceEvents", query_pb.ListRebalanceEventsRequest(portfolio_id="corpus", page_size=largest)),
    ):
        assert call(grpc_channel, BY_NAME[rpc], request).code == grpc.StatusCode.OK, rpc


def test_a_not_found_message_never_repeats_a_long_id(grpc_channel: grpc.Channel) -> None:
    """The longest valid id on GetLatest, ExportData and GetConfiguration: NOT_FOUND with a short message."""
    longest = "p" * 128
    for rpc, request in (
        (QUERY + "GetLatest", query_pb.GetLatestRequest(portfolio_id=longest)),
        (
            QUERY + "ExportData",
            query_pb.ExportDataRequest(portfolio_id=longest, dataset=query_pb.EXPORT_DATASET_WEIGHTS),
        ),
        (OPT + "GetConfiguration", cmd_pb.GetConfigurationRequest(portfolio_id=longest)),
        # A version past the stored column's range: no such version, not the database's DataError (INTERNAL).
        (OPT + "Backtest", bt_pb.BacktestRequest(portfolio_id="corpus", configuration_version=2**31)),
    ):
        outcome = call(grpc_channel, BY_NAME[rpc], request)
        assert outcome.code == grpc.StatusCode.NOT_FOUND, rpc
        assert len(outcome.message) < 400
