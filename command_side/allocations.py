"""Integer-share allocation: the cache, the MILP in a solver worker and the event, in domain terms.

AllocateShares
--------------
The command (:class:`command_side.trading_model.AllocateShares`) carries the engine's problem
(``services.trading.AllocationRequest``) with its targets and holdings in the caller's order;
:mod:`command_side.trading_adapter` builds it from the gRPC request, checking what the engine cannot see (empty or
duplicate symbols, holdings' shares that are not finite whole numbers ≥ 0, holdings without a price, the
strategy, a malformed ``cache_ttl``), and translates the engine's field paths (``targets[i].symbol``) to the
proto's (``targets[i].symbol``) around the call.

1. ``cache_ttl`` is checked (not negative, at most ``MAX_CACHE_TTL``) and the problem is hashed by
   ``allocation_cache_key``, which validates the rest.
2. Unless ``bypass_cache``, an unexpired cache entry of that key is answered as stored, with ``cached`` true,
   its ``expires_at``, and its lines put in this command's order.
3. Otherwise the MILP runs in a solver worker with the call's deadline less ``STORAGE_RESERVE_S`` (the engine
   stops ``RETURN_RESERVE_S`` earlier still, so its greedy answer comes back in time; no deadline:
   ``DEFAULT_TIME_LIMIT_S``). Lines come back in the command's order of the targets, holdings sold in full in
   the command's order of the holdings.
4. A result proven optimal (``solver_status`` OPTIMAL) is cached for ``cache_ttl`` (None: 1 hour; zero: not
   cached); one cut short by the time limit or answered by the greedy fallback is not (a call with more time
   may do better), and is returned with ``expires_at`` None, like an uncached one. The stored allocation is the
   one returned by the computing call (``cached`` false).
5. With a ``portfolio_id`` every answer, computed or cached, is recorded as a ``SHARES_ALLOCATED`` event in
   ``rebalance_events`` (a computed one in the transaction of its cache row).

The cache key hashes the allocation problem only (not ``portfolio_id``, ``cache_ttl`` or ``bypass_cache``), so
portfolios asking the same question share an entry.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Final

from command_side.allocation_cache import AllocationCache
from command_side.trading_model import AllocatedLine, AllocateShares, Allocation, AllocationMetrics, SoldInFull
from command_side.workers import SolverPool
from services.errors import DeadlineExceededError, InvalidInputError, NotFoundError
from services.trading import (
    AllocationRequest,
    AllocationResult,
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    Holding,
    allocation_cache_key,
)

DEFAULT_CACHE_TTL: Final = timedelta(hours=1)
"""Lifetime of a cache entry when ``cache_ttl`` is None."""
MAX_CACHE_TTL: Final = timedelta(days=366)
"""Longest accepted ``cache_ttl``."""
DEFAULT_TIME_LIMIT_S: Final = 30.0
"""Time limit of the solve (seconds) when the call has no deadline."""
STORAGE_RESERVE_S: Final = 0.05
"""Part of the caller's deadline (seconds) kept for storing the result after the solve."""
RETURN_RESERVE_S: Final = 0.05
"""How much earlier (seconds) than the wait for the worker the engine stops, so its answer arrives in time."""
_SOLVERS: Final = {"HiGHS": "HIGHS", "greedy": "GREEDY"}


