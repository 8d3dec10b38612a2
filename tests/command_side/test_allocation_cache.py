"""The AllocationCache port: one contract, run against the in-memory cache and against PostgreSQL + TimescaleDB.

``AllocationCacheContract`` holds the assertions; ``TestInMemoryAllocationCache`` (a settable clock) and
``TestPostgresAllocationCache`` (the database clock: time passes by sleeping) give it a backend each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from command_side.allocation_cache import AllocationCache, InMemoryAllocationCache
from command_side.allocations_repository import PostgresAllocationCache
from command_side.trading_model import AllocatedLine, Allocation, AllocationMetrics, SoldInFull
from services.trading import (
    AllocationRequest,
    AllocationStatus,
    AllocationTarget,
    BandRelaxation,
    Holding,
)

HOUR = timedelta(hours=1)
SHORT_TTL = timedelta(seconds=1)
"""Lifetime of the entries that a test lets expire (the PostgreSQL backend waits it out)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def line(symbol: str, price: float, shares: int) -> AllocatedLine:
    return AllocatedLine(
        symbol=symbol,
        price=price,
        current_shares=0,
        buy_shares=shares,
        sell_shares=0,
        final_shares=shares,
        trade_cost=0.0,
        final_value=price * shares,
        target_weight=0.5,
        actual_weight=0.475,
        weight_deviation=-0.025,
    )


def allocation(cache_key: str, budget_used: float = 9_500.0) -> Allocation:
    return Allocation(
        cache_key=cache_key,
        lines=(line("AAPL", 190.0, 25), line("XOM", 95.0, 50)),
        sold_in_full=(SoldInFull(symbol="GE", shares=10, price=150.0, proceeds=1_500.0, trade_cost=0.0),),
        metrics=AllocationMetrics(
            budget=10_000.0,
            budget_used=budget_used,
            unused_budget=10_000.0 - budget_used,
            unused_fraction=(10_000.0 - budget_used) / 10_000.0,
            fees_total=0.0,
            solve_time_ms=1.5,
            solver_status=AllocationStatus.OPTIMAL,
            solver="HIGHS",
            fallback_used=False,
            relaxation=BandRelaxation.NONE,
            relaxation_detail="",
        ),
    )


def problem() -> AllocationRequest:
    """A normalised problem (targets and holdings by symbol)."""
    return AllocationRequest(
        targets=(
            AllocationTarget(symbol="AAPL", target_weight=0.5, price=190.0),
            AllocationTarget(symbol="XOM", target_weight=0.5, price=95.0),
        ),
        holdings=(Holding("GE", 10, 150.0),),
        extra_cash=8_500.0,
    )


class Clock:
    """A settable clock for the in-memory cache."""

    def __init__(self) -> None:
        self.now = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


Scenario = Callable[[AllocationCache], Awaitable[None]]


