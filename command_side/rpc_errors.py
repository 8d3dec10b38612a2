"""Domain errors to gRPC status: one interceptor for the command service, and the batch items' statuses.

A ``services.errors.StratoptError`` becomes its status code (``exc.code``) with a ``google.rpc.Status`` whose
details carry ``BadRequest`` field violations and ``PreconditionFailure`` violations; any other exception
becomes INTERNAL with a generic message (the traceback goes to the log, never to the caller).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.errors import StratoptError

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/stratopt.v1.OptimizationCommandService/"


def status_from_exception(exc: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` for an exception raised while serving a command."""
    if not isinstance(exc, StratoptError):
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; see the server log")
    status = status_pb2.Status(code=getattr(code_pb2, exc.code), message=exc.message)
    if exc.field_violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.field_violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    if exc.precondition_violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in exc.precondition_violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(failure)
        status.details.append(detail)
    return status


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Map exceptions raised by the command service's handlers to rich gRPC statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the command service's unary and client-streaming handlers."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler

        def wrap(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behaviour(request, context)
                except StratoptError as exc:
                    log.info("%s -> %s: %s", method, exc.code, exc.message)
                    await context.abort_with_status(rpc_status.to_status(status_from_exception(exc)))
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    log.exception("%s failed", method)
                    await context.abort_with_status(rpc_status.to_status(status_from_exception(exc)))

            return guarded

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
