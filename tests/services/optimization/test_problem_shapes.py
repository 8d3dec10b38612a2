"""Net exposure, classification schemes, multi-objective, estimated betas and relaxation.

Each against an independent truth: closed forms, a plain cvxpy formulation, SciPy, PyPortfolioOpt.
"""

from __future__ import annotations

import dataclasses

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from pypfopt import EfficientFrontier
from scipy import stats

from services.engine import OptimizationJob, efficient_frontier, run_optimization
from services.errors import InfeasibleError, InvalidInputError
from services.estimation import estimate_betas, estimate_moments
from services.optimization import (
    MultiObjectiveWeights,
    Objective,
    PortfolioProblem,
    SectorLimit,
    find_relaxation,
    mu_uncertainty_set,
    optimize_mean_variance,
    optimize_risk_measure,
    optimize_robust,
)
from services.types import EstimationSettings, Moments
from tests.services.market_data import DATA_DIR, SP500_SECTORS, load_spy_prices, return_history

DAYS = 756
TOL = 1e-6
RF = 0.02
COUNTRY = {t: ("us" if i % 3 else "intl") for i, t in enumerate(SP500_SECTORS)}
"""A second, made-up classification scheme (every third stock 'intl')."""


@pytest.fixture(scope="module")
def returns(sp500_prices: pd.DataFrame) -> pd.DataFrame:
    return sp500_prices.pct_change().iloc[-DAYS:]


@pytest.fixture(scope="module")
def moments(returns: pd.DataFrame) -> Moments:
    return estimate_moments(return_history(returns), EstimationSettings()).moments


def problem(tickers: list[str], objective: Objective, lower: float = 0.0, upper: float = 1.0, **fields: object):
    n = len(tickers)
    return PortfolioProblem(
        symbols=tuple(tickers),
        objective=objective,
        lower_bounds=np.full(n, lower),
        upper_bounds=np.full(n, upper),
        risk_free_rate=RF,
        **fields,  # type: ignore[arg-type]
    )


# --- net exposure -------------------------------------------------------------------------------------------------


def test_min_volatility_with_net_exposure_is_the_scaled_fully_invested_portfolio(
    returns: pd.DataFrame, moments: Moments
) -> None:
    """The optimum sits at the lowest net exposure λ: λ times the fully invested minimum-variance portfolio.

    wᵀΣw is homogeneous of degree 2 and the long-only box scales.
    """
    tickers = list(returns.columns)
    full = optimize_mean_variance(problem(tickers, Objective.MIN_VOLATILITY), moments)
    partial = optimize_mean_variance(
        problem(tickers, Objective.MIN_VOLATILITY, min_net_exposure=0.6, max_net_exposure=0.9), moments
    )
    assert partial.constraints_satisfied, partial.violations
    np.testing.assert_allclose(partial.weights, 0.6 * full.weights, atol=1e-6)
    # The 40 % in cash earns r_f.
    expected = 0.6 * float(moments.expected_returns @ full.weights) + 0.4 * RF
    assert partial.performance.expected_return == pytest.approx(expected, rel=1e-6)


def test_max_sharpe_with_net_exposure_keeps_the_tangency_sharpe_ratio(returns: pd.DataFrame, moments: Moments) -> None:
    """The tangency Sharpe ratio is reachable at any net exposure the (non-binding) bounds allow.

    With cash at r_f the excess return (μ − r_f)ᵀw and the volatility both scale with w.
    """
    tickers = list(returns.columns)
    full = optimize_mean_variance(problem(tickers, Objective.MAX_SHARPE), moments)
    partial = optimize_mean_variance(
        problem(tickers, Objective.MAX_SHARPE, min_net_exposure=0.5, max_net_exposure=0.7), moments
    )
    assert partial.constraints_satisfied, partial.violations
    assert 0.5 - TOL <= partial.weights.sum() <= 0.7 + TOL
    assert partial.performance.sharpe_ratio == pytest.approx(full.performance.sharpe_ratio, rel=1e-6)
    np.testing.assert_allclose(partial.weights / partial.weights.sum(), full.weights, atol=1e-5)


