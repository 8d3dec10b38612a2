"""Fill accounting, the paper broker's price and reconciliation, against hand-worked numbers."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from command_side.execution import (
    Break,
    Fill,
    PaperImpact,
    apply_fill,
    expected_after,
    impact_fraction,
    liquidity,
    paper_fill_price,
    planned_lots,
    reconcile,
)
from command_side.trading_model import OpenOrder, Position, PositionLot
from services.errors import InvalidInputError, PreconditionError

T = datetime(2022, 12, 28, 15, 51, tzinfo=UTC)


def fill(side: str, shares: float, price: float, commission: float = 0.0, symbol: str = "KO") -> Fill:
    return Fill(fill_id=f"f-{side}-{shares}", order_id="o", symbol=symbol, side=side, shares=shares, price=price,
                commission=commission, filled_at=T)  # fmt: skip


HELD = Position(
    symbol="KO",
    shares=20.0,
    lots=(
        PositionLot(lot_id="b", shares=10.0, cost_basis=80.0, acquired=datetime(2021, 5, 1, tzinfo=UTC)),
        PositionLot(lot_id="a", shares=10.0, cost_basis=50.0, acquired=datetime(2020, 5, 1, tzinfo=UTC)),
    ),
)


def test_a_buy_adds_a_lot_at_the_price_plus_commission_per_share_and_spends_cash() -> None:
    effect = apply_fill([], 2000.0, fill("BUY", 10, 100.0, commission=1.0))
    (position,) = effect.positions
    assert (position.symbol, position.shares, effect.cash, effect.realised_gain) == ("KO", 10.0, 999.0, 0.0)
    assert position.lots == (PositionLot(lot_id="f-BUY-10", shares=10.0, cost_basis=100.1, acquired=T),)


def test_a_sell_takes_the_oldest_lots_first_and_realises_the_gain() -> None:
    effect = apply_fill([HELD, Position(symbol="PEP", shares=1.0)], 100.0, fill("SELL", 15, 100.0, commission=1.5))
    ko = next(p for p in effect.positions if p.symbol == "KO")
    # 10 shares of lot "a" (2020, basis 50) and 5 of lot "b" (2021, basis 80): basis 900, proceeds 1498.5.
    assert ko.shares == 5.0 and [(lot.lot_id, lot.shares) for lot in ko.lots] == [("b", 5.0)]
    assert effect.realised_gain == pytest.approx(598.5, abs=1e-12)
    assert effect.cash == pytest.approx(1598.5, abs=1e-12)
    assert [p.symbol for p in effect.positions] == ["KO", "PEP"]


def test_a_sell_relieves_its_orders_lots_first_then_the_oldest() -> None:
    """An order's lot plan ("b" 8, then "a" 4) across two fills of 6; past the plan, first in, first out."""
    plan = [("b", 8.0), ("a", 4.0)]
    assert planned_lots(plan, 0.0, 6.0) == [("b", 6.0)]
    assert planned_lots(plan, 6.0, 6.0) == [("b", 2.0), ("a", 4.0)]
    assert planned_lots(plan, 12.0, 3.0) == []
    first = apply_fill([HELD], 0.0, fill("SELL", 6, 100.0), planned_lots(plan, 0.0, 6.0))
    assert first.realised_gain == pytest.approx(6 * (100 - 80), abs=1e-12)  # all from "b" (basis 80)
    second = apply_fill(first.positions, first.cash, fill("SELL", 7, 100.0), planned_lots(plan, 6.0, 7.0))
    # 2 more of "b" and 4 of "a" as planned, then 1 first in, first out: "a" (2020) again.
    assert second.realised_gain == pytest.approx(2 * 20 + 5 * 50, abs=1e-12)
    (ko,) = second.positions
    assert [(lot.lot_id, lot.shares) for lot in ko.lots] == [("b", 2.0), ("a", 5.0)]
    # A planned lot no longer held gives nothing; the fill then comes first in, first out.
    gone = apply_fill([HELD], 0.0, fill("SELL", 5, 100.0), [("sold-elsewhere", 5.0)])
    assert gone.realised_gain == pytest.approx(5 * 50, abs=1e-12)


def test_a_planned_pending_lot_is_relieved_from_the_fills_of_its_buy() -> None:
    """A plan made while a BUY was open names its lot ``order:X``; X's fills became lots "x1" (3) and "x2" (10).

    Selling 6 with the plan ("order:X", 5): 3 from x1, 2 from x2 (the plan's 5), then 1 first in, first out ("a").
    """
    bought = Position(
        symbol="KO",
        shares=33.0,
        lots=(
            *HELD.lots,
            PositionLot(lot_id="x1", shares=3.0, cost_basis=120.0, acquired=T),
            PositionLot(lot_id="x2", shares=10.0, cost_basis=110.0, acquired=T),
        ),
    )
    effect = apply_fill([bought], 0.0, fill("SELL", 6, 100.0), [("order:X", 5.0)], {"order:X": ["x1", "x2"]})
    assert effect.realised_gain == pytest.approx(3 * (100 - 120) + 2 * (100 - 110) + 1 * (100 - 50), abs=1e-12)
    (ko,) = effect.positions
    assert [(lot.lot_id, lot.shares) for lot in ko.lots] == [("b", 10.0), ("a", 9.0), ("x2", 8.0)]


