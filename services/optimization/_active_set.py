"""Exact active-set solvers for mean-variance under a budget and per-name bounds (the engine's fast path).

The problems
------------
With w the weights (N,), Σ the covariance (N, N, symmetric positive definite), μ the expected returns (N,) and
finite bounds l ≤ u (l may be negative):

- the parametric QP  minimise ½ wᵀΣw − λ μᵀw  subject to 1ᵀw = 1, l ≤ w ≤ u  (λ ≥ 0): λ = 0 is the minimum
  volatility portfolio, λ = 1/δ the maximum of the quadratic utility μᵀw − δ/2 wᵀΣw (the same minimiser after
  dividing by δ);
- the maximum Sharpe ratio (μᵀw − r_f) / sqrt(wᵀΣw) under the same constraints (the tangency portfolio of the
  constrained frontier).

Method
------
Fix a partition of the names into those at their lower bound, at their upper bound and free (F). With the fixed
names at their bounds, the stationarity rows of the free names and the budget are a linear system solved with
one Cholesky factorisation of Σ_FF (LAPACK ``dpotrf``/``dpotrs``). Its solution is affine in λ,

    w(λ) = a + λ b,  ν(λ) = ν₀ + λ ν₁  (ν the budget multiplier),

and so are the bound multipliers g(λ) = Σw(λ) − λμ + ν(λ)1 of the fixed names (g ≥ 0 at a lower bound, g ≤ 0 at
an upper bound, g = 0 on F: the KKT conditions). This is the "critical line" of Markowitz (1956) on which the
critical line algorithm walks (Bailey & López de Prado, 2013).

- The QP at a given λ is solved by the primal-dual active-set method (semismooth Newton) of Hintermüller, Ito &
  Kunisch (2002, SIAM J. Optim. 13(3)): from the current iterate the next partition is read off the complementarity
  function g − c·(w − l) > 0 (lower), g − c·(w − u) < 0 (upper). It typically settles in 5-10 partitions, the free
  set shrinking at each; partitions close to an earlier one are solved through a Schur complement of its Cholesky
  factor (Gill, Murray, Saunders & Wright, 1990) instead of a new factorisation. If the number of infeasible names
  stops decreasing, single pivots take over (Júdice & Pires, 1994); if it still does not settle within its cap, a
  primal active-set method (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 16.3) takes over from
  the projection of the last iterate onto the feasible set; it decreases the objective monotonically and
  terminates finitely (also capped). Free sets of ``ROUGH_MIN_SIZE`` names or more (the first partitions at large
  N, where all names start free) are solved in single precision, as proposals of the next partition only; the
  partition the iteration settles on is solved in double precision (iterative refinement on the single-precision
  factor, or a new factorisation), so at N = 2000 the whole solve costs less than one double-precision Cholesky
  factorisation of Σ.
- Maximum Sharpe: on a partition's critical line the Sharpe ratio is maximal where λ·(μᵀw(λ) − r_f) = w(λ)ᵀΣw(λ).
  The gradient of the Sharpe ratio is a positive multiple of −(Σw − λ(μ − r_f1)) with λ = wᵀΣw / (μᵀw − r_f), so
  its KKT conditions are those of the QP at that λ (the r_f1 term goes into the budget multiplier). With a, b as
  above, 1ᵀb = 0 and bᵀΣb = μᵀb, so the condition is linear in λ: λ* = aᵀΣa / ((μ − r_f)ᵀa − 2 aᵀΣb). The same
  primal-dual iteration with λ = λ* on each partition (semismooth Newton on the homogenised problem of Cornuejols &
  Tütüncü, 2007, §8.2) usually finds the tangency directly; otherwise a bracketed search on λ walks the critical
  lines: h(λ) = λ(μᵀw(λ) − r_f) − w(λ)ᵀΣw(λ) is continuous, negative at λ = 0 and has one root (the Sharpe ratio is
  pseudo-concave, so its maximiser is unique for positive definite Σ), and h is linear on each critical line, whose
  root is the next λ.

Every answer is certified before it is returned: the weights must satisfy the bounds and the budget and there
must exist a budget multiplier ν with |g_i + ν| small on the free names and the right sign at the bounds
(``kkt_holds``; tolerances relative to the size of the terms, ``KKT_RTOL``). Anything else (a Cholesky failure or
an ill-conditioned free block, an iteration cap, a failed certificate) returns None, and the caller solves the
problem with the conic solver instead (the next backend of ``_dispatch``).

Why one long module: the primal-dual and primal active-set iterations, the Schur-complement and mixed-precision
factor updates and the KKT certificate share one private problem object whose invariants (the factor matches the
free set) would leak across module boundaries if split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack

from services.optimization._constraints import Bounds, Budget, Constraint
from services.optimization._metrics import covariance_times, quadratic_form
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult
from services.types import FloatArray

if TYPE_CHECKING:
    from collections.abc import Callable

SOLVE_PATH = "ACTIVE_SET"
"""``OptimizationResult.solve_path`` (and ``solver``) of an answer of this module."""
KKT_RTOL = 1e-10
"""Relative tolerance of the final KKT certificate (stationarity and multiplier signs relative to
max(diag Σ)·‖w‖₁ + λ‖μ‖∞ + |ν|, bounds and budget relative to max(1, |bound|))."""
RCOND_MIN = 1e-12
"""Smallest reciprocal condition number (1-norm, LAPACK ``dpocon``) of a free block Σ_FF accepted; below it the
problem goes to the conic solver."""
SCHUR_MIN_SIZE = 96
"""Smallest base free set updated through Schur complements (below it a new Cholesky is as cheap)."""
ROUGH_MIN_SIZE = 768
"""Free sets of at least this size are solved in single precision (LAPACK ``spotrf``, about twice as fast) while
the primal-dual iteration is still looking for the partition: those solves only propose the next partition. The
partition it settles on is solved again in double precision (by iterative refinement on the single-precision
factor, Wilkinson's mixed-precision refinement, or a new double-precision factorisation if that does not converge
within ``MAX_REFINEMENTS`` steps), and the answer certified, before it is accepted."""
MAX_REFINEMENTS = 8
MAX_PDAS_ITERATIONS = 40
"""Partitions of the primal-dual active-set iteration before the primal method takes over."""
PDAS_STRIKES = 3
"""Block updates without fewer infeasible names before the single-pivot safeguard."""
MAX_PRIMAL_ITERATIONS = 400
"""Factorisations of the primal active-set method before giving up (returning None)."""
MAX_SHARPE_SEARCH = 60
"""QP solves of the bracketed search on λ of the maximum Sharpe ratio before giving up."""
SCREEN_MIN_SIZE = 512
"""Problems of at least this many names are first solved on a working set of names (``_screened``)."""
SCREEN_START = 64
"""Names of the first working set, and most names one round of ``_screened`` adds."""
SCREEN_MAX = 256
"""Largest working set ``_screened`` grows to before it leaves the problem to the whole-problem iteration."""
_TIE = 1e-14
"""Relative slack of the active-set updates, so that round-off does not flip a name at its bound."""

IntArray = NDArray[np.int8]

ELIGIBLE_OBJECTIVES = frozenset({Objective.MIN_VOLATILITY, Objective.MAX_SHARPE, Objective.MAX_QUADRATIC_UTILITY})


@dataclass(frozen=True, slots=True)
class ActiveSetSolution:
    """A certified solution of the fast path.

    Attributes
    ----------
    weights : ndarray of shape (N,)
        Optimal weights (fractions), within the bounds and summing to 1 to ``KKT_RTOL``.
    risk_tolerance : float
        λ of the QP the weights solve (for the maximum Sharpe ratio, wᵀΣw / (μᵀw − r_f)).
    iterations : int
        Active-set iterations: partitions whose linear system was solved (a Cholesky factorisation of the free
        block or a Schur-complement update of an earlier one).
    method : str
        ``PDAS`` (primal-dual active set), ``PRIMAL`` (primal active set) or ``SHARPE_SEARCH`` (bracketed search
        on λ over critical lines); ``SCREENED_`` before it when that method solved a working set of the names
        (``_screened``, at or above ``SCREEN_MIN_SIZE`` names).
    """

    weights: FloatArray
    risk_tolerance: float
    iterations: int
    method: str


@dataclass(frozen=True, slots=True)
class _Line:
    """The critical line of one partition: w(λ) = a + λ b with multipliers g(λ) = g0 + λ g1 (0 on the free set)."""

    rough: bool
    """Solved in single precision: a proposal of the next partition, not an answer."""
    free: NDArray[np.intp]
    a: FloatArray
    b: FloatArray
    nu0: float
    nu1: float
    g0: FloatArray
    g1: FloatArray
    a_sigma_a: float
    a_sigma_b: float

    def weights(self, lam: float) -> FloatArray:
        return self.a + lam * self.b

    def multipliers(self, lam: float) -> FloatArray:
        return self.g0 + lam * self.g1


@dataclass(frozen=True, slots=True)
class _Factor:
    """Upper Cholesky factor C (CᵀC = Σ_FF) of one free set, reused by later partitions through Schur complements."""

    free: NDArray[np.intp]
    factor: FloatArray
    position: NDArray[np.intp]
    """(N,) position of each name in ``free``, −1 when not in it."""


@dataclass(slots=True)
class _Problem:
    """Data of one box-and-budget problem, the scales of its tolerances and the current base factorisation."""

    sigma: FloatArray
    mu: FloatArray
    lower: FloatArray
    upper: FloatArray
    pinned: NDArray[np.bool_]
    """l_i = u_i: always fixed (at the lower bound, which equals the upper)."""
    diag_max: float
    mu_max: float
    coupling: float
    """c of the complementarity function, in Σ's units (the mean variance)."""
    factorisations: int = 0
    """Active-set iterations: partitions whose linear system was solved (a Cholesky or a Schur update)."""
    base: _Factor | None = None
    rough: bool = True
    """Whether large free sets may still be solved in single precision (``ROUGH_MIN_SIZE``)."""
    sigma32: NDArray[np.float32] | None = None
    rough_factor: tuple[NDArray[np.intp], NDArray[np.float32]] | None = None
    """The free set and single-precision Cholesky factor of the last rough solve."""

    @classmethod
    def of(cls, sigma: FloatArray, mu: FloatArray, lower: FloatArray, upper: FloatArray) -> _Problem:
        diag = np.diag(sigma)
        return cls(
            sigma=sigma,
            mu=mu,
            lower=lower,
            upper=upper,
            pinned=upper - lower <= 0.0,
            diag_max=float(diag.max()),
            mu_max=float(np.abs(mu).max()),
            coupling=float(diag.mean()),
        )

    def seed(self, cholesky: FloatArray | None) -> None:
        """Take the caller's upper Cholesky factor C of the whole Σ (CᵀC = Σ) as the base factorisation.

        The first partition (every name free) is then solved exactly with C, neither factorised again nor solved
        in single precision. Below ``ROUGH_MIN_SIZE`` the factor must pass the ``dpocon`` test of a new one
        (``RCOND_MIN``); at or above it the whole Σ is never condition-tested either way (today's path solves it
        in single precision and refines), and the estimate would cost a third of the factorisation saved. A
        factor of the wrong shape is ignored.
        """
        n = self.mu.size
        if cholesky is None or cholesky.shape != (n, n):
            return
        factor = np.asarray(cholesky, dtype=np.float64)
        if n < ROUGH_MIN_SIZE:
            rcond, info = lapack.dpocon(factor, float(np.abs(self.sigma).sum(axis=0).max()))
            if info != 0 or not float(rcond) >= RCOND_MIN:
                return
        every = np.arange(n)
        self.base = _Factor(free=every, factor=factor, position=every)

    def _exact_base(self, free: NDArray[np.intp]) -> bool:
        """Whether the base factorisation is of exactly this free set (its solve is then two triangular solves)."""
        base = self.base
        return base is not None and base.free.size == free.size and bool(np.array_equal(base.free, free))

    def line(self, state: IntArray) -> _Line | None:
        """The critical line of the partition ``state`` (−1 lower, +1 upper, 0 free); None if Σ_FF is not usable.

        Cost: a Cholesky of Σ_FF (|F|³/3 flops) or a Schur-complement update of the previous one, a solve with
        three right-hand sides, and products with the |F| free rows of Σ and the rows of the names fixed at a
        non-zero bound.
        """
        n = state.size
        free = np.flatnonzero(state == 0)
        if free.size == 0:
            return None
        fixed = np.where(state < 0, self.lower, np.where(state > 0, self.upper, 0.0))
        fixed[free] = 0.0
        nonzero = np.flatnonzero(fixed)
        # Σ is symmetric: Σ·fixed = Σ[nz]ᵀ fixed[nz] over the contiguous rows of the names at a non-zero bound.
        if 2 * nonzero.size > n:
            sigma_fixed = self.sigma @ fixed
        else:
            sigma_fixed = fixed[nonzero] @ self.sigma[nonzero] if nonzero.size else np.zeros(n)
        rhs = np.column_stack((self.mu[free], np.ones(free.size), sigma_fixed[free]))
        self.factorisations += 1
        rough = self.rough and free.size >= ROUGH_MIN_SIZE and not self._exact_base(free)
        solved = self._solve_rough(free, rhs) if rough else self._solve(free, rhs)
        if solved is None or not np.all(np.isfinite(solved)):
            return None
        p, q, s = solved[:, 0], solved[:, 1], solved[:, 2]
        # Free rows: Σ_FF w_F = λ μ_F − Σ_FA w_A − ν 1; budget 1ᵀw_F = 1 − 1ᵀw_A.
        sum_q = float(q.sum())
        if not sum_q > 0.0:
            return None
        nu1 = float(p.sum()) / sum_q
        nu0 = -(float(s.sum()) + 1.0 - float(fixed.sum())) / sum_q
        a_free = -s - nu0 * q
        b_free = p - nu1 * q
        a = fixed.copy()
        a[free] = a_free
        b = np.zeros(n)
        b[free] = b_free
        if 2 * free.size > n:  # one pass over Σ
            products = (self.sigma @ np.column_stack((a - fixed, b))).T
        else:  # Σ[:, F]·x = (xᵀ Σ[F])ᵀ over the free rows
            products = np.vstack((a_free, b_free)) @ self.sigma[free]
        sigma_a = sigma_fixed + products[0]
        sigma_b = products[1]
        g0 = sigma_a + nu0
        g1 = sigma_b - self.mu + nu1
        g0[free] = 0.0
        g1[free] = 0.0
        return _Line(
            rough=rough,
            free=free,
            a=a,
            b=b,
            nu0=nu0,
            nu1=nu1,
            g0=g0,
            g1=g1,
            a_sigma_a=float(a @ sigma_a),
            a_sigma_b=float(a @ sigma_b),
        )

    def _solve_rough(self, free: NDArray[np.intp], rhs: FloatArray) -> FloatArray | None:
        """Σ_FF⁻¹ rhs in single precision (a proposal only); falls back to ``_solve`` if ``spotrf`` fails."""
        if self.sigma32 is None:
            self.sigma32 = self.sigma.astype(np.float32)
        whole = free.size == self.mu.size
        block = self.sigma32 if whole else self.sigma32[np.ix_(free, free)]
        factor, info = lapack.spotrf(block.T, lower=0, clean=0, overwrite_a=0 if whole else 1)
        if info != 0:
            return self._solve(free, rhs)
        solved, info = lapack.spotrs(factor, rhs.astype(np.float32), lower=0)
        if info != 0:
            return self._solve(free, rhs)
        self.rough_factor = (free, np.asarray(factor, dtype=np.float32))
        return np.asarray(solved, dtype=np.float64)

    def _refine(self, free: NDArray[np.intp], factor: NDArray[np.float32], rhs: FloatArray) -> FloatArray | None:
        """Σ_FF⁻¹ rhs to double precision by iterative refinement on a single-precision factor, or None.

        Residuals in double precision, corrections with the single-precision factor; converges when
        cond(Σ_FF)·2⁻²⁴ < 1. Accepted once every residual is within 32 ε (max diag Σ ‖x‖₁ + ‖rhs‖∞) per column.
        """
        n = self.mu.size
        x = np.zeros_like(rhs)
        residual = rhs
        embedded = np.zeros((n, rhs.shape[1]))
        bound = 32.0 * np.finfo(np.float64).eps
        for _ in range(MAX_REFINEMENTS):
            step, info = lapack.spotrs(factor, residual.astype(np.float32), lower=0)
            if info != 0:
                return None
            x = x + np.asarray(step, dtype=np.float64)
            embedded[free] = x
            residual = rhs - (self.sigma @ embedded)[free]
            size = self.diag_max * np.abs(x).sum(axis=0) + np.abs(rhs).max(axis=0)
            if not np.all(np.isfinite(residual)):
                return None
            if np.all(np.abs(residual).max(axis=0) <= bound * size):
                return x
        return None

    def _factorise(self, free: NDArray[np.intp]) -> _Factor | None:
        """Cholesky of Σ_FF (LAPACK ``dpotrf``); None if it fails or its ``dpocon`` estimate is below RCOND_MIN."""
        whole = free.size == self.mu.size
        block = self.sigma if whole else self.sigma[np.ix_(free, free)]
        norm1 = float(np.abs(block).sum(axis=0).max())
        # Σ_FF is symmetric, so its transpose is the Fortran-ordered array LAPACK wants (no further copy).
        factor, info = lapack.dpotrf(block.T, lower=0, clean=0, overwrite_a=0 if whole else 1)
        if info != 0:
            return None
        rcond, info = lapack.dpocon(factor, norm1)
        if info != 0 or not float(rcond) >= RCOND_MIN:
            return None
        position = np.full(self.mu.size, -1, dtype=np.intp)
        position[free] = np.arange(free.size)
        return _Factor(free=free, factor=np.asarray(factor, dtype=np.float64), position=position)

    def _solve(self, free: NDArray[np.intp], rhs: FloatArray) -> FloatArray | None:
        """Σ_FF⁻¹ rhs, through a Schur complement of the base factorisation or a new Cholesky factorisation.

        The Schur complement is used when few names changed since the base and it is cheaper; a new factorisation
        becomes the base.

        The update (the Schur-complement method of active-set QP, Gill, Murray, Saunders & Wright 1990) solves on
        F₀ ∪ A with x_R = 0 for the names R that left the base free set F₀ and A that joined it: with
        U = [Σ_{F₀A}, E_R], K = Σ_{F₀F₀}⁻¹U, z = Σ_{F₀F₀}⁻¹r₀ and M = diag(Σ_AA, 0) − UᵀK (k × k, k = |A| + |R|),
        v = M⁻¹([r_A; 0] − Uᵀz) and x₀ = z − Kv. Cost 2|F₀|²k + |F₀|k² flops against |F|³/3 for a new Cholesky.
        """
        rough = self.rough_factor
        if rough is not None and np.array_equal(rough[0], free):
            refined = self._refine(free, rough[1], rhs)
            if refined is not None:
                return refined
        base = self.base
        m = free.size
        if base is not None:
            positions = base.position[free]
            in_base = positions >= 0
            added = free[~in_base]
            kept = np.zeros(base.free.size, dtype=bool)
            kept[positions[in_base]] = True
            removed = np.flatnonzero(~kept)
            k = added.size + removed.size
            m0 = base.free.size
            if k == 0:
                return _potrs(base.factor, rhs)
            if m0 >= SCHUR_MIN_SIZE and 2.0 * m0 * m0 * k + m0 * k * k < m**3 / 3.0:
                return self._schur(base, rhs, positions, in_base, added, removed)
        fresh = self._factorise(free)
        if fresh is None:
            return None
        self.base = fresh
        return _potrs(fresh.factor, rhs)

    def _schur(
        self,
        base: _Factor,
        rhs: FloatArray,
        positions: NDArray[np.intp],
        in_base: NDArray[np.bool_],
        added: NDArray[np.intp],
        removed: NDArray[np.intp],
    ) -> FloatArray | None:
        m0, n_added = base.free.size, added.size
        k = n_added + removed.size
        border = np.zeros((m0, k))
        if n_added:
            border[:, :n_added] = self.sigma[added][:, base.free].T
        border[removed, n_added + np.arange(removed.size)] = 1.0
        r0 = np.zeros((m0, rhs.shape[1]))
        r0[positions[in_base]] = rhs[in_base]
        kz = _potrs(base.factor, np.hstack((border, r0)))
        if kz is None:
            return None
        K, z = kz[:, :k], kz[:, k:]
        schur = -(border.T @ K)
        if n_added:
            schur[:n_added, :n_added] += self.sigma[np.ix_(added, added)]
        schur = 0.5 * (schur + schur.T)
        right = -(border.T @ z)
        right[:n_added] += rhs[~in_base]
        try:
            v = np.linalg.solve(schur, right)
        except np.linalg.LinAlgError:
            return None
        x0 = z - K @ v
        out = np.empty_like(rhs)
        out[in_base] = x0[positions[in_base]]
        out[~in_base] = v[:n_added]
        return out

    def gradient_scale(self, weights: FloatArray, lam: float) -> float:
        """max(diag Σ)·‖w‖₁ + λ‖μ‖∞: bounds |Σw − λμ| entrywise (|Σ_ij| ≤ max diag Σ for PSD Σ)."""
        return self.diag_max * float(np.abs(weights).sum()) + abs(lam) * self.mu_max

    def next_state(self, weights: FloatArray, multipliers: FloatArray, lam: float) -> tuple[IntArray, bool]:
        """The primal-dual active-set update: lower where g − c(w − l) > 0, upper where g − c(w − u) < 0.

        The budget needs a free name: if every name would be fixed, the one at the bound on the side of the
        budget's excess (an upper bound if the fixed weights sum above 1) that is nearest to staying free stays
        free, and the flag returned is True (the partition is then not a certified fixed point).
        """
        slack = _TIE * self.gradient_scale(weights, lam)
        c = self.coupling
        to_lower = multipliers - c * (weights - self.lower)
        to_upper = c * (weights - self.upper) - multipliers
        state = np.zeros(weights.size, dtype=np.int8)
        state[to_upper > slack] = 1
        state[to_lower > slack] = -1
        state[self.pinned] = -1
        if np.any(state == 0):
            return state, False
        excess = float(np.where(state > 0, self.upper, self.lower).sum()) - 1.0
        side = (state > 0) if excess > 0.0 else (state < 0) & ~self.pinned
        margin = np.where(side, np.where(state > 0, to_upper, to_lower), np.inf)
        if not np.isfinite(margin).any():
            margin = np.where(self.pinned, np.inf, np.maximum(to_lower, to_upper))
        state[int(np.argmin(margin))] = 0
        return state, True


