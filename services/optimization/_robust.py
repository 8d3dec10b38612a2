"""Robust mean-variance optimization: the worst case of the expected returns over an uncertainty set.

The sample mean μ̂ of T periodic returns estimates μ with error covariance Σ_p / T (Σ_p the per-period covariance).
In the annualised units of ``Moments`` (μ = P·μ_p, Σ = P·Σ_p, P periods per year) the estimation error of μ̂ has
covariance ``Σ_μ = Σ · P / T``: the standard error of an annualised mean is σ_i / sqrt(T / P). Two sets at
confidence c (Tütüncü and Koenig, 2004; Schöttle and Werner, 2009):

- box: ``|μ_i − μ̂_i| ≤ δ_i``, ``δ_i = z_{(1+c)/2} · sqrt((Σ_μ)_ii)`` (a two-sided normal interval per strategy);
  worst-case return ``μ̂ᵀw − δᵀ|w|``;
- ellipsoidal: ``(μ − μ̂)ᵀ Σ_μ⁻¹ (μ − μ̂) ≤ κ²``, ``κ = sqrt(χ²_N⁻¹(c))`` (the confidence region of a normal mean);
  worst-case return ``μ̂ᵀw − κ ‖Lᵀw‖`` with L Lᵀ = Σ_μ. As Σ_μ is proportional to Σ, this is
  ``μ̂ᵀw − κ sqrt(P/T) σ(w)``: the penalty is a multiple of the portfolio's volatility.

The ellipsoid is skfolio's ``EmpiricalMuUncertaintySet(diagonal=False)`` (radius sqrt(χ²_N(c)), shape Σ_p / T),
scaled to annual units. The box is Riskfolio-Lib's ``wc_stats(box="n")`` (δ = z_{1−q/2} sqrt(diag(Σ_p)/T), with
q = 1 − c); skfolio has no empirical box (its ``diagonal=True`` is an ellipsoid with a diagonal shape, radius
sqrt(χ²_N(c)), and dual norm 2, not a box).

Formulations (ρ(w): the worst-case penalty δᵀ|w| or κ‖Lᵀw‖, Σ = F Fᵀ, constraints as in
``_constraints``):

- quadratic utility: maximise μ̂ᵀw − ρ(w) − δ_ra/2 wᵀΣw;
- max return: maximise μ̂ᵀw − ρ(w) s.t. [‖Fᵀw‖ ≤ σ_max];
- min volatility: minimise wᵀΣw s.t. [μ̂ᵀw − ρ(w) ≥ r_min];
- max Sharpe: maximise (μ̂ᵀw − ρ(w) − r_f) / ‖Fᵀw‖. With y = κw (κ > 0) numerator and denominator are positively
  homogeneous (r_f = r_f·1ᵀw), so fixing the numerator at ≥ 1 gives: minimise yᵀΣy s.t.
  μ̂ᵀy − ρ(y) − r_f κ ≥ 1 (concave ≥ constant: convex), 1ᵀy = κ, κ ≥ 0, lκ ≤ y ≤ uκ, sector bounds times κ,
  [μ̂ᵀy − ρ(y) ≥ r_min κ], [‖Fᵀy‖ ≤ σ_max κ]; w = y / κ. At the optimum the numerator constraint binds (else
  shrinking y lowers yᵀΣy), and the program is infeasible exactly when no portfolio has a positive worst-case
  excess return.

All constraints being those of mean-variance, ``min_return`` applies to the worst-case return. With long-only
bounds |w| = w and the box penalty is linear: (μ̂ − δ)ᵀw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import cvxpy as cp
import numpy as np
from scipy import stats

from services.errors import InfeasibleError, InvalidInputError, PreconditionViolation
from services.estimation import validate_moments
from services.optimization._constraints import TOLERANCE, MinReturn
from services.optimization._metrics import portfolio_performance
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult, PortfolioProblem
from services.optimization._program import ProgramBuilder
from services.optimization._solver import CLARABEL_SETTINGS, iterations, solve_program
from services.types import FloatArray, Moments


class Uncertainty(StrEnum):
    """Shape of the uncertainty set of the expected returns."""

    BOX = "BOX"
    """Componentwise interval ``|μ_i − μ̂_i| ≤ δ_i``."""
    ELLIPSOIDAL = "ELLIPSOIDAL"
    """Confidence ellipsoid ``(μ − μ̂)ᵀ Σ_μ⁻¹ (μ − μ̂) ≤ κ²``."""


@dataclass(frozen=True, slots=True)
class MuUncertaintySet:
    """An uncertainty set of the annualised expected returns around their estimate μ̂.

    Attributes
    ----------
    uncertainty : Uncertainty
        Box or ellipsoid.
    radius : float
        ``z_{(1+c)/2}`` (box: standard errors per half-width) or ``κ = sqrt(χ²_N⁻¹(c))`` (ellipsoid).
    error_covariance : ndarray of shape (N, N)
        Σ_μ = Σ · P / T, the annualised covariance of the estimation error of μ̂.
    """

    uncertainty: Uncertainty
    radius: float
    error_covariance: FloatArray

    @property
    def half_widths(self) -> FloatArray:
        """Box half-widths δ = radius · sqrt(diag Σ_μ), shape (N,)."""
        return np.asarray(self.radius * np.sqrt(np.diag(self.error_covariance)), dtype=np.float64)

    def penalty(self, weights: FloatArray) -> float:
        """Worst-case shortfall ``max_{μ ∈ U} (μ̂ − μ)ᵀw`` of the expected return of a weight vector.

        Parameters
        ----------
        weights : ndarray of shape (N,)
            Portfolio weights.

        Returns
        -------
        float
            ``δᵀ|w|`` (box) or ``κ sqrt(wᵀΣ_μw)`` (ellipsoid).
        """
        if self.uncertainty is Uncertainty.BOX:
            return float(self.half_widths @ np.abs(weights))
        return self.radius * float(np.sqrt(max(float(weights @ self.error_covariance @ weights), 0.0)))

    def worst_case_return(self, weights: FloatArray, expected_returns: FloatArray) -> float:
        """``μ̂ᵀw − penalty(w)``: the lowest expected return of the weights over the set.

        Parameters
        ----------
        weights : ndarray of shape (N,)
            Portfolio weights.
        expected_returns : ndarray of shape (N,)
            The estimate μ̂ (annualised).

        Returns
        -------
        float
            The worst-case annualised expected return.
        """
        return float(expected_returns @ weights) - self.penalty(weights)


def mu_uncertainty_set(
    covariance: FloatArray,
    *,
    uncertainty: Uncertainty | str,
    confidence: float,
    observations: int,
    periods_per_year: int,
) -> MuUncertaintySet:
    """The empirical uncertainty set of sample-mean expected returns.

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Annualised covariance Σ of the strategies' returns.
    uncertainty : Uncertainty or str
        ``BOX`` or ``ELLIPSOIDAL``.
    confidence : float
        Confidence level c in (0, 1) of the set (per strategy for the box, joint for the ellipsoid).
    observations : int
        T, the number of periods the means were estimated from (the effective sample size for weighted
        estimators).
    periods_per_year : int
        P, the periods per year of those observations.

    Returns
    -------
    MuUncertaintySet
        With radius z_{(1+c)/2} (box) or sqrt(χ²_N⁻¹(c)) (ellipsoid) and Σ_μ = Σ · P / T.

    Raises
    ------
    InvalidInputError
        An unknown ``uncertainty``, ``confidence`` outside (0, 1), or a nonpositive ``observations`` or
        ``periods_per_year``.
    """
    try:
        uncertainty = Uncertainty(uncertainty)
    except ValueError:
        raise InvalidInputError.for_field(
            "uncertainty", f"must be one of {', '.join(Uncertainty)}; got {uncertainty!r}"
        ) from None
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError.for_field("robust_confidence", f"must lie in (0, 1); got {confidence:g}")
    if observations < 1:
        raise InvalidInputError.for_field("robust_observations", f"must be positive; got {observations}")
    if periods_per_year < 1:
        raise InvalidInputError.for_field("periods_per_year", f"must be positive; got {periods_per_year}")
    n_assets = covariance.shape[0]
    if uncertainty is Uncertainty.BOX:
        radius = float(stats.norm.ppf(0.5 + 0.5 * confidence))
    else:
        radius = float(np.sqrt(stats.chi2.ppf(confidence, n_assets)))
    error_covariance = np.asarray(covariance * (periods_per_year / observations), dtype=np.float64)
    return MuUncertaintySet(uncertainty=uncertainty, radius=radius, error_covariance=error_covariance)


def optimize_robust(
    problem: PortfolioProblem,
    moments: Moments,
    *,
    uncertainty: Uncertainty | str,
    confidence: float,
    observations: int,
    periods_per_year: int,
    time_limit_s: float | None = None,
) -> OptimizationResult:
    """Solve a mean-variance problem against the worst case of the expected returns over an uncertainty set.

    Parameters
    ----------
    problem : PortfolioProblem
        Objective and constraints over N strategies; ``min_return`` bounds the worst-case return.
    moments : Moments
        Annualised estimates μ̂ (N,) and covariance Σ (N, N).
    uncertainty : Uncertainty or str
        ``BOX`` or ``ELLIPSOIDAL`` (see the module docstring).
    confidence : float
        Confidence level c in (0, 1) of the set.
    observations : int
        T, the periods μ̂ was estimated from.
    periods_per_year : int
        P, the periods per year of those observations.
    time_limit_s : float, optional
        Wall-clock limit for the solver in seconds (from the call's deadline).

    Returns
    -------
    OptimizationResult
        Optimal weights; ``objective_value`` is the worst-case utility μ̂ᵀw − ρ(w) − δ/2 wᵀΣw (quadratic
        utility), worst-case return μ̂ᵀw − ρ(w) (max return), variance wᵀΣw (min volatility) or worst-case Sharpe
        ratio (μ̂ᵀw − ρ(w) − r_f)/σ(w) (max Sharpe), evaluated on the weights; ``performance`` is the nominal
        (μ̂-based) view.

    Raises
    ------
    InvalidInputError
        Malformed moments, set parameters or bounds.
    InfeasibleError
        A pre-check failed (``ProblemModel.precheck``), no portfolio has a positive worst-case excess
        return (max Sharpe: ``NO_WORST_CASE_EXCESS_RETURN``), or the solver proved the constraints infeasible
        (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        The solver hit ``time_limit_s``.
    OptimizationError
        The solver failed otherwise.
    """
    validate_moments(moments, problem.n_assets)
    uncertainty_set = mu_uncertainty_set(
        moments.covariance,
        uncertainty=uncertainty,
        confidence=confidence,
        observations=observations,
        periods_per_year=periods_per_year,
    )
    if problem.min_net_exposure is not None or problem.max_net_exposure is not None:
        field = "min_net_exposure" if problem.min_net_exposure is not None else "max_net_exposure"
        raise InvalidInputError.for_field(
            field, "net exposure bounds are not supported with robust optimization (budget 1)"
        )
    if problem.max_holdings is not None or problem.min_position_weight is not None:
        field = "max_holdings" if problem.max_holdings is not None else "min_position_weight"
        raise InvalidInputError.for_field(field, "is not supported with robust optimization")
    if problem.transaction_costs_bps is not None and np.any(problem.transaction_costs_bps):
        raise InvalidInputError.for_field(
            "transaction_costs_bps", "transaction costs are not supported with robust optimization"
        )
    model = ProblemModel.build(problem, moments)
    model.precheck()
    started = time.perf_counter()
    mu, covariance = moments.expected_returns, moments.covariance
    sharpe = problem.objective is Objective.MAX_SHARPE
    builder = ProgramBuilder(model, homogenised=sharpe)
    x, scale = builder.x, builder.scale
    volatility = cp.norm(builder.factor().T @ x, 2)
    if uncertainty_set.uncertainty is Uncertainty.BOX:
        delta = uncertainty_set.half_widths
        long_only = bool(np.all(problem.lower_bounds >= 0))
        worst_case_return = (mu - delta) @ x if long_only else mu @ x - delta @ cp.abs(x)
    else:
        # κ‖Lᵀx‖ with L = sqrt(P/T)·F.
        worst_case_return = mu @ x - uncertainty_set.radius * np.sqrt(periods_per_year / observations) * volatility
    for family in model.convex_constraints:
        if not isinstance(family, MinReturn):  # min_return bounds the worst-case return here
            family.write(builder)
    constraints = builder.constraints
    if sharpe:
        constraints.append(worst_case_return - problem.risk_free_rate * scale >= 1)
    if problem.min_return is not None:
        constraints.append(worst_case_return >= problem.min_return * scale)
    # Validated PSD: psd_wrap skips cvxpy's own eigenvalue check.
    variance = cp.quad_form(x, cp.psd_wrap(covariance))
    objective: cp.Minimize | cp.Maximize
    if sharpe or problem.objective is Objective.MIN_VOLATILITY:
        objective = cp.Minimize(variance)
    elif problem.objective is Objective.MAX_RETURN:
        objective = cp.Maximize(worst_case_return)
    else:
        objective = cp.Maximize(worst_case_return - 0.5 * problem.risk_aversion * variance)
    cvx_problem = cp.Problem(objective, constraints)

    description = f"robust {problem.objective} ({uncertainty_set.uncertainty})"
    try:
        outcome = solve_program(
            cvx_problem, dict(CLARABEL_SETTINGS), description=description, started=started, time_limit_s=time_limit_s
        )
    except InfeasibleError as exc:
        if sharpe and not problem.sector_limits and problem.min_return is None and problem.max_volatility is None:
            raise InfeasibleError(
                "no portfolio within the bounds has a positive worst-case excess return over the risk-free rate",
                precondition_violations=(
                    PreconditionViolation(
                        "NO_WORST_CASE_EXCESS_RETURN",
                        "risk_free_rate",
                        f"robust max Sharpe needs a worst-case expected return above {problem.risk_free_rate:g} "
                        f"at confidence {confidence:g}",
                    ),
                ),
            ) from exc
        raise
    weights = model.snap(builder.solution())

    performance = portfolio_performance(weights, moments, problem.risk_free_rate)
    worst = uncertainty_set.worst_case_return(weights, mu)
    extra: tuple[str, ...] = ()
    if problem.min_return is not None and worst < problem.min_return - TOLERANCE:
        extra = (f"worst-case expected return {worst:.9g} below {problem.min_return:g}",)
    variance_value = performance.volatility**2
    if problem.objective is Objective.MIN_VOLATILITY:
        objective_value = variance_value
    elif problem.objective is Objective.MAX_RETURN:
        objective_value = worst
    elif problem.objective is Objective.MAX_QUADRATIC_UTILITY:
        objective_value = worst - 0.5 * problem.risk_aversion * variance_value
    else:
        objective_value = (
            (worst - problem.risk_free_rate) / performance.volatility if performance.volatility > 0 else 0.0
        )
    return model.result(
        weights,
        status=outcome.status,
        solver=outcome.solver,
        iterations=iterations(cvx_problem),
        started=started,
        solve_path="CONIC",
        fallback_used=outcome.fallback_used,
        objective_value=float(objective_value),
        extra_violations=extra,
    )
