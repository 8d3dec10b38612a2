"""OptimizationService against the in-memory store, with the engine run in this process: no database, no gRPC.

The service takes plain commands and returns plain results (``command_side.optimization_commands``); these tests
build them from the engine's domain types. Idempotency, all-or-nothing storage around the engine, stored-price
inputs, configurations and batches, with expected weights from closed forms. Configurations are the domain's
dataclass (``command_side.configuration``); RunConfiguration's ``command_for`` is a plain function here (the
server injects the adapter's), so nothing in this module touches the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from command_side.application import OptimizationService
from command_side.configuration import OptimizationConfiguration, Strategy
from command_side.optimization_commands import (
    BatchCommand,
    FrontierCommand,
    InvalidItem,
    MarketDataWindow,
    OptimizeCommand,
    RunResult,
)
from command_side.optimization_store import Bar, InMemoryOptimizationStore
from command_side.records import ResultRecord
from services.engine import (
    FrontierOutcome,
    MethodSettings,
    OptimizationJob,
    OptimizationOutcome,
    efficient_frontier,
    run_optimization,
    run_optimization_batch,
)
from services.errors import (
    InfeasibleError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    UnavailableError,
)
from services.optimization import Objective, PortfolioProblem
from services.types import EstimationSettings, Moments

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MIN_VOLATILITY_WEIGHTS = [9 / 13, 4 / 13]
"""Minimum-variance weights of two uncorrelated assets with variances 0.04 and 0.09 (inverse variances)."""
TWO_ASSET_MOMENTS = Moments(expected_returns=np.array([0.05, 0.08]), covariance=np.diag([0.04, 0.09]))


class InProcessSolver:
    """``SolverPool``'s interface with the engine run in this process; counts the solves."""

    workers = 1

    def __init__(self, failure: Exception | None = None) -> None:
        self.solves = 0
        self.failure = failure

    def admitted(self, workload: object = None) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # no queue bound in process, one pool for every workload

    async def run(self, job: OptimizationJob, *, timeout_s: float | None) -> OptimizationOutcome:
        self.solves += 1
        await asyncio.sleep(0)  # a worker round trip: other calls run meanwhile
        if self.failure is not None:
            raise self.failure
        return run_optimization(job)

    async def frontier(self, job: OptimizationJob, points: int, *, timeout_s: float | None) -> FrontierOutcome:
        return efficient_frontier(job, points)

    async def run_batch(self, jobs: list[OptimizationJob], *, timeout_s: float | None) -> list[Any]:
        self.solves += len(jobs)
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        return list(run_optimization_batch(jobs))


def command_for(config: OptimizationConfiguration, request_id: str) -> OptimizeCommand:
    """RunConfiguration's command of a :func:`configuration`: min volatility on its window of stored prices."""
    window = MarketDataWindow(lookback_periods=config.lookback_periods, market_symbol=config.market_symbol)
    return replace(min_volatility(config.portfolio_id, request_id, inputs=window), configuration=config)


def service(store: InMemoryOptimizationStore, solver: InProcessSolver) -> OptimizationService:
    # InProcessSolver has the interface of SolverPool
    return OptimizationService(store, solver, command_for=command_for)


def configuration(portfolio_id: str, *, lookback_periods: int = 0, enabled: bool = True) -> OptimizationConfiguration:
    """The configuration of a min-volatility run over strategies A and B."""
    return OptimizationConfiguration(
        portfolio_id=portfolio_id,
        objective="OBJECTIVE_MIN_VOLATILITY",
        method="OPTIMIZATION_METHOD_MEAN_VARIANCE",
        lookback_periods=lookback_periods,
        enabled=enabled,
        strategies=(Strategy(symbol="A"), Strategy(symbol="B")),
    )


def min_volatility(
    portfolio_id: str = "p",
    request_id: str = "",
    *,
    lower: float = 0.0,
    inputs: Moments | MarketDataWindow = TWO_ASSET_MOMENTS,
    request_hash: str = "hash-1",
) -> OptimizeCommand:
    """Minimum volatility over strategies A and B, long only, with ``lower`` as every weight's lower bound."""
    return OptimizeCommand(
        portfolio_id=portfolio_id,
        request_id=request_id,
        request_hash=request_hash if request_id else "",
        problem=PortfolioProblem(
            symbols=("A", "B"),
            objective=Objective.MIN_VOLATILITY,
            lower_bounds=np.full(2, lower),
            upper_bounds=np.ones(2),
            sectors=("", ""),
        ),
        settings=EstimationSettings(),
        method=MethodSettings(),
        inputs=inputs,
        configuration=configuration(
            portfolio_id, lookback_periods=inputs.lookback_periods if isinstance(inputs, MarketDataWindow) else 0
        ),
    )


async def stream(*chunks: Sequence[Bar]) -> AsyncIterator[Sequence[Bar]]:
    for chunk in chunks:
        yield chunk


