"""The command side: gRPC command handlers, the write model and event emission."""

from __future__ import annotations

import asyncpg
import grpc

from command_side.application import MAX_BATCH_SIZE, OptimizationService
from command_side.repository import WriteRepository
from command_side.servicer import OptimizationCommandServicer
from command_side.workers import SolverPool
from stratopt.rpc_errors import ErrorMappingInterceptor
from stratopt.v1 import command_service_pb2, command_service_pb2_grpc

SERVICE_NAME = command_service_pb2.DESCRIPTOR.services_by_name["OptimizationCommandService"].full_name

__all__ = [
    "MAX_BATCH_SIZE",
    "SERVICE_NAME",
    "ErrorMappingInterceptor",
    "OptimizationService",
    "SolverPool",
    "interceptor",
    "register",
]


def interceptor() -> ErrorMappingInterceptor:
    """Return the interceptor that maps the command service's errors to ``google.rpc.Status``."""
    return ErrorMappingInterceptor(method_prefix=f"/{SERVICE_NAME}/")


def register(server: grpc.aio.Server, pool: asyncpg.Pool[asyncpg.Record], solver_pool: SolverPool) -> list[str]:
    """Add the command service to ``server``; return its full service name(s) for health and reflection."""
    service = OptimizationService(WriteRepository(pool), solver_pool)
    command_service_pb2_grpc.add_OptimizationCommandServiceServicer_to_server(
        OptimizationCommandServicer(service), server
    )
    return [SERVICE_NAME]
