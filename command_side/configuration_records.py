"""The stored schema of a configuration's content: strategies, constraints, risk parameters, Black-Litterman inputs.

The four ``jsonb`` columns of ``optimization_configurations`` (``strategies``, ``constraints``,
``risk_parameters``, ``black_litterman``) hold the objects below, each with ``schema_version``
(:data:`CONFIGURATION_SCHEMA_VERSION`), encoded by the :class:`Schema` tables of this module (stored keys
documented in ``docs/storage_schema.md``). :func:`configuration_columns` writes them from the domain's
``command_side.configuration.OptimizationConfiguration`` and :func:`configuration_content_from_columns` reads them
back; :func:`content_hash` is the sha256 of that stored form (with ``objective``, ``method``, ``lookback_periods``,
``market_symbol`` and ``enabled``). A table's attribute names are the stored keys, the dataclasses' attribute names
and the contract's field names alike (``command_side.configuration_messages`` converts to and from
``stratopt.v1`` with the same tables). The module imports neither protobuf nor the contract.

Encoding rules are those of :mod:`command_side.result_records`: every key is written, numbers are JSON numbers in
the documented unit (non-finite floats as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``), enumerations are short names
(``""`` when unset) and an unset optional value is ``null``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from command_side.configuration import (
    BlackLittermanInputs,
    MultiObjectiveWeights,
    OptimizationConfiguration,
    OptimizationConstraints,
    RecomputePolicy,
    RiskParameters,
    RobustParameters,
    SectorLimit,
    Strategy,
    View,
    WeightBounds,
)
from command_side.result_records import JsonObject, SchemaError, decode_float, encode_float

CONFIGURATION_SCHEMA_VERSION: Final = 2
"""Version of the four content columns written by this build. Version 2 (migration ``0011_stored_symbol_keys``)
names a strategy's identifier ``symbol``; version 1 rows no longer exist after ``migrate``."""

Kind = Literal["text", "number", "integer", "boolean", "enum", "record", "records", "numbers", "texts", "number_list"]


@dataclass(frozen=True, slots=True)
class Field:
    """One stored key of a :class:`Schema`: also the attribute of the dataclass and the contract's field."""

    key: str
    """The stored (snake_case) key."""
    kind: Kind
    """``text``, ``number`` (float), ``integer``, ``boolean``, ``enum`` (short name), ``record`` (a nested
    object), ``records`` (a list of them, or an object keyed by symbol), ``numbers`` (an object of numbers keyed by
    symbol), ``texts`` (an object of strings), ``number_list`` (an array of numbers)."""
    meaning: str
    """What it is, with its unit (documented in ``docs/storage_schema.md``)."""
    optional: bool = False
    """Whether the value may be unset (``None`` in the dataclass, ``null`` stored)."""
    enum_prefix: str = ""
    """Prefix of the contract's enum value names, absent from the stored short name (kind ``enum``)."""
    record: Schema | None = None
    """Schema of the nested objects (kinds ``record`` and ``records``)."""
    keyed: bool = False
    """For ``records``: an object keyed by symbol instead of a list."""


@dataclass(frozen=True, slots=True)
class Schema:
    """A stored object: its name, dataclass and keys."""

    name: str
    """Name in the documentation."""
    type: type
    """The dataclass of ``command_side.configuration`` it is converted to and from."""
    fields: tuple[Field, ...]
    """Its keys, in stored order."""
    version: int = CONFIGURATION_SCHEMA_VERSION
    """``schema_version`` of the object when it is stored top-level."""

    def to_json(self, value: Any, *, versioned: bool = True) -> JsonObject:
        """The stored JSON object of the dataclass ``value`` (``schema_version`` first unless not ``versioned``)."""
        payload: JsonObject = {"schema_version": self.version} if versioned else {}
        for f in self.fields:
            payload[f.key] = _encode(f, getattr(value, f.key))
        return payload

    def from_json(self, payload: Mapping[str, Any], *, versioned: bool = True) -> Any:
        """The dataclass of a stored JSON object (a missing key or ``null`` reads as the default).

        Raises
        ------
        SchemaError
            When a versioned payload is not of the schema's ``version``.
        """
        if versioned and payload.get("schema_version") != self.version:
            raise SchemaError(
                f"{self.name}: schema_version {payload.get('schema_version')!r} is not one this build reads"
            )
        values = {}
        for f in self.fields:
            value = payload.get(f.key)
            if value is not None:
                values[f.key] = _decode(f, value)
        return self.type(**values)


