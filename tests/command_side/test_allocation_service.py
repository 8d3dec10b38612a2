"""AllocationService against the in-memory cache (a settable clock), the MILP run in this process: no database.

A budget of 1,000 split evenly between a 100 and a 50 price spends exactly: 5 and 10 shares.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from command_side.allocation_cache import InMemoryAllocationCache
from command_side.allocations import MAX_CACHE_TTL, AllocationService
from command_side.trading_model import AllocateShares, Allocation
from services.errors import InvalidInputError, NotFoundError
from services.trading import (
    AllocationRequest,
    AllocationResult,
    AllocationStatus,
    AllocationTarget,
    Holding,
    allocate,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class InProcessAllocator:
    """``SolverPool.allocate`` run in this process; counts the solves."""

    workers = 1

    def __init__(self) -> None:
        self.solves = 0

    def admitted(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # no queue bound in process

    async def allocate(self, request: AllocationRequest, *, timeout_s: float | None) -> AllocationResult:
        self.solves += 1
        return allocate(request)


def allocation_request(portfolio_id: str = "", reverse: bool = False, **options: Any) -> AllocateShares:
    targets = (
        AllocationTarget(symbol="AAA", target_weight=0.5, price=100.0),
        AllocationTarget(symbol="BBB", target_weight=0.5, price=50.0),
    )
    problem = AllocationRequest(targets=targets[::-1] if reverse else targets, extra_cash=1_000.0)
    return AllocateShares(problem=problem, portfolio_id=portfolio_id, **options)


def setup() -> tuple[AllocationService, InMemoryAllocationCache, InProcessAllocator, Clock]:
    clock, allocator = Clock(), InProcessAllocator()
    cache = InMemoryAllocationCache(clock=clock)
    return AllocationService(cache, allocator), cache, allocator, clock  # InProcessAllocator: SolverPool's interface


def test_an_optimal_allocation_is_cached_and_every_answer_recorded_for_the_portfolio() -> None:
    allocations, cache, allocator, clock = setup()

    async def scenario() -> tuple[Allocation, Allocation]:
        first = await allocations.allocate(allocation_request("pf"), time_remaining_s=None)
        again = await allocations.allocate(allocation_request("pf", reverse=True), time_remaining_s=None)
        return first, again

    first, again = asyncio.run(scenario())
    assert [(line.symbol, line.final_shares) for line in first.lines] == [("AAA", 5), ("BBB", 10)]
    assert first.metrics.solver_status == AllocationStatus.OPTIMAL
    assert not first.cached
    assert first.expires_at == clock.now + timedelta(hours=1)  # the default TTL
    assert again.cached and again.cache_key == first.cache_key
    assert [line.symbol for line in again.lines] == ["BBB", "AAA"]  # the order of the asking command
    assert allocator.solves == 1
    assert [event.payload["cached"] for event in cache.events("pf")] == [False, True]


def test_an_expired_entry_is_computed_again() -> None:
    allocations, _, allocator, clock = setup()
    ttl = timedelta(seconds=60)
    asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None))
    clock.now += timedelta(seconds=59)
    assert asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None)).cached
    clock.now += timedelta(seconds=1)
    fresh = asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None))
    assert not fresh.cached and allocator.solves == 2
    assert fresh.expires_at == clock.now + timedelta(seconds=60)


def test_a_zero_ttl_caches_nothing() -> None:
    allocations, cache, allocator, _ = setup()
    no_cache = allocation_request(cache_ttl=timedelta(0))
    first = asyncio.run(allocations.allocate(no_cache, time_remaining_s=None))
    assert first.expires_at is None
    with pytest.raises(NotFoundError):
        asyncio.run(allocations.get_cached(first.cache_key))
    asyncio.run(allocations.allocate(no_cache, time_remaining_s=None))
    assert allocator.solves == 2
    assert cache.events() == ()  # no portfolio, nothing recorded


def test_bypass_cache_computes_again_and_clear_removes_entries() -> None:
    allocations, _, allocator, _ = setup()
    first = asyncio.run(allocations.allocate(allocation_request(), time_remaining_s=None))
    asyncio.run(allocations.allocate(allocation_request(bypass_cache=True), time_remaining_s=None))
    assert allocator.solves == 2
    stored = asyncio.run(allocations.get_cached(first.cache_key))
    assert stored.cached
    assert asyncio.run(allocations.clear_cache(first.cache_key)) == 1
    assert asyncio.run(allocations.clear_cache(first.cache_key)) == 0
    with pytest.raises(NotFoundError):
        asyncio.run(allocations.get_cached(first.cache_key))


def test_holdings_not_among_the_targets_are_sold_in_full_in_the_commands_order() -> None:
    allocations, _, _, _ = setup()
    command = allocation_request()
    held = (Holding("ZZZ", 2, 100.0), Holding("YYY", 4, 50.0))
    command = AllocateShares(problem=replace(command.problem, holdings=held, extra_cash=600.0))
    result = asyncio.run(allocations.allocate(command, time_remaining_s=None))
    assert [(sold.symbol, sold.shares, sold.proceeds) for sold in result.sold_in_full] == [
        ("ZZZ", 2, 200.0),
        ("YYY", 4, 200.0),
    ]
    assert result.metrics.budget == 1_000.0
    assert [(line.symbol, line.final_shares) for line in result.lines] == [("AAA", 5), ("BBB", 10)]


@pytest.mark.parametrize(
    ("ttl", "message"),
    [(timedelta(seconds=-1), "must not be negative"), (MAX_CACHE_TTL + timedelta(seconds=1), "at most 366 days")],
)
def test_a_cache_ttl_out_of_range_is_refused_before_anything_is_solved(ttl: timedelta, message: str) -> None:
    allocations, _, allocator, _ = setup()
    with pytest.raises(InvalidInputError, match=message) as raised:
        asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None))
    assert [v.field for v in raised.value.field_violations] == ["cache_ttl"]
    assert allocator.solves == 0


def test_engine_errors_name_the_engines_parameters() -> None:
    allocations, _, _, _ = setup()
    command = allocation_request()
    bad = replace(command.problem.targets[1], price=-1.0)
    command = AllocateShares(problem=replace(command.problem, targets=(command.problem.targets[0], bad)))
    with pytest.raises(InvalidInputError) as raised:
        asyncio.run(allocations.allocate(command, time_remaining_s=None))
    assert [v.field for v in raised.value.field_violations] == ["targets[1].price"]
