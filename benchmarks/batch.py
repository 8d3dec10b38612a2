"""Batch throughput of the engine: 1,000 max-Sharpe problems beside PyPortfolioOpt's plain loop (issue 12, point 2).

What is measured
----------------
``--problems`` (default 1,000) long-only max-Sharpe problems with N drawn from 12..50 names of skfolio's S&P 500
data set (a random 2-year window each; μ = mean historical return and Σ = sample covariance, PyPortfolioOpt's
estimators, handed to every solver), half of them with a 25 % cap per name, r_f = 0:

1. **PyPortfolioOpt**: ``EfficientFrontier(μ, Σ, weight_bounds=(0, cap)).max_sharpe()`` in a loop;
2. **stratopt, one by one**: ``services.engine.run_optimization`` per problem (what a worker does per item today);
3. **stratopt engine, batched**: ``services.engine.run_optimization_batch`` on the same jobs (what a worker runs
   per ``BatchOptimize`` chunk: validation, problem building and pre-checks, the JAX batched active set, results,
   risk contributions; the single path for what the batch does not certify): the figure issue 12 targets;
4. **solver alone, batched**: ``services.optimization.solve_batch`` on the bare arrays (the JAX batched active
   set) with the single-problem active set for the problems it does not certify: the engine's floor.

Each is timed ``--repeats`` times (median); the JAX compilation (first call per bucket and batch size) is printed
apart. After the imports and the problems are built, the process's objects are frozen out of the garbage
collector (``gc.collect(); gc.freeze()``), as a solver worker does once it has imported its libraries
(``command_side.workers``): otherwise a full collection over the libraries' objects (~0.2 s here) falls on
whichever run crosses the threshold, often one of stratopt's (a fifth of a batched run). Every loop measured runs
so. Objective gaps: the largest relative shortfall of each stratopt answer's Sharpe ratio below PyPortfolioOpt's
(negative = stratopt's is higher). Target (issue 12): the engine ≥ 50× the loop.

End to end, on a real server (2 workers) on a fresh embedded PostgreSQL + TimescaleDB, moments input, every run
stored with its configuration version, event, read model and notification:

4. ``--grpc``: one ``BatchOptimize`` of the problems (a warm-up call, then the median of ``--repeats``); target
   ≥ 20× the loop. The workers compile the batched solver before they are ready (``STRATOPT_WARM_BATCH_ASSETS``
   = 64). Printed beside it: the CPU time per problem of the server's event loop, of its workers and of
   PostgreSQL over the measured calls (``/proc``; less sensitive than wall time to other load on the machine),
   and PyPortfolioOpt's CPU per problem (``time.process_time`` of its loop): their ratio bounds the wall ratio
   to at most that many times the cores the server keeps busy, so the line also says how many fully used cores
   20× needs at the measured CPU cost (the loop runs on one core, the server on all of them).
   ``--grpc-only`` skips the in-process stratopt runs (PyPortfolioOpt's loop is still measured, in the same
   run);
5. ``--stream N``: ``N`` items through ``BatchOptimizeStream`` (messages of 100, the problems in turn, the
   default window), built as the server reads them; the server's resident memory (and its workers') after each
   tenth of the stream, and its peak (``VmHWM``): flat for a stream of any length.

Run
---
::

    uv run python -m benchmarks.batch                  # ~2 minutes (PyPortfolioOpt's loop dominates)
    uv run python -m benchmarks.batch --problems 200 --repeats 1
    uv run python -m benchmarks.batch --grpc --stream 100000   # + about 10 minutes on 2 shared cores
    uv run python -m benchmarks.batch --grpc --grpc-only        # PyPortfolioOpt's loop and BatchOptimize only
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.engine import MethodSettings, OptimizationJob, run_optimization, run_optimization_batch
from services.optimization import BatchKind, Objective, PortfolioProblem, solve_batch
from services.optimization._active_set import solve_max_sharpe
from services.types import EstimationSettings, Moments


def _problems(count: int, seed: int) -> list[Problem]:
    prices = pd.read_csv("data/sp500_dataset.csv.gz", index_col=0, parse_dates=True)
    returns = prices.pct_change().dropna()
    rng = np.random.default_rng(seed)
    out = []
    # 20 names in the data set: larger N repeats names with their returns shifted by a day (distinct, realistic).
    shifted = pd.concat([returns, returns.shift(1).add_suffix("_1"), returns.shift(2).add_suffix("_2")], axis=1)
    shifted = shifted.dropna()
    for k in range(count):
        n = int(rng.integers(12, 51))
        columns = rng.choice(shifted.columns, n, replace=False)
        end = int(rng.integers(600, len(shifted)))
        window = shifted.iloc[end - 504 : end][columns]
        mu = window.mean().to_numpy() * 252
        sigma = window.cov().to_numpy() * 252
        cap = 0.25 if k % 2 else 1.0
        out.append((mu, sigma, np.full(n, cap)))
    return out


Problem = tuple[np.ndarray, np.ndarray, np.ndarray]
"""μ (N,), Σ (N, N), upper bounds (N,)."""


def _sharpe(weights: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    return float(mu @ weights / np.sqrt(weights @ sigma @ weights))


_PYPFOPT_CPU_S: list[float] = []
"""CPU seconds (this process, ``time.process_time``) of each PyPortfolioOpt loop run, for the CPU comparison."""


def _pypfopt(problems: list[Problem]) -> tuple[float, list[np.ndarray | None]]:
    from pypfopt import EfficientFrontier

    answers: list[np.ndarray | None] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    for mu, sigma, upper in problems:
        try:
            frontier = EfficientFrontier(mu, sigma, weight_bounds=(0.0, float(upper[0])))
            frontier.max_sharpe(risk_free_rate=0.0)
            answers.append(np.asarray(list(frontier.clean_weights(cutoff=0.0, rounding=None).values())))
        except Exception:  # PyPortfolioOpt raises several kinds: no answer
            answers.append(None)
    elapsed = time.perf_counter() - started
    _PYPFOPT_CPU_S.append(time.process_time() - cpu_started)
    return elapsed, answers


def _job(mu: np.ndarray, sigma: np.ndarray, upper: np.ndarray) -> OptimizationJob:
    n = mu.size
    problem = PortfolioProblem(
        symbols=tuple(f"s{j}" for j in range(n)),
        objective=Objective.MAX_SHARPE,
        lower_bounds=np.zeros(n),
        upper_bounds=upper,
    )
    return OptimizationJob(
        problem=problem,
        inputs=Moments(expected_returns=mu, covariance=sigma),
        settings=EstimationSettings(),
        method=MethodSettings(),
    )


def _engine(problems: list[Problem]) -> tuple[float, list[np.ndarray | None]]:
    started = time.perf_counter()
    outcomes = run_optimization_batch([_job(*p) for p in problems])
    answers = [None if isinstance(o, Exception) else o.result.weights for o in outcomes]
    return time.perf_counter() - started, answers


def _single(problems: list[Problem]) -> tuple[float, list[np.ndarray | None]]:
    answers: list[np.ndarray | None] = []
    started = time.perf_counter()
    for mu, sigma, upper in problems:
        job = _job(mu, sigma, upper)
        try:
            answers.append(run_optimization(job).result.weights)
        except Exception:  # an engine error: no answer
            answers.append(None)
    return time.perf_counter() - started, answers


def _batched(problems: list[Problem]) -> tuple[float, list[np.ndarray | None], float]:
    started = time.perf_counter()
    mus = [p[0] for p in problems]
    sigmas = [p[1] for p in problems]
    uppers = [p[2] for p in problems]
    lowers = [np.zeros(m.size) for m in mus]
    batch = solve_batch(sigmas, mus, lowers, uppers, kind=BatchKind.TANGENCY)
    answers: list[np.ndarray | None] = list(batch.weights)
    for k in np.flatnonzero(~batch.certified):  # the single path for what the batch did not certify
        single = solve_max_sharpe(sigmas[k], mus[k], lowers[k], uppers[k], 0.0)
        answers[k] = None if single is None else single.weights
    return time.perf_counter() - started, answers, float(batch.certified.mean())


def _gap(answers: list[np.ndarray | None], reference: list[np.ndarray | None], problems: list[Problem]) -> float:
    gaps = [
        (_sharpe(r, p[0], p[1]) - _sharpe(a, p[0], p[1])) / abs(_sharpe(r, p[0], p[1]))
        for a, r, p in zip(answers, reference, problems, strict=True)
        if a is not None and r is not None
    ]
    return max(gaps)


def _request(problem: Problem, portfolio_id: str, request_id: str) -> Any:
    from stratopt.v1 import command_service_pb2 as cmd_pb
    from stratopt.v1 import types_pb2 as pb

    mu, sigma, upper = problem
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id,
        request_id=request_id,
        objective=pb.OBJECTIVE_MAX_SHARPE,
        moments=pb.MomentsInput(expected_returns=mu.tolist(), covariance=sigma.ravel().tolist()),
        constraints=pb.OptimizationConstraints(max_weight=float(upper[0])),
    )
    request.strategies.extend(pb.Strategy(symbol=f"S{j}") for j in range(mu.size))
    return request


def _weights(response: Any, n: int) -> np.ndarray:
    return np.array([response.optimal_weights[f"S{j}"] for j in range(n)])


def _rss_mib(pid: int) -> tuple[float, float, float]:
    """(current, peak) resident memory of the server process and the current one of its workers, in MiB.

    From ``/proc/<pid>/status`` (VmRSS, VmHWM) of the server and of its child processes.
    """

    def status(process: str) -> dict[str, str]:
        lines = Path(f"/proc/{process}/status").read_text().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def mib(value: str) -> float:
        return int(value.split()[0]) / 1024

    server = status(str(pid))
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = sum(mib(status(child)["VmRSS"]) for child in children)
    return mib(server["VmRSS"]), mib(server["VmHWM"]), workers


def _cpu_tree(server: int, postmaster: int) -> dict[str, float]:
    """CPU seconds (user + system) of the server, its workers and PostgreSQL, from ``/proc/<pid>/stat``.

    The server's main process; its children (the solver workers); the postmaster and its children (the
    connections' backends).
    """
    from benchmarks.load import _children, _cpu_s

    return {
        "server": _cpu_s(server),
        "workers": sum(_cpu_s(child) for child in _children(server)),
        "postgres": _cpu_s(postmaster) + sum(_cpu_s(child) for child in _children(postmaster)),
    }


def _grpc(problems: list[Problem], repeats: int, stream: int) -> dict[str, Any]:
    """One ``BatchOptimize`` of every problem (moments input, every run stored), and a stream of ``stream`` items.

    Returns the median seconds of the batch and its answers; with ``stream``, the stream's seconds, answers of
    its first ``len(problems)`` items, and the server's resident memory (MiB) after each tenth of the stream.
    """
    from benchmarks.load import embedded_database, serving
    from stratopt.v1 import command_service_pb2 as cmd_pb
    from stratopt_cli import client

    out: dict[str, Any] = {}
    times = []
    with (
        embedded_database() as (dsn, base),
        # Each worker compiles the batched solver's shapes before it is ready: else a shape compiles (seconds) in
        # whichever worker first solves a chunk of it, and the warm-up call leaves some to the measured calls.
        serving(dsn, base / "server.log", workers=2, env={"STRATOPT_WARM_BATCH_ASSETS": "64"}) as (target, pid),
        client.channel(target) as ch,
    ):
        stub = client.command_stub(ch)
        postmaster = int((base / "pgdata" / "postmaster.pid").read_text().split()[0])
        cpu_before: dict[str, float] = {}
        for repeat in range(repeats + 1):  # the first warms the workers' JAX compilations
            requests = [_request(p, f"bench-batch-{k}", f"bench-{repeat}-{k}") for k, p in enumerate(problems)]
            if repeat == 1:
                cpu_before = _cpu_tree(pid, postmaster)
            started = time.perf_counter()
            response = stub.BatchOptimize(cmd_pb.BatchOptimizeRequest(requests=requests), timeout=600)
            if repeat:
                times.append(time.perf_counter() - started)
            assert response.failed == 0, response.results[0]
        cpu_after = _cpu_tree(pid, postmaster)
        out["cpu_ms"] = {k: 1e3 * (cpu_after[k] - cpu_before[k]) / (repeats * len(problems)) for k in cpu_after}
        out["batch_s"] = statistics.median(times)
        out["batch"] = [_weights(r.response, p[0].size) for r, p in zip(response.results, problems, strict=True)]
        if stream:
            per_message = 100

            def messages() -> Iterator[Any]:  # built as the server asks for them: the client holds a window
                for start in range(0, stream, per_message):
                    yield cmd_pb.BatchOptimizeStreamRequest(
                        requests=[
                            _request(problems[k % len(problems)], f"bench-stream-{k % len(problems)}", f"s-{k}")
                            for k in range(start, min(start + per_message, stream))
                        ]
                    )

            answers: dict[int, np.ndarray] = {}
            rss: list[tuple[float, float, float]] = []
            done = failed = 0
            started = time.perf_counter()
            for message in stub.BatchOptimizeStream(messages(), timeout=3600):
                for result in message.results:
                    done += 1
                    if result.WhichOneof("outcome") != "response":
                        failed += 1
                    elif result.index < len(problems):
                        answers[result.index] = _weights(result.response, problems[result.index][0].size)
                if done * 10 // stream > len(rss):
                    rss.append(_rss_mib(pid))
            out["stream_s"] = time.perf_counter() - started
            assert (done, failed) == (stream, 0)
            out["stream"] = [answers[k] for k in range(min(stream, len(problems)))]
            out["rss"] = rss
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print medians, ratios and gaps (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--grpc", action="store_true", help="also one BatchOptimize of every problem through gRPC")
    parser.add_argument(
        "--grpc-only",
        action="store_true",
        help="with --grpc: measure PyPortfolioOpt's loop and the gRPC call only (skip the in-process stratopt runs)",
    )
    parser.add_argument(
        "--stream", type=int, default=0, metavar="N", help="with --grpc: also N items through BatchOptimizeStream"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    problems = _problems(args.problems, args.seed)
    gc.collect()  # as a worker does after its imports (module docstring)
    gc.freeze()
    if args.grpc_only:
        return _grpc_only(problems, args)
    compile_started = time.perf_counter()
    _batched(problems)  # compiles one executable per (bucket, precision)
    compile_s = time.perf_counter() - compile_started
    runs: dict[str, list[float]] = {"pypfopt": [], "single": [], "engine": [], "batched": []}
    for _ in range(args.repeats):
        t, reference = _pypfopt(problems)
        runs["pypfopt"].append(t)
        t, single = _single(problems)
        runs["single"].append(t)
        t, engine = _engine(problems)
        runs["engine"].append(t)
        t, batched, certified = _batched(problems)
        runs["batched"].append(t)
    median = {k: statistics.median(v) for k, v in runs.items()}
    per = {k: 1e3 * v / len(problems) for k, v in median.items()}
    print(f"{len(problems)} long-only max-Sharpe problems, N 12..50, half capped at 25 %; medians of {args.repeats}")
    print(f"PyPortfolioOpt loop     {median['pypfopt']:8.3f} s  {per['pypfopt']:7.3f} ms/problem")
    print(
        f"stratopt one by one     {median['single']:8.3f} s  {per['single']:7.3f} ms/problem  "
        f"{median['pypfopt'] / median['single']:6.1f}x  Sharpe gap {_gap(single, reference, problems):+.1e}"
    )
    print(
        f"stratopt engine batched {median['engine']:8.3f} s  {per['engine']:7.3f} ms/problem  "
        f"{median['pypfopt'] / median['engine']:6.1f}x  Sharpe gap {_gap(engine, reference, problems):+.1e}  "
        "(run_optimization_batch; target ≥ 50x)"
    )
    print(
        f"solver alone, batched   {median['batched']:8.3f} s  {per['batched']:7.3f} ms/problem  "
        f"{median['pypfopt'] / median['batched']:6.1f}x  Sharpe gap {_gap(batched, reference, problems):+.1e}  "
        f"certified by the batch {100 * certified:.1f} % (the rest: single path)"
    )
    print(f"first batched call (JAX compilation included): {compile_s:.2f} s")
    if args.grpc:
        grpc = _grpc(problems, args.repeats, args.stream)
        _print_grpc(grpc, median["pypfopt"], reference, problems)
        _print_stream(grpc, args.stream, per["pypfopt"], reference, problems)
    return 0


def _print_stream(
    grpc: dict[str, Any], count: int, pypfopt_ms: float, reference: list[np.ndarray | None], problems: list[Problem]
) -> None:
    """The ``--stream`` line and the server's memory after each tenth of the stream (nothing without ``--stream``)."""
    if not count:
        return
    seconds = grpc["stream_s"]
    ms = 1e3 * seconds / count
    print(
        f"BatchOptimizeStream     {seconds:8.3f} s  {ms:7.3f} ms/problem  {pypfopt_ms / ms:6.1f}x  "
        f"Sharpe gap {_gap(grpc['stream'], reference[: len(grpc['stream'])], problems):+.1e}  "
        f"({count:,} items, messages of 100, every run stored)"
    )
    print(
        "server resident memory after each tenth of the stream (MiB): "
        + " ".join(f"{now:.0f}" for now, _, _ in grpc["rss"])
        + f"; peak {max(peak for _, peak, _ in grpc['rss']):.0f}; its 2 workers: "
        + " ".join(f"{workers:.0f}" for _, _, workers in grpc["rss"])
    )