def test_dollar_neutral_long_short_matches_a_plain_formulation(returns: pd.DataFrame, moments: Moments) -> None:
    tickers = list(returns.columns)
    spec = problem(
        tickers,
        Objective.MAX_RETURN,
        lower=-0.3,
        upper=0.3,
        min_net_exposure=-0.05,
        max_net_exposure=0.05,
        leverage_limit=1.6,
        max_volatility=0.12,
    )
    result = optimize_mean_variance(spec, moments)
    assert result.constraints_satisfied, result.violations
    w = cp.Variable(len(tickers))
    value = cp.Problem(
        cp.Maximize(moments.expected_returns @ w + RF * (1 - cp.sum(w))),
        [
            w >= -0.3,
            w <= 0.3,
            cp.sum(w) >= -0.05,
            cp.sum(w) <= 0.05,
            cp.norm1(w) <= 1.6,
            cp.quad_form(w, cp.psd_wrap(moments.covariance)) <= 0.12**2,
        ],
    ).solve(solver=cp.CLARABEL)
    assert result.objective_value == pytest.approx(value, rel=1e-6)
    assert abs(result.weights.sum()) <= 0.05 + TOL
    assert np.abs(result.weights).sum() <= 1.6 + TOL


def test_net_exposure_the_bounds_cannot_reach_is_a_named_precheck(returns: pd.DataFrame, moments: Moments) -> None:
    tickers = list(returns.columns)
    with pytest.raises(InfeasibleError) as caught:
        optimize_mean_variance(
            problem(tickers, Objective.MIN_VOLATILITY, upper=0.05, min_net_exposure=1.5, max_net_exposure=2.0),
            moments,
        )
    assert [v.type for v in caught.value.precondition_violations] == ["BOUNDS_SUM"]
    with pytest.raises(InvalidInputError) as invalid:
        optimize_mean_variance(
            problem(tickers, Objective.MIN_VOLATILITY, min_net_exposure=0.9, max_net_exposure=0.5), moments
        )
    assert invalid.value.field_violations[0].field == "min_net_exposure"


# --- several classification schemes -------------------------------------------------------------------------------


def test_limits_of_two_schemes_hold_together_and_match_a_plain_formulation(
    returns: pd.DataFrame, moments: Moments
) -> None:
    tickers = list(returns.columns)
    sectors = tuple(SP500_SECTORS[t] for t in tickers)
    countries = tuple(COUNTRY[t] for t in tickers)
    limits = (
        SectorLimit("tech", None, 0.15),
        SectorLimit("health", 0.25, None),
        SectorLimit("intl", 0.45, 0.6, scheme="country"),
    )
    spec = problem(
        tickers,
        Objective.MAX_SHARPE,
        upper=0.3,
        sectors=sectors,
        sector_limits=limits,
        classifications=(("country", countries),),
    )
    result = optimize_mean_variance(spec, moments)
    assert result.constraints_satisfied, result.violations
    w = result.weights
    tech = np.array([s == "tech" for s in sectors])
    health = np.array([s == "health" for s in sectors])
    intl = np.array([c == "intl" for c in countries])
    assert w[tech].sum() <= 0.15 + TOL and w[health].sum() >= 0.25 - TOL
    assert 0.45 - TOL <= w[intl].sum() <= 0.6 + TOL
    # Independent: the homogenised max Sharpe program written out here.
    y, kappa = cp.Variable(len(tickers)), cp.Variable(nonneg=True)
    cp.Problem(
        cp.Minimize(cp.quad_form(y, cp.psd_wrap(moments.covariance))),
        [
            (moments.expected_returns - RF) @ y == 1,
            cp.sum(y) == kappa,
            y >= 0,
            y <= 0.3 * kappa,
            tech.astype(float) @ y <= 0.15 * kappa,
            health.astype(float) @ y >= 0.25 * kappa,
            intl.astype(float) @ y >= 0.45 * kappa,
            intl.astype(float) @ y <= 0.6 * kappa,
        ],
    ).solve(solver=cp.CLARABEL)
    reference = np.asarray(y.value) / float(kappa.value)
    sharpe = (moments.expected_returns @ reference - RF) / np.sqrt(reference @ moments.covariance @ reference)
    assert result.performance.sharpe_ratio == pytest.approx(sharpe, rel=1e-6)


def test_a_limit_on_an_unknown_scheme_names_the_field(returns: pd.DataFrame, moments: Moments) -> None:
    tickers = list(returns.columns)
    spec = problem(
        tickers,
        Objective.MIN_VOLATILITY,
        sector_limits=(SectorLimit("us", 0.1, None, scheme="region"),),
        classifications=(("country", tuple(COUNTRY[t] for t in tickers)),),
    )
    with pytest.raises(InvalidInputError) as caught:
        optimize_mean_variance(spec, moments)
    assert caught.value.field_violations[0].field == "sector_limits[0].scheme"


# --- multi-objective ----------------------------------------------------------------------------------------------


