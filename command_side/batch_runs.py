"""Batches of Optimize commands (BatchOptimize, BatchOptimizeStream): a chunk per worker call and per transaction.

A batch (the unary call's items, or the items of a stream as they arrive) is cut into chunks of at most
:data:`BATCH_CHUNK` items in request order. Each chunk goes through three steps:

1. **Replay.** One store read finds the chunk's keys already stored (``OptimizationStore.find_results``): their
   items answer with the stored run (or INVALID_ARGUMENT on ``request_id`` for a key used for another request);
   invalid items answer with their error.
2. **Solve.** The rest go to one worker call (``SolverPool.run_batch``: ``services.engine.run_optimization_batch``,
   the batched active set where it applies); an item's engine error is its answer.
3. **Store.** The solved runs are stored in one transaction (``OptimizationStore.persist_runs``): each run's
   configuration version, result, event, read model and notification commit together, and one bad item must not
   sink the others, so a chunk whose bulk write fails is stored again one run per transaction (a repeated key
   then replays the run that holds it). Chunks are stored in request order (a chunk waits for the chunk before
   it), so each portfolio's history and latest read model follow the request order.

A chunk that fails otherwise (a bug, a stored run this build cannot read) answers its unanswered items with that
error (INTERNAL) and the other chunks go on: a batch never ends without an answer for each item, and no chunk keeps
writing after the call has failed.

:class:`BatchRunner` runs the steps; :meth:`BatchRunner.run` answers a whole batch, :meth:`BatchRunner.stream`
answers a stream with a bounded window of items in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from command_side.deadlines import commit_by
from command_side.field_paths import OPTIMIZATION, proto_field_paths
from command_side.optimization_commands import (
    EncodedRunResult,
    Inputs,
    InvalidItem,
    MarketDataWindow,
    OptimizeCommand,
    RunResult,
    SerializedOptimize,
)
from command_side.optimization_store import EncodedRun, OptimizationStore, PendingRun, RunStamp
from command_side.result_records import ResultRecord
from command_side.workers import SolverPool
from services.engine import OptimizationJob, OptimizationOutcome
from services.errors import (
    DeadlineExceededError,
    IntegrityError,
    InvalidInputError,
    OperationalError,
    StratoptError,
)
from services.types import Moments, ReturnHistory

log = logging.getLogger(__name__)

BATCH_CHUNK = 256
"""Most items of a batch solved in one worker call and stored in one transaction.

The batched solve costs less per problem the more problems one call holds (1,000 max-Sharpe problems, N 12..50,
one core: 0.74 ms a problem in calls of 64, 0.37 ms in calls of 256, 0.31 ms in one call of 1,000;
``benchmarks/batch.py``), while smaller chunks let solves and stores overlap sooner: a batch is cut into chunks of
about ``len / concurrency`` items, within ``MIN_CHUNK`` .. ``BATCH_CHUNK``."""
MIN_CHUNK = 64
"""Fewest items of a chunk of a batch (unless the batch is smaller)."""
STREAM_WINDOW = 1024
"""Most items of a BatchOptimizeStream read and not yet answered (a client may ask for fewer)."""

_RUN_INHERITS = ("enabled", "lookback_periods", "market_symbol", "recompute")

Outcome = RunResult | EncodedRunResult | BaseException
"""An item's answer: its stored (or replayed) run, or the error that ended it."""


def run_inherits(command: OptimizeCommand) -> tuple[str, ...]:
    """Fields a run of ``command`` keeps from its portfolio's current configuration version.

    The stored-data window of a configuration (``lookback_periods``, ``market_symbol``) is only set by runs on
    stored data (or upserts): a run on inline inputs keeps it, as it keeps ``enabled`` and ``recompute``.
    """
    return ("enabled", "recompute") if isinstance(command.inputs, MarketDataWindow) else _RUN_INHERITS


Item = OptimizeCommand | InvalidItem | SerializedOptimize
"""A batch item: a validated command, the error of a request that did not validate, or a request with inline
inputs still in wire form (parsed and checked in the worker that solves it)."""


