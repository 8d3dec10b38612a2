"""gRPC servicer of ``stratopt.v1.OptimizationQueryService`` (grpc.aio).

Each RPC validates and converts the request, awaits one repository read (plus, for analytics, the pure
computation in a worker thread) and converts the answer back. Errors are raised as
:mod:`services.errors` exceptions; the interceptor of :mod:`stratopt.rpc_errors` turns them into
``google.rpc.Status``. Handlers never call ``context.abort``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from query_side.backtests import BacktestReads, parse_backtest_id
from query_side.event_cache import EventMessageCache
from query_side.export import (
    EXPORT_BATCH_ROWS,
    ExportDataset,
    ExportReads,
    dataset_schema,
    ipc_messages,
    ipc_stream,
    record_batch,
)
from query_side.page_token import decode_page_token, encode_page_token, query_fingerprint
from query_side.read_store import ReadStore
from query_side.realised import PriceReads, holding_periods, realised_figures
from query_side.recompute_jobs import RecomputeJobReads
from query_side.records import fill_metadata, instant_nanoseconds, recommendation_from_json
from query_side.repository import (
    StoredEvent,
    StoredRebalanceEvent,
    StoredRecommendation,
)
from query_side.rotation_reads import RotationReads, StoredDecision
from query_side.sector_exposure import SectorExposureReads
from query_side.trading_stats import TradingStatistics
from query_side.watch import EventNotifier, KindSource, OptimizationSource, WatchKind, watch
from query_side.watch_reads import StoredBacktest, WatchReads
from services.errors import InvalidInputError, NotFoundError, PreconditionError
from stratopt.request_limits import check_request, echo, timestamp_in_range
from stratopt.v1 import query_service_pb2, query_service_pb2_grpc, trading_service_pb2, types_pb2

DEFAULT_PAGE_SIZE = 50
"""Events per ``GetHistory`` page when the request leaves ``page_size`` at 0."""
MAX_PAGE_SIZE = 1000
"""Largest ``GetHistory`` page; larger requested sizes are capped to it."""
DEFAULT_BUCKET_WIDTH = timedelta(days=1)
"""Analytics bucket width when the request leaves ``bucket_width`` unset."""
MIN_BUCKET_WIDTH = timedelta(seconds=1)
MAX_REALISED_RUNS = 500
"""Most runs (the latest of the range) in one GetRealisedPerformance answer."""
MAX_PERIODS_PER_YEAR = 100_000
MAX_HORIZON_DAYS = 36_500
DEFAULT_WEIGHT_HISTORY_RUNS = 1000
MAX_WEIGHT_HISTORY_RUNS = 10_000
MAX_COMPARED = 50
"""Most portfolios of one ComparePortfolios request."""
EXPORT_DATASETS: dict[int, ExportDataset] = {
    query_service_pb2.EXPORT_DATASET_OPTIMIZATION_HISTORY: ExportDataset.OPTIMIZATION_HISTORY,
    query_service_pb2.EXPORT_DATASET_WEIGHTS: ExportDataset.WEIGHTS,
    query_service_pb2.EXPORT_DATASET_REBALANCE_EVENTS: ExportDataset.REBALANCE_EVENTS,
    query_service_pb2.EXPORT_DATASET_BACKTEST_POINTS: ExportDataset.BACKTEST_POINTS,
}
"""The datasets ExportData serves, by ``stratopt.v1.ExportDataset`` value (``query_side.export``: adding one)."""
_WHOLE_RANGE = timedelta(days=3_000_000)
"""A bucket width (about 8,200 years from the epoch) that holds every event time in one bucket."""
"""Smallest accepted analytics bucket width."""

_ROTATION_DECISIONS_KEY = "rotation_decisions:"
"""Prefix of the portfolio id in ``ListRotationDecisions`` page-token fingerprints."""
_REBALANCE_EVENTS_KEY = "rebalance_events:"
"""Prefix of the portfolio id in ``ListRebalanceEvents`` page-token fingerprints (not valid for GetHistory)."""
_STATUS_PREFIX = "RECOMMENDATION_STATUS_"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

if TYPE_CHECKING:  # grpc.aio.ServicerContext is generic only in the stubs
    ServicerContext = grpc.aio.ServicerContext[Any, Any]


def _portfolio_id(value: str, *, field: str = "portfolio_id") -> str:
    """The request's ``portfolio_id`` (or ``field``), required (its NUL and length are checked by ``check_request``)."""
    if not value:
        raise InvalidInputError.for_field(field, "must not be empty")
    return value


