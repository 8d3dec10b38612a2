"""The gRPC servicer of ``stratopt.v1.ExecutionCommandService``: proto in, one application call, proto out.

Who reports fills is the call's authenticated principal (recorded with each fill), never a request field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from command_side import execution_adapter as adapter
from command_side.execution_service import ExecutionService
from stratopt.identity import current_principal
from stratopt.v1 import execution_service_pb2 as ex_pb
from stratopt.v1 import execution_service_pb2_grpc as ex_grpc

if TYPE_CHECKING:  # the grpc.aio context is generic only in the stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


class ExecutionCommandServicer(ex_grpc.ExecutionCommandServiceServicer):
    """Thin adapter over :class:`command_side.execution_service.ExecutionService`."""

    def __init__(self, service: ExecutionService) -> None:
        self._service = service

    async def ExecuteOrders(  # noqa: N802 - gRPC method name
        self, request: ex_pb.ExecuteOrdersRequest, context: Context
    ) -> ex_pb.ExecuteOrdersResponse:
        """Fill the portfolio's NEW orders with the paper broker."""
        portfolio_id, as_of, broker = adapter.execute_orders_command(request)
        return adapter.execute_orders_response(await self._service.execute_paper(portfolio_id, as_of, broker))

    async def ReportFills(  # noqa: N802
        self, request: ex_pb.ReportFillsRequest, context: Context
    ) -> ex_pb.ReportFillsResponse:
        """Apply a broker's fills."""
        portfolio_id, fills = adapter.report_fills_command(request)
        result = await self._service.report_fills(portfolio_id, fills, reported_by=current_principal().name)
        return adapter.report_fills_response(result)

    async def Reconcile(  # noqa: N802
        self, request: ex_pb.ReconcileRequest, context: Context
    ) -> ex_pb.ReconcileResponse:
        """Compare the stored holdings with a broker's."""
        portfolio_id, reported, cash, tolerance = adapter.reconcile_command(request)
        return adapter.reconcile_response(await self._service.reconcile(portfolio_id, reported, cash, tolerance))

    async def CancelOrders(  # noqa: N802
        self, request: ex_pb.CancelOrdersRequest, context: Context
    ) -> ex_pb.CancelOrdersResponse:
        """Cancel open orders; the caller is recorded from its credentials."""
        portfolio_id, order_ids, reason = adapter.cancel_orders_command(request)
        orders = await self._service.cancel_orders(
            portfolio_id, order_ids, reason=reason, cancelled_by=current_principal().name
        )
        return adapter.cancel_orders_response(orders)

    async def ClaimOrders(  # noqa: N802
        self, request: ex_pb.ClaimOrdersRequest, context: Context
    ) -> ex_pb.ClaimOrdersResponse:
        """Release NEW orders to the calling broker adapter."""
        portfolio_id, limit = adapter.claim_orders_command(request)
        orders = await self._service.claim_orders(portfolio_id, limit=limit, claimed_by=current_principal().name)
        return adapter.claim_orders_response(orders)
