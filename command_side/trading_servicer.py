"""The gRPC servicer of ``stratopt.v1.TradingCommandService``: proto in, one application call, proto out.

Each RPC has :mod:`command_side.trading_adapter` turn the request into a command (dataclasses of
:mod:`command_side.trading_model` and :mod:`services.trading`), awaits one application call and has the adapter
turn its result into the response. Allocation (``command_side.allocations``) and rebalancing
(``command_side.rebalancing``, over a ``command_side.trading_store.TradingStore``) are separate application
services, built by the composition root. Who generates, approves or rejects a recommendation is the call's
authenticated principal (:func:`stratopt.identity.current_principal`, set by the server's authentication
interceptor), never a request field. Errors propagate as domain exceptions to the ``ErrorMappingInterceptor``
(allocation errors with the engine's field paths translated to the request's by the adapter).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc

from command_side import trading_adapter as adapter
from command_side.allocations import AllocationService
from command_side.rebalancing import RebalancingService
from stratopt.identity import current_principal
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc

if TYPE_CHECKING:  # the grpc.aio context is generic only in the stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


class TradingCommandServicer(trading_grpc.TradingCommandServiceServicer):
    """Thin adapter over the allocation and rebalancing application services.

    Parameters
    ----------
    allocations : AllocationService
        Integer-share allocation with its cache.
    rebalancing : RebalancingService
        Holdings, policies, drift, rebalance recommendations and their approval.
    """

    def __init__(self, allocations: AllocationService, rebalancing: RebalancingService) -> None:
        self._allocations = allocations
        self._rebalancing = rebalancing

    async def AllocateShares(  # noqa: N802 - gRPC method name
        self, request: trading_pb.AllocateSharesRequest, context: Context
    ) -> trading_pb.AllocateSharesResponse:
        """Allocate whole shares to target weights."""
        command = adapter.allocate_shares_command(request)
        with adapter.allocation_field_paths():
            allocation = await self._allocations.allocate(command, time_remaining_s=context.time_remaining())
        return adapter.allocate_shares_response(allocation)

    async def GetCachedAllocation(  # noqa: N802
        self, request: trading_pb.GetCachedAllocationRequest, context: Context
    ) -> trading_pb.GetCachedAllocationResponse:
        """Read a cached allocation."""
        allocation = await self._allocations.get_cached(adapter.cache_key_query(request))
        return adapter.get_cached_allocation_response(allocation)

    async def ClearAllocationCache(  # noqa: N802
        self, request: trading_pb.ClearAllocationCacheRequest, context: Context
    ) -> trading_pb.ClearAllocationCacheResponse:
        """Remove one or every cached allocation."""
        removed = await self._allocations.clear_cache(adapter.cache_key_query(request))
        return adapter.clear_allocation_cache_response(removed)

    async def UpsertHoldings(  # noqa: N802
        self, request: trading_pb.UpsertHoldingsRequest, context: Context
    ) -> trading_pb.UpsertHoldingsResponse:
        """Store a holdings snapshot."""
        stored = await self._rebalancing.upsert_holdings(adapter.upsert_holdings_command(request))
        return adapter.upsert_holdings_response(stored)

    async def UpsertRebalancePolicy(  # noqa: N802
        self, request: trading_pb.UpsertRebalancePolicyRequest, context: Context
    ) -> trading_pb.UpsertRebalancePolicyResponse:
        """Store a rebalance policy."""
        command = replace(adapter.upsert_policy_command(request), updated_by=current_principal().name)
        policy = await self._rebalancing.upsert_policy(command)
        return adapter.upsert_policy_response(command.portfolio_id, policy)

    async def CheckDrift(  # noqa: N802
        self, request: trading_pb.CheckDriftRequest, context: Context
    ) -> trading_pb.CheckDriftResponse:
        """Drift of the stored holdings from the target."""
        drift = await self._rebalancing.check_drift(adapter.check_drift_command(request))
        return adapter.check_drift_response(drift)

    async def GenerateRebalance(  # noqa: N802
        self, request: trading_pb.GenerateRebalanceRequest, context: Context
    ) -> trading_pb.GenerateRebalanceResponse:
        """Generate and store a rebalance recommendation."""
        command = replace(adapter.generate_rebalance_command(request), created_by=current_principal().name)
        generated = await self._rebalancing.generate(command, time_remaining_s=context.time_remaining())
        return adapter.generate_rebalance_response(generated)

    async def ApproveRebalance(  # noqa: N802
        self, request: trading_pb.ApproveRebalanceRequest, context: Context
    ) -> trading_pb.ApproveRebalanceResponse:
        """Approve a pending recommendation."""
        recommendation = await self._rebalancing.approve(
            adapter.approve_rebalance_command(request, approver=current_principal().name)
        )
        return adapter.approve_rebalance_response(recommendation)

    async def RejectRebalance(  # noqa: N802
        self, request: trading_pb.RejectRebalanceRequest, context: Context
    ) -> trading_pb.RejectRebalanceResponse:
        """Reject a pending recommendation."""
        recommendation = await self._rebalancing.reject(
            adapter.reject_rebalance_command(request, approver=current_principal().name)
        )
        return adapter.reject_rebalance_response(recommendation)
