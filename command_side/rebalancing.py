"""Holdings, rebalance policies, drift, rebalance recommendations and their approval, in domain terms.

The use cases of ``stratopt.v1.TradingCommandService`` from UpsertHoldings to RejectRebalance, as commands and
results of :mod:`command_side.trading_model` (:mod:`command_side.trading_adapter` converts the gRPC messages).
The numbers come from the pure engine (:func:`services.trading.check_drift`,
:func:`services.trading.generate_rebalance` and :mod:`services.trading`); this module validates commands, gathers
the stored inputs (holdings, policy, prices, target) and persists through a
:class:`command_side.trading_store.TradingStore` given to the service (the PostgreSQL one,
:class:`command_side.rebalancing_repository.PostgresTradingStore`, in the server).

Inputs of CheckDrift and GenerateRebalance
------------------------------------------
* Holdings: the stored snapshot (UpsertHoldings). None stored: FAILED_PRECONDITION ``NO_HOLDINGS`` (a portfolio
  without holdings is a state to fix by storing them, not an unknown resource). GenerateRebalance plans from the
  holdings expected once the portfolio's open orders (NEW, SENT, PARTIALLY_FILLED; rebalance and rotation) have
  traded what they still have to, read with the holdings in one snapshot
  (:func:`command_side.execution.expected_after`): a second rebalance before the first one's orders fill does not
  order the same trades again. CheckDrift reports the drift of the holdings as stored.
* Policy: the stored one, or the defaults (those of the proto comments) when none is stored.
* Target: the command's ``target_weights``, else the weights of the portfolio's latest optimization
  (``latest_portfolio_optimizations``); neither: FAILED_PRECONDITION ``NO_TARGET``. A stored target summing above
  1 fails FAILED_PRECONDITION ``UNSUPPORTED_TARGET`` (the rest of a target is cash, never negative); one with
  negative weights (a long-short optimization) is reported by CheckDrift but cannot be traded to by the long-only
  GenerateRebalance (``UNSUPPORTED_TARGET`` as well).
* Symbols: the held symbols with shares > 0 and the target symbols with a weight of magnitude at least ``1e-9``
  (smaller target weights of symbols not held count as cash), by symbol.
* Prices: the command's ``prices``, else the latest stored close in ``market_data`` (at or before ``as_of`` for
  GenerateRebalance when given); a symbol without a price: FAILED_PRECONDITION with one ``MISSING_MARKET_DATA``
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
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Final, TypeVar

import numpy as np

from command_side.execution import expected_after
from command_side.trading_model import (
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
    UpsertHoldings,
    UpsertPolicy,
)
from command_side.trading_store import TradingStore
from services.errors import (
    DeadlineExceededError,
    IntegrityError,
    InvalidInputError,
    PermissionDeniedError,
    PreconditionError,
    PreconditionViolation,
)
from services.trading import (
    CostModel,
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
"""Target weights of symbols not held smaller than this in magnitude count as cash."""
TARGET_SUM_TOLERANCE: Final = 1e-9

_T = TypeVar("_T")

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


def _ttl(value: timedelta, field: str) -> timedelta:
    """A positive duration of at most ``MAX_APPROVAL_TTL`` (whole seconds compared with it)."""
    if value - timedelta(microseconds=value.microseconds) > MAX_APPROVAL_TTL:
        raise InvalidInputError.for_field(field, f"must be at most {MAX_APPROVAL_TTL.days} days")
    if value <= timedelta(0):
        raise InvalidInputError.for_field(field, "must be positive")
    return value


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
    """The command's prices, each finite and > 0 (``prices[SYMBOL]``)."""
    _size(prices, "prices")
    for symbol, price in prices.items():
        if not symbol:
            raise InvalidInputError.for_field("prices", "has an empty symbol")
        _number(price, f"prices[{symbol}]", strict=True)
    return dict(prices)


def _request_targets(targets: Mapping[str, float], *, long_only: bool) -> dict[str, float]:
    """The command's target weights: finite (and ≥ 0 when ``long_only``), summing to at most 1."""
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


