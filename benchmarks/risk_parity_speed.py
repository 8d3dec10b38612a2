"""Speed and accuracy of ``services.optimization._risk_budgeting.risk_budgeting`` next to skfolio and Riskfolio-Lib.

What is measured
----------------
For each size N the equal-risk-contribution (ERC) portfolio of one covariance Σ is solved by

- stratopt: ``risk_budgeting(Σ)`` (JAX Newton, float64), timed around the call (validation + solve + the
  NumPy risk-contribution check). The first call for a new N traces and compiles the JAX loop; that cost is
  measured on its own by ``warm_up(N)`` (compile + a solve on the identity that ends at the starting point) and
  printed as ``compile``; then one untimed call on Σ, and the median over the K calls after it.
- skfolio: ``RiskBudgeting(risk_measure=RiskMeasure.VARIANCE).fit(X)`` with a prior that hands the optimizer
  exactly Σ (a ``BasePrior`` whose ``return_distribution_`` has covariance Σ), so both see the same matrix;
  timed around ``fit`` (cvxpy problem construction + Clarabel, skfolio's default tolerances 1e-9).
- Riskfolio-Lib: ``Portfolio(returns=X)`` with ``mu`` and ``cov`` set to the same Σ, timed around
  ``rp_optimization(model="Classic", rm="MV", rf=0, b=None, hist=True)`` (cvxpy + Clarabel, its default
  solver list and tolerances).

Each library runs in a spawned child process so that a call can be abandoned: if its first call at some N takes
longer than ``--limit-s`` (default 60 s) the child is stopped and the row says ``skipped (> 60 s)``. Later calls
stop once a library has spent ``--budget-s`` (default 180 s) at that N, so K may be smaller than asked (the
table prints the K used).

Accuracy: ``max RC err`` is max_i |RC_i / b_i − 1| with RC_i = w_i (Σw)_i / wᵀΣw and b_i = 1/N, computed here in
NumPy from each library's weights (first call), and ``max|Δw|`` the largest weight difference to stratopt.

Inputs
------
- N = 20: real data, the sample covariance (NumPy, ddof = 1) of all 8312 daily returns of the 20 stocks of
  ``data/sp500_dataset.csv.gz``; the libraries get those returns as X;
- other N (default 100, 500, 2000): the daily covariance of a 5-factor model with a fixed seed,
  Σ = 10⁻⁴ B Bᵀ + diag(s²) with market loadings ~ N(1, 0.3), four style loadings ~ N(0, 0.4) and idiosyncratic
  volatility s ~ U(0.8 %, 2 %); the libraries' X is 756 daily returns simulated from the same model, used only
  for their API (their variance model uses Σ as given).

Run
---
::

    uv run python -m benchmarks.risk_parity_speed                        # N = 20, 100, 500, 2000
    uv run python -m benchmarks.risk_parity_speed --sizes 20,100 --repeats 50
    uv run python -m benchmarks.risk_parity_speed --xla-single-thread     # XLA on one CPU thread

Options: ``--sizes`` (comma-separated N, default ``20,100,500,2000``), ``--repeats K`` (default 30 for N <= 100,
10 for N <= 500 and 5 above, for every library), ``--limit-s`` (longest first call of a library before it is
skipped at that N, default 60), ``--budget-s`` (time a library may spend at one N, default 180),
``--xla-single-thread`` (XLA's CPU backend on one thread: on a machine whose cores are busy with other work,
XLA's multi-threaded Cholesky can stall for seconds while its threads wait for each other; one thread gives
stable times). Progress goes to stderr, the report to stdout. Other load on the machine shows up directly in the
numbers: the header prints the load average before and after the run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import multiprocessing as mp
import os
import platform
import queue
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REAL_DATA = Path(__file__).resolve().parent.parent / "data" / "sp500_dataset.csv.gz"
REAL_N = 20
PERIODS = 756
"""Simulated daily returns handed to the libraries for synthetic N (their API needs returns)."""
SEED = 20_240_521
FACTORS = 5
LIBRARIES = ("skfolio", "riskfolio")
SINGLE_THREAD_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
"""XLA flags of ``--xla-single-thread``: XLA's CPU backend (Eigen thread pool and intra-op parallelism) on one
thread. The libraries' children inherit the environment but do not use XLA."""
READY_TIMEOUT_S = 600.0
"""Longest a library's child process may take to import and receive its inputs."""


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """One covariance and the returns frame the libraries receive with it."""

    kind: str
    covariance: np.ndarray
    returns: pd.DataFrame


