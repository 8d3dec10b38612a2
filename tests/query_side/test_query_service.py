"""The query service end to end: real PostgreSQL + TimescaleDB, a real grpc.aio server, a real channel."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import numpy as np
import psycopg
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from psycopg.types.json import Jsonb

import query_side
from query_side.repository import PostgresReadStore
from services.errors import (
    InfeasibleError,
    InvalidInputError,
    PreconditionViolation,
    UnavailableError,
)
from stratopt.v1 import query_service_pb2, query_service_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SERVICE = "stratopt.v1.OptimizationQueryService"

# ----------------------------------------------------------------------------------------------------------
# A grpc.aio server on 127.0.0.1 in a background thread with its own event loop.
# ----------------------------------------------------------------------------------------------------------

Configure = Callable[[grpc.aio.Server], Awaitable[Callable[[], Awaitable[None]]]]


@contextmanager
def serve_in_thread(configure: Configure) -> Iterator[str]:
    """Run a grpc.aio server with the query interceptor in a thread; yield its address.

    ``configure`` adds services to the server on the server's loop and returns an async cleanup.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        try:
            server = grpc.aio.server(interceptors=[query_side.interceptor()])
            cleanup = await configure(server)
            state["port"] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            state["stop"] = asyncio.Event()
        except BaseException as exc:
            state["error"] = exc
            raise
        finally:
            ready.set()
        await state["stop"].wait()
        await server.stop(grace=None)
        await cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "server did not start"
    if "error" in state:
        thread.join(10)
        raise RuntimeError("server failed to start") from state["error"]
    try:
        yield f"127.0.0.1:{state['port']}"
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def query_address(pg_dsn: str) -> Iterator[str]:
    async def configure(server: grpc.aio.Server) -> Callable[[], Awaitable[None]]:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
        assert query_side.register(server, PostgresReadStore(pool)) == [SERVICE]
        return pool.close

    with serve_in_thread(configure) as address:
        yield address


@pytest.fixture(scope="module")
def stub(query_address: str) -> Iterator[query_service_pb2_grpc.OptimizationQueryServiceStub]:
    with grpc.insecure_channel(query_address) as channel:
        yield query_service_pb2_grpc.OptimizationQueryServiceStub(channel)


