"""Integer-share allocation: ``services.trading`` (MILP and greedy) next to PyPortfolioOpt's ``lp_portfolio``.

What is measured
----------------
For each size N and each of M seeded problem instances, fresh cash of $100,000 (no holdings, no fees) is
allocated to N targets with random weights, and for each of three methods the wall time (``time.perf_counter``)
of K calls after W untimed warm-up calls, and the unused budget of its answer:

- ``stratopt``: ``allocate(request)`` with ±10 % allowed deviation (relative to each target value) and the
  default gap tolerance (1e-5 of the budget, $1): validation, band relaxation, greedy + local search, and the
  HiGHS MILP through ``scipy.optimize.milp`` unless the heuristic is already within the tolerance of the LP bound
  (the column ``by`` says which answered: ``H`` HiGHS, ``g`` greedy + local search; ``fallback`` is counted apart);
- ``MILP``: ``allocate`` with ``gap_tolerance`` 1e-7 (``--tight-gap``; a cent at $100,000), which the
  heuristic seldom meets, so that HiGHS's own time shows (``by`` again says which answered);
- ``greedy``: ``greedy_allocation(request)``, the same validation and bands, PyPortfolioOpt-style greedy only;
- ``lp_portfolio``: ``DiscreteAllocation(weights, prices, total_portfolio_value=100000).lp_portfolio(
  solver="HIGHS")`` (cvxpy + HiGHS), which has no bands and minimises leftover + Σ |value − target value|, so
  only the budget use is comparable.

Printed per row: the median time of each method, its unused budget ($, the same every call) and the share of the
budget used (%), the ratio of the medians (lp_portfolio / stratopt), how many names had their band widened
because it held no whole share, and the verdict on the issue's targets: stratopt uses ≥ 99.99 % of the budget,
leaves no more than greedy, and takes at most a tenth of lp_portfolio's time.

Inputs:

- N = 20: real prices, the last row (2018-04-11) of ``data/stock_prices.csv`` (PyPortfolioOpt's test set);
- any other N (default 100, 500): synthetic prices, lognormal with median $158 and log-sd ln(10)/2 (so about
  two thirds lie between $50 and $500), rounded to cents, at least $1;
- weights: Dirichlet(1, ..., 1) with the instance's seed (``--seed`` + instance number).

Run
---
::

    uv run python -m benchmarks.allocation                          # N = 20, 100, 500; 3 instances each
    uv run python -m benchmarks.allocation --sizes 20,100 --instances 1 --repeats 3

Options: ``--sizes`` (comma-separated N, default ``20,100,500``), ``--instances M`` (default 3),
``--tight-gap`` (gap tolerance of the MILP column, default 1e-7), ``--repeats K`` (default 20 for N <= 20,
10 for N <= 100, 5 above), ``--warmup W`` (default 1), ``--budget`` (default 100000), ``--deviation`` (default
0.10), ``--seed`` (default 2018). Progress goes to stderr, the report to stdout; the header prints the load
average before and after the run (other load shows up in the numbers). The exit code is 0 when the run
completes, also when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pypfopt import DiscreteAllocation

from services.trading import AllocationRequest, AllocationResult, AllocationTarget, allocate, greedy_allocation
from services.types import FloatArray

REAL_N = 20
REAL_DATA = Path(__file__).resolve().parents[1] / "data" / "stock_prices.csv"
PRICE_MEDIAN = 158.0
PRICE_LOG_SD = float(np.log(10.0) / 2.0)
TARGET_USED = 0.9999
TARGET_TIME_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class Row:
    """Timings and answers of one (N, instance) pair."""

    n: int
    data: str
    instance: int
    ours_ms: FloatArray
    tight_ms: FloatArray
    greedy_ms: FloatArray
    lp_ms: FloatArray
    ours: AllocationResult
    tight: AllocationResult
    greedy: AllocationResult
    lp_leftover: float
    budget: float
    widened: int

    @property
    def ratio(self) -> float:
        """lp_portfolio's median time over stratopt's."""
        return float(np.median(self.lp_ms) / np.median(self.ours_ms))

    def verdict(self) -> str:
        """The three targets, each MET or MISSED."""
        checks = [
            ("used>=99.99%", self.ours.budget_used_fraction >= TARGET_USED),
            ("<=greedy", self.ours.unused_budget <= self.greedy.unused_budget + 1e-9),
            ("<=lp/10", self.ratio >= 1.0 / TARGET_TIME_FRACTION),
        ]
        return " ".join(f"{name} {'MET' if ok else 'MISSED'}" for name, ok in checks)


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def real_prices() -> pd.Series:
    """The last row of ``data/stock_prices.csv``: 20 prices, all listed by then."""
    frame = pd.read_csv(REAL_DATA, index_col="date", parse_dates=["date"])
    last = frame.ffill().iloc[-1]
    return last.astype(np.float64)


def synthetic_prices(n: int, seed: int) -> pd.Series:
    """N lognormal prices (median ``PRICE_MEDIAN``, log-sd ``PRICE_LOG_SD``), in cents, at least $1."""
    rng = np.random.default_rng([seed, n, 1])
    values = np.maximum(np.round(PRICE_MEDIAN * np.exp(rng.normal(0.0, PRICE_LOG_SD, n)), 2), 1.0)
    return pd.Series(values, index=[f"SYN{i:04d}" for i in range(n)])


def instance(n: int, seed: int) -> tuple[str, pd.Series, dict[str, float]]:
    """Prices and Dirichlet weights of one instance."""
    data, prices = ("real", real_prices()) if n == REAL_N else ("synthetic", synthetic_prices(n, seed))
    weights = np.random.default_rng([seed, n, 2]).dirichlet(np.ones(n))
    weights /= weights.sum()
    return data, prices, dict(zip(prices.index, weights.tolist(), strict=True))


def timed(call: Callable[[], object], repeats: int) -> FloatArray:
    """Wall times in ms of ``repeats`` calls."""
    samples = np.empty(repeats)
    for k in range(repeats):
        started = time.perf_counter()
        call()
        samples[k] = (time.perf_counter() - started) * 1e3
    return samples


def measure(n: int, index: int, args: argparse.Namespace) -> Row:
    """Time the three methods on one instance and keep their answers."""
    data, prices, weights = instance(n, args.seed + index)
    request = AllocationRequest(
        targets=[
            AllocationTarget(
                symbol=symbol, target_weight=weight, price=float(prices[symbol]), allowed_deviation=args.deviation
            )
            for symbol, weight in weights.items()
        ],
        extra_cash=args.budget,
    )

    def lp() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, leftover = DiscreteAllocation(weights, prices, total_portfolio_value=args.budget).lp_portfolio(
                solver="HIGHS"
            )
        return float(leftover)

    tight_request = dataclasses.replace(request, gap_tolerance=args.tight_gap)
    repeats = args.repeats or default_repeats(n)
    ours, tight, greedy, lp_leftover = allocate(request), allocate(tight_request), greedy_allocation(request), lp()
    for _ in range(args.warmup - 1):
        allocate(request)
        allocate(tight_request)
        greedy_allocation(request)
        lp()
    progress(f"N={n} #{index}: timing stratopt, MILP, greedy, lp_portfolio ({repeats} calls each)")
    ours_ms = timed(lambda: allocate(request), repeats)
    tight_ms = timed(lambda: allocate(tight_request), repeats)
    greedy_ms = timed(lambda: greedy_allocation(request), repeats)
    lp_ms = timed(lp, repeats)
    widened = sum(1 for line in ours.lines if line.allowed_deviation != args.deviation)
    return Row(
        n, data, index, ours_ms, tight_ms, greedy_ms, lp_ms, ours, tight, greedy, lp_leftover, args.budget, widened
    )


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
    for package in ("numpy", "scipy", "highspy", "cvxpy", "pyportfolioopt"):
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


def render(rows: list[Row], args: argparse.Namespace, command: str, load_before: str, load_after: str) -> str:
    """Format the report: header lines, the table and the notes."""
    lines = [
        "stratopt integer allocation (services.trading._allocation) vs PyPortfolioOpt DiscreteAllocation.lp_portfolio",
        f"command:  {command}",
        f"machine:  {machine()}; load average {load_before} (before), {load_after} (after)",
        f"versions: {versions()}",
        f"inputs:   ${args.budget:,.0f} fresh cash, ±{args.deviation:.0%} allowed deviation (stratopt only); "
        f"N={REAL_N}: last row of data/{REAL_DATA.name}; other N: lognormal prices (median ${PRICE_MEDIAN:g}); "
        f"Dirichlet(1) weights; seeds {args.seed}+instance",
        f"runs:     K timed calls per method and row after {args.warmup} warm-up call(s)",
        "",
    ]
    header = (
        f"{'N':>4} {'data':<9} {'#':>1} {'K':>3} | {'stratopt ms':>11} {'by':>2} {'unused $':>9} {'used %':>9} | "
        f"{'MILP ms':>8} {'by':>2} {'unused $':>9} | {'greedy ms':>9} {'unused $':>9} | "
        f"{'lp ms':>8} {'unused $':>9} {'used %':>9} | {'lp/ours':>8} | {'wide':>4} | targets"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        ours, greedy = row.ours, row.greedy
        lp_used = 100.0 * (1.0 - row.lp_leftover / row.budget)
        lines.append(
            f"{row.n:>4} {row.data:<9} {row.instance:>1} {row.ours_ms.size:>3} | {np.median(row.ours_ms):>11.2f} "
            f"{answered_by(ours):>2} {ours.unused_budget:>9.2f} {100 * ours.budget_used_fraction:>9.5f} | "
            f"{np.median(row.tight_ms):>8.2f} {answered_by(row.tight):>2} {row.tight.unused_budget:>9.3f} | "
            f"{np.median(row.greedy_ms):>9.2f} {greedy.unused_budget:>9.2f} | {np.median(row.lp_ms):>8.1f} "
            f"{row.lp_leftover:>9.2f} {lp_used:>9.5f} | {row.ratio:>7.1f}x | {row.widened:>4} | {row.verdict()}"
        )
    lines += [
        "",
        f"stratopt: allocate, default gap tolerance (1e-5 of the budget); MILP: allocate with gap tolerance "
        f"{args.tight_gap:g}; greedy: greedy_allocation (no local search, no MILP).",
        "times: median wall ms per call. by: H = HiGHS MILP answered, g = greedy + local search within the gap "
        "tolerance of the LP bound (no MILP solve), ! = fallback.",
        "unused $: budget left over (no fees here); used %: share of the budget invested. lp/ours: lp_portfolio "
        "median / stratopt median.",
        "wide: names whose ±10 % band held no whole share and was widened (relaxation WIDENED_BANDS); lp_portfolio "
        "has no bands.",
        f"targets: stratopt used >= {100 * TARGET_USED:g} %, unused <= greedy's, time <= "
        f"{TARGET_TIME_FRACTION:g} x lp_portfolio's.",
    ]
    return "\n".join(lines)


def answered_by(result: AllocationResult) -> str:
    """H: HiGHS answered; g: greedy + local search; a trailing ! marks a fallback."""
    return ("H" if result.solver == "HiGHS" else "g") + ("!" if result.fallback_used else "")


def default_repeats(n: int) -> int:
    """K per row: 20 for N <= 20, 10 for N <= 100, 5 above (lp_portfolio takes seconds there)."""
    return 20 if n <= 20 else 10 if n <= 100 else 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.allocation",
        description="Integer allocation: services.trading._allocation vs PyPortfolioOpt lp_portfolio.",
    )
    parser.add_argument("--sizes", default="20,100,500", help="comma-separated N (default 20,100,500)")
    parser.add_argument("--instances", type=int, default=3, help="seeded instances per N (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="K timed calls per method (default 20/10/5 by N)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per method (default 1, min 1)")
    parser.add_argument("--budget", type=float, default=100_000.0, help="fresh cash to allocate (default 100000)")
    parser.add_argument("--deviation", type=float, default=0.10, help="allowed relative deviation (default 0.10)")
    parser.add_argument("--seed", type=int, default=2018, help="base seed (default 2018)")
    parser.add_argument(
        "--tight-gap", type=float, default=1e-7, help="gap tolerance of the MILP column (default 1e-7 of the budget)"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    if not args.sizes or any(n < 2 for n in args.sizes):
        parser.error("--sizes needs at least one N >= 2")
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first call gives the answers)")
    if args.budget <= 0 or args.deviation < 0 or args.tight_gap < 0:
        parser.error("--budget must be positive, --deviation and --tight-gap non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; return the exit code."""
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["uv run python -m benchmarks.allocation", *([shlex.join(given)] if given else [])])
    load_before = load_average()
    rows = [measure(n, index, args) for n in args.sizes for index in range(args.instances)]
    print(render(rows, args, command, load_before, load_average()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
