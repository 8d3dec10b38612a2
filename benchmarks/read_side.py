"""The query side at scale: analytics, GetLatest and GetHistory over 1 M stored events (issue 11's targets).

What is measured
----------------
A throwaway PostgreSQL + TimescaleDB cluster is migrated and seeded (:func:`seed`) with ``--events`` generated
``portfolio_optimized`` events spread over ``--portfolios`` portfolios (default 1 M over 1,000: one event per
portfolio every 10 minutes, oldest first, 20 names with Dirichlet weights), plus one **heavy** portfolio with
``--heavy-events`` events (default 100,000: the size at which the first implementation took 8-10 s). Rows go in
with ``COPY``, each with its one-way turnover against the previous run computed with NumPy (what the table's
triggers of migration ``0017_event_turnover`` store; they are skipped while seeding, for speed). Then
``stratopt serve`` runs on that database and a gRPC client measures:

1. ``GetPortfolioAnalytics`` (1-day buckets, whole history) of ``--analytics-portfolios`` random portfolios and
   of the heavy one, one call at a time: p50, p99 and max per call. Beside it, on the same portfolios and in the
   same run, **the previous implementation**: every run of the window read through asyncpg into Polars, turnover
   joined in Polars and buckets aggregated in DuckDB (``PostgresReadStore.analytics_window`` +
   ``query_side.analytics.portfolio_analytics``, in this process; no gRPC). Both answers are compared (bucket
   counts and means within 1e-9).
2. ``GetLatest`` and ``GetHistory`` (first page of 50, newest first) of random portfolios at ``--concurrency``
   closed-loop clients (default 32) for ``--duration`` seconds each: calls per second, p50 and p99.

3. The same two RPCs in an **open loop**: the ``--concurrency`` clients together send ``--rates`` calls per second
   on a fixed schedule (default GetLatest at 250, 500 and 1,000 calls/s, GetHistory at 100, 200 and 400 calls/s:
   a latency-throughput curve), each latency measured from its scheduled start. A closed loop of 32 clients
   measures saturation: its latency is about 32 / throughput (Little's law), so a 5 ms p99 there needs more than
   6,400 calls/s; the open loop measures the latency at a given load.

Beside each latency line, ``CPU ms``: the server process's CPU time (user + system, ``/proc``) per call over that
phase — what a call costs the query replica, a figure that other load on the machine disturbs much less than
latency.

The server is a query replica (``stratopt serve --side query``, as the Helm chart deploys the read side; ``--side
both`` adds the command side's workers and background loops to the same process). ``GetHistory`` keeps the
serialized events it served (``query_side.event_cache``, ``--event-cache`` sets the size, 0 turns it off): the
closed loop reads each portfolio's first page for the first time (decoding its rows), later calls find them kept.
Then, unless ``--no-baseline``, a second server on the same database with the cache off (every row decoded, as
before the cache) runs the GetHistory phases again, beside the current figures.

Targets (issue 11): analytics < 1 s, GetLatest p99 < 5 ms, GetHistory first page p99 < 20 ms at 32 clients.
Everything runs on this machine's two cores, the load generator included; the printout gives the load average.

Run
---
::

    uv run python -m benchmarks.read_side                                   # 1 M events, ~5 minutes
    uv run python -m benchmarks.read_side --events 100000 --portfolios 100 --heavy-events 20000 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import numpy as np

from benchmarks.load import embedded_database, serving
from benchmarks.optimize_latency import progress
from query_side.analytics import events_frame, portfolio_analytics
from query_side.repository import PostgresReadStore
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import query_service_pb2_grpc as query_grpc

T0 = datetime(2020, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)
NAMES = tuple(f"S{i:02d}" for i in range(20))
COLUMNS = (
    "event_id", "timestamp", "portfolio_id", "result_id", "configuration_version", "request_id", "objective",
    "method", "weights", "expected_return", "volatility", "sharpe_ratio", "metadata", "turnover",
)  # fmt: skip
HEAVY = "heavy"
TARGETS_MS = {"analytics": 1000.0, "GetLatest p99": 5.0, "GetHistory p99": 20.0}


def portfolio_name(k: int) -> str:
    """The k-th seeded portfolio's id."""
    return f"p{k:05d}"


