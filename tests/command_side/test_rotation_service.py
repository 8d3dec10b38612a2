"""RotationCommandService through a real gRPC channel, on the bundled S&P 500 prices stored in PostgreSQL.

Each case is worked by hand from the data file and the configured parameters: the scores are far enough apart
that the ranking does not depend on σ (the names are 16 large caps whose volatilities are within a factor of
about 2), so which names are bought, held or sold, and the whole-share orders (``floor(weight × value / price)``
at the file's close of 2022-12-28), follow from the parameters alone.
"""

from __future__ import annotations

import gzip
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import rotation_service_pb2_grpc as rot_grpc
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "sp500_dataset.csv.gz"
NEW_YORK = ZoneInfo("America/New_York")
# In the 15:50 window of Wednesday 2022-12-28 (the file's last day), New York time.
IN_WINDOW = datetime(2022, 12, 28, 15, 52, tzinfo=NEW_YORK)
UNIVERSE = ("KO", "PEP", "PG", "JNJ", "WMT", "MRK", "PFE", "XOM", "CVX", "HD", "UNH", "LLY", "JPM", "MSFT",
            "AAPL", "BAC")  # fmt: skip
TOPS = ("KO", "PEP", "PG", "JNJ")  # score 1000: ranks 1-4
HELD = "WMT"  # score 600: rank 5


def closes_on(day: str) -> dict[str, float]:
    """The data file's closing prices of ``day`` (read here, independently of the server)."""
    with gzip.open(DATA, "rt") as f:
        header = f.readline().strip().split(",")
        for line in f:
            if line.startswith(day):
                return dict(zip(header[1:], map(float, line.strip().split(",")[1:]), strict=True))
    raise AssertionError(f"{day} not in {DATA}")


CLOSE = closes_on("2022-12-28")


def stamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


@pytest.fixture(scope="module")
def rotation(grpc_channel: grpc.Channel, stored_prices: dict[str, str]) -> rot_grpc.RotationCommandServiceStub:
    assert set(UNIVERSE) <= set(stored_prices)
    return rot_grpc.RotationCommandServiceStub(grpc_channel)


def configuration(portfolio_id: str, signal_set: str, **fields: Any) -> rot_pb.RotationConfiguration:
    """K = 4, K_buy = 3, K_sell = 6, name cap 0.25 (a slot is 0.25); rotation off (Δz_min = 5) unless given."""
    config = rot_pb.RotationConfiguration(
        portfolio_id=portfolio_id,
        enabled=True,
        signal_set=signal_set,
        universe=[rot_pb.RotationMember(symbol=s, cost_bps=5.0) for s in UNIVERSE],
        greedy=rot_pb.GreedyParameters(k=4, k_buy=3, k_sell=6, name_cap=0.25, dz_min=5.0),
        lookback_periods=120,
    )
    for name, value in fields.items():
        if isinstance(value, rot_pb.GreedyParameters | rot_pb.PolicyParameters | rot_pb.QpParameters):
            getattr(config, name).CopyFrom(value)
        else:
            setattr(config, name, value)
    return config


def scores(signal_set: str, when: datetime, values: dict[str, float]) -> Iterator[rot_pb.IngestSignalsRequest]:
    yield rot_pb.IngestSignalsRequest(
        signal_set=signal_set,
        signals=[rot_pb.Signal(symbol=s, time=stamp(when), score=values.get(s, 0.0)) for s in UNIVERSE],
    )


@pytest.fixture
def portfolio(
    rotation: rot_grpc.RotationCommandServiceStub, trading: trading_grpc.TradingCommandServiceStub
) -> tuple[str, str]:
    """A portfolio holding 1000 WMT (a quarter of its value) and cash, with signals at 14:00 of two days."""
    portfolio_id, signal_set = f"rot-{uuid.uuid4().hex[:8]}", f"model-{uuid.uuid4().hex[:8]}"
    held_value = 1000 * CLOSE[HELD]
    trading.UpsertHoldings(
        trading_pb.UpsertHoldingsRequest(
            portfolio_id=portfolio_id,
            positions=[trading_pb.Position(symbol=HELD, shares=1000)],
            cash=3 * held_value,
        )
    )
    values = {**dict.fromkeys(TOPS, 1000.0), HELD: 600.0}
    for day in (26, 28):  # 14:00 of the holiday and of the last day (one stream, two messages)
        written = rotation.IngestSignals(scores(signal_set, IN_WINDOW.replace(day=day, hour=14, minute=0), values))
        assert written.rows_written == len(UNIVERSE)
    rotation.UpsertRotationConfiguration(
        rot_pb.UpsertRotationConfigurationRequest(configuration=configuration(portfolio_id, signal_set))
    )
    return portfolio_id, signal_set


