"""Cardinality (at most K holdings) and minimum position size, solved exactly by outer approximation.

Problem. Any program of ``_conic`` (min volatility, max Sharpe, max return, quadratic utility,
multi-objective, with every constraint family) or of ``_risk_measures`` (CVaR, MAD, CDaR) with, in addition,

- ``max_holdings`` K: at most K strategies with ``w_i ≠ 0``;
- ``min_position_weight`` m: every held strategy has ``|w_i| ≥ m``, i.e. ``w_i ∈ {0} ∪ [max(l_i, m), u_i]`` long or
  ``w_i ∈ [l_i, min(u_i, −m)]`` short.

Both make the feasible set non-convex: a convex mixed-integer program. HiGHS solves mixed-integer *linear*
programs only, so the convex parts (the quadratic objective, the volatility and tracking-error cones) are handled
by outer approximation (OA; Duran and Grossmann, 1986; Fletcher and Leyffer, 1994; for portfolios Bienstock, 1996,
and Bertsimas and Shioda, 2009).

Master (a MILP solved by HiGHS). Binaries ``p_i`` (held, or held long with m) and, with m and shorting allowed,
``q_i`` (held short), ``p_i + q_i ≤ 1``, ``Σ(p_i + q_i) ≤ K``; every linear family of the continuous program as
``_conic.MeanVarianceProgram`` (its ``ProgramBuilder.linear``) or ``_risk_measures.measure_program`` builds it
(budget or net exposure bounds, bounds, sector/group limits, min_return, turnover, per-name caps, leverage,
costs, beta, the scenario measures' LP); the linking, with ``s`` the program's scale (1, or κ for max Sharpe) and
``S`` its upper bound (1, or κ_max)::

    −l⁻_i·S·q_i ≤ x_i ≤ u⁺_i·S·p_i                        (u⁺ = max(u, 0), l⁻ = max(−l, 0); q = p without m)
    x_i ≥ m·s − m·S·(1 − p_i) − l⁻_i·S·q_i                (with m: p_i = 1 ⇒ x_i ≥ m·s)
    x_i ≤ −m·s + m·S·(1 − q_i) + u⁺_i·S·p_i               (with m: q_i = 1 ⇒ x_i ≤ −m·s)

(p = q = 0 forces x_i = 0; a name whose bounds cannot reach m on a side has that binary fixed at 0).

The quadratic objective ``xᵀQx`` is split with the perspective reformulation of Frangioni and Gentile (2006, 2007):
``Q = R + D``, D = diag(d) ⪰ 0 the largest diagonal with R ⪰ 0 (an SDP, ``_diagonal_part``). ``xᵀRx`` becomes an
epigraph variable t with the OA cuts ``t ≥ 2(Rx_k)ᵀx − x_kᵀRx_k``; each ``d_i x_i²`` an epigraph s_i ≥ d_i x_i²/z_i
(z_i = p_i + q_i; equal to d_i x_i² on the mixed-integer set since x_i = 0 when z_i = 0) with the perspective cuts
``s_i ≥ d_i(2x̄_i x_i − x̄_i² z_i)`` — a far tighter continuous relaxation of the master than ``s_i ≥ d_i x_i²``
(on 20 S&P 500 stocks, minimum variance with K = 5: 19 OA iterations without it, 2 with it). Each cone
``‖Fᵀ(x − b·s)‖ ≤ c·s`` (max volatility, tracking error) gets the gradient cuts ``(Σa_k)ᵀ(x − b·s)/‖Fᵀa_k‖ ≤ c·s``
(a_k = x_k − b·s_k) and, in weight space (s = 1), also the same split of its square ``(x − b)ᵀΣ(x − b) ≤ c²``.
All cuts are first-order expansions of convex functions, valid everywhere; they are taken at every subproblem
solution (OA), at the continuous optimum, at a grid of points per name (perspective cuts) and, where the master's
point violates them, at the master's point (Kelley, 1960).

Subproblem (the convex program on one support). With the binaries fixed, the continuous program restricted to
the support (bounds 0 outside it, ``[max(l, m), u]`` or ``[l, min(u, −m)]`` inside) is solved by the ordinary
continuous solver (``optimize_mean_variance``: active set or Clarabel; ``optimize_risk_measure``: Clarabel): its
optimum is feasible for the mixed-integer problem, an upper bound, and the next linearisation point. An infeasible
support gets no value.

Loop. Every evaluated support is then excluded from the master by a combinatorial cut: without m, all its subsets
(``Σ_{i∉S} p_i ≥ 1``: a subset's program is a restriction of S's); with m, exactly its sign pattern (no-good cut).
The master's optimum is therefore a lower bound over the supports not yet evaluated, and the incumbent (the best
subproblem) the exact value over those evaluated: the search stops when the master's bound meets the incumbent
within a relative gap of ``GAP_TOLERANCE`` (1e-7), or the master is infeasible (every support evaluated or
excluded). It is finite (finitely many supports) and exact up to that gap and the solvers' tolerances (HiGHS's MIP
gap 1e-10, Clarabel's 1e-10): every cut is valid for the mixed-integer feasible set, so no better portfolio is cut
off. Objective without quadratic term and without cones (max return, the scenario measures): the master is the
exact MILP and the first iteration closes the gap (``solve_path`` ``MILP``).

Max Sharpe (and the scenario max ratio) are solved in the homogenised form of Cornuejols and Tütüncü (2007),
``min yᵀΣy`` s.t. ``(μ − r_f)ᵀy − cost(y) = 1``, the linear families times κ, ``y = κw``: convex in (y, κ), so OA
applies; the linking needs an upper bound κ_max on κ. At an optimum (y*, κ*) the normalisation is tight, so
``κ* = 1/(net excess return of w*) = 1/(S*·σ(w*))``; with S_lb the Sharpe ratio of any feasible portfolio with at
most K holdings (S* ≥ S_lb) and σ_min the minimum volatility of the continuous relaxation (σ(w*) ≥ σ_min),
``κ* ≤ κ_max = 1/(S_lb·σ_min)``. S_lb comes from rounding the continuous optimum (its K largest weights, re-solved on
that support) or else from the first feasible support of an OA search that maximises the net return in weight
space; it is raised as better incumbents appear (points with κ > κ_max then have a lower Sharpe ratio than the
incumbent). The scenario ratio ``((μᵀw − r_f)/P)/ρ(w)`` gives ``κ* ≤ 1/(P·R_lb·ρ_min)`` the same way.

Start: the continuous optimum (the relaxation) is solved first. When it already meets the cardinality and
minimum position constraints it is optimal and is returned as the continuous solver gives it (its ``solve_path``,
e.g. ``CONIC``); if it is infeasible so is the mixed-integer problem. Otherwise its K largest weights (and, with
m, those at least m/2) are re-solved as supports: the first incumbents.

Stop: ``OPTIMAL`` when the gap closed; at ``time_limit_s``, at ``MAX_ITERATIONS`` master solves, or after a solver
failure, the incumbent is returned as ``OPTIMAL_INACCURATE`` (``DeadlineExceededError`` if there is none yet).

References
----------
Duran, M. A. and Grossmann, I. E. (1986). An outer-approximation algorithm for a class of mixed-integer nonlinear
programs. Mathematical Programming 36, 307-339.
Fletcher, R. and Leyffer, S. (1994). Solving mixed integer nonlinear programs by outer approximation.
Mathematical Programming 66, 327-349.
Bienstock, D. (1996). Computational study of a family of mixed-integer quadratic programming problems.
Mathematical Programming 74, 121-140.
Bertsimas, D. and Shioda, R. (2009). Algorithm for cardinality-constrained quadratic optimization. Computational
Optimization and Applications 43, 1-22.
Kelley, J. E. (1960). The cutting-plane method for solving convex programs. Journal of the SIAM 8, 703-712.
Cornuejols, G. and Tütüncü, R. (2007). Optimization Methods in Finance, §8.2.
Frangioni, A. and Gentile, C. (2006). Perspective cuts for a class of convex 0-1 mixed integer programs.
Mathematical Programming 106, 225-236.
Frangioni, A. and Gentile, C. (2007). SDP diagonalizations and perspective cuts for a class of nonseparable MIQP.
Operations Research Letters 35, 181-185.

Why one long module: the master (binaries, linking, perspective and gradient cuts), the two continuous backends
and the search that drives them form one algorithm whose parts exchange private state (patterns, cuts,
incumbents); splitting it would turn that state into a public interface nobody else needs.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import cvxpy as cp
import cvxpy.settings as cvxpy_settings
import numpy as np
from numpy.typing import NDArray

from services.errors import (
    DeadlineExceededError,
    InfeasibleError,
    InvalidInputError,
    OptimizationError,
    PreconditionViolation,
)
from services.optimization._conic import PARAMETRIC_MAX_ASSETS, MeanVarianceProgram
from services.optimization._constraints import HELD_THRESHOLD, TOLERANCE, MaxVolatility, TrackingErrorLimit, holdable
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult, PortfolioProblem
from services.optimization._risk_measures import ScenarioSpec, measure_program
from services.types import FloatArray, Moments

ContinuousSolve = Callable[[PortfolioProblem, float | None], OptimizationResult]
"""Solves the continuous problem (no cardinality) on one support within a time limit (seconds): injected by the
dispatch, so this module does not import the backends that answer it."""

GAP_TOLERANCE = 1e-7
"""Relative gap (incumbent − master bound) / |incumbent| at which the search stops with a proven optimum."""
MAX_ITERATIONS = 500
"""Cap on master solves; reaching it returns the incumbent as ``OPTIMAL_INACCURATE``."""
HIGHS_SETTINGS: dict[str, float] = {
    "mip_rel_gap": 1e-10,
    "mip_abs_gap": 1e-14,
    "mip_feasibility_tolerance": 1e-9,
    "primal_feasibility_tolerance": 1e-9,
    "dual_feasibility_tolerance": 1e-9,
}
"""HiGHS's MIP settings: its default gaps (1e-4 relative, 1e-6 absolute) would exceed ``GAP_TOLERANCE``."""
_SOLVER = "HIGHS"

