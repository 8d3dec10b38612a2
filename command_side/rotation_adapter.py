"""``stratopt.v1`` rotation messages ↔ the rotation write model: the one place where they become domain values.

Every request goes through ``stratopt.request_limits.check_request`` first (NUL characters, lengths,
timestamps), then the checks here, which name the request's field path (``configuration.universe[3].cost_bps``,
``signals[7].score``). The engine's own parameter checks (``services.rotation``'s dataclasses) name bare
parameters; they are prefixed with their message's path here (``configuration.greedy.k_buy``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, time

from google.protobuf.timestamp_pb2 import Timestamp

from command_side.rotation import MAX_QUOTES_PER_MESSAGE, MAX_SIGNALS_PER_MESSAGE, RunCycle
from command_side.rotation_model import (
    DEFAULT_INTERVAL_MINUTES,
    DEFAULT_LOOKBACK_PERIODS,
    DEFAULT_MAX_QUOTE_AGE_MINUTES,
    DEFAULT_MAX_SIGNAL_AGE_MINUTES,
    DEFAULT_SPREAD_LOOKBACK_DAYS,
    DecisionRecord,
    KillSwitchState,
    RotationMember,
    RotationPortfolioConfig,
)
from services.errors import FieldViolation, InvalidInputError
from services.rotation import (
    DEFAULT_WINDOWS,
    CorrelationTarget,
    Engine,
    GreedyRotationParams,
    PolicySettings,
    QpRotationParams,
    RotationConfig,
    SignalSettings,
    VolatilityModel,
)
from stratopt.request_limits import check_request
from stratopt.v1 import rotation_service_pb2 as rot_pb

MAX_UNIVERSE = 5000
"""Most names in a rotation universe."""
MAX_LOOKBACK_PERIODS = 100_000
MIN_LOOKBACK_PERIODS = 20
MAX_INTERVAL_MINUTES = 1440
MAX_REASON_LENGTH = 500
MAX_SIGNAL_AGE_MINUTES = 525_600
MAX_QUOTE_AGE_MINUTES = 1440
"""Largest ``policy.max_quote_age_minutes`` (a day)."""
MAX_SPREAD_LOOKBACK_DAYS = 365
"""Largest ``policy.spread_lookback_days``."""

_ENGINES = {rot_pb.ROTATION_ENGINE_UNSPECIFIED: Engine.GREEDY, rot_pb.ROTATION_ENGINE_GREEDY: Engine.GREEDY,
            rot_pb.ROTATION_ENGINE_QP: Engine.QP}  # fmt: skip
_ENGINE_OUT = {Engine.GREEDY: rot_pb.ROTATION_ENGINE_GREEDY, Engine.QP: rot_pb.ROTATION_ENGINE_QP}
_VOLATILITY = {
    rot_pb.SIGNAL_VOLATILITY_UNSPECIFIED: VolatilityModel.EWMA,
    rot_pb.SIGNAL_VOLATILITY_EWMA: VolatilityModel.EWMA,
    rot_pb.SIGNAL_VOLATILITY_ATR: VolatilityModel.ATR,
}
_VOLATILITY_OUT = {
    VolatilityModel.EWMA: rot_pb.SIGNAL_VOLATILITY_EWMA,
    VolatilityModel.ATR: rot_pb.SIGNAL_VOLATILITY_ATR,
}
_CORRELATION = {
    rot_pb.CORRELATION_TARGET_UNSPECIFIED: CorrelationTarget.LEDOIT_WOLF,
    rot_pb.CORRELATION_TARGET_LEDOIT_WOLF: CorrelationTarget.LEDOIT_WOLF,
    rot_pb.CORRELATION_TARGET_CONSTANT_CORRELATION: CorrelationTarget.CONSTANT_CORRELATION,
}
_CORRELATION_OUT = {v: k for k, v in _CORRELATION.items() if k != rot_pb.CORRELATION_TARGET_UNSPECIFIED}
_ACTIONS = {"TRADE": rot_pb.ROTATION_ACTION_TRADE, "HOLD": rot_pb.ROTATION_ACTION_HOLD}


def _bad(field: str, description: str) -> InvalidInputError:
    return InvalidInputError.for_field(field, description)


@contextlib.contextmanager
def _prefixed(prefix: str) -> Iterator[None]:
    """Re-raise the engine's parameter errors with ``prefix.`` before each field."""
    try:
        yield
    except InvalidInputError as exc:
        violations = tuple(FieldViolation(f"{prefix}.{v.field}", v.description) for v in exc.field_violations)
        message = "; ".join(f"{v.field}: {v.description}" for v in violations) or exc.message
        raise InvalidInputError(message, field_violations=violations) from exc


