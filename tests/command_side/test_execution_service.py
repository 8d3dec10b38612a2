"""ExecutionCommandService through a real gRPC channel: the loop closed from a rotation decision to holdings.

The portfolio is the hand-worked one of ``tests.command_side.test_rotation_service`` (1000 WMT, three times its
value in cash; the cycle buys a quarter slot of three of KO, PEP, PG, JNJ). Expected fills follow the paper
broker's documented rule with the data file's closes: price × (1 + 5 bp), buys in symbol order, each capped at the
whole shares the cash left pays for at that price plus the commission per share.
"""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pandas as pd
import psycopg
import pytest

from stratopt.v1 import execution_service_pb2 as ex_pb
from stratopt.v1 import execution_service_pb2_grpc as ex_grpc
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc
from tests.command_side.test_rotation_service import (
    CLOSE,
    DATA,
    HELD,
    IN_WINDOW,
    portfolio,
    rotation,
    run,
    stamp,
)

__all__ = ["portfolio", "rotation"]  # fixtures used below

pytestmark = pytest.mark.integration

SPREAD_BPS, COMMISSION = 10.0, 0.005


@pytest.fixture(scope="module")
def execution(grpc_channel: grpc.Channel) -> ex_grpc.ExecutionCommandServiceStub:
    return ex_grpc.ExecutionCommandServiceStub(grpc_channel)


def execute(execution: ex_grpc.ExecutionCommandServiceStub, portfolio_id: str) -> ex_pb.ExecuteOrdersResponse:
    response: ex_pb.ExecuteOrdersResponse = execution.ExecuteOrders(
        ex_pb.ExecuteOrdersRequest(
            portfolio_id=portfolio_id,
            as_of=stamp(IN_WINDOW),
            settings=ex_pb.PaperBrokerSettings(spread_bps=SPREAD_BPS, commission_per_share=COMMISSION),
        )
    )
    return response


def test_paper_fills_update_holdings_and_the_next_cycle_holds(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
    db: psycopg.Connection[Any],
) -> None:
    portfolio_id, _ = portfolio
    decision = run(rotation, portfolio_id).decision
    orders = sorted(decision.orders, key=lambda o: o.symbol)
    executed = execute(execution, portfolio_id)

    cash = 3 * 1000 * CLOSE[HELD]
    expected = []
    for order in orders:  # the documented rule, worked here from the file's closes
        price = CLOSE[order.symbol] * (1 + SPREAD_BPS / 2 / 10_000)
        shares = min(order.shares, math.floor(cash / (price + COMMISSION)))
        cash -= shares * price + COMMISSION * shares
        expected.append((order.order_id, order.symbol, shares, price))
    assert [(f.order_id, f.symbol, f.shares) for f in executed.fills] == [(o, s, n) for o, s, n, _ in expected]
    assert [f.price for f in executed.fills] == pytest.approx([p for *_, p in expected], rel=1e-12)
    assert executed.cash == pytest.approx(cash, abs=1e-6)
    assert {o.status for o in executed.orders} <= {"FILLED", "CANCELLED"}

    # The stored holdings are what a broker would report: Reconcile finds no break ...
    positions = [ex_pb.ReportedPosition(symbol=HELD, shares=1000)] + [
        ex_pb.ReportedPosition(symbol=s, shares=n) for _, s, n, _ in expected
    ]
    clean = execution.Reconcile(ex_pb.ReconcileRequest(portfolio_id=portfolio_id, positions=positions, cash=cash))
    assert clean.reconciled and list(clean.breaks) == []
    # ... and one share missing at the broker is one break.
    positions[1].shares -= 1
    broken = execution.Reconcile(ex_pb.ReconcileRequest(portfolio_id=portfolio_id, positions=positions))
    assert [(b.symbol, b.difference) for b in broken.breaks] == [(expected[0][1], -1.0)] and not broken.reconciled

    # Each bought lot is the fill: its shares, the fill price plus the commission per share.
    lots = db.execute(
        "SELECT p->>'symbol', l->>'lot_id', (l->>'shares')::float8, (l->>'cost_basis')::float8 "
        "FROM portfolio_holdings, jsonb_array_elements(positions->'positions') p, jsonb_array_elements(p->'lots') l "
        "WHERE portfolio_id = %s ORDER BY 1",
        (portfolio_id,),
    ).fetchall()
    assert [(s, n) for s, _, n, _ in lots] == [(s, n) for _, s, n, _ in expected]
    assert [c for *_, c in lots] == pytest.approx([p + COMMISSION for *_, p in expected], rel=1e-12)

    # The loop is closed: at the target now, the next cycle holds below the drift trigger, and nothing is left
    # to execute.
    again = run(rotation, portfolio_id, IN_WINDOW.replace(minute=54)).decision
    assert (again.action, again.policy_reason) == (rot_pb.ROTATION_ACTION_HOLD, "BELOW_DRIFT_TRIGGER")
    assert list(execute(execution, portfolio_id).fills) == []
    events = db.execute(
        "SELECT event_type, count(*) FROM execution_events WHERE portfolio_id = %s GROUP BY 1 ORDER BY 1",
        (portfolio_id,),
    ).fetchall()
    assert sum(n for _, n in events) >= len(orders)


