"""WatchEvents through a real gRPC channel, on events stored by the command side's RPCs (the service's own NOTIFY).

Runs reach the stream in order, a resumed stream misses nothing and repeats nothing, bad requests name their
field, and a lost LISTEN connection ends the stream with UNAVAILABLE. Optimization events are produced by Optimize
on three real S&P 500 series (min volatility, fast); rebalance events by GenerateRebalance/ApproveRebalance, rotation
decisions by RunRotationCycle and backtests by Backtest, so every notification path is the service's own.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pandas as pd
import psycopg
import pytest

from command_side.backtests import NOTIFY_CHANNEL as BACKTEST_CHANNEL
from command_side.rebalancing_repository import NOTIFY_CHANNEL as REBALANCE_CHANNEL
from command_side.repository import NOTIFY_CHANNEL as COMMAND_CHANNEL
from command_side.rotation_store import NOTIFY_CHANNEL as ROTATION_CHANNEL
from query_side.repository import HistoryKey
from query_side.watch import (
    CHANNELS,
    MAX_CATCH_UP,
    NOTIFY_CHANNEL,
    WatchKind,
    decode_cursors,
    decode_token,
    encode_cursors,
    encode_token,
)
from query_side.watch import watch as watch_stream
from services.errors import InvalidInputError, ResourceExhaustedError
from stratopt.v1 import backtest_pb2 as bt_pb
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as tpb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, returns_request, sp500_returns
from tests.command_side.test_rotation_service import portfolio, rotation
from tests.command_side.test_rotation_service import run as run_rotation

pytestmark = pytest.mark.integration
__all__ = ["portfolio", "rotation", "sp500_returns"]  # fixtures used below

OPTIMIZATION = query_pb.WATCH_EVENT_KIND_OPTIMIZATION
REBALANCE = query_pb.WATCH_EVENT_KIND_REBALANCE
ROTATION = query_pb.WATCH_EVENT_KIND_ROTATION
BACKTEST = query_pb.WATCH_EVENT_KIND_BACKTEST
EVERY_KIND = [OPTIMIZATION, REBALANCE, ROTATION, BACKTEST]

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


def watch(
    queries: Any, portfolios: list[str], token: str = "", from_beginning: bool = False, kinds: list[int] | None = None
) -> Reader:
    request = query_pb.WatchEventsRequest(
        portfolio_ids=portfolios, resume_token=token, from_beginning=from_beginning, kinds=kinds or []
    )
    return Reader(queries.WatchEvents(request, timeout=TIMEOUT_S))


def ident(message: query_pb.WatchEventsResponse) -> tuple[str, str]:
    """(which event, its id) of a message."""
    kind = message.WhichOneof("payload")
    assert kind is not None
    if kind == "event":
        return kind, message.event.metadata.event_id
    if kind == "rebalance_event":
        return kind, message.rebalance_event.event_id
    if kind == "rotation_decision":
        return kind, message.rotation_decision.decision_id
    return kind, message.backtest.backtest_id


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
        ({"portfolio_ids": ["a"], "kinds": [0]}, "kinds[0]"),
        ({"portfolio_ids": ["a"], "kinds": [REBALANCE, 99]}, "kinds[1]"),
        ({"portfolio_ids": ["a"], "kinds": [ROTATION, BACKTEST, ROTATION]}, "kinds[2]"),
        # A version-1 token resumes optimization events only; a token of other kinds does not fit.
        ({"portfolio_ids": ["a"], "kinds": [REBALANCE], "resume_token": encode_token({"a": None})}, "resume_token"),
        (
            {
                "portfolio_ids": ["a"],
                "kinds": [REBALANCE, ROTATION],
                "resume_token": encode_cursors({WatchKind.REBALANCE: {"a": None}}),
            },
            "resume_token",
        ),
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
    # Version 2: per kind, bound to the kinds too; a version-1 token still resumes an optimization-only stream.
    cursors = {WatchKind.REBALANCE: {"a": key, "b": None}, WatchKind.BACKTEST: {"a": None, "b": key}}
    v2 = encode_cursors(cursors)
    assert decode_cursors(v2, ["b", "a"], [WatchKind.BACKTEST, WatchKind.REBALANCE]) == cursors
    with pytest.raises(InvalidInputError):
        decode_cursors(v2, ["a", "b"], [WatchKind.REBALANCE])
    assert decode_cursors(token, ["a", "b"], [WatchKind.OPTIMIZATION]) == {
        WatchKind.OPTIMIZATION: {"a": key, "b": None}
    }
    with pytest.raises(InvalidInputError):
        decode_cursors(token, ["a", "b"], [WatchKind.OPTIMIZATION, WatchKind.ROTATION])
    assert CHANNELS == {
        WatchKind.OPTIMIZATION: COMMAND_CHANNEL,
        WatchKind.REBALANCE: REBALANCE_CHANNEL,
        WatchKind.ROTATION: ROTATION_CHANNEL,
        WatchKind.BACKTEST: BACKTEST_CHANNEL,
    }


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


def test_an_orderly_close_warns_of_no_lost_connection(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """``close()`` gives the LISTEN connection back; the pool closing it later is no loss to warn about."""
    import asyncio

    import asyncpg

    from query_side.watch import EventNotifier

    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        notifier = EventNotifier(pool)
        try:
            (await notifier.subscribe(["p"])).close()
        finally:
            await notifier.close()
            await pool.close()

    with caplog.at_level("WARNING", logger="query_side.watch"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.name == "query_side.watch"] == []


def test_a_listen_connection_that_stops_answering_ends_the_streams_with_unavailable(pg_dsn: str) -> None:
    """The LISTEN backend is stopped (SIGSTOP: a connection a network dropped without a word, nothing closes).

    The keepalive's ping times out, the connection is closed and the streams end with UNAVAILABLE; a new stream
    listens again on a fresh connection.
    """
    import os
    import signal

    import asyncpg

    from query_side.watch import EventNotifier

    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=3)
        notifier = EventNotifier(pool, keepalive_s=0.2, keepalive_timeout_s=0.5)
        stopped = 0
        try:
            first = await notifier.subscribe(["p"])
            await asyncio.sleep(0.5)  # pings answered meanwhile: nothing ends
            assert notifier.subscriber_count == 1
            stopped = notifier._connection.get_server_pid()
            os.kill(stopped, signal.SIGSTOP)
            with pytest.raises(Exception, match="notifications were lost"):
                await asyncio.wait_for(first.changed(), 10)
            os.kill(stopped, signal.SIGCONT)
            stopped = 0
            second = await notifier.subscribe(["p"])
            async with pool.acquire() as writer:
                await writer.execute("SELECT pg_notify('portfolio_optimized', 'p 1')")
            assert await asyncio.wait_for(second.changed(), 10) == {(WatchKind.OPTIMIZATION, "p")}
            second.close()
        finally:
            if stopped:
                os.kill(stopped, signal.SIGCONT)
            await notifier.close()
            await pool.close()

    asyncio.run(scenario())


# --- rebalance events, rotation decisions and backtests ----------------------------------------------------------


def pending_rebalance(trading: Any, portfolio_id: str, target: float) -> str:
    """A recommendation waiting for approval (limit 1): sells WMT (held 1000) down to ``target``; its id."""
    trading.UpsertRebalancePolicy(
        tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=tpb.RebalancePolicy(approval_limit=1.0))
    )
    request = tpb.GenerateRebalanceRequest(
        portfolio_id=portfolio_id, target_weights={"WMT": target}, prices={"WMT": 100.0}
    )
    recommendation = trading.GenerateRebalance(request, timeout=TIMEOUT_S).recommendation
    assert recommendation.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL
    return str(recommendation.recommendation_id)


def backtest(commands: Any, portfolio_id: str) -> bt_pb.BacktestSummary:
    """A short quarterly min-volatility backtest of four stored names; its summary (the stream's result)."""
    symbols = ["AAPL", "JNJ", "KO", "PG"]
    configuration = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=s) for s in symbols],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        enabled=True,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=configuration), timeout=TIMEOUT_S)
    request = bt_pb.BacktestRequest(
        portfolio_id=portfolio_id,
        schedule=bt_pb.RebalanceSchedule(frequency=bt_pb.REBALANCE_FREQUENCY_QUARTERLY),
    )
    request.start.FromJsonString("2017-01-01T00:00:00Z")
    request.end.FromJsonString("2017-06-30T00:00:00Z")
    results = [m.result for m in commands.Backtest(request, timeout=120) if m.HasField("result")]
    assert len(results) == 1
    return results[0]