def run(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio_id: str, when: datetime = IN_WINDOW, request_id: str = ""
) -> rot_pb.RunRotationCycleResponse:
    response: rot_pb.RunRotationCycleResponse = rotation.RunRotationCycle(
        rot_pb.RunRotationCycleRequest(portfolio_id=portfolio_id, as_of=stamp(when), request_id=request_id)
    )
    return response


def outbox(db: psycopg.Connection[Any], portfolio_id: str) -> list[tuple[str, str, float]]:
    rows = db.execute(
        "SELECT symbol, side, shares FROM order_outbox WHERE portfolio_id = %s ORDER BY symbol", (portfolio_id,)
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def count(db: psycopg.Connection[Any], table: str, portfolio_id: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table} WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_hysteresis_keeps_a_name_between_k_buy_and_k_sell_and_the_top_names_are_bought(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id, _ = portfolio
    decision = run(rotation, portfolio_id).decision
    value = 4 * 1000 * CLOSE[HELD]
    assert decision.action == rot_pb.ROTATION_ACTION_TRADE
    assert decision.policy_reason == "DRIFT_TRIGGER"
    assert decision.portfolio_value == pytest.approx(value, rel=1e-12)
    changes = {c.symbol: c for c in decision.changes}
    # WMT at rank 5: K_buy = 3 < 5 <= K_sell = 6 and z above z_cut: kept, not traded (already a full slot).
    assert (changes[HELD].rank, changes[HELD].action, changes[HELD].reason) == (5, "HOLD", "HOLD_HYSTERESIS")
    assert changes[HELD].z > 0.2
    # Three free slots go to ranks 1-3; rank 4 is no candidate (rank > K_buy) and gets no change.
    bought = sorted(c.symbol for c in decision.changes if c.reason == "BUY_TOP_K")
    assert len(bought) == 3 and set(bought) < set(TOPS)
    assert {changes[s].rank for s in bought} == {1, 2, 3}
    expected = [(s, "BUY", float(math.floor(0.25 * value / CLOSE[s]))) for s in bought]
    assert sorted((o.symbol, o.side, o.shares) for o in decision.orders) == expected
    assert all(o.reason == "BUY_TOP_K" and o.reference_price == CLOSE[o.symbol] for o in decision.orders)
    assert decision.turnover == pytest.approx(0.75 / 2, abs=1e-12)  # one-way: 0.75 bought, nothing sold
    # The orders are in the outbox, written with the decision and its event.
    assert outbox(db, portfolio_id) == expected
    assert count(db, "rotation_decided", portfolio_id) == 1


def test_the_kill_switch_holds_every_cycle_and_is_audited(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id, _ = portfolio
    set_switch = rotation.SetKillSwitch(
        rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=True, reason="desk halt")
    )
    assert set_switch.state.engaged and set_switch.state.changed_by == "local"
    held = run(rotation, portfolio_id).decision
    assert (held.action, held.policy_reason, len(held.orders)) == (rot_pb.ROTATION_ACTION_HOLD, "KILL_SWITCH", 0)
    assert [t.fired for t in held.triggers if t.name == "KILL_SWITCH"] == [True]
    assert outbox(db, portfolio_id) == []
    # The global switch holds it too; released both, the same cycle trades.
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(portfolio_id=portfolio_id, engaged=False, reason="resumed"))
    rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(engaged=True, reason="firm-wide halt"))
    try:
        assert run(rotation, portfolio_id).decision.policy_reason == "KILL_SWITCH"
    finally:
        rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(engaged=False, reason="firm-wide resume"))
    assert run(rotation, portfolio_id).decision.action == rot_pb.ROTATION_ACTION_TRADE
    audit = db.execute(
        "SELECT scope, engaged, changed_by, reason FROM kill_switch_events WHERE scope IN ('', %s) "
        'AND "timestamp" >= %s ORDER BY "timestamp"',
        (portfolio_id, set_switch.state.changed_at.ToDatetime(tzinfo=UTC)),
    ).fetchall()
    assert [tuple(r) for r in audit] == [
        (portfolio_id, True, "local", "desk halt"),
        (portfolio_id, False, "local", "resumed"),
        ("", True, "local", "firm-wide halt"),
        ("", False, "local", "firm-wide resume"),
    ]


