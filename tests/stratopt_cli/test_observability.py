"""Metrics, traces and logs of a real server: scraped over HTTP, exported in memory, parsed as JSON lines.

One server (both sides, one solver worker) with the metrics endpoint on a free loopback port, tracing into an
in-memory exporter and a JSON log handler, on the session's TimescaleDB. Counters are read before and after real
calls over a real channel and compared with what the calls and the database say happened.
"""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc
from stratopt.v1 import types_pb2 as pb
from stratopt_cli.client import channel
from stratopt_cli.logs import log_handler
from stratopt_cli.metrics import MetricsEndpoint
from stratopt_cli.server import ServerThread, StratoptServer
from stratopt_cli.tracing import Tracing

pytestmark = pytest.mark.integration

COMMAND = "stratopt.v1.OptimizationCommandService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Observed:
    target: str
    metrics_url: str
    spans: InMemorySpanExporter
    log: io.StringIO
    stub: cmd_grpc.OptimizationCommandServiceStub
    trading: trading_grpc.TradingCommandServiceStub


@pytest.fixture(scope="module")
def observed(pg_dsn: str) -> Iterator[Observed]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = StratoptServer(
        pg_dsn,
        address="127.0.0.1:0",
        workers=1,
        metrics_endpoint=MetricsEndpoint("127.0.0.1:0"),
        tracing=Tracing(provider),
    )
    stream = io.StringIO()
    handler = log_handler("json", stream)
    access = logging.getLogger("stratopt.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    thread = ServerThread(server)
    thread.start()
    try:
        with channel(thread.target) as ch:
            yield Observed(
                thread.target,
                f"http://127.0.0.1:{server.metrics_port}/metrics",
                exporter,
                stream,
                cmd_grpc.OptimizationCommandServiceStub(ch),
                trading_grpc.TradingCommandServiceStub(ch),
            )
    finally:
        thread.stop()
        access.removeHandler(handler)
        access.setLevel(level)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(url: str, done: Callable[[Samples], bool], timeout_s: float = 10.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    samples = scrape(url)
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.01)
        samples = scrape(url)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moments_request(portfolio_id: str, request_id: str = "") -> cmd_pb.OptimizeRequest:
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id, request_id=request_id, objective=pb.OBJECTIVE_MIN_VOLATILITY
    )
    request.strategies.add(symbol="X")
    request.strategies.add(symbol="Y")
    request.moments.expected_returns.extend([0.05, 0.07])
    request.moments.covariance.extend([0.04, 0.01, 0.01, 0.09])
    return request


