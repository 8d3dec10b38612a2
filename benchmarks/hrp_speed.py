"""Hierarchical risk parity: ``services.optimization`` HRP next to PyPortfolioOpt's ``HRPOpt`` on the same covariance.

What is measured
----------------
For each size N and linkage, the wall time (``time.perf_counter``) of K calls of
``hierarchical_risk_parity(covariance, linkage=...)`` on an ndarray, after W untimed warm-up calls, and of K
calls of ``HRPOpt(cov_matrix=frame).optimize(linkage_method=...)`` on the same covariance as a DataFrame, after
the same warm-up (the first PyPortfolioOpt call also gives the reference weights). Both times cover the whole
computation from the covariance: correlation and distance, linkage, ordering and recursive bisection (ours also
its input validation). Printed per row: the median and the fastest of the K samples for each, the ratio of the
medians (PyPortfolioOpt / ours), the largest absolute weight difference, and the speed target (ratio >= 20 for
N >= 100).

Inputs (annualised, 252 periods a year):

- N = 20: real data, the sample covariance of the last 756 daily returns of the 20 stocks of
  ``data/sp500_dataset.csv.gz``;
- any other N (default 100, 500, 2000): the covariance B F Bᵀ + diag(s²) of a 5-factor model with a fixed seed:
  loadings on a market factor ~ N(1, 0.3) and on four style factors ~ N(0, 0.4), factor volatility 1 %/day,
  idiosyncratic volatility s uniform in [0.8 %, 2 %]/day.

Run
---
::

    uv run python -m benchmarks.hrp_speed                                # N = 20, 100, 500, 2000; single linkage
    uv run python -m benchmarks.hrp_speed --sizes 100,500 --linkages single,ward,complete,average --repeats 5

Options: ``--sizes`` (comma-separated N, default ``20,100,500,2000``), ``--linkages`` (default ``single``),
``--repeats K`` (default 20 for N <= 100, 10 for N <= 500, 3 above), ``--warmup W`` (default 1). Progress goes to
stderr, the report to stdout. Other load on the machine shows up directly in the numbers: the header prints the
load average before and after the run. The exit code is 0 when the run completes, also when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pypfopt import HRPOpt

from services.optimization import LINKAGE_METHODS, hierarchical_risk_parity
from services.types import FloatArray

REAL_N = 20
REAL_DATA = Path(__file__).resolve().parents[1] / "data" / "sp500_dataset.csv.gz"
PERIODS = 756
PERIODS_PER_YEAR = 252
FACTORS = 5
SEED = 2016
TARGET_RATIO = 20.0
TARGET_MIN_N = 100


@dataclass(frozen=True, slots=True)
class Row:
    """Timings of one (N, linkage) pair."""

    n: int
    data: str
    linkage: str
    ours_ms: FloatArray
    pypfopt_ms: FloatArray
    max_abs_weight_diff: float

    @property
    def ratio(self) -> float:
        """PyPortfolioOpt's median over ours."""
        return float(np.median(self.pypfopt_ms) / np.median(self.ours_ms))


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def real_covariance() -> pd.DataFrame:
    """Annualised sample covariance of the last ``PERIODS`` daily returns of the skfolio S&P 500 data set."""
    prices = pd.read_csv(REAL_DATA, index_col=0, parse_dates=True).sort_index()
    returns = prices.iloc[-(PERIODS + 1) :].pct_change().iloc[1:]
    return returns.cov() * PERIODS_PER_YEAR


def synthetic_covariance(n: int, seed: int = SEED) -> pd.DataFrame:
    """Annualised covariance B F Bᵀ + diag(s²) of a seeded ``FACTORS``-factor model of N strategies."""
    rng = np.random.default_rng([seed, n])
    loadings = np.column_stack([rng.normal(1.0, 0.3, n), rng.normal(0.0, 0.4, (n, FACTORS - 1))])
    factor_covariance = np.eye(FACTORS) * 0.01**2
    idiosyncratic = rng.uniform(0.008, 0.02, n)
    daily = loadings @ factor_covariance @ loadings.T + np.diag(idiosyncratic**2)
    names = [f"SYN{i:04d}" for i in range(n)]
    return pd.DataFrame(daily * PERIODS_PER_YEAR, index=names, columns=names)


def covariance_for(n: int) -> tuple[str, pd.DataFrame]:
    """Real data for N = 20, the factor model otherwise."""
    return ("real", real_covariance()) if n == REAL_N else ("synthetic", synthetic_covariance(n))


def timed(call: Callable[[], object], repeats: int) -> FloatArray:
    """Wall times in ms of ``repeats`` calls."""
    samples = np.empty(repeats)
    for k in range(repeats):
        started = time.perf_counter()
        call()
        samples[k] = (time.perf_counter() - started) * 1e3
    return samples