def _market(market: Mapping[str, MarketQuote]) -> dict[str, MarketQuote]:
    _size(market, "market")
    for symbol, inputs in market.items():
        if not symbol:
            raise InvalidInputError.for_field("market", "has an empty symbol")
        _number(inputs.adv, f"market[{symbol}].adv", strict=True)
        _number(inputs.daily_volatility, f"market[{symbol}].daily_volatility")
        _number(inputs.spread_bps, f"market[{symbol}].spread_bps")
    return dict(market)


def _lots(position: Position, field: str) -> tuple[TaxLot, ...]:
    """The position's tax lots, validated (see :func:`services.trading.validate_lots`)."""
    if len(position.lots) > MAX_LOTS_PER_POSITION:
        raise InvalidInputError.for_field(f"{field}.lots", f"at most {MAX_LOTS_PER_POSITION} lots per position")
    lots = []
    for j, lot in enumerate(position.lots):
        if lot.acquired is None:
            raise InvalidInputError.for_field(f"{field}.lots[{j}].acquired", "must be set")
        lots.append(_tax_lot(lot.lot_id, lot.shares, lot.cost_basis, lot.acquired))
    validate_lots(lots, position.shares, field=field)
    return tuple(lots)


def _pending_until(lot: PositionLot, as_of: datetime | None) -> datetime | None:
    """A lot's acquisition time; an open BUY's lot (``order:...``, dated when the order was made) at most ``as_of``.

    A rebalance dated before an open order was made still counts what the order buys; its lot is then taken as
    acquired on the rebalance's date (a short-term lot either way).
    """
    if as_of is None or lot.acquired is None or not lot.lot_id.startswith("order:"):
        return lot.acquired
    return min(lot.acquired, as_of)


def _tax_lot(lot_id: str, shares: float, cost_basis: float, acquired: datetime | None) -> TaxLot:
    """The engine's tax lot: acquired on the UTC date of its acquisition time (unknown: 1970-01-01)."""
    when = datetime(1970, 1, 1, tzinfo=UTC) if acquired is None else acquired
    return TaxLot(lot_id=lot_id, shares=shares, cost_basis=cost_basis, acquired=when.astimezone(UTC).date())


def validate_holdings(command: UpsertHoldings) -> None:
    """Check an UpsertHoldings command.

    Raises
    ------
    InvalidInputError
        Naming ``portfolio_id`` (empty), ``positions`` (more than ``MAX_POSITIONS``), ``positions[i].symbol``
        (empty or duplicate), ``positions[i].shares`` (negative or not finite), ``positions[i].price`` (set but
        not finite and > 0), ``positions[i].lots[j].<field>`` (empty or duplicate id, shares or cost basis not
        finite and > 0, acquisition date unset), ``positions[i].lots`` (lot shares not adding up to the
        position's within 1e-9 relative) or ``cash`` (negative or not finite).
    """
    _required_id(command.portfolio_id, "portfolio_id")
    if len(command.positions) > MAX_POSITIONS:
        raise InvalidInputError.for_field("positions", f"at most {MAX_POSITIONS} positions")
    seen: set[str] = set()
    for i, position in enumerate(command.positions):
        field = f"positions[{i}]"
        if not position.symbol:
            raise InvalidInputError.for_field(f"{field}.symbol", "must not be empty")
        if position.symbol in seen:
            raise InvalidInputError.for_field(f"{field}.symbol", f"duplicate symbol {position.symbol!r}")
        seen.add(position.symbol)
        _number(position.shares, f"{field}.shares")
        if position.price is not None:
            _number(position.price, f"{field}.price", strict=True)
        _lots(position, field)
    _number(command.cash, "cash")


