"""The trading store over PostgreSQL + TimescaleDB (asyncpg): :class:`PostgresTradingStore`.

The PostgreSQL backend of :class:`command_side.trading_store.TradingStore` (see that module for the contract).
Tables (``migrations/0006_trading.sql``, ``0007_rebalance_trade_date.sql``): ``portfolio_holdings`` (one
snapshot per portfolio), ``rebalance_policies``, ``rebalance_recommendations`` (the approval workflow's write
model) and the ``rebalance_events`` hypertable. Every change of a recommendation is a transition of
:class:`services.trading.RecommendationState` committed with its event row in one transaction; the transactions
that move a portfolio's recommendations hold a per-portfolio advisory lock (``hashtext('rebalance:' ||
portfolio_id)``), so the expiry sweep, creation and decisions of one portfolio run one after another and never
deadlock. All times of the workflow come from the database clock (``clock_timestamp()``), the clock the query
side reads expiries with. Every event row notifies :data:`NOTIFY_CHANNEL` (``"<portfolio_id> <event_id>"``) in its
transaction, for the query side's WatchEvents. Every writer of a portfolio's events (allocations' SHARES_ALLOCATED
included, ``command_side.allocations_repository``) takes the lock, reads the clock after it and persists the
overdue expiries first (:func:`lock_portfolio`, :func:`expire_overdue_locked`), so a portfolio's events commit in
``(timestamp, event_id)`` order: an EXPIRED event is dated at the deadline, which no earlier commit reached (it
would have expired the recommendation), and a superseded recommendation's event 1 µs before its successor's
CREATED. The SQL selects rows by the lifecycle's status sets (``PENDING_STATUSES``,
``APPROVED_STATUSES``, rendered as literals so that the partial indexes stay usable); whether a pending one is
overdue, and every transition, is decided in Python by the lifecycle.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from command_side.metrics import event_written
from command_side.repository import Connection, database_errors
from command_side.rotation_model import order_id
from command_side.rotation_store import GLOBAL_SCOPE
from command_side.trading_model import (
    OpenOrder,
    Position,
    RebalancePolicy,
    RebalanceRecommendation,
    RecommendedTrade,
)
from command_side.trading_records import (
    event_payload,
    policy_from_json,
    policy_json,
    positions_from_json,
    positions_json,
    recommendation_from_json,
    recommendation_json,
)
from command_side.trading_store import (
    CREATED,
    MAX_RECENT_TRADES,
    LatestTarget,
    RecentTrades,
    RecommendationEvent,
    StoredHoldings,
    StoredRecommendation,
    created_recommendation,
    stored_recommendation,
)
from services.errors import (
    IntegrityError,
    NotFoundError,
    OperationalError,
    PreconditionError,
    PreconditionViolation,
    StratoptError,
    UnavailableError,
)
from services.trading import (
    APPROVED_STATUSES,
    PENDING_STATUSES,
    RecommendationState,
    RecommendationStatus,
    Side,
)

NOTIFY_CHANNEL: Final = "rebalance_event"
"""LISTEN/NOTIFY channel of stored rebalance events (payload ``portfolio_id event_id``; ``query_side.watch``)."""
_LOCK_PREFIX: Final = "rebalance:"
_STATE_COLUMNS: Final = "recommendation_id, portfolio_id, status, expires_at, decided_by, decided_at, reason"
_RECOMMENDATION_COLUMNS: Final = f"{_STATE_COLUMNS}, request_hash, recommendation, total_trade_value"


def _sql_statuses(statuses: Iterable[RecommendationStatus]) -> str:
    """A set of lifecycle statuses as an SQL list of literals, e.g. ``('APPROVED', 'AUTO_APPROVED')``."""
    return "(" + ", ".join(f"'{status.value}'" for status in sorted(statuses)) + ")"


_PENDING_SQL: Final = _sql_statuses(PENDING_STATUSES)
_APPROVED_SQL: Final = _sql_statuses(APPROVED_STATUSES)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(value: Any) -> Any:
    """A jsonb column: text without a registered codec, already decoded with one."""
    return json.loads(value) if isinstance(value, str | bytes | bytearray) else value


@asynccontextmanager
async def store_errors() -> AsyncIterator[None]:
    """Turn asyncpg's errors into the domain's persistence errors.

    A violated constraint (a duplicate ``(portfolio_id, request_id)``) raises ``IntegrityError``; a lost or
    refused connection ``OperationalError`` (an ``UnavailableError``); other errors pass through.
    """
    try:
        async with database_errors():
            yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(f"{type(exc).__name__}: {exc}") from exc
    except UnavailableError as exc:
        if isinstance(exc, OperationalError):
            raise
        raise OperationalError(exc.message) from exc.__cause__ or exc


def _state(row: asyncpg.Record) -> RecommendationState:
    """The lifecycle state of a ``rebalance_recommendations`` row."""
    return RecommendationState(
        recommendation_id=str(row["recommendation_id"]),
        status=RecommendationStatus(row["status"]),
        expires_at=row["expires_at"],
        decided_at=row["decided_at"],
        decided_by=row["decided_by"] or "",
        reason=row["reason"] or "",
    )


def _recommendation(row: asyncpg.Record, state: RecommendationState | None = None) -> RebalanceRecommendation:
    """The recommendation of a row with its stored state (or ``state`` when given)."""
    return stored_recommendation(_load(row["recommendation"]), _state(row) if state is None else state)


async def lock_portfolio(conn: Connection, portfolio_id: str) -> datetime:
    """Take the portfolio's rebalancing lock for the transaction; return the database clock (read after it)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _LOCK_PREFIX + portfolio_id)
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