class AllocationCacheContract:
    """What AllocationService relies on of any AllocationCache."""

    @asynccontextmanager
    async def open_cache(self) -> AsyncIterator[AllocationCache]:
        raise NotImplementedError
        yield

    def now(self) -> datetime:
        """The cache's clock now."""
        raise NotImplementedError

    async def elapse(self, cache: AllocationCache, duration: timedelta) -> None:
        """Let ``duration`` pass on the cache's clock."""
        raise NotImplementedError

    async def recorded(self, cache: AllocationCache, portfolio_id: str) -> list[tuple[float, dict[str, Any]]]:
        """(total_trade_value, payload) of the portfolio's SHARES_ALLOCATED events, oldest first."""
        raise NotImplementedError

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            async with self.open_cache() as cache:
                await scenario(cache)

        asyncio.run(main())

    def test_a_saved_allocation_is_found_as_cached_until_its_expiry(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            key, portfolio = unique("key"), unique("p")
            before = self.now()
            saved = await cache.save(allocation(key), problem=problem(), portfolio_id=portfolio, ttl=HOUR)
            expires_at = saved.expires_at
            assert expires_at is not None
            assert before + HOUR <= expires_at <= self.now() + HOUR
            assert not saved.cached
            hit = await cache.find(key)
            assert hit is not None
            assert hit.portfolio_id == portfolio
            assert before <= hit.created_at <= self.now()
            assert hit.allocation.cached
            assert hit.allocation.expires_at == saved.expires_at
            assert hit.allocation == replace(saved, cached=True)  # every field through the stored JSON

        self.run(scenario)

    def test_an_unknown_key_is_a_miss(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            assert await cache.find(unique("key")) is None

        self.run(scenario)

    def test_an_entry_expires_after_its_ttl(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            short, long = unique("short"), unique("long")
            await cache.save(allocation(short), problem=problem(), portfolio_id="", ttl=SHORT_TTL)
            await cache.save(allocation(long), problem=problem(), portfolio_id="", ttl=HOUR)
            assert await cache.find(short) is not None
            await self.elapse(cache, SHORT_TTL * 1.5)
            assert await cache.find(short) is None
            assert await cache.find(long) is not None

        self.run(scenario)

    def test_the_next_write_deletes_expired_entries(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            expired, fresh = unique("expired"), unique("fresh")
            await cache.save(allocation(expired), problem=problem(), portfolio_id="", ttl=SHORT_TTL)
            await self.elapse(cache, SHORT_TTL * 1.5)
            await cache.save(allocation(fresh), problem=problem(), portfolio_id="", ttl=HOUR)
            assert await cache.clear(expired) == 0  # already gone
            assert await cache.clear(fresh) == 1

        self.run(scenario)

    def test_a_later_computation_of_a_key_replaces_the_entry(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            key = unique("key")
            await cache.save(allocation(key, budget_used=9_000.0), problem=problem(), portfolio_id="a", ttl=HOUR)
            await cache.save(allocation(key, budget_used=9_900.0), problem=problem(), portfolio_id="b", ttl=HOUR)
            hit = await cache.find(key)
            assert hit is not None
            assert (hit.portfolio_id, hit.allocation.metrics.budget_used) == ("b", 9_900.0)

        self.run(scenario)

    def test_without_ttl_only_the_portfolio_event_is_written(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            key, portfolio = unique("key"), unique("p")
            returned = await cache.save(allocation(key), problem=problem(), portfolio_id=portfolio, ttl=None)
            assert returned.expires_at is None
            assert await cache.find(key) is None
            [(value, payload)] = await self.recorded(cache, portfolio)
            assert value == 9_500.0
            assert payload["cache_key"] == key
            assert payload["cached"] is False
            assert payload["final_shares"] == {"AAPL": 25, "XOM": 50}
            assert payload["sold_in_full"] == {"GE": 10}
            assert payload["metrics"]["budget_used"] == 9_500.0
            assert payload["metrics"]["fallback_used"] is False  # every field, defaults included

        self.run(scenario)

    def test_without_ttl_or_portfolio_nothing_is_written(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            key = unique("key")
            returned = await cache.save(allocation(key), problem=problem(), portfolio_id="", ttl=None)
            assert returned.expires_at is None
            assert await cache.find(key) is None
            assert await cache.clear(key) == 0

        self.run(scenario)

    def test_each_answer_from_the_cache_is_recorded_for_its_portfolio(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            key, portfolio, other = unique("key"), unique("p"), unique("p")
            await cache.save(allocation(key), problem=problem(), portfolio_id=portfolio, ttl=HOUR)
            hit = await cache.find(key)
            assert hit is not None
            await cache.record(hit.allocation, portfolio_id=portfolio)
            await cache.record(hit.allocation, portfolio_id=other)
            assert [payload["cached"] for _, payload in await self.recorded(cache, portfolio)] == [False, True]
            assert [payload["cached"] for _, payload in await self.recorded(cache, other)] == [True]

        self.run(scenario)

    def test_clear_one_entry_then_all(self) -> None:
        async def scenario(cache: AllocationCache) -> None:
            keys = [unique("key") for _ in range(3)]
            for key in keys:
                await cache.save(allocation(key), problem=problem(), portfolio_id="", ttl=HOUR)
            assert await cache.clear(keys[0]) == 1
            assert await cache.clear(keys[0]) == 0
            assert await cache.find(keys[0]) is None
            assert await cache.clear("") >= 2
            assert [await cache.find(key) for key in keys] == [None, None, None]

        self.run(scenario)


class TestInMemoryAllocationCache(AllocationCacheContract):
    @asynccontextmanager
    async def open_cache(self) -> AsyncIterator[AllocationCache]:
        self.clock = Clock()
        yield InMemoryAllocationCache(clock=self.clock)

    def now(self) -> datetime:
        return self.clock.now

    async def elapse(self, cache: AllocationCache, duration: timedelta) -> None:
        self.clock.now += duration

    async def recorded(self, cache: AllocationCache, portfolio_id: str) -> list[tuple[float, dict[str, Any]]]:
        assert isinstance(cache, InMemoryAllocationCache)
        return [(event.total_trade_value, event.payload) for event in cache.events(portfolio_id)]


@pytest.mark.integration
class TestPostgresAllocationCache(AllocationCacheContract):
    @pytest.fixture(autouse=True)
    def _database(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    @asynccontextmanager
    async def open_cache(self) -> AsyncIterator[AllocationCache]:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        self.pool = pool
        try:
            yield PostgresAllocationCache(pool)
        finally:
            await pool.close()

    def now(self) -> datetime:
        return datetime.now(UTC)  # the database runs on this machine: its clock is this one

    async def elapse(self, cache: AllocationCache, duration: timedelta) -> None:
        await asyncio.sleep(duration.total_seconds())

    async def recorded(self, cache: AllocationCache, portfolio_id: str) -> list[tuple[float, dict[str, Any]]]:
        rows = await self.pool.fetch(
            """SELECT total_trade_value, payload FROM rebalance_events
               WHERE portfolio_id = $1 AND event_type = 'SHARES_ALLOCATED' AND recommendation_id IS NULL
               ORDER BY "timestamp", event_id""",
            portfolio_id,
        )
        return [(row["total_trade_value"], json.loads(row["payload"])) for row in rows]
