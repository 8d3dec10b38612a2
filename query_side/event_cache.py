"""Serialized ``PortfolioOptimizedEvent`` messages by event id, so that hot history pages skip their decoding.

A stored optimization event never changes once committed: the command side only inserts into
``portfolio_optimized``, and the one column a later insert updates (``turnover``, migration 0017) is not part of
the message. So the message built from an event's row can be kept and served again, keyed by ``event_id``, with no
invalidation: a page still comes from its keyset query (which rows, in which order, and a deleted row is simply not
returned), only the decoding of the rows already seen is skipped (their JSON weights and metadata, timestamps and
enums: about 95 % of a 50-event page's Python time, measured with ``benchmarks.read_side``).

The cache is a least-recently-used map with a bound on its entries; a serialized event of 20 names is about 600
bytes, so the default 65,536 entries hold about 60 MB including Python's overheads (``STRATOPT_QUERY_EVENT_CACHE``
sets it; 0 turns it off).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Final

DEFAULT_MAX_EVENTS: Final = 65_536
"""Entries kept by default (about 60 MB for 20-name events)."""


class EventMessageCache:
    """A bounded least-recently-used map from event id to the event's serialized message.

    Parameters
    ----------
    max_events : int, default DEFAULT_MAX_EVENTS
        Most entries kept; the least recently used goes first. 0 keeps nothing (every lookup misses).

    Raises
    ------
    ValueError
        When ``max_events`` is negative.

    Notes
    -----
    Not thread-safe: it belongs to one event loop (the query servicer's).
    """

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {max_events}")
        self.max_events = max_events
        self._entries: OrderedDict[uuid.UUID, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, event_id: uuid.UUID) -> bytes | None:
        """The serialized message of an event, or None when it is not kept (counted as a hit or a miss)."""
        payload = self._entries.get(event_id)
        if payload is None:
            self.misses += 1
            return None
        self._entries.move_to_end(event_id)
        self.hits += 1
        return payload

    def put(self, event_id: uuid.UUID, payload: bytes) -> None:
        """Keep an event's serialized message, dropping the least recently used entries beyond the bound."""
        if self.max_events == 0:
            return
        self._entries[event_id] = payload
        self._entries.move_to_end(event_id)
        while len(self._entries) > self.max_events:
            self._entries.popitem(last=False)
