"""Live optimization events (``WatchEvents``): LISTEN/NOTIFY as the signal, the hypertable as the source.

How a stream works
------------------
Every stored run notifies channel :data:`NOTIFY_CHANNEL` with ``"<portfolio_id> <event_id>"`` in the transaction
that stores it (``command_side.repository``), so the notification arrives when the event is visible. One
:class:`EventNotifier` per server process holds one LISTEN connection and tells each :class:`Subscription` which of
its portfolios changed. A stream then reads the hypertable after its cursor, per portfolio, oldest first
(:func:`watch`): the notification is only a wake-up, so a lost or merged notification loses nothing, and each
event is sent once.

- **Cursor and resume token.** The cursor is, per portfolio, the ``(timestamp, event_id)`` of the last event
  sent. Within a portfolio, runs are stored one at a time under its advisory lock with the database clock read
  after the lock, so they commit in ``(timestamp, event_id)`` order and reading after the cursor misses none. The
  resume token of each message (:func:`encode_token`) holds every portfolio's cursor; a new stream with it
  continues without a gap or a duplicate. Without a token the stream starts after each portfolio's latest event
  at the time of the call (read after LISTEN is active, so nothing committed later is missed).
- **Memory.** A subscription keeps the set of its portfolios that changed (at most the portfolios it watches),
  not the events; the stream reads events in chunks of :data:`CHUNK` and HTTP/2 flow control holds it while the
  client does not read. A subscriber with more than :data:`MAX_CATCH_UP` events to catch up in one go is sent
  them and then cut with RESOURCE_EXHAUSTED: it resumes with the last token (or pages with GetHistory).
- **Failures.** A lost LISTEN connection (database restart) ends every stream with UNAVAILABLE; the next
  subscription listens again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from query_side.repository import HistoryKey, StoredEvent
from services.errors import InvalidInputError, PreconditionError, ResourceExhaustedError, UnavailableError

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "portfolio_optimized"
"""The channel the command side notifies on each stored run (``command_side.repository.NOTIFY_CHANNEL``; a test
checks that they agree)."""
MAX_PORTFOLIOS = 100
"""Most portfolios one stream watches."""
CHUNK = 500
"""Events read per query while catching up."""
MAX_CATCH_UP = 10_000
"""Events sent in one catch-up before a stream is cut (the subscriber resumes with its token)."""
_FIELD = "resume_token"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class EventSource(Protocol):
    """What a watch stream reads (``PostgresReadStore`` has both)."""

    async def events_after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> list[StoredEvent]:
        """Events after a position, oldest first."""
        ...

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        """The position of the latest event, or None."""
        ...


# --- tokens -------------------------------------------------------------------------------------------------------


def _fingerprint(portfolio_ids: Sequence[str]) -> str:
    canonical = json.dumps(sorted(portfolio_ids), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def encode_token(cursors: dict[str, HistoryKey | None]) -> str:
    """The resume token of a stream's cursors (unpadded URL-safe base64 of compact JSON, not signed).

    ``{"v": 1, "q": <fingerprint of the portfolios>, "c": {portfolio: [microseconds since the epoch, event_id] or
    null}}``; null: nothing sent yet and the portfolio had no event when the stream started.
    """
    payload = {
        "v": 1,
        "q": _fingerprint(list(cursors)),
        "c": {
            p: None if k is None else [(k.timestamp - _EPOCH) // _MICROSECOND, str(k.event_id)]
            for p, k in sorted(cursors.items())
        },
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str, portfolio_ids: Sequence[str]) -> dict[str, HistoryKey | None]:
    """The cursors of a resume token issued for the same portfolios.

    Raises
    ------
    InvalidInputError
        A malformed token, or one issued for other portfolios (field ``resume_token``).
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if b"\x00" in raw or b"\\u0000" in raw:
            raise ValueError("NUL in token")
        payload = json.loads(raw)
        if payload["v"] != 1 or payload["q"] != _fingerprint(portfolio_ids):
            raise ValueError("not this stream's token")
        cursors: dict[str, HistoryKey | None] = {}
        for p in portfolio_ids:
            value = payload["c"][p]
            cursors[p] = (
                None
                if value is None
                else HistoryKey(timestamp=_EPOCH + int(value[0]) * _MICROSECOND, event_id=uuid.UUID(value[1]))
            )
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, json.JSONDecodeError) as error:
        raise InvalidInputError.for_field(
            _FIELD, "is not a resume token of a stream of these portfolios (tokens are bound to the portfolio list)"
        ) from error
    return cursors


# --- notifications ------------------------------------------------------------------------------------------------


class Subscription:
    """The portfolios of one stream that changed since it last looked."""

    def __init__(self, notifier: EventNotifier, portfolio_ids: frozenset[str]) -> None:
        self._notifier = notifier
        self.portfolio_ids = portfolio_ids
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self._failure: Exception | None = None

    def notify(self, portfolio_id: str) -> None:
        """Mark a portfolio changed (the notifier's callback)."""
        self._changed.add(portfolio_id)
        self._wake.set()

    def fail(self, error: Exception) -> None:
        """End the subscription: the next :meth:`changed` raises ``error``."""
        self._failure = error
        self._wake.set()

    async def changed(self) -> set[str]:
        """Wait until a watched portfolio changes; return those that did (and forget them).

        Raises
        ------
        UnavailableError
            The notifications were lost (the LISTEN connection closed).
        """
        await self._wake.wait()
        if self._failure is not None:
            raise self._failure
        changed, self._changed = self._changed, set()
        self._wake.clear()
        return changed

    def close(self) -> None:
        """Stop receiving notifications."""
        self._notifier.unsubscribe(self)


