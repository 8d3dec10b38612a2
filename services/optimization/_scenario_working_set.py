"""Min risk or max ratio with CVaR, MAD or CDaR over many names by column generation: HiGHS on a working set.

The scenario LPs of ``_risk_measures`` have T rows per measure and one column per name; at N = 2000 and
T = 756 the whole LP took 7-34 s. Their optima hold few names (a min-CVaR portfolio of 2000 names about 50), so
the LP is solved on a working set S of names, the others held at their zero lower bound, and the dual prices of
the restricted optimum price every name left out (column generation, as in Gilmore & Gomory, "A linear
programming approach to the cutting-stock problem", Operations Research 9(6), 1961: the revised simplex method's
pricing step over columns not in the LP; Lübbecke & Desrosiers, "Selected topics in column generation",
Operations Research 53(6), 2005): with y the row duals (HiGHS's, through ``scipy.optimize.linprog``), name i's
reduced cost is d_i = c_i − a_iᵀy, where a_i is its column and c_i = 0. The restricted optimum with every
d_i ≥ 0 (to ``REDUCED_COST_TOL``) is an optimum of the whole LP (the duals are feasible for it; LP duality);
otherwise the names of most negative d_i join S and the restricted LP is solved again.

Scope (``ScenarioWorkingSetBackend.supports``): min risk (``Objective.MIN_VOLATILITY``) or max ratio
(``Objective.MAX_SHARPE``: max (μ − r_f)ᵀw / ρ(w), homogenised as in ``_risk_measures``) under the budget
(1ᵀw = 1), finite non-negative bounds (zero lower bounds for the max ratio), group limits and min_return (their
rows, ``Constraint.rows``, priced with their duals), no other constraint family, no cap on the measure, at least
``WORKING_SET_MIN_ASSETS`` names. The first working set is ``_clarabel_direct.first_working_set``'s (with the
names the group minima and min_return need). Anything else, or a working set that outgrows ``WORKING_SET_MAX``,
goes to the next backend of ``SCENARIO_BACKENDS``.

Formulations (R: the T × |S| scenario returns of the working set, w its weights, c = 1/((1 − α)T)):

- CVaR: min τ + c·Σe  s.t.  −R w − τ − e ≤ 0, e ≥ 0 (rows: the T losses);
- MAD: min (2/T)·Σd  s.t.  −(R − r̄) w − d ≤ 0, d ≥ 0 (rows: the T centred returns);
- CDaR: min τ + c·Σe  s.t.  u_{t−1} − u_t − R_t w ≤ 0 (u_0 = 0), u_t − τ − e_t ≤ 0, u, e ≥ 0 (rows: the
  T drawdown recursions, then the T excesses; a name's column is in the first T rows only);
- with 1ᵀw = 1 (a name's column: 1); for the max ratio w → y = κw with (μ − r_f)ᵀy = 1, 1ᵀy − κ = 0 and
  y_i − u_i κ ≤ 0 for the caps below 1 (a name's column: μ_i − r_f and 1; a name left out is in no cap row).
"""

from __future__ import annotations

import time
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linprog

from services.optimization._clarabel_direct import first_working_set
from services.optimization._constraints import Bounds, Budget, Constraint, GroupLimits, LinearRows, MinReturn
from services.optimization._metrics import RiskMeasure
from services.optimization._model import ProblemModel
from services.optimization._problem import Objective, OptimizationResult
from services.optimization._risk_measures import ScenarioSpec
from services.types import FloatArray

WORKING_SET_MIN_ASSETS: Final = 256
"""Fewest names for which the working set is tried first. Measured (``benchmarks.methods`` inputs, T = 756, min
risk, long only, median of 3): at N = 500 CVaR / MAD / CDaR took 0.20 / 0.29 / 0.46 s against 0.37 / 0.53 / 1.34 s
for the whole LP; at N = 200 0.12 / 0.27 / 0.53 s against 0.15 / 0.41 / 0.48 s; at N = 100 the whole LP is
faster for MAD and CDaR (0.11 / 0.16 s against 0.16 / 0.27 s)."""
WORKING_SET_START: Final = 64
"""Most names one round adds, and most non-zero lower bounds (the first working set is
``_clarabel_direct.first_working_set``'s)."""
WORKING_SET_MAX: Final = 512
"""Largest working set before the whole LP is left to the next backend."""
REDUCED_COST_TOL: Final = 1e-9
"""A name left out joins the working set when its reduced cost is below −this (per-period return units)."""
_FAMILIES: Final[frozenset[type[Constraint]]] = frozenset({Budget, Bounds, GroupLimits, MinReturn})


