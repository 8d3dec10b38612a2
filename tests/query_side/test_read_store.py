"""The ReadStore port: one contract, run against the in-memory store and against PostgreSQL + TimescaleDB.

``ReadStoreContract`` holds the assertions; ``TestInMemoryReadStore`` and ``TestPostgresReadStore`` give it a
backend each, and a way to put events in it (the PostgreSQL one writes the rows as the command side does: the
event and the latest read model's upsert). Expected orders are written out by hand.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from query_side.read_store import InMemoryReadStore, ReadStore
from query_side.repository import HistoryKey, PostgresReadStore, StoredEvent, StoredRebalanceEvent

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event(portfolio_id: str, at: datetime, event_id: uuid.UUID | None = None, weight_a: float = 0.5) -> StoredEvent:
    return StoredEvent(
        event_id=event_id or uuid.uuid4(),
        timestamp=at,
        portfolio_id=portfolio_id,
        result_id=uuid.uuid4(),
        configuration_version=1,
        request_id=None,
        objective="OBJECTIVE_MAX_SHARPE",
        method="OPTIMIZATION_METHOD_MEAN_VARIANCE",
        weights={"A": weight_a, "B": 1.0 - weight_a},
        expected_return=0.08,
        volatility=0.15,
        sharpe_ratio=0.4,
        metadata={"schema_version": 1, "solver": "CLOSED_FORM", "configuration_version": 1},
    )


def rebalance_event(portfolio_id: str, at: datetime, event_id: uuid.UUID, event_type: str) -> StoredRebalanceEvent:
    return StoredRebalanceEvent(
        event_id=event_id,
        timestamp=at,
        portfolio_id=portfolio_id,
        recommendation_id=uuid.uuid4(),
        event_type=event_type,
        status="PENDING_APPROVAL" if event_type == "CREATED" else event_type,
        actor="desk" if event_type == "APPROVED" else "",
        total_trade_value=12_500.0,
    )


def ordered_ids(count: int) -> list[uuid.UUID]:
    """Random event ids in ascending order (ties on the timestamp are broken by the id)."""
    return sorted(uuid.uuid4() for _ in range(count))


Scenario = Callable[[ReadStore], Awaitable[None]]


class ReadStoreContract:
    """What the query servicer relies on of any ReadStore."""

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[ReadStore]:
        raise NotImplementedError
        yield

    async def add_events(self, store: ReadStore, events: list[StoredEvent]) -> None:
        """Store ``portfolio_optimized`` events, in this order, as the command side does."""
        raise NotImplementedError

    async def add_rebalance_events(self, store: ReadStore, events: list[StoredRebalanceEvent]) -> None:
        """Store ``rebalance_events`` rows."""
        raise NotImplementedError

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            async with self.open_store() as store:
                await scenario(store)

        asyncio.run(main())

    def test_latest_is_the_greatest_timestamp_and_event_id_not_the_last_written(self) -> None:
        async def scenario(store: ReadStore) -> None:
            portfolio = unique("p")
            low, high = ordered_ids(2)
            newest = event(portfolio, T0 + 2 * HOUR, low, weight_a=0.9)
            tied = event(portfolio, T0 + 2 * HOUR, high, weight_a=0.7)
            older = event(portfolio, T0, weight_a=0.1)
            await self.add_events(store, [newest, tied, older])
            assert await store.get_latest(portfolio) == tied

        self.run(scenario)

    def test_an_unknown_portfolio_has_nothing(self) -> None:
        async def scenario(store: ReadStore) -> None:
            portfolio = unique("nobody")
            assert await store.get_latest(portfolio) is None
            assert await store.history(portfolio, start=None, end=None, limit=10) == []
            window = await store.analytics_window(portfolio, start=T0, end=None)
            assert (window.runs, window.previous_weights) == ((), None)
            assert await store.rebalance_events(portfolio, start=None, end=None, limit=10) == []
            assert await store.get_rebalance(uuid.uuid4()) is None

        self.run(scenario)

    def test_history_pages_run_newest_first_through_ties_without_gaps(self) -> None:
        async def scenario(store: ReadStore) -> None:
            portfolio = unique("p")
            ids = ordered_ids(5)
            at = [T0, T0 + HOUR, T0 + HOUR, T0 + HOUR, T0 + 3 * HOUR]
            events = [event(portfolio, when, event_id) for when, event_id in zip(at, ids, strict=True)]
            await self.add_events(store, [events[2], events[0], events[4], events[1], events[3]])
            await self.add_events(store, [event(unique("other"), T0 + 2 * HOUR)])
            pages: list[list[StoredEvent]] = []
            after: HistoryKey | None = None
            while True:
                page = await store.history(portfolio, start=None, end=None, limit=2, after=after)
                if not page:
                    break
                pages.append(page)
                after = page[-1].key
            assert [[e.event_id for e in page] for page in pages] == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
            assert pages[0][0] == events[4]  # every field as stored

        self.run(scenario)

    def test_history_window_includes_its_start_and_excludes_its_end(self) -> None:
        async def scenario(store: ReadStore) -> None:
            portfolio = unique("p")
            events = [event(portfolio, T0 + k * HOUR) for k in range(5)]
            await self.add_events(store, events)
            window = await store.history(portfolio, start=T0 + HOUR, end=T0 + 3 * HOUR, limit=10)
            assert [e.timestamp for e in window] == [T0 + 2 * HOUR, T0 + HOUR]
            later = await store.history(portfolio, start=T0 + HOUR, end=None, limit=10, after=events[3].key)
            assert [e.timestamp for e in later] == [T0 + 2 * HOUR, T0 + HOUR]

        self.run(scenario)

    def test_analytics_window_has_its_runs_oldest_first_and_the_weights_before_it(self) -> None:
        async def scenario(store: ReadStore) -> None:
            portfolio = unique("p")
            low, high = ordered_ids(2)
            events = [
                event(portfolio, T0, weight_a=0.1),
                event(portfolio, T0 + HOUR, high, weight_a=0.25),  # a tie before the window: the higher id is last
                event(portfolio, T0 + HOUR, low, weight_a=0.2),
                event(portfolio, T0 + 2 * HOUR, weight_a=0.3),
                event(portfolio, T0 + 3 * HOUR, weight_a=0.4),
                event(portfolio, T0 + 4 * HOUR, weight_a=0.5),
            ]
            await self.add_events(store, events)
            window = await store.analytics_window(portfolio, start=T0 + 2 * HOUR, end=T0 + 4 * HOUR)
            assert [(run.timestamp, run.weights["A"]) for run in window.runs] == [
                (T0 + 2 * HOUR, 0.3),
                (T0 + 3 * HOUR, 0.4),
            ]
            assert window.runs[0].event_id == str(events[3].event_id)
            assert (window.runs[0].expected_return, window.runs[0].volatility) == (0.08, 0.15)
            assert window.previous_weights == {"A": 0.25, "B": 0.75}
            whole = await store.analytics_window(portfolio, start=None, end=None)
            assert [run.weights["A"] for run in whole.runs] == [0.1, 0.2, 0.25, 0.3, 0.4, 0.5]
            assert whole.previous_weights is None

        self.run(scenario)

    def test_analytics_turnover_is_against_the_true_predecessor_whatever_the_write_order(self) -> None:
        """Runs written out of time order (PostgreSQL: the triggers of migration 0017 keep each run's turnover).

        A weights 0.1, 0.3, 0.6, 0.2 at T0, +1h, +2h, +3h (two-name runs: one-way turnover = |ΔA|): turnovers
        none, 0.2, 0.3, 0.4. Two-hour buckets from T0 (T0 is a multiple of 2 h since the epoch): [T0, T0+2h)
        holds 0.1 and 0.3 (mean turnover 0.2, max 0.2), [T0+2h, T0+4h) holds 0.6 and 0.2 (0.35, 0.4). The
        window from T0+1h: the first run keeps its turnover against the run before the window.
        """

        async def scenario(store: ReadStore) -> None:
            portfolio = unique("p")
            runs = [event(portfolio, T0 + k * HOUR, weight_a=a) for k, a in enumerate((0.1, 0.3, 0.6, 0.2))]
            await self.add_events(store, [runs[2], runs[0], runs[3], runs[1]])
            whole = await store.analytics(portfolio, start=None, end=None, bucket_width=2 * HOUR)
            assert whole.total_runs == 4
            assert [(b.bucket_start, b.run_count) for b in whole.buckets] == [(T0, 2), (T0 + 2 * HOUR, 2)]
            first, second = whole.buckets
            assert (first.mean_turnover, first.max_turnover) == pytest.approx((0.2, 0.2), abs=1e-12)
            assert (second.mean_turnover, second.max_turnover) == pytest.approx((0.35, 0.4), abs=1e-12)
            assert (first.mean_sharpe_ratio, first.mean_volatility, first.mean_expected_return) == pytest.approx(
                (0.4, 0.15, 0.08)
            )
            window = await store.analytics(portfolio, start=T0 + HOUR, end=T0 + 3 * HOUR, bucket_width=HOUR)
            assert [(b.run_count, b.mean_turnover) for b in window.buckets] == [
                (1, pytest.approx(0.2, abs=1e-12)),
                (1, pytest.approx(0.3, abs=1e-12)),
            ]
            alone = await store.analytics(portfolio, start=None, end=T0 + HOUR, bucket_width=HOUR)
            assert [(b.run_count, b.mean_turnover, b.max_turnover) for b in alone.buckets] == [(1, None, None)]
            assert (await store.analytics(unique("nobody"), start=None, end=None, bucket_width=HOUR)).total_runs == 0

        self.run(scenario)

    def test_rebalance_events_page_newest_first_within_their_window(self) -> None:
        async def scenario(store: ReadStore) -> None:
            portfolio = unique("p")
            ids = ordered_ids(4)
            events = [
                rebalance_event(portfolio, T0, ids[0], "CREATED"),
                rebalance_event(portfolio, T0 + HOUR, ids[1], "APPROVED"),
                rebalance_event(portfolio, T0 + HOUR, ids[2], "CREATED"),
                rebalance_event(portfolio, T0 + 5 * HOUR, ids[3], "EXPIRED"),
            ]
            await self.add_rebalance_events(store, [events[3], events[1], events[0], events[2]])
            first = await store.rebalance_events(portfolio, start=None, end=T0 + 5 * HOUR, limit=2)
            assert first == [events[2], events[1]]
            rest = await store.rebalance_events(portfolio, start=None, end=T0 + 5 * HOUR, limit=2, after=first[-1].key)
            assert rest == [events[0]]
            assert await store.rebalance_events(portfolio, start=T0 + 2 * HOUR, end=None, limit=5) == [events[3]]

        self.run(scenario)


class TestInMemoryReadStore(ReadStoreContract):
    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[ReadStore]:
        yield InMemoryReadStore()

    async def add_events(self, store: ReadStore, events: list[StoredEvent]) -> None:
        assert isinstance(store, InMemoryReadStore)
        for stored in events:
            store.add_event(stored)

    async def add_rebalance_events(self, store: ReadStore, events: list[StoredRebalanceEvent]) -> None:
        assert isinstance(store, InMemoryReadStore)
        for stored in events:
            store.add_rebalance_event(stored)


_EVENT_COLUMNS = (
    'event_id, "timestamp", portfolio_id, result_id, configuration_version, request_id, objective, method, '
    "weights, expected_return, volatility, sharpe_ratio, metadata"
)
_VALUES = "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb,$10,$11,$12,$13::jsonb)"


@pytest.mark.integration
class TestPostgresReadStore(ReadStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[ReadStore]:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        self.pool = pool
        try:
            yield PostgresReadStore(pool)
        finally:
            await pool.close()

    async def add_events(self, store: ReadStore, events: list[StoredEvent]) -> None:
        for e in events:
            values = (
                e.event_id, e.timestamp, e.portfolio_id, e.result_id, e.configuration_version, e.request_id,
                e.objective, e.method, json.dumps(e.weights), e.expected_return, e.volatility, e.sharpe_ratio,
                json.dumps(e.metadata),
            )  # fmt: skip
            async with self.pool.acquire() as connection, connection.transaction():
                await connection.execute(f"INSERT INTO portfolio_optimized ({_EVENT_COLUMNS}) {_VALUES}", *values)
                await connection.execute(
                    f"""INSERT INTO latest_portfolio_optimizations ({_EVENT_COLUMNS}) {_VALUES}
                        ON CONFLICT (portfolio_id) DO UPDATE SET event_id = EXCLUDED.event_id,
                            "timestamp" = EXCLUDED."timestamp", result_id = EXCLUDED.result_id,
                            configuration_version = EXCLUDED.configuration_version,
                            request_id = EXCLUDED.request_id, objective = EXCLUDED.objective,
                            method = EXCLUDED.method, weights = EXCLUDED.weights,
                            expected_return = EXCLUDED.expected_return, volatility = EXCLUDED.volatility,
                            sharpe_ratio = EXCLUDED.sharpe_ratio, metadata = EXCLUDED.metadata
                        WHERE (latest_portfolio_optimizations."timestamp", latest_portfolio_optimizations.event_id)
                            <= (EXCLUDED."timestamp", EXCLUDED.event_id)""",
                    *values,
                )

    async def add_rebalance_events(self, store: ReadStore, events: list[StoredRebalanceEvent]) -> None:
        await self.pool.executemany(
            """INSERT INTO rebalance_events (event_id, "timestamp", portfolio_id, recommendation_id, event_type,
                   status, actor, total_trade_value)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [
                (
                    e.event_id,
                    e.timestamp,
                    e.portfolio_id,
                    e.recommendation_id,
                    e.event_type,
                    e.status,
                    e.actor,
                    e.total_trade_value,
                )
                for e in events
            ],
        )
