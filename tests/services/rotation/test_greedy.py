"""Greedy top-K rotation against hand-worked cases (issue 10's rules), and its invariants on random inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.errors import InvalidInputError
from services.rotation import (
    Action,
    GreedyRotationParams,
    ReasonCode,
    RotationDecision,
    RotationInputs,
    greedy_rotation,
)

SYMBOLS = ("A", "B", "C", "D", "E")


def decide(z: list[float], weights: list[float], params: GreedyRotationParams, **extra: object) -> RotationDecision:
    symbols = SYMBOLS[: len(z)]
    arrays: dict[str, Any] = {k: (np.array(v, dtype=float) if isinstance(v, list) else v) for k, v in extra.items()}
    inputs = RotationInputs(
        symbols=symbols, z=np.array(z, dtype=float), current_weights=np.array(weights, dtype=float), **arrays
    )
    return greedy_rotation(inputs, params)


def reasons(decision: RotationDecision) -> dict[str, tuple[Action, ReasonCode]]:
    return {c.symbol: (c.action, c.reason) for c in decision.changes}


def small(**overrides: float) -> GreedyRotationParams:
    """K = 3, K_buy = 2, K_sell = 4 and no name cap: a slot is 1/3."""
    values: dict[str, float] = {"k": 3, "k_buy": 2, "k_sell": 4, "name_cap": 1.0}
    values.update(overrides)
    return GreedyRotationParams(**values)  # type: ignore[arg-type]


def test_the_defaults_are_the_specifications() -> None:
    p = GreedyRotationParams()
    assert (p.k, p.k_buy, p.k_sell) == (20, 18, 24)
    assert (p.z_keep, p.z_cut, p.dz_min, p.tau_u, p.gamma) == (0.8, 0.2, 0.25, 0.0, 0.05)
    assert (p.name_cap, p.per_name_trigger, p.k_atr, p.t_max_minutes) == (0.1, 0.005, 1.2, 120.0)
    assert p.slot_weight == pytest.approx(0.05)  # min(0.1, 1/20)


def test_from_cash_only_the_top_k_buy_with_z_above_z_keep_are_bought() -> None:
    decision = decide([2.0, 1.5, 1.0, 0.5, 0.0], [0, 0, 0, 0, 0], small())
    # C ranks 3rd: a slot is free, but rank 3 > K_buy = 2, so it is not a candidate.
    assert reasons(decision) == {"A": (Action.BUY, ReasonCode.BUY_TOP_K), "B": (Action.BUY, ReasonCode.BUY_TOP_K)}
    np.testing.assert_allclose(decision.target_weights, [1 / 3, 1 / 3, 0, 0, 0])
    assert decision.turnover == pytest.approx(1 / 3)  # one-way: (1/3 + 1/3) / 2


def test_z_above_z_keep_is_needed_even_in_the_top_k_buy() -> None:
    decision = decide([2.0, 0.8, 0.7, 0.5, 0.0], [0, 0, 0, 0, 0], small())
    assert reasons(decision) == {"A": (Action.BUY, ReasonCode.BUY_TOP_K)}  # B: z = 0.8 is not > z_keep


def test_hysteresis_keeps_a_held_name_between_k_buy_and_k_sell_and_sells_below_k_sell() -> None:
    # Ranks: A 1, B 2, C 3, D 4, E 5. D and E are held; K_buy = 2 < 4 ≤ K_sell = 4 < 5.
    decision = decide([2.0, 1.8, 1.5, 0.9, 0.85], [0, 0, 0, 1 / 3, 1 / 3], small())
    assert reasons(decision) == {
        "A": (Action.BUY, ReasonCode.BUY_TOP_K),
        "B": (Action.BUY, ReasonCode.BUY_TOP_K),
        "D": (Action.HOLD, ReasonCode.HOLD_HYSTERESIS),
        "E": (Action.SELL, ReasonCode.SELL_RANK_BELOW_K_SELL),
    }
    np.testing.assert_allclose(decision.target_weights, [1 / 3, 1 / 3, 0, 1 / 3, 0])
    # Not held, the same rank-4 name would not be bought.
    fresh = decide([2.0, 1.8, 1.5, 0.9, 0.85], [0, 0, 0, 0, 0], small())
    assert "D" not in reasons(fresh)


def test_a_held_name_below_z_cut_is_sold_whatever_its_rank() -> None:
    decision = decide([0.1, 0.05, 0.0, -0.1, -0.2], [0.5, 0, 0, 0, 0], small())
    assert reasons(decision) == {"A": (Action.SELL, ReasonCode.SELL_Z_BELOW_CUT)}
    assert decision.target_weights[0] == 0.0


def test_a_rotation_below_dz_min_is_refused() -> None:
    # C 1.1 ranks 1st, A 2nd (HOLD_TOP_K), B 3rd (HOLD_HYSTERESIS, the worst kept); gap 1.1 - 0.9 = 0.2 < 0.25.
    decision = decide([1.0, 0.9, 1.1], [0.5, 0.5, 0.0], small(k=2, k_buy=2, k_sell=3))
    assert reasons(decision) == {
        "C": (Action.NONE, ReasonCode.BLOCKED_ROTATION_GAP),
        "A": (Action.HOLD, ReasonCode.HOLD_TOP_K),
        "B": (Action.HOLD, ReasonCode.HOLD_HYSTERESIS),
    }
    [c] = [ch for ch in decision.changes if ch.symbol == "C"]
    assert c.numbers["z_gap"] == pytest.approx(0.2)
    np.testing.assert_allclose(decision.target_weights, [0.5, 0.5, 0.0])


def test_a_rotation_above_dz_min_with_a_gain_replaces_the_worst_held_name() -> None:
    # Gap 1.2 - 0.9 = 0.3 ≥ 0.25; gain without costs 1.2·0.5 - 0.9·0.5 = 0.15 > τ_U = 0.
    decision = decide([1.0, 0.9, 1.2], [0.5, 0.5, 0.0], small(k=2, k_buy=2, k_sell=3))
    assert reasons(decision)["B"] == (Action.SELL, ReasonCode.ROTATE_BETTER_CANDIDATE)
    assert reasons(decision)["C"] == (Action.BUY, ReasonCode.ROTATE_BETTER_CANDIDATE)
    np.testing.assert_allclose(decision.target_weights, [0.5, 0.0, 0.5])
    [c] = [ch for ch in decision.changes if ch.symbol == "C"]
    assert c.numbers["utility_gain"] == pytest.approx(0.15)
    assert decision.turnover == pytest.approx(0.5)


def test_a_rotation_whose_gain_after_costs_is_not_above_tau_u_is_refused() -> None:
    params = small(k=2, k_buy=2, k_sell=3)
    # 10 bp on each leg: γ·(10·0.5 + 10·0.5) = 0.05·10 = 0.5 > 0.15.
    costly = decide([1.0, 0.9, 1.2], [0.5, 0.5, 0.0], params, costs_bps=[10.0, 10.0, 10.0])
    assert reasons(costly)["C"] == (Action.NONE, ReasonCode.BLOCKED_ROTATION_UTILITY)
    [c] = [ch for ch in costly.changes if ch.symbol == "C"]
    assert c.numbers["utility_gain"] == pytest.approx(0.15 - 0.5)
    # 1 bp: cost 0.05 → gain 0.10 > 0: rotates; with τ_U = 0.1 the same gain is refused (must exceed it).
    cheap = decide([1.0, 0.9, 1.2], [0.5, 0.5, 0.0], params, costs_bps=[1.0, 1.0, 1.0])
    assert reasons(cheap)["C"] == (Action.BUY, ReasonCode.ROTATE_BETTER_CANDIDATE)
    strict = small(k=2, k_buy=2, k_sell=3, tau_u=0.1)
    refused = decide([1.0, 0.9, 1.2], [0.5, 0.5, 0.0], strict, costs_bps=[1.0, 1.0, 1.0])
    assert reasons(refused)["C"] == (Action.NONE, ReasonCode.BLOCKED_ROTATION_UTILITY)


def test_a_position_at_its_atr_stop_is_cut() -> None:
    # Entry 100, ATR 5, k_ATR 1.2: stop at 94.
    common = {"entry_prices": [100.0, np.nan, np.nan], "atr": [5.0, 1.0, 1.0]}
    at_stop = decide([2.0, 0.1, 0.0], [1 / 3, 0, 0], small(), prices=[94.0, 10.0, 10.0], **common)
    assert reasons(at_stop)["A"] == (Action.SELL, ReasonCode.STOP_ATR)
    [a] = at_stop.changes
    assert a.numbers["stop_price"] == pytest.approx(94.0)
    above = decide([2.0, 0.1, 0.0], [1 / 3, 0, 0], small(), prices=[94.01, 10.0, 10.0], **common)
    assert reasons(above)["A"] == (Action.HOLD, ReasonCode.HOLD_TOP_K)


def test_dead_money_is_cut_after_t_max_without_progress() -> None:
    def run(minutes: float, price: float) -> tuple[Action, ReasonCode]:
        decision = decide(
            [2.0, 0.1, 0.0], [1 / 3, 0, 0], small(),
            prices=[price, 1.0, 1.0], entry_prices=[100.0, np.nan, np.nan], minutes_held=[minutes, 0.0, 0.0],
        )  # fmt: skip
        return reasons(decision)["A"]

    assert run(120.0, 100.0) == (Action.SELL, ReasonCode.DEAD_MONEY_TIMEOUT)
    assert run(119.0, 99.0) == (Action.HOLD, ReasonCode.HOLD_TOP_K)  # not yet T_max
    assert run(500.0, 100.5) == (Action.HOLD, ReasonCode.HOLD_TOP_K)  # progress: above the entry


def test_the_participation_cap_blocks_or_clips_a_buy() -> None:
    # Portfolio 1,000,000; max_participation 0.1: B may trade 0.1·20,000/1e6 = 0.002 < 0.005 → blocked;
    # A may trade 0.1·2,000,000/1e6 = 0.2 < its slot 1/3 → bought 0.2.
    decision = decide(
        [2.0, 1.5, 0.0], [0, 0, 0], small(), adv_value=[2_000_000.0, 20_000.0, 1e9], portfolio_value=1_000_000.0
    )
    assert reasons(decision) == {
        "A": (Action.BUY, ReasonCode.BUY_TOP_K),
        "B": (Action.NONE, ReasonCode.BLOCKED_ILLIQUID),
    }
    np.testing.assert_allclose(decision.target_weights, [0.2, 0.0, 0.0])


def test_a_resize_inside_the_no_trade_band_is_not_made() -> None:
    # A held at 0.33 against a slot of 1/3: |Δw| = 0.0033 < 0.005 → kept as is; B at 0.2 → resized to 1/3.
    decision = decide([2.0, 1.5, 0.0], [0.33, 0.2, 0.0], small())
    assert reasons(decision) == {"A": (Action.HOLD, ReasonCode.HOLD_TOP_K), "B": (Action.BUY, ReasonCode.HOLD_TOP_K)}
    np.testing.assert_allclose(decision.target_weights, [0.33, 1 / 3, 0.0])


def test_ties_in_z_are_broken_by_symbol() -> None:
    decision = decide([1.0, 1.0, 1.0], [0, 0, 0], small())
    assert [c.symbol for c in decision.changes] == ["A", "B"]  # ranks 1, 2 of three equal scores


def test_invalid_inputs_name_their_field() -> None:
    with pytest.raises(InvalidInputError, match="k_buy"):
        GreedyRotationParams(k=10, k_buy=12, k_sell=14)
    with pytest.raises(InvalidInputError, match="z_cut"):
        GreedyRotationParams(z_cut=0.9, z_keep=0.8)
    with pytest.raises(InvalidInputError, match=r"z\[1\]"):
        decide([1.0, np.nan], [0, 0], small())
    with pytest.raises(InvalidInputError, match="current_weights"):
        decide([1.0, 0.5], [-0.1, 0], small())
    with pytest.raises(InvalidInputError, match="portfolio_value"):
        decide([1.0, 0.5], [0, 0], small(), adv_value=[1.0, 1.0])


@pytest.mark.parametrize("seed", range(20))
def test_invariants_on_random_books(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    p = GreedyRotationParams()
    z = rng.normal(size=n)
    weights = np.zeros(n)
    weights[rng.choice(n, 25, replace=False)] = p.slot_weight  # 25 held: more than K = 20
    symbols = tuple(f"S{i:03d}" for i in range(n))
    inputs = RotationInputs(symbols=symbols, z=z, current_weights=weights, costs_bps=rng.uniform(0, 20, n))
    decision = greedy_rotation(inputs, p)
    target = decision.target_weights
    rank = {c.symbol: c.rank for c in decision.changes}
    assert target.sum() <= 1.0 + 1e-12
    assert np.count_nonzero(target > 1e-12) <= p.k
    assert np.all(target <= p.slot_weight + 1e-12)
    changed = {symbols[i] for i in np.flatnonzero(np.abs(target - weights) > 1e-12)}
    assert changed <= {c.symbol for c in decision.changes}  # every change carries a reason
    order = np.argsort(-z, kind="stable")
    for c in decision.changes:
        assert symbols[order[c.rank - 1]] == c.symbol  # ranks are by z, descending
        if c.action is Action.BUY and c.current_weight == 0.0:
            assert c.rank <= p.k_buy and c.z > p.z_keep  # never buys outside the top K_buy or at z ≤ z_keep
        if c.current_weight > 0 and (c.rank > p.k_sell or c.z < p.z_cut):
            assert c.target_weight == 0.0  # always sells below K_sell or z_cut
    assert decision.turnover == pytest.approx(np.abs(target - weights).sum() / 2)
    assert rank  # something was decided
    again = greedy_rotation(inputs, p)
    np.testing.assert_array_equal(again.target_weights, target)  # deterministic


def test_a_gain_equal_to_tau_u_is_refused_it_must_exceed_it() -> None:
    # A 2.0 (rank 1), C 1.5 (rank 2, the candidate), B 1.0 (rank 3, held in the hysteresis band).
    # Gain 1.5·0.5 - 1.0·0.5 = 0.25, exactly representable.
    def run(tau_u: float) -> tuple[Action, ReasonCode]:
        decision = decide([2.0, 1.0, 1.5], [0.5, 0.5, 0.0], small(k=2, k_buy=2, k_sell=3, tau_u=tau_u))
        return reasons(decision)["C"]

    assert run(0.25) == (Action.NONE, ReasonCode.BLOCKED_ROTATION_UTILITY)
    assert run(0.125) == (Action.BUY, ReasonCode.ROTATE_BETTER_CANDIDATE)
