"""Execution: orders leave the outbox, fills come back and change the holdings and their tax lots.

Pure rules here (the store applies them under the portfolio's row lock):

- :func:`apply_fill`: a BUY adds shares and one tax lot (``lot_id`` the fill id, cost basis the fill price plus
  the commission per share, acquired at the fill time) and spends ``shares × price + commission`` of cash; a SELL
  removes shares from the lots its order names first (a rebalance's SELL names the lots its recommendation chose
  by the policy's lot method: :func:`planned_lots`), then from the other lots first in, first out (lots without a
  date last), and adds ``shares × price − commission`` to cash, with the realised gain against the lots' cost
  basis. A fill that would make cash negative
  (no margin) or sell more than is held (no shorts) is refused.
- :func:`paper_fill_price`: the paper broker fills at the stored price moved against the order by half the spread
  and the market impact; :func:`impact_fraction` estimates the impact by the configured model (a fixed number of
  basis points, or the square-root law or Almgren et al.'s model from the order's size, the average daily volume
  and the daily volatility: ``services.trading.estimate_trade_costs``, the rebalancing flow's cost estimate), and
  :func:`liquidity` derives that volume and volatility from stored bars.
- :func:`reconcile`: expected (stored) against reported positions, per symbol, the differences beyond a
  tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

import numpy as np

from command_side.trading_model import OpenOrder, Position, PositionLot
from services.errors import InvalidInputError, PreconditionError
from services.trading import CostModel, ImpactModel, estimate_trade_costs

SHARE_TOLERANCE = 1e-9
"""Share counts closer than this are equal."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    """An execution of (part of) an order."""

    fill_id: str
    """The executing broker's id of the fill: a repeat is ignored (idempotent reports)."""
    order_id: str
    symbol: str
    side: str
    """``BUY`` or ``SELL``."""
    shares: float
    """Shares filled (> 0)."""
    price: float
    """Price per share ($, > 0)."""
    commission: float = 0.0
    """Commission of the fill ($, ≥ 0)."""
    filled_at: datetime


@dataclass(frozen=True, slots=True)
class FillEffect:
    """What a fill did to the holdings."""

    positions: tuple[Position, ...]
    cash: float
    realised_gain: float
    """Proceeds minus the sold lots' cost basis ($); 0 for a BUY."""


def _check(fill: Fill) -> None:
    if fill.side not in ("BUY", "SELL"):
        raise InvalidInputError.for_field("side", f"must be BUY or SELL, got {fill.side!r}")
    for name in ("shares", "price"):
        value = getattr(fill, name)
        if not (math.isfinite(value) and value > 0):
            raise InvalidInputError.for_field(name, f"must be finite and > 0, got {value}")
    if not (math.isfinite(fill.commission) and fill.commission >= 0):
        raise InvalidInputError.for_field("commission", f"must be finite and ≥ 0, got {fill.commission}")


def planned_lots(plan: Sequence[tuple[str, float]], filled: float, shares: float) -> list[tuple[str, float]]:
    """The part of an order's lot plan a fill relieves: the plan's next ``shares`` after the ``filled`` ones.

    Parameters
    ----------
    plan : sequence of (str, float)
        The order's lots to relieve, ``(lot_id, shares)`` in the order the recommendation took them.
    filled : float
        Shares the order had filled before this fill.
    shares : float
        Shares of this fill.

    Returns
    -------
    list of (str, float)
        ``(lot_id, shares)`` for this fill, in plan order; shorter than ``shares`` when the plan runs out.
    """
    out: list[tuple[str, float]] = []
    skip, need = filled, shares
    for lot_id, planned in plan:
        if need <= SHARE_TOLERANCE:
            break
        left = planned - skip
        skip = max(0.0, skip - planned)
        if left <= SHARE_TOLERANCE:
            continue
        take = min(left, need)
        out.append((lot_id, take))
        need -= take
    return out


