"""The analytics commands of ``stratopt``: ``realised``, ``weights``, ``compare`` and ``rebalance-stats``.

Each calls one query RPC (``GetRealisedPerformance``, ``GetWeightHistory``, ``ComparePortfolios``,
``GetRebalanceStatistics``) and prints its answer as JSON (the protobuf JSON mapping, as ``stratopt analytics``);
``weights`` prints a CSV table instead, long (one row per run and held symbol) or pivoted (one row per run, one
column per symbol). Errors print the status and every field at fault, and exit 1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
import polars as pl
import typer
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from stratopt.v1 import query_service_pb2 as query_pb
from stratopt_cli import client

app = typer.Typer()
"""The commands, merged into the top-level ``stratopt`` app (``stratopt_cli.main``)."""

Target = Annotated[
    str, typer.Option("--target", envvar="STRATOPT_TARGET", help="host:port of a running stratopt server.")
]
Start = Annotated[datetime | None, typer.Option(help="Inclusive lower bound on the event time (UTC).")]
End = Annotated[datetime | None, typer.Option(help="Exclusive upper bound on the event time (UTC).")]


def _ranged(request: Any, start: datetime | None, end: datetime | None) -> Any:
    """``request`` with its ``start`` and ``end`` set from the options (naive times are UTC)."""
    if start is not None:
        request.start.FromDatetime(start)
    if end is not None:
        request.end.FromDatetime(end)
    return request


def _query(method: str, request: Any, target: str, timeout: float = 60.0) -> Any:
    """Call one query RPC through the top-level connection options; exit 1 on an error."""
    from stratopt_cli.main import _channel, _fail  # the top-level connection options (TLS, token)

    with _channel(target) as ch:
        try:
            return getattr(client.query_stub(ch), method)(request, timeout=timeout)
        except grpc.RpcError as error:
            _fail(error)
    raise AssertionError("unreachable")  # pragma: no cover (_fail exits)


def _print_json(message: Any) -> None:
    typer.echo(json_format.MessageToJson(message, indent=2))


@app.command()
def realised(
    portfolio_id: str,
    start: Start = None,
    end: End = None,
    horizon_days: Annotated[
        int, typer.Option(min=0, help="Holding period after each window end, days (0: until the next run's).")
    ] = 0,
    risk_free_rate: Annotated[float, typer.Option(help="Annualised risk-free rate (decimal).")] = 0.0,
    periods_per_year: Annotated[int, typer.Option(min=0, help="Periods per year of the closes (0: 252).")] = 0,
    target: Target = client.DEFAULT_TARGET,
) -> None:
    """Print each run's ex-ante figures beside its realised ones (GetRealisedPerformance) as JSON."""
    request = query_pb.GetRealisedPerformanceRequest(
        portfolio_id=portfolio_id,
        horizon_days=horizon_days,
        risk_free_rate=risk_free_rate,
        periods_per_year=periods_per_year,
    )
    _print_json(_query("GetRealisedPerformance", _ranged(request, start, end), target))


def weight_table(response: query_pb.GetWeightHistoryResponse, *, pivot: bool) -> pl.DataFrame:
    """The weight history as a table.

    Parameters
    ----------
    response : stratopt.v1.GetWeightHistoryResponse
        The runs, oldest first, with one weight per symbol of ``response.symbols``.
    pivot : bool
        False: long form, columns ``timestamp, event_id, symbol, weight``, one row per run and symbol it holds
        (non-zero weight), runs oldest first and symbols sorted. True: one row per run, columns ``timestamp,
        event_id, turnover`` (one-way, against the previous run; null for the portfolio's first) and one column
        per symbol (0 where the run holds none).

    Returns
    -------
    polars.DataFrame
        Timestamps as UTC datetimes (microseconds), weights as fractions.
    """
    times = [run.timestamp.ToDatetime(tzinfo=UTC) for run in response.runs]
    ids = [run.event_id for run in response.runs]
    time_type = pl.Datetime("us", "UTC")
    if pivot:
        columns: dict[str, pl.Series] = {
            "timestamp": pl.Series(times, dtype=time_type),
            "event_id": pl.Series(ids, dtype=pl.String),
            "turnover": pl.Series(
                [r.turnover if r.HasField("turnover") else None for r in response.runs], dtype=pl.Float64
            ),
        }
        for j, symbol in enumerate(response.symbols):
            columns[symbol] = pl.Series([run.weights[j] for run in response.runs], dtype=pl.Float64)
        return pl.DataFrame(columns)
    rows = [
        (times[i], ids[i], symbol, weight)
        for i, run in enumerate(response.runs)
        for symbol, weight in zip(response.symbols, run.weights, strict=True)
        if weight != 0.0
    ]
    return pl.DataFrame(
        rows,
        schema={"timestamp": time_type, "event_id": pl.String, "symbol": pl.String, "weight": pl.Float64},
        orient="row",
    )


