"""``stratopt plot frontier|weights`` end to end: the session's real server on real stored prices, PNGs checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt_cli import plots
from stratopt_cli.main import app
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

runner = CliRunner()
EXAMPLE = REPO_ROOT / "examples/max_sharpe.json"
SYMBOLS = ["AAPL", "MSFT", "JPM", "JNJ", "UNH", "XOM", "KO", "WMT"]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the commands draw (the builders wrapped), to inspect their artists."""
    drawn: list[Figure] = []

    def keep(builder: Callable[..., Figure]) -> Callable[..., Figure]:
        def wrapper(*args: Any, **kwargs: Any) -> Figure:
            drawn.append(builder(*args, **kwargs))
            return drawn[-1]

        return wrapper

    monkeypatch.setattr(plots, "frontier_figure", keep(plots.frontier_figure))
    monkeypatch.setattr(plots, "weights_figure", keep(plots.weights_figure))
    return drawn


def _example(tmp_path: Path, portfolio_id: str, **changes: Any) -> Path:
    request = json.loads(EXAMPLE.read_text())
    request.update(portfolioId=portfolio_id, **changes)
    path = tmp_path / f"{portfolio_id}.json"
    path.write_text(json.dumps(request))
    return path


def _invoke(target: str, *args: str) -> Any:
    return runner.invoke(app, ["plot", *args, "--target", target])


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_frontier_of_a_request_file_with_the_latest_portfolio_and_the_assets(
    server_target: str,
    stored_prices: dict[str, str],
    commands: cmd_grpc.OptimizationCommandServiceStub,
    tmp_path: Path,
    figures: list[Figure],
) -> None:
    request_file = _example(tmp_path, "plot-frontier")
    optimized = commands.Optimize(json_format.Parse(request_file.read_text(), cmd_pb.OptimizeRequest()), timeout=60)
    output = tmp_path / "frontier.png"
    result = _invoke(
        server_target, "frontier", str(request_file), "--portfolio-id", "plot-frontier", "--points", "25",
        "-o", str(output),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {output} (25 frontier points)" in result.output
    assert _png_size(output) == plots.DEFAULT_SIZE_PX

    # The line is the server's frontier for the same problem (the computation is deterministic).
    problem = json_format.Parse(request_file.read_text(), cmd_pb.OptimizeRequest())
    expected = commands.ComputeEfficientFrontier(
        cmd_pb.ComputeEfficientFrontierRequest(problem=problem, points=25), timeout=60
    ).points
    (figure,) = figures
    axes = figure.axes[0]
    line = axes.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [p.volatility for p in expected], rtol=1e-9)
    np.testing.assert_allclose(line.get_ydata(), [p.expected_return for p in expected], rtol=1e-9)
    star, diamond, ring, dots = axes.collections
    best = max(expected, key=lambda p: p.sharpe_ratio)
    np.testing.assert_allclose(star.get_offsets()[0], (best.volatility, best.expected_return))
    np.testing.assert_allclose(diamond.get_offsets()[0], (expected[0].volatility, expected[0].expected_return))
    # The chosen portfolio: the max-Sharpe result just stored, on the frontier near its sampled best point.
    np.testing.assert_allclose(
        ring.get_offsets()[0], (optimized.expected_volatility, optimized.expected_return), rtol=1e-9
    )
    assert optimized.sharpe_ratio >= best.sharpe_ratio - 1e-6
    assert [t.get_text() for t in axes.texts] == SYMBOLS
    assert len(dots.get_offsets()) == len(SYMBOLS)
    assert axes.get_title() == "Efficient frontier: plot-frontier"


def test_frontier_max_return_end_is_the_best_single_asset_without_constraints(
    server_target: str, stored_prices: dict[str, str], tmp_path: Path, figures: list[Figure]
) -> None:
    """Long-only with weights up to 1, the maximum-return portfolio is the best asset alone: its dot."""
    request_file = _example(tmp_path, "plot-frontier-unconstrained", constraints={})
    result = _invoke(server_target, "frontier", str(request_file), "-o", str(tmp_path / "f.png"))
    assert result.exit_code == 0, result.output
    axes = figures[0].axes[0]
    frontier_top = (axes.get_lines()[0].get_xdata()[-1], axes.get_lines()[0].get_ydata()[-1])
    dots = axes.collections[-1].get_offsets()
    best_asset = dots[int(np.argmax(dots[:, 1]))]
    np.testing.assert_allclose(frontier_top, best_asset, rtol=1e-5)


def test_frontier_of_a_stored_configuration_matches_its_request_file(
    server_target: str,
    stored_prices: dict[str, str],
    commands: cmd_grpc.OptimizationCommandServiceStub,
    tmp_path: Path,
    figures: list[Figure],
) -> None:
    request_file = _example(tmp_path, "plot-configuration")
    commands.Optimize(json_format.Parse(request_file.read_text(), cmd_pb.OptimizeRequest()), timeout=60)
    stored, from_file = tmp_path / "stored.png", tmp_path / "file.png"
    result = _invoke(server_target, "frontier", "--configuration", "plot-configuration", "--no-assets",
                     "-o", str(stored))  # fmt: skip
    assert result.exit_code == 0, result.output
    result = _invoke(server_target, "frontier", str(request_file), "--no-assets", "-o", str(from_file))
    assert result.exit_code == 0, result.output
    assert stored.exists() and from_file.exists()
    by_configuration, by_file = (f.axes[0].get_lines()[0] for f in figures)
    assert len(by_configuration.get_xdata()) == 40  # the default
    np.testing.assert_allclose(by_configuration.get_xydata(), by_file.get_xydata(), rtol=1e-9)
    assert [t.get_text() for t in figures[0].axes[0].texts] == []  # --no-assets


