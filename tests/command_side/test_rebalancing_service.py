"""RebalancingService on the in-memory trading store: approval, supersession, expiry and idempotency, no database.

The portfolio: 10 XYZ shares and $1,000 cash; at $100 a share it is worth $2,000 with XYZ at a weight of 0.5.
A target of 0.25 sells 5 shares: a total trade value of $500 (no costs: the default impact model needs market
inputs, none are given, and the commissions default to 0). Expected statuses follow the rule as specified:
AUTO_APPROVED when $500 ≤ the approval limit, else PENDING_APPROVAL for the policy's TTL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from command_side.rebalancing import RebalancingService
from command_side.trading_model import (
    CheckDrift,
    Decision,
    GeneratedRebalance,
    GenerateRebalance,
    Position,
    PositionLot,
    RebalancePolicy,
    RebalanceRecommendation,
    UpsertHoldings,
    UpsertPolicy,
)
from command_side.trading_store import InMemoryTradingStore, TradingStore
from services.errors import InvalidInputError, NotFoundError, PermissionDeniedError, PreconditionError
from services.trading import ImpactModel, LotMethod, RecommendationStatus, Side

START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PORTFOLIO = "p-1"


class Clock:
    """The store's clock: it stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def run(scenario: Callable[[RebalancingService, InMemoryTradingStore, Clock], Coroutine[Any, Any, None]]) -> None:
    clock = Clock()
    store = InMemoryTradingStore(clock=clock)
    asyncio.run(scenario(RebalancingService(store), store, clock))


async def setup(service: RebalancingService, **policy: Any) -> None:
    await service.upsert_holdings(
        UpsertHoldings(portfolio_id=PORTFOLIO, positions=(Position(symbol="XYZ", shares=10),), cash=1000.0)
    )
    await service.upsert_policy(UpsertPolicy(portfolio_id=PORTFOLIO, policy=RebalancePolicy(**policy)))


def sell_half(request_id: str = "", price: float = 100.0) -> GenerateRebalance:
    return GenerateRebalance(
        portfolio_id=PORTFOLIO,
        target_weights={"XYZ": 0.25},
        prices={"XYZ": price},
        request_id=request_id,
        request_hash=f"sell half at {price}",  # the adapter's fingerprint of the request, here by hand
    )


async def generate(service: RebalancingService, command: GenerateRebalance) -> GeneratedRebalance:
    return await service.generate(command, time_remaining_s=None)


async def approve(
    service: RebalancingService, recommendation_id: str, approver: str = "alice"
) -> RebalanceRecommendation:
    return await service.approve(Decision(recommendation_id=recommendation_id, approver=approver))


def violation(error: PreconditionError) -> tuple[str, str]:
    (only,) = error.precondition_violations
    return only.type, only.description


# --- the approval flow ------------------------------------------------------------------------------------------


def test_the_generator_cannot_approve_its_own_recommendation_unless_allowed() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=0.0)
        pending = (await generate(service, replace(sell_half(), created_by="tom"))).recommendation
        assert await store.creator(uuid.UUID(pending.recommendation_id)) == "tom"
        assert await store.creator(uuid.uuid4()) is None
        with pytest.raises(PermissionDeniedError, match="you generated"):
            await approve(service, pending.recommendation_id, "tom")
        assert [(e.event_type, e.actor) for e in await store.events(PORTFOLIO)] == [("CREATED", "tom")]
        found = await store.find(uuid.UUID(pending.recommendation_id))
        assert found is not None and found.status == RecommendationStatus.PENDING_APPROVAL
        # Rejecting one's own recommendation stays possible (it trades nothing).
        rejected = await service.reject(
            Decision(recommendation_id=pending.recommendation_id, approver="tom", reason="withdrawn")
        )
        assert (rejected.status, rejected.decided_by) == (RecommendationStatus.REJECTED, "tom")
        # Configured otherwise (allow_self_approval), the generator may approve.
        relaxed = RebalancingService(store, allow_self_approval=True)
        again = (await generate(relaxed, replace(sell_half(price=101.0), created_by="tom"))).recommendation
        approved = await approve(relaxed, again.recommendation_id, "tom")
        assert (approved.status, approved.decided_by) == (RecommendationStatus.APPROVED, "tom")

    run(scenario)


