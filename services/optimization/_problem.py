"""The portfolio problem and its result: objective, constraint limits, performance, relaxations.

Conventions: weights are fractions summing to 1 (or within the net exposure bounds); expected returns, volatilities
and the risk-free rate are annualised decimals; N is the number of strategies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from services.types import FloatArray


class Objective(StrEnum):
    """What the optimizer maximises or minimises."""

    MAX_SHARPE = "MAX_SHARPE"
    MIN_VOLATILITY = "MIN_VOLATILITY"
    MAX_RETURN = "MAX_RETURN"
    MAX_QUADRATIC_UTILITY = "MAX_QUADRATIC_UTILITY"
    MULTI_OBJECTIVE = "MULTI_OBJECTIVE"
    """Maximise a weighted sum of expected return, variance, turnover and L2 (see ``MultiObjectiveWeights``)."""


@dataclass(frozen=True, slots=True)
class SectorLimit:
    """Bounds on the summed weight of the strategies of one group of a classification scheme."""

    sector: str
    """Group name (a sector, a country, a style ...)."""
    min_weight: float | None = None
    max_weight: float | None = None
    scheme: str = ""
    """Classification scheme of ``sector``: "" = ``PortfolioProblem.sectors``, else a key of
    ``PortfolioProblem.classifications``."""


@dataclass(frozen=True, slots=True)
class MultiObjectiveWeights:
    """Weights of the multi-objective: maximise a·μᵀw − b·wᵀΣw − g·Σ|w − w₀| − λ·‖w‖².

    μᵀw is net of transaction costs when the problem has them (and includes the cash leg at r_f with net exposure
    bounds); Σ|w − w₀| is the two-way turnover from the current weights; ‖w‖² the L2 (ridge) regulariser that
    spreads weight over more names. All four are non-negative and at least one of a, b is positive.
    """

    return_weight: float = 1.0
    variance_weight: float = 1.0
    turnover_weight: float = 0.0
    l2_weight: float = 0.0


@dataclass(frozen=True, slots=True)
class Relaxation:
    """How much one constraint had to be relaxed to make an infeasible problem feasible."""

    constraint: str
    """The relaxed limit, named as a ``PortfolioProblem`` attribute path, e.g. ``sector_limits[1].min_weight``."""
    original: float
    """The limit as asked."""
    relaxed: float
    """The smallest limit (in the relaxing direction) that makes the problem feasible with the other relaxations."""
    description: str

    @property
    def amount(self) -> float:
        """|relaxed − original|, in the constraint's own units (weights, annualised decimals)."""
        return abs(self.relaxed - self.original)


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioProblem:
    """A mean-variance problem: objective, bounds and linear/risk constraints over N strategies.

    Attributes
    ----------
    symbols : tuple of str, length N
        Unique symbols, in the order of every array.
    objective : Objective
        What to optimize.
    lower_bounds, upper_bounds : ndarray of shape (N,)
        Per-strategy weight bounds (fractions).
    sectors : tuple of str, length N
        Sector of each strategy ("" = none).
    sector_limits : tuple of SectorLimit
        Sector bounds.
    min_return : float or None
        Minimum annualised expected return (efficient return).
    max_volatility : float or None
        Maximum annualised volatility (efficient risk).
    risk_free_rate : float
        Annualised risk-free rate (decimal).
    risk_aversion : float
        Risk aversion delta of the quadratic utility.
    """

    symbols: tuple[str, ...]
    objective: Objective
    lower_bounds: FloatArray
    upper_bounds: FloatArray
    sectors: tuple[str, ...] = ()
    sector_limits: tuple[SectorLimit, ...] = ()
    min_return: float | None = None
    max_volatility: float | None = None
    risk_free_rate: float = 0.0
    risk_aversion: float = 1.0
    current_weights: FloatArray | None = None
    """Current weights w₀ (N,), the reference of turnover and transaction costs; None = all zero."""
    turnover_limit: float | None = None
    """Two-way turnover cap: Σ|w − w₀| ≤ limit (fractions of portfolio value)."""
    turnover_caps: FloatArray | None = None
    """Per-strategy caps (N,) on |w_i − w₀_i|; inf where none."""
    leverage_limit: float | None = None
    """Gross exposure cap: Σ|w_i| ≤ limit."""
    transaction_costs_bps: FloatArray | None = None
    """Linear costs (N,) in basis points of traded value, c_i·|w_i − w₀_i|/1e4, subtracted from the expected
    return wherever it appears (objective, min_return)."""
    benchmark_weights: FloatArray | None = None
    """Benchmark weights b (N,) of the tracking-error limit."""
    tracking_error_limit: float | None = None
    """Annualised tracking-error cap: sqrt((w − b)ᵀΣ(w − b)) ≤ limit."""
    betas: FloatArray | None = None
    """Betas (N,) against the market, for beta neutrality."""
    beta_tolerance: float | None = None
    """Beta neutrality: |βᵀw| ≤ tolerance."""
    classifications: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Extra classification schemes: (scheme, group of each strategy (length N, "" = none)) pairs."""
    multi_objective: MultiObjectiveWeights | None = None
    """Weights of ``Objective.MULTI_OBJECTIVE``; None = ``MultiObjectiveWeights()``."""
    max_holdings: int | None = None
    """Cardinality: at most this many strategies with a non-zero weight (mixed-integer program)."""
    min_position_weight: float | None = None
    """Minimum |w_i| of a held strategy (mixed-integer program); a strategy is held or at weight 0."""
    min_net_exposure: float | None = None
    """Net exposure Σw lower bound; with either net bound the budget Σw = 1 becomes min ≤ Σw ≤ max and the rest
    (1 − Σw) is cash earning r_f."""
    max_net_exposure: float | None = None
    """Net exposure Σw upper bound (see ``min_net_exposure``)."""
    allow_relaxation: bool = False
    """When the constraints are infeasible, solve the smallest relaxation instead of failing (see
    ``services.optimization._relaxation``)."""

    @property
    def n_assets(self) -> int:
        """Number of strategies N."""
        return len(self.symbols)


@dataclass(frozen=True, slots=True)
class PortfolioPerformance:
    """Annualised performance of a weight vector."""

    expected_return: float
    volatility: float
    sharpe_ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationResult:
    """The optimal portfolio and how it was found.

    Attributes
    ----------
    weights : ndarray of shape (N,)
        Optimal weights (fractions summing to 1), in the order of ``PortfolioProblem.symbols``.
    performance : PortfolioPerformance
        Expected return, volatility and Sharpe ratio of ``weights``.
    objective_value : float
        Objective at the optimum: Sharpe ratio (max Sharpe), variance w'Σw (min volatility), expected return
        (max return), or utility μ'w − δ/2 w'Σw (quadratic utility); returns net of transaction costs when the
        problem has them (``performance`` stays gross).
    status : str
        ``OPTIMAL`` or ``OPTIMAL_INACCURATE``.
    iterations : int
        Solver iterations.
    solver : str
        Solver name.
    solve_time_ms : float
        Wall time of problem construction and solve (milliseconds).
    constraints_satisfied : bool
        Whether ``weights`` satisfy every constraint within ``tolerance``, checked on the weights.
    violations : tuple of str
        Human-readable constraint violations (empty when satisfied).
    """

    weights: FloatArray
    performance: PortfolioPerformance
    objective_value: float
    status: str
    iterations: int
    solver: str
    solve_time_ms: float
    constraints_satisfied: bool
    violations: tuple[str, ...] = field(default=())
    fallback_used: bool = False
    """Whether the primary solver failed and the fallback solver produced the answer."""
    solve_path: str = ""
    """Which algorithm answered, e.g. ``CONIC`` (cvxpy + Clarabel), ``ACTIVE_SET``, ``CLARABEL_DIRECT`` (Clarabel on
    directly assembled matrices), ``DENSE_IPM`` (the engine's dense interior-point method),
    ``MIP_OUTER_APPROXIMATION``, ``JAX_NEWTON``, ``CLOSED_FORM``."""
    relaxations: tuple[Relaxation, ...] = ()
    """Constraints relaxed to reach a feasible problem (``PortfolioProblem.allow_relaxation``); empty otherwise."""
    betas: FloatArray | None = None
    """Betas (N,) used by the beta constraint (given or estimated against the market series)."""
