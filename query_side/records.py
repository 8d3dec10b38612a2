"""The query side's reader of the stored event metadata (``docs/storage_schema.md``, schema version 1).

The command side writes the ``metadata`` of ``portfolio_optimized`` and ``latest_portfolio_optimizations`` in its
own documented format (``command_side.records``); the two sides share no code, so this module reads that format
on its own. It is deliberately small: it fills a ``stratopt.v1.OptimizationMetadata`` from a decoded payload,
ignores keys it does not know and reads a missing key as its default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from stratopt.v1 import types_pb2

READABLE_SCHEMA_VERSIONS: Final = frozenset({1})
"""Versions of the event-metadata schema this reader understands."""

_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_RFC3339: Final = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:00)$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class SchemaError(ValueError):
    """A stored payload of a schema version this reader does not understand, or malformed."""


def _float(value: Any) -> float:
    return _NON_FINITE[value] if isinstance(value, str) else float(value)


def _floats(value: Any) -> dict[str, float]:
    return {str(k): _float(v) for k, v in (value or {}).items()}


def instant_nanoseconds(text: str) -> int:
    """Nanoseconds since the epoch of a stored RFC 3339 UTC instant."""
    match = _RFC3339.match(text)
    if match is None:
        raise SchemaError(f"not an RFC 3339 UTC instant: {text!r}")
    whole = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int((whole - _EPOCH).total_seconds()) * 1_000_000_000 + int((match[2] or "0").ljust(9, "0"))


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
