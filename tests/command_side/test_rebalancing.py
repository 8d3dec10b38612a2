"""Holdings, drift, rebalancing and approval end to end: real gRPC server, real PostgreSQL + TimescaleDB, real prices.

Prices are the bundled S&P 500 closes ingested by the ``stored_prices`` fixture; the expected numbers are computed
here from the CSV itself (weights, drift, bands, costs and realised gains by their closed forms), never read back
from the service's own engine.
"""

from __future__ import annotations

import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pandas as pd
import psycopg
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from stratopt.identity import LOCAL_PRINCIPAL
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc
from stratopt.v1 import trading_service_pb2 as tpb
from stratopt.v1 import types_pb2 as pb
from tests.command_side.test_optimize_service import field_violations, precondition_types, returns_request
from tests.conftest import DATA_DIR

LOCAL = LOCAL_PRINCIPAL.name
"""Every caller's principal on the unauthenticated test server."""

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def closes() -> pd.DataFrame:
    """The S&P 500 closes as in the CSV (the stored prices carry the same values)."""
    return pd.read_csv(DATA_DIR / "sp500_dataset.csv.gz", parse_dates=["Date"], index_col="Date")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ts(text: str) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return message


def position(symbol: str, shares: float, *lots: tuple[str, float, float, str]) -> tpb.Position:
    return tpb.Position(
        symbol=symbol,
        shares=shares,
        lots=[tpb.TaxLot(lot_id=i, shares=s, cost_basis=b, acquired=ts(d)) for i, s, b, d in lots],
    )


def rows(db: psycopg.Connection[Any], portfolio_id: str) -> dict[str, int]:
    counts = {}
    for table in ("portfolio_holdings", "rebalance_policies", "rebalance_recommendations", "rebalance_events"):
        row = db.execute(f"SELECT count(*) FROM {table} WHERE portfolio_id = %s", [portfolio_id]).fetchone()
        assert row is not None
        counts[table] = row[0]
    return counts


def events(queries: Any, portfolio_id: str) -> list[tpb.RebalanceEvent]:
    return list(queries.ListRebalanceEvents(query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id)).events)


def setup(
    trading: Any, portfolio_id: str, positions: list[tpb.Position], cash: float, **policy: Any
) -> tpb.RebalancePolicy:
    trading.UpsertHoldings(tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=positions, cash=cash))
    policy_message: tpb.RebalancePolicy = trading.UpsertRebalancePolicy(
        tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=tpb.RebalancePolicy(**policy))
    ).policy
    return policy_message