def _potrs(factor: FloatArray, rhs: FloatArray) -> FloatArray | None:
    solved, info = lapack.dpotrs(factor, rhs, lower=0)
    if info != 0:
        return None
    return np.asarray(solved, dtype=np.float64)


def project(point: FloatArray, lower: FloatArray, upper: FloatArray) -> FloatArray:
    """Euclidean projection onto {w : 1ᵀw = 1, l ≤ w ≤ u} (Σl ≤ 1 ≤ Σu).

    The projection is clip(z − τ, l, u) with the τ at which it sums to 1; τ is bracketed by bisection on the
    breakpoints and then solved exactly on the free set of the bracket.

    Parameters
    ----------
    point : ndarray of shape (N,)
        z.
    lower, upper : ndarray of shape (N,)
        Finite bounds.

    Returns
    -------
    ndarray of shape (N,)
        The projection.
    """
    breakpoints = np.sort(np.concatenate((point - upper, point - lower)))

    def total(tau: float) -> float:
        return float(np.clip(point - tau, lower, upper).sum())

    lo, hi = 0, breakpoints.size - 1  # total(breakpoints[lo]) ≥ 1 ≥ total(breakpoints[hi])
    if total(float(breakpoints[lo])) < 1.0:
        return np.clip(point - float(breakpoints[lo]), lower, upper)
    if total(float(breakpoints[hi])) > 1.0:
        return np.clip(point - float(breakpoints[hi]), lower, upper)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total(float(breakpoints[mid])) >= 1.0:
            lo = mid
        else:
            hi = mid
    tau_lo, tau_hi = float(breakpoints[lo]), float(breakpoints[hi])
    mid_tau = 0.5 * (tau_lo + tau_hi)
    shifted = point - mid_tau
    free = (shifted > lower) & (shifted < upper)
    if free.any():
        fixed = np.where(shifted <= lower, lower, upper)
        tau = (float(point[free].sum()) - (1.0 - float(fixed[~free].sum()))) / int(free.sum())
        tau = min(max(tau, tau_lo), tau_hi)
    else:
        tau = mid_tau
    return np.clip(point - tau, lower, upper)


