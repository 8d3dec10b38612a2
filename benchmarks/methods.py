"""Per-method solve time and objective gap: stratopt's engine next to PyPortfolioOpt, skfolio and Riskfolio-Lib.

What is measured
----------------
For each size N and each method below, the same inputs go to stratopt and to every library that has the method:
the same annualised expected returns μ and covariance Σ (variance methods), or the same T × N matrix X of daily
returns (scenario measures). Each side is timed with ``time.perf_counter`` around one call, on one input set:

- stratopt, in this process: ``services.engine.run_optimization`` on an ``OptimizationJob`` with ``Moments(μ, Σ)``
  as inputs (what the service's solver workers run: ``validate_moments`` with its eigenvalue check, the method,
  the constraint check and the risk contributions), built once outside the timing. The scenario measures are
  run by the engine only from a return history, whose moments it estimates first; to hand it the same μ and Σ the
  script times what ``run_optimization`` runs after that estimate: ``optimize_risk_measure(problem, X, μ,
  covariance=Σ, ...)`` and ``risk_measure_value`` on its weights. The first call per method and N is timed
  apart (``first``: it may build and cache the cvxpy program, and traces and compiles the JAX loop of risk
  parity); the median is over the K calls after it, which re-use whatever the engine caches, as the service's
  workers do. For the mean-variance rows answered by the active set, the exact active-set solve alone
  (``_active_set.solve_model`` on the same μ, Σ and bounds: no validation of Σ, no pre- or post-checks) is timed
  right after each engine call, and the notes give the engine call's median as a multiple of it (issue 12's
  target: within 2×).
- each library, in a spawned child process (one per library and N, holding its imports): the library's API from
  the objects it needs (PyPortfolioOpt: ``EfficientFrontier(μ, Σ, ...)`` and the solve; skfolio: the estimator and
  its ``fit(X)`` with a prior that hands it exactly μ and Σ; Riskfolio-Lib: ``Portfolio(returns=X)`` with ``mu``
  and ``cov`` set is built once per method outside the timing, as in ``risk_parity_speed``, and the optimisation
  call is timed). Its first call per method gives the weights and is left out of the median (it pays lazy imports);
  if it takes longer than ``--limit-s`` (default 60 s) the child is stopped, the cell says ``skipped (> 60 s)``,
  and a fresh child takes the remaining methods. Every side stops timing a method once it has spent
  ``--budget-s`` (default 120 s) on it at that N, so K may be smaller than asked (the cell then says so).

Libraries use their default solvers and tolerances: PyPortfolioOpt ``solver=None`` (cvxpy's choice for the
problem class; the cell names the solver that answered, e.g. OSQP for its QPs, and where the default fails on the
first call the method is re-run with Clarabel and the cell says so), skfolio Clarabel, Riskfolio-Lib the first of
its list that answers (Clarabel). stratopt solves with Clarabel at tightened tolerances (1e-10).

Methods (``--methods``; long-only, fully invested, r_f = 0, bounds 0 ≤ w ≤ 1 unless said):

==================  ========================================================  =========================================
method              stratopt                                                  libraries
==================  ========================================================  =========================================
``minvol``          mean-variance ``MIN_VOLATILITY``                          PyPortfolioOpt ``min_volatility``, skfolio
                                                                              ``MeanRisk(MINIMIZE_RISK, VARIANCE)``,
                                                                              Riskfolio ``rm="MV", obj="MinRisk"``
``maxsharpe``       mean-variance ``MAX_SHARPE``                              ``max_sharpe``, ``MAXIMIZE_RATIO`` with
                                                                              ``STANDARD_DEVIATION``, ``obj="Sharpe"``
``minvol-cap``,     as above with w_i ≤ cap: 0.2 at N ≤ 20, else 0.1          the same with their weight bounds
``maxsharpe-cap``   (active bounds)                                           (Riskfolio: ``upperlng``)
``cvar``            ``optimize_risk_measure(CVAR)``, min CVaR at α = 0.95     ``EfficientCVaR.min_cvar``, skfolio
                                                                              ``CVAR``, Riskfolio ``rm="CVaR"``
``mad``             ``optimize_risk_measure(MAD)``, min MAD                   n/a, ``MEAN_ABSOLUTE_DEVIATION``, ``MAD``
``cdar``            ``optimize_risk_measure(CDAR)``, min CDaR at α = 0.95     ``EfficientCDaR.min_cdar``, ``CDAR``,
                                                                              ``CDaR``
``erc``             ``RISK_PARITY`` (equal risk contributions, JAX Newton)    n/a, ``RiskBudgeting(VARIANCE)``,
                                                                              ``rp_optimization(rm="MV")``
``hrp``             ``HIERARCHICAL_RISK_PARITY``, single linkage              ``HRPOpt.optimize("single")``,
                                                                              ``HierarchicalRiskParity`` (covariance
                                                                              distance of Σ, single linkage, plain
                                                                              leaf order), ``HCPortfolio("HRP")`` on
                                                                              ``custom_cov`` Σ, ``leaf_order=False``
``bl-maxsharpe``    ``BLACK_LITTERMAN`` then max Sharpe                       ``BlackLittermanModel`` +
                                                                              ``EfficientFrontier.max_sharpe``, skfolio
                                                                              ``BlackLitterman`` prior + ``MeanRisk``;
                                                                              Riskfolio n/a (its BL fixes τ = 1/T and
                                                                              re-estimates Σ from the returns)
``robust-maxret``   ``ROBUST_OPTIMIZATION``, ellipsoidal set at 95 %,          n/a, ``MeanRisk`` with
                    ``MAX_RETURN`` (worst-case return)                        ``EmpiricalMuUncertaintySet`` (prior Σ,
                                                                              ``n_eff`` = T/252), Riskfolio
                                                                              ``wc_optimization(Umu="ellip")`` with
                                                                              ``cov_mu`` = Σ·252/T and ``k_mu`` = κ
``robust-utility``  the same, ``MAX_QUADRATIC_UTILITY`` with δ = 3             the same with ``MAXIMIZE_UTILITY``, λ =
                                                                              δ/2 / ``obj="Utility"``, ``l`` = δ/2
==================  ========================================================  =========================================

Black-Litterman: prior π = δ Σ w_mkt (δ = 2.5, seeded log-normal market caps), τ = 0.05, He-Litterman Ω, three
views (name 0 returns π_0 + 5 %; name 1 beats name 2 by 3 %; name 3 beats name 4 by 2 %); every side gets π, P, Q.
Robust: the ellipsoid (μ − μ̂)ᵀ Σ_μ⁻¹ (μ − μ̂) ≤ κ², κ² = χ²_N(0.95), Σ_μ = Σ·252/T (T = 756 observations).

Objective gap: each side's weights are evaluated here in NumPy on the common inputs, f(w) = wᵀΣw (min volatility),
μᵀw / sqrt(wᵀΣw) (max Sharpe; on stratopt's posterior μ_bl, Σ_bl for Black-Litterman), CVaR / MAD / CDaR of Xw
(``services.optimization``' definitions, those of skfolio), the worst-case return μᵀw − κ sqrt(252/T) σ(w) (minus
δ/2 wᵀΣw for utility). ``gap`` = (f(w_library) − f(w_stratopt)) / |f(w_stratopt)| for a minimisation and
(f(w_stratopt) − f(w_library)) / |f(w_stratopt)| for a maximisation: positive means stratopt's portfolio is
better. Risk parity and HRP have no such objective: for ``erc`` the cell gives the library's largest relative
risk-contribution error max_i |RC_i · N − 1| (stratopt's follows its path), for ``hrp`` max_i |w_i − w_stratopt,i|.
A ``!`` marks library weights that break the budget or a bound by more than 1e-6 (the notes say by how much).
``ratio`` = the fastest library's median / stratopt's median (> 1: stratopt faster). ``path`` is
``result.solve_path`` when the engine's result has one, else the solver that answered (with its status when not
``OPTIMAL``).

Inputs (T = 756 daily returns for every N, annualised ×252):

- N = 20: real data, the last 756 daily returns X of the 20 stocks of ``data/sp500_dataset.csv.gz``;
  μ = 252 · mean(X), Σ = 252 · cov(X) (ddof 1);
- other N (default 100, 500, 2000): ``risk_parity_speed``'s seeded 5-factor model: Σ = 252 · the model's daily
  covariance, X = 756 daily returns simulated from it, μ = 252 · (mean(X) + 4 bp · β) with β the names' betas to
  the equal-weighted portfolio under the model (a market premium on top of the sample means).

The scenario measures are per period: for them skfolio and Riskfolio-Lib (whose MAD is taken around the prior's μ)
and PyPortfolioOpt get μ = mean(X) and Σ / 252, neither of which enters their objectives; stratopt gets μ and Σ as
the engine would (its MAD is around the scenarios' mean as well).

Run
---
::

    uv run python -m benchmarks.methods                                   # N = 20, 100, 500, 2000, every method
    uv run python -m benchmarks.methods --sizes 20,100 --repeats 3
    uv run python -m benchmarks.methods --methods minvol,maxsharpe,cvar --sizes 500
    uv run python -m benchmarks.methods --blas-threads 0 --xla-multi-thread    # the libraries' own threading
    uv run python -m benchmarks.methods --methods maxsharpe,minvol --sizes 2000 --libraries pypfopt

Options: ``--sizes`` (comma-separated N ≥ 5, default ``20,100,500,2000``), ``--methods`` (comma-separated, default
all of the above), ``--libraries`` (comma-separated of ``pypfopt``, ``skfolio``, ``riskfolio``, default all; a
library left out reads ``not run``: at N = 2000 skfolio takes about 40 s a call), ``--repeats K`` (default 30 for
N ≤ 100, 10 for N ≤ 500 and 5 above, for every side),
``--limit-s`` (longest first call of a library per method before it is skipped, default 60), ``--budget-s`` (time
one side may spend timing one method at one N, default 120), ``--pypfopt-solver`` (PyPortfolioOpt's solver,
default its own choice), ``--blas-threads K`` (BLAS/OpenMP threads in this process and in the children; default
1, as in the service's solver workers; 0 leaves the libraries' own default), ``--xla-multi-thread`` (leave XLA's
CPU backend multi-threaded; by default it runs on one thread, as in the service's workers). On a machine whose cores
are shared with other work, multi-threaded BLAS can stall: a 100 × 100 ``eigvalsh`` took a median 32 ms with
OpenBLAS on 2 threads against 0.3 ms on one (2 busy cores). Progress goes to stderr, the report to stdout. Other
load on the machine shows up directly in the numbers: the header prints the load average before and after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import multiprocessing as mp
import os
import platform
import queue
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.risk_parity_speed import (
    PERIODS,
    REAL_N,
    SINGLE_THREAD_XLA_FLAGS,
    default_repeats,
    max_rc_error,
    progress,
    real_inputs,
    synthetic_inputs,
)

PERIODS_PER_YEAR = 252
ALPHA = 0.95
"""Confidence level of CVaR and CDaR."""
ROBUST_CONFIDENCE = 0.95
RISK_AVERSION = 3.0
"""δ of the robust quadratic utility μᵀw − ρ(w) − δ/2 wᵀΣw."""
BL_RISK_AVERSION = 2.5
BL_TAU = 0.05
MARKET_PREMIUM = 4e-4
"""Daily premium per unit of beta added to the sample means of the synthetic returns."""
SEED = 20_240_521
LIBRARIES = ("pypfopt", "skfolio", "riskfolio")
LIBRARY_NAMES = {"pypfopt": "PyPortfolioOpt", "skfolio": "skfolio", "riskfolio": "Riskfolio-Lib"}
LIBRARY_MODULES = {"pypfopt": "pypfopt", "skfolio": "skfolio.optimization", "riskfolio": "riskfolio"}
FEASIBILITY_TOLERANCE = 1e-6
READY_TIMEOUT_S = 600.0
"""Longest a library's child process may take to import the library and receive its inputs."""
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