class AllocationService:
    """AllocateShares, GetCachedAllocation and ClearAllocationCache (see the module docstring).

    Parameters
    ----------
    cache : AllocationCache
        Cached allocations and their events (``PostgresAllocationCache`` in the server).
    solver_pool : SolverPool
        Worker processes that run the MILP.
    """

    def __init__(self, cache: AllocationCache, solver_pool: SolverPool) -> None:
        self._cache = cache
        self._solver_pool = solver_pool

    async def allocate(self, command: AllocateShares, *, time_remaining_s: float | None) -> Allocation:
        """Allocate whole shares to the target weights, from the cache when an unexpired entry exists.

        Parameters
        ----------
        command : AllocateShares
            The problem (holdings in whole shares with prices, targets, extra cash, strategy, fees) and the
            cache options.
        time_remaining_s : float or None
            Seconds left before the caller's deadline; None when the call has none.

        Returns
        -------
        Allocation
            Lines in the command's order of the targets, holdings sold in full, metrics, the cache key, whether
            it came from the cache and, when cached, its expiry.

        Raises
        ------
        InvalidInputError
            Naming the engine's parameter (``targets``, ``targets[i].target_weight``, ``.price``,
            ``.allowed_deviation``, ``.momentum_score``, ``holdings[i].price``, ``extra_cash``,
            ``commission_per_trade``, ``fee_per_share``; see ``services.trading.allocation_cache_key``) or
            ``cache_ttl`` (negative, longer than ``MAX_CACHE_TTL``).
        InfeasibleError
            No allocation fits even after the relaxations (the fees of the forced sales exceed the budget).
        DeadlineExceededError
            The deadline leaves no time to solve, or the worker did not answer in time.
        UnavailableError
            The database cannot be reached, or a solver worker died.
        ResourceExhaustedError
            The solve queue is full (``SolverPool.admitted``); nothing is stored.
        """
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        problem = replace(command.problem, time_limit_s=None)
        ttl = cache_ttl_of(command.cache_ttl)
        cache_key = allocation_cache_key(problem)
        if not command.bypass_cache:
            hit = await self._cache.find(cache_key)
            if hit is not None:
                allocation = in_problem_order(hit.allocation, problem)
                if command.portfolio_id:
                    await self._cache.record(allocation, portfolio_id=command.portfolio_id)
                return allocation
        # The worker gets what is left of the deadline now, minus a reserve for storing the result.
        wait = None if deadline is None else deadline - loop.time() - STORAGE_RESERVE_S
        limit = DEFAULT_TIME_LIMIT_S if wait is None else wait - RETURN_RESERVE_S
        if limit <= 0.0:
            raise DeadlineExceededError("the call's deadline leaves no time to allocate")
        with self._solver_pool.admitted():
            result = await self._solver_pool.allocate(replace(problem, time_limit_s=limit), timeout_s=wait)
            allocation = allocation_of(problem, result, cache_key)
            cacheable = ttl is not None and result.solver_status is AllocationStatus.OPTIMAL
            return await self._cache.save(
                allocation,
                problem=normalised_problem(problem),
                portfolio_id=command.portfolio_id,
                ttl=ttl if cacheable else None,
            )

    async def get_cached(self, cache_key: str) -> Allocation:
        """The unexpired cached allocation of ``cache_key``.

        Returns
        -------
        Allocation
            The allocation as stored, with ``cached`` true and its ``expires_at``.

        Raises
        ------
        InvalidInputError
            ``cache_key`` is empty.
        NotFoundError
            No entry, or an expired one.
        UnavailableError
            The database cannot be reached.
        """
        if not cache_key:
            raise InvalidInputError.for_field("cache_key", "must not be empty")
        hit = await self._cache.find(cache_key)
        if hit is None:
            raise NotFoundError(f"no cached allocation with key '{cache_key}' (never stored, expired or cleared)")
        return hit.allocation

    async def clear_cache(self, cache_key: str) -> int:
        """Delete the entry of ``cache_key``, or every entry when it is empty (expired entries included).

        Returns
        -------
        int
            How many entries were deleted (0 for an unknown key).

        Raises
        ------
        UnavailableError
            The database cannot be reached.
        """
        return await self._cache.clear(cache_key)


def cache_ttl_of(cache_ttl: timedelta | None) -> timedelta | None:
    """Lifetime of the cache entry: ``cache_ttl``, ``DEFAULT_CACHE_TTL`` when None; None when zero (do not cache).

    Raises
    ------
    InvalidInputError
        ``cache_ttl`` is negative or longer than ``MAX_CACHE_TTL``.
    """
    if cache_ttl is None:
        return DEFAULT_CACHE_TTL
    if cache_ttl < timedelta(0):
        raise InvalidInputError.for_field("cache_ttl", "must not be negative")
    if cache_ttl - timedelta(microseconds=cache_ttl.microseconds) > MAX_CACHE_TTL:  # whole seconds compared
        raise InvalidInputError.for_field("cache_ttl", f"must be at most {MAX_CACHE_TTL.days} days")
    if cache_ttl == timedelta(0):
        return None
    return cache_ttl


