"""Holdings, rebalance policies, drift, rebalance recommendations and their approval over gRPC.

The use cases of ``stratopt.v1.TradingCommandService`` from UpsertHoldings to RejectRebalance. The numbers come
from the pure engine (:func:`services.trading.check_drift`, :func:`services.trading.generate_rebalance` and
:mod:`services.trading`); this module validates requests, gathers the stored inputs (holdings, policy, prices,
target) and persists through a :class:`command_side.trading_store.TradingStore` given to the service (the
PostgreSQL one, :class:`command_side.rebalancing_repository.PostgresTradingStore`, in the server).

Inputs of CheckDrift and GenerateRebalance
------------------------------------------
* Holdings: the stored snapshot (UpsertHoldings). None stored: FAILED_PRECONDITION ``NO_HOLDINGS`` (a portfolio
  without holdings is a state to fix by storing them, not an unknown resource).
* Policy: the stored one, or the defaults of the proto comments when none is stored.
* Target: the request's ``target_weights``, else the weights of the portfolio's latest optimization
  (``latest_portfolio_optimizations``); neither: FAILED_PRECONDITION ``NO_TARGET``. A stored target summing above
  1 fails FAILED_PRECONDITION ``UNSUPPORTED_TARGET`` (the rest of a target is cash, never negative); one with
  negative weights (a long-short optimization) is reported by CheckDrift but cannot be traded to by the long-only
  GenerateRebalance (``UNSUPPORTED_TARGET`` as well).
* Names: the held names with shares > 0 and the target names with a weight of magnitude at least ``1e-9``
  (smaller target weights of names not held count as cash), by symbol.
* Prices: the request's ``prices``, else the latest stored close in ``market_data`` (at or before ``as_of`` for
  GenerateRebalance when given); a name without a price: FAILED_PRECONDITION with one ``MISSING_MARKET_DATA``
  violation per symbol. Holdings and cash worth nothing: FAILED_PRECONDITION ``EMPTY_PORTFOLIO``.

Recommendations
---------------
The approval rule is the lifecycle of :class:`services.trading.RecommendationState` (one state machine, used by
the stores here and by the query side): a recommendation is AUTO_APPROVED when its total trade value (buys plus
sells) is at most the policy's ``approval_limit`` (decided at creation: ``decided_at`` = ``created_at``, no
approver), else PENDING_APPROVAL until ``created_at + approval_ttl`` (``expires_at``). Approve and Reject move
only PENDING_APPROVAL ones; a new recommendation supersedes the portfolio's pending ones. A pending
recommendation at or past ``expires_at`` is EXPIRED: the store persists it (row and EXPIRED event, dated at
``expires_at``) when it next touches the portfolio's recommendations: at the start of GenerateRebalance (before
the idempotency check) and of Approve/Reject, every overdue pending recommendation of the portfolio is expired.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from command_side.trading_store import TradingStore
from services.errors import (
    DeadlineExceededError,
    IntegrityError,
    InvalidInputError,
    PreconditionError,
    PreconditionViolation,
)
from services.trading import (
    CostModel,
    DriftReport,
    Holding,
    ImpactModel,
    LotMethod,
    MarketInputs,
    Purchase,
    RealizedLoss,
    RebalancePlan,
    RecommendationStatus,
    Side,
    TaxLot,
    TaxSettings,
    check_drift,
    generate_rebalance,
    validate_lots,
)
from stratopt.v1 import trading_service_pb2 as trading_pb

DEFAULT_DRIFT_THRESHOLD: Final = 0.05
"""Two-way portfolio drift above which CheckDrift flags (fraction)."""
DEFAULT_IMPACT_COEFFICIENT: Final = 1.0
"""Y of the square-root impact model."""
DEFAULT_SHORT_TERM_TAX_RATE: Final = 0.37
DEFAULT_LONG_TERM_TAX_RATE: Final = 0.20
DEFAULT_WASH_SALE_WINDOW_DAYS: Final = 30
DEFAULT_APPROVAL_LIMIT: Final = 10_000.0
"""Total trade value ($) above which a recommendation needs approval."""
DEFAULT_APPROVAL_TTL: Final = timedelta(hours=24)
"""How long a pending recommendation waits for a decision."""
MAX_APPROVAL_TTL: Final = timedelta(days=3650)
MAX_DAYS: Final = 36_500
"""Largest accepted ``long_term_after_days`` and ``wash_sale_window_days``."""
MAX_POSITIONS: Final = 10_000
MAX_LOTS_PER_POSITION: Final = 10_000
MAX_ID_LENGTH: Final = 200
MAX_REASON_LENGTH: Final = 4_000
TARGET_EPSILON: Final = 1e-9
"""Target weights of names not held smaller than this in magnitude count as cash."""
TARGET_SUM_TOLERANCE: Final = 1e-9

_MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
_IMPACT_MODELS: Final = {
    trading_pb.IMPACT_MODEL_NONE: ImpactModel.NONE,
    trading_pb.IMPACT_MODEL_SQUARE_ROOT: ImpactModel.SQUARE_ROOT,
    trading_pb.IMPACT_MODEL_ALMGREN_2005: ImpactModel.ALMGREN_2005,
}
_LOT_METHODS: Final = {
    trading_pb.LOT_METHOD_FIFO: LotMethod.FIFO,
    trading_pb.LOT_METHOD_HIFO: LotMethod.HIFO,
    trading_pb.LOT_METHOD_TAX_MINIMIZING: LotMethod.TAX_MINIMIZING,
}


# --- validation helpers ---------------------------------------------------------------------------------------


def _required_id(value: str, field: str) -> str:
    if not value:
        raise InvalidInputError.for_field(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError.for_field(field, f"must be at most {MAX_ID_LENGTH} characters")
    return value


def _number(value: float, field: str, *, strict: bool = False, maximum: float | None = None) -> float:
    """A finite number ≥ 0 (> 0 when ``strict``, ≤ ``maximum`` when given)."""
    ok = math.isfinite(value) and (value > 0.0 if strict else value >= 0.0)
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        relation = "> 0" if strict else "≥ 0"
        bound = "" if maximum is None else f" and ≤ {maximum:g}"
        raise InvalidInputError.for_field(field, f"is {value!r}; must be finite, {relation}{bound}")
    return float(value)


def _timestamp(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A valid protobuf Timestamp as a UTC datetime."""
    if not (_MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS and 0 <= value.nanos < 1_000_000_000):
        raise InvalidInputError.for_field(field, "timestamp out of range (years 0001 to 9999)")
    return value.ToDatetime(tzinfo=UTC)


