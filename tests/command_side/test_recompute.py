"""Recompute when data arrives, through two real gRPC servers on one database (both with recompute workers).

Ingesting bars for a configured symbol re-runs the configuration once (debounced while bars stream in), exactly once
per (configuration, data version) whichever replica claims it; a job that keeps failing lands DEAD and the query
side lists it. Every portfolio and symbol here is unique to this module, so other tests' ingests enqueue nothing.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import query_service_pb2_grpc as query_grpc
from stratopt.v1 import types_pb2 as pb
from stratopt_cli.client import channel
from stratopt_cli.server import ServerThread, StratoptServer

pytestmark = pytest.mark.integration

DAY0 = datetime(2031, 1, 1, tzinfo=UTC)
HISTORY_DAYS = 40
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def replicas(pg_dsn: str) -> Iterator[list[tuple[cmd_grpc.OptimizationCommandServiceStub, Any]]]:
    """Two servers on the test database, each with a recompute worker (0.2 s ticks, 0.2 s first back-off)."""
    threads = [
        ServerThread(
            StratoptServer(
                pg_dsn,
                address="127.0.0.1:0",
                workers=1,
                recompute_tick_s=0.2,
                recompute_retry_s=0.2,
                recompute_max_attempts=MAX_ATTEMPTS,
            )
        )
        for _ in range(2)
    ]
    with contextlib.ExitStack() as stack:
        stubs = []
        for thread in threads:
            thread.start()
            stack.callback(thread.stop)
            ch = stack.enter_context(channel(thread.target))
            stubs.append((cmd_grpc.OptimizationCommandServiceStub(ch), query_grpc.OptimizationQueryServiceStub(ch)))
        yield stubs


def bars(symbols: Sequence[str], days: range, seed: int = 0) -> cmd_pb.IngestMarketDataRequest:
    """Random-walk daily closes of ``symbols`` on the given days after :data:`DAY0` (the same day, the same price)."""
    request = cmd_pb.IngestMarketDataRequest()
    for j, symbol in enumerate(symbols):
        rng = np.random.default_rng([seed, j])
        prices = 100.0 * np.exp(np.cumsum(rng.normal(0.0005, 0.01, HISTORY_DAYS + 30)))
        for day in days:
            bar = request.bars.add(symbol=symbol, price=float(prices[day]))
            bar.timestamp.FromDatetime(DAY0 + timedelta(days=day))
    return request


def ingest(commands: cmd_grpc.OptimizationCommandServiceStub, request: cmd_pb.IngestMarketDataRequest) -> None:
    commands.IngestMarketData(iter([request]), timeout=30)


def configure(
    commands: cmd_grpc.OptimizationCommandServiceStub,
    portfolio_id: str,
    symbols: Sequence[str],
    *,
    debounce_seconds: float,
) -> cmd_pb.OptimizationConfiguration:
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        method=pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
        enabled=True,
        lookback_periods=30,
        recompute=cmd_pb.RecomputePolicy(on_market_data=True, debounce_seconds=debounce_seconds),
    )
    for symbol in symbols:
        config.strategies.add(symbol=symbol)
    response = commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=30)
    return response.configuration


def events(db: psycopg.Connection[Any], portfolio_ids: Sequence[str]) -> list[tuple[str, str]]:
    """``(portfolio_id, request_id)`` of the stored ``portfolio_optimized`` events of the portfolios."""
    rows = db.execute(
        "SELECT portfolio_id, request_id FROM portfolio_optimized WHERE portfolio_id = ANY(%s)", [list(portfolio_ids)]
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def jobs(db: psycopg.Connection[Any], portfolio_ids: Sequence[str]) -> list[dict[str, Any]]:
    cursor = db.execute(
        """SELECT portfolio_id, trigger, data_version, status, attempts, claimed_by, last_error, result_id
           FROM recompute_jobs WHERE portfolio_id = ANY(%s) ORDER BY created_at""",
        [list(portfolio_ids)],
    )
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def data_version(db: psycopg.Connection[Any]) -> int:
    """The latest market data version (``market_data_versions``; 0 before any ingest)."""
    row = db.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM market_data_versions").fetchone()
    assert row is not None
    return int(row[0])


def settled(db: psycopg.Connection[Any], portfolio_ids: Sequence[str], count: int) -> Callable[[], bool]:
    """Whether the portfolios have ``count`` jobs, none of them PENDING or RUNNING."""

    def check() -> bool:
        found = jobs(db, portfolio_ids)
        return len(found) == count and all(j["status"] in ("DONE", "DEAD") for j in found)

    return check


def test_bars_streaming_in_for_a_configured_symbol_rerun_it_once(
    replicas: list[Any], db: psycopg.Connection[Any]
) -> None:
    commands, queries = replicas[0]
    tag = uuid.uuid4().hex[:8]
    symbols = [f"RC1{tag}A", f"RC1{tag}B"]
    portfolio = f"recompute-{tag}"
    ingest(commands, bars(symbols, range(HISTORY_DAYS)))  # before the configuration: nothing to re-run
    stored = configure(commands, portfolio, symbols, debounce_seconds=1.5)
    assert stored.version == 1 and stored.recompute.on_market_data
    assert stored.recompute.debounce_seconds == 1.5
    assert jobs(db, [portfolio]) == []
    # A new day streams in: three calls (one per symbol, then a correction) within the debounce window.
    new_day = range(HISTORY_DAYS, HISTORY_DAYS + 1)
    ingest(commands, bars(symbols[:1], new_day))
    ingest(replicas[1][0], bars(symbols[1:], new_day))
    ingest(commands, bars(symbols[:1], new_day, seed=1))
    waiting = jobs(db, [portfolio])
    assert [j["status"] for j in waiting] == ["PENDING"]  # coalesced into one job
    wait_for(settled(db, [portfolio], 1))
    [job] = jobs(db, [portfolio])
    assert job["status"] == "DONE" and job["attempts"] == 1 and job["trigger"] == "MARKET_DATA"
    key = f"recompute:market_data:{job['data_version']}:{portfolio}"
    assert events(db, [portfolio]) == [(portfolio, key)]  # exactly one portfolio_optimized event
    latest = queries.GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio), timeout=30)
    assert latest.event.request_id == key and str(job["result_id"]) == latest.event.metadata.result_id
    # The run kept the configuration (and its policy): no new version.
    after = commands.GetConfiguration(cmd_pb.GetConfigurationRequest(portfolio_id=portfolio), timeout=30)
    assert after.configuration.version == 1 and after.configuration.recompute.on_market_data
    # An unrelated symbol's bars enqueue nothing for it.
    ingest(commands, bars([f"RC1{tag}Z"], range(3)))
    assert len(jobs(db, [portfolio])) == 1


def test_each_data_version_runs_exactly_once_across_two_replicas(
    replicas: list[Any], db: psycopg.Connection[Any]
) -> None:
    commands = replicas[0][0]
    tag = uuid.uuid4().hex[:8]
    universe = [f"RC2{tag}{c}" for c in "ABCD"]
    portfolios = [f"recompute-{tag}-{i:02d}" for i in range(16)]
    ingest(commands, bars(universe, range(HISTORY_DAYS)))
    for i, portfolio in enumerate(portfolios):
        configure(
            commands, portfolio, [universe[i % 4], universe[(i + 1) % 4], universe[(i + 2) % 4]], debounce_seconds=0
        )
    for day in (HISTORY_DAYS, HISTORY_DAYS + 1):  # two data versions, each ingested through another replica
        ingest(replicas[day % 2][0], bars(universe, range(day, day + 1)))
        wait_for(settled(db, portfolios, len(portfolios) * (day - HISTORY_DAYS + 1)), timeout_s=120)
    found = jobs(db, portfolios)
    assert all(j["status"] == "DONE" and j["attempts"] == 1 for j in found), found
    versions = {j["data_version"] for j in found}
    assert len(versions) == 2
    assert sorted((j["portfolio_id"], j["data_version"]) for j in found) == sorted(
        (p, v) for p in portfolios for v in versions
    )
    stored = events(db, portfolios)
    assert sorted(stored) == sorted((p, f"recompute:market_data:{v}:{p}") for p in portfolios for v in versions)
    assert len({j["claimed_by"] for j in found}) == 2  # both replicas took part


def test_a_job_that_keeps_failing_is_retried_then_dead_and_listed(
    replicas: list[Any], db: psycopg.Connection[Any]
) -> None:
    commands, queries = replicas[1]
    tag = uuid.uuid4().hex[:8]
    present, missing = f"RC3{tag}A", f"RC3{tag}MISSING"
    portfolio = f"recompute-{tag}"
    configure(commands, portfolio, [present, missing], debounce_seconds=0)
    ingest(commands, bars([present], range(HISTORY_DAYS)))  # the other strategy has no prices: every run fails
    wait_for(settled(db, [portfolio], 1))
    [job] = jobs(db, [portfolio])
    assert job["status"] == "DEAD" and job["attempts"] == MAX_ATTEMPTS
    assert "PreconditionError" in job["last_error"] and missing in job["last_error"]
    assert events(db, [portfolio]) == []
    listed = queries.ListRecomputeJobs(
        query_pb.ListRecomputeJobsRequest(portfolio_id=portfolio, status=query_pb.RECOMPUTE_JOB_STATUS_DEAD), timeout=30
    )
    [dead] = listed.jobs
    assert (dead.portfolio_id, dead.status, dead.attempts) == (portfolio, query_pb.RECOMPUTE_JOB_STATUS_DEAD, 3)
    assert dead.trigger == query_pb.RECOMPUTE_TRIGGER_MARKET_DATA and dead.data_version == job["data_version"]
    assert missing in dead.last_error and dead.claimed_by and not dead.result_id and not dead.HasField("lease_until")
    assert listed.next_page_token == ""
    none_done = queries.ListRecomputeJobs(
        query_pb.ListRecomputeJobsRequest(portfolio_id=portfolio, status=query_pb.RECOMPUTE_JOB_STATUS_DONE), timeout=30
    )
    assert list(none_done.jobs) == []


def test_list_recompute_jobs_filters_by_status_and_pages(replicas: list[Any], db: psycopg.Connection[Any]) -> None:
    commands, queries = replicas[0]
    tag = uuid.uuid4().hex[:8]
    symbol = f"RC4{tag}A"
    portfolios = [f"recompute-{tag}-{i}" for i in range(3)]
    for portfolio in portfolios:
        configure(commands, portfolio, [symbol, f"RC4{tag}MISSING"], debounce_seconds=3600)  # waits: PENDING
    ingest(commands, bars([symbol], range(3)))
    seen: list[str] = []
    token = ""
    while True:
        page = queries.ListRecomputeJobs(
            query_pb.ListRecomputeJobsRequest(
                status=query_pb.RECOMPUTE_JOB_STATUS_PENDING, page_size=1, page_token=token
            ),
            timeout=30,
        )
        seen += [j.portfolio_id for j in page.jobs if j.portfolio_id in portfolios]
        assert all(j.status == query_pb.RECOMPUTE_JOB_STATUS_PENDING for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == portfolios
    db.execute("DELETE FROM recompute_jobs WHERE portfolio_id = ANY(%s)", [portfolios])


def test_a_schedule_reruns_once_per_slot_until_disabled(replicas: list[Any], db: psycopg.Connection[Any]) -> None:
    commands = replicas[0][0]
    tag = uuid.uuid4().hex[:8]
    symbols = [f"RC5{tag}A", f"RC5{tag}B"]
    portfolio = f"recompute-{tag}"
    ingest(commands, bars(symbols, range(HISTORY_DAYS)))
    config = configure(commands, portfolio, symbols, debounce_seconds=0)
    config.recompute.on_market_data = False
    config.recompute.schedule_interval_seconds = 1.0
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=30)
    wait_for(lambda: sum(j["status"] == "DONE" for j in jobs(db, [portfolio])) >= 3)
    config.enabled = False
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=30)
    time.sleep(0.5)  # a slot claimed before the upsert finishes (disabled: DONE without a run)
    wait_for(lambda: all(j["status"] == "DONE" for j in jobs(db, [portfolio])))
    found = jobs(db, [portfolio])
    time.sleep(1.5)
    assert len(jobs(db, [portfolio])) == len(found)  # disabled: no further slots
    assert {j["trigger"] for j in found} == {"SCHEDULE"}
    slots = [j["data_version"] for j in found]
    assert len(set(slots)) == len(slots)  # once per slot
    ran = sorted(f"recompute:schedule:{j['data_version']}:{portfolio}" for j in found if j["result_id"] is not None)
    assert len(ran) >= 3 and sorted(r for _, r in events(db, [portfolio])) == ran


def test_holdings_beyond_the_drift_threshold_rerun_the_configuration(
    replicas: list[Any], db: psycopg.Connection[Any], trading: Any
) -> None:
    """Only the portfolio whose stored holdings drift beyond the threshold gets a DRIFT job on a new day.

    Two portfolios on the same symbols: one holds everything in one name, the other its target's shares.
    """
    from stratopt.v1 import trading_service_pb2 as tpb

    commands = replicas[0][0]
    tag = uuid.uuid4().hex[:8]
    symbols = [f"RC6{tag}A", f"RC6{tag}B", f"RC6{tag}C"]
    ingest(commands, bars(symbols, range(HISTORY_DAYS)))
    drifted, aligned = f"recompute-drift-{tag}", f"recompute-aligned-{tag}"
    # The session server's trading service writes the same database as the replicas.
    for portfolio in (drifted, aligned):
        config = cmd_pb.OptimizationConfiguration(
            portfolio_id=portfolio,
            objective=pb.OBJECTIVE_MIN_VOLATILITY,
            enabled=True,
            lookback_periods=30,
            recompute=cmd_pb.RecomputePolicy(drift_threshold=0.10),
        )
        for symbol in symbols:
            config.strategies.add(symbol=symbol)
        commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=30)
        target = commands.RunConfiguration(cmd_pb.RunConfigurationRequest(portfolio_id=portfolio), timeout=60)
        weights = dict(target.result.optimal_weights)
        closes = bars(symbols, range(HISTORY_DAYS - 1, HISTORY_DAYS))
        price = {b.symbol: b.price for b in closes.bars}
        if portfolio == drifted:
            positions = [tpb.Position(symbol=symbols[0], shares=1000.0)]  # everything in one name
        else:  # the target's weights of $1M in (fractional) shares at the last close
            positions = [tpb.Position(symbol=s, shares=1e6 * weights[s] / price[s]) for s in symbols]
        trading.UpsertHoldings(tpb.UpsertHoldingsRequest(portfolio_id=portfolio, positions=positions, cash=0.0))
        check = trading.CheckDrift(tpb.CheckDriftRequest(portfolio_id=portfolio, threshold=0.10), timeout=30)
        assert check.exceeds_threshold == (portfolio == drifted)  # the drift the worker will see
    before = data_version(db)
    # A replica checks drift once per data version, at its next tick. One that reached the history's version only
    # after the holdings above were stored (a slow tick) has already enqueued the drifted portfolio at that
    # version: the drift was there. The aligned portfolio never gets a job.
    early = jobs(db, [drifted, aligned])
    assert all(j["portfolio_id"] == drifted and j["trigger"] == "DRIFT" for j in early), early
    assert all(j["data_version"] <= before for j in early), early
    ingest(commands, bars(symbols, range(HISTORY_DAYS, HISTORY_DAYS + 1)))

    def new_day_settled() -> bool:
        found = jobs(db, [drifted])
        return any(j["data_version"] > before for j in found) and all(j["status"] in ("DONE", "DEAD") for j in found)

    wait_for(new_day_settled)
    time.sleep(1.0)  # a few more ticks: the aligned portfolio stays without a job
    found = jobs(db, [drifted, aligned])
    assert all((j["portfolio_id"], j["trigger"], j["status"]) == (drifted, "DRIFT", "DONE") for j in found), found
    [job] = [j for j in found if j["data_version"] > before]  # the new day's
    key = f"recompute:drift:{job['data_version']}:{drifted}"
    assert (drifted, key) in events(db, [drifted])
    # The same data version never enqueues twice (both replicas checked it).
    versions = [j["data_version"] for j in found]
    assert len(versions) == len(set(versions))
    bad = cmd_pb.OptimizationConfiguration(
        portfolio_id=drifted, objective=pb.OBJECTIVE_MIN_VOLATILITY, enabled=True,
        recompute=cmd_pb.RecomputePolicy(drift_threshold=2.5),
        strategies=[pb.Strategy(symbol=s) for s in symbols],
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as caught:
        commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=bad), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "drift_threshold" in (caught.value.details() or "")
