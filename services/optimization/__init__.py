"""Optimization: from moments (or scenarios) and constraints to portfolio weights.

Public names only; the implementation lives in private modules, one per method or backend.
"""

from services.optimization._cardinality import optimize_cardinality
from services.optimization._hierarchical import (
    LINKAGE_METHODS,
    HrpResult,
    correlation_distance,
    hierarchical_risk_parity,
)
from services.optimization._mean_variance import (
    HELD_THRESHOLD,
    check_constraints,
    max_achievable_return,
    objective_value_of,
    optimize_mean_variance,
    portfolio_performance,
)
from services.optimization._relaxation import find_relaxation
from services.optimization._risk_budgeting import (
    RiskParityResult,
    bucket_size,
    check_no_binding_bounds,
    risk_budgeting,
    risk_contributions,
    warm_up,
)
from services.optimization._risk_measures import (
    RiskMeasure,
    conditional_drawdown_at_risk,
    conditional_value_at_risk,
    drawdowns,
    mean_absolute_deviation,
    optimize_risk_measure,
    risk_measure_value,
)
from services.optimization._robust import MuUncertaintySet, Uncertainty, mu_uncertainty_set, optimize_robust

__all__ = [
    "HELD_THRESHOLD",
    "LINKAGE_METHODS",
    "HrpResult",
    "MuUncertaintySet",
    "RiskMeasure",
    "RiskParityResult",
    "Uncertainty",
    "bucket_size",
    "check_constraints",
    "check_no_binding_bounds",
    "conditional_drawdown_at_risk",
    "conditional_value_at_risk",
    "correlation_distance",
    "drawdowns",
    "find_relaxation",
    "hierarchical_risk_parity",
    "max_achievable_return",
    "mean_absolute_deviation",
    "mu_uncertainty_set",
    "objective_value_of",
    "optimize_cardinality",
    "optimize_mean_variance",
    "optimize_risk_measure",
    "optimize_robust",
    "portfolio_performance",
    "risk_budgeting",
    "risk_contributions",
    "risk_measure_value",
    "warm_up",
]
