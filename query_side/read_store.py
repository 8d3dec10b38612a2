"""The read store: the port through which the query side reads the event store.

:class:`ReadStore` is what ``query_side.servicer.OptimizationQueryServicer`` needs: a portfolio's latest event,
its history in keyset pages (newest first by ``(timestamp, event_id)``), the runs of an analytics window with the
weights just before it, one rebalance recommendation and the rebalance events. Two backends honour it:

* ``query_side.repository.PostgresReadStore`` (asyncpg, PostgreSQL + TimescaleDB), for the server;
* :class:`InMemoryReadStore` (this module), filled by its ``add_*`` methods, for unit tests and demos.

The stored records (``StoredEvent``, ``HistoryKey``, ``AnalyticsWindow``, ``StoredRecommendation``,
``StoredRebalanceEvent``) are defined beside the PostgreSQL backend in ``query_side.repository``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from query_side.analytics import PortfolioAnalytics, RunRecord, events_frame, portfolio_analytics
from query_side.repository import (
    AnalyticsWindow,
    HistoryKey,
    KnownEvent,
    StoredEvent,
    StoredRebalanceEvent,
    StoredRecommendation,
)

_T = TypeVar("_T")


class ReadStore(Protocol):
    """Reads of the event store for the query side.

    Every method may raise ``services.errors.OperationalError`` (an ``UnavailableError``: retry the call) when
    the store cannot be reached.
    """

    async def get_latest(self, portfolio_id: str) -> StoredEvent | None:
        """The latest event of a portfolio (the greatest ``(timestamp, event_id)``), or None when it has none."""
        ...

    async def window_ends_from(self, portfolio_id: str, *, start: datetime) -> list[str]:
        """The distinct estimation-window ends (stored RFC 3339 text) of a portfolio's runs at or after ``start``."""
        ...

    async def history(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None = None,
    ) -> list[StoredEvent]:
        """A portfolio's events in ``[start, end)``, newest first by ``(timestamp, event_id)``, after a keyset.

        Parameters
        ----------
        portfolio_id : str
            Portfolio identifier.
        start, end : datetime or None
            Inclusive lower and exclusive upper bound on the event time; None = no bound.
        limit : int
            Maximum number of events returned (positive).
        after : HistoryKey, optional
            Position of the last event of the previous page; only older events are returned.

        Returns
        -------
        list of StoredEvent
            At most ``limit`` events, newest first; empty for an unknown portfolio.
        """
        ...

    async def history_page(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None,
        cached: Callable[[uuid.UUID], _T | None],
    ) -> list[StoredEvent | KnownEvent[_T]]:
        """:meth:`history`, with the rows ``cached(event_id)`` knows given back as ``KnownEvent`` (not decoded)."""
        ...

    async def analytics_window(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None
    ) -> AnalyticsWindow:
        """A portfolio's runs in ``[start, end)``, oldest first, and the weights of its last run before ``start``.

        With ``start`` None there is no previous run; both parts are empty/None for an unknown portfolio. The two
        reads see one snapshot.
        """
        ...

    async def events_after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> list[StoredEvent]:
        """A portfolio's events after a keyset position (None: from the first), oldest first, at most ``limit``."""
        ...

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        """The position of a portfolio's latest event, or None when it has none."""
        ...

    async def analytics(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None, bucket_width: timedelta
    ) -> PortfolioAnalytics:
        """Per-bucket statistics of a portfolio's runs in ``[start, end)`` (``query_side.analytics``).

        The first run of the window has its turnover against the portfolio's last run before ``start``; only the
        first run of the whole history has none. Buckets are ``bucket_width`` wide, aligned to the Unix epoch.
        """
        ...

    async def get_rebalance(self, recommendation_id: uuid.UUID) -> StoredRecommendation | None:
        """One rebalance recommendation (with the store clock's ``now``), or None when no recommendation has the id."""
        ...

    async def rebalance_events(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None = None,
    ) -> list[StoredRebalanceEvent]:
        """A portfolio's rebalance events in ``[start, end)``, newest first, after a keyset (as :meth:`history`)."""
        ...


_Keyed = TypeVar("_Keyed", StoredEvent, StoredRebalanceEvent)


def _newest_first(
    events: list[_Keyed],
    portfolio_id: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    after: HistoryKey | None,
) -> list[_Keyed]:
    """The events of a portfolio in ``[start, end)`` older than ``after``, newest first, at most ``limit``."""
    chosen = [
        e
        for e in events
        if e.portfolio_id == portfolio_id
        and (start is None or e.timestamp >= start)
        and (end is None or e.timestamp < end)
        and (after is None or e.key < after)
    ]
    chosen.sort(key=lambda e: e.key, reverse=True)
    return chosen[:limit]


