"""PyPortfolioOpt parity of the integer allocation (issue 12, point 5).

Its two methods as strategies, its ``clean_weights()`` output accepted, and the absolute allowed deviation.

Truth: PyPortfolioOpt's ``DiscreteAllocation.greedy_portfolio`` and ``lp_portfolio`` run live on the latest
prices of ``data/stock_prices.csv`` and the cleaned weights of its max-Sharpe portfolio (long-only, and long-short
with weight bounds (−1, 1)); the LP objective Σ|w T − p x| + leftover is evaluated here on its answer.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pypfopt import EfficientFrontier, expected_returns, risk_models
from pypfopt.discrete_allocation import DiscreteAllocation, get_latest_prices

from services.errors import InvalidInputError
from services.trading import (
    AllocationRequest,
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    DeviationMode,
    allocate,
    allocation_cache_key,
)
from tests.conftest import DATA_DIR

BUDGET = 10_000.0
LP_TOLERANCE = 1e-5 * BUDGET  # the default gap_tolerance, in dollars


@pytest.fixture(scope="module")
def latest() -> pd.Series:
    prices = pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")
    return get_latest_prices(prices)


def max_sharpe(bounds: tuple[float, float]) -> dict[str, float]:
    prices = pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")
    frontier = EfficientFrontier(
        expected_returns.mean_historical_return(prices), risk_models.sample_cov(prices), weight_bounds=bounds
    )
    frontier.max_sharpe()
    return dict(frontier.clean_weights())


@pytest.fixture(scope="module")
def long_weights() -> dict[str, float]:
    return max_sharpe((0.0, 1.0))


@pytest.fixture(scope="module")
def long_short_weights() -> dict[str, float]:
    return max_sharpe((-1.0, 1.0))


def request_of(weights: dict[str, float], latest: pd.Series, **options: Any) -> AllocationRequest:
    targets = [AllocationTarget(symbol=t, target_weight=w, price=float(latest[t])) for t, w in weights.items()]
    return AllocationRequest(targets=targets, extra_cash=BUDGET, **options)


def pypfopt_lp_objective(
    weights: dict[str, float], latest: pd.Series, shares: dict[str, int], *, reinvest: bool = False
) -> float:
    """lp_portfolio's objective Σ|w T − p x| + (T − Σ p x), summed over its long and short books."""
    if any(w < 0 for w in weights.values()):
        longs = {t: w for t, w in weights.items() if w >= 0}
        shorts = {t: -w for t, w in weights.items() if w < 0}
        long_sum, short_sum = sum(longs.values()), sum(shorts.values())
        short_value = BUDGET * short_sum
        books = [
            ({t: w / long_sum for t, w in longs.items()}, BUDGET + (short_value if reinvest else 0.0), 1),
            ({t: w / short_sum for t, w in shorts.items()}, short_value, -1),
        ]
    else:
        books = [(weights, BUDGET, 1)]
    total = 0.0
    for book, value, sign in books:
        invested = sum(sign * shares.get(t, 0) * latest[t] for t in book)
        total += sum(abs(w * value - sign * shares.get(t, 0) * latest[t]) for t, w in book.items())
        total += value - invested
    return total


def held(result: Any) -> dict[str, int]:
    return {symbol: shares for symbol, shares in result.final_shares.items() if shares}


