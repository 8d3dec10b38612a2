"""Process composition: the gRPC server with the command side, the query side, health and reflection.

Both sides run in one process by default; ``sides`` selects one of them for deployments that scale them
apart. The server listens first and reports NOT_SERVING while it waits for the database (back-off, see
``stratopt_cli.runtime``); from then on ``stratopt_cli.health.HealthMonitor`` keeps the standard
``grpc.health.v1.Health`` statuses true to the database and the solver workers. ``stop`` drains: health
NOT_SERVING first, a grace period, in-flight calls finish, then workers and the pool close. Server
reflection lists every service.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import command_side
import query_side
from stratopt_cli.health import (
    HealthMonitor,
    KindOnlyFilter,
    health_only_server,
    new_servicer,
    revive_workers,
    workers_alive,
)
from stratopt_cli.logs import RequestIdInterceptor
from stratopt_cli.metrics import MetricsEndpoint, ServerMetrics
from stratopt_cli.retention import RetentionSettings, run_forever
from stratopt_cli.runtime import DatabaseTimeouts, create_pool, migrate_when_reachable, probe_database, retry
from stratopt_cli.security import SecurityConfig
from stratopt_cli.tracing import Tracing

log = logging.getLogger(__name__)

SIDES = ("command", "query")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest request or response message (a 2000-asset covariance is 32 MB of doubles)."""


