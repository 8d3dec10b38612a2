"""Charts as PNG files: arrays in, a file out (matplotlib's object API on the Agg canvas; no gRPC, no screen).

Every chart has a ``*_figure`` builder that returns the :class:`~matplotlib.figure.Figure` (for tests and notebooks
to inspect its artists) and a ``plot_*`` function that saves it as a PNG of exactly ``size_px`` pixels and returns
the path. Returns, volatilities, weights and drawdowns are decimals (0.12 = 12 %) and drawn as percentages;
timestamps may be ``datetime`` objects (naive ones are taken as UTC), ``numpy.datetime64`` values or a pandas
``DatetimeIndex``, and must be strictly increasing. Nothing here touches pyplot's global state, so the functions
are safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

__all__ = [
    "DEFAULT_SIZE_PX",
    "PortfolioPoint",
    "drawdown",
    "drawdown_figure",
    "equity_figure",
    "frontier_figure",
    "plot_drawdown",
    "plot_equity",
    "plot_frontier",
    "plot_weights",
    "weights_figure",
]

DEFAULT_SIZE_PX = (1200, 700)
"""Width and height of every PNG, in pixels."""
DPI = 120
"""Pixels per inch: sets the size of the text relative to the picture."""
MAX_WEIGHT_SERIES = 12
"""At most this many bands in a weights chart; the smallest symbols beyond it are summed into one "other" band."""
HIDDEN_WEIGHT = 1e-4
"""Weights below this (0.01 %) in every run are solver noise: such symbols get no band."""

Timestamps = Sequence[datetime] | npt.ArrayLike
"""Observation times: datetimes (naive = UTC), ``numpy.datetime64`` values or a pandas ``DatetimeIndex``."""


class PortfolioPoint(NamedTuple):
    """One portfolio marked on a frontier chart."""

    label: str
    """Legend text, e.g. the portfolio id and when it was optimized."""
    volatility: float
    """Annualised volatility (decimal)."""
    expected_return: float
    """Annualised expected return (decimal)."""


# --- shared helpers -------------------------------------------------------------------------------------------


def _new_figure(size_px: tuple[int, int]) -> Figure:
    width, height = size_px
    if width < 200 or height < 150:
        raise ValueError(f"size_px must be at least 200 x 150 pixels, not {width} x {height}")
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _times(timestamps: Timestamps, length: int, name: str = "timestamps") -> npt.NDArray[np.datetime64]:
    """Timestamps as naive UTC ``datetime64[ns]``, checked against ``length`` values and for strict increase."""
    raw = np.asarray(timestamps)
    if raw.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not shape {raw.shape}")
    if raw.dtype.kind == "M":
        values = raw.astype("datetime64[ns]")
    else:  # datetimes (pandas Timestamps included), aware ones converted to UTC
        converted = []
        for item in raw:
            if isinstance(item, datetime) and item.tzinfo is not None:
                item = item.astimezone(UTC).replace(tzinfo=None)
            if isinstance(item, np.datetime64):
                converted.append(item.astype("datetime64[ns]"))
            elif isinstance(item, datetime | date):
                converted.append(np.datetime64(item, "ns"))
            else:
                raise ValueError(f"{name}: {item!r} is not a timestamp")
        values = np.array(converted, dtype="datetime64[ns]")
    if values.size != length:
        raise ValueError(f"{name} has {values.size} values for {length} observations")
    if np.any(np.isnat(values)):
        raise ValueError(f"{name} has missing values")
    if length > 1 and not bool(np.all(values[1:] > values[:-1])):
        raise ValueError(f"{name} must be strictly increasing")
    return values


def _vector(values: npt.ArrayLike, name: str, *, positive: bool = False) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty one-dimensional array, not shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    if positive and not np.all(array > 0):
        raise ValueError(f"{name} must be positive everywhere")
    return array


def _date_axis(axes: Axes) -> None:
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _return_and_risk(expected_return: float, volatility: float) -> str:
    return f"return {_percent(expected_return)}, volatility {_percent(volatility)}"


# --- efficient frontier ---------------------------------------------------------------------------------------


def frontier_figure(
    volatility: npt.ArrayLike,
    expected_return: npt.ArrayLike,
    sharpe_ratio: npt.ArrayLike,
    *,
    title: str,
    assets: Mapping[str, tuple[float, float]] | None = None,
    portfolio: PortfolioPoint | None = None,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Figure:
    """The efficient frontier (volatility on x, expected return on y, both in %) with its notable points.

    Marks the sampled point with the highest Sharpe ratio (a gold star), the one with the lowest volatility (a
    green diamond outline), optionally one portfolio (a red ring, e.g. the latest stored result) and the
    individual assets (grey dots with their symbols). Markers at the same point stay visible.

    Parameters
    ----------
    volatility, expected_return, sharpe_ratio : array_like, shape (P,)
        The frontier's points: annualised volatility and expected return (decimals) and Sharpe ratio, P >= 1.
    title : str
        Title of the chart.
    assets : mapping of str to (float, float), optional
        Symbol -> (annualised volatility, annualised expected return) of each asset held alone; drawn as
        labelled grey dots.
    portfolio : PortfolioPoint, optional
        A portfolio to mark.
    size_px : (int, int)
        Width and height of the picture in pixels.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0 holds the frontier as its first line.

    Raises
    ------
    ValueError
        Arrays of different lengths, empty or with non-finite values, or a picture smaller than 200 x 150.
    """
    vol = _vector(volatility, "volatility")
    ret = _vector(expected_return, "expected_return")
    sharpe = _vector(sharpe_ratio, "sharpe_ratio")
    if not vol.size == ret.size == sharpe.size:
        raise ValueError(
            f"volatility, expected_return and sharpe_ratio differ in length: {vol.size}, {ret.size}, {sharpe.size}"
        )
    figure = _new_figure(size_px)
    axes = figure.add_subplot()
    axes.plot(vol, ret, color="tab:blue", linewidth=2, marker="o", markersize=3, label="Efficient frontier")
    best, lowest = int(np.argmax(sharpe)), int(np.argmin(vol))
    axes.scatter(
        vol[best],
        ret[best],
        s=180,
        marker="*",
        color="gold",
        edgecolors="black",
        zorder=4,
        label=f"Max Sharpe ({sharpe[best]:.2f}): {_return_and_risk(ret[best], vol[best])}",
    )
    axes.scatter(
        vol[lowest],
        ret[lowest],
        s=200,
        marker="D",
        facecolors="none",
        edgecolors="tab:green",
        linewidths=2,
        zorder=5,  # an outline: a max-Sharpe star at the same point stays visible inside it
        label=f"Min volatility: {_return_and_risk(ret[lowest], vol[lowest])}",
    )
    if portfolio is not None:
        axes.scatter(
            portfolio.volatility,
            portfolio.expected_return,
            s=480,
            marker="o",
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            zorder=5,  # a ring, like the diamond
            label=f"{portfolio.label}: {_return_and_risk(portfolio.expected_return, portfolio.volatility)}",
        )
    if assets:
        points = np.array([assets[symbol] for symbol in assets], dtype=np.float64)
        if not np.all(np.isfinite(points)):
            raise ValueError("assets have non-finite volatility or expected return")
        axes.scatter(points[:, 0], points[:, 1], s=25, color="dimgrey", zorder=3, label="Single assets")
        for symbol, (asset_vol, asset_ret) in assets.items():
            axes.annotate(
                symbol, (asset_vol, asset_ret), xytext=(4, 3), textcoords="offset points", fontsize=8, color="dimgrey"
            )
    axes.margins(x=0.08, y=0.06)  # room for the asset labels at the edges
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_xlabel("Volatility (annualised)")
    axes.set_ylabel("Expected return (annualised)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8, framealpha=0.9, markerscale=0.6)
    return figure


def plot_frontier(
    volatility: npt.ArrayLike,
    expected_return: npt.ArrayLike,
    sharpe_ratio: npt.ArrayLike,
    path: str | Path,
    *,
    title: str,
    assets: Mapping[str, tuple[float, float]] | None = None,
    portfolio: PortfolioPoint | None = None,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Path:
    """Save :func:`frontier_figure` as a PNG at ``path`` and return the path.

    Raises
    ------
    ValueError
        As :func:`frontier_figure`.
    OSError
        When the file cannot be written.
    """
    figure = frontier_figure(
        volatility, expected_return, sharpe_ratio, title=title, assets=assets, portfolio=portfolio, size_px=size_px
    )
    return _save(figure, path)


# --- weights over time ----------------------------------------------------------------------------------------


def _weight_bands(
    weights: npt.NDArray[np.float64], symbols: Sequence[str], max_series: int
) -> tuple[list[str], npt.NDArray[np.float64]]:
    """The labels and columns of the bands: visible symbols, largest first beyond ``max_series - 1`` as "other"."""
    peak = np.abs(weights).max(axis=0)
    visible = [i for i in range(len(symbols)) if peak[i] >= HIDDEN_WEIGHT]
    if len(visible) > max_series:
        ranked = sorted(visible, key=lambda i: -float(np.abs(weights[:, i]).mean()))
        kept, rest = sorted(ranked[: max_series - 1]), ranked[max_series - 1 :]
        labels = [symbols[i] for i in kept] + [f"Other ({len(rest)} symbols)"]
        columns = np.column_stack([weights[:, kept], weights[:, rest].sum(axis=1)])
        return labels, columns
    return [symbols[i] for i in visible], weights[:, visible]


def _band_colors(count: int, other: bool) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    # The dark shades first, then the light ones; no greys (grey is "other").
    order = [palette(2 * i) for i in range(10) if i != 7] + [palette(2 * i + 1) for i in range(10) if i != 7]
    colors: list[Any] = [order[i % len(order)] for i in range(count)]
    if other:
        colors[-1] = "lightgrey"
    return colors


def weights_figure(
    timestamps: Timestamps,
    weights: npt.ArrayLike,
    symbols: Sequence[str],
    *,
    title: str,
    max_series: int = MAX_WEIGHT_SERIES,
    xlabel: str = "Run time (UTC)",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Figure:
    """A portfolio's weights over its runs as stacked areas (in %), the legend outside the plot on the right.

    Positive weights stack upwards from 0 and negative (short) weights downwards, in the same colour. A symbol
    below 0.01 % in every run gets no band; beyond ``max_series`` bands the symbols with the smallest mean
    absolute weight are summed into one grey "Other (k symbols)" band. A single run is drawn as one column.

    Parameters
    ----------
    timestamps : sequence of datetime or array_like of datetime64, shape (T,)
        When each run was made, strictly increasing (naive datetimes are UTC).
    weights : array_like, shape (T, N)
        ``weights[t, i]``: the weight (decimal) of ``symbols[i]`` in run ``t``; 0 where the run holds nothing.
    symbols : sequence of str, length N
        The columns' symbols.
    title : str
        Title of the chart.
    max_series : int
        Most bands, at least 2 (the last one may be "Other").
    xlabel : str
        Label of the time axis (e.g. "Rebalance date" for a backtest's weights).
    size_px : (int, int)
        Width and height of the picture in pixels.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0 holds one ``PolyCollection`` labelled with its symbol per band (negative parts unlabelled).

    Raises
    ------
    ValueError
        No runs, shapes that do not match, non-finite weights, timestamps not strictly increasing, no symbol at
        0.01 % or more, ``max_series`` below 2.
    """
    matrix = np.asarray(weights, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"weights must have shape (runs, symbols) with at least one run, not {matrix.shape}")
    if matrix.shape[1] != len(symbols):
        raise ValueError(f"weights has {matrix.shape[1]} columns for {len(symbols)} symbols")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("weights has non-finite values")
    if max_series < 2:
        raise ValueError(f"max_series must be at least 2, not {max_series}")
    times = _times(timestamps, matrix.shape[0])
    labels, columns = _weight_bands(matrix, symbols, max_series)
    if not labels:
        raise ValueError("no symbol reaches a weight of 0.01 % in any run")
    single = len(times) == 1
    if single:  # one run: a column a day wide (an area needs two points)
        half = np.timedelta64(12, "h")
        times, columns = np.array([times[0] - half, times[0] + half]), np.vstack([columns, columns])
    figure = _new_figure(size_px)
    axes = figure.add_subplot()
    colors = _band_colors(len(labels), other=labels[-1].startswith("Other ("))
    positive, negative = np.clip(columns, 0.0, None), np.clip(columns, None, 0.0)
    bottom, top = np.zeros(len(times)), np.zeros(len(times))
    for i, label in enumerate(labels):
        axes.fill_between(times, top, top + positive[:, i], color=colors[i], label=label, linewidth=0)
        top = top + positive[:, i]
        if np.any(negative[:, i] < 0):
            axes.fill_between(times, bottom + negative[:, i], bottom, color=colors[i], linewidth=0, hatch="//")
            bottom = bottom + negative[:, i]
    if np.any(bottom < 0):
        axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xlim(times[0], times[-1])
    if single:  # one tick: the run's time
        axes.set_xticks([times[0] + np.timedelta64(12, "h")])
        axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d %H:%M UTC"))  # type: ignore[no-untyped-call]
    else:
        _date_axis(axes)
    axes.set_ylim(min(0.0, float(bottom.min())), max(1.0, float(top.max())))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_ylabel("Weight")
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(True, axis="y", alpha=0.3)
    handles, legend_labels = axes.get_legend_handles_labels()
    # Top band first, as stacked; outside the axes on the right.
    figure.legend(handles[::-1], legend_labels[::-1], loc="outside right upper", fontsize=8, frameon=False)
    return figure


def plot_weights(
    timestamps: Timestamps,
    weights: npt.ArrayLike,
    symbols: Sequence[str],
    path: str | Path,
    *,
    title: str,
    max_series: int = MAX_WEIGHT_SERIES,
    xlabel: str = "Run time (UTC)",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Path:
    """Save :func:`weights_figure` as a PNG at ``path`` and return the path.

    Raises
    ------
    ValueError
        As :func:`weights_figure`.
    OSError
        When the file cannot be written.
    """
    figure = weights_figure(
        timestamps, weights, symbols, title=title, max_series=max_series, xlabel=xlabel, size_px=size_px
    )
    return _save(figure, path)


# --- backtest: equity and drawdown ----------------------------------------------------------------------------


def drawdown(equity: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The drawdown of an equity curve: ``equity / running maximum - 1``.

    Parameters
    ----------
    equity : array_like, shape (T,)
        Portfolio values, positive and finite, T >= 1.

    Returns
    -------
    numpy.ndarray, shape (T,)
        Drawdown as a fraction, 0 at every new high and negative below it (-0.25 = 25 % under the peak).

    Raises
    ------
    ValueError
        Empty, not one-dimensional, non-finite or non-positive values.
    """
    values = _vector(equity, "equity", positive=True)
    return values / np.maximum.accumulate(values) - 1.0


def equity_figure(
    timestamps: Timestamps,
    equity: npt.ArrayLike,
    *,
    title: str,
    benchmark: npt.ArrayLike | None = None,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Figure:
    """A backtest's equity curve, optionally against a benchmark rebased to the same starting value.

    Parameters
    ----------
    timestamps : sequence of datetime or array_like of datetime64, shape (T,)
        Observation times, strictly increasing (naive datetimes are UTC).
    equity : array_like, shape (T,)
        Portfolio value at each time (any currency unit), positive and finite.
    title : str
        Title of the chart.
    benchmark : array_like, shape (T,), optional
        Benchmark value (or price) at the same times, positive and finite; drawn as
        ``benchmark * equity[0] / benchmark[0]``.
    size_px : (int, int)
        Width and height of the picture in pixels.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0 holds the equity line first, then the rebased benchmark line.

    Raises
    ------
    ValueError
        Lengths that differ, non-finite or non-positive values, timestamps not strictly increasing.
    """
    values = _vector(equity, "equity", positive=True)
    times = _times(timestamps, values.size)
    figure = _new_figure(size_px)
    axes = figure.add_subplot()
    total = values[-1] / values[0] - 1.0
    axes.plot(times, values, color="tab:blue", linewidth=1.6, label=f"Portfolio ({total:+.1%})")
    if benchmark is not None:
        reference = _vector(benchmark, "benchmark", positive=True)
        if reference.size != values.size:
            raise ValueError(f"benchmark has {reference.size} values for {values.size} observations")
        rebased = reference * values[0] / reference[0]
        change = reference[-1] / reference[0] - 1.0
        axes.plot(times, rebased, color="dimgrey", linewidth=1.2, label=f"Benchmark, rebased ({change:+.1%})")
    axes.set_ylabel("Equity ($)")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    _date_axis(axes)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize=9)
    return figure


def plot_equity(
    timestamps: Timestamps,
    equity: npt.ArrayLike,
    path: str | Path,
    *,
    title: str,
    benchmark: npt.ArrayLike | None = None,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Path:
    """Save :func:`equity_figure` as a PNG at ``path`` and return the path.

    Raises
    ------
    ValueError
        As :func:`equity_figure`.
    OSError
        When the file cannot be written.
    """
    return _save(equity_figure(timestamps, equity, title=title, benchmark=benchmark, size_px=size_px), path)


def drawdown_figure(
    timestamps: Timestamps,
    equity: npt.ArrayLike,
    *,
    title: str,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Figure:
    """The underwater chart of an equity curve: :func:`drawdown` in %, the maximum drawdown marked.

    Parameters
    ----------
    timestamps : sequence of datetime or array_like of datetime64, shape (T,)
        Observation times, strictly increasing (naive datetimes are UTC).
    equity : array_like, shape (T,)
        Portfolio value at each time, positive and finite.
    title : str
        Title of the chart.
    size_px : (int, int)
        Width and height of the picture in pixels.

    Returns
    -------
    matplotlib.figure.Figure
        Axes 0 holds the drawdown (fractions) as its first line.

    Raises
    ------
    ValueError
        As :func:`drawdown`, or timestamps that do not match or are not strictly increasing.
    """
    under = drawdown(equity)
    times = _times(timestamps, under.size)
    figure = _new_figure(size_px)
    axes = figure.add_subplot()
    axes.plot(times, under, color="tab:red", linewidth=1.0, label="Drawdown")
    axes.fill_between(times, under, 0.0, color="tab:red", alpha=0.3, linewidth=0)
    worst = int(np.argmin(under))
    if under[worst] < 0:
        when = np.datetime_as_string(times[worst], unit="D")
        axes.scatter(
            times[worst],
            under[worst],
            s=40,
            color="black",
            zorder=3,
            label=f"Max drawdown {_percent(under[worst])} ({when})",
        )
    axes.set_ylim(min(float(under.min()) * 1.08, -0.01), 0.0)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_ylabel("Drawdown from the running peak")
    _date_axis(axes)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize=9)
    return figure


def plot_drawdown(
    timestamps: Timestamps,
    equity: npt.ArrayLike,
    path: str | Path,
    *,
    title: str,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
) -> Path:
    """Save :func:`drawdown_figure` as a PNG at ``path`` and return the path.

    Raises
    ------
    ValueError
        As :func:`drawdown_figure`.
    OSError
        When the file cannot be written.
    """
    return _save(drawdown_figure(timestamps, equity, title=title, size_px=size_px), path)
