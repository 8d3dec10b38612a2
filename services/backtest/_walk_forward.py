"""Walk-forward simulation: re-optimize on the data available at each rebalance date, hold, value, repeat.

Timing (no look-ahead). Prices are closes on a calendar ``t = 0 … T − 1``. A decision at day ``d`` uses the
``W`` returns ending at ``d`` (prices ``d − W … d``, all known at the close of ``d``), and trades at the close of
``d`` at those prices; the new holdings earn the returns of ``d + 1`` onwards. This is skfolio's ``WalkForward``
convention (a model fitted on return rows ``[i, i + W)`` is tested on the rows from ``i + W``), so with the same
window, period and weights the two give equal daily returns (``tests/services/backtest``).

Holding between rebalances:

* ``BUY_AND_HOLD`` (default, what an account does): the holdings are shares (fractional, or whole with
  ``whole_shares``), so weights drift with prices; cash left over earns nothing.
* ``CONSTANT_WEIGHTS`` (skfolio's and most research code's definition): the target weights are restored at every
  close for free, so the portfolio return of day ``d`` is ``w · r_d``; costs are charged only at rebalance dates,
  on the change of target.

Schedules: every ``k`` observations from the first decision (``PERIODS``), the last observation of each
calendar week, month, quarter or year (``WEEKLY`` … ``ANNUALLY``; the first decision is always the start day), or
``DRIFT``: after the first decision, whenever a symbol's weight leaves its band around the last target — absolute
(``|w − t| > a``) or relative (``|w − t| > r · |t|``), whichever is set — checked at each close; until a decision
has given a target (the first failed: all cash, which never drifts), every close is a decision.

Costs of a trade of ``q`` shares at price ``p`` (value ``|q| p``): a commission of ``commission_per_trade`` ($, per
symbol traded) plus ``commission_per_share`` · |q| plus ``commission_bps`` · 10⁻⁴ · |q| p; half the quoted
spread, ``spread_bps`` / 2 · 10⁻⁴ · |q| p; and, with an impact model, the market impact of
``services.trading.CostModel`` (square-root law or Almgren et al. 2005) from the average daily volume ``adv`` and
the daily volatility of the last ``volatility_periods`` returns at the decision date. Costs are paid from the
portfolio: with continuous holdings the targets apply to the value net of the costs of the trades to the gross
targets (a second-order approximation); with whole shares the share counts of ``target · (V − cost)`` are rounded
towards zero and the actual trades' costs are paid from cash.

Turnover of a rebalance is one-way: ``max(Σ buys, Σ sells) / V`` ($ traded over the value before trading), so
investing a portfolio from cash counts 1.0, as in ``services.trading``.

Why one long module: the schedule, the holdings, the costs and the metrics are one simulation over the same
validated arrays and state; split, each part would need the others' internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from services.errors import InvalidInputError, PreconditionError, PreconditionViolation, StratoptError
from services.estimation import returns_between_observations
from services.trading import CostModel, ImpactModel, trade_cost_arrays
from services.types import FloatArray, ReturnHistory

__all__ = [
    "BacktestCosts",
    "BacktestMetrics",
    "BacktestResult",
    "BacktestSettings",
    "Decision",
    "Holding",
    "Optimizer",
    "RebalanceSchedule",
    "ScheduleKind",
    "WalkForward",
    "backtest_metrics",
    "run_backtest",
]


class ScheduleKind(StrEnum):
    """When the walk-forward re-optimizes."""

    PERIODS = "PERIODS"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"
    QUARTERLY = "QUARTERLY"
    ANNUALLY = "ANNUALLY"
    DRIFT = "DRIFT"


class Holding(StrEnum):
    """How the portfolio is held between rebalances."""

    BUY_AND_HOLD = "BUY_AND_HOLD"
    CONSTANT_WEIGHTS = "CONSTANT_WEIGHTS"


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceSchedule:
    """Rebalance dates.

    Attributes
    ----------
    kind : ScheduleKind
        Calendar period, every ``every_periods`` observations, or drift-triggered.
    every_periods : int
        Observations between decisions (``PERIODS`` only; ≥ 1).
    absolute_band : float or None
        ``DRIFT``: a symbol breaches when ``|w − t| > absolute_band`` (fraction of the portfolio).
    relative_band : float or None
        ``DRIFT``: a symbol breaches when ``|w − t| > relative_band · |t|`` (fraction of its target).
    """

    kind: ScheduleKind = ScheduleKind.MONTHLY
    every_periods: int = 21
    absolute_band: float | None = None
    relative_band: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestCosts:
    """Trading costs of the simulation (see the module docstring for the formulas).

    Attributes
    ----------
    commission_bps : float
        Commission proportional to traded value (basis points, ≥ 0).
    commission_per_trade : float
        Fixed commission per symbol traded at a rebalance ($, ≥ 0).
    commission_per_share : float
        Commission per share traded ($, ≥ 0).
    spread_bps : float
        Quoted bid-ask spread (basis points, ≥ 0); every trade pays half.
    impact_model : ImpactModel
        ``NONE`` (default), ``SQUARE_ROOT`` or ``ALMGREN_2005`` (``services.trading``); the latter two need ``adv``.
    adv : ndarray of shape (N,) or None
        Average daily volume per symbol (shares/day, > 0).
    volatility_periods : int
        Returns behind the daily volatility σ of the impact models (≥ 2).
    """

    commission_bps: float = 0.0
    commission_per_trade: float = 0.0
    commission_per_share: float = 0.0
    spread_bps: float = 0.0
    impact_model: ImpactModel = ImpactModel.NONE
    adv: FloatArray | None = None
    volatility_periods: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestSettings:
    """Everything of a walk-forward but the prices and the optimizer.

    Attributes
    ----------
    estimation_periods : int
        Returns W in each estimation window (≥ 2).
    schedule : RebalanceSchedule
        When to re-optimize.
    initial_cash : float
        Starting value ($, > 0).
    whole_shares : bool
        Hold whole shares (rounded towards zero; ``BUY_AND_HOLD`` only) instead of fractional ones.
    holding : Holding
        Drifting share holdings or constant weights between rebalances.
    costs : BacktestCosts
        Trading costs.
    periods_per_year : float
        Observations per year, for annualising volatility, Sharpe and Sortino (252 for daily data).
    risk_free_rate : float
        Annualised risk-free rate (decimal) of the Sharpe and Sortino ratios.
    """

    estimation_periods: int = 252
    schedule: RebalanceSchedule = field(default_factory=RebalanceSchedule)
    initial_cash: float = 1_000_000.0
    whole_shares: bool = False
    holding: Holding = Holding.BUY_AND_HOLD
    costs: BacktestCosts = field(default_factory=BacktestCosts)
    periods_per_year: float = 252.0
    risk_free_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """A rebalance date: what the optimizer may see.

    Attributes
    ----------
    index : int
        Calendar position ``d`` of the decision (the close it trades at).
    timestamp : numpy.datetime64
        Its date.
    window : ReturnHistory
        The W returns ending at ``d`` (nothing later).
    current_weights : ndarray of shape (N,)
        Weights held before trading (fractions of the value; zeros at the first decision).
    number : int
        0 for the first decision, then 1, 2 …
    """

    index: int
    timestamp: np.datetime64
    window: ReturnHistory
    current_weights: FloatArray
    number: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestMetrics:
    """Summary statistics of a backtest (definitions in :func:`backtest_metrics`)."""

    total_return: float
    cagr: float
    volatility: float
    sharpe_ratio: float
    sortino_ratio: float
    max_drawdown: float
    calmar_ratio: float
    annual_turnover: float
    cost_drag_bps: float
    hit_rate: float
    total_costs: float
    final_value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestResult:
    """The simulated path and its metrics (P = simulated observations, from the first decision to the end).

    Attributes
    ----------
    timestamps : ndarray of shape (P,)
        Simulated dates (datetime64[us]).
    equity : ndarray of shape (P,)
        Portfolio value at each close, after that day's trades and their costs ($).
    cash : ndarray of shape (P,)
        Cash at each close ($).
    weights : ndarray of shape (P, N)
        Weights at each close (fractions of the value; cash is the rest).
    rebalanced : ndarray of shape (P,) of bool
        Whether the portfolio traded at that close.
    turnover : ndarray of shape (P,)
        One-way turnover of that close's trades (0 when none).
    costs : ndarray of shape (P,)
        Costs paid at that close ($).
    decisions : int
        Rebalance dates reached (optimizer calls).
    failed_decisions : int
        Decisions whose optimization failed; the holdings were kept.
    first_failure : str
        Message of the first failed decision ('' = none).
    metrics : BacktestMetrics
        Summary statistics.
    """

    timestamps: NDArray[np.datetime64]
    equity: FloatArray
    cash: FloatArray
    weights: FloatArray
    rebalanced: NDArray[np.bool_]
    turnover: FloatArray
    costs: FloatArray
    decisions: int
    failed_decisions: int
    first_failure: str
    metrics: BacktestMetrics

    @property
    def daily_returns(self) -> FloatArray:
        """Simple returns of the equity between consecutive closes, shape (P − 1,)."""
        return self.equity[1:] / self.equity[:-1] - 1.0


_PERIOD_UNITS = {
    ScheduleKind.WEEKLY: "W",
    ScheduleKind.MONTHLY: "M",
    ScheduleKind.QUARTERLY: "Q",
    ScheduleKind.ANNUALLY: "Y",
}


def _period_keys(timestamps: NDArray[np.datetime64], kind: ScheduleKind) -> NDArray[np.int64]:
    days = timestamps.astype("datetime64[D]")
    if kind is ScheduleKind.WEEKLY:
        # Weeks starting on Monday: 1970-01-01 was a Thursday.
        return ((days.astype(np.int64) + 3) // 7).astype(np.int64)
    months = days.astype("datetime64[M]").astype(np.int64)
    if kind is ScheduleKind.MONTHLY:
        return months
    if kind is ScheduleKind.QUARTERLY:
        return months // 3
    return months // 12


def _check(condition: bool, field_name: str, description: str) -> None:
    if not condition:
        raise InvalidInputError.for_field(field_name, description)


def _validate(settings: BacktestSettings, symbols: int) -> None:
    _check(settings.estimation_periods >= 2, "estimation_periods", "must be at least 2 returns")
    _check(
        math.isfinite(settings.initial_cash) and 0.0 < settings.initial_cash <= 1e15,
        "initial_cash",
        "must be positive and at most 1e15",
    )
    _check(
        math.isfinite(settings.periods_per_year) and settings.periods_per_year > 0,
        "periods_per_year",
        "must be positive",
    )
    _check(math.isfinite(settings.risk_free_rate), "risk_free_rate", "must be finite")
    _check(
        not (settings.whole_shares and settings.holding is Holding.CONSTANT_WEIGHTS),
        "whole_shares",
        "whole shares need BUY_AND_HOLD holding (constant weights rebalance to fractions every day)",
    )
    schedule = settings.schedule
    if schedule.kind is ScheduleKind.PERIODS:
        _check(schedule.every_periods >= 1, "schedule.every_periods", "must be at least 1")
    if schedule.kind is ScheduleKind.DRIFT:
        _check(
            schedule.absolute_band is not None or schedule.relative_band is not None,
            "schedule",
            "a DRIFT schedule needs absolute_band or relative_band",
        )
        _check(
            settings.holding is Holding.BUY_AND_HOLD,
            "schedule",
            "a DRIFT schedule needs BUY_AND_HOLD holding (constant weights never drift)",
        )
    for name, band in (("absolute_band", schedule.absolute_band), ("relative_band", schedule.relative_band)):
        if band is not None:
            _check(math.isfinite(band) and band > 0, f"schedule.{name}", "must be positive")
    costs = settings.costs
    for name in ("commission_bps", "commission_per_trade", "commission_per_share", "spread_bps"):
        value = getattr(costs, name)
        _check(math.isfinite(value) and 0.0 <= value <= 1e6, f"costs.{name}", "must be in [0, 1e6]")
    _check(costs.volatility_periods >= 2, "costs.volatility_periods", "must be at least 2")
    if costs.impact_model is not ImpactModel.NONE:
        _check(costs.adv is not None, "costs.adv", f"the {costs.impact_model.value} impact model needs volumes")
    if costs.adv is not None:
        adv = np.asarray(costs.adv, dtype=np.float64)
        _check(adv.shape == (symbols,), "costs.adv", f"must hold one volume per symbol ({symbols})")
        _check(bool(np.all(np.isfinite(adv) & (adv > 0))), "costs.adv", "volumes must be positive and finite")


class WalkForward:
    """A walk-forward backtest driven step by step, so the optimizer can run anywhere (a worker pool).

    Call :meth:`next_decision`; give the optimizer's weights for it to :meth:`apply` (or ``None`` when the
    optimization failed: the holdings are kept); repeat until :meth:`next_decision` returns None; then
    :meth:`result`. :func:`run_backtest` does this with a callable.

    Parameters
    ----------
    prices : ndarray of shape (T, N)
        Closes on a common calendar ($, > 0); NaN before a symbol's first price is allowed inside estimation
        windows, but every symbol needs a price at every simulated close.
    timestamps : ndarray of shape (T,)
        Ascending dates (datetime64).
    settings : BacktestSettings
        Window, schedule, costs and cash.
    start, end : numpy.datetime64 or None
        First and last simulated dates (inclusive; None = as early as the window allows / the last date). The
        first decision is the first date at or after ``start`` with W returns before it.
    market_prices : ndarray of shape (T,) or None
        A market series (CAPM inputs) passed through in each window's ``market_returns``.

    Raises
    ------
    InvalidInputError
        A setting out of range, naming it; shapes that do not match.
    PreconditionError
        Not enough history before ``start`` (``INSUFFICIENT_HISTORY``) or a symbol without a price at a
        simulated close (``MISSING_MARKET_DATA``, per symbol, with its first complete date).
    """

    def __init__(
        self,
        prices: FloatArray,
        timestamps: NDArray[np.datetime64],
        settings: BacktestSettings,
        *,
        start: np.datetime64 | None = None,
        end: np.datetime64 | None = None,
        market_prices: FloatArray | None = None,
        symbols: tuple[str, ...] = (),
    ) -> None:
        self._prices = np.asarray(prices, dtype=np.float64)
        if self._prices.ndim != 2 or self._prices.shape[1] < 1:
            raise InvalidInputError.for_field("prices", "must be a (T, N) array with N ≥ 1")
        self._timestamps = np.asarray(timestamps).astype("datetime64[us]")
        if self._timestamps.shape != (self._prices.shape[0],):
            raise InvalidInputError.for_field("timestamps", "must hold one date per price row")
        if self._timestamps.size > 1 and not np.all(np.diff(self._timestamps.astype(np.int64)) > 0):
            raise InvalidInputError.for_field("timestamps", "must be strictly ascending")
        n = self._prices.shape[1]
        self._symbols = symbols or tuple(f"asset_{j}" for j in range(n))
        _validate(settings, n)
        self._settings = settings
        self._market = None if market_prices is None else np.asarray(market_prices, dtype=np.float64)
        window = settings.estimation_periods
        total = self._prices.shape[0]
        first = window
        if start is not None:
            first = max(first, int(np.searchsorted(self._timestamps, np.array([start], dtype="datetime64[us]"))[0]))
        last = total - 1
        if end is not None:
            last = int(np.searchsorted(self._timestamps, np.array([end], dtype="datetime64[us]"), side="right")[0]) - 1
        if first > last:
            raise PreconditionError(
                f"no date in the range has {window} returns before it (the data hold {total} prices)",
                precondition_violations=(
                    PreconditionViolation(
                        "INSUFFICIENT_HISTORY",
                        "estimation_periods",
                        f"{total} stored prices; the first decision needs {window + 1} up to it",
                    ),
                ),
            )
        simulated = self._prices[first : last + 1]
        bad = ~(np.isfinite(simulated) & (simulated > 0))
        if bad.any():
            violations = []
            for j in np.flatnonzero(bad.any(axis=0)):
                missing = np.flatnonzero(bad[:, j])
                after = first + int(missing[-1]) + 1
                since = str(self._timestamps[after].astype("datetime64[D]")) if after <= last else "never"
                violations.append(
                    PreconditionViolation(
                        "MISSING_MARKET_DATA",
                        self._symbols[j],
                        f"no price at {missing.size} simulated closes; complete from {since}",
                    )
                )
            raise PreconditionError(
                "every symbol needs a price at every simulated close: " + ", ".join(v.subject for v in violations[:20]),
                precondition_violations=tuple(violations),
            )
        self._first: int = first
        self._last: int = last
        self._day = first  # next close to simulate
        kind = settings.schedule.kind
        self._calendar: set[int] | None = None
        if kind is ScheduleKind.PERIODS:
            self._calendar = set(range(first, last + 1, settings.schedule.every_periods))
        elif kind in _PERIOD_UNITS:
            keys = _period_keys(self._timestamps[first : last + 1], kind)
            ends = np.flatnonzero(np.diff(keys) != 0) + first
            # The first day and the last observation of each period; the final period of the range may be
            # incomplete (the data cannot tell), so its last close is no decision.
            self._calendar = {first, *map(int, ends)}
        self._shares = np.zeros(n)
        self._cash = float(settings.initial_cash)
        self._target = np.zeros(n)
        self._targeted = False  # a decision has given a target
        self._constant_value = float(settings.initial_cash)
        self._pending: Decision | None = None
        self._decisions = 0
        self._failed = 0
        self._first_failure = ""
        size = last - first + 1
        self._equity = np.zeros(size)
        self._cash_path = np.zeros(size)
        self._weights = np.zeros((size, n))
        self._rebalanced = np.zeros(size, dtype=bool)
        self._turnover = np.zeros(size)
        self._costs = np.zeros(size)

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols, in the order of the weights."""
        return self._symbols

    @property
    def simulated_periods(self) -> int:
        """Closes the simulation covers (P)."""
        return self._last - self._first + 1

    @property
    def planned_decisions(self) -> int:
        """Rebalance dates of a calendar or periods schedule; 0 for a drift schedule (not known in advance)."""
        return 0 if self._calendar is None else len(self._calendar)

    def equity_at(self, index: int) -> float:
        """Simulated value at the close of calendar position ``index`` (after its trades; 0 before it is reached)."""
        return float(self._equity[index - self._first])

    def calendar_decisions(self) -> list[int]:
        """Indices of the decisions of a calendar or periods schedule, ascending (empty for ``DRIFT``)."""
        return [] if self._calendar is None else sorted(self._calendar)

    def window(self, index: int) -> ReturnHistory:
        """The estimation window of a decision at calendar position ``index``: the W returns ending there."""
        window = self._settings.estimation_periods
        prices = self._prices[index - window : index + 1]
        market = None
        if self._market is not None:
            market = returns_between_observations(self._market[index - window : index + 1, None])[:, 0]
        return ReturnHistory(
            returns=returns_between_observations(prices),
            timestamps=self._timestamps[index - window + 1 : index + 1],
            market_returns=market,
        )

    # --- stepping -----------------------------------------------------------------------------------------

    def _value(self, day: int) -> float:
        if self._settings.holding is Holding.CONSTANT_WEIGHTS:
            return self._constant_value
        return float(self._shares @ self._prices[day]) + self._cash

    def _weights_at(self, day: int) -> FloatArray:
        if self._settings.holding is Holding.CONSTANT_WEIGHTS:
            return self._target.copy()
        value = self._value(day)
        return self._shares * self._prices[day] / value if value > 0 else np.zeros_like(self._shares)

    def _record(self, day: int) -> None:
        position = day - self._first
        self._equity[position] = self._value(day)
        self._cash_path[position] = (
            self._constant_value * (1.0 - float(self._target.sum()))
            if self._settings.holding is Holding.CONSTANT_WEIGHTS
            else self._cash
        )
        self._weights[position] = self._weights_at(day)

    def _advance(self, day: int) -> None:
        """Move the holdings to the close of ``day`` (from the close before)."""
        if self._settings.holding is Holding.CONSTANT_WEIGHTS:
            returns = self._prices[day] / self._prices[day - 1] - 1.0
            self._constant_value *= 1.0 + float(self._target @ returns)

    def _breached(self, day: int) -> bool:
        schedule = self._settings.schedule
        drift = np.abs(self._weights_at(day) - self._target)
        if schedule.absolute_band is not None and bool(np.any(drift > schedule.absolute_band)):
            return True
        return schedule.relative_band is not None and bool(
            np.any(drift > schedule.relative_band * np.abs(self._target))
        )

    def _is_decision(self, day: int) -> bool:
        if day == self._first:
            return True
        if self._calendar is not None:
            return day in self._calendar
        return day < self._last and (not self._targeted or self._breached(day))

    def next_decision(self) -> Decision | None:
        """Simulate up to the next rebalance date and return it; None when the range is done.

        Raises
        ------
        RuntimeError
            The previous decision was not applied.
        """
        if self._pending is not None:
            raise RuntimeError("apply() the previous decision first")
        while self._day <= self._last:
            day = self._day
            if day > self._first:
                self._advance(day)
            if self._is_decision(day):
                self._pending = Decision(
                    index=day,
                    timestamp=self._timestamps[day],
                    window=self.window(day),
                    current_weights=self._weights_at(day),
                    number=self._decisions,
                )
                return self._pending
            self._record(day)
            self._day += 1
        return None

    def apply(self, target: FloatArray | None, *, failure: str = "") -> None:
        """Trade to ``target`` at the pending decision's close (None: keep the holdings, the optimization failed).

        Parameters
        ----------
        target : ndarray of shape (N,) or None
            Target weights (fractions of the value; the rest is cash).
        failure : str
            Why there is no target (recorded once, for the first failure).

        Raises
        ------
        RuntimeError
            No decision is pending.
        InvalidInputError
            ``target`` of the wrong shape or not finite (field ``weights``).
        """
        decision = self._pending
        if decision is None:
            raise RuntimeError("no decision is pending")
        day = decision.index
        self._decisions += 1
        if target is None:
            self._failed += 1
            self._first_failure = self._first_failure or failure or "the optimization failed"
        else:
            target = np.asarray(target, dtype=np.float64)
            if target.shape != self._shares.shape or not np.all(np.isfinite(target)):
                raise InvalidInputError.for_field("weights", f"must be {self._shares.size} finite weights")
            self._trade(day, target)
            self._targeted = True
        self._pending = None
        self._record(day)
        self._day = day + 1

    def _costs_of(self, day: int, shares: FloatArray) -> FloatArray:
        costs = self._settings.costs
        prices = self._prices[day]
        adv = None if costs.adv is None else np.asarray(costs.adv, dtype=np.float64)
        sigma = None
        if costs.impact_model is not ImpactModel.NONE:
            lookback = self._prices[max(0, day - costs.volatility_periods) : day + 1]
            returns = returns_between_observations(lookback)
            sigma = np.nan_to_num(np.nanstd(returns, axis=0, ddof=1), nan=0.0)
        per_trade = trade_cost_arrays(
            shares,
            prices,
            adv=adv if costs.impact_model is not ImpactModel.NONE else None,
            daily_volatility=sigma,
            spread_bps=costs.spread_bps,
            costs=CostModel(
                commission_per_trade=costs.commission_per_trade,
                commission_per_share=costs.commission_per_share,
                impact_model=costs.impact_model,
            ),
        )
        total: FloatArray = per_trade + costs.commission_bps * 1e-4 * np.abs(shares) * prices
        return total

    def _trade(self, day: int, target: FloatArray) -> None:
        position = day - self._first
        prices = self._prices[day]
        value = self._value(day)
        if self._settings.holding is Holding.CONSTANT_WEIGHTS:
            delta = (target - self._target) * value
            cost = float(self._costs_of(day, delta / prices).sum())
            self._turnover[position] = max(float(delta.clip(min=0).sum()), float(-delta.clip(max=0).sum())) / value
            self._constant_value = value - cost
            self._target = target.copy()
        else:
            gross = target * value / prices - self._shares
            estimate = float(self._costs_of(day, gross).sum())
            shares = target * (value - estimate) / prices
            if self._settings.whole_shares:
                shares = np.trunc(shares)
            traded = shares - self._shares
            cost = float(self._costs_of(day, traded).sum())
            if not self._settings.whole_shares:
                cost = estimate  # the targets were sized net of these costs
            flows = traded * prices
            self._turnover[position] = max(float(flows.clip(min=0).sum()), float(-flows.clip(max=0).sum())) / value
            self._cash = value - float(shares @ prices) - cost
            self._shares = shares
            self._target = target.copy()
        self._costs[position] = cost
        self._rebalanced[position] = bool(self._turnover[position] > 0 or cost > 0)

    def result(self) -> BacktestResult:
        """The simulated path and its metrics.

        Raises
        ------
        RuntimeError
            The simulation has not reached the end of its range.
        """
        if self._day <= self._last or self._pending is not None:
            raise RuntimeError("the simulation is not finished")
        timestamps = self._timestamps[self._first : self._last + 1]
        return BacktestResult(
            timestamps=timestamps,
            equity=self._equity,
            cash=self._cash_path,
            weights=self._weights,
            rebalanced=self._rebalanced,
            turnover=self._turnover,
            costs=self._costs,
            decisions=self._decisions,
            failed_decisions=self._failed,
            first_failure=self._first_failure,
            metrics=backtest_metrics(
                timestamps,
                self._equity,
                initial_value=self._settings.initial_cash,
                turnover=self._turnover,
                costs=self._costs,
                periods_per_year=self._settings.periods_per_year,
                risk_free_rate=self._settings.risk_free_rate,
            ),
        )


