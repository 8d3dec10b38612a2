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
per year, Σ = F Fᵀ: annualised covariance, l ≤ w ≤ u, the constraint families of ``_constraints``):

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

from dataclasses import dataclass
from typing import cast

import cvxpy as cp
import numpy as np

from services.errors import InvalidInputError
from services.estimation import validate_moments
from services.optimization._constraints import TOLERANCE
from services.optimization._metrics import RiskMeasure, risk_measure_value
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult, PortfolioProblem
from services.optimization._program import ProgramBuilder
from services.optimization._solver import CLARABEL_SETTINGS, SolveOutcome, iterations, solve_highs, solve_program
from services.types import FloatArray, Moments

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


def validate_scenarios(
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
            f"scenarios[{t}, {i}]", "must be finite (scenario measures need a complete window of returns)"
        )
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError.for_field("confidence_level", f"must lie in (0, 1); got {alpha:g}")
    if periods_per_year < 1:
        raise InvalidInputError.for_field("periods_per_year", f"must be positive; got {periods_per_year}")
    if max_risk is not None and not (np.isfinite(max_risk) and max_risk > 0):
        raise InvalidInputError.for_field("max_risk", f"must be positive and finite; got {max_risk:g}")
    if covariance is None:
        covariance = np.asarray(np.cov(scenarios, rowvar=False, ddof=1) * periods_per_year, dtype=np.float64)
        covariance = covariance.reshape(n, n)
    moments = Moments(expected_returns=np.asarray(expected_returns, dtype=np.float64), covariance=covariance)
    validate_moments(moments, n)
    return moments


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """The scenario risk measure of a problem and its parameters, validated (``validate_scenarios``)."""

    scenarios: FloatArray
    """Per-period simple returns (T, N), without gaps."""
    risk_measure: RiskMeasure
    alpha: float
    """Confidence level of CVaR and CDaR, in (0, 1)."""
    periods_per_year: int
    """P: the max ratio's excess return is the per-period (μᵀw − r_f)/P."""
    max_risk: float | None
    """Cap on the per-period ρ(w), or None."""

    def value(self, weights: FloatArray) -> float:
        """ρ(w) on the scenarios."""
        return risk_measure_value(self.scenarios, weights, risk_measure=self.risk_measure, alpha=self.alpha)

    def cap_violations(self, weights: FloatArray) -> tuple[str, ...]:
        """The breach of ``max_risk`` by more than ``TOLERANCE`` (empty when it holds or there is no cap)."""
        if self.max_risk is None:
            return ()
        value = self.value(weights)
        return (
            (f"{self.risk_measure} {value:.9g} above {self.max_risk:g}",) if value > self.max_risk + TOLERANCE else ()
        )

    def objective_value(self, weights: FloatArray, model: ProblemModel) -> float:
        """ρ(w) (min risk), ((μᵀw − r_f)/P)/ρ(w) (max ratio) or μᵀw (max return)."""
        value = self.value(weights)
        expected = float(model.expected_returns @ weights) + (1.0 - float(weights.sum())) * model.risk_free_rate
        if model.objective is Objective.MIN_VOLATILITY:
            return value
        if model.objective is Objective.MAX_RETURN:
            return expected
        excess = (expected - model.risk_free_rate) / self.periods_per_year
        return excess / value if value > 0 else 0.0


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
    builder: ProgramBuilder
    """The builder that owns x and κ (``solution`` reads the weights back)."""


