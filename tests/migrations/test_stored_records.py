"""Migrations 0008-0011: rows written by the previous version (protobuf bytes and JSON mapping) keep working.

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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
from google.protobuf import json_format
from psycopg.types.json import Jsonb
from yoyo import get_backend, read_migrations

from command_side import trading_adapter
from command_side.allocations_repository import PostgresAllocationCache
from command_side.configuration import OptimizationConfiguration
from command_side.configuration_messages import configuration_from_message
from command_side.configuration_records import CONFIGURATION_SCHEMA_VERSION, configuration_columns, content_hash
from command_side.rebalancing_repository import PostgresTradingStore
from command_side.records import response_from_record
from command_side.repository import PostgresOptimizationStore
from query_side.repository import PostgresReadStore
from query_side.servicer import OptimizationQueryServicer
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli.migrate import MIGRATIONS_DIR, _yoyo_url, migrate
from tests.command_side.test_configuration_records import full_configuration
from tests.command_side.test_records import rich_response
from tests.command_side.test_trading_records import full_trading_messages

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 3, 9, 30, 0, 123456, tzinfo=UTC)
NO_CONTEXT: Any = None
ALL_MIGRATIONS = sorted(p.stem for p in MIGRATIONS_DIR.iterdir() if p.suffix in {".sql", ".py"})


def migrations_from(first: str) -> list[str]:
    """Every migration from ``first`` on, in order: what ``migrate`` applies to a database just before it."""
    return [m for m in ALL_MIGRATIONS if m >= first]


MIGRATIONS_SINCE_0007 = migrations_from("0008_stored_result_records")
assert MIGRATIONS_SINCE_0007[:4] == [
    "0008_stored_result_records",
    "0009_stored_trading_records",
    "0010_stored_configuration_records",
    "0011_stored_symbol_keys",
]


def migrated_below(db: psycopg.Connection[Any], pg_dsn: str, first_missing: str) -> Iterator[str]:
    """A database of the test cluster with the migrations before ``first_missing`` applied."""
    name = f"stratopt_previous_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE DATABASE {name}")
    dsn = urlunsplit(urlsplit(pg_dsn)._replace(path=f"/{name}"))
    backend = get_backend(_yoyo_url(dsn))
    try:
        with backend.lock():
            backend.apply_migrations(
                backend.to_apply(read_migrations(str(MIGRATIONS_DIR)).filter(lambda m: m.id < first_missing))
            )
        backend.connection.close()
        yield dsn
    finally:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def previous_version_dsn(db: psycopg.Connection[Any], pg_dsn: str) -> Iterator[str]:
    """A database of the test cluster migrated only as far as the previous version (0001-0007)."""
    yield from migrated_below(db, pg_dsn, "0008")


@pytest.fixture
def schema_version_1_dsn(db: psycopg.Connection[Any], pg_dsn: str) -> Iterator[str]:
    """A database migrated as far as configuration content in schema_version 1 (0001-0010)."""
    yield from migrated_below(db, pg_dsn, "0011")


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

    assert migrate(previous_version_dsn) == MIGRATIONS_SINCE_0007

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
        (run_inputs,) = conn.execute("SELECT run_inputs FROM optimization_results LIMIT 1").fetchone() or (None,)
        assert run_inputs == {"schema_version": 1, "kind": "returns", "current_weights": {}}

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
    assert migrate(previous_version_dsn) == MIGRATIONS_SINCE_0007
    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT metadata FROM portfolio_optimized").fetchone() == (document,)


# --- the trading tables (migration 0009) -------------------------------------------------------------------------


def proto_json(message: Any) -> Jsonb:
    """The previous version's JSON of a message: protobuf's JSON mapping with the proto field names."""
    return Jsonb(json_format.MessageToDict(message, preserving_proto_field_name=True))


def test_trading_rows_of_the_previous_version_are_converted_and_read(previous_version_dsn: str) -> None:
    old = full_trading_messages()
    portfolio_id = "migrated-trader"
    recommendation = old["recommendation"]
    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO share_allocations (cache_key, portfolio_id, request, response, expires_at)
               VALUES ('old-key', %s, %s, %s, now() + interval '1 day')""",
            (portfolio_id, proto_json(old["request"]), old["allocation"].SerializeToString()),
        )
        conn.execute(
            "INSERT INTO portfolio_holdings (portfolio_id, positions, cash) VALUES (%s, %s, 250.0)",
            (portfolio_id, Jsonb([json_format.MessageToDict(old["position"], preserving_proto_field_name=True)])),
        )
        conn.execute(
            "INSERT INTO rebalance_policies (portfolio_id, policy) VALUES (%s, %s)",
            (portfolio_id, proto_json(old["policy"])),
        )
        conn.execute(
            """INSERT INTO rebalance_recommendations (recommendation_id, portfolio_id, request_id, request_hash, status,
                   recommendation, total_trade_value, created_at, expires_at, decided_at, as_of)
               VALUES (%s, %s, 'rq', 'h', 'AUTO_APPROVED', %s, 1900.0, %s, %s, %s, %s)""",
            (recommendation.recommendation_id, portfolio_id, recommendation.SerializeToString(), T0, T0, T0, T0),
        )
        conn.execute(
            """INSERT INTO rebalance_events (event_id, "timestamp", portfolio_id, recommendation_id, event_type,
                   status, total_trade_value, payload)
               VALUES (%s, %s, %s, %s, 'CREATED', 'AUTO_APPROVED', 1900.0, %s)""",
            (uuid.uuid4(), T0, portfolio_id, recommendation.recommendation_id,
             Jsonb({"request_id": "rq", "approval_limit": 50_000.0})),
        )  # fmt: skip

    assert migrate(previous_version_dsn) == MIGRATIONS_SINCE_0007

    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        kinds = dict(
            conn.execute(
                """SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
                   WHERE column_name IN ('response', 'recommendation')
                       AND table_name IN ('share_allocations', 'rebalance_recommendations')"""
            ).fetchall()
        )
        assert kinds == {"share_allocations.response": "jsonb", "rebalance_recommendations.recommendation": "jsonb"}
        (request,) = conn.execute("SELECT request FROM share_allocations").fetchone() or (None,)
        assert request["schema_version"] == 1 and request["strategy"] == "MINIMIZE_LEFTOVER"
        (payload,) = conn.execute("SELECT payload FROM rebalance_events").fetchone() or (None,)
        assert payload == {"schema_version": 1, "request_id": "rq", "approval_limit": 50_000.0}

    async def read_back() -> None:
        pool = await asyncpg.create_pool(previous_version_dsn, min_size=1, max_size=2)
        try:
            cached = await PostgresAllocationCache(pool).find("old-key")
            assert cached is not None and cached.allocation.cached
            computed = replace(cached.allocation, cached=False, expires_at=None)
            assert trading_adapter.allocation_message(computed) == old["allocation"]
            trading = PostgresTradingStore(pool)
            holdings = await trading.load_holdings(portfolio_id)
            assert holdings is not None and holdings.cash == 250.0
            assert [trading_adapter.position_message(p) for p in holdings.positions] == [old["position"]]
            policy = await trading.load_policy(portfolio_id)
            assert policy is not None and trading_adapter.policy_message(policy) == old["policy"]
            found = await trading.find(uuid.UUID(recommendation.recommendation_id))
            assert found is not None
            # an auto-approved recommendation reads as decided at creation
            assert trading_adapter.recommendation_message(replace(found, decided_at=None)) == recommendation
            [recent] = await trading.recent_trades(portfolio_id, T0, timedelta(days=1))
            assert recent.trades == trading_adapter.recommendation_of_message(recommendation).trades
            [event] = await trading.events(portfolio_id)
            assert event.payload["request_id"] == "rq"
            queries = OptimizationQueryServicer(PostgresReadStore(pool))
            answer = await queries.GetRebalance(
                query_pb.GetRebalanceRequest(recommendation_id=recommendation.recommendation_id), NO_CONTEXT
            )
            answer.recommendation.ClearField("decided_at")
            assert answer.recommendation == recommendation
        finally:
            await pool.close()

    asyncio.run(read_back())


