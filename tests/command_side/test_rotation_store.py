"""PostgresRotationStore on PostgreSQL + TimescaleDB.

Versions, signals, the kill-switch under its lock, one transaction per decision. Expected values are written out by
hand.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from command_side.rotation import held_by_switch
from command_side.rotation_model import (
    ChangeRecord,
    DecisionRecord,
    OrderRecord,
    RotationMember,
    RotationPortfolioConfig,
    TriggerRecord,
    order_id,
)
from command_side.rotation_store import PostgresRotationStore
from services.rotation import Engine, GreedyRotationParams, RotationConfig

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 4, 15, 0, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def config(portfolio_id: str, **fields: object) -> RotationPortfolioConfig:
    base = RotationPortfolioConfig(
        portfolio_id=portfolio_id,
        universe=(RotationMember("AAA", "Tech", 5.0), RotationMember("BBB", "", 0.0, beta=1.1)),
        signal_set="s",
        cycle=RotationConfig(engine=Engine.QP, greedy=GreedyRotationParams(k=4, k_buy=3, k_sell=6)),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def trade(portfolio_id: str) -> DecisionRecord:
    decision_id = str(uuid.uuid4())
    return DecisionRecord(
        decision_id=decision_id,
        portfolio_id=portfolio_id,
        configuration_version=1,
        as_of=T0,
        decided_at=None,
        engine="GREEDY",
        action="TRADE",
        policy_reason="DRIFT_TRIGGER",
        triggers=(
            TriggerRecord(name="KILL_SWITCH", fired=False),
            TriggerRecord(name="PORTFOLIO_DRIFT", fired=True, value=0.5, threshold=0.01),
        ),
        changes=(
            ChangeRecord(
                symbol="AAA",
                action="BUY",
                reason="BUY_TOP_K",
                rank=1,
                z=2.0,
                current_weight=0.0,
                target_weight=0.25,
                numbers={"k_buy": 3.0},
            ),
        ),
        orders=(
            OrderRecord(
                order_id=order_id(decision_id, "AAA"),
                symbol="AAA",
                side="BUY",
                shares=10.0,
                weight=0.25,
                reference_price=100.0,
                reason="BUY_TOP_K",
            ),
        ),
        portfolio_value=4000.0,
        turnover=0.125,
    )


class TestPostgresRotationStore:
    @pytest.fixture(autouse=True)
    def _database(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[PostgresRotationStore]:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        try:
            yield PostgresRotationStore(self.pool)
        finally:
            await self.pool.close()

    def run(self, scenario: Callable[[PostgresRotationStore], Awaitable[None]]) -> None:
        async def main() -> None:
            async with self.open_store() as store:
                await scenario(store)

        asyncio.run(main())

    def test_a_configuration_reads_back_as_stored_and_versions_by_content(self) -> None:
        async def scenario(store: PostgresRotationStore) -> None:
            first, created = await store.upsert_configuration(config(unique("cfg")))
            assert (first.version, created) == (1, True)
            assert await store.get_configuration(first.portfolio_id) == first
            assert (await store.upsert_configuration(first))[1] is False  # same content: no version
            disabled, created = await store.upsert_configuration(replace(first, enabled=False))
            assert (disabled.version, created) == (2, True)
            changed = replace(first, cycle=replace(first.cycle, greedy=GreedyRotationParams(k=5, k_buy=3, k_sell=6)))
            stored, created = await store.upsert_configuration(changed)
            assert (stored.version, created, (await store.get_configuration(first.portfolio_id)) == stored) == (
                3,
                True,
                True,
            )
            assert await store.get_configuration("no-such-portfolio") is None

        self.run(scenario)

    def test_the_latest_signal_within_the_age_limit_is_read(self) -> None:
        async def scenario(store: PostgresRotationStore) -> None:
            signal_set = unique("set")
            rows = [("AAA", "", T0 - timedelta(minutes=90), 1.0), ("AAA", "", T0 - timedelta(minutes=30), 2.0),
                    ("AAA", "", T0 + timedelta(minutes=1), 9.0), ("BBB", "", T0 - timedelta(minutes=200), 3.0),
                    ("BBB", "5d", T0 - timedelta(minutes=10), 4.0)]  # fmt: skip
            assert await store.ingest_signals(signal_set, rows) == 5
            # A repeat replaces the score.
            await store.ingest_signals(signal_set, [("AAA", "", T0 - timedelta(minutes=30), 2.5)])
            found = await store.latest_signals(
                signal_set, ["AAA", "BBB"], [""], as_of=T0, max_age=timedelta(minutes=120)
            )
            assert found == {("AAA", ""): (T0 - timedelta(minutes=30), 2.5)}  # BBB "" is too old, "5d" not asked
            horizons = await store.latest_signals(
                signal_set, ["BBB"], ["", "5d"], as_of=T0, max_age=timedelta(minutes=500)
            )
            assert horizons == {
                ("BBB", ""): (T0 - timedelta(minutes=200), 3.0),
                ("BBB", "5d"): (T0 - timedelta(minutes=10), 4.0),
            }

        self.run(scenario)

    def test_a_switch_engaged_before_the_commit_turns_the_trade_into_a_hold_without_orders(self) -> None:
        async def scenario(store: PostgresRotationStore) -> None:
            portfolio_id = unique("late-switch")
            # The cycle decided TRADE before the switch; the switch commits before the decision is stored.
            decision = trade(portfolio_id)
            await store.set_kill_switch(portfolio_id, engaged=True, changed_by="risk", reason="halt")
            stored = await store.store_decision(decision, request_hash="h", held_by_switch=held_by_switch)
            assert (stored.action, stored.policy_reason, stored.orders) == ("HOLD", "KILL_SWITCH", ())
            assert stored.triggers[0] == TriggerRecord(name="KILL_SWITCH", fired=True)
            assert await store.outbox(portfolio_id) == []
            # Released, the same decision stores as a TRADE with its order.
            await store.set_kill_switch(portfolio_id, engaged=False, changed_by="risk", reason="resume")
            again = await store.store_decision(trade(portfolio_id), request_hash="h2", held_by_switch=held_by_switch)
            assert again.action == "TRADE"
            assert [(r["symbol"], r["side"], r["shares"], r["status"]) for r in await store.outbox(portfolio_id)] == [
                ("AAA", "BUY", 10.0, "NEW")
            ]
            row = await self.pool.fetchrow(
                "SELECT action, reason_codes, orders FROM rotation_decided WHERE decision_id = $1",
                uuid.UUID(again.decision_id),
            )
            assert row is not None and (row["action"], row["reason_codes"], row["orders"]) == (
                "TRADE",
                ["BUY_TOP_K"],
                1,
            )

        self.run(scenario)

    def test_engaging_a_switch_waits_for_a_decision_being_stored(self) -> None:
        async def scenario(store: PostgresRotationStore) -> None:
            portfolio_id = unique("wait")
            async with self.pool.acquire() as deciding, deciding.transaction():
                # What store_decision holds while it writes a decision.
                await deciding.execute("SELECT 1 FROM kill_switches WHERE scope = '' FOR SHARE")
                engage = asyncio.create_task(
                    store.set_kill_switch(portfolio_id, engaged=True, changed_by="risk", reason="halt")
                )
                await asyncio.sleep(0.3)
                assert not engage.done()
            state = await asyncio.wait_for(engage, timeout=5)
            assert state.engaged and state.changed_by == "risk"
            assert [(e, by, why) for _, e, by, why in await store.kill_switch_events(portfolio_id)] == [
                (True, "risk", "halt")
            ]

        self.run(scenario)

    def test_a_decision_is_all_or_nothing(self) -> None:
        async def scenario(store: PostgresRotationStore) -> None:
            portfolio_id = unique("atomic")
            decision = trade(portfolio_id)
            bad = replace(decision, orders=(replace(decision.orders[0], shares=-1.0),))  # violates shares > 0
            with pytest.raises(Exception, match="database rejected"):
                await store.store_decision(bad, request_hash="h", held_by_switch=held_by_switch)
            counts = [
                await self.pool.fetchval(f"SELECT count(*) FROM {table} WHERE portfolio_id = $1", portfolio_id)
                for table in ("rotation_decisions", "rotation_decided", "order_outbox")
            ]
            assert counts == [0, 0, 0]
            stored = await store.store_decision(decision, request_hash="h", held_by_switch=held_by_switch)
            assert await store.find_decision(portfolio_id, "") is None  # no request_id: not replayable
            keyed = replace(trade(portfolio_id), request_id="k")
            await store.store_decision(keyed, request_hash="hk", held_by_switch=held_by_switch)
            found = await store.find_decision(portfolio_id, "k")
            assert found is not None and found[0] == "hk" and found[1].decision_id == keyed.decision_id
            assert found[1].decided_at is not None and stored.decided_at is not None

        self.run(scenario)