@pytest.fixture(scope="module")
def db(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


# ----------------------------------------------------------------------------------------------------------
# Test data, written the way the command side writes it.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    event_id: uuid.UUID
    timestamp: datetime
    weights: dict[str, float]
    expected_return: float
    volatility: float
    sharpe_ratio: float
    request_id: str | None = None


def new_portfolio() -> str:
    return f"query-test-{uuid.uuid4()}"


def metadata_json(event: Event) -> dict[str, Any]:
    """Event metadata as the command side stores it (docs/storage_schema.md, schema_version 1)."""
    return {
        "schema_version": 1,
        "event_id": str(event.event_id),
        "result_id": str(uuid.uuid4()),
        "timestamp": event.timestamp.isoformat().replace("+00:00", "Z"),
        "configuration_version": 3,
        "convergence_status": "OPTIMAL",
        "iterations": 12,
        "optimization_time_ms": 3.5,
        "objective_value": event.sharpe_ratio,
        "constraints_satisfied": True,
        "constraint_violations": [],
        "solver": "CLARABEL",
        "fallback_used": False,
        "solve_path": "CONIC",
        "method": "MEAN_VARIANCE",
        "risk_measure": "VARIANCE",
        "risk_measure_value": 0.0,
        "missing_data_policy": "PAIRWISE",
        "observations": 252,
        "window_start": None,
        "window_end": None,
        "holdings": 2,
        "net_exposure": 1.0,
        "gross_exposure": 1.0,
        "risk_contributions": {},
        "betas": {},
        "relaxations": [],
        "black_litterman": None,
        "field_from_the_future": {"ignored": True},  # unknown keys must not break readers
    }


def insert_events(
    db: psycopg.Connection[Any], portfolio_id: str, events: list[Event], *, latest: Event | None = None
) -> None:
    columns = (
        'event_id, "timestamp", portfolio_id, result_id, configuration_version, request_id, objective, '
        "method, weights, expected_return, volatility, sharpe_ratio, metadata"
    )
    rows = [
        (
            e.event_id,
            e.timestamp,
            portfolio_id,
            uuid.uuid4(),
            3,
            e.request_id,
            "OBJECTIVE_MAX_SHARPE",
            "OPTIMIZATION_METHOD_MEAN_VARIANCE",
            Jsonb(e.weights),
            e.expected_return,
            e.volatility,
            e.sharpe_ratio,
            Jsonb(metadata_json(e)),
        )
        for e in events
    ]
    placeholders = ", ".join(["%s"] * 13)
    with db.cursor() as cursor:
        cursor.executemany(f"INSERT INTO portfolio_optimized ({columns}) VALUES ({placeholders})", rows)
        if latest is not None:
            cursor.execute(
                f"INSERT INTO latest_portfolio_optimizations ({columns}) VALUES ({placeholders})",
                rows[events.index(latest)],
            )


def make_events(
    timestamps: list[datetime], *, seed: int = 0, universe: tuple[str, ...] = ("AAA", "BBB", "CCC", "DDD")
) -> list[Event]:
    rng = np.random.default_rng(seed)
    events = []
    for timestamp in timestamps:
        names = rng.choice(universe, size=int(rng.integers(1, len(universe) + 1)), replace=False)
        raw = rng.random(len(names))
        events.append(
            Event(
                event_id=uuid.uuid4(),
                timestamp=timestamp,
                weights={str(n): float(w) for n, w in zip(names, raw / raw.sum(), strict=True)},
                expected_return=float(rng.normal(0.08, 0.02)),
                volatility=float(rng.uniform(0.1, 0.3)),
                sharpe_ratio=float(rng.normal(1.0, 0.3)),
            )
        )
    return events


def newest_first(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.timestamp, e.event_id), reverse=True)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(v.field for v in bad_request.field_violations)
    return fields


# ----------------------------------------------------------------------------------------------------------
# GetLatest
# ----------------------------------------------------------------------------------------------------------


