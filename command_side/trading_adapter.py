"""The one place where ``stratopt.v1.TradingCommandService`` messages meet the trading application's dataclasses.

Requests become commands (:mod:`command_side.trading_model` and :mod:`services.trading` types), results become
responses. What only the contract can express is checked here, in the request's field paths: presence
(``holdings[i].price`` unset), proto enumerations (``strategy``), proto scalars that must become domain types
(shares that must be whole, a ``Duration`` or ``Timestamp`` out of range). The rest is the application's and the
engine's to check; their field paths are translated to the request's by :mod:`command_side.field_paths` around
the call (:func:`allocation_field_paths`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from command_side.field_paths import ALLOCATION, proto_field_paths
from command_side.trading_model import AllocatedLine, AllocateShares, Allocation, AllocationMetrics, SoldInFull
from services.errors import InvalidInputError
from services.trading import (
    DEFAULT_ALLOWED_DEVIATION,
    AllocationRequest,
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    BandRelaxation,
    Holding,
)
from stratopt.v1 import trading_service_pb2 as trading_pb

MAX_SHARES: Final = 2**53
"""Largest accepted share count of an AllocateShares holding (exact in a double)."""

STRATEGIES: Final[dict[trading_pb.AllocationStrategy.ValueType, AllocationStrategy]] = {
    trading_pb.ALLOCATION_STRATEGY_UNSPECIFIED: AllocationStrategy.MINIMIZE_LEFTOVER,
    trading_pb.ALLOCATION_STRATEGY_MINIMIZE_LEFTOVER: AllocationStrategy.MINIMIZE_LEFTOVER,
    trading_pb.ALLOCATION_STRATEGY_MAXIMIZE_SHARES: AllocationStrategy.MAXIMIZE_SHARES,
    trading_pb.ALLOCATION_STRATEGY_MOMENTUM_WEIGHTED: AllocationStrategy.MOMENTUM_WEIGHTED,
}
"""``stratopt.v1.AllocationStrategy`` → the engine's (unspecified = MINIMIZE_LEFTOVER)."""
PROTO_STRATEGIES: Final = {strategy: value for value, strategy in STRATEGIES.items() if value}
"""The engine's allocation strategy → ``stratopt.v1.AllocationStrategy``."""