Pattern = tuple[int, ...]
"""A support: per strategy 1 (held; held long with a minimum position), −1 (held short) or 0 (weight 0)."""


# --- supports -------------------------------------------------------------------------------------------------------


def _without_cardinality(problem: PortfolioProblem) -> PortfolioProblem:
    return replace(problem, max_holdings=None, min_position_weight=None, allow_relaxation=False)


def _support_problem(problem: PortfolioProblem, pattern: Pattern, m: float | None) -> PortfolioProblem:
    """The continuous problem on one support: bounds 0 outside, [max(l, m), u] long / [l, min(u, −m)] short."""
    lower, upper = problem.lower_bounds, problem.upper_bounds
    signs = np.asarray(pattern)
    if m is None:
        lo = np.where(signs != 0, lower, 0.0)
        hi = np.where(signs != 0, upper, 0.0)
    else:
        lo = np.where(signs > 0, np.maximum(lower, m), np.where(signs < 0, lower, 0.0))
        hi = np.where(signs > 0, upper, np.where(signs < 0, np.minimum(upper, -m), 0.0))
    return replace(
        _without_cardinality(problem), lower_bounds=lo.astype(np.float64), upper_bounds=hi.astype(np.float64)
    )


def _meets_cardinality(weights: FloatArray, k: int | None, m: float | None) -> bool:
    held = np.abs(weights) > HELD_THRESHOLD
    if k is not None and int(held.sum()) > k:
        return False
    return m is None or bool(np.all(np.abs(weights[held]) >= m - TOLERANCE))


def _gap_closed(upper: float, lower: float) -> bool:
    return upper - lower <= GAP_TOLERANCE * max(abs(upper), 1e-12)