def _bound(field: str, value: timestamp_pb2.Timestamp) -> datetime:
    """Convert a time bound to a UTC datetime, rounded up to PostgreSQL's microsecond precision.

    Rounding up keeps both comparisons exact for microsecond event times: ``t >= start`` holds for the
    rounded ``start`` exactly when it holds for the given one, and so does ``t < end``.
    """
    if not timestamp_in_range(value.seconds, value.nanos):
        raise InvalidInputError.for_field(field, "timestamp out of range (years 0001 to 9999)")
    microseconds = value.seconds * 1_000_000 + -(-value.nanos // 1000)
    try:
        return _EPOCH + timedelta(microseconds=microseconds)
    except OverflowError as exc:
        raise InvalidInputError.for_field(field, "timestamp out of range (years 0001 to 9999)") from exc


def _time_range(
    start: timestamp_pb2.Timestamp | None, end: timestamp_pb2.Timestamp | None
) -> tuple[datetime | None, datetime | None]:
    """Validate the ``[start, end)`` bounds (None when unset)."""
    start_time = None if start is None else _bound("start", start)
    end_time = None if end is None else _bound("end", end)
    if start_time is not None and end_time is not None and start_time >= end_time:
        raise InvalidInputError.for_field("end", "must be after start")
    return start_time, end_time


def _ranged_request(request: Any) -> tuple[str, datetime | None, datetime | None]:
    """``(portfolio_id, start, end)`` of a request with those three fields, every string and bound checked.

    Raises
    ------
    InvalidInputError
        Naming ``portfolio_id``, ``start`` or ``end`` (see :func:`_time_range`).
    """
    check_request(request)
    portfolio_id = _portfolio_id(request.portfolio_id)
    start, end = _time_range(
        request.start if request.HasField("start") else None,
        request.end if request.HasField("end") else None,
    )
    return portfolio_id, start, end


def _bucket_width(request: Any) -> timedelta:
    """The request's ``bucket_width`` (unset: 1 day).

    Raises
    ------
    InvalidInputError
        Out of range, or under 1 second (field ``bucket_width``).
    """
    try:
        width = request.bucket_width.ToTimedelta() if request.HasField("bucket_width") else DEFAULT_BUCKET_WIDTH
    except OverflowError as exc:
        raise InvalidInputError.for_field("bucket_width", "duration out of range") from exc
    if width < MIN_BUCKET_WIDTH:
        raise InvalidInputError.for_field("bucket_width", "must be at least 1 second")
    return width


def _window_end(event: StoredEvent) -> datetime | None:
    """The end of a run's estimation window from its stored metadata (None: a run on the caller's moments)."""
    text = event.metadata.get("window_end") if isinstance(event.metadata, dict) else None
    if not text:
        return None
    return _EPOCH + timedelta(microseconds=instant_nanoseconds(str(text)) // 1000)


def _plus(moment: datetime | None, span: timedelta) -> datetime | None:
    """``moment + span``, or None (no end: the latest close) past year 9999."""
    if moment is None:
        return None
    try:
        return moment + span
    except OverflowError:
        return None


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(moment)
    return message


def _objective(name: str) -> types_pb2.Objective.ValueType:
    """Enum value of a stored objective name; UNSPECIFIED for a name this build does not know."""
    try:
        return types_pb2.Objective.Value(name)
    except ValueError:
        return types_pb2.OBJECTIVE_UNSPECIFIED


def _method(name: str) -> types_pb2.OptimizationMethod.ValueType:
    """Enum value of a stored method name; UNSPECIFIED for a name this build does not know."""
    try:
        return types_pb2.OptimizationMethod.Value(name)
    except ValueError:
        return types_pb2.OPTIMIZATION_METHOD_UNSPECIFIED


def event_message(event: StoredEvent) -> types_pb2.PortfolioOptimizedEvent:
    """Convert a stored event to its ``stratopt.v1.PortfolioOptimizedEvent`` message.

    Parameters
    ----------
    event : StoredEvent
        The event as read from the database.

    Returns
    -------
    stratopt.v1.PortfolioOptimizedEvent
        The message; a missing ``request_id`` becomes ``""``; the metadata is read by
        ``query_side.records.fill_metadata`` (unknown keys are dropped).
    """
    message = types_pb2.PortfolioOptimizedEvent(
        event_id=str(event.event_id),
        timestamp=_timestamp(event.timestamp),
        portfolio_id=event.portfolio_id,
        weights=event.weights,
        expected_return=event.expected_return,
        volatility=event.volatility,
        sharpe_ratio=event.sharpe_ratio,
        configuration_version=event.configuration_version,
        request_id=event.request_id or "",
        objective=_objective(event.objective),
        method=_method(event.method),
    )
    fill_metadata(event.metadata, message.metadata)
    return message


def _recommendation_status(name: str) -> trading_service_pb2.RecommendationStatus.ValueType:
    """Enum value of a stored status name; UNSPECIFIED for a name this build does not know."""
    try:
        return trading_service_pb2.RecommendationStatus.Value(_STATUS_PREFIX + name)
    except ValueError:
        return trading_service_pb2.RECOMMENDATION_STATUS_UNSPECIFIED


def recommendation_message(stored: StoredRecommendation) -> trading_service_pb2.RebalanceRecommendation:
    """The recommendation as created, with its status and decision fields as of the read.

    A PENDING_APPROVAL recommendation at or past ``expires_at`` reads as EXPIRED with ``decided_at`` =
    ``expires_at`` (the command side persists that transition when it next touches the portfolio).
    """
    message = recommendation_from_json(stored.recommendation)
    message.status = _recommendation_status(stored.effective_status)
    if stored.decided_by:
        message.decided_by = stored.decided_by
    decided_at = stored.effective_decided_at
    if decided_at is not None:
        message.decided_at.CopyFrom(_timestamp(decided_at))
    if stored.reason:
        message.reason = stored.reason
    return message


def rebalance_event_message(event: StoredRebalanceEvent) -> trading_service_pb2.RebalanceEvent:
    """Convert a stored rebalance event to its ``stratopt.v1.RebalanceEvent`` message."""
    return trading_service_pb2.RebalanceEvent(
        event_id=str(event.event_id),
        timestamp=_timestamp(event.timestamp),
        portfolio_id=event.portfolio_id,
        recommendation_id="" if event.recommendation_id is None else str(event.recommendation_id),
        event_type=event.event_type,
        status=_recommendation_status(event.status),
        actor=event.actor,
        total_trade_value=event.total_trade_value,
    )


_WATCH_KINDS: dict[int, WatchKind] = {
    query_service_pb2.WATCH_EVENT_KIND_OPTIMIZATION: WatchKind.OPTIMIZATION,
    query_service_pb2.WATCH_EVENT_KIND_REBALANCE: WatchKind.REBALANCE,
    query_service_pb2.WATCH_EVENT_KIND_ROTATION: WatchKind.ROTATION,
    query_service_pb2.WATCH_EVENT_KIND_BACKTEST: WatchKind.BACKTEST,
}


def _watch_kinds(kinds: Sequence[int]) -> list[WatchKind]:
    """The kinds of a WatchEvents request (none: optimization only).

    Raises
    ------
    InvalidInputError
        Naming ``kinds[i]``: unspecified, unknown or given twice.
    """
    if not kinds:
        return [WatchKind.OPTIMIZATION]
    chosen: list[WatchKind] = []
    for i, value in enumerate(kinds):
        kind = _WATCH_KINDS.get(value)
        if kind is None:
            raise InvalidInputError.for_field(f"kinds[{i}]", f"is not a watchable event kind ({value})")
        if kind in chosen:
            raise InvalidInputError.for_field(f"kinds[{i}]", f"{kind.value} appears twice")
        chosen.append(kind)
    return chosen


def _watch_message(kind: WatchKind, event: object, token: str) -> query_service_pb2.WatchEventsResponse:
    """The WatchEvents message of an event of ``kind``."""
    if kind is WatchKind.OPTIMIZATION:
        assert isinstance(event, StoredEvent)
        return query_service_pb2.WatchEventsResponse(event=event_message(event), resume_token=token)
    if kind is WatchKind.REBALANCE:
        assert isinstance(event, StoredRebalanceEvent)
        return query_service_pb2.WatchEventsResponse(rebalance_event=rebalance_event_message(event), resume_token=token)
    if kind is WatchKind.ROTATION:
        assert isinstance(event, StoredDecision)
        return query_service_pb2.WatchEventsResponse(rotation_decision=event.decision, resume_token=token)
    assert isinstance(event, StoredBacktest)
    return query_service_pb2.WatchEventsResponse(backtest=event.summary, resume_token=token)


class OptimizationQueryServicer(query_service_pb2_grpc.OptimizationQueryServiceServicer):
    """Read-only queries over the stored ``portfolio_optimized`` events and rebalance recommendations.

    Parameters
    ----------
    repository : ReadStore
        The read store (``query_side.repository.PostgresReadStore`` in the server).
    rotation, notifier, prices, trading, exports, backtests, sectors, watch_reads : optional
        The PostgreSQL readers of the RPCs beyond the read store (``query_side.register``); without one, its RPCs
        answer NOT_FOUND (rotation) or FAILED_PRECONDITION (the others).
    export_batch_rows : int
        Most rows of one ExportData message (a request's ``max_batch_rows`` may lower it).
    event_cache : EventMessageCache, optional
        The serialized events ``GetHistory`` serves again without decoding their rows (``query_side.event_cache``);
        default: one of ``DEFAULT_MAX_EVENTS`` entries.
    """

    def __init__(
        self,
        repository: ReadStore,
        rotation: RotationReads | None = None,
        notifier: EventNotifier | None = None,
        prices: PriceReads | None = None,
        trading: TradingStatistics | None = None,
        exports: ExportReads | None = None,
        backtests: BacktestReads | None = None,
        sectors: SectorExposureReads | None = None,
        watch_reads: WatchReads | None = None,
        *,
        recompute_jobs: RecomputeJobReads | None = None,
        export_batch_rows: int = EXPORT_BATCH_ROWS,
        event_cache: EventMessageCache | None = None,
    ) -> None:
        self._event_cache = EventMessageCache() if event_cache is None else event_cache
        self._recompute_jobs = recompute_jobs
        self._backtests = backtests
        self._sectors = sectors
        self._watch_reads = watch_reads
        self._repository = repository
        self._rotation = rotation
        self._notifier = notifier
        self._prices = prices
        self._trading = trading
        self._exports = exports
        self._export_batch_rows = export_batch_rows

    def _rotation_reads(self) -> RotationReads:
        if self._rotation is None:  # a server without the rotation tables' reader (in-memory tests)
            raise NotFoundError("rotation decisions are not served by this query service")
        return self._rotation

    async def GetLatest(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetLatestRequest, context: ServicerContext
    ) -> query_service_pb2.GetLatestResponse:
        """Return the latest event of a portfolio, from the ``latest_portfolio_optimizations`` read model.

        Parameters
        ----------
        request : stratopt.v1.GetLatestRequest
            The portfolio.
        context : grpc.aio.ServicerContext
            Call context (unused).

        Returns
        -------
        stratopt.v1.GetLatestResponse
            The event.

        Raises
        ------
        InvalidInputError
            When ``portfolio_id`` is empty, holds a NUL or is over 128 characters.
        NotFoundError
            When the portfolio has no events.
        UnavailableError
            When the database cannot be reached.
        """
        check_request(request)
        portfolio_id = _portfolio_id(request.portfolio_id)
        event = await self._repository.get_latest(portfolio_id)
        if event is None:
            raise NotFoundError(f"portfolio {echo(portfolio_id)} has no optimization events")
        return query_service_pb2.GetLatestResponse(event=event_message(event))

    async def GetHistory(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetHistoryRequest, context: ServicerContext
    ) -> query_service_pb2.GetHistoryResponse:
        """Return one page of a portfolio's events in ``[start, end)``, newest first.

        Events are ordered by ``(timestamp, event_id)`` descending and paginated by keyset: the page token
        names the last event returned (see :mod:`query_side.page_token`). A portfolio without events, known
        or not, gives an empty page with no token, not NOT_FOUND: the history is a filter over the event
        store, and an empty result is its honest answer.

        Parameters
        ----------
        request : stratopt.v1.GetHistoryRequest
            Portfolio, optional bounds, page size (0 = 50, capped at 1000) and page token.
        context : grpc.aio.ServicerContext
            Call context (unused).

        Returns
        -------
        stratopt.v1.GetHistoryResponse
            The events and the token of the next page (empty on the last page).

        Raises
        ------
        InvalidInputError
            When ``portfolio_id`` is empty or not a valid id (NUL, over 128 characters), a
            bound is out of range, ``start >= end`` (field ``end``), or the
            page token is malformed or from a request with another portfolio or range (field ``page_token``).
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        fingerprint = query_fingerprint(portfolio_id, start, end)
        after = decode_page_token(request.page_token, fingerprint) if request.page_token else None
        cache = self._event_cache
        rows = await self._repository.history_page(
            portfolio_id, start=start, end=end, limit=page_size + 1, after=after, cached=cache.get
        )
        page = rows[:page_size]
        next_page_token = encode_page_token(page[-1].key, fingerprint) if len(rows) > page_size else ""
        response = query_service_pb2.GetHistoryResponse(next_page_token=next_page_token)
        events = response.events
        for index, row in enumerate(rows):  # the row past the page too: it was decoded, and opens the next page
            if isinstance(row, StoredEvent):
                message = event_message(row)
                cache.put(row.event_id, message.SerializeToString())
                if index < page_size:
                    events.append(message)
            elif index < page_size:  # a stored event never changes: its message, built once, is served as it is
                events.add().MergeFromString(row.payload)
        return response

    async def WatchEvents(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.WatchEventsRequest, context: ServicerContext
    ) -> AsyncIterator[query_service_pb2.WatchEventsResponse]:
        """Stream the events of the chosen kinds of the portfolios as they are stored (``query_side.watch``).

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_ids`` (1 to 100, unique, valid ids), ``kinds[i]`` (unspecified, unknown or repeated)
            or ``resume_token``.
        PreconditionError
            The server has no live event source (an in-memory read store).
        ResourceExhaustedError
            The subscriber was more than ``query_side.watch.MAX_CATCH_UP`` events behind (after sending them).
        UnavailableError
            The database or the notifications were lost; resume with the last token.
        """
        check_request(request)
        portfolios = [_portfolio_id(p, field=f"portfolio_ids[{i}]") for i, p in enumerate(request.portfolio_ids)]
        sources = self._watch_sources(_watch_kinds(request.kinds))
        async for kind, event, token in watch(
            sources,
            self._notifier,
            portfolios,
            request.resume_token,
            from_beginning=request.from_beginning,
        ):
            yield _watch_message(kind, event, token)

    def _watch_sources(self, kinds: list[WatchKind]) -> dict[WatchKind, KindSource]:
        sources: dict[WatchKind, KindSource] = {}
        for kind in kinds:
            if kind is WatchKind.OPTIMIZATION:
                sources[kind] = OptimizationSource(self._repository)
            elif self._watch_reads is None:
                raise PreconditionError(f"live {kind.value} events need the PostgreSQL event store")
            else:
                sources[kind] = self._watch_reads.source(kind)
        return sources

    async def GetRealisedPerformance(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetRealisedPerformanceRequest, context: ServicerContext
    ) -> query_service_pb2.GetRealisedPerformanceResponse:
        """Ex-ante against realised figures of a portfolio's latest runs in ``[start, end)`` (``query_side.realised``).

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_id``, bounds, ``risk_free_rate`` (finite, |r| ≤ 1) or ``periods_per_year`` (≤ 100,000).
        PreconditionError
            The server has no stored prices (an in-memory read store).
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        if not (math.isfinite(request.risk_free_rate) and abs(request.risk_free_rate) <= 1.0):
            raise InvalidInputError.for_field("risk_free_rate", "must be finite and within [-1, 1]")
        if request.periods_per_year > MAX_PERIODS_PER_YEAR:
            raise InvalidInputError.for_field("periods_per_year", f"at most {MAX_PERIODS_PER_YEAR}")
        if request.horizon_days > MAX_HORIZON_DAYS:
            raise InvalidInputError.for_field("horizon_days", f"at most {MAX_HORIZON_DAYS} (100 years)")
        if self._prices is None:
            raise PreconditionError("realised figures need the stored prices of the PostgreSQL store")
        periods_per_year = request.periods_per_year or 252
        newest = await self._repository.history(portfolio_id, start=start, end=end, limit=MAX_REALISED_RUNS)
        runs = newest[::-1]
        window_ends = [_window_end(run) for run in runs]
        horizon = timedelta(days=request.horizon_days) if request.horizon_days else None
        later: list[datetime] = []
        if horizon is None and end is not None:  # runs after the range still end the periods of its last runs
            texts = await self._repository.window_ends_from(portfolio_id, start=end)
            later = [_EPOCH + timedelta(microseconds=instant_nanoseconds(t) // 1000) for t in texts]
        periods = holding_periods(
            window_ends, None if horizon is None else [_plus(w, horizon) for w in window_ends], later
        )
        held = [
            sorted(s for s, w in run.weights.items() if w != 0.0) if period else []
            for run, period in zip(runs, periods, strict=True)
        ]
        symbols = sorted({s for names in held for s in names})
        starts = [p[0] for p in periods if p is not None]
        times: list[datetime] = []
        closes = np.zeros((0, len(symbols)))
        if symbols and starts:
            ends = [p[1] for p in periods if p is not None]
            last = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
            times, closes = await self._prices.closes(symbols, min(starts), last)
        column = {s: j for j, s in enumerate(symbols)}
        stamps = np.array(times, dtype=object)
        response = query_service_pb2.GetRealisedPerformanceResponse()
        for run, period, names in zip(runs, periods, held, strict=True):
            message = response.runs.add(
                event_id=str(run.event_id),
                timestamp=_timestamp(run.timestamp),
                expected_return=run.expected_return,
                expected_volatility=run.volatility,
                expected_sharpe_ratio=run.sharpe_ratio,
            )
            if period is None:
                continue
            message.window_end.CopyFrom(_timestamp(period[0]))
            rows = [k for k, t in enumerate(stamps) if t >= period[0] and (period[1] is None or t <= period[1])]
            # The run's own dates: those where every name it holds has a close. The closes are read for every
            # run's names at once, so a date only another run's names trade on (a weekend of a 7-day market,
            # another exchange's holiday) is a gap here, not a break that would drop the returns around it.
            prices = closes[np.ix_(rows, [column[s] for s in names])]
            complete = np.all(np.isfinite(prices), axis=1)
            rows, prices = [k for k, ok in zip(rows, complete, strict=True) if ok], prices[complete]
            if not rows:
                continue
            message.period_end.CopyFrom(_timestamp(times[rows[-1]]))
            figures = realised_figures(
                prices[1:] / prices[:-1] - 1.0,
                np.array([run.weights[s] for s in names]),
                risk_free_rate=request.risk_free_rate,
                periods_per_year=periods_per_year,
            )
            if figures is None:
                continue
            message.observations = figures.observations
            message.total_return = figures.total_return
            message.annualised_return = figures.annualised_return
            message.volatility = figures.volatility
            message.max_drawdown = figures.max_drawdown
            for name in ("sharpe_ratio", "sortino_ratio", "calmar_ratio"):
                value = getattr(figures, name)
                if value is not None:
                    setattr(message, name, value)
        return response

    async def GetWeightHistory(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetWeightHistoryRequest, context: ServicerContext
    ) -> query_service_pb2.GetWeightHistoryResponse:
        """The weights of a portfolio's latest runs in ``[start, end)`` as a table, with one-way turnover.

        Reads at most ``max_runs + 1`` events (the runs and the one before the oldest, for its turnover).

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_id``, bounds or ``max_runs`` (at most 10,000).
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        if request.max_runs > MAX_WEIGHT_HISTORY_RUNS:
            raise InvalidInputError.for_field("max_runs", f"at most {MAX_WEIGHT_HISTORY_RUNS}")
        limit = request.max_runs or DEFAULT_WEIGHT_HISTORY_RUNS
        newest = await self._repository.history(portfolio_id, start=start, end=end, limit=limit + 1)
        truncated = len(newest) > limit
        runs = newest[:limit][::-1]
        before = None
        if runs:
            previous = await self._repository.history(portfolio_id, start=None, end=None, limit=1, after=runs[0].key)
            before = dict(previous[0].weights) if previous else None
        symbols = sorted({s for run in runs for s, w in run.weights.items() if w != 0.0})
        response = query_service_pb2.GetWeightHistoryResponse(symbols=symbols, truncated=truncated)
        for run in runs:
            weights = dict(run.weights)
            row = response.runs.add(
                event_id=str(run.event_id),
                timestamp=_timestamp(run.timestamp),
                weights=[weights.get(s, 0.0) for s in symbols],
            )
            if before is not None:
                names = set(weights) | set(before)
                row.turnover = 0.5 * math.fsum(abs(weights.get(s, 0.0) - before.get(s, 0.0)) for s in names)
            before = weights
        return response

    async def GetSectorExposure(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetSectorExposureRequest, context: ServicerContext
    ) -> query_service_pb2.GetSectorExposureResponse:
        """Each of the latest runs' weights summed by sector (``query_side.sector_exposure``).

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_id``, bounds or ``max_runs`` (at most 10,000).
        PreconditionError
            The server has no PostgreSQL store.
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        if request.max_runs > MAX_WEIGHT_HISTORY_RUNS:
            raise InvalidInputError.for_field("max_runs", f"at most {MAX_WEIGHT_HISTORY_RUNS}")
        if self._sectors is None:
            raise PreconditionError("sector exposure needs the PostgreSQL store")
        runs, truncated = await self._sectors.runs(
            portfolio_id, start=start, end=end, limit=request.max_runs or DEFAULT_WEIGHT_HISTORY_RUNS
        )
        sectors = sorted({sector for run in runs for sector in run.net})
        response = query_service_pb2.GetSectorExposureResponse(sectors=sectors, truncated=truncated)
        for run in runs:
            response.runs.add(
                event_id=run.event_id,
                timestamp=_timestamp(run.timestamp),
                net=[run.net.get(s, 0.0) for s in sectors],
                gross=[run.gross.get(s, 0.0) for s in sectors],
            )
        return response

    async def ComparePortfolios(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.ComparePortfoliosRequest, context: ServicerContext
    ) -> query_service_pb2.ComparePortfoliosResponse:
        """Several portfolios side by side over ``[start, end)`` (the proto's comment).

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_ids`` (1 to 50, unique, valid ids) or bounds.
        UnavailableError
            When the database cannot be reached.
        """
        check_request(request)
        if not 1 <= len(request.portfolio_ids) <= MAX_COMPARED:
            raise InvalidInputError.for_field("portfolio_ids", f"needs 1 to {MAX_COMPARED} portfolios")
        portfolios = []
        for i, raw in enumerate(request.portfolio_ids):
            portfolio_id = _portfolio_id(raw, field=f"portfolio_ids[{i}]")
            if portfolio_id in portfolios:
                raise InvalidInputError.for_field(f"portfolio_ids[{i}]", f"{portfolio_id!r} appears twice")
            portfolios.append(portfolio_id)
        start, end = _time_range(
            request.start if request.HasField("start") else None,
            request.end if request.HasField("end") else None,
        )
        response = query_service_pb2.ComparePortfoliosResponse()
        for portfolio_id in portfolios:
            # One bucket wider than any range of event times: the aggregate of the whole range.
            whole = await self._repository.analytics(portfolio_id, start=start, end=end, bucket_width=_WHOLE_RANGE)
            column = response.portfolios.add(portfolio_id=portfolio_id, run_count=whole.total_runs)
            if not whole.buckets:
                continue
            (bucket,) = whole.buckets
            column.mean_expected_return = bucket.mean_expected_return
            column.mean_volatility = bucket.mean_volatility
            column.mean_sharpe_ratio = bucket.mean_sharpe_ratio
            if bucket.mean_turnover is not None and bucket.max_turnover is not None:
                column.mean_turnover, column.max_turnover = bucket.mean_turnover, bucket.max_turnover
            (latest,) = await self._repository.history(portfolio_id, start=start, end=end, limit=1)
            column.latest.CopyFrom(event_message(latest))
        return response

    async def GetRebalanceStatistics(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetRebalanceStatisticsRequest, context: ServicerContext
    ) -> query_service_pb2.GetRebalanceStatisticsResponse:
        """Rebalance and cost statistics per bucket (``query_side.trading_stats``).

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_id``, bounds or ``bucket_width`` (at least 1 second).
        PreconditionError
            The server has no PostgreSQL store.
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        bucket_width = _bucket_width(request)
        if self._trading is None:
            raise PreconditionError("rebalance statistics need the PostgreSQL store")
        buckets = await self._trading.rebalance_buckets(portfolio_id, start=start, end=end, bucket_width=bucket_width)
        response = query_service_pb2.GetRebalanceStatisticsResponse()
        for b in buckets:
            row = response.buckets.add(
                bucket_start=_timestamp(b.bucket_start), created=b.created, approved=b.approved,
                rejected=b.rejected, expired=b.expired, approved_trade_value=b.approved_trade_value,
                approved_cost=b.approved_cost,
            )  # fmt: skip
            if b.cost_bps is not None:
                row.cost_bps = b.cost_bps
        return response

    async def ExportData(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.ExportDataRequest, context: ServicerContext
    ) -> AsyncIterator[query_service_pb2.ExportDataResponse]:
        """Stream one dataset of a portfolio in ``[start, end)`` as Arrow record batches (``query_side.export``).

        Every message is a self-contained Arrow IPC stream of one batch: at most ``max_batch_rows`` rows (0: the
        servicer's ``export_batch_rows``, 10,000) and about 4 MiB, oldest row first. The database is read one page
        per batch (keyset pagination); an empty range gives one message with no rows and the dataset's schema.

        Parameters
        ----------
        request : stratopt.v1.ExportDataRequest
            Portfolio, dataset, optional bounds, rows per message.
        context : grpc.aio.ServicerContext
            Call context (unused).

        Yields
        ------
        stratopt.v1.ExportDataResponse
            The batches, oldest rows first.

        Raises
        ------
        InvalidInputError
            Bad ``portfolio_id`` (empty, NUL, over 128 characters), ``dataset`` (unset or unknown), bounds (out of
            range, or ``start >= end``: field ``end``) or ``max_batch_rows`` (over 10,000).
        NotFoundError
            When the portfolio has no row at all in the dataset's table.
        PreconditionError
            The server has no PostgreSQL store.
        UnavailableError
            When the database cannot be reached (also after some batches were sent).
        """
        portfolio_id, start, end = _ranged_request(request)
        dataset = EXPORT_DATASETS.get(request.dataset)
        if dataset is None:
            what = "must be set" if request.dataset == 0 else f"unknown dataset {request.dataset}"
            raise InvalidInputError.for_field("dataset", what)
        if request.max_batch_rows > EXPORT_BATCH_ROWS:
            raise InvalidInputError.for_field("max_batch_rows", f"at most {EXPORT_BATCH_ROWS}")
        if self._exports is None:
            raise PreconditionError("exports need the PostgreSQL store")
        batch_rows = min(request.max_batch_rows or self._export_batch_rows, self._export_batch_rows)
        sent = False
        async for batch in self._exports.batches(dataset, portfolio_id, start=start, end=end, batch_rows=batch_rows):
            for data, rows in ipc_messages(batch):
                yield query_service_pb2.ExportDataResponse(arrow_ipc_stream=data, row_count=rows)
                sent = True
        if not sent:
            if not await self._exports.has_rows(dataset, portfolio_id):
                raise NotFoundError(f"portfolio {echo(portfolio_id)} has no {dataset.name.lower()} rows")
            empty = ipc_stream(record_batch(dataset_schema(dataset), []))
            yield query_service_pb2.ExportDataResponse(arrow_ipc_stream=empty, row_count=0)

    def _backtest_reads(self) -> BacktestReads:
        if self._backtests is None:
            raise PreconditionError("backtests need the PostgreSQL store")
        return self._backtests

    async def GetBacktest(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetBacktestRequest, context: ServicerContext
    ) -> query_service_pb2.GetBacktestResponse:
        """A stored backtest with its path (``query_side.backtests``).

        Raises
        ------
        InvalidInputError
            ``backtest_id`` empty or not a UUID.
        NotFoundError
            No such backtest.
        PreconditionError
            The server has no PostgreSQL store.
        """
        check_request(request)
        backtest_id = parse_backtest_id(request.backtest_id)
        return await self._backtest_reads().get(backtest_id)

    async def ListBacktests(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.ListBacktestsRequest, context: ServicerContext
    ) -> query_service_pb2.ListBacktestsResponse:
        """A portfolio's stored backtests, newest first (summaries).

        Raises
        ------
        InvalidInputError
            Empty ``portfolio_id``; a bad ``page_token``.
        PreconditionError
            The server has no PostgreSQL store.
        """
        check_request(request)
        if not request.portfolio_id:
            raise InvalidInputError.for_field("portfolio_id", "must not be empty")
        summaries, token = await self._backtest_reads().list(
            request.portfolio_id, request.page_size, request.page_token
        )
        return query_service_pb2.ListBacktestsResponse(backtests=summaries, next_page_token=token)

    async def ListRecomputeJobs(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.ListRecomputeJobsRequest, context: ServicerContext
    ) -> query_service_pb2.ListRecomputeJobsResponse:
        """The recompute queue, newest first: one portfolio's or all, one status or all (``query_side.recompute_jobs``).

        Raises
        ------
        InvalidInputError
            An unknown ``status``; a bad ``page_token``.
        PreconditionError
            The server has no PostgreSQL store.
        """
        check_request(request)
        if request.status not in query_service_pb2.RecomputeJobStatus.values():
            raise InvalidInputError.for_field("status", f"unknown status {request.status}")
        if self._recompute_jobs is None:
            raise PreconditionError("recompute jobs need the PostgreSQL store")
        jobs, token = await self._recompute_jobs.list(
            request.portfolio_id, request.status, request.page_size, request.page_token
        )
        return query_service_pb2.ListRecomputeJobsResponse(jobs=jobs, next_page_token=token)

    async def GetPortfolioAnalytics(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetPortfolioAnalyticsRequest, context: ServicerContext
    ) -> query_service_pb2.GetPortfolioAnalyticsResponse:
        """Return per-bucket statistics of a portfolio's runs in ``[start, end)``.

        The first run of the range gets its turnover against the portfolio's last run before ``start``; only
        the first run of the whole history has none (see :mod:`query_side.analytics`). A bucket none of whose
        runs has a turnover reports ``mean_turnover`` and ``max_turnover`` as 0. An unknown portfolio gives no
        buckets and ``total_runs`` 0.

        Parameters
        ----------
        request : stratopt.v1.GetPortfolioAnalyticsRequest
            Portfolio, optional bounds and bucket width (unset = 1 day, at least 1 second).
        context : grpc.aio.ServicerContext
            Call context (unused).

        Returns
        -------
        stratopt.v1.GetPortfolioAnalyticsResponse
            Buckets with at least one run, oldest first, and the total run count.

        Raises
        ------
        InvalidInputError
            When ``portfolio_id`` is empty or not a valid id (NUL, over 128 characters), a
            bound is out of range, ``start >= end`` (field ``end``) or the
            bucket width is under 1 second (field ``bucket_width``).
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        bucket_width = _bucket_width(request)
        analytics = await self._repository.analytics(portfolio_id, start=start, end=end, bucket_width=bucket_width)
        return query_service_pb2.GetPortfolioAnalyticsResponse(
            buckets=[
                query_service_pb2.AnalyticsBucket(
                    bucket_start=_timestamp(bucket.bucket_start),
                    run_count=bucket.run_count,
                    mean_sharpe_ratio=bucket.mean_sharpe_ratio,
                    mean_volatility=bucket.mean_volatility,
                    mean_expected_return=bucket.mean_expected_return,
                    mean_turnover=bucket.mean_turnover or 0.0,
                    max_turnover=bucket.max_turnover or 0.0,
                )
                for bucket in analytics.buckets
            ],
            total_runs=analytics.total_runs,
        )

    async def GetRebalance(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetRebalanceRequest, context: ServicerContext
    ) -> query_service_pb2.GetRebalanceResponse:
        """Return one rebalance recommendation with its current status and decision fields.

        A PENDING_APPROVAL recommendation at or past its ``expires_at`` (database clock) reads as EXPIRED, with
        ``decided_at`` = ``expires_at``, whether or not the command side has persisted the expiry yet.

        Parameters
        ----------
        request : stratopt.v1.GetRebalanceRequest
            The recommendation id.
        context : grpc.aio.ServicerContext
            Call context (unused).

        Returns
        -------
        stratopt.v1.GetRebalanceResponse
            The recommendation.

        Raises
        ------
        InvalidInputError
            When ``recommendation_id`` is not a UUID (or holds a NUL, or is over 128 characters).
        NotFoundError
            When no recommendation has the id.
        UnavailableError
            When the database cannot be reached.
        """
        check_request(request)
        try:
            recommendation_id = uuid.UUID(request.recommendation_id)
        except ValueError:
            raise InvalidInputError.for_field(
                "recommendation_id", f"{echo(request.recommendation_id)} is not a UUID"
            ) from None
        stored = await self._repository.get_rebalance(recommendation_id)
        if stored is None:
            raise NotFoundError(f"no rebalance recommendation '{recommendation_id}'")
        return query_service_pb2.GetRebalanceResponse(recommendation=recommendation_message(stored))

    async def ListRebalanceEvents(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.ListRebalanceEventsRequest, context: ServicerContext
    ) -> query_service_pb2.ListRebalanceEventsResponse:
        """Return one page of a portfolio's rebalance events in ``[start, end)``, newest first.

        Ordered by ``(timestamp, event_id)`` descending with keyset pagination, as :meth:`GetHistory` (the
        tokens are bound to this RPC, the portfolio and the range). An unknown portfolio gives an empty page.
        EXPIRED events appear once the command side has persisted the expiry (dated at ``expires_at``).

        Parameters
        ----------
        request : stratopt.v1.ListRebalanceEventsRequest
            Portfolio, optional bounds, page size (0 = 50, capped at 1000) and page token.
        context : grpc.aio.ServicerContext
            Call context (unused).

        Returns
        -------
        stratopt.v1.ListRebalanceEventsResponse
            The events and the token of the next page (empty on the last page).

        Raises
        ------
        InvalidInputError
            When ``portfolio_id`` is empty or not a valid id (NUL, over 128 characters), a
            bound is out of range, ``start >= end`` (field ``end``), or the
            page token is malformed or from another request (field ``page_token``).
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        fingerprint = query_fingerprint(_REBALANCE_EVENTS_KEY + portfolio_id, start, end)
        after = decode_page_token(request.page_token, fingerprint) if request.page_token else None
        events = await self._repository.rebalance_events(
            portfolio_id, start=start, end=end, limit=page_size + 1, after=after
        )
        page = events[:page_size]
        next_page_token = encode_page_token(page[-1].key, fingerprint) if len(events) > page_size else ""
        return query_service_pb2.ListRebalanceEventsResponse(
            events=[rebalance_event_message(event) for event in page], next_page_token=next_page_token
        )

    async def GetLatestRotationDecision(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.GetLatestRotationDecisionRequest, context: ServicerContext
    ) -> query_service_pb2.GetLatestRotationDecisionResponse:
        """Return the latest rotation decision of a portfolio.

        Raises
        ------
        InvalidInputError
            When ``portfolio_id`` is empty or not a valid id.
        NotFoundError
            When the portfolio has no rotation decision.
        UnavailableError
            When the database cannot be reached.
        """
        check_request(request)
        portfolio_id = _portfolio_id(request.portfolio_id)
        decision = await self._rotation_reads().latest(portfolio_id)
        if decision is None:
            raise NotFoundError(f"no rotation decision for portfolio {echo(portfolio_id)}")
        return query_service_pb2.GetLatestRotationDecisionResponse(decision=decision)

    async def ListRotationDecisions(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.ListRotationDecisionsRequest, context: ServicerContext
    ) -> query_service_pb2.ListRotationDecisionsResponse:
        """Return one page of a portfolio's rotation decisions in ``[start, end)``, newest first.

        Keyset pagination as :meth:`GetHistory` (tokens bound to this RPC, the portfolio and the range); an
        unknown portfolio gives an empty page.

        Raises
        ------
        InvalidInputError
            Invalid ``portfolio_id``, bounds out of range or ``start >= end``, a malformed or foreign page token.
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        fingerprint = query_fingerprint(_ROTATION_DECISIONS_KEY + portfolio_id, start, end)
        after = decode_page_token(request.page_token, fingerprint) if request.page_token else None
        rows = await self._rotation_reads().history(
            portfolio_id, start=start, end=end, limit=page_size + 1, after=after
        )
        page = rows[:page_size]
        next_page_token = encode_page_token(page[-1].key, fingerprint) if len(rows) > page_size else ""
        return query_service_pb2.ListRotationDecisionsResponse(
            decisions=[row.decision for row in page], next_page_token=next_page_token
        )

    async def CountRotationReasons(  # noqa: N802 (gRPC method name)
        self, request: query_service_pb2.CountRotationReasonsRequest, context: ServicerContext
    ) -> query_service_pb2.CountRotationReasonsResponse:
        """Per time bucket: decisions, TRADE and HOLD counts, changes by reason code, HOLDs by policy reason.

        Raises
        ------
        InvalidInputError
            Invalid ``portfolio_id``, bounds, or a bucket width under 1 second (field ``bucket_width``).
        UnavailableError
            When the database cannot be reached.
        """
        portfolio_id, start, end = _ranged_request(request)
        try:
            width = request.bucket_width.ToTimedelta() if request.HasField("bucket_width") else DEFAULT_BUCKET_WIDTH
        except OverflowError as exc:
            raise InvalidInputError.for_field("bucket_width", "duration out of range") from exc
        if width < MIN_BUCKET_WIDTH:
            raise InvalidInputError.for_field("bucket_width", "must be at least 1 second")
        buckets = await self._rotation_reads().reason_counts(portfolio_id, start=start, end=end, width=width)
        return query_service_pb2.CountRotationReasonsResponse(
            buckets=[
                query_service_pb2.RotationReasonBucket(
                    bucket_start=_timestamp(b.start),
                    decisions=b.decisions,
                    trades=b.trades,
                    holds=b.holds,
                    reasons=b.reasons,
                    hold_reasons=b.hold_reasons,
                )
                for b in buckets
            ]
        )
