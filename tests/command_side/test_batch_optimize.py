"""BatchOptimize through gRPC goes through the batched active set and answers as the unary Optimize does."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import returns_request
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.integration


def test_a_batch_is_solved_together_and_equals_one_by_one(commands: Any) -> None:
    prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
    returns = prices.pct_change().dropna()
    rng = np.random.default_rng(2)
    tag = uuid.uuid4().hex[:8]
    objectives = (pb.OBJECTIVE_MAX_SHARPE, pb.OBJECTIVE_MIN_VOLATILITY, pb.OBJECTIVE_MAX_QUADRATIC_UTILITY)
    requests = []
    for k in range(30):
        columns = sorted(rng.choice(returns.columns, int(rng.integers(4, 10)), replace=False))
        end = int(rng.integers(600, len(returns)))
        requests.append(
            returns_request(
                returns[columns].iloc[end - 504 : end],
                f"batch-{tag}-{k % 7}",  # several items per portfolio
                objective=objectives[k % 3],
                constraints=pb.OptimizationConstraints(max_weight=0.4),
                risk_parameters=pb.RiskParameters(risk_free_rate=0.01, risk_aversion=3.0),
            )
        )
    bad = cmd_pb.OptimizeRequest()
    bad.CopyFrom(requests[0])
    bad.constraints.max_weight = 0.1  # 4 to 9 names at 10 %: infeasible, alone
    batch = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=[*requests, bad]), timeout=120)
    assert batch.succeeded == len(requests) and batch.failed == 1
    assert batch.results[-1].error.code == 9  # FAILED_PRECONDITION, as the unary call answers
    paths = [r.response.optimization_metadata.solve_path for r in batch.results[:-1]]
    assert paths.count("BATCH_ACTIVE_SET") >= 25
    for request, result in zip(requests, batch.results, strict=False):
        single = commands.Optimize(request, timeout=60)
        assert single.optimization_metadata.solve_path == "ACTIVE_SET"
        for symbol, weight in single.optimal_weights.items():
            assert result.response.optimal_weights[symbol] == pytest.approx(weight, abs=1e-9)
        assert result.response.sharpe_ratio == pytest.approx(single.sharpe_ratio, rel=1e-9)
        assert result.response.max_drawdown == pytest.approx(single.max_drawdown, rel=1e-9)


# --- bulk storage: one transaction per chunk ---------------------------------------------------------------------


def moments_request(
    portfolio_id: str, request_id: str, seed: int, *, max_weight: float = 0.4
) -> cmd_pb.OptimizeRequest:
    """A max-Sharpe request on the sample moments of a random window of 8 to 12 real S&P 500 names."""
    returns = _sp500_returns()
    rng = np.random.default_rng(seed)
    columns = sorted(rng.choice(returns.columns, int(rng.integers(8, 13)), replace=False))
    end = int(rng.integers(600, len(returns)))
    window = returns[columns].iloc[end - 504 : end]
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id,
        request_id=request_id,
        objective=pb.OBJECTIVE_MAX_SHARPE,
        moments=pb.MomentsInput(
            expected_returns=(window.mean() * 252).tolist(), covariance=(window.cov() * 252).to_numpy().ravel().tolist()
        ),
        constraints=pb.OptimizationConstraints(max_weight=max_weight),
    )
    request.strategies.extend(pb.Strategy(symbol=c) for c in columns)
    return request


_RETURNS: list[pd.DataFrame] = []


def _sp500_returns() -> pd.DataFrame:
    if not _RETURNS:
        prices = pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")
        _RETURNS.append(prices.pct_change().dropna())
    return _RETURNS[0]


def stored_rows(db: Any, prefix: str) -> dict[str, int]:
    """Rows of the portfolios whose id starts with ``prefix``, and runs stored in part (must be 0)."""
    like = prefix + "%"
    one = lambda query: int(db.execute(query, (like,)).fetchone()[0])  # noqa: E731
    return {
        "results": one("SELECT count(*) FROM optimization_results WHERE portfolio_id LIKE %s"),
        "events": one("SELECT count(*) FROM portfolio_optimized WHERE portfolio_id LIKE %s"),
        "latest": one("SELECT count(*) FROM latest_portfolio_optimizations WHERE portfolio_id LIKE %s"),
        "configurations": one("SELECT count(*) FROM optimization_configurations WHERE portfolio_id LIKE %s"),
        "results without their event": one(
            "SELECT count(*) FROM optimization_results r WHERE portfolio_id LIKE %s AND NOT EXISTS "
            "(SELECT 1 FROM portfolio_optimized e WHERE e.event_id = r.event_id AND e.result_id = r.result_id)"
        ),
        "events without their result": one(
            "SELECT count(*) FROM portfolio_optimized e WHERE portfolio_id LIKE %s AND NOT EXISTS "
            "(SELECT 1 FROM optimization_results r WHERE r.event_id = e.event_id)"
        ),
        "latest not the last event": one(
            "SELECT count(*) FROM latest_portfolio_optimizations l WHERE portfolio_id LIKE %s AND event_id <> "
            "(SELECT event_id FROM portfolio_optimized e WHERE e.portfolio_id = l.portfolio_id "
            'ORDER BY "timestamp" DESC, event_id DESC LIMIT 1)'
        ),
    }


def history(queries: Any, portfolio_id: str) -> list[str]:
    """Event ids of a portfolio's stored history, oldest first."""
    page = queries.GetHistory(query_pb.GetHistoryRequest(portfolio_id=portfolio_id, page_size=500), timeout=30)
    events = sorted(page.events, key=lambda e: (e.timestamp.ToNanoseconds(), e.event_id))
    return [e.event_id for e in events]


