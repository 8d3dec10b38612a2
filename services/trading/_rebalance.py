"""Drift of a portfolio of share holdings against target weights, and the whole-share trade list that restores them.

Weights (:func:`check_drift`). For N holdings with shares s_i ≥ 0 at prices p_i and cash C ≥ 0, the portfolio
value is V = Σ_i s_i p_i + C and the current weight of symbol i is w_i = s_i p_i / V. The target weights t_i of the
symbols sum to at most 1; the remainder t_cash = 1 − Σ_i t_i is the target cash weight. Cash is a line of the
portfolio: its weight w_cash = C / V enters the portfolio drift (it is reported apart from the per-symbol arrays and
has no band). Drift is d_i = w_i − t_i per symbol (fractions) and d_cash = w_cash − t_cash. The portfolio drift
D = Σ_i |d_i| + |d_cash| is the L1 distance to the target, a two-way measure: since the d sum to 0 it is twice the
one-way drift Σ max(d, 0) = D / 2, the weight that must be sold (or bought) to reach the target. The portfolio is
flagged when D > ``threshold`` (default 0.05, two-way). Each symbol has a no-trade band: it breaches when
|d_i| > a_i (absolute band, a fraction) or |d_i| > r_i · |t_i| (relative band, a fraction of its target), for
whichever of the two is set; a symbol with neither set breaches at any non-zero drift.

Trade list (:func:`generate_rebalance`), in this order:

1. symbols inside their band are not traded; a symbol outside trades all the way back to its target (not to the band
   edge): desired value Δ_i = (t_i − w_i) V at the current prices, ignoring the costs' effect on V;
2. turnover cap: the one-way turnover of a trade list is max(Σ buy value, Σ sell value) / V (equal to half the
   two-way Σ |Δw| over the symbols and the cash line, costs aside); when the desired trades exceed the cap every
   trade is scaled by the same factor cap / desired turnover (proportional scaling, so the trades keep their
   direction and relative sizes and the symbols stay short of their targets);
3. whole shares: each trade's share count is rounded towards zero (|q| → ⌊|q|⌋), so the position moves towards its
   target without overshooting it and ends within one share of it (of the scaled trade under a cap); without
   ``allow_short`` a sell never exceeds the shares held (a fractional remainder of a sold-out holding stays);
4. minimum trade size: trades worth less than ``min_trade_value`` ($) are dropped, and a sell whose estimated cost
   is at least its value is dropped (it would cost more than it raises);
5. cash: buys are financed by the sells' proceeds net of their costs plus the cash held; when the buys and their
   costs exceed that, every buy is scaled by the same factor α ∈ [0, 1], the largest (to 2⁻⁶⁰ by bisection) for
   which the buys after steps 3-4 fit, so the post-trade cash C + Σ sells − Σ buys − Σ costs is never negative.

All estimated costs are treated as cash outlays (the commission is paid, the half-spread and the impact worsen the
execution price); positions are valued at the given prices before and after the trades. Short sales (only with
``allow_short``, which also admits negative target weights) credit their proceeds to cash; margin is not
modelled. The trade list is produced whatever the portfolio drift: :class:`DriftReport` says whether the threshold
is exceeded, and the caller decides whether to rebalance.

Costs of a trade of Q shares at price p (value Q p), with average daily volume ADV (shares/day), daily volatility σ
(a fraction, e.g. 0.02 = 2 %/day) and quoted spread s (basis points):

* commission = commission per trade ($) + commission per share ($) · Q;
* half-spread = (s / 2) · 10⁻⁴ · Q p;
* market impact = J · Q p, J the average price impact as a fraction of price, by ``ImpactModel``:

  - SQUARE_ROOT, the square-root law: J = Y σ sqrt(Q / ADV), so the cost grows as Q^{3/2} (the "3/2-power" cost of
    Grinold & Kahn; Tóth et al. 2011; Bouchaud et al. 2018, ch. 12). Y is a dimensionless constant of order one;
    the default Y = 1 (Y absorbs whether the impact is read at its peak or, about 2/3 of that, averaged over the
    execution);
  - ALMGREN_2005, the model fitted by Almgren, Thum, Hauptmann & Li (2005) to Citigroup US equity orders: with
    the order executed over T days (``execution_days``, default 1), J = η σ (Q / (ADV T))^β + I / 2, the temporary
    impact with η = 0.142 and β = 3/5 (the square root rejected in favour of the 3/5 power) plus half the permanent
    impact I = γ σ (Q / ADV) (Θ / ADV)^{1/4} with γ = 0.314 and Θ the shares outstanding; the permanent term is
    included only when shares outstanding are given. The temporary cost grows as Q^{8/5}.
  - NONE: no impact.

References
----------
R. Almgren, C. Thum, E. Hauptmann and H. Li, "Direct estimation of equity market impact", Risk 18(7), 2005,
pp. 58-62. B. Tóth, Y. Lempérière, C. Deremble, J. de Lataillade, J. Kockelkoren and J.-P. Bouchaud, "Anomalous
price impact and the critical nature of liquidity in financial markets", Physical Review X 1, 021006, 2011.
J.-P. Bouchaud, J. Bonart, J. Donier and M. Gould, "Trades, Quotes and Prices", Cambridge University Press, 2018.
R. Grinold and R. Kahn, "Active Portfolio Management", 2nd ed., McGraw-Hill, 2000, ch. 16.

Why one long module: drift, costs (four impact models) and the whole-share trade list with its turnover and cash
checks are one computation over the same validated arrays; tax lots, the other half, live in ``_tax_lots``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from services.errors import InvalidInputError
from services.trading._tax_lots import (
    HarvestCandidate,
    Holding,
    LotMethod,
    LotSelection,
    Purchase,
    RealizedLoss,
    TaxSettings,
    WashSaleFlag,
    harvest_candidates,
    recently_bought,
    select_lots,
    validate_holdings,
    validate_tax_settings,
    wash_sale_flags,
)
from services.types import FloatArray

__all__ = [
    "DEFAULT_DRIFT_THRESHOLD",
    "CostModel",
    "DriftReport",
    "Holding",
    "ImpactModel",
    "MarketInputs",
    "RebalancePlan",
    "Side",
    "Trade",
    "TradeCosts",
    "check_drift",
    "estimate_trade_costs",
    "generate_rebalance",
]

DEFAULT_DRIFT_THRESHOLD: Final = 0.05
"""Default threshold on the two-way portfolio drift Σ|w − t| (cash line included)."""

TARGET_SUM_TOLERANCE: Final = 1e-9
"""Slack of the check Σ target weights ≤ 1."""

_SHARE_EPSILON: Final = 1e-9
"""Added to |q| before rounding down, so that a share count like 9.999999999999998 from w·V/p counts as 10."""

_CASH_BISECTION_STEPS: Final = 60


class Side(StrEnum):
    """Direction of a trade."""

    BUY = "BUY"
    SELL = "SELL"


class ImpactModel(StrEnum):
    """Market-impact cost model (see the module docstring)."""

    NONE = "NONE"
    SQUARE_ROOT = "SQUARE_ROOT"
    """J = Y σ sqrt(Q / ADV): total cost ∝ Q^{3/2}."""
    ALMGREN_2005 = "ALMGREN_2005"
    """J = η σ (Q / (ADV T))^{3/5} (+ half the permanent impact γ σ (Q/ADV) (Θ/ADV)^{1/4} when Θ is given)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    """Commission and impact parameters of the trading-cost estimate.

    Attributes
    ----------
    commission_per_trade : float
        Fixed commission per trade ($, ≥ 0).
    commission_per_share : float
        Commission per share traded ($, ≥ 0).
    impact_model : ImpactModel
        Market-impact model (default SQUARE_ROOT).
    square_root_coefficient : float
        Y of the square-root law (dimensionless, default 1.0).
    almgren_eta, almgren_beta : float
        Temporary-impact coefficient η and exponent β of Almgren et al. (2005): 0.142 and 3/5.
    almgren_gamma, almgren_delta : float
        Permanent-impact coefficient γ and turnover exponent δ of Almgren et al. (2005): 0.314 and 1/4.
    execution_days : float
        Execution horizon T of the Almgren model (days, > 0; default 1: the order spread over one trading day).
    """

    commission_per_trade: float = 0.0
    commission_per_share: float = 0.0
    impact_model: ImpactModel = ImpactModel.SQUARE_ROOT
    square_root_coefficient: float = 1.0
    almgren_eta: float = 0.142
    almgren_beta: float = 0.6
    almgren_gamma: float = 0.314
    almgren_delta: float = 0.25
    execution_days: float = 1.0


