"""The rotation side's store over PostgreSQL + TimescaleDB (asyncpg).

Signals, configurations, kill-switches, decisions and the order outbox (tables of migration ``0013_rotation``).

A decision, its ``rotation_decided`` event and its orders commit in one transaction, which first locks the global
kill-switch row ``FOR SHARE`` and reads the portfolio's switch: ``SetKillSwitch`` locks the same row ``FOR
UPDATE``, so a decision commits either before a switch is engaged or after it, and then sees it. It also holds the
portfolio's ``rotation:`` advisory lock and reads the clock after it, so a portfolio's decisions commit in
``(timestamp, event_id)`` order, and notifies :data:`NOTIFY_CHANNEL` (``query_side.watch``). asyncpg's errors
are translated by ``command_side.postgres_errors``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from command_side.postgres_errors import postgres_errors
from command_side.rotation_model import DecisionRecord, KillSwitchState, RotationPortfolioConfig
from command_side.trading_records import positions_from_json
from command_side.trading_store import StoredHoldings

GLOBAL_SCOPE = ""
"""The scope of the global kill-switch."""
NOTIFY_CHANNEL = "rotation_decided"
"""LISTEN/NOTIFY channel of stored decisions (payload ``portfolio_id event_id``)."""


@dataclass(frozen=True, slots=True)
class PositionBook:
    """A portfolio's holdings and its open orders' remaining shares, from one snapshot.

    Attributes
    ----------
    holdings : StoredHoldings or None
        The stored holdings; None when the portfolio has none.
    open_buys, open_sells : dict of str to float
        Shares the open BUY (SELL) orders have still to buy (sell), by symbol; symbols without any are absent.
    """

    holdings: StoredHoldings | None
    open_buys: dict[str, float]
    open_sells: dict[str, float]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _switch(row: asyncpg.Record) -> KillSwitchState:
    return KillSwitchState(
        scope=row["scope"],
        engaged=row["engaged"],
        changed_by=row["changed_by"],
        changed_at=row["changed_at"],
        reason=row["reason"],
    )


class PostgresRotationStore:
    """Rotation storage on one asyncpg pool (the migrated database).

    Every method may raise ``services.errors.OperationalError`` when the database cannot be reached and
    ``services.errors.IntegrityError`` on a unique-key race.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    # --- signals --------------------------------------------------------------------------------------------------

    async def ingest_signals(self, signal_set: str, rows: Sequence[tuple[str, str, datetime, float]]) -> int:
        """Upsert ``(symbol, horizon, time, score)`` rows of ``signal_set`` in one transaction; the rows written."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """INSERT INTO signals (signal_set, symbol, horizon, "time", score) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (signal_set, symbol, horizon, "time") DO UPDATE SET score = EXCLUDED.score""",
                [(signal_set, symbol, horizon, when, score) for symbol, horizon, when, score in rows],
            )
        return len(rows)

    async def ingest_quotes(self, rows: Sequence[tuple[str, datetime, float, float]]) -> int:
        """Upsert ``(symbol, time, bid, ask)`` quotes in one transaction; the rows written."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """INSERT INTO quotes (symbol, quoted_at, bid, ask) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (symbol, quoted_at) DO UPDATE SET bid = EXCLUDED.bid, ask = EXCLUDED.ask""",
                list(rows),
            )
        return len(rows)

    async def spreads(
        self, symbols: Sequence[str], *, as_of: datetime, max_age: timedelta, lookback: timedelta
    ) -> dict[str, tuple[float, float]]:
        """Each symbol's current and normal spread in basis points, for those with a current quote.

        Current: the spread (ask − bid) / ((ask + bid) / 2) · 1e4 of its latest quote in ``(as_of − max_age,
        as_of]``; normal: the median spread of its quotes in ``(as_of − lookback, as_of]`` (that quote included).
        """
        recent, oldest = _before(as_of, max_age), _before(as_of, lookback)
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """WITH latest AS (
                       SELECT DISTINCT ON (symbol) symbol, (ask - bid) / ((ask + bid) / 2) * 1e4 AS spread_bps
                       FROM quotes
                       WHERE symbol = ANY($1::text[]) AND quoted_at <= $2 AND quoted_at > $3
                       ORDER BY symbol, quoted_at DESC)
                   SELECT l.symbol, l.spread_bps,
                          percentile_cont(0.5) WITHIN GROUP (ORDER BY (q.ask - q.bid) / ((q.ask + q.bid) / 2) * 1e4)
                              AS normal_bps
                   FROM latest l JOIN quotes q ON q.symbol = l.symbol AND q.quoted_at <= $2 AND q.quoted_at > $4
                   GROUP BY l.symbol, l.spread_bps""",
                list(symbols), as_of, recent, oldest,
            )  # fmt: skip
        return {r["symbol"]: (float(r["spread_bps"]), float(r["normal_bps"])) for r in rows}

    async def latest_signals(
        self, signal_set: str, symbols: Sequence[str], horizons: Sequence[str], *, as_of: datetime, max_age: timedelta
    ) -> dict[tuple[str, str], tuple[datetime, float]]:
        """The latest score of each (symbol, horizon) in ``(as_of − max_age, as_of]``; absent pairs have none."""
        oldest = _before(as_of, max_age)
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT DISTINCT ON (symbol, horizon) symbol, horizon, "time", score FROM signals
                   WHERE signal_set = $1 AND symbol = ANY($2::text[]) AND horizon = ANY($3::text[])
                     AND "time" <= $4 AND "time" > $5
                   ORDER BY symbol, horizon, "time" DESC""",
                signal_set, list(symbols), list(horizons), as_of, oldest,
            )  # fmt: skip
        return {(r["symbol"], r["horizon"]): (r["time"], r["score"]) for r in rows}

    # --- configurations -------------------------------------------------------------------------------------------

    async def upsert_configuration(self, config: RotationPortfolioConfig) -> tuple[RotationPortfolioConfig, bool]:
        """Store ``config`` as a new version unless its content (``enabled`` included) is the latest version's."""
        content = config.content()
        digest = config.content_hash()
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('rotation:' || $1))", config.portfolio_id)
            head = await conn.fetchrow(
                "SELECT version, content_hash, enabled FROM rotation_configurations WHERE portfolio_id = $1 "
                "ORDER BY version DESC LIMIT 1",
                config.portfolio_id,
            )
            if head is not None and head["content_hash"] == digest and head["enabled"] == config.enabled:
                return replace(config, version=head["version"]), False
            version = 1 if head is None else head["version"] + 1
            await conn.execute(
                "INSERT INTO rotation_configurations (portfolio_id, version, enabled, configuration, content_hash) "
                "VALUES ($1, $2, $3, $4::jsonb, $5)",
                config.portfolio_id, version, config.enabled, _json(content), digest,
            )  # fmt: skip
            # The scheduler's row: a new configuration is due at once; a changed one keeps its next slot.
            await conn.execute(
                """INSERT INTO rotation_schedule (portfolio_id, enabled, interval_minutes, next_run_at)
                   VALUES ($1, $2, $3, clock_timestamp())
                   ON CONFLICT (portfolio_id) DO UPDATE SET enabled = EXCLUDED.enabled,
                       interval_minutes = EXCLUDED.interval_minutes""",
                config.portfolio_id, config.enabled, config.interval_minutes,
            )  # fmt: skip
        return replace(config, version=version), True

    # --- the scheduler --------------------------------------------------------------------------------------------

    async def claim_due(self, *, limit: int) -> list[tuple[str, datetime]]:
        """Claim up to ``limit`` due configurations for this caller: ``(portfolio_id, slot start)`` each.

        One statement: the due rows are locked ``FOR UPDATE SKIP LOCKED`` (another replica skips them) and their
        ``next_run_at`` moves to the start of the interval after now (intervals aligned to the Unix epoch), so a
        configuration is claimed once per interval, and a scheduler that was down does not catch up missed
        intervals. Nothing is claimed while the scheduler is paused.
        """
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """WITH due AS (
                       SELECT portfolio_id FROM rotation_schedule
                       WHERE enabled AND next_run_at <= clock_timestamp()
                         AND NOT (SELECT paused FROM rotation_scheduler_state)
                       ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED
                   ), slots AS (
                       SELECT s.portfolio_id, s.interval_minutes * 60 AS width,
                              floor(extract(epoch FROM clock_timestamp()) / (s.interval_minutes * 60)) AS n
                       FROM rotation_schedule s JOIN due USING (portfolio_id)
                   )
                   UPDATE rotation_schedule s
                   SET next_run_at = to_timestamp((slots.n + 1) * slots.width), claimed_at = clock_timestamp()
                   FROM slots WHERE s.portfolio_id = slots.portfolio_id
                   RETURNING s.portfolio_id, to_timestamp(slots.n * slots.width) AS slot""",
                limit,
            )
        return [(r["portfolio_id"], r["slot"]) for r in rows]

    async def set_scheduler_paused(self, *, paused: bool, changed_by: str, reason: str) -> KillSwitchState:
        """Pause or resume the scheduler on every replica; its state (scope ``scheduler``) after the change."""
        async with postgres_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE rotation_scheduler_state SET paused = $1, changed_by = $2, changed_at = clock_timestamp(), "
                "reason = $3 RETURNING paused, changed_by, changed_at, reason",
                paused, changed_by, reason,
            )  # fmt: skip
        assert row is not None  # the migration's row
        return KillSwitchState(
            scope="scheduler", engaged=row["paused"], changed_by=row["changed_by"], changed_at=row["changed_at"],
            reason=row["reason"],
        )  # fmt: skip

    async def get_configuration(self, portfolio_id: str) -> RotationPortfolioConfig | None:
        """The latest version of a portfolio's configuration, or None."""
        async with postgres_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT version, configuration FROM rotation_configurations WHERE portfolio_id = $1 "
                "ORDER BY version DESC LIMIT 1",
                portfolio_id,
            )
        if row is None:
            return None
        return RotationPortfolioConfig.from_content(_loaded(row["configuration"]), version=row["version"])

    # --- kill-switches --------------------------------------------------------------------------------------------

    async def kill_switches(self, portfolio_id: str) -> list[KillSwitchState]:
        """The global switch and the portfolio's (when it has one)."""
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM kill_switches WHERE scope = ANY($1::text[]) ORDER BY scope", [GLOBAL_SCOPE, portfolio_id]
            )
        return [_switch(r) for r in rows]

    async def set_kill_switch(self, scope: str, *, engaged: bool, changed_by: str, reason: str) -> KillSwitchState:
        """Engage or release a switch and record the change (``kill_switch_events``), in one transaction."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            # Waits for every decision being stored now; decisions after this commit see the new state.
            await conn.execute("SELECT 1 FROM kill_switches WHERE scope = $1 FOR UPDATE", GLOBAL_SCOPE)
            row = await conn.fetchrow(
                """INSERT INTO kill_switches (scope, engaged, changed_by, changed_at, reason)
                   VALUES ($1, $2, $3, clock_timestamp(), $4)
                   ON CONFLICT (scope) DO UPDATE SET engaged = EXCLUDED.engaged, changed_by = EXCLUDED.changed_by,
                       changed_at = EXCLUDED.changed_at, reason = EXCLUDED.reason
                   RETURNING *""",
                scope, engaged, changed_by, reason,
            )  # fmt: skip
            assert row is not None
            await conn.execute(
                'INSERT INTO kill_switch_events (event_id, "timestamp", scope, engaged, changed_by, reason) '
                "VALUES ($1, $2, $3, $4, $5, $6)",
                uuid.uuid4(), row["changed_at"], scope, engaged, changed_by, reason,
            )  # fmt: skip
        return _switch(row)

    async def kill_switch_events(self, scope: str) -> list[tuple[datetime, bool, str, str]]:
        """(time, engaged, changed_by, reason) of every change of a switch, oldest first."""
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                'SELECT "timestamp", engaged, changed_by, reason FROM kill_switch_events WHERE scope = $1 '
                'ORDER BY "timestamp"',
                scope,
            )
        return [(r["timestamp"], r["engaged"], r["changed_by"], r["reason"]) for r in rows]

    # --- decisions ------------------------------------------------------------------------------------------------

    async def find_decision(self, portfolio_id: str, request_id: str) -> tuple[str, DecisionRecord] | None:
        """(request hash, decision) stored for a portfolio's idempotency key, or None."""
        async with postgres_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT request_hash, decision FROM rotation_decisions WHERE portfolio_id = $1 AND request_id = $2",
                portfolio_id,
                request_id,
            )
        if row is None:
            return None
        return row["request_hash"], DecisionRecord.from_json(_loaded(row["decision"]))

    async def store_decision(
        self,
        decision: DecisionRecord,
        *,
        request_hash: str,
        held_by_switch: Callable[[DecisionRecord, KillSwitchState], DecisionRecord],
    ) -> DecisionRecord:
        """Store a decision, its ``rotation_decided`` event and its orders in one transaction.

        Parameters
        ----------
        decision : DecisionRecord
            The cycle's decision (``decided_at`` is set here from the database clock).
        request_hash : str
            Hash of the request, for replays of its ``request_id``.
        held_by_switch : callable
            Turns a TRADE into the HOLD of an engaged switch; called when a switch is engaged at commit time.

        Returns
        -------
        DecisionRecord
            The decision as stored.

        Raises
        ------
        IntegrityError
            When a concurrent call with the same ``request_id`` stored first.
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            # The portfolio's decisions one after another, each dated after the lock: they commit in time order.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('rotation:' || $1))", decision.portfolio_id)
            rows = await conn.fetch(
                "SELECT *, clock_timestamp() AS now FROM kill_switches WHERE scope = ANY($1::text[]) "
                "ORDER BY scope FOR SHARE",
                [GLOBAL_SCOPE, decision.portfolio_id],
            )
            now = rows[0]["now"]
            engaged = [_switch(r) for r in rows if r["engaged"]]
            if engaged and decision.action == "TRADE":
                decision = held_by_switch(decision, engaged[0])
            decision = replace(decision, decided_at=now)
            document = _json(decision.to_json())
            decision_id = uuid.UUID(decision.decision_id)
            await conn.execute(
                "INSERT INTO rotation_decisions (decision_id, portfolio_id, request_id, request_hash, as_of, "
                "decided_at, decision) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
                decision_id, decision.portfolio_id, decision.request_id or None, request_hash, decision.as_of, now,
                document,
            )  # fmt: skip
            event_id = uuid.uuid4()
            await conn.execute(
                'INSERT INTO rotation_decided (event_id, "timestamp", portfolio_id, decision_id, '
                "configuration_version, as_of, engine, action, policy_reason, reason_codes, orders, turnover, "
                "decision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)",
                event_id, now, decision.portfolio_id, decision_id, decision.configuration_version,
                decision.as_of, decision.engine, decision.action, decision.policy_reason, decision.reason_codes(),
                len(decision.orders), decision.turnover, document,
            )  # fmt: skip
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{decision.portfolio_id} {event_id}")
            if decision.orders:
                await conn.executemany(
                    "INSERT INTO order_outbox (order_id, source, source_id, portfolio_id, symbol, side, shares, "
                    "reference_price, reason, created_at, updated_at) "
                    "VALUES ($1, 'ROTATION', $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                    [
                        (uuid.UUID(o.order_id), decision_id, decision.portfolio_id, o.symbol, o.side, o.shares,
                         o.reference_price, o.reason, now)
                        for o in decision.orders
                    ],
                )  # fmt: skip
        return decision

    async def position_book(self, portfolio_id: str) -> PositionBook:
        """The portfolio's holdings and what its open orders have still to trade, read in one snapshot.

        One ``REPEATABLE READ`` read-only transaction: a fill updates the holdings and its order in one
        transaction (``command_side.execution_store``), so a fill committing between two separate reads could
        be counted twice (in the holdings and as still open) or not at all. Open orders are those NEW, SENT or
        PARTIALLY_FILLED, of either source (rotation or rebalance); their remaining shares are
        ``shares - filled_shares``.
        """
        async with (
            postgres_errors(),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            holdings = await conn.fetchrow(
                "SELECT positions, cash, updated_at FROM portfolio_holdings WHERE portfolio_id = $1", portfolio_id
            )
            rows = await conn.fetch(
                """SELECT symbol, side, sum(shares - filled_shares) AS remaining FROM order_outbox
                       WHERE portfolio_id = $1 AND status IN ('NEW', 'SENT', 'PARTIALLY_FILLED')
                       GROUP BY symbol, side""",
                portfolio_id,
            )
        stored = None
        if holdings is not None:
            stored = StoredHoldings(
                positions=positions_from_json(_loaded(holdings["positions"])),
                cash=float(holdings["cash"]),
                updated_at=holdings["updated_at"],
            )
        buys = {r["symbol"]: float(r["remaining"]) for r in rows if r["side"] == "BUY"}
        sells = {r["symbol"]: float(r["remaining"]) for r in rows if r["side"] == "SELL"}
        return PositionBook(holdings=stored, open_buys=buys, open_sells=sells)

    async def outbox(self, portfolio_id: str) -> list[asyncpg.Record]:
        """The portfolio's orders in the outbox, oldest first."""
        async with postgres_errors(), self._pool.acquire() as conn:
            return list(
                await conn.fetch(
                    "SELECT * FROM order_outbox WHERE portfolio_id = $1 ORDER BY created_at, symbol", portfolio_id
                )
            )


def _before(instant: datetime, span: timedelta) -> datetime:
    """``instant − span``, or the earliest datetime when that is before year 1."""
    try:
        return instant - span
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)
