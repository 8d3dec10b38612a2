"""Logging: text or JSON lines (python-json-logger), each with the call's request id and trace id.

``STRATOPT_LOG_FORMAT`` picks ``json`` or ``text``; unset, stderr on a terminal gets text and anything else
(a container, a pipe, a file) gets JSON, one object per line. :class:`RequestIdInterceptor` gives every call a
request id — the request's own ``request_id`` field when it has a non-empty one, else the caller's
``x-request-id`` metadata (printable ASCII, at most 128 characters), else a fresh UUID — returns it to the
client as the ``x-request-id`` trailing metadata (errors included), puts it on every log record written while
the call runs, and writes one access line per call (logger ``stratopt.access``: method, status code,
duration). With tracing on (``stratopt_cli.tracing``) records also carry the current ``trace_id`` and
``span_id``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TextIO

import grpc
from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from stratopt_cli.metrics import MethodHandler, ServerInterceptor, call_outcome, iterate_responses, wrap_handler

LOG_FORMAT_ENV = "STRATOPT_LOG_FORMAT"
ACCESS_LOG_ENV = "STRATOPT_ACCESS_LOG"
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("stratopt_request_id", default="")
"""The request id of the call the current task serves ('' outside calls)."""

access_log = logging.getLogger("stratopt.access")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s%(trace_suffix)s]: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
"""Fields of a JSON line besides ``time`` (ISO 8601, UTC), the ids and any ``extra``."""


class ContextFilter(logging.Filter):
    """Add ``request_id``, ``trace_id`` and ``span_id`` ('' when none) to every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        record.request_id = request_id.get() or "-"
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            trace_id = trace.format_trace_id(context.trace_id)
            record.trace_id, record.span_id = trace_id, trace.format_span_id(context.span_id)
            record.trace_suffix = f" trace={trace_id}"
        else:
            record.trace_id = record.span_id = record.trace_suffix = ""
        return True


class _JsonFormatter(JsonFormatter):
    """JSON lines without the empty trace fields of untraced records."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data.pop("trace_suffix", None)
        for key in ("trace_id", "span_id"):
            if not log_data.get(key):
                log_data.pop(key, None)
        return log_data


def resolve_format(value: str | None, stream: TextIO) -> str:
    """``json`` or ``text``: ``value`` when given, else text on a terminal and JSON otherwise.

    Raises
    ------
    ValueError
        When ``value`` is neither.
    """
    if not value:
        return "text" if stream.isatty() else "json"
    value = value.strip().lower()
    if value not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {value!r}")
    return value


_installed: list[logging.Handler] = []
"""The handler ``setup_logging`` installed last (the next call replaces it; handlers of others stay)."""


def log_handler(log_format: str, stream: TextIO) -> logging.Handler:
    """A handler writing ``log_format`` (``json`` or ``text``) lines with request and trace ids to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(
            _JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger"}, timestamp="time")
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def setup_logging(*, verbose: bool = False, log_format: str | None = None, stream: TextIO | None = None) -> str:
    """Send the root logger to ``stream`` (stderr) as text or JSON lines with request and trace ids.

    Parameters
    ----------
    verbose : bool
        DEBUG instead of INFO.
    log_format : str, optional
        ``json`` or ``text``; default ``$STRATOPT_LOG_FORMAT``, else by whether ``stream`` is a terminal.
    stream : text stream, optional
        Where records go.

    Returns
    -------
    str
        The format used.

    Raises
    ------
    ValueError
        When the format is neither ``json`` nor ``text``.
    """
    stream = stream or sys.stderr
    chosen = resolve_format(log_format or os.environ.get(LOG_FORMAT_ENV), stream)
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    _installed.append(log_handler(chosen, stream))
    root.addHandler(_installed[0])
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return chosen


def access_log_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``STRATOPT_ACCESS_LOG`` leaves the per-call access line on (default on; ``false`` turns it off)."""
    env = os.environ if environ is None else environ
    return env.get(ACCESS_LOG_ENV, "true").strip().lower() not in {"0", "false", "no", "off"}


def _usable(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable()


def choose_request_id(request: Any, metadata: Any) -> str:
    """The call's request id: the request's ``request_id``, the ``x-request-id`` metadata, or a new UUID (hex)."""
    own = getattr(request, "request_id", None)
    if isinstance(own, str) and _usable(own):
        return own
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _usable(value):
            return value
    return uuid.uuid4().hex


class RequestIdContext:
    """A call's servicer context that adds ``x-request-id`` to whatever trailing metadata the call ends with.

    ``abort`` replaces the trailing metadata set before it (``google.rpc.Status`` details travel there), so the
    pair is appended to every abort's metadata as well as set up front for calls that end normally. Trailing
    metadata leaves with the status: unlike early initial metadata it costs no extra write per call.

    Parameters
    ----------
    context : grpc.aio.ServicerContext
        The real context; everything else is delegated to it.
    value : str
        The request id.
    """

    __slots__ = ("_context", "_pair")

    def __init__(self, context: Any, value: str) -> None:
        self._context = context
        self._pair = (REQUEST_ID_HEADER, value)
        context.set_trailing_metadata((self._pair,))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        """Set the call's trailing metadata, keeping the request id."""
        self._context.set_trailing_metadata((*trailing_metadata, self._pair))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        """Abort the call (as ``grpc.aio.ServicerContext.abort``) with the request id in its trailing metadata."""
        metadata = (*trailing_metadata, self._pair) if trailing_metadata else self._context.trailing_metadata()
        await self._context.abort(code, details, tuple(metadata))

    async def abort_with_status(self, status: Any) -> None:
        """Abort with a ``grpc.Status`` (code, details, trailing metadata), keeping the request id."""
        await self.abort(status.code, status.details, status.trailing_metadata)


class RequestIdInterceptor(ServerInterceptor):
    """Give each call a request id (see the module docstring), return it, and write the access line.

    Install it inside the tracing and metrics interceptors (after them in the list), so its records carry the
    server span's trace id.

    Parameters
    ----------
    access : bool
        Write one INFO line per call on the ``stratopt.access`` logger.
    """

    def __init__(self, *, access: bool = True) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        """Return the handler with its behaviour run under a request id."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        access = self._access
        request_streaming = handler.request_streaming

        def begin(request: Any, context: Any) -> tuple[float, RequestIdContext]:
            # Each call runs in its own task (its own context): the id needs no reset afterwards.
            rid = choose_request_id(None if request_streaming else request, metadata)
            request_id.set(rid)
            return time.perf_counter(), RequestIdContext(context, rid)

        def end(start: float, error: BaseException | None, context: Any) -> None:
            if access:
                code = call_outcome(error, context)
                elapsed_ms = (time.perf_counter() - start) * 1000.0
                access_log.info(
                    "%s %s %.1f ms",
                    method,
                    code,
                    elapsed_ms,
                    extra={"grpc_method": method, "grpc_code": code, "duration_ms": round(elapsed_ms, 3)},
                )

        def wrap(behaviour: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
            if streaming:

                async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
                    start, inner = begin(request, context)
                    error = None
                    try:
                        async for response in iterate_responses(behaviour(request, inner)):
                            yield response
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        end(start, error, context)

                return streamed

            async def unary(request: Any, context: Any) -> Any:
                start, inner = begin(request, context)
                error = None
                try:
                    response = behaviour(request, inner)
                    return await response if isinstance(response, Awaitable) else response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(start, error, context)

            return unary

        return wrap_handler(handler, wrap)
