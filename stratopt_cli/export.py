"""``stratopt export``: stream one dataset of a portfolio (``ExportData``) into a Parquet, CSV or Arrow IPC file.

Every message of the stream is a self-contained Arrow IPC stream of one record batch; the batches are written one
at a time as they arrive (``pyarrow.parquet.ParquetWriter``, ``pyarrow.csv.CSVWriter`` or an Arrow IPC *file*
writer), so memory stays one batch whatever the export's length. The file is written under a temporary name beside
the output and renamed when the stream has ended: a failed export leaves no partial file. Progress (rows and
batches written) goes to stderr.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import grpc
import pyarrow as pa
import typer

from stratopt.v1 import query_service_pb2 as query_pb
from stratopt_cli import client

app = typer.Typer()
"""The command, merged into the top-level ``stratopt`` app (``stratopt_cli.main``)."""

Target = Annotated[
    str, typer.Option("--target", envvar="STRATOPT_TARGET", help="host:port of a running stratopt server.")
]


class Dataset(enum.StrEnum):
    """The datasets of ``stratopt export`` (``stratopt.v1.ExportDataset``)."""

    OPTIMIZATION_HISTORY = "optimization-history"
    WEIGHTS = "weights"
    REBALANCE_EVENTS = "rebalance-events"
    BACKTEST_POINTS = "backtest-points"


DATASETS: dict[Dataset, query_pb.ExportDataset.ValueType] = {
    Dataset.OPTIMIZATION_HISTORY: query_pb.EXPORT_DATASET_OPTIMIZATION_HISTORY,
    Dataset.WEIGHTS: query_pb.EXPORT_DATASET_WEIGHTS,
    Dataset.REBALANCE_EVENTS: query_pb.EXPORT_DATASET_REBALANCE_EVENTS,
    Dataset.BACKTEST_POINTS: query_pb.EXPORT_DATASET_BACKTEST_POINTS,
}


class FileFormat(enum.StrEnum):
    """Output file formats."""

    PARQUET = "parquet"
    CSV = "csv"
    ARROW = "arrow"
    """The Arrow IPC file format (Feather v2)."""


SUFFIXES: dict[str, FileFormat] = {
    ".parquet": FileFormat.PARQUET,
    ".pq": FileFormat.PARQUET,
    ".csv": FileFormat.CSV,
    ".arrow": FileFormat.ARROW,
    ".feather": FileFormat.ARROW,
    ".ipc": FileFormat.ARROW,
}
"""The format an output's suffix implies when ``--format`` is not given."""