# --- the master ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cone:
    """``‖Fᵀ(x − b·s)‖ ≤ limit·s`` with F Fᵀ = Σ (a volatility cap: b = 0; a tracking-error cap: b the benchmark)."""

    covariance: FloatArray
    centre: FloatArray
    limit: float

    def value(self, point: FloatArray, scale: float) -> float:
        active = point - self.centre * scale
        return float(np.sqrt(max(float(active @ self.covariance @ active), 0.0)))


@dataclass(frozen=True, slots=True)
class MasterSpec:
    """A continuous program split into what the MILP master keeps and what it outer-approximates.

    Attributes
    ----------
    x : cvxpy.Variable of shape (N,)
        The weights, or y = κw (homogenised).
    scale : cvxpy.Variable or None
        κ of the homogenised form; None for weights (scale 1).
    constraints : list of cvxpy.Constraint
        Every linear family, over x, scale and auxiliary variables.
    linear : cvxpy.Expression or float
        The objective's linear part, minimised.
    quadratic : ndarray of shape (N, N) or None
        Q ⪰ 0 of the objective's quadratic part xᵀQx (outer-approximated), None without one.
    cones : tuple of _Cone
        Second-order cone constraints (outer-approximated).
    """

    x: cp.Variable
    scale: cp.Variable | None
    constraints: list[cp.Constraint]
    linear: cp.Expression | float
    quadratic: FloatArray | None
    cones: tuple[_Cone, ...]


@dataclass(frozen=True, slots=True)
class _MasterPoint:
    value: float
    """A lower bound of the objective over the supports the master still allows."""
    point: FloatArray
    scale: float
    pattern: Pattern
    parts: tuple[tuple[float, FloatArray | None], ...]
    """Values of (t, s) of each ``_SplitQuadratic`` of the master, in order."""


SDP_DIAGONAL_MAX_ASSETS = 100
"""Up to this N the perspective diagonal is the SDP's (Frangioni and Gentile, 2007), above it Q's least eigenvalue."""


def _diagonal_part(quadratic: FloatArray) -> FloatArray:
    """The diagonal d ≥ 0 (N,) of the perspective split, with Q − diag(d) ⪰ 0.

    The largest Σd_i (an SDP solved by Clarabel: max 1ᵀd s.t. Q − diag(d) ⪰ 0, d ≥ 0; Frangioni and Gentile, 2007),
    shifted down to make Q − diag(d) ⪰ 0 hold exactly; Q's smallest eigenvalue on every entry where the SDP fails
    or N is large. On 20 S&P 500 stocks the SDP's Σd is about 10 times N·λ_min.
    """
    q = (quadratic + quadratic.T) / 2.0
    n = q.shape[0]
    smallest = float(np.linalg.eigvalsh(q)[0])
    fallback = np.full(n, max(smallest * (1.0 - 1e-6), 0.0))
    if n > SDP_DIAGONAL_MAX_ASSETS:
        return fallback
    d = cp.Variable(n, nonneg=True)
    sdp = cp.Problem(cp.Maximize(cp.sum(d)), [q - cp.diag(d) >> 0])
    try:
        sdp.solve(solver="CLARABEL")  # type: ignore[no-untyped-call]
    except cp.error.SolverError:
        return fallback
    if sdp.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or d.value is None:
        return fallback
    diagonal = np.clip(np.asarray(d.value, dtype=np.float64), 0.0, None)
    shortfall = -float(np.linalg.eigvalsh(q - np.diag(diagonal))[0])  # Q − diag(d − c) = Q − diag(d) + c·I
    diagonal = np.clip(diagonal - max(shortfall, 0.0) * 1.01 - 1e-12 * float(np.max(np.diag(q))), 0.0, None)
    return diagonal if diagonal.sum() > fallback.sum() else fallback


PERSPECTIVE_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
"""Fractions of the scale (1, or κ of the continuous optimum) at which every perspective term is cut at the start."""


class _SplitQuadratic:
    """A convex quadratic ``(x − b)ᵀQ(x − b)`` in the master, outer-approximated with perspective strengthening.

    With D = diag(d) ⪰ 0 and R = Q − D ⪰ 0 (``_diagonal_part``), ``(x − b)ᵀQ(x − b) = (x − b)ᵀR(x − b) + Σd_i x_i²
    − 2Σd_i b_i x_i + Σd_i b_i²``. The first term gets an epigraph t with OA cuts ``t ≥ 2(Ra)ᵀ(x − b) − aᵀRa``
    (a = x_k − b), each d_i x_i² an epigraph s_i ≥ d_i x_i²/z_i — the perspective of the term, equal to it since
    x_i = 0 when z_i = 0 — with the cuts ``s_i ≥ d_i(2x̄_i x_i − x̄_i² z_i)`` (Frangioni and Gentile, 2006): a much
    tighter relaxation than ``s_i ≥ d_i x_i²`` where the binaries are fractional.
    """

    def __init__(self, quadratic: FloatArray, centre: FloatArray) -> None:
        n = quadratic.shape[0]
        self.diagonal = _diagonal_part(quadratic)
        self.remainder = quadratic - np.diag(self.diagonal)
        self.centre = centre
        self.epigraph = cp.Variable(nonneg=True)
        self.perspective = cp.Variable(n, nonneg=True) if self.diagonal.any() else None
        self.rows: list[FloatArray] = []  # [g, c]: t ≥ gᵀx + c
        self.bars: dict[tuple[int, float], None] = {}  # (i, x̄_i)

    def expression(self, x: cp.Variable) -> cp.Expression:
        """The master's under-estimator of (x − b)ᵀQ(x − b)."""
        d, b = self.diagonal, self.centre
        expr: cp.Expression = self.epigraph - (2.0 * d * b) @ x + float(d @ b**2)
        if self.perspective is not None:
            expr = expr + cp.sum(self.perspective)
        return expr

    def values(self) -> tuple[float, FloatArray | None]:
        t = float(self.epigraph.value) if self.epigraph.value is not None else 0.0
        s = None if self.perspective is None or self.perspective.value is None else np.asarray(self.perspective.value)
        return t, s

    def constraints(self, x: cp.Variable, chosen: cp.Expression) -> list[cp.Constraint]:
        cuts: list[cp.Constraint] = []
        if self.rows:
            rows = np.array(self.rows)
            cuts.append(rows[:, :-1] @ x + rows[:, -1] <= self.epigraph)
        if self.bars and self.perspective is not None:
            index = np.array([i for i, _ in self.bars], dtype=np.intp)
            bar = np.array([b for _, b in self.bars])
            d = self.diagonal[index]
            cuts.append(
                cp.multiply(2.0 * d * bar, x[index]) - cp.multiply(d * bar**2, chosen[index]) <= self.perspective[index]
            )
        return cuts

    def add_grid(self, lower: FloatArray, upper: FloatArray, scale: float) -> None:
        """Perspective cuts at fixed fractions of the scale, long and short, for every strategy."""
        if self.perspective is None:
            return
        for i in np.flatnonzero(self.diagonal > 0):
            for fraction in PERSPECTIVE_GRID:
                if upper[i] > 0:
                    self.bars[(int(i), min(fraction, float(upper[i])) * scale)] = None
                if lower[i] < 0:
                    self.bars[(int(i), max(-fraction, float(lower[i])) * scale)] = None

    def add_cuts(self, point: FloatArray, at: tuple[float, FloatArray | None] | None, pattern: Pattern | None) -> None:
        """Cuts at a point; at a master point (``at`` its (t, s), ``pattern`` its support) only the violated ones."""
        active = point - self.centre
        value = float(active @ self.remainder @ active)
        if at is None or at[0] < value - 1e-12 * value:
            gradient = 2.0 * (self.remainder @ active)
            self.rows.append(np.append(gradient, -float(gradient @ self.centre) - value))
        if self.perspective is None:
            return
        for i in np.flatnonzero((np.abs(point) > 1e-12) & (self.diagonal > 0)):
            term = float(self.diagonal[i] * point[i] ** 2)
            if at is not None:
                s = at[1]
                if pattern is None or pattern[i] == 0 or s is None or s[i] >= term - 1e-12 * term:
                    continue
            self.bars[(int(i), float(point[i]))] = None


