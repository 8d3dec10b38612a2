"""The allocation cache and its events over PostgreSQL + TimescaleDB (asyncpg): the ``AllocationCache`` backend.

Tables (``migrations/0006_trading.sql``): ``share_allocations`` holds AllocateShares results keyed by the hash of
their normalised input (``services.trading.allocation_cache_key``), each with the normalised request and the
allocation as first returned (jsonb, ``command_side.trading_records.ALLOCATION_REQUEST`` and ``ALLOCATION``,
documented in ``docs/storage_schema.md``). A row past ``expires_at`` is a miss; expired rows
are deleted by every write. An allocation made for a portfolio is recorded as a ``SHARES_ALLOCATED`` row of the
``rebalance_events`` hypertable in the same transaction as its cache row, under the portfolio's rebalancing lock
after its overdue expiries, with a NOTIFY (``command_side.rebalancing_repository``: a portfolio's events commit in
time order, for WatchEvents). Times come from the database clock (``clock_timestamp()``). asyncpg's errors are
translated by ``command_side.postgres_errors``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from command_side.allocation_cache import EVENT_STATUS, EVENT_TYPE, AllocationCache, CachedAllocation, event_payload
from command_side.metrics import event_written
from command_side.postgres_errors import Connection, postgres_errors
from command_side.rebalancing_repository import expire_overdue_locked, lock_portfolio, notify_event
from command_side.trading_model import Allocation
from command_side.trading_records import allocation_from_json, allocation_json, allocation_request_json
from services.trading import AllocationRequest


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class PostgresAllocationCache(AllocationCache):
    """:class:`~command_side.allocation_cache.AllocationCache` over PostgreSQL + TimescaleDB.

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool to the migrated database.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def find(self, cache_key: str) -> CachedAllocation | None:
        """The unexpired entry of ``cache_key``, or None (absent or expired).

        Raises
        ------
        OperationalError
            When the database cannot be reached.
        """
        async with postgres_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT portfolio_id, response, created_at, expires_at FROM share_allocations
                   WHERE cache_key = $1 AND expires_at > clock_timestamp()""",
                cache_key,
            )
        if row is None:
            return None
        stored = row["response"]
        allocation = allocation_from_json(
            json.loads(stored) if isinstance(stored, str) else stored, expires_at=row["expires_at"]
        )
        return CachedAllocation(allocation, row["portfolio_id"], row["created_at"])

    async def save(
        self,
        allocation: Allocation,
        *,
        problem: AllocationRequest,
        portfolio_id: str,
        ttl: timedelta | None,
    ) -> Allocation:
        """Store a computed allocation in the cache (when ``ttl`` is given) and its event (for a portfolio).

        One transaction: the expired rows are deleted, the entry is upserted (a later computation of the same
        key replaces an earlier one) and, when ``portfolio_id`` is set, the ``SHARES_ALLOCATED`` event is
        inserted. Nothing is written when there is neither a ``ttl`` nor a ``portfolio_id``.

        Parameters
        ----------
        allocation : Allocation
            The allocation with its ``cache_key`` (``cached`` false).
        problem : services.trading.AllocationRequest
            The normalised problem, stored as jsonb (``trading_records.ALLOCATION_REQUEST``).
        portfolio_id : str
            Portfolio to record the event for; '' records none.
        ttl : datetime.timedelta or None
            Lifetime of the entry from now (database clock); None stores no entry.

        Returns
        -------
        Allocation
            ``allocation``, with ``expires_at`` set when it was cached.

        Raises
        ------
        OperationalError
            When the database cannot be reached.
        """
        if ttl is None and not portfolio_id:
            return allocation
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            now = await _event_clock(conn, portfolio_id)
            if ttl is not None:
                allocation = replace(allocation, expires_at=now + ttl)
                await conn.execute("DELETE FROM share_allocations WHERE expires_at <= $1", now)
                await conn.execute(
                    """INSERT INTO share_allocations (cache_key, portfolio_id, request, response, created_at,
                           expires_at)
                       VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6)
                       ON CONFLICT (cache_key) DO UPDATE SET portfolio_id = EXCLUDED.portfolio_id,
                           request = EXCLUDED.request, response = EXCLUDED.response,
                           created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at""",
                    allocation.cache_key, portfolio_id,
                    _json(allocation_request_json(problem)), _json(allocation_json(allocation)), now, now + ttl,
                )  # fmt: skip
            if portfolio_id:
                await _insert_event(conn, now, portfolio_id, allocation)
        return allocation

    async def record(self, allocation: Allocation, *, portfolio_id: str) -> None:
        """Record the ``SHARES_ALLOCATED`` event of an allocation answered from the cache for a portfolio.

        Raises
        ------
        OperationalError
            When the database cannot be reached.
        """
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            now = await _event_clock(conn, portfolio_id)
            await _insert_event(conn, now, portfolio_id, allocation)

    async def clear(self, cache_key: str) -> int:
        """Delete the entry of ``cache_key`` (expired or not), or every entry when it is ''; the rows deleted.

        Raises
        ------
        OperationalError
            When the database cannot be reached.
        """
        async with postgres_errors(), self._pool.acquire() as conn:
            if cache_key:
                status = await conn.execute("DELETE FROM share_allocations WHERE cache_key = $1", cache_key)
            else:
                status = await conn.execute("DELETE FROM share_allocations")
        return int(status.split()[-1])


async def _event_clock(conn: Connection, portfolio_id: str) -> datetime:
    """The database clock; for a portfolio's event, read under its rebalancing lock after its overdue expiries."""
    if not portfolio_id:
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        return now
    now = await lock_portfolio(conn, portfolio_id)
    await expire_overdue_locked(conn, portfolio_id, now)
    return now


async def _insert_event(conn: Connection, now: datetime, portfolio_id: str, allocation: Allocation) -> None:
    """Insert the ``SHARES_ALLOCATED`` event of ``allocation`` (total_trade_value = the budget used).

    The payload (jsonb) is :func:`command_side.allocation_cache.event_payload`.
    """
    payload = event_payload(allocation)
    event_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO rebalance_events (event_id, "timestamp", portfolio_id, recommendation_id, event_type, status,
               actor, total_trade_value, payload)
           VALUES ($1, $2, $3, NULL, $4, $5, '', $6, $7::jsonb)""",
        event_id, now, portfolio_id, EVENT_TYPE, EVENT_STATUS, allocation.metrics.budget_used, _json(payload),
    )  # fmt: skip
    await notify_event(conn, portfolio_id, event_id)
    event_written("rebalance_events", EVENT_TYPE)
