"""The trading store: the port of the rebalancing write model, its records and an in-memory backend.

:class:`TradingStore` is what :class:`command_side.rebalancing.RebalancingService` needs from storage: holdings
snapshots, rebalance policies, stored prices, the latest optimized target, rebalance recommendations (create,
find, decide, expire) with their events, and the trades of approved recommendations. Two backends implement it
and pass the same contract tests (``tests/command_side/test_trading_store.py``):

* :class:`InMemoryTradingStore` (this module): dictionaries behind a lock, an injectable clock; for unit tests
  of the application service and for running without a database.
* :class:`command_side.rebalancing_repository.PostgresTradingStore`: PostgreSQL + TimescaleDB over asyncpg.

Contract
--------
* The approval rule is :mod:`services.trading`'s lifecycle (:class:`services.trading.RecommendationState`):
  a store asks it for the initial status, the expiry, supersession and decisions, and persists the resulting
  state with its event. Every state change of a recommendation is recorded as one :class:`RecommendationEvent`
  (``CREATED``, ``APPROVED``, ``REJECTED``, ``EXPIRED``), atomically with the change.
* Times come from the store's clock; the moves of one portfolio's recommendations are serialised (a lock), so
  of two concurrent decisions on one recommendation exactly one wins and the other sees it decided.
* Errors are the domain's: :class:`services.errors.IntegrityError` for a duplicate key (a ``request_id`` used
  before for the portfolio), :class:`services.errors.OperationalError` (an ``UnavailableError``, gRPC
  UNAVAILABLE) when the store cannot be reached, :class:`services.errors.NotFoundError` for an unknown
  recommendation, and :class:`services.trading.IllegalTransitionError` for a decision the lifecycle refuses.
  Never a driver's exception.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from command_side.records import JsonObject
from command_side.trading_model import (
    OpenOrder,
    Position,
    RebalancePolicy,
    RebalanceRecommendation,
    RecommendedTrade,
)
from command_side.trading_records import (
    event_payload,
    policy_from_json,
    policy_json,
    positions_from_json,
    positions_json,
    recommendation_from_json,
    recommendation_json,
)
from services.errors import IntegrityError, NotFoundError
from services.trading import (
    APPROVED_STATUSES,
    PENDING_STATUSES,
    RecommendationState,
    RecommendationStatus,
)

CREATED: Final = "CREATED"
"""Event type of a new recommendation; the other event types are the status moved to (``APPROVED``, ...)."""
MAX_RECENT_TRADES: Final = 10_000
"""Most recommendations :meth:`TradingStore.recent_trades` returns."""


# --- records ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredHoldings:
    """A portfolio's holdings snapshot."""

    positions: tuple[Position, ...]
    """Positions with their tax lots (no prices)."""
    cash: float
    """Cash held ($)."""
    updated_at: datetime
    """When the snapshot was stored (the store's clock)."""


@dataclass(frozen=True, slots=True)
class LatestTarget:
    """The weights of a portfolio's latest ``portfolio_optimized`` event."""

    event_id: str
    """Event identifier (UUID)."""
    weights: dict[str, float]
    """Weights keyed by symbol (fractions)."""


@dataclass(frozen=True, slots=True)
class StoredRecommendation:
    """A recommendation found by its idempotency key, in its stored state."""

    request_hash: str
    """Fingerprint of the request that created it."""
    recommendation: RebalanceRecommendation
    """The recommendation with its stored status and decision fields."""


@dataclass(frozen=True, slots=True)
class RecentTrades:
    """The trades of a portfolio's approved recommendation near a trade date (for wash-sale checks)."""

    as_of: datetime
    """Trade date of the recommendation."""
    trades: tuple[RecommendedTrade, ...]
    """Its trades."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendationEvent:
    """One state change of a recommendation, as recorded in its portfolio's event history."""

    timestamp: datetime
    """When the change happened: creation and decisions at the store's clock, an expiry at the recommendation's
    ``expires_at``, a supersession one microsecond before the successor's CREATED event."""
    portfolio_id: str
    """Portfolio identifier."""
    recommendation_id: uuid.UUID
    """Recommendation identifier."""
    event_type: str
    """``CREATED``, ``APPROVED``, ``REJECTED`` or ``EXPIRED``."""
    status: RecommendationStatus
    """The recommendation's status after the change."""
    actor: str
    """The approver of a decision, the principal that generated the recommendation for ``CREATED``; empty
    otherwise."""
    total_trade_value: float
    """The recommendation's total trade value ($)."""
    payload: dict[str, Any]
    """``schema_version`` and ``request_id`` and ``approval_limit`` (CREATED), ``reason`` (a decision with one),
    ``noticed_at`` (an expiry: when the store applied it, ISO 8601) or ``superseded_by`` (a supersession); see
    ``docs/storage_schema.md``."""


