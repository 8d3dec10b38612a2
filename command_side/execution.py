"""Execution: orders leave the outbox, fills come back and change the holdings and their tax lots.

Pure rules here (the store applies them under the portfolio's row lock):

- :func:`apply_fill`: a BUY adds shares and one tax lot (``lot_id`` the fill id, cost basis the fill price plus
  the commission per share, acquired at the fill time) and spends ``shares × price + commission`` of cash; a SELL
  removes shares from the lots first in, first out (lots without a date last) and adds ``shares × price −
  commission`` to cash, with the realised gain against the lots' cost basis. A fill that would make cash negative
  (no margin) or sell more than is held (no shorts) is refused.
- :func:`paper_fill_price`: the paper broker fills at the stored price moved against the order by half the spread
  and the impact, both in basis points.
- :func:`reconcile`: expected (stored) against reported positions, per symbol, the differences beyond a
  tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from command_side.trading_model import Position, PositionLot
from services.errors import InvalidInputError, PreconditionError

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


def apply_fill(positions: Sequence[Position], cash: float, fill: Fill) -> FillEffect:
    """The holdings after ``fill`` (module docstring).

    Parameters
    ----------
    positions : sequence of Position
        The stored positions with their lots.
    cash : float
        Cash held ($).
    fill : Fill

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
        remaining, lots, basis = fill.shares, [], 0.0
        order = sorted(held.lots, key=lambda lot: (lot.acquired is None, lot.acquired or datetime.min, lot.lot_id))
        for lot in order:
            take = min(lot.shares, remaining)
            remaining -= take
            basis += take * lot.cost_basis
            if lot.shares - take > SHARE_TOLERANCE:
                lots.append(replace(lot, shares=lot.shares - take))
        untracked = max(0.0, remaining)  # shares held without lots: no basis to report
        proceeds = gross - fill.commission
        gain = proceeds - basis - untracked * fill.price if held.lots else 0.0
        shares = max(0.0, held.shares - fill.shares)
        updated = replace(held, shares=shares, lots=tuple(lots), price=None)
        new_cash = cash + proceeds
    rest = [p for p in positions if p.symbol != fill.symbol]
    if updated.shares > SHARE_TOLERANCE:
        rest.append(updated)
    return FillEffect(tuple(sorted(rest, key=lambda p: p.symbol)), new_cash, gain)


def paper_fill_price(side: str, price: float, *, spread_bps: float, impact_bps: float) -> float:
    """The paper broker's fill price: ``price × (1 ± (spread_bps / 2 + impact_bps) / 10⁴)``, + for a BUY."""
    sign = 1.0 if side == "BUY" else -1.0
    return price * (1.0 + sign * (spread_bps / 2.0 + impact_bps) / 10_000.0)


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
