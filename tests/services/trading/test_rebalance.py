"""Drift, whole-share trade lists and trading-cost estimates against independent computations and closed forms.

Truth: weights recomputed here with pandas from shares × the last prices of PyPortfolioOpt's ``stock_prices.csv``
(2018-04-11) plus cash; post-trade weights recomputed from the plan's post-trade shares × prices and a cash balance
rebuilt from the trade list (cash + sells − buys − costs); hand-derived drift and band examples; the closed forms of
the commission, half-spread, square-root-law and Almgren et al. (2005) impact costs evaluated by hand for one trade;
hand-derived tax-lot gains for the sells.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from services.errors import InvalidInputError
from services.trading import (
    CostModel,
    Holding,
    ImpactModel,
    LotMethod,
    MarketInputs,
    Purchase,
    RealizedLoss,
    RebalancePlan,
    Side,
    TaxLot,
    check_drift,
    estimate_trade_costs,
    generate_rebalance,
)

HORIZON = 252  # the initial portfolio was bought one year (252 trading days) before the last row
INITIAL_VALUE = 1_000_000.0
AS_OF = date(2018, 4, 11)


# --- fixtures and helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def last_prices(stock_prices: pd.DataFrame) -> pd.Series:
    """Prices of the 20 stocks on the last row (2018-04-11)."""
    return stock_prices.iloc[-1]


@pytest.fixture(scope="module")
def drifted_shares(stock_prices: pd.DataFrame) -> pd.Series:
    """Whole shares of an equal-weight $1M portfolio bought 252 days before the last row, then held."""
    start = stock_prices.iloc[-(HORIZON + 1)]
    return (INITIAL_VALUE / len(start) / start).apply(math.floor).astype(float)


@pytest.fixture(scope="module")
def drifted_cash(stock_prices: pd.DataFrame, drifted_shares: pd.Series) -> float:
    start = stock_prices.iloc[-(HORIZON + 1)]
    return float(INITIAL_VALUE - (drifted_shares * start).sum())


@pytest.fixture(scope="module")
def market(last_prices: pd.Series, stock_prices: pd.DataFrame) -> MarketInputs:
    """Daily volatility of the last year's returns; ADV and spreads set by hand (the data set has no volumes)."""
    returns = stock_prices.iloc[-(HORIZON + 1) :].pct_change().iloc[1:]
    n = len(last_prices)
    return MarketInputs(
        adv=np.full(n, 2_000_000.0),
        daily_volatility=returns.std().to_numpy(),
        spread_bps=np.full(n, 4.0),
    )


def _holdings(shares: pd.Series, prices: pd.Series) -> list[Holding]:
    return [Holding(str(symbol), float(shares[symbol]), float(prices[symbol])) for symbol in prices.index]


def _rebuilt_cash(plan: RebalancePlan, cash: float) -> float:
    """Cash after the trades, rebuilt from the trade list."""
    flows = sum(t.value if t.side is Side.SELL else -t.value for t in plan.trades)
    return cash + flows - sum(t.total_cost for t in plan.trades)


def _post_weights(plan: RebalancePlan, prices: np.ndarray, cash_after: float) -> np.ndarray:
    values = plan.post_trade_shares * prices
    return np.asarray(values / (values.sum() + cash_after))


def _field(exc: pytest.ExceptionInfo[InvalidInputError]) -> str:
    return exc.value.field_violations[0].field


# --- drift --------------------------------------------------------------------------------------------------------