def test_multi_objective_with_return_and_half_delta_variance_is_quadratic_utility(
    returns: pd.DataFrame, moments: Moments
) -> None:
    tickers = list(returns.columns)
    delta = 4.0
    utility = optimize_mean_variance(problem(tickers, Objective.MAX_QUADRATIC_UTILITY, risk_aversion=delta), moments)
    multi = optimize_mean_variance(
        problem(
            tickers,
            Objective.MULTI_OBJECTIVE,
            multi_objective=MultiObjectiveWeights(return_weight=1.0, variance_weight=delta / 2),
        ),
        moments,
    )
    np.testing.assert_allclose(multi.weights, utility.weights, atol=1e-6)
    assert multi.objective_value == pytest.approx(utility.objective_value, rel=1e-7)


def test_a_dominant_l2_weight_spreads_to_equal_weights(returns: pd.DataFrame, moments: Moments) -> None:
    """As λ → ∞ the maximiser of ... − λ‖w‖² over the simplex tends to its minimum-norm point 1/N."""
    tickers = list(returns.columns)
    spec = problem(
        tickers, Objective.MULTI_OBJECTIVE, multi_objective=MultiObjectiveWeights(1.0, 1.0, 0.0, l2_weight=1e6)
    )
    result = optimize_mean_variance(spec, moments)
    np.testing.assert_allclose(result.weights, np.full(len(tickers), 1 / len(tickers)), atol=1e-6)


def test_a_dominant_turnover_weight_keeps_the_current_portfolio(returns: pd.DataFrame, moments: Moments) -> None:
    tickers = list(returns.columns)
    current = np.linspace(1.0, 2.0, len(tickers))
    current /= current.sum()
    spec = problem(
        tickers,
        Objective.MULTI_OBJECTIVE,
        current_weights=current,
        multi_objective=MultiObjectiveWeights(1.0, 1.0, turnover_weight=10.0),
    )
    result = optimize_mean_variance(spec, moments)
    np.testing.assert_allclose(result.weights, current, atol=1e-6)
    # A small turnover weight moves part of the way: objective equals a plain formulation.
    spec = dataclasses.replace(spec, multi_objective=MultiObjectiveWeights(1.0, 2.0, 0.01, 0.05))
    result = optimize_mean_variance(spec, moments)
    w = cp.Variable(len(tickers))
    value = cp.Problem(
        cp.Maximize(
            moments.expected_returns @ w
            - 2.0 * cp.quad_form(w, cp.psd_wrap(moments.covariance))
            - 0.01 * cp.norm1(w - current)
            - 0.05 * cp.sum_squares(w)
        ),
        [cp.sum(w) == 1, w >= 0, w <= 1],
    ).solve(solver=cp.CLARABEL)
    assert result.objective_value == pytest.approx(value, rel=1e-6)


def test_multi_objective_weights_are_validated(returns: pd.DataFrame, moments: Moments) -> None:
    tickers = list(returns.columns)
    for weights, field in (
        (MultiObjectiveWeights(-1.0, 1.0), "multi_objective.return_weight"),
        (MultiObjectiveWeights(0.0, 0.0, 1.0), "multi_objective"),
    ):
        with pytest.raises(InvalidInputError) as caught:
            optimize_mean_variance(problem(tickers, Objective.MULTI_OBJECTIVE, multi_objective=weights), moments)
        assert caught.value.field_violations[0].field == field


# --- betas estimated against a market series ----------------------------------------------------------------------


def test_estimated_betas_equal_scipy_linregress_slopes_with_gaps(stock_prices: pd.DataFrame) -> None:
    spy = load_spy_prices()["SPY"]
    frame = stock_prices.join(spy, how="inner").pct_change(fill_method=None).iloc[1:]
    market = frame.pop("SPY")
    betas = estimate_betas(frame.to_numpy(), market.to_numpy())
    for i, column in enumerate(frame.columns):
        both = frame[column].notna() & market.notna()
        slope = stats.linregress(market[both], frame[column][both]).slope
        assert betas[i] == pytest.approx(slope, rel=1e-10), column


