"""The command service end to end: real gRPC channel, real server, real PostgreSQL + TimescaleDB, real prices.

Truth comes from outside stratopt: PyPortfolioOpt's published figures for its own data set, PyPortfolioOpt run
in the same test on the same inputs, and constraint checks on the returned weights.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import pandas as pd
import psycopg
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from pypfopt import EfficientFrontier, expected_returns, risk_models
from skfolio import measures as sk_measures

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from tests.conftest import DATA_DIR, PPO_PREFIX

pytestmark = pytest.mark.integration

PPO_TICKERS = [
    "GOOG", "AAPL", "FB", "BABA", "AMZN", "GE", "AMD", "WMT", "BAC", "GM",
    "T", "UAA", "SHLD", "XOM", "RRC", "BBY", "MA", "PFE", "JPM", "SBUX",
]  # fmt: skip
SECTORS = {
    "AAPL": "Tech", "AMD": "Tech", "MSFT": "Tech", "BAC": "Fin", "JPM": "Fin", "BBY": "Disc", "HD": "Disc",
    "CVX": "Energy", "XOM": "Energy", "RRC": "Energy", "GE": "Ind", "JNJ": "Health", "LLY": "Health",
    "MRK": "Health", "PFE": "Health", "UNH": "Health", "KO": "Staples", "PEP": "Staples", "PG": "Staples",
    "WMT": "Staples",
}  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def sp500_returns() -> pd.DataFrame:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    return prices.pct_change().dropna().iloc[-756:]


def returns_request(returns: pd.DataFrame, portfolio_id: str, **fields: Any) -> cmd_pb.OptimizeRequest:
    request = cmd_pb.OptimizeRequest(portfolio_id=portfolio_id, **fields)
    for when in returns.index:
        request.returns.timestamps.add().FromDatetime(when.to_pydatetime().replace(tzinfo=UTC))
    for column in returns.columns:
        request.strategies.add(symbol=column, sector=SECTORS.get(column, ""), returns=returns[column].tolist())
    return request


def status_of(error: grpc.RpcError) -> Any:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries a google.rpc.Status"
    return status


def field_violations(error: grpc.RpcError) -> list[str]:
    fields = []
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def precondition_types(error: grpc.RpcError) -> list[str]:
    types = []
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            types += [v.type for v in failure.violations]
    return types


def stored_rows(db: psycopg.Connection[Any], portfolio_id: str) -> dict[str, int]:
    counts = {}
    for table in (
        "optimization_configurations",
        "optimization_results",
        "portfolio_optimized",
        "latest_portfolio_optimizations",
    ):
        row = db.execute(f"SELECT count(*) FROM {table} WHERE portfolio_id = %s", [portfolio_id]).fetchone()
        assert row is not None
        counts[table] = row[0]
    return counts


# --- correctness against independent truth ------------------------------------------------------------------


def test_max_sharpe_on_stored_prices_matches_pypfopt_published_figures(
    commands: Any, stored_prices: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    """PyPortfolioOpt's test suite: long-only max Sharpe on stock_prices.csv, r_f = 0.02.

    Expected return 0.3047768, volatility 0.2216556, Sharpe 1.2847714 (``tests/test_efficient_frontier.py``).
    """
    portfolio_id = unique("ppo-max-sharpe")
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id,
        request_id=unique("req"),
        strategies=[pb.Strategy(symbol=PPO_PREFIX + t) for t in PPO_TICKERS],
        market_data=pb.MarketDataWindow(),
        objective=pb.OBJECTIVE_MAX_SHARPE,
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
    )
    response = commands.Optimize(request, timeout=60)
    assert response.expected_return == pytest.approx(0.3047768, abs=1e-6)
    assert response.expected_volatility == pytest.approx(0.2216556, abs=1e-6)
    assert response.sharpe_ratio == pytest.approx(1.2847714, abs=1e-6)
    weights = np.array(list(response.optimal_weights.values()))
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert weights.min() >= -1e-6
    meta = response.optimization_metadata
    assert meta.missing_data_policy == "PAIRWISE"
    assert meta.constraints_satisfied
    assert meta.solver == "ACTIVE_SET" and meta.solve_path == "ACTIVE_SET"  # budget + bounds: the exact fast path
    assert meta.convergence_status == pb.CONVERGENCE_STATUS_OPTIMAL
    prices = pd.read_csv(DATA_DIR / "stock_prices.csv", parse_dates=["date"], index_col="date")
    assert meta.observations == len(prices) - 1

    # The run is stored: configuration, result, event in the hypertable, read model — all one run.
    counts = stored_rows(db, portfolio_id)
    assert counts == {
        "optimization_configurations": 1,
        "optimization_results": 1,
        "portfolio_optimized": 1,
        "latest_portfolio_optimizations": 1,
    }
    event = db.execute(
        "SELECT event_id::text, result_id::text, sharpe_ratio, weights FROM portfolio_optimized "
        "WHERE portfolio_id = %s",
        [portfolio_id],
    ).fetchone()
    assert event is not None
    assert event[0] == meta.event_id
    assert event[1] == meta.result_id
    assert event[2] == pytest.approx(response.sharpe_ratio, rel=1e-12)
    assert event[3] == pytest.approx(dict(response.optimal_weights), abs=1e-15)
    result = db.execute(
        "SELECT request_id, configuration_version FROM optimization_results WHERE result_id = %s",
        [meta.result_id],
    ).fetchone()
    assert result == (request.request_id, 1)


@pytest.mark.parametrize("objective", [pb.OBJECTIVE_MAX_SHARPE, pb.OBJECTIVE_MIN_VOLATILITY])
def test_inline_returns_match_pypfopt_in_process(commands: Any, sp500_returns: pd.DataFrame, objective: int) -> None:
    request = returns_request(
        sp500_returns,
        unique("inline"),
        objective=objective,
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
    )
    response = commands.Optimize(request, timeout=60)
    mu = expected_returns.mean_historical_return(sp500_returns, returns_data=True)
    cov = risk_models.sample_cov(sp500_returns, returns_data=True)
    frontier = EfficientFrontier(mu, cov)
    if objective == pb.OBJECTIVE_MAX_SHARPE:
        frontier.max_sharpe(risk_free_rate=0.02)
        _, _, sharpe = frontier.portfolio_performance(risk_free_rate=0.02)
        assert response.sharpe_ratio == pytest.approx(sharpe, rel=1e-6)
        assert response.sharpe_ratio >= sharpe - 1e-9
    else:
        frontier.min_volatility()
        _, volatility, _ = frontier.portfolio_performance()
        assert response.expected_volatility == pytest.approx(volatility, rel=1e-6)
        assert response.expected_volatility <= volatility + 1e-9
    # Independent recomputation of the reported metrics from the returned weights.
    w = np.array([response.optimal_weights[c] for c in sp500_returns.columns])
    assert response.expected_return == pytest.approx(float(mu.to_numpy() @ w), rel=1e-9)
    assert response.expected_volatility == pytest.approx(float(np.sqrt(w @ cov.to_numpy() @ w)), rel=1e-6)
    # The estimation window's maximum drawdown of these weights, by skfolio (compounded, from the first peak).
    drawdown = -float(np.min(sk_measures.get_drawdowns(sp500_returns.to_numpy() @ w, compounded=True)))
    assert response.HasField("max_drawdown") and drawdown > 0.01
    assert response.max_drawdown == pytest.approx(drawdown, rel=1e-9)


def test_caller_moments_efficient_return_binds_the_target(commands: Any, sp500_returns: pd.DataFrame) -> None:
    mu = expected_returns.mean_historical_return(sp500_returns, returns_data=True)
    cov = risk_models.sample_cov(sp500_returns, returns_data=True)
    request = cmd_pb.OptimizeRequest(
        portfolio_id=unique("moments"),
        strategies=[pb.Strategy(symbol=c) for c in sp500_returns.columns],
        moments=pb.MomentsInput(expected_returns=mu.tolist(), covariance=cov.to_numpy().ravel().tolist()),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        constraints=pb.OptimizationConstraints(min_return=0.20, max_weight=0.3),
    )
    response = commands.Optimize(request, timeout=60)
    frontier = EfficientFrontier(mu, cov, weight_bounds=(0, 0.3))
    frontier.efficient_return(0.20)
    _, volatility, _ = frontier.portfolio_performance()
    assert response.expected_volatility == pytest.approx(volatility, rel=1e-6)
    assert response.expected_return == pytest.approx(0.20, abs=1e-6)
    assert response.optimization_metadata.missing_data_policy == "NONE"
    assert not response.HasField("max_drawdown")  # no return history behind the caller's moments


def test_sector_limits_hold_on_returned_weights(commands: Any, sp500_returns: pd.DataFrame) -> None:
    limits = [
        pb.SectorLimit(sector="Tech", max_weight=0.2),
        pb.SectorLimit(sector="Health", min_weight=0.3),
        pb.SectorLimit(sector="Energy", max_weight=0.05),
    ]
    request = returns_request(
        sp500_returns,
        unique("sectors"),
        objective=pb.OBJECTIVE_MAX_SHARPE,
        constraints=pb.OptimizationConstraints(
            max_weight=0.15, sector_limits=limits, strategy_bounds={"KO": pb.WeightBounds(min_weight=0.05)}
        ),
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
    )
    response = commands.Optimize(request, timeout=60)
    w = response.optimal_weights
    by_sector: dict[str, float] = {}
    for symbol, weight in w.items():
        by_sector[SECTORS[symbol]] = by_sector.get(SECTORS[symbol], 0.0) + weight
    assert by_sector["Tech"] <= 0.2 + 1e-6
    assert by_sector["Health"] >= 0.3 - 1e-6
    assert by_sector["Energy"] <= 0.05 + 1e-6
    assert w["KO"] >= 0.05 - 1e-6
    assert max(w.values()) <= 0.15 + 1e-6
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6)
    # The same problem in PyPortfolioOpt gives the same Sharpe ratio.
    mu = expected_returns.mean_historical_return(sp500_returns, returns_data=True)
    cov = risk_models.sample_cov(sp500_returns, returns_data=True)
    frontier = EfficientFrontier(mu, cov, weight_bounds=(0, 0.15))
    frontier.add_sector_constraints(SECTORS, {"Health": 0.3}, {"Tech": 0.2, "Energy": 0.05})
    frontier.add_constraint(lambda x: x[list(sp500_returns.columns).index("KO")] >= 0.05)
    frontier.max_sharpe(risk_free_rate=0.02)
    _, _, sharpe = frontier.portfolio_performance(risk_free_rate=0.02)
    assert response.sharpe_ratio == pytest.approx(sharpe, rel=1e-5)
    assert response.optimization_metadata.constraints_satisfied


# --- persistence semantics -------------------------------------------------------------------------------------


def test_idempotent_retry_returns_the_stored_response_and_writes_nothing(
    commands: Any, sp500_returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("idem")
    request = returns_request(
        sp500_returns.iloc[:, :5],
        portfolio_id,
        request_id=unique("key"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
    )
    first = commands.Optimize(request, timeout=60)
    before = stored_rows(db, portfolio_id)
    second = commands.Optimize(request, timeout=60)
    assert stored_rows(db, portfolio_id) == before
    assert second.optimization_metadata.replayed and not first.optimization_metadata.replayed
    assert second.optimization_metadata.event_id == first.optimization_metadata.event_id
    assert first.optimization_metadata.HasField("window_start")
    # Rebuilt from the stored record (not protobuf bytes): the first answer, field by field, metadata included.
    second.optimization_metadata.replayed = False
    assert second == first

    changed = cmd_pb.OptimizeRequest()
    changed.CopyFrom(request)
    changed.objective = pb.OBJECTIVE_MAX_RETURN
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(changed, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["request_id"]
    assert stored_rows(db, portfolio_id) == before


def test_configuration_versions_follow_content_changes(
    commands: Any, sp500_returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("versions")
    request = returns_request(sp500_returns.iloc[:, :4], portfolio_id, objective=pb.OBJECTIVE_MIN_VOLATILITY)
    assert commands.Optimize(request, timeout=60).optimization_metadata.configuration_version == 1
    assert commands.Optimize(request, timeout=60).optimization_metadata.configuration_version == 1
    request.constraints.max_weight = 0.5
    assert commands.Optimize(request, timeout=60).optimization_metadata.configuration_version == 2
    assert stored_rows(db, portfolio_id)["optimization_configurations"] == 2
    assert stored_rows(db, portfolio_id)["portfolio_optimized"] == 3
    stored = commands.GetConfiguration(cmd_pb.GetConfigurationRequest(portfolio_id=portfolio_id), timeout=10)
    assert stored.configuration.version == 2
    assert stored.configuration.constraints.max_weight == 0.5
    assert [s.symbol for s in stored.configuration.strategies] == list(sp500_returns.columns[:4])


def test_failed_request_writes_nothing(commands: Any, sp500_returns: pd.DataFrame, db: psycopg.Connection[Any]) -> None:
    portfolio_id = unique("infeasible")
    request = returns_request(
        sp500_returns.iloc[:, :5],
        portfolio_id,
        request_id=unique("key"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        constraints=pb.OptimizationConstraints(max_volatility=0.01),
    )
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_types(caught.value) == ["SOLVER_INFEASIBLE", "RELAXATION"]
    assert set(stored_rows(db, portfolio_id).values()) == {0}
    row = db.execute("SELECT count(*) FROM optimization_results WHERE request_id = %s", [request.request_id]).fetchone()
    assert row == (0,)


def test_batch_with_a_bad_item_stores_the_others(
    commands: Any, sp500_returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    good = [
        returns_request(sp500_returns.iloc[:, :6], unique("batch-ok"), objective=pb.OBJECTIVE_MAX_SHARPE),
        returns_request(sp500_returns.iloc[:, 6:12], unique("batch-ok"), objective=pb.OBJECTIVE_MIN_VOLATILITY),
    ]
    bad = returns_request(sp500_returns.iloc[:, :3], unique("batch-bad"), objective=pb.OBJECTIVE_MIN_VOLATILITY)
    bad.strategies[1].returns[7] = float("nan")
    response = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=[good[0], bad, good[1]]), timeout=120)
    assert (response.succeeded, response.failed) == (2, 1)
    assert [r.index for r in response.results] == [0, 1, 2]
    assert response.results[0].HasField("response") and response.results[2].HasField("response")
    error = response.results[1].error
    assert error.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert error.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["strategies[1].returns[7]"]
    for request in good:
        assert stored_rows(db, request.portfolio_id)["portfolio_optimized"] == 1
    assert set(stored_rows(db, bad.portfolio_id).values()) == {0}


def test_batch_size_limit(commands: Any) -> None:
    request = cmd_pb.BatchOptimizeRequest(requests=[cmd_pb.OptimizeRequest()] * 1001)
    with pytest.raises(grpc.RpcError) as caught:
        commands.BatchOptimize(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["requests"]


def test_deadline_too_short_is_deadline_exceeded_and_writes_nothing(
    commands: Any, sp500_returns: pd.DataFrame, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("deadline")
    request = returns_request(sp500_returns, portfolio_id, objective=pb.OBJECTIVE_MAX_SHARPE)
    # 2 ms: less than the request's own transfer and parsing (20 ms can now suffice for N = 20: the storage
    # reserve is measured, tests/command_side/test_throughput.py).
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=0.002)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert set(stored_rows(db, portfolio_id).values()) == {0}


# --- configurations and stored market data ---------------------------------------------------------------------


def test_upsert_list_and_run_configuration_on_stored_prices(
    commands: Any, queries: Any, stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("cfg")
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=s, sector=SECTORS[s]) for s in ("AAPL", "JNJ", "XOM", "KO", "JPM")],
        objective=pb.OBJECTIVE_MAX_SHARPE,
        constraints=pb.OptimizationConstraints(max_weight=0.4),
        risk_parameters=pb.RiskParameters(risk_free_rate=0.01),
        lookback_periods=504,
        enabled=True,
    )
    first = commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    assert first.created and first.configuration.version == 1
    again = commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    assert not again.created and again.configuration.version == 1

    run = commands.RunConfiguration(cmd_pb.RunConfigurationRequest(portfolio_id=portfolio_id), timeout=60).result
    assert run.optimization_metadata.configuration_version == 1  # the stored configuration, unchanged
    assert run.optimization_metadata.observations == 504
    assert max(run.optimal_weights.values()) <= 0.4 + 1e-6
    # The run's window is the last 505 stored prices of the skfolio data set (ends 2022-12-28).
    assert run.optimization_metadata.window_end.ToDatetime().date().isoformat() == "2022-12-28"
    latest = queries.GetLatest(query_pb.GetLatestRequest(portfolio_id=portfolio_id), timeout=10).event
    assert latest.event_id == run.optimization_metadata.event_id

    # Independent check: PyPortfolioOpt on the same 505 prices.
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    window = prices[["AAPL", "JNJ", "XOM", "KO", "JPM"]].iloc[-505:]
    frontier = EfficientFrontier(
        expected_returns.mean_historical_return(window),
        risk_models.sample_cov(window),
        weight_bounds=(0, 0.4),
    )
    frontier.max_sharpe(risk_free_rate=0.01)
    assert run.sharpe_ratio == pytest.approx(frontier.portfolio_performance(risk_free_rate=0.01)[2], rel=1e-6)

    pages: list[str] = []
    request = cmd_pb.ListConfigurationsRequest(page_size=1)
    for _ in range(1000):
        page = commands.ListConfigurations(request, timeout=10)
        pages += [c.portfolio_id for c in page.configurations]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert portfolio_id in pages
    assert pages == sorted(set(pages))


def test_unknown_portfolio_is_not_found(commands: Any) -> None:
    for call, request in (
        (commands.GetConfiguration, cmd_pb.GetConfigurationRequest(portfolio_id=unique("nobody"))),
        (commands.RunConfiguration, cmd_pb.RunConfigurationRequest(portfolio_id=unique("nobody"))),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_missing_market_data_is_failed_precondition(commands: Any, stored_prices: dict[str, str]) -> None:
    request = cmd_pb.OptimizeRequest(
        portfolio_id=unique("nodata"),
        strategies=[pb.Strategy(symbol="AAPL"), pb.Strategy(symbol="NOT-A-SYMBOL")],
        market_data=pb.MarketDataWindow(),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
    )
    with pytest.raises(grpc.RpcError) as caught:
        commands.Optimize(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "NOT-A-SYMBOL" in (caught.value.details() or "")


def test_ingest_rejects_non_positive_prices(commands: Any) -> None:
    bar = cmd_pb.PriceBar(symbol=unique("sym"), price=0.0)
    bar.timestamp.FromDatetime(datetime(2024, 1, 2, tzinfo=UTC))
    with pytest.raises(grpc.RpcError) as caught:
        commands.IngestMarketData(iter([cmd_pb.IngestMarketDataRequest(bars=[bar])]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["bars[0].price"]


def test_health_and_reflection_are_served(grpc_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(grpc_channel)
    for service in ("", "stratopt.v1.OptimizationCommandService", "stratopt.v1.OptimizationQueryService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"stratopt.v1.OptimizationCommandService", "stratopt.v1.OptimizationQueryService"} <= names


def test_disabled_configuration_is_not_run(commands: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = unique("disabled")
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol="AAPL"), pb.Strategy(symbol="KO")],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        enabled=False,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        commands.RunConfiguration(cmd_pb.RunConfigurationRequest(portfolio_id=portfolio_id), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "disabled" in (caught.value.details() or "")
    assert stored_rows(db, portfolio_id)["portfolio_optimized"] == 0


def test_upsert_configuration_rejects_invalid_fields(commands: Any) -> None:
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=unique("bad-config"),
        strategies=[pb.Strategy(symbol="AAPL"), pb.Strategy(symbol="AAPL")],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
    )
    with pytest.raises(grpc.RpcError) as caught:
        commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["configuration.strategies[1].symbol"]


def test_optimize_keeps_what_the_operator_configured(
    commands: Any, sp500_returns: pd.DataFrame, stored_prices: dict[str, str]
) -> None:
    """An Optimize call on inline returns neither re-enables a disabled configuration nor drops its window."""
    portfolio_id = unique("operator")
    columns = list(sp500_returns.columns[:4])
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=c, sector=SECTORS[c]) for c in columns],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        lookback_periods=250,
        market_symbol="SP500",
        enabled=False,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    commands.Optimize(
        returns_request(sp500_returns[columns], portfolio_id, objective=pb.OBJECTIVE_MIN_VOLATILITY), timeout=60
    )
    stored = commands.GetConfiguration(cmd_pb.GetConfigurationRequest(portfolio_id=portfolio_id), timeout=10)
    assert stored.configuration.version == 1  # same content: no new version
    assert not stored.configuration.enabled
    assert stored.configuration.lookback_periods == 250
    assert stored.configuration.market_symbol == "SP500"


def test_run_configuration_retry_replays_after_the_configuration_changed(
    commands: Any, stored_prices: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("run-retry")
    config = cmd_pb.OptimizationConfiguration(
        portfolio_id=portfolio_id,
        strategies=[pb.Strategy(symbol=s) for s in ("AAPL", "KO", "XOM")],
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        lookback_periods=300,
        enabled=True,
    )
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    request = cmd_pb.RunConfigurationRequest(portfolio_id=portfolio_id, request_id=unique("run"))
    first = commands.RunConfiguration(request, timeout=60).result
    config.enabled = False
    config.lookback_periods = 100
    commands.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
    again = commands.RunConfiguration(request, timeout=60).result
    assert again.optimization_metadata.replayed
    assert again.optimization_metadata.event_id == first.optimization_metadata.event_id
    assert stored_rows(db, portfolio_id)["portfolio_optimized"] == 1


def test_batch_items_of_one_portfolio_are_stored_in_request_order(
    commands: Any, queries: Any, sp500_returns: pd.DataFrame
) -> None:
    portfolio_id = unique("ordered")
    items = [
        returns_request(
            sp500_returns.iloc[:, :5], portfolio_id, objective=pb.OBJECTIVE_MIN_VOLATILITY, request_id=unique(f"o{i}")
        )
        for i in range(8)
    ]
    for i, item in enumerate(items):
        item.constraints.max_weight = 0.3 + 0.05 * i  # distinct configurations: versions 1..8 in order
    response = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=items), timeout=120)
    assert response.succeeded == 8
    history = queries.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id, page_size=20), timeout=10)
    newest_first = [e.request_id for e in history.events]
    assert newest_first == [item.request_id for item in reversed(items)]
    assert [e.configuration_version for e in history.events] == list(range(8, 0, -1))


def test_list_configurations_rejects_foreign_page_tokens(commands: Any) -> None:
    for token in ("!!!!", "Zm9v"):  # not base64; base64 of "foo" (not a token of ours)
        with pytest.raises(grpc.RpcError) as caught:
            commands.ListConfigurations(cmd_pb.ListConfigurationsRequest(page_token=token), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == ["page_token"]


def test_configuration_version_beyond_int32_is_not_found(commands: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        commands.GetConfiguration(
            cmd_pb.GetConfigurationRequest(portfolio_id="anything", version=3_000_000_000), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_ingest_keeps_the_last_of_duplicate_bars(commands: Any, db: psycopg.Connection[Any]) -> None:
    symbol = unique("dup")
    bars = []
    for price in (10.0, 11.0, 12.0):
        bar = cmd_pb.PriceBar(symbol=symbol, price=price)
        bar.timestamp.FromDatetime(datetime(2024, 3, 1, tzinfo=UTC))
        bars.append(bar)
    commands.IngestMarketData(iter([cmd_pb.IngestMarketDataRequest(bars=bars)]), timeout=10)
    assert db.execute("SELECT price FROM market_data WHERE symbol = %s", [symbol]).fetchall() == [(12.0,)]


def test_market_symbol_may_be_a_strategy_and_another_calendar_changes_nothing(
    commands: Any, stored_prices: dict[str, str]
) -> None:
    """CAPM against SPY holding SPY too; and mean-historical estimates ignore the market's calendar."""
    spy = PPO_PREFIX + "SPY"
    tickers = [PPO_PREFIX + t for t in ("AAPL", "GE", "XOM")]
    capm = cmd_pb.OptimizeRequest(
        portfolio_id=unique("capm"),
        strategies=[pb.Strategy(symbol=s) for s in [*tickers, spy]],
        market_data=pb.MarketDataWindow(market_symbol=spy, lookback_periods=500),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        risk_parameters=pb.RiskParameters(returns_estimator=pb.RETURNS_ESTIMATOR_CAPM),
    )
    assert commands.Optimize(capm, timeout=60).optimization_metadata.observations == 500

    def plain(market_symbol: str) -> Any:
        request = cmd_pb.OptimizeRequest(
            portfolio_id=unique("calendar"),
            strategies=[pb.Strategy(symbol=s) for s in ("AAPL", "KO", "XOM")],
            market_data=pb.MarketDataWindow(market_symbol=market_symbol, lookback_periods=500),
            objective=pb.OBJECTIVE_MAX_SHARPE,
        )
        return commands.Optimize(request, timeout=60)

    # PyPortfolioOpt's SPY series trades on a calendar that ends in 2018: as a market symbol for the
    # skfolio stocks it must not remove any of their observations.
    with_market, without = plain(spy), plain("")
    assert with_market.optimization_metadata.observations == without.optimization_metadata.observations
    assert dict(with_market.optimal_weights) == pytest.approx(dict(without.optimal_weights), abs=1e-9)


