"""The stored schema of a configuration's content (command_side.configuration_records)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from command_side import configuration as domain
from command_side.configuration_messages import configuration_from_message, configuration_message
from command_side.configuration_records import (
    BLACK_LITTERMAN,
    CONSTRAINTS,
    CONTENT_COLUMNS,
    MULTI_OBJECTIVE,
    RECOMPUTE,
    RISK_PARAMETERS,
    ROBUST,
    SECTOR_LIMIT,
    STRATEGY,
    VIEW,
    WEIGHT_BOUNDS,
    configuration_columns,
    configuration_content_from_columns,
    content_hash,
    recompute_column,
    recompute_from_column,
)
from command_side.records import SchemaError
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage_schema.md"


def full_configuration(portfolio_id: str = "cfg") -> cmd_pb.OptimizationConfiguration:
    """A configuration with every stored field of its content set."""
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        objective=pb.OBJECTIVE_MULTI_OBJECTIVE,
        method=pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN,
        lookback_periods=252,
        market_symbol="SPY",
        enabled=True,
    )
    config.strategies.add(symbol="A", sector="Tech", classifications={"country": "US", "style": "growth"})
    config.strategies.add(symbol="B", sector="Energy")
    c = config.constraints
    c.min_weight, c.max_weight, c.min_return, c.max_volatility = -0.1, 0.7, 0.05, 0.2
    c.strategy_bounds["A"].max_weight = 0.5
    c.strategy_bounds["B"].min_weight = 0.0  # an explicit zero is kept
    c.sector_limits.add(sector="Tech", max_weight=0.6)
    c.sector_limits.add(sector="US", min_weight=0.1, scheme="country")
    c.turnover_limit, c.leverage_limit, c.tracking_error_limit, c.beta_tolerance = 0.5, 1.3, 0.05, 0.1
    c.turnover_caps["A"] = 0.2
    c.transaction_costs_bps.update({"A": 5.0, "B": 10.0})
    c.benchmark_weights.update({"A": 0.5, "B": 0.5})
    c.betas.update({"A": 1.2, "B": 0.8})
    c.max_holdings, c.min_position_weight = 2, 0.05
    c.min_net_exposure, c.max_net_exposure, c.allow_relaxation = 0.9, 1.1, True
    r = config.risk_parameters
    r.risk_free_rate, r.risk_aversion, r.periods_per_year, r.ema_span = 0.02, 2.5, 52, 100
    r.returns_estimator, r.covariance_estimator = pb.RETURNS_ESTIMATOR_EMA, pb.COVARIANCE_ESTIMATOR_LEDOIT_WOLF
    r.compounding, r.missing_data_policy = False, pb.MISSING_DATA_POLICY_COMMON_WINDOW
    r.risk_measure, r.confidence_level, r.linkage_method = pb.RISK_MEASURE_CVAR, 0.9, pb.LINKAGE_METHOD_WARD
    r.risk_budgets.update({"A": 0.6, "B": 0.4})
    r.robust.uncertainty_set, r.robust.confidence_level, r.robust.observations = pb.UNCERTAINTY_SET_BOX, 0.9, 500
    r.multi_objective.return_weight, r.multi_objective.turnover_weight = 1.0, 0.1
    b = config.black_litterman
    b.market_caps.update({"A": 2e12, "B": 5e11})
    b.risk_aversion, b.tau = 2.5, 0.05
    view = b.views.add(expected_return=0.02, confidence=0.6)
    view.weights.update({"A": 1.0, "B": -1.0})
    b.omega.append(0.0004)
    return config


def full_domain_configuration(portfolio_id: str = "cfg") -> domain.OptimizationConfiguration:
    """:func:`full_configuration` as the domain's dataclass, written out by hand."""
    return domain.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        objective="OBJECTIVE_MULTI_OBJECTIVE",
        method="OPTIMIZATION_METHOD_BLACK_LITTERMAN",
        lookback_periods=252,
        market_symbol="SPY",
        enabled=True,
        strategies=(
            domain.Strategy(symbol="A", sector="Tech", classifications={"country": "US", "style": "growth"}),
            domain.Strategy(symbol="B", sector="Energy"),
        ),
        constraints=domain.OptimizationConstraints(
            min_weight=-0.1,
            max_weight=0.7,
            strategy_bounds={"A": domain.WeightBounds(max_weight=0.5), "B": domain.WeightBounds(min_weight=0.0)},
            sector_limits=(
                domain.SectorLimit(sector="Tech", max_weight=0.6),
                domain.SectorLimit(sector="US", min_weight=0.1, scheme="country"),
            ),
            min_return=0.05,
            max_volatility=0.2,
            turnover_limit=0.5,
            turnover_caps={"A": 0.2},
            leverage_limit=1.3,
            transaction_costs_bps={"A": 5.0, "B": 10.0},
            benchmark_weights={"A": 0.5, "B": 0.5},
            tracking_error_limit=0.05,
            betas={"A": 1.2, "B": 0.8},
            beta_tolerance=0.1,
            max_holdings=2,
            min_position_weight=0.05,
            min_net_exposure=0.9,
            max_net_exposure=1.1,
            allow_relaxation=True,
        ),
        risk_parameters=domain.RiskParameters(
            risk_free_rate=0.02,
            risk_aversion=2.5,
            periods_per_year=52,
            returns_estimator="EMA",
            covariance_estimator="LEDOIT_WOLF",
            ema_span=100,
            compounding=False,
            missing_data_policy="COMMON_WINDOW",
            risk_measure="CVAR",
            confidence_level=0.9,
            linkage_method="WARD",
            risk_budgets={"A": 0.6, "B": 0.4},
            robust=domain.RobustParameters(uncertainty_set="BOX", confidence_level=0.9, observations=500),
            multi_objective=domain.MultiObjectiveWeights(return_weight=1.0, turnover_weight=0.1),
        ),
        black_litterman=domain.BlackLittermanInputs(
            market_caps={"A": 2e12, "B": 5e11},
            risk_aversion=2.5,
            tau=0.05,
            views=(domain.View(weights={"A": 1.0, "B": -1.0}, expected_return=0.02, confidence=0.6),),
            omega=(0.0004,),
        ),
    )


