"""Dispatch: which backend solves a problem, asked of the backends themselves.

A backend declares what it supports (``supports(model)``: its objectives and constraint families) and solves a
``ProblemModel`` (``solve``), returning None when it declines at run time (the active set cannot certify the KKT
conditions; Clarabel on assembled matrices ends with numerical trouble): the next backend in the chain answers.
Cardinality (a mixed-integer family) goes to the outer approximation of ``_cardinality``, whose continuous
subproblems come back through the same chain.

Mean-variance chain (``MEAN_VARIANCE_BACKENDS``):

1. ``ACTIVE_SET``: exact active set under the budget and finite bounds (min volatility, max Sharpe, utility);
2. ``DUAL_ACTIVE_SET``: DAQP's dual active set on the dense program for the linear families at small N (min
   volatility, quadratic utility, max Sharpe; KKT-certified);
3. ``CLARABEL_DIRECT``: Clarabel on matrices assembled with NumPy for the linear families;
4. ``DENSE_IPM``: a primal-dual interior-point method on dense LAPACK factorisations for min volatility and
   quadratic utility with the trading families (turnover, per-name caps, costs, leverage, beta) and the linear ones;
5. ``CONIC``: Clarabel through cvxpy (SCS as its fallback) for every family.

Scenario risk measures (``SCENARIO_BACKENDS``): column generation on a working set of names for min risk over
many names (``_scenario_working_set``), HiGHS's simplex for the LPs where it was measured faster, its interior point
method for MAD at large N, then Clarabel. A caller (a test, a benchmark) that wants one path passes
its own chain as ``backends``.

Why over 500 lines: every entry point (single, batch, cardinality, scenario measures) runs the same chain and
the same after-the-solve diagnoses (a max Sharpe with no excess return, a ratio with no maximum), which read the
chain itself; split apart, each piece would import the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from services.errors import (
    DeadlineExceededError,
    InfeasibleError,
    InvalidInputError,
    OptimizationError,
    PreconditionViolation,
    StratoptError,
)
from services.optimization import _cardinality
from services.optimization._active_set import ActiveSetBackend
from services.optimization._batch import MAX_BATCH_ASSETS, BatchKind, solve_batch
from services.optimization._box_batch import admitted, box_results, plain_box_rule
from services.optimization._clarabel_direct import ClarabelDirectBackend
from services.optimization._conic import ConicBackend
from services.optimization._constraints import Bounds, Budget, Constraint, MaxVolatility, MinReturn
from services.optimization._dual_active_set import DualActiveSetBackend
from services.optimization._interior_point import DenseInteriorPointBackend
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult, PortfolioProblem
from services.optimization._risk_measures import (
    ScenarioConicBackend,
    ScenarioInteriorPointBackend,
    ScenarioSimplexBackend,
    ScenarioSpec,
    scenario_spec,
)
from services.optimization._scenario_working_set import ScenarioWorkingSetBackend
from services.types import FloatArray, Moments


class Backend(Protocol):
    """A mean-variance backend."""

    @property
    def solve_path(self) -> str:
        """``OptimizationResult.solve_path`` of its answers."""
        ...

    def supports(self, model: ProblemModel) -> bool:
        """Whether it can solve this model (objective, families, finiteness)."""
        ...

    def solve(self, model: ProblemModel, *, started: float, time_limit_s: float | None) -> OptimizationResult | None:
        """The optimum, or None to let the next backend answer."""
        ...


class ScenarioBackend(Protocol):
    """A scenario risk-measure backend."""

    @property
    def solve_path(self) -> str:
        """``OptimizationResult.solve_path`` of its answers."""
        ...

    def supports(self, model: ProblemModel, spec: ScenarioSpec) -> bool:
        """Whether it can solve this model."""
        ...

    def solve(
        self, model: ProblemModel, spec: ScenarioSpec, *, started: float, time_limit_s: float | None
    ) -> OptimizationResult | None:
        """The optimum, or None to let the next backend answer."""
        ...


ACTIVE_SET = ActiveSetBackend()
DUAL_ACTIVE_SET = DualActiveSetBackend()
CLARABEL_DIRECT = ClarabelDirectBackend()
DENSE_IPM = DenseInteriorPointBackend()
CONIC = ConicBackend()
MEAN_VARIANCE_BACKENDS: tuple[Backend, ...] = (ACTIVE_SET, DUAL_ACTIVE_SET, CLARABEL_DIRECT, DENSE_IPM, CONIC)
"""The default mean-variance chain, fastest first."""
WORKING_SET = ScenarioWorkingSetBackend()
SIMPLEX = ScenarioSimplexBackend()
HIGHS_IPM = ScenarioInteriorPointBackend()
SCENARIO_CONIC = ScenarioConicBackend()
SCENARIO_BACKENDS: tuple[ScenarioBackend, ...] = (WORKING_SET, SIMPLEX, HIGHS_IPM, SCENARIO_CONIC)
"""The default scenario chain."""


def _no_time(time_limit_s: float | None) -> None:
    if time_limit_s is not None and time_limit_s <= 0:
        raise DeadlineExceededError("no time left before the call's deadline to solve")


def solve_model(
    model: ProblemModel, *, time_limit_s: float | None = None, backends: Sequence[Backend] = MEAN_VARIANCE_BACKENDS
) -> OptimizationResult:
    """Solve a pre-checked mean-variance model on the first backend of the chain that supports and answers it.

    Raises
    ------
    InfeasibleError, DeadlineExceededError, OptimizationError
        As the answering backend raises them; ``OptimizationError`` too when no backend supports the model.
    """
    if model.cardinality is not None:

        def continuous(problem: PortfolioProblem, limit: float | None) -> OptimizationResult:
            return optimize_mean_variance(
                problem,
                model.moments,
                time_limit_s=limit,
                backends=backends,
                covariance_cholesky=model.covariance_cholesky,
            )

        return _cardinality.optimize_cardinality(model, continuous, time_limit_s=time_limit_s)
    started = time.perf_counter()
    for backend in backends:
        if backend.supports(model):
            _no_time(time_limit_s)
            result = backend.solve(model, started=started, time_limit_s=time_limit_s)
            if result is not None:
                return result
    raise OptimizationError(f"no solver path answered {model.objective} ({', '.join(b.solve_path for b in backends)})")


def optimize_mean_variance(
    problem: PortfolioProblem,
    moments: Moments,
    *,
    time_limit_s: float | None = None,
    backends: Sequence[Backend] = MEAN_VARIANCE_BACKENDS,
    covariance_cholesky: FloatArray | None = None,
) -> OptimizationResult:
    """Solve a mean-variance problem (any objective, any constraint family, cardinality included).

    Parameters
    ----------
    problem : PortfolioProblem
        Objective and constraints over N strategies.
    moments : Moments
        Annualised expected returns (N,) and covariance (N, N), validated (``services.estimation.validate_moments``).
    time_limit_s : float, optional
        Wall-clock limit for the solve in seconds (from the call's deadline).
    backends : sequence of Backend, default=MEAN_VARIANCE_BACKENDS
        The chain to try, in order (e.g. ``(CONIC,)`` for cvxpy alone).
    covariance_cholesky : ndarray of shape (N, N), optional
        The upper Cholesky factor C of ``moments.covariance`` (CᵀC = Σ) that ``validate_moments`` returned: the
        active set reuses it instead of factorising Σ a second time (at N = 2000 a double-precision factorisation
        is most of the call).

    Returns
    -------
    OptimizationResult
        Optimal weights (N,), their performance and the solve metadata (``solve_path`` names the backend).

    Raises
    ------
    InvalidInputError
        Inconsistent or malformed constraints (``ProblemModel.build``).
    InfeasibleError
        A pre-check failed (``ProblemModel.precheck``), or the solver proved the constraints infeasible
        (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        The solver hit ``time_limit_s``.
    OptimizationError
        The solver failed otherwise (numerical trouble, unbounded problem).
    """
    model = ProblemModel.build(problem, moments, covariance_cholesky=covariance_cholesky)
    if _certified_first_applies(model, backends):
        _no_time(time_limit_s)
        started = time.perf_counter()
        certified = DUAL_ACTIVE_SET.solve(model, started=started, time_limit_s=time_limit_s)
        if certified is not None:
            return certified
        backends = tuple(backend for backend in backends if backend is not DUAL_ACTIVE_SET)  # declined: not again
        if time_limit_s is not None:  # the rest of the chain gets what DAQP left
            time_limit_s -= time.perf_counter() - started
    model.precheck()
    started = time.perf_counter()
    try:
        return solve_model(model, time_limit_s=time_limit_s, backends=backends)
    except InfeasibleError as error:
        if model.objective is Objective.MAX_SHARPE and model.cardinality is None:
            left = None if time_limit_s is None else max(0.0, time_limit_s - (time.perf_counter() - started))
            _no_excess_return(problem, moments, backends, error, left)
        raise


def _no_excess_return(
    problem: PortfolioProblem,
    moments: Moments,
    backends: Sequence[Backend],
    error: InfeasibleError,
    time_limit_s: float | None,
) -> None:
    """Raise ``NO_EXCESS_RETURN`` when a max-Sharpe problem the solver found infeasible has feasible constraints.

    Max Sharpe is solved homogenised (``(μ − r_f)ᵀy = 1``), which has no solution when no portfolio meeting the
    constraints earns more than r_f, although the constraints themselves hold: the pre-check sees that for the
    bounds and budget alone; with group, turnover or other limits the solver answers "infeasible" instead. The
    highest expected return net of costs under the same constraints (``MAX_RETURN``'s objective, a linear
    program, in what is left of ``time_limit_s``) tells the two apart; when it cannot be had (the constraints
    conflict, it is unbounded, no time is left) the solver's error stands.
    """
    try:
        best = optimize_mean_variance(
            replace(problem, objective=Objective.MAX_RETURN), moments, backends=backends, time_limit_s=time_limit_s
        )
    except StratoptError:
        return
    best_return = best.objective_value
    if best_return > problem.risk_free_rate:
        return
    description = (
        f"max Sharpe needs a portfolio with expected return above the risk-free rate {problem.risk_free_rate:g}; "
        f"the highest the constraints allow (net of costs) is {best_return:.6g}"
    )
    raise InfeasibleError(
        description, precondition_violations=(PreconditionViolation("NO_EXCESS_RETURN", "risk_free_rate", description),)
    ) from error


def _certified_first_applies(model: ProblemModel, backends: Sequence[Backend]) -> bool:
    """Whether ``DUAL_ACTIVE_SET`` answers ``model`` before the pre-checks: it is the chain's first for ``model``.

    The pre-checks (``ProblemModel.precheck``) only name the constraints of an infeasible problem. DAQP's answer is
    certified by the KKT conditions, which include feasibility, and DAQP declines (None) on an infeasible program:
    a certified answer needs no pre-check, and on None the pre-checks run before the rest of the chain, as for
    every other backend. At N = 20 with group limits the pre-checks cost a quarter of the call.
    """
    if model.cardinality is not None or DUAL_ACTIVE_SET not in backends:
        return False
    first = next((backend for backend in backends if backend.supports(model)), None)
    return first is DUAL_ACTIVE_SET


BATCH_SOLVE_PATH = "BATCH_ACTIVE_SET"
"""``solve_path`` (and solver) of the answers of :func:`optimize_mean_variance_batch`."""
_BOX: frozenset[type[Constraint]] = frozenset({Budget, Bounds})


def batch_rule(model: ProblemModel) -> tuple[BatchKind, float, float] | None:
    """The batched active set's rule for a model: (kind, λ, target), or None when the batch does not cover it.

    Covered: at most ``MAX_BATCH_ASSETS`` names, the budget 1ᵀw = 1 and finite bounds, no costs, and one of min
    volatility (λ = 0), quadratic utility (λ = 1/δ), max Sharpe (the tangency), efficient return (min volatility
    with ``min_return``: ``TARGET_RETURN``) or efficient risk (max return with ``max_volatility``:
    ``TARGET_RISK``). Group (sector) limits and every other family go to the single path: the batched iteration
    has no rows for them, so it could not certify their multipliers.
    """
    if model.expected_returns.size > MAX_BATCH_ASSETS or model.costs is not None:
        return None
    lower, upper = model.lower, model.upper
    if not (np.isfinite(lower).all() and np.isfinite(upper).all() and np.isfinite(model.risk_free_rate)):
        return None
    families, objective = model.families, model.objective
    if families == _BOX:
        if objective is Objective.MIN_VOLATILITY:
            return BatchKind.FIXED_LAMBDA, 0.0, 0.0
        if objective is Objective.MAX_SHARPE:
            return BatchKind.TANGENCY, 0.0, 0.0
        risk_aversion = model.problem.risk_aversion
        if objective is Objective.MAX_QUADRATIC_UTILITY and np.isfinite(risk_aversion) and risk_aversion > 0.0:
            return BatchKind.FIXED_LAMBDA, 1.0 / risk_aversion, 0.0
        return None
    if families == _BOX | {MinReturn} and objective is Objective.MIN_VOLATILITY:
        target = model.get(MinReturn)
        return None if target is None else (BatchKind.TARGET_RETURN, 0.0, target.limit)
    if families == _BOX | {MaxVolatility} and objective is Objective.MAX_RETURN:
        cap = model.get(MaxVolatility)
        return None if cap is None or not cap.limit > 0.0 else (BatchKind.TARGET_RISK, 0.0, cap.limit)
    return None


def optimize_mean_variance_batch(
    problems: Sequence[PortfolioProblem],
    moments: Sequence[Moments],
    *,
    meanwhile: Callable[[], object] | None = None,
    on_results: Callable[[list[int], list[OptimizationResult]], object] | None = None,
) -> list[OptimizationResult | Exception | None]:
    """Solve many mean-variance problems at once where the batched active set can, the same answers as one by one.

    Each problem is built as :func:`optimize_mean_variance` builds it, and pre-checked when :func:`batch_rule` covers
    it (the others are left to the single path, which pre-checks them itself when it must). Those it covers
    (min volatility, quadratic utility, max Sharpe, efficient return and efficient risk under the budget and
    finite bounds) are solved together by ``_batch.solve_batch``, whatever their kind; each certified answer goes
    through the one result builder (``ProblemModel.result``, solve path :data:`BATCH_SOLVE_PATH`). Plain box
    problems (min volatility, max Sharpe or quadratic utility with bounds and nothing else) skip the per-problem
    model: they go to the solver at once, ``_box_batch.admitted`` checks them on arrays stacked per N while XLA
    iterates, and ``_box_batch.box_results`` builds their results, with the same checks and formulas (a plain
    problem that fails a check there is built and checked here, and so gets its own error; its answer from the
    solver is dropped then).

    Parameters
    ----------
    problems : sequence of PortfolioProblem
        The problems.
    moments : sequence of Moments
        Their moments, in the same order.
    meanwhile : callable, optional
        The caller's work to run while the solver iterates (``solve_batch``'s ``meanwhile``): called exactly once.
    on_results : callable, optional
        Called with the indices and results of plain problems as the solver certifies them, while it iterates the
        others (``solve_batch``'s ``on_certified``); those results are in the returned list too.

    Returns
    -------
    list of OptimizationResult, Exception or None
        Per problem: the result; the error its build or pre-check raised (``InvalidInputError``,
        ``InfeasibleError``); or None when the batch did not answer it (not covered, not certified: an
        infeasible target among them), to be solved with :func:`optimize_mean_variance`, which gives the
        single path's answer or error.
    """
    started = time.perf_counter()
    answers: list[OptimizationResult | Exception | None] = [None] * len(problems)
    plain = {k: box for k, (p, m) in enumerate(zip(problems, moments, strict=True)) if (box := plain_box_rule(p, m))}
    group: list[tuple[int, ProblemModel | None, tuple[BatchKind, float, float]]] = []
    for k, (problem, moment) in enumerate(zip(problems, moments, strict=True)):
        if k in plain:
            group.append((k, None, (plain[k][0], plain[k][1], 0.0)))
            continue
        try:
            model = ProblemModel.build(problem, moment)
            rule = batch_rule(model)
            if rule is None:  # the single path's: it pre-checks when it must (after DUAL_ACTIVE_SET declines)
                continue
            model.precheck()
        except StratoptError as error:  # InvalidInputError, InfeasibleError (a pre-check)
            answers[k] = error
            continue
        group.append((k, model, rule))
    fast: set[int] = set()

    def admit() -> None:  # while XLA iterates: the plain problems' pre-checks, stacked per N
        if meanwhile is not None:
            meanwhile()
        keys = list(plain)
        passed = admitted([problems[k] for k in keys], [moments[k] for k in keys], [plain[k][0] for k in keys])
        fast.update(k for k, ok in zip(keys, passed, strict=True) if ok)

    if not group:
        admit()
        return answers

    def certified(rows: list[int], weights: list[FloatArray], iterations: NDArray[np.int64]) -> None:
        picked = [i for i, row in enumerate(rows) if group[row][1] is None and group[row][0] in fast]
        if not picked:
            return
        keys = [group[rows[i]][0] for i in picked]
        boxed = box_results(
            [problems[k] for k in keys], [moments[k] for k in keys], [weights[i] for i in picked],
            iterations[picked], solver=BATCH_SOLVE_PATH, started=started,
        )  # fmt: skip
        done = [(k, result) for k, result in zip(keys, boxed, strict=True) if result is not None]
        for k, result in done:  # None: a breach beyond TOLERANCE, for the general builder below
            answers[k] = result
        if on_results is not None and done:
            on_results([k for k, _ in done], [result for _, result in done])

    solved = solve_batch(
        [moments[k].covariance for k, _, _ in group],
        [moments[k].expected_returns for k, _, _ in group],
        [problems[k].lower_bounds for k, _, _ in group],
        [problems[k].upper_bounds for k, _, _ in group],
        kind=[rule[0] for _, _, rule in group],
        lam=np.asarray([rule[1] for _, _, rule in group]),
        risk_free_rates=np.asarray([problems[k].risk_free_rate for k, _, _ in group]),
        targets=np.asarray([rule[2] for _, _, rule in group]),
        meanwhile=admit,
        on_certified=certified,
    )
    for row, (k, built, rule) in enumerate(group):
        if answers[k] is not None or (not solved.certified[row] and (built is not None or k in fast)):
            continue  # answered, or left to the single path (a plain problem not admitted is checked below)
        checked = built
        if checked is None:  # plain: not admitted (its error, or a case within rounding), or a breach to name
            try:
                checked = ProblemModel.build(problems[k], moments[k])
                checked.precheck()
            except StratoptError as error:
                answers[k] = error
                continue
            if batch_rule(checked) != rule:  # not the problem the solver was given: the single path decides
                continue
        if solved.certified[row]:
            answers[k] = checked.result(
                solved.weights[row],
                status="OPTIMAL",
                solver=BATCH_SOLVE_PATH,
                iterations=int(solved.iterations[row]),
                started=started,
                solve_path=BATCH_SOLVE_PATH,
                snap=False,
            )
    return answers


def optimize_cardinality(
    problem: PortfolioProblem, moments: Moments, *, time_limit_s: float | None = None
) -> OptimizationResult:
    """Solve a mean-variance problem with ``max_holdings`` and/or ``min_position_weight`` exactly.

    The outer approximation of ``_cardinality`` with the mean-variance chain for its continuous subproblems (see
    ``optimize_mean_variance``, which calls this for such problems).

    Raises
    ------
    InvalidInputError
        Invalid K, m or bounds (``max_holdings``, ``min_position_weight``), or neither set.
    InfeasibleError, DeadlineExceededError, OptimizationError
        As ``optimize_mean_variance``.
    """
    model = ProblemModel.build(problem, moments)
    if model.cardinality is None:
        raise InvalidInputError.for_field("max_holdings", "set max_holdings or min_position_weight")
    model.precheck()
    return solve_model(model, time_limit_s=time_limit_s)


def optimize_risk_measure(
    problem: PortfolioProblem,
    scenarios: FloatArray,
    expected_returns: FloatArray,
    *,
    risk_measure: str,
    covariance: FloatArray | None = None,
    alpha: float = 0.95,
    periods_per_year: int = 252,
    max_risk: float | None = None,
    time_limit_s: float | None = None,
    backends: Sequence[ScenarioBackend] = SCENARIO_BACKENDS,
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
        The measure ρ: ``CVAR``, ``MAD`` or ``CDAR`` (see ``_risk_measures`` for the definitions).
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
    backends : sequence of ScenarioBackend, default=SCENARIO_BACKENDS
        The chain to try, in order.

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
        A pre-check failed or the solver proved the constraints infeasible (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        The solver hit ``time_limit_s``.
    OptimizationError
        The solver failed otherwise.
    """
    spec, moments = scenario_spec(
        problem, scenarios, expected_returns, risk_measure=risk_measure, covariance=covariance, alpha=alpha,
        periods_per_year=periods_per_year, max_risk=max_risk,
    )  # fmt: skip
    model = ProblemModel.build(problem, moments)
    model.precheck()
    result = _solve_scenarios(model, spec, time_limit_s, backends)
    if model.objective is Objective.MAX_SHARPE:
        risk = spec.value(result.weights)
        if not risk > 0:
            # min ρ(y) subject to (μ − r_f)ᵀy = 1 reached ρ ≤ 0 (only CVaR can be negative): portfolios with excess
            # return and a risk as close to 0 as one likes exist, so the ratio has no maximum.
            description = (
                f"the ratio of excess return to {spec.risk_measure} has no maximum: a portfolio with excess return "
                f"has {spec.risk_measure} {risk:.3g} (≤ 0) at confidence {spec.alpha:g}; raise confidence_level "
                "or choose another objective"
            )
            raise InfeasibleError(
                description,
                precondition_violations=(PreconditionViolation("UNBOUNDED_RATIO", "confidence_level", description),),
            )
    return result


def _solve_scenarios(
    model: ProblemModel, spec: ScenarioSpec, time_limit_s: float | None, backends: Sequence[ScenarioBackend]
) -> OptimizationResult:
    if model.cardinality is not None:

        def continuous(problem: PortfolioProblem, limit: float | None) -> OptimizationResult:
            support = ProblemModel.build(problem, model.moments)
            support.precheck()
            return _solve_scenarios(support, spec, limit, backends)

        return _cardinality.optimize_scenario_cardinality(model, spec, continuous, time_limit_s=time_limit_s)
    started = time.perf_counter()
    for backend in backends:
        if backend.supports(model, spec):
            _no_time(time_limit_s)
            result = backend.solve(model, spec, started=started, time_limit_s=time_limit_s)
            if result is not None:
                return result
    raise OptimizationError(f"no solver path answered {model.objective} with {spec.risk_measure}")