def test_a_stream_of_every_kind_sends_rebalance_rotation_and_backtest_events(
    queries: Any, commands: Any, trading: Any, rotation: Any, portfolio: tuple[str, str]
) -> None:
    portfolio_id, _ = portfolio
    every = watch(queries, [portfolio_id], from_beginning=True, kinds=EVERY_KIND)
    rebalance_only = watch(queries, [portfolio_id], from_beginning=True, kinds=[REBALANCE])
    default = watch(queries, [portfolio_id], from_beginning=True)  # no kinds: optimization events only
    try:
        recommendation_id = pending_rebalance(trading, portfolio_id, 0.1)
        trading.ApproveRebalance(tpb.ApproveRebalanceRequest(recommendation_id=recommendation_id), timeout=TIMEOUT_S)
        decision = run_rotation(rotation, portfolio_id).decision
        summary = backtest(commands, portfolio_id)

        received = every.wait_for(4)
        rebalances = [m.rebalance_event for m in received if m.HasField("rebalance_event")]
        assert [(e.recommendation_id, e.event_type, e.status) for e in rebalances] == [
            (recommendation_id, "CREATED", tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL),
            (recommendation_id, "APPROVED", tpb.RECOMMENDATION_STATUS_APPROVED),
        ]
        # As the List RPCs return them.
        listed = queries.ListRebalanceEvents(query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id))
        assert rebalances == list(reversed(listed.events))
        (watched_decision,) = [m.rotation_decision for m in received if m.HasField("rotation_decision")]
        assert watched_decision == decision
        (watched_backtest,) = [m.backtest for m in received if m.HasField("backtest")]
        assert watched_backtest == summary
        assert all(m.resume_token for m in received)

        assert [m.rebalance_event for m in rebalance_only.wait_for(2)] == rebalances
        time.sleep(0.5)
        assert len(every.received) == 4 and len(rebalance_only.received) == 2  # nothing else, nothing twice
        assert default.received == [] and default.error is None
    finally:
        for reader in (every, rebalance_only, default):
            reader.stop()


