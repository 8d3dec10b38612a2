"""What ``WatchEvents`` reads of the rebalance events, rotation decisions and backtests (``query_side.watch``).

Per kind, one table read after a ``(time, id)`` cursor, oldest first, on the table's per-portfolio index
(``rebalance_events_portfolio_time_idx``, ``rotation_decided_portfolio_idx``, ``backtests_by_portfolio``). The
rows are turned into what the List RPCs return: :class:`~query_side.repository.StoredRebalanceEvent`,
:class:`~query_side.rotation_reads.StoredDecision` and :class:`StoredBacktest` (a ``BacktestSummary``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from query_side.backtests import SUMMARY_COLUMNS, summary_message
from query_side.postgres_errors import postgres_errors
from query_side.repository import REBALANCE_EVENT_COLUMNS, HistoryKey, rebalance_event_from_row
from query_side.rotation_reads import StoredDecision, decision_message
from query_side.watch import Keyed, KindSource, WatchKind
from stratopt.v1 import backtest_pb2 as bt_pb


@dataclass(frozen=True, slots=True)
class StoredBacktest:
    """One ``backtests`` row: its key ``(created_at, backtest_id)`` and its summary."""

    key: HistoryKey
    summary: bt_pb.BacktestSummary


def _decision(row: Any) -> StoredDecision:
    key = HistoryKey(timestamp=row["timestamp"], event_id=uuid.UUID(str(row["event_id"])))
    return StoredDecision(key, decision_message(json.loads(row["decision"])))


def _backtest(row: Any) -> StoredBacktest:
    return StoredBacktest(HistoryKey(timestamp=row["created_at"], event_id=row["backtest_id"]), summary_message(row))


@dataclass(frozen=True, slots=True)
class _Table:
    """A table a kind is read from (constants of this module, never request data)."""

    name: str
    time: str
    id: str
    columns: str
    convert: Callable[[Any], Keyed]


_TABLES = {
    WatchKind.REBALANCE: _Table(
        "rebalance_events", '"timestamp"', "event_id", REBALANCE_EVENT_COLUMNS, rebalance_event_from_row
    ),
    WatchKind.ROTATION: _Table(
        "rotation_decided", '"timestamp"', "event_id", 'event_id, "timestamp", decision', _decision
    ),
    WatchKind.BACKTEST: _Table("backtests", "created_at", "backtest_id", SUMMARY_COLUMNS, _backtest),
}


class _TableSource:
    """:class:`~query_side.watch.KindSource` of one table."""

    def __init__(self, pool: Any, table: _Table) -> None:
        self._pool = pool
        self._table = table

    async def after(self, portfolio_id: str, after: HistoryKey | None, limit: int) -> Sequence[Keyed]:
        t = self._table
        condition, arguments = "", [portfolio_id, limit]
        if after is not None:
            condition = f" AND ({t.time}, {t.id}) > ($3, $4)"
            arguments += [after.timestamp, after.event_id]
        query = (
            f"SELECT {t.columns} FROM {t.name} WHERE portfolio_id = $1{condition} ORDER BY {t.time}, {t.id} LIMIT $2"
        )
        async with postgres_errors():
            rows = await self._pool.fetch(query, *arguments)
        return [t.convert(row) for row in rows]

    async def latest_key(self, portfolio_id: str) -> HistoryKey | None:
        t = self._table
        query = (
            f"SELECT {t.time} AS t, {t.id} AS id FROM {t.name} WHERE portfolio_id = $1 "
            f"ORDER BY {t.time} DESC, {t.id} DESC LIMIT 1"
        )
        async with postgres_errors():
            row = await self._pool.fetchrow(query, portfolio_id)
        return None if row is None else HistoryKey(timestamp=row["t"], event_id=uuid.UUID(str(row["id"])))


class WatchReads:
    """The sources of the kinds beyond optimization, over the query side's pool.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool.
    """

    def __init__(self, pool: Any) -> None:
        self._sources = {kind: _TableSource(pool, table) for kind, table in _TABLES.items()}

    def source(self, kind: WatchKind) -> KindSource:
        """The source of ``kind`` (not :attr:`WatchKind.OPTIMIZATION`, which the read store serves)."""
        return self._sources[kind]
