"""A pool of worker processes that runs solves off the event loop.

Processes are started with the ``spawn`` method (gRPC's threads make ``fork`` unsafe) and warmed up at
start-up (imports of NumPy, cvxpy and PyPortfolioOpt plus one small solve), so the first request pays no
import cost. The event loop only awaits futures: health checks and queries keep being answered while solves
run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from command_side.metrics import observe_solve, worker_pool_replaced
from services.engine import (
    FrontierOutcome,
    OptimizationJob,
    OptimizationOutcome,
    efficient_frontier,
    run_optimization,
)
from services.errors import DeadlineExceededError, ResourceExhaustedError, UnavailableError
from services.optimization import Objective, PortfolioProblem
from services.trading import AllocationRequest, AllocationResult
from services.trading import allocate as allocate_shares
from services.types import EstimationSettings, Moments

T = TypeVar("T")

DEFAULT_QUEUE_PER_WORKER = 16
"""Default ``max_queue`` per worker process: calls admitted beyond the ones the workers run.

Measured with ``benchmarks/load.py`` on 2 shared cores (docs/throughput.md): at 32 closed-loop clients up to about
30 Optimize calls are in flight at once, most of them in the event loop (parsing, storing) rather than in a worker;
a queue of 16 per worker admits all of them and rejects the excess at 128 clients within milliseconds.
"""
_RETRY_BOUNDS_S = (0.01, 10.0)
"""Bounds of the retry delay a rejected call is given (seconds)."""
_THROUGHPUT_WINDOW = 64
"""Completed calls whose times estimate the current throughput."""


PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal the kernel sends this process when its parent thread exits."""


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when the server that spawned it dies, even by ``kill -9`` (Linux).

    Without it, a killed server leaves its workers (hundreds of MB each) running. The workers hold the
    multiprocessing resource tracker's pipe open, so once they are gone the tracker sees end-of-file and exits
    too. When the parent died before the ``prctl`` call, this worker exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # best effort: the pool still works, the worker just outlives a killed server
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


def _single_threaded_blas() -> None:
    """Worker initializer: die with the parent (``_die_with_parent``), and limit the worker to one BLAS thread.

    The pool already runs one process per core; oversubscribed BLAS threads made 500x500 products and
    eigendecompositions 4-10x slower under load (benchmark, 2 cores). XLA (risk parity's JAX solver) reads its
    flags when its backend starts, after this: single-threaded it took 1.0 s at N = 2000 against 2.8-12.6 s
    multi-threaded on the shared 2-core machine (``benchmarks/risk_parity_speed.py``).
    """
    _die_with_parent()
    threadpool_limits(1)
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def _warm_up() -> bool:
    """Import the engine's libraries and run one tiny solve in this worker."""
    problem = PortfolioProblem(
        symbols=("a", "b"),
        objective=Objective.MAX_SHARPE,
        lower_bounds=np.zeros(2),
        upper_bounds=np.ones(2),
    )
    moments = Moments(expected_returns=np.array([0.1, 0.2]), covariance=np.array([[0.04, 0.0], [0.0, 0.09]]))
    run_optimization(OptimizationJob(problem=problem, inputs=moments, settings=EstimationSettings()))
    return True