def measure(n: int, linkage: str, repeats: int, warmup: int) -> Row:
    """Time ours and PyPortfolioOpt on the same covariance; compare their weights."""
    data, frame = covariance_for(n)
    covariance = frame.to_numpy()

    def ours() -> FloatArray:
        return hierarchical_risk_parity(covariance, linkage=linkage).weights

    def pypfopt() -> FloatArray:
        weights = HRPOpt(cov_matrix=frame).optimize(linkage_method=linkage)
        return pd.Series(weights)[frame.columns].to_numpy()

    reference = pypfopt()
    for _ in range(warmup - 1):
        pypfopt()
    for _ in range(warmup):
        ours()
    progress(f"N={n} {linkage}: timing ours ({repeats} calls)")
    ours_ms = timed(ours, repeats)
    progress(f"N={n} {linkage}: timing PyPortfolioOpt ({repeats} calls)")
    pypfopt_ms = timed(pypfopt, repeats)
    return Row(n, data, linkage, ours_ms, pypfopt_ms, float(np.max(np.abs(ours() - reference))))


def machine() -> str:
    """CPUs, CPU model, OS and Python in one line."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpus = len(os.sched_getaffinity(0))
    return f"{cpus} CPUs (nproc), {model}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    """Versions of the libraries that matter here."""
    found = []
    for package in ("numpy", "scipy", "pandas", "pyportfolioopt"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} ?")
    return ", ".join(found)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def render(rows: list[Row], command: str, load_before: str, load_after: str, warmup: int) -> str:
    """Format the report: header lines, the table and the target verdict."""
    lines = [
        "stratopt hierarchical risk parity (services.optimization) vs PyPortfolioOpt HRPOpt on the same covariance",
        f"command:  {command}",
        f"machine:  {machine()}; load average {load_before} (before), {load_after} (after)",
        f"versions: {versions()}",
        f"inputs:   N={REAL_N}: sample covariance of the last {PERIODS} daily returns of data/{REAL_DATA.name}; "
        f"other N: {FACTORS}-factor model covariance (seed {SEED}); annualised x{PERIODS_PER_YEAR}",
        f"runs:     K timed calls per row after {warmup} warm-up call(s) each",
        "",
    ]
    header = (
        f"{'N':>5} {'data':<9} {'linkage':<8} {'K':>3} | {'ours med':>9} {'min':>8} | {'pypfopt med':>11} "
        f"{'min':>9} | {'ratio':>8} | {'max|dw|':>8} | target"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        if row.n < TARGET_MIN_N:
            verdict = "-"
        else:
            verdict = f">= {TARGET_RATIO:g}x: {'MET' if row.ratio >= TARGET_RATIO else 'MISSED'}"
        lines.append(
            f"{row.n:>5} {row.data:<9} {row.linkage:<8} {row.ours_ms.size:>3} | {np.median(row.ours_ms):>9.2f} "
            f"{row.ours_ms.min():>8.2f} | {np.median(row.pypfopt_ms):>11.1f} {row.pypfopt_ms.min():>9.1f} | "
            f"{row.ratio:>7.1f}x | {row.max_abs_weight_diff:>8.1e} | {verdict}"
        )
    lines += [
        "",
        "times in ms (wall, per call, from the covariance to the weights). ours: hierarchical_risk_parity on an "
        "ndarray; pypfopt: HRPOpt(cov_matrix=DataFrame).optimize;",
        "ratio: pypfopt median / ours median; max|dw|: largest absolute weight difference; target: ratio >= "
        f"{TARGET_RATIO:g} for N >= {TARGET_MIN_N}.",
    ]
    return "\n".join(lines)


def default_repeats(n: int) -> int:
    """K per row: 20 for N <= 100, 10 for N <= 500, 3 above (PyPortfolioOpt takes seconds there)."""
    return 20 if n <= 100 else 10 if n <= 500 else 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hrp_speed",
        description="HRP speed: services.optimization._hierarchical vs PyPortfolioOpt HRPOpt.",
    )
    parser.add_argument("--sizes", default="20,100,500,2000", help="comma-separated N (default 20,100,500,2000)")
    parser.add_argument("--linkages", default="single", help=f"comma-separated, of {', '.join(LINKAGE_METHODS)}")
    parser.add_argument("--repeats", type=int, default=None, help="K timed calls per row (default 20/10/3 by N)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per row (default 1, min 1)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    if not args.sizes or any(n < 2 for n in args.sizes):
        parser.error("--sizes needs at least one N >= 2")
    args.linkages = [s.strip() for s in args.linkages.split(",") if s.strip()]
    if not args.linkages or any(s not in LINKAGE_METHODS for s in args.linkages):
        parser.error(f"--linkages must be taken from {', '.join(LINKAGE_METHODS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first PyPortfolioOpt call gives the reference weights)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; return the exit code."""
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["uv run python -m benchmarks.hrp_speed", *([shlex.join(given)] if given else [])])
    load_before = load_average()
    rows = [
        measure(n, linkage, args.repeats or default_repeats(n), args.warmup)
        for n in args.sizes
        for linkage in args.linkages
    ]
    print(render(rows, command, load_before, load_average(), args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
