"""The allocation cache: the port through which AllocateShares keeps answers and records allocations.

:class:`AllocationCache` holds AllocateShares results keyed by the hash of their normalised input
(``services.trading.allocation_cache_key``), each with the normalised problem and the
allocation as first returned (``trading_records.ALLOCATION``; ``cached`` and ``expires_at`` come from the entry),
until its expiry;
an entry at or past ``expires_at`` is a miss. An allocation made for a portfolio is recorded as a
``SHARES_ALLOCATED`` event (in the same transaction as its cache entry). Two backends honour it:

* ``command_side.allocations_repository.PostgresAllocationCache`` (asyncpg; table ``share_allocations``, events
  in the ``rebalance_events`` hypertable; the database clock);
* :class:`InMemoryAllocationCache` (this module; an injectable clock), for unit tests and demos.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from command_side import trading_records
from command_side.trading_model import Allocation
from services.trading import AllocationRequest

EVENT_TYPE: Final = "SHARES_ALLOCATED"
"""``rebalance_events.event_type`` of a recorded allocation."""
EVENT_STATUS: Final = "UNSPECIFIED"
"""``rebalance_events.status`` of a recorded allocation: it has no recommendation, so no recommendation status
(``RecommendationStatus`` ``RECOMMENDATION_STATUS_UNSPECIFIED``)."""


@dataclass(frozen=True, slots=True)
class CachedAllocation:
    """A live cache entry."""

    allocation: Allocation
    """The allocation with ``cached`` true and ``expires_at`` from the entry."""
    portfolio_id: str
    """Portfolio of the call that computed it ('' when none)."""
    created_at: datetime
    """When it was computed and stored."""


def event_payload(allocation: Allocation) -> dict[str, Any]:
    """The payload of the ``SHARES_ALLOCATED`` event of ``allocation`` (JSON-ready).

    ``schema_version``, the cache key, whether the answer came from the cache, the metrics (an allocation
    metrics object of ``docs/storage_schema.md``), the final shares per target symbol and the shares sold in full.
    """
    return trading_records.event_payload(
        {
            "cache_key": allocation.cache_key,
            "cached": allocation.cached,
            "metrics": trading_records.allocation_metrics_json(allocation.metrics),
            "final_shares": {line.symbol: line.final_shares for line in allocation.lines},
            "sold_in_full": {sold.symbol: sold.shares for sold in allocation.sold_in_full},
        }
    )


class AllocationCache(Protocol):
    """Cached allocations with a lifetime, and the ``SHARES_ALLOCATED`` events of a portfolio's allocations.

    Every method may raise ``services.errors.OperationalError`` (an ``UnavailableError``: retry the call) when
    the store cannot be reached.
    """

    async def find(self, cache_key: str) -> CachedAllocation | None:
        """The unexpired entry of ``cache_key``, or None (absent, expired or cleared)."""
        ...

    async def save(
        self,
        allocation: Allocation,
        *,
        problem: AllocationRequest,
        portfolio_id: str,
        ttl: timedelta | None,
    ) -> Allocation:
        """Store a computed allocation in the cache (when ``ttl`` is given) and its event (for a portfolio).

        One transaction: the expired entries are deleted, the entry is upserted (a later computation of the
        same key replaces an earlier one) and, when ``portfolio_id`` is set, the ``SHARES_ALLOCATED`` event is
        recorded. Nothing is written when there is neither a ``ttl`` nor a ``portfolio_id``.

        Parameters
        ----------
        allocation : Allocation
            The allocation with its ``cache_key`` (``cached`` false).
        problem : services.trading.AllocationRequest
            The normalised problem, stored with the entry (``trading_records.allocation_request_json``).
        portfolio_id : str
            Portfolio to record the event for; '' records none.
        ttl : datetime.timedelta or None
            Lifetime of the entry from now (the store's clock); None stores no entry.

        Returns
        -------
        Allocation
            ``allocation``, with ``expires_at`` set when it was cached.
        """
        ...

    async def record(self, allocation: Allocation, *, portfolio_id: str) -> None:
        """Record the ``SHARES_ALLOCATED`` event of an allocation answered from the cache for a portfolio."""
        ...

    async def clear(self, cache_key: str) -> int:
        """Delete the entry of ``cache_key`` (expired or not), or every entry when it is ''; the entries deleted."""
        ...


@dataclass(frozen=True, slots=True)
class RecordedAllocation:
    """One ``SHARES_ALLOCATED`` event held by :class:`InMemoryAllocationCache`."""

    event_id: uuid.UUID
    """Event identifier."""
    timestamp: datetime
    """When it was recorded (the cache's clock)."""
    portfolio_id: str
    """Portfolio the allocation was made for."""
    total_trade_value: float
    """The budget used (``metrics.budget_used``)."""
    payload: dict[str, Any]
    """See :func:`event_payload`."""


@dataclass(frozen=True, slots=True)
class _Entry:
    portfolio_id: str
    request: dict[str, Any]
    response: dict[str, Any]
    created_at: datetime
    expires_at: datetime


def _stored(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as the database gives it back (through JSON text)."""
    loaded: dict[str, Any] = json.loads(json.dumps(payload, allow_nan=False))
    return loaded


class InMemoryAllocationCache(AllocationCache):
    """:class:`AllocationCache` in process memory, with the semantics of the PostgreSQL cache.

    Parameters
    ----------
    clock : callable, optional
        Returns the current time (timezone-aware); default the system clock in UTC. Tests pass a settable clock
        to expire entries without waiting.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._entries: dict[str, _Entry] = {}
        self._events: list[RecordedAllocation] = []

    def events(self, portfolio_id: str | None = None) -> tuple[RecordedAllocation, ...]:
        """The recorded ``SHARES_ALLOCATED`` events (of one portfolio, or all), oldest first."""
        return tuple(e for e in self._events if portfolio_id is None or e.portfolio_id == portfolio_id)

    async def find(self, cache_key: str) -> CachedAllocation | None:
        """The unexpired entry of ``cache_key``, or None."""
        entry = self._entries.get(cache_key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        allocation = trading_records.allocation_from_json(entry.response, expires_at=entry.expires_at)
        return CachedAllocation(allocation, entry.portfolio_id, entry.created_at)

    async def save(
        self,
        allocation: Allocation,
        *,
        problem: AllocationRequest,
        portfolio_id: str,
        ttl: timedelta | None,
    ) -> Allocation:
        """Store a computed allocation and its event; see :meth:`AllocationCache.save`."""
        if ttl is None and not portfolio_id:
            return allocation
        now = self._clock()
        if ttl is not None:
            allocation = replace(allocation, expires_at=now + ttl)
            self._entries = {key: e for key, e in self._entries.items() if e.expires_at > now}
            self._entries[allocation.cache_key] = _Entry(
                portfolio_id=portfolio_id,
                request=_stored(trading_records.allocation_request_json(problem)),
                response=_stored(trading_records.allocation_json(allocation)),
                created_at=now,
                expires_at=now + ttl,
            )
        if portfolio_id:
            self._record(now, allocation, portfolio_id)
        return allocation

    def _record(self, now: datetime, allocation: Allocation, portfolio_id: str) -> None:
        self._events.append(
            RecordedAllocation(
                event_id=uuid.uuid4(),
                timestamp=now,
                portfolio_id=portfolio_id,
                total_trade_value=allocation.metrics.budget_used,
                payload=event_payload(allocation),
            )
        )

    async def record(self, allocation: Allocation, *, portfolio_id: str) -> None:
        """Record the ``SHARES_ALLOCATED`` event of an allocation answered from the cache."""
        self._record(self._clock(), allocation, portfolio_id)

    async def clear(self, cache_key: str) -> int:
        """Delete the entry of ``cache_key``, or every entry when it is ''; the entries deleted."""
        if not cache_key:
            removed = len(self._entries)
            self._entries.clear()
            return removed
        return 0 if self._entries.pop(cache_key, None) is None else 1