class _Master:
    """The MILP master of one ``MasterSpec``: binaries, linking, cardinality, cuts (see the module docstring).

    The objective's quadratic and, in weight space, each cone (squared: ``(x − b)ᵀΣ(x − b) ≤ c²``) are
    ``_SplitQuadratic`` parts with perspective cuts; every cone also keeps its gradient cuts (the only ones in the
    homogenised max Sharpe form, where the squared cone is not convex).
    """

    def __init__(self, spec: MasterSpec, problem: PortfolioProblem, k: int | None, m: float | None) -> None:
        n = problem.n_assets
        self.spec, self.m, self.n = spec, m, n
        self.lower, self.upper = problem.lower_bounds, problem.upper_bounds
        long_ok, short_ok = holdable(problem.lower_bounds, problem.upper_bounds, m)
        self.held = cp.Variable(n, boolean=True)
        self.short = cp.Variable(n, boolean=True) if m is not None and bool(short_ok.any()) else None
        self.chosen: cp.Expression = self.held if self.short is None else self.held + self.short
        self.fixed: list[cp.Constraint] = []
        if m is not None:
            if not long_ok.all():
                self.fixed.append(self.held[np.flatnonzero(~long_ok)] == 0)
            if self.short is not None:
                self.fixed.append(self.chosen <= 1)
                if not short_ok.all():
                    self.fixed.append(self.short[np.flatnonzero(~short_ok)] == 0)
        if k is not None:
            self.fixed.append(cp.sum(self.chosen) <= k)
        self.objective = None if spec.quadratic is None else _SplitQuadratic(spec.quadratic, np.zeros(n))
        self.cone_parts: list[_SplitQuadratic | None] = [
            _SplitQuadratic(cone.covariance, cone.centre) if spec.scale is None else None for cone in spec.cones
        ]
        self.cone_rows: list[FloatArray] = []  # [a, b]: aᵀx − b·s ≤ 0
        self.exclusion_rows: list[FloatArray] = []  # [e, f, r]: eᵀheld + fᵀshort ≥ r
        self.exhausted = False

    @property
    def _parts(self) -> list[_SplitQuadratic]:
        parts = [] if self.objective is None else [self.objective]
        return parts + [part for part in self.cone_parts if part is not None]

    def _linking(self, scale_max: float) -> list[cp.Constraint]:
        x, m = self.spec.x, self.m
        s: cp.Expression | float = self.spec.scale if self.spec.scale is not None else 1.0
        up = np.maximum(self.upper, 0.0) * scale_max
        down = np.maximum(-self.lower, 0.0) * scale_max
        constraints: list[cp.Constraint] = [x <= cp.multiply(up, self.held)]
        if self.spec.scale is not None:
            constraints.append(self.spec.scale <= scale_max)
        if m is None:
            constraints.append(x >= -cp.multiply(down, self.held))
            return constraints
        short: cp.Expression | float = 0.0
        if self.short is not None:
            short = cp.multiply(down, self.short)
            constraints += [
                x >= -short,
                x <= -m * s + m * scale_max * (1 - self.short) + cp.multiply(up, self.held),
            ]
        else:
            constraints.append(x >= 0)
        constraints.append(x >= m * s - m * scale_max * (1 - self.held) - short)
        return constraints

    def _cuts(self) -> list[cp.Constraint]:
        """The accumulated cuts, one matrix constraint per family (cvxpy compiles that in constant time)."""
        x, n = self.spec.x, self.n
        s: cp.Expression | float = self.spec.scale if self.spec.scale is not None else 1.0
        cuts: list[cp.Constraint] = []
        for part in self._parts:
            cuts += part.constraints(x, self.chosen)
        for cone, cone_part in zip(self.spec.cones, self.cone_parts, strict=True):
            if cone_part is not None:
                cuts.append(cone_part.expression(x) <= cone.limit**2)
        if self.cone_rows:
            rows = np.array(self.cone_rows)
            cuts.append(rows[:, :n] @ x - rows[:, n] * s <= 0)
        if self.exclusion_rows:
            rows = np.array(self.exclusion_rows)
            expr: cp.Expression = rows[:, :n] @ self.held
            if self.short is not None:
                expr = expr + rows[:, n : 2 * n] @ self.short
            cuts.append(expr >= rows[:, 2 * n])
        return cuts

    def add_perspective_grid(self, scale: float) -> None:
        """Perspective cuts at fixed fractions of the scale for every strategy and part."""
        for part in self._parts:
            part.add_grid(self.lower, self.upper, scale)

    def add_cuts(self, point: FloatArray, scale: float, *, master: _MasterPoint | None = None) -> None:
        """Objective and cone cuts at a point; at a ``master`` point only those it violates (Kelley's cuts)."""
        for index, part in enumerate(self._parts):
            at = None if master is None else master.parts[index]
            part.add_cuts(point, at, None if master is None else master.pattern)
        for cone in self.spec.cones:
            norm = cone.value(point, scale)
            if master is not None and norm <= cone.limit * scale * (1 + 1e-9) + 1e-12:
                continue
            if norm > 1e-14:
                gradient = cone.covariance @ (point - cone.centre * scale) / norm
                self.cone_rows.append(np.append(gradient, float(gradient @ cone.centre) + cone.limit))

    def exclude(self, pattern: Pattern, *, subsets: bool) -> None:
        """Cut off a support (and, with ``subsets``, every subset of it) from the master."""
        signs = np.asarray(pattern)
        n = self.n
        if subsets:
            outside = (signs == 0).astype(np.float64)
            if not outside.any():
                self.exhausted = True
                return
            self.exclusion_rows.append(np.concatenate([outside, np.zeros(n), [1.0]]))
            return
        longs = (signs > 0).astype(np.float64)
        shorts = (signs < 0).astype(np.float64)
        if self.short is None and shorts.any():
            return  # a short pattern the master cannot produce
        row = np.concatenate([1.0 - 2.0 * longs, 1.0 - 2.0 * shorts, [1.0 - longs.sum() - shorts.sum()]])
        self.exclusion_rows.append(row)

    def solve(self, scale_max: float, time_left: float | None) -> _MasterPoint | None:
        """Solve the MILP with HiGHS; None when it is infeasible.

        Raises
        ------
        DeadlineExceededError
            HiGHS hit the time left.
        OptimizationError
            HiGHS failed.
        """
        if self.exhausted:
            return None
        spec = self.spec
        objective: cp.Expression | float = spec.linear
        if self.objective is not None:
            objective = objective + self.objective.expression(spec.x)
        constraints = [*spec.constraints, *self.fixed, *self._linking(scale_max), *self._cuts()]
        program = cp.Problem(cp.Minimize(objective), constraints)
        options: dict[str, float] = dict(HIGHS_SETTINGS)
        if time_left is not None:
            if time_left <= 0:
                raise DeadlineExceededError("no time left for the mixed-integer master")
            options["time_limit"] = time_left
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                program.solve(solver=_SOLVER, **options)  # type: ignore[no-untyped-call]
        except cp.error.SolverError as exc:
            raise OptimizationError(f"{_SOLVER} failed on the mixed-integer master: {exc}") from exc
        status = program.status
        if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE, cvxpy_settings.INFEASIBLE_OR_UNBOUNDED):
            return None
        if status == cp.USER_LIMIT:
            raise DeadlineExceededError("the mixed-integer master hit the time limit")
        if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or spec.x.value is None or program.value is None:
            raise OptimizationError(f"{_SOLVER} ended the mixed-integer master with status {status}")
        value = float(program.value)
        info = program.solver_stats.extra_stats if program.solver_stats is not None else None
        bound = getattr(info, "mip_dual_bound", None)
        primal = getattr(info, "objective_function_value", None)
        if bound is not None and primal is not None and np.isfinite(bound) and np.isfinite(primal):
            value = min(value, float(bound) + (value - float(primal)))  # the dual bound, with cvxpy's offset
        signs = (np.asarray(self.held.value) > 0.5).astype(int)
        if self.short is not None:
            signs = signs - (np.asarray(self.short.value) > 0.5).astype(int)
        scale = float(spec.scale.value) if spec.scale is not None and spec.scale.value is not None else 1.0
        point = np.asarray(spec.x.value, dtype=np.float64)
        parts = tuple(part.values() for part in self._parts)
        return _MasterPoint(value, point, scale, tuple(signs.tolist()), parts)


