"""The rotation application service: signals, configurations, kill-switches and cycles.

A cycle (``RunRotationCycle``, or the scheduler) reads what it needs from the stores — the configuration, the
stored closing prices up to ``as_of``, the portfolio's holdings (the trading side's snapshot: shares, tax lots,
cash), the latest signals — runs ``services.rotation.run_cycle`` in a solver worker, sizes the orders in whole
shares, and stores the decision, its event and its orders in one transaction (``command_side.rotation_store``),
where the kill-switch is checked again under its lock.

Inputs derived from the holdings: the current weights (the expected position — shares held plus what open BUY
orders still buy, less what open SELL orders still sell, read with the holdings in one snapshot — at the last
stored price, over the value held now, cash included), the shares a SELL may sell (held less open sells), the
entry price of a held name (its lots' share-weighted cost basis) and how long it has been
held (minutes since its earliest lot was acquired; lots without a date leave the dead-money rule off). Holdings
outside the universe count in the portfolio value and are left alone.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from command_side.optimization_store import OptimizationStore
from command_side.rotation_model import (
    ChangeRecord,
    DecisionRecord,
    KillSwitchState,
    OrderRecord,
    RotationPortfolioConfig,
    TriggerRecord,
    order_id,
)
from command_side.rotation_store import GLOBAL_SCOPE, PostgresRotationStore
from command_side.trading_store import TradingStore
from command_side.workers import SolverPool
from services.errors import InvalidInputError, NotFoundError, PreconditionError
from services.rotation import CycleDecision, PolicyReason, ewma_volatility

VOLATILITY_SHORT_PERIODS = 10
"""The volatility spike compares the σ of the market's last this-many returns with its σ over the window."""
MAX_SIGNALS_PER_MESSAGE = 10_000
MAX_QUOTES_PER_MESSAGE = 10_000


@dataclass(frozen=True, slots=True)
class RunCycle:
    """Run one cycle of a portfolio's configuration (``RunRotationCycle``)."""

    portfolio_id: str
    as_of: datetime | None
    """Decision time (UTC); None = now."""
    request_id: str = ""
    decided_by: str = ""
    """The authenticated principal, or ``scheduler``."""

    def request_hash(self) -> str:
        """What a replay of the same ``request_id`` must match."""
        stamp = "" if self.as_of is None else self.as_of.astimezone(UTC).isoformat()
        return hashlib.sha256(f"{self.portfolio_id}|{stamp}".encode()).hexdigest()


def held_by_switch(decision: DecisionRecord, switch: KillSwitchState) -> DecisionRecord:
    """The HOLD a decision becomes when a kill-switch is engaged: no orders, the KILL_SWITCH trigger fired."""
    triggers = tuple(t for t in decision.triggers if t.name != "KILL_SWITCH")
    return replace(
        decision,
        action="HOLD",
        policy_reason=PolicyReason.KILL_SWITCH.value,
        triggers=(TriggerRecord(name="KILL_SWITCH", fired=True), *triggers),
        orders=(),
    )


