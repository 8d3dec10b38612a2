"""The policy layer: whether a rotation's target is traded now (TRADE) or not (HOLD), and which trigger says so.

Triggers (the specification's): portfolio drift ``‖w_tar − w_cur‖₁ > τ_L1``, per-name drift ``|w_tar,i − w_cur,i|
> τ_i``, scheduled windows in exchange time, and risk overrides: a volatility spike, a spread blowout per name,
and the kill-switch. Sessions, holidays, early closes and time zones come from ``exchange_calendars`` (the
exchange's own calendar, e.g. ``XNYS``); a window counts only while the exchange is open, so a holiday has no
window and an early close drops the afternoon ones.

Order of the checks: kill-switch, exchange closed, outside every window, volatility spike, then the drift
triggers. Every check's state is reported, fired or not, with its value and threshold.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from datetime import datetime, time, timedelta

import exchange_calendars as xcals
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from services.errors import InvalidInputError
from services.types import FloatArray

DEFAULT_WINDOWS = (time(9, 35), time(10, 30), time(12, 0), time(14, 30), time(15, 50))
"""The specification's trading windows, exchange local time."""


class PolicyAction(enum.StrEnum):
    """The policy's verdict on a target."""

    TRADE = "TRADE"
    HOLD = "HOLD"


class PolicyReason(enum.StrEnum):
    """Why the policy holds, or that it trades."""

    KILL_SWITCH = "KILL_SWITCH"
    """The kill-switch is on (globally or for this portfolio): nothing is traded."""
    BLOCKED_MARKET_CLOSED = "BLOCKED_MARKET_CLOSED"
    """The exchange is closed now (night, weekend, holiday, after an early close)."""
    BLOCKED_WINDOW = "BLOCKED_WINDOW"
    """The exchange is open but no scheduled window is."""
    BLOCKED_VOL_SPIKE = "BLOCKED_VOL_SPIKE"
    """Short-horizon volatility is above its spike multiple of the long-horizon one."""
    BELOW_DRIFT_TRIGGER = "BELOW_DRIFT_TRIGGER"
    """Neither the portfolio drift nor any name's drift exceeds its trigger."""
    DRIFT_TRIGGER = "DRIFT_TRIGGER"
    """A drift trigger fired inside a window with no override: trade."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySettings:
    """When a target may be traded; the defaults are the specification's.

    Attributes
    ----------
    portfolio_drift_trigger : float
        τ_L1: trade when ``‖w_tar − w_cur‖₁`` exceeds it (0.01; fractions of portfolio value, two-way).
    name_drift_trigger : float
        τ_i: trade when a name's ``|w_tar,i − w_cur,i|`` exceeds it (0.005).
    windows : tuple of datetime.time
        Window starts, exchange local time (09:35, 10:30, 12:00, 14:30, 15:50).
    window_minutes : float
        How long a window stays open, minutes (5).
    calendar : str
        ``exchange_calendars`` code of the exchange (``XNYS``).
    vol_spike_ratio : float
        Hold when short-horizon over long-horizon volatility exceeds this (2.0; stratopt's default).
    spread_blowout_ratio : float
        Block a name when its spread exceeds this multiple of its normal spread (3.0; stratopt's default).
    """

    portfolio_drift_trigger: float = 0.01
    name_drift_trigger: float = 0.005
    windows: tuple[time, ...] = DEFAULT_WINDOWS
    window_minutes: float = 5.0
    calendar: str = "XNYS"
    vol_spike_ratio: float = 2.0
    spread_blowout_ratio: float = 3.0

    def __post_init__(self) -> None:
        for name in ("portfolio_drift_trigger", "name_drift_trigger", "vol_spike_ratio", "spread_blowout_ratio"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise InvalidInputError.for_field(name, f"must be finite and ≥ 0, got {value}")
        if not 0 < self.window_minutes <= 24 * 60:
            raise InvalidInputError.for_field("window_minutes", f"must lie in (0, 1440], got {self.window_minutes}")
        exchange_calendar(self.calendar)  # an unknown code fails here, naming the field


@functools.lru_cache(maxsize=8)
def _calendar(code: str) -> xcals.ExchangeCalendar:
    return xcals.get_calendar(code, start="2000-01-03")


def exchange_calendar(code: str) -> xcals.ExchangeCalendar:
    """The ``exchange_calendars`` calendar of ``code`` from 2000 on (cached).

    Raises
    ------
    InvalidInputError
        ``calendar``: the code is not one ``exchange_calendars`` knows.
    """
    try:
        return _calendar(code)
    except xcals.errors.InvalidCalendarName:
        raise InvalidInputError.for_field("calendar", f"unknown exchange calendar {code!r} (e.g. XNYS, XLON)") from None


@dataclass(frozen=True, slots=True)
class TriggerState:
    """One check: its name, whether it fired, and the numbers it compared (NaN where none)."""

    name: str
    fired: bool
    value: float = float("nan")
    threshold: float = float("nan")


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The policy's verdict.

    Attributes
    ----------
    action : PolicyAction
    reason : PolicyReason
        The first check that held, or ``DRIFT_TRIGGER``.
    triggers : tuple of TriggerState
        Every check, in the order they are applied.
    tradable : ndarray of bool, shape (N,)
        Names whose orders may go out when ``action`` is TRADE (their drift exceeds τ_i, or the portfolio
        trigger fired, and their spread is not blown out); all False on HOLD.
    blocked_spread : tuple of str
        Names held back by a spread blowout.
    window : datetime or None
        Start of the open window (UTC), if any.
    """

    action: PolicyAction
    reason: PolicyReason
    triggers: tuple[TriggerState, ...]
    tradable: NDArray[np.bool_]
    blocked_spread: tuple[str, ...] = ()
    window: datetime | None = None


def open_window(now: datetime, settings: PolicySettings) -> tuple[bool, datetime | None]:
    """Whether the exchange is open at ``now`` and which scheduled window (UTC start), if any, contains it.

    A window ``[start, start + window_minutes)`` in exchange local time counts only on a session day and while
    the exchange is open at ``now`` (so no window on a holiday, none after an early close).

    Parameters
    ----------
    now : datetime
        Time zone aware.
    settings : PolicySettings

    Returns
    -------
    tuple of (bool, datetime or None)
        Open now; the window's start in UTC.

    Raises
    ------
    InvalidInputError
        ``now`` is naive, or outside the calendar's range.
    """
    if now.tzinfo is None:
        raise InvalidInputError.for_field("now", "must be time zone aware (UTC)")
    calendar = exchange_calendar(settings.calendar)
    minute = pd.Timestamp(now).tz_convert("UTC").floor("min")
    if not calendar.first_minute <= minute <= calendar.last_minute:
        raise InvalidInputError.for_field("now", f"{now.isoformat()} is outside the {settings.calendar} calendar")
    if not calendar.is_open_on_minute(minute, ignore_breaks=False):
        return False, None
    local = minute.tz_convert(calendar.tz)
    for start in settings.windows:
        begins = local.normalize() + timedelta(hours=start.hour, minutes=start.minute)
        if begins <= local < begins + timedelta(minutes=settings.window_minutes):
            return True, begins.tz_convert("UTC").to_pydatetime()
    return True, None


def evaluate_policy(
    *,
    now: datetime,
    symbols: tuple[str, ...],
    target_weights: FloatArray,
    current_weights: FloatArray,
    settings: PolicySettings | None = None,
    kill_switch: bool = False,
    volatility_ratio: float | None = None,
    spreads_bps: FloatArray | None = None,
    normal_spreads_bps: FloatArray | None = None,
) -> PolicyDecision:
    """Decide TRADE or HOLD for a target at ``now`` (module docstring for the checks and their order).

    Parameters
    ----------
    now : datetime
        The decision time, time zone aware.
    symbols : tuple of str, length N
    target_weights, current_weights : ndarray, shape (N,)
        Fractions of portfolio value.
    settings : PolicySettings, optional
    kill_switch : bool
        Whether a kill-switch (global or the portfolio's) is on.
    volatility_ratio : float, optional
        Short-horizon over long-horizon volatility of the portfolio or market; the spike check runs when given.
    spreads_bps, normal_spreads_bps : ndarray, shape (N,), optional
        Current and normal bid-ask spreads per name (basis points); the blowout check runs when both are given.

    Returns
    -------
    PolicyDecision

    Raises
    ------
    InvalidInputError
        Mismatched shapes, non-finite weights, a naive ``now``.
    """
    s = settings or PolicySettings()
    n = len(symbols)
    target = np.asarray(target_weights, dtype=np.float64)
    current = np.asarray(current_weights, dtype=np.float64)
    for name, array in (("target_weights", target), ("current_weights", current)):
        if array.shape != (n,) or not np.all(np.isfinite(array)):
            raise InvalidInputError.for_field(name, f"needs {n} finite values")
    drift = np.abs(target - current)
    nothing = np.zeros(n, dtype=bool)
    states = [TriggerState("KILL_SWITCH", kill_switch)]

    def hold(reason: PolicyReason, window: datetime | None = None) -> PolicyDecision:
        return PolicyDecision(PolicyAction.HOLD, reason, tuple(states), nothing, (), window)

    if kill_switch:
        return hold(PolicyReason.KILL_SWITCH)
    is_open, window = open_window(now, s)
    states.append(TriggerState("MARKET_OPEN", is_open))
    if not is_open:
        return hold(PolicyReason.BLOCKED_MARKET_CLOSED)
    states.append(TriggerState("WINDOW", window is not None))
    if window is None:
        return hold(PolicyReason.BLOCKED_WINDOW)
    if volatility_ratio is not None:
        spike = bool(volatility_ratio > s.vol_spike_ratio)
        states.append(TriggerState("VOL_SPIKE", spike, float(volatility_ratio), s.vol_spike_ratio))
        if spike:
            return hold(PolicyReason.BLOCKED_VOL_SPIKE, window)
    total = float(drift.sum())
    portfolio_fired = total > s.portfolio_drift_trigger
    names_fired = drift > s.name_drift_trigger
    states.append(TriggerState("PORTFOLIO_DRIFT", portfolio_fired, total, s.portfolio_drift_trigger))
    states.append(
        TriggerState("NAME_DRIFT", bool(names_fired.any()), float(drift.max(initial=0.0)), s.name_drift_trigger)
    )
    if not portfolio_fired and not names_fired.any():
        return hold(PolicyReason.BELOW_DRIFT_TRIGGER, window)
    tradable = drift > 0 if portfolio_fired else names_fired
    blocked: tuple[str, ...] = ()
    if spreads_bps is not None and normal_spreads_bps is not None:
        spreads = np.asarray(spreads_bps, dtype=np.float64)
        normal = np.asarray(normal_spreads_bps, dtype=np.float64)
        if spreads.shape != (n,) or normal.shape != (n,):
            raise InvalidInputError.for_field("spreads_bps", f"spreads_bps and normal_spreads_bps need {n} values")
        with np.errstate(invalid="ignore", divide="ignore"):
            blown = spreads > s.spread_blowout_ratio * normal
        states.append(TriggerState("SPREAD_BLOWOUT", bool(blown.any()), float(blown.sum()), s.spread_blowout_ratio))
        blocked = tuple(symbols[i] for i in np.flatnonzero(blown & tradable))
        tradable = tradable & ~blown
    return PolicyDecision(PolicyAction.TRADE, PolicyReason.DRIFT_TRIGGER, tuple(states), tradable, blocked, window)