def kkt_holds(
    covariance: FloatArray,
    expected_returns: FloatArray,
    risk_tolerance: float,
    lower: FloatArray,
    upper: FloatArray,
    weights: FloatArray,
    *,
    rtol: float = KKT_RTOL,
) -> bool:
    """Whether ``weights`` satisfy the KKT conditions of min ½wᵀΣw − λμᵀw s.t. 1ᵀw = 1, l ≤ w ≤ u.

    Sufficient for optimality (convex QP). Checks the bounds and the budget, and that some budget multiplier ν
    makes g = Σw − λμ + ν1 vanish on the names strictly inside their bounds, non-negative at lower bounds and
    non-positive at upper bounds, all to ``rtol`` relative to the size of the terms.

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Σ.
    expected_returns : ndarray of shape (N,)
        μ.
    risk_tolerance : float
        λ.
    lower, upper : ndarray of shape (N,)
        Bounds.
    weights : ndarray of shape (N,)
        The candidate.
    rtol : float
        Relative tolerance.

    Returns
    -------
    bool
        True when every condition holds.
    """
    w = weights
    if not np.all(np.isfinite(w)):
        return False
    span = np.maximum(1.0, np.maximum(np.abs(lower), np.abs(upper)))
    tol_w = rtol * span
    if np.any(w < lower - tol_w) or np.any(w > upper + tol_w):
        return False
    l1 = float(np.abs(w).sum())
    if abs(float(w.sum()) - 1.0) > rtol * max(1.0, l1):
        return False
    g = covariance_times(covariance, w) - risk_tolerance * expected_returns
    scale = float(np.diag(covariance).max()) * l1 + abs(risk_tolerance) * float(np.abs(expected_returns).max())
    at_lower = w <= lower + tol_w
    at_upper = w >= upper - tol_w
    # ν ≥ −g_i − tol where g_i + ν ≥ 0 is required (free, lower), ν ≤ −g_i + tol where g_i + ν ≤ 0 (free, upper).
    needs_low = ~at_upper
    needs_high = ~at_lower
    if not needs_low.any() and not needs_high.any():
        return True
    nu_low = float(np.max(-g[needs_low])) if needs_low.any() else -np.inf
    nu_high = float(np.min(-g[needs_high])) if needs_high.any() else np.inf
    nu_size = max((abs(v) for v in (nu_low, nu_high) if np.isfinite(v)), default=0.0)
    return nu_low <= nu_high + 2.0 * rtol * (scale + nu_size)