def pypfopt(weights: dict[str, float], latest: pd.Series, method: str, **options: Any) -> tuple[dict[str, int], float]:
    allocation = DiscreteAllocation(weights, latest[list(weights)], total_portfolio_value=BUDGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lp_portfolio's FutureWarning about its default solver
        shares, leftover = getattr(allocation, method)(**options)
    return dict(shares), float(leftover)


# --- the two methods ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reinvest", [False, True])
@pytest.mark.parametrize("book", ["long_weights", "long_short_weights"])
def test_greedy_equals_greedy_portfolio(
    book: str, reinvest: bool, latest: pd.Series, request: pytest.FixtureRequest
) -> None:
    weights: dict[str, float] = request.getfixturevalue(book)
    expected, leftover = pypfopt(weights, latest, "greedy_portfolio", reinvest=reinvest)
    result = allocate(request_of(weights, latest, strategy=AllocationStrategy.PYPFOPT_GREEDY, reinvest=reinvest))
    assert held(result) == expected
    assert result.unused_budget == pytest.approx(leftover, abs=1e-9)
    assert result.solver_status is AllocationStatus.GREEDY
    assert not result.weights_renormalised
    if book == "long_short_weights":
        assert min(result.final_shares.values()) < 0  # the shorts are negative share counts


@pytest.mark.parametrize("reinvest", [False, True])
@pytest.mark.parametrize("book", ["long_weights", "long_short_weights"])
def test_lp_reaches_lp_portfolio_objective(
    book: str, reinvest: bool, latest: pd.Series, request: pytest.FixtureRequest
) -> None:
    weights: dict[str, float] = request.getfixturevalue(book)
    expected, _ = pypfopt(weights, latest, "lp_portfolio", reinvest=reinvest)
    result = allocate(request_of(weights, latest, strategy=AllocationStrategy.PYPFOPT_LP, reinvest=reinvest))
    theirs = pypfopt_lp_objective(weights, latest, expected, reinvest=reinvest)
    ours = pypfopt_lp_objective(weights, latest, result.final_shares, reinvest=reinvest)
    assert ours == pytest.approx(theirs, abs=LP_TOLERANCE)
    assert result.lp_objective == pytest.approx(ours, abs=1e-9)
    assert result.solver_status is AllocationStatus.OPTIMAL and result.solver == "HiGHS"
    value = sum(result.final_shares[t] * latest[t] for t in weights if result.final_shares[t] > 0)
    assert value <= BUDGET * (1.0 + (sum(-w for w in weights.values() if w < 0) if reinvest else 0.0)) + 1e-9


def test_explicit_short_ratio_equals_pypfopt(long_short_weights: dict[str, float], latest: pd.Series) -> None:
    allocation = DiscreteAllocation(long_short_weights, latest, total_portfolio_value=BUDGET, short_ratio=0.3)
    expected, leftover = allocation.greedy_portfolio()
    result = allocate(
        request_of(long_short_weights, latest, strategy=AllocationStrategy.PYPFOPT_GREEDY, short_ratio=0.3)
    )
    assert held(result) == dict(expected)
    assert result.unused_budget == pytest.approx(leftover, abs=1e-9)


def test_greedy_breaks_ties_in_the_request_order(latest: pd.Series) -> None:
    """Equal weights: greedy_portfolio's stable sort keeps the dict's order, and so does the cache key."""
    symbols = ["GOOG", "AMZN", "AAPL", "FB", "MA"]
    weights = dict.fromkeys(symbols, 0.2)
    reordered = dict.fromkeys(reversed(symbols), 0.2)
    for given in (weights, reordered):
        expected, _ = pypfopt(given, latest, "greedy_portfolio")
        assert held(allocate(request_of(given, latest, strategy=AllocationStrategy.PYPFOPT_GREEDY))) == expected
    keys = {
        allocation_cache_key(request_of(given, latest, strategy=AllocationStrategy.PYPFOPT_GREEDY))
        for given in (weights, reordered)
    }
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"commission_per_trade": 1.0}, "commission_per_trade"),
        ({"fee_per_share": 0.01}, "fee_per_share"),
        ({"short_ratio": -0.1}, "short_ratio"),
        ({"short_ratio": math.nan}, "short_ratio"),
    ],
)
def test_pypfopt_strategies_reject_what_pypfopt_lacks(
    long_weights: dict[str, float], latest: pd.Series, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        allocate(request_of(long_weights, latest, strategy=AllocationStrategy.PYPFOPT_LP, **options))
    assert [v.field for v in caught.value.field_violations] == [field]


def test_lot_sizes_and_zero_short_ratio_are_rejected(
    long_weights: dict[str, float], long_short_weights: dict[str, float], latest: pd.Series
) -> None:
    base = request_of(long_weights, latest, strategy=AllocationStrategy.PYPFOPT_GREEDY)
    lots = [dataclasses.replace(t, lot_size=10) if i == 2 else t for i, t in enumerate(base.targets)]
    with pytest.raises(InvalidInputError) as caught:
        allocate(dataclasses.replace(base, targets=lots))
    assert [v.field for v in caught.value.field_violations] == ["targets[2].lot_size"]
    with pytest.raises(InvalidInputError) as caught:
        allocate(request_of(long_short_weights, latest, strategy=AllocationStrategy.PYPFOPT_LP, short_ratio=0.0))
    assert [v.field for v in caught.value.field_violations] == ["short_ratio"]


@pytest.mark.parametrize("options", [{"short_ratio": 0.3}, {"reinvest": True}])
def test_short_options_only_with_pypfopt_strategies(
    long_weights: dict[str, float], latest: pd.Series, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        allocate(request_of(long_weights, latest, **options))
    assert [v.field for v in caught.value.field_violations] == list(options)


def test_negative_weights_stay_invalid_for_stratopt_strategies(
    long_short_weights: dict[str, float], latest: pd.Series
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        allocate(request_of(long_short_weights, latest))
    assert all(v.field.endswith(".target_weight") for v in caught.value.field_violations)


# --- clean_weights() output ---------------------------------------------------------------------------------------


def test_clean_weights_summing_below_one_are_renormalised(long_weights: dict[str, float], latest: pd.Series) -> None:
    weight_sum = math.fsum(long_weights.values())
    assert weight_sum != 1.0 and abs(weight_sum - 1.0) < 1e-3  # clean_weights rounds to 5 decimals
    result = allocate(request_of(long_weights, latest))
    assert result.weights_renormalised
    assert result.weight_sum == weight_sum
    by_symbol = {line.symbol: line for line in result.lines}
    for symbol, weight in long_weights.items():
        assert by_symbol[symbol].target_weight == pytest.approx(weight / weight_sum, rel=1e-15)
    exact = allocate(request_of({"GOOG": 0.5, "AAPL": 0.5}, latest))
    assert not exact.weights_renormalised and exact.weight_sum == 1.0


def test_pypfopt_strategies_keep_clean_weights_as_given(long_weights: dict[str, float], latest: pd.Series) -> None:
    result = allocate(request_of(long_weights, latest, strategy=AllocationStrategy.PYPFOPT_LP))
    assert not result.weights_renormalised
    for line in result.lines:
        assert line.target_value == pytest.approx(long_weights[line.symbol] * BUDGET, rel=1e-15)


def test_greedy_weights_over_one_never_spend_past_the_budget() -> None:
    """Weights over 1: PyPortfolioOpt's answer as given, or its answer on the weights divided by their sum.

    The latter (said so in the result) where its round one overspends, which PyPortfolioOpt refuses (it raises).
    """
    prices = pd.Series({"A": 1.0, "B": 1.0})
    over = {"A": 0.5005, "B": 0.5}
    with pytest.raises(AssertionError, match="insufficient funds"):
        DiscreteAllocation(over, prices, total_portfolio_value=BUDGET).greedy_portfolio()
    for strategy in (AllocationStrategy.PYPFOPT_GREEDY, AllocationStrategy.PYPFOPT_LP):
        result = allocate(request_of(over, prices, strategy=strategy))
        assert result.invested_value <= BUDGET and result.unused_budget >= 0.0
    result = allocate(request_of(over, prices, strategy=AllocationStrategy.PYPFOPT_GREEDY))
    scaled = {t: w / math.fsum(over.values()) for t, w in over.items()}
    expected, leftover = pypfopt(scaled, prices, "greedy_portfolio")
    assert held(result) == expected and result.unused_budget == pytest.approx(leftover, abs=1e-9)
    assert result.weights_renormalised and "divided by their sum" in result.solver_message
    slack = pd.Series({"A": 13.0, "B": 11.0})  # round one's floors leave room ($9,999): PyPortfolioOpt answers
    expected, leftover = pypfopt(over, slack, "greedy_portfolio")
    result = allocate(request_of(over, slack, strategy=AllocationStrategy.PYPFOPT_GREEDY))
    assert held(result) == expected and result.unused_budget == pytest.approx(leftover, abs=1e-9)
    assert not result.weights_renormalised


@pytest.mark.parametrize("method", ["greedy_portfolio", "lp_portfolio"])
def test_a_market_neutral_book_is_allocated_as_pypfopt_does(latest: pd.Series, method: str) -> None:
    prices = pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")
    frontier = EfficientFrontier(
        expected_returns.mean_historical_return(prices), risk_models.sample_cov(prices), weight_bounds=(-1.0, 1.0)
    )
    frontier.efficient_return(0.2, market_neutral=True)
    weights = {t: w for t, w in frontier.clean_weights().items() if w}
    assert abs(math.fsum(weights.values())) < 1e-3 and min(weights.values()) < 0
    expected, leftover = pypfopt(weights, latest, method)
    strategy = AllocationStrategy.PYPFOPT_GREEDY if method == "greedy_portfolio" else AllocationStrategy.PYPFOPT_LP
    result = allocate(request_of(weights, latest, strategy=strategy))
    if method == "greedy_portfolio":
        assert held(result) == expected and result.unused_budget == pytest.approx(leftover, abs=1e-9)
    else:
        theirs = pypfopt_lp_objective(weights, latest, expected)
        assert pypfopt_lp_objective(weights, latest, result.final_shares) == pytest.approx(theirs, abs=LP_TOLERANCE)
    with pytest.raises(InvalidInputError, match="market neutral"):  # a sum neither 1 nor 0
        allocate(request_of({"GOOG": 0.75, "AAPL": -0.25}, latest, strategy=strategy))


def test_the_weight_sum_tolerance_is_inclusive_on_both_sides(latest: pd.Series) -> None:
    for weights in ({"GOOG": 0.5, "AAPL": 0.499}, {"GOOG": 0.5, "AAPL": 0.501}):  # 1 ∓ 0.001 to rounding
        assert allocate(request_of(weights, latest)).weights_renormalised


@pytest.mark.parametrize("scale", [1.0011, 0.9989])
def test_weights_beyond_the_tolerance_are_invalid(latest: pd.Series, scale: float) -> None:
    weights = {"GOOG": 0.5 * scale, "AAPL": 0.5 * scale}
    for strategy in (AllocationStrategy.MINIMIZE_LEFTOVER, AllocationStrategy.PYPFOPT_GREEDY):
        with pytest.raises(InvalidInputError) as caught:
            allocate(request_of(weights, latest, strategy=strategy))
        assert [v.field for v in caught.value.field_violations] == ["targets"]


def test_weight_sum_changes_the_cache_key(latest: pd.Series) -> None:
    exact = request_of({"GOOG": 0.5, "AAPL": 0.5}, latest)
    scaled = request_of({"GOOG": 0.49999, "AAPL": 0.49999}, latest)
    assert allocation_cache_key(exact) != allocation_cache_key(scaled)


# --- absolute allowed deviation -------------------------------------------------------------------------------


def test_absolute_deviation_is_percentage_points_of_the_budget(latest: pd.Series) -> None:
    """A 10 % target with d = 0.02: absolute band [8 %, 12 %] of B, relative band [9.8 %, 10.2 %]."""
    weights = {"GOOG": 0.1, "AAPL": 0.3, "AMZN": 0.3, "MA": 0.3}
    targets = [
        AllocationTarget(symbol=t, target_weight=w, price=float(latest[t]), allowed_deviation=0.02)
        for t, w in weights.items()
    ]
    absolute = allocate(AllocationRequest(targets=targets, extra_cash=BUDGET, deviation_mode=DeviationMode.ABSOLUTE))
    relative = allocate(AllocationRequest(targets=targets, extra_cash=BUDGET))
    for line in absolute.lines:
        weight = weights[line.symbol]
        assert line.lower_value == pytest.approx((weight - 0.02) * BUDGET)
        assert line.upper_value == pytest.approx((weight + 0.02) * BUDGET)
        assert line.lower_value - 1e-6 <= line.final_value <= line.upper_value + 1e-6
    assert absolute.relaxation.value == "NONE"
    for line in relative.lines:  # ± 2 % of the target itself (too narrow here: widened, relative still)
        weight, deviation = weights[line.symbol], line.allowed_deviation
        assert deviation >= 0.02
        assert line.lower_value == pytest.approx(weight * (1.0 - deviation) * BUDGET)
        assert line.upper_value == pytest.approx(min(weight * (1.0 + deviation), 1.0) * BUDGET)
    assert allocation_cache_key(
        AllocationRequest(targets=targets, extra_cash=BUDGET, deviation_mode=DeviationMode.ABSOLUTE)
    ) != allocation_cache_key(AllocationRequest(targets=targets, extra_cash=BUDGET))


def test_absolute_band_below_zero_is_clipped(latest: pd.Series) -> None:
    targets = [
        AllocationTarget(symbol="GOOG", target_weight=0.01, price=float(latest["GOOG"]), allowed_deviation=0.05),
        AllocationTarget(symbol="AAPL", target_weight=0.99, price=float(latest["AAPL"]), allowed_deviation=0.05),
    ]
    result = allocate(AllocationRequest(targets=targets, extra_cash=BUDGET, deviation_mode=DeviationMode.ABSOLUTE))
    goog = next(line for line in result.lines if line.symbol == "GOOG")
    assert goog.lower_value == 0.0 and goog.upper_value == pytest.approx(0.06 * BUDGET)
    assert np.isfinite(result.lp_objective)


def test_unknown_deviation_mode_is_invalid(latest: pd.Series) -> None:
    request = dataclasses.replace(request_of({"GOOG": 1.0}, latest), deviation_mode="PERCENT")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError) as caught:
        allocate(request)
    assert [v.field for v in caught.value.field_violations] == ["deviation_mode"]
