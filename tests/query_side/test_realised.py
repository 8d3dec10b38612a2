"""GetRealisedPerformance through gRPC on the bundled S&P 500 closes stored in PostgreSQL.

Two min-volatility runs of one portfolio on stored prices with windows ending 2020-12-31 and 2021-06-30; the
realised figures of each run's weights are recomputed here from the CSV with pandas and NumPy (closed forms written
out below) and skfolio's compounded drawdowns, over the holding period the service reports.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2
from skfolio import measures as sk_measures

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "JPM", "KO", "XOM")
RF, PPY = 0.02, 252


def stamp(text: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return ts


def run(commands: Any, portfolio_id: str, end: str) -> cmd_pb.OptimizeResponse:
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=s) for s in SYMBOLS],
        market_data=pb.MarketDataWindow(start=stamp("2018-01-01"), end=stamp(end)),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
    )
    response: cmd_pb.OptimizeResponse = commands.Optimize(request, timeout=60)
    return response


def expected(weights: dict[str, float], start: datetime, end: datetime | None) -> dict[str, float]:
    """The realised figures by hand from the CSV closes in [start, end]."""
    closes = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    closes.index = closes.index.tz_localize(UTC)
    window = closes.loc[start:end, list(SYMBOLS)] if end is not None else closes.loc[start:, list(SYMBOLS)]
    r = window.pct_change().dropna().to_numpy() @ np.array([weights[s] for s in SYMBOLS])
    total = float(np.prod(1 + r) - 1)
    cagr = (1 + total) ** (PPY / len(r)) - 1
    excess = r - RF / PPY
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0) ** 2)))
    drawdown = -float(np.min(sk_measures.get_drawdowns(r, compounded=True)))
    return {
        "observations": len(r),
        "total_return": total,
        "annualised_return": cagr,
        "volatility": float(np.std(r, ddof=1)) * math.sqrt(PPY),
        "sharpe_ratio": float(excess.mean() / np.std(r, ddof=1)) * math.sqrt(PPY),
        "sortino_ratio": float(excess.mean() / downside) * math.sqrt(PPY),
        "max_drawdown": drawdown,
        "calmar_ratio": cagr / drawdown,
    }


def test_each_run_is_measured_over_the_period_until_newer_data(
    commands: Any, queries: Any, stored_prices: dict[str, str]
) -> None:
    assert set(SYMBOLS) <= set(stored_prices)
    portfolio_id = f"realised-{uuid.uuid4().hex[:8]}"
    first, second = run(commands, portfolio_id, "2020-12-31"), run(commands, portfolio_id, "2021-06-30")
    answer = queries.GetRealisedPerformance(
        query_pb.GetRealisedPerformanceRequest(portfolio_id=portfolio_id, risk_free_rate=RF), timeout=60
    )
    assert [r.event_id for r in answer.runs] == [
        first.optimization_metadata.event_id,
        second.optimization_metadata.event_id,
    ]
    ends = [r.optimization_metadata.window_end.ToDatetime(tzinfo=UTC) for r in (first, second)]
    for k, (realised, response) in enumerate(zip(answer.runs, (first, second), strict=True)):
        start = ends[k]
        assert realised.window_end.ToDatetime(tzinfo=UTC) == start
        assert realised.expected_volatility == pytest.approx(response.expected_volatility, rel=1e-12)
        period_end = ends[1] if k == 0 else None  # the first run held until the run on newer data
        truth = expected(dict(response.optimal_weights), start, period_end)
        assert realised.observations == truth.pop("observations")
        for name, value in truth.items():
            assert getattr(realised, name) == pytest.approx(value, rel=1e-9, abs=1e-12), (k, name)
    assert answer.runs[0].period_end.ToDatetime(tzinfo=UTC) == ends[1]
    assert answer.runs[1].period_end.ToDatetime(tzinfo=UTC) == datetime(2022, 12, 28, tzinfo=UTC)  # last close

    # A fixed horizon: 30 days after each window end.
    horizon = queries.GetRealisedPerformance(
        query_pb.GetRealisedPerformanceRequest(portfolio_id=portfolio_id, risk_free_rate=RF, horizon_days=30)
    )
    first_end = horizon.runs[0].period_end.ToDatetime(tzinfo=UTC)
    assert (first_end - ends[0]).days <= 30 and horizon.runs[0].observations >= 15
    truth = expected(dict(first.optimal_weights), ends[0], first_end)
    assert horizon.runs[0].sharpe_ratio == pytest.approx(truth["sharpe_ratio"], rel=1e-9)


def test_a_run_on_moments_has_no_realised_figures(commands: Any, queries: Any) -> None:
    portfolio_id = f"realised-moments-{uuid.uuid4().hex[:8]}"
    commands.Optimize(
        cmd_pb.OptimizeRequest(
            portfolio_id=portfolio_id,
            strategies=[pb.Strategy(symbol="A"), pb.Strategy(symbol="B")],
            moments=pb.MomentsInput(expected_returns=[0.1, 0.05], covariance=[0.04, 0.0, 0.0, 0.01]),
            objective=pb.OBJECTIVE_MIN_VOLATILITY,
        ),
        timeout=60,
    )
    (only,) = queries.GetRealisedPerformance(query_pb.GetRealisedPerformanceRequest(portfolio_id=portfolio_id)).runs
    assert not only.HasField("window_end") and not only.HasField("total_return") and only.observations == 0


def test_a_runs_figures_do_not_depend_on_the_calendars_of_other_runs_names(commands: Any, queries: Any) -> None:
    """Two stocks trading on weekdays, and a later run on two names that trade every day (a 7-day market).

    The stock run's 28-day figures, recomputed here with pandas from its own names' closes, are the same before and
    after the other run is stored: the weekend closes of the other names must not break the stock run's returns.
    """
    tag = uuid.uuid4().hex[:6].upper()
    rng = np.random.default_rng(7)
    days = pd.date_range("2023-01-01", "2024-03-31", freq="D", tz=UTC)
    weekdays = days[days.weekday < 5]
    series, bars = {}, []
    for name, calendar, sigma in ((f"S1{tag}", weekdays, 0.02), (f"S2{tag}", weekdays, 0.015),
                                  (f"C1{tag}", days, 0.03), (f"C2{tag}", days, 0.025)):  # fmt: skip
        closes = 100 * np.cumprod(1 + rng.normal(0.0005, sigma, len(calendar)))
        series[name] = pd.Series(closes, index=calendar)
        for when, close in zip(calendar, closes, strict=True):
            at = timestamp_pb2.Timestamp()
            at.FromDatetime(when.to_pydatetime())
            bars.append(cmd_pb.PriceBar(symbol=name, timestamp=at, price=float(close)))
    messages = [cmd_pb.IngestMarketDataRequest(bars=bars[i : i + 5000]) for i in range(0, len(bars), 5000)]
    commands.IngestMarketData(iter(messages), timeout=120)
    portfolio_id = f"calendars-{tag}"

    def optimize(symbols: list[str], end: str) -> cmd_pb.OptimizeResponse:
        response: cmd_pb.OptimizeResponse = commands.Optimize(
            cmd_pb.OptimizeRequest(
                portfolio_id=portfolio_id,
                strategies=[pb.Strategy(symbol=s) for s in symbols],
                market_data=pb.MarketDataWindow(start=stamp("2023-01-01"), end=stamp(end)),
                objective=pb.OBJECTIVE_MIN_VOLATILITY,
            ),
            timeout=120,
        )
        return response

    stocks = [f"S1{tag}", f"S2{tag}"]
    first = optimize(stocks, "2024-01-05")
    window_end = pd.Timestamp(first.optimization_metadata.window_end.ToDatetime(tzinfo=UTC))
    own = pd.DataFrame({s: series[s] for s in stocks}).loc[window_end : window_end + pd.Timedelta(days=28)]
    returns = own.pct_change().dropna().to_numpy() @ np.array([first.optimal_weights[s] for s in stocks])

    def figures() -> query_pb.RealisedRun:
        response = queries.GetRealisedPerformance(
            query_pb.GetRealisedPerformanceRequest(portfolio_id=portfolio_id, horizon_days=28), timeout=60
        )
        (stock_run,) = [r for r in response.runs if r.event_id == first.optimization_metadata.event_id]
        return stock_run

    alone = figures()
    assert alone.observations == len(returns) == 20
    assert alone.total_return == pytest.approx(np.prod(1 + returns) - 1, rel=1e-9)
    second = optimize([f"C1{tag}", f"C2{tag}"], "2024-02-02")
    beside = figures()
    assert beside.observations == len(returns)
    assert beside.total_return == pytest.approx(alone.total_return, rel=1e-12)
    assert beside.volatility == pytest.approx(alone.volatility, rel=1e-12)
    assert beside.period_end == alone.period_end

    # Without a horizon the stock run's period ends at the later run's window end, whether or not the range
    # asked for (``end`` between the two runs) holds that run.
    def until_next(**bounds: Any) -> query_pb.RealisedRun:
        response = queries.GetRealisedPerformance(
            query_pb.GetRealisedPerformanceRequest(portfolio_id=portfolio_id, **bounds), timeout=60
        )
        (stock_run,) = [r for r in response.runs if r.event_id == first.optimization_metadata.event_id]
        return stock_run

    later_window_end = second.optimization_metadata.window_end.ToDatetime(tzinfo=UTC)
    whole = until_next()
    assert whole.period_end.ToDatetime(tzinfo=UTC) <= later_window_end
    middle = timestamp_pb2.Timestamp()
    middle.FromNanoseconds(
        (first.optimization_metadata.timestamp.ToNanoseconds() + second.optimization_metadata.timestamp.ToNanoseconds())
        // 2
    )
    cut = until_next(end=middle)
    assert (cut.period_end, cut.observations, cut.total_return) == (
        whole.period_end,
        whole.observations,
        whole.total_return,
    )
