"""Export of a portfolio's stored data as Apache Arrow record batches (``ExportData``), page by page.

Each dataset is one keyset-paginated query over an event hypertable, oldest first, and a fixed Arrow schema:

* :attr:`ExportDataset.OPTIMIZATION_HISTORY`: one row per ``portfolio_optimized`` event (:data:`HISTORY_SCHEMA`),
  keyset ``("timestamp", event_id)``;
* :attr:`ExportDataset.WEIGHTS`: the events' weights in long form, one row per stored ``(event, symbol)`` entry
  (zeros included; :data:`WEIGHTS_SCHEMA`), unnested in PostgreSQL and keyset ``("timestamp", event_id, symbol)``
  with the symbol in byte order (``COLLATE "C"``, Python's ``sorted`` order), so a run's rows may span two batches;
* :attr:`ExportDataset.REBALANCE_EVENTS`: one row per ``rebalance_events`` row (:data:`REBALANCE_EVENTS_SCHEMA`),
  keyset ``("timestamp", event_id)``;
* :attr:`ExportDataset.BACKTEST_POINTS`: one row per simulated close of the portfolio's stored backtests
  (:data:`BACKTEST_POINTS_SCHEMA`), keyset ``(created_at, backtest_id, "timestamp")``; the range bounds the
  simulated close.

A page is at most ``batch_rows`` rows and becomes one record batch; between pages no connection is held, so a slow
reader of the stream keeps neither a pool connection nor a snapshot. The export is therefore not a snapshot: rows
stored during it appear when they are later than the position reached (events are appended in time order, so in
practice the newest ones), and rows dropped by retention meanwhile are missing.

Adding a dataset: a member of :class:`ExportDataset`, a
``_Dataset`` entry in ``_DATASETS`` (schema, query, keyset columns, table for :meth:`ExportReads.has_rows`), and
the enum value's mapping in ``query_side.servicer``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import pyarrow as pa

from query_side.postgres_errors import postgres_errors
from query_side.records import SchemaError, instant_nanoseconds
from query_side.repository import time_range

EXPORT_BATCH_ROWS: Final = 10_000
"""Most rows of one exported batch (and of one database page)."""
MAX_MESSAGE_BYTES: Final = 4 << 20
"""A batch whose Arrow IPC stream is larger is split in halves until each part fits (or is one row): 4 MiB, the
default receive limit of gRPC clients."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TIME: Final = pa.timestamp("us", tz="UTC")


class ExportDataset(enum.Enum):
    """The exportable datasets (``stratopt.v1.ExportDataset`` without the prefix)."""

    OPTIMIZATION_HISTORY = "OPTIMIZATION_HISTORY"
    WEIGHTS = "WEIGHTS"
    REBALANCE_EVENTS = "REBALANCE_EVENTS"
    BACKTEST_POINTS = "BACKTEST_POINTS"


