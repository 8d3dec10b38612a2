"""A portfolio's optimization configuration in the application's terms: frozen dataclasses of plain values.

This is what ``OptimizationService`` and the stores (``command_side.optimization_store.OptimizationStore``) take and
return; the adapter converts it from and to ``stratopt.v1.OptimizationConfiguration``
(``command_side.configuration_messages``) and ``command_side.configuration_records`` writes and reads its stored
JSON. Every value mirrors what is stored (``docs/storage_schema.md``): attribute names are the stored keys, numbers
are floats in the stored unit, an unset optional value is ``None``, an enumeration is its stored short name
(``""`` when unset; ``objective`` and ``method`` keep the full names of their text columns), maps keyed by symbol
are ``dict``s and lists are tuples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "BlackLittermanInputs",
    "MultiObjectiveWeights",
    "OptimizationConfiguration",
    "OptimizationConstraints",
    "RecomputePolicy",
    "RiskParameters",
    "RobustParameters",
    "SectorLimit",
    "Strategy",
    "View",
    "WeightBounds",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    """A configured strategy: identity and groups only (returns and current weights belong to a run)."""

    symbol: str
    """Instrument symbol (the symbol of its stored prices)."""
    sector: str = ""
    """Sector (or any group) used by sector limits; '' = none."""
    classifications: dict[str, str] = field(default_factory=dict)
    """Group of the strategy in further schemes, by scheme."""

    def __reduce__(self) -> tuple[Callable[[str, str, dict[str, str]], Strategy], tuple[str, str, dict[str, str]]]:
        """Pickled as its three values (a slotted dataclass pickles through Python code per field, 20x slower)."""
        return _strategy, (self.symbol, self.sector, self.classifications)


def _strategy(symbol: str, sector: str, classifications: dict[str, str]) -> Strategy:
    """A :class:`Strategy` of its values (``Strategy.__reduce__``)."""
    return Strategy(symbol=symbol, sector=sector, classifications=classifications)


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightBounds:
    """Per-strategy weight bounds (fractions); None = the global bound."""

    min_weight: float | None = None
    max_weight: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SectorLimit:
    """Bounds on the total weight of a sector, or of a group within a classification scheme."""

    sector: str = ""
    """Sector name, or group name within the scheme."""
    min_weight: float | None = None
    """Minimum total weight (fraction); None = none."""
    max_weight: float | None = None
    """Maximum total weight (fraction); None = none."""
    scheme: str = ""
    """Classification scheme; '' = the strategies' sector."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationConstraints:
    """The configured constraints (units as stored; None = not set)."""

    min_weight: float | None = None
    max_weight: float | None = None
    strategy_bounds: dict[str, WeightBounds] = field(default_factory=dict)
    sector_limits: tuple[SectorLimit, ...] = ()
    min_return: float | None = None
    max_volatility: float | None = None
    turnover_limit: float | None = None
    turnover_caps: dict[str, float] = field(default_factory=dict)
    leverage_limit: float | None = None
    transaction_costs_bps: dict[str, float] = field(default_factory=dict)
    benchmark_weights: dict[str, float] = field(default_factory=dict)
    tracking_error_limit: float | None = None
    betas: dict[str, float] = field(default_factory=dict)
    beta_tolerance: float | None = None
    max_holdings: int | None = None
    min_position_weight: float | None = None
    min_net_exposure: float | None = None
    max_net_exposure: float | None = None
    allow_relaxation: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustParameters:
    """Uncertainty set of robust mean-variance."""

    uncertainty_set: str = ""
    """``BOX``, ``ELLIPSOIDAL`` or '' (default)."""
    confidence_level: float | None = None
    observations: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MultiObjectiveWeights:
    """Weights of the multi-objective method's terms; None = the term's default."""

    return_weight: float | None = None
    variance_weight: float | None = None
    turnover_weight: float | None = None
    l2_weight: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskParameters:
    """Estimator and objective parameters (enumerations as stored short names, '' = default)."""

    risk_free_rate: float = 0.0
    risk_aversion: float | None = None
    periods_per_year: int = 0
    returns_estimator: str = ""
    covariance_estimator: str = ""
    ema_span: int = 0
    compounding: bool | None = None
    missing_data_policy: str = ""
    risk_measure: str = ""
    confidence_level: float | None = None
    linkage_method: str = ""
    risk_budgets: dict[str, float] = field(default_factory=dict)
    robust: RobustParameters | None = None
    multi_objective: MultiObjectiveWeights | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class View:
    """A Black-Litterman view: a portfolio by symbol and its expected return."""

    weights: dict[str, float] = field(default_factory=dict)
    expected_return: float = 0.0
    confidence: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackLittermanInputs:
    """Black-Litterman prior and views."""

    market_caps: dict[str, float] = field(default_factory=dict)
    prior_returns: dict[str, float] = field(default_factory=dict)
    risk_aversion: float | None = None
    tau: float | None = None
    views: tuple[View, ...] = ()
    omega: tuple[float, ...] = ()
    """View uncertainty Omega, row-major K x K (() = default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecomputePolicy:
    """When a configuration re-runs by itself (``command_side.recompute``)."""

    on_market_data: bool = False
    """Re-run when bars of one of its strategies (or of its market symbol) are ingested."""
    debounce_seconds: float | None = None
    """Seconds after the last ingest before the re-run; None = :data:`DEFAULT_DEBOUNCE_SECONDS`."""
    schedule_interval_seconds: float = 0.0
    """Seconds between scheduled re-runs (slots aligned on the Unix epoch); 0 = no schedule."""
    drift_threshold: float | None = None
    """Re-run when the stored holdings' two-way drift from the latest run's weights exceeds it; None = never."""


DEFAULT_DEBOUNCE_SECONDS = 5.0
"""The debounce of a policy that sets none (also the default in the database's enqueue statement)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationConfiguration:
    """A portfolio's configuration: everything a run needs but its input data, versioned by the stores."""

    portfolio_id: str
    """Portfolio identifier."""
    version: int = 0
    """Version (1, 2, ...); 0 until a store assigns it."""
    strategies: tuple[Strategy, ...] = ()
    """The strategies, in the order of every array of a run."""
    objective: str = "OBJECTIVE_UNSPECIFIED"
    """The objective's name, as stored (``OBJECTIVE_MAX_SHARPE``, ...)."""
    method: str = "OPTIMIZATION_METHOD_UNSPECIFIED"
    """The method's name, as stored (``OPTIMIZATION_METHOD_MEAN_VARIANCE``, ...)."""
    constraints: OptimizationConstraints = field(default_factory=OptimizationConstraints)
    """Constraints (the default instance = none set)."""
    risk_parameters: RiskParameters = field(default_factory=RiskParameters)
    """Estimator and objective parameters (the default instance = none set)."""
    black_litterman: BlackLittermanInputs | None = None
    """Black-Litterman prior and views (method Black-Litterman only); None = unset."""
    enabled: bool = False
    """Whether RunConfiguration may run it."""
    lookback_periods: int = 0
    """Most recent return periods of stored prices a re-run uses (0 = all)."""
    market_symbol: str = ""
    """Market series of CAPM and betas ('' = none)."""
    recompute: RecomputePolicy | None = None
    """When the server re-runs it by itself; None = never (only RunConfiguration runs it)."""
    created_at: datetime | None = None
    """When this version was stored (UTC); None until stored."""