def test_two_brokers_at_once_fill_each_order_once(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
    db: psycopg.Connection[Any],
) -> None:
    portfolio_id, _ = portfolio
    decision = run(rotation, portfolio_id).decision
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: execute(execution, portfolio_id), range(2)))
    filled = sorted(f.order_id for r in results for f in r.fills)
    assert filled == sorted(o.order_id for o in decision.orders)
    row = db.execute("SELECT count(*) FROM fills WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
    assert row is not None and row[0] == len(decision.orders)


def test_the_kill_switch_stops_execution(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
    db: psycopg.Connection[Any],
) -> None:
    portfolio_id, _ = portfolio
    run(rotation, portfolio_id)
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=True, reason="halt"))
    with pytest.raises(grpc.RpcError) as error:
        execute(execution, portfolio_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "kill-switch" in str(error.value.details())
    statuses = db.execute(
        "SELECT DISTINCT status FROM order_outbox WHERE portfolio_id = %s", (portfolio_id,)
    ).fetchall()
    assert statuses == [("NEW",)]
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=False, reason="resume"))
    assert len(execute(execution, portfolio_id).fills) > 0


def test_reported_fills_are_applied_once_and_checked_against_the_order(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
) -> None:
    portfolio_id, _ = portfolio
    order = sorted(run(rotation, portfolio_id).decision.orders, key=lambda o: o.symbol)[0]
    first_half = math.floor(order.shares / 2)

    def report(fill_id: str, shares: float, **fields: Any) -> ex_pb.ReportFillsResponse:
        fill = ex_pb.Fill(fill_id=fill_id, order_id=order.order_id, symbol=order.symbol, side="BUY", shares=shares,
                          price=CLOSE[order.symbol], commission=1.0, filled_at=stamp(IN_WINDOW))  # fmt: skip
        for name, value in fields.items():
            setattr(fill, name, value)
        response: ex_pb.ReportFillsResponse = execution.ReportFills(
            ex_pb.ReportFillsRequest(portfolio_id=portfolio_id, fills=[fill])
        )
        return response

    tag = uuid.uuid4().hex[:6]
    first = report(f"{tag}-1", first_half)
    assert (first.applied, first.duplicates, first.orders[0].status) == (1, 0, "PARTIALLY_FILLED")
    repeat = report(f"{tag}-1", first_half)
    assert (repeat.applied, repeat.duplicates, repeat.cash) == (0, 1, pytest.approx(first.cash))
    # The id reused for a different fill is refused, not counted as a repeat (that fill would be lost).
    for fields in ({"shares": first_half - 1}, {"price": CLOSE[order.symbol] + 0.01}):
        with pytest.raises(grpc.RpcError) as error:
            report(f"{tag}-1", **{"shares": first_half, **fields})
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "fill_id" in str(error.value.details()) and "another fill" in str(error.value.details())
    for fields, code in (
        ({"shares": order.shares}, grpc.StatusCode.FAILED_PRECONDITION),  # more than is left
        ({"side": "SELL"}, grpc.StatusCode.FAILED_PRECONDITION),  # not the order's side
        ({"order_id": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as error:
            report(f"{tag}-x", **{"shares": first_half, **fields})
        assert error.value.code() == code, error.value.details()
    rest = report(f"{tag}-2", order.shares - first_half)
    assert rest.orders[0].status == "FILLED" and rest.orders[0].filled_shares == order.shares
    assert rest.cash == pytest.approx(first.cash - (order.shares - first_half) * CLOSE[order.symbol] - 1.0, abs=1e-6)


def test_a_broker_adapter_claims_each_order_once_and_reports_its_fills(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
    db: psycopg.Connection[Any],
) -> None:
    portfolio_id, _ = portfolio
    orders = {o.order_id: o for o in run(rotation, portfolio_id).decision.orders}

    def claim(limit: int = 0) -> list[ex_pb.ClaimedOrder]:
        response = execution.ClaimOrders(ex_pb.ClaimOrdersRequest(portfolio_id=portfolio_id, limit=limit))
        return list(response.orders)

    # The kill-switches hold the orders back: the global one refuses, a portfolio's leaves them NEW.
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(engaged=True, reason="halt"))
    try:
        with pytest.raises(grpc.RpcError) as error:
            claim()
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(engaged=False, reason="resume"))
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=True, reason="halt"))
    assert claim() == []
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=False, reason="resume"))

    # Two adapters at once: every order to exactly one of them, SENT, and no longer the paper broker's.
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: claim(2), range(2))
    claimed = [o.order_id for o in first + second]
    assert sorted(claimed) == sorted(orders) and len(set(claimed)) == len(claimed)
    assert all((o.symbol, o.shares) == (orders[o.order_id].symbol, orders[o.order_id].shares) for o in first + second)
    rows = db.execute(
        "SELECT DISTINCT status, claimed_by FROM order_outbox WHERE portfolio_id = %s", (portfolio_id,)
    ).fetchall()
    assert rows == [("SENT", "local")]
    assert list(execute(execution, portfolio_id).fills) == []
    order = first[0]
    filled = execution.ReportFills(
        ex_pb.ReportFillsRequest(
            portfolio_id=portfolio_id,
            fills=[
                ex_pb.Fill(
                    fill_id=f"broker-{order.order_id}",
                    order_id=order.order_id,
                    symbol=order.symbol,
                    side=order.side,
                    shares=order.shares,
                    price=order.reference_price,
                    filled_at=stamp(IN_WINDOW),
                )
            ],
        )
    )
    assert [(o.order_id, o.status) for o in filled.orders] == [(order.order_id, "FILLED")]