class BatchWriter(Protocol):
    """What the pyarrow writers have in common."""

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append one batch."""

    def close(self) -> None:
        """Finish the file."""


class _CsvWriter:
    """``pyarrow.csv.CSVWriter`` with list columns written as JSON arrays (CSV has no lists; pyarrow refuses them).

    A backtest point's ``symbols`` and ``weights`` become e.g. ``["AAPL","MSFT"]`` and ``[0.6,0.4]``.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow.csv as pa_csv

        self._lists = [i for i, f in enumerate(schema) if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
        fields = [pa.field(f.name, pa.string(), f.nullable) if i in self._lists else f for i, f in enumerate(schema)]
        self._schema = pa.schema(fields)
        self._writer = pa_csv.CSVWriter(str(path), self._schema)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        columns = list(batch.columns)
        for i in self._lists:
            values = columns[i].to_pylist()
            columns[i] = pa.array(
                [None if v is None else json.dumps(v, separators=(",", ":"), allow_nan=False) for v in values],
                pa.string(),
            )
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def open_writer(file_format: FileFormat, path: Path, schema: pa.Schema) -> BatchWriter:
    """A pyarrow writer of ``schema`` batches into a new file at ``path``.

    Parameters
    ----------
    file_format : FileFormat
        Parquet (one row group per batch), CSV (header, then the rows) or Arrow IPC file.
    path : pathlib.Path
        The file (created or truncated).
    schema : pyarrow.Schema
        Schema of every batch.

    Returns
    -------
    BatchWriter
        Call ``write_batch`` per batch and ``close`` at the end.
    """
    writer: Any
    if file_format is FileFormat.PARQUET:
        import pyarrow.parquet as pq  # imported when used: `stratopt` starts without it

        writer = pq.ParquetWriter(str(path), schema)
    elif file_format is FileFormat.CSV:
        writer = _CsvWriter(path, schema)
    else:
        writer = pa.ipc.new_file(str(path), schema)
    return writer  # type: ignore[no-any-return]


def write_export(
    messages: Iterable[query_pb.ExportDataResponse],
    file_format: FileFormat,
    path: Path,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write an ExportData stream's batches to ``path``, one at a time.

    Parameters
    ----------
    messages : iterable of stratopt.v1.ExportDataResponse
        The stream (each message a self-contained Arrow IPC stream).
    file_format : FileFormat
        Output format.
    path : pathlib.Path
        Output file; written as ``<name>.partial`` beside it and renamed at the end (removed on any error).
    progress : callable, optional
        Called with ``(rows written, batches written)`` after each message.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    grpc.RpcError
        The stream's error (nothing is left at ``path``).
    ValueError
        The stream held no message, or batches of different schemas.
    """
    partial = path.with_name(path.name + ".partial")
    writer: BatchWriter | None = None
    schema: pa.Schema | None = None
    rows = batches = 0
    try:
        for message in messages:
            reader = pa.ipc.open_stream(message.arrow_ipc_stream)
            if writer is None:
                schema = reader.schema
                writer = open_writer(file_format, partial, schema)
            elif not reader.schema.equals(schema):
                raise ValueError("the server sent batches of different schemas")
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
            batches += 1
            if progress is not None:
                progress(rows, batches)
        if writer is None:
            raise ValueError("the server sent no batch")
        writer.close()
        writer = None
        os.replace(partial, path)
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                writer.close()
        partial.unlink(missing_ok=True)
        raise
    return rows


def _file_format(output: Path, file_format: FileFormat | None) -> FileFormat:
    if file_format is not None:
        return file_format
    found = SUFFIXES.get(output.suffix.lower())
    if found is None:
        raise typer.BadParameter(
            f"cannot tell the format from {output.suffix or 'no suffix'!r}: give --format", param_hint="--format"
        )
    return found


@app.command("export")
def export(
    dataset: Annotated[Dataset, typer.Argument(help="What to export.", case_sensitive=False)],
    portfolio_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="The file to write.")],
    file_format: Annotated[
        FileFormat | None,
        typer.Option("--format", case_sensitive=False, help="Default: from the output's suffix."),
    ] = None,
    start: Annotated[datetime | None, typer.Option(help="Inclusive lower bound on the event time (UTC).")] = None,
    end: Annotated[datetime | None, typer.Option(help="Exclusive upper bound (UTC).")] = None,
    batch_rows: Annotated[int, typer.Option(min=0, max=10_000, help="Rows per streamed batch (0: 10,000).")] = 0,
    timeout: Annotated[float, typer.Option(help="Deadline of the whole export, seconds.")] = 3600.0,
    target: Target = client.DEFAULT_TARGET,
) -> None:
    """Export a portfolio's optimization history, long-form weights or rebalance events to a file.

    Streams ExportData (Arrow record batches, oldest first) and writes each batch as it arrives: Parquet, CSV or
    an Arrow IPC file. Rows written are reported on stderr; on an error nothing is left at the output path.
    """
    from stratopt_cli.main import _channel, _fail  # the top-level connection options (TLS, token)

    chosen = _file_format(output, file_format)
    request = query_pb.ExportDataRequest(
        portfolio_id=portfolio_id, dataset=DATASETS[dataset], max_batch_rows=batch_rows
    )
    if start is not None:
        request.start.FromDatetime(start)
    if end is not None:
        request.end.FromDatetime(end)

    def report(rows: int, batches: int) -> None:
        typer.echo(f"\rexport: {rows:,} rows in {batches} batches", err=True, nl=False)

    with _channel(target) as ch:
        try:
            rows = write_export(client.query_stub(ch).ExportData(request, timeout=timeout), chosen, output, report)
        except grpc.RpcError as error:
            typer.echo("", err=True)
            _fail(error)
        except ValueError as error:
            typer.echo(f"\nstratopt export: {error}", err=True)
            raise typer.Exit(code=1) from None
    typer.echo(f"\nwrote {rows:,} rows of {dataset.value} to {output} ({chosen.value})", err=True)