def _rows(portfolio_id: str, count: int, rng: np.random.Generator) -> list[tuple[object, ...]]:
    """``count`` consecutive runs of a portfolio from T0, with their one-way turnover (None for the first)."""
    weights = rng.dirichlet(np.ones(len(NAMES)), size=count).round(6)
    stats = rng.uniform([0.02, 0.08, 0.1], [0.2, 0.3, 1.5], size=(count, 3))
    turnover = [None, *(0.5 * np.abs(np.diff(weights, axis=0)).sum(axis=1)).tolist()]
    return [
        (
            uuid.uuid4(),
            T0 + k * STEP,
            portfolio_id,
            uuid.uuid4(),
            1,
            None,
            "OBJECTIVE_MAX_SHARPE",
            "OPTIMIZATION_METHOD_MEAN_VARIANCE",
            json.dumps(dict(zip(NAMES, weights[k].tolist(), strict=True))),
            float(stats[k, 0]),
            float(stats[k, 1]),
            float(stats[k, 2]),
            '{"schema_version": 1}',
            turnover[k],
        )
        for k in range(count)
    ]


async def _seed(dsn: str, events: int, portfolios: int, heavy_events: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    per_portfolio = max(1, events // portfolios)
    conn = await asyncpg.connect(dsn)
    try:
        # Seeding speed: the rows carry their turnover (computed above with NumPy, by the same definition) and
        # the table's turnover triggers are skipped for this session (replica role; the cluster's superuser).
        # tests/query_side/test_read_store.py checks the triggers against the same definition.
        await conn.execute("SET session_replication_role = replica")
        started = time.perf_counter()
        written = 0
        for k in range(portfolios):
            rows = _rows(portfolio_name(k), per_portfolio, rng)
            await conn.copy_records_to_table("portfolio_optimized", records=rows, columns=COLUMNS)
            written += len(rows)
            if (k + 1) % max(1, portfolios // 10) == 0:
                progress(f"seeded {written:,} events ({time.perf_counter() - started:.0f} s)")
        if heavy_events:
            rows = _rows(HEAVY, heavy_events, rng)
            await conn.copy_records_to_table("portfolio_optimized", records=rows, columns=COLUMNS)
            written += len(rows)
        # The latest read model, as the command side keeps it.
        await conn.execute(
            """INSERT INTO latest_portfolio_optimizations (event_id, "timestamp", portfolio_id, result_id,
                   configuration_version, request_id, objective, method, weights, expected_return, volatility,
                   sharpe_ratio, metadata)
               SELECT DISTINCT ON (portfolio_id) event_id, "timestamp", portfolio_id, result_id,
                   configuration_version, request_id, objective, method, weights, expected_return, volatility,
                   sharpe_ratio, metadata
               FROM portfolio_optimized ORDER BY portfolio_id, "timestamp" DESC, event_id DESC"""
        )
        await conn.execute("ANALYZE portfolio_optimized")
        progress(f"seeded {written:,} events in {time.perf_counter() - started:.0f} s")
    finally:
        await conn.close()


def seed(dsn: str, *, events: int, portfolios: int, heavy_events: int, seed: int = 0) -> None:
    """Store generated events (module docstring) and the latest read model in the database at ``dsn``."""
    asyncio.run(_seed(dsn, events, portfolios, heavy_events, seed))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(samples_ms: list[float]) -> tuple[float, float, float]:
    p50, p99 = np.percentile(samples_ms, [50, 99])
    return float(p50), float(p99), float(max(samples_ms))


async def _analytics(target: str, dsn: str, portfolios: list[str]) -> list[str]:
    lines = [f"{'GetPortfolioAnalytics':<26} {'calls':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  events/call"]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    store = PostgresReadStore(pool)
    width = timedelta(days=1)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = query_grpc.OptimizationQueryServiceStub(channel)
            for label, group in (("random portfolios", portfolios), ("heavy portfolio", [HEAVY])):
                ours: list[float] = []
                previous: list[float] = []
                sizes = []
                for portfolio_id in group:
                    request = query_pb.GetPortfolioAnalyticsRequest(portfolio_id=portfolio_id)
                    request.bucket_width.FromTimedelta(width)
                    started = time.perf_counter()
                    answer = await stub.GetPortfolioAnalytics(request)
                    ours.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    window = await store.analytics_window(portfolio_id, start=None, end=None)
                    reference = await asyncio.to_thread(
                        portfolio_analytics, events_frame(window.runs), bucket_width=width
                    )
                    previous.append((time.perf_counter() - started) * 1000)
                    sizes.append(answer.total_runs)
                    assert answer.total_runs == reference.total_runs, portfolio_id
                    for got, want in zip(answer.buckets, reference.buckets, strict=True):
                        assert got.run_count == want.run_count
                        assert abs(got.mean_sharpe_ratio - want.mean_sharpe_ratio) < 1e-9
                        assert abs(got.mean_turnover - (want.mean_turnover or 0.0)) < 1e-9
                for name, samples in (("time_bucket in TimescaleDB", ours), ("previous: Polars + DuckDB", previous)):
                    p50, p99, worst = _percentiles(samples)
                    lines.append(
                        f"  {label + ', ' + name:<50} {len(samples):>5} {p50:>9.1f} {p99:>9.1f} {worst:>9.1f}"
                        f"  {int(np.mean(sizes)):,}"
                    )
                lines.append(
                    f"  {label}: previous / now (median) = {np.median(previous) / np.median(ours):.1f}x; "
                    f"target < {TARGETS_MS['analytics']:.0f} ms per call: "
                    f"{'met' if max(ours) < TARGETS_MS['analytics'] else 'NOT met'}"
                )
    finally:
        await pool.close()
    return lines


async def _load(
    target: str, pid: int, portfolios: int, concurrency: int, duration: float, rpcs: tuple[str, ...]
) -> list[str]:
    lines = [f"{'rpc':<12} {'clients':>7} {'calls/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms':>7}  target"]
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, concurrency // 16))]
    try:
        stubs = [query_grpc.OptimizationQueryServiceStub(c) for c in channels]
        for rpc in rpcs:
            samples: list[float] = []
            cpu_before = process_cpu_s(pid)
            stop = time.perf_counter() + duration

            async def client(k: int, rpc: str = rpc, samples: list[float] = samples, stop: float = stop) -> None:
                stub = stubs[k % len(stubs)]
                rng = random.Random(k)
                while time.perf_counter() < stop:
                    portfolio_id = portfolio_name(rng.randrange(portfolios))
                    started = time.perf_counter()
                    if rpc == "GetLatest":
                        await stub.GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id))
                    else:
                        await stub.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id))
                    samples.append((time.perf_counter() - started) * 1000)

            await asyncio.gather(*(client(k) for k in range(concurrency)))
            cpu_ms = (process_cpu_s(pid) - cpu_before) * 1000 / len(samples)
            p50, p99, _ = _percentiles(samples)
            target_ms = TARGETS_MS[f"{rpc} p99"]
            verdict = f"p99 < {target_ms:.0f} ms: {'met' if p99 < target_ms else 'NOT met'}"
            lines.append(
                f"{rpc:<12} {concurrency:>7} {len(samples) / duration:>9.0f} {p50:>9.2f} {p99:>9.2f} {cpu_ms:>7.2f}"
                f"  {verdict}"
            )
    finally:
        for channel in channels:
            await channel.close(None)
    return lines


