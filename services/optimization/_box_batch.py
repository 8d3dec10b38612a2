"""The batch's vectorised front and back for plain box-and-budget problems: checks and results stacked per N.

Most problems of a batch are plain: min volatility, max Sharpe or quadratic utility with the budget 1ᵀw = 1 and
weight bounds, nothing else. For those, building a ``ProblemModel`` per problem, running its pre-checks one by
one and building each result through ``ProblemModel.result`` cost as much as the batched solve itself (about
0.1 ms a problem in Python). This module does the same work on arrays stacked per N:

- :func:`plain_box_rule` recognises a plain problem from its fields (every other field at its default, so any
  constraint family added later sends a problem to the general path by default);
- :func:`admitted` applies the checks the general path applies to such a problem (finite bounds, no crossed
  bound, the bounds' sums around the budget, a positive best excess return for max Sharpe: ``Bounds.precheck``
  and ``ProblemModel._objective_precheck``). A problem that fails any of them, or lies within rounding of its
  threshold, is left to the general path, which raises its error with its field and message;
- :func:`box_results` computes the performance, objective value and the bounds and budget check of the certified
  answers, with the formulas of ``portfolio_performance`` and ``ProblemModel.objective_value``. An answer with a
  violation beyond ``TOLERANCE`` (a certificate's tolerance is relative to large bounds) is left to the general
  result builder, which names it.

Every answer is the same as the general path's to rounding (``tests/services/test_box_batch.py`` compares each
field with ``optimize_mean_variance`` and ``ProblemModel.result``).
"""

from __future__ import annotations

import time
from dataclasses import MISSING, fields
from typing import Final

import numpy as np
from numpy.typing import NDArray

from services.optimization._batch import MAX_BATCH_ASSETS, BatchKind
from services.optimization._constraints import TOLERANCE
from services.optimization._problem import Objective, OptimizationResult, PortfolioPerformance, PortfolioProblem
from services.types import FloatArray, Moments

__all__ = ["admitted", "box_results", "plain_box_rule"]

_PLAIN_FIELDS: Final = frozenset(
    {"symbols", "objective", "lower_bounds", "upper_bounds", "sectors", "classifications", "risk_free_rate",
     "risk_aversion"}
)  # fmt: skip
"""Fields a plain problem may set: sectors and classifications constrain nothing without sector limits."""
_DEFAULTS: Final = tuple((f.name, f.default) for f in fields(PortfolioProblem) if f.name not in _PLAIN_FIELDS)
# A field without a plain default (required, or a default_factory) could not be checked against it: refuse at import,
# so that such a field added to PortfolioProblem is decided here (plain or not) instead of slipping through.
if any(default is MISSING for _, default in _DEFAULTS):
    raise TypeError("a PortfolioProblem field without a plain default: decide in _box_batch whether it is plain")


def plain_box_rule(problem: PortfolioProblem, moments: Moments) -> tuple[BatchKind, float] | None:
    """(kind, λ) of a plain box-and-budget problem the vectorised path takes, or None.

    Plain: min volatility (λ = 0), max Sharpe (the tangency) or quadratic utility (λ = 1/δ, δ finite and
    positive); N ≤ ``MAX_BATCH_ASSETS``; every field outside bounds, objective, risk-free rate, risk aversion,
    sectors and classifications at its default; bounds and moments of N entries.
    """
    for name, default in _DEFAULTS:
        value = getattr(problem, name)
        if value is not default and not (isinstance(value, tuple) and value == default):
            return None
    n = problem.n_assets
    if not 0 < n <= MAX_BATCH_ASSETS:
        return None
    if problem.lower_bounds.shape != (n,) or problem.upper_bounds.shape != (n,):
        return None
    if moments.expected_returns.shape != (n,) or moments.covariance.shape != (n, n):
        return None
    if not np.isfinite(problem.risk_free_rate):
        return None
    objective = problem.objective
    if objective is Objective.MIN_VOLATILITY:
        return BatchKind.FIXED_LAMBDA, 0.0
    if objective is Objective.MAX_SHARPE:
        return BatchKind.TANGENCY, 0.0
    delta = problem.risk_aversion
    if objective is Objective.MAX_QUADRATIC_UTILITY and np.isfinite(delta) and delta > 0.0:
        return BatchKind.FIXED_LAMBDA, 1.0 / delta
    return None


