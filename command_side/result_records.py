"""The stored schema of optimization results and events: plain records, versioned snake_case JSON.

What the command side writes to ``optimization_results.result`` and to the ``metadata`` of ``portfolio_optimized``
and ``latest_portfolio_optimizations`` is one of the records below, encoded by its ``to_json`` and read back by its
``from_json``: the stored format is this module's, documented in ``docs/storage_schema.md``, and never protobuf's
binary format or JSON mapping, so the contract (``stratopt.v1``) can evolve without a data migration. Every payload
carries ``schema_version`` (:data:`SCHEMA_VERSION`); a reader refuses a version it does not know.

Encoding rules (all payloads):

* keys are snake_case; every key is always written (no omitted defaults);
* numbers are JSON numbers in the units the documentation gives; a non-finite float is the string ``"NaN"``,
  ``"Infinity"`` or ``"-Infinity"`` (JSON and ``jsonb`` have no such numbers);
* instants are RFC 3339 strings in UTC with up to nine fractional digits (``2026-01-02T03:04:05.123456Z``); in the
  records they are integers of nanoseconds since 1970-01-01 UTC, so a protobuf ``Timestamp`` survives exactly;
* enumerations are stored by the domain's names (``OPTIMAL``, ``MEAN_VARIANCE``), ``""`` for unset.

This module is free of the contract: the conversions between the records and ``stratopt.v1`` messages
(``result_record``, ``response_from_record``) live in ``command_side.records``, which re-exports everything
defined here; a replay of a stored result rebuilds the first answer field by field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

SCHEMA_VERSION: Final = 1
"""Version of the stored result and event-metadata schema written by this build."""

JsonObject = dict[str, Any]
"""A decoded JSON object."""


class SchemaError(ValueError):
    """A stored payload that is not of a schema version this build reads."""


# --- encoding helpers ----------------------------------------------------------------------------------------

_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_RFC3339: Final = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:00)$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def encode_float(value: float) -> float | str:
    """A float as stored: itself when finite, else ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_float(value: Any) -> float:
    """A stored float (a JSON number or one of the non-finite strings)."""
    if isinstance(value, str):
        return _NON_FINITE[value]
    return float(value)


def encode_instant(nanoseconds: int) -> str:
    """RFC 3339 text (UTC, ``Z``) of an instant in nanoseconds since the epoch; fraction trimmed to 0, 6 or 9 digits."""
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return whole + "Z"
    if nanos % 1000 == 0:
        return f"{whole}.{nanos // 1000:06d}Z"
    return f"{whole}.{nanos:09d}Z"


def decode_instant(text: str) -> int:
    """Nanoseconds since the epoch of stored RFC 3339 text (UTC)."""
    match = _RFC3339.match(text)
    if match is None:
        raise SchemaError(f"not an RFC 3339 UTC instant: {text!r}")
    whole = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    seconds = int((whole - _EPOCH).total_seconds())
    return seconds * 1_000_000_000 + int((match[2] or "0").ljust(9, "0"))


def _floats(mapping: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): decode_float(v) for k, v in mapping.items()}


def _encoded(mapping: Mapping[str, float]) -> dict[str, float | str]:
    return {k: encode_float(v) for k, v in mapping.items()}


def run_inputs_json(run_inputs: Mapping[str, Any]) -> JsonObject:
    """The stored ``optimization_results.run_inputs``: ``kind`` and ``current_weights``, with ``schema_version``."""
    return {"schema_version": SCHEMA_VERSION, **run_inputs}


def check_version(payload: Mapping[str, Any], what: str) -> None:
    """Raise :class:`SchemaError` unless ``payload`` is of :data:`SCHEMA_VERSION`."""
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{what}: schema_version {version!r} is not one this build reads ({SCHEMA_VERSION})")


