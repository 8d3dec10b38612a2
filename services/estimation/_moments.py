"""Estimators of annualised expected returns and covariance from return histories.

EMA and CAPM returns come from PyPortfolioOpt (``pypfopt.expected_returns``); the mean historical return is its
``mean_historical_return`` formula on NumPy arrays (the pandas version cost about half of a worker's time per
N = 20 optimization under load; the tests hold both equal to 1e-12 relative); Ledoit-Wolf
shrinkage from scikit-learn (as PyPortfolioOpt does). The pairwise sample covariance and the exponentially
weighted covariance are computed here with matrix products: they equal ``pandas.DataFrame.cov`` (pairwise
complete observations) and PyPortfolioOpt's ``exp_cov`` but cost one BLAS product instead of a Python loop over
the N(N-1)/2 pairs.

Why one module: the estimators and the validation of caller-given moments (``validate_moments``, whose Cholesky
factor the solvers reuse) share the same conventions (annualisation, symmetry and definiteness tolerances), which
one place keeps consistent.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from pypfopt import expected_returns as pypfopt_returns
from scipy.linalg import lapack
from sklearn.covariance import ledoit_wolf

from services.errors import InvalidInputError
from services.types import (
    CovarianceEstimator,
    EstimatedMoments,
    EstimationSettings,
    FloatArray,
    MissingDataPolicy,
    Moments,
    ReturnHistory,
    ReturnsEstimator,
)

MIN_OBSERVATIONS = 2
"""Fewest return observations a strategy (or, pairwise, a pair of strategies) needs."""


def prices_to_returns(prices: FloatArray) -> FloatArray:
    """Simple returns from prices, keeping missing prices missing.

    Parameters
    ----------
    prices : ndarray of shape (T + 1, N)
        Positive prices; NaN marks a missing price (e.g. before a listing).

    Returns
    -------
    ndarray of shape (T, N)
        ``p_t / p_{t-1} - 1``; NaN where either price is missing. Same as PyPortfolioOpt's
        ``returns_from_prices`` without its dropping of all-NaN rows.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(prices[1:] / prices[:-1] - 1.0, dtype=np.float64)


def returns_between_observations(prices: FloatArray) -> FloatArray:
    """Simple returns of each series between its own consecutive observed prices.

    A missing quote inside a series does not lose the price move across it: the return from the last observed
    price is booked on the next observed date (``pandas.Series.dropna().pct_change()`` per column). Periods
    before a series' first price (a later listing) stay missing.

    Parameters
    ----------
    prices : ndarray of shape (T + 1, N)
        Positive prices on a common calendar; NaN where a series has no price.

    Returns
    -------
    ndarray of shape (T, N)
        Row t is the return booked at calendar date t + 1; NaN where the series has no price at that date or
        no earlier price.
    """
    returns = np.full((prices.shape[0] - 1, prices.shape[1]), np.nan)
    for j in range(prices.shape[1]):
        observed = np.flatnonzero(~np.isnan(prices[:, j]))
        if observed.size > 1:
            returns[observed[1:] - 1, j] = prices[observed[1:], j] / prices[observed[:-1], j] - 1.0
    return returns


def pairwise_covariance(returns: FloatArray) -> FloatArray:
    """Sample covariance over pairwise-complete observations (per period, not annualised).

    Parameters
    ----------
    returns : ndarray of shape (T, N)
        Returns with NaN for missing observations.

    Returns
    -------
    ndarray of shape (N, N)
        ``cov_ij`` over the periods where both i and j are observed, with ``n_ij - 1`` degrees of freedom;
        NaN where fewer than 2 periods are shared. Equal to ``pandas.DataFrame.cov()``.
    """
    present = ~np.isnan(returns)
    # Covariance is shift-invariant: centring each column first keeps the one-pass formula accurate when the
    # mean is large relative to the spread (e.g. gross returns).
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are reported by the caller
        centre = np.nanmean(returns, axis=0)
    x = np.where(present, returns - np.nan_to_num(centre), 0.0)
    m = present.astype(np.float64)
    n = m.T @ m
    sum_xy = x.T @ x
    sum_x_given_y = x.T @ m  # [i, j]: sum of x_i over periods where j (and i) are observed
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = (sum_xy - sum_x_given_y * sum_x_given_y.T / n) / (n - 1.0)
    cov[n < MIN_OBSERVATIONS] = np.nan
    return np.asarray((cov + cov.T) / 2.0, dtype=np.float64)