def _ttl(value: duration_pb2.Duration, field: str) -> timedelta:
    """A positive Duration of at most ``MAX_APPROVAL_TTL``."""
    same_sign = (value.seconds >= 0 and value.nanos >= 0) or (value.seconds <= 0 and value.nanos <= 0)
    if not (same_sign and abs(value.nanos) < 1_000_000_000):
        raise InvalidInputError.for_field(field, "is not a valid duration")
    if value.seconds > MAX_APPROVAL_TTL.total_seconds():
        raise InvalidInputError.for_field(field, f"must be at most {MAX_APPROVAL_TTL.days} days")
    ttl = value.ToTimedelta()
    if ttl <= timedelta(0):
        raise InvalidInputError.for_field(field, "must be positive")
    return ttl


def _recommendation_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError.for_field("recommendation_id", f"{value[:64]!r} is not a UUID") from None


def _text(value: str, field: str, *, required: bool, limit: int) -> str:
    if required and not value.strip():
        raise InvalidInputError.for_field(field, "is required")
    if len(value) > limit:
        raise InvalidInputError.for_field(field, f"must be at most {limit} characters")
    return value


def _size(mapping: Mapping[str, object], field: str) -> None:
    if len(mapping) > MAX_POSITIONS:
        raise InvalidInputError.for_field(field, f"at most {MAX_POSITIONS} entries")


def _prices(prices: Mapping[str, float]) -> dict[str, float]:
    """The request's prices, each finite and > 0 (``prices[SYMBOL]``)."""
    _size(prices, "prices")
    for symbol, price in prices.items():
        if not symbol:
            raise InvalidInputError.for_field("prices", "has an empty symbol")
        _number(price, f"prices[{symbol}]", strict=True)
    return dict(prices)


def _request_targets(targets: Mapping[str, float], *, long_only: bool) -> dict[str, float]:
    """The request's target weights: finite (and ≥ 0 when ``long_only``), summing to at most 1."""
    _size(targets, "target_weights")
    for symbol, weight in targets.items():
        if not symbol:
            raise InvalidInputError.for_field("target_weights", "has an empty symbol")
        if not math.isfinite(weight) or (long_only and weight < 0.0):
            rule = "finite and ≥ 0 (trades are long-only)" if long_only else "finite"
            raise InvalidInputError.for_field(f"target_weights[{symbol}]", f"is {weight!r}; must be {rule}")
    total = math.fsum(targets.values())
    if total > 1.0 + TARGET_SUM_TOLERANCE:
        raise InvalidInputError.for_field(
            "target_weights", f"sum to {total:.10g} > 1; the remainder is the target cash weight, never negative"
        )
    return dict(targets)


def _market(market: Mapping[str, trading_pb.MarketInputs]) -> dict[str, trading_pb.MarketInputs]:
    _size(market, "market")
    for symbol, inputs in market.items():
        if not symbol:
            raise InvalidInputError.for_field("market", "has an empty symbol")
        _number(inputs.adv, f"market[{symbol}].adv", strict=True)
        _number(inputs.daily_volatility, f"market[{symbol}].daily_volatility")
        _number(inputs.spread_bps, f"market[{symbol}].spread_bps")
    return dict(market)