# --- records -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaxationRecord:
    """One limit relaxed to reach a feasible problem."""

    constraint: str
    """Field path of the limit, e.g. ``constraints.sector_limits[1].min_weight``."""
    original: float
    """The limit as requested (the limit's own unit, a weight fraction for weight limits)."""
    relaxed: float
    """The relaxed limit (same unit)."""
    description: str
    """What was relaxed, in words."""

    def to_json(self) -> JsonObject:
        """The stored JSON object."""
        return {
            "constraint": self.constraint,
            "original": encode_float(self.original),
            "relaxed": encode_float(self.relaxed),
            "description": self.description,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> RelaxationRecord:
        """The record of a stored JSON object."""
        return cls(
            constraint=payload["constraint"],
            original=decode_float(payload["original"]),
            relaxed=decode_float(payload["relaxed"]),
            description=payload["description"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackLittermanRecord:
    """Black-Litterman prior and posterior of a run."""

    prior_returns: dict[str, float]
    """Prior annualised expected returns (decimal) keyed by symbol."""
    posterior_returns: dict[str, float]
    """Posterior annualised expected returns (decimal) keyed by symbol."""
    posterior_covariance: tuple[float, ...]
    """Posterior annualised covariance (decimal²), row-major N x N in the request's strategy order."""
    risk_aversion: float
    """Risk aversion delta used."""
    tau: float
    """Tau used."""

    def to_json(self) -> JsonObject:
        """The stored JSON object."""
        return {
            "prior_returns": _encoded(self.prior_returns),
            "posterior_returns": _encoded(self.posterior_returns),
            "posterior_covariance": [encode_float(v) for v in self.posterior_covariance],
            "risk_aversion": encode_float(self.risk_aversion),
            "tau": encode_float(self.tau),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> BlackLittermanRecord:
        """The record of a stored JSON object."""
        return cls(
            prior_returns=_floats(payload["prior_returns"]),
            posterior_returns=_floats(payload["posterior_returns"]),
            posterior_covariance=tuple(decode_float(v) for v in payload["posterior_covariance"]),
            risk_aversion=decode_float(payload["risk_aversion"]),
            tau=decode_float(payload["tau"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunMetadataRecord:
    """Solve and storage metadata of one run: the ``metadata`` of a ``portfolio_optimized`` event."""

    event_id: str
    """Identifier of the ``portfolio_optimized`` event (UUID text)."""
    result_id: str
    """Identifier of the ``optimization_results`` row (UUID text)."""
    timestamp: int | None
    """Time of the event (ns since the epoch, UTC)."""
    configuration_version: int
    """Configuration version the run used."""
    convergence_status: str
    """``OPTIMAL``, ``OPTIMAL_INACCURATE``, ``CLOSED_FORM`` or ``""``."""
    iterations: int
    """Solver iterations."""
    optimization_time_ms: float
    """Wall time of estimation plus solve (milliseconds)."""
    objective_value: float
    """Value of the objective at the optimum, in the objective's own units."""
    constraints_satisfied: bool
    """Whether the weights satisfy every constraint to 1e-6."""
    constraint_violations: tuple[str, ...] = ()
    """Constraints the weights violate by more than 1e-6."""
    solver: str = ""
    """Solver that produced the answer (e.g. ``CLARABEL``)."""
    fallback_used: bool = False
    """Whether the fallback solver produced the answer."""
    solve_path: str = ""
    """Algorithm that answered (``CONIC``, ``ACTIVE_SET``, ``DUAL_ACTIVE_SET``, ``CLARABEL_DIRECT``, ...)."""
    method: str = ""
    """Method that produced the weights (``MEAN_VARIANCE``, ``BLACK_LITTERMAN``, ... or ``""``)."""
    risk_measure: str = ""
    """Risk measure of the objective (``VARIANCE``, ``CVAR``, ``MAD``, ``CDAR``)."""
    risk_measure_value: float = 0.0
    """Value of the risk measure at the optimum (per period, losses positive); 0 when not computed."""
    missing_data_policy: str = ""
    """Missing-data policy applied (``PAIRWISE``, ``COMMON_WINDOW``, ``NONE``)."""
    observations: int = 0
    """Return periods used by the estimators (0 for moments input)."""
    window_start: int | None = None
    """First observation used (ns since the epoch, UTC); None for moments input."""
    window_end: int | None = None
    """Last observation used (ns since the epoch, UTC); None for moments input."""
    holdings: int = 0
    """Strategies with a weight above 1e-8 in absolute value."""
    net_exposure: float = 0.0
    """Sum of the weights (fraction)."""
    gross_exposure: float = 0.0
    """Sum of the absolute weights (fraction)."""
    risk_contributions: dict[str, float] = field(default_factory=dict)
    """Each strategy's share of portfolio variance (fractions summing to 1) keyed by symbol."""
    betas: dict[str, float] = field(default_factory=dict)
    """Betas used by the beta constraint keyed by symbol."""
    relaxations: tuple[RelaxationRecord, ...] = ()
    """Limits relaxed to reach a feasible problem."""
    black_litterman: BlackLittermanRecord | None = None
    """Black-Litterman prior and posterior (method ``BLACK_LITTERMAN`` only)."""

    def to_json(self) -> JsonObject:
        """The stored JSON object, with ``schema_version``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": self.event_id,
            "result_id": self.result_id,
            "timestamp": None if self.timestamp is None else encode_instant(self.timestamp),
            "configuration_version": self.configuration_version,
            "convergence_status": self.convergence_status,
            "iterations": self.iterations,
            "optimization_time_ms": encode_float(self.optimization_time_ms),
            "objective_value": encode_float(self.objective_value),
            "constraints_satisfied": self.constraints_satisfied,
            "constraint_violations": list(self.constraint_violations),
            "solver": self.solver,
            "fallback_used": self.fallback_used,
            "solve_path": self.solve_path,
            "method": self.method,
            "risk_measure": self.risk_measure,
            "risk_measure_value": encode_float(self.risk_measure_value),
            "missing_data_policy": self.missing_data_policy,
            "observations": self.observations,
            "window_start": None if self.window_start is None else encode_instant(self.window_start),
            "window_end": None if self.window_end is None else encode_instant(self.window_end),
            "holdings": self.holdings,
            "net_exposure": encode_float(self.net_exposure),
            "gross_exposure": encode_float(self.gross_exposure),
            "risk_contributions": _encoded(self.risk_contributions),
            "betas": _encoded(self.betas),
            "relaxations": [r.to_json() for r in self.relaxations],
            "black_litterman": None if self.black_litterman is None else self.black_litterman.to_json(),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> RunMetadataRecord:
        """The record of a stored JSON object.

        Raises
        ------
        SchemaError
            When the payload is not of :data:`SCHEMA_VERSION`.
        """
        check_version(payload, "run metadata")

        def instant(key: str) -> int | None:
            value = payload[key]
            return None if value is None else decode_instant(value)

        black_litterman = payload["black_litterman"]
        return cls(
            event_id=payload["event_id"],
            result_id=payload["result_id"],
            timestamp=instant("timestamp"),
            configuration_version=int(payload["configuration_version"]),
            convergence_status=payload["convergence_status"],
            iterations=int(payload["iterations"]),
            optimization_time_ms=decode_float(payload["optimization_time_ms"]),
            objective_value=decode_float(payload["objective_value"]),
            constraints_satisfied=bool(payload["constraints_satisfied"]),
            constraint_violations=tuple(payload["constraint_violations"]),
            solver=payload["solver"],
            fallback_used=bool(payload["fallback_used"]),
            solve_path=payload["solve_path"],
            method=payload["method"],
            risk_measure=payload["risk_measure"],
            risk_measure_value=decode_float(payload["risk_measure_value"]),
            missing_data_policy=payload["missing_data_policy"],
            observations=int(payload["observations"]),
            window_start=instant("window_start"),
            window_end=instant("window_end"),
            holdings=int(payload["holdings"]),
            net_exposure=decode_float(payload["net_exposure"]),
            gross_exposure=decode_float(payload["gross_exposure"]),
            risk_contributions=_floats(payload["risk_contributions"]),
            betas=_floats(payload["betas"]),
            relaxations=tuple(RelaxationRecord.from_json(r) for r in payload["relaxations"]),
            black_litterman=None if black_litterman is None else BlackLittermanRecord.from_json(black_litterman),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultRecord:
    """The stored answer of one run (``optimization_results.result``), from which a replay is rebuilt."""

    portfolio_id: str
    """Portfolio identifier."""
    request_id: str
    """Idempotency key of the request; ``""`` when the caller gave none."""
    weights: dict[str, float]
    """Optimal weights (fractions) keyed by symbol."""
    expected_return: float
    """Annualised expected return (decimal)."""
    volatility: float
    """Annualised volatility (decimal)."""
    sharpe_ratio: float
    """(expected_return - risk-free rate) / volatility, annualised."""
    metadata: RunMetadataRecord
    """Solve and storage metadata (the event's metadata)."""
    max_drawdown: float | None = None
    """Maximum drawdown of the weights over the estimation window (fraction); None without a return history."""

    def to_json(self) -> JsonObject:
        """The stored JSON object, with ``schema_version``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "portfolio_id": self.portfolio_id,
            "request_id": self.request_id,
            "weights": _encoded(self.weights),
            "expected_return": encode_float(self.expected_return),
            "volatility": encode_float(self.volatility),
            "sharpe_ratio": encode_float(self.sharpe_ratio),
            "metadata": self.metadata.to_json(),
            "max_drawdown": None if self.max_drawdown is None else encode_float(self.max_drawdown),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> ResultRecord:
        """The record of a stored JSON object.

        Raises
        ------
        SchemaError
            When the payload is not of :data:`SCHEMA_VERSION`.
        """
        check_version(payload, "optimization result")
        return cls(
            portfolio_id=payload["portfolio_id"],
            request_id=payload["request_id"],
            weights=_floats(payload["weights"]),
            expected_return=decode_float(payload["expected_return"]),
            volatility=decode_float(payload["volatility"]),
            sharpe_ratio=decode_float(payload["sharpe_ratio"]),
            metadata=RunMetadataRecord.from_json(payload["metadata"]),
            # Results stored before max_drawdown existed have no key: None.
            max_drawdown=None if payload.get("max_drawdown") is None else decode_float(payload["max_drawdown"]),
        )


# --- conversions to and from stratopt.v1 ---------------------------------------------------------------------
