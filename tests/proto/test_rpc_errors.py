"""The contract's error model: domain error classes to gRPC status codes and ``google.rpc.Status`` details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[attr-defined]

from services.errors import (
    DeadlineExceededError,
    FieldViolation,
    InfeasibleError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    OperationalError,
    OptimizationError,
    PreconditionError,
    PreconditionViolation,
    StratoptError,
    UnavailableError,
)
from services.trading import IllegalTransitionError
from stratopt.rpc_errors import INTERNAL_MESSAGE, status_code, status_for

EXPECTED = [
    (InvalidInputError("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (InfeasibleError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (PreconditionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
    (IntegrityError("x"), grpc.StatusCode.ALREADY_EXISTS),
    (DeadlineExceededError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
    (OperationalError("x"), grpc.StatusCode.UNAVAILABLE),
    (OptimizationError("x"), grpc.StatusCode.INTERNAL),
    (StratoptError("x"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), EXPECTED, ids=[type(e).__name__ for e, _ in EXPECTED])
def test_each_domain_error_class_has_its_status_code(error: StratoptError, code: grpc.StatusCode) -> None:
    assert status_code(error) is code
    assert status_for(error).code == code.value[0]
    assert status_for(error).message == "x"


def test_a_subclass_answers_with_its_nearest_listed_base() -> None:
    class LateError(DeadlineExceededError):
        pass

    assert status_code(LateError("late")) is grpc.StatusCode.DEADLINE_EXCEEDED
    illegal = IllegalTransitionError("NOT_PENDING", "r-1", "already approved")
    assert status_code(illegal) is grpc.StatusCode.FAILED_PRECONDITION


def test_violations_travel_as_google_rpc_details() -> None:
    error = InvalidInputError(
        "constraints.turnover_limit: must be finite",
        field_violations=(FieldViolation("constraints.turnover_limit", "must be finite"),),
        precondition_violations=(PreconditionViolation("TURNOVER", "constraints.turnover_limit", "too low"),),
    )
    status = status_for(error)
    bad_request, failure = error_details_pb2.BadRequest(), error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(bad_request) and status.details[1].Unpack(failure)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("constraints.turnover_limit", "must be finite")
    ]
    assert [(v.type, v.subject) for v in failure.violations] == [("TURNOVER", "constraints.turnover_limit")]


def test_any_other_exception_is_internal_without_detail() -> None:
    status = status_for(KeyError("secret table name"))
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert status.message == INTERNAL_MESSAGE and not status.details


def test_a_call_that_ended_before_its_status_could_be_sent_ends_as_cancelled() -> None:
    """A handler failing after its call ended (deadline passed, client gone) cannot send a status.

    grpc.aio's ``abort_with_status`` then raises an error of its own (``ExecuteBatchError``), which used to escape
    the interceptor chain and be counted as UNKNOWN; the mapping now ends the handler as a cancelled call.
    """
    import asyncio
    from types import SimpleNamespace

    from stratopt.rpc_errors import ErrorMappingInterceptor

    class EndedCallContext:
        async def abort_with_status(self, status: object) -> None:
            raise RuntimeError('Failed "execute_batch"')  # what cygrpc raises for an ended call

    async def handler(request: object, context: object) -> object:
        raise DeadlineExceededError("the call's deadline leaves no time to optimize")

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handler)

    async def call() -> object:
        interceptor = ErrorMappingInterceptor(method_prefix="/svc/")
        wrapped = await interceptor.intercept_service(continuation, SimpleNamespace(method="/svc/M"))  # type: ignore[arg-type]
        return await wrapped.unary_unary(object(), EndedCallContext())

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
