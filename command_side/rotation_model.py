"""The rotation side's write model: configurations, kill-switches, decisions and orders, with their stored JSON.

Stored documents carry ``schema_version`` (:data:`SCHEMA_VERSION`); the engine's parameters are
``services.rotation``'s dataclasses, stored field by field under their own names, so a stored configuration reads
back into exactly the parameters it was run with. Units follow ``stratopt.v1.RotationConfiguration``: weights are
fractions of portfolio value, costs basis points, times UTC.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from command_side.result_records import SchemaError
from services.rotation import (
    CorrelationTarget,
    Engine,
    GreedyRotationParams,
    PolicySettings,
    QpRotationParams,
    RotationConfig,
    SignalSettings,
    VolatilityModel,
)

SCHEMA_VERSION = 1
"""Version of the stored rotation documents."""

DEFAULT_LOOKBACK_PERIODS = 256
"""Closing prices read for σ, ATR and the correlation when a configuration says 0."""
DEFAULT_INTERVAL_MINUTES = 5
"""Minutes between scheduled cycles when a configuration says 0."""
DEFAULT_MAX_SIGNAL_AGE_MINUTES = 1440.0
DEFAULT_MAX_QUOTE_AGE_MINUTES = 15.0
"""A quote older than this at the decision time is not a name's current spread (minutes)."""
DEFAULT_SPREAD_LOOKBACK_DAYS = 20
"""Days of quotes whose median spread is a name's normal spread."""
"""A score older than this at the decision time is stale."""
ORDER_NAMESPACE = uuid.UUID("6f1d3c1e-2b7a-4a51-9a43-3f0c5e2d9b10")
"""uuid5 namespace of order ids: ``uuid5(ORDER_NAMESPACE, f"{source_id}:{symbol}")``."""


