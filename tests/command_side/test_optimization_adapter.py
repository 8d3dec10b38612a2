"""The optimization service's adapter (command_side.optimization_adapter): requests to commands, results to responses.

Truth: requests and expected responses written out by hand; a request in canonical form survives request →
command → request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from command_side import optimization_adapter as adapter
from command_side.application import MAX_BATCH_SIZE
from command_side.configuration import OptimizationConfiguration, OptimizationConstraints, Strategy
from command_side.configuration_messages import configuration_from_message, configuration_message
from command_side.optimization_commands import (
    BatchResult,
    ConfigurationPage,
    ConfigurationUpsert,
    FrontierPoint,
    FrontierResult,
    IngestResult,
    InvalidItem,
    MarketDataWindow,
    RunResult,
    SerializedOptimize,
)
from command_side.records import BlackLittermanRecord, RelaxationRecord, ResultRecord, RunMetadataRecord
from services.engine import Method
from services.errors import InfeasibleError, InvalidInputError, PreconditionViolation
from services.optimization import Objective
from services.types import Moments, ReturnHistory
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_configuration_records import full_configuration, full_domain_configuration

T0 = datetime(2024, 1, 2, tzinfo=UTC)


def timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def request(**fields: object) -> cmd_pb.OptimizeRequest:
    """A canonical request (method explicit) over A (Tech) and B (Energy) with a weight cap and a current weight."""
    message = cmd_pb.OptimizeRequest(
        portfolio_id="p-1",
        request_id="r-1",
        objective=pb.OBJECTIVE_MAX_SHARPE,
        method=pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
        constraints=pb.OptimizationConstraints(max_weight=0.8, strategy_bounds={"B": pb.WeightBounds(min_weight=0.1)}),
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
        **fields,  # type: ignore[arg-type]
    )
    message.strategies.add(symbol="A", sector="Tech", current_weight=0.5)
    message.strategies.add(symbol="B", sector="Energy")
    return message


def returns_request() -> cmd_pb.OptimizeRequest:
    message = request()
    for day in range(3):
        message.returns.timestamps.add().CopyFrom(timestamp(T0 + timedelta(days=day)))
    message.strategies[0].returns.extend([0.01, -0.02, 0.03])
    message.strategies[1].returns.extend([0.0, 0.01, 0.02])
    message.returns.market_returns.extend([0.005, -0.01, 0.02])
    return message


def moments_request() -> cmd_pb.OptimizeRequest:
    message = request()
    message.moments.expected_returns.extend([0.05, 0.08])
    message.moments.covariance.extend([0.04, 0.01, 0.01, 0.09])
    return message


def market_data_request() -> cmd_pb.OptimizeRequest:
    message = request()
    message.market_data.CopyFrom(
        pb.MarketDataWindow(start=timestamp(T0), end=timestamp(T0 + timedelta(days=90)), lookback_periods=60)
    )
    return message


# --- request → command → request -----------------------------------------------------------------------------


@pytest.mark.parametrize("build", [returns_request, moments_request, market_data_request])
def test_a_request_survives_request_command_request(build: object) -> None:
    original = build()  # type: ignore[operator]
    assert adapter.optimize_request(adapter.optimize_command(original)) == original


def test_the_command_holds_the_requests_problem_inputs_and_key() -> None:
    command = adapter.optimize_command(returns_request())
    assert (command.portfolio_id, command.request_id) == ("p-1", "r-1")
    assert len(command.request_hash) == 64
    assert command.problem.symbols == ("A", "B") and command.problem.sectors == ("Tech", "Energy")
    assert command.problem.objective is Objective.MAX_SHARPE
    np.testing.assert_array_equal(command.problem.lower_bounds, [0.0, 0.1])
    np.testing.assert_array_equal(command.problem.upper_bounds, [0.8, 0.8])
    assert command.problem.risk_free_rate == 0.02 and command.settings.risk_free_rate == 0.02
    assert command.method.method is Method.MEAN_VARIANCE
    assert command.current_weights == {"A": 0.5}
    assert isinstance(command.inputs, ReturnHistory) and command.inputs_kind == "returns"
    np.testing.assert_array_equal(command.inputs.returns, [[0.01, 0.0], [-0.02, 0.01], [0.03, 0.02]])
    assert command.inputs.market_returns is not None
    np.testing.assert_array_equal(command.inputs.market_returns, [0.005, -0.01, 0.02])
    # The configuration is the domain's: symbols and groups, no returns or current weights.
    assert command.configuration.portfolio_id == "p-1"
    assert [(s.symbol, s.sector) for s in command.configuration.strategies] == [("A", "Tech"), ("B", "Energy")]


def test_inputs_become_moments_or_a_window_of_stored_prices() -> None:
    moments = adapter.optimize_command(moments_request()).inputs
    assert isinstance(moments, Moments)
    np.testing.assert_array_equal(moments.covariance, [[0.04, 0.01], [0.01, 0.09]])
    window = adapter.optimize_command(market_data_request())
    assert window.inputs == MarketDataWindow(start=T0, end=T0 + timedelta(days=90), lookback_periods=60)
    assert window.inputs_kind == "market_data"


def test_an_invalid_request_names_the_requests_field() -> None:
    bad = moments_request()
    bad.constraints.strategy_bounds["ZZ"].max_weight = 0.5
    with pytest.raises(InvalidInputError) as caught:
        adapter.optimize_command(bad)
    assert [v.field for v in caught.value.field_violations] == ["constraints.strategy_bounds[ZZ]"]


# --- results → responses -------------------------------------------------------------------------------------


def stored_result() -> ResultRecord:
    return ResultRecord(
        portfolio_id="p-1",
        request_id="r-1",
        weights={"A": 0.75, "B": 0.25},
        expected_return=0.07,
        volatility=0.12,
        sharpe_ratio=0.4166,
        metadata=RunMetadataRecord(
            event_id="e-1",
            result_id="res-1",
            timestamp=1_704_153_600_000_000_000,  # 2024-01-02T00:00:00Z
            configuration_version=3,
            convergence_status="OPTIMAL",
            iterations=9,
            optimization_time_ms=4.5,
            objective_value=0.4166,
            constraints_satisfied=False,
            constraint_violations=("constraints.max_weight",),
            solver="CLARABEL",
            solve_path="CONIC",
            method="BLACK_LITTERMAN",
            risk_measure="VARIANCE",
            observations=250,
            window_start=1_672_704_000_000_000_000,  # 2023-01-03T00:00:00Z
            holdings=2,
            net_exposure=1.0,
            gross_exposure=1.0,
            risk_contributions={"A": 0.9, "B": 0.1},
            relaxations=(
                RelaxationRecord(
                    constraint="constraints.max_weight", original=0.7, relaxed=0.75, description="raised the cap"
                ),
            ),
            black_litterman=BlackLittermanRecord(
                prior_returns={"A": 0.05, "B": 0.04},
                posterior_returns={"A": 0.06, "B": 0.04},
                posterior_covariance=(0.04, 0.0, 0.0, 0.09),
                risk_aversion=2.5,
                tau=0.05,
            ),
        ),
    )


def expected_response(*, replayed: bool) -> cmd_pb.OptimizeResponse:
    meta = pb.OptimizationMetadata(
        convergence_status=pb.CONVERGENCE_STATUS_OPTIMAL,
        iterations=9,
        optimization_time_ms=4.5,
        objective_value=0.4166,
        constraints_satisfied=False,
        constraint_violations=["constraints.max_weight"],
        solver="CLARABEL",
        solve_path="CONIC",
        event_id="e-1",
        result_id="res-1",
        timestamp=Timestamp(seconds=1_704_153_600),
        configuration_version=3,
        method=pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN,
        risk_measure="VARIANCE",
        observations=250,
        window_start=Timestamp(seconds=1_672_704_000),
        holdings=2,
        net_exposure=1.0,
        gross_exposure=1.0,
        risk_contributions={"A": 0.9, "B": 0.1},
        relaxations=[
            pb.ConstraintRelaxation(
                constraint="constraints.max_weight", original=0.7, relaxed=0.75, description="raised the cap"
            )
        ],
        black_litterman=pb.BlackLittermanPosterior(
            prior_returns={"A": 0.05, "B": 0.04},
            posterior_returns={"A": 0.06, "B": 0.04},
            posterior_covariance=[0.04, 0.0, 0.0, 0.09],
            risk_aversion=2.5,
            tau=0.05,
        ),
        replayed=replayed,
    )
    return cmd_pb.OptimizeResponse(
        portfolio_id="p-1",
        request_id="r-1",
        optimal_weights={"A": 0.75, "B": 0.25},
        expected_return=0.07,
        expected_volatility=0.12,
        sharpe_ratio=0.4166,
        optimization_metadata=meta,
    )


@pytest.mark.parametrize("replayed", [False, True])
def test_a_run_result_becomes_its_response(replayed: bool) -> None:
    result = RunResult(result=stored_result(), replayed=replayed)
    assert adapter.optimize_response(result) == expected_response(replayed=replayed)
    rerun = adapter.run_configuration_response(result)
    assert rerun == cmd_pb.RunConfigurationResponse(result=expected_response(replayed=replayed))


def test_a_batch_result_answers_each_item_with_its_response_or_status() -> None:
    infeasible = InfeasibleError(
        "lower bounds sum to 1.2", precondition_violations=(PreconditionViolation("BOUNDS_SUM", "lower_bounds", "1.2"),)
    )
    result = BatchResult(outcomes=(RunResult(result=stored_result()), infeasible))
    response = adapter.batch_response(result)
    assert (response.succeeded, response.failed) == (1, 1)
    assert [r.index for r in response.results] == [0, 1]
    assert response.results[0].response == expected_response(replayed=False)
    assert response.results[1].error.code == 9  # FAILED_PRECONDITION
    assert response.results[1].error.message == "lower bounds sum to 1.2"


def test_a_frontier_result_becomes_its_response() -> None:
    result = FrontierResult(
        points=(
            FrontierPoint(expected_return=0.05, volatility=0.1, sharpe_ratio=0.3, weights={"A": 1.0, "B": 0.0}),
            FrontierPoint(expected_return=0.08, volatility=0.2, sharpe_ratio=0.3, weights={"A": 0.0, "B": 1.0}),
        ),
        computation_time_ms=7.0,
    )
    assert adapter.frontier_response(result) == cmd_pb.ComputeEfficientFrontierResponse(
        points=[
            cmd_pb.FrontierPoint(expected_return=0.05, volatility=0.1, sharpe_ratio=0.3, weights={"A": 1.0, "B": 0.0}),
            cmd_pb.FrontierPoint(expected_return=0.08, volatility=0.2, sharpe_ratio=0.3, weights={"A": 0.0, "B": 1.0}),
        ],
        computation_time_ms=7.0,
    )


def test_an_ingest_result_becomes_its_response() -> None:
    result = IngestResult(rows_written=4, symbols=("A", "B"), first_timestamp=T0, last_timestamp=T0 + timedelta(days=1))
    assert adapter.ingest_response(result) == cmd_pb.IngestMarketDataResponse(
        rows_written=4,
        symbols=["A", "B"],
        first_timestamp=Timestamp(seconds=1_704_153_600),
        last_timestamp=Timestamp(seconds=1_704_240_000),
    )
    empty = IngestResult(rows_written=0, symbols=(), first_timestamp=None, last_timestamp=None)
    assert adapter.ingest_response(empty) == cmd_pb.IngestMarketDataResponse()


def test_a_configuration_page_becomes_its_response() -> None:
    config = OptimizationConfiguration(portfolio_id="a", version=2, objective="OBJECTIVE_MAX_SHARPE")
    page = ConfigurationPage(configurations=(config,), next_page_token="tok")
    assert adapter.configuration_page_response(page) == cmd_pb.ListConfigurationsResponse(
        configurations=[
            cmd_pb.OptimizationConfiguration(portfolio_id="a", version=2, objective=pb.OBJECTIVE_MAX_SHARPE)
        ],
        next_page_token="tok",
    )


def test_a_full_configuration_converts_both_ways() -> None:
    """Every field set: the message (written by hand) and the dataclass (written by hand) are each other's."""
    created_at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    message = full_configuration("full")
    message.version = 4
    message.created_at.FromDatetime(created_at)
    config = replace(full_domain_configuration("full"), version=4, created_at=created_at)
    assert configuration_from_message(message) == config
    assert configuration_message(config) == message
    assert configuration_message(configuration_from_message(message)) == message


