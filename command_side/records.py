"""The stored schema of optimization results and events, with its conversions from and to ``stratopt.v1``.

The records and their JSON encoding live in ``command_side.result_records`` (free of the contract, so the
application and the stores use them without importing protobuf) and are re-exported here; this module adds the
conversions between the records and the contract's messages (:func:`result_record`, :func:`response_from_record`):
a replay of a stored result rebuilds the first answer field by field.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from command_side.result_records import (
    SCHEMA_VERSION,
    BlackLittermanRecord,
    JsonObject,
    RelaxationRecord,
    ResultRecord,
    RunMetadataRecord,
    SchemaError,
    check_version,
    decode_float,
    decode_instant,
    encode_float,
    encode_instant,
    run_inputs_json,
)
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

__all__ = [
    "SCHEMA_VERSION",
    "BlackLittermanRecord",
    "JsonObject",
    "RelaxationRecord",
    "ResultRecord",
    "RunMetadataRecord",
    "SchemaError",
    "check_version",
    "decode_float",
    "decode_instant",
    "encode_float",
    "encode_instant",
    "fill_metadata",
    "metadata_record",
    "response_from_record",
    "result_record",
    "run_inputs_json",
]

_CONVERGENCE_PREFIX: Final = "CONVERGENCE_STATUS_"
_METHOD_PREFIX: Final = "OPTIMIZATION_METHOD_"


def _short_name(full: str, prefix: str) -> str:
    name = full.removeprefix(prefix)
    return "" if name == "UNSPECIFIED" else name


def _enum_value(enum: Any, prefix: str, name: str) -> int:
    """The contract's value of a stored short name; 0 (unspecified) for ``""`` or a name it does not know."""
    try:
        return int(enum.Value(prefix + name)) if name else 0
    except ValueError:
        return 0


def metadata_record(meta: pb.OptimizationMetadata) -> RunMetadataRecord:
    """The stored record of a response's metadata (``replayed`` is not stored)."""
    black_litterman = None
    if meta.HasField("black_litterman"):
        posterior = meta.black_litterman
        black_litterman = BlackLittermanRecord(
            prior_returns=dict(posterior.prior_returns),
            posterior_returns=dict(posterior.posterior_returns),
            posterior_covariance=tuple(posterior.posterior_covariance),
            risk_aversion=posterior.risk_aversion,
            tau=posterior.tau,
        )

    def instant(name: Literal["timestamp", "window_start", "window_end"]) -> int | None:
        return getattr(meta, name).ToNanoseconds() if meta.HasField(name) else None

    return RunMetadataRecord(
        event_id=meta.event_id,
        result_id=meta.result_id,
        timestamp=instant("timestamp"),
        configuration_version=meta.configuration_version,
        convergence_status=_short_name(pb.ConvergenceStatus.Name(meta.convergence_status), _CONVERGENCE_PREFIX),
        iterations=meta.iterations,
        optimization_time_ms=meta.optimization_time_ms,
        objective_value=meta.objective_value,
        constraints_satisfied=meta.constraints_satisfied,
        constraint_violations=tuple(meta.constraint_violations),
        solver=meta.solver,
        fallback_used=meta.fallback_used,
        solve_path=meta.solve_path,
        method=_short_name(pb.OptimizationMethod.Name(meta.method), _METHOD_PREFIX),
        risk_measure=meta.risk_measure,
        risk_measure_value=meta.risk_measure_value,
        missing_data_policy=meta.missing_data_policy,
        observations=meta.observations,
        window_start=instant("window_start"),
        window_end=instant("window_end"),
        holdings=meta.holdings,
        net_exposure=meta.net_exposure,
        gross_exposure=meta.gross_exposure,
        risk_contributions=dict(meta.risk_contributions),
        betas=dict(meta.betas),
        relaxations=tuple(
            RelaxationRecord(constraint=r.constraint, original=r.original, relaxed=r.relaxed, description=r.description)
            for r in meta.relaxations
        ),
        black_litterman=black_litterman,
    )


def fill_metadata(record: RunMetadataRecord, meta: pb.OptimizationMetadata) -> None:
    """Write a stored metadata record into ``meta`` (``replayed`` stays as it is)."""
    meta.event_id = record.event_id
    meta.result_id = record.result_id
    if record.timestamp is not None:
        meta.timestamp.FromNanoseconds(record.timestamp)
    meta.configuration_version = record.configuration_version
    meta.convergence_status = _enum_value(  # type: ignore[assignment]
        pb.ConvergenceStatus, _CONVERGENCE_PREFIX, record.convergence_status
    )
    meta.iterations = record.iterations
    meta.optimization_time_ms = record.optimization_time_ms
    meta.objective_value = record.objective_value
    meta.constraints_satisfied = record.constraints_satisfied
    meta.constraint_violations.extend(record.constraint_violations)
    meta.solver = record.solver
    meta.fallback_used = record.fallback_used
    meta.solve_path = record.solve_path
    meta.method = _enum_value(pb.OptimizationMethod, _METHOD_PREFIX, record.method)  # type: ignore[assignment]
    meta.risk_measure = record.risk_measure
    meta.risk_measure_value = record.risk_measure_value
    meta.missing_data_policy = record.missing_data_policy
    meta.observations = record.observations
    if record.window_start is not None:
        meta.window_start.FromNanoseconds(record.window_start)
    if record.window_end is not None:
        meta.window_end.FromNanoseconds(record.window_end)
    meta.holdings = record.holdings
    meta.net_exposure = record.net_exposure
    meta.gross_exposure = record.gross_exposure
    meta.risk_contributions.update(record.risk_contributions)
    meta.betas.update(record.betas)
    for r in record.relaxations:
        meta.relaxations.add(constraint=r.constraint, original=r.original, relaxed=r.relaxed, description=r.description)
    if record.black_litterman is not None:
        posterior = record.black_litterman
        meta.black_litterman.SetInParent()
        meta.black_litterman.prior_returns.update(posterior.prior_returns)
        meta.black_litterman.posterior_returns.update(posterior.posterior_returns)
        meta.black_litterman.posterior_covariance.extend(posterior.posterior_covariance)
        meta.black_litterman.risk_aversion = posterior.risk_aversion
        meta.black_litterman.tau = posterior.tau


def result_record(response: cmd_pb.OptimizeResponse) -> ResultRecord:
    """The stored record of a completed response (ids, version and timestamp already set)."""
    return ResultRecord(
        portfolio_id=response.portfolio_id,
        request_id=response.request_id,
        weights=dict(response.optimal_weights),
        expected_return=response.expected_return,
        volatility=response.expected_volatility,
        sharpe_ratio=response.sharpe_ratio,
        metadata=metadata_record(response.optimization_metadata),
        max_drawdown=response.max_drawdown if response.HasField("max_drawdown") else None,
    )


def response_from_record(record: ResultRecord) -> cmd_pb.OptimizeResponse:
    """The ``OptimizeResponse`` a stored record was made of (``replayed`` false; the caller sets it)."""
    response = cmd_pb.OptimizeResponse(
        portfolio_id=record.portfolio_id,
        request_id=record.request_id,
        optimal_weights=record.weights,
        expected_return=record.expected_return,
        expected_volatility=record.volatility,
        sharpe_ratio=record.sharpe_ratio,
    )
    if record.max_drawdown is not None:
        response.max_drawdown = record.max_drawdown
    response.optimization_metadata.SetInParent()
    fill_metadata(record.metadata, response.optimization_metadata)
    return response