def normalised_problem(problem: AllocationRequest) -> AllocationRequest:
    """The allocation problem as stored with its cache entry.

    Targets and holdings sorted by symbol, momentum scores only for MOMENTUM_WEIGHTED, no time limit. Weights are
    kept as given (the cache key hashes them divided by their sum, with the sum; for PYPFOPT_GREEDY, whose ties
    follow the request's order, the key hashes that order too).
    """
    momentum = problem.strategy is AllocationStrategy.MOMENTUM_WEIGHTED
    targets: list[AllocationTarget] = [
        replace(target, momentum_score=target.momentum_score if momentum else None)
        for target in sorted(problem.targets, key=lambda t: t.symbol)
    ]
    holdings: list[Holding] = sorted(problem.holdings, key=lambda h: h.symbol)
    return replace(problem, targets=tuple(targets), holdings=tuple(holdings), time_limit_s=None)


def in_problem_order(allocation: Allocation, problem: AllocationRequest) -> Allocation:
    """A cached allocation with its lines and sold holdings in the order of ``problem`` (same key, other order).

    Problems with one cache key have the same symbols, so only the order can differ; ``allocation`` is returned as
    it is should the symbols not match.
    """
    lines = {line.symbol: line for line in allocation.lines}
    sold = {holding.symbol: holding for holding in allocation.sold_in_full}
    order = [target.symbol for target in problem.targets]
    sold_order = [holding.symbol for holding in problem.holdings if holding.symbol in sold]
    if sorted(order) != sorted(lines) or len(sold_order) != len(sold):
        return allocation
    return replace(
        allocation,
        lines=tuple(lines[symbol] for symbol in order),
        sold_in_full=tuple(sold[symbol] for symbol in sold_order),
    )


def allocation_of(problem: AllocationRequest, result: AllocationResult, cache_key: str) -> Allocation:
    """The allocation of an engine result: lines in the problem's order, ``cached`` false, no expiry."""
    lines = {line.symbol: line for line in result.lines}
    sold = {holding.symbol: holding for holding in result.sold_in_full}
    return Allocation(
        cache_key=cache_key,
        lines=tuple(
            AllocatedLine(
                symbol=line.symbol,
                price=line.price,
                current_shares=line.current_shares,
                buy_shares=line.buy_shares,
                sell_shares=line.sell_shares,
                final_shares=line.final_shares,
                trade_cost=line.trade_cost,
                final_value=line.final_value,
                target_weight=line.target_weight,
                actual_weight=line.actual_weight,
                weight_deviation=line.weight_deviation,
            )
            for line in (lines[target.symbol] for target in problem.targets)
        ),
        sold_in_full=tuple(
            SoldInFull(
                symbol=sold_holding.symbol,
                shares=sold_holding.shares,
                price=sold_holding.price,
                proceeds=sold_holding.proceeds,
                trade_cost=sold_holding.trade_cost,
            )
            for sold_holding in (sold[holding.symbol] for holding in problem.holdings if holding.symbol in sold)
        ),
        metrics=AllocationMetrics(
            budget=result.budget,
            budget_used=result.budget_used,
            unused_budget=result.unused_budget,
            unused_fraction=result.unused_fraction,
            fees_total=result.fees_total,
            solve_time_ms=result.solve_time_ms,
            solver_status=result.solver_status.value,
            solver=_SOLVERS.get(result.solver, result.solver.upper()),
            fallback_used=result.fallback_used,
            relaxation=result.relaxation.value,
            relaxation_detail=result.relaxation_detail,
            weight_sum=result.weight_sum,
            weights_renormalised=result.weights_renormalised,
            lp_objective=result.lp_objective,
        ),
    )