@dataclass
class StratoptServer:
    """The gRPC server of one stratopt process.

    Parameters
    ----------
    database_url : str
        libpq URL of a migrated database.
    address : str
        ``host:port`` to listen on; port 0 picks a free port (see ``port`` after ``start``).
    sides : iterable of str
        ``command``, ``query`` or both.
    workers : int or None
        Solver worker processes (command side); default the CPU count.
    security : SecurityConfig
        TLS, mTLS, token authentication, self-approval (default: loopback development mode); see
        ``stratopt_cli.security``. A non-loopback ``address`` without TLS and authentication is refused.
    metrics_endpoint : MetricsEndpoint or None
        Serve ``/metrics`` there (``metrics_port`` after ``start``); the metrics are kept in ``metrics`` anyway.
    tracing : Tracing or None
        OpenTelemetry tracing of calls and queries; None = off.
    retention : RetentionSettings or None
        Drop old hypertable chunks on a schedule (``stratopt_cli.retention``); None or no policy = off.
    access_log : bool
        One log line per call (``stratopt.access``).
    timeouts : DatabaseTimeouts
        Statement and connect timeouts of every database connection.
    startup_limit_s : float or None
        How long ``ready`` waits for the database (None: no limit).
    migrate : bool
        Apply pending migrations once the database is reachable (before reporting SERVING).
    health_address : str or None
        Extra plaintext ``host:port`` serving only ``grpc.health.v1`` (kubelet probes); see ``health_port``.
    shutdown_grace_s : float
        Seconds ``stop`` reports NOT_SERVING while still accepting calls, so load balancers can stop routing.
    health_interval_s : float
        Seconds between database health probes.
    max_queue : int or None
        Calls admitted beyond the workers before RESOURCE_EXHAUSTED (``SolverPool``); default its own.
    heavy_workers : int
        Processes of the heavy pool, which runs the large or slow problems apart (``SolverPool``'s ``heavy``:
        N >= ``heavy_assets``, scenario risk measures, cardinality, robust); 0 (the default here, one per four
        cores in ``stratopt serve``) = none: every job shares the main pool.
    heavy_max_queue : int or None
        The heavy pool's calls admitted beyond its workers before RESOURCE_EXHAUSTED (heavy calls only); default
        its own (``DEFAULT_HEAVY_QUEUE_PER_WORKER`` per heavy worker).
    heavy_assets : int
        Strategies from which a problem is heavy whatever its method.
    warm_batch_assets : int
        The main pool's workers compile the batched solver of BatchOptimize for problems of up to this many
        strategies before they report ready (``SolverPool``); 0 (the default) = none, each shape compiles on first
        use in each worker.
    rotation_tick_s : float
        Seconds between the rotation scheduler's ticks (``command_side.rotation_scheduler``); 0 (the default here,
        15 s in ``stratopt serve``) runs no scheduler on this server.
    recompute_tick_s : float
        Seconds between the recompute worker's ticks (``command_side.recompute``: configurations re-run on new
        market data or a schedule); 0 (the default here, 1 s in ``stratopt serve``) runs no worker on this server.
    recompute_retry_s : float
        Back-off before a failed recompute job's first retry (doubled per attempt).
    recompute_max_attempts : int
        Attempts before a recompute job is DEAD.
    query_event_cache : int
        Serialized events ``GetHistory`` keeps to serve again without decoding (``query_side.event_cache``); 0 keeps
        none.
    freeze_gc : bool
        When the server owns its process (``stratopt serve``): ``ready`` moves everything allocated so far (the
        imported libraries, the pools) out of the garbage collector's reach (``gc.freeze``), and ``stop`` puts
        it back. Full collections walked those objects with the event loop stopped (about 130 ms, a few times
        a minute under load), and every call in flight waited.
    """

    database_url: str
    address: str = "127.0.0.1:50051"
    sides: Iterable[str] = SIDES
    workers: int | None = None
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics_endpoint: MetricsEndpoint | None = None
    tracing: Tracing | None = None
    retention: RetentionSettings | None = None
    access_log: bool = True
    timeouts: DatabaseTimeouts = field(default_factory=DatabaseTimeouts)
    startup_limit_s: float | None = None
    migrate: bool = False
    health_address: str | None = None
    shutdown_grace_s: float = 0.0
    health_interval_s: float = 1.0
    max_queue: int | None = None
    heavy_workers: int = 0
    heavy_max_queue: int | None = None
    heavy_assets: int = command_side.DEFAULT_HEAVY_ASSETS
    warm_batch_assets: int = 0
    freeze_gc: bool = False
    query_event_cache: int = query_side.DEFAULT_MAX_EVENTS
    rotation_tick_s: float = 0.0
    recompute_tick_s: float = 0.0
    recompute_retry_s: float = command_side.recompute.DEFAULT_RETRY_S
    recompute_max_attempts: int = command_side.recompute.DEFAULT_MAX_ATTEMPTS
    port: int = field(default=0, init=False)
    health_port: int = field(default=0, init=False)
    metrics: ServerMetrics = field(default_factory=ServerMetrics, init=False, repr=False)
    metrics_port: int = field(default=0, init=False)
    _notifier: query_side.EventNotifier | None = field(default=None, init=False, repr=False)
    _retention_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _scheduler: command_side.RotationScheduler | None = field(default=None, init=False, repr=False)
    _scheduler_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _recompute: command_side.RecomputeWorker | None = field(default=None, init=False, repr=False)
    _recompute_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _server: grpc.aio.Server | None = field(default=None, init=False, repr=False)
    _health_server: grpc.aio.Server | None = field(default=None, init=False, repr=False)
    _monitor: HealthMonitor | None = field(default=None, init=False, repr=False)
    _pool: asyncpg.Pool | None = field(default=None, init=False, repr=False)
    _solver_pool: command_side.SolverPool | None = field(default=None, init=False, repr=False)

    async def start(self) -> int:
        """``listen``, then ``ready``: wait for the database, warm the workers, report SERVING; return the port."""
        await self.listen()
        await self.ready()
        return self.port

    async def listen(self) -> int:
        """Register services, health and reflection and start listening, every status NOT_SERVING; return the port.

        The pool is created here but connects in ``ready``: calls before that answer UNAVAILABLE.
        """
        sides = set(self.sides)
        unknown = sides - set(SIDES)
        if unknown or not sides:
            raise ValueError(f"sides must be a non-empty subset of {SIDES}, got {sorted(sides)}")
        self.security.check_address(self.address)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.check()
        if self.tracing is not None:
            self.tracing.instrument_database()
        KindOnlyFilter.install("asyncpg.pool")  # its reconnect warnings name the host
        self._pool = create_pool(self.database_url, self.timeouts, min_size=1, max_size=10)
        self.metrics.watch_database_pool(lambda: self._pool)
        # Outermost first: the trace span, then metrics (every status code), then the request id and access log,
        # then authentication (so refused calls are traced, counted and logged), then the error mapping.
        interceptors: list[Any] = [] if self.tracing is None else [self.tracing.server_interceptor()]
        interceptors += [self.metrics.interceptor, RequestIdInterceptor(access=self.access_log)]
        interceptors.append(self.security.interceptor())
        if "command" in sides:
            interceptors.append(command_side.interceptor())
        if "query" in sides:
            interceptors.append(query_side.interceptor())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        command_names: list[str] = []
        query_names: list[str] = []
        if "command" in sides:
            self._solver_pool = command_side.SolverPool(
                self.workers,
                max_queue=self.max_queue,
                heavy_workers=self.heavy_workers,
                heavy_max_queue=self.heavy_max_queue,
                heavy_assets=self.heavy_assets,
                warm_batch_assets=self.warm_batch_assets,
            )
            self.metrics.watch_solver_pool(lambda: self._solver_pool)
            optimization_store = command_side.PostgresOptimizationStore(self._pool)
            trading_store = command_side.PostgresTradingStore(self._pool)
            rotation_store = command_side.PostgresRotationStore(self._pool)
            rotation = command_side.RotationService(
                rotation_store, optimization_store, trading_store, self._solver_pool
            )
            if self.rotation_tick_s > 0:
                self._scheduler = command_side.RotationScheduler(rotation_store, rotation, tick_s=self.rotation_tick_s)
            optimization = command_side.optimization_service(optimization_store, self._solver_pool)
            rebalancing = command_side.RebalancingService(
                trading_store, allow_self_approval=self.security.self_approval_allowed
            )
            if self.recompute_tick_s > 0:
                self._recompute = command_side.RecomputeWorker(
                    command_side.PostgresRecomputeStore(self._pool),
                    optimization,
                    tick_s=self.recompute_tick_s,
                    retry_s=self.recompute_retry_s,
                    max_attempts=self.recompute_max_attempts,
                    drift_exceeds=command_side.drift_exceeds(rebalancing),
                )
            command_names = command_side.register(
                server,
                optimization=optimization,
                allocation=command_side.AllocationService(
                    command_side.PostgresAllocationCache(self._pool), self._solver_pool
                ),
                rebalancing=rebalancing,
                rotation=rotation,
                execution=command_side.ExecutionService(command_side.PostgresExecutionStore(self._pool), trading_store),
                backtests=command_side.backtest_service(
                    optimization_store, command_side.PostgresBacktestStore(self._pool), self._solver_pool
                ),
            )
        if "query" in sides:
            self._notifier = query_side.EventNotifier(self._pool)
            event_cache = query_side.EventMessageCache(self.query_event_cache)
            self.metrics.watch_event_cache(event_cache)
            query_names = query_side.register(
                server,
                query_side.PostgresReadStore(self._pool),
                query_side.RotationReads(self._pool),
                self._notifier,
                query_side.PriceReads(self._pool),
                query_side.TradingStatistics(self._pool),
                query_side.ExportReads(self._pool),
                query_side.BacktestReads(self._pool),
                query_side.SectorExposureReads(self._pool),
                query_side.WatchReads(self._pool),
                query_side.RecomputeJobReads(self._pool),
                event_cache=event_cache,
            )
        names = [*command_names, *query_names]
        health_servicer = new_servicer(names)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self._monitor = HealthMonitor(
            health_servicer,
            self.database_url,
            query_names=query_names,
            command_names=command_names,
            timeouts=self.timeouts,
            workers_ok=lambda: workers_alive(self._solver_pool),
            revive_workers=lambda: revive_workers(self._solver_pool),
            interval_s=self.health_interval_s,
        )
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        credentials = self.security.server_credentials()
        if credentials is None:
            self.port = server.add_insecure_port(self.address)
        else:
            self.port = server.add_secure_port(self.address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        if self.health_address:
            self._health_server, self.health_port = health_only_server(health_servicer, self.health_address)
            await self._health_server.start()
        await server.start()
        self._server = server
        if self.metrics_endpoint is not None:
            self.metrics_port = self.metrics.serve(self.metrics_endpoint)
        log.info("stratopt listening on port %d (NOT_SERVING until the database answers)", self.port)
        return self.port

    async def ready(self) -> None:
        """Wait for the database (back-off), migrate if asked, connect the pool, warm the workers; report SERVING.

        Raises
        ------
        stratopt_cli.runtime.DatabaseWaitTimeoutError
            When the database stayed unreachable for ``startup_limit_s``.
        """
        if self._pool is None or self._monitor is None:
            raise RuntimeError("listen() first")
        url, timeouts, limit = self.database_url, self.timeouts, self.startup_limit_s
        await retry(lambda: probe_database(url, timeouts), what="connect to the database", limit_s=limit)
        if self.migrate:
            await asyncio.to_thread(migrate_when_reachable, url, limit_s=limit, timeouts=timeouts)
        await self._pool
        if self._solver_pool is not None:
            await self._solver_pool.warm_up()
        if self.freeze_gc:  # before SERVING: the collection itself stops the loop for ~130 ms
            gc.collect()
            gc.freeze()
        self._monitor.mark_ready()
        await self._monitor.check()
        self._monitor.start()
        if self.retention is not None and self.retention.enabled:
            self._retention_task = asyncio.get_running_loop().create_task(
                run_forever(self._pool, self.retention), name="retention"
            )
        if self._scheduler is not None:
            self._scheduler_task = asyncio.get_running_loop().create_task(
                self._scheduler.run_forever(), name="rotation-scheduler"
            )
        if self._recompute is not None:
            self._recompute_task = asyncio.get_running_loop().create_task(
                self._recompute.run_forever(), name="recompute-worker"
            )
        log.info("stratopt ready on port %d", self.port)

    async def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain: NOT_SERVING, wait ``shutdown_grace_s``, finish in-flight calls (up to ``grace_s``), then close."""
        for task in (self._retention_task, self._scheduler_task, self._recompute_task):
            if task is not None:
                await _cancelled(task)
        self._retention_task = self._scheduler_task = self._recompute_task = None
        if self._monitor is not None:
            await self._monitor.drain()
            if self._server is not None and self.shutdown_grace_s > 0:
                await asyncio.sleep(self.shutdown_grace_s)
            await self._monitor.stop()
            self._monitor = None
        if self._notifier is not None:
            await self._notifier.close()  # live streams end (UNAVAILABLE: resume); its connection back to the pool
            self._notifier = None
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self._solver_pool is not None:
            self._solver_pool.shutdown()
            self._solver_pool = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self.timeouts.connect_s)
            except asyncpg.exceptions.InterfaceError:
                pass  # never connected: nothing to close
            except TimeoutError:
                self._pool.terminate()  # a frozen database does not answer the goodbye
            self._pool = None
        if self.tracing is not None:
            self.tracing.shutdown()
        if self.freeze_gc:
            gc.unfreeze()  # the interpreter's exit collects everything again (native modules check for leaks)
        await asyncio.to_thread(self.metrics.close)  # last: scrapes keep working while calls drain


TASK_STOP_S = 10.0
"""Seconds a background task (retention, rotation scheduler, recompute worker) has to end once cancelled."""


async def _cancelled(task: asyncio.Task[Any], timeout_s: float = TASK_STOP_S) -> None:
    """Cancel a background task and wait up to ``timeout_s`` for it to end; past that, log where it is and go on.

    A task that does not end (it swallowed the cancellation, or waits on something that never answers) must not
    keep the rest of the shutdown (the gRPC server, the workers, the pool) from running.
    """
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.error("%s did not end within %g s of its cancellation; going on\n%s", task.get_name(), timeout_s,
                  _stack(task))  # fmt: skip


def _stack(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits, as a traceback's lines (its coroutine's frames)."""
    frames = task.get_stack()
    return "".join(traceback.format_list(traceback.StackSummary.extract((f, f.f_lineno) for f in frames)))


class ServerThread:
    """Run a ``StratoptServer`` on its own event loop in a background thread (demo, tests, benchmarks).

    Parameters
    ----------
    server : StratoptServer
        The server to run.
    """

    def __init__(self, server: StratoptServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stratopt-server", daemon=True)

    def start(self, timeout_s: float = 120.0) -> int:
        """Start the server; return its port."""
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout_s)

    @property
    def target(self) -> str:
        """``host:port`` for a client channel."""
        host = self.server.address.rsplit(":", 1)[0]
        return f"{host}:{self.server.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server and the loop thread.

        Raises
        ------
        TimeoutError
            The server did not stop within ``timeout_s``; the stacks of the loop's tasks are logged first (ERROR,
            ``stratopt_cli.server``), so a hung shutdown says where it hangs.
        """
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout_s)
        except TimeoutError:
            listed = asyncio.run_coroutine_threadsafe(_task_stacks(), self._loop)
            with contextlib.suppress(Exception):
                log.error("the server did not stop within %g s; its tasks:\n%s", timeout_s, listed.result(5))
            raise
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            self._loop.close()


async def _task_stacks() -> str:
    """Every other task of the running loop with where it waits (``ServerThread.stop``'s diagnosis)."""
    current = asyncio.current_task()
    return "\n".join(f"{t.get_name()}: {t.get_coro()!r}\n{_stack(t)}" for t in asyncio.all_tasks() if t is not current)
