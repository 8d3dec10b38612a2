"""``stratopt.v1`` execution messages ↔ the execution model (every request checked by ``check_request`` first)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from command_side.execution import Fill, PaperImpact
from command_side.execution_service import Reconciliation
from command_side.execution_store import (
    DEFAULT_COMMISSION_PER_SHARE,
    DEFAULT_IMPACT_BPS,
    DEFAULT_IMPACT_LOOKBACK_PERIODS,
    DEFAULT_SPREAD_BPS,
    ClaimedOrder,
    ExecutionResult,
    OrderState,
    PaperBroker,
)
from services.errors import InvalidInputError
from stratopt.request_limits import check_request
from stratopt.v1 import execution_service_pb2 as ex_pb

MAX_FILLS_PER_REPORT = 1000
DEFAULT_CLAIM_LIMIT = 100
MAX_CLAIM_LIMIT = 1000
MAX_CANCEL_ORDERS = 1000
MAX_BPS = 10_000.0
MAX_IMPACT_LOOKBACK_PERIODS = 10_000
"""Most stored bars read for the paper broker's σ and average daily volume."""
MAX_ADV_ENTRIES = 10_000
"""Most entries of ``settings.average_daily_volume``."""
_IMPACT_MODELS: dict[int, PaperImpact] = {
    ex_pb.PAPER_IMPACT_MODEL_UNSPECIFIED: PaperImpact.FIXED,
    ex_pb.PAPER_IMPACT_MODEL_FIXED: PaperImpact.FIXED,
    ex_pb.PAPER_IMPACT_MODEL_SQUARE_ROOT: PaperImpact.SQUARE_ROOT,
    ex_pb.PAPER_IMPACT_MODEL_ALMGREN_2005: PaperImpact.ALMGREN_2005,
}


def _bad(field: str, description: str) -> InvalidInputError:
    return InvalidInputError.for_field(field, description)


def _portfolio(value: str) -> str:
    if not value:
        raise _bad("portfolio_id", "is required")
    return value


def _nonnegative(value: float, field: str, limit: float = math.inf) -> float:
    if not (math.isfinite(value) and 0 <= value <= limit):
        raise _bad(field, f"must be finite, ≥ 0 and ≤ {limit:g}, got {value}")
    return value