@dataclass(frozen=True, slots=True)
class MarketInputs:
    """Liquidity and risk of the N symbols, in the order of the holdings.

    Attributes
    ----------
    adv : ndarray of shape (N,)
        Average daily volume (shares/day, > 0).
    daily_volatility : ndarray of shape (N,)
        Daily return volatility σ (fraction, ≥ 0; an annualised σ divided by sqrt(252)).
    spread_bps : ndarray of shape (N,)
        Quoted bid-ask spread (basis points of price, ≥ 0); a trade pays half of it.
    shares_outstanding : ndarray of shape (N,) or None
        Shares outstanding Θ (> 0), for the permanent term of the Almgren model.
    """

    adv: FloatArray
    daily_volatility: FloatArray
    spread_bps: FloatArray
    shares_outstanding: FloatArray | None = None


@dataclass(frozen=True, slots=True)
class TradeCosts:
    """Estimated costs of one trade ($)."""

    commission: float
    spread_cost: float
    impact_cost: float

    @property
    def total(self) -> float:
        """Commission + half-spread + impact ($)."""
        return self.commission + self.spread_cost + self.impact_cost


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Current weights of a portfolio against its targets.

    Attributes
    ----------
    symbols : tuple of str, length N
        The holdings' symbols, in order.
    market_values : ndarray of shape (N,)
        shares × price ($).
    total_value : float
        Σ market values + cash ($).
    current_weights, target_weights : ndarray of shape (N,)
        Weights of the symbols (fractions of ``total_value``).
    drift : ndarray of shape (N,)
        current − target (fractions).
    cash_weight, target_cash_weight, cash_drift : float
        The cash line: cash / total value, 1 − Σ target weights, and their difference.
    portfolio_drift : float
        Two-way drift Σ|drift| + |cash_drift| (L1, fractions).
    one_way_drift : float
        portfolio_drift / 2.
    threshold : float
        Threshold on ``portfolio_drift``.
    exceeds_threshold : bool
        portfolio_drift > threshold.
    absolute_breaches, relative_breaches : ndarray of shape (N,), dtype bool
        |drift| above the absolute band, above relative band × |target| (False where the band is not set).
    breaches : ndarray of shape (N,), dtype bool
        Outside a set band (either), or non-zero drift where neither band is set.
    """

    symbols: tuple[str, ...]
    market_values: FloatArray
    total_value: float
    current_weights: FloatArray
    target_weights: FloatArray
    drift: FloatArray
    cash_weight: float
    target_cash_weight: float
    cash_drift: float
    portfolio_drift: float
    one_way_drift: float
    threshold: float
    exceeds_threshold: bool
    absolute_breaches: NDArray[np.bool_]
    relative_breaches: NDArray[np.bool_]
    breaches: NDArray[np.bool_]

    @property
    def breached_symbols(self) -> tuple[str, ...]:
        """Symbols outside their band."""
        return tuple(symbol for symbol, out in zip(self.symbols, self.breaches, strict=True) if out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trade:
    """One order of the trade list.

    Attributes
    ----------
    symbol : str
        The symbol traded.
    side : Side
        BUY or SELL.
    shares : float
        Whole shares (> 0).
    price : float
        Price per share ($).
    value : float
        shares × price ($, > 0).
    commission, spread_cost, impact_cost, total_cost : float
        Estimated costs ($); total = commission + spread + impact.
    lots : LotSelection or None
        For a sell of a holding with tax lots: the lots consumed and the gains realised (the long part only when
        the sell goes short); None otherwise.
    wash_sale : bool
        A buy: a loss on the symbol was realised within the wash-sale window. A sell: it realises a loss while the
        symbol was bought within the window before the as-of date.
    participation_capped : bool
        ``max_trade_shares`` cut this trade (a participation cap).
    """

    symbol: str
    side: Side
    shares: float
    price: float
    value: float
    commission: float
    spread_cost: float
    impact_cost: float
    total_cost: float
    lots: LotSelection | None = None
    wash_sale: bool = False
    participation_capped: bool = False

    @property
    def realized_gain(self) -> float:
        """Realised gain of a sell with lots ($; 0 otherwise)."""
        return 0.0 if self.lots is None else self.lots.realized_gain


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalancePlan:
    """A whole-share trade list, its costs, and the portfolio before and after.

    Attributes
    ----------
    trades : tuple of Trade
        Orders, in the order of the holdings (at most one per symbol).
    drift_before, drift_after : DriftReport
        Drift of the current portfolio and of the post-trade one (post-trade shares × the same prices plus the
        post-trade cash, same targets, bands and threshold).
    post_trade_shares : ndarray of shape (N,)
        Shares after the trades.
    post_trade_cash : float
        cash + Σ sell values − Σ buy values − Σ total costs ($, ≥ 0).
    total_buy_value, total_sell_value : float
        Σ values of the buys and of the sells ($).
    total_commission, total_spread_cost, total_impact_cost, total_cost : float
        Summed estimated costs ($).
    desired_turnover : float
        One-way turnover max(Σ buys, Σ sells) / V of the desired trades (breaching symbols back to target), before
        the cap, rounding, minimum size and cash check.
    turnover : float
        One-way turnover of ``trades`` (same definition and V).
    turnover_scale : float
        Factor applied to every desired trade by the turnover cap (1 when it does not bind).
    cash_scale : float
        Factor applied to every buy by the cash check (1 when it does not bind).
    dropped_below_minimum : tuple of str
        Symbols whose trade was dropped as smaller than the minimum trade value (or costlier than its value).
    short_term_gain, long_term_gain, estimated_tax : float
        Realised gains of the sells with lots, and their estimated tax ($).
    harvest_candidates : tuple of HarvestCandidate
        Lots with an unrealised loss before the trades (when an as-of date is given).
    wash_sale_flags : tuple of WashSaleFlag
        Buys of symbols with a loss realised within the window (this list's sells and ``recent_realized_losses``).
    """

    trades: tuple[Trade, ...]
    drift_before: DriftReport
    drift_after: DriftReport
    post_trade_shares: FloatArray
    post_trade_cash: float
    total_buy_value: float
    total_sell_value: float
    total_commission: float
    total_spread_cost: float
    total_impact_cost: float
    total_cost: float
    desired_turnover: float
    turnover: float
    turnover_scale: float
    cash_scale: float
    dropped_below_minimum: tuple[str, ...] = ()
    short_term_gain: float = 0.0
    long_term_gain: float = 0.0
    estimated_tax: float = 0.0
    harvest_candidates: tuple[HarvestCandidate, ...] = ()
    wash_sale_flags: tuple[WashSaleFlag, ...] = ()

    @property
    def post_trade_weights(self) -> FloatArray:
        """Weights of the symbols after the trades (fractions)."""
        return self.drift_after.current_weights


# --- validation helpers -----------------------------------------------------------------------------------------


def _vector(values: ArrayLike, n: int, field: str) -> FloatArray:
    """A float vector of shape (n,), every entry finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise InvalidInputError.for_field(field, f"has shape {array.shape}; expected ({n},)")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise InvalidInputError.for_field(f"{field}[{int(bad[0])}]", "must be finite")
    return array


def _scalar(value: float, field: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A finite number ≥ minimum (> minimum when strict)."""
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else "≥"
        raise InvalidInputError.for_field(field, f"is {value!r}; must be finite and {relation} {minimum:g}")
    return float(value)


def _bands(values: ArrayLike | None, n: int, field: str) -> FloatArray:
    """Per-symbol band widths (n,): a scalar broadcasts; inf (or None for all) means not set."""
    if values is None:
        return np.full(n, np.inf)
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise InvalidInputError.for_field(field, f"has shape {array.shape}; expected ({n},) or a scalar")
    bad = np.flatnonzero(np.isnan(array) | (array < 0.0))
    if bad.size:
        idx = int(bad[0])
        raise InvalidInputError.for_field(f"{field}[{idx}]", f"is {array[idx]!r}; must be ≥ 0 (inf: no band)")
    return array


def _targets(target_weights: ArrayLike, n: int, *, allow_short: bool) -> FloatArray:
    targets = _vector(target_weights, n, "target_weights")
    if not allow_short and np.any(targets < 0.0):
        idx = int(np.flatnonzero(targets < 0.0)[0])
        raise InvalidInputError.for_field(
            f"target_weights[{idx}]", f"is {targets[idx]:g}; negative weights need allow_short"
        )
    total = float(targets.sum())
    if total > 1.0 + TARGET_SUM_TOLERANCE:
        raise InvalidInputError.for_field(
            "target_weights", f"sum to {total:.10g} > 1; the remainder is the target cash weight, never negative"
        )
    return targets


def _market(market: MarketInputs | None, n: int) -> MarketInputs | None:
    if market is None:
        return None
    adv = _vector(market.adv, n, "market.adv")
    volatility = _vector(market.daily_volatility, n, "market.daily_volatility")
    spread = _vector(market.spread_bps, n, "market.spread_bps")
    outstanding = None
    if market.shares_outstanding is not None:
        outstanding = _vector(market.shares_outstanding, n, "market.shares_outstanding")
    for field, array, strict in (
        ("market.adv", adv, True),
        ("market.daily_volatility", volatility, False),
        ("market.spread_bps", spread, False),
        ("market.shares_outstanding", outstanding, True),
    ):
        if array is None:
            continue
        bad = np.flatnonzero(array <= 0.0 if strict else array < 0.0)
        if bad.size:
            idx = int(bad[0])
            raise InvalidInputError.for_field(
                f"{field}[{idx}]", f"is {array[idx]:g}; must be {'>' if strict else '≥'} 0"
            )
    return MarketInputs(adv=adv, daily_volatility=volatility, spread_bps=spread, shares_outstanding=outstanding)


def _validate_costs(costs: CostModel) -> None:
    for attribute in (
        "commission_per_trade",
        "commission_per_share",
        "square_root_coefficient",
        "almgren_eta",
        "almgren_gamma",
        "almgren_delta",
    ):
        _scalar(getattr(costs, attribute), f"costs.{attribute}")
    _scalar(costs.almgren_beta, "costs.almgren_beta", strict=True)
    _scalar(costs.execution_days, "costs.execution_days", strict=True)
    if not isinstance(costs.impact_model, ImpactModel):
        raise InvalidInputError.for_field("costs.impact_model", f"unknown model {costs.impact_model!r}")


# --- costs ----------------------------------------------------------------------------------------------------


def _cost_arrays(
    shares: FloatArray, prices: FloatArray, market: MarketInputs | None, costs: CostModel
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Commission, half-spread and impact costs ($) of trades of |shares| (N,) at prices (N,); 0 where no trade."""
    quantity = np.abs(shares)
    traded = quantity > 0.0
    value = quantity * prices
    commission = np.where(traded, costs.commission_per_trade + costs.commission_per_share * quantity, 0.0)
    if market is None:
        return commission, np.zeros_like(value), np.zeros_like(value)
    spread = market.spread_bps / 2.0 * 1e-4 * value
    participation = quantity / market.adv
    sigma = market.daily_volatility
    if costs.impact_model is ImpactModel.SQUARE_ROOT:
        impact_fraction = costs.square_root_coefficient * sigma * np.sqrt(participation)
    elif costs.impact_model is ImpactModel.ALMGREN_2005:
        rate = participation / costs.execution_days
        impact_fraction = costs.almgren_eta * sigma * rate**costs.almgren_beta
        if market.shares_outstanding is not None:
            turnover_term = (market.shares_outstanding / market.adv) ** costs.almgren_delta
            impact_fraction = impact_fraction + 0.5 * costs.almgren_gamma * sigma * participation * turnover_term
    else:
        impact_fraction = np.zeros_like(value)
    return commission, spread, impact_fraction * value


def trade_cost_arrays(
    shares: FloatArray,
    prices: FloatArray,
    *,
    adv: FloatArray | None = None,
    daily_volatility: FloatArray | None = None,
    spread_bps: float = 0.0,
    costs: CostModel | None = None,
) -> FloatArray:
    """Estimated total cost of each of N trades, vectorised (the formulas of the module docstring).

    Parameters
    ----------
    shares : ndarray of shape (N,)
        Shares traded per symbol (the sign is ignored; 0 = no trade, no commission).
    prices : ndarray of shape (N,)
        Prices ($, > 0).
    adv : ndarray of shape (N,) or None
        Average daily volumes (shares/day, > 0); None = no impact cost.
    daily_volatility : ndarray of shape (N,) or None
        Daily volatility σ (fractions) of the impact models; None = 0.
    spread_bps : float
        Quoted spread (basis points) of every symbol; each trade pays half, with or without volumes.
    costs : CostModel, optional
        Commission and impact parameters; ``CostModel()`` when omitted.

    Returns
    -------
    ndarray of shape (N,)
        Commission + half-spread + impact per trade ($).

    Raises
    ------
    InvalidInputError
        Naming ``costs.*`` or ``market.*`` for values out of range.
    """
    costs = CostModel() if costs is None else costs
    _validate_costs(costs)
    shares = np.asarray(shares, dtype=np.float64)
    prices = np.asarray(prices, dtype=np.float64)
    n = shares.shape[0]
    market = None
    if adv is not None:
        volatility = np.zeros(n) if daily_volatility is None else np.asarray(daily_volatility, dtype=np.float64)
        market = _market(MarketInputs(adv=adv, daily_volatility=volatility, spread_bps=np.full(n, spread_bps)), n)
    commission, spread, impact = _cost_arrays(shares, prices, market, costs)
    if market is None:
        spread = spread_bps / 2.0 * 1e-4 * np.abs(shares) * prices
    total: FloatArray = commission + spread + impact
    return total


def estimate_trade_costs(
    shares: float,
    price: float,
    *,
    adv: float | None = None,
    daily_volatility: float = 0.0,
    spread_bps: float = 0.0,
    shares_outstanding: float | None = None,
    costs: CostModel | None = None,
) -> TradeCosts:
    """Estimated costs of one trade of |shares| at ``price`` (see the module docstring for the formulas).

    Parameters
    ----------
    shares : float
        Shares traded (the sign is ignored).
    price : float
        Price per share ($, > 0).
    adv : float, optional
        Average daily volume (shares/day, > 0); without it there is no impact cost.
    daily_volatility : float
        Daily volatility σ (fraction).
    spread_bps : float
        Quoted spread (basis points); the trade pays half.
    shares_outstanding : float, optional
        Shares outstanding Θ (Almgren permanent term).
    costs : CostModel, optional
        Commission and impact parameters; ``CostModel()`` when omitted.

    Raises
    ------
    InvalidInputError
        Naming ``shares``, ``price``, ``market.*`` or ``costs.*`` for values out of range.
    """
    costs = CostModel() if costs is None else costs
    _validate_costs(costs)
    _scalar(abs(shares), "shares")
    _scalar(price, "price", strict=True)
    market = None
    if adv is not None:
        market = _market(
            MarketInputs(
                adv=np.array([adv]),
                daily_volatility=np.array([daily_volatility]),
                spread_bps=np.array([spread_bps]),
                shares_outstanding=None if shares_outstanding is None else np.array([shares_outstanding]),
            ),
            1,
        )
    commission, spread, impact = _cost_arrays(np.array([float(shares)]), np.array([float(price)]), market, costs)
    if market is None:  # the half-spread needs no volume
        spread = np.array([_scalar(spread_bps, "market.spread_bps") / 2.0 * 1e-4 * abs(shares) * price])
    return TradeCosts(commission=float(commission[0]), spread_cost=float(spread[0]), impact_cost=float(impact[0]))


# --- drift ----------------------------------------------------------------------------------------------------


def _drift_report(
    symbols: tuple[str, ...],
    shares: FloatArray,
    prices: FloatArray,
    cash: float,
    targets: FloatArray,
    absolute: FloatArray,
    relative: FloatArray,
    threshold: float,
) -> DriftReport:
    values = shares * prices
    total = float(values.sum()) + cash
    if not total > 0.0:
        raise InvalidInputError.for_field("holdings", f"portfolio value (holdings + cash) is {total:g}; must be > 0")
    weights = values / total
    drift = weights - targets
    cash_weight = cash / total
    target_cash = 1.0 - float(targets.sum())
    cash_drift = cash_weight - target_cash
    portfolio_drift = float(np.abs(drift).sum()) + abs(cash_drift)
    magnitude = np.abs(drift)
    absolute_breaches = magnitude > absolute  # False where the band is inf (not set)
    with np.errstate(invalid="ignore"):  # inf × 0 (no band, zero target) is NaN, and NaN breaches nothing
        relative_breaches = magnitude > relative * np.abs(targets)
    no_band = np.isinf(absolute) & np.isinf(relative)
    breaches = absolute_breaches | relative_breaches | (no_band & (magnitude > 0.0))
    return DriftReport(
        symbols=symbols,
        market_values=values,
        total_value=total,
        current_weights=weights,
        target_weights=targets,
        drift=drift,
        cash_weight=cash_weight,
        target_cash_weight=target_cash,
        cash_drift=cash_drift,
        portfolio_drift=portfolio_drift,
        one_way_drift=portfolio_drift / 2.0,
        threshold=threshold,
        exceeds_threshold=portfolio_drift > threshold,
        absolute_breaches=absolute_breaches,
        relative_breaches=relative_breaches,
        breaches=breaches,
    )


def check_drift(
    holdings: Sequence[Holding],
    cash: float,
    target_weights: ArrayLike,
    *,
    threshold: float = DEFAULT_DRIFT_THRESHOLD,
    absolute_bands: ArrayLike | None = None,
    relative_bands: ArrayLike | None = None,
) -> DriftReport:
    """Current weights, drift against the targets, and the portfolio and per-symbol flags.

    Parameters
    ----------
    holdings : sequence of Holding, length N
        Symbols, shares (≥ 0) and prices (> 0); lots, if any, are validated but play no part.
    cash : float
        Cash held ($, ≥ 0), a line of the portfolio (see the module docstring).
    target_weights : array_like of shape (N,)
        Target weights of the symbols (fractions, finite, summing to at most 1; the rest is target cash).
    threshold : float, default 0.05
        Flag when the two-way portfolio drift Σ|w − t| (cash line included) exceeds it.
    absolute_bands : float or array_like of shape (N,), optional
        Absolute no-trade band a_i (fractions, ≥ 0; inf = not set): breach when |d_i| > a_i.
    relative_bands : float or array_like of shape (N,), optional
        Relative band r_i (fractions of the target, ≥ 0; inf = not set): breach when |d_i| > r_i |t_i|.

    Returns
    -------
    DriftReport
        Weights, drifts (per symbol, cash, two-way and one-way portfolio) and flags.

    Raises
    ------
    InvalidInputError
        Naming ``holdings[i].<field>`` (see :func:`services.trading.validate_holdings`), ``holdings`` for a
        portfolio value that is not positive, ``cash``, ``threshold``, ``target_weights`` / ``target_weights[i]``
        (shape, non-finite, sum above 1), ``absolute_bands[i]`` / ``relative_bands[i]`` (shape, NaN, negative).
    """
    validate_holdings(holdings)
    n = len(holdings)
    cash = _scalar(cash, "cash")
    threshold = _scalar(threshold, "threshold")
    targets = _targets(target_weights, n, allow_short=True)
    return _drift_report(
        tuple(h.symbol for h in holdings),
        np.array([h.shares for h in holdings], dtype=np.float64),
        np.array([h.price for h in holdings], dtype=np.float64),
        cash,
        targets,
        _bands(absolute_bands, n, "absolute_bands"),
        _bands(relative_bands, n, "relative_bands"),
        threshold,
    )


# --- trade list -----------------------------------------------------------------------------------------------


def _whole(shares: FloatArray) -> FloatArray:
    """Whole shares rounded towards zero (towards the current position, never past the target)."""
    result: FloatArray = np.sign(shares) * np.floor(np.abs(shares) + _SHARE_EPSILON)
    return result


def _one_way(trade_values: FloatArray, total_value: float) -> float:
    """One-way turnover max(Σ buys, Σ sells) / V of signed trade values ($)."""
    buys = float(trade_values[trade_values > 0.0].sum())
    sells = float(-trade_values[trade_values < 0.0].sum())
    return max(buys, sells) / total_value


def generate_rebalance(
    holdings: Sequence[Holding],
    cash: float,
    target_weights: ArrayLike,
    *,
    market: MarketInputs | None = None,
    costs: CostModel | None = None,
    absolute_bands: ArrayLike | None = None,
    relative_bands: ArrayLike | None = None,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    min_trade_value: float = 0.0,
    max_turnover: float | None = None,
    max_trade_shares: ArrayLike | None = None,
    allow_short: bool = False,
    lot_method: LotMethod | None = None,
    tax_settings: TaxSettings | None = None,
    as_of: date | None = None,
    prefer_losses: bool = False,
    recent_realized_losses: Sequence[RealizedLoss] = (),
    recent_purchases: Sequence[Purchase] = (),
) -> RebalancePlan:
    """The whole-share BUY/SELL list that brings the symbols outside their bands back to target, with its costs.

    The steps (band selection, turnover cap, whole shares, minimum size, cash check), the weights and the cost
    formulas are those of the module docstring. Sells of holdings with tax lots consume lots by ``lot_method``
    (FIFO when not given) on ``as_of`` and report the realised gains (:mod:`services.trading`).

    Parameters
    ----------
    holdings : sequence of Holding, length N
        Symbols, shares (≥ 0), prices (> 0) and optional tax lots; a symbol to buy from scratch has 0 shares.
    cash : float
        Cash held ($, ≥ 0).
    target_weights : array_like of shape (N,)
        Target weights (fractions; ≥ 0 unless ``allow_short``; summing to at most 1, the rest is target cash).
    market : MarketInputs, optional
        ADV, daily volatility and spread per symbol; without it only commissions are charged.
    costs : CostModel, optional
        Commission and impact parameters; ``CostModel()`` (no commission, square-root impact with Y = 1) when
        omitted.
    absolute_bands, relative_bands : float or array_like of shape (N,), optional
        No-trade bands (see :func:`check_drift`).
    drift_threshold : float, default 0.05
        Two-way portfolio-drift threshold reported in the drift reports (it does not gate the trades).
    min_trade_value : float, default 0
        Trades worth less ($) are dropped.
    max_turnover : float, optional
        Cap on the one-way turnover max(Σ buys, Σ sells) / V (fraction of portfolio value, ≥ 0).
    max_trade_shares : array_like of shape (N,), optional
        Largest |Δshares| of each symbol (≥ 0; ``inf`` = none), e.g. a participation cap ``p × ADV``: applied after
        the turnover cap, each trade cut to it is flagged ``participation_capped``.
    allow_short : bool, default False
        Allow negative targets and sells beyond the shares held.
    lot_method : LotMethod, optional
        Lot order of sells of holdings with lots (FIFO when omitted).
    tax_settings : TaxSettings, optional
        Rates, long-term boundary and wash-sale window; ``TaxSettings()`` when omitted.
    as_of : date, optional
        Trade date; required when a holding carries lots or ``recent_realized_losses`` / ``recent_purchases`` are
        given (no clock is read).
    prefer_losses : bool, default False
        Sells take the lots with an unrealised loss first.
    recent_realized_losses : sequence of RealizedLoss
        Earlier loss sales: a buy of the same symbol within the wash-sale window is flagged.
    recent_purchases : sequence of Purchase
        Earlier buys: a loss sale (or harvesting candidate) of the same symbol within the window is flagged.

    Returns
    -------
    RebalancePlan
        Trades with costs and lots, totals, turnover (one-way) before and after, post-trade shares, cash, weights
        and drift.

    Raises
    ------
    InvalidInputError
        For the fields of :func:`check_drift`, ``target_weights[i]`` negative without ``allow_short``,
        ``market.*[i]``, ``costs.*``, ``min_trade_value``, ``max_turnover``, ``tax_settings.*``, ``lot_method``,
        ``as_of`` when needed and missing, and the lot fields ``holdings[i].lots...`` (shares not adding up, basis
        not positive, acquired after ``as_of``).
    """
    costs = CostModel() if costs is None else costs
    settings = TaxSettings() if tax_settings is None else tax_settings
    has_lots = any(h.lots for h in holdings)
    if as_of is None and (has_lots or recent_realized_losses or recent_purchases):
        raise InvalidInputError.for_field(
            "as_of", "is required when holdings carry tax lots or recent sales/purchases are given"
        )
    validate_holdings(holdings, as_of=as_of)
    validate_tax_settings(settings)
    _validate_costs(costs)
    n = len(holdings)
    cash = _scalar(cash, "cash")
    drift_threshold = _scalar(drift_threshold, "drift_threshold")
    min_trade_value = _scalar(min_trade_value, "min_trade_value")
    if max_turnover is not None:
        max_turnover = _scalar(max_turnover, "max_turnover")
    targets = _targets(target_weights, n, allow_short=allow_short)
    absolute = _bands(absolute_bands, n, "absolute_bands")
    relative = _bands(relative_bands, n, "relative_bands")
    market = _market(market, n)
    try:
        method = LotMethod.FIFO if lot_method is None else LotMethod(lot_method)
    except ValueError:
        raise InvalidInputError.for_field(
            "lot_method", f"unknown lot method {lot_method!r}; expected one of {', '.join(LotMethod)}"
        ) from None

    symbols = tuple(h.symbol for h in holdings)
    shares = np.array([h.shares for h in holdings], dtype=np.float64)
    prices = np.array([h.price for h in holdings], dtype=np.float64)
    before = _drift_report(symbols, shares, prices, cash, targets, absolute, relative, drift_threshold)
    total_value = before.total_value

    # 1. Breaching symbols back to target; 2. proportional turnover cap.
    desired = np.where(before.breaches, (targets - before.current_weights) * total_value / prices, 0.0)
    if not allow_short:
        desired = np.maximum(desired, -shares)
    desired_turnover = _one_way(desired * prices, total_value)
    turnover_scale = 1.0
    if max_turnover is not None and desired_turnover > max_turnover:
        turnover_scale = max_turnover / desired_turnover
    scaled = desired * turnover_scale
    capped = np.zeros(n, dtype=bool)
    if max_trade_shares is not None:  # 2b. per-symbol cap on the shares traded
        cap = np.broadcast_to(np.asarray(max_trade_shares, dtype=np.float64), (n,))
        bad = np.flatnonzero(np.isnan(cap) | (cap < 0))
        if bad.size:
            raise InvalidInputError.for_field(f"max_trade_shares[{int(bad[0])}]", "must be ≥ 0 (inf = no cap)")
        capped = np.abs(scaled) > cap
        scaled = np.clip(scaled, -cap, cap)

    def finalize(continuous: FloatArray) -> tuple[FloatArray, NDArray[np.bool_]]:
        """3. whole shares, 4. minimum size; returns the trades and the mask of dropped ones."""
        whole = _whole(continuous)
        if not allow_short:
            whole = np.maximum(whole, -shares)
        small = (whole != 0.0) & (np.abs(whole) * prices < min_trade_value)
        return np.where(small, 0.0, whole), small

    trades, dropped = finalize(scaled)
    commission, spread, impact = _cost_arrays(trades, prices, market, costs)
    total_costs = commission + spread + impact
    values = np.abs(trades) * prices
    costly_sells = (trades < 0.0) & (total_costs >= values)
    if costly_sells.any():
        trades = np.where(costly_sells, 0.0, trades)
        dropped = dropped | costly_sells
        total_costs = np.where(costly_sells, 0.0, total_costs)
    sells = trades < 0.0
    available = cash + float((np.abs(trades) * prices - total_costs)[sells].sum())  # ≥ cash ≥ 0

    # 5. Cash check: the largest common scale α of the buys whose outlay (value + costs) fits.
    buy_mask = scaled > 0.0

    def buys_at(alpha: float) -> tuple[FloatArray, NDArray[np.bool_], float]:
        buys, small = finalize(np.where(buy_mask, scaled * alpha, 0.0))
        buys = np.where(buy_mask, buys, 0.0)
        c, s, i = _cost_arrays(buys, prices, market, costs)
        return buys, small & buy_mask, float((buys * prices + c + s + i).sum())

    cash_scale = 1.0
    buys, _, outlay = buys_at(1.0)
    if outlay > available:
        low, high = 0.0, 1.0
        for _ in range(_CASH_BISECTION_STEPS):
            middle = 0.5 * (low + high)
            if buys_at(middle)[2] <= available:
                low = middle
            else:
                high = middle
        cash_scale = low
        buys, small_buys, outlay = buys_at(low)
        dropped = np.where(buy_mask, small_buys, dropped)
    trades = np.where(buy_mask, buys, trades)
    commission, spread, impact = _cost_arrays(trades, prices, market, costs)
    post_cash = available - outlay
    post_shares = shares + trades

    # Tax lots of the sells, wash sales.
    lot_results: dict[int, LotSelection] = {}
    wash_flags_sells: set[int] = set()
    losses_here: list[RealizedLoss] = []
    if as_of is not None:
        for i in np.flatnonzero(trades < 0.0).tolist():
            holding = holdings[i]
            long_part = min(-float(trades[i]), holding.shares)
            if not holding.lots or long_part <= 0.0:
                continue
            selection = select_lots(
                holding.lots,
                long_part,
                holding.price,
                as_of,
                method=method,
                settings=settings,
                prefer_losses=prefer_losses,
                field=f"holdings[{i}].lots",
            )
            lot_results[i] = selection
            # Wash sales apply lot by lot: a losing lot inside a sale with a net gain is still a loss sale.
            lot_losses = sum(-lot.gain for lot in selection.lots if lot.gain < 0.0)
            if lot_losses > 0.0:
                losses_here.append(RealizedLoss(holding.symbol, as_of, lot_losses))
                sold_ids = frozenset(lot.lot_id for lot in selection.lots)
                if recently_bought(
                    holding.symbol,
                    holding.lots,
                    as_of,
                    settings=settings,
                    recent_purchases=recent_purchases,
                    excluding=sold_ids,
                ):
                    wash_flags_sells.add(i)
    buy_symbols = [symbols[i] for i in np.flatnonzero(trades > 0.0).tolist()]
    flags: tuple[WashSaleFlag, ...] = ()
    if as_of is not None:
        flags = wash_sale_flags(buy_symbols, as_of, [*losses_here, *recent_realized_losses], settings=settings)
    flagged_buys = {flag.symbol for flag in flags}

    trade_list = []
    for i in np.flatnonzero(trades != 0.0).tolist():
        quantity = abs(float(trades[i]))
        side = Side.BUY if trades[i] > 0.0 else Side.SELL
        trade_list.append(
            Trade(
                symbol=symbols[i],
                side=side,
                shares=quantity,
                price=float(prices[i]),
                value=quantity * float(prices[i]),
                commission=float(commission[i]),
                spread_cost=float(spread[i]),
                impact_cost=float(impact[i]),
                total_cost=float(commission[i] + spread[i] + impact[i]),
                lots=lot_results.get(i),
                wash_sale=(i in wash_flags_sells) if side is Side.SELL else (symbols[i] in flagged_buys),
                participation_capped=bool(capped[i]),
            )
        )

    after = _drift_report(symbols, post_shares, prices, post_cash, targets, absolute, relative, drift_threshold)
    trade_values = trades * prices
    short_gain = sum(s.short_term_gain for s in lot_results.values())
    long_gain = sum(s.long_term_gain for s in lot_results.values())
    return RebalancePlan(
        trades=tuple(trade_list),
        drift_before=before,
        drift_after=after,
        post_trade_shares=post_shares,
        post_trade_cash=post_cash,
        total_buy_value=float(trade_values[trade_values > 0.0].sum()),
        total_sell_value=float(-trade_values[trade_values < 0.0].sum()),
        total_commission=float(commission.sum()),
        total_spread_cost=float(spread.sum()),
        total_impact_cost=float(impact.sum()),
        total_cost=float((commission + spread + impact).sum()),
        desired_turnover=desired_turnover,
        turnover=_one_way(trade_values, total_value),
        turnover_scale=turnover_scale,
        cash_scale=cash_scale,
        dropped_below_minimum=tuple(symbols[i] for i in np.flatnonzero(dropped & (trades == 0.0)).tolist()),
        short_term_gain=short_gain,
        long_term_gain=long_gain,
        estimated_tax=short_gain * settings.short_term_rate + long_gain * settings.long_term_rate,
        harvest_candidates=(
            harvest_candidates(holdings, as_of, settings=settings, recent_purchases=recent_purchases)
            if as_of is not None
            else ()
        ),
        wash_sale_flags=flags,
    )