def test_a_trade_value_above_the_limit_waits_for_one_approval() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=499.99)
        pending = (await generate(service, sell_half())).recommendation
        assert [(t.symbol, t.side, t.shares, t.value) for t in pending.trades] == [("XYZ", Side.SELL, 5, 500.0)]
        assert pending.total_trade_value == 500.0
        assert pending.status == RecommendationStatus.PENDING_APPROVAL
        assert pending.created_at == START
        assert pending.expires_at == datetime(2024, 3, 2, 12, 0, tzinfo=UTC)  # default TTL 24 h

        clock.now += timedelta(hours=1)
        approved = await approve(service, pending.recommendation_id)
        assert approved.status == RecommendationStatus.APPROVED
        assert approved.decided_by == "alice"
        assert approved.decided_at == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)

        with pytest.raises(PreconditionError) as caught:
            await approve(service, pending.recommendation_id, "bob")
        assert violation(caught.value) == (
            "NOT_PENDING",
            f"recommendation '{pending.recommendation_id}' is APPROVED by 'alice', not PENDING_APPROVAL",
        )
        with pytest.raises(PreconditionError) as caught:
            await service.reject(Decision(recommendation_id=pending.recommendation_id, approver="bob", reason="late"))
        assert violation(caught.value)[0] == "NOT_PENDING"
        events = await store.events(PORTFOLIO)
        assert [(e.event_type, e.actor) for e in events] == [("CREATED", ""), ("APPROVED", "alice")]

    run(scenario)


def test_a_trade_value_at_the_limit_is_auto_approved() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=500.0)
        auto = (await generate(service, sell_half())).recommendation
        assert auto.status == RecommendationStatus.AUTO_APPROVED
        assert auto.decided_at == auto.created_at and auto.expires_at is None
        with pytest.raises(PreconditionError) as caught:
            await approve(service, auto.recommendation_id)
        assert violation(caught.value) == (
            "NOT_PENDING",
            f"recommendation '{auto.recommendation_id}' is AUTO_APPROVED, not PENDING_APPROVAL",
        )

    run(scenario)


def test_reject_and_the_errors_of_a_decision() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=100.0)
        pending = (await generate(service, sell_half())).recommendation
        with pytest.raises(InvalidInputError) as invalid:
            await service.reject(Decision(recommendation_id=pending.recommendation_id, approver="c"))
        assert [v.field for v in invalid.value.field_violations] == ["reason"]
        rejected = await service.reject(
            Decision(recommendation_id=pending.recommendation_id, approver="c", reason="big")
        )
        assert (rejected.status, rejected.decided_by, rejected.reason) == (
            RecommendationStatus.REJECTED,
            "c",
            "big",
        )
        with pytest.raises(NotFoundError):
            await approve(service, str(uuid.uuid4()))
        with pytest.raises(InvalidInputError) as invalid:
            await approve(service, "not-a-uuid")
        assert [v.field for v in invalid.value.field_violations] == ["recommendation_id"]

    run(scenario)


# --- supersession and expiry ------------------------------------------------------------------------------------


def test_a_new_recommendation_supersedes_the_pending_one() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=100.0)
        first = (await generate(service, sell_half())).recommendation
        clock.now += timedelta(minutes=1)
        second = (await generate(service, sell_half(price=101.0))).recommendation
        assert second.status == RecommendationStatus.PENDING_APPROVAL
        with pytest.raises(PreconditionError) as caught:
            await approve(service, first.recommendation_id)
        assert violation(caught.value) == (
            "EXPIRED",
            f"recommendation '{first.recommendation_id}' was superseded by recommendation {second.recommendation_id}",
        )
        assert (await approve(service, second.recommendation_id)).status == RecommendationStatus.APPROVED
        assert [(e.event_type, str(e.recommendation_id)) for e in await store.events(PORTFOLIO)] == [
            ("CREATED", first.recommendation_id),
            ("EXPIRED", first.recommendation_id),
            ("CREATED", second.recommendation_id),
            ("APPROVED", second.recommendation_id),
        ]

    run(scenario)