def _optional(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


class RotationService:
    """Signals, configurations, kill-switches and cycles over the rotation, price and holdings stores.

    Parameters
    ----------
    store : PostgresRotationStore
        Signals, configurations, kill-switches, decisions and the order outbox.
    prices : OptimizationStore
        Stored market data (``load_prices``).
    trading : TradingStore
        Prices of held names outside the universe (the holdings are read with the open orders from ``store``).
    pool : SolverPool
        The solver workers (a QP cycle at N = 300 takes about 0.2 s).
    """

    def __init__(
        self, store: PostgresRotationStore, prices: OptimizationStore, trading: TradingStore, pool: SolverPool
    ) -> None:
        self._store = store
        self._prices = prices
        self._trading = trading
        self._pool = pool

    # --- signals, configurations, switches ---------------------------------------------------------------------

    async def ingest_signals(self, signal_set: str, rows: Sequence[tuple[str, str, datetime, float]]) -> int:
        """Upsert one message of signals; the rows written."""
        return await self._store.ingest_signals(signal_set, rows)

    async def ingest_quotes(self, rows: Sequence[tuple[str, datetime, float, float]]) -> int:
        """Upsert ``(symbol, time, bid, ask)`` quotes in one transaction; the rows written."""
        return await self._store.ingest_quotes(rows)

    async def upsert_configuration(self, config: RotationPortfolioConfig) -> tuple[RotationPortfolioConfig, bool]:
        """Store a configuration (a new version when its content changed) and return it with its version."""
        return await self._store.upsert_configuration(config)

    async def set_kill_switch(
        self, portfolio_id: str, *, engaged: bool, reason: str, changed_by: str
    ) -> KillSwitchState:
        """Engage or release the global switch (``portfolio_id`` '') or a portfolio's."""
        return await self._store.set_kill_switch(
            portfolio_id or GLOBAL_SCOPE, engaged=engaged, changed_by=changed_by, reason=reason
        )

    async def pause_scheduler(self, paused: bool, *, reason: str, changed_by: str) -> KillSwitchState:
        """Pause or resume the rotation scheduler (``command_side.rotation_scheduler``) on every replica."""
        return await self._store.set_scheduler_paused(paused=paused, changed_by=changed_by, reason=reason)

    # --- cycles --------------------------------------------------------------------------------------------------

    async def run_cycle(self, command: RunCycle, *, time_remaining_s: float | None) -> tuple[DecisionRecord, bool]:
        """Run and store one cycle; ``(decision, replayed)``.

        Raises
        ------
        NotFoundError
            The portfolio has no rotation configuration.
        PreconditionError
            The configuration is disabled; the portfolio has no holdings; prices or fresh signals are missing;
            ``request_id`` was used for another request; the QP's limits admit no portfolio (InfeasibleError).
        """
        if command.request_id:
            found = await self._store.find_decision(command.portfolio_id, command.request_id)
            if found is not None:
                stored_hash, stored = found
                if stored_hash != command.request_hash():
                    raise PreconditionError("request_id was already used for a different RunRotationCycle request")
                return stored, True
        config = await self._store.get_configuration(command.portfolio_id)
        if config is None:
            raise NotFoundError(f"portfolio {command.portfolio_id!r} has no rotation configuration")
        if not config.enabled:
            raise PreconditionError(f"the rotation configuration of {command.portfolio_id!r} is disabled")
        as_of = command.as_of or datetime.now(UTC)
        with self._pool.admitted():
            inputs = await self._cycle_inputs(config, as_of)
            timeout = None if time_remaining_s is None else max(0.001, time_remaining_s - 0.05)
            cycle = await self._pool.rotation_cycle(inputs.arguments, timeout_s=timeout)
            record = decision_record(
                cycle,
                config=config,
                decision_id=str(uuid.uuid4()),
                as_of=as_of,
                portfolio_value=inputs.value,
                prices=inputs.prices,
                current_weights=inputs.arguments["current_weights"],
                request_id=command.request_id,
                decided_by=command.decided_by,
                sellable=inputs.sellable,
            )
            stored = await self._store.store_decision(
                record, request_hash=command.request_hash(), held_by_switch=held_by_switch
            )
        return stored, False

    async def _cycle_inputs(self, config: RotationPortfolioConfig, as_of: datetime) -> _CycleInputs:
        """``run_cycle``'s keyword arguments, the portfolio value, the universe's last prices and what is sellable.

        The current weights are those of the *expected* position, ``held + open buys - open sells`` at the last
        price, over the value of what is held now (cash plus held shares at the last price: an open order at the
        last price moves value between cash and shares and changes neither). A cycle that runs before the last
        cycle's orders fill so plans from where those orders will leave the portfolio, and does not buy again
        what they are still buying.
        """
        symbols = config.symbols
        window = await self._prices.load_prices(
            symbols,
            start=None,
            end=as_of,
            lookback_periods=config.lookback_periods,
            market_symbol=config.market_symbol,
        )
        prices = np.asarray(window.prices, dtype=np.float64)
        last = pd.DataFrame(prices).ffill().iloc[-1].to_numpy(dtype=np.float64)
        book = await self._store.position_book(config.portfolio_id)
        holdings = book.holdings
        if holdings is None:
            raise PreconditionError(f"portfolio {config.portfolio_id!r} has no holdings (UpsertHoldings)")
        index = {s: i for i, s in enumerate(symbols)}
        outside = [p.symbol for p in holdings.positions if p.symbol not in index and p.shares > 0]
        outside_prices = await self._trading.latest_prices(outside, at_or_before=as_of) if outside else {}
        unpriced = [s for s in outside if s not in outside_prices]
        if unpriced:
            raise PreconditionError(f"no stored price at or before as_of for held symbols {', '.join(unpriced)}")
        n = len(symbols)
        shares, entry, minutes = np.zeros(n), np.full(n, np.nan), np.full(n, np.nan)
        value = holdings.cash + sum(
            p.shares * outside_prices[p.symbol] for p in holdings.positions if p.symbol in outside_prices
        )
        for position in holdings.positions:
            i = index.get(position.symbol)
            if i is None:
                continue
            shares[i] = position.shares
            lots = [lot for lot in position.lots if lot.shares > 0]
            if lots:
                entry[i] = sum(lot.shares * lot.cost_basis for lot in lots) / sum(lot.shares for lot in lots)
                dated = [lot.acquired for lot in lots if lot.acquired is not None]
                if dated:
                    minutes[i] = max(0.0, (as_of - min(dated)).total_seconds() / 60.0)
        value += float(shares @ np.nan_to_num(last))
        if not value > 0:
            raise PreconditionError(f"portfolio {config.portfolio_id!r} has no value (no cash and no priced holdings)")
        pending = np.array([book.open_buys.get(s, 0.0) - book.open_sells.get(s, 0.0) for s in symbols])
        current = (shares + pending) * np.nan_to_num(last) / value
        sellable = {s: float(shares[i]) - book.open_sells.get(s, 0.0) for i, s in enumerate(symbols)}

        horizons = config.horizons
        found = await self._store.latest_signals(
            config.signal_set,
            symbols,
            horizons,
            as_of=as_of,
            max_age=timedelta(minutes=config.max_signal_age_minutes),
        )
        missing = sorted({s for s in symbols for h in horizons if (s, h) not in found})
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise PreconditionError(
                f"no signal of set {config.signal_set!r} within {config.max_signal_age_minutes:g} minutes before "
                f"as_of for {shown}"
            )
        scores = np.array([[found[(s, h)][1] for s in symbols] for h in horizons])

        members = config.universe
        adv = None
        if any(m.average_daily_value is not None for m in members):
            adv = np.array([np.nan if m.average_daily_value is None else m.average_daily_value for m in members])
        market = None if window.market_prices is None else np.asarray(window.market_prices, dtype=np.float64)
        arguments: dict[str, Any] = {
            "now": as_of,
            "symbols": symbols,
            "prices": prices,
            "scores": scores,
            "current_weights": current,
            "config": config.cycle,
            "kill_switch": any(s.engaged for s in await self._store.kill_switches(config.portfolio_id)),
            "costs_bps": np.array([m.cost_bps for m in members]),
            "betas": _betas(members, prices, market),
            "sectors": tuple(m.sector for m in members) if any(m.sector for m in members) else (),
            "entry_prices": entry,
            "minutes_held": minutes,
            "adv_value": adv,
            "portfolio_value": value,
            "volatility_ratio": _volatility_ratio(market),
        }
        spreads = await self._store.spreads(
            symbols,
            as_of=as_of,
            max_age=timedelta(minutes=config.max_quote_age_minutes),
            lookback=timedelta(days=config.spread_lookback_days),
        )
        if spreads:
            # Names without a current quote get NaN: the policy does not check them.
            arguments["spreads_bps"] = np.array([spreads.get(s, (np.nan, np.nan))[0] for s in symbols])
            arguments["normal_spreads_bps"] = np.array([spreads.get(s, (np.nan, np.nan))[1] for s in symbols])
        return _CycleInputs(arguments=arguments, value=value, prices=last, sellable=sellable)


@dataclass(frozen=True, slots=True)
class _CycleInputs:
    """What a cycle is decided and stored from.

    ``run_cycle``'s arguments, the value ($), the universe's last prices ($, shape (N,)) and the shares each name
    may still sell (held less what open SELL orders sell).
    """

    arguments: dict[str, Any]
    value: float
    prices: np.ndarray
    sellable: dict[str, float]


def _returns(prices: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(pd.DataFrame(prices).pct_change(fill_method=None).iloc[1:].to_numpy(dtype=np.float64))


def _betas(members: Sequence[Any], prices: np.ndarray, market: np.ndarray | None) -> np.ndarray | None:
    """Each member's beta: its own, else cov(r_i, r_m) / var(r_m) over the window's complete rows.

    None when a member has no beta and there is no market series.
    """
    given = np.array([np.nan if m.beta is None else m.beta for m in members])
    if np.all(np.isfinite(given)):
        return given
    if market is None:
        return None
    r = _returns(prices)
    rm = _returns(market[:, None])[:, 0]
    estimated = np.empty(len(members))
    for i in range(len(members)):
        ok = np.isfinite(r[:, i]) & np.isfinite(rm)
        if ok.sum() < 3 or not np.var(rm[ok]) > 0:
            raise PreconditionError(f"too few prices to estimate the beta of {members[i].symbol}")
        estimated[i] = np.cov(r[ok, i], rm[ok])[0, 1] / np.var(rm[ok], ddof=1)
    return np.where(np.isfinite(given), given, estimated)


def _volatility_ratio(market: np.ndarray | None) -> float | None:
    """σ of the market's last ``VOLATILITY_SHORT_PERIODS`` returns over its σ in the window; None without one."""
    if market is None:
        return None
    rm = _returns(market[:, None])[:, 0]
    rm = rm[np.isfinite(rm)]
    if rm.size < 2 * VOLATILITY_SHORT_PERIODS:
        return None
    long = float(ewma_volatility(rm[:, None], span=max(2, rm.size))[0])
    short = float(np.std(rm[-VOLATILITY_SHORT_PERIODS:], ddof=1))
    return short / long if long > 0 else None


def decision_record(
    cycle: CycleDecision,
    *,
    config: RotationPortfolioConfig,
    decision_id: str,
    as_of: datetime,
    portfolio_value: float,
    prices: np.ndarray,
    current_weights: np.ndarray,
    request_id: str,
    decided_by: str,
    sellable: Mapping[str, float] | None = None,
) -> DecisionRecord:
    """The stored form of a cycle's outcome, with its orders in whole shares.

    An order's shares are ``floor(weight × portfolio_value / price)`` (never more than the weight change); a sale
    is also at most ``sellable[symbol]``, the shares held less those open SELL orders have still to sell (the
    account holds no short positions: a target below zero, which the QP engine allows, sells the holding and no
    more; a name not held is not sold); an order that rounds to 0 shares is dropped.
    """
    index = {s: i for i, s in enumerate(config.symbols)}
    orders = []
    for order in cycle.orders:
        price = float(prices[index[order.symbol]])
        if not price > 0:
            raise InvalidInputError.for_field("prices", f"no positive price for {order.symbol}")
        shares = math.floor(order.weight * portfolio_value / price + 1e-9)
        if order.side == "SELL" and sellable is not None:
            shares = min(shares, math.floor(sellable.get(order.symbol, 0.0) + 1e-6))
        if shares <= 0:
            continue
        orders.append(
            OrderRecord(
                order_id=order_id(decision_id, order.symbol),
                symbol=order.symbol,
                side=order.side,
                shares=float(shares),
                weight=float(order.weight),
                reference_price=price,
                reason=order.reason.value,
            )
        )
    target = np.asarray(cycle.target_weights)
    return DecisionRecord(
        decision_id=decision_id,
        portfolio_id=config.portfolio_id,
        configuration_version=config.version,
        as_of=as_of,
        decided_at=None,
        engine=cycle.engine.value,
        action=cycle.policy.action.value,
        policy_reason=cycle.policy.reason.value,
        triggers=tuple(
            TriggerRecord(name=t.name, fired=t.fired, value=_optional(t.value), threshold=_optional(t.threshold))
            for t in cycle.policy.triggers
        ),
        changes=tuple(
            ChangeRecord(
                symbol=c.symbol,
                action=c.action.value,
                reason=c.reason.value,
                rank=c.rank,
                z=float(c.z),
                current_weight=float(c.current_weight),
                target_weight=float(c.target_weight),
                numbers={k: float(v) for k, v in c.numbers.items()},
            )
            for c in cycle.changes
        ),
        orders=tuple(orders),
        portfolio_value=portfolio_value,
        turnover=float(np.abs(target - np.asarray(current_weights)).sum() / 2.0),
        request_id=request_id,
        decided_by=decided_by,
    )