def apply_fill(
    positions: Sequence[Position],
    cash: float,
    fill: Fill,
    lots: Sequence[tuple[str, float]] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> FillEffect:
    """The holdings after ``fill`` (module docstring).

    Parameters
    ----------
    positions : sequence of Position
        The stored positions with their lots.
    cash : float
        Cash held ($).
    fill : Fill
    lots : sequence of (str, float), optional
        For a SELL: ``(lot_id, shares)`` to relieve first (:func:`planned_lots`); a lot no longer held, or holding
        fewer shares, gives what it has and the rest comes first in, first out from the other lots.
    aliases : mapping of str to sequence of str, optional
        Lots a planned ``lot_id`` stands for, taken in order up to its shares: a plan made while a BUY was open
        names its lot ``order:<order_id>`` (:func:`expected_after`); the BUY's fills became lots named by their
        fill ids.

    Returns
    -------
    FillEffect

    Raises
    ------
    InvalidInputError
        A fill's side, shares, price or commission is invalid (naming the field).
    PreconditionError
        A BUY costs more than the cash held, or a SELL sells more shares than are held.
    """
    _check(fill)
    by_symbol = {p.symbol: p for p in positions}
    held = by_symbol.get(fill.symbol, Position(symbol=fill.symbol, shares=0.0))
    gross = fill.shares * fill.price
    if fill.side == "BUY":
        spent = gross + fill.commission
        if spent > cash + 1e-6:
            raise PreconditionError(
                f"the fill of {fill.shares:g} {fill.symbol} costs {spent:,.2f} with {cash:,.2f} of cash (no margin)"
            )
        lot = PositionLot(
            lot_id=fill.fill_id,
            shares=fill.shares,
            cost_basis=fill.price + fill.commission / fill.shares,
            acquired=fill.filled_at,
        )
        updated = replace(held, shares=held.shares + fill.shares, lots=(*held.lots, lot), price=None)
        new_cash, gain = max(0.0, cash - spent), 0.0
    else:
        if fill.shares > held.shares + SHARE_TOLERANCE:
            raise PreconditionError(f"the fill sells {fill.shares:g} {fill.symbol} of {held.shares:g} held (no shorts)")
        remaining, basis = fill.shares, 0.0
        left = {lot.lot_id: lot.shares for lot in held.lots}
        cost = {lot.lot_id: lot.cost_basis for lot in held.lots}
        for lot_id, planned in lots:  # the order's lots first
            budget = planned
            for held_id in (aliases or {}).get(lot_id, (lot_id,)):
                take = min(budget, left.get(held_id, 0.0), remaining)
                if take > 0:
                    left[held_id] -= take
                    remaining -= take
                    budget -= take
                    basis += take * cost[held_id]
        fifo = sorted(held.lots, key=lambda lot: (lot.acquired is None, lot.acquired or datetime.min, lot.lot_id))
        for lot in fifo:
            take = min(left[lot.lot_id], remaining)
            left[lot.lot_id] -= take
            remaining -= take
            basis += take * lot.cost_basis
        kept = [replace(lot, shares=left[lot.lot_id]) for lot in held.lots if left[lot.lot_id] > SHARE_TOLERANCE]
        untracked = max(0.0, remaining)  # shares held without lots: no basis to report
        proceeds = gross - fill.commission
        gain = proceeds - basis - untracked * fill.price if held.lots else 0.0
        shares = max(0.0, held.shares - fill.shares)
        updated = replace(held, shares=shares, lots=tuple(kept), price=None)
        new_cash = cash + proceeds
    rest = [p for p in positions if p.symbol != fill.symbol]
    if updated.shares > SHARE_TOLERANCE:
        rest.append(updated)
    return FillEffect(tuple(sorted(rest, key=lambda p: p.symbol)), new_cash, gain)


def expected_after(
    positions: Sequence[Position], cash: float, orders: Sequence[OpenOrder]
) -> tuple[tuple[Position, ...], float]:
    """The holdings and cash once the open orders have traded what they still have to, at their reference prices.

    What a new plan starts from while earlier orders are still working (``GenerateRebalance``): a SELL relieves
    lots as its fills will (its own lots first, :func:`planned_lots`, then first in, first out), never more than is
    held; a BUY adds its remaining shares, as a lot ``order:<order_id>`` at the reference price acquired when the
    order was made (unless the position is held without lots). Sells first; commissions are not known and not counted.

    Parameters
    ----------
    positions : sequence of Position
        The stored positions with their lots.
    cash : float
        Cash held ($).
    orders : sequence of OpenOrder
        The portfolio's open orders.

    Returns
    -------
    tuple of (tuple of Position, float)
        The expected positions (by symbol) and cash ($; below 0 when the open buys cost more than there is).
    """
    current = tuple(positions)
    for order in sorted(orders, key=lambda o: (o.side != "SELL", o.created_at, o.order_id)):
        held = next((p for p in current if p.symbol == order.symbol), Position(symbol=order.symbol, shares=0.0))
        if order.side == "SELL":
            shares = min(order.remaining, held.shares)
            if shares <= SHARE_TOLERANCE:
                continue
            sale = Fill(fill_id=f"order:{order.order_id}", order_id=order.order_id, symbol=order.symbol,
                        side="SELL", shares=shares, price=order.reference_price, commission=0.0,
                        filled_at=order.created_at)  # fmt: skip
            effect = apply_fill(current, cash, sale, planned_lots(order.lots, order.filled, shares))
            current, cash = effect.positions, effect.cash
            continue
        if order.remaining <= SHARE_TOLERANCE:
            continue
        lot = PositionLot(lot_id=f"order:{order.order_id}", shares=order.remaining,
                          cost_basis=order.reference_price, acquired=order.created_at)  # fmt: skip
        lots = (*held.lots, lot) if held.lots or held.shares <= SHARE_TOLERANCE else ()  # no lots: none kept
        bought = replace(held, shares=held.shares + order.remaining, lots=lots, price=None)
        current = tuple(sorted((*(p for p in current if p.symbol != order.symbol), bought), key=lambda p: p.symbol))
        cash -= order.remaining * order.reference_price
    return current, cash


class PaperImpact(StrEnum):
    """The paper broker's market-impact model (``stratopt.v1.PaperImpactModel``)."""

    FIXED = "FIXED"
    """``impact_bps`` whatever the order's size."""
    SQUARE_ROOT = "SQUARE_ROOT"
    """J = Y σ sqrt(Q / ADV) (Tóth et al., 2011; Bouchaud et al., 2018, ch. 12)."""
    ALMGREN_2005 = "ALMGREN_2005"
    """J = 0.142 σ (Q / ADV)^{3/5}, executed over one day (Almgren, Thum, Hauptmann & Li, 2005)."""


def impact_fraction(
    model: PaperImpact,
    shares: float,
    price: float,
    *,
    impact_bps: float = 0.0,
    coefficient: float = 1.0,
    adv: float | None = None,
    daily_volatility: float = 0.0,
) -> float:
    """The market impact of filling ``shares`` at ``price``, as a fraction of the price.

    Parameters
    ----------
    model : PaperImpact
        FIXED: ``impact_bps / 10⁴``; SQUARE_ROOT and ALMGREN_2005: ``services.trading.estimate_trade_costs``'s
        impact cost over the traded value.
    shares, price : float
        Shares filled (> 0) and the stored price ($).
    impact_bps : float
        The FIXED impact (basis points).
    coefficient : float
        Y of the square-root law.
    adv : float, optional
        Average daily volume (shares/day, > 0); required by the size-dependent models.
    daily_volatility : float
        σ of daily returns (a fraction).

    Raises
    ------
    InvalidInputError
        A size-dependent model without ``adv`` (``adv``), or values out of range.
    """
    if model is PaperImpact.FIXED:
        return impact_bps / 10_000.0
    if adv is None:
        raise InvalidInputError.for_field("adv", f"the {model} impact needs an average daily volume")
    costs = estimate_trade_costs(
        shares, price, adv=adv, daily_volatility=daily_volatility,
        costs=CostModel(impact_model=ImpactModel(model.value), square_root_coefficient=coefficient),
    )  # fmt: skip
    value = abs(shares) * price
    return costs.impact_cost / value if value > 0 else 0.0


def liquidity(prices: Sequence[float], volumes: Sequence[float | None]) -> tuple[float, float | None]:
    """Daily volatility and average daily volume of a symbol's recent bars (oldest first).

    σ is the sample standard deviation (ddof 1) of the simple returns of consecutive prices; the average daily
    volume the mean of the bars' volumes that are stored and positive (None when none is).

    Raises
    ------
    PreconditionError
        Fewer than 3 prices (2 returns).
    """
    p = np.asarray(prices, dtype=np.float64)
    if p.size < 3:
        raise PreconditionError(f"{p.size} stored prices: at least 3 are needed for a daily volatility")
    sigma = float(np.std(p[1:] / p[:-1] - 1.0, ddof=1))
    known = [float(v) for v in volumes[1:] if v is not None and v > 0]
    return sigma, (sum(known) / len(known) if known else None)


def paper_fill_price(side: str, price: float, *, spread_bps: float, impact: float) -> float:
    """The paper broker's fill price: ``price × (1 ± (spread_bps / 2 / 10⁴ + impact))``, + for a BUY.

    ``impact`` is a fraction of the price (:func:`impact_fraction`).
    """
    sign = 1.0 if side == "BUY" else -1.0
    return price * (1.0 + sign * (spread_bps / 2.0 / 10_000.0 + impact))


@dataclass(frozen=True, slots=True)
class Break:
    """A symbol whose reported shares differ from the stored ones."""

    symbol: str
    expected_shares: float
    reported_shares: float

    @property
    def difference(self) -> float:
        """Reported minus expected shares."""
        return self.reported_shares - self.expected_shares


def reconcile(
    expected: Sequence[Position], reported: Mapping[str, float], *, tolerance: float = SHARE_TOLERANCE
) -> tuple[Break, ...]:
    """The symbols whose reported shares differ from the expected by more than ``tolerance``, by symbol."""
    stored = {p.symbol: p.shares for p in expected}
    breaks = []
    for symbol in sorted(set(stored) | set(reported)):
        e, r = stored.get(symbol, 0.0), reported.get(symbol, 0.0)
        if abs(e - r) > tolerance:
            breaks.append(Break(symbol, e, r))
    return tuple(breaks)
