"""Long-only risk budgeting and equal risk contribution (ERC) portfolios, solved by Newton's method in JAX.

The risk contribution of strategy i to the variance of a long-only portfolio w is

    RC_i = w_i (Σw)_i / wᵀΣw,   Σ_i RC_i = 1,

and the risk-budgeting portfolio for budgets b > 0 (Σ b_i = 1) is the long-only, fully invested w with
RC_i = b_i for every i (ERC: b_i = 1/N). It is the normalised minimiser of the convex problem of Spinu (2013)
and Roncalli (2013)

    minimise f(y) = ½ yᵀΣy − Σ_i b_i log y_i   over y > 0,   then w = y / 1ᵀy,

since ∇f(y) = Σy − b/y = 0 gives y_i (Σy)_i = b_i: the contributions of y are proportional to b, and they stay
so when y is rescaled. f is strictly convex on y > 0 (its Hessian Σ + diag(b/y²) is positive definite for a
positive semidefinite Σ), so the solution is unique whenever it exists, i.e. unless some long-only portfolio
has zero variance.

Algorithm (one jit-compiled ``jax.lax.while_loop``, float64):

- Σ is divided by its mean variance (weights do not depend on the unit) and b normalised to sum 1;
- start: y₀ ∝ √b_i / σ_i, the exact solution for a diagonal Σ, rescaled to the minimiser of f along its ray
  (y₀ᵀΣy₀ = 1ᵀb = 1);
- step: the Newton direction d = −(Σ + diag(b/y²))⁻¹ ∇f(y) from a Cholesky factorisation (O(N³) per
  iteration) and a backtracking line search from t = 1 (halving until y + t d > 0 and the Armijo condition
  f(y + t d) ≤ f(y) + 10⁻⁴ t ∇f(y)ᵀd hold); once every coordinate moves by at most 0.1 % of itself the full
  step is taken without the Armijo test (the quadratic model is then accurate and the decrease of f can be
  below its rounding). Newton's method with this line search converges from any y > 0 for a strictly convex
  f with bounded level sets, and quadratically near the solution (Boyd and Vandenberghe, 2004, §9.5);
- stop: when max_i |RC_i(y)/b_i − 1| ≤ ``tolerance``, after ``max_iterations`` steps, or when a small full
  step no longer lowers that error (the floating-point floor, usually ~1e-15) or the line search fails.

Typical solves take 5-10 Newton steps from y₀ to an error near 1e-15 (N = 20 to 2000).

JAX usage: the solver runs under ``jax.enable_x64(True)`` (a thread-local context manager, entered on each
call), so float64 is used without changing the process-wide ``jax_enable_x64`` default for other JAX code.
``jax.jit`` compiles one executable per matrix size N (and per device/backend), kept in memory for the life of
the process: the first call with a new N pays the tracing and XLA compilation (about 1-1.5 s per N on a 2-core
CPU, up to ~5 s under load; more than the solve itself up to N ≈ 2000), later calls with that N reuse it;
tolerance and iteration limit are traced arguments and do not recompile. :func:`warm_up` compiles a size ahead
of time (e.g. at worker start). JAX runs on its default device, a GPU when jaxlib has one and the CPU otherwise;
nothing here assumes either. On CPU cores shared with other work, XLA's multi-threaded runtime can stall for
seconds at N ≥ 500; ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`` (set in the
environment before JAX starts; process-wide, so not set here) gave stable times in
``benchmarks/risk_parity_speed.py`` (``--xla-single-thread``).

Weight bounds, sector limits and a minimum return are not supported: risk budgeting here is long-only and fully
invested without further constraints (:func:`check_no_binding_bounds` rejects bounds that could bind).

References
----------
F. Spinu, "An Algorithm for Computing Risk Parity Weights", SSRN 2297383, 2013. doi:10.2139/ssrn.2297383.
T. Roncalli, "Introduction to Risk Parity and Budgeting", Chapman & Hall/CRC, 2013.
S. Boyd and L. Vandenberghe, "Convex Optimization", Cambridge University Press, 2004, §9.5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from numpy.typing import ArrayLike

from services.errors import InfeasibleError, InvalidInputError, PreconditionViolation
from services.optimization._metrics import risk_contributions
from services.types import FloatArray

SOLVER: Final = "JAX_NEWTON"
"""Solver name reported in :class:`RiskParityResult`."""

COVARIANCE_FIELD: Final = "covariance"
BUDGETS_FIELD: Final = "risk_budgets"

ARMIJO_FRACTION: Final = 1e-4
"""Sufficient-decrease fraction of the backtracking line search: f(y + t d) ≤ f(y) + fraction · t ∇f(y)ᵀd."""

BACKTRACK_FACTOR: Final = 0.5
"""Step shrink factor of the backtracking line search."""

MAX_BACKTRACKS: Final = 60
"""Halvings before the line search gives up (the solve then stops as stalled)."""

SMALL_STEP: Final = 1e-3
"""Full Newton steps that move every y_i by at most this fraction of itself are taken without the Armijo test."""

FAILURE_ERROR: Final = 1e-6
"""Largest max_i |RC_i / b_i − 1| returned (as not converged) when the solve stops early; above it the solve
raises ``InfeasibleError`` (``SINGULAR_COVARIANCE``)."""

_SYMMETRY_TOLERANCE: Final = 1e-10
"""Largest |Σ_ij − Σ_ji| accepted, relative to max |Σ_ij| (as ``mean_variance.validate_moments``)."""

_PSD_TOLERANCE: Final = 1e-10
"""Σ + tol·max|Σ_ij|·I must have a Cholesky factor: the smallest eigenvalue may be at most this far below 0,
relative to max |Σ_ij| (as ``mean_variance.validate_moments``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskParityResult:
    """A long-only risk-budgeting portfolio and how it was found.

    Attributes
    ----------
    weights : ndarray of shape (N,)
        Weights (fractions, positive, summing to 1) in the order of the covariance's rows.
    risk_contributions : ndarray of shape (N,)
        Fractions of the portfolio variance, RC_i = w_i (Σw)_i / wᵀΣw, summing to 1; equal to the normalised
        budgets at the solution.
    iterations : int
        Newton iterations (0 when the starting point already met the tolerance, e.g. a diagonal covariance).
    converged : bool
        Whether ``max_relative_rc_error`` ≤ the requested tolerance.
    max_relative_rc_error : float
        max_i |RC_i / b_i − 1| of the returned weights (b: normalised budgets), computed in NumPy from
        ``weights``.
    solve_time_ms : float
        Wall time of validation and solve (milliseconds); includes JAX's compilation on the first call for a
        new N.
    solver : str
        ``JAX_NEWTON``.
    """

    weights: FloatArray
    risk_contributions: FloatArray
    iterations: int
    converged: bool
    max_relative_rc_error: float
    solve_time_ms: float
    solver: str = SOLVER


def check_no_binding_bounds(lower_bounds: FloatArray | None, upper_bounds: FloatArray | None) -> None:
    """Reject per-strategy weight bounds that could bind a risk-budgeting portfolio.

    Risk budgeting here is long-only and fully invested without further constraints, so its weights always lie
    in (0, 1): a lower bound ≤ 0 or an upper bound ≥ 1 never binds and is accepted; anything tighter is not
    supported (bounded risk budgeting changes the problem, Richard and Roncalli, 2019).

    Parameters
    ----------
    lower_bounds, upper_bounds : ndarray of shape (N,) or None
        Minimum and maximum weight of each strategy (fractions), or None for none.

    Raises
    ------
    InvalidInputError
        Naming ``lower_bounds[i]`` / ``upper_bounds[i]`` when some lower bound is above 0, some upper bound below
        1, or a bound is NaN.
    """
    for name, field, given, free in (
        ("min_weight", "lower_bounds", lower_bounds, 0.0),
        ("max_weight", "upper_bounds", upper_bounds, 1.0),
    ):
        if given is None:
            continue
        values = np.atleast_1d(np.asarray(given, dtype=np.float64))
        binding = np.flatnonzero(~(values <= free) if name == "min_weight" else ~(values >= free))
        if binding.size:
            idx = int(binding[0])
            raise InvalidInputError.for_field(
                f"{field}[{idx}]",
                f"{name} {values[idx]:g} of strategy {idx} could bind: risk budgeting is long-only and fully "
                "invested without weight bounds; bounds with risk budgeting are not supported",
            )


def risk_budgeting(
    covariance: FloatArray,
    budgets: ArrayLike | None = None,
    *,
    tolerance: float = 1e-12,
    max_iterations: int = 100,
) -> RiskParityResult:
    """Long-only risk-budgeting portfolio (equal risk contribution when ``budgets`` is None).

    Solves min ½ yᵀΣy − bᵀ log y over y > 0 by Newton steps with backtracking in one jit-compiled JAX loop and
    returns w = y / 1ᵀy, whose variance contributions w_i (Σw)_i / wᵀΣw equal the budgets b_i (see the module
    docstring).

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Covariance of the N strategies: symmetric, finite, positive semidefinite, with a strictly positive
        diagonal; any unit (periodic or annualised give the same weights).
    budgets : array-like of shape (N,), optional
        Risk budgets, positive and finite, in any scale (normalised to sum 1). None: 1/N each (ERC).
    tolerance : float, default 1e-12
        Target for max_i |RC_i / b_i − 1|; positive. Around 1e-15 is the float64 floor for well-conditioned
        inputs.
    max_iterations : int, default 100
        Most Newton iterations; at least 1.

    Returns
    -------
    RiskParityResult
        Weights (N,), risk contributions (N,) as fractions of the variance, iterations, convergence flag, the
        largest relative risk-contribution error and the solve time.

    Raises
    ------
    InvalidInputError
        Naming ``covariance`` for a covariance that is empty, not square, not symmetric or not positive
        semidefinite (beyond 1e-10 of max |Σ_ij|), ``covariance[i, j]`` for an entry that is not finite and
        ``covariance[i, i]`` for a strategy with zero (or negative) variance; ``risk_budgets`` for budgets of the
        wrong shape and ``risk_budgets[i]`` for a budget that is not positive and finite; ``tolerance`` or
        ``max_iterations`` out of range.
    InfeasibleError
        ``SINGULAR_COVARIANCE`` (FAILED_PRECONDITION): the solve produced non-finite or non-positive weights,
        or stopped before ``max_iterations`` (line search failure or no progress) with ``max_relative_rc_error``
        above ``FAILURE_ERROR``: the sign of a
        covariance under which some long-only portfolio has zero variance (then f is unbounded below and no
        risk-budgeting portfolio exists; for instance a sample covariance from fewer observations than
        strategies).

    Notes
    -----
    A result with ``converged`` False is returned, not raised, when the solve reached ``max_iterations``, or
    when it stopped at the floating-point floor between ``tolerance`` and ``FAILURE_ERROR`` (seen with budgets
    spanning five orders of magnitude on near-singular covariances: errors of 1e-11 to 2e-8). The weights are
    the last iterate, and ``max_relative_rc_error`` says how far they are from the budgets.

    References
    ----------
    F. Spinu, "An Algorithm for Computing Risk Parity Weights", SSRN 2297383, 2013.
    """
    started = time.perf_counter()
    sigma = np.asarray(covariance, dtype=np.float64)
    _validate_covariance(sigma)
    n_assets = sigma.shape[0]
    target = _normalised_budgets(budgets, n_assets)
    if not (np.isfinite(tolerance) and tolerance > 0.0):
        raise InvalidInputError.for_field("tolerance", f"must be positive and finite, got {tolerance!r}")
    if max_iterations < 1:
        raise InvalidInputError.for_field("max_iterations", f"must be at least 1, got {max_iterations}")

    # Pad to a bucket size so that XLA compiles one executable per bucket, not per N: an independent block
    # diag(d) with budgets c is separable in min ½ yᵀΣy − bᵀ log y (block-diagonal Σ), so the original block's
    # solution is unchanged up to scale; the padding starts at its own optimum and is dropped below.
    size = bucket_size(n_assets)
    padded_sigma, padded_budgets = sigma, target
    if size > n_assets:
        extra = size - n_assets
        padded_sigma = np.zeros((size, size))
        padded_sigma[:n_assets, :n_assets] = sigma
        padded_sigma[n_assets:, n_assets:] = np.diag(np.full(extra, float(np.mean(np.diag(sigma)))))
        padded_budgets = np.concatenate([target, np.full(extra, 1.0 / n_assets)])
        padded_budgets = padded_budgets / padded_budgets.sum()
    with jax.enable_x64(True):
        y, iterations, positive_semidefinite = _newton_solve(
            jnp.asarray(padded_sigma),
            jnp.asarray(padded_budgets),
            jnp.asarray(tolerance, dtype=jnp.float64),
            jnp.asarray(max_iterations, dtype=jnp.int64),
        )
        y_host = np.asarray(y, dtype=np.float64)[:n_assets]
        iterations_host = int(iterations)
        psd_host = bool(positive_semidefinite)

    if not psd_host:
        raise InvalidInputError.for_field(
            COVARIANCE_FIELD, "is not positive semidefinite (Cholesky factorisation failed)"
        )
    if not (np.all(np.isfinite(y_host)) and np.all(y_host > 0.0)):
        raise _no_risk_budgeting_portfolio("the solve produced non-finite or non-positive weights")
    weights = y_host / y_host.sum()
    contributions = risk_contributions(weights, sigma)
    error = float(np.max(np.abs(contributions / target - 1.0)))
    if not np.isfinite(error):
        raise _no_risk_budgeting_portfolio("the solve produced a portfolio with zero variance")
    if error > max(tolerance, FAILURE_ERROR) and iterations_host < max_iterations:
        raise _no_risk_budgeting_portfolio(
            f"the solve stalled after {iterations_host} Newton iterations with a relative risk-contribution "
            f"error of {error:.3g}"
        )
    return RiskParityResult(
        weights=weights,
        risk_contributions=contributions,
        iterations=iterations_host,
        converged=error <= tolerance,
        max_relative_rc_error=error,
        solve_time_ms=(time.perf_counter() - started) * 1e3,
    )


def _no_risk_budgeting_portfolio(what: str) -> InfeasibleError:
    """FAILED_PRECONDITION for a covariance under which some long-only portfolio has zero variance."""
    description = (
        f"no risk-budgeting portfolio exists: {what}; the covariance admits a long-only portfolio with zero "
        "variance (e.g. a singular sample covariance from fewer observations than strategies: use a shrinkage "
        "estimator such as LEDOIT_WOLF, or a longer window)"
    )
    return InfeasibleError(
        description, precondition_violations=(PreconditionViolation("SINGULAR_COVARIANCE", "covariance", description),)
    )


def bucket_size(n_assets: int) -> int:
    """The padded size the JAX solver is compiled for: the smallest 2^k or 3·2^k at or above N.

    At most 1.5 N (a Cholesky costs at most 3.4 times the unpadded one), and only about two compiled sizes per
    doubling of N instead of one per N.
    """
    for size in _BUCKETS:
        if size >= n_assets:
            return int(size)
    return n_assets


_BUCKETS: Final = sorted({2**k for k in range(1, 13)} | {3 * 2**k for k in range(12)})


def warm_up(n_assets: int) -> float:
    """Compile the JAX solver for N strategies ahead of the first request of that size.

    Runs :func:`risk_budgeting` on the N×N identity (a diagonal covariance: solved at the starting point, so the
    time is almost all tracing and XLA compilation). Later calls with the same N in this process, thread or
    not, reuse the compiled executable.

    Parameters
    ----------
    n_assets : int
        N, at least 1.

    Returns
    -------
    float
        Wall time spent (seconds).

    Raises
    ------
    InvalidInputError
        Naming ``n_assets`` when it is below 1.
    """
    if n_assets < 1:
        raise InvalidInputError.for_field("n_assets", f"must be at least 1, got {n_assets}")
    started = time.perf_counter()
    risk_budgeting(np.eye(bucket_size(n_assets)))
    return time.perf_counter() - started


def _validate_covariance(covariance: FloatArray) -> None:
    """Check shape, finiteness, symmetry and the variances (positive semidefiniteness is checked in the solve)."""
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1] or covariance.shape[0] == 0:
        raise InvalidInputError.for_field(
            COVARIANCE_FIELD, f"must be a non-empty square matrix, got shape {covariance.shape}"
        )
    if not np.isfinite(covariance).all():
        i, j = np.argwhere(~np.isfinite(covariance))[0]
        raise InvalidInputError.for_field(f"{COVARIANCE_FIELD}[{i}, {j}]", "must be finite")
    variances = np.diag(covariance)
    if np.any(variances <= 0.0):
        idx = int(np.flatnonzero(variances <= 0.0)[0])
        raise InvalidInputError.for_field(
            f"{COVARIANCE_FIELD}[{idx}, {idx}]",
            f"has variance {variances[idx]:g}; risk budgeting needs every strategy to have positive variance",
        )
    asymmetry = np.abs(covariance - covariance.T)
    scale = float(np.max(np.abs(covariance)))
    if float(asymmetry.max()) > _SYMMETRY_TOLERANCE * scale:
        i, j = np.unravel_index(int(np.argmax(asymmetry)), asymmetry.shape)
        raise InvalidInputError.for_field(COVARIANCE_FIELD, f"is not symmetric: entry ({i},{j}) differs from ({j},{i})")