Solve = Callable[[], tuple[np.ndarray, str]]
"""One library call: the weights in the inputs' column order and a note (the solver that answered)."""


# --------------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked method: what stratopt solves and which libraries have it."""

    name: str
    kind: str
    """``variance``, ``scenario``, ``erc``, ``hrp``, ``bl`` or ``robust``."""
    objective: str
    """``min_variance``, ``max_sharpe``, ``min_risk`` (scenario), ``max_return``, ``max_utility``, or ``-``."""
    libraries: tuple[str, ...]
    measure: str = ""
    """``CVAR``, ``MAD`` or ``CDAR`` for the scenario methods."""
    capped: bool = False

    @property
    def maximise(self) -> bool:
        """Whether a larger objective is better."""
        return self.objective in ("max_sharpe", "max_return", "max_utility")


_ALL = LIBRARIES
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("minvol", "variance", "min_variance", _ALL),
        MethodSpec("maxsharpe", "variance", "max_sharpe", _ALL),
        MethodSpec("minvol-cap", "variance", "min_variance", _ALL, capped=True),
        MethodSpec("maxsharpe-cap", "variance", "max_sharpe", _ALL, capped=True),
        MethodSpec("cvar", "scenario", "min_risk", _ALL, measure="CVAR"),
        MethodSpec("mad", "scenario", "min_risk", ("skfolio", "riskfolio"), measure="MAD"),
        MethodSpec("cdar", "scenario", "min_risk", _ALL, measure="CDAR"),
        MethodSpec("erc", "erc", "-", ("skfolio", "riskfolio")),
        MethodSpec("hrp", "hrp", "-", _ALL),
        MethodSpec("bl-maxsharpe", "bl", "max_sharpe", ("pypfopt", "skfolio")),
        MethodSpec("robust-maxret", "robust", "max_return", ("skfolio", "riskfolio")),
        MethodSpec("robust-utility", "robust", "max_utility", ("skfolio", "riskfolio")),
    )
}
NOT_AVAILABLE = {
    ("mad", "pypfopt"): "PyPortfolioOpt has no MAD optimizer (EfficientSemivariance is another measure)",
    ("erc", "pypfopt"): "PyPortfolioOpt has no risk budgeting",
    ("bl-maxsharpe", "riskfolio"): "Riskfolio-Lib's Black-Litterman fixes τ = 1/T and re-estimates Σ from the returns",
    ("robust-maxret", "pypfopt"): "PyPortfolioOpt has no robust (uncertainty-set) optimizer",
    ("robust-utility", "pypfopt"): "PyPortfolioOpt has no robust (uncertainty-set) optimizer",
}


