"""The walk-forward simulation against independent truth: skfolio's WalkForward, closed forms and pandas."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from services.backtest import (
    BacktestCosts,
    BacktestSettings,
    Decision,
    Holding,
    RebalanceSchedule,
    ScheduleKind,
    WalkForward,
    run_backtest,
)
from services.engine import MethodSettings, OptimizationJob, run_optimization
from services.errors import InfeasibleError, InvalidInputError, PreconditionError
from services.optimization import Objective, PortfolioProblem
from services.trading import ImpactModel
from services.types import EstimationSettings, FloatArray

WINDOW = 252
EVERY = 21


@pytest.fixture(scope="module")
def prices(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    return sp500_prices.loc["2012":"2018"]


def _optimizer(symbols: tuple[str, ...], objective: Objective, decisions: list[tuple[int, FloatArray]] | None = None):
    n = len(symbols)
    problem = PortfolioProblem(symbols=symbols, objective=objective, lower_bounds=np.zeros(n), upper_bounds=np.ones(n))

    def optimize(decision: Decision) -> FloatArray:
        job = OptimizationJob(
            problem=problem,
            inputs=decision.window,
            settings=EstimationSettings(compounding=False),  # skfolio's arithmetic mean
            method=MethodSettings(),
        )
        weights = run_optimization(job).result.weights
        if decisions is not None:
            decisions.append((decision.number, weights))
        return weights

    return optimize


def _settings(**changes: object) -> BacktestSettings:
    values: dict[str, object] = {
        "estimation_periods": WINDOW,
        "schedule": RebalanceSchedule(kind=ScheduleKind.PERIODS, every_periods=EVERY),
        "holding": Holding.CONSTANT_WEIGHTS,
    }
    values.update(changes)
    return BacktestSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("objective", "skfolio_objective"),
    [(Objective.MIN_VOLATILITY, "MINIMIZE_RISK"), (Objective.MAX_SHARPE, "MAXIMIZE_RATIO")],
)
def test_equal_returns_to_skfolio_walk_forward(
    prices: pd.DataFrame, objective: Objective, skfolio_objective: str
) -> None:
    from skfolio.model_selection import WalkForward as SkfolioWalkForward
    from skfolio.model_selection import cross_val_predict
    from skfolio.optimization import MeanRisk, ObjectiveFunction
    from skfolio.preprocessing import prices_to_returns

    symbols = tuple(prices.columns)
    decisions: list[tuple[int, FloatArray]] = []
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(),
        _optimizer(symbols, objective, decisions),
        symbols=symbols,
    )
    tight = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = cross_val_predict(
            MeanRisk(objective_function=getattr(ObjectiveFunction, skfolio_objective), solver_params=tight),
            prices_to_returns(prices),
            cv=SkfolioWalkForward(train_size=WINDOW, test_size=EVERY),
        )
    theirs = np.asarray(predicted.returns)
    ours = result.daily_returns
    # skfolio drops the last, incomplete test fold; every fold it has is ours too.
    assert len(predicted.portfolios) >= len(ours) // EVERY
    assert result.failed_decisions == 0
    np.testing.assert_allclose(ours[: theirs.size], theirs, rtol=0, atol=2e-5)
    for number, weights in decisions[: len(predicted.portfolios)]:
        np.testing.assert_allclose(weights, predicted.portfolios[number].weights, atol=5e-4)
    # The dates line up: skfolio's test returns start the day after the first decision.
    assert pd.Timestamp(predicted.returns_df.index[0]) == pd.Timestamp(result.timestamps[1])


def test_metrics_match_pandas_and_skfolio(prices: pd.DataFrame) -> None:
    from skfolio import Portfolio

    symbols = tuple(prices.columns)
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(holding=Holding.BUY_AND_HOLD, risk_free_rate=0.0),
        _optimizer(symbols, Objective.MIN_VOLATILITY),
        symbols=symbols,
    )
    equity = pd.Series(result.equity, index=pd.DatetimeIndex(result.timestamps))
    returns = equity.pct_change().dropna()
    metrics = result.metrics
    assert metrics.volatility == pytest.approx(returns.std() * np.sqrt(252), rel=1e-12)
    assert metrics.sharpe_ratio == pytest.approx(returns.mean() / returns.std() * np.sqrt(252), rel=1e-12)
    downside = np.sqrt((returns.clip(upper=0) ** 2).mean()) * np.sqrt(252)
    assert metrics.sortino_ratio == pytest.approx(returns.mean() * 252 / downside, rel=1e-12)
    with_start = pd.concat([pd.Series([1_000_000.0]), equity.reset_index(drop=True)])
    assert metrics.max_drawdown == pytest.approx((1 - with_start / with_start.cummax()).max(), rel=1e-12)
    years = (equity.index[-1] - equity.index[0]).days / 365.25
    cagr = (equity.iloc[-1] / 1_000_000.0) ** (1 / years) - 1
    assert metrics.cagr == pytest.approx(cagr, rel=1e-12)
    assert metrics.calmar_ratio == pytest.approx(cagr / metrics.max_drawdown, rel=1e-12)
    assert metrics.hit_rate == pytest.approx((returns > 0).mean(), rel=1e-12)
    # skfolio on the same daily returns: its annualised Sharpe and compounded max drawdown.
    portfolio = Portfolio(X=returns.to_frame("p"), weights=np.array([1.0]), compounded=True)
    assert metrics.sharpe_ratio == pytest.approx(portfolio.annualized_sharpe_ratio, rel=1e-9)
    assert result.costs[0] == 0  # so the start value equals the first close, which skfolio starts from
    assert metrics.max_drawdown == pytest.approx(portfolio.max_drawdown, rel=1e-9)


def test_buy_and_hold_segments_grow_by_the_price_relatives(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    decisions: list[tuple[int, FloatArray]] = []
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(holding=Holding.BUY_AND_HOLD),
        _optimizer(symbols, Objective.MAX_SHARPE, decisions),
        symbols=symbols,
    )
    frame = prices.loc[pd.DatetimeIndex(result.timestamps)]
    starts = np.flatnonzero(result.rebalanced)
    assert list(starts) == list(range(0, len(frame), EVERY))
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else len(frame) - 1
        target = decisions[k][1]
        relatives = (frame.iloc[stop] / frame.iloc[start]).to_numpy()
        # Held shares: the value grows by the target-weighted price relatives (cash, 1 − Σ target, earns nothing).
        expected = float(target @ relatives + (1 - target.sum()))
        assert result.equity[stop] / result.equity[start] == pytest.approx(expected, rel=1e-10)
        # Weights the day before the next decision: the targets drifted with prices.
        grown = target * (frame.iloc[stop - 1] / frame.iloc[start]).to_numpy()
        np.testing.assert_allclose(result.weights[stop - 1], grown / (grown.sum() + 1 - target.sum()), atol=1e-12)


def test_no_look_ahead(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    seen: list[tuple[np.datetime64, np.datetime64]] = []
    base = _optimizer(symbols, Objective.MAX_SHARPE)

    def watching(decision: Decision) -> FloatArray:
        seen.append((decision.window.timestamps[-1], decision.timestamp))
        assert decision.window.returns.shape == (WINDOW, len(symbols))
        return base(decision)

    settings = _settings(holding=Holding.BUY_AND_HOLD)
    original = run_backtest(prices.to_numpy(), prices.index.to_numpy(), settings, watching, symbols=symbols)
    assert all(last == when for last, when in seen)
    # Scramble every price after a cut: nothing up to the cut may change.
    cut = WINDOW + 20 * EVERY  # a decision date: it trades on its own close, and must not see the next
    scrambled = prices.to_numpy().copy()
    rng = np.random.default_rng(7)
    scrambled[cut + 1 :] *= rng.uniform(0.5, 1.5, size=scrambled[cut + 1 :].shape)
    changed = run_backtest(scrambled, prices.index.to_numpy(), settings, base, symbols=symbols)
    upto = cut - WINDOW + 1  # position of the cut in the simulated path
    # (to rounding: the solver's warm starts may differ in the last bit)
    np.testing.assert_allclose(original.equity[:upto], changed.equity[:upto], rtol=1e-12)
    np.testing.assert_allclose(original.weights[:upto], changed.weights[:upto], rtol=0, atol=1e-12)
    assert not np.array_equal(original.equity[upto:], changed.equity[upto:])


def test_costs_of_the_first_investment_are_the_closed_form(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    n = len(symbols)
    equal = np.full(n, 1.0 / n)
    costs = BacktestCosts(commission_bps=5.0, spread_bps=10.0, commission_per_trade=1.0)
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(holding=Holding.BUY_AND_HOLD, costs=costs, schedule=RebalanceSchedule(kind=ScheduleKind.ANNUALLY)),
        lambda decision: equal,
        symbols=symbols,
    )
    expected = 1_000_000.0 * (5.0 + 10.0 / 2) * 1e-4 + n * 1.0
    assert result.costs[0] == pytest.approx(expected, rel=1e-12)
    assert result.equity[0] == pytest.approx(1_000_000.0 - expected, rel=1e-12)
    assert result.turnover[0] == pytest.approx(1.0 - expected / 1_000_000.0, rel=1e-12)  # net of the costs
    assert result.metrics.total_costs == pytest.approx(result.costs.sum())
    assert result.metrics.total_costs > expected  # later rebalances pay too
    free = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(holding=Holding.BUY_AND_HOLD, schedule=RebalanceSchedule(kind=ScheduleKind.ANNUALLY)),
        lambda decision: equal,
        symbols=symbols,
    )
    assert result.metrics.final_value < free.metrics.final_value
    assert result.metrics.cost_drag_bps > 0 and free.metrics.cost_drag_bps == 0


def test_whole_shares_hold_integers_and_cash(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(holding=Holding.BUY_AND_HOLD, whole_shares=True, initial_cash=50_000.0),
        _optimizer(symbols, Objective.MIN_VOLATILITY),
        symbols=symbols,
    )
    frame = prices.loc[pd.DatetimeIndex(result.timestamps)].to_numpy()
    shares = result.weights * result.equity[:, None] / frame
    np.testing.assert_allclose(shares, np.round(shares), atol=1e-6)
    assert np.all(result.cash >= 0)
    assert np.all(result.cash[result.rebalanced] < frame[result.rebalanced].max(axis=1) * len(symbols))


def test_monthly_decisions_are_the_last_close_of_each_month(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    walk = WalkForward(
        prices.to_numpy(), prices.index.to_numpy(), _settings(schedule=RebalanceSchedule()), symbols=symbols
    )
    simulated = prices.index[WINDOW:]
    month_ends = pd.Series(simulated, index=simulated).groupby(simulated.to_period("M")).max()
    expected = {simulated[0], *month_ends.iloc[:-1]}  # the last month may be incomplete
    dates = {prices.index[i] for i in walk.calendar_decisions()}
    assert dates == expected


def test_drift_schedule_trades_on_the_first_breach(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    n = len(symbols)
    equal = np.full(n, 1.0 / n)
    band = 0.02
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(
            holding=Holding.BUY_AND_HOLD, schedule=RebalanceSchedule(kind=ScheduleKind.DRIFT, absolute_band=band)
        ),
        lambda decision: equal,
        symbols=symbols,
    )
    frame = prices.loc[pd.DatetimeIndex(result.timestamps)]
    starts = np.flatnonzero(result.rebalanced)
    assert len(starts) > 2
    for k in range(len(starts) - 1):
        start, stop = starts[k], starts[k + 1]
        grown = equal * (frame.iloc[start : stop + 1] / frame.iloc[start]).to_numpy()
        drift = np.abs(grown / grown.sum(axis=1, keepdims=True) - equal).max(axis=1)
        assert np.all(drift[:-1] <= band) and drift[-1] > band  # independent recomputation of the trigger


def test_a_drift_schedule_whose_first_decision_fails_decides_again_at_the_next_close(prices: pd.DataFrame) -> None:
    """All cash never drifts: without a target yet, each close is a decision until one gives a target."""
    symbols = tuple(prices.columns)
    n = len(symbols)
    days: list[int] = []

    def first_two_fail(decision: Decision) -> FloatArray:
        days.append(decision.index)
        if len(days) <= 2:
            raise InfeasibleError("no portfolio yet")
        return np.full(n, 1.0 / n)

    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(
            holding=Holding.BUY_AND_HOLD, schedule=RebalanceSchedule(kind=ScheduleKind.DRIFT, absolute_band=0.02)
        ),
        first_two_fail,
        symbols=symbols,
    )
    assert days[:3] == [days[0], days[0] + 1, days[0] + 2] and result.failed_decisions == 2
    assert not result.rebalanced[:2].any() and result.rebalanced[2]
    assert result.weights[3].sum() > 0.9  # invested from the third close on


def test_failed_decisions_keep_the_holdings(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    n = len(symbols)
    calls = {"count": 0}

    def sometimes(decision: Decision) -> FloatArray:
        calls["count"] += 1
        if decision.number == 1:
            raise InfeasibleError("no portfolio")
        return np.full(n, 1.0 / n)

    result = run_backtest(
        prices.to_numpy(), prices.index.to_numpy(), _settings(holding=Holding.BUY_AND_HOLD), sometimes, symbols=symbols
    )
    assert result.failed_decisions == 1 and "no portfolio" in result.first_failure
    assert not result.rebalanced[EVERY] and result.rebalanced[2 * EVERY]


def test_errors_name_the_field(stock_prices: pd.DataFrame) -> None:
    frame = stock_prices.loc["2003":"2006"]
    with pytest.raises(PreconditionError) as missing:
        WalkForward(frame.to_numpy(), frame.index.to_numpy(), _settings(), symbols=tuple(frame.columns))
    subjects = {v.subject for v in missing.value.precondition_violations}
    assert subjects == {c for c in frame.columns if frame[c].iloc[WINDOW:].isna().any()}
    complete = frame.dropna(axis=1)
    with pytest.raises(PreconditionError) as short:
        WalkForward(complete.to_numpy()[:100], complete.index.to_numpy()[:100], _settings())
    assert short.value.precondition_violations[0].type == "INSUFFICIENT_HISTORY"
    for changes, field in [
        ({"whole_shares": True}, "whole_shares"),
        ({"schedule": RebalanceSchedule(kind=ScheduleKind.DRIFT)}, "schedule"),
        ({"initial_cash": 0.0}, "initial_cash"),
        ({"costs": BacktestCosts(commission_bps=-1)}, "costs.commission_bps"),
        ({"costs": BacktestCosts(impact_model=ImpactModel.SQUARE_ROOT)}, "costs.adv"),
    ]:
        with pytest.raises(InvalidInputError) as bad:
            WalkForward(complete.to_numpy(), complete.index.to_numpy(), _settings(**changes))
        assert bad.value.field_violations[0].field == field


def test_square_root_impact_of_the_first_investment(prices: pd.DataFrame) -> None:
    symbols = tuple(prices.columns)
    n = len(symbols)
    equal = np.full(n, 1.0 / n)
    adv = np.full(n, 2_000.0)
    costs = BacktestCosts(impact_model=ImpactModel.SQUARE_ROOT, adv=adv, volatility_periods=20)
    result = run_backtest(
        prices.to_numpy(),
        prices.index.to_numpy(),
        _settings(holding=Holding.BUY_AND_HOLD, costs=costs, schedule=RebalanceSchedule(kind=ScheduleKind.ANNUALLY)),
        lambda decision: equal,
        symbols=symbols,
    )
    # Closed form from pandas: σ of the 20 daily returns to the first close, Q the gross shares of 1/N of $1M.
    first = prices.iloc[: WINDOW + 1]
    sigma = first.pct_change().iloc[-20:].std().to_numpy()
    close = first.iloc[-1].to_numpy()
    quantity = 1_000_000.0 / n / close
    expected = float(np.sum(sigma * np.sqrt(quantity / adv) * quantity * close))
    assert result.costs[0] == pytest.approx(expected, rel=1e-10)
    assert result.equity[0] == pytest.approx(1_000_000.0 - expected, rel=1e-12)