def test_the_expected_position_counts_what_open_orders_still_trade() -> None:
    """A half-filled SELL of 8 KO naming lot "b", and a BUY of 5 PEP at $40, worked out by hand."""
    sell = OpenOrder(order_id="s", symbol="KO", side="SELL", remaining=4.0, filled=4.0, reference_price=100.0,
                     created_at=T, lots=(("b", 8.0),))  # fmt: skip
    buy = OpenOrder(order_id="p", symbol="PEP", side="BUY", remaining=5.0, filled=0.0, reference_price=40.0,
                    created_at=T)  # fmt: skip
    positions, cash = expected_after([HELD], 1000.0, [buy, sell])
    ko, pep = positions
    # KO: 4 more of lot "b" (the plan's shares 4-8); 20 - 4 = 16 left, "b" 6 and "a" 10.
    assert ko.shares == 16.0 and [(lot.lot_id, lot.shares) for lot in ko.lots] == [("b", 6.0), ("a", 10.0)]
    assert (pep.shares, pep.lots) == (5.0, (PositionLot(lot_id="order:p", shares=5.0, cost_basis=40.0, acquired=T),))
    assert cash == pytest.approx(1000.0 + 4 * 100.0 - 5 * 40.0, abs=1e-12)
    # A SELL of more than is held sells what is held; a BUY of a position held without lots adds no lot.
    more = OpenOrder(order_id="m", symbol="KO", side="SELL", remaining=50.0, filled=0.0, reference_price=10.0,
                     created_at=T)  # fmt: skip
    bare = OpenOrder(order_id="q", symbol="PEP", side="BUY", remaining=2.0, filled=0.0, reference_price=10.0,
                     created_at=T)  # fmt: skip
    positions, cash = expected_after([HELD, Position(symbol="PEP", shares=1.0)], 0.0, [more, bare])
    assert [(p.symbol, p.shares, p.lots) for p in positions] == [("PEP", 3.0, ())]
    assert cash == pytest.approx(20 * 10.0 - 2 * 10.0, abs=1e-12)


def test_selling_everything_removes_the_position() -> None:
    effect = apply_fill([HELD], 0.0, fill("SELL", 20, 60.0))
    assert effect.positions == () and effect.cash == 1200.0 and effect.realised_gain == pytest.approx(-100.0)


def test_no_margin_no_shorts_and_bad_numbers_are_refused() -> None:
    with pytest.raises(PreconditionError, match="no margin"):
        apply_fill([], 999.0, fill("BUY", 10, 100.0))
    with pytest.raises(PreconditionError, match="no shorts"):
        apply_fill([HELD], 0.0, fill("SELL", 21, 100.0))
    with pytest.raises(InvalidInputError, match="price"):
        apply_fill([HELD], 0.0, fill("SELL", 1, float("nan")))


def test_the_paper_price_moves_against_the_order_by_half_the_spread_and_the_impact() -> None:
    assert paper_fill_price("BUY", 100.0, spread_bps=10.0, impact=2e-4) == pytest.approx(100.07, abs=1e-12)
    assert paper_fill_price("SELL", 100.0, spread_bps=10.0, impact=2e-4) == pytest.approx(99.93, abs=1e-12)


def test_the_impact_models_by_hand() -> None:
    """Each model's impact against its formula.

    FIXED: bp / 1e4; square root: Y σ sqrt(Q / ADV) = 0.5 · 0.02 · sqrt(2500 / 1e6) = 5e-4; Almgren et al.
    (2005), one day: 0.142 σ (Q / ADV)^0.6 = 0.142 · 0.02 · 0.0025^0.6.
    """
    assert impact_fraction(PaperImpact.FIXED, 2500, 50.0, impact_bps=3.0) == pytest.approx(3e-4, abs=1e-15)
    square_root = impact_fraction(PaperImpact.SQUARE_ROOT, 2500, 50.0, coefficient=0.5, adv=1e6, daily_volatility=0.02)
    assert square_root == pytest.approx(5e-4, rel=1e-12)
    almgren = impact_fraction(PaperImpact.ALMGREN_2005, 2500, 50.0, adv=1e6, daily_volatility=0.02)
    assert almgren == pytest.approx(0.142 * 0.02 * 0.0025**0.6, rel=1e-12)
    with pytest.raises(InvalidInputError):
        impact_fraction(PaperImpact.SQUARE_ROOT, 2500, 50.0, daily_volatility=0.02)


def test_liquidity_of_stored_bars() -> None:
    """Returns 0.1, −0.1, 0.05 (σ with ddof 1 by hand); volumes of the bars after the first, positive ones only."""
    sigma, adv = liquidity([100.0, 110.0, 99.0, 103.95], [7.0, 1000.0, None, 3000.0])
    returns = [0.1, -0.1, 0.05]
    mean = sum(returns) / 3
    assert sigma == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in returns) / 2), rel=1e-12)
    assert adv == pytest.approx(2000.0)
    assert liquidity([1.0, 2.0, 3.0], [None, None, 0.0])[1] is None
    with pytest.raises(PreconditionError):
        liquidity([1.0, 2.0], [None, None])


def test_reconcile_reports_every_difference_by_symbol() -> None:
    reported = {"KO": 19.0, "MSFT": 3.0}
    assert reconcile([HELD, Position(symbol="PEP", shares=1.0)], reported) == (
        Break("KO", 20.0, 19.0),
        Break("MSFT", 0.0, 3.0),
        Break("PEP", 1.0, 0.0),
    )
    assert reconcile([HELD], {"KO": 20.0}) == ()
