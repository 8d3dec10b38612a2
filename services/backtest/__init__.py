"""Walk-forward backtests: re-optimize on the data available at each rebalance date, then hold and value.

Public names only; the simulation lives in ``_walk_forward``. The optimizer is a callable (or, driven step by step
with :class:`WalkForward`, anything: the service's worker pool), so this package imports no engine.
"""

from services.backtest._walk_forward import (
    BacktestCosts,
    BacktestMetrics,
    BacktestResult,
    BacktestSettings,
    Decision,
    Holding,
    Optimizer,
    RebalanceSchedule,
    ScheduleKind,
    WalkForward,
    backtest_metrics,
    run_backtest,
)

__all__ = [
    "BacktestCosts",
    "BacktestMetrics",
    "BacktestResult",
    "BacktestSettings",
    "Decision",
    "Holding",
    "Optimizer",
    "RebalanceSchedule",
    "ScheduleKind",
    "WalkForward",
    "backtest_metrics",
    "run_backtest",
]
