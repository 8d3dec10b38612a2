"""Commands and results of the trading application services: plain dataclasses, no protobuf.

:class:`command_side.allocations.AllocationService` and :class:`command_side.rebalancing.RebalancingService` take
these and the engine's own types (:mod:`services.trading`) and return them; the stores keep them. The gRPC
contract is converted to and from them in one place, :mod:`command_side.trading_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.trading import AllocationRequest, AllocationStatus, BandRelaxation

# --- allocation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocateShares:
    """Allocate whole shares to target weights (AllocateShares)."""

    problem: AllocationRequest
    """The allocation problem, targets and holdings in the caller's order (no time limit: the service sets it)."""
    portfolio_id: str = ""
    """Portfolio to record the ``SHARES_ALLOCATED`` event for; '' records none."""
    cache_ttl: timedelta | None = None
    """Lifetime of the cache entry; None: ``DEFAULT_CACHE_TTL``; zero: not cached."""
    bypass_cache: bool = False
    """Compute even when an unexpired cache entry exists."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocatedLine:
    """The allocation of one target (the stored and returned part of the engine's ``AllocationLine``)."""

    name: str
    """Symbol."""
    price: float
    """Price per share ($)."""
    current_shares: int
    """Shares held before."""
    buy_shares: int
    """Shares bought."""
    sell_shares: int
    """Shares sold."""
    final_shares: int
    """Shares held after."""
    trade_cost: float
    """Commission and fees ($)."""
    final_value: float
    """Value held after ($)."""
    target_weight: float
    """Target weight (fraction)."""
    actual_weight: float
    """Weight after (fraction)."""
    weight_deviation: float
    """``actual_weight - target_weight``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SoldInFull:
    """A holding not among the targets, sold in full (the engine's ``SoldHolding``)."""

    name: str
    """Symbol."""
    shares: int
    """Shares sold (all of them)."""
    price: float
    """Price per share ($)."""
    proceeds: float
    """Proceeds before fees ($)."""
    trade_cost: float
    """Fees of the sale ($)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationMetrics:
    """Budget, fees and how the solve ended."""

    budget: float
    """Proceeds of the holdings plus extra cash ($)."""
    budget_used: float
    """Invested value plus fees ($)."""
    unused_budget: float
    """``budget - budget_used`` ($)."""
    unused_fraction: float
    """``unused_budget / budget``."""
    fees_total: float
    """Commissions and fees ($)."""
    solve_time_ms: float
    """Solve time (milliseconds)."""
    solver_status: AllocationStatus
    """OPTIMAL, TIME_LIMIT or GREEDY."""
    solver: str
    """Solver, upper case (``HIGHS``, ``GREEDY``)."""
    fallback_used: bool
    """Whether the greedy heuristic answered (the MILP failed or timed out)."""
    relaxation: BandRelaxation
    """Relaxation applied to make the bands feasible."""
    relaxation_detail: str
    """The relaxation, in words."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """An AllocateShares answer: computed now or from the cache."""

    cache_key: str
    """Hash of the normalised problem (``services.trading.allocation_cache_key``)."""
    lines: tuple[AllocatedLine, ...]
    """One per target, in the order of the asking command's targets."""
    sold_in_full: tuple[SoldInFull, ...]
    """Holdings not among the targets, sold in full, in the order of the asking command's holdings."""
    metrics: AllocationMetrics
    """Budget, fees and solver."""
    cached: bool = False
    """Whether it was answered from the cache."""
    expires_at: datetime | None = None
    """Expiry of its cache entry; None when it is not cached."""
