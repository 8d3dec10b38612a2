"""The multi-objective, net exposure, classification schemes, estimated betas and relaxation through gRPC.

The engine has the detailed checks (tests/services/test_problem_shapes.py); here the point is the contract: the
fields reach the engine, the metadata reports what happened, the run is stored (configuration with its
classifications, result, event), and bad combinations are INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import cvxpy as cp
import grpc
import numpy as np
import pandas as pd
import psycopg
import pytest
from scipy import stats

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import (
    field_violations,
    precondition_types,
    returns_request,
    stored_rows,
)
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    index = pd.read_csv(DATA_DIR / "sp500_index.csv.gz", parse_dates=["Date"], index_col="Date").iloc[:, 0]
    return prices.join(index.rename("INDEX"), how="inner").pct_change().dropna().iloc[-756:]


@pytest.fixture(scope="module")
def returns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="INDEX")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def weights_of(response: Any, columns: Any) -> np.ndarray:
    return np.array([response.optimal_weights[c] for c in columns])


def event_metadata(db: psycopg.Connection[Any], portfolio_id: str) -> dict[str, Any]:
    row = db.execute("SELECT metadata FROM portfolio_optimized WHERE portfolio_id = %s", [portfolio_id]).fetchone()
    assert row is not None
    value = row[0]
    return value if isinstance(value, dict) else json.loads(value)


def test_multi_objective_matches_a_plain_formulation_and_is_stored(
    commands: Any, returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("multi")
    request = returns_request(returns, portfolio_id, objective=pb.OBJECTIVE_MULTI_OBJECTIVE)
    current = np.full(len(returns.columns), 1 / len(returns.columns))
    for s in request.strategies:
        s.current_weight = 1 / len(returns.columns)
    request.risk_parameters.multi_objective.variance_weight = 3.0
    request.risk_parameters.multi_objective.turnover_weight = 0.002
    request.risk_parameters.multi_objective.l2_weight = 0.01
    response = commands.Optimize(request, timeout=60)
    w = weights_of(response, returns.columns)
    mu = np.asarray((1 + returns).prod() ** (252 / len(returns)) - 1)  # PyPortfolioOpt's compounded mean
    sigma = returns.cov().to_numpy() * 252
    x = cp.Variable(len(w))
    value = cp.Problem(
        cp.Maximize(mu @ x - 3.0 * cp.quad_form(x, sigma) - 0.002 * cp.norm1(x - current) - 0.01 * cp.sum_squares(x)),
        [cp.sum(x) == 1, x >= 0, x <= 1],
    ).solve(solver=cp.CLARABEL)
    meta = response.optimization_metadata
    assert meta.objective_value == pytest.approx(value, rel=1e-6)
    assert meta.solve_path == "CONIC" and meta.constraints_satisfied
    assert meta.holdings == int((np.abs(w) > 1e-8).sum())
    assert meta.net_exposure == pytest.approx(1.0, abs=1e-9)
    assert stored_rows(db, portfolio_id)["portfolio_optimized"] == 1


def test_net_exposure_and_two_classification_schemes_through_grpc(
    commands: Any, returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("schemes")
    request = returns_request(
        returns,
        portfolio_id,
        objective=pb.OBJECTIVE_MAX_SHARPE,
        constraints=pb.OptimizationConstraints(
            min_weight=-0.2,
            max_weight=0.3,
            min_net_exposure=0.4,
            max_net_exposure=0.8,
            leverage_limit=1.5,
            sector_limits=[
                pb.SectorLimit(sector="Tech", max_weight=0.15),
                pb.SectorLimit(sector="intl", scheme="country", min_weight=0.2),
            ],
        ),
    )
    request.risk_parameters.risk_free_rate = 0.02
    intl = np.array([i % 3 == 0 for i in range(len(returns.columns))])
    for i, s in enumerate(request.strategies):
        s.classifications["country"] = "intl" if intl[i] else "us"
        s.sector = "Tech" if s.symbol in ("AAPL", "AMD", "MSFT") else "Other"
    response = commands.Optimize(request, timeout=60)
    w = weights_of(response, returns.columns)
    meta = response.optimization_metadata
    assert meta.constraints_satisfied, list(meta.constraint_violations)
    assert 0.4 - 1e-6 <= w.sum() <= 0.8 + 1e-6
    assert meta.net_exposure == pytest.approx(w.sum(), abs=1e-12)
    assert meta.gross_exposure == pytest.approx(np.abs(w).sum(), abs=1e-12) and meta.gross_exposure <= 1.5 + 1e-6
    assert w[intl].sum() >= 0.2 - 1e-6
    stored = commands.GetConfiguration(cmd_pb.GetConfigurationRequest(portfolio_id=portfolio_id), timeout=10)
    assert dict(stored.configuration.strategies[0].classifications) == {"country": "intl"}
    assert stored.configuration.constraints.sector_limits[1].scheme == "country"


def test_beta_neutrality_with_betas_estimated_against_the_market_series(
    commands: Any, frame: pd.DataFrame, returns: pd.DataFrame
) -> None:
    request = returns_request(
        returns,
        unique("beta"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        constraints=pb.OptimizationConstraints(
            min_weight=-0.2, max_weight=0.3, min_net_exposure=-0.1, max_net_exposure=0.1, beta_tolerance=0.02
        ),
    )
    request.returns.market_returns.extend(frame["INDEX"].tolist())
    response = commands.Optimize(request, timeout=60)
    meta = response.optimization_metadata
    betas = np.array([meta.betas[c] for c in returns.columns])
    expected = [stats.linregress(frame["INDEX"], returns[c]).slope for c in returns.columns]
    np.testing.assert_allclose(betas, expected, rtol=1e-9)
    assert abs(betas @ weights_of(response, returns.columns)) <= 0.02 + 1e-6
    # No betas and no market series: the field is named.
    del request.returns.market_returns[:]
    request.portfolio_id = unique("beta")
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["constraints.betas"]


def test_relaxed_solution_is_returned_stored_and_in_the_event(
    commands: Any, returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("relax")
    constraints = pb.OptimizationConstraints(
        sector_limits=[pb.SectorLimit(sector=s, min_weight=0.4) for s in ("Health", "Energy", "Staples")]
    )
    request = returns_request(returns, portfolio_id, objective=pb.OBJECTIVE_MIN_VOLATILITY, constraints=constraints)
    sectors = {"JNJ": "Health", "PFE": "Health", "XOM": "Energy", "CVX": "Energy", "KO": "Staples", "PG": "Staples"}
    for s in request.strategies:
        s.sector = sectors.get(s.symbol, "Other")
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_types(caught.value)[0] == "SECTOR_MINIMA"
    assert "RELAXATION" in precondition_types(caught.value)
    assert set(stored_rows(db, portfolio_id).values()) == {0}
    request.constraints.allow_relaxation = True
    response = commands.Optimize(request, timeout=60)
    meta = response.optimization_metadata
    assert not meta.constraints_satisfied and meta.constraint_violations
    assert sum(abs(r.relaxed - r.original) for r in meta.relaxations) == pytest.approx(0.2, abs=1e-6)
    assert all(r.constraint.startswith("constraints.sector_limits[") for r in meta.relaxations)
    event = event_metadata(db, portfolio_id)
    assert [r["constraint"] for r in event["relaxations"]] == [r.constraint for r in meta.relaxations]


@pytest.mark.parametrize(
    ("method", "mutate", "field"),
    [
        (
            pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY,
            lambda r: setattr(r.constraints, "max_holdings", 5),
            "constraints.max_holdings",
        ),
        (
            pb.OPTIMIZATION_METHOD_RISK_PARITY,
            lambda r: setattr(r.constraints, "min_net_exposure", 0.5),
            "constraints.min_net_exposure",
        ),
        (
            pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
            lambda r: setattr(r.risk_parameters.multi_objective, "l2_weight", 1.0),
            "risk_parameters.multi_objective",
        ),
        (
            pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
            lambda r: setattr(r.constraints, "min_position_weight", 1.5),
            "constraints.min_position_weight",
        ),
        (
            pb.OPTIMIZATION_METHOD_ROBUST_OPTIMIZATION,
            lambda r: setattr(r.constraints, "allow_relaxation", True),
            "constraints.allow_relaxation",
        ),
        (
            pb.OPTIMIZATION_METHOD_MEAN_VARIANCE,
            lambda r: (setattr(r.constraints, "beta_tolerance", 0.1), r.constraints.betas.update({"AAPL": 1.0})),
            "constraints.betas[AMD]",
        ),
    ],
)
def test_combinations_that_make_no_sense_name_the_field(
    commands: Any, returns: pd.DataFrame, method: int, mutate: Any, field: str
) -> None:
    no_objective = (pb.OPTIMIZATION_METHOD_RISK_PARITY, pb.OPTIMIZATION_METHOD_HIERARCHICAL_RISK_PARITY)
    objective = 0 if method in no_objective else pb.OBJECTIVE_MIN_VOLATILITY
    request = returns_request(returns.iloc[:, :5], unique("combo"), method=method, objective=objective)
    mutate(request)
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]