# --- the continuous side: one backend per family of programs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A solved support: its result, objective in minimisation form and linearisation point."""

    result: OptimizationResult
    value: float
    point: FloatArray
    scale: float


class _Backend(Protocol):
    problem: PortfolioProblem
    moments: Moments

    def spec(self, problem: PortfolioProblem) -> MasterSpec: ...

    def solve(self, problem: PortfolioProblem, time_limit_s: float | None) -> OptimizationResult: ...

    def candidate(self, result: OptimizationResult) -> _Candidate | None: ...

    def min_risk(self, result: OptimizationResult) -> float: ...

    def scale_bound(self, value: float, min_risk: float) -> float: ...

    def violations(self, weights: FloatArray) -> tuple[str, ...]: ...


class _MeanVarianceBackend:
    """Mean-variance programs: the master from the program's linear families, subproblems by ``solve``."""

    def __init__(self, problem: PortfolioProblem, moments: Moments, solve: ContinuousSolve) -> None:
        self.problem, self.moments, self._solve = problem, moments, solve

    def spec(self, problem: PortfolioProblem) -> MasterSpec:
        model = ProblemModel.build(problem, self.moments)
        covariance = self.moments.covariance
        # A program of its own, outside the cache: the subproblems re-use (and re-load) the cached one.
        program = MeanVarianceProgram(model, parametric=model.n_assets <= PARAMETRIC_MAX_ASSETS)
        builder = program.builder
        objective = problem.objective
        linear: cp.Expression | float = 0.0
        quadratic: FloatArray | None = None
        if objective in (Objective.MIN_VOLATILITY, Objective.MAX_SHARPE):
            quadratic = covariance
        elif objective is Objective.MAX_RETURN:
            linear = -builder.net_return()
        elif objective is Objective.MAX_QUADRATIC_UTILITY:
            linear, quadratic = -builder.net_return(), 0.5 * problem.risk_aversion * covariance
        else:
            weights = model.multi_objective
            assert weights is not None
            linear = -weights.return_weight * builder.net_return()
            if weights.turnover_weight > 0 and builder.has_trades:
                linear = linear + weights.turnover_weight * cp.sum(builder.trades())
            if weights.variance_weight > 0 or weights.l2_weight > 0:
                quadratic = weights.variance_weight * covariance + weights.l2_weight * np.eye(problem.n_assets)
        cones = []
        volatility_cap = model.get(MaxVolatility)
        if volatility_cap is not None:
            cones.append(_Cone(covariance, np.zeros(problem.n_assets), volatility_cap.limit))
        tracking = model.get(TrackingErrorLimit)
        if tracking is not None:
            cones.append(_Cone(covariance, tracking.benchmark, tracking.limit))
        return MasterSpec(builder.x, builder.kappa, list(builder.linear), linear, quadratic, tuple(cones))

    def solve(self, problem: PortfolioProblem, time_limit_s: float | None) -> OptimizationResult:
        return self._solve(problem, time_limit_s)

    def candidate(self, result: OptimizationResult) -> _Candidate | None:
        objective = self.problem.objective
        if objective is Objective.MAX_SHARPE:
            sharpe, volatility = result.objective_value, result.performance.volatility
            if not (sharpe > 0 and volatility > 0):
                return None
            kappa = 1.0 / (sharpe * volatility)  # 1 / net excess return: y = κw meets (μ − r_f)ᵀy − cost = 1
            return _Candidate(result, 1.0 / sharpe**2, result.weights * kappa, kappa)
        value = result.objective_value if objective is Objective.MIN_VOLATILITY else -result.objective_value
        return _Candidate(result, value, result.weights, 1.0)

    def min_risk(self, result: OptimizationResult) -> float:
        return result.performance.volatility

    def scale_bound(self, value: float, min_risk: float) -> float:
        return math.sqrt(value) / min_risk  # value = 1/S²: κ_max = 1/(S·σ_min)

    def violations(self, weights: FloatArray) -> tuple[str, ...]:
        return ProblemModel.build(self.problem, self.moments).violations(weights)


