"""The dense interior-point backend (``DENSE_IPM``) against plain cvxpy programs written here, solved by Clarabel.

Truth: the optimal objective of an independent cvxpy formulation of the same problem over w alone (``cp.abs`` for
the trades and the gross exposure, no auxiliary variables of ours), and every constraint measured on the weights
with NumPy (``check_constraints``). Data: the last 756 daily returns of skfolio's S&P 500 set (20 stocks) and, for
N = 300, a random 5-factor book (the rotation benchmark's).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from pypfopt import expected_returns, risk_models

from services.errors import DeadlineExceededError, InfeasibleError
from services.optimization import (
    CONIC,
    DENSE_IPM,
    Objective,
    PortfolioProblem,
    ProblemModel,
    SectorLimit,
    check_constraints,
    optimize_mean_variance,
)
from services.optimization import _interior_point as ipm
from services.types import Moments

OBJECTIVE_RTOL = 1e-7
SP500_DAYS = 756


@pytest.fixture(scope="module")
def sp500(sp500_prices: pd.DataFrame) -> tuple[Moments, np.ndarray]:
    prices = sp500_prices.iloc[-(SP500_DAYS + 1) :]
    moments = Moments(
        expected_returns=expected_returns.mean_historical_return(prices).to_numpy(),
        covariance=risk_models.sample_cov(prices).to_numpy(),
    )
    returns = prices.pct_change().iloc[1:].to_numpy()
    market = returns.mean(axis=1)
    betas = np.array([np.cov(returns[:, i], market)[0, 1] for i in range(returns.shape[1])]) / market.var(ddof=1)
    return moments, betas


def problem_with(objective: Objective, n: int, **fields: Any) -> PortfolioProblem:
    base: dict[str, Any] = {
        "symbols": tuple(f"s{i}" for i in range(n)),
        "objective": objective,
        "lower_bounds": np.full(n, -0.2),
        "upper_bounds": np.full(n, 0.4),
        "risk_free_rate": 0.02,
        "risk_aversion": 3.0,
    }
    return PortfolioProblem(**{**base, **fields})


def reference(problem: PortfolioProblem, moments: Moments) -> float:
    """The optimal objective of the engine's definition (``ProblemModel.objective_value``), in plain cvxpy over w."""
    n = problem.n_assets
    w = cp.Variable(n)
    w0 = problem.current_weights if problem.current_weights is not None else np.zeros(n)
    net_exposure = problem.min_net_exposure is not None or problem.max_net_exposure is not None
    constraints = [w >= problem.lower_bounds, w <= problem.upper_bounds]
    if net_exposure:
        low = problem.min_net_exposure if problem.min_net_exposure is not None else -np.inf
        high = problem.max_net_exposure if problem.max_net_exposure is not None else np.inf
        constraints += [cp.sum(w) >= low] if np.isfinite(low) else []
        constraints += [cp.sum(w) <= high] if np.isfinite(high) else []
    else:
        constraints.append(cp.sum(w) == 1)
    if problem.turnover_limit is not None:
        constraints.append(cp.sum(cp.abs(w - w0)) <= problem.turnover_limit)
    if problem.turnover_caps is not None:
        constraints.append(cp.abs(w - w0) <= problem.turnover_caps)
    if problem.leverage_limit is not None:
        constraints.append(cp.sum(cp.abs(w)) <= problem.leverage_limit)
    if problem.beta_tolerance is not None:
        assert problem.betas is not None
        constraints.append(cp.abs(problem.betas @ w) <= problem.beta_tolerance)
    for limit in problem.sector_limits:
        members = np.array([s == limit.sector for s in problem.sectors], dtype=float)
        if limit.min_weight is not None:
            constraints.append(members @ w >= limit.min_weight)
        if limit.max_weight is not None:
            constraints.append(members @ w <= limit.max_weight)
    mu = moments.expected_returns
    gain: cp.Expression = mu @ w
    if net_exposure:
        gain = gain + problem.risk_free_rate * (1 - cp.sum(w))
    if problem.transaction_costs_bps is not None:
        gain = gain - (problem.transaction_costs_bps / 1e4) @ cp.abs(w - w0)
    if problem.min_return is not None:
        constraints.append(gain >= problem.min_return)
    variance = cp.quad_form(w, cp.psd_wrap(moments.covariance))
    if problem.objective is Objective.MIN_VOLATILITY:
        program = cp.Problem(cp.Minimize(variance), constraints)
    else:
        program = cp.Problem(cp.Maximize(gain - 0.5 * problem.risk_aversion * variance), constraints)
    program.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert program.status == cp.OPTIMAL
    return float(program.value)