def weight_cap(n: int) -> float:
    """Per-name cap of the ``-cap`` methods: 0.2 up to N = 20, 0.1 above (at least 2/N to stay feasible)."""
    return max(0.2 if n <= REAL_N else 0.1, 2.0 / n)


# --------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Everything every side receives at one N (annualised μ and Σ, daily X)."""

    kind: str
    names: list[str]
    returns: pd.DataFrame
    mu: np.ndarray
    covariance: np.ndarray
    cap: float
    bl_prior: np.ndarray
    bl_picking: np.ndarray
    bl_views: np.ndarray
    bl_view_strings: list[str]

    @property
    def n(self) -> int:
        """N."""
        return len(self.names)

    @property
    def periods(self) -> int:
        """T, the observations behind μ."""
        return int(self.returns.shape[0])

    @property
    def robust_radius(self) -> float:
        """κ·sqrt(P/T): the worst-case return is μᵀw minus this times the volatility sqrt(wᵀΣw)."""
        from scipy import stats

        return float(np.sqrt(stats.chi2.ppf(ROBUST_CONFIDENCE, self.n)) * np.sqrt(PERIODS_PER_YEAR / self.periods))


def inputs_for(n: int) -> Inputs:
    """Real data for N = 20, ``risk_parity_speed``'s factor model (with a market premium on μ) otherwise."""
    if n == REAL_N:
        returns = real_inputs().returns.iloc[-PERIODS:]
        values = returns.to_numpy()
        kind, daily_mu, daily_cov = "real", values.mean(axis=0), np.cov(values, rowvar=False)
    else:
        synthetic = synthetic_inputs(n)
        returns, daily_cov = synthetic.returns, synthetic.covariance
        equal = np.full(n, 1.0 / n)
        beta = daily_cov @ equal / (equal @ daily_cov @ equal)
        kind, daily_mu = "synthetic", returns.to_numpy().mean(axis=0) + MARKET_PREMIUM * beta
    names = [str(c) for c in returns.columns]
    mu = np.asarray(daily_mu * PERIODS_PER_YEAR, dtype=np.float64)
    covariance = np.asarray(daily_cov * PERIODS_PER_YEAR, dtype=np.float64)
    covariance = (covariance + covariance.T) / 2.0

    caps = np.random.default_rng([SEED, n]).lognormal(0.0, 1.0, n)
    prior = BL_RISK_AVERSION * covariance @ (caps / caps.sum())
    picking = np.zeros((3, n))
    picking[0, 0] = 1.0
    picking[1, 1], picking[1, 2] = 1.0, -1.0
    picking[2, 3], picking[2, 4] = 1.0, -1.0
    views = np.array([prior[0] + 0.05, 0.03, 0.02])
    strings = [
        f"{names[0]} == {float(views[0])!r}",
        f"{names[1]} - {names[2]} == {float(views[1])!r}",
        f"{names[3]} - {names[4]} == {float(views[2])!r}",
    ]
    return Inputs(kind, names, returns, mu, covariance, weight_cap(n), prior, picking, views, strings)


# ------------------------------------------------------------------------------------------------ objectives


@dataclass(frozen=True)
class Reference:
    """What a library's weights are compared against: stratopt's weights and the moments of the objective."""

    weights: np.ndarray
    mu: np.ndarray
    covariance: np.ndarray


def objective_value(spec: MethodSpec, weights: np.ndarray, data: Inputs, reference: Reference) -> float:
    """The method's objective at ``weights``, in NumPy on the common inputs (see the module docstring)."""
    from services.optimization import RiskMeasure, risk_measure_value

    mu, covariance = reference.mu, reference.covariance
    variance = float(weights @ covariance @ weights)
    if spec.objective == "min_variance":
        return variance
    if spec.objective == "max_sharpe":
        return float(mu @ weights) / float(np.sqrt(variance))
    if spec.objective == "min_risk":
        scenarios = data.returns.to_numpy()
        return risk_measure_value(scenarios, weights, risk_measure=RiskMeasure(spec.measure), alpha=ALPHA)
    worst_case = float(mu @ weights) - data.robust_radius * float(np.sqrt(variance))
    if spec.objective == "max_return":
        return worst_case
    return worst_case - 0.5 * RISK_AVERSION * variance


def infeasibility(spec: MethodSpec, weights: np.ndarray, data: Inputs) -> float:
    """Largest breach of the budget or of a weight bound."""
    upper = data.cap if spec.capped else 1.0
    return float(max(abs(weights.sum() - 1.0), np.max(-weights), np.max(weights - upper)))


def comparison(spec: MethodSpec, weights: np.ndarray, data: Inputs, reference: Reference) -> tuple[float, str]:
    """The gap cell's value and its text: the relative objective gap, the RC error (ERC) or max |Δw| (HRP)."""
    if spec.kind == "erc":
        error = max_rc_error(weights, data.covariance)
        return error, f"rc {error:.1e}"
    if spec.kind == "hrp":
        difference = float(np.max(np.abs(weights - reference.weights)))
        return difference, f"Δw {difference:.1e}"
    ours = objective_value(spec, reference.weights, data, reference)
    theirs = objective_value(spec, weights, data, reference)
    gap = (ours - theirs if spec.maximise else theirs - ours) / abs(ours)
    return gap, f"{gap:+.1e}"