# --- configurations (migration 0010) -------------------------------------------------------------------------------


def legacy_content(config: cmd_pb.OptimizationConfiguration) -> dict[str, Any]:
    """A configuration's content as the writer before migration 0010 stored it: protobuf's JSON mapping."""

    def as_dict(message: Any) -> Any:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    return {
        "objective": pb.Objective.Name(config.objective),
        "method": pb.OptimizationMethod.Name(config.method),
        "strategies": [as_dict(s) for s in config.strategies],
        "constraints": as_dict(config.constraints),
        "risk_parameters": as_dict(config.risk_parameters),
        "black_litterman": as_dict(config.black_litterman),
    }


def old_strategy_keys(strategy: dict[str, Any]) -> dict[str, Any]:
    """A strategy object (stored or JSON mapping) with its identifier under the previous key, ``strategy_id``."""
    return {("strategy_id" if key == "symbol" else key): value for key, value in strategy.items()}


def test_configurations_of_the_previous_version_are_converted_and_read(previous_version_dsn: str) -> None:
    full = full_configuration("migrated-config")
    plain = cmd_pb.OptimizationConfiguration(portfolio_id="migrated-config", objective=1, method=1, enabled=True)
    plain.strategies.add(symbol="A")
    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        for version, config in ((1, plain), (2, full)):
            content = legacy_content(config)  # the previous writer: protobuf JSON mapping
            # ... of the contract of its time, whose Strategy named the identifier strategy_id
            content["strategies"] = [old_strategy_keys(s) for s in content["strategies"]]
            conn.execute(
                """INSERT INTO optimization_configurations (portfolio_id, version, objective, method, strategies,
                       constraints, risk_parameters, lookback_periods, market_symbol, enabled, content_hash,
                       black_litterman, created_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'h', %s, %s)""",
                (config.portfolio_id, version, content["objective"], content["method"],
                 Jsonb(content["strategies"]), Jsonb(content["constraints"]), Jsonb(content["risk_parameters"]),
                 config.lookback_periods, config.market_symbol, config.enabled, Jsonb(content["black_litterman"]),
                 T0),
            )  # fmt: skip

    assert migrate(previous_version_dsn) == MIGRATIONS_SINCE_0007

    with psycopg.connect(previous_version_dsn, autocommit=True) as conn:
        for columns in conn.execute(
            "SELECT strategies, constraints, risk_parameters, black_litterman FROM optimization_configurations"
        ):
            assert all(column["schema_version"] == 2 for column in columns)
            assert all("symbol" in s and "strategy_id" not in s for s in columns[0]["strategies"])

    async def read_back() -> list[OptimizationConfiguration]:
        pool = await asyncpg.create_pool(previous_version_dsn, min_size=1, max_size=2)
        try:
            store = PostgresOptimizationStore(pool)
            return [await store.get_configuration("migrated-config", version) for version in (1, 2)]
        finally:
            await pool.close()

    for stored, config, version in zip(asyncio.run(read_back()), (plain, full), (1, 2), strict=True):
        assert stored == replace(configuration_from_message(config), version=version, created_at=T0)