def _normalised_budgets(budgets: ArrayLike | None, n_assets: int) -> FloatArray:
    """Budgets scaled to sum 1 (1/N each when None), after checking they are positive and finite."""
    if budgets is None:
        return np.full(n_assets, 1.0 / n_assets)
    values = np.asarray(budgets, dtype=np.float64)
    if values.shape != (n_assets,):
        raise InvalidInputError.for_field(BUDGETS_FIELD, f"has shape {values.shape}; expected ({n_assets},)")
    invalid = np.flatnonzero(~(np.isfinite(values) & (values > 0.0)))
    if invalid.size:
        idx = int(invalid[0])
        raise InvalidInputError.for_field(
            f"{BUDGETS_FIELD}[{idx}]", f"is {values[idx]:g}; risk budgets must be positive and finite"
        )
    total = values.sum()
    if not np.isfinite(total):
        raise InvalidInputError.for_field(BUDGETS_FIELD, "sum overflows; scale the budgets down")
    normalised: FloatArray = values / total
    return normalised


@jax.jit
def _newton_solve(
    covariance: jax.Array, budgets: jax.Array, tolerance: jax.Array, max_iterations: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Newton minimisation of ½ yᵀΣy − bᵀ log y with backtracking; returns (y, iterations, Σ is PSD)."""
    n_assets = covariance.shape[0]
    sigma = covariance / jnp.mean(jnp.diag(covariance))
    identity = jnp.eye(n_assets, dtype=sigma.dtype)
    psd_factor = jnp.linalg.cholesky(sigma + _PSD_TOLERANCE * jnp.max(jnp.abs(sigma)) * identity)
    positive_semidefinite = jnp.all(jnp.isfinite(psd_factor))

    def objective(y: jax.Array) -> jax.Array:
        return 0.5 * (y @ (sigma @ y)) - budgets @ jnp.log(y)

    def relative_error(y: jax.Array) -> jax.Array:
        contributions = y * (sigma @ y)
        return jnp.max(jnp.abs(contributions / (jnp.sum(contributions) * budgets) - 1.0))

    start = jnp.sqrt(budgets / jnp.diag(sigma))
    start = start / jnp.sqrt(start @ sigma @ start)

    def keep_going(state: tuple[jax.Array, jax.Array, jax.Array, jax.Array]) -> jax.Array:
        iteration, _, error, stalled = state
        return (iteration < max_iterations) & (error > tolerance) & ~stalled

    def newton_step(
        state: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        iteration, y, error, _ = state
        marginal = sigma @ y
        gradient = marginal - budgets / y
        hessian = sigma + jnp.diag(budgets / (y * y))
        direction = -jsl.cho_solve(jsl.cho_factor(hessian, lower=True), gradient)
        slope = gradient @ direction  # −λ², negative unless at the solution
        value = 0.5 * (y @ marginal) - budgets @ jnp.log(y)
        # Within the quadratic-convergence region the model is exact to ~SMALL_STEP relative and the decrease
        # of f may be below its rounding: take the full step there without the Armijo test.
        local = jnp.max(jnp.abs(direction) / y) <= SMALL_STEP

        def rejected(search: tuple[jax.Array, jax.Array]) -> jax.Array:
            step, trials = search
            candidate = y + step * direction
            positive = jnp.all(candidate > 0.0)
            armijo = objective(jnp.where(positive, candidate, y)) <= value + ARMIJO_FRACTION * step * slope
            return ~(positive & (armijo | local)) & (trials < MAX_BACKTRACKS)

        def halve(search: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            step, trials = search
            return step * BACKTRACK_FACTOR, trials + 1

        step, trials = jax.lax.while_loop(rejected, halve, (jnp.ones((), dtype=y.dtype), jnp.zeros((), jnp.int32)))
        candidate = y + step * direction
        candidate_error = relative_error(candidate)
        # A local full step that does not lower the error has reached the floating-point floor; an exhausted
        # line search (or a failed factorisation: NaN) cannot make progress either. Stop at the better iterate.
        stalled = (local & ~(candidate_error < error)) | (trials >= MAX_BACKTRACKS) | ~jnp.isfinite(candidate_error)
        return (
            iteration + 1,
            jnp.where(stalled, y, candidate),
            jnp.where(stalled, error, candidate_error),
            stalled,
        )

    initial = (jnp.zeros((), dtype=max_iterations.dtype), start, relative_error(start), jnp.array(False))
    iterations, y, _, _ = jax.lax.while_loop(keep_going, newton_step, initial)
    return y, iterations, positive_semidefinite