def _encode(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if f.kind == "number":
        return encode_float(value)
    if f.kind == "integer":
        return int(value)
    if f.kind == "boolean":
        return bool(value)
    if f.kind == "numbers":
        return {str(k): encode_float(v) for k, v in value.items()}
    if f.kind == "texts":
        return {str(k): str(v) for k, v in value.items()}
    if f.kind == "number_list":
        return [encode_float(v) for v in value]
    if f.kind == "record":
        assert f.record is not None
        return f.record.to_json(value, versioned=False)
    if f.kind == "records":
        assert f.record is not None
        if f.keyed:
            return {str(k): f.record.to_json(v, versioned=False) for k, v in value.items()}
        return [f.record.to_json(v, versioned=False) for v in value]
    return str(value)  # text, enum


def _decode(f: Field, value: Any) -> Any:
    if f.kind == "number":
        return decode_float(value)
    if f.kind == "integer":
        return int(value)
    if f.kind == "boolean":
        return bool(value)
    if f.kind == "numbers":
        return {str(k): decode_float(v) for k, v in value.items()}
    if f.kind == "texts":
        return {str(k): str(v) for k, v in value.items()}
    if f.kind == "number_list":
        return tuple(decode_float(v) for v in value)
    if f.kind == "record":
        assert f.record is not None
        return f.record.from_json(value, versioned=False)
    if f.kind == "records":
        assert f.record is not None
        if f.keyed:
            return {str(k): f.record.from_json(v, versioned=False) for k, v in value.items()}
        return tuple(f.record.from_json(v, versioned=False) for v in value)
    return str(value)  # text, enum


CONTENT_COLUMNS = ("strategies", "constraints", "risk_parameters", "black_litterman")
"""The ``jsonb`` columns of ``optimization_configurations`` written by :func:`configuration_columns`."""

STRATEGY = Schema(
    "strategy",
    Strategy,
    (
        Field("symbol", "text", "Instrument symbol (the symbol of its stored prices)."),
        Field("sector", "text", "Sector (or any group) used by sector limits; '' = none."),
        Field("classifications", "texts", "Group of the strategy in further schemes, by scheme."),
    ),
)
"""A configuration's strategy: identity and groups only (returns and current weights belong to a run)."""

WEIGHT_BOUNDS = Schema(
    "weight bounds",
    WeightBounds,
    (
        Field("min_weight", "number", "Lower weight bound (fraction); null = the global one.", True),
        Field("max_weight", "number", "Upper weight bound (fraction); null = the global one.", True),
    ),
)

SECTOR_LIMIT = Schema(
    "sector limit",
    SectorLimit,
    (
        Field("sector", "text", "Sector name, or group name within the scheme."),
        Field("min_weight", "number", "Minimum total weight (fraction); null = none.", True),
        Field("max_weight", "number", "Maximum total weight (fraction); null = none.", True),
        Field("scheme", "text", "Classification scheme; '' = the strategies' sector."),
    ),
)

CONSTRAINTS = Schema(
    "constraints",
    OptimizationConstraints,
    (
        Field("min_weight", "number", "Lower bound of every weight (fraction); null = 0.", True),
        Field("max_weight", "number", "Upper bound of every weight (fraction); null = 1.", True),
        Field("strategy_bounds", "records", "Per-strategy bounds by symbol (weight bounds "
              "objects).", record=WEIGHT_BOUNDS, keyed=True),
        Field("sector_limits", "records", "Sector limits (sector limit objects).",
              record=SECTOR_LIMIT),
        Field("min_return", "number", "Minimum annualised expected return (decimal); null = none.",
              True),
        Field("max_volatility", "number", "Maximum annualised volatility (decimal); null = none.",
              True),
        Field("turnover_limit", "number", "Two-way turnover cap (fraction; a full switch is 2); "
              "null = none.", True),
        Field("turnover_caps", "numbers", "Per-strategy caps on |w - current| (fractions)."),
        Field("leverage_limit", "number", "Gross exposure cap (fraction, >= 1); null = none.",
              True),
        Field("transaction_costs_bps", "numbers", "Linear transaction costs by symbol "
              "(basis points of traded value)."),
        Field("benchmark_weights", "numbers", "Benchmark weights by symbol (fractions)."),
        Field("tracking_error_limit", "number", "Annualised tracking-error cap (decimal); "
              "null = none.", True),
        Field("betas", "numbers", "Betas by symbol for beta_tolerance ({} = estimated)."),
        Field("beta_tolerance", "number", "Beta neutrality tolerance; null = none.", True),
        Field("max_holdings", "integer", "Most strategies with a non-zero weight; null = no limit.",
              True),
        Field("min_position_weight", "number", "Minimum |weight| of a held strategy "
              "(fraction); null = none.", True),
        Field("min_net_exposure", "number", "Lower net exposure bound (fraction); null = the "
              "budget.", True),
        Field("max_net_exposure", "number", "Upper net exposure bound (fraction); null = the "
              "budget.", True),
        Field("allow_relaxation", "boolean", "Whether infeasible limits may be relaxed."),
    ),
)  # fmt: skip

ROBUST = Schema(
    "robust parameters",
    RobustParameters,
    (
        Field("uncertainty_set", "enum", "BOX, ELLIPSOIDAL or '' (default).",
              enum_prefix="UNCERTAINTY_SET_"),
        Field("confidence_level", "number", "Confidence level in (0, 1); null = 0.95.", True),
        Field("observations", "integer", "Observations behind the expected returns (0 = from the "
              "history)."),
    ),
)  # fmt: skip

MULTI_OBJECTIVE = Schema(
    "multi-objective weights",
    MultiObjectiveWeights,
    (
        Field("return_weight", "number", "Weight on the expected return; null = 1.", True),
        Field("variance_weight", "number", "Weight on the variance; null = 1.", True),
        Field("turnover_weight", "number", "Weight on the two-way turnover; null = 0.", True),
        Field("l2_weight", "number", "Weight on the squared L2 norm of the weights; null = 0.", True),
    ),
)

RISK_PARAMETERS = Schema(
    "risk parameters",
    RiskParameters,
    (
        Field("risk_free_rate", "number", "Annualised risk-free rate (decimal)."),
        Field("risk_aversion", "number", "Risk aversion of the quadratic utility; null = 1.", True),
        Field("periods_per_year", "integer", "Periods per year to annualise (0 = 252)."),
        Field("returns_estimator", "enum", "MEAN_HISTORICAL, EMA, CAPM or '' (default).",
              enum_prefix="RETURNS_ESTIMATOR_"),
        Field("covariance_estimator", "enum", "SAMPLE, LEDOIT_WOLF, EXPONENTIAL or ''.",
              enum_prefix="COVARIANCE_ESTIMATOR_"),
        Field("ema_span", "integer", "Span of the exponentially weighted estimators (periods; 0 = 500)."),
        Field("compounding", "boolean", "Geometric mean returns when true; null = true.", True),
        Field("missing_data_policy", "enum", "PAIRWISE, COMMON_WINDOW or '' (default).",
              enum_prefix="MISSING_DATA_POLICY_"),
        Field("risk_measure", "enum", "VARIANCE, CVAR, MAD, CDAR or '' (variance).",
              enum_prefix="RISK_MEASURE_"),
        Field("confidence_level", "number", "Confidence level of CVaR and CDaR; null = 0.95.",
              True),
        Field("linkage_method", "enum", "SINGLE, WARD, COMPLETE, AVERAGE or '' (single).",
              enum_prefix="LINKAGE_METHOD_"),
        Field("risk_budgets", "numbers", "Risk budgets of risk parity by symbol ({} = equal)."),
        Field("robust", "record", "Uncertainty set (a robust parameters object); null = unset.", True,
              record=ROBUST),
        Field("multi_objective", "record", "Multi-objective weights object; null = unset.", True,
              record=MULTI_OBJECTIVE),
    ),
)  # fmt: skip

VIEW = Schema(
    "view",
    View,
    (
        Field("weights", "numbers", "View portfolio by symbol (a row of P)."),
        Field("expected_return", "number", "Annualised expected return of the view (Q, decimal)."),
        Field("confidence", "number", "Idzorek confidence in [0, 1]; null = none.", True),
    ),
)

BLACK_LITTERMAN = Schema(
    "Black-Litterman inputs",
    BlackLittermanInputs,
    (
        Field("market_caps", "numbers", "Market capitalisations by symbol ($)."),
        Field("prior_returns", "numbers", "Prior annualised expected returns by symbol."),
        Field("risk_aversion", "number", "Risk aversion delta; null = implied.", True),
        Field("tau", "number", "Tau on the prior covariance; null = 0.05.", True),
        Field("views", "records", "The views (view objects).", record=VIEW),
        Field("omega", "number_list", "View uncertainty Omega, row-major K x K ([] = default)."),
    ),
)


RECOMPUTE = Schema(
    "recompute policy",
    RecomputePolicy,
    (
        Field("on_market_data", "boolean", "Re-run when bars of one of its strategies (or of its market "
              "symbol) are ingested."),
        Field("debounce_seconds", "number", "Seconds after the last ingest before the re-run (s); null = 5.",
              True),
        Field("schedule_interval_seconds", "number", "Seconds between scheduled re-runs (s); 0 = no "
              "schedule."),
        Field("drift_threshold", "number", "Re-run when the stored holdings' two-way drift from the latest "
              "run's weights exceeds it (fraction); null = no drift trigger.", True),
    ),
)  # fmt: skip
"""When a configuration re-runs by itself (``command_side.recompute``)."""

RECOMPUTE_COLUMN = "recompute"
"""The ``jsonb`` column of the recompute policy (migration ``0019_recompute``), outside :data:`CONTENT_COLUMNS`:
the migrations before it read and write those four only."""


def recompute_column(config: OptimizationConfiguration) -> JsonObject:
    """The stored ``recompute`` column: ``{"schema_version": 2, "policy": recompute policy object or null}``."""
    policy = None if config.recompute is None else RECOMPUTE.to_json(config.recompute, versioned=False)
    return {"schema_version": CONFIGURATION_SCHEMA_VERSION, "policy": policy}


def recompute_from_column(column: Mapping[str, Any] | None) -> RecomputePolicy | None:
    """The recompute policy of a stored ``recompute`` column (None, or a null ``policy``: no policy).

    Raises
    ------
    SchemaError
        When the column is not of a schema version this build reads.
    """
    if column is None:
        return None
    version = column.get("schema_version")
    if version != CONFIGURATION_SCHEMA_VERSION:
        raise SchemaError(f"configuration recompute: schema_version {version!r} is not one this build reads")
    policy = column.get("policy")
    return None if policy is None else RECOMPUTE.from_json(policy, versioned=False)


assert tuple((f.key, f.kind) for f in STRATEGY.fields) == (
    ("symbol", "text"),
    ("sector", "text"),
    ("classifications", "texts"),
)  # _strategy_json writes these


def _strategy_json(strategy: Strategy) -> JsonObject:
    """``STRATEGY.to_json(strategy, versioned=False)``, written out (a configuration holds up to thousands)."""
    return {
        "symbol": str(strategy.symbol),
        "sector": str(strategy.sector),
        "classifications": {str(k): str(v) for k, v in strategy.classifications.items()},
    }


def configuration_columns(config: OptimizationConfiguration) -> dict[str, JsonObject]:
    """The stored ``strategies``, ``constraints``, ``risk_parameters`` and ``black_litterman`` of ``config``.

    An unset ``black_litterman`` (every method but Black-Litterman) is stored as ``{"schema_version": 2,
    "inputs": null}``; a set one as ``{"schema_version": 2, "inputs": {...}}``.
    """
    black_litterman = None
    if config.black_litterman is not None:
        black_litterman = BLACK_LITTERMAN.to_json(config.black_litterman, versioned=False)
    return {
        "strategies": {
            "schema_version": CONFIGURATION_SCHEMA_VERSION,
            "strategies": [_strategy_json(s) for s in config.strategies],
        },
        "constraints": CONSTRAINTS.to_json(config.constraints),
        "risk_parameters": RISK_PARAMETERS.to_json(config.risk_parameters),
        "black_litterman": {"schema_version": CONFIGURATION_SCHEMA_VERSION, "inputs": black_litterman},
    }


def configuration_content_from_columns(columns: Mapping[str, Any]) -> dict[str, Any]:
    """The content fields of a configuration from its stored columns (decoded JSON).

    ``strategies``, ``constraints``, ``risk_parameters`` and ``black_litterman``: keyword arguments of
    ``OptimizationConfiguration``. An empty stored object reads as the default instance.

    Raises
    ------
    SchemaError
        When a column is not of a schema version this build reads.
    """
    for name in ("strategies", "black_litterman"):
        version = columns[name].get("schema_version")
        if version != CONFIGURATION_SCHEMA_VERSION:
            raise SchemaError(f"configuration {name}: schema_version {version!r} is not one this build reads")
    inputs = columns["black_litterman"]["inputs"]
    return {
        "strategies": tuple(STRATEGY.from_json(s, versioned=False) for s in columns["strategies"]["strategies"]),
        "constraints": CONSTRAINTS.from_json(columns["constraints"]),
        "risk_parameters": RISK_PARAMETERS.from_json(columns["risk_parameters"]),
        "black_litterman": None if inputs is None else BLACK_LITTERMAN.from_json(inputs, versioned=False),
    }


def configuration_content(config: OptimizationConfiguration) -> dict[str, Any]:
    """The versioned content of a configuration in its stored form (JSON-ready).

    The stored content columns with ``objective``, ``method``, ``lookback_periods``, ``market_symbol`` and
    ``enabled`` (not the portfolio, the version or the time), and ``recompute`` (the stored column) only when a
    recompute policy is set: the hash of a configuration without one is what it was before migration
    ``0019_recompute``, so stored hashes stay valid.
    """
    content: dict[str, Any] = {
        "objective": config.objective,
        "method": config.method,
        **configuration_columns(config),
        "lookback_periods": config.lookback_periods,
        "market_symbol": config.market_symbol,
        "enabled": config.enabled,
    }
    if config.recompute is not None:
        content[RECOMPUTE_COLUMN] = recompute_column(config)
    return content


def content_hash(config: OptimizationConfiguration) -> str:
    """sha256 of the canonical JSON (``json.dumps(sort_keys=True)``) of :func:`configuration_content`."""
    return content_hash_of(configuration_content(config))


def content_hash_of(content: Mapping[str, Any]) -> str:
    """:func:`content_hash` of a configuration whose :func:`configuration_content` is already at hand."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
