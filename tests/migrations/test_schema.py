"""The migrated schema: TimescaleDB hypertables with the documented chunk intervals, re-runs are no-ops."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from stratopt_cli.migrate import migrate

pytestmark = pytest.mark.integration


def test_migrations_are_idempotent(pg_dsn: str) -> None:
    assert migrate(pg_dsn) == []


def test_hypertables_and_chunk_intervals(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        """SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions
           ORDER BY hypertable_name"""
    ).fetchall()
    assert rows == [
        ("backtest_points", "created_at", timedelta(days=30)),
        ("backtests", "created_at", timedelta(days=30)),
        ("execution_events", "timestamp", timedelta(days=30)),
        ("kill_switch_events", "timestamp", timedelta(days=365)),
        ("market_data", "timestamp", timedelta(days=365)),
        ("portfolio_optimized", "timestamp", timedelta(days=7)),
        ("quotes", "quoted_at", timedelta(days=1)),
        ("rebalance_events", "timestamp", timedelta(days=30)),
        ("rotation_decided", "timestamp", timedelta(days=7)),
        ("signals", "time", timedelta(days=7)),
    ]
    version = db.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert version is not None and version[0].startswith("2.")


def test_market_data_rejects_non_positive_prices(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO market_data (symbol, \"timestamp\", price) VALUES ('X', now(), 0)")
