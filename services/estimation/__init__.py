"""Estimation: annualised moments from return histories, betas, and the Black-Litterman posterior.

Public names only; the implementation lives in private modules (``_moments``: returns and covariance estimators,
``_black_litterman``: the Black-Litterman model on PyPortfolioOpt's formulas).
"""

from services.estimation._black_litterman import (
    DEFAULT_RISK_AVERSION,
    DEFAULT_TAU,
    BlackLittermanPosterior,
    BlackLittermanSpec,
    OmegaMethod,
    black_litterman_posterior,
    implied_risk_aversion,
    market_prior_returns,
)
from services.estimation._moments import (
    estimate_betas,
    estimate_moments,
    exponential_covariance,
    hrp_returns_inputs,
    nearest_psd,
    pairwise_correlation,
    pairwise_covariance,
    prices_to_returns,
    returns_between_observations,
    validate_moments,
)

__all__ = [
    "DEFAULT_RISK_AVERSION",
    "DEFAULT_TAU",
    "BlackLittermanPosterior",
    "BlackLittermanSpec",
    "OmegaMethod",
    "black_litterman_posterior",
    "estimate_betas",
    "estimate_moments",
    "exponential_covariance",
    "hrp_returns_inputs",
    "implied_risk_aversion",
    "market_prior_returns",
    "nearest_psd",
    "pairwise_correlation",
    "pairwise_covariance",
    "prices_to_returns",
    "returns_between_observations",
    "validate_moments",
]
