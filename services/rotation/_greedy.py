"""Greedy top-K rotation: risk-scaled scores to target weights, with a reason code for every change.

A decision engine, not a predictive model ("drop green / buy better / cut low performer"): it ranks names by
their risk-scaled z-score, keeps at most K of them at equal slot weights, buys a name only when it ranks in the
top ``k_buy`` with ``z > z_keep``, sells a held name when it falls below rank ``k_sell`` or ``z < z_cut`` (the gap
between ``k_buy`` and ``k_sell`` is the hysteresis that prevents churn), rotates a held name into a better
candidate only when the z gap is at least ``dz_min`` and the utility gain after costs exceeds ``tau_u``, cuts
positions stopped out at ``k_atr`` ATRs below their entry or without progress after ``t_max_minutes``, and
respects per-name caps, liquidity (a participation cap on average daily traded value) and the per-name no-trade
band. Deterministic and O(N log N) (one sort).

The utility is the one of the QP rotation: ``U(w) = z'w - gamma * sum_i C_i |w_i - w_cur,i|`` (its risk term
``lambda w'Sigma w`` is left out: the greedy engine holds equal slots), with ``C_i`` the one-way cost of name i in
basis points of traded value and ``gamma`` the utility charged per basis point per unit of weight traded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from services.errors import InvalidInputError
from services.types import FloatArray

HELD_WEIGHT = 1e-9
"""A name with a current weight above this is held."""


class ReasonCode(enum.StrEnum):
    """Why a name's weight changes, or why it does not."""

    BUY_TOP_K = "BUY_TOP_K"
    """Bought into a free slot: rank ≤ k_buy and z > z_keep."""
    ROTATE_BETTER_CANDIDATE = "ROTATE_BETTER_CANDIDATE"
    """One leg of a rotation: the held name sold, or the better candidate bought in its slot."""
    SELL_RANK_BELOW_K_SELL = "SELL_RANK_BELOW_K_SELL"
    """Sold: the held name ranks below k_sell."""
    SELL_Z_BELOW_CUT = "SELL_Z_BELOW_CUT"
    """Sold: the held name's z fell below z_cut."""
    SELL_OVER_K = "SELL_OVER_K"
    """Sold: more than k names would stay held (e.g. after k was lowered); the lowest z goes."""
    STOP_ATR = "STOP_ATR"
    """Sold: the price is at or below the entry price minus k_atr ATRs."""
    DEAD_MONEY_TIMEOUT = "DEAD_MONEY_TIMEOUT"
    """Sold: held for t_max_minutes or longer without progress (price at or below the entry price)."""
    HOLD_TOP_K = "HOLD_TOP_K"
    """Kept: rank ≤ k_buy (its weight may be resized to the slot weight)."""
    HOLD_HYSTERESIS = "HOLD_HYSTERESIS"
    """Kept by the hysteresis: k_buy < rank ≤ k_sell (not good enough to buy, not bad enough to sell)."""
    BLOCKED_ROTATION_GAP = "BLOCKED_ROTATION_GAP"
    """A candidate not bought: no free slot, and its z beats the worst held name's by less than dz_min."""
    BLOCKED_ROTATION_UTILITY = "BLOCKED_ROTATION_UTILITY"
    """A candidate not bought: no free slot, and the rotation's utility gain after costs is at most tau_u."""
    BLOCKED_ILLIQUID = "BLOCKED_ILLIQUID"
    """A trade not made: the participation cap allows less than the per-name no-trade band."""
    BLOCKED_NO_TRADE_BAND = "BLOCKED_NO_TRADE_BAND"
    """A buy not made: it would move the weight by less than the per-name no-trade band."""
    BLOCKED_SPREAD = "BLOCKED_SPREAD"
    """A trade not made (either engine): the policy's spread-blowout check held the name back (its latest spread
    above ``spread_blowout_ratio`` times its normal spread)."""
    # The QP rotation's (services.rotation._qp): which constraint bounds each change.
    QP_UTILITY = "QP_UTILITY"
    """QP: no constraint binds the change; the score, risk and cost trade-off set it."""
    BOUND_NAME_CAP = "BOUND_NAME_CAP"
    """QP: the name is at its weight cap (±name_cap)."""
    BOUND_NAME_TURNOVER = "BOUND_NAME_TURNOVER"
    """QP: the change is at the per-name turnover cap."""
    BOUND_SECTOR_CAP = "BOUND_SECTOR_CAP"
    """QP: the name's sector is at its cap."""
    BOUND_TURNOVER = "BOUND_TURNOVER"
    """QP: the total turnover cap binds."""
    BOUND_GROSS = "BOUND_GROSS"
    """QP: gross exposure is at its cap."""
    BOUND_NET = "BOUND_NET"
    """QP: net exposure is at its limit."""
    BOUND_BETA = "BOUND_BETA"
    """QP: portfolio beta is at its tolerance."""
    HOLD_COST = "HOLD_COST"
    """QP: not traded, the marginal utility of a trade does not cover its cost (|∂U/∂w_i| ≤ γ c_i)."""
    HOLD_CONSTRAINED = "HOLD_CONSTRAINED"
    """QP: not traded although the utility would pay for it; a binding constraint holds it."""


