"""The command side's one translation of asyncpg's errors: domain persistence errors, no host or port leaked."""

from __future__ import annotations

import asyncio
import socket
import uuid

import asyncpg
import grpc
import pytest

from command_side.allocations_repository import PostgresAllocationCache
from command_side.postgres_errors import operational_errors, postgres_errors
from command_side.repository import PostgresOptimizationStore
from services.errors import IntegrityError, OperationalError, PersistenceError, UnavailableError
from stratopt.rpc_errors import status_code

SECRET_HOST = "10.20.30.40"
SECRET_PORT = "15432"

TRANSLATIONS = [
    (asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"), IntegrityError),
    (ConnectionRefusedError(111, f"Connect call failed ('{SECRET_HOST}', {SECRET_PORT})"), OperationalError),
    (ConnectionResetError(104, "Connection reset by peer"), OperationalError),
    (TimeoutError(), OperationalError),
    (
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        OperationalError,
    ),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), OperationalError),
    (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), OperationalError),
    (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), OperationalError),
    (asyncpg.exceptions.InterfaceError("pool is closing"), OperationalError),
    (asyncpg.exceptions.CheckViolationError("new row violates check constraint"), PersistenceError),
    (asyncpg.exceptions.UndefinedTableError('relation "market_data" does not exist'), PersistenceError),
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
    assert SECRET_HOST not in caught.value.message and SECRET_PORT not in caught.value.message
    if expected is OperationalError:
        assert isinstance(caught.value, UnavailableError)
        assert status_code(caught.value) is grpc.StatusCode.UNAVAILABLE
    if expected is IntegrityError:
        assert status_code(caught.value) is grpc.StatusCode.ALREADY_EXISTS


def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError):
        asyncio.run(raise_inside(KeyError("not a database error")))


def test_the_connection_only_translation_lets_integrity_errors_through() -> None:
    async def duplicate() -> None:
        async with operational_errors():
            raise asyncpg.exceptions.UniqueViolationError("duplicate key")

    async def refused() -> None:
        async with operational_errors():
            raise ConnectionRefusedError(111, "refused")

    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        asyncio.run(duplicate())
    with pytest.raises(OperationalError):
        asyncio.run(refused())


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_unavailable_without_naming_host_or_port() -> None:
    port = unused_port()

    async def scenario() -> None:
        pool = await asyncpg.create_pool(f"postgresql://stratopt@127.0.0.1:{port}/stratopt", min_size=0, max_size=1)
        try:
            with pytest.raises(OperationalError) as caught:
                await PostgresOptimizationStore(pool).find_result("r")
            assert "127.0.0.1" not in caught.value.message and str(port) not in caught.value.message
            with pytest.raises(OperationalError):
                await PostgresAllocationCache(pool).find("key")
        finally:
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.integration
def test_stores_on_a_closed_pool_are_unavailable(pg_dsn: str) -> None:
    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        await pool.close()
        with pytest.raises(OperationalError):
            await PostgresOptimizationStore(pool).get_configuration("p")
        with pytest.raises(OperationalError):
            await PostgresAllocationCache(pool).clear("")

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_bad_query_argument_is_a_persistence_error_not_unavailable(pg_dsn: str) -> None:
    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            with pytest.raises(PersistenceError) as caught:
                await PostgresOptimizationStore(pool).find_result(uuid.uuid4())  # type: ignore[arg-type]
            assert not isinstance(caught.value, UnavailableError)
        finally:
            await pool.close()

    asyncio.run(scenario())
