"""The policy layer against hand-worked cases on the NYSE calendar (exchange_calendars)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from services.errors import InvalidInputError
from services.rotation import PolicyAction, PolicyReason, PolicySettings, evaluate_policy, open_window

NEW_YORK = ZoneInfo("America/New_York")
SYMBOLS = ("A", "B", "C")


def at(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    """A New York wall-clock time."""
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK)


def decide(now: datetime, target: list[float], current: list[float], **kwargs: object):  # type: ignore[no-untyped-def]
    return evaluate_policy(
        now=now, symbols=SYMBOLS, target_weights=np.array(target), current_weights=np.array(current), **kwargs
    )  # type: ignore[arg-type]


DRIFTED = ([0.40, 0.30, 0.30], [0.39, 0.30, 0.31])  # L1 0.02 > 0.01; names 0.01 > 0.005


def test_a_drift_inside_a_window_trades() -> None:
    decision = decide(at(2024, 7, 2, 9, 36), *DRIFTED)  # a Tuesday, the 09:35 window
    assert (decision.action, decision.reason) == (PolicyAction.TRADE, PolicyReason.DRIFT_TRIGGER)
    assert decision.tradable.tolist() == [True, False, True]
    assert decision.window == datetime(2024, 7, 2, 13, 35, tzinfo=UTC)  # 09:35 EDT


def test_a_trigger_outside_a_window_holds() -> None:
    decision = decide(at(2024, 7, 2, 9, 41), *DRIFTED)  # the 09:35 window lasts 5 minutes
    assert (decision.action, decision.reason) == (PolicyAction.HOLD, PolicyReason.BLOCKED_WINDOW)
    assert not decision.tradable.any()


def test_a_holiday_is_no_window() -> None:
    decision = decide(at(2024, 7, 4, 9, 36), *DRIFTED)  # Independence Day
    assert (decision.action, decision.reason) == (PolicyAction.HOLD, PolicyReason.BLOCKED_MARKET_CLOSED)
    assert decide(at(2024, 7, 6, 10, 31), *DRIFTED).reason is PolicyReason.BLOCKED_MARKET_CLOSED  # a Saturday


def test_an_early_close_drops_the_afternoon_windows() -> None:
    # 3 July 2024 closes at 13:00: the 12:00 window is open, the 14:30 one is not.
    assert decide(at(2024, 7, 3, 12, 1), *DRIFTED).action is PolicyAction.TRADE
    late = decide(at(2024, 7, 3, 14, 31), *DRIFTED)
    assert late.reason is PolicyReason.BLOCKED_MARKET_CLOSED
    assert decide(at(2024, 7, 2, 14, 31), *DRIFTED).action is PolicyAction.TRADE  # a full day


def test_windows_follow_the_exchanges_daylight_saving_time() -> None:
    # US daylight saving time began on 10 March 2024: 09:35 New York is 14:35 UTC before, 13:35 UTC after.
    assert open_window(datetime(2024, 3, 8, 14, 36, tzinfo=UTC), PolicySettings()) == (
        True,
        datetime(2024, 3, 8, 14, 35, tzinfo=UTC),
    )
    assert open_window(datetime(2024, 3, 11, 13, 36, tzinfo=UTC), PolicySettings()) == (
        True,
        datetime(2024, 3, 11, 13, 35, tzinfo=UTC),
    )
    assert open_window(datetime(2024, 3, 11, 14, 36, tzinfo=UTC), PolicySettings()) == (True, None)  # 10:36 EDT


def test_the_kill_switch_holds_before_anything_else() -> None:
    decision = decide(at(2024, 7, 2, 9, 36), *DRIFTED, kill_switch=True)
    assert (decision.action, decision.reason) == (PolicyAction.HOLD, PolicyReason.KILL_SWITCH)
    assert [t.name for t in decision.triggers] == ["KILL_SWITCH"]


def test_drift_triggers_portfolio_and_per_name() -> None:
    now = at(2024, 7, 2, 10, 31)
    # L1 = 0.008 ≤ 0.01 but A drifts 0.006 > 0.005: trade A only.
    one = decide(now, [0.406, 0.298, 0.30], [0.40, 0.30, 0.30])
    assert one.action is PolicyAction.TRADE
    assert one.tradable.tolist() == [True, False, False]
    # L1 = 0.008, largest name drift 0.004: hold.
    none = decide(now, [0.404, 0.296, 0.30], [0.40, 0.30, 0.30])
    assert (none.action, none.reason) == (PolicyAction.HOLD, PolicyReason.BELOW_DRIFT_TRIGGER)
    drift = {t.name: t for t in none.triggers}
    assert drift["PORTFOLIO_DRIFT"].value == pytest.approx(0.008)
    assert drift["NAME_DRIFT"].value == pytest.approx(0.004)
    # The same L1 of 0.008 against a portfolio trigger of 0.007: every drifted name trades.
    every = decide(
        now, [0.404, 0.296, 0.30], [0.40, 0.30, 0.30], settings=PolicySettings(portfolio_drift_trigger=0.007)
    )
    assert every.tradable.tolist() == [True, True, False]


def test_risk_overrides_hold_or_block() -> None:
    now = at(2024, 7, 2, 12, 2)
    spike = decide(now, *DRIFTED, volatility_ratio=2.5)
    assert (spike.action, spike.reason) == (PolicyAction.HOLD, PolicyReason.BLOCKED_VOL_SPIKE)
    calm = decide(now, *DRIFTED, volatility_ratio=1.5)
    assert calm.action is PolicyAction.TRADE
    blown = decide(now, *DRIFTED, spreads_bps=np.array([40.0, 5.0, 12.0]), normal_spreads_bps=np.array([10.0] * 3))
    assert blown.blocked_spread == ("A",)  # 40 bp > 3 × 10 bp
    assert blown.tradable.tolist() == [False, False, True]


def test_bad_policy_inputs_name_their_field() -> None:
    with pytest.raises(InvalidInputError, match="now"):
        decide(datetime(2024, 7, 2, 9, 36), *DRIFTED)  # naive
    with pytest.raises(InvalidInputError, match="calendar"):
        PolicySettings(calendar="NOPE")
    with pytest.raises(InvalidInputError, match="window_minutes"):
        PolicySettings(window_minutes=0)
    assert PolicySettings().windows == (time(9, 35), time(10, 30), time(12, 0), time(14, 30), time(15, 50))
