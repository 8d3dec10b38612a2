"""The contract's error model: domain errors become ``google.rpc.Status``, anything else INTERNAL.

Shared by the command and the query side (which never import each other). A domain error
(``services.errors.StratoptError`` and its subclasses) aborts the call with the status code ``STATUS_CODES`` gives
its class (the nearest listed base class for a subclass) and its message; its field violations travel as a
``google.rpc.BadRequest`` detail and its precondition violations as a ``google.rpc.PreconditionFailure`` detail,
in the ``grpc-status-details-bin`` trailer that ``grpc_status.rpc_status.from_call`` reads. Any other exception
is logged with its traceback and answered with INTERNAL and a generic message, so no internal detail leaks to the
caller. The engine knows nothing of gRPC: this table is the one place where domain errors meet status codes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[attr-defined]  # no stubs seen by mypy
from grpc_status import rpc_status

from services.errors import (
    DeadlineExceededError,
    InfeasibleError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    OperationalError,
    OptimizationError,
    PermissionDeniedError,
    PersistenceError,
    PreconditionError,
    ResourceExhaustedError,
    StratoptError,
    UnavailableError,
)

if TYPE_CHECKING:  # the grpc.aio classes are generic only in the stubs
    ServicerContext = grpc.aio.ServicerContext[Any, Any]
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

_logger = logging.getLogger(__name__)


STATUS_CODES: dict[type[StratoptError], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    InfeasibleError: grpc.StatusCode.FAILED_PRECONDITION,
    PreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    IntegrityError: grpc.StatusCode.ALREADY_EXISTS,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    OperationalError: grpc.StatusCode.UNAVAILABLE,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    OptimizationError: grpc.StatusCode.INTERNAL,
    PersistenceError: grpc.StatusCode.INTERNAL,
    StratoptError: grpc.StatusCode.INTERNAL,
}
"""The gRPC status code of each domain error class; a subclass answers with its nearest listed base class's."""


def status_code(error: StratoptError) -> grpc.StatusCode:
    """The status code of a domain error (``STATUS_CODES``, by the error class's method resolution order)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


INTERNAL_MESSAGE = "internal error"
"""Message of the INTERNAL status sent for an unexpected exception."""
MAX_MESSAGE_BYTES = 1024
"""Most UTF-8 bytes of a status message; longer ones are cut with "…"."""
MAX_DETAIL_BYTES = 256
"""Most UTF-8 bytes of each field, subject and description in a status's details."""
MAX_VIOLATIONS = 10
"""Most violations of each kind a status carries (the first ones; the message says what is wrong first).

With these caps a status's message and details stay under 8 KiB even percent- and base64-encoded, inside gRPC's
trailer limit (8 KiB soft, 16 KiB hard by default), however long the values an error quotes."""


def _capped(text: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (ending in "…" when cut)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - len("…".encode())].decode(errors="ignore") + "…"


def status_for(error: BaseException) -> status_pb2.Status:
    """Build the ``google.rpc.Status`` that answers an exception.

    Parameters
    ----------
    error : BaseException
        A domain error (``StratoptError``: mapped by ``status_code``, with its message and violations) or any other
        exception (INTERNAL with a generic message).

    Returns
    -------
    google.rpc.Status
        Code, message and, for domain errors with violations, ``BadRequest`` / ``PreconditionFailure``
        details; the message at most ``MAX_MESSAGE_BYTES``, each detail's texts ``MAX_DETAIL_BYTES``, at most
        ``MAX_VIOLATIONS`` violations of each kind; a ``ResourceExhaustedError`` carries a ``RetryInfo`` detail with
        its ``retry_after_s``.
    """
    if not isinstance(error, StratoptError):
        return status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=INTERNAL_MESSAGE)
    code = status_code(error)
    status = status_pb2.Status(code=code.value[0], message=_capped(error.message, MAX_MESSAGE_BYTES))
    if error.field_violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_capped(v.field), description=_capped(v.description)
                    )
                    for v in error.field_violations[:MAX_VIOLATIONS]
                ]
            )
        )
        status.details.append(detail)
    if error.precondition_violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.type, subject=_capped(v.subject), description=_capped(v.description)
                    )
                    for v in error.precondition_violations[:MAX_VIOLATIONS]
                ]
            )
        )
        status.details.append(detail)
    if isinstance(error, ResourceExhaustedError):
        detail = any_pb2.Any()
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(0, round(error.retry_after_s * 1e9)))
        detail.Pack(retry)
        status.details.append(detail)
    return status


async def _abort(context: ServicerContext, error: Exception, method: str) -> None:
    if not isinstance(error, StratoptError):
        _logger.exception("unexpected error in %s", method, exc_info=error)
    try:
        # abort_with_status exists on grpc.aio contexts but is missing from grpc-stubs.
        await context.abort_with_status(rpc_status.to_status(status_for(error)))  # type: ignore[attr-defined]
    except grpc.aio.AbortError:
        raise
    except Exception as failure:
        # The call ended before its status could be sent (its deadline passed or the client cancelled while the
        # handler failed): nobody is left to answer. End as a cancelled call, not with an error of our own
        # (grpc's ExecuteBatchError escaped before and was counted as UNKNOWN).
        raise asyncio.CancelledError("the call ended before its status could be sent") from failure


def _unary_response(behaviour: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    """Wrap a unary-response behaviour (unary_unary or stream_unary)."""

    async def wrapped(request: Any, context: ServicerContext) -> Any:
        try:
            response = behaviour(request, context)
            return await response if inspect.isawaitable(response) else response
        except grpc.aio.AbortError:
            raise  # the handler aborted on its own: keep its status
        except Exception as error:
            await _abort(context, error, method)

    return wrapped


def _streaming_response(behaviour: Callable[..., Any], method: str) -> Callable[..., AsyncIterator[Any]]:
    """Wrap a streaming-response behaviour (unary_stream or stream_stream)."""

    async def wrapped(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        try:
            responses = behaviour(request, context)
            if inspect.isasyncgen(responses):
                async for response in responses:
                    yield response
            elif inspect.isawaitable(responses):  # a coroutine writing with context.write
                await responses
            else:
                for response in responses:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, method)

    return wrapped


class ErrorMappingInterceptor(_ServerInterceptor):
    """Server interceptor that maps the errors of one service's methods to ``google.rpc.Status``.

    Parameters
    ----------
    method_prefix : str or tuple of str
        Prefix (or prefixes) of the full method names handled, e.g. ``/stratopt.v1.OptimizationQueryService/``;
        calls to other methods (health, reflection, other services) pass through untouched.
    """

    def __init__(self, *, method_prefix: str | tuple[str, ...]) -> None:
        self._method_prefix = method_prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        """Return the method's handler with its behaviour wrapped in the error mapping.

        Parameters
        ----------
        continuation : callable
            Resolves the handler of the call (the next interceptor or the servicer).
        handler_call_details : grpc.HandlerCallDetails
            Method name and invocation metadata of the call.

        Returns
        -------
        grpc.RpcMethodHandler
            The wrapped handler, or the original one for methods outside ``method_prefix`` (None when the
            method is unknown).
        """
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._method_prefix):
            return handler
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary_response(handler.unary_unary, method), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming_response(handler.unary_stream, method), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_unary_response(handler.stream_unary, method), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _streaming_response(handler.stream_stream, method), **serializers
            )
        return handler