def _lots(position: trading_pb.Position, field: str) -> tuple[TaxLot, ...]:
    """The position's tax lots, validated (see :func:`services.trading.validate_lots`)."""
    if len(position.lots) > MAX_LOTS_PER_POSITION:
        raise InvalidInputError.for_field(f"{field}.lots", f"at most {MAX_LOTS_PER_POSITION} lots per position")
    lots = []
    for j, lot in enumerate(position.lots):
        if not lot.HasField("acquired"):
            raise InvalidInputError.for_field(f"{field}.lots[{j}].acquired", "must be set")
        acquired = _timestamp(lot.acquired, f"{field}.lots[{j}].acquired").date()
        lots.append(TaxLot(lot_id=lot.lot_id, shares=lot.shares, cost_basis=lot.cost_basis, acquired=acquired))
    validate_lots(lots, position.shares, field=field)
    return tuple(lots)


def validate_holdings_request(request: trading_pb.UpsertHoldingsRequest) -> None:
    """Check an UpsertHoldings request.

    Raises
    ------
    InvalidInputError
        Naming ``portfolio_id`` (empty), ``positions`` (more than ``MAX_POSITIONS``), ``positions[i].symbol``
        (empty or duplicate), ``positions[i].shares`` (negative or not finite), ``positions[i].price`` (set but
        not finite and > 0), ``positions[i].lots[j].<field>`` (empty or duplicate id, shares or cost basis not
        finite and > 0, acquisition date unset), ``positions[i].lots`` (lot shares not adding up to the
        position's within 1e-9 relative) or ``cash`` (negative or not finite).
    """
    _required_id(request.portfolio_id, "portfolio_id")
    if len(request.positions) > MAX_POSITIONS:
        raise InvalidInputError.for_field("positions", f"at most {MAX_POSITIONS} positions")
    seen: set[str] = set()
    for i, position in enumerate(request.positions):
        field = f"positions[{i}]"
        if not position.symbol:
            raise InvalidInputError.for_field(f"{field}.symbol", "must not be empty")
        if position.symbol in seen:
            raise InvalidInputError.for_field(f"{field}.symbol", f"duplicate symbol {position.symbol!r}")
        seen.add(position.symbol)
        _number(position.shares, f"{field}.shares")
        if position.HasField("price"):
            _number(position.price, f"{field}.price", strict=True)
        _lots(position, field)
    _number(request.cash, "cash")


def validate_policy(policy: trading_pb.RebalancePolicy, field: str = "policy") -> None:
    """Check a rebalance policy.

    Raises
    ------
    InvalidInputError
        Naming ``policy.<field>``: a threshold, band, trade value, turnover, commission, impact coefficient or
        approval limit that is negative or not finite; ``policy.bands`` with an empty symbol; a tax rate outside
        [0, 1]; a day count above ``MAX_DAYS``; an unknown impact model or lot method; an ``approval_ttl`` that
        is not positive or longer than ``MAX_APPROVAL_TTL``.
    """
    if policy.HasField("drift_threshold"):
        _number(policy.drift_threshold, f"{field}.drift_threshold")
    for symbol, band in policy.bands.items():
        if not symbol:
            raise InvalidInputError.for_field(f"{field}.bands", "has an empty symbol")
        if band.HasField("absolute"):
            _number(band.absolute, f"{field}.bands[{symbol}].absolute")
        if band.HasField("relative"):
            _number(band.relative, f"{field}.bands[{symbol}].relative")
    _number(policy.min_trade_value, f"{field}.min_trade_value")
    if policy.HasField("max_turnover"):
        _number(policy.max_turnover, f"{field}.max_turnover")
    _number(policy.commission_per_trade, f"{field}.commission_per_trade")
    _number(policy.commission_per_share, f"{field}.commission_per_share")
    if policy.impact_model not in (*_IMPACT_MODELS, trading_pb.IMPACT_MODEL_UNSPECIFIED):
        raise InvalidInputError.for_field(f"{field}.impact_model", f"unknown impact model {policy.impact_model}")
    if policy.HasField("impact_coefficient"):
        _number(policy.impact_coefficient, f"{field}.impact_coefficient")
    if policy.lot_method not in (*_LOT_METHODS, trading_pb.LOT_METHOD_UNSPECIFIED):
        raise InvalidInputError.for_field(f"{field}.lot_method", f"unknown lot method {policy.lot_method}")
    for name in ("short_term_tax_rate", "long_term_tax_rate"):
        if policy.HasField(name):
            _number(getattr(policy, name), f"{field}.{name}", maximum=1.0)
    for name in ("long_term_after_days", "wash_sale_window_days"):
        if getattr(policy, name) > MAX_DAYS:
            raise InvalidInputError.for_field(f"{field}.{name}", f"must be at most {MAX_DAYS}")
    if policy.HasField("approval_limit"):
        _number(policy.approval_limit, f"{field}.approval_limit")
    if policy.HasField("approval_ttl"):
        _ttl(policy.approval_ttl, f"{field}.approval_ttl")


