"""Backtest use case: walk a stored configuration forward over stored prices, re-optimizing in the solver workers.

The simulation is ``services.backtest.WalkForward``, driven here step by step: at each rebalance date the
decision's estimation window (the returns ending that day, nothing later) becomes an ``OptimizationJob`` of the
configuration's problem, method and estimation settings, solved by the same worker pool as Optimize. When the
problem does not depend on the weights held (no turnover, cost or current-weight terms) and the schedule is a
calendar one, the decisions are independent of the path, so up to twice the workers' count of them are solved
ahead, in parallel; otherwise one at a time. A decision whose optimization fails (infeasible, no excess return …)
keeps the holdings and is counted. The result, its path and its event are stored in one transaction at the end;
a cancelled or failed backtest stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import numpy as np

from command_side.configuration import OptimizationConfiguration
from command_side.field_paths import OPTIMIZATION, proto_field_paths
from command_side.metrics import event_written
from command_side.optimization_commands import OptimizeCommand
from command_side.optimization_store import OptimizationStore
from command_side.postgres_errors import postgres_errors
from command_side.workers import SolverPool
from services.backtest import BacktestResult, BacktestSettings, Decision, ScheduleKind, WalkForward
from services.engine import OptimizationJob, OptimizationOutcome
from services.errors import (
    InfeasibleError,
    InvalidInputError,
    NotFoundError,
    OptimizationError,
    PreconditionError,
    PreconditionViolation,
)

log = logging.getLogger(__name__)

DEFAULT_ESTIMATION_PERIODS = 252
"""Returns per estimation window when neither the request nor the configuration names a number."""
MAX_ESTIMATION_PERIODS = 5000
PROGRESS_INTERVAL_S = 0.2
"""Least time between two progress messages."""
NOTIFY_CHANNEL = "backtest_completed"
"""LISTEN/NOTIFY channel of stored backtests (payload ``portfolio_id backtest_id``)."""

_RECOVERABLE = (InfeasibleError, OptimizationError, PreconditionError, InvalidInputError)
"""Engine errors that fail one decision (the holdings are kept), not the backtest."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestCommand:
    """A validated Backtest request."""

    portfolio_id: str
    configuration_version: int
    """0 = latest."""
    start: datetime | None
    end: datetime | None
    estimation_periods: int
    """0 = the configuration's lookback_periods, or 252."""
    settings: BacktestSettings
    """Schedule, costs, cash and holding (its ``estimation_periods`` is replaced by the resolved one)."""
    adv_by_symbol: Mapping[str, float]
    """Average daily volume per symbol (shares/day) for the impact models; checked against the symbols."""
    risk_free_rate: float | None
    """Annual risk-free rate of the metrics; None = the configuration's."""
    settings_json: dict[str, Any]
    """The request as stored with the backtest (protobuf JSON)."""
    requested_by: str
    """The authenticated principal."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestProgressUpdate:
    """How far a running backtest is."""

    decisions_done: int
    decisions_planned: int
    """0 for a drift schedule."""
    simulated_through: datetime
    equity: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredBacktest:
    """A finished, stored backtest."""

    backtest_id: str
    created_at: datetime
    portfolio_id: str
    configuration_version: int
    symbols: tuple[str, ...]
    result: BacktestResult
    settings_json: dict[str, Any]
    requested_by: str
    computation_time_ms: float


class BacktestStore(Protocol):
    """Where finished backtests go (one transaction each)."""

    async def persist_backtest(self, backtest: StoredBacktest) -> StoredBacktest:
        """Store the summary, the path and notify; return it with the database's ``created_at``."""
        ...


CommandFor = Callable[[OptimizationConfiguration, str], OptimizeCommand]


def _depends_on_holdings(command: OptimizeCommand) -> bool:
    problem = command.problem
    return any(
        value is not None
        for value in (
            problem.current_weights,
            problem.turnover_limit,
            problem.turnover_caps,
            problem.transaction_costs_bps,
        )
    ) or (problem.multi_objective is not None and problem.multi_objective.turnover_weight > 0)


def _utc(value: np.datetime64) -> datetime:
    micros = int(value.astype("datetime64[us]").astype(np.int64))
    return datetime.fromtimestamp(micros / 1e6, tz=UTC)


