"""Stored results and event metadata in the stored schema of ``docs/storage_schema.md`` (schema_version 1).

Before: ``optimization_results.response`` held the serialized ``stratopt.v1.OptimizeResponse`` (protobuf binary)
and the ``metadata`` of ``portfolio_optimized`` / ``latest_portfolio_optimizations`` held
``stratopt.v1.OptimizationMetadata`` in protobuf's JSON mapping (camelCase keys). After: the new jsonb column
``optimization_results.result`` holds a ``command_side.records.ResultRecord`` and ``metadata`` a
``RunMetadataRecord``, both versioned snake_case JSON; the ``response`` column is dropped; ``run_inputs`` (plain
JSON already) gets ``schema_version`` 1.

SQL cannot decode protobuf, so this migration is Python: it reads each old row with the contract's classes
(protobuf binary decoding goes by field number, which the contract never reuses, so a later contract still reads
these rows) and writes the record with ``command_side.records``. yoyo applies it in one transaction; metadata
already in the new format (``schema_version`` present) is left alone. There is no rollback.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from yoyo import step

from command_side.records import metadata_record, result_record
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

__depends__ = {"0007_rebalance_trade_date"}

_BATCH = 1000


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def results_to_records(conn: Any) -> None:
    """``optimization_results.response`` (protobuf binary) → ``optimization_results.result`` (ResultRecord)."""
    cursor = conn.cursor()
    cursor.execute("ALTER TABLE optimization_results ADD COLUMN result jsonb")
    cursor.execute("SELECT result_id, response FROM optimization_results")
    updates = []
    for result_id, response in cursor.fetchall():
        record = result_record(cmd_pb.OptimizeResponse.FromString(bytes(response)))
        updates.append((_json(record.to_json()), result_id))
    for start in range(0, len(updates), _BATCH):
        cursor.executemany(
            "UPDATE optimization_results SET result = %s::jsonb WHERE result_id = %s", updates[start : start + _BATCH]
        )
    cursor.execute("ALTER TABLE optimization_results ALTER COLUMN result SET NOT NULL")
    cursor.execute("ALTER TABLE optimization_results DROP COLUMN response")
    cursor.execute(
        """UPDATE optimization_results SET run_inputs = run_inputs || '{"schema_version": 1}'::jsonb
           WHERE NOT run_inputs ? 'schema_version'"""
    )
    cursor.execute(
        "COMMENT ON COLUMN optimization_results.result IS "
        "'ResultRecord, versioned snake_case JSON (docs/storage_schema.md); replays are rebuilt from it'"
    )


def metadata_to_records(conn: Any) -> None:
    """Event metadata in protobuf's JSON mapping → ``RunMetadataRecord`` JSON, in the hypertable and read model."""
    cursor = conn.cursor()
    for table in ("portfolio_optimized", "latest_portfolio_optimizations"):
        cursor.execute(f'SELECT event_id, "timestamp", metadata FROM {table}')
        updates = []
        for event_id, timestamp, metadata in cursor.fetchall():
            document = _loaded(metadata)
            if "schema_version" in document:
                continue
            message = json_format.ParseDict(document, pb.OptimizationMetadata(), ignore_unknown_fields=True)
            updates.append((_json(metadata_record(message).to_json()), event_id, timestamp))
        for start in range(0, len(updates), _BATCH):
            cursor.executemany(
                f'UPDATE {table} SET metadata = %s::jsonb WHERE event_id = %s AND "timestamp" = %s',
                updates[start : start + _BATCH],
            )
        cursor.execute(
            f"COMMENT ON COLUMN {table}.metadata IS "
            "'RunMetadataRecord, versioned snake_case JSON (docs/storage_schema.md)'"
        )


steps = [step(results_to_records), step(metadata_to_records)]
