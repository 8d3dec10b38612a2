"""The gRPC servicer of ``stratopt.v1.OptimizationCommandService``: proto in, one domain call, proto out.

Each RPC is three lines: the adapter (``command_side.optimization_adapter``) turns the request into a command,
``OptimizationService`` answers it with a plain result, the adapter turns that into the response. Errors propagate
as domain exceptions to ``ErrorMappingInterceptor``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from command_side import backtest_adapter
from command_side import optimization_adapter as adapter
from command_side.application import OptimizationService
from command_side.backtests import BacktestService
from services.errors import PreconditionError
from stratopt.identity import current_principal
from stratopt.v1 import backtest_pb2 as bt_pb
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc

if TYPE_CHECKING:  # the grpc.aio context is generic only in the stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


class OptimizationCommandServicer(cmd_grpc.OptimizationCommandServiceServicer):
    """Thin adapter: request → command, one application call, result → response.

    Parameters
    ----------
    service : OptimizationService
        The command side's application service.
    backtests : BacktestService, optional
        The Backtest use case (None: Backtest answers FAILED_PRECONDITION).
    """

    def __init__(self, service: OptimizationService, backtests: BacktestService | None = None) -> None:
        self._service = service
        self._backtests = backtests

    async def Optimize(  # noqa: N802 - gRPC method name
        self, request: cmd_pb.OptimizeRequest, context: Context
    ) -> cmd_pb.OptimizeResponse:
        """Optimize one portfolio."""
        workload = adapter.request_workload(request)  # which solver pool: read without parsing the request
        if not request.request_id:  # a full queue refuses before parsing; a retry may still replay its answer
            self._service.check_capacity(workload)
        if request.WhichOneof("inputs") in adapter.WORKER_PARSED_INPUTS:  # parsed and checked in a worker
            serialized = adapter.serialized_optimize(request, workload)
            result = await self._service.optimize_serialized(serialized, time_remaining_s=context.time_remaining())
        else:
            command = adapter.optimize_command(request)
            result = await self._service.optimize(command, time_remaining_s=context.time_remaining())
        return adapter.optimize_response(result)

    async def BatchOptimize(  # noqa: N802
        self, request: cmd_pb.BatchOptimizeRequest, context: Context
    ) -> cmd_pb.BatchOptimizeResponse:
        """Optimize many portfolios, one result or error per item."""
        command = adapter.batch_command(request)
        result = await self._service.batch_optimize(command, time_remaining_s=context.time_remaining())
        return adapter.batch_response(result, request)

    async def BatchOptimizeStream(  # noqa: N802
        self, request_iterator: AsyncIterator[cmd_pb.BatchOptimizeStreamRequest], context: Context
    ) -> AsyncIterator[cmd_pb.BatchOptimizeStreamResponse]:
        """Optimize a stream of portfolios; results stream back as their chunks are stored."""
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        stream = adapter.BatchStream()

        async def messages() -> AsyncIterator[cmd_pb.BatchOptimizeStreamRequest]:
            yield first
            async for message in request_iterator:
                yield message

        async for answers in self._service.batch_optimize_stream(
            stream.items(messages()),
            window=adapter.stream_window(first),
            time_remaining_s=context.time_remaining(),
        ):
            yield stream.response(answers)

    async def UpsertConfiguration(  # noqa: N802
        self, request: cmd_pb.UpsertConfigurationRequest, context: Context
    ) -> cmd_pb.UpsertConfigurationResponse:
        """Store a configuration version."""
        configuration = adapter.upsert_configuration_command(request)
        result = await self._service.upsert_configuration(configuration)
        return adapter.upsert_configuration_response(result)

    async def GetConfiguration(  # noqa: N802
        self, request: cmd_pb.GetConfigurationRequest, context: Context
    ) -> cmd_pb.GetConfigurationResponse:
        """Read a configuration version."""
        portfolio_id, version = adapter.get_configuration_query(request)
        configuration = await self._service.get_configuration(portfolio_id, version)
        return adapter.get_configuration_response(configuration)

    async def ListConfigurations(  # noqa: N802
        self, request: cmd_pb.ListConfigurationsRequest, context: Context
    ) -> cmd_pb.ListConfigurationsResponse:
        """List the latest configurations."""
        page = await self._service.list_configurations(*adapter.list_configurations_query(request))
        return adapter.configuration_page_response(page)

    async def RunConfiguration(  # noqa: N802
        self, request: cmd_pb.RunConfigurationRequest, context: Context
    ) -> cmd_pb.RunConfigurationResponse:
        """Re-optimize a stored configuration on stored market data."""
        portfolio_id, request_id = adapter.run_configuration_command(request)
        result = await self._service.run_configuration(
            portfolio_id, request_id, time_remaining_s=context.time_remaining()
        )
        return adapter.run_configuration_response(result)

    async def ComputeEfficientFrontier(  # noqa: N802
        self, request: cmd_pb.ComputeEfficientFrontierRequest, context: Context
    ) -> cmd_pb.ComputeEfficientFrontierResponse:
        """Compute efficient-frontier points (nothing stored)."""
        command = adapter.frontier_command(request)
        result = await self._service.efficient_frontier(command, time_remaining_s=context.time_remaining())
        return adapter.frontier_response(result)

    async def IngestMarketData(  # noqa: N802
        self,
        request_iterator: AsyncIterator[cmd_pb.IngestMarketDataRequest],
        context: Context,
    ) -> cmd_pb.IngestMarketDataResponse:
        """Upsert streamed price bars."""
        result = await self._service.ingest(
            adapter.ingest_chunks(request_iterator), time_remaining_s=context.time_remaining()
        )
        return adapter.ingest_response(result)

    async def Backtest(  # noqa: N802
        self, request: bt_pb.BacktestRequest, context: Context
    ) -> AsyncIterator[bt_pb.BacktestResponse]:
        """Run a walk-forward backtest; stream progress, then the stored result."""
        command = backtest_adapter.backtest_command(request, requested_by=current_principal().name)
        if self._backtests is None:
            raise PreconditionError("backtests need the PostgreSQL store")
        async for update in self._backtests.run(command, time_remaining_s=context.time_remaining()):
            yield backtest_adapter.backtest_response(update)