def test_outside_a_window_and_on_a_holiday_the_cycle_holds(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id, _ = portfolio
    between = run(rotation, portfolio_id, IN_WINDOW.replace(hour=15, minute=0)).decision  # 14:30 + 5 min passed
    assert (between.action, between.policy_reason) == (rot_pb.ROTATION_ACTION_HOLD, "BLOCKED_WINDOW")
    # Monday 2022-12-26: Christmas observed, NYSE closed, so 15:52 is no window.
    holiday = run(rotation, portfolio_id, datetime(2022, 12, 26, 15, 52, tzinfo=NEW_YORK)).decision
    assert (holiday.action, holiday.policy_reason) == (rot_pb.ROTATION_ACTION_HOLD, "BLOCKED_MARKET_CLOSED")
    # The engine still said what it would do: the reasons are there, the orders are not.
    assert any(c.reason == "HOLD_HYSTERESIS" for c in holiday.changes)
    assert outbox(db, portfolio_id) == []


def test_a_repeated_request_id_replays_the_stored_decision(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str], db: psycopg.Connection[Any]
) -> None:
    portfolio_id, _ = portfolio
    first = run(rotation, portfolio_id, request_id="cycle-1")
    again = run(rotation, portfolio_id, request_id="cycle-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.decision == first.decision
    assert count(db, "rotation_decisions", portfolio_id) == 1
    with pytest.raises(grpc.RpcError) as error:
        run(rotation, portfolio_id, IN_WINDOW.replace(minute=53), request_id="cycle-1")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_engine_switches_to_the_qp_at_run_time(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str]
) -> None:
    portfolio_id, signal_set = portfolio
    stored = rotation.UpsertRotationConfiguration(
        rot_pb.UpsertRotationConfigurationRequest(
            configuration=configuration(portfolio_id, signal_set, engine=rot_pb.ROTATION_ENGINE_QP)
        )
    )
    assert stored.created and stored.configuration.version == 2
    assert stored.configuration.qp.max_turnover == 0.2  # the specification's default, written out
    # With the default name cap 0.1, WMT (0.25) cannot get under its cap within one cycle's 0.05 per-name turnover.
    with pytest.raises(grpc.RpcError) as error:
        run(rotation, portfolio_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "WMT" in str(error.value.details())
    qp = rot_pb.QpParameters(name_cap=0.3)
    rotation.UpsertRotationConfiguration(
        rot_pb.UpsertRotationConfigurationRequest(
            configuration=configuration(portfolio_id, signal_set, engine=rot_pb.ROTATION_ENGINE_QP, qp=qp)
        )
    )
    decision = run(rotation, portfolio_id).decision
    assert decision.engine == rot_pb.ROTATION_ENGINE_QP and decision.configuration_version == 3
    targets = {c.symbol: c.target_weight for c in decision.changes}
    # The QP's limits: per-name |Δw| <= 0.05 and two-way turnover <= 0.2 from the current weights.
    current = {c.symbol: c.current_weight for c in decision.changes}
    moves = [abs(targets[s] - current[s]) for s in targets]
    assert max(moves) <= 0.05 + 1e-7 and sum(moves) <= 0.2 + 1e-7
    assert decision.action == rot_pb.ROTATION_ACTION_TRADE and decision.orders


def test_errors_name_the_field_or_the_missing_state(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str]
) -> None:
    portfolio_id, signal_set = portfolio
    cases: list[tuple[Callable[[], object], grpc.StatusCode]] = [
        (
            lambda: rotation.RunRotationCycle(rot_pb.RunRotationCycleRequest(portfolio_id="no-such-rotation")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (  # the last signals are of 14:00: stale 26 h 45 min later with the default 1440-minute limit
            lambda: run(rotation, portfolio_id, datetime(2022, 12, 29, 16, 45, tzinfo=NEW_YORK)),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            lambda: rotation.UpsertRotationConfiguration(
                rot_pb.UpsertRotationConfigurationRequest(
                    configuration=configuration(portfolio_id, signal_set, greedy=rot_pb.GreedyParameters(k_buy=30))
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: rotation.SetKillSwitch(rot_pb.SetKillSwitchRequest(engaged=True)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    messages: list[str] = []
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == code, error.value.details()
        messages.append(str(error.value.details()))
    assert "configuration.greedy.k_buy" in messages[2]
    assert "reason" in messages[3]


def test_a_blown_out_spread_holds_that_name_back_from_stored_quotes(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str], db: psycopg.Connection[Any]
) -> None:
    """A name quoting above 3 × its median spread gets no order; a stale quote is not checked.

    Quotes at 2 bp on 19 earlier days; at the 14:30 window the rank-1 name quotes 10 bp (> 3 × 2: blocked), the
    rank-2 name 4 bp (< 6: traded) and the rank-3 name's latest quote (20 bp) is an hour old (not checked: traded).
    The cycle runs at 14:31 (the other cases run at 15:52, where none of these quotes is current).
    """
    portfolio_id, _ = portfolio
    at = IN_WINDOW.replace(hour=14, minute=31)
    ranked = run(rotation, portfolio_id, at.replace(hour=15, minute=0)).decision  # between windows: HOLD, no orders
    assert ranked.action == rot_pb.ROTATION_ACTION_HOLD
    first, second, third = sorted((c for c in ranked.changes if c.reason == "BUY_TOP_K"), key=lambda c: c.rank)

    def quote(symbol: str, when: datetime, spread_bps: float) -> rot_pb.Quote:
        mid, half = CLOSE[symbol], spread_bps / 2e4
        return rot_pb.Quote(symbol=symbol, time=stamp(when), bid=mid * (1 - half), ask=mid * (1 + half))

    history = [
        quote(s, datetime(2022, 12, day, 15, 0, tzinfo=NEW_YORK), 2.0)
        for day in range(9, 28)
        for s in (first.symbol, second.symbol, third.symbol)
    ]
    current = [
        quote(first.symbol, at.replace(minute=26), 10.0),
        quote(second.symbol, at.replace(minute=29), 4.0),
        quote(third.symbol, at.replace(hour=13, minute=30), 20.0),  # blown, but older than max_quote_age_minutes
    ]
    written = rotation.IngestQuotes(iter([rot_pb.IngestQuotesRequest(quotes=history + current)]))
    assert written.rows_written == len(history) + 3

    decision = run(rotation, portfolio_id, at).decision
    assert decision.action == rot_pb.ROTATION_ACTION_TRADE
    spread = next(t for t in decision.triggers if t.name == "SPREAD_BLOWOUT")
    assert (spread.fired, spread.value, spread.threshold) == (True, 1.0, 3.0)
    blocked = next(c for c in decision.changes if c.symbol == first.symbol)
    assert (blocked.action, blocked.reason) == ("NONE", "BLOCKED_SPREAD")
    assert blocked.numbers["spread_bps"] == pytest.approx(10.0, rel=1e-9)
    assert blocked.numbers["normal_spread_bps"] == pytest.approx(2.0, rel=1e-9)  # median of 19 × 2 bp and 10 bp
    assert sorted(o.symbol for o in decision.orders) == sorted((second.symbol, third.symbol))
    assert {s for s, _, _ in outbox(db, portfolio_id)} == {second.symbol, third.symbol}


def test_qp_sales_never_exceed_the_holding_less_what_open_orders_still_sell(
    rotation: rot_grpc.RotationCommandServiceStub, portfolio: tuple[str, str], db: psycopg.Connection[Any]
) -> None:
    """The QP may target a weight below zero; the account holds no shorts, so a sale stops at the holding.

    The portfolio holds 1,000 WMT and nothing else: its SELL orders are of WMT only, and across two cycles whose
    first orders are still open (never executed) they sell at most the 1,000 shares held.
    """
    portfolio_id, signal_set = portfolio
    qp = rot_pb.QpParameters(name_cap=0.3)
    rotation.UpsertRotationConfiguration(
        rot_pb.UpsertRotationConfigurationRequest(
            configuration=configuration(portfolio_id, signal_set, engine=rot_pb.ROTATION_ENGINE_QP, qp=qp)
        )
    )
    first = run(rotation, portfolio_id, request_id="qp-1").decision
    assert any(c.target_weight < -1e-6 for c in first.changes)  # a short target: the case this guards
    assert {o.symbol for o in first.orders if o.side == "SELL"} <= {HELD}
    run(rotation, portfolio_id, request_id="qp-2")
    sells = [(symbol, shares) for symbol, side, shares in outbox(db, portfolio_id) if side == "SELL"]
    assert {symbol for symbol, _ in sells} <= {HELD}
    assert sum(shares for _, shares in sells) <= 1000


def test_a_cycle_before_the_last_ones_fills_plans_from_the_expected_position(
    rotation: rot_grpc.RotationCommandServiceStub,
    portfolio: tuple[str, str],
    grpc_channel: grpc.Channel,
    db: psycopg.Connection[Any],
) -> None:
    """Open BUY orders count as bought: a second cycle does not buy the same names again, before or after fills.

    The first cycle buys three names (``floor(0.25 × value / close)`` shares each) and leaves the orders NEW. A
    second cycle at the same prices sees those names at ``shares × close / value`` (worked here from the file's
    closes), holds them and orders nothing; after one order is partly filled and the others fully, a third sees
    the same weights and orders nothing either (a fill moves shares from "open" to "held" in one snapshot).
    """
    from stratopt.v1 import execution_service_pb2 as ex_pb
    from stratopt.v1 import execution_service_pb2_grpc as ex_grpc

    portfolio_id, _ = portfolio
    value = 4 * 1000 * CLOSE[HELD]
    first = run(rotation, portfolio_id, request_id="first").decision
    bought = {o.symbol: o.shares for o in first.orders}
    assert len(bought) == 3 and all(o.side == "BUY" for o in first.orders)

    def expected_weights(decision: rot_pb.RotationDecision) -> None:
        current = {c.symbol: c.current_weight for c in decision.changes}
        for symbol, shares in bought.items():
            assert current[symbol] == pytest.approx(shares * CLOSE[symbol] / value, rel=1e-9)
        assert current[HELD] == pytest.approx(0.25, rel=1e-9)

    second = run(rotation, portfolio_id, request_id="second").decision
    expected_weights(second)
    assert list(second.orders) == []
    assert second.turnover == pytest.approx(0.0, abs=1e-3)  # only the whole-share rounding is left
    assert sorted(outbox(db, portfolio_id)) == sorted((s, "BUY", n) for s, n in bought.items())

    execution = ex_grpc.ExecutionCommandServiceStub(grpc_channel)
    fills = []
    for i, order in enumerate(sorted(first.orders, key=lambda o: o.symbol)):
        shares = math.floor(order.shares / 2) if i == 0 else order.shares  # the first one partly filled
        fill = ex_pb.Fill(fill_id=f"{portfolio_id}-{order.symbol}", order_id=order.order_id, symbol=order.symbol,
                          side="BUY", shares=shares, price=CLOSE[order.symbol], filled_at=stamp(IN_WINDOW))  # fmt: skip
        fills.append(fill)
    reported = execution.ReportFills(ex_pb.ReportFillsRequest(portfolio_id=portfolio_id, fills=fills))
    assert reported.applied == 3
    assert sorted(o.status for o in reported.orders) == ["FILLED", "FILLED", "PARTIALLY_FILLED"]
    third = run(rotation, portfolio_id, request_id="third").decision
    expected_weights(third)
    assert list(third.orders) == []
