"""The query side of stratopt: ``stratopt.v1.OptimizationQueryService`` over the stored events.

Use :func:`register` to add the servicer to a ``grpc.aio`` server and :func:`interceptor` for the interceptor
that maps its errors to ``google.rpc.Status`` (pass it in ``grpc.aio.server(interceptors=[...])``).
"""

from __future__ import annotations

import grpc

from query_side.backtests import BacktestReads
from query_side.event_cache import DEFAULT_MAX_EVENTS, EventMessageCache
from query_side.export import ExportReads
from query_side.read_store import InMemoryReadStore, ReadStore
from query_side.realised import PriceReads
from query_side.recompute_jobs import RecomputeJobReads
from query_side.repository import PostgresReadStore
from query_side.rotation_reads import RotationReads
from query_side.sector_exposure import SectorExposureReads
from query_side.servicer import OptimizationQueryServicer
from query_side.trading_stats import TradingStatistics
from query_side.watch import EventNotifier
from query_side.watch_reads import WatchReads
from stratopt.rpc_errors import ErrorMappingInterceptor
from stratopt.v1 import query_service_pb2, query_service_pb2_grpc

SERVICE_NAME: str = query_service_pb2.DESCRIPTOR.services_by_name["OptimizationQueryService"].full_name
"""Full name of the service, ``stratopt.v1.OptimizationQueryService``."""

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "SERVICE_NAME",
    "BacktestReads",
    "ErrorMappingInterceptor",
    "EventMessageCache",
    "EventNotifier",
    "ExportReads",
    "InMemoryReadStore",
    "OptimizationQueryServicer",
    "PostgresReadStore",
    "PriceReads",
    "ReadStore",
    "RecomputeJobReads",
    "RotationReads",
    "SectorExposureReads",
    "TradingStatistics",
    "WatchReads",
    "interceptor",
    "register",
]


def register(
    server: grpc.aio.Server,
    store: ReadStore,
    rotation: RotationReads | None = None,
    notifier: EventNotifier | None = None,
    prices: PriceReads | None = None,
    trading: TradingStatistics | None = None,
    exports: ExportReads | None = None,
    backtests: BacktestReads | None = None,
    sectors: SectorExposureReads | None = None,
    watch_reads: WatchReads | None = None,
    recompute_jobs: RecomputeJobReads | None = None,
    event_cache: EventMessageCache | None = None,
) -> list[str]:
    """Add the query servicer to a server.

    Parameters
    ----------
    server : grpc.aio.Server
        Server not yet started.
    store : ReadStore
        The read store, e.g. ``PostgresReadStore`` on a pool created on the server's event loop.
    rotation : RotationReads, optional
        Reads of the rotation decisions; without it their RPCs answer NOT_FOUND.
    notifier : EventNotifier, optional
        The live event source of ``WatchEvents``; without it the RPC answers FAILED_PRECONDITION.
    prices : PriceReads, optional
        Stored closes for ``GetRealisedPerformance``; without them the RPC answers FAILED_PRECONDITION.
    trading : TradingStatistics, optional
        Rebalance statistics for ``GetRebalanceStatistics``; without them the RPC answers FAILED_PRECONDITION.
    exports : ExportReads, optional
        The paginated reads of ``ExportData``; without them the RPC answers FAILED_PRECONDITION.
    backtests : BacktestReads, optional
        Stored backtests for ``GetBacktest`` and ``ListBacktests``; without them they answer FAILED_PRECONDITION.
    sectors : SectorExposureReads, optional
        Sector exposures for ``GetSectorExposure``; without them the RPC answers FAILED_PRECONDITION.
    watch_reads : WatchReads, optional
        The rebalance, rotation and backtest reads of ``WatchEvents``; without them a stream of those kinds
        answers FAILED_PRECONDITION.
    recompute_jobs : RecomputeJobReads, optional
        The recompute queue for ``ListRecomputeJobs``; without it the RPC answers FAILED_PRECONDITION.
    event_cache : EventMessageCache, optional
        ``GetHistory``'s cache of serialized events (``query_side.event_cache``); default one of
        ``DEFAULT_MAX_EVENTS`` entries.

    Returns
    -------
    list of str
        Full names of the services added, for reflection and health checking.
    """
    query_service_pb2_grpc.add_OptimizationQueryServiceServicer_to_server(
        OptimizationQueryServicer(
            store,
            rotation,
            notifier,
            prices,
            trading,
            exports,
            backtests,
            sectors,
            watch_reads,
            recompute_jobs=recompute_jobs,
            event_cache=event_cache,
        ),
        server,
    )
    return [SERVICE_NAME]


def interceptor() -> ErrorMappingInterceptor:
    """Return the interceptor mapping the query service's errors to ``google.rpc.Status``.

    Returns
    -------
    ErrorMappingInterceptor
        Interceptor acting on ``/stratopt.v1.OptimizationQueryService/`` methods only.
    """
    return ErrorMappingInterceptor(method_prefix=f"/{SERVICE_NAME}/")
