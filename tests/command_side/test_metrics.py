"""The solver pool's metric hooks: solver time by method and path, pending calls, and worker restarts."""

from __future__ import annotations

import asyncio

import numpy as np
import prometheus_client
import pytest

from command_side.workers import SolverPool
from services.errors import UnavailableError
from tests.command_side.test_workers import frontier_job, min_volatility_job


def sample(name: str, **labels: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_solve_time_pending_calls_and_a_restart_are_recorded() -> None:
    pool = SolverPool(workers=1)
    solver = {"method": "MEAN_VARIANCE", "objective": "MIN_VOLATILITY"}

    async def scenario() -> None:
        outcome = await pool.run(min_volatility_job(), timeout_s=120)
        labels = {**solver, "solve_path": str(outcome.result.solve_path)}
        count = sample("stratopt_solver_duration_seconds_count", **labels)
        total = sample("stratopt_solver_duration_seconds_sum", **labels)
        again = await pool.run(min_volatility_job(), timeout_s=120)
        assert sample("stratopt_solver_duration_seconds_count", **labels) == count + 1
        assert sample("stratopt_solver_duration_seconds_sum", **labels) == pytest.approx(
            total + again.total_time_ms / 1000
        )

        assert pool.pending == 0
        slow = asyncio.create_task(pool.frontier(frontier_job(), 100, timeout_s=120))
        await asyncio.sleep(0.05)
        assert pool.pending == 1  # submitted, running in the worker
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        assert pool.pending == 0

        while pool.busy:  # noqa: ASYNC110  # the cancelled frontier still runs in the worker until it ends
            await asyncio.sleep(0.05)
        restarts = sample("stratopt_solver_worker_restarts_total")
        busy = asyncio.create_task(pool.frontier(frontier_job(), 100, timeout_s=120))
        await asyncio.sleep(0.05)
        [process] = pool.processes()
        process.kill()  # the OOM killer, say, while the worker runs a job
        with pytest.raises(UnavailableError, match="worker process died"):
            await busy
        assert sample("stratopt_solver_worker_restarts_total") == restarts + 1
        assert pool.pending == 0
        recovered = await pool.run(min_volatility_job(), timeout_s=120)
        np.testing.assert_allclose(recovered.result.weights, [9 / 13, 4 / 13], atol=1e-7)

    try:
        asyncio.run(scenario())
    finally:
        pool.shutdown()
