"""PostgresExecutionStore on PostgreSQL + TimescaleDB: an order claimed by one broker is skipped by another."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest

from command_side.execution_store import PaperBroker, PostgresExecutionStore
from command_side.rotation import held_by_switch
from command_side.rotation_store import PostgresRotationStore
from tests.command_side.test_rotation_store import trade

pytestmark = pytest.mark.integration

AS_OF = datetime(2024, 3, 4, 16, 0, tzinfo=UTC)


def test_an_order_claimed_by_one_broker_is_skipped_by_another(pg_dsn: str) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=2, max_size=4)
        try:
            portfolio_id, symbol = f"claim-{uuid.uuid4().hex[:8]}", f"Z{uuid.uuid4().hex[:6].upper()}"
            decision = trade(portfolio_id)
            decision = replace(decision, orders=(replace(decision.orders[0], symbol=symbol),))
            await PostgresRotationStore(pool).store_decision(decision, request_hash="h", held_by_switch=held_by_switch)
            await pool.execute(
                "INSERT INTO portfolio_holdings (portfolio_id, positions, cash) "
                """VALUES ($1, '{"schema_version": 1, "positions": []}'::jsonb, 10000)""",
                portfolio_id,
            )
            await pool.execute(
                'INSERT INTO market_data (symbol, "timestamp", price) VALUES ($1, $2, 100.0)', symbol, AS_OF
            )
            store = PostgresExecutionStore(pool)
            async with pool.acquire() as first, first.transaction():
                # Another broker has claimed the order and is filling it.
                await first.execute("SELECT 1 FROM order_outbox WHERE portfolio_id = $1 FOR UPDATE", portfolio_id)
                second = await asyncio.wait_for(
                    store.execute_paper(portfolio_id, as_of=AS_OF, broker=PaperBroker()), timeout=5
                )
                assert second.fills == () and second.orders == ()
            # Released without a fill (the first broker rolled back): the order is still NEW and fills once.
            filled = await store.execute_paper(portfolio_id, as_of=AS_OF, broker=PaperBroker(spread_bps=0.0))
            assert [(f.fill.symbol, f.fill.shares, f.fill.price) for f in filled.fills] == [(symbol, 10.0, 100.0)]
            assert filled.cash == pytest.approx(10000 - 1000 - 10 * 0.005)
            again = await store.execute_paper(portfolio_id, as_of=AS_OF, broker=PaperBroker())
            assert again.fills == ()
        finally:
            await pool.close()

    asyncio.run(main())
