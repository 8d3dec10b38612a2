"""The rebalancing write model over PostgreSQL + TimescaleDB (asyncpg).

Tables (``migrations/0006_trading.sql``, ``0007_rebalance_trade_date.sql``): ``portfolio_holdings`` (one
snapshot per portfolio), ``rebalance_policies``, ``rebalance_recommendations`` (the approval workflow's write
model) and the ``rebalance_events`` hypertable. Every change of a recommendation commits with its event row in
one transaction; the transactions that move a portfolio's recommendations hold a per-portfolio advisory lock
(``hashtext('rebalance:' || portfolio_id)``), so the expiry sweep, creation and decisions of one portfolio run
one after another and never deadlock. All times of the workflow come from the database clock
(``clock_timestamp()``), the clock the query side reads expiries with.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf import json_format

from command_side.mapping import datetime_to_timestamp
from command_side.repository import Connection, database_errors
from stratopt.v1 import trading_service_pb2 as trading_pb

_LOCK_PREFIX = "rebalance:"
PENDING = "PENDING_APPROVAL"
AUTO_APPROVED = "AUTO_APPROVED"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
EXPIRED = "EXPIRED"
_STATUS_PREFIX = "RECOMMENDATION_STATUS_"
_RECOMMENDATION_COLUMNS = (
    "recommendation_id, portfolio_id, request_hash, status, recommendation, expires_at, decided_by, decided_at, reason"
)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(value: Any) -> Any:
    """A jsonb column: text without a registered codec, already decoded with one."""
    return json.loads(value) if isinstance(value, str | bytes | bytearray) else value


def status_value(name: str) -> trading_pb.RecommendationStatus.ValueType:
    """The ``RecommendationStatus`` of a stored status name (``PENDING_APPROVAL`` ...)."""
    return trading_pb.RecommendationStatus.Value(_STATUS_PREFIX + name)


def status_name(value: trading_pb.RecommendationStatus.ValueType) -> str:
    """The stored name of a ``RecommendationStatus`` (``PENDING_APPROVAL`` ...)."""
    return trading_pb.RecommendationStatus.Name(value).removeprefix(_STATUS_PREFIX)


def recommendation_from_row(row: asyncpg.Record) -> trading_pb.RebalanceRecommendation:
    """The recommendation as created, with its current status and decision fields from the row."""
    message = trading_pb.RebalanceRecommendation.FromString(bytes(row["recommendation"]))
    message.status = status_value(row["status"])
    if row["decided_by"]:
        message.decided_by = row["decided_by"]
    if row["decided_at"] is not None:
        message.decided_at.CopyFrom(datetime_to_timestamp(row["decided_at"]))
    if row["reason"]:
        message.reason = row["reason"]
    return message


@dataclass(frozen=True, slots=True)
class StoredHoldings:
    """A portfolio's holdings snapshot."""

    positions: tuple[trading_pb.Position, ...]
    """Positions with their tax lots (no prices)."""
    cash: float
    """Cash held."""
    updated_at: datetime
    """When the snapshot was stored."""


@dataclass(frozen=True, slots=True)
class LatestTarget:
    """The weights of a portfolio's latest ``portfolio_optimized`` event."""

    event_id: str
    """Event identifier (UUID)."""
    weights: dict[str, float]
    """Weights keyed by strategy id (fractions)."""


@dataclass(frozen=True, slots=True)
class StoredRecommendation:
    """A recommendation found by its idempotency key, in its current state."""

    request_hash: str
    """Fingerprint of the request that created it."""
    recommendation: trading_pb.RebalanceRecommendation
    """The recommendation with its current status and decision fields."""


@dataclass(frozen=True, slots=True)
class RecentTrades:
    """The trades of a portfolio's approved recommendations near a trade date (for wash-sale checks)."""

    as_of: datetime
    """Trade date of the recommendation."""
    trades: tuple[trading_pb.Trade, ...]
    """Its trades."""


class DecisionOutcome(enum.Enum):
    """How an Approve or Reject call ended."""

    DECIDED = "DECIDED"
    """The pending recommendation moved to the decision."""
    NOT_FOUND = "NOT_FOUND"
    """No recommendation has the id."""
    NOT_PENDING = "NOT_PENDING"
    """It was already AUTO_APPROVED, APPROVED or REJECTED."""
    EXPIRED = "EXPIRED"
    """It was, or has just become, EXPIRED (the expiry is committed)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The result of :meth:`RebalancingRepository.decide`."""

    outcome: DecisionOutcome
    """How the call ended."""
    recommendation: trading_pb.RebalanceRecommendation | None
    """The recommendation after the call (None when not found)."""


