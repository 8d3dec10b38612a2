"""Walk-forward backtest speed: stratopt's engine and Backtest RPC beside skfolio's WalkForward on the same problem.

What is measured
----------------
A 10-year daily backtest (2013-01-01 to 2022-12-31 of skfolio's S&P 500 data set, 20 assets) of long-only max
Sharpe, re-optimized every 21 observations on the 252 returns before (about 120 decisions), held at constant
weights (the definition skfolio uses, so the two compute the same thing):

1. ``engine``: ``services.backtest.run_backtest`` with ``services.engine.run_optimization`` in this process;
2. ``skfolio``: ``cross_val_predict(MeanRisk(MAXIMIZE_RATIO), cv=WalkForward(252, 21))`` on the same returns;
3. ``grpc``: the ``Backtest`` RPC end to end on a throwaway server (stored prices, the worker pool, storage of
   the path and metrics), monthly rebalancing (about 120 decisions), buy and hold.

Each is run ``--repeats`` times; the printout gives medians, the ratio to skfolio and the largest daily-return
difference between the engine and skfolio.

Run
---
::

    uv run python -m benchmarks.backtest                 # ~1 minute
    uv run python -m benchmarks.backtest --no-grpc       # engine and skfolio only
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from services.backtest import BacktestSettings, Decision, Holding, RebalanceSchedule, ScheduleKind, run_backtest
from services.engine import MethodSettings, OptimizationJob, run_optimization
from services.optimization import Objective, PortfolioProblem
from services.types import EstimationSettings, FloatArray

WINDOW = 252
EVERY = 21


def _prices() -> pd.DataFrame:
    frame = pd.read_csv("data/sp500_dataset.csv.gz", index_col=0, parse_dates=True)
    first = frame.index.searchsorted(pd.Timestamp("2013-01-01"))
    return frame.iloc[first - WINDOW :].loc[:"2022-12-31"]


def _engine(prices: pd.DataFrame) -> tuple[float, FloatArray]:
    symbols = tuple(prices.columns)
    n = len(symbols)
    problem = PortfolioProblem(
        symbols=symbols, objective=Objective.MAX_SHARPE, lower_bounds=np.zeros(n), upper_bounds=np.ones(n)
    )

    def optimize(decision: Decision) -> FloatArray:
        job = OptimizationJob(
            problem=problem,
            inputs=decision.window,
            settings=EstimationSettings(compounding=False),
            method=MethodSettings(),
        )
        return run_optimization(job).result.weights

    settings = BacktestSettings(
        estimation_periods=WINDOW,
        schedule=RebalanceSchedule(kind=ScheduleKind.PERIODS, every_periods=EVERY),
        holding=Holding.CONSTANT_WEIGHTS,
    )
    started = time.perf_counter()
    result = run_backtest(prices.to_numpy(), prices.index.to_numpy(), settings, optimize, symbols=symbols)
    return time.perf_counter() - started, result.daily_returns


def _skfolio(prices: pd.DataFrame) -> tuple[float, FloatArray]:
    from skfolio.model_selection import WalkForward, cross_val_predict  # type: ignore[import-untyped]
    from skfolio.optimization import MeanRisk, ObjectiveFunction  # type: ignore[import-untyped]
    from skfolio.preprocessing import prices_to_returns  # type: ignore[import-untyped]

    returns = prices_to_returns(prices)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = cross_val_predict(
            MeanRisk(objective_function=ObjectiveFunction.MAXIMIZE_RATIO),
            returns,
            cv=WalkForward(train_size=WINDOW, test_size=EVERY),
        )
    return time.perf_counter() - started, np.asarray(predicted.returns)


def _grpc(repeats: int) -> list[float]:
    from benchmarks.load import started_server
    from stratopt.v1 import backtest_pb2 as bt_pb
    from stratopt.v1 import command_service_pb2 as cmd_pb
    from stratopt.v1 import types_pb2 as pb
    from stratopt_cli import client

    times = []
    with started_server(2, None) as (target, _pid), client.channel(target) as ch:
        stub = client.command_stub(ch)
        response = client.ingest_csv(stub, __import__("pathlib").Path("data/sp500_dataset.csv.gz"), quiet=True)
        config = cmd_pb.OptimizationConfiguration(
            portfolio_id="bench-backtest",
            strategies=[pb.Strategy(symbol=s) for s in response.symbols],
            objective=pb.OBJECTIVE_MAX_SHARPE,
            risk_parameters=pb.RiskParameters(compounding=False),
            enabled=True,
        )
        stub.UpsertConfiguration(cmd_pb.UpsertConfigurationRequest(configuration=config), timeout=10)
        request = bt_pb.BacktestRequest(portfolio_id="bench-backtest", estimation_periods=WINDOW)
        request.start.FromDatetime(datetime(2013, 1, 1, tzinfo=UTC))
        request.end.FromDatetime(datetime(2022, 12, 31, tzinfo=UTC))
        for _ in range(repeats):
            started = time.perf_counter()
            summary = None
            for message in stub.Backtest(request, timeout=600):
                if message.HasField("result"):
                    summary = message.result
            times.append(time.perf_counter() - started)
            assert summary is not None
            print(
                f"grpc run: {summary.decisions} decisions, {summary.observations} closes, "
                f"Sharpe {summary.metrics.sharpe_ratio:.3f}, {times[-1]:.2f} s"
            )
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the medians (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-grpc", action="store_true", help="skip the end-to-end Backtest RPC")
    args = parser.parse_args(argv)
    prices = _prices()
    print(f"data: {prices.shape[1]} assets, {len(prices) - WINDOW} simulated closes {prices.index[WINDOW].date()}..")
    engine = [_engine(prices) for _ in range(args.repeats)]
    skfolio = [_skfolio(prices) for _ in range(args.repeats)]
    ours, theirs = engine[0][1], skfolio[0][1]
    gap = float(np.max(np.abs(ours[: theirs.size] - theirs)))
    engine_s = statistics.median(t for t, _ in engine)
    skfolio_s = statistics.median(t for t, _ in skfolio)
    print(f"engine  (run_backtest, in process): median {engine_s:.3f} s  ({skfolio_s / engine_s:.1f}x skfolio)")
    print(f"skfolio (WalkForward + cross_val_predict): median {skfolio_s:.3f} s")
    print(f"largest daily-return difference engine vs skfolio: {gap:.2e} over {theirs.size} days")
    if not args.no_grpc:
        grpc_s = statistics.median(_grpc(args.repeats))
        print(f"grpc    (Backtest RPC, stored): median {grpc_s:.3f} s  ({skfolio_s / grpc_s:.1f}x skfolio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
