"""Tax-lot selection, realised gains, harvesting candidates and wash sales against hand-derived numbers.

Truth: every expected gain and tax below is derived by hand in the comments (shares × (price − basis), times the
term's rate), the day counts of the holding periods are counted by hand, and the tax-minimizing order is checked
against a brute-force enumeration of every whole-share allocation of a small sell.
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import numpy as np
import pytest

from services.errors import InvalidInputError
from services.trading import (
    Holding,
    HoldingTerm,
    LotMethod,
    LotSale,
    Purchase,
    RealizedLoss,
    TaxLot,
    TaxSettings,
    harvest_candidates,
    holding_term,
    select_lots,
    validate_holdings,
    validate_tax_settings,
    wash_sale_flags,
)

SALE = date(2024, 6, 3)
PRICE = 100.0

# Three lots of one symbol, sold at $100 on 2024-06-03:
#   A: 100 sh @ $85,  acquired 2021-01-04 -> held 1246 days, LONG;  gain +15/sh, tax 15 × 0.20 = 3.00/sh
#   B: 100 sh @ $90,  acquired 2024-01-10 -> held 145 days (Jan 10 → Jun 3 of a leap year: 21+29+31+30+31+3),
#      SHORT; gain +10/sh, tax 10 × 0.37 = 3.70/sh
#   C: 100 sh @ $120, acquired 2023-02-01 -> held 488 days (365 to 2024-02-01, then 28+31+30+31+3 = 123),
#      LONG; gain −20/sh, tax −20 × 0.20 = −4.00/sh
LOTS = (
    TaxLot("A", 100.0, 85.0, date(2021, 1, 4)),
    TaxLot("B", 100.0, 90.0, date(2024, 1, 10)),
    TaxLot("C", 100.0, 120.0, date(2023, 2, 1)),
)


def _taken(selection_lots: tuple[LotSale, ...]) -> list[tuple[str, float]]:
    return [(lot.lot_id, lot.shares) for lot in selection_lots]


# --- lot methods on a 3-lot holding ---------------------------------------------------------------------------


def test_holding_days_and_terms_of_the_three_lots() -> None:
    selection = select_lots(LOTS, 300.0, PRICE, SALE, method=LotMethod.FIFO)
    days = {lot.lot_id: (lot.holding_days, lot.term) for lot in selection.lots}
    assert days == {
        "A": (1246, HoldingTerm.LONG_TERM),
        "B": (145, HoldingTerm.SHORT_TERM),
        "C": (488, HoldingTerm.LONG_TERM),
    }


def test_fifo_sells_the_oldest_lots_first() -> None:
    # Acquisition order A (2021), C (2023), B (2024). Sell 150: A 100 (+15 × 100 = +1500 LT),
    # C 50 (−20 × 50 = −1000 LT). LT = +500, ST = 0; tax = 500 × 0.20 = 100.
    selection = select_lots(LOTS, 150.0, PRICE, SALE, method=LotMethod.FIFO)
    assert _taken(selection.lots) == [("A", 100.0), ("C", 50.0)]
    assert selection.long_term_gain == pytest.approx(500.0)
    assert selection.short_term_gain == pytest.approx(0.0)
    assert selection.realized_gain == pytest.approx(500.0)
    assert selection.estimated_tax == pytest.approx(100.0)
    assert selection.cost_basis == pytest.approx(100 * 85.0 + 50 * 120.0)
    assert [lot.gain for lot in selection.lots] == pytest.approx([1500.0, -1000.0])


def test_hifo_sells_the_highest_basis_first() -> None:
    # Basis order C (120), B (90), A (85). Sell 150: C 100 (−2000 LT), B 50 (+10 × 50 = +500 ST).
    # tax = −2000 × 0.20 + 500 × 0.37 = −400 + 185 = −215.
    selection = select_lots(LOTS, 150.0, PRICE, SALE, method=LotMethod.HIFO)
    assert _taken(selection.lots) == [("C", 100.0), ("B", 50.0)]
    assert selection.long_term_gain == pytest.approx(-2000.0)
    assert selection.short_term_gain == pytest.approx(500.0)
    assert selection.estimated_tax == pytest.approx(-215.0)


def test_tax_minimizing_prefers_the_long_term_gain_with_the_lower_tax() -> None:
    # Tax per share: C −4.00, A +3.00 (long-term gain of 15), B +3.70 (short-term gain of 10). HIFO would take B
    # after C; tax-min takes A. Sell 150: C 100 (−2000 LT), A 50 (+750 LT): LT = −1250, tax = −250 < HIFO's −215.
    selection = select_lots(LOTS, 150.0, PRICE, SALE, method=LotMethod.TAX_MINIMIZING)
    assert _taken(selection.lots) == [("C", 100.0), ("A", 50.0)]
    assert selection.long_term_gain == pytest.approx(-1250.0)
    assert selection.short_term_gain == pytest.approx(0.0)
    assert selection.estimated_tax == pytest.approx(-250.0)
    assert [lot.tax for lot in selection.lots] == pytest.approx([-400.0, 150.0])


def test_all_methods_agree_when_the_whole_holding_is_sold() -> None:
    # Everything sold: LT = 1500 − 2000 = −500, ST = +1000; tax = −100 + 370 = 270 whatever the order.
    for method in LotMethod:
        selection = select_lots(LOTS, 300.0, PRICE, SALE, method=method)
        assert selection.long_term_gain == pytest.approx(-500.0)
        assert selection.short_term_gain == pytest.approx(1000.0)
        assert selection.estimated_tax == pytest.approx(270.0)
        assert sum(lot.shares for lot in selection.lots) == pytest.approx(300.0)


def test_tax_minimizing_takes_short_term_losses_before_smaller_long_term_ones() -> None:
    # At $100: S 50 sh @ $110 bought 2024-03-01 (ST loss 10/sh → −3.70/sh), L 50 sh @ $115 bought 2020-01-02
    # (LT loss 15/sh → −3.00/sh). HIFO takes L (115 > 110) first; tax-min takes S first.
    # Sell 60: tax-min S 50 (−500 ST), L 10 (−150 LT) → tax −185 − 30 = −215; HIFO L 50 (−750 LT), S 10 (−100 ST)
    # → tax −150 − 37 = −187.
    lots = (TaxLot("L", 50.0, 115.0, date(2020, 1, 2)), TaxLot("S", 50.0, 110.0, date(2024, 3, 1)))
    tax_min = select_lots(lots, 60.0, PRICE, SALE, method=LotMethod.TAX_MINIMIZING)
    hifo = select_lots(lots, 60.0, PRICE, SALE, method=LotMethod.HIFO)
    assert _taken(tax_min.lots) == [("S", 50.0), ("L", 10.0)]
    assert (tax_min.short_term_gain, tax_min.long_term_gain) == pytest.approx((-500.0, -150.0))
    assert tax_min.estimated_tax == pytest.approx(-215.0)
    assert _taken(hifo.lots) == [("L", 50.0), ("S", 10.0)]
    assert hifo.estimated_tax == pytest.approx(-187.0)


def test_prefer_losses_moves_losing_lots_first_within_fifo() -> None:
    # FIFO order A, C, B; with prefer_losses the losing lot C (basis 120 > 100) comes first, then A, B.
    selection = select_lots(LOTS, 150.0, PRICE, SALE, method=LotMethod.FIFO, prefer_losses=True)
    assert _taken(selection.lots) == [("C", 100.0), ("A", 50.0)]


def test_fifo_ties_keep_the_given_order() -> None:
    lots = (TaxLot("X", 10.0, 50.0, date(2020, 1, 2)), TaxLot("Y", 10.0, 60.0, date(2020, 1, 2)))
    assert _taken(select_lots(lots, 15.0, PRICE, SALE).lots) == [("X", 10.0), ("Y", 5.0)]


def test_tax_minimizing_matches_brute_force_over_whole_share_allocations() -> None:
    rng = np.random.default_rng(7)
    settings = TaxSettings(short_term_rate=0.35, long_term_rate=0.15)
    for _ in range(20):
        n_lots = 4
        sizes = rng.integers(1, 6, n_lots)
        lots = tuple(
            TaxLot(
                f"L{j}", float(sizes[j]), float(rng.uniform(60, 140)), SALE - timedelta(days=int(rng.integers(1, 900)))
            )
            for j in range(n_lots)
        )
        to_sell = int(rng.integers(1, int(sizes.sum()) + 1))
        best = np.inf
        for allocation in itertools.product(*(range(int(s) + 1) for s in sizes)):
            if sum(allocation) != to_sell:
                continue
            tax = 0.0
            for x, lot in zip(allocation, lots, strict=True):
                days = (SALE - lot.acquired).days
                rate = settings.long_term_rate if days > 365 else settings.short_term_rate
                tax += x * (PRICE - lot.cost_basis) * rate
            best = min(best, tax)
        greedy = select_lots(lots, float(to_sell), PRICE, SALE, method=LotMethod.TAX_MINIMIZING, settings=settings)
        assert greedy.estimated_tax == pytest.approx(best, abs=1e-9)
        for method in (LotMethod.FIFO, LotMethod.HIFO):
            other = select_lots(lots, float(to_sell), PRICE, SALE, method=method, settings=settings)
            assert other.estimated_tax >= greedy.estimated_tax - 1e-9


# --- holding period boundary -------------------------------------------------------------------------------------


def test_long_term_boundary_is_more_than_one_year() -> None:
    bought = date(2022, 6, 1)
    assert (date(2023, 6, 1) - bought).days == 365
    assert holding_term(bought, date(2023, 6, 1)) is HoldingTerm.SHORT_TERM
    assert holding_term(bought, date(2023, 6, 2)) is HoldingTerm.LONG_TERM
    # Across 29 February 2024 one year is 366 days: sold on the anniversary it is still short-term (IRS Pub. 550).
    assert (date(2024, 6, 1) - date(2023, 6, 1)).days == 366
    assert holding_term(date(2023, 6, 1), date(2024, 6, 1)) is HoldingTerm.SHORT_TERM
    assert holding_term(date(2023, 6, 1), date(2024, 6, 2)) is HoldingTerm.LONG_TERM
    # Bought on 29 February: the anniversary is 28 February.
    assert holding_term(date(2024, 2, 29), date(2025, 2, 28)) is HoldingTerm.SHORT_TERM
    assert holding_term(date(2024, 2, 29), date(2025, 3, 1)) is HoldingTerm.LONG_TERM
    # A configured day count replaces the calendar rule.
    assert holding_term(bought, date(2023, 6, 2), long_term_after_days=366) is HoldingTerm.SHORT_TERM
    assert holding_term(bought, date(2023, 6, 2), long_term_after_days=365) is HoldingTerm.LONG_TERM


def test_boundary_in_a_sale_uses_the_configured_rates() -> None:
    # 10 sh @ $50 sold at $100: gain 500. Held 365 days → ST, tax 500 × 0.30 = 150; 366 days → LT, 500 × 0.10 = 50.
    settings = TaxSettings(short_term_rate=0.30, long_term_rate=0.10)
    lots = (TaxLot("A", 10.0, 50.0, date(2022, 6, 1)),)
    at_365 = select_lots(lots, 10.0, PRICE, date(2023, 6, 1), settings=settings)
    at_366 = select_lots(lots, 10.0, PRICE, date(2023, 6, 2), settings=settings)
    assert (at_365.short_term_gain, at_365.long_term_gain, at_365.estimated_tax) == pytest.approx((500.0, 0.0, 150.0))
    assert (at_366.short_term_gain, at_366.long_term_gain, at_366.estimated_tax) == pytest.approx((0.0, 500.0, 50.0))
    assert at_365.lots[0].holding_days == 365 and at_366.lots[0].holding_days == 366


# --- harvesting and wash sales ------------------------------------------------------------------------------------


def test_harvest_candidates_list_losing_lots_with_their_losses() -> None:
    holdings = [
        Holding("XYZ", 300.0, PRICE, LOTS),
        Holding("ABC", 10.0, 20.0, (TaxLot("Z", 10.0, 10.0, date(2023, 1, 3)),)),  # gain: not a candidate
    ]
    candidates = harvest_candidates(holdings, SALE)
    assert len(candidates) == 1
    (candidate,) = candidates
    # C: 100 × (120 − 100) = 2000 LT loss; saving 2000 × 0.20 = 400. B (bought 2024-01-10) is 145 days back: no wash.
    assert (candidate.symbol, candidate.lot_id, candidate.term) == ("XYZ", "C", HoldingTerm.LONG_TERM)
    assert candidate.unrealized_loss == pytest.approx(2000.0)
    assert candidate.tax_saving == pytest.approx(400.0)
    assert candidate.recently_bought is False


def test_harvest_candidates_flag_names_bought_within_the_window() -> None:
    old = TaxLot("OLD", 50.0, 150.0, date(2022, 1, 3))
    fresh = TaxLot("NEW", 5.0, 99.0, SALE - timedelta(days=30))  # another lot bought 30 days ago: in the window
    flagged = harvest_candidates([Holding("XYZ", 55.0, PRICE, (old, fresh))], SALE)
    assert [(c.lot_id, c.recently_bought) for c in flagged] == [("OLD", True)]

    fresh_31 = TaxLot("NEW", 5.0, 99.0, SALE - timedelta(days=31))
    assert harvest_candidates([Holding("XYZ", 55.0, PRICE, (old, fresh_31))], SALE)[0].recently_bought is False

    # The losing lot's own purchase is not a replacement purchase.
    own = TaxLot("OWN", 5.0, 150.0, SALE - timedelta(days=3))
    assert harvest_candidates([Holding("XYZ", 5.0, PRICE, (own,))], SALE)[0].recently_bought is False

    # A purchase recorded elsewhere (e.g. in another account) within the window also counts.
    recent = [Purchase("XYZ", SALE - timedelta(days=12), 3.0)]
    candidates = harvest_candidates([Holding("XYZ", 50.0, PRICE, (old,))], SALE, recent_purchases=recent)
    assert candidates[0].recently_bought is True


def test_wash_sale_flags_buys_within_30_days_of_a_loss() -> None:
    losses = [
        RealizedLoss("AAA", SALE - timedelta(days=30), 500.0),  # in the window (boundary)
        RealizedLoss("BBB", SALE - timedelta(days=31), 700.0),  # outside
        RealizedLoss("CCC", SALE + timedelta(days=30), 900.0),  # loss sale planned after the buy: in the window
        RealizedLoss("DDD", SALE, 100.0),  # a loss in the same trade list
    ]
    flags = wash_sale_flags(["AAA", "BBB", "CCC", "DDD", "EEE"], SALE, losses)
    assert [(f.symbol, f.loss, f.days_apart) for f in flags] == [
        ("AAA", 500.0, 30),
        ("CCC", 900.0, -30),
        ("DDD", 100.0, 0),
    ]
    assert wash_sale_flags(["AAA"], SALE, losses, settings=TaxSettings(wash_sale_window_days=29)) == ()


# --- validation ---------------------------------------------------------------------------------------------------


def _field(exc: pytest.ExceptionInfo[InvalidInputError]) -> str:
    return exc.value.field_violations[0].field


def test_lots_that_do_not_add_up_name_the_holding() -> None:
    holdings = [
        Holding("OK", 300.0, PRICE, LOTS),
        Holding("BAD", 250.0, PRICE, LOTS),  # lots hold 300 shares
    ]
    with pytest.raises(InvalidInputError) as exc:
        validate_holdings(holdings)
    assert _field(exc) == "holdings[1].lots"
    assert "300" in exc.value.field_violations[0].description


@pytest.mark.parametrize(
    ("holding", "expected"),
    [
        (Holding("X", -1.0, PRICE), "holdings[0].shares"),
        (Holding("X", 1.0, 0.0), "holdings[0].price"),
        (Holding("X", 1.0, float("nan")), "holdings[0].price"),
        (Holding("", 1.0, PRICE), "holdings[0].symbol"),
        (
            Holding("X", 2.0, PRICE, (TaxLot("a", 1.0, 10.0, SALE), TaxLot("b", 1.0, 0.0, SALE))),
            "holdings[0].lots[1].cost_basis",
        ),
        (
            Holding("X", 2.0, PRICE, (TaxLot("a", 1.0, 10.0, SALE), TaxLot("a", 1.0, 10.0, SALE))),
            "holdings[0].lots[1].lot_id",
        ),
        (
            Holding("X", 0.0, PRICE, (TaxLot("a", -1.0, 10.0, SALE), TaxLot("b", 1.0, 10.0, SALE))),
            "holdings[0].lots[0].shares",
        ),
        (Holding("X", 1.0, PRICE, (TaxLot("a", 1.0, 10.0, SALE + timedelta(days=1)),)), "holdings[0].lots[0].acquired"),
    ],
)
def test_invalid_holdings_name_the_field(holding: Holding, expected: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        validate_holdings([holding], as_of=SALE)
    assert _field(exc) == expected


def test_duplicate_names_and_bad_settings_are_rejected() -> None:
    with pytest.raises(InvalidInputError) as exc:
        validate_holdings([Holding("X", 1.0, PRICE), Holding("X", 1.0, PRICE)])
    assert _field(exc) == "holdings[1].symbol"
    with pytest.raises(InvalidInputError) as exc:
        validate_tax_settings(TaxSettings(long_term_rate=1.5))
    assert _field(exc) == "tax_settings.long_term_rate"
    with pytest.raises(InvalidInputError) as exc:
        validate_tax_settings(TaxSettings(wash_sale_window_days=-1))
    assert _field(exc) == "tax_settings.wash_sale_window_days"


def test_selling_more_than_the_lots_hold_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as exc:
        select_lots(LOTS, 301.0, PRICE, SALE, field="holdings[0].lots")
    assert _field(exc) == "holdings[0].lots"
    with pytest.raises(InvalidInputError):
        select_lots(LOTS, 0.0, PRICE, SALE)
