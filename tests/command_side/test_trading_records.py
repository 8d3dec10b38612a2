"""The stored schema of the trading tables (command_side.trading_records): documented keys, exact round trips."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from command_side.records import SchemaError
from command_side.trading_records import (
    ALLOCATION,
    ALLOCATION_REQUEST,
    POLICY,
    RECOMMENDATION,
    Schema,
    holdings_from_json,
    holdings_json,
)
from stratopt.v1 import trading_service_pb2 as trading_pb

T0 = datetime(2024, 6, 3, 9, 30, 0, 123456, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage_schema.md"


def full_trading_messages() -> dict[str, Any]:
    """Trading messages with every stored field set (the migration test writes them the previous way too)."""
    lot = trading_pb.TaxLot(lot_id="L1", shares=10.0, cost_basis=95.5)
    lot.acquired.FromDatetime(datetime(2023, 2, 1, 15, 30, tzinfo=UTC))
    position = trading_pb.Position(symbol="AAPL", shares=10.0, price=190.0, lots=[lot])
    policy = trading_pb.RebalancePolicy(
        drift_threshold=0.05, min_trade_value=100.0, max_turnover=0.3, commission_per_trade=1.0,
        commission_per_share=0.005, impact_model=trading_pb.IMPACT_MODEL_SQUARE_ROOT, impact_coefficient=0.1,
        lot_method=trading_pb.LOT_METHOD_HIFO, prefer_losses=True, short_term_tax_rate=0.37,
        long_term_tax_rate=0.2, long_term_after_days=365, wash_sale_window_days=30, approval_limit=50_000.0,
    )  # fmt: skip
    policy.bands["AAPL"].absolute = 0.02
    policy.bands["XOM"].relative = 0.25
    policy.approval_ttl.FromSeconds(86_400)
    request = trading_pb.AllocateSharesRequest(
        holdings=[position],
        targets=[trading_pb.TargetPosition(symbol="XOM", target_weight=1.0, price=110.0, lot_size=1)],
        extra_cash=1000.0,
        strategy=trading_pb.ALLOCATION_STRATEGY_MINIMIZE_LEFTOVER,
        fee_per_share=0.01,
    )
    allocation = trading_pb.AllocateSharesResponse(
        lines=[
            trading_pb.AllocationLine(
                symbol="XOM", price=110.0, current_shares=0, buy_shares=26, final_shares=26, trade_cost=0.26,
                final_value=2860.0, target_weight=1.0, actual_weight=0.98, weight_deviation=-0.02,
            )
        ],
        sold_in_full=[trading_pb.SoldHolding(symbol="AAPL", shares=10, price=190.0, proceeds=1900.0, trade_cost=0.1)],
        metrics=trading_pb.AllocationMetrics(
            budget=2900.0, budget_used=2860.36, unused_budget=39.64, unused_fraction=0.0137, fees_total=0.36,
            solve_time_ms=1.5, solver_status="OPTIMAL", solver="HIGHS",
        ),
        cache_key="old-key",
    )  # fmt: skip
    recommendation = trading_pb.RebalanceRecommendation(
        recommendation_id=str(uuid.uuid4()), portfolio_id="migrated-trader", total_trade_value=1900.0,
        total_cost=2.5, turnover=0.2, drift_before=0.08, drift_after=0.01, short_term_gain=0.0,
        long_term_gain=945.0, estimated_tax=189.0, approval_limit=50_000.0,
        status=trading_pb.RECOMMENDATION_STATUS_AUTO_APPROVED,
        trades=[
            trading_pb.Trade(
                symbol="AAPL", side=trading_pb.TRADE_SIDE_SELL, shares=10.0, price=190.0, value=1900.0,
                commission=1.0, spread_cost=0.5, impact_cost=1.0, total_cost=2.5, long_term_gain=945.0,
                lots=[trading_pb.LotSale(lot_id="L1", shares=10.0, cost_basis=95.5, gain=945.0, long_term=True)],
            )
        ],
        harvest_candidates=[
            trading_pb.HarvestCandidate(symbol="XOM", lot_id="L9", shares=3.0, unrealized_loss=12.0)
        ],
    )  # fmt: skip
    recommendation.created_at.FromDatetime(T0)
    return {"position": position, "policy": policy, "request": request, "allocation": allocation,
            "recommendation": recommendation}  # fmt: skip


def through_jsonb(payload: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(payload, allow_nan=False))
    return loaded


@pytest.mark.parametrize(
    ("schema", "name"),
    [(POLICY, "policy"), (ALLOCATION_REQUEST, "request"), (ALLOCATION, "allocation")],
)
def test_every_stored_field_survives_the_round_trip(schema: Schema, name: str) -> None:
    message = full_trading_messages()[name]
    payload = through_jsonb(schema.to_json(message))
    assert payload["schema_version"] == 1
    assert schema.from_json(payload) == message


def test_a_recommendation_is_stored_without_its_status_and_decision() -> None:
    recommendation = full_trading_messages()["recommendation"]
    payload = through_jsonb(RECOMMENDATION.to_json(recommendation))
    assert "status" not in payload and "decided_at" not in payload
    assert payload["created_at"] == "2024-06-03T09:30:00.123456Z" and payload["expires_at"] is None
    assert payload["trades"][0]["side"] == "SELL" and payload["trades"][0]["lots"][0]["long_term"] is True
    expected = trading_pb.RebalanceRecommendation()
    expected.CopyFrom(recommendation)
    expected.ClearField("status")
    assert RECOMMENDATION.from_json(payload) == expected


def test_holdings_are_a_versioned_list_of_positions() -> None:
    position = full_trading_messages()["position"]
    payload = through_jsonb(holdings_json([position]))
    assert payload == {
        "schema_version": 1,
        "positions": [
            {
                "symbol": "AAPL",
                "shares": 10.0,
                "price": 190.0,
                "lots": [{"lot_id": "L1", "shares": 10.0, "cost_basis": 95.5, "acquired": "2023-02-01T15:30:00Z"}],
            }
        ],
    }
    assert holdings_from_json(payload) == (position,)


def test_policy_units_enums_and_unset_optionals() -> None:
    payload = through_jsonb(POLICY.to_json(full_trading_messages()["policy"]))
    assert payload["approval_ttl"] == 86_400.0  # seconds
    assert (payload["lot_method"], payload["impact_model"]) == ("HIFO", "SQUARE_ROOT")
    assert payload["bands"] == {
        "AAPL": {"absolute": 0.02, "relative": None},
        "XOM": {"absolute": None, "relative": 0.25},
    }
    empty = through_jsonb(POLICY.to_json(trading_pb.RebalancePolicy()))
    assert (empty["drift_threshold"], empty["approval_ttl"], empty["lot_method"]) == (None, None, "")
    assert not POLICY.from_json(empty).HasField("drift_threshold")


@pytest.mark.parametrize("version", [None, 0, 2])
def test_a_payload_of_another_schema_version_is_refused(version: int | None) -> None:
    payload = POLICY.to_json(full_trading_messages()["policy"])
    payload["schema_version"] = version
    with pytest.raises(SchemaError):
        POLICY.from_json(payload)
    with pytest.raises(SchemaError):
        holdings_from_json({"schema_version": version, "positions": []})


def test_every_stored_key_is_documented() -> None:
    """docs/storage_schema.md lists every key of every stored object, in a table row of its own."""
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    schemas = [RECOMMENDATION, POLICY, ALLOCATION, ALLOCATION_REQUEST]
    seen: set[str] = set()
    while schemas:
        schema = schemas.pop()
        seen.add(schema.name)
        for field in schema.fields:
            assert field.key in documented, f"{schema.name}.{field.key} is not in {DOCS.name}"
            if field.record is not None and field.record.name not in seen:
                schemas.append(field.record)
