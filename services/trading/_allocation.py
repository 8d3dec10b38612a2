"""Integer-share allocation: from target weights and current holdings to whole-share trades, as a MILP.

The problem
-----------
Given current holdings (symbol, shares, price), N target strategies (symbol, target weight w_i, price p_i, allowed
deviation d_i, lot size L_i), extra cash and per-trade fees, find the final share counts x_i (trades are
x_i − c_i, c_i the shares held now) that invest the portfolio as well as the strategy asks.

- Budget. B = Σ over every holding of price · shares + extra cash: the whole portfolio is re-allocated. Holdings
  whose symbol is not a target are sold in full; held target symbols count at their price and may be kept, topped up
  or reduced. Holdings with zero shares are ignored.
- Fees. A trade of Δ_i = x_i − c_i shares costs ``commission_per_trade`` (a fixed amount, once per symbol whose
  share count changes) plus ``fee_per_share`` · |Δ_i|. Fees are paid from the budget: Σ p_i x_i + fees ≤ B
  (to max(1e-12 · B, $1e-6), the rounding of the sums). The fees of the forced sales of non-target holdings
  are fixed costs taken off the budget first.
- Bands. The final value of each symbol stays within its band. With ``DeviationMode.RELATIVE`` (the default)
  p_i x_i ∈ [max(0, w_i B (1 − d_i)), min(B, w_i B (1 + d_i))]: the allowed deviation d_i is *relative* to the
  target value w_i B (0.10: the target ± 10 % of itself, so a 5 % target may end between 4.5 % and 5.5 % of B).
  With ``DeviationMode.ABSOLUTE`` p_i x_i ∈ [max(0, (w_i − d_i) B), min(B, (w_i + d_i) B)]: d_i is in
  *percentage points of the portfolio*, as a fraction (0.02: a 5 % target may end between 3 % and 7 % of B).
  Bands are met to a relative 1e-9 of the share count.
- Weights. They must sum to 1 within ``WEIGHT_SUM_TOLERANCE`` (1e-3), so that PyPortfolioOpt's ``clean_weights()``
  output (rounded to 5 decimals, summing to e.g. 0.99998) is accepted; the PyPortfolioOpt strategies with short
  positions also take a sum of 0 (a market-neutral book: its long and short books are sized apart). The stratopt
  strategies *renormalise*: the weights are divided by their sum (``weight_sum`` and ``weights_renormalised`` of
  the result say so and by how much). The PyPortfolioOpt strategies use them as given, as PyPortfolioOpt does,
  so a sum below 1 leaves that part of the budget as cash; one exception: when long-only weights sum above 1 and
  ``greedy_portfolio``'s first round (the floor of each target) would cost more than the budget, where
  PyPortfolioOpt stops with "Unexpectedly insufficient funds", ``PYPFOPT_GREEDY`` (and ``PYPFOPT_LP``'s greedy
  fallback) divides them by their sum and says so (``weights_renormalised``), never spending past the budget.
- Lots. Final share counts are multiples of the lot size: x_i = L_i k_i, k_i a non-negative integer. A held
  position that is not a multiple of its lot size is traded onto one.

Objectives (``AllocationStrategy``), each a maximisation of Σ v_i k_i over the integer lot counts k:

- ``MINIMIZE_LEFTOVER`` (default): v_i = p_i L_i, i.e. maximise the invested value Σ p_i x_i, which is
  minimising the part of the budget not invested, B − Σ p_i x_i = unused cash + fees. (Minimising the unused
  cash alone would reward paying fees: churning a position turns cash into fees. With zero fees both agree.)
- ``MAXIMIZE_SHARES``: v_i = L_i (1 + p_i / (B + 1)): maximise the total number of shares Σ x_i, ties broken
  by the invested value (the tie-break term Σ p_i x_i / (B + 1) is below 1, one share).
- ``MOMENTUM_WEIGHTED``: v_i = (1 + z_i) p_i L_i with z_i = (s_i − min s) / (max s − min s) ∈ [0, 1] the
  min-max normalised momentum scores s (all 0 when the scores are equal): maximise Σ (1 + z_i) p_i x_i, i.e.
  minimise (B − Σ p_i x_i) − Σ z_i p_i x_i, the uninvested budget minus the momentum-weighted value. Every
  invested dollar is worth at least one uninvested dollar, so the budget is still spent; within the bands value
  tilts to the symbols with the strongest momentum (a dollar in the top symbol counts twice one in the bottom symbol).

PyPortfolioOpt's own methods (``pypfopt.discrete_allocation.DiscreteAllocation``, 1.6), for users who migrate
and must get exactly its answers. With B as ``total_portfolio_value``, the weights as given (negative = short),
no bands, no lots (lot size 1), no fees (both must be 0), holdings valued and traded at their prices:

- ``PYPFOPT_LP``: ``lp_portfolio``'s integer program, solved by HiGHS (``scipy.optimize.milp``) instead of
  cvxpy: minimise Σ u_i + r over integers x ≥ 0 with u_i ≥ |w_i T − p_i x_i| and leftover r = T − Σ p_i x_i ≥ 0.
- ``PYPFOPT_GREEDY``: ``greedy_portfolio``'s rounds exactly (weights sorted in descending order, ties in the
  request's order; round one buys ⌊w_i T / p_i⌋; round two buys one share at a time of the symbol whose weight
  of the invested value is furthest below its target, skipping up to 10 unaffordable ones, until the largest
  deficit is ≤ 0 or nothing is affordable). Unlike :func:`greedy_allocation` it stops once every symbol is at or
  above its weight of the *invested* value, so it may leave more cash.
- Shorts (either method): with a negative weight the targets split into longs (w ≥ 0) and shorts (−w), each
  divided by its own sum; the longs are allocated with T = B (plus the short proceeds B · short_ratio when
  ``reinvest``), the shorts as a long-only book with T = B · short_ratio (``short_ratio`` None: the sum of the
  negative weights' magnitudes; it must then be positive), and their final shares are negative. The leftover is
  the sum of the two books' leftovers.

The result's ``unused_budget`` is then PyPortfolioOpt's leftover, its ``lp_objective`` the value of
``lp_portfolio``'s objective at the answer (Σ over the books of Σ|w_i T − p_i x_i| + r; reported for every
strategy, with the bands' targets w_i B and the unused budget for the stratopt ones).

Solution method
---------------
1. Validation (``InvalidInputError`` naming the field, e.g. ``targets[2].price``) and normalisation: symbols
   sorted, weights divided by their sum (which must be 1 within 1e-3; the PyPortfolioOpt strategies keep them
   as given and go their own way from here).
2. Feasibility and relaxation, decided exactly in O(N) before any solve (the cheapest admissible share count of
   a symbol, fees included, is at one of its band ends or next to its current holding, since the cost is convex
   piecewise linear in k apart from the commission, which is zero only at k = c / L). In this order, stopping
   at the first step that makes the problem feasible (``BandRelaxation`` reports the last step applied):

   a. ``WIDENED_BANDS`` (per symbol): a band that contains no admissible share count (e.g. a 0.1 % target of a
      $1,000 stock) has its deviation doubled, d ← max(2 d, 1 %), until it does; at d ≥ 1 the band reaches 0,
      which is always admissible, so this ends. Other symbols keep their bands.
   b. ``WIDENED_BANDS`` (all symbols): while the cheapest admissible portfolio, fees included, costs more than the
      budget, every deviation is doubled the same way, until every deviation is ≥ 1 (every band reaches 0);
   c. ``FULL_BANDS``: every band becomes [0, B];
   d. ``LOT_SIZES_DROPPED``: every lot size becomes 1 (keeping every current holding is now admissible and
      free, so only the fees of the forced sales can still exceed the budget: ``InfeasibleError``).

   With ``allow_relaxation=False`` an infeasible problem raises ``InfeasibleError`` instead (``EMPTY_BAND`` per
   symbol, ``BUDGET``).
3. A heuristic answer: the greedy allocation of PyPortfolioOpt's ``DiscreteAllocation.greedy_portfolio``
   generalised to bands, lots and fees (start from the floor of each target, clipped into its band, then buy one
   lot at a time of the affordable symbol furthest below its target value while it stays in its band; see
   :func:`greedy_allocation`), improved by a local search: repeatedly the best single-lot purchase or one-lot
   swap (buy one lot of i, sell one of j) that raises the objective and fits the budget, found in O(N log N),
   for at most ``MAX_IMPROVEMENT_MOVES`` moves and never past the time limit.
4. If the heuristic is within ``gap_tolerance`` · B of the LP bound (the fractional knapsack without fees, an
   upper bound of the MILP), it is optimal within the tolerance and returned without a MILP solve (``solver``
   ``greedy``, ``solver_status`` ``OPTIMAL``).
5. Otherwise the MILP: integer lot counts k ∈ [k_lo, k_hi] (the band), and when there are fees, continuous
   buys b and sells s with L k − b + s = c, fees f Σ (b + s), and binaries t_i ≥ (b_i + s_i) / M_i for the
   commission; one budget row Σ p L k + f Σ (b + s) + C Σ t ≤ B − forced-sale fees. Solved by HiGHS through
   ``scipy.optimize.milp`` with ``mip_rel_gap`` set so that the absolute gap is at most ``gap_tolerance`` · B
   (dollars; for ``MAXIMIZE_SHARES`` that amount of the invested-value tie-break). The better of the MILP's
   answer and the heuristic's is returned. On a time-out without a better incumbent, a solver failure, or an
   answer that fails the exact post-check (budget, bands, lots recomputed from the share counts), the heuristic
   answer is returned with ``fallback_used`` and ``solver_status`` ``GREEDY``.

Trades and fees in the result are always recomputed from the final share counts, and the lines are sorted by
symbol, so that the answer does not depend on the order of the request (see :func:`allocation_cache_key`).
``time_limit_s`` bounds the whole call: the MILP gets what is left after the heuristic; with nothing left before
the start, ``DeadlineExceededError``.

Why one long module: validation, band relaxation, the greedy pass with local search, the LP bound and the HiGHS
MILP all work on one private ``_Problem``/``_Bands``/``_Costs`` representation of the request; apart, they would
need it as a public type.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from services.errors import DeadlineExceededError, InfeasibleError, InvalidInputError, PreconditionViolation
from services.trading._tax_lots import Holding
from services.types import FloatArray

IntArray = NDArray[np.int64]

DEFAULT_ALLOWED_DEVIATION: Final = 0.10
"""Allowed deviation of a target's value, relative to the target value (0.10: target ± 10 % of itself)."""
DEFAULT_GAP_TOLERANCE: Final = 1e-5
"""Default absolute optimality tolerance of the MILP as a fraction of the budget (1e-5: $1 at $100,000)."""
WEIGHT_SUM_TOLERANCE: Final = 1e-3
"""Largest accepted |Σ w − 1| of the target weights: PyPortfolioOpt's ``clean_weights()`` rounds to 5 decimals,
so its weights may sum to 0.99998 (or, over many symbols, further from 1)."""
PYPFOPT_GREEDY_SKIPS: Final = 10
"""Unaffordable symbols ``greedy_portfolio`` skips in a row before it stops (its ``counter == 10``)."""
DEVIATION_FLOOR: Final = 0.01
"""Smallest deviation a relaxation step widens to (a zero deviation becomes 1 %, then 2 %, ...)."""
BAND_TOLERANCE: Final = 1e-9
"""Relative slack of the band ends when they are converted to share counts."""
MONEY_TOLERANCE: Final = 1e-12
"""Relative slack of budget comparisons (the budget is met within max(1e-12 · B, $1e-6)), for the rounding of
floating-point sums of prices times shares."""
MAX_IMPROVEMENT_MOVES: Final = 200
"""Cap on the local-search moves after the greedy allocation."""
MAX_GREEDY_STEPS: Final = 10_000
"""Steps of the greedy allocation (plus 10 per symbol) before it spends the rest in one bulk pass."""

