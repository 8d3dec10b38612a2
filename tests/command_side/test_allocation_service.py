"""AllocationService against the in-memory cache (a settable clock), the MILP run in this process: no database.

A budget of 1,000 split evenly between a 100 and a 50 price spends exactly: 5 and 10 shares.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2

from command_side.allocation_cache import InMemoryAllocationCache
from command_side.allocations import AllocationService
from services.errors import NotFoundError
from services.trading import AllocationRequest, AllocationResult, allocate
from stratopt.v1 import trading_service_pb2 as trading_pb


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

    async def allocate(self, request: AllocationRequest, *, timeout_s: float | None) -> AllocationResult:
        self.solves += 1
        return allocate(request)


def allocation_request(
    portfolio_id: str = "", reverse: bool = False, **fields: object
) -> trading_pb.AllocateSharesRequest:
    targets = [
        trading_pb.TargetPosition(symbol="AAA", target_weight=0.5, price=100.0),
        trading_pb.TargetPosition(symbol="BBB", target_weight=0.5, price=50.0),
    ]
    return trading_pb.AllocateSharesRequest(
        portfolio_id=portfolio_id, targets=targets[::-1] if reverse else targets, extra_cash=1_000.0, **fields
    )


def setup() -> tuple[AllocationService, InMemoryAllocationCache, InProcessAllocator, Clock]:
    clock, allocator = Clock(), InProcessAllocator()
    cache = InMemoryAllocationCache(clock=clock)
    return AllocationService(cache, allocator), cache, allocator, clock  # InProcessAllocator: SolverPool's interface


def test_an_optimal_allocation_is_cached_and_every_answer_recorded_for_the_portfolio() -> None:
    allocations, cache, allocator, clock = setup()

    async def scenario() -> tuple[trading_pb.AllocateSharesResponse, trading_pb.AllocateSharesResponse]:
        first = await allocations.allocate(allocation_request("pf"), time_remaining_s=None)
        again = await allocations.allocate(allocation_request("pf", reverse=True), time_remaining_s=None)
        return first, again

    first, again = asyncio.run(scenario())
    assert [(line.symbol, line.final_shares) for line in first.lines] == [("AAA", 5), ("BBB", 10)]
    assert first.metrics.solver_status == "OPTIMAL"
    assert not first.cached
    assert first.expires_at.ToDatetime(tzinfo=UTC) == clock.now + timedelta(hours=1)  # the default TTL
    assert again.cached and again.cache_key == first.cache_key
    assert [line.symbol for line in again.lines] == ["BBB", "AAA"]  # the order of the asking request
    assert allocator.solves == 1
    assert [event.payload["cached"] for event in cache.events("pf")] == [False, True]


def test_an_expired_entry_is_computed_again() -> None:
    allocations, _, allocator, clock = setup()
    ttl = duration_pb2.Duration(seconds=60)
    asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None))
    clock.now += timedelta(seconds=59)
    assert asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None)).cached
    clock.now += timedelta(seconds=1)
    fresh = asyncio.run(allocations.allocate(allocation_request(cache_ttl=ttl), time_remaining_s=None))
    assert not fresh.cached and allocator.solves == 2
    assert fresh.expires_at.ToDatetime(tzinfo=UTC) == clock.now + timedelta(seconds=60)


def test_a_zero_ttl_caches_nothing() -> None:
    allocations, cache, allocator, _ = setup()
    no_cache = allocation_request(cache_ttl=duration_pb2.Duration(seconds=0))
    first = asyncio.run(allocations.allocate(no_cache, time_remaining_s=None))
    assert not first.HasField("expires_at")
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
    assert stored.allocation.cached
    assert asyncio.run(allocations.clear_cache(first.cache_key)).removed == 1
    assert asyncio.run(allocations.clear_cache(first.cache_key)).removed == 0
    with pytest.raises(NotFoundError):
        asyncio.run(allocations.get_cached(first.cache_key))