class BacktestService:
    """Runs backtests of stored configurations.

    Parameters
    ----------
    store : OptimizationStore
        Configurations and stored prices.
    backtests : BacktestStore
        Where results go.
    solver_pool : SolverPool
        The workers that solve each decision (shared with Optimize).
    command_for : callable
        ``(configuration, request_id) -> OptimizeCommand`` (validated as a request would be).
    """

    def __init__(
        self, store: OptimizationStore, backtests: BacktestStore, solver_pool: SolverPool, *, command_for: CommandFor
    ) -> None:
        self._store = store
        self._backtests = backtests
        self._pool = solver_pool
        self._command_for = command_for

    async def run(
        self, command: BacktestCommand, *, time_remaining_s: float | None
    ) -> AsyncIterator[BacktestProgressUpdate | StoredBacktest]:
        """Run a backtest; yield progress, then the stored backtest last.

        Raises
        ------
        NotFoundError
            No configuration (version) for the portfolio.
        InvalidInputError
            A setting out of range, naming the request field.
        PreconditionError
            Missing prices at simulated closes or too little history (per symbol).
        DeadlineExceededError, UnavailableError
            The call's deadline passed; the workers or the database are unavailable.
        """
        started = time.monotonic()
        deadline = None if time_remaining_s is None else started + time_remaining_s
        if command.configuration_version > 2**31 - 1:  # the column is an integer: no such version is stored
            raise NotFoundError(
                f"no configuration version {command.configuration_version} for portfolio '{command.portfolio_id}'"
            )
        config = await self._store.get_configuration(command.portfolio_id, command.configuration_version)
        optimize = self._command_for(replace(config, enabled=True), "")
        symbols = optimize.problem.symbols
        unknown = sorted(set(command.adv_by_symbol) - set(symbols))
        if unknown:
            raise InvalidInputError.for_field(
                "costs.average_daily_volume", f"symbols not in the configuration: {', '.join(unknown[:10])}"
            )
        window = command.estimation_periods or config.lookback_periods or DEFAULT_ESTIMATION_PERIODS
        if window > MAX_ESTIMATION_PERIODS:
            raise InvalidInputError.for_field("estimation_periods", f"at most {MAX_ESTIMATION_PERIODS} returns")
        adv = None
        if command.adv_by_symbol:
            missing = [s for s in symbols if s not in command.adv_by_symbol]
            if missing:
                raise PreconditionError(
                    "the impact model needs an average daily volume for every symbol",
                    precondition_violations=tuple(
                        PreconditionViolation("MISSING_VOLUME", s, "no costs.average_daily_volume entry")
                        for s in missing
                    ),
                )
            adv = np.array([command.adv_by_symbol[s] for s in symbols])
        risk_free = optimize.problem.risk_free_rate if command.risk_free_rate is None else command.risk_free_rate
        settings = replace(
            command.settings,
            estimation_periods=window,
            costs=replace(command.settings.costs, adv=adv),
            risk_free_rate=risk_free,
            periods_per_year=float(optimize.settings.periods_per_year),
        )
        prices = await self._store.load_prices(
            symbols, start=None, end=command.end, lookback_periods=0, market_symbol=config.market_symbol
        )
        walk = WalkForward(
            prices.prices,
            prices.timestamps,
            settings,
            start=None if command.start is None else np.datetime64(command.start.replace(tzinfo=None), "us"),
            market_prices=prices.market_prices,
            symbols=symbols,
        )
        ahead = (
            2 * self._pool.workers
            if settings.schedule.kind is not ScheduleKind.DRIFT and not _depends_on_holdings(optimize)
            else 0
        )
        planned = walk.planned_decisions
        solved: dict[int, asyncio.Task[OptimizationOutcome]] = {}
        queue = walk.calendar_decisions() if ahead else []

        def job(index: int, current: np.ndarray | None) -> OptimizationJob:
            problem = optimize.problem
            if current is not None and _depends_on_holdings(optimize):
                problem = replace(problem, current_weights=current)
            limit = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            return OptimizationJob(
                problem=problem,
                inputs=walk.window(index),
                settings=optimize.settings,
                method=optimize.method,
                time_limit_s=limit,
            )

        def submit_ahead() -> None:
            while queue and len(solved) < ahead:
                index = queue.pop(0)
                solved[index] = asyncio.ensure_future(self._solve(job(index, None), deadline))

        last_progress = 0.0
        try:
            with self._pool.admitted():
                while (decision := walk.next_decision()) is not None:
                    submit_ahead()
                    task = solved.pop(decision.index, None)
                    try:
                        if task is not None:
                            outcome = await task
                        else:
                            current = decision.current_weights if decision.number > 0 else None
                            outcome = await self._solve(job(decision.index, current), deadline)
                    except _RECOVERABLE as exc:
                        walk.apply(None, failure=f"{_utc(decision.timestamp).date()}: {exc}")
                    else:
                        walk.apply(outcome.result.weights)
                    now = time.monotonic()
                    if now - last_progress >= PROGRESS_INTERVAL_S:
                        last_progress = now
                        yield _progress(walk, decision, planned)
        finally:
            for task in solved.values():
                task.cancel()
        result = walk.result()
        stored = await self._backtests.persist_backtest(
            StoredBacktest(
                backtest_id=str(uuid.uuid4()),
                created_at=datetime.now(UTC),
                portfolio_id=config.portfolio_id,
                configuration_version=config.version,
                symbols=symbols,
                result=result,
                settings_json={**command.settings_json, "estimation_periods": window, "risk_free_rate": risk_free},
                requested_by=command.requested_by,
                computation_time_ms=(time.monotonic() - started) * 1e3,
            )
        )
        yield stored

    async def _solve(self, job: OptimizationJob, deadline: float | None) -> OptimizationOutcome:
        timeout = None if deadline is None else deadline - time.monotonic()
        with proto_field_paths(OPTIMIZATION, symbols=job.problem.symbols):
            return await self._pool.run(job, timeout_s=timeout)