# --- recommendation helpers shared by the backends --------------------------------------------------------------


def stored_recommendation(created: Mapping[str, Any], state: RecommendationState) -> RebalanceRecommendation:
    """The recommendation as created (its stored payload, ``trading_records.RECOMMENDATION``) with ``state``."""
    return replace(
        recommendation_from_json(created),
        status=state.status,
        decided_by=state.decided_by,
        decided_at=state.decided_at,
        reason=state.reason,
    )


def created_recommendation(
    recommendation: RebalanceRecommendation, state: RecommendationState, created_at: datetime
) -> RebalanceRecommendation:
    """The recommendation stored for a new one: id, status, ``created_at`` and, while pending, ``expires_at``.

    Decision fields are not part of it (:func:`stored_recommendation` adds them from the state).
    """
    return replace(
        recommendation,
        recommendation_id=state.recommendation_id,
        status=state.status,
        created_at=created_at,
        expires_at=state.expires_at if state.status in PENDING_STATUSES else None,
        decided_at=None,
        decided_by="",
        reason="",
    )


# --- the port ---------------------------------------------------------------------------------------------------


class TradingStore(Protocol):
    """Persistence of holdings, policies, rebalance recommendations and their events (see the module docstring).

    Every method may raise :class:`services.errors.OperationalError` when the store cannot be reached.
    """

    async def store_holdings(self, portfolio_id: str, positions: Sequence[Position], cash: float) -> datetime:
        """Replace the portfolio's holdings snapshot; return when it was stored (the store's clock)."""
        ...

    async def load_holdings(self, portfolio_id: str) -> StoredHoldings | None:
        """The portfolio's holdings snapshot, or None when none was stored."""
        ...

    async def load_book(self, portfolio_id: str) -> tuple[StoredHoldings | None, tuple[OpenOrder, ...]]:
        """The holdings snapshot and the portfolio's open orders (NEW, SENT, PARTIALLY_FILLED), read together.

        One snapshot: a fill changes the holdings and its order at once, so it is counted in one or the other.
        """
        ...

    async def store_policy(self, portfolio_id: str, policy: RebalancePolicy, *, updated_by: str = "") -> None:
        """Replace the portfolio's rebalance policy (``updated_by``: the principal storing it)."""
        ...

    async def policy_author(self, portfolio_id: str) -> str | None:
        """Who stored the portfolio's policy; None when no policy, or none recorded (stored before migration 0023)."""
        ...

    async def load_policy(self, portfolio_id: str) -> RebalancePolicy | None:
        """The portfolio's stored policy, or None when none was stored."""
        ...

    async def latest_prices(self, symbols: Sequence[str], *, at_or_before: datetime | None) -> dict[str, float]:
        """The latest stored price of each symbol ($; at or before ``at_or_before`` when given).

        Symbols without a stored price are absent from the result.
        """
        ...

    async def latest_target(self, portfolio_id: str) -> LatestTarget | None:
        """The weights of the portfolio's latest optimization, or None when it has none."""
        ...

    async def expire_overdue(self, portfolio_id: str) -> int:
        """Persist the expiry of the portfolio's overdue pending recommendations; return how many expired.

        Each becomes EXPIRED with ``decided_at`` = its ``expires_at`` (:meth:`RecommendationState.at`) and an
        EXPIRED event dated at its ``expires_at``, with ``noticed_at`` (now) in the payload.
        """
        ...

    async def create(
        self,
        recommendation: RebalanceRecommendation,
        *,
        request_id: str,
        request_hash: str,
        as_of: datetime,
        approval_ttl: timedelta,
        created_by: str = "",
    ) -> RebalanceRecommendation:
        """Store a new recommendation with its CREATED event; return it with its id, status and times.

        The state is :meth:`RecommendationState.open` from the message's ``total_trade_value`` and
        ``approval_limit``, created now (the store's clock) with ``approval_ttl``. In the same atomic step the
        portfolio's overdue pending recommendations expire (as :meth:`expire_overdue`) and the other pending
        ones are superseded (:meth:`RecommendationState.supersede`, with an EXPIRED event dated one
        microsecond before the CREATED event whose payload names the successor).

        Parameters
        ----------
        recommendation : RebalanceRecommendation
            The recommendation without id, status or times.
        request_id : str
            Idempotency key, unique per portfolio; empty for none.
        request_hash : str
            Fingerprint of the request.
        as_of : datetime
            Trade date (for :meth:`recent_trades`).
        approval_ttl : timedelta
            How long a pending recommendation waits for a decision (> 0).
        created_by : str
            The authenticated principal generating it: the ``actor`` of the CREATED event (:meth:`creator`).

        Raises
        ------
        IntegrityError
            When ``request_id`` was already used for the portfolio; nothing is changed.
        """
        ...

    async def find(self, recommendation_id: uuid.UUID) -> RebalanceRecommendation | None:
        """The recommendation in its stored state, or None when no recommendation has the id."""
        ...

    async def find_by_request(self, portfolio_id: str, request_id: str) -> StoredRecommendation | None:
        """The recommendation created by an earlier request with this idempotency key, if any."""
        ...

    async def creator(self, recommendation_id: uuid.UUID) -> str | None:
        """The principal that generated the recommendation, or None when no recommendation has the id.

        It is the CREATED event's ``actor``; empty when none was recorded (recommendations of older versions).
        """
        ...

    async def decide(
        self, recommendation_id: uuid.UUID, *, status: RecommendationStatus, actor: str, reason: str
    ) -> RebalanceRecommendation:
        """Approve (``status`` APPROVED) or reject (REJECTED) a recommendation now, with its event.

        In one atomic step: the portfolio's overdue pending recommendations expire first (as
        :meth:`expire_overdue`), then :meth:`RecommendationState.decide` is applied at now. The expiry is kept
        even when the decision is then refused.

        Raises
        ------
        NotFoundError
            When no recommendation has the id.
        IllegalTransitionError
            ``NOT_PENDING`` or ``EXPIRED`` (see :meth:`RecommendationState.decide`).
        """
        ...

    async def recent_trades(self, portfolio_id: str, as_of: datetime, window: timedelta) -> list[RecentTrades]:
        """Trades of the portfolio's approved recommendations near a trade date, for wash-sale checks.

        Those in ``APPROVED_STATUSES`` with a trade date within ``window`` of ``as_of`` (both ends included),
        oldest first, at most ``MAX_RECENT_TRADES``.
        """
        ...

    async def events(self, portfolio_id: str) -> list[RecommendationEvent]:
        """The portfolio's recommendation events, oldest first."""
        ...