def _finish(data: _Problem, weights: FloatArray, lam: float, method: str) -> ActiveSetSolution | None:
    """Clip round-off at the bounds and certify (``kkt_holds``); None when the certificate fails."""
    weights = np.clip(weights, data.lower, data.upper)
    if not kkt_holds(data.sigma, data.mu, lam, data.lower, data.upper, weights):
        return None
    return ActiveSetSolution(weights=weights, risk_tolerance=lam, iterations=data.factorisations, method=method)


@dataclass(frozen=True, slots=True)
class _Solved:
    weights: FloatArray
    line: _Line
    state: IntArray
    method: str


@dataclass(frozen=True, slots=True)
class _Attempt:
    """Outcome of the primal-dual active-set iteration: the solution, or where it stopped."""

    solved: _Solved | None
    state: IntArray
    weights: FloatArray | None
    lam: float | None


def _pdas(data: _Problem, state: IntArray, choose: Callable[[_Line], float | None]) -> _Attempt:
    """Primal-dual active-set iteration with λ = ``choose(line)`` on each partition.

    The block update changes every name whose state is infeasible (a free weight outside its bounds, a
    multiplier of the wrong sign). As in the block principal pivoting of Júdice & Pires (1994), when the number
    of infeasible names has not decreased for ``PDAS_STRIKES`` block updates, only the infeasible name of largest
    index changes (Murty's single pivot, finite for positive definite problems) until it does. The budget makes
    the problem no longer a bound-constrained one, for which that is proven, and a tangency λ moves with the
    partition: a partition met again with the same counters is a cycle, and the attempt stops there (the caller
    goes on with a method that cannot cycle) instead of going round it until ``MAX_PDAS_ITERATIONS``.
    """
    weights: FloatArray | None = None
    lam: float | None = None
    best, strikes = state.size + 1, PDAS_STRIKES
    seen: set[tuple[bytes, int, int, bool]] = set()
    for _ in range(MAX_PDAS_ITERATIONS):
        key = (state.tobytes(), best, strikes, data.rough)
        if key in seen:  # each step depends on these alone: it would go round the same partitions again
            return _Attempt(None, state, weights, lam)
        seen.add(key)
        line = data.line(state)
        if line is None:
            return _Attempt(None, state, weights, lam)
        lam = choose(line)
        if lam is None:
            return _Attempt(None, state, weights, lam)
        weights = line.weights(lam)
        following, forced = data.next_state(weights, line.multipliers(lam), lam)
        changed = np.flatnonzero(following != state)
        if changed.size == 0:
            if forced:  # stuck at a partition with an infeasible free name
                return _Attempt(None, state, weights, lam)
            if line.rough:  # settled in single precision: solve this partition again in double precision
                data.rough = False
                continue
            return _Attempt(_Solved(weights, line, state, "PDAS"), state, weights, lam)
        if changed.size < best:
            best, strikes = changed.size, PDAS_STRIKES
        elif strikes > 0:
            strikes -= 1
        else:
            last = int(changed[-1])
            pivot = following[last]
            following = state.copy()
            following[last] = pivot
        state = following
    return _Attempt(None, state, weights, lam)