def test_a_pending_recommendation_expires_at_its_deadline() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=100.0, approval_ttl=timedelta(seconds=3600))
        pending = (await generate(service, sell_half())).recommendation
        expires_at = pending.expires_at
        assert expires_at is not None
        assert expires_at == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)  # START + 3600 s

        clock.now = expires_at - timedelta(microseconds=1)
        assert await store.expire_overdue(PORTFOLIO) == 0  # one microsecond before the deadline: still pending
        clock.now = expires_at  # at the deadline itself: expired
        with pytest.raises(PreconditionError) as caught:
            await approve(service, pending.recommendation_id)
        assert violation(caught.value) == (
            "EXPIRED",
            f"recommendation '{pending.recommendation_id}' expired at {expires_at.isoformat()} undecided",
        )
        # The expiry is kept although the approval failed, dated at the deadline.
        expired = await store.find(uuid.UUID(pending.recommendation_id))
        assert expired is not None
        assert expired.status == RecommendationStatus.EXPIRED and expired.decided_at == pending.expires_at
        events = await store.events(PORTFOLIO)
        assert [(e.event_type, e.timestamp) for e in events] == [
            ("CREATED", START),
            ("EXPIRED", expires_at),
        ]

    run(scenario)


def test_generate_expires_overdue_recommendations_first() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=100.0, approval_ttl=timedelta(seconds=60))
        first = (await generate(service, sell_half("r-1"))).recommendation
        clock.now += timedelta(minutes=5)
        replay = await generate(service, sell_half("r-1"))
        assert replay.replayed
        assert replay.recommendation.status == RecommendationStatus.EXPIRED  # its current state
        assert replay.recommendation.decided_at == first.expires_at
        assert [e.event_type for e in await store.events(PORTFOLIO)] == ["CREATED", "EXPIRED"]

    run(scenario)


# --- idempotency ------------------------------------------------------------------------------------------------


def test_a_repeated_request_id_replays_and_a_changed_request_is_refused() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service, approval_limit=100.0)
        first = await generate(service, sell_half("r-1"))
        again = await generate(service, sell_half("r-1"))
        assert not first.replayed and again.replayed
        assert again.recommendation == first.recommendation
        await approve(service, first.recommendation.recommendation_id)
        after = await generate(service, sell_half("r-1"))
        assert after.replayed and after.recommendation.status == RecommendationStatus.APPROVED
        with pytest.raises(InvalidInputError) as caught:
            await generate(service, sell_half("r-1", price=101.0))
        assert [v.field for v in caught.value.field_violations] == ["request_id"]
        assert [e.event_type for e in await store.events(PORTFOLIO)] == ["CREATED", "APPROVED"]

    run(scenario)


class RacingStore(InMemoryTradingStore):
    """A store in which a concurrent request with the same request_id commits just before each create."""

    async def create(self, recommendation: RebalanceRecommendation, **arguments: Any) -> RebalanceRecommendation:
        await super().create(recommendation, **arguments)  # the other request's, committed first
        return await super().create(recommendation, **arguments)


def test_a_concurrent_create_with_the_same_request_id_is_answered_with_its_recommendation() -> None:
    async def scenario() -> None:
        store = RacingStore(clock=Clock())
        service = RebalancingService(store)
        await setup(service, approval_limit=100.0)
        response = await generate(service, sell_half("r-1"))  # the store raised IntegrityError: replayed
        assert response.replayed
        stored = await store.find_by_request(PORTFOLIO, "r-1")
        assert stored is not None and stored.recommendation == response.recommendation
        assert [e.event_type for e in await store.events(PORTFOLIO)] == ["CREATED"]

    asyncio.run(scenario())


