"""Solving a cvxpy program: Clarabel first, its defaults when the tight tolerances are out of reach, SCS last.

Every convex program of the engine (the cached mean-variance programs, CVaR/MAD/CDaR, robust, the elastic program of
the relaxation) is solved by :func:`solve_program`, so they share the tolerance retry, the fallback and the mapping of
solver outcomes to domain errors. Solvers: Clarabel (Goulart & Chen, 2024, arXiv:2405.12762), SCS (O'Donoghue et al.,
2016) and HiGHS (Huangfu & Hall, 2018) through cvxpy.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from services.errors import DeadlineExceededError, InfeasibleError, OptimizationError, PreconditionViolation

_SOLVER = "CLARABEL"


CLARABEL_SETTINGS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10, "tol_ktratio": 1e-8}


_FALLBACK_SOLVER = "SCS"


SCS_SETTINGS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}
"""The fallback's settings: SCS (first-order, splitting) to its tightest practical accuracy."""


_DECISIVE = {
    cp.OPTIMAL,
    cp.OPTIMAL_INACCURATE,
    cp.INFEASIBLE,
    cp.INFEASIBLE_INACCURATE,
    cp.UNBOUNDED,
    cp.UNBOUNDED_INACCURATE,
}
"""Statuses that settle a solve; anything else (an error, a limit) goes to the fallback solver."""


CLARABEL_DEFAULTS = {"tol_gap_abs": 1e-8, "tol_gap_rel": 1e-8, "tol_feas": 1e-8, "tol_ktratio": 1e-6}
"""Clarabel's own defaults, passed explicitly on the fallback solve: cvxpy keeps a re-solved problem's solver
settings from the previous call unless they are given again."""


def _solve(
    cvx_problem: cp.Problem,
    options: Mapping[str, float | str],
    *,
    started: float,
    time_limit_s: float | None,
    solver: str = _SOLVER,
) -> str:
    """Run the solver once; return the cvxpy status (solver failures become domain errors)."""
    # Always set the time limit: a cached program would otherwise keep the previous call's (cvxpy re-uses the
    # solver object and its settings between solves of the same problem).
    remaining = float("inf")
    if time_limit_s is not None:
        remaining = time_limit_s - (time.perf_counter() - started)
        if remaining <= 0:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s")
    if solver == _SOLVER:
        options = {**options, "time_limit": remaining}
    else:  # SCS: 0 means no limit
        options = {**options, "time_limit_secs": remaining if np.isfinite(remaining) else 0.0}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")  # reported in the status
            cvx_problem.solve(solver=solver, **options)  # type: ignore[no-untyped-call]
    except cp.error.SolverError as exc:
        if time_limit_s is not None and time.perf_counter() - started >= time_limit_s:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s") from exc
        raise OptimizationError(f"{solver} failed: {exc}") from exc
    return str(cvx_problem.status)


@dataclass(frozen=True, slots=True)
class SolveOutcome:
    """How a convex program was solved."""

    status: str
    """``OPTIMAL`` or ``OPTIMAL_INACCURATE``."""
    solver: str
    """The solver whose answer the program's variables hold."""
    fallback_used: bool
    """Whether Clarabel failed and SCS answered."""


