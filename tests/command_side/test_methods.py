"""Every method through the real gRPC server and database, each checked against an independent reference.

The engine modules have their detailed tests in tests/services/; here the point is the wiring: the request's
fields reach the method, the answer comes back and is stored, and it is the answer another library (or a closed
form) gives on the same inputs.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import numpy as np
import pandas as pd
import psycopg
import pytest
from pypfopt import EfficientFrontier, HRPOpt, expected_returns, risk_models
from skfolio import RiskMeasure as SkRiskMeasure
from skfolio.optimization import MeanRisk, ObjectiveFunction

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, returns_request, stored_rows
from tests.conftest import DATA_DIR, PPO_PREFIX

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    return prices.pct_change().dropna().iloc[-756:]


@pytest.fixture(scope="module")
def covariance(returns: pd.DataFrame) -> np.ndarray:
    return returns.cov().to_numpy() * 252


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def weights_of(response: Any, columns: Any) -> np.ndarray:
    return np.array([response.optimal_weights[c] for c in columns])


def test_risk_parity_equalises_risk_contributions(
    commands: Any, returns: pd.DataFrame, covariance: np.ndarray, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("rp")
    request = returns_request(returns, portfolio_id, method=pb.OPTIMIZATION_METHOD_RISK_PARITY)
    response = commands.Optimize(request, timeout=120)
    w = weights_of(response, returns.columns)
    contributions = w * (covariance @ w) / (w @ covariance @ w)  # independent: NumPy on the returned weights
    np.testing.assert_allclose(contributions, 1 / len(w), rtol=1e-8)
    reported = np.array([response.optimization_metadata.risk_contributions[c] for c in returns.columns])
    np.testing.assert_allclose(reported, contributions, rtol=1e-9)
    assert response.optimization_metadata.method == pb.OPTIMIZATION_METHOD_RISK_PARITY
    assert response.optimization_metadata.solver == "JAX_NEWTON"
    assert stored_rows(db, portfolio_id)["portfolio_optimized"] == 1


def test_risk_budgets_are_met(commands: Any, returns: pd.DataFrame, covariance: np.ndarray) -> None:
    budgets = {c: float(i + 1) for i, c in enumerate(returns.columns)}
    request = returns_request(returns, unique("rb"), method=pb.OPTIMIZATION_METHOD_RISK_PARITY)
    request.risk_parameters.risk_budgets.update(budgets)
    w = weights_of(commands.Optimize(request, timeout=120), returns.columns)
    contributions = w * (covariance @ w) / (w @ covariance @ w)
    target = np.array(list(budgets.values())) / sum(budgets.values())
    np.testing.assert_allclose(contributions, target, rtol=1e-8)


@pytest.mark.parametrize(("linkage", "name"), [(pb.LINKAGE_METHOD_SINGLE, "single"), (pb.LINKAGE_METHOD_WARD, "ward")])
def test_hrp_equals_pypfopt(commands: Any, returns: pd.DataFrame, linkage: int, name: str) -> None:
    request = returns_request(returns, unique("hrp"), method=pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY)
    request.risk_parameters.linkage_method = linkage
    response = commands.Optimize(request, timeout=60)
    reference = HRPOpt(cov_matrix=risk_models.sample_cov(returns, returns_data=True)).optimize(linkage_method=name)
    np.testing.assert_allclose(
        weights_of(response, returns.columns), [reference[c] for c in returns.columns], atol=1e-12
    )
    assert response.optimization_metadata.convergence_status == pb.CONVERGENCE_STATUS_CLOSED_FORM


@pytest.mark.parametrize("linkage", [pb.LINKAGE_METHOD_SINGLE, pb.LINKAGE_METHOD_AVERAGE])
def test_hrp_on_prices_with_gaps_equals_pypfopt_returns_path(
    commands: Any, stored_prices: dict[str, str], linkage: int
) -> None:
    """Stored 1989-2018 prices with pre-IPO gaps: the weights of ``HRPOpt(returns).optimize()``, same linkage.

    PyPortfolioOpt clusters on pandas' pairwise ``returns.corr()``, which differs from the correlation of the
    pairwise covariance by up to 0.19 on these prices (weights by up to 0.027 under single linkage). Inline returns
    must be finite (no gaps), so the gapped history comes from the ingested prices (no interior gaps: the server's
    returns between observations are ``pct_change(fill_method=None)``).
    """
    prices = pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")
    gapped = prices.pct_change(fill_method=None).iloc[1:]
    assert gapped.isna().any().any()
    request = cmd_pb.OptimizeRequest(
        portfolio_id=unique("hrp-gaps"),
        strategies=[pb.Strategy(symbol=PPO_PREFIX + t) for t in prices.columns],
        market_data=pb.MarketDataWindow(),
        method=pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY,
        risk_parameters=pb.RiskParameters(linkage_method=linkage),
    )
    response = commands.Optimize(request, timeout=60)
    name = pb.LinkageMethod.Name(linkage).removeprefix("LINKAGE_METHOD_").lower()
    reference = HRPOpt(returns=gapped).optimize(linkage_method=name)
    np.testing.assert_allclose(
        weights_of(response, [PPO_PREFIX + c for c in prices.columns]),
        [reference[c] for c in prices.columns],
        rtol=0.0,
        atol=1e-10,
    )
    assert response.optimization_metadata.missing_data_policy == "PAIRWISE"


def test_black_litterman_posterior_and_weights(commands: Any, returns: pd.DataFrame, covariance: np.ndarray) -> None:
    caps = {c: float(10 + i) for i, c in enumerate(returns.columns)}
    request = returns_request(
        returns,
        unique("bl"),
        method=pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN,
        objective=pb.OBJECTIVE_MAX_SHARPE,
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
        black_litterman=pb.BlackLittermanInputs(
            market_caps=caps,
            risk_aversion=2.5,
            views=[
                pb.View(weights={"AAPL": 1.0}, expected_return=0.12),
                pb.View(weights={"JPM": 1.0, "BAC": -1.0}, expected_return=0.03),
            ],
        ),
    )
    response = commands.Optimize(request, timeout=60)
    # Independent closed form (He and Litterman, 1999) with Ω = diag(τ P Σ Pᵀ).
    columns = list(returns.columns)
    tau, delta = 0.05, 2.5
    w_mkt = np.array([caps[c] for c in columns]) / sum(caps.values())
    prior = delta * covariance @ w_mkt + 0.02
    p = np.zeros((2, len(columns)))
    p[0, columns.index("AAPL")] = 1
    p[1, columns.index("JPM")], p[1, columns.index("BAC")] = 1, -1
    q = np.array([0.12, 0.03])
    omega = np.diag(np.diag(tau * p @ covariance @ p.T))
    precision = np.linalg.inv(tau * covariance) + p.T @ np.linalg.inv(omega) @ p
    posterior = np.linalg.solve(precision, np.linalg.solve(tau * covariance, prior) + p.T @ np.linalg.solve(omega, q))
    reported = response.optimization_metadata.black_litterman
    np.testing.assert_allclose([reported.posterior_returns[c] for c in columns], posterior, rtol=1e-9)
    posterior_cov = covariance + np.linalg.inv(precision)
    np.testing.assert_allclose(
        np.array(reported.posterior_covariance).reshape(len(columns), -1), posterior_cov, rtol=1e-9
    )
    frontier = EfficientFrontier(pd.Series(posterior, index=columns), pd.DataFrame(posterior_cov, columns, columns))
    frontier.max_sharpe(risk_free_rate=0.02)
    assert response.sharpe_ratio == pytest.approx(frontier.portfolio_performance(risk_free_rate=0.02)[2], rel=1e-6)


def test_min_cvar_matches_skfolio(commands: Any, returns: pd.DataFrame) -> None:
    request = returns_request(
        returns,
        unique("cvar"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        risk_parameters=pb.RiskParameters(risk_measure=pb.RISK_MEASURE_CVAR, confidence_level=0.95),
    )
    response = commands.Optimize(request, timeout=60)
    reference = MeanRisk(
        risk_measure=SkRiskMeasure.CVAR, objective_function=ObjectiveFunction.MINIMIZE_RISK, cvar_beta=0.95
    ).fit(returns)
    skfolio_cvar = reference.predict(returns).cvar
    assert response.optimization_metadata.risk_measure == "CVAR"
    assert response.optimization_metadata.risk_measure_value == pytest.approx(skfolio_cvar, rel=1e-6)
    # The reported value is the CVaR of the returned weights, recomputed here with NumPy.
    losses = np.sort(-(returns.to_numpy() @ weights_of(response, returns.columns)))[::-1]
    k = len(losses) * 0.05
    tail = (losses[: int(k)].sum() + (k - int(k)) * losses[int(k)]) / k
    assert response.optimization_metadata.risk_measure_value == pytest.approx(tail, rel=1e-9)


def test_robust_weights_have_the_better_worst_case(
    commands: Any, returns: pd.DataFrame, covariance: np.ndarray
) -> None:
    """Robust optimality: the worst-case utility of the robust weights beats that of the nominal weights."""

    def request(method: int) -> cmd_pb.OptimizeRequest:
        message = returns_request(
            returns,
            unique("robust"),
            method=method,
            objective=pb.OBJECTIVE_MAX_QUADRATIC_UTILITY,
            risk_parameters=pb.RiskParameters(
                risk_aversion=3.0, robust=pb.RobustParameters(uncertainty_set=pb.UNCERTAINTY_SET_BOX)
            ),
        )
        if method != pb.OPTIMIZATION_METHOD_ROBUST_OPTIMIZATION:
            message.risk_parameters.ClearField("robust")
        return message

    robust = weights_of(commands.Optimize(request(pb.OPTIMIZATION_METHOD_ROBUST_OPTIMIZATION), 60), returns.columns)
    nominal = weights_of(commands.Optimize(request(pb.OPTIMIZATION_METHOD_MEAN_VARIANCE), 60), returns.columns)
    mu = expected_returns.mean_historical_return(returns, returns_data=True).to_numpy()
    # Box half-widths: z_{0.975} times the standard error of each annualised mean (T = 756 daily returns).
    from scipy.stats import norm

    half_widths = norm.ppf(0.975) * np.sqrt(np.diag(covariance) / (len(returns) / 252))

    def worst_case_utility(w: np.ndarray) -> float:
        return float((mu - half_widths) @ w - 1.5 * w @ covariance @ w)

    assert worst_case_utility(robust) >= worst_case_utility(nominal) - 1e-9
    assert not np.allclose(robust, nominal, atol=1e-3)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "objective", pb.OBJECTIVE_MAX_SHARPE), "objective"),
        (lambda r: setattr(r.constraints, "max_weight", 0.2), "constraints"),
        (
            lambda r: setattr(r.risk_parameters, "linkage_method", pb.LINKAGE_METHOD_WARD),
            "risk_parameters.linkage_method",
        ),
        (lambda r: r.risk_parameters.risk_budgets.update({"NOPE": 1.0}), "risk_parameters.risk_budgets[NOPE]"),
    ],
)
def test_risk_parity_rejects_what_does_not_apply(commands: Any, returns: pd.DataFrame, mutate: Any, field: str) -> None:
    request = returns_request(returns, unique("rp-bad"), method=pb.OPTIMIZATION_METHOD_RISK_PARITY)
    mutate(request)
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]


def test_invalid_method_combinations(commands: Any, returns: pd.DataFrame) -> None:
    cvar_on_moments = cmd_pb.OptimizeRequest(
        portfolio_id=unique("bad"),
        strategies=[pb.Strategy(symbol="A"), pb.Strategy(symbol="B")],
        moments=pb.MomentsInput(expected_returns=[0.1, 0.2], covariance=[0.04, 0, 0, 0.09]),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        risk_parameters=pb.RiskParameters(risk_measure=pb.RISK_MEASURE_CVAR),
    )
    bl_without_inputs = returns_request(
        returns, unique("bad"), method=pb.OPTIMIZATION_METHOD_BLACK_LITTERMAN, objective=pb.OBJECTIVE_MAX_SHARPE
    )
    hrp_with_sectors = returns_request(returns, unique("bad"), method=pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY)
    hrp_with_sectors.constraints.sector_limits.append(pb.SectorLimit(sector="Tech", max_weight=0.2))
    for request, field in (
        (cvar_on_moments, "risk_parameters.risk_measure"),
        (bl_without_inputs, "black_litterman"),
        (hrp_with_sectors, "constraints"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            commands.Optimize(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == [field]


def test_trading_limits_hold_on_the_returned_weights(
    commands: Any, returns: pd.DataFrame, covariance: np.ndarray
) -> None:
    """Turnover from current weights, tracking error to a benchmark and beta neutrality, all binding."""
    columns = list(returns.columns)
    n = len(columns)
    current = np.full(n, 1.0 / n)
    request = returns_request(
        returns,
        unique("limits"),
        objective=pb.OBJECTIVE_MAX_SHARPE,
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
        constraints=pb.OptimizationConstraints(
            turnover_limit=0.4,
            benchmark_weights={c: 1.0 / n for c in columns},
            tracking_error_limit=0.03,
            transaction_costs_bps={c: 10.0 for c in columns},
        ),
    )
    for strategy, weight in zip(request.strategies, current, strict=True):
        strategy.current_weight = weight
    w = weights_of(commands.Optimize(request, timeout=60), columns)
    assert np.abs(w - current).sum() <= 0.4 + 1e-6
    active = w - 1.0 / n
    assert np.sqrt(active @ covariance @ active) <= 0.03 + 1e-6
    assert w.sum() == pytest.approx(1.0, abs=1e-6)

    market = returns.mean(axis=1)
    betas = {c: float(returns[c].cov(market) / market.var()) for c in columns}
    neutral = returns_request(
        returns,
        unique("beta"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        constraints=pb.OptimizationConstraints(min_weight=-1.0, betas=betas, beta_tolerance=0.05, leverage_limit=3.0),
    )
    w = weights_of(commands.Optimize(neutral, timeout=60), columns)
    assert abs(np.array([betas[c] for c in columns]) @ w) <= 0.05 + 1e-6
    assert np.abs(w).sum() <= 3.0 + 1e-6


def test_trading_limits_work_with_cvar_and_are_rejected_where_they_do_not_apply(
    commands: Any, returns: pd.DataFrame
) -> None:
    columns = list(returns.columns)
    cvar = returns_request(
        returns,
        unique("limits-cvar"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        risk_parameters=pb.RiskParameters(risk_measure=pb.RISK_MEASURE_CVAR),
        constraints=pb.OptimizationConstraints(turnover_limit=0.5, leverage_limit=1.0),
    )
    for strategy in cvar.strategies:
        strategy.current_weight = 1.0 / len(columns)
    response = commands.Optimize(cvar, timeout=60)
    w = weights_of(response, columns)
    assert np.abs(w - 1.0 / len(columns)).sum() <= 0.5 + 1e-6
    assert response.optimization_metadata.constraints_satisfied
    for method, risk_measure, field in (
        (pb.OPTIMIZATION_METHOD_MEAN_VARIANCE, pb.RISK_MEASURE_CVAR, "constraints.transaction_costs_bps"),
        (pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY, 0, "constraints.turnover_limit"),
    ):
        request = returns_request(
            returns,
            unique("limits-bad"),
            method=method,
            objective=pb.OBJECTIVE_MIN_VOLATILITY if method == pb.OPTIMIZATION_METHOD_MEAN_VARIANCE else 0,
            risk_parameters=pb.RiskParameters(risk_measure=risk_measure),
        )
        if field.endswith("costs_bps"):
            request.constraints.transaction_costs_bps[columns[0]] = 5.0
        else:
            request.constraints.turnover_limit = 0.5
        with pytest.raises(grpc.RpcError) as caught:
            commands.Optimize(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == [field]


def test_efficient_frontier_points_are_pypfopt_efficient_returns(
    commands: Any, returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("frontier")
    problem = returns_request(
        returns, portfolio_id, constraints=pb.OptimizationConstraints(max_weight=0.3), objective=pb.OBJECTIVE_MAX_SHARPE
    )
    response = commands.ComputeEfficientFrontier(
        cmd_pb.ComputeEfficientFrontierRequest(problem=problem, points=6), timeout=120
    )
    assert len(response.points) == 6
    expected = [p.expected_return for p in response.points]
    assert expected == sorted(expected)
    vols = [p.volatility for p in response.points]
    assert vols == sorted(vols)  # above the minimum-variance point the frontier rises
    mu = expected_returns.mean_historical_return(returns, returns_data=True)
    cov = risk_models.sample_cov(returns, returns_data=True)
    for point in response.points[1:-1]:
        frontier = EfficientFrontier(mu, cov, weight_bounds=(0, 0.3))
        frontier.efficient_return(point.expected_return)
        assert point.volatility == pytest.approx(frontier.portfolio_performance()[1], rel=1e-6)
    lowest = EfficientFrontier(mu, cov, weight_bounds=(0, 0.3))
    lowest.min_volatility()
    assert response.points[0].volatility == pytest.approx(lowest.portfolio_performance()[1], rel=1e-6)
    assert set(stored_rows(db, portfolio_id).values()) == {0}  # a computation only


def test_efficient_frontier_rejects_bad_points(commands: Any, returns: pd.DataFrame) -> None:
    problem = returns_request(returns, unique("frontier-bad"), objective=pb.OBJECTIVE_MAX_SHARPE)
    with pytest.raises(grpc.RpcError) as caught:
        commands.ComputeEfficientFrontier(cmd_pb.ComputeEfficientFrontierRequest(problem=problem, points=1), timeout=30)
    assert field_violations(caught.value) == ["points"]
    problem.strategies[0].returns[3] = float("nan")
    with pytest.raises(grpc.RpcError) as caught:
        commands.ComputeEfficientFrontier(cmd_pb.ComputeEfficientFrontierRequest(problem=problem), timeout=30)
    assert field_violations(caught.value) == ["problem.strategies[0].returns[3]"]
