"""Stored backtests: ``GetBacktest`` (summary and path) and ``ListBacktests`` (a portfolio's, newest first).

Both read the ``backtests`` and ``backtest_points`` hypertables the command side's Backtest RPC writes in one
transaction (migration 0018); the summary row carries the metrics and settings as protobuf JSON.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from google.protobuf import json_format

from query_side.page_token import decode_page_token, encode_page_token, query_fingerprint
from query_side.postgres_errors import postgres_errors
from query_side.repository import HistoryKey
from services.errors import InvalidInputError, NotFoundError
from stratopt.v1 import backtest_pb2 as bt_pb
from stratopt.v1 import query_service_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

SUMMARY_COLUMNS = """backtest_id, created_at, portfolio_id, configuration_version, requested_by, symbols, first_date,
    last_date, observations, decisions, failed_decisions, first_failure, metrics, settings, computation_time_ms"""


def summary_message(row: Any) -> bt_pb.BacktestSummary:
    """The ``BacktestSummary`` of a ``backtests`` row (:data:`SUMMARY_COLUMNS`)."""
    summary = bt_pb.BacktestSummary(
        backtest_id=str(row["backtest_id"]),
        portfolio_id=row["portfolio_id"],
        configuration_version=row["configuration_version"],
        symbols=list(row["symbols"]),
        observations=row["observations"],
        decisions=row["decisions"],
        failed_decisions=row["failed_decisions"],
        first_failure=row["first_failure"],
        requested_by=row["requested_by"],
        computation_time_ms=row["computation_time_ms"],
    )
    summary.first_date.FromDatetime(row["first_date"])
    summary.last_date.FromDatetime(row["last_date"])
    summary.created_at.FromDatetime(row["created_at"])
    metrics = json.loads(row["metrics"])
    for name in bt_pb.BacktestMetrics.DESCRIPTOR.fields_by_name:
        value = metrics.get(name)
        setattr(summary.metrics, name, math.nan if value is None else float(value))
    settings = {k: v for k, v in json.loads(row["settings"]).items() if k != "schema_version"}
    json_format.ParseDict(settings, summary.settings)
    return summary


def parse_backtest_id(value: str) -> uuid.UUID:
    """The UUID of a ``backtest_id`` field.

    Raises
    ------
    InvalidInputError
        Empty or not a UUID (field ``backtest_id``).
    """
    if not value:
        raise InvalidInputError.for_field("backtest_id", "must not be empty")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError.for_field("backtest_id", "must be a UUID") from None


class BacktestReads:
    """Reads of the stored backtests over asyncpg.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def get(self, backtest_id: uuid.UUID) -> query_service_pb2.GetBacktestResponse:
        """The summary and every simulated close, oldest first.

        Raises
        ------
        NotFoundError
            No such backtest.
        UnavailableError
            The database cannot be reached.
        """
        async with postgres_errors(), self._pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {SUMMARY_COLUMNS} FROM backtests WHERE backtest_id = $1", backtest_id)
            if row is None:
                raise NotFoundError(f"no backtest '{backtest_id}'")
            points = await conn.fetch(
                """SELECT "timestamp", equity, cash, weights, rebalanced, turnover, cost FROM backtest_points
                   WHERE backtest_id = $1 AND created_at = $2 ORDER BY "timestamp\"""",
                backtest_id,
                row["created_at"],
            )
        response = query_service_pb2.GetBacktestResponse(summary=summary_message(row))
        for p in points:
            point = response.points.add(
                equity=p["equity"], cash=p["cash"], weights=p["weights"], rebalanced=p["rebalanced"],
                turnover=p["turnover"], cost=p["cost"],
            )  # fmt: skip
            point.timestamp.FromDatetime(p["timestamp"])
        return response

    async def list(self, portfolio_id: str, page_size: int, page_token: str) -> tuple[list[bt_pb.BacktestSummary], str]:
        """A page of the portfolio's backtests, newest first, and the next page's token ('' = last page).

        Raises
        ------
        InvalidInputError
            A malformed token, or one issued for another portfolio (field ``page_token``).
        UnavailableError
            The database cannot be reached.
        """
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        fingerprint = query_fingerprint(f"backtests\0{portfolio_id}", None, None)
        after = decode_page_token(page_token, fingerprint) if page_token else None
        query = f"SELECT {SUMMARY_COLUMNS} FROM backtests WHERE portfolio_id = $1"
        args: list[Any] = [portfolio_id]
        if after is not None:
            query += " AND (created_at, backtest_id) < ($2, $3)"
            args += [after.timestamp, after.event_id]
        query += f" ORDER BY created_at DESC, backtest_id DESC LIMIT {size + 1}"
        async with postgres_errors(), self._pool.acquire() as conn:
            rows = await conn.fetch(query, *args)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = encode_page_token(
                HistoryKey(timestamp=last["created_at"], event_id=last["backtest_id"]), fingerprint
            )
        return [summary_message(r) for r in rows], token