def solve_program(
    cvx_problem: cp.Problem,
    settings: Mapping[str, float | str],
    *,
    description: str,
    started: float,
    time_limit_s: float | None,
) -> SolveOutcome:
    """Solve with Clarabel (its defaults if the given tolerances prove out of reach, SCS if it fails).

    Every program of the engine (mean-variance, CVaR/MAD/CDaR, robust) is solved here, so they share the
    tolerance retry, the fallback and the mapping of solver outcomes to domain errors.

    Parameters
    ----------
    cvx_problem : cvxpy.Problem
        The program; its variables hold the solution on return.
    settings : dict
        Clarabel settings of the first attempt.
    description : str
        What was solved, for error messages (e.g. ``MIN_VOLATILITY with CVAR``).
    started : float
        ``time.perf_counter()`` at the start of the call, for ``time_limit_s``.
    time_limit_s : float, optional
        Wall-clock limit of the whole call in seconds.

    Returns
    -------
    SolveOutcome
        Status, the solver that answered and whether the fallback was used.

    Raises
    ------
    InfeasibleError
        The solver proved the constraints infeasible (``SOLVER_INFEASIBLE``).
    DeadlineExceededError
        No time was left, or the solver hit ``time_limit_s``.
    OptimizationError
        Unbounded, or both solvers failed.
    """
    if time_limit_s is not None and time_limit_s <= 0:
        raise DeadlineExceededError("no time left before the call's deadline to solve")
    solver, fallback_used = _SOLVER, False
    try:
        status = _solve(cvx_problem, dict(settings), started=started, time_limit_s=time_limit_s)
    except OptimizationError:
        status = "solver_error"
    if status not in _DECISIVE:
        # Clarabel failed (numerical trouble, iteration limit): the first-order SCS is the second opinion.
        solver, fallback_used = _FALLBACK_SOLVER, True
        status = _solve(cvx_problem, dict(SCS_SETTINGS), started=started, time_limit_s=time_limit_s, solver=solver)
    elif status == cp.OPTIMAL_INACCURATE:
        # The tight tolerances were out of reach (e.g. a binding cone): Clarabel's defaults may still certify
        # optimality; keep whichever answer is better certified.
        tight = {variable: variable.value for variable in cvx_problem.variables()}
        status = _solve(cvx_problem, {**settings, **CLARABEL_DEFAULTS}, started=started, time_limit_s=time_limit_s)
        if status != cp.OPTIMAL:
            status = cp.OPTIMAL_INACCURATE
            for variable, value in tight.items():
                variable.value = value
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise InfeasibleError(
            "the solver proved the constraints infeasible (no portfolio meets all the constraints together)",
            precondition_violations=(
                PreconditionViolation(
                    "SOLVER_INFEASIBLE", "constraints", f"{solver} reported {status} for {description}"
                ),
            ),
        )
    if status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
        raise OptimizationError(f"{solver} reported {description} unbounded")
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        if time_limit_s is not None and time.perf_counter() - started >= time_limit_s:
            raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s")
        raise OptimizationError(f"{solver} ended with status {status} for {description}")
    return SolveOutcome("OPTIMAL" if status == cp.OPTIMAL else "OPTIMAL_INACCURATE", solver, fallback_used)


def solve_highs(
    cvx_problem: cp.Problem,
    *,
    started: float,
    time_limit_s: float | None,
    highs_options: dict[str, str] | None = None,
) -> SolveOutcome | None:
    """Solve an LP with HiGHS; None when it does not end optimal (the caller then uses Clarabel).

    ``highs_options`` are HiGHS's own options (e.g. ``{"solver": "ipm"}`` for its interior point method, which
    ends with a crossover to a basic solution); by default HiGHS chooses (the dual simplex on these LPs).
    """
    remaining = None if time_limit_s is None else time_limit_s - (time.perf_counter() - started)
    if remaining is not None and remaining <= 0:
        return None
    options: dict[str, object] = {} if remaining is None else {"time_limit": remaining}
    if highs_options:
        options["highs_options"] = dict(highs_options)
    try:
        cvx_problem.solve(solver="HIGHS", **options)  # type: ignore[no-untyped-call]
    except cp.error.SolverError:
        return None
    if cvx_problem.status != cp.OPTIMAL:
        return None
    return SolveOutcome("OPTIMAL", "HIGHS", False)


def remaining_time(started: float, time_limit_s: float | None) -> float:
    """Seconds left before ``time_limit_s`` (inf without one).

    Raises
    ------
    DeadlineExceededError
        No time is left.
    """
    if time_limit_s is None:
        return float("inf")
    remaining = time_limit_s - (time.perf_counter() - started)
    if remaining <= 0:
        raise DeadlineExceededError(f"the solver did not finish within {time_limit_s:.3f} s")
    return remaining


def iterations(cvx_problem: cp.Problem) -> int:
    """The solver's iteration count of the last solve (0 when it reports none)."""
    stats = cvx_problem.solver_stats
    return int(stats.num_iters or 0) if stats is not None else 0
