"""The optimization service's adapter: ``stratopt.v1`` requests to commands, results to responses.

Every conversion between the contract and the plain inputs and outputs of ``OptimizationService``
(``command_side.optimization_commands``) is here, one pair per RPC: ``<rpc>_command`` (request → command, every
field validated, an ``InvalidInputError`` naming the request's field path) and ``<rpc>_response`` (result →
response). The field-by-field validation of an ``OptimizeRequest`` is the proto → domain half this module grows
from, ``command_side.mapping`` (kept as its own module: ~800 lines of checks with their own tests); the
conversion of stored results back to a response is ``command_side.records.response_from_record``, which a replay
and a first answer share, so both read alike field by field.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from datetime import UTC

from google.rpc import status_pb2  # type: ignore[attr-defined]  # stubs hidden by types-protobuf

from command_side.application import MAX_BATCH_SIZE, check_batch_size, run_record
from command_side.batch_runs import STREAM_WINDOW, run_inherits
from command_side.configuration_messages import configuration_from_message, configuration_message
from command_side.field_paths import OPTIMIZATION, proto_field_paths
from command_side.mapping import (
    datetime_to_timestamp,
    normalize_configuration,
    optimize_command,
    optimize_command_from_bytes,
    optimize_command_from_configuration,
    optimize_request_from_configuration,
)
from command_side.optimization_commands import (
    BatchCommand,
    BatchResult,
    ConfigurationPage,
    ConfigurationUpsert,
    EncodedRunResult,
    FrontierCommand,
    FrontierResult,
    IngestResult,
    InvalidItem,
    MarketDataWindow,
    OptimizeCommand,
    RunResult,
    SerializedOptimize,
)
from command_side.optimization_store import Bar, Configuration, EncodedRun, content_of, encode_run
from command_side.records import response_from_record
from services.engine import OptimizationOutcome
from services.errors import InvalidInputError
from services.types import Moments
from services.workload import Workload
from stratopt.request_limits import STRING_KINDS, check_request, check_text
from stratopt.rpc_errors import status_for
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

__all__ = [
    "MAX_BARS_PER_MESSAGE",
    "BatchStream",
    "batch_command",
    "batch_response",
    "configuration_page_response",
    "frontier_command",
    "frontier_response",
    "get_configuration_query",
    "get_configuration_response",
    "ingest_chunks",
    "ingest_response",
    "list_configurations_query",
    "optimize_command",
    "optimize_command_from_configuration",
    "optimize_request",
    "optimize_response",
    "request_workload",
    "run_configuration_command",
    "run_configuration_response",
    "upsert_configuration_command",
    "upsert_configuration_response",
]

log = logging.getLogger(__name__)

MAX_BARS_PER_MESSAGE = 10_000
"""Most bars in one IngestMarketData message."""
MAX_FRONTIER_POINTS = 200
"""Most points of one ComputeEfficientFrontier call."""
MAX_CONFIGURATIONS_PAGE_SIZE = 500
"""Largest ListConfigurations page; larger requested sizes are capped to it (0 = 50)."""
_FRONTIER_METHODS = (
    pb.OPTIMIZATION_METHOD_UNSPECIFIED,
    pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
    pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN,
)
_VARIANCE = (pb.RISK_MEASURE_UNSPECIFIED, pb.RISK_MEASURE_VARIANCE)

StatusFactory = Callable[[BaseException], status_pb2.Status]
"""Turns an exception into the ``google.rpc.Status`` a unary call would have returned."""


# --- Optimize, RunConfiguration ------------------------------------------------------------------------------


def optimize_request(command: OptimizeCommand) -> cmd_pb.OptimizeRequest:
    """The request a command stands for: its configuration, key, current weights and inputs.

    The inverse of :func:`optimize_command` for a request in canonical form (the method set explicitly): request
    → command → request gives the request back.
    """
    request = optimize_request_from_configuration(configuration_message(command.configuration), command.request_id)
    for strategy in request.strategies:
        if strategy.symbol in command.current_weights:
            strategy.current_weight = command.current_weights[strategy.symbol]
    inputs = command.inputs
    if isinstance(inputs, MarketDataWindow):
        window = request.market_data
        window.lookback_periods, window.market_symbol = inputs.lookback_periods, inputs.market_symbol
        if inputs.start is not None:
            window.start.CopyFrom(datetime_to_timestamp(inputs.start))
        if inputs.end is not None:
            window.end.CopyFrom(datetime_to_timestamp(inputs.end))
    elif isinstance(inputs, Moments):
        request.moments.expected_returns.extend(inputs.expected_returns.tolist())
        request.moments.covariance.extend(inputs.covariance.ravel().tolist())
    else:
        request.returns.SetInParent()
        for stamp in inputs.timestamps:
            request.returns.timestamps.add().CopyFrom(datetime_to_timestamp(stamp))
        if inputs.market_returns is not None:
            request.returns.market_returns.extend(inputs.market_returns.tolist())
        # The configuration keeps the strategies in the problem's order, the order of the columns.
        for strategy, column in zip(request.strategies, inputs.returns.T, strict=True):
            strategy.returns.extend(column.tolist())
    return request


_SCENARIO_RISK_MEASURES = frozenset({pb.RISK_MEASURE_CVAR, pb.RISK_MEASURE_MAD, pb.RISK_MEASURE_CDAR})


def request_workload(request: cmd_pb.OptimizeRequest) -> Workload:
    """The traits that decide an Optimize request's solver pool, read from the request without validating it.

    For a valid request it equals ``services.workload.job_workload`` of the command ``optimize_command`` builds;
    an invalid one is refused by the worker (or the adapter) whichever pool it was routed to.

    Parameters
    ----------
    request : stratopt.v1.OptimizeRequest
        The request as received.

    Returns
    -------
    Workload
        N = ``len(strategies)``; ``risk_parameters.risk_measure`` CVaR, MAD or CDaR; ``constraints.max_holdings`` or
        ``.min_position_weight`` set; ``method`` ROBUST_OPTIMIZATION.
    """
    constraints = request.constraints
    return Workload(
        assets=len(request.strategies),
        scenario_risk=request.risk_parameters.risk_measure in _SCENARIO_RISK_MEASURES,
        cardinality=constraints.HasField("max_holdings") or constraints.HasField("min_position_weight"),
        robust=request.method == pb.OPTIMIZATION_METHOD_ROBUST_OPTIMIZATION,
    )


WORKER_PARSED_INPUTS = frozenset({"returns", "moments"})
"""Optimize inputs that need no database read before the solve: such requests are parsed in a solver worker."""


def serialized_optimize(request: cmd_pb.OptimizeRequest, workload: Workload | None = None) -> SerializedOptimize:
    """An Optimize request with inline returns or moments, to be parsed and checked in a solver worker.

    Only the idempotency key is checked here (it is looked up before the worker runs); the worker checks
    the whole request as ``optimize_command`` does (``command_side.mapping.optimize_command_from_bytes``).
    ``workload`` is the request's (``request_workload``), computed here when not given: it picks the solver pool.

    Raises
    ------
    InvalidInputError
        ``request_id`` holds a NUL or is longer than its limit.
    """
    check_text(request.request_id, "request_id", kind=STRING_KINDS["request_id"])
    payload = request.SerializeToString(deterministic=True)
    return SerializedOptimize(
        payload=payload,
        parse=optimize_command_from_bytes,
        request_id=request.request_id,
        # The same fingerprint as validate_optimize_request's: only a key needs it.
        request_hash=hashlib.sha256(payload).hexdigest() if request.request_id else "",
        workload=request_workload(request) if workload is None else workload,
        encode=encoded_run,
    )


def encoded_run(command: OptimizeCommand, outcome: OptimizationOutcome) -> EncodedRun:
    """A solved run encoded for storage with its answer in wire form (``EncodedRun``): what a batch's worker sends.

    The answer is ``response_from_record`` of the run's record with its new ids and without its timestamp and
    configuration version, which the store gives it (:func:`optimize_response` adds them), so it reads as the
    unary call's answer field by field.
    """
    event_id, result_id = uuid.uuid4(), uuid.uuid4()
    identified = run_record(command, outcome, event_id=str(event_id), result_id=str(result_id))
    return encode_run(
        configuration=command.configuration,
        content=content_of(command.configuration),
        result=identified,
        request_hash=command.request_hash,
        run_inputs={"current_weights": command.current_weights, "kind": command.inputs_kind},
        inherit=run_inherits(command),
        event_id=event_id,
        result_id=result_id,
        response=response_from_record(identified).SerializeToString(),
        labels=(
            str(command.method.method.value),
            str(command.problem.objective.value),
            str(outcome.result.solve_path),
            outcome.total_time_ms / 1000.0,
        ),
    )


def optimize_response(result: RunResult | EncodedRunResult) -> cmd_pb.OptimizeResponse:
    """The ``OptimizeResponse`` of a run: its stored result, ``optimization_metadata.replayed`` for a replay.

    A run encoded in a worker (``EncodedRunResult``) answers its wire form with the timestamp and configuration
    version the store gave it.
    """
    if isinstance(result, EncodedRunResult):
        response = cmd_pb.OptimizeResponse.FromString(result.response)
        metadata = response.optimization_metadata
        metadata.timestamp.FromNanoseconds(result.timestamp_ns)
        metadata.configuration_version = result.configuration_version
        return response
    response = response_from_record(result.result)
    response.optimization_metadata.replayed = result.replayed
    return response


def run_configuration_command(request: cmd_pb.RunConfigurationRequest) -> tuple[str, str]:
    """The ``(portfolio_id, request_id)`` of a RunConfiguration request.

    Raises
    ------
    InvalidInputError
        ``portfolio_id`` or ``request_id`` with a NUL character or longer than ``MAX_ID_LENGTH``.
    """
    check_request(request)
    return request.portfolio_id, request.request_id


def run_configuration_response(result: RunResult) -> cmd_pb.RunConfigurationResponse:
    """The ``RunConfigurationResponse`` of a re-run."""
    return cmd_pb.RunConfigurationResponse(result=optimize_response(result))


# --- BatchOptimize -------------------------------------------------------------------------------------------


def batch_command(request: cmd_pb.BatchOptimizeRequest) -> BatchCommand:
    """The batch's commands; an item that does not validate becomes an :class:`InvalidItem` with its error.

    An item with inline returns or moments stays in wire form (``SerializedOptimize``): the worker that solves
    its chunk parses and checks it (as Optimize does), so the event loop does not.

    Raises
    ------
    InvalidInputError
        When the batch is empty or larger than ``MAX_BATCH_SIZE`` (field ``requests``).
    """
    check_batch_size(len(request.requests))
    return BatchCommand(items=tuple(_batch_item(item, index) for index, item in enumerate(request.requests)))


def _batch_item(item: cmd_pb.OptimizeRequest, index: int) -> OptimizeCommand | InvalidItem | SerializedOptimize:
    """A batch item: in wire form for a worker to parse (inline returns or moments), else checked here."""
    try:
        if item.WhichOneof("inputs") in WORKER_PARSED_INPUTS:
            return serialized_optimize(item)
        return optimize_command(item)
    except Exception as exc:  # one broken item must not sink the batch
        if not isinstance(exc, InvalidInputError):
            log.exception("batch item %d failed", index)
        return InvalidItem(portfolio_id=item.portfolio_id, error=exc)


def _echoed_key(request_id: str) -> str:
    """``request_id`` as a result echoes it: '' unless it is a valid key (never a 10 KB or NUL value)."""
    try:
        check_text(request_id, "request_id", kind=STRING_KINDS["request_id"])
    except InvalidInputError:
        return ""
    return request_id


def _batch_result(
    index: int, request_id: str, outcome: RunResult | EncodedRunResult | BaseException, to_status: StatusFactory
) -> cmd_pb.BatchOptimizeResult:
    if isinstance(outcome, BaseException):
        return cmd_pb.BatchOptimizeResult(index=index, request_id=request_id, error=to_status(outcome))
    return cmd_pb.BatchOptimizeResult(index=index, request_id=request_id, response=optimize_response(outcome))


def batch_response(
    result: BatchResult, request: cmd_pb.BatchOptimizeRequest | None = None, to_status: StatusFactory = status_for
) -> cmd_pb.BatchOptimizeResponse:
    """One ``BatchOptimizeResult`` per item (its response, or its error as a ``google.rpc.Status``).

    ``request``: the batch, whose valid keys the results echo (None: none echoed).
    """
    response = cmd_pb.BatchOptimizeResponse(succeeded=result.succeeded, failed=result.failed)
    keys = [""] * len(result.outcomes) if request is None else [_echoed_key(r.request_id) for r in request.requests]
    response.results.extend(
        _batch_result(index, key, outcome, to_status)
        for index, (key, outcome) in enumerate(zip(keys, result.outcomes, strict=True))
    )
    return response


def stream_window(first: cmd_pb.BatchOptimizeStreamRequest) -> int:
    """Items a BatchOptimizeStream call may have in flight: ``max_in_flight`` of its first message, capped."""
    return min(first.max_in_flight or STREAM_WINDOW, STREAM_WINDOW)


class BatchStream:
    """The items of a BatchOptimizeStream call, and its responses with each item's echoed ``request_id``.

    The keys of the items read and not yet answered are kept (at most the call's window plus one message).
    """

    def __init__(self) -> None:
        self._keys: dict[int, str] = {}

    async def items(
        self, messages: AsyncIterable[cmd_pb.BatchOptimizeStreamRequest]
    ) -> AsyncIterator[list[OptimizeCommand | InvalidItem | SerializedOptimize]]:
        """Each message's items, each as :func:`batch_command` makes it (a bad one becomes an :class:`InvalidItem`).

        Raises
        ------
        InvalidInputError
            A message holds more than ``MAX_BATCH_SIZE`` requests (field ``requests``).
        """
        count = 0
        async for message in messages:
            if len(message.requests) > MAX_BATCH_SIZE:
                raise InvalidInputError.for_field(
                    "requests", f"at most {MAX_BATCH_SIZE} requests per message, got {len(message.requests)}"
                )
            items = []
            for item in message.requests:
                self._keys[count] = _echoed_key(item.request_id)
                items.append(_batch_item(item, count))
                count += 1
            yield items

    def response(
        self,
        answers: Sequence[tuple[int, RunResult | EncodedRunResult | BaseException]],
        to_status: StatusFactory = status_for,
    ) -> cmd_pb.BatchOptimizeStreamResponse:
        """The results of finished items (their keys are forgotten)."""
        return cmd_pb.BatchOptimizeStreamResponse(
            results=[_batch_result(index, self._keys.pop(index, ""), outcome, to_status) for index, outcome in answers]
        )


# --- ComputeEfficientFrontier --------------------------------------------------------------------------------


def frontier_command(request: cmd_pb.ComputeEfficientFrontierRequest) -> FrontierCommand:
    """The frontier's command: ``request.problem`` validated as an Optimize request (fields under ``problem.``).

    Raises
    ------
    InvalidInputError
        As Optimize, with every path under ``problem.``; plus ``points`` outside 2..200,
        ``problem.method`` other than MEAN_VARIANCE and BLACK_LITTERMAN, and ``problem.risk_parameters.risk_measure``
        other than variance (the frontier is the variance frontier).
    """
    check_request(request)
    points = request.points or 20
    if not 2 <= points <= MAX_FRONTIER_POINTS:
        raise InvalidInputError.for_field("points", f"must lie in 2..{MAX_FRONTIER_POINTS}, got {points}")
    given = request.problem
    known_methods = pb.OptimizationMethod.values()
    if given.method in known_methods and given.method not in _FRONTIER_METHODS:
        raise InvalidInputError.for_field(
            "problem.method",
            f"the efficient frontier is defined for MEAN_VARIANCE and BLACK_LITTERMAN, not "
            f"{pb.OptimizationMethod.Name(given.method)}",
        )
    measure = given.risk_parameters.risk_measure
    if measure in pb.RiskMeasure.values() and measure not in _VARIANCE:
        raise InvalidInputError.for_field(
            "problem.risk_parameters.risk_measure",
            f"the efficient frontier is the variance frontier, not {pb.RiskMeasure.Name(measure)}",
        )
    problem = cmd_pb.OptimizeRequest()
    problem.CopyFrom(given)
    problem.objective = pb.OBJECTIVE_MIN_VOLATILITY  # ignored: the frontier spans every objective
    problem.risk_parameters.ClearField("multi_objective")  # weights of an objective the frontier does not use
    problem.request_id = ""
    ids = tuple(s.symbol for s in problem.strategies)
    with proto_field_paths(OPTIMIZATION, symbols=ids, prefix="problem"):
        command = optimize_command(problem)
    return FrontierCommand(
        problem=command.problem,
        settings=command.settings,
        method=command.method,
        inputs=command.inputs,
        points=points,
    )


def frontier_response(result: FrontierResult) -> cmd_pb.ComputeEfficientFrontierResponse:
    """The ``ComputeEfficientFrontierResponse`` of the frontier's points."""
    response = cmd_pb.ComputeEfficientFrontierResponse(computation_time_ms=result.computation_time_ms)
    for point in result.points:
        response.points.add(
            expected_return=point.expected_return,
            volatility=point.volatility,
            sharpe_ratio=point.sharpe_ratio,
            weights=point.weights,
        )
    return response


# --- configurations ------------------------------------------------------------------------------------------


def upsert_configuration_command(request: cmd_pb.UpsertConfigurationRequest) -> Configuration:
    """The configuration to store, checked and in its canonical form (fields under ``configuration.``)."""
    check_request(request)
    return configuration_from_message(normalize_configuration(request.configuration))


def get_configuration_query(request: cmd_pb.GetConfigurationRequest) -> tuple[str, int]:
    """The ``(portfolio_id, version)`` a GetConfiguration request asks for (version 0: the latest).

    Raises
    ------
    InvalidInputError
        ``portfolio_id`` with a NUL character or longer than ``MAX_ID_LENGTH``.
    """
    check_request(request)
    return request.portfolio_id, request.version


def list_configurations_query(request: cmd_pb.ListConfigurationsRequest) -> tuple[int, str]:
    """The ``(page_size, page_token)`` of a ListConfigurations request, the size capped at 500 (0 = 50).

    Raises
    ------
    InvalidInputError
        ``page_token`` with a NUL character or longer than ``MAX_PAGE_TOKEN_LENGTH`` (what the token decodes to
        is the application's to check).
    """
    check_request(request)
    return min(request.page_size or 50, MAX_CONFIGURATIONS_PAGE_SIZE), request.page_token


def upsert_configuration_response(result: ConfigurationUpsert) -> cmd_pb.UpsertConfigurationResponse:
    """The ``UpsertConfigurationResponse``: the stored version and whether it is new."""
    return cmd_pb.UpsertConfigurationResponse(
        configuration=configuration_message(result.configuration), created=result.created
    )


def get_configuration_response(configuration: Configuration) -> cmd_pb.GetConfigurationResponse:
    """The ``GetConfigurationResponse`` of one version."""
    return cmd_pb.GetConfigurationResponse(configuration=configuration_message(configuration))


def configuration_page_response(page: ConfigurationPage) -> cmd_pb.ListConfigurationsResponse:
    """The ``ListConfigurationsResponse`` of a page."""
    return cmd_pb.ListConfigurationsResponse(
        configurations=[configuration_message(c) for c in page.configurations], next_page_token=page.next_page_token
    )


# --- IngestMarketData ----------------------------------------------------------------------------------------


def _bars(message: cmd_pb.IngestMarketDataRequest, message_index: int) -> tuple[Bar, ...]:
    """The bars of one message, each checked (paths ``bars[i]`` of that message)."""
    if len(message.bars) > MAX_BARS_PER_MESSAGE:
        raise InvalidInputError.for_field("bars", f"at most {MAX_BARS_PER_MESSAGE} bars per message")
    check_request(message)  # symbols (NUL, length) and timestamps (years 0001 to 9999)
    bars: list[Bar] = []
    for i, bar in enumerate(message.bars):
        field = f"bars[{i}]"
        if not bar.symbol:
            raise InvalidInputError.for_field(f"{field}.symbol", f"must not be empty (message {message_index})")
        if not bar.HasField("timestamp"):
            raise InvalidInputError.for_field(f"{field}.timestamp", f"must be set (message {message_index})")
        if not (math.isfinite(bar.price) and bar.price > 0):
            raise InvalidInputError.for_field(
                f"{field}.price", f"must be positive and finite, got {bar.price} (message {message_index})"
            )
        volume = bar.volume if bar.HasField("volume") else None
        if volume is not None and not (math.isfinite(volume) and volume >= 0):
            raise InvalidInputError.for_field(f"{field}.volume", "must be finite and not negative")
        bars.append((bar.symbol, bar.timestamp.ToDatetime(tzinfo=UTC), bar.price, volume))
    return tuple(bars)


async def ingest_chunks(
    messages: AsyncIterable[cmd_pb.IngestMarketDataRequest],
) -> AsyncIterator[tuple[Bar, ...]]:
    """The streamed messages as validated bars, one chunk per message, checked as they arrive.

    Raises
    ------
    InvalidInputError
        Naming ``bars[i]`` of the offending message (empty symbol, unset timestamp, price not positive and
        finite, negative volume) when the service reaches it; the chunks before it are stored by then.
    """
    message_index = 0
    async for message in messages:
        yield _bars(message, message_index)
        message_index += 1


def ingest_response(result: IngestResult) -> cmd_pb.IngestMarketDataResponse:
    """The ``IngestMarketDataResponse``: rows written, symbols and the bars' time span."""
    response = cmd_pb.IngestMarketDataResponse(rows_written=result.rows_written, symbols=result.symbols)
    if result.first_timestamp is not None and result.last_timestamp is not None:
        response.first_timestamp.CopyFrom(datetime_to_timestamp(result.first_timestamp))
        response.last_timestamp.CopyFrom(datetime_to_timestamp(result.last_timestamp))
    return response
