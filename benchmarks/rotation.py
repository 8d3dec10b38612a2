"""Greedy top-K rotation: decision time at N = 500 and N = 5000 against issue 10's targets (5 ms and 50 ms).

What is measured
----------------
``services.rotation.greedy_rotation`` with every rule on (stops, dead money, costs, the participation cap) on a
random book: N names with standard-normal z-scores, 25 of them held at the slot weight (more than K = 20, so the
over-K and hysteresis rules run), costs uniform in [0, 20] bp, prices, entries and ATRs around 100, minutes held
uniform in [0, 240], average daily traded value log-uniform between 1e5 and 1e9 for a 1e7 portfolio; the
specification's parameters. Timed with ``time.perf_counter`` around one call, input built outside the timing;
``--repeats`` calls after one warm-up call; the median and the 99th percentile are printed with the target.

There is no library reference in this run: the greedy rule is a ranking with thresholds, not an optimisation
problem a QP solver or skfolio solves (the QP rotation, a later step of issue 10, gets its cvxpy reference).

Run
---
::

    uv run python -m benchmarks.rotation
    uv run python -m benchmarks.rotation --sizes 500,5000,50000 --repeats 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from services.rotation import GreedyRotationParams, RotationInputs, greedy_rotation

TARGETS_MS = {500: 5.0, 5000: 50.0}
"""Issue 10's targets for the greedy engine, milliseconds."""


def book(n: int, seed: int = 0) -> RotationInputs:
    """A random N-name book with every input the rules read (module docstring)."""
    rng = np.random.default_rng(seed)
    params = GreedyRotationParams()
    weights = np.zeros(n)
    weights[rng.choice(n, min(n, 25), replace=False)] = params.slot_weight
    prices = rng.uniform(50, 150, n)
    return RotationInputs(
        symbols=tuple(f"S{i:05d}" for i in range(n)),
        z=rng.normal(size=n),
        current_weights=weights,
        costs_bps=rng.uniform(0, 20, n),
        prices=prices,
        entry_prices=np.where(weights > 0, prices * rng.uniform(0.95, 1.05, n), np.nan),
        atr=prices * 0.02,
        minutes_held=np.where(weights > 0, rng.uniform(0, 240, n), np.nan),
        adv_value=10 ** rng.uniform(5, 9, n),
        portfolio_value=1e7,
    )


def main() -> None:
    """Time the greedy rotation at each size and print median, p99 and the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,5000", help="comma-separated N (default 500,5000)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per size (default 100)")
    args = parser.parse_args()
    print(f"{'N':>7} {'median ms':>10} {'p99 ms':>8} {'target ms':>10}  held  changes")
    for n in (int(s) for s in args.sizes.split(",")):
        inputs = book(n)
        decision = greedy_rotation(inputs)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            greedy_rotation(inputs)
            times.append((time.perf_counter() - started) * 1000.0)
        target = TARGETS_MS.get(n)
        verdict = "" if target is None else f"{target:10.1f}  {'met' if np.median(times) <= target else 'NOT met'}"
        held = int(np.count_nonzero(decision.target_weights))
        print(f"{n:>7} {np.median(times):>10.3f} {np.percentile(times, 99):>8.3f} {verdict:>10}  {held:>4}  "
              f"{len(decision.changes)}")  # fmt: skip


if __name__ == "__main__":
    main()
