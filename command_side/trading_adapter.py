"""The one place where ``stratopt.v1.TradingCommandService`` messages meet the trading application's dataclasses.

Requests become commands (:mod:`command_side.trading_model` and :mod:`services.trading` types), results become
responses. What only the contract can express is checked here, in the request's field paths: presence
(``holdings[i].price`` unset), proto enumerations (``strategy``), proto scalars that must become domain types
(shares that must be whole, a ``Duration`` or ``Timestamp`` out of range). The rest is the application's and the
engine's to check; their field paths are translated to the request's by :mod:`command_side.field_paths` around
the call (:func:`allocation_field_paths`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from command_side.field_paths import ALLOCATION, proto_field_paths
from command_side.trading_model import (
    AllocatedLine,
    AllocateShares,
    Allocation,
    AllocationMetrics,
    Band,
    CheckDrift,
    Decision,
    DriftCheck,
    GeneratedRebalance,
    GenerateRebalance,
    HoldingsStored,
    LossHarvest,
    LotSold,
    MarketQuote,
    Position,
    PositionLot,
    RebalancePolicy,
    RebalanceRecommendation,
    RecommendedTrade,
    SoldInFull,
    UpsertHoldings,
    UpsertPolicy,
)
from services.errors import InvalidInputError
from services.trading import (
    DEFAULT_ALLOWED_DEVIATION,
    AllocationRequest,
    AllocationStrategy,
    AllocationTarget,
    DeviationMode,
    Holding,
    ImpactModel,
    LotMethod,
    RecommendationStatus,
    Side,
)
from stratopt.request_limits import check_request, check_timestamp
from stratopt.v1 import trading_service_pb2 as trading_pb

MAX_SHARES: Final = 2**53
"""Largest accepted share count of an AllocateShares holding (exact in a double)."""

STRATEGIES: Final[dict[trading_pb.AllocationStrategy.ValueType, AllocationStrategy]] = {
    trading_pb.ALLOCATION_STRATEGY_UNSPECIFIED: AllocationStrategy.MINIMIZE_LEFTOVER,
    trading_pb.ALLOCATION_STRATEGY_MINIMIZE_LEFTOVER: AllocationStrategy.MINIMIZE_LEFTOVER,
    trading_pb.ALLOCATION_STRATEGY_MAXIMIZE_SHARES: AllocationStrategy.MAXIMIZE_SHARES,
    trading_pb.ALLOCATION_STRATEGY_MOMENTUM_WEIGHTED: AllocationStrategy.MOMENTUM_WEIGHTED,
    trading_pb.ALLOCATION_STRATEGY_PYPFOPT_LP: AllocationStrategy.PYPFOPT_LP,
    trading_pb.ALLOCATION_STRATEGY_PYPFOPT_GREEDY: AllocationStrategy.PYPFOPT_GREEDY,
}
"""``stratopt.v1.AllocationStrategy`` → the engine's (unspecified = MINIMIZE_LEFTOVER)."""
PROTO_STRATEGIES: Final = {strategy: value for value, strategy in STRATEGIES.items() if value}
"""The engine's allocation strategy → ``stratopt.v1.AllocationStrategy``."""
DEVIATION_MODES: Final[dict[trading_pb.DeviationMode.ValueType, DeviationMode]] = {
    trading_pb.DEVIATION_MODE_UNSPECIFIED: DeviationMode.RELATIVE,
    trading_pb.DEVIATION_MODE_RELATIVE: DeviationMode.RELATIVE,
    trading_pb.DEVIATION_MODE_ABSOLUTE: DeviationMode.ABSOLUTE,
}
"""``stratopt.v1.DeviationMode`` → the engine's (unspecified = RELATIVE)."""
PROTO_DEVIATION_MODES: Final = {mode: value for value, mode in DEVIATION_MODES.items() if value}
"""The engine's deviation mode → ``stratopt.v1.DeviationMode``."""


