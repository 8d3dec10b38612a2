"""Min CVaR, MAD and CDaR by column generation on a working set of names (``_scenario_working_set``).

Truth: the whole LP solved by the other scenario backends (HiGHS's simplex or interior point through cvxpy, then
Clarabel), whose answers ``test_risk_measures`` checks against skfolio and Riskfolio-Lib; skfolio's measures for
the measure of the weights; and HiGHS's own reduced costs of the restricted LP's columns for the dual prices the
method prices names with. Data: 520 names made of the 20 real S&P 500 series (``data/sp500_dataset.csv.gz``) and
their returns shifted by 1 to 25 days, over the last 756 days.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import skfolio.measures as skm

from services.optimization import (
    HIGHS_IPM,
    SCENARIO_CONIC,
    SIMPLEX,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    RiskMeasure,
    SectorLimit,
    optimize_risk_measure,
)
from services.optimization import _scenario_working_set as working_set

WHOLE = (SIMPLEX, HIGHS_IPM, SCENARIO_CONIC)
MEASURES = (RiskMeasure.CVAR, RiskMeasure.MAD, RiskMeasure.CDAR)
SKFOLIO = {
    RiskMeasure.CVAR: lambda r: skm.cvar(r, beta=0.95),
    RiskMeasure.MAD: skm.mean_absolute_deviation,
    RiskMeasure.CDAR: lambda r: skm.cdar(skm.get_drawdowns(r), beta=0.95),
}


@pytest.fixture(scope="module")
def scenarios(sp500_prices: pd.DataFrame) -> np.ndarray:
    returns = sp500_prices.pct_change().iloc[1:]
    shifted = pd.concat([returns.shift(k).add_suffix(f"_{k}") for k in range(26)], axis=1).dropna()
    return shifted.iloc[-756:].to_numpy()


def problem_of(n: int, upper: float, **options: object) -> PortfolioProblem:
    return PortfolioProblem(
        symbols=tuple(f"s{i}" for i in range(n)),
        objective=options.pop("objective", Objective.MIN_VOLATILITY),  # type: ignore[arg-type]
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, upper),
        **options,  # type: ignore[arg-type]
    )


def solve(
    problem: PortfolioProblem, scenarios: np.ndarray, measure: RiskMeasure, backends: tuple = ()
) -> OptimizationResult:
    mu = 252 * scenarios.mean(axis=0)
    if backends:
        return optimize_risk_measure(problem, scenarios, mu, risk_measure=measure, backends=backends)
    return optimize_risk_measure(problem, scenarios, mu, risk_measure=measure)


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_SHARPE])
@pytest.mark.parametrize("measure", MEASURES)
def test_the_working_set_finds_the_whole_lps_optimum(
    scenarios: np.ndarray, measure: RiskMeasure, objective: Objective
) -> None:
    """N = 520, min risk and max ratio (r_f = 2 %), long only and with a 2 % cap: the whole LP's optimum."""
    n = scenarios.shape[1]
    for upper in (1.0, 0.02):
        problem = problem_of(n, upper, objective=objective, risk_free_rate=0.02)
        ours = solve(problem, scenarios, measure)
        assert ours.solve_path == "WORKING_SET" and ours.solver == "HIGHS" and ours.status == "OPTIMAL"
        assert ours.constraints_satisfied and ours.violations == ()
        whole = solve(problem, scenarios, measure, WHOLE)
        assert whole.solve_path != "WORKING_SET"
        assert ours.objective_value == pytest.approx(whole.objective_value, rel=1e-9)
        risk = float(SKFOLIO[measure](scenarios @ ours.weights))
        if objective is Objective.MIN_VOLATILITY:
            assert ours.objective_value == pytest.approx(risk, rel=1e-12)
        else:  # the per-period excess return per unit of the measure
            excess = (float(252 * scenarios.mean(axis=0) @ ours.weights) - 0.02) / 252
            assert ours.objective_value == pytest.approx(excess / risk, rel=1e-12)
        assert ours.weights.sum() == pytest.approx(1.0, abs=1e-9)
        assert np.all(ours.weights >= -1e-12) and np.all(ours.weights <= upper + 1e-12)