def test_weights_over_rolling_windows_one_band_per_held_symbol(
    server_target: str,
    stored_prices: dict[str, str],
    commands: cmd_grpc.OptimizationCommandServiceStub,
    tmp_path: Path,
    figures: list[Figure],
) -> None:
    template = json_format.Parse(_example(tmp_path, "plot-weights").read_text(), cmd_pb.OptimizeRequest())
    held: set[str] = set()
    for year in (2016, 2018, 2020, 2022):
        request = cmd_pb.OptimizeRequest()
        request.CopyFrom(template)
        request.market_data.end.FromDatetime(datetime(year, 6, 30, tzinfo=UTC))
        response = commands.Optimize(request, timeout=60)
        held |= {symbol for symbol, weight in response.optimal_weights.items() if weight >= 1e-4}
    output = tmp_path / "weights.png"
    result = _invoke(server_target, "weights", "plot-weights", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "(4 runs" in result.output
    assert _png_size(output) == plots.DEFAULT_SIZE_PX
    (figure,) = figures
    bands = [c for c in figure.axes[0].collections if not str(c.get_label()).startswith("_")]
    assert sorted(str(band.get_label()) for band in bands) == sorted(held)
    top = bands[-1].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(1.0, abs=1e-6)  # fully invested: the bands stack to 100 %
    assert figure.axes[0].get_title() == "Weights: plot-weights"
    assert len(figure.legends[0].get_texts()) == len(held)


def test_errors_name_the_portfolio_and_exit_without_a_traceback(server_target: str, tmp_path: Path) -> None:
    output = tmp_path / "nothing.png"
    result = _invoke(server_target, "weights", "plot-no-such-portfolio", "-o", str(output))
    assert result.exit_code == 1
    assert "portfolio 'plot-no-such-portfolio' has no optimization runs" in result.output
    assert "Traceback" not in result.output

    result = _invoke(server_target, "weights", "plot-no-such-portfolio", "--start", "2020-01-01", "-o", str(output))
    assert "has no optimization runs in that range" in result.output

    result = _invoke(
        server_target, "frontier", str(EXAMPLE), "--no-assets", "--portfolio-id", "plot-no-such-portfolio",
        "-o", str(output),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output and "plot-no-such-portfolio" in result.output

    result = _invoke(server_target, "frontier", "--configuration", "plot-no-such-portfolio", "-o", str(output))
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output
    assert not output.exists()


def test_bad_arguments_exit_2(server_target: str, tmp_path: Path) -> None:
    both = _invoke(server_target, "frontier", str(EXAMPLE), "--configuration", "x")
    assert both.exit_code == 2 and "exactly one of REQUEST_FILE and --configuration" in both.output
    neither = _invoke(server_target, "frontier")
    assert neither.exit_code == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"portfolioId": "x", "strategies": [{"symbol": 3}]')
    result = _invoke(server_target, "frontier", str(broken))
    assert result.exit_code == 2 and "broken.json" in result.output
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"portfolioId": "x", "noSuchField": 1}')
    result = _invoke(server_target, "frontier", str(unknown))
    assert result.exit_code == 2 and "noSuchField" in result.output


def test_frontier_infeasible_problem_prints_the_server_error(server_target: str, tmp_path: Path) -> None:
    request_file = _example(tmp_path, "plot-infeasible", constraints={"maxWeight": 0.05})  # 8 x 5 % < 100 %
    result = _invoke(server_target, "frontier", str(request_file), "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output or "FAILED_PRECONDITION" in result.output
    assert not (tmp_path / "x.png").exists()


def test_backtest_charts_from_a_stored_backtest(
    server_target: str, stored_prices: dict[str, str], commands: Any, tmp_path: Path
) -> None:
    import matplotlib.image as mpimg

    from stratopt.v1 import backtest_pb2 as bt_pb
    from stratopt.v1 import types_pb2 as types

    config = cmd_pb.OptimizationConfiguration(
        portfolio_id="plot-backtest",
        strategies=[types.Strategy(symbol=s) for s in ("AAPL", "KO", "JNJ", "XOM", "JPM")],
        objective=types.OBJECTIVE_MAX_SHARPE,
        enabled=True,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    request = bt_pb.BacktestRequest(portfolio_id="plot-backtest")
    request.start.FromDatetime(datetime(2015, 1, 1, tzinfo=UTC))
    results = [m.result for m in commands.Backtest(request, timeout=120) if m.HasField("result")]
    summary = results[-1]
    for chart in ("equity", "drawdown", "backtest-weights"):
        path = tmp_path / f"{chart}.png"
        result = runner.invoke(
            app, ["plot", chart, summary.backtest_id, "--output", str(path), "--target", server_target]
        )
        assert result.exit_code == 0, result.output
        image = mpimg.imread(path)
        assert image.shape[:2] == (700, 1200)
    missing = runner.invoke(app, ["plot", "equity", "00000000-0000-4000-8000-000000000000", "--target", server_target])
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
