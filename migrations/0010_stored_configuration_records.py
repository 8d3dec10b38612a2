"""Configuration content in the stored schema of ``docs/storage_schema.md`` (schema_version 1).

Before: the ``strategies``, ``constraints``, ``risk_parameters`` and ``black_litterman`` columns of
``optimization_configurations`` held protobuf's JSON mapping with the proto field names (``{}`` for an unset
message). After: the objects of ``command_side.configuration_records``, each with ``schema_version`` (the message
parsed from the old JSON is converted to the domain's configuration, which the current writer takes). The
``content_hash`` column is left as it is here; ``0011_stored_symbol_keys`` recomputes every hash.
Rows already converted (``constraints`` with ``schema_version``) are left alone. The rows are written by
the current ``configuration_columns`` (today schema_version 2, which ``0011_stored_symbol_keys`` leaves as it
is). yoyo applies it in one transaction. There is no rollback.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from yoyo import step

from command_side.configuration_messages import configuration_from_message
from command_side.configuration_records import configuration_columns
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

__depends__ = {"0009_stored_trading_records"}

_OLD_ID_KEYS = ("strategy_id", "strategyId")
"""The keys of the strategy's identifier in the proto's JSON mapping of this migration's time (``Strategy.symbol``
was ``strategy_id`` then); the current build writes version 2 (see ``0011_stored_symbol_keys``)."""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def configurations_to_records(conn: Any) -> None:
    """Rewrite each configuration's content columns with ``configuration_columns``."""
    cursor = conn.cursor()
    cursor.execute(
        "SELECT portfolio_id, version, strategies, constraints, risk_parameters, black_litterman "
        "FROM optimization_configurations"
    )
    updates = []
    for portfolio_id, version, strategies, constraints, risk_parameters, black_litterman in cursor.fetchall():
        constraints = _loaded(constraints)
        if "schema_version" in constraints:
            continue
        config = cmd_pb.OptimizationConfiguration()
        for strategy in _loaded(strategies):
            strategy = {("symbol" if key in _OLD_ID_KEYS else key): value for key, value in strategy.items()}
            config.strategies.append(json_format.ParseDict(strategy, pb.Strategy(), ignore_unknown_fields=True))
        json_format.ParseDict(constraints, config.constraints, ignore_unknown_fields=True)
        json_format.ParseDict(_loaded(risk_parameters), config.risk_parameters, ignore_unknown_fields=True)
        inputs = _loaded(black_litterman)
        if inputs:
            json_format.ParseDict(inputs, config.black_litterman, ignore_unknown_fields=True)
        columns = configuration_columns(configuration_from_message(config))
        updates.append(
            (
                _json(columns["strategies"]),
                _json(columns["constraints"]),
                _json(columns["risk_parameters"]),
                _json(columns["black_litterman"]),
                portfolio_id,
                version,
            )
        )
    cursor.executemany(
        """UPDATE optimization_configurations SET strategies = %s::jsonb, constraints = %s::jsonb,
               risk_parameters = %s::jsonb, black_litterman = %s::jsonb
           WHERE portfolio_id = %s AND version = %s""",
        updates,
    )
    cursor.execute(
        "ALTER TABLE optimization_configurations ALTER COLUMN black_litterman "
        """SET DEFAULT '{"schema_version": 1, "inputs": null}'::jsonb"""
    )


steps = [step(configurations_to_records)]
