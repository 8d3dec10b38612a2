"""Speed of the mean-variance fast path (``_active_set``) next to the Clarabel path and PyPortfolioOpt.

What is measured
----------------
For each N, objective (min volatility, max Sharpe at r_f = 2 %) and bounds (long-only 0..1, and a per-name cap of
max(0.05, 2/N)), the median wall time of

- ``fast``: ``optimize_mean_variance`` as the engine calls it (pre-checks, the active-set solve, the post-solve
  constraint check and performance), answered by the fast path (``solve_path == "ACTIVE_SET"``);
- ``solver``: ``_active_set.solve_model`` alone (the model's validation, the active-set solve and its KKT certificate);
- ``clarabel``: ``optimize_mean_variance`` with ``backends=(CONIC,)`` (cvxpy + Clarabel at 1e-10, the
  engine's robust path);
- ``pypfopt``: ``EfficientFrontier(mu, S, weight_bounds=...)`` + ``min_volatility()`` / ``max_sharpe()``
  (construction and solve) on the same μ and Σ, with its default solver, or with ``solver="CLARABEL"`` where the
  default fails (the last column says which).

``rel gap`` is (fast − clarabel) / |clarabel| of the objective (variance, or Sharpe ratio; negative variance gaps
and positive Sharpe gaps mean the fast path's exact answer is the better one), ``Δ pypfopt`` the same against
PyPortfolioOpt. BLAS runs on one thread (``threadpoolctl``), as in the engine's workers
(``command_side.workers``).

Inputs: Σ = 252 × the daily covariance of the seeded 5-factor model of ``benchmarks.risk_parity_speed``
(``synthetic_inputs``); μ_i = 0.03 + 0.5 σ_i z_i with z_i ~ N(0.3, 0.4) (seeded).

Run
---
::

    uv run python -m benchmarks.mean_variance_fast_path                       # N = 20, 100, 500, 2000
    uv run python -m benchmarks.mean_variance_fast_path --sizes 20,100 --repeats 20

Options: ``--sizes``, ``--repeats`` (fast path calls per row, default 20), ``--library-repeats`` (Clarabel and
PyPortfolioOpt calls per row, default 5 up to N = 500 and 2 above), ``--blas-threads`` (default 1).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from benchmarks.risk_parity_speed import synthetic_inputs
from services.optimization import (
    CONIC,
    Objective,
    OptimizationResult,
    PortfolioProblem,
    ProblemModel,
    optimize_mean_variance,
)
from services.optimization import _active_set as fast_qp
from services.types import FloatArray, Moments

RISK_FREE = 0.02
SEED = 7
T = TypeVar("T")


def moments_for(n: int) -> Moments:
    """Annualised factor-model Σ of ``synthetic_inputs`` and seeded expected returns."""
    covariance = synthetic_inputs(n).covariance * 252.0
    rng = np.random.default_rng([SEED, n])
    mu = 0.03 + 0.5 * np.sqrt(np.diag(covariance)) * rng.normal(0.3, 0.4, n)
    return Moments(expected_returns=mu, covariance=covariance)


def median_ms(call: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Median wall time in ms over ``repeats`` calls (after one untimed call) and the first call's value."""
    first = call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(times)), first


def pypfopt_call(moments: Moments, objective: Objective, cap: float, solver: str | None) -> Callable[[], FloatArray]:
    """A closure running PyPortfolioOpt's ``EfficientFrontier`` (construction and solve) with ``solver``."""
    from pypfopt import EfficientFrontier

    n = moments.expected_returns.size
    names = [f"S{i:04d}" for i in range(n)]
    mu = pd.Series(moments.expected_returns, index=names)
    cov = pd.DataFrame(moments.covariance, index=names, columns=names)

    def solve() -> FloatArray:
        frontier = EfficientFrontier(mu, cov, weight_bounds=(0.0, cap), solver=solver)
        if objective is Objective.MAX_SHARPE:
            frontier.max_sharpe(risk_free_rate=RISK_FREE)
        else:
            frontier.min_volatility()
        return np.array([frontier.weights[i] for i in range(n)], dtype=np.float64)

    return solve


