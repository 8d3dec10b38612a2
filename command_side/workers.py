"""A pool of worker processes that runs solves off the event loop.

Processes are started with the ``spawn`` method (gRPC's threads make ``fork`` unsafe) and warmed up at
start-up (imports of NumPy, cvxpy and PyPortfolioOpt plus one small solve), so the first request pays no
import cost. The event loop only awaits futures: health checks and queries keep being answered while solves
run.

Each worker is connected to the server by its own Unix socket pair, driven by the event loop itself
(``asyncio`` streams): a job is one length-prefixed pickle frame out, its result or exception one frame back.
``concurrent.futures.ProcessPoolExecutor`` did the same with two helper threads (a queue feeder that pickles
and writes, a manager that reads and hands results over); under load those threads and the event loop took
turns on the GIL at every hand-off, and a call waited for the switches (docs/throughput.md). Here no thread
but the loop's touches a job. A worker that dies (the OOM killer, say) is noticed at once, whether busy or
idle: its call, if any, fails with ``UnavailableError``, and a new worker is started and warmed up in its place.

Heavy jobs apart: a pool may own a second pool, its *heavy pool* (``heavy_workers``), with workers, a queue limit and
admission of its own. Jobs that ``services.workload`` classifies as heavy (N at or above ``heavy_assets``, scenario
risk measures, cardinality, robust optimization) run there, so they never occupy the workers of the small calls,
whose latency stays what it is without them (``benchmarks/heavy_isolation.py``).

Why one long module: the worker's loop, the framing both ends share and the pool that drives them change together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar, cast

import numpy as np
from threadpoolctl import threadpool_limits

from command_side.field_paths import OPTIMIZATION, proto_field_paths
from command_side.metrics import observe_solve, observe_solve_seconds, solver_job_answered, worker_pool_replaced
from command_side.optimization_commands import MarketDataWindow, OptimizeCommand
from command_side.optimization_store import EncodedRun
from services.engine import (
    FrontierOutcome,
    OptimizationJob,
    OptimizationOutcome,
    efficient_frontier,
    run_optimization,
    run_optimization_batch,
)
from services.errors import DeadlineExceededError, ResourceExhaustedError, StratoptError, UnavailableError
from services.optimization import Objective, PortfolioProblem, warm_up_batch
from services.rotation import CycleDecision, run_cycle
from services.trading import AllocationRequest, AllocationResult
from services.trading import allocate as allocate_shares
from services.types import EstimationSettings, Moments, ReturnHistory
from services.workload import DEFAULT_HEAVY_ASSETS, Workload, job_workload

T = TypeVar("T")

DEFAULT_QUEUE_PER_WORKER = 16
"""Default ``max_queue`` per worker process: calls admitted beyond the ones the workers run.

