"""WatchEvents through a real gRPC channel, on runs stored by Optimize (the service's own NOTIFY).

Runs reach the stream in order, a resumed stream misses nothing and repeats nothing, bad requests name their
field, and a lost LISTEN connection ends the stream with UNAVAILABLE. Events are produced by the command side's
Optimize on three real S&P 500 series (min volatility, fast), so the notification path is the service's own.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import grpc
import pandas as pd
import psycopg
import pytest

from command_side.repository import NOTIFY_CHANNEL as COMMAND_CHANNEL
from query_side.repository import HistoryKey
from query_side.watch import NOTIFY_CHANNEL, decode_token, encode_token
from services.errors import InvalidInputError
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, returns_request, sp500_returns

pytestmark = pytest.mark.integration
__all__ = ["sp500_returns"]  # fixture used below

TIMEOUT_S = 60


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def optimize(commands: Any, returns: pd.DataFrame, portfolio_id: str) -> str:
    """Store one run of the portfolio through Optimize; its event id."""
    response = commands.Optimize(
        returns_request(returns, portfolio_id, objective=pb.OBJECTIVE_MIN_VOLATILITY), timeout=TIMEOUT_S
    )
    return str(response.optimization_metadata.event_id)


@pytest.fixture(scope="module")
def small(sp500_returns: pd.DataFrame) -> pd.DataFrame:
    return sp500_returns.iloc[-300:, :3]


class Reader:
    """Reads a stream in a thread, so the test can write while it waits."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.received: list[query_pb.WatchEventsResponse] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self.call:
                self.received.append(message)
        except grpc.RpcError as error:
            self.error = error

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[query_pb.WatchEventsResponse]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and self.error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, f"{len(self.received)} of {count} events; error {self.error}"
        return self.received[:count]

    def stop(self) -> None:
        self.call.cancel()
        self._thread.join(5)


def watch(queries: Any, portfolios: list[str], token: str = "", from_beginning: bool = False) -> Reader:
    request = query_pb.WatchEventsRequest(portfolio_ids=portfolios, resume_token=token, from_beginning=from_beginning)
    return Reader(queries.WatchEvents(request, timeout=TIMEOUT_S))


@pytest.fixture
def two_portfolios(commands: Any, small: pd.DataFrame) -> tuple[str, str, list[str]]:
    """Two portfolios with one stored run each; the first run's event ids."""
    a, b = unique("watch-a"), unique("watch-b")
    return a, b, [optimize(commands, small, a), optimize(commands, small, b)]


def test_history_then_live_events_in_order(
    queries: Any, commands: Any, small: pd.DataFrame, two_portfolios: tuple[str, str, list[str]]
) -> None:
    a, b, first = two_portfolios
    reader = watch(queries, [a, b], from_beginning=True)
    try:
        # The history is read after the stream listens: seeing it proves the subscription is live.
        history = reader.wait_for(2)
        assert sorted(m.event.metadata.event_id for m in history) == sorted(first)
        live = [optimize(commands, small, a), optimize(commands, small, b), optimize(commands, small, a)]
        received = reader.wait_for(5)[2:]
        assert [m.event.metadata.event_id for m in received if m.event.portfolio_id == a] == [live[0], live[2]]
        assert [m.event.metadata.event_id for m in received if m.event.portfolio_id == b] == [live[1]]
        assert all(m.event.weights and m.resume_token for m in received)
    finally:
        reader.stop()


