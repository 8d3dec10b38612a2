"""proto → domain conversions of ``command_side.mapping`` and the field paths of their errors, without gRPC.

Expected values are written out by hand from the request each test builds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from command_side.configuration_messages import configuration_from_message
from command_side.configuration_records import configuration_content, content_hash
from command_side.mapping import (
    configuration_from_request,
    datetime_to_timestamp,
    normalize_configuration,
    optimize_request_from_configuration,
    timestamp_to_datetime,
    validate_optimize_request,
)
from services.engine import Method
from services.errors import InvalidInputError
from services.optimization import Objective, RiskMeasure, SectorLimit
from services.types import CovarianceEstimator, MissingDataPolicy, ReturnsEstimator
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

T0 = datetime(2024, 1, 2, tzinfo=UTC)


def returns_request(**fields: object) -> cmd_pb.OptimizeRequest:
    """Three strategies, three daily returns, max Sharpe."""
    request = cmd_pb.OptimizeRequest(portfolio_id="p1", objective=pb.OBJECTIVE_MAX_SHARPE, **fields)
    for day in range(3):
        request.returns.timestamps.add().FromDatetime(T0 + timedelta(days=day))
    request.strategies.add(symbol="A", sector="Tech", returns=[0.01, -0.02, 0.03])
    request.strategies.add(symbol="B", sector="Energy", returns=[0.00, 0.01, 0.02], current_weight=0.5)
    request.strategies.add(symbol="C", sector="Tech", returns=[0.02, 0.02, -0.01], classifications={"region": "EU"})
    return request


def moments_request() -> cmd_pb.OptimizeRequest:
    request = cmd_pb.OptimizeRequest(portfolio_id="p2", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    request.strategies.add(symbol="X")
    request.strategies.add(symbol="Y")
    request.moments.expected_returns.extend([0.05, 0.07])
    request.moments.covariance.extend([0.04, 0.01, 0.01, 0.09])
    return request


def test_returns_request_becomes_the_engine_problem_and_history() -> None:
    request = returns_request(constraints=pb.OptimizationConstraints(max_weight=0.6))
    request.constraints.strategy_bounds["B"].min_weight = 0.1
    request.risk_parameters.risk_free_rate = 0.02
    validated = validate_optimize_request(request)
    problem = validated.problem
    assert problem.symbols == ("A", "B", "C")
    assert problem.objective is Objective.MAX_SHARPE
    np.testing.assert_array_equal(problem.lower_bounds, [0.0, 0.1, 0.0])
    np.testing.assert_array_equal(problem.upper_bounds, [0.6, 0.6, 0.6])
    assert problem.sectors == ("Tech", "Energy", "Tech")
    assert problem.classifications == (("region", ("", "", "EU")),)
    assert problem.risk_free_rate == 0.02
    assert validated.inline_returns is not None and validated.moments is None and validated.market_data is None
    np.testing.assert_array_equal(
        validated.inline_returns.returns, [[0.01, 0.00, 0.02], [-0.02, 0.01, 0.02], [0.03, 0.02, -0.01]]
    )
    np.testing.assert_array_equal(
        validated.inline_returns.timestamps,
        np.array(["2024-01-02", "2024-01-03", "2024-01-04"], dtype="datetime64[us]"),
    )
    assert validated.inline_returns.market_returns is None
    settings = validated.settings
    assert (settings.returns_estimator, settings.covariance_estimator) == (
        ReturnsEstimator.MEAN_HISTORICAL,
        CovarianceEstimator.SAMPLE,
    )
    assert (settings.periods_per_year, settings.ema_span, settings.compounding) == (252, 500, True)
    assert settings.missing_data_policy is MissingDataPolicy.PAIRWISE
    assert validated.method.method is Method.MEAN_VARIANCE and validated.method.risk_measure is None
    assert validated.current_weights == {"B": 0.5}
    assert validated.request_hash == ""  # only an idempotency key needs one


def test_moments_request_becomes_the_engine_moments() -> None:
    validated = validate_optimize_request(moments_request())
    assert validated.moments is not None and validated.inline_returns is None
    np.testing.assert_array_equal(validated.moments.expected_returns, [0.05, 0.07])
    np.testing.assert_array_equal(validated.moments.covariance, [[0.04, 0.01], [0.01, 0.09]])
    assert validated.problem.objective is Objective.MIN_VOLATILITY
    np.testing.assert_array_equal(validated.problem.upper_bounds, [1.0, 1.0])


def test_sector_limits_risk_measure_and_estimators_are_translated() -> None:
    request = returns_request()
    request.constraints.sector_limits.add(sector="Tech", max_weight=0.5)
    request.constraints.sector_limits.add(sector="EU", min_weight=0.1, scheme="region")
    request.risk_parameters.risk_measure = pb.RISK_MEASURE_CVAR
    request.risk_parameters.confidence_level = 0.9
    request.risk_parameters.covariance_estimator = pb.COVARIANCE_ESTIMATOR_LEDOIT_WOLF
    request.risk_parameters.returns_estimator = pb.RETURNS_ESTIMATOR_EMA
    request.risk_parameters.ema_span = 60
    request.risk_parameters.periods_per_year = 12
    validated = validate_optimize_request(request)
    assert validated.problem.sector_limits == (
        SectorLimit("Tech", None, 0.5, ""),
        SectorLimit("EU", 0.1, None, "region"),
    )
    assert (validated.method.risk_measure, validated.method.confidence_level) == (RiskMeasure.CVAR, 0.9)
    assert validated.settings.covariance_estimator is CovarianceEstimator.LEDOIT_WOLF
    assert (validated.settings.returns_estimator, validated.settings.ema_span) == (ReturnsEstimator.EMA, 60)
    assert validated.settings.periods_per_year == 12


def test_request_hash_fingerprints_requests_with_an_idempotency_key() -> None:
    first = validate_optimize_request(returns_request(request_id="r-1")).request_hash
    same = validate_optimize_request(returns_request(request_id="r-1")).request_hash
    other = returns_request(request_id="r-1")
    other.strategies[0].returns[0] = 0.011
    assert len(first) == 64 and all(c in "0123456789abcdef" for c in first)
    assert first == same
    assert validate_optimize_request(other).request_hash != first


def test_configuration_of_a_request_keeps_everything_but_the_data() -> None:
    request = returns_request(constraints=pb.OptimizationConstraints(max_weight=0.6))
    request.risk_parameters.risk_free_rate = 0.02
    expected = cmd_pb.OptimizationConfiguration(
        portfolio_id="p1",
        objective=pb.OBJECTIVE_MAX_SHARPE,
        method=pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
        constraints=pb.OptimizationConstraints(max_weight=0.6),
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
        enabled=True,
    )
    expected.strategies.add(symbol="A", sector="Tech")
    expected.strategies.add(symbol="B", sector="Energy")
    expected.strategies.add(symbol="C", sector="Tech", classifications={"region": "EU"})
    assert configuration_from_request(request) == expected
    assert validate_optimize_request(request).configuration == expected


def test_market_data_request_keeps_its_window_in_the_configuration() -> None:
    request = cmd_pb.OptimizeRequest(portfolio_id="p3", objective=pb.OBJECTIVE_MAX_SHARPE)
    request.strategies.add(symbol="A")
    request.strategies.add(symbol="B")
    request.market_data.lookback_periods = 250
    request.market_data.market_symbol = "SPY"
    validated = validate_optimize_request(request)
    assert validated.market_data == pb.MarketDataWindow(lookback_periods=250, market_symbol="SPY")
    config = validated.configuration
    assert (config.lookback_periods, config.market_symbol) == (250, "SPY")


def test_a_stored_configuration_reruns_as_the_request_that_implied_it() -> None:
    config = configuration_from_request(returns_request(constraints=pb.OptimizationConstraints(max_weight=0.6)))
    config.lookback_periods = 100
    rerun = optimize_request_from_configuration(config, "again-1")
    assert (rerun.request_id, rerun.WhichOneof("inputs")) == ("again-1", "market_data")
    assert rerun.market_data == pb.MarketDataWindow(lookback_periods=100)
    assert [s.symbol for s in rerun.strategies] == ["A", "B", "C"]
    assert validate_optimize_request(rerun).configuration == config


def test_configuration_content_hash_follows_the_content() -> None:
    message = configuration_from_request(returns_request())
    config = configuration_from_message(message)
    content = configuration_content(config)
    assert content["objective"] == "OBJECTIVE_MAX_SHARPE"
    assert content["method"] == "OPTIMIZATION_METHOD_MEAN_VARIANCE"
    assert content["strategies"]["strategies"][2] == {
        "symbol": "C",
        "sector": "Tech",
        "classifications": {"region": "EU"},
    }
    assert content_hash(config) == content_hash(configuration_from_message(message))
    message.enabled = False
    assert content_hash(configuration_from_message(message)) != content_hash(config)


def test_normalize_configuration_names_fields_under_its_prefix() -> None:
    config = configuration_from_request(returns_request())
    config.strategies[1].symbol = "A"
    with pytest.raises(InvalidInputError) as caught:
        normalize_configuration(config)
    assert [v.field for v in caught.value.field_violations] == ["configuration.strategies[1].symbol"]
    config.strategies[1].symbol = "B"
    config.enabled = False
    normal = normalize_configuration(config)
    assert (normal.method, normal.enabled) == (pb.OPTIMIZATION_METHOD_MEAN_VARIANCE, False)


def test_timestamps_convert_both_ways_in_utc() -> None:
    stamp = Timestamp(seconds=1_704_164_645, nanos=123_456_000)  # 2024-01-02T03:04:05.123456Z
    assert timestamp_to_datetime(stamp) == datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert datetime_to_timestamp(datetime(2024, 1, 2, 3, 4, 5, 123456)) == stamp  # naive = UTC
    assert datetime_to_timestamp(datetime(2024, 1, 2, 4, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1)))) == stamp
    assert datetime_to_timestamp(np.datetime64("2024-01-02T03:04:05.123456")) == stamp


Mutation = Callable[[cmd_pb.OptimizeRequest], None]


def _set(path: str, value: object) -> Mutation:
    def mutate(request: cmd_pb.OptimizeRequest) -> None:
        *parents, name = path.split(".")
        target: object = request
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return mutate


def _nan_return(request: cmd_pb.OptimizeRequest) -> None:
    request.strategies[0].returns[2] = math.nan


def _price_to_zero(request: cmd_pb.OptimizeRequest) -> None:
    request.strategies[1].returns[1] = -1.0


def _duplicate_id(request: cmd_pb.OptimizeRequest) -> None:
    request.strategies[2].symbol = "A"


def _short_column(request: cmd_pb.OptimizeRequest) -> None:
    del request.strategies[1].returns[-1]


def _unordered_timestamps(request: cmd_pb.OptimizeRequest) -> None:
    request.returns.timestamps[2].CopyFrom(request.returns.timestamps[1])


def _unknown_bound(request: cmd_pb.OptimizeRequest) -> None:
    request.constraints.strategy_bounds["Z"].max_weight = 0.5


def _inverted_bounds(request: cmd_pb.OptimizeRequest) -> None:
    request.constraints.min_weight = 0.5
    request.constraints.max_weight = 0.4


def _sector_twice(request: cmd_pb.OptimizeRequest) -> None:
    request.constraints.sector_limits.add(sector="Tech", max_weight=0.5)
    request.constraints.sector_limits.add(sector="Tech", min_weight=0.1)


def _budgets_without_risk_parity(request: cmd_pb.OptimizeRequest) -> None:
    request.risk_parameters.risk_budgets["A"] = 1.0


def _no_inputs(request: cmd_pb.OptimizeRequest) -> None:
    request.ClearField("returns")


def _end_before_start(request: cmd_pb.OptimizeRequest) -> None:
    request.market_data.start.FromDatetime(T0)
    request.market_data.end.FromDatetime(T0 - timedelta(days=1))
    for strategy in request.strategies:
        del strategy.returns[:]


def _single_strategy(request: cmd_pb.OptimizeRequest) -> None:
    del request.strategies[1:]


def _black_litterman_without_inputs(request: cmd_pb.OptimizeRequest) -> None:
    request.method = pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN


def _objective_with_risk_parity(request: cmd_pb.OptimizeRequest) -> None:
    request.method = pb.OPTIMIZATION_METHOD_RISK_PARITY


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_set("portfolio_id", ""), "portfolio_id"),
        (_set("request_id", "r" * 201), "request_id"),
        (_set("objective", pb.OBJECTIVE_UNSPECIFIED), "objective"),
        (_objective_with_risk_parity, "objective"),
        (_single_strategy, "strategies"),
        (_duplicate_id, "strategies[2].symbol"),
        (_nan_return, "strategies[0].returns[2]"),
        (_price_to_zero, "strategies[1].returns[1]"),
        (_short_column, "strategies[1].returns"),
        (_unordered_timestamps, "returns.timestamps[2]"),
        (_unknown_bound, "constraints.strategy_bounds[Z]"),
        (_inverted_bounds, "constraints.min_weight"),
        (_set("constraints.max_volatility", 0.0), "constraints.max_volatility"),
        (_sector_twice, "constraints.sector_limits[1].sector"),
        (_set("risk_parameters.risk_free_rate", 1.5), "risk_parameters.risk_free_rate"),
        (_set("risk_parameters.risk_aversion", -1.0), "risk_parameters.risk_aversion"),
        (_budgets_without_risk_parity, "risk_parameters.risk_budgets"),
        (_black_litterman_without_inputs, "black_litterman"),
        (_no_inputs, "inputs"),
        (_end_before_start, "market_data.end"),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "set"),
)
def test_invalid_fields_are_named_by_their_path(mutate: Mutation, field: str) -> None:
    request = returns_request()
    mutate(request)
    with pytest.raises(InvalidInputError) as caught:
        validate_optimize_request(request)
    assert [v.field for v in caught.value.field_violations] == [field]
    assert caught.value.message.startswith(f"{field}: ")


def test_moments_of_the_wrong_size_name_their_field() -> None:
    request = moments_request()
    del request.moments.covariance[-1]
    with pytest.raises(InvalidInputError) as caught:
        validate_optimize_request(request)
    assert [v.field for v in caught.value.field_violations] == ["moments.covariance"]
    assert "has 3 values; expected 2x2 = 4" in caught.value.message
