"""Heavy problems apart: a server with a heavy pool, over a real gRPC channel, the real database and workers.

Data: 20 S&P 500 stocks, daily (``data/sp500_dataset.csv.gz``). The small problem is max Sharpe on the last 756
days (N = 20: main pool); the heavy one is min CVaR on all 8,312 days (a scenario risk measure: heavy pool,
about 2 s in a worker). Which pool answered is read from ``stratopt_solver_jobs_total{pool}`` and from the pools'
own counts of busy workers and admitted calls; nothing here depends on measured times.

Truth: the answers equal those of the session's single-pool server (``heavy_workers = 0``), and the heavy CVaR
optimum equals the Rockafellar-Uryasev linear program solved here with cvxpy (Clarabel).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cvxpy as cp
import grpc
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from command_side.mapping import optimize_command
from command_side.optimization_adapter import request_workload
from command_side.workers import SolverPool, _merged
from services.errors import UnavailableError
from services.workload import Workload, job_workload
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import types_pb2 as pb

DATA = Path(__file__).resolve().parents[2] / "data" / "sp500_dataset.csv.gz"


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    """Daily simple returns of the 20 stocks (8,312 days)."""
    prices = pd.read_csv(DATA, index_col=0, parse_dates=True)
    return prices.pct_change().dropna()


def request_for(
    returns: pd.DataFrame, *, portfolio_id: str, days: int, objective: int, risk_measure: int = 0
) -> cmd_pb.OptimizeRequest:
    """An Optimize request on the last ``days`` returns, sent inline."""
    window = returns.iloc[-days:]
    request = cmd_pb.OptimizeRequest(portfolio_id=portfolio_id, objective=objective)  # type: ignore[arg-type]
    request.risk_parameters.risk_measure = risk_measure  # type: ignore[assignment]
    for stamp in window.index:
        request.returns.timestamps.add().FromDatetime(stamp.to_pydatetime())
    for symbol in window.columns:
        request.strategies.add(symbol=symbol, returns=window[symbol].tolist())
    return request


def small(returns: pd.DataFrame, tag: str) -> cmd_pb.OptimizeRequest:
    return request_for(returns, portfolio_id=f"hp-small-{tag}", days=756, objective=pb.OBJECTIVE_MAX_SHARPE)


def heavy(returns: pd.DataFrame, tag: str, days: int = 0) -> cmd_pb.OptimizeRequest:
    return request_for(
        returns,
        portfolio_id=f"hp-heavy-{tag}",
        days=days or len(returns),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        risk_measure=pb.RISK_MEASURE_CVAR,
    )


@dataclass
class Running:
    target: str
    thread: object


@pytest.fixture(scope="module")
def heavy_server(pg_dsn: str) -> Iterator[Running]:
    """1 main worker, 1 heavy worker whose queue holds 1 more heavy call (2 heavy places)."""
    from stratopt_cli.server import ServerThread, StratoptServer

    server = StratoptServer(
        pg_dsn, address="127.0.0.1:0", sides=("command",), workers=1, heavy_workers=1, heavy_max_queue=1
    )
    thread = ServerThread(server)
    thread.start()
    try:
        yield Running(thread.target, thread)
    finally:
        thread.stop()


def pools(running: Running) -> tuple[object, object]:
    pool = running.thread.server._solver_pool  # type: ignore[attr-defined]
    assert pool is not None and pool.heavy is not None
    return pool, pool.heavy


def jobs(pool: str) -> float:
    return REGISTRY.get_sample_value("stratopt_solver_jobs_total", {"pool": pool}) or 0.0


def weights(response: cmd_pb.OptimizeResponse) -> dict[str, float]:
    return dict(response.optimal_weights)


# --- classification -----------------------------------------------------------------------------------------


def test_the_request_workload_is_the_parsed_command_workload(returns: pd.DataFrame) -> None:
    base = small(returns.iloc[-30:], "c")
    variants: list[cmd_pb.OptimizeRequest] = [base]
    for change in ("cvar", "mad", "cdar", "variance", "holdings", "min_position", "robust", "risk_parity"):
        request = cmd_pb.OptimizeRequest()
        request.CopyFrom(base)
        if change in ("cvar", "mad", "cdar", "variance"):
            request.objective = pb.OBJECTIVE_MIN_VOLATILITY
            request.risk_parameters.risk_measure = getattr(pb, f"RISK_MEASURE_{change.upper()}")
        elif change == "holdings":
            request.constraints.max_holdings = 5
        elif change == "min_position":
            request.constraints.min_position_weight = 0.02
        elif change == "robust":
            request.method = pb.OPTIMIZATION_METHOD_ROBUST_OPTIMIZATION
        else:
            request.method = pb.OPTIMIZATION_METHOD_RISK_PARITY
            request.objective = pb.OBJECTIVE_UNSPECIFIED
        variants.append(request)
    heavy_flags = []
    for request in variants:
        command = optimize_command(request)
        assert request_workload(request) == job_workload(command.problem, command.method)
        heavy_flags.append(request_workload(request).is_heavy())
    assert heavy_flags == [False, True, True, True, False, True, True, True, False]


def test_size_alone_makes_a_problem_heavy_from_the_threshold_on() -> None:
    assert not Workload(assets=499).is_heavy()
    assert Workload(assets=500).is_heavy()
    assert Workload(assets=20).is_heavy(heavy_assets=20)
    assert not Workload(assets=19).is_heavy(heavy_assets=20)


def test_a_split_chunk_keeps_one_pools_answers_when_the_other_pool_fails() -> None:
    """A pool's domain error (its worker lost, its time up) answers its own items only; any other error raises."""
    lost = UnavailableError("a solver worker process died; retry the call")
    heavy = [False, True, False, True, False]
    merged = _merged([["a", "b", "c"], lost], heavy)
    assert merged == ["a", lost, "b", lost, "c"]
    assert _merged([lost, ["x", "y"]], heavy) == [lost, "x", lost, "y", lost]
    assert _merged([["a", "b", "c"], ["x", "y"]], heavy) == ["a", "x", "b", "y", "c"]
    with pytest.raises(RuntimeError):
        _merged([["a", "b", "c"], RuntimeError("a bug")], heavy)