def test_a_resumed_stream_of_every_kind_has_no_gap_and_no_duplicate(
    queries: Any, trading: Any, rotation: Any, portfolio: tuple[str, str]
) -> None:
    portfolio_id, _ = portfolio
    kinds = [REBALANCE, ROTATION]
    first = watch(queries, [portfolio_id], from_beginning=True, kinds=kinds)
    try:
        recommendation_id = pending_rebalance(trading, portfolio_id, 0.1)
        run_rotation(rotation, portfolio_id)
        trading.ApproveRebalance(tpb.ApproveRebalanceRequest(recommendation_id=recommendation_id), timeout=TIMEOUT_S)
        seen = first.wait_for(3)
    finally:
        first.stop()
    token = seen[0].resume_token  # mid-way: after the CREATED event
    assert ident(seen[0])[0] == "rebalance_event" and seen[0].rebalance_event.event_type == "CREATED"
    # While nobody watches: a rejected recommendation and another decision.
    rejected = pending_rebalance(trading, portfolio_id, 0.2)
    trading.RejectRebalance(tpb.RejectRebalanceRequest(recommendation_id=rejected, reason="no"), timeout=TIMEOUT_S)
    missed_decision = run_rotation(rotation, portfolio_id).decision.decision_id
    with pytest.raises(grpc.RpcError) as caught:  # the token is bound to its kinds
        next(iter(queries.WatchEvents(query_pb.WatchEventsRequest(portfolio_ids=[portfolio_id], resume_token=token))))
    assert field_violations(caught.value) == ["resume_token"]

    resumed = watch(queries, [portfolio_id], token=token, kinds=kinds)
    try:
        got = resumed.wait_for(5)
        assert sorted(map(ident, got)) == sorted(
            [*map(ident, seen[1:]), ("rotation_decision", missed_decision)]
            + [("rebalance_event", e.event_id) for e in events_of(queries, portfolio_id, rejected)]
        )
        assert [m.rebalance_event.event_type for m in got if m.HasField("rebalance_event")] == [
            "APPROVED",
            "CREATED",
            "REJECTED",
        ]
        live = run_rotation(rotation, portfolio_id).decision.decision_id
        assert ident(resumed.wait_for(6)[5]) == ("rotation_decision", live)
        time.sleep(0.5)
        assert len(resumed.received) == 6  # nothing twice
    finally:
        resumed.stop()


