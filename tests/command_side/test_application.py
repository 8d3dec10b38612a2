"""OptimizationService against the in-memory store, with the engine run in this process: no database, no gRPC.

Idempotency, all-or-nothing storage around the engine, stored-price inputs, configurations and batches, with
expected weights from closed forms.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from command_side.application import OptimizationService
from command_side.optimization_store import InMemoryOptimizationStore
from command_side.records import ResultRecord, response_from_record
from services.engine import (
    FrontierOutcome,
    OptimizationJob,
    OptimizationOutcome,
    efficient_frontier,
    run_optimization,
)
from services.errors import (
    InfeasibleError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    UnavailableError,
)
from stratopt.rpc_errors import status_for
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MIN_VOLATILITY_WEIGHTS = [9 / 13, 4 / 13]
"""Minimum-variance weights of two uncorrelated assets with variances 0.04 and 0.09 (inverse variances)."""


class InProcessSolver:
    """``SolverPool``'s interface with the engine run in this process; counts the solves."""

    workers = 1

    def __init__(self, failure: Exception | None = None) -> None:
        self.solves = 0
        self.failure = failure

    async def run(self, job: OptimizationJob, *, timeout_s: float | None) -> OptimizationOutcome:
        self.solves += 1
        await asyncio.sleep(0)  # a worker round trip: other calls run meanwhile
        if self.failure is not None:
            raise self.failure
        return run_optimization(job)

    async def frontier(self, job: OptimizationJob, points: int, *, timeout_s: float | None) -> FrontierOutcome:
        return efficient_frontier(job, points)


def service(store: InMemoryOptimizationStore, solver: InProcessSolver) -> OptimizationService:
    return OptimizationService(store, solver)  # InProcessSolver has the interface of SolverPool


def moments_request(portfolio_id: str = "p", request_id: str = "", lower: float = 0.0) -> cmd_pb.OptimizeRequest:
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id,
        request_id=request_id,
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        constraints=pb.OptimizationConstraints(min_weight=lower),
    )
    request.strategies.add(strategy_id="A")
    request.strategies.add(strategy_id="B")
    request.moments.expected_returns.extend([0.05, 0.08])
    request.moments.covariance.extend([0.04, 0.0, 0.0, 0.09])
    return request


async def stream(*messages: cmd_pb.IngestMarketDataRequest) -> AsyncIterator[cmd_pb.IngestMarketDataRequest]:
    for message in messages:
        yield message


def price_bars(prices: dict[str, np.ndarray]) -> cmd_pb.IngestMarketDataRequest:
    message = cmd_pb.IngestMarketDataRequest()
    for symbol, series in prices.items():
        for day, price in enumerate(series):
            bar = message.bars.add(symbol=symbol, price=float(price))
            bar.timestamp.FromDatetime(T0 + timedelta(days=day))
    return message


def test_a_run_is_stored_with_its_ids_and_configuration_version() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    response = asyncio.run(service(store, solver).optimize(moments_request(), time_remaining_s=None))
    np.testing.assert_allclose([response.optimal_weights["A"], response.optimal_weights["B"]], MIN_VOLATILITY_WEIGHTS)
    assert response.expected_volatility == pytest.approx(math.sqrt(0.04 * 0.09 / 0.13))
    meta = response.optimization_metadata
    assert meta.configuration_version == 1 and not meta.replayed
    [run] = store.runs("p")
    assert (str(run.event_id), str(run.result_id)) == (meta.event_id, meta.result_id)
    assert run.run_inputs == {"schema_version": 1, "kind": "moments", "current_weights": {}}
    assert response_from_record(ResultRecord.from_json(run.result)) == response
    assert run.result["schema_version"] == 1


def test_a_repeated_request_id_is_replayed_without_solving() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> tuple[cmd_pb.OptimizeResponse, cmd_pb.OptimizeResponse]:
        first = await optimizer.optimize(moments_request(request_id="r-1"), time_remaining_s=None)
        again = await optimizer.optimize(moments_request(request_id="r-1"), time_remaining_s=None)
        return first, again

    first, again = asyncio.run(scenario())
    assert again.optimization_metadata.replayed
    again.optimization_metadata.replayed = False
    assert again == first
    assert solver.solves == 1
    assert len(store.runs("p")) == 1


