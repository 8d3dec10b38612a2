"""Execution over PostgreSQL: claims of outbox orders, fills, holdings and execution events in one transaction.

Exactly once: the paper broker claims NEW orders with ``FOR UPDATE SKIP LOCKED`` inside the transaction that
fills them, so two replicas never fill the same order and a crash leaves it NEW; a reported fill is keyed by its
``fill_id`` (a repeat of the same fill is ignored; the id reused for a different fill is refused). Every
transaction locks the portfolio's holdings row ``FOR UPDATE`` before it changes it, and the paper broker locks the
kill-switch rows ``FOR SHARE`` (as the cycles do) and refuses to fill while one is engaged.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from command_side.execution import (
    Fill,
    PaperImpact,
    apply_fill,
    impact_fraction,
    liquidity,
    paper_fill_price,
    planned_lots,
)
from command_side.postgres_errors import Connection, postgres_errors
from command_side.rotation_store import GLOBAL_SCOPE
from command_side.trading_model import Position
from command_side.trading_records import positions_from_json, positions_json
from services.errors import NotFoundError, PreconditionError, PreconditionViolation

DEFAULT_SPREAD_BPS = 5.0
DEFAULT_IMPACT_BPS = 0.0
DEFAULT_COMMISSION_PER_SHARE = 0.005
DEFAULT_IMPACT_LOOKBACK_PERIODS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class PaperBroker:
    """How the paper broker fills (basis points of the price; commission in $ per share; see ``PaperImpact``)."""

    spread_bps: float = DEFAULT_SPREAD_BPS
    impact_bps: float = DEFAULT_IMPACT_BPS
    """The FIXED model's impact."""
    commission_per_share: float = DEFAULT_COMMISSION_PER_SHARE
    impact_model: PaperImpact = PaperImpact.FIXED
    impact_coefficient: float = 1.0
    """Y of the square-root law."""
    impact_lookback_periods: int = DEFAULT_IMPACT_LOOKBACK_PERIODS
    """Stored bars at or before the fill time for σ (their returns) and the average daily volume (their volumes)."""
    average_daily_volume: Mapping[str, float] = field(default_factory=dict)
    """Given average daily volumes (shares/day) by symbol; the others come from the stored bars."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderState:
    """An outbox order after a call."""

    order_id: str
    symbol: str
    side: str
    shares: float
    filled_shares: float
    average_price: float
    status: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedOrder:
    """An order a broker adapter claimed (now SENT)."""

    order_id: str
    portfolio_id: str
    symbol: str
    side: str
    shares: float
    reference_price: float
    reason: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedFill:
    """A fill as applied, with its realised gain ($)."""

    fill: Fill
    realised_gain: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResult:
    """What a call filled and the orders it touched."""

    fills: tuple[AppliedFill, ...]
    orders: tuple[OrderState, ...]
    cash: float
    duplicates: int = 0


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _state(row: asyncpg.Record) -> OrderState:
    return OrderState(
        order_id=str(row["order_id"]),
        symbol=row["symbol"],
        side=row["side"],
        shares=row["shares"],
        filled_shares=row["filled_shares"],
        average_price=row["average_price"] or 0.0,
        status=row["status"],
    )


async def _pending_lot_aliases(conn: Connection, lot_ids: Sequence[str]) -> dict[str, list[str]]:
    """The lots each planned ``order:<order_id>`` stands for: the fill ids of that BUY order's fills, in order.

    A rebalance planned while a BUY was open counted its shares as a lot ``order:<order_id>``
    (``execution.expected_after``); its fills since became lots named by their fill ids.
    """
    orders: dict[str, uuid.UUID] = {}
    for lot_id in lot_ids:
        if lot_id.startswith("order:"):
            try:
                orders[lot_id] = uuid.UUID(lot_id.removeprefix("order:"))
            except ValueError:
                continue
    if not orders:
        return {}
    rows = await conn.fetch(
        "SELECT order_id, fill_id FROM fills WHERE order_id = ANY($1::uuid[]) AND side = 'BUY' "
        "ORDER BY filled_at, fill_id",
        list(orders.values()),
    )
    by_order: dict[uuid.UUID, list[str]] = {}
    for row in rows:
        by_order.setdefault(row["order_id"], []).append(row["fill_id"])
    return {lot_id: by_order.get(order_id, []) for lot_id, order_id in orders.items()}


def _same_fill(stored: asyncpg.Record, fill: Fill, portfolio_id: str) -> bool:
    """Whether a reported fill repeats the stored one: portfolio, order, symbol, side, shares and price."""
    return (
        stored["portfolio_id"] == portfolio_id
        and str(stored["order_id"]) == str(uuid.UUID(fill.order_id))
        and (stored["symbol"], stored["side"]) == (fill.symbol, fill.side)
        and math.isclose(stored["shares"], fill.shares, rel_tol=1e-12, abs_tol=1e-9)
        and math.isclose(stored["price"], fill.price, rel_tol=1e-12, abs_tol=1e-12)
    )


class PostgresExecutionStore:
    """The execution side of the order outbox on one asyncpg pool (errors as ``command_side.postgres_errors``)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def _holdings(self, conn: Connection, portfolio_id: str) -> tuple[list[Position], float]:
        row = await conn.fetchrow(
            "SELECT positions, cash FROM portfolio_holdings WHERE portfolio_id = $1 FOR UPDATE", portfolio_id
        )
        if row is None:
            raise PreconditionError(f"portfolio {portfolio_id!r} has no holdings (UpsertHoldings)")
        return list(positions_from_json(_loaded(row["positions"]))), float(row["cash"])

    async def _apply(
        self,
        conn: Connection,
        order: asyncpg.Record,
        fill: Fill,
        positions: list[Position],
        cash: float,
        reported_by: str,
    ) -> tuple[asyncpg.Record, list[Position], float, float]:
        """Apply one fill to the holdings and its order; the order row after it, the holdings and the gain."""
        plan = [(lot["lot_id"], float(lot["shares"])) for lot in _loaded(order["lots"]) or ()]
        planned = planned_lots(plan, order["filled_shares"], fill.shares)
        aliases = await _pending_lot_aliases(conn, [lot_id for lot_id, _ in planned])
        effect = apply_fill(positions, cash, fill, planned, aliases)
        filled = order["filled_shares"] + fill.shares
        average = ((order["average_price"] or 0.0) * order["filled_shares"] + fill.price * fill.shares) / filled
        status = "FILLED" if filled >= order["shares"] - 1e-9 else "PARTIALLY_FILLED"
        await conn.execute(
            "INSERT INTO fills (fill_id, order_id, portfolio_id, symbol, side, shares, price, commission, filled_at, "
            "realised_gain, reported_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            fill.fill_id, order["order_id"], order["portfolio_id"], fill.symbol, fill.side, fill.shares, fill.price,
            fill.commission, fill.filled_at, effect.realised_gain, reported_by,
        )  # fmt: skip
        updated = await conn.fetchrow(
            "UPDATE order_outbox SET filled_shares = $2, average_price = $3, status = $4, "
            "updated_at = clock_timestamp() WHERE order_id = $1 RETURNING *",
            order["order_id"], filled, average, status,
        )  # fmt: skip
        await conn.execute(
            'INSERT INTO execution_events (event_id, "timestamp", portfolio_id, order_id, event_type, payload) '
            "VALUES ($1, clock_timestamp(), $2, $3, $4, $5::jsonb)",
            uuid.uuid4(), order["portfolio_id"], order["order_id"], status,
            _json({"schema_version": 1, "fill_id": fill.fill_id, "shares": fill.shares, "price": fill.price,
                   "commission": fill.commission, "realised_gain": effect.realised_gain, "reported_by": reported_by}),
        )  # fmt: skip
        assert updated is not None
        return updated, list(effect.positions), effect.cash, effect.realised_gain

    async def _store_holdings(
        self, conn: Connection, portfolio_id: str, positions: Sequence[Position], cash: float
    ) -> None:
        await conn.execute(
            "UPDATE portfolio_holdings SET positions = $2::jsonb, cash = $3, updated_at = clock_timestamp() "
            "WHERE portfolio_id = $1",
            portfolio_id, _json(positions_json(positions)), cash,
        )  # fmt: skip

    async def execute_paper(self, portfolio_id: str, *, as_of: datetime, broker: PaperBroker) -> ExecutionResult:
        """Claim and fill the portfolio's NEW orders (module docstring), sells first; one transaction.

        Raises
        ------
        PreconditionError
            A kill-switch is engaged; the portfolio has no holdings; an order's symbol has no stored price at or
            before ``as_of``.
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            switches = await conn.fetch(
                "SELECT scope FROM kill_switches WHERE scope = ANY($1::text[]) AND engaged FOR SHARE",
                [GLOBAL_SCOPE, portfolio_id],
            )
            if switches:
                which = "the global kill-switch" if switches[0]["scope"] == GLOBAL_SCOPE else "its kill-switch"
                raise PreconditionError(f"portfolio {portfolio_id!r}: {which} is engaged; no order is executed")
            orders = await conn.fetch(
                "SELECT * FROM order_outbox WHERE portfolio_id = $1 AND status = 'NEW' "
                "ORDER BY (side = 'BUY'), created_at, symbol FOR UPDATE SKIP LOCKED",
                portfolio_id,
            )
            if not orders:
                holdings = await conn.fetchrow(
                    "SELECT cash FROM portfolio_holdings WHERE portfolio_id = $1", portfolio_id
                )
                return ExecutionResult(fills=(), orders=(), cash=0.0 if holdings is None else float(holdings["cash"]))
            positions, cash = await self._holdings(conn, portfolio_id)
            symbols = sorted({o["symbol"] for o in orders})
            prices = {
                r["symbol"]: r["price"]
                for r in await conn.fetch(
                    "SELECT DISTINCT ON (symbol) symbol, price FROM market_data WHERE symbol = ANY($1::text[]) "
                    'AND "timestamp" <= $2 ORDER BY symbol, "timestamp" DESC',
                    symbols,
                    as_of,
                )
            }
            unpriced = [s for s in symbols if s not in prices]
            if unpriced:
                raise PreconditionError(f"no stored price at or before as_of for {', '.join(unpriced)}")
            markets = await self._liquidity(conn, symbols, as_of, broker)

            def fill_price(order: asyncpg.Record, shares: float) -> float:
                adv, sigma = markets.get(order["symbol"], (None, 0.0))
                impact = impact_fraction(
                    broker.impact_model, shares, prices[order["symbol"]], impact_bps=broker.impact_bps,
                    coefficient=broker.impact_coefficient, adv=adv, daily_volatility=sigma,
                )  # fmt: skip
                return paper_fill_price(order["side"], prices[order["symbol"]], spread_bps=broker.spread_bps,
                                        impact=impact)  # fmt: skip

            fills: list[AppliedFill] = []
            states: list[OrderState] = []
            for order in orders:
                shares = order["shares"]
                price = fill_price(order, shares)
                if order["side"] == "BUY":  # no margin: as many whole shares as the cash pays for
                    affordable = math.floor(cash / (price + broker.commission_per_share) + 1e-9)
                    if affordable < shares:
                        # Fewer shares move the price less (size-dependent impact): still affordable.
                        shares = float(max(affordable, 0))
                        price = fill_price(order, shares) if shares > 0 else price
                if shares <= 0:
                    row = await conn.fetchrow(
                        "UPDATE order_outbox SET status = 'REJECTED', updated_at = clock_timestamp() "
                        "WHERE order_id = $1 RETURNING *",
                        order["order_id"],
                    )
                    await self._event(conn, order, "REJECTED", {"reason": "no cash for one share"})
                    assert row is not None
                    states.append(_state(row))
                    continue
                fill = Fill(
                    fill_id=f"paper-{order['order_id']}",
                    order_id=str(order["order_id"]),
                    symbol=order["symbol"],
                    side=order["side"],
                    shares=shares,
                    price=price,
                    commission=broker.commission_per_share * shares,
                    filled_at=as_of,
                )
                row, positions, cash, gain = await self._apply(conn, order, fill, positions, cash, "paper")
                if row["status"] == "PARTIALLY_FILLED":  # the cash ran out: the rest is cancelled
                    row = await conn.fetchrow(
                        "UPDATE order_outbox SET status = 'CANCELLED', updated_at = clock_timestamp() "
                        "WHERE order_id = $1 RETURNING *",
                        order["order_id"],
                    )
                    await self._event(conn, order, "CANCELLED", {"reason": "no cash for the rest", "filled": shares})
                    assert row is not None
                fills.append(AppliedFill(fill=fill, realised_gain=gain))
                states.append(_state(row))
            await self._store_holdings(conn, portfolio_id, positions, cash)
        return ExecutionResult(fills=tuple(fills), orders=tuple(states), cash=cash)

    async def _liquidity(
        self, conn: Connection, symbols: Sequence[str], as_of: datetime, broker: PaperBroker
    ) -> dict[str, tuple[float, float]]:
        """``{symbol: (average daily volume, daily σ)}`` for a size-dependent impact model (empty for FIXED).

        Raises
        ------
        PreconditionError
            A symbol with fewer than 3 stored prices, or with neither a given nor a stored volume.
        """
        if broker.impact_model is PaperImpact.FIXED:
            return {}
        rows = await conn.fetch(
            """SELECT symbol, array_agg(price ORDER BY "timestamp") AS prices,
                      array_agg(volume ORDER BY "timestamp") AS volumes
               FROM (SELECT symbol, "timestamp", price, volume,
                            row_number() OVER (PARTITION BY symbol ORDER BY "timestamp" DESC) AS recent
                     FROM market_data WHERE symbol = ANY($1::text[]) AND "timestamp" <= $2) bars
               WHERE recent <= $3 GROUP BY symbol""",
            list(symbols), as_of, broker.impact_lookback_periods + 1,
        )  # fmt: skip
        markets: dict[str, tuple[float, float]] = {}
        for row in rows:
            try:
                sigma, stored_adv = liquidity(row["prices"], row["volumes"])
            except PreconditionError as error:
                raise PreconditionError(f"{row['symbol']}: {error}") from None
            adv = broker.average_daily_volume.get(row["symbol"], stored_adv)
            if adv is None:
                raise PreconditionError(
                    f"{row['symbol']}: no average daily volume for the {broker.impact_model} impact (give "
                    "settings.average_daily_volume, or store bar volumes with IngestMarketData)"
                )
            markets[row["symbol"]] = (adv, sigma)
        return markets

    async def _event(self, conn: Connection, order: asyncpg.Record, kind: str, payload: dict[str, Any]) -> None:
        await conn.execute(
            'INSERT INTO execution_events (event_id, "timestamp", portfolio_id, order_id, event_type, payload) '
            "VALUES ($1, clock_timestamp(), $2, $3, $4, $5::jsonb)",
            uuid.uuid4(), order["portfolio_id"], order["order_id"], kind, _json({"schema_version": 1, **payload}),
        )  # fmt: skip

    async def report_fills(self, portfolio_id: str, fills: Sequence[Fill], *, reported_by: str) -> ExecutionResult:
        """Apply reported fills in order, in one transaction; fills whose id is stored already are skipped.

        A repeat is a fill whose ``fill_id`` is stored with the same portfolio, order, symbol, side, shares and price
        (commission and time are not compared); a stored ``fill_id`` with any of those different is refused, not
        skipped, so a broker's id reused for another fill is never silently lost.

        Raises
        ------
        PreconditionError
            A fill's ``fill_id`` is stored already for a different fill.
            A fill's order is not this portfolio's, its symbol or side differs from the order's, it fills more than
            the order has left, or the holdings refuse it (no margin, no shorts); nothing of the call is stored.
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            positions, cash = await self._holdings(conn, portfolio_id)
            applied: list[AppliedFill] = []
            touched: dict[str, OrderState] = {}
            duplicates = 0
            for i, fill in enumerate(fills):
                stored = await conn.fetchrow(
                    "SELECT order_id, portfolio_id, symbol, side, shares, price FROM fills WHERE fill_id = $1",
                    fill.fill_id,
                )
                if stored is not None:
                    if not _same_fill(stored, fill, portfolio_id):
                        what = (  # another portfolio's fill is not described to this caller
                            f" ({stored['side']} {stored['shares']:g} {stored['symbol']} @ {stored['price']:g}, "
                            f"order {stored['order_id']})"
                            if stored["portfolio_id"] == portfolio_id
                            else ""
                        )
                        raise PreconditionError(
                            f"fills[{i}].fill_id: {fill.fill_id!r} is stored already for another fill{what}; a "
                            "repeated report must repeat the order, side, shares and price"
                        )
                    duplicates += 1
                    continue
                order = await conn.fetchrow(
                    "SELECT * FROM order_outbox WHERE order_id = $1 AND portfolio_id = $2 FOR UPDATE",
                    uuid.UUID(fill.order_id),
                    portfolio_id,
                )
                if order is None:
                    raise PreconditionError(f"fills[{i}]: order {fill.order_id} is not an order of {portfolio_id!r}")
                if (order["symbol"], order["side"]) != (fill.symbol, fill.side):
                    raise PreconditionError(
                        f"fills[{i}]: the order is {order['side']} {order['symbol']}, "
                        f"the fill {fill.side} {fill.symbol}"
                    )
                if order["status"] in ("FILLED", "CANCELLED", "REJECTED"):
                    raise PreconditionError(f"fills[{i}]: order {fill.order_id} is {order['status']}")
                left = order["shares"] - order["filled_shares"]
                if fill.shares > left + 1e-9:
                    raise PreconditionError(f"fills[{i}]: {fill.shares:g} shares filled, {left:g} left on the order")
                row, positions, cash, gain = await self._apply(conn, order, fill, positions, cash, reported_by)
                applied.append(AppliedFill(fill=replace(fill), realised_gain=gain))
                touched[fill.order_id] = _state(row)
            if applied:
                await self._store_holdings(conn, portfolio_id, positions, cash)
        return ExecutionResult(fills=tuple(applied), orders=tuple(touched.values()), cash=cash, duplicates=duplicates)

    async def cancel_orders(
        self, portfolio_id: str, order_ids: Sequence[str], *, reason: str, cancelled_by: str
    ) -> list[OrderState]:
        """Cancel open orders of a portfolio, all or none, in one transaction; their states in the given order.

        The portfolio's holdings row is locked first, as a reported fill's transaction does; the orders are locked
        ``NOWAIT``, so one the paper broker is filling at that moment (it locks orders before the holdings) fails
        the call with UNAVAILABLE (retry) instead of a deadlock. Each cancelled order gets a CANCELLED execution
        event with the reason, the caller and the shares it had filled. An order already CANCELLED is left as it
        is.

        Raises
        ------
        OperationalError
            An order is locked by a fill in progress (retry the call).
        NotFoundError
            An order is not one of the portfolio's (naming ``order_ids[i]``).
        PreconditionError
            An order is FILLED or REJECTED (naming ``order_ids[i]``).
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM portfolio_holdings WHERE portfolio_id = $1 FOR UPDATE", portfolio_id)
            rows = await conn.fetch(  # NOWAIT: an order the paper broker is filling now is not waited on
                "SELECT * FROM order_outbox WHERE order_id = ANY($1::uuid[]) AND portfolio_id = $2 "
                "ORDER BY order_id FOR UPDATE NOWAIT",
                [uuid.UUID(o) for o in order_ids],
                portfolio_id,
            )
            found = {str(r["order_id"]): r for r in rows}
            states = []
            for i, order_id in enumerate(order_ids):
                row = found.get(order_id)
                if row is None:
                    raise NotFoundError(f"order_ids[{i}]: no order {order_id} of {portfolio_id!r}")
                if row["status"] in ("FILLED", "REJECTED"):
                    description = f"order {order_id} is {row['status']}; only an open order can be cancelled"
                    raise PreconditionError(
                        f"order_ids[{i}]: {description}",
                        precondition_violations=(
                            PreconditionViolation("ORDER_NOT_OPEN", f"order_ids[{i}]", description),
                        ),
                    )
                if row["status"] != "CANCELLED":
                    row = await conn.fetchrow(
                        "UPDATE order_outbox SET status = 'CANCELLED', updated_at = clock_timestamp() "
                        "WHERE order_id = $1 RETURNING *",
                        row["order_id"],
                    )
                    assert row is not None
                    await self._event(
                        conn, row, "CANCELLED",
                        {"reason": reason, "cancelled_by": cancelled_by, "filled": row["filled_shares"]},
                    )  # fmt: skip
                states.append(_state(row))
        return states

    async def claim_orders(self, portfolio_id: str, *, limit: int, claimed_by: str) -> list[ClaimedOrder]:
        """Mark up to ``limit`` NEW orders SENT for ``claimed_by``, oldest first, in one transaction.

        ``FOR UPDATE SKIP LOCKED``: concurrent claims never share an order. Orders of a portfolio whose own
        kill-switch is engaged stay NEW.

        Raises
        ------
        PreconditionError
            The global kill-switch is engaged (nothing is claimed).
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            engaged = await conn.fetchval("SELECT engaged FROM kill_switches WHERE scope = $1 FOR SHARE", GLOBAL_SCOPE)
            if engaged:
                raise PreconditionError("the global kill-switch is engaged; no order is released")
            rows = await conn.fetch(
                """UPDATE order_outbox SET status = 'SENT', claimed_by = $3, updated_at = clock_timestamp()
                   WHERE order_id IN (
                       SELECT order_id FROM order_outbox o
                       WHERE status = 'NEW' AND ($1 = '' OR portfolio_id = $1)
                         AND NOT EXISTS (SELECT 1 FROM kill_switches k WHERE k.scope = o.portfolio_id AND k.engaged)
                       ORDER BY created_at, order_id LIMIT $2 FOR UPDATE SKIP LOCKED)
                   RETURNING *""",
                portfolio_id, limit, claimed_by,
            )  # fmt: skip
            for row in rows:
                await self._event(conn, row, "SENT", {"claimed_by": claimed_by})
        claimed = [
            ClaimedOrder(
                order_id=str(r["order_id"]),
                portfolio_id=r["portfolio_id"],
                symbol=r["symbol"],
                side=r["side"],
                shares=r["shares"],
                reference_price=r["reference_price"],
                reason=r["reason"],
                created_at=r["created_at"],
            )
            for r in rows
        ]
        return sorted(claimed, key=lambda o: (o.created_at, o.order_id))
