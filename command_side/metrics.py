"""The command side's Prometheus metrics: solver time, jobs per solver pool, worker restarts and events written.

These are process-wide (one solver pool, with its heavy pool, and one write model per process), so they live in
prometheus_client's default registry, created once at import; the composition root (``stratopt_cli.metrics``)
exposes that registry beside each server's own per-RPC metrics. Each function here is the one call site's hook,
so the use cases and stores stay free of metric objects.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.engine import OptimizationJob, OptimizationOutcome

SOLVER_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets (seconds) for solver time: 1 ms to 60 s, about three per decade."""

SOLVER_SECONDS = Histogram(
    "stratopt_solver_duration_seconds",
    "Wall time of one optimization in a solver worker (estimation plus solve), by method, objective and the "
    "solve path (backend) that answered.",
    ["method", "objective", "solve_path"],
    buckets=SOLVER_BUCKETS_S,
)
WORKER_RESTARTS = Counter(
    "stratopt_solver_worker_restarts",
    "Times the solver worker pool was replaced because a worker process died.",
)
SOLVER_JOBS = Counter(
    "stratopt_solver_jobs",
    "Jobs a solver worker answered (result or error), by pool: main, or heavy for the large or slow problems.",
    ["pool"],
)
EVENTS_WRITTEN = Counter(
    "stratopt_events_written",
    "Events inserted into an event hypertable, by table and event type.",
    ["table", "event_type"],
)


def observe_solve(job: OptimizationJob, outcome: OptimizationOutcome) -> None:
    """Record the solver time of a finished optimization.

    Parameters
    ----------
    job : OptimizationJob
        The job the worker ran (its method and objective label the sample).
    outcome : OptimizationOutcome
        The worker's answer; ``total_time_ms`` (milliseconds) is recorded in seconds, labelled with
        ``result.solve_path``.
    """
    SOLVER_SECONDS.labels(
        method=str(job.method.method.value),
        objective=str(job.problem.objective.value),
        solve_path=str(outcome.result.solve_path) or "UNKNOWN",
    ).observe(outcome.total_time_ms / 1000.0)


def observe_solve_seconds(method: str, objective: str, solve_path: str, seconds: float) -> None:
    """Record the solver time of a finished optimization from its labels (``observe_solve``'s, read in a worker).

    Parameters
    ----------
    method, objective : str
        ``job.method.method.value`` and ``job.problem.objective.value``.
    solve_path : str
        ``outcome.result.solve_path`` ('' = ``UNKNOWN``).
    seconds : float
        ``outcome.total_time_ms / 1000``.
    """
    SOLVER_SECONDS.labels(method=method, objective=objective, solve_path=solve_path or "UNKNOWN").observe(seconds)


def worker_pool_replaced() -> None:
    """Count one solver worker replaced after it died."""
    WORKER_RESTARTS.inc()


def solver_job_answered(pool: str) -> None:
    """Count one job answered by a worker of ``pool`` (``main`` or ``heavy``: ``command_side.workers``)."""
    SOLVER_JOBS.labels(pool=pool).inc()


def event_written(table: str, event_type: str) -> None:
    """Count one event inserted into ``table`` (``portfolio_optimized`` or ``rebalance_events``)."""
    EVENTS_WRITTEN.labels(table=table, event_type=event_type).inc()