def validate_policy(policy: RebalancePolicy, field: str = "policy") -> None:
    """Check a rebalance policy.

    Raises
    ------
    InvalidInputError
        Naming ``policy.<field>``: a threshold, band, trade value, turnover, commission, impact coefficient or
        approval limit that is negative or not finite; ``policy.bands`` with an empty symbol; a tax rate outside
        [0, 1]; a day count above ``MAX_DAYS``; an ``approval_ttl`` that is not positive or longer than
        ``MAX_APPROVAL_TTL``.
    """
    if policy.drift_threshold is not None:
        _number(policy.drift_threshold, f"{field}.drift_threshold")
    for symbol, band in policy.bands.items():
        if not symbol:
            raise InvalidInputError.for_field(f"{field}.bands", "has an empty symbol")
        if band.absolute is not None:
            _number(band.absolute, f"{field}.bands[{symbol}].absolute")
        if band.relative is not None:
            _number(band.relative, f"{field}.bands[{symbol}].relative")
    _number(policy.min_trade_value, f"{field}.min_trade_value")
    if policy.max_turnover is not None:
        _number(policy.max_turnover, f"{field}.max_turnover")
    _number(policy.commission_per_trade, f"{field}.commission_per_trade")
    _number(policy.commission_per_share, f"{field}.commission_per_share")
    if policy.impact_coefficient is not None:
        _number(policy.impact_coefficient, f"{field}.impact_coefficient")
    for name in ("short_term_tax_rate", "long_term_tax_rate"):
        rate = getattr(policy, name)
        if rate is not None:
            _number(rate, f"{field}.{name}", maximum=1.0)
    for name in ("long_term_after_days", "wash_sale_window_days"):
        days = getattr(policy, name)
        if days is not None and days > MAX_DAYS:
            raise InvalidInputError.for_field(f"{field}.{name}", f"must be at most {MAX_DAYS}")
    if policy.approval_limit is not None:
        _number(policy.approval_limit, f"{field}.approval_limit")
    if policy.max_participation is not None:
        _number(policy.max_participation, f"{field}.max_participation", maximum=1.0)
        if policy.max_participation == 0:
            raise InvalidInputError.for_field(f"{field}.max_participation", "must be > 0 (unset: no cap)")
    if policy.max_cost_bps is not None:
        _number(policy.max_cost_bps, f"{field}.max_cost_bps")
    if policy.approval_ttl is not None:
        _ttl(policy.approval_ttl, f"{field}.approval_ttl")


def resolved_policy(policy: RebalancePolicy | None) -> RebalancePolicy:
    """``policy`` (or the empty policy) with every documented default filled in.

    ``max_turnover`` and ``long_term_after_days`` stay None (no cap; long term after the first anniversary) when
    not given; bands are kept as given.
    """
    given = RebalancePolicy() if policy is None else policy
    return replace(
        given,
        drift_threshold=_given(given.drift_threshold, DEFAULT_DRIFT_THRESHOLD),
        impact_model=_given(given.impact_model, ImpactModel.SQUARE_ROOT),
        impact_coefficient=_given(given.impact_coefficient, DEFAULT_IMPACT_COEFFICIENT),
        lot_method=_given(given.lot_method, LotMethod.FIFO),
        short_term_tax_rate=_given(given.short_term_tax_rate, DEFAULT_SHORT_TERM_TAX_RATE),
        long_term_tax_rate=_given(given.long_term_tax_rate, DEFAULT_LONG_TERM_TAX_RATE),
        wash_sale_window_days=_given(given.wash_sale_window_days, DEFAULT_WASH_SALE_WINDOW_DAYS),
        approval_limit=_given(given.approval_limit, DEFAULT_APPROVAL_LIMIT),
        approval_ttl=_given(given.approval_ttl, DEFAULT_APPROVAL_TTL),
    )


