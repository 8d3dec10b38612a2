"""The TradingStore contract, run against every backend: in memory and on PostgreSQL + TimescaleDB.

``TradingStoreContract`` holds the assertions (eventsourcing's pattern: one abstract suite per port, not collected
itself); ``TestInMemoryTradingStore`` and ``TestPostgresTradingStore`` run it. Truth: hand-chosen holdings,
prices and amounts; the lifecycle's rule as specified (AUTO_APPROVED when the trade value is at most the limit,
PENDING_APPROVAL until created_at + ttl, expiry dated at expires_at, supersession one microsecond before the
successor's creation).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from command_side.rebalancing_repository import PostgresTradingStore
from command_side.trading_model import (
    Band,
    Position,
    PositionLot,
    RebalancePolicy,
    RebalanceRecommendation,
    RecommendedTrade,
)
from command_side.trading_store import InMemoryTradingStore, LatestTarget, TradingStore
from services.errors import IntegrityError, NotFoundError, OperationalError, UnavailableError
from services.trading import IllegalTransitionError, LotMethod, RecommendationStatus, Side
from stratopt.rpc_errors import status_code

PENDING = RecommendationStatus.PENDING_APPROVAL
AUTO = RecommendationStatus.AUTO_APPROVED
APPROVED = RecommendationStatus.APPROVED
REJECTED = RecommendationStatus.REJECTED
EXPIRED = RecommendationStatus.EXPIRED
TTL = timedelta(hours=24)
SHORT_TTL = timedelta(milliseconds=300)
AS_OF = datetime(2024, 3, 1, 16, 0, tzinfo=UTC)

Scenario = Callable[[TradingStore], Awaitable[None]]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def recommendation(portfolio_id: str, value: float, limit: float) -> RebalanceRecommendation:
    """A sell of ``value / 100`` XYZ shares at $100 under the approval limit ``limit``."""
    sell = RecommendedTrade(
        symbol="XYZ",
        side=Side.SELL,
        shares=value / 100.0,
        price=100.0,
        value=value,
        commission=0.0,
        spread_cost=0.0,
        impact_cost=0.0,
        total_cost=0.0,
    )
    return RebalanceRecommendation(
        portfolio_id=portfolio_id, total_trade_value=value, approval_limit=limit, trades=(sell,)
    )


def when(value: datetime | None) -> datetime:
    """A time the recommendation must have."""
    assert value is not None
    return value


class TradingStoreContract:
    """The assertions every :class:`command_side.trading_store.TradingStore` backend must pass.

    A subclass provides the store (:meth:`open_store`), seeds what other rooms write (:meth:`seed_price`,
    :meth:`seed_target`) and lets time pass on the store's clock (:meth:`pass_time`).
    """

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[TradingStore]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def seed_price(self, store: TradingStore, symbol: str, timestamp: datetime, price: float) -> None:
        raise NotImplementedError

    async def seed_target(
        self, store: TradingStore, portfolio_id: str, event_id: str, weights: dict[str, float]
    ) -> None:
        raise NotImplementedError

    async def pass_time(self, delta: timedelta) -> None:
        raise NotImplementedError

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            async with self.open_store() as store:
                await scenario(store)

        asyncio.run(main())

    async def pending(self, store: TradingStore, portfolio_id: str, ttl: timedelta = TTL) -> RebalanceRecommendation:
        created = await store.create(
            recommendation(portfolio_id, 500.0, 100.0), request_id="", request_hash="h", as_of=AS_OF, approval_ttl=ttl
        )
        assert created.status == PENDING
        return created

    # --- holdings, policies, prices, targets -----------------------------------------------------------------

    def test_holdings_round_trip_and_are_replaced(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("holdings")
            assert await store.load_holdings(portfolio_id) is None
            positions = [
                Position(
                    symbol="KO",
                    shares=10.0,
                    lots=(
                        PositionLot(lot_id="a", shares=4.0, cost_basis=50.0, acquired=datetime(2021, 1, 4, tzinfo=UTC)),
                        PositionLot(
                            lot_id="b", shares=6.0, cost_basis=55.5, acquired=datetime(2022, 2, 1, 15, 30, tzinfo=UTC)
                        ),
                    ),
                ),
                Position(symbol="XYZ", shares=3.0),
            ]
            updated_at = await store.store_holdings(portfolio_id, positions, 1234.5)
            assert updated_at.tzinfo is not None
            loaded = await store.load_holdings(portfolio_id)
            assert loaded is not None
            assert list(loaded.positions) == positions
            assert (loaded.cash, loaded.updated_at) == (1234.5, updated_at)

            await store.store_holdings(portfolio_id, [Position(symbol="AAPL", shares=1.0)], 0.0)
            replaced = await store.load_holdings(portfolio_id)
            assert replaced is not None
            assert [(p.symbol, p.shares) for p in replaced.positions] == [("AAPL", 1.0)]
            assert replaced.cash == 0.0 and replaced.updated_at >= updated_at

        self.run(scenario)

    def test_policies_round_trip_and_are_replaced(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("policy")
            assert await store.load_policy(portfolio_id) is None
            policy = RebalancePolicy(
                drift_threshold=0.0,
                approval_limit=2500.0,
                lot_method=LotMethod.HIFO,
                bands={"KO": Band(absolute=0.02), "XYZ": Band()},
                approval_ttl=timedelta(hours=2),
            )
            await store.store_policy(portfolio_id, policy)
            loaded = await store.load_policy(portfolio_id)
            assert loaded == policy
            assert loaded is not None and loaded.drift_threshold == 0.0  # an explicit zero is not the default
            await store.store_policy(portfolio_id, RebalancePolicy(approval_limit=1.0))
            assert await store.load_policy(portfolio_id) == RebalancePolicy(approval_limit=1.0)

        self.run(scenario)

    def test_latest_prices_and_target(self) -> None:
        async def scenario(store: TradingStore) -> None:
            a, b, missing = unique("A"), unique("B"), unique("NONE")
            day = datetime(2024, 1, 2, tzinfo=UTC)
            for offset, price in ((0, 10.0), (1, 11.0), (2, 12.5)):
                await self.seed_price(store, a, day + timedelta(days=offset), price)
            await self.seed_price(store, b, day, 99.0)
            assert await store.latest_prices([a, b, missing], at_or_before=None) == {a: 12.5, b: 99.0}
            assert await store.latest_prices([a, b], at_or_before=day + timedelta(days=1)) == {a: 11.0, b: 99.0}
            assert await store.latest_prices([a], at_or_before=day - timedelta(seconds=1)) == {}
            assert await store.latest_prices([], at_or_before=None) == {}

            portfolio_id = unique("target")
            assert await store.latest_target(portfolio_id) is None
            event_id = str(uuid.uuid4())
            await self.seed_target(store, portfolio_id, event_id, {"A": 0.6, "B": 0.4})
            assert await store.latest_target(portfolio_id) == LatestTarget(event_id, {"A": 0.6, "B": 0.4})

        self.run(scenario)

    # --- creation and idempotency ----------------------------------------------------------------------------

    def test_a_recommendation_at_the_limit_is_auto_approved_at_creation(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("auto")
            created = await store.create(
                recommendation(portfolio_id, 100.0, 100.0),
                request_id="r-1",
                request_hash="hash-1",
                as_of=AS_OF,
                approval_ttl=TTL,
            )
            assert created.status == AUTO
            uuid.UUID(created.recommendation_id)
            assert created.decided_at == created.created_at
            assert created.expires_at is None and created.decided_by == "" and created.reason == ""
            assert (created.total_trade_value, created.approval_limit) == (100.0, 100.0)
            assert [(t.symbol, t.shares) for t in created.trades] == [("XYZ", 1.0)]
            assert await store.find(uuid.UUID(created.recommendation_id)) == created
            events = await store.events(portfolio_id)
            assert [(e.event_type, e.status, e.actor) for e in events] == [
                ("CREATED", RecommendationStatus.AUTO_APPROVED, "")
            ]
            assert events[0].timestamp == when(created.created_at)
            assert events[0].recommendation_id == uuid.UUID(created.recommendation_id)
            assert events[0].total_trade_value == 100.0
            assert events[0].payload == {"schema_version": 1, "request_id": "r-1", "approval_limit": 100.0}

        self.run(scenario)

    def test_a_recommendation_above_the_limit_waits_for_approval_until_its_ttl(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("pending")
            created = await store.create(
                recommendation(portfolio_id, 100.01, 100.0),
                request_id="",
                request_hash="",
                as_of=AS_OF,
                approval_ttl=TTL,
            )
            assert created.status == PENDING
            assert when(created.expires_at) - when(created.created_at) == TTL
            assert created.decided_at is None
            assert await store.find(uuid.UUID(created.recommendation_id)) == created
            assert await store.find(uuid.uuid4()) is None

        self.run(scenario)

    def test_a_repeated_request_id_is_an_integrity_error_and_changes_nothing(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("idem")
            first = await store.create(
                recommendation(portfolio_id, 500.0, 100.0),
                request_id="r-1",
                request_hash="h1",
                as_of=AS_OF,
                approval_ttl=TTL,
            )
            found = await store.find_by_request(portfolio_id, "r-1")
            assert found is not None
            assert (found.request_hash, found.recommendation) == ("h1", first)
            assert await store.find_by_request(portfolio_id, "r-2") is None
            assert await store.find_by_request(unique("other"), "r-1") is None

            with pytest.raises(IntegrityError):
                await store.create(
                    recommendation(portfolio_id, 700.0, 100.0),
                    request_id="r-1",
                    request_hash="h2",
                    as_of=AS_OF,
                    approval_ttl=TTL,
                )
            # The failed create superseded nothing: the first is still pending, with its one event.
            assert await store.find(uuid.UUID(first.recommendation_id)) == first
            assert [e.event_type for e in await store.events(portfolio_id)] == ["CREATED"]

            # The key is per portfolio; an empty key is no key.
            other = await store.create(
                recommendation(unique("idem-other"), 1.0, 100.0),
                request_id="r-1",
                request_hash="h",
                as_of=AS_OF,
                approval_ttl=TTL,
            )
            assert other.status == AUTO
            for _ in range(2):
                await store.create(
                    recommendation(portfolio_id, 1.0, 100.0),
                    request_id="",
                    request_hash="",
                    as_of=AS_OF,
                    approval_ttl=TTL,
                )

        self.run(scenario)

    def test_concurrent_creates_with_one_request_id_store_one(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("race-create")

            async def create() -> str:
                try:
                    created = await store.create(
                        recommendation(portfolio_id, 500.0, 100.0),
                        request_id="same",
                        request_hash="h",
                        as_of=AS_OF,
                        approval_ttl=TTL,
                    )
                except IntegrityError:
                    return "duplicate"
                return created.recommendation_id

            outcomes = await asyncio.gather(*(create() for _ in range(4)))
            winners = [o for o in outcomes if o != "duplicate"]
            assert len(winners) == 1 and outcomes.count("duplicate") == 3
            found = await store.find_by_request(portfolio_id, "same")
            assert found is not None and found.recommendation.recommendation_id == winners[0]
            assert found.recommendation.status == PENDING
            assert [e.event_type for e in await store.events(portfolio_id)] == ["CREATED"]

        self.run(scenario)

    # --- supersession ----------------------------------------------------------------------------------------

    def test_a_new_recommendation_supersedes_the_pending_ones(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("supersede")
            first = await self.pending(store, portfolio_id)
            auto = await store.create(
                recommendation(portfolio_id, 50.0, 100.0), request_id="", request_hash="", as_of=AS_OF, approval_ttl=TTL
            )
            # An auto-approved recommendation supersedes the pending one too; it is never superseded itself.
            assert auto.status == AUTO
            superseded = await store.find(uuid.UUID(first.recommendation_id))
            assert superseded is not None
            assert superseded.status == EXPIRED
            assert superseded.reason == f"superseded by recommendation {auto.recommendation_id}"
            assert superseded.decided_at == auto.created_at
            assert superseded.expires_at == first.expires_at  # the message keeps the deadline it was created with
            second = await self.pending(store, portfolio_id)
            assert await store.find(uuid.UUID(auto.recommendation_id)) == auto
            assert (await store.find(uuid.UUID(second.recommendation_id))) == second

            events = await store.events(portfolio_id)
            assert [(e.event_type, str(e.recommendation_id)) for e in events] == [
                ("CREATED", first.recommendation_id),
                ("EXPIRED", first.recommendation_id),
                ("CREATED", auto.recommendation_id),
                ("CREATED", second.recommendation_id),
            ]
            assert events[1].timestamp == when(auto.created_at) - timedelta(microseconds=1)
            assert events[1].payload == {"schema_version": 1, "superseded_by": auto.recommendation_id}
            assert events[1].status is RecommendationStatus.EXPIRED

            with pytest.raises(IllegalTransitionError) as caught:
                await store.decide(
                    uuid.UUID(first.recommendation_id), status=RecommendationStatus.APPROVED, actor="alice", reason=""
                )
            assert caught.value.kind == "EXPIRED"
            assert caught.value.message == (
                f"recommendation '{first.recommendation_id}' was superseded by recommendation {auto.recommendation_id}"
            )

        self.run(scenario)

    # --- decisions -------------------------------------------------------------------------------------------

    def test_approve_once_then_every_decision_is_refused(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("approve")
            pending = await self.pending(store, portfolio_id)
            recommendation_id = uuid.UUID(pending.recommendation_id)
            approved = await store.decide(
                recommendation_id, status=RecommendationStatus.APPROVED, actor="alice", reason="ok"
            )
            assert approved.status == APPROVED
            assert (approved.decided_by, approved.reason) == ("alice", "ok")
            assert when(pending.created_at) <= when(approved.decided_at) < when(pending.expires_at)
            assert list(approved.trades) == list(pending.trades)
            assert approved.expires_at == pending.expires_at
            assert await store.find(recommendation_id) == approved

            for status, reason in ((RecommendationStatus.APPROVED, ""), (RecommendationStatus.REJECTED, "late")):
                with pytest.raises(IllegalTransitionError) as caught:
                    await store.decide(recommendation_id, status=status, actor="bob", reason=reason)
                assert caught.value.kind == "NOT_PENDING"
                assert caught.value.message == (
                    f"recommendation '{recommendation_id}' is APPROVED by 'alice', not PENDING_APPROVAL"
                )
            events = await store.events(portfolio_id)
            assert [(e.event_type, e.status, e.actor, e.payload) for e in events] == [
                (
                    "CREATED",
                    RecommendationStatus.PENDING_APPROVAL,
                    "",
                    {"schema_version": 1, "request_id": "", "approval_limit": 100.0},
                ),
                ("APPROVED", RecommendationStatus.APPROVED, "alice", {"schema_version": 1, "reason": "ok"}),
            ]
            assert events[1].timestamp == when(approved.decided_at)

        self.run(scenario)

    def test_reject_records_the_reason(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("reject")
            pending = await self.pending(store, portfolio_id)
            rejected = await store.decide(
                uuid.UUID(pending.recommendation_id),
                status=RecommendationStatus.REJECTED,
                actor="carol",
                reason="too big",
            )
            assert rejected.status == REJECTED
            assert (rejected.decided_by, rejected.reason) == ("carol", "too big")
            events = await store.events(portfolio_id)
            assert [(e.event_type, e.actor, e.payload) for e in events][1:] == [
                ("REJECTED", "carol", {"schema_version": 1, "reason": "too big"})
            ]

        self.run(scenario)

    def test_an_auto_approved_recommendation_cannot_be_decided(self) -> None:
        async def scenario(store: TradingStore) -> None:
            auto = await store.create(
                recommendation(unique("auto"), 10.0, 100.0),
                request_id="",
                request_hash="",
                as_of=AS_OF,
                approval_ttl=TTL,
            )
            with pytest.raises(IllegalTransitionError) as caught:
                await store.decide(
                    uuid.UUID(auto.recommendation_id), status=RecommendationStatus.APPROVED, actor="a", reason=""
                )
            assert caught.value.kind == "NOT_PENDING"
            assert "is AUTO_APPROVED, not PENDING_APPROVAL" in caught.value.message

        self.run(scenario)

    def test_the_creator_is_the_created_events_actor(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("creator")
            created = await store.create(
                recommendation(portfolio_id, 500.0, 100.0),
                request_id="",
                request_hash="h",
                as_of=AS_OF,
                approval_ttl=TTL,
                created_by="trader-1",
            )
            assert await store.creator(uuid.UUID(created.recommendation_id)) == "trader-1"
            anonymous = await self.pending(store, portfolio_id)  # created without a principal (supersedes)
            assert await store.creator(uuid.UUID(anonymous.recommendation_id)) == ""
            assert await store.creator(uuid.uuid4()) is None
            history = await store.events(portfolio_id)
            assert [(e.event_type, e.actor) for e in history if e.event_type == "CREATED"] == [
                ("CREATED", "trader-1"),
                ("CREATED", ""),
            ]

        self.run(scenario)

    def test_deciding_an_unknown_recommendation_is_not_found(self) -> None:
        async def scenario(store: TradingStore) -> None:
            with pytest.raises(NotFoundError):
                await store.decide(uuid.uuid4(), status=RecommendationStatus.APPROVED, actor="a", reason="")

        self.run(scenario)

    def test_concurrent_approvals_decide_once(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("race-decide")
            pending = await self.pending(store, portfolio_id)

            async def approve(approver: str) -> str:
                try:
                    await store.decide(
                        uuid.UUID(pending.recommendation_id),
                        status=RecommendationStatus.APPROVED,
                        actor=approver,
                        reason="",
                    )
                except IllegalTransitionError as error:
                    return error.kind
                return "APPROVED"

            outcomes = await asyncio.gather(*(approve(name) for name in ("a", "b", "c", "d")))
            assert sorted(outcomes) == ["APPROVED", "NOT_PENDING", "NOT_PENDING", "NOT_PENDING"]
            winner = "abcd"[outcomes.index("APPROVED")]
            decided = await store.find(uuid.UUID(pending.recommendation_id))
            assert decided is not None and decided.decided_by == winner
            assert [(e.event_type, e.actor) for e in await store.events(portfolio_id)] == [
                ("CREATED", ""),
                ("APPROVED", winner),
            ]

        self.run(scenario)

    # --- expiry ----------------------------------------------------------------------------------------------

    def test_overdue_recommendations_expire_at_their_deadline(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("expire")
            pending = await self.pending(store, portfolio_id, ttl=SHORT_TTL)
            assert await store.expire_overdue(portfolio_id) == 0  # not yet due
            await self.pass_time(SHORT_TTL + timedelta(milliseconds=50))
            assert await store.expire_overdue(portfolio_id) == 1
            expired = await store.find(uuid.UUID(pending.recommendation_id))
            assert expired is not None
            assert expired.status == EXPIRED
            assert expired.decided_at == pending.expires_at  # dated at the deadline, not when noticed
            assert expired.decided_by == "" and expired.reason == ""
            assert await store.expire_overdue(portfolio_id) == 0  # once
            events = await store.events(portfolio_id)
            assert [(e.event_type, e.status) for e in events] == [
                ("CREATED", RecommendationStatus.PENDING_APPROVAL),
                ("EXPIRED", RecommendationStatus.EXPIRED),
            ]
            assert events[1].timestamp == when(pending.expires_at)
            assert datetime.fromisoformat(events[1].payload["noticed_at"]) > when(pending.expires_at)

        self.run(scenario)

    def test_a_decision_after_the_deadline_is_refused_and_the_expiry_kept(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("late")
            pending = await self.pending(store, portfolio_id, ttl=SHORT_TTL)
            await self.pass_time(SHORT_TTL + timedelta(milliseconds=50))
            recommendation_id = uuid.UUID(pending.recommendation_id)
            for status, reason in ((RecommendationStatus.APPROVED, ""), (RecommendationStatus.REJECTED, "x")):
                with pytest.raises(IllegalTransitionError) as caught:
                    await store.decide(recommendation_id, status=status, actor="alice", reason=reason)
                assert caught.value.kind == "EXPIRED"
                expires_at = when(pending.expires_at).isoformat()
                assert caught.value.message == f"recommendation '{recommendation_id}' expired at {expires_at} undecided"
            expired = await store.find(recommendation_id)
            assert expired is not None and expired.status == EXPIRED
            assert [e.event_type for e in await store.events(portfolio_id)] == ["CREATED", "EXPIRED"]  # one expiry

        self.run(scenario)

    def test_creation_expires_an_overdue_pending_recommendation_rather_than_superseding_it(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("overdue")
            first = await self.pending(store, portfolio_id, ttl=SHORT_TTL)
            await self.pass_time(SHORT_TTL + timedelta(milliseconds=50))
            second = await self.pending(store, portfolio_id)
            expired = await store.find(uuid.UUID(first.recommendation_id))
            assert expired is not None
            assert (expired.status, expired.reason, expired.decided_at) == (EXPIRED, "", first.expires_at)
            events = await store.events(portfolio_id)
            assert [(e.event_type, str(e.recommendation_id)) for e in events] == [
                ("CREATED", first.recommendation_id),
                ("EXPIRED", first.recommendation_id),
                ("CREATED", second.recommendation_id),
            ]
            assert set(events[1].payload) == {"schema_version", "noticed_at"}

        self.run(scenario)

    # --- recent trades ---------------------------------------------------------------------------------------

    def test_recent_trades_are_those_of_approved_recommendations_in_the_window(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("recent")
            window = timedelta(days=31)

            async def create(value: float, as_of: datetime) -> RebalanceRecommendation:
                return await store.create(
                    recommendation(portfolio_id, value, 100.0),
                    request_id="",
                    request_hash="",
                    as_of=as_of,
                    approval_ttl=TTL,
                )

            auto_inside = await create(10.0, AS_OF - timedelta(days=5))
            await create(20.0, AS_OF - timedelta(days=40))  # auto-approved, outside the window
            await create(30.0, AS_OF + timedelta(days=31))  # auto-approved, at the window's end (included)
            rejected = await create(400.0, AS_OF - timedelta(days=1))
            await store.decide(
                uuid.UUID(rejected.recommendation_id), status=RecommendationStatus.REJECTED, actor="a", reason="no"
            )
            approved = await create(500.0, AS_OF - timedelta(days=2))
            await store.decide(
                uuid.UUID(approved.recommendation_id), status=RecommendationStatus.APPROVED, actor="a", reason=""
            )
            await create(600.0, AS_OF)  # pending: not counted

            recent = await store.recent_trades(portfolio_id, AS_OF, window)
            assert [(r.as_of, [t.value for t in r.trades]) for r in recent] == [
                (AS_OF - timedelta(days=5), [10.0]),
                (AS_OF - timedelta(days=2), [500.0]),
                (AS_OF + timedelta(days=31), [30.0]),
            ]
            assert auto_inside.status == AUTO
            assert await store.recent_trades(unique("none"), AS_OF, window) == []
            assert await store.events(unique("none")) == []

        self.run(scenario)


# --- backends -----------------------------------------------------------------------------------------------------


class ManualClock:
    """A settable clock that ticks one microsecond per reading (as ``clock_timestamp()`` moves on)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now