def pairwise_correlation(returns: FloatArray) -> FloatArray:
    """Pearson correlation over pairwise-complete observations, as ``pandas.DataFrame.corr()`` computes it.

    Each ρ_ij uses only the periods where both i and j are observed, for the covariance *and* for both standard
    deviations (so it is not ``pairwise_covariance`` scaled by the full-sample deviations: with gaps the two
    differ). This is the correlation PyPortfolioOpt's ``HRPOpt(returns=...)`` clusters on
    (``pypfopt.hierarchical_portfolio``, ``returns.corr()``).

    Parameters
    ----------
    returns : ndarray of shape (T, N)
        Returns with NaN for missing observations.

    Returns
    -------
    ndarray of shape (N, N)
        Symmetric, unit diagonal; NaN where a pair shares fewer than ``MIN_OBSERVATIONS`` periods or one of the
        two is constant over the shared periods.
    """
    present = ~np.isnan(returns)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are reported by the caller
        centre = np.nanmean(returns, axis=0)
    x = np.where(present, returns - np.nan_to_num(centre), 0.0)
    m = present.astype(np.float64)
    n = m.T @ m
    sum_x = x.T @ m  # [i, j]: sum of x_i over the periods where both i and j are observed
    sum_xx = (x * x).T @ m  # [i, j]: sum of x_i² over the same periods
    sum_xy = x.T @ x
    with np.errstate(invalid="ignore", divide="ignore"):
        co = sum_xy - sum_x * sum_x.T / n
        spread = sum_xx - sum_x * sum_x / n  # [i, j]: (n_ij − 1) var of i over the shared periods
        correlation = co / np.sqrt(spread * spread.T)
    correlation[n < MIN_OBSERVATIONS] = np.nan
    correlation = (correlation + correlation.T) / 2.0
    np.fill_diagonal(correlation, np.where(np.diag(n) >= MIN_OBSERVATIONS, 1.0, np.nan))
    return np.asarray(correlation, dtype=np.float64)


def hrp_returns_inputs(
    history: ReturnHistory | None, settings: EstimationSettings, covariance: FloatArray
) -> tuple[FloatArray, FloatArray | None]:
    """Covariance and correlation HRP clusters and bisects with: PyPortfolioOpt's ``HRPOpt(returns)`` when it can.

    Given a return history and the sample covariance estimator, HRP works as PyPortfolioOpt's
    ``HRPOpt(returns=returns).optimize()``: it clusters on pandas' pairwise correlation ``returns.corr()``
    (``pairwise_correlation``, unrounded) and bisects with the pairwise sample covariance ``returns.cov()``
    (annualised, which does not change the weights, and not repaired to the nearest PSD matrix). On a history
    with gaps this differs from the correlation of the pairwise covariance (by up to 0.19 on the bundled
    1989-2018 prices). The returns are those the estimation used: rows with an observation, and only complete
    rows under ``COMMON_WINDOW``. Otherwise (moments given, or a shrunk or exponential covariance) the
    correlation of ``covariance`` as ``HRPOpt(cov_matrix=...)`` computes it (None here).

    Parameters
    ----------
    history : ReturnHistory or None
        The return history the moments were estimated from; None for moments input.
    settings : EstimationSettings
        The estimation settings used.
    covariance : ndarray of shape (N, N)
        The estimated (annualised) covariance.

    Returns
    -------
    tuple of ndarray (N, N) and ndarray (N, N) or None
        The covariance to bisect with and the correlation to cluster on (None: derive it from the covariance).

    Raises
    ------
    InvalidInputError
        ``returns[:, i]`` when a strategy is constant over the periods it shares with another (no correlation).
    """
    if history is None or settings.covariance_estimator is not CovarianceEstimator.SAMPLE:
        return covariance, None
    returns = history.returns[~np.all(np.isnan(history.returns), axis=1)]
    complete = ~np.any(np.isnan(returns), axis=1)
    if settings.missing_data_policy is MissingDataPolicy.COMMON_WINDOW:
        returns = returns[complete]
    correlation = pairwise_correlation(returns)
    if np.isnan(correlation).any():
        i, j = np.argwhere(np.isnan(correlation))[0]
        raise InvalidInputError.for_field(
            f"returns[:, {int(i)}]", f"has no correlation with returns[:, {int(j)}] over the periods they share"
        )
    if complete.all() or settings.missing_data_policy is MissingDataPolicy.COMMON_WINDOW:
        return covariance, correlation  # the sample covariance of complete rows, as returns.cov()
    return pairwise_covariance(returns) * settings.periods_per_year, correlation