async def _engaged_switch(conn: Connection, portfolio_id: str) -> str | None:
    """The engaged kill-switch that holds ``portfolio_id``'s orders (``"global"`` or ``"portfolio"``), or None.

    Locks the global switch's row (and the portfolio's, when it has one) ``FOR SHARE``, as a rotation cycle does:
    ``SetKillSwitch`` takes it ``FOR UPDATE``, so an approval commits either before a switch is engaged or after
    it, seeing it.
    """
    rows = await conn.fetch(
        "SELECT scope, engaged FROM kill_switches WHERE scope = ANY($1::text[]) ORDER BY scope FOR SHARE",
        [GLOBAL_SCOPE, portfolio_id],
    )
    engaged = [r["scope"] for r in rows if r["engaged"]]
    if not engaged:
        return None
    return "global" if GLOBAL_SCOPE in engaged else "portfolio"


def _lot_plan(trade: RecommendedTrade) -> str | None:
    """The lots a SELL order relieves, as its recommendation chose them (migration 0022), as JSON; None for a BUY."""
    if trade.side is not Side.SELL or not trade.lots:
        return None
    return _json([{"lot_id": lot.lot_id, "shares": lot.shares} for lot in trade.lots])


async def _queue_orders(
    conn: Connection, recommendation: RebalanceRecommendation, recommendation_id: uuid.UUID, now: datetime
) -> None:
    """Put an approved recommendation's trades in the order outbox (migration 0013), in the approving transaction.

    The order id of a trade is ``command_side.rotation_model.order_id(recommendation_id, symbol)``: one
    recommendation can never queue the same order twice (``ON CONFLICT DO NOTHING``).
    """
    if not recommendation.trades:
        return
    await conn.executemany(
        "INSERT INTO order_outbox (order_id, source, source_id, portfolio_id, symbol, side, shares, reference_price, "
        "reason, created_at, updated_at, lots) "
        "VALUES ($1, 'REBALANCE', $2, $3, $4, $5, $6, $7, 'REBALANCE', $8, $8, $9::jsonb) "
        "ON CONFLICT (order_id) DO NOTHING",
        [
            (uuid.UUID(order_id(str(recommendation_id), t.symbol)), recommendation_id, recommendation.portfolio_id,
             t.symbol, t.side.value, t.shares, t.price, now, _lot_plan(t))
            for t in recommendation.trades
            if t.shares > 0
        ],
    )  # fmt: skip