HISTORY_SCHEMA: Final = pa.schema(
    [
        pa.field("timestamp", _TIME, nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("portfolio_id", pa.string(), nullable=False),
        pa.field("result_id", pa.string(), nullable=False),
        pa.field("configuration_version", pa.int32(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("objective", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("expected_return", pa.float64(), nullable=False),
        pa.field("volatility", pa.float64(), nullable=False),
        pa.field("sharpe_ratio", pa.float64(), nullable=False),
        pa.field("turnover", pa.float64()),
        pa.field("window_start", _TIME),
        pa.field("window_end", _TIME),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)
"""One row per optimization run. Decimals, annualised (expected return, volatility); ``turnover`` is one-way
against the portfolio's previous run (null for its first); the window bounds come from the metadata (null for a run
on the caller's moments, or when not a stored RFC 3339 instant); ``metadata`` is the stored run metadata as JSON
text (``docs/storage_schema.md``)."""

WEIGHTS_SCHEMA: Final = pa.schema(
    [
        pa.field("timestamp", _TIME, nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)
"""One row per stored weight of a run (a fraction of the portfolio's value)."""

REBALANCE_EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("timestamp", _TIME, nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("portfolio_id", pa.string(), nullable=False),
        pa.field("recommendation_id", pa.string()),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("actor", pa.string(), nullable=False),
        pa.field("total_trade_value", pa.float64(), nullable=False),
    ]
)
"""One row per rebalance event; ``recommendation_id`` is null for SHARES_ALLOCATED, ``total_trade_value`` in $."""


BACKTEST_POINTS_SCHEMA: Final = pa.schema(
    [
        pa.field("backtest_id", pa.string(), nullable=False),
        pa.field("created_at", _TIME, nullable=False),
        pa.field("timestamp", _TIME, nullable=False),
        pa.field("equity", pa.float64(), nullable=False),
        pa.field("cash", pa.float64(), nullable=False),
        pa.field("symbols", pa.list_(pa.string()), nullable=False),
        pa.field("weights", pa.list_(pa.float64()), nullable=False),
        pa.field("rebalanced", pa.bool_(), nullable=False),
        pa.field("turnover", pa.float64(), nullable=False),
        pa.field("cost", pa.float64(), nullable=False),
    ]
)
"""One row per simulated close of each of the portfolio's backtests: equity, cash and cost in $, weights as
fractions in the order of ``symbols``, one-way turnover of that close's trades."""


def _instant(text: object) -> datetime | None:
    """A stored RFC 3339 UTC instant at microsecond precision; None when absent or malformed."""
    if not isinstance(text, str):
        return None
    try:
        return _EPOCH + timedelta(microseconds=instant_nanoseconds(text) // 1000)
    except (SchemaError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class _Dataset:
    """How one dataset is read: its schema, its SELECT (``{where}`` and ``{limit}`` to fill) and keyset."""

    schema: pa.Schema
    query: str
    """``SELECT ... FROM <table> e WHERE {where} ORDER BY <keyset> LIMIT {limit}``. The ORDER BY names the table's
    columns (``e.event_id``, not the selected text of the same name), so that it follows the index."""
    keyset: tuple[tuple[str, str], ...]
    """The keyset: each part's SQL expression and the selected column holding its value (a row comparison continues
    after the last row of a page)."""
    table: str
    """The table whose rows of the portfolio make it known (:meth:`ExportReads.has_rows`)."""
    convert: dict[str, Callable[[Any], Any]]
    """Per-column conversion of a fetched value (the others are taken as fetched)."""


_DATASETS: Final[dict[ExportDataset, _Dataset]] = {
    ExportDataset.OPTIMIZATION_HISTORY: _Dataset(
        schema=HISTORY_SCHEMA,
        query=(
            'SELECT "timestamp", event_id AS k_id, event_id::text AS event_id, portfolio_id, '
            "result_id::text AS result_id, configuration_version, request_id, objective, method, expected_return, "
            "volatility, sharpe_ratio, turnover, metadata->>'window_start' AS window_start, "
            "metadata->>'window_end' AS window_end, metadata::text AS metadata "
            'FROM portfolio_optimized e WHERE {where} ORDER BY e."timestamp", e.event_id LIMIT {limit}'
        ),
        keyset=(('e."timestamp"', "timestamp"), ("e.event_id", "k_id")),
        table="portfolio_optimized",
        convert={"window_start": _instant, "window_end": _instant},
    ),
    ExportDataset.WEIGHTS: _Dataset(
        schema=WEIGHTS_SCHEMA,
        query=(
            'SELECT e."timestamp", e.event_id AS k_id, e.event_id::text AS event_id, w.key AS symbol, '
            "w.value::float8 AS weight "
            "FROM portfolio_optimized e CROSS JOIN LATERAL jsonb_each_text(e.weights) AS w "
            'WHERE {where} ORDER BY e."timestamp", e.event_id, w.key COLLATE "C" LIMIT {limit}'
        ),
        keyset=(('e."timestamp"', "timestamp"), ("e.event_id", "k_id"), ('w.key COLLATE "C"', "symbol")),
        table="portfolio_optimized",
        convert={},
    ),
    ExportDataset.REBALANCE_EVENTS: _Dataset(
        schema=REBALANCE_EVENTS_SCHEMA,
        query=(
            'SELECT "timestamp", event_id AS k_id, event_id::text AS event_id, portfolio_id, '
            "recommendation_id::text AS recommendation_id, event_type, status, actor, total_trade_value "
            'FROM rebalance_events e WHERE {where} ORDER BY e."timestamp", e.event_id LIMIT {limit}'
        ),
        keyset=(('e."timestamp"', "timestamp"), ("e.event_id", "k_id")),
        table="rebalance_events",
        convert={},
    ),
    ExportDataset.BACKTEST_POINTS: _Dataset(
        schema=BACKTEST_POINTS_SCHEMA,
        query=(
            "SELECT p.created_at AS k_created, p.backtest_id AS k_id, p.backtest_id::text AS backtest_id, "
            'p.created_at, p."timestamp", p.equity, p.cash, b.symbols, p.weights, p.rebalanced, p.turnover, p.cost '
            "FROM backtest_points p JOIN backtests b ON b.backtest_id = p.backtest_id AND b.created_at = p.created_at "
            'WHERE {where} ORDER BY p.created_at, p.backtest_id, p."timestamp" LIMIT {limit}'
        ),
        keyset=(("p.created_at", "k_created"), ("p.backtest_id", "k_id"), ('p."timestamp"', "timestamp")),
        table="backtests",
        convert={"symbols": list, "weights": list},
    ),
}


def dataset_schema(dataset: ExportDataset) -> pa.Schema:
    """The Arrow schema of a dataset's batches."""
    return _DATASETS[dataset].schema


def _page_query(
    spec: _Dataset, conditions: list[str], arguments: list[object], after: tuple[object, ...] | None
) -> str:
    """The page's SQL: the range conditions, the keyset continuation after ``after``, the limit (appended last)."""
    conditions = list(conditions)
    if after is not None:
        first = len(arguments) + 1
        arguments.extend(after)
        places = ", ".join(f"${first + k}" for k in range(len(after)))
        # The plain bound lets TimescaleDB skip older chunks; the row comparison is the keyset.
        conditions.append(f"{spec.keyset[0][0]} >= ${first}")
        conditions.append(f"({', '.join(sql for sql, _ in spec.keyset)}) > ({places})")
    where = " AND ".join(conditions)  # the range's columns are unambiguous in every query (one event table)
    return spec.query.format(where=where, limit=f"${len(arguments) + 1}")


def record_batch(schema: pa.Schema, rows: list[dict[str, Any]] | list[asyncpg.Record]) -> pa.RecordBatch:
    """A record batch of ``schema`` from fetched rows (a column per schema field, by name).

    Parameters
    ----------
    schema : pyarrow.Schema
        The dataset's schema.
    rows : list of mapping
        Rows holding at least the schema's columns, already converted (timezone-aware datetimes, str, float).

    Returns
    -------
    pyarrow.RecordBatch
        ``len(rows)`` rows.
    """
    return pa.RecordBatch.from_arrays(
        [pa.array([row[f.name] for row in rows], type=f.type) for f in schema], schema=schema
    )


def ipc_stream(batch: pa.RecordBatch) -> bytes:
    """``batch`` as a self-contained Arrow IPC stream (schema, the batch, end-of-stream marker)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def ipc_messages(batch: pa.RecordBatch, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[tuple[bytes, int]]:
    """``(IPC stream, rows)`` of ``batch``, halved until each stream is at most ``max_bytes`` or one row."""
    data = ipc_stream(batch)
    if len(data) <= max_bytes or batch.num_rows <= 1:
        yield data, batch.num_rows
        return
    half = batch.num_rows // 2
    yield from ipc_messages(batch.slice(0, half), max_bytes)
    yield from ipc_messages(batch.slice(half), max_bytes)


def _batch(spec: _Dataset, rows: list[asyncpg.Record]) -> pa.RecordBatch:
    """The record batch of a page: column by column, converting the columns ``spec.convert`` names."""
    arrays = []
    for field in spec.schema:
        values = [row[field.name] for row in rows]
        convert = spec.convert.get(field.name)
        arrays.append(pa.array(values if convert is None else [convert(v) for v in values], type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=spec.schema)


class ExportReads:
    """Keyset-paginated reads of the exportable datasets over asyncpg.

    Parameters
    ----------
    pool : asyncpg.Pool
        The query side's pool (a connection is held for one page at a time).
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def batches(
        self,
        dataset: ExportDataset,
        portfolio_id: str,
        *,
        start: datetime | None,
        end: datetime | None,
        batch_rows: int = EXPORT_BATCH_ROWS,
    ) -> AsyncIterator[pa.RecordBatch]:
        """The dataset's rows of the portfolio in ``[start, end)``, oldest first, one page per batch.

        Parameters
        ----------
        dataset : ExportDataset
            Which rows and schema.
        portfolio_id : str
            Portfolio identifier.
        start, end : datetime or None
            Inclusive lower and exclusive upper bound on the event time; None = no bound.
        batch_rows : int
            Most rows per batch (positive).

        Yields
        ------
        pyarrow.RecordBatch
            Batches of :func:`dataset_schema` with 1 to ``batch_rows`` rows; none when the range holds no row.

        Raises
        ------
        UnavailableError
            When the database cannot be reached (between two batches as well).
        """
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        spec = _DATASETS[dataset]
        conditions, base = time_range(portfolio_id, start, end)
        after: tuple[object, ...] | None = None
        while True:
            arguments = list(base)
            query = _page_query(spec, conditions, arguments, after)
            async with postgres_errors():
                rows = await self._pool.fetch(query, *arguments, batch_rows)
            if not rows:
                return
            yield _batch(spec, rows)
            if len(rows) < batch_rows:
                return
            after = tuple(rows[-1][column] for _, column in spec.keyset)

    async def has_rows(self, dataset: ExportDataset, portfolio_id: str) -> bool:
        """Whether the portfolio has any row in the dataset's table (at any time).

        Raises
        ------
        UnavailableError
            When the database cannot be reached.
        """
        query = f"SELECT EXISTS (SELECT 1 FROM {_DATASETS[dataset].table} WHERE portfolio_id = $1)"
        async with postgres_errors():
            found = await self._pool.fetchval(query, portfolio_id)
        return bool(found)
