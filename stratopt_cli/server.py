"""Process composition: the gRPC server with the command side, the query side, health and reflection.

Both sides run in one process by default; ``sides`` selects one of them for deployments that scale them
apart. The standard ``grpc.health.v1.Health`` service reports each registered service (and ``""``) as
SERVING once the database pool and the solver workers are up; server reflection lists every service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import command_side
import query_side
from stratopt_cli.security import SecurityConfig

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
    max_queue : int or None
        Calls admitted beyond the workers before RESOURCE_EXHAUSTED (``SolverPool``); default its own.
    """

    database_url: str
    address: str = "127.0.0.1:50051"
    sides: Iterable[str] = SIDES
    workers: int | None = None
    security: SecurityConfig = field(default_factory=SecurityConfig)
    max_queue: int | None = None
    port: int = field(default=0, init=False)
    _server: grpc.aio.Server | None = field(default=None, init=False, repr=False)
    _pool: asyncpg.Pool | None = field(default=None, init=False, repr=False)
    _solver_pool: command_side.SolverPool | None = field(default=None, init=False, repr=False)

    async def start(self) -> int:
        """Connect, start workers, register services, health and reflection; return the bound port."""
        sides = set(self.sides)
        unknown = sides - set(SIDES)
        if unknown or not sides:
            raise ValueError(f"sides must be a non-empty subset of {SIDES}, got {sorted(sides)}")
        self.security.check_address(self.address)
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=10, command_timeout=60)
        interceptors: list[Any] = [self.security.interceptor()]  # first: refuse before anything runs
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
        names: list[str] = []
        if "command" in sides:
            self._solver_pool = command_side.SolverPool(self.workers, max_queue=self.max_queue)
            await self._solver_pool.warm_up()
            names += command_side.register(
                server,
                optimization=command_side.optimization_service(
                    command_side.PostgresOptimizationStore(self._pool), self._solver_pool
                ),
                allocation=command_side.AllocationService(
                    command_side.PostgresAllocationCache(self._pool), self._solver_pool
                ),
                rebalancing=command_side.RebalancingService(
                    command_side.PostgresTradingStore(self._pool),
                    allow_self_approval=self.security.self_approval_allowed,
                ),
            )
        if "query" in sides:
            names += query_side.register(server, query_side.PostgresReadStore(self._pool))
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # missing from the stubs
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        credentials = self.security.server_credentials()
        if credentials is None:
            self.port = server.add_insecure_port(self.address)
        else:
            self.port = server.add_secure_port(self.address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        await server.start()
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("stratopt serving %s on port %d", ", ".join(names), self.port)
        return self.port

    async def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Finish in-flight calls (up to ``grace_s``), then close workers and the pool."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._solver_pool is not None:
            self._solver_pool.shutdown()
            self._solver_pool = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


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
        """Stop the server and the loop thread."""
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            self._loop.close()
