"""Speed of the engine on linear-constraint problems next to cvxpy, Clarabel and DAQP called directly.

What is measured
----------------
For each N and objective (min volatility, max Sharpe at r_f = 2 %) under long-only bounds 0..max(0.05, 3/N), three
group limits (g0 ≤ 15 %, g1 ≥ 25 %, g2 ≤ 20 % over ten round-robin groups) and a min_return (a quarter of the way
from the equal-weight return to the highest return the bounds allow), the median wall time of

- ``engine``: ``optimize_mean_variance`` as the engine calls it (pre-checks, assembly of the program, the solve,
  the post-solve constraint check and performance), answered by DAQP's dual active set on the dense program up to
  ``_dual_active_set.MAX_ASSETS`` names (``solve_path`` ``DUAL_ACTIVE_SET``, KKT-certified), above it by
  ``clarabel_direct`` (``CLARABEL_DIRECT``, or ``WORKING_SET`` at N ≥ 512: the program solved on a working set
  of names); the ``path`` column says which;
- ``build``: ``ProblemModel.build`` and the engine's program assembly (``_dual_active_set.build_program``, dense, or
  ``clarabel_direct.build_program``, sparse, as the path);
- ``cvxpy``: ``optimize_mean_variance`` with ``backends=(CONIC,)``: cvxpy + Clarabel, the compiled
  program cached per shape (DPP) up to ``PARAMETRIC_MAX_ASSETS`` = 64, canonicalised on every call above;
- ``clarabel``: ``clarabel.DefaultSolver(P, q, A, b, cones, settings)`` + ``solve()`` on the matrices of
  ``build_program`` with the engine's settings (``CLARABEL_SETTINGS``, quiet): Clarabel called directly, the
  yardstick; nothing else is timed;
- ``daqp``: ``daqp.solve`` on the dense program of ``_dual_active_set.build_program`` with the engine's settings
  (``_dual_active_set.solve_program``) where that backend supports the problem ("-" elsewhere): the engine's own
  solver alone, to show what the rest of the call costs.

``engine/clar`` and ``cvxpy/clar`` are the ratios of the medians to the yardstick (the issue's target: ≤ 1.2 for
the engine), ``rel gap`` (engine − cvxpy) / |cvxpy| of the objective (variance or Sharpe ratio). The calls of one
row are interleaved (one of each per round, after one untimed round), so that load from other processes falls on
all columns alike. BLAS runs on one thread (``threadpoolctl``), as in the engine's workers.

Inputs: Σ = 252 × the daily covariance of the seeded 5-factor model of ``benchmarks.risk_parity_speed``
(``synthetic_inputs``); μ_i = 0.03 + 0.5 σ_i z_i with z_i ~ N(0.3, 0.4) (``benchmarks.mean_variance_fast_path``).

Run
---
::

    uv run python -m benchmarks.mean_variance_direct                      # N = 20, 64, 100, 500
    uv run python -m benchmarks.mean_variance_direct --sizes 100,2000 --repeats 5

Options: ``--sizes`` (default ``20,64,100,500``), ``--repeats`` (rounds per row, default 30 up to N = 100, 10
above), ``--blas-threads`` (default 1).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable

import clarabel
import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.mean_variance_fast_path import RISK_FREE, moments_for
from services.optimization import (
    CONIC,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    ProblemModel,
    SectorLimit,
    max_achievable_return,
    optimize_mean_variance,
)
from services.optimization import _clarabel_direct as clarabel_direct
from services.optimization import _dual_active_set as dual_active_set
from services.optimization._solver import CLARABEL_SETTINGS
from services.types import Moments

GROUPS = 10
LIMITS = (
    SectorLimit("g0", max_weight=0.15),
    SectorLimit("g1", min_weight=0.25),
    SectorLimit("g2", max_weight=0.20),
)


def problem_for(n: int, moments: Moments, objective: Objective) -> PortfolioProblem:
    """Long-only capped weights, three group limits and a min_return."""
    upper = np.full(n, max(0.05, 3.0 / n))
    mu = moments.expected_returns
    best = max_achievable_return(mu, np.zeros(n), upper)
    equal = float(mu.mean())
    return PortfolioProblem(
        symbols=tuple(f"S{i:04d}" for i in range(n)),
        objective=objective,
        lower_bounds=np.zeros(n),
        upper_bounds=upper,
        sectors=tuple(f"g{i % GROUPS}" for i in range(n)),
        sector_limits=LIMITS,
        min_return=equal + 0.25 * (best - equal),
        risk_free_rate=RISK_FREE,
    )


def cvxpy_solve(problem: PortfolioProblem, moments: Moments) -> OptimizationResult:
    """``optimize_mean_variance`` on the cvxpy path alone (``backends=(CONIC,)``)."""
    return optimize_mean_variance(problem, moments, backends=(CONIC,))


def clarabel_call(problem: PortfolioProblem, moments: Moments) -> Callable[[], object]:
    """Clarabel on the assembled matrices: only the solver's construction and ``solve()`` run in the closure."""
    program = clarabel_direct.build_program(ProblemModel.build(problem, moments))
    P, q, A, b, cones = program.P, program.q, program.A, program.b, program.cones()

    def solve() -> object:
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        for name, value in CLARABEL_SETTINGS.items():
            setattr(settings, name, value)
        return clarabel.DefaultSolver(P, q, A, b, cones, settings).solve()

    return solve