def real_inputs() -> Inputs:
    """Sample covariance of all daily returns of the 20 S&P 500 stocks, and those returns."""
    prices = pd.read_csv(REAL_DATA, index_col=0, parse_dates=True).sort_index()
    returns = prices.pct_change().iloc[1:].astype(np.float64)
    return Inputs("real", np.cov(returns.to_numpy(), rowvar=False), returns)


def synthetic_inputs(n: int, seed: int = SEED) -> Inputs:
    """Covariance of a seeded ``FACTORS``-factor model and ``PERIODS`` returns simulated from it."""
    rng = np.random.default_rng([seed, n])
    loadings = np.column_stack([rng.normal(1.0, 0.3, n), rng.normal(0.0, 0.4, (n, FACTORS - 1))])
    idiosyncratic = rng.uniform(0.008, 0.02, n)
    covariance = 1e-4 * loadings @ loadings.T + np.diag(idiosyncratic**2)
    values = rng.normal(0.0, 0.01, (PERIODS, FACTORS)) @ loadings.T + rng.standard_normal((PERIODS, n)) * idiosyncratic
    columns = [f"SYN{i:04d}" for i in range(n)]
    index = pd.bdate_range(end="2022-12-30", periods=PERIODS)
    return Inputs("synthetic", covariance, pd.DataFrame(values, index=index, columns=columns))


def inputs_for(n: int) -> Inputs:
    """Real data for N = 20, the factor model otherwise."""
    return real_inputs() if n == REAL_N else synthetic_inputs(n)


def max_rc_error(weights: np.ndarray, covariance: np.ndarray) -> float:
    """max_i |RC_i · N − 1| of the ERC target, in NumPy."""
    marginal = covariance @ weights
    contributions = weights * marginal / (weights @ marginal)
    return float(np.max(np.abs(contributions * weights.size - 1.0)))


def default_repeats(n: int) -> int:
    """K by size: 30 up to N = 100, 10 up to N = 500, 5 above."""
    return 30 if n <= 100 else 10 if n <= 500 else 5


# ------------------------------------------------------------------------------------------------ libraries


def _skfolio_solver(covariance: np.ndarray, returns: pd.DataFrame) -> Any:
    """A closure fitting skfolio's variance RiskBudgeting (ERC) on exactly ``covariance``."""
    from skfolio import RiskMeasure  # type: ignore[import-untyped]
    from skfolio.optimization import RiskBudgeting  # type: ignore[import-untyped]
    from skfolio.prior import BasePrior, ReturnDistribution  # type: ignore[import-untyped]

    class GivenCovariancePrior(BasePrior):  # type: ignore[misc]
        """Prior whose return distribution has the given covariance (mean of X as mu)."""

        def __init__(self, covariance: np.ndarray | None = None) -> None:
            self.covariance = covariance

        def fit(self, X: Any, y: Any = None, **fit_params: Any) -> GivenCovariancePrior:
            values = np.asarray(X, dtype=np.float64)
            self.return_distribution_ = ReturnDistribution(
                mu=values.mean(axis=0), covariance=np.asarray(self.covariance), returns=values
            )
            return self

    def solve() -> np.ndarray:
        model = RiskBudgeting(
            risk_measure=RiskMeasure.VARIANCE, prior_estimator=GivenCovariancePrior(covariance=covariance)
        )
        model.fit(returns)
        return np.asarray(model.weights_, dtype=np.float64)

    return solve