def test_get_latest_returns_the_read_model_event(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
    events = make_events([t0, t0 + timedelta(hours=1)], seed=1)
    latest = events[1] = dataclasses.replace(events[1], request_id="req-42")
    insert_events(db, portfolio_id, events, latest=latest)

    response = stub.GetLatest(query_service_pb2.GetLatestRequest(portfolio_id=portfolio_id))

    event = response.event
    assert event.event_id == str(latest.event_id)
    assert event.timestamp.ToDatetime(tzinfo=UTC) == latest.timestamp  # microseconds preserved
    assert event.portfolio_id == portfolio_id
    assert dict(event.weights) == latest.weights
    assert (event.expected_return, event.volatility, event.sharpe_ratio) == (
        latest.expected_return,
        latest.volatility,
        latest.sharpe_ratio,
    )
    assert event.configuration_version == 3
    assert event.request_id == "req-42"
    assert event.objective == types_pb2.OBJECTIVE_MAX_SHARPE
    assert event.method == types_pb2.OPTIMIZATION_METHOD_MEAN_VARIANCE
    assert event.metadata.convergence_status == types_pb2.CONVERGENCE_STATUS_OPTIMAL
    assert event.metadata.solver == "CLARABEL"
    assert event.metadata.iterations == 12
    assert event.metadata.constraints_satisfied
    assert event.metadata.event_id == str(latest.event_id)
    assert event.metadata.timestamp.ToDatetime(tzinfo=UTC) == latest.timestamp
    assert not event.metadata.HasField("window_start")


def test_get_latest_missing_request_id_is_empty(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    (event,) = make_events([datetime(2024, 3, 2, tzinfo=UTC)])
    insert_events(db, portfolio_id, [event], latest=event)
    response = stub.GetLatest(query_service_pb2.GetLatestRequest(portfolio_id=portfolio_id))
    assert response.event.request_id == ""


def test_get_latest_of_unknown_portfolio_is_not_found(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetLatest(query_service_pb2.GetLatestRequest(portfolio_id=new_portfolio()))
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(error)
    assert status is not None
    assert status.code == code_pb2.NOT_FOUND
    assert "no optimization events" in status.message


def test_get_latest_without_portfolio_id_is_invalid(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetLatest(query_service_pb2.GetLatestRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["portfolio_id"]


# ----------------------------------------------------------------------------------------------------------
# GetHistory
# ----------------------------------------------------------------------------------------------------------


def all_pages(stub: Any, request: query_service_pb2.GetHistoryRequest) -> list[list[str]]:
    """Event ids of every page, following next_page_token with the other fields unchanged."""
    pages = []
    while True:
        response = stub.GetHistory(request)
        pages.append([e.event_id for e in response.events])
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


def test_history_pages_newest_first_with_ties_broken_by_event_id(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 1, tzinfo=UTC)
    # Three events share one timestamp and two another: a page boundary falls inside the first group.
    timestamps = [t0, t0 + timedelta(hours=1), t0 + timedelta(hours=1), t0 + timedelta(hours=2)]
    timestamps += [t0 + timedelta(hours=3)] * 3
    events = make_events(timestamps, seed=2)
    insert_events(db, portfolio_id, events)

    pages = all_pages(stub, query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_size=3))

    assert [len(page) for page in pages] == [3, 3, 1]
    returned = [event_id for page in pages for event_id in page]
    assert returned == [str(e.event_id) for e in newest_first(events)]
    assert len(set(returned)) == 7


def history_messages(stub: Any, portfolio_id: str, page_size: int) -> list[types_pb2.PortfolioOptimizedEvent]:
    """Every event of a portfolio's history, page after page."""
    request = query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_size=page_size)
    events: list[types_pb2.PortfolioOptimizedEvent] = []
    while True:
        response = stub.GetHistory(request)
        events.extend(response.events)
        if not response.next_page_token:
            return events
        request.page_token = response.next_page_token


def test_history_served_from_the_event_cache_equals_the_stored_rows(pg_dsn: str, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 2, 9, 30, 0, 250000, tzinfo=UTC)
    events = make_events([t0 + timedelta(minutes=7 * k) for k in range(10)], seed=21)
    events[4] = dataclasses.replace(events[4], request_id="req-cached")
    insert_events(db, portfolio_id, events)
    small = query_side.EventMessageCache(3)  # smaller than a page: entries are evicted while pages are served
    roomy = query_side.EventMessageCache(100)
    none = query_side.EventMessageCache(0)
    stubs: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for name, cache in (("small", small), ("roomy", roomy), ("none", none)):

            async def configure(
                server: grpc.aio.Server, cache: query_side.EventMessageCache = cache
            ) -> Callable[[], Awaitable[None]]:
                pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
                query_side.register(server, PostgresReadStore(pool), event_cache=cache)
                return pool.close

            address = stack.enter_context(serve_in_thread(configure))
            channel = stack.enter_context(grpc.insecure_channel(address))
            stubs[name] = query_service_pb2_grpc.OptimizationQueryServiceStub(channel)

        uncached = history_messages(stubs["none"], portfolio_id, 4)
        passes = {
            name: [history_messages(stubs[name], portfolio_id, 4) for _ in range(3)] for name in ("small", "roomy")
        }
        # Each row decoded once (the row past a page, read to see whether another page follows, included), then
        # served as kept: pages of 4 read 5, 5 and 2 rows; the first pass finds rows 4 and 8 kept by its pages before.
        assert (roomy.misses, roomy.hits, len(roomy)) == (10, 2 + 12 + 12, 10)
        assert small.hits > 0 and len(small) == 3
        assert none.hits == 0 and len(none) == 0
        for answers in passes.values():
            assert all(answer == uncached for answer in answers)
        # Independent truth: the rows as inserted (ids, order, timestamps to the microsecond, weights, request id).
        assert [e.event_id for e in uncached] == [str(e.event_id) for e in newest_first(events)]
        for message, event in zip(uncached, newest_first(events), strict=True):
            assert message.timestamp.ToDatetime(tzinfo=UTC) == event.timestamp
            assert dict(message.weights) == pytest.approx(event.weights, abs=0, rel=1e-15)
            assert message.request_id == (event.request_id or "")
            assert message.metadata.event_id == str(event.event_id)

        # A row deleted (retention) after its message was kept is not served: the page comes from the query.
        gone = newest_first(events)[1]
        db.execute("DELETE FROM portfolio_optimized WHERE event_id = %s", (gone.event_id,))
        after_delete = history_messages(stubs["roomy"], portfolio_id, 4)
        assert [e.event_id for e in after_delete] == [e.event_id for e in uncached if e.event_id != str(gone.event_id)]


def test_event_cache_keeps_the_most_recently_used() -> None:
    cache = query_side.EventMessageCache(2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.put(a, b"a")
    cache.put(b, b"b")
    assert cache.get(a) == b"a"  # a is now the most recently used
    cache.put(c, b"c")  # evicts b
    assert (cache.get(b), cache.get(a), cache.get(c)) == (None, b"a", b"c")
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    with pytest.raises(ValueError, match="max_events"):
        query_side.EventMessageCache(-1)


def test_history_bounded_by_the_latest_read_model_returns_every_event(stub: Any, db: psycopg.Connection[Any]) -> None:
    # GetHistory bounds its scan by the read model's latest event: that event and its equal-time neighbours stay in.
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 3, 12, 0, 0, 1, tzinfo=UTC)
    events = make_events([t0 + timedelta(days=9 * k) for k in range(5)] + [t0 + timedelta(days=36)] * 2, seed=23)
    latest = max(events, key=lambda e: (e.timestamp, e.event_id))
    insert_events(db, portfolio_id, events, latest=latest)

    pages = all_pages(stub, query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_size=2))

    assert [event_id for page in pages for event_id in page] == [str(e.event_id) for e in newest_first(events)]


def test_history_exact_multiple_of_page_size_ends_without_token(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 2, tzinfo=UTC)
    events = make_events([t0 + timedelta(minutes=k) for k in range(6)], seed=3)
    insert_events(db, portfolio_id, events)
    first = stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_size=3))
    assert first.next_page_token
    second = stub.GetHistory(
        query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_size=3, page_token=first.next_page_token)
    )
    assert len(second.events) == 3
    assert second.next_page_token == ""