def test_a_request_id_reused_for_another_request_is_invalid_and_stores_nothing() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)
    asyncio.run(optimizer.optimize(moments_request(request_id="r-1"), time_remaining_s=None))
    changed = moments_request(request_id="r-1")
    changed.moments.expected_returns[0] = 0.06
    with pytest.raises(InvalidInputError) as caught:
        asyncio.run(optimizer.optimize(changed, time_remaining_s=None))
    assert [v.field for v in caught.value.field_violations] == ["request_id"]
    assert len(store.runs()) == 1 and solver.solves == 1


def test_concurrent_calls_with_one_request_id_store_one_run_and_answer_alike() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> list[cmd_pb.OptimizeResponse]:
        calls = (optimizer.optimize(moments_request(request_id="r-1"), time_remaining_s=None) for _ in range(2))
        return list(await asyncio.gather(*calls))

    first, second = asyncio.run(scenario())
    # Both solved (neither had committed when the other looked); the later commit hit the key and replayed.
    assert solver.solves == 2
    assert [first.optimization_metadata.replayed, second.optimization_metadata.replayed] == [False, True]
    assert second.optimization_metadata.event_id == first.optimization_metadata.event_id
    assert len(store.runs()) == 1


@pytest.mark.parametrize(
    ("solver", "request_lower", "error"),
    [
        (InProcessSolver(), 0.6, InfeasibleError),  # the engine's pre-check: lower bounds sum to 1.2
        (InProcessSolver(UnavailableError("a solver worker process died; retry the call")), 0.0, UnavailableError),
    ],
    ids=["engine-infeasible", "worker-died"],
)
def test_nothing_is_stored_when_the_solve_fails(
    solver: InProcessSolver, request_lower: float, error: type[Exception]
) -> None:
    store = InMemoryOptimizationStore()
    with pytest.raises(error):
        asyncio.run(service(store, solver).optimize(moments_request(lower=request_lower), time_remaining_s=None))
    assert store.runs() == ()
    with pytest.raises(NotFoundError):
        asyncio.run(store.get_configuration("p"))