def _given(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _tax_settings(policy: RebalancePolicy) -> TaxSettings:
    return TaxSettings(
        short_term_rate=_given(policy.short_term_tax_rate, DEFAULT_SHORT_TERM_TAX_RATE),
        long_term_rate=_given(policy.long_term_tax_rate, DEFAULT_LONG_TERM_TAX_RATE),
        long_term_after_days=policy.long_term_after_days,
        wash_sale_window_days=_given(policy.wash_sale_window_days, DEFAULT_WASH_SALE_WINDOW_DAYS),
    )


def _cost_model(policy: RebalancePolicy) -> CostModel:
    return CostModel(
        commission_per_trade=policy.commission_per_trade,
        commission_per_share=policy.commission_per_share,
        impact_model=_given(policy.impact_model, ImpactModel.SQUARE_ROOT),
        square_root_coefficient=_given(policy.impact_coefficient, DEFAULT_IMPACT_COEFFICIENT),
    )


# --- inputs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The engine inputs of one portfolio, by symbol."""

    holdings: tuple[Holding, ...]
    cash: float
    targets: np.ndarray
    absolute_bands: np.ndarray
    relative_bands: np.ndarray
    target_event_id: str
    policy: RebalancePolicy


def _violation(kind: str, subject: str, description: str) -> PreconditionError:
    return PreconditionError(description, precondition_violations=(PreconditionViolation(kind, subject, description),))


def cost_hold_reason(recommendation: RebalanceRecommendation, max_cost_bps: float | None) -> str:
    """Why a recommendation is held for approval on its cost ('' when it is not).

    The estimated cost in basis points of the trade value is ``10⁴ × total_cost / total_trade_value``
    (commissions, half spreads and impact); above ``max_cost_bps`` the recommendation waits for approval
    whatever its value (the stores open its lifecycle with an approval limit of 0).
    """
    if max_cost_bps is None or recommendation.total_trade_value <= 0:
        return ""
    cost_bps = 1e4 * recommendation.total_cost / recommendation.total_trade_value
    if cost_bps <= max_cost_bps:
        return ""
    return f"COST_ABOVE_LIMIT: estimated cost {cost_bps:.1f} bp of the trade value, limit {max_cost_bps:g} bp"


def _recommendation(portfolio_id: str, plan: RebalancePlan, approval_limit: float) -> RebalanceRecommendation:
    """The recommendation of a plan (without id, status or times): sells first, then buys, each by symbol."""
    trades = []
    for trade in sorted(plan.trades, key=lambda t: (t.side is not Side.SELL, t.symbol)):
        lots: tuple[LotSold, ...] = ()
        short_term_gain = long_term_gain = 0.0
        if trade.lots is not None:
            short_term_gain, long_term_gain = trade.lots.short_term_gain, trade.lots.long_term_gain
            lots = tuple(
                LotSold(
                    lot_id=lot.lot_id,
                    shares=lot.shares,
                    cost_basis=lot.cost_basis,
                    gain=lot.gain,
                    long_term=lot.term.value == "LONG_TERM",
                )
                for lot in trade.lots.lots
            )
        trades.append(
            RecommendedTrade(
                symbol=trade.symbol,
                side=trade.side,
                shares=trade.shares,
                price=trade.price,
                value=trade.value,
                commission=trade.commission,
                spread_cost=trade.spread_cost,
                impact_cost=trade.impact_cost,
                total_cost=trade.total_cost,
                lots=lots,
                short_term_gain=short_term_gain,
                long_term_gain=long_term_gain,
                wash_sale=trade.wash_sale,
                participation_capped=trade.participation_capped,
            )
        )
    return RebalanceRecommendation(
        portfolio_id=portfolio_id,
        trades=tuple(trades),
        total_trade_value=plan.total_buy_value + plan.total_sell_value,
        total_cost=plan.total_cost,
        turnover=plan.turnover,
        drift_before=plan.drift_before.portfolio_drift,
        drift_after=plan.drift_after.portfolio_drift,
        short_term_gain=plan.short_term_gain,
        long_term_gain=plan.long_term_gain,
        estimated_tax=plan.estimated_tax,
        harvest_candidates=tuple(
            LossHarvest(
                symbol=candidate.symbol,
                lot_id=candidate.lot_id,
                shares=candidate.shares,
                unrealized_loss=candidate.unrealized_loss,
                wash_sale_risk=candidate.recently_bought,
            )
            for candidate in plan.harvest_candidates
        ),
        approval_limit=approval_limit,
    )


class RebalancingService:
    """The rebalancing application service: validation, stored inputs, the engine, atomic persistence.

    Parameters
    ----------
    store : TradingStore
        Where holdings, policies, prices, targets and recommendations are kept (the PostgreSQL store in the
        server, the in-memory one in unit tests).
    allow_self_approval : bool
        Whether the principal that generated a recommendation may approve it (four-eyes rule off).

    Notes
    -----
    Every method may also raise ``UnavailableError`` (gRPC UNAVAILABLE) when the store cannot be reached.
    """

    def __init__(self, store: TradingStore, *, allow_self_approval: bool = False) -> None:
        self._store = store
        self._allow_self_approval = allow_self_approval

    async def upsert_holdings(self, command: UpsertHoldings) -> HoldingsStored:
        """Store a holdings snapshot (positions without prices, their lots and cash), replacing the previous one.

        Raises
        ------
        InvalidInputError
            See :func:`validate_holdings`; nothing is stored.
        """
        validate_holdings(command)
        positions = tuple(replace(position, price=None) for position in command.positions)
        updated_at = await self._store.store_holdings(command.portfolio_id, positions, command.cash)
        return HoldingsStored(portfolio_id=command.portfolio_id, positions=len(positions), updated_at=updated_at)

    async def upsert_policy(self, command: UpsertPolicy) -> RebalancePolicy:
        """Store a rebalance policy with its defaults filled in (see :func:`resolved_policy`) and return it.

        Raises
        ------
        InvalidInputError
            Naming ``portfolio_id`` or ``policy.<field>`` (see :func:`validate_policy`); nothing is stored.
        """
        _required_id(command.portfolio_id, "portfolio_id")
        validate_policy(command.policy)
        policy = resolved_policy(command.policy)
        await self._store.store_policy(command.portfolio_id, policy, updated_by=command.updated_by)
        return policy

    async def _inputs(
        self,
        portfolio_id: str,
        target_weights: Mapping[str, float],
        prices: Mapping[str, float],
        *,
        at_or_before: datetime | None,
        long_only: bool,
        open_orders: bool = False,
    ) -> _Inputs:
        """Holdings, policy, target, prices and bands of a portfolio (see the module docstring).

        With ``open_orders``, the holdings are those expected once the portfolio's open orders have traded
        (``command_side.execution.expected_after``), read with them in one snapshot.
        """
        given_targets = _request_targets(target_weights, long_only=long_only) if target_weights else None
        given_prices = _prices(prices)
        if open_orders:
            holdings, orders = await self._store.load_book(portfolio_id)
        else:
            holdings, orders = await self._store.load_holdings(portfolio_id), ()
        if holdings is None:
            raise _violation("NO_HOLDINGS", portfolio_id, f"portfolio '{portfolio_id}' has no stored holdings")
        held, cash = expected_after(holdings.positions, holdings.cash, orders)
        # Open buys may cost more than the cash at their reference prices (fills above it, sells capped at the
        # holding): the plan then starts from no cash, not from a negative amount the engine refuses.
        cash = max(cash, 0.0)
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
        positions = {p.symbol: p for p in held}
        symbols = sorted(
            {s for s, p in positions.items() if p.shares > 0.0}
            | {s for s, w in targets.items() if abs(w) >= TARGET_EPSILON}
        )
        missing_from_request = [s for s in symbols if s not in given_prices]
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
        for symbol in symbols:
            position = positions.get(symbol)
            lots: tuple[TaxLot, ...] = ()
            shares = 0.0
            if position is not None:
                shares = position.shares
                lots = tuple(
                    _tax_lot(lot.lot_id, lot.shares, lot.cost_basis, _pending_until(lot, at_or_before))
                    for lot in position.lots
                )
            built.append(Holding(symbol=symbol, shares=shares, price=price_of[symbol], lots=lots))
        total_value = math.fsum(h.shares * h.price for h in built) + cash
        if not total_value > 0.0:
            raise _violation(
                "EMPTY_PORTFOLIO",
                portfolio_id,
                f"portfolio '{portfolio_id}' is worth {total_value:g} (holdings + cash)",
            )
        bands = policy.bands
        absolute = [_given(bands[n].absolute, math.inf) if n in bands else math.inf for n in symbols]
        relative = [_given(bands[n].relative, math.inf) if n in bands else math.inf for n in symbols]
        return _Inputs(
            holdings=tuple(built),
            cash=cash,
            targets=np.array([targets.get(n, 0.0) for n in symbols], dtype=np.float64),
            absolute_bands=np.array(absolute, dtype=np.float64),
            relative_bands=np.array(relative, dtype=np.float64),
            target_event_id=target_event_id,
            policy=policy,
        )

    async def check_drift(self, command: CheckDrift) -> DriftCheck:
        """Drift of the stored holdings from the target (see the module docstring for the inputs).

        The threshold is the command's, else the policy's, else 0.05. Drifts are reported by symbol;
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
        portfolio_id = _required_id(command.portfolio_id, "portfolio_id")
        threshold = None if command.threshold is None else _number(command.threshold, "threshold")
        inputs = await self._inputs(
            portfolio_id, command.target_weights, command.prices, at_or_before=None, long_only=False
        )
        report = check_drift(
            inputs.holdings,
            inputs.cash,
            inputs.targets,
            threshold=_given(threshold, _given(inputs.policy.drift_threshold, DEFAULT_DRIFT_THRESHOLD)),
            absolute_bands=inputs.absolute_bands,
            relative_bands=inputs.relative_bands,
        )
        return DriftCheck(report=report, target_event_id=inputs.target_event_id)

    async def generate(self, command: GenerateRebalance, *, time_remaining_s: float | None) -> GeneratedRebalance:
        """Generate and store a rebalance recommendation, or replay the one of a repeated ``request_id``.

        The trade list is :func:`services.trading.generate_rebalance` on the portfolio's inputs (see the module
        docstring) with the policy's bands, minimum trade value, turnover cap, cost model, lot method, tax
        settings and ``prefer_losses``, on the trade date ``as_of`` (default now, UTC). Wash-sale checks see this
        list's own loss sales plus the sells with a realised loss and the buys of the portfolio's APPROVED and
        AUTO_APPROVED recommendations dated within the wash-sale window of ``as_of``. The store opens the
        recommendation's lifecycle (:meth:`services.trading.RecommendationState.open`: AUTO_APPROVED when its
        total trade value is at most the policy's approval limit, else PENDING_APPROVAL until ``created_at +
        approval_ttl``) and stores it with its CREATED event atomically.

        A repeated ``request_id`` (per portfolio) with the same ``request_hash`` returns the stored recommendation
        in its current state with ``replayed`` = true.

        Parameters
        ----------
        command : GenerateRebalance
            The portfolio, idempotency key and fingerprint, and the optional target, prices, market inputs and
            trade date.
        time_remaining_s : float or None
            Seconds left before the caller's deadline; None when the call has none.

        Raises
        ------
        InvalidInputError
            Naming ``portfolio_id``, ``request_id`` (too long, or reused for a different request),
            ``target_weights[SYMBOL]`` (negative or not finite), ``target_weights`` (sum above 1),
            ``prices[SYMBOL]``, ``market[SYMBOL].<field>`` (adv not > 0, volatility or spread negative or not
            finite), or ``as_of`` (more than a day in the future, or before a stored lot's acquisition date).
        PreconditionError
            ``NO_HOLDINGS``, ``NO_TARGET``, ``UNSUPPORTED_TARGET``, ``MISSING_MARKET_DATA``, ``EMPTY_PORTFOLIO``.
        DeadlineExceededError
            When the deadline passes before the recommendation is stored (nothing is stored).
        """
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        portfolio_id = _required_id(command.portfolio_id, "portfolio_id")
        if len(command.request_id) > MAX_ID_LENGTH:
            raise InvalidInputError.for_field("request_id", f"must be at most {MAX_ID_LENGTH} characters")
        given_as_of = command.as_of
        if given_as_of is not None and given_as_of > datetime.now(UTC) + timedelta(days=1):
            # A future trade date would age every lot (short-term gains taxed as long-term).
            raise InvalidInputError.for_field("as_of", f"{given_as_of.isoformat()} is in the future")
        market = _market(command.market)
        _request_targets(command.target_weights, long_only=True)
        _prices(command.prices)
        fingerprint = command.request_hash
        await self._store.expire_overdue(portfolio_id)
        if command.request_id:
            replay = await self._replay(portfolio_id, command.request_id, fingerprint)
            if replay is not None:
                return replay
        inputs = await self._inputs(
            portfolio_id,
            command.target_weights,
            command.prices,
            at_or_before=given_as_of,
            long_only=True,
            open_orders=True,
        )
        as_of = datetime.now(UTC) if given_as_of is None else given_as_of
        trade_date = as_of.date()
        for holding in inputs.holdings:
            late = [lot for lot in holding.lots if lot.acquired > trade_date]
            if late:
                raise InvalidInputError.for_field(
                    "as_of",
                    f"is {trade_date.isoformat()}, before the acquisition of lot {late[0].lot_id!r} of "
                    f"{holding.symbol} on {late[0].acquired.isoformat()}",
                )
        policy = inputs.policy
        settings = _tax_settings(policy)
        losses, purchases = await self._recent(portfolio_id, as_of, settings.wash_sale_window_days)
        n = len(inputs.holdings)
        market_inputs = None
        max_trade_shares = None
        if market:
            rows = [market.get(h.symbol) for h in inputs.holdings]
            market_inputs = MarketInputs(
                adv=np.array([1.0 if m is None else m.adv for m in rows]),
                daily_volatility=np.array([0.0 if m is None else m.daily_volatility for m in rows]),
                spread_bps=np.array([0.0 if m is None else m.spread_bps for m in rows]),
            )
            if policy.max_participation is not None:  # symbols without market inputs are not capped
                max_trade_shares = np.array([np.inf if m is None else policy.max_participation * m.adv for m in rows])
        plan = await asyncio.to_thread(
            generate_rebalance,
            inputs.holdings,
            inputs.cash,
            inputs.targets,
            market=market_inputs,
            costs=_cost_model(policy),
            absolute_bands=inputs.absolute_bands if n else None,
            relative_bands=inputs.relative_bands if n else None,
            drift_threshold=_given(policy.drift_threshold, DEFAULT_DRIFT_THRESHOLD),
            min_trade_value=policy.min_trade_value,
            max_turnover=policy.max_turnover,
            max_trade_shares=max_trade_shares,
            lot_method=_given(policy.lot_method, LotMethod.FIFO),
            tax_settings=settings,
            as_of=trade_date,
            prefer_losses=policy.prefer_losses,
            recent_realized_losses=losses,
            recent_purchases=purchases,
        )
        limit = _given(policy.approval_limit, DEFAULT_APPROVAL_LIMIT)
        recommendation = _recommendation(portfolio_id, plan, limit)
        holds = [cost_hold_reason(recommendation, policy.max_cost_bps)]
        if recommendation.total_trade_value <= limit:  # would be approved by the limit: is the limit's word good?
            holds += await self._approval_holds(command, recommendation, limit)
        recommendation = replace(recommendation, hold_reason="; ".join(h for h in holds if h))
        if deadline is not None and loop.time() >= deadline:
            raise DeadlineExceededError("the call's deadline passed before the recommendation was stored")
        try:
            stored = await self._store.create(
                recommendation,
                request_id=command.request_id,
                request_hash=fingerprint,
                as_of=as_of,
                approval_ttl=_given(policy.approval_ttl, DEFAULT_APPROVAL_TTL),
                created_by=command.created_by,
            )
        except IntegrityError:
            # A concurrent call with the same request_id committed first: answer with its recommendation.
            replay = await self._replay(portfolio_id, command.request_id, fingerprint)
            if replay is None:
                raise
            return replay
        return GeneratedRebalance(recommendation=stored)

    async def _approval_holds(
        self,
        command: GenerateRebalance,
        recommendation: RebalanceRecommendation,
        limit: float,
    ) -> list[str]:
        """Why a recommendation within the approval limit still waits for an approver (empty: it need not).

        The limit approves in advance, so it holds only where an approval would:

        * ``POLICY_SET_BY_GENERATOR``: the principal that generated the recommendation stored the policy, and a
          generator may not approve its own recommendations (the four-eyes rule; not in the development mode);
        * ``PRICES_BELOW_STORED``: the request gave prices, and valued at the latest stored price of each traded
          symbol where that is higher than the given one, the trades are worth more than the limit (given prices
          decide the trades; they cannot shrink a trade's value under the limit). The latest price, whatever the
          request's ``as_of``: a backdated request cannot pick an old, lower one. A symbol with no stored price
          at all is valued at the given price (nothing to check it against).
        """
        holds = []
        if not self._allow_self_approval and command.created_by:
            author = await self._store.policy_author(command.portfolio_id)
            if author == command.created_by:
                holds.append(
                    f"POLICY_SET_BY_GENERATOR: the approval limit was set by {author}, who generated this "
                    "recommendation; another principal approves it"
                )
        given = {t.symbol: t for t in recommendation.trades if t.symbol in command.prices}
        if given:
            stored = await self._store.latest_prices(sorted(given), at_or_before=None)
            value = math.fsum(t.shares * max(t.price, stored.get(t.symbol, t.price)) for t in recommendation.trades)
            if value > limit:
                holds.append(
                    f"PRICES_BELOW_STORED: at the stored prices where they are above the given ones the trades are "
                    f"worth {value:,.2f}, above the approval limit {limit:,.2f}"
                )
        return holds

    async def _replay(self, portfolio_id: str, request_id: str, fingerprint: str) -> GeneratedRebalance | None:
        stored = await self._store.find_by_request(portfolio_id, request_id)
        if stored is None:
            return None
        if stored.request_hash != fingerprint:
            raise InvalidInputError.for_field(
                "request_id", f"'{request_id}' was already used for a different request; use a new key"
            )
        return GeneratedRebalance(recommendation=stored.recommendation, replayed=True)

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
                if trade.side is Side.SELL and loss > 0.0:
                    losses.append(RealizedLoss(trade.symbol, trade_date, loss))
                elif trade.side is Side.BUY:
                    purchases.append(Purchase(trade.symbol, trade_date, trade.shares))
        return losses, purchases

    async def approve(self, decision: Decision) -> RebalanceRecommendation:
        """Approve a PENDING_APPROVAL recommendation (``decided_by`` = approver, optional reason) with its event.

        The principal that generated the recommendation may not approve it (four-eyes rule) unless the service
        was built with ``allow_self_approval``.

        Raises
        ------
        InvalidInputError
            Naming ``recommendation_id`` (not a UUID), ``approver`` (empty) or ``reason`` (too long).
        PermissionDeniedError
            When the approver generated the recommendation; nothing is written.
        NotFoundError
            When no recommendation has the id.
        PreconditionError
            ``NOT_PENDING`` when it is AUTO_APPROVED, APPROVED or REJECTED (a second approval included);
            ``EXPIRED`` when it was or has just become EXPIRED (the expiry and its event are committed).
        """
        recommendation_id = _recommendation_id(decision.recommendation_id)
        approver = _text(decision.approver, "approver", required=True, limit=MAX_ID_LENGTH)
        reason = _text(decision.reason, "reason", required=False, limit=MAX_REASON_LENGTH)
        if not self._allow_self_approval and await self._store.creator(recommendation_id) == approver:
            raise PermissionDeniedError("cannot approve a recommendation you generated")
        return await self._store.decide(
            recommendation_id, status=RecommendationStatus.APPROVED, actor=approver, reason=reason
        )

    async def reject(self, decision: Decision) -> RebalanceRecommendation:
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
        recommendation_id = _recommendation_id(decision.recommendation_id)
        approver = _text(decision.approver, "approver", required=True, limit=MAX_ID_LENGTH)
        reason = _text(decision.reason, "reason", required=True, limit=MAX_REASON_LENGTH)
        return await self._store.decide(
            recommendation_id, status=RecommendationStatus.REJECTED, actor=approver, reason=reason
        )
