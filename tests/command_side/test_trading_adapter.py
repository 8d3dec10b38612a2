"""The trading adapter: gRPC requests → commands, results → responses, against hand-written expectations."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from google.protobuf import duration_pb2

from command_side import trading_adapter as adapter
from command_side.allocations import normalised_problem
from command_side.trading_model import (
    AllocatedLine,
    Allocation,
    AllocationMetrics,
    Band,
    CheckDrift,
    Decision,
    DriftCheck,
    GeneratedRebalance,
    GenerateRebalance,
    HoldingsStored,
    LossHarvest,
    LotSold,
    MarketQuote,
    Position,
    PositionLot,
    RebalancePolicy,
    RebalanceRecommendation,
    RecommendedTrade,
    SoldInFull,
    UpsertHoldings,
    UpsertPolicy,
)
from command_side.trading_records import (
    RECOMMENDATION,
    allocation_request_json,
    policy_json,
    positions_json,
    recommendation_from_json,
    recommendation_json,
)
from services.errors import InvalidInputError
from services.trading import (
    AllocationStatus,
    AllocationStrategy,
    AllocationTarget,
    BandRelaxation,
    Holding,
    ImpactModel,
    LotMethod,
    RecommendationStatus,
    Side,
    check_drift,
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
            symbol="XOM", target_weight=0.4, price=95.0, allowed_deviation=0.10, lot_size=1, momentum_score=0.3
        ),
        AllocationTarget(
            symbol="AAPL", target_weight=0.6, price=190.0, allowed_deviation=0.2, lot_size=5, momentum_score=0.5
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
        raise InvalidInputError.for_field("targets[1].symbol", "duplicates targets[0].symbol")
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
        # Added with the PyPortfolioOpt strategies and the absolute mode (documented; every key is written).
        "deviation_mode": "RELATIVE",
        "reinvest": False,
        "short_ratio": None,
    }  # fmt: skip


# --- allocation: result → response ------------------------------------------------------------------------------

EXPIRES_AT = datetime(2024, 6, 3, 10, 30, tzinfo=UTC)


def allocation(**changes: object) -> Allocation:
    fields: dict[str, object] = {
        "cache_key": "k1",
        "lines": (
            AllocatedLine(
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
            ),
        ),
        "sold_in_full": (SoldInFull(symbol="GE", shares=10, price=150.0, proceeds=1_500.0, trade_cost=1.1),),
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


# --- rebalancing: requests → commands ---------------------------------------------------------------------------

ACQUIRED = datetime(2023, 5, 1, 15, 30, tzinfo=UTC)


def test_an_upsert_holdings_request_becomes_its_command() -> None:
    request = trading_pb.UpsertHoldingsRequest(portfolio_id="pf-1", cash=250.0)
    held = request.positions.add(symbol="KO", shares=10.0, price=61.5)
    held.lots.add(lot_id="a", shares=10.0, cost_basis=50.0).acquired.FromDatetime(ACQUIRED)
    request.positions.add(symbol="XYZ", shares=3.0).lots.add(lot_id="b", shares=3.0, cost_basis=9.0)
    assert adapter.upsert_holdings_command(request) == UpsertHoldings(
        portfolio_id="pf-1",
        positions=(
            Position(
                symbol="KO",
                shares=10.0,
                price=61.5,
                lots=(PositionLot(lot_id="a", shares=10.0, cost_basis=50.0, acquired=ACQUIRED),),
            ),
            Position(
                symbol="XYZ", shares=3.0, lots=(PositionLot(lot_id="b", shares=3.0, cost_basis=9.0, acquired=None),)
            ),
        ),
        cash=250.0,
    )
    request.positions[0].lots[0].acquired.seconds = 253_402_300_800  # the year 10000
    with pytest.raises(InvalidInputError) as raised:
        adapter.upsert_holdings_command(request)
    assert [v.field for v in raised.value.field_violations] == ["positions[0].lots[0].acquired"]


def test_a_policy_request_keeps_what_was_set_and_only_that() -> None:
    request = trading_pb.UpsertRebalancePolicyRequest(portfolio_id="pf-1")
    policy = request.policy
    policy.drift_threshold = 0.0
    policy.bands["KO"].relative = 0.25
    policy.min_trade_value = 50.0
    policy.impact_model = trading_pb.IMPACT_MODEL_ALMGREN_2005
    policy.lot_method = trading_pb.LOT_METHOD_TAX_MINIMIZING
    policy.prefer_losses = True
    policy.long_term_after_days = 400
    policy.approval_ttl.FromTimedelta(timedelta(hours=2))
    command = adapter.upsert_policy_command(request)
    assert command == UpsertPolicy(
        portfolio_id="pf-1",
        policy=RebalancePolicy(
            drift_threshold=0.0,
            bands={"KO": Band(relative=0.25)},
            min_trade_value=50.0,
            impact_model=ImpactModel.ALMGREN_2005,
            lot_method=LotMethod.TAX_MINIMIZING,
            prefer_losses=True,
            long_term_after_days=400,
            approval_ttl=timedelta(hours=2),
        ),
    )
    assert adapter.policy_message(command.policy) == request.policy  # and back, presence included


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: setattr(p, "impact_model", 42), "policy.impact_model"),
        (lambda p: setattr(p, "lot_method", 42), "policy.lot_method"),
        (lambda p: p.approval_ttl.CopyFrom(duration_pb2.Duration(seconds=5, nanos=-1)), "policy.approval_ttl"),
    ],
)
def test_what_only_a_policy_message_can_say_wrong_is_named(change: object, field: str) -> None:
    request = trading_pb.UpsertRebalancePolicyRequest(portfolio_id="pf-1")
    change(request.policy)  # type: ignore[operator]
    with pytest.raises(InvalidInputError) as raised:
        adapter.upsert_policy_command(request)
    assert [v.field for v in raised.value.field_violations] == [field]


def test_check_drift_and_decisions_become_their_commands() -> None:
    request = trading_pb.CheckDriftRequest(portfolio_id="pf-1", target_weights={"KO": 0.5}, prices={"KO": 60.0})
    assert adapter.check_drift_command(request) == CheckDrift(
        portfolio_id="pf-1", target_weights={"KO": 0.5}, prices={"KO": 60.0}, threshold=None
    )
    request.threshold = 0.0
    assert adapter.check_drift_command(request).threshold == 0.0
    approve = trading_pb.ApproveRebalanceRequest(recommendation_id="r", approver="alice")
    reject = trading_pb.RejectRebalanceRequest(recommendation_id="r", approver="bob", reason="too big")
    # The deprecated request field is ignored: the approver is the authenticated principal given by the servicer.
    assert adapter.approve_rebalance_command(approve, approver="p1") == Decision(recommendation_id="r", approver="p1")
    assert adapter.reject_rebalance_command(reject, approver="p2") == Decision(
        recommendation_id="r", approver="p2", reason="too big"
    )


def test_a_generate_request_becomes_its_command_with_its_fingerprint() -> None:
    request = trading_pb.GenerateRebalanceRequest(
        portfolio_id="pf-1", request_id="r-1", target_weights={"KO": 0.4}, prices={"KO": 60.0}
    )
    request.market["KO"].CopyFrom(trading_pb.MarketInputs(adv=1e6, daily_volatility=0.02, spread_bps=3.0))
    request.as_of.FromDatetime(ACQUIRED)
    command = adapter.generate_rebalance_command(request)
    unkeyed = trading_pb.GenerateRebalanceRequest()
    unkeyed.CopyFrom(request)
    unkeyed.request_id = ""
    fingerprint = hashlib.sha256(b"GenerateRebalance\0" + unkeyed.SerializeToString(deterministic=True)).hexdigest()
    assert command == GenerateRebalance(
        portfolio_id="pf-1",
        request_id="r-1",
        request_hash=fingerprint,  # as stored before: replays across the upgrade still match
        target_weights={"KO": 0.4},
        prices={"KO": 60.0},
        market={"KO": MarketQuote(adv=1e6, daily_volatility=0.02, spread_bps=3.0)},
        as_of=ACQUIRED,
    )
    assert adapter.generate_rebalance_command(unkeyed).request_hash == fingerprint  # the key is not fingerprinted
    request.prices["KO"] = 61.0
    assert adapter.generate_rebalance_command(request).request_hash != fingerprint
    request.as_of.seconds = -62_135_596_801  # before the year 1
    with pytest.raises(InvalidInputError) as raised:
        adapter.generate_rebalance_command(request)
    assert [v.field for v in raised.value.field_violations] == ["as_of"]


# --- rebalancing: results → responses ---------------------------------------------------------------------------

CREATED_AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def pending_recommendation() -> RebalanceRecommendation:
    return RebalanceRecommendation(
        recommendation_id="3f1c",
        portfolio_id="pf-1",
        trades=(
            RecommendedTrade(
                symbol="KO",
                side=Side.SELL,
                shares=4.0,
                price=60.0,
                value=240.0,
                commission=1.0,
                spread_cost=0.5,
                impact_cost=0.25,
                total_cost=1.75,
                lots=(LotSold(lot_id="a", shares=4.0, cost_basis=50.0, gain=40.0, long_term=True),),
                long_term_gain=40.0,
            ),
            RecommendedTrade(
                symbol="XYZ",
                side=Side.BUY,
                shares=20.0,
                price=10.0,
                value=200.0,
                commission=1.0,
                spread_cost=0.0,
                impact_cost=0.0,
                total_cost=1.0,
                wash_sale=True,
            ),
        ),
        total_trade_value=440.0,
        total_cost=2.75,
        turnover=0.11,
        drift_before=0.2,
        drift_after=0.01,
        long_term_gain=40.0,
        estimated_tax=8.0,
        harvest_candidates=(
            LossHarvest(symbol="XYZ", lot_id="c", shares=5.0, unrealized_loss=12.0, wash_sale_risk=True),
        ),
        approval_limit=100.0,
        status=RecommendationStatus.PENDING_APPROVAL,
        created_at=CREATED_AT,
        expires_at=CREATED_AT + timedelta(hours=24),
    )


def pending_message() -> trading_pb.RebalanceRecommendation:
    message = trading_pb.RebalanceRecommendation(
        recommendation_id="3f1c",
        portfolio_id="pf-1",
        total_trade_value=440.0,
        total_cost=2.75,
        turnover=0.11,
        drift_before=0.2,
        drift_after=0.01,
        long_term_gain=40.0,
        estimated_tax=8.0,
        approval_limit=100.0,
        status=trading_pb.RECOMMENDATION_STATUS_PENDING_APPROVAL,
    )
    sell = message.trades.add(
        symbol="KO",
        side=trading_pb.TRADE_SIDE_SELL,
        shares=4.0,
        price=60.0,
        value=240.0,
        commission=1.0,
        spread_cost=0.5,
        impact_cost=0.25,
        total_cost=1.75,
        long_term_gain=40.0,
    )
    sell.lots.add(lot_id="a", shares=4.0, cost_basis=50.0, gain=40.0, long_term=True)
    message.trades.add(
        symbol="XYZ",
        side=trading_pb.TRADE_SIDE_BUY,
        shares=20.0,
        price=10.0,
        value=200.0,
        commission=1.0,
        total_cost=1.0,
        wash_sale=True,
    )
    message.harvest_candidates.add(symbol="XYZ", lot_id="c", shares=5.0, unrealized_loss=12.0, wash_sale_risk=True)
    message.created_at.FromDatetime(CREATED_AT)
    message.expires_at.FromDatetime(CREATED_AT + timedelta(hours=24))
    return message


def test_a_recommendation_becomes_its_responses() -> None:
    pending = pending_recommendation()
    assert adapter.generate_rebalance_response(
        GeneratedRebalance(recommendation=pending, replayed=True)
    ) == trading_pb.GenerateRebalanceResponse(recommendation=pending_message(), replayed=True)
    approved = replace(
        pending,
        status=RecommendationStatus.APPROVED,
        decided_by="alice",
        decided_at=CREATED_AT + timedelta(hours=1),
        reason="ok",
    )
    expected = pending_message()
    expected.status = trading_pb.RECOMMENDATION_STATUS_APPROVED
    expected.decided_by = "alice"
    expected.decided_at.FromDatetime(CREATED_AT + timedelta(hours=1))
    expected.reason = "ok"
    assert adapter.approve_rebalance_response(approved) == trading_pb.ApproveRebalanceResponse(recommendation=expected)
    assert adapter.reject_rebalance_response(approved).recommendation == expected
    assert adapter.recommendation_of_message(expected) == approved


def test_the_recommendation_is_stored_as_before() -> None:
    stored = recommendation_json(pending_recommendation())
    assert stored == RECOMMENDATION.to_json(pending_message())
    assert stored["trades"][0]["side"] == "SELL" and stored["created_at"] == "2024-03-01T12:00:00Z"
    assert recommendation_from_json(stored) == replace(pending_recommendation(), status=None)  # status is a column


def test_holdings_and_policies_are_stored_as_before() -> None:
    lot = PositionLot(lot_id="a", shares=4.0, cost_basis=50.0, acquired=ACQUIRED)
    assert positions_json([Position(symbol="KO", shares=4.0, lots=(lot,))]) == {
        "schema_version": 1,
        "positions": [
            {
                "symbol": "KO",
                "shares": 4.0,
                "price": None,
                "lots": [{"lot_id": "a", "shares": 4.0, "cost_basis": 50.0, "acquired": "2023-05-01T15:30:00Z"}],
            }
        ],
    }
    policy = policy_json(
        RebalancePolicy(drift_threshold=0.0, lot_method=LotMethod.HIFO, approval_ttl=timedelta(hours=2))
    )
    assert (policy["drift_threshold"], policy["lot_method"], policy["impact_model"], policy["approval_ttl"]) == (
        0.0,
        "HIFO",
        "",
        7200.0,
    )
    assert policy["max_turnover"] is None and policy["bands"] == {}


def test_upserts_and_drift_become_their_responses() -> None:
    assert adapter.upsert_holdings_response(
        HoldingsStored(portfolio_id="pf-1", positions=2, updated_at=CREATED_AT)
    ) == trading_pb.UpsertHoldingsResponse(portfolio_id="pf-1", positions=2, updated_at=adapter.timestamp(CREATED_AT))
    policy = RebalancePolicy(approval_limit=5.0, impact_model=ImpactModel.NONE)
    assert adapter.upsert_policy_response("pf-1", policy) == trading_pb.UpsertRebalancePolicyResponse(
        portfolio_id="pf-1",
        policy=trading_pb.RebalancePolicy(approval_limit=5.0, impact_model=trading_pb.IMPACT_MODEL_NONE),
    )
    report = check_drift(
        (Holding("AAA", 10.0, 50.0), Holding("BBB", 5.0, 100.0)),
        0.0,
        np.array([0.25, 0.75]),
        threshold=0.1,
        absolute_bands=np.array([0.1, math.inf]),
        relative_bands=np.array([math.inf, math.inf]),
    )
    report = replace(report, breaches=np.array([True, False]))  # the response reports the report's flags
    response = adapter.check_drift_response(DriftCheck(report=report, target_event_id="ev-1"))
    expected = trading_pb.CheckDriftResponse(
        cash_weight=0.0,
        total_value=1_000.0,
        portfolio_drift=0.5,
        one_way_drift=0.25,
        threshold=0.1,
        exceeds_threshold=True,
        target_event_id="ev-1",
    )
    expected.names.add(symbol="AAA", current_weight=0.5, target_weight=0.25, drift=0.25, breached=True)
    expected.names.add(symbol="BBB", current_weight=0.5, target_weight=0.75, drift=-0.25, breached=False)
    assert response == expected
