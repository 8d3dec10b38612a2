"""Health that tells the truth: the ``grpc.health.v1`` status of each service follows what it depends on.

A :class:`HealthMonitor` probes the database every ``interval_s`` on a connection of its own (``SELECT 1``
within the connect timeout; a frozen or unreachable server fails the probe) and checks that the solver
workers are alive. Every query-side service name is SERVING only while the database answers; every
command-side name also needs live solver workers; ``""`` (the whole server) needs all of its services.
Until the first successful probe, and from the start of a shutdown on, every name is NOT_SERVING. The extra
name ``liveness`` is SERVING from the moment the port opens until the process exits, whatever the database
does.

The same ``HealthServicer`` can also be served on a second, plaintext port that carries nothing else
(:func:`health_only_server`, ``STRATOPT_HEALTH_ADDRESS``): Kubernetes' native gRPC probes cannot speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stratopt_cli.runtime import DatabaseTimeouts

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_ADDRESS_ENV = "STRATOPT_HEALTH_ADDRESS"
"""Optional ``host:port`` of the plaintext health-only port."""
LIVENESS = "liveness"
"""Health name that is SERVING while the process answers at all: for liveness probes, which must not follow the
database (restarting the process does not bring a database back) nor fail a pod that is draining."""


def new_servicer(names: Iterable[str] = ()) -> Any:
    """A ``grpc.health.v1`` servicer: ``""`` and every name NOT_SERVING until told otherwise, ``LIVENESS`` SERVING."""
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing from the stubs
    # The library starts "" at SERVING; nothing is ready yet. Before any watcher exists, setting the status is a
    # plain dictionary write, so this needs no event loop.
    for name in ("", *names):
        servicer._server_status[name] = NOT_SERVING
    servicer._server_status[LIVENESS] = SERVING
    return servicer


def workers_alive(solver_pool: Any | None) -> bool:
    """Whether a ``command_side.SolverPool``'s workers are all running and warmed up (True when it has none yet).

    Its heavy pool's workers count too. False from the moment a worker dies until the pool's replacement for it is
    ready.
    """
    if solver_pool is None:
        return True
    return bool(solver_pool.workers_alive())


async def revive_workers(solver_pool: Any) -> None:
    """Have a ``command_side.SolverPool`` start the workers it is missing (it also does so by itself).

    The pool replaces a dead worker as soon as it notices the death; this is the monitor's second line, for a
    replacement that failed to start.
    """
    with contextlib.suppress(Exception):
        await solver_pool.replenish()


class KindOnlyFilter(logging.Filter):
    """Log an exception by its kind only: the driver's own messages name the host, port or socket path."""

    @classmethod
    def install(cls, logger_name: str) -> None:
        """Add the filter to a logger once."""
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's traceback by the exception's class name (always keeps the record)."""
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class HealthMonitor:
    """Keep a health servicer's statuses in step with the database and the solver workers.

    Parameters
    ----------
    servicer : grpc_health.v1.health.aio.HealthServicer
        The servicer to update (shared by the main and the health-only port).
    database_url : str
        libpq URL of the database to probe.
    query_names, command_names : iterable of str
        Service names that need the database, and those that also need the solver workers.
    timeouts : DatabaseTimeouts
        ``connect_s`` bounds each probe (connect and ``SELECT 1``).
    workers_ok : callable, optional
        Returns whether the solver workers are alive; default always True.
    revive_workers : callable, optional
        Coroutine function run (one at a time) while ``workers_ok`` is false, to replace dead workers.
    interval_s : float
        Seconds between probes.
    """

    def __init__(
        self,
        servicer: Any,
        database_url: str,
        *,
        query_names: Iterable[str] = (),
        command_names: Iterable[str] = (),
        timeouts: DatabaseTimeouts | None = None,
        workers_ok: Callable[[], bool] | None = None,
        revive_workers: Callable[[], Awaitable[None]] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.servicer = servicer
        self._url = database_url
        self._query_names = list(query_names)
        self._command_names = list(command_names)
        self._timeouts = timeouts or DatabaseTimeouts()
        self._workers_ok = workers_ok or (lambda: True)
        self._revive = revive_workers
        self._reviving: asyncio.Future[None] | None = None
        self.interval_s = interval_s
        self._connection: asyncpg.Connection[asyncpg.Record] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._draining = False
        self.database_ok = False
        self._published: dict[str, int] = {}

    async def probe_database(self) -> bool:
        """Run ``SELECT 1`` on the monitor's connection (reconnecting when needed); return whether it answered."""
        limit = self._timeouts.connect_s
        try:
            connection = self._connection
            if connection is None or connection.is_closed():
                connection = await asyncio.wait_for(
                    asyncpg.connect(self._url, **self._timeouts.connect_kwargs()), limit + 1
                )
                self._connection = connection
            assert connection is not None  # for mypy: asyncpg.connect never returns None
            await asyncio.wait_for(connection.fetchval("SELECT 1", timeout=limit), limit + 1)
            return True
        except Exception as exc:  # TimeoutError included
            if self.database_ok:
                log.warning("database health probe failed (%s): reporting NOT_SERVING", type(exc).__name__)
            self._drop_connection()
            return False

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    def mark_ready(self) -> None:
        """Start-up is complete: statuses may become SERVING from the next check on."""
        self._ready = True

    async def check(self) -> None:
        """Probe once and publish every status."""
        was_ok = self.database_ok
        self.database_ok = await self.probe_database()
        if self.database_ok and not was_ok and self._ready:
            log.info("database reachable: reporting SERVING")
        await self.publish()

    async def publish(self) -> None:
        """Set each name's status from the last probe, the workers and the lifecycle (start-up, drain)."""
        up = self._ready and not self._draining and self.database_ok
        workers = self._workers_ok()
        idle = self._reviving is None or self._reviving.done()
        if not workers and self._ready and not self._draining and self._revive is not None and idle:
            log.warning("a solver worker died: replacing the worker pool")
            self._reviving = asyncio.ensure_future(self._revive())
        statuses = {name: SERVING if up else NOT_SERVING for name in self._query_names}
        statuses.update({name: SERVING if up and workers else NOT_SERVING for name in self._command_names})
        statuses[""] = SERVING if up and all(s == SERVING for s in statuses.values()) else NOT_SERVING
        for name, status in statuses.items():
            if self._published.get(name) != status:
                await self.servicer.set(name, status)
                self._published[name] = status

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the monitor must outlive any surprise; the next round tries again
                log.exception("health check failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        """Probe in the background every ``interval_s`` seconds."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stratopt-health")

    async def drain(self) -> None:
        """Report every name but ``LIVENESS`` NOT_SERVING from now on (the start of a graceful shutdown)."""
        self._draining = True
        await self.publish()

    async def stop(self) -> None:
        """Stop probing and close the monitor's connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._reviving is not None:
            self._reviving.cancel()
            self._reviving = None
        self._drop_connection()


def health_only_server(servicer: Any, address: str) -> tuple[grpc.aio.Server, int]:
    """A plaintext gRPC server carrying only ``grpc.health.v1.Health`` (for kubelet probes); not started.

    Parameters
    ----------
    servicer : grpc_health.v1.health.aio.HealthServicer
        The servicer the main server uses, so both ports report the same statuses.
    address : str
        ``host:port`` to listen on.

    Returns
    -------
    tuple of (grpc.aio.Server, int)
        The server and its bound port.

    Raises
    ------
    OSError
        When the address cannot be bound.
    """
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address} (health port)")
    return server, port