def price_bars(prices: dict[str, np.ndarray]) -> list[Bar]:
    return [
        (symbol, T0 + timedelta(days=day), float(price), None)
        for symbol, series in prices.items()
        for day, price in enumerate(series)
    ]


def test_a_run_is_stored_with_its_ids_and_configuration_version() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    outcome = asyncio.run(service(store, solver).optimize(min_volatility(), time_remaining_s=None))
    result = outcome.result
    np.testing.assert_allclose([result.weights["A"], result.weights["B"]], MIN_VOLATILITY_WEIGHTS)
    assert result.volatility == pytest.approx(math.sqrt(0.04 * 0.09 / 0.13))
    meta = result.metadata
    assert meta.configuration_version == 1 and not outcome.replayed
    assert (meta.method, meta.convergence_status, meta.holdings) == ("MEAN_VARIANCE", "OPTIMAL", 2)
    [run] = store.runs("p")
    assert (str(run.event_id), str(run.result_id)) == (meta.event_id, meta.result_id)
    assert run.timestamp == datetime.fromtimestamp(0, UTC) + timedelta(microseconds=meta.timestamp // 1000)
    assert run.run_inputs == {"schema_version": 1, "kind": "moments", "current_weights": {}}
    assert ResultRecord.from_json(run.result) == result
    assert run.result["schema_version"] == 1


def test_a_repeated_request_id_is_replayed_without_solving() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> tuple[RunResult, RunResult]:
        first = await optimizer.optimize(min_volatility(request_id="r-1"), time_remaining_s=None)
        again = await optimizer.optimize(min_volatility(request_id="r-1"), time_remaining_s=None)
        return first, again

    first, again = asyncio.run(scenario())
    assert again.replayed and not first.replayed
    assert again.result == first.result
    assert solver.solves == 1
    assert len(store.runs("p")) == 1


def test_a_request_id_reused_for_another_request_is_invalid_and_stores_nothing() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)
    asyncio.run(optimizer.optimize(min_volatility(request_id="r-1"), time_remaining_s=None))
    changed = min_volatility(request_id="r-1", request_hash="hash-2")
    with pytest.raises(InvalidInputError) as caught:
        asyncio.run(optimizer.optimize(changed, time_remaining_s=None))
    assert [v.field for v in caught.value.field_violations] == ["request_id"]
    assert len(store.runs()) == 1 and solver.solves == 1


def test_concurrent_calls_with_one_request_id_store_one_run_and_answer_alike() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> list[RunResult]:
        calls = (optimizer.optimize(min_volatility(request_id="r-1"), time_remaining_s=None) for _ in range(2))
        return list(await asyncio.gather(*calls))

    first, second = asyncio.run(scenario())
    # Both solved (neither had committed when the other looked); the later commit hit the key and replayed.
    assert solver.solves == 2
    assert [first.replayed, second.replayed] == [False, True]
    assert second.result == first.result
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
        asyncio.run(service(store, solver).optimize(min_volatility(lower=request_lower), time_remaining_s=None))
    assert store.runs() == ()
    with pytest.raises(NotFoundError):
        asyncio.run(store.get_configuration("p"))


def test_runs_on_stored_prices_estimate_from_the_ingested_bars() -> None:
    rng = np.random.default_rng(7)
    prices = {s: 100.0 * np.cumprod(1.0 + rng.normal(0.0005, vol, 60)) for s, vol in (("A", 0.01), ("B", 0.02))}
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)
    bars = price_bars(prices)
    ingested = asyncio.run(optimizer.ingest(stream(bars[:70], bars[70:])))
    assert (ingested.rows_written, ingested.symbols) == (120, ("A", "B"))
    assert (ingested.first_timestamp, ingested.last_timestamp) == (T0, T0 + timedelta(days=59))
    command = min_volatility("stored", inputs=MarketDataWindow(lookback_periods=40))
    result = asyncio.run(optimizer.optimize(command, time_remaining_s=None)).result
    # Truth: the two-asset minimum-variance weights of the sample covariance of the last 40 simple returns.
    returns = np.column_stack([np.diff(prices[s][-41:]) / prices[s][-41:-1] for s in ("A", "B")])
    covariance = np.cov(returns, rowvar=False)
    weight_a = (covariance[1, 1] - covariance[0, 1]) / (covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    assert result.weights["A"] == pytest.approx(weight_a, abs=1e-6)
    assert result.metadata.observations == 40
    assert store.runs("stored")[0].run_inputs["kind"] == "market_data"
    assert asyncio.run(store.get_configuration("stored")).lookback_periods == 40


def test_missing_stored_prices_are_a_precondition_error_and_store_nothing() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    base = min_volatility(inputs=MarketDataWindow(lookback_periods=10))
    command = replace(base, problem=replace(base.problem, symbols=("NOPE1", "NOPE2")))
    with pytest.raises(PreconditionError) as caught:
        asyncio.run(service(store, solver).optimize(command, time_remaining_s=None))
    assert [v.subject for v in caught.value.precondition_violations] == ["NOPE1", "NOPE2"]
    assert solver.solves == 0 and store.runs() == ()


def test_run_configuration_reruns_the_stored_configuration_and_its_retry_replays() -> None:
    rng = np.random.default_rng(11)
    prices = {s: 100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, 30)) for s in ("A", "B")}
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> tuple[RunResult, RunResult]:
        await optimizer.ingest(stream(price_bars(prices)))
        config = configuration("cfg", lookback_periods=20)
        stored = await optimizer.upsert_configuration(config)
        assert (stored.configuration.version, stored.created) == (1, True)
        first = await optimizer.run_configuration("cfg", "rerun-1", time_remaining_s=None)
        # An edit after the run does not change the answer to a retry of the same request_id.
        edited = await optimizer.upsert_configuration(replace(config, objective="OBJECTIVE_MAX_SHARPE"))
        assert (edited.configuration.version, edited.created) == (2, True)
        retry = await optimizer.run_configuration("cfg", "rerun-1", time_remaining_s=None)
        return first, retry

    first, retry = asyncio.run(scenario())
    assert first.result.metadata.configuration_version == 1
    assert first.result.metadata.observations == 20
    assert retry.replayed and not first.replayed
    assert retry.result == first.result
    assert solver.solves == 1


