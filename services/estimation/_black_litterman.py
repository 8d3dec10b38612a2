"""Black-Litterman posterior moments (Black and Litterman, 1992) built on PyPortfolioOpt's ``black_litterman``.

With Σ the annualised covariance of N strategies, π the prior expected returns, P (K, N) the view portfolios,
Q (K,) their expected returns, Ω (K, K) the uncertainty of the views and τ the scale of the uncertainty of the
prior mean:

- prior: π = δ Σ w_mkt + r_f from market capitalisations (the reverse optimisation of the market portfolio,
  ``pypfopt.black_litterman.market_implied_prior_returns``), or caller-given prior returns;
- risk aversion: δ given, or implied by a market series as δ = (E[r_m] − r_f) / σ_m² with arithmetic annualised
  moments (``pypfopt.black_litterman.market_implied_risk_aversion``);
- Ω: given, Idzorek's (2005) confidences through Walters' closed form ω_k = τ (1 − c_k)/c_k p_k Σ p_kᵀ, or by
  default He and Litterman's (1999) Ω = diag(τ P Σ Pᵀ);
- posterior mean μ_bl = [(τΣ)⁻¹ + PᵀΩ⁻¹P]⁻¹ [(τΣ)⁻¹π + PᵀΩ⁻¹Q] = π + τΣPᵀ(PτΣPᵀ + Ω)⁻¹(Q − Pπ);
- posterior covariance Σ_bl = Σ + M with M = [(τΣ)⁻¹ + PᵀΩ⁻¹P]⁻¹ = τΣ − τΣPᵀ(PτΣPᵀ + Ω)⁻¹PτΣ, the uncertainty
  of the posterior mean (He and Litterman, 1999).

``pypfopt.black_litterman.BlackLittermanModel`` evaluates the right-hand (Woodbury) forms, which need
A = PτΣPᵀ + Ω invertible but not Ω: a view held with 100 % confidence (ω_k = 0) is met exactly. The engine then
optimises on (μ_bl, Σ_bl) with the requested objective.

References
----------
Black, F. and Litterman, R. (1992). Global portfolio optimization. Financial Analysts Journal 48(5), 28-43.
He, G. and Litterman, R. (1999). The intuition behind Black-Litterman model portfolios. Goldman Sachs.
Idzorek, T. (2005). A step-by-step guide to the Black-Litterman model. Zephyr Associates.
Walters, J. (2014). The Black-Litterman model in detail. SSRN 1314585.
PyPortfolioOpt: Martin, R. A. (2021). PyPortfolioOpt: portfolio optimization in Python. JOSS 6(61), 3066.

Why over 500 lines: the posterior, the implied risk aversion and the market prior each validate their own inputs
naming the request's fields; the formulas themselves come from PyPortfolioOpt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
from pypfopt.black_litterman import (
    BlackLittermanModel,
    market_implied_prior_returns,
    market_implied_risk_aversion,
)

from services.errors import InvalidInputError
from services.estimation._moments import validate_moments
from services.types import FloatArray, Moments

DEFAULT_TAU = 0.05
"""Scale τ of the prior-mean uncertainty τΣ (PyPortfolioOpt's and skfolio's default)."""
DEFAULT_RISK_AVERSION = 1.0
"""δ when neither a risk aversion nor a market series is given (PyPortfolioOpt's default)."""
_SINGULAR_RTOL = 1e-12
"""A = PτΣPᵀ + Ω counts as singular when its smallest eigenvalue is at most this times its largest."""
_SYMMETRY_RTOL = 1e-10
"""Relative tolerance of the symmetry and positive-semidefiniteness checks of Ω."""


class OmegaMethod(StrEnum):
    """How the view uncertainty Ω was obtained."""

    GIVEN = "GIVEN"
    """Given by the caller."""
    IDZOREK = "IDZOREK"
    """From Idzorek's view confidences (Walters' closed form)."""
    HE_LITTERMAN = "HE_LITTERMAN"
    """He and Litterman's default diag(τ P Σ Pᵀ)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackLittermanSpec:
    """Inputs of a Black-Litterman posterior over N strategies and K views.

    Exactly one of ``market_caps`` and ``prior_returns`` is set; at most one of ``omega`` and
    ``view_confidences``; at most one of ``market_returns`` and ``market_prices``.

    Attributes
    ----------
    covariance : ndarray of shape (N, N)
        Annualised covariance Σ, symmetric positive semidefinite.
    picking_matrix : ndarray of shape (K, N)
        View portfolios P: a row with a single 1 is an absolute view, a row with +1 and −1 a relative one; any
        real non-zero row is allowed. K = 0 (shape (0, N)) means no views.
    view_returns : ndarray of shape (K,)
        Annualised expected return Q of each view portfolio (decimal).
    market_caps : ndarray of shape (N,) or None
        Market capitalisations (any currency unit, ≥ 0, not all 0) for the market-implied prior
        π = δ Σ w_mkt + r_f with w_mkt = caps / Σ caps.
    prior_returns : ndarray of shape (N,) or None
        Annualised prior expected returns π (decimal), used as given.
    risk_aversion : float or None
        Risk aversion δ > 0. When None, δ is implied by ``market_returns`` or ``market_prices``, else
        ``DEFAULT_RISK_AVERSION``. A given δ takes precedence over a market series.
    market_returns : ndarray of shape (T,) or None
        Periodic simple returns of the market index (T ≥ 2), for the implied δ.
    market_prices : ndarray of shape (T + 1,) or None
        Prices of the market index (T + 1 ≥ 3, positive), for the implied δ.
    periods_per_year : int
        Market-series periods per year used to annualise its mean and variance.
    risk_free_rate : float
        Annualised risk-free rate r_f (decimal): added to the market-implied prior (whose δΣw_mkt is an excess
        return) and subtracted from the market's mean return in the implied δ. Q and π are total returns.
    omega : ndarray of shape (K, K) or None
        View uncertainty Ω (annualised variance units), symmetric positive semidefinite, diagonal or full.
    view_confidences : ndarray of shape (K,) or None
        Idzorek confidences c_k in [0, 1] (1 = the view is met exactly, 0 = the view is ignored).
    tau : float
        τ in (0, 1], the scale of the prior-mean uncertainty τΣ.
    """

    covariance: FloatArray
    picking_matrix: FloatArray
    view_returns: FloatArray
    market_caps: FloatArray | None = None
    prior_returns: FloatArray | None = None
    risk_aversion: float | None = None
    market_returns: FloatArray | None = None
    market_prices: FloatArray | None = None
    periods_per_year: int = 252
    risk_free_rate: float = 0.0
    omega: FloatArray | None = None
    view_confidences: FloatArray | None = None
    tau: float = DEFAULT_TAU


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackLittermanPosterior:
    """Posterior moments of a Black-Litterman model and the parameters that produced them.

    Attributes
    ----------
    posterior_returns : ndarray of shape (N,)
        Annualised posterior expected returns μ_bl (decimal).
    posterior_covariance : ndarray of shape (N, N)
        Annualised posterior covariance Σ_bl = Σ + M, M the uncertainty of μ_bl (symmetric).
    prior_returns : ndarray of shape (N,)
        Annualised prior expected returns π (decimal), r_f included for a market-implied prior.
    risk_aversion : float
        δ used (given, implied by the market series, or ``DEFAULT_RISK_AVERSION``).
    tau : float
        τ used.
    omega : ndarray of shape (K, K)
        Ω used (annualised variance units).
    omega_method : OmegaMethod
        How Ω was obtained.
    """

    posterior_returns: FloatArray
    posterior_covariance: FloatArray
    prior_returns: FloatArray
    risk_aversion: float
    tau: float
    omega: FloatArray
    omega_method: OmegaMethod

    @property
    def moments(self) -> Moments:
        """The posterior as the optimizer's ``Moments`` (μ_bl, Σ_bl)."""
        return Moments(expected_returns=self.posterior_returns, covariance=self.posterior_covariance)


def _as_float_array(values: FloatArray, field: str) -> FloatArray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError.for_field(field, "must be numbers") from exc


def _first_non_finite(values: FloatArray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(values.ravel()))
    return int(bad[0]) if bad.size else None


def implied_risk_aversion(
    *,
    market_returns: FloatArray | None = None,
    market_prices: FloatArray | None = None,
    periods_per_year: int = 252,
    risk_free_rate: float = 0.0,
) -> float:
    """Market-implied risk aversion δ = (E[r_m] − r_f) / σ_m² of a market index (the market price of risk).

    E[r_m] is the arithmetic mean of the periodic simple returns times ``periods_per_year`` and σ_m² their
    sample variance (ddof = 1) times ``periods_per_year``, as in
    ``pypfopt.black_litterman.market_implied_risk_aversion``, which computes it from prices: returns are
    compounded into prices (starting at 1) before the call.

    Parameters
    ----------
    market_returns : ndarray of shape (T,), optional
        Periodic simple returns of the index, T ≥ 2, each finite and > −1.
    market_prices : ndarray of shape (T + 1,), optional
        Index prices, T + 1 ≥ 3, each finite and > 0. Exactly one of the two series is given.
    periods_per_year : int
        Periods per year of the series (252 for daily).
    risk_free_rate : float
        Annualised risk-free rate (decimal).

    Returns
    -------
    float
        δ > 0.

    Raises
    ------
    InvalidInputError
        Naming ``market_returns[t]`` or ``market_prices[t]`` (non-finite,
        return ≤ −1, price ≤ 0), the series itself (too short, both or neither given, zero variance, or a mean
        excess return ≤ 0, which implies δ ≤ 0), ``periods_per_year`` (≤ 0) or ``risk_free_rate``
        (non-finite).
    """
    if periods_per_year <= 0:
        raise InvalidInputError.for_field("periods_per_year", "must be positive")
    if not np.isfinite(risk_free_rate):
        raise InvalidInputError.for_field("risk_free_rate", "must be finite")
    if (market_returns is None) == (market_prices is None):
        raise InvalidInputError.for_field("market_returns", "give exactly one of market returns or market prices")
    if market_returns is not None:
        field = "market_returns"
        returns = _as_float_array(market_returns, field)
        if returns.ndim != 1 or returns.size < 2:
            raise InvalidInputError.for_field(
                field, f"needs at least 2 returns in one series; got shape {returns.shape}"
            )
        bad = _first_non_finite(returns)
        if bad is not None:
            raise InvalidInputError.for_field(f"{field}[{bad}]", "must be finite")
        ruined = np.flatnonzero(returns <= -1.0)
        if ruined.size:
            raise InvalidInputError.for_field(f"{field}[{int(ruined[0])}]", "a simple return must be above -1")
        with np.errstate(over="ignore"):
            prices = np.concatenate(([1.0], np.cumprod(1.0 + returns)))
        if not np.all(np.isfinite(prices) & (prices > 0.0)):
            raise InvalidInputError.for_field(field, "compounds beyond the floating-point range")
    else:
        assert market_prices is not None
        field = "market_prices"
        prices = _as_float_array(market_prices, field)
        if prices.ndim != 1 or prices.size < 3:
            raise InvalidInputError.for_field(field, f"needs at least 3 prices in one series; got shape {prices.shape}")
        bad = _first_non_finite(prices)
        if bad is not None:
            raise InvalidInputError.for_field(f"{field}[{bad}]", "must be finite")
        non_positive = np.flatnonzero(prices <= 0.0)
        if non_positive.size:
            raise InvalidInputError.for_field(f"{field}[{int(non_positive[0])}]", "a price must be positive")
    with np.errstate(divide="ignore", invalid="ignore"):  # zero variance: reported below
        delta = float(
            market_implied_risk_aversion(pd.Series(prices), frequency=periods_per_year, risk_free_rate=risk_free_rate)
        )
    if not np.isfinite(delta):
        raise InvalidInputError.for_field(field, "has zero variance: the implied risk aversion is undefined")
    if delta <= 0.0:
        raise InvalidInputError.for_field(
            field,
            f"implies a risk aversion of {delta:.6g} <= 0 (mean market return at or below the risk-free rate "
            f"{risk_free_rate:g}); give black_litterman.risk_aversion instead",
        )
    return delta


def market_prior_returns(
    market_caps: FloatArray, risk_aversion: float, covariance: FloatArray, risk_free_rate: float = 0.0
) -> FloatArray:
    """Market-implied prior π = δ Σ w_mkt + r_f, w_mkt = caps / Σ caps (reverse optimisation).

    ``pypfopt.black_litterman.market_implied_prior_returns``: δΣw_mkt is the excess return that makes the
    market portfolio optimal for a mean-variance investor with risk aversion δ; r_f is added to give total
    returns.

    Parameters
    ----------
    market_caps : ndarray of shape (N,)
        Market capitalisations, validated (≥ 0, not all 0).
    risk_aversion : float
        δ > 0.
    covariance : ndarray of shape (N, N)
        Annualised covariance Σ.
    risk_free_rate : float
        Annualised risk-free rate (decimal).

    Returns
    -------
    ndarray of shape (N,)
        Annualised prior expected returns π (decimal).
    """
    n_assets = covariance.shape[0]
    prior = market_implied_prior_returns(
        pd.Series(market_caps, index=range(n_assets)),
        risk_aversion,
        pd.DataFrame(covariance, index=range(n_assets), columns=range(n_assets)),
        risk_free_rate,
    )
    return np.asarray(prior, dtype=np.float64)


def _validated_covariance(spec: BlackLittermanSpec) -> FloatArray:
    covariance = _as_float_array(spec.covariance, "covariance")
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
        raise InvalidInputError.for_field("covariance", f"must be square; got shape {covariance.shape}")
    n_assets = covariance.shape[0]
    validate_moments(Moments(expected_returns=np.zeros(n_assets), covariance=covariance), n_assets)
    return covariance


def _validated_scalars(spec: BlackLittermanSpec) -> None:
    if not (np.isfinite(spec.tau) and 0.0 < spec.tau <= 1.0):
        raise InvalidInputError.for_field("black_litterman.tau", f"must be in (0, 1]; got {spec.tau:g}")
    if spec.risk_aversion is not None and not (np.isfinite(spec.risk_aversion) and spec.risk_aversion > 0.0):
        raise InvalidInputError.for_field(
            "black_litterman.risk_aversion", f"must be positive and finite; got {spec.risk_aversion:g}"
        )
    if not np.isfinite(spec.risk_free_rate):
        raise InvalidInputError.for_field("risk_free_rate", "must be finite")


def _risk_aversion(spec: BlackLittermanSpec) -> float:
    if spec.risk_aversion is not None:
        return float(spec.risk_aversion)
    if spec.market_returns is None and spec.market_prices is None:
        return DEFAULT_RISK_AVERSION
    if spec.market_returns is not None and spec.market_prices is not None:
        raise InvalidInputError.for_field("market_prices", "give market returns or market prices, not both")
    return implied_risk_aversion(
        market_returns=spec.market_returns,
        market_prices=spec.market_prices,
        periods_per_year=spec.periods_per_year,
        risk_free_rate=spec.risk_free_rate,
    )


def _prior(spec: BlackLittermanSpec, covariance: FloatArray, risk_aversion: float) -> FloatArray:
    n_assets = covariance.shape[0]
    if (spec.market_caps is None) == (spec.prior_returns is None):
        raise InvalidInputError.for_field(
            "black_litterman.market_caps", "give exactly one of market_caps or prior_returns"
        )
    if spec.prior_returns is not None:
        field = "black_litterman.prior_returns"
        prior = _as_float_array(spec.prior_returns, field)
        if prior.shape != (n_assets,):
            raise InvalidInputError.for_field(field, f"has shape {prior.shape}; expected ({n_assets},)")
        bad = _first_non_finite(prior)
        if bad is not None:
            raise InvalidInputError.for_field(f"{field}[{bad}]", "must be finite")
        return prior.copy()
    assert spec.market_caps is not None
    field = "black_litterman.market_caps"
    caps = _as_float_array(spec.market_caps, field)
    if caps.shape != (n_assets,):
        raise InvalidInputError.for_field(field, f"has shape {caps.shape}; expected ({n_assets},)")
    bad = _first_non_finite(caps)
    if bad is not None:
        raise InvalidInputError.for_field(f"{field}[{bad}]", "must be finite")
    negative = np.flatnonzero(caps < 0.0)
    if negative.size:
        raise InvalidInputError.for_field(f"{field}[{int(negative[0])}]", "must not be negative")
    if not caps.sum() > 0.0:
        raise InvalidInputError.for_field(field, "are all zero: the market weights are undefined")
    return market_prior_returns(caps, risk_aversion, covariance, spec.risk_free_rate)


def _views(spec: BlackLittermanSpec, n_assets: int) -> tuple[FloatArray, FloatArray]:
    field, returns_field = "black_litterman.picking_matrix", "black_litterman.view_returns"
    picking = _as_float_array(spec.picking_matrix, field)
    view_returns = _as_float_array(spec.view_returns, returns_field)
    if picking.ndim != 2 or picking.shape[1] != n_assets:
        raise InvalidInputError.for_field(
            field, f"view portfolios have shape {picking.shape}; expected (K, {n_assets})"
        )
    n_views = picking.shape[0]
    if view_returns.shape != (n_views,):
        raise InvalidInputError.for_field(
            returns_field, f"{view_returns.size} view returns for {n_views} view portfolios"
        )
    for k in range(n_views):
        if not np.all(np.isfinite(picking[k])):
            raise InvalidInputError.for_field(f"{field}[{k}]", "view portfolio weights must be finite")
        if not np.any(picking[k] != 0.0):
            raise InvalidInputError.for_field(f"{field}[{k}]", "view portfolio weights are all zero")
        if not np.isfinite(view_returns[k]):
            raise InvalidInputError.for_field(f"{returns_field}[{k}]", "must be finite")
    return picking, view_returns


def _omega_argument(spec: BlackLittermanSpec, n_views: int) -> tuple[FloatArray | str, FloatArray | None, OmegaMethod]:
    """PyPortfolioOpt's ``omega`` and ``view_confidences`` arguments, validated, and the method's name."""
    if spec.omega is not None and spec.view_confidences is not None:
        raise InvalidInputError.for_field("black_litterman.omega", "give omega or view confidences, not both")
    if spec.view_confidences is not None:
        field = "black_litterman.view_confidences"
        confidences = _as_float_array(spec.view_confidences, field)
        if confidences.shape != (n_views,):
            raise InvalidInputError.for_field(field, f"has {confidences.size} values for {n_views} views")
        for k, confidence in enumerate(confidences):
            # NaN fails both comparisons: PyPortfolioOpt lets it through into a NaN Ω.
            if not 0.0 <= confidence <= 1.0:
                raise InvalidInputError.for_field(f"{field}[{k}]", f"must be in [0, 1]; got {confidence:g}")
        return "idzorek", confidences, OmegaMethod.IDZOREK
    if spec.omega is not None:
        field = "black_litterman.omega"
        omega = _as_float_array(spec.omega, field)
        if omega.shape != (n_views, n_views):
            raise InvalidInputError.for_field(
                field, f"has shape {omega.shape}; expected {n_views}x{n_views} for {n_views} views"
            )
        bad = _first_non_finite(omega)
        if bad is not None:
            raise InvalidInputError.for_field(field, f"entry {bad} (row-major) must be finite")
        if n_views:
            scale = max(float(np.max(np.abs(omega))), 1e-300)
            if not np.allclose(omega, omega.T, rtol=0.0, atol=_SYMMETRY_RTOL * scale):
                i, j = np.unravel_index(int(np.argmax(np.abs(omega - omega.T))), omega.shape)
                raise InvalidInputError.for_field(field, f"is not symmetric: entry ({i},{j}) differs from ({j},{i})")
            smallest = float(np.linalg.eigvalsh((omega + omega.T) / 2.0)[0])
            if smallest < -_SYMMETRY_RTOL * scale:
                raise InvalidInputError.for_field(
                    field, f"is not positive semidefinite (smallest eigenvalue {smallest:.3g})"
                )
        return (omega + omega.T) / 2.0, None, OmegaMethod.GIVEN
    return "default", None, OmegaMethod.HE_LITTERMAN


def black_litterman_posterior(spec: BlackLittermanSpec) -> BlackLittermanPosterior:
    """Posterior expected returns and covariance of the Black-Litterman model.

    Validates the inputs, builds the prior (given, or market-implied with δ given or implied by the market
    series) and evaluates ``pypfopt.black_litterman.BlackLittermanModel``'s ``bl_returns`` and ``bl_cov``:
    μ_bl = π + τΣPᵀA⁻¹(Q − Pπ) and Σ_bl = Σ + τΣ − τΣPᵀA⁻¹PτΣ with A = PτΣPᵀ + Ω.

    Without views μ_bl = π and Σ_bl = (1 + τ)Σ. Idzorek's method is PyPortfolioOpt's closed form: for a single
    view of confidence c, Pμ_bl moves the fraction c of the way from Pπ to Q, which is Idzorek's tilt of the
    unconstrained weights (δΣ)⁻¹μ_bl; a confidence of 1 meets the view exactly (ω = 0) and a confidence of 0
    sets ω = 10⁶, which leaves the prior all but unchanged. With He-Litterman's or Idzorek's Ω (both ∝ τ) τ
    cancels from μ_bl: it then only scales the uncertainty M in Σ_bl.

    Parameters
    ----------
    spec : BlackLittermanSpec
        Covariance (N, N), prior, views (K, N) and (K,), uncertainty and τ; annualised decimals.

    Returns
    -------
    BlackLittermanPosterior
        μ_bl (N,), Σ_bl (N, N), π (N,), δ, τ and Ω (K, K).

    Raises
    ------
    InvalidInputError
        Naming the field by the spec's attribute: ``covariance`` (not square, non-finite, asymmetric, not PSD),
        ``risk_free_rate``, and the Black-Litterman inputs under ``black_litterman.`` (as in
        ``MethodSettings.black_litterman``): ``black_litterman.tau`` (outside (0, 1]; PyPortfolioOpt refuses
        τ > 1), ``black_litterman.risk_aversion`` (≤ 0), ``black_litterman.market_caps[i]`` (negative,
        non-finite) or ``black_litterman.market_caps`` (shape, all zero, or both/neither of market caps and prior
        returns), ``black_litterman.prior_returns[i]`` (non-finite), ``black_litterman.picking_matrix[k]`` (a view
        portfolio all zero or non-finite), ``black_litterman.view_returns[k]`` (non-finite),
        ``black_litterman.picking_matrix`` / ``black_litterman.view_returns`` (shapes),
        ``black_litterman.view_confidences[k]`` (outside [0, 1]), ``black_litterman.omega`` (not K×K, non-finite,
        asymmetric, not PSD, or given with confidences), the market series (``market_returns`` /
        ``market_prices``, see ``implied_risk_aversion``), and the source of Ω when A = PτΣPᵀ + Ω is singular
        (linearly dependent views held with certainty, or a certain view on a zero-variance portfolio).
    """
    covariance = _validated_covariance(spec)
    n_assets = covariance.shape[0]
    _validated_scalars(spec)
    picking, view_returns = _views(spec, n_assets)
    n_views = picking.shape[0]
    omega_argument, confidences, omega_method = _omega_argument(spec, n_views)
    risk_aversion = _risk_aversion(spec)
    prior = _prior(spec, covariance, risk_aversion)

    model = BlackLittermanModel(
        covariance,
        pi=prior,
        Q=view_returns,
        P=picking,
        omega=omega_argument,
        view_confidences=confidences,
        tau=spec.tau,
        risk_aversion=risk_aversion,
    )
    omega = np.asarray(model.omega, dtype=np.float64)
    if n_views:
        # PyPortfolioOpt falls back to least squares on a singular A: refuse instead.
        system = spec.tau * picking @ covariance @ picking.T + omega
        eigenvalues = np.linalg.eigvalsh((system + system.T) / 2.0)
        if eigenvalues[0] <= _SINGULAR_RTOL * max(float(eigenvalues[-1]), 0.0):
            field = {
                OmegaMethod.GIVEN: "black_litterman.omega",
                OmegaMethod.IDZOREK: "black_litterman.view_confidences",
                OmegaMethod.HE_LITTERMAN: "black_litterman.picking_matrix",
            }[omega_method]
            raise InvalidInputError.for_field(
                field,
                "the views are linearly dependent where their uncertainty is zero (or a view portfolio has zero "
                "variance): PτΣPᵀ + Ω is singular",
            )
    posterior_returns = np.asarray(model.bl_returns(), dtype=np.float64)
    posterior_covariance = np.asarray(model.bl_cov(), dtype=np.float64)
    return BlackLittermanPosterior(
        posterior_returns=posterior_returns,
        posterior_covariance=(posterior_covariance + posterior_covariance.T) / 2.0,
        prior_returns=prior,
        risk_aversion=risk_aversion,
        tau=float(spec.tau),
        omega=omega,
        omega_method=omega_method,
    )
