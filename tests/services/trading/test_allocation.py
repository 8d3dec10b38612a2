"""Integer-share allocation (services.trading._allocation) against independent truth on real prices.

Prices are the last row of PyPortfolioOpt's ``data/stock_prices.csv`` (2018-04-11, 20 US stocks from $3.30 to
$1,427.05). The truths: exhaustive enumeration of every share-count vector of small problems (bands, lots, fees
and the three objectives written out again here, independently of the module), PyPortfolioOpt's
``DiscreteAllocation.greedy_portfolio`` / ``lp_portfolio`` and hand-computed fees.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
from pypfopt import DiscreteAllocation
from scipy.optimize import OptimizeResult

import services.trading._allocation as allocation_module
from services.errors import DeadlineExceededError, InfeasibleError, InvalidInputError
from services.trading import (
    AllocationRequest,
    AllocationResult,
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    BandRelaxation,
    Holding,
    allocate,
    allocation_cache_key,
    greedy_allocation,
)
from stratopt.rpc_errors import status_code

MAX_COMBINATIONS = 400_000


@pytest.fixture(scope="module")
def prices(stock_prices: pd.DataFrame) -> pd.Series:
    """The last row of stock_prices.csv: one price per ticker, all 20 listed by then."""
    last = stock_prices.iloc[-1]
    assert last.notna().all()
    return last


def targets_of(
    prices: pd.Series,
    weights: dict[str, float],
    *,
    deviation: float = 0.10,
    lots: dict[str, int] | None = None,
    scores: dict[str, float] | None = None,
) -> list[AllocationTarget]:
    return [
        AllocationTarget(
            symbol=symbol,
            target_weight=weight,
            price=float(prices[symbol]),
            allowed_deviation=deviation,
            lot_size=(lots or {}).get(symbol, 1),
            momentum_score=None if scores is None else scores[symbol],
        )
        for symbol, weight in weights.items()
    ]


def seeded_weights(symbols: list[str], seed: int) -> dict[str, float]:
    weights = np.random.default_rng(seed).dirichlet(np.ones(len(symbols)))
    weights /= weights.sum()
    return dict(zip(symbols, weights.tolist(), strict=True))


# --- exhaustive enumeration ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Enumerated:
    """The best share counts of a small problem, found by trying every admissible vector."""

    shares: dict[str, int]
    invested: float
    key: tuple[float, ...]


def enumerate_best(request: AllocationRequest) -> Enumerated | None:
    """Try every final share vector within the bands; None when none fits the budget."""
    symbols = [t.symbol for t in request.targets]
    total_weight = math.fsum(t.target_weight for t in request.targets)
    held = {h.symbol: h for h in request.holdings}
    budget = math.fsum(h.price * h.shares for h in request.holdings) + request.extra_cash
    commission, fee = request.commission_per_trade, request.fee_per_share
    forced = math.fsum(
        commission + fee * h.shares for h in request.holdings if h.symbol not in symbols and h.shares > 0
    )
    tolerance = max(1e-12 * budget, 1e-6)  # the module's rounding slack of budget comparisons
    axes, prices, currents = [], [], []
    for target in request.targets:
        target_value = target.target_weight / total_weight * budget
        low = max(0.0, target_value * (1 - target.allowed_deviation))
        high = min(budget, target_value * (1 + target.allowed_deviation))
        counts = np.arange(0, int(budget / target.price) + 1, target.lot_size)
        values = counts * target.price
        axes.append(counts[(values >= low * (1 - 1e-9)) & (values <= high * (1 + 1e-9))])
        prices.append(target.price)
        currents.append(held[target.symbol].shares if target.symbol in held else 0)
    if math.prod(a.size for a in axes) == 0:
        return None
    assert math.prod(a.size for a in axes) <= MAX_COMBINATIONS
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)  # (M, n) final shares
    price = np.array(prices)
    traded = np.abs(grid - np.array(currents))
    fees = (commission * (traded > 0) + fee * traded).sum(axis=1)
    invested = grid @ price
    fits = invested + fees + forced <= budget + tolerance
    if not fits.any():
        return None
    if request.strategy is AllocationStrategy.MINIMIZE_LEFTOVER:
        keys = np.stack([invested], axis=1)
    elif request.strategy is AllocationStrategy.MAXIMIZE_SHARES:
        keys = np.stack([grid.sum(axis=1).astype(float), invested], axis=1)
    else:
        scores = np.array([t.momentum_score for t in request.targets], dtype=float)
        spread = scores.max() - scores.min()
        tilt = (scores - scores.min()) / spread if spread > 0 else np.zeros_like(scores)
        keys = np.stack([grid @ ((1 + tilt) * price)], axis=1)
    keys = keys[fits]
    order = np.lexsort(keys.T[::-1])  # lexicographic, first key most significant
    best = order[-1]
    shares = grid[fits][best]
    return Enumerated(dict(zip(symbols, shares.tolist(), strict=True)), float(invested[fits][best]), tuple(keys[best]))


def small_cases(prices: pd.Series) -> Iterator[tuple[str, AllocationRequest]]:
    """Seeded small problems (2-4 symbols, real prices) with holdings, lots and fees, feasible as given."""
    tickers = list(prices.index)
    rng = np.random.default_rng(20180411)
    produced = 0
    while produced < 24:
        n = int(rng.integers(2, 5))
        symbols = sorted(rng.choice(tickers, size=n, replace=False).tolist())
        weights = rng.dirichlet(np.ones(n))
        weights /= weights.sum()
        strategy = list(AllocationStrategy)[produced % 3]
        fees = ("none", "both", "commission", "per-share")[produced % 4]
        deviation = float(rng.choice([0.1, 0.25, 0.5]))
        targets = [
            AllocationTarget(
                symbol=symbol,
                target_weight=float(w),
                price=float(prices[symbol]),
                allowed_deviation=deviation,
                lot_size=int(rng.choice([1, 1, 5, 10])),
                momentum_score=float(rng.normal()) if strategy is AllocationStrategy.MOMENTUM_WEIGHTED else None,
            )
            for symbol, w in zip(symbols, weights, strict=True)
        ]
        outsider = next(t for t in tickers if t not in symbols)
        holdings = [Holding(symbols[0], int(rng.integers(0, 30)), float(prices[symbols[0]]))]
        holdings.append(Holding(outsider, int(rng.integers(1, 10)), float(prices[outsider])))
        request = AllocationRequest(
            targets=targets,
            holdings=holdings,
            extra_cash=float(rng.uniform(300.0, 2500.0)),
            strategy=strategy,
            commission_per_trade=1.25 if fees in {"both", "commission"} else 0.0,
            fee_per_share=0.01 if fees in {"both", "per-share"} else 0.0,
            gap_tolerance=0.0,
        )
        budget = sum(h.price * h.shares for h in holdings) + request.extra_cash
        sizes = [
            int(budget * w * deviation * 2 / (t.price * t.lot_size)) + 2 for t, w in zip(targets, weights, strict=True)
        ]
        if math.prod(sizes) > MAX_COMBINATIONS or enumerate_best(request) is None:
            continue
        produced += 1
        yield f"case{produced}-{strategy.value}-n{n}-fees-{fees}", request


def objective_key(result: AllocationResult, request: AllocationRequest) -> tuple[float, ...]:
    shares = result.final_shares
    if request.strategy is AllocationStrategy.MINIMIZE_LEFTOVER:
        return (result.invested_value,)
    if request.strategy is AllocationStrategy.MAXIMIZE_SHARES:
        return (float(sum(shares.values())), result.invested_value)
    scores = np.array([t.momentum_score for t in request.targets], dtype=float)
    tilt = (scores - scores.min()) / (scores.max() - scores.min())
    return (float(sum((1 + z) * t.price * shares[t.symbol] for z, t in zip(tilt, request.targets, strict=True))),)


def test_milp_matches_exhaustive_enumeration(prices: pd.Series) -> None:
    checked = 0
    for label, request in small_cases(prices):
        truth = enumerate_best(request)
        assert truth is not None
        result = allocate(request)
        assert result.relaxation is BandRelaxation.NONE, label
        assert result.solver_status is AllocationStatus.OPTIMAL, label
        assert not result.fallback_used, label
        key = objective_key(result, request)
        budget = result.budget
        if request.strategy is AllocationStrategy.MAXIMIZE_SHARES:
            assert key[0] == truth.key[0], (label, result.final_shares, truth.shares)
            # tie-break within HiGHS's absolute gap (1e-6 objective units = 1e-6 (B + 1) dollars)
            assert key[1] >= truth.key[1] - 1e-6 * (budget + 1) - 1e-9, label
        else:
            # within HiGHS's absolute gap (1e-6)
            assert key[0] >= truth.key[0] - 1e-6, (label, result.final_shares, truth.shares)
        # and the answer is itself admissible (checked independently below)
        assert_admissible(result, request)
        checked += 1
    assert checked == 24


def assert_admissible(result: AllocationResult, request: AllocationRequest) -> None:
    """Budget, bands, lots and fee arithmetic of a result, recomputed from its share counts."""
    held = {h.symbol: h.shares for h in request.holdings}
    targets = {t.symbol: t for t in request.targets}
    commission, fee = request.commission_per_trade, request.fee_per_share
    budget = math.fsum(h.price * h.shares for h in request.holdings) + request.extra_cash
    assert result.budget == pytest.approx(budget, rel=1e-12)
    fees = []
    for line in result.lines:
        target = targets[line.symbol]
        current = held.get(line.symbol, 0)
        assert line.current_shares == current
        assert line.final_shares == current + line.buy_shares - line.sell_shares
        assert min(line.buy_shares, line.sell_shares) == 0
        assert line.final_shares >= 0 and line.final_shares % line.lot_size == 0
        if result.relaxation is not BandRelaxation.LOT_SIZES_DROPPED:
            assert line.lot_size == target.lot_size
        traded = abs(line.final_shares - current)
        assert line.trade_cost == pytest.approx(commission * (traded > 0) + fee * traded, abs=1e-12)
        fees.append(line.trade_cost)
        assert line.final_value == pytest.approx(line.final_shares * target.price, rel=1e-12)
        assert line.lower_value * (1 - 1e-9) <= line.final_value <= line.upper_value * (1 + 1e-9)
        assert line.actual_weight == pytest.approx(line.final_value / budget, rel=1e-12)
        assert line.weight_deviation == pytest.approx(line.actual_weight - line.target_weight, abs=1e-15)
    sold = [h for h in request.holdings if h.symbol not in targets and h.shares > 0]
    assert sorted(result.sold_in_full_symbols) == sorted(h.symbol for h in sold)
    fees += [commission + fee * h.shares for h in sold]
    assert result.fees_total == pytest.approx(math.fsum(fees), abs=1e-9)
    assert result.invested_value == pytest.approx(math.fsum(line.final_value for line in result.lines), rel=1e-12)
    assert result.unused_budget >= 0.0
    assert result.invested_value + result.fees_total <= budget + max(1e-12 * budget, 1e-6)
    assert result.unused_budget == pytest.approx(budget - result.invested_value - result.fees_total, abs=1e-6)
    assert result.unused_fraction + result.budget_used_fraction == pytest.approx(1.0, abs=1e-12)


# --- against greedy and PyPortfolioOpt --------------------------------------------------------------------------


def uninvested(result: AllocationResult) -> float:
    """What MINIMIZE_LEFTOVER minimises: B − Σ p x = unused cash + fees."""
    return result.budget - result.invested_value


@pytest.mark.parametrize("budget", [5_000.0, 25_000.0, 100_000.0, 1_000_000.0])
@pytest.mark.parametrize("deviation", [0.05, 0.10, 0.50])
@pytest.mark.parametrize("fees", [False, True])
def test_never_worse_than_greedy(prices: pd.Series, budget: float, deviation: float, fees: bool) -> None:
    weights = seeded_weights(list(prices.index), seed=int(budget) % 97)
    request = AllocationRequest(
        targets=targets_of(prices, weights, deviation=deviation),
        extra_cash=budget,
        commission_per_trade=1.0 if fees else 0.0,
        fee_per_share=0.005 if fees else 0.0,
    )
    result = allocate(request)
    greedy = greedy_allocation(request)
    assert_admissible(result, request)
    assert_admissible(greedy, request)
    assert greedy.solver_status is AllocationStatus.GREEDY and not greedy.fallback_used
    assert uninvested(result) <= uninvested(greedy) + 1e-9
    assert result.solver_status is AllocationStatus.OPTIMAL
    if "LP bound" in result.solver_message:  # the heuristic's shortcut: within the tolerance of the LP bound
        top = math.fsum(math.floor(line.upper_value / line.price * (1 + 1e-9)) * line.price for line in result.lines)
        assert result.invested_value >= min(budget, top) - request.gap_tolerance * budget - 1e-9 or fees


def test_greedy_matches_pypfopt_greedy_on_wide_bands(prices: pd.Series) -> None:
    """With bands too wide to bind, the first round is PyPortfolioOpt's (floor of each target)."""
    weights = seeded_weights(list(prices.index), seed=3)
    budget = 50_000.0
    request = AllocationRequest(targets=targets_of(prices, weights, deviation=10.0), extra_cash=budget)
    result = greedy_allocation(request)
    floors = {symbol: int(w * budget / prices[symbol]) for symbol, w in weights.items()}
    assert all(result.final_shares[symbol] >= floors[symbol] for symbol in weights)
    _, leftover = DiscreteAllocation(weights, prices, total_portfolio_value=budget).greedy_portfolio()
    assert result.unused_budget <= leftover + 1e-9  # it keeps buying while any lot fits