def admitted(problems: list[PortfolioProblem], moments: list[Moments], kinds: list[BatchKind]) -> NDArray[np.bool_]:
    """Which plain problems pass the general path's pre-checks with a margin (checked stacked per N).

    Parameters
    ----------
    problems : list of PortfolioProblem
        Plain problems (``plain_box_rule`` is not None), B of them.
    moments : list of Moments
        Their moments.
    kinds : list of BatchKind
        Their kinds.

    Returns
    -------
    ndarray of shape (B,) of bool
        True where the bounds are finite and not crossed (l ≤ u + 1e-12), Σl ≤ 1 + 1e-9 and Σu ≥ 1 − 1e-9
        (``Bounds.precheck``), and for max Sharpe the largest (μ − r_f)ᵀw over the bounds and the budget (the
        greedy of ``max_achievable_return``) is positive by more than 1e-12 (relative); False sends a problem to
        the general path, which raises its error (or accepts a case within rounding of a threshold).
    """
    ok = np.zeros(len(problems), dtype=bool)
    for members in _by_size(problems).values():
        lower = np.array([problems[k].lower_bounds for k in members])
        upper = np.array([problems[k].upper_bounds for k in members])
        with np.errstate(invalid="ignore"):
            good = np.isfinite(lower).all(axis=1) & np.isfinite(upper).all(axis=1)
            good &= ~(lower > upper + 1e-12).any(axis=1)
            good &= (lower.sum(axis=1) <= 1.0 + 1e-9) & (upper.sum(axis=1) >= 1.0 - 1e-9)
        tangency = np.array([kinds[k] is BatchKind.TANGENCY for k in members])
        if tangency.any():
            rates = np.array([problems[k].risk_free_rate for k in members])
            excess = np.array([moments[k].expected_returns for k in members]) - rates[:, None]
            with np.errstate(invalid="ignore"):  # a non-finite μ (its moments' error is the engine's): not admitted
                best = _best_linear(excess, lower, upper)
                scale = 1.0 + np.abs(excess).max(axis=1)
                good &= ~tangency | (best > 1e-12 * scale)
        ok[members] = good
    return ok


def _best_linear(coefficients: FloatArray, lower: FloatArray, upper: FloatArray) -> FloatArray:
    """The largest cᵀw over l ≤ w ≤ u, 1ᵀw = 1, per row (B, N): start at l, fill by descending c up to the budget."""
    order = np.argsort(-coefficients, axis=1, kind="stable")
    room = (upper - lower)[np.arange(order.shape[0])[:, None], order]
    left = 1.0 - lower.sum(axis=1)
    before = np.cumsum(room, axis=1) - room
    fill = np.clip(left[:, None] - before, 0.0, room)
    sorted_c = np.take_along_axis(coefficients, order, axis=1)
    best: FloatArray = (coefficients * lower).sum(axis=1) + (fill * sorted_c).sum(axis=1)
    return best


def box_results(
    problems: list[PortfolioProblem],
    moments: list[Moments],
    weights: list[FloatArray],
    iterations: NDArray[np.int64],
    *,
    solver: str,
    started: float,
) -> list[OptimizationResult | None]:
    """The results of certified answers of plain problems, or None where a bound or the budget is breached.

    Parameters
    ----------
    problems, moments : list
        Plain problems and their moments, B of them.
    weights : list of ndarray of shape (N_k,)
        Their certified answers (fractions).
    iterations : ndarray of shape (B,)
        Active-set iterations of each.
    solver : str
        ``solver`` and ``solve_path`` of the results.
    started : float
        ``time.perf_counter()`` at the start of the batch, for ``solve_time_ms``.

    Returns
    -------
    list of OptimizationResult or None
        As ``ProblemModel.result(..., snap=False)`` builds them: ``μᵀw + (1 − 1ᵀw) r_f``, ``sqrt(wᵀΣw)``, the
        Sharpe ratio (0 at zero volatility) and the objective (Sharpe ratio, variance or μᵀw − δ/2 wᵀΣw); None
        for an answer that breaches a bound or the budget by more than ``TOLERANCE``, for the general builder to
        report.
    """
    out: list[OptimizationResult | None] = [None] * len(problems)
    for members in _by_size(problems).values():
        w = np.array([weights[k] for k in members])
        mu = np.array([moments[k].expected_returns for k in members])
        sigma = np.array([moments[k].covariance for k in members])
        lower = np.array([problems[k].lower_bounds for k in members])
        upper = np.array([problems[k].upper_bounds for k in members])
        rates = np.array([problems[k].risk_free_rate for k in members])
        total = w.sum(axis=1)
        breached = ((w < lower - TOLERANCE) | (w > upper + TOLERANCE)).any(axis=1) | (np.abs(total - 1.0) > TOLERANCE)
        expected = (mu * w).sum(axis=1) + (1.0 - total) * rates
        variance = (np.matmul(sigma, w[:, :, None])[:, :, 0] * w).sum(axis=1)
        volatility = np.sqrt(np.maximum(variance, 0.0))
        positive = volatility > 0.0
        sharpe = np.where(positive, (expected - rates) / np.where(positive, volatility, 1.0), 0.0)
        elapsed = (time.perf_counter() - started) * 1000.0
        rows = zip(members, w, breached.tolist(), expected.tolist(), volatility.tolist(), sharpe.tolist(), strict=True)
        for k, answer, breach, gain, vol, ratio in rows:
            if breach:
                continue
            problem = problems[k]
            if problem.objective is Objective.MAX_SHARPE:
                value = ratio
            elif problem.objective is Objective.MIN_VOLATILITY:
                value = vol**2
            else:
                value = gain - 0.5 * problem.risk_aversion * vol**2
            out[k] = OptimizationResult(
                weights=answer,
                performance=PortfolioPerformance(expected_return=gain, volatility=vol, sharpe_ratio=ratio),
                objective_value=value,
                status="OPTIMAL",
                iterations=int(iterations[k]),
                solver=solver,
                solve_time_ms=elapsed,
                constraints_satisfied=True,
                solve_path=solver,
            )
    return out


def _by_size(problems: list[PortfolioProblem]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for k, problem in enumerate(problems):
        groups.setdefault(problem.n_assets, []).append(k)
    return groups
