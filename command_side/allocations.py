"""Integer-share allocation over gRPC: validation, the MILP in a solver worker, the cache and the event.

AllocateShares
--------------
1. The request is checked where the engine cannot see the proto (empty or duplicate symbols, holdings' shares
   that are not finite whole numbers ≥ 0, holdings without a price, the strategy, ``cache_ttl``), turned into a
   ``services.trading.AllocationRequest`` (unset ``allowed_deviation`` = 0.10, ``lot_size`` 0 = 1, relaxation
   allowed) and hashed by ``allocation_cache_key``, which validates the rest; the engine's field paths
   (``targets[i].name``) are translated to the proto's (``targets[i].symbol``).
2. Unless ``bypass_cache``, an unexpired cache entry of that key is answered as stored, with ``cached`` true,
   its ``expires_at``, and its lines put in this request's order.
3. Otherwise the MILP runs in a solver worker with the call's deadline less ``STORAGE_RESERVE_S`` (the engine
   stops ``RETURN_RESERVE_S`` earlier still, so its greedy answer comes back in time; no deadline:
   ``DEFAULT_TIME_LIMIT_S``). Lines come back in the request's order of the targets, holdings sold in full in
   the request's order of the holdings.
4. A result proven optimal (``solver_status`` OPTIMAL) is cached for ``cache_ttl`` (unset: 1 hour; 0: not
   cached); one cut short by the time limit or answered by the greedy fallback is not (a call with more time
   may do better), and is returned with ``expires_at`` unset, like an uncached one. The stored response is the
   one returned by the computing call (``cached`` false).
5. With a ``portfolio_id`` every answer, computed or cached, is recorded as a ``SHARES_ALLOCATED`` event in
   ``rebalance_events`` (a computed one in the transaction of its cache row).

The cache key hashes the allocation problem only (not ``portfolio_id``, ``cache_ttl`` or ``bypass_cache``), so
portfolios asking the same question share an entry.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import timedelta
from typing import Final

from command_side.allocation_cache import AllocationCache
from command_side.field_paths import ALLOCATION, proto_field_paths
from command_side.workers import SolverPool
from services.errors import DeadlineExceededError, InvalidInputError, NotFoundError
from services.trading import (
    DEFAULT_ALLOWED_DEVIATION,
    AllocationRequest,
    AllocationResult,
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    Holding,
    allocation_cache_key,
)
from stratopt.v1 import trading_service_pb2 as trading_pb

DEFAULT_CACHE_TTL: Final = timedelta(hours=1)
"""Lifetime of a cache entry when ``cache_ttl`` is unset."""
MAX_CACHE_TTL: Final = timedelta(days=366)
"""Longest accepted ``cache_ttl``."""
DEFAULT_TIME_LIMIT_S: Final = 30.0
"""Time limit of the solve (seconds) when the call has no deadline."""
STORAGE_RESERVE_S: Final = 0.05
"""Part of the caller's deadline (seconds) kept for storing the result after the solve."""
RETURN_RESERVE_S: Final = 0.05
"""How much earlier (seconds) than the wait for the worker the engine stops, so its answer arrives in time."""
MAX_SHARES: Final = 2**53
"""Largest accepted share count of a holding (exact in a double)."""

