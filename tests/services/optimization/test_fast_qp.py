"""The active-set fast path of mean-variance (``_active_set``) against the Clarabel path, KKT and PyPortfolioOpt.

Truth: the conic path of ``optimize_mean_variance`` (cvxpy + Clarabel at 1e-10) with the fast path and the direct
Clarabel path left out (``backends=(CONIC,)``), the KKT conditions of
min ½wᵀΣw − λμᵀw s.t. 1ᵀw = 1, l ≤ w ≤ u checked here with NumPy (for the maximum Sharpe ratio at
λ = wᵀΣw / (μ − r_f)ᵀw, where its KKT conditions and the QP's coincide), and PyPortfolioOpt's
``EfficientFrontier.max_sharpe`` / ``min_volatility`` (Clarabel) on its own ``stock_prices.csv``.
Data: the S&P 500 and PyPortfolioOpt data sets of ``data/`` and seeded random positive definite matrices.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from pypfopt import EfficientFrontier, expected_returns, risk_models

from services.estimation import validate_moments
from services.optimization import (
    ACTIVE_SET,
    CONIC,
    MultiObjectiveWeights,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    ProblemModel,
    SectorLimit,
    check_constraints,
    objective_value_of,
    optimize_mean_variance,
)
from services.optimization import _active_set as fast_qp
from services.types import Moments
from tests.services.optimization.families import with_new_family
from tests.services.optimization.sp500_problems import benchmark_problem

OBJECTIVE_RTOL = 1e-7
"""Agreement of the fast path's objective with the Clarabel path's (the issue's requirement)."""
KKT_TOL = 1e-9
"""KKT residuals relative to max(diag Σ)·‖w‖₁ + λ‖μ‖∞ (and bounds, budget to 1e-9 absolute)."""
OBJECTIVES = (Objective.MIN_VOLATILITY, Objective.MAX_SHARPE, Objective.MAX_QUADRATIC_UTILITY)
RISK_FREE = 0.02

# --- helpers ----------------------------------------------------------------------------------------------------


def problem_of(
    objective: Objective,
    n: int,
    lower: float | np.ndarray,
    upper: float | np.ndarray,
    **options: object,
) -> PortfolioProblem:
    return PortfolioProblem(
        symbols=tuple(f"s{i}" for i in range(n)),
        objective=objective,
        lower_bounds=np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy(),
        upper_bounds=np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy(),
        risk_free_rate=RISK_FREE,
        risk_aversion=2.0,
        **options,  # type: ignore[arg-type]
    )


def conic(problem: PortfolioProblem, moments: Moments, monkeypatch: pytest.MonkeyPatch) -> OptimizationResult:
    """The cvxpy + Clarabel path's answer (fast path and direct Clarabel path switched off for this call)."""
    result = optimize_mean_variance(problem, moments, backends=(CONIC,))
    assert result.solve_path == "CONIC"
    return result


def risk_tolerance_of(problem: PortfolioProblem, moments: Moments, weights: np.ndarray) -> float:
    """λ of the QP whose solution ``weights`` must be: 0, 1/δ, or wᵀΣw / (μ − r_f)ᵀw for max Sharpe."""
    if problem.objective is Objective.MIN_VOLATILITY:
        return 0.0
    if problem.objective is Objective.MAX_QUADRATIC_UTILITY:
        return 1.0 / problem.risk_aversion
    excess = float((moments.expected_returns - problem.risk_free_rate) @ weights)
    assert excess > 0
    return float(weights @ moments.covariance @ weights) / excess


def assert_kkt(problem: PortfolioProblem, moments: Moments, weights: np.ndarray) -> None:
    """The KKT conditions, checked independently of ``fast_qp.kkt_holds``.

    Free names (strictly inside their bounds by 1e-9) fix the budget multiplier ν = −mean(g_F) of g = Σw − λμ;
    then |g_F + ν| ≈ 0, g + ν ≥ 0 at lower bounds and ≤ 0 at upper bounds. At a vertex (no free name) some ν must
    satisfy the sign conditions: max(−g) over lower bounds ≤ min(−g) over upper bounds.
    """
    sigma, mu = moments.covariance, moments.expected_returns
    lower, upper = problem.lower_bounds, problem.upper_bounds
    assert np.all(weights >= lower - 1e-12) and np.all(weights <= upper + 1e-12)
    assert weights.sum() == pytest.approx(1.0, abs=1e-10)
    lam = risk_tolerance_of(problem, moments, weights)
    g = sigma @ weights - lam * mu
    tol = KKT_TOL * (float(np.diag(sigma).max()) * float(np.abs(weights).sum()) + lam * float(np.abs(mu).max()))
    free = (weights > lower + 1e-9) & (weights < upper - 1e-9)
    at_lower = (weights <= lower + 1e-9) & (upper > lower)
    at_upper = (weights >= upper - 1e-9) & (upper > lower)
    if free.any():
        nu = -float(g[free].mean())
        residual = g + nu
        assert np.abs(residual[free]).max() <= tol
        assert np.all(residual[at_lower] >= -tol)
        assert np.all(residual[at_upper] <= tol)
    else:
        assert float(np.max(-g[at_lower], initial=-np.inf)) <= float(np.min(-g[at_upper], initial=np.inf)) + tol


def assert_matches_conic(
    problem: PortfolioProblem, moments: Moments, monkeypatch: pytest.MonkeyPatch
) -> OptimizationResult:
    """The fast path answers, satisfies KKT, and its objective equals the Clarabel path's to 1e-7."""
    fast = optimize_mean_variance(problem, moments)
    assert fast.solve_path == "ACTIVE_SET" and fast.solver == "ACTIVE_SET"
    assert fast.status == "OPTIMAL" and fast.iterations >= 1 and not fast.fallback_used
    assert fast.constraints_satisfied and fast.violations == ()
    assert check_constraints(fast.weights, problem, moments) == ()
    assert fast.objective_value == objective_value_of(fast.weights, problem, moments)
    assert_kkt(problem, moments, fast.weights)
    reference = conic(problem, moments, monkeypatch)
    # Clarabel stops at an absolute duality gap of 1e-10 (``CLARABEL_SETTINGS``), which bounds its accuracy on
    # small variances.
    assert fast.objective_value == pytest.approx(reference.objective_value, rel=OBJECTIVE_RTOL, abs=1e-10)
    if problem.objective is Objective.MIN_VOLATILITY:  # exact, so never worse than the interior-point answer
        assert fast.objective_value <= reference.objective_value * (1 + 1e-9)
    else:
        assert fast.objective_value >= reference.objective_value - 1e-9 * abs(reference.objective_value)
    return fast


def random_moments(n: int, seed: int, *, factor: bool = False) -> Moments:
    """A seeded positive definite Σ (a sample covariance of 2N periods, or 3 factors + idiosyncratic) and μ."""
    rng = np.random.default_rng([seed, n])
    if factor:
        loadings = rng.normal(1.0, 0.4, (n, 3)) * [1.0, 0.5, 0.5]
        covariance = 0.02 * loadings @ loadings.T + np.diag(rng.uniform(0.01, 0.06, n))
    else:
        # Sample covariance of 2N periods of returns with a common component (correlations ≈ 0.2).
        samples = 0.5 * rng.normal(size=(2 * n, 1)) + rng.normal(size=(2 * n, n))
        scales = rng.uniform(0.1, 0.5, n)
        covariance = (samples.T @ samples / (2 * n)) * np.outer(scales, scales)
    mu = rng.normal(0.08, 0.08, n)
    return Moments(expected_returns=mu, covariance=(covariance + covariance.T) / 2)


# --- fixtures: real data -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp500_moments(sp500_prices: pd.DataFrame) -> Moments:
    """PyPortfolioOpt's mean historical return and sample covariance of the last 756 daily S&P 500 returns."""
    prices = sp500_prices.iloc[-757:]
    mu, cov = expected_returns.mean_historical_return(prices), risk_models.sample_cov(prices)
    return Moments(expected_returns=mu.to_numpy(), covariance=cov.to_numpy())


@pytest.fixture(scope="module")
def pypfopt_inputs(stock_prices: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """PyPortfolioOpt's own estimates on its stock_prices.csv (its published examples' inputs)."""
    return expected_returns.mean_historical_return(stock_prices), risk_models.sample_cov(stock_prices)


@pytest.fixture(scope="module")
def stock_moments(pypfopt_inputs: tuple[pd.Series, pd.DataFrame]) -> Moments:
    mu, cov = pypfopt_inputs
    return Moments(expected_returns=mu.to_numpy(), covariance=cov.to_numpy())


# --- agreement with the Clarabel path -----------------------------------------------------------------------------

REAL_BOUNDS = {"long-only": (0.0, 1.0), "cap-0.15": (0.0, 0.15), "short": (-0.3, 0.6), "box": (0.02, 0.2)}


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("bounds", REAL_BOUNDS.values(), ids=REAL_BOUNDS.keys())
def test_real_data_matches_the_conic_path(
    sp500_moments: Moments,
    stock_moments: Moments,
    objective: Objective,
    bounds: tuple[float, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for moments in (sp500_moments, stock_moments):
        problem = problem_of(objective, moments.expected_returns.size, *bounds)
        assert_matches_conic(problem, moments, monkeypatch)


@pytest.mark.parametrize("n", [20, 100, 500])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_random_covariances_match_the_conic_path(n: int, objective: Objective, monkeypatch: pytest.MonkeyPatch) -> None:
    for factor in (False, True):
        moments = random_moments(n, 11, factor=factor)
        configurations = [(0.0, 1.0), (0.0, 5.0 / n), (-0.5 / n**0.5, 3.0 / n)]
        if n == 500:
            configurations = configurations[1:2] if factor else configurations[2:]
        for lower, upper in configurations:
            assert_matches_conic(problem_of(objective, n, lower, upper), moments, monkeypatch)


def test_caps_put_names_at_both_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """N = 100 with a 5 % cap: names at the cap, at zero, and in between, for every objective."""
    moments = random_moments(100, 3, factor=True)
    for objective in OBJECTIVES:
        problem = problem_of(objective, 100, 0.0, 0.05)
        weights = assert_matches_conic(problem, moments, monkeypatch).weights
        assert np.sum(weights >= 0.05 - 1e-12) >= 2, objective
        assert np.sum(weights <= 1e-12) >= 2, objective
        assert np.sum((weights > 1e-9) & (weights < 0.05 - 1e-9)) >= 1, objective


def test_short_positions_at_negative_lower_bounds(sp500_moments: Moments, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-name bounds with negative lower bounds, some of them binding."""
    n = sp500_moments.expected_returns.size
    lower = np.linspace(-0.15, -0.02, n)
    upper = np.linspace(0.35, 0.15, n)
    for objective in OBJECTIVES:
        weights = assert_matches_conic(problem_of(objective, n, lower, upper), sp500_moments, monkeypatch).weights
        assert (weights < -1e-6).any()
        assert np.isclose(weights, lower, atol=1e-12).any() or np.isclose(weights, upper, atol=1e-12).any()


def test_pinned_names_and_a_vertex(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with l = u stays at it; a cap that leaves one feasible split of the budget is a vertex."""
    moments = random_moments(20, 5)
    lower, upper = np.zeros(20), np.full(20, 0.3)
    lower[3] = upper[3] = 0.1
    for objective in OBJECTIVES:
        weights = assert_matches_conic(problem_of(objective, 20, lower, upper), moments, monkeypatch).weights
        assert weights[3] == 0.1
    vertex = random_moments(10, 9)
    result = fast_qp.solve_max_sharpe(
        vertex.covariance, vertex.expected_returns, np.zeros(10), np.full(10, 0.1001), RISK_FREE
    )
    assert result is not None
    assert result.weights.sum() == pytest.approx(1.0, abs=1e-12)


# --- the fallbacks inside the fast path ---------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_primal_active_set_and_sharpe_search_agree(
    sp500_moments: Moments, objective: Objective, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the primal-dual iteration off, the primal method (and the λ search for max Sharpe) answer alike."""
    n = sp500_moments.expected_returns.size
    for lower, upper in [(0.0, 1.0), (0.0, 0.1), (-0.2, 0.4)]:
        problem = problem_of(objective, n, lower, upper)
        default = optimize_mean_variance(problem, sp500_moments)
        with monkeypatch.context() as patch:
            patch.setattr(fast_qp, "MAX_PDAS_ITERATIONS", 0)
            solution = solve_problem(problem, sp500_moments)
            assert solution is not None
            assert solution.method == ("SHARPE_SEARCH" if objective is Objective.MAX_SHARPE else "PRIMAL")
            forced = assert_matches_conic(problem, sp500_moments, monkeypatch)
        np.testing.assert_allclose(forced.weights, default.weights, atol=1e-9)


def test_a_cycle_of_partitions_is_cut_at_its_first_repeat(sp500_prices: pd.DataFrame) -> None:
    """A primal-dual attempt that meets a partition again with the same counters stops there.

    Problem 11 of the batch benchmark (seed 7): the tangency's iteration, and then the one at the search's first
    λ, cycle. Each attempt stops at its first repeat (44 partitions in all; 88 when each went round its cycle
    until ``MAX_PDAS_ITERATIONS``), and the answer is PyPortfolioOpt's.
    """
    sigma, mu, lower, upper = benchmark_problem(sp500_prices, 7, 11)
    solution = fast_qp.solve_max_sharpe(sigma, mu, lower, upper, 0.0)
    assert solution is not None and solution.method == "SHARPE_SEARCH"
    assert solution.iterations < 2 * fast_qp.MAX_PDAS_ITERATIONS
    frontier = EfficientFrontier(mu, sigma, weight_bounds=(0.0, float(upper[0])))
    frontier.max_sharpe(risk_free_rate=0.0)
    reference = np.array(list(frontier.clean_weights(cutoff=0.0, rounding=None).values()))
    w = solution.weights
    assert float(mu @ w / np.sqrt(w @ sigma @ w)) >= float(mu @ reference / np.sqrt(reference @ sigma @ reference)) * (
        1.0 - 1e-9
    )
    np.testing.assert_allclose(w, reference, atol=1e-5)


def test_schur_complement_updates_equal_fresh_factorisations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Solving partitions through Schur complements of an earlier Cholesky factor gives the same answers."""
    moments = random_moments(300, 21, factor=True)
    args = (moments.covariance, moments.expected_returns, np.full(300, -0.01), np.full(300, 0.02))
    with monkeypatch.context() as patch:
        patch.setattr(fast_qp, "SCHUR_MIN_SIZE", 10**9)
        fresh = [fast_qp.solve_qp(*args), fast_qp.solve_max_sharpe(*args, risk_free_rate=RISK_FREE)]
    schur_calls = 0
    real_schur = fast_qp._Problem._schur

    def counting(self: fast_qp._Problem, *a: object) -> object:
        nonlocal schur_calls
        schur_calls += 1
        return real_schur(self, *a)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(fast_qp, "SCHUR_MIN_SIZE", 1)
        patch.setattr(fast_qp._Problem, "_schur", counting)
        updated = [fast_qp.solve_qp(*args), fast_qp.solve_max_sharpe(*args, risk_free_rate=RISK_FREE)]
    assert schur_calls > 0
    for a, b in zip(fresh, updated, strict=True):
        assert a is not None and b is not None
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-10)


@pytest.mark.parametrize("refinements", [fast_qp.MAX_REFINEMENTS, 0])
def test_single_precision_proposals_give_the_double_precision_answer(
    refinements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large free sets solved in single precision (then refined, or refactorised in double) change nothing."""
    moments = random_moments(200, 17, factor=True)
    cases = [(np.zeros(200), np.ones(200)), (np.full(200, -0.05), np.full(200, 0.1))]
    refined: list[bool] = []
    real_refine = fast_qp._Problem._refine

    def recording(self: fast_qp._Problem, *a: object) -> object:
        result = real_refine(self, *a)  # type: ignore[arg-type]
        refined.append(result is not None)
        return result

    for lower, upper in cases:
        refined.clear()
        args = (moments.covariance, moments.expected_returns, lower, upper)
        with monkeypatch.context() as patch:
            patch.setattr(fast_qp, "ROUGH_MIN_SIZE", 10**9)
            exact = [fast_qp.solve_qp(*args), fast_qp.solve_max_sharpe(*args, risk_free_rate=RISK_FREE)]
        with monkeypatch.context() as patch:
            patch.setattr(fast_qp, "ROUGH_MIN_SIZE", 16)
            patch.setattr(fast_qp, "MAX_REFINEMENTS", refinements)
            patch.setattr(fast_qp._Problem, "_refine", recording)
            mixed = [fast_qp.solve_qp(*args), fast_qp.solve_max_sharpe(*args, risk_free_rate=RISK_FREE)]
        assert refined  # the settled partitions were solved again in double precision
        assert all(refined) if refinements else not any(refined)
        for a, b in zip(exact, mixed, strict=True):
            assert a is not None and b is not None
            np.testing.assert_allclose(a.weights, b.weights, atol=1e-10)


@pytest.mark.parametrize("n", [60, 800])  # below and above ROUGH_MIN_SIZE
def test_the_validation_cholesky_factor_is_reused_and_changes_nothing(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``validate_moments``' factor the whole Σ is never factorised again, and the answers are the same.

    Truth: the answers without the factor (to 1e-12), the KKT conditions checked here, and at N = 60 the cvxpy +
    Clarabel path. Cases: long-only, capped (names at both bounds) and pinned names (the first free set is then
    not the factor's: a Schur update or a new factorisation).
    """
    moments = random_moments(n, 31, factor=True)
    cholesky = validate_moments(moments, n)
    assert cholesky is not None
    pinned_upper = np.full(n, 3.0 / n)
    pinned_upper[:3] = 0.0
    cases = [(0.0, 1.0), (0.0, 3.0 / n), (np.zeros(n), pinned_upper)]
    sizes: list[int] = []
    real_factorise, real_rough = fast_qp._Problem._factorise, fast_qp._Problem._solve_rough

    def factorise(self: fast_qp._Problem, free: np.ndarray) -> object:
        sizes.append(free.size)
        return real_factorise(self, free)

    def rough(self: fast_qp._Problem, free: np.ndarray, rhs: np.ndarray) -> object:
        sizes.append(free.size)
        return real_rough(self, free, rhs)

    for objective in OBJECTIVES:
        for lower, upper in cases:
            problem = problem_of(objective, n, lower, upper)
            plain = optimize_mean_variance(problem, moments)
            sizes.clear()
            with monkeypatch.context() as patch:
                patch.setattr(fast_qp._Problem, "_factorise", factorise)
                patch.setattr(fast_qp._Problem, "_solve_rough", rough)
                seeded = optimize_mean_variance(problem, moments, covariance_cholesky=cholesky)
            assert n not in sizes
            assert seeded.solve_path == plain.solve_path == "ACTIVE_SET"
            np.testing.assert_allclose(seeded.weights, plain.weights, rtol=0, atol=1e-12)
            assert seeded.objective_value == pytest.approx(plain.objective_value, rel=1e-12)
            assert_kkt(problem, moments, seeded.weights)
            if n <= 100:
                reference = conic(problem, moments, monkeypatch)
                assert seeded.objective_value == pytest.approx(reference.objective_value, rel=OBJECTIVE_RTOL)


def _screening_cases(n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Long only; a 2 % cap (about 50 names at it: the working set must grow); ten names held at ≥ 0.1 %."""
    held = np.zeros(n)
    held[:10] = 0.001
    return [
        ("long only", np.zeros(n), np.ones(n)),
        ("capped", np.zeros(n), np.full(n, 0.02)),
        ("held", held, np.ones(n)),
    ]


def _whole_and_screened(
    args: tuple[np.ndarray, ...], objective: Objective, monkeypatch: pytest.MonkeyPatch, **patches: int
) -> tuple[fast_qp.ActiveSetSolution, fast_qp.ActiveSetSolution]:
    """The answer of the whole-problem iteration (screening off) and the default answer (with ``patches``)."""

    def solve() -> fast_qp.ActiveSetSolution | None:
        if objective is Objective.MAX_SHARPE:
            return fast_qp.solve_max_sharpe(*args, risk_free_rate=RISK_FREE)
        return fast_qp.solve_qp(*args, 0.0 if objective is Objective.MIN_VOLATILITY else 0.5)

    with monkeypatch.context() as patch:
        patch.setattr(fast_qp, "SCREEN_MIN_SIZE", 10**9)
        whole = solve()
    with monkeypatch.context() as patch:
        for name, value in patches.items():
            patch.setattr(fast_qp, name, value)
        screened = solve()
    assert whole is not None and screened is not None
    assert not whole.method.startswith("SCREENED")
    return whole, screened


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_large_problems_are_solved_on_a_working_set_with_the_whole_problems_answer(
    objective: Objective, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N = 1000 (factor model and sample covariance): the working-set answer is the whole problem's, and KKT holds.

    Truth: the whole-problem iteration (checked against Clarabel up to N = 800 above) to 1e-10, and the KKT
    conditions of the whole problem checked here with NumPy.
    """
    n = 1000
    for factor in (True, False):
        moments = random_moments(n, 41, factor=factor)
        for case, lower, upper in _screening_cases(n):
            args = (moments.covariance, moments.expected_returns, lower, upper)
            whole, screened = _whole_and_screened(args, objective, monkeypatch)
            assert screened.method.startswith("SCREENED_"), (factor, case)
            np.testing.assert_allclose(screened.weights, whole.weights, rtol=0, atol=1e-10)
            assert_kkt(problem_of(objective, n, lower, upper), moments, screened.weights)
            if case == "held":
                assert np.all(screened.weights[:10] >= 0.001)


def test_a_working_set_grows_until_no_name_left_out_violates_its_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started from 12 names (the ten held and two more), the working set grows over several rounds.

    It still ends at the whole problem's answer.
    """
    n = 600
    moments = random_moments(n, 43, factor=True)
    rounds: list[int] = []
    real_solve_qp, real_solve_max_sharpe = fast_qp.solve_qp, fast_qp.solve_max_sharpe

    def counted_qp(*a: object, **k: object) -> object:
        rounds.append(np.asarray(a[0]).shape[0])
        return real_solve_qp(*a, **k)  # type: ignore[arg-type]

    def counted_sharpe(*a: object, **k: object) -> object:
        rounds.append(np.asarray(a[0]).shape[0])
        return real_solve_max_sharpe(*a, **k)  # type: ignore[arg-type]

    for objective in OBJECTIVES:
        for case, lower, upper in _screening_cases(n):
            args = (moments.covariance, moments.expected_returns, lower, upper)
            rounds.clear()
            monkeypatch.setattr(fast_qp, "solve_qp", counted_qp)
            monkeypatch.setattr(fast_qp, "solve_max_sharpe", counted_sharpe)
            whole, screened = _whole_and_screened(args, objective, monkeypatch, SCREEN_START=12)
            monkeypatch.undo()
            assert screened.method.startswith("SCREENED_"), (objective, case)
            sub_sizes = [size for size in rounds if size < n]
            assert len(sub_sizes) >= 2 and sub_sizes == sorted(sub_sizes), (objective, case, sub_sizes)
            np.testing.assert_allclose(screened.weights, whole.weights, rtol=0, atol=1e-10)


def test_a_working_set_that_outgrows_its_limit_leaves_the_problem_to_the_whole_iteration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for 8 names only, screening gives up and the whole-problem iteration answers, the same."""
    n = 600
    moments = random_moments(n, 47, factor=True)
    for objective in OBJECTIVES:
        args = (moments.covariance, moments.expected_returns, np.zeros(n), np.full(n, 0.02))
        whole, fallback = _whole_and_screened(args, objective, monkeypatch, SCREEN_MAX=8)
        assert not fallback.method.startswith("SCREENED")
        np.testing.assert_allclose(fallback.weights, whole.weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("held", [12, 150, 300])
def test_products_over_the_names_held_equal_the_whole_products(held: int) -> None:
    """wᵀΣw, Σw and the risk contributions of a portfolio holding few names, against the plain NumPy products."""
    from services.optimization._metrics import covariance_times, held_names, quadratic_form, risk_contributions

    moments = random_moments(300, 53, factor=True)
    sigma = moments.covariance
    weights = np.zeros(300)
    chosen = np.random.default_rng(held).choice(300, held, replace=False)
    assert (held_names(np.where(np.isin(np.arange(300), chosen), 1.0, 0.0)) is None) == (2 * held >= 300)
    weights[chosen] = np.random.default_rng(held + 1).dirichlet(np.ones(held))
    variance = float(weights @ sigma @ weights)
    assert quadratic_form(weights, sigma) == pytest.approx(variance, rel=1e-13)
    np.testing.assert_allclose(covariance_times(sigma, weights), sigma @ weights, rtol=1e-13, atol=0)
    np.testing.assert_allclose(
        risk_contributions(weights, sigma), weights * (sigma @ weights) / variance, rtol=1e-12, atol=1e-300
    )


def test_a_factor_of_another_matrix_cannot_make_an_answer_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """The factor only seeds the iteration: a wrong one still ends in a KKT-certified answer (or the next path)."""
    moments = random_moments(40, 5, factor=True)
    other = random_moments(40, 6, factor=True)
    wrong = validate_moments(other, 40)
    assert wrong is not None
    for objective in OBJECTIVES:
        for upper in (1.0, 0.1):
            problem = problem_of(objective, 40, 0.0, upper)
            result = optimize_mean_variance(problem, moments, covariance_cholesky=wrong)
            reference = conic(problem, moments, monkeypatch)
            assert result.objective_value == pytest.approx(reference.objective_value, rel=OBJECTIVE_RTOL)
            if result.solve_path == "ACTIVE_SET":
                assert_kkt(problem, moments, result.weights)
    # A budget-only min volatility settles on the first partition (every name free): the wrong factor's answer
    # fails the certificate and the direct Clarabel path answers.
    problem = problem_of(Objective.MIN_VOLATILITY, 40, -1.0, 1.0)
    result = optimize_mean_variance(problem, moments, covariance_cholesky=wrong)
    assert result.solve_path != "ACTIVE_SET"
    assert result.objective_value == pytest.approx(conic(problem, moments, monkeypatch).objective_value, rel=1e-7)


def test_an_ill_conditioned_covariance_is_refused_with_or_without_its_factor() -> None:
    """Below ROUGH_MIN_SIZE the validation factor passes the same condition test as a new factorisation."""
    duplicated = random_moments(20, 4)
    cov = duplicated.covariance.copy()
    cov[1, :] = cov[0, :]
    cov[:, 1] = cov[:, 0]
    cov[1, 1] = cov[0, 0] * (1 + 1e-13)
    near = Moments(expected_returns=duplicated.expected_returns, covariance=cov)
    cholesky = validate_moments(near, 20)
    assert cholesky is not None  # positive definite, but cond(Σ) ≈ 1e13
    args = (near.covariance, near.expected_returns, np.zeros(20), np.ones(20))
    assert fast_qp.solve_qp(*args) is None
    assert fast_qp.solve_qp(*args, cholesky=cholesky) is None


# --- PyPortfolioOpt ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.0, 0.1), (-0.5, 1.0)])
def test_max_sharpe_matches_pypfopt(
    pypfopt_inputs: tuple[pd.Series, pd.DataFrame], stock_moments: Moments, bounds: tuple[float, float]
) -> None:
    mu, cov = pypfopt_inputs
    frontier = EfficientFrontier(mu, cov, weight_bounds=bounds, solver="CLARABEL")
    frontier.max_sharpe(risk_free_rate=RISK_FREE)
    pypfopt_sharpe = frontier.portfolio_performance(risk_free_rate=RISK_FREE)[2]
    problem = problem_of(Objective.MAX_SHARPE, len(mu), *bounds)
    result = optimize_mean_variance(problem, stock_moments)
    assert result.solve_path == "ACTIVE_SET"
    assert result.performance.sharpe_ratio == pytest.approx(pypfopt_sharpe, rel=1e-6)
    assert result.performance.sharpe_ratio >= pypfopt_sharpe - 1e-9  # exact: never below the conic answer
    pypfopt_weights = np.array([frontier.weights[i] for i in range(len(mu))])
    np.testing.assert_allclose(result.weights, pypfopt_weights, atol=1e-4)


def test_min_volatility_matches_pypfopt(pypfopt_inputs: tuple[pd.Series, pd.DataFrame], stock_moments: Moments) -> None:
    mu, cov = pypfopt_inputs
    frontier = EfficientFrontier(mu, cov, weight_bounds=(0.0, 0.1), solver="CLARABEL")
    frontier.min_volatility()
    pypfopt_volatility = frontier.portfolio_performance()[1]
    result = optimize_mean_variance(problem_of(Objective.MIN_VOLATILITY, len(mu), 0.0, 0.1), stock_moments)
    assert result.solve_path == "ACTIVE_SET"
    assert result.performance.volatility == pytest.approx(pypfopt_volatility, rel=1e-7)


# --- what goes to Clarabel -----------------------------------------------------------------------------------------


PATHS_AFTER_THE_ACTIVE_SET = {
    ("DUAL_ACTIVE_SET", "DAQP"),
    ("CLARABEL_DIRECT", "CLARABEL"),
    ("CONIC", "CLARABEL"),
    ("CONIC", "SCS"),
}


def singular_moments(n: int = 30, periods: int = 20) -> Moments:
    """Sample covariance of fewer periods than names: rank ≤ T − 1 < N (positive semidefinite, singular)."""
    rng = np.random.default_rng(2)
    returns = rng.normal(0.0005, 0.01, (periods, n))
    return Moments(expected_returns=rng.normal(0.1, 0.05, n), covariance=np.cov(returns, rowvar=False) * 252)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_singular_and_near_singular_covariances_fall_back(objective: Objective) -> None:
    singular = singular_moments()
    duplicated = random_moments(20, 4)
    cov = duplicated.covariance.copy()
    cov[1, :] = cov[0, :]
    cov[:, 1] = cov[:, 0]
    cov[1, 1] = cov[0, 0] * (1 + 1e-15)  # a name that is another one's copy: cond(Σ) ≈ 1e15
    near = Moments(expected_returns=duplicated.expected_returns, covariance=cov)
    for moments in (singular, near):
        n = moments.expected_returns.size
        problem = problem_of(objective, n, 0.0, 1.0)
        assert solve_problem(problem, moments) is None
        result = optimize_mean_variance(problem, moments)
        assert (result.solve_path, result.solver) in PATHS_AFTER_THE_ACTIVE_SET
        # DAQP (``DUAL_ACTIVE_SET``) answers when its KKT check holds, which a singular Σ does not prevent.
        reference = optimize_mean_variance(problem, moments, backends=(CONIC,))
        assert result.objective_value == pytest.approx(reference.objective_value, rel=1e-6, abs=1e-10)


NOT_ELIGIBLE: dict[str, dict[str, object]] = {
    "sector_limits": {"sectors": ("a",) * 10, "sector_limits": (SectorLimit("a", max_weight=1.0),)},
    "min_return": {"min_return": 0.01},
    "max_volatility": {"max_volatility": 0.5},
    "turnover_limit": {"current_weights": np.full(10, 0.1), "turnover_limit": 2.0},
    "turnover_caps": {"turnover_caps": np.full(10, 0.5)},
    "transaction_costs": {"transaction_costs_bps": np.full(10, 5.0)},
    "leverage_limit": {"leverage_limit": 3.0},
    "tracking_error": {"benchmark_weights": np.full(10, 0.1), "tracking_error_limit": 1.0},
    "beta": {"betas": np.ones(10), "beta_tolerance": 5.0},
    "max_holdings": {"max_holdings": 10},
    "min_position_weight": {"min_position_weight": 0.01},
    "net_exposure": {"min_net_exposure": 1.0, "max_net_exposure": 1.0},
}


@pytest.mark.parametrize("fields", NOT_ELIGIBLE.values(), ids=NOT_ELIGIBLE.keys())
def test_other_constraint_families_are_not_eligible(fields: dict[str, object]) -> None:
    problem = replace(problem_of(Objective.MIN_VOLATILITY, 10, 0.0, 1.0), **fields)  # type: ignore[arg-type]
    assert not eligible(problem)


def test_eligibility() -> None:
    base = problem_of(Objective.MIN_VOLATILITY, 10, 0.0, 1.0)
    assert eligible(base)
    # Fields that do not change the problem on their own keep it eligible.
    inert = replace(
        base,
        sectors=("a",) * 10,
        current_weights=np.full(10, 0.1),
        benchmark_weights=np.full(10, 0.1),
        betas=np.ones(10),
        multi_objective=MultiObjectiveWeights(),
        # Vacuous limits: no family is built for them.
        turnover_caps=np.full(10, np.inf),
        transaction_costs_bps=np.zeros(10),
        min_position_weight=0.0,
        allow_relaxation=True,
    )
    assert eligible(inert)
    assert not eligible(replace(base, objective=Objective.MAX_RETURN))
    assert not eligible(replace(base, objective=Objective.MULTI_OBJECTIVE))
    assert not eligible(replace(base, objective=Objective.MAX_QUADRATIC_UTILITY, risk_aversion=0.0))
    assert not eligible(replace(base, upper_bounds=np.full(10, np.inf)))
    # A constraint family the backend does not list is not supported.
    model = ProblemModel.build(base, random_moments(10, 0))
    assert not fast_qp.ActiveSetBackend().supports(with_new_family(model))


def eligible(problem: PortfolioProblem) -> bool:
    """Whether the active set supports ``problem`` (on any valid moments)."""
    return ACTIVE_SET.supports(ProblemModel.build(problem, random_moments(problem.n_assets, 0)))


def solve_problem(problem: PortfolioProblem, moments: Moments) -> fast_qp.ActiveSetSolution | None:
    """The active set's certified solution, or None (not supported, or not certified)."""
    model = ProblemModel.build(problem, moments)
    return fast_qp.solve_model(model) if ACTIVE_SET.supports(model) else None
