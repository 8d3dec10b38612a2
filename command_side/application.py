"""Use cases of the command side: optimize, batch, configurations, re-runs, market-data ingestion."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import AsyncIterable, Callable
from datetime import UTC

import numpy as np
from google.rpc import status_pb2  # type: ignore[attr-defined]  # stubs hidden by types-protobuf

from command_side.field_paths import OPTIMIZATION, proto_field_paths
from command_side.mapping import (
    ValidatedRequest,
    datetime_to_timestamp,
    normalize_configuration,
    optimize_request_from_configuration,
    timestamp_to_datetime,
    validate_optimize_request,
)
from command_side.optimization_store import OptimizationStore
from command_side.records import response_from_record
from command_side.workers import SolverPool
from services.engine import Method, OptimizationJob, OptimizationOutcome
from services.errors import (
    DeadlineExceededError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    PreconditionViolation,
    StratoptError,
)
from services.estimation import returns_between_observations
from services.optimization import HELD_THRESHOLD
from services.types import Moments, ReturnHistory
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

_LIST_TOKEN_PREFIX = "configurations:v1:"

_RUN_INHERITS = ("enabled", "lookback_periods", "market_symbol")

StatusFactory = Callable[[BaseException], status_pb2.Status]
"""Turns an exception into the ``google.rpc.Status`` a unary call would have returned."""

MAX_BATCH_SIZE = 1000
"""Most requests in one BatchOptimize call."""
MAX_BARS_PER_MESSAGE = 10_000
PERSISTENCE_RESERVE_S = 0.05
"""Part of the caller's deadline kept for storing the result after the solve."""

_STATUS = {
    "OPTIMAL": pb.CONVERGENCE_STATUS_OPTIMAL,
    "OPTIMAL_INACCURATE": pb.CONVERGENCE_STATUS_OPTIMAL_INACCURATE,
    "CLOSED_FORM": pb.CONVERGENCE_STATUS_CLOSED_FORM,
}


