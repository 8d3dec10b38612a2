"""One rotation cycle as a pure function: prices and scores → z → engine (greedy or QP) → policy → orders.

What ``RunRotationCycle`` will run for each enabled rotation configuration (the service part, with storage, is
still to come): σ from the stored prices (``SignalSettings.volatility``), risk-scaled z-scores, the configured
engine's target with its reasons, the policy's TRADE or HOLD, and the orders for the names the policy lets
trade. No order leaves a HOLD, so the kill-switch (a HOLD before every other check) blocks every engine's orders.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

import numpy as np
import pandas as pd

from services.errors import InvalidInputError
from services.rotation._greedy import (
    HELD_WEIGHT,
    Action,
    GreedyRotationParams,
    ReasonCode,
    RotationChange,
    RotationInputs,
    greedy_rotation,
)
from services.rotation._policy import PolicyAction, PolicyDecision, PolicySettings, evaluate_policy
from services.rotation._qp import QpRotationInputs, QpRotationParams, qp_rotation
from services.rotation._signals import (
    CorrelationTarget,
    SignalSettings,
    average_true_range,
    risk_scaled_z,
    shrunk_correlation,
    signal_volatility,
)
from services.types import FloatArray

MIN_ORDER_WEIGHT = 1e-9
"""Weight changes smaller than this make no order."""


class Engine(enum.StrEnum):
    """The decision engine of a rotation configuration (switchable at run time)."""

    GREEDY = "GREEDY"
    QP = "QP"


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationConfig:
    """Everything a cycle needs besides the data; every part defaults to the specification's values."""

    engine: Engine = Engine.GREEDY
    greedy: GreedyRotationParams = field(default_factory=GreedyRotationParams)
    qp: QpRotationParams = field(default_factory=QpRotationParams)
    signals: SignalSettings = field(default_factory=SignalSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    correlation_target: CorrelationTarget = CorrelationTarget.LEDOIT_WOLF


@dataclass(frozen=True, slots=True)
class Order:
    """An order the cycle emits: the weight to trade (fraction of portfolio value, > 0) and the engine's reason."""

    symbol: str
    side: str
    """``BUY`` or ``SELL``."""
    weight: float
    reason: ReasonCode


@dataclass(frozen=True, slots=True)
class CycleDecision:
    """A cycle's outcome.

    Attributes
    ----------
    engine : Engine
    z : ndarray, shape (N,)
        The risk-scaled z-scores the engine ranked.
    target_weights : ndarray, shape (N,)
        The engine's target (fractions of portfolio value).
    changes : tuple of RotationChange
        The engine's reasons per name.
    policy : PolicyDecision
        TRADE or HOLD with every trigger's state.
    orders : tuple of Order
        Orders for the names the policy lets trade (none on HOLD).
    """

    engine: Engine
    z: FloatArray
    target_weights: FloatArray
    changes: tuple[RotationChange, ...]
    policy: PolicyDecision
    orders: tuple[Order, ...]


def run_cycle(
    *,
    now: datetime,
    symbols: tuple[str, ...],
    prices: FloatArray,
    scores: FloatArray,
    current_weights: FloatArray,
    config: RotationConfig | None = None,
    kill_switch: bool = False,
    costs_bps: FloatArray | None = None,
    betas: FloatArray | None = None,
    sectors: tuple[str, ...] = (),
    entry_prices: FloatArray | None = None,
    minutes_held: FloatArray | None = None,
    adv_value: FloatArray | None = None,
    portfolio_value: float | None = None,
    volatility_ratio: float | None = None,
    spreads_bps: FloatArray | None = None,
    normal_spreads_bps: FloatArray | None = None,
) -> CycleDecision:
    """Run one rotation cycle (module docstring).

    Parameters
    ----------
    now : datetime
        Decision time, time zone aware.
    symbols : tuple of str, length N
    prices : ndarray, shape (T, N)
        Closing prices, oldest first (σ, ATR, the correlation, the last price).
    scores : ndarray, shape (N,) or (H, N)
        Raw model scores (one row per horizon).
    current_weights : ndarray, shape (N,)
        Fractions of portfolio value.
    config : RotationConfig, optional
    kill_switch : bool
        A kill-switch (global or this portfolio's) is on.
    costs_bps, betas, sectors, entry_prices, minutes_held, adv_value, portfolio_value
        As the engines take them (``RotationInputs``, ``QpRotationInputs``).
    volatility_ratio, spreads_bps, normal_spreads_bps
        As ``evaluate_policy`` takes them.

    Returns
    -------
    CycleDecision

    Raises
    ------
    InvalidInputError
        From the signals, the engines or the policy, naming the field.
    InfeasibleError
        The QP's limits admit no portfolio from the current weights.
    """
    c = config or RotationConfig()
    prices = np.asarray(prices, dtype=np.float64)
    if prices.ndim != 2 or prices.shape[1] != len(symbols):
        raise InvalidInputError.for_field("prices", f"needs shape (T, {len(symbols)}), got {prices.shape}")
    current = np.asarray(current_weights, dtype=np.float64)
    z = risk_scaled_z(scores, signal_volatility(prices, c.signals), c.signals)
    last = pd.DataFrame(prices).ffill().iloc[-1].to_numpy(dtype=np.float64)
    if c.engine is Engine.GREEDY:
        greedy = greedy_rotation(
            RotationInputs(
                symbols=symbols,
                z=z,
                current_weights=current,
                costs_bps=costs_bps,
                prices=last,
                entry_prices=entry_prices,
                atr=average_true_range(prices, c.signals.atr_periods),
                minutes_held=minutes_held,
                adv_value=adv_value,
                portfolio_value=portfolio_value,
            ),
            c.greedy,
        )
        target, changes = greedy.target_weights, greedy.changes
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            returns = pd.DataFrame(prices).pct_change(fill_method=None).iloc[1:].to_numpy(dtype=np.float64)
        qp = qp_rotation(
            QpRotationInputs(
                symbols=symbols,
                z=z,
                correlation=shrunk_correlation(returns, c.correlation_target),
                current_weights=current,
                costs_bps=costs_bps,
                betas=betas,
                sectors=sectors,
            ),
            c.qp,
        )
        target, changes = qp.target_weights, qp.changes
    policy = evaluate_policy(
        now=now,
        symbols=symbols,
        target_weights=target,
        current_weights=current,
        settings=c.policy,
        kill_switch=kill_switch,
        volatility_ratio=volatility_ratio,
        spreads_bps=spreads_bps,
        normal_spreads_bps=normal_spreads_bps,
    )
    if policy.blocked_spread:
        changes = _spread_blocked(changes, policy.blocked_spread, spreads_bps, normal_spreads_bps, symbols)
    orders: list[Order] = []
    if policy.action is PolicyAction.TRADE:
        reasons = {change.symbol: change.reason for change in changes}
        for i in np.flatnonzero(policy.tradable):
            delta = float(target[i] - current[i])
            if abs(delta) > MIN_ORDER_WEIGHT:
                side = "BUY" if delta > 0 else "SELL"
                orders.append(Order(symbols[i], side, abs(delta), reasons.get(symbols[i], ReasonCode.QP_UTILITY)))
    return CycleDecision(c.engine, z, target, changes, policy, tuple(orders))


def _spread_blocked(
    changes: tuple[RotationChange, ...],
    blocked: tuple[str, ...],
    spreads_bps: FloatArray | None,
    normal_spreads_bps: FloatArray | None,
    symbols: tuple[str, ...],
) -> tuple[RotationChange, ...]:
    """The engine's changes with each spread-blocked name's reason set to ``BLOCKED_SPREAD``.

    Its action becomes HOLD if held, else NONE, and its spread and normal spread (basis points) join the numbers.
    A name the policy blocks drifts, so the engine gave it a change.
    """
    assert spreads_bps is not None  # the policy blocks only with both
    assert normal_spreads_bps is not None
    index = {s: i for i, s in enumerate(symbols)}

    def marked(change: RotationChange) -> RotationChange:
        i = index[change.symbol]
        numbers = {**change.numbers, "spread_bps": float(spreads_bps[i]),
                   "normal_spread_bps": float(normal_spreads_bps[i])}  # fmt: skip
        action = Action.HOLD if abs(change.current_weight) > HELD_WEIGHT else Action.NONE
        return replace(change, action=action, reason=ReasonCode.BLOCKED_SPREAD, numbers=MappingProxyType(numbers))

    return tuple(marked(c) if c.symbol in blocked else c for c in changes)