def test_unset_messages_convert_to_defaults_and_back() -> None:
    message = cmd_pb.OptimizationConfiguration(portfolio_id="p", objective=pb.OBJECTIVE_MIN_VOLATILITY)
    message.strategies.add(symbol="A")
    config = configuration_from_message(message)
    assert config == OptimizationConfiguration(
        portfolio_id="p", objective="OBJECTIVE_MIN_VOLATILITY", strategies=(Strategy(symbol="A"),)
    )
    back = configuration_message(config)
    assert back == message
    assert not back.HasField("constraints") and not back.HasField("risk_parameters")
    assert not back.HasField("black_litterman") and not back.HasField("created_at")


def test_upsert_and_get_convert_the_configuration() -> None:
    def message() -> cmd_pb.OptimizationConfiguration:
        config = cmd_pb.OptimizationConfiguration(
            portfolio_id="up",
            objective=pb.OBJECTIVE_MAX_SHARPE,
            method=pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
            constraints=pb.OptimizationConstraints(max_weight=0.7),
            lookback_periods=20,
            enabled=True,
        )
        config.strategies.add(symbol="A", sector="Tech")
        config.strategies.add(symbol="B", sector="Energy")
        return config

    command = adapter.upsert_configuration_command(cmd_pb.UpsertConfigurationRequest(configuration=message()))
    assert command == OptimizationConfiguration(
        portfolio_id="up",
        objective="OBJECTIVE_MAX_SHARPE",
        method="OPTIMIZATION_METHOD_MEAN_VARIANCE",
        constraints=OptimizationConstraints(max_weight=0.7),
        lookback_periods=20,
        enabled=True,
        strategies=(Strategy(symbol="A", sector="Tech"), Strategy(symbol="B", sector="Energy")),
    )
    stored = replace(command, version=1, created_at=T0)
    expected = message()
    expected.version = 1
    expected.created_at.FromDatetime(T0)
    response = adapter.upsert_configuration_response(ConfigurationUpsert(configuration=stored, created=True))
    assert response == cmd_pb.UpsertConfigurationResponse(configuration=expected, created=True)
    assert adapter.get_configuration_response(stored) == cmd_pb.GetConfigurationResponse(configuration=expected)


