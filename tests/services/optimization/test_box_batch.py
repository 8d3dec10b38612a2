"""The batch's vectorised checks and results for plain box problems against the general path, field by field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from services.errors import InfeasibleError, StratoptError
from services.optimization import (
    Objective,
    PortfolioProblem,
    optimize_mean_variance,
    optimize_mean_variance_batch,
)
from services.optimization._box_batch import _best_linear, admitted, box_results, plain_box_rule
from services.optimization._model import ProblemModel, max_achievable_return
from services.types import Moments

_OBJECTIVES = (Objective.MAX_SHARPE, Objective.MIN_VOLATILITY, Objective.MAX_QUADRATIC_UTILITY)


def _cases(prices: pd.DataFrame, count: int, seed: int) -> list[tuple[PortfolioProblem, Moments]]:
    rng = np.random.default_rng(seed)
    returns = prices.pct_change().dropna()
    out = []
    for k in range(count):
        n = int(rng.integers(3, 21))
        window = returns.iloc[-504 - 10 * k : len(returns) - 10 * k][rng.choice(returns.columns, n, replace=False)]
        moments = Moments(expected_returns=window.mean().to_numpy() * 252, covariance=window.cov().to_numpy() * 252)
        cap = (1.0, 0.3, 0.5)[k % 3]
        problem = PortfolioProblem(
            symbols=tuple(window.columns),
            objective=_OBJECTIVES[k % 3],
            lower_bounds=np.full(n, 0.01 if k % 4 == 0 else 0.0),
            upper_bounds=np.full(n, max(cap, 1.0 / n + 0.01)),
            risk_free_rate=(0.0, 0.02)[k % 2],
            risk_aversion=2.0 + k % 5,
        )
        out.append((problem, moments))
    return out


@pytest.fixture(scope="module")
def cases(sp500_prices: pd.DataFrame) -> list[tuple[PortfolioProblem, Moments]]:
    return _cases(sp500_prices, 60, seed=11)


def test_plain_problems_answer_as_the_general_path_field_by_field(cases: list) -> None:
    """Each batched answer equals optimize_mean_variance's; each result field equals ProblemModel.result's."""
    problems, moments = [p for p, _ in cases], [m for _, m in cases]
    assert all(plain_box_rule(p, m) is not None for p, m in cases)
    batched = optimize_mean_variance_batch(problems, moments)
    answered = 0
    for problem, moment, result in zip(problems, moments, batched, strict=True):
        if result is None:  # not certified: the engine solves it singly
            continue
        assert not isinstance(result, Exception)
        answered += 1
        single = optimize_mean_variance(problem, moment)
        np.testing.assert_allclose(result.weights, single.weights, atol=1e-8)
        # The general result builder on the same weights: every field the vectorised one fills.
        general = ProblemModel.build(problem, moment).result(
            result.weights, status="OPTIMAL", solver=result.solver, iterations=result.iterations, started=0.0,
            solve_path=result.solve_path, snap=False,
        )  # fmt: skip
        assert result.performance.expected_return == pytest.approx(general.performance.expected_return, rel=1e-12)
        assert result.performance.volatility == pytest.approx(general.performance.volatility, rel=1e-12)
        assert result.performance.sharpe_ratio == pytest.approx(general.performance.sharpe_ratio, rel=1e-12)
        assert result.objective_value == pytest.approx(general.objective_value, rel=1e-12)
        assert (result.status, result.constraints_satisfied, result.violations) == (
            general.status,
            general.constraints_satisfied,
            general.violations,
        )
        assert result.solve_path == "BATCH_ACTIVE_SET" and result.fallback_used is False
    assert answered >= 55


def test_failing_checks_give_the_general_paths_errors(cases: list) -> None:
    """Crossed bounds, bounds that cannot sum to 1 and max Sharpe without excess return: the single path's errors."""
    problem, moment = cases[0]
    n = problem.n_assets
    crossed = dataclasses.replace(
        problem, lower_bounds=np.r_[0.5, np.zeros(n - 1)], upper_bounds=np.r_[0.4, np.ones(n - 1)]
    )
    too_low = dataclasses.replace(problem, upper_bounds=np.full(n, 0.5 / n))
    too_high = dataclasses.replace(problem, lower_bounds=np.full(n, 2.0 / n))
    no_excess = dataclasses.replace(problem, objective=Objective.MAX_SHARPE, risk_free_rate=10.0)
    bad = [crossed, too_low, too_high, no_excess]
    kinds = [plain_box_rule(p, moment) for p in bad]
    assert all(k is not None for k in kinds)
    assert not admitted(bad, [moment] * 4, [k[0] for k in kinds if k is not None]).any()
    batched = optimize_mean_variance_batch([*bad, problem], [moment] * 5)
    for p, answer in zip(bad, batched, strict=False):
        with pytest.raises(StratoptError) as single:
            optimize_mean_variance(p, moment)
        assert isinstance(answer, type(single.value)) and str(answer) == str(single.value)
    assert isinstance(batched[3], InfeasibleError)
    assert batched[4] is not None and not isinstance(batched[4], Exception)


