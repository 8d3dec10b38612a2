"""The lifecycle's parts on their own: back-off, timeouts and their settings, error mapping, the health monitor.

The timeouts and the health monitor run against the session's real PostgreSQL; the solver pool is a real one
whose worker is killed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import socket
import time
from collections.abc import Iterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from command_side import SolverPool
from command_side import postgres_errors as command_errors
from query_side import postgres_errors as query_errors
from services.errors import OperationalError
from stratopt.rpc_errors import status_code
from stratopt_cli.health import (
    LIVENESS,
    NOT_SERVING,
    SERVING,
    HealthMonitor,
    new_servicer,
    revive_workers,
    workers_alive,
)
from stratopt_cli.runtime import (
    DatabaseTimeouts,
    DatabaseWaitTimeoutError,
    backoff_delays,
    create_pool,
    retry,
    startup_limit_from_env,
)

QUERY = "stratopt.v1.OptimizationQueryService"
COMMAND = "stratopt.v1.OptimizationCommandService"


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    delays = backoff_delays(initial_s=0.5, cap_s=10.0, rng=random.Random(7))
    first = [next(delays) for _ in range(12)]
    for n, delay in enumerate(first):
        ceiling = min(10.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in first[6:]}) > 1  # jittered, not lock-step


def test_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATOPT_DB_STATEMENT_TIMEOUT_S", "2.5")
    monkeypatch.setenv("STRATOPT_DB_CONNECT_TIMEOUT_S", "1")
    timeouts = DatabaseTimeouts.from_env()
    assert timeouts == DatabaseTimeouts(statement_s=2.5, connect_s=1.0)
    assert timeouts.server_settings() == {
        "statement_timeout": "2500",
        "lock_timeout": "2500",
        "idle_in_transaction_session_timeout": "60000",
    }
    assert timeouts.connect_kwargs()["command_timeout"] == 3.5
    for bad in ("0", "-1", "ten", "nan", "inf"):
        monkeypatch.setenv("STRATOPT_DB_STATEMENT_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="STRATOPT_DB_STATEMENT_TIMEOUT_S"):
            DatabaseTimeouts.from_env()
    monkeypatch.delenv("STRATOPT_DB_WAIT_LIMIT_S", raising=False)
    assert startup_limit_from_env() == 600.0
    monkeypatch.setenv("STRATOPT_DB_WAIT_LIMIT_S", "0")
    assert startup_limit_from_env() is None
    monkeypatch.setenv("STRATOPT_DB_WAIT_LIMIT_S", "-3")
    with pytest.raises(ValueError, match="STRATOPT_DB_WAIT_LIMIT_S"):
        startup_limit_from_env()


def test_retry_waits_out_transient_errors_and_gives_up_at_the_limit() -> None:
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.1', 5432)")
        return "up"

    assert asyncio.run(retry(flaky, what="connect", limit_s=5, delays=iter([0.01] * 10))) == "up"
    assert len(tries) == 3

    async def down() -> None:
        raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")

    start = time.monotonic()
    with pytest.raises(DatabaseWaitTimeoutError, match=r"within 0\.3 s"):
        asyncio.run(retry(down, what="connect", limit_s=0.3, delays=iter([0.05] * 100)))
    assert time.monotonic() - start < 2

    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(retry(broken, what="connect", limit_s=None, delays=iter([0.01] * 10)))


@pytest.mark.parametrize("translate", [command_errors.postgres_errors, query_errors.postgres_errors])
@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.InternalClientError("unexpected exchange at ('10.0.0.1', 5432)"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout"),
        asyncpg.exceptions.IdleInTransactionSessionTimeoutError("terminating connection due to idle timeout"),
        asyncpg.exceptions.InterfaceError("pool is not initialized"),
    ],
)
def test_driver_and_timeout_errors_are_unavailable_without_detail(translate: object, error: Exception) -> None:
    async def run() -> None:
        async with translate():  # type: ignore[operator]
            raise error

    with pytest.raises(OperationalError) as raised:
        asyncio.run(run())
    assert status_code(raised.value) == grpc.StatusCode.UNAVAILABLE
    assert "10.0.0.1" not in raised.value.message
    assert "5432" not in raised.value.message


@pytest.mark.integration
def test_statement_and_lock_timeouts_reach_the_session_and_answer_unavailable(pg_dsn: str) -> None:
    timeouts = DatabaseTimeouts(statement_s=1.0, connect_s=2.0)

    async def run() -> None:
        conn = await asyncpg.connect(pg_dsn, **timeouts.connect_kwargs())
        other = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval("SHOW statement_timeout") == "1s"
            assert await conn.fetchval("SHOW lock_timeout") == "1s"
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
            start = time.monotonic()
            with pytest.raises(OperationalError):
                async with command_errors.postgres_errors():
                    await conn.execute("SELECT pg_sleep(5)")
            assert time.monotonic() - start < 3
            await other.execute("SELECT pg_advisory_lock(424242)")
            start = time.monotonic()
            with pytest.raises(OperationalError):
                async with query_errors.postgres_errors():
                    await conn.execute("SELECT pg_advisory_lock(424242)")
            assert time.monotonic() - start < 3
        finally:
            await conn.close()
            await other.close()

    asyncio.run(run())


@pytest.mark.integration
def test_the_pool_gives_up_waiting_for_a_connection_after_the_acquire_timeout(pg_dsn: str) -> None:
    async def run() -> None:
        pool = await create_pool(pg_dsn, DatabaseTimeouts(statement_s=0.5, connect_s=2.0), min_size=1, max_size=1)
        try:
            assert pool.acquire_timeout_s == 1.5
            async with pool.acquire() as busy:
                assert await busy.fetchval("SHOW statement_timeout") == "500ms"
                start = time.monotonic()
                with pytest.raises(OperationalError):
                    async with command_errors.postgres_errors(), pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
                assert 1.4 < time.monotonic() - start < 3
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()

    asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
def test_health_monitor_follows_the_database_the_workers_and_the_drain(pg_dsn: str) -> None:
    async def run() -> None:
        servicer = new_servicer([QUERY, COMMAND])
        workers = {"alive": True}

        def statuses() -> dict[str, int]:
            return {name: servicer._server_status[name] for name in ("", QUERY, COMMAND)}

        assert set(statuses().values()) == {NOT_SERVING}
        assert servicer._server_status[LIVENESS] == SERVING
        monitor = HealthMonitor(
            servicer,
            pg_dsn,
            query_names=[QUERY],
            command_names=[COMMAND],
            timeouts=DatabaseTimeouts(connect_s=1.0),
            workers_ok=lambda: workers["alive"],
        )
        await monitor.check()
        assert set(statuses().values()) == {NOT_SERVING}  # not ready yet
        monitor.mark_ready()
        await monitor.check()
        assert set(statuses().values()) == {SERVING}
        workers["alive"] = False
        await monitor.check()
        assert statuses() == {"": NOT_SERVING, QUERY: SERVING, COMMAND: NOT_SERVING}
        workers["alive"] = True
        await monitor.check()
        assert set(statuses().values()) == {SERVING}
        elsewhere = new_servicer([QUERY, COMMAND])
        unreachable = HealthMonitor(
            elsewhere,
            f"postgresql://postgres@127.0.0.1:{_free_port()}/nowhere",
            query_names=[QUERY],
            command_names=[COMMAND],
            timeouts=DatabaseTimeouts(connect_s=1.0),
        )
        unreachable.mark_ready()
        await unreachable.check()
        assert {elsewhere._server_status[name] for name in ("", QUERY, COMMAND)} == {NOT_SERVING}
        await monitor.drain()
        await monitor.check()
        assert set(statuses().values()) == {NOT_SERVING}
        assert servicer._server_status[LIVENESS] == SERVING  # a draining pod is not a dead one
        await monitor.stop()
        assert health_pb2.HealthCheckResponse.ServingStatus.Name(statuses()[""]) == "NOT_SERVING"

    asyncio.run(run())


@pytest.fixture
def solver_pool() -> Iterator[SolverPool]:
    pool = SolverPool(1)
    try:
        yield pool
    finally:
        pool.shutdown()


@pytest.mark.integration
def test_a_dead_worker_turns_the_command_side_not_serving_until_its_replacement_is_ready(
    solver_pool: SolverPool, pg_dsn: str
) -> None:
    async def run() -> None:
        servicer = new_servicer([QUERY, COMMAND])
        monitor = HealthMonitor(
            servicer,
            pg_dsn,
            query_names=[QUERY],
            command_names=[COMMAND],
            workers_ok=lambda: workers_alive(solver_pool),
            revive_workers=lambda: revive_workers(solver_pool),
        )
        assert workers_alive(solver_pool)
        await solver_pool.warm_up()
        monitor.mark_ready()
        await monitor.check()
        assert servicer._server_status[COMMAND] == SERVING
        [worker] = solver_pool.processes()
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)  # the OOM killer, say, while idle
        deadline = time.monotonic() + 10
        while workers_alive(solver_pool) and time.monotonic() < deadline:  # noqa: ASYNC110  # polling on purpose
            await asyncio.sleep(0.05)
        assert not workers_alive(solver_pool)
        await monitor.check()  # notices and reports NOT_SERVING while the pool starts a replacement
        assert servicer._server_status[COMMAND] == NOT_SERVING
        assert servicer._server_status[QUERY] == SERVING
        deadline = time.monotonic() + 120
        while servicer._server_status[COMMAND] != SERVING and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            await monitor.check()
        assert servicer._server_status[COMMAND] == SERVING
        [new_worker] = solver_pool.processes()
        assert new_worker.pid != worker.pid
        assert new_worker.is_alive()
        await monitor.stop()

    asyncio.run(run())


@pytest.mark.integration
def test_a_server_owning_its_process_freezes_start_up_objects_from_ready_until_stop(pg_dsn: str) -> None:
    from stratopt_cli.server import StratoptServer

    async def run() -> None:
        server = StratoptServer(pg_dsn, address="127.0.0.1:0", sides=("query",), freeze_gc=True)
        assert gc.get_freeze_count() == 0
        await server.start()
        try:
            # The imported libraries and the pools sit in the permanent generation: full collections skip them.
            assert gc.get_freeze_count() > 10_000
        finally:
            await server.stop(0)
        assert gc.get_freeze_count() == 0

    asyncio.run(run())


def test_a_task_that_ignores_its_cancellation_is_logged_with_its_stack_and_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shutdown goes on past a background task that swallows its cancellation, and says where it waits."""
    from stratopt_cli.server import _cancelled

    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # the bug this guards against

    async def scenario() -> float:
        task = asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        started = time.perf_counter()
        await _cancelled(task, timeout_s=0.2)
        took = time.perf_counter() - started
        assert not task.done()
        released.set()  # let the test's loop close: the next cancellation ends it
        task.cancel()
        await asyncio.wait({task})
        return took

    with caplog.at_level("ERROR", logger="stratopt_cli.server"):
        took = asyncio.run(scenario())
    assert 0.2 <= took < 2.0
    (record,) = [r for r in caplog.records if "did not end" in r.getMessage()]
    assert "stubborn" in record.getMessage() and "in stubborn" in record.getMessage()


def test_a_server_thread_whose_stop_hangs_logs_the_tasks_and_raises(caplog: pytest.LogCaptureFixture) -> None:
    """``ServerThread.stop`` past its timeout: TimeoutError, after logging every task of the loop and its stack."""
    from stratopt_cli.server import ServerThread

    class Hanging:  # the narrowest stand-in: ServerThread needs start() and stop() coroutines only
        async def start(self) -> int:
            return 0

        async def stop(self) -> None:
            await asyncio.Event().wait()

    thread = ServerThread(Hanging())  # type: ignore[arg-type]
    thread.start()
    with caplog.at_level("ERROR", logger="stratopt_cli.server"), pytest.raises(TimeoutError):
        thread.stop(timeout_s=0.3)
    (record,) = [r for r in caplog.records if "did not stop" in r.getMessage()]
    assert "in stop" in record.getMessage() and "Hanging.stop" in record.getMessage()