# --- stored inputs ----------------------------------------------------------------------------------------------


def test_drift_against_the_stored_target_and_prices() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        await setup(service)
        store.record_price("XYZ", START - timedelta(days=2), 80.0)
        store.record_price("XYZ", START - timedelta(days=1), 100.0)
        store.record_target(PORTFOLIO, "event-1", {"XYZ": 0.25})
        drift = await service.check_drift(CheckDrift(portfolio_id=PORTFOLIO))
        report = drift.report
        assert report.total_value == 2000.0
        assert report.portfolio_drift == pytest.approx(0.5)  # |0.5 − 0.25| + |0.5 − 0.75|
        assert drift.target_event_id == "event-1"
        assert report.symbols == ("XYZ",)
        assert report.exceeds_threshold  # the default threshold, 0.05

    run(scenario)


def test_the_service_takes_any_trading_store() -> None:
    store: TradingStore = InMemoryTradingStore()
    assert isinstance(RebalancingService(store), RebalancingService)


# --- holdings and policies --------------------------------------------------------------------------------------


def test_holdings_are_stored_without_prices_and_with_their_lots() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        lot = PositionLot(lot_id="L1", shares=10, cost_basis=80.0, acquired=datetime(2023, 5, 1, 15, 30, tzinfo=UTC))
        stored = await service.upsert_holdings(
            UpsertHoldings(
                portfolio_id=PORTFOLIO,
                positions=(Position(symbol="XYZ", shares=10, price=99.0, lots=(lot,)),),
                cash=5.0,
            )
        )
        assert (stored.portfolio_id, stored.positions, stored.updated_at) == (PORTFOLIO, 1, START)
        holdings = await store.load_holdings(PORTFOLIO)
        assert holdings is not None
        assert holdings.positions == (Position(symbol="XYZ", shares=10, price=None, lots=(lot,)),)
        assert holdings.cash == 5.0

    run(scenario)


def test_a_holdings_command_is_checked_before_anything_is_stored() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        lot = PositionLot(lot_id="L1", shares=10, cost_basis=80.0, acquired=None)
        with pytest.raises(InvalidInputError) as caught:
            await service.upsert_holdings(
                UpsertHoldings(
                    portfolio_id=PORTFOLIO, positions=(Position(symbol="XYZ", shares=10, lots=(lot,)),), cash=0.0
                )
            )
        assert [v.field for v in caught.value.field_violations] == ["positions[0].lots[0].acquired"]
        assert await store.load_holdings(PORTFOLIO) is None

    run(scenario)


def test_a_policy_is_stored_with_its_defaults_filled_in() -> None:
    async def scenario(service: RebalancingService, store: InMemoryTradingStore, clock: Clock) -> None:
        policy = await service.upsert_policy(
            UpsertPolicy(portfolio_id=PORTFOLIO, policy=RebalancePolicy(approval_limit=250.0, max_turnover=0.2))
        )
        assert policy == RebalancePolicy(
            drift_threshold=0.05,
            max_turnover=0.2,
            impact_model=ImpactModel.SQUARE_ROOT,
            impact_coefficient=1.0,
            lot_method=LotMethod.FIFO,
            short_term_tax_rate=0.37,
            long_term_tax_rate=0.20,
            wash_sale_window_days=30,
            approval_limit=250.0,
            approval_ttl=timedelta(hours=24),
        )
        assert await store.load_policy(PORTFOLIO) == policy
        with pytest.raises(InvalidInputError) as caught:
            await service.upsert_policy(
                UpsertPolicy(portfolio_id=PORTFOLIO, policy=RebalancePolicy(approval_ttl=timedelta(0)))
            )
        assert [v.field for v in caught.value.field_violations] == ["policy.approval_ttl"]

    run(scenario)
