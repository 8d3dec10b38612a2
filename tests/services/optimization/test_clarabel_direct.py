"""The direct Clarabel path of mean-variance (``_clarabel_direct``) against the cvxpy path and NumPy.

Truth: the cvxpy path of ``optimize_mean_variance`` (cvxpy canonicalisation + Clarabel at 1e-10, also answering
under the cached DPP program for N ≤ 64) without the direct path (``backends=(CONIC,)``):
the objective must agree to 1e-7 relative; every constraint is checked on the weights with NumPy here. Data: the
S&P 500 data set of ``data/`` (PyPortfolioOpt's mean historical return and sample covariance of the last 756 daily
returns, sectors of ``SP500_SECTORS``) and seeded random positive definite matrices at N = 20, 100, 300.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pypfopt import expected_returns, risk_models

from services.errors import DeadlineExceededError, InfeasibleError
from services.optimization import (
    ACTIVE_SET,
    CLARABEL_DIRECT,
    CONIC,
    DUAL_ACTIVE_SET,
    MEAN_VARIANCE_BACKENDS,
    MultiObjectiveWeights,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    ProblemModel,
    SectorLimit,
    check_constraints,
    optimize_mean_variance,
)
from services.optimization import _active_set as fast_qp
from services.optimization import _clarabel_direct as clarabel_direct
from services.types import Moments
from tests.services.market_data import SP500_SECTORS
from tests.services.optimization.families import with_new_family

CLARABEL_CHAIN = tuple(backend for backend in MEAN_VARIANCE_BACKENDS if backend is not DUAL_ACTIVE_SET)
"""The default chain without the dual active set, which answers the small problems first (test_dual_active_set)."""
OBJECTIVE_RTOL = 1e-7
"""Agreement of the direct path's objective with the cvxpy path's (relative)."""
FEASIBILITY_TOL = 1e-7
OBJECTIVES = (
    Objective.MIN_VOLATILITY,
    Objective.MAX_QUADRATIC_UTILITY,
    Objective.MAX_RETURN,
    Objective.MAX_SHARPE,
)
RISK_FREE = 0.02
SP500_DAYS = 756
SECTOR_LIMITS = (
    SectorLimit("energy", max_weight=0.15),
    SectorLimit("financials", min_weight=0.05),
    SectorLimit("health", max_weight=0.30),
    SectorLimit("staples", min_weight=0.10),
    SectorLimit("tech", max_weight=0.20),
)


# --- helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_moments(sp500_prices: pd.DataFrame) -> Moments:
    prices = sp500_prices.iloc[-(SP500_DAYS + 1) :]
    mu = expected_returns.mean_historical_return(prices)
    cov = risk_models.sample_cov(prices)
    return Moments(expected_returns=mu.to_numpy(), covariance=cov.to_numpy())


@pytest.fixture(scope="module")
def sp500_tickers(sp500_prices: pd.DataFrame) -> tuple[str, ...]:
    return tuple(sp500_prices.columns)


def random_moments(n: int, seed: int) -> Moments:
    """A seeded positive definite Σ (sample covariance of 2N periods with a common component) and μ."""
    rng = np.random.default_rng([seed, n])
    samples = 0.5 * rng.normal(size=(2 * n, 1)) + rng.normal(size=(2 * n, n))
    scales = rng.uniform(0.1, 0.5, n)
    covariance = (samples.T @ samples / (2 * n)) * np.outer(scales, scales)
    mu = rng.normal(0.08, 0.08, n)
    return Moments(expected_returns=mu, covariance=(covariance + covariance.T) / 2)


def random_problem(objective: Objective, n: int, seed: int, **fields: Any) -> PortfolioProblem:
    """Capped weights over five round-robin groups with three group limits; ``fields`` override."""
    base: dict[str, Any] = {
        "symbols": tuple(f"s{i}" for i in range(n)),
        "objective": objective,
        "lower_bounds": np.zeros(n),
        "upper_bounds": np.full(n, max(0.1, 3.0 / n)),
        "sectors": tuple(f"g{(i + seed) % 5}" for i in range(n)),
        "sector_limits": (
            SectorLimit("g0", max_weight=0.15),
            SectorLimit("g1", min_weight=0.25),
            SectorLimit("g2", min_weight=0.05, max_weight=0.2),
        ),
        "risk_free_rate": RISK_FREE,
        "risk_aversion": 3.0,
    }
    base.update(fields)
    return PortfolioProblem(**base)


def sp500_problem(objective: Objective, tickers: tuple[str, ...], **fields: Any) -> PortfolioProblem:
    n = len(tickers)
    base: dict[str, Any] = {
        "symbols": tickers,
        "objective": objective,
        "lower_bounds": np.zeros(n),
        "upper_bounds": np.full(n, 0.25),
        "sectors": tuple(SP500_SECTORS[t] for t in tickers),
        "sector_limits": SECTOR_LIMITS,
        "risk_free_rate": RISK_FREE,
        "risk_aversion": 2.0,
    }
    base.update(fields)
    return PortfolioProblem(**base)


def cvxpy_path(problem: PortfolioProblem, moments: Moments, monkeypatch: pytest.MonkeyPatch) -> OptimizationResult:
    """The cvxpy + Clarabel path's answer (direct path switched off for this call)."""
    result = optimize_mean_variance(problem, moments, backends=(CONIC,))
    assert result.solve_path == "CONIC"
    return result


