"""Tax lots of equity holdings: validation, lot selection for sells, realised gains, loss harvesting, wash sales.

A holding of one symbol may carry tax lots (lot id, shares, cost basis per share, acquisition date) whose shares add
up to the holding's shares. A sell of S shares at price p on a sale date consumes lots in the order of a lot
method; each consumed lot j contributes x_j shares with realised gain g_j = x_j (p − b_j) (b_j its cost basis per
share; a negative gain is a loss) and a term: LONG_TERM when the days held, sale date − acquisition date, exceed
``TaxSettings.long_term_after_days`` when that is set, and by default (None) when the sale is after the first
anniversary of the acquisition ("held more than one year", the US rule; an acquisition on 29 February has its
anniversary on 28 February), else SHORT_TERM. Proceeds are shares × price, gross of trading costs.

The tax model is linear: estimated tax = Σ_j g_j · r(term_j) with the short- and long-term rates of
``TaxSettings`` (defaults 0.37 and 0.20 are placeholders, roughly the top US federal rates without the net
investment income tax, not advice). A loss counts as a negative tax (a saving at its term's rate); the netting
order of short- and long-term gains and losses, loss carry-forwards, state taxes and the annual loss cap are not
modelled.

Lot methods (``LotMethod``):

* FIFO — earliest acquisition date first (the US default when lots are not specifically identified);
* HIFO — highest cost basis per share first;
* TAX_MINIMIZING — lowest tax per share t_j = (p − b_j) · r(term_j) first: losses first (short-term losses, taxed
  at the higher rate, are worth more than long-term losses of the same size per share), then the gains that cost
  the least tax, so a long-term gain is preferred to a short-term gain unless its per-share tax is higher. Under the
  linear model each share's tax is independent of the others, so the problem min Σ_j x_j t_j subject to
  Σ_j x_j = S, 0 ≤ x_j ≤ n_j is a fractional knapsack with unit weights, and taking lots greedily by increasing
  t_j is optimal (exchange argument: moving a share from a lot of higher t to one of lower t never raises the
  total).

Ties keep FIFO order (acquisition date, then the order the lots were given). ``prefer_losses`` puts the lots with
an unrealised loss (b_j > p) first, each group in the method's order (tax-loss harvesting inside the trade).

Wash sales (US IRC §1091): a loss on a sale is disallowed when substantially identical securities (here: the same
symbol) are bought within ``TaxSettings.wash_sale_window_days`` (default 30) days before or after the sale. This
module only flags the risk: buys of a symbol with a realised loss within the window (:func:`wash_sale_flags`), and
harvesting candidates or loss sales of a symbol bought within the window before the sale (:func:`recently_bought`).

Why over 500 lines: lot selection (three methods), holding terms, harvesting candidates and wash-sale flags share
the lot and sale types defined here, and each comes with its validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Final

from services.errors import InvalidInputError

LOT_SHARES_TOLERANCE: Final = 1e-9
"""Largest |Σ lot shares − holding shares| accepted, relative to max(1, holding shares)."""


class LotMethod(StrEnum):
    """Order in which a sell consumes the tax lots of a holding."""

    FIFO = "FIFO"
    """Earliest acquisition first."""
    HIFO = "HIFO"
    """Highest cost basis per share first."""
    TAX_MINIMIZING = "TAX_MINIMIZING"
    """Lowest estimated tax per share first (losses first); optimal for the linear tax model."""


class HoldingTerm(StrEnum):
    """Holding period class of a realised gain."""

    SHORT_TERM = "SHORT_TERM"
    LONG_TERM = "LONG_TERM"


@dataclass(frozen=True, slots=True)
class TaxLot:
    """Shares of one symbol bought together.

    Attributes
    ----------
    lot_id : str
        Identifier, unique within the holding.
    shares : float
        Shares in the lot (> 0; fractional shares allowed).
    cost_basis : float
        Cost basis per share ($, > 0).
    acquired : date
        Acquisition (trade) date.
    """

    lot_id: str
    shares: float
    cost_basis: float
    acquired: date


@dataclass(frozen=True, slots=True)
class Holding:
    """A position in one symbol.

    Attributes
    ----------
    symbol : str
        Instrument identifier (ticker), unique within a portfolio.
    shares : float
        Shares held (≥ 0; fractional shares allowed).
    price : float
        Current price per share ($, > 0).
    lots : tuple of TaxLot
        Tax lots whose shares add up to ``shares``; empty when lots are not tracked.
    """

    symbol: str
    shares: float
    price: float
    lots: tuple[TaxLot, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TaxSettings:
    """Holding-period boundary, tax rates and wash-sale window.

    Attributes
    ----------
    short_term_rate, long_term_rate : float
        Tax rates (fractions in [0, 1]) on short- and long-term realised gains. The defaults 0.37 / 0.20 are
        placeholders (roughly the top US federal rates), to be configured per account.
    long_term_after_days : int or None
        A gain is long-term when sale date − acquisition date > this many days; None (the default): when the sale
        is after the acquisition's first anniversary (held more than one calendar year).
    wash_sale_window_days : int
        Days before and after a loss sale in which a buy of the same symbol is a wash sale (default 30).
    """

    short_term_rate: float = 0.37
    long_term_rate: float = 0.20
    long_term_after_days: int | None = None
    wash_sale_window_days: int = 30

    def rate(self, term: HoldingTerm) -> float:
        """Tax rate of a term."""
        return self.long_term_rate if term is HoldingTerm.LONG_TERM else self.short_term_rate


@dataclass(frozen=True, slots=True)
class LotSale:
    """The part of one tax lot consumed by a sell.

    Attributes
    ----------
    lot_id : str
        The lot.
    shares : float
        Shares sold out of the lot.
    cost_basis : float
        The lot's cost basis per share ($).
    acquired : date
        The lot's acquisition date.
    holding_days : int
        Sale date − acquisition date, in days.
    term : HoldingTerm
        LONG_TERM when ``holding_days`` > ``TaxSettings.long_term_after_days``.
    proceeds : float
        shares × sale price ($, gross of trading costs).
    gain : float
        Realised gain shares × (price − cost basis) ($; negative for a loss).
    tax : float
        gain × the term's rate ($; negative for a loss).
    """

    lot_id: str
    shares: float
    cost_basis: float
    acquired: date
    holding_days: int
    term: HoldingTerm
    proceeds: float
    gain: float
    tax: float


@dataclass(frozen=True, slots=True)
class LotSelection:
    """The lots a sell consumes and the gains it realises.

    Attributes
    ----------
    shares : float
        Shares sold.
    price : float
        Sale price per share ($).
    sale_date : date
        Date of the sale.
    method : LotMethod
        Lot method applied.
    lots : tuple of LotSale
        Lots consumed, in the order taken.
    short_term_gain, long_term_gain : float
        Net realised short- and long-term gains ($; negative for a net loss).
    estimated_tax : float
        short_term_gain × short rate + long_term_gain × long rate ($; negative = saving).
    """

    shares: float
    price: float
    sale_date: date
    method: LotMethod
    lots: tuple[LotSale, ...]
    short_term_gain: float
    long_term_gain: float
    estimated_tax: float

    @property
    def realized_gain(self) -> float:
        """Net realised gain, short- plus long-term ($)."""
        return self.short_term_gain + self.long_term_gain

    @property
    def cost_basis(self) -> float:
        """Total cost basis of the shares sold ($)."""
        return sum(lot.shares * lot.cost_basis for lot in self.lots)


@dataclass(frozen=True, slots=True)
class RealizedLoss:
    """A sale that realised a loss (for wash-sale checks of later buys).

    Attributes
    ----------
    symbol : str
        The symbol sold.
    sale_date : date
        Date of the sale.
    loss : float
        Realised loss ($, > 0).
    """

    symbol: str
    sale_date: date
    loss: float


@dataclass(frozen=True, slots=True)
class Purchase:
    """A recent buy of a symbol (for wash-sale checks of loss sales)."""

    symbol: str
    trade_date: date
    shares: float


@dataclass(frozen=True, slots=True)
class WashSaleFlag:
    """A buy of a symbol with a realised loss on the same symbol within the wash-sale window.

    Attributes
    ----------
    symbol : str
        The symbol bought.
    buy_date : date
        Date of the buy.
    loss_date : date
        Date of the loss sale.
    loss : float
        The loss at risk of disallowance ($, > 0).
    days_apart : int
        buy date − loss date (negative when the loss sale comes after the buy).
    """

    symbol: str
    buy_date: date
    loss_date: date
    loss: float
    days_apart: int


@dataclass(frozen=True, slots=True)
class HarvestCandidate:
    """A tax lot with an unrealised loss.

    Attributes
    ----------
    symbol : str
        The symbol.
    lot_id : str
        The lot.
    shares : float
        Shares in the lot.
    cost_basis : float
        Cost basis per share ($).
    price : float
        Current price ($).
    unrealized_loss : float
        shares × (cost basis − price) ($, > 0).
    term : HoldingTerm
        Term the loss would have if realised on the as-of date.
    tax_saving : float
        unrealized_loss × the term's rate ($): the linear model's tax saving of realising it.
    recently_bought : bool
        Whether the symbol was bought within the wash-sale window before the as-of date (another lot acquired, or a
        given recent purchase): selling this lot at a loss now risks a wash sale.
    """

    symbol: str
    lot_id: str
    shares: float
    cost_basis: float
    price: float
    unrealized_loss: float
    term: HoldingTerm
    tax_saving: float
    recently_bought: bool


def holding_term(acquired: date, sold: date, *, long_term_after_days: int | None = None) -> HoldingTerm:
    """Term of a gain: LONG_TERM when held more than one year (or more than ``long_term_after_days`` days).

    By default (None) a lot is long-term when sold after the first anniversary of its acquisition (IRS
    Publication 550: "more than 1 year"; 29 February → 28 February): bought 2023-06-01, sold 2024-06-01 (366
    days, across 29 February 2024) is short-term, sold 2024-06-02 long-term. With a day count, LONG_TERM when
    sold − acquired > ``long_term_after_days``.
    """
    if long_term_after_days is not None:
        return HoldingTerm.LONG_TERM if (sold - acquired).days > long_term_after_days else HoldingTerm.SHORT_TERM
    try:
        anniversary = acquired.replace(year=acquired.year + 1)
    except ValueError:  # 29 February
        anniversary = acquired.replace(year=acquired.year + 1, day=28)
    return HoldingTerm.LONG_TERM if sold > anniversary else HoldingTerm.SHORT_TERM


def validate_tax_settings(settings: TaxSettings, *, field: str = "tax_settings") -> None:
    """Raise ``InvalidInputError`` naming ``{field}.<attribute>`` for a rate outside [0, 1] or a negative day count.

    Raises
    ------
    InvalidInputError
        For a non-finite rate or one outside [0, 1], or a negative ``long_term_after_days`` /
        ``wash_sale_window_days``.
    """
    for attribute in ("short_term_rate", "long_term_rate"):
        value = getattr(settings, attribute)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidInputError.for_field(f"{field}.{attribute}", f"is {value!r}; must lie in [0, 1]")
    for attribute in ("long_term_after_days", "wash_sale_window_days"):
        value = getattr(settings, attribute)
        if value is not None and value < 0:
            raise InvalidInputError.for_field(f"{field}.{attribute}", f"is {value}; must be ≥ 0")


def validate_lots(lots: Sequence[TaxLot], shares: float, *, field: str, as_of: date | None = None) -> None:
    """Check the tax lots of one holding.

    Parameters
    ----------
    lots : sequence of TaxLot
        The holding's lots (may be empty: lots not tracked).
    shares : float
        The holding's shares, which non-empty lots must add up to (within ``LOT_SHARES_TOLERANCE`` relative).
    field : str
        Path of the holding in the request, e.g. ``holdings[1]``; errors symbol ``{field}.lots...``.
    as_of : date, optional
        When given, no lot may be acquired after it.

    Raises
    ------
    InvalidInputError
        Naming ``{field}.lots[j].lot_id`` for an empty or duplicate id, ``{field}.lots[j].shares`` for shares that
        are not finite and positive, ``{field}.lots[j].cost_basis`` for a basis that is not finite and positive,
        ``{field}.lots[j].acquired`` for an acquisition after ``as_of``, and ``{field}.lots`` when the lots' shares
        do not add up to the holding's.
    """
    if not lots:
        return
    seen: set[str] = set()
    total = 0.0
    for j, lot in enumerate(lots):
        path = f"{field}.lots[{j}]"
        if not lot.lot_id:
            raise InvalidInputError.for_field(f"{path}.lot_id", "must not be empty")
        if lot.lot_id in seen:
            raise InvalidInputError.for_field(f"{path}.lot_id", f"duplicate lot id {lot.lot_id!r}")
        seen.add(lot.lot_id)
        if not (math.isfinite(lot.shares) and lot.shares > 0.0):
            raise InvalidInputError.for_field(f"{path}.shares", f"is {lot.shares!r}; must be finite and > 0")
        if not (math.isfinite(lot.cost_basis) and lot.cost_basis > 0.0):
            raise InvalidInputError.for_field(f"{path}.cost_basis", f"is {lot.cost_basis!r}; must be finite and > 0")
        if as_of is not None and lot.acquired > as_of:
            raise InvalidInputError.for_field(
                f"{path}.acquired", f"is {lot.acquired.isoformat()}, after the as-of date {as_of.isoformat()}"
            )
        total += lot.shares
    if abs(total - shares) > LOT_SHARES_TOLERANCE * max(1.0, abs(shares)):
        raise InvalidInputError.for_field(
            f"{field}.lots", f"lot shares add up to {total:.10g}, but the holding has {shares:.10g} shares"
        )


def validate_holdings(holdings: Sequence[Holding], *, as_of: date | None = None, field: str = "holdings") -> None:
    """Check symbols, shares, prices and lots of a portfolio's holdings.

    Raises
    ------
    InvalidInputError
        Naming ``{field}[i].symbol`` for an empty or duplicate symbol, ``{field}[i].shares`` for shares that are not
        finite or are negative, ``{field}[i].price`` for a price that is not finite and positive, and the lot
        fields of :func:`validate_lots`.
    """
    seen: set[str] = set()
    for i, holding in enumerate(holdings):
        path = f"{field}[{i}]"
        if not holding.symbol:
            raise InvalidInputError.for_field(f"{path}.symbol", "must not be empty")
        if holding.symbol in seen:
            raise InvalidInputError.for_field(f"{path}.symbol", f"duplicate symbol {holding.symbol!r}")
        seen.add(holding.symbol)
        if not (math.isfinite(holding.shares) and holding.shares >= 0.0):
            raise InvalidInputError.for_field(f"{path}.shares", f"is {holding.shares!r}; must be finite and ≥ 0")
        if not (math.isfinite(holding.price) and holding.price > 0.0):
            raise InvalidInputError.for_field(f"{path}.price", f"is {holding.price!r}; must be finite and > 0")
        validate_lots(holding.lots, holding.shares, field=path, as_of=as_of)


def _lot_order(
    lots: Sequence[TaxLot], price: float, sale_date: date, method: LotMethod, settings: TaxSettings, prefer_losses: bool
) -> list[int]:
    """Indices of ``lots`` in the order a sell consumes them."""

    def tax_per_share(j: int) -> float:
        lot = lots[j]
        term = holding_term(lot.acquired, sale_date, long_term_after_days=settings.long_term_after_days)
        return (price - lot.cost_basis) * settings.rate(term)

    fifo = sorted(range(len(lots)), key=lambda j: lots[j].acquired)  # stable: ties keep the given order
    if method is LotMethod.FIFO:
        order = fifo
    elif method is LotMethod.HIFO:
        order = sorted(fifo, key=lambda j: -lots[j].cost_basis)
    else:
        order = sorted(fifo, key=tax_per_share)
    if prefer_losses:
        order = sorted(order, key=lambda j: 0 if lots[j].cost_basis > price else 1)
    return order


def select_lots(
    lots: Sequence[TaxLot],
    shares: float,
    price: float,
    sale_date: date,
    *,
    method: LotMethod = LotMethod.FIFO,
    settings: TaxSettings | None = None,
    prefer_losses: bool = False,
    field: str = "lots",
) -> LotSelection:
    """The lots a sell of ``shares`` at ``price`` consumes, with the gains and the tax it realises.

    Lots are taken whole in the method's order (see the module docstring), the last one partly. The lots are not
    validated here (see :func:`validate_lots`).

    Parameters
    ----------
    lots : sequence of TaxLot
        The holding's lots.
    shares : float
        Shares to sell (> 0, at most the lots' total).
    price : float
        Sale price per share ($, > 0).
    sale_date : date
        Date of the sale (for the holding periods).
    method : LotMethod, default FIFO
        Lot order.
    settings : TaxSettings, optional
        Rates and holding-period boundary; ``TaxSettings()`` when omitted.
    prefer_losses : bool, default False
        Take the lots with an unrealised loss first.
    field : str
        Path of the lots in the request, for errors.

    Returns
    -------
    LotSelection
        The consumed lots and the realised short- and long-term gains and estimated tax.

    Raises
    ------
    InvalidInputError
        Naming ``field`` when ``shares`` is not positive or exceeds the lots' total.
    """
    settings = TaxSettings() if settings is None else settings
    available = sum(lot.shares for lot in lots)
    if not (math.isfinite(shares) and shares > 0.0):
        raise InvalidInputError.for_field(field, f"cannot sell {shares!r} shares; must be finite and > 0")
    if shares > available * (1.0 + LOT_SHARES_TOLERANCE) + LOT_SHARES_TOLERANCE:
        raise InvalidInputError.for_field(field, f"cannot sell {shares:.10g} shares out of lots of {available:.10g}")
    remaining = shares
    sales: list[LotSale] = []
    short_gain = long_gain = 0.0
    for j in _lot_order(lots, price, sale_date, method, settings, prefer_losses):
        if remaining <= LOT_SHARES_TOLERANCE * max(1.0, shares):
            break
        lot = lots[j]
        taken = min(lot.shares, remaining)
        remaining -= taken
        days = (sale_date - lot.acquired).days
        term = holding_term(lot.acquired, sale_date, long_term_after_days=settings.long_term_after_days)
        gain = taken * (price - lot.cost_basis)
        if term is HoldingTerm.LONG_TERM:
            long_gain += gain
        else:
            short_gain += gain
        sales.append(
            LotSale(
                lot_id=lot.lot_id,
                shares=taken,
                cost_basis=lot.cost_basis,
                acquired=lot.acquired,
                holding_days=days,
                term=term,
                proceeds=taken * price,
                gain=gain,
                tax=gain * settings.rate(term),
            )
        )
    return LotSelection(
        shares=shares,
        price=price,
        sale_date=sale_date,
        method=method,
        lots=tuple(sales),
        short_term_gain=short_gain,
        long_term_gain=long_gain,
        estimated_tax=short_gain * settings.short_term_rate + long_gain * settings.long_term_rate,
    )


def recently_bought(
    symbol: str,
    lots: Sequence[TaxLot],
    as_of: date,
    *,
    settings: TaxSettings | None = None,
    recent_purchases: Sequence[Purchase] = (),
    excluding: frozenset[str] = frozenset(),
) -> bool:
    """Whether ``symbol`` was bought within the wash-sale window before (or on) ``as_of``.

    A lot acquired in [as_of − window, as_of] whose id is not in ``excluding`` (the lots being sold: shares sold are
    not their own replacement), or a purchase of ``symbol`` in ``recent_purchases`` dated within the window either side
    of ``as_of``, counts.
    """
    window = (TaxSettings() if settings is None else settings).wash_sale_window_days
    if any(lot.lot_id not in excluding and 0 <= (as_of - lot.acquired).days <= window for lot in lots):
        return True
    return any(p.symbol == symbol and abs((as_of - p.trade_date).days) <= window for p in recent_purchases)


def harvest_candidates(
    holdings: Sequence[Holding],
    as_of: date,
    *,
    settings: TaxSettings | None = None,
    recent_purchases: Sequence[Purchase] = (),
) -> tuple[HarvestCandidate, ...]:
    """Tax lots with an unrealised loss (cost basis above the current price), in holding and lot order.

    Each candidate is flagged ``recently_bought`` when the symbol was bought within the wash-sale window before
    ``as_of`` (another of its lots acquired then, or a purchase in ``recent_purchases``; see
    :func:`recently_bought`). Holdings are not validated here (see :func:`validate_holdings`).
    """
    settings = TaxSettings() if settings is None else settings
    candidates = []
    for holding in holdings:
        for lot in holding.lots:
            if lot.cost_basis <= holding.price:
                continue
            term = holding_term(lot.acquired, as_of, long_term_after_days=settings.long_term_after_days)
            loss = lot.shares * (lot.cost_basis - holding.price)
            candidates.append(
                HarvestCandidate(
                    symbol=holding.symbol,
                    lot_id=lot.lot_id,
                    shares=lot.shares,
                    cost_basis=lot.cost_basis,
                    price=holding.price,
                    unrealized_loss=loss,
                    term=term,
                    tax_saving=loss * settings.rate(term),
                    recently_bought=recently_bought(
                        holding.symbol,
                        holding.lots,
                        as_of,
                        settings=settings,
                        recent_purchases=recent_purchases,
                        excluding=frozenset({lot.lot_id}),
                    ),
                )
            )
    return tuple(candidates)


def wash_sale_flags(
    buys: Sequence[str],
    buy_date: date,
    realized_losses: Sequence[RealizedLoss],
    *,
    settings: TaxSettings | None = None,
) -> tuple[WashSaleFlag, ...]:
    """Buys of symbols with a realised loss within the wash-sale window, one flag per (buy, loss) pair.

    Parameters
    ----------
    buys : sequence of str
        Symbols bought on ``buy_date``.
    buy_date : date
        Date of the buys.
    realized_losses : sequence of RealizedLoss
        Loss sales (this trade list's and recent ones); a loss dated within ``wash_sale_window_days`` of the buy,
        before or after, is flagged.
    settings : TaxSettings, optional
        Provides the window; ``TaxSettings()`` when omitted.
    """
    window = (TaxSettings() if settings is None else settings).wash_sale_window_days
    return tuple(
        WashSaleFlag(
            symbol=loss.symbol,
            buy_date=buy_date,
            loss_date=loss.sale_date,
            loss=loss.loss,
            days_apart=(buy_date - loss.sale_date).days,
        )
        for symbol in dict.fromkeys(buys)  # each symbol once, in order
        for loss in realized_losses
        if loss.symbol == symbol and loss.loss > 0.0 and abs((buy_date - loss.sale_date).days) <= window
    )
