"""The stored schema of a configuration's content: strategies, constraints, risk parameters, Black-Litterman inputs.

The four ``jsonb`` columns of ``optimization_configurations`` (``strategies``, ``constraints``,
``risk_parameters``, ``black_litterman``) hold the objects below, each with ``schema_version``
(:data:`CONFIGURATION_SCHEMA_VERSION`), encoded by the :class:`Schema` tables of
``command_side.trading_records`` (stored keys documented in ``docs/storage_schema.md``).
:func:`configuration_columns` writes them and :func:`fill_configuration` reads them back; the configuration's
``content_hash`` is computed elsewhere (``command_side.mapping.content_hash``) from the contract message and does
not depend on this format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from command_side.records import JsonObject, SchemaError
from command_side.trading_records import Field, Schema
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

CONFIGURATION_SCHEMA_VERSION: Final = 2
"""Version of the four content columns written by this build. Version 2 (migration ``0011_stored_symbol_keys``)
names a strategy's identifier ``symbol``; version 1 rows no longer exist after ``migrate``."""

CONTENT_COLUMNS = ("strategies", "constraints", "risk_parameters", "black_litterman")
"""The ``jsonb`` columns of ``optimization_configurations`` written by :func:`configuration_columns`."""

STRATEGY = Schema(
    "strategy",
    pb.Strategy,
    (
        Field("symbol", "symbol", "text", "Instrument symbol (the symbol of its stored prices)."),
        Field("sector", "sector", "text", "Sector (or any group) used by sector limits; '' = none."),
        Field("classifications", "classifications", "texts", "Group of the strategy in further schemes, by scheme."),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)
"""A configuration's strategy: identity and groups only (returns and current weights belong to a run)."""

WEIGHT_BOUNDS = Schema(
    "weight bounds",
    pb.WeightBounds,
    (
        Field("min_weight", "min_weight", "number", "Lower weight bound (fraction); null = the global one.", True),
        Field("max_weight", "max_weight", "number", "Upper weight bound (fraction); null = the global one.", True),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)

SECTOR_LIMIT = Schema(
    "sector limit",
    pb.SectorLimit,
    (
        Field("sector", "sector", "text", "Sector name, or group name within the scheme."),
        Field("min_weight", "min_weight", "number", "Minimum total weight (fraction); null = none.", True),
        Field("max_weight", "max_weight", "number", "Maximum total weight (fraction); null = none.", True),
        Field("scheme", "scheme", "text", "Classification scheme; '' = the strategies' sector."),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)

CONSTRAINTS = Schema(
    "constraints",
    pb.OptimizationConstraints,
    (
        Field("min_weight", "min_weight", "number", "Lower bound of every weight (fraction); null = 0.", True),
        Field("max_weight", "max_weight", "number", "Upper bound of every weight (fraction); null = 1.", True),
        Field("strategy_bounds", "strategy_bounds", "records", "Per-strategy bounds by symbol (weight bounds "
              "objects).", record=WEIGHT_BOUNDS, keyed=True),
        Field("sector_limits", "sector_limits", "records", "Sector limits (sector limit objects).",
              record=SECTOR_LIMIT),
        Field("min_return", "min_return", "number", "Minimum annualised expected return (decimal); null = none.",
              True),
        Field("max_volatility", "max_volatility", "number", "Maximum annualised volatility (decimal); null = none.",
              True),
        Field("turnover_limit", "turnover_limit", "number", "Two-way turnover cap (fraction; a full switch is 2); "
              "null = none.", True),
        Field("turnover_caps", "turnover_caps", "numbers", "Per-strategy caps on |w - current| (fractions)."),
        Field("leverage_limit", "leverage_limit", "number", "Gross exposure cap (fraction, >= 1); null = none.",
              True),
        Field("transaction_costs_bps", "transaction_costs_bps", "numbers", "Linear transaction costs by symbol "
              "(basis points of traded value)."),
        Field("benchmark_weights", "benchmark_weights", "numbers", "Benchmark weights by symbol (fractions)."),
        Field("tracking_error_limit", "tracking_error_limit", "number", "Annualised tracking-error cap (decimal); "
              "null = none.", True),
        Field("betas", "betas", "numbers", "Betas by symbol for beta_tolerance ({} = estimated)."),
        Field("beta_tolerance", "beta_tolerance", "number", "Beta neutrality tolerance; null = none.", True),
        Field("max_holdings", "max_holdings", "integer", "Most strategies with a non-zero weight; null = no limit.",
              True),
        Field("min_position_weight", "min_position_weight", "number", "Minimum |weight| of a held strategy "
              "(fraction); null = none.", True),
        Field("min_net_exposure", "min_net_exposure", "number", "Lower net exposure bound (fraction); null = the "
              "budget.", True),
        Field("max_net_exposure", "max_net_exposure", "number", "Upper net exposure bound (fraction); null = the "
              "budget.", True),
        Field("allow_relaxation", "allow_relaxation", "boolean", "Whether infeasible limits may be relaxed."),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)  # fmt: skip

ROBUST = Schema(
    "robust parameters",
    pb.RobustParameters,
    (
        Field("uncertainty_set", "uncertainty_set", "enum", "BOX, ELLIPSOIDAL or '' (default).",
              enum_prefix="UNCERTAINTY_SET_"),
        Field("confidence_level", "confidence_level", "number", "Confidence level in (0, 1); null = 0.95.", True),
        Field("observations", "observations", "integer", "Observations behind the expected returns (0 = from the "
              "history)."),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)  # fmt: skip

MULTI_OBJECTIVE = Schema(
    "multi-objective weights",
    pb.MultiObjectiveWeights,
    (
        Field("return_weight", "return_weight", "number", "Weight on the expected return; null = 1.", True),
        Field("variance_weight", "variance_weight", "number", "Weight on the variance; null = 1.", True),
        Field("turnover_weight", "turnover_weight", "number", "Weight on the two-way turnover; null = 0.", True),
        Field("l2_weight", "l2_weight", "number", "Weight on the squared L2 norm of the weights; null = 0.", True),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)

RISK_PARAMETERS = Schema(
    "risk parameters",
    pb.RiskParameters,
    (
        Field("risk_free_rate", "risk_free_rate", "number", "Annualised risk-free rate (decimal)."),
        Field("risk_aversion", "risk_aversion", "number", "Risk aversion of the quadratic utility; null = 1.", True),
        Field("periods_per_year", "periods_per_year", "integer", "Periods per year to annualise (0 = 252)."),
        Field("returns_estimator", "returns_estimator", "enum", "MEAN_HISTORICAL, EMA, CAPM or '' (default).",
              enum_prefix="RETURNS_ESTIMATOR_"),
        Field("covariance_estimator", "covariance_estimator", "enum", "SAMPLE, LEDOIT_WOLF, EXPONENTIAL or ''.",
              enum_prefix="COVARIANCE_ESTIMATOR_"),
        Field("ema_span", "ema_span", "integer", "Span of the exponentially weighted estimators (periods; 0 = 500)."),
        Field("compounding", "compounding", "boolean", "Geometric mean returns when true; null = true.", True),
        Field("missing_data_policy", "missing_data_policy", "enum", "PAIRWISE, COMMON_WINDOW or '' (default).",
              enum_prefix="MISSING_DATA_POLICY_"),
        Field("risk_measure", "risk_measure", "enum", "VARIANCE, CVAR, MAD, CDAR or '' (variance).",
              enum_prefix="RISK_MEASURE_"),
        Field("confidence_level", "confidence_level", "number", "Confidence level of CVaR and CDaR; null = 0.95.",
              True),
        Field("linkage_method", "linkage_method", "enum", "SINGLE, WARD, COMPLETE, AVERAGE or '' (single).",
              enum_prefix="LINKAGE_METHOD_"),
        Field("risk_budgets", "risk_budgets", "numbers", "Risk budgets of risk parity by symbol ({} = equal)."),
        Field("robust", "robust", "record", "Uncertainty set (a robust parameters object); null = unset.", True,
              record=ROBUST),
        Field("multi_objective", "multi_objective", "record", "Multi-objective weights object; null = unset.", True,
              record=MULTI_OBJECTIVE),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)  # fmt: skip

VIEW = Schema(
    "view",
    pb.View,
    (
        Field("weights", "weights", "numbers", "View portfolio by symbol (a row of P)."),
        Field("expected_return", "expected_return", "number", "Annualised expected return of the view (Q, decimal)."),
        Field("confidence", "confidence", "number", "Idzorek confidence in [0, 1]; null = none.", True),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)

BLACK_LITTERMAN = Schema(
    "Black-Litterman inputs",
    pb.BlackLittermanInputs,
    (
        Field("market_caps", "market_caps", "numbers", "Market capitalisations by symbol ($)."),
        Field("prior_returns", "prior_returns", "numbers", "Prior annualised expected returns by symbol."),
        Field("risk_aversion", "risk_aversion", "number", "Risk aversion delta; null = implied.", True),
        Field("tau", "tau", "number", "Tau on the prior covariance; null = 0.05.", True),
        Field("views", "views", "records", "The views (view objects).", record=VIEW),
        Field("omega", "omega", "number_list", "View uncertainty Omega, row-major K x K ([] = default)."),
    ),
    version=CONFIGURATION_SCHEMA_VERSION,
)


def configuration_columns(config: cmd_pb.OptimizationConfiguration) -> dict[str, JsonObject]:
    """The stored ``strategies``, ``constraints``, ``risk_parameters`` and ``black_litterman`` of ``config``.

    An unset ``black_litterman`` (every method but Black-Litterman) is stored as ``{"schema_version": 2,
    "inputs": null}``; a set one as ``{"schema_version": 2, "inputs": {...}}``.
    """
    black_litterman = None
    if config.HasField("black_litterman"):
        black_litterman = BLACK_LITTERMAN.to_json(config.black_litterman, versioned=False)
    return {
        "strategies": {
            "schema_version": CONFIGURATION_SCHEMA_VERSION,
            "strategies": [STRATEGY.to_json(s, versioned=False) for s in config.strategies],
        },
        "constraints": CONSTRAINTS.to_json(config.constraints),
        "risk_parameters": RISK_PARAMETERS.to_json(config.risk_parameters),
        "black_litterman": {"schema_version": CONFIGURATION_SCHEMA_VERSION, "inputs": black_litterman},
    }


def fill_configuration(columns: Mapping[str, Any], config: cmd_pb.OptimizationConfiguration) -> None:
    """Write the stored content columns (decoded JSON) into ``config``.

    An empty stored ``constraints`` or ``risk_parameters`` object leaves the field unset, as it was written.

    Raises
    ------
    SchemaError
        When a column is not of a schema version this build reads.
    """
    for name in ("strategies", "black_litterman"):
        version = columns[name].get("schema_version")
        if version != CONFIGURATION_SCHEMA_VERSION:
            raise SchemaError(f"configuration {name}: schema_version {version!r} is not one this build reads")
    for strategy in columns["strategies"]["strategies"]:
        config.strategies.append(STRATEGY.from_json(strategy, versioned=False))
    constraints = CONSTRAINTS.from_json(columns["constraints"])
    if constraints.ListFields():
        config.constraints.CopyFrom(constraints)
    risk_parameters = RISK_PARAMETERS.from_json(columns["risk_parameters"])
    if risk_parameters.ListFields():
        config.risk_parameters.CopyFrom(risk_parameters)
    inputs = columns["black_litterman"]["inputs"]
    if inputs is not None:
        config.black_litterman.CopyFrom(BLACK_LITTERMAN.from_json(inputs, versioned=False))
