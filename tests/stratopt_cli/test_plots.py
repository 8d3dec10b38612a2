"""The pure chart functions of ``stratopt_cli.plots``: valid PNGs of the asked size, the drawn data checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axis import Axis
from matplotlib.collections import PolyCollection
from matplotlib.dates import date2num
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image

from stratopt_cli import plots

RNG = np.random.default_rng(20240601)
DAYS = pd.date_range("2020-01-01", periods=500, freq="B")
EQUITY = 1e5 * np.cumprod(1 + RNG.normal(0.0004, 0.012, DAYS.size))


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # a truncated file fails here
        return image.size


def _assert_percent_ticks(axis: Axis) -> None:
    """Decimals on the axis, shown as percentages."""
    formatter = axis.get_major_formatter()
    assert isinstance(formatter, PercentFormatter)
    assert formatter.xmax == 1.0


def _bands(figure: Figure) -> dict[str, PolyCollection]:
    """The labelled stacked areas of a weights chart."""
    return {
        str(c.get_label()): c
        for c in figure.axes[0].collections
        if isinstance(c, PolyCollection) and not str(c.get_label()).startswith("_")
    }


def _band_top(band: PolyCollection) -> np.ndarray:
    """The upper edge of a fill_between area (its vertices' largest y per x, in draw order)."""
    vertices = band.get_paths()[0].vertices
    frame = pd.DataFrame({"x": vertices[:, 0], "y": vertices[:, 1]})
    return frame.groupby("x")["y"].max().to_numpy()


# --- PNG files ----------------------------------------------------------------------------------------------


def test_every_chart_writes_a_png_of_the_default_size(tmp_path: Path) -> None:
    width, height = plots.DEFAULT_SIZE_PX
    written = [
        plots.plot_equity(DAYS, EQUITY, tmp_path / "equity.png", title="Equity"),
        plots.plot_drawdown(DAYS, EQUITY, tmp_path / "drawdown.png", title="Drawdown"),
        plots.plot_weights(DAYS[:3], [[0.5, 0.5], [0.6, 0.4], [0.2, 0.8]], ["A", "B"], tmp_path / "w.png", title="W"),
        plots.plot_frontier([0.1, 0.12, 0.2], [0.05, 0.08, 0.1], [0.3, 0.5, 0.4], tmp_path / "f.png", title="F"),
    ]
    for path in written:
        assert path.exists()
        assert _png_size(path) == (width, height)


def test_size_px_sets_the_pixels_and_a_tiny_picture_is_refused(tmp_path: Path) -> None:
    path = plots.plot_drawdown(DAYS, EQUITY, tmp_path / "small.png", title="Small", size_px=(640, 360))
    assert _png_size(path) == (640, 360)
    with pytest.raises(ValueError, match="at least 200 x 150"):
        plots.plot_drawdown(DAYS, EQUITY, tmp_path / "tiny.png", title="Tiny", size_px=(100, 100))


def test_an_unwritable_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        plots.plot_equity(DAYS, EQUITY, tmp_path / "missing-dir" / "e.png", title="E")


# --- drawdown -----------------------------------------------------------------------------------------------


def test_drawdown_matches_pandas_cummax() -> None:
    series = pd.Series(EQUITY)
    expected = (series / series.cummax() - 1).to_numpy()
    np.testing.assert_allclose(plots.drawdown(EQUITY), expected, rtol=0, atol=1e-15)
    assert plots.drawdown(EQUITY).max() == 0.0


def test_drawdown_of_a_known_path() -> None:
    np.testing.assert_allclose(plots.drawdown([100, 120, 90, 130, 65, 97.5]), [0, 0, -0.25, 0, -0.5, -0.25])
    np.testing.assert_array_equal(plots.drawdown([1.0]), [0.0])


@pytest.mark.parametrize(
    ("equity", "message"),
    [([], "non-empty"), ([[1.0, 2.0]], "one-dimensional"), ([1.0, np.nan], "non-finite"), ([1.0, 0.0], "positive")],
)
def test_drawdown_refuses_bad_equity(equity: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plots.drawdown(equity)


def test_drawdown_chart_draws_the_pandas_series_and_marks_the_worst_point() -> None:
    figure = plots.drawdown_figure(DAYS, EQUITY, title="Underwater")
    axes = figure.axes[0]
    line = axes.get_lines()[0]
    series = pd.Series(EQUITY)
    expected = (series / series.cummax() - 1).to_numpy()
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), expected, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(line.get_xdata()), DAYS.to_numpy())
    worst = int(np.argmin(expected))
    labels = axes.get_legend_handles_labels()[1]
    assert f"Max drawdown {100 * expected[worst]:.1f}% ({DAYS[worst]:%Y-%m-%d})" in labels
    assert axes.get_ylim()[1] == 0.0
    assert axes.get_ylim()[0] < expected.min()  # the whole curve is visible
    _assert_percent_ticks(axes.yaxis)