def current(n: int) -> np.ndarray:
    w0 = np.linspace(0.5, 1.5, n)
    return w0 / w0.sum()


def families(n: int, betas: np.ndarray) -> dict[str, dict[str, Any]]:
    sectors = tuple(("TECH", "HEALTH", "ENERGY", "")[i % 4] for i in range(n))
    return {
        "turnover": {"current_weights": current(n), "turnover_limit": 0.4},
        "turnover_caps": {"current_weights": current(n), "turnover_caps": np.full(n, 0.06)},
        "costs": {"current_weights": current(n), "transaction_costs_bps": np.linspace(5.0, 50.0, n)},
        "leverage": {"leverage_limit": 1.3},
        "beta": {"betas": betas, "beta_tolerance": 0.9},
        "sectors": {
            "sectors": sectors,
            "sector_limits": (SectorLimit("TECH", max_weight=0.3), SectorLimit("HEALTH", min_weight=0.25)),
        },
        "net_exposure": {"min_net_exposure": 0.5, "max_net_exposure": 0.8},
        "min_return": {"min_return": 0.12},
    }


def combined(n: int, betas: np.ndarray) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name, fields in families(n, betas).items():
        if name != "min_return":  # min_return net of costs is not this backend's (see test_scope)
            merged.update(fields)
    return merged


CASES = [*families(20, np.ones(20)).keys(), "all"]


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY])
@pytest.mark.parametrize("case", CASES)
def test_each_family_and_all_together_match_plain_cvxpy(
    case: str, objective: Objective, sp500: tuple[Moments, np.ndarray]
) -> None:
    moments, betas = sp500
    fields = combined(20, betas) if case == "all" else families(20, betas)[case]
    problem = problem_with(objective, 20, **fields)
    model = ProblemModel.build(problem, moments)
    assert DENSE_IPM.supports(model)
    result = optimize_mean_variance(problem, moments, backends=(DENSE_IPM,))  # linear-only cases: CLARABEL_DIRECT's
    assert (result.solve_path, result.status) == ("DENSE_IPM", "OPTIMAL")
    assert result.constraints_satisfied and check_constraints(result.weights, problem, moments) == ()
    theirs = reference(problem, moments)
    assert result.objective_value == pytest.approx(theirs, rel=OBJECTIVE_RTOL, abs=1e-10)


def test_a_binding_limit_moves_the_answer(sp500: tuple[Moments, np.ndarray]) -> None:
    """The turnover limit binds (the unconstrained optimum trades more), and the answer sits on it."""
    moments, _ = sp500
    free = optimize_mean_variance(problem_with(Objective.MAX_QUADRATIC_UTILITY, 20), moments)
    w0 = current(20)
    assert np.abs(free.weights - w0).sum() > 0.5
    limited = optimize_mean_variance(
        problem_with(Objective.MAX_QUADRATIC_UTILITY, 20, current_weights=w0, turnover_limit=0.5), moments
    )
    assert limited.solve_path == "DENSE_IPM"
    assert np.abs(limited.weights - w0).sum() == pytest.approx(0.5, abs=1e-8)


