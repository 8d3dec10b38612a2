"""Portfolio metrics in NumPy: performance, the covariance factor, risk contributions and scenario risk measures.

Every backend reports through these functions, so the numbers a caller sees do not depend on which solver answered.
Units: expected returns, volatilities and the risk-free rate are annualised decimals; the scenario measures (CVaR,
MAD, CDaR) are per period, on simple returns, with losses positive (skfolio's ``skfolio.measures`` conventions).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from services.optimization._problem import PortfolioPerformance
from services.types import FloatArray, Moments


def portfolio_performance(weights: FloatArray, moments: Moments, risk_free_rate: float) -> PortfolioPerformance:
    """Annualised expected return, volatility and Sharpe ratio of a weight vector.

    Parameters
    ----------
    weights : ndarray of shape (N,)
        Portfolio weights (fractions).
    moments : Moments
        Annualised expected returns (N,) and covariance (N, N).
    risk_free_rate : float
        Annualised risk-free rate (decimal).

    Returns
    -------
    PortfolioPerformance
        ``μᵀw + (1 − Σw)·r_f``, ``sqrt(wᵀΣw)`` and the Sharpe ratio ``(that − r_f) / sqrt(wᵀΣw)`` (0 when the
        volatility is 0). The cash leg ``(1 − Σw)·r_f`` is zero for fully invested weights; it matters only with
        net exposure bounds, where the part of the capital not invested earns the risk-free rate.
    """
    expected = float(moments.expected_returns @ weights) + (1.0 - float(weights.sum())) * risk_free_rate
    volatility = float(np.sqrt(max(quadratic_form(weights, moments.covariance), 0.0)))
    sharpe = (expected - risk_free_rate) / volatility if volatility > 0 else 0.0
    return PortfolioPerformance(expected_return=expected, volatility=volatility, sharpe_ratio=sharpe)


HELD_PRODUCTS_MIN_SIZE = 256
"""Fewest names for which products with Σ run over the names held only: below it the whole product is faster
(measured: wᵀΣw of 10 names held of 30 took 6.7 µs that way against 1.4 µs; 40 of 500, 12.4 against 50.5 µs)."""


def held_names(weights: FloatArray) -> NDArray[np.intp] | None:
    """Indices of the non-zero weights when they are fewer than half of at least 256 names, else None.

    Products with Σ then run over the names held only (an N = 2000 max Sharpe portfolio holds a few dozen):
    zero weights add exact zeros, so only the order of the sums (round-off) differs from the whole product.
    """
    if weights.size < HELD_PRODUCTS_MIN_SIZE:
        return None
    held = np.flatnonzero(weights)
    return held if 2 * held.size < weights.size else None


def quadratic_form(weights: FloatArray, covariance: FloatArray) -> float:
    """wᵀΣw, over the names held only when few are (:func:`held_names`).

    Parameters
    ----------
    weights : ndarray of shape (N,)
        Portfolio weights.
    covariance : ndarray of shape (N, N)
        Σ (finite).

    Returns
    -------
    float
        The portfolio variance in Σ's units.
    """
    held = held_names(weights)
    if held is None:
        return float(weights @ covariance @ weights)
    w = weights[held]
    return float(w @ covariance[np.ix_(held, held)] @ w)


def covariance_times(covariance: FloatArray, weights: FloatArray) -> FloatArray:
    """Σw, from the columns of the names held only when few are (:func:`held_names`).

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Σ (finite).
    weights : ndarray of shape (N,)
        Portfolio weights.

    Returns
    -------
    ndarray of shape (N,)
        Σw.
    """
    held = held_names(weights)
    if held is None:
        return np.asarray(covariance @ weights, dtype=np.float64)
    return np.asarray(covariance[:, held] @ weights[held], dtype=np.float64)


def covariance_factor(covariance: FloatArray) -> FloatArray:
    """F with F Fᵀ = Σ (Cholesky, or the eigen-factor for a singular Σ)."""
    try:
        return np.asarray(np.linalg.cholesky(covariance), dtype=np.float64)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        return np.asarray(eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None)), dtype=np.float64)


class RiskMeasure(StrEnum):
    """Scenario risk measure (variance is mean-variance's, ``_conic``)."""

    CVAR = "CVAR"
    """Conditional value at risk of the per-period loss at confidence α."""
    MAD = "MAD"
    """Mean absolute deviation of the per-period return around its mean."""
    CDAR = "CDAR"
    """Conditional drawdown at risk of the uncompounded cumulative return at confidence α."""


def conditional_value_at_risk(portfolio_returns: FloatArray, alpha: float = 0.95) -> float:
    """CVaR_α of the loss −r: the mean of the worst (1 − α) share of the losses.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.
    alpha : float, default=0.95
        Confidence level in (0, 1).

    Returns
    -------
    float
        ``(Σ_{i<m} L_(i) + (k − m) L_(m)) / k`` with L_(0) ≥ L_(1) ≥ ... the sorted losses, k = (1 − α)T and
        m = ⌊k⌋: the optimum of Rockafellar and Uryasev's program, skfolio's ``cvar``.
    """
    losses = np.sort(-np.asarray(portfolio_returns, dtype=np.float64))[::-1]
    tail = (1.0 - alpha) * losses.size
    whole = min(int(np.floor(tail)), losses.size)
    value = float(losses[:whole].sum())
    if whole < losses.size:
        value += (tail - whole) * float(losses[whole])
    return value / tail


def mean_absolute_deviation(portfolio_returns: FloatArray) -> float:
    """Mean absolute deviation ``1/T Σ_t |r_t − r̄|`` of the portfolio's returns around their mean.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.

    Returns
    -------
    float
        The MAD (skfolio's ``mean_absolute_deviation``).
    """
    returns = np.asarray(portfolio_returns, dtype=np.float64)
    return float(np.mean(np.abs(returns - returns.mean())))


def drawdowns(portfolio_returns: FloatArray) -> FloatArray:
    """Drawdowns ``D_t = max(0, max_{s≤t} C_s) − C_t ≥ 0`` of the uncompounded cumulative return C.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.

    Returns
    -------
    ndarray of shape (T,)
        Nonnegative drawdowns; the running peak starts at C_0 = 0 (skfolio's ``get_drawdowns`` with the sign
        flipped).
    """
    cumulative = np.cumsum(np.asarray(portfolio_returns, dtype=np.float64))
    peak = np.maximum(np.maximum.accumulate(cumulative), 0.0)
    return np.asarray(peak - cumulative, dtype=np.float64)


def max_drawdown(returns: FloatArray, weights: FloatArray) -> float | None:
    """Maximum drawdown of fixed weights over a return history: the largest fall of the compounded value from a peak.

    With ``r_t = Σ_i w_i R_{t,i}`` on the complete rows of ``returns`` (a row with a missing return is left out,
    as the scenario risk measures do) and the value ``V_0 = 1``, ``V_t = Π_{s≤t} (1 + r_s)``, the maximum drawdown
    is ``max_t (1 − V_t / max_{s≤t} V_s)``: a fraction of the peak value in [0, 1] for returns ≥ −1 (0.25 = a
    fall of 25 % from the highest value reached; the starting value counts as a peak). The weights are held
    fixed (rebalanced every period); the cash left when they sum to less than 1 earns nothing.

    Parameters
    ----------
    returns : ndarray of shape (T, N)
        Periodic simple returns (NaN = missing).
    weights : ndarray of shape (N,)
        Portfolio weights (fractions).

    Returns
    -------
    float or None
        The maximum drawdown, or None when no row is complete.

    References
    ----------
    Magdon-Ismail & Atiya, "Maximum drawdown", Risk 17(10), 2004; skfolio's ``max_drawdown`` (compounded).
    """
    history = np.asarray(returns, dtype=np.float64)
    complete = history[~np.isnan(history).any(axis=1)]
    if complete.shape[0] == 0:
        return None
    value = np.concatenate(([1.0], np.cumprod(1.0 + complete @ np.asarray(weights, dtype=np.float64))))
    peak = np.maximum.accumulate(value)
    return float(np.max(1.0 - value / peak))


def conditional_drawdown_at_risk(portfolio_returns: FloatArray, alpha: float = 0.95) -> float:
    """CDaR_α: the mean of the worst (1 − α) share of the drawdowns.

    Parameters
    ----------
    portfolio_returns : ndarray of shape (T,)
        Per-period simple returns of the portfolio.
    alpha : float, default=0.95
        Confidence level in (0, 1).

    Returns
    -------
    float
        ``conditional_value_at_risk(−drawdowns(r), alpha)`` (skfolio's ``cdar``).
    """
    return conditional_value_at_risk(-drawdowns(portfolio_returns), alpha)


def risk_measure_value(
    scenarios: FloatArray, weights: FloatArray, *, risk_measure: RiskMeasure, alpha: float = 0.95
) -> float:
    """The per-period risk measure of a weight vector on the scenarios.

    Parameters
    ----------
    scenarios : ndarray of shape (T, N)
        Per-period simple returns of the N strategies.
    weights : ndarray of shape (N,)
        Portfolio weights.
    risk_measure : RiskMeasure
        Which measure.
    alpha : float, default=0.95
        Confidence level of CVaR and CDaR (ignored for MAD).

    Returns
    -------
    float
        CVaR_α, MAD or CDaR_α of ``scenarios @ weights``.
    """
    portfolio_returns = np.asarray(scenarios @ weights, dtype=np.float64)
    if risk_measure is RiskMeasure.CVAR:
        return conditional_value_at_risk(portfolio_returns, alpha)
    if risk_measure is RiskMeasure.MAD:
        return mean_absolute_deviation(portfolio_returns)
    return conditional_drawdown_at_risk(portfolio_returns, alpha)


def risk_contributions(weights: FloatArray, covariance: FloatArray) -> FloatArray:
    """Risk contributions of a weight vector as fractions of the portfolio variance.

    Parameters
    ----------
    weights : ndarray of shape (N,)
        Portfolio weights.
    covariance : ndarray of shape (N, N)
        Covariance of the N strategies (any unit).

    Returns
    -------
    ndarray of shape (N,)
        RC_i = w_i (Σw)_i / wᵀΣw, summing to 1; all 0 when wᵀΣw = 0 (a portfolio without risk, e.g. no weight
        at all: nothing contributes).
    """
    held = held_names(weights)
    if held is None:
        contributions = weights * (covariance @ weights)
    else:  # RC_i = 0 for a name not held: (Σw)_i over the names held only
        contributions = np.zeros_like(weights, dtype=np.float64)
        w = weights[held]
        contributions[held] = w * (covariance[np.ix_(held, held)] @ w)
    total = contributions.sum()
    fractions: FloatArray = contributions / total if total != 0 else np.zeros_like(contributions)
    return fractions


def stacked_risk_contributions(weights: list[FloatArray], covariances: list[FloatArray]) -> list[FloatArray]:
    """:func:`risk_contributions` of many weight vectors at once, stacked per N.

    Parameters
    ----------
    weights : list of ndarray of shape (N_k,)
        Portfolio weights, B of them.
    covariances : list of ndarray of shape (N_k, N_k)
        Their covariances (any unit).

    Returns
    -------
    list of ndarray of shape (N_k,)
        Per vector, RC_i = w_i (Σw)_i / wᵀΣw (as :func:`risk_contributions`, to rounding).
    """
    out: list[FloatArray] = [np.empty(0)] * len(weights)
    groups: dict[int, list[int]] = {}
    for k, w in enumerate(weights):
        groups.setdefault(w.shape[0], []).append(k)
    for members in groups.values():
        w = np.array([weights[k] for k in members])
        sigma = np.array([covariances[k] for k in members])
        contributions = w * np.einsum("bij,bj->bi", sigma, w)
        totals = contributions.sum(axis=1, keepdims=True)
        fractions = np.divide(contributions, totals, out=np.zeros_like(contributions), where=totals != 0)
        for row, k in enumerate(members):
            out[k] = fractions[row]
    return out