_SCHEMA_VERSION: Final = 2
"""Version of the canonical form hashed by :func:`allocation_cache_key`; bump when its semantics change (2: the
identifier key is ``symbol``, formerly ``name``)."""


class AllocationStrategy(StrEnum):
    """What the integer allocation maximises (see the module docstring for the exact objectives)."""

    MINIMIZE_LEFTOVER = "MINIMIZE_LEFTOVER"
    MAXIMIZE_SHARES = "MAXIMIZE_SHARES"
    MOMENTUM_WEIGHTED = "MOMENTUM_WEIGHTED"
    PYPFOPT_LP = "PYPFOPT_LP"
    """PyPortfolioOpt's ``DiscreteAllocation.lp_portfolio`` (minimise Σ|w_i B − p_i x_i| + leftover)."""
    PYPFOPT_GREEDY = "PYPFOPT_GREEDY"
    """PyPortfolioOpt's ``DiscreteAllocation.greedy_portfolio``, round for round."""


PYPFOPT_STRATEGIES: Final = frozenset({AllocationStrategy.PYPFOPT_LP, AllocationStrategy.PYPFOPT_GREEDY})
"""The strategies that reproduce PyPortfolioOpt (weights as given, shorts, no bands, lots or fees)."""


class DeviationMode(StrEnum):
    """What a target's ``allowed_deviation`` is measured against (see the module docstring's bands)."""

    RELATIVE = "RELATIVE"
    """Relative to the target value: band w B (1 ± d) (0.10: the target ± 10 % of itself)."""
    ABSOLUTE = "ABSOLUTE"
    """Percentage points of the portfolio, as a fraction: band (w ± d) B (0.02: ± 2 points of B)."""


class BandRelaxation(StrEnum):
    """The last relaxation step applied to make the bands feasible, in the order they are tried."""

    NONE = "NONE"
    WIDENED_BANDS = "WIDENED_BANDS"
    """Some or all deviations were doubled (repeatedly); see each line's ``allowed_deviation``."""
    FULL_BANDS = "FULL_BANDS"
    """Every band is [0, B]."""
    LOT_SIZES_DROPPED = "LOT_SIZES_DROPPED"
    """Every band is [0, B] and every lot size 1."""