def resolved_policy(policy: trading_pb.RebalancePolicy | None) -> trading_pb.RebalancePolicy:
    """A copy of ``policy`` (or of the empty policy) with every documented default filled in.

    ``max_turnover`` stays unset (no cap) when not given; bands are kept as given.
    """
    resolved = trading_pb.RebalancePolicy()
    if policy is not None:
        resolved.CopyFrom(policy)
    if not resolved.HasField("drift_threshold"):
        resolved.drift_threshold = DEFAULT_DRIFT_THRESHOLD
    if resolved.impact_model == trading_pb.IMPACT_MODEL_UNSPECIFIED:
        resolved.impact_model = trading_pb.IMPACT_MODEL_SQUARE_ROOT
    if not resolved.HasField("impact_coefficient"):
        resolved.impact_coefficient = DEFAULT_IMPACT_COEFFICIENT
    if resolved.lot_method == trading_pb.LOT_METHOD_UNSPECIFIED:
        resolved.lot_method = trading_pb.LOT_METHOD_FIFO
    if not resolved.HasField("short_term_tax_rate"):
        resolved.short_term_tax_rate = DEFAULT_SHORT_TERM_TAX_RATE
    if not resolved.HasField("long_term_tax_rate"):
        resolved.long_term_tax_rate = DEFAULT_LONG_TERM_TAX_RATE
    if not resolved.HasField("wash_sale_window_days"):
        resolved.wash_sale_window_days = DEFAULT_WASH_SALE_WINDOW_DAYS
    if not resolved.HasField("approval_limit"):
        resolved.approval_limit = DEFAULT_APPROVAL_LIMIT
    if not resolved.HasField("approval_ttl"):
        resolved.approval_ttl.FromTimedelta(DEFAULT_APPROVAL_TTL)
    return resolved


def _tax_settings(policy: trading_pb.RebalancePolicy) -> TaxSettings:
    return TaxSettings(
        short_term_rate=policy.short_term_tax_rate,
        long_term_rate=policy.long_term_tax_rate,
        long_term_after_days=policy.long_term_after_days if policy.HasField("long_term_after_days") else None,
        wash_sale_window_days=policy.wash_sale_window_days,
    )


def _cost_model(policy: trading_pb.RebalancePolicy) -> CostModel:
    return CostModel(
        commission_per_trade=policy.commission_per_trade,
        commission_per_share=policy.commission_per_share,
        impact_model=_IMPACT_MODELS[policy.impact_model],
        square_root_coefficient=policy.impact_coefficient,
    )


def request_hash(request: trading_pb.GenerateRebalanceRequest) -> str:
    """Idempotency fingerprint of a GenerateRebalance request.

    SHA-256 of its deterministic serialization (map entries in key order) without ``request_id``.
    """
    copy = trading_pb.GenerateRebalanceRequest()
    copy.CopyFrom(request)
    copy.request_id = ""
    return hashlib.sha256(b"GenerateRebalance\0" + copy.SerializeToString(deterministic=True)).hexdigest()


# --- inputs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The engine inputs of one portfolio, names by symbol."""

    holdings: tuple[Holding, ...]
    cash: float
    targets: np.ndarray
    absolute_bands: np.ndarray
    relative_bands: np.ndarray
    target_event_id: str
    policy: trading_pb.RebalancePolicy


def _violation(kind: str, subject: str, description: str) -> PreconditionError:
    return PreconditionError(description, precondition_violations=(PreconditionViolation(kind, subject, description),))