# --- the pools' life cycle ----------------------------------------------------------------------------------


def test_both_pools_warm_up_count_for_health_replace_a_lost_heavy_worker_and_stop_together() -> None:
    async def run() -> None:
        pool = SolverPool(1, heavy_workers=1)
        assert pool.heavy is not None and pool.heavy.max_queue == 4  # DEFAULT_HEAVY_QUEUE_PER_WORKER
        try:
            await pool.warm_up()
            assert len(pool.processes()) == 1 and len(pool.heavy.processes()) == 1 and pool.workers_alive()
            lost = pool.heavy.processes()[0]
            lost.kill()
            waited = time.monotonic() + 60
            while pool.workers_alive():  # the heavy pool's loss makes the whole pool unhealthy
                assert time.monotonic() < waited
                await asyncio.sleep(0.01)
            while not pool.workers_alive():  # until its replacement has warmed up
                assert time.monotonic() < waited + 120
                await asyncio.sleep(0.05)
            assert [p.pid for p in pool.heavy.processes()] != [lost.pid]
            processes = pool.processes() + pool.heavy.processes()
        finally:
            pool.shutdown()
        assert not any(p.is_alive() for p in processes)

    asyncio.run(run())


# --- through the server -------------------------------------------------------------------------------------


def test_heavy_jobs_run_in_the_heavy_pool_and_small_ones_in_the_main_pool(
    heavy_server: Running, returns: pd.DataFrame
) -> None:
    tag = uuid.uuid4().hex[:8]
    main_pool, heavy_pool = pools(heavy_server)
    main_pids = {p.pid for p in main_pool.processes()}  # type: ignore[attr-defined]
    heavy_pids = {p.pid for p in heavy_pool.processes()}  # type: ignore[attr-defined]
    assert len(main_pids) == 1 and len(heavy_pids) == 1 and not main_pids & heavy_pids
    with grpc.insecure_channel(heavy_server.target) as channel:
        stub = cmd_grpc.OptimizationCommandServiceStub(channel)
        before = jobs("main"), jobs("heavy")
        stub.Optimize(small(returns, tag), timeout=120)
        assert (jobs("main") - before[0], jobs("heavy") - before[1]) == (1, 0)
        stub.Optimize(heavy(returns, tag, days=1000), timeout=120)
        assert (jobs("main") - before[0], jobs("heavy") - before[1]) == (1, 1)
        # A batch's heavy items are solved in the heavy pool, its small ones (one chunk) in the main pool.
        batch = cmd_pb.BatchOptimizeRequest(
            requests=[small(returns, f"{tag}-b0"), heavy(returns, f"{tag}-b1", days=1000), small(returns, f"{tag}-b2")]
        )
        response = stub.BatchOptimize(batch, timeout=120)
        assert response.succeeded == 3
        assert (jobs("main") - before[0], jobs("heavy") - before[1]) == (2, 2)
        assert [r.index for r in response.results] == [0, 1, 2]
        assert response.results[1].response.optimization_metadata.risk_measure == "CVAR"
        assert response.results[0].response.optimization_metadata.risk_measure == "VARIANCE"
    assert main_pool.in_flight == 0 and heavy_pool.in_flight == 0  # type: ignore[attr-defined]


