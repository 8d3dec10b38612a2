"""Hierarchical Risk Parity (López de Prado, 2016) over a covariance matrix, in NumPy and SciPy.

The three steps of the paper (M. López de Prado, "Building Diversified Portfolios that Outperform Out of
Sample", The Journal of Portfolio Management 42(4), 2016, pp. 59-69):

1. tree clustering: the correlation distance d_ij = sqrt((1 − ρ_ij) / 2) of the correlation ρ = D⁻¹ΣD⁻¹
   (D = diag(σ)), clustered by ``scipy.cluster.hierarchy.linkage`` on the condensed distance matrix;
2. quasi-diagonalisation: the leaves of the dendrogram, left to right (``scipy.cluster.hierarchy.leaves_list``);
3. recursive bisection: starting from the whole ordered list with weight 1, every list of more than one
   strategy is cut in two halves (the first ⌊n/2⌋ strategies and the rest, not the dendrogram's own split), the
   variance V of each half's inverse-variance portfolio is computed, and the list's weight is split
   α = 1 − V_left / (V_left + V_right) to the left half and 1 − α to the right half.

This reproduces PyPortfolioOpt's ``HRPOpt(cov_matrix=...).optimize(linkage_method)`` (1.6.0) step for step,
including its rounding of the correlation to 6 decimals before the distance (so correlations that differ by
less than 5e-7 are exact ties, broken the same way by the same linkage call). Given a ``correlation`` as well,
it reproduces ``HRPOpt(returns=...).optimize(linkage_method)`` instead: PyPortfolioOpt then clusters on pandas'
pairwise correlation ``returns.corr()``, unrounded, and bisects with ``returns.cov()``; with gaps in the history
(series listed later) that correlation is not the covariance's D⁻¹ΣD⁻¹, since each pair's deviations are taken
over the periods the pair shares (``services.estimation.pairwise_correlation``). The bisection is vectorised over
the levels of the bisection tree (at most ⌈log₂ N⌉ levels, each O(N) after one O(N²) prefix sum), where
PyPortfolioOpt slices a DataFrame per cluster.

Weight bounds l ≤ w ≤ u are met as in skfolio's ``HierarchicalRiskParity(min_weights, max_weights)``: at each
split of a list of weight W, α is clipped to [Σ l_left / W, Σ u_left / W] and then 1 − α to
[Σ l_right / W, Σ u_right / W]. Starting from W = 1 ∈ [Σ l, Σ u], every list's weight stays within its
members' summed bounds, so each single strategy ends within its own bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import numpy as np
import scipy.cluster.hierarchy as sch
from numpy.typing import NDArray
from scipy.spatial.distance import squareform

from services.errors import InfeasibleError, InvalidInputError, PreconditionViolation
from services.types import FloatArray

LINKAGE_METHODS: Final = ("single", "ward", "complete", "average")
"""Linkage criteria accepted by :func:`hierarchical_risk_parity` (``scipy.cluster.hierarchy.linkage`` names)."""

CORRELATION_DECIMALS: Final = 6
"""Decimals the correlation is rounded to before the distance, as PyPortfolioOpt does for a given covariance."""

BOUNDS_TOLERANCE: Final = 1e-9
"""Slack of the bound-sum feasibility check (Σ lower ≤ 1 + tol, Σ upper ≥ 1 − tol), as in the mean-variance
pre-checks."""

_SYMMETRY_TOLERANCE: Final = 1e-10
"""Largest |Σ_ij − Σ_ji| accepted, relative to the largest variance."""
_SYMMETRY_BLOCK: Final = 128

LINKAGE_FIELD: Final = "linkage"
COVARIANCE_FIELD: Final = "covariance"
CORRELATION_FIELD: Final = "correlation"


@dataclass(frozen=True, slots=True)
class HrpResult:
    """A hierarchical risk parity portfolio.

    Attributes
    ----------
    weights : ndarray of shape (N,)
        Weights (fractions, non-negative, summing to 1) in the order of the covariance's rows.
    cluster_order : ndarray of shape (N,), dtype int64
        The quasi-diagonal order: row indices of the covariance as the dendrogram's leaves, left to right; the
        recursive bisection cuts this list in halves.
    solve_time_ms : float
        Wall time of validation, clustering and bisection (milliseconds).
    """

    weights: FloatArray
    cluster_order: NDArray[np.int64]
    solve_time_ms: float


def correlation_distance(covariance: FloatArray, *, workspace: FloatArray | None = None) -> FloatArray:
    """Condensed correlation distance sqrt((1 − ρ) / 2) of a covariance, as PyPortfolioOpt computes it.

    ρ_ij = σ_i⁻¹ (Σ_ij σ_j⁻¹) rounded to ``CORRELATION_DECIMALS`` decimals, clipped so that the distance lies in
    [0, 1], in the same floating-point operations as PyPortfolioOpt's ``cov_to_corr`` (whose products with the
    diagonal matrix D⁻¹ are exact per entry) and ``HRPOpt.optimize``, so the linkage sees identical input.

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Covariance with a strictly positive diagonal (any unit: the distance is scale free). Only the upper
        triangle enters the result.
    workspace : ndarray of shape (N, N), optional
        Scratch array overwritten with the correlation (saves one N×N allocation).

    Returns
    -------
    ndarray of shape (N (N − 1) / 2,)
        The upper triangle of the distance matrix, row by row (``scipy.spatial.distance.squareform`` layout).
    """
    inverse_sd = 1.0 / np.sqrt(np.diag(covariance))
    correlation = np.multiply(covariance, inverse_sd[None, :], out=workspace)
    np.multiply(inverse_sd[:, None], correlation, out=correlation)
    distance: FloatArray = squareform(correlation, checks=False)
    # sqrt(clip((1 − round(ρ, 6)) / 2, 0, 1)), elementwise on the condensed copy.
    np.round(distance, CORRELATION_DECIMALS, out=distance)
    np.subtract(1.0, distance, out=distance)
    np.divide(distance, 2.0, out=distance)
    np.clip(distance, 0.0, 1.0, out=distance)
    np.sqrt(distance, out=distance)
    return distance


def hierarchical_risk_parity(
    covariance: FloatArray,
    *,
    linkage: str = "single",
    lower_bounds: FloatArray | None = None,
    upper_bounds: FloatArray | None = None,
    correlation: FloatArray | None = None,
) -> HrpResult:
    """Hierarchical Risk Parity weights of a covariance (López de Prado, 2016).

    Tree clustering of the correlation distance sqrt((1 − ρ) / 2), quasi-diagonal ordering by the dendrogram's
    leaves and recursive bisection with inverse-variance cluster variances; see the module docstring. Without
    bounds the weights equal PyPortfolioOpt's ``HRPOpt(cov_matrix=...).optimize(linkage)`` (to rounding,
    about 1e-16); with bounds, skfolio's ``HierarchicalRiskParity`` with ``min_weights`` / ``max_weights``
    on the same ordering.

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Covariance of the N strategies, symmetric, finite, with a strictly positive diagonal; the unit does not
        matter (periodic or annualised give the same weights). Positive semidefiniteness is not checked as a
        whole (an O(N³) test), but every cluster variance the bisection uses must be positive.
    linkage : {"single", "ward", "complete", "average"}, default "single"
        Linkage criterion of the tree clustering (single is the paper's). Ward is applied to the correlation
        distances as given (SciPy's Lance-Williams update, as PyPortfolioOpt and skfolio do).
    lower_bounds, upper_bounds : ndarray of shape (N,), optional
        Minimum and maximum weight of each strategy (fractions); either alone leaves the other side at 0 / 1.
        HRP is long-only: a negative lower bound counts as 0 (also in the feasibility check), an upper bound
        above 1 never binds, and a negative upper bound is invalid.
    correlation : ndarray of shape (N, N), optional
        Correlation to cluster on, used as given (not rounded): PyPortfolioOpt's ``HRPOpt(returns=...)`` path,
        which clusters on ``returns.corr()`` (pairwise-complete, ``services.estimation.pairwise_correlation``)
        and bisects with ``returns.cov()`` (pass that as ``covariance``). None: the correlation of
        ``covariance`` rounded to 6 decimals, as ``HRPOpt(cov_matrix=...)``.

    Returns
    -------
    HrpResult
        Weights (N,) summing to 1, the quasi-diagonal order (N,) and the solve time.

    Raises
    ------
    InvalidInputError
        Naming ``linkage`` for a linkage outside the four above; ``covariance`` (``covariance[i, j]`` for an
        entry that is not finite) for a covariance that is empty, not square, not symmetric, has a non-positive
        variance, or gives a cluster a non-positive variance (not positive semidefinite); ``lower_bounds`` /
        ``upper_bounds`` for bounds of the wrong shape, ``lower_bounds[i]`` / ``upper_bounds[i]`` for a bound not
        finite, ``upper_bounds[i]`` for a negative upper bound, ``lower_bounds[i]`` for a lower bound above its
        upper bound; ``correlation`` (``correlation[i, j]``) for a correlation of another shape, or not finite.
    InfeasibleError
        With a ``BOUNDS_SUM`` ``PreconditionViolation`` when the lower bounds sum above 1 or the upper bounds
        below 1 (beyond ``BOUNDS_TOLERANCE``).

    References
    ----------
    M. López de Prado, "Building Diversified Portfolios that Outperform Out of Sample", The Journal of Portfolio
    Management 42(4), 2016, pp. 59-69. doi:10.3905/jpm.2016.42.4.059.
    """
    started = time.perf_counter()
    if linkage not in LINKAGE_METHODS:
        raise InvalidInputError.for_field(
            LINKAGE_FIELD, f"unknown linkage {linkage!r}; expected one of {', '.join(LINKAGE_METHODS)}"
        )
    # Row-major: the row prefix sums and the blocked symmetry check read rows (a DataFrame's values are often
    # column-major, which would make every N×N pass strided).
    covariance = np.ascontiguousarray(covariance, dtype=np.float64)
    variances = _validate_covariance(covariance)
    n_assets = variances.size
    bounds = _validate_bounds(lower_bounds, upper_bounds, n_assets)

    workspace = np.empty(
        (n_assets, n_assets)
    )  # C-ordered N×N scratch: the correlation, then the bisection's prefix sums
    if n_assets == 1:
        order = np.zeros(1, dtype=np.int64)
    else:
        if correlation is None:
            distance = correlation_distance(covariance, workspace=workspace)
        else:
            distance = given_correlation_distance(correlation, n_assets)
        linkage_matrix = sch.linkage(distance, method=linkage)
        order = sch.leaves_list(linkage_matrix).astype(np.int64, copy=False)

    ordered_weights = _recursive_bisection(covariance, variances, order, bounds, workspace)
    weights = np.empty(n_assets)
    weights[order] = ordered_weights
    return HrpResult(weights=weights, cluster_order=order, solve_time_ms=(time.perf_counter() - started) * 1e3)


def given_correlation_distance(correlation: FloatArray, n_assets: int) -> FloatArray:
    """Condensed distance sqrt(clip((1 − ρ) / 2, 0, 1)) of a given correlation, unrounded (``HRPOpt(returns)``).

    The same elementwise operations as PyPortfolioOpt's ``HRPOpt.optimize`` on ``returns.corr()``, then the upper
    triangle row by row (``squareform(..., checks=False)``).

    Raises
    ------
    InvalidInputError
        ``correlation`` is not of shape (N, N); ``correlation[i, j]`` is not finite.
    """
    matrix = np.asarray(correlation, dtype=np.float64)
    if matrix.shape != (n_assets, n_assets):
        raise InvalidInputError.for_field(
            CORRELATION_FIELD, f"has shape {matrix.shape}; expected ({n_assets}, {n_assets})"
        )
    if not np.isfinite(matrix).all():
        i, j = np.argwhere(~np.isfinite(matrix))[0]
        raise InvalidInputError.for_field(f"{CORRELATION_FIELD}[{i}, {j}]", "must be finite")
    distance: FloatArray = squareform(np.sqrt(np.clip((1.0 - matrix) / 2.0, 0.0, 1.0)), checks=False)
    return distance


def _validate_covariance(covariance: FloatArray) -> FloatArray:
    """Check the covariance and return its diagonal (the variances)."""
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1] or covariance.shape[0] == 0:
        raise InvalidInputError.for_field(
            COVARIANCE_FIELD, f"must be a non-empty square matrix, got shape {covariance.shape}"
        )
    if not np.isfinite(covariance.sum()) and not np.isfinite(covariance).all():  # one pass when all finite
        i, j = np.argwhere(~np.isfinite(covariance))[0]
        raise InvalidInputError.for_field(f"{COVARIANCE_FIELD}[{i}, {j}]", "must be finite")
    variances = np.diag(covariance).copy()
    if np.any(variances <= 0.0):
        idx = int(np.flatnonzero(variances <= 0.0)[0])
        raise InvalidInputError.for_field(
            COVARIANCE_FIELD, f"variance of strategy {idx} is {variances[idx]:g}; HRP needs positive variances"
        )
    _check_symmetric(covariance, tolerance=_SYMMETRY_TOLERANCE * float(variances.max()))
    return variances


def _check_symmetric(covariance: FloatArray, *, tolerance: float) -> None:
    """Raise unless |Σ_ij − Σ_ji| ≤ tolerance everywhere, comparing cache-sized blocks of rows and columns."""
    n_assets = covariance.shape[0]
    for first in range(0, n_assets, _SYMMETRY_BLOCK):
        last = min(first + _SYMMETRY_BLOCK, n_assets)
        asymmetry = np.abs(covariance[first:last, first:] - covariance[first:, first:last].T)
        if float(asymmetry.max()) > tolerance:
            i, j = np.unravel_index(int(np.argmax(asymmetry)), asymmetry.shape)
            raise InvalidInputError.for_field(
                COVARIANCE_FIELD,
                f"is not symmetric: entry ({first + i},{first + j}) differs from ({first + j},{first + i})",
            )


def _validate_bounds(
    lower_bounds: FloatArray | None, upper_bounds: FloatArray | None, n_assets: int
) -> tuple[FloatArray, FloatArray] | None:
    """Check the weight bounds; None when both are absent (unbounded HRP)."""
    if lower_bounds is None and upper_bounds is None:
        return None
    arrays = []
    for field, given, default in (("lower_bounds", lower_bounds, 0.0), ("upper_bounds", upper_bounds, 1.0)):
        if given is None:
            arrays.append(np.full(n_assets, default))
            continue
        values = np.asarray(given, dtype=np.float64)
        if values.shape != (n_assets,):
            raise InvalidInputError.for_field(field, f"has shape {values.shape}; expected ({n_assets},)")
        if not np.isfinite(values).all():
            idx = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InvalidInputError.for_field(f"{field}[{idx}]", "must be finite")
        arrays.append(values)
    lower, upper = arrays
    crossed = np.flatnonzero(lower > upper)
    if crossed.size:
        idx = int(crossed[0])
        raise InvalidInputError.for_field(
            f"lower_bounds[{idx}]",
            f"min_weight {lower[idx]:g} is above max_weight {upper[idx]:g}",
        )
    negative = np.flatnonzero(upper < 0.0)
    if negative.size:
        idx = int(negative[0])
        raise InvalidInputError.for_field(
            f"upper_bounds[{idx}]", f"is {upper[idx]:g}; HRP weights are long-only (never below 0)"
        )
    lower = np.maximum(lower, 0.0)  # long-only: a negative minimum is the minimum 0
    violations = []
    if lower.sum() > 1.0 + BOUNDS_TOLERANCE:
        violations.append(
            PreconditionViolation("BOUNDS_SUM", "lower_bounds", f"minimum weights sum to {lower.sum():.6g} > 1")
        )
    if upper.sum() < 1.0 - BOUNDS_TOLERANCE:
        violations.append(
            PreconditionViolation("BOUNDS_SUM", "upper_bounds", f"maximum weights sum to {upper.sum():.6g} < 1")
        )
    if violations:
        raise InfeasibleError("; ".join(v.description for v in violations), precondition_violations=tuple(violations))
    return lower, upper


def _recursive_bisection(
    covariance: FloatArray,
    variances: FloatArray,
    order: NDArray[np.int64],
    bounds: tuple[FloatArray, FloatArray] | None,
    workspace: FloatArray,
) -> FloatArray:
    """Weights in the quasi-diagonal order by top-down bisection, one vectorised step per level.

    Every list at a level is a contiguous range [a, b) of ``order`` (o). The variance of a range's
    inverse-variance portfolio is q / s², with s = Σ_{a≤p<b} v_p⁻¹ and q = Σ_{a≤p,k<b} v_p⁻¹ v_k⁻¹ Σ_{o_p o_k}
    (v_p = Σ_{o_p o_p}); q is read off the row prefix sums P_{i,k} = Σ_{m≤k} Σ_{i,o_m} v_m⁻¹ as
    Σ_p v_p⁻¹ (P_{o_p,b−1} − P_{o_p,a−1}). ``workspace`` (N, N) is overwritten with P.
    """
    n_assets = order.size
    inverse_variance = 1.0 / variances[order]
    ordered_weights = np.empty(n_assets)
    if n_assets == 1:
        ordered_weights[0] = 1.0
        return ordered_weights

    prefix = np.take(covariance, order, axis=1, out=workspace, mode="clip")  # indices are valid: no buffering
    np.multiply(prefix, inverse_variance[None, :], out=prefix)
    np.cumsum(prefix, axis=1, out=prefix)
    if bounds is not None:
        ordered_lower, ordered_upper = bounds[0][order], bounds[1][order]

    starts = np.zeros(1, dtype=np.int64)
    ends = np.full(1, n_assets, dtype=np.int64)
    list_weights = np.ones(1)
    while starts.size:
        single = ends - starts == 1
        ordered_weights[starts[single]] = list_weights[single]
        starts, ends, list_weights = starts[~single], ends[~single], list_weights[~single]
        if not starts.size:
            break
        mids = starts + (ends - starts) // 2
        # Halves interleaved: the left half of list k is half 2k, its right half 2k + 1.
        half_starts = np.column_stack((starts, mids)).ravel()
        half_ends = np.column_stack((mids, ends)).ravel()
        sizes = half_ends - half_starts
        labels = np.repeat(np.arange(sizes.size), sizes)  # the half each position p belongs to
        positions = np.arange(sizes.sum()) + np.repeat(half_starts - (np.cumsum(sizes) - sizes), sizes)
        rows = order[positions]
        row_starts, row_ends = half_starts[labels], half_ends[labels]
        row_sums = prefix[rows, row_ends - 1] - np.where(row_starts > 0, prefix[rows, row_starts - 1], 0.0)
        quadratic = np.bincount(labels, weights=inverse_variance[positions] * row_sums, minlength=sizes.size)
        inverse_sum = np.bincount(labels, weights=inverse_variance[positions], minlength=sizes.size)
        half_variances = quadratic / inverse_sum**2
        if not np.all(half_variances > 0.0):
            bad = int(np.flatnonzero(~(half_variances > 0.0))[0])
            members = order[half_starts[bad] : half_ends[bad]]
            raise InvalidInputError.for_field(
                COVARIANCE_FIELD,
                f"is not positive semidefinite: the cluster of strategies {members.tolist()[:10]} has "
                f"inverse-variance portfolio variance {half_variances[bad]:.3g}",
            )
        left_variances, right_variances = half_variances[0::2], half_variances[1::2]
        alpha = 1.0 - left_variances / (left_variances + right_variances)
        if bounds is not None:
            lower_sums = np.bincount(labels, weights=ordered_lower[positions], minlength=sizes.size)
            upper_sums = np.bincount(labels, weights=ordered_upper[positions], minlength=sizes.size)
            # skfolio's order: clip α to what the left half can hold, then 1 − α to what the right half can.
            alpha = np.minimum(upper_sums[0::2] / list_weights, np.maximum(lower_sums[0::2] / list_weights, alpha))
            alpha = 1.0 - np.minimum(
                upper_sums[1::2] / list_weights, np.maximum(lower_sums[1::2] / list_weights, 1.0 - alpha)
            )
        starts, ends = half_starts, half_ends
        list_weights = np.column_stack((list_weights * alpha, list_weights * (1.0 - alpha))).ravel()
    return ordered_weights