def expect_error(call: Any, request: Any, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    return caught.value


# --- holdings and policies ----------------------------------------------------------------------------------


def test_holdings_and_policy_are_stored_with_documented_defaults(trading: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = unique("store")
    response = trading.UpsertHoldings(
        tpb.UpsertHoldingsRequest(
            portfolio_id=portfolio_id,
            positions=[
                tpb.Position(symbol="AAPL", shares=10, price=150.0),
                position("KO", 30, ("a", 10, 50.0, "2021-03-01"), ("b", 20, 61.5, "2022-01-10")),
            ],
            cash=1234.5,
        )
    )
    assert response.portfolio_id == portfolio_id and response.positions == 2
    assert abs(response.updated_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    row = db.execute(
        "SELECT positions, cash FROM portfolio_holdings WHERE portfolio_id = %s", [portfolio_id]
    ).fetchone()
    assert row is not None
    stored, cash = row
    assert cash == 1234.5
    assert stored["schema_version"] == 1  # docs/storage_schema.md
    assert stored["positions"][0] == {"symbol": "AAPL", "shares": 10.0, "price": None, "lots": []}  # no prices
    assert [lot["lot_id"] for lot in stored["positions"][1]["lots"]] == ["a", "b"]
    assert stored["positions"][1]["lots"][0]["acquired"] == "2021-03-01T00:00:00Z"

    # A new snapshot replaces the old one.
    trading.UpsertHoldings(tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=[], cash=10.0))
    row = db.execute(
        "SELECT positions, cash FROM portfolio_holdings WHERE portfolio_id = %s", [portfolio_id]
    ).fetchone()
    assert row == ({"schema_version": 1, "positions": []}, 10.0)

    echoed = setup(trading, portfolio_id, [], 10.0, min_trade_value=50.0, bands={"KO": tpb.Band(absolute=0.02)})
    expected = tpb.RebalancePolicy(
        drift_threshold=0.05,
        bands={"KO": tpb.Band(absolute=0.02)},
        min_trade_value=50.0,
        impact_model=tpb.IMPACT_MODEL_SQUARE_ROOT,
        impact_coefficient=1.0,
        lot_method=tpb.LOT_METHOD_FIFO,
        short_term_tax_rate=0.37,
        long_term_tax_rate=0.20,
        wash_sale_window_days=30,
        approval_limit=10_000.0,
        approval_ttl=duration_pb2.Duration(seconds=86_400),
    )
    assert echoed == expected
    assert not echoed.HasField("max_turnover")  # no cap unless given
    row = db.execute("SELECT policy FROM rebalance_policies WHERE portfolio_id = %s", [portfolio_id]).fetchone()
    assert row is not None and row[0]["approval_ttl"] == 86_400.0  # seconds (docs/storage_schema.md)
    assert (row[0]["schema_version"], row[0]["lot_method"], row[0]["max_turnover"]) == (1, "FIFO", None)


# --- drift --------------------------------------------------------------------------------------------------


def test_drift_against_a_given_target_matches_the_hand_computation(
    trading: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    portfolio_id = unique("drift")
    shares = {"AAPL": 100.0, "MSFT": 50.0, "JPM": 80.0}
    cash = 2000.0
    target = {"AAPL": 0.30, "MSFT": 0.40, "JPM": 0.25}  # cash target 0.05
    setup(
        trading,
        portfolio_id,
        [tpb.Position(symbol=s, shares=n) for s, n in shares.items()],
        cash,
        bands={"AAPL": tpb.Band(absolute=0.02), "MSFT": tpb.Band(relative=0.1)},
    )
    response = trading.CheckDrift(tpb.CheckDriftRequest(portfolio_id=portfolio_id, target_weights=target))

    last = closes.iloc[-1]  # 2022-12-28, the latest stored close
    value = {s: n * last[s] for s, n in shares.items()}
    total = sum(value.values()) + cash
    weight = {s: v / total for s, v in value.items()}
    drift = {s: weight[s] - target[s] for s in shares}
    assert response.total_value == pytest.approx(total, rel=1e-12)
    assert [n.symbol for n in response.names] == ["AAPL", "JPM", "MSFT"]
    for name in response.names:
        assert name.current_weight == pytest.approx(weight[name.symbol], rel=1e-12)
        assert name.target_weight == target[name.symbol]
        assert name.drift == pytest.approx(drift[name.symbol], abs=1e-12)
    breached = {n.symbol: n.breached for n in response.names}
    assert breached == {
        "AAPL": abs(drift["AAPL"]) > 0.02,
        "MSFT": abs(drift["MSFT"]) > 0.1 * 0.40,
        "JPM": True,  # no band: any drift breaches
    }
    cash_weight = cash / total
    two_way = sum(abs(d) for d in drift.values()) + abs(cash_weight - 0.05)
    assert response.cash_weight == pytest.approx(cash_weight, rel=1e-12)
    assert response.portfolio_drift == pytest.approx(two_way, rel=1e-12)
    assert response.one_way_drift == pytest.approx(two_way / 2, rel=1e-12)
    assert response.threshold == 0.05
    assert response.exceeds_threshold == (two_way > 0.05)
    assert response.target_event_id == ""

    # A threshold override above the drift, and a given price instead of the stored one.
    override = trading.CheckDrift(
        tpb.CheckDriftRequest(portfolio_id=portfolio_id, target_weights=target, threshold=two_way + 0.01)
    )
    assert override.threshold == two_way + 0.01 and not override.exceeds_threshold
    repriced = trading.CheckDrift(
        tpb.CheckDriftRequest(portfolio_id=portfolio_id, target_weights=target, prices={"AAPL": 100.0})
    )
    total_repriced = total - value["AAPL"] + 100 * 100.0
    assert repriced.total_value == pytest.approx(total_repriced, rel=1e-12)
    assert repriced.names[0].current_weight == pytest.approx(10_000.0 / total_repriced, rel=1e-12)


def test_drift_against_the_latest_optimized_target(
    trading: Any, commands: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    portfolio_id = unique("drift-opt")
    symbols = ["AAPL", "JNJ", "KO", "XOM"]
    setup(trading, portfolio_id, [tpb.Position(symbol=s, shares=20) for s in symbols], 500.0)
    error = expect_error(
        trading.CheckDrift, tpb.CheckDriftRequest(portfolio_id=portfolio_id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert precondition_types(error) == ["NO_TARGET"]

    returns = closes[symbols].pct_change().dropna().iloc[-756:]
    optimized = commands.Optimize(
        returns_request(returns, portfolio_id, objective=pb.OBJECTIVE_MIN_VOLATILITY), timeout=60
    )
    response = trading.CheckDrift(tpb.CheckDriftRequest(portfolio_id=portfolio_id))
    assert response.target_event_id == optimized.optimization_metadata.event_id
    target = dict(optimized.optimal_weights)
    last = closes.iloc[-1]
    total = sum(20 * last[s] for s in symbols) + 500.0
    names = {n.symbol: n for n in response.names if n.symbol in symbols}
    for symbol in symbols:
        assert names[symbol].target_weight == pytest.approx(target[symbol], abs=1e-12)
        assert names[symbol].current_weight == pytest.approx(20 * last[symbol] / total, rel=1e-12)
    assert response.portfolio_drift == pytest.approx(
        sum(abs(20 * last[s] / total - target[s]) for s in symbols) + abs(500.0 / total - (1 - sum(target.values()))),
        abs=1e-9,
    )
    # GenerateRebalance takes the same target: every name without a band trades towards it.
    recommendation = trading.GenerateRebalance(tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id)).recommendation
    assert recommendation.drift_before == pytest.approx(response.portfolio_drift, rel=1e-12)
    assert recommendation.drift_after < recommendation.drift_before
    for trade in recommendation.trades:
        current = 20 * last[trade.symbol] / total
        assert (trade.side == tpb.TRADE_SIDE_BUY) == (current < target[trade.symbol])


# --- rebalancing ----------------------------------------------------------------------------------------------


def test_rebalance_brings_every_name_inside_its_band(
    trading: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    portfolio_id = unique("bands")
    last = closes.iloc[-1]
    shares = {"AAPL": 300.0, "MSFT": 100.0, "JPM": 200.0, "KO": 400.0, "XOM": 0.0}
    cash = 5000.0
    total = sum(n * last[s] for s, n in shares.items()) + cash
    ko_target = round(400 * last["KO"] / total, 3)  # KO sits inside its band: not traded
    rest = 0.97 - ko_target
    target = {"AAPL": 0.3 * rest, "MSFT": 0.3 * rest, "JPM": 0.2 * rest, "XOM": 0.2 * rest, "KO": ko_target}
    band = 0.02
    setup(
        trading,
        portfolio_id,
        [tpb.Position(symbol=s, shares=n) for s, n in shares.items()],
        cash,
        bands={s: tpb.Band(absolute=band) for s in target},
        commission_per_trade=1.0,
    )
    recommendation = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights=target)
    ).recommendation

    trades = list(recommendation.trades)
    breaching = {s for s in target if abs(shares[s] * last[s] / total - target[s]) > band}
    assert breaching >= {"XOM", "MSFT"}  # the test is not vacuous
    assert {t.symbol for t in trades} == breaching
    sides = [t.side for t in trades]
    assert sides == sorted(sides, key=lambda s: s != tpb.TRADE_SIDE_SELL)  # sells first
    assert "KO" not in {t.symbol for t in trades}
    final = dict(shares)
    post_cash = cash
    for trade in trades:
        assert trade.shares == int(trade.shares) > 0  # whole shares
        assert trade.price == pytest.approx(last[trade.symbol], rel=1e-15)
        assert trade.total_cost == 1.0  # commission only: no market inputs given
        sign = 1 if trade.side == tpb.TRADE_SIDE_BUY else -1
        final[trade.symbol] += sign * trade.shares
        post_cash -= sign * trade.value + trade.total_cost
    assert post_cash >= 0
    post_total = sum(n * last[s] for s, n in final.items()) + post_cash
    post_weight = {s: final[s] * last[s] / post_total for s in final}
    for symbol, weight in target.items():
        assert abs(post_weight[symbol] - weight) <= band, symbol
    drift_after = sum(abs(post_weight[s] - target[s]) for s in target) + abs(post_cash / post_total - 0.03)
    assert recommendation.drift_after == pytest.approx(drift_after, abs=1e-9)
    assert recommendation.drift_after < recommendation.drift_before
    assert recommendation.total_trade_value == pytest.approx(sum(t.value for t in trades), rel=1e-12)
    assert recommendation.total_cost == len(trades)
    buys = sum(t.value for t in trades if t.side == tpb.TRADE_SIDE_BUY)
    sells = sum(t.value for t in trades if t.side == tpb.TRADE_SIDE_SELL)
    assert recommendation.turnover == pytest.approx(max(buys, sells) / total, rel=1e-12)


def test_costs_and_fifo_versus_hifo_gains_match_the_closed_forms(
    trading: Any, queries: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    """Sell 50 of 100 AAPL held in two lots, by FIFO and by HIFO, at the stored close of the as-of date.

    Lots: L1 60 @ 100 from 2020-01-02 (long-term), L2 40 @ 200 from 2022-06-01 (short-term); no cash; target
    50 %; as of 2022-06-30 (later closes exist and must not be used).
    """
    p = float(closes["AAPL"].loc["2022-06-30"])
    lots = (("L1", 60, 100.0, "2020-01-02"), ("L2", 40, 200.0, "2022-06-01"))
    as_of = ts("2022-06-30T15:00:00")
    market = {"AAPL": tpb.MarketInputs(adv=1e6, daily_volatility=0.02, spread_bps=10.0)}
    results = {}
    for method in (tpb.LOT_METHOD_FIFO, tpb.LOT_METHOD_HIFO):
        portfolio_id = unique("lots")
        setup(
            trading,
            portfolio_id,
            [position("AAPL", 100, *lots)],
            0.0,
            lot_method=method,
            commission_per_trade=1.0,
            commission_per_share=0.005,
        )
        response = trading.GenerateRebalance(
            tpb.GenerateRebalanceRequest(
                portfolio_id=portfolio_id, target_weights={"AAPL": 0.5}, market=market, as_of=as_of
            )
        )
        results[method] = (portfolio_id, response.recommendation)

    for _, recommendation in results.values():
        (trade,) = recommendation.trades
        assert (trade.symbol, trade.side, trade.shares, trade.price) == ("AAPL", tpb.TRADE_SIDE_SELL, 50, p)
        value = 50 * p
        assert trade.value == pytest.approx(value, rel=1e-12)
        assert trade.commission == pytest.approx(1.0 + 0.005 * 50, rel=1e-12)
        assert trade.spread_cost == pytest.approx(10 / 2 * 1e-4 * value, rel=1e-12)
        assert trade.impact_cost == pytest.approx(1.0 * 0.02 * math.sqrt(50 / 1e6) * value, rel=1e-12)
        assert trade.total_cost == pytest.approx(trade.commission + trade.spread_cost + trade.impact_cost, rel=1e-12)
        assert recommendation.total_cost == pytest.approx(trade.total_cost, rel=1e-12)
        assert recommendation.turnover == pytest.approx(0.5, rel=1e-12)
        assert recommendation.drift_before == pytest.approx(1.0, rel=1e-12)  # |1 - 0.5| + |0 - 0.5|
        post_total = 2 * value - trade.total_cost
        drift_after = abs(value / post_total - 0.5) + abs((value - trade.total_cost) / post_total - 0.5)
        assert recommendation.drift_after == pytest.approx(drift_after, rel=1e-9)
        # L2 is the only lot under water; nothing was bought within 30 days besides itself.
        (candidate,) = recommendation.harvest_candidates
        assert (candidate.symbol, candidate.lot_id, candidate.shares) == ("AAPL", "L2", 40)
        assert candidate.unrealized_loss == pytest.approx(40 * (200 - p), rel=1e-12)
        assert not candidate.wash_sale_risk
        # Below the default approval limit of 10 000: approved on creation.
        assert value < 10_000
        assert recommendation.status == tpb.RECOMMENDATION_STATUS_AUTO_APPROVED
        assert recommendation.decided_at == recommendation.created_at
        assert not recommendation.HasField("expires_at") and recommendation.decided_by == ""

    fifo = results[tpb.LOT_METHOD_FIFO][1]
    assert [(lot.lot_id, lot.shares, lot.long_term) for lot in fifo.trades[0].lots] == [("L1", 50, True)]
    assert fifo.long_term_gain == pytest.approx(50 * (p - 100), rel=1e-12)
    assert fifo.short_term_gain == 0
    assert fifo.estimated_tax == pytest.approx(0.20 * 50 * (p - 100), rel=1e-12)

    hifo = results[tpb.LOT_METHOD_HIFO][1]
    assert [(lot.lot_id, lot.shares, lot.long_term) for lot in hifo.trades[0].lots] == [
        ("L2", 40, False),
        ("L1", 10, True),
    ]
    assert hifo.trades[0].lots[0].gain == pytest.approx(40 * (p - 200), rel=1e-12)
    assert hifo.short_term_gain == pytest.approx(40 * (p - 200), rel=1e-12)
    assert hifo.long_term_gain == pytest.approx(10 * (p - 100), rel=1e-12)
    assert hifo.estimated_tax == pytest.approx(0.37 * 40 * (p - 200) + 0.20 * 10 * (p - 100), rel=1e-12)
    assert hifo.estimated_tax < 0 < fifo.estimated_tax

    portfolio_id, _ = results[tpb.LOT_METHOD_FIFO]
    (created,) = events(queries, portfolio_id)
    assert (created.event_type, created.status, created.actor) == (
        "CREATED",
        tpb.RECOMMENDATION_STATUS_AUTO_APPROVED,
        LOCAL,  # the generating principal: the development identity (the test server runs without auth)
    )
    assert created.recommendation_id == fifo.recommendation_id
    assert created.total_trade_value == pytest.approx(fifo.total_trade_value, rel=1e-12)


def test_a_buy_after_an_approved_loss_sale_is_flagged_as_a_wash_sale(
    trading: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    portfolio_id = unique("wash")
    setup(trading, portfolio_id, [position("AAPL", 100, ("L2", 100, 200.0, "2022-01-03"))], 0.0)
    sold = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(
            portfolio_id=portfolio_id, target_weights={"AAPL": 0.95}, as_of=ts("2022-06-30T15:00:00")
        )
    ).recommendation
    assert sold.status == tpb.RECOMMENDATION_STATUS_AUTO_APPROVED and sold.trades[0].short_term_gain < 0
    # Ten days later, after the holdings were updated: buying AAPL back falls in the 30-day window.
    trading.UpsertHoldings(
        tpb.UpsertHoldingsRequest(
            portfolio_id=portfolio_id, positions=[tpb.Position(symbol="AAPL", shares=95)], cash=700
        )
    )
    bought = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(
            portfolio_id=portfolio_id, target_weights={"AAPL": 1.0}, as_of=ts("2022-07-11T15:00:00")
        )
    ).recommendation
    (buy,) = bought.trades
    assert buy.side == tpb.TRADE_SIDE_BUY and buy.wash_sale


# --- approval workflow --------------------------------------------------------------------------------------


def _pending(trading: Any, portfolio_id: str, **policy: Any) -> tpb.RebalanceRecommendation:
    setup(trading, portfolio_id, [tpb.Position(symbol="AAPL", shares=10)], 1000.0, approval_limit=100.0, **policy)
    recommendation: tpb.RebalanceRecommendation = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.0})
    ).recommendation
    assert recommendation.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL
    return recommendation


def test_pending_recommendation_is_approved_once(
    trading: Any, queries: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    portfolio_id = unique("approve")
    pending = _pending(trading, portfolio_id)
    assert pending.total_trade_value == pytest.approx(10 * closes["AAPL"].iloc[-1], rel=1e-12)
    assert pending.total_trade_value > pending.approval_limit == 100.0
    created = pending.created_at.ToDatetime(tzinfo=UTC)
    assert pending.expires_at.ToDatetime(tzinfo=UTC) - created == timedelta(hours=24)
    assert not pending.HasField("decided_at")

    approved = trading.ApproveRebalance(
        tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id, reason="ok")
    ).recommendation
    assert approved.status == tpb.RECOMMENDATION_STATUS_APPROVED
    # The approver is the caller's principal (no authentication here: the local development identity).
    assert (approved.decided_by, approved.reason) == (LOCAL, "ok")
    assert approved.decided_at.ToDatetime(tzinfo=UTC) >= created
    assert list(approved.trades) == list(pending.trades)

    read = queries.GetRebalance(query_pb.GetRebalanceRequest(recommendation_id=pending.recommendation_id))
    assert read.recommendation == approved
    history = events(queries, portfolio_id)
    assert [(e.event_type, e.status, e.actor) for e in history] == [
        ("APPROVED", tpb.RECOMMENDATION_STATUS_APPROVED, LOCAL),
        ("CREATED", tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL, LOCAL),
    ]
    assert {e.recommendation_id for e in history} == {pending.recommendation_id}

    for call, request in (
        (
            trading.ApproveRebalance,
            tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id),
        ),
        (
            trading.RejectRebalance,
            tpb.RejectRebalanceRequest(recommendation_id=pending.recommendation_id, reason="late"),
        ),
    ):
        error = expect_error(call, request, grpc.StatusCode.FAILED_PRECONDITION)
        assert precondition_types(error) == ["NOT_PENDING"]
        assert "APPROVED" in (error.details() or "")
    assert len(events(queries, portfolio_id)) == 2

    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id=str(uuid.uuid4())),
        grpc.StatusCode.NOT_FOUND,
    )
    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id="not-a-uuid"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["recommendation_id"]


