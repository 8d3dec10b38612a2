"""The command side's write model over PostgreSQL + TimescaleDB (asyncpg): the ``OptimizationStore`` backend.

One optimization run is one transaction: the configuration version, the result row, the
``portfolio_optimized`` event in the hypertable, the latest-per-portfolio read model and a NOTIFY to live
listeners commit together or not at all. Runs of the same portfolio are serialised inside the transaction by
an advisory lock, so configuration versions never race. A run of the configuration version this store last saw
for the portfolio takes one statement (the ``store_optimization_run`` function of migration 0012, which checks the
head under the lock); any other run, or one whose head moved meanwhile, takes the transactional path of five
round trips. A batch's runs are stored many per transaction (:meth:`PostgresOptimizationStore.persist_runs`: the
portfolios' locks, one read of their heads, one ``COPY`` into a staging table and one statement that writes the
results, events, read model and notifications). asyncpg's errors are translated by
``command_side.postgres_errors`` (a repeated ``request_id`` raises ``services.errors.IntegrityError``).

Why one module: it is one port's backend, and the one-run, one-statement and bulk paths share the SQL of the
same four tables and the configuration-head cache that lets a run take the one-statement path.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from command_side.configuration_records import recompute_from_column
from command_side.metrics import event_written
from command_side.optimization_store import (
    Bar,
    Configuration,
    ConfigurationHead,
    ConfigurationVersion,
    EncodedRun,
    OptimizationStore,
    PendingRun,
    PriceWindow,
    RunStamp,
    StoredResult,
    check_commit_by,
    completed,
    configuration_from_row,
    configuration_not_found,
    configuration_row,
    content_of,
    encode_run,
    epoch_microseconds,
    next_configuration_version,
    price_window,
)
from command_side.postgres_errors import Connection, postgres_errors
from command_side.postgres_errors import operational_errors as database_errors
from command_side.recompute_store import ENQUEUE_MARKET_DATA_JOBS, INGEST_VERSION_LOCK
from command_side.result_records import ResultRecord, run_inputs_json
from services.errors import DeadlineExceededError

# ``Connection`` and ``database_errors`` are re-exported for command_side.rebalancing_repository, which imports
# them from here: its ``store_errors`` wraps the connection-only translation and maps constraint violations to
# IntegrityError itself (``command_side.postgres_errors.postgres_errors`` does both).
__all__ = [
    "NOTIFY_CHANNEL",
    "Connection",
    "PostgresOptimizationStore",
    "PriceWindow",
    "StoredResult",
    "database_errors",
]

NOTIFY_CHANNEL = "portfolio_optimized"

_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1))"
"""Serialise the runs of one portfolio (transaction-scoped advisory lock)."""

_HEAD = """
SELECT clock_timestamp() AS now, head.*
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT version, content_hash, enabled, lookback_periods, market_symbol, recompute FROM optimization_configurations
    WHERE portfolio_id = $1 ORDER BY version DESC LIMIT 1
) AS head ON true"""
"""The run's timestamp and the portfolio's current configuration version (NULL columns when none). A statement of
its own after ``_LOCK``: under READ COMMITTED a statement's snapshot is taken when it starts, so a head read in
the locking statement itself would miss a version committed by the run it waited for."""

_STORE_RUN = """
WITH result AS (
    INSERT INTO optimization_results (result_id, portfolio_id, configuration_version, request_id, request_hash,
        event_id, created_at, objective, method, weights, expected_return, volatility, sharpe_ratio,
        objective_value, solver, constraints_satisfied, result, run_inputs)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16, $17::jsonb, $18::jsonb)
), event AS (
    INSERT INTO portfolio_optimized (event_id, "timestamp", portfolio_id, result_id, configuration_version,
        request_id, objective, method, weights, expected_return, volatility, sharpe_ratio, metadata)
    VALUES ($6, $7, $2, $1, $3, $4, $8, $9, $10::jsonb, $11, $12, $13, $19::jsonb)
), latest AS (
    INSERT INTO latest_portfolio_optimizations (event_id, "timestamp", portfolio_id, result_id,
        configuration_version, request_id, objective, method, weights, expected_return, volatility,
        sharpe_ratio, metadata)
    VALUES ($6, $7, $2, $1, $3, $4, $8, $9, $10::jsonb, $11, $12, $13, $19::jsonb)
    ON CONFLICT (portfolio_id) DO UPDATE SET
        event_id = EXCLUDED.event_id, "timestamp" = EXCLUDED."timestamp",
        result_id = EXCLUDED.result_id, configuration_version = EXCLUDED.configuration_version,
        request_id = EXCLUDED.request_id, objective = EXCLUDED.objective,
        method = EXCLUDED.method, weights = EXCLUDED.weights,
        expected_return = EXCLUDED.expected_return, volatility = EXCLUDED.volatility,
        sharpe_ratio = EXCLUDED.sharpe_ratio, metadata = EXCLUDED.metadata
    WHERE (latest_portfolio_optimizations."timestamp", latest_portfolio_optimizations.event_id)
        <= (EXCLUDED."timestamp", EXCLUDED.event_id)
)
SELECT pg_notify($20, $21)"""
"""The result row, the ``portfolio_optimized`` event, the latest read model and the notification: one statement,
one round trip (data-modifying CTEs all run, on the transaction's snapshot)."""


_STORE_RUN_OF_HEAD = """
SELECT store_optimization_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14, $15, $16, $17,
    $18::jsonb, $19::jsonb, $20::jsonb, $21)"""
"""A run of an unchanged configuration in one statement and one round trip (migration 0012): the run's timestamp,
or NULL when the portfolio's head moved."""

_LOCK_MANY = """
SELECT count(pg_advisory_xact_lock(key))
FROM (SELECT DISTINCT hashtext(portfolio_id) AS key FROM unnest($1::text[]) AS p(portfolio_id) ORDER BY key) AS keys"""
"""The locks of many portfolios (``_LOCK``'s keys), taken in key order so that two bulk writes never deadlock."""

_HEADS = """
SELECT clock_timestamp() AS now, p.portfolio_id, head.*
FROM unnest($1::text[]) AS p(portfolio_id)
LEFT JOIN LATERAL (
    SELECT version, content_hash, enabled, lookback_periods, market_symbol, recompute FROM optimization_configurations
    WHERE portfolio_id = p.portfolio_id ORDER BY version DESC LIMIT 1
) AS head ON true"""
"""``_HEAD`` for many portfolios, a statement after their locks."""

_RUN_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS optimization_run_stage (
    seq integer, result_id uuid, portfolio_id text, configuration_version integer, request_id text,
    request_hash text, event_id uuid, "timestamp" timestamptz, objective text, method text, weights jsonb,
    expected_return double precision, volatility double precision, sharpe_ratio double precision,
    objective_value double precision, solver text, constraints_satisfied boolean, result jsonb, run_inputs jsonb,
    metadata jsonb
) ON COMMIT DELETE ROWS"""
"""The rows of a bulk write, copied in before one statement spreads them (emptied at each commit). The JSON columns
are jsonb here: each document is parsed once, by the COPY, and the statement copies the parsed value into each
table (``weights`` goes to three tables and ``metadata`` to two)."""

_RUN_STAGE_COLUMNS = (
    "seq", "result_id", "portfolio_id", "configuration_version", "request_id", "request_hash", "event_id",
    "timestamp", "objective", "method", "weights", "expected_return", "volatility", "sharpe_ratio",
    "objective_value", "solver", "constraints_satisfied", "result", "run_inputs", "metadata",
)  # fmt: skip

_STORE_STAGED_RUNS = """
WITH result AS (
    INSERT INTO optimization_results (result_id, portfolio_id, configuration_version, request_id, request_hash,
        event_id, created_at, objective, method, weights, expected_return, volatility, sharpe_ratio,
        objective_value, solver, constraints_satisfied, result, run_inputs)
    SELECT result_id, portfolio_id, configuration_version, request_id, request_hash, event_id, "timestamp",
        objective, method, weights, expected_return, volatility, sharpe_ratio, objective_value, solver,
        constraints_satisfied, result, run_inputs
    FROM optimization_run_stage ORDER BY seq
), event AS (
    INSERT INTO portfolio_optimized (event_id, "timestamp", portfolio_id, result_id, configuration_version,
        request_id, objective, method, weights, expected_return, volatility, sharpe_ratio, metadata)
    SELECT event_id, "timestamp", portfolio_id, result_id, configuration_version, request_id, objective, method,
        weights, expected_return, volatility, sharpe_ratio, metadata
    FROM optimization_run_stage ORDER BY seq
), latest AS (
    INSERT INTO latest_portfolio_optimizations AS latest (event_id, "timestamp", portfolio_id, result_id,
        configuration_version, request_id, objective, method, weights, expected_return, volatility,
        sharpe_ratio, metadata)
    SELECT DISTINCT ON (portfolio_id) event_id, "timestamp", portfolio_id, result_id, configuration_version,
        request_id, objective, method, weights, expected_return, volatility, sharpe_ratio, metadata
    FROM optimization_run_stage ORDER BY portfolio_id, seq DESC
    ON CONFLICT (portfolio_id) DO UPDATE SET
        event_id = EXCLUDED.event_id, "timestamp" = EXCLUDED."timestamp",
        result_id = EXCLUDED.result_id, configuration_version = EXCLUDED.configuration_version,
        request_id = EXCLUDED.request_id, objective = EXCLUDED.objective,
        method = EXCLUDED.method, weights = EXCLUDED.weights,
        expected_return = EXCLUDED.expected_return, volatility = EXCLUDED.volatility,
        sharpe_ratio = EXCLUDED.sharpe_ratio, metadata = EXCLUDED.metadata
    WHERE (latest."timestamp", latest.event_id) <= (EXCLUDED."timestamp", EXCLUDED.event_id)
)
SELECT count(*) AS notified, clock_timestamp() AS now
FROM (SELECT pg_notify($1, portfolio_id || ' ' || event_id::text) FROM optimization_run_stage ORDER BY seq) AS n"""
"""The staged runs' results, events, read model (each portfolio's last run) and notifications: one statement."""

_DEADLINE_SQLSTATE = "SD001"
"""What ``store_optimization_run`` raises when the caller's deadline passed before the commit."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

