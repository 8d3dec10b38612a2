"""The query side's reader of the stored payloads it serves (``docs/storage_schema.md``, schema version 1).

The command side writes the ``metadata`` of ``portfolio_optimized`` and ``latest_portfolio_optimizations``
(``command_side.records``) and the ``recommendation`` of ``rebalance_recommendations``
(``command_side.trading_records``) in its own documented format; the two sides share no code, so this module reads
that format on its own. It is deliberately small: it fills ``stratopt.v1`` messages from decoded payloads, ignores
keys it does not know and reads a missing key as unset.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from stratopt.v1 import trading_service_pb2, types_pb2

READABLE_SCHEMA_VERSIONS: Final = frozenset({1})
"""Versions of the event-metadata schema this reader understands."""

_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_RFC3339: Final = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:00)$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)


class SchemaError(ValueError):
    """A stored payload of a schema version this reader does not understand, or malformed."""


def _float(value: Any) -> float:
    return _NON_FINITE[value] if isinstance(value, str) else float(value)


def _floats(value: Any) -> dict[str, float]:
    return {str(k): _float(v) for k, v in (value or {}).items()}


@functools.lru_cache(maxsize=8192)
def instant_nanoseconds(text: str) -> int:
    """Nanoseconds since the epoch of a stored RFC 3339 UTC instant.

    Cached (a pure function of the text; window bounds repeat across runs): the query side reads a few of these
    per event it serves.

    Raises
    ------
    SchemaError
        When ``text`` is not ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`` or names no valid date and time.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise SchemaError(f"not an RFC 3339 UTC instant: {text!r}")
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
        whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as error:  # month 13, February 30, hour 24, ...
        raise SchemaError(f"not an RFC 3339 UTC instant: {text!r} ({error})") from None
    return (whole - _EPOCH) // _SECOND * 1_000_000_000 + int((match[7] or "0").ljust(9, "0"))


def _enum(enum: Any, prefix: str, name: str) -> int:
    try:
        return int(enum.Value(prefix + name)) if name else 0
    except ValueError:
        return 0


def fill_metadata(payload: Mapping[str, Any], message: types_pb2.OptimizationMetadata) -> None:
    """Write stored event metadata (a decoded JSON object) into ``message``.

    Raises
    ------
    SchemaError
        When ``payload`` has no ``schema_version`` this reader understands.
    """
    version = payload.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        readable = sorted(READABLE_SCHEMA_VERSIONS)
        raise SchemaError(f"event metadata of schema_version {version!r} (readable: {readable})")
    get = payload.get
    for name in ("timestamp", "window_start", "window_end"):
        text = get(name)
        if text:
            getattr(message, name).FromNanoseconds(instant_nanoseconds(str(text)))
    message.event_id = get("event_id", "")
    message.result_id = get("result_id", "")
    message.configuration_version = int(get("configuration_version", 0))
    message.convergence_status = _enum(  # type: ignore[assignment]
        types_pb2.ConvergenceStatus, "CONVERGENCE_STATUS_", get("convergence_status", "")
    )
    message.iterations = int(get("iterations", 0))
    message.optimization_time_ms = _float(get("optimization_time_ms", 0.0))
    message.objective_value = _float(get("objective_value", 0.0))
    message.constraints_satisfied = bool(get("constraints_satisfied", False))
    message.constraint_violations.extend(get("constraint_violations") or ())
    message.solver = get("solver", "")
    message.fallback_used = bool(get("fallback_used", False))
    message.solve_path = get("solve_path", "")
    message.method = _enum(  # type: ignore[assignment]
        types_pb2.OptimizationMethod, "OPTIMIZATION_METHOD_", get("method", "")
    )
    message.risk_measure = get("risk_measure", "")
    message.risk_measure_value = _float(get("risk_measure_value", 0.0))
    message.missing_data_policy = get("missing_data_policy", "")
    message.observations = int(get("observations", 0))
    message.holdings = int(get("holdings", 0))
    message.net_exposure = _float(get("net_exposure", 0.0))
    message.gross_exposure = _float(get("gross_exposure", 0.0))
    message.risk_contributions.update(_floats(get("risk_contributions")))
    message.betas.update(_floats(get("betas")))
    for relaxation in get("relaxations") or ():
        message.relaxations.add(
            constraint=relaxation.get("constraint", ""),
            original=_float(relaxation.get("original", 0.0)),
            relaxed=_float(relaxation.get("relaxed", 0.0)),
            description=relaxation.get("description", ""),
        )
    posterior = get("black_litterman")
    if posterior:
        target = message.black_litterman
        target.SetInParent()
        target.prior_returns.update(_floats(posterior.get("prior_returns")))
        target.posterior_returns.update(_floats(posterior.get("posterior_returns")))
        target.posterior_covariance.extend(_float(v) for v in posterior.get("posterior_covariance") or ())
        target.risk_aversion = _float(posterior.get("risk_aversion", 0.0))
        target.tau = _float(posterior.get("tau", 0.0))