def test_concurrent_approvals_and_retries_decide_once(
    trading: Any, queries: Any, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("race")
    pending = _pending(trading, portfolio_id)

    def approve(_: str) -> str:
        request = tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id)
        try:
            trading.ApproveRebalance(request, timeout=30)
        except grpc.RpcError as error:
            return precondition_types(error)[0]
        return "APPROVED"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(approve, ["a", "b", "c", "d"]))
    assert outcomes == ["APPROVED", "NOT_PENDING", "NOT_PENDING", "NOT_PENDING"]
    assert [e.event_type for e in events(queries, portfolio_id)] == ["APPROVED", "CREATED"]

    request = tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.0}, request_id="same")
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: trading.GenerateRebalance(request, timeout=30), range(4)))
    assert len({r.recommendation.recommendation_id for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    assert rows(db, portfolio_id)["rebalance_recommendations"] == 2


def test_auto_approved_recommendation_cannot_be_approved_again(trading: Any, stored_prices: dict[str, str]) -> None:
    portfolio_id = unique("auto")
    setup(trading, portfolio_id, [tpb.Position(symbol="AAPL", shares=10)], 1000.0)
    auto = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.0})
    ).recommendation
    assert auto.status == tpb.RECOMMENDATION_STATUS_AUTO_APPROVED
    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id=auto.recommendation_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["NOT_PENDING"] and "AUTO_APPROVED" in (error.details() or "")


