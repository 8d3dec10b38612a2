"""AllocateShares, GetCachedAllocation and ClearAllocationCache end to end: real gRPC server, real PostgreSQL.

Prices are the last close of the bundled S&P 500 data set; every figure of a response (values, weights, fees,
budget, metrics) is recomputed here from the share counts, and the cache and the events are read back from the
database.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pandas as pd
import psycopg
import pytest
from google.protobuf import duration_pb2

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, precondition_types
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.integration

BUDGET = 100_000.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def sp500() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")


@pytest.fixture(scope="module")
def prices(sp500: pd.DataFrame) -> dict[str, float]:
    """Last close of each of the 20 S&P 500 names."""
    last = sp500.iloc[-1]
    return {str(symbol): float(last[symbol]) for symbol in sp500.columns}


def equal_targets(prices: dict[str, float], symbols: list[str], **fields: Any) -> list[trading_pb.TargetPosition]:
    return [
        trading_pb.TargetPosition(symbol=s, target_weight=1.0 / len(symbols), price=prices[s], **fields)
        for s in symbols
    ]


def no_cache() -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=0)


def check_allocation(request: trading_pb.AllocateSharesRequest, response: trading_pb.AllocateSharesResponse) -> None:
    """Recompute every figure of ``response`` from its share counts and the request, independently."""
    held = {h.symbol: (int(h.shares), h.price) for h in request.holdings}
    budget = math.fsum([shares * price for shares, price in held.values()] + [request.extra_cash])
    weight_sum = math.fsum(t.target_weight for t in request.targets)
    metrics = response.metrics
    assert metrics.budget == pytest.approx(budget, rel=1e-12)
    assert [line.symbol for line in response.lines] == [t.symbol for t in request.targets]  # request order
    invested, fees = [], []
    for target, line in zip(request.targets, response.lines, strict=True):
        current = held.get(target.symbol, (0, 0.0))[0]
        lot = target.lot_size or 1
        assert line.price == target.price
        assert line.current_shares == current
        assert line.final_shares == current + line.buy_shares - line.sell_shares
        assert min(line.buy_shares, line.sell_shares) == 0
        assert line.final_shares >= 0
        assert line.final_shares % lot == 0 or metrics.relaxation == "LOT_SIZES_DROPPED"
        assert line.final_value == pytest.approx(line.final_shares * target.price, rel=1e-12)
        traded = line.final_shares - current
        cost = request.commission_per_trade * (traded != 0) + request.fee_per_share * abs(traded)
        assert line.trade_cost == pytest.approx(cost, abs=1e-9)
        weight = target.target_weight / weight_sum
        assert line.target_weight == pytest.approx(weight, rel=1e-9)
        assert line.actual_weight == pytest.approx(line.final_value / budget, rel=1e-9)
        assert line.weight_deviation == pytest.approx(line.actual_weight - weight, abs=1e-12)
        if metrics.relaxation == "NONE":
            deviation = target.allowed_deviation if target.HasField("allowed_deviation") else 0.10
            assert abs(line.final_value - weight * budget) <= deviation * weight * budget * (1 + 1e-9) + 1e-6
        invested.append(line.final_shares * target.price)
        fees.append(cost)
    targets = {t.symbol for t in request.targets}
    expected_sold = [h for h in request.holdings if h.symbol not in targets and h.shares > 0]
    assert [s.symbol for s in response.sold_in_full] == [h.symbol for h in expected_sold]
    for holding, sold in zip(expected_sold, response.sold_in_full, strict=True):
        assert sold.shares == int(holding.shares)
        assert sold.price == holding.price
        assert sold.proceeds == pytest.approx(holding.shares * holding.price, rel=1e-12)
        cost = request.commission_per_trade + request.fee_per_share * holding.shares
        assert sold.trade_cost == pytest.approx(cost, abs=1e-9)
        fees.append(cost)
    used = math.fsum(invested) + math.fsum(fees)
    assert metrics.fees_total == pytest.approx(math.fsum(fees), abs=1e-6)
    assert metrics.budget_used == pytest.approx(used, rel=1e-12)
    assert metrics.budget_used <= budget * (1 + 1e-12) + 1e-6
    assert metrics.unused_budget == pytest.approx(budget - used, abs=1e-6)
    assert metrics.unused_fraction == pytest.approx((budget - used) / budget, abs=1e-12)
    assert metrics.solver in ("HIGHS", "GREEDY")
    assert metrics.solve_time_ms > 0


def cache_row(db: psycopg.Connection[Any], cache_key: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT portfolio_id, created_at, expires_at, request FROM share_allocations WHERE cache_key = %s",
        [cache_key],
    ).fetchone()


# --- allocations on real prices --------------------------------------------------------------------------------


def test_max_sharpe_weights_spend_the_budget_in_request_order(
    commands: Any, trading: Any, sp500: pd.DataFrame, prices: dict[str, float]
) -> None:
    returns = sp500.pct_change().dropna().iloc[-756:]
    optimize = cmd_pb.OptimizeRequest(
        portfolio_id=unique("alloc-max-sharpe"),
        objective=pb.OBJECTIVE_MAX_SHARPE,
        constraints=pb.OptimizationConstraints(max_weight=0.15),  # at least 7 names
    )
    for when in returns.index:
        optimize.returns.timestamps.add().FromDatetime(when.to_pydatetime().replace(tzinfo=UTC))
    for column in returns.columns:
        optimize.strategies.add(symbol=column, returns=returns[column].tolist())
    weights = dict(commands.Optimize(optimize, timeout=60).optimal_weights)
    kept = {s: w for s, w in weights.items() if w > 1e-4}
    total = math.fsum(kept.values())
    assert len(kept) >= 7
    # Not alphabetical: the response follows the request's order, not the engine's (sorted) one.
    symbols = sorted(kept, key=lambda s: -kept[s])
    request = trading_pb.AllocateSharesRequest(
        targets=[trading_pb.TargetPosition(symbol=s, target_weight=kept[s] / total, price=prices[s]) for s in symbols],
        extra_cash=BUDGET,
        cache_ttl=no_cache(),
    )
    response = trading.AllocateShares(request, timeout=30)
    check_allocation(request, response)
    assert response.metrics.budget == BUDGET
    assert response.metrics.budget_used >= 0.9999 * BUDGET
    assert response.metrics.solver_status == "OPTIMAL"
    assert len(response.cache_key) == 64
    assert not response.cached
    assert not response.HasField("expires_at")  # cache_ttl 0: not cached


def test_holdings_fees_and_lot_sizes(trading: Any, prices: dict[str, float]) -> None:
    symbols = [s for s in prices if s not in ("GE", "KO")][::-1]
    targets = equal_targets(prices, symbols)
    lots = {"RRC": 100, "PFE": 10, "UNH": 2, "MSFT": 5}
    for target in targets:
        target.lot_size = lots.get(target.symbol, 0)
    holdings = [
        trading_pb.Position(symbol="GE", shares=120, price=prices["GE"]),  # not a target: sold in full
        trading_pb.Position(symbol="AAPL", shares=200, price=prices["AAPL"]),  # far above target: sold down
        trading_pb.Position(symbol="KO", shares=50, price=prices["KO"]),  # not a target
        trading_pb.Position(symbol="XOM", shares=3, price=prices["XOM"]),  # below target: topped up
        trading_pb.Position(symbol="BAC", shares=0, price=prices["BAC"]),
    ]
    request = trading_pb.AllocateSharesRequest(
        holdings=holdings,
        targets=targets,
        extra_cash=60_000.0,
        commission_per_trade=1.0,
        fee_per_share=0.005,
        cache_ttl=no_cache(),
    )
    response = trading.AllocateShares(request, timeout=30)
    check_allocation(request, response)
    lines = {line.symbol: line for line in response.lines}
    assert lines["AAPL"].sell_shares > 0 and lines["AAPL"].buy_shares == 0
    assert lines["XOM"].buy_shares > 0 and lines["XOM"].current_shares == 3
    assert [s.symbol for s in response.sold_in_full] == ["GE", "KO"]
    assert response.metrics.fees_total > 2.0  # at least the two forced sales' commissions
    assert response.metrics.relaxation == "NONE"
    assert response.metrics.budget_used >= 0.9999 * response.metrics.budget


def test_strategies_change_the_objective(trading: Any, prices: dict[str, float]) -> None:
    symbols = list(prices)
    momentum = {s: float(i) for i, s in enumerate(symbols)}  # the last symbol has the strongest momentum

    def allocate(strategy: int) -> trading_pb.AllocateSharesResponse:
        targets = equal_targets(prices, symbols)
        for target in targets:
            target.momentum_score = momentum[target.symbol]
        request = trading_pb.AllocateSharesRequest(
            targets=targets, extra_cash=BUDGET, strategy=strategy, cache_ttl=no_cache()
        )
        response = trading.AllocateShares(request, timeout=30)
        check_allocation(request, response)
        return response

    leftover = allocate(trading_pb.ALLOCATION_STRATEGY_MINIMIZE_LEFTOVER)
    shares = allocate(trading_pb.ALLOCATION_STRATEGY_MAXIMIZE_SHARES)
    tilted = allocate(trading_pb.ALLOCATION_STRATEGY_MOMENTUM_WEIGHTED)
    assert sum(x.final_shares for x in shares.lines) >= sum(x.final_shares for x in leftover.lines)
    assert leftover.metrics.unused_budget <= shares.metrics.unused_budget + 1e-9
    assert leftover.cache_key != shares.cache_key != tilted.cache_key

    def tilt(response: trading_pb.AllocateSharesResponse) -> float:
        return sum(momentum[x.symbol] * x.final_value for x in response.lines)

    assert tilt(tilted) > tilt(leftover)
    top = tilted.lines[-1]  # within its band, the strongest name is filled to its top (less than a share below)
    assert top.final_value >= 1.1 * BUDGET / len(symbols) - top.price


# --- the cache ----------------------------------------------------------------------------------------------


def test_second_identical_call_is_answered_from_the_cache(
    trading: Any, db: psycopg.Connection[Any], prices: dict[str, float]
) -> None:
    symbols = list(prices)[:10]
    request = trading_pb.AllocateSharesRequest(targets=equal_targets(prices, symbols), extra_cash=123_456.78)
    before = datetime.now(UTC)
    first = trading.AllocateShares(request, timeout=30)
    check_allocation(request, first)
    assert not first.cached
    expires = first.expires_at.ToDatetime(tzinfo=UTC)
    assert before + timedelta(minutes=59) < expires < before + timedelta(minutes=61)  # default TTL: 1 hour
    row = cache_row(db, first.cache_key)
    assert row is not None
    portfolio_id, created_at, stored_expiry, stored_request = row
    assert portfolio_id == ""
    assert stored_expiry == expires
    assert [t["symbol"] for t in stored_request["targets"]] == sorted(symbols)
    assert all(t["allowed_deviation"] == 0.10 and t["lot_size"] == 1 for t in stored_request["targets"])

    # The same problem with the targets in another order: the same key, answered from the cache in its order.
    reordered = trading_pb.AllocateSharesRequest()
    reordered.CopyFrom(request)
    del reordered.targets[:]
    reordered.targets.extend(reversed(request.targets))
    second = trading.AllocateShares(reordered, timeout=30)
    assert second.cached
    assert second.cache_key == first.cache_key
    assert second.expires_at == first.expires_at
    assert second.metrics == first.metrics  # solve_time_ms included: no second solve
    check_allocation(reordered, second)
    assert {x.symbol: x.final_shares for x in second.lines} == {x.symbol: x.final_shares for x in first.lines}
    assert cache_row(db, first.cache_key) == row  # not rewritten

    stored = trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(cache_key=first.cache_key), timeout=10)
    assert stored.allocation.cached
    assert list(stored.allocation.lines) == list(first.lines)
    assert stored.allocation.expires_at == first.expires_at

    # bypass_cache recomputes and stores the new result.
    time.sleep(0.01)
    bypass = trading_pb.AllocateSharesRequest()
    bypass.CopyFrom(request)
    bypass.bypass_cache = True
    third = trading.AllocateShares(bypass, timeout=30)
    assert not third.cached
    assert third.cache_key == first.cache_key
    assert third.metrics.solve_time_ms != first.metrics.solve_time_ms
    rewritten = cache_row(db, first.cache_key)
    assert rewritten is not None and rewritten[1] > created_at and rewritten[2] > stored_expiry
    count = db.execute("SELECT count(*) FROM share_allocations WHERE cache_key = %s", [first.cache_key]).fetchone()
    assert count == (1,)


def test_cache_entries_expire(trading: Any, db: psycopg.Connection[Any], prices: dict[str, float]) -> None:
    request = trading_pb.AllocateSharesRequest(
        targets=equal_targets(prices, ["AAPL", "MSFT", "JNJ"]),
        extra_cash=54_321.0,
        cache_ttl=duration_pb2.Duration(seconds=1),
    )
    first = trading.AllocateShares(request, timeout=30)
    assert not first.cached
    assert first.expires_at.ToDatetime(tzinfo=UTC) < datetime.now(UTC) + timedelta(seconds=1.5)
    get = trading_pb.GetCachedAllocationRequest(cache_key=first.cache_key)
    assert trading.GetCachedAllocation(get, timeout=10).allocation.cached
    time.sleep(1.2)
    with pytest.raises(grpc.RpcError) as error:
        trading.GetCachedAllocation(get, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    again = trading.AllocateShares(request, timeout=30)
    assert not again.cached  # the expired entry is a miss
    assert again.expires_at.ToDatetime(tzinfo=UTC) > first.expires_at.ToDatetime(tzinfo=UTC)
    count = db.execute("SELECT count(*) FROM share_allocations WHERE cache_key = %s", [first.cache_key]).fetchone()
    assert count == (1,)

    # cache_ttl 0: answered, not stored (and not served from the cache later).
    uncached = trading_pb.AllocateSharesRequest(
        targets=equal_targets(prices, ["AAPL", "MSFT", "JNJ"]), extra_cash=54_322.0, cache_ttl=no_cache()
    )
    response = trading.AllocateShares(uncached, timeout=30)
    assert not response.cached and not response.HasField("expires_at")
    assert cache_row(db, response.cache_key) is None
    assert not trading.AllocateShares(uncached, timeout=30).cached
    with pytest.raises(grpc.RpcError) as error:
        trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(cache_key=response.cache_key), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_clear_one_entry_then_all(trading: Any, db: psycopg.Connection[Any], prices: dict[str, float]) -> None:
    keys = []
    for cash in (11_111.0, 22_222.0):
        request = trading_pb.AllocateSharesRequest(targets=equal_targets(prices, ["KO", "PEP", "PG"]), extra_cash=cash)
        keys.append(trading.AllocateShares(request, timeout=30).cache_key)
    clear = trading.ClearAllocationCache(trading_pb.ClearAllocationCacheRequest(cache_key=keys[0]), timeout=10)
    assert clear.removed == 1
    with pytest.raises(grpc.RpcError) as error:
        trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(cache_key=keys[0]), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(cache_key=keys[1]), timeout=10)
    again = trading.ClearAllocationCache(trading_pb.ClearAllocationCacheRequest(cache_key=keys[0]), timeout=10)
    assert again.removed == 0
    every = trading.ClearAllocationCache(trading_pb.ClearAllocationCacheRequest(), timeout=10)
    assert every.removed >= 1
    assert db.execute("SELECT count(*) FROM share_allocations").fetchone() == (0,)
    with pytest.raises(grpc.RpcError) as error:
        trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(cache_key=keys[1]), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


# --- events -----------------------------------------------------------------------------------------------------


def test_portfolio_allocations_are_recorded_as_events(
    trading: Any, db: psycopg.Connection[Any], prices: dict[str, float]
) -> None:
    portfolio_id = unique("alloc-events")
    request = trading_pb.AllocateSharesRequest(
        portfolio_id=portfolio_id,
        holdings=[trading_pb.Position(symbol="GE", shares=10, price=prices["GE"])],
        targets=equal_targets(prices, ["AAPL", "CVX", "HD", "LLY"]),
        extra_cash=77_777.0,
        cache_ttl=no_cache(),
    )
    uncached = trading.AllocateShares(request, timeout=30)  # recorded even when not cached
    request.cache_ttl.seconds = 600
    computed = trading.AllocateShares(request, timeout=30)
    hit = trading.AllocateShares(request, timeout=30)
    assert (uncached.cached, computed.cached, hit.cached) == (False, False, True)
    row = cache_row(db, computed.cache_key)
    assert row is not None and row[0] == portfolio_id
    events = db.execute(
        "SELECT event_type, recommendation_id, status, actor, total_trade_value, payload FROM rebalance_events "
        'WHERE portfolio_id = %s ORDER BY "timestamp"',
        [portfolio_id],
    ).fetchall()
    assert len(events) == 3
    for (event_type, recommendation_id, status, actor, value, payload), response in zip(
        events, (uncached, computed, hit), strict=True
    ):
        assert (event_type, recommendation_id, status, actor) == ("SHARES_ALLOCATED", None, "UNSPECIFIED", "")
        assert value == pytest.approx(response.metrics.budget_used)
        assert payload["cache_key"] == computed.cache_key
        assert payload["cached"] is response.cached
        assert payload["metrics"]["budget"] == pytest.approx(response.metrics.budget)
        assert payload["metrics"]["solver_status"] == response.metrics.solver_status
        assert payload["final_shares"] == {x.symbol: x.final_shares for x in response.lines}
        assert payload["sold_in_full"] == {"GE": 10}
    # Without a portfolio nothing is recorded.
    assert db.execute("SELECT count(*) FROM rebalance_events WHERE portfolio_id = ''").fetchone() == (0,)


# --- errors -----------------------------------------------------------------------------------------------------


def _request(prices: dict[str, float], **changes: Any) -> trading_pb.AllocateSharesRequest:
    request = trading_pb.AllocateSharesRequest(
        holdings=[trading_pb.Position(symbol="GE", shares=10, price=prices["GE"])],
        targets=equal_targets(prices, ["AAPL", "MSFT", "XOM", "JPM"]),
        extra_cash=BUDGET,
        cache_ttl=no_cache(),
    )
    for path, value in changes.items():
        *parents, name = path.split("__")
        message: Any = request
        for part in parents:
            message = message[int(part)] if part.isdigit() else getattr(message, part)
        if isinstance(value, duration_pb2.Duration):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return request


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"holdings__0__shares": -5.0}, "holdings[0].shares"),
        ({"holdings__0__shares": 2.5}, "holdings[0].shares"),
        ({"holdings__0__shares": math.inf}, "holdings[0].shares"),
        ({"holdings__0__price": 0.0}, "holdings[0].price"),
        ({"holdings__0__symbol": ""}, "holdings[0].symbol"),
        ({"targets__2__price": 0.0}, "targets[2].price"),
        ({"targets__1__price": -3.0}, "targets[1].price"),
        ({"targets__0__target_weight": 0.5}, "targets"),
        ({"targets__3__target_weight": -0.25}, "targets[3].target_weight"),
        ({"targets__0__symbol": ""}, "targets[0].symbol"),
        ({"targets__3__symbol": "AAPL"}, "targets[3].symbol"),
        ({"targets__1__allowed_deviation": -0.1}, "targets[1].allowed_deviation"),
        ({"strategy": trading_pb.ALLOCATION_STRATEGY_MOMENTUM_WEIGHTED}, "targets[0].momentum_score"),
        ({"extra_cash": -1.0}, "extra_cash"),
        ({"fee_per_share": -0.01}, "fee_per_share"),
        ({"commission_per_trade": math.nan}, "commission_per_trade"),
        ({"cache_ttl": duration_pb2.Duration(seconds=-1)}, "cache_ttl"),
        ({"cache_ttl": duration_pb2.Duration(seconds=400 * 86_400)}, "cache_ttl"),
        ({"strategy": 99}, "strategy"),
    ],
)
def test_invalid_requests_name_the_field(
    trading: Any, prices: dict[str, float], changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        trading.AllocateShares(_request(prices, **changes), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == [field]
    assert ".name" not in str(error.value.details())


def test_held_target_without_price_and_duplicate_holding(trading: Any, prices: dict[str, float]) -> None:
    request = _request(prices)
    request.holdings.add(symbol="AAPL", shares=3)  # no price
    with pytest.raises(grpc.RpcError) as error:
        trading.AllocateShares(request, timeout=10)
    assert field_violations(error.value) == ["holdings[1].price"]
    request.holdings[1].price = prices["AAPL"]
    request.holdings.add(symbol="GE", shares=1, price=prices["GE"])
    with pytest.raises(grpc.RpcError) as error:
        trading.AllocateShares(request, timeout=10)
    assert field_violations(error.value) == ["holdings[2].symbol"]
    assert "holdings[0].symbol" in error.value.details()


def test_get_cached_allocation_needs_a_key(trading: Any) -> None:
    with pytest.raises(grpc.RpcError) as error:
        trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == ["cache_key"]
    with pytest.raises(grpc.RpcError) as error:
        trading.GetCachedAllocation(trading_pb.GetCachedAllocationRequest(cache_key="0" * 64), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_no_allocation_fits_when_forced_sale_fees_exceed_the_budget(trading: Any, prices: dict[str, float]) -> None:
    # Every relaxation (wider bands, full bands, lot sizes dropped) is tried; the forced sale's fees still exceed
    # the budget, which is only the sale's proceeds.
    request = trading_pb.AllocateSharesRequest(
        holdings=[trading_pb.Position(symbol="PENNY", shares=2, price=1.0)],
        targets=equal_targets(prices, ["AAPL", "MSFT"]),
        commission_per_trade=5.0,
        cache_ttl=no_cache(),
    )
    with pytest.raises(grpc.RpcError) as error:
        trading.AllocateShares(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_types(error.value) == ["FEES_EXCEED_BUDGET"]


def test_bands_are_relaxed_rather_than_failing(trading: Any, prices: dict[str, float]) -> None:
    # A 0.1 % target of UNH ($100 of a $524 share) has no admissible share count in a ±10 % band: widened.
    targets = [
        trading_pb.TargetPosition(symbol="UNH", target_weight=0.001, price=prices["UNH"]),
        trading_pb.TargetPosition(symbol="PFE", target_weight=0.999, price=prices["PFE"], allowed_deviation=0.0),
    ]
    request = trading_pb.AllocateSharesRequest(targets=targets, extra_cash=BUDGET, cache_ttl=no_cache())
    response = trading.AllocateShares(request, timeout=30)
    check_allocation(request, response)
    assert response.metrics.relaxation != "NONE"
    assert response.metrics.relaxation_detail