class ScenarioWorkingSetBackend:
    """Column generation on the scenario LP for min risk or max ratio with CVaR, MAD or CDaR over many names.

    Its answers report solver ``HIGHS`` (dual simplex: a vertex, exact to HiGHS's 1e-7 tolerances, as
    ``ScenarioSimplexBackend``'s) and, as ``iterations``, the number of restricted LPs solved. Measured on this
    project's 2-core machine (``benchmarks.methods`` inputs, T = 756, 1-3 calls): at N = 2000 min CVaR took
    0.6-0.7 s, MAD 0.7-1.2 s and CDaR 1.7-3.0 s (long only, and with a 2 % cap), against 7-10 s, 11.6-14.6 s and
    18-34 s for the whole LP, and the max ratio (r_f = 2 %) 0.5-0.6 s, 0.45-0.5 s and 0.8-1.0 s; the same optima
    as the whole LP (1.4e-13 relative for min risk at N = 600, 3.8e-15 for the max ratio at N = 400).
    """

    solve_path = "WORKING_SET"

    def supports(self, model: ProblemModel, spec: ScenarioSpec) -> bool:
        """Min risk or max ratio under the budget, finite non-negative bounds, group limits and min_return only.

        No cap on ρ, no net exposure, no costs.

        N ≥ ``WORKING_SET_MIN_ASSETS``; at most ``WORKING_SET_START`` non-zero lower bounds for min risk, none for
        the max ratio (its homogenised bounds l·κ ≤ y would be rows of every name).
        """
        ratio = model.objective is Objective.MAX_SHARPE
        return (
            (model.objective is Objective.MIN_VOLATILITY or ratio)
            and model.n_assets >= WORKING_SET_MIN_ASSETS
            and model.families <= _FAMILIES
            and model.budget == (1.0, 1.0)
            and not model.has_net_exposure
            and model.cardinality is None
            and model.costs is None
            and spec.max_risk is None
            and bool(np.all(np.isfinite(model.upper)))
            and bool(np.all(model.lower >= 0.0))
            and int(np.count_nonzero(model.lower)) <= (0 if ratio else WORKING_SET_START)
        )

    def solve(
        self, model: ProblemModel, spec: ScenarioSpec, *, started: float, time_limit_s: float | None
    ) -> OptimizationResult | None:
        """The optimum of the whole LP found on a working set, or None (the next backend answers)."""
        first = first_working_set(model)
        if first is None:
            return None
        blocks = [family.rows(model) for family in model.constraints if isinstance(family, (GroupLimits, MinReturn))]
        linear = None
        if blocks:
            linear = LinearRows(
                np.vstack([b.matrix for b in blocks if b is not None]),
                np.concatenate([b.lower for b in blocks if b is not None]),
                np.concatenate([b.upper for b in blocks if b is not None]),
            )
        found = solve_working_set(
            spec.scenarios,
            spec.risk_measure,
            spec.alpha,
            model.lower,
            model.upper,
            first,
            excess_returns=model.excess_returns if model.objective is Objective.MAX_SHARPE else None,
            linear=linear,
            deadline=None if time_limit_s is None else time.perf_counter() + time_limit_s,
        )
        if found is None:
            return None
        weights, rounds = found
        weights = model.snap(weights)
        return model.result(
            weights,
            status="OPTIMAL",
            solver="HIGHS",
            iterations=rounds,
            started=started,
            solve_path=self.solve_path,
            objective_value=spec.objective_value(weights, model),
        )


