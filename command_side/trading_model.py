"""Commands and results of the trading application services: plain dataclasses, no protobuf.

:class:`command_side.allocations.AllocationService` and :class:`command_side.rebalancing.RebalancingService` take
these and the engine's own types (:mod:`services.trading`) and return them; the stores keep them. The gRPC
contract is converted to and from them in one place, :mod:`command_side.trading_adapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.trading import (
    AllocationRequest,
    DriftReport,
    ImpactModel,
    LotMethod,
    RecommendationStatus,
    Side,
)

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

    symbol: str
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

    symbol: str
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
    solver_status: str
    """How the solve ended: a ``services.trading.AllocationStatus`` value (OPTIMAL, TIME_LIMIT, GREEDY), kept as
    text so that a stored answer reads back exactly as it was written."""
    solver: str
    """Solver, upper case (``HIGHS``, ``GREEDY``)."""
    fallback_used: bool
    """Whether the greedy heuristic answered (the MILP failed or timed out)."""
    relaxation: str
    """Relaxation applied to make the bands feasible: a ``services.trading.BandRelaxation`` value (NONE ...)."""
    relaxation_detail: str
    """The relaxation, in words."""
    weight_sum: float = 0.0
    """Σ of the request's target weights (within 1e-3 of 1; 0 in answers stored before it was recorded)."""
    weights_renormalised: bool = False
    """Whether the weights were divided by ``weight_sum`` (stratopt strategies; PYPFOPT ones keep them as given)."""
    lp_objective: float = 0.0
    """PyPortfolioOpt's ``lp_portfolio`` objective at the allocation: Σ|target value − final value| + unused ($)."""


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