class TestInMemoryTradingStore(TradingStoreContract):
    clock: ManualClock
    store: InMemoryTradingStore

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[TradingStore]:
        self.clock = ManualClock(datetime(2024, 3, 1, 12, 0, tzinfo=UTC))
        self.store = InMemoryTradingStore(clock=self.clock)
        yield self.store

    async def seed_price(self, store: TradingStore, symbol: str, timestamp: datetime, price: float) -> None:
        self.store.record_price(symbol, timestamp, price)

    async def seed_target(
        self, store: TradingStore, portfolio_id: str, event_id: str, weights: dict[str, float]
    ) -> None:
        self.store.record_target(portfolio_id, event_id, weights)

    async def pass_time(self, delta: timedelta) -> None:
        self.clock.now += delta

    def test_a_naive_clock_is_refused(self) -> None:
        store = InMemoryTradingStore(clock=lambda: datetime(2024, 1, 1))
        with pytest.raises(ValueError, match="timezone-aware"):
            asyncio.run(store.store_holdings("p", [], 0.0))


@pytest.mark.integration
class TestPostgresTradingStore(TradingStoreContract):
    dsn: str
    pool: asyncpg.Pool[asyncpg.Record]

    @pytest.fixture(autouse=True)
    def _database(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[TradingStore]:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        try:
            yield PostgresTradingStore(self.pool)
        finally:
            await self.pool.close()

    async def seed_price(self, store: TradingStore, symbol: str, timestamp: datetime, price: float) -> None:
        await self.pool.execute(
            'INSERT INTO market_data (symbol, "timestamp", price) VALUES ($1, $2, $3)', symbol, timestamp, price
        )

    async def seed_target(
        self, store: TradingStore, portfolio_id: str, event_id: str, weights: dict[str, float]
    ) -> None:
        await self.pool.execute(
            """INSERT INTO latest_portfolio_optimizations (portfolio_id, event_id, "timestamp", result_id,
                   configuration_version, objective, method, weights, expected_return, volatility, sharpe_ratio,
                   metadata)
               VALUES ($1, $2, clock_timestamp(), $3, 1, 'OBJECTIVE_MAX_SHARPE', 'OPTIMIZATION_METHOD_MEAN_VARIANCE',
                   $4::jsonb, 0.1, 0.2, 0.5, '{}'::jsonb)""",
            portfolio_id,
            uuid.UUID(event_id),
            uuid.uuid4(),
            json.dumps(weights),
        )

    async def pass_time(self, delta: timedelta) -> None:
        await asyncio.sleep(delta.total_seconds())

    def test_a_lost_database_is_an_operational_error(self) -> None:
        async def scenario() -> None:
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=1)
            await pool.close()
            store = PostgresTradingStore(pool)
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: store.load_holdings("p"),
                lambda: store.expire_overdue("p"),
                lambda: store.decide(uuid.uuid4(), status=RecommendationStatus.APPROVED, actor="a", reason=""),
            ]
            for call in calls:
                with pytest.raises(OperationalError) as caught:
                    await call()
                assert isinstance(caught.value, UnavailableError)
                assert status_code(caught.value) is grpc.StatusCode.UNAVAILABLE

        asyncio.run(scenario())

    # --- the order outbox (migration 0013) -------------------------------------------------------------------

    async def outbox(self, portfolio_id: str) -> list[tuple[Any, ...]]:
        rows = await self.pool.fetch(
            "SELECT order_id, source, source_id, symbol, side, shares, reference_price, status FROM order_outbox "
            "WHERE portfolio_id = $1",
            portfolio_id,
        )
        return [tuple(r) for r in rows]

    def test_an_approved_recommendation_queues_its_orders_once(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("outbox")
            pending = await self.pending(store, portfolio_id)
            assert await self.outbox(portfolio_id) == []  # pending: nothing to execute yet
            rid = uuid.UUID(pending.recommendation_id)
            await store.decide(rid, status=RecommendationStatus.APPROVED, actor="risk", reason="")
            expected_id = uuid.uuid5(uuid.UUID("6f1d3c1e-2b7a-4a51-9a43-3f0c5e2d9b10"), f"{rid}:XYZ")
            queued = [(expected_id, "REBALANCE", rid, "XYZ", "SELL", 5.0, 100.0, "NEW")]
            assert await self.outbox(portfolio_id) == queued
            with pytest.raises(IllegalTransitionError):  # decided once: a second approval queues nothing
                await store.decide(rid, status=RecommendationStatus.APPROVED, actor="risk2", reason="")
            assert await self.outbox(portfolio_id) == queued

        self.run(scenario)

    def test_an_auto_approved_recommendation_queues_its_orders_at_creation(self) -> None:
        async def scenario(store: TradingStore) -> None:
            portfolio_id = unique("outbox-auto")
            created = await store.create(
                recommendation(portfolio_id, 50.0, 100.0), request_id="", request_hash="h", as_of=AS_OF,
                approval_ttl=TTL,
            )  # fmt: skip
            assert created.status == RecommendationStatus.AUTO_APPROVED
            [(_, source, source_id, symbol, side, shares, _, status)] = await self.outbox(portfolio_id)
            rid = uuid.UUID(created.recommendation_id)
            assert (source, source_id, symbol, side, shares, status) == ("REBALANCE", rid, "XYZ", "SELL", 0.5, "NEW")

        self.run(scenario)