@dataclass(frozen=True, slots=True)
class RotationMember:
    """One name of a rotation universe."""

    symbol: str
    sector: str = ""
    """Sector label for the QP's sector caps ('' = none)."""
    cost_bps: float = 0.0
    """One-way cost of trading it (basis points of the traded value)."""
    beta: float | None = None
    """Beta against the market; None = estimated from stored prices when the configuration has a market symbol."""
    average_daily_value: float | None = None
    """Average daily traded value ($); None = no participation cap."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationPortfolioConfig:
    """A portfolio's rotation configuration (``stratopt.v1.RotationConfiguration`` with every default filled)."""

    portfolio_id: str
    enabled: bool = True
    universe: tuple[RotationMember, ...]
    signal_set: str
    horizons: tuple[str, ...] = ("",)
    """Horizon names whose scores are combined (``cycle.signals.horizon_weights`` weighs them)."""
    lookback_periods: int = DEFAULT_LOOKBACK_PERIODS
    market_symbol: str = ""
    interval_minutes: int = DEFAULT_INTERVAL_MINUTES
    max_signal_age_minutes: float = DEFAULT_MAX_SIGNAL_AGE_MINUTES
    max_quote_age_minutes: float = DEFAULT_MAX_QUOTE_AGE_MINUTES
    """The spread-blowout check's current quote: the latest within this many minutes before the decision."""
    spread_lookback_days: int = DEFAULT_SPREAD_LOOKBACK_DAYS
    """The spread-blowout check's normal spread: the median over this many days of quotes before the decision."""
    cycle: RotationConfig = field(default_factory=RotationConfig)
    version: int = 0
    """Stored version (0 before it is stored)."""

    @property
    def symbols(self) -> tuple[str, ...]:
        """The universe's symbols, in order."""
        return tuple(m.symbol for m in self.universe)

    def content(self) -> dict[str, Any]:
        """The stored JSON document (everything but the version)."""
        c = self.cycle
        return {
            "schema_version": SCHEMA_VERSION,
            "portfolio_id": self.portfolio_id,
            "enabled": self.enabled,
            "universe": [asdict(m) for m in self.universe],
            "signal_set": self.signal_set,
            "horizons": list(self.horizons),
            "lookback_periods": self.lookback_periods,
            "market_symbol": self.market_symbol,
            "interval_minutes": self.interval_minutes,
            "max_signal_age_minutes": self.max_signal_age_minutes,
            "engine": c.engine.value,
            "correlation_target": c.correlation_target.value,
            "greedy": asdict(c.greedy),
            "qp": asdict(c.qp),
            "signals": {
                "volatility": c.signals.volatility.value,
                "ewma_span": c.signals.ewma_span,
                "atr_periods": c.signals.atr_periods,
                "winsor_limit": c.signals.winsor_limit,
                "horizon_weights": None if c.signals.horizon_weights is None else list(c.signals.horizon_weights),
            },
            "policy": {
                "portfolio_drift_trigger": c.policy.portfolio_drift_trigger,
                "name_drift_trigger": c.policy.name_drift_trigger,
                "windows": [w.strftime("%H:%M") for w in c.policy.windows],
                "window_minutes": c.policy.window_minutes,
                "calendar": c.policy.calendar,
                "vol_spike_ratio": c.policy.vol_spike_ratio,
                "spread_blowout_ratio": c.policy.spread_blowout_ratio,
                "max_quote_age_minutes": self.max_quote_age_minutes,
                "spread_lookback_days": self.spread_lookback_days,
            },
        }

    def content_hash(self) -> str:
        """sha256 of the content (hex) minus ``enabled``: what decides whether an upsert is a new version."""
        return hashlib.sha256(_canonical(self.content())).hexdigest()

    @classmethod
    def from_content(cls, payload: Mapping[str, Any], *, version: int) -> RotationPortfolioConfig:
        """The configuration of a stored document.

        Raises
        ------
        SchemaError
            When the document is not of :data:`SCHEMA_VERSION`.
        """
        _check_version(payload, "rotation configuration")
        s, p = payload["signals"], payload["policy"]
        weights = s["horizon_weights"]
        return cls(
            portfolio_id=payload["portfolio_id"],
            enabled=bool(payload["enabled"]),
            universe=tuple(RotationMember(**m) for m in payload["universe"]),
            signal_set=payload["signal_set"],
            horizons=tuple(payload["horizons"]),
            lookback_periods=int(payload["lookback_periods"]),
            market_symbol=payload["market_symbol"],
            interval_minutes=int(payload["interval_minutes"]),
            max_signal_age_minutes=float(payload["max_signal_age_minutes"]),
            # Documents stored before the quotes (migration 0016) lack these: the defaults.
            max_quote_age_minutes=float(p.get("max_quote_age_minutes", DEFAULT_MAX_QUOTE_AGE_MINUTES)),
            spread_lookback_days=int(p.get("spread_lookback_days", DEFAULT_SPREAD_LOOKBACK_DAYS)),
            cycle=RotationConfig(
                engine=Engine(payload["engine"]),
                correlation_target=CorrelationTarget(payload["correlation_target"]),
                greedy=GreedyRotationParams(**payload["greedy"]),
                qp=QpRotationParams(**payload["qp"]),
                signals=SignalSettings(
                    volatility=VolatilityModel(s["volatility"]),
                    ewma_span=int(s["ewma_span"]),
                    atr_periods=int(s["atr_periods"]),
                    winsor_limit=float(s["winsor_limit"]),
                    horizon_weights=None if weights is None else tuple(float(w) for w in weights),
                ),
                policy=PolicySettings(
                    portfolio_drift_trigger=float(p["portfolio_drift_trigger"]),
                    name_drift_trigger=float(p["name_drift_trigger"]),
                    windows=tuple(time.fromisoformat(w) for w in p["windows"]),
                    window_minutes=float(p["window_minutes"]),
                    calendar=p["calendar"],
                    vol_spike_ratio=float(p["vol_spike_ratio"]),
                    spread_blowout_ratio=float(p["spread_blowout_ratio"]),
                ),
            ),
            version=version,
        )