# --- rebalance recommendations (trading schema version 1) ------------------------------------------------------

READABLE_TABLE_SCHEMA_VERSIONS: Final = frozenset({1})
"""Versions of the trading payloads (``rebalance_recommendations.recommendation``) this reader understands."""

_Reader = Callable[[Any, Any], None]
"""Writes one stored value into a message field: ``(message, value)``."""


def _scalar(attribute: str, convert: Callable[[Any], Any]) -> tuple[str, _Reader]:
    return attribute, lambda message, value: setattr(message, attribute, convert(value))


def _side(message: trading_service_pb2.Trade, value: Any) -> None:
    message.side = _enum(trading_service_pb2.TradeSide, "TRADE_SIDE_", value)  # type: ignore[assignment]


def _instant(attribute: str) -> tuple[str, _Reader]:
    return attribute, lambda message, value: getattr(message, attribute).FromNanoseconds(instant_nanoseconds(value))


def _fill(message: Any, payload: Mapping[str, Any], readers: Mapping[str, _Reader]) -> Any:
    for key, read in readers.items():
        value = payload.get(key)
        if value is not None:
            read(message, value)
    return message


_LOT_SALE: Final = dict(
    [_scalar("lot_id", str), _scalar("shares", _float), _scalar("cost_basis", _float), _scalar("gain", _float),
     _scalar("long_term", bool)]
)  # fmt: skip
_TRADE: Final = dict(
    [_scalar("symbol", str), ("side", _side)]
    + [_scalar(name, _float) for name in ("shares", "price", "value", "commission", "spread_cost", "impact_cost",
                                          "total_cost", "short_term_gain", "long_term_gain")]
    + [_scalar("wash_sale", bool), _scalar("participation_capped", bool),
       ("lots", lambda m, v: m.lots.extend(_fill(trading_service_pb2.LotSale(), s, _LOT_SALE) for s in v))]
)  # fmt: skip
_HARVEST: Final = dict(
    [_scalar("symbol", str), _scalar("lot_id", str), _scalar("shares", _float), _scalar("unrealized_loss", _float),
     _scalar("wash_sale_risk", bool)]
)  # fmt: skip
_RECOMMENDATION: Final = dict(
    [_scalar("recommendation_id", str), _scalar("portfolio_id", str)]
    + [_scalar(name, _float) for name in ("total_trade_value", "total_cost", "turnover", "drift_before",
                                          "drift_after", "short_term_gain", "long_term_gain", "estimated_tax",
                                          "approval_limit")]
    + [_instant("created_at"), _instant("expires_at"), _scalar("hold_reason", str),
       ("trades", lambda m, v: m.trades.extend(_fill(trading_service_pb2.Trade(), t, _TRADE) for t in v)),
       ("harvest_candidates",
        lambda m, v: m.harvest_candidates.extend(_fill(trading_service_pb2.HarvestCandidate(), h, _HARVEST)
                                                 for h in v))]
)  # fmt: skip


def recommendation_from_json(payload: Mapping[str, Any]) -> trading_service_pb2.RebalanceRecommendation:
    """The recommendation as created, from its stored payload (status and decision fields are left unset).

    Raises
    ------
    SchemaError
        When ``payload`` has no ``schema_version`` this reader understands.
    """
    version = payload.get("schema_version")
    if version not in READABLE_TABLE_SCHEMA_VERSIONS:
        raise SchemaError(f"recommendation of schema_version {version!r}")
    message: trading_service_pb2.RebalanceRecommendation = _fill(
        trading_service_pb2.RebalanceRecommendation(), payload, _RECOMMENDATION
    )
    return message
