"""The smallest relaxation of an infeasible portfolio problem: which constraints conflict, and by how much.

After a problem proves infeasible (a pre-check or the solver), an elastic program (Chinneck, *Feasibility and
Infeasibility in Optimization*, 2008, ch. 6: elastic filtering) gives every relaxable constraint row a
non-negative slack and minimises the sum of the slacks over the constraint set alone (the objective plays no
part in feasibility):

- per-strategy bounds: l − s ≤ w ≤ u + s (each side of each strategy), where a positive minimum may fall to 0
  but never below: long-only (or a given short limit) is a mandate and is never relaxed;
- group (sector) limits: each minimum and maximum row;
- ``min_return`` (net of costs, cash leg included) and ``max_volatility``;
- turnover limit, each per-name turnover cap, leverage, tracking error, beta tolerance, net exposure bounds.

The budget Σw = 1 is never relaxed. All slacks are in the constraints' own units (weight fractions, annualised
decimals), so the sum is an L1 relaxation measured in "fractions of the portfolio"; the minimiser tells which
families conflict (those with a positive slack) and the least each must give. Cardinality and minimum position
size are not relaxed (they are mixed-integer; their pre-checks name the conflict).

The relaxed limits are the original ones moved by the slack (plus ``RELAXATION_MARGIN``, so the relaxed problem is
strictly solvable), returned as a new ``PortfolioProblem`` together with one ``Relaxation`` per moved limit.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import cvxpy as cp

from services.errors import InfeasibleError
from services.optimization._constraints import SLACK_THRESHOLD
from services.optimization._model import ProblemModel
from services.optimization._problem import PortfolioProblem, Relaxation
from services.optimization._program import ProgramBuilder
from services.optimization._solver import CLARABEL_SETTINGS, solve_program
from services.types import Moments

_WRITE_ORDER = {"bounds": 0, "budget": 1, "net_exposure": 1, "group_limits": 2}
"""Families written first into the elastic program."""
_ORDER = (
    "bounds",
    "group_limits",
    "min_return",
    "max_volatility",
    "turnover_limit",
    "leverage_limit",
    "tracking_error_limit",
    "beta_tolerance",
    "turnover_caps",
    "net_exposure",
)
"""The order in which relaxations are reported: per-name bounds, group limits, the scalar limits, per-name caps, net
exposure."""


def find_relaxation(
    problem: PortfolioProblem, moments: Moments, *, time_limit_s: float | None = None
) -> tuple[PortfolioProblem, tuple[Relaxation, ...]] | None:
    """The least L1 relaxation of the constraint limits that makes ``problem`` feasible.

    Parameters
    ----------
    problem : PortfolioProblem
        An infeasible problem over N strategies.
    moments : Moments
        Annualised expected returns (N,) and covariance (N, N) of the run (they shape the return and risk limits).
    time_limit_s : float, optional
        Wall-clock limit of the elastic solve in seconds.

    Returns
    -------
    tuple of (PortfolioProblem, tuple of Relaxation) or None
        The relaxed problem and what was relaxed; None when no relaxation of these limits helps (the elastic
        program has zero slack, so the conflict lies elsewhere, e.g. max Sharpe with no excess return, or
        cardinality) or the elastic program could not be solved.

    Raises
    ------
    InvalidInputError
        From the validation of the constraint families (as the original solve would).
    DeadlineExceededError
        No time was left.
    """
    started = time.perf_counter()
    model = ProblemModel.build(problem, moments)
    builder = ProgramBuilder(model, homogenised=False, elastic=True)
    # Bounds, budget and groups first, then the trade variable and the other limits (the order of the rows and
    # slacks picks the vertex Clarabel lands on when several relaxations have the least total).
    families = sorted(model.convex_constraints, key=lambda family: _WRITE_ORDER.get(family.name, len(_WRITE_ORDER)))
    for family in families:
        if family.name not in _WRITE_ORDER and not builder.has_trades:
            builder.trades()
        family.write(builder)
    if not builder.has_trades:
        builder.trades()
    objective = sum(cp.sum(slack) for slack in builder.slacks.values())
    elastic = cp.Problem(cp.Minimize(objective), builder.constraints)
    try:
        solve_program(
            elastic, CLARABEL_SETTINGS, description="the elastic program", started=started, time_limit_s=time_limit_s
        )
    except InfeasibleError:
        return None  # only the budget with the unrelaxable families: nothing here helps
    if elastic.value is None or float(elastic.value) <= SLACK_THRESHOLD:
        return None
    changes: dict[str, Any] = {}
    relaxed: list[tuple[int, list[Relaxation]]] = []
    for family in families:
        family_changes, family_relaxations = family.relax(builder.slack_values(family), model)
        changes.update(family_changes)
        relaxed.append((_ORDER.index(family.name) if family.name in _ORDER else len(_ORDER), family_relaxations))
    relaxations = tuple(r for _, group in sorted(relaxed, key=lambda item: item[0]) for r in group)
    if not relaxations:
        return None
    return dataclasses.replace(problem, **changes), relaxations