def daqp_call(problem: PortfolioProblem, moments: Moments) -> Callable[[], object] | None:
    """DAQP on the dense program (None where ``_dual_active_set`` does not support the problem)."""
    model = ProblemModel.build(problem, moments)
    if not dual_active_set.supports(model):
        return None
    program = dual_active_set.build_program(model)

    def solve() -> object:
        return dual_active_set.solve_program(program)

    return solve


def interleaved_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each call over ``repeats`` rounds (one call of each per round) after one untimed round."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000.0)
    return {name: float(np.median(values)) for name, values in times.items()}


def objective_of(weights: np.ndarray, moments: Moments, objective: Objective) -> float:
    """Variance (min volatility) or Sharpe ratio at r_f (max Sharpe) of ``weights``."""
    variance = float(weights @ moments.covariance @ weights)
    if objective is Objective.MAX_SHARPE:
        return (float(moments.expected_returns @ weights) - RISK_FREE) / float(np.sqrt(variance))
    return variance


def row(n: int, moments: Moments, objective: Objective, repeats: int) -> str:
    """One line of the report."""
    problem = problem_for(n, moments, objective)
    engine = optimize_mean_variance(problem, moments)
    reference = cvxpy_solve(problem, moments)
    direct_paths = (dual_active_set.SOLVE_PATH, clarabel_direct.SOLVE_PATH, clarabel_direct.WORKING_SET_PATH)
    if engine.solve_path not in direct_paths or reference.solve_path != "CONIC":
        raise RuntimeError(f"unexpected solve paths at N = {n}: {engine.solve_path}, {reference.solve_path}")
    dense = engine.solve_path == dual_active_set.SOLVE_PATH
    calls: dict[str, Callable[[], object]] = {
        "engine": lambda: optimize_mean_variance(problem, moments),
        "build": (
            (lambda: dual_active_set.build_program(ProblemModel.build(problem, moments)))
            if dense
            else (lambda: clarabel_direct.build_program(ProblemModel.build(problem, moments)))
        ),
        "cvxpy": lambda: cvxpy_solve(problem, moments),
        "clarabel": clarabel_call(problem, moments),
    }
    alone = daqp_call(problem, moments)
    if alone is not None:
        calls["daqp"] = alone
    ms = interleaved_ms(calls, repeats)
    daqp_ms = f"{ms['daqp']:>8.3f}" if "daqp" in ms else f"{'-':>8}"
    ours, theirs = objective_of(engine.weights, moments, objective), objective_of(reference.weights, moments, objective)
    return (
        f"{n:>5} {objective.value:<15} {ms['engine']:>9.2f} {ms['build']:>8.2f} {ms['cvxpy']:>9.2f} "
        f"{ms['clarabel']:>11.2f} {daqp_ms} {ms['engine'] / ms['clarabel']:>11.2f} "
        f"{ms['cvxpy'] / ms['clarabel']:>10.2f} "
        f"{engine.iterations:>5d} {(ours - theirs) / abs(theirs):>9.1e} {engine.solve_path}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="20,64,100,500")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--blas-threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    limits = threadpool_limits(limits=args.blas_threads)
    print(f"command: {shlex.join(['python', '-m', 'benchmarks.mean_variance_direct', *sys.argv[1:]])}")
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}, BLAS threads: {args.blas_threads}")
    print(
        f"{'N':>5} {'objective':<15} {'engine ms':>9} {'build ms':>8} {'cvxpy ms':>9} {'clarabel ms':>11} "
        f"{'daqp ms':>8} "
        f"{'engine/clar':>11} {'cvxpy/clar':>10} {'iters':>5} {'rel gap':>9} path"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        moments = moments_for(n)
        repeats = args.repeats or (30 if n <= 100 else 10)
        for objective in (Objective.MIN_VOLATILITY, Objective.MAX_SHARPE):
            print(row(n, moments, objective, repeats), flush=True)
    print(f"load average after: {os.getloadavg()}")
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