@pytest.mark.parametrize("budget", [100_000.0, 1_000_000.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_budget_use_no_worse_than_lp_portfolio(prices: pd.Series, budget: float, seed: int) -> None:
    """Fresh cash, no fees, ±10 % bands: unused budget at most lp_portfolio's.

    lp_portfolio has no bands and also minimises the deviations, so only the budget use is compared. At the
    default tolerance (1e-5 · B) the claim holds up to the tolerance; at 1e-7 · B (a cent at $100,000) it holds
    outright on these cases.
    """
    weights = seeded_weights(list(prices.index), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, lp_leftover = DiscreteAllocation(weights, prices, total_portfolio_value=budget).lp_portfolio(solver="HIGHS")
    request = AllocationRequest(targets=targets_of(prices, weights, deviation=0.10), extra_cash=budget)
    result = allocate(request)
    assert result.unused_budget <= max(float(lp_leftover), request.gap_tolerance * budget) + 1e-9
    assert result.budget_used_fraction >= 0.9999
    tight = allocate(dataclasses.replace(request, gap_tolerance=1e-7, time_limit_s=60.0))
    assert tight.solver_status is AllocationStatus.OPTIMAL
    assert tight.unused_budget <= float(lp_leftover) + 1e-9
    assert tight.unused_budget <= result.unused_budget + 1e-9


# --- bounds, lots, fees, sales ------------------------------------------------------------------------------------


def test_bounds_respected_and_reported(prices: pd.Series) -> None:
    weights = {"AAPL": 0.3, "BAC": 0.25, "GE": 0.2, "PFE": 0.15, "T": 0.1}
    request = AllocationRequest(targets=targets_of(prices, weights, deviation=0.02), extra_cash=40_000.0)
    result = allocate(request)
    assert result.relaxation is BandRelaxation.NONE and result.relaxation_detail == ""
    for line in result.lines:
        target_value = weights[line.symbol] * 40_000.0
        assert line.target_value == pytest.approx(target_value)
        assert line.lower_value == pytest.approx(target_value * 0.98)
        assert line.upper_value == pytest.approx(target_value * 1.02)
        assert abs(line.relative_deviation) <= 0.02 + 1e-12
        assert line.allowed_deviation == 0.02
    assert [line.symbol for line in result.lines] == sorted(weights)
    assert_admissible(result, request)


def test_lot_sizes_respected(prices: pd.Series) -> None:
    weights = {"AMD": 0.4, "GE": 0.35, "SHLD": 0.25}
    lots = {"AMD": 100, "GE": 25, "SHLD": 50}
    request = AllocationRequest(
        targets=targets_of(prices, weights, deviation=0.25, lots=lots),
        holdings=[Holding("GE", 130, float(prices["GE"]))],  # not a multiple of 25: traded onto one
        extra_cash=20_000.0,
        gap_tolerance=0.0,
    )
    result = allocate(request)
    for line in result.lines:
        assert line.final_shares % lots[line.symbol] == 0
        assert line.lot_size == lots[line.symbol]
    assert result.final_shares["GE"] != 130
    assert_admissible(result, request)
    truth = enumerate_best(request)
    assert truth is not None and result.invested_value >= truth.invested - 1e-6


def test_fees_accounted_exactly(prices: pd.Series) -> None:
    """Hand-checked fee arithmetic: commission once per changed symbol, per-share fee on every traded share."""
    commission, fee = 4.95, 0.01
    request = AllocationRequest(
        targets=targets_of(prices, {"BAC": 0.5, "T": 0.5}, deviation=0.5),
        holdings=[Holding("BAC", 100, float(prices["BAC"])), Holding("SHLD", 40, float(prices["SHLD"]))],
        extra_cash=1_000.0,
        commission_per_trade=commission,
        fee_per_share=fee,
        gap_tolerance=0.0,
    )
    result = allocate(request)
    budget = 100 * 29.9 + 40 * 3.3 + 1_000.0
    assert result.budget == pytest.approx(budget)
    (sold,) = result.sold_in_full
    assert (sold.symbol, sold.shares, sold.price) == ("SHLD", 40, 3.3)
    assert sold.proceeds == pytest.approx(132.0)
    assert sold.trade_cost == pytest.approx(commission + 40 * fee)
    expected_fees = sold.trade_cost
    for line in result.lines:
        delta = line.final_shares - line.current_shares
        expected = (commission if delta else 0.0) + fee * abs(delta)
        assert line.trade_cost == pytest.approx(expected, abs=1e-12)
        expected_fees += expected
    assert result.fees_total == pytest.approx(expected_fees, abs=1e-12)
    assert result.invested_value + result.fees_total + result.unused_budget == pytest.approx(budget, abs=1e-9)
    assert result.budget_used == pytest.approx(result.invested_value + result.fees_total, abs=1e-9)
    truth = enumerate_best(request)
    assert truth is not None
    assert result.invested_value >= truth.invested - 1e-6
    assert_admissible(result, request)


def test_fees_keep_positions_that_need_no_trade(prices: pd.Series) -> None:
    """A held position already in its band is left alone when trading it would only add fees."""
    request = AllocationRequest(
        targets=targets_of(prices, {"GOOG": 0.5, "AMZN": 0.5}, deviation=0.3),
        holdings=[Holding("GOOG", 3, float(prices["GOOG"])), Holding("AMZN", 2, float(prices["AMZN"]))],
        commission_per_trade=25.0,
        gap_tolerance=0.0,
    )
    result = allocate(request)
    assert result.final_shares == {"AMZN": 2, "GOOG": 3}
    assert result.fees_total == 0.0 and result.unused_budget == pytest.approx(0.0, abs=1e-9)


def test_holdings_not_in_target_sold_in_full(prices: pd.Series) -> None:
    holdings = [
        Holding("XOM", 50, float(prices["XOM"])),
        Holding("JPM", 20, float(prices["JPM"])),
        Holding("WMT", 0, float(prices["WMT"])),  # zero shares: ignored
        Holding("PFE", 10, float(prices["PFE"])),
    ]
    request = AllocationRequest(
        targets=targets_of(prices, {"PFE": 0.6, "T": 0.4}, deviation=0.2),
        holdings=holdings,
    )
    result = allocate(request)
    assert result.sold_in_full_symbols == ("JPM", "XOM")
    assert {s.symbol: s.shares for s in result.sold_in_full} == {"JPM": 20, "XOM": 50}
    assert result.budget == pytest.approx(50 * prices["XOM"] + 20 * prices["JPM"] + 10 * prices["PFE"])
    assert {line.symbol for line in result.lines} == {"PFE", "T"}
    assert_admissible(result, request)


def test_greedy_bulk_pass_after_step_cap(prices: pd.Series, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its step cap the greedy spends the rest in one pass: still admissible, and no further lot fits."""
    monkeypatch.setattr(allocation_module, "MAX_GREEDY_STEPS", -1_000)
    weights = seeded_weights(list(prices.index), seed=4)
    request = AllocationRequest(targets=targets_of(prices, weights, deviation=0.5), extra_cash=250_000.0)
    result = greedy_allocation(request)
    assert_admissible(result, request)
    open_lines = [line for line in result.lines if line.final_value + line.price <= line.upper_value * (1 + 1e-9)]
    assert all(result.unused_budget < line.price for line in open_lines)


def test_penny_stock_at_a_large_budget() -> None:
    """Millions of one-cent lots: the greedy buys up to each target in one step instead of lot by lot."""
    request = AllocationRequest(
        targets=[
            AllocationTarget(symbol="PENNY", target_weight=0.5, price=0.01),
            AllocationTarget(symbol="BIG", target_weight=0.5, price=4_999.99),
        ],
        extra_cash=10_000_000.0,
    )
    result = allocate(request)
    assert result.unused_budget < 0.01 + 1e-9
    assert result.solve_time_ms < 5_000.0
    assert_admissible(result, request)


# --- relaxation -----------------------------------------------------------------------------------------------


def test_empty_band_widened_for_that_name_only(prices: pd.Series) -> None:
    """A 1 % target of AMZN ($1,427) at $20,000 is $200 ± 10 %: no whole share fits; only its band widens."""
    weights = {"AMZN": 0.01, "BAC": 0.49, "T": 0.5}
    request = AllocationRequest(targets=targets_of(prices, weights), extra_cash=20_000.0)
    result = allocate(request)
    assert result.relaxation is BandRelaxation.WIDENED_BANDS
    assert "AMZN" in result.relaxation_detail and "BAC" not in result.relaxation_detail
    lines = {line.symbol: line for line in result.lines}
    assert lines["AMZN"].allowed_deviation >= 1.0 and lines["AMZN"].final_shares == 0
    assert lines["BAC"].allowed_deviation == 0.10 and lines["T"].allowed_deviation == 0.10
    assert_admissible(result, request)
    with pytest.raises(InfeasibleError) as info:
        allocate(dataclasses.replace(request, allow_relaxation=False))
    (violation,) = info.value.precondition_violations
    assert (violation.type, violation.subject) == ("EMPTY_BAND", "targets[0]")


def test_budget_infeasible_bands_widened_for_every_name(prices: pd.Series) -> None:
    """Zero deviation and fees: the exact targets plus fees overspend, so every band is widened."""
    request = AllocationRequest(
        targets=targets_of(prices, {"BAC": 0.5, "T": 0.5}, deviation=0.0),
        extra_cash=2 * 29.9 * 705,  # each half is 705 BAC = 598 T: both bands [v, v] hold a whole share count
        fee_per_share=0.01,
    )
    with pytest.raises(InfeasibleError) as info:
        allocate(dataclasses.replace(request, allow_relaxation=False))
    assert [v.type for v in info.value.precondition_violations] == ["BUDGET"]
    result = allocate(request)
    assert result.relaxation is BandRelaxation.WIDENED_BANDS
    assert "every deviation doubled" in result.relaxation_detail
    assert all(line.allowed_deviation == pytest.approx(0.01) for line in result.lines)
    assert_admissible(result, request)


def test_full_bands_then_lot_sizes_dropped(prices: pd.Series) -> None:
    """A held position that cannot be sold affordably: the full band keeps it; an odd lot needs lots dropped."""
    holdings = [Holding("GOOG", 1, float(prices["GOOG"]))]
    common: dict[str, Any] = {"holdings": holdings, "commission_per_trade": 50.0}
    # GOOG's target is 0 (band [0, 0]), selling it costs $50 of a $1,020 budget, and buying T needs a trade too;
    # only keeping GOOG (full band) is affordable... as long as GOOG's lot allows 1 share.
    zero_target = [
        AllocationTarget(symbol="GOOG", target_weight=0.0, price=float(prices["GOOG"])),
        AllocationTarget(symbol="T", target_weight=1.0, price=float(prices["T"]), allowed_deviation=0.0),
    ]
    result = allocate(AllocationRequest(targets=zero_target, **common))
    assert result.relaxation is BandRelaxation.WIDENED_BANDS
    assert_admissible(result, AllocationRequest(targets=zero_target, **common))
    # Commission larger than the whole budget: no trade is affordable, and the T band cannot hold 0 until widened;
    # GOOG (target 0) keeps its band [0, 0] until the full band lets the held share stay.
    expensive = {"holdings": holdings, "commission_per_trade": 5_000.0}
    request = AllocationRequest(targets=zero_target, **expensive)
    result = allocate(request)
    assert result.relaxation is BandRelaxation.FULL_BANDS
    assert result.final_shares == {"GOOG": 1, "T": 0} and result.fees_total == 0.0
    assert_admissible(result, request)
    # Same with a lot size of 10 on GOOG: 1 share is not a multiple, so only dropping lot sizes makes it feasible.
    lots = [dataclasses.replace(zero_target[0], lot_size=10), zero_target[1]]
    request = AllocationRequest(targets=lots, **expensive)
    result = allocate(request)
    assert result.relaxation is BandRelaxation.LOT_SIZES_DROPPED
    assert result.final_shares == {"GOOG": 1, "T": 0}
    assert all(line.lot_size == 1 for line in result.lines)
    assert_admissible(result, request)


def test_forced_sale_fees_above_budget(prices: pd.Series) -> None:
    request = AllocationRequest(
        targets=targets_of(prices, {"T": 1.0}),
        holdings=[Holding("SHLD", 1, float(prices["SHLD"]))],
        commission_per_trade=10.0,
    )
    with pytest.raises(InfeasibleError) as info:
        allocate(request)
    assert [v.type for v in info.value.precondition_violations] == ["FEES_EXCEED_BUDGET"]


# --- fallback and time limit ------------------------------------------------------------------------------------


def hard_request(prices: pd.Series) -> AllocationRequest:
    """Twenty real symbols at $100,000, gap tolerance 1e-7 ($0.01): the heuristic leaves $0.27, HiGHS < $0.01."""
    weights = seeded_weights(list(prices.index), seed=11)
    return AllocationRequest(targets=targets_of(prices, weights), extra_cash=100_000.0, gap_tolerance=1e-7)


def test_greedy_fallback_on_solver_failure(prices: pd.Series, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_milp(*args: Any, **kwargs: Any) -> OptimizeResult:
        return OptimizeResult(x=None, status=4, message="simulated HiGHS failure", success=False)

    monkeypatch.setattr(allocation_module, "milp", failing_milp)
    request = hard_request(prices)
    result = allocate(request)
    assert result.fallback_used and result.solver_status is AllocationStatus.GREEDY and result.solver == "greedy"
    assert "simulated HiGHS failure" in result.solver_message
    assert uninvested(result) <= uninvested(greedy_allocation(request)) + 1e-9
    assert_admissible(result, request)


def test_greedy_fallback_on_time_limit_without_solution(prices: pd.Series, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def timed_out(*args: Any, **kwargs: Any) -> OptimizeResult:
        seen.update(kwargs["options"])
        return OptimizeResult(x=None, status=1, message="Time limit reached", success=False)

    monkeypatch.setattr(allocation_module, "milp", timed_out)
    result = allocate(dataclasses.replace(hard_request(prices), time_limit_s=30.0))
    assert 0.0 < seen["time_limit"] <= 30.0
    assert result.fallback_used and result.solver_status is AllocationStatus.GREEDY
    assert "time limit" in result.solver_message


def test_time_limit_incumbent_reported(prices: pd.Series, monkeypatch: pytest.MonkeyPatch) -> None:
    """A HiGHS incumbent at the time limit that beats the heuristic is returned as TIME_LIMIT."""
    request = hard_request(prices)
    exact = allocate(request)
    heuristic = greedy_allocation(request, improve=True)
    assert exact.invested_value > heuristic.invested_value  # the MILP improves on the heuristic here
    lots = np.array([exact.final_shares[line.symbol] for line in exact.lines], dtype=float)

    def incumbent(*args: Any, **kwargs: Any) -> OptimizeResult:
        return OptimizeResult(x=lots, status=1, message="Time limit reached", success=False)

    monkeypatch.setattr(allocation_module, "milp", incumbent)
    result = allocate(request)
    assert result.solver_status is AllocationStatus.TIME_LIMIT and result.solver == "HiGHS"
    assert not result.fallback_used
    assert result.final_shares == exact.final_shares


def test_tiny_time_limit_falls_back_to_greedy(prices: pd.Series) -> None:
    result = allocate(dataclasses.replace(hard_request(prices), time_limit_s=1e-9))
    assert result.fallback_used and result.solver_status is AllocationStatus.GREEDY
    assert_admissible(result, hard_request(prices))


def test_no_time_left_raises(prices: pd.Series) -> None:
    with pytest.raises(DeadlineExceededError):
        allocate(dataclasses.replace(hard_request(prices), time_limit_s=0.0))


def test_real_milp_on_hard_request(prices: pd.Series) -> None:
    """Without monkeypatching, HiGHS proves the answer within $0.01 of the optimum and beats the heuristic."""
    request = hard_request(prices)
    result = allocate(request)
    assert result.solver == "HiGHS" and result.solver_status is AllocationStatus.OPTIMAL
    assert not result.fallback_used
    assert uninvested(result) <= uninvested(greedy_allocation(request, improve=True)) + 1e-9
    assert_admissible(result, request)


# --- strategies ---------------------------------------------------------------------------------------------------


def test_maximize_shares_and_momentum(prices: pd.Series) -> None:
    weights = seeded_weights(list(prices.index), seed=5)
    scores = dict(zip(weights, np.random.default_rng(6).normal(size=len(weights)).tolist(), strict=True))
    targets = targets_of(prices, weights, deviation=0.3, scores=scores)
    base = AllocationRequest(targets=targets, extra_cash=50_000.0)
    leftover = allocate(base)
    shares = allocate(dataclasses.replace(base, strategy=AllocationStrategy.MAXIMIZE_SHARES))
    momentum = allocate(dataclasses.replace(base, strategy=AllocationStrategy.MOMENTUM_WEIGHTED))
    for result in (leftover, shares, momentum):
        assert_admissible(result, base)

    def total_shares(result: AllocationResult) -> int:
        return sum(result.final_shares.values())

    def tilt(result: AllocationResult) -> float:
        return sum(scores[line.symbol] * line.final_value for line in result.lines)

    assert total_shares(shares) > total_shares(leftover)
    assert tilt(momentum) > tilt(leftover)
    # momentum still spends the budget: less than one share of the cheapest symbol left over
    assert momentum.unused_budget < float(prices.min()) * 2


def test_momentum_requires_scores(prices: pd.Series) -> None:
    request = AllocationRequest(
        targets=targets_of(prices, {"T": 0.5, "BAC": 0.5}), strategy=AllocationStrategy.MOMENTUM_WEIGHTED
    )
    with pytest.raises(InvalidInputError) as info:
        allocate(dataclasses.replace(request, extra_cash=1000.0))
    assert info.value.field_violations[0].field == "targets[0].momentum_score"


def test_order_independent(prices: pd.Series) -> None:
    weights = seeded_weights(list(prices.index), seed=8)
    targets = targets_of(prices, weights)
    request = AllocationRequest(targets=targets, extra_cash=75_000.0)
    shuffled = dataclasses.replace(request, targets=list(reversed(targets)))
    assert allocate(request).final_shares == allocate(shuffled).final_shares
    assert allocation_cache_key(request) == allocation_cache_key(shuffled)


# --- cache key ------------------------------------------------------------------------------------------------


def test_cache_key(prices: pd.Series) -> None:
    targets = targets_of(prices, {"T": 0.25, "BAC": 0.75})
    request = AllocationRequest(targets=targets, holdings=[Holding("XOM", 3, 77.43)], extra_cash=1000.0)
    key = allocation_cache_key(request)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    same = [
        dataclasses.replace(request, time_limit_s=5.0),
        dataclasses.replace(request, holdings=[Holding("WMT", 0, 85.91), Holding("XOM", 3, 77.43)]),
        dataclasses.replace(request, targets=[dataclasses.replace(t, momentum_score=1.0) for t in targets]),
        dataclasses.replace(request, extra_cash=1000),
    ]
    for other in same:
        assert allocation_cache_key(other) == key
    different = [
        dataclasses.replace(request, extra_cash=1000.01),
        dataclasses.replace(request, strategy=AllocationStrategy.MAXIMIZE_SHARES),
        dataclasses.replace(request, fee_per_share=0.001),
        dataclasses.replace(request, targets=[dataclasses.replace(targets[0], lot_size=2), targets[1]]),
        dataclasses.replace(request, targets=[dataclasses.replace(targets[0], allowed_deviation=0.2), targets[1]]),
        dataclasses.replace(request, holdings=[Holding("XOM", 4, 77.43)]),
        dataclasses.replace(request, gap_tolerance=0.0),
    ]
    assert len({allocation_cache_key(other) for other in different} | {key}) == len(different) + 1


# --- validation -------------------------------------------------------------------------------------------------


def valid_request() -> AllocationRequest:
    return AllocationRequest(
        targets=[
            AllocationTarget(symbol="A", target_weight=0.5, price=10.0),
            AllocationTarget(symbol="B", target_weight=0.3, price=20.0),
            AllocationTarget(symbol="C", target_weight=0.2, price=30.0),
        ],
        holdings=[Holding("A", 5, 10.0), Holding("Z", 2, 50.0)],
        extra_cash=1_000.0,
    )


def with_target(index: int, **changes: Any) -> AllocationRequest:
    request = valid_request()
    targets = list(request.targets)
    targets[index] = dataclasses.replace(targets[index], **changes)
    return dataclasses.replace(request, targets=targets)


def with_holding(index: int, **changes: Any) -> AllocationRequest:
    request = valid_request()
    holdings = list(request.holdings)
    holdings[index] = dataclasses.replace(holdings[index], **changes)
    return dataclasses.replace(request, holdings=holdings)


INVALID = [
    ("targets", dataclasses.replace(valid_request(), targets=[])),
    ("targets", with_target(0, target_weight=0.6)),
    ("targets[1].target_weight", with_target(1, target_weight=-0.1)),
    ("targets[1].target_weight", with_target(1, target_weight=math.nan)),
    ("targets[2].price", with_target(2, price=0.0)),
    ("targets[2].price", with_target(2, price=-3.0)),
    ("targets[2].price", with_target(2, price=math.inf)),
    ("targets[0].allowed_deviation", with_target(0, allowed_deviation=-0.1)),
    ("targets[1].lot_size", with_target(1, lot_size=0)),
    ("targets[1].lot_size", with_target(1, lot_size=2.5)),
    ("targets[2].symbol", with_target(2, symbol="A")),
    ("targets[0].symbol", with_target(0, symbol="  ")),
    ("targets[0].momentum_score", with_target(0, momentum_score=math.nan)),
    ("holdings[0].shares", with_holding(0, shares=-1)),
    ("holdings[0].shares", with_holding(0, shares=1.5)),
    ("holdings[1].price", with_holding(1, price=0.0)),
    ("holdings[1].price", with_holding(1, price=math.nan)),
    ("holdings[0].price", with_holding(0, price=11.0)),  # differs from the target's price
    ("holdings[1].symbol", with_holding(1, symbol="A")),
    ("extra_cash", dataclasses.replace(valid_request(), extra_cash=-1.0)),
    ("extra_cash", dataclasses.replace(valid_request(), holdings=[], extra_cash=0.0)),  # empty budget
    ("commission_per_trade", dataclasses.replace(valid_request(), commission_per_trade=-1.0)),
    ("fee_per_share", dataclasses.replace(valid_request(), fee_per_share=math.inf)),
    ("gap_tolerance", dataclasses.replace(valid_request(), gap_tolerance=-1e-6)),
    ("time_limit_s", dataclasses.replace(valid_request(), time_limit_s=math.nan)),
    ("strategy", dataclasses.replace(valid_request(), strategy="MAXIMIZE_FUN")),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("field", "request_"), INVALID, ids=[f"{i}-{f}" for i, (f, _) in enumerate(INVALID)])
def test_validation_names_the_field(field: str, request_: AllocationRequest) -> None:
    for call in (allocate, allocation_cache_key, greedy_allocation):
        with pytest.raises(InvalidInputError) as info:
            call(request_)  # type: ignore[operator]
        (violation,) = info.value.field_violations
        assert violation.field == field
        assert status_code(info.value) is grpc.StatusCode.INVALID_ARGUMENT


def test_valid_request_passes() -> None:
    result = allocate(valid_request())
    assert result.sold_in_full_symbols == ("Z",)
    assert result.budget == pytest.approx(5 * 10.0 + 2 * 50.0 + 1_000.0)
    assert_admissible(result, valid_request())


def test_weights_within_tolerance_are_normalised() -> None:
    request = with_target(0, target_weight=0.5 + 5e-7)
    result = allocate(request)
    assert math.fsum(line.target_weight for line in result.lines) == pytest.approx(1.0, abs=1e-15)


def test_enumeration_helper_sanity() -> None:
    """The truth itself: a two-symbol case small enough to check by hand."""
    request = AllocationRequest(
        targets=[
            AllocationTarget(symbol="A", target_weight=0.5, price=30.0, allowed_deviation=1.0),
            AllocationTarget(symbol="B", target_weight=0.5, price=70.0, allowed_deviation=1.0),
        ],
        extra_cash=100.0,
        gap_tolerance=0.0,
    )
    truth = enumerate_best(request)
    assert truth is not None and truth.shares == {"A": 1, "B": 1} and truth.invested == 100.0
    assert allocate(request).final_shares == {"A": 1, "B": 1}
    candidates = [(a, b) for a, b in itertools.product(range(4), range(2)) if 30 * a + 70 * b <= 100]
    assert max(30 * a + 70 * b for a, b in candidates) == 100