def backtest_metrics(
    timestamps: NDArray[np.datetime64],
    equity: FloatArray,
    *,
    initial_value: float,
    turnover: FloatArray,
    costs: FloatArray,
    periods_per_year: float = 252.0,
    risk_free_rate: float = 0.0,
) -> BacktestMetrics:
    """Summary statistics of an equity curve.

    With ``V_0`` the initial value, ``V_1 … V_P`` the closes and ``r_t = V_t / V_{t−1} − 1`` for t ≥ 2 (the daily
    returns; the first close's return is the initial trades' cost only), ``m = periods_per_year`` and ``r_f`` the
    annual risk-free rate:

    * total return ``V_P / V_0 − 1``; CAGR ``(V_P / V_0)^(1 / years) − 1`` with years = calendar days from the first
      to the last close / 365.25 (NaN when they are the same day);
    * volatility ``std(r, ddof=1) · √m``; Sharpe ``(mean(r) · m − r_f) / volatility``;
    * Sortino ``(mean(r) · m − r_f) / (√(mean(min(r − r_f / m, 0)²)) · √m)`` (downside deviation below the
      per-period risk-free rate, over all periods; Sortino & Price 1994);
    * maximum drawdown ``max_t (1 − V_t / max_{s≤t} V_s)`` over ``V_0 … V_P`` (compounded, a fraction);
      Calmar ``CAGR / max drawdown``;
    * annual turnover: the one-way turnovers summed, per year; cost drag: the costs as a fraction of the value
      before each trade, summed, per year, in basis points;
    * hit rate: the fraction of the returns ``r_t`` that are positive.

    Ratios with a zero denominator are NaN.

    Parameters
    ----------
    timestamps : ndarray of shape (P,)
        Dates of the closes.
    equity : ndarray of shape (P,)
        Values at the closes ($).
    initial_value : float
        Value before the first close's trades ($).
    turnover, costs : ndarray of shape (P,)
        One-way turnover and costs ($) of each close's trades.
    periods_per_year : float
        Observations per year.
    risk_free_rate : float
        Annual risk-free rate (decimal).

    Returns
    -------
    BacktestMetrics
        The statistics.
    """
    equity = np.asarray(equity, dtype=np.float64)
    values = np.concatenate(([initial_value], equity))
    returns = equity[1:] / equity[:-1] - 1.0
    days = float((timestamps[-1] - timestamps[0]) / np.timedelta64(1, "D")) if len(timestamps) else 0.0
    years = days / 365.25
    total = float(values[-1] / values[0] - 1.0)
    cagr = float((values[-1] / values[0]) ** (1.0 / years) - 1.0) if years > 0 and values[-1] > 0 else math.nan
    m = periods_per_year
    mean = float(returns.mean()) * m if returns.size else math.nan
    volatility = float(returns.std(ddof=1)) * math.sqrt(m) if returns.size > 1 else math.nan
    downside = (
        math.sqrt(float(np.mean(np.minimum(returns - risk_free_rate / m, 0.0) ** 2))) * math.sqrt(m)
        if returns.size
        else math.nan
    )
    peak = np.maximum.accumulate(values)
    drawdown = float(np.max(1.0 - values / peak))

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator > 0 and math.isfinite(numerator) else math.nan

    before = equity + np.asarray(costs)  # value before each close's trade costs
    return BacktestMetrics(
        total_return=total,
        cagr=cagr,
        volatility=volatility,
        sharpe_ratio=ratio(mean - risk_free_rate, volatility),
        sortino_ratio=ratio(mean - risk_free_rate, downside),
        max_drawdown=drawdown,
        calmar_ratio=ratio(cagr, drawdown),
        annual_turnover=float(np.sum(turnover)) / years if years > 0 else math.nan,
        cost_drag_bps=float(np.sum(np.asarray(costs) / before)) / years * 1e4 if years > 0 else math.nan,
        hit_rate=float(np.mean(returns > 0)) if returns.size else math.nan,
        total_costs=float(np.sum(costs)),
        final_value=float(values[-1]),
    )


