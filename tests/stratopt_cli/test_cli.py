"""The ``stratopt`` CLI's client commands and the demo, against the session's real server and database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from stratopt_cli.demo import run_demo
from stratopt_cli.main import app
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

runner = CliRunner()


def test_optimize_from_json_prints_the_response(server_target: str, stored_prices: dict[str, str]) -> None:
    result = runner.invoke(app, ["optimize", str(REPO_ROOT / "examples/max_sharpe.json"), "--target", server_target])
    assert result.exit_code == 0, result.output
    response = json.loads(result.output)
    weights = response["optimalWeights"]
    assert set(weights) == {"AAPL", "MSFT", "JPM", "JNJ", "UNH", "XOM", "KO", "WMT"}
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert max(weights.values()) <= 0.3 + 1e-6
    assert weights["AAPL"] + weights["MSFT"] <= 0.4 + 1e-6

    latest = runner.invoke(app, ["latest", "sp500-example", "--target", server_target])
    assert latest.exit_code == 0, latest.output
    event = json.loads(latest.output)
    assert event["eventId"] == response["optimizationMetadata"]["eventId"]

    history = runner.invoke(app, ["history", "sp500-example", "--page-size", "1", "--target", server_target])
    assert history.exit_code == 0, history.output
    events = [json.loads(line) for line in history.output.splitlines()]
    assert events[0]["eventId"] == event["eventId"]


def test_min_volatility_on_moments_matches_the_closed_form(server_target: str) -> None:
    """Two-asset-plus check: with only the budget binding, w ∝ Σ⁻¹1 (the target return is not binding here)."""
    request = json.loads((REPO_ROOT / "examples/min_volatility_moments.json").read_text())
    result = runner.invoke(
        app, ["optimize", str(REPO_ROOT / "examples/min_volatility_moments.json"), "--target", server_target]
    )
    assert result.exit_code == 0, result.output
    response = json.loads(result.output)
    cov = np.array(request["moments"]["covariance"]).reshape(3, 3)
    mu = np.array(request["moments"]["expectedReturns"])
    unconstrained = np.linalg.solve(cov, np.ones(3))
    unconstrained /= unconstrained.sum()
    weights = np.array([response["optimalWeights"][s["symbol"]] for s in request["strategies"]])
    if unconstrained.min() >= 0 and mu @ unconstrained >= 0.04:
        np.testing.assert_allclose(weights, unconstrained, atol=1e-6)
    else:  # the return floor binds: check it instead
        assert mu @ weights == pytest.approx(0.04, abs=1e-6)


def test_cli_error_names_the_field_and_exits_1(server_target: str, tmp_path: Path) -> None:
    request: dict[str, Any] = json.loads((REPO_ROOT / "examples/min_volatility_moments.json").read_text())
    request["moments"]["covariance"][1] = 0.5  # no longer symmetric
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(request))
    result = runner.invoke(app, ["optimize", str(path), "--target", server_target])
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output
    assert "field moments.covariance" in result.output


def test_demo_runs_end_to_end_on_real_data(pg_dsn: str) -> None:
    console = Console(record=True, width=200)
    assert run_demo(pg_dsn, console=console) == 0
    text = console.export_text()
    for expected in ("Optimal weights", "sp500-sector-limits", "GetHistory", "GetPortfolioAnalytics", "replayed=True"):
        assert expected in text
    assert "FAILED_PRECONDITION" in text
    # TLS and tokens: the trader's own approval is refused, the risk desk's is recorded as the approver.
    assert "with TLS and bearer tokens" in text
    assert "PERMISSION_DENIED: cannot approve a recommendation you generated" in text
    assert "approved by demo-risk-desk" in text


def test_ingest_csv_command_stores_prices(server_target: str, tmp_path: Path, db: Any) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("date,CLI_A,CLI_B\n2024-01-02,10.0,20.0\n2024-01-03,10.5,\n2024-01-04,10.25,21.0\n")
    result = runner.invoke(app, ["ingest", str(path), "--symbol-prefix", "T.", "--target", server_target])
    assert result.exit_code == 0, result.output
    assert "stored 5 bars for 2 symbols" in result.output
    rows = db.execute(
        "SELECT symbol, \"timestamp\"::date::text, price FROM market_data WHERE symbol LIKE 'T.CLI_%' "
        'ORDER BY symbol, "timestamp"'
    ).fetchall()
    assert rows == [
        ("T.CLI_A", "2024-01-02", 10.0),
        ("T.CLI_A", "2024-01-03", 10.5),
        ("T.CLI_A", "2024-01-04", 10.25),
        ("T.CLI_B", "2024-01-02", 20.0),
        ("T.CLI_B", "2024-01-04", 21.0),
    ]


def test_trading_commands_walk_the_examples(server_target: str, stored_prices: dict[str, str]) -> None:
    """The trading commands on the examples: allocate, holdings, policy, rebalance, approve, drift, events."""

    def run(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--target", server_target])
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if result.output.strip() else None

    allocation = run("allocate", str(REPO_ROOT / "examples/allocate_shares.json"))
    metrics = allocation["metrics"]
    # Budget: the holdings at their prices plus the extra cash (GE is sold in full: not a target).
    assert metrics["budget"] == pytest.approx(40 * 125.674 + 100 * 63.883 + 85000, rel=1e-12)
    assert metrics["unusedFraction"] <= 1e-4
    assert [line["symbol"] for line in allocation["lines"]] == ["AAPL", "JNJ", "KO", "MSFT", "XOM"]
    assert allocation["soldInFull"][0]["symbol"] == "GE"
    cached = run("allocation-cache", allocation["cacheKey"])
    assert cached["allocation"]["cached"] is True

    run("holdings", str(REPO_ROOT / "examples/holdings.json"))
    run("policy", str(REPO_ROOT / "examples/rebalance_policy.json"))
    recommendation = run(
        "rebalance", "example-rebalance", "--request-file", str(REPO_ROOT / "examples/generate_rebalance.json")
    )["recommendation"]
    assert recommendation["trades"]
    assert recommendation["status"] in ("RECOMMENDATION_STATUS_PENDING_APPROVAL", "RECOMMENDATION_STATUS_AUTO_APPROVED")
    if recommendation["status"] == "RECOMMENDATION_STATUS_PENDING_APPROVAL":
        run("approve", recommendation["recommendationId"])
    stored = run("recommendation", recommendation["recommendationId"])["recommendation"]
    assert stored["status"] in ("RECOMMENDATION_STATUS_APPROVED", "RECOMMENDATION_STATUS_AUTO_APPROVED")
    events = run("rebalance-events", "example-rebalance")["events"]
    assert events[-1]["eventType"] == "CREATED"
    # No optimization has been stored for this portfolio: drift has no target and says so (exit 1).
    failed = runner.invoke(app, ["drift", "example-rebalance", "--target", server_target])
    assert failed.exit_code == 1 and "NO_TARGET" in failed.output


def test_backtest_commands_run_show_and_list(server_target: str, stored_prices: dict[str, str], commands: Any) -> None:
    from stratopt.v1 import command_service_pb2 as cmd_pb
    from stratopt.v1 import types_pb2 as pb

    config = cmd_pb.OptimizationConfiguration(
        portfolio_id="cli-backtest",
        strategies=[pb.Strategy(symbol=s) for s in ("AAPL", "KO", "JNJ", "XOM")],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        enabled=True,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    ran = runner.invoke(
        app,
        ["backtest", "cli-backtest", "--start", "2016-01-01", "--end", "2018-12-31", "--frequency", "quarterly",
         "--commission-bps", "5", "--target", server_target],
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    summary = json.loads(ran.stdout[ran.stdout.index("{") :])
    assert summary["portfolioId"] == "cli-backtest" and summary["decisions"] == 12
    assert summary["metrics"]["totalCosts"] > 0
    shown = runner.invoke(app, ["get-backtest", summary["backtestId"], "--points", "--target", server_target])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.strip().splitlines()
    points = [json.loads(line) for line in lines if line.startswith('{"timestamp"')]
    assert len(points) == summary["observations"]
    listed = runner.invoke(app, ["list-backtests", "cli-backtest", "--target", server_target])
    assert summary["backtestId"] in listed.stdout
    bad = runner.invoke(app, ["backtest", "cli-backtest", "--frequency", "drift", "--target", server_target])
    assert bad.exit_code == 1 and "schedule" in bad.output
