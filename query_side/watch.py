"""Live events (``WatchEvents``): LISTEN/NOTIFY as the signal, the hypertables as the source.

Kinds
-----
A stream sends the events of the chosen :class:`WatchKind` s of its portfolios (default: optimization only):
``portfolio_optimized`` runs, ``rebalance_events`` rows (CREATED, APPROVED, REJECTED, EXPIRED, SHARES_ALLOCATED),
``rotation_decided`` decisions and finished ``backtests``. Each kind has its notification channel
(:data:`CHANNELS`), its table, its time column and its id column; everything below holds per ``(kind, portfolio)``.

How a stream works
------------------
Every stored event notifies its kind's channel with ``"<portfolio_id> <id>"`` in the transaction that stores it
(``command_side.repository``, ``rebalancing_repository`` and ``allocations_repository``, ``rotation_store``,
``backtests``), so the notification arrives when the event is visible. One :class:`EventNotifier` per server
process holds one LISTEN connection (every channel) and tells each :class:`Subscription` which of its
``(kind, portfolio)`` pairs changed. A stream then reads the table after its cursor, oldest first (:func:`watch`):
the notification is only a wake-up, so a lost or merged notification loses nothing, and each event is sent once.

- **Cursor and resume token.** The cursor is, per ``(kind, portfolio)``, the ``(time, id)`` of the last event
  sent. Reading after it misses nothing because, within a portfolio, each kind's events commit in ``(time, id)``
  order: their writers hold a per-portfolio advisory lock and read the database clock after it (runs:
  ``command_side.repository``; rebalance events: the ``rebalance:`` lock, whose every writer, allocations
  included, first persists the overdue expiries, so an EXPIRED event dated at its deadline is never older than an
  event already committed; rotation decisions: the ``rotation:`` lock; backtests: the ``backtest:`` lock, with
  ``created_at`` from the clock after it). The resume token of each message (:func:`encode_cursors`, version 2)
  holds every cursor and is bound to the portfolios and the kinds; a new stream with it continues without a gap or
  a duplicate. A version-1 token (optimization only, :func:`encode_token`, issued before the kinds) still resumes
  a stream of the same portfolios that asks for optimization events only; for other kinds it is refused
  (INVALID_ARGUMENT on ``resume_token``). Without a token the stream starts after each pair's latest event at the
  time of the call (read after LISTEN is active, so nothing committed later is missed).
- **Order.** Oldest first per ``(kind, portfolio)``; no order across kinds or portfolios.
- **Memory.** A subscription keeps the set of its pairs that changed (at most kinds × portfolios), not the events;
  the stream reads events in chunks of :data:`CHUNK` and HTTP/2 flow control holds it while the client does not
  read. A subscriber with more than :data:`MAX_CATCH_UP` events of one pair to catch up in one go is sent them and
  then cut with RESOURCE_EXHAUSTED: it resumes with the last token (or pages with the List RPCs).
- **Failures.** A lost LISTEN connection (database restart) ends every stream with UNAVAILABLE; the next
  subscription listens again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from query_side.repository import HistoryKey, StoredEvent
from services.errors import InvalidInputError, PreconditionError, ResourceExhaustedError, UnavailableError

log = logging.getLogger(__name__)


class WatchKind(enum.StrEnum):
    """A kind of event a stream sends (its value is its name in resume tokens)."""

    OPTIMIZATION = "optimization"
    REBALANCE = "rebalance"
    ROTATION = "rotation"
    BACKTEST = "backtest"


NOTIFY_CHANNEL = "portfolio_optimized"
"""The channel the command side notifies on each stored run (``command_side.repository.NOTIFY_CHANNEL``; a test
checks that they agree)."""
CHANNELS: dict[WatchKind, str] = {
    WatchKind.REBALANCE: "rebalance_event",
    WatchKind.ROTATION: "rotation_decided",
    WatchKind.BACKTEST: "backtest_completed",
    WatchKind.OPTIMIZATION: NOTIFY_CHANNEL,  # listened to last (a test finds the connection by its last LISTEN)
}
"""Notification channel of each kind (the command side's ``NOTIFY_CHANNEL`` constants; a test checks them)."""
MAX_PORTFOLIOS = 100
"""Most portfolios one stream watches."""
CHUNK = 500
"""Events read per query while catching up."""
KEEPALIVE_S = 30.0
"""Seconds between the pings of the LISTEN connection (``EventNotifier``)."""
KEEPALIVE_TIMEOUT_S = 10.0
"""Seconds a ping may take before the LISTEN connection is taken for lost."""
MAX_CATCH_UP = 10_000
"""Events of one (kind, portfolio) sent in one catch-up before a stream is cut (the subscriber resumes)."""
_FIELD = "resume_token"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Keyed(Protocol):
    """An event with its position."""

    @property
    def key(self) -> HistoryKey:
        """``(time, id)`` of the event."""
        ...


class EventSource(Protocol):
    """What a watch stream reads of the optimization events (``PostgresReadStore`` has both)."""

    async def events_after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> list[StoredEvent]:
        """Events after a position, oldest first."""
        ...

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        """The position of the latest event, or None."""
        ...


class KindSource(Protocol):
    """What a watch stream reads of one kind (``query_side.watch_reads``)."""

    async def after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> Sequence[Keyed]:
        """Events after a position, oldest first."""
        ...

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        """The position of the latest event, or None."""
        ...


class OptimizationSource:
    """:class:`KindSource` of the optimization events of an :class:`EventSource`."""

    def __init__(self, source: EventSource) -> None:
        self._source = source

    async def after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> Sequence[Keyed]:
        """``events_after``."""
        return await self._source.events_after(portfolio_id, after, limit)

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        """``latest_key``."""
        return await self._source.latest_key(portfolio_id)


# --- tokens -------------------------------------------------------------------------------------------------------

Cursors = dict[WatchKind, dict[str, HistoryKey | None]]
"""Per kind, per portfolio: the position of the last event sent (None: none yet, and none when it started)."""


def _fingerprint(portfolio_ids: Sequence[str]) -> str:
    canonical = json.dumps(sorted(portfolio_ids), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _fingerprint_v2(portfolio_ids: Iterable[str], kinds: Iterable[WatchKind]) -> str:
    canonical = json.dumps([sorted(portfolio_ids), sorted(k.value for k in kinds)], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _key_json(key: HistoryKey) -> list[int | str]:
    return [(key.timestamp - _EPOCH) // _MICROSECOND, str(key.event_id)]


def _key(value: Any) -> HistoryKey:
    return HistoryKey(timestamp=_EPOCH + int(value[0]) * _MICROSECOND, event_id=uuid.UUID(value[1]))


def _pack(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unpack(token: str) -> Any:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    if b"\x00" in raw or b"\\u0000" in raw:
        raise ValueError("NUL in token")
    return json.loads(raw)


def encode_token(cursors: dict[str, HistoryKey | None]) -> str:
    """A version-1 resume token: optimization cursors only (issued before the kinds; still read, see module doc).

    ``{"v": 1, "q": <fingerprint of the portfolios>, "c": {portfolio: [microseconds since the epoch, event_id] or
    null}}`` (unpadded URL-safe base64 of compact JSON, not signed).
    """
    return _pack(
        {
            "v": 1,
            "q": _fingerprint(list(cursors)),
            "c": {p: None if k is None else _key_json(k) for p, k in sorted(cursors.items())},
        }
    )


def decode_token(token: str, portfolio_ids: Sequence[str]) -> dict[str, HistoryKey | None]:
    """The cursors of a version-1 resume token issued for the same portfolios.

    Raises
    ------
    InvalidInputError
        A malformed token, or one issued for other portfolios (field ``resume_token``).
    """
    cursors = decode_cursors(token, portfolio_ids, [WatchKind.OPTIMIZATION])
    return cursors[WatchKind.OPTIMIZATION]


def encode_cursors(cursors: Cursors) -> str:
    """The version-2 resume token of a stream's cursors (unpadded URL-safe base64 of compact JSON, not signed).

    ``{"v": 2, "q": <fingerprint of the portfolios and kinds>, "c": {kind: {portfolio: [microseconds since the
    epoch, id]}}}``; a pair without a position (nothing sent yet, and no event when the stream started) is left out.
    """
    portfolios = next(iter(cursors.values()), {})
    return _pack(
        {
            "v": 2,
            "q": _fingerprint_v2(portfolios, cursors),
            "c": {
                kind.value: {p: _key_json(k) for p, k in sorted(per.items()) if k is not None}
                for kind, per in sorted(cursors.items())
            },
        }
    )


def decode_cursors(token: str, portfolio_ids: Sequence[str], kinds: Sequence[WatchKind]) -> Cursors:
    """The cursors of a resume token issued for the same portfolios and kinds.

    Version 2, or version 1 for a stream of optimization events only.

    Raises
    ------
    InvalidInputError
        A malformed token, or one issued for other portfolios or kinds (field ``resume_token``).
    """
    try:
        payload = _unpack(token)
        if payload["v"] == 1 and list(kinds) == [WatchKind.OPTIMIZATION]:
            if payload["q"] != _fingerprint(portfolio_ids):
                raise ValueError("not this stream's token")
            return {
                WatchKind.OPTIMIZATION: {
                    p: None if payload["c"][p] is None else _key(payload["c"][p]) for p in portfolio_ids
                }
            }
        if payload["v"] != 2 or payload["q"] != _fingerprint_v2(portfolio_ids, kinds):
            raise ValueError("not this stream's token")
        cursors: Cursors = {}
        for kind in kinds:
            stored = payload["c"].get(kind.value, {})
            if not isinstance(stored, dict) or not set(stored) <= set(portfolio_ids):
                raise ValueError("cursors of other portfolios")
            cursors[kind] = {p: None if p not in stored else _key(stored[p]) for p in portfolio_ids}
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, AttributeError) as error:
        raise InvalidInputError.for_field(
            _FIELD,
            "is not a resume token of a stream of these portfolios and kinds (tokens are bound to both lists)",
        ) from error
    return cursors


# --- notifications ------------------------------------------------------------------------------------------------

Pair = tuple[WatchKind, str]
"""``(kind, portfolio_id)``."""


class Subscription:
    """The ``(kind, portfolio)`` pairs of one stream that changed since it last looked."""

    def __init__(self, notifier: EventNotifier, pairs: frozenset[Pair]) -> None:
        self._notifier = notifier
        self.pairs = pairs
        self._changed: set[Pair] = set()
        self._wake = asyncio.Event()
        self._failure: Exception | None = None

    @property
    def portfolio_ids(self) -> frozenset[str]:
        """The watched portfolios."""
        return frozenset(p for _, p in self.pairs)

    def notify(self, pair: Pair) -> None:
        """Mark a pair changed (the notifier's callback)."""
        self._changed.add(pair)
        self._wake.set()

    def fail(self, error: Exception) -> None:
        """End the subscription: the next :meth:`changed` raises ``error``."""
        self._failure = error
        self._wake.set()

    async def changed(self) -> set[Pair]:
        """Wait until a watched pair changes; return those that did (and forget them).

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
    """One LISTEN connection per process, on every kind's channel, shared by every stream (module docstring).

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool; one of its connections is held while any stream listens.
    channels : mapping of WatchKind to str, optional
        The notification channel of each kind (default :data:`CHANNELS`); listened to in this order.
    keepalive_s, keepalive_timeout_s : float, optional
        While listening, a ping on the LISTEN connection every ``keepalive_s`` seconds must answer within
        ``keepalive_timeout_s``; else the connection is taken for lost (closed; every stream ends with UNAVAILABLE
        and resumes). A connection a network drops without a word (a NAT's idle timeout, a failed-over host)
        never reports its end otherwise, and the streams would wait for notifications that cannot come.
    """

    def __init__(
        self,
        pool: Any,
        channels: Mapping[WatchKind, str] | None = None,
        *,
        keepalive_s: float = KEEPALIVE_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self._pool = pool
        self._kinds = {channel: kind for kind, channel in (CHANNELS if channels is None else channels).items()}
        self._connection: Any = None
        self._lock = asyncio.Lock()
        self._subscribers: dict[Pair, set[Subscription]] = {}
        self._keepalive_s = keepalive_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._keepalive: asyncio.Task[None] | None = None

    async def subscribe(
        self, portfolio_ids: Iterable[str], kinds: Iterable[WatchKind] = (WatchKind.OPTIMIZATION,)
    ) -> Subscription:
        """Listen (if not yet) and register a subscription; notifications after this call reach it.

        Raises
        ------
        UnavailableError
            The database cannot be reached.
        """
        portfolios = list(portfolio_ids)
        subscription = Subscription(self, frozenset((k, p) for k in kinds for p in portfolios))
        async with self._lock:
            if self._connection is None:
                try:
                    connection = await self._pool.acquire()
                except Exception as error:  # asyncpg's connection errors, OSError
                    raise UnavailableError("cannot listen for events: the database is not reachable") from error
                try:
                    for channel in self._kinds:
                        await connection.add_listener(channel, self._on_notification)
                except Exception as error:
                    with contextlib.suppress(Exception):
                        await self._pool.release(connection)
                    raise UnavailableError("cannot listen for events: the database is not reachable") from error
                connection.add_termination_listener(self._on_termination)
                self._connection = connection
                self._keepalive = asyncio.create_task(self._keep_alive(connection))
            for pair in subscription.pairs:
                self._subscribers.setdefault(pair, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription (the connection stays, for the next stream)."""
        for pair in subscription.pairs:
            members = self._subscribers.get(pair)
            if members is not None:
                members.discard(subscription)
                if not members:
                    del self._subscribers[pair]

    def _on_notification(self, _connection: Any, _pid: int, channel: str, payload: str) -> None:
        kind = self._kinds.get(channel)
        if kind is None:
            return
        pair = (kind, payload.rsplit(" ", 1)[0])
        for subscription in self._subscribers.get(pair, ()):
            subscription.notify(pair)

    async def _keep_alive(self, connection: Any) -> None:
        """Ping the LISTEN connection; close it when it does not answer in time (class docstring).

        The ping repeats the last LISTEN (a no-op for the server): a round trip that leaves the backend's
        ``pg_stat_activity.query`` as it was, so operators still find the listener by its query.
        """
        channel = list(self._kinds)[-1]
        ping = 'LISTEN "' + channel.replace('"', '""') + '"'
        while True:
            await asyncio.sleep(self._keepalive_s)
            try:
                await asyncio.wait_for(connection.execute(ping), timeout=self._keepalive_timeout_s)
            except Exception:  # TimeoutError, a lost connection (its termination listener has run or will)
                log.warning("the LISTEN connection did not answer within %g s: closing it", self._keepalive_timeout_s)
                connection.terminate()  # runs _on_termination
                return

    def _on_termination(self, _connection: Any) -> None:
        log.warning("the LISTEN connection closed: %d streams end with UNAVAILABLE", self.subscriber_count)
        self._connection = None
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None and keepalive is not asyncio.current_task():
            keepalive.cancel()
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
            keepalive, self._keepalive = self._keepalive, None
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(BaseException):
                    await keepalive
            if connection is not None:
                # An orderly close: the pool closing this connection later is no lost connection to warn about.
                connection.remove_termination_listener(self._on_termination)
                for channel in self._kinds:
                    with contextlib.suppress(Exception):
                        await connection.remove_listener(channel, self._on_notification)
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
    sources: Mapping[WatchKind, KindSource],
    notifier: EventNotifier | None,
    portfolio_ids: Sequence[str],
    token: str,
    *,
    from_beginning: bool = False,
) -> AsyncIterator[tuple[WatchKind, Keyed, str]]:
    """Yield ``(kind, event, resume token after it)`` as events of the portfolios are stored (module docstring).

    ``sources`` holds the kinds to send (the servicer checks them). Without ``token`` the stream starts after each
    pair's latest event, or with ``from_beginning`` at its first one (its history, then live).

    Raises
    ------
    InvalidInputError
        Bad portfolio ids or resume token.
    PreconditionError
        No notifier (the in-memory read store has no live events).
    ResourceExhaustedError
        More than :data:`MAX_CATCH_UP` events of one pair to send in one catch-up (after sending them).
    UnavailableError
        The database or the notifications were lost.
    """
    portfolios = check_portfolios(portfolio_ids)
    kinds = list(sources)
    cursors = decode_cursors(token, portfolios, kinds) if token else None
    if notifier is None:
        raise PreconditionError("live events need the PostgreSQL event store")
    subscription = await notifier.subscribe(portfolios, kinds)
    try:
        if cursors is None:
            cursors = {
                kind: {p: None if from_beginning else await sources[kind].latest_key(p) for p in portfolios}
                for kind in kinds
            }
        # Catch up once at the start: events may have come before the subscription.
        pending: set[Pair] = set(subscription.pairs)
        while True:
            for kind, portfolio_id in sorted(pending):
                sent = 0
                while True:
                    events = await sources[kind].after(portfolio_id, cursors[kind][portfolio_id], CHUNK)
                    for event in events:
                        cursors[kind][portfolio_id] = event.key
                        sent += 1
                        yield kind, event, encode_cursors(cursors)
                    if len(events) < CHUNK:
                        break
                    if sent >= MAX_CATCH_UP and await sources[kind].after(portfolio_id, cursors[kind][portfolio_id], 1):
                        raise ResourceExhaustedError(
                            f"more than {MAX_CATCH_UP} {kind.value} events behind on {portfolio_id!r}: resume with "
                            "the last resume_token, or page with the List RPCs",
                            retry_after_s=0.0,
                        )
            pending = await subscription.changed()
    finally:
        subscription.close()