def test_a_heavy_call_on_stored_prices_is_admitted_and_solved_in_the_heavy_pool(heavy_server: Running) -> None:
    """The path that parses on the event loop (inputs from the database): classified from the parsed command."""
    tag = uuid.uuid4().hex[:6].upper()
    prices = pd.read_csv(DATA, index_col=0, parse_dates=True).iloc[-300:]
    bars = cmd_pb.IngestMarketDataRequest()
    for when, row in prices.iterrows():
        for symbol, price in row.items():
            bar = bars.bars.add(symbol=f"{symbol}{tag}", price=float(price))
            bar.timestamp.FromDatetime(when.to_pydatetime())
    request = cmd_pb.OptimizeRequest(portfolio_id=f"hp-stored-{tag}", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    request.risk_parameters.risk_measure = pb.RISK_MEASURE_CVAR
    request.market_data.SetInParent()
    for symbol in prices.columns:
        request.strategies.add(symbol=f"{symbol}{tag}")
    with grpc.insecure_channel(heavy_server.target) as channel:
        stub = cmd_grpc.OptimizationCommandServiceStub(channel)
        assert stub.IngestMarketData(iter([bars]), timeout=120).rows_written == 300 * 20
        before = jobs("main"), jobs("heavy")
        response = stub.Optimize(request, timeout=120)
    assert (jobs("main") - before[0], jobs("heavy") - before[1]) == (0, 1)
    assert response.optimization_metadata.risk_measure == "CVAR"
    assert response.optimization_metadata.observations == 299


def test_a_small_call_completes_while_the_heavy_pool_is_full_and_only_heavy_calls_are_refused(
    heavy_server: Running, returns: pd.DataFrame
) -> None:
    tag = uuid.uuid4().hex[:8]
    main_pool, heavy_pool = pools(heavy_server)

    async def run() -> list[str]:
        finished: list[str] = []
        async with grpc.aio.insecure_channel(heavy_server.target) as channel:
            stub = cmd_grpc.OptimizationCommandServiceStub(channel)

            async def call(name: str, request: cmd_pb.OptimizeRequest) -> cmd_pb.OptimizeResponse:
                response = await stub.Optimize(request, timeout=300)
                finished.append(name)
                return response

            slow = [asyncio.ensure_future(call(f"heavy{i}", heavy(returns, f"{tag}-{i}"))) for i in range(2)]
            waited = time.monotonic() + 120
            while heavy_pool.in_flight < 2:  # type: ignore[attr-defined]  # both heavy places taken
                assert time.monotonic() < waited and not any(task.done() for task in slow)
                await asyncio.sleep(0.01)
            assert main_pool.busy == 0  # type: ignore[attr-defined]  # heavy jobs never occupy the main worker
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Optimize(heavy(returns, f"{tag}-x", days=1000), timeout=60)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "heavy solve queue" in (refused.value.details() or "")
            answer = await call("small", small(returns, tag))
            assert answer.optimization_metadata.risk_measure == "VARIANCE"
            assert not slow[1].done()  # the second heavy call waits behind the first; the small one did not
            await asyncio.gather(*slow)
        return finished

    finished = asyncio.run(run())
    assert finished.index("small") < finished.index("heavy1")


def test_answers_equal_the_single_pool_servers_and_the_cvar_optimum(
    heavy_server: Running, commands: cmd_grpc.OptimizationCommandServiceStub, returns: pd.DataFrame
) -> None:
    tag = uuid.uuid4().hex[:8]
    days = 2000
    with grpc.insecure_channel(heavy_server.target) as channel:
        apart = cmd_grpc.OptimizationCommandServiceStub(channel)
        for request in (small(returns, tag), heavy(returns, tag, days=days)):
            a = apart.Optimize(request, timeout=120)
            b = commands.Optimize(request, timeout=120)  # the session's server: one pool (heavy_workers = 0)
            assert weights(a) == pytest.approx(weights(b), abs=1e-12)
            assert a.optimization_metadata.objective_value == pytest.approx(
                b.optimization_metadata.objective_value, rel=1e-12, abs=1e-15
            )
    # Independent truth for the heavy answer: min CVaR_95 of the daily loss, long only, fully invested.
    scenarios = returns.iloc[-days:].to_numpy()
    w, zeta = cp.Variable(scenarios.shape[1]), cp.Variable()
    tail = cp.sum(cp.pos(-scenarios @ w - zeta)) / (0.05 * days)
    cp.Problem(cp.Minimize(zeta + tail), [w >= 0, cp.sum(w) == 1]).solve(solver=cp.CLARABEL)
    assert a.optimization_metadata.risk_measure_value == pytest.approx(float(zeta.value + tail.value), rel=1e-4)