def test_the_square_root_impact_prices_each_fill_from_its_size_volume_and_volatility(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
    db: psycopg.Connection[Any],
) -> None:
    """Fill price = close × (1 + spread/2 + Y σ sqrt(Q / ADV)), σ of the file's last 20 daily returns (ddof 1).

    The bundled prices have no volumes: without a given average daily volume the call is refused, naming the
    symbol, and nothing is filled.
    """
    portfolio_id, _ = portfolio
    orders = sorted(run(rotation, portfolio_id).decision.orders, key=lambda o: o.symbol)
    symbols = [o.symbol for o in orders]
    adv = {s: 50_000.0 * (i + 1) for i, s in enumerate(symbols)}
    coefficient, lookback = 0.7, 20

    def settings(volumes: dict[str, float]) -> ex_pb.PaperBrokerSettings:
        return ex_pb.PaperBrokerSettings(
            spread_bps=SPREAD_BPS, commission_per_share=COMMISSION,
            impact_model=ex_pb.PAPER_IMPACT_MODEL_SQUARE_ROOT, impact_coefficient=coefficient,
            impact_lookback_periods=lookback, average_daily_volume=volumes,
        )  # fmt: skip

    request = ex_pb.ExecuteOrdersRequest(portfolio_id=portfolio_id, as_of=stamp(IN_WINDOW))
    request.settings.CopyFrom(settings({s: adv[s] for s in symbols[:-1]}))
    with pytest.raises(grpc.RpcError) as error:
        execution.ExecuteOrders(request)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert symbols[-1] in (error.value.details() or "")
    assert db.execute("SELECT count(*) FROM fills WHERE portfolio_id = %s", (portfolio_id,)).fetchone() == (0,)

    request.settings.CopyFrom(settings(adv))
    executed = execution.ExecuteOrders(request)

    closes = pd.read_csv(DATA, index_col=0, parse_dates=True).loc[:"2022-12-28"]
    cash = 3 * 1000 * CLOSE[HELD]
    expected = []
    for order in orders:  # the documented rule, from the file's closes
        returns = closes[order.symbol].iloc[-(lookback + 1) :].pct_change().dropna()
        sigma = float(np.std(returns.to_numpy(), ddof=1))

        def price_of(shares: float, symbol: str = order.symbol, sigma: float = sigma) -> float:
            impact = coefficient * sigma * math.sqrt(shares / adv[symbol])
            return CLOSE[symbol] * (1 + SPREAD_BPS / 2 / 10_000 + impact)

        shares, price = order.shares, price_of(order.shares)
        affordable = math.floor(cash / (price + COMMISSION))
        if affordable < shares:
            shares, price = affordable, price_of(affordable)
        cash -= shares * price + COMMISSION * shares
        expected.append((order.symbol, shares, price))
    assert [(f.symbol, f.shares) for f in executed.fills] == [(s, n) for s, n, _ in expected]
    assert [f.price for f in executed.fills] == pytest.approx([p for *_, p in expected], rel=1e-12)
    impact_bps = [(p / CLOSE[s] - 1 - SPREAD_BPS / 2 / 10_000) * 1e4 for s, _, p in expected]
    assert all(b > 4 for b in impact_bps)  # 4.8 to 6.8 bp here: the impact is material, not rounding
    assert executed.cash == pytest.approx(cash, abs=1e-6)