def _canonical(content: Mapping[str, Any]) -> bytes:
    hashed = {k: v for k, v in content.items() if k != "enabled"}
    return json.dumps(hashed, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _check_version(payload: Mapping[str, Any], what: str) -> None:
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"stored {what} has schema_version {payload.get('schema_version')!r}, not {SCHEMA_VERSION}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KillSwitchState:
    """A kill-switch: scope '' is the global one, any other scope a portfolio_id."""

    scope: str
    engaged: bool
    changed_by: str
    changed_at: datetime
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerRecord:
    """One policy check's state."""

    name: str
    fired: bool
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeRecord:
    """What the engine decided for one name, and why (``services.rotation.RotationChange``)."""

    symbol: str
    action: str
    reason: str
    rank: int
    z: float
    current_weight: float
    target_weight: float
    numbers: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRecord:
    """An order of a TRADE decision, in whole shares."""

    order_id: str
    symbol: str
    side: str
    """``BUY`` or ``SELL``."""
    shares: float
    weight: float
    """The weight change it trades (fraction of portfolio value, > 0)."""
    reference_price: float
    """The stored price it was sized at ($)."""
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionRecord:
    """One cycle's decision as stored (``stratopt.v1.RotationDecision``)."""

    decision_id: str
    portfolio_id: str
    configuration_version: int
    as_of: datetime
    decided_at: datetime | None
    """When it was stored (the database's clock); None before."""
    engine: str
    action: str
    """``TRADE`` or ``HOLD``."""
    policy_reason: str
    triggers: tuple[TriggerRecord, ...]
    changes: tuple[ChangeRecord, ...]
    orders: tuple[OrderRecord, ...]
    portfolio_value: float
    turnover: float
    """One-way turnover of the target, Σ|Δw| / 2."""
    request_id: str = ""
    decided_by: str = ""

    def reason_codes(self) -> list[str]:
        """The reason code of every change, in order."""
        return [c.reason for c in self.changes]

    def to_json(self) -> dict[str, Any]:
        """The stored JSON document (times as RFC 3339 text)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "decision_id": self.decision_id,
            "portfolio_id": self.portfolio_id,
            "configuration_version": self.configuration_version,
            "as_of": self.as_of.astimezone(UTC).isoformat(),
            "decided_at": None if self.decided_at is None else self.decided_at.astimezone(UTC).isoformat(),
            "engine": self.engine,
            "action": self.action,
            "policy_reason": self.policy_reason,
            "triggers": [_finite(asdict(t)) for t in self.triggers],
            "changes": [{**_finite(asdict(c)), "numbers": _finite(dict(c.numbers))} for c in self.changes],
            "orders": [asdict(o) for o in self.orders],
            "portfolio_value": self.portfolio_value,
            "turnover": self.turnover,
            "request_id": self.request_id,
            "decided_by": self.decided_by,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> DecisionRecord:
        """The record of a stored document.

        Raises
        ------
        SchemaError
            When the document is not of :data:`SCHEMA_VERSION`.
        """
        _check_version(payload, "rotation decision")
        decided = payload["decided_at"]
        return cls(
            decision_id=payload["decision_id"],
            portfolio_id=payload["portfolio_id"],
            configuration_version=int(payload["configuration_version"]),
            as_of=datetime.fromisoformat(payload["as_of"]),
            decided_at=None if decided is None else datetime.fromisoformat(decided),
            engine=payload["engine"],
            action=payload["action"],
            policy_reason=payload["policy_reason"],
            triggers=tuple(TriggerRecord(**t) for t in payload["triggers"]),
            changes=tuple(ChangeRecord(**c) for c in payload["changes"]),
            orders=tuple(OrderRecord(**o) for o in payload["orders"]),
            portfolio_value=float(payload["portfolio_value"]),
            turnover=float(payload["turnover"]),
            request_id=payload["request_id"],
            decided_by=payload["decided_by"],
        )


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with non-finite floats (NaN: not measured) as None, so the document is valid JSON."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in values.items()}


def order_id(source_id: str, symbol: str) -> str:
    """The idempotent id of the order of ``symbol`` emitted by decision or recommendation ``source_id``."""
    return str(uuid.uuid5(ORDER_NAMESPACE, f"{source_id}:{symbol}"))