# --- batches, frontiers, ingestion ---------------------------------------------------------------------------


def test_a_batch_keeps_an_invalid_item_as_its_error() -> None:
    bad = moments_request()
    bad.portfolio_id = "p-bad"
    bad.objective = pb.OBJECTIVE_UNSPECIFIED
    stored = cmd_pb.OptimizeRequest()
    stored.CopyFrom(bad)
    stored.market_data.lookback_periods = 10  # inputs a worker cannot parse alone: checked on the event loop
    command = adapter.batch_command(cmd_pb.BatchOptimizeRequest(requests=[moments_request(), bad, stored]))
    first, second, third = command.items
    # Inline inputs stay in wire form: the worker that solves the chunk parses and checks them.
    assert isinstance(first, SerializedOptimize) and first.request_id == "r-1"
    assert first.request_hash == adapter.optimize_command(moments_request()).request_hash
    parsed, direct = first.parse(first.payload), adapter.optimize_command(moments_request())
    assert (parsed.portfolio_id, parsed.configuration) == (direct.portfolio_id, direct.configuration)
    assert isinstance(second, SerializedOptimize)
    with pytest.raises(InvalidInputError) as error:
        second.parse(second.payload)
    assert [v.field for v in error.value.field_violations] == ["objective"]
    assert isinstance(third, InvalidItem) and third.portfolio_id == "p-bad"
    assert isinstance(third.error, InvalidInputError)
    assert [v.field for v in third.error.field_violations] == ["objective"]


