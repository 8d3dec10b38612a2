"""The query side's one translation of asyncpg's errors: domain persistence errors, no host or port leaked."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from query_side.postgres_errors import postgres_errors
from query_side.repository import PostgresReadStore
from services.errors import IntegrityError, OperationalError, PersistenceError, UnavailableError

TRANSLATIONS = [
    (asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"), IntegrityError),
    (ConnectionRefusedError(111, "Connect call failed ('10.20.30.40', 15432)"), OperationalError),
    (TimeoutError(), OperationalError),
    (asyncpg.exceptions.ConnectionFailureError("connection failure"), OperationalError),
    (
        asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another process"),
        OperationalError,
    ),
    (asyncpg.exceptions.InterfaceError("connection is closed"), OperationalError),
    (asyncpg.exceptions.UndefinedColumnError('column "weights" does not exist'), PersistenceError),
]


async def raise_inside(error: BaseException) -> None:
    async with postgres_errors():
        raise error


@pytest.mark.parametrize(("raised", "expected"), TRANSLATIONS, ids=lambda v: type(v).__name__)
def test_asyncpg_errors_become_the_domain_persistence_errors(raised: BaseException, expected: type[Exception]) -> None:
    with pytest.raises(PersistenceError) as caught:
        asyncio.run(raise_inside(raised))
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert "10.20.30.40" not in caught.value.message and "15432" not in caught.value.message
    assert isinstance(caught.value, UnavailableError) == (expected is OperationalError)


def test_a_refused_connection_is_unavailable_without_naming_host_or_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])

    async def scenario() -> None:
        pool = await asyncpg.create_pool(f"postgresql://stratopt@127.0.0.1:{port}/stratopt", min_size=0, max_size=1)
        try:
            store = PostgresReadStore(pool)
            with pytest.raises(OperationalError) as caught:
                await store.get_latest("p")
            assert "127.0.0.1" not in caught.value.message and str(port) not in caught.value.message
            with pytest.raises(OperationalError):
                await store.analytics_window("p", start=None, end=None)
        finally:
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_bad_query_argument_is_a_persistence_error_not_unavailable(pg_dsn: str) -> None:
    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            with pytest.raises(PersistenceError) as caught:
                await PostgresReadStore(pool).get_latest(42)  # type: ignore[arg-type]
            assert not isinstance(caught.value, UnavailableError)
        finally:
            await pool.close()

    asyncio.run(scenario())