# --- in-memory backend ------------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, kw_only=True)
class _StoredRow:
    """One recommendation of the in-memory store."""

    portfolio_id: str
    request_id: str
    request_hash: str
    created: JsonObject
    total_trade_value: float
    as_of: datetime
    state: RecommendationState
    created_by: str = ""


@dataclass(slots=True)
class _Tables:
    holdings: dict[str, tuple[JsonObject, float, datetime]] = field(default_factory=dict)
    policies: dict[str, JsonObject] = field(default_factory=dict)
    policy_authors: dict[str, str | None] = field(default_factory=dict)
    prices: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    targets: dict[str, LatestTarget] = field(default_factory=dict)
    recommendations: dict[uuid.UUID, _StoredRow] = field(default_factory=dict)
    by_request: dict[tuple[str, str], uuid.UUID] = field(default_factory=dict)
    events: list[RecommendationEvent] = field(default_factory=list)


def _stored(payload: JsonObject) -> JsonObject:
    """``payload`` as a database would give it back: through JSON text (no NaN, fresh objects)."""
    loaded: JsonObject = json.loads(json.dumps(payload, allow_nan=False))
    return loaded


class InMemoryTradingStore:
    """A :class:`TradingStore` in dictionaries, for tests and for running without a database.

    Each method does its reads and writes under one lock without awaiting in between, so every call is atomic,
    from coroutines and threads alike. Prices and optimization targets are written by other parts of the
    system; seed them with :meth:`record_price` and :meth:`record_target`.

    Parameters
    ----------
    clock : callable returning datetime, optional
        The store's clock (timezone-aware); defaults to ``datetime.now(UTC)``. Tests pass a settable one to
        step over expiries.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or _utc_now
        self._lock = threading.Lock()
        self._tables = _Tables()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now

    # --- seeding (written elsewhere in the system) ---------------------------------------------------------

    def record_price(self, symbol: str, timestamp: datetime, price: float) -> None:
        """Store a price ($) of ``symbol`` at ``timestamp``, as market data ingestion would."""
        with self._lock:
            self._tables.prices.setdefault(symbol, []).append((timestamp, price))

    def record_target(self, portfolio_id: str, event_id: str, weights: Mapping[str, float]) -> None:
        """Store the weights of the portfolio's latest optimization, as the optimization service would."""
        with self._lock:
            self._tables.targets[portfolio_id] = LatestTarget(event_id=event_id, weights=dict(weights))

    # --- holdings and policies -----------------------------------------------------------------------------

    async def store_holdings(self, portfolio_id: str, positions: Sequence[Position], cash: float) -> datetime:
        """See :meth:`TradingStore.store_holdings`."""
        with self._lock:
            now = self._now()
            self._tables.holdings[portfolio_id] = (_stored(positions_json(positions)), float(cash), now)
        return now

    async def load_holdings(self, portfolio_id: str) -> StoredHoldings | None:
        """See :meth:`TradingStore.load_holdings`."""
        with self._lock:
            stored = self._tables.holdings.get(portfolio_id)
        if stored is None:
            return None
        positions, cash, updated_at = stored
        return StoredHoldings(positions=positions_from_json(positions), cash=cash, updated_at=updated_at)

    async def load_book(self, portfolio_id: str) -> tuple[StoredHoldings | None, tuple[OpenOrder, ...]]:
        """See :meth:`TradingStore.load_book`; this store queues no orders, so there are none."""
        return await self.load_holdings(portfolio_id), ()

    async def store_policy(self, portfolio_id: str, policy: RebalancePolicy, *, updated_by: str = "") -> None:
        """See :meth:`TradingStore.store_policy`."""
        with self._lock:
            self._tables.policies[portfolio_id] = _stored(policy_json(policy))
            self._tables.policy_authors[portfolio_id] = updated_by or None

    async def policy_author(self, portfolio_id: str) -> str | None:
        """See :meth:`TradingStore.policy_author`."""
        with self._lock:
            return self._tables.policy_authors.get(portfolio_id)

    async def load_policy(self, portfolio_id: str) -> RebalancePolicy | None:
        """See :meth:`TradingStore.load_policy`."""
        with self._lock:
            stored = self._tables.policies.get(portfolio_id)
        return None if stored is None else policy_from_json(stored)

    # --- market data and targets ---------------------------------------------------------------------------

    async def latest_prices(self, symbols: Sequence[str], *, at_or_before: datetime | None) -> dict[str, float]:
        """See :meth:`TradingStore.latest_prices`."""
        prices: dict[str, float] = {}
        with self._lock:
            for symbol in symbols:
                series = [
                    (t, p) for t, p in self._tables.prices.get(symbol, []) if at_or_before is None or t <= at_or_before
                ]
                if series:
                    prices[symbol] = max(series, key=lambda item: item[0])[1]
        return prices

    async def latest_target(self, portfolio_id: str) -> LatestTarget | None:
        """See :meth:`TradingStore.latest_target`."""
        with self._lock:
            target = self._tables.targets.get(portfolio_id)
        return None if target is None else LatestTarget(event_id=target.event_id, weights=dict(target.weights))

    # --- recommendations -----------------------------------------------------------------------------------

    def _event(
        self,
        row: _StoredRow,
        recommendation_id: uuid.UUID,
        at: datetime,
        event_type: str,
        *,
        actor: str | None = None,
        **payload: Any,
    ) -> None:
        """Record the event of the row's current state; call with the lock held."""
        self._tables.events.append(
            RecommendationEvent(
                timestamp=at,
                portfolio_id=row.portfolio_id,
                recommendation_id=recommendation_id,
                event_type=event_type,
                status=row.state.status,
                actor=row.state.decided_by if actor is None else actor,
                total_trade_value=row.total_trade_value,
                payload=_stored(event_payload(payload)),
            )
        )

    def _pending_rows(self, portfolio_id: str) -> list[tuple[uuid.UUID, _StoredRow]]:
        return [
            (rid, row)
            for rid, row in self._tables.recommendations.items()
            if row.portfolio_id == portfolio_id and row.state.status in PENDING_STATUSES
        ]

    def _expire_overdue(self, portfolio_id: str, now: datetime) -> int:
        """Apply the expiry of the portfolio's overdue recommendations at ``now``; call with the lock held."""
        expired = 0
        for recommendation_id, row in self._pending_rows(portfolio_id):
            current = row.state.at(now)
            if current is row.state:
                continue
            row.state = current
            assert current.decided_at is not None
            self._event(row, recommendation_id, current.decided_at, current.status.value, noticed_at=now.isoformat())
            expired += 1
        return expired

    async def expire_overdue(self, portfolio_id: str) -> int:
        """See :meth:`TradingStore.expire_overdue`."""
        with self._lock:
            return self._expire_overdue(portfolio_id, self._now())

    async def create(
        self,
        recommendation: RebalanceRecommendation,
        *,
        request_id: str,
        request_hash: str,
        as_of: datetime,
        approval_ttl: timedelta,
        created_by: str = "",
    ) -> RebalanceRecommendation:
        """See :meth:`TradingStore.create`."""
        portfolio_id = recommendation.portfolio_id
        with self._lock:
            if request_id and (portfolio_id, request_id) in self._tables.by_request:
                raise IntegrityError(f"request_id '{request_id}' was already used for portfolio '{portfolio_id}'")
            now = self._now()
            recommendation_id = uuid.uuid4()
            state = RecommendationState.open(
                recommendation_id=str(recommendation_id),
                total_trade_value=recommendation.total_trade_value,
                # A held recommendation (hold_reason) waits for approval whatever its value.
                approval_limit=0.0 if recommendation.hold_reason else recommendation.approval_limit,
                created_at=now,
                approval_ttl=approval_ttl,
            )
            message = created_recommendation(recommendation, state, now)
            self._expire_overdue(portfolio_id, now)
            for superseded_id, row in self._pending_rows(portfolio_id):
                row.state = row.state.supersede(at=now, successor_id=state.recommendation_id)
                self._event(
                    row,
                    superseded_id,
                    now - timedelta(microseconds=1),
                    row.state.status.value,
                    superseded_by=state.recommendation_id,
                )
            row = _StoredRow(
                portfolio_id=portfolio_id,
                request_id=request_id,
                request_hash=request_hash,
                created=_stored(recommendation_json(message)),
                total_trade_value=message.total_trade_value,
                as_of=as_of,
                state=state,
                created_by=created_by,
            )
            self._tables.recommendations[recommendation_id] = row
            if request_id:
                self._tables.by_request[portfolio_id, request_id] = recommendation_id
            self._event(
                row,
                recommendation_id,
                now,
                CREATED,
                actor=created_by,
                request_id=request_id,
                approval_limit=message.approval_limit,
            )
            return stored_recommendation(row.created, state)

    async def find(self, recommendation_id: uuid.UUID) -> RebalanceRecommendation | None:
        """See :meth:`TradingStore.find`."""
        with self._lock:
            row = self._tables.recommendations.get(recommendation_id)
            return None if row is None else stored_recommendation(row.created, row.state)

    async def find_by_request(self, portfolio_id: str, request_id: str) -> StoredRecommendation | None:
        """See :meth:`TradingStore.find_by_request`."""
        with self._lock:
            recommendation_id = self._tables.by_request.get((portfolio_id, request_id))
            if recommendation_id is None:
                return None
            row = self._tables.recommendations[recommendation_id]
            return StoredRecommendation(
                request_hash=row.request_hash, recommendation=stored_recommendation(row.created, row.state)
            )

    async def creator(self, recommendation_id: uuid.UUID) -> str | None:
        """See :meth:`TradingStore.creator`."""
        with self._lock:
            row = self._tables.recommendations.get(recommendation_id)
            return None if row is None else row.created_by

    async def decide(
        self, recommendation_id: uuid.UUID, *, status: RecommendationStatus, actor: str, reason: str
    ) -> RebalanceRecommendation:
        """See :meth:`TradingStore.decide`."""
        with self._lock:
            row = self._tables.recommendations.get(recommendation_id)
            if row is None:
                raise NotFoundError(f"no rebalance recommendation '{recommendation_id}'")
            now = self._now()
            self._expire_overdue(row.portfolio_id, now)  # kept when the decision below is refused
            row.state = row.state.decide(status, at=now, approver=actor, reason=reason)
            self._event(row, recommendation_id, now, status.value, **({"reason": reason} if reason else {}))
            return stored_recommendation(row.created, row.state)

    async def recent_trades(self, portfolio_id: str, as_of: datetime, window: timedelta) -> list[RecentTrades]:
        """See :meth:`TradingStore.recent_trades`."""
        with self._lock:
            rows = [
                row
                for row in self._tables.recommendations.values()
                if row.portfolio_id == portfolio_id
                and row.state.status in APPROVED_STATUSES
                and as_of - window <= row.as_of <= as_of + window
            ]
        rows.sort(key=lambda row: row.as_of)
        return [
            RecentTrades(as_of=row.as_of, trades=recommendation_from_json(row.created).trades)
            for row in rows[:MAX_RECENT_TRADES]
        ]

    async def events(self, portfolio_id: str) -> list[RecommendationEvent]:
        """See :meth:`TradingStore.events`."""
        with self._lock:
            matching = [e for e in self._tables.events if e.portfolio_id == portfolio_id]
        return sorted(matching, key=lambda e: e.timestamp)