def test_a_disabled_configuration_is_not_run() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)
    asyncio.run(optimizer.upsert_configuration(configuration("off", enabled=False)))
    with pytest.raises(PreconditionError) as caught:
        asyncio.run(optimizer.run_configuration("off", "", time_remaining_s=None))
    assert [v.type for v in caught.value.precondition_violations] == ["CONFIGURATION_DISABLED"]
    assert solver.solves == 0 and store.runs() == ()


def test_configurations_are_listed_in_pages_with_tokens() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> list[list[str]]:
        for portfolio_id in ("c", "a", "b"):
            await optimizer.upsert_configuration(configuration(portfolio_id))
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


def test_a_batch_stores_its_good_items_and_reports_the_bad_ones() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    refused = InvalidInputError.for_field("objective", "must be set")
    batch = BatchCommand(
        items=(
            min_volatility("p1"),
            min_volatility("p2", lower=0.6),
            InvalidItem(portfolio_id="p3", error=refused),
            min_volatility("p4"),
        )
    )
    result = asyncio.run(service(store, solver).batch_optimize(batch, time_remaining_s=None))
    assert (result.succeeded, result.failed) == (2, 2)
    outcomes = result.outcomes
    assert isinstance(outcomes[0], RunResult) and isinstance(outcomes[3], RunResult)
    assert isinstance(outcomes[1], InfeasibleError)
    assert outcomes[2] is refused
    assert [len(store.runs(p)) for p in ("p1", "p2", "p3", "p4")] == [1, 0, 0, 1]
    assert solver.solves == 3


def test_an_empty_batch_is_invalid() -> None:
    with pytest.raises(InvalidInputError, match="requests"):
        asyncio.run(
            service(InMemoryOptimizationStore(), InProcessSolver()).batch_optimize(
                BatchCommand(items=()), time_remaining_s=None
            )
        )


def test_the_efficient_frontier_starts_at_the_minimum_variance_portfolio_and_stores_nothing() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    base = min_volatility()
    command = FrontierCommand(
        problem=base.problem, settings=base.settings, method=base.method, inputs=TWO_ASSET_MOMENTS, points=4
    )
    frontier = asyncio.run(service(store, solver).efficient_frontier(command, time_remaining_s=None))
    assert len(frontier.points) == 4
    first, last = frontier.points[0], frontier.points[-1]
    np.testing.assert_allclose([first.weights["A"], first.weights["B"]], MIN_VOLATILITY_WEIGHTS, atol=1e-6)
    assert first.volatility == pytest.approx(math.sqrt(0.04 * 0.09 / 0.13), rel=1e-6)
    # The last point is the highest-return portfolio: all in B (return 0.08, volatility 0.3).
    assert (last.expected_return, last.volatility) == (pytest.approx(0.08, abs=1e-6), pytest.approx(0.3, abs=1e-6))
    volatilities = [p.volatility for p in frontier.points]
    assert volatilities == sorted(volatilities)
    assert store.runs() == ()


def test_a_configuration_is_read_back_by_version() -> None:
    store, solver = InMemoryOptimizationStore(), InProcessSolver()
    optimizer = service(store, solver)

    async def scenario() -> tuple[int, int, bool]:
        first = await optimizer.upsert_configuration(configuration("v"))
        again = await optimizer.upsert_configuration(configuration("v"))
        read = await optimizer.get_configuration("v", 1)
        return first.configuration.version, read.version, again.created

    assert asyncio.run(scenario()) == (1, 1, False)
    with pytest.raises(NotFoundError):
        asyncio.run(optimizer.get_configuration("v", 2))
    with pytest.raises(InvalidInputError, match="portfolio_id"):
        asyncio.run(optimizer.get_configuration("", 0))