def _primal(data: _Problem, lam: float, start: FloatArray) -> _Solved | None:
    """Primal active-set method (Nocedal & Wright, Algorithm 16.3) from the projection of ``start``.

    Every iteration solves the equality-constrained QP of the working set; a step that would leave the bounds is
    shortened to the first bound it meets, which joins the working set; at an equality-constrained minimiser the
    bounds with a multiplier of the wrong sign leave it (all at once: the next direction still descends).
    """
    lower, upper = data.lower, data.upper
    data.rough = False  # every step of this method is taken
    x = project(start, lower, upper)
    state = np.zeros(x.size, dtype=np.int8)
    state[x >= upper] = 1
    state[x <= lower] = -1
    state[data.pinned] = -1
    if not np.any(state == 0):
        movable = np.flatnonzero(~data.pinned)
        if movable.size == 0:
            return None
        state[movable[np.argmax((upper - lower)[movable])]] = 0
    for _ in range(MAX_PRIMAL_ITERATIONS):
        line = data.line(state)
        if line is None:
            return None
        target = line.weights(lam)
        free = line.free
        step = target[free] - x[free]
        # Round-off steps (a lone free name is pinned by the budget) do not block.
        step[np.abs(step) <= _TIE * np.maximum(1.0, np.abs(x[free]))] = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(
                step < 0.0, (lower[free] - x[free]) / step, np.where(step > 0.0, (upper[free] - x[free]) / step, np.inf)
            )
        ratios = np.maximum(ratios, 0.0)
        k = int(np.argmin(ratios)) if ratios.size else 0
        if ratios.size and ratios[k] < 1.0:
            x = x.copy()
            x[free] += ratios[k] * step
            j = int(free[k])
            x[j] = lower[j] if step[k] < 0.0 else upper[j]
            state = state.copy()
            state[j] = -1 if step[k] < 0.0 else 1
            if not np.any(state == 0):
                return None
            continue
        x = target
        g = line.multipliers(lam)
        slack = _TIE * data.gradient_scale(x, lam)
        wrong = ((state < 0) & (g < -slack)) | ((state > 0) & (g > slack))
        wrong &= ~data.pinned
        if not wrong.any():
            return _Solved(x, line, state, "PRIMAL")
        state = state.copy()
        state[wrong] = 0
    return None