def events_of(queries: Any, portfolio_id: str, recommendation_id: str) -> list[tpb.RebalanceEvent]:
    """A recommendation's stored events, oldest first."""
    page = queries.ListRebalanceEvents(query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id))
    return [e for e in reversed(page.events) if e.recommendation_id == recommendation_id]


def test_an_optimization_only_stream_resumes_with_a_version_1_token(
    queries: Any, commands: Any, small: pd.DataFrame
) -> None:
    a = unique("watch-v1")
    first = optimize(commands, small, a)
    old = encode_token({a: None})  # as a server before the kinds issued it: nothing sent yet
    resumed = watch(queries, [a], token=old, kinds=[OPTIMIZATION])
    try:
        assert ident(resumed.wait_for(1)[0]) == ("event", first)
    finally:
        resumed.stop()


class _Events:
    """A :class:`KindSource` over ``count`` events of one portfolio, a microsecond apart."""

    def __init__(self, count: int) -> None:
        start = datetime(2030, 1, 1, tzinfo=UTC)
        self.keys = [
            HistoryKey(timestamp=start + timedelta(microseconds=k), event_id=uuid.UUID(int=k + 1)) for k in range(count)
        ]

    async def after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> list[Any]:
        index = 0 if after is None else self.keys.index(after) + 1
        return [SimpleNamespace(key=key) for key in self.keys[index : index + limit]]

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        return self.keys[-1] if self.keys else None


class _QuietError(Exception):
    """Raised where a caught-up stream would wait for a notification."""


class _Notifier:
    async def subscribe(self, portfolio_ids: Any, kinds: Any) -> Any:
        async def changed() -> set[Any]:
            raise _QuietError

        return SimpleNamespace(
            pairs={(kind, p) for kind in kinds for p in portfolio_ids}, changed=changed, close=lambda: None
        )


@pytest.mark.parametrize("extra", [0, 1])
def test_a_catch_up_is_cut_only_when_more_than_the_limit_is_left(extra: int) -> None:
    """Exactly MAX_CATCH_UP events behind (a whole number of chunks): all sent, then live; one more: cut."""
    source = _Events(MAX_CATCH_UP + extra)

    async def drain() -> tuple[int, BaseException]:
        sent = 0
        stream = watch_stream({WatchKind.OPTIMIZATION: source}, cast(Any, _Notifier()), ["p"], "", from_beginning=True)
        try:
            async for _ in stream:
                sent += 1
        except (_QuietError, ResourceExhaustedError) as error:
            return sent, error
        raise AssertionError("the stream ended")

    sent, error = asyncio.run(drain())
    assert sent == MAX_CATCH_UP
    assert isinstance(error, _QuietError if extra == 0 else ResourceExhaustedError)
