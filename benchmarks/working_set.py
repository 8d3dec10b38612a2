"""Large N on a working set of names against the whole problem, same inputs, same run (issue 12, point 4).

What is measured
----------------
For N names of ``benchmarks.methods``' inputs (the seeded factor model, T = 756 daily returns; μ and Σ annualised),
long only with a 5 % cap, with and without three group limits (g0 ≤ 15 %, g1 ≥ 25 %, g2 ≤ 20 % over ten
round-robin groups) and a min_return of 15 %, the median wall time of

- ``working set``: the engine's default chain (``optimize_risk_measure`` / ``optimize_mean_variance``), which at
  this N answers by column generation over the names (``solve_path`` ``WORKING_SET``; the box-and-budget
  mean-variance rows by the active set's working set, ``ACTIVE_SET``);
- ``whole``: the same call on the whole problem: the scenario chain without the working set (HiGHS's simplex or
  interior point, then Clarabel), the direct Clarabel path with its working set switched off, the active set with
  its screening switched off;

and the relative objective gap (working set − whole) / |whole| (min risk, variance: < 0 is better; max ratio,
Sharpe: > 0 is better). Rows: min CVaR, MAD, CDaR; max ratio with each; min volatility and max Sharpe (the
latter two with the group limits only, where the direct Clarabel path answers; without them the active set).

Run
---
::

    uv run python -m benchmarks.working_set                     # N = 1000, 3 calls a side (~3 minutes)
    uv run python -m benchmarks.working_set --size 2000 --repeats 1

Options: ``--size`` (N, default 1000), ``--repeats`` (calls per side, default 3), ``--skip-whole`` (time the
working set only: at N = 2000 the whole CDaR LP takes 20-30 s a call).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmarks.methods import inputs_for
from services.optimization import (
    HIGHS_IPM,
    SCENARIO_CONIC,
    SIMPLEX,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    SectorLimit,
    optimize_mean_variance,
    optimize_risk_measure,
)
from services.optimization import _active_set as active_set
from services.optimization import _clarabel_direct as clarabel_direct
from services.types import Moments

WHOLE_SCENARIO = (SIMPLEX, HIGHS_IPM, SCENARIO_CONIC)
LIMITS = (SectorLimit("g0", None, 0.15), SectorLimit("g1", 0.25, None), SectorLimit("g2", None, 0.2))


@contextmanager
def whole_problem() -> Any:
    """Switch the mean-variance working sets off (the scenario one is left out through ``backends``)."""
    saved = active_set.SCREEN_MIN_SIZE, clarabel_direct.WORKING_SET_MIN_ASSETS
    active_set.SCREEN_MIN_SIZE = clarabel_direct.WORKING_SET_MIN_ASSETS = 10**9
    try:
        yield
    finally:
        active_set.SCREEN_MIN_SIZE, clarabel_direct.WORKING_SET_MIN_ASSETS = saved


def timed(call: Callable[[], OptimizationResult], repeats: int) -> tuple[float, OptimizationResult]:
    """Median seconds over ``repeats`` calls, and the last answer."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    assert result is not None
    return statistics.median(seconds), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-whole", action="store_true")
    args = parser.parse_args(argv)
    n = args.size
    data = inputs_for(n)
    scenarios = data.returns.to_numpy()
    moments = Moments(expected_returns=data.mu, covariance=data.covariance)
    sectors = tuple(f"g{i % 10}" for i in range(n))
    print(f"command: {shlex.join(['python', '-m', 'benchmarks.working_set', *sys.argv[1:]])}")
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}; N = {n}, T = {scenarios.shape[0]}")
    print(f"{'problem':<44} {'working set s':>13} {'whole s':>9} {'ratio':>7} {'rel gap':>9}  paths")
    for grouped in (False, True):
        extra: dict[str, Any] = {"sectors": sectors, "sector_limits": LIMITS, "min_return": 0.15} if grouped else {}
        label = " + groups, min_return" if grouped else ""
        for objective in (Objective.MIN_VOLATILITY, Objective.MAX_SHARPE):
            problem = PortfolioProblem(
                symbols=tuple(data.names),
                objective=objective,
                lower_bounds=np.zeros(n),
                upper_bounds=np.full(n, 0.05),
                risk_free_rate=0.02,
                **extra,
            )
            kind = "min risk" if objective is Objective.MIN_VOLATILITY else "max ratio"
            for measure in ("CVAR", "MAD", "CDAR"):

                def ours(problem: PortfolioProblem = problem, measure: str = measure) -> OptimizationResult:
                    return optimize_risk_measure(
                        problem, scenarios, data.mu, risk_measure=measure, covariance=data.covariance
                    )

                def whole(problem: PortfolioProblem = problem, measure: str = measure) -> OptimizationResult:
                    return optimize_risk_measure(
                        problem,
                        scenarios,
                        data.mu,
                        risk_measure=measure,
                        covariance=data.covariance,
                        backends=WHOLE_SCENARIO,
                    )

                report(f"{measure} {kind}{label}", ours, whole, args)
            name = "min volatility" if objective is Objective.MIN_VOLATILITY else "max Sharpe"

            def mean_variance(problem: PortfolioProblem = problem) -> OptimizationResult:
                return optimize_mean_variance(problem, moments)

            def mean_variance_whole(problem: PortfolioProblem = problem) -> OptimizationResult:
                with whole_problem():
                    return optimize_mean_variance(problem, moments)

            report(f"{name}{label}", mean_variance, mean_variance_whole, args)
    print(f"load average after: {os.getloadavg()}")


def report(
    label: str,
    ours: Callable[[], OptimizationResult],
    whole: Callable[[], OptimizationResult],
    args: argparse.Namespace,
) -> None:
    """One line: both medians, their ratio and the objective gap."""
    ours()  # first call apart (caches, imports)
    ours_s, ours_result = timed(ours, args.repeats)
    if args.skip_whole:
        print(f"{label:<44} {ours_s:>13.3f} {'-':>9} {'-':>7} {'-':>9}  {ours_result.solve_path}")
        return
    whole_s, whole_result = timed(whole, args.repeats)
    gap = (ours_result.objective_value - whole_result.objective_value) / abs(whole_result.objective_value)
    print(
        f"{label:<44} {ours_s:>13.3f} {whole_s:>9.3f} {whole_s / ours_s:>6.1f}x {gap:>9.1e}  "
        f"{ours_result.solve_path} / {whole_result.solve_path}"
    )


if __name__ == "__main__":
    main()