# --- large N: the working sets -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_returns(sp500_returns: pd.DataFrame) -> pd.DataFrame:
    """520 names: the 20 real S&P 500 series and their returns shifted by 1 to 25 days (last 756 days)."""
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    returns = prices.pct_change().iloc[1:]
    shifted = pd.concat([returns.shift(k).add_suffix(f"_{k}") for k in range(26)], axis=1).dropna()
    return shifted.iloc[-756:]


def _group_of(symbol: str) -> str:
    return f"g{sum(map(ord, symbol)) % 5}"


def test_large_cvar_with_group_limits_takes_the_working_set(commands: Any, many_returns: pd.DataFrame) -> None:
    """Min CVaR over 520 names with a 5 % cap and group limits, through gRPC: answered by column generation.

    Truth: skfolio's CVaR of the returned weights is the reported risk measure, and every limit holds.
    """
    request = returns_request(
        many_returns,
        unique("cvar-520"),
        objective=pb.OBJECTIVE_MIN_VOLATILITY,
        constraints=pb.OptimizationConstraints(
            max_weight=0.05,
            sector_limits=[pb.SectorLimit(sector="g0", max_weight=0.1), pb.SectorLimit(sector="g1", min_weight=0.3)],
        ),
        risk_parameters=pb.RiskParameters(risk_measure=pb.RISK_MEASURE_CVAR, confidence_level=0.95),
    )
    for strategy in request.strategies:
        strategy.sector = _group_of(strategy.symbol)
    response = commands.Optimize(request, timeout=120)
    meta = response.optimization_metadata
    assert (meta.solve_path, meta.solver) == ("WORKING_SET", "HIGHS")
    assert meta.constraints_satisfied
    w = np.array([response.optimal_weights[c] for c in many_returns.columns])
    groups = np.array([_group_of(c) for c in many_returns.columns])
    assert w.sum() == pytest.approx(1.0, abs=1e-6) and w.min() >= -1e-9 and w.max() <= 0.05 + 1e-9
    assert w[groups == "g0"].sum() <= 0.1 + 1e-9 and w[groups == "g1"].sum() >= 0.3 - 1e-9
    cvar = float(sk_measures.cvar(many_returns.to_numpy() @ w, beta=0.95))
    assert meta.risk_measure == "CVAR" and meta.risk_measure_value == pytest.approx(cvar, rel=1e-9)