def test_drift_on_real_prices_matches_pandas(
    last_prices: pd.Series, drifted_shares: pd.Series, drifted_cash: float
) -> None:
    holdings = _holdings(drifted_shares, last_prices)
    targets = np.full(20, 0.049)  # 2 % target cash
    report = check_drift(holdings, drifted_cash, targets, absolute_bands=0.01)

    values = drifted_shares * last_prices
    total = values.sum() + drifted_cash
    weights = values / total
    drift = weights.to_numpy() - 0.049
    cash_drift = drifted_cash / total - 0.02
    assert report.symbols == tuple(last_prices.index)
    assert report.total_value == pytest.approx(total, rel=1e-14)
    np.testing.assert_allclose(report.current_weights, weights.to_numpy(), rtol=1e-13)
    np.testing.assert_allclose(report.drift, drift, atol=1e-15)
    assert report.cash_weight == pytest.approx(drifted_cash / total)
    assert report.target_cash_weight == pytest.approx(0.02)
    l1 = np.abs(drift).sum() + abs(cash_drift)
    assert report.portfolio_drift == pytest.approx(l1, rel=1e-12)
    assert report.one_way_drift == pytest.approx(l1 / 2)
    # One-way drift is the weight to move: the overweights (cash included) sum to it, as do the underweights.
    signed = np.append(drift, cash_drift)
    assert signed[signed > 0].sum() == pytest.approx(l1 / 2, rel=1e-10)
    assert report.exceeds_threshold == (l1 > 0.05)
    assert report.exceeds_threshold  # a year of buy-and-hold drift is well beyond 5 % two-way
    expected_breaches = np.abs(drift) > 0.01
    np.testing.assert_array_equal(report.breaches, expected_breaches)
    assert report.breached_symbols == tuple(last_prices.index[expected_breaches])
    assert 0 < expected_breaches.sum() < 20


def test_drift_bands_by_hand() -> None:
    # V = 300 + 500 + 100 + cash 100 = 1000: w = (0.3, 0.5, 0.1), cash 0.1. Targets (0.25, 0.5, 0.2), cash 0.05.
    # Drift (+0.05, 0, −0.1), cash +0.05; two-way L1 = 0.2, one-way 0.1.
    # A: |0.05| ≤ abs 0.06 but > rel 0.1 × 0.25 = 0.025 → breach (relative).
    # B: no drift → no breach. C: abs not set; |−0.1| ≤ rel 0.6 × 0.2 = 0.12 → no breach.
    holdings = [Holding("A", 30.0, 10.0), Holding("B", 50.0, 10.0), Holding("C", 20.0, 5.0)]
    report = check_drift(
        holdings,
        100.0,
        [0.25, 0.5, 0.2],
        absolute_bands=[0.06, 0.01, math.inf],
        relative_bands=[0.1, math.inf, 0.6],
        threshold=0.15,
    )
    np.testing.assert_allclose(report.current_weights, [0.3, 0.5, 0.1])
    np.testing.assert_allclose(report.drift, [0.05, 0.0, -0.1], atol=1e-15)
    assert report.cash_drift == pytest.approx(0.05)
    assert report.portfolio_drift == pytest.approx(0.2)
    assert report.one_way_drift == pytest.approx(0.1)
    assert report.exceeds_threshold
    np.testing.assert_array_equal(report.absolute_breaches, [False, False, False])
    np.testing.assert_array_equal(report.relative_breaches, [True, False, False])
    assert report.breached_symbols == ("A",)
    assert not check_drift(holdings, 100.0, [0.25, 0.5, 0.2], threshold=0.2).exceeds_threshold  # 0.2 is not > 0.2
    # Without any band, every non-zero drift breaches.
    np.testing.assert_array_equal(check_drift(holdings, 100.0, [0.25, 0.5, 0.2]).breaches, [True, False, True])


# --- trade lists ----------------------------------------------------------------------------------------------


def test_trade_list_restores_targets_within_bands(
    last_prices: pd.Series, drifted_shares: pd.Series, drifted_cash: float, market: MarketInputs
) -> None:
    holdings = _holdings(drifted_shares, last_prices)
    prices = last_prices.to_numpy()
    targets = np.full(20, 0.049)
    absolute, relative = 0.01, 0.15  # breach when |d| > 0.01 or |d| > 0.15 × 0.049 = 0.00735
    costs = CostModel(commission_per_trade=1.0, commission_per_share=0.005)
    plan = generate_rebalance(
        holdings, drifted_cash, targets, market=market, costs=costs, absolute_bands=absolute, relative_bands=relative
    )
    before = plan.drift_before
    traded = {t.symbol for t in plan.trades}
    # Names inside their band are untouched; every breaching symbol trades (its drift is worth many shares here).
    assert traded == set(before.breached_symbols)
    assert all(t.shares == math.floor(t.shares) and t.shares > 0 for t in plan.trades)
    for t in plan.trades:
        i = list(last_prices.index).index(t.symbol)
        assert (t.side is Side.BUY) == (before.drift[i] < 0)
        if t.side is Side.SELL:
            assert t.shares <= drifted_shares.iloc[i]

    cash_after = _rebuilt_cash(plan, drifted_cash)
    assert cash_after >= 0.0
    assert plan.post_trade_cash == pytest.approx(cash_after, abs=1e-6)
    weights = _post_weights(plan, prices, cash_after)
    np.testing.assert_allclose(plan.post_trade_weights, weights, rtol=1e-12)
    post_drift = np.abs(weights - targets)
    band = np.minimum(absolute, relative * targets)
    assert np.all(post_drift <= band), post_drift.max()
    # Traded symbols end within one share of their target (plus the costs' effect on V).
    for t in plan.trades:
        i = list(last_prices.index).index(t.symbol)
        assert post_drift[i] <= prices[i] / before.total_value + 1e-4
    assert not plan.drift_after.breaches.any()
    assert plan.drift_after.portfolio_drift < before.portfolio_drift / 2
    assert plan.cash_scale == 1.0 and plan.turnover_scale == 1.0
    assert plan.total_cost == pytest.approx(sum(t.total_cost for t in plan.trades))
    buys = sum(t.value for t in plan.trades if t.side is Side.BUY)
    sells = sum(t.value for t in plan.trades if t.side is Side.SELL)
    assert plan.turnover == pytest.approx(max(buys, sells) / before.total_value)


