"""One rotation cycle on real prices: either engine, orders only on TRADE, the kill-switch blocks every engine."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from services.rotation import (
    Engine,
    GreedyRotationParams,
    PolicyAction,
    PolicyReason,
    ReasonCode,
    RotationConfig,
    run_cycle,
)

IN_A_WINDOW = datetime(2024, 7, 2, 10, 31, tzinfo=ZoneInfo("America/New_York"))
OUTSIDE = datetime(2024, 7, 2, 11, 0, tzinfo=ZoneInfo("America/New_York"))


@pytest.fixture(scope="module")
def market(sp500_prices: pd.DataFrame) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The last 300 days of 20 S&P 500 stocks and 60-day momentum as the raw scores."""
    window = sp500_prices.iloc[-300:]
    prices = window.to_numpy()
    momentum = prices[-1] / prices[-61] - 1.0
    return tuple(window.columns), prices, momentum


# K = 5 of 20 names (slot 0.1 at the default name cap): a small book whose choices can be read off the ranks.
SMALL = GreedyRotationParams(k=5, k_buy=4, k_sell=7)


def test_a_greedy_cycle_from_cash_buys_the_top_names_with_their_reasons(market: tuple) -> None:  # type: ignore[type-arg]
    symbols, prices, scores = market
    decision = run_cycle(
        now=IN_A_WINDOW, symbols=symbols, prices=prices, scores=scores, current_weights=np.zeros(20),
        config=RotationConfig(greedy=SMALL),
    )  # fmt: skip
    assert decision.policy.action is PolicyAction.TRADE
    ranked = [symbols[i] for i in np.argsort(-decision.z, kind="stable")]
    bought = [o.symbol for o in decision.orders]
    # Buys are the top K_buy names whose z exceeds z_keep, each a full slot, all BUY_TOP_K.
    expected = [s for s in ranked[: SMALL.k_buy] if decision.z[symbols.index(s)] > SMALL.z_keep]
    assert expected  # momentum gives some names z > 0.8
    assert sorted(bought) == sorted(expected)
    assert all(o.side == "BUY" and o.reason is ReasonCode.BUY_TOP_K for o in decision.orders)
    assert all(o.weight == pytest.approx(SMALL.slot_weight) for o in decision.orders)


def test_outside_a_window_the_cycle_decides_but_emits_no_order(market: tuple) -> None:  # type: ignore[type-arg]
    symbols, prices, scores = market
    decision = run_cycle(now=OUTSIDE, symbols=symbols, prices=prices, scores=scores, current_weights=np.zeros(20))
    assert decision.policy.reason is PolicyReason.BLOCKED_WINDOW
    assert decision.orders == ()
    assert decision.target_weights.sum() > 0  # the engine still decided; the policy held it


@pytest.mark.parametrize("engine", [Engine.GREEDY, Engine.QP])
def test_the_kill_switch_blocks_every_engines_orders(market: tuple, engine: Engine) -> None:  # type: ignore[type-arg]
    symbols, prices, scores = market
    current = np.array([0.05, -0.05] * 10) if engine is Engine.QP else np.zeros(20)
    config = RotationConfig(engine=engine)
    free = run_cycle(
        now=IN_A_WINDOW, symbols=symbols, prices=prices, scores=scores, current_weights=current, config=config
    )
    assert free.orders  # without it, this cycle trades
    stopped = run_cycle(
        now=IN_A_WINDOW, symbols=symbols, prices=prices, scores=scores, current_weights=current, config=config,
        kill_switch=True,
    )  # fmt: skip
    assert (stopped.policy.action, stopped.policy.reason) == (PolicyAction.HOLD, PolicyReason.KILL_SWITCH)
    assert stopped.orders == ()


def test_the_qp_engine_orders_move_the_book_to_its_target_within_the_limits(market: tuple) -> None:  # type: ignore[type-arg]
    symbols, prices, scores = market
    current = np.array([0.05, -0.05] * 10)
    config = RotationConfig(engine=Engine.QP)
    decision = run_cycle(
        now=IN_A_WINDOW, symbols=symbols, prices=prices, scores=scores, current_weights=current, config=config,
        costs_bps=np.full(20, 5.0),
    )  # fmt: skip
    assert decision.policy.action is PolicyAction.TRADE
    after = current.copy()
    for order in decision.orders:
        after[symbols.index(order.symbol)] += order.weight if order.side == "BUY" else -order.weight
    np.testing.assert_allclose(after, decision.target_weights, atol=1e-12)
    assert np.abs(after - current).sum() <= config.qp.max_turnover + 1e-7
    assert np.all(np.abs(after) <= config.qp.name_cap + 1e-7)
