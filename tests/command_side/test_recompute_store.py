"""The recompute outbox on the test database: transactional enqueue, debounce, SKIP LOCKED claims, idempotent retry.

No recompute worker runs on this database while these tests do (the servers of ``test_recompute.py`` are gone by
then; the session's shared server runs none): the jobs here are claimed by the tests alone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest

from command_side import optimization_service
from command_side.configuration import OptimizationConfiguration, RecomputePolicy, Strategy
from command_side.optimization_store import Bar
from command_side.recompute import RecomputeWorker
from command_side.recompute_store import _CLAIM, INGEST_VERSION_LOCK, PostgresRecomputeStore, job_request_id
from command_side.repository import PostgresOptimizationStore
from command_side.workers import SolverPool
from services.errors import DeadlineExceededError

pytestmark = pytest.mark.integration

DAY0 = datetime(2032, 1, 1, tzinfo=UTC)


def history(symbols: list[str], days: range) -> list[Bar]:
    rng = np.random.default_rng(7)
    prices = 100.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.01, (max(days) + 1, len(symbols))), axis=0))
    return [(s, DAY0 + timedelta(days=d), float(prices[d, j]), None) for d in days for j, s in enumerate(symbols)]


def configuration(portfolio_id: str, symbols: list[str], **policy: Any) -> OptimizationConfiguration:
    return OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=tuple(Strategy(symbol=s) for s in symbols),
        objective="OBJECTIVE_MIN_VOLATILITY",
        method="OPTIMIZATION_METHOD_MEAN_VARIANCE",
        enabled=True,
        lookback_periods=30,
        recompute=RecomputePolicy(**policy),
    )


def with_pool(pg_dsn: str, body: Callable[[asyncpg.Pool[Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=2, max_size=6)
        try:
            await body(pool)
        finally:
            await pool.close()

    asyncio.run(main())


def test_an_ingest_that_rolls_back_enqueues_nothing(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresOptimizationStore(pool)
        tag = uuid.uuid4().hex[:8]
        portfolio, symbol = f"outbox-{tag}", f"RS1{tag}"
        await store.upsert_configuration(configuration(portfolio, [symbol], on_market_data=True))
        with pytest.raises(DeadlineExceededError):  # rolled back right before its commit
            await store.ingest_bars(history([symbol], range(5)), commit_by=time.monotonic() - 1)
        assert await pool.fetchval("SELECT count(*) FROM recompute_jobs WHERE portfolio_id = $1", portfolio) == 0
        assert await pool.fetchval("SELECT count(*) FROM market_data WHERE symbol = $1", symbol) == 0
        await store.ingest_bars(history([symbol], range(5)))
        assert await pool.fetchval("SELECT count(*) FROM recompute_jobs WHERE portfolio_id = $1", portfolio) == 1

    with_pool(pg_dsn, body)


def test_only_enabled_latest_versions_on_market_data_are_enqueued(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresOptimizationStore(pool)
        tag = uuid.uuid4().hex[:8]
        symbol, market = f"RS2{tag}", f"RS2{tag}MKT"
        on, off, disabled, moved, capm = (f"outbox-{tag}-{n}" for n in ("on", "off", "disabled", "moved", "capm"))
        await store.upsert_configuration(configuration(on, [symbol], on_market_data=True))
        await store.upsert_configuration(configuration(off, [symbol], on_market_data=False))
        await store.upsert_configuration(
            OptimizationConfiguration(
                **{**_fields(configuration(disabled, [symbol], on_market_data=True)), "enabled": False}
            )
        )
        await store.upsert_configuration(configuration(moved, [symbol], on_market_data=True))
        await store.upsert_configuration(configuration(moved, [f"RS2{tag}OTHER"], on_market_data=True))  # v2
        await store.upsert_configuration(
            OptimizationConfiguration(
                **{**_fields(configuration(capm, [f"RS2{tag}X"], on_market_data=True)), "market_symbol": market}
            )
        )
        await store.ingest_bars(history([symbol, market], range(3)))
        rows = await pool.fetch(
            "SELECT portfolio_id FROM recompute_jobs WHERE portfolio_id LIKE $1 ORDER BY portfolio_id",
            f"outbox-{tag}-%",
        )
        assert [r["portfolio_id"] for r in rows] == sorted([on, capm])

    with_pool(pg_dsn, body)


def _fields(config: OptimizationConfiguration) -> dict[str, Any]:
    return {name: getattr(config, name) for name in OptimizationConfiguration.__slots__}


def test_ingests_in_the_debounce_window_coalesce_until_the_cap(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresOptimizationStore(pool)
        tag = uuid.uuid4().hex[:8]
        portfolio, symbol = f"outbox-{tag}", f"RS3{tag}"
        await store.upsert_configuration(configuration(portfolio, [symbol], on_market_data=True, debounce_seconds=60))
        for day in range(4):
            await store.ingest_bars(history([symbol], range(day, day + 1)))
        rows = await pool.fetch(
            "SELECT data_version, not_before, not_after, created_at FROM recompute_jobs WHERE portfolio_id = $1",
            portfolio,
        )
        [job] = rows  # one job, at the last ingest's data version
        last = await pool.fetchval("SELECT last_value FROM market_data_versions")
        assert job["data_version"] == last
        assert timedelta(seconds=59) < job["not_before"] - job["created_at"] < job["not_after"] - job["created_at"]
        assert job["not_after"] - job["created_at"] == pytest.approx(timedelta(seconds=600), abs=timedelta(seconds=1))
        # The cap: however long bars keep coming, the job runs by not_after.
        await pool.execute(
            "UPDATE recompute_jobs SET not_after = now() + interval '1 second' WHERE portfolio_id = $1", portfolio
        )
        await store.ingest_bars(history([symbol], range(5, 6)))
        capped = await pool.fetchrow(
            "SELECT not_before, not_after FROM recompute_jobs WHERE portfolio_id = $1", portfolio
        )
        assert capped["not_before"] == capped["not_after"]

    with_pool(pg_dsn, body)


def test_jobs_another_replica_is_claiming_are_skipped_not_waited_for(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresRecomputeStore(pool)
        tag = uuid.uuid4().hex[:8]
        busy, free = f"outbox-{tag}-busy", f"outbox-{tag}-free"
        for portfolio in (busy, free):
            await pool.execute(
                """INSERT INTO recompute_jobs (portfolio_id, trigger, data_version, not_before, not_after)
                   VALUES ($1, 'MARKET_DATA', 1, now(), now())""",
                portfolio,
            )
        async with pool.acquire() as other, other.transaction():
            # Another replica's claim holds the row of `busy` until it commits.
            await other.execute("SELECT 1 FROM recompute_jobs WHERE portfolio_id = $1 FOR UPDATE", busy)
            claimed = await asyncio.wait_for(store.claim("me", limit=1000, lease_s=60), timeout=3)
            mine = {j.portfolio_id for j in claimed}
            assert free in mine and busy not in mine
        await pool.execute("DELETE FROM recompute_jobs WHERE portfolio_id = ANY($1::text[])", [busy, free])

    with_pool(pg_dsn, body)


def test_a_schedule_slot_is_enqueued_once_across_replicas(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresOptimizationStore(pool)
        tag = uuid.uuid4().hex[:8]
        portfolio = f"outbox-{tag}"
        await store.upsert_configuration(configuration(portfolio, [f"RS5{tag}"], schedule_interval_seconds=3600))
        replicas = [PostgresRecomputeStore(pool) for _ in range(3)]
        await asyncio.gather(*(r.enqueue_scheduled() for r in replicas))
        await replicas[0].enqueue_scheduled()
        rows = await pool.fetch("SELECT trigger, data_version FROM recompute_jobs WHERE portfolio_id = $1", portfolio)
        assert [(r["trigger"], r["data_version"]) for r in rows] == [("SCHEDULE", int(time.time() // 3600))]
        await pool.execute("DELETE FROM recompute_jobs WHERE portfolio_id = $1", portfolio)

    with_pool(pg_dsn, body)


def test_a_job_run_again_after_a_lost_lease_replays_its_stored_run(pg_dsn: str) -> None:
    """The idempotency key: a replica that crashed after storing the run, before marking the job DONE."""

    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresOptimizationStore(pool)
        tag = uuid.uuid4().hex[:8]
        portfolio, symbols = f"outbox-{tag}", [f"RS6{tag}A", f"RS6{tag}B"]
        await store.ingest_bars(history(symbols, range(40)))
        await store.upsert_configuration(configuration(portfolio, symbols, on_market_data=True, debounce_seconds=0))
        await store.ingest_bars(history(symbols, range(40, 41)))
        solver = SolverPool(1)
        try:
            worker = RecomputeWorker(PostgresRecomputeStore(pool), optimization_service(store, solver), retry_s=0)
            assert "DONE" in await worker.tick()
            # The replica "crashed" before its DONE committed: the job is RUNNING with an expired lease.
            await pool.execute(
                """UPDATE recompute_jobs SET status = 'RUNNING', lease_until = now() - interval '1 second'
                   WHERE portfolio_id = $1""",
                portfolio,
            )
            other = RecomputeWorker(PostgresRecomputeStore(pool), optimization_service(store, solver), retry_s=0)
            assert "DONE" in await other.tick()
        finally:
            solver.shutdown()
        job = await pool.fetchrow(
            "SELECT trigger, data_version, status, attempts, claimed_by FROM recompute_jobs WHERE portfolio_id = $1",
            portfolio,
        )
        assert (job["status"], job["attempts"], job["claimed_by"]) == ("DONE", 2, other.worker_id)
        runs = await pool.fetch("SELECT request_id FROM portfolio_optimized WHERE portfolio_id = $1", portfolio)
        assert [r["request_id"] for r in runs] == [job_request_id(job["trigger"], job["data_version"], portfolio)]

    with_pool(pg_dsn, body)


_DUE = """INSERT INTO recompute_jobs (portfolio_id, trigger, data_version, not_before, not_after)
VALUES ($1, $2, 7, clock_timestamp() - interval '1 s', clock_timestamp())"""


async def _running(pool: asyncpg.Pool[Any], portfolios: list[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT portfolio_id, count(*) AS n FROM recompute_jobs WHERE status = 'RUNNING' AND portfolio_id = ANY($1)"
        " GROUP BY portfolio_id",
        portfolios,
    )
    return {r["portfolio_id"]: int(r["n"]) for r in rows}


def test_a_claim_takes_one_job_per_portfolio_and_none_of_a_portfolio_running(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresRecomputeStore(pool)
        tag = uuid.uuid4().hex[:8]
        p, q = f"outbox-{tag}-p", f"outbox-{tag}-q"
        for trigger in ("MARKET_DATA", "DRIFT", "SCHEDULE"):
            await pool.execute(_DUE, p, trigger)
        await pool.execute(_DUE, q, "MARKET_DATA")
        claimed = await store.claim("replica-a", limit=1000, lease_s=60)
        assert sorted(j.portfolio_id for j in claimed if tag in j.portfolio_id) == [p, q]
        again = await store.claim("replica-b", limit=1000, lease_s=60)
        assert not [j for j in again if tag in j.portfolio_id]  # p and q each have a running job
        assert await _running(pool, [p, q]) == {p: 1, q: 1}
        await pool.execute("DELETE FROM recompute_jobs WHERE portfolio_id = ANY($1::text[])", [p, q])

    with_pool(pg_dsn, body)


def test_two_replicas_claiming_one_portfolio_at_once_run_it_once(pg_dsn: str) -> None:
    """Replica A's claim is not committed when B claims: B's statement cannot see it, and the index refuses B."""

    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresRecomputeStore(pool)
        portfolio = f"outbox-{uuid.uuid4().hex[:8]}-race"
        for trigger in ("MARKET_DATA", "DRIFT"):
            await pool.execute(_DUE, portfolio, trigger)
        async with pool.acquire() as a:
            transaction = a.transaction()
            await transaction.start()
            first = await a.fetch(_CLAIM, "replica-a", 1000, 60.0)
            assert portfolio in [r["portfolio_id"] for r in first]
            other = asyncio.create_task(store.claim("replica-b", limit=1000, lease_s=60))
            await asyncio.sleep(0.3)
            await transaction.commit()
            second = await other
        assert not [j for j in second if j.portfolio_id == portfolio]
        assert await _running(pool, [portfolio]) == {portfolio: 1}
        await pool.execute("DELETE FROM recompute_jobs WHERE portfolio_id = $1", portfolio)

    with_pool(pg_dsn, body)


def test_the_data_version_is_read_only_once_the_ingest_that_took_it_commits(pg_dsn: str) -> None:
    async def body(pool: asyncpg.Pool[Any]) -> None:
        store = PostgresRecomputeStore(pool)
        async with pool.acquire() as ingest:
            transaction = ingest.transaction()
            await transaction.start()
            await ingest.execute(INGEST_VERSION_LOCK)
            taken = int(await ingest.fetchval("SELECT nextval('market_data_versions')"))  # its bars not committed
            read = asyncio.create_task(store.data_version())
            await asyncio.sleep(0.3)
            assert not read.done()  # else it says `taken` before the bars of `taken` are visible to a drift check
            await transaction.commit()
            assert await read == taken
        assert await store.data_version() == taken  # no ingest in flight: at once

    with_pool(pg_dsn, body)