def stored_and_read(config: domain.OptimizationConfiguration) -> domain.OptimizationConfiguration:
    columns = json.loads(json.dumps(configuration_columns(config), allow_nan=False))
    return replace(config, **configuration_content_from_columns(columns))


def test_every_field_of_the_content_survives_the_stored_columns() -> None:
    config = full_domain_configuration()
    assert stored_and_read(config) == config


def test_unset_values_stay_unset() -> None:
    config = domain.OptimizationConfiguration(portfolio_id="p", strategies=(domain.Strategy(symbol="A"),))
    read = stored_and_read(config)
    assert read == config
    assert read.constraints == domain.OptimizationConstraints() and read.risk_parameters == domain.RiskParameters()
    assert read.black_litterman is None
    columns = configuration_columns(config)
    assert columns["black_litterman"] == {"schema_version": 2, "inputs": None}
    assert columns["strategies"] == {
        "schema_version": 2,
        "strategies": [{"symbol": "A", "sector": "", "classifications": {}}],
    }


def test_stored_keys_units_and_enums() -> None:
    columns = configuration_columns(full_domain_configuration())
    constraints, risk = columns["constraints"], columns["risk_parameters"]
    assert constraints["schema_version"] == 2 and risk["schema_version"] == 2
    assert constraints["max_holdings"] == 2
    assert constraints["strategy_bounds"] == {
        "A": {"min_weight": None, "max_weight": 0.5},
        "B": {"min_weight": 0.0, "max_weight": None},
    }
    assert constraints["sector_limits"][1] == {
        "sector": "US",
        "min_weight": 0.1,
        "max_weight": None,
        "scheme": "country",
    }
    assert (risk["returns_estimator"], risk["risk_measure"], risk["linkage_method"]) == ("EMA", "CVAR", "WARD")
    assert risk["robust"] == {"uncertainty_set": "BOX", "confidence_level": 0.9, "observations": 500}
    assert risk["compounding"] is False
    assert columns["black_litterman"]["inputs"]["views"] == [
        {"weights": {"A": 1.0, "B": -1.0}, "expected_return": 0.02, "confidence": 0.6}
    ]