def _solve_qp(data: _Problem, lam: float, state: IntArray) -> _Solved | None:
    """The QP at λ: primal-dual active set from ``state``, then the primal method from its last iterate."""
    attempt = _pdas(data, state, lambda _line: lam)
    if attempt.solved is not None:
        return attempt.solved
    start = attempt.weights
    if start is None:
        start = np.where(attempt.state < 0, data.lower, np.where(attempt.state > 0, data.upper, 0.0))
    return _primal(data, lam, start)


def _prepare(
    covariance: FloatArray,
    expected_returns: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    cholesky: FloatArray | None = None,
) -> _Problem | None:
    sigma = np.ascontiguousarray(covariance, dtype=np.float64)
    mu = np.asarray(expected_returns, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    n = mu.size
    if sigma.shape != (n, n) or lo.shape != (n,) or hi.shape != (n,) or n == 0:
        return None
    finite = all(bool(np.all(np.isfinite(x))) for x in (sigma, mu, lo, hi))
    if not finite or np.any(lo > hi) or lo.sum() > 1.0 or hi.sum() < 1.0 or float(np.diag(sigma).min()) <= 0.0:
        return None
    data = _Problem.of(sigma, mu, lo, hi)
    data.seed(cholesky)
    return data


def _screened(data: _Problem, risk_free_rate: float | None, lam: float) -> ActiveSetSolution | None:
    """The solution of a large problem found on a small working set of names, certified on the whole, or None.

    Column generation on the bounds (a working set of names grown by the KKT violators left out, as active-set
    methods grow theirs by one constraint a step: Nocedal & Wright, *Numerical Optimization*, 2006, ch. 16), for
    problems whose solution holds few of many names: the names are ranked by the solution of the problem
    with Σ replaced by its diagonal and no bounds (w_i ∝ (μ_i − r_f)/Σ_ii for the maximum Sharpe ratio,
    (ν + λμ_i)/Σ_ii with the budget's ν for the QP at λ); the problem restricted to the ``SCREEN_START`` best
    ranked names (with every name of non-zero lower bound, so that each name left out sits at a zero lower bound,
    and enough names for the budget under the upper bounds) is solved exactly; a name left out whose multiplier at
    its lower bound has the wrong sign (its KKT condition fails) joins the working set, the worst ``SCREEN_START``
    a round, and the restricted problem is solved again. When no name left out violates its condition, the
    weights (zero outside the working set) are certified by the KKT conditions of the whole problem
    (``kkt_holds``), which make them its optimum. Cost per round: a solve on |S| names and an N × |S| product,
    against Cholesky factorisations of free sets of hundreds of names for the whole-problem iteration.

    ``risk_free_rate`` None: the QP at the fixed λ ``lam`` (``solve_qp``); a float: the maximum Sharpe ratio
    (``lam`` unused). None is returned (the caller solves the whole problem) below ``SCREEN_MIN_SIZE`` names,
    with more than ``SCREEN_START`` non-zero lower bounds, when a restricted problem has no certified answer, when
    the working set would exceed ``SCREEN_MAX`` names, or when the whole problem's certificate fails.
    """
    n = data.mu.size
    if n < SCREEN_MIN_SIZE:
        return None
    required = np.flatnonzero(data.lower != 0.0)
    if required.size > SCREEN_START:
        return None
    diag = np.diag(data.sigma)
    if risk_free_rate is None:
        nu = (1.0 - lam * float((data.mu / diag).sum())) / float((1.0 / diag).sum())
        score = (nu + lam * data.mu) / diag
    else:
        score = (data.mu - risk_free_rate) / diag
    rank = np.argsort(-score, kind="stable")
    rank = rank[~data.pinned[rank]]  # a pinned name at zero stays out; one at a non-zero value is required
    chosen = np.zeros(n, dtype=bool)
    chosen[required] = True
    chosen[rank[:SCREEN_START]] = True
    covered = float(data.upper[chosen].sum())
    if covered < 1.0:  # the working set must hold a fully invested portfolio: add names in rank order
        extra = rank[~chosen[rank]]
        reach = int(np.searchsorted(np.cumsum(data.upper[extra]), 1.0 - covered)) + 1
        chosen[extra[:reach]] = True
    iterations = 0
    while True:
        working = np.flatnonzero(chosen)
        if working.size > SCREEN_MAX:
            return None
        block = data.sigma[np.ix_(working, working)]
        mu, lower, upper = data.mu[working], data.lower[working], data.upper[working]
        if risk_free_rate is None:
            sub = solve_qp(block, mu, lower, upper, lam)
        else:
            sub = solve_max_sharpe(block, mu, lower, upper, risk_free_rate)
        if sub is None:
            return None
        iterations += sub.iterations
        weights = np.zeros(n)
        weights[working] = sub.weights
        sub_lam = sub.risk_tolerance
        # Multipliers g = Σw − λμ + ν1, ≥ 0 at a lower bound: a name left out violates its condition when
        # λμ_i − (Σw)_i > ν. The working set's names not at their upper bound have g_i ≥ 0 (= 0 when free):
        # ν is the largest of their λμ_i − (Σw)_i.
        reach_nu = sub_lam * data.mu - data.sigma[:, working] @ sub.weights
        below_upper = chosen.copy()
        below_upper[working[sub.weights >= upper - KKT_RTOL * np.maximum(1.0, np.abs(upper))]] = False
        nu = float(reach_nu[below_upper].max()) if below_upper.any() else float(reach_nu[working].min())
        scale = data.diag_max * float(np.abs(weights).sum()) + sub_lam * data.mu_max + abs(nu)
        violation = np.where(chosen | data.pinned, -np.inf, reach_nu - nu)
        violators = np.flatnonzero(violation > KKT_RTOL * scale)
        if violators.size == 0:
            found = _finish(data, weights, sub_lam, f"SCREENED_{sub.method}")
            if found is None:
                return None
            return ActiveSetSolution(found.weights, found.risk_tolerance, iterations, found.method)
        worst = violators[np.argsort(-violation[violators], kind="stable")[:SCREEN_START]]
        chosen[worst] = True


def solve_qp(
    covariance: FloatArray,
    expected_returns: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    risk_tolerance: float = 0.0,
    *,
    cholesky: FloatArray | None = None,
) -> ActiveSetSolution | None:
    """Minimise ½ wᵀΣw − λ μᵀw subject to 1ᵀw = 1 and l ≤ w ≤ u exactly (active set, certified by KKT).

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Σ, symmetric positive definite (annualised variances and covariances).
    expected_returns : ndarray of shape (N,)
        μ (annualised, decimal).
    lower, upper : ndarray of shape (N,)
        Finite weight bounds with l ≤ u and Σl ≤ 1 ≤ Σu; l may be negative (short positions).
    risk_tolerance : float
        λ ≥ 0: 0 for the minimum variance portfolio, 1/δ for the quadratic utility μᵀw − δ/2 wᵀΣw.
    cholesky : ndarray of shape (N, N), optional
        Upper Cholesky factor C of Σ (CᵀC = Σ, LAPACK ``dpotrf`` with ``lower=0``), e.g. the one
        ``validate_moments`` returns: the first partition (every name free) is solved with it instead of a new
        factorisation. The answer is certified on Σ whatever the factor.

    Returns
    -------
    ActiveSetSolution or None
        The certified optimum, or None where the method does not apply or did not certify an answer (Σ_FF not
        positive definite or ill-conditioned, iteration caps, failed KKT check): solve with a general solver then.

    Notes
    -----
    Primal-dual active set (Hintermüller, Ito & Kunisch, 2002) started with every name free, i.e. from the
    budget-only solution, with the single-pivot safeguard of Júdice & Pires (1994); then the primal active-set
    method (Nocedal & Wright, 2006, Algorithm 16.3). Cost: one Cholesky factorisation per partition (single
    precision for the first, large ones; Schur-complement updates for small changes to a large free set), and
    O(N·|F|) products per partition. At or above ``SCREEN_MIN_SIZE`` names the problem is first solved on a
    working set of names grown by the KKT violators left out (``_screened``), certified on the whole problem.
    """
    data = _prepare(covariance, expected_returns, lower, upper, cholesky)
    if data is None or not np.isfinite(risk_tolerance) or risk_tolerance < 0.0:
        return None
    state = np.zeros(data.mu.size, dtype=np.int8)
    state[data.pinned] = -1
    if np.all(data.pinned):
        return None
    screened = _screened(data, None, float(risk_tolerance))
    if screened is not None:
        return screened
    solved = _solve_qp(data, float(risk_tolerance), state)
    if solved is None:
        return None
    return _finish(data, solved.weights, float(risk_tolerance), solved.method)


def _tangency(line: _Line, excess: FloatArray) -> float | None:
    """λ* = aᵀΣa / ((μ − r_f)ᵀa − 2aᵀΣb) of a critical line, or None if its Sharpe ratio rises without end."""
    denominator = float(excess @ line.a) - 2.0 * line.a_sigma_b
    if not denominator > 0.0 or not line.a_sigma_a > 0.0:
        return None
    return line.a_sigma_a / denominator


def _line_interval(data: _Problem, line: _Line, state: IntArray) -> tuple[float, float]:
    """The λ on which ``line`` is the QP's solution: free weights within bounds and multipliers of the right sign."""
    lo, hi = 0.0, np.inf
    free = line.free
    a, b = line.a[free], line.b[free]
    with np.errstate(divide="ignore", invalid="ignore"):
        up = (data.upper[free] - a) / b
        down = (data.lower[free] - a) / b
    lo = max(lo, float(np.max(np.where(b > 0, down, np.where(b < 0, up, -np.inf)), initial=-np.inf)))
    hi = min(hi, float(np.min(np.where(b > 0, up, np.where(b < 0, down, np.inf)), initial=np.inf)))
    movable = ~data.pinned
    g0, g1 = line.g0, line.g1
    with np.errstate(divide="ignore", invalid="ignore"):
        root = -g0 / g1
    at_lower = (state < 0) & movable  # g0 + λ g1 ≥ 0
    at_upper = (state > 0) & movable  # g0 + λ g1 ≤ 0
    rises = (at_lower & (g1 > 0)) | (at_upper & (g1 < 0))
    falls = (at_lower & (g1 < 0)) | (at_upper & (g1 > 0))
    lo = max(lo, float(np.max(root[rises], initial=-np.inf)))
    hi = min(hi, float(np.min(root[falls], initial=np.inf)))
    return lo, hi


def solve_max_sharpe(
    covariance: FloatArray,
    expected_returns: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    risk_free_rate: float = 0.0,
    *,
    cholesky: FloatArray | None = None,
) -> ActiveSetSolution | None:
    """Maximise (μᵀw − r_f) / sqrt(wᵀΣw) subject to 1ᵀw = 1 and l ≤ w ≤ u exactly (certified by KKT).

    Parameters
    ----------
    covariance : ndarray of shape (N, N)
        Σ, symmetric positive definite (annualised).
    expected_returns : ndarray of shape (N,)
        μ (annualised, decimal).
    lower, upper : ndarray of shape (N,)
        Finite weight bounds with l ≤ u and Σl ≤ 1 ≤ Σu (l may be negative).
    risk_free_rate : float
        r_f (annualised, decimal); some feasible portfolio must have μᵀw > r_f.
    cholesky : ndarray of shape (N, N), optional
        Upper Cholesky factor of Σ to start from (see ``solve_qp``).

    Returns
    -------
    ActiveSetSolution or None
        The tangency portfolio with λ = wᵀΣw / (μᵀw − r_f) (the QP at that λ has the same solution), or None
        (see ``solve_qp``).

    Notes
    -----
    Primal-dual active set with λ = the tangency λ* of each partition's critical line; if that fails, a
    bracketed search on λ (Newton steps to the root of h on the current critical line, bisection otherwise) with
    ``solve_qp``'s method at each λ, warm-started from the previous partition. The result is certified by the KKT
    conditions of the QP at λ = wᵀΣw / (μᵀw − r_f), which are those of the Sharpe ratio's maximum. At or above
    ``SCREEN_MIN_SIZE`` names, a working set of names first (``_screened``), as in ``solve_qp``.
    """
    data = _prepare(covariance, expected_returns, lower, upper, cholesky)
    if data is None or not np.isfinite(risk_free_rate) or np.all(data.pinned):
        return None
    screened = _screened(data, float(risk_free_rate), 0.0)
    if screened is not None:
        return screened
    excess = data.mu - float(risk_free_rate)
    state = np.zeros(data.mu.size, dtype=np.int8)
    state[data.pinned] = -1
    attempt = _pdas(data, state, lambda line: _tangency(line, excess))
    if attempt.solved is not None:
        found = _certify_sharpe(data, attempt.solved.weights, excess, "PDAS")
        if found is not None:
            return found
    return _sharpe_search(data, excess, attempt.state, attempt.lam if attempt.lam is not None else 0.0)


def _certify_sharpe(data: _Problem, weights: FloatArray, excess: FloatArray, method: str) -> ActiveSetSolution | None:
    """Certify ``weights`` as the maximum Sharpe ratio: the QP's KKT conditions at λ = wᵀΣw / (μ − r_f)ᵀw."""
    weights = np.clip(weights, data.lower, data.upper)
    gain = float(excess @ weights)
    if not gain > 0.0:
        return None
    lam = quadratic_form(weights, data.sigma) / gain
    return _finish(data, weights, lam, method)


def _sharpe_search(data: _Problem, excess: FloatArray, state: IntArray, lam: float) -> ActiveSetSolution | None:
    """Bracketed search for the root of h(λ) = λ(μᵀw(λ) − r_f) − w(λ)ᵀΣw(λ), from λ and the partition ``state``.

    h is continuous, negative at 0, has one root, and is linear on each critical line: the next λ is the root of
    the current line's h (a Newton step) when it falls inside the bracket, else the bracket's midpoint (or
    twice its lower end while it is open above).
    """
    bracket_lo, bracket_hi = 0.0, np.inf
    for _ in range(MAX_SHARPE_SEARCH):
        solved = _solve_qp(data, lam, state)
        if solved is None:
            return None
        state, line = solved.state, solved.line
        lo, hi = _line_interval(data, line, state)
        lo, hi = min(lo, lam), max(hi, lam)
        root = _tangency(line, excess)
        slack = 1e-12 * max(abs(lam), abs(lo), 1e-300)
        if root is not None and lo - slack <= root <= hi + slack:
            return _certify_sharpe(data, line.weights(root), excess, "SHARPE_SEARCH")
        if not bracket_lo < bracket_hi:  # collapsed on a breakpoint: this λ is the root
            return _certify_sharpe(data, solved.weights, excess, "SHARPE_SEARCH")
        if root is None or root > hi:
            bracket_lo = max(bracket_lo, hi)
        else:
            bracket_hi = min(bracket_hi, lo)
        if root is not None and bracket_lo < root < bracket_hi:
            lam = root
        elif np.isfinite(bracket_hi):
            lam = 0.5 * (bracket_lo + bracket_hi)
        else:
            lam = 2.0 * bracket_lo if bracket_lo > 0.0 else 2.0 * max(lam, data.diag_max / max(data.mu_max, 1e-300))
    return None


# --------------------------------------------------------------------------------------------------- the backend


class ActiveSetBackend:
    """The exact active set for min volatility, max Sharpe and quadratic utility under the budget and finite bounds.

    ``solve`` returns None when the KKT conditions cannot be certified: the next backend then answers.
    """

    solve_path = SOLVE_PATH
    families: frozenset[type[Constraint]] = frozenset({Budget, Bounds})
    """The constraint families this backend solves (any other present: not supported)."""

    def supports(self, model: ProblemModel) -> bool:
        """Whether the model has only the budget and finite bounds, an eligible objective and no costs."""
        objective = model.objective
        if objective not in ELIGIBLE_OBJECTIVES or not model.families <= self.families or model.costs is not None:
            return False
        if objective is Objective.MAX_QUADRATIC_UTILITY:
            risk_aversion = model.problem.risk_aversion
            if not (np.isfinite(risk_aversion) and risk_aversion > 0.0):
                return False
        bounds_finite = np.all(np.isfinite(model.lower)) and np.all(np.isfinite(model.upper))
        return bool(bounds_finite) and bool(np.isfinite(model.risk_free_rate))

    def solve(self, model: ProblemModel, *, started: float, time_limit_s: float | None) -> OptimizationResult | None:
        """The certified optimum through ``model.result`` (solver and path ``ACTIVE_SET``), or None."""
        solution = solve_model(model)
        if solution is None:
            return None
        return model.result(
            solution.weights,
            status="OPTIMAL",
            solver=SOLVE_PATH,
            iterations=solution.iterations,
            started=started,
            solve_path=SOLVE_PATH,
            snap=False,
        )


def solve_model(model: ProblemModel) -> ActiveSetSolution | None:
    """The active set's certified solution of a supported model, or None (not certified)."""
    args = (model.covariance, model.expected_returns, model.lower, model.upper)
    cholesky = model.covariance_cholesky
    if model.objective is Objective.MAX_SHARPE:
        return solve_max_sharpe(*args, risk_free_rate=model.risk_free_rate, cholesky=cholesky)
    if model.objective is Objective.MAX_QUADRATIC_UTILITY:
        return solve_qp(*args, risk_tolerance=1.0 / model.problem.risk_aversion, cholesky=cholesky)
    return solve_qp(*args, cholesky=cholesky)