# -------------------------------------------------------------------------------------------------- stratopt


@dataclass
class StratoptRun:
    """stratopt's timings (ms) and result for one method at one N."""

    first_ms: float = float("nan")
    samples_ms: list[float] = field(default_factory=list)
    weights: np.ndarray | None = None
    path: str = ""
    note: str = ""
    reference: Reference | None = None
    solve_alone_ms: list[float] = field(default_factory=list)
    """Mean-variance rows: the exact active-set solve alone, timed right after each engine call."""


def active_set_call(spec: MethodSpec, data: Inputs) -> Callable[[], object] | None:
    """For the mean-variance rows: the exact active-set solve alone on the same μ, Σ and bounds, else None.

    ``_active_set.solve_model`` on a ``ProblemModel`` built outside the timing: no validation of Σ, no result
    (the engine's ``validate_moments``, pre-checks, constraint check and risk contributions are left out).
    """
    if spec.kind != "variance":
        return None
    from services.optimization import Objective, PortfolioProblem, ProblemModel, _active_set
    from services.types import Moments

    n = data.n
    problem = PortfolioProblem(
        symbols=tuple(data.names),
        objective=Objective.MAX_SHARPE if spec.objective == "max_sharpe" else Objective.MIN_VOLATILITY,
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, data.cap if spec.capped else 1.0),
        risk_free_rate=0.0,
    )
    model = ProblemModel.build(problem, Moments(expected_returns=data.mu, covariance=data.covariance))
    return lambda: _active_set.solve_model(model)


def stratopt_call(spec: MethodSpec, data: Inputs) -> Callable[[], tuple[Any, Reference]]:
    """A closure making the engine call of ``spec`` on ``data``; it returns the result and the reference moments."""
    from services.engine import BlackLittermanSettings, Method, MethodSettings, OptimizationJob, run_optimization
    from services.estimation import BlackLittermanPosterior
    from services.optimization import (
        Objective,
        PortfolioProblem,
        RiskMeasure,
        Uncertainty,
        optimize_risk_measure,
        risk_measure_value,
    )
    from services.types import EstimationSettings, Moments

    n = data.n
    objective = {
        "min_variance": Objective.MIN_VOLATILITY,
        "min_risk": Objective.MIN_VOLATILITY,
        "max_sharpe": Objective.MAX_SHARPE,
        "max_return": Objective.MAX_RETURN,
        "max_utility": Objective.MAX_QUADRATIC_UTILITY,
        "-": Objective.MIN_VOLATILITY,
    }[spec.objective]
    problem = PortfolioProblem(
        symbols=tuple(data.names),
        objective=objective,
        lower_bounds=np.zeros(n),
        upper_bounds=np.full(n, data.cap if spec.capped else 1.0),
        risk_free_rate=0.0,
        risk_aversion=RISK_AVERSION,
    )
    moments = Moments(expected_returns=data.mu, covariance=data.covariance)
    plain = Reference(np.empty(0), data.mu, data.covariance)

    if spec.kind == "scenario":
        scenarios = data.returns.to_numpy()
        measure = RiskMeasure(spec.measure)

        def scenario_call() -> tuple[Any, Reference]:
            result = optimize_risk_measure(
                problem,
                scenarios,
                data.mu,
                risk_measure=measure,
                covariance=data.covariance,
                alpha=ALPHA,
                periods_per_year=PERIODS_PER_YEAR,
            )
            risk_measure_value(scenarios, result.weights, risk_measure=measure, alpha=ALPHA)
            return result, plain

        return scenario_call

    settings: MethodSettings
    if spec.kind == "variance":
        settings = MethodSettings(method=Method.MEAN_VARIANCE)
    elif spec.kind == "erc":
        settings = MethodSettings(method=Method.RISK_PARITY)
    elif spec.kind == "hrp":
        settings = MethodSettings(method=Method.HIERARCHICAL_RISK_PARITY, linkage="single")
    elif spec.kind == "bl":
        views = BlackLittermanSettings(
            picking_matrix=data.bl_picking, view_returns=data.bl_views, prior_returns=data.bl_prior, tau=BL_TAU
        )
        settings = MethodSettings(method=Method.BLACK_LITTERMAN, black_litterman=views)
    else:
        settings = MethodSettings(
            method=Method.ROBUST_OPTIMIZATION,
            uncertainty=Uncertainty.ELLIPSOIDAL,
            robust_confidence=ROBUST_CONFIDENCE,
            robust_observations=data.periods,
        )
    job = OptimizationJob(
        problem=problem,
        inputs=moments,
        settings=EstimationSettings(periods_per_year=PERIODS_PER_YEAR),
        method=settings,
    )

    def engine_call() -> tuple[Any, Reference]:
        outcome = run_optimization(job)
        posterior: BlackLittermanPosterior | None = outcome.posterior
        if posterior is None:
            return outcome.result, plain
        return outcome.result, Reference(np.empty(0), posterior.posterior_returns, posterior.posterior_covariance)

    return engine_call


def solve_path(result: Any) -> str:
    """``result.solve_path`` when the engine exposes one, else the solver (and a status other than OPTIMAL)."""
    path = str(getattr(result, "solve_path", "") or "")
    if path:
        return path
    text = str(getattr(result, "solver", "?"))
    status = str(getattr(result, "status", ""))
    if status and status not in ("OPTIMAL", "CLOSED_FORM"):
        text += f" {status}"
    if getattr(result, "fallback_used", False):
        text += " (fallback)"
    return text


def run_stratopt(spec: MethodSpec, data: Inputs, repeats: int, budget_s: float) -> StratoptRun:
    """Time the engine call: a first call apart, then up to K calls within the budget."""
    run = StratoptRun()
    try:
        call = stratopt_call(spec, data)
        alone = active_set_call(spec, data)
        started = time.perf_counter()
        result, reference = call()
        run.first_ms = (time.perf_counter() - started) * 1e3
        spent = run.first_ms / 1e3
        for _ in range(repeats):
            if spent >= budget_s:
                break
            started = time.perf_counter()
            result, reference = call()
            seconds = time.perf_counter() - started
            spent += seconds
            run.samples_ms.append(seconds * 1e3)
            if alone is not None:
                started = time.perf_counter()
                alone()
                run.solve_alone_ms.append((time.perf_counter() - started) * 1e3)
    except Exception as exc:  # reported in the table
        run.note = f"error: {type(exc).__name__}: {exc}"
        return run
    run.weights = np.asarray(result.weights, dtype=np.float64)
    run.path = solve_path(result)
    run.reference = Reference(run.weights, reference.mu, reference.covariance)
    return run