def factor_book(n: int, seed: int = 0) -> tuple[PortfolioProblem, Moments]:
    """A long-short book of N names under every family (the rotation benchmark's shape)."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(scale=0.3, size=(n, 5))
    covariance = loadings @ loadings.T + np.diag(rng.uniform(0.5, 1.0, n))
    betas = rng.normal(1.0, 0.3, n)
    w0 = np.zeros(n)
    held = rng.choice(n, 40, replace=False)
    w0[held[:20]] = 0.03
    w0[held[20:]] = -0.03 * betas[held[:20]].sum() / betas[held[20:]].sum()
    sectors = tuple(f"S{i % 10}" for i in range(n))
    problem = PortfolioProblem(
        symbols=tuple(f"n{i}" for i in range(n)),
        objective=Objective.MAX_QUADRATIC_UTILITY,
        lower_bounds=np.full(n, -0.1),
        upper_bounds=np.full(n, 0.1),
        risk_free_rate=0.0,
        risk_aversion=0.2,
        current_weights=w0,
        turnover_limit=0.2,
        turnover_caps=np.full(n, 0.05),
        leverage_limit=1.5,
        transaction_costs_bps=1e4 * 0.05 * rng.uniform(2, 20, n),
        betas=betas,
        beta_tolerance=0.05,
        sectors=sectors,
        sector_limits=tuple(SectorLimit(f"S{k}", min_weight=-0.3, max_weight=0.3) for k in range(10)),
        min_net_exposure=-0.3,
        max_net_exposure=0.3,
    )
    return problem, Moments(expected_returns=rng.normal(size=n), covariance=covariance)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_300_name_book_under_every_family_matches_plain_cvxpy(seed: int) -> None:
    problem, moments = factor_book(300, seed)
    result = optimize_mean_variance(problem, moments)
    assert result.solve_path == "DENSE_IPM" and result.constraints_satisfied
    assert result.objective_value == pytest.approx(reference(problem, moments), rel=OBJECTIVE_RTOL, abs=1e-10)


def test_the_same_answer_as_the_conic_backend_on_the_same_model() -> None:
    problem, moments = factor_book(60, 5)
    ours = optimize_mean_variance(problem, moments, backends=(DENSE_IPM,))
    theirs = optimize_mean_variance(problem, moments, backends=(CONIC,))
    assert ours.objective_value == pytest.approx(theirs.objective_value, rel=OBJECTIVE_RTOL)
    np.testing.assert_allclose(ours.weights, theirs.weights, atol=1e-5)


def test_an_infeasible_problem_is_left_to_the_conic_backend_which_proves_it() -> None:
    """Two group limits no pre-check combines: the IPM gives up (None) and Clarabel proves infeasibility."""
    n = 12
    sectors = tuple("AB"[i % 2] for i in range(n))
    problem = problem_with(
        Objective.MIN_VOLATILITY, n, lower_bounds=np.zeros(n), upper_bounds=np.full(n, 0.5), sectors=sectors,
        sector_limits=(SectorLimit("A", min_weight=0.7), SectorLimit("B", min_weight=0.7)),
        current_weights=np.full(n, 1 / n), turnover_limit=1.5,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    a = rng.normal(size=(n, n))
    moments = Moments(expected_returns=rng.normal(size=n), covariance=a @ a.T / n + np.eye(n) * 0.01)
    model = ProblemModel.build(problem, moments)
    assert DENSE_IPM.supports(model)
    assert ipm.solve_qp(ipm.build(model)) is None
    with pytest.raises(InfeasibleError):
        optimize_mean_variance(problem, moments)


def test_the_time_limit_is_honoured() -> None:
    problem, moments = factor_book(300, 0)
    model = ProblemModel.build(problem, moments)
    with pytest.raises(DeadlineExceededError):
        ipm.solve_qp(ipm.build(model), started=time.perf_counter() - 10.0, time_limit_s=1.0)


def test_scope(sp500: tuple[Moments, np.ndarray]) -> None:
    """Max Sharpe, max return, a volatility cap, min_return net of costs and infinite bounds are not in scope."""
    moments, _ = sp500
    fields = families(20, np.ones(20))
    eligible = problem_with(Objective.MAX_QUADRATIC_UTILITY, 20, **fields["turnover"])
    assert DENSE_IPM.supports(ProblemModel.build(eligible, moments))
    out = [
        replace(eligible, objective=Objective.MAX_SHARPE),
        replace(eligible, objective=Objective.MAX_RETURN),
        replace(eligible, max_volatility=0.3),
        replace(eligible, min_return=0.1, transaction_costs_bps=np.full(20, 10.0)),
        replace(eligible, upper_bounds=np.full(20, np.inf)),
    ]
    for problem in out:
        assert not DENSE_IPM.supports(ProblemModel.build(problem, moments)), problem
    # min_return without costs is a plain row, in scope; min volatility ignores costs in its objective.
    assert DENSE_IPM.supports(ProblemModel.build(replace(eligible, min_return=0.1), moments))