def test_a_resumed_stream_has_no_gap_and_no_duplicate(
    queries: Any, commands: Any, small: pd.DataFrame, two_portfolios: tuple[str, str, list[str]]
) -> None:
    a, b, _ = two_portfolios
    reader = watch(queries, [a, b], from_beginning=True)
    token = reader.wait_for(2)[-1].resume_token
    reader.stop()
    # While nobody watches: three more runs.
    missed = [optimize(commands, small, b), optimize(commands, small, a), optimize(commands, small, b)]
    resumed = watch(queries, [a, b], token=token)
    try:
        got = resumed.wait_for(3)
        assert sorted(m.event.metadata.event_id for m in got) == sorted(missed)
        live = optimize(commands, small, a)
        assert resumed.wait_for(4)[3].event.metadata.event_id == live
        time.sleep(0.5)
        assert len(resumed.received) == 4  # nothing twice
    finally:
        resumed.stop()
    # Without a token (and without from_beginning) a stream starts after the latest event.
    fresh = watch(queries, [a, b])
    try:
        time.sleep(1.0)  # the subscription is set up asynchronously: a run stored before it would not be sent
        later = optimize(commands, small, b)
        assert [m.event.metadata.event_id for m in fresh.wait_for(1)] == [later]
    finally:
        fresh.stop()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"portfolio_ids": []}, "portfolio_ids"),
        ({"portfolio_ids": ["a", "a"]}, "portfolio_ids[1]"),
        ({"portfolio_ids": ["a\x00b"]}, "portfolio_ids[0]"),
        ({"portfolio_ids": ["a"], "resume_token": "not-a-token"}, "resume_token"),
        ({"portfolio_ids": ["a"], "resume_token": encode_token({"b": None})}, "resume_token"),
    ],
)
def test_bad_requests_name_the_field(queries: Any, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(queries.WatchEvents(query_pb.WatchEventsRequest(**fields), timeout=TIMEOUT_S)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]


def test_a_lost_listen_connection_ends_the_stream_with_unavailable(
    queries: Any, commands: Any, small: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio = unique("watch-lost")
    optimize(commands, small, portfolio)
    reader = watch(queries, [portfolio], from_beginning=True)
    reader.wait_for(1)
    killed = db.execute(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $$LISTEN "portfolio_optimized"$$'
    ).fetchall()
    assert killed and all(row[0] for row in killed)
    deadline = time.monotonic() + 20
    while reader.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.error is not None and reader.error.code() == grpc.StatusCode.UNAVAILABLE
    # The next stream listens again and works.
    again = watch(queries, [portfolio], token=reader.received[-1].resume_token)
    try:
        time.sleep(0.5)
        event_id = optimize(commands, small, portfolio)
        assert again.wait_for(1)[0].event.metadata.event_id == event_id
    finally:
        again.stop()


def test_tokens_round_trip_and_bind_to_the_portfolios() -> None:
    key = HistoryKey(timestamp=pd.Timestamp("2024-05-01T12:00:00.123456Z").to_pydatetime(), event_id=uuid.uuid4())
    token = encode_token({"a": key, "b": None})
    assert decode_token(token, ["b", "a"]) == {"a": key, "b": None}  # order of the list does not matter
    with pytest.raises(InvalidInputError):
        decode_token(token, ["a"])
    assert NOTIFY_CHANNEL == COMMAND_CHANNEL


def test_a_lost_listen_connection_does_not_keep_a_pool_slot(pg_dsn: str) -> None:
    """After the LISTEN backend is killed (asyncpg hands a closed connection back to its pool).

    A pool of two still has one free connection once a new subscription listens again.
    """
    import asyncio

    import asyncpg

    from query_side.watch import EventNotifier

    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
        notifier = EventNotifier(pool)
        try:
            first = await notifier.subscribe(["p"])
            async with pool.acquire() as other:
                await other.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query = 'LISTEN \"portfolio_optimized\"'"
                )
            with pytest.raises(Exception, match="notifications were lost"):
                await asyncio.wait_for(first.changed(), 10)
            await asyncio.sleep(0.2)  # the release task
            second = await notifier.subscribe(["p"])
            async with asyncio.timeout(5):  # with the dead connection held, this would wait forever
                async with pool.acquire() as free:
                    assert await free.fetchval("SELECT 1") == 1
            second.close()
        finally:
            await notifier.close()
            await pool.close()

    asyncio.run(scenario())