class _ScenarioBackend:
    """Scenario risk measures (CVaR, MAD, CDaR): the master from ``_risk_measures.measure_program``."""

    def __init__(self, problem: PortfolioProblem, moments: Moments, spec: ScenarioSpec, solve: ContinuousSolve) -> None:
        self.problem, self.moments, self.scenario = problem, moments, spec
        self.periods_per_year = spec.periods_per_year
        self._solve = solve

    def spec(self, problem: PortfolioProblem) -> MasterSpec:
        model = ProblemModel.build(problem, self.moments)
        program = measure_program(model, self.scenario, with_volatility_cap=False)
        cones: tuple[_Cone, ...] = ()
        volatility_cap = model.get(MaxVolatility)
        if volatility_cap is not None:
            cones = (_Cone(self.moments.covariance, np.zeros(problem.n_assets), volatility_cap.limit),)
        return MasterSpec(program.x, program.kappa, program.constraints, program.objective, None, cones)

    def solve(self, problem: PortfolioProblem, time_limit_s: float | None) -> OptimizationResult:
        return self._solve(problem, time_limit_s)

    def candidate(self, result: OptimizationResult) -> _Candidate | None:
        objective = self.problem.objective
        if objective is Objective.MAX_SHARPE:
            ratio = result.objective_value
            excess = result.performance.expected_return - self.problem.risk_free_rate
            if not (ratio > 0 and excess > 0):
                return None
            # y = w/excess meets (μ − r_f)ᵀy = 1 and ρ(y) = ρ(w)/excess = 1/(P·ratio).
            return _Candidate(result, 1.0 / (self.periods_per_year * ratio), result.weights / excess, 1.0 / excess)
        value = result.objective_value if objective is Objective.MIN_VOLATILITY else -result.objective_value
        return _Candidate(result, value, result.weights, 1.0)

    def min_risk(self, result: OptimizationResult) -> float:
        return result.objective_value

    def scale_bound(self, value: float, min_risk: float) -> float:
        return value / min_risk  # value = 1/(P·R): κ_max = 1/(P·R·ρ_min)

    def violations(self, weights: FloatArray) -> tuple[str, ...]:
        found = ProblemModel.build(self.problem, self.moments).violations(weights)
        return found + self.scenario.cap_violations(weights)


# --- the search ------------------------------------------------------------------------------------------------------