def solve_working_set(
    scenarios: FloatArray,
    risk_measure: RiskMeasure,
    alpha: float,
    lower: FloatArray,
    upper: FloatArray,
    first: NDArray[np.bool_],
    *,
    excess_returns: FloatArray | None = None,
    linear: LinearRows | None = None,
    deadline: float | None = None,
) -> tuple[FloatArray, int] | None:
    """Minimise ρ(w), or maximise (μ − r_f)ᵀw / ρ(w), s.t. 1ᵀw = 1, l ≤ w ≤ u, by column generation over the names.

    Parameters
    ----------
    scenarios : ndarray of shape (T, N)
        Per-period simple returns.
    risk_measure : RiskMeasure
        CVaR, MAD or CDaR (``_risk_measures``' definitions).
    alpha : float
        Confidence level of CVaR and CDaR, in (0, 1).
    lower, upper : ndarray of shape (N,)
        Finite bounds, 0 ≤ l ≤ u, Σl ≤ 1 ≤ Σu (l = 0 for the max ratio).
    first : ndarray of bool of shape (N,)
        The first working set (``_clarabel_direct.first_working_set``: the names of non-zero lower bound, the best
        ranked by the diagonal-Σ solution, and those the budget, the group minima and min_return need).
    excess_returns : ndarray of shape (N,), optional
        μ − r_f (any positive scale, e.g. annualised): the max ratio, solved homogenised (y = κw, (μ − r_f)ᵀy = 1,
        1ᵀy = κ, y ≤ uκ, as ``_risk_measures``); None: min risk.
    linear : LinearRows, optional
        Further rows lower ≤ A w ≤ upper over the N names (group limits, min_return: ``Constraint.rows``); for the
        max ratio they read A y ≤ upper·κ and A y ≥ lower·κ.
    deadline : float, optional
        ``time.perf_counter()`` after which no further round starts.

    Returns
    -------
    (ndarray of shape (N,), int) or None
        The weights and the number of restricted LPs solved; None when a restricted LP does not end optimal (or
        is infeasible: no name of positive excess return in the working set), the working set would exceed
        ``WORKING_SET_MAX`` names, or the deadline passed.
    """
    n = scenarios.shape[1]
    chosen = first.copy()
    columns = scenarios - scenarios.mean(axis=0) if risk_measure is RiskMeasure.MAD else scenarios
    rounds = 0
    while True:
        working = np.flatnonzero(chosen)
        if working.size > WORKING_SET_MAX or (deadline is not None and time.perf_counter() > deadline):
            return None
        left = None if deadline is None else deadline - time.perf_counter()
        excess = None if excess_returns is None else excess_returns[working]
        rows = None if linear is None else LinearRows(linear.matrix[:, working], linear.lower, linear.upper)
        solved = _restricted(
            columns[:, working], risk_measure, alpha, lower[working], upper[working], excess, rows, time_limit_s=left
        )
        rounds += 1
        if solved is None:
            return None
        weights_s, row_duals, equality_duals, linear_duals = solved
        # d_i = c_i − a_iᵀy with c_i = 0 and a_i: −R_i in the measure's rows, 1 in the budget row (min risk);
        # (μ_i − r_f, 1) in the rows (μ − r_f)ᵀy = 1 and 1ᵀy − κ = 0 (max ratio; a name left out is in no cap row);
        # A_i in the further rows (signed as written: +A_i in a ≤ row, −A_i in a ≥ row, A_i in an equality).
        reduced = columns.T @ row_duals - equality_duals[-1]
        if excess_returns is not None:
            reduced -= excess_returns * equality_duals[0]
        if linear is not None:
            reduced -= linear.matrix.T @ linear_duals
        violation = np.where(chosen | (upper <= 0.0), 0.0, -reduced)
        violators = np.flatnonzero(violation > REDUCED_COST_TOL)
        if violators.size == 0:
            weights = np.zeros(n)
            weights[working] = weights_s
            return weights, rounds
        chosen[violators[np.argsort(-violation[violators], kind="stable")[:WORKING_SET_START]]] = True