# --- configuration content of schema_version 1 (migration 0011) ---------------------------------------------------


def test_configurations_of_schema_version_1_are_rewritten_with_symbol_keys(schema_version_1_dsn: str) -> None:
    """Rows written in version 1 (``strategy_id``) read back after migrating; their content hash is recomputed."""
    full = full_configuration("version-1-config")
    plain = cmd_pb.OptimizationConfiguration(portfolio_id="version-1-config", objective=1, method=1, enabled=True)
    plain.strategies.add(symbol="A", sector="Tech")
    plain.strategies.add(symbol="B")
    with psycopg.connect(schema_version_1_dsn, autocommit=True) as conn:
        for version, config in ((1, full), (2, plain)):
            content = legacy_content(config)
            columns = {
                name: {**value, "schema_version": 1}
                for name, value in configuration_columns(configuration_from_message(config)).items()
            }
            columns["strategies"]["strategies"] = [old_strategy_keys(s) for s in columns["strategies"]["strategies"]]
            conn.execute(
                """INSERT INTO optimization_configurations (portfolio_id, version, objective, method, strategies,
                       constraints, risk_parameters, lookback_periods, market_symbol, enabled, content_hash,
                       black_litterman, created_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'version-1-hash', %s, %s)""",
                (config.portfolio_id, version, content["objective"], content["method"],
                 Jsonb(columns["strategies"]), Jsonb(columns["constraints"]), Jsonb(columns["risk_parameters"]),
                 config.lookback_periods, config.market_symbol, config.enabled, Jsonb(columns["black_litterman"]),
                 T0),
            )  # fmt: skip
        strategies = conn.execute("SELECT strategies FROM optimization_configurations WHERE version = 2").fetchone()
        assert strategies is not None and strategies[0]["strategies"][0]["strategy_id"] == "A"

    assert migrate(schema_version_1_dsn) == migrations_from("0011_stored_symbol_keys")

    with psycopg.connect(schema_version_1_dsn, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT strategies, constraints, risk_parameters, black_litterman, content_hash
               FROM optimization_configurations ORDER BY version"""
        ).fetchall()
        for *columns, _ in rows:
            assert all(column["schema_version"] == CONFIGURATION_SCHEMA_VERSION == 2 for column in columns)
            assert all("symbol" in s and "strategy_id" not in s for s in columns[0]["strategies"])
        assert [r[-1] for r in rows] == [content_hash(configuration_from_message(c)) for c in (full, plain)]
        assert rows[1][0]["strategies"] == [
            {"symbol": "A", "sector": "Tech", "classifications": {}},
            {"symbol": "B", "sector": "", "classifications": {}},
        ]
        conn.execute(  # the column default is the current version too
            """INSERT INTO optimization_configurations (portfolio_id, version, objective, method, strategies,
                   constraints, risk_parameters, content_hash)
               VALUES ('defaulted', 1, 'o', 'm', '{}', '{}', '{}', 'h')"""
        )
        (default,) = conn.execute(
            "SELECT black_litterman FROM optimization_configurations WHERE portfolio_id = 'defaulted'"
        ).fetchone() or (None,)
        assert default == {"schema_version": 2, "inputs": None}

    async def read_back() -> tuple[list[OptimizationConfiguration], bool]:
        pool = await asyncpg.create_pool(schema_version_1_dsn, min_size=1, max_size=2)
        try:
            store = PostgresOptimizationStore(pool)
            stored = [await store.get_configuration("version-1-config", version) for version in (1, 2)]
            # the same content: no new version
            _, new = await store.upsert_configuration(configuration_from_message(plain))
            return stored, new
        finally:
            await pool.close()

    stored, new = asyncio.run(read_back())
    assert not new
    for read, config, version in zip(stored, (full, plain), (1, 2), strict=True):
        assert read == replace(configuration_from_message(config), version=version, created_at=T0)
    assert migrate(schema_version_1_dsn) == []