def test_a_rebalance_sell_relieves_the_lots_its_recommendation_chose(
    trading: Any, execution: ex_grpc.ExecutionCommandServiceStub, db: psycopg.Connection[Any]
) -> None:
    """HIFO picks the $150 lot, then the $50 one; two partial fills relieve them in that order, not first in first out.

    100 BBB in lot ``old`` (50 @ $50, 2020) and lot ``new`` (50 @ $150, 2023), no cash; target 25 % at $100: sell
    75. The gains are worked by hand from the lots: fill 1 (30 shares) from ``new``: 30 × (100 − 150) = −1,500;
    fill 2 (45) 20 from ``new`` and 25 from ``old``: −1,000 + 1,250 = +250; left: 25 of ``old``. First in, first
    out would have booked +1,500 and −250 and left 25 of ``new``.
    """
    from google.protobuf.timestamp_pb2 import Timestamp

    from stratopt.v1 import trading_service_pb2 as tpb

    def at(year: int, month: int, day: int) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(pd.Timestamp(year=year, month=month, day=day, tz="UTC").to_pydatetime())
        return stamp

    portfolio_id = f"lots-{uuid.uuid4().hex[:8]}"
    lots = [tpb.TaxLot(lot_id="old", shares=50, cost_basis=50.0, acquired=at(2020, 1, 2)),
            tpb.TaxLot(lot_id="new", shares=50, cost_basis=150.0, acquired=at(2023, 1, 3))]  # fmt: skip
    trading.UpsertHoldings(
        tpb.UpsertHoldingsRequest(
            portfolio_id=portfolio_id, positions=[tpb.Position(symbol="BBB", shares=100, lots=lots)], cash=0.0
        )
    )
    policy = tpb.RebalancePolicy(approval_limit=1e9, lot_method=tpb.LOT_METHOD_HIFO)
    trading.UpsertRebalancePolicy(tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=policy))
    recommendation = trading.GenerateRebalance(
        tpb.GenerateRebalanceRequest(
            portfolio_id=portfolio_id, target_weights={"BBB": 0.25}, prices={"BBB": 100.0}, request_id="hifo"
        )
    ).recommendation
    (trade,) = recommendation.trades
    assert (trade.side, trade.shares) == (tpb.TRADE_SIDE_SELL, 75)
    assert [(lot.lot_id, lot.shares) for lot in trade.lots] == [("new", 50), ("old", 25)]
    (order,) = execution.ClaimOrders(ex_pb.ClaimOrdersRequest(portfolio_id=portfolio_id)).orders
    gains = []
    for k, shares in enumerate((30, 45)):
        fill = ex_pb.Fill(fill_id=f"{portfolio_id}-{k}", order_id=order.order_id, symbol="BBB", side="SELL",
                          shares=shares, price=100.0, filled_at=at(2025, 1, 2))  # fmt: skip
        execution.ReportFills(ex_pb.ReportFillsRequest(portfolio_id=portfolio_id, fills=[fill]))
        row = db.execute("SELECT realised_gain FROM fills WHERE fill_id = %s", (fill.fill_id,)).fetchone()
        assert row is not None
        gains.append(row[0])
    assert gains == [pytest.approx(-1500.0, abs=1e-9), pytest.approx(250.0, abs=1e-9)]
    assert sum(gains) == pytest.approx(sum(lot.gain for lot in trade.lots), abs=1e-9)  # what was approved
    stored = db.execute("SELECT positions FROM portfolio_holdings WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
    assert stored is not None
    (position,) = stored[0]["positions"]
    assert [(lot["lot_id"], lot["shares"]) for lot in position["lots"]] == [("old", 25)]


def test_a_second_rebalance_before_the_first_ones_fills_plans_from_the_expected_position(
    trading: Any, execution: ex_grpc.ExecutionCommandServiceStub, db: psycopg.Connection[Any]
) -> None:
    """A rebalance while the last one's BUY is open orders nothing more.

    $10,000 of cash, target 50 % AAA at $100: the first rebalance buys 50; while that order is NEW, SENT or
    partly filled, another rebalance to the same target orders nothing (before: 50 more, twice the target).
    """
    from stratopt.v1 import trading_service_pb2 as tpb

    portfolio_id = f"twice-{uuid.uuid4().hex[:8]}"
    trading.UpsertHoldings(tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=[], cash=10_000.0))
    policy = tpb.RebalancePolicy(approval_limit=1e9)
    trading.UpsertRebalancePolicy(tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=policy))

    def rebalance(request_id: str, *, backdated: bool = False) -> list[tuple[str, int, float]]:
        request = tpb.GenerateRebalanceRequest(
            portfolio_id=portfolio_id, target_weights={"AAA": 0.5}, prices={"AAA": 100.0}, request_id=request_id
        )
        if backdated:  # dated before the open order was made: its lot counts, as acquired on that date
            request.as_of.FromDatetime(pd.Timestamp("2022-12-28", tz="UTC").to_pydatetime())
        recommendation = trading.GenerateRebalance(request).recommendation
        assert recommendation.status == tpb.RECOMMENDATION_STATUS_AUTO_APPROVED
        return [(t.symbol, t.side, t.shares) for t in recommendation.trades]

    assert rebalance("first") == [("AAA", tpb.TRADE_SIDE_BUY, 50)]
    assert rebalance("second") == []  # the first one's order is NEW
    assert rebalance("backdated", backdated=True) == []
    (order,) = execution.ClaimOrders(ex_pb.ClaimOrdersRequest(portfolio_id=portfolio_id)).orders
    assert rebalance("third") == []  # SENT
    fill = ex_pb.Fill(fill_id=f"{portfolio_id}-1", order_id=order.order_id, symbol="AAA", side="BUY", shares=20,
                      price=100.0, filled_at=order.created_at)  # fmt: skip
    execution.ReportFills(ex_pb.ReportFillsRequest(portfolio_id=portfolio_id, fills=[fill]))
    assert rebalance("fourth") == []  # PARTIALLY_FILLED: 20 held, 30 to come
    rows = db.execute("SELECT side, shares FROM order_outbox WHERE portfolio_id = %s", (portfolio_id,)).fetchall()
    assert rows == [("BUY", 50.0)]


