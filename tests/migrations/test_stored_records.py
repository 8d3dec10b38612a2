"""Migration 0008: rows written by the previous version (protobuf bytes and JSON mapping) keep working.

A fresh database is migrated up to 0007, filled the way the previous version's ``PostgresOptimizationStore``
wrote it (the serialized ``OptimizeResponse`` in ``optimization_results.response``, ``json_format.MessageToDict``
of the metadata, camelCase, in the event tables), then migrated to the current schema; replays, GetLatest,
GetHistory and analytics read the converted rows.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
from google.protobuf import json_format
from psycopg.types.json import Jsonb
from yoyo import get_backend, read_migrations

from command_side.records import response_from_record
from command_side.repository import PostgresOptimizationStore
from query_side.repository import PostgresReadStore
from query_side.servicer import OptimizationQueryServicer
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt_cli.migrate import MIGRATIONS_DIR, _yoyo_url, migrate
from tests.command_side.test_records import rich_response

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 3, 9, 30, 0, 123456, tzinfo=UTC)
NO_CONTEXT: Any = None


@pytest.fixture
def previous_version_dsn(db: psycopg.Connection[Any], pg_dsn: str) -> Iterator[str]:
    """A database of the test cluster migrated only as far as the previous version (0001-0007)."""
    name = f"stratopt_previous_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE DATABASE {name}")
    dsn = urlunsplit(urlsplit(pg_dsn)._replace(path=f"/{name}"))
    backend = get_backend(_yoyo_url(dsn))
    try:
        with backend.lock():
            backend.apply_migrations(
                backend.to_apply(read_migrations(str(MIGRATIONS_DIR)).filter(lambda m: m.id < "0008"))
            )
        backend.connection.close()
        yield dsn
    finally:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def write_run_as_before(conn: psycopg.Connection[Any], response: cmd_pb.OptimizeResponse, *, latest: bool) -> None:
    """One run as the previous ``PostgresOptimizationStore.persist_run`` wrote it."""
    meta = response.optimization_metadata
    when = meta.timestamp.ToDatetime(tzinfo=UTC)
    weights = Jsonb(dict(response.optimal_weights))
    metadata = Jsonb(json_format.MessageToDict(meta))  # the protobuf JSON mapping: camelCase keys
    conn.execute(
        """INSERT INTO optimization_results (result_id, portfolio_id, configuration_version, request_id,
               request_hash, event_id, created_at, objective, method, weights, expected_return, volatility,
               sharpe_ratio, objective_value, solver, constraints_satisfied, response, run_inputs)
           VALUES (%s,%s,1,%s,'hash',%s,%s,'OBJECTIVE_MAX_SHARPE','OPTIMIZATION_METHOD_BLACK_LITTERMAN',%s,%s,%s,%s,
                   %s,%s,%s,%s,%s)""",
        (
            meta.result_id, response.portfolio_id, response.request_id or None, meta.event_id, when, weights,
            response.expected_return, response.expected_volatility, response.sharpe_ratio, meta.objective_value,
            meta.solver, meta.constraints_satisfied, response.SerializeToString(),
            Jsonb({"kind": "returns", "current_weights": {}}),
        ),
    )  # fmt: skip
    event = (
        meta.event_id, when, response.portfolio_id, meta.result_id, response.request_id or None, weights,
        response.expected_return, response.expected_volatility, response.sharpe_ratio, metadata,
    )  # fmt: skip
    columns = """(event_id, "timestamp", portfolio_id, result_id, configuration_version, request_id, objective,
                  method, weights, expected_return, volatility, sharpe_ratio, metadata)"""
    values = "VALUES (%s,%s,%s,%s,1,%s,'OBJECTIVE_MAX_SHARPE','OPTIMIZATION_METHOD_BLACK_LITTERMAN',%s,%s,%s,%s,%s)"
    conn.execute(f"INSERT INTO portfolio_optimized {columns} {values}", event)
    if latest:
        conn.execute(f"INSERT INTO latest_portfolio_optimizations {columns} {values}", event)


def previous_runs(portfolio_id: str) -> list[cmd_pb.OptimizeResponse]:
    """Two completed runs of one portfolio, an hour apart; the second has an unknown metadata key."""
    runs = []
    for hour, weight_a in enumerate((0.625, 0.25)):
        response = rich_response(portfolio_id, request_id=f"{portfolio_id}-r{hour}")
        response.optimal_weights.update({"A": weight_a, "B": 1.0 - weight_a})
        meta = response.optimization_metadata
        meta.event_id, meta.result_id = str(uuid.uuid4()), str(uuid.uuid4())
        meta.configuration_version = 1
        meta.timestamp.FromDatetime(T0 + timedelta(hours=hour))
        runs.append(response)
    return runs


def test_rows_of_the_previous_version_are_converted_and_read(previous_version_dsn: str) -> None:
    portfolio_id = "migrated-portfolio"
    runs = previous_runs(portfolio_id)
    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO optimization_configurations (portfolio_id, version, objective, method, strategies,
                   constraints, risk_parameters, content_hash)
               VALUES (%s, 1, 'OBJECTIVE_MAX_SHARPE', 'OPTIMIZATION_METHOD_BLACK_LITTERMAN', '[]', '{}', '{}', 'h')""",
            (portfolio_id,),
        )
        for i, response in enumerate(runs):
            write_run_as_before(conn, response, latest=i == len(runs) - 1)
        conn.execute(  # a key a later contract added: dropped by the conversion, not an error
            """UPDATE portfolio_optimized SET metadata = metadata || '{"fieldFromTheFuture": 1}'::jsonb
               WHERE event_id = %s""",
            (runs[1].optimization_metadata.event_id,),
        )

    assert migrate(previous_version_dsn) == ["0008_stored_result_records"]

    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'optimization_results'"
            )
        }
        assert "result" in columns and "response" not in columns
        for table in ("portfolio_optimized", "latest_portfolio_optimizations"):
            for (metadata,) in conn.execute(f"SELECT metadata FROM {table}"):
                assert metadata["schema_version"] == 1
                assert "configuration_version" in metadata and "configurationVersion" not in metadata
        (result,) = conn.execute("SELECT result FROM optimization_results LIMIT 1").fetchone() or (None,)
        assert result["schema_version"] == 1 and result["metadata"]["schema_version"] == 1

    async def read_back() -> None:
        pool = await asyncpg.create_pool(previous_version_dsn, min_size=1, max_size=2)
        try:
            # Replays: the stored answer, rebuilt from the converted record, is the first answer.
            store = PostgresOptimizationStore(pool)
            for response in runs:
                stored = await store.find_result(response.request_id)
                assert stored is not None and stored.request_hash == "hash"
                assert response_from_record(stored.result) == response
            # The query side: latest, history and analytics.
            queries = OptimizationQueryServicer(PostgresReadStore(pool))
            latest = await queries.GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id), NO_CONTEXT)
            assert latest.event.metadata == runs[1].optimization_metadata
            history = await queries.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id), NO_CONTEXT)
            assert [e.metadata for e in history.events] == [r.optimization_metadata for r in reversed(runs)]
            assert [dict(e.weights) for e in history.events] == [dict(r.optimal_weights) for r in reversed(runs)]
            analytics = await queries.GetPortfolioAnalytics(
                query_pb.GetPortfolioAnalyticsRequest(portfolio_id=portfolio_id), NO_CONTEXT
            )
            assert analytics.total_runs == 2
            assert analytics.buckets[0].max_turnover == pytest.approx(0.375)
        finally:
            await pool.close()

    asyncio.run(read_back())
    assert migrate(previous_version_dsn) == []


def test_the_migration_keeps_metadata_already_in_the_new_format(previous_version_dsn: str) -> None:
    """An empty database of the previous version migrates, and new-format payloads pass through unchanged."""
    document = {"schema_version": 1, "solver": "CLARABEL"}
    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO portfolio_optimized (event_id, "timestamp", portfolio_id, result_id, configuration_version,
                   objective, method, weights, expected_return, volatility, sharpe_ratio, metadata)
               VALUES (%s, %s, 'p', %s, 1, 'o', 'm', '{}', 0, 0, 0, %s)""",
            (uuid.uuid4(), T0, uuid.uuid4(), json.dumps(document)),
        )
    assert migrate(previous_version_dsn) == ["0008_stored_result_records"]
    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT metadata FROM portfolio_optimized").fetchone() == (document,)