def test_minimum_trade_size_drops_small_trades(
    last_prices: pd.Series, drifted_shares: pd.Series, drifted_cash: float
) -> None:
    holdings = _holdings(drifted_shares, last_prices)
    targets = np.full(20, 0.049)
    free = generate_rebalance(holdings, drifted_cash, targets)
    values = sorted(t.value for t in free.trades)
    minimum = values[len(values) // 2]  # half the trades fall below it
    plan = generate_rebalance(holdings, drifted_cash, targets, min_trade_value=minimum)
    kept = {t.symbol: t for t in plan.trades}
    assert all(t.value >= minimum for t in plan.trades)
    for t in free.trades:
        if t.value >= minimum:
            assert kept[t.symbol].shares == t.shares
        else:
            assert t.symbol not in kept and t.symbol in plan.dropped_below_minimum
    i_dropped = [list(last_prices.index).index(n) for n in plan.dropped_below_minimum]
    np.testing.assert_array_equal(plan.post_trade_shares[i_dropped], drifted_shares.to_numpy()[i_dropped])


def test_turnover_cap_scales_trades_proportionally(
    last_prices: pd.Series, drifted_shares: pd.Series, drifted_cash: float
) -> None:
    holdings = _holdings(drifted_shares, last_prices)
    targets = np.full(20, 0.049)
    free = generate_rebalance(holdings, drifted_cash, targets)
    cap = free.desired_turnover / 3
    plan = generate_rebalance(holdings, drifted_cash, targets, max_turnover=cap)
    assert plan.desired_turnover == pytest.approx(free.desired_turnover)
    assert plan.turnover_scale == pytest.approx(1 / 3)
    buys = sum(t.value for t in plan.trades if t.side is Side.BUY)
    sells = sum(t.value for t in plan.trades if t.side is Side.SELL)
    assert max(buys, sells) / plan.drift_before.total_value <= cap + 1e-15
    assert plan.turnover <= cap + 1e-15
    # Each symbol trades a third of its desired shares, rounded down to whole shares.
    desired_shares = -plan.drift_before.drift * plan.drift_before.total_value / last_prices.to_numpy()
    capped = {t.symbol: t.shares for t in plan.trades}
    for i, symbol in enumerate(last_prices.index):
        expected = math.floor(abs(desired_shares[i]) / 3 + 1e-9)
        assert capped.get(symbol, 0.0) == expected


def test_cash_never_goes_negative_when_costs_exceed_the_cash_buffer(
    last_prices: pd.Series, drifted_shares: pd.Series, drifted_cash: float, market: MarketInputs
) -> None:
    holdings = _holdings(drifted_shares, last_prices)
    targets = np.full(20, 0.05)  # fully invested: no cash left for the costs
    costs = CostModel(commission_per_trade=25.0, commission_per_share=0.01, square_root_coefficient=2.0)
    plan = generate_rebalance(holdings, drifted_cash, targets, market=market, costs=costs)
    assert plan.cash_scale < 1.0
    cash_after = _rebuilt_cash(plan, drifted_cash)
    assert cash_after >= -1e-9 and plan.post_trade_cash >= 0.0
    assert plan.post_trade_cash == pytest.approx(cash_after, abs=1e-6)
    # Sells are untouched by the cash check (every overweight symbol sells its whole-share excess); buys shrink.
    before = plan.drift_before
    excess = before.drift * before.total_value / last_prices.to_numpy()
    sells = {symbol: math.floor(excess[i] + 1e-9) for i, symbol in enumerate(last_prices.index) if excess[i] >= 1}
    assert {t.symbol: t.shares for t in plan.trades if t.side is Side.SELL} == sells
    for t in plan.trades:
        if t.side is Side.BUY:
            i = list(last_prices.index).index(t.symbol)
            assert t.shares == math.floor(-excess[i] * plan.cash_scale + 1e-9)


def test_cash_check_scales_buys_of_a_cash_poor_portfolio() -> None:
    # Nothing to sell, $10,000 of cash and two buys of $5,000 each with a $50 commission apiece: the buys plus
    # $100 of commission exceed the cash, so both shrink (whole shares) until they fit.
    holdings = [Holding("A", 0.0, 10.0), Holding("B", 0.0, 20.0)]
    plan = generate_rebalance(holdings, 10_000.0, [0.5, 0.5], costs=CostModel(commission_per_trade=50.0))
    assert 0.98 < plan.cash_scale < 1.0
    spent = sum(t.value + t.total_cost for t in plan.trades)
    assert spent <= 10_000.0
    assert plan.post_trade_cash == pytest.approx(10_000.0 - spent)
    assert plan.post_trade_cash >= 0.0
    assert [t.shares for t in plan.trades] == [
        math.floor(500 * plan.cash_scale + 1e-9),
        math.floor(250 * plan.cash_scale + 1e-9),
    ]


def test_sells_never_exceed_the_holding_unless_shorting_is_allowed() -> None:
    holdings = [Holding("A", 10.5, 10.0), Holding("B", 0.0, 10.0)]
    plan = generate_rebalance(holdings, 0.0, [0.0, 1.0])
    (sell,) = (t for t in plan.trades if t.side is Side.SELL)
    assert sell.shares == 10.0  # whole shares: the half share stays
    assert plan.post_trade_shares[0] == pytest.approx(0.5)
    with pytest.raises(InvalidInputError) as exc:
        generate_rebalance(holdings, 0.0, [-0.5, 1.0])
    assert _field(exc) == "target_weights[0]"
    # With shorting: V = 105, target −0.5 → −$52.5 = −5.25 shares → sell 10.5 + 5.25 = 15.75 → 15 whole shares.
    short = generate_rebalance(holdings, 0.0, [-0.5, 1.0], allow_short=True)
    assert short.trades[0].side is Side.SELL and short.trades[0].shares == 15.0
    assert short.post_trade_shares[0] == pytest.approx(-4.5)
    assert short.post_trade_cash >= 0.0


# --- costs ----------------------------------------------------------------------------------------------------


# One buy of Q = 10,000 shares at p = $50 (value $500,000), ADV 1,000,000 shares/day (Q/ADV = 0.01), σ = 2 %/day,
# spread 10 bps, commission $5 + $0.005/share:
#   commission = 5 + 0.005 × 10,000 = 55
#   half-spread = 10/2 × 1e-4 × 500,000 = 250
#   square root (Y = 1): J = 0.02 × sqrt(0.01) = 0.002 → 0.002 × 500,000 = 1000
#   Almgren et al. 2005 (η = 0.142, β = 3/5, T = 1): J = 0.142 × 0.02 × 0.01^0.6 = 0.00284 × 10^−1.2
#     = 1.7919e-4 → 89.596; with Θ = 1e8 the permanent half γσ(Q/ADV)(Θ/ADV)^{1/4}/2
#     = 0.314 × 0.02 × 0.01 × 100^0.25 / 2 = 9.9296e-5 → 49.648
Q, P, ADV, SIGMA, SPREAD = 10_000.0, 50.0, 1_000_000.0, 0.02, 10.0
COMMISSION = CostModel(commission_per_trade=5.0, commission_per_share=0.005)
ALMGREN_TEMPORARY = 0.142 * 0.02 * 10**-1.2 * 500_000
ALMGREN_PERMANENT_HALF = 0.314 * 0.02 * 0.01 * 10**0.5 / 2 * 500_000


def test_square_root_cost_closed_form() -> None:
    costs = estimate_trade_costs(Q, P, adv=ADV, daily_volatility=SIGMA, spread_bps=SPREAD, costs=COMMISSION)
    assert costs.commission == pytest.approx(55.0)
    assert costs.spread_cost == pytest.approx(250.0)
    assert costs.impact_cost == pytest.approx(1000.0)
    assert costs.total == pytest.approx(1305.0)
    # Total impact cost ∝ Q^{3/2}: doubling the order multiplies it by 2^{1.5}.
    doubled = estimate_trade_costs(2 * Q, P, adv=ADV, daily_volatility=SIGMA)
    assert doubled.impact_cost == pytest.approx(1000.0 * 2**1.5)
    half_y = estimate_trade_costs(-Q, P, adv=ADV, daily_volatility=SIGMA, costs=CostModel(square_root_coefficient=0.5))
    assert half_y.impact_cost == pytest.approx(500.0)  # sells cost the same; Y scales linearly


def test_almgren_cost_closed_form() -> None:
    model = CostModel(impact_model=ImpactModel.ALMGREN_2005)
    temporary = estimate_trade_costs(Q, P, adv=ADV, daily_volatility=SIGMA, costs=model)
    assert math.isclose(ALMGREN_TEMPORARY, 89.596, abs_tol=1e-3)
    assert temporary.impact_cost == pytest.approx(ALMGREN_TEMPORARY, rel=1e-12)
    both = estimate_trade_costs(Q, P, adv=ADV, daily_volatility=SIGMA, shares_outstanding=1e8, costs=model)
    assert math.isclose(ALMGREN_PERMANENT_HALF, 49.648, abs_tol=1e-3)
    assert both.impact_cost == pytest.approx(ALMGREN_TEMPORARY + ALMGREN_PERMANENT_HALF, rel=1e-12)
    # Temporary cost ∝ Q^{8/5}; over half a day the rate doubles, the per-share impact rises by 2^{3/5}.
    assert estimate_trade_costs(2 * Q, P, adv=ADV, daily_volatility=SIGMA, costs=model).impact_cost == pytest.approx(
        ALMGREN_TEMPORARY * 2**1.6
    )
    half_day = CostModel(impact_model=ImpactModel.ALMGREN_2005, execution_days=0.5)
    assert estimate_trade_costs(Q, P, adv=ADV, daily_volatility=SIGMA, costs=half_day).impact_cost == pytest.approx(
        ALMGREN_TEMPORARY * 2**0.6
    )
    none = estimate_trade_costs(Q, P, adv=ADV, daily_volatility=SIGMA, costs=CostModel(impact_model=ImpactModel.NONE))
    assert none.impact_cost == 0.0


def test_trade_list_costs_match_the_closed_forms() -> None:
    # V = $1,000,000 of cash, target 0.5 → buy $500,000 = 10,000 shares at $50.
    market = MarketInputs(adv=np.array([ADV]), daily_volatility=np.array([SIGMA]), spread_bps=np.array([SPREAD]))
    plan = generate_rebalance([Holding("X", 0.0, P)], 1_000_000.0, [0.5], market=market, costs=COMMISSION)
    (trade,) = plan.trades
    assert (trade.side, trade.shares, trade.value) == (Side.BUY, Q, 500_000.0)
    assert (trade.commission, trade.spread_cost, trade.impact_cost) == pytest.approx((55.0, 250.0, 1000.0))
    assert trade.total_cost == pytest.approx(1305.0)
    assert (plan.total_commission, plan.total_spread_cost, plan.total_impact_cost) == pytest.approx(
        (55.0, 250.0, 1000.0)
    )
    assert plan.post_trade_cash == pytest.approx(500_000.0 - 1305.0)
    # Post-trade: V = 500,000 + 498,695 = 998,695; w = 500,000 / 998,695.
    assert plan.post_trade_weights[0] == pytest.approx(500_000.0 / 998_695.0)
    assert plan.turnover == pytest.approx(0.5)
    almgren = generate_rebalance(
        [Holding("X", 0.0, P)],
        1_000_000.0,
        [0.5],
        market=market,
        costs=CostModel(impact_model=ImpactModel.ALMGREN_2005),
    )
    assert almgren.trades[0].impact_cost == pytest.approx(ALMGREN_TEMPORARY, rel=1e-12)


# --- tax lots and wash sales in the trade list ------------------------------------------------------------------


SALE = date(2024, 6, 3)
LOTS = (
    TaxLot("A", 100.0, 85.0, date(2021, 1, 4)),  # LT gain 15/sh
    TaxLot("B", 100.0, 90.0, date(2024, 1, 10)),  # ST gain 10/sh
    TaxLot("C", 100.0, 120.0, date(2023, 2, 1)),  # LT loss 20/sh
)


def test_sells_report_lots_and_gains() -> None:
    # 300 shares at $100, no cash: V = 30,000; target 0.5 → sell 150 shares.
    holdings = [Holding("XYZ", 300.0, 100.0, LOTS)]
    # FIFO (the default): A 100 (+1500 LT), C 50 (−1000 LT) → LT +500, tax 100.
    fifo = generate_rebalance(holdings, 0.0, [0.5], as_of=SALE)
    (sell,) = fifo.trades
    assert sell.side is Side.SELL and sell.shares == 150.0 and sell.lots is not None
    assert [(lot.lot_id, lot.shares) for lot in sell.lots.lots] == [("A", 100.0), ("C", 50.0)]
    assert (fifo.long_term_gain, fifo.short_term_gain, fifo.estimated_tax) == pytest.approx((500.0, 0.0, 100.0))
    # Tax-minimizing: C 100 (−2000 LT), A 50 (+750 LT) → LT −1250, tax −250.
    tax_min = generate_rebalance(holdings, 0.0, [0.5], as_of=SALE, lot_method=LotMethod.TAX_MINIMIZING)
    assert tax_min.trades[0].realized_gain == pytest.approx(-1250.0)
    assert tax_min.estimated_tax == pytest.approx(-250.0)
    # The losing lot C is a harvesting candidate: 100 × (120 − 100) = 2000.
    assert [(c.lot_id, c.unrealized_loss) for c in tax_min.harvest_candidates] == [("C", 2000.0)]
    with pytest.raises(InvalidInputError) as exc:
        generate_rebalance(holdings, 0.0, [0.5])
    assert _field(exc) == "as_of"


def test_wash_sale_flags_in_the_trade_list() -> None:
    holdings = [Holding("BUYME", 0.0, 10.0), Holding("OTHER", 100.0, 10.0)]
    loss_30 = [RealizedLoss("BUYME", SALE - timedelta(days=30), 400.0)]
    plan = generate_rebalance(holdings, 1000.0, [0.5, 0.5], as_of=SALE, recent_realized_losses=loss_30)
    buy = next(t for t in plan.trades if t.symbol == "BUYME")
    assert buy.side is Side.BUY and buy.wash_sale
    assert [(f.symbol, f.loss, f.days_apart) for f in plan.wash_sale_flags] == [("BUYME", 400.0, 30)]
    loss_31 = [RealizedLoss("BUYME", SALE - timedelta(days=31), 400.0)]
    clean = generate_rebalance(holdings, 1000.0, [0.5, 0.5], as_of=SALE, recent_realized_losses=loss_31)
    assert not any(t.wash_sale for t in clean.trades) and clean.wash_sale_flags == ()

    # A loss sale of a symbol with another lot bought 10 days ago risks a wash sale; so does one with a recent
    # purchase recorded elsewhere; a gain sale does not.
    lots = (TaxLot("OLD", 100.0, 120.0, date(2023, 1, 3)), TaxLot("NEW", 10.0, 95.0, SALE - timedelta(days=10)))
    loser = [Holding("LOSER", 110.0, 100.0, lots)]
    sale = generate_rebalance(loser, 0.0, [10 * 100.0 / 11_000.0], as_of=SALE)  # keep 10 shares: sell 100
    (sell,) = sale.trades
    assert sell.shares == 100.0 and sell.lots is not None
    assert [lot.lot_id for lot in sell.lots.lots] == ["OLD"] and sell.realized_gain == pytest.approx(-2000.0)
    assert sell.wash_sale
    old_only = [Holding("LOSER", 100.0, 100.0, lots[:1])]
    assert not generate_rebalance(old_only, 0.0, [0.5], as_of=SALE).trades[0].wash_sale
    recent = [Purchase("LOSER", SALE - timedelta(days=5), 1.0)]
    assert generate_rebalance(old_only, 0.0, [0.5], as_of=SALE, recent_purchases=recent).trades[0].wash_sale

    # Lot by lot: a sale with a net gain that includes a losing lot (A +1500, C −1000 under FIFO) is a loss sale
    # for the losing lot, so a purchase 9 days before flags it.
    mixed = [Holding("XYZ", 300.0, 100.0, LOTS)]
    bought = [Purchase("XYZ", SALE - timedelta(days=9), 5.0)]
    (net_gain_sale,) = generate_rebalance(mixed, 0.0, [0.5], as_of=SALE, recent_purchases=bought).trades
    assert net_gain_sale.realized_gain == pytest.approx(500.0) and net_gain_sale.wash_sale


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"target_weights": [0.6, 0.6]}, "target_weights"),
        ({"target_weights": [0.5]}, "target_weights"),
        ({"target_weights": [0.5, float("nan")]}, "target_weights[1]"),
        ({"cash": -1.0}, "cash"),
        ({"absolute_bands": [0.01, -0.01]}, "absolute_bands[1]"),
        ({"relative_bands": [0.1, 0.1, 0.1]}, "relative_bands"),
        ({"min_trade_value": -5.0}, "min_trade_value"),
        ({"max_turnover": float("inf")}, "max_turnover"),
        ({"lot_method": "LIFO"}, "lot_method"),
        ({"costs": CostModel(commission_per_share=-0.01)}, "costs.commission_per_share"),
        ({"costs": CostModel(execution_days=0.0)}, "costs.execution_days"),
        (
            {"market": MarketInputs(adv=np.array([1e6, 0.0]), daily_volatility=np.zeros(2), spread_bps=np.zeros(2))},
            "market.adv[1]",
        ),
        (
            {"market": MarketInputs(adv=np.ones(2), daily_volatility=np.array([0.01, -0.01]), spread_bps=np.zeros(2))},
            "market.daily_volatility[1]",
        ),
    ],
)
def test_invalid_inputs_name_the_field(kwargs: dict[str, object], expected: str) -> None:
    arguments: dict[str, object] = {
        "holdings": [Holding("A", 10.0, 10.0), Holding("B", 10.0, 10.0)],
        "cash": 0.0,
        "target_weights": [0.5, 0.5],
        **kwargs,
    }
    with pytest.raises(InvalidInputError) as exc:
        generate_rebalance(**arguments)  # type: ignore[arg-type]
    assert _field(exc) == expected