def test_cancelled_orders_stop_counting_and_take_no_more_fills(
    rotation: rot_grpc.RotationCommandServiceStub,
    execution: ex_grpc.ExecutionCommandServiceStub,
    portfolio: tuple[str, str],
    db: psycopg.Connection[Any],
) -> None:
    """The first cycle's three BUYs go out; one fills, one fills in part, one not: the last two are cancelled.

    Their states come back in the request's order, with what had filled; a repeat changes nothing; the FILLED one
    and an unknown id are refused naming the id's index; a later fill of a cancelled order is refused; and the next
    cycle buys again what the cancelled orders will no longer buy.
    """
    portfolio_id, _ = portfolio
    first = run(rotation, portfolio_id, request_id="first").decision
    filled, partly, unfilled = sorted(first.orders, key=lambda o: o.symbol)
    claimed = execution.ClaimOrders(ex_pb.ClaimOrdersRequest(portfolio_id=portfolio_id)).orders
    assert len(claimed) == 3

    def fill(order: Any, shares: float, k: int) -> ex_pb.Fill:
        return ex_pb.Fill(fill_id=f"{portfolio_id}-{k}", order_id=order.order_id, symbol=order.symbol, side="BUY",
                          shares=shares, price=CLOSE[order.symbol], filled_at=stamp(IN_WINDOW))  # fmt: skip

    half = math.floor(partly.shares / 2)
    execution.ReportFills(
        ex_pb.ReportFillsRequest(
            portfolio_id=portfolio_id, fills=[fill(filled, filled.shares, 1), fill(partly, half, 2)]
        )
    )

    def cancel(*order_ids: str) -> ex_pb.CancelOrdersResponse:
        response: ex_pb.CancelOrdersResponse = execution.CancelOrders(
            ex_pb.CancelOrdersRequest(portfolio_id=portfolio_id, order_ids=list(order_ids), reason="broker cancelled")
        )
        return response

    cancelled = cancel(unfilled.order_id, partly.order_id)
    assert [(o.order_id, o.status, o.filled_shares) for o in cancelled.orders] == [
        (unfilled.order_id, "CANCELLED", 0.0),
        (partly.order_id, "CANCELLED", half),
    ]
    assert cancel(partly.order_id, unfilled.order_id).orders[0].status == "CANCELLED"  # a repeat: as it was
    events = db.execute(
        "SELECT payload->>'cancelled_by', payload->>'reason' FROM execution_events "
        "WHERE portfolio_id = %s AND event_type = 'CANCELLED'",
        (portfolio_id,),
    ).fetchall()
    assert sorted(events) == [("local", "broker cancelled")] * 2  # once each, the caller from its credentials
    for order_ids, code, index in (
        ((unfilled.order_id, filled.order_id), grpc.StatusCode.FAILED_PRECONDITION, 1),
        ((str(uuid.uuid4()),), grpc.StatusCode.NOT_FOUND, 0),
    ):
        with pytest.raises(grpc.RpcError) as error:
            cancel(*order_ids)
        assert error.value.code() == code and f"order_ids[{index}]" in str(error.value.details())
    with pytest.raises(grpc.RpcError) as error:
        execution.ReportFills(ex_pb.ReportFillsRequest(portfolio_id=portfolio_id, fills=[fill(unfilled, 1, 3)]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "CANCELLED" in str(error.value.details())

    # The next cycle counts only what filled: it buys the two names again, in whole shares of what is missing.
    again = {o.symbol: o for o in run(rotation, portfolio_id, request_id="again").decision.orders}
    assert set(again) == {partly.symbol, unfilled.symbol}
    assert again[unfilled.symbol].shares == pytest.approx(unfilled.shares, abs=1)
    assert again[partly.symbol].shares == pytest.approx(partly.shares - half, abs=1)


def test_a_rebalance_while_a_buy_costs_more_than_planned_starts_from_no_cash(
    trading: Any, execution: ex_grpc.ExecutionCommandServiceStub
) -> None:
    """Open buys that cost more than the cash left: the next rebalance plans from no cash.

    $10,000 of cash, target 99 % AAA at $100: BUY 99. 50 fill at $103, so the 49 still open (at $100) would leave
    -$50 of cash; before, the rebalance refused that with INVALID_ARGUMENT 'cash', a field the request lacks.
    """
    from stratopt.v1 import trading_service_pb2 as tpb

    portfolio_id = f"dear-{uuid.uuid4().hex[:8]}"
    trading.UpsertHoldings(tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=[], cash=10_000.0))
    policy = tpb.RebalancePolicy(approval_limit=1e9)
    trading.UpsertRebalancePolicy(tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=policy))
    request = tpb.GenerateRebalanceRequest(
        portfolio_id=portfolio_id, target_weights={"AAA": 0.99}, prices={"AAA": 100.0}
    )
    (trade,) = trading.GenerateRebalance(request).recommendation.trades
    assert (trade.side, trade.shares) == (tpb.TRADE_SIDE_BUY, 99)
    (order,) = execution.ClaimOrders(ex_pb.ClaimOrdersRequest(portfolio_id=portfolio_id)).orders
    fill = ex_pb.Fill(fill_id=f"{portfolio_id}-1", order_id=order.order_id, symbol="AAA", side="BUY", shares=50,
                      price=103.0, filled_at=order.created_at)  # fmt: skip
    execution.ReportFills(ex_pb.ReportFillsRequest(portfolio_id=portfolio_id, fills=[fill]))
    again = trading.GenerateRebalance(request).recommendation
    assert [t.side for t in again.trades] != [tpb.TRADE_SIDE_BUY]  # nothing more is bought