def timestamp(value: datetime) -> Timestamp:
    """Protobuf Timestamp of a datetime (naive values are taken as UTC)."""
    message = Timestamp()
    message.FromDatetime(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    return message


# --- allocation: request → command ------------------------------------------------------------------------------


def allocate_shares_command(request: trading_pb.AllocateSharesRequest) -> AllocateShares:
    """The command of an AllocateShares request (targets and holdings in the request's order).

    Unset ``allowed_deviation`` = 0.10, ``lot_size`` 0 = 1, unset ``momentum_score`` = None, unset
    ``cache_ttl`` = None (the service's default), relaxation allowed, no time limit.

    Raises
    ------
    InvalidInputError
        ``strategy`` (unknown), ``targets[i].symbol``, ``holdings[i].symbol`` (empty or duplicate),
        ``holdings[i].shares`` (not a finite whole number in [0, 2^53]), ``holdings[i].price`` (unset) or
        ``cache_ttl`` (not a valid Duration, or negative).
    """
    strategy = STRATEGIES.get(request.strategy)
    if strategy is None:
        raise InvalidInputError.for_field("strategy", f"unknown AllocationStrategy value {request.strategy}")
    targets = []
    seen: dict[str, int] = {}
    for i, target in enumerate(request.targets):
        _check_symbol(target.symbol, f"targets[{i}]", seen, i)
        targets.append(
            AllocationTarget(
                name=target.symbol,
                target_weight=target.target_weight,
                price=target.price,
                allowed_deviation=(
                    target.allowed_deviation if target.HasField("allowed_deviation") else DEFAULT_ALLOWED_DEVIATION
                ),
                lot_size=target.lot_size or 1,
                momentum_score=target.momentum_score if target.HasField("momentum_score") else None,
            )
        )
    holdings = []
    seen = {}
    for i, position in enumerate(request.holdings):
        field = f"holdings[{i}]"
        _check_symbol(position.symbol, field, seen, i)
        shares = position.shares
        if not math.isfinite(shares):
            raise InvalidInputError.for_field(f"{field}.shares", f"must be finite, got {shares}")
        if shares < 0:
            raise InvalidInputError.for_field(f"{field}.shares", f"must be non-negative, got {shares:g}")
        if shares != math.floor(shares):
            raise InvalidInputError.for_field(f"{field}.shares", f"must be a whole number of shares, got {shares!r}")
        if shares > MAX_SHARES:
            raise InvalidInputError.for_field(f"{field}.shares", f"must be at most 2^53, got {shares:g}")
        if not position.HasField("price"):
            raise InvalidInputError.for_field(f"{field}.price", "is required by AllocateShares")
        holdings.append(Holding(position.symbol, int(shares), position.price))
    return AllocateShares(
        problem=AllocationRequest(
            targets=tuple(targets),
            holdings=tuple(holdings),
            extra_cash=request.extra_cash,
            strategy=strategy,
            commission_per_trade=request.commission_per_trade,
            fee_per_share=request.fee_per_share,
        ),
        portfolio_id=request.portfolio_id,
        cache_ttl=_cache_ttl(request),
        bypass_cache=request.bypass_cache,
    )


def _check_symbol(symbol: str, field: str, seen: dict[str, int], index: int) -> None:
    """Raise when ``symbol`` is empty or already in ``seen``; else record it at ``index``."""
    kind = field.split("[", 1)[0]
    if not symbol:
        raise InvalidInputError.for_field(f"{field}.symbol", "must not be empty")
    if symbol in seen:
        raise InvalidInputError.for_field(f"{field}.symbol", f"duplicates {kind}[{seen[symbol]}].symbol")
    seen[symbol] = index


def _cache_ttl(request: trading_pb.AllocateSharesRequest) -> timedelta | None:
    """``cache_ttl`` as a timedelta; None when unset.

    Raises
    ------
    InvalidInputError
        ``cache_ttl`` is not a valid Duration (nanos outside ±999,999,999 or of the other sign than seconds).
    """
    if not request.HasField("cache_ttl"):
        return None
    seconds, nanos = request.cache_ttl.seconds, request.cache_ttl.nanos
    if abs(nanos) > 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidInputError.for_field("cache_ttl", f"is not a valid Duration (seconds {seconds}, nanos {nanos})")
    if seconds < 0 or nanos < 0:
        raise InvalidInputError.for_field("cache_ttl", "must not be negative")
    return timedelta(seconds=seconds, microseconds=nanos / 1000)


@contextmanager
def allocation_field_paths() -> Iterator[None]:
    """Re-raise a domain error of the allocation (the engine's names, ``targets[i].name``) in the request's terms."""
    with proto_field_paths(ALLOCATION):
        yield


# --- allocation: result → response ------------------------------------------------------------------------------


def allocation_message(allocation: Allocation) -> trading_pb.AllocateSharesResponse:
    """The ``AllocateSharesResponse`` of an allocation (``cached``, and ``expires_at`` when it has one)."""
    response = trading_pb.AllocateSharesResponse(cache_key=allocation.cache_key, cached=allocation.cached)
    for line in allocation.lines:
        response.lines.add(
            symbol=line.name,
            price=line.price,
            current_shares=line.current_shares,
            buy_shares=line.buy_shares,
            sell_shares=line.sell_shares,
            final_shares=line.final_shares,
            trade_cost=line.trade_cost,
            final_value=line.final_value,
            target_weight=line.target_weight,
            actual_weight=line.actual_weight,
            weight_deviation=line.weight_deviation,
        )
    for holding in allocation.sold_in_full:
        response.sold_in_full.add(
            symbol=holding.name,
            shares=holding.shares,
            price=holding.price,
            proceeds=holding.proceeds,
            trade_cost=holding.trade_cost,
        )
    response.metrics.CopyFrom(allocation_metrics_message(allocation.metrics))
    if allocation.expires_at is not None:
        response.expires_at.CopyFrom(timestamp(allocation.expires_at))
    return response


def allocation_metrics_message(metrics: AllocationMetrics) -> trading_pb.AllocationMetrics:
    """The ``AllocationMetrics`` message of the allocation's metrics."""
    return trading_pb.AllocationMetrics(
        budget=metrics.budget,
        budget_used=metrics.budget_used,
        unused_budget=metrics.unused_budget,
        unused_fraction=metrics.unused_fraction,
        fees_total=metrics.fees_total,
        solve_time_ms=metrics.solve_time_ms,
        solver_status=metrics.solver_status.value,
        solver=metrics.solver,
        fallback_used=metrics.fallback_used,
        relaxation=metrics.relaxation.value,
        relaxation_detail=metrics.relaxation_detail,
    )


def allocation_of_message(message: trading_pb.AllocateSharesResponse) -> Allocation:
    """The allocation of an ``AllocateSharesResponse`` (the inverse of :func:`allocation_message`)."""
    metrics = message.metrics
    return Allocation(
        cache_key=message.cache_key,
        lines=tuple(
            AllocatedLine(
                name=line.symbol,
                price=line.price,
                current_shares=line.current_shares,
                buy_shares=line.buy_shares,
                sell_shares=line.sell_shares,
                final_shares=line.final_shares,
                trade_cost=line.trade_cost,
                final_value=line.final_value,
                target_weight=line.target_weight,
                actual_weight=line.actual_weight,
                weight_deviation=line.weight_deviation,
            )
            for line in message.lines
        ),
        sold_in_full=tuple(
            SoldInFull(
                name=sold.symbol,
                shares=sold.shares,
                price=sold.price,
                proceeds=sold.proceeds,
                trade_cost=sold.trade_cost,
            )
            for sold in message.sold_in_full
        ),
        metrics=AllocationMetrics(
            budget=metrics.budget,
            budget_used=metrics.budget_used,
            unused_budget=metrics.unused_budget,
            unused_fraction=metrics.unused_fraction,
            fees_total=metrics.fees_total,
            solve_time_ms=metrics.solve_time_ms,
            solver_status=AllocationStatus(metrics.solver_status),
            solver=metrics.solver,
            fallback_used=metrics.fallback_used,
            relaxation=BandRelaxation(metrics.relaxation),
            relaxation_detail=metrics.relaxation_detail,
        ),
        cached=message.cached,
        expires_at=message.expires_at.ToDatetime(tzinfo=UTC) if message.HasField("expires_at") else None,
    )


def allocate_shares_response(allocation: Allocation) -> trading_pb.AllocateSharesResponse:
    """The AllocateShares response of an allocation."""
    return allocation_message(allocation)


def get_cached_allocation_response(allocation: Allocation) -> trading_pb.GetCachedAllocationResponse:
    """The GetCachedAllocation response of a cached allocation."""
    return trading_pb.GetCachedAllocationResponse(allocation=allocation_message(allocation))


def clear_allocation_cache_response(removed: int) -> trading_pb.ClearAllocationCacheResponse:
    """The ClearAllocationCache response: how many entries were deleted."""
    return trading_pb.ClearAllocationCacheResponse(removed=removed)