# ------------------------------------------------------------------------------------------------ libraries


class Shared:
    """Arrays handed to a skfolio estimator by reference.

    sklearn's ``clone`` deep-copies parameters: a copy of Σ on every ``fit`` would be this benchmark's cost, not
    skfolio's.
    """

    def __init__(self, mu: np.ndarray, covariance: np.ndarray) -> None:
        self.mu = mu
        self.covariance = covariance

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        return self


def library_moments(spec: MethodSpec, data: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """The μ and Σ a library receives: annualised, except for the scenario measures, which are per period.

    skfolio's and Riskfolio-Lib's MAD is taken around the prior's μ, so for the scenario measures they get the
    scenarios' own mean (per period, the unit of X; stratopt's MAD is around it too) and Σ / 252. Their objectives
    do not use Σ.
    """
    if spec.kind == "scenario":
        return data.returns.to_numpy().mean(axis=0), data.covariance / PERIODS_PER_YEAR
    return data.mu, data.covariance


def _names_order(weights: Any, names: list[str]) -> np.ndarray:
    """A name → weight mapping (or Series) as an array in the inputs' column order."""
    return np.asarray(pd.Series(weights)[names].to_numpy(), dtype=np.float64)


def _pypfopt_solver(spec: MethodSpec, data: Inputs, solver: str | None) -> Solve:
    """A closure running PyPortfolioOpt's version of ``spec``."""
    from pypfopt import EfficientCDaR, EfficientCVaR, EfficientFrontier, HRPOpt
    from pypfopt.black_litterman import BlackLittermanModel

    names = data.names
    mu_values, covariance_values = library_moments(spec, data)
    mu = pd.Series(mu_values, index=names)
    covariance = pd.DataFrame(covariance_values, index=names, columns=names)
    bounds = (0.0, data.cap if spec.capped else 1.0)

    def solver_of(optimizer: Any) -> str:
        stats = getattr(getattr(optimizer, "_opt", None), "solver_stats", None)
        return str(getattr(stats, "solver_name", None) or solver or "?")

    def frontier(expected: Any, cov: Any, chosen: str | None) -> tuple[np.ndarray, str]:
        optimizer = EfficientFrontier(expected, cov, weight_bounds=bounds, solver=chosen)
        if spec.objective == "max_sharpe":
            optimizer.max_sharpe(risk_free_rate=0.0)
        else:
            optimizer.min_volatility()
        return np.asarray(optimizer.weights, dtype=np.float64), solver_of(optimizer)

    def once(chosen: str | None) -> tuple[np.ndarray, str]:
        if spec.kind == "variance":
            return frontier(mu, covariance, chosen)
        if spec.kind == "bl":
            model = BlackLittermanModel(
                covariance, pi=pd.Series(data.bl_prior, index=names), P=data.bl_picking, Q=data.bl_views, tau=BL_TAU
            )
            return frontier(model.bl_returns(), model.bl_cov(), chosen)
        if spec.kind == "hrp":
            return _names_order(HRPOpt(cov_matrix=covariance).optimize(linkage_method="single"), names), "HRP"
        if spec.measure == "CVAR":
            optimizer: Any = EfficientCVaR(mu, data.returns, beta=ALPHA, weight_bounds=bounds, solver=chosen)
            optimizer.min_cvar()
        elif spec.measure == "CDAR":
            optimizer = EfficientCDaR(mu, data.returns, beta=ALPHA, weight_bounds=bounds, solver=chosen)
            optimizer.min_cdar()
        else:
            raise NotImplementedError(f"PyPortfolioOpt has no {spec.name}")
        return np.asarray(optimizer.weights, dtype=np.float64), solver_of(optimizer)

    state: dict[str, str | None] = {"solver": solver, "note": None}

    def solve() -> tuple[np.ndarray, str]:
        try:
            weights, used = once(state["solver"])
        except Exception as exc:
            if state["solver"] is not None or spec.kind == "hrp":
                raise
            # The default solver failed (e.g. OSQP's iteration limit): the rest of the calls use Clarabel.
            state["solver"] = "CLARABEL"
            state["note"] = f"default solver failed ({type(exc).__name__}), re-run with"
            weights, used = once("CLARABEL")
        return weights, f"{state['note']} {used}" if state["note"] else used

    return solve


def _skfolio_solver(spec: MethodSpec, data: Inputs) -> Solve:
    """A closure fitting skfolio's version of ``spec`` with a prior that hands it exactly μ and Σ."""
    from skfolio import RiskMeasure  # type: ignore[import-untyped]
    from skfolio.cluster import HierarchicalClustering, LinkageMethod  # type: ignore[import-untyped]
    from skfolio.distance import CovarianceDistance  # type: ignore[import-untyped]
    from skfolio.optimization import (  # type: ignore[import-untyped]
        HierarchicalRiskParity,
        MeanRisk,
        ObjectiveFunction,
        RiskBudgeting,
    )
    from skfolio.prior import BasePrior, BlackLitterman, ReturnDistribution  # type: ignore[import-untyped]
    from skfolio.seriation import HierarchicalSeriation  # type: ignore[import-untyped]
    from skfolio.uncertainty_set import EmpiricalMuUncertaintySet  # type: ignore[import-untyped]

    class GivenMomentsPrior(BasePrior):  # type: ignore[misc]
        """Prior whose return distribution has the given μ and Σ, and X as its scenarios."""

        def __init__(self, moments: Shared | None = None) -> None:
            self.moments = moments

        def fit(self, X: Any, y: Any = None, **fit_params: Any) -> GivenMomentsPrior:
            assert self.moments is not None
            self.return_distribution_ = ReturnDistribution(
                mu=self.moments.mu, covariance=self.moments.covariance, returns=np.asarray(X, dtype=np.float64)
            )
            return self

    given = Shared(*library_moments(spec, data))
    upper = data.cap if spec.capped else 1.0

    def build() -> Any:
        prior = GivenMomentsPrior(moments=given)
        if spec.kind == "variance":
            if spec.objective == "max_sharpe":
                objective, measure = ObjectiveFunction.MAXIMIZE_RATIO, RiskMeasure.STANDARD_DEVIATION
            else:
                objective, measure = ObjectiveFunction.MINIMIZE_RISK, RiskMeasure.VARIANCE
            return MeanRisk(
                objective_function=objective,
                risk_measure=measure,
                prior_estimator=prior,
                min_weights=0.0,
                max_weights=upper,
                risk_free_rate=0.0,
            )
        if spec.kind == "scenario":
            measure = {
                "CVAR": RiskMeasure.CVAR,
                "MAD": RiskMeasure.MEAN_ABSOLUTE_DEVIATION,
                "CDAR": RiskMeasure.CDAR,
            }[spec.measure]
            return MeanRisk(
                objective_function=ObjectiveFunction.MINIMIZE_RISK,
                risk_measure=measure,
                prior_estimator=prior,
                cvar_beta=ALPHA,
                cdar_beta=ALPHA,
            )
        if spec.kind == "erc":
            return RiskBudgeting(risk_measure=RiskMeasure.VARIANCE, prior_estimator=prior)
        if spec.kind == "hrp":
            return HierarchicalRiskParity(
                risk_measure=RiskMeasure.VARIANCE,
                prior_estimator=prior,
                distance_estimator=CovarianceDistance(covariance_estimator="precomputed"),
                seriation_estimator=HierarchicalSeriation(
                    hierarchical_clustering_estimator=HierarchicalClustering(linkage_method=LinkageMethod.SINGLE),
                    optimal_ordering=False,
                ),
            )
        if spec.kind == "bl":
            posterior = BlackLitterman(
                views=data.bl_view_strings,
                prior_estimator=GivenMomentsPrior(moments=Shared(data.bl_prior, data.covariance)),
                tau=BL_TAU,
                risk_free_rate=0.0,
            )
            return MeanRisk(
                objective_function=ObjectiveFunction.MAXIMIZE_RATIO,
                risk_measure=RiskMeasure.STANDARD_DEVIATION,
                prior_estimator=posterior,
                risk_free_rate=0.0,
            )
        uncertainty = EmpiricalMuUncertaintySet(
            prior_estimator=GivenMomentsPrior(moments=given),
            confidence_level=ROBUST_CONFIDENCE,
            diagonal=False,
            n_eff=data.periods / PERIODS_PER_YEAR,
        )
        utility = spec.objective == "max_utility"
        return MeanRisk(
            objective_function=ObjectiveFunction.MAXIMIZE_UTILITY if utility else ObjectiveFunction.MAXIMIZE_RETURN,
            risk_measure=RiskMeasure.VARIANCE,
            risk_aversion=RISK_AVERSION / 2.0,
            prior_estimator=prior,
            mu_uncertainty_set_estimator=uncertainty,
        )

    note = "HRP" if spec.kind == "hrp" else "CLARABEL"

    def solve() -> tuple[np.ndarray, str]:
        model = build()
        model.fit(data.returns)
        return np.asarray(model.weights_, dtype=np.float64), note

    return solve


def _riskfolio_solver(spec: MethodSpec, data: Inputs) -> Solve:
    """A closure running Riskfolio-Lib's version of ``spec`` on a ``Portfolio`` with ``mu`` and ``cov`` set."""
    import riskfolio as rp  # type: ignore[import-untyped]

    names = data.names
    mu, covariance_values = library_moments(spec, data)
    covariance = pd.DataFrame(covariance_values, index=names, columns=names)
    if spec.kind == "hrp":
        hierarchical = rp.HCPortfolio(returns=data.returns)

        def solve_hrp() -> tuple[np.ndarray, str]:
            frame = hierarchical.optimization(
                model="HRP",
                codependence="custom_cov",
                rm="MV",
                method_cov="custom_cov",
                custom_cov=covariance,
                linkage="single",
                leaf_order=False,
            )
            return _names_order(frame["weights"], names), "HRP"

        return solve_hrp

    portfolio = rp.Portfolio(returns=data.returns)
    portfolio.mu = pd.DataFrame(mu.reshape(1, -1), columns=names)
    portfolio.cov = covariance
    portfolio.alpha = 1.0 - ALPHA
    portfolio.upperlng = data.cap if spec.capped else 1.0
    if spec.kind == "robust":
        from scipy import stats

        portfolio.cov_mu = covariance * (PERIODS_PER_YEAR / data.periods)
        portfolio.k_mu = float(np.sqrt(stats.chi2.ppf(ROBUST_CONFIDENCE, data.n)))
        # Read by wc_optimization but unused with Umu="ellip", Ucov=None.
        portfolio.d_mu = pd.DataFrame(np.zeros((1, data.n)), columns=names)
        portfolio.cov_l = portfolio.cov_u = covariance
        portfolio.cov_sigma = pd.DataFrame(np.eye(1))
        portfolio.k_sigma = 0.0

    def solve() -> tuple[np.ndarray, str]:
        if spec.kind == "variance":
            obj = "Sharpe" if spec.objective == "max_sharpe" else "MinRisk"
            frame = portfolio.optimization(model="Classic", rm="MV", obj=obj, rf=0, l=0, hist=True)
        elif spec.kind == "scenario":
            rm = {"CVAR": "CVaR", "MAD": "MAD", "CDAR": "CDaR"}[spec.measure]
            frame = portfolio.optimization(model="Classic", rm=rm, obj="MinRisk", rf=0, l=0, hist=True)
        elif spec.kind == "erc":
            frame = portfolio.rp_optimization(model="Classic", rm="MV", rf=0, b=None, hist=True)
        elif spec.kind == "robust":
            obj = "Utility" if spec.objective == "max_utility" else "MaxRet"
            frame = portfolio.wc_optimization(obj=obj, rf=0, l=RISK_AVERSION / 2.0, Umu="ellip", Ucov=None)
        else:
            raise NotImplementedError(f"Riskfolio-Lib has no {spec.name} here")
        if frame is None:
            raise RuntimeError("Riskfolio-Lib returned no solution")
        return np.asarray(frame.to_numpy().ravel(), dtype=np.float64), "CLARABEL"

    return solve


def _library_child(
    library: str,
    data: Inputs,
    methods: list[str],
    repeats: int,
    budget_s: float,
    pypfopt_solver: str | None,
    out: Any,
) -> None:
    """Child process: import, then per method ``start``, samples (seconds; weights and note on the first), ``done``."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the libraries' prints must not reach the report
    sys.stdout = sys.stderr
    warnings.filterwarnings("ignore")
    try:
        importlib.import_module(LIBRARY_MODULES[library])
    except Exception as exc:
        out.put(("failed", "", f"{type(exc).__name__}: {exc}", None, None))
        return
    out.put(("ready", "", None, None, None))
    for name in methods:
        spec = METHODS[name]
        out.put(("start", name, None, None, None))
        try:
            solve: Solve
            if library == "pypfopt":
                solve = _pypfopt_solver(spec, data, pypfopt_solver)
            elif library == "skfolio":
                solve = _skfolio_solver(spec, data)
            else:
                solve = _riskfolio_solver(spec, data)
            spent = 0.0
            for k in range(repeats + 1):
                started = time.perf_counter()
                weights, note = solve()
                seconds = time.perf_counter() - started
                spent += seconds
                out.put(("sample", name, seconds, weights if k == 0 else None, note if k == 0 else None))
                if spent >= budget_s:
                    break
            out.put(("done", name, None, None, None))
        except Exception as exc:  # reported in the table
            out.put(("error", name, f"{type(exc).__name__}: {exc}", None, None))
    out.put(("finished", "", None, None, None))


@dataclass
class LibraryRun:
    """Timings (seconds, the first call first) and first-call weights of one library for one method at one N."""

    samples: list[float] = field(default_factory=list)
    weights: np.ndarray | None = None
    solver: str = ""
    note: str = ""

    @property
    def timed(self) -> list[float]:
        """The samples of the median: those after the first call, or the first alone."""
        return self.samples[1:] or self.samples[:1]


def run_library(
    library: str,
    data: Inputs,
    methods: list[str],
    repeats: int,
    limit_s: float,
    budget_s: float,
    pypfopt_solver: str | None,
) -> dict[str, LibraryRun]:
    """Run one library's methods in spawned children.

    A method whose first call passes ``limit_s`` is abandoned (the child stopped) and a fresh child takes the methods
    after it.
    """
    runs: dict[str, LibraryRun] = {}
    pending = list(methods)
    context = mp.get_context("spawn")
    while pending:
        results = context.Queue()
        child = context.Process(
            target=_library_child, args=(library, data, pending, repeats, budget_s, pypfopt_solver, results)
        )
        child.start()
        current: str | None = None
        try:
            try:
                kind, _, value, _, _ = results.get(timeout=READY_TIMEOUT_S)
            except queue.Empty:
                kind, value = "failed", f"no answer within {READY_TIMEOUT_S:g} s"
            if kind != "ready":
                for name in pending:
                    runs[name] = LibraryRun(note=f"failed to start: {value}")
                break
            timeout = limit_s
            while True:
                try:
                    kind, name, value, weights, note = results.get(timeout=timeout)
                except queue.Empty:
                    if current is None:  # between methods: the child is gone
                        for name in pending:
                            runs.setdefault(name, LibraryRun(note="child stopped"))
                        pending = []
                        break
                    run = runs[current]
                    run.note = f"skipped (> {limit_s:g} s)" if not run.samples else "stopped (budget)"
                    progress(f"N={data.n}: {library} {current}: {run.note}")
                    pending = pending[pending.index(current) + 1 :]
                    break
                if kind == "start":
                    current, timeout = name, limit_s
                    runs[name] = LibraryRun()
                elif kind == "sample":
                    run = runs[name]
                    run.samples.append(float(value))
                    if weights is not None:
                        run.weights, run.solver = weights, str(note)
                    timeout = budget_s + limit_s
                elif kind == "error":
                    runs[name].note = f"error: {value}"
                    progress(f"N={data.n}: {library} {name}: error: {value}")
                    current, timeout = None, limit_s
                elif kind == "done":
                    current, timeout = None, limit_s
                else:  # finished
                    pending = []
                    break
        finally:
            if child.is_alive():
                child.terminate()
            child.join(timeout=10)
    return runs


# ------------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    """Results of one method at one N."""

    spec: MethodSpec
    n: int
    kind: str
    ours: StratoptRun
    libraries: dict[str, LibraryRun]
    gaps: dict[str, str] = field(default_factory=dict)
    infeasible: dict[str, float] = field(default_factory=dict)
    repeats: int = 0


def run_size(
    n: int,
    methods: list[str],
    repeats: int,
    limit_s: float,
    budget_s: float,
    pypfopt_solver: str | None,
    libraries: tuple[str, ...] = LIBRARIES,
) -> list[Row]:
    """Time stratopt in-process and the libraries in children at one N; compare the weights."""
    data = inputs_for(n)
    rows = []
    for name in methods:
        spec = METHODS[name]
        progress(f"N={n}: stratopt {name}")
        ours = run_stratopt(spec, data, repeats, budget_s)
        if ours.note:
            progress(f"N={n}: stratopt {name}: {ours.note}")
        else:
            progress(
                f"N={n}: stratopt {name}: first {ours.first_ms:.1f} ms, calls (ms) "
                + " ".join(f"{x:.1f}" for x in ours.samples_ms)
            )
        rows.append(Row(spec, n, data.kind, ours, {}, repeats=repeats))
    for library in libraries:
        available = [name for name in methods if library in METHODS[name].libraries]
        if not available:
            continue
        progress(f"N={n}: {LIBRARY_NAMES[library]} (child process, {len(available)} methods, up to {repeats} calls)")
        runs = run_library(library, data, available, repeats, limit_s, budget_s, pypfopt_solver)
        for row in rows:
            if row.spec.name not in runs:
                continue
            run = row.libraries[library] = runs[row.spec.name]
            if run.weights is not None and row.ours.reference is not None:
                _, row.gaps[library] = comparison(row.spec, run.weights, data, row.ours.reference)
            if run.weights is not None and row.spec.kind != "erc":
                breach = infeasibility(row.spec, run.weights, data)
                if breach > FEASIBILITY_TOLERANCE:
                    row.infeasible[library] = breach
    for row in rows:
        if row.spec.kind == "erc" and row.ours.weights is not None:
            row.ours.path += f"; rc {max_rc_error(row.ours.weights, data.covariance):.1e}"
    return rows


def versions() -> str:
    """Versions of the libraries involved."""
    names = ("numpy", "scipy", "cvxpy", "clarabel", "osqp", "jax", "pyportfolioopt", "skfolio", "riskfolio-lib")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} ?")
    return ", ".join(found)


def library_cell(row: Row, library: str) -> str:
    """Median ms (solver for PyPortfolioOpt, K when fewer than asked), or why there is none."""
    if library not in row.spec.libraries:
        return "n/a"
    run = row.libraries.get(library)
    if run is None:
        return "not run"
    if not run.samples or run.weights is None:
        return "error (notes)" if run.note.startswith("error") else run.note or "no result"
    text = f"{float(np.median(run.timed)) * 1e3:.1f}"
    if library == "pypfopt" and run.solver != "HRP":
        text += f" [{run.solver}]"
    if len(run.samples) - 1 < row.repeats:
        text += f" (K={len(run.timed)})"
    if run.note:
        text += " (error, notes)" if run.note.startswith("error") else f" ({run.note})"
    return text


def report(
    rows: list[Row], load_before: tuple[float, ...], load_after: tuple[float, ...], device: str, blas: str
) -> str:
    """The printed report."""
    lines = [
        "# Per-method solve time and objective gap: stratopt engine vs PyPortfolioOpt, skfolio, Riskfolio-Lib",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        f"load average before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}",
        f"JAX device: {device}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        f"BLAS threads here: {blas}; libraries' children: OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}",
        f"versions: {versions()}",
        f"command: {shlex.join(['python', '-m', 'benchmarks.methods', *sys.argv[1:]])}",
        f"inputs: T = {PERIODS} daily returns; N = {REAL_N} real (data/sp500_dataset.csv.gz), other N the seeded "
        "5-factor model; μ, Σ annualised x252; r_f = 0",
        "",
        "times in ms: median over K calls after a first call (stratopt's first call, which may build and cache its",
        "program or compile JAX, is the 'first' column; a library's first call is left out of its median);",
        "ratio = fastest library median / stratopt median (> 1: stratopt faster); gap > 0: stratopt's objective",
        "better (relative, evaluated in NumPy on each side's weights); erc: the library's max |RC_i·N − 1|;",
        "hrp: max |w − w_stratopt| (HRP has no objective); ! = library weights off budget/bounds by > 1e-6;",
        "|gap| below about 1e-7 is solver tolerance (libraries' defaults are 1e-8; weights up to 1e-6 outside a",
        "bound, unmarked, can also buy that much); [solver] = the solver PyPortfolioOpt's default choice used;",
        "skfolio and Riskfolio-Lib: Clarabel",
        "",
        "| method | N | stratopt | first | K | PyPortfolioOpt | skfolio | Riskfolio-Lib | ratio "
        "| gap PyPortfolioOpt | gap skfolio | gap Riskfolio-Lib | stratopt path |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for row in rows:
        ours = row.ours
        if ours.weights is None:
            cells = [row.spec.name, str(row.n), "error", "-", "0"]
            notes.append(f"stratopt {row.spec.name} at N={row.n}: {ours.note}")
            median = float("nan")
        else:
            median = float(np.median(ours.samples_ms or [ours.first_ms]))
            cells = [row.spec.name, str(row.n), f"{median:.1f}", f"{ours.first_ms:.1f}", str(len(ours.samples_ms))]
            if ours.solve_alone_ms and ours.path == "ACTIVE_SET":
                alone = float(np.median(ours.solve_alone_ms))
                notes.append(
                    f"stratopt {row.spec.name} at N={row.n}: the exact active-set solve alone {alone:.1f} ms, "
                    f"the engine call {median / alone:.2f}x that"
                )
        cells += [library_cell(row, library) for library in LIBRARIES]
        medians = [
            float(np.median(run.timed)) * 1e3
            for run in row.libraries.values()
            if run.samples and run.weights is not None
        ]
        cells.append(f"{min(medians) / median:.1f}x" if medians and np.isfinite(median) else "-")
        for library in LIBRARIES:
            gap = row.gaps.get(library, "-" if library in row.spec.libraries else "n/a")
            if library in row.infeasible:
                gap += " !"
                notes.append(
                    f"{LIBRARY_NAMES[library]} {row.spec.name} at N={row.n}: weights off the budget or a bound by "
                    f"{row.infeasible[library]:.1e}"
                )
            cells.append(gap)
        cells.append(ours.path or "-")
        lines.append("| " + " | ".join(cells) + " |")
        for library in LIBRARIES:
            run = row.libraries.get(library)
            if run is not None and run.note:
                notes.append(f"{LIBRARY_NAMES[library]} {row.spec.name} at N={row.n}: {run.note}")
    lines.append("")
    selected = {row.spec.name for row in rows}
    missing = [f"{LIBRARY_NAMES[lib]} {name}: {why}" for (name, lib), why in NOT_AVAILABLE.items() if name in selected]
    lines.append("n/a: " + ("; ".join(missing) if missing else "none"))
    lines.append("notes: " + ("; ".join(notes) if notes else "every library ran every method it has at every N"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.methods",
        description="Per-method solve time and objective gap: stratopt vs PyPortfolioOpt, skfolio, Riskfolio-Lib.",
    )
    parser.add_argument("--sizes", default="20,100,500,2000", help="comma-separated N (default 20,100,500,2000)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument(
        "--libraries", default=",".join(LIBRARIES), help=f"comma-separated, of {', '.join(LIBRARIES)} (default all)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="K calls per side, method and N (30/10/5 by N)")
    parser.add_argument("--limit-s", type=float, default=60.0, help="skip a library whose first call exceeds this")
    parser.add_argument("--budget-s", type=float, default=120.0, help="time one side may spend on a method at one N")
    parser.add_argument("--pypfopt-solver", default=None, help="PyPortfolioOpt's solver (default: its own choice)")
    parser.add_argument(
        "--xla-multi-thread",
        action="store_true",
        help="leave XLA's CPU backend multi-threaded (default: one thread, as in the service's solver workers)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads everywhere (default 1, as in the service's solver workers; 0: the libraries' own)",
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    if not args.sizes or any(n < 5 for n in args.sizes):
        parser.error("--sizes needs N >= 5 (the Black-Litterman views use five names)")
    args.methods = [s.strip() for s in args.methods.split(",") if s.strip()]
    unknown = [s for s in args.methods if s not in METHODS]
    if not args.methods or unknown:
        parser.error(f"--methods must be taken from {', '.join(METHODS)}; got {', '.join(unknown) or 'none'}")
    args.libraries = tuple(s.strip() for s in args.libraries.split(",") if s.strip())
    if any(s not in LIBRARIES for s in args.libraries):
        parser.error(f"--libraries must be taken from {', '.join(LIBRARIES)}; got {', '.join(args.libraries)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.blas_threads < 0:
        parser.error("--blas-threads must be 0 (no limit) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    if not args.xla_multi_thread:
        os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), *SINGLE_THREAD_XLA_FLAGS]))
    if args.blas_threads:
        for name in BLAS_ENV:  # read by BLAS libraries when they load: SciPy's here, all of them in the children
            os.environ[name] = str(args.blas_threads)

    import jax
    from threadpoolctl import threadpool_info, threadpool_limits

    import services.engine  # noqa: F401  (loads SciPy's BLAS before the limit below)

    limits = threadpool_limits(limits=args.blas_threads) if args.blas_threads else None
    blas = ", ".join(sorted({f"{p.get('internal_api', '?')} {p.get('num_threads', '?')}" for p in threadpool_info()}))
    device = ", ".join(str(d) for d in jax.devices())
    load_before = os.getloadavg()
    rows: list[Row] = []
    for n in args.sizes:
        repeats = args.repeats or default_repeats(n)
        rows += run_size(n, args.methods, repeats, args.limit_s, args.budget_s, args.pypfopt_solver, args.libraries)
    load_after = os.getloadavg()
    print(report(rows, load_before, load_after, device, blas))
    del limits
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