def _riskfolio_solver(covariance: np.ndarray, returns: pd.DataFrame) -> Any:
    """A closure running Riskfolio-Lib's ``rp_optimization(model="Classic", rm="MV")`` (ERC) on ``covariance``."""
    import riskfolio as rp  # type: ignore[import-untyped]

    portfolio = rp.Portfolio(returns=returns)
    portfolio.mu = returns.mean().to_frame().T
    portfolio.cov = pd.DataFrame(covariance, index=returns.columns, columns=returns.columns)

    def solve() -> np.ndarray:
        frame = portfolio.rp_optimization(model="Classic", rm="MV", rf=0, b=None, hist=True)
        if frame is None:
            raise RuntimeError("rp_optimization returned no solution")
        return np.asarray(frame.to_numpy().ravel(), dtype=np.float64)

    return solve


def _library_child(
    library: str, covariance: np.ndarray, returns: pd.DataFrame, repeats: int, budget_s: float, out: Any
) -> None:
    """Child process: report ready, then (seconds, weights of the first call) per call until K or the budget."""
    warnings.filterwarnings("ignore")
    try:
        build = _skfolio_solver if library == "skfolio" else _riskfolio_solver
        solve = build(covariance, returns)
        out.put(("ready", None, None))
        spent = 0.0
        for k in range(repeats):
            started = time.perf_counter()
            weights = solve()
            seconds = time.perf_counter() - started
            spent += seconds
            out.put(("sample", seconds, weights if k == 0 else None))
            if spent >= budget_s:
                break
        out.put(("done", None, None))
    except Exception as exc:  # reported in the table
        out.put(("error", f"{type(exc).__name__}: {exc}", None))


@dataclass
class LibraryRun:
    """Timings (seconds) and first-call weights of one library at one N, or why there are none."""

    samples: list[float] = field(default_factory=list)
    weights: np.ndarray | None = None
    note: str = ""
    rc_error: float = float("nan")
    weight_gap: float = float("nan")


def run_library(library: str, data: Inputs, repeats: int, limit_s: float, budget_s: float) -> LibraryRun:
    """Run one library in a spawned child; abandon it when its first call exceeds ``limit_s``."""
    context = mp.get_context("spawn")
    results = context.Queue()
    child = context.Process(
        target=_library_child, args=(library, data.covariance, data.returns, repeats, budget_s, results)
    )
    child.start()
    run = LibraryRun()
    try:
        kind, _, _ = results.get(timeout=READY_TIMEOUT_S)
        if kind != "ready":
            run.note = "failed to start"
            return run
        timeout = limit_s
        while True:
            try:
                kind, value, weights = results.get(timeout=timeout)
            except queue.Empty:
                run.note = f"skipped (> {limit_s:g} s)" if not run.samples else "stopped"
                return run
            if kind == "sample":
                run.samples.append(float(value))
                if weights is not None:
                    run.weights = weights
                timeout = budget_s + limit_s
            elif kind == "error":
                run.note = f"error: {value}"
                return run
            else:
                return run
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=10)


# ------------------------------------------------------------------------------------------------- report


@dataclass
class Row:
    """Results at one N."""

    n: int
    kind: str
    ours_compile_ms: float
    ours_ms: list[float]
    ours_iterations: int
    ours_error: float
    libraries: dict[str, LibraryRun]


def run_size(n: int, repeats: int, limit_s: float, budget_s: float) -> Row:
    """Time stratopt in-process and the libraries in children at one N."""
    from services.optimization import risk_budgeting, warm_up

    data = inputs_for(n)
    progress(f"N={n}: stratopt, warm_up (trace + compile)")
    compile_ms = warm_up(n) * 1e3
    first = risk_budgeting(data.covariance)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = risk_budgeting(data.covariance)
        samples.append((time.perf_counter() - started) * 1e3)
    progress(f"N={n}: stratopt calls (ms): {' '.join(f'{x:.1f}' for x in samples)}")
    if not np.array_equal(result.weights, first.weights):
        progress(
            f"N={n}: note: repeated calls gave weights differing by {np.abs(result.weights - first.weights).max():.2g}"
        )
    libraries = {}
    for library in LIBRARIES:
        progress(f"N={n}: {library} (child process, up to {repeats} calls)")
        libraries[library] = run_library(library, data, repeats, limit_s, budget_s)
        run = libraries[library]
        if run.weights is not None:
            run.rc_error = max_rc_error(run.weights, data.covariance)
            run.weight_gap = float(np.abs(run.weights - result.weights).max())
        if run.note:
            progress(f"N={n}: {library}: {run.note}")
    return Row(
        n=n,
        kind=data.kind,
        ours_compile_ms=compile_ms,
        ours_ms=samples,
        ours_iterations=result.iterations,
        ours_error=max_rc_error(result.weights, data.covariance),
        libraries=libraries,
    )