def test_a_column_of_another_schema_version_is_refused() -> None:
    for name in CONTENT_COLUMNS:
        for version in (1, 3):  # version 1 (``strategy_id``) exists only before migration 0011
            columns = json.loads(json.dumps(configuration_columns(full_domain_configuration())))
            columns[name]["schema_version"] = version
            with pytest.raises(SchemaError):
                configuration_content_from_columns(columns)
    columns = json.loads(json.dumps(configuration_columns(full_domain_configuration())))
    columns["strategies"]["schema_version"] = None
    with pytest.raises(SchemaError):
        configuration_content_from_columns(columns)


def test_the_content_hash_is_the_sha256_of_the_stored_form() -> None:
    config = full_domain_configuration()
    stored = {
        "objective": "OBJECTIVE_MULTI_OBJECTIVE",
        "method": "OPTIMIZATION_METHOD_BLACK_LITTERMAN",
        **configuration_columns(config),
        "lookback_periods": 252,
        "market_symbol": "SPY",
        "enabled": True,
    }
    canonical = json.dumps(stored, sort_keys=True, separators=(",", ":"))
    assert content_hash(config) == hashlib.sha256(canonical.encode()).hexdigest()
    # Neither the portfolio, the version nor the time is content; every stored value is.
    moved = replace(config, portfolio_id="other", version=7, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert content_hash(moved) == content_hash(config)
    assert content_hash(stored_and_read(config)) == content_hash(config)
    for changed in (
        replace(config, enabled=False),
        replace(config, lookback_periods=0),
        replace(config, strategies=config.strategies[:1]),
        replace(config, constraints=replace(config.constraints, max_holdings=None)),
        replace(config, black_litterman=None),
    ):
        assert content_hash(changed) != content_hash(config)


def test_every_stored_key_is_documented() -> None:
    """docs/storage_schema.md lists every key of the configuration objects in a table row of its own."""
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    for schema in (STRATEGY, CONSTRAINTS, WEIGHT_BOUNDS, SECTOR_LIMIT, RISK_PARAMETERS, ROBUST, MULTI_OBJECTIVE,
                   BLACK_LITTERMAN, VIEW, RECOMPUTE):  # fmt: skip
        for field in schema.fields:
            assert field.key == field.key.lower() and field.key in documented, f"{schema.name}.{field.key}"
    assert {"strategies", "inputs", "policy"} <= documented


def test_a_recompute_policy_is_content_only_when_set() -> None:
    """Without a policy the hash is the one stored before migration 0019; with one it is a version of its own."""
    config = full_domain_configuration()
    assert config.recompute is None
    assert recompute_column(config) == {"schema_version": 2, "policy": None}
    assert recompute_from_column(recompute_column(config)) is None and recompute_from_column(None) is None
    policy = domain.RecomputePolicy(on_market_data=True, debounce_seconds=2.5, schedule_interval_seconds=3600.0)
    with_policy = replace(config, recompute=policy)
    stored = json.loads(json.dumps(recompute_column(with_policy)))
    assert stored == {
        "schema_version": 2,
        "policy": {
            "on_market_data": True,
            "debounce_seconds": 2.5,
            "schedule_interval_seconds": 3600.0,
            "drift_threshold": None,
        },
    }
    assert recompute_from_column(stored) == policy
    # A policy stored before drift_threshold existed (migration 0019) reads with no drift trigger.
    del stored["policy"]["drift_threshold"]
    assert recompute_from_column(stored) == policy
    assert content_hash(with_policy) != content_hash(config)
    assert content_hash(replace(config, recompute=domain.RecomputePolicy())) != content_hash(with_policy)
    with pytest.raises(SchemaError):
        recompute_from_column({"schema_version": 1, "policy": None})
    # The message round trip keeps it (an unset debounce stays unset: the default 5 s).
    message = configuration_message(replace(config, recompute=domain.RecomputePolicy(on_market_data=True)))
    assert message.recompute.on_market_data and not message.recompute.HasField("debounce_seconds")
    assert configuration_from_message(message).recompute == domain.RecomputePolicy(on_market_data=True)
