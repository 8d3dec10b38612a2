"""``stratopt serve --no-migrate`` / ``STRATOPT_MIGRATE=false``: the serving pods leave the schema to the Job.

A real ``stratopt serve`` process on an empty database of the session's PostgreSQL + TimescaleDB cluster: with
migrations off it serves (health SERVING) and the database still has no tables; the default still migrates.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.helm import smoke_client
from tests.helm.measure_rss import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database(pg_dsn: str) -> Iterator[str]:
    """URL of a new, empty database in the test cluster (dropped afterwards)."""
    name = f"nomigrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(pg_dsn)._replace(path=f"/{name}"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def serve_query_side(url: str, *flags: str, env: dict[str, str] | None = None) -> None:
    """Run ``stratopt serve --side query`` until it is SERVING, then stop it."""
    target = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stratopt_cli.main", "serve", "--side", "query", "--address", target, *flags],
        env={**os.environ, "STRATOPT_DATABASE_URL": url, **(env or {})},
    )
    try:
        smoke_client.wait_serving(target, timeout_s=180, process=proc)
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.parametrize(
    ("flags", "env"), [(("--no-migrate",), {}), ((), {"STRATOPT_MIGRATE": "false"})], ids=["flag", "env"]
)
def test_serve_without_migrations_leaves_the_schema_alone(
    empty_database: str, flags: tuple[str, ...], env: dict[str, str]
) -> None:
    serve_query_side(empty_database, *flags, env=env)
    assert tables(empty_database) == set()


def test_serve_migrates_by_default(empty_database: str) -> None:
    serve_query_side(empty_database)
    assert {"market_data", "portfolio_optimized", "_yoyo_migration"} <= tables(empty_database)