def versions() -> str:
    """Versions of the libraries involved."""
    names = ("jax", "jaxlib", "numpy", "skfolio", "riskfolio-lib", "cvxpy", "clarabel")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} ?")
    return ", ".join(found)


def report(rows: list[Row], load_before: tuple[float, ...], load_after: tuple[float, ...], device: str) -> str:
    """The printed report."""
    lines = [
        "# Risk budgeting (ERC, variance): stratopt JAX Newton vs skfolio and Riskfolio-Lib",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        f"load average before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}",
        f"JAX device: {device} (float64 via jax.enable_x64); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        f"versions: {versions()}",
        f"command: {shlex.join(['python', '-m', 'benchmarks.risk_parity_speed', *sys.argv[1:]])}",
        "",
        "times in ms; median over K calls (stratopt: after its first call); ratio = library median / stratopt median;",
        "compile = stratopt's one-off trace + XLA compile for that N (warm_up, before the timed calls);",
        "max RC err = max_i |RC_i / (1/N) − 1| from each library's weights (NumPy); Δw = max |w − w_stratopt|",
        "",
        "| N | data | stratopt median | K | compile | iters | RC err "
        "| skfolio median | K | ratio | RC err | Δw | riskfolio median | K | ratio | RC err | Δw |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = float(np.median(row.ours_ms))
        cells = [
            str(row.n),
            row.kind,
            f"{ours:.3f}",
            str(len(row.ours_ms)),
            f"{row.ours_compile_ms:.0f}",
            str(row.ours_iterations),
            f"{row.ours_error:.1e}",
        ]
        for library in LIBRARIES:
            run = row.libraries[library]
            if run.samples and run.weights is not None:
                median = float(np.median(run.samples)) * 1e3
                cells += [
                    f"{median:.1f}" + (f" ({run.note})" if run.note else ""),
                    str(len(run.samples)),
                    f"{median / ours:.1f}x",
                    f"{run.rc_error:.1e}",
                    f"{run.weight_gap:.1e}",
                ]
            else:
                cells += [run.note or "no result", "0", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = [
        f"{library} at N={row.n}: {row.libraries[library].note}"
        for row in rows
        for library in LIBRARIES
        if row.libraries[library].note
    ]
    lines.append("")
    lines.append("notes: " + ("; ".join(skipped) if skipped else "every library ran at every N"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--sizes", default="20,100,500,2000", help="comma-separated N")
    parser.add_argument("--repeats", type=int, default=None, help="K calls per library and N")
    parser.add_argument("--limit-s", type=float, default=60.0, help="skip a library whose first call exceeds this")
    parser.add_argument("--budget-s", type=float, default=180.0, help="time a library may spend at one N")
    parser.add_argument(
        "--xla-single-thread",
        action="store_true",
        help="run XLA's CPU backend on one thread (appends to XLA_FLAGS before JAX starts)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.xla_single_thread:
        os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), *SINGLE_THREAD_XLA_FLAGS]))

    import jax

    device = ", ".join(str(d) for d in jax.devices())
    load_before = os.getloadavg()
    rows = []
    for n in sizes:
        repeats = args.repeats or default_repeats(n)
        rows.append(run_size(n, repeats, args.limit_s, args.budget_s))
    load_after = os.getloadavg()
    print(report(rows, load_before, load_after, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