class SolverPool:
    """Worker processes for ``services.engine.run_optimization``.

    Parameters
    ----------
    workers : int, optional
        Number of processes; default ``os.cpu_count()``.
    max_queue : int, optional
        Calls admitted (``admitted``) beyond ``workers`` before new ones are refused with
        ``ResourceExhaustedError``; default ``DEFAULT_QUEUE_PER_WORKER`` per worker.
    """

    def __init__(self, workers: int | None = None, *, max_queue: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.max_queue = DEFAULT_QUEUE_PER_WORKER * self.workers if max_queue is None else max(0, max_queue)
        self._executor = self._new_executor()
        self._warming: asyncio.Task[None] | None = None
        self.pending = 0
        """Calls submitted to the workers and not finished yet (running or queued): the queue-depth gauge."""
        self._in_flight = 0
        self._completions: collections.deque[float] = collections.deque(maxlen=_THROUGHPUT_WINDOW)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet finished (running in a worker, waiting for one, or storing)."""
        return self._in_flight

    def queue_wait_estimate_s(self) -> float:
        """Seconds until the calls now in flight are done at the recent throughput (Little's law).

        The throughput is the rate of the last ``_THROUGHPUT_WINDOW`` completions; with fewer than two the
        estimate is the upper bound of ``_RETRY_BOUNDS_S``'s range divided by ten (1 s).
        """
        low, high = _RETRY_BOUNDS_S
        if len(self._completions) < 2:
            return high / 10
        span = time.monotonic() - self._completions[0]
        rate = (len(self._completions) - 1) / span if span > 0 else 0.0
        if rate <= 0.0:
            return high
        return min(high, max(low, self._in_flight / rate))

    def check_capacity(self) -> None:
        """Refuse now, before any parsing, when every place is taken (``admitted`` still reserves one later).

        Raises
        ------
        ResourceExhaustedError
            As ``admitted``.
        """
        if self._in_flight >= self.workers + self.max_queue:
            raise ResourceExhaustedError(
                "the solve queue is full; retry later", retry_after_s=self.queue_wait_estimate_s()
            )

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one place among ``workers + max_queue`` for the duration of a call.

        Take it before any work that leads to a solve (and hold it while the result is stored: the event loop's
        share of a call is part of what queues), so a refused call costs nothing and writes nothing.

        Raises
        ------
        ResourceExhaustedError
            All places are taken; its ``retry_after_s`` is ``queue_wait_estimate_s()``.
        """
        self.check_capacity()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._completions.append(time.monotonic())

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_threaded_blas
        )

    async def warm_up(self) -> None:
        """Start every worker and run one small solve in each."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _warm_up) for _ in range(self.workers)))

    async def frontier(self, job: OptimizationJob, points: int, *, timeout_s: float | None) -> FrontierOutcome:
        """Run ``services.engine.efficient_frontier`` in a worker (errors as ``run``)."""
        return await self._call(efficient_frontier, job, points, timeout_s=timeout_s)

    async def allocate(self, request: AllocationRequest, *, timeout_s: float | None) -> AllocationResult:
        """Run ``services.trading.allocate`` (the integer-share MILP) in a worker.

        Parameters
        ----------
        request : AllocationRequest
            The allocation problem; its ``time_limit_s`` (seconds) bounds the solve in the worker, which then
            returns its greedy answer, so ``timeout_s`` should leave a little more time than that.
        timeout_s : float or None
            Seconds to wait for the worker's answer; None waits without limit.

        Returns
        -------
        AllocationResult
            The engine's result.

        Raises
        ------
        InvalidInputError, InfeasibleError
            From the engine, as it raised them in the worker.
        DeadlineExceededError, UnavailableError
            As ``run``.
        """
        return await self._call(allocate_shares, request, timeout_s=timeout_s)

    async def run(self, job: OptimizationJob, *, timeout_s: float | None) -> OptimizationOutcome:
        """Run one job in a worker; raise ``DeadlineExceededError`` when it outlives ``timeout_s``.

        Raises
        ------
        DeadlineExceededError
            The job did not finish in time (the worker's solver also stops at the job's own time limit).
        UnavailableError
            A worker died (e.g. killed for memory), now or while idle; the pool is replaced once, warmed up in
            the background, and later calls go to the new one.
        """
        outcome = await self._call(run_optimization, job, timeout_s=timeout_s)
        observe_solve(job, outcome)
        return outcome

    async def _call(self, function: Callable[..., T], *args: object, timeout_s: float | None) -> T:
        loop = asyncio.get_running_loop()
        executor = self._executor
        self.pending += 1
        try:
            future = loop.run_in_executor(executor, function, *args)
            return await asyncio.wait_for(future, timeout=timeout_s)
        except TimeoutError as exc:
            raise DeadlineExceededError(f"the optimization did not finish within {timeout_s:.3f} s") from exc
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise UnavailableError("a solver worker process died; retry the call") from exc
        finally:
            self.pending -= 1

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Swap in a fresh executor once per broken one (concurrent callers see the same broken pool)."""
        if self._executor is not broken:
            return
        self._executor = self._new_executor()
        worker_pool_replaced()
        broken.shutdown(wait=False, cancel_futures=True)
        self._warming = asyncio.get_running_loop().create_task(self.warm_up())

    def shutdown(self) -> None:
        """Stop the workers (running jobs are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