def test_history_start_is_inclusive_and_end_exclusive(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 3, tzinfo=UTC)
    events = make_events([t0 + timedelta(hours=k) for k in range(10)], seed=4)
    insert_events(db, portfolio_id, events)
    start, end = t0 + timedelta(hours=2), t0 + timedelta(hours=7)

    request = query_service_pb2.GetHistoryRequest(
        portfolio_id=portfolio_id, start=timestamp(start), end=timestamp(end), page_size=2
    )
    returned = [event_id for page in all_pages(stub, request) for event_id in page]

    expected = [str(e.event_id) for e in newest_first(events) if start <= e.timestamp < end]
    assert returned == expected
    assert len(returned) == 5

    only_start = stub.GetHistory(
        query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, start=timestamp(t0 + timedelta(hours=8)))
    )
    assert [e.event_id for e in only_start.events] == [str(e.event_id) for e in newest_first(events)[:2]]


def test_history_bounds_keep_sub_microsecond_semantics(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 4, 0, 0, 0, 5, tzinfo=UTC)
    (event,) = make_events([t0], seed=5)
    insert_events(db, portfolio_id, [event])
    bound = timestamp(t0)
    bound.nanos += 500  # half a microsecond after the event
    after_start = stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, start=bound))
    before_end = stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, end=bound))
    assert list(after_start.events) == []
    assert [e.event_id for e in before_end.events] == [str(event.event_id)]


def test_history_page_size_default_and_cap(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    events = make_events([t0 + timedelta(seconds=k) for k in range(1001)], seed=6)
    insert_events(db, portfolio_id, events)
    default = stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id))
    capped = stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_size=5000))
    assert len(default.events) == 50
    assert default.next_page_token
    assert len(capped.events) == 1000
    assert capped.next_page_token
    rest = stub.GetHistory(
        query_service_pb2.GetHistoryRequest(
            portfolio_id=portfolio_id, page_size=5000, page_token=capped.next_page_token
        )
    )
    assert [e.event_id for e in rest.events] == [str(events[0].event_id)]
    assert rest.next_page_token == ""


