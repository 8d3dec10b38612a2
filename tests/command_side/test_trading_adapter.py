"""The trading adapter: gRPC requests → commands, results → responses, against hand-written expectations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2

from command_side import trading_adapter as adapter
from command_side.allocations import normalised_problem
from command_side.trading_model import AllocatedLine, Allocation, AllocationMetrics, SoldInFull
from command_side.trading_records import allocation_request_json
from services.errors import InvalidInputError
from services.trading import (
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    BandRelaxation,
    Holding,
)
from stratopt.v1 import trading_service_pb2 as trading_pb

# --- allocation: request → command ------------------------------------------------------------------------------


def allocate_request(**fields: object) -> trading_pb.AllocateSharesRequest:
    request = trading_pb.AllocateSharesRequest(
        portfolio_id="pf-1",
        extra_cash=1_000.0,
        strategy=trading_pb.ALLOCATION_STRATEGY_MOMENTUM_WEIGHTED,
        commission_per_trade=1.0,
        fee_per_share=0.01,
        bypass_cache=True,
        **fields,
    )
    request.targets.add(symbol="XOM", target_weight=0.4, price=95.0, momentum_score=0.3)
    request.targets.add(
        symbol="AAPL", target_weight=0.6, price=190.0, allowed_deviation=0.2, lot_size=5, momentum_score=0.5
    )
    request.holdings.add(symbol="GE", shares=10.0, price=150.0)
    return request


def test_an_allocate_request_becomes_the_engines_problem_in_request_order() -> None:
    command = adapter.allocate_shares_command(allocate_request(cache_ttl=duration_pb2.Duration(seconds=90)))
    assert command.portfolio_id == "pf-1"
    assert command.bypass_cache is True
    assert command.cache_ttl == timedelta(seconds=90)
    problem = command.problem
    assert problem.targets == (
        AllocationTarget(
            name="XOM", target_weight=0.4, price=95.0, allowed_deviation=0.10, lot_size=1, momentum_score=0.3
        ),
        AllocationTarget(
            name="AAPL", target_weight=0.6, price=190.0, allowed_deviation=0.2, lot_size=5, momentum_score=0.5
        ),
    )
    assert problem.holdings == (Holding("GE", 10, 150.0),)
    assert isinstance(problem.holdings[0].shares, int)
    assert problem.extra_cash == 1_000.0
    assert problem.strategy is AllocationStrategy.MOMENTUM_WEIGHTED
    assert (problem.commission_per_trade, problem.fee_per_share) == (1.0, 0.01)
    assert problem.time_limit_s is None


def test_unset_options_become_the_commands_defaults() -> None:
    request = trading_pb.AllocateSharesRequest()
    request.targets.add(symbol="AAA", target_weight=1.0, price=10.0)
    command = adapter.allocate_shares_command(request)
    assert command.cache_ttl is None  # the service's default lifetime
    assert command.portfolio_id == ""
    assert command.bypass_cache is False
    assert command.problem.strategy is AllocationStrategy.MINIMIZE_LEFTOVER
    zero = adapter.allocate_shares_command(
        trading_pb.AllocateSharesRequest(targets=request.targets, cache_ttl=duration_pb2.Duration())
    )
    assert zero.cache_ttl == timedelta(0)  # set to zero: do not cache


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r.holdings[0], "shares", 2.5), "holdings[0].shares"),
        (lambda r: setattr(r.holdings[0], "shares", float("nan")), "holdings[0].shares"),
        (lambda r: r.holdings[0].ClearField("price"), "holdings[0].price"),
        (lambda r: setattr(r.targets[1], "symbol", "XOM"), "targets[1].symbol"),
        (lambda r: setattr(r.targets[0], "symbol", ""), "targets[0].symbol"),
        (lambda r: setattr(r, "strategy", 99), "strategy"),
        (lambda r: r.cache_ttl.CopyFrom(duration_pb2.Duration(seconds=5, nanos=-1)), "cache_ttl"),
        (lambda r: r.cache_ttl.CopyFrom(duration_pb2.Duration(seconds=-5)), "cache_ttl"),
    ],
)
def test_what_only_the_request_can_say_wrong_is_named_in_its_field_paths(change: object, field: str) -> None:
    request = allocate_request()
    change(request)  # type: ignore[operator]
    with pytest.raises(InvalidInputError) as raised:
        adapter.allocate_shares_command(request)
    assert [v.field for v in raised.value.field_violations] == [field]


def test_engine_field_paths_come_out_as_the_requests() -> None:
    with pytest.raises(InvalidInputError) as raised, adapter.allocation_field_paths():
        raise InvalidInputError.for_field("targets[1].name", "duplicates targets[0].name")
    assert [v.field for v in raised.value.field_violations] == ["targets[1].symbol"]
    assert "targets[0].symbol" in raised.value.message


def test_the_normalised_problem_is_stored_as_before() -> None:
    """The stored ``share_allocations.request``, written by hand from ``docs/storage_schema.md``."""
    problem = normalised_problem(adapter.allocate_shares_command(allocate_request()).problem)
    target = {"allowed_deviation": 0.1, "lot_size": 1, "momentum_score": None}
    assert allocation_request_json(problem) == {
        "schema_version": 1,
        "portfolio_id": "",
        "holdings": [{"symbol": "GE", "shares": 10.0, "price": 150.0, "lots": []}],
        "targets": [
            {"symbol": "AAPL", "target_weight": 0.6, "price": 190.0, **target, "allowed_deviation": 0.2, "lot_size": 5,
             "momentum_score": 0.5},
            {"symbol": "XOM", "target_weight": 0.4, "price": 95.0, **target, "momentum_score": 0.3},
        ],
        "extra_cash": 1_000.0,
        "strategy": "MOMENTUM_WEIGHTED",
        "commission_per_trade": 1.0,
        "fee_per_share": 0.01,
        "cache_ttl": None,
    }  # fmt: skip


# --- allocation: result → response ------------------------------------------------------------------------------

EXPIRES_AT = datetime(2024, 6, 3, 10, 30, tzinfo=UTC)


def allocation(**changes: object) -> Allocation:
    fields: dict[str, object] = {
        "cache_key": "k1",
        "lines": (
            AllocatedLine(
                name="XOM",
                price=95.0,
                current_shares=0,
                buy_shares=4,
                sell_shares=0,
                final_shares=4,
                trade_cost=1.04,
                final_value=380.0,
                target_weight=0.4,
                actual_weight=0.38,
                weight_deviation=-0.02,
            ),
        ),
        "sold_in_full": (SoldInFull(name="GE", shares=10, price=150.0, proceeds=1_500.0, trade_cost=1.1),),
        "metrics": AllocationMetrics(
            budget=2_500.0,
            budget_used=2_400.0,
            unused_budget=100.0,
            unused_fraction=0.04,
            fees_total=2.14,
            solve_time_ms=3.5,
            solver_status=AllocationStatus.TIME_LIMIT,
            solver="HIGHS",
            fallback_used=False,
            relaxation=BandRelaxation.WIDENED_BANDS,
            relaxation_detail="doubled 1 band",
        ),
        "cached": True,
        "expires_at": EXPIRES_AT,
    }
    fields.update(changes)
    return Allocation(**fields)  # type: ignore[arg-type]


def expected_response() -> trading_pb.AllocateSharesResponse:
    response = trading_pb.AllocateSharesResponse(cache_key="k1", cached=True)
    response.lines.add(
        symbol="XOM",
        price=95.0,
        current_shares=0,
        buy_shares=4,
        sell_shares=0,
        final_shares=4,
        trade_cost=1.04,
        final_value=380.0,
        target_weight=0.4,
        actual_weight=0.38,
        weight_deviation=-0.02,
    )
    response.sold_in_full.add(symbol="GE", shares=10, price=150.0, proceeds=1_500.0, trade_cost=1.1)
    response.metrics.CopyFrom(
        trading_pb.AllocationMetrics(
            budget=2_500.0,
            budget_used=2_400.0,
            unused_budget=100.0,
            unused_fraction=0.04,
            fees_total=2.14,
            solve_time_ms=3.5,
            solver_status="TIME_LIMIT",
            solver="HIGHS",
            fallback_used=False,
            relaxation="WIDENED_BANDS",
            relaxation_detail="doubled 1 band",
        )
    )
    response.expires_at.FromDatetime(EXPIRES_AT)
    return response


def test_an_allocation_becomes_its_response() -> None:
    assert adapter.allocate_shares_response(allocation()) == expected_response()
    assert adapter.get_cached_allocation_response(allocation()) == trading_pb.GetCachedAllocationResponse(
        allocation=expected_response()
    )
    assert adapter.clear_allocation_cache_response(3) == trading_pb.ClearAllocationCacheResponse(removed=3)


def test_an_uncached_allocation_has_no_expiry() -> None:
    response = adapter.allocate_shares_response(allocation(cached=False, expires_at=None))
    assert not response.cached
    assert not response.HasField("expires_at")


def test_the_response_reads_back_as_the_allocation() -> None:
    assert adapter.allocation_of_message(expected_response()) == allocation()