def estimate_betas(returns: FloatArray, market_returns: FloatArray) -> FloatArray:
    """OLS betas of each strategy against a market series: β_i = cov(r_i, r_m) / var(r_m).

    Each beta uses the periods where both the strategy and the market are observed (pairwise, like the
    covariance); it is the slope of the least-squares line r_i = α_i + β_i r_m (Sharpe, 1964; the beta of
    PyPortfolioOpt's ``capm_return``, there on complete rows only).

    Parameters
    ----------
    returns : ndarray of shape (T, N)
        Periodic simple returns, NaN where missing.
    market_returns : ndarray of shape (T,)
        The market's returns on the same periods, NaN where missing.

    Returns
    -------
    ndarray of shape (N,)
        Betas (dimensionless).

    Raises
    ------
    InvalidInputError
        A strategy shares fewer than 2 periods with the market, or the market does not move over them
        (``betas``).
    """
    betas = np.empty(returns.shape[1])
    for i in range(returns.shape[1]):
        both = ~np.isnan(returns[:, i]) & ~np.isnan(market_returns)
        if both.sum() < MIN_OBSERVATIONS:
            raise InvalidInputError.for_field(
                "betas", f"strategy {i} shares {int(both.sum())} periods with the market series; need 2"
            )
        market = market_returns[both]
        variance = float(np.var(market, ddof=1))
        if variance <= 0:
            raise InvalidInputError.for_field(
                "betas", f"the market series is constant over strategy {i}'s periods: no beta"
            )
        betas[i] = float(np.cov(returns[both, i], market, ddof=1)[0, 1]) / variance
    return betas


def exponential_covariance(returns: FloatArray, span: int) -> FloatArray:
    """Exponentially weighted covariance of complete rows (per period, not annualised).

    Parameters
    ----------
    returns : ndarray of shape (T, N)
        Returns without missing values.
    span : int
        Span of the weights: ``alpha = 2 / (span + 1)``, weight of period t ``(1 - alpha)^(T-1-t)``.

    Returns
    -------
    ndarray of shape (N, N)
        Weighted covariance about the weighted means, the last value of pandas'
        ``ewm(span, adjust=True).mean()`` of the demeaned cross products — PyPortfolioOpt's ``exp_cov``.
    """
    t = returns.shape[0]
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(t - 1, -1, -1, dtype=np.float64)
    weights /= weights.sum()
    demeaned = returns - returns.mean(axis=0)
    return np.asarray((demeaned * weights[:, None]).T @ demeaned, dtype=np.float64)


def nearest_psd(matrix: FloatArray) -> FloatArray:
    """Clip negative eigenvalues to zero (PyPortfolioOpt's ``fix_nonpositive_semidefinite``, spectral).

    Parameters
    ----------
    matrix : ndarray of shape (N, N)
        Symmetric matrix.

    Returns
    -------
    ndarray of shape (N, N)
        The input when it is positive semidefinite (Cholesky of ``matrix + 1e-16 I`` succeeds), else
        ``V diag(max(λ, 0)) Vᵀ``.
    """
    try:
        np.linalg.cholesky(matrix + 1e-16 * np.eye(len(matrix)))
        return matrix
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(matrix)
        fixed = (eigenvectors * np.clip(eigenvalues, 0.0, None)) @ eigenvectors.T
        return np.asarray((fixed + fixed.T) / 2.0, dtype=np.float64)