def assert_feasible(weights: np.ndarray, problem: PortfolioProblem, moments: Moments) -> None:
    """Budget (or net exposure), bounds, group limits and min_return checked with NumPy."""
    tol = FEASIBILITY_TOL
    total = float(weights.sum())
    if problem.min_net_exposure is None and problem.max_net_exposure is None:
        assert total == pytest.approx(1.0, abs=tol)
    if problem.min_net_exposure is not None:
        assert total >= problem.min_net_exposure - tol
    if problem.max_net_exposure is not None:
        assert total <= problem.max_net_exposure + tol
    assert np.all(weights >= problem.lower_bounds - tol)
    assert np.all(weights <= problem.upper_bounds + tol)
    schemes = {"": problem.sectors, **dict(problem.classifications)}
    for limit in problem.sector_limits:
        members = np.array([g == limit.sector for g in schemes[limit.scheme]])
        group = float(weights[members].sum())
        if limit.min_weight is not None:
            assert group >= limit.min_weight - tol
        if limit.max_weight is not None:
            assert group <= limit.max_weight + tol
    if problem.min_return is not None:
        cash = (1.0 - total) * problem.risk_free_rate
        assert float(moments.expected_returns @ weights) + cash >= problem.min_return - tol
    assert check_constraints(weights, problem, moments) == ()


def assert_matches_cvxpy(
    problem: PortfolioProblem, moments: Moments, monkeypatch: pytest.MonkeyPatch
) -> OptimizationResult:
    """The engine answers on the direct path, feasibly, with the cvxpy path's objective to OBJECTIVE_RTOL."""
    direct = optimize_mean_variance(problem, moments, backends=CLARABEL_CHAIN)
    assert (direct.solve_path, direct.solver, direct.status) == ("CLARABEL_DIRECT", "CLARABEL", "OPTIMAL")
    assert not direct.fallback_used and direct.iterations > 0
    assert direct.constraints_satisfied and direct.violations == ()
    assert_feasible(direct.weights, problem, moments)
    reference = cvxpy_path(problem, moments, monkeypatch)
    assert direct.objective_value == pytest.approx(reference.objective_value, rel=OBJECTIVE_RTOL, abs=1e-12)
    # The reported performance is that of the weights.
    volatility = float(np.sqrt(direct.weights @ moments.covariance @ direct.weights))
    assert direct.performance.volatility == pytest.approx(volatility, rel=1e-12)
    return direct


# --- the objectives against the cvxpy path -----------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_real_data_matches_the_cvxpy_path(
    objective: Objective, sp500_moments: Moments, sp500_tickers: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    mu = sp500_moments.expected_returns
    variants: list[dict[str, Any]] = [
        {},
        {"min_return": float(np.quantile(mu, 0.6))},
        {"sector_limits": (), "upper_bounds": np.full(len(sp500_tickers), 0.15), "min_return": float(np.median(mu))},
        {"lower_bounds": np.full(len(sp500_tickers), -0.1), "upper_bounds": np.full(len(sp500_tickers), 0.4)},
    ]
    for fields in variants:
        assert_matches_cvxpy(sp500_problem(objective, sp500_tickers, **fields), sp500_moments, monkeypatch)


