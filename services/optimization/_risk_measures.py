"""Optimization of risk measures beyond variance on historical scenarios, as linear programs solved by Clarabel.

Every measure is taken per period (not annualised) on the portfolio's simple returns ``r_tᵀw`` over T scenarios
(rows of R), with losses positive, as skfolio's ``skfolio.measures`` defines it, so that values compare one to one:

- CVaR_α (Rockafellar and Uryasev, 2000): the mean of the worst (1 − α) share of the losses ``−r_tᵀw``, a
  fraction of the boundary scenario included. As a linear program,
  ``CVaR_α(w) = min_τ τ + 1/((1 − α)T) Σ_t max(0, −r_tᵀw − τ)``;
- MAD (Konno and Yamazaki, 1991): ``1/T Σ_t |r_tᵀw − r̄ᵀw|`` with r̄ the scenarios' mean. As the deviations around
  the mean sum to zero, it is twice the mean downside deviation: ``2/T Σ_t max(0, r̄ᵀw − r_tᵀw)``, the form solved;
- CDaR_α (Chekhlov, Uryasev and Zabarankin, 2005): the CVaR_α of the drawdowns ``D_t = max_{s≤t} C_s − C_t`` of
  the uncompounded cumulative return ``C_t = Σ_{s≤t} r_sᵀw``, with the running peak starting at ``C_0 = 0`` (a
  loss on the first period is a drawdown). As a linear program, with ``u_t ≥ D_t`` from
  ``u_0 = 0, u_t ≥ u_{t−1} − r_tᵀw, u_t ≥ 0``: ``CDaR_α(w) = min_τ τ + 1/((1 − α)T) Σ_t max(0, u_t − τ)``.

Formulations (w: weights, ρ: the measure, μ: annualised expected returns, r_f: annualised risk-free rate, P: periods
per year, Σ = F Fᵀ: annualised covariance, l ≤ w ≤ u, sector bounds as in ``services.optimization._mean_variance``):

- min risk (``Objective.MIN_VOLATILITY``): minimise ρ(w) s.t. 1ᵀw = 1, bounds, sectors, [μᵀw ≥ r_min],
  [‖Fᵀw‖ ≤ σ_max], [ρ(w) ≤ ρ_max];
- max return (``Objective.MAX_RETURN``): maximise μᵀw under the same constraints (the risk measure enters through
  ρ_max only);
- max ratio (``Objective.MAX_SHARPE``): maximise ((μᵀw − r_f)/P) / ρ(w). Each ρ is positively homogeneous, so the
  homogenisation of mean_variance's max Sharpe applies: minimise ρ(y) s.t. (μ − r_f)ᵀy = 1, 1ᵀy = κ, κ ≥ 0,
  lκ ≤ y ≤ uκ, sector bounds times κ, [μᵀy ≥ r_min κ], [‖Fᵀy‖ ≤ σ_max κ], [ρ(y) ≤ ρ_max κ]; then w = y / κ.

Without σ_max these are linear programs; with it second-order cone programs. The covariance does not enter the
objective: it serves the σ_max cap and the reported (mean-variance) performance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import cvxpy as cp
import numpy as np

from services.errors import (
    InvalidInputError,
    OptimizationError,
)
from services.estimation import validate_moments
from services.optimization._cardinality import optimize_scenario_cardinality
from services.optimization._mean_variance import (
    CLARABEL_SETTINGS,
    TOLERANCE,
    SolveOutcome,
    _covariance_factor,
    _desk,
    _sector_rows,
    check_constraints,
    net_exposure_range,
    portfolio_performance,
    precheck,
    solve_program,
)
from services.types import FloatArray, Moments, Objective, OptimizationResult, PortfolioProblem

LP_SETTINGS: dict[str, float | str] = {**CLARABEL_SETTINGS, "direct_solve_method": "qdldl"}
"""Clarabel's tight tolerances with the QDLDL factorisation. Measured on this project's 2-core machine (synthetic
T = 756, cvxpy build included, best of 5, min risk): at N = 100 QDLDL took 240 / 200 / 245 ms for CVaR / MAD / CDaR
against 790 / 530 / 445 ms with Clarabel's default (multithreaded faer), 150 / 360 / 550 ms with HiGHS's dual simplex
and 230 / 230 / 405 ms with its interior point; at N = 20 Clarabel took 36 / 38 / 81 ms and HiGHS at best 34 / 64 /
123 ms. HiGHS gains only on CVaR at large N, so one solver serves every measure."""


QDLDL_MAX_ASSETS = 200
"""Up to this N Clarabel factorises with QDLDL (fastest at N = 100, see ``LP_SETTINGS``); above it with its
default (faer): at N = 500, T = 756 (min risk, tight tolerances) MAD took 3.3 s with QDLDL against 1.95 s with
faer, CVaR 8.5 s against 5.1 s."""


def lp_settings(n_assets: int) -> dict[str, float | str]:
    """Clarabel settings of a scenario program over N strategies: tight tolerances, QDLDL only for small N."""
    if n_assets <= QDLDL_MAX_ASSETS:
        return dict(LP_SETTINGS)
    return {k: v for k, v in LP_SETTINGS.items() if k != "direct_solve_method"}


def _simplex_first(risk_measure: RiskMeasure, problem: PortfolioProblem) -> bool:
    """Whether HiGHS answers first: CVaR, and CDaR above ``QDLDL_MAX_ASSETS``, without a cone (LPs).

    Measured on this project's 2-core machine (T = 756, min risk, cvxpy build included): CVaR took 467 ms with
    HiGHS against 8.5 s with Clarabel (QDLDL, 1e-10) and 2.3-2.6 s in PyPortfolioOpt, skfolio and Riskfolio-Lib
    (Clarabel, 1e-8) at N = 500; 150 ms against 240 ms at N = 100. HiGHS's simplex ends at a vertex, exact to its
    1e-7 feasibility tolerance and 1e-7 optimality tolerance. CDaR at N = 500: HiGHS 1.35 s, Clarabel 2.4 s at the
    engine's 1e-10 (1.24 s at the libraries' 1e-8); at N = 100 Clarabel with QDLDL is faster (245 ms against
    550 ms). MAD stays with Clarabel (HiGHS took 46.7 s at N = 500).
    """
    simplex = risk_measure is RiskMeasure.CVAR or (
        risk_measure is RiskMeasure.CDAR and problem.n_assets > QDLDL_MAX_ASSETS
    )
    return simplex and problem.max_volatility is None and problem.tracking_error_limit is None and HIGHS_ENABLED


HIGHS_ENABLED = True
"""Switch for the HiGHS path of CVaR (tests turn it off to exercise Clarabel)."""


def _solve_highs(cvx_problem: cp.Problem, *, started: float, time_limit_s: float | None) -> SolveOutcome | None:
    """Solve an LP with HiGHS; None when it does not end optimal (the caller then uses Clarabel)."""
    remaining = None if time_limit_s is None else time_limit_s - (time.perf_counter() - started)
    if remaining is not None and remaining <= 0:
        return None
    options: dict[str, float] = {} if remaining is None else {"time_limit": remaining}
    try:
        cvx_problem.solve(solver="HIGHS", **options)  # type: ignore[no-untyped-call]
    except cp.error.SolverError:
        return None
    if cvx_problem.status != cp.OPTIMAL:
        return None
    return SolveOutcome("OPTIMAL", "HIGHS", False)


class RiskMeasure(StrEnum):
    """Scenario risk measure (variance stays in ``services.optimization._mean_variance``)."""

    CVAR = "CVAR"
    """Conditional value at risk of the per-period loss at confidence α."""
    MAD = "MAD"
    """Mean absolute deviation of the per-period return around its mean."""
    CDAR = "CDAR"
    """Conditional drawdown at risk of the uncompounded cumulative return at confidence α."""


# --- the measures in NumPy ---------------------------------------------------------------------------------------


def conditional_value_at_risk(portfolio_returns: FloatArray, alpha: float = 0.95) -> float:
    """CVaR_α of the loss −r: the mean of the worst (1 − α) share of the losses.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.
    alpha : float, default=0.95
        Confidence level in (0, 1).

    Returns
    -------
    float
        ``(Σ_{i<m} L_(i) + (k − m) L_(m)) / k`` with L_(0) ≥ L_(1) ≥ ... the sorted losses, k = (1 − α)T and
        m = ⌊k⌋: the optimum of Rockafellar and Uryasev's program, skfolio's ``cvar``.
    """
    losses = np.sort(-np.asarray(portfolio_returns, dtype=np.float64))[::-1]
    tail = (1.0 - alpha) * losses.size
    whole = min(int(np.floor(tail)), losses.size)
    value = float(losses[:whole].sum())
    if whole < losses.size:
        value += (tail - whole) * float(losses[whole])
    return value / tail


def mean_absolute_deviation(portfolio_returns: FloatArray) -> float:
    """Mean absolute deviation ``1/T Σ_t |r_t − r̄|`` of the portfolio's returns around their mean.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.

    Returns
    -------
    float
        The MAD (skfolio's ``mean_absolute_deviation``).
    """
    returns = np.asarray(portfolio_returns, dtype=np.float64)
    return float(np.mean(np.abs(returns - returns.mean())))


def drawdowns(portfolio_returns: FloatArray) -> FloatArray:
    """Drawdowns ``D_t = max(0, max_{s≤t} C_s) − C_t ≥ 0`` of the uncompounded cumulative return C.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.

    Returns
    -------
    ndarray of shape (T,)
        Nonnegative drawdowns; the running peak starts at C_0 = 0 (skfolio's ``get_drawdowns`` with the sign
        flipped).
    """
    cumulative = np.cumsum(np.asarray(portfolio_returns, dtype=np.float64))
    peak = np.maximum(np.maximum.accumulate(cumulative), 0.0)
    return np.asarray(peak - cumulative, dtype=np.float64)


def conditional_drawdown_at_risk(portfolio_returns: FloatArray, alpha: float = 0.95) -> float:
    """CDaR_α: the mean of the worst (1 − α) share of the drawdowns.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.
    alpha : float, default=0.95
        Confidence level in (0, 1).

    Returns
    -------
    float
        ``conditional_value_at_risk(−drawdowns(r), alpha)`` (skfolio's ``cdar``).
    """
    return conditional_value_at_risk(-drawdowns(portfolio_returns), alpha)


def risk_measure_value(
    scenarios: FloatArray, weights: FloatArray, *, risk_measure: RiskMeasure, alpha: float = 0.95
) -> float:
    """The per-period risk measure of a weight vector on the scenarios.

    Parameters
    ----------
    scenarios : ndarray of shape (T, N)
        Per-period simple returns of the N strategies.
    weights : ndarray of shape (N,)
        Portfolio weights.
    risk_measure : RiskMeasure
        Which measure.
    alpha : float, default=0.95
        Confidence level of CVaR and CDaR (ignored for MAD).

    Returns
    -------
    float
        CVaR_α, MAD or CDaR_α of ``scenarios @ weights``.
    """
    portfolio_returns = np.asarray(scenarios @ weights, dtype=np.float64)
    if risk_measure is RiskMeasure.CVAR:
        return conditional_value_at_risk(portfolio_returns, alpha)
    if risk_measure is RiskMeasure.MAD:
        return mean_absolute_deviation(portfolio_returns)
    return conditional_drawdown_at_risk(portfolio_returns, alpha)


# --- the measures in cvxpy ---------------------------------------------------------------------------------------


def _risk_program(
    risk_measure: RiskMeasure, scenarios: FloatArray, x: cp.Variable, alpha: float
) -> tuple[cp.Expression, list[cp.Constraint]]:
    """ρ(x) as a linear objective over auxiliary variables and their constraints.

    Positively homogeneous in (x, auxiliaries): the same program serves x = w and the homogenised x = κw.
    """
    n_periods = scenarios.shape[0]
    if risk_measure is RiskMeasure.MAD:
        downside = cp.Variable(n_periods, nonneg=True)
        centred = scenarios - scenarios.mean(axis=0)
        return 2.0 * cp.sum(downside) / n_periods, [downside >= -(centred @ x)]
    threshold = cp.Variable()
    excess = cp.Variable(n_periods, nonneg=True)
    if risk_measure is RiskMeasure.CVAR:
        constraints = [excess >= -(scenarios @ x) - threshold]
    else:
        drawdown = cp.Variable(n_periods + 1)
        constraints = [
            drawdown[0] == 0,
            drawdown[1:] >= 0,
            drawdown[1:] >= drawdown[:-1] - scenarios @ x,
            excess >= drawdown[1:] - threshold,
        ]
    risk = threshold + cp.sum(excess) / ((1.0 - alpha) * n_periods)
    return cast(cp.Expression, risk), constraints


# --- validation and solving --------------------------------------------------------------------------------------


def _validate_inputs(
    problem: PortfolioProblem,
    scenarios: FloatArray,
    expected_returns: FloatArray,
    covariance: FloatArray | None,
    alpha: float,
    periods_per_year: int,
    max_risk: float | None,
) -> Moments:
    """Check the scenario data and risk parameters; return the moments for constraints and performance."""
    n = problem.n_assets
    if scenarios.ndim != 2 or scenarios.shape[1] != n:
        raise InvalidInputError.for_field(
            "scenarios", f"has shape {scenarios.shape}; expected (T, {n}), one column per strategy"
        )
    if scenarios.shape[0] < 2:
        raise InvalidInputError.for_field("scenarios", f"has {scenarios.shape[0]} periods; at least 2 are needed")
    if not np.all(np.isfinite(scenarios)):
        t, i = np.argwhere(~np.isfinite(scenarios))[0]
        raise InvalidInputError.for_field(
            f"scenarios[{t}][{i}]", "must be finite (scenario measures need a complete window of returns)"
        )
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError.for_field("risk_parameters.alpha", f"must lie in (0, 1); got {alpha:g}")
    if periods_per_year < 1:
        raise InvalidInputError.for_field(
            "risk_parameters.periods_per_year", f"must be positive; got {periods_per_year}"
        )
    if max_risk is not None and not (np.isfinite(max_risk) and max_risk > 0):
        raise InvalidInputError.for_field("constraints.max_risk", f"must be positive and finite; got {max_risk:g}")
    if covariance is None:
        covariance = np.asarray(np.cov(scenarios, rowvar=False, ddof=1) * periods_per_year, dtype=np.float64)
        covariance = covariance.reshape(n, n)
    moments = Moments(expected_returns=np.asarray(expected_returns, dtype=np.float64), covariance=covariance)
    validate_moments(moments, n)
    return moments


def weights_from_solution(raw: FloatArray, problem: PortfolioProblem, *, kappa: float | None) -> FloatArray:
    """Weights of a solution vector: y / κ if homogenised, solver noise within ``TOLERANCE`` put on the bound.

    Parameters
    ----------
    raw : ndarray of shape (N,)
        The solver's x (w, or y = κw when ``homogenised``).
    problem : PortfolioProblem
        For the bounds.
    kappa : float or None
        κ when ``raw`` is y = κw (with a fixed budget κ = 1ᵀy; with net exposure bounds κ is its own variable),
        None when ``raw`` is w.

    Returns
    -------
    ndarray of shape (N,)
        The weights.

    Raises
    ------
    OptimizationError
        The homogenised solution degenerated (κ ≤ 0).
    """
    if kappa is not None:
        if kappa <= 1e-12:
            raise OptimizationError("max ratio solution degenerated (κ = 0)")
        raw = raw / kappa
    lower, upper = problem.lower_bounds, problem.upper_bounds
    weights = np.where((raw < lower) & (raw >= lower - TOLERANCE), lower, raw)
    return np.asarray(np.where((weights > upper) & (weights <= upper + TOLERANCE), upper, weights), dtype=np.float64)


def linear_constraints(problem: PortfolioProblem, x: cp.Variable, scale: cp.Expression | float) -> list[cp.Constraint]:
    """Budget (or net exposure), bounds, group limits and the linear desk families on x = scale·w.

    ``scale`` is 1, or κ when homogenised. The desk families are the two-way turnover limit and per-name caps
    (against ``current_weights``), the gross exposure (leverage) cap and beta neutrality; transaction costs and the
    tracking-error cone are not linear constraints and are left to the caller.

    Parameters
    ----------
    problem : PortfolioProblem
        Bounds and sector limits.
    x : cvxpy.Variable
        The weights, or their homogenised y.
    scale : cvxpy.Expression or float
        1, or the homogenising variable κ.

    Returns
    -------
    list of cvxpy.Constraint
        ``1ᵀx = scale`` (or the net exposure bounds times ``scale``), ``l·scale ≤ x ≤ u·scale``, every group
        minimum and maximum times ``scale``, and the desk families present in ``problem``.
    """
    net = net_exposure_range(problem)
    constraints = [x >= problem.lower_bounds * scale, x <= problem.upper_bounds * scale]
    if net is None:
        constraints.append(cp.sum(x) == scale)
    else:
        if np.isfinite(net[0]):
            constraints.append(cp.sum(x) >= net[0] * scale)
        if np.isfinite(net[1]):
            constraints.append(cp.sum(x) <= net[1] * scale)
    for row in _sector_rows(problem):
        if row.min_weight is not None:
            constraints.append(row.members @ x >= row.min_weight * scale)
        if row.max_weight is not None:
            constraints.append(row.members @ x <= row.max_weight * scale)
    desk = _desk(problem)
    if desk.turnover_limit is not None or desk.turnover_caps is not None:
        trades = cp.Variable(problem.n_assets, nonneg=True)
        moved = x - desk.current * scale
        constraints += [trades >= moved, trades >= -moved]
        if desk.turnover_limit is not None:
            constraints.append(cp.sum(trades) <= desk.turnover_limit * scale)
        if desk.turnover_caps is not None:
            finite = np.flatnonzero(np.isfinite(desk.turnover_caps))
            constraints.append(trades[finite] <= desk.turnover_caps[finite] * scale)
    if desk.leverage_limit is not None:
        constraints.append(cp.norm1(x) <= desk.leverage_limit * scale)
    if desk.betas is not None and desk.beta_tolerance is not None:
        exposure = desk.betas @ x
        constraints += [exposure <= desk.beta_tolerance * scale, exposure >= -desk.beta_tolerance * scale]
    return constraints


def tracking_error_constraint(
    problem: PortfolioProblem, x: cp.Variable, scale: cp.Expression | float, factor: FloatArray
) -> list[cp.Constraint]:
    """The tracking-error cone ‖Fᵀ(x − b·scale)‖ ≤ TE·scale when the problem has one (else nothing).

    Parameters
    ----------
    problem : PortfolioProblem
        With ``tracking_error_limit`` and ``benchmark_weights``.
    x : cvxpy.Variable
        The weights, or their homogenised y.
    scale : cvxpy.Expression or float
        1, or the homogenising variable κ.
    factor : ndarray of shape (N, N)
        F with F Fᵀ = Σ (annualised).

    Returns
    -------
    list of cvxpy.Constraint
        Zero or one constraint.
    """
    desk = _desk(problem)
    if desk.tracking_error_limit is None or desk.benchmark is None:
        return []
    return [cp.norm(factor.T @ (x - desk.benchmark * scale), 2) <= desk.tracking_error_limit * scale]


@dataclass(frozen=True, slots=True)
class MeasureProgram:
    """The convex program of one risk-measure problem (see the module docstring), before solving."""

    x: cp.Variable
    """The weights w, or y = κw for the max ratio."""
    kappa: cp.Variable | None
    """κ of the max ratio's homogenisation; None otherwise."""
    constraints: list[cp.Constraint]
    objective: cp.Expression
    """Minimised: ρ(x) (min risk, max ratio) or −μᵀx (max return)."""


def measure_program(
    problem: PortfolioProblem,
    scenarios: FloatArray,
    moments: Moments,
    *,
    risk_measure: RiskMeasure,
    alpha: float,
    max_risk: float | None,
    with_volatility_cap: bool = True,
) -> MeasureProgram:
    """Build the program of a risk-measure problem (also the linear part of ``_cardinality``'s master).

    Parameters
    ----------
    problem : PortfolioProblem
        Objective (MIN_VOLATILITY, MAX_SHARPE or MAX_RETURN) and constraints over N strategies.
    scenarios : ndarray of shape (T, N)
        Per-period simple returns.
    moments : Moments
        Annualised μ (N,) and Σ (N, N).
    risk_measure : RiskMeasure
        The measure ρ.
    alpha : float
        Confidence level of CVaR and CDaR.
    max_risk : float or None
        Cap on ρ.
    with_volatility_cap : bool, default=True
        Whether to include the cone ‖Fᵀx‖ ≤ σ_max·scale (the mixed-integer master outer-approximates it instead).

    Returns
    -------
    MeasureProgram
        Variables, constraints and the objective to minimise.
    """
    mu = moments.expected_returns
    x = cp.Variable(problem.n_assets)
    scale: cp.Expression | float
    kappa: cp.Variable | None = None
    if problem.objective is Objective.MAX_SHARPE:
        kappa = cp.Variable(nonneg=True)
        scale = kappa
        constraints = [(mu - problem.risk_free_rate) @ x == 1]
    else:
        scale = 1.0
        constraints = []
    constraints += linear_constraints(problem, x, scale)
    risk, risk_constraints = _risk_program(risk_measure, scenarios, x, alpha)
    constraints += risk_constraints
    expected: cp.Expression = mu @ x
    if net_exposure_range(problem) is not None:
        expected = expected + problem.risk_free_rate * (scale - cp.sum(x))  # the cash leg at r_f
    if problem.min_return is not None:
        constraints.append(expected >= problem.min_return * scale)
    if with_volatility_cap and (problem.max_volatility is not None or problem.tracking_error_limit is not None):
        factor = _covariance_factor(moments.covariance)
        if problem.max_volatility is not None:
            constraints.append(cp.norm(factor.T @ x, 2) <= problem.max_volatility * scale)
        constraints += tracking_error_constraint(problem, x, scale, factor)
    if max_risk is not None:
        constraints.append(risk <= max_risk * scale)
    objective = -expected if problem.objective is Objective.MAX_RETURN else risk
    return MeasureProgram(x=x, kappa=kappa, constraints=constraints, objective=objective)


# --- the optimizer -----------------------------------------------------------------------------------------------


def optimize_risk_measure(
    problem: PortfolioProblem,
    scenarios: FloatArray,
    expected_returns: FloatArray,
    *,
    risk_measure: RiskMeasure | str,
    covariance: FloatArray | None = None,
    alpha: float = 0.95,
    periods_per_year: int = 252,
    max_risk: float | None = None,
    time_limit_s: float | None = None,
) -> OptimizationResult:
    """Minimise a scenario risk measure, maximise return under it, or maximise return per unit of it.

    Parameters
    ----------
    problem : PortfolioProblem
        Objective and constraints over N strategies. ``MIN_VOLATILITY`` minimises the risk measure ("min risk"),
        ``MAX_SHARPE`` maximises ((μᵀw − r_f)/P)/ρ(w) ("max ratio"), ``MAX_RETURN`` maximises μᵀw;
        ``MAX_QUADRATIC_UTILITY`` is not defined for these measures. ``min_return`` bounds μᵀw and
        ``max_volatility`` bounds sqrt(wᵀΣw), both annualised, as in mean-variance.
    scenarios : ndarray of shape (T, N)
        Per-period simple returns of the strategies over T periods, without gaps.
    expected_returns : ndarray of shape (N,)
        Annualised expected returns μ (decimal).
    risk_measure : RiskMeasure or str
        The measure ρ: ``CVAR``, ``MAD`` or ``CDAR`` (see the module docstring for the definitions).
    covariance : ndarray of shape (N, N), optional
        Annualised covariance Σ for ``max_volatility`` and the reported performance; by default the sample
        covariance of the scenarios (ddof 1) times ``periods_per_year``.
    alpha : float, default=0.95
        Confidence level of CVaR and CDaR, in (0, 1); ignored by MAD.
    periods_per_year : int, default=252
        P, the scenario periods per year: the ratio's excess return is the per-period (μᵀw − r_f)/P.
    max_risk : float, optional
        Cap ρ_max on the per-period risk measure (e.g. the efficient-CVaR frontier with ``MAX_RETURN``).
    time_limit_s : float, optional
        Wall-clock limit for the solver in seconds (from the call's deadline).

    Returns
    -------
    OptimizationResult
        Optimal weights; ``objective_value`` is ρ(w) (min risk), ((μᵀw − r_f)/P)/ρ(w) (max ratio) or μᵀw (max
        return), evaluated on the weights with NumPy; ``performance`` is the mean-variance view (μᵀw, sqrt(wᵀΣw),
        Sharpe).

    Raises
    ------
    InvalidInputError
        Malformed scenarios, moments, α, P or ρ_max, an unknown risk measure, an unsupported objective, or
        inconsistent bounds.
    InfeasibleError
        A pre-check failed (see ``services.optimization._mean_variance.precheck``) or the solver proved the constraints
        infeasible (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        The solver hit ``time_limit_s``.
    OptimizationError
        The solver failed otherwise.
    """
    try:
        risk_measure = RiskMeasure(risk_measure)
    except ValueError:
        raise InvalidInputError.for_field(
            "risk_measure", f"must be one of {', '.join(RiskMeasure)}; got {risk_measure!r}"
        ) from None
    if problem.objective is Objective.MAX_QUADRATIC_UTILITY:
        raise InvalidInputError.for_field(
            "objective", f"MAX_QUADRATIC_UTILITY is defined for variance only, not for {risk_measure}"
        )
    if problem.transaction_costs_bps is not None and np.any(problem.transaction_costs_bps):
        raise InvalidInputError.for_field(
            "constraints.transaction_costs_bps", f"transaction costs are supported with variance, not {risk_measure}"
        )
    scenarios = np.asarray(scenarios, dtype=np.float64)
    moments = _validate_inputs(problem, scenarios, expected_returns, covariance, alpha, periods_per_year, max_risk)
    precheck(problem, moments)
    if problem.max_holdings is not None or problem.min_position_weight is not None:
        return optimize_scenario_cardinality(
            problem,
            scenarios,
            moments,
            risk_measure=risk_measure,
            alpha=alpha,
            periods_per_year=periods_per_year,
            max_risk=max_risk,
            time_limit_s=time_limit_s,
        )
    started = time.perf_counter()
    program = measure_program(problem, scenarios, moments, risk_measure=risk_measure, alpha=alpha, max_risk=max_risk)
    x = program.x
    cvx_problem = cp.Problem(cp.Minimize(program.objective), program.constraints)

    description = f"{problem.objective} with {risk_measure}"
    outcome = (
        _solve_highs(cvx_problem, started=started, time_limit_s=time_limit_s)
        if _simplex_first(risk_measure, problem)
        else None
    )
    if outcome is None:
        outcome = solve_program(
            cvx_problem,
            lp_settings(problem.n_assets),
            description=description,
            started=started,
            time_limit_s=time_limit_s,
        )
    if x.value is None:
        raise OptimizationError(f"{outcome.solver} returned no solution for {description}")
    kappa = None
    if program.kappa is not None:
        kappa = float(program.kappa.value) if program.kappa.value is not None else 0.0
    weights = weights_from_solution(np.asarray(x.value, dtype=np.float64), problem, kappa=kappa)

    value = risk_measure_value(scenarios, weights, risk_measure=risk_measure, alpha=alpha)
    violations = check_constraints(weights, problem, moments)
    if max_risk is not None and value > max_risk + TOLERANCE:
        violations += (f"{risk_measure} {value:.9g} above {max_risk:g}",)
    performance = portfolio_performance(weights, moments, problem.risk_free_rate)
    if problem.objective is Objective.MIN_VOLATILITY:
        objective_value = value
    elif problem.objective is Objective.MAX_RETURN:
        objective_value = performance.expected_return
    else:
        excess = (performance.expected_return - problem.risk_free_rate) / periods_per_year
        objective_value = excess / value if value > 0 else 0.0
    stats = cvx_problem.solver_stats
    return OptimizationResult(
        weights=weights,
        performance=performance,
        objective_value=float(objective_value),
        status=outcome.status,
        iterations=int(stats.num_iters or 0) if stats is not None else 0,
        solver=outcome.solver,
        fallback_used=outcome.fallback_used,
        solve_path="SIMPLEX" if outcome.solver == "HIGHS" else "CONIC",
        solve_time_ms=(time.perf_counter() - started) * 1000.0,
        constraints_satisfied=not violations,
        violations=violations,
    )