def test_invalid_holdings_and_lots_name_the_field() -> None:
    with pytest.raises(InvalidInputError) as exc:
        check_drift([Holding("A", 10.0, 10.0), Holding("B", -1.0, 10.0)], 0.0, [0.5, 0.5])
    assert _field(exc) == "holdings[1].shares"
    with pytest.raises(InvalidInputError) as exc:
        check_drift([Holding("A", 10.0, -10.0)], 0.0, [1.0])
    assert _field(exc) == "holdings[0].price"
    bad_lots = [Holding("A", 10.0, 10.0), Holding("B", 250.0, 100.0, LOTS)]
    with pytest.raises(InvalidInputError) as exc:
        generate_rebalance(bad_lots, 0.0, [0.5, 0.5], as_of=SALE)
    assert _field(exc) == "holdings[1].lots"
    with pytest.raises(InvalidInputError) as exc:
        check_drift([Holding("A", 0.0, 10.0)], 0.0, [1.0])
    assert _field(exc) == "holdings"


def test_a_per_symbol_share_cap_cuts_only_the_trades_above_it() -> None:
    # $10,000 cash, targets 40 % A ($10) and 40 % B ($20): 400 A and 200 B wanted; A is capped at 150 shares.
    holdings = [Holding("A", 0.0, 10.0), Holding("B", 0.0, 20.0)]
    plan = generate_rebalance(holdings, 10_000.0, [0.4, 0.4], max_trade_shares=[150.0, np.inf])
    trades = {t.symbol: (t.shares, t.participation_capped) for t in plan.trades}
    assert trades == {"A": (150.0, True), "B": (200.0, False)}
    with pytest.raises(InvalidInputError, match=r"max_trade_shares\[1\]"):
        generate_rebalance(holdings, 10_000.0, [0.4, 0.4], max_trade_shares=[1.0, -1.0])
