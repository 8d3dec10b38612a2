"""The OptimizationStore port: one contract, run against the in-memory store and against PostgreSQL + TimescaleDB.

``OptimizationStoreContract`` holds the assertions; ``TestInMemoryOptimizationStore`` and
``TestPostgresOptimizationStore`` give it a backend each. Expected values are written out by hand.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest

from command_side.configuration import OptimizationConfiguration, OptimizationConstraints, Strategy
from command_side.optimization_store import (
    EncodedRun,
    InMemoryOptimizationStore,
    OptimizationStore,
    PendingRun,
    RunStamp,
    completed,
    content_of,
    encode_run,
)
from command_side.records import ResultRecord, RunMetadataRecord, response_from_record, result_record
from command_side.repository import PostgresOptimizationStore
from command_side.result_records import encode_instant
from services.errors import DeadlineExceededError, IntegrityError, NotFoundError, PreconditionError
from tests.command_side.test_configuration_records import full_domain_configuration
from tests.command_side.test_records import rich_response

DAY = timedelta(days=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
RUN_INHERITS = ("enabled", "lookback_periods", "market_symbol")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def configuration(portfolio_id: str, **fields: Any) -> OptimizationConfiguration:
    """A configuration as an Optimize call implies it (two strategies, max Sharpe, a weight cap)."""
    config = OptimizationConfiguration(
        portfolio_id=portfolio_id,
        objective="OBJECTIVE_MAX_SHARPE",
        method="OPTIMIZATION_METHOD_MEAN_VARIANCE",
        constraints=OptimizationConstraints(max_weight=0.7),
        enabled=True,
        strategies=(Strategy(symbol="A", sector="Tech"), Strategy(symbol="B", sector="Energy")),
    )
    return replace(config, **fields)


def result(portfolio_id: str, request_id: str = "", weight_a: float = 0.6) -> ResultRecord:
    """A run's result as the application hands it to the store: ids, version and timestamp not yet set."""
    return ResultRecord(
        portfolio_id=portfolio_id,
        request_id=request_id,
        weights={"A": weight_a, "B": 1.0 - weight_a},
        expected_return=0.08,
        volatility=0.15,
        sharpe_ratio=0.4,
        metadata=RunMetadataRecord(
            event_id="",
            result_id="",
            timestamp=None,
            configuration_version=0,
            convergence_status="CLOSED_FORM",
            iterations=0,
            optimization_time_ms=1.5,
            objective_value=0.0,
            constraints_satisfied=True,
            solver="CLOSED_FORM",
        ),
    )


def instant(nanoseconds: int | None) -> datetime:
    assert nanoseconds is not None
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC)


async def persist(
    store: OptimizationStore,
    config: OptimizationConfiguration,
    request_id: str = "",
    *,
    request_hash: str = "hash-1",
    inherit: tuple[str, ...] = ("enabled",),
    weight_a: float = 0.6,
) -> ResultRecord:
    return await store.persist_run(
        configuration=config,
        result=result(config.portfolio_id, request_id, weight_a),
        request_hash=request_hash,
        run_inputs={"kind": "returns", "current_weights": {}},
        inherit=inherit,
    )


def bars(symbol: str, days: list[int], prices: list[float]) -> list[tuple[str, datetime, float, float | None]]:
    return [(symbol, T0 + d * DAY, p, 1000.0) for d, p in zip(days, prices, strict=True)]


def dates(days: list[int]) -> np.ndarray:
    return np.array([np.datetime64((T0 + d * DAY).replace(tzinfo=None), "us") for d in days])


Scenario = Callable[[OptimizationStore], Awaitable[None]]


