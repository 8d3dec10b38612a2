"""The stored schema of results and event metadata (command_side.records): documented JSON, exact round trips."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from command_side.records import (
    SCHEMA_VERSION,
    ResultRecord,
    RunMetadataRecord,
    SchemaError,
    decode_instant,
    encode_instant,
    response_from_record,
    result_record,
    run_inputs_json,
)
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage_schema.md"


def rich_response(portfolio_id: str = "p-rich", request_id: str = "r-rich") -> cmd_pb.OptimizeResponse:
    """A response with every field of OptimizeResponse and OptimizationMetadata set (but ``replayed``)."""
    response = cmd_pb.OptimizeResponse(
        portfolio_id=portfolio_id,
        request_id=request_id,
        optimal_weights={"A": 0.625, "B": 0.375, "C": 0.0},
        expected_return=0.0812,
        expected_volatility=0.1534,
        sharpe_ratio=0.4,
        max_drawdown=0.183,
    )
    meta = response.optimization_metadata
    meta.convergence_status = pb.CONVERGENCE_STATUS_OPTIMAL_INACCURATE
    meta.iterations = 17
    meta.optimization_time_ms = 12.75
    meta.objective_value = -0.4
    meta.constraints_satisfied = False
    meta.solver = "SCS"
    meta.event_id = "8b7d1a3e-1a55-4b8e-9e64-1f6a0c1f2d3b"
    meta.timestamp.FromNanoseconds(1_717_243_200_123_456_000)
    meta.missing_data_policy = "PAIRWISE"
    meta.observations = 251
    meta.configuration_version = 4
    meta.result_id = "0f2b7a4c-6f0e-4f1e-8a9c-3b0d2e1f4a5b"
    meta.window_start.FromNanoseconds(1_672_617_600_000_000_001)  # nanoseconds survive
    meta.window_end.FromNanoseconds(1_704_067_200_000_000_000)
    meta.method = pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN
    meta.risk_measure = "CVAR"
    meta.risk_measure_value = 0.021
    meta.risk_contributions.update({"A": 0.7, "B": 0.3, "C": 0.0})
    meta.black_litterman.prior_returns.update({"A": 0.05, "B": 0.04, "C": 0.03})
    meta.black_litterman.posterior_returns.update({"A": 0.06, "B": 0.035, "C": 0.03})
    meta.black_litterman.posterior_covariance.extend([0.04, 0.01, 0.0, 0.01, 0.09, 0.0, 0.0, 0.0, 0.01])
    meta.black_litterman.risk_aversion = 2.5
    meta.black_litterman.tau = 0.05
    meta.fallback_used = True
    meta.solve_path = "CONIC"
    meta.relaxations.add(
        constraint="constraints.sector_limits[0].max_weight", original=0.3, relaxed=0.35, description="sector Tech"
    )
    meta.betas.update({"A": 1.1, "B": 0.8, "C": -0.2})
    meta.holdings = 2
    meta.net_exposure = 1.0
    meta.gross_exposure = 1.0
    meta.constraint_violations.append("constraints.sector_limits[0].max_weight")
    return response


def stored(response: cmd_pb.OptimizeResponse) -> dict[str, object]:
    """The JSON as it goes through jsonb: encoded, then decoded (key order is not kept by jsonb)."""
    text = json.dumps(result_record(response).to_json(), sort_keys=True, allow_nan=False)
    return dict(json.loads(text))


def test_every_field_of_a_response_survives_the_stored_record() -> None:
    response = rich_response()
    rebuilt = response_from_record(ResultRecord.from_json(stored(response)))
    assert rebuilt == response
    assert rebuilt.optimization_metadata.window_start.nanos % 1000 == 1


def test_a_minimal_response_rebuilds_without_the_unset_messages() -> None:
    response = cmd_pb.OptimizeResponse(portfolio_id="p", optimal_weights={"A": 1.0})
    response.optimization_metadata.solver = "CLOSED_FORM"
    rebuilt = response_from_record(ResultRecord.from_json(stored(response)))
    assert rebuilt == response
    meta = rebuilt.optimization_metadata
    assert not meta.HasField("black_litterman") and not meta.HasField("timestamp")
    assert not meta.HasField("window_start")


def test_a_record_stored_before_max_drawdown_reads_without_it() -> None:
    payload = dict(stored(rich_response()))
    del payload["max_drawdown"]
    rebuilt = response_from_record(ResultRecord.from_json(payload))
    assert not rebuilt.HasField("max_drawdown")
    assert rebuilt.sharpe_ratio == 0.4


def test_the_stored_json_is_the_documented_snake_case_schema() -> None:
    payload = stored(rich_response())
    assert payload["schema_version"] == SCHEMA_VERSION == 1
    assert set(payload) == {
        "schema_version", "portfolio_id", "request_id", "weights", "expected_return", "volatility",
        "sharpe_ratio", "metadata", "max_drawdown",
    }  # fmt: skip
    metadata = payload["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["schema_version"] == 1
    assert metadata["timestamp"] == "2024-06-01T12:00:00.123456Z"
    assert metadata["window_start"] == "2023-01-02T00:00:00.000000001Z"
    assert metadata["window_end"] == "2024-01-01T00:00:00Z"
    assert metadata["convergence_status"] == "OPTIMAL_INACCURATE"
    assert metadata["method"] == "BLACK_LITTERMAN"
    assert metadata["relaxations"] == [
        {
            "constraint": "constraints.sector_limits[0].max_weight",
            "original": 0.3,
            "relaxed": 0.35,
            "description": "sector Tech",
        }
    ]
    assert metadata["black_litterman"]["tau"] == 0.05
    assert all(key == key.lower() for key in metadata)  # snake_case, never the protobuf JSON mapping's camelCase
    assert "replayed" not in metadata


def test_non_finite_numbers_are_stored_as_strings() -> None:
    response = cmd_pb.OptimizeResponse(portfolio_id="p", sharpe_ratio=math.nan, expected_return=math.inf)
    payload = stored(response)
    assert (payload["sharpe_ratio"], payload["expected_return"]) == ("NaN", "Infinity")
    rebuilt = response_from_record(ResultRecord.from_json(payload))
    assert math.isnan(rebuilt.sharpe_ratio) and rebuilt.expected_return == math.inf


def test_unknown_enum_names_read_as_unspecified() -> None:
    payload = stored(rich_response())
    metadata = payload["metadata"]
    assert isinstance(metadata, dict)
    metadata["method"], metadata["convergence_status"] = "FROM_THE_FUTURE", ""
    meta = response_from_record(ResultRecord.from_json(payload)).optimization_metadata
    assert meta.method == pb.OPTIMIZATION_METHOD_UNSPECIFIED
    assert meta.convergence_status == pb.CONVERGENCE_STATUS_UNSPECIFIED


@pytest.mark.parametrize("version", [None, 0, 2])
def test_a_payload_of_another_schema_version_is_refused(version: int | None) -> None:
    payload = stored(rich_response())
    payload["schema_version"] = version
    with pytest.raises(SchemaError, match="schema_version"):
        ResultRecord.from_json(payload)
    metadata = dict(stored(rich_response())["metadata"])  # type: ignore[call-overload]
    metadata["schema_version"] = version
    with pytest.raises(SchemaError):
        RunMetadataRecord.from_json(metadata)


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_500_000, "1970-01-01T00:00:00.001500Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (253_402_300_799_999_999_999, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_instants_are_rfc3339_in_utc(nanoseconds: int, text: str) -> None:
    assert encode_instant(nanoseconds) == text
    assert decode_instant(text) == nanoseconds


def test_an_instant_that_is_not_rfc3339_utc_is_refused() -> None:
    with pytest.raises(SchemaError):
        decode_instant("2024-01-01T00:00:00+02:00")


def test_every_stored_key_is_documented() -> None:
    """docs/storage_schema.md lists every key of the result record and the run metadata in a table row."""
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    payload = stored(rich_response())
    metadata = payload["metadata"]
    assert isinstance(metadata, dict)
    keys = set(payload) | set(metadata) | set(metadata["relaxations"][0]) | set(metadata["black_litterman"])
    keys |= set(run_inputs_json({"kind": "returns", "current_weights": {}}))
    assert keys - documented == set()