_STRATEGIES: Final[dict[trading_pb.AllocationStrategy.ValueType, AllocationStrategy]] = {
    trading_pb.ALLOCATION_STRATEGY_UNSPECIFIED: AllocationStrategy.MINIMIZE_LEFTOVER,
    trading_pb.ALLOCATION_STRATEGY_MINIMIZE_LEFTOVER: AllocationStrategy.MINIMIZE_LEFTOVER,
    trading_pb.ALLOCATION_STRATEGY_MAXIMIZE_SHARES: AllocationStrategy.MAXIMIZE_SHARES,
    trading_pb.ALLOCATION_STRATEGY_MOMENTUM_WEIGHTED: AllocationStrategy.MOMENTUM_WEIGHTED,
}
_PROTO_STRATEGY: Final = {strategy: value for value, strategy in _STRATEGIES.items() if value}
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

    async def allocate(
        self, request: trading_pb.AllocateSharesRequest, *, time_remaining_s: float | None
    ) -> trading_pb.AllocateSharesResponse:
        """Allocate whole shares to the target weights, from the cache when an unexpired entry exists.

        Parameters
        ----------
        request : stratopt.v1.AllocateSharesRequest
            Holdings (whole shares, with prices), targets, extra cash, strategy, fees and the cache options.
        time_remaining_s : float or None
            Seconds left before the caller's deadline; None when the call has none.

        Returns
        -------
        stratopt.v1.AllocateSharesResponse
            Lines in the request's order of the targets, holdings sold in full, metrics, the cache key, whether
            it came from the cache and, when cached, its expiry.

        Raises
        ------
        InvalidInputError
            Naming the field: ``targets`` (none, weights not summing to 1 within 1e-6), ``targets[i].symbol``
            (empty, duplicate), ``targets[i].target_weight``, ``.price``, ``.allowed_deviation``,
            ``.momentum_score`` (missing for MOMENTUM_WEIGHTED), ``holdings[i].symbol`` (empty, duplicate),
            ``holdings[i].shares`` (negative, fractional, not finite), ``holdings[i].price`` (missing, not
            positive, not the target's price), ``extra_cash`` (negative; or a zero budget),
            ``commission_per_trade``, ``fee_per_share``, ``strategy``, ``cache_ttl`` (negative, invalid, longer
            than ``MAX_CACHE_TTL``).
        InfeasibleError
            No allocation fits even after the relaxations (the fees of the forced sales exceed the budget).
        DeadlineExceededError
            The deadline leaves no time to solve, or the worker did not answer in time.
        UnavailableError
            The database cannot be reached, or a solver worker died.
        """
        loop = asyncio.get_running_loop()
        deadline = None if time_remaining_s is None else loop.time() + time_remaining_s
        engine_request = engine_request_of(request)
        ttl = cache_ttl_of(request)
        with proto_field_paths(ALLOCATION):
            cache_key = allocation_cache_key(engine_request)
        if not request.bypass_cache:
            hit = await self._cache.find(cache_key)
            if hit is not None:
                response = in_request_order(hit.response, request)
                if request.portfolio_id:
                    await self._cache.record(response, portfolio_id=request.portfolio_id)
                return response
        # The worker gets what is left of the deadline now, minus a reserve for storing the result.
        wait = None if deadline is None else deadline - loop.time() - STORAGE_RESERVE_S
        limit = DEFAULT_TIME_LIMIT_S if wait is None else wait - RETURN_RESERVE_S
        if limit <= 0.0:
            raise DeadlineExceededError("the call's deadline leaves no time to allocate")
        with proto_field_paths(ALLOCATION):
            result = await self._solver_pool.allocate(replace(engine_request, time_limit_s=limit), timeout_s=wait)
        response = response_of(request, result, cache_key)
        cacheable = ttl is not None and result.solver_status is AllocationStatus.OPTIMAL
        return await self._cache.save(
            response,
            request=normalised_request(request),
            portfolio_id=request.portfolio_id,
            ttl=ttl if cacheable else None,
        )

    async def get_cached(self, cache_key: str) -> trading_pb.GetCachedAllocationResponse:
        """The unexpired cached allocation of ``cache_key``.

        Returns
        -------
        stratopt.v1.GetCachedAllocationResponse
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
        return trading_pb.GetCachedAllocationResponse(allocation=hit.response)

    async def clear_cache(self, cache_key: str) -> trading_pb.ClearAllocationCacheResponse:
        """Delete the entry of ``cache_key``, or every entry when it is empty (expired entries included).

        Returns
        -------
        stratopt.v1.ClearAllocationCacheResponse
            How many entries were deleted (0 for an unknown key).

        Raises
        ------
        UnavailableError
            The database cannot be reached.
        """
        return trading_pb.ClearAllocationCacheResponse(removed=await self._cache.clear(cache_key))


# --- proto → engine ---------------------------------------------------------------------------------------------


def engine_request_of(request: trading_pb.AllocateSharesRequest) -> AllocationRequest:
    """The engine's problem for an AllocateShares request (targets and holdings in the request's order).

    Checks what the engine cannot see (see ``AllocationService.allocate``); the engine checks the rest when the
    request is hashed or solved. No time limit is set.

    Raises
    ------
    InvalidInputError
        ``targets[i].symbol``, ``holdings[i].symbol`` (empty or duplicate), ``holdings[i].shares`` (not a finite
        whole number in [0, 2^53]), ``holdings[i].price`` (unset) or ``strategy`` (unknown).
    """
    strategy = _STRATEGIES.get(request.strategy)
    if strategy is None:
        raise InvalidInputError.for_field("strategy", f"unknown AllocationStrategy value {request.strategy}")
    targets = []
    seen: dict[str, int] = {}
    for i, target in enumerate(request.targets):
        field = f"targets[{i}]"
        _check_symbol(target.symbol, field, seen, i)
        targets.append(
            AllocationTarget(
                name=target.symbol,
                target_weight=target.target_weight,
                price=target.price,
                allowed_deviation=(
                    target.allowed_deviation if target.HasField("allowed_deviation") else DEFAULT_ALLOWED_DEVIATION
                ),
                lot_size=target.lot_size or 1,
                momentum_score=target.momentum_score if target.HasField("momentum_score") else None,
            )
        )
    holdings = []
    seen = {}
    for i, position in enumerate(request.holdings):
        field = f"holdings[{i}]"
        _check_symbol(position.symbol, field, seen, i)
        shares = position.shares
        if not math.isfinite(shares):
            raise InvalidInputError.for_field(f"{field}.shares", f"must be finite, got {shares}")
        if shares < 0:
            raise InvalidInputError.for_field(f"{field}.shares", f"must be non-negative, got {shares:g}")
        if shares != math.floor(shares):
            raise InvalidInputError.for_field(f"{field}.shares", f"must be a whole number of shares, got {shares!r}")
        if shares > MAX_SHARES:
            raise InvalidInputError.for_field(f"{field}.shares", f"must be at most 2^53, got {shares:g}")
        if not position.HasField("price"):
            raise InvalidInputError.for_field(f"{field}.price", "is required by AllocateShares")
        holdings.append(Holding(position.symbol, int(shares), position.price))
    return AllocationRequest(
        targets=tuple(targets),
        holdings=tuple(holdings),
        extra_cash=request.extra_cash,
        strategy=strategy,
        commission_per_trade=request.commission_per_trade,
        fee_per_share=request.fee_per_share,
    )


def _check_symbol(symbol: str, field: str, seen: dict[str, int], index: int) -> None:
    """Raise when ``symbol`` is empty or already in ``seen``; else record it at ``index``."""
    kind = field.split("[", 1)[0]
    if not symbol:
        raise InvalidInputError.for_field(f"{field}.symbol", "must not be empty")
    if symbol in seen:
        raise InvalidInputError.for_field(f"{field}.symbol", f"duplicates {kind}[{seen[symbol]}].symbol")
    seen[symbol] = index


def cache_ttl_of(request: trading_pb.AllocateSharesRequest) -> timedelta | None:
    """Lifetime of the cache entry: ``cache_ttl``, 1 hour when unset; None when zero (do not cache).

    Raises
    ------
    InvalidInputError
        ``cache_ttl`` is negative, not a valid Duration (nanos outside ±999,999,999 or of the other sign than
        seconds) or longer than ``MAX_CACHE_TTL``.
    """
    if not request.HasField("cache_ttl"):
        return DEFAULT_CACHE_TTL
    seconds, nanos = request.cache_ttl.seconds, request.cache_ttl.nanos
    if abs(nanos) > 999_999_999 or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidInputError.for_field("cache_ttl", f"is not a valid Duration (seconds {seconds}, nanos {nanos})")
    if seconds < 0 or nanos < 0:
        raise InvalidInputError.for_field("cache_ttl", "must not be negative")
    if seconds > MAX_CACHE_TTL.total_seconds():
        raise InvalidInputError.for_field("cache_ttl", f"must be at most {MAX_CACHE_TTL.days} days")
    if seconds == 0 and nanos == 0:
        return None
    return timedelta(seconds=seconds, microseconds=nanos / 1000)


def normalised_request(request: trading_pb.AllocateSharesRequest) -> trading_pb.AllocateSharesRequest:
    """The allocation problem of a (validated) request as stored with its cache entry.

    Targets and holdings sorted by symbol, defaults written out (allowed deviation 0.10, lot size 1, the
    strategy), momentum scores only for MOMENTUM_WEIGHTED; tax lots and the call options (``portfolio_id``,
    ``cache_ttl``, ``bypass_cache``) left out. Weights are kept as given (the cache key hashes them divided by
    their sum).
    """
    strategy = _STRATEGIES[request.strategy]
    momentum = strategy is AllocationStrategy.MOMENTUM_WEIGHTED
    normal = trading_pb.AllocateSharesRequest(
        extra_cash=request.extra_cash,
        strategy=_PROTO_STRATEGY[strategy],
        commission_per_trade=request.commission_per_trade,
        fee_per_share=request.fee_per_share,
    )
    for target in sorted(request.targets, key=lambda t: t.symbol):
        added = normal.targets.add(
            symbol=target.symbol,
            target_weight=target.target_weight,
            allowed_deviation=(
                target.allowed_deviation if target.HasField("allowed_deviation") else DEFAULT_ALLOWED_DEVIATION
            ),
            price=target.price,
            lot_size=target.lot_size or 1,
        )
        if momentum:
            added.momentum_score = target.momentum_score
    for position in sorted(request.holdings, key=lambda p: p.symbol):
        normal.holdings.add(symbol=position.symbol, shares=position.shares, price=position.price)
    return normal


def in_request_order(
    response: trading_pb.AllocateSharesResponse, request: trading_pb.AllocateSharesRequest
) -> trading_pb.AllocateSharesResponse:
    """A cached response with its lines and sold holdings in the order of ``request`` (same key, other order).

    Requests with one cache key have the same symbols, so only the order can differ; ``response`` is returned as
    it is should the symbols not match.
    """
    lines = {line.symbol: line for line in response.lines}
    sold = {holding.symbol: holding for holding in response.sold_in_full}
    order = [target.symbol for target in request.targets]
    sold_order = [position.symbol for position in request.holdings if position.symbol in sold]
    if sorted(order) != sorted(lines) or len(sold_order) != len(sold):
        return response
    ordered = trading_pb.AllocateSharesResponse()
    ordered.CopyFrom(response)
    del ordered.lines[:]
    ordered.lines.extend(lines[symbol] for symbol in order)
    del ordered.sold_in_full[:]
    ordered.sold_in_full.extend(sold[symbol] for symbol in sold_order)
    return ordered


# --- engine → proto ---------------------------------------------------------------------------------------------


def response_of(
    request: trading_pb.AllocateSharesRequest, result: AllocationResult, cache_key: str
) -> trading_pb.AllocateSharesResponse:
    """The AllocateShares response of an engine result: lines in the request's order, ``cached`` false."""
    response = trading_pb.AllocateSharesResponse(cache_key=cache_key, cached=False)
    lines = {line.name: line for line in result.lines}
    for target in request.targets:
        line = lines[target.symbol]
        response.lines.add(
            symbol=line.name,
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
    sold = {holding.name: holding for holding in result.sold_in_full}
    for position in request.holdings:
        if position.symbol in sold:
            holding = sold[position.symbol]
            response.sold_in_full.add(
                symbol=holding.name,
                shares=holding.shares,
                price=holding.price,
                proceeds=holding.proceeds,
                trade_cost=holding.trade_cost,
            )
    metrics = response.metrics
    metrics.budget = result.budget
    metrics.budget_used = result.budget_used
    metrics.unused_budget = result.unused_budget
    metrics.unused_fraction = result.unused_fraction
    metrics.fees_total = result.fees_total
    metrics.solve_time_ms = result.solve_time_ms
    metrics.solver_status = result.solver_status.value
    metrics.solver = _SOLVERS.get(result.solver, result.solver.upper())
    metrics.fallback_used = result.fallback_used
    metrics.relaxation = result.relaxation.value
    metrics.relaxation_detail = result.relaxation_detail
    return response
