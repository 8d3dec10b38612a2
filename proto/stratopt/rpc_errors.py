"""The contract's error model: domain errors become ``google.rpc.Status``, anything else INTERNAL.

Shared by the command and the query side (which never import each other). A domain error is any exception
with the attributes of :class:`DomainError` (``services.errors.StratoptError`` and its subclasses); it aborts
the call with the status code its ``code`` names and its
message; its field violations travel as a ``google.rpc.BadRequest`` detail and its precondition violations as
a ``google.rpc.PreconditionFailure`` detail, in the ``grpc-status-details-bin`` trailer that
``grpc_status.rpc_status.from_call`` reads. Any other exception is logged with its traceback and answered
with INTERNAL and a generic message, so no internal detail leaks to the caller.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[attr-defined]  # no stubs seen by mypy
from grpc_status import rpc_status

if TYPE_CHECKING:  # the grpc.aio classes are generic only in the stubs
    ServicerContext = grpc.aio.ServicerContext[Any, Any]
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

_logger = logging.getLogger(__name__)


@runtime_checkable
class DomainError(Protocol):
    """What the error mapping reads from a domain exception (``services.errors.StratoptError``)."""

    code: str
    """Name of the gRPC status code, e.g. ``INVALID_ARGUMENT``."""
    message: str
    """Message for the caller."""
    field_violations: Sequence[Any]
    """Items with ``field`` and ``description`` (sent as ``google.rpc.BadRequest``)."""
    precondition_violations: Sequence[Any]
    """Items with ``type``, ``subject`` and ``description`` (sent as ``google.rpc.PreconditionFailure``)."""


def _is_domain_error(error: BaseException) -> TypeGuard[DomainError]:
    return isinstance(error, DomainError) and isinstance(error.code, str)


INTERNAL_MESSAGE = "internal error"
"""Message of the INTERNAL status sent for an unexpected exception."""


def status_for(error: BaseException) -> status_pb2.Status:
    """Build the ``google.rpc.Status`` that answers an exception.

    Parameters
    ----------
    error : BaseException
        A :class:`DomainError` (mapped by its ``code``, message and violations) or any other exception
        (INTERNAL with a generic message).

    Returns
    -------
    google.rpc.Status
        Code, message and, for domain errors with violations, ``BadRequest`` / ``PreconditionFailure``
        details.
    """
    if not _is_domain_error(error):
        return status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=INTERNAL_MESSAGE)
    try:
        code = grpc.StatusCode[error.code]
    except KeyError:
        code = grpc.StatusCode.INTERNAL
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if error.field_violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.field_violations
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
                        type=v.type, subject=v.subject, description=v.description
                    )
                    for v in error.precondition_violations
                ]
            )
        )
        status.details.append(detail)
    return status


async def _abort(context: ServicerContext, error: Exception, method: str) -> None:
    if not _is_domain_error(error):
        _logger.exception("unexpected error in %s", method, exc_info=error)
    # abort_with_status exists on grpc.aio contexts but is missing from grpc-stubs.
    await context.abort_with_status(rpc_status.to_status(status_for(error)))  # type: ignore[attr-defined]


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