def test_beta_neutrality_without_betas_estimates_them_against_the_market(sp500_prices: pd.DataFrame) -> None:
    index = pd.read_csv(DATA_DIR / "sp500_index.csv.gz", parse_dates=["Date"], index_col="Date").iloc[:, 0]
    frame = sp500_prices.join(index.rename("INDEX"), how="inner").pct_change().iloc[-DAYS:]
    market = frame.pop("INDEX")
    tickers = list(frame.columns)
    spec = problem(
        tickers,
        Objective.MAX_SHARPE,
        lower=-0.2,
        upper=0.3,
        beta_tolerance=0.05,
        leverage_limit=2.0,
        min_net_exposure=-0.1,
        max_net_exposure=0.1,
    )
    outcome = run_optimization(
        OptimizationJob(problem=spec, inputs=return_history(frame, market), settings=EstimationSettings())
    )
    betas = outcome.result.betas
    assert betas is not None
    expected = [stats.linregress(market, frame[t]).slope for t in tickers]
    np.testing.assert_allclose(betas, expected, rtol=1e-10)
    assert abs(float(betas @ outcome.result.weights)) <= 0.05 + TOL
    assert outcome.result.constraints_satisfied
    # The efficient frontier estimates them the same way.
    frontier = efficient_frontier(
        OptimizationJob(problem=spec, inputs=return_history(frame, market), settings=EstimationSettings()), points=3
    )
    assert all(abs(float(betas @ r.weights)) <= 0.05 + TOL for r in frontier.results)
    # Without a market series the betas cannot be estimated: the field is named.
    with pytest.raises(InvalidInputError) as caught:
        run_optimization(OptimizationJob(problem=spec, inputs=return_history(frame), settings=EstimationSettings()))
    assert caught.value.field_violations[0].field == "betas"


# --- relaxation of infeasible problems ----------------------------------------------------------------------------


def test_conflicting_sector_minima_need_their_excess_over_the_budget(returns: pd.DataFrame, moments: Moments) -> None:
    """Three sector minima of 0.4 sum to 1.2: the least L1 relaxation gives up exactly 0.2 among them."""
    tickers = list(returns.columns)
    sectors = tuple(SP500_SECTORS[t] for t in tickers)
    limits = tuple(SectorLimit(s, 0.4, None) for s in ("health", "energy", "staples"))
    spec = problem(tickers, Objective.MIN_VOLATILITY, sectors=sectors, sector_limits=limits)
    found = find_relaxation(spec, moments)
    assert found is not None
    relaxed, relaxations = found
    assert {r.constraint.split("]")[0] + "]" for r in relaxations} <= {f"sector_limits[{k}]" for k in range(3)}
    assert sum(r.amount for r in relaxations) == pytest.approx(0.2, abs=1e-6)
    # The engine: FAILED_PRECONDITION naming the relaxation, or with allow_relaxation the relaxed solution.
    job = OptimizationJob(problem=spec, inputs=moments, settings=EstimationSettings())
    with pytest.raises(InfeasibleError) as caught:
        run_optimization(job)
    kinds = [v.type for v in caught.value.precondition_violations]
    assert kinds[0] == "SECTOR_MINIMA" and "RELAXATION" in kinds
    outcome = run_optimization(dataclasses.replace(job, problem=dataclasses.replace(spec, allow_relaxation=True)))
    result = outcome.result
    assert result.relaxations and not result.constraints_satisfied
    assert result.weights.sum() == pytest.approx(1.0, abs=1e-9)
    for k, limit in enumerate(relaxed.sector_limits):
        members = np.array([s == limit.sector for s in sectors])
        assert result.weights[members].sum() >= (limit.min_weight or 0.0) - TOL, k


def test_a_volatility_cap_below_the_least_volatile_portfolio_relaxes_to_its_volatility(
    returns: pd.DataFrame, moments: Moments
) -> None:
    """Long-only is a mandate (never relaxed): the cap must rise to the minimum volatility PyPortfolioOpt finds."""
    tickers = list(returns.columns)
    frontier = EfficientFrontier(
        pd.Series(moments.expected_returns, index=tickers),
        pd.DataFrame(moments.covariance, index=tickers, columns=tickers),
        solver="CLARABEL",
    )
    frontier.min_volatility()
    least = frontier.portfolio_performance()[1]
    spec = problem(tickers, Objective.MAX_RETURN, max_volatility=0.5 * least, allow_relaxation=True)
    outcome = run_optimization(OptimizationJob(problem=spec, inputs=moments, settings=EstimationSettings()))
    (relaxation,) = outcome.result.relaxations
    assert relaxation.constraint == "max_volatility"
    assert relaxation.relaxed == pytest.approx(least, rel=1e-6)
    assert outcome.result.performance.volatility == pytest.approx(least, rel=1e-5)
    assert (outcome.result.weights >= -1e-9).all()