def pypfopt_timing(moments: Moments, objective: Objective, cap: float, repeats: int) -> tuple[float, FloatArray, str]:
    """Median ms and weights of PyPortfolioOpt with its default solver, or with Clarabel where the default fails."""
    from pypfopt.exceptions import OptimizationError as PypfoptError

    try:
        ms, weights = median_ms(pypfopt_call(moments, objective, cap, None), repeats)
        return ms, weights, "default"
    except PypfoptError:
        ms, weights = median_ms(pypfopt_call(moments, objective, cap, "CLARABEL"), repeats)
        return ms, weights, "CLARABEL"


def objective_of(weights: FloatArray, moments: Moments, objective: Objective) -> float:
    """Variance (min volatility) or Sharpe ratio at r_f (max Sharpe) of ``weights``."""
    variance = float(weights @ moments.covariance @ weights)
    if objective is Objective.MAX_SHARPE:
        return (float(moments.expected_returns @ weights) - RISK_FREE) / float(np.sqrt(variance))
    return variance


def conic_solve(problem: PortfolioProblem, moments: Moments) -> OptimizationResult:
    """``optimize_mean_variance`` on the cvxpy path alone (``backends=(CONIC,)``)."""
    return optimize_mean_variance(problem, moments, backends=(CONIC,))


def active_set_solve(problem: PortfolioProblem, moments: Moments) -> fast_qp.ActiveSetSolution | None:
    """The active-set solve and its KKT certificate on the problem's model (model validation included)."""
    return fast_qp.solve_model(ProblemModel.build(problem, moments))


def row(n: int, moments: Moments, objective: Objective, upper: float, repeats: int, library_repeats: int) -> str:
    """One line of the report: N, objective and bounds, medians, speed-ups, iterations and objective gaps."""
    problem = PortfolioProblem(
        symbols=tuple(f"S{i:04d}" for i in range(n)),
        objective=objective,
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, upper),
        risk_free_rate=RISK_FREE,
    )
    fast_ms, fast = median_ms(partial(optimize_mean_variance, problem, moments), repeats)
    solver_ms, solution = median_ms(partial(active_set_solve, problem, moments), repeats)
    conic_ms, conic = median_ms(partial(conic_solve, problem, moments), library_repeats)
    lib_ms, lib_weights, lib_solver = pypfopt_timing(moments, objective, upper, library_repeats)
    if solution is None or fast.solve_path != "ACTIVE_SET" or conic.solve_path != "CONIC":
        raise RuntimeError(f"unexpected solve paths at N = {n}: {fast.solve_path}, {conic.solve_path}")
    fast_value = objective_of(fast.weights, moments, objective)
    conic_value = objective_of(conic.weights, moments, objective)
    lib_value = objective_of(lib_weights, moments, objective)
    return (
        f"{n:>5} {objective.value:<15} {f'0..{upper:g}':<10} {fast_ms:>9.2f} {solver_ms:>9.2f} {conic_ms:>11.1f} "
        f"{lib_ms:>10.1f} {conic_ms / fast_ms:>10.1f} {lib_ms / fast_ms:>9.1f} {solution.iterations:>5d} "
        f"{(fast_value - conic_value) / abs(conic_value):>9.1e} {(fast_value - lib_value) / abs(lib_value):>9.1e} "
        f"{lib_solver}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="20,100,500,2000")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--library-repeats", type=int, default=None)
    parser.add_argument("--blas-threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    limits = threadpool_limits(limits=args.blas_threads)
    print(f"command: {shlex.join(['python', '-m', 'benchmarks.mean_variance_fast_path', *sys.argv[1:]])}")
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}, BLAS threads: {args.blas_threads}")
    print(
        f"{'N':>5} {'objective':<15} {'bounds':<10} {'fast ms':>9} {'solver ms':>9} {'clarabel ms':>11} "
        f"{'pypfopt ms':>10} {'x clarabel':>10} {'x pypfopt':>9} {'iters':>5} {'rel gap':>9} {'Δ pypfopt':>9} "
        "pypfopt solver"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        moments = moments_for(n)
        library_repeats = args.library_repeats or (5 if n <= 500 else 2)
        for objective in (Objective.MIN_VOLATILITY, Objective.MAX_SHARPE):
            for upper in (1.0, max(0.05, 2.0 / n)):
                print(row(n, moments, objective, upper, args.repeats, library_repeats), flush=True)
    print(f"load average after: {os.getloadavg()}")
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