@app.command()
def weights(
    portfolio_id: str,
    start: Start = None,
    end: End = None,
    max_runs: Annotated[int, typer.Option(min=0, max=10_000, help="The latest runs of the range (0: 1000).")] = 0,
    pivot: Annotated[bool, typer.Option(help="One row per run and one column per symbol (with turnover).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the GetWeightHistory answer as JSON.")] = False,
    target: Target = client.DEFAULT_TARGET,
) -> None:
    """Print a portfolio's weight history (GetWeightHistory) as CSV: long (run, symbol, weight) or --pivot.

    The long form lists the symbols each run holds (non-zero weights); the pivoted form one column per symbol any
    listed run holds and each run's one-way turnover. A "truncated" note goes to stderr when older runs of the
    range were left out (more than --max-runs).
    """
    request = _ranged(query_pb.GetWeightHistoryRequest(portfolio_id=portfolio_id, max_runs=max_runs), start, end)
    response = _query("GetWeightHistory", request, target)
    if as_json:
        _print_json(response)
        return
    typer.echo(weight_table(response, pivot=pivot).write_csv(), nl=False)
    if response.truncated:
        typer.echo("weights: truncated (older runs of the range were left out; raise --max-runs)", err=True)


@app.command()
def compare(
    portfolio_ids: Annotated[list[str], typer.Argument(help="1 to 50 portfolio ids.")],
    start: Start = None,
    end: End = None,
    target: Target = client.DEFAULT_TARGET,
) -> None:
    """Print portfolios side by side over a range (ComparePortfolios) as JSON."""
    request = _ranged(query_pb.ComparePortfoliosRequest(portfolio_ids=portfolio_ids), start, end)
    _print_json(_query("ComparePortfolios", request, target))


@app.command("rebalance-stats")
def rebalance_stats(
    portfolio_id: str,
    start: Start = None,
    end: End = None,
    bucket_hours: Annotated[float, typer.Option(help="Bucket width in hours (at least 1 second).")] = 24.0,
    target: Target = client.DEFAULT_TARGET,
) -> None:
    """Print rebalance and cost statistics per time bucket (GetRebalanceStatistics) as JSON."""
    request = query_pb.GetRebalanceStatisticsRequest(
        portfolio_id=portfolio_id, bucket_width=Duration(seconds=round(bucket_hours * 3600))
    )
    _print_json(_query("GetRebalanceStatistics", _ranged(request, start, end), target))


@app.command("sector-exposure")
def sector_exposure(
    portfolio_id: str,
    start: Start = None,
    end: End = None,
    max_runs: Annotated[int, typer.Option(min=0, max=10_000, help="The latest runs of the range (0: 1000).")] = 0,
    gross: Annotated[bool, typer.Option(help="Sum of absolute weights instead of the net sum.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the GetSectorExposure answer as JSON.")] = False,
    target: Target = client.DEFAULT_TARGET,
) -> None:
    """Print a portfolio's sector exposure per run (GetSectorExposure) as CSV: one row per run, one column per sector.

    Exposures are fractions of the portfolio: net (Σ w over the sector's strategies, the default) or --gross (Σ |w|),
    by the sectors of the configuration version each run used.
    """
    request = _ranged(query_pb.GetSectorExposureRequest(portfolio_id=portfolio_id, max_runs=max_runs), start, end)
    response = _query("GetSectorExposure", request, target)
    if as_json:
        _print_json(response)
        return
    columns: dict[str, pl.Series] = {
        "timestamp": pl.Series(
            [r.timestamp.ToDatetime(tzinfo=UTC) for r in response.runs], dtype=pl.Datetime("us", "UTC")
        ),
        "event_id": pl.Series([r.event_id for r in response.runs], dtype=pl.String),
    }
    for j, sector in enumerate(response.sectors):
        columns[sector] = pl.Series([(r.gross if gross else r.net)[j] for r in response.runs], dtype=pl.Float64)
    typer.echo(pl.DataFrame(columns).write_csv(), nl=False)
    if response.truncated:
        typer.echo("sector-exposure: truncated (older runs of the range were left out; raise --max-runs)", err=True)