def mean_historical_return(returns: FloatArray, *, compounding: bool, frequency: int) -> FloatArray:
    """Annualised mean historical return of each column, skipping missing (NaN) periods.

    The formula of PyPortfolioOpt's ``expected_returns.mean_historical_return(..., returns_data=True)`` (pandas
    ``prod``/``mean``/``count`` skip NaN): with compounding the geometric mean
    ``prod(1 + r) ** (frequency / count) - 1`` (CAGR), otherwise ``mean(r) * frequency``.

    Parameters
    ----------
    returns : ndarray, shape (T, N)
        Simple periodic returns (decimals); NaN marks a missing period.
    compounding : bool
        Geometric (True) or arithmetic (False) mean.
    frequency : int
        Periods per year (252 for daily data).

    Returns
    -------
    ndarray, shape (N,)
        Annualised expected returns (decimals).
    """
    count = np.count_nonzero(~np.isnan(returns), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if compounding:
            growth = np.nanprod(1.0 + returns, axis=0)
            return np.asarray(growth ** (frequency / count) - 1.0, dtype=np.float64)
        total = np.nansum(returns, axis=0)
        return np.asarray(total / count * frequency, dtype=np.float64)


def _expected_returns(
    returns: FloatArray, market_returns: FloatArray | None, settings: EstimationSettings
) -> FloatArray:
    if settings.returns_estimator is ReturnsEstimator.MEAN_HISTORICAL:
        return mean_historical_return(returns, compounding=settings.compounding, frequency=settings.periods_per_year)
    frame = pd.DataFrame(returns)
    with warnings.catch_warnings():
        # PyPortfolioOpt warns about NaN returns; missing data is handled (and reported) by the policy here.
        warnings.filterwarnings("ignore", message="Some returns are NaN")
        return _pypfopt_expected_returns(frame, market_returns, settings)


def _pypfopt_expected_returns(
    frame: pd.DataFrame, market_returns: FloatArray | None, settings: EstimationSettings
) -> FloatArray:
    freq = settings.periods_per_year
    if settings.returns_estimator is ReturnsEstimator.EMA:
        mu = pypfopt_returns.ema_historical_return(
            frame, returns_data=True, compounding=settings.compounding, span=settings.ema_span, frequency=freq
        )
    else:
        market = None if market_returns is None else pd.DataFrame({"mkt": market_returns})
        mu = pypfopt_returns.capm_return(
            frame,
            market_prices=market,
            returns_data=True,
            risk_free_rate=settings.risk_free_rate,
            compounding=settings.compounding,
            frequency=freq,
        )
    return np.asarray(mu, dtype=np.float64)


def _exactly_symmetric(matrix: FloatArray, block: int = 256) -> bool:
    """Whether a square matrix equals its transpose bit for bit, compared block by block.

    Tiles of ``block`` × ``block`` against the transposed tile: a cache-friendly single pass, about half the time
    of ``np.array_equal(matrix, matrix.T)`` at N = 2000, and no N × N temporary.
    """
    n = matrix.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            if not np.array_equal(matrix[i : i + block, j : j + block], matrix[j : j + block, i : i + block].T):
                return False
    return True


def validate_moments(moments: Moments, n_assets: int) -> FloatArray | None:
    """Check shapes, finiteness, symmetry and positive semidefiniteness of caller-given moments.

    Parameters
    ----------
    moments : Moments
        Expected returns (N,) and covariance (N, N).
    n_assets : int
        N, the number of strategies.

    Returns
    -------
    ndarray of shape (N, N) or None
        The proof of positive definiteness when it is one that a solver can reuse: the upper Cholesky factor C
        (CᵀC = Σ, Fortran order, LAPACK ``dpotrf``; the strict lower triangle is not cleared) of a covariance
        that is exactly symmetric. None when Σ is symmetric only to the tolerance (the factor would be of
        (Σ + Σᵀ)/2) or only semidefinite (proved by its eigenvalues).

    Raises
    ------
    InvalidInputError
        Naming ``expected_returns`` or ``covariance`` (an entry as ``expected_returns[i]``, ``covariance[i, j]``).
    """
    mu, sigma = moments.expected_returns, moments.covariance
    if mu.shape != (n_assets,):
        raise InvalidInputError.for_field("expected_returns", f"has {mu.size} values for {n_assets} strategies")
    if sigma.shape != (n_assets, n_assets):
        raise InvalidInputError.for_field(
            "covariance", f"has {sigma.size} values; expected {n_assets}x{n_assets} = {n_assets**2}"
        )
    if not np.all(np.isfinite(mu)):
        idx = int(np.flatnonzero(~np.isfinite(mu))[0])
        raise InvalidInputError.for_field(f"expected_returns[{idx}]", "must be finite")
    if not np.all(np.isfinite(sigma)):
        i, j = np.argwhere(~np.isfinite(sigma))[0]
        raise InvalidInputError.for_field(f"covariance[{i}, {j}]", "must be finite")
    exact = _exactly_symmetric(sigma)
    if not exact:
        scale = max(float(np.max(np.abs(sigma))), 1e-300)
        asymmetry = np.abs(sigma - sigma.T)  # one pass (np.allclose built four N×N temporaries: 36 ms at N = 2000)
        if float(asymmetry.max()) > 1e-10 * scale:
            i, j = np.unravel_index(int(np.argmax(asymmetry)), sigma.shape)
            raise InvalidInputError.for_field("covariance", f"is not symmetric: entry ({i},{j}) differs from ({j},{i})")
    flat = np.flatnonzero(np.diag(sigma) <= 0.0)
    if flat.size:
        raise InvalidInputError.for_field(
            f"covariance[{int(flat[0])}, {int(flat[0])}]", "every variance (diagonal entry) must be positive"
        )
    symmetric = sigma if exact else (sigma + sigma.T) / 2.0
    # A Cholesky factor proves positive definiteness at a fraction of an eigendecomposition's cost. The transpose of
    # the C-ordered Σ is the Fortran array LAPACK reads (its upper triangle is Σ's lower one, as np.linalg.cholesky
    # reads); the input is copied, not overwritten.
    factor, info = lapack.dpotrf(symmetric.T, lower=0, clean=0, overwrite_a=0)
    if info == 0:
        return np.asarray(factor, dtype=np.float64) if exact else None
    scale = max(float(np.max(np.abs(sigma))), 1e-300)
    smallest = float(np.linalg.eigvalsh(symmetric)[0])
    if smallest < -1e-10 * scale:
        raise InvalidInputError.for_field(
            "covariance", f"is not positive semidefinite (smallest eigenvalue {smallest:.3g})"
        )
    return None


def estimate_moments(history: ReturnHistory, settings: EstimationSettings) -> EstimatedMoments:
    """Annualised expected returns and covariance of a return history.

    Missing data: under ``PAIRWISE`` each mean uses all observations of its strategy and each covariance
    entry all periods both strategies share (PyPortfolioOpt's behaviour; a non-PSD result is repaired by
    eigenvalue clipping). Ledoit-Wolf and the exponential covariance need complete rows and always use the
    common window, which the returned ``missing_data_policy`` then says. Under ``COMMON_WINDOW`` every
    estimator uses only periods where all strategies are observed.

    Parameters
    ----------
    history : ReturnHistory
        Returns of shape (T, N), NaN for missing.
    settings : EstimationSettings
        Estimators, annualisation and missing-data policy.

    Returns
    -------
    EstimatedMoments
        Moments of shape (N,) and (N, N), the number of periods used and the policy applied.

    Raises
    ------
    InvalidInputError
        Fewer than 2 observations for a strategy or for the common window, or a strategy with zero variance.
    """
    returns = history.returns
    keep = ~np.all(np.isnan(returns), axis=1)
    returns = returns[keep]
    timestamps = history.timestamps[keep]
    market = None if history.market_returns is None else history.market_returns[keep]
    complete = ~np.any(np.isnan(returns), axis=1)
    has_gaps = not bool(complete.all())
    needs_complete = settings.covariance_estimator is not CovarianceEstimator.SAMPLE
    policy = settings.missing_data_policy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are caught just below
        constant = np.nanmax(returns, axis=0) == np.nanmin(returns, axis=0)
    counts = np.sum(~np.isnan(returns), axis=0)
    short = np.flatnonzero(counts < MIN_OBSERVATIONS)
    if short.size:
        raise InvalidInputError.for_field(
            f"returns[:, {int(short[0])}]", f"needs at least {MIN_OBSERVATIONS} return observations"
        )
    if (policy is MissingDataPolicy.COMMON_WINDOW or needs_complete) and complete.sum() < MIN_OBSERVATIONS:
        raise InvalidInputError.for_field(
            "missing_data_policy",
            f"the strategies share only {int(complete.sum())} complete periods; the common window needs "
            f"at least {MIN_OBSERVATIONS}",
        )

    if policy is MissingDataPolicy.COMMON_WINDOW and has_gaps:
        returns, timestamps = returns[complete], timestamps[complete]
        market = None if market is None else market[complete]
        complete = np.ones(len(returns), dtype=bool)
        has_gaps = False

    flat = np.flatnonzero(constant)
    if flat.size:
        raise InvalidInputError.for_field(f"returns[:, {int(flat[0])}]", "returns are constant (zero variance)")

    mu = _expected_returns(returns, market, settings)
    freq = settings.periods_per_year
    common = returns[complete]
    if settings.covariance_estimator is CovarianceEstimator.SAMPLE:
        per_period = pairwise_covariance(returns) if has_gaps else np.cov(returns, rowvar=False)
    elif settings.covariance_estimator is CovarianceEstimator.LEDOIT_WOLF:
        per_period = ledoit_wolf(common)[0]
    else:
        per_period = exponential_covariance(common, settings.ema_span)
    if np.isnan(per_period).any():
        i, j = np.argwhere(np.isnan(per_period))[0]
        raise InvalidInputError.for_field(
            f"returns[:, {int(i)}]",
            f"shares fewer than {MIN_OBSERVATIONS} observations with returns[:, {int(j)}]",
        )
    covariance = np.asarray(per_period, dtype=np.float64) * freq
    if has_gaps and settings.covariance_estimator is CovarianceEstimator.SAMPLE:
        # Only the pairwise estimate can be indefinite; complete-row estimates are PSD by construction (an
        # eigendecomposition per call would cost seconds at N = 2000).
        covariance = nearest_psd(covariance)
    if not np.isfinite(covariance).all():  # e.g. returns of 1e155: their squares overflow
        i = int(np.argwhere(~np.isfinite(covariance))[0][0])
        raise InvalidInputError.for_field(f"returns[:, {i}]", "returns are too large: their covariance is not finite")
    variances = np.diag(covariance)
    flat = np.flatnonzero(variances <= 1e-12 * max(float(variances.max()), 1e-300))
    if flat.size:
        raise InvalidInputError.for_field(f"returns[:, {int(flat[0])}]", "returns have zero variance")

    applied = policy.value
    if policy is MissingDataPolicy.PAIRWISE and needs_complete and has_gaps:
        applied = "PAIRWISE (covariance: COMMON_WINDOW)"
    return EstimatedMoments(
        moments=Moments(expected_returns=mu, covariance=covariance),
        observations=len(returns),
        missing_data_policy=applied,
        window_start=timestamps[0] if len(timestamps) else None,
        window_end=timestamps[-1] if len(timestamps) else None,
    )
