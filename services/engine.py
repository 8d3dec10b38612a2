"""The engine's single entry point: inputs, a problem and a method in, an optimization outcome out.

This is what the command side runs in its worker processes: it is pure (no I/O) and picklable both ways.
Methods: mean-variance (variance, or CVaR / MAD / CDaR on the historical scenarios), Black-Litterman (the
posterior moments, then mean-variance), risk parity (JAX Newton), hierarchical risk parity, and robust
mean-variance over an uncertainty set on expected returns. ``run_optimization_batch`` runs many jobs, the
eligible mean-variance ones together (``services.optimization.optimize_mean_variance_batch``).

Why one long module: every method shares the same estimation, relaxation and outcome assembly around its solve,
and the batch entry point must build exactly the outcomes the single one builds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from services.errors import (
    DeadlineExceededError,
    InfeasibleError,
    InvalidInputError,
    OptimizationError,
    PreconditionViolation,
    StratoptError,
)
from services.estimation import (
    BlackLittermanPosterior,
    BlackLittermanSpec,
    black_litterman_posterior,
    estimate_betas,
    estimate_moments,
    hrp_returns_inputs,
    validate_moments,
)
from services.optimization import (
    Objective,
    OptimizationResult,
    PortfolioProblem,
    RiskMeasure,
    Uncertainty,
    check_constraints,
    find_relaxation,
    hierarchical_risk_parity,
    max_drawdown,
    optimize_mean_variance,
    optimize_mean_variance_batch,
    optimize_risk_measure,
    optimize_robust,
    portfolio_performance,
    risk_budgeting,
    risk_contributions,
    risk_measure_value,
    stacked_risk_contributions,
)
from services.types import EstimatedMoments, EstimationSettings, FloatArray, Moments, ReturnHistory


class Method(StrEnum):
    """Optimization method family."""

    MEAN_VARIANCE = "MEAN_VARIANCE"
    BLACK_LITTERMAN = "BLACK_LITTERMAN"
    RISK_PARITY = "RISK_PARITY"
    HIERARCHICAL_RISK_PARITY = "HIERARCHICAL_RISK_PARITY"
    ROBUST_OPTIMIZATION = "ROBUST_OPTIMIZATION"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlackLittermanSettings:
    """Prior and views of Black-Litterman, in the strategies' order (N strategies, K views).

    Attributes
    ----------
    picking_matrix : ndarray of shape (K, N)
        View portfolios P.
    view_returns : ndarray of shape (K,)
        Annualised expected returns Q of the view portfolios.
    market_caps, prior_returns : ndarray of shape (N,) or None
        Exactly one: capitalisations for the market-implied prior, or the prior returns.
    risk_aversion : float or None
        δ; None = implied from the market series when there is one, else 1.
    omega : ndarray of shape (K, K) or None
        View uncertainty; None = Idzorek (with ``view_confidences``) or He-Litterman.
    view_confidences : ndarray of shape (K,) or None
        Idzorek confidences in [0, 1].
    tau : float
        Scalar on the prior covariance.
    """

    picking_matrix: FloatArray
    view_returns: FloatArray
    market_caps: FloatArray | None = None
    prior_returns: FloatArray | None = None
    risk_aversion: float | None = None
    omega: FloatArray | None = None
    view_confidences: FloatArray | None = None
    tau: float = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodSettings:
    """Which method runs, with its parameters."""

    method: Method = Method.MEAN_VARIANCE
    risk_measure: RiskMeasure | None = None
    """CVaR, MAD or CDaR on the historical scenarios; None = variance."""
    confidence_level: float = 0.95
    """α of CVaR and CDaR."""
    linkage: str = "single"
    """Linkage of hierarchical risk parity."""
    risk_budgets: FloatArray | None = None
    """Risk budgets (N,) of risk parity; None = equal."""
    uncertainty: Uncertainty = Uncertainty.ELLIPSOIDAL
    robust_confidence: float = 0.95
    robust_observations: int = 0
    """Observations behind μ for the uncertainty set; 0 = those of the history."""
    black_litterman: BlackLittermanSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationJob:
    """Everything one optimization needs.

    Attributes
    ----------
    problem : PortfolioProblem
        Objective and constraints over N strategies.
    inputs : ReturnHistory or Moments
        A return history of shape (T, N) to estimate moments from, or annualised moments.
    settings : EstimationSettings
        Estimators and annualisation (ignored for moments input).
    method : MethodSettings
        Method and its parameters.
    time_limit_s : float or None
        Seconds left for the whole job (from the call's deadline); None = no limit.
    """

    problem: PortfolioProblem
    inputs: ReturnHistory | Moments
    settings: EstimationSettings
    method: MethodSettings = field(default_factory=MethodSettings)
    time_limit_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationOutcome:
    """The result with the moments it was computed from."""

    result: OptimizationResult
    estimated: EstimatedMoments
    total_time_ms: float
    """Wall time of estimation plus solve (milliseconds)."""
    risk_contributions: FloatArray
    """Each strategy's share of portfolio variance under the moments used, shape (N,), sums to 1."""
    risk_measure: str = "VARIANCE"
    risk_measure_value: float | None = None
    """Per-period CVaR / MAD / CDaR of the weights on the scenarios (losses positive)."""
    posterior: BlackLittermanPosterior | None = None
    max_drawdown: float | None = None
    """Maximum drawdown of the optimal weights over the estimation window (``services.optimization.max_drawdown``:
    compounded, from the peak, a fraction); None when moments were given instead of a return history."""


def run_optimization(job: OptimizationJob) -> OptimizationOutcome:
    """Estimate moments (unless given), validate them and run the job's method.

    Parameters
    ----------
    job : OptimizationJob
        Problem, inputs, estimation settings, method and time limit.

    Returns
    -------
    OptimizationOutcome
        Optimal weights of shape (N,), performance, solve metadata, risk contributions and the moments used.

    Raises
    ------
    InvalidInputError, InfeasibleError, DeadlineExceededError, OptimizationError
        See the method modules; a risk measure other than variance with moments input is invalid
        (``risk_measure``), as is robust optimization without an observation count (``robust_observations``).
    """
    started = time.perf_counter()
    history: ReturnHistory | None = None
    cholesky: FloatArray | None = None  # validate_moments' proof of positive definiteness, reused by the solver
    if isinstance(job.inputs, Moments):
        cholesky = validate_moments(job.inputs, job.problem.n_assets)
        estimated = EstimatedMoments(moments=job.inputs, observations=0, missing_data_policy="NONE")
    else:
        history = job.inputs
        estimated = estimate_moments(history, job.settings)

    def remaining() -> float | None:
        return None if job.time_limit_s is None else job.time_limit_s - (time.perf_counter() - started)

    spec, problem, moments = job.method, job.problem, estimated.moments
    posterior: BlackLittermanPosterior | None = None
    if spec.method is Method.BLACK_LITTERMAN:
        posterior = _posterior(spec, moments, history, job.settings, problem.risk_free_rate)
        moments = posterior.moments
    _check_method_objective(spec, problem)
    if problem.beta_tolerance is not None and problem.betas is None:
        problem = replace(problem, betas=_estimated_betas(history))
    scenarios: FloatArray | None = None
    if spec.method is Method.MEAN_VARIANCE and spec.risk_measure is not None:
        if history is None:
            raise InvalidInputError.for_field(
                "risk_measure",
                f"{spec.risk_measure} is computed on historical scenarios: give a return history, not moments",
            )
        scenarios = history.returns[~np.isnan(history.returns).any(axis=1)]

    def solve(p: PortfolioProblem) -> OptimizationResult:
        if scenarios is not None and spec.risk_measure is not None:
            return optimize_risk_measure(
                p,
                scenarios,
                moments.expected_returns,
                risk_measure=spec.risk_measure,
                covariance=moments.covariance,
                alpha=spec.confidence_level,
                periods_per_year=job.settings.periods_per_year,
                time_limit_s=remaining(),
            )
        if spec.method in (Method.MEAN_VARIANCE, Method.BLACK_LITTERMAN):
            factor = cholesky if moments is job.inputs else None  # not the posterior's Σ
            return optimize_mean_variance(p, moments, time_limit_s=remaining(), covariance_cholesky=factor)
        if spec.method is Method.RISK_PARITY:
            solved = risk_budgeting(moments.covariance, spec.risk_budgets)
            return _closed_result(
                solved.weights,
                p,
                moments,
                objective_value=solved.max_relative_rc_error,
                status="OPTIMAL" if solved.converged else "OPTIMAL_INACCURATE",
                iterations=solved.iterations,
                solver=solved.solver,
                solve_time_ms=solved.solve_time_ms,
                solve_path="JAX_NEWTON",
            )
        if spec.method is Method.HIERARCHICAL_RISK_PARITY:
            hrp_covariance, hrp_correlation = hrp_returns_inputs(history, job.settings, moments.covariance)
            hrp = hierarchical_risk_parity(
                hrp_covariance,
                linkage=spec.linkage,
                lower_bounds=p.lower_bounds,
                upper_bounds=p.upper_bounds,
                correlation=hrp_correlation,
            )
            return _closed_result(
                hrp.weights,
                p,
                moments,
                objective_value=float(hrp.weights @ moments.covariance @ hrp.weights),
                status="CLOSED_FORM",
                iterations=0,
                solver="HRP",
                solve_time_ms=hrp.solve_time_ms,
                solve_path="CLOSED_FORM",
            )
        observations = spec.robust_observations or estimated.observations
        if observations < 2:
            raise InvalidInputError.for_field(
                "robust_observations",
                "robust optimization on moments input needs the number of observations behind them (>= 2)",
            )
        return optimize_robust(
            p,
            moments,
            uncertainty=spec.uncertainty,
            confidence=spec.robust_confidence,
            observations=observations,
            periods_per_year=job.settings.periods_per_year,
            time_limit_s=remaining(),
        )

    # The elastic program models the nominal return μᵀw: robust optimization (worst-case return) is not relaxed.
    relaxable = spec.method in (Method.MEAN_VARIANCE, Method.BLACK_LITTERMAN)
    try:
        result = solve(problem)
    except InfeasibleError as exc:
        if not relaxable:
            raise
        try:
            found = find_relaxation(problem, moments, time_limit_s=remaining())
        except (OptimizationError, DeadlineExceededError):
            raise exc from None  # the diagnosis failed: the infeasibility is still the answer
        if found is None:
            raise
        relaxed, relaxations = found
        details = (
            *exc.precondition_violations,
            *(PreconditionViolation("RELAXATION", r.constraint, r.description) for r in relaxations),
        )
        smallest = "; ".join(r.description for r in relaxations)
        if not problem.allow_relaxation:
            raise InfeasibleError(
                f"{exc.message}. The smallest relaxation that makes it feasible: {smallest}",
                precondition_violations=details,
            ) from exc
        try:
            result = solve(relaxed)
        except InfeasibleError as still:
            # Relaxing the limits is not enough (e.g. cardinality, or no excess return for max Sharpe).
            raise InfeasibleError(
                f"{exc.message}. Relaxing the limits ({smallest}) is not enough: {still.message}",
                precondition_violations=(*details, *still.precondition_violations),
            ) from exc
        violations = check_constraints(result.weights, problem, moments)
        result = replace(result, relaxations=relaxations, violations=violations, constraints_satisfied=not violations)
    if problem.betas is not None and result.betas is None:
        result = replace(result, betas=problem.betas)
    measure_name, measure_value = "VARIANCE", None
    if scenarios is not None and spec.risk_measure is not None:
        measure_name = spec.risk_measure.value
        measure_value = risk_measure_value(
            scenarios, result.weights, risk_measure=spec.risk_measure, alpha=spec.confidence_level
        )
    return OptimizationOutcome(
        result=result,
        estimated=estimated,
        total_time_ms=(time.perf_counter() - started) * 1000.0,
        risk_contributions=risk_contributions(result.weights, moments.covariance),
        risk_measure=measure_name,
        risk_measure_value=measure_value,
        posterior=posterior,
        max_drawdown=None if history is None else max_drawdown(history.returns, result.weights),
    )


def run_optimization_batch(jobs: list[OptimizationJob]) -> list[OptimizationOutcome | Exception]:
    """Run many jobs, solving the mean-variance ones the batched active set supports together.

    The same answers as ``run_optimization`` one job at a time (the batch's are certified by KKT and exact to
    rounding): jobs of method ``MEAN_VARIANCE`` with the variance risk measure and no beta neutrality have their
    moments estimated here and their problems handed to ``optimize_mean_variance_batch`` (which batches min
    volatility, quadratic utility, max Sharpe, efficient return and efficient risk under the budget and finite
    bounds); every other job, and every problem the batch does not answer, runs through ``run_optimization``.
    Given moments are checked (``validate_moments``' conditions, stacked per N) while the batch solves, and the
    outcomes of problems certified early are built while it solves the rest; a job whose moments fail gets their
    error and its answer is dropped.

    An exception that is no domain error (a bug, or a library failing in a way it does not document) is the answer
    of the job that raised it, as a domain error is; one from the batched solve itself leaves its jobs to
    ``run_optimization``, one by one, so that the others are still answered (exactly, on the single path).

    Parameters
    ----------
    jobs : list of OptimizationJob
        The jobs (their ``time_limit_s`` applies to the ones run singly).

    Returns
    -------
    list of OptimizationOutcome or Exception
        Per job, in order: its outcome, or the error it raised — a ``StratoptError``, or another exception for a
        bug — (a bad item never sinks the others).
    """
    started = time.perf_counter()
    outcomes: list[OptimizationOutcome | Exception | None] = [None] * len(jobs)
    batchable: list[tuple[int, EstimatedMoments, ReturnHistory | None]] = []
    refused: dict[int, StratoptError] = {}  # the method or objective error of a job with given moments
    for k, job in enumerate(jobs):
        spec, problem = job.method, job.problem
        if (
            spec.method is not Method.MEAN_VARIANCE
            or spec.risk_measure is not None
            or problem.beta_tolerance is not None
        ):
            continue
        given = isinstance(job.inputs, Moments)
        try:
            if isinstance(job.inputs, Moments):  # validated while the batch solves (``valid`` below)
                n = problem.n_assets
                if job.inputs.expected_returns.shape != (n,) or job.inputs.covariance.shape != (n, n):
                    validate_moments(job.inputs, n)  # its error now: a problem cannot be built on them
                estimated = EstimatedMoments(moments=job.inputs, observations=0, missing_data_policy="NONE")
                history = None
            else:
                estimated, history = estimate_moments(job.inputs, job.settings), job.inputs
            _check_method_objective(spec, problem)
        except StratoptError as error:
            if given:
                refused[k] = error  # after the moments' own error, as run_optimization orders them
            else:
                outcomes[k] = error
            continue
        except Exception as error:  # a bug in this job's estimation: its answer, not the batch's
            outcomes[k] = error
            continue
        batchable.append((k, estimated, history))
    valid: set[int] = set()

    def validate() -> None:  # while XLA iterates: the given moments, stacked per N
        valid.update(_valid_moments_together(jobs))

    def report(indices: list[int], results: list[OptimizationResult]) -> None:
        """The outcomes of results certified while the batch still solves others (``on_results``)."""
        ready = [
            (batchable[i], result)
            for i, result in zip(indices, results, strict=True)
            if batchable[i][2] is not None or batchable[i][0] in valid  # given moments: only those checked good
        ]
        _outcomes(ready, outcomes, started)

    # The given moments are checked while the batch solves; the answer of a job whose moments fail is dropped. A
    # build or pre-check error from the batch is left to run_optimization, which adds its relaxation diagnosis.
    solved: list[OptimizationResult | Exception | None]
    try:
        solved = list(
            optimize_mean_variance_batch(
                [jobs[k].problem for k, _, _ in batchable],
                [estimated.moments for _, estimated, _ in batchable],
                meanwhile=validate,
                on_results=report,
            )
        )
    except Exception:  # a bug in the batched solve: every job not yet answered runs singly below
        solved = [None] * len(batchable)
    for k in sorted({*refused, *(k for k, _, history in batchable if history is None)} - valid):
        try:  # its error (or its acceptance) exactly as run_optimization gives it
            validate_moments(jobs[k].inputs, jobs[k].problem.n_assets)  # type: ignore[arg-type]
        except StratoptError as error:
            outcomes[k] = error
    for k, refusal in refused.items():
        if outcomes[k] is None:
            outcomes[k] = refusal
    _outcomes(
        [
            (entry, result)
            for entry, result in zip(batchable, solved, strict=True)
            if isinstance(result, OptimizationResult) and outcomes[entry[0]] is None
        ],
        outcomes,
        started,
    )
    for k, job in enumerate(jobs):
        if outcomes[k] is None:
            try:
                outcomes[k] = run_optimization(job)
            except Exception as error:  # a domain error, or a bug: this job's answer either way
                outcomes[k] = error
    return [outcome for outcome in outcomes if outcome is not None]


def _outcomes(
    answered: list[tuple[tuple[int, EstimatedMoments, ReturnHistory | None], OptimizationResult]],
    outcomes: list[OptimizationOutcome | Exception | None],
    started: float,
) -> None:
    """``OptimizationOutcome``s of batch results (risk contributions stacked per N) into ``outcomes``."""
    contributions = stacked_risk_contributions(
        [result.weights for _, result in answered], [entry[1].moments.covariance for entry, _ in answered]
    )
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    for ((k, estimated, history), result), shares in zip(answered, contributions, strict=True):
        outcomes[k] = OptimizationOutcome(
            result=result,
            estimated=estimated,
            total_time_ms=elapsed_ms,
            risk_contributions=shares,
            max_drawdown=None if history is None else max_drawdown(history.returns, result.weights),
        )


def _valid_moments_together(jobs: list[OptimizationJob]) -> set[int]:
    """The jobs whose given moments pass ``validate_moments``, checked together for jobs of the same N.

    Stacked per N: the shapes, finiteness, symmetry (to 1e-10 of the largest entry), positive variances and a
    Cholesky factor of the symmetric part, the sufficient conditions ``validate_moments`` accepts on. A job left
    out (one of those failed) is validated on its own, with its own error (or accepted there, e.g. a singular
    positive semidefinite Σ).
    """
    by_size: dict[int, list[int]] = {}
    for k, job in enumerate(jobs):
        inputs, n = job.inputs, job.problem.n_assets
        if isinstance(inputs, Moments) and inputs.expected_returns.shape == (n,) and inputs.covariance.shape == (n, n):
            by_size.setdefault(n, []).append(k)
    valid: set[int] = set()
    for members in by_size.values():
        mu = np.array([jobs[k].inputs.expected_returns for k in members])  # type: ignore[union-attr]
        sigma = np.array([jobs[k].inputs.covariance for k in members])  # type: ignore[union-attr]
        with np.errstate(invalid="ignore"):
            scale = np.maximum(np.abs(sigma).max(axis=(1, 2)), 1e-300)
            asymmetry = np.abs(sigma - sigma.transpose(0, 2, 1)).max(axis=(1, 2))
            symmetric = asymmetry <= 1e-10 * scale
            good = (
                np.isfinite(mu).all(axis=1)
                & np.isfinite(sigma).all(axis=(1, 2))
                & symmetric
                & (np.diagonal(sigma, axis1=1, axis2=2) > 0.0).all(axis=1)
            )
        chosen = [int(i) for i in np.flatnonzero(good)]
        halves = sigma[chosen]
        if asymmetry[chosen].any():  # exactly symmetric (the usual case): Σ is its own symmetric part
            halves = (halves + halves.transpose(0, 2, 1)) / 2.0
        try:
            np.linalg.cholesky(halves)
        except np.linalg.LinAlgError:  # one of them has no factor: find which, one by one
            chosen = [i for i, half in zip(chosen, halves, strict=True) if _has_cholesky(half)]
        valid.update(members[i] for i in chosen)
    return valid


def _has_cholesky(matrix: FloatArray) -> bool:
    try:
        np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return False
    return True


def _closed_result(
    weights: FloatArray,
    problem: PortfolioProblem,
    moments: Moments,
    *,
    objective_value: float,
    status: str,
    iterations: int,
    solver: str,
    solve_time_ms: float,
    solve_path: str,
) -> OptimizationResult:
    """An ``OptimizationResult`` for weights found without the convex solver (checked like any other)."""
    violations = check_constraints(weights, problem, moments)
    return OptimizationResult(
        weights=weights,
        performance=portfolio_performance(weights, moments, problem.risk_free_rate),
        objective_value=float(objective_value),
        status=status,
        iterations=iterations,
        solver=solver,
        solve_time_ms=solve_time_ms,
        constraints_satisfied=not violations,
        violations=violations,
        solve_path=solve_path,
    )


def _check_method_objective(spec: MethodSettings, problem: PortfolioProblem) -> None:
    """Reject objective and constraint combinations a method cannot honour, naming them.

    Raises
    ------
    InvalidInputError
        The multi-objective outside mean-variance with variance (``objective``).
    """
    if problem.objective is Objective.MULTI_OBJECTIVE:
        if spec.method is Method.ROBUST_OPTIMIZATION:
            raise InvalidInputError.for_field("objective", "MULTI_OBJECTIVE is not available with ROBUST_OPTIMIZATION")
        if spec.risk_measure is not None and spec.method is Method.MEAN_VARIANCE:
            raise InvalidInputError.for_field(
                "objective", f"MULTI_OBJECTIVE needs the variance risk measure, not {spec.risk_measure}"
            )


def _estimated_betas(history: ReturnHistory | None) -> FloatArray:
    """Betas against the history's market series, for a beta tolerance given without betas.

    Raises
    ------
    InvalidInputError
        No market series (``betas``).
    """
    if history is None or history.market_returns is None:
        raise InvalidInputError.for_field(
            "betas",
            "required with beta_tolerance unless a market series is given to estimate them against (market_returns)",
        )
    return estimate_betas(history.returns, history.market_returns)


def _posterior(
    spec: MethodSettings,
    moments: Moments,
    history: ReturnHistory | None,
    settings: EstimationSettings,
    risk_free_rate: float,
) -> BlackLittermanPosterior:
    """Black-Litterman posterior on the estimated covariance."""
    bl = spec.black_litterman
    if bl is None:
        raise InvalidInputError.for_field("black_litterman", "BLACK_LITTERMAN needs market_caps or prior_returns")
    market = None
    if history is not None and history.market_returns is not None and bl.risk_aversion is None:
        market = history.market_returns[~np.isnan(history.market_returns)]
    return black_litterman_posterior(
        BlackLittermanSpec(
            covariance=moments.covariance,
            picking_matrix=bl.picking_matrix,
            view_returns=bl.view_returns,
            market_caps=bl.market_caps,
            prior_returns=bl.prior_returns,
            risk_aversion=bl.risk_aversion,
            market_returns=market if market is not None and market.size >= 2 else None,
            periods_per_year=settings.periods_per_year,
            risk_free_rate=risk_free_rate,
            omega=bl.omega,
            view_confidences=bl.view_confidences,
            tau=bl.tau,
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontierOutcome:
    """Efficient portfolios from minimum volatility to maximum return."""

    results: tuple[OptimizationResult, ...]
    """One result per point, by increasing expected return."""
    total_time_ms: float


def efficient_frontier(job: OptimizationJob, points: int) -> FrontierOutcome:
    """The mean-variance efficient frontier of a job's problem under its constraints.

    Estimates the moments once (or takes the Black-Litterman posterior), solves the minimum-volatility and the
    maximum-return portfolios, then minimum volatility at ``points`` evenly spaced target returns between them
    (Markowitz, 1952; PyPortfolioOpt's ``efficient_return`` at each target).

    Parameters
    ----------
    job : OptimizationJob
        Problem, inputs and method (MEAN_VARIANCE with variance, or BLACK_LITTERMAN); the objective is ignored.
    points : int
        Number of portfolios, at least 2.

    Returns
    -------
    FrontierOutcome
        ``points`` results by increasing expected return.

    Raises
    ------
    InvalidInputError, InfeasibleError, DeadlineExceededError, OptimizationError
        As ``optimize_mean_variance``.
    """
    started = time.perf_counter()
    if isinstance(job.inputs, Moments):
        validate_moments(job.inputs, job.problem.n_assets)
        moments = job.inputs
    else:
        moments = estimate_moments(job.inputs, job.settings).moments
    if job.method.method is Method.BLACK_LITTERMAN:
        history = None if isinstance(job.inputs, Moments) else job.inputs
        moments = _posterior(job.method, moments, history, job.settings, job.problem.risk_free_rate).moments

    def solve(problem: PortfolioProblem) -> OptimizationResult:
        left = None if job.time_limit_s is None else job.time_limit_s - (time.perf_counter() - started)
        return optimize_mean_variance(problem, moments, time_limit_s=left)

    base = job.problem
    if base.beta_tolerance is not None and base.betas is None:
        base = replace(base, betas=_estimated_betas(None if isinstance(job.inputs, Moments) else job.inputs))
    lowest = solve(replace(base, objective=Objective.MIN_VOLATILITY))
    highest = solve(replace(base, objective=Objective.MAX_RETURN))
    low, high = lowest.performance.expected_return, highest.performance.expected_return
    results = [lowest]
    for target in np.linspace(low, high, points)[1:-1]:
        results.append(solve(replace(base, objective=Objective.MIN_VOLATILITY, min_return=float(target))))
    results.append(highest)
    return FrontierOutcome(results=tuple(results), total_time_ms=(time.perf_counter() - started) * 1000.0)