class EventNotifier:
    """One LISTEN connection per process, shared by every stream (module docstring).

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool; one of its connections is held while any stream listens.
    channel : str
        The notification channel.
    """

    def __init__(self, pool: Any, channel: str = NOTIFY_CHANNEL) -> None:
        self._pool = pool
        self._channel = channel
        self._connection: Any = None
        self._lock = asyncio.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}

    async def subscribe(self, portfolio_ids: Iterable[str]) -> Subscription:
        """Listen (if not yet) and register a subscription; notifications after this call reach it.

        Raises
        ------
        UnavailableError
            The database cannot be reached.
        """
        subscription = Subscription(self, frozenset(portfolio_ids))
        async with self._lock:
            if self._connection is None:
                try:
                    connection = await self._pool.acquire()
                    await connection.add_listener(self._channel, self._on_notification)
                except Exception as error:  # asyncpg's connection errors, OSError
                    raise UnavailableError("cannot listen for events: the database is not reachable") from error
                connection.add_termination_listener(self._on_termination)
                self._connection = connection
            for p in subscription.portfolio_ids:
                self._subscribers.setdefault(p, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription (the connection stays, for the next stream)."""
        for p in subscription.portfolio_ids:
            members = self._subscribers.get(p)
            if members is not None:
                members.discard(subscription)
                if not members:
                    del self._subscribers[p]

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        portfolio_id = payload.rsplit(" ", 1)[0]
        for subscription in self._subscribers.get(portfolio_id, ()):
            subscription.notify(portfolio_id)

    def _on_termination(self, _connection: Any) -> None:
        log.warning("the LISTEN connection closed: %d streams end with UNAVAILABLE", self.subscriber_count)
        self._connection = None
        self._fail_all(UnavailableError("event notifications were lost (database connection closed); resume"))

    def _fail_all(self, error: Exception) -> None:
        for members in list(self._subscribers.values()):
            for subscription in list(members):
                subscription.fail(error)
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        """Distinct subscriptions registered."""
        return len({s for members in self._subscribers.values() for s in members})

    async def close(self) -> None:
        """End every stream (UNAVAILABLE) and give the LISTEN connection back to the pool."""
        self._fail_all(UnavailableError("the server is shutting down; resume with the last token"))
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.remove_listener(self._channel, self._on_notification)
                with contextlib.suppress(Exception):
                    await self._pool.release(connection)


# --- the stream ---------------------------------------------------------------------------------------------------


def check_portfolios(portfolio_ids: Sequence[str]) -> list[str]:
    """The watched portfolios: 1 to :data:`MAX_PORTFOLIOS`, non-empty and unique.

    Raises
    ------
    InvalidInputError
        Naming ``portfolio_ids`` or ``portfolio_ids[i]``.
    """
    if not 1 <= len(portfolio_ids) <= MAX_PORTFOLIOS:
        raise InvalidInputError.for_field("portfolio_ids", f"needs 1 to {MAX_PORTFOLIOS} portfolios")
    seen: set[str] = set()
    for i, p in enumerate(portfolio_ids):
        if not p:
            raise InvalidInputError.for_field(f"portfolio_ids[{i}]", "is required")
        if p in seen:
            raise InvalidInputError.for_field(f"portfolio_ids[{i}]", f"{p!r} appears twice")
        seen.add(p)
    return list(portfolio_ids)


async def watch(
    source: EventSource,
    notifier: EventNotifier | None,
    portfolio_ids: Sequence[str],
    token: str,
    *,
    from_beginning: bool = False,
) -> AsyncIterator[tuple[StoredEvent, str]]:
    """Yield ``(event, resume token after it)`` as events of the portfolios are stored (module docstring).

    Without ``token`` the stream starts after each portfolio's latest event, or with ``from_beginning`` at its
    first one (its history, then live).

    Raises
    ------
    InvalidInputError
        Bad portfolio ids or resume token.
    PreconditionError
        No notifier (the in-memory read store has no live events).
    ResourceExhaustedError
        More than :data:`MAX_CATCH_UP` events to send in one catch-up (after sending them).
    UnavailableError
        The database or the notifications were lost.
    """
    portfolios = check_portfolios(portfolio_ids)
    cursors = decode_token(token, portfolios) if token else None
    if notifier is None:
        raise PreconditionError("live events need the PostgreSQL event store")
    subscription = await notifier.subscribe(portfolios)
    try:
        if cursors is None:
            cursors = {p: None if from_beginning else await source.latest_key(p) for p in portfolios}
        pending = set(portfolios)  # catch up once at the start: events may have come before the subscription
        while True:
            for portfolio_id in sorted(pending):
                sent = 0
                while True:
                    events = await source.events_after(portfolio_id, cursors[portfolio_id], CHUNK)
                    for event in events:
                        cursors[portfolio_id] = event.key
                        sent += 1
                        yield event, encode_token(cursors)
                    if len(events) < CHUNK:
                        break
                    if sent >= MAX_CATCH_UP:
                        raise ResourceExhaustedError(
                            f"more than {MAX_CATCH_UP} events behind on {portfolio_id!r}: resume with the last "
                            "resume_token, or page with GetHistory",
                            retry_after_s=0.0,
                        )
            pending = await subscription.changed()
    finally:
        subscription.close()