def test_history_of_unknown_portfolio_is_an_empty_page(stub: Any) -> None:
    response = stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id=new_portfolio()))
    assert list(response.events) == []
    assert response.next_page_token == ""


@pytest.mark.parametrize(
    "page_token", ["not a token", "eyJ2IjoxfQ", "e30", "%%%", "eyJ2IjoxLCJ0IjoxLCJlIjoieCIsInEiOiJ5In0"]
)
def test_history_malformed_page_token_is_invalid(stub: Any, page_token: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id="p", page_token=page_token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["page_token"]


def test_history_page_token_is_bound_to_the_query(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 4, 5, tzinfo=UTC)
    events = make_events([t0 + timedelta(hours=k) for k in range(4)], seed=7)
    insert_events(db, portfolio_id, events)
    first = stub.GetHistory(
        query_service_pb2.GetHistoryRequest(
            portfolio_id=portfolio_id, page_size=2, end=timestamp(t0 + timedelta(days=1))
        )
    )
    assert first.next_page_token
    changed = [
        query_service_pb2.GetHistoryRequest(portfolio_id=portfolio_id, page_token=first.next_page_token),
        query_service_pb2.GetHistoryRequest(
            portfolio_id=new_portfolio(),
            end=timestamp(t0 + timedelta(days=1)),
            page_token=first.next_page_token,
        ),
        query_service_pb2.GetHistoryRequest(
            portfolio_id=portfolio_id,
            start=timestamp(t0),
            end=timestamp(t0 + timedelta(days=1)),
            page_token=first.next_page_token,
        ),
    ]
    for request in changed:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetHistory(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(caught.value) == ["page_token"]
    # page_size may change between pages.
    second = stub.GetHistory(
        query_service_pb2.GetHistoryRequest(
            portfolio_id=portfolio_id,
            page_size=10,
            end=timestamp(t0 + timedelta(days=1)),
            page_token=first.next_page_token,
        )
    )
    assert [e.event_id for e in second.events] == [str(e.event_id) for e in newest_first(events)[2:]]


def test_history_start_not_before_end_is_invalid(stub: Any) -> None:
    moment = timestamp(datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetHistory(query_service_pb2.GetHistoryRequest(portfolio_id="p", start=moment, end=moment))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["end"]


# ----------------------------------------------------------------------------------------------------------
# GetPortfolioAnalytics
# ----------------------------------------------------------------------------------------------------------


def expected_buckets(
    events: list[Event], *, start: datetime | None, end: datetime | None, width: timedelta
) -> list[dict[str, Any]]:
    """Per-bucket truth from NumPy: dense weights over all names, previous runs from the whole history."""
    ordered = sorted(events, key=lambda e: (e.timestamp, e.event_id))
    names = sorted({n for e in ordered for n in e.weights})
    matrix = np.array([[e.weights.get(n, 0.0) for n in names] for e in ordered])
    turnover = np.concatenate([[np.nan], 0.5 * np.abs(np.diff(matrix, axis=0)).sum(axis=1)])
    in_range = np.array(
        [(start is None or e.timestamp >= start) and (end is None or e.timestamp < end) for e in ordered]
    )
    width_us = width // timedelta(microseconds=1)
    bucket = np.array([(e.timestamp - EPOCH) // timedelta(microseconds=1) // width_us * width_us for e in ordered])
    sharpe = np.array([e.sharpe_ratio for e in ordered])
    volatility = np.array([e.volatility for e in ordered])
    expected_return = np.array([e.expected_return for e in ordered])
    result = []
    for bucket_start in np.unique(bucket[in_range]):
        members = in_range & (bucket == bucket_start)
        bucket_turnover = turnover[members][~np.isnan(turnover[members])]
        result.append(
            {
                "bucket_start": EPOCH + timedelta(microseconds=int(bucket_start)),
                "run_count": int(members.sum()),
                "mean_sharpe_ratio": sharpe[members].mean(),
                "mean_volatility": volatility[members].mean(),
                "mean_expected_return": expected_return[members].mean(),
                "mean_turnover": bucket_turnover.mean() if bucket_turnover.size else 0.0,
                "max_turnover": bucket_turnover.max() if bucket_turnover.size else 0.0,
            }
        )
    return result


def assert_buckets(response: query_service_pb2.GetPortfolioAnalyticsResponse, expected: list[dict[str, Any]]) -> None:
    assert response.total_runs == sum(b["run_count"] for b in expected)
    assert len(response.buckets) == len(expected)
    for bucket, truth in zip(response.buckets, expected, strict=True):
        assert bucket.bucket_start.ToDatetime(tzinfo=UTC) == truth["bucket_start"]
        assert bucket.run_count == truth["run_count"]
        for field in (
            "mean_sharpe_ratio",
            "mean_volatility",
            "mean_expected_return",
            "mean_turnover",
            "max_turnover",
        ):
            assert getattr(bucket, field) == pytest.approx(truth[field], abs=1e-12), field


def test_analytics_against_numpy(stub: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = new_portfolio()
    rng = np.random.default_rng(8)
    t0 = datetime(2024, 6, 1, 3, tzinfo=UTC)
    offsets = sorted(int(x) for x in rng.integers(0, 6 * 86_400_000_000, size=30))
    timestamps = [t0 + timedelta(microseconds=x) for x in offsets]
    timestamps[5] = timestamps[4]  # a tie, ordered by event_id
    events = make_events(timestamps, seed=9, universe=("AAA", "BBB", "CCC", "DDD", "EEE", "FFF"))
    insert_events(db, portfolio_id, events)

    whole = stub.GetPortfolioAnalytics(query_service_pb2.GetPortfolioAnalyticsRequest(portfolio_id=portfolio_id))
    assert_buckets(whole, expected_buckets(events, start=None, end=None, width=timedelta(days=1)))

    start, end = t0 + timedelta(days=1, hours=5), t0 + timedelta(days=4, hours=17)
    width = timedelta(hours=8)
    window = stub.GetPortfolioAnalytics(
        query_service_pb2.GetPortfolioAnalyticsRequest(
            portfolio_id=portfolio_id,
            start=timestamp(start),
            end=timestamp(end),
            bucket_width=duration_pb2.Duration(seconds=8 * 3600),
        )
    )
    # The first run of the window gets its turnover against the last run before start.
    assert_buckets(window, expected_buckets(events, start=start, end=end, width=width))


def test_analytics_of_unknown_portfolio_is_empty(stub: Any) -> None:
    response = stub.GetPortfolioAnalytics(query_service_pb2.GetPortfolioAnalyticsRequest(portfolio_id=new_portfolio()))
    assert list(response.buckets) == []
    assert response.total_runs == 0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"portfolio_id": ""}, "portfolio_id"),
        ({"portfolio_id": "p", "bucket_width": duration_pb2.Duration(nanos=999_999_999)}, "bucket_width"),
        ({"portfolio_id": "p", "bucket_width": duration_pb2.Duration(seconds=-60)}, "bucket_width"),
        (
            {
                "portfolio_id": "p",
                "start": timestamp_pb2.Timestamp(seconds=100),
                "end": timestamp_pb2.Timestamp(seconds=50),
            },
            "end",
        ),
        ({"portfolio_id": "p", "start": timestamp_pb2.Timestamp(seconds=10**12)}, "start"),
    ],
)
def test_analytics_invalid_requests(stub: Any, request_fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetPortfolioAnalytics(query_service_pb2.GetPortfolioAnalyticsRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == [field]


# ----------------------------------------------------------------------------------------------------------
# Repository and interceptor edges
# ----------------------------------------------------------------------------------------------------------


def test_repository_on_a_closed_pool_is_unavailable(pg_dsn: str) -> None:
    async def scenario() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        await pool.close()
        repository = PostgresReadStore(pool)
        with pytest.raises(UnavailableError):
            await repository.get_latest("p")
        with pytest.raises(UnavailableError):
            await repository.analytics_window("p", start=None, end=None)

    asyncio.run(scenario())


class FailingServicer(query_service_pb2_grpc.OptimizationQueryServiceServicer):
    """GetLatest fails in the way named by the portfolio id."""

    async def GetLatest(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.portfolio_id == "bug":
            raise RuntimeError("secret internal detail")
        if request.portfolio_id == "infeasible":
            raise InfeasibleError(
                "sector minima exceed 1",
                precondition_violations=(
                    PreconditionViolation("SECTOR_MINIMA", "constraints.sector_limits", "1.2 > 1"),
                ),
            )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "handler's own abort")
        raise AssertionError("unreachable")


async def numbers(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"1"
    yield b"2"
    raise InvalidInputError.for_field("count", "too many")


async def unmapped(request: bytes, context: Any) -> bytes:
    raise RuntimeError("not ours")


@pytest.fixture(scope="module")
def failing_channel() -> Iterator[grpc.Channel]:
    async def configure(server: grpc.aio.Server) -> Callable[[], Awaitable[None]]:
        query_service_pb2_grpc.add_OptimizationQueryServiceServicer_to_server(FailingServicer(), server)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Numbers": grpc.unary_stream_rpc_method_handler(numbers)}
                ),
                grpc.method_handlers_generic_handler(
                    "other.v1.Service", {"Unmapped": grpc.unary_unary_rpc_method_handler(unmapped)}
                ),
            ]
        )

        async def nothing() -> None:
            return None

        return nothing

    with serve_in_thread(configure) as address, grpc.insecure_channel(address) as channel:
        yield channel


def test_unexpected_exception_is_internal_without_detail(
    failing_channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    stub = query_service_pb2_grpc.OptimizationQueryServiceStub(failing_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetLatest(query_service_pb2.GetLatestRequest(portfolio_id="bug"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert status.code == code_pb2.INTERNAL
    assert status.message == "internal error"
    (record,) = [r for r in caplog.records if r.name == "stratopt.rpc_errors"]
    assert "GetLatest" in record.getMessage()
    assert record.exc_info is not None
    assert "secret internal detail" in str(record.exc_info[1])


def test_precondition_violations_become_precondition_failure(failing_channel: grpc.Channel) -> None:
    stub = query_service_pb2_grpc.OptimizationQueryServiceStub(failing_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetLatest(query_service_pb2.GetLatestRequest(portfolio_id="infeasible"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert status.message == "sector minima exceed 1"
    (detail,) = status.details
    failure = error_details_pb2.PreconditionFailure()
    assert detail.Unpack(failure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("SECTOR_MINIMA", "constraints.sector_limits", "1.2 > 1")
    ]


def test_handler_abort_passes_through(failing_channel: grpc.Channel) -> None:
    stub = query_service_pb2_grpc.OptimizationQueryServiceStub(failing_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetLatest(query_service_pb2.GetLatestRequest(portfolio_id="other"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "handler's own abort"


def test_streaming_errors_are_mapped_after_messages(failing_channel: grpc.Channel) -> None:
    call = failing_channel.unary_stream(f"/{SERVICE}/Numbers")(b"")
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        received.extend(call)
    assert received == [b"1", b"2"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["count"]


def test_other_services_are_not_mapped(failing_channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        failing_channel.unary_unary("/other.v1.Service/Unmapped")(b"")
    assert caught.value.code() == grpc.StatusCode.UNKNOWN


def test_weight_history_is_a_table_with_one_way_turnover_against_numpy(stub: Any, db: psycopg.Connection[Any]) -> None:
    """Runs with changing name sets: the table's columns, its zeros, and turnover from NumPy (dense weights)."""
    portfolio_id = new_portfolio()
    t0 = datetime(2024, 7, 1, tzinfo=UTC)
    events = make_events([t0 + timedelta(hours=k) for k in range(6)], seed=21, universe=("AAA", "BBB", "CCC", "DDD"))
    insert_events(db, portfolio_id, events)
    names = sorted({n for e in events for n in e.weights})
    dense = np.array([[e.weights.get(n, 0.0) for n in names] for e in events])
    turnover = 0.5 * np.abs(np.diff(dense, axis=0)).sum(axis=1)  # turnover[k - 1] is run k's

    whole = stub.GetWeightHistory(query_service_pb2.GetWeightHistoryRequest(portfolio_id=portfolio_id))
    assert list(whole.symbols) == sorted({n for e in events for n, w in e.weights.items() if w != 0.0})
    assert [r.event_id for r in whole.runs] == [str(e.event_id) for e in events] and not whole.truncated
    for row, event in zip(whole.runs, events, strict=True):
        assert list(row.weights) == pytest.approx([event.weights.get(s, 0.0) for s in whole.symbols], abs=1e-15)
    assert not whole.runs[0].HasField("turnover")  # the portfolio's first run
    assert [r.turnover for r in whole.runs[1:]] == pytest.approx(turnover.tolist(), abs=1e-12)

    # A window from the third run, capped at two runs: the latest two, the first of them against its predecessor.
    window = stub.GetWeightHistory(
        query_service_pb2.GetWeightHistoryRequest(
            portfolio_id=portfolio_id, start=timestamp(t0 + timedelta(hours=2)), max_runs=2
        )
    )
    assert window.truncated and [r.event_id for r in window.runs] == [str(e.event_id) for e in events[4:]]
    assert [r.turnover for r in window.runs] == pytest.approx(turnover[3:].tolist(), abs=1e-12)

    with pytest.raises(grpc.RpcError) as caught:
        stub.GetWeightHistory(query_service_pb2.GetWeightHistoryRequest(portfolio_id=portfolio_id, max_runs=10_001))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_request_fields(caught.value) == ["max_runs"]


def test_compare_portfolios_side_by_side_against_numpy(stub: Any, db: psycopg.Connection[Any]) -> None:
    t0 = datetime(2024, 8, 1, tzinfo=UTC)
    first, second, empty = new_portfolio(), new_portfolio(), new_portfolio()
    runs = {
        first: make_events([t0 + timedelta(hours=k) for k in range(5)], seed=31),
        second: make_events([t0 + timedelta(hours=k, minutes=30) for k in range(3)], seed=32),
    }
    for portfolio_id, events in runs.items():
        insert_events(db, portfolio_id, events)
    start = t0 + timedelta(hours=1)  # the first run of `first` is before the range: its second has a turnover
    answer = stub.ComparePortfolios(
        query_service_pb2.ComparePortfoliosRequest(portfolio_ids=[second, empty, first], start=timestamp(start))
    )
    assert [c.portfolio_id for c in answer.portfolios] == [second, empty, first]
    by_id = {c.portfolio_id: c for c in answer.portfolios}
    assert by_id[empty].run_count == 0 and not by_id[empty].HasField("latest")
    for portfolio_id, events in runs.items():
        names = sorted({n for e in events for n in e.weights})
        dense = np.array([[e.weights.get(n, 0.0) for n in names] for e in events])
        turnover = np.concatenate([[np.nan], 0.5 * np.abs(np.diff(dense, axis=0)).sum(axis=1)])
        inside = [k for k, e in enumerate(events) if e.timestamp >= start]
        column = by_id[portfolio_id]
        assert column.run_count == len(inside)
        assert column.mean_sharpe_ratio == pytest.approx(np.mean([events[k].sharpe_ratio for k in inside]), abs=1e-12)
        assert column.mean_volatility == pytest.approx(np.mean([events[k].volatility for k in inside]), abs=1e-12)
        valid = [turnover[k] for k in inside if not np.isnan(turnover[k])]
        assert column.mean_turnover == pytest.approx(np.mean(valid), abs=1e-12)
        assert column.max_turnover == pytest.approx(np.max(valid), abs=1e-12)
        assert column.latest.event_id == str(events[-1].event_id)

    with pytest.raises(grpc.RpcError) as caught:
        stub.ComparePortfolios(query_service_pb2.ComparePortfoliosRequest(portfolio_ids=[first, first]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["portfolio_ids[1]"]
