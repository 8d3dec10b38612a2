"""BatchOptimize through gRPC goes through the batched active set and answers as the unary Optimize does."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stratopt.v1 import command_service_pb2 as cmd_pb
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
