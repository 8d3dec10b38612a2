"""BatchOptimizeStream through a real gRPC server on PostgreSQL: every item answered once, backpressure, cancel.

The backpressure of the window is checked on ``BatchRunner.stream`` itself (the in-memory store and the engine in
process): over gRPC the transport's buffers hide how many messages the server has read.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from command_side.application import OptimizationService
from command_side.batch_runs import BATCH_CHUNK
from command_side.optimization_commands import BatchCommand, InvalidItem, OptimizeCommand, RunResult
from command_side.optimization_store import InMemoryOptimizationStore
from services.errors import InvalidInputError
from stratopt.v1 import command_service_pb2 as cmd_pb
from tests.command_side.test_application import InProcessSolver, command_for, min_volatility
from tests.command_side.test_batch_optimize import history, moments_request, stored_rows

pytestmark = pytest.mark.integration


def messages(requests: list[cmd_pb.OptimizeRequest], sizes: list[int], window: int) -> Iterator[Any]:
    start, k = 0, 0
    while start < len(requests):
        size = sizes[k % len(sizes)]
        message = cmd_pb.BatchOptimizeStreamRequest(requests=requests[start : start + size])
        if k == 0:
            message.max_in_flight = window
        yield message
        start, k = start + size, k + 1


def test_the_stream_answers_every_item_once_in_request_order_per_portfolio(
    commands: Any, queries: Any, db: Any
) -> None:
    tag = f"stream-{uuid.uuid4().hex[:8]}"
    portfolios = [f"{tag}-{p}" for p in range(3)]
    requests = [moments_request(portfolios[k % 3], f"{tag}-r{k}", seed=200 + k) for k in range(70)]
    requests[33].constraints.max_weight = -1.0  # invalid: its own error
    received = list(commands.BatchOptimizeStream(messages(requests, [1, 3, 7, 2], window=5), timeout=120))
    results = [result for message in received for result in message.results]
    assert sorted(r.index for r in results) == list(range(70))  # each item exactly once
    # No message is read while 5 items are in flight: at most 4 + a message of 7 are answered together.
    assert all(len(message.results) <= 4 + 7 for message in received)
    by_index = {r.index: r for r in results}
    assert [by_index[k].request_id for k in range(70)] == [r.request_id for r in requests]
    assert by_index[33].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert sum(1 for r in results if r.WhichOneof("outcome") == "response") == 69
    for j, p in enumerate(portfolios):
        in_order = [by_index[k].response.optimization_metadata.event_id for k in range(j, 70, 3)]
        assert history(queries, p) == [e for e in in_order if e]
    counts = stored_rows(db, tag)
    assert (counts["results"], counts["events"], counts["latest"]) == (69, 69, 3)
    assert counts["latest not the last event"] == 0
    # The same answers as BatchOptimize (its replays of the stored runs: same request ids).
    batch = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=requests), timeout=120)
    for k, result in enumerate(batch.results):
        if k != 33:
            assert result.response.optimization_metadata.replayed
            assert result.response.optimal_weights == by_index[k].response.optimal_weights


def test_cancelling_the_stream_leaves_only_whole_runs(commands: Any, db: Any) -> None:
    tag = f"cancel-{uuid.uuid4().hex[:8]}"
    requests = [moments_request(f"{tag}-{k % 5}", f"{tag}-r{k}", seed=300 + k) for k in range(400)]
    call = commands.BatchOptimizeStream(messages(requests, [10], window=BATCH_CHUNK), timeout=120)
    answered = 0
    for message in call:
        answered += len(message.results)
        if answered >= BATCH_CHUNK:
            call.cancel()
            break
    with pytest.raises(grpc.RpcError) as error:
        for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]
    time.sleep(2.0)  # let the server wind down
    counts = stored_rows(db, tag)
    time.sleep(1.0)
    assert stored_rows(db, tag) == counts  # nothing goes on after the cancel
    assert answered <= counts["results"] < 400  # the answered runs and at most the chunks in flight
    assert counts["results"] == counts["events"]
    assert counts["results without their event"] == counts["events without their result"] == 0
    assert counts["latest not the last event"] == 0


def test_the_window_holds_back_reading_until_answers_are_taken() -> None:
    """At most ``window`` items plus one message are read while no answer is taken."""
    window, size = 6, 4
    pulled: list[int] = []

    async def source() -> AsyncIterator[list[OptimizeCommand | InvalidItem]]:
        for m in range(10):
            pulled.append(m)
            yield [min_volatility(f"window-{m % 3}", f"w-{m}-{k}") for k in range(size)]
        yield [InvalidItem(portfolio_id="window-x", error=InvalidInputError.for_field("objective", "bad"))]

    async def main() -> list[tuple[int, RunResult | BaseException]]:
        solver: Any = InProcessSolver()  # SolverPool's interface, the engine in process
        service = OptimizationService(InMemoryOptimizationStore(), solver, command_for=command_for)
        answers: list[tuple[int, RunResult | BaseException]] = []
        stream = service.batch_optimize_stream(source(), window=window, time_remaining_s=None)
        answers.extend(await anext(stream))
        await asyncio.sleep(0.2)  # the stream is not resumed: nothing more may be read
        read_while_held = len(pulled) * size
        assert read_while_held <= window + size, pulled
        async for more in stream:
            answers.extend(more)
        return answers

    answers = asyncio.run(main())
    assert sorted(n for n, _ in answers) == list(range(41))
    assert sum(isinstance(o, RunResult) for _, o in answers) == 40
    assert isinstance(dict(answers)[40], InvalidInputError)


class _UnreadableRun(InMemoryOptimizationStore):
    """``find_results`` fails with a plain ``ValueError`` on its second call.

    As when a stored run cannot be read by this build (``result_records.SchemaError``: a newer replica wrote it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def find_results(self, request_ids: Any) -> Any:
        self.reads += 1
        if self.reads == 2:
            raise ValueError("schema_version 99 of a stored result is not readable")
        return await super().find_results(request_ids)


def test_a_chunk_that_fails_unexpectedly_answers_its_items_with_the_error_and_the_others_go_on() -> None:
    """A non-domain error in one chunk (unary and stream) answers that chunk's items and nothing else.

    The call never ends early or silently: every item is answered once, the other chunks' runs are stored, and
    nothing is stored after the answer.
    """

    async def main() -> None:
        solver: Any = InProcessSolver()
        count = 300  # chunks of 64..256: several
        for streamed in (False, True):
            store = _UnreadableRun()
            service = OptimizationService(store, solver, command_for=command_for, batch_concurrency=2)
            tag = uuid.uuid4().hex[:6]
            items = [min_volatility(f"unreadable-{tag}-{k % 5}", f"{tag}-{k}") for k in range(count)]
            answers: dict[int, RunResult | BaseException] = {}
            if streamed:

                async def source(items: list[OptimizeCommand] = items) -> AsyncIterator[list[OptimizeCommand]]:
                    for start in range(0, count, 50):
                        yield items[start : start + 50]
                        await asyncio.sleep(0.01)

                async for chunk in service.batch_optimize_stream(source(), window=1024, time_remaining_s=None):
                    for number, outcome in chunk:
                        assert number not in answers
                        answers[number] = outcome  # type: ignore[assignment]
            else:
                result = await service.batch_optimize(BatchCommand(items=tuple(items)), time_remaining_s=None)
                answers = dict(enumerate(result.outcomes))  # type: ignore[arg-type]
            assert sorted(answers) == list(range(count)), streamed
            failed = [k for k, outcome in answers.items() if isinstance(outcome, ValueError)]
            stored = [k for k, outcome in answers.items() if isinstance(outcome, RunResult)]
            assert failed and stored and len(failed) + len(stored) == count, (streamed, len(failed))
            assert failed == list(range(failed[0], failed[-1] + 1))  # one chunk's items
            runs_then = len(store.runs())
            assert runs_then == len(stored)
            await asyncio.sleep(0.2)
            assert len(store.runs()) == runs_then  # nothing goes on writing after the answer

    asyncio.run(main())
