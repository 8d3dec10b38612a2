"""The trading tables in the stored schema of ``docs/storage_schema.md`` (trading schema_version 1).

Before: ``share_allocations.response`` and ``rebalance_recommendations.recommendation`` held serialized protobuf
messages (bytea); ``share_allocations.request``, ``portfolio_holdings.positions`` and ``rebalance_policies.policy``
held protobuf's JSON mapping; ``rebalance_events.payload`` had no version. After: every one of them is versioned
snake_case JSON written by ``command_side.trading_records`` (the two bytea columns become jsonb of the same name).

SQL cannot decode protobuf, so this migration is Python: old rows are read with the contract's classes (binary by
field number, JSON by the proto field names of the previous version) and rewritten with the stored schema. yoyo
applies it in one transaction. There is no rollback.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from yoyo import step

from command_side.trading_records import ALLOCATION, ALLOCATION_REQUEST, POLICY, RECOMMENDATION, holdings_json
from stratopt.v1 import trading_service_pb2 as trading_pb

__depends__ = {"0008_stored_result_records"}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _bytea_to_records(cursor: Any, table: str, key: str, column: str, convert: Any) -> None:
    """Replace the bytea ``column`` of ``table`` by a jsonb column of the same name holding ``convert(bytes)``."""
    cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column}_record jsonb")
    cursor.execute(f"SELECT {key}, {column} FROM {table}")
    updates = [(_json(convert(bytes(value))), row_key) for row_key, value in cursor.fetchall()]
    cursor.executemany(f"UPDATE {table} SET {column}_record = %s::jsonb WHERE {key} = %s", updates)
    cursor.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    cursor.execute(f"ALTER TABLE {table} RENAME COLUMN {column}_record TO {column}")
    cursor.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")


def allocations_to_records(conn: Any) -> None:
    """``share_allocations``: request (JSON mapping) and response (binary) → ALLOCATION_REQUEST and ALLOCATION."""
    cursor = conn.cursor()
    cursor.execute("SELECT cache_key, request FROM share_allocations")
    requests = [
        (_json(ALLOCATION_REQUEST.to_json(json_format.ParseDict(_loaded(v), trading_pb.AllocateSharesRequest(),
                                                                ignore_unknown_fields=True))), k)
        for k, v in cursor.fetchall()
    ]  # fmt: skip
    cursor.executemany("UPDATE share_allocations SET request = %s::jsonb WHERE cache_key = %s", requests)
    _bytea_to_records(
        cursor,
        "share_allocations",
        "cache_key",
        "response",
        lambda data: ALLOCATION.to_json(trading_pb.AllocateSharesResponse.FromString(data)),
    )


def recommendations_to_records(conn: Any) -> None:
    """``rebalance_recommendations.recommendation`` (binary) → RECOMMENDATION."""
    _bytea_to_records(
        conn.cursor(),
        "rebalance_recommendations",
        "recommendation_id",
        "recommendation",
        lambda data: RECOMMENDATION.to_json(trading_pb.RebalanceRecommendation.FromString(data)),
    )


def holdings_and_policies_to_records(conn: Any) -> None:
    """``portfolio_holdings.positions`` and ``rebalance_policies.policy`` (JSON mapping) → the stored schema."""
    cursor = conn.cursor()
    cursor.execute("SELECT portfolio_id, positions FROM portfolio_holdings")
    holdings = []
    for portfolio_id, positions in cursor.fetchall():
        documents = _loaded(positions)
        if isinstance(documents, dict):  # already converted
            continue
        parsed = [json_format.ParseDict(d, trading_pb.Position(), ignore_unknown_fields=True) for d in documents]
        holdings.append((_json(holdings_json(parsed)), portfolio_id))
    cursor.executemany("UPDATE portfolio_holdings SET positions = %s::jsonb WHERE portfolio_id = %s", holdings)
    cursor.execute("SELECT portfolio_id, policy FROM rebalance_policies")
    policies = []
    for portfolio_id, policy in cursor.fetchall():
        document = _loaded(policy)
        if "schema_version" in document:
            continue
        parsed = json_format.ParseDict(document, trading_pb.RebalancePolicy(), ignore_unknown_fields=True)
        policies.append((_json(POLICY.to_json(parsed)), portfolio_id))
    cursor.executemany("UPDATE rebalance_policies SET policy = %s::jsonb WHERE portfolio_id = %s", policies)


def event_payloads_versioned(conn: Any) -> None:
    """``rebalance_events.payload`` gets ``schema_version`` 1 (its keys were already snake_case plain JSON)."""
    conn.cursor().execute(
        """UPDATE rebalance_events SET payload = payload || '{"schema_version": 1}'::jsonb
           WHERE NOT payload ? 'schema_version'"""
    )


steps = [
    step(allocations_to_records),
    step(recommendations_to_records),
    step(holdings_and_policies_to_records),
    step(event_payloads_versioned),
]