class Action(enum.StrEnum):
    """What happens to a name's position."""

    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"
    NONE = "NONE"
    """A candidate that is not bought (its reason says why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GreedyRotationParams:
    """Parameters of the greedy rotation; the defaults are the specification's.

    Attributes
    ----------
    k, k_buy, k_sell : int
        Most names held (20); best rank a name must reach to be bought (18); rank below which a held name is
        sold (24). ``k_buy ≤ k ≤ k_sell``.
    z_keep, z_cut : float
        z a name must exceed to be bought (0.8); z below which a held name is sold (0.2). ``z_cut ≤ z_keep``.
    dz_min : float
        Smallest z gap between a candidate and the held name it would replace (0.25).
    tau_u : float
        Utility gain after costs a rotation must exceed (0.0).
    gamma : float
        Utility charged per basis point of cost per unit of weight traded (0.05, as the QP rotation's γ).
    name_cap : float
        Largest weight of one name (0.1); a slot's weight is ``min(name_cap, 1 / k)``.
    per_name_trigger : float
        No-trade band: buys and resizes of less than this weight are not made (0.005).
    k_atr : float
        Stop distance in ATRs below the entry price (1.2).
    t_max_minutes : float
        Minutes a position may go without progress before it is cut (120).
    max_participation : float
        Largest trade as a fraction of the name's average daily traded value (0.1; stratopt's default, the
        specification names the rule without a value).
    """

    k: int = 20
    k_buy: int = 18
    k_sell: int = 24
    z_keep: float = 0.8
    z_cut: float = 0.2
    dz_min: float = 0.25
    tau_u: float = 0.0
    gamma: float = 0.05
    name_cap: float = 0.1
    per_name_trigger: float = 0.005
    k_atr: float = 1.2
    t_max_minutes: float = 120.0
    max_participation: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.k_buy <= self.k <= self.k_sell:
            raise InvalidInputError.for_field(
                "k_buy", f"need 1 ≤ k_buy ≤ k ≤ k_sell, got {self.k_buy}, {self.k}, {self.k_sell}"
            )
        for name in ("z_keep", "z_cut", "dz_min", "tau_u", "gamma", "name_cap", "per_name_trigger", "k_atr",
                     "t_max_minutes", "max_participation"):  # fmt: skip
            if not np.isfinite(getattr(self, name)):
                raise InvalidInputError.for_field(name, "must be finite")
        if self.z_cut > self.z_keep:
            raise InvalidInputError.for_field("z_cut", f"must not exceed z_keep ({self.z_keep}), got {self.z_cut}")
        if self.dz_min < 0 or self.gamma < 0 or self.per_name_trigger < 0:
            raise InvalidInputError.for_field("dz_min", "dz_min, gamma and per_name_trigger must be ≥ 0")
        if not 0 < self.name_cap <= 1:
            raise InvalidInputError.for_field("name_cap", f"must lie in (0, 1], got {self.name_cap}")
        if self.k_atr <= 0 or self.t_max_minutes <= 0 or self.max_participation <= 0:
            raise InvalidInputError.for_field("k_atr", "k_atr, t_max_minutes and max_participation must be > 0")

    @property
    def slot_weight(self) -> float:
        """Weight of one held name: ``min(name_cap, 1 / k)``."""
        return min(self.name_cap, 1.0 / self.k)


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationInputs:
    """The cross-section a rotation decides on; arrays share the order of ``symbols``.

    Attributes
    ----------
    symbols : tuple of str, length N
    z : ndarray, shape (N,)
        Risk-scaled z-scores (score / σ, standardised cross-sectionally); finite.
    current_weights : ndarray, shape (N,)
        Current weights (fractions of portfolio value, long only: ≥ 0).
    costs_bps : ndarray, shape (N,), optional
        One-way trading cost of each name in basis points of traded value; default 0.
    prices, entry_prices, atr : ndarray, shape (N,), optional
        Current price, entry price of the held position and average true range (price units). The stop and
        the dead-money rules run for a held name where its values are finite; unset, they do not run.
    minutes_held : ndarray, shape (N,), optional
        Minutes since the position was opened (dead-money rule).
    adv_value : ndarray, shape (N,), optional
        Average daily traded value (currency). With ``portfolio_value``, caps each trade at
        ``max_participation * adv_value / portfolio_value`` of weight; unset, trades are not capped.
    portfolio_value : float, optional
        Portfolio value (currency), for the participation cap.
    """

    symbols: tuple[str, ...]
    z: FloatArray
    current_weights: FloatArray
    costs_bps: FloatArray | None = None
    prices: FloatArray | None = None
    entry_prices: FloatArray | None = None
    atr: FloatArray | None = None
    minutes_held: FloatArray | None = None
    adv_value: FloatArray | None = None
    portfolio_value: float | None = None


@dataclass(frozen=True, slots=True)
class RotationChange:
    """One name's decision.

    Attributes
    ----------
    symbol : str
    action : Action
    reason : ReasonCode
    rank : int
        1 = highest z (ties broken by symbol).
    z : float
    current_weight, target_weight : float
        Fractions of portfolio value.
    numbers : mapping of str to float
        The figures behind the reason (e.g. ``z_gap``, ``utility_gain``, ``stop_price``, ``max_trade``).
    """

    symbol: str
    action: Action
    reason: ReasonCode
    rank: int
    z: float
    current_weight: float
    target_weight: float
    numbers: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class RotationDecision:
    """Target weights with the reason for every held or candidate name.

    Attributes
    ----------
    target_weights : ndarray, shape (N,)
        Fractions of portfolio value, in the order of the inputs' symbols; the rest is cash.
    changes : tuple of RotationChange
        Every held name and every candidate (rank ≤ k_buy, z > z_keep), in rank order.
    turnover : float
        One-way turnover ``sum |target - current| / 2`` (fraction of portfolio value).
    """

    target_weights: FloatArray
    changes: tuple[RotationChange, ...]
    turnover: float


def _vector(name: str, value: FloatArray | None, n: int) -> FloatArray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (n,):
        raise InvalidInputError.for_field(name, f"needs shape ({n},), got {array.shape}")
    return array


@dataclass(frozen=True, slots=True)
class _Arrays:
    z: FloatArray
    w: FloatArray
    costs: FloatArray
    max_trade: FloatArray
    """Largest trade of each name in weight (inf without a participation cap)."""
    stop_price: FloatArray
    """Entry price minus k_atr ATRs (NaN where the stop rule does not run)."""
    dead: NDArray[np.bool_]
    """Held for t_max_minutes or longer at or below the entry price."""
    prices: FloatArray


def _checked(inputs: RotationInputs, p: GreedyRotationParams) -> _Arrays:
    n = len(inputs.symbols)
    if n == 0:
        raise InvalidInputError.for_field("symbols", "must not be empty")
    if len(set(inputs.symbols)) != n:
        raise InvalidInputError.for_field("symbols", "must be unique")
    z = _vector("z", inputs.z, n)
    w = _vector("current_weights", inputs.current_weights, n)
    if z is None or w is None:
        raise InvalidInputError.for_field("z", "z and current_weights are required")
    if not np.all(np.isfinite(z)):
        raise InvalidInputError.for_field(f"z[{int(np.flatnonzero(~np.isfinite(z))[0])}]", "must be finite")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidInputError.for_field("current_weights", "must be finite and ≥ 0 (long only)")
    costs = _vector("costs_bps", inputs.costs_bps, n)
    costs = np.zeros(n) if costs is None else costs
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise InvalidInputError.for_field("costs_bps", "must be finite and ≥ 0")
    adv = _vector("adv_value", inputs.adv_value, n)
    max_trade = np.full(n, np.inf)
    if adv is not None:
        if inputs.portfolio_value is None or not inputs.portfolio_value > 0:
            raise InvalidInputError.for_field("portfolio_value", "must be > 0 when adv_value is given")
        max_trade = p.max_participation * np.where(np.isfinite(adv), np.maximum(adv, 0.0), 0.0) / inputs.portfolio_value
    nan = np.full(n, np.nan)
    prices = _vector("prices", inputs.prices, n)
    entry = _vector("entry_prices", inputs.entry_prices, n)
    atr = _vector("atr", inputs.atr, n)
    minutes = _vector("minutes_held", inputs.minutes_held, n)
    prices = nan if prices is None else prices
    entry = nan if entry is None else entry
    stop_price = entry - p.k_atr * (nan if atr is None else atr)
    with np.errstate(invalid="ignore"):
        dead = (nan if minutes is None else minutes) >= p.t_max_minutes
        dead &= prices <= entry  # NaN compares false: the rule does not run
    return _Arrays(z=z, w=w, costs=costs, max_trade=max_trade, stop_price=stop_price, dead=dead, prices=prices)


def greedy_rotation(inputs: RotationInputs, params: GreedyRotationParams | None = None) -> RotationDecision:
    """Decide target weights by greedy top-K rotation (module docstring), one reason per held or candidate name.

    Parameters
    ----------
    inputs : RotationInputs
        Scores, current weights and the optional costs, prices, stops and liquidity, N names.
    params : GreedyRotationParams, optional
        Thresholds; default the specification's.

    Returns
    -------
    RotationDecision
        Target weights (N,), the changes in rank order and the one-way turnover.

    Raises
    ------
    InvalidInputError
        Mismatched shapes, non-finite z, negative weights or costs, duplicate symbols.

    Notes
    -----
    Order of the rules for a held name: stop (``STOP_ATR``), dead money, ``z < z_cut``, ``rank > k_sell``; a
    name that survives them is kept (``HOLD_TOP_K`` or ``HOLD_HYSTERESIS``), the lowest z first sold if more
    than ``k`` survive (``SELL_OVER_K``). Free slots go to candidates in rank order; then each remaining
    candidate, best first, may replace the worst kept name (``ROTATE_BETTER_CANDIDATE`` on both legs) when
    ``z_c - z_h ≥ dz_min`` and ``z_c s - z_h w_h - gamma (C_c s + C_h w_h) > tau_u`` (s the slot weight,
    w_h the held weight). A candidate whose buy the participation cap limits to less than the no-trade band is
    ``BLOCKED_ILLIQUID``, as is a rotation whose held name cannot be sold whole within the cap. Kept names are
    resized to the slot weight unless that moves them by less than the no-trade band. Exits are never held back
    by the band; the participation cap limits them (a partial sell). Buys never exceed the cash left, so the
    target weights sum to at most 1.
    """
    p = params or GreedyRotationParams()
    a = _checked(inputs, p)
    z, w, costs, max_trade = a.z, a.w, a.costs, a.max_trade
    n = len(inputs.symbols)
    symbols = np.array(inputs.symbols)
    order = np.lexsort((symbols, -z))  # z descending, ties by symbol: deterministic
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    slot = p.slot_weight

    target = w.copy()
    decided: dict[int, RotationChange] = {}

    def change(i: int, action: Action, reason: ReasonCode, to: float, **numbers: float) -> None:
        target[i] = to
        decided[i] = RotationChange(
            str(symbols[i]), action, reason, int(rank[i]), float(z[i]), float(w[i]), float(to),
            MappingProxyType({k: float(v) for k, v in numbers.items()}),
        )  # fmt: skip

    def sell(i: int, reason: ReasonCode, **numbers: float) -> None:
        size = min(w[i], max_trade[i])  # the participation cap may leave part of the exit for later
        if size < w[i]:
            numbers["max_trade"] = max_trade[i]
        change(i, Action.SELL, reason, w[i] - size, **numbers)

    held = np.flatnonzero(w > HELD_WEIGHT)
    kept: list[int] = []
    for i in held[np.argsort(rank[held])]:
        if a.prices[i] <= a.stop_price[i]:  # NaN (no stop data) compares false
            sell(i, ReasonCode.STOP_ATR, price=a.prices[i], stop_price=a.stop_price[i])
            continue
        if a.dead[i]:
            sell(i, ReasonCode.DEAD_MONEY_TIMEOUT, price=a.prices[i], t_max_minutes=p.t_max_minutes)
            continue
        if z[i] < p.z_cut:
            sell(i, ReasonCode.SELL_Z_BELOW_CUT, z_cut=p.z_cut)
        elif rank[i] > p.k_sell:
            sell(i, ReasonCode.SELL_RANK_BELOW_K_SELL, k_sell=p.k_sell)
        else:
            kept.append(int(i))
    kept.sort(key=lambda i: (-z[i], symbols[i]))
    while len(kept) > p.k:
        sell(kept.pop(), ReasonCode.SELL_OVER_K, k=p.k)

    # Kept names: resized to the slot weight unless that moves them by less than the no-trade band.
    for i in kept:
        reason = ReasonCode.HOLD_TOP_K if rank[i] <= p.k_buy else ReasonCode.HOLD_HYSTERESIS
        delta = float(np.clip(slot - w[i], -max_trade[i], max_trade[i]))
        if abs(delta) < p.per_name_trigger:
            change(i, Action.HOLD, reason, w[i], k_buy=p.k_buy, k_sell=p.k_sell)
        else:
            action = Action.BUY if delta > 0 else Action.SELL
            change(i, action, reason, w[i] + delta, k_buy=p.k_buy, k_sell=p.k_sell)

    def buy_size(c: int) -> float:
        """The buy of candidate c: up to its slot, within the participation cap and the cash left."""
        return float(min(slot - w[c], max_trade[c], max(0.0, 1.0 - float(target.sum()))))

    candidates = [int(i) for i in order[: p.k_buy] if w[i] <= HELD_WEIGHT and z[i] > p.z_keep]
    free = p.k - len(kept)
    remaining: list[int] = []
    for c in candidates:
        if min(slot - w[c], max_trade[c]) < p.per_name_trigger:
            reason = ReasonCode.BLOCKED_ILLIQUID if max_trade[c] < slot - w[c] else ReasonCode.BLOCKED_NO_TRADE_BAND
            change(c, Action.NONE, reason, w[c], max_trade=max_trade[c], per_name_trigger=p.per_name_trigger)
        elif free > 0:
            free -= 1
            size = buy_size(c)
            if size < p.per_name_trigger:  # no cash left (exits the participation cap held back)
                change(c, Action.NONE, ReasonCode.BLOCKED_NO_TRADE_BAND, w[c], buy=size)
            else:
                change(c, Action.BUY, ReasonCode.BUY_TOP_K, w[c] + size, k_buy=p.k_buy, z_keep=p.z_keep)
        else:
            remaining.append(c)

    # Rotation: the best remaining candidates against the worst kept names.
    worst = sorted(kept, key=lambda i: (z[i], symbols[i]))  # lowest z first
    h_index = 0
    for c in remaining:
        if h_index >= len(worst):  # every kept name already rotated out
            change(c, Action.NONE, ReasonCode.BLOCKED_ROTATION_GAP, w[c], dz_min=p.dz_min)
            continue
        h = worst[h_index]
        gap = z[c] - z[h]
        size = min(slot - w[c], max_trade[c])
        gain = z[c] * size - z[h] * w[h] - p.gamma * (costs[c] * size + costs[h] * w[h])
        if gap < p.dz_min:
            change(c, Action.NONE, ReasonCode.BLOCKED_ROTATION_GAP, w[c], z_gap=gap, dz_min=p.dz_min,
                   against_rank=rank[h])  # fmt: skip
        elif gain <= p.tau_u:
            change(c, Action.NONE, ReasonCode.BLOCKED_ROTATION_UTILITY, w[c], utility_gain=gain, tau_u=p.tau_u,
                   z_gap=gap, against_rank=rank[h])  # fmt: skip
        elif max_trade[h] < w[h]:  # the held name cannot be sold whole within the participation cap
            change(c, Action.NONE, ReasonCode.BLOCKED_ILLIQUID, w[c], against_rank=rank[h], max_trade=max_trade[h])
        else:
            h_index += 1
            sell(h, ReasonCode.ROTATE_BETTER_CANDIDATE, replaced_by_rank=rank[c], z_gap=gap, utility_gain=gain)
            change(c, Action.BUY, ReasonCode.ROTATE_BETTER_CANDIDATE, w[c] + buy_size(c), replaces_rank=rank[h],
                   z_gap=gap, utility_gain=gain)  # fmt: skip

    changes = tuple(decided[i] for i in sorted(decided, key=lambda i: rank[i]))
    return RotationDecision(target_weights=target, changes=changes, turnover=float(np.abs(target - w).sum() / 2.0))
