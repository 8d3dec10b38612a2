"""DAQP's dual active set on the dense program (``_dual_active_set``) against cvxpy, Clarabel and NumPy.

Truth: the cvxpy path of ``optimize_mean_variance`` (cvxpy canonicalisation + Clarabel, ``backends=(CONIC,)``):
the objective must agree to 1e-7 relative, and be no worse than the direct Clarabel path's beyond 1e-9; every constraint
is checked on the weights with NumPy (``assert_feasible``). Data: the S&P 500 data set of ``data/`` and seeded
random positive definite matrices, as ``test_clarabel_direct``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from services.errors import DeadlineExceededError, InfeasibleError
from services.optimization import (
    CLARABEL_DIRECT,
    CONIC,
    DUAL_ACTIVE_SET,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    ProblemModel,
    SectorLimit,
    optimize_mean_variance,
)
from services.optimization import _dual_active_set as dual
from services.types import Moments
from tests.services.market_data import SP500_SECTORS
from tests.services.optimization.test_clarabel_direct import (
    RISK_FREE,
    assert_feasible,
    random_moments,
    random_problem,
    sp500_moments,  # noqa: F401  (a fixture)
    sp500_problem,
    sp500_tickers,  # noqa: F401  (a fixture)
)

OBJECTIVE_RTOL = 1e-7
NOT_WORSE = 1e-9
OBJECTIVES = (Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY, Objective.MAX_SHARPE)


def assert_exact(problem: PortfolioProblem, moments: Moments) -> OptimizationResult:
    """The engine answers on the dual active set, feasibly, with cvxpy's objective and Clarabel's weights."""
    ours = optimize_mean_variance(problem, moments)
    assert (ours.solve_path, ours.solver, ours.status) == ("DUAL_ACTIVE_SET", "DAQP", "OPTIMAL")
    assert ours.constraints_satisfied and ours.violations == () and ours.iterations > 0
    assert_feasible(ours.weights, problem, moments)
    reference = optimize_mean_variance(problem, moments, backends=(CONIC,))
    assert reference.solve_path == "CONIC"
    assert ours.objective_value == pytest.approx(reference.objective_value, rel=OBJECTIVE_RTOL, abs=1e-12)
    # Never worse than Clarabel's interior point (1e-10 tolerances) beyond its own accuracy: on flat optima the
    # exact answer was measured up to 1.5e-8 better, its weights up to 7e-6 apart.
    clarabel = optimize_mean_variance(problem, moments, backends=(CLARABEL_DIRECT,))
    sign = 1.0 if problem.objective is Objective.MIN_VOLATILITY else -1.0  # minimised, or maximised
    assert sign * (ours.objective_value - clarabel.objective_value) <= NOT_WORSE * abs(clarabel.objective_value)
    volatility = float(np.sqrt(ours.weights @ moments.covariance @ ours.weights))
    assert ours.performance.volatility == pytest.approx(volatility, rel=1e-12)
    return ours


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_real_data_matches_cvxpy_and_clarabel(
    objective: Objective,
    sp500_moments: Moments,  # noqa: F811
    sp500_tickers: tuple[str, ...],  # noqa: F811
) -> None:
    mu = sp500_moments.expected_returns
    n = len(sp500_tickers)
    tech = tuple("tech" if SP500_SECTORS[t] == "tech" else "other" for t in sp500_tickers)
    variants: list[dict[str, Any]] = [
        {},
        {"min_return": float(np.quantile(mu, 0.6))},
        {"sector_limits": (), "upper_bounds": np.full(n, 0.15), "min_return": float(np.median(mu))},
        {"lower_bounds": np.full(n, -0.1), "upper_bounds": np.full(n, 0.4)},  # shorts
        {"lower_bounds": np.full(n, 0.01)},  # every name held
        {  # an equality group limit (min = max) and a second scheme
            "classifications": (("style", tech),),
            "sector_limits": (SectorLimit("tech", min_weight=0.2, max_weight=0.2, scheme="style"),),
        },
    ]
    for fields in variants:
        assert_exact(sp500_problem(objective, sp500_tickers, **fields), sp500_moments)


@pytest.mark.parametrize("n", [5, 20, 64, dual.MAX_ASSETS])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_random_covariances_match_cvxpy_and_clarabel(objective: Objective, n: int) -> None:
    for seed in range(3):
        moments = random_moments(n, seed)
        target = float(np.quantile(moments.expected_returns, 0.7))
        assert_exact(random_problem(objective, n, seed), moments)
        assert_exact(random_problem(objective, n, seed, min_return=target), moments)


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY])
def test_net_exposure_bounds_match_cvxpy(
    objective: Objective,
    sp500_moments: Moments,  # noqa: F811
    sp500_tickers: tuple[str, ...],  # noqa: F811
) -> None:
    target = float(np.quantile(sp500_moments.expected_returns, 0.6))
    for low, high in ((0.6, 0.9), (0.5, None), (None, 0.8)):
        for min_return in (None, target):
            problem = sp500_problem(
                objective, sp500_tickers, min_net_exposure=low, max_net_exposure=high, min_return=min_return
            )
            assert_exact(problem, sp500_moments)


def test_scope() -> None:
    """Max return (no positive definite Hessian), max Sharpe with net exposure and N > MAX_ASSETS go to Clarabel."""
    moments = random_moments(20, 1)
    for fields in (
        {"objective": Objective.MAX_RETURN},
        {"objective": Objective.MAX_SHARPE, "min_net_exposure": 0.5},
        {"objective": Objective.MIN_VOLATILITY, "max_volatility": 0.3},  # not a linear family
    ):
        others = dict(fields)
        problem = random_problem(others.pop("objective"), 20, 1, **others)
        assert not DUAL_ACTIVE_SET.supports(ProblemModel.build(problem, moments))
    n = dual.MAX_ASSETS + 1
    large = ProblemModel.build(random_problem(Objective.MIN_VOLATILITY, n, 1), random_moments(n, 1))
    assert not DUAL_ACTIVE_SET.supports(large)
    assert optimize_mean_variance(random_problem(Objective.MAX_RETURN, 20, 1), moments).solve_path == "CLARABEL_DIRECT"


def test_an_infeasible_program_is_left_to_clarabel_to_prove(
    sp500_moments: Moments,  # noqa: F811
    sp500_tickers: tuple[str, ...],  # noqa: F811
) -> None:
    """Tech ≤ 10 % and a country group made of tech names ≥ 30 % pass the pre-checks; DAQP declines, Clarabel proves."""
    tech = [i for i, t in enumerate(sp500_tickers) if SP500_SECTORS[t] == "tech"]
    countries = tuple("US" if i in tech else "EU" for i in range(len(sp500_tickers)))
    for objective in OBJECTIVES:
        problem = sp500_problem(
            objective,
            sp500_tickers,
            classifications=(("country", countries),),
            sector_limits=(SectorLimit("tech", max_weight=0.1), SectorLimit("US", min_weight=0.3, scheme="country")),
        )
        model = ProblemModel.build(problem, sp500_moments)
        assert DUAL_ACTIVE_SET.supports(model)
        assert DUAL_ACTIVE_SET.solve(model, started=time.perf_counter(), time_limit_s=None) is None
        with pytest.raises(InfeasibleError) as raised:
            optimize_mean_variance(problem, sp500_moments)
        assert [v.type for v in raised.value.precondition_violations] == ["SOLVER_INFEASIBLE"]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_program_holds_the_constraints(objective: Objective) -> None:
    """At random points: lower ≤ [x; Ax] ≤ upper (equalities exactly) iff the weights meet every constraint."""
    n = 12
    moments = random_moments(n, 5)
    problem = random_problem(objective, n, 5, min_return=0.05, lower_bounds=np.full(n, -0.05))
    program = dual.build_program(ProblemModel.build(problem, moments))
    scale = problem.risk_aversion if objective is Objective.MAX_QUADRATIC_UTILITY else 2.0
    np.testing.assert_allclose(program.H, scale * moments.covariance, rtol=1e-15)
    rng = np.random.default_rng(0)
    agreed = {True: 0, False: 0}
    members = {g: np.array([s == g for s in problem.sectors]) for g in ("g0", "g1", "g2")}
    for _ in range(4000):
        weights = rng.dirichlet(np.ones(n)) * 1.2 - 0.2 / n  # sums to 1, some names short
        feasible = bool(np.all(weights >= problem.lower_bounds) and np.all(weights <= problem.upper_bounds))
        feasible &= float(weights[members["g0"]].sum()) <= 0.15 and float(weights[members["g1"]].sum()) >= 0.25
        feasible &= 0.05 <= float(weights[members["g2"]].sum()) <= 0.2
        feasible &= float(moments.expected_returns @ weights) >= 0.05
        x = weights
        if objective is Objective.MAX_SHARPE:
            excess = float((moments.expected_returns - RISK_FREE) @ weights)
            if not excess > 0:
                continue
            x = weights / excess  # y = w/κ's scale: (μ − r_f)ᵀy = 1, κ = 1ᵀy
        values = np.concatenate((x, program.A @ x))
        holds = bool(np.all(values >= program.lower - 1e-12) and np.all(values <= program.upper + 1e-12))
        assert holds == feasible
        agreed[feasible] += 1
    assert min(agreed.values()) > 10  # both kinds of point were seen


def test_the_kkt_check_rejects_a_wrong_answer() -> None:
    """DAQP's answer passes; moved off the optimum, or with a multiplier's sign flipped, it fails."""
    moments = random_moments(20, 2)
    model = ProblemModel.build(random_problem(Objective.MIN_VOLATILITY, 20, 2), moments)
    program = dual.build_program(model)
    x, lam, flag, _ = dual.solve_program(program)
    assert flag == 1 and dual.kkt_holds(program, x, lam)
    assert not dual.kkt_holds(program, x + 1e-4 * np.roll(x, 1), lam)  # stationarity fails
    flipped = lam.copy()
    active = int(np.flatnonzero(np.abs(lam) > 1e-9)[0])
    flipped[active] = -flipped[active]  # a multiplier of the wrong sign for its side
    assert not dual.kkt_holds(program, x, flipped)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_pre_checks_still_name_an_infeasible_problem(objective: Objective) -> None:
    """DAQP is asked before the pre-checks; when it declines, they name the conflict as before."""
    moments = random_moments(20, 3)
    cases = {
        "SECTOR_BOUNDS": {"sector_limits": (SectorLimit("g0", min_weight=0.9),)},  # g0's caps sum to 0.4
        "TARGET_RETURN": {"min_return": float(moments.expected_returns.max()) + 0.01},
    }
    for expected, fields in cases.items():
        problem = random_problem(objective, 20, 3, **fields)
        assert DUAL_ACTIVE_SET.supports(ProblemModel.build(problem, moments))
        with pytest.raises(InfeasibleError) as raised:
            optimize_mean_variance(problem, moments)
        assert expected in [v.type for v in raised.value.precondition_violations]


def test_no_time_left_is_a_deadline() -> None:
    moments = random_moments(20, 3)
    with pytest.raises(DeadlineExceededError):
        optimize_mean_variance(random_problem(Objective.MIN_VOLATILITY, 20, 3), moments, time_limit_s=0.0)


def test_a_long_only_answer_has_no_negative_weight() -> None:
    """Min volatility with a return floor only the riskiest name meets: all in it, the rest exactly 0, not -1e-15.

    Six names, μ up to 0.25 (the floor): the only portfolio meeting it is 100 % of the last name (worked by hand).
    """
    mu = np.array([0.01, 0.015, 0.02, 0.15, 0.20, 0.25])
    vol = np.array([0.1, 0.12, 0.15, 0.2, 0.25, 0.3])
    sigma = (0.3 * np.ones((6, 6)) + 0.7 * np.eye(6)) * np.outer(vol, vol)
    problem = PortfolioProblem(
        symbols=tuple("abcdef"), objective=Objective.MIN_VOLATILITY, lower_bounds=np.zeros(6),
        upper_bounds=np.ones(6), min_return=0.25,
    )  # fmt: skip
    result = optimize_mean_variance(problem, Moments(expected_returns=mu, covariance=sigma))
    assert result.solve_path == "DUAL_ACTIVE_SET"
    assert result.weights.min() >= 0.0
    np.testing.assert_allclose(result.weights, [0, 0, 0, 0, 0, 1], atol=1e-12)