async def _lock_portfolio(conn: Connection, portfolio_id: str) -> datetime:
    """Take the portfolio's rebalancing lock for the transaction; return the database clock."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _LOCK_PREFIX + portfolio_id)
    now: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return now


async def _insert_event(
    conn: Connection,
    *,
    timestamp: datetime,
    portfolio_id: str,
    recommendation_id: uuid.UUID,
    event_type: str,
    status: str,
    actor: str,
    total_trade_value: float,
    payload: dict[str, Any],
) -> None:
    await conn.execute(
        """INSERT INTO rebalance_events (event_id, "timestamp", portfolio_id, recommendation_id, event_type, status,
               actor, total_trade_value, payload)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)""",
        uuid.uuid4(), timestamp, portfolio_id, recommendation_id, event_type, status, actor, total_trade_value,
        _json(payload),
    )  # fmt: skip


async def _expire_overdue(conn: Connection, portfolio_id: str, now: datetime) -> set[uuid.UUID]:
    """Move the portfolio's pending recommendations past their expiry to EXPIRED, each with its event.

    The EXPIRED event is dated at the recommendation's ``expires_at`` (when it expired), the row's
    ``decided_at`` too; the payload records when the expiry was noticed. Call with the portfolio lock held.
    """
    rows = await conn.fetch(
        """UPDATE rebalance_recommendations SET status = 'EXPIRED', decided_at = expires_at
           WHERE portfolio_id = $1 AND status = 'PENDING_APPROVAL' AND expires_at <= $2
           RETURNING recommendation_id, expires_at, total_trade_value""",
        portfolio_id,
        now,
    )
    for row in rows:
        await _insert_event(
            conn,
            timestamp=row["expires_at"],
            portfolio_id=portfolio_id,
            recommendation_id=row["recommendation_id"],
            event_type=EXPIRED,
            status=EXPIRED,
            actor="",
            total_trade_value=row["total_trade_value"],
            payload={"noticed_at": now.isoformat()},
        )
    return {row["recommendation_id"] for row in rows}


class RebalancingRepository:
    """Persistence of holdings, policies, rebalance recommendations and their events.

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool to the migrated database.

    Notes
    -----
    Every method raises ``UnavailableError`` when the database cannot be reached.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    # --- holdings and policies ------------------------------------------------------------------------------

    async def store_holdings(
        self, portfolio_id: str, positions: Sequence[trading_pb.Position], cash: float
    ) -> datetime:
        """Replace the portfolio's holdings snapshot; return when it was stored (database clock)."""
        documents = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in positions]
        async with database_errors(), self._pool.acquire() as conn:
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
        """The portfolio's holdings snapshot, or None when none was stored."""
        async with database_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT positions, cash, updated_at FROM portfolio_holdings WHERE portfolio_id = $1", portfolio_id
            )
        if row is None:
            return None
        positions = tuple(json_format.ParseDict(d, trading_pb.Position()) for d in _load(row["positions"]))
        return StoredHoldings(positions=positions, cash=float(row["cash"]), updated_at=row["updated_at"])

    async def store_policy(self, portfolio_id: str, policy: trading_pb.RebalancePolicy) -> None:
        """Replace the portfolio's rebalance policy."""
        document = json_format.MessageToDict(policy, preserving_proto_field_name=True)
        async with database_errors(), self._pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO rebalance_policies (portfolio_id, policy, updated_at)
                   VALUES ($1, $2::jsonb, clock_timestamp())
                   ON CONFLICT (portfolio_id) DO UPDATE SET policy = EXCLUDED.policy,
                       updated_at = EXCLUDED.updated_at""",
                portfolio_id,
                _json(document),
            )

    async def load_policy(self, portfolio_id: str) -> trading_pb.RebalancePolicy | None:
        """The portfolio's stored policy, or None when none was stored."""
        async with database_errors(), self._pool.acquire() as conn:
            value = await conn.fetchval("SELECT policy FROM rebalance_policies WHERE portfolio_id = $1", portfolio_id)
        if value is None:
            return None
        return json_format.ParseDict(_load(value), trading_pb.RebalancePolicy(), ignore_unknown_fields=True)

    # --- market data and targets ----------------------------------------------------------------------------

    async def latest_prices(self, symbols: Sequence[str], *, at_or_before: datetime | None) -> dict[str, float]:
        """The latest stored price of each symbol (at or before ``at_or_before`` when given).

        One index probe per symbol on the ``market_data`` primary key ``(symbol, timestamp)``; symbols without
        a stored price are absent from the result.
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
        async with database_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(query, *arguments)
        return {row["symbol"]: float(row["price"]) for row in rows}

    async def latest_target(self, portfolio_id: str) -> LatestTarget | None:
        """The weights of the portfolio's latest optimization, or None when it has none."""
        async with database_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT event_id, weights FROM latest_portfolio_optimizations WHERE portfolio_id = $1", portfolio_id
            )
        if row is None:
            return None
        weights = {str(k): float(v) for k, v in _load(row["weights"]).items()}
        return LatestTarget(event_id=str(row["event_id"]), weights=weights)

    # --- recommendations ------------------------------------------------------------------------------------

    async def expire_overdue(self, portfolio_id: str) -> int:
        """Expire the portfolio's overdue pending recommendations (each with an EXPIRED event); return how many."""
        async with database_errors(), self._pool.acquire() as conn, conn.transaction():
            now = await _lock_portfolio(conn, portfolio_id)
            return len(await _expire_overdue(conn, portfolio_id, now))

    async def find_by_request(self, portfolio_id: str, request_id: str) -> StoredRecommendation | None:
        """The recommendation created by an earlier request with this idempotency key, if any."""
        async with database_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_RECOMMENDATION_COLUMNS} FROM rebalance_recommendations "
                "WHERE portfolio_id = $1 AND request_id = $2",
                portfolio_id,
                request_id,
            )
        if row is None:
            return None
        return StoredRecommendation(request_hash=row["request_hash"] or "", recommendation=recommendation_from_row(row))

    async def recent_trades(self, portfolio_id: str, as_of: datetime, window: timedelta) -> list[RecentTrades]:
        """Trades of the portfolio's APPROVED and AUTO_APPROVED recommendations dated within ``window`` of ``as_of``."""
        async with database_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT as_of, recommendation FROM rebalance_recommendations
                   WHERE portfolio_id = $1 AND status IN ('APPROVED', 'AUTO_APPROVED')
                       AND as_of BETWEEN $2::timestamptz - $3::interval AND $2::timestamptz + $3::interval
                   ORDER BY as_of LIMIT 10000""",
                portfolio_id,
                as_of,
                window,
            )
        return [
            RecentTrades(
                as_of=row["as_of"],
                trades=tuple(trading_pb.RebalanceRecommendation.FromString(bytes(row["recommendation"])).trades),
            )
            for row in rows
        ]

    async def create(
        self,
        recommendation: trading_pb.RebalanceRecommendation,
        *,
        request_id: str,
        request_hash: str,
        as_of: datetime,
        pending: bool,
        approval_ttl: timedelta,
    ) -> trading_pb.RebalanceRecommendation:
        """Store a new recommendation and its CREATED event in one transaction.

        Fills in ``recommendation_id``, ``created_at`` (database clock), ``status`` (PENDING_APPROVAL when
        ``pending``, else AUTO_APPROVED with ``decided_at`` = ``created_at``) and, when pending, ``expires_at`` =
        ``created_at + approval_ttl`` (the row of an auto-approved one stores ``created_at`` there). A new
        recommendation supersedes the portfolio's pending ones (built on an older state of the same holdings:
        approving both would trade twice): they become EXPIRED now, each with an EXPIRED event whose payload
        names the superseding recommendation (dated one microsecond before its CREATED event).

        Raises
        ------
        asyncpg.UniqueViolationError
            When a concurrent request with the same ``(portfolio_id, request_id)`` committed first.
        """
        message = trading_pb.RebalanceRecommendation()
        message.CopyFrom(recommendation)
        recommendation_id = uuid.uuid4()
        message.recommendation_id = str(recommendation_id)
        status = PENDING if pending else AUTO_APPROVED
        message.status = status_value(status)
        portfolio_id = message.portfolio_id
        async with database_errors(), self._pool.acquire() as conn, conn.transaction():
            now = await _lock_portfolio(conn, portfolio_id)
            expires_at = now + approval_ttl if pending else now
            message.created_at.CopyFrom(datetime_to_timestamp(now))
            superseded = await conn.fetch(
                """UPDATE rebalance_recommendations
                   SET status = 'EXPIRED', decided_at = $2, expires_at = LEAST(expires_at, $2),
                       reason = 'superseded by recommendation ' || $3
                   WHERE portfolio_id = $1 AND status = 'PENDING_APPROVAL'
                   RETURNING recommendation_id, total_trade_value""",
                portfolio_id,
                now,
                str(recommendation_id),
            )
            for row in superseded:
                await _insert_event(
                    conn,
                    # One microsecond before the successor's CREATED event, so that the history orders them.
                    timestamp=now - timedelta(microseconds=1),
                    portfolio_id=portfolio_id,
                    recommendation_id=row["recommendation_id"],
                    event_type=EXPIRED,
                    status=EXPIRED,
                    actor="",
                    total_trade_value=row["total_trade_value"],
                    payload={"superseded_by": str(recommendation_id)},
                )
            if pending:
                message.expires_at.CopyFrom(datetime_to_timestamp(expires_at))
            await conn.execute(
                """INSERT INTO rebalance_recommendations (recommendation_id, portfolio_id, request_id, request_hash,
                       status, recommendation, total_trade_value, created_at, expires_at, decided_at, as_of)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                recommendation_id, portfolio_id, request_id or None, request_hash, status,
                message.SerializeToString(), message.total_trade_value, now, expires_at,
                None if pending else now, as_of,
            )  # fmt: skip
            await _insert_event(
                conn,
                timestamp=now,
                portfolio_id=portfolio_id,
                recommendation_id=recommendation_id,
                event_type="CREATED",
                status=status,
                actor="",
                total_trade_value=message.total_trade_value,
                payload={"request_id": request_id, "approval_limit": message.approval_limit},
            )
        if not pending:
            message.decided_at.CopyFrom(message.created_at)
        return message

    async def decide(self, recommendation_id: uuid.UUID, *, status: str, actor: str, reason: str) -> Decision:
        """Move a PENDING_APPROVAL recommendation to ``status`` (APPROVED or REJECTED) with its event.

        In one transaction under the portfolio lock: the portfolio's overdue pending recommendations are expired
        first (each with an EXPIRED event), then the row is locked (``SELECT ... FOR UPDATE``) and, when still
        pending, updated with ``decided_by``, ``decided_at`` (database clock) and ``reason`` together with an
        APPROVED or REJECTED event. The outcome is returned, never raised, so that an expiry commits even though
        the call then fails.
        """
        async with database_errors(), self._pool.acquire() as conn, conn.transaction():
            portfolio_id = await conn.fetchval(
                "SELECT portfolio_id FROM rebalance_recommendations WHERE recommendation_id = $1", recommendation_id
            )
            if portfolio_id is None:
                return Decision(DecisionOutcome.NOT_FOUND, None)
            now = await _lock_portfolio(conn, portfolio_id)
            await _expire_overdue(conn, portfolio_id, now)
            row = await conn.fetchrow(
                f"SELECT {_RECOMMENDATION_COLUMNS}, total_trade_value FROM rebalance_recommendations "
                "WHERE recommendation_id = $1 FOR UPDATE",
                recommendation_id,
            )
            assert row is not None  # rows are never deleted
            if row["status"] == EXPIRED:
                return Decision(DecisionOutcome.EXPIRED, recommendation_from_row(row))
            if row["status"] != PENDING:
                return Decision(DecisionOutcome.NOT_PENDING, recommendation_from_row(row))
            row = await conn.fetchrow(
                f"""UPDATE rebalance_recommendations SET status = $2, decided_by = $3, decided_at = $4, reason = $5
                    WHERE recommendation_id = $1 RETURNING {_RECOMMENDATION_COLUMNS}, total_trade_value""",
                recommendation_id,
                status,
                actor,
                now,
                reason or None,
            )
            assert row is not None
            await _insert_event(
                conn,
                timestamp=now,
                portfolio_id=portfolio_id,
                recommendation_id=recommendation_id,
                event_type=status,
                status=status,
                actor=actor,
                total_trade_value=row["total_trade_value"],
                payload={"reason": reason} if reason else {},
            )
        return Decision(DecisionOutcome.DECIDED, recommendation_from_row(row))