def test_runs_on_stored_prices_estimate_from_the_ingested_bars() -> None:
    rng = np.random.default_rng(7)
    prices = {s: 100.0 * np.cumprod(1.0 + rng.normal(0.0005, vol, 60)) for s, vol in (("A", 0.01), ("B", 0.02))}
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)
    ingested = asyncio.run(optimizer.ingest(stream(price_bars(prices))))
    assert (ingested.rows_written, list(ingested.symbols)) == (120, ["A", "B"])
    request = cmd_pb.OptimizeRequest(portfolio_id="stored", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    request.strategies.add(strategy_id="A")
    request.strategies.add(strategy_id="B")
    request.market_data.lookback_periods = 40
    response = asyncio.run(optimizer.optimize(request, time_remaining_s=None))
    # Truth: the two-asset minimum-variance weights of the sample covariance of the last 40 simple returns.
    returns = np.column_stack([np.diff(prices[s][-41:]) / prices[s][-41:-1] for s in ("A", "B")])
    covariance = np.cov(returns, rowvar=False)
    weight_a = (covariance[1, 1] - covariance[0, 1]) / (covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    assert response.optimal_weights["A"] == pytest.approx(weight_a, abs=1e-6)
    assert response.optimization_metadata.observations == 40
    assert store.runs("stored")[0].run_inputs["kind"] == "market_data"
    assert asyncio.run(store.get_configuration("stored")).lookback_periods == 40


def test_missing_stored_prices_are_a_precondition_error_and_store_nothing() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    request = cmd_pb.OptimizeRequest(portfolio_id="p", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    request.strategies.add(strategy_id="NOPE1")
    request.strategies.add(strategy_id="NOPE2")
    request.market_data.lookback_periods = 10
    with pytest.raises(PreconditionError) as caught:
        asyncio.run(service(store, solver).optimize(request, time_remaining_s=None))
    assert [v.subject for v in caught.value.precondition_violations] == ["NOPE1", "NOPE2"]
    assert solver.solves == 0 and store.runs() == ()


def test_run_configuration_reruns_the_stored_configuration_and_its_retry_replays() -> None:
    rng = np.random.default_rng(11)
    prices = {s: 100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, 30)) for s in ("A", "B")}
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> tuple[cmd_pb.OptimizeResponse, cmd_pb.OptimizeResponse]:
        await optimizer.ingest(stream(price_bars(prices)))
        config = cmd_pb.OptimizationConfiguration(
            portfolio_id="cfg", objective=pb.OBJECTIVE_MIN_VOLATILITY, lookback_periods=20, enabled=True
        )
        config.strategies.add(strategy_id="A")
        config.strategies.add(strategy_id="B")
        stored = await optimizer.upsert_configuration(config)
        assert (stored.configuration.version, stored.created) == (1, True)
        first = await optimizer.run_configuration("cfg", "rerun-1", time_remaining_s=None)
        # An edit after the run does not change the answer to a retry of the same request_id.
        config.objective = pb.OBJECTIVE_MAX_SHARPE
        await optimizer.upsert_configuration(config)
        retry = await optimizer.run_configuration("cfg", "rerun-1", time_remaining_s=None)
        return first, retry

    first, retry = asyncio.run(scenario())
    assert first.optimization_metadata.configuration_version == 1
    assert first.optimization_metadata.observations == 20
    assert retry.optimization_metadata.replayed
    assert retry.optimization_metadata.event_id == first.optimization_metadata.event_id
    assert solver.solves == 1


def test_a_disabled_configuration_is_not_run() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)
    config = cmd_pb.OptimizationConfiguration(portfolio_id="off", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    config.strategies.add(strategy_id="A")
    config.strategies.add(strategy_id="B")
    asyncio.run(optimizer.upsert_configuration(config))
    with pytest.raises(PreconditionError) as caught:
        asyncio.run(optimizer.run_configuration("off", "", time_remaining_s=None))
    assert [v.type for v in caught.value.precondition_violations] == ["CONFIGURATION_DISABLED"]
    assert solver.solves == 0 and store.runs() == ()


def test_configurations_are_listed_in_pages_with_tokens() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> list[list[str]]:
        for portfolio_id in ("c", "a", "b"):
            config = cmd_pb.OptimizationConfiguration(portfolio_id=portfolio_id, objective=pb.OBJECTIVE_MAX_SHARPE)
            config.strategies.add(strategy_id="A")
            config.strategies.add(strategy_id="B")
            await optimizer.upsert_configuration(config)
        pages, token = [], ""
        while True:
            page = await optimizer.list_configurations(2, token)
            pages.append([c.portfolio_id for c in page.configurations])
            token = page.next_page_token
            if not token:
                return pages

    assert asyncio.run(scenario()) == [["a", "b"], ["c"]]
    with pytest.raises(InvalidInputError, match="page_token"):
        asyncio.run(optimizer.list_configurations(2, "bm90IG91cnM"))


def test_a_batch_stores_its_good_items_and_reports_the_bad_one() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    batch = cmd_pb.BatchOptimizeRequest(
        requests=[moments_request("p1"), moments_request("p2", lower=0.6), moments_request("p3")]
    )
    response = asyncio.run(service(store, solver).batch_optimize(batch, time_remaining_s=None, to_status=status_for))
    assert (response.succeeded, response.failed) == (2, 1)
    assert [r.HasField("error") for r in response.results] == [False, True, False]
    assert response.results[1].error.code == 9  # FAILED_PRECONDITION
    assert [len(store.runs(p)) for p in ("p1", "p2", "p3")] == [1, 0, 1]