def _positive(value: float, field: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise _bad(field, f"must be finite and > 0, got {value}")
    return value


def _impact_model(value: int) -> PaperImpact:
    if value not in _IMPACT_MODELS:
        raise _bad("settings.impact_model", f"unknown model {value}")
    return _IMPACT_MODELS[value]


def _lookback(settings: ex_pb.PaperBrokerSettings) -> int:
    if not settings.HasField("impact_lookback_periods"):
        return DEFAULT_IMPACT_LOOKBACK_PERIODS
    value = settings.impact_lookback_periods
    if not 2 <= value <= MAX_IMPACT_LOOKBACK_PERIODS:
        raise _bad("settings.impact_lookback_periods", f"must be 2 to {MAX_IMPACT_LOOKBACK_PERIODS}, got {value}")
    return value


def _volumes(volumes: object) -> dict[str, float]:
    given = {str(k): float(v) for k, v in dict(volumes).items()}  # type: ignore[call-overload]
    if len(given) > MAX_ADV_ENTRIES:
        raise _bad("settings.average_daily_volume", f"at most {MAX_ADV_ENTRIES} entries, got {len(given)}")
    for symbol, value in sorted(given.items()):
        _positive(value, f"settings.average_daily_volume[{symbol}]")
    return given


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def execute_orders_command(request: ex_pb.ExecuteOrdersRequest) -> tuple[str, datetime | None, PaperBroker]:
    """``(portfolio_id, as_of or None, broker settings)`` of an ExecuteOrders request."""
    check_request(request)
    s = request.settings
    broker = PaperBroker(
        spread_bps=_nonnegative(s.spread_bps, "settings.spread_bps", MAX_BPS) if s.HasField("spread_bps")
        else DEFAULT_SPREAD_BPS,
        impact_bps=_nonnegative(s.impact_bps, "settings.impact_bps", MAX_BPS) if s.HasField("impact_bps")
        else DEFAULT_IMPACT_BPS,
        commission_per_share=_nonnegative(s.commission_per_share, "settings.commission_per_share")
        if s.HasField("commission_per_share") else DEFAULT_COMMISSION_PER_SHARE,
        impact_model=_impact_model(s.impact_model),
        impact_coefficient=_positive(s.impact_coefficient, "settings.impact_coefficient")
        if s.HasField("impact_coefficient") else 1.0,
        impact_lookback_periods=_lookback(s),
        average_daily_volume=_volumes(s.average_daily_volume),
    )  # fmt: skip
    as_of = request.as_of.ToDatetime(tzinfo=UTC) if request.HasField("as_of") else None
    return _portfolio(request.portfolio_id), as_of, broker


def report_fills_command(request: ex_pb.ReportFillsRequest) -> tuple[str, list[Fill]]:
    """``(portfolio_id, fills)`` of a ReportFills request, every field checked and named."""
    check_request(request)
    portfolio_id = _portfolio(request.portfolio_id)
    if not 1 <= len(request.fills) <= MAX_FILLS_PER_REPORT:
        raise _bad("fills", f"needs 1 to {MAX_FILLS_PER_REPORT} fills, got {len(request.fills)}")
    fills = []
    for i, f in enumerate(request.fills):
        path = f"fills[{i}]"
        if not f.fill_id:
            raise _bad(f"{path}.fill_id", "is required")
        try:
            order_id = str(uuid.UUID(f.order_id))
        except ValueError:
            raise _bad(f"{path}.order_id", "must be an order id (a UUID)") from None
        if f.side not in ("BUY", "SELL"):
            raise _bad(f"{path}.side", "must be BUY or SELL")
        for name in ("shares", "price"):
            value = getattr(f, name)
            if not (math.isfinite(value) and value > 0):
                raise _bad(f"{path}.{name}", f"must be finite and > 0, got {value}")
        _nonnegative(f.commission, f"{path}.commission")
        if not f.HasField("filled_at"):
            raise _bad(f"{path}.filled_at", "is required")
        fills.append(
            Fill(
                fill_id=f.fill_id,
                order_id=order_id,
                symbol=f.symbol,
                side=f.side,
                shares=f.shares,
                price=f.price,
                commission=f.commission,
                filled_at=f.filled_at.ToDatetime(tzinfo=UTC),
            )
        )
    return portfolio_id, fills


def reconcile_command(request: ex_pb.ReconcileRequest) -> tuple[str, dict[str, float], float | None, float]:
    """``(portfolio_id, reported shares by symbol, reported cash or None, tolerance)`` of a Reconcile request."""
    check_request(request)
    portfolio_id = _portfolio(request.portfolio_id)
    reported: dict[str, float] = {}
    for i, p in enumerate(request.positions):
        if not p.symbol:
            raise _bad(f"positions[{i}].symbol", "is required")
        if p.symbol in reported:
            raise _bad(f"positions[{i}].symbol", f"{p.symbol!r} appears twice")
        reported[p.symbol] = _nonnegative(p.shares, f"positions[{i}].shares")
    cash = _nonnegative(request.cash, "cash") if request.HasField("cash") else None
    tolerance = (
        _nonnegative(request.tolerance_shares, "tolerance_shares") if request.HasField("tolerance_shares") else 1e-9
    )
    return portfolio_id, reported, cash, tolerance


def _order(state: OrderState) -> ex_pb.OrderState:
    return ex_pb.OrderState(
        order_id=state.order_id, symbol=state.symbol, side=state.side, shares=state.shares,
        filled_shares=state.filled_shares, average_price=state.average_price, status=state.status,
    )  # fmt: skip


def _fills(result: ExecutionResult) -> list[ex_pb.Fill]:
    return [
        ex_pb.Fill(
            fill_id=a.fill.fill_id,
            order_id=a.fill.order_id,
            symbol=a.fill.symbol,
            side=a.fill.side,
            shares=a.fill.shares,
            price=a.fill.price,
            commission=a.fill.commission,
            filled_at=_timestamp(a.fill.filled_at),
            realised_gain=a.realised_gain,
        )
        for a in result.fills
    ]


def execute_orders_response(result: ExecutionResult) -> ex_pb.ExecuteOrdersResponse:
    """The response of a paper execution."""
    return ex_pb.ExecuteOrdersResponse(
        fills=_fills(result), orders=[_order(o) for o in result.orders], cash=result.cash
    )


def report_fills_response(result: ExecutionResult) -> ex_pb.ReportFillsResponse:
    """The response of a fill report."""
    return ex_pb.ReportFillsResponse(
        applied=len(result.fills), duplicates=result.duplicates, orders=[_order(o) for o in result.orders],
        cash=result.cash,
    )  # fmt: skip


def reconcile_response(result: Reconciliation) -> ex_pb.ReconcileResponse:
    """The response of a reconciliation."""
    response = ex_pb.ReconcileResponse(
        breaks=[
            ex_pb.PositionBreak(
                symbol=b.symbol,
                expected_shares=b.expected_shares,
                reported_shares=b.reported_shares,
                difference=b.difference,
            )
            for b in result.breaks
        ],
        reconciled=result.reconciled,
    )
    if result.cash_difference is not None:
        response.cash_difference = result.cash_difference
    return response


def claim_orders_command(request: ex_pb.ClaimOrdersRequest) -> tuple[str, int]:
    """``(portfolio_id or '', limit)`` of a ClaimOrders request.

    Raises
    ------
    InvalidInputError
        ``limit`` above ``MAX_CLAIM_LIMIT``.
    """
    check_request(request)
    limit = request.limit or DEFAULT_CLAIM_LIMIT
    if limit > MAX_CLAIM_LIMIT:
        raise _bad("limit", f"at most {MAX_CLAIM_LIMIT}, got {limit}")
    return request.portfolio_id, limit


def cancel_orders_command(request: ex_pb.CancelOrdersRequest) -> tuple[str, list[str], str]:
    """``(portfolio_id, order ids, reason)`` of a CancelOrders request.

    Raises
    ------
    InvalidInputError
        ``portfolio_id`` missing; ``order_ids`` empty or over ``MAX_CANCEL_ORDERS``; ``order_ids[i]`` no UUID or
        repeated.
    """
    check_request(request)
    portfolio_id = _portfolio(request.portfolio_id)
    if not 1 <= len(request.order_ids) <= MAX_CANCEL_ORDERS:
        raise _bad("order_ids", f"needs 1 to {MAX_CANCEL_ORDERS} order ids, got {len(request.order_ids)}")
    order_ids: list[str] = []
    for i, text in enumerate(request.order_ids):
        try:
            order_id = str(uuid.UUID(text))
        except ValueError:
            raise _bad(f"order_ids[{i}]", "must be an order id (a UUID)") from None
        if order_id in order_ids:
            raise _bad(f"order_ids[{i}]", f"repeats order_ids[{order_ids.index(order_id)}]")
        order_ids.append(order_id)
    return portfolio_id, order_ids, request.reason


def cancel_orders_response(orders: list[OrderState]) -> ex_pb.CancelOrdersResponse:
    """The response of a cancel: the orders' states, in the request's order."""
    return ex_pb.CancelOrdersResponse(orders=[_order(o) for o in orders])


def claim_orders_response(orders: list[ClaimedOrder]) -> ex_pb.ClaimOrdersResponse:
    """The response of a claim."""
    return ex_pb.ClaimOrdersResponse(
        orders=[
            ex_pb.ClaimedOrder(
                order_id=o.order_id,
                portfolio_id=o.portfolio_id,
                symbol=o.symbol,
                side=o.side,
                shares=o.shares,
                reference_price=o.reference_price,
                reason=o.reason,
                created_at=_timestamp(o.created_at),
            )
            for o in orders
        ]
    )