def _progress(walk: WalkForward, decision: Decision, planned: int) -> BacktestProgressUpdate:
    return BacktestProgressUpdate(
        decisions_done=decision.number + 1,
        decisions_planned=planned,
        simulated_through=_utc(decision.timestamp),
        equity=walk.equity_at(decision.index),
    )


def metrics_json(result: BacktestResult) -> dict[str, float | int | None]:
    """The metrics as stored (docs/storage_schema.md, ``backtests.metrics``): snake_case, NaN as null."""
    values: dict[str, float | int | None] = {"schema_version": 1}
    for name in result.metrics.__dataclass_fields__:
        value = float(getattr(result.metrics, name))
        values[name] = value if math.isfinite(value) else None
    return values


_INSERT_BACKTEST = """
INSERT INTO backtests (backtest_id, created_at, portfolio_id, configuration_version, requested_by, symbols,
                       first_date, last_date, observations, decisions, failed_decisions, first_failure, metrics,
                       settings, computation_time_ms)
VALUES ($1, clock_timestamp(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13::jsonb, $14)
RETURNING created_at
"""


_POINT_COLUMNS = (
    "backtest_id",
    "created_at",
    "timestamp",
    "equity",
    "cash",
    "weights",
    "rebalanced",
    "turnover",
    "cost",
)


class PostgresBacktestStore:
    """``backtests`` and ``backtest_points`` (hypertables by creation time), written in one transaction.

    Parameters
    ----------
    pool : asyncpg.Pool
        Connection pool of the service.
    """

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def persist_backtest(self, backtest: StoredBacktest) -> StoredBacktest:
        """Insert the summary and every simulated close, then NOTIFY ``backtest_completed``; all or nothing.

        Under the portfolio's ``backtest:`` advisory lock, ``created_at`` read from the clock after it.

        Raises
        ------
        OperationalError
            The database cannot be reached (nothing is stored).
        """
        result = backtest.result
        backtest_id = uuid.UUID(backtest.backtest_id)
        timestamps = [_utc(t) for t in result.timestamps]
        async with postgres_errors(), self._pool.acquire() as conn, conn.transaction():
            # A portfolio's backtests are stored one after another, each dated after the lock: they commit in
            # (created_at, backtest_id) order, which WatchEvents reads after its cursor.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('backtest:' || $1))", backtest.portfolio_id)
            created_at = await conn.fetchval(
                _INSERT_BACKTEST,
                backtest_id, backtest.portfolio_id, backtest.configuration_version, backtest.requested_by,
                list(backtest.symbols), timestamps[0], timestamps[-1], len(timestamps), result.decisions,
                result.failed_decisions, result.first_failure, json.dumps(metrics_json(result)),
                json.dumps(backtest.settings_json), backtest.computation_time_ms,
            )  # fmt: skip
            await conn.copy_records_to_table(
                "backtest_points",
                columns=_POINT_COLUMNS,
                records=[
                    (
                        backtest_id,
                        created_at,
                        timestamps[i],
                        float(result.equity[i]),
                        float(result.cash[i]),
                        [float(w) for w in result.weights[i]],
                        bool(result.rebalanced[i]),
                        float(result.turnover[i]),
                        float(result.costs[i]),
                    )
                    for i in range(len(timestamps))
                ],
            )
            await conn.execute(
                "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{backtest.portfolio_id} {backtest.backtest_id}"
            )
        event_written("backtests", "BACKTEST_COMPLETED")
        return replace(backtest, created_at=created_at)


class InMemoryBacktestStore:
    """Backtests kept in a dict (tests and the in-memory server)."""

    def __init__(self) -> None:
        self.backtests: dict[str, StoredBacktest] = {}

    async def persist_backtest(self, backtest: StoredBacktest) -> StoredBacktest:
        """Keep it by id."""
        self.backtests[backtest.backtest_id] = backtest
        return backtest