class OptimizationStoreContract:
    """What the application services rely on of any OptimizationStore."""

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[OptimizationStore]:
        raise NotImplementedError
        yield

    async def stored_runs(self, store: OptimizationStore, portfolio_id: str) -> tuple[int, int, int]:
        """(results, events, latest read-model rows) of a portfolio, read behind the port."""
        raise NotImplementedError

    def run(self, scenario: Scenario) -> None:
        async def main() -> None:
            async with self.open_store() as store:
                await scenario(store)

        asyncio.run(main())

    # --- results and idempotency ---------------------------------------------------------------------------------

    def test_a_stored_result_rebuilds_every_field_of_the_response(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio, request_id = unique("p"), unique("r")
            returned = await store.persist_run(
                configuration=configuration(portfolio),
                result=result_record(rich_response(portfolio, request_id)),
                request_hash="h-rich",
                run_inputs={"kind": "returns", "current_weights": {}},
            )
            stored = await store.find_result(request_id)
            assert stored is not None
            assert stored.result == returned
            replayed, first = response_from_record(stored.result), response_from_record(returned)
            assert replayed == first
            assert replayed.optimization_metadata.black_litterman == first.optimization_metadata.black_litterman
            assert replayed.optimization_metadata.window_start.nanos % 1000 == 1

        self.run(scenario)

    def test_persisted_run_is_completed_and_found_by_request_id(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio, request_id = unique("p"), unique("r")
            returned = await persist(store, configuration(portfolio), request_id, request_hash="h-42")
            meta = returned.metadata
            assert uuid.UUID(meta.event_id) != uuid.UUID(meta.result_id)
            assert meta.configuration_version == 1
            assert abs(instant(meta.timestamp) - datetime.now(UTC)) < timedelta(minutes=5)
            stored = await store.find_result(request_id)
            assert stored is not None
            assert stored.request_hash == "h-42"
            assert stored.result == returned
            assert returned.weights == {"A": 0.6, "B": pytest.approx(0.4)}
            assert await self.stored_runs(store, portfolio) == (1, 1, 1)

        self.run(scenario)

    def test_unknown_request_id_has_no_result(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            assert await store.find_result(unique("never")) is None

        self.run(scenario)

    def test_repeated_request_id_is_an_integrity_error_and_stores_nothing(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            first, second, request_id = unique("p"), unique("p"), unique("r")
            await persist(store, configuration(first), request_id, request_hash="first")
            with pytest.raises(IntegrityError):
                await persist(store, configuration(second), request_id, request_hash="second")
            # All or nothing: the second portfolio's configuration (written before the result) is gone too.
            with pytest.raises(NotFoundError):
                await store.get_configuration(second)
            assert await self.stored_runs(store, second) == (0, 0, 0)
            stored = await store.find_result(request_id)
            assert stored is not None and stored.request_hash == "first"

        self.run(scenario)

    def test_a_failed_run_leaves_no_configuration_version_behind(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio, request_id = unique("p"), unique("r")
            await persist(store, configuration(portfolio), request_id)
            changed = configuration(portfolio, objective="OBJECTIVE_MIN_VOLATILITY")
            with pytest.raises(IntegrityError):
                await persist(store, changed, request_id)
            latest = await store.get_configuration(portfolio)
            assert (latest.version, latest.objective) == (1, "OBJECTIVE_MAX_SHARPE")
            assert await self.stored_runs(store, portfolio) == (1, 1, 1)
            # The next successful run of the changed content takes the next version: none was used up.
            again = await persist(store, changed, unique("r"))
            assert again.metadata.configuration_version == 2

        self.run(scenario)

    def test_concurrent_runs_with_one_request_id_store_one(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio, request_id = unique("p"), unique("r")
            outcomes = await asyncio.gather(
                *(persist(store, configuration(portfolio), request_id, weight_a=0.1 * k) for k in range(1, 5)),
                return_exceptions=True,
            )
            stored = [o for o in outcomes if isinstance(o, ResultRecord)]
            refused = [o for o in outcomes if not isinstance(o, ResultRecord)]
            assert len(stored) == 1
            assert len(refused) == 3 and all(isinstance(o, IntegrityError) for o in refused), refused
            found = await store.find_result(request_id)
            assert found is not None and found.result == stored[0]
            assert await self.stored_runs(store, portfolio) == (1, 1, 1)

        self.run(scenario)

    def test_runs_without_request_id_are_all_stored(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio = unique("p")
            first = await persist(store, configuration(portfolio))
            second = await persist(store, configuration(portfolio))
            assert first.metadata.event_id != second.metadata.event_id
            assert instant(second.metadata.timestamp) >= instant(first.metadata.timestamp)
            assert await self.stored_runs(store, portfolio) == (2, 2, 1)

        self.run(scenario)

    # --- many runs in one transaction (a batch's chunk) ---------------------------------------------------------

    def test_runs_stored_together_take_versions_stamps_and_the_read_model_in_order(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, b = unique("bulk-a"), unique("bulk-b")
            changed = configuration(a, objective="OBJECTIVE_MIN_VOLATILITY")
            await persist(store, configuration(a))  # version 1 stored before
            runs = [
                PendingRun(configuration(a), result(a, unique("r"), 0.1), "h", {"kind": "moments"}, RUN_INHERITS),
                PendingRun(configuration(b), result(b, "", 0.2), "", {"kind": "moments"}, RUN_INHERITS),
                PendingRun(changed, result(a, unique("r"), 0.3), "h", {"kind": "moments"}, RUN_INHERITS),
                PendingRun(configuration(a), result(a, "", 0.4), "", {"kind": "moments"}, RUN_INHERITS),
            ]
            stored = await store.persist_runs(runs)
            assert [r.metadata.configuration_version for r in stored] == [1, 1, 2, 3]
            assert [r.weights["A"] for r in stored] == [0.1, 0.2, 0.3, 0.4]
            stamps = [instant(r.metadata.timestamp) for r in stored]
            assert stamps == sorted(stamps) and len(set(stamps)) == 4  # request order, each its own instant
            assert await self.stored_runs(store, a) == (4, 4, 1)
            assert await self.stored_runs(store, b) == (1, 1, 1)
            found = await store.find_results([runs[0].result.request_id, runs[2].result.request_id, unique("no")])
            assert {k: v.result for k, v in found.items()} == {
                runs[0].result.request_id: stored[0],
                runs[2].result.request_id: stored[2],
            }
            # A later single run of the portfolio comes after the bulk's last one.
            later = await persist(store, configuration(a), inherit=RUN_INHERITS)
            assert instant(later.metadata.timestamp) > stamps[-1]
            assert later.metadata.configuration_version == 3  # the content of version 3

        self.run(scenario)

    def test_a_key_repeated_or_already_stored_refuses_the_whole_bulk(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, key = unique("bulk-key"), unique("r")
            twice = [PendingRun(configuration(a), result(a, key), "h", {"kind": "moments"})] * 2
            with pytest.raises(IntegrityError):
                await store.persist_runs(twice)
            assert await self.stored_runs(store, a) == (0, 0, 0)
            with pytest.raises(NotFoundError):  # the configuration written first rolled back too
                await store.get_configuration(a)
            await persist(store, configuration(a), key)
            fresh = PendingRun(configuration(a), result(a, unique("r")), "h", {"kind": "moments"})
            with pytest.raises(IntegrityError):
                await store.persist_runs([fresh, twice[0]])
            assert await self.stored_runs(store, a) == (1, 1, 1)
            assert await store.find_results([fresh.result.request_id]) == {}

        self.run(scenario)

    def test_a_run_encoded_in_a_worker_is_stored_and_replayed_as_its_record_beside_the_others(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, b, key = unique("encoded-a"), unique("encoded-b"), unique("r")
            await store.upsert_configuration(configuration(b, lookback_periods=250))  # an operator's window

            def encoded(config: OptimizationConfiguration, record: ResultRecord) -> EncodedRun:
                return encode_run(
                    configuration=config, content=content_of(config), result=record, request_hash="h",
                    run_inputs={"kind": "moments", "current_weights": {"A": 0.5}}, inherit=RUN_INHERITS,
                    event_id=uuid.uuid4(), result_id=uuid.uuid4(), response=b"wire",
                )  # fmt: skip

            # A record with every part of the schema set (relaxations, Black-Litterman, windows, drawdown).
            rich = replace(result_record(rich_response()), portfolio_id=a, request_id=key)
            first = encoded(configuration(a), rich)
            inherited = encoded(configuration(b), result(b))  # lookback 0, inherits the stored 250: version 1
            changed = encoded(configuration(b, objective="OBJECTIVE_MIN_VOLATILITY"), result(b))  # version 2
            before = PendingRun(configuration(a), result(a, unique("r"), 0.2), "h", {"kind": "moments"}, RUN_INHERITS)
            stored = await store.persist_runs([before, first, inherited, changed])
            assert isinstance(stored[0], ResultRecord)
            stamps = stored[1:]
            assert all(isinstance(s, RunStamp) for s in stamps)
            assert [s.configuration_version for s in stamps if isinstance(s, RunStamp)] == [1, 1, 2]
            assert stored[0].metadata.timestamp is not None
            times = [stored[0].metadata.timestamp] + [s.timestamp_ns for s in stamps if isinstance(s, RunStamp)]
            assert times == sorted(times) and len(set(times)) == 4  # request order, each its own instant
            stamp = stamps[0]
            assert isinstance(stamp, RunStamp)
            expected = completed(
                rich, event_id=uuid.UUID(first.event_id), result_id=uuid.UUID(first.result_id),
                configuration_version=1,
                timestamp=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=stamp.timestamp_ns // 1000),
            )  # fmt: skip
            found = await store.find_results([key])
            assert found[key].request_hash == "h" and found[key].result == expected
            assert await self.stored_runs(store, a) == (2, 2, 1)
            assert (await store.get_configuration(b)).lookback_periods == 250
            assert (await store.get_configuration(b)).objective == "OBJECTIVE_MIN_VOLATILITY"

        self.run(scenario)

    def test_a_precomputed_content_counts_only_while_no_inherited_field_changes_the_configuration(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a = unique("bulk-content")
            await store.upsert_configuration(configuration(a, lookback_periods=250))  # an operator's window
            run = configuration(a)  # a run's configuration: lookback 0, inherits the stored 250
            same = PendingRun(run, result(a), "", {"kind": "moments"}, RUN_INHERITS, content_of(run))
            stored = await store.persist_runs([same])
            assert stored[0].metadata.configuration_version == 1  # the inherited window: the same content
            changed = configuration(a, objective="OBJECTIVE_MIN_VOLATILITY")
            new = PendingRun(changed, result(a), "", {"kind": "moments"}, RUN_INHERITS, content_of(changed))
            assert (await store.persist_runs([new]))[0].metadata.configuration_version == 2
            assert (await store.get_configuration(a)).lookback_periods == 250

        self.run(scenario)

    def test_a_bulk_past_its_deadline_stores_nothing(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a = unique("bulk-late")
            runs = [PendingRun(configuration(a), result(a), "", {"kind": "moments"})]
            with pytest.raises(DeadlineExceededError):
                await store.persist_runs(runs, commit_by=time.monotonic() - 1.0)
            assert await self.stored_runs(store, a) == (0, 0, 0)

        self.run(scenario)

    # --- configurations ------------------------------------------------------------------------------------------

    def test_runs_version_the_configuration_by_content(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio = unique("p")
            original = configuration(portfolio)
            changed = configuration(portfolio, objective="OBJECTIVE_MIN_VOLATILITY")
            versions = []
            for config in (original, original, changed, original):
                versions.append((await persist(store, config)).metadata.configuration_version)
            assert versions == [1, 1, 2, 3]
            first = await store.get_configuration(portfolio, 1)
            assert (first.version, first.objective) == (1, "OBJECTIVE_MAX_SHARPE")
            assert (await store.get_configuration(portfolio, 2)).objective == "OBJECTIVE_MIN_VOLATILITY"
            assert (await store.get_configuration(portfolio)).version == 3

        self.run(scenario)

    def test_upsert_writes_a_version_only_when_the_content_changes(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio = unique("p")
            config = configuration(portfolio, lookback_periods=250, market_symbol="SPY")
            stored, created = await store.upsert_configuration(config)
            assert (stored.version, created) == (1, True)
            assert stored.created_at is not None and stored.created_at.tzinfo is not None
            assert [(s.symbol, s.sector) for s in stored.strategies] == [("A", "Tech"), ("B", "Energy")]
            assert stored.constraints.max_weight == 0.7
            assert (stored.lookback_periods, stored.market_symbol, stored.enabled) == (250, "SPY", True)
            assert stored.black_litterman is None
            again, created = await store.upsert_configuration(config)
            assert (again.version, created) == (1, False)
            assert again == stored
            disabled, created = await store.upsert_configuration(
                configuration(portfolio, lookback_periods=250, market_symbol="SPY", enabled=False)
            )
            assert (disabled.version, disabled.enabled, created) == (2, False, True)

        self.run(scenario)

    def test_a_full_configuration_round_trips(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            config = full_domain_configuration(unique("full"))
            stored, created = await store.upsert_configuration(config)
            assert created and stored.version == 1 and stored.created_at is not None
            assert replace(stored, version=0, created_at=None) == config
            assert await store.get_configuration(config.portfolio_id, 1) == stored
            again, created = await store.upsert_configuration(config)
            assert (again, created) == (stored, False)

        self.run(scenario)

    def test_runs_keep_what_the_operator_configured(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio = unique("p")
            await store.upsert_configuration(
                configuration(portfolio, enabled=False, lookback_periods=60, market_symbol="SPY")
            )
            # A run on stored prices inherits enabled, lookback and market symbol: its content is unchanged.
            on_stored = await persist(store, configuration(portfolio), inherit=RUN_INHERITS)
            assert on_stored.metadata.configuration_version == 1
            # A run on inline data inherits only enabled: its window fields make a new version, still disabled.
            inline = await persist(store, configuration(portfolio), inherit=("enabled",))
            assert inline.metadata.configuration_version == 2
            latest = await store.get_configuration(portfolio)
            assert (latest.enabled, latest.lookback_periods, latest.market_symbol) == (False, 0, "")

        self.run(scenario)

    def test_missing_configurations_are_not_found(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            portfolio = unique("p")
            with pytest.raises(NotFoundError, match="no configuration for portfolio"):
                await store.get_configuration(portfolio)
            await store.upsert_configuration(configuration(portfolio))
            with pytest.raises(NotFoundError, match="no configuration version 9 for portfolio"):
                await store.get_configuration(portfolio, 9)

        self.run(scenario)

    def test_list_configurations_pages_the_latest_versions_by_portfolio_id(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            prefix = unique("list") + "/"
            for name in ("c", "a", "b"):
                await store.upsert_configuration(configuration(prefix + name))
            await store.upsert_configuration(configuration(prefix + "a", objective="OBJECTIVE_MIN_VOLATILITY"))
            page = await store.list_configurations(after_portfolio_id=prefix, limit=2)
            assert [(c.portfolio_id, c.version) for c in page] == [(prefix + "a", 2), (prefix + "b", 1)]
            assert page[0].objective == "OBJECTIVE_MIN_VOLATILITY"
            rest = await store.list_configurations(after_portfolio_id=prefix + "b", limit=10)
            assert rest[0].portfolio_id == prefix + "c"
            assert all(not c.portfolio_id.startswith(prefix) for c in rest[1:])

        self.run(scenario)

    # --- market data ---------------------------------------------------------------------------------------------

    def test_price_window_is_the_union_of_the_strategies_dates_with_gaps(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, b = unique("A"), unique("B")
            written = await store.ingest_bars(
                bars(a, [0, 1, 2, 4], [10.0, 11.0, 12.0, 14.0]) + bars(b, [0, 2, 3, 4], [20.0, 22.0, 23.0, 24.0])
            )
            assert written == 8
            window = await store.load_prices([b, a], start=None, end=None, lookback_periods=0)
            np.testing.assert_array_equal(window.timestamps, dates([0, 1, 2, 3, 4]))
            expected = np.array([[20, 10], [np.nan, 11], [22, 12], [23, np.nan], [24, 14]], dtype=float)
            np.testing.assert_array_equal(window.prices, expected)
            assert window.market_prices is None

        self.run(scenario)

    def test_price_window_bounds_are_inclusive_and_lookback_keeps_the_last_returns(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, b = unique("A"), unique("B")
            await store.ingest_bars(bars(a, list(range(8)), [float(10 + d) for d in range(8)]))
            await store.ingest_bars(bars(b, list(range(8)), [float(50 - d) for d in range(8)]))
            window = await store.load_prices([a, b], start=T0 + DAY, end=T0 + 6 * DAY, lookback_periods=3)
            np.testing.assert_array_equal(window.timestamps, dates([3, 4, 5, 6]))
            np.testing.assert_array_equal(window.prices, [[13, 47], [14, 46], [15, 45], [16, 44]])

        self.run(scenario)

    def test_market_series_is_aligned_as_of_each_strategy_date(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, b, market = unique("A"), unique("B"), unique("M")
            await store.ingest_bars(
                bars(a, [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]) + bars(b, [1, 2, 3, 4], [5.0, 6.0, 7.0, 8.0])
            )
            # The market trades on other days: day 0, day 2 and day 2.5; day 2.5 adds no date to the calendar.
            await store.ingest_bars(
                [(market, T0, 100.0, None), (market, T0 + 2 * DAY, 102.0, None), (market, T0 + 2.5 * DAY, 103.0, None)]
            )
            window = await store.load_prices([a, b], start=None, end=None, lookback_periods=0, market_symbol=market)
            np.testing.assert_array_equal(window.timestamps, dates([1, 2, 3, 4]))
            assert window.market_prices is not None
            np.testing.assert_array_equal(window.market_prices, [100.0, 102.0, 103.0, 103.0])

        self.run(scenario)

    def test_a_later_bar_replaces_an_earlier_one(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            a, b = unique("A"), unique("B")
            await store.ingest_bars(bars(a, [0, 1, 2], [1.0, 2.0, 3.0]) + bars(b, [0, 1, 2], [4.0, 5.0, 6.0]))
            # Within one message the later of two bars wins; across messages the newer message does.
            assert await store.ingest_bars([(a, T0 + DAY, 7.0, None), (a, T0 + DAY, 8.0, None)]) == 1
            window = await store.load_prices([a, b], start=None, end=None, lookback_periods=0)
            np.testing.assert_array_equal(window.prices[:, 0], [1.0, 8.0, 3.0])
            assert await store.ingest_bars([]) == 0

        self.run(scenario)

    def test_too_few_prices_name_every_short_symbol(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            full, short, absent, market = unique("F"), unique("S"), unique("X"), unique("M")
            await store.ingest_bars(bars(full, [0, 1, 2], [1.0, 2.0, 3.0]) + bars(short, [0, 1], [1.0, 2.0]))
            with pytest.raises(PreconditionError) as caught:
                await store.load_prices(
                    [full, short, absent], start=None, end=None, lookback_periods=0, market_symbol=market
                )
            violations = caught.value.precondition_violations
            assert [(v.type, v.subject) for v in violations] == [
                ("MISSING_MARKET_DATA", short),
                ("MISSING_MARKET_DATA", absent),
                ("MISSING_MARKET_DATA", market),
            ]

        self.run(scenario)


class TestInMemoryOptimizationStore(OptimizationStoreContract):
    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[OptimizationStore]:
        yield InMemoryOptimizationStore()

    async def stored_runs(self, store: OptimizationStore, portfolio_id: str) -> tuple[int, int, int]:
        assert isinstance(store, InMemoryOptimizationStore)
        runs = store.runs(portfolio_id)
        return len(runs), len(runs), min(len(runs), 1)


@pytest.mark.integration
class TestPostgresOptimizationStore(OptimizationStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    @asynccontextmanager
    async def open_store(self) -> AsyncIterator[OptimizationStore]:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=5)
        self.pool = pool
        try:
            yield PostgresOptimizationStore(pool)
        finally:
            await pool.close()

    async def stored_runs(self, store: OptimizationStore, portfolio_id: str) -> tuple[int, int, int]:
        counts = []
        for table in ("optimization_results", "portfolio_optimized", "latest_portfolio_optimizations"):
            count = await self.pool.fetchval(f"SELECT count(*) FROM {table} WHERE portfolio_id = $1", portfolio_id)
            counts.append(int(count))
        return counts[0], counts[1], counts[2]

    # --- the one-statement path (store_optimization_run, migration 0012) --------------------------------------------

    async def stored_row(self, result_id: str) -> tuple[str, dict[str, Any], dict[str, Any], datetime]:
        """(metadata.timestamp in the result JSON, the result JSON, the event's metadata, the event's timestamp)."""
        row = await self.pool.fetchrow(
            'SELECT r.result, e.metadata, e."timestamp" FROM optimization_results r '
            "JOIN portfolio_optimized e ON e.result_id = r.result_id WHERE r.result_id = $1",
            uuid.UUID(result_id),
        )
        assert row is not None
        result_json, metadata = json.loads(row["result"]), json.loads(row["metadata"])
        return result_json["metadata"]["timestamp"], result_json, metadata, row["timestamp"]

    def test_a_repeated_configuration_is_stored_in_one_statement_with_the_database_time(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            sent: list[str] = []

            async def log_queries(conn: asyncpg.Connection) -> None:
                conn.add_query_logger(lambda query: sent.append(query.query))

            async with asyncpg.create_pool(self.dsn, min_size=1, max_size=1, init=log_queries) as pool:
                logged = PostgresOptimizationStore(pool)
                config = configuration(unique("one-statement"))
                first = await persist(logged, config)
                # The first run of a portfolio: a transaction (this pool's reset on release left out).
                statements = [q for q in sent if not q.startswith("SELECT pg_advisory_unlock_all")]
                assert [statements[0], statements[-1], len(statements)] == ["BEGIN;", "COMMIT;", 6]
                sent.clear()
                second = await persist(logged, config, weight_a=0.25)
                statements = [q for q in sent if not q.startswith("SELECT pg_advisory_unlock_all")]
                assert len(statements) == 1 and "store_optimization_run" in statements[0]
            assert second.metadata.configuration_version == first.metadata.configuration_version == 1
            assert second.weights == {"A": 0.25, "B": 0.75}
            stamp, result_json, metadata, event_time = await self.stored_row(second.metadata.result_id)
            # The run's time is the database's, written alike into both JSON documents and the event row, and the
            # record the store returns is the one it stored.
            assert event_time == instant(second.metadata.timestamp)
            assert stamp == metadata["timestamp"] == encode_instant(second.metadata.timestamp or 0)
            assert ResultRecord.from_json(result_json) == second
            assert event_time > instant(first.metadata.timestamp)
            assert await self.stored_runs(store, config.portfolio_id) == (2, 2, 1)
            latest = await self.pool.fetchval(
                "SELECT result_id FROM latest_portfolio_optimizations WHERE portfolio_id = $1", config.portfolio_id
            )
            assert str(latest) == second.metadata.result_id

        self.run(scenario)

    def test_a_head_moved_by_another_replica_is_noticed_under_the_lock(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            config = configuration(unique("moved"))
            await persist(store, config)
            # Another replica (its own store, so its own memory of heads) stores version 2 ...
            other = PostgresOptimizationStore(self.pool)
            moved = await persist(other, replace(config, constraints=OptimizationConstraints(max_weight=0.9)))
            assert moved.metadata.configuration_version == 2
            # ... so this store's remembered head (version 1) no longer holds: the run makes version 3, not a run
            # of version 1 that would hide the change.
            again = await persist(store, config)
            assert again.metadata.configuration_version == 3
            versions = await self.pool.fetch(
                "SELECT version, content_hash FROM optimization_configurations WHERE portfolio_id = $1 ORDER BY 1",
                config.portfolio_id,
            )
            assert [r["version"] for r in versions] == [1, 2, 3]
            assert versions[0]["content_hash"] == versions[2]["content_hash"]
            assert await self.stored_runs(store, config.portfolio_id) == (3, 3, 1)

        self.run(scenario)

    def test_a_deadline_passed_while_the_one_statement_path_waits_writes_nothing(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            config = configuration(unique("late"))
            await persist(store, config)
            # Another call holds the portfolio's lock for 0.4 s; this run's deadline passes while it waits there.
            async with self.pool.acquire() as holder, holder.transaction():
                await holder.execute("SELECT pg_advisory_xact_lock(hashtext($1))", config.portfolio_id)
                late = asyncio.create_task(
                    store.persist_run(
                        configuration=config,
                        result=result(config.portfolio_id),
                        request_hash="hash-1",
                        run_inputs={"kind": "returns", "current_weights": {}},
                        inherit=("enabled",),
                        commit_by=time.monotonic() + 0.15,
                    )
                )
                await asyncio.sleep(0.4)
            with pytest.raises(DeadlineExceededError):
                await late
            assert await self.stored_runs(store, config.portfolio_id) == (1, 1, 1)

        self.run(scenario)

    def test_a_repeated_request_id_in_the_one_statement_path_is_an_integrity_error(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            config = configuration(unique("one-statement-key"))
            key = unique("key")
            await persist(store, config, key)
            with pytest.raises(IntegrityError):
                await persist(store, config, key)
            assert await self.stored_runs(store, config.portfolio_id) == (1, 1, 1)

        self.run(scenario)

    def test_a_run_queued_behind_a_configuration_change_sees_the_new_version(self) -> None:
        async def scenario(store: OptimizationStore) -> None:
            config = configuration(unique("queued"))
            await persist(store, config)  # version 1
            async with self.pool.acquire() as other, other.transaction():
                # Another replica's run holds the portfolio's lock and has written version 2, not yet committed.
                await other.execute("SELECT pg_advisory_xact_lock(hashtext($1))", config.portfolio_id)
                await other.execute(
                    "CREATE TEMP TABLE v2 ON COMMIT DROP AS SELECT * FROM optimization_configurations "
                    "WHERE portfolio_id = $1 AND version = 1",
                    config.portfolio_id,
                )
                await other.execute("UPDATE v2 SET version = 2, content_hash = 'another-content'")
                await other.execute("INSERT INTO optimization_configurations SELECT * FROM v2")
                # This run (another store: no remembered head, so the transactional path) waits for the lock ...
                queued = asyncio.create_task(
                    persist(
                        PostgresOptimizationStore(self.pool),
                        replace(config, constraints=OptimizationConstraints(max_weight=0.8)),
                    )
                )
                await asyncio.sleep(0.3)
                assert not queued.done()
            # ... and, once version 2 is committed, reads it: its own content is version 3.
            record = await asyncio.wait_for(queued, timeout=10)
            assert record.metadata.configuration_version == 3

        self.run(scenario)