def test_drawdown_chart_refuses_mismatched_or_unsorted_timestamps() -> None:
    with pytest.raises(ValueError, match="499 values for 500"):
        plots.drawdown_figure(DAYS[:-1], EQUITY, title="x")
    with pytest.raises(ValueError, match="strictly increasing"):
        plots.drawdown_figure(DAYS[::-1], EQUITY, title="x")


# --- equity -------------------------------------------------------------------------------------------------


def test_equity_chart_rebases_the_benchmark_to_the_first_equity_value() -> None:
    benchmark = 400 * np.cumprod(1 + RNG.normal(0.0003, 0.01, DAYS.size))
    figure = plots.equity_figure(DAYS, EQUITY, title="Equity", benchmark=benchmark)
    portfolio, reference = figure.axes[0].get_lines()
    np.testing.assert_array_equal(portfolio.get_ydata(), EQUITY)
    rebased = np.asarray(reference.get_ydata(), dtype=float)
    assert rebased[0] == pytest.approx(EQUITY[0])
    np.testing.assert_allclose(rebased / rebased[0], benchmark / benchmark[0], rtol=1e-12)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels[0] == f"Portfolio ({EQUITY[-1] / EQUITY[0] - 1:+.1%})"
    assert labels[1].startswith("Benchmark, rebased")


def test_equity_chart_refuses_a_benchmark_of_another_length() -> None:
    with pytest.raises(ValueError, match="benchmark has 3 values for 500"):
        plots.equity_figure(DAYS, EQUITY, title="x", benchmark=[1.0, 2.0, 3.0])


def test_timestamps_may_be_aware_datetimes_converted_to_utc() -> None:
    paris = timezone(timedelta(hours=2))
    stamps = [datetime(2024, 6, 3, 12, tzinfo=paris), datetime(2024, 6, 4, 12, tzinfo=UTC), datetime(2024, 6, 5)]
    figure = plots.equity_figure(stamps, [1.0, 1.1, 1.2], title="x")
    xdata = np.asarray(figure.axes[0].get_lines()[0].get_xdata())
    assert xdata[0] == np.datetime64("2024-06-03T10:00")
    with pytest.raises(ValueError, match="is not a timestamp"):
        plots.equity_figure(["monday", "tuesday"], [1.0, 1.1], title="x")


# --- weights ------------------------------------------------------------------------------------------------


def test_weights_chart_stacks_one_band_per_held_symbol_with_the_legend_outside(tmp_path: Path) -> None:
    runs = pd.date_range("2024-01-31", periods=6, freq="ME")
    weights = RNG.dirichlet(np.ones(4), size=6)
    weights = np.column_stack([weights, np.full(6, 1e-9)])  # solver noise: no band
    symbols = ["AAA", "BBB", "CCC", "DDD", "NOISE"]
    figure = plots.weights_figure(runs, weights, symbols, title="Weights")
    bands = _bands(figure)
    assert list(bands) == ["AAA", "BBB", "CCC", "DDD"]
    np.testing.assert_allclose(_band_top(bands["DDD"]), weights[:, :4].sum(axis=1), atol=1e-12)  # stacked to 1
    np.testing.assert_allclose(_band_top(bands["AAA"]), weights[:, 0], atol=1e-12)
    _assert_percent_ticks(figure.axes[0].yaxis)
    assert figure.axes[0].get_xlabel() == "Run time (UTC)"
    figure.canvas.draw()
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["DDD", "CCC", "BBB", "AAA"]  # top band first
    assert legend.get_window_extent().x0 >= figure.axes[0].get_window_extent().x1  # outside the plot
    path = plots.plot_weights(runs, weights, symbols, tmp_path / "weights.png", title="Weights")
    assert _png_size(path) == plots.DEFAULT_SIZE_PX


def test_weights_beyond_max_series_are_summed_into_other() -> None:
    runs = pd.date_range("2024-01-01", periods=5, freq="W")
    weights = RNG.dirichlet(np.ones(20), size=5)
    symbols = [f"S{i:02d}" for i in range(20)]
    figure = plots.weights_figure(runs, weights, symbols, title="Many", max_series=6)
    bands = _bands(figure)
    assert len(bands) == 6
    assert "Other (15 symbols)" in bands
    kept = sorted(range(20), key=lambda i: -weights[:, i].mean())[:5]
    assert set(bands) - {"Other (15 symbols)"} == {symbols[i] for i in kept}
    np.testing.assert_allclose(_band_top(bands["Other (15 symbols)"]), 1.0, atol=1e-12)  # the top band