class _Search:
    """The evaluated supports, the incumbent and the clock of one solve."""

    def __init__(
        self,
        backend: _Backend,
        k: int | None,
        m: float | None,
        started: float,
        time_limit_s: float | None,
        order: NDArray[np.intp],
    ) -> None:
        self.backend, self.k, self.m = backend, k, m
        self.started, self.time_limit_s = started, time_limit_s
        self.order = order  # strategies by decreasing |continuous optimum|: padding order
        long_ok, short_ok = holdable(backend.problem.lower_bounds, backend.problem.upper_bounds, m)
        self.holdable = long_ok | short_ok
        self.evaluated: dict[Pattern, _Candidate | None] = {}
        self.best: _Candidate | None = None
        self.unproven = False  # a subproblem failed and its support was excluded without a value
        self.fallback_used = False

    def time_left(self) -> float | None:
        if self.time_limit_s is None:
            return None
        left = self.time_limit_s - (time.perf_counter() - self.started)
        if left <= 0:
            raise DeadlineExceededError(f"the mixed-integer search did not finish within {self.time_limit_s:.3f} s")
        return left

    def pad(self, pattern: Pattern) -> Pattern:
        """Without a minimum position, grow a support to K names (a superset's program contains the subset's)."""
        if self.m is not None or self.k is None:
            return pattern
        signs = list(pattern)
        room = self.k - sum(1 for s in signs if s)
        for i in self.order:
            if room <= 0:
                break
            if not signs[i] and self.holdable[i]:
                signs[i], room = 1, room - 1
        return tuple(signs)

    def evaluate(self, pattern: Pattern) -> _Candidate | None:
        """Solve the continuous problem on a support (once); update the incumbent."""
        if pattern in self.evaluated:
            return self.evaluated[pattern]
        problem = _support_problem(self.backend.problem, pattern, self.m)
        candidate: _Candidate | None = None
        try:
            result = self.backend.solve(problem, self.time_left())
        except (InfeasibleError, InvalidInputError):  # proven infeasible, or bounds that cross on this support
            pass
        except DeadlineExceededError:
            raise
        except OptimizationError:
            self.unproven = True
        else:
            self.fallback_used |= result.fallback_used
            candidate = self.backend.candidate(result)
        self.evaluated[pattern] = candidate
        if candidate is not None and (self.best is None or candidate.value < self.best.value):
            self.best = candidate
        return candidate

    def master(self, spec: MasterSpec) -> _Master:
        """A master over ``spec`` with the cuts of every support evaluated so far."""
        master = _Master(spec, self.backend.problem, self.k, self.m)
        for pattern, candidate in self.evaluated.items():
            if candidate is not None:
                if spec.scale is None:  # a weight-space master: the point w = y/κ
                    master.add_cuts(candidate.point / candidate.scale, 1.0)
                else:
                    master.add_cuts(candidate.point, candidate.scale)
            master.exclude(pattern, subsets=self.m is None)
        return master


def _rounded_patterns(weights: FloatArray, problem: PortfolioProblem, k: int | None, m: float | None) -> list[Pattern]:
    """Supports rounded from a continuous optimum: the strategies that must be held, then the largest |w_i|."""
    lower, upper = problem.lower_bounds, problem.upper_bounds
    long_ok, short_ok = holdable(problem.lower_bounds, problem.upper_bounds, m)
    n = problem.n_assets
    limit = n if k is None else k
    order = np.argsort(-np.abs(weights), kind="stable")
    patterns: list[Pattern] = []
    for threshold in [HELD_THRESHOLD] if m is None else [HELD_THRESHOLD, m / 2]:
        chosen: dict[int, int] = {int(i): 1 for i in np.flatnonzero(lower > 0)}
        chosen.update({int(i): -1 for i in np.flatnonzero(upper < 0)})
        for i in order:
            if len(chosen) >= limit:
                break
            if int(i) in chosen or abs(weights[i]) <= threshold:
                continue
            sign = 1 if weights[i] >= 0 else -1
            if sign > 0 and not long_ok[i]:
                sign = -1 if short_ok[i] else 0
            elif sign < 0 and not short_ok[i]:
                sign = 1 if long_ok[i] else 0
            if sign:
                chosen[int(i)] = sign
        if m is None:
            for i in order:
                if len(chosen) >= limit:
                    break
                if int(i) not in chosen and (long_ok[i] or short_ok[i]):
                    chosen[int(i)] = 1
        pattern = tuple((1 if i in chosen else 0) if m is None else chosen.get(i, 0) for i in range(n))
        if pattern not in patterns:
            patterns.append(pattern)
    return patterns


def _no_portfolio(k: int | None, m: float | None, what: str = "meets the other constraints") -> InfeasibleError:
    parts = ([f"at most {k} holdings"] if k is not None else []) + ([f"each at least {m:g}"] if m else [])
    subject = "max_holdings" if k is not None else "min_position_weight"
    description = f"{_SOLVER} proved that no portfolio with {', '.join(parts)} {what}"
    return InfeasibleError(
        description, precondition_violations=(PreconditionViolation("CARDINALITY", subject, description),)
    )


def _first_feasible(backend: _Backend, search: _Search) -> None:
    """Find a feasible support of a max Sharpe (max ratio) problem: OA on the net return in weight space.

    Stops at the first support whose ratio subproblem is feasible (the incumbent that bounds κ).

    Raises
    ------
    InfeasibleError
        No support is feasible, or none can beat the risk-free rate.
    """
    problem = backend.problem
    master = search.master(backend.spec(replace(_without_cardinality(problem), objective=Objective.MAX_RETURN)))
    master.add_perspective_grid(1.0)
    for _ in range(MAX_ITERATIONS):
        point = master.solve(1.0, search.time_left())
        if point is None:
            raise _no_portfolio(search.k, search.m, "meets the other constraints with a positive Sharpe ratio")
        if -point.value <= problem.risk_free_rate + 1e-12:
            raise _no_portfolio(
                search.k, search.m, f"has a net expected return above the risk-free rate {problem.risk_free_rate:g}"
            )
        master.add_cuts(point.point, point.scale, master=point)
        pattern = search.pad(point.pattern)
        candidate = search.evaluate(pattern)
        if candidate is not None:
            return
        master.exclude(pattern, subsets=search.m is None)
    raise OptimizationError(f"no feasible support found within {MAX_ITERATIONS} iterations")


