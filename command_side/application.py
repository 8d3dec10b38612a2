"""Use cases of the command side: optimize, batch, configurations, re-runs, market-data ingestion.

:class:`OptimizationService` takes the plain commands of ``command_side.optimization_commands`` and returns their
plain results; it never sees a ``stratopt.v1`` request or response (``command_side.optimization_adapter`` converts
both ways, and ``tests/command_side/test_layers.py`` checks that this module, and every command-side module it
imports, imports no contract type). A portfolio's configuration is the domain's frozen dataclass
(``command_side.configuration.OptimizationConfiguration``); RunConfiguration turns the stored one into an
:class:`~command_side.optimization_commands.OptimizeCommand` with the ``command_for`` the composition root gives
the service (the adapter's ``optimize_command_from_configuration``, which validates it as a request would be).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import datetime

import numpy as np

from command_side.batch_runs import BatchPorts, BatchRunner, run_inherits
from command_side.deadlines import StorageTimer, commit_by
from command_side.deadlines import deadline as _deadline
from command_side.field_paths import OPTIMIZATION, proto_field_paths
from command_side.optimization_commands import (
    BatchCommand,
    BatchResult,
    ConfigurationPage,
    ConfigurationUpsert,
    EncodedRunResult,
    FrontierCommand,
    FrontierPoint,
    FrontierResult,
    IngestResult,
    Inputs,
    InvalidItem,
    MarketDataWindow,
    OptimizeCommand,
    RunResult,
    SerializedOptimize,
)
from command_side.optimization_store import Bar, Configuration, OptimizationStore
from command_side.result_records import BlackLittermanRecord, RelaxationRecord, ResultRecord, RunMetadataRecord
from command_side.workers import SolverPool
from services.engine import OptimizationJob, OptimizationOutcome
from services.errors import (
    DeadlineExceededError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PreconditionError,
    PreconditionViolation,
)
from services.estimation import returns_between_observations
from services.optimization import HELD_THRESHOLD
from services.types import Moments, ReturnHistory
from services.workload import Workload, job_workload

log = logging.getLogger(__name__)

_LIST_TOKEN_PREFIX = "configurations:v1:"


MAX_BATCH_SIZE = 1000
"""Most requests in one BatchOptimize call."""
_CONVERGENCE_STATUSES = frozenset({"OPTIMAL", "OPTIMAL_INACCURATE", "CLOSED_FORM"})
"""Solver statuses the stored result names; any other is stored as ``""`` (unspecified)."""


def check_batch_size(count: int) -> None:
    """Refuse an empty batch or one of more than :data:`MAX_BATCH_SIZE` items (field ``requests``)."""
    if count == 0:
        raise InvalidInputError.for_field("requests", "must hold at least one request")
    if count > MAX_BATCH_SIZE:
        raise InvalidInputError.for_field("requests", f"at most {MAX_BATCH_SIZE} requests per batch, got {count}")


CommandFor = Callable[[Configuration, str], OptimizeCommand]
"""``(configuration, request_id) -> OptimizeCommand``: the run a stored configuration stands for."""


class OptimizationService:
    """The command side's application service: idempotency, solve off-loop, atomic persistence.

    Parameters
    ----------
    store : OptimizationStore
        The write model (``PostgresOptimizationStore`` in the server).
    solver_pool : SolverPool
        Worker processes that run the engine.
    command_for : callable
        The command that re-runs a stored configuration with an idempotency key (RunConfiguration):
        ``command_side.optimization_adapter.optimize_command_from_configuration`` in the server.
    batch_concurrency : int, optional
        Batch chunks in flight at once (each of up to ``BATCH_CHUNK`` items); default twice the workers.
    """

    def __init__(
        self,
        store: OptimizationStore,
        solver_pool: SolverPool,
        *,
        command_for: CommandFor,
        batch_concurrency: int = 0,
    ) -> None:
        self._store = store
        self._command_for = command_for
        self._pool = solver_pool
        self._batch_concurrency = batch_concurrency or 2 * solver_pool.workers
        self._storage = StorageTimer()

    async def optimize(self, command: OptimizeCommand, *, time_remaining_s: float | None) -> RunResult:
        """Optimize one portfolio and store the run, or replay the stored answer to a repeated request_id.

        Parameters
        ----------
        command : OptimizeCommand
            The validated problem, its inputs, idempotency key and configuration.
        time_remaining_s : float or None
            Seconds left before the caller's deadline; None when the call has none.

        Returns
        -------
        RunResult
            The stored result (``replayed`` for the answer to an earlier call with the same key).

        Raises
        ------
        InvalidInputError, InfeasibleError, PreconditionError, DeadlineExceededError, UnavailableError,
        OptimizationError
            Mapped to gRPC status codes by the error interceptor; nothing is stored for a failed command.
        ResourceExhaustedError
            The solve queue is full (``SolverPool.admitted``; a heavy problem's is the heavy pool's queue); nothing
            is stored (only the idempotency look-up ran). A replay of a stored answer is never refused.
        """
        return await self._optimize(command, _deadline(time_remaining_s), admit=True)

    async def optimize_serialized(self, request: SerializedOptimize, *, time_remaining_s: float | None) -> RunResult:
        """``optimize`` for a request still in wire form: parsed, checked and solved in a worker.

        A stored answer to the same ``request_id`` is replayed first; otherwise the call takes a queue place and
        a worker parses the request (``request.parse``), solves it and sends back the command and outcome, and
        the run is stored as by ``optimize``. For inputs that need no database read before the solve (inline
        returns or moments).

        Raises
        ------
        InvalidInputError
            From ``request.parse``, naming the field (after the queue place was taken; nothing is stored).
        InfeasibleError, PreconditionError, DeadlineExceededError, UnavailableError, OptimizationError,
        ResourceExhaustedError
            As ``optimize``.
        """
        deadline = _deadline(time_remaining_s)
        if request.request_id:
            stored = await self._replay(request.request_id, request.request_hash)
            if stored is not None:
                return stored
        with self._pool.admitted(request.workload):
            limit = self._solve_limit(deadline)
            command, outcome = await self._pool.parse_and_run(
                request.parse, request.payload, time_limit_s=limit, timeout_s=limit, workload=request.workload
            )
            return await self._store_run(command, outcome, deadline)

    def check_capacity(self, workload: Workload | None = None) -> None:
        """Refuse a call that would need a solve while the solve queue is full, before its request is parsed.

        Parameters
        ----------
        workload : Workload or None, optional
            The call's traits: a heavy call is checked against the heavy pool's queue (``SolverPool.route``).

        Raises
        ------
        ResourceExhaustedError
            Every place of the solve queue is taken (``SolverPool.check_capacity``).
        """
        self._pool.check_capacity(workload)

    async def _optimize(self, command: OptimizeCommand, deadline: float | None, *, admit: bool) -> RunResult:
        """``optimize`` with an absolute deadline (``time.monotonic()`` seconds); ``admit``: take a queue place."""
        if command.request_id:
            stored = await self._replay(command.request_id, command.request_hash)
            if stored is not None:
                return stored
        workload = job_workload(command.problem, command.method)
        with self._pool.admitted(workload) if admit else contextlib.nullcontext():
            return await self._solve_and_store(command, deadline)

    async def _solve_and_store(self, command: OptimizeCommand, deadline: float | None) -> RunResult:
        job_inputs = await self._job_inputs(command.problem.symbols, command.inputs)
        limit = self._solve_limit(deadline)
        job = OptimizationJob(
            problem=command.problem,
            inputs=job_inputs,
            settings=command.settings,
            method=command.method,
            time_limit_s=limit,
        )
        with proto_field_paths(OPTIMIZATION, symbols=command.problem.symbols):
            outcome = await self._pool.run(job, timeout_s=limit)
        return await self._store_run(command, outcome, deadline)

    def _solve_limit(self, deadline: float | None) -> float | None:
        """Seconds the solver gets: what is left of the deadline now, minus what storing is expected to take.

        Raises
        ------
        DeadlineExceededError
            Nothing would be left for the solve.
        """
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        limit = remaining - self._storage.reserve_s(remaining)
        if limit <= 0:
            raise DeadlineExceededError("the call's deadline leaves no time to optimize")
        return limit

    async def _store_run(
        self, command: OptimizeCommand, outcome: OptimizationOutcome, deadline: float | None
    ) -> RunResult:
        """Store a solved run (configuration version, result, event) in one transaction; replay on a key race."""
        run_inputs: dict[str, object] = {"current_weights": command.current_weights, "kind": command.inputs_kind}
        started = time.monotonic()
        try:
            stored_result = await self._store.persist_run(
                configuration=command.configuration,
                result=run_record(command, outcome),
                request_hash=command.request_hash,
                run_inputs=run_inputs,
                inherit=run_inherits(command),
                commit_by=commit_by(deadline),
            )
        except IntegrityError:
            # A concurrent call with the same request_id committed first: answer with its result.
            stored = await self._replay(command.request_id, command.request_hash)
            if stored is None:
                raise
            return stored
        self._storage.record(time.monotonic() - started)
        return RunResult(result=stored_result)

    async def _job_inputs(self, symbols: tuple[str, ...], inputs: Inputs) -> ReturnHistory | Moments:
        """The engine's inputs: the command's own, or returns of the stored prices in its window."""
        if isinstance(inputs, MarketDataWindow):
            return await self._market_data_returns(symbols, inputs)
        return inputs

    async def efficient_frontier(self, command: FrontierCommand, *, time_remaining_s: float | None) -> FrontierResult:
        """Points of the efficient frontier of ``command.problem``; nothing is stored.

        Raises
        ------
        PreconditionError, DeadlineExceededError, UnavailableError, OptimizationError, ResourceExhaustedError
            As Optimize (engine errors name fields under ``problem.``).
        """
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        ids = command.problem.symbols
        job_inputs = await self._job_inputs(ids, command.inputs)
        limit = None if deadline is None else deadline - loop.time()
        job = OptimizationJob(
            problem=command.problem,
            inputs=job_inputs,
            settings=command.settings,
            method=command.method,
            time_limit_s=limit,
        )
        admitted = self._pool.admitted(job_workload(command.problem, command.method))
        with admitted, proto_field_paths(OPTIMIZATION, symbols=ids, prefix="problem"):
            outcome = await self._pool.frontier(job, command.points, timeout_s=limit)
        return FrontierResult(
            points=tuple(
                FrontierPoint(
                    expected_return=result.performance.expected_return,
                    volatility=result.performance.volatility,
                    sharpe_ratio=result.performance.sharpe_ratio,
                    weights=dict(zip(ids, map(float, result.weights), strict=True)),
                )
                for result in outcome.results
            ),
            computation_time_ms=outcome.total_time_ms,
        )

    async def _replay(self, request_id: str, request_hash: str) -> RunResult | None:
        stored = await self._store.find_result(request_id)
        if stored is None:
            return None
        if stored.request_hash != request_hash:
            raise InvalidInputError.for_field(
                "request_id", f"'{request_id}' was already used for a different request; use a new key"
            )
        return RunResult(result=stored.result, replayed=True)

    async def _market_data_returns(self, symbols: tuple[str, ...], window: MarketDataWindow) -> ReturnHistory:
        prices = await self._store.load_prices(
            symbols,
            start=window.start,
            end=window.end,
            lookback_periods=window.lookback_periods,
            market_symbol=window.market_symbol,
        )
        market = None
        if prices.market_prices is not None:
            market = returns_between_observations(prices.market_prices[:, None])[:, 0]
        return ReturnHistory(
            returns=returns_between_observations(prices.prices), timestamps=prices.timestamps[1:], market_returns=market
        )

    async def batch_optimize(self, command: BatchCommand, *, time_remaining_s: float | None) -> BatchResult:
        """Optimize each item on its own; a failed item yields its error, the others go on.

        Raises
        ------
        InvalidInputError
            When the batch is empty or larger than ``MAX_BATCH_SIZE``.
        ResourceExhaustedError
            The solve queue is full; no item runs.
        """
        count = len(command.items)
        check_batch_size(count)
        with self._pool.admitted():  # one queue place for the batch; its own gate bounds its solves
            return await self._batch(command, _deadline(time_remaining_s))

    async def _batch(self, command: BatchCommand, deadline: float | None) -> BatchResult:
        """Replay, solve and store chunk by chunk, in request order (``command_side.batch_runs``)."""
        outcomes = await self._batch_runner().run(command.items, deadline)
        return BatchResult(outcomes=tuple(outcomes))

    async def batch_optimize_stream(
        self,
        messages: AsyncIterable[Sequence[OptimizeCommand | InvalidItem | SerializedOptimize]],
        *,
        window: int,
        time_remaining_s: float | None,
    ) -> AsyncIterator[list[tuple[int, RunResult | EncodedRunResult | BaseException]]]:
        """Answer a stream of batch items as their chunks finish (``BatchRunner.stream``).

        Parameters
        ----------
        messages : async iterable of sequences of items
            The items of each message, in order (items are numbered from 0 across messages).
        window : int
            Most items read and not yet answered (1 to ``STREAM_WINDOW``).
        time_remaining_s : float or None
            Seconds left before the caller's deadline.

        Yields
        ------
        list of (int, RunResult or BaseException)
            The answers of a chunk: each item's number and its outcome.

        Raises
        ------
        ResourceExhaustedError
            The solve queue is full when the stream starts; no item runs.
        """
        deadline = _deadline(time_remaining_s)
        with self._pool.admitted():  # one queue place for the stream; its window bounds its solves
            async for answers in self._batch_runner().stream(messages, deadline, window=window):
                yield answers

    def _batch_runner(self) -> BatchRunner:
        return BatchRunner(
            BatchPorts(
                store=self._store,
                pool=self._pool,
                job_inputs=self._job_inputs,
                solve_limit=self._solve_limit,
                store_one=self._store_run,
                record_storage=self._storage.record,
                record_of=run_record,
            ),
            concurrency=self._batch_concurrency,
        )

    async def upsert_configuration(self, configuration: Configuration) -> ConfigurationUpsert:
        """Store a validated configuration (a new version only when its content changed)."""
        stored, created = await self._store.upsert_configuration(configuration)
        return ConfigurationUpsert(configuration=stored, created=created)

    async def get_configuration(self, portfolio_id: str, version: int) -> Configuration:
        """One configuration version (0 = latest); NotFoundError when absent."""
        if not portfolio_id:
            raise InvalidInputError.for_field("portfolio_id", "must not be empty")
        if version > 2**31 - 1:
            raise NotFoundError(f"no configuration version {version} for portfolio '{portfolio_id}'")
        return await self._store.get_configuration(portfolio_id, version)

    async def list_configurations(self, page_size: int, page_token: str) -> ConfigurationPage:
        """A page of latest configurations ordered by portfolio_id (keyset on the id)."""
        size = min(page_size or 50, 500)
        after = ""
        if page_token:
            try:
                decoded = base64.b64decode(page_token.encode(), altchars=b"-_", validate=True).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
                raise InvalidInputError.for_field("page_token", "is not a token this service issued") from exc
            if not decoded.startswith(_LIST_TOKEN_PREFIX) or "\x00" in decoded:
                raise InvalidInputError.for_field("page_token", "is not a token this service issued")
            after = decoded.removeprefix(_LIST_TOKEN_PREFIX)
        rows = await self._store.list_configurations(after_portfolio_id=after, limit=size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = base64.urlsafe_b64encode((_LIST_TOKEN_PREFIX + rows[-1].portfolio_id).encode()).decode()
        return ConfigurationPage(configurations=tuple(rows), next_page_token=token)

    async def run_configuration(
        self, portfolio_id: str, request_id: str, *, time_remaining_s: float | None
    ) -> RunResult:
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
        command = replace(self._command_for(config, request_id), request_hash=fingerprint)
        return await self.optimize(command, time_remaining_s=time_remaining_s)

    async def ingest(
        self, chunks: AsyncIterable[Sequence[Bar]], *, time_remaining_s: float | None = None
    ) -> IngestResult:
        """Upsert streamed price bars, chunk by chunk (each chunk in its own transaction).

        Parameters
        ----------
        chunks : async iterable of sequences of Bar
            Validated ``(symbol, timestamp, price, volume)`` bars, one sequence per message; an error raised by
            the iterable ends the ingestion with the chunks before it stored.
        time_remaining_s : float or None, optional
            Seconds left before the caller's deadline; a chunk whose commit would start less than
            ``COMMIT_MARGIN_S`` before it is rolled back (``DeadlineExceededError``).
        """
        deadline = _deadline(time_remaining_s)
        written = 0
        symbols: set[str] = set()
        first: datetime | None = None
        last: datetime | None = None
        async for bars in chunks:
            for symbol, when, _, _ in bars:
                symbols.add(symbol)
                first = when if first is None or when < first else first
                last = when if last is None or when > last else last
            written += await self._store.ingest_bars(bars, commit_by=commit_by(deadline))
        return IngestResult(
            rows_written=written, symbols=tuple(sorted(symbols)), first_timestamp=first, last_timestamp=last
        )


def _nanoseconds(value: np.datetime64 | None) -> int | None:
    return None if value is None else int(value.astype("datetime64[ns]").astype(np.int64))


def run_record(
    command: OptimizeCommand, outcome: OptimizationOutcome, *, event_id: str = "", result_id: str = ""
) -> ResultRecord:
    """The result of a run as it is stored (configuration version and timestamp still unset).

    ``event_id`` and ``result_id``: the ids it will be stored with, when already chosen ('' = unset).

    Relaxed limits are named by the contract's field paths (``command_side.field_paths``): the stored schema and
    the query side read them so.
    """
    result, estimated = outcome.result, outcome.estimated
    ids = command.problem.symbols
    black_litterman = None
    if outcome.posterior is not None:
        posterior = outcome.posterior
        black_litterman = BlackLittermanRecord(
            prior_returns=dict(zip(ids, map(float, posterior.prior_returns), strict=True)),
            posterior_returns=dict(zip(ids, map(float, posterior.posterior_returns), strict=True)),
            posterior_covariance=tuple(float(v) for v in posterior.posterior_covariance.ravel()),
            risk_aversion=float(posterior.risk_aversion),
            tau=float(posterior.tau),
        )
    metadata = RunMetadataRecord(
        event_id=event_id,
        result_id=result_id,
        timestamp=None,
        configuration_version=0,
        convergence_status=result.status if result.status in _CONVERGENCE_STATUSES else "",
        iterations=int(result.iterations),
        optimization_time_ms=float(outcome.total_time_ms),
        objective_value=float(result.objective_value),
        constraints_satisfied=bool(result.constraints_satisfied),
        constraint_violations=tuple(str(v) for v in result.violations),
        solver=str(result.solver),
        fallback_used=bool(result.fallback_used),
        solve_path=str(result.solve_path),
        method=command.method.method.value,
        risk_measure=str(outcome.risk_measure),
        risk_measure_value=0.0 if outcome.risk_measure_value is None else float(outcome.risk_measure_value),
        missing_data_policy=str(estimated.missing_data_policy),
        observations=int(estimated.observations),
        window_start=_nanoseconds(estimated.window_start),
        window_end=_nanoseconds(estimated.window_end),
        holdings=int((np.abs(result.weights) > HELD_THRESHOLD).sum()),
        net_exposure=float(result.weights.sum()),
        gross_exposure=float(np.abs(result.weights).sum()),
        risk_contributions=dict(zip(ids, map(float, outcome.risk_contributions), strict=True)),
        betas={} if result.betas is None else dict(zip(ids, map(float, result.betas), strict=True)),
        relaxations=tuple(
            RelaxationRecord(
                constraint=OPTIMIZATION.proto_path(r.constraint, symbols=ids) or r.constraint,
                original=float(r.original),
                relaxed=float(r.relaxed),
                description=OPTIMIZATION.proto_text(r.description, symbols=ids),
            )
            for r in result.relaxations
        ),
        black_litterman=black_litterman,
    )
    return ResultRecord(
        portfolio_id=command.portfolio_id,
        request_id=command.request_id,
        weights=dict(zip(ids, map(float, result.weights), strict=True)),
        expected_return=float(result.performance.expected_return),
        volatility=float(result.performance.volatility),
        sharpe_ratio=float(result.performance.sharpe_ratio),
        metadata=metadata,
        max_drawdown=outcome.max_drawdown,
    )