class InMemoryReadStore(ReadStore):
    """:class:`ReadStore` in process memory, with the orderings of the PostgreSQL store.

    Events are added with :meth:`add_event` (which also maintains the latest-per-portfolio read model, as the
    command side's upsert does: the greatest ``(timestamp, event_id)`` wins), :meth:`add_recommendation` and
    :meth:`add_rebalance_event`.
    """

    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._latest: dict[str, StoredEvent] = {}
        self._recommendations: dict[uuid.UUID, StoredRecommendation] = {}
        self._rebalance_events: list[StoredRebalanceEvent] = []

    def add_event(self, event: StoredEvent) -> None:
        """Store a ``portfolio_optimized`` event and update the latest read model."""
        self._events.append(event)
        latest = self._latest.get(event.portfolio_id)
        if latest is None or latest.key <= event.key:
            self._latest[event.portfolio_id] = event

    def add_recommendation(self, recommendation_id: uuid.UUID, recommendation: StoredRecommendation) -> None:
        """Store (or replace) a rebalance recommendation; :meth:`get_rebalance` returns it as given."""
        self._recommendations[recommendation_id] = recommendation

    def add_rebalance_event(self, event: StoredRebalanceEvent) -> None:
        """Store a ``rebalance_events`` row."""
        self._rebalance_events.append(event)

    async def get_latest(self, portfolio_id: str) -> StoredEvent | None:
        """The latest event of a portfolio, or None."""
        return self._latest.get(portfolio_id)

    async def history(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None = None,
    ) -> list[StoredEvent]:
        """A portfolio's events in ``[start, end)``, newest first, after a keyset; see :meth:`ReadStore.history`."""
        return _newest_first(self._events, portfolio_id, start, end, limit, after)

    async def window_ends_from(self, portfolio_id: str, *, start: datetime) -> list[str]:
        """See :meth:`ReadStore.window_ends_from`."""
        ends = {
            e.metadata.get("window_end")
            for e in self._events
            if e.portfolio_id == portfolio_id and e.timestamp >= start and isinstance(e.metadata, dict)
        }
        return sorted(str(end) for end in ends if end)

    async def history_page(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None,
        cached: Callable[[uuid.UUID], _T | None],
    ) -> list[StoredEvent | KnownEvent[_T]]:
        """:meth:`history`, with the events ``cached`` knows given back as ``KnownEvent``."""
        page: list[StoredEvent | KnownEvent[_T]] = []
        for event in _newest_first(self._events, portfolio_id, start, end, limit, after):
            payload = cached(event.event_id)
            page.append(event if payload is None else KnownEvent(event.key, payload))
        return page

    async def analytics_window(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None
    ) -> AnalyticsWindow:
        """A portfolio's runs in ``[start, end)`` and the weights of its last run before ``start``."""
        events = sorted((e for e in self._events if e.portfolio_id == portfolio_id), key=lambda e: e.key)
        runs = tuple(
            RunRecord(
                timestamp=e.timestamp,
                event_id=str(e.event_id),
                weights=dict(e.weights),
                expected_return=e.expected_return,
                volatility=e.volatility,
                sharpe_ratio=e.sharpe_ratio,
            )
            for e in events
            if (start is None or e.timestamp >= start) and (end is None or e.timestamp < end)
        )
        previous = None
        if start is not None:
            before = [e for e in events if e.timestamp < start]
            previous = dict(before[-1].weights) if before else None
        return AnalyticsWindow(runs=runs, previous_weights=previous)

    async def events_after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> list[StoredEvent]:
        """A portfolio's events after a keyset position, oldest first."""
        events = sorted((e for e in self._events if e.portfolio_id == portfolio_id), key=lambda e: e.key)
        return [e for e in events if after is None or e.key > after][:limit]

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        """The position of a portfolio's latest event, or None."""
        keys = [e.key for e in self._events if e.portfolio_id == portfolio_id]
        return max(keys) if keys else None

    async def analytics(
        self, portfolio_id: str, *, start: datetime | None, end: datetime | None, bucket_width: timedelta
    ) -> PortfolioAnalytics:
        """Per-bucket statistics of the window's runs, by ``query_side.analytics.portfolio_analytics``."""
        window = await self.analytics_window(portfolio_id, start=start, end=end)
        return portfolio_analytics(
            events_frame(window.runs), bucket_width=bucket_width, previous_weights=window.previous_weights
        )

    async def get_rebalance(self, recommendation_id: uuid.UUID) -> StoredRecommendation | None:
        """The recommendation stored under ``recommendation_id``, as given, or None."""
        return self._recommendations.get(recommendation_id)

    async def rebalance_events(
        self,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
        after: HistoryKey | None = None,
    ) -> list[StoredRebalanceEvent]:
        """A portfolio's rebalance events in ``[start, end)``, newest first, after a keyset."""
        return _newest_first(self._rebalance_events, portfolio_id, start, end, limit, after)