def _recommendation(
    portfolio_id: str, plan: RebalancePlan, approval_limit: float
) -> trading_pb.RebalanceRecommendation:
    """The recommendation message of a plan (without id, status or times)."""
    message = trading_pb.RebalanceRecommendation(
        portfolio_id=portfolio_id,
        total_trade_value=plan.total_buy_value + plan.total_sell_value,
        total_cost=plan.total_cost,
        turnover=plan.turnover,
        drift_before=plan.drift_before.portfolio_drift,
        drift_after=plan.drift_after.portfolio_drift,
        short_term_gain=plan.short_term_gain,
        long_term_gain=plan.long_term_gain,
        estimated_tax=plan.estimated_tax,
        approval_limit=approval_limit,
    )
    for trade in sorted(plan.trades, key=lambda t: (t.side is not Side.SELL, t.name)):
        line = message.trades.add(
            symbol=trade.name,
            side=trading_pb.TRADE_SIDE_SELL if trade.side is Side.SELL else trading_pb.TRADE_SIDE_BUY,
            shares=trade.shares,
            price=trade.price,
            value=trade.value,
            commission=trade.commission,
            spread_cost=trade.spread_cost,
            impact_cost=trade.impact_cost,
            total_cost=trade.total_cost,
            wash_sale=trade.wash_sale,
        )
        if trade.lots is not None:
            line.short_term_gain = trade.lots.short_term_gain
            line.long_term_gain = trade.lots.long_term_gain
            for lot in trade.lots.lots:
                line.lots.add(
                    lot_id=lot.lot_id,
                    shares=lot.shares,
                    cost_basis=lot.cost_basis,
                    gain=lot.gain,
                    long_term=lot.term.value == "LONG_TERM",
                )
    for candidate in plan.harvest_candidates:
        message.harvest_candidates.add(
            symbol=candidate.name,
            lot_id=candidate.lot_id,
            shares=candidate.shares,
            unrealized_loss=candidate.unrealized_loss,
            wash_sale_risk=candidate.recently_bought,
        )
    return message


def _drift_response(report: DriftReport, target_event_id: str) -> trading_pb.CheckDriftResponse:
    response = trading_pb.CheckDriftResponse(
        cash_weight=report.cash_weight,
        total_value=report.total_value,
        portfolio_drift=report.portfolio_drift,
        one_way_drift=report.one_way_drift,
        threshold=report.threshold,
        exceeds_threshold=report.exceeds_threshold,
        target_event_id=target_event_id,
    )
    for i, name in enumerate(report.names):
        response.names.add(
            symbol=name,
            current_weight=float(report.current_weights[i]),
            target_weight=float(report.target_weights[i]),
            drift=float(report.drift[i]),
            breached=bool(report.breaches[i]),
        )
    return response