def test_reject_requires_a_reason_and_records_it(
    trading: Any, queries: Any, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("reject")
    pending = _pending(trading, portfolio_id)
    error = expect_error(
        trading.RejectRebalance,
        tpb.RejectRebalanceRequest(recommendation_id=pending.recommendation_id),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["reason"]
    rejected = trading.RejectRebalance(
        tpb.RejectRebalanceRequest(recommendation_id=pending.recommendation_id, reason="too big")
    ).recommendation
    assert rejected.status == tpb.RECOMMENDATION_STATUS_REJECTED
    assert (rejected.decided_by, rejected.reason) == (LOCAL, "too big")
    row = db.execute(
        "SELECT status, decided_by, reason FROM rebalance_recommendations WHERE recommendation_id = %s",
        [pending.recommendation_id],
    ).fetchone()
    assert row == ("REJECTED", LOCAL, "too big")
    assert [(e.event_type, e.actor) for e in events(queries, portfolio_id)] == [("REJECTED", LOCAL), ("CREATED", LOCAL)]
    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["NOT_PENDING"] and "REJECTED" in (error.details() or "")


def test_pending_recommendations_expire_or_are_superseded(
    trading: Any, queries: Any, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("expire")
    first = _pending(trading, portfolio_id, approval_ttl=duration_pb2.Duration(seconds=1))
    assert first.expires_at.ToDatetime() - first.created_at.ToDatetime() == timedelta(seconds=1)
    # A newer recommendation supersedes the pending one (approving both would trade twice): EXPIRED at once.
    second = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.0})
    ).recommendation
    assert second.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL
    read = queries.GetRebalance(query_pb.GetRebalanceRequest(recommendation_id=first.recommendation_id))
    assert read.recommendation.status == tpb.RECOMMENDATION_STATUS_EXPIRED
    assert read.recommendation.reason == f"superseded by recommendation {second.recommendation_id}"
    assert [e.event_type for e in events(queries, portfolio_id)][::-1] == ["CREATED", "EXPIRED", "CREATED"]
    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id=first.recommendation_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["EXPIRED"]
    time.sleep(1.5)

    # The query side reads the second as expired before the command side has persisted anything.
    read = queries.GetRebalance(query_pb.GetRebalanceRequest(recommendation_id=second.recommendation_id))
    assert read.recommendation.status == tpb.RECOMMENDATION_STATUS_EXPIRED
    assert read.recommendation.decided_at == second.expires_at
    assert len(events(queries, portfolio_id)) == 3

    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id=second.recommendation_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["EXPIRED"]
    # The expiry is committed although the call failed, dated at the expiry.
    history = events(queries, portfolio_id)
    expired = {e.recommendation_id: e for e in history if e.event_type == "EXPIRED"}
    assert set(expired) == {first.recommendation_id, second.recommendation_id}
    assert expired[second.recommendation_id].timestamp == second.expires_at
    assert all(e.status == tpb.RECOMMENDATION_STATUS_EXPIRED for e in expired.values())
    statuses = db.execute(
        "SELECT DISTINCT status FROM rebalance_recommendations WHERE portfolio_id = %s", [portfolio_id]
    ).fetchall()
    assert statuses == [("EXPIRED",)]
    error = expect_error(
        trading.RejectRebalance,
        tpb.RejectRebalanceRequest(recommendation_id=second.recommendation_id, reason="x"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["EXPIRED"]
    assert len(events(queries, portfolio_id)) == 4  # no second EXPIRED event


# --- idempotency and failures -------------------------------------------------------------------------------


def test_a_repeated_request_id_replays_the_stored_recommendation(
    trading: Any, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("replay")
    setup(trading, portfolio_id, [tpb.Position(symbol="AAPL", shares=10)], 1000.0, approval_limit=100.0)
    request = tpb.GenerateRebalanceRequest(
        portfolio_id=portfolio_id, target_weights={"AAPL": 0.2}, prices={"AAPL": 120.0}, request_id="r-1"
    )
    first = trading.GenerateRebalance(request)
    again = trading.GenerateRebalance(request)
    assert not first.replayed and again.replayed
    assert again.recommendation == first.recommendation
    trading.ApproveRebalance(tpb.ApproveRebalanceRequest(recommendation_id=first.recommendation.recommendation_id))
    after_approval = trading.GenerateRebalance(request)
    assert after_approval.replayed
    assert after_approval.recommendation.status == tpb.RECOMMENDATION_STATUS_APPROVED  # its current state
    assert rows(db, portfolio_id)["rebalance_recommendations"] == 1

    changed = tpb.GenerateRebalanceRequest()
    changed.CopyFrom(request)
    changed.prices["AAPL"] = 121.0
    error = expect_error(trading.GenerateRebalance, changed, grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == ["request_id"]
    assert rows(db, portfolio_id) == {
        "portfolio_holdings": 1,
        "rebalance_policies": 1,
        "rebalance_recommendations": 1,
        "rebalance_events": 2,
    }


def _upsert(**fields: Any) -> tpb.UpsertHoldingsRequest:
    return tpb.UpsertHoldingsRequest(**fields)


INVALID_HOLDINGS: dict[str, tuple[list[tpb.Position], float, str]] = {
    "negative shares": ([tpb.Position(symbol="AAPL", shares=-1)], 0.0, "positions[0].shares"),
    "zero price": ([tpb.Position(symbol="AAPL", shares=1, price=0.0)], 0.0, "positions[0].price"),
    "duplicate symbol": (
        [tpb.Position(symbol="AAPL", shares=1), tpb.Position(symbol="AAPL", shares=2)],
        0.0,
        "positions[1].symbol",
    ),
    "lots not adding up": (
        [position("KO", 10, ("a", 4, 50.0, "2021-01-04"), ("b", 5, 55.0, "2021-02-01"))],
        0.0,
        "positions[0].lots",
    ),
    "lot without acquisition date": (
        [tpb.Position(symbol="KO", shares=4, lots=[tpb.TaxLot(lot_id="a", shares=4, cost_basis=50.0)])],
        0.0,
        "positions[0].lots[0].acquired",
    ),
    "non-positive cost basis": (
        [position("KO", 4, ("a", 4, 0.0, "2021-01-04"))],
        0.0,
        "positions[0].lots[0].cost_basis",
    ),
    "negative cash": ([], -5.0, "cash"),
}


@pytest.mark.parametrize("case", list(INVALID_HOLDINGS))
def test_invalid_holdings_name_the_field_and_keep_the_stored_snapshot(
    case: str, trading: Any, db: psycopg.Connection[Any]
) -> None:
    portfolio_id = unique("bad-holdings")
    trading.UpsertHoldings(
        tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=[tpb.Position(symbol="X", shares=3)], cash=1.0)
    )
    positions, cash, field = INVALID_HOLDINGS[case]
    error = expect_error(
        trading.UpsertHoldings,
        tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=positions, cash=cash),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == [field]
    row = db.execute(
        "SELECT positions, cash FROM portfolio_holdings WHERE portfolio_id = %s", [portfolio_id]
    ).fetchone()
    stored_position = {"symbol": "X", "shares": 3.0, "price": None, "lots": []}
    assert row == ({"schema_version": 1, "positions": [stored_position]}, 1.0)


INVALID_POLICIES: dict[str, tuple[tpb.RebalancePolicy, str]] = {
    "negative threshold": (tpb.RebalancePolicy(drift_threshold=-0.1), "policy.drift_threshold"),
    "negative band": (tpb.RebalancePolicy(bands={"KO": tpb.Band(relative=-1)}), "policy.bands[KO].relative"),
    "tax rate above 1": (tpb.RebalancePolicy(short_term_tax_rate=1.5), "policy.short_term_tax_rate"),
    "negative approval limit": (tpb.RebalancePolicy(approval_limit=-1), "policy.approval_limit"),
    "zero approval ttl": (tpb.RebalancePolicy(approval_ttl=duration_pb2.Duration(seconds=0)), "policy.approval_ttl"),
    "NaN commission": (tpb.RebalancePolicy(commission_per_trade=float("nan")), "policy.commission_per_trade"),
}


@pytest.mark.parametrize("case", list(INVALID_POLICIES))
def test_invalid_policy_names_the_field(case: str, trading: Any, db: psycopg.Connection[Any]) -> None:
    portfolio_id = unique("bad-policy")
    policy, field = INVALID_POLICIES[case]
    error = expect_error(
        trading.UpsertRebalancePolicy,
        tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=policy),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == [field]
    assert rows(db, portfolio_id)["rebalance_policies"] == 0


INVALID_GENERATE: dict[str, tuple[dict[str, Any], str]] = {
    "zero price": ({"prices": {"AAPL": 0.0}}, "prices[AAPL]"),
    "negative target": ({"target_weights": {"AAPL": -0.1}}, "target_weights[AAPL]"),
    "targets above 1": ({"target_weights": {"AAPL": 0.7, "KO": 0.4}}, "target_weights"),
    "zero ADV": ({"market": {"AAPL": tpb.MarketInputs(adv=0.0)}}, "market[AAPL].adv"),
    "as-of before a lot": ({"as_of": ts("2019-01-02T00:00:00")}, "as_of"),
}


@pytest.mark.parametrize("case", list(INVALID_GENERATE))
def test_invalid_rebalance_request_names_the_field_and_writes_nothing(
    case: str, trading: Any, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("bad-generate")
    setup(trading, portfolio_id, [position("AAPL", 10, ("a", 10, 100.0, "2020-01-02"))], 100.0)
    fields, field = INVALID_GENERATE[case]
    request = tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, **fields)
    if "target_weights" not in fields:
        request.target_weights["AAPL"] = 0.5
    error = expect_error(trading.GenerateRebalance, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == [field]
    if case == "zero price":
        error = expect_error(
            trading.CheckDrift,
            tpb.CheckDriftRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.5}, prices={"AAPL": 0.0}),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field_violations(error) == [field]
    counts = rows(db, portfolio_id)
    assert counts["rebalance_recommendations"] == counts["rebalance_events"] == 0


def test_missing_inputs_are_failed_preconditions_and_write_nothing(
    trading: Any, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    portfolio_id = unique("missing")
    error = expect_error(
        trading.GenerateRebalance,
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.5}),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["NO_HOLDINGS"]
    setup(trading, portfolio_id, [tpb.Position(symbol="AAPL", shares=10), tpb.Position(symbol="NOPE", shares=5)], 0.0)
    error = expect_error(
        trading.GenerateRebalance,
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.5, "NOPE2": 0.2}),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["MISSING_MARKET_DATA", "MISSING_MARKET_DATA"]
    assert "NOPE" in (error.details() or "") and "NOPE2" in (error.details() or "")
    # Prices before the first stored close do not exist either.
    error = expect_error(
        trading.GenerateRebalance,
        tpb.GenerateRebalanceRequest(
            portfolio_id=portfolio_id,
            target_weights={"AAPL": 0.5},
            prices={"NOPE": 3.0},
            as_of=ts("1970-01-05T00:00:00"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["MISSING_MARKET_DATA"]
    error = expect_error(
        trading.GenerateRebalance,
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, prices={"NOPE": 3.0}),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["NO_TARGET"]
    counts = rows(db, portfolio_id)
    assert counts["rebalance_recommendations"] == counts["rebalance_events"] == 0

    # With every price given the same portfolio rebalances.
    ok = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 1.0}, prices={"NOPE": 3.0})
    ).recommendation
    # NOPE (no band) is sold in full; the 15 raised buy no whole AAPL share.
    assert [(t.symbol, t.side, t.shares, t.price) for t in ok.trades] == [("NOPE", tpb.TRADE_SIDE_SELL, 5, 3.0)]


def test_participation_cap_and_cost_limit_hold_a_costly_recommendation_for_approval(
    trading: Any, queries: Any, stored_prices: dict[str, str], closes: pd.DataFrame
) -> None:
    """$100,000 of cash into 50 % AAPL at the 2022-06-30 close, AAPL trading 100 shares a day.

    A 10 % participation cap allows 10 shares (not the ~365 wanted). Their estimated cost (a $1 commission, half of
    the 10 bp spread, square-root impact) is far above 20 bp of the trade value: the recommendation waits for
    approval although its value is under the $10,000 approval limit. With a loose cost limit it is auto-approved.
    """
    market = {"AAPL": tpb.MarketInputs(adv=100.0, daily_volatility=0.02, spread_bps=10.0)}
    outcomes = {}
    for limit in (20.0, 1e6):
        portfolio_id = unique("capped")
        stored = setup(
            trading, portfolio_id, [], 100_000.0, commission_per_trade=1.0, max_participation=0.1, max_cost_bps=limit
        )
        assert (stored.max_participation, stored.max_cost_bps) == (0.1, limit)
        outcomes[limit] = trading.GenerateRebalance(
            tpb.GenerateRebalanceRequest(
                portfolio_id=portfolio_id, target_weights={"AAPL": 0.5}, market=market, as_of=ts("2022-06-30T15:00:00")
            )
        ).recommendation
    held, loose = outcomes[20.0], outcomes[1e6]
    for recommendation in (held, loose):
        (trade,) = recommendation.trades
        assert (trade.symbol, trade.shares, trade.participation_capped) == ("AAPL", 10.0, True)
        assert trade.price == pytest.approx(float(closes["AAPL"].loc["2022-06-30"]))
    cost_bps = 1e4 * held.total_cost / held.total_trade_value
    assert cost_bps > 20.0 and held.total_trade_value < 10_000.0
    assert held.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL
    assert held.hold_reason == f"COST_ABOVE_LIMIT: estimated cost {cost_bps:.1f} bp of the trade value, limit 20 bp"
    assert (loose.status, loose.hold_reason) == (tpb.RECOMMENDATION_STATUS_AUTO_APPROVED, "")
    # The query side reads both back from the stored recommendation.
    read = queries.GetRebalance(query_pb.GetRebalanceRequest(recommendation_id=held.recommendation_id)).recommendation
    assert (read.hold_reason, read.trades[0].participation_capped) == (held.hold_reason, True)


def test_a_kill_switch_holds_every_approval_and_no_order_is_queued(
    trading: Any, grpc_channel: grpc.Channel, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    """While a portfolio's kill-switch is engaged no rebalance of it is approved and no order is queued.

    ApproveRebalance is refused (FAILED_PRECONDITION, KILL_SWITCH), and a recommendation within the approval limit
    (auto-approved without the switch) waits for approval with the reason. Released, the approval goes through and
    queues the orders.
    """
    rotation = rot_grpc.RotationCommandServiceStub(grpc_channel)
    held, auto = unique("switch"), unique("switch-auto")
    pending = _pending(trading, held)
    setup(trading, auto, [tpb.Position(symbol="AAPL", shares=10)], 1000.0, approval_limit=1e9)

    def switch(portfolio_id: str, engaged: bool) -> None:
        rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=engaged, reason="t"))

    def outbox(portfolio_id: str) -> int:
        row = db.execute("SELECT count(*) FROM order_outbox WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
        assert row is not None
        return int(row[0])

    switch(held, True)
    switch(auto, True)
    error = expect_error(
        trading.ApproveRebalance,
        tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert precondition_types(error) == ["KILL_SWITCH"]
    waiting = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(portfolio_id=auto, target_weights={"AAPL": 0.0})
    ).recommendation
    assert waiting.total_trade_value <= waiting.approval_limit
    assert waiting.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL
    assert waiting.hold_reason.startswith("KILL_SWITCH")
    assert outbox(held) == outbox(auto) == 0

    switch(held, False)
    switch(auto, False)
    for recommendation in (pending, waiting):
        approved = trading.ApproveRebalance(
            tpb.ApproveRebalanceRequest(recommendation_id=recommendation.recommendation_id)
        ).recommendation
        assert approved.status == tpb.RECOMMENDATION_STATUS_APPROVED
    assert outbox(held) == len(pending.trades) >= 1
    assert outbox(auto) == len(waiting.trades) >= 1
