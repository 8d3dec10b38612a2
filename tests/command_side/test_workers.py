"""The solver worker pool on its own: jobs run in a spawned worker, errors come back as the domain's.

One pool with one worker serves the module (starting a worker imports the engine: seconds, paid once, and again
only after the crash test kills it).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from command_side.optimization_store import EncodedRun, content_of
from command_side.workers import SolverPool
from services.engine import OptimizationJob
from services.errors import DeadlineExceededError, InfeasibleError, InvalidInputError, UnavailableError
from services.optimization import Objective, PortfolioProblem
from services.trading import AllocationRequest, AllocationTarget
from services.types import EstimationSettings, Moments


@pytest.fixture(scope="module")
def solver_pool() -> Iterator[SolverPool]:
    pool = SolverPool(workers=1)
    yield pool
    pool.shutdown()


def min_volatility_job(lower: float = 0.0) -> OptimizationJob:
    """Two uncorrelated assets with variances 0.04 and 0.09: the minimum-variance weights are 9/13 and 4/13."""
    problem = PortfolioProblem(
        symbols=("a", "b"),
        objective=Objective.MIN_VOLATILITY,
        lower_bounds=np.full(2, lower),
        upper_bounds=np.ones(2),
    )
    moments = Moments(expected_returns=np.array([0.05, 0.08]), covariance=np.diag([0.04, 0.09]))
    return OptimizationJob(problem=problem, inputs=moments, settings=EstimationSettings())


def test_a_worker_runs_a_job_and_returns_its_result(solver_pool: SolverPool) -> None:
    outcome = asyncio.run(solver_pool.run(min_volatility_job(), timeout_s=120))
    np.testing.assert_allclose(outcome.result.weights, [9 / 13, 4 / 13], atol=1e-7)
    # σ² = w'Σw = 0.04·0.09 / 0.13 for inverse-variance weights.
    assert outcome.result.performance.volatility == pytest.approx(math.sqrt(0.04 * 0.09 / 0.13), rel=1e-6)


def test_an_allocation_runs_in_a_worker(solver_pool: SolverPool) -> None:
    request = AllocationRequest(
        targets=(
            AllocationTarget(symbol="A", target_weight=0.5, price=100.0),
            AllocationTarget(symbol="B", target_weight=0.5, price=50.0),
        ),
        extra_cash=1_000.0,
    )
    result = asyncio.run(solver_pool.allocate(request, timeout_s=120))
    assert [(line.symbol, line.final_shares) for line in result.lines] == [("A", 5), ("B", 10)]
    assert result.budget_used == pytest.approx(1_000.0)


def test_engine_errors_come_back_as_raised_in_the_worker(solver_pool: SolverPool) -> None:
    with pytest.raises(InfeasibleError):  # lower bounds of 0.6 + 0.6 exceed the budget of 1
        asyncio.run(solver_pool.run(min_volatility_job(lower=0.6), timeout_s=120))


def test_a_chunk_of_serialised_requests_is_parsed_solved_and_encoded_in_a_worker_with_errors_per_item(
    solver_pool: SolverPool,
) -> None:
    from command_side.mapping import optimize_command_from_bytes
    from command_side.optimization_adapter import encoded_run
    from stratopt.v1 import command_service_pb2 as cmd_pb
    from stratopt.v1 import types_pb2 as pb

    def request(lower: float = 0.0, objective: int = pb.OBJECTIVE_MIN_VOLATILITY) -> bytes:
        message = cmd_pb.OptimizeRequest(
            portfolio_id="p",
            objective=objective,  # type: ignore[arg-type]
            moments=pb.MomentsInput(expected_returns=[0.05, 0.08], covariance=[0.04, 0.0, 0.0, 0.09]),
            constraints=pb.OptimizationConstraints(min_weight=lower),
        )
        message.strategies.extend([pb.Strategy(symbol="a"), pb.Strategy(symbol="b")])
        return message.SerializeToString()

    payloads = [request(), request(objective=pb.OBJECTIVE_UNSPECIFIED), request(lower=0.6), request()]
    answers = asyncio.run(
        solver_pool.parse_and_run_batch(
            optimize_command_from_bytes, encoded_run, payloads, time_limit_s=None, timeout_s=120
        )
    )
    good, invalid, infeasible, again = answers
    assert isinstance(good, EncodedRun) and isinstance(again, EncodedRun)
    for run in (good, again):  # inverse-variance weights, as above
        assert run.portfolio_id == "p" and json.loads(run.run_inputs)["kind"] == "moments"
        weights = cmd_pb.OptimizeResponse.FromString(run.response).optimal_weights
        np.testing.assert_allclose([weights["a"], weights["b"]], [9 / 13, 4 / 13], atol=1e-7)
    configuration, content = good.decoded_configuration()
    assert configuration.portfolio_id == "p" and content == content_of(configuration)  # computed in the worker
    assert good.content_hash == content[1] and good.event_id != again.event_id
    assert isinstance(invalid, InvalidInputError)
    assert [v.field for v in invalid.field_violations] == ["objective"]
    assert isinstance(infeasible, InfeasibleError)


def frontier_job(n: int = 150) -> OptimizationJob:
    """A 150-asset factor model whose 100-point efficient frontier takes over a second to trace."""
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(n, 5)) * 0.1
    moments = Moments(
        expected_returns=rng.uniform(0.02, 0.15, n),
        covariance=factors @ factors.T + np.diag(rng.uniform(0.01, 0.05, n)),
    )
    problem = PortfolioProblem(
        symbols=tuple(f"s{i}" for i in range(n)),
        objective=Objective.MIN_VOLATILITY,
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, 0.05),
    )
    return OptimizationJob(problem=problem, inputs=moments, settings=EstimationSettings())


def test_a_job_outliving_its_timeout_is_deadline_exceeded(solver_pool: SolverPool) -> None:
    with pytest.raises(DeadlineExceededError, match=r"did not finish within 0\.050 s"):
        asyncio.run(solver_pool.frontier(frontier_job(), 100, timeout_s=0.05))


def test_a_worker_dying_mid_job_fails_that_call_unavailable_and_is_replaced(solver_pool: SolverPool) -> None:
    async def scenario() -> None:
        await solver_pool.run(min_volatility_job(), timeout_s=120)  # the worker is up
        busy = asyncio.create_task(solver_pool.frontier(frontier_job(), 100, timeout_s=120))
        while not solver_pool.busy:  # noqa: ASYNC110  # polling on purpose
            await asyncio.sleep(0.01)
        [process] = solver_pool.processes()
        process.kill()  # the OOM killer, say
        with pytest.raises(UnavailableError, match="worker process died"):
            await busy
        outcome = await solver_pool.run(min_volatility_job(), timeout_s=120)
        np.testing.assert_allclose(outcome.result.weights, [9 / 13, 4 / 13], atol=1e-7)
        [replacement] = solver_pool.processes()
        assert replacement.pid != process.pid

    asyncio.run(scenario())


def test_a_worker_dying_while_idle_is_replaced_without_failing_a_call(solver_pool: SolverPool) -> None:
    async def scenario() -> None:
        await solver_pool.run(min_volatility_job(), timeout_s=120)
        [process] = solver_pool.processes()
        process.kill()
        process.join(10)
        outcome = await solver_pool.run(min_volatility_job(), timeout_s=120)  # waits for the replacement
        np.testing.assert_allclose(outcome.result.weights, [9 / 13, 4 / 13], atol=1e-7)
        [replacement] = solver_pool.processes()
        assert replacement.pid != process.pid
        assert solver_pool.workers_alive()

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_the_worker_to_finish_and_serve_the_next_call(solver_pool: SolverPool) -> None:
    async def scenario() -> None:
        slow = asyncio.create_task(solver_pool.frontier(frontier_job(), 100, timeout_s=120))
        while not solver_pool.busy:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        assert solver_pool.pending == 0
        # The next job waits for the abandoned one, then gets its own answer (not the frontier's).
        outcome = await solver_pool.run(min_volatility_job(), timeout_s=120)
        np.testing.assert_allclose(outcome.result.weights, [9 / 13, 4 / 13], atol=1e-7)

    asyncio.run(scenario())


def inverse_variance_job(variance_b: float) -> OptimizationJob:
    """Two uncorrelated assets with variances 0.04 and ``variance_b``: weights 1/σ² normalised (closed form)."""
    problem = PortfolioProblem(
        symbols=("a", "b"), objective=Objective.MIN_VOLATILITY, lower_bounds=np.zeros(2), upper_bounds=np.ones(2)
    )
    moments = Moments(expected_returns=np.array([0.05, 0.08]), covariance=np.diag([0.04, variance_b]))
    return OptimizationJob(problem=problem, inputs=moments, settings=EstimationSettings())


def test_pipelined_jobs_get_their_own_answers_in_any_completion_order(solver_pool: SolverPool) -> None:
    # One worker, many jobs at once: two are sent ahead (the pipeline), the rest wait in the backlog; one caller
    # gives up while waiting. Every other caller must get the answer to its own job.
    variances = [0.01 * (k + 1) for k in range(12)]

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(solver_pool.run(inverse_variance_job(v), timeout_s=120)) for v in variances]
        await asyncio.sleep(0)
        tasks[5].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[5], asyncio.CancelledError)
    for k, (variance, outcome) in enumerate(zip(variances, outcomes, strict=True)):
        if k == 5:
            continue
        expected = np.array([variance, 0.04]) / (0.04 + variance)
        np.testing.assert_allclose(outcome.result.weights, expected, atol=1e-7)  # type: ignore[attr-defined]


def test_a_worker_ignores_ctrl_c_so_that_the_servers_drain_can_finish_its_calls(solver_pool: SolverPool) -> None:
    async def scenario() -> None:
        await solver_pool.run(min_volatility_job(), timeout_s=120)
        [process] = solver_pool.processes()
        busy = asyncio.create_task(solver_pool.frontier(frontier_job(), 100, timeout_s=120))
        while not solver_pool.busy:  # noqa: ASYNC110  # polling on purpose
            await asyncio.sleep(0.01)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGINT)  # what Ctrl-C sends to the whole process group
        outcome = await busy  # the running job still answers
        assert len(outcome.results) > 0
        assert process.is_alive()
        [same] = solver_pool.processes()
        assert same.pid == process.pid

    asyncio.run(scenario())