def test_no_relaxation_helps_max_sharpe_without_excess_return(returns: pd.DataFrame, moments: Moments) -> None:
    tickers = list(returns.columns)
    spec = dataclasses.replace(problem(tickers, Objective.MAX_SHARPE), risk_free_rate=5.0, allow_relaxation=True)
    with pytest.raises(InfeasibleError) as caught:
        run_optimization(OptimizationJob(problem=spec, inputs=moments, settings=EstimationSettings()))
    assert [v.type for v in caught.value.precondition_violations] == ["NO_EXCESS_RETURN"]


# --- trading limits with the scenario risk measures and robust optimization ----------------------------------------


def test_cvar_with_turnover_leverage_beta_tracking_error_and_net_exposure_matches_a_plain_lp(
    returns: pd.DataFrame, moments: Moments
) -> None:
    """Min CVaR_95 under every linear trading limit and the tracking-error cone, against a plain LP.

    Rockafellar-Uryasev written out here: τ + 1/((1 − α)T) Σ max(0, −r_tᵀw − τ).
    """
    tickers = list(returns.columns)
    n = len(tickers)
    scenarios = returns.to_numpy()
    current = np.full(n, 1 / n)
    betas = np.linspace(0.6, 1.4, n)
    benchmark = np.full(n, 1 / n)
    spec = problem(
        tickers,
        Objective.MIN_VOLATILITY,
        lower=-0.1,
        upper=0.25,
        current_weights=current,
        turnover_limit=0.6,
        turnover_caps=np.full(n, 0.12),
        leverage_limit=1.3,
        betas=betas,
        beta_tolerance=0.95,
        benchmark_weights=benchmark,
        tracking_error_limit=0.06,
        min_net_exposure=0.9,
        max_net_exposure=1.0,
    )
    result = optimize_risk_measure(
        spec, scenarios, moments.expected_returns, risk_measure="CVAR", covariance=moments.covariance
    )
    assert result.constraints_satisfied, result.violations
    w, tau = cp.Variable(n), cp.Variable()
    factor = np.linalg.cholesky(moments.covariance)
    reference = cp.Problem(
        cp.Minimize(tau + cp.sum(cp.pos(-scenarios @ w - tau)) / (0.05 * len(scenarios))),
        [
            w >= -0.1,
            w <= 0.25,
            cp.sum(w) >= 0.9,
            cp.sum(w) <= 1.0,
            cp.norm1(w - current) <= 0.6,
            cp.abs(w - current) <= 0.12,
            cp.norm1(w) <= 1.3,
            cp.abs(betas @ w) <= 0.95,
            cp.norm(factor.T @ (w - benchmark), 2) <= 0.06,
        ],
    ).solve(solver=cp.CLARABEL)
    assert result.objective_value == pytest.approx(reference, rel=1e-6)


def test_robust_max_return_with_turnover_and_beta_matches_a_plain_formulation(
    returns: pd.DataFrame, moments: Moments
) -> None:
    """Worst-case return over the ellipsoid (its radius from ``mu_uncertainty_set``), written out here."""
    tickers = list(returns.columns)
    n = len(tickers)
    current = np.full(n, 1 / n)
    betas = np.linspace(0.6, 1.4, n)
    spec = problem(
        tickers,
        Objective.MAX_RETURN,
        upper=0.3,
        current_weights=current,
        turnover_limit=0.5,
        betas=betas,
        beta_tolerance=0.95,
        max_volatility=0.25,
    )
    result = optimize_robust(
        spec, moments, uncertainty="ELLIPSOIDAL", confidence=0.9, observations=DAYS, periods_per_year=252
    )
    assert result.constraints_satisfied, result.violations
    radius = mu_uncertainty_set(
        moments.covariance, uncertainty="ELLIPSOIDAL", confidence=0.9, observations=DAYS, periods_per_year=252
    ).radius
    factor = np.linalg.cholesky(moments.covariance)
    w = cp.Variable(n)
    worst = moments.expected_returns @ w - radius * np.sqrt(252 / DAYS) * cp.norm(factor.T @ w, 2)
    reference = cp.Problem(
        cp.Maximize(worst),
        [
            cp.sum(w) == 1,
            w >= 0,
            w <= 0.3,
            cp.norm1(w - current) <= 0.5,
            cp.abs(betas @ w) <= 0.95,
            cp.norm(factor.T @ w, 2) <= 0.25,
        ],
    ).solve(solver=cp.CLARABEL)
    assert result.objective_value == pytest.approx(reference, rel=1e-6)
    assert np.abs(result.weights - current).sum() <= 0.5 + TOL