def _optimize(
    backend: _Backend, k: int | None, m: float | None, started: float, time_limit_s: float | None
) -> OptimizationResult:
    """The outer-approximation search of the module docstring, on one backend."""
    problem = backend.problem
    relaxed = _without_cardinality(problem)
    left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - started)
    relaxation = backend.solve(relaxed, left)  # infeasible without cardinality: infeasible with it
    if _meets_cardinality(relaxation.weights, k, m):
        return replace(relaxation, solve_time_ms=(time.perf_counter() - started) * 1000.0)
    order = np.argsort(-np.abs(relaxation.weights), kind="stable")
    search = _Search(backend, k, m, started, time_limit_s, order)
    iterations, closed = 0, False
    spec: MasterSpec | None = None
    try:
        for pattern in _rounded_patterns(relaxation.weights, problem, k, m):
            search.evaluate(pattern)
        min_risk = 0.0
        if problem.objective is Objective.MAX_SHARPE:
            lowest = backend.solve(replace(relaxed, objective=Objective.MIN_VOLATILITY), search.time_left())
            min_risk = backend.min_risk(lowest)
            if not min_risk > 1e-9:
                raise InvalidInputError.for_field(
                    "max_holdings",
                    f"max Sharpe with a cardinality or minimum position constraint needs a positive least risk over "
                    f"the constraints (got {min_risk:.3g}; e.g. net exposure bounds that allow an all-cash portfolio)",
                )
            if search.best is None:
                _first_feasible(backend, search)
        spec = backend.spec(problem)
        master = search.master(spec)
        start = backend.candidate(relaxation)
        if start is not None:
            master.add_cuts(start.point, start.scale)
        master.add_perspective_grid(start.scale if start is not None else 1.0)
        while iterations < MAX_ITERATIONS:
            scale_max = 1.0
            if problem.objective is Objective.MAX_SHARPE:
                assert search.best is not None
                scale_max = backend.scale_bound(search.best.value, min_risk)
            try:
                point = master.solve(scale_max, search.time_left())
            except OptimizationError:
                if search.best is None:
                    raise
                search.unproven = True  # HiGHS failed: keep the incumbent, unproven
                break
            iterations += 1
            if point is None:
                closed = True
                break
            if search.best is not None and _gap_closed(search.best.value, point.value):
                closed = True
                break
            master.add_cuts(point.point, point.scale, master=point)
            pattern = search.pad(point.pattern)
            candidate = search.evaluate(pattern)
            if candidate is not None:
                master.add_cuts(candidate.point, candidate.scale)
            if search.best is not None and _gap_closed(search.best.value, point.value):
                closed = True
                break
            master.exclude(pattern, subsets=m is None)
    except DeadlineExceededError:
        if search.best is None:
            raise
    best = search.best
    if best is None:
        raise _no_portfolio(k, m)
    weights = best.result.weights
    violations = backend.violations(weights)
    certain = closed and not search.unproven and best.result.status == "OPTIMAL"
    milp = spec is not None and spec.quadratic is None and not spec.cones
    return replace(
        best.result,
        status="OPTIMAL" if certain else "OPTIMAL_INACCURATE",
        iterations=iterations,
        solver=_SOLVER,
        solve_time_ms=(time.perf_counter() - started) * 1000.0,
        constraints_satisfied=not violations,
        violations=violations,
        fallback_used=search.fallback_used,
        solve_path="MILP" if milp else "MIP_OUTER_APPROXIMATION",
    )


# --- entry points ----------------------------------------------------------------------------------------------------


def optimize_cardinality(
    model: ProblemModel, solve: ContinuousSolve, *, time_limit_s: float | None = None
) -> OptimizationResult:
    """Solve a mean-variance problem with ``max_holdings`` and/or ``min_position_weight`` exactly.

    Outer approximation with a HiGHS MILP master and continuous subproblems (see the module docstring).

    Parameters
    ----------
    model : ProblemModel
        A pre-checked model with a ``Cardinality`` family: K = ``max_holdings`` and/or m = ``min_position_weight``,
        any objective and any other family.
    solve : callable
        Solves the continuous problem on one support (``ContinuousSolve``).
    time_limit_s : float, optional
        Wall-clock limit of the whole search in seconds.

    Returns
    -------
    OptimizationResult
        Weights (N,) with at most K names above ``HELD_THRESHOLD`` in absolute value, each at least m; ``solver``
        ``HIGHS``, ``solve_path`` ``MIP_OUTER_APPROXIMATION`` (``MILP`` for max return without cones; that of the
        continuous path when its optimum already meets both constraints), ``iterations`` the master solves.
        ``status`` is ``OPTIMAL`` when the gap closed (within ``GAP_TOLERANCE``), ``OPTIMAL_INACCURATE`` for the
        incumbent at the time limit or the iteration cap, or when a subproblem failed numerically.

    Raises
    ------
    InvalidInputError
        Max Sharpe where the least volatility is 0.
    InfeasibleError
        The continuous relaxation or HiGHS proved that no portfolio meets the constraints.
    DeadlineExceededError
        ``time_limit_s`` ran out before any feasible portfolio was found.
    OptimizationError
        A solver failed.
    """
    started = time.perf_counter()
    cardinality = model.cardinality
    assert cardinality is not None
    backend = _MeanVarianceBackend(model.problem, model.moments, solve)
    return _optimize(backend, cardinality.max_holdings, cardinality.min_position, started, time_limit_s)


def optimize_scenario_cardinality(
    model: ProblemModel, spec: ScenarioSpec, solve: ContinuousSolve, *, time_limit_s: float | None = None
) -> OptimizationResult:
    """Solve a scenario risk-measure problem (CVaR, MAD, CDaR) with cardinality and/or minimum position size.

    Without a volatility cap the program is a MILP, solved in one HiGHS call (``solve_path`` ``MILP``); the max
    ratio needs its κ bound first (see the module docstring).

    Parameters
    ----------
    model : ProblemModel
        A pre-checked model with a ``Cardinality`` family, as for ``optimize_risk_measure``.
    spec : ScenarioSpec
        The validated scenarios, measure, α, P and cap.
    solve : callable
        Solves the continuous scenario problem on one support (``ContinuousSolve``).
    time_limit_s : float, optional
        Wall-clock limit in seconds.

    Returns
    -------
    OptimizationResult
        As ``optimize_cardinality``; ``objective_value`` as ``optimize_risk_measure`` reports it.

    Raises
    ------
    InvalidInputError, InfeasibleError, DeadlineExceededError, OptimizationError
        As ``optimize_cardinality``.
    """
    started = time.perf_counter()
    cardinality = model.cardinality
    assert cardinality is not None
    backend = _ScenarioBackend(model.problem, model.moments, spec, solve)
    return _optimize(backend, cardinality.max_holdings, cardinality.min_position, started, time_limit_s)