def test_short_weights_stack_below_zero() -> None:
    runs = pd.date_range("2024-01-01", periods=3, freq="D")
    weights = [[1.3, -0.3], [1.2, -0.2], [1.0, 0.0]]
    figure = plots.weights_figure(runs, weights, ["LONG", "SHORT"], title="Long/short")
    axes = figure.axes[0]
    assert axes.get_ylim() == pytest.approx((-0.3, 1.3))
    shorts = [c for c in axes.collections if str(c.get_label()).startswith("_")]
    assert len(shorts) == 1
    assert shorts[0].get_paths()[0].vertices[:, 1].min() == pytest.approx(-0.3)


def test_a_single_run_is_drawn_as_one_column_with_one_tick() -> None:
    stamp = datetime(2024, 6, 3, 15, 30, tzinfo=UTC)
    figure = plots.weights_figure([stamp], [[0.25, 0.75]], ["A", "B"], title="One run", xlabel="Rebalance")
    axes = figure.axes[0]
    assert axes.get_xlabel() == "Rebalance"
    assert len(_bands(figure)) == 2
    figure.canvas.draw()
    assert [t.get_text() for t in axes.get_xticklabels()] == ["2024-06-03 15:30 UTC"]
    assert axes.get_xticks()[0] == pytest.approx(date2num(datetime(2024, 6, 3, 15, 30)))


@pytest.mark.parametrize(
    ("weights", "symbols", "kwargs", "message"),
    [
        ([], ["A"], {}, "at least one run"),
        ([[0.5, 0.5]], ["A"], {}, "2 columns for 1 symbols"),
        ([[np.inf, 0.5]], ["A", "B"], {}, "non-finite"),
        ([[1e-9, 1e-9]], ["A", "B"], {}, "no symbol reaches"),
        ([[0.5, 0.5]], ["A", "B"], {"max_series": 1}, "at least 2"),
    ],
)
def test_weights_chart_refuses_bad_input(
    weights: list[list[float]], symbols: list[str], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plots.weights_figure([datetime(2024, 1, 1)], weights, symbols, title="x", **kwargs)


# --- frontier -----------------------------------------------------------------------------------------------


def test_frontier_marks_max_sharpe_min_volatility_the_portfolio_and_the_assets(tmp_path: Path) -> None:
    vol = np.array([0.12, 0.11, 0.13, 0.16, 0.2])  # the lowest volatility need not come first
    ret = np.array([0.05, 0.06, 0.08, 0.1, 0.11])
    sharpe = (ret - 0.02) / vol
    assets = {"AAA": (0.25, 0.12), "BBB": (0.15, 0.04)}
    portfolio = plots.PortfolioPoint("mine (latest)", 0.14, 0.085)
    figure = plots.frontier_figure(vol, ret, sharpe, title="Frontier", assets=assets, portfolio=portfolio)
    axes = figure.axes[0]
    frontier = axes.get_lines()[0]
    np.testing.assert_array_equal(frontier.get_xdata(), vol)
    np.testing.assert_array_equal(frontier.get_ydata(), ret)
    star, diamond, ring, dots = axes.collections
    best = int(np.argmax(sharpe))
    assert tuple(star.get_offsets()[0]) == (vol[best], ret[best])
    assert tuple(diamond.get_offsets()[0]) == (0.11, 0.06)
    assert tuple(ring.get_offsets()[0]) == (0.14, 0.085)
    np.testing.assert_array_equal(dots.get_offsets(), [[0.25, 0.12], [0.15, 0.04]])
    assert [t.get_text() for t in axes.texts] == ["AAA", "BBB"]
    labels = axes.get_legend_handles_labels()[1]
    assert f"Max Sharpe ({sharpe[best]:.2f}): return 10.0%, volatility 16.0%" in labels
    assert "Min volatility: return 6.0%, volatility 11.0%" in labels
    assert "mine (latest): return 8.5%, volatility 14.0%" in labels
    _assert_percent_ticks(axes.xaxis)
    _assert_percent_ticks(axes.yaxis)
    path = plots.plot_frontier(vol, ret, sharpe, tmp_path / "f.png", title="Frontier", assets=assets)
    assert _png_size(path) == plots.DEFAULT_SIZE_PX


def test_frontier_refuses_arrays_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        plots.frontier_figure([0.1, 0.2], [0.05, 0.06], [0.5], title="x")
    with pytest.raises(ValueError, match="non-finite"):
        plots.frontier_figure([0.1], [0.05], [0.5], title="x", assets={"A": (np.nan, 0.1)})