@dataclass(frozen=True, slots=True)
class BatchPorts:
    """What :class:`BatchRunner` uses of ``OptimizationService``."""

    store: OptimizationStore
    """The write model."""
    pool: SolverPool
    """The solver workers."""
    job_inputs: Callable[[tuple[str, ...], Inputs], Awaitable[ReturnHistory | Moments]]
    """``(symbols, inputs) -> engine inputs`` (reads stored prices for a market-data window)."""
    solve_limit: Callable[[float | None], float | None]
    """``deadline -> seconds`` the solver gets (``DeadlineExceededError`` when none are left)."""
    store_one: Callable[[OptimizeCommand, OptimizationOutcome, float | None], Awaitable[RunResult]]
    """Stores one run in its own transaction and replays on a key race (``OptimizationService._store_run``)."""
    record_storage: Callable[[float], None]
    """Records how long a store took (the deadline reserve, ``command_side.deadlines.StorageTimer``)."""
    record_of: Callable[[OptimizeCommand, OptimizationOutcome], ResultRecord]
    """The stored record of a solved run (``command_side.application.run_record``)."""


class BatchRunner:
    """Runs batches of Optimize commands chunk by chunk (module docstring).

    Parameters
    ----------
    ports : BatchPorts
        The store, the solver pool and the service's per-run steps.
    concurrency : int
        Chunks in flight at once (replaying, solving or storing).
    """

    def __init__(self, ports: BatchPorts, *, concurrency: int) -> None:
        self._ports = ports
        self._concurrency = max(1, concurrency)

    async def run(self, items: Sequence[Item], deadline: float | None) -> list[Outcome]:
        """Answer every item of a batch, in request order.

        Parameters
        ----------
        items : sequence of OptimizeCommand or InvalidItem
            The batch in request order.
        deadline : float or None
            ``time.monotonic()`` seconds by which the batch must be answered (None = no limit).

        Returns
        -------
        list
            One :data:`Outcome` per item, in request order.
        """
        gate = asyncio.Semaphore(self._concurrency)
        order = _StoreOrder()
        outcomes: list[Outcome | None] = [None] * len(items)
        size = min(BATCH_CHUNK, max(MIN_CHUNK, -(-len(items) // self._concurrency)))
        starts = range(0, len(items), size)
        turns = {start: order.ticket() for start in starts}

        async def one(start: int) -> None:
            chunk = list(range(start, min(start + size, len(items))))
            turn = turns[start]
            async with gate:
                answers = await self._chunk([items[i] for i in chunk], deadline, turn)
            for i, answer in zip(chunk, answers, strict=True):
                outcomes[i] = answer

        await asyncio.gather(*(one(start) for start in starts))
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    async def stream(
        self, messages: AsyncIterable[Sequence[Item]], deadline: float | None, *, window: int
    ) -> AsyncIterator[list[tuple[int, Outcome]]]:
        """Answer the items of a stream of messages as their chunks finish, with at most ``window`` in flight.

        Items are numbered from 0 in the order they arrive. No message is read while ``window`` items or more are
        read and not yet answered (the caller resumes this generator after it sent the answers it yielded), so
        the items held are at most ``window`` plus one message. A chunk is formed when a place is free: of the
        items read by then, at most :data:`BATCH_CHUNK`.

        Parameters
        ----------
        messages : async iterable of sequences of items
            The stream's messages; an error raised by it ends the stream (chunks in flight are cancelled: their
            transactions roll back, so only whole runs are stored).
        deadline : float or None
            ``time.monotonic()`` seconds by which the stream must end (None = no limit).
        window : int
            Most items read and not yet answered (at least 1).

        Yields
        ------
        list of (int, Outcome)
            The answers of one chunk: ``(item number, outcome)``.
        """
        window = max(1, window)
        pending: deque[tuple[int, Item]] = deque()
        answers: asyncio.Queue[list[tuple[int, Outcome]] | BaseException | None] = asyncio.Queue()
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()
        unanswered = 0
        reading_done = False
        order = _StoreOrder()

        async def read() -> None:
            nonlocal unanswered, reading_done
            count = 0
            try:
                async for message in messages:
                    for item in message:
                        pending.append((count, item))
                        count += 1
                    unanswered += len(message)
                    arrived.set()
                    if unanswered >= window:
                        room.clear()
                    await room.wait()
            finally:
                reading_done = True
                arrived.set()

        async def dispatch() -> None:
            gate = asyncio.Semaphore(self._concurrency)
            chunks: set[asyncio.Task[None]] = set()
            try:
                while True:
                    await gate.acquire()
                    while not pending and not reading_done:
                        arrived.clear()
                        await arrived.wait()
                    if not pending:
                        gate.release()
                        break
                    chunk = [pending.popleft() for _ in range(min(BATCH_CHUNK, len(pending)))]
                    task = asyncio.create_task(solve(chunk, order.ticket(), gate))
                    chunks.add(task)
                    task.add_done_callback(chunks.discard)
                if chunks:
                    await asyncio.gather(*chunks)
            finally:
                for task in chunks:
                    task.cancel()
                await asyncio.gather(*chunks, return_exceptions=True)  # their transactions rolled back

        async def solve(chunk: list[tuple[int, Item]], turn: _Turn, gate: asyncio.Semaphore) -> None:
            try:
                outcomes = await self._chunk([item for _, item in chunk], deadline, turn)
                await answers.put([(number, outcome) for (number, _), outcome in zip(chunk, outcomes, strict=True)])
            except Exception as exc:  # never expected (_chunk answers its errors): end the stream with it, not OK
                await answers.put(exc)
            finally:
                gate.release()

        reader = asyncio.create_task(read())
        dispatcher = asyncio.create_task(dispatch())

        def finished(task: asyncio.Task[None]) -> None:
            error = None if task.cancelled() else task.exception()
            answers.put_nowait(error)

        reader.add_done_callback(lambda task: None if task.cancelled() or task.exception() is None else finished(task))
        dispatcher.add_done_callback(finished)
        try:
            while True:
                got = await answers.get()
                if got is None:
                    if dispatcher.done():
                        break
                    continue
                if isinstance(got, BaseException):
                    raise got
                yield got
                unanswered -= len(got)
                if unanswered < window:
                    room.set()
            await reader  # its error, if any, was raised above
        finally:
            for task in (reader, dispatcher):
                task.cancel()
            for task in (reader, dispatcher):
                with contextlib.suppress(BaseException):
                    await task

    async def _chunk(self, items: Sequence[Item], deadline: float | None, turn: _Turn) -> list[Outcome]:
        """Replay, solve and store one chunk (module docstring); the answers in the items' order."""
        chunk = _Chunk(items)
        try:
            await self._replay_or_prepare(chunk, deadline)
            await self._solve(chunk, deadline)
            async with turn:
                await self._store(chunk, deadline)
        except Exception as exc:  # a bug, or a stored run this build cannot read (module docstring)
            log.exception("batch chunk of %d items failed", len(items))
            for k, outcome in enumerate(chunk.outcomes):
                if outcome is None:
                    chunk.outcomes[k] = exc
        finally:
            turn.done()
        assert all(outcome is not None for outcome in chunk.outcomes)
        return [outcome for outcome in chunk.outcomes if outcome is not None]

    async def _replay_or_prepare(self, chunk: _Chunk, deadline: float | None) -> None:
        """Answer invalid and replayed items; the engine jobs (or serialised requests) of the others."""
        items, outcomes = chunk.items, chunk.outcomes
        keys = [item.request_id for item in items if not isinstance(item, InvalidItem) and item.request_id]
        try:
            stored = await self._ports.store.find_results(keys) if keys else {}
        except Exception as exc:  # the store unreachable, or a stored run unreadable: every keyed item fails with it
            if not isinstance(exc, StratoptError):
                log.exception("reading the stored runs of a batch chunk failed")
            stored = {}
            for k, item in enumerate(items):
                if not isinstance(item, InvalidItem) and item.request_id:
                    outcomes[k] = exc
        loads: dict[int, asyncio.Future[ReturnHistory | Moments]] = {}
        for k, item in enumerate(items):
            if outcomes[k] is not None:
                continue
            if isinstance(item, InvalidItem):
                outcomes[k] = item.error
                continue
            found = stored.get(item.request_id) if item.request_id else None
            if found is not None:
                if found.request_hash != item.request_hash:
                    outcomes[k] = InvalidInputError.for_field(
                        "request_id", f"'{item.request_id}' was already used for a different request; use a new key"
                    )
                else:
                    outcomes[k] = RunResult(result=found.result, replayed=True)
                continue
            if isinstance(item, SerializedOptimize):
                chunk.payloads[k] = item
            elif isinstance(item.inputs, MarketDataWindow):
                loads[k] = asyncio.ensure_future(self._ports.job_inputs(item.problem.symbols, item.inputs))
        for k, item in enumerate(items):
            if outcomes[k] is not None or not isinstance(item, OptimizeCommand):
                continue
            try:
                inputs = await loads[k] if k in loads else item.inputs
                assert isinstance(inputs, ReturnHistory | Moments)
                chunk.jobs[k] = OptimizationJob(
                    problem=item.problem,
                    inputs=inputs,
                    settings=item.settings,
                    method=item.method,
                    time_limit_s=self._ports.solve_limit(deadline),
                )
                chunk.commands[k] = item
            except StratoptError as exc:
                outcomes[k] = exc
            except Exception as exc:  # one broken item must not sink the batch
                log.exception("batch item failed")
                outcomes[k] = exc

    async def _solve(self, chunk: _Chunk, deadline: float | None) -> None:
        """The chunk's jobs in one worker call, its serialised requests parsed and solved in another.

        A failed call (deadline, lost worker) fails its items.
        """
        calls = []
        if chunk.jobs:
            calls.append(self._solve_jobs(chunk, deadline))
        if chunk.payloads:
            calls.append(self._parse_and_solve(chunk, deadline))
        await asyncio.gather(*calls)

    async def _solve_jobs(self, chunk: _Chunk, deadline: float | None) -> None:
        order = sorted(chunk.jobs)
        results: list[OptimizationOutcome | BaseException]
        try:
            results = list(
                await self._ports.pool.run_batch(
                    [chunk.jobs[k] for k in order], timeout_s=self._ports.solve_limit(deadline)
                )
            )
        except Exception as exc:
            results = [exc] * len(order)
        for k, result in zip(order, results, strict=True):
            if isinstance(result, BaseException):
                try:  # the engine names fields by its own paths: the request's, as the unary call answers
                    with proto_field_paths(OPTIMIZATION, symbols=chunk.commands[k].problem.symbols):
                        raise result
                except Exception as mapped:  # the item's answer
                    result = mapped
            chunk.solved[k] = result

    async def _parse_and_solve(self, chunk: _Chunk, deadline: float | None) -> None:
        order = sorted(chunk.payloads)
        requests = [chunk.payloads[k] for k in order]
        encode = requests[0].encode
        assert encode is not None  # a batch's serialised items are encoded where they are solved
        try:
            limit = self._ports.solve_limit(deadline)
            answers = await self._ports.pool.parse_and_run_batch(
                requests[0].parse,
                encode,
                [r.payload for r in requests],
                time_limit_s=limit,
                timeout_s=limit,
                workloads=[r.workload for r in requests],
            )
        except Exception as exc:
            for k in order:
                chunk.outcomes[k] = exc
            return
        for k, answer in zip(order, answers, strict=True):
            if isinstance(answer, EncodedRun):
                chunk.encoded[k] = answer
            else:
                chunk.outcomes[k] = answer

    async def _store(self, chunk: _Chunk, deadline: float | None) -> None:
        """Store the solved runs in one transaction; when that fails, one per transaction (module docstring)."""
        outcomes = chunk.outcomes
        for k, result in chunk.solved.items():
            if isinstance(result, BaseException):
                outcomes[k] = result
        runs = sorted(
            [k for k, result in chunk.solved.items() if not isinstance(result, BaseException)] + list(chunk.encoded)
        )
        if not runs:
            return
        pending: list[PendingRun | EncodedRun] = []
        for k in runs:
            if k in chunk.encoded:
                pending.append(chunk.encoded[k])
                continue
            command, result = chunk.commands[k], chunk.solved[k]
            assert not isinstance(result, BaseException)
            pending.append(
                PendingRun(
                    configuration=command.configuration,
                    result=self._ports.record_of(command, result),
                    request_hash=command.request_hash,
                    run_inputs={"current_weights": command.current_weights, "kind": command.inputs_kind},
                    inherit=run_inherits(command),
                )
            )
        started = time.monotonic()
        try:
            stored = await self._ports.store.persist_runs(pending, commit_by=commit_by(deadline))
        except (DeadlineExceededError, OperationalError) as exc:  # the same for every run: no use trying each
            for k in runs:
                outcomes[k] = exc
            return
        except Exception as exc:  # a key stored meanwhile, a refused row: store them one by one
            log.info("a bulk write of %d runs failed (%s): storing them one by one", len(runs), exc)
            await self._store_each(chunk, runs, deadline)
            return
        self._ports.record_storage((time.monotonic() - started) / len(runs))
        for k, run, answer in zip(runs, pending, stored, strict=True):
            outcomes[k] = _answer(run, answer)

    async def _store_each(self, chunk: _Chunk, runs: list[int], deadline: float | None) -> None:
        for k in runs:
            try:
                if k in chunk.encoded:
                    chunk.outcomes[k] = await self._store_encoded(chunk.encoded[k], deadline)
                    continue
                result = chunk.solved[k]
                assert not isinstance(result, BaseException)
                chunk.outcomes[k] = await self._ports.store_one(chunk.commands[k], result, deadline)
            except StratoptError as exc:
                chunk.outcomes[k] = exc
            except Exception as exc:  # one broken item must not sink the batch
                log.exception("batch item failed")
                chunk.outcomes[k] = exc

    async def _store_encoded(self, run: EncodedRun, deadline: float | None) -> Outcome:
        """Store one encoded run in its own transaction; replay the run that holds its key when one does."""
        store = self._ports.store
        try:
            (stamp,) = await store.persist_runs([run], commit_by=commit_by(deadline))
        except IntegrityError:
            found = await store.find_result(run.request_id) if run.request_id else None
            if found is None:
                raise
            if found.request_hash != run.request_hash:
                raise InvalidInputError.for_field(
                    "request_id", f"'{run.request_id}' was already used for a different request; use a new key"
                ) from None
            return RunResult(result=found.result, replayed=True)
        return _answer(run, stamp)


def _answer(run: PendingRun | EncodedRun, stored: ResultRecord | RunStamp) -> RunResult | EncodedRunResult:
    """An item's answer once its run is stored (``OptimizationStore.persist_runs``)."""
    if isinstance(run, EncodedRun):
        assert isinstance(stored, RunStamp)
        return EncodedRunResult(
            response=run.response, timestamp_ns=stored.timestamp_ns, configuration_version=stored.configuration_version
        )
    assert isinstance(stored, ResultRecord)
    return RunResult(result=stored)


class _Chunk:
    """One chunk's items and what each step learns of them, by position in the chunk."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.outcomes: list[Outcome | None] = [None] * len(items)
        self.jobs: dict[int, OptimizationJob] = {}
        """Engine jobs of the parsed items to solve."""
        self.payloads: dict[int, SerializedOptimize] = {}
        """Requests to parse and solve in a worker."""
        self.commands: dict[int, OptimizeCommand] = {}
        """The command of each item to solve (a worker's parse for a serialised one)."""
        self.solved: dict[int, OptimizationOutcome | BaseException] = {}
        """The solver's answer of each solved item."""
        self.encoded: dict[int, EncodedRun] = {}
        """The runs a worker parsed, solved and encoded for storage."""


class _Turn:
    """A chunk's turn to store: entered once the chunk before it is done (stored, failed or cancelled)."""

    def __init__(self, before: asyncio.Future[None] | None) -> None:
        self._before = before
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> None:
        if self._before is not None:
            await asyncio.shield(self._before)

    async def __aexit__(self, *exc: object) -> None:
        self.done()

    def done(self) -> None:
        """Mark the chunk done: the next one stores once every chunk before it is done too (idempotent)."""
        if self.finished.done():
            return
        if self._before is None or self._before.done():
            self.finished.set_result(None)
        else:
            self._before.add_done_callback(lambda _: None if self.finished.done() else self.finished.set_result(None))


class _StoreOrder:
    """Hands out :class:`_Turn` s in chunk order."""

    def __init__(self) -> None:
        self._last: asyncio.Future[None] | None = None

    def ticket(self) -> _Turn:
        """The next chunk's turn (after every turn handed out before)."""
        turn = _Turn(self._last)
        self._last = turn.finished
        return turn