class AllocationStatus(StrEnum):
    """How good the returned allocation is known to be."""

    OPTIMAL = "OPTIMAL"
    """Within ``gap_tolerance`` · B of the optimum (proven by HiGHS or by the LP bound)."""
    TIME_LIMIT = "TIME_LIMIT"
    """HiGHS's best solution at the time limit, better than the heuristic's; not proven optimal."""
    GREEDY = "GREEDY"
    """The greedy heuristic's answer (the fallback, or asked for with :func:`greedy_allocation`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationTarget:
    """A target strategy of the allocation.

    Attributes
    ----------
    symbol : str
        Unique among the targets.
    target_weight : float
        Target fraction of the budget (≥ 0, or any sign for the PyPortfolioOpt strategies, negative = short;
        the weights sum to 1 within 1e-3).
    price : float
        Price per share (> 0), at which the symbol is valued and traded.
    allowed_deviation : float
        Allowed deviation of the final value (≥ 0): relative to the target value w·B (0.10: ± 10 % of it), or in
        percentage points of B as a fraction with ``DeviationMode.ABSOLUTE``. Not used by the PyPortfolioOpt
        strategies.
    lot_size : int
        Final share counts are multiples of it (≥ 1).
    momentum_score : float or None
        Momentum score (any finite real, larger = stronger); required by ``MOMENTUM_WEIGHTED`` and ignored by the
        other strategies.
    """

    symbol: str
    target_weight: float
    price: float
    allowed_deviation: float = DEFAULT_ALLOWED_DEVIATION
    lot_size: int = 1
    momentum_score: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationRequest:
    """An integer-share allocation problem.

    Attributes
    ----------
    targets : sequence of AllocationTarget
        The target strategies (at least one).
    holdings : sequence of Holding
        Current positions; those not among the targets are sold in full.
    extra_cash : float
        Cash added to the budget ($, ≥ 0).
    strategy : AllocationStrategy
        Objective; see the module docstring.
    commission_per_trade : float
        Fixed fee ($, ≥ 0) per symbol whose share count changes (forced sales included).
    fee_per_share : float
        Fee ($, ≥ 0) per share bought or sold.
    time_limit_s : float or None
        Wall-clock limit of the whole call (seconds); the MILP gets what is left after the heuristic, and the
        heuristic's answer is returned when it runs out. None: no limit.
    gap_tolerance : float
        Absolute optimality tolerance of the MILP as a fraction of the budget (≥ 0; 0 asks for a proven optimum).
    allow_relaxation : bool
        Relax infeasible bands (see ``BandRelaxation``) instead of raising ``InfeasibleError``.
    deviation_mode : DeviationMode
        What ``allowed_deviation`` is measured against: ``RELATIVE`` to the target value (default) or
        ``ABSOLUTE`` percentage points of the budget.
    reinvest : bool
        PyPortfolioOpt strategies with shorts: add the short proceeds B · short_ratio to the longs' budget
        (``lp_portfolio(reinvest=True)``). Only with a PyPortfolioOpt strategy.
    short_ratio : float or None
        PyPortfolioOpt strategies with shorts: value of the short book as a fraction of B (≥ 0; 0.3 = 130/30);
        None = the sum of the negative weights' magnitudes (``DiscreteAllocation(short_ratio=None)``). Only
        with a PyPortfolioOpt strategy.
    """

    targets: Sequence[AllocationTarget]
    holdings: Sequence[Holding] = ()
    extra_cash: float = 0.0
    strategy: AllocationStrategy = AllocationStrategy.MINIMIZE_LEFTOVER
    commission_per_trade: float = 0.0
    fee_per_share: float = 0.0
    time_limit_s: float | None = None
    gap_tolerance: float = DEFAULT_GAP_TOLERANCE
    allow_relaxation: bool = True
    deviation_mode: DeviationMode = DeviationMode.RELATIVE
    reinvest: bool = False
    short_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class AllocationLine:
    """The allocation of one target symbol.

    Attributes
    ----------
    symbol : str
    price : float
        Price per share ($).
    lot_size : int
        Lot size applied (1 after ``LOT_SIZES_DROPPED``).
    current_shares, buy_shares, sell_shares, final_shares : int
        Shares held now, bought, sold and held after the trades (final = current + buy − sell; one of buy and
        sell is 0). ``final_shares`` is negative for a short of a PyPortfolioOpt strategy.
    trade_cost : float
        Fees of this symbol's trade ($): the commission when the share count changes plus the per-share fee.
    final_value : float
        price · final_shares ($).
    target_value : float
        target_weight · budget ($); for a PyPortfolioOpt strategy with shorts, the target of its book (w / Σ of
        the book's weights · the book's value, negative for a short).
    target_weight, actual_weight : float
        Target and final value as fractions of the budget (not percent).
    weight_deviation : float
        actual_weight − target_weight (fraction of the budget).
    relative_deviation : float
        final_value / target_value − 1 (NaN for a zero target).
    allowed_deviation : float
        Deviation of the band applied, after relaxation, in the request's ``deviation_mode`` (inf for a full band
        [0, B], and for the PyPortfolioOpt strategies).
    lower_value, upper_value : float
        The band applied ($); for the PyPortfolioOpt strategies the book's range ([0, T], or [−T, 0] for a short).
    """

    symbol: str
    price: float
    lot_size: int
    current_shares: int
    buy_shares: int
    sell_shares: int
    final_shares: int
    trade_cost: float
    final_value: float
    target_value: float
    target_weight: float
    actual_weight: float
    weight_deviation: float
    relative_deviation: float
    allowed_deviation: float
    lower_value: float
    upper_value: float


@dataclass(frozen=True, slots=True)
class SoldHolding:
    """A holding not among the targets, sold in full.

    Attributes
    ----------
    symbol : str
    shares : int
        Shares sold (all of them).
    price : float
    proceeds : float
        price · shares ($), before fees.
    trade_cost : float
        Fees of the sale ($).
    """

    symbol: str
    shares: int
    price: float
    proceeds: float
    trade_cost: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationResult:
    """An integer-share allocation and how it was found.

    Attributes
    ----------
    lines : tuple of AllocationLine
        One per target, sorted by symbol (independent of the request's order).
    sold_in_full : tuple of SoldHolding
        Holdings not among the targets, sorted by symbol.
    strategy : AllocationStrategy
    budget : float
        B: value of every holding at its price plus the extra cash ($).
    invested_value : float
        Σ price · final shares ($).
    fees_total : float
        Fees of every trade, forced sales included ($).
    budget_used : float
        invested_value + fees_total ($).
    unused_budget : float
        budget − budget_used: cash left over ($, ≥ 0); for the PyPortfolioOpt strategies its leftover (with
        shorts, the sum of the long and short books' leftovers).
    unused_fraction, budget_used_fraction : float
        unused_budget / budget and budget_used / budget (fractions, summing to 1).
    solver_status : AllocationStatus
    solver : str
        ``HiGHS`` when the MILP's answer is returned, ``greedy`` for the heuristic's.
    solver_message : str
        HiGHS's message, or why the heuristic's answer was returned.
    fallback_used : bool
        Whether the heuristic answered because the MILP timed out, failed or was not run for lack of time.
    relaxation : BandRelaxation
        The last relaxation step applied (``NONE`` when the request's bands were feasible).
    relaxation_detail : str
        What was relaxed and why ("" when nothing was).
    solve_time_ms : float
        Wall time of the whole call, validation included (milliseconds).
    weight_sum : float
        Σ of the request's target weights (within 1e-3 of 1; or of 0, a market-neutral PyPortfolioOpt book).
    weights_renormalised : bool
        Whether the weights were divided by ``weight_sum`` (the stratopt strategies, when it is not exactly 1); the
        PyPortfolioOpt strategies use them as given (the shortfall is cash), except greedy rounds that the weights
        over 1 would take past the budget (module docstring, Weights).
    lp_objective : float
        PyPortfolioOpt's ``lp_portfolio`` objective at this allocation ($): Σ|target_value − final_value| over the
        lines plus ``unused_budget`` (what ``PYPFOPT_LP`` minimises).
    """

    lines: tuple[AllocationLine, ...]
    sold_in_full: tuple[SoldHolding, ...]
    strategy: AllocationStrategy
    budget: float
    invested_value: float
    fees_total: float
    budget_used: float
    unused_budget: float
    unused_fraction: float
    budget_used_fraction: float
    solver_status: AllocationStatus
    solver: str
    solver_message: str
    fallback_used: bool
    relaxation: BandRelaxation
    relaxation_detail: str
    solve_time_ms: float
    weight_sum: float = 1.0
    weights_renormalised: bool = False
    lp_objective: float = 0.0

    @property
    def sold_in_full_symbols(self) -> tuple[str, ...]:
        """Symbols of the holdings sold in full."""
        return tuple(sold.symbol for sold in self.sold_in_full)

    @property
    def final_shares(self) -> dict[str, int]:
        """Final share count per target symbol."""
        return {line.symbol: line.final_shares for line in self.lines}


@dataclass(frozen=True, slots=True)
class _Problem:
    """The validated, normalised request: targets sorted by symbol, arrays of shape (N,)."""

    symbols: tuple[str, ...]
    request_index: IntArray  # position of each sorted target in request.targets
    weights: FloatArray
    prices: FloatArray
    deviations: FloatArray
    lots: IntArray
    current: IntArray  # shares held now of each target (0 if not held)
    scores: FloatArray | None
    sold: tuple[SoldHolding, ...]
    budget: float
    extra_cash: float
    forced_fees: float
    commission: float
    fee_per_share: float
    strategy: AllocationStrategy
    gap_tolerance: float
    allow_relaxation: bool
    weight_sum: float = 1.0
    deviation_mode: DeviationMode = DeviationMode.RELATIVE
    reinvest: bool = False
    short_ratio: float = 0.0  # PyPortfolioOpt strategies: the short book's value / B (effective)


@dataclass(frozen=True, slots=True)
class _Bands:
    """Admissible lot counts k ∈ [low, high] after relaxation, with the band applied."""

    low: IntArray
    high: IntArray
    lots: IntArray
    deviations: FloatArray  # inf for a full band
    lower_value: FloatArray
    upper_value: FloatArray
    relaxation: BandRelaxation
    detail: str


@dataclass(frozen=True, slots=True)
class _Costs:
    """Per-symbol cost data: lot value a = p·L, and fee parameters."""

    lot_value: FloatArray
    lots: IntArray
    current: IntArray
    commission: float
    fee_per_share: float

    def fees(self, k: IntArray, indices: IntArray | None = None) -> FloatArray:
        """Fees of reaching lot counts k from the current holdings, per symbol ($); k at ``indices`` when given."""
        lots, current = (self.lots, self.current) if indices is None else (self.lots[indices], self.current[indices])
        traded = np.abs(lots * k - current)
        fees: FloatArray = self.commission * (traded > 0) + self.fee_per_share * traded
        return fees

    def cost(self, k: IntArray, indices: IntArray | None = None) -> FloatArray:
        """Value plus fees of lot counts k, per symbol ($); k of the symbols at ``indices`` when given."""
        lot_value = self.lot_value if indices is None else self.lot_value[indices]
        return lot_value * k + self.fees(k, indices)


def allocate(request: AllocationRequest) -> AllocationResult:
    """Allocate a budget to whole shares of the target strategies, by MILP with a greedy fallback.

    See the module docstring for the budget, fees, bands, lots, objectives, relaxation order and method.

    Parameters
    ----------
    request : AllocationRequest
        Targets, holdings, extra cash, strategy, fees, time limit and gap tolerance.

    Returns
    -------
    AllocationResult
        Per-symbol trades (sorted by symbol), sold holdings, budget metrics, status, relaxation and solve time.

    Raises
    ------
    InvalidInputError
        Naming the field: ``targets`` (none given, weights not summing to 1 within 1e-3), ``targets[i].symbol``
        (empty or duplicate), ``targets[i].target_weight`` (not finite; negative but for a PyPortfolioOpt
        strategy), ``targets[i].lot_size``, ``commission_per_trade``, ``fee_per_share`` (not 1 / 0 with a
        PyPortfolioOpt strategy), ``short_ratio`` (negative or not finite, zero with shorts, or given with another
        strategy), ``reinvest`` (with another strategy), ``deviation_mode`` (unknown), ``targets[i].price`` (not
        finite and positive), ``targets[i].allowed_deviation`` (negative or not finite), ``targets[i].lot_size``
        (not a whole number ≥ 1), ``targets[i].momentum_score`` (missing for ``MOMENTUM_WEIGHTED``, or not finite),
        ``holdings[i].symbol`` / ``.shares`` (not a whole number ≥ 0) / ``.price`` (not finite and positive, or not
        the target's price), ``extra_cash``, ``commission_per_trade``, ``fee_per_share`` (negative or not finite),
        ``strategy``, ``time_limit_s`` (NaN), ``gap_tolerance``; ``extra_cash`` also when the budget is zero.
    InfeasibleError
        ``FEES_EXCEED_BUDGET`` when the fees of the forced sales exceed the budget; with
        ``allow_relaxation=False``, ``EMPTY_BAND`` for each band without an admissible share count and
        ``BUDGET`` when the cheapest admissible portfolio costs more than the budget.
    DeadlineExceededError
        ``time_limit_s`` is zero or negative: no time to solve.
    """
    started = time.perf_counter()
    problem = _validate(request)
    deadline = _deadline(request.time_limit_s, started)
    if problem.strategy in PYPFOPT_STRATEGIES:
        return _pypfopt_allocation(problem, deadline, started)
    bands = _relax(problem)
    costs = _costs(problem, bands)
    values = _objective(problem, bands)
    budget = problem.budget - problem.forced_fees
    heuristic = _improve(_greedy(problem, bands, costs), bands, costs, values, budget, deadline)
    heuristic_value = float(values @ heuristic)
    tolerance = problem.gap_tolerance * problem.budget * _objective_scale(problem)
    bound = _lp_bound(bands, costs, values, budget)
    if bound - heuristic_value <= tolerance:
        message = "greedy + local search within gap_tolerance of the LP bound; MILP not needed"
        return _result(problem, bands, heuristic, AllocationStatus.OPTIMAL, "greedy", message, False, started)
    remaining = math.inf if deadline is None else deadline - time.perf_counter()
    if remaining <= 0.0:
        message = "time limit reached before the MILP; greedy answer"
        return _result(problem, bands, heuristic, AllocationStatus.GREEDY, "greedy", message, True, started)
    lots, status, message = _solve_milp(problem, bands, costs, values, budget, bound, tolerance, remaining)
    if lots is not None and float(values @ lots) >= heuristic_value:
        return _result(problem, bands, lots, status, "HiGHS", message, False, started)
    if status is AllocationStatus.OPTIMAL:  # the heuristic is as good, within the tolerance
        message = f"{message}; the greedy answer is at least as good"
        return _result(problem, bands, heuristic, AllocationStatus.OPTIMAL, "greedy", message, False, started)
    if lots is not None:
        message = f"{message}; HiGHS's incumbent is worse than the greedy answer"
    return _result(problem, bands, heuristic, AllocationStatus.GREEDY, "greedy", message, True, started)


def greedy_allocation(request: AllocationRequest, *, improve: bool = False) -> AllocationResult:
    """The greedy allocation alone (no MILP), with the same validation, budget, fees, bands and relaxation.

    PyPortfolioOpt's ``DiscreteAllocation.greedy_portfolio`` (long-only) generalised to bands, lots and fees:
    start from the floor of each target's lot count, clipped into its band (or, when that overspends, from each
    symbol's cheapest admissible count), then buy one lot at a time of the affordable symbol whose value is furthest
    below its target value (in dollars against the budget; PyPortfolioOpt compares weights of the invested
    total), while the purchase keeps it within its band. Unlike PyPortfolioOpt it keeps buying symbols already above
    target while they stay within their bands, so it stops only when no lot fits the budget. A symbol two or more
    lots below its target is bought up to the lot just below the target in one step (what single steps would do
    in a row), and after ``MAX_GREEDY_STEPS`` (plus 10 per symbol) steps the rest is spent in one pass, as many
    lots per symbol as fit in the order of the deficits, so that penny stocks at large budgets stay fast.

    Parameters
    ----------
    request : AllocationRequest
        As for :func:`allocate`; ``gap_tolerance`` and ``time_limit_s`` are not used (``time_limit_s`` ≤ 0 still
        raises).
    improve : bool, default False
        Follow with the local search of :func:`allocate` (single-lot buys and one-lot swaps that raise the
        strategy's objective).

    Returns
    -------
    AllocationResult
        With ``solver_status`` ``GREEDY``, ``solver`` ``greedy`` and ``fallback_used`` false.

    Raises
    ------
    InvalidInputError, InfeasibleError, DeadlineExceededError
        As :func:`allocate`.
    """
    started = time.perf_counter()
    problem = _validate(request)
    deadline = _deadline(request.time_limit_s, started)
    if problem.strategy in PYPFOPT_STRATEGIES:
        return _pypfopt_allocation(problem, deadline, started)
    bands = _relax(problem)
    costs = _costs(problem, bands)
    lots = _greedy(problem, bands, costs)
    if improve:
        values = _objective(problem, bands)
        lots = _improve(lots, bands, costs, values, problem.budget - problem.forced_fees)
    message = "greedy + local search" if improve else "greedy"
    return _result(problem, bands, lots, AllocationStatus.GREEDY, "greedy", message, False, started)


def allocation_cache_key(request: AllocationRequest) -> str:
    """SHA-256 (hex) of the canonical JSON of the validated, normalised request: a cache key for its result.

    Normalised: targets and holdings sorted by symbol, weights divided by their sum (as given for the
    PyPortfolioOpt strategies), holdings with zero shares dropped, strategy as its name, momentum scores kept only
    for ``MOMENTUM_WEIGHTED``, floats as their shortest round-trip ``repr`` (−0.0 as 0.0); ``time_limit_s`` is
    left out (it bounds the work, not the problem). ``weight_sum`` (when not exactly 1), ``deviation_mode`` (when
    ``ABSOLUTE``) and, for the PyPortfolioOpt strategies, ``reinvest``, the effective ``short_ratio`` and the
    request's order of the symbols (``greedy_portfolio`` breaks ties of equal weights by it) are added.
    Requests with equal keys get identical allocations from :func:`allocate` when it is not cut short by the
    time limit (lines are sorted by symbol, so the request's order does not matter).

    Parameters
    ----------
    request : AllocationRequest

    Returns
    -------
    str
        64 lowercase hexadecimal characters.

    Raises
    ------
    InvalidInputError
        As :func:`allocate`.
    """
    problem = _validate(request)

    def number(value: float) -> float:
        return float(value) + 0.0  # −0.0 → 0.0

    canonical = {
        "version": _SCHEMA_VERSION,
        "strategy": problem.strategy.value,
        "targets": [
            {
                "symbol": problem.symbols[i],
                "target_weight": number(problem.weights[i]),
                "price": number(problem.prices[i]),
                "allowed_deviation": number(problem.deviations[i]),
                "lot_size": int(problem.lots[i]),
                **({"momentum_score": number(problem.scores[i])} if problem.scores is not None else {}),
            }
            for i in range(len(problem.symbols))
        ],
        "holdings": sorted(
            [{"symbol": n, "shares": int(c), "price": number(p)} for n, c, p in _held_targets(problem)]
            + [{"symbol": s.symbol, "shares": s.shares, "price": number(s.price)} for s in problem.sold],
            key=lambda h: str(h["symbol"]),
        ),
        "extra_cash": number(problem.extra_cash),
        "commission_per_trade": number(problem.commission),
        "fee_per_share": number(problem.fee_per_share),
        "gap_tolerance": number(problem.gap_tolerance),
        "allow_relaxation": problem.allow_relaxation,
    }
    # Keys added with the PyPortfolioOpt strategies and the absolute mode, only when they matter: the keys of
    # earlier requests are unchanged.
    if problem.weight_sum != 1.0:
        canonical["weight_sum"] = number(problem.weight_sum)
    if problem.deviation_mode is not DeviationMode.RELATIVE:
        canonical["deviation_mode"] = problem.deviation_mode.value
    if problem.strategy in PYPFOPT_STRATEGIES:
        canonical["reinvest"] = problem.reinvest
        canonical["short_ratio"] = number(problem.short_ratio)
        canonical["order"] = [problem.symbols[i] for i in np.argsort(problem.request_index)]  # greedy's ties
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _held_targets(problem: _Problem) -> list[tuple[str, int, float]]:
    """(symbol, shares, price) of the held target symbols."""
    return [
        (problem.symbols[i], int(problem.current[i]), float(problem.prices[i]))
        for i in range(len(problem.symbols))
        if problem.current[i] > 0
    ]


# --- validation -----------------------------------------------------------------------------------------------


def _finite(value: object, field: str) -> float:
    """``value`` as a finite float, or InvalidInputError naming ``field``."""
    if type(value) is float or type(value) is int:  # the common case, without the ABC check
        number = float(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError.for_field(field, f"must be a number, got {type(value).__name__}")
    else:
        number = float(value)
    if not math.isfinite(number):
        raise InvalidInputError.for_field(field, f"must be finite, got {number}")
    return number


MAX_VALUE = 1e15
"""Largest price, amount or weight accepted (a quadrillion): sums of 10,000 such terms stay finite."""


def _bounded(value: object, field: str) -> float:
    number = _finite(value, field)
    if abs(number) > MAX_VALUE:
        raise InvalidInputError.for_field(field, f"must be at most {MAX_VALUE:g}, got {number:g}")
    return number


def _non_negative(value: object, field: str) -> float:
    number = _bounded(value, field)
    if number < 0.0:
        raise InvalidInputError.for_field(field, f"must be non-negative, got {number:g}")
    return number


def _positive(value: object, field: str) -> float:
    number = _bounded(value, field)
    if number <= 0.0:
        raise InvalidInputError.for_field(field, f"must be positive, got {number:g}")
    return number


def _whole(value: object, field: str, minimum: int) -> int:
    """``value`` as an int ≥ ``minimum`` (an integral float is accepted), or InvalidInputError naming ``field``."""
    number = _finite(value, field)
    if number != math.floor(number):
        raise InvalidInputError.for_field(field, f"must be a whole number, got {number:g}")
    if number < minimum:
        raise InvalidInputError.for_field(field, f"must be at least {minimum}, got {number:g}")
    return int(number)


def _symbol(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError.for_field(field, "must be a non-empty string")
    return value


def _validate(request: AllocationRequest) -> _Problem:
    """Check every field of the request and normalise it (see ``allocate`` for the errors)."""
    try:
        strategy = AllocationStrategy(request.strategy)
    except ValueError:
        raise InvalidInputError.for_field(
            "strategy", f"unknown strategy {request.strategy!r}; expected one of {', '.join(AllocationStrategy)}"
        ) from None
    try:
        deviation_mode = DeviationMode(request.deviation_mode)
    except ValueError:
        raise InvalidInputError.for_field(
            "deviation_mode",
            f"unknown deviation mode {request.deviation_mode!r}; expected one of {', '.join(DeviationMode)}",
        ) from None
    pypfopt = strategy in PYPFOPT_STRATEGIES
    targets = list(request.targets)
    if not targets:
        raise InvalidInputError.for_field("targets", "at least one target is required")
    momentum = strategy is AllocationStrategy.MOMENTUM_WEIGHTED
    target_rows: list[tuple[str, float, float, float, int, float]] = []
    target_position: dict[str, int] = {}
    for i, target in enumerate(targets):
        field = f"targets[{i}]"
        symbol = _symbol(target.symbol, f"{field}.symbol")
        if symbol in target_position:
            raise InvalidInputError.for_field(
                f"{field}.symbol", f"duplicates targets[{target_position[symbol]}].symbol"
            )
        target_position[symbol] = i
        weight_field = f"{field}.target_weight"
        weight = (
            _bounded(target.target_weight, weight_field)
            if pypfopt
            else _non_negative(target.target_weight, weight_field)
        )
        price = _positive(target.price, f"{field}.price")
        deviation = _non_negative(target.allowed_deviation, f"{field}.allowed_deviation")
        lot = _whole(target.lot_size, f"{field}.lot_size", 1)
        if pypfopt and lot != 1:
            raise InvalidInputError.for_field(
                f"{field}.lot_size", f"must be 1 with {strategy.value}: PyPortfolioOpt trades single shares"
            )
        score = 0.0
        if target.momentum_score is not None:
            score = _finite(target.momentum_score, f"{field}.momentum_score")
        elif momentum:
            raise InvalidInputError.for_field(f"{field}.momentum_score", "is required by MOMENTUM_WEIGHTED")
        target_rows.append((symbol, weight, price, deviation, lot, score))
    weight_sum = math.fsum(row[1] for row in target_rows)
    tolerance = WEIGHT_SUM_TOLERANCE + 1e-12  # inclusive: 0.999 and 1.001 alike, rounding aside
    # PyPortfolioOpt's long and short books are each divided by their own sum: a market-neutral book (Σ w = 0,
    # its EfficientFrontier(..., market_neutral=True)) is as valid there as a book summing to 1.
    neutral = pypfopt and abs(weight_sum) <= tolerance and any(row[1] < 0 for row in target_rows)
    if abs(weight_sum - 1.0) > tolerance and not neutral:
        also = ", or 0 with short positions (market neutral)" if pypfopt else ""
        raise InvalidInputError.for_field(
            "targets",
            f"target weights sum to {weight_sum:.9g}; expected 1 (within {WEIGHT_SUM_TOLERANCE:g}){also}",
        )
    short_ratio = _short_ratio(request, strategy, [row[1] for row in target_rows])

    current = dict.fromkeys(target_position, 0)
    holding_position: dict[str, int] = {}
    sold_rows: list[tuple[str, int, float]] = []
    value_terms: list[float] = []
    for i, holding in enumerate(request.holdings):
        field = f"holdings[{i}]"
        symbol = _symbol(holding.symbol, f"{field}.symbol")
        if symbol in holding_position:
            raise InvalidInputError.for_field(
                f"{field}.symbol", f"duplicates holdings[{holding_position[symbol]}].symbol"
            )
        holding_position[symbol] = i
        shares = _whole(holding.shares, f"{field}.shares", 0)
        price = _positive(holding.price, f"{field}.price")
        if symbol in target_position:
            j = target_position[symbol]
            target_price = target_rows[j][2]
            if not math.isclose(price, target_price, rel_tol=1e-9):
                raise InvalidInputError.for_field(
                    f"{field}.price",
                    f"is {price:g} but targets[{j}].price is {target_price:g}; a held target is valued and traded "
                    "at one price",
                )
            current[symbol] = shares
            value_terms.append(target_price * shares)
        elif shares > 0:
            sold_rows.append((symbol, shares, price))
            value_terms.append(price * shares)
    extra_cash = _non_negative(request.extra_cash, "extra_cash")
    commission = _non_negative(request.commission_per_trade, "commission_per_trade")
    fee_per_share = _non_negative(request.fee_per_share, "fee_per_share")
    for name, fee in (("commission_per_trade", commission), ("fee_per_share", fee_per_share)):
        if pypfopt and fee != 0.0:
            raise InvalidInputError.for_field(name, f"must be 0 with {strategy.value}: PyPortfolioOpt has no fees")
    gap_tolerance = _non_negative(request.gap_tolerance, "gap_tolerance")
    if request.time_limit_s is not None and math.isnan(_real(request.time_limit_s, "time_limit_s")):
        raise InvalidInputError.for_field("time_limit_s", "must not be NaN")
    budget = math.fsum([*value_terms, extra_cash])
    if budget <= 0.0:
        raise InvalidInputError.for_field(
            "extra_cash", "the budget is zero: no holding with shares and no extra cash to allocate"
        )

    sold = tuple(
        SoldHolding(symbol, shares, price, price * shares, commission + fee_per_share * shares)
        for symbol, shares, price in sorted(sold_rows)
    )
    forced_fees = math.fsum(s.trade_cost for s in sold)
    order = sorted(range(len(target_rows)), key=lambda i: target_rows[i][0])
    rows = [target_rows[i] for i in order]
    weights = np.array([row[1] for row in rows], dtype=np.float64)
    if not pypfopt:
        weights /= weights.sum()
    return _Problem(
        symbols=tuple(row[0] for row in rows),
        request_index=np.array(order, dtype=np.int64),
        weights=weights,
        prices=np.array([row[2] for row in rows], dtype=np.float64),
        deviations=np.array([row[3] for row in rows], dtype=np.float64),
        lots=np.array([row[4] for row in rows], dtype=np.int64),
        current=np.array([current[row[0]] for row in rows], dtype=np.int64),
        scores=np.array([row[5] for row in rows], dtype=np.float64) if momentum else None,
        sold=sold,
        budget=budget,
        extra_cash=extra_cash,
        forced_fees=forced_fees,
        commission=commission,
        fee_per_share=fee_per_share,
        strategy=strategy,
        gap_tolerance=gap_tolerance,
        allow_relaxation=bool(request.allow_relaxation),
        weight_sum=weight_sum,
        deviation_mode=deviation_mode,
        reinvest=bool(request.reinvest),
        short_ratio=short_ratio,
    )


def _short_ratio(request: AllocationRequest, strategy: AllocationStrategy, weights: list[float]) -> float:
    """The effective short ratio of a PyPortfolioOpt strategy (0.0 for the others); see ``AllocationRequest``.

    None means PyPortfolioOpt's default, ``sum(-w for w in weights if w < 0)`` (summed in the request's order).
    """
    if strategy not in PYPFOPT_STRATEGIES:
        if request.short_ratio is not None:
            raise InvalidInputError.for_field("short_ratio", "applies only to PYPFOPT_LP and PYPFOPT_GREEDY")
        if request.reinvest:
            raise InvalidInputError.for_field("reinvest", "applies only to PYPFOPT_LP and PYPFOPT_GREEDY")
        return 0.0
    if request.short_ratio is None:
        ratio = float(sum(-w for w in weights if w < 0))
    else:
        ratio = _non_negative(request.short_ratio, "short_ratio")
    if ratio <= 0.0 and any(w < 0 for w in weights):
        raise InvalidInputError.for_field(
            "short_ratio", "must be positive when a target weight is negative (PyPortfolioOpt raises too)"
        )
    return ratio


def _real(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError.for_field(field, f"must be a number, got {type(value).__name__}")
    return float(value)


def _deadline(time_limit_s: float | None, started: float) -> float | None:
    """``perf_counter`` time by which the call must end (None: no limit); DeadlineExceededError when ≤ 0."""
    if time_limit_s is None or (math.isinf(time_limit_s) and time_limit_s > 0):
        return None
    if time_limit_s <= 0.0:
        raise DeadlineExceededError(f"no time left to allocate (time_limit_s = {time_limit_s:g})")
    return started + float(time_limit_s)


# --- bands and relaxation -------------------------------------------------------------------------------------


def _band_counts(
    problem: _Problem, deviations: FloatArray, lots: IntArray, full: bool
) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """Band ends ($) and the admissible lot counts [low, high] for the given deviations and lot sizes."""
    budget = problem.budget
    target_value = problem.weights * budget
    if full:
        lower = np.zeros_like(target_value)
        upper = np.full_like(target_value, budget)
    elif problem.deviation_mode is DeviationMode.ABSOLUTE:
        lower = np.maximum((problem.weights - deviations) * budget, 0.0)
        upper = np.minimum((problem.weights + deviations) * budget, budget)
    else:
        lower = np.maximum(target_value * (1.0 - deviations), 0.0)
        upper = np.minimum(target_value * (1.0 + deviations), budget)
    lot_value = problem.prices * lots
    low = np.ceil(lower / lot_value * (1.0 - BAND_TOLERANCE)).astype(np.int64)
    high = np.floor(upper / lot_value * (1.0 + BAND_TOLERANCE)).astype(np.int64)
    return lower, upper, low, high


def _cheapest(costs: _Costs, low: IntArray, high: IntArray) -> IntArray:
    """Per symbol, the admissible lot count of least value plus fees.

    The cost a·k + f·|L k − c| is convex piecewise linear in k with its kink at c / L, and the commission is
    zero only at k = c / L: the minimum over [low, high] is at an end or at a neighbour of c / L.
    """
    kink_low = np.clip(costs.current // costs.lots, low, high)
    kink_high = np.clip(-(-costs.current // costs.lots), low, high)
    candidates = np.stack([low, high, kink_low, kink_high])
    values = np.stack([costs.cost(row) for row in candidates])
    best: IntArray = candidates[np.argmin(values, axis=0), np.arange(low.size)]
    return best


def _relax(problem: _Problem) -> _Bands:
    """The bands of the request, relaxed in the documented order until the problem is feasible."""
    deviations = problem.deviations.copy()
    lots = problem.lots.copy()
    available = problem.budget - problem.forced_fees
    slack = _money_slack(problem.budget)
    if available < -slack:
        raise InfeasibleError(
            "the fees of selling the holdings outside the targets exceed the budget",
            precondition_violations=(
                PreconditionViolation(
                    "FEES_EXCEED_BUDGET",
                    "holdings",
                    f"forced-sale fees {problem.forced_fees:.2f} exceed the budget {problem.budget:.2f}",
                ),
            ),
        )
    steps: list[str] = []
    relaxation = BandRelaxation.NONE

    # a. per symbol: bands without an admissible share count.
    lower, upper, low, high = _band_counts(problem, deviations, lots, False)
    empty = low > high
    if empty.any():
        if not problem.allow_relaxation:
            raise _infeasible(
                [
                    PreconditionViolation(
                        "EMPTY_BAND",
                        f"targets[{problem.request_index[i]}]",
                        f"no multiple of lot size {lots[i]} at {problem.prices[i]:g} lies in "
                        f"[{lower[i]:.2f}, {upper[i]:.2f}]",
                    )
                    for i in np.flatnonzero(empty)
                ]
            )
        widened = np.flatnonzero(empty)
        while empty.any():
            deviations[empty] = np.maximum(2.0 * deviations[empty], DEVIATION_FLOOR)
            lower, upper, low, high = _band_counts(problem, deviations, lots, False)
            empty = low > high
        relaxation = BandRelaxation.WIDENED_BANDS
        steps.append(
            "no admissible share count in the band of "
            + ", ".join(f"{problem.symbols[i]} (deviation widened to {deviations[i]:g})" for i in widened)
        )

    costs = _Costs(problem.prices * lots, lots, problem.current, problem.commission, problem.fee_per_share)

    def cheapest_cost() -> float:
        return math.fsum(costs.cost(_cheapest(costs, low, high)))

    # b. every symbol: the cheapest admissible portfolio overspends.
    cheapest = cheapest_cost()
    if cheapest > available + slack:
        if not problem.allow_relaxation:
            raise _infeasible(
                [
                    PreconditionViolation(
                        "BUDGET",
                        "targets",
                        f"the cheapest portfolio within the bands costs {cheapest:.2f} with fees, more than the "
                        f"{available:.2f} available",
                    )
                ]
            )
        doublings = 0
        while cheapest > available + slack and not np.all(deviations >= 1.0):
            deviations = np.maximum(2.0 * deviations, DEVIATION_FLOOR)
            doublings += 1
            lower, upper, low, high = _band_counts(problem, deviations, lots, False)
            cheapest = cheapest_cost()
        relaxation = BandRelaxation.WIDENED_BANDS
        steps.append(f"the cheapest portfolio within the bands overspent: every deviation doubled {doublings}x")
        if cheapest > available + slack:
            # c. full bands.
            deviations = np.full_like(deviations, np.inf)
            lower, upper, low, high = _band_counts(problem, deviations, lots, True)
            cheapest = cheapest_cost()
            relaxation = BandRelaxation.FULL_BANDS
            steps.append("still over budget with every band down to 0: every band set to [0, budget]")
        if cheapest > available + slack:
            # d. lot sizes dropped.
            lots = np.ones_like(lots)
            costs = _Costs(problem.prices * lots, lots, problem.current, problem.commission, problem.fee_per_share)
            lower, upper, low, high = _band_counts(problem, deviations, lots, True)
            cheapest = cheapest_cost()
            relaxation = BandRelaxation.LOT_SIZES_DROPPED
            steps.append("still over budget with full bands: lot sizes dropped")
        if cheapest > available + slack:  # pragma: no cover - keeping every holding is free, forced fees fit
            raise _infeasible(
                [PreconditionViolation("BUDGET", "targets", f"no portfolio fits the budget {problem.budget:.2f}")]
            )
    return _Bands(low, high, lots, deviations, lower, upper, relaxation, "; ".join(steps))


def _money_slack(budget: float) -> float:
    """Slack of budget comparisons ($)."""
    return max(MONEY_TOLERANCE * budget, 1e-6)  # far below a cent, far above the rounding of a sum of N products


def _infeasible(violations: list[PreconditionViolation]) -> InfeasibleError:
    return InfeasibleError(
        "the allocation's bands admit no portfolio within the budget (relaxation not allowed)",
        precondition_violations=tuple(violations),
    )


def _costs(problem: _Problem, bands: _Bands) -> _Costs:
    return _Costs(problem.prices * bands.lots, bands.lots, problem.current, problem.commission, problem.fee_per_share)


# --- objective, greedy and local search ------------------------------------------------------------------------


def _objective(problem: _Problem, bands: _Bands) -> FloatArray:
    """Objective value v_i of one lot of each symbol (maximised: Σ v_i k_i); see the module docstring."""
    lot_value = problem.prices * bands.lots
    if problem.strategy is AllocationStrategy.MAXIMIZE_SHARES:
        values: FloatArray = bands.lots * (1.0 + problem.prices / (problem.budget + 1.0))
        return values
    if problem.strategy is AllocationStrategy.MOMENTUM_WEIGHTED:
        assert problem.scores is not None
        spread = float(problem.scores.max() - problem.scores.min())
        normalised = (problem.scores - problem.scores.min()) / spread if spread > 0.0 else np.zeros_like(lot_value)
        tilted: FloatArray = (1.0 + normalised) * lot_value
        return tilted
    return lot_value


def _objective_scale(problem: _Problem) -> float:
    """Objective units per dollar of invested value (for the gap tolerance)."""
    return 1.0 / (problem.budget + 1.0) if problem.strategy is AllocationStrategy.MAXIMIZE_SHARES else 1.0


def _greedy(problem: _Problem, bands: _Bands, costs: _Costs) -> IntArray:
    """PyPortfolioOpt's greedy allocation generalised to bands, lots and fees (see ``greedy_allocation``).

    A symbol picked while its value is at least two lots below its target value is bought up to the lot just
    below the target in one step (what one-lot steps would do in a row); after ``MAX_GREEDY_STEPS`` steps, the
    rest of the budget is spent in one pass, in the order of the deficits, as many lots per symbol as fit.
    """
    available = problem.budget - problem.forced_fees
    slack = _money_slack(problem.budget)
    target_value = problem.weights * problem.budget
    k = np.clip(np.floor(target_value / costs.lot_value).astype(np.int64), bands.low, bands.high)
    if math.fsum(costs.cost(k)) > available + slack:
        k = _cheapest(costs, bands.low, bands.high)
    remaining = available - math.fsum(costs.cost(k))
    step_cost = costs.cost(k + 1) - costs.cost(k)
    deficit = target_value - costs.lot_value * k
    open_ = k < bands.high
    steps_left = MAX_GREEDY_STEPS + 10 * k.size
    while steps_left > 0:
        steps_left -= 1
        candidates = np.where(open_ & (step_cost <= remaining + slack), deficit, -np.inf)
        i = int(np.argmax(candidates))
        if not np.isfinite(candidates[i]):
            return k
        lots = 1
        if deficit[i] >= 2.0 * costs.lot_value[i]:
            lots = _affordable(
                costs, i, int(k[i]), int(min(deficit[i] // costs.lot_value[i], bands.high[i] - k[i])), remaining + slack
            )
        remaining -= _delta(costs, i, int(k[i]), lots)
        k[i] += lots
        step_cost[i] = _delta(costs, i, int(k[i]), 1)
        deficit[i] -= lots * costs.lot_value[i]
        open_[i] = k[i] < bands.high[i]
    for i in np.argsort(-deficit, kind="stable"):  # the step cap was reached: one bulk pass
        lots = _affordable(costs, int(i), int(k[i]), int(bands.high[i] - k[i]), remaining + slack)
        remaining -= _delta(costs, int(i), int(k[i]), lots)
        k[i] += lots
    return k


def _delta(costs: _Costs, i: int, k: int, lots: int) -> float:
    """Change of value plus fees of symbol i moving from k to k + lots lots (lots may be negative)."""
    lot, current = int(costs.lots[i]), int(costs.current[i])

    def fee(count: int) -> float:
        traded = abs(lot * count - current)
        return (costs.commission if traded else 0.0) + costs.fee_per_share * traded

    return lots * float(costs.lot_value[i]) + fee(k + lots) - fee(k)


def _affordable(costs: _Costs, i: int, k: int, most: int, limit: float) -> int:
    """The largest m in [0, most] whose purchase (k → k + m lots) costs at most ``limit`` (bisection)."""
    if most <= 0 or _delta(costs, i, k, 1) > limit:
        return 0
    low, high = 1, most  # low affordable; the answer lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if _delta(costs, i, k, middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _improve(
    k: IntArray,
    bands: _Bands,
    costs: _Costs,
    values: FloatArray,
    available: float,
    deadline: float | None = None,
) -> IntArray:
    """Local search from k: the best single-lot buy or one-lot swap (buy i, sell j) that raises Σ v k and fits.

    At most ``MAX_IMPROVEMENT_MOVES`` moves, and none after ``deadline`` (a ``time.perf_counter`` time). The best
    swap is found in O(N log N): with the sellable symbols sorted by the cost change of selling a lot, a prefix
    maximum of −v gives, for each buyable symbol, the best partner whose sale pays for the purchase.
    """
    k = k.copy()
    threshold = 1e-12 * (float(np.max(np.abs(values))) if values.size else 1.0)
    slack = _money_slack(available)
    remaining = available - math.fsum(costs.cost(k))
    for _ in range(MAX_IMPROVEMENT_MOVES):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        can_up = np.flatnonzero(k < bands.high)
        if can_up.size == 0:
            break
        up_cost = costs.cost(k[can_up] + 1, can_up) - costs.cost(k[can_up], can_up)
        best_gain, best_up, best_down = threshold, -1, -1
        single = np.where(up_cost <= remaining + slack, values[can_up], -np.inf)
        position = int(np.argmax(single))
        if float(single[position]) > best_gain:
            best_gain, best_up = float(single[position]), int(can_up[position])
        can_down = np.flatnonzero(k > bands.low)
        if can_down.size:
            down_cost = costs.cost(k[can_down] - 1, can_down) - costs.cost(k[can_down], can_down)
            gain, up, down = _best_swap(values, can_up, up_cost, can_down, down_cost, remaining + slack)
            if gain > best_gain:
                best_gain, best_up, best_down = gain, up, down
        if best_up < 0:
            break
        remaining -= _delta(costs, best_up, int(k[best_up]), 1)
        k[best_up] += 1
        if best_down >= 0:
            remaining -= _delta(costs, best_down, int(k[best_down]), -1)
            k[best_down] -= 1
    return k


def _best_swap(
    values: FloatArray, can_up: IntArray, up_cost: FloatArray, can_down: IntArray, down_cost: FloatArray, limit: float
) -> tuple[float, int, int]:
    """Best (gain v_i − v_j, i, j) over i ∈ can_up, j ∈ can_down, j ≠ i, with up_i + down_j ≤ limit."""
    order = np.argsort(down_cost, kind="stable")
    sellers, sorted_cost = can_down[order], down_cost[order]
    negated = -values[sellers]
    prefix_best = np.maximum.accumulate(negated)
    prefix_at = np.maximum.accumulate(np.where(negated == prefix_best, np.arange(sellers.size), 0))
    last = np.searchsorted(sorted_cost, limit - up_cost, side="right") - 1  # partners 0..last fit, per i
    valid = last >= 0
    clipped = np.maximum(last, 0)
    partner = sellers[prefix_at[clipped]]
    gain = np.where(valid, values[can_up] + prefix_best[clipped], -np.inf)
    for clash in np.flatnonzero(valid & (partner == can_up)):  # the best partner is i itself: take the next best
        others = np.flatnonzero(sellers[: last[clash] + 1] != can_up[clash])
        if others.size:
            best = int(others[np.argmax(negated[others])])
            gain[clash], partner[clash] = values[can_up[clash]] + negated[best], sellers[best]
        else:
            gain[clash] = -np.inf
    chosen = int(np.argmax(gain))
    return float(gain[chosen]), int(can_up[chosen]), int(partner[chosen])


def _lp_bound(bands: _Bands, costs: _Costs, values: FloatArray, available: float) -> float:
    """Upper bound of Σ v k: the fractional knapsack over [low, high] with the value as cost and no fees."""
    capacity = available - float(costs.lot_value @ bands.low)
    ratio = values / costs.lot_value
    order = np.argsort(-ratio, kind="stable")
    room = ((bands.high - bands.low) * costs.lot_value)[order]
    before = np.concatenate([[0.0], np.cumsum(room)[:-1]])
    taken = np.clip(capacity - before, 0.0, room)
    return float(values @ bands.low) + float(ratio[order] @ taken)


# --- the MILP ---------------------------------------------------------------------------------------------------


def _solve_milp(
    problem: _Problem,
    bands: _Bands,
    costs: _Costs,
    values: FloatArray,
    available: float,
    bound: float,
    tolerance: float,
    time_limit_s: float,
) -> tuple[IntArray | None, AllocationStatus, str]:
    """Solve the MILP with HiGHS; the lot counts (None when there is no usable solution), status and message."""
    n = values.size
    fees = problem.commission > 0.0 or problem.fee_per_share > 0.0
    commission = problem.commission > 0.0
    lots, current = bands.lots.astype(np.float64), problem.current.astype(np.float64)
    low, high = bands.low.astype(np.float64), bands.high.astype(np.float64)
    n_vars = n * (1 + 2 * fees + commission)
    objective = np.zeros(n_vars)
    objective[:n] = -values
    lower_bounds, upper_bounds = np.zeros(n_vars), np.zeros(n_vars)
    lower_bounds[:n], upper_bounds[:n] = low, high
    integrality = np.zeros(n_vars)
    integrality[:n] = 1
    budget_row = np.zeros(n_vars)
    budget_row[:n] = costs.lot_value
    constraints = []
    if fees:
        most_bought = np.maximum(lots * high - current, 0.0)
        most_sold = np.maximum(current - lots * low, 0.0)
        upper_bounds[n : 2 * n], upper_bounds[2 * n : 3 * n] = most_bought, most_sold
        budget_row[n : 3 * n] = problem.fee_per_share
        eye = sparse.identity(n, format="csr")
        # L k − b + s = c
        balance = sparse.hstack([sparse.diags(lots), -eye, eye] + ([sparse.csr_matrix((n, n))] if commission else []))
        constraints.append(LinearConstraint(balance.tocsr(), current, current))
        if commission:
            moved = np.maximum(most_bought, most_sold)
            upper_bounds[3 * n :] = (moved > 0).astype(np.float64)
            integrality[3 * n :] = 1
            budget_row[3 * n :] = problem.commission
            # b + s − M t ≤ 0
            link = sparse.hstack([sparse.csr_matrix((n, n)), eye, eye, sparse.diags(-np.maximum(moved, 1.0))])
            constraints.append(LinearConstraint(link.tocsr(), -np.inf, 0.0))
    constraints.insert(0, LinearConstraint(sparse.csr_matrix(budget_row[None, :]), -np.inf, available))
    options: dict[str, float | bool] = {
        "mip_rel_gap": tolerance / max(abs(bound), 1e-12),
        "presolve": True,
    }
    if math.isfinite(time_limit_s):
        options["time_limit"] = time_limit_s
    try:
        solution = milp(
            objective,
            integrality=integrality,
            bounds=Bounds(lower_bounds, upper_bounds),
            constraints=constraints,
            options=options,
        )
    except (ValueError, RuntimeError) as exc:  # pragma: no cover - HiGHS raising is a solver failure
        return None, AllocationStatus.GREEDY, f"HiGHS failed ({exc}); greedy answer"
    message = str(solution.message)
    if solution.x is None:
        reason = "time limit reached without a solution" if solution.status == 1 else f"no solution ({message})"
        return None, AllocationStatus.GREEDY, f"MILP: {reason}; greedy answer"
    k = np.rint(solution.x[:n]).astype(np.int64)
    slack = _money_slack(problem.budget)
    if np.any(k < bands.low) or np.any(k > bands.high) or math.fsum(costs.cost(k)) > available + slack:
        return None, AllocationStatus.GREEDY, f"MILP answer failed the exact check ({message}); greedy answer"
    if solution.status == 0:
        return k, AllocationStatus.OPTIMAL, message
    return k, AllocationStatus.TIME_LIMIT, message


# --- the result ---------------------------------------------------------------------------------------------------


def _result(
    problem: _Problem,
    bands: _Bands,
    k: IntArray,
    status: AllocationStatus,
    solver: str,
    message: str,
    fallback_used: bool,
    started: float,
) -> AllocationResult:
    """Build the result from the lot counts k, recomputing trades and fees from the share counts."""
    budget = problem.budget
    final = bands.lots * k
    traded = final - problem.current
    fees = problem.commission * (traded != 0) + problem.fee_per_share * np.abs(traded)
    value = problem.prices * final
    target_value = problem.weights * budget
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(target_value > 0.0, value / target_value - 1.0, math.nan)
    columns = zip(
        problem.symbols,
        problem.prices.tolist(),
        bands.lots.tolist(),
        problem.current.tolist(),
        np.maximum(traded, 0).tolist(),
        np.maximum(-traded, 0).tolist(),
        final.tolist(),
        fees.tolist(),
        value.tolist(),
        target_value.tolist(),
        problem.weights.tolist(),
        (value / budget).tolist(),
        (value / budget - problem.weights).tolist(),
        relative.tolist(),
        bands.deviations.tolist(),
        bands.lower_value.tolist(),
        bands.upper_value.tolist(),
        strict=True,
    )
    lines = [AllocationLine(*row) for row in columns]
    invested = math.fsum(value)
    fees_total = math.fsum([*fees, problem.forced_fees])
    unused = max(budget - invested - fees_total, 0.0)  # ≥ −max(1e-12·B, 1e-6) by the checks: rounding
    lp_objective = math.fsum([*np.abs(target_value - value), unused])
    return AllocationResult(
        lines=tuple(lines),
        sold_in_full=problem.sold,
        strategy=problem.strategy,
        budget=budget,
        invested_value=invested,
        fees_total=fees_total,
        budget_used=budget - unused,
        unused_budget=unused,
        unused_fraction=unused / budget,
        budget_used_fraction=(budget - unused) / budget,
        solver_status=status,
        solver=solver,
        solver_message=message,
        fallback_used=fallback_used,
        relaxation=bands.relaxation,
        relaxation_detail=bands.detail,
        solve_time_ms=(time.perf_counter() - started) * 1e3,
        weight_sum=problem.weight_sum,
        weights_renormalised=problem.weight_sum != 1.0,
        lp_objective=lp_objective,
    )


# --- PyPortfolioOpt's methods -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Book:
    """One of PyPortfolioOpt's long-only sub-allocations: sorted-symbol indices, weights, value T, sign."""

    indices: list[int]
    weights: list[float]
    total: float
    sign: int  # +1 long, −1 short (its shares are negated)


def _pypfopt_books(problem: _Problem, *, sort_descending: bool) -> list[_Book]:
    """PyPortfolioOpt's split of the weights into a long and a short book (one book when none is negative).

    In the request's order, sorted by descending weight first for ``greedy_portfolio`` (a stable sort, as its
    ``self.weights.sort``); each book's weights divided by their sum, summed in that order as PyPortfolioOpt does.
    """
    order = [int(i) for i in np.argsort(problem.request_index)]  # sorted indices, in the request's order
    pairs = [(i, float(problem.weights[i])) for i in order]
    if sort_descending:
        pairs.sort(key=lambda pair: pair[1], reverse=True)
    if not any(w < 0 for _, w in pairs):
        return [_Book([i for i, _ in pairs], [w for _, w in pairs], problem.budget, 1)]
    longs = [(i, w) for i, w in pairs if w >= 0]
    shorts = [(i, -w) for i, w in pairs if w < 0]
    long_total = sum(w for _, w in longs)
    short_total = sum(w for _, w in shorts)
    short_value = problem.budget * problem.short_ratio
    long_value = problem.budget + (short_value if problem.reinvest else 0.0)
    return [
        _Book([i for i, _ in longs], [w / long_total for _, w in longs], long_value, 1),
        _Book([i for i, _ in shorts], [w / short_total for _, w in shorts], short_value, -1),
    ]


def _pypfopt_greedy_book(weights: list[float], prices: list[float], total: float) -> tuple[list[int], float]:
    """``DiscreteAllocation.greedy_portfolio`` on a long-only book, step for step: shares (book order), leftover.

    The same floating-point operations in the same order as PyPortfolioOpt 1.6 (including its NaN weights when
    round one buys nothing), so the shares are identical.
    """
    order = sorted(range(len(weights)), key=lambda k: weights[k], reverse=True)
    ordered_weights = [weights[k] for k in order]
    ordered_prices = np.array([prices[k] for k in order], dtype=np.float64)
    available = total
    bought: list[int] = []
    for weight, price in zip(ordered_weights, ordered_prices, strict=True):
        shares = int(weight * total / price)  # round one: the floor of each target, never over budget
        available -= shares * price
        bought.append(shares)
    ideal = np.array(ordered_weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        while available > 0:  # round two: one share at a time of the largest deficit that is affordable
            current = ordered_prices * np.array(bought)
            current /= current.sum()
            deficit = ideal - current
            index = int(np.argmax(deficit))
            price = ordered_prices[index]
            skipped = 0
            while price > available:
                deficit[index] = 0
                index = int(np.argmax(deficit))
                if deficit[index] < 0 or skipped == PYPFOPT_GREEDY_SKIPS:
                    break
                price = ordered_prices[index]
                skipped += 1
            if deficit[index] <= 0 or skipped == PYPFOPT_GREEDY_SKIPS:
                break
            bought[index] += 1
            available -= price
    shares_by_book = [0] * len(weights)
    for position, k in enumerate(order):
        shares_by_book[k] = bought[position]
    return shares_by_book, float(available)


def _pypfopt_lp_book(
    weights: list[float], prices: list[float], total: float, gap_tolerance: float, time_limit_s: float
) -> tuple[list[int] | None, AllocationStatus, str]:
    """``DiscreteAllocation.lp_portfolio`` on a long-only book with HiGHS: shares (None: no solution), status.

    Variables x (integers, 0 ≤ x_i ≤ ⌊T / p_i⌋) and u; minimise Σ u − Σ p x (+ T, the leftover's constant) subject
    to u_i + p_i x_i ≥ w_i T, u_i − p_i x_i ≥ −w_i T and Σ p x ≤ T. The absolute optimality gap is at most
    ``gap_tolerance`` · T dollars.
    """
    n = len(weights)
    p = np.array(prices, dtype=np.float64)
    target = np.array(weights, dtype=np.float64) * total
    objective = np.concatenate([-p, np.ones(n)])
    eye = sparse.identity(n, format="csr")
    rows = sparse.vstack(
        [
            sparse.hstack([sparse.diags(p), eye]),
            sparse.hstack([sparse.diags(-p), eye]),
            sparse.hstack([sparse.csr_matrix(p[None, :]), sparse.csr_matrix((1, n))]),
        ]
    ).tocsr()
    lower = np.concatenate([target, -target, [-np.inf]])
    upper = np.concatenate([np.full(2 * n, np.inf), [total]])
    most = np.floor(total / p * (1.0 + BAND_TOLERANCE))
    options: dict[str, float | bool] = {"mip_rel_gap": gap_tolerance, "presolve": True}
    if math.isfinite(time_limit_s):
        options["time_limit"] = time_limit_s
    try:
        solution = milp(
            objective,
            integrality=np.concatenate([np.ones(n), np.zeros(n)]),
            bounds=Bounds(np.zeros(2 * n), np.concatenate([most, np.full(n, np.inf)])),
            constraints=[LinearConstraint(rows, lower, upper)],
            options=options,
        )
    except (ValueError, RuntimeError) as exc:  # pragma: no cover - HiGHS raising is a solver failure
        return None, AllocationStatus.GREEDY, f"HiGHS failed ({exc})"
    message = str(solution.message)
    if solution.x is None:
        return None, AllocationStatus.GREEDY, f"MILP: no solution ({message})"
    shares = np.rint(solution.x[:n]).astype(np.int64)
    if float(p @ shares) > total + _money_slack(total) or np.any(shares < 0):
        return None, AllocationStatus.GREEDY, f"MILP answer failed the exact check ({message})"
    status = AllocationStatus.OPTIMAL if solution.status == 0 else AllocationStatus.TIME_LIMIT
    return [int(v) for v in shares], status, message


def _pypfopt_allocation(problem: _Problem, deadline: float | None, started: float) -> AllocationResult:
    """``PYPFOPT_LP`` / ``PYPFOPT_GREEDY``: PyPortfolioOpt's ``DiscreteAllocation`` methods (module docstring)."""
    lp = problem.strategy is AllocationStrategy.PYPFOPT_LP
    books = _pypfopt_books(problem, sort_descending=not lp)
    n = len(problem.symbols)
    final = np.zeros(n, dtype=np.int64)
    target_value = np.zeros(n)
    lower, upper = np.zeros(n), np.zeros(n)
    leftovers: list[float] = []
    statuses: list[AllocationStatus] = []
    messages: list[str] = []
    fallback = renormalised = False
    for book in books:
        prices = [float(problem.prices[i]) for i in book.indices]
        shares: list[int] | None = None
        status, message = AllocationStatus.GREEDY, "greedy_portfolio"
        if lp:
            remaining = math.inf if deadline is None else deadline - time.perf_counter()
            if remaining > 0.0:
                shares, status, message = _pypfopt_lp_book(
                    book.weights, prices, book.total, problem.gap_tolerance, remaining
                )
            else:
                message = "time limit reached before the MILP"
            if shares is None:
                fallback = True
                message = f"{message}; greedy_portfolio's answer"
        if shares is None:
            shares, leftover = _pypfopt_greedy_book(book.weights, prices, book.total)  # its own running sum
            status = AllocationStatus.GREEDY
            if leftover < 0.0:  # weights over 1: round one cost more than the book (module docstring, Weights)
                book = replace(book, weights=[w / problem.weight_sum for w in book.weights])
                shares, leftover = _pypfopt_greedy_book(book.weights, prices, book.total)
                renormalised = True
                message = f"{message}; weights divided by their sum {problem.weight_sum:.9g} (round one overspent)"
        else:
            leftover = book.total - math.fsum(p * x for p, x in zip(prices, shares, strict=True))
        leftovers.append(leftover)
        statuses.append(status)
        messages.append(message)
        for i, weight, count in zip(book.indices, book.weights, shares, strict=True):
            final[i] = book.sign * count
            target_value[i] = book.sign * weight * book.total
            lower[i], upper[i] = (0.0, book.total) if book.sign > 0 else (-book.total, 0.0)
    worst = next(
        s for s in (AllocationStatus.GREEDY, AllocationStatus.TIME_LIMIT, AllocationStatus.OPTIMAL) if s in statuses
    )
    if not lp:
        worst = AllocationStatus.GREEDY
    solver = "HiGHS" if lp and not fallback else "greedy"
    label = ["long book: ", "short book: "] if len(books) == 2 else [""]
    message = "; ".join(f"{prefix}{text}" for prefix, text in zip(label, messages, strict=True))
    return _pypfopt_result(
        problem, final, target_value, lower, upper, math.fsum(leftovers), worst, solver, message, fallback, started,
        renormalised=renormalised,
    )  # fmt: skip


def _pypfopt_result(
    problem: _Problem,
    final: IntArray,
    target_value: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    leftover: float,
    status: AllocationStatus,
    solver: str,
    message: str,
    fallback_used: bool,
    started: float,
    *,
    renormalised: bool = False,
) -> AllocationResult:
    """The result of a PyPortfolioOpt strategy: no fees or bands; the unused budget is its leftover."""
    budget = problem.budget
    traded = final - problem.current
    value = problem.prices * final
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(target_value != 0.0, value / target_value - 1.0, math.nan)
    lines = [
        AllocationLine(
            symbol=problem.symbols[i],
            price=float(problem.prices[i]),
            lot_size=1,
            current_shares=int(problem.current[i]),
            buy_shares=int(max(traded[i], 0)),
            sell_shares=int(max(-traded[i], 0)),
            final_shares=int(final[i]),
            trade_cost=0.0,
            final_value=float(value[i]),
            target_value=float(target_value[i]),
            target_weight=float(problem.weights[i]),
            actual_weight=float(value[i] / budget),
            weight_deviation=float(value[i] / budget - problem.weights[i]),
            relative_deviation=float(relative[i]),
            allowed_deviation=math.inf,
            lower_value=float(lower[i]),
            upper_value=float(upper[i]),
        )
        for i in range(len(problem.symbols))
    ]
    return AllocationResult(
        lines=tuple(lines),
        sold_in_full=problem.sold,
        strategy=problem.strategy,
        budget=budget,
        invested_value=math.fsum(value),
        fees_total=0.0,
        budget_used=budget - leftover,
        unused_budget=leftover,
        unused_fraction=leftover / budget,
        budget_used_fraction=(budget - leftover) / budget,
        solver_status=status,
        solver=solver,
        solver_message=message,
        fallback_used=fallback_used,
        relaxation=BandRelaxation.NONE,
        relaxation_detail="",
        solve_time_ms=(time.perf_counter() - started) * 1e3,
        weight_sum=problem.weight_sum,
        weights_renormalised=renormalised,
        lp_objective=math.fsum([*np.abs(target_value - value), leftover]),
    )