@pytest.mark.parametrize("ratio", [False, True])
@pytest.mark.parametrize("measure", MEASURES)
def test_the_prices_of_the_names_are_highs_reduced_costs(
    scenarios: np.ndarray, measure: RiskMeasure, ratio: bool
) -> None:
    """The reduced costs the method prices names with (c − aᵀy from the row duals) are HiGHS's own for its columns.

    The restricted LP over 40 names (uncapped, so that no cap row holds a name's column) is solved again here
    with its names as columns; HiGHS reports each column's reduced cost (``lower.marginals``), which must equal
    Rᵢᵀy_rows − the budget's dual (min risk), or Rᵢᵀy_rows − (μ_i − r_f)·y_excess − y_budget (max ratio).
    """
    n = 40
    columns = scenarios[:, :n] - scenarios[:, :n].mean(axis=0) if measure is RiskMeasure.MAD else scenarios[:, :n]
    lower, upper = np.zeros(n), np.ones(n)
    excess = 252 * scenarios[:, :n].mean(axis=0) - 0.02 if ratio else None
    solved = working_set._restricted(columns, measure, 0.95, lower, upper, excess)
    assert solved is not None
    weights, duals, equalities, _ = solved
    ours = columns.T @ duals - equalities[-1]
    if excess is not None:
        ours -= excess * equalities[0]
    # HiGHS's own reduced costs of the same LP (rebuilt here for its column marginals)
    captured: dict[str, object] = {}
    real = working_set.linprog

    def spy(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        captured["result"] = result
        return result

    working_set.linprog = spy  # type: ignore[assignment]
    try:
        working_set._restricted(columns, measure, 0.95, lower, upper, excess)
    finally:
        working_set.linprog = real  # type: ignore[assignment]
    result = captured["result"]
    highs = np.asarray(result.lower.marginals[:n]) + np.asarray(result.upper.marginals[:n])  # type: ignore[attr-defined]
    np.testing.assert_allclose(ours, highs, rtol=0, atol=1e-12)
    at_zero, free = weights <= 1e-12, weights > 1e-12
    assert at_zero.any() and free.any()
    assert np.all(ours[at_zero] >= -1e-9) and np.abs(ours[free]).max() <= 1e-9


def test_a_working_set_that_outgrows_its_limit_leaves_the_lp_to_the_next_backend(
    scenarios: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for 32 names, a 2 % cap needs 50: the simplex answers, with the working set's optimum."""
    n = scenarios.shape[1]
    problem = problem_of(n, 0.02)
    default = solve(problem, scenarios, RiskMeasure.CVAR)
    monkeypatch.setattr(working_set, "WORKING_SET_MAX", 32)
    fallback = solve(problem, scenarios, RiskMeasure.CVAR)
    assert default.solve_path == "WORKING_SET" and fallback.solve_path == "SIMPLEX"
    assert default.objective_value == pytest.approx(fallback.objective_value, rel=1e-9)


def test_problems_outside_its_scope_go_to_the_whole_lp(scenarios: np.ndarray) -> None:
    """Max return, a max ratio with a lower bound, a turnover limit, a risk cap and N < 256: not the working set's."""
    n = scenarios.shape[1]
    mu = 252 * scenarios.mean(axis=0)
    cases = [
        (problem_of(n, 1.0, objective=Objective.MAX_RETURN), scenarios, 0.05),
        (replace(problem_of(n, 1.0, objective=Objective.MAX_SHARPE), lower_bounds=np.full(n, 1e-4)), scenarios, None),
        (problem_of(n, 1.0, current_weights=np.full(n, 1.0 / n), turnover_limit=0.5), scenarios, None),
        (problem_of(n, 1.0), scenarios, 0.05),
        (problem_of(100, 1.0), scenarios[:, :100], None),
    ]
    for problem, data, cap in cases:
        n_assets = data.shape[1]
        spec_mu = mu[:n_assets]
        result = optimize_risk_measure(problem, data, spec_mu, risk_measure="CVAR", max_risk=cap)
        assert result.solve_path != "WORKING_SET", problem


@pytest.mark.parametrize("objective", [Objective.MIN_VOLATILITY, Objective.MAX_SHARPE])
@pytest.mark.parametrize("measure", MEASURES)
def test_group_limits_and_min_return_on_the_working_set(
    scenarios: np.ndarray, measure: RiskMeasure, objective: Objective
) -> None:
    """Group limits (a maximum, a minimum, both) and a min_return, priced through their rows' duals.

    Truth: the whole LP's optimum, and every limit checked here with NumPy.
    """
    n = scenarios.shape[1]
    mu = 252 * scenarios.mean(axis=0)
    sectors = tuple(f"g{i % 5}" for i in range(n))
    limits = (SectorLimit("g0", None, 0.1), SectorLimit("g1", 0.3, None), SectorLimit("g2", 0.05, 0.2))
    problem = problem_of(
        n,
        0.05,
        objective=objective,
        risk_free_rate=0.02,
        sectors=sectors,
        sector_limits=limits,
        min_return=float(np.quantile(mu, 0.9)),
    )
    ours = solve(problem, scenarios, measure)
    assert ours.solve_path == "WORKING_SET" and ours.constraints_satisfied
    whole = solve(problem, scenarios, measure, WHOLE)
    assert ours.objective_value == pytest.approx(whole.objective_value, rel=1e-9)
    w = ours.weights
    groups = np.array(sectors)
    assert w[groups == "g0"].sum() <= 0.1 + 1e-9 and w[groups == "g1"].sum() >= 0.3 - 1e-9
    assert 0.05 - 1e-9 <= w[groups == "g2"].sum() <= 0.2 + 1e-9
    assert float(mu @ w) >= problem.min_return - 1e-9  # type: ignore[operator]
