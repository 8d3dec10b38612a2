"""OpenTelemetry traces of the gRPC server and the database calls, off unless ``STRATOPT_OTEL_ENABLED=true``.

The kept instrumentation packages do the work: ``opentelemetry-instrumentation-grpc``'s asyncio server
interceptor opens one server span per call (continuing the caller's ``traceparent``), and
``opentelemetry-instrumentation-asyncpg`` opens a child span for each query (statement text, no parameters).
Spans leave through the OTLP exporter (gRPC), configured by the standard variables: ``OTEL_EXPORTER_OTLP_ENDPOINT``
(default ``http://localhost:4317``), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_CERTIFICATE``,
``OTEL_SERVICE_NAME`` (default ``stratopt``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``...
The asyncpg instrumentation patches asyncpg's connection class for the whole process, so one process runs at
most one traced server at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

OTEL_ENABLED_ENV = "STRATOPT_OTEL_ENABLED"


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``STRATOPT_OTEL_ENABLED`` is true (``1``, ``true``, ``yes``, ``on``; any case)."""
    env = os.environ if environ is None else environ
    return env.get(OTEL_ENABLED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def otlp_tracer_provider() -> TracerProvider:
    """A tracer provider exporting in batches over OTLP/gRPC as the ``OTEL_*`` environment configures it."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "stratopt"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracing:
    """Tracing of one server: its gRPC interceptor and the asyncpg instrumentation.

    Parameters
    ----------
    provider : TracerProvider
        Where spans go (``otlp_tracer_provider()`` in service; an in-memory exporter in tests).
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._instrumented = False

    def server_interceptor(self) -> Any:
        """The OpenTelemetry asyncio server interceptor; install it first (outermost)."""
        return aio_server_interceptor(tracer_provider=self.provider)  # type: ignore[no-untyped-call]

    def instrument_database(self) -> None:
        """Trace every asyncpg query of this process with this provider."""
        if not self._instrumented:
            AsyncPGInstrumentor().instrument(  # type: ignore[no-untyped-call]
                tracer_provider=self.provider
            )
            self._instrumented = True

    def shutdown(self) -> None:
        """Remove the asyncpg instrumentation and flush the provider's pending spans."""
        if self._instrumented:
            AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
            self._instrumented = False
        self.provider.force_flush()