Measured with ``benchmarks/load.py`` on 2 shared cores (docs/throughput.md): at 32 closed-loop clients up to about
30 Optimize calls are in flight at once, most of them in the event loop (parsing, storing) rather than in a worker;
a queue of 16 per worker admits all of them and rejects the excess at 128 clients within milliseconds.
"""
DEFAULT_HEAVY_QUEUE_PER_WORKER = 4
"""Default ``max_queue`` per heavy worker: a heavy job takes about a second or more, so a longer queue would only
make callers wait longer for an answer they may no longer want; beyond it heavy calls get RESOURCE_EXHAUSTED."""
MAIN, HEAVY = "main", "heavy"
"""Names of the two pools (the ``pool`` label of their metrics)."""


def default_heavy_workers(cpus: int | None = None) -> int:
    """Heavy workers ``stratopt serve`` starts by default: one per four cores, at least one.

    Parameters
    ----------
    cpus : int, optional
        Cores available; default ``os.cpu_count()``.

    Returns
    -------
    int
        ``max(1, cpus // 4)``.
    """
    return max(1, (cpus or os.cpu_count() or 1) // 4)


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


_HEADER = struct.Struct("!Q")
"""Frame header: the length in bytes of the pickle that follows (unsigned 64-bit, network order)."""
_START_ATTEMPTS = 3
"""Worker starts tried in a row before waiting calls are failed with ``UnavailableError``."""

log = logging.getLogger(__name__)


def _merged(parts: Sequence[object], heavy: list[bool]) -> list[Any]:
    """The answers of a chunk split between the pools, in the chunk's order.

    A pool's ``StratoptError`` (its worker lost, its time up) answers that pool's items only: the other pool's
    answers stand. Any other error is raised.
    """
    filled: list[list[Any]] = []
    for part, count in zip(parts, (heavy.count(False), heavy.count(True)), strict=True):
        if isinstance(part, StratoptError):
            filled.append([part] * count)
        elif isinstance(part, BaseException):
            raise part
        else:
            filled.append(list(cast(list[Any], part)))
    light_iter, heavy_iter = iter(filled[0]), iter(filled[1])
    return [next(heavy_iter) if h else next(light_iter) for h in heavy]


async def _nothing() -> list[OptimizationOutcome | StratoptError]:
    return []


class RemoteTracebackError(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__`` (as ``concurrent.futures``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _rotation_cycle(arguments: dict[str, Any]) -> CycleDecision:
    """``run_cycle`` with its keyword arguments (jobs carry positional arguments only), made picklable.

    A change's ``numbers`` is a read-only ``MappingProxyType``, which pickle refuses: it travels as a dict.
    """
    decision = run_cycle(**arguments)
    changes = tuple(replace(c, numbers=dict(c.numbers)) for c in decision.changes)
    return replace(decision, changes=changes)


def _receive(sock: socket.socket, size: int) -> bytearray | None:
    """Read exactly ``size`` bytes, or None at end of file."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            return None
        received += count
    return buffer


def _send(sock: socket.socket, value: object) -> None:
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception
        data = pickle.dumps((False, RuntimeError(f"the worker could not send its answer: {type(exc).__name__}"), ""))
    sock.sendall(_HEADER.pack(len(data)) + data)  # one write: the pool's reader wakes once per answer


def _serve(sock: socket.socket, warm_batch_assets: int = 0) -> None:
    """A worker process's main loop: read a job frame, run it, send ``(ok, value, traceback)`` back; exit at EOF.

    ``warm_batch_assets`` > 0: compile the batched solver for problems of up to that many names before the worker
    reports ready (``SolverPool``).
    """
    _single_threaded_blas()
    # Ctrl-C in a terminal signals the whole process group: the server drains on it and then stops the workers,
    # so a worker must not die first and fail the calls the drain is finishing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm_up()
    if warm_batch_assets > 0:
        warm_up_batch(warm_batch_assets)
    # The imported libraries live as long as the worker: keep full garbage collections (~130 ms over them)
    # from pausing the jobs (as the server does, stratopt_cli.server).
    gc.collect()
    gc.freeze()
    _send(sock, (True, os.getpid(), ""))
    with sock:
        while True:
            header = _receive(sock, _HEADER.size)
            if header is None:
                return
            payload = _receive(sock, _HEADER.unpack(header)[0])
            if payload is None:
                return
            try:
                function, args = pickle.loads(payload)
                reply: tuple[bool, object, str] = (True, function(*args), "")
            except Exception as exc:
                reply = (False, exc, "".join(traceback.format_exception(exc)))
            del payload
            _send(sock, reply)


def _parse_and_run(
    parse: Callable[[bytes], OptimizeCommand], payload: bytes, time_limit_s: float | None
) -> tuple[OptimizeCommand, OptimizationOutcome]:
    """In a worker: parse and check a serialised Optimize request, then solve it (``SolverPool.parse_and_run``).

    Returns the command without its return history (the event loop stores the run's configuration and result,
    never the inline returns: sending them back would only cost the loop time) and the outcome.
    """
    command = parse(payload)
    if isinstance(command.inputs, MarketDataWindow):  # the server reads stored prices before the solve
        raise TypeError("a request on stored prices cannot be parsed and solved in a worker alone")
    job = OptimizationJob(
        problem=command.problem,
        inputs=command.inputs,
        settings=command.settings,
        method=command.method,
        time_limit_s=time_limit_s,
    )
    with proto_field_paths(OPTIMIZATION, symbols=command.problem.symbols):
        outcome = run_optimization(job)
    inputs = command.inputs
    if isinstance(inputs, ReturnHistory):
        empty = np.empty((0, inputs.returns.shape[1]))
        inputs = ReturnHistory(returns=empty, timestamps=np.empty(0, dtype="datetime64[us]"))
    return replace(command, inputs=inputs), outcome


def _parse_and_run_batch(
    parse: Callable[[bytes], OptimizeCommand],
    encode: Callable[[OptimizeCommand, OptimizationOutcome], EncodedRun],
    payloads: list[bytes],
    time_limit_s: float | None,
) -> list[EncodedRun | Exception]:
    """In a worker: parse and check serialised Optimize requests, solve them together (``run_batch``), encode each run.

    Returns, per payload in order, the run encoded for storage with its answer (``encode``), or the error of a
    request that does not parse or check, of its solve (with proto field paths) or of its encoding.
    """
    answers: list[EncodedRun | Exception | None] = [None] * len(payloads)
    parsed: list[tuple[int, OptimizeCommand]] = []
    for k, payload in enumerate(payloads):
        try:
            command = parse(payload)
            if isinstance(command.inputs, MarketDataWindow):  # the server reads stored prices before the solve
                raise TypeError("a request on stored prices cannot be parsed and solved in a worker alone")
        except Exception as exc:  # one broken item must not sink the others
            answers[k] = exc
            continue
        parsed.append((k, command))
    jobs = []
    for _, c in parsed:
        assert not isinstance(c.inputs, MarketDataWindow)  # refused above
        jobs.append(
            OptimizationJob(
                problem=c.problem, inputs=c.inputs, settings=c.settings, method=c.method, time_limit_s=time_limit_s
            )
        )
    outcomes: list[OptimizationOutcome | Exception] = list(run_optimization_batch(jobs))
    for (k, command), outcome in zip(parsed, outcomes, strict=True):
        try:
            if isinstance(outcome, Exception):
                # the engine's field names as the request's paths, as the unary call answers
                with proto_field_paths(OPTIMIZATION, symbols=command.problem.symbols):
                    raise outcome
            answers[k] = encode(command, outcome)
        except Exception as exc:  # one broken item must not sink the others
            answers[k] = exc
    return [answer for answer in answers if answer is not None]


def _warm_up() -> bool:
    """Import the engine's libraries and the request parser, and run one tiny solve in this worker."""
    importlib.import_module("command_side.mapping")  # SerializedOptimize's parser: the contract's messages
    problem = PortfolioProblem(
        symbols=("a", "b"),
        objective=Objective.MAX_SHARPE,
        lower_bounds=np.zeros(2),
        upper_bounds=np.ones(2),
    )
    moments = Moments(expected_returns=np.array([0.1, 0.2]), covariance=np.array([[0.04, 0.0], [0.0, 0.09]]))
    run_optimization(OptimizationJob(problem=problem, inputs=moments, settings=EstimationSettings()))
    return True


_PIPELINE_DEPTH = 2
"""Jobs a worker holds at once: the one it runs and the next one, already in its socket.

With one job per worker, a worker sat idle from its answer until the event loop had read it and sent the next
job: under load at 32 clients the workers were 63 % idle while calls queued for them (benchmarks/load.py). With
the next job already sent it starts at once. A second job waits behind the first even if another worker frees
up sooner; a job is only doubled up when no worker is free.
"""


@dataclass(eq=False)
class _Worker:
    """One worker process and the loop's end of its socket."""

    process: BaseProcess
    sock: socket.socket
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    replies: collections.deque[asyncio.Future[Any]] = field(default_factory=collections.deque)
    """The answers its callers await, in the order the jobs were sent (at most ``_PIPELINE_DEPTH``)."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    """Reads this worker's answers until it dies."""
    lost: bool = False
    """Set once the pool has given this worker up (dead or shut down)."""


@dataclass(eq=False)
class _Job:
    """A pickled call, framed (length header and pickle), waiting for a worker, and the future its caller awaits."""

    frame: bytes
    reply: asyncio.Future[Any]


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(_HEADER.size)
    return await reader.readexactly(_HEADER.unpack(header)[0])


def _unpickle_answer(frame: bytes) -> tuple[bool, Any, str]:
    """A worker's ``(ok, value, traceback)``; an answer that cannot be read becomes a failed job."""
    try:
        return cast(tuple[bool, Any, str], pickle.loads(frame))
    except Exception as exc:
        return False, RuntimeError(f"the worker's answer could not be read: {type(exc).__name__}"), ""


class SolverPool:
    """Worker processes for ``services.engine.run_optimization`` (and the frontier and allocation solves).

    Workers start on the first call or on ``warm_up``; each runs one job at a time; jobs go to the least
    loaded worker in arrival order, and a busy worker is sent its next job before it is done
    (``_PIPELINE_DEPTH``). The pool is bound to the event loop that starts its workers; when that loop ends
    they stop, and a call from a later loop starts new ones.

    Parameters
    ----------
    workers : int, optional
        Number of processes; default ``os.cpu_count()``.
    max_queue : int, optional
        Calls admitted (``admitted``) beyond ``workers`` before new ones are refused with
        ``ResourceExhaustedError``; default ``DEFAULT_QUEUE_PER_WORKER`` per worker.
    heavy_workers : int, optional
        Processes of a second pool, ``heavy``, that runs the heavy jobs (``route``); 0 (the default) = none: every
        job runs here.
    heavy_max_queue : int, optional
        The heavy pool's ``max_queue``; default ``DEFAULT_HEAVY_QUEUE_PER_WORKER`` per heavy worker.
    heavy_assets : int, optional
        Strategies from which a job is heavy whatever its method (``services.workload.Workload.is_heavy``).
    name : str, optional
        The pool's name in metrics and logs (``MAIN``; its heavy pool is ``HEAVY``).
    warm_batch_assets : int, optional
        Each worker of this pool (not of its heavy pool) compiles the batched solver (``BatchOptimize``) for
        problems of up to this many names before it reports ready (``services.optimization.warm_up_batch``:
        about 10-20 s of one core, and memory for the executables); 0 (the default) = none: the first chunks of
        each shape compile in whichever worker solves them, once per worker, so the first batches take seconds
        longer.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_queue: int | None = None,
        heavy_workers: int = 0,
        heavy_max_queue: int | None = None,
        heavy_assets: int = DEFAULT_HEAVY_ASSETS,
        name: str = MAIN,
        warm_batch_assets: int = 0,
    ) -> None:
        self.name = name
        self.warm_batch_assets = max(0, warm_batch_assets)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.max_queue = DEFAULT_QUEUE_PER_WORKER * self.workers if max_queue is None else max(0, max_queue)
        self.heavy_assets = max(1, heavy_assets)
        self.heavy: SolverPool | None = None
        """The pool of the heavy jobs (None: this pool runs every job)."""
        if heavy_workers > 0:
            queue = DEFAULT_HEAVY_QUEUE_PER_WORKER * heavy_workers if heavy_max_queue is None else heavy_max_queue
            self.heavy = SolverPool(heavy_workers, max_queue=queue, name=HEAVY)
        self.pending = 0
        """Calls submitted to the workers and not finished yet (running or queued): the queue-depth gauge."""
        self._in_flight = 0
        self._completions: collections.deque[float] = collections.deque(maxlen=_THROUGHPUT_WINDOW)
        self._workers: list[_Worker] = []
        self._backlog: collections.deque[_Job] = collections.deque()
        self._starting: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._failed_starts = 0

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

    def route(self, workload: Workload | None) -> SolverPool:
        """The pool that runs (and admits) a job of this workload.

        Parameters
        ----------
        workload : Workload or None
            The job's traits (``services.workload.job_workload``); None = a job that is never heavy.

        Returns
        -------
        SolverPool
            ``heavy`` for a heavy workload (``Workload.is_heavy(heavy_assets)``) when this pool has one, else this
            pool.
        """
        if workload is not None and self.heavy is not None and workload.is_heavy(self.heavy_assets):
            return self.heavy
        return self

    def _route_job(self, job: OptimizationJob) -> SolverPool:
        return self.route(job_workload(job.problem, job.method)) if self.heavy is not None else self

    def check_capacity(self, workload: Workload | None = None) -> None:
        """Refuse now, before any parsing, when every place is taken (``admitted`` still reserves one later).

        Parameters
        ----------
        workload : Workload or None, optional
            The call's traits: a heavy one is checked against the heavy pool's places (``route``).

        Raises
        ------
        ResourceExhaustedError
            As ``admitted``.
        """
        target = self.route(workload)
        if target is not self:
            target.check_capacity()
            return
        if self._in_flight >= self.workers + self.max_queue:
            what = "solve queue" if self.name == MAIN else f"{self.name} solve queue"
            raise ResourceExhaustedError(f"the {what} is full; retry later", retry_after_s=self.queue_wait_estimate_s())

    @contextlib.contextmanager
    def admitted(self, workload: Workload | None = None) -> Iterator[None]:
        """Hold one place among ``workers + max_queue`` for the duration of a call.

        Take it before any work that leads to a solve (and hold it while the result is stored: the event loop's
        share of a call is part of what queues), so a refused call costs nothing and writes nothing.

        Parameters
        ----------
        workload : Workload or None, optional
            The call's traits: a heavy one takes its place in the heavy pool (``route``), so a full heavy queue
            refuses heavy calls only.

        Raises
        ------
        ResourceExhaustedError
            All places are taken; its ``retry_after_s`` is ``queue_wait_estimate_s()``.
        """
        target = self.route(workload)
        if target is not self:
            with target.admitted():
                yield
            return
        self.check_capacity()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._completions.append(time.monotonic())

    # --- the workers ------------------------------------------------------------------------------------------

    def processes(self) -> list[BaseProcess]:
        """The worker processes of this pool now connected (fewer than ``workers`` while one is being replaced).

        The heavy pool's are ``heavy.processes()``.
        """
        return [worker.process for worker in self._workers]

    @property
    def busy(self) -> int:
        """Workers running a job now (a job whose caller gave up still keeps its worker busy until it ends)."""
        return sum(1 for worker in self._workers if worker.replies)

    def workers_alive(self) -> bool:
        """Whether every worker, the heavy pool's included, is running and warmed up (True before the first start).

        False from the moment a worker dies until its replacement has warmed up.
        """
        if self.heavy is not None and not self.heavy.workers_alive():
            return False
        if not self._started:
            return True
        return len(self._workers) == self.workers and all(w.process.is_alive() for w in self._workers)

    async def warm_up(self) -> None:
        """Start every worker, the heavy pool's too, and run one small solve in each (returns when all are ready).

        Raises
        ------
        UnavailableError
            A worker could not be started ``_START_ATTEMPTS`` times in a row.
        """
        if self.heavy is None:
            await self._warm_up_own()
        else:
            await asyncio.gather(self._warm_up_own(), self.heavy.warm_up())

    async def _warm_up_own(self) -> None:
        await self._replenish_own()
        if not self._workers:
            raise UnavailableError(f"no {self.name} solver worker could be started")

    async def replenish(self) -> None:
        """Start workers until there are ``workers`` of them, in the heavy pool too (safe to call concurrently)."""
        if self.heavy is None:
            await self._replenish_own()
        else:
            await asyncio.gather(self._replenish_own(), self.heavy.replenish())

    async def _replenish_own(self) -> None:
        """Start this pool's missing workers (one start at a time; safe to call concurrently)."""
        if self._closed:
            return
        self._started = True
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._start_missing())
        await asyncio.shield(self._starting)

    async def _start_missing(self) -> None:
        while not self._closed and len(self._workers) < self.workers:
            missing = self.workers - len(self._workers)
            results = await asyncio.gather(*(self._start_worker() for _ in range(missing)), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                self._failed_starts = 0
                continue
            self._failed_starts += 1
            log.error("a solver worker failed to start (%s)", type(failures[0]).__name__, exc_info=failures[0])
            if self._failed_starts >= _START_ATTEMPTS:
                self._fail_waiters_if_no_worker()
                self._failed_starts = 0
                return
            await asyncio.sleep(0.5 * self._failed_starts)

    async def _start_worker(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair()
        try:
            label = "stratopt-solver" if self.name == MAIN else f"stratopt-solver-{self.name}"
            process = context.Process(target=_serve, args=(theirs, self.warm_batch_assets), name=label, daemon=True)
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        try:
            await _read_frame(reader)  # (True, pid, ""): imported, warmed up, ready
        except BaseException:
            writer.close()
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5)
            raise
        worker = _Worker(process=process, sock=ours, reader=reader, writer=writer)
        if self._closed:
            self._stop(worker)
            return
        worker.task = asyncio.get_running_loop().create_task(self._read_answers(worker))
        self._workers.append(worker)
        self._dispatch()

    async def _read_answers(self, worker: _Worker) -> None:
        try:
            while True:
                ok, value, remote_traceback = _unpickle_answer(await _read_frame(worker.reader))
                if not worker.replies:
                    raise OSError("an answer nobody asked for")  # cannot happen; treat the worker as broken
                reply = worker.replies.popleft()
                solver_job_answered(self.name)
                self._dispatch()  # the worker already runs its next job, if it had one: top it up first
                if not reply.done():  # else its caller gave up
                    if ok:
                        reply.set_result(value)
                    else:
                        if remote_traceback:
                            value.__cause__ = RemoteTracebackError(remote_traceback)
                        reply.set_exception(value)
        except (asyncio.IncompleteReadError, OSError):
            self._lost(worker)
        except asyncio.CancelledError:  # shutdown, or the event loop ends: no replacement
            self._lost(worker, replace=False)
            raise

    def _lost(self, worker: _Worker, *, replace: bool = True) -> None:
        """A worker died (or the pool shuts down): fail its calls, forget it, start another if ``replace``."""
        if worker.lost:
            return
        worker.lost = True
        if worker in self._workers:
            self._workers.remove(worker)
        while worker.replies:
            reply = worker.replies.popleft()
            if not reply.done():
                reply.set_exception(UnavailableError("a solver worker process died; retry the call"))
        self._stop(worker)
        if replace and not self._closed:
            log.warning(
                "%s solver worker %s died (exit code %s); starting another",
                self.name,
                worker.process.pid,
                worker.process.exitcode,
            )
            worker_pool_replaced()
            asyncio.get_running_loop().create_task(self._replenish_own())
        self._dispatch()

    def _stop(self, worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.writer.close()
        with contextlib.suppress(Exception):
            worker.process.kill()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().run_in_executor(None, worker.process.join, 5)

    def _fail_waiters_if_no_worker(self) -> None:
        if self._workers:
            return
        while self._backlog:
            job = self._backlog.popleft()
            if not job.reply.done():
                job.reply.set_exception(UnavailableError("no solver worker could be started; retry later"))

    def _least_loaded(self) -> _Worker | None:
        """The worker with the fewest jobs and room for one more (a dead idle one is replaced, not chosen)."""
        while True:
            best: _Worker | None = None
            for worker in self._workers:
                if len(worker.replies) < _PIPELINE_DEPTH and (best is None or len(worker.replies) < len(best.replies)):
                    best = worker
            if best is None or best.replies or best.process.is_alive():
                return best
            self._lost(best)  # died since its last answer, before its end of file was read

    def _dispatch(self) -> None:
        """Send waiting jobs, oldest first, to workers with room."""
        while self._backlog:
            job = self._backlog[0]
            if job.reply.done():  # its caller gave up while it waited
                self._backlog.popleft()
                continue
            worker = self._least_loaded()
            if worker is None:
                return
            self._backlog.popleft()
            worker.replies.append(job.reply)
            worker.writer.write(job.frame)

    # --- jobs -------------------------------------------------------------------------------------------------

    async def frontier(self, job: OptimizationJob, points: int, *, timeout_s: float | None) -> FrontierOutcome:
        """Run ``services.engine.efficient_frontier`` in a worker of the pool ``route`` picks (errors as ``run``)."""
        target = self._route_job(job)
        if target is not self:
            return await target.frontier(job, points, timeout_s=timeout_s)
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

    async def rotation_cycle(self, arguments: dict[str, Any], *, timeout_s: float | None) -> CycleDecision:
        """Run ``services.rotation.run_cycle(**arguments)`` in a worker (errors as ``run``)."""
        return await self._call(_rotation_cycle, arguments, timeout_s=timeout_s)

    async def run(self, job: OptimizationJob, *, timeout_s: float | None) -> OptimizationOutcome:
        """Run one job in a worker; raise ``DeadlineExceededError`` when it outlives ``timeout_s``.

        A heavy job runs in the heavy pool when there is one (``route``).

        Raises
        ------
        DeadlineExceededError
            The job did not finish in time, counting the wait for a free worker (a job already running goes on
            in its worker until the solver's own time limit; its answer is dropped).
        UnavailableError
            The worker running the job died (e.g. killed for memory); another is started in its place.
        """
        target = self._route_job(job)
        if target is not self:
            return await target.run(job, timeout_s=timeout_s)
        outcome = await self._call(run_optimization, job, timeout_s=timeout_s)
        observe_solve(job, outcome)
        return outcome

    async def run_batch(
        self, jobs: list[OptimizationJob], *, timeout_s: float | None
    ) -> list[OptimizationOutcome | Exception]:
        """Run ``services.engine.run_optimization_batch`` on ``jobs`` in one worker (errors per job, in order).

        The heavy jobs among them run as one chunk in the heavy pool when there is one (``route``), beside the
        others.

        Raises
        ------
        DeadlineExceededError, UnavailableError
            As ``run``, for the whole chunk; when the chunk is split between the pools, a pool's error is the
            answer of its own items instead (the other pool's answers stand).
        """
        if self.heavy is not None:
            heavy = [self._route_job(job) is not self for job in jobs]
            if any(heavy):
                return await self._run_split(jobs, heavy, timeout_s=timeout_s)
        outcomes = await self._call(run_optimization_batch, jobs, timeout_s=timeout_s)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if not isinstance(outcome, Exception):
                observe_solve(job, outcome)
        return outcomes

    async def _run_split(
        self, jobs: list[OptimizationJob], heavy: list[bool], *, timeout_s: float | None
    ) -> list[OptimizationOutcome | Exception]:
        """``run_batch`` with the heavy jobs in the heavy pool and the others here, both at once, in order."""
        assert self.heavy is not None
        light_jobs = [job for job, h in zip(jobs, heavy, strict=True) if not h]
        heavy_jobs = [job for job, h in zip(jobs, heavy, strict=True) if h]
        parts = await asyncio.gather(
            self.run_batch(light_jobs, timeout_s=timeout_s) if light_jobs else _nothing(),
            self.heavy.run_batch(heavy_jobs, timeout_s=timeout_s),
            return_exceptions=True,
        )
        return _merged(parts, heavy)

    async def parse_and_run(
        self,
        parse: Callable[[bytes], OptimizeCommand],
        payload: bytes,
        *,
        time_limit_s: float | None,
        timeout_s: float | None,
        workload: Workload | None = None,
    ) -> tuple[OptimizeCommand, OptimizationOutcome]:
        """Parse, check and solve a serialised Optimize request in a worker (``SerializedOptimize``).

        Parameters
        ----------
        parse : callable
            Module-level function turning ``payload`` into a checked ``OptimizeCommand``.
        payload : bytes
            The serialised request.
        time_limit_s : float or None
            The solver's own time limit (seconds).
        timeout_s : float or None
            Seconds to wait for the answer; None waits without limit.
        workload : Workload or None, optional
            The request's traits, read from it without parsing it
            (``command_side.optimization_adapter.request_workload``): a heavy one runs in the heavy pool.

        Returns
        -------
        tuple of (OptimizeCommand, OptimizationOutcome)
            The command (its inline return history left out: zero periods) and the outcome.

        Raises
        ------
        InvalidInputError
            The request is invalid (raised by ``parse``, naming the field).
        InfeasibleError, OptimizationError
            From the engine, with proto field paths.
        DeadlineExceededError, UnavailableError
            As ``run``.
        """
        target = self.route(workload)
        if target is not self:
            return await target.parse_and_run(parse, payload, time_limit_s=time_limit_s, timeout_s=timeout_s)
        command, outcome = await self._call(_parse_and_run, parse, payload, time_limit_s, timeout_s=timeout_s)
        assert not isinstance(command.inputs, MarketDataWindow)  # _parse_and_run refuses those
        job = OptimizationJob(
            problem=command.problem, inputs=command.inputs, settings=command.settings, method=command.method
        )
        observe_solve(job, outcome)
        return command, outcome

    async def parse_and_run_batch(
        self,
        parse: Callable[[bytes], OptimizeCommand],
        encode: Callable[[OptimizeCommand, OptimizationOutcome], EncodedRun],
        payloads: list[bytes],
        *,
        time_limit_s: float | None,
        timeout_s: float | None,
        workloads: Sequence[Workload | None] | None = None,
    ) -> list[EncodedRun | Exception]:
        """Parse, check and solve serialised Optimize requests together in one worker, and encode each run there.

        With ``workloads`` (one per payload, ``request_workload``) and a heavy pool, the heavy requests run as one
        chunk in the heavy pool (``route``), beside the others, as in :meth:`run_batch`.

        Parameters
        ----------
        parse : callable
            Module-level function turning a payload into a checked ``OptimizeCommand``.
        encode : callable
            Module-level function turning a command and its outcome into the run encoded for storage, with its
            answer (``command_side.optimization_store.EncodedRun``): the event loop receives text and bytes only,
            cheap to read back.
        payloads : list of bytes
            The serialised requests (inline returns or moments).
        time_limit_s : float or None
            The solver's own time limit per job (seconds).
        timeout_s : float or None
            Seconds to wait for the answers; None waits without limit.

        Returns
        -------
        list of (EncodedRun or Exception)
            Per payload in order: the encoded run, or the error of a request that does not parse or check
            (``InvalidInputError`` naming the field), of its solve (with the request's field paths) or of its
            encoding.

        Raises
        ------
        DeadlineExceededError, UnavailableError
            As ``run``, for the whole chunk; when the chunk is split between the pools, a pool's error is the
            answer of its own items instead (the other pool's answers stand).
        """
        if self.heavy is not None and workloads is not None:
            heavy = [self.route(workload) is not self for workload in workloads]
            if any(heavy):
                return await self._parse_and_run_split(
                    parse, encode, payloads, heavy, time_limit_s=time_limit_s, timeout_s=timeout_s
                )
        answers = await self._call(_parse_and_run_batch, parse, encode, payloads, time_limit_s, timeout_s=timeout_s)
        for answer in answers:
            if isinstance(answer, EncodedRun):
                observe_solve_seconds(*answer.labels)
        return answers

    async def _parse_and_run_split(
        self,
        parse: Callable[[bytes], OptimizeCommand],
        encode: Callable[[OptimizeCommand, OptimizationOutcome], EncodedRun],
        payloads: list[bytes],
        heavy: list[bool],
        *,
        time_limit_s: float | None,
        timeout_s: float | None,
    ) -> list[EncodedRun | Exception]:
        """``parse_and_run_batch`` with the heavy requests in the heavy pool and the others here, at once, in order."""
        assert self.heavy is not None
        light_payloads = [payload for payload, h in zip(payloads, heavy, strict=True) if not h]
        heavy_payloads = [payload for payload, h in zip(payloads, heavy, strict=True) if h]
        parts = await asyncio.gather(
            self.parse_and_run_batch(parse, encode, light_payloads, time_limit_s=time_limit_s, timeout_s=timeout_s)
            if light_payloads
            else _nothing(),
            self.heavy.parse_and_run_batch(
                parse, encode, heavy_payloads, time_limit_s=time_limit_s, timeout_s=timeout_s
            ),
            return_exceptions=True,
        )
        return _merged(parts, heavy)

    async def _call(self, function: Callable[..., T], *args: object, timeout_s: float | None) -> T:
        self.pending += 1
        try:
            return await asyncio.wait_for(self._submit(function, args), timeout=timeout_s)
        except TimeoutError as exc:
            raise DeadlineExceededError(f"the optimization did not finish within {timeout_s:.3f} s") from exc
        finally:
            self.pending -= 1

    async def _submit(self, function: Callable[..., T], args: tuple[object, ...]) -> T:
        if self._closed:
            raise UnavailableError("the solver workers are shut down")
        if not self._workers and (self._starting is None or self._starting.done()):
            await self._warm_up_own()
        reply: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        data = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        self._backlog.append(_Job(_HEADER.pack(len(data)) + data, reply))
        self._dispatch()
        return await reply

    def shutdown(self) -> None:
        """Stop the workers, the heavy pool's too, now (running jobs are abandoned); later calls fail (Unavailable)."""
        if self.heavy is not None:
            self.heavy.shutdown()
        self._closed = True
        workers, self._workers = self._workers, []
        replies = [job.reply for job in self._backlog] + [reply for worker in workers for reply in worker.replies]
        self._backlog.clear()
        for reply in replies:
            if not reply.done():
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    reply.set_exception(UnavailableError("the solver workers are shut down"))
        for worker in workers:
            worker.lost = True
            worker.replies.clear()
            if worker.task is not None and not worker.task.done():
                with contextlib.suppress(RuntimeError):
                    worker.task.cancel()
            with contextlib.suppress(RuntimeError):
                worker.writer.close()
            worker.sock.close()
            with contextlib.suppress(Exception):
                worker.process.kill()
        for worker in workers:
            worker.process.join(5)
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(RuntimeError):
                self._starting.cancel()