Optimizer = Callable[[Decision], FloatArray]
"""``decision -> target weights (N,)``; raise ``services.errors.StratoptError`` when there is no answer."""


def run_backtest(
    prices: FloatArray,
    timestamps: NDArray[np.datetime64],
    settings: BacktestSettings,
    optimize: Optimizer,
    *,
    start: np.datetime64 | None = None,
    end: np.datetime64 | None = None,
    market_prices: FloatArray | None = None,
    symbols: tuple[str, ...] = (),
) -> BacktestResult:
    """Run a whole walk-forward backtest in this process (see :class:`WalkForward` for the parameters).

    Parameters
    ----------
    optimize : callable
        ``Decision -> weights``: sees only the decision's window; a ``StratoptError`` it raises is recorded as a
        failed decision (the holdings are kept) and the simulation goes on.

    Returns
    -------
    BacktestResult
        The simulated path and metrics.
    """
    walk = WalkForward(prices, timestamps, settings, start=start, end=end, market_prices=market_prices, symbols=symbols)
    while (decision := walk.next_decision()) is not None:
        try:
            weights = optimize(decision)
        except StratoptError as exc:
            walk.apply(None, failure=f"{np.datetime_as_string(decision.timestamp, unit='D')}: {exc}")
            continue
        walk.apply(weights)
    return walk.result()