@pytest.mark.parametrize("count", [0, MAX_BATCH_SIZE + 1])
def test_a_batch_of_no_or_too_many_requests_is_invalid(count: int) -> None:
    with pytest.raises(InvalidInputError, match="requests"):
        adapter.batch_command(cmd_pb.BatchOptimizeRequest(requests=[moments_request()] * count))


def test_a_frontier_command_takes_the_problem_and_names_its_fields_under_problem() -> None:
    command = adapter.frontier_command(cmd_pb.ComputeEfficientFrontierRequest(problem=moments_request(), points=5))
    assert command.points == 5 and command.problem.symbols == ("A", "B")
    assert isinstance(command.inputs, Moments)
    assert adapter.frontier_command(cmd_pb.ComputeEfficientFrontierRequest(problem=moments_request())).points == 20
    with pytest.raises(InvalidInputError) as caught:
        adapter.frontier_command(cmd_pb.ComputeEfficientFrontierRequest(problem=moments_request(), points=1))
    assert [v.field for v in caught.value.field_violations] == ["points"]
    risk_parity = moments_request()
    risk_parity.method = pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY
    risk_parity.ClearField("constraints")
    with pytest.raises(InvalidInputError) as caught:
        adapter.frontier_command(cmd_pb.ComputeEfficientFrontierRequest(problem=risk_parity))
    assert caught.value.field_violations[0].field.startswith("problem.")


def test_ingested_messages_are_checked_as_they_arrive() -> None:
    good = cmd_pb.IngestMarketDataRequest()
    good.bars.add(symbol="A", price=10.0, timestamp=timestamp(T0), volume=5.0)
    bad = cmd_pb.IngestMarketDataRequest()
    bad.bars.add(symbol="A", price=11.0, timestamp=timestamp(T0 + timedelta(days=1)))
    bad.bars.add(symbol="B", price=-1.0, timestamp=timestamp(T0))

    async def messages() -> AsyncIterator[cmd_pb.IngestMarketDataRequest]:
        yield good
        yield bad

    chunks: list[object] = []

    async def read() -> None:
        async for chunk in adapter.ingest_chunks(messages()):
            chunks.append(chunk)

    with pytest.raises(InvalidInputError) as caught:
        asyncio.run(read())
    assert chunks == [(("A", T0, 10.0, 5.0),)]  # the good message was handed on before the bad one was read
    assert [v.field for v in caught.value.field_violations] == ["bars[1].price"]
    assert "(message 1)" in caught.value.message