def measure_program(model: ProblemModel, spec: ScenarioSpec, *, with_volatility_cap: bool = True) -> MeasureProgram:
    """Build the program of a risk-measure problem (also the linear part of ``_cardinality``'s master).

    Parameters
    ----------
    model : ProblemModel
        Objective (MIN_VOLATILITY, MAX_SHARPE or MAX_RETURN) and constraint families over N strategies.
    spec : ScenarioSpec
        The scenarios, the measure ρ, α, P and the cap on ρ.
    with_volatility_cap : bool, default=True
        Whether to write the cones (volatility and tracking-error caps); the mixed-integer master outer-approximates
        the volatility cap instead.

    Returns
    -------
    MeasureProgram
        Variables, constraints and the objective to minimise.
    """
    sharpe = model.objective is Objective.MAX_SHARPE
    builder = ProgramBuilder(model, homogenised=sharpe)
    x = builder.x
    if sharpe:
        builder.add(model.excess_returns @ x == 1)
    for family in model.convex_constraints:
        if with_volatility_cap or not family.conic:
            family.write(builder)
    risk, risk_constraints = _risk_program(spec.risk_measure, spec.scenarios, x, spec.alpha)
    builder.add(*risk_constraints)
    if spec.max_risk is not None:
        builder.add(risk <= spec.max_risk * builder.scale)
    objective = -builder.net_return() if model.objective is Objective.MAX_RETURN else risk
    return MeasureProgram(
        x=x, kappa=builder.kappa, constraints=builder.constraints, objective=objective, builder=builder
    )


# --- the backends ------------------------------------------------------------------------------------------------


class ScenarioSimplexBackend:
    """HiGHS's dual simplex on the scenario LP: CVaR, and CDaR above ``QDLDL_MAX_ASSETS``, without a cone.

    Measured on this project's 2-core machine (T = 756, min risk, cvxpy build included): CVaR took 467 ms with
    HiGHS against 8.5 s with Clarabel (QDLDL, 1e-10) and 2.3-2.6 s in PyPortfolioOpt, skfolio and Riskfolio-Lib
    (Clarabel, 1e-8) at N = 500; 150 ms against 240 ms at N = 100. HiGHS's simplex ends at a vertex, exact to its
    1e-7 feasibility tolerance and 1e-7 optimality tolerance. CDaR at N = 500: HiGHS 1.35 s, Clarabel 2.4 s at the
    engine's 1e-10 (1.24 s at the libraries' 1e-8); at N = 100 Clarabel with QDLDL is faster (245 ms against
    550 ms). MAD stays with Clarabel (HiGHS took 46.7 s at N = 500).
    """

    solve_path = "SIMPLEX"

    def supports(self, model: ProblemModel, spec: ScenarioSpec) -> bool:
        """Whether the program is an LP on which the simplex was measured faster."""
        simplex = spec.risk_measure is RiskMeasure.CVAR or (
            spec.risk_measure is RiskMeasure.CDAR and model.n_assets > QDLDL_MAX_ASSETS
        )
        return simplex and not any(family.conic for family in model.constraints) and model.cardinality is None

    def solve(
        self, model: ProblemModel, spec: ScenarioSpec, *, started: float, time_limit_s: float | None
    ) -> OptimizationResult | None:
        """The optimum from HiGHS, or None when it does not end optimal (the next backend answers)."""
        program = measure_program(model, spec)
        cvx_problem = cp.Problem(cp.Minimize(program.objective), program.constraints)
        outcome = solve_highs(cvx_problem, started=started, time_limit_s=time_limit_s)
        if outcome is None:
            return None
        return _result(model, spec, program, cvx_problem, outcome, started, self.solve_path)


class ScenarioInteriorPointBackend:
    """HiGHS's interior point method (with its crossover to a basic solution) on the MAD LP above QDLDL_MAX_ASSETS.

    MAD's LP has T dense rows over N weights. Measured on this project's 2-core machine under load from other
    work (T = 756, min risk, cvxpy build included, the same runs): at N = 500 HiGHS's IPM took 2.2 s (0.74 s of
    CPU) against 3.4 s (1.7 s) for Clarabel at the engine's 1e-10; at N = 2000 17.5 s (4.0 s of CPU) against
    129 s for Clarabel. The crossover ends at a vertex, exact to HiGHS's 1e-7 feasibility and optimality
    tolerances like the simplex (the N = 500 optimum agreed with Clarabel's to 4e-10 relative, and was lower).
    The dual simplex (``ScenarioSimplexBackend``) took 46.7 s at N = 500.
    """

    solve_path = "HIGHS_IPM"

    def supports(self, model: ProblemModel, spec: ScenarioSpec) -> bool:
        """MAD above ``QDLDL_MAX_ASSETS``, without a cone or cardinality."""
        if spec.risk_measure is not RiskMeasure.MAD or model.n_assets <= QDLDL_MAX_ASSETS:
            return False
        return not any(family.conic for family in model.constraints) and model.cardinality is None

    def solve(
        self, model: ProblemModel, spec: ScenarioSpec, *, started: float, time_limit_s: float | None
    ) -> OptimizationResult | None:
        """The optimum from HiGHS's IPM, or None when it does not end optimal (the next backend answers)."""
        program = measure_program(model, spec)
        cvx_problem = cp.Problem(cp.Minimize(program.objective), program.constraints)
        outcome = solve_highs(cvx_problem, started=started, time_limit_s=time_limit_s, highs_options={"solver": "ipm"})
        if outcome is None:
            return None
        return _result(model, spec, program, cvx_problem, outcome, started, self.solve_path)