def test_only_plain_problems_take_the_vectorised_path(cases: list) -> None:
    """Any constraint family beyond bounds and the budget (or a target) leaves a problem to the general path."""
    problem, moment = cases[1]
    n = problem.n_assets
    others = [
        dataclasses.replace(problem, turnover_limit=0.5, current_weights=np.full(n, 1.0 / n)),
        dataclasses.replace(problem, transaction_costs_bps=np.full(n, 5.0)),
        dataclasses.replace(problem, min_return=0.05),
        dataclasses.replace(problem, max_holdings=3),
        dataclasses.replace(problem, max_net_exposure=1.0),
        dataclasses.replace(problem, objective=Objective.MAX_RETURN),
        dataclasses.replace(problem, objective=Objective.MAX_QUADRATIC_UTILITY, risk_aversion=0.0),
    ]
    assert [plain_box_rule(p, moment) for p in others] == [None] * len(others)
    # Sectors without limits constrain nothing: plain.
    assert plain_box_rule(dataclasses.replace(problem, sectors=("a",) * n), moment) is not None


def test_a_breached_bound_is_reported_by_the_general_builder(cases: list) -> None:
    """An answer outside a bound by more than TOLERANCE is not built here (None) and the general builder names it."""
    problem, moment = cases[2]
    n = problem.n_assets
    weights = np.full(n, 1.0 / n)
    weights[0] += 1e-3
    weights[1] -= 1e-3
    tight = dataclasses.replace(problem, upper_bounds=np.full(n, 1.0 / n + 1e-4))
    out = box_results([tight, problem], [moment, moment], [weights, weights], np.array([1, 1]), solver="x", started=0.0)
    assert out[0] is None and out[1] is not None and out[1].constraints_satisfied
    assert ProblemModel.build(tight, moment).violations(weights)  # the general builder reports it


def test_best_excess_return_is_the_greedy_closed_form() -> None:
    """The stacked greedy against max_achievable_return on random bounds and coefficients (ties included)."""
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 30):
        c = np.round(rng.normal(size=(50, n)), 1)
        lower = rng.uniform(0.0, 0.5 / n, size=(50, n))
        upper = lower + rng.uniform(0.0, 3.0 / n, size=(50, n))
        upper[:, 0] = np.maximum(upper[:, 0], 1.0)  # Σu ≥ 1
        expected = [max_achievable_return(c[b], lower[b], upper[b]) for b in range(50)]
        np.testing.assert_allclose(_best_linear(c, lower, upper), expected, rtol=1e-12, atol=1e-14)


def test_stacked_risk_contributions_equal_one_by_one(cases: list) -> None:
    """Stacked per N (mixed N, in input order) against risk_contributions per vector; they sum to 1."""
    from services.optimization import risk_contributions, stacked_risk_contributions

    rng = np.random.default_rng(4)
    weights = [rng.dirichlet(np.ones(m.expected_returns.size)) for _, m in cases]
    covariances = [m.covariance for _, m in cases]
    stacked = stacked_risk_contributions(weights, covariances)
    for w, sigma, shares in zip(weights, covariances, stacked, strict=True):
        np.testing.assert_allclose(shares, risk_contributions(w, sigma), rtol=1e-12, atol=1e-15)
        assert shares.sum() == pytest.approx(1.0, abs=1e-12)
