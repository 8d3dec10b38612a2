"""The rotation scheduler: claims once per interval across replicas, pauses, and runs real cycles through a server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from command_side.rotation_model import RotationMember, RotationPortfolioConfig
from command_side.rotation_scheduler import slot_request_id
from command_side.rotation_store import PostgresRotationStore
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc
from stratopt_cli.client import channel
from stratopt_cli.server import ServerThread, StratoptServer
from tests.command_side.test_rotation_service import UNIVERSE

pytestmark = pytest.mark.integration


def config(portfolio_id: str, interval: int = 5) -> RotationPortfolioConfig:
    return RotationPortfolioConfig(
        portfolio_id=portfolio_id,
        universe=(RotationMember("AAA"), RotationMember("BBB")),
        signal_set="s",
        interval_minutes=interval,
    )


def test_a_due_configuration_is_claimed_once_per_interval_by_one_of_two_replicas(pg_dsn: str) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=2, max_size=6)
        try:
            first, second = PostgresRotationStore(pool), PostgresRotationStore(pool)
            tag = uuid.uuid4().hex[:8]
            portfolios = {f"sched-{tag}-{i}" for i in range(12)}
            for portfolio_id in portfolios:
                await first.upsert_configuration(config(portfolio_id))
            claims = await asyncio.gather(first.claim_due(limit=1000), second.claim_due(limit=1000))
            mine = [{p for p, _ in claimed if p in portfolios} for claimed in claims]
            assert mine[0] | mine[1] == portfolios and not mine[0] & mine[1]  # each claimed by exactly one
            # The slot is the 5-minute interval the claim fell in, and the next run is the next interval's start.
            slot = next(s for p, s in claims[0] + claims[1] if p in portfolios)
            assert slot.minute % 5 == 0 and slot.second == 0 and datetime.now(UTC) - slot < timedelta(minutes=5)
            rows = await pool.fetch(
                "SELECT next_run_at FROM rotation_schedule WHERE portfolio_id = ANY($1::text[])", list(portfolios)
            )
            assert {r["next_run_at"] for r in rows} == {slot + timedelta(minutes=5)}
            # Claimed this interval: nothing is due until the next one.
            assert not {p for p, _ in await first.claim_due(limit=1000)} & portfolios
        finally:
            await pool.close()

    asyncio.run(main())


def test_rows_another_replica_is_claiming_are_skipped_not_waited_for(pg_dsn: str) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=2, max_size=4)
        try:
            store = PostgresRotationStore(pool)
            busy, free = f"busy-{uuid.uuid4().hex[:8]}", f"free-{uuid.uuid4().hex[:8]}"
            for portfolio_id in (busy, free):
                await store.upsert_configuration(config(portfolio_id))
            async with pool.acquire() as other, other.transaction():
                # Another replica's claim holds the row of `busy` until it commits.
                await other.execute("SELECT 1 FROM rotation_schedule WHERE portfolio_id = $1 FOR UPDATE", busy)
                claimed = {p for p, _ in await asyncio.wait_for(store.claim_due(limit=1000), timeout=3)}
                assert free in claimed and busy not in claimed
            # The other replica gave up without claiming (rolled back): the row is due and claimed now.
            assert busy in {p for p, _ in await store.claim_due(limit=1000)}
        finally:
            await pool.close()

    asyncio.run(main())


def test_a_paused_scheduler_claims_nothing_until_resumed(pg_dsn: str) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
        try:
            store = PostgresRotationStore(pool)
            portfolio_id = f"paused-{uuid.uuid4().hex[:8]}"
            state = await store.set_scheduler_paused(paused=True, changed_by="ops", reason="maintenance")
            assert (state.engaged, state.changed_by, state.reason) == (True, "ops", "maintenance")
            try:
                await store.upsert_configuration(config(portfolio_id))
                assert portfolio_id not in {p for p, _ in await store.claim_due(limit=1000)}
            finally:
                await store.set_scheduler_paused(paused=False, changed_by="ops", reason="done")
            assert portfolio_id in {p for p, _ in await store.claim_due(limit=1000)}
        finally:
            await pool.close()

    asyncio.run(main())


@pytest.fixture
def scheduled_server(pg_dsn: str) -> Iterator[str]:
    """A second server on the test database whose scheduler ticks every 0.2 s."""
    thread = ServerThread(StratoptServer(pg_dsn, address="127.0.0.1:0", workers=1, rotation_tick_s=0.2))
    thread.start()
    try:
        yield thread.target
    finally:
        thread.stop()


def test_the_scheduler_runs_and_stores_a_cycle_of_a_new_configuration(
    scheduled_server: str, stored_prices: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id, signal_set = f"auto-{uuid.uuid4().hex[:8]}", f"now-{uuid.uuid4().hex[:8]}"
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    with channel(scheduled_server) as ch:
        rotation, trading = rot_grpc.RotationCommandServiceStub(ch), trading_grpc.TradingCommandServiceStub(ch)
        trading.UpsertHoldings(trading_pb.UpsertHoldingsRequest(portfolio_id=portfolio_id, cash=100_000.0))
        rotation.IngestSignals(
            iter([rot_pb.IngestSignalsRequest(
                signal_set=signal_set,
                signals=[rot_pb.Signal(symbol=s, time=now, score=float(i)) for i, s in enumerate(UNIVERSE)],
            )])
        )  # fmt: skip
        rotation.UpsertRotationConfiguration(
            rot_pb.UpsertRotationConfigurationRequest(
                configuration=rot_pb.RotationConfiguration(
                    portfolio_id=portfolio_id,
                    enabled=True,
                    signal_set=signal_set,
                    universe=[rot_pb.RotationMember(symbol=s) for s in UNIVERSE],
                    interval_minutes=60,
                )
            )
        )
        deadline = time.monotonic() + 30
        rows: list[Any] = []
        while time.monotonic() < deadline and not rows:
            time.sleep(0.2)
            rows = db.execute(
                "SELECT request_id, decision->>'decided_by', decision->>'action' FROM rotation_decisions "
                "WHERE portfolio_id = %s",
                (portfolio_id,),
            ).fetchall()
        assert len(rows) == 1, "the scheduler stored no cycle within 30 s"
        request_id, decided_by, action = rows[0]
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # 60-minute intervals
        assert request_id in {slot_request_id(hour), slot_request_id(hour - timedelta(hours=1))}
        assert decided_by == "scheduler"
        assert action in ("TRADE", "HOLD")
        time.sleep(1.0)  # more ticks: the slot is not run again
        row = db.execute("SELECT count(*) FROM rotation_decisions WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
        assert row is not None and row[0] == 1
        with pytest.raises(grpc.RpcError) as error:
            rotation.PauseRotationScheduler(rot_pb.PauseRotationSchedulerRequest(paused=True))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # a reason is required