async def _insert_event(
    conn: Connection,
    *,
    timestamp: datetime,
    portfolio_id: str,
    recommendation_id: uuid.UUID,
    event_type: str,
    state: RecommendationState,
    total_trade_value: float,
    payload: dict[str, Any],
    actor: str | None = None,
) -> None:
    event_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO rebalance_events (event_id, "timestamp", portfolio_id, recommendation_id, event_type, status,
               actor, total_trade_value, payload)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)""",
        event_id, timestamp, portfolio_id, recommendation_id, event_type, state.status.value,
        state.decided_by if actor is None else actor,
        total_trade_value, _json(event_payload(payload)),
    )  # fmt: skip
    await notify_event(conn, portfolio_id, event_id)
    event_written("rebalance_events", event_type)


async def notify_event(conn: Connection, portfolio_id: str, event_id: uuid.UUID) -> None:
    """Notify :data:`NOTIFY_CHANNEL` of a stored rebalance event (delivered when the transaction commits)."""
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{portfolio_id} {event_id}")


async def _write_state(conn: Connection, state: RecommendationState) -> None:
    """Store a transition's result in the recommendation's row."""
    await conn.execute(
        """UPDATE rebalance_recommendations SET status = $2, expires_at = $3, decided_by = $4, decided_at = $5,
               reason = $6
           WHERE recommendation_id = $1""",
        uuid.UUID(state.recommendation_id), state.status.value, state.expires_at, state.decided_by or None,
        state.decided_at, state.reason or None,
    )  # fmt: skip


async def _pending(conn: Connection, portfolio_id: str) -> list[asyncpg.Record]:
    """The portfolio's pending recommendations, locked for update; call with the portfolio lock held."""
    return await conn.fetch(
        f"SELECT {_RECOMMENDATION_COLUMNS} FROM rebalance_recommendations "
        f"WHERE portfolio_id = $1 AND status IN {_PENDING_SQL} ORDER BY created_at FOR UPDATE",
        portfolio_id,
    )


async def expire_overdue_locked(conn: Connection, portfolio_id: str, now: datetime) -> int:
    """Persist the expiry of the portfolio's overdue pending recommendations, each with its EXPIRED event.

    The lifecycle decides (:meth:`RecommendationState.at`): ``decided_at`` = ``expires_at``, and the event is
    dated then; the payload records when the expiry was noticed. Call with the portfolio lock held.
    """
    expired = 0
    for row in await _pending(conn, portfolio_id):
        state = _state(row)
        current = state.at(now)
        if current == state:
            continue
        assert current.decided_at is not None
        await _write_state(conn, current)
        await _insert_event(
            conn,
            timestamp=current.decided_at,
            portfolio_id=portfolio_id,
            recommendation_id=row["recommendation_id"],
            event_type=current.status.value,
            state=current,
            total_trade_value=row["total_trade_value"],
            payload={"noticed_at": now.isoformat()},
        )
        expired += 1
    return expired