class ScenarioConicBackend:
    """Clarabel (SCS as the fallback) on the scenario program: every measure, with the cones."""

    solve_path = "CONIC"

    def supports(self, model: ProblemModel, spec: ScenarioSpec) -> bool:
        """Every problem without cardinality."""
        return model.cardinality is None

    def solve(
        self, model: ProblemModel, spec: ScenarioSpec, *, started: float, time_limit_s: float | None
    ) -> OptimizationResult:
        """The optimum from Clarabel.

        Raises
        ------
        InfeasibleError
            The solver proved the constraints infeasible (``SOLVER_INFEASIBLE``).
        DeadlineExceededError
            The solver hit ``time_limit_s``.
        OptimizationError
            The solver failed otherwise.
        """
        program = measure_program(model, spec)
        cvx_problem = cp.Problem(cp.Minimize(program.objective), program.constraints)
        outcome = solve_program(
            cvx_problem,
            lp_settings(model.n_assets),
            description=f"{model.objective} with {spec.risk_measure}",
            started=started,
            time_limit_s=time_limit_s,
        )
        return _result(model, spec, program, cvx_problem, outcome, started, self.solve_path)


def _result(
    model: ProblemModel,
    spec: ScenarioSpec,
    program: MeasureProgram,
    cvx_problem: cp.Problem,
    outcome: SolveOutcome,
    started: float,
    solve_path: str,
) -> OptimizationResult:
    weights = model.snap(program.builder.solution())
    return model.result(
        weights,
        status=outcome.status,
        solver=outcome.solver,
        iterations=iterations(cvx_problem),
        started=started,
        solve_path=solve_path,
        fallback_used=outcome.fallback_used,
        objective_value=spec.objective_value(weights, model),
        extra_violations=spec.cap_violations(weights),
    )


def scenario_spec(
    problem: PortfolioProblem,
    scenarios: FloatArray,
    expected_returns: FloatArray,
    *,
    risk_measure: RiskMeasure | str,
    covariance: FloatArray | None,
    alpha: float,
    periods_per_year: int,
    max_risk: float | None,
) -> tuple[ScenarioSpec, Moments]:
    """Validate a scenario problem's inputs; return its spec and the moments for constraints and performance.

    Raises
    ------
    InvalidInputError
        Malformed scenarios, moments, α, P or ρ_max, an unknown risk measure, an unsupported objective (quadratic
        utility) or transaction costs (defined for variance only).
    """
    try:
        measure = RiskMeasure(risk_measure)
    except ValueError:
        raise InvalidInputError.for_field(
            "risk_measure", f"must be one of {', '.join(RiskMeasure)}; got {risk_measure!r}"
        ) from None
    if problem.objective is Objective.MAX_QUADRATIC_UTILITY:
        raise InvalidInputError.for_field(
            "objective", f"MAX_QUADRATIC_UTILITY is defined for variance only, not for {measure}"
        )
    if problem.transaction_costs_bps is not None and np.any(problem.transaction_costs_bps):
        raise InvalidInputError.for_field(
            "transaction_costs_bps", f"transaction costs are supported with variance, not {measure}"
        )
    values = np.asarray(scenarios, dtype=np.float64)
    moments = validate_scenarios(problem, values, expected_returns, covariance, alpha, periods_per_year, max_risk)
    return ScenarioSpec(values, measure, alpha, periods_per_year, max_risk), moments