@pytest.mark.parametrize("n", [20, 100, 300])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_random_covariances_match_the_cvxpy_path(objective: Objective, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed in range(2):
        moments = random_moments(n, seed)
        target = float(np.quantile(moments.expected_returns, 0.7))
        assert_matches_cvxpy(random_problem(objective, n, seed), moments, monkeypatch)
        assert_matches_cvxpy(random_problem(objective, n, seed, min_return=target), moments, monkeypatch)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_net_exposure_bounds_match_the_cvxpy_path(
    objective: Objective, sp500_moments: Moments, sp500_tickers: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Net exposure low ≤ 1ᵀw ≤ high, the cash leg r_f(1 − 1ᵀw) in the return (max Sharpe: low·κ ≤ 1ᵀy ≤ high·κ)."""
    target = float(np.quantile(sp500_moments.expected_returns, 0.6))
    for low, high in ((0.6, 0.9), (0.5, None), (None, 0.8)):
        for min_return in (None, target):
            problem = sp500_problem(
                objective, sp500_tickers, min_net_exposure=low, max_net_exposure=high, min_return=min_return
            )
            assert_matches_cvxpy(problem, sp500_moments, monkeypatch)


def test_two_classification_schemes_match_the_cvxpy_path(
    sp500_moments: Moments, sp500_tickers: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    countries = tuple("US" if i % 3 else "EU" for i in range(len(sp500_tickers)))
    limits = (*SECTOR_LIMITS, SectorLimit("EU", min_weight=0.4, scheme="country"))
    for objective in OBJECTIVES:
        problem = sp500_problem(
            objective, sp500_tickers, classifications=(("country", countries),), sector_limits=limits
        )
        assert_matches_cvxpy(problem, sp500_moments, monkeypatch)


def test_max_return_matches_the_greedy_lp_solution() -> None:
    """Budget and bounds only: the LP's optimum fills the highest μ first (an answer independent of any solver)."""
    moments = random_moments(50, 3)
    problem = random_problem(Objective.MAX_RETURN, 50, 3, sector_limits=(), upper_bounds=np.full(50, 0.07))
    result = optimize_mean_variance(problem, moments)
    assert result.solve_path == "CLARABEL_DIRECT"
    greedy = np.zeros(50)
    order = np.argsort(-moments.expected_returns)
    greedy[order[:14]] = 0.07
    greedy[order[14]] = 1.0 - 14 * 0.07
    assert result.objective_value == pytest.approx(float(moments.expected_returns @ greedy), rel=1e-9)


# --- the program ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_program_holds_the_constraints_and_objective(objective: Objective) -> None:
    """P is the upper triangle of 2Σ (δΣ, 0); Ax ≤ b, with equality on the zero cone, exactly at feasible points."""
    n = 12
    moments = random_moments(n, 5)
    problem = random_problem(objective, n, 5, min_return=0.05, min_net_exposure=0.5, max_net_exposure=0.95)
    program = clarabel_direct.build_program(ProblemModel.build(problem, moments))
    sharpe = objective is Objective.MAX_SHARPE
    n_vars = n + 1 if sharpe else n
    assert program.P.shape == (n_vars, n_vars) and program.A.shape[1] == n_vars
    dense_p = program.P.toarray()
    np.testing.assert_array_equal(dense_p, np.triu(dense_p))
    scale = {Objective.MAX_RETURN: 0.0, Objective.MAX_QUADRATIC_UTILITY: problem.risk_aversion}.get(objective, 2.0)
    np.testing.assert_allclose(dense_p[:n, :n], np.triu(scale * moments.covariance), rtol=1e-15)
    assert program.A.nnz == np.count_nonzero(program.A.toarray())  # no explicit zeros
    rng = np.random.default_rng(0)
    a, b = program.A.toarray(), program.b
    for _ in range(200):
        weights = rng.uniform(0.0, 0.2, n)
        kappa = rng.uniform(0.5, 2.0)
        x = np.append(weights * kappa, kappa) if sharpe else weights
        residual = a @ x - b
        feasible = not check_constraints(weights, problem, moments)
        if sharpe:  # the program's scale: (μ − r_f)ᵀy = 1
            excess = float((moments.expected_returns - RISK_FREE) @ weights)
            x = np.append(weights, 1.0) / excess if excess > 0 else x
            residual = a @ x - b
            feasible = feasible and excess > 0
        equalities, inequalities = residual[: program.n_equalities], residual[program.n_equalities :]
        holds = bool(np.all(np.abs(equalities) <= 1e-12) and np.all(inequalities <= 1e-12))
        assert holds == feasible
    assert [c.__class__.__name__ for c in program.cones()] == (
        ["ZeroConeT", "NonnegativeConeT"] if sharpe else ["NonnegativeConeT"]
    )


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_conflicting_group_limits_of_two_schemes_are_proved_infeasible(
    objective: Objective, sp500_moments: Moments, sp500_tickers: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tech ≤ 10 % and a country group made of tech names ≥ 30 %: each limit alone passes the pre-checks."""
    tech = [i for i, t in enumerate(sp500_tickers) if SP500_SECTORS[t] == "tech"]
    countries = tuple("US" if i in tech else "EU" for i in range(len(sp500_tickers)))
    problem = sp500_problem(
        objective,
        sp500_tickers,
        classifications=(("country", countries),),
        sector_limits=(SectorLimit("tech", max_weight=0.1), SectorLimit("US", min_weight=0.3, scheme="country")),
    )
    with pytest.raises(InfeasibleError):  # proved by the direct path itself, not by the cvxpy path behind it
        direct(problem, sp500_moments, started=time.perf_counter())
    with pytest.raises(InfeasibleError) as by_direct:
        optimize_mean_variance(problem, sp500_moments)
    with pytest.raises(InfeasibleError) as reference:
        optimize_mean_variance(problem, sp500_moments, backends=(CONIC,))
    (violation,) = by_direct.value.precondition_violations
    assert (violation.type, violation.subject) == ("SOLVER_INFEASIBLE", "constraints")
    assert by_direct.value.precondition_violations == reference.value.precondition_violations
    assert str(by_direct.value) == str(reference.value)


def test_a_time_limit_is_passed_to_clarabel() -> None:
    moments = random_moments(300, 1)
    problem = random_problem(Objective.MIN_VOLATILITY, 300, 1)
    with pytest.raises(DeadlineExceededError):  # Clarabel stops at its time limit (MaxTime)
        direct(problem, moments, started=time.perf_counter(), time_limit_s=1e-4)
    with pytest.raises(DeadlineExceededError):  # nothing left before the solve
        direct(problem, moments, started=time.perf_counter() - 1.0, time_limit_s=0.5)
    result = optimize_mean_variance(problem, moments, time_limit_s=60.0)
    assert (result.solve_path, result.status) == ("CLARABEL_DIRECT", "OPTIMAL")


@dataclass
class _FakeSolution:
    status: str
    x: list[float]
    iterations: int = 7


def test_solver_statuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """AlmostSolved: solved again at Clarabel's defaults; a failure (e.g. NumericalError): the next backend answers."""
    moments = random_moments(20, 2)
    problem = random_problem(Objective.MIN_VOLATILITY, 20, 2)
    exact = optimize_mean_variance(problem, moments, backends=CLARABEL_CHAIN)
    calls: list[dict[str, float]] = []
    real_solve = clarabel_direct.solve

    def almost_then_exact(program: Any, settings: dict[str, float], time_limit: float = float("inf")) -> Any:
        calls.append(settings)
        if len(calls) == 1:
            return _FakeSolution("AlmostSolved", list(exact.weights + 1e-9))
        return real_solve(program, settings, time_limit)

    monkeypatch.setattr(clarabel_direct, "solve", almost_then_exact)
    retried = optimize_mean_variance(problem, moments, backends=CLARABEL_CHAIN)
    assert (retried.status, retried.solve_path) == ("OPTIMAL", "CLARABEL_DIRECT")
    assert calls[1]["tol_gap_abs"] == 1e-8  # Clarabel's default tolerances on the second solve
    assert retried.objective_value == pytest.approx(exact.objective_value, rel=1e-6)

    monkeypatch.setattr(
        clarabel_direct, "solve", lambda *_args, **_kw: _FakeSolution("AlmostSolved", list(exact.weights))
    )
    inaccurate = optimize_mean_variance(problem, moments, backends=CLARABEL_CHAIN)
    assert (inaccurate.status, inaccurate.solve_path) == ("OPTIMAL_INACCURATE", "CLARABEL_DIRECT")

    monkeypatch.setattr(clarabel_direct, "solve", lambda *_args, **_kw: _FakeSolution("NumericalError", []))
    assert direct(problem, moments, started=time.perf_counter()) is None
    fallback = optimize_mean_variance(problem, moments, backends=CLARABEL_CHAIN)
    assert fallback.solve_path == "DENSE_IPM"  # the next backend of the chain that supports min volatility
    assert fallback.objective_value == pytest.approx(exact.objective_value, rel=OBJECTIVE_RTOL)


# --- eligibility ---------------------------------------------------------------------------------------------------

NOT_ELIGIBLE: dict[str, dict[str, Any]] = {
    "max_volatility": {"max_volatility": 0.3},
    "turnover": {"turnover_limit": 0.5, "current_weights": np.full(20, 0.05)},
    "turnover_caps": {"turnover_caps": np.full(20, 0.1)},
    "leverage": {"leverage_limit": 1.5},
    "costs": {"transaction_costs_bps": np.full(20, 5.0)},
    "tracking_error": {"tracking_error_limit": 0.05, "benchmark_weights": np.full(20, 0.05)},
    "beta": {"beta_tolerance": 0.1, "betas": np.ones(20)},
    "multi_objective": {"objective": Objective.MULTI_OBJECTIVE},
    "cardinality": {"max_holdings": 5},
    "min_position": {"min_position_weight": 0.02},
    "infinite_bound": {"upper_bounds": np.full(20, np.inf)},
    "zero_risk_aversion": {"objective": Objective.MAX_QUADRATIC_UTILITY, "risk_aversion": 0.0},
}


@pytest.mark.parametrize("fields", NOT_ELIGIBLE.values(), ids=NOT_ELIGIBLE.keys())
def test_other_constraint_families_are_not_eligible(fields: dict[str, Any]) -> None:
    others = dict(fields)
    problem = random_problem(others.pop("objective", Objective.MIN_VOLATILITY), 20, 0, **others)
    assert not eligible(problem)
    assert direct(problem, random_moments(20, 0), started=time.perf_counter()) is None


def test_a_trading_limit_takes_the_next_backend() -> None:
    moments = random_moments(20, 0)
    problem = random_problem(Objective.MIN_VOLATILITY, 20, 0, turnover_limit=1.5, current_weights=np.full(20, 0.05))
    result = optimize_mean_variance(problem, moments)
    assert (result.solve_path, result.solver) == ("DENSE_IPM", "DENSE_IPM")


def test_eligibility() -> None:
    base = random_problem(Objective.MIN_VOLATILITY, 20, 0, min_return=0.05, min_net_exposure=0.9)
    assert eligible(base)
    # Inert fields: read only by a constraint family the problem does not have.
    inert = replace(
        base,
        current_weights=np.full(20, 0.05),
        benchmark_weights=np.full(20, 0.05),
        betas=np.ones(20),
        multi_objective=MultiObjectiveWeights(),
    )
    assert eligible(inert)
    assert not eligible(replace(base, sector_limits=(SectorLimit("g0", max_weight=np.inf),)))

    # A constraint family the backend does not list is not supported.
    model = ProblemModel.build(base, random_moments(20, 0))
    assert not CLARABEL_DIRECT.supports(with_new_family(model))


def eligible(problem: PortfolioProblem) -> bool:
    """Whether the direct path supports ``problem`` (on any valid moments)."""
    return CLARABEL_DIRECT.supports(ProblemModel.build(problem, random_moments(problem.n_assets, 0)))


def direct(
    problem: PortfolioProblem, moments: Moments, *, started: float, time_limit_s: float | None = None
) -> OptimizationResult | None:
    """The direct path's answer, or None (not supported, or declined)."""
    model = ProblemModel.build(problem, moments)
    if not CLARABEL_DIRECT.supports(model):
        return None
    return CLARABEL_DIRECT.solve(model, started=started, time_limit_s=time_limit_s)


def test_switched_off_and_fast_path_problems_do_not_take_the_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    moments = random_moments(20, 0)
    grouped = random_problem(Objective.MAX_SHARPE, 20, 0)
    assert optimize_mean_variance(grouped, moments).solve_path == "DUAL_ACTIVE_SET"  # small N: DAQP first
    assert optimize_mean_variance(grouped, moments, backends=CLARABEL_CHAIN).solve_path == "CLARABEL_DIRECT"
    bounds_only = replace(grouped, sector_limits=())
    assert optimize_mean_variance(bounds_only, moments).solve_path == fast_qp.SOLVE_PATH  # the active set first
    assert (
        optimize_mean_variance(bounds_only, moments, backends=(CLARABEL_DIRECT, CONIC)).solve_path == "CLARABEL_DIRECT"
    )
    assert optimize_mean_variance(grouped, moments, backends=(ACTIVE_SET, CONIC)).solve_path == "CONIC"


# --- large problems on a working set of names --------------------------------------------------------------------


def _whole_program(problem: PortfolioProblem, moments: Moments, monkeypatch: pytest.MonkeyPatch) -> OptimizationResult:
    """The direct path on the whole program (the working set switched off for this call)."""
    with monkeypatch.context() as patch:
        patch.setattr(clarabel_direct, "WORKING_SET_MIN_ASSETS", 10**9)
        result = optimize_mean_variance(problem, moments)
    assert result.solve_path == "CLARABEL_DIRECT"
    return result


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_large_problems_take_a_working_set_with_the_whole_programs_optimum(
    objective: Objective, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N = 600 with a 5 % cap, three group limits (one a minimum), with and without min_return and net exposure.

    Truth: the whole program solved by Clarabel (checked against the cvxpy path up to N = 300 above), to 1e-7
    relative, and every constraint checked with NumPy.
    """
    n = 600
    moments = random_moments(n, 5)
    cases = [
        {"upper_bounds": np.full(n, 0.05)},
        {"upper_bounds": np.full(n, 0.05), "min_return": 0.2},
        {"upper_bounds": np.full(n, 0.05), "min_net_exposure": 0.9, "max_net_exposure": 1.0},
    ]
    for fields in cases:
        problem = random_problem(objective, n, 5, **fields)
        ours = optimize_mean_variance(problem, moments)
        assert (ours.solve_path, ours.solver, ours.status) == ("WORKING_SET", "CLARABEL", "OPTIMAL"), fields
        assert ours.constraints_satisfied and ours.violations == ()
        assert_feasible(ours.weights, problem, moments)
        whole = _whole_program(problem, moments, monkeypatch)
        assert ours.objective_value == pytest.approx(whole.objective_value, rel=OBJECTIVE_RTOL, abs=1e-12), fields
        assert np.count_nonzero(ours.weights > 1e-9) < n // 2


def test_a_working_set_that_cannot_answer_leaves_the_whole_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past WORKING_SET_MAX, or a min_return the first set cannot reach: the whole program answers, the same."""
    n = 600
    moments = random_moments(n, 7)
    problem = random_problem(Objective.MIN_VOLATILITY, n, 7, upper_bounds=np.full(n, 0.05))
    whole = _whole_program(problem, moments, monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(clarabel_direct, "WORKING_SET_MAX", 16)
        fallback = optimize_mean_variance(problem, moments)
    assert fallback.solve_path == "CLARABEL_DIRECT"
    assert fallback.objective_value == pytest.approx(whole.objective_value, rel=1e-12)
    best = float(np.sort(moments.expected_returns)[::-1][:20].mean())  # 20 names at the 5 % cap
    demanding = replace(problem, min_return=0.97 * best)
    ours = optimize_mean_variance(demanding, moments)
    assert ours.constraints_satisfied
    assert ours.objective_value == pytest.approx(
        _whole_program(demanding, moments, monkeypatch).objective_value, rel=OBJECTIVE_RTOL
    )
    impossible = replace(problem, sector_limits=(SectorLimit("g0", min_weight=0.6), SectorLimit("g1", min_weight=0.6)))
    with pytest.raises(InfeasibleError):
        optimize_mean_variance(impossible, moments)