def test_large_max_sharpe_with_group_limits_takes_the_working_set(commands: Any, many_returns: pd.DataFrame) -> None:
    """Max Sharpe over 520 names (caller's moments) with group limits: Clarabel on a working set.

    Truth: PyPortfolioOpt's Sharpe ratio on the same problem (``add_constraint`` for the groups, Clarabel).
    """
    mu = expected_returns.mean_historical_return(many_returns, returns_data=True)
    cov = risk_models.sample_cov(many_returns, returns_data=True)
    request = cmd_pb.OptimizeRequest(
        portfolio_id=unique("sharpe-520"),
        strategies=[pb.Strategy(symbol=c, sector=_group_of(c)) for c in many_returns.columns],
        moments=pb.MomentsInput(expected_returns=mu.tolist(), covariance=cov.to_numpy().ravel().tolist()),
        objective=pb.OBJECTIVE_MAX_SHARPE,
        constraints=pb.OptimizationConstraints(
            max_weight=0.05,
            sector_limits=[pb.SectorLimit(sector="g0", max_weight=0.1), pb.SectorLimit(sector="g1", min_weight=0.3)],
        ),
        risk_parameters=pb.RiskParameters(risk_free_rate=0.02),
    )
    response = commands.Optimize(request, timeout=120)
    meta = response.optimization_metadata
    assert (meta.solve_path, meta.solver) == ("WORKING_SET", "CLARABEL")
    groups = np.array([_group_of(c) for c in many_returns.columns])
    frontier = EfficientFrontier(mu, cov, weight_bounds=(0, 0.05), solver="CLARABEL")
    frontier.add_constraint(lambda x: x[np.flatnonzero(groups == "g0")].sum() <= 0.1)
    frontier.add_constraint(lambda x: x[np.flatnonzero(groups == "g1")].sum() >= 0.3)
    frontier.max_sharpe(risk_free_rate=0.02)
    _, _, sharpe = frontier.portfolio_performance(risk_free_rate=0.02)
    assert response.sharpe_ratio == pytest.approx(sharpe, rel=1e-6)
    assert response.sharpe_ratio >= sharpe * (1 - 1e-7)