HEAD_CACHE_SIZE = 100_000
"""Portfolios whose configuration head a store remembers (about 200 bytes each); the map is cleared when full."""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class PostgresOptimizationStore(OptimizationStore):
    """:class:`~command_side.optimization_store.OptimizationStore` over PostgreSQL + TimescaleDB.

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool to the migrated database.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool
        self._heads: dict[str, ConfigurationHead] = {}
        """The configuration head each portfolio had after this store's last run of it (a hint, checked under
        the portfolio's lock by ``store_optimization_run``)."""

    async def find_result(self, request_id: str) -> StoredResult | None:
        """The stored result of an earlier request with this idempotency key, if any."""
        async with postgres_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT request_hash, result FROM optimization_results WHERE request_id = $1", request_id
            )
        if row is None:
            return None
        return StoredResult(row["request_hash"], ResultRecord.from_json(json.loads(row["result"])))

    async def find_results(self, request_ids: Sequence[str]) -> dict[str, StoredResult]:
        """The stored results of the keys that have one, in one query."""
        if not request_ids:
            return {}
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT request_id, request_hash, result FROM optimization_results WHERE request_id = ANY($1::text[])",
                list(request_ids),
            )
        return {
            row["request_id"]: StoredResult(row["request_hash"], ResultRecord.from_json(json.loads(row["result"])))
            for row in rows
        }

    async def load_prices(
        self,
        symbols: Sequence[str],
        *,
        start: datetime | None,
        end: datetime | None,
        lookback_periods: int,
        market_symbol: str = "",
    ) -> PriceWindow:
        """Prices of ``symbols`` in ``[start, end]``; see :meth:`OptimizationStore.load_prices`."""
        wanted = sorted(set(symbols) | ({market_symbol} if market_symbol else set()))
        query = ['SELECT symbol, "timestamp", price FROM market_data WHERE symbol = ANY($1::text[])']
        args: list[Any] = [wanted]
        if start is not None:
            args.append(start)
            query.append(f'AND "timestamp" >= ${len(args)}')
        if end is not None:
            args.append(end)
            query.append(f'AND "timestamp" <= ${len(args)}')
        query.append('ORDER BY "timestamp"')
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(" ".join(query), *args)
        series: dict[str, tuple[list[int], list[float]]] = {s: ([], []) for s in wanted}
        for r in rows:
            stamps, values = series[r["symbol"]]
            stamps.append(epoch_microseconds(r["timestamp"]))
            values.append(r["price"])
        return price_window(symbols, series, lookback_periods=lookback_periods, market_symbol=market_symbol)

    async def persist_run(
        self,
        *,
        configuration: Configuration,
        result: ResultRecord,
        request_hash: str,
        run_inputs: Mapping[str, Any],
        inherit: tuple[str, ...] = ("enabled", "recompute"),
        commit_by: float | None = None,
    ) -> ResultRecord:
        """Store one run in one transaction; see :meth:`OptimizationStore.persist_run`.

        Raises
        ------
        IntegrityError
            When a concurrent request with the same ``request_id`` committed first (the caller replays it).
        OperationalError
            When the database cannot be reached.
        DeadlineExceededError
            ``commit_by`` passed before the commit (the transaction is rolled back).
        """
        event_id, result_id = uuid.uuid4(), uuid.uuid4()
        portfolio_id = configuration.portfolio_id
        head = self._heads.get(portfolio_id)
        if head is not None:
            expected = next_configuration_version(configuration, head, inherit)
            if not expected.new:
                record = await self._store_run_of_head(
                    expected.version, expected.content_hash, result, event_id, result_id, request_hash, run_inputs,
                    configuration, commit_by,
                )  # fmt: skip
                if record is not None:
                    event_written("portfolio_optimized", "PORTFOLIO_OPTIMIZED")  # after the commit
                    return record
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK, portfolio_id)
            row = await conn.fetchrow(_HEAD, portfolio_id)  # a snapshot taken after the lock
            assert row is not None  # the lateral join keeps the lock's row
            now = row["now"]
            stored = await self._store_configuration(conn, configuration, inherit, head=row)
            record = completed(
                result, event_id=event_id, result_id=result_id, configuration_version=stored.version, timestamp=now
            )
            meta = record.metadata
            request_id = record.request_id or None
            # One round trip: the result, the event, the read model and the notification.
            await conn.execute(
                _STORE_RUN,
                result_id, portfolio_id, stored.version, request_id, request_hash, event_id, now,
                configuration.objective, configuration.method, _json(record.weights), record.expected_return,
                record.volatility, record.sharpe_ratio, meta.objective_value, meta.solver,
                meta.constraints_satisfied, _json(record.to_json()), _json(run_inputs_json(run_inputs)),
                _json(meta.to_json()), NOTIFY_CHANNEL, f"{portfolio_id} {event_id}",
            )  # fmt: skip
            check_commit_by(commit_by)
        self._remember_head(stored)
        event_written("portfolio_optimized", "PORTFOLIO_OPTIMIZED")  # after the commit
        return record

    async def persist_runs(
        self, runs: Sequence[PendingRun | EncodedRun], *, commit_by: float | None = None
    ) -> list[ResultRecord | RunStamp]:
        """Store many runs in one transaction; see :meth:`OptimizationStore.persist_runs`.

        The portfolios' locks (in key order), one read of their heads and of the database clock, then one ``COPY``
        of the rows into a staging table and one statement that writes them all. The ``k``-th run is stamped the
        clock plus ``k`` microseconds (each portfolio's history in the given order); the commit waits, if need
        be, until the clock is past the last stamp, so that a later run of the same portfolio is stamped after it.
        A :class:`PendingRun` is encoded here (``encode_run``); an :class:`EncodedRun` (encoded in a worker) only
        has its timestamp and version put between its parts.

        Raises
        ------
        IntegrityError
            A ``request_id`` is already stored or given twice (nothing is stored).
        OperationalError, DeadlineExceededError, PersistenceError
            As :meth:`persist_run` (nothing is stored).
        """
        if not runs:
            return []
        encoded = [run if isinstance(run, EncodedRun) else _encoded(run) for run in runs]
        portfolios = sorted({run.portfolio_id for run in encoded})
        out: list[ResultRecord | RunStamp] = []
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_RUN_STAGE)
            await conn.execute(_LOCK_MANY, portfolios)
            rows = await conn.fetch(_HEADS, portfolios)  # a snapshot taken after the locks
            now = max(row["now"] for row in rows)
            heads = {row["portfolio_id"]: _head(row) for row in rows}
            base_us = epoch_microseconds(now)
            stage = []
            new_versions: list[ConfigurationVersion] = []
            for seq, (given, run) in enumerate(zip(runs, encoded, strict=True)):
                portfolio_id = run.portfolio_id
                head = heads[portfolio_id]
                version = run.version_on(head)
                if version is None:
                    assert head is not None  # version_on reads an unchanged head only
                    number = head.version
                else:
                    number = version.version
                    if version.new:
                        new_versions.append(version)
                        heads[portfolio_id] = _head_of(version)
                stamp = now + timedelta(microseconds=seq)
                stamp_ns = (base_us + seq) * 1000
                metadata = run.metadata_json(stamp_ns, number)
                stage.append((
                    seq, run.result_id, portfolio_id, number, run.request_id or None, run.request_hash,
                    run.event_id, stamp, run.objective, run.method, run.weights, run.expected_return,
                    run.volatility, run.sharpe_ratio, run.objective_value, run.solver, run.constraints_satisfied,
                    run.result_json(metadata), run.run_inputs, metadata,
                ))  # fmt: skip
                if isinstance(given, EncodedRun):
                    out.append(RunStamp(stamp_ns, number))
                else:
                    out.append(
                        completed(
                            given.result,
                            event_id=uuid.UUID(run.event_id),
                            result_id=uuid.UUID(run.result_id),
                            configuration_version=number,
                            timestamp=stamp,
                        )
                    )
            if new_versions:
                await conn.executemany(_INSERT_CONFIGURATION, [_configuration_arguments(v) for v in new_versions])
            await conn.copy_records_to_table("optimization_run_stage", records=stage, columns=_RUN_STAGE_COLUMNS)
            written = await conn.fetchrow(_STORE_STAGED_RUNS, NOTIFY_CHANNEL)
            assert written is not None
            ahead = (now + timedelta(microseconds=len(runs)) - written["now"]).total_seconds()
            if ahead > 0:  # the clock must pass the last stamp before the locks go
                await asyncio.sleep(ahead)
            check_commit_by(commit_by)
        for portfolio_id in portfolios:
            known = heads[portfolio_id]
            if known is not None:
                self._remember(portfolio_id, known)
        for _ in out:
            event_written("portfolio_optimized", "PORTFOLIO_OPTIMIZED")  # after the commit
        return out

    def _remember_head(self, stored: ConfigurationVersion) -> None:
        """Keep ``stored`` as its portfolio's head for the next run's one-statement path (cleared when full)."""
        self._remember(stored.configuration.portfolio_id, _head_of(stored))

    def _remember(self, portfolio_id: str, head: ConfigurationHead) -> None:
        if len(self._heads) >= HEAD_CACHE_SIZE:
            self._heads.clear()
        self._heads[portfolio_id] = head

    async def _store_run_of_head(
        self,
        version: int,
        content_hash: str,
        result: ResultRecord,
        event_id: uuid.UUID,
        result_id: uuid.UUID,
        request_hash: str,
        run_inputs: Mapping[str, Any],
        configuration: Configuration,
        commit_by: float | None,
    ) -> ResultRecord | None:
        """Store a run of configuration ``version`` in one statement (``store_optimization_run``, migration 0012).

        Returns the stored record, or None when the portfolio's head is no longer ``version`` with
        ``content_hash`` (nothing written; the caller takes the transactional path).

        Raises
        ------
        IntegrityError, OperationalError, DeadlineExceededError
            As :meth:`persist_run`.
        """
        # The run's timestamp comes from the database (one clock for every replica); the function writes it into
        # the two JSON documents, so they are encoded here without it.
        unstamped = completed(
            result, event_id=event_id, result_id=result_id, configuration_version=version, timestamp=_EPOCH
        )
        unstamped = replace(unstamped, metadata=replace(unstamped.metadata, timestamp=None))
        meta = unstamped.metadata
        commit_within_s = None if commit_by is None else commit_by - time.monotonic()
        if commit_within_s is not None and commit_within_s <= 0:
            check_commit_by(commit_by)
        async with postgres_errors(), self._pool.acquire() as conn:
            try:
                now = await conn.fetchval(
                    _STORE_RUN_OF_HEAD,
                    configuration.portfolio_id, version, content_hash, commit_within_s, result_id,
                    unstamped.request_id or None, request_hash, event_id, configuration.objective,
                    configuration.method, _json(unstamped.weights), unstamped.expected_return, unstamped.volatility,
                    unstamped.sharpe_ratio, meta.objective_value, meta.solver, meta.constraints_satisfied,
                    _json(unstamped.to_json()), _json(run_inputs_json(run_inputs)), _json(meta.to_json()),
                    NOTIFY_CHANNEL,
                )  # fmt: skip
            except asyncpg.PostgresError as exc:
                if exc.sqlstate == _DEADLINE_SQLSTATE:
                    raise DeadlineExceededError("the call's deadline passed before its result was stored") from exc
                raise
        if now is None:
            self._heads.pop(configuration.portfolio_id, None)
            return None
        return completed(result, event_id=event_id, result_id=result_id, configuration_version=version, timestamp=now)

    @staticmethod
    async def _store_configuration(
        conn: Connection,
        config: Configuration,
        inherit: tuple[str, ...] = (),
        *,
        head: asyncpg.Record | None = None,
    ) -> ConfigurationVersion:
        """Version of ``config`` for its portfolio, written when new (see ``next_configuration_version``).

        ``head``: the current version's row as ``_HEAD`` read it (its ``version`` NULL when there is
        none); None reads it here.
        """
        row = head
        if row is None:
            row = await conn.fetchrow(
                "SELECT version, content_hash, enabled, lookback_periods, market_symbol, recompute "
                "FROM optimization_configurations WHERE portfolio_id = $1 ORDER BY version DESC LIMIT 1",
                config.portfolio_id,
            )
        current = None if row is None else _head(row)
        stored = next_configuration_version(config, current, inherit)
        if stored.new:
            await conn.execute(_INSERT_CONFIGURATION, *_configuration_arguments(stored))
        return stored

    async def upsert_configuration(self, config: Configuration) -> tuple[Configuration, bool]:
        """Store ``config`` unless unchanged; see :meth:`OptimizationStore.upsert_configuration`."""
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", config.portfolio_id)
            before = await conn.fetchval(
                "SELECT max(version) FROM optimization_configurations WHERE portfolio_id = $1",
                config.portfolio_id,
            )
            version = (await self._store_configuration(conn, config)).version
            row = await conn.fetchrow(
                "SELECT * FROM optimization_configurations WHERE portfolio_id = $1 AND version = $2",
                config.portfolio_id,
                version,
            )
        assert row is not None  # written (or found) in this transaction
        return _configuration_from_row(row), before is None or version > before

    async def get_configuration(self, portfolio_id: str, version: int = 0) -> Configuration:
        """One configuration version (0 = latest); ``NotFoundError`` when absent."""
        async with postgres_errors(), self._pool.acquire() as conn:
            if version:
                row = await conn.fetchrow(
                    "SELECT * FROM optimization_configurations WHERE portfolio_id = $1 AND version = $2",
                    portfolio_id,
                    version,
                )
            else:
                row = await conn.fetchrow(
                    "SELECT * FROM optimization_configurations WHERE portfolio_id = $1 ORDER BY version DESC LIMIT 1",
                    portfolio_id,
                )
        if row is None:
            raise configuration_not_found(portfolio_id, version)
        return _configuration_from_row(row)

    async def list_configurations(self, *, after_portfolio_id: str, limit: int) -> list[Configuration]:
        """Latest configuration of each portfolio with id > ``after_portfolio_id``, ordered by id."""
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT DISTINCT ON (portfolio_id) * FROM optimization_configurations
                   WHERE portfolio_id > $1 ORDER BY portfolio_id, version DESC LIMIT $2""",
                after_portfolio_id,
                limit,
            )
        return [_configuration_from_row(r) for r in rows]

    async def ingest_bars(self, bars: Iterable[Bar], *, commit_by: float | None = None) -> int:
        """Upsert price bars ``(symbol, timestamp, price, volume)``; returns the rows written.

        In the same transaction, every enabled configuration whose recompute policy re-runs it on market data and
        that holds an ingested symbol gets its recompute job (``command_side.recompute_store``, the outbox). Past
        ``commit_by`` (``time.monotonic()`` seconds) the transaction is rolled back (``DeadlineExceededError``).
        """
        records = list(bars)
        if not records:
            return 0
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS market_data_stage (seq bigserial, symbol text, "
                '"timestamp" timestamptz, price double precision, volume double precision) ON COMMIT DELETE ROWS'
            )
            await conn.copy_records_to_table(
                "market_data_stage", records=records, columns=["symbol", "timestamp", "price", "volume"]
            )
            # A bar sent twice in one message: the later one wins (the same rule as across messages).
            result = await conn.execute(
                """INSERT INTO market_data (symbol, "timestamp", price, volume)
                   SELECT DISTINCT ON (symbol, "timestamp") symbol, "timestamp", price, volume
                   FROM market_data_stage ORDER BY symbol, "timestamp", seq DESC
                   ON CONFLICT (symbol, "timestamp") DO UPDATE SET price = EXCLUDED.price, volume = EXCLUDED.volume"""
            )
            # The outbox: the re-runs these bars call for commit with them, or not at all (command_side.recompute);
            # its data version is read by drift checks only once this commits (INGEST_VERSION_LOCK).
            await conn.execute(INGEST_VERSION_LOCK)
            await conn.execute(ENQUEUE_MARKET_DATA_JOBS)
            check_commit_by(commit_by)
        return int(result.split()[-1])


_INSERT_CONFIGURATION = """
INSERT INTO optimization_configurations (portfolio_id, version, objective, method, strategies, constraints,
    risk_parameters, lookback_periods, market_symbol, enabled, content_hash, black_litterman, recompute)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12::jsonb, $13::jsonb)"""


def _configuration_arguments(stored: ConfigurationVersion) -> tuple[Any, ...]:
    """The arguments of ``_INSERT_CONFIGURATION`` for a new version."""
    columns = configuration_row(stored)
    return (
        stored.configuration.portfolio_id, stored.version, columns["objective"], columns["method"],
        _json(columns["strategies"]), _json(columns["constraints"]), _json(columns["risk_parameters"]),
        columns["lookback_periods"], columns["market_symbol"], columns["enabled"], columns["content_hash"],
        _json(columns["black_litterman"]), _json(columns["recompute"]),
    )  # fmt: skip


def _encoded(run: PendingRun) -> EncodedRun:
    """A run given with its record, encoded as a worker encodes one (new ids)."""
    return encode_run(
        configuration=run.configuration, content=run.content or content_of(run.configuration), result=run.result,
        request_hash=run.request_hash, run_inputs=run.run_inputs, inherit=run.inherit, event_id=uuid.uuid4(),
        result_id=uuid.uuid4(),
    )  # fmt: skip


def _head(row: asyncpg.Record) -> ConfigurationHead | None:
    """The configuration head of a ``_HEAD`` or ``_HEADS`` row (None when its portfolio has no configuration)."""
    if row["version"] is None:
        return None
    return ConfigurationHead(
        version=int(row["version"]),
        content_hash=row["content_hash"],
        enabled=row["enabled"],
        lookback_periods=row["lookback_periods"],
        market_symbol=row["market_symbol"],
        recompute=recompute_from_column(json.loads(row["recompute"])),
    )


def _head_of(stored: ConfigurationVersion) -> ConfigurationHead:
    """The head a portfolio has once ``stored`` is its current version."""
    config = stored.configuration
    return ConfigurationHead(
        version=stored.version,
        content_hash=stored.content_hash,
        enabled=config.enabled,
        lookback_periods=config.lookback_periods,
        market_symbol=config.market_symbol,
        recompute=config.recompute,
    )


def _configuration_from_row(row: asyncpg.Record) -> Configuration:
    return configuration_from_row(
        portfolio_id=row["portfolio_id"], version=row["version"], row=dict(row), created_at=row["created_at"]
    )
