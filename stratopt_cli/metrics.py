"""Prometheus metrics of one server: per-RPC counts and latencies, pool gauges, and the HTTP endpoint.

Each :class:`ServerMetrics` has its own ``CollectorRegistry`` (so several servers in one process, as in the
tests, never register a metric twice) that also exposes prometheus_client's default registry: the process
collectors (CPU, memory, file descriptors) and the command side's process-wide metrics of
``command_side.metrics`` (solver time, worker restarts, events written). The gRPC metrics follow the names of
go-grpc-prometheus (``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_handling_seconds``) so existing dashboards apply. docs/observability.md lists every metric.

No kept asyncio gRPC interceptor for Prometheus exists: ``py-grpc-prometheus`` (and its fork
``grpc-prometheus-metrics``) wrap only the synchronous server, ``py-async-grpc-prometheus`` is a one-author 0.2
release, so the interceptor here is stratopt's own (about 80 lines).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from threading import Thread
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

METRICS_ADDRESS_ENV = "STRATOPT_METRICS_ADDRESS"
INSECURE_ENV = "STRATOPT_INSECURE"
TLS_CERT_ENV = "STRATOPT_TLS_CERT_FILE"
TLS_KEY_ENV = "STRATOPT_TLS_KEY_FILE"
TLS_CLIENT_CA_ENV = "STRATOPT_TLS_CLIENT_CA_FILE"

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets of RPC latency (seconds): 1 ms to 60 s, about three per decade."""

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

if TYPE_CHECKING:
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    MethodHandler = grpc.RpcMethodHandler
    ServerInterceptor = grpc.aio.ServerInterceptor


def status_name(context: Any) -> str:
    """The status code name a ``grpc.aio`` servicer context carries (``OK`` when none was set).

    Parameters
    ----------
    context : grpc.aio.ServicerContext
        The call's context after its handler returned or aborted.
    """
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODE_NAMES.get(int(code), "UNKNOWN")