def timestamp(value: datetime) -> Timestamp:
    """Protobuf Timestamp of a datetime (naive values are taken as UTC)."""
    message = Timestamp()
    message.FromDatetime(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    return message


# --- allocation: request → command ------------------------------------------------------------------------------


def allocate_shares_command(request: trading_pb.AllocateSharesRequest) -> AllocateShares:
    """The command of an AllocateShares request (targets and holdings in the request's order).

    Unset ``allowed_deviation`` = 0.10, ``lot_size`` 0 = 1, unset ``momentum_score`` = None, unset
    ``cache_ttl`` = None (the service's default), unset ``deviation_mode`` = RELATIVE, unset ``short_ratio`` =
    None (PyPortfolioOpt's default), relaxation allowed, no time limit.

    Raises
    ------
    InvalidInputError
        ``strategy``, ``deviation_mode`` (unknown), ``targets[i].symbol``, ``holdings[i].symbol`` (empty or duplicate),
        ``holdings[i].shares`` (not a finite whole number in [0, 2^53]), ``holdings[i].price`` (unset) or
        ``cache_ttl`` (not a valid Duration, or negative); any string with a NUL character or over its length
        limit (``stratopt.request_limits``).
    """
    check_request(request)
    strategy = STRATEGIES.get(request.strategy)
    if strategy is None:
        raise InvalidInputError.for_field("strategy", f"unknown AllocationStrategy value {request.strategy}")
    deviation_mode = DEVIATION_MODES.get(request.deviation_mode)
    if deviation_mode is None:
        raise InvalidInputError.for_field("deviation_mode", f"unknown DeviationMode value {request.deviation_mode}")
    targets = []
    seen: dict[str, int] = {}
    for i, target in enumerate(request.targets):
        _check_symbol(target.symbol, f"targets[{i}]", seen, i)
        targets.append(
            AllocationTarget(
                symbol=target.symbol,
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
            deviation_mode=deviation_mode,
            reinvest=request.reinvest,
            short_ratio=request.short_ratio if request.HasField("short_ratio") else None,
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
    """Re-raise a domain error of the allocation (the engine's names, ``targets[i].symbol``) in the request's terms."""
    with proto_field_paths(ALLOCATION):
        yield


# --- allocation: result → response ------------------------------------------------------------------------------


def allocation_message(allocation: Allocation) -> trading_pb.AllocateSharesResponse:
    """The ``AllocateSharesResponse`` of an allocation (``cached``, and ``expires_at`` when it has one)."""
    response = trading_pb.AllocateSharesResponse(cache_key=allocation.cache_key, cached=allocation.cached)
    for line in allocation.lines:
        response.lines.add(
            symbol=line.symbol,
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
            symbol=holding.symbol,
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
        solver_status=metrics.solver_status,
        solver=metrics.solver,
        fallback_used=metrics.fallback_used,
        relaxation=metrics.relaxation,
        relaxation_detail=metrics.relaxation_detail,
        weight_sum=metrics.weight_sum,
        weights_renormalised=metrics.weights_renormalised,
        lp_objective=metrics.lp_objective,
    )


def allocation_of_message(message: trading_pb.AllocateSharesResponse) -> Allocation:
    """The allocation of an ``AllocateSharesResponse`` (the inverse of :func:`allocation_message`)."""
    metrics = message.metrics
    return Allocation(
        cache_key=message.cache_key,
        lines=tuple(
            AllocatedLine(
                symbol=line.symbol,
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
                symbol=sold.symbol,
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
            solver_status=metrics.solver_status,
            solver=metrics.solver,
            fallback_used=metrics.fallback_used,
            relaxation=metrics.relaxation,
            relaxation_detail=metrics.relaxation_detail,
            weight_sum=metrics.weight_sum,
            weights_renormalised=metrics.weights_renormalised,
            lp_objective=metrics.lp_objective,
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


def cache_key_query(
    request: trading_pb.GetCachedAllocationRequest | trading_pb.ClearAllocationCacheRequest,
) -> str:
    """The ``cache_key`` of a GetCachedAllocation or ClearAllocationCache request ("" = every entry for Clear).

    Raises
    ------
    InvalidInputError
        ``cache_key`` with a NUL character or longer than ``MAX_ID_LENGTH``.
    """
    check_request(request)
    return request.cache_key


def clear_allocation_cache_response(removed: int) -> trading_pb.ClearAllocationCacheResponse:
    """The ClearAllocationCache response: how many entries were deleted."""
    return trading_pb.ClearAllocationCacheResponse(removed=removed)


# --- rebalancing: shared conversions ----------------------------------------------------------------------------

_STATUS_PREFIX: Final = "RECOMMENDATION_STATUS_"
IMPACT_MODELS: Final[dict[trading_pb.ImpactModel.ValueType, ImpactModel]] = {
    trading_pb.IMPACT_MODEL_NONE: ImpactModel.NONE,
    trading_pb.IMPACT_MODEL_SQUARE_ROOT: ImpactModel.SQUARE_ROOT,
    trading_pb.IMPACT_MODEL_ALMGREN_2005: ImpactModel.ALMGREN_2005,
}
"""``stratopt.v1.ImpactModel`` → the engine's (UNSPECIFIED: None, the policy's default)."""
LOT_METHODS: Final[dict[trading_pb.LotMethod.ValueType, LotMethod]] = {
    trading_pb.LOT_METHOD_FIFO: LotMethod.FIFO,
    trading_pb.LOT_METHOD_HIFO: LotMethod.HIFO,
    trading_pb.LOT_METHOD_TAX_MINIMIZING: LotMethod.TAX_MINIMIZING,
}
"""``stratopt.v1.LotMethod`` → the engine's (UNSPECIFIED: None, the policy's default)."""
_PROTO_IMPACT_MODELS: Final = {model: value for value, model in IMPACT_MODELS.items()}
_PROTO_LOT_METHODS: Final = {method: value for value, method in LOT_METHODS.items()}


def _checked_datetime(value: Timestamp, field: str) -> datetime:
    """A valid protobuf Timestamp as a UTC datetime (years 0001 to 9999)."""
    check_timestamp(value, field)
    return value.ToDatetime(tzinfo=UTC)


def _optional(message: Message, name: str) -> Any:
    """The value of a presence-tracked field, None when unset."""
    return getattr(message, name) if message.HasField(name) else None


def status_value(status: RecommendationStatus | str) -> trading_pb.RecommendationStatus.ValueType:
    """The ``stratopt.v1.RecommendationStatus`` of a lifecycle status (or of its stored name)."""
    return trading_pb.RecommendationStatus.Value(_STATUS_PREFIX + RecommendationStatus(status).value)


def position_of_message(position: trading_pb.Position, field: str = "positions[0]") -> Position:
    """A position of the contract (lot acquisition times checked to be in range, naming ``field``)."""
    lots = []
    for j, lot in enumerate(position.lots):
        acquired = _checked_datetime(lot.acquired, f"{field}.lots[{j}].acquired") if lot.HasField("acquired") else None
        lots.append(PositionLot(lot_id=lot.lot_id, shares=lot.shares, cost_basis=lot.cost_basis, acquired=acquired))
    return Position(
        symbol=position.symbol, shares=position.shares, price=_optional(position, "price"), lots=tuple(lots)
    )


def position_message(position: Position) -> trading_pb.Position:
    """The contract's ``Position`` of a position."""
    message = trading_pb.Position(symbol=position.symbol, shares=position.shares)
    if position.price is not None:
        message.price = position.price
    for lot in position.lots:
        added = message.lots.add(lot_id=lot.lot_id, shares=lot.shares, cost_basis=lot.cost_basis)
        if lot.acquired is not None:
            added.acquired.CopyFrom(timestamp(lot.acquired))
    return message


def policy_of_message(policy: trading_pb.RebalancePolicy, field: str = "policy") -> RebalancePolicy:
    """The rebalance policy of the contract's message (unset fields None).

    Raises
    ------
    InvalidInputError
        ``policy.impact_model`` or ``policy.lot_method`` unknown; ``policy.approval_ttl`` not a valid Duration.
    """
    if policy.impact_model not in (*IMPACT_MODELS, trading_pb.IMPACT_MODEL_UNSPECIFIED):
        raise InvalidInputError.for_field(f"{field}.impact_model", f"unknown impact model {policy.impact_model}")
    if policy.lot_method not in (*LOT_METHODS, trading_pb.LOT_METHOD_UNSPECIFIED):
        raise InvalidInputError.for_field(f"{field}.lot_method", f"unknown lot method {policy.lot_method}")
    approval_ttl = None
    if policy.HasField("approval_ttl"):
        value = policy.approval_ttl
        same_sign = (value.seconds >= 0 and value.nanos >= 0) or (value.seconds <= 0 and value.nanos <= 0)
        if not (same_sign and abs(value.nanos) < 1_000_000_000):
            raise InvalidInputError.for_field(f"{field}.approval_ttl", "is not a valid duration")
        approval_ttl = value.ToTimedelta()
    return RebalancePolicy(
        drift_threshold=_optional(policy, "drift_threshold"),
        bands={
            symbol: Band(absolute=_optional(band, "absolute"), relative=_optional(band, "relative"))
            for symbol, band in policy.bands.items()
        },
        min_trade_value=policy.min_trade_value,
        max_turnover=_optional(policy, "max_turnover"),
        commission_per_trade=policy.commission_per_trade,
        commission_per_share=policy.commission_per_share,
        impact_model=IMPACT_MODELS.get(policy.impact_model),
        impact_coefficient=_optional(policy, "impact_coefficient"),
        lot_method=LOT_METHODS.get(policy.lot_method),
        prefer_losses=policy.prefer_losses,
        short_term_tax_rate=_optional(policy, "short_term_tax_rate"),
        long_term_tax_rate=_optional(policy, "long_term_tax_rate"),
        long_term_after_days=_optional(policy, "long_term_after_days"),
        wash_sale_window_days=_optional(policy, "wash_sale_window_days"),
        approval_limit=_optional(policy, "approval_limit"),
        approval_ttl=approval_ttl,
        max_participation=_optional(policy, "max_participation"),
        max_cost_bps=_optional(policy, "max_cost_bps"),
    )


def policy_message(policy: RebalancePolicy) -> trading_pb.RebalancePolicy:
    """The contract's ``RebalancePolicy`` of a policy (None fields unset)."""
    message = trading_pb.RebalancePolicy(
        min_trade_value=policy.min_trade_value,
        commission_per_trade=policy.commission_per_trade,
        commission_per_share=policy.commission_per_share,
        prefer_losses=policy.prefer_losses,
    )
    for name in (
        "drift_threshold",
        "max_turnover",
        "impact_coefficient",
        "short_term_tax_rate",
        "long_term_tax_rate",
        "long_term_after_days",
        "wash_sale_window_days",
        "approval_limit",
        "max_participation",
        "max_cost_bps",
    ):
        value = getattr(policy, name)
        if value is not None:
            setattr(message, name, value)
    for symbol, band in policy.bands.items():
        added = message.bands[symbol]
        added.SetInParent()
        if band.absolute is not None:
            added.absolute = band.absolute
        if band.relative is not None:
            added.relative = band.relative
    if policy.impact_model is not None:
        message.impact_model = _PROTO_IMPACT_MODELS[policy.impact_model]
    if policy.lot_method is not None:
        message.lot_method = _PROTO_LOT_METHODS[policy.lot_method]
    if policy.approval_ttl is not None:
        message.approval_ttl.FromTimedelta(policy.approval_ttl)
    return message


def recommendation_message(recommendation: RebalanceRecommendation) -> trading_pb.RebalanceRecommendation:
    """The contract's ``RebalanceRecommendation`` of a recommendation."""
    message = trading_pb.RebalanceRecommendation(
        recommendation_id=recommendation.recommendation_id,
        portfolio_id=recommendation.portfolio_id,
        total_trade_value=recommendation.total_trade_value,
        total_cost=recommendation.total_cost,
        turnover=recommendation.turnover,
        drift_before=recommendation.drift_before,
        drift_after=recommendation.drift_after,
        short_term_gain=recommendation.short_term_gain,
        long_term_gain=recommendation.long_term_gain,
        estimated_tax=recommendation.estimated_tax,
        approval_limit=recommendation.approval_limit,
        decided_by=recommendation.decided_by,
        reason=recommendation.reason,
        hold_reason=recommendation.hold_reason,
    )
    for trade in recommendation.trades:
        line = message.trades.add(
            symbol=trade.symbol,
            side=trading_pb.TRADE_SIDE_SELL if trade.side is Side.SELL else trading_pb.TRADE_SIDE_BUY,
            shares=trade.shares,
            price=trade.price,
            value=trade.value,
            commission=trade.commission,
            spread_cost=trade.spread_cost,
            impact_cost=trade.impact_cost,
            total_cost=trade.total_cost,
            short_term_gain=trade.short_term_gain,
            long_term_gain=trade.long_term_gain,
            wash_sale=trade.wash_sale,
            participation_capped=trade.participation_capped,
        )
        for lot in trade.lots:
            line.lots.add(
                lot_id=lot.lot_id, shares=lot.shares, cost_basis=lot.cost_basis, gain=lot.gain, long_term=lot.long_term
            )
    for candidate in recommendation.harvest_candidates:
        message.harvest_candidates.add(
            symbol=candidate.symbol,
            lot_id=candidate.lot_id,
            shares=candidate.shares,
            unrealized_loss=candidate.unrealized_loss,
            wash_sale_risk=candidate.wash_sale_risk,
        )
    if recommendation.status is not None:
        message.status = status_value(recommendation.status)
    for name in ("created_at", "expires_at", "decided_at"):
        value = getattr(recommendation, name)
        if value is not None:
            getattr(message, name).CopyFrom(timestamp(value))
    return message


def _side(value: trading_pb.TradeSide.ValueType) -> Side:
    return Side.SELL if value == trading_pb.TRADE_SIDE_SELL else Side.BUY


def recommendation_of_message(message: trading_pb.RebalanceRecommendation) -> RebalanceRecommendation:
    """The recommendation of the contract's message (the inverse of :func:`recommendation_message`)."""
    status_name = trading_pb.RecommendationStatus.Name(message.status).removeprefix(_STATUS_PREFIX)
    return RebalanceRecommendation(
        recommendation_id=message.recommendation_id,
        portfolio_id=message.portfolio_id,
        trades=tuple(
            RecommendedTrade(
                symbol=trade.symbol,
                side=_side(trade.side),
                shares=trade.shares,
                price=trade.price,
                value=trade.value,
                commission=trade.commission,
                spread_cost=trade.spread_cost,
                impact_cost=trade.impact_cost,
                total_cost=trade.total_cost,
                lots=tuple(
                    LotSold(
                        lot_id=lot.lot_id,
                        shares=lot.shares,
                        cost_basis=lot.cost_basis,
                        gain=lot.gain,
                        long_term=lot.long_term,
                    )
                    for lot in trade.lots
                ),
                short_term_gain=trade.short_term_gain,
                long_term_gain=trade.long_term_gain,
                wash_sale=trade.wash_sale,
                participation_capped=trade.participation_capped,
            )
            for trade in message.trades
        ),
        total_trade_value=message.total_trade_value,
        total_cost=message.total_cost,
        turnover=message.turnover,
        drift_before=message.drift_before,
        drift_after=message.drift_after,
        short_term_gain=message.short_term_gain,
        long_term_gain=message.long_term_gain,
        estimated_tax=message.estimated_tax,
        harvest_candidates=tuple(
            LossHarvest(
                symbol=candidate.symbol,
                lot_id=candidate.lot_id,
                shares=candidate.shares,
                unrealized_loss=candidate.unrealized_loss,
                wash_sale_risk=candidate.wash_sale_risk,
            )
            for candidate in message.harvest_candidates
        ),
        approval_limit=message.approval_limit,
        status=RecommendationStatus(status_name) if message.status else None,
        created_at=message.created_at.ToDatetime(tzinfo=UTC) if message.HasField("created_at") else None,
        expires_at=message.expires_at.ToDatetime(tzinfo=UTC) if message.HasField("expires_at") else None,
        decided_by=message.decided_by,
        decided_at=message.decided_at.ToDatetime(tzinfo=UTC) if message.HasField("decided_at") else None,
        reason=message.reason,
        hold_reason=message.hold_reason,
    )


# --- rebalancing: requests → commands ---------------------------------------------------------------------------


def upsert_holdings_command(request: trading_pb.UpsertHoldingsRequest) -> UpsertHoldings:
    """The command of an UpsertHoldings request.

    Raises
    ------
    InvalidInputError
        ``positions[i].lots[j].acquired`` out of range (years 0001 to 9999); any string with a NUL character or
        over its length limit (``stratopt.request_limits``).
    """
    check_request(request)
    return UpsertHoldings(
        portfolio_id=request.portfolio_id,
        positions=tuple(position_of_message(p, f"positions[{i}]") for i, p in enumerate(request.positions)),
        cash=request.cash,
    )


def upsert_policy_command(request: trading_pb.UpsertRebalancePolicyRequest) -> UpsertPolicy:
    """The command of an UpsertRebalancePolicy request (see :func:`policy_of_message` for what it raises)."""
    check_request(request)
    return UpsertPolicy(portfolio_id=request.portfolio_id, policy=policy_of_message(request.policy))


def check_drift_command(request: trading_pb.CheckDriftRequest) -> CheckDrift:
    """The command of a CheckDrift request (unset ``threshold``: None; strings checked as everywhere)."""
    check_request(request)
    return CheckDrift(
        portfolio_id=request.portfolio_id,
        target_weights=dict(request.target_weights),
        prices=dict(request.prices),
        threshold=_optional(request, "threshold"),
    )


def generate_rebalance_fingerprint(request: trading_pb.GenerateRebalanceRequest) -> str:
    """Idempotency fingerprint of a GenerateRebalance request.

    SHA-256 of its deterministic serialization (map entries in key order) without ``request_id``: the value
    stored with the recommendation, compared when the ``request_id`` is used again.
    """
    copy = trading_pb.GenerateRebalanceRequest()
    copy.CopyFrom(request)
    copy.request_id = ""
    return hashlib.sha256(b"GenerateRebalance\0" + copy.SerializeToString(deterministic=True)).hexdigest()


def generate_rebalance_command(request: trading_pb.GenerateRebalanceRequest) -> GenerateRebalance:
    """The command of a GenerateRebalance request, with its fingerprint.

    Raises
    ------
    InvalidInputError
        ``as_of`` out of range (years 0001 to 9999); any string with a NUL character or over its length limit.
    """
    check_request(request)
    return GenerateRebalance(
        portfolio_id=request.portfolio_id,
        request_id=request.request_id,
        request_hash=generate_rebalance_fingerprint(request),
        target_weights=dict(request.target_weights),
        prices=dict(request.prices),
        market={
            symbol: MarketQuote(adv=quote.adv, daily_volatility=quote.daily_volatility, spread_bps=quote.spread_bps)
            for symbol, quote in request.market.items()
        },
        as_of=_checked_datetime(request.as_of, "as_of") if request.HasField("as_of") else None,
    )


def approve_rebalance_command(request: trading_pb.ApproveRebalanceRequest, *, approver: str) -> Decision:
    """The decision of an ApproveRebalance request by the authenticated ``approver``.

    The deprecated request field ``approver`` is ignored; ``recommendation_id`` and ``reason`` are checked for NUL
    and length.
    """
    check_request(request)
    return Decision(recommendation_id=request.recommendation_id, approver=approver, reason=request.reason)


def reject_rebalance_command(request: trading_pb.RejectRebalanceRequest, *, approver: str) -> Decision:
    """The decision of a RejectRebalance request by the authenticated ``approver``.

    The deprecated request field ``approver`` is ignored; ``recommendation_id`` and ``reason`` are checked for NUL
    and length.
    """
    check_request(request)
    return Decision(recommendation_id=request.recommendation_id, approver=approver, reason=request.reason)


# --- rebalancing: results → responses ---------------------------------------------------------------------------


def upsert_holdings_response(stored: HoldingsStored) -> trading_pb.UpsertHoldingsResponse:
    """The UpsertHoldings response."""
    response = trading_pb.UpsertHoldingsResponse(portfolio_id=stored.portfolio_id, positions=stored.positions)
    response.updated_at.CopyFrom(timestamp(stored.updated_at))
    return response


def upsert_policy_response(portfolio_id: str, policy: RebalancePolicy) -> trading_pb.UpsertRebalancePolicyResponse:
    """The UpsertRebalancePolicy response: the stored policy, defaults filled in."""
    return trading_pb.UpsertRebalancePolicyResponse(portfolio_id=portfolio_id, policy=policy_message(policy))


def check_drift_response(drift: DriftCheck) -> trading_pb.CheckDriftResponse:
    """The CheckDrift response: per-symbol weights and drift in the report's order."""
    report = drift.report
    response = trading_pb.CheckDriftResponse(
        cash_weight=report.cash_weight,
        total_value=report.total_value,
        portfolio_drift=report.portfolio_drift,
        one_way_drift=report.one_way_drift,
        threshold=report.threshold,
        exceeds_threshold=report.exceeds_threshold,
        target_event_id=drift.target_event_id,
    )
    for i, symbol in enumerate(report.symbols):
        response.names.add(
            symbol=symbol,
            current_weight=float(report.current_weights[i]),
            target_weight=float(report.target_weights[i]),
            drift=float(report.drift[i]),
            breached=bool(report.breaches[i]),
        )
    return response


def generate_rebalance_response(generated: GeneratedRebalance) -> trading_pb.GenerateRebalanceResponse:
    """The GenerateRebalance response."""
    return trading_pb.GenerateRebalanceResponse(
        recommendation=recommendation_message(generated.recommendation), replayed=generated.replayed
    )


def approve_rebalance_response(recommendation: RebalanceRecommendation) -> trading_pb.ApproveRebalanceResponse:
    """The ApproveRebalance response."""
    return trading_pb.ApproveRebalanceResponse(recommendation=recommendation_message(recommendation))


def reject_rebalance_response(recommendation: RebalanceRecommendation) -> trading_pb.RejectRebalanceResponse:
    """The RejectRebalance response."""
    return trading_pb.RejectRebalanceResponse(recommendation=recommendation_message(recommendation))