async def _paced(
    target: str, pid: int, portfolios: int, concurrency: int, rates: list[tuple[str, float]], duration: float
) -> list[str]:
    """Open loop: ``concurrency`` clients together sending ``rate`` calls/s on a fixed schedule.

    Each latency is measured from the call's scheduled start (so a late send counts: no coordinated omission).
    """
    lines = [f"{'rpc':<12} {'clients':>7} {'rate/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms':>7}  target (open loop)"]
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, concurrency // 16))]
    try:
        stubs = [query_grpc.OptimizationQueryServiceStub(c) for c in channels]
        for rpc, rate in rates:
            samples: list[float] = []
            interval = concurrency / rate
            cpu_before = process_cpu_s(pid)
            begin = time.perf_counter() + 0.5

            async def client(
                k: int, rpc: str = rpc, samples: list[float] = samples, begin: float = begin, interval: float = interval
            ) -> None:
                stub = stubs[k % len(stubs)]
                rng = random.Random(1000 + k)
                scheduled = begin + k * interval / concurrency
                while scheduled < begin + duration:
                    delay = scheduled - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    portfolio_id = portfolio_name(rng.randrange(portfolios))
                    if rpc == "GetLatest":
                        await stub.GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id))
                    else:
                        await stub.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id))
                    samples.append((time.perf_counter() - scheduled) * 1000)
                    scheduled += interval

            await asyncio.gather(*(client(k) for k in range(concurrency)))
            cpu_ms = (process_cpu_s(pid) - cpu_before) * 1000 / len(samples)
            p50, p99, _ = _percentiles(samples)
            target_ms = TARGETS_MS[f"{rpc} p99"]
            verdict = f"p99 < {target_ms:.0f} ms: {'met' if p99 < target_ms else 'NOT met'}"
            lines.append(f"{rpc:<12} {concurrency:>7} {rate:>9.0f} {p50:>9.2f} {p99:>9.2f} {cpu_ms:>7.2f}  {verdict}")
    finally:
        for channel in channels:
            await channel.close(None)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Seed, serve, measure and print (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events over the portfolios (default 1 M)")
    parser.add_argument("--portfolios", type=int, default=1000, help="portfolios (default 1000)")
    parser.add_argument("--heavy-events", type=int, default=100_000, help="events of one more portfolio (100 k)")
    parser.add_argument("--analytics-portfolios", type=int, default=20, help="portfolios analysed (default 20)")
    parser.add_argument("--concurrency", type=int, default=32, help="GetLatest / GetHistory clients (default 32)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per RPC under load (default 15)")
    parser.add_argument(
        "--rates",
        default="GetLatest=250,GetLatest=500,GetLatest=1000,GetHistory=100,GetHistory=200,GetHistory=400",
        help="open-loop phases, RPC=calls/s over all clients, in order (default GetLatest at 250, 500 and 1000/s, "
        "GetHistory at 100, 200 and 400/s; '' = skip)",
    )
    parser.add_argument(
        "--side",
        choices=("query", "both"),
        default="query",
        help="stratopt serve --side: query (default; a query replica, as Helm deploys it) or both",
    )
    parser.add_argument(
        "--event-cache",
        type=int,
        default=None,
        help="the server's STRATOPT_QUERY_EVENT_CACHE (default: its own, 65,536; 0 = GetHistory decodes every row)",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the GetHistory phases on a second server without the event cache (the previous implementation)",
    )
    args = parser.parse_args(argv)
    cache_env = {} if args.event_cache is None else {"STRATOPT_QUERY_EVENT_CACHE": str(args.event_cache)}
    rates = [(k, float(v)) for k, v in (item.split("=") for item in args.rates.split(",") if item)]

    def prepare(dsn: str) -> None:
        seed(dsn, events=args.events, portfolios=args.portfolios, heavy_events=args.heavy_events)

    baseline: list[str] = []
    with embedded_database(prepare) as (dsn, base):
        log = base / "server.log"
        with serving(dsn, log, side=args.side, env=cache_env) as (target, pid):
            chosen = [
                portfolio_name(k) for k in random.Random(1).sample(range(args.portfolios), args.analytics_portfolios)
            ]
            load_before = os.getloadavg()
            analytics = asyncio.run(_analytics(target, dsn, chosen))
            load = asyncio.run(
                _load(target, pid, args.portfolios, args.concurrency, args.duration, ("GetLatest", "GetHistory"))
            )
            if rates:
                load += asyncio.run(_paced(target, pid, args.portfolios, args.concurrency, rates, args.duration))
        if not args.no_baseline:
            progress("GetHistory again on a server that decodes every row (STRATOPT_QUERY_EVENT_CACHE=0)")
            with serving(dsn, log, side=args.side, env={"STRATOPT_QUERY_EVENT_CACHE": "0"}) as (target, pid):
                baseline = asyncio.run(
                    _load(target, pid, args.portfolios, args.concurrency, args.duration, ("GetHistory",))
                )
                history_rates = [(rpc, rate) for rpc, rate in rates if rpc == "GetHistory"]
                if history_rates:
                    baseline += asyncio.run(
                        _paced(target, pid, args.portfolios, args.concurrency, history_rates, args.duration)
                    )
        load_after = os.getloadavg()
    per = args.events // args.portfolios
    report = io.StringIO()
    print(
        f"stratopt read side: {per * args.portfolios:,} events over {args.portfolios:,} portfolios "
        f"({per:,} each) + {args.heavy_events:,} in one; server: stratopt serve --side {args.side}, event cache "
        f"{cache_env.get('STRATOPT_QUERY_EVENT_CACHE', 'default')}; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f}",
        file=report,
    )
    print("\n".join(analytics), file=report)
    print("\n".join(load), file=report)
    if baseline:
        print(
            "the same data, a server with the event cache off (GetHistory decodes every row, as before the cache)",
            file=report,
        )
        print("\n".join(baseline), file=report)
    print(report.getvalue(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
