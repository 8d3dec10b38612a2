"""The command side: gRPC command handlers, the write model and event emission."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from command_side.allocation_cache import AllocationCache, InMemoryAllocationCache
from command_side.allocations import AllocationService
from command_side.allocations_repository import PostgresAllocationCache
from command_side.application import MAX_BATCH_SIZE, OptimizationService
from command_side.backtests import BacktestService, InMemoryBacktestStore, PostgresBacktestStore
from command_side.execution_service import ExecutionService
from command_side.execution_servicer import ExecutionCommandServicer
from command_side.execution_store import PostgresExecutionStore
from command_side.optimization_adapter import optimize_command_from_configuration
from command_side.optimization_store import InMemoryOptimizationStore, OptimizationStore
from command_side.rebalancing import RebalancingService
from command_side.rebalancing_repository import PostgresTradingStore
from command_side.recompute import RecomputeWorker
from command_side.recompute_store import PostgresRecomputeStore
from command_side.repository import PostgresOptimizationStore
from command_side.rotation import RotationService
from command_side.rotation_scheduler import RotationScheduler
from command_side.rotation_servicer import RotationCommandServicer
from command_side.rotation_store import PostgresRotationStore
from command_side.servicer import OptimizationCommandServicer
from command_side.trading_model import CheckDrift
from command_side.trading_servicer import TradingCommandServicer
from command_side.trading_store import InMemoryTradingStore, TradingStore
from command_side.workers import SolverPool, default_heavy_workers
from services.workload import DEFAULT_HEAVY_ASSETS
from stratopt.rpc_errors import ErrorMappingInterceptor
from stratopt.v1 import (
    command_service_pb2,
    command_service_pb2_grpc,
    execution_service_pb2,
    execution_service_pb2_grpc,
    rotation_service_pb2,
    rotation_service_pb2_grpc,
    trading_service_pb2,
    trading_service_pb2_grpc,
)

SERVICE_NAME = command_service_pb2.DESCRIPTOR.services_by_name["OptimizationCommandService"].full_name
TRADING_SERVICE_NAME = trading_service_pb2.DESCRIPTOR.services_by_name["TradingCommandService"].full_name
ROTATION_SERVICE_NAME = rotation_service_pb2.DESCRIPTOR.services_by_name["RotationCommandService"].full_name
EXECUTION_SERVICE_NAME = execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionCommandService"].full_name

__all__ = [
    "DEFAULT_HEAVY_ASSETS",
    "EXECUTION_SERVICE_NAME",
    "MAX_BATCH_SIZE",
    "ROTATION_SERVICE_NAME",
    "SERVICE_NAME",
    "TRADING_SERVICE_NAME",
    "AllocationCache",
    "AllocationService",
    "BacktestService",
    "ErrorMappingInterceptor",
    "ExecutionService",
    "InMemoryAllocationCache",
    "InMemoryBacktestStore",
    "InMemoryOptimizationStore",
    "InMemoryTradingStore",
    "OptimizationService",
    "OptimizationStore",
    "PostgresAllocationCache",
    "PostgresBacktestStore",
    "PostgresExecutionStore",
    "PostgresOptimizationStore",
    "PostgresRecomputeStore",
    "PostgresRotationStore",
    "PostgresTradingStore",
    "RebalancingService",
    "RecomputeWorker",
    "RotationScheduler",
    "RotationService",
    "SolverPool",
    "TradingStore",
    "backtest_service",
    "default_heavy_workers",
    "drift_exceeds",
    "interceptor",
    "optimization_service",
    "register",
]


def optimization_service(
    store: OptimizationStore, solver_pool: SolverPool, batch_concurrency: int = 0
) -> OptimizationService:
    """The optimization application service wired to the adapter.

    RunConfiguration turns a stored configuration into its command with
    ``optimization_adapter.optimize_command_from_configuration``.
    """
    return OptimizationService(
        store, solver_pool, command_for=optimize_command_from_configuration, batch_concurrency=batch_concurrency
    )


def backtest_service(
    store: OptimizationStore, backtests: PostgresBacktestStore | InMemoryBacktestStore, solver_pool: SolverPool
) -> BacktestService:
    """The Backtest use case wired to the adapter (configurations become problems as RunConfiguration's do)."""
    return BacktestService(store, backtests, solver_pool, command_for=optimize_command_from_configuration)


def drift_exceeds(rebalancing: RebalancingService) -> Callable[[str, float], Awaitable[bool]]:
    """The recompute worker's drift check through ``rebalancing``.

    CheckDrift of the stored holdings against the portfolio's latest run at the stored closes, with ``threshold``
    (two-way).
    """

    async def exceeds(portfolio_id: str, threshold: float) -> bool:
        check = await rebalancing.check_drift(CheckDrift(portfolio_id=portfolio_id, threshold=threshold))
        return bool(check.report.exceeds_threshold)

    return exceeds


def interceptor() -> ErrorMappingInterceptor:
    """Return the interceptor that maps the command services' errors to ``google.rpc.Status``."""
    return ErrorMappingInterceptor(
        method_prefix=(
            f"/{SERVICE_NAME}/",
            f"/{TRADING_SERVICE_NAME}/",
            f"/{ROTATION_SERVICE_NAME}/",
            f"/{EXECUTION_SERVICE_NAME}/",
        )
    )


def register(
    server: grpc.aio.Server,
    *,
    optimization: OptimizationService,
    allocation: AllocationService,
    rebalancing: RebalancingService,
    rotation: RotationService | None = None,
    execution: ExecutionService | None = None,
    backtests: BacktestService | None = None,
) -> list[str]:
    """Add the command services to ``server``; return their full service names for health and reflection.

    The application services come built on their stores (the composition root, ``stratopt_cli.server``,
    chooses the backends).
    """
    command_service_pb2_grpc.add_OptimizationCommandServiceServicer_to_server(
        OptimizationCommandServicer(optimization, backtests), server
    )
    trading_service_pb2_grpc.add_TradingCommandServiceServicer_to_server(
        TradingCommandServicer(allocation, rebalancing), server
    )
    names = [SERVICE_NAME, TRADING_SERVICE_NAME]
    if rotation is not None:
        rotation_service_pb2_grpc.add_RotationCommandServiceServicer_to_server(
            RotationCommandServicer(rotation), server
        )
        names.append(ROTATION_SERVICE_NAME)
    if execution is not None:
        execution_service_pb2_grpc.add_ExecutionCommandServiceServicer_to_server(
            ExecutionCommandServicer(execution), server
        )
        names.append(EXECUTION_SERVICE_NAME)
    return names
