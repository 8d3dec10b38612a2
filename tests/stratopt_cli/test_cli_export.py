"""``stratopt export`` and the analytics commands against the session's real server and database.

Truth: the same portfolio read through GetHistory and GetWeightHistory; the files are read back with polars.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli.main import app

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(scope="module")
def portfolio(commands: Any) -> str:
    """Five runs on moments; the third holds a fourth symbol."""
    portfolio_id = f"cli-export-{uuid.uuid4().hex[:8]}"
    for k in range(5):
        symbols = ("A", "B", "C", "D") if k == 2 else ("A", "B", "C")
        n = len(symbols)
        covariance = [0.0] * (n * n)
        for i in range(n):
            covariance[i * n + i] = 0.01 * (i + 1) + 0.003 * k
        commands.Optimize(
            cmd_pb.OptimizeRequest(
                portfolio_id=portfolio_id,
                strategies=[pb.Strategy(symbol=s) for s in symbols],
                moments=pb.MomentsInput(expected_returns=[0.05] * n, covariance=covariance),
                objective=pb.OBJECTIVE_MIN_VOLATILITY,
            ),
            timeout=60,
        )
    return portfolio_id


def history(queries: Any, portfolio_id: str) -> list[pb.PortfolioOptimizedEvent]:
    page = queries.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id, page_size=1000))
    assert not page.next_page_token
    return list(page.events)[::-1]


def invoke(*arguments: str) -> Any:
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("file_format", ["parquet", "csv", "arrow"])
def test_export_writes_every_weight_batch_by_batch(
    server_target: str, queries: Any, portfolio: str, tmp_path: Path, file_format: str
) -> None:
    events = history(queries, portfolio)
    truth = [(e.event_id, s, w) for e in events for s, w in sorted(e.weights.items())]
    output = tmp_path / f"weights.{file_format}"
    result = invoke(
        "export", "weights", portfolio, "--output", str(output), "--batch-rows", "4", "--target", server_target
    )
    assert f"wrote {len(truth)} rows of weights" in result.stderr
    assert not (tmp_path / f"weights.{file_format}.partial").exists()
    if file_format == "parquet":
        frame = pl.read_parquet(output)
        assert pq.ParquetFile(output).num_row_groups == -(-len(truth) // 4)  # one row group per batch
    elif file_format == "csv":
        frame = pl.read_csv(output, try_parse_dates=True)
    else:
        frame = pl.read_ipc(output)
    assert frame.columns == ["timestamp", "event_id", "symbol", "weight"]
    assert list(frame.select("event_id", "symbol", "weight").iter_rows()) == truth
    assert frame["timestamp"].dt.convert_time_zone("UTC").to_list() == [
        e.timestamp.ToDatetime(tzinfo=UTC) for e in events for _ in e.weights
    ]


def test_export_history_to_csv_with_a_range_and_an_explicit_format(
    server_target: str, queries: Any, portfolio: str, tmp_path: Path
) -> None:
    events = history(queries, portfolio)
    output = tmp_path / "history.txt"
    start = events[1].timestamp.ToDatetime().isoformat()
    end = events[4].timestamp.ToDatetime().isoformat()
    arguments = ["export", "OPTIMIZATION-HISTORY", portfolio, "-o", str(output), "--format", "csv"]
    invoke(*arguments, "--start", start, "--end", end, "--target", server_target)
    frame = pl.read_csv(output, try_parse_dates=True)
    assert frame["event_id"].to_list() == [e.event_id for e in events[1:4]]
    assert frame["sharpe_ratio"].to_list() == [e.sharpe_ratio for e in events[1:4]]
    assert frame["turnover"].null_count() == 0  # the first run of the range has one (against the run before)


def test_export_errors_exit_1_and_leave_no_file(server_target: str, tmp_path: Path) -> None:
    output = tmp_path / "nobody.parquet"
    result = runner.invoke(app, ["export", "weights", "cli-nobody", "-o", str(output), "--target", server_target])
    assert result.exit_code == 1 and "NOT_FOUND" in result.output
    assert list(tmp_path.iterdir()) == []
    unknown = runner.invoke(app, ["export", "weights", "p", "-o", str(tmp_path / "x.xlsx"), "--target", server_target])
    assert unknown.exit_code == 2 and "--format" in unknown.output


def test_weights_prints_long_and_pivoted_tables(server_target: str, queries: Any, portfolio: str) -> None:
    answer = queries.GetWeightHistory(query_pb.GetWeightHistoryRequest(portfolio_id=portfolio))
    assert list(answer.symbols) == ["A", "B", "C", "D"]

    wide = list(csv.DictReader(io.StringIO(invoke("weights", portfolio, "--pivot", "--target", server_target).stdout)))
    assert [row["event_id"] for row in wide] == [run.event_id for run in answer.runs]
    for row, run in zip(wide, answer.runs, strict=True):
        assert [float(row[s]) for s in answer.symbols] == list(run.weights)
        assert row["turnover"] == ("" if not run.HasField("turnover") else row["turnover"])
        if run.HasField("turnover"):
            assert float(row["turnover"]) == run.turnover

    long = list(csv.DictReader(io.StringIO(invoke("weights", portfolio, "--target", server_target).stdout)))
    assert [(r["event_id"], r["symbol"], float(r["weight"])) for r in long] == [
        (run.event_id, s, w) for run in answer.runs for s, w in zip(answer.symbols, run.weights, strict=True) if w
    ]
    assert sum(r["symbol"] == "D" for r in long) == 1  # only the third run holds D

    raw = json.loads(invoke("weights", portfolio, "--json", "--max-runs", "2", "--target", server_target).stdout)
    assert raw["truncated"] is True and len(raw["runs"]) == 2


def test_realised_compare_and_rebalance_stats_print_json(server_target: str, portfolio: str) -> None:
    realised = json.loads(invoke("realised", portfolio, "--target", server_target).stdout)
    assert len(realised["runs"]) == 5 and all("windowEnd" not in run for run in realised["runs"])

    compared = json.loads(invoke("compare", portfolio, "cli-nobody", "--target", server_target).stdout)
    assert [p["portfolioId"] for p in compared["portfolios"]] == [portfolio, "cli-nobody"]
    assert compared["portfolios"][0]["runCount"] == 5 and "runCount" not in compared["portfolios"][1]

    assert json.loads(invoke("rebalance-stats", portfolio, "--target", server_target).stdout) == {}
    bad = runner.invoke(app, ["rebalance-stats", portfolio, "--bucket-hours", "0", "--target", server_target])
    assert bad.exit_code == 1 and "bucket_width" in bad.output


def test_a_csv_export_writes_list_columns_as_json_arrays(tmp_path: Path) -> None:
    """A backtest point's symbols and weights (Arrow lists, which CSV cannot hold) come out as JSON arrays."""
    from datetime import datetime

    from query_side.export import BACKTEST_POINTS_SCHEMA, ipc_stream, record_batch
    from stratopt_cli.export import FileFormat, write_export

    rows = [
        {"backtest_id": "b", "created_at": datetime(2024, 1, 1, tzinfo=UTC),
         "timestamp": datetime(2023, 1, 3, tzinfo=UTC), "equity": 1e6, "cash": 10.0, "symbols": ["A", "B"],
         "weights": [0.25, 0.75], "rebalanced": True, "turnover": 1.0, "cost": 12.0},
        {"backtest_id": "b", "created_at": datetime(2024, 1, 1, tzinfo=UTC),
         "timestamp": datetime(2023, 1, 4, tzinfo=UTC), "equity": 1.01e6, "cash": 10.0, "symbols": [],
         "weights": [], "rebalanced": False, "turnover": 0.0, "cost": 0.0},
    ]  # fmt: skip
    message = query_pb.ExportDataResponse(
        arrow_ipc_stream=ipc_stream(record_batch(BACKTEST_POINTS_SCHEMA, rows)), row_count=2
    )
    output = tmp_path / "points.csv"
    assert write_export([message], FileFormat.CSV, output) == 2
    with output.open(newline="") as f:
        read = list(csv.DictReader(f))
    assert [(json.loads(r["symbols"]), json.loads(r["weights"])) for r in read] == [
        (["A", "B"], [0.25, 0.75]),
        ([], []),
    ]
    assert [float(r["equity"]) for r in read] == [1e6, 1.01e6]
