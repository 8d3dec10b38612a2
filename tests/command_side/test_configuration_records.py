"""The stored schema of a configuration's content (command_side.configuration_records)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from command_side.configuration_records import (
    BLACK_LITTERMAN,
    CONSTRAINTS,
    CONTENT_COLUMNS,
    MULTI_OBJECTIVE,
    RISK_PARAMETERS,
    ROBUST,
    SECTOR_LIMIT,
    STRATEGY,
    VIEW,
    WEIGHT_BOUNDS,
    configuration_columns,
    fill_configuration,
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


def stored_and_read(config: cmd_pb.OptimizationConfiguration) -> cmd_pb.OptimizationConfiguration:
    columns = json.loads(json.dumps(configuration_columns(config), allow_nan=False))
    read = cmd_pb.OptimizationConfiguration()
    fill_configuration(columns, read)
    return read


def content_of(config: cmd_pb.OptimizationConfiguration) -> cmd_pb.OptimizationConfiguration:
    content = cmd_pb.OptimizationConfiguration()
    content.strategies.extend(config.strategies)
    for name in ("constraints", "risk_parameters", "black_litterman"):
        if config.HasField(name):  # type: ignore[arg-type]
            getattr(content, name).CopyFrom(getattr(config, name))
    return content


def test_every_field_of_the_content_survives_the_stored_columns() -> None:
    config = full_configuration()
    assert stored_and_read(config) == content_of(config)


def test_unset_messages_stay_unset() -> None:
    config = cmd_pb.OptimizationConfiguration(portfolio_id="p")
    config.strategies.add(symbol="A")
    read = stored_and_read(config)
    assert not read.HasField("constraints") and not read.HasField("risk_parameters")
    assert not read.HasField("black_litterman")
    columns = configuration_columns(config)
    assert columns["black_litterman"] == {"schema_version": 2, "inputs": None}
    assert columns["strategies"] == {
        "schema_version": 2,
        "strategies": [{"symbol": "A", "sector": "", "classifications": {}}],
    }


def test_stored_keys_units_and_enums() -> None:
    columns = configuration_columns(full_configuration())
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
            columns = json.loads(json.dumps(configuration_columns(full_configuration())))
            columns[name]["schema_version"] = version
            with pytest.raises(SchemaError):
                fill_configuration(columns, cmd_pb.OptimizationConfiguration())
    columns = json.loads(json.dumps(configuration_columns(full_configuration())))
    columns["strategies"]["schema_version"] = None
    with pytest.raises(SchemaError):
        fill_configuration(columns, cmd_pb.OptimizationConfiguration())


def test_every_stored_key_is_documented() -> None:
    """docs/storage_schema.md lists every key of the configuration objects in a table row of its own."""
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    for schema in (STRATEGY, CONSTRAINTS, WEIGHT_BOUNDS, SECTOR_LIMIT, RISK_PARAMETERS, ROBUST, MULTI_OBJECTIVE,
                   BLACK_LITTERMAN, VIEW):  # fmt: skip
        for field in schema.fields:
            assert field.key == field.key.lower() and field.key in documented, f"{schema.name}.{field.key}"
    assert {"strategies", "inputs"} <= documented