class OptimizationService:
    """The command side's application service: validation, idempotency, solve off-loop, atomic persistence.

    Parameters
    ----------
    store : OptimizationStore
        The write model (``PostgresOptimizationStore`` in the server).
    solver_pool : SolverPool
        Worker processes that run the engine.
    batch_concurrency : int, optional
        Batch items in flight at once; default twice the workers.
    """

    def __init__(self, store: OptimizationStore, solver_pool: SolverPool, batch_concurrency: int = 0) -> None:
        self._store = store
        self._pool = solver_pool
        self._batch_concurrency = batch_concurrency or 2 * solver_pool.workers

    async def optimize(
        self,
        request: cmd_pb.OptimizeRequest,
        *,
        time_remaining_s: float | None,
        request_hash: str | None = None,
    ) -> cmd_pb.OptimizeResponse:
        """Optimize one portfolio and store the run, or replay the stored answer to a repeated request_id.

        Parameters
        ----------
        request : stratopt.v1.OptimizeRequest
            The request.
        time_remaining_s : float or None
            Seconds left before the caller's deadline; None when the call has none.
        request_hash : str, optional
            Idempotency fingerprint to store instead of the request's own (RunConfiguration hashes its own
            request, so a retry replays even after the configuration changed).

        Returns
        -------
        stratopt.v1.OptimizeResponse
            The stored result (``optimization_metadata.replayed`` is true for a replay).

        Raises
        ------
        InvalidInputError, InfeasibleError, PreconditionError, DeadlineExceededError, UnavailableError,
        OptimizationError
            Mapped to gRPC status codes by the error interceptor; nothing is stored for a failed request.
        """
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        validated = validate_optimize_request(request)
        fingerprint = request_hash if request_hash is not None else validated.request_hash
        if validated.request_id:
            stored = await self._replay(validated.request_id, fingerprint)
            if stored is not None:
                return stored
        job_inputs, kind = await self._inputs(validated, request)
        run_inputs: dict[str, object] = {"current_weights": validated.current_weights, "kind": kind}
        # The solver gets what is left of the deadline now, minus a reserve for storing the result.
        limit = None if deadline is None else deadline - loop.time() - PERSISTENCE_RESERVE_S
        if limit is not None and limit <= 0:
            raise DeadlineExceededError("the call's deadline leaves no time to optimize")
        job = OptimizationJob(
            problem=validated.problem,
            inputs=job_inputs,
            settings=validated.settings,
            method=validated.method,
            time_limit_s=limit,
        )
        with proto_field_paths(OPTIMIZATION, strategy_ids=validated.problem.strategy_ids):
            outcome = await self._pool.run(job, timeout_s=limit)
        response = _response(request, outcome)
        try:
            return await self._store.persist_run(
                configuration=validated.configuration,
                response=response,
                request_hash=fingerprint,
                run_inputs=run_inputs,
                # The stored-data window of a configuration is only set by runs on stored data (or upserts).
                inherit=("enabled",) if validated.market_data is not None else _RUN_INHERITS,
            )
        except IntegrityError:
            # A concurrent call with the same request_id committed first: answer with its result.
            stored = await self._replay(validated.request_id, fingerprint)
            if stored is None:
                raise
            return stored

    async def _inputs(
        self, validated: ValidatedRequest, request: cmd_pb.OptimizeRequest
    ) -> tuple[ReturnHistory | Moments, str]:
        """The job's inputs and their kind (``moments``, ``returns`` or ``market_data``)."""
        if validated.moments is not None:
            return validated.moments, "moments"
        if validated.inline_returns is not None:
            return validated.inline_returns, "returns"
        return await self._market_data_returns(validated.problem.strategy_ids, request.market_data), "market_data"

    async def efficient_frontier(
        self, request: cmd_pb.ComputeEfficientFrontierRequest, *, time_remaining_s: float | None
    ) -> cmd_pb.ComputeEfficientFrontierResponse:
        """Points of the efficient frontier of ``request.problem``; nothing is stored.

        Raises
        ------
        InvalidInputError
            As Optimize, plus ``points`` outside 2..200 and methods other than variance mean-variance and
            Black-Litterman (fields under ``problem.``).
        """
        points = request.points or 20
        if not 2 <= points <= 200:
            raise InvalidInputError.for_field("points", f"must lie in 2..200, got {points}")
        problem = cmd_pb.OptimizeRequest()
        problem.CopyFrom(request.problem)
        problem.objective = pb.OBJECTIVE_MIN_VOLATILITY  # ignored: the frontier spans every objective
        problem.risk_parameters.ClearField("multi_objective")  # weights of an objective the frontier does not use
        problem.request_id = ""
        ids = tuple(s.strategy_id for s in problem.strategies)
        with proto_field_paths(OPTIMIZATION, strategy_ids=ids, prefix="problem"):
            validated = validate_optimize_request(problem)
            if validated.method.method not in (Method.MEAN_VARIANCE, Method.BLACK_LITTERMAN) or (
                validated.method.risk_measure is not None
            ):
                raise InvalidInputError.for_field(
                    "method", "the efficient frontier is defined for variance-based MEAN_VARIANCE and BLACK_LITTERMAN"
                )
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        job_inputs, _ = await self._inputs(validated, problem)
        limit = None if deadline is None else deadline - loop.time()
        job = OptimizationJob(
            problem=validated.problem,
            inputs=job_inputs,
            settings=validated.settings,
            method=validated.method,
            time_limit_s=limit,
        )
        with proto_field_paths(OPTIMIZATION, strategy_ids=ids, prefix="problem"):
            outcome = await self._pool.frontier(job, points, timeout_s=limit)
        ids = validated.problem.strategy_ids
        response = cmd_pb.ComputeEfficientFrontierResponse(computation_time_ms=outcome.total_time_ms)
        for result in outcome.results:
            response.points.add(
                expected_return=result.performance.expected_return,
                volatility=result.performance.volatility,
                sharpe_ratio=result.performance.sharpe_ratio,
                weights=dict(zip(ids, map(float, result.weights), strict=True)),
            )
        return response

    async def _replay(self, request_id: str, request_hash: str) -> cmd_pb.OptimizeResponse | None:
        stored = await self._store.find_result(request_id)
        if stored is None:
            return None
        if stored.request_hash != request_hash:
            raise InvalidInputError.for_field(
                "request_id", f"'{request_id}' was already used for a different request; use a new key"
            )
        response = response_from_record(stored.result)
        response.optimization_metadata.replayed = True
        return response

    async def _market_data_returns(self, symbols: tuple[str, ...], window: pb.MarketDataWindow) -> ReturnHistory:
        prices = await self._store.load_prices(
            symbols,
            start=timestamp_to_datetime(window.start) if window.HasField("start") else None,
            end=timestamp_to_datetime(window.end) if window.HasField("end") else None,
            lookback_periods=window.lookback_periods,
            market_symbol=window.market_symbol,
        )
        market = None
        if prices.market_prices is not None:
            market = returns_between_observations(prices.market_prices[:, None])[:, 0]
        return ReturnHistory(
            returns=returns_between_observations(prices.prices), timestamps=prices.timestamps[1:], market_returns=market
        )

    async def batch_optimize(
        self,
        request: cmd_pb.BatchOptimizeRequest,
        *,
        time_remaining_s: float | None,
        to_status: StatusFactory,
    ) -> cmd_pb.BatchOptimizeResponse:
        """Optimize each request on its own; a failed item yields its error status, the others go on.

        Raises
        ------
        InvalidInputError
            When the batch is empty or larger than ``MAX_BATCH_SIZE``.
        """
        count = len(request.requests)
        if count == 0:
            raise InvalidInputError.for_field("requests", "must hold at least one request")
        if count > MAX_BATCH_SIZE:
            raise InvalidInputError.for_field("requests", f"at most {MAX_BATCH_SIZE} requests per batch, got {count}")
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        gate = asyncio.Semaphore(self._batch_concurrency)

        async def one(index: int, item: cmd_pb.OptimizeRequest) -> cmd_pb.BatchOptimizeResult:
            async with gate:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    response = await self.optimize(item, time_remaining_s=remaining)
                except StratoptError as exc:
                    return cmd_pb.BatchOptimizeResult(index=index, error=to_status(exc))
                except Exception as exc:  # one broken item must not sink the batch
                    log.exception("batch item %d failed", index)
                    return cmd_pb.BatchOptimizeResult(index=index, error=to_status(exc))
                return cmd_pb.BatchOptimizeResult(index=index, response=response)

        # Items of one portfolio run one after another in request order, so its history (and the latest read
        # model) follows the batch's order; different portfolios run concurrently.
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(request.requests):
            groups.setdefault(item.portfolio_id, []).append(i)
        results: list[cmd_pb.BatchOptimizeResult] = [cmd_pb.BatchOptimizeResult()] * count

        async def run_group(indices: list[int]) -> None:
            for i in indices:
                results[i] = await one(i, request.requests[i])

        await asyncio.gather(*(run_group(indices) for indices in groups.values()))
        failed = sum(1 for r in results if r.HasField("error"))
        return cmd_pb.BatchOptimizeResponse(results=results, succeeded=count - failed, failed=failed)

    async def upsert_configuration(
        self, config: cmd_pb.OptimizationConfiguration
    ) -> cmd_pb.UpsertConfigurationResponse:
        """Validate and store a configuration (a new version only when its content changed)."""
        stored, created = await self._store.upsert_configuration(normalize_configuration(config))
        return cmd_pb.UpsertConfigurationResponse(configuration=stored, created=created)

    async def get_configuration(self, portfolio_id: str, version: int) -> cmd_pb.OptimizationConfiguration:
        """One configuration version (0 = latest); NotFoundError when absent."""
        if not portfolio_id:
            raise InvalidInputError.for_field("portfolio_id", "must not be empty")
        if version > 2**31 - 1:
            raise NotFoundError(f"no configuration version {version} for portfolio '{portfolio_id}'")
        return await self._store.get_configuration(portfolio_id, version)

    async def list_configurations(self, page_size: int, page_token: str) -> cmd_pb.ListConfigurationsResponse:
        """A page of latest configurations ordered by portfolio_id (keyset on the id)."""
        size = min(page_size or 50, 500)
        after = ""
        if page_token:
            try:
                decoded = base64.b64decode(page_token.encode(), altchars=b"-_", validate=True).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
                raise InvalidInputError.for_field("page_token", "is not a token this service issued") from exc
            if not decoded.startswith(_LIST_TOKEN_PREFIX):
                raise InvalidInputError.for_field("page_token", "is not a token this service issued")
            after = decoded.removeprefix(_LIST_TOKEN_PREFIX)
        rows = await self._store.list_configurations(after_portfolio_id=after, limit=size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = base64.urlsafe_b64encode((_LIST_TOKEN_PREFIX + rows[-1].portfolio_id).encode()).decode()
        return cmd_pb.ListConfigurationsResponse(configurations=rows, next_page_token=token)

    async def run_configuration(
        self, portfolio_id: str, request_id: str, *, time_remaining_s: float | None
    ) -> cmd_pb.OptimizeResponse:
        """Re-optimize the latest stored configuration on its window of stored prices.

        Raises
        ------
        NotFoundError
            No configuration for the portfolio.
        PreconditionError
            The configuration is disabled, or its strategies lack stored prices.
        """
        if not portfolio_id:
            raise InvalidInputError.for_field("portfolio_id", "must not be empty")
        # A retry replays the stored answer even if the configuration was edited or disabled since.
        fingerprint = ""
        if request_id:
            fingerprint = hashlib.sha256(f"RunConfiguration\0{portfolio_id}".encode()).hexdigest()
            stored = await self._replay(request_id, fingerprint)
            if stored is not None:
                return stored
        config = await self._store.get_configuration(portfolio_id)
        if not config.enabled:
            raise PreconditionError(
                f"the configuration of portfolio '{portfolio_id}' is disabled",
                precondition_violations=(
                    PreconditionViolation(
                        "CONFIGURATION_DISABLED", portfolio_id, f"version {config.version} has enabled = false"
                    ),
                ),
            )
        request = optimize_request_from_configuration(config, request_id)
        return await self.optimize(request, time_remaining_s=time_remaining_s, request_hash=fingerprint)

    async def ingest(self, chunks: AsyncIterable[cmd_pb.IngestMarketDataRequest]) -> cmd_pb.IngestMarketDataResponse:
        """Validate and upsert streamed price bars, chunk by chunk (each chunk in its own transaction).

        Raises
        ------
        InvalidInputError
            Naming ``bars[i]`` of the offending message (empty symbol, unset timestamp, price not positive and
            finite, negative volume); chunks before it stay stored.
        """
        written = 0
        symbols: set[str] = set()
        first = last = None
        message_index = 0
        async for chunk in chunks:
            if len(chunk.bars) > MAX_BARS_PER_MESSAGE:
                raise InvalidInputError.for_field("bars", f"at most {MAX_BARS_PER_MESSAGE} bars per message")
            records = []
            for i, bar in enumerate(chunk.bars):
                field = f"bars[{i}]"
                if not bar.symbol:
                    raise InvalidInputError.for_field(f"{field}.symbol", f"must not be empty (message {message_index})")
                if not bar.HasField("timestamp"):
                    raise InvalidInputError.for_field(f"{field}.timestamp", f"must be set (message {message_index})")
                if not (np.isfinite(bar.price) and bar.price > 0):
                    raise InvalidInputError.for_field(
                        f"{field}.price",
                        f"must be positive and finite, got {bar.price} (message {message_index})",
                    )
                volume = bar.volume if bar.HasField("volume") else None
                if volume is not None and not (np.isfinite(volume) and volume >= 0):
                    raise InvalidInputError.for_field(f"{field}.volume", "must be finite and not negative")
                when = bar.timestamp.ToDatetime(tzinfo=UTC)
                records.append((bar.symbol, when, bar.price, volume))
                symbols.add(bar.symbol)
                first = when if first is None or when < first else first
                last = when if last is None or when > last else last
            written += await self._store.ingest_bars(records)
            message_index += 1
        response = cmd_pb.IngestMarketDataResponse(rows_written=written, symbols=sorted(symbols))
        if first is not None and last is not None:
            response.first_timestamp.CopyFrom(datetime_to_timestamp(first))
            response.last_timestamp.CopyFrom(datetime_to_timestamp(last))
        return response


def _response(request: cmd_pb.OptimizeRequest, outcome: OptimizationOutcome) -> cmd_pb.OptimizeResponse:
    result, estimated = outcome.result, outcome.estimated
    response = cmd_pb.OptimizeResponse(
        portfolio_id=request.portfolio_id,
        request_id=request.request_id,
        optimal_weights={s.strategy_id: float(w) for s, w in zip(request.strategies, result.weights, strict=True)},
        expected_return=result.performance.expected_return,
        expected_volatility=result.performance.volatility,
        sharpe_ratio=result.performance.sharpe_ratio,
    )
    meta = response.optimization_metadata
    meta.convergence_status = _STATUS.get(result.status, pb.CONVERGENCE_STATUS_UNSPECIFIED)
    meta.iterations = result.iterations
    meta.optimization_time_ms = outcome.total_time_ms
    meta.objective_value = result.objective_value
    meta.constraints_satisfied = result.constraints_satisfied
    meta.solver = result.solver
    meta.fallback_used = result.fallback_used
    meta.solve_path = result.solve_path
    meta.holdings = int((np.abs(result.weights) > HELD_THRESHOLD).sum())
    meta.net_exposure = float(result.weights.sum())
    meta.gross_exposure = float(np.abs(result.weights).sum())
    meta.constraint_violations.extend(result.violations)
    for relaxation in result.relaxations:
        meta.relaxations.add(
            constraint=_proto_constraint(relaxation.constraint, request),
            original=relaxation.original,
            relaxed=relaxation.relaxed,
            description=_proto_description(relaxation.description, request),
        )
    meta.missing_data_policy = estimated.missing_data_policy
    meta.observations = estimated.observations
    if estimated.window_start is not None:
        meta.window_start.CopyFrom(datetime_to_timestamp(np.datetime64(estimated.window_start)))
    if estimated.window_end is not None:
        meta.window_end.CopyFrom(datetime_to_timestamp(np.datetime64(estimated.window_end)))
    meta.method = request.method or pb.OPTIMIZATION_METHOD_MEAN_VARIANCE
    meta.risk_measure = outcome.risk_measure
    if outcome.risk_measure_value is not None:
        meta.risk_measure_value = outcome.risk_measure_value
    ids = [s.strategy_id for s in request.strategies]
    meta.risk_contributions.update(zip(ids, map(float, outcome.risk_contributions), strict=True))
    if result.betas is not None:
        meta.betas.update(zip(ids, map(float, result.betas), strict=True))
    if outcome.posterior is not None:
        posterior = outcome.posterior
        meta.black_litterman.prior_returns.update(zip(ids, map(float, posterior.prior_returns), strict=True))
        meta.black_litterman.posterior_returns.update(zip(ids, map(float, posterior.posterior_returns), strict=True))
        meta.black_litterman.posterior_covariance.extend(posterior.posterior_covariance.ravel().tolist())
        meta.black_litterman.risk_aversion = posterior.risk_aversion
        meta.black_litterman.tau = posterior.tau
    return response


def _proto_constraint(path: str, request: cmd_pb.OptimizeRequest) -> str:
    """A relaxation's constraint (a domain path) as the request's field path."""
    return OPTIMIZATION.proto_path(path, strategy_ids=[s.strategy_id for s in request.strategies]) or path


def _proto_description(text: str, request: cmd_pb.OptimizeRequest) -> str:
    """A relaxation's description with the domain paths it quotes as the request's field paths."""
    return OPTIMIZATION.proto_text(text, strategy_ids=[s.strategy_id for s in request.strategies])
