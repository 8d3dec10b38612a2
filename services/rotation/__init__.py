"""Rotation: the intraday decision engine that turns risk-scaled scores into target weights with reasons.

Signals: raw scores to risk-scaled z-scores, σ (EWMA or ATR), shrunk correlation (``_signals``). Greedy top-K
rotation with hysteresis, rotation thresholds, stops, dead-money cuts, caps, liquidity and no-trade bands
(``_greedy``). The QP rotation on the mean-variance engine, with reasons from the solution (``_qp``). The
policy layer: triggers, exchange windows, risk overrides, the kill-switch (``_policy``). One cycle, prices and
scores to orders (``_cycle``). Public names only; the implementation lives in the private modules.
"""

from services.rotation._cycle import CycleDecision, Engine, Order, RotationConfig, run_cycle
from services.rotation._greedy import (
    HELD_WEIGHT,
    Action,
    GreedyRotationParams,
    ReasonCode,
    RotationChange,
    RotationDecision,
    RotationInputs,
    greedy_rotation,
)
from services.rotation._policy import (
    DEFAULT_WINDOWS,
    PolicyAction,
    PolicyDecision,
    PolicyReason,
    PolicySettings,
    TriggerState,
    evaluate_policy,
    exchange_calendar,
    open_window,
)
from services.rotation._qp import QpRotationDecision, QpRotationInputs, QpRotationParams, qp_rotation, rotation_problem
from services.rotation._signals import (
    CorrelationTarget,
    SignalSettings,
    VolatilityModel,
    average_true_range,
    ewma_volatility,
    risk_scaled_z,
    shrunk_correlation,
    signal_volatility,
)

__all__ = [
    "DEFAULT_WINDOWS",
    "HELD_WEIGHT",
    "Action",
    "CorrelationTarget",
    "CycleDecision",
    "Engine",
    "GreedyRotationParams",
    "Order",
    "PolicyAction",
    "PolicyDecision",
    "PolicyReason",
    "PolicySettings",
    "QpRotationDecision",
    "QpRotationInputs",
    "QpRotationParams",
    "ReasonCode",
    "RotationChange",
    "RotationConfig",
    "RotationDecision",
    "RotationInputs",
    "SignalSettings",
    "TriggerState",
    "VolatilityModel",
    "average_true_range",
    "evaluate_policy",
    "ewma_volatility",
    "exchange_calendar",
    "greedy_rotation",
    "open_window",
    "qp_rotation",
    "risk_scaled_z",
    "rotation_problem",
    "run_cycle",
    "shrunk_correlation",
    "signal_volatility",
]