def test_a_bulk_stored_batch_keeps_request_order_notifies_and_replays_without_writing(
    commands: Any, queries: Any, db: Any
) -> None:
    from tests.bad_input import row_counts
    from tests.query_side.test_watch import watch

    tag = f"bulk-{uuid.uuid4().hex[:8]}"
    portfolios = [f"{tag}-{p}" for p in range(3)]
    requests = [
        # Two contents per portfolio, alternating: each run takes a new configuration version.
        moments_request(portfolios[k % 3], f"{tag}-r{k}", seed=k, max_weight=0.4 if (k // 3) % 2 else 0.5)
        for k in range(90)  # two chunks of 64 and 26
    ]
    reader = watch(queries, portfolios, from_beginning=True)
    try:
        batch = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=requests), timeout=120)
        assert (batch.succeeded, batch.failed) == (90, 0)
        assert [r.request_id for r in batch.results] == [r.request_id for r in requests]
        assert [r.index for r in batch.results] == list(range(90))
        by_portfolio = {p: [r.response for r in batch.results if r.response.portfolio_id == p] for p in portfolios}
        for p, responses in by_portfolio.items():
            assert [r.optimization_metadata.configuration_version for r in responses] == list(range(1, 31)), p
            assert history(queries, p) == [r.optimization_metadata.event_id for r in responses]
        watched = reader.wait_for(90)
        for p, responses in by_portfolio.items():
            seen = [m.event.metadata.event_id for m in watched if m.event.portfolio_id == p]
            assert seen == [r.optimization_metadata.event_id for r in responses]
    finally:
        reader.stop()
    assert stored_rows(db, tag) == {
        "results": 90,
        "events": 90,
        "latest": 3,
        "configurations": 90,
        "results without their event": 0,
        "events without their result": 0,
        "latest not the last event": 0,
    }
    # The answers are the unary call's (another portfolio, so the versions do not interfere).
    for k in (0, 45, 89):
        single = cmd_pb.OptimizeRequest()
        single.CopyFrom(requests[k])
        single.portfolio_id, single.request_id = f"{tag}-single-{k}", ""
        alone = commands.Optimize(single, timeout=60)
        for symbol, weight in alone.optimal_weights.items():
            assert batch.results[k].response.optimal_weights[symbol] == pytest.approx(weight, abs=1e-9)
    # A repeat of the batch replays every stored run and writes nothing.
    before = row_counts(db)
    again = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=requests), timeout=120)
    assert row_counts(db) == before
    assert all(r.response.optimization_metadata.replayed for r in again.results)
    assert [r.response.optimization_metadata.event_id for r in again.results] == [
        r.response.optimization_metadata.event_id for r in batch.results
    ]


def test_a_bad_item_at_any_step_fails_alone_and_nothing_is_half_written(commands: Any, db: Any) -> None:
    tag = f"bulkbad-{uuid.uuid4().hex[:8]}"
    good = [moments_request(f"{tag}-{k % 4}", f"{tag}-r{k}", seed=100 + k) for k in range(20)]
    invalid = moments_request(f"{tag}-x", f"{tag}-invalid", seed=1)
    invalid.constraints.max_weight = -0.5
    infeasible = moments_request(f"{tag}-x", f"{tag}-infeasible", seed=2, max_weight=0.01)  # 8 to 12 names at 1 %
    reused = moments_request(f"{tag}-x", f"{tag}-r3", seed=3)  # good[3]'s key on another request
    repeated = cmd_pb.OptimizeRequest()
    repeated.CopyFrom(good[5])  # the same request twice in one chunk: the second replays the first
    poison = moments_request(f"poison-{tag}", f"{tag}-poison", seed=4)  # refused by the database (trigger below)
    requests = [*good[:10], invalid, infeasible, reused, repeated, poison, *good[10:]]
    db.execute(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'poisoned row'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON optimization_results FOR EACH ROW "
        "WHEN (NEW.portfolio_id LIKE 'poison-%') EXECUTE FUNCTION refuse_poison()"
    )
    try:
        batch = commands.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=requests), timeout=120)
    finally:
        db.execute("DROP TRIGGER refuse_poison ON optimization_results")
        db.execute("DROP FUNCTION refuse_poison()")
    results = list(batch.results)
    assert (batch.succeeded, batch.failed) == (21, 4)
    assert results[10].error.code == 3 and results[10].error.message.startswith("constraints.min_weight")
    assert results[11].error.code == 9  # FAILED_PRECONDITION: infeasible
    assert results[12].error.code == 3 and results[12].error.message.startswith("request_id")
    assert results[13].response.optimization_metadata.replayed
    assert results[13].response.optimization_metadata.event_id == results[5].response.optimization_metadata.event_id
    assert results[14].error.code == 13  # INTERNAL: the database refused the row
    assert all(r.WhichOneof("outcome") == "response" for r in results[:10] + results[15:])
    assert stored_rows(db, tag) == {
        "results": 20,
        "events": 20,
        "latest": 4,
        "configurations": 20,  # each request its own names: a version per run
        "results without their event": 0,
        "events without their result": 0,
        "latest not the last event": 0,
    }
    assert stored_rows(db, f"poison-{tag}")["configurations"] == 0  # its configuration rolled back with it
