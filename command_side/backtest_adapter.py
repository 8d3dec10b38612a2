"""Backtest requests to commands, results to ``stratopt.v1`` messages (the Backtest RPC's adapter)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format

from command_side.backtests import MAX_ESTIMATION_PERIODS, BacktestCommand, BacktestProgressUpdate, StoredBacktest
from command_side.mapping import datetime_to_timestamp, timestamp_to_datetime
from services.backtest import BacktestCosts, BacktestSettings, Holding, RebalanceSchedule, ScheduleKind
from services.errors import InvalidInputError
from services.trading import ImpactModel
from stratopt.request_limits import check_request
from stratopt.v1 import backtest_pb2 as bt_pb

_FREQUENCIES = {
    bt_pb.REBALANCE_FREQUENCY_UNSPECIFIED: ScheduleKind.MONTHLY,
    bt_pb.REBALANCE_FREQUENCY_PERIODS: ScheduleKind.PERIODS,
    bt_pb.REBALANCE_FREQUENCY_WEEKLY: ScheduleKind.WEEKLY,
    bt_pb.REBALANCE_FREQUENCY_MONTHLY: ScheduleKind.MONTHLY,
    bt_pb.REBALANCE_FREQUENCY_QUARTERLY: ScheduleKind.QUARTERLY,
    bt_pb.REBALANCE_FREQUENCY_ANNUALLY: ScheduleKind.ANNUALLY,
    bt_pb.REBALANCE_FREQUENCY_DRIFT: ScheduleKind.DRIFT,
}
_HOLDINGS = {
    bt_pb.BACKTEST_HOLDING_UNSPECIFIED: Holding.BUY_AND_HOLD,
    bt_pb.BACKTEST_HOLDING_BUY_AND_HOLD: Holding.BUY_AND_HOLD,
    bt_pb.BACKTEST_HOLDING_CONSTANT_WEIGHTS: Holding.CONSTANT_WEIGHTS,
}
_IMPACT = {0: ImpactModel.NONE, 1: ImpactModel.NONE, 2: ImpactModel.SQUARE_ROOT, 3: ImpactModel.ALMGREN_2005}
DEFAULT_INITIAL_CASH = 1_000_000.0
DEFAULT_EVERY_PERIODS = 21


def _enum(value: int, table: Mapping[Any, object], field: str) -> object:
    if value not in table:
        raise InvalidInputError.for_field(field, f"unknown value {value}")
    return table[value]


def _finite(value: float, field: str, *, low: float = 0.0, high: float = 1e6) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidInputError.for_field(field, f"must be in [{low:g}, {high:g}], got {value!r}")
    return value


def backtest_command(request: bt_pb.BacktestRequest, *, requested_by: str) -> BacktestCommand:
    """The validated command of a Backtest request (defaults filled in).

    Raises
    ------
    InvalidInputError
        Naming the field: empty ``portfolio_id``, unknown enum values, negative or non-finite costs, bands or
        cash, ``start`` after ``end``, ``estimation_periods`` of 1 or above 5000, volumes that are not positive.
    """
    check_request(request)
    if not request.portfolio_id:
        raise InvalidInputError.for_field("portfolio_id", "must not be empty")
    start = timestamp_to_datetime(request.start) if request.HasField("start") else None
    end = timestamp_to_datetime(request.end) if request.HasField("end") else None
    if start is not None and end is not None and start > end:
        raise InvalidInputError.for_field("start", "must not be after end")
    if request.estimation_periods == 1 or request.estimation_periods > MAX_ESTIMATION_PERIODS:
        raise InvalidInputError.for_field(
            "estimation_periods",
            f"must be 0 (default) or 2..{MAX_ESTIMATION_PERIODS}, got {request.estimation_periods}",
        )
    kind = _enum(request.schedule.frequency, _FREQUENCIES, "schedule.frequency")
    assert isinstance(kind, ScheduleKind)
    bands = {}
    for name in ("absolute_band", "relative_band"):
        if request.schedule.HasField(name):
            value = getattr(request.schedule, name)
            if not (math.isfinite(value) and 0 < value <= 100):
                raise InvalidInputError.for_field(f"schedule.{name}", f"must be in (0, 100], got {value!r}")
            bands[name] = value
    if bands and kind is not ScheduleKind.DRIFT:
        raise InvalidInputError.for_field("schedule.frequency", "bands need REBALANCE_FREQUENCY_DRIFT")
    if kind is ScheduleKind.DRIFT and not bands:
        raise InvalidInputError.for_field("schedule", "a DRIFT schedule needs absolute_band or relative_band")
    every = request.schedule.every_periods or DEFAULT_EVERY_PERIODS
    if every > 100_000:
        raise InvalidInputError.for_field("schedule.every_periods", "at most 100000")
    costs = request.costs
    impact = _enum(costs.impact_model, _IMPACT, "costs.impact_model")
    assert isinstance(impact, ImpactModel)
    adv: dict[str, float] = {}
    for symbol, volume in costs.average_daily_volume.items():
        if not (math.isfinite(volume) and volume > 0):
            raise InvalidInputError.for_field(f"costs.average_daily_volume[{symbol}]", "must be positive")
        adv[symbol] = volume
    if impact is not ImpactModel.NONE and not adv:
        raise InvalidInputError.for_field(
            "costs.average_daily_volume", f"the {impact.value} impact model needs a volume for every symbol"
        )
    cash = request.initial_cash or DEFAULT_INITIAL_CASH
    _finite(cash, "initial_cash", high=1e15)
    if cash <= 0:
        raise InvalidInputError.for_field("initial_cash", "must be positive")
    holding = _enum(request.holding, _HOLDINGS, "holding")
    assert isinstance(holding, Holding)
    if request.whole_shares and holding is Holding.CONSTANT_WEIGHTS:
        raise InvalidInputError.for_field("whole_shares", "whole shares need BUY_AND_HOLD holding")
    if kind is ScheduleKind.DRIFT and holding is Holding.CONSTANT_WEIGHTS:
        raise InvalidInputError.for_field("holding", "a DRIFT schedule needs BUY_AND_HOLD holding")
    risk_free = None
    if request.HasField("risk_free_rate"):
        risk_free = _finite(request.risk_free_rate, "risk_free_rate", low=-1.0, high=1.0)
    settings = BacktestSettings(
        schedule=RebalanceSchedule(kind=kind, every_periods=every, **bands),
        initial_cash=cash,
        whole_shares=request.whole_shares,
        holding=holding,
        costs=BacktestCosts(
            commission_bps=_finite(costs.commission_bps, "costs.commission_bps"),
            commission_per_trade=_finite(costs.commission_per_trade, "costs.commission_per_trade"),
            commission_per_share=_finite(costs.commission_per_share, "costs.commission_per_share"),
            spread_bps=_finite(costs.spread_bps, "costs.spread_bps"),
            impact_model=impact,
        ),
    )
    filled = bt_pb.BacktestRequest()
    filled.CopyFrom(request)
    filled.initial_cash = cash
    filled.schedule.frequency = next(k for k, v in _FREQUENCIES.items() if v is kind and k != 0)
    if kind is ScheduleKind.PERIODS:
        filled.schedule.every_periods = every
    filled.holding = next(k for k, v in _HOLDINGS.items() if v is holding and k != 0)
    return BacktestCommand(
        portfolio_id=request.portfolio_id,
        configuration_version=request.configuration_version,
        start=start,
        end=end,
        estimation_periods=request.estimation_periods,
        settings=settings,
        adv_by_symbol=adv,
        risk_free_rate=risk_free,
        settings_json={"schema_version": 1, **json_format.MessageToDict(filled, preserving_proto_field_name=True)},
        requested_by=requested_by,
    )


def backtest_summary(stored: StoredBacktest) -> bt_pb.BacktestSummary:
    """The ``BacktestSummary`` of a stored backtest."""
    result = stored.result
    metrics = bt_pb.BacktestMetrics(
        **{name: float(getattr(result.metrics, name)) for name in result.metrics.__dataclass_fields__}
    )
    settings = bt_pb.BacktestRequest()
    json_format.ParseDict({k: v for k, v in stored.settings_json.items() if k != "schema_version"}, settings)
    return bt_pb.BacktestSummary(
        backtest_id=stored.backtest_id,
        portfolio_id=stored.portfolio_id,
        configuration_version=stored.configuration_version,
        symbols=stored.symbols,
        first_date=datetime_to_timestamp(np.datetime64(result.timestamps[0], "us")),
        last_date=datetime_to_timestamp(np.datetime64(result.timestamps[-1], "us")),
        observations=len(result.timestamps),
        decisions=result.decisions,
        failed_decisions=result.failed_decisions,
        first_failure=result.first_failure,
        metrics=metrics,
        settings=settings,
        created_at=datetime_to_timestamp(stored.created_at),
        requested_by=stored.requested_by,
        computation_time_ms=stored.computation_time_ms,
    )


def backtest_response(update: BacktestProgressUpdate | StoredBacktest) -> bt_pb.BacktestResponse:
    """One message of the Backtest stream."""
    if isinstance(update, StoredBacktest):
        return bt_pb.BacktestResponse(result=backtest_summary(update))
    return bt_pb.BacktestResponse(
        progress=bt_pb.BacktestProgress(
            decisions_done=update.decisions_done,
            decisions_planned=update.decisions_planned,
            simulated_through=datetime_to_timestamp(update.simulated_through),
            equity=update.equity,
        )
    )
