r"""Per-time-bucket analytics of a portfolio's optimization runs: pure functions, no database, no gRPC.

A run is one ``portfolio_optimized`` event. Runs are ordered by ``(timestamp, event_id)`` ascending, the order
the history pages use read backwards, so runs sharing a timestamp still have a well-defined predecessor.

The one-way turnover of run :math:`t` against the portfolio's previous run :math:`t-1` is

.. math:: \tau_t = \tfrac{1}{2} \sum_i \lvert w_{i,t} - w_{i,t-1} \rvert

over the union of the symbols of both runs; an id missing from one run has weight 0 there. The first run
of the history has no predecessor and so no turnover; it counts in ``run_count`` and the means of the run's
own statistics, but not in the turnover mean and maximum. When the analysed window starts after the first run
of the history, the caller passes the weights of the last run before the window (``previous_weights``) so
the first run of the window gets its true turnover.

Turnover is computed with Polars (weights exploded to long format, joined with the previous run's); the bucket
aggregation is DuckDB SQL over the Polars frame. Buckets are ``time_bucket`` intervals of the requested width
aligned to the Unix epoch (1970-01-01T00:00:00Z), not to DuckDB's and TimescaleDB's default origin of
2000-01-03.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl

WEIGHT_DTYPE = pl.Struct({"symbol": pl.String, "weight": pl.Float64})
"""One entry of a run's weights: symbol and weight (fraction of portfolio value)."""

EVENTS_SCHEMA = pl.Schema(
    [
        ("timestamp", pl.Datetime("us", "UTC")),
        ("event_id", pl.String()),
        ("weights", pl.List(WEIGHT_DTYPE)),
        ("expected_return", pl.Float64()),
        ("volatility", pl.Float64()),
        ("sharpe_ratio", pl.Float64()),
    ]
)
"""Columns of the runs frame taken by :func:`with_turnover` and :func:`portfolio_analytics`."""

_BUCKET_SQL = """
SELECT
    time_bucket(to_microseconds($width_us), "timestamp", TIMESTAMP '1970-01-01 00:00:00') AS bucket_start,
    count(*) AS run_count,
    avg(sharpe_ratio) AS mean_sharpe_ratio,
    avg(volatility) AS mean_volatility,
    avg(expected_return) AS mean_expected_return,
    avg(turnover) AS mean_turnover,
    max(turnover) AS max_turnover
FROM runs
GROUP BY bucket_start
ORDER BY bucket_start
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One optimization run as the analytics need it."""

    timestamp: datetime
    """Time of the event (timezone-aware)."""
    event_id: str
    """Event identifier (UUID text); breaks ties between runs with the same timestamp."""
    weights: Mapping[str, float]
    """Optimal weights keyed by symbol (fractions of portfolio value)."""
    expected_return: float
    """Annualised expected return (decimal)."""
    volatility: float
    """Annualised volatility (decimal)."""
    sharpe_ratio: float
    """Sharpe ratio at the run's risk-free rate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalyticsBucket:
    """Statistics of the runs in one time bucket."""

    bucket_start: datetime
    """Start of the bucket, UTC, aligned to the Unix epoch."""
    run_count: int
    """Number of runs in the bucket (at least 1)."""
    mean_sharpe_ratio: float
    """Mean Sharpe ratio of the runs."""
    mean_volatility: float
    """Mean annualised volatility (decimal)."""
    mean_expected_return: float
    """Mean annualised expected return (decimal)."""
    mean_turnover: float | None
    """Mean one-way turnover (fraction of portfolio value); None when no run in the bucket has one."""
    max_turnover: float | None
    """Largest one-way turnover; None when no run in the bucket has one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioAnalytics:
    """Per-bucket analytics of a window of runs."""

    buckets: tuple[AnalyticsBucket, ...]
    """Buckets holding at least one run, oldest first."""
    total_runs: int
    """Number of runs in the window."""


def events_frame(runs: Iterable[RunRecord]) -> pl.DataFrame:
    """Build the runs frame (schema :data:`EVENTS_SCHEMA`) from run records.

    Parameters
    ----------
    runs : iterable of RunRecord
        Runs in any order; timestamps must be timezone-aware.

    Returns
    -------
    polars.DataFrame
        One row per run; ``weights`` is a list of ``{symbol, weight}`` structs.
    """
    rows = [
        {
            "timestamp": run.timestamp,
            "event_id": run.event_id,
            "weights": [{"symbol": name, "weight": float(weight)} for name, weight in run.weights.items()],
            "expected_return": run.expected_return,
            "volatility": run.volatility,
            "sharpe_ratio": run.sharpe_ratio,
        }
        for run in runs
    ]
    return pl.DataFrame(rows, schema=EVENTS_SCHEMA)


