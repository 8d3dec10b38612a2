"""Issue 9, item 8: PostgreSQL killed (``kill -9``) or frozen (SIGSTOP) under a stream of Optimize calls.

A cluster of its own and a real server on it with short timeouts (2 s statements, 1 s connects). Asserted
against the database itself: clients see only OK or UNAVAILABLE (never INTERNAL/UNKNOWN) within a bound, the
health service goes NOT_SERVING and back to SERVING, every acknowledged request has exactly one result and one
event, nothing is duplicated or orphaned, and a retry of every failed request_id succeeds exactly once (also
when the failed call had in fact committed: the retry replays the stored result).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest

from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import query_service_pb2_grpc as query_grpc
from stratopt_cli.client import channel
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.runtime import DatabaseTimeouts
from stratopt_cli.server import ServerThread, StratoptServer
from tests.stratopt_cli.faults import (
    freeze_cluster,
    health_status,
    kill_cluster,
    moments_request,
    throwaway_cluster,
    wait_for_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUTS = DatabaseTimeouts(statement_s=2.0, connect_s=1.0)
BOUND_S = 2 * TIMEOUTS.command_s + TIMEOUTS.connect_s + 2.0
"""Longest a call may wait for UNAVAILABLE: a statement and its rollback both timing out, a connect, slack."""
HEALTH_BOUND_S = 0.25 + 2 * (TIMEOUTS.connect_s + 1) + 1.0
"""Longest the health service may take to notice: a probe interval and a timed-out probe (each bounded)."""
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


@dataclass
class Outcome:
    request_id: str
    portfolio_id: str
    code: grpc.StatusCode
    elapsed_s: float
    message: str = ""
    event_id: str = ""


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedPostgres]:
    with throwaway_cluster("stratopt-fault-") as pg:
        yield pg


@pytest.fixture(scope="module")
def target(cluster: EmbeddedPostgres) -> Iterator[str]:
    server = StratoptServer(cluster.dsn, address="127.0.0.1:0", workers=1, timeouts=TIMEOUTS, health_interval_s=0.25)
    thread = ServerThread(server)
    thread.start()
    try:
        yield thread.target
    finally:
        thread.stop()


def _call(stub: cmd_grpc.OptimizationCommandServiceStub, portfolio_id: str, request_id: str) -> Outcome:
    start = time.monotonic()
    try:  # no deadline: the server's own timeouts must end the call
        response = stub.Optimize(moments_request(portfolio_id, request_id))
    except grpc.RpcError as error:
        return Outcome(request_id, portfolio_id, error.code(), time.monotonic() - start, error.details() or "")
    event_id = response.optimization_metadata.event_id
    return Outcome(request_id, portfolio_id, grpc.StatusCode.OK, time.monotonic() - start, event_id=event_id)


def _stream(target: str, name: str, stop: threading.Event, outcomes: list[Outcome]) -> None:
    with channel(target) as ch:
        stub = cmd_grpc.OptimizationCommandServiceStub(ch)
        i = 0
        while not stop.is_set():
            outcome = _call(stub, f"fault-{name}", f"{name}-{i}")
            outcomes.append(outcome)
            i += 1
            time.sleep(0.01 if outcome.code == grpc.StatusCode.OK else 0.25)  # a client backs off on UNAVAILABLE


def _health_log(target: str, stop: threading.Event, log: list[str]) -> None:
    with channel(target) as ch:
        while not stop.is_set():
            status = health_status(ch)
            if not log or log[-1] != status:
                log.append(status)
            time.sleep(0.05)


def _rows(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


def _no_infrastructure(message: str, cluster: EmbeddedPostgres) -> None:
    assert str(cluster.data_dir) not in message
    assert "5432" not in message
    assert "127.0.0.1" not in message


def test_postgres_killed_mid_stream_loses_and_duplicates_nothing(cluster: EmbeddedPostgres, target: str) -> None:
    with channel(target) as ch:
        wait_for_status(ch, "SERVING", timeout=10)
    stop, stop_health = threading.Event(), threading.Event()
    outcomes: list[Outcome] = []
    statuses: list[str] = []
    clients = [threading.Thread(target=_stream, args=(target, f"k{n}", stop, outcomes)) for n in range(4)]
    watcher = threading.Thread(target=_health_log, args=(target, stop_health, statuses))
    watcher.start()
    for client in clients:
        client.start()
    time.sleep(2.0)
    kill_cluster(cluster)
    time.sleep(3.0)
    cluster.start()  # crash recovery, then the server reconnects on its own
    with channel(target) as ch:
        wait_for_status(ch, "SERVING", timeout=30)
    time.sleep(1.5)
    stop.set()
    for client in clients:
        client.join(60)
    stop_health.set()
    watcher.join(10)

    codes = {o.code for o in outcomes}
    assert codes <= ALLOWED, {o.code.name: o.message for o in outcomes if o.code not in ALLOWED}
    failed = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    acknowledged = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    assert failed, "the outage should have failed some calls"
    assert len(acknowledged) > 8
    assert max(o.elapsed_s for o in failed) <= BOUND_S
    for o in failed:
        _no_infrastructure(o.message, cluster)
    print(  # the figures, for `pytest -s`
        f"kill -9: {len(acknowledged)} acknowledged, {len(failed)} UNAVAILABLE"
        f" (slowest {max(o.elapsed_s for o in failed):.2f} s), health {' -> '.join(statuses)}"
    )
    # Health told the truth: SERVING, NOT_SERVING during the outage, SERVING again.
    assert "NOT_SERVING" in statuses
    assert statuses[0] == "SERVING"
    assert statuses[-1] == "SERVING"

    dsn = cluster.dsn
    # Every acknowledged request: exactly one result row, and one event, under the acknowledged event id.
    results: dict[str, list[str]] = {}
    for request_id, event_id in _rows(dsn, "SELECT request_id, event_id::text FROM optimization_results"):
        results.setdefault(request_id, []).append(event_id)
    events: dict[str, int] = dict(_rows(dsn, "SELECT event_id::text, count(*) FROM portfolio_optimized GROUP BY 1"))
    for o in acknowledged:
        assert results.get(o.request_id) == [o.event_id], o.request_id
        assert events.get(o.event_id) == 1, o.request_id

    # Retry every failed request_id with the same request: OK exactly once, replayed if it had committed.
    with channel(target) as ch:
        stub = cmd_grpc.OptimizationCommandServiceStub(ch)
        retried = [_call(stub, o.portfolio_id, o.request_id) for o in failed]
        again = [_call(stub, o.portfolio_id, o.request_id) for o in failed]
    assert all(r.code == grpc.StatusCode.OK for r in retried), {r.request_id: r.code.name for r in retried}
    assert [r.event_id for r in again] == [r.event_id for r in retried]  # a repeat replays, writes nothing
    sent = {o.request_id for o in outcomes}
    per_request = dict(_rows(dsn, "SELECT request_id, count(*) FROM optimization_results GROUP BY request_id"))
    assert set(per_request) == sent
    assert set(per_request.values()) == {1}
    # No orphans: every result has its event and configuration, every event its result.
    orphans = _rows(
        dsn,
        "SELECT count(*) FROM optimization_results r"
        " LEFT JOIN portfolio_optimized e ON e.event_id = r.event_id"
        " LEFT JOIN optimization_configurations c"
        "   ON c.portfolio_id = r.portfolio_id AND c.version = r.configuration_version"
        " WHERE e.event_id IS NULL OR c.portfolio_id IS NULL",
    )
    assert orphans == [(0,)]
    events_without_result = _rows(
        dsn,
        "SELECT count(*) FROM portfolio_optimized e"
        " WHERE NOT EXISTS (SELECT 1 FROM optimization_results r WHERE r.event_id = e.event_id)",
    )
    assert events_without_result == [(0,)]
    assert _rows(dsn, "SELECT count(*) FROM portfolio_optimized") == [(len(sent),)]


def test_frozen_database_answers_unavailable_within_the_bound(cluster: EmbeddedPostgres, target: str) -> None:
    with channel(target) as ch:
        wait_for_status(ch, "SERVING", timeout=30)
        stub = cmd_grpc.OptimizationCommandServiceStub(ch)
        queries = query_grpc.OptimizationQueryServiceStub(ch)
        assert _call(stub, "frozen", "frozen-warm").code == grpc.StatusCode.OK
        freeze_cluster(cluster)
        try:
            outcomes: list[Outcome] = []
            query_codes: list[tuple[grpc.StatusCode, float, str]] = []

            def optimize(n: int) -> None:
                outcomes.append(_call(stub, "frozen", f"frozen-{n}"))

            def latest() -> None:
                start = time.monotonic()
                try:  # no deadline
                    queries.GetLatest(query_pb.GetLatestRequest(portfolio_id="frozen"))
                    query_codes.append((grpc.StatusCode.OK, time.monotonic() - start, ""))
                except grpc.RpcError as error:
                    query_codes.append((error.code(), time.monotonic() - start, error.details() or ""))

            threads = [threading.Thread(target=optimize, args=(n,)) for n in range(3)]
            threads.append(threading.Thread(target=latest))
            for thread in threads:
                thread.start()
            noticed = wait_for_status(ch, "NOT_SERVING", timeout=HEALTH_BOUND_S)
            for thread in threads:
                thread.join(BOUND_S + 5)
            assert not any(thread.is_alive() for thread in threads), "a call hung on the frozen database"
        finally:
            freeze_cluster(cluster, thaw=True)
        assert noticed <= HEALTH_BOUND_S
        print(  # the figures, for `pytest -s`
            f"SIGSTOP: health NOT_SERVING after {noticed:.2f} s; Optimize UNAVAILABLE after"
            f" {', '.join(f'{o.elapsed_s:.2f}' for o in outcomes)} s; GetLatest after {query_codes[0][1]:.2f} s"
        )
        assert [o.code for o in outcomes] == [grpc.StatusCode.UNAVAILABLE] * 3, [o.message for o in outcomes]
        assert max(o.elapsed_s for o in outcomes) <= BOUND_S
        [(code, elapsed, message)] = query_codes
        assert code == grpc.StatusCode.UNAVAILABLE
        assert elapsed <= BOUND_S
        for text in [message, *(o.message for o in outcomes)]:
            _no_infrastructure(text, cluster)
        wait_for_status(ch, "SERVING", timeout=30)
        retried = [_call(stub, "frozen", f"frozen-{n}") for n in range(3)]
        assert [r.code for r in retried] == [grpc.StatusCode.OK] * 3
    counts = _rows(
        cluster.dsn,
        "SELECT count(*), count(DISTINCT request_id) FROM optimization_results WHERE portfolio_id = 'frozen'",
    )
    assert counts == [(4, 4)]
