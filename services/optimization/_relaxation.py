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

The relaxed limits are the original ones moved by the slack (plus 1e-9, so the relaxed problem is strictly
solvable), returned as a new ``PortfolioProblem`` together with one ``Relaxation`` per moved limit.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import cvxpy as cp
import numpy as np

from services.errors import InfeasibleError
from services.optimization._mean_variance import (
    CLARABEL_SETTINGS,
    _covariance_factor,
    _desk,
    _sector_rows,
    net_exposure_range,
    solve_program,
)
from services.types import FloatArray, Moments, PortfolioProblem, Relaxation, SectorLimit

SLACK_THRESHOLD = 1e-7
"""Slacks at or below this are solver noise: the constraint is not reported as relaxed."""
_MARGIN = 1e-7
"""Added to each relaxation so the relaxed problem is strictly (not just barely) feasible for the re-solve; a
relaxed positive minimum weight never goes below 0."""


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
        From the validation of the desk families (as the original solve would).
    DeadlineExceededError
        No time was left.
    """
    started = time.perf_counter()
    n = problem.n_assets
    lower, upper = problem.lower_bounds, problem.upper_bounds
    desk = _desk(problem)
    rows = _sector_rows(problem)
    w = cp.Variable(n)
    slacks: list[cp.Variable] = []

    def slack(size: int | None = None) -> cp.Variable:
        variable = cp.Variable(size, nonneg=True) if size is not None else cp.Variable(nonneg=True)
        slacks.append(variable)
        return variable

    below, above = slack(n), slack(n)
    # A minimum weight may fall to 0, never below: long-only (and a given short limit) is a mandate, not a limit.
    constraints: list[cp.Constraint] = [w >= lower - below, w <= upper + above, below <= np.maximum(lower, 0.0)]
    net = net_exposure_range(problem)
    net_low = net_high = None
    if net is None:
        constraints.append(cp.sum(w) == 1)
    else:
        if np.isfinite(net[0]):
            net_low = slack()
            constraints.append(cp.sum(w) >= net[0] - net_low)
        if np.isfinite(net[1]):
            net_high = slack()
            constraints.append(cp.sum(w) <= net[1] + net_high)
    group_min: dict[int, cp.Variable] = {}
    group_max: dict[int, cp.Variable] = {}
    for k, row in enumerate(rows):
        if row.min_weight is not None:
            group_min[k] = slack()
            constraints.append(row.members @ w >= row.min_weight - group_min[k])
        if row.max_weight is not None:
            group_max[k] = slack()
            constraints.append(row.members @ w <= row.max_weight + group_max[k])
    trades = cp.Variable(n, nonneg=True)
    constraints += [trades >= w - desk.current, trades >= desk.current - w]
    net_return = moments.expected_returns @ w
    if net is not None:
        net_return = net_return + problem.risk_free_rate * (1 - cp.sum(w))
    if desk.costs is not None:
        net_return = net_return - desk.costs @ trades
    factor = _covariance_factor(moments.covariance)
    singles: dict[str, tuple[cp.Variable, float]] = {}
    if problem.min_return is not None:
        singles["min_return"] = (slack(), problem.min_return)
        constraints.append(net_return >= problem.min_return - singles["min_return"][0])
    if problem.max_volatility is not None:
        singles["max_volatility"] = (slack(), problem.max_volatility)
        constraints.append(cp.norm(factor.T @ w, 2) <= problem.max_volatility + singles["max_volatility"][0])
    if desk.turnover_limit is not None:
        singles["turnover_limit"] = (slack(), desk.turnover_limit)
        constraints.append(cp.sum(trades) <= desk.turnover_limit + singles["turnover_limit"][0])
    cap_slack = None
    if desk.turnover_caps is not None:
        finite = np.isfinite(desk.turnover_caps)
        cap_slack = slack(n)
        caps = np.where(finite, desk.turnover_caps, 0.0)
        constraints.append(trades[finite] <= caps[finite] + cap_slack[finite])
        if (~finite).any():
            constraints.append(cap_slack[~finite] == 0)
    if desk.leverage_limit is not None:
        singles["leverage_limit"] = (slack(), desk.leverage_limit)
        constraints.append(cp.norm1(w) <= desk.leverage_limit + singles["leverage_limit"][0])
    if desk.tracking_error_limit is not None and desk.benchmark is not None:
        singles["tracking_error_limit"] = (slack(), desk.tracking_error_limit)
        constraints.append(
            cp.norm(factor.T @ (w - desk.benchmark), 2)
            <= desk.tracking_error_limit + singles["tracking_error_limit"][0]
        )
    if desk.beta_tolerance is not None and desk.betas is not None:
        singles["beta_tolerance"] = (slack(), desk.beta_tolerance)
        exposure = desk.betas @ w
        constraints += [
            exposure <= desk.beta_tolerance + singles["beta_tolerance"][0],
            exposure >= -desk.beta_tolerance - singles["beta_tolerance"][0],
        ]
    elastic = cp.Problem(cp.Minimize(sum(cp.sum(s) for s in slacks)), constraints)
    try:
        solve_program(
            elastic, CLARABEL_SETTINGS, description="the elastic program", started=started, time_limit_s=time_limit_s
        )
    except InfeasibleError:
        return None  # only the budget with the unrelaxable families: nothing here helps
    if elastic.value is None or float(elastic.value) <= SLACK_THRESHOLD:
        return None

    def amount(variable: cp.Variable | None) -> float:
        if variable is None or variable.value is None:
            return 0.0
        value = float(variable.value)
        return value + _MARGIN if value > SLACK_THRESHOLD else 0.0

    def amounts(variable: cp.Variable) -> FloatArray:
        values = np.asarray(variable.value, dtype=np.float64)
        return np.where(values > SLACK_THRESHOLD, values + _MARGIN, 0.0)

    relaxations: list[Relaxation] = []
    changes: dict[str, Any] = {}
    new_lower, new_upper = lower - amounts(below), upper + amounts(above)
    new_lower = np.where((lower >= 0.0) & (new_lower < lower), np.maximum(new_lower, 0.0), new_lower)
    for i in np.flatnonzero(new_lower < lower):
        sid = problem.strategy_ids[i]
        relaxations.append(
            Relaxation(
                f"constraints.strategy_bounds[{sid}].min_weight",
                float(lower[i]),
                float(new_lower[i]),
                f"lower the minimum weight of {sid} from {lower[i]:.6g} to {new_lower[i]:.6g}",
            )
        )
    for i in np.flatnonzero(new_upper > upper):
        sid = problem.strategy_ids[i]
        relaxations.append(
            Relaxation(
                f"constraints.strategy_bounds[{sid}].max_weight",
                float(upper[i]),
                float(new_upper[i]),
                f"raise the maximum weight of {sid} from {upper[i]:.6g} to {new_upper[i]:.6g}",
            )
        )
    changes["lower_bounds"], changes["upper_bounds"] = new_lower, new_upper
    limits = list(problem.sector_limits)
    for k, row in enumerate(rows):
        low_by, high_by = amount(group_min.get(k)), amount(group_max.get(k))
        if not (low_by or high_by):
            continue
        limit = limits[k]
        new_min = None if limit.min_weight is None else limit.min_weight - low_by
        new_max = None if limit.max_weight is None else limit.max_weight + high_by
        if low_by and limit.min_weight is not None and new_min is not None:
            relaxations.append(
                Relaxation(
                    f"constraints.sector_limits[{k}].min_weight",
                    limit.min_weight,
                    new_min,
                    f"lower the minimum of group '{row.name}' from {limit.min_weight:.6g} to {new_min:.6g}",
                )
            )
        if high_by and limit.max_weight is not None and new_max is not None:
            relaxations.append(
                Relaxation(
                    f"constraints.sector_limits[{k}].max_weight",
                    limit.max_weight,
                    new_max,
                    f"raise the maximum of group '{row.name}' from {limit.max_weight:.6g} to {new_max:.6g}",
                )
            )
        limits[k] = SectorLimit(limit.sector, new_min, new_max, limit.scheme)
    changes["sector_limits"] = tuple(limits)
    directions = {
        "min_return": (-1.0, "lower min_return"),
        "max_volatility": (1.0, "raise max_volatility"),
        "turnover_limit": (1.0, "raise turnover_limit"),
        "leverage_limit": (1.0, "raise leverage_limit"),
        "tracking_error_limit": (1.0, "raise tracking_error_limit"),
        "beta_tolerance": (1.0, "widen beta_tolerance"),
    }
    for name, (variable, original) in singles.items():
        by = amount(variable)
        if not by:
            continue
        sign, verb = directions[name]
        relaxed = original + sign * by
        relaxations.append(
            Relaxation(f"constraints.{name}", original, relaxed, f"{verb} from {original:.6g} to {relaxed:.6g}")
        )
        changes[name] = relaxed
    if cap_slack is not None and desk.turnover_caps is not None:
        by_name = amounts(cap_slack)
        if by_name.any():
            caps = desk.turnover_caps + by_name
            for i in np.flatnonzero(by_name):
                sid = problem.strategy_ids[i]
                relaxations.append(
                    Relaxation(
                        f"constraints.turnover_caps[{sid}]",
                        float(desk.turnover_caps[i]),
                        float(caps[i]),
                        f"raise the turnover cap of {sid} from {desk.turnover_caps[i]:.6g} to {caps[i]:.6g}",
                    )
                )
            changes["turnover_caps"] = caps
    if net is not None:
        low_by, high_by = amount(net_low), amount(net_high)
        if low_by:
            relaxed = net[0] - low_by
            relaxations.append(
                Relaxation(
                    "constraints.min_net_exposure",
                    net[0],
                    relaxed,
                    f"lower min_net_exposure from {net[0]:.6g} to {relaxed:.6g}",
                )
            )
            changes["min_net_exposure"] = relaxed
        if high_by:
            relaxed = net[1] + high_by
            relaxations.append(
                Relaxation(
                    "constraints.max_net_exposure",
                    net[1],
                    relaxed,
                    f"raise max_net_exposure from {net[1]:.6g} to {relaxed:.6g}",
                )
            )
            changes["max_net_exposure"] = relaxed
    if not relaxations:
        return None
    return dataclasses.replace(problem, **changes), tuple(relaxations)