def _print_grpc(
    grpc: dict[str, Any], pypfopt_s: float, reference: list[np.ndarray | None], problems: list[Problem]
) -> None:
    seconds = grpc["batch_s"]
    print(
        f"BatchOptimize via gRPC  {seconds:8.3f} s  {1e3 * seconds / len(problems):7.3f} ms/problem  "
        f"{pypfopt_s / seconds:6.1f}x  Sharpe gap {_gap(grpc['batch'], reference, problems):+.1e}  "
        "(2 workers, every run stored with its event; target ≥ 20x)"
    )
    total = sum(grpc["cpu_ms"].values())
    print(
        "  CPU per problem (ms): "
        + ", ".join(f"{name} {ms:.3f}" for name, ms in grpc["cpu_ms"].items())
        + f"; total {total:.3f}"
    )
    loop_cpu_ms = 1e3 * statistics.median(_PYPFOPT_CPU_S) / len(problems)
    cores = os.cpu_count() or 1
    print(
        f"  CPU per problem of PyPortfolioOpt's loop {loop_cpu_ms:.3f} ms: stratopt uses {loop_cpu_ms / total:.1f}x "
        f"less CPU per stored run; the wall ratio is at most that times the cores busy ({cores} here: "
        f"{cores * loop_cpu_ms / total:.1f}x); 20x needs {20 * total / loop_cpu_ms:.1f} fully used cores at this "
        "CPU cost"
    )


def _grpc_only(problems: list[Problem], args: argparse.Namespace) -> int:
    """``--grpc --grpc-only``: PyPortfolioOpt's loop and the gRPC call, measured in the same run."""
    times: list[float] = []
    reference: list[np.ndarray | None] = []
    for _ in range(args.repeats):
        t, reference = _pypfopt(problems)
        times.append(t)
    pypfopt_s = statistics.median(times)
    grpc = _grpc(problems, args.repeats, args.stream)
    print(f"{len(problems)} long-only max-Sharpe problems, N 12..50, half capped at 25 %; medians of {args.repeats}")
    print(f"PyPortfolioOpt loop     {pypfopt_s:8.3f} s  {1e3 * pypfopt_s / len(problems):7.3f} ms/problem")
    _print_grpc(grpc, pypfopt_s, reference, problems)
    _print_stream(grpc, args.stream, 1e3 * pypfopt_s / len(problems), reference, problems)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
