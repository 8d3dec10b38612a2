"""Helpers of the bad-input tests: call any RPC of both sides, read its status, count every table's rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from psycopg import sql

from stratopt.v1 import command_service_pb2, query_service_pb2, trading_service_pb2

SERVICES = (
    command_service_pb2.DESCRIPTOR.services_by_name["OptimizationCommandService"],
    trading_service_pb2.DESCRIPTOR.services_by_name["TradingCommandService"],
    query_service_pb2.DESCRIPTOR.services_by_name["OptimizationQueryService"],
)
"""Every service of the contract, both sides."""
METHODS = tuple(method for service in SERVICES for method in service.methods)
"""Every RPC of the contract (descriptors), in declaration order."""


@dataclass(frozen=True)
class Outcome:
    """What an RPC answered: its code, message and the ``BadRequest`` field paths of its details."""

    code: grpc.StatusCode
    message: str
    fields: tuple[str, ...]
    trailer_bytes: int


def call(channel: grpc.Channel, method: Any, request: Message | Sequence[Message], timeout_s: float = 60) -> Outcome:
    """Call ``method`` (a ``MethodDescriptor``) with ``request`` (a list of messages for a client stream).

    Returns
    -------
    Outcome
        OK with no fields for an answer; otherwise the status code, message and field paths.
    """
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = type(request[0] if isinstance(request, Sequence) else request).SerializeToString
    if method.client_streaming:
        stub = channel.stream_unary(path, request_serializer=serialize, response_deserializer=bytes)
        arguments: Any = iter(request)
    else:
        stub = channel.unary_unary(path, request_serializer=serialize, response_deserializer=bytes)
        arguments = request
    try:
        stub(arguments, timeout=timeout_s)
    except grpc.RpcError as error:
        return outcome_of(error)
    return Outcome(grpc.StatusCode.OK, "", (), 0)


def outcome_of(error: Any) -> Outcome:
    """The outcome of a failed call (an ``grpc.RpcError`` that is also a ``grpc.Call``)."""
    fields: list[str] = []
    status = rpc_status.from_call(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                fields.extend(v.field for v in bad_request.field_violations)
    trailers = error.trailing_metadata() or ()
    size = sum(len(key) + len(value) for key, value in trailers)
    return Outcome(error.code(), error.details() or "", tuple(fields), size)


def row_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every table of the ``public`` schema (hypertables included), by table name."""
    tables = [
        row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    ]
    counts = {}
    for table in tables:
        row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
        assert row is not None
        counts[table] = int(row[0])
    return counts


def changed_tables(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Tables whose row count differs, with both counts."""
    return {
        t: (before.get(t, 0), after.get(t, 0)) for t in before.keys() | after.keys() if before.get(t) != after.get(t)
    }