class RebalancingService:
    """The rebalancing application service: validation, stored inputs, the engine, atomic persistence.

    Parameters
    ----------
    store : TradingStore
        Where holdings, policies, prices, targets and recommendations are kept (the PostgreSQL store in the
        server, the in-memory one in unit tests).

    Notes
    -----
    Every method may also raise ``UnavailableError`` (gRPC UNAVAILABLE) when the store cannot be reached.
    """

    def __init__(self, store: TradingStore) -> None:
        self._store = store

    async def upsert_holdings(self, request: trading_pb.UpsertHoldingsRequest) -> trading_pb.UpsertHoldingsResponse:
        """Store a holdings snapshot (positions without prices, their lots and cash), replacing the previous one.

        Raises
        ------
        InvalidInputError
            See :func:`validate_holdings_request`; nothing is stored.
        """
        validate_holdings_request(request)
        positions = []
        for position in request.positions:
            stored = trading_pb.Position()
            stored.CopyFrom(position)
            stored.ClearField("price")
            positions.append(stored)
        updated_at = await self._store.store_holdings(request.portfolio_id, positions, request.cash)
        response = trading_pb.UpsertHoldingsResponse(portfolio_id=request.portfolio_id, positions=len(positions))
        response.updated_at.FromDatetime(updated_at)
        return response

    async def upsert_policy(
        self, request: trading_pb.UpsertRebalancePolicyRequest
    ) -> trading_pb.UpsertRebalancePolicyResponse:
        """Store a rebalance policy with its defaults filled in (see :func:`resolved_policy`) and echo it.

        Raises
        ------
        InvalidInputError
            Naming ``portfolio_id`` or ``policy.<field>`` (see :func:`validate_policy`); nothing is stored.
        """
        _required_id(request.portfolio_id, "portfolio_id")
        validate_policy(request.policy)
        policy = resolved_policy(request.policy)
        await self._store.store_policy(request.portfolio_id, policy)
        return trading_pb.UpsertRebalancePolicyResponse(portfolio_id=request.portfolio_id, policy=policy)

    async def _inputs(
        self,
        portfolio_id: str,
        target_weights: Mapping[str, float],
        prices: Mapping[str, float],
        *,
        at_or_before: datetime | None,
        long_only: bool,
    ) -> _Inputs:
        """Holdings, policy, target, prices and bands of a portfolio (see the module docstring)."""
        given_targets = _request_targets(target_weights, long_only=long_only) if target_weights else None
        given_prices = _prices(prices)
        holdings = await self._store.load_holdings(portfolio_id)
        if holdings is None:
            raise _violation("NO_HOLDINGS", portfolio_id, f"portfolio '{portfolio_id}' has no stored holdings")
        policy = resolved_policy(await self._store.load_policy(portfolio_id))
        target_event_id = ""
        if given_targets is not None:
            targets = given_targets
        else:
            latest = await self._store.latest_target(portfolio_id)
            if latest is None:
                raise _violation(
                    "NO_TARGET",
                    portfolio_id,
                    f"portfolio '{portfolio_id}' has no optimization to take the target from; pass target_weights",
                )
            targets, target_event_id = latest.weights, latest.event_id
            negative = sorted(s for s, w in targets.items() if w < -TARGET_EPSILON) if long_only else []
            total = math.fsum(targets.values())
            if negative or total > 1.0 + TARGET_SUM_TOLERANCE or not math.isfinite(total):
                raise _violation(
                    "UNSUPPORTED_TARGET",
                    target_event_id,
                    f"the latest optimized weights (event {target_event_id}) sum to {total:.10g}"
                    + (f" with negative weights ({', '.join(negative[:10])})" if negative else "")
                    + (
                        "; long-only rebalancing needs weights ≥ 0 summing to at most 1; pass target_weights"
                        if long_only
                        else "; a target sums to at most 1 (the rest is cash); pass target_weights"
                    ),
                )
            if long_only:  # solver noise: weights in (-1e-9, 0) are zero
                targets = {s: max(w, 0.0) for s, w in targets.items()}
        positions = {p.symbol: p for p in holdings.positions}
        names = sorted(
            {s for s, p in positions.items() if p.shares > 0.0}
            | {s for s, w in targets.items() if abs(w) >= TARGET_EPSILON}
        )
        missing_from_request = [s for s in names if s not in given_prices]
        stored = await self._store.latest_prices(missing_from_request, at_or_before=at_or_before)
        missing = [s for s in missing_from_request if s not in stored]
        if missing:
            when = "" if at_or_before is None else f" at or before {at_or_before.isoformat()}"
            raise PreconditionError(
                f"no price for: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}{when} "
                "(pass prices or ingest market data)",
                precondition_violations=tuple(
                    PreconditionViolation("MISSING_MARKET_DATA", s, f"no stored price for '{s}'{when}") for s in missing
                ),
            )
        price_of = {**stored, **given_prices}
        built = []
        for name in names:
            position = positions.get(name)
            lots: tuple[TaxLot, ...] = ()
            shares = 0.0
            if position is not None:
                shares = position.shares
                lots = tuple(
                    TaxLot(
                        lot_id=lot.lot_id,
                        shares=lot.shares,
                        cost_basis=lot.cost_basis,
                        acquired=lot.acquired.ToDatetime(tzinfo=UTC).date(),
                    )
                    for lot in position.lots
                )
            built.append(Holding(name=name, shares=shares, price=price_of[name], lots=lots))
        total_value = math.fsum(h.shares * h.price for h in built) + holdings.cash
        if not total_value > 0.0:
            raise _violation(
                "EMPTY_PORTFOLIO",
                portfolio_id,
                f"portfolio '{portfolio_id}' is worth {total_value:g} (holdings + cash)",
            )
        bands = policy.bands
        absolute = [bands[n].absolute if n in bands and bands[n].HasField("absolute") else math.inf for n in names]
        relative = [bands[n].relative if n in bands and bands[n].HasField("relative") else math.inf for n in names]
        return _Inputs(
            holdings=tuple(built),
            cash=holdings.cash,
            targets=np.array([targets.get(n, 0.0) for n in names], dtype=np.float64),
            absolute_bands=np.array(absolute, dtype=np.float64),
            relative_bands=np.array(relative, dtype=np.float64),
            target_event_id=target_event_id,
            policy=policy,
        )

    async def check_drift(self, request: trading_pb.CheckDriftRequest) -> trading_pb.CheckDriftResponse:
        """Drift of the stored holdings from the target (see the module docstring for the inputs).

        The threshold is the request's, else the policy's, else 0.05. Names are reported by symbol;
        ``target_event_id`` names the optimization event whose weights were the target (empty for a given
        target).

        Raises
        ------
        InvalidInputError
            Naming ``portfolio_id``, ``threshold`` (negative or not finite), ``target_weights[SYMBOL]`` (not
            finite), ``target_weights`` (sum above 1) or ``prices[SYMBOL]`` (not finite and > 0).
        PreconditionError
            ``NO_HOLDINGS``, ``NO_TARGET``, ``UNSUPPORTED_TARGET``, ``MISSING_MARKET_DATA`` (per symbol),
            ``EMPTY_PORTFOLIO``.
        """
        portfolio_id = _required_id(request.portfolio_id, "portfolio_id")
        threshold = _number(request.threshold, "threshold") if request.HasField("threshold") else None
        inputs = await self._inputs(
            portfolio_id, request.target_weights, request.prices, at_or_before=None, long_only=False
        )
        report = check_drift(
            inputs.holdings,
            inputs.cash,
            inputs.targets,
            threshold=inputs.policy.drift_threshold if threshold is None else threshold,
            absolute_bands=inputs.absolute_bands,
            relative_bands=inputs.relative_bands,
        )
        return _drift_response(report, inputs.target_event_id)

    async def generate(
        self, request: trading_pb.GenerateRebalanceRequest, *, time_remaining_s: float | None
    ) -> trading_pb.GenerateRebalanceResponse:
        """Generate and store a rebalance recommendation, or replay the one of a repeated ``request_id``.

        The trade list is :func:`services.trading.generate_rebalance` on the portfolio's inputs (see the module
        docstring) with the policy's bands, minimum trade value, turnover cap, cost model, lot method, tax
        settings and ``prefer_losses``, on the trade date ``as_of`` (default now, UTC). Wash-sale checks see this
        list's own loss sales plus the sells with a realised loss and the buys of the portfolio's APPROVED and
        AUTO_APPROVED recommendations dated within the wash-sale window of ``as_of``. The store opens the
        recommendation's lifecycle (:meth:`services.trading.RecommendationState.open`: AUTO_APPROVED when its
        total trade value is at most the policy's approval limit, else PENDING_APPROVAL until ``created_at +
        approval_ttl``) and stores it with its CREATED event atomically.

        A repeated ``request_id`` (per portfolio) with the same request returns the stored recommendation in its
        current state with ``replayed`` = true.

        Parameters
        ----------
        request : stratopt.v1.GenerateRebalanceRequest
            The request.
        time_remaining_s : float or None
            Seconds left before the caller's deadline; None when the call has none.

        Raises
        ------
        InvalidInputError
            Naming ``portfolio_id``, ``request_id`` (too long, or reused for a different request),
            ``target_weights[SYMBOL]`` (negative or not finite), ``target_weights`` (sum above 1),
            ``prices[SYMBOL]``, ``market[SYMBOL].<field>`` (adv not > 0, volatility or spread negative or not
            finite), or ``as_of`` (out of range, or before a stored lot's acquisition date).
        PreconditionError
            ``NO_HOLDINGS``, ``NO_TARGET``, ``UNSUPPORTED_TARGET``, ``MISSING_MARKET_DATA``, ``EMPTY_PORTFOLIO``.
        DeadlineExceededError
            When the deadline passes before the recommendation is stored (nothing is stored).
        """
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        portfolio_id = _required_id(request.portfolio_id, "portfolio_id")
        if len(request.request_id) > MAX_ID_LENGTH:
            raise InvalidInputError.for_field("request_id", f"must be at most {MAX_ID_LENGTH} characters")
        given_as_of = _timestamp(request.as_of, "as_of") if request.HasField("as_of") else None
        if given_as_of is not None and given_as_of > datetime.now(UTC) + timedelta(days=1):
            # A future trade date would age every lot (short-term gains taxed as long-term).
            raise InvalidInputError.for_field("as_of", f"{given_as_of.isoformat()} is in the future")
        market = _market(request.market)
        _request_targets(request.target_weights, long_only=True)
        _prices(request.prices)
        fingerprint = request_hash(request)
        await self._store.expire_overdue(portfolio_id)
        if request.request_id:
            replay = await self._replay(portfolio_id, request.request_id, fingerprint)
            if replay is not None:
                return replay
        inputs = await self._inputs(
            portfolio_id, request.target_weights, request.prices, at_or_before=given_as_of, long_only=True
        )
        as_of = datetime.now(UTC) if given_as_of is None else given_as_of
        trade_date = as_of.date()
        for holding in inputs.holdings:
            late = [lot for lot in holding.lots if lot.acquired > trade_date]
            if late:
                raise InvalidInputError.for_field(
                    "as_of",
                    f"is {trade_date.isoformat()}, before the acquisition of lot {late[0].lot_id!r} of "
                    f"{holding.name} on {late[0].acquired.isoformat()}",
                )
        policy = inputs.policy
        settings = _tax_settings(policy)
        losses, purchases = await self._recent(portfolio_id, as_of, settings.wash_sale_window_days)
        n = len(inputs.holdings)
        market_inputs = None
        if market:
            rows = [market.get(h.name) for h in inputs.holdings]
            market_inputs = MarketInputs(
                adv=np.array([1.0 if m is None else m.adv for m in rows]),
                daily_volatility=np.array([0.0 if m is None else m.daily_volatility for m in rows]),
                spread_bps=np.array([0.0 if m is None else m.spread_bps for m in rows]),
            )
        plan = await asyncio.to_thread(
            generate_rebalance,
            inputs.holdings,
            inputs.cash,
            inputs.targets,
            market=market_inputs,
            costs=_cost_model(policy),
            absolute_bands=inputs.absolute_bands if n else None,
            relative_bands=inputs.relative_bands if n else None,
            drift_threshold=policy.drift_threshold,
            min_trade_value=policy.min_trade_value,
            max_turnover=policy.max_turnover if policy.HasField("max_turnover") else None,
            lot_method=_LOT_METHODS[policy.lot_method],
            tax_settings=settings,
            as_of=trade_date,
            prefer_losses=policy.prefer_losses,
            recent_realized_losses=losses,
            recent_purchases=purchases,
        )
        recommendation = _recommendation(portfolio_id, plan, policy.approval_limit)
        if deadline is not None and loop.time() >= deadline:
            raise DeadlineExceededError("the call's deadline passed before the recommendation was stored")
        try:
            stored = await self._store.create(
                recommendation,
                request_id=request.request_id,
                request_hash=fingerprint,
                as_of=as_of,
                approval_ttl=policy.approval_ttl.ToTimedelta(),
            )
        except IntegrityError:
            # A concurrent call with the same request_id committed first: answer with its recommendation.
            replay = await self._replay(portfolio_id, request.request_id, fingerprint)
            if replay is None:
                raise
            return replay
        return trading_pb.GenerateRebalanceResponse(recommendation=stored)

    async def _replay(
        self, portfolio_id: str, request_id: str, fingerprint: str
    ) -> trading_pb.GenerateRebalanceResponse | None:
        stored = await self._store.find_by_request(portfolio_id, request_id)
        if stored is None:
            return None
        if stored.request_hash != fingerprint:
            raise InvalidInputError.for_field(
                "request_id", f"'{request_id}' was already used for a different request; use a new key"
            )
        return trading_pb.GenerateRebalanceResponse(recommendation=stored.recommendation, replayed=True)

    async def _recent(
        self, portfolio_id: str, as_of: datetime, window_days: int
    ) -> tuple[list[RealizedLoss], list[Purchase]]:
        """Loss sales and buys of the portfolio's approved recommendations within the window of ``as_of``."""
        losses: list[RealizedLoss] = []
        purchases: list[Purchase] = []
        # One day of slack either side: the engine compares whole days of the dates.
        for recent in await self._store.recent_trades(portfolio_id, as_of, timedelta(days=window_days + 1)):
            trade_date: date = recent.as_of.astimezone(UTC).date()
            for trade in recent.trades:
                # Lot by lot: a losing lot inside a sale with a net gain is still a loss sale.
                if trade.lots:
                    loss = sum(-lot.gain for lot in trade.lots if lot.gain < 0.0)
                else:
                    loss = max(-(trade.short_term_gain + trade.long_term_gain), 0.0)
                if trade.side == trading_pb.TRADE_SIDE_SELL and loss > 0.0:
                    losses.append(RealizedLoss(trade.symbol, trade_date, loss))
                elif trade.side == trading_pb.TRADE_SIDE_BUY:
                    purchases.append(Purchase(trade.symbol, trade_date, trade.shares))
        return losses, purchases

    async def approve(self, request: trading_pb.ApproveRebalanceRequest) -> trading_pb.ApproveRebalanceResponse:
        """Approve a PENDING_APPROVAL recommendation (``decided_by`` = approver, optional reason) with its event.

        Raises
        ------
        InvalidInputError
            Naming ``recommendation_id`` (not a UUID), ``approver`` (empty) or ``reason`` (too long).
        NotFoundError
            When no recommendation has the id.
        PreconditionError
            ``NOT_PENDING`` when it is AUTO_APPROVED, APPROVED or REJECTED (a second approval included);
            ``EXPIRED`` when it was or has just become EXPIRED (the expiry and its event are committed).
        """
        recommendation_id = _recommendation_id(request.recommendation_id)
        approver = _text(request.approver, "approver", required=True, limit=MAX_ID_LENGTH)
        reason = _text(request.reason, "reason", required=False, limit=MAX_REASON_LENGTH)
        recommendation = await self._store.decide(
            recommendation_id, status=RecommendationStatus.APPROVED, actor=approver, reason=reason
        )
        return trading_pb.ApproveRebalanceResponse(recommendation=recommendation)

    async def reject(self, request: trading_pb.RejectRebalanceRequest) -> trading_pb.RejectRebalanceResponse:
        """Reject a PENDING_APPROVAL recommendation (``decided_by`` = approver, reason required) with its event.

        Raises
        ------
        InvalidInputError
            Naming ``recommendation_id`` (not a UUID), ``approver`` (empty) or ``reason`` (empty or too long).
        NotFoundError
            When no recommendation has the id.
        PreconditionError
            ``NOT_PENDING`` or ``EXPIRED``, as :meth:`approve`.
        """
        recommendation_id = _recommendation_id(request.recommendation_id)
        approver = _text(request.approver, "approver", required=True, limit=MAX_ID_LENGTH)
        reason = _text(request.reason, "reason", required=True, limit=MAX_REASON_LENGTH)
        recommendation = await self._store.decide(
            recommendation_id, status=RecommendationStatus.REJECTED, actor=approver, reason=reason
        )
        return trading_pb.RejectRebalanceResponse(recommendation=recommendation)