def _measure_rows(
    returns: FloatArray, risk_measure: RiskMeasure, alpha: float
) -> tuple[sparse.csr_matrix, FloatArray, FloatArray, FloatArray]:
    """The measure's rows over [w (k), its auxiliaries]: the ≤ 0 rows, and the auxiliaries' costs and bounds.

    The first T rows hold the names' columns (−R); CDaR has T more (the excesses over τ), without them.
    """
    periods, k = returns.shape
    identity = sparse.identity(periods, format="csr")
    names = sparse.csr_matrix(-returns)
    free, nonneg, unbounded = np.full(1, -np.inf), np.zeros(periods), np.full(periods, np.inf)
    if risk_measure is RiskMeasure.MAD:  # auxiliaries: d (T)
        rows = sparse.hstack([names, -identity], format="csr")
        return rows, np.full(periods, 2.0 / periods), nonneg, unbounded
    tail = np.full(periods, 1.0 / ((1.0 - alpha) * periods))
    minus_one = sparse.csr_matrix(-np.ones((periods, 1)))
    if risk_measure is RiskMeasure.CVAR:  # auxiliaries: τ, e (T)
        rows = sparse.hstack([names, minus_one, -identity], format="csr")
        return rows, np.concatenate([[1.0], tail]), np.concatenate([free, nonneg]), np.full(periods + 1, np.inf)
    # CDaR, auxiliaries: u (T), τ, e (T); rows u_{t−1} − u_t − R_t w ≤ 0 (u_0 = 0), then u_t − τ − e_t ≤ 0
    recursion = sparse.eye(periods, k=-1, format="csr") - identity
    rows = sparse.vstack(
        [
            sparse.hstack([names, recursion, sparse.csr_matrix((periods, 1)), sparse.csr_matrix((periods, periods))]),
            sparse.hstack([sparse.csr_matrix((periods, k)), identity, minus_one, -identity]),
        ],
        format="csr",
    )
    costs = np.concatenate([np.zeros(periods), [1.0], tail])
    return rows, costs, np.concatenate([nonneg, free, nonneg]), np.full(2 * periods + 1, np.inf)


