"""Retention rounds (``drop_chunks`` under an advisory lock) against the session's real TimescaleDB.

Each test works on its own hypertable in the ``retention_test`` schema (one-day chunks), never on stratopt's
tables, which the other tests share.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest

from stratopt_cli.retention import (
    RETENTION_LOCK_KEY,
    TABLE_ENVS,
    RetentionPolicy,
    RetentionSettings,
    run_forever,
    run_round,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")

AGES_DAYS = (100, 60, 40, 5, 0)
"""Ages of the rows inserted, one per daily chunk; a 30-day retention drops the first three."""


@pytest.fixture
def table(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"retention_test.events_{uuid.uuid4().hex[:8]}"
    db.execute("CREATE SCHEMA IF NOT EXISTS retention_test")
    db.execute(f'CREATE TABLE {name} ("timestamp" timestamptz NOT NULL, age_days int NOT NULL)')
    db.execute(f"SELECT create_hypertable('{name}', by_range('timestamp', INTERVAL '1 day'))")
    for age in AGES_DAYS:
        db.execute(f"INSERT INTO {name} VALUES (now() - make_interval(days => %s) - interval '1 hour', %s)", (age, age))
    yield name
    db.execute(f"DROP TABLE {name}")


def chunk_count(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute("SELECT count(*) FROM show_chunks(%s::regclass)", (table,)).fetchone()
    assert row is not None
    return int(row[0])


def ages(db: psycopg.Connection[Any], table: str) -> list[int]:
    return [row[0] for row in db.execute(f"SELECT age_days FROM {table} ORDER BY age_days DESC")]


def test_dry_run_lists_then_round_drops_old_chunks_and_keeps_new_rows(
    pg_dsn: str, db: psycopg.Connection[Any], table: str
) -> None:
    assert chunk_count(db, table) == len(AGES_DAYS)
    policy = [RetentionPolicy(table, 30)]

    async def rounds() -> tuple[Any, Any]:
        connection = await asyncpg.connect(pg_dsn)
        try:
            listed = await run_round(connection, policy, dry_run=True)
            assert chunk_count(db, table) == len(AGES_DAYS)  # a dry run drops nothing
            return listed, await run_round(connection, policy)
        finally:
            await connection.close()

    listed, dropped = asyncio.run(rounds())
    assert listed.ran and len(listed.chunks[table]) == 3
    assert dropped.ran and sorted(dropped.chunks[table]) == sorted(listed.chunks[table])
    assert chunk_count(db, table) == 2
    assert ages(db, table) == [5, 0]


def test_two_concurrent_runners_exactly_one_runs(pg_dsn: str, db: psycopg.Connection[Any], table: str) -> None:
    """Runner A takes the lock and blocks in drop_chunks (the table is locked); runner B meanwhile skips."""
    policy = [RetentionPolicy(table, 30)]

    async def race() -> tuple[Any, Any]:
        blocker, first, second = [await asyncpg.connect(pg_dsn) for _ in range(3)]
        try:
            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            a = asyncio.create_task(run_round(first, policy))
            # Wait until A holds the retention lock (it then waits on the table lock).
            for _ in range(500):
                held = await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = $1",
                    RETENTION_LOCK_KEY,
                )
                if held:
                    break
                await asyncio.sleep(0.01)
            assert held == 1
            b = await run_round(second, policy)
            assert not a.done()
            await blocking.rollback()
            return await a, b
        finally:
            for connection in (blocker, first, second):
                await connection.close()

    a, b = asyncio.run(race())
    assert a.ran and len(a.chunks[table]) == 3
    assert not b.ran and b.chunks == {}
    assert ages(db, table) == [5, 0]


def observed(read: Callable[[], T]) -> T | None:
    """``read()``, or None when it met a chunk a concurrent round was dropping; the polls then look again.

    TimescaleDB's chunk lookup races with ``drop_chunks`` ("no chunk found with ID").
    """
    try:
        return read()
    except psycopg.errors.InternalError_ as error:
        if "no chunk found" not in str(error):
            raise
        return None


def test_scheduled_task_runs_rounds_until_cancelled(pg_dsn: str, db: psycopg.Connection[Any], table: str) -> None:
    settings = RetentionSettings.from_days({table: 30}, interval_s=0.05)

    async def schedule() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            task = asyncio.create_task(run_forever(pool, settings))
            # The checks run in a thread: a blocking query on this loop would wait for a drop_chunks lock held by
            # the round, which cannot commit while the loop is blocked (a deadlock only the timeout ends).
            for _ in range(500):
                if await asyncio.to_thread(observed, lambda: chunk_count(db, table)) == 2:
                    break
                await asyncio.sleep(0.01)
            # A later row that ages out meanwhile is dropped by a later round.
            insert = f"INSERT INTO {table} VALUES (now() - interval '90 days', 90)"
            for _ in range(50):
                if await asyncio.to_thread(observed, lambda: db.execute(insert)) is not None:
                    break
            for _ in range(500):
                found = await asyncio.to_thread(observed, lambda: ages(db, table))
                if found is not None and 90 not in found:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await pool.close()

    asyncio.run(schedule())
    assert ages(db, table) == [5, 0]


def test_every_hypertable_of_the_migrations_has_a_retention_setting(db: psycopg.Connection[Any]) -> None:
    hypertables = {
        row[0]
        for row in db.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema = 'public'"
        ).fetchall()
    }
    assert hypertables == set(TABLE_ENVS)
    quotes = RetentionSettings.from_env({"STRATOPT_RETENTION_QUOTES_DAYS": "3"})
    assert quotes.policies == (RetentionPolicy("quotes", 3.0),)


def test_settings_from_environment() -> None:
    assert not RetentionSettings.from_env({}).enabled
    settings = RetentionSettings.from_env(
        {
            "STRATOPT_RETENTION_EVENTS_DAYS": "90",
            "STRATOPT_RETENTION_MARKET_DATA_DAYS": "0",
            "STRATOPT_RETENTION_REBALANCE_EVENTS_DAYS": "",
            "STRATOPT_RETENTION_INTERVAL_S": "600",
        }
    )
    assert settings.policies == (RetentionPolicy("portfolio_optimized", 90.0),)
    assert settings.interval_s == 600.0
    assert RetentionSettings.from_env({}).interval_s == 3600.0
    with pytest.raises(ValueError, match="STRATOPT_RETENTION_MARKET_DATA_DAYS"):
        RetentionSettings.from_env({"STRATOPT_RETENTION_MARKET_DATA_DAYS": "ten"})
    with pytest.raises(ValueError, match=">= 0"):
        RetentionSettings.from_env({"STRATOPT_RETENTION_EVENTS_DAYS": "-1"})
    with pytest.raises(ValueError, match="> 0"):
        RetentionSettings.from_env({"STRATOPT_RETENTION_INTERVAL_S": "0"})


def test_cli_dry_run_lists_the_due_chunks(pg_dsn: str, db: psycopg.Connection[Any]) -> None:
    from typer.testing import CliRunner

    from stratopt_cli.main import app

    runner = CliRunner()
    assert "no retention configured" in runner.invoke(app, ["retention"], env={"STRATOPT_DATABASE_URL": pg_dsn}).output
    before = chunk_count(db, "market_data")
    row = db.execute("SELECT count(*) FROM show_chunks('market_data', older_than => now() - interval '1 day')")
    due = row.fetchone()
    result = runner.invoke(
        app, ["retention", "--market-data-days", "1", "--dry-run"], env={"STRATOPT_DATABASE_URL": pg_dsn}
    )
    assert result.exit_code == 0, result.output
    assert due is not None and f"market_data: {due[0]} chunk(s) due" in result.output
    assert len(result.output.splitlines()) == 1 + due[0]  # one line per chunk
    assert chunk_count(db, "market_data") == before  # a dry run drops nothing


def test_server_runs_retention_while_serving_and_stops_it(pg_dsn: str, db: psycopg.Connection[Any], table: str) -> None:
    """A query-side server (no solver workers) with a retention on the test table drops its old chunks."""
    from stratopt_cli.server import ServerThread, StratoptServer

    settings = RetentionSettings.from_days({table: 30}, interval_s=3600)
    thread = ServerThread(StratoptServer(pg_dsn, address="127.0.0.1:0", sides=("query",), retention=settings))
    thread.start()
    try:
        for _ in range(1000):
            if chunk_count(db, table) == 2:
                break
            time.sleep(0.01)
        assert ages(db, table) == [5, 0]
        task = thread.server._retention_task
        assert task is not None and not task.done()  # waiting for the next round
    finally:
        thread.stop()
    assert thread.server._retention_task is None