def test_rpc_solver_event_and_pool_metrics_move_by_the_calls(observed: Observed, db: psycopg.Connection[Any]) -> None:
    tag = uuid.uuid4().hex[:8]
    before = scrape(observed.metrics_url)
    started = time.perf_counter()
    responses = [observed.stub.Optimize(moments_request(f"obs-{tag}-{i}"), timeout=60) for i in range(2)]
    bad = moments_request(f"obs-{tag}-bad")
    del bad.strategies[1]  # one strategy: INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        observed.stub.Optimize(bad, timeout=60)
    wall_s = time.perf_counter() - started
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rpc = {"grpc_type": "unary", "grpc_service": COMMAND, "grpc_method": "Optimize"}
    # An aborted call's status reaches the client before its handler unwinds and is counted: wait for it.
    after = scrape_until(
        observed.metrics_url,
        lambda now: (
            value(now, "grpc_server_handled_total", **rpc, grpc_code="INVALID_ARGUMENT")
            > value(before, "grpc_server_handled_total", **rpc, grpc_code="INVALID_ARGUMENT")
        ),
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("grpc_server_started_total", **rpc) == 3
    assert delta("grpc_server_handled_total", **rpc, grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", **rpc, grpc_code="INVALID_ARGUMENT") == 1
    assert delta("grpc_server_handling_seconds_count", **rpc, grpc_code="OK") == 2
    assert delta("grpc_server_handling_seconds_count", **rpc, grpc_code="INVALID_ARGUMENT") == 1
    assert 0 < delta("grpc_server_handling_seconds_sum", **rpc, grpc_code="OK") < wall_s
    # Every bucket at or above 60 s holds both OK calls; the +Inf bucket equals the count.
    assert delta("grpc_server_handling_seconds_bucket", **rpc, grpc_code="OK", le="60.0") == 2
    assert delta("grpc_server_handling_seconds_bucket", **rpc, grpc_code="OK", le="+Inf") == 2

    paths = {r.optimization_metadata.solve_path for r in responses}
    assert len(paths) == 1 and "" not in paths
    solver = {"method": "MEAN_VARIANCE", "objective": "MIN_VOLATILITY", "solve_path": paths.pop()}
    assert delta("stratopt_solver_duration_seconds_count", **solver) == 2
    reported_s = sum(r.optimization_metadata.optimization_time_ms for r in responses) / 1000
    assert delta("stratopt_solver_duration_seconds_sum", **solver) == pytest.approx(reported_s, rel=1e-6)

    stored = db.execute(
        "SELECT count(*) FROM portfolio_optimized WHERE portfolio_id LIKE %s", (f"obs-{tag}-%",)
    ).fetchone()
    assert stored is not None and stored[0] == 2
    event = {"table": "portfolio_optimized", "event_type": "PORTFOLIO_OPTIMIZED"}
    assert delta("stratopt_events_written_total", **event) == 2

    assert value(after, "stratopt_db_pool_max_connections") == 10
    assert 1 <= value(after, "stratopt_db_pool_connections") <= 10
    assert 0 <= value(after, "stratopt_db_pool_idle_connections") <= value(after, "stratopt_db_pool_connections")
    main, heavy = {"pool": "main"}, {"pool": "heavy"}
    assert value(after, "stratopt_solver_workers", **main) == 1
    assert value(after, "stratopt_solver_pending", **main) == 0
    assert value(after, "stratopt_solve_queue_admitted", **main) == 0  # every call has left the queue
    assert value(after, "stratopt_solve_queue_capacity", **main) == 1 + 16  # one worker + the default 16 per worker
    assert ("stratopt_solver_workers", frozenset(heavy.items())) in after  # no heavy pool here: zeros
    assert value(after, "stratopt_solver_workers", **heavy) == 0
    assert value(after, "stratopt_solver_jobs_total", **main) >= 2
    assert ("stratopt_solver_worker_restarts_total", frozenset()) in after
    assert value(after, "process_resident_memory_bytes") > 0


def test_client_streaming_call_is_counted_with_its_type(observed: Observed) -> None:
    before = scrape(observed.metrics_url)
    symbol = f"OBS{uuid.uuid4().hex[:6]}"

    def bars() -> Iterator[cmd_pb.IngestMarketDataRequest]:
        for day in range(2):
            request = cmd_pb.IngestMarketDataRequest()
            bar = request.bars.add(symbol=symbol, price=100.0 + day)
            bar.timestamp.FromSeconds(1_700_000_000 + day * 86400)
            yield request

    response = observed.stub.IngestMarketData(bars(), timeout=60)
    assert response.rows_written == 2
    after = scrape(observed.metrics_url)
    labels = {"grpc_type": "client_stream", "grpc_service": COMMAND, "grpc_method": "IngestMarketData"}
    assert (
        value(after, "grpc_server_handled_total", **labels, grpc_code="OK")
        - value(before, "grpc_server_handled_total", **labels, grpc_code="OK")
        == 1
    )


def test_allocation_events_are_counted_as_rebalance_events(observed: Observed, db: psycopg.Connection[Any]) -> None:
    portfolio = f"obs-alloc-{uuid.uuid4().hex[:8]}"
    labels = {"table": "rebalance_events", "event_type": "SHARES_ALLOCATED"}
    before = value(scrape(observed.metrics_url), "stratopt_events_written_total", **labels)
    for budget in (10_000.0, 20_000.0):
        request = trading_pb.AllocateSharesRequest(portfolio_id=portfolio, extra_cash=budget, bypass_cache=True)
        request.targets.add(symbol="AAA", target_weight=0.5, price=50.0)
        request.targets.add(symbol="BBB", target_weight=0.5, price=20.0)
        observed.trading.AllocateShares(request, timeout=60)
    after = value(scrape(observed.metrics_url), "stratopt_events_written_total", **labels)
    row = db.execute("SELECT count(*) FROM rebalance_events WHERE portfolio_id = %s", (portfolio,)).fetchone()
    assert row is not None and row[0] == 2
    assert after - before == 2


def test_request_id_is_returned_and_logged_with_the_trace_id(observed: Observed) -> None:
    request_id = f"obs-rid-{uuid.uuid4().hex[:8]}"
    observed.spans.clear()
    _, call = observed.stub.Optimize.with_call(moments_request("obs-log", request_id), timeout=60)
    assert ("x-request-id", request_id) in tuple(call.trailing_metadata())

    # Without a request_id field value the server makes one up and still returns it, errors included.
    bad = moments_request("obs-log-bad")
    del bad.strategies[1]
    with pytest.raises(grpc.RpcError) as error:
        observed.stub.Optimize(bad, timeout=60)
    trailers = dict(error.value.trailing_metadata())  # type: ignore[attr-defined]
    generated = trailers["x-request-id"]
    assert "grpc-status-details-bin" in trailers  # the error's details are still there
    assert len(generated) == 32 and int(generated, 16) >= 0

    # An aborted call's status reaches the client before its handler unwinds and writes the line: wait for it.
    deadline = time.monotonic() + 10
    while generated not in observed.log.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [json.loads(line) for line in observed.log.getvalue().splitlines()]
    ok = [line for line in lines if line.get("request_id") == request_id]
    assert len(ok) == 1
    assert ok[0]["logger"] == "stratopt.access"
    assert ok[0]["grpc_method"] == f"/{COMMAND}/Optimize" and ok[0]["grpc_code"] == "OK"
    assert ok[0]["duration_ms"] > 0 and ok[0]["level"] == "INFO"
    failed = [line for line in lines if line.get("request_id") == generated]
    assert len(failed) == 1 and failed[0]["grpc_code"] == "INVALID_ARGUMENT"

    def traced() -> set[str]:
        spans = observed.spans.get_finished_spans()
        return {format(s.context.trace_id, "032x") for s in spans if s.name == f"/{COMMAND}/Optimize"}

    while len(traced()) < 2 and time.monotonic() < deadline:  # the aborted call's span ends as it unwinds
        time.sleep(0.01)
    assert {ok[0]["trace_id"], failed[0]["trace_id"]} == traced()


def test_optimize_has_a_server_span_with_database_spans_in_its_trace(observed: Observed) -> None:
    observed.spans.clear()
    observed.stub.Optimize(moments_request(f"obs-trace-{uuid.uuid4().hex[:8]}"), timeout=60)
    spans = observed.spans.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER and s.name == f"/{COMMAND}/Optimize"]
    assert len(servers) == 1
    server = servers[0]
    assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 0
    # The health monitor's probe (SELECT 1 every second, on its own connection) is traced too, in a trace of its
    # own: one may finish while the call runs.
    database = [
        s
        for s in spans
        if s.attributes is not None
        and s.attributes.get("db.system") == "postgresql"
        and s.attributes.get("db.statement") != "SELECT 1"
    ]
    statements = " ".join(str(s.attributes.get("db.statement", "")) for s in database if s.attributes)
    assert "INSERT INTO portfolio_optimized" in statements
    by_id = {s.context.span_id: s for s in spans}
    for span in database:
        assert span.context.trace_id == server.context.trace_id
        parent = span.parent
        while parent is not None and parent.span_id != server.context.span_id:
            parent = by_id[parent.span_id].parent
        assert parent is not None, f"{span.name} is not under the server span"


def test_server_span_continues_the_callers_trace(observed: Observed) -> None:
    observed.spans.clear()
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    observed.stub.Optimize(
        moments_request(f"obs-parent-{uuid.uuid4().hex[:8]}"),
        timeout=60,
        metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),),
    )
    servers = [s for s in observed.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 1
    assert format(servers[0].context.trace_id, "032x") == trace_id
    assert servers[0].parent is not None and format(servers[0].parent.span_id, "016x") == parent_id


def test_calls_that_outlive_their_deadline_are_never_counted_unknown(observed: Observed) -> None:
    """Deadlines of 1-20 ms on real calls: each ends OK or DEADLINE_EXCEEDED, on the client and in the metrics.

    A handler that failed after its deadline had passed could not send its status; grpc's error escaped the
    interceptors and the call was counted UNKNOWN (3-6 of 384 such calls before the fix).
    """
    import asyncio
    import random

    rng = random.Random(20261205)
    deadlines = [rng.uniform(0.001, 0.02) for _ in range(256)]

    async def burst() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(observed.target) as ch:
            stub = cmd_grpc.OptimizationCommandServiceStub(ch)

            async def one(i: int) -> grpc.StatusCode:
                try:
                    await stub.Optimize(moments_request(f"late-{i % 64}"), timeout=deadlines[i])
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            codes: list[grpc.StatusCode] = []
            for start in range(0, len(deadlines), 64):
                codes += await asyncio.gather(*(one(i) for i in range(start, start + 64)))
            return codes

    codes = asyncio.run(burst())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    labels = {"grpc_type": "unary", "grpc_service": COMMAND, "grpc_method": "Optimize"}
    samples = scrape(observed.metrics_url)
    assert value(samples, "grpc_server_handled_total", **labels, grpc_code="UNKNOWN") == 0
    assert value(samples, "grpc_server_handled_total", **labels, grpc_code="INTERNAL") == 0
