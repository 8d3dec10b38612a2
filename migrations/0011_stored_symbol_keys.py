"""Configuration content in schema_version 2: a strategy's identifier is stored as ``symbol``.

Before (schema_version 1, migration ``0010_stored_configuration_records``): each strategy object of
``optimization_configurations.strategies`` named its identifier ``strategy_id``, and the four content columns
(``strategies``, ``constraints``, ``risk_parameters``, ``black_litterman``) carried ``schema_version`` 1. After:
the key is ``symbol`` and every content column carries ``schema_version`` 2 (nothing else changes). The
``content_hash`` of every configuration is recomputed with the current
``command_side.configuration_records.content_hash`` (the sha256 of the stored form of the content), so an unchanged
configuration submitted again hashes alike and makes no new version. Rows already in version 2 keep their content. The
``black_litterman`` column's default becomes version 2. yoyo applies it in one transaction. There is no rollback.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from yoyo import step

from command_side.configuration_records import CONTENT_COLUMNS, content_hash
from command_side.optimization_store import configuration_from_row

__depends__ = {"0010_stored_configuration_records"}

_OLD_KEY = "strategy_id"
"""The identifier's key in schema_version 1."""
_VERSION = 2
"""The schema_version this migration writes."""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _strategy_to_version_2(strategy: dict[str, Any]) -> dict[str, Any]:
    """A version-1 strategy object with ``strategy_id`` renamed ``symbol`` (the key order kept)."""
    return {("symbol" if key == _OLD_KEY else key): value for key, value in strategy.items()}


def content_to_version_2(columns: dict[str, Any]) -> dict[str, Any]:
    """The four content columns (decoded JSON) in schema_version 2; unchanged when already there."""
    if columns["strategies"].get("schema_version") != 1:
        return columns
    converted = {name: {**columns[name], "schema_version": _VERSION} for name in CONTENT_COLUMNS}
    converted["strategies"]["strategies"] = [_strategy_to_version_2(s) for s in columns["strategies"]["strategies"]]
    return converted


def configurations_to_version_2(conn: Any) -> None:
    """Rewrite version-1 content columns in version 2 and recompute every configuration's content hash."""
    cursor = conn.cursor()
    cursor.execute(
        "SELECT portfolio_id, version, objective, method, lookback_periods, market_symbol, enabled, strategies, "
        "constraints, risk_parameters, black_litterman FROM optimization_configurations"
    )
    names = (
        "portfolio_id", "version", "objective", "method", "lookback_periods", "market_symbol", "enabled",
        *CONTENT_COLUMNS,
    )  # fmt: skip
    updates = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        columns = content_to_version_2({name: _loaded(row[name]) for name in CONTENT_COLUMNS})
        config = configuration_from_row(
            portfolio_id=row["portfolio_id"],
            version=row["version"],
            row={**row, **columns},
            created_at=datetime.fromtimestamp(0, tz=UTC),  # not part of the content
        )
        updates.append(
            (
                *(_json(columns[name]) for name in CONTENT_COLUMNS),
                content_hash(config),
                row["portfolio_id"],
                row["version"],
            )
        )
    cursor.executemany(
        """UPDATE optimization_configurations SET strategies = %s::jsonb, constraints = %s::jsonb,
               risk_parameters = %s::jsonb, black_litterman = %s::jsonb, content_hash = %s
           WHERE portfolio_id = %s AND version = %s""",
        updates,
    )
    cursor.execute(
        "ALTER TABLE optimization_configurations ALTER COLUMN black_litterman "
        f"""SET DEFAULT '{{"schema_version": {_VERSION}, "inputs": null}}'::jsonb"""
    )


steps = [step(configurations_to_version_2)]