def _restricted(
    returns: FloatArray,
    risk_measure: RiskMeasure,
    alpha: float,
    lower: FloatArray,
    upper: FloatArray,
    excess_returns: FloatArray | None = None,
    linear: LinearRows | None = None,
    *,
    time_limit_s: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None:
    """The measure's LP over the columns ``returns`` (T × k), and its duals.

    Returns the weights, the first T rows' duals, the equalities', and per row of ``linear`` its net dual (the ≤
    side's minus the ≥ side's, or the equality's): the y with which a name's column A_i enters its reduced cost as
    −A_iᵀy.

    Min risk: variables [w, auxiliaries], the equality 1ᵀw = 1. Max ratio (``excess_returns``): variables
    [y, auxiliaries, κ], the equalities (μ − r_f)ᵀy = 1 and 1ᵀy − κ = 0, rows y_i − u_i κ ≤ 0 for the caps below 1
    (y_i ≤ κ follows from the budget), and w = y/κ. The duals are HiGHS's (``linprog``'s ``marginals``:
    ∂ objective / ∂ right-hand side, ≤ 0 for ``≤`` rows).
    """
    periods, k = returns.shape
    rows, aux_cost, aux_lower, aux_upper = _measure_rows(returns, risk_measure, alpha)
    n_aux = aux_cost.size
    ratio = excess_returns is not None
    n_vars = k + n_aux + (1 if ratio else 0)
    # Further rows: a ≤ side (A w ≤ upper; A y − upper·κ ≤ 0), a ≥ side (−A w ≤ −lower; −A y + lower·κ ≤ 0) or an
    # equality (A w = value; A y − value·κ = 0), each padded to the LP's variables.
    le_rows: list[FloatArray] = []
    le_rhs: list[float] = []
    le_sign: list[tuple[int, float]] = []  # (row of linear, +1 for a ≤ side, −1 for a ≥ side)
    eq_rows: list[FloatArray] = []
    eq_rhs: list[float] = []
    eq_index: list[int] = []
    if linear is not None:
        for r in range(linear.matrix.shape[0]):
            a, low, high = linear.matrix[r], float(linear.lower[r]), float(linear.upper[r])
            padded = np.zeros(n_vars)
            padded[:k] = a
            if low == high:
                if ratio:
                    padded[-1] = -high
                eq_rows.append(padded)
                eq_rhs.append(0.0 if ratio else high)
                eq_index.append(r)
                continue
            if np.isfinite(high):
                row = padded.copy()
                if ratio:
                    row[-1] = -high
                le_rows.append(row)
                le_rhs.append(0.0 if ratio else high)
                le_sign.append((r, 1.0))
            if np.isfinite(low):
                row = -padded
                if ratio:
                    row[-1] = low
                le_rows.append(row)
                le_rhs.append(0.0 if ratio else -low)
                le_sign.append((r, -1.0))
    if excess_returns is None:
        cost = np.concatenate([np.zeros(k), aux_cost])
        a_ub = rows
        a_eq = sparse.csr_matrix(np.concatenate([np.ones(k), np.zeros(n_aux)])[None, :])
        b_eq = np.ones(1)
        b_ub = np.zeros(a_ub.shape[0])
        bounds = np.column_stack([np.concatenate([lower, aux_lower]), np.concatenate([upper, aux_upper])])
    else:
        cost = np.concatenate([np.zeros(k), aux_cost, [0.0]])
        capped = np.flatnonzero(upper < 1.0)
        m = capped.size
        caps = sparse.csr_matrix(
            (
                np.concatenate([np.ones(m), -upper[capped]]),
                (np.tile(np.arange(m), 2), np.concatenate([capped, np.full(m, k + n_aux)])),
            ),
            shape=(m, k + n_aux + 1),
        )
        a_ub = sparse.vstack([sparse.hstack([rows, sparse.csr_matrix((rows.shape[0], 1))]), caps], format="csr")
        a_eq = sparse.csr_matrix(
            np.vstack(
                [
                    np.concatenate([excess_returns, np.zeros(n_aux), [0.0]]),
                    np.concatenate([np.ones(k), np.zeros(n_aux), [-1.0]]),
                ]
            )
        )
        b_eq = np.array([1.0, 0.0])
        b_ub = np.zeros(a_ub.shape[0])
        bounds = np.column_stack(
            [np.concatenate([np.zeros(k), aux_lower, [0.0]]), np.concatenate([np.full(k, np.inf), aux_upper, [np.inf]])]
        )
    measure_and_caps = a_ub.shape[0]
    if le_rows:
        a_ub = sparse.vstack([a_ub, sparse.csr_matrix(np.array(le_rows))], format="csr")
        b_ub = np.concatenate([b_ub, le_rhs])
    n_equalities = a_eq.shape[0]
    if eq_rows:
        a_eq = sparse.vstack([a_eq, sparse.csr_matrix(np.array(eq_rows))], format="csr")
        b_eq = np.concatenate([b_eq, eq_rhs])
    options = {} if time_limit_s is None else {"time_limit": max(time_limit_s, 1e-3)}
    result = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=bounds,
        method="highs-ds",
        options=options,
    )
    if result.status != 0 or result.x is None:
        return None
    inequality_duals = np.asarray(result.ineqlin.marginals, dtype=np.float64)
    duals: NDArray[np.float64] = inequality_duals[:periods]
    all_equalities = np.asarray(result.eqlin.marginals, dtype=np.float64)
    equalities = all_equalities[:n_equalities]
    net = np.zeros(0 if linear is None else linear.matrix.shape[0])
    for position, (r, sign) in enumerate(le_sign):
        net[r] += sign * inequality_duals[measure_and_caps + position]
    for position, r in enumerate(eq_index):
        net[r] += all_equalities[n_equalities + position]
    weights = np.asarray(result.x[:k], dtype=np.float64)
    if excess_returns is not None:
        kappa = float(result.x[-1])
        if not kappa > 1e-12:
            return None
        weights = weights / kappa
    return weights, duals, equalities, net