def rpc_type(handler: MethodHandler) -> str:
    """``unary``, ``client_stream``, ``server_stream`` or ``bidi_stream`` (go-grpc-prometheus's ``grpc_type``)."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def wrap_handler(
    handler: MethodHandler, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]
) -> MethodHandler:
    """A copy of ``handler`` whose behaviour is ``wrap(behaviour, response_streaming)``.

    Parameters
    ----------
    handler : grpc.RpcMethodHandler
        The handler the next interceptor (or the servicer) resolved.
    wrap : callable
        Takes the behaviour and whether its response streams; returns the new behaviour (an ``async def`` for
        unary responses, an async generator function for streamed ones).
    """
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **serializers)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **serializers)
    return handler


async def iterate_responses(responses: Any) -> AsyncIterator[Any]:
    """Yield what a streaming behaviour produces: an async or plain iterator, or a coroutine using ``write``."""
    if inspect.isasyncgen(responses):
        async for response in responses:
            yield response
    elif inspect.isawaitable(responses):
        await responses
    else:
        for response in responses:
            yield response


def call_outcome(error: BaseException | None, context: Any) -> str:
    """The status name of a finished call.

    Its context's code; DEADLINE_EXCEEDED or CANCELLED for a call that ended before its answer (past its deadline,
    or the client went away); UNKNOWN for an escaped error.
    """
    if error is None or isinstance(error, grpc.aio.AbortError):
        return status_name(context)
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


class MetricsInterceptor(ServerInterceptor):
    """Count every call by method and status code and time it (go-grpc-prometheus's server metrics).

    Parameters
    ----------
    registry : CollectorRegistry
        Where the three metrics are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "RPCs started on the server.", labels, registry=registry)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its end (seconds), by status code.",
            [*labels, "grpc_code"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        """Return the handler with its behaviour counted and timed (unknown methods pass through)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        labels = (rpc_type(handler), service, method)
        started, handled, seconds = self.started, self.handled, self.seconds

        def record(start: float, error: BaseException | None, context: Any) -> None:
            code = call_outcome(error, context)
            handled.labels(*labels, code).inc()
            seconds.labels(*labels, code).observe(time.perf_counter() - start)

        def wrap(behaviour: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
            if streaming:

                async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
                    started.labels(*labels).inc()
                    start, error = time.perf_counter(), None
                    try:
                        async for response in iterate_responses(behaviour(request, context)):
                            yield response
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        record(start, error, context)

                return streamed

            async def unary(request: Any, context: Any) -> Any:
                started.labels(*labels).inc()
                start, error = time.perf_counter(), None
                try:
                    response = behaviour(request, context)
                    return await response if inspect.isawaitable(response) else response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    record(start, error, context)

            return unary

        return wrap_handler(handler, wrap)


class _DefaultRegistry(Collector):
    """Exposes prometheus_client's default registry (process collectors, ``command_side.metrics``)."""

    def collect(self) -> Iterable[Any]:
        return prometheus_client.REGISTRY.collect()


class ServerMetrics:
    """The metrics of one server: its registry, the gRPC interceptor, gauges and the optional HTTP endpoint.

    Attributes
    ----------
    registry : CollectorRegistry
        This server's metrics plus the process-wide default registry.
    interceptor : MetricsInterceptor
        Install it first (outermost) so it sees every status code, authentication failures included.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_DefaultRegistry())
        self.interceptor = MetricsInterceptor(self.registry)
        self._http: tuple[WSGIServer, Thread] | None = None

    def watch_database_pool(self, pool: Callable[[], Any]) -> None:
        """Gauges of the asyncpg pool ``pool()`` returns (or None once closed), read at each scrape."""

        def read(attribute: str) -> Callable[[], float]:
            def value() -> float:
                current = pool()
                return float(getattr(current, attribute)()) if current is not None else 0.0

            return value

        for name, attribute, text in (
            ("stratopt_db_pool_connections", "get_size", "Open connections of the database pool."),
            ("stratopt_db_pool_idle_connections", "get_idle_size", "Idle connections of the database pool."),
            ("stratopt_db_pool_max_connections", "get_max_size", "Largest size of the database pool."),
        ):
            Gauge(name, text, registry=self.registry).set_function(read(attribute))

    def watch_event_cache(self, cache: Any) -> None:
        """The query side's ``EventMessageCache``: entries (gauge), hits and misses (counters), read at each scrape."""
        self.registry.register(_EventCacheCollector(cache))

    def watch_solver_pool(self, solver_pool: Callable[[], Any]) -> None:
        """Gauges of the command side's ``SolverPool`` that ``solver_pool()`` returns (or None), by ``pool``.

        ``pool="main"`` is the pool itself, ``pool="heavy"`` its heavy pool (zeros when it has none).
        """

        def read(pool: str, value: Callable[[Any], float]) -> Callable[[], float]:
            def current() -> float:
                main = solver_pool()
                target = main if pool == "main" or main is None else main.heavy
                return float(value(target)) if target is not None else 0.0

            return current

        gauges = (
            (
                "stratopt_solver_pending",
                "Solver calls submitted to the worker processes and not finished (running plus queued), by pool.",
                lambda p: p.pending,
            ),
            ("stratopt_solver_workers", "Solver worker processes, by pool.", lambda p: p.workers),
            (
                "stratopt_solve_queue_admitted",
                "Calls holding a place of a pool's bounded solve queue (parsing, solving or storing).",
                lambda p: p.in_flight,
            ),
            (
                "stratopt_solve_queue_capacity",
                "Places of a pool's bounded solve queue (workers + max_queue); beyond it calls get RESOURCE_EXHAUSTED.",
                lambda p: p.workers + p.max_queue,
            ),
        )
        for name, text, value in gauges:
            gauge = Gauge(name, text, ["pool"], registry=self.registry)
            for pool in ("main", "heavy"):
                gauge.labels(pool=pool).set_function(read(pool, value))

    def serve(self, endpoint: MetricsEndpoint) -> int:
        """Serve ``/metrics`` over HTTP (HTTPS when the endpoint has a certificate); return the bound port.

        Raises
        ------
        ValueError
            A non-loopback address without TLS when insecure serving is not allowed (``MetricsEndpoint.check``).
        OSError
            When the address cannot be bound.
        """
        endpoint.check()
        host, port = split_address(endpoint.address)
        self._http = prometheus_client.start_http_server(
            port,
            addr=host,
            registry=self.registry,
            certfile=endpoint.certfile,
            keyfile=endpoint.keyfile,
            client_cafile=endpoint.client_cafile,
            client_auth_required=endpoint.client_cafile is not None,
        )
        return int(self._http[0].server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint, if any."""
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(5.0)
            self._http = None


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (``[v6]:port`` too).

    Raises
    ------
    ValueError
        When the port is missing or not an integer in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``); '' and 0.0.0.0 do not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``STRATOPT_INSECURE`` is true (``1``, ``true``, ``yes``, ``on``; any case)."""
    env = os.environ if environ is None else environ
    return env.get(INSECURE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where and how ``/metrics`` is served.

    Attributes
    ----------
    address : str
        ``host:port``; port 0 picks a free port.
    certfile, keyfile : str or None
        PEM certificate chain and key: HTTPS when set (the gRPC port's ``STRATOPT_TLS_CERT_FILE`` / ``_KEY_FILE``).
    client_cafile : str or None
        CA bundle of client certificates: scrapers must present one (mTLS) when set.
    insecure : bool
        Allow a non-loopback address without TLS (``STRATOPT_INSECURE``).
    """

    address: str
    certfile: str | None = None
    keyfile: str | None = None
    client_cafile: str | None = None
    insecure: bool = False

    @classmethod
    def from_env(cls, address: str, environ: Mapping[str, str] | None = None) -> MetricsEndpoint:
        """The endpoint at ``address`` with the TLS files and insecure flag of the environment."""
        env = os.environ if environ is None else environ
        return cls(
            address=address,
            certfile=env.get(TLS_CERT_ENV) or None,
            keyfile=env.get(TLS_KEY_ENV) or None,
            client_cafile=env.get(TLS_CLIENT_CA_ENV) or None,
            insecure=insecure_allowed(env),
        )

    def check(self) -> None:
        """Refuse plaintext on a non-loopback address unless insecure serving is allowed.

        Raises
        ------
        ValueError
            When the address is malformed, only one of certfile/keyfile is set, or the host is not loopback
            and there is no certificate and ``insecure`` is false.
        """
        host, _ = split_address(self.address)
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("metrics TLS needs both STRATOPT_TLS_CERT_FILE and STRATOPT_TLS_KEY_FILE")
        if self.certfile is None and not is_loopback(host) and not self.insecure:
            raise ValueError(
                f"refusing to serve metrics on non-loopback {self.address!r} without TLS: set "
                f"{TLS_CERT_ENV} and {TLS_KEY_ENV}, or {INSECURE_ENV}=true"
            )


class _EventCacheCollector(Collector):
    """Scrape-time figures of ``query_side.event_cache.EventMessageCache``."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        """The cache's entries, hits and misses."""
        cache = self._cache
        yield GaugeMetricFamily(
            "stratopt_query_event_cache_entries", "Serialized events kept by GetHistory's cache.", value=len(cache)
        )
        yield CounterMetricFamily(
            "stratopt_query_event_cache_hits", "GetHistory rows served from the event cache.", value=cache.hits
        )
        yield CounterMetricFamily(
            "stratopt_query_event_cache_misses", "GetHistory rows decoded (not in the event cache).", value=cache.misses
        )