def _reason(value: str, why: str) -> str:
    """A required ``reason`` of at most ``MAX_REASON_LENGTH`` characters, stripped."""
    reason = value.strip()
    if not reason:
        raise _bad("reason", f"is required: say why {why}")
    if len(reason) > MAX_REASON_LENGTH:
        raise _bad("reason", f"at most {MAX_REASON_LENGTH} characters, got {len(reason)}")
    return reason


def _finite(value: float, field: str, *, low: float | None = None, low_open: bool = False) -> float:
    if not math.isfinite(value):
        raise _bad(field, f"must be finite, got {value}")
    if low is not None and (value < low or (low_open and value <= low)):
        raise _bad(field, f"must be {'>' if low_open else '≥'} {low:g}, got {value}")
    return value


def _instant(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


# --- requests ---------------------------------------------------------------------------------------------------


def ingest_signals_rows(request: rot_pb.IngestSignalsRequest) -> tuple[str, list[tuple[str, str, datetime, float]]]:
    """``(signal_set, [(symbol, horizon, time, score)])`` of one IngestSignals message.

    Raises
    ------
    InvalidInputError
        Naming the field: no signal set, more than ``MAX_SIGNALS_PER_MESSAGE`` signals, an empty symbol, an
        unset time, a non-finite score.
    """
    check_request(request)
    if not request.signal_set:
        raise _bad("signal_set", "is required")
    if len(request.signals) > MAX_SIGNALS_PER_MESSAGE:
        raise _bad("signals", f"at most {MAX_SIGNALS_PER_MESSAGE} per message, got {len(request.signals)}")
    rows = []
    for i, s in enumerate(request.signals):
        if not s.symbol:
            raise _bad(f"signals[{i}].symbol", "is required")
        if not s.HasField("time"):
            raise _bad(f"signals[{i}].time", "is required")
        rows.append((s.symbol, s.horizon, _instant(s.time), _finite(s.score, f"signals[{i}].score")))
    return request.signal_set, rows


def ingest_quotes_rows(request: rot_pb.IngestQuotesRequest) -> list[tuple[str, datetime, float, float]]:
    """``[(symbol, time, bid, ask)]`` of one IngestQuotes message.

    Raises
    ------
    InvalidInputError
        Naming the field: more than ``MAX_QUOTES_PER_MESSAGE`` quotes, an empty symbol, an unset time, a bid that
        is not finite and > 0, an ask that is not finite and ≥ the bid.
    """
    check_request(request)
    if len(request.quotes) > MAX_QUOTES_PER_MESSAGE:
        raise _bad("quotes", f"at most {MAX_QUOTES_PER_MESSAGE} per message, got {len(request.quotes)}")
    rows = []
    for i, q in enumerate(request.quotes):
        if not q.symbol:
            raise _bad(f"quotes[{i}].symbol", "is required")
        if not q.HasField("time"):
            raise _bad(f"quotes[{i}].time", "is required")
        bid = _finite(q.bid, f"quotes[{i}].bid", low=0.0, low_open=True)
        ask = _finite(q.ask, f"quotes[{i}].ask", low=bid)
        rows.append((q.symbol, _instant(q.time), bid, ask))
    return rows


def _universe(members: object, path: str) -> tuple[RotationMember, ...]:
    items = list(members)  # type: ignore[call-overload]
    if not 2 <= len(items) <= MAX_UNIVERSE:
        raise _bad(path, f"needs 2 to {MAX_UNIVERSE} names, got {len(items)}")
    seen: set[str] = set()
    out = []
    for i, m in enumerate(items):
        field = f"{path}[{i}]"
        if not m.symbol:
            raise _bad(f"{field}.symbol", "is required")
        if m.symbol in seen:
            raise _bad(f"{field}.symbol", f"{m.symbol!r} appears twice")
        seen.add(m.symbol)
        beta = _finite(m.beta, f"{field}.beta") if m.HasField("beta") else None
        adv = None
        if m.HasField("average_daily_value"):
            adv = _finite(m.average_daily_value, f"{field}.average_daily_value", low=0.0, low_open=True)
        out.append(
            RotationMember(
                symbol=m.symbol,
                sector=m.sector,
                cost_bps=_finite(m.cost_bps, f"{field}.cost_bps", low=0.0),
                beta=beta,
                average_daily_value=adv,
            )
        )
    return tuple(out)


def _set_fields(message: object, names: tuple[str, ...]) -> dict[str, float]:
    return {n: getattr(message, n) for n in names if message.HasField(n)}  # type: ignore[attr-defined]


def _windows(values: Iterable[str], path: str) -> tuple[time, ...]:
    windows = []
    for i, text in enumerate(values):
        try:
            hour, minute = (int(part) for part in text.split(":"))
            windows.append(time(hour, minute))
        except ValueError:
            raise _bad(f"{path}[{i}]", f'must be "HH:MM" (00:00 to 23:59), got {text[:16]!r}') from None
    return tuple(windows) if windows else DEFAULT_WINDOWS


def rotation_configuration(
    message: rot_pb.RotationConfiguration, path: str = "configuration"
) -> RotationPortfolioConfig:
    """The domain configuration of a message, every default filled in (version 0).

    Raises
    ------
    InvalidInputError
        Naming the field under ``path``.
    """
    if not message.portfolio_id:
        raise _bad(f"{path}.portfolio_id", "is required")
    if not message.signal_set:
        raise _bad(f"{path}.signal_set", "is required")
    universe = _universe(message.universe, f"{path}.universe")
    if message.engine not in _ENGINES:
        raise _bad(f"{path}.engine", f"unknown engine {message.engine}")
    lookback = message.lookback_periods or DEFAULT_LOOKBACK_PERIODS
    if not MIN_LOOKBACK_PERIODS <= lookback <= MAX_LOOKBACK_PERIODS:
        raise _bad(f"{path}.lookback_periods", f"must be 0 or {MIN_LOOKBACK_PERIODS} to {MAX_LOOKBACK_PERIODS}")
    interval = message.interval_minutes or DEFAULT_INTERVAL_MINUTES
    if not 1 <= interval <= MAX_INTERVAL_MINUTES:
        raise _bad(f"{path}.interval_minutes", f"must be 0 or 1 to {MAX_INTERVAL_MINUTES}")
    s = message.signals
    if s.volatility not in _VOLATILITY:
        raise _bad(f"{path}.signals.volatility", f"unknown model {s.volatility}")
    if s.correlation_target not in _CORRELATION:
        raise _bad(f"{path}.signals.correlation_target", f"unknown target {s.correlation_target}")
    horizons = tuple(s.horizons) or ("",)
    if len(set(horizons)) != len(horizons):
        raise _bad(f"{path}.signals.horizons", "must be unique")
    weights = None
    if s.horizon_weights:
        if len(s.horizon_weights) != len(horizons):
            raise _bad(
                f"{path}.signals.horizon_weights", f"needs {len(horizons)} weights, got {len(s.horizon_weights)}"
            )
        weights = tuple(
            _finite(w, f"{path}.signals.horizon_weights[{i}]", low=0.0) for i, w in enumerate(s.horizon_weights)
        )
        if not sum(weights) > 0:
            raise _bad(f"{path}.signals.horizon_weights", "need a positive sum")
    max_age = s.max_signal_age_minutes if s.HasField("max_signal_age_minutes") else DEFAULT_MAX_SIGNAL_AGE_MINUTES
    _finite(max_age, f"{path}.signals.max_signal_age_minutes", low=0.0, low_open=True)
    if max_age > MAX_SIGNAL_AGE_MINUTES:
        raise _bad(
            f"{path}.signals.max_signal_age_minutes", f"at most {MAX_SIGNAL_AGE_MINUTES} (a year), got {max_age}"
        )
    p = message.policy
    with _prefixed(f"{path}.greedy"):
        greedy = GreedyRotationParams(**_set_fields(message.greedy, GREEDY_FIELDS))  # type: ignore[arg-type]
    with _prefixed(f"{path}.qp"):
        qp = QpRotationParams(**_set_fields(message.qp, QP_FIELDS))
    with _prefixed(f"{path}.signals"):
        signals = SignalSettings(
            volatility=_VOLATILITY[s.volatility],
            horizon_weights=weights,
            **_set_fields(s, ("ewma_span", "atr_periods", "winsor_limit")),  # type: ignore[arg-type]
        )
    windows = _windows(p.windows, f"{path}.policy.windows")
    with _prefixed(f"{path}.policy"):
        policy = PolicySettings(
            windows=windows,
            calendar=p.calendar or "XNYS",
            **_set_fields(p, POLICY_FIELDS),
        )
    quote_age = p.max_quote_age_minutes if p.HasField("max_quote_age_minutes") else DEFAULT_MAX_QUOTE_AGE_MINUTES
    _finite(quote_age, f"{path}.policy.max_quote_age_minutes", low=0.0, low_open=True)
    if quote_age > MAX_QUOTE_AGE_MINUTES:
        raise _bad(f"{path}.policy.max_quote_age_minutes", f"at most {MAX_QUOTE_AGE_MINUTES} (a day), got {quote_age}")
    lookback_days = p.spread_lookback_days if p.HasField("spread_lookback_days") else DEFAULT_SPREAD_LOOKBACK_DAYS
    if not 1 <= lookback_days <= MAX_SPREAD_LOOKBACK_DAYS:
        raise _bad(
            f"{path}.policy.spread_lookback_days", f"must be 1 to {MAX_SPREAD_LOOKBACK_DAYS}, got {lookback_days}"
        )
    return RotationPortfolioConfig(
        portfolio_id=message.portfolio_id,
        enabled=message.enabled,
        universe=universe,
        signal_set=message.signal_set,
        horizons=horizons,
        lookback_periods=lookback,
        market_symbol=message.market_symbol,
        interval_minutes=interval,
        max_signal_age_minutes=max_age,
        max_quote_age_minutes=quote_age,
        spread_lookback_days=lookback_days,
        cycle=RotationConfig(
            engine=_ENGINES[message.engine],
            greedy=greedy,
            qp=qp,
            signals=signals,
            policy=policy,
            correlation_target=_CORRELATION[s.correlation_target],
        ),
    )


POLICY_FIELDS = ("portfolio_drift_trigger", "name_drift_trigger", "window_minutes", "vol_spike_ratio",
                 "spread_blowout_ratio")  # fmt: skip
GREEDY_FIELDS = ("k", "k_buy", "k_sell", "z_keep", "z_cut", "dz_min", "tau_u", "gamma", "name_cap",
                 "per_name_trigger", "k_atr", "t_max_minutes", "max_participation")  # fmt: skip
QP_FIELDS = ("risk_aversion", "gamma", "name_cap", "max_gross", "max_abs_net", "sector_cap", "max_turnover",
             "max_name_turnover", "beta_tolerance")  # fmt: skip


def upsert_configuration_command(request: rot_pb.UpsertRotationConfigurationRequest) -> RotationPortfolioConfig:
    """The configuration an UpsertRotationConfiguration request stores.

    Raises
    ------
    InvalidInputError
        Naming the field (``configuration.…``).
    """
    check_request(request)
    if not request.HasField("configuration"):
        raise _bad("configuration", "is required")
    return rotation_configuration(request.configuration)


def run_cycle_command(request: rot_pb.RunRotationCycleRequest, *, decided_by: str) -> RunCycle:
    """The cycle a RunRotationCycle request runs.

    Raises
    ------
    InvalidInputError
        ``portfolio_id`` missing.
    """
    check_request(request)
    if not request.portfolio_id:
        raise _bad("portfolio_id", "is required")
    as_of = _instant(request.as_of) if request.HasField("as_of") else None
    return RunCycle(request.portfolio_id, as_of, request.request_id, decided_by)


def kill_switch_command(request: rot_pb.SetKillSwitchRequest) -> tuple[str, bool, str]:
    """``(portfolio_id or '', engaged, reason)`` of a SetKillSwitch request.

    Raises
    ------
    InvalidInputError
        ``reason`` missing or longer than ``MAX_REASON_LENGTH`` characters.
    """
    check_request(request)
    return request.portfolio_id, request.engaged, _reason(request.reason, "the switch is set")


def pause_scheduler_command(request: rot_pb.PauseRotationSchedulerRequest) -> tuple[bool, str]:
    """``(paused, reason)`` of a PauseRotationScheduler request.

    Raises
    ------
    InvalidInputError
        ``reason`` missing or longer than ``MAX_REASON_LENGTH`` characters.
    """
    check_request(request)
    return request.paused, _reason(request.reason, "the scheduler is paused or resumed")


# --- responses --------------------------------------------------------------------------------------------------


def configuration_message(config: RotationPortfolioConfig) -> rot_pb.RotationConfiguration:
    """The message of a stored configuration, every default written out."""
    c = config.cycle
    message = rot_pb.RotationConfiguration(
        portfolio_id=config.portfolio_id,
        enabled=config.enabled,
        engine=_ENGINE_OUT[c.engine],
        signal_set=config.signal_set,
        lookback_periods=config.lookback_periods,
        market_symbol=config.market_symbol,
        interval_minutes=config.interval_minutes,
        version=config.version,
    )
    for m in config.universe:
        member = message.universe.add(symbol=m.symbol, sector=m.sector, cost_bps=m.cost_bps)
        if m.beta is not None:
            member.beta = m.beta
        if m.average_daily_value is not None:
            member.average_daily_value = m.average_daily_value
    for name in GREEDY_FIELDS:
        setattr(message.greedy, name, getattr(c.greedy, name))
    for name in QP_FIELDS:
        setattr(message.qp, name, getattr(c.qp, name))
    sig = message.signals
    sig.volatility = _VOLATILITY_OUT[c.signals.volatility]
    sig.ewma_span, sig.atr_periods, sig.winsor_limit = (
        c.signals.ewma_span,
        c.signals.atr_periods,
        c.signals.winsor_limit,
    )
    sig.horizons.extend(config.horizons)
    if c.signals.horizon_weights is not None:
        sig.horizon_weights.extend(c.signals.horizon_weights)
    sig.max_signal_age_minutes = config.max_signal_age_minutes
    sig.correlation_target = _CORRELATION_OUT[c.correlation_target]
    pol = message.policy
    pol.portfolio_drift_trigger, pol.name_drift_trigger = c.policy.portfolio_drift_trigger, c.policy.name_drift_trigger
    pol.windows.extend(w.strftime("%H:%M") for w in c.policy.windows)
    pol.window_minutes, pol.calendar, pol.vol_spike_ratio = (
        c.policy.window_minutes,
        c.policy.calendar,
        c.policy.vol_spike_ratio,
    )
    pol.spread_blowout_ratio = c.policy.spread_blowout_ratio
    pol.max_quote_age_minutes = config.max_quote_age_minutes
    pol.spread_lookback_days = config.spread_lookback_days
    return message


def decision_message(decision: DecisionRecord) -> rot_pb.RotationDecision:
    """The message of a stored decision."""
    message = rot_pb.RotationDecision(
        decision_id=decision.decision_id,
        portfolio_id=decision.portfolio_id,
        configuration_version=decision.configuration_version,
        as_of=_timestamp(decision.as_of),
        engine=_ENGINE_OUT[Engine(decision.engine)],
        action=_ACTIONS[decision.action],
        policy_reason=decision.policy_reason,
        portfolio_value=decision.portfolio_value,
        turnover=decision.turnover,
        request_id=decision.request_id,
        decided_by=decision.decided_by,
    )
    if decision.decided_at is not None:
        message.decided_at.CopyFrom(_timestamp(decision.decided_at))
    for t in decision.triggers:
        trigger = message.triggers.add(name=t.name, fired=t.fired)
        if t.value is not None:
            trigger.value = t.value
        if t.threshold is not None:
            trigger.threshold = t.threshold
    for c in decision.changes:
        change = message.changes.add(
            symbol=c.symbol,
            action=c.action,
            reason=c.reason,
            rank=c.rank,
            z=c.z,
            current_weight=c.current_weight,
            target_weight=c.target_weight,
        )
        change.numbers.update({k: v for k, v in c.numbers.items() if v is not None})
    for o in decision.orders:
        message.orders.add(
            order_id=o.order_id,
            symbol=o.symbol,
            side=o.side,
            shares=o.shares,
            weight=o.weight,
            reference_price=o.reference_price,
            reason=o.reason,
        )
    return message


def kill_switch_message(state: KillSwitchState) -> rot_pb.KillSwitchState:
    """The message of a kill-switch's state."""
    return rot_pb.KillSwitchState(
        portfolio_id=state.scope,
        engaged=state.engaged,
        changed_by=state.changed_by,
        changed_at=_timestamp(state.changed_at),
        reason=state.reason,
    )


def scheduler_message(state: KillSwitchState) -> rot_pb.PauseRotationSchedulerResponse:
    """The response of a pause or resume."""
    return rot_pb.PauseRotationSchedulerResponse(
        paused=state.engaged, changed_by=state.changed_by, changed_at=_timestamp(state.changed_at), reason=state.reason
    )