class PostgresTradingStore:
    """The :class:`command_side.trading_store.TradingStore` on PostgreSQL + TimescaleDB.

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool to the migrated database.

    Notes
    -----
    Every method raises ``OperationalError`` (an ``UnavailableError``) when the database cannot be reached.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    # --- holdings and policies ------------------------------------------------------------------------------

    async def store_holdings(self, portfolio_id: str, positions: Sequence[Position], cash: float) -> datetime:
        """See :meth:`TradingStore.store_holdings`."""
        documents = positions_json(positions)
        async with store_errors(), self._pool.acquire() as conn:
            updated_at: datetime = await conn.fetchval(
                """INSERT INTO portfolio_holdings (portfolio_id, positions, cash, updated_at)
                   VALUES ($1, $2::jsonb, $3, clock_timestamp())
                   ON CONFLICT (portfolio_id) DO UPDATE SET positions = EXCLUDED.positions, cash = EXCLUDED.cash,
                       updated_at = EXCLUDED.updated_at
                   RETURNING updated_at""",
                portfolio_id,
                _json(documents),
                cash,
            )
        return updated_at

    async def load_holdings(self, portfolio_id: str) -> StoredHoldings | None:
        """See :meth:`TradingStore.load_holdings`."""
        async with store_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT positions, cash, updated_at FROM portfolio_holdings WHERE portfolio_id = $1", portfolio_id
            )
        if row is None:
            return None
        positions = positions_from_json(_load(row["positions"]))
        return StoredHoldings(positions=positions, cash=float(row["cash"]), updated_at=row["updated_at"])

    async def load_book(self, portfolio_id: str) -> tuple[StoredHoldings | None, tuple[OpenOrder, ...]]:
        """See :meth:`TradingStore.load_book` (one ``REPEATABLE READ`` read-only transaction)."""
        async with (
            store_errors(),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                "SELECT positions, cash, updated_at FROM portfolio_holdings WHERE portfolio_id = $1", portfolio_id
            )
            orders = await conn.fetch(
                "SELECT order_id, symbol, side, shares, filled_shares, reference_price, created_at, lots "
                "FROM order_outbox WHERE portfolio_id = $1 AND status IN ('NEW', 'SENT', 'PARTIALLY_FILLED') "
                "ORDER BY created_at, order_id",
                portfolio_id,
            )
        holdings = None
        if row is not None:
            positions = positions_from_json(_load(row["positions"]))
            holdings = StoredHoldings(positions=positions, cash=float(row["cash"]), updated_at=row["updated_at"])
        return holdings, tuple(
            OpenOrder(
                order_id=str(o["order_id"]),
                symbol=o["symbol"],
                side=o["side"],
                remaining=float(o["shares"] - o["filled_shares"]),
                filled=float(o["filled_shares"]),
                reference_price=float(o["reference_price"]),
                created_at=o["created_at"],
                lots=tuple((lot["lot_id"], float(lot["shares"])) for lot in _load(o["lots"]) or ()),
            )
            for o in orders
        )

    async def store_policy(self, portfolio_id: str, policy: RebalancePolicy, *, updated_by: str = "") -> None:
        """See :meth:`TradingStore.store_policy`."""
        document = policy_json(policy)
        async with store_errors(), self._pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO rebalance_policies (portfolio_id, policy, updated_at, updated_by)
                   VALUES ($1, $2::jsonb, clock_timestamp(), $3)
                   ON CONFLICT (portfolio_id) DO UPDATE SET policy = EXCLUDED.policy,
                       updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by""",
                portfolio_id,
                _json(document),
                updated_by or None,
            )

    async def policy_author(self, portfolio_id: str) -> str | None:
        """See :meth:`TradingStore.policy_author`."""
        async with store_errors(), self._pool.acquire() as conn:
            author: str | None = await conn.fetchval(
                "SELECT updated_by FROM rebalance_policies WHERE portfolio_id = $1", portfolio_id
            )
        return author

    async def load_policy(self, portfolio_id: str) -> RebalancePolicy | None:
        """See :meth:`TradingStore.load_policy`."""
        async with store_errors(), self._pool.acquire() as conn:
            value = await conn.fetchval("SELECT policy FROM rebalance_policies WHERE portfolio_id = $1", portfolio_id)
        if value is None:
            return None
        return policy_from_json(_load(value))

    # --- market data and targets ----------------------------------------------------------------------------

    async def latest_prices(self, symbols: Sequence[str], *, at_or_before: datetime | None) -> dict[str, float]:
        """See :meth:`TradingStore.latest_prices`.

        One index probe per symbol on the ``market_data`` primary key ``(symbol, timestamp)``.
        """
        if not symbols:
            return {}
        bound = "" if at_or_before is None else 'AND "timestamp" <= $2'
        query = f"""SELECT s.symbol, m.price FROM unnest($1::text[]) AS s(symbol)
                    CROSS JOIN LATERAL (
                        SELECT price FROM market_data WHERE symbol = s.symbol {bound}
                        ORDER BY "timestamp" DESC LIMIT 1
                    ) AS m"""
        arguments: list[Any] = [list(symbols)] + ([] if at_or_before is None else [at_or_before])
        async with store_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(query, *arguments)
        return {row["symbol"]: float(row["price"]) for row in rows}

    async def latest_target(self, portfolio_id: str) -> LatestTarget | None:
        """See :meth:`TradingStore.latest_target` (read from ``latest_portfolio_optimizations``)."""
        async with store_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT event_id, weights FROM latest_portfolio_optimizations WHERE portfolio_id = $1", portfolio_id
            )
        if row is None:
            return None
        weights = {str(k): float(v) for k, v in _load(row["weights"]).items()}
        return LatestTarget(event_id=str(row["event_id"]), weights=weights)

    # --- recommendations ------------------------------------------------------------------------------------

    async def expire_overdue(self, portfolio_id: str) -> int:
        """See :meth:`TradingStore.expire_overdue` (one transaction under the portfolio lock)."""
        async with store_errors(), self._pool.acquire() as conn, conn.transaction():
            now = await lock_portfolio(conn, portfolio_id)
            return await expire_overdue_locked(conn, portfolio_id, now)

    async def find(self, recommendation_id: uuid.UUID) -> RebalanceRecommendation | None:
        """See :meth:`TradingStore.find`."""
        async with store_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_RECOMMENDATION_COLUMNS} FROM rebalance_recommendations WHERE recommendation_id = $1",
                recommendation_id,
            )
        return None if row is None else _recommendation(row)

    async def find_by_request(self, portfolio_id: str, request_id: str) -> StoredRecommendation | None:
        """See :meth:`TradingStore.find_by_request`."""
        async with store_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_RECOMMENDATION_COLUMNS} FROM rebalance_recommendations "
                "WHERE portfolio_id = $1 AND request_id = $2",
                portfolio_id,
                request_id,
            )
        if row is None:
            return None
        return StoredRecommendation(request_hash=row["request_hash"] or "", recommendation=_recommendation(row))

    async def creator(self, recommendation_id: uuid.UUID) -> str | None:
        """See :meth:`TradingStore.creator` (the CREATED event at the row's ``created_at``)."""
        async with store_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT (SELECT e.actor FROM rebalance_events e
                           WHERE e.portfolio_id = r.portfolio_id AND e."timestamp" = r.created_at
                               AND e.recommendation_id = r.recommendation_id AND e.event_type = 'CREATED'
                           LIMIT 1) AS actor
                   FROM rebalance_recommendations r WHERE r.recommendation_id = $1""",
                recommendation_id,
            )
        return None if row is None else row["actor"] or ""

    async def recent_trades(self, portfolio_id: str, as_of: datetime, window: timedelta) -> list[RecentTrades]:
        """See :meth:`TradingStore.recent_trades` (index ``rebalance_recommendations_portfolio_as_of_idx``)."""
        async with store_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"""SELECT as_of, recommendation FROM rebalance_recommendations
                    WHERE portfolio_id = $1 AND status IN {_APPROVED_SQL}
                        AND as_of BETWEEN $2::timestamptz - $3::interval AND $2::timestamptz + $3::interval
                    ORDER BY as_of LIMIT {MAX_RECENT_TRADES}""",
                portfolio_id,
                as_of,
                window,
            )
        return [
            RecentTrades(
                as_of=row["as_of"],
                trades=recommendation_from_json(_load(row["recommendation"])).trades,
            )
            for row in rows
        ]

    async def create(
        self,
        recommendation: RebalanceRecommendation,
        *,
        request_id: str,
        request_hash: str,
        as_of: datetime,
        approval_ttl: timedelta,
        created_by: str = "",
    ) -> RebalanceRecommendation:
        """See :meth:`TradingStore.create` (one transaction under the portfolio lock).

        The row of an auto-approved recommendation stores ``created_at`` as its ``expires_at``. A duplicate
        ``(portfolio_id, request_id)`` fails the insert (the unique constraint) and rolls back the supersessions.
        """
        portfolio_id = recommendation.portfolio_id
        recommendation_id = uuid.uuid4()
        async with store_errors(), self._pool.acquire() as conn, conn.transaction():
            now = await lock_portfolio(conn, portfolio_id)
            switch = await _engaged_switch(conn, portfolio_id)
            if switch is not None and not recommendation.hold_reason and recommendation.trades:
                # No automatic approval (and so no order) while a kill-switch is engaged: it waits for one.
                recommendation = replace(
                    recommendation, hold_reason=f"KILL_SWITCH: the {switch} kill-switch is engaged"
                )
            state = RecommendationState.open(
                recommendation_id=str(recommendation_id),
                total_trade_value=recommendation.total_trade_value,
                # A held recommendation (hold_reason) waits for approval whatever its value.
                approval_limit=0.0 if recommendation.hold_reason else recommendation.approval_limit,
                created_at=now,
                approval_ttl=approval_ttl,
            )
            message = created_recommendation(recommendation, state, now)
            created = recommendation_json(message)
            await expire_overdue_locked(conn, portfolio_id, now)
            for row in await _pending(conn, portfolio_id):
                superseded = _state(row).supersede(at=now, successor_id=state.recommendation_id)
                await _write_state(conn, superseded)
                await _insert_event(
                    conn,
                    # One microsecond before the successor's CREATED event, so that the history orders them.
                    timestamp=now - timedelta(microseconds=1),
                    portfolio_id=portfolio_id,
                    recommendation_id=row["recommendation_id"],
                    event_type=superseded.status.value,
                    state=superseded,
                    total_trade_value=row["total_trade_value"],
                    payload={"superseded_by": state.recommendation_id},
                )
            await conn.execute(
                """INSERT INTO rebalance_recommendations (recommendation_id, portfolio_id, request_id, request_hash,
                       status, recommendation, total_trade_value, created_at, expires_at, decided_at, as_of)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)""",
                recommendation_id, portfolio_id, request_id or None, request_hash, state.status.value,
                _json(created), message.total_trade_value, now, state.expires_at, state.decided_at,
                as_of,
            )  # fmt: skip
            await _insert_event(
                conn,
                timestamp=now,
                portfolio_id=portfolio_id,
                recommendation_id=recommendation_id,
                event_type=CREATED,
                state=state,
                total_trade_value=message.total_trade_value,
                payload={"request_id": request_id, "approval_limit": message.approval_limit},
                actor=created_by,
            )
            stored = stored_recommendation(created, state)
            if state.status is RecommendationStatus.AUTO_APPROVED:
                await _queue_orders(conn, stored, recommendation_id, now)
        return stored

    async def decide(
        self, recommendation_id: uuid.UUID, *, status: RecommendationStatus, actor: str, reason: str
    ) -> RebalanceRecommendation:
        """See :meth:`TradingStore.decide`.

        In one transaction under the portfolio lock: the portfolio's overdue pending recommendations are expired
        first (each with an EXPIRED event), then the row is locked (``SELECT ... FOR UPDATE``) and the
        lifecycle's decision at the database clock is stored with its APPROVED or REJECTED event. A refused
        decision is raised after the transaction commits, so that the expiry is kept.
        """
        refused: StratoptError | None = None
        async with store_errors(), self._pool.acquire() as conn, conn.transaction():
            portfolio_id = await conn.fetchval(
                "SELECT portfolio_id FROM rebalance_recommendations WHERE recommendation_id = $1", recommendation_id
            )
            if portfolio_id is None:
                raise NotFoundError(f"no rebalance recommendation '{recommendation_id}'")
            now = await lock_portfolio(conn, portfolio_id)
            await expire_overdue_locked(conn, portfolio_id, now)
            row = await conn.fetchrow(
                f"SELECT {_RECOMMENDATION_COLUMNS} FROM rebalance_recommendations "
                "WHERE recommendation_id = $1 FOR UPDATE",
                recommendation_id,
            )
            assert row is not None  # rows are never deleted
            switch = await _engaged_switch(conn, portfolio_id) if status is RecommendationStatus.APPROVED else None
            try:
                decided = _state(row).decide(status, at=now, approver=actor, reason=reason)
            except StratoptError as error:  # the lifecycle's refusal: commit the expiry, then raise
                refused = error
            else:
                if switch is not None:
                    refused = PreconditionError(
                        f"the {switch} kill-switch is engaged: no rebalance is approved until it is released",
                        precondition_violations=(
                            PreconditionViolation("KILL_SWITCH", str(recommendation_id), f"{switch} kill-switch"),
                        ),
                    )
            if refused is None:
                await _write_state(conn, decided)
                await _insert_event(
                    conn,
                    timestamp=now,
                    portfolio_id=portfolio_id,
                    recommendation_id=recommendation_id,
                    event_type=decided.status.value,
                    state=decided,
                    total_trade_value=row["total_trade_value"],
                    payload={"reason": reason} if reason else {},
                )
                if decided.status is RecommendationStatus.APPROVED:
                    await _queue_orders(conn, _recommendation(row, decided), recommendation_id, now)
        if refused is not None:
            raise refused
        return _recommendation(row, decided)

    async def events(self, portfolio_id: str) -> list[RecommendationEvent]:
        """See :meth:`TradingStore.events` (``rebalance_events`` rows with a recommendation)."""
        async with store_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT "timestamp", recommendation_id, event_type, status, actor, total_trade_value, payload
                   FROM rebalance_events WHERE portfolio_id = $1 AND recommendation_id IS NOT NULL
                   ORDER BY "timestamp", event_id""",
                portfolio_id,
            )
        return [
            RecommendationEvent(
                timestamp=row["timestamp"],
                portfolio_id=portfolio_id,
                recommendation_id=row["recommendation_id"],
                event_type=row["event_type"],
                status=RecommendationStatus(row["status"]),
                actor=row["actor"],
                total_trade_value=row["total_trade_value"],
                payload=dict(_load(row["payload"])),
            )
            for row in rows
        ]
