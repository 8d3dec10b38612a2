"""The gRPC servicer of ``stratopt.v1.RotationCommandService``: proto in, one application call, proto out.

Who runs a cycle or sets a kill-switch is the call's authenticated principal
(:func:`stratopt.identity.current_principal`), never a request field. Errors propagate as domain exceptions to the
``ErrorMappingInterceptor``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from command_side import rotation_adapter as adapter
from command_side.rotation import RotationService
from stratopt.identity import current_principal
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc

if TYPE_CHECKING:  # the grpc.aio context is generic only in the stubs
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Context = grpc.aio.ServicerContext


class RotationCommandServicer(rot_grpc.RotationCommandServiceServicer):
    """Thin adapter over :class:`command_side.rotation.RotationService`."""

    def __init__(self, service: RotationService) -> None:
        self._service = service

    async def IngestSignals(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[rot_pb.IngestSignalsRequest], context: Context
    ) -> rot_pb.IngestSignalsResponse:
        """Upsert streamed signals, one message per transaction."""
        written = 0
        symbols: set[str] = set()
        async for request in request_iterator:
            signal_set, rows = adapter.ingest_signals_rows(request)
            written += await self._service.ingest_signals(signal_set, rows)
            symbols.update(row[0] for row in rows)
        return rot_pb.IngestSignalsResponse(rows_written=written, symbols=sorted(symbols))

    async def IngestQuotes(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[rot_pb.IngestQuotesRequest], context: Context
    ) -> rot_pb.IngestQuotesResponse:
        """Upsert streamed quotes, one message per transaction."""
        written = 0
        symbols: set[str] = set()
        async for request in request_iterator:
            rows = adapter.ingest_quotes_rows(request)
            written += await self._service.ingest_quotes(rows)
            symbols.update(row[0] for row in rows)
        return rot_pb.IngestQuotesResponse(rows_written=written, symbols=sorted(symbols))

    async def UpsertRotationConfiguration(  # noqa: N802
        self, request: rot_pb.UpsertRotationConfigurationRequest, context: Context
    ) -> rot_pb.UpsertRotationConfigurationResponse:
        """Store a rotation configuration."""
        stored, created = await self._service.upsert_configuration(adapter.upsert_configuration_command(request))
        return rot_pb.UpsertRotationConfigurationResponse(
            configuration=adapter.configuration_message(stored), created=created
        )

    async def RunRotationCycle(  # noqa: N802
        self, request: rot_pb.RunRotationCycleRequest, context: Context
    ) -> rot_pb.RunRotationCycleResponse:
        """Run and store one cycle."""
        command = adapter.run_cycle_command(request, decided_by=current_principal().name)
        decision, replayed = await self._service.run_cycle(command, time_remaining_s=context.time_remaining())
        return rot_pb.RunRotationCycleResponse(decision=adapter.decision_message(decision), replayed=replayed)

    async def SetKillSwitch(  # noqa: N802
        self, request: rot_pb.SetKillSwitchRequest, context: Context
    ) -> rot_pb.SetKillSwitchResponse:
        """Engage or release a kill-switch."""
        portfolio_id, engaged, reason = adapter.kill_switch_command(request)
        state = await self._service.set_kill_switch(
            portfolio_id, engaged=engaged, reason=reason, changed_by=current_principal().name
        )
        return rot_pb.SetKillSwitchResponse(state=adapter.kill_switch_message(state))

    async def PauseRotationScheduler(  # noqa: N802
        self, request: rot_pb.PauseRotationSchedulerRequest, context: Context
    ) -> rot_pb.PauseRotationSchedulerResponse:
        """Pause or resume the rotation scheduler."""
        paused, reason = adapter.pause_scheduler_command(request)
        state = await self._service.pause_scheduler(paused, reason=reason, changed_by=current_principal().name)
        return adapter.scheduler_message(state)
