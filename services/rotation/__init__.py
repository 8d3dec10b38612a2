"""Rotation: the intraday decision engine that turns risk-scaled scores into target weights with reasons.

Greedy top-K rotation with hysteresis, rotation thresholds, stops, dead-money cuts, caps, liquidity and no-trade
bands (``_greedy``). Public names only; the implementation lives in the private modules.
"""

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

__all__ = [
    "HELD_WEIGHT",
    "Action",
    "GreedyRotationParams",
    "ReasonCode",
    "RotationChange",
    "RotationDecision",
    "RotationInputs",
    "greedy_rotation",
]