# --- holdings and policies --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionLot:
    """One tax lot of a held position, as given (the engine's ``TaxLot`` takes only its acquisition date)."""

    lot_id: str
    """Lot identifier, unique within the position."""
    shares: float
    """Shares in the lot."""
    cost_basis: float
    """Cost basis per share ($)."""
    acquired: datetime | None
    """Acquisition time (UTC); None when unknown."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """A held position: shares, tax lots and, when given with a request, a price."""

    symbol: str
    """Ticker."""
    shares: float
    """Shares held (≥ 0)."""
    price: float | None = None
    """Price per share ($) given with the position; None when none (stored positions have none)."""
    lots: tuple[PositionLot, ...] = ()
    """Tax lots; empty = no lot accounting."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenOrder:
    """An order of the outbox not yet done (NEW, SENT or PARTIALLY_FILLED): what it has still to trade."""

    order_id: str
    symbol: str
    side: str
    """BUY or SELL."""
    remaining: float
    """Shares still to trade (shares − filled)."""
    filled: float
    """Shares filled so far."""
    reference_price: float
    """The price it was sized at ($)."""
    created_at: datetime
    lots: tuple[tuple[str, float], ...] = ()
    """A rebalance SELL's lots to relieve, ``(lot_id, shares)`` for the whole order (migration 0022)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpsertHoldings:
    """Replace a portfolio's holdings snapshot (UpsertHoldings)."""

    portfolio_id: str
    positions: tuple[Position, ...]
    cash: float
    """Cash held ($)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldingsStored:
    """The answer to :class:`UpsertHoldings`."""

    portfolio_id: str
    positions: int
    """How many positions were stored."""
    updated_at: datetime
    """When the snapshot was stored (the store's clock)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Band:
    """Per-symbol drift band; None = no band of that kind."""

    absolute: float | None = None
    """Absolute band (weight fraction)."""
    relative: float | None = None
    """Relative band (fraction of the target weight)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalancePolicy:
    """A portfolio's rebalance policy; None = the documented default (see ``rebalancing.resolved_policy``)."""

    drift_threshold: float | None = None
    bands: Mapping[str, Band] = field(default_factory=dict)
    min_trade_value: float = 0.0
    max_turnover: float | None = None
    """None: no cap."""
    commission_per_trade: float = 0.0
    commission_per_share: float = 0.0
    impact_model: ImpactModel | None = None
    impact_coefficient: float | None = None
    lot_method: LotMethod | None = None
    prefer_losses: bool = False
    short_term_tax_rate: float | None = None
    long_term_tax_rate: float | None = None
    long_term_after_days: int | None = None
    """None: long term after the lot's first anniversary."""
    wash_sale_window_days: int | None = None
    approval_limit: float | None = None
    approval_ttl: timedelta | None = None
    max_participation: float | None = None
    """Largest share of a symbol's average daily volume one trade may take; None: no cap."""
    max_cost_bps: float | None = None
    """Largest estimated cost of a recommendation (bp of its trade value) before it is held; None: no limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpsertPolicy:
    """Replace a portfolio's rebalance policy (UpsertRebalancePolicy)."""

    portfolio_id: str
    policy: RebalancePolicy
    updated_by: str = ""
    """The authenticated principal storing it (never a request field)."""


# --- drift and recommendations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckDrift:
    """Drift of the stored holdings from a target (CheckDrift)."""

    portfolio_id: str
    target_weights: Mapping[str, float] = field(default_factory=dict)
    """Target weights by symbol; empty: the portfolio's latest optimization."""
    prices: Mapping[str, float] = field(default_factory=dict)
    """Prices by symbol ($) instead of the stored ones."""
    threshold: float | None = None
    """Portfolio drift threshold; None: the policy's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftCheck:
    """The answer to :class:`CheckDrift`."""

    report: DriftReport
    """The engine's report, by symbol."""
    target_event_id: str
    """The optimization event whose weights were the target; '' for a given target."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketQuote:
    """Liquidity and risk of one symbol for the cost model."""

    adv: float
    """Average daily volume (shares)."""
    daily_volatility: float
    """Daily volatility (fraction)."""
    spread_bps: float
    """Bid-ask spread (basis points)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateRebalance:
    """Generate and store a rebalance recommendation (GenerateRebalance)."""

    portfolio_id: str
    request_id: str = ""
    """Idempotency key, unique per portfolio; '' for none."""
    request_hash: str = ""
    """Fingerprint of the request, compared on a repeated ``request_id`` (the adapter's
    ``generate_rebalance_fingerprint``)."""
    target_weights: Mapping[str, float] = field(default_factory=dict)
    prices: Mapping[str, float] = field(default_factory=dict)
    market: Mapping[str, MarketQuote] = field(default_factory=dict)
    as_of: datetime | None = None
    """Trade date; None: now."""
    created_by: str = ""
    """The authenticated principal generating it (recorded as the CREATED event's actor); never a request
    field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LotSold:
    """The part of one tax lot a sell consumes, as recommended."""

    lot_id: str
    shares: float
    cost_basis: float
    """Cost basis per share ($)."""
    gain: float
    """Realised gain ($, losses negative)."""
    long_term: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendedTrade:
    """One order of a recommendation."""

    symbol: str
    side: Side
    shares: float
    price: float
    value: float
    commission: float
    spread_cost: float
    impact_cost: float
    total_cost: float
    lots: tuple[LotSold, ...] = ()
    """Lots sold (sells with lot accounting)."""
    short_term_gain: float = 0.0
    long_term_gain: float = 0.0
    wash_sale: bool = False
    participation_capped: bool = False
    """Whether the policy's participation cap cut this trade."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LossHarvest:
    """A lot at a loss that could be sold to harvest it."""

    symbol: str
    lot_id: str
    shares: float
    unrealized_loss: float
    """Unrealised loss ($, positive)."""
    wash_sale_risk: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceRecommendation:
    """A rebalance recommendation: the trade list, its totals and where it stands in the approval workflow."""

    portfolio_id: str
    trades: tuple[RecommendedTrade, ...] = ()
    total_trade_value: float = 0.0
    total_cost: float = 0.0
    turnover: float = 0.0
    drift_before: float = 0.0
    drift_after: float = 0.0
    short_term_gain: float = 0.0
    long_term_gain: float = 0.0
    estimated_tax: float = 0.0
    harvest_candidates: tuple[LossHarvest, ...] = ()
    approval_limit: float = 0.0
    recommendation_id: str = ""
    """'' until stored."""
    status: RecommendationStatus | None = None
    """None until stored."""
    created_at: datetime | None = None
    expires_at: datetime | None = None
    """Expiry of a pending recommendation; None otherwise."""
    decided_by: str = ""
    decided_at: datetime | None = None
    reason: str = ""
    hold_reason: str = ""
    """Why it waits for approval although within the approval limit (e.g. its cost); '' when it does not."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratedRebalance:
    """The answer to :class:`GenerateRebalance`."""

    recommendation: RebalanceRecommendation
    replayed: bool = False
    """Whether it is the stored recommendation of a repeated ``request_id``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Approve or reject a pending recommendation (ApproveRebalance, RejectRebalance)."""

    recommendation_id: str
    """UUID text."""
    approver: str
    """The authenticated principal deciding (never a request field)."""
    reason: str = ""