def with_turnover(events: pl.DataFrame, *, previous_weights: Mapping[str, float] | None = None) -> pl.DataFrame:
    r"""Order runs by ``(timestamp, event_id)`` and add each run's one-way turnover.

    The turnover of a run against the previous run is :math:`\tfrac{1}{2} \sum_i |w_{i,t} - w_{i,t-1}|`
    over the union of both runs' symbols (a missing id weighs 0).

    Parameters
    ----------
    events : polars.DataFrame
        Runs with the columns of :data:`EVENTS_SCHEMA`, in any order; symbols unique within a run.
    previous_weights : mapping of str to float, optional
        Weights of the portfolio's run just before the first run of ``events``; None when that first run is
        the first of the portfolio's history, which then has no turnover.

    Returns
    -------
    polars.DataFrame
        ``events`` sorted by ``(timestamp, event_id)`` with a Float64 ``turnover`` column (fraction of
        portfolio value, in [0, 1] for long-only fully invested portfolios); null for a first run without
        ``previous_weights``.
    """
    ordered = (
        events.sort(["timestamp", "event_id"])
        .with_row_index("run_index")
        .with_columns(pl.col("run_index").cast(pl.Int64))
    )
    run_weights = ordered.select("run_index", "weights").explode("weights").drop_nulls("weights").unnest("weights")
    if previous_weights is not None:
        predecessor = pl.DataFrame(
            {
                "run_index": [-1] * len(previous_weights),
                "symbol": list(previous_weights),
                "weight": [float(weight) for weight in previous_weights.values()],
            },
            schema={"run_index": pl.Int64, "symbol": pl.String, "weight": pl.Float64},
        )
        run_weights = pl.concat([predecessor, run_weights])
    current = run_weights.filter(pl.col("run_index") >= 0)
    previous = run_weights.select(
        (pl.col("run_index") + 1).alias("run_index"),
        "symbol",
        pl.col("weight").alias("previous_weight"),
    )
    turnover = (
        current.join(previous, on=["run_index", "symbol"], how="full", coalesce=True)
        .filter(pl.col("run_index") < ordered.height)
        .group_by("run_index")
        .agg(
            (0.5 * (pl.col("weight").fill_null(0.0) - pl.col("previous_weight").fill_null(0.0)).abs().sum()).alias(
                "turnover"
            )
        )
    )
    first_with_turnover = 0 if previous_weights is not None else 1
    return (
        ordered.join(turnover, on="run_index", how="left")
        .sort("run_index")
        .with_columns(
            pl.when(pl.col("run_index") >= first_with_turnover)
            .then(pl.col("turnover").fill_null(0.0))
            .otherwise(None)
            .alias("turnover")
        )
        .drop("run_index")
    )


def portfolio_analytics(
    events: pl.DataFrame,
    *,
    bucket_width: timedelta,
    previous_weights: Mapping[str, float] | None = None,
) -> PortfolioAnalytics:
    """Aggregate runs per time bucket: count, mean Sharpe, volatility, expected return and turnover.

    Parameters
    ----------
    events : polars.DataFrame
        Runs of one portfolio with the columns of :data:`EVENTS_SCHEMA`, in any order.
    bucket_width : datetime.timedelta
        Bucket width, positive; sub-microsecond parts are ignored. Buckets are aligned to the Unix epoch.
    previous_weights : mapping of str to float, optional
        Weights of the portfolio's last run before ``events`` (see :func:`with_turnover`).

    Returns
    -------
    PortfolioAnalytics
        Buckets holding at least one run, oldest first, and the total run count.

    Raises
    ------
    ValueError
        When ``bucket_width`` is shorter than one microsecond.
    """
    width_us = bucket_width // timedelta(microseconds=1)
    if width_us < 1:
        raise ValueError(f"bucket_width must be at least 1 microsecond, got {bucket_width}")
    if events.height == 0:
        return PortfolioAnalytics(buckets=(), total_runs=0)
    runs = with_turnover(events, previous_weights=previous_weights).select(
        # Naive UTC timestamps: DuckDB sees TIMESTAMP, so bucketing does not depend on a session time zone.
        pl.col("timestamp").dt.convert_time_zone("UTC").dt.replace_time_zone(None),
        "expected_return",
        "volatility",
        "sharpe_ratio",
        "turnover",
    )
    with duckdb.connect() as connection:
        connection.register("runs", runs)
        rows = connection.execute(_BUCKET_SQL, {"width_us": width_us}).fetchall()
    buckets = tuple(
        AnalyticsBucket(
            bucket_start=bucket_start.replace(tzinfo=UTC),
            run_count=int(run_count),
            mean_sharpe_ratio=float(mean_sharpe_ratio),
            mean_volatility=float(mean_volatility),
            mean_expected_return=float(mean_expected_return),
            mean_turnover=None if mean_turnover is None else float(mean_turnover),
            max_turnover=None if max_turnover is None else float(max_turnover),
        )
        for (
            bucket_start,
            run_count,
            mean_sharpe_ratio,
            mean_volatility,
            mean_expected_return,
            mean_turnover,
            max_turnover,
        ) in rows
    )
    return PortfolioAnalytics(buckets=buckets, total_runs=events.height)
