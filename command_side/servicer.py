"""The gRPC servicer of ``stratopt.v1.OptimizationCommandService``: proto in, one domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from command_side.application import OptimizationService
from stratopt.rpc_errors import status_for
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc

if TYPE_CHECKING:  # the grpc.aio context is generic only in the stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


class OptimizationCommandServicer(cmd_grpc.OptimizationCommandServiceServicer):
    """Thin adapter: errors propagate as domain exceptions to ``ErrorMappingInterceptor``.

    Parameters
    ----------
    service : OptimizationService
        The command side's application service.
    """

    def __init__(self, service: OptimizationService) -> None:
        self._service = service

    async def Optimize(  # noqa: N802 - gRPC method name
        self, request: cmd_pb.OptimizeRequest, context: Context
    ) -> cmd_pb.OptimizeResponse:
        """Optimize one portfolio."""
        return await self._service.optimize(request, time_remaining_s=context.time_remaining())

    async def BatchOptimize(  # noqa: N802
        self, request: cmd_pb.BatchOptimizeRequest, context: Context
    ) -> cmd_pb.BatchOptimizeResponse:
        """Optimize many portfolios, one result or error per item."""
        return await self._service.batch_optimize(
            request, time_remaining_s=context.time_remaining(), to_status=status_for
        )

    async def UpsertConfiguration(  # noqa: N802
        self, request: cmd_pb.UpsertConfigurationRequest, context: Context
    ) -> cmd_pb.UpsertConfigurationResponse:
        """Store a configuration version."""
        return await self._service.upsert_configuration(request.configuration)

    async def GetConfiguration(  # noqa: N802
        self, request: cmd_pb.GetConfigurationRequest, context: Context
    ) -> cmd_pb.GetConfigurationResponse:
        """Read a configuration version."""
        config = await self._service.get_configuration(request.portfolio_id, request.version)
        return cmd_pb.GetConfigurationResponse(configuration=config)

    async def ListConfigurations(  # noqa: N802
        self, request: cmd_pb.ListConfigurationsRequest, context: Context
    ) -> cmd_pb.ListConfigurationsResponse:
        """List the latest configurations."""
        return await self._service.list_configurations(request.page_size, request.page_token)

    async def RunConfiguration(  # noqa: N802
        self, request: cmd_pb.RunConfigurationRequest, context: Context
    ) -> cmd_pb.RunConfigurationResponse:
        """Re-optimize a stored configuration on stored market data."""
        result = await self._service.run_configuration(
            request.portfolio_id, request.request_id, time_remaining_s=context.time_remaining()
        )
        return cmd_pb.RunConfigurationResponse(result=result)

    async def ComputeEfficientFrontier(  # noqa: N802
        self, request: cmd_pb.ComputeEfficientFrontierRequest, context: Context
    ) -> cmd_pb.ComputeEfficientFrontierResponse:
        """Compute efficient-frontier points (nothing stored)."""
        return await self._service.efficient_frontier(request, time_remaining_s=context.time_remaining())

    async def IngestMarketData(  # noqa: N802
        self,
        request_iterator: AsyncIterator[cmd_pb.IngestMarketDataRequest],
        context: Context,
    ) -> cmd_pb.IngestMarketDataResponse:
        """Upsert streamed price bars."""
        return await self._service.ingest(request_iterator)
