"""End-to-end ``Optimize`` latency through gRPC, next to plain in-process PyPortfolioOpt on the same inputs.

What is measured
----------------
For each size N and each objective (max Sharpe, min volatility) the script sends K ``Optimize`` calls (after
W warm-up calls) to a real stratopt server and times each call on the client with ``time.perf_counter``.
One call is the whole path a caller pays for: client serialisation of the request, gRPC over loopback TCP,
request validation and hashing, estimation of the moments and the Clarabel solve in a solver worker process,
the PostgreSQL + TimescaleDB transaction that stores the configuration version, the result, the
``portfolio_optimized`` event and the read model, and the response back to the client. Every call has the
same ``portfolio_id`` per (N, objective) and no ``request_id``, so every call solves and persists (no
idempotent replays).

In the same run, the reference is the plain in-process PyPortfolioOpt call on the same return frame::

    mu = expected_returns.mean_historical_return(returns, returns_data=True)
    S = risk_models.sample_cov(returns, returns_data=True)
    EfficientFrontier(mu, S).max_sharpe(risk_free_rate=rf)   # or .min_volatility()

timed from the estimation to the optimal weights, K runs after W warm-up runs. PyPortfolioOpt uses its
default solver (``solver=None``: cvxpy picks one for the QP, OSQP with cvxpy 1.9; the report prints the one
used; ``--pypfopt-solver CLARABEL`` compares solver for solver). Where that solver fails on a row (OSQP stops
at its iteration limit for max Sharpe at N = 500), the row's reference is re-run with Clarabel and a note says
so. The server uses the same defaults (mean historical geometric returns, sample covariance, 252 periods a year,
long-only weights in [0, 1]).

Inputs (sent inline as ``ReturnsInput`` + ``Strategy.returns``, T = 756 daily returns):

- N = 20: real data, the last 756 daily returns of the 20 stocks of ``data/sp500_dataset.csv.gz``;
- any other N (default 100 and 500): synthetic returns of a 5-factor model with a fixed seed (loadings on a
  market factor around 1 and four style factors around 0, factor volatility 1 %/day, idiosyncratic volatility
  0.8-2 %/day, positive drifts, so that many expected returns exceed the 2 % risk-free rate).

Printed (stdout): the machine (CPUs, model, load average before and after), library versions and the command
line, then one table with, per N and objective, the e2e median and p99, the server-reported engine time
(estimation + solve in the worker, ``optimization_metadata.optimization_time_ms``), the PyPortfolioOpt median
and p99, the ratio of the medians, the objective gap (stratopt's Sharpe ratio or volatility from the response
against PyPortfolioOpt's ``portfolio_performance`` on the same moments, relative), the largest weight
difference, and whether the e2e p99 meets its target (N = 20: p99 < 50 ms; N = 500: p99 < 1 s). p99 is
``numpy.percentile(samples, 99)`` of the K samples (linear interpolation; with K < 100 it lies between the two
slowest calls). With ``--breakdown`` a per-stage table follows (median / p99): the server's stages timed in
situ during the same calls by wrappers around its methods (whole handler, validation + hashing, worker round trip
and the engine's own time in it, persistence transaction; gRPC + (de)serialisation = e2e - handler), then
estimation and solve (split into cvxpy's build + compilation and Clarabel's own solve time) timed in this process
on the same inputs, and an empty gRPC call (health check) on the same channel.

The database is a throwaway embedded PostgreSQL + TimescaleDB cluster in a fresh temporary directory, and
the server runs in-process on a background event loop (``ServerThread``) with its default solver workers
(one per CPU); the client shares the process (and the GIL) with the server's event loop. Everything is
stopped and the directory removed at the end, also on Ctrl-C, SIGTERM or an error. Other load on the machine
shows up directly in the numbers: compare the load averages printed in the header.

Run
---
::

    uv run python -m benchmarks.optimize_latency                      # N = 20, 100, 500 (about 2 minutes)
    uv run python -m benchmarks.optimize_latency --sizes 20 --repeats 100 --json /tmp/bench.json
    uv run python -m benchmarks.optimize_latency --breakdown          # plus the per-stage timings
    uv run python -m benchmarks.optimize_latency --blas-threads 1     # single-threaded BLAS everywhere

Options: ``--sizes`` (comma-separated N, default ``20,100,500``), ``--repeats K`` (default 30 for N <= 100
and 15 above), ``--warmup W`` (default 3), ``--workers`` (server solver processes, default the CPU count),
``--blas-threads`` (limit BLAS/OpenMP threads in the server's workers and in this process; default: the
libraries' own default), ``--pypfopt-solver`` (default: PyPortfolioOpt's), ``--breakdown``, ``--json PATH``
(also write the results with the raw samples as JSON). Progress goes to stderr, the report to stdout. The
exit code is 0 when the run completes, also when a target is missed (the report says so). Performance targets
live here, in the printed report, not in timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pypfopt import EfficientFrontier, expected_returns, risk_models
from pypfopt.base_optimizer import portfolio_performance
from pypfopt.exceptions import OptimizationError

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli import client
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate
from stratopt_cli.server import ServerThread, StratoptServer

REAL_DATA = Path(__file__).resolve().parent.parent / "data" / "sp500_dataset.csv.gz"
REAL_N = 20
PERIODS = 756
"""Daily returns per strategy (three years of trading days)."""
RISK_FREE_RATE = 0.02
SEED = 20_240_521
FACTORS = 5
TARGETS_MS = {20: 50.0, 500: 1000.0}
"""Targets for the end-to-end p99 by N (milliseconds)."""
OBJECTIVES = {"MAX_SHARPE": pb.OBJECTIVE_MAX_SHARPE, "MIN_VOLATILITY": pb.OBJECTIVE_MIN_VOLATILITY}
SHORT = {"MAX_SHARPE": "max-SR", "MIN_VOLATILITY": "min-vol"}
CALL_TIMEOUT_S = 120.0
FALLBACK_SOLVER = "CLARABEL"
"""PyPortfolioOpt's solver for a row where its default solver fails (e.g. OSQP's iteration limit)."""
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

log = logging.getLogger("benchmarks.optimize_latency")


def progress(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Dataset:
    """A (T, N) frame of simple daily returns, UTC timestamps as index and symbols as columns."""

    kind: str
    returns: pd.DataFrame


def real_dataset() -> Dataset:
    """Return the last ``PERIODS`` daily returns of the 20 S&P 500 stocks of the skfolio data set."""
    prices = pd.read_csv(REAL_DATA, index_col=0, parse_dates=True).sort_index()
    returns = prices.iloc[-(PERIODS + 1) :].pct_change().iloc[1:]
    if returns.isna().any().any():
        raise RuntimeError(f"{REAL_DATA.name} has missing prices in its last {PERIODS + 1} rows")
    returns.index = pd.DatetimeIndex(returns.index).tz_localize("UTC")
    return Dataset("real", returns.astype(np.float64))


def synthetic_dataset(n: int, periods: int = PERIODS, seed: int = SEED) -> Dataset:
    """Return daily returns of a ``FACTORS``-factor model ``r = a + f Bᵀ + e``, seeded by ``seed`` and N.

    A market factor (loadings ~ N(1, 0.3), premium 3 bp/day) and four style factors (loadings ~ N(0, 0.4)),
    all with 1 %/day volatility; idiosyncratic volatility uniform in [0.8 %, 2 %]/day; drifts ``a`` ~ N(2, 3)
    bp/day.
    """
    rng = np.random.default_rng([seed, n])
    loadings = np.column_stack([rng.normal(1.0, 0.3, n), rng.normal(0.0, 0.4, (n, FACTORS - 1))])
    premia = np.array([0.0003] + [0.0] * (FACTORS - 1))
    factors = rng.normal(premia, 0.01, (periods, FACTORS))
    idiosyncratic = rng.uniform(0.008, 0.02, n)
    drift = rng.normal(0.0002, 0.0003, n)
    values = drift + factors @ loadings.T + rng.standard_normal((periods, n)) * idiosyncratic
    index = pd.bdate_range(end="2022-12-30", periods=periods, tz="UTC")
    columns = [f"SYN{i:04d}" for i in range(n)]
    return Dataset("synthetic", pd.DataFrame(values, index=index, columns=columns))


def dataset_for(n: int) -> Dataset:
    """Return real data for N = 20 and the factor model otherwise."""
    return real_dataset() if n == REAL_N else synthetic_dataset(n)


def build_request(data: Dataset, objective: int, portfolio_id: str) -> cmd_pb.OptimizeRequest:
    """Build an ``OptimizeRequest`` with inline returns, default estimators and constraints, rf = 2 %."""
    request = cmd_pb.OptimizeRequest(
        portfolio_id=portfolio_id,
        objective=objective,  # type: ignore[arg-type]
        risk_parameters=pb.RiskParameters(risk_free_rate=RISK_FREE_RATE),
    )
    for when in data.returns.index:
        request.returns.timestamps.add().FromDatetime(when.to_pydatetime())
    values = data.returns.to_numpy()
    for j, symbol in enumerate(data.returns.columns):
        request.strategies.add(symbol=str(symbol), returns=values[:, j].tolist())
    return request


# ------------------------------------------------------------------------------------------------ reference


@dataclass
class Reference:
    """One in-process PyPortfolioOpt run: its time, weights (column order), moments and solver."""

    seconds: float
    weights: np.ndarray
    mu: pd.Series
    cov: pd.DataFrame
    solver: str


def pypfopt_once(returns: pd.DataFrame, objective: str, solver: str | None) -> Reference:
    """Estimate and solve with plain PyPortfolioOpt, timing estimation + construction + solve."""
    started = time.perf_counter()
    mu = expected_returns.mean_historical_return(returns, returns_data=True)
    cov = risk_models.sample_cov(returns, returns_data=True)
    frontier = EfficientFrontier(mu, cov, solver=solver)
    if objective == "MAX_SHARPE":
        frontier.max_sharpe(risk_free_rate=RISK_FREE_RATE)
    else:
        frontier.min_volatility()
    seconds = time.perf_counter() - started
    problem = getattr(frontier, "_opt", None)
    stats = getattr(problem, "solver_stats", None)
    used = str(getattr(stats, "solver_name", None) or solver or "?")
    return Reference(seconds, np.asarray(frontier.weights, dtype=np.float64), mu, cov, used)


# ------------------------------------------------------------------------------------------------- results


def summary(samples_ms: np.ndarray) -> dict[str, float]:
    """Return median, p99 (numpy percentile 99, linear), mean, min and max in milliseconds."""
    return {
        "median": float(np.median(samples_ms)),
        "p99": float(np.percentile(samples_ms, 99)),
        "mean": float(np.mean(samples_ms)),
        "min": float(np.min(samples_ms)),
        "max": float(np.max(samples_ms)),
    }


@dataclass
class Row:
    """Results of one (N, objective)."""

    n: int
    data: str
    objective: str
    repeats: int
    request_bytes: int
    e2e_ms: np.ndarray
    engine_ms: np.ndarray
    pypfopt_ms: np.ndarray
    pypfopt_solver: str
    stratopt_value: float
    pypfopt_value: float
    stratopt_value_on_reference_moments: float
    max_abs_weight_diff: float
    convergence: str
    note: str = ""
    breakdown_ms: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """Name of the compared objective value."""
        return "sharpe_ratio" if self.objective == "MAX_SHARPE" else "volatility"

    @property
    def gap(self) -> float:
        """(stratopt - PyPortfolioOpt) / |PyPortfolioOpt| of the Sharpe ratio or the volatility."""
        return (self.stratopt_value - self.pypfopt_value) / abs(self.pypfopt_value)

    @property
    def target_ms(self) -> float | None:
        """Target of the e2e p99, if N has one."""
        return TARGETS_MS.get(self.n)

    @property
    def target_met(self) -> bool | None:
        """Whether the e2e p99 is below its target (None without a target)."""
        target = self.target_ms
        return None if target is None else summary(self.e2e_ms)["p99"] < target

    def as_json(self) -> dict[str, Any]:
        """JSON-ready summary with the raw samples."""
        e2e, ref = summary(self.e2e_ms), summary(self.pypfopt_ms)
        return {
            "n": self.n,
            "data": self.data,
            "objective": self.objective,
            "repeats": self.repeats,
            "request_bytes": self.request_bytes,
            "stratopt_e2e_ms": e2e,
            "stratopt_engine_ms": summary(self.engine_ms),
            "pypfopt_ms": ref,
            "ratio_median": e2e["median"] / ref["median"],
            "pypfopt_solver": self.pypfopt_solver,
            "compared_metric": self.metric,
            "stratopt_value": self.stratopt_value,
            "pypfopt_value": self.pypfopt_value,
            "stratopt_value_on_pypfopt_moments": self.stratopt_value_on_reference_moments,
            "objective_gap_relative": self.gap,
            "max_abs_weight_diff": self.max_abs_weight_diff,
            "stratopt_convergence": self.convergence,
            "note": self.note,
            "target_p99_ms": self.target_ms,
            "target_met": self.target_met,
            "breakdown_ms": self.breakdown_ms,
            "samples_ms": {
                "stratopt_e2e": self.e2e_ms.round(4).tolist(),
                "stratopt_engine": self.engine_ms.round(4).tolist(),
                "pypfopt": self.pypfopt_ms.round(4).tolist(),
            },
        }


# -------------------------------------------------------------------------------------------- environment


@contextlib.contextmanager
def benchmark_server(workers: int | None) -> Iterator[tuple[str, ServerThread]]:
    """Yield a fresh embedded cluster in a temporary directory, migrated, with a stratopt server thread on it."""
    base = Path(tempfile.mkdtemp(prefix="stratopt-bench-"))
    os.chmod(base, 0o755)  # the postgres user must traverse it when this runs as root
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_bench")
    thread: ServerThread | None = None
    try:
        progress(f"starting PostgreSQL + TimescaleDB in {base}")
        started = time.perf_counter()
        dsn = cluster.start()
        with contextlib.redirect_stdout(sys.stderr):  # yoyo prints the rows of SELECTs in migrations
            migrate(dsn)
        progress(f"database ready in {time.perf_counter() - started:.1f} s; starting the gRPC server")
        started = time.perf_counter()
        thread = ServerThread(StratoptServer(dsn, address="127.0.0.1:0", workers=workers))
        thread.start()
        progress(f"server on {thread.target} ready in {time.perf_counter() - started:.1f} s")
        yield dsn, thread
    finally:
        if thread is not None:
            progress("stopping the server")
            try:
                thread.stop()
            except Exception:
                log.exception("stopping the server failed")
        progress("stopping the database and removing its directory")
        try:
            cluster.stop()
        except Exception:
            log.exception("stopping the embedded cluster failed")
        shutil.rmtree(base, ignore_errors=True)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def limit_blas_threads(threads: int | None) -> Any:
    """Limit BLAS/OpenMP threads: environment for the solver workers spawned later, threadpoolctl here."""
    if threads is None:
        return None
    for name in BLAS_ENV:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def blas_threads() -> str:
    """BLAS libraries loaded in this process and their thread counts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "?"
    pools = [f"{p.get('prefix', '?')} {p.get('num_threads', '?')}" for p in threadpool_info()]
    return ", ".join(sorted(set(pools))) or "?"


def machine() -> dict[str, Any]:
    """CPU count, CPU model, memory, OS and Python."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions(dsn: str | None) -> dict[str, str]:
    """Versions of stratopt and the libraries that matter here (and of the database when reachable)."""
    found: dict[str, str] = {}
    packages = ("stratopt", "pyportfolioopt", "cvxpy", "clarabel", "osqp", "numpy", "pandas", "grpcio", "asyncpg")
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "?"
    if dsn is not None:
        try:
            import psycopg

            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                found["postgresql"] = str(row[0]).split()[0] if row else "?"
                query = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                row = conn.execute(query).fetchone()
                found["timescaledb"] = str(row[0]) if row else "?"
        except Exception:
            log.exception("reading the database versions failed")
    return found


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# -------------------------------------------------------------------------------------------- measurement


def measure(
    stub: Any,
    n: int,
    data: Dataset,
    objective: str,
    repeats: int,
    warmup: int,
    run_tag: str,
    pypfopt_solver: str | None,
    probe: Probe,
) -> tuple[Row, cmd_pb.OptimizeRequest]:
    """Time ``repeats`` e2e calls, then ``repeats`` PyPortfolioOpt runs, on the same inputs."""
    request = build_request(data, OBJECTIVES[objective], f"bench-{run_tag}-n{n}-{objective.lower()}")
    label = f"N={n} {objective}"
    for _ in range(warmup):
        stub.Optimize(request, timeout=CALL_TIMEOUT_S)
    e2e: list[float] = []
    engine: list[float] = []
    response = None
    probe.clear()
    for i in range(repeats):
        started = time.perf_counter()
        response = stub.Optimize(request, timeout=CALL_TIMEOUT_S)
        e2e.append(time.perf_counter() - started)
        engine.append(response.optimization_metadata.optimization_time_ms)
        if (i + 1) % 10 == 0 or i + 1 == repeats:
            progress(f"{label}: stratopt {i + 1}/{repeats} calls, median {np.median(e2e) * 1000:.1f} ms")
    assert response is not None

    note = ""
    try:
        pypfopt_once(data.returns, objective, pypfopt_solver)
    except OptimizationError as exc:
        failed = f"{pypfopt_solver or 'default solver'} failed ({exc.args[-1] if exc.args else exc})"
        note = f"PyPortfolioOpt {failed}; reference re-run with {FALLBACK_SOLVER}"
        progress(f"{label}: {note}")
        pypfopt_solver = FALLBACK_SOLVER
    for _ in range(warmup):
        pypfopt_once(data.returns, objective, pypfopt_solver)
    reference_s: list[float] = []
    reference = None
    for i in range(repeats):
        reference = pypfopt_once(data.returns, objective, pypfopt_solver)
        reference_s.append(reference.seconds)
        if (i + 1) % 10 == 0 or i + 1 == repeats:
            median = np.median(reference_s) * 1000
            progress(f"{label}: PyPortfolioOpt {i + 1}/{repeats} runs, median {median:.1f} ms")
    assert reference is not None

    columns = [str(c) for c in data.returns.columns]
    stratopt_weights = np.array([response.optimal_weights[c] for c in columns])
    mu, cov = reference.mu.to_numpy(), reference.cov.to_numpy()
    _, ref_vol, ref_sharpe = portfolio_performance(reference.weights, mu, cov, risk_free_rate=RISK_FREE_RATE)
    _, strat_vol, strat_sharpe = portfolio_performance(stratopt_weights, mu, cov, risk_free_rate=RISK_FREE_RATE)
    sharpe = objective == "MAX_SHARPE"
    row = Row(
        n=n,
        data=data.kind,
        objective=objective,
        repeats=repeats,
        request_bytes=request.ByteSize(),
        e2e_ms=np.asarray(e2e, dtype=np.float64) * 1000.0,
        engine_ms=np.asarray(engine, dtype=np.float64),
        pypfopt_ms=np.asarray(reference_s, dtype=np.float64) * 1000.0,
        pypfopt_solver=reference.solver,
        stratopt_value=response.sharpe_ratio if sharpe else response.expected_volatility,
        pypfopt_value=float(ref_sharpe if sharpe else ref_vol),
        stratopt_value_on_reference_moments=float(strat_sharpe if sharpe else strat_vol),
        max_abs_weight_diff=float(np.max(np.abs(stratopt_weights - reference.weights))),
        convergence=pb.ConvergenceStatus.Name(response.optimization_metadata.convergence_status),
        note=note,
    )
    in_situ_breakdown(row, probe)
    return row, request


class Probe:
    """In-situ timings of the server's stages, from wrappers around its methods (``--breakdown`` only).

    The server runs in this process, so wrapping ``OptimizationService.optimize`` (the whole handler),
    ``validate_optimize_request``, ``SolverPool.run`` (the round trip to a worker, whose ``total_time_ms`` is the
    engine's own time) and ``PostgresOptimizationStore.persist_run`` times each stage of the very calls the client
    timed.
    """

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.installed = False

    def add(self, name: str, milliseconds: float) -> None:
        """Record one sample."""
        self.samples.setdefault(name, []).append(milliseconds)

    def clear(self) -> None:
        """Forget the samples (before the timed calls of a row)."""
        self.samples = {}

    def install(self) -> None:
        """Wrap the server's stages; on failure (renamed internals) the breakdown is left out."""
        try:
            from command_side import optimization_adapter, repository, servicer, workers
        except ImportError:
            log.exception("cannot instrument the server; the breakdown is left out")
            return
        probe = self
        # The handler is the servicer's Optimize (request → command → one application call → response); the
        # validation and request hash are the adapter's request → command conversion.
        optimize = servicer.OptimizationCommandServicer.Optimize
        validate = optimization_adapter.optimize_command
        run = workers.SolverPool.run
        persist = repository.PostgresOptimizationStore.persist_run

        async def timed_optimize(handler: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await optimize(handler, request, *args, **kwargs)
            finally:
                probe.add("handler", (time.perf_counter() - started) * 1000.0)

        def timed_validate(request: Any) -> Any:
            started = time.perf_counter()
            try:
                return validate(request)
            finally:
                probe.add("validate", (time.perf_counter() - started) * 1000.0)

        async def timed_run(pool: Any, job: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome = await run(pool, job, **kwargs)
            probe.add("pool", (time.perf_counter() - started) * 1000.0)
            probe.add("engine", float(outcome.total_time_ms))
            return outcome

        async def timed_persist(repo: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await persist(repo, **kwargs)
            finally:
                probe.add("persist", (time.perf_counter() - started) * 1000.0)

        servicer.OptimizationCommandServicer.Optimize = timed_optimize  # type: ignore[method-assign,assignment]
        optimization_adapter.optimize_command = timed_validate
        workers.SolverPool.run = timed_run  # type: ignore[method-assign,assignment]
        repository.PostgresOptimizationStore.persist_run = timed_persist  # type: ignore[method-assign,assignment]
        self.installed = True


BREAKDOWN_STAGES = (
    "e2e (client)",
    "gRPC + (de)serialisation",
    "server handler",
    "  validate + hash",
    "  worker round trip",
    "    engine in worker",
    "    hop (pickle, IPC, wake-up)",
    "  persist transaction",
    "  rest of handler",
    "in-process: estimation",
    "in-process: solve",
    "  cvxpy build + compile",
    "  Clarabel",
    "empty gRPC call (health)",
)


def _stats(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples, dtype=np.float64)
    return float(np.median(values)), float(np.percentile(values, 99))


def in_situ_breakdown(row: Row, probe: Probe) -> None:
    """Turn the probe's samples of a row's timed calls into per-stage medians and p99s."""
    s = probe.samples
    if not probe.installed or len(s.get("handler", [])) != row.repeats:
        return
    e2e = row.e2e_ms.tolist()
    derived = {
        "e2e (client)": e2e,
        "gRPC + (de)serialisation": [a - b for a, b in zip(e2e, s["handler"], strict=True)],
        "server handler": s["handler"],
        "  validate + hash": s["validate"],
        "  worker round trip": s["pool"],
        "    engine in worker": s["engine"],
        "    hop (pickle, IPC, wake-up)": [a - b for a, b in zip(s["pool"], s["engine"], strict=True)],
        "  persist transaction": s["persist"],
        "  rest of handler": [
            h - v - p - w for h, v, p, w in zip(s["handler"], s["validate"], s["pool"], s["persist"], strict=True)
        ],
    }
    for name, samples in derived.items():
        median, p99 = _stats(samples)
        row.breakdown_ms[f"{name} median"], row.breakdown_ms[f"{name} p99"] = median, p99


def in_process_breakdown(rows: list[tuple[Row, cmd_pb.OptimizeRequest]], health: Any, repeats: int | None) -> None:
    """Time estimation and solve (split into cvxpy's compilation and Clarabel) in this process, and an empty call."""
    import cvxpy as cp

    from command_side.mapping import validate_optimize_request
    from services.estimation import estimate_moments
    from services.optimization import optimize_mean_variance

    clarabel: list[float] = []
    solve = cp.Problem.solve

    def recording_solve(problem: Any, *args: Any, **kwargs: Any) -> Any:
        result = solve(problem, *args, **kwargs)  # type: ignore[no-untyped-call]
        clarabel.append(float(problem.solver_stats.solve_time or 0.0) * 1000.0)
        return result

    cp.Problem.solve = recording_solve  # type: ignore[method-assign,assignment]
    try:
        for row, request in rows:
            k = repeats or row.repeats
            progress(f"breakdown N={row.n} {row.objective}: estimation and solve in-process, {k} times each")
            validated = validate_optimize_request(request)
            inputs, settings, problem = validated.inline_returns, validated.settings, validated.problem
            assert inputs is not None
            estimation, solving = [], []
            clarabel.clear()
            for _ in range(k):
                started = time.perf_counter()
                moments = estimate_moments(inputs, settings).moments
                estimation.append((time.perf_counter() - started) * 1000.0)
                started = time.perf_counter()
                optimize_mean_variance(problem, moments)
                solving.append((time.perf_counter() - started) * 1000.0)
            check = health_pb2.HealthCheckRequest()
            empty = []
            for _ in range(k):
                started = time.perf_counter()
                health.Check(check, timeout=10)
                empty.append((time.perf_counter() - started) * 1000.0)
            derived = {
                "in-process: estimation": estimation,
                "in-process: solve": solving,
                "empty gRPC call (health)": empty,
            }
            if len(clarabel) == len(solving):  # solved through cvxpy (the active set and direct Clarabel are not)
                derived["  cvxpy build + compile"] = [a - b for a, b in zip(solving, clarabel, strict=True)]
                derived["  Clarabel"] = list(clarabel)
            for name, samples in derived.items():
                median, p99 = _stats(samples)
                row.breakdown_ms[f"{name} median"], row.breakdown_ms[f"{name} p99"] = median, p99
    finally:
        cp.Problem.solve = solve  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------- report


def render(rows: list[Row], info: dict[str, Any]) -> str:
    """Format the report: header lines, the table, its notes, target verdicts and the breakdown."""
    m = info["machine"]
    chosen = f"{info['pypfopt_solver']} (--pypfopt-solver)" if info["pypfopt_solver"] else "its default (solver=None)"
    lines = [
        "stratopt Optimize latency: end-to-end gRPC call (incl. estimation, solve and persistence) "
        "vs in-process PyPortfolioOpt",
        f"command:  {info['command']}",
        f"machine:  {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}; load average {info['load_before']} (before), {info['load_after']} (after)",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"inputs:   T={PERIODS} daily returns sent inline; N={REAL_N}: real (data/{REAL_DATA.name}), other N: "
        f"synthetic {FACTORS}-factor model (seed {SEED}); rf={RISK_FREE_RATE:g}; long-only [0, 1]; mean "
        "historical return + sample covariance",
        f"runs:     K calls per row after {info['warmup']} warm-up calls; server solver workers {info['workers']}; "
        f"BLAS threads {info['blas_threads']}; stratopt solver CLARABEL; PyPortfolioOpt solver {chosen}",
        "",
    ]
    header = (
        f"{'N':>4} {'data':<9} {'objective':<14} {'K':>3} | {'e2e med':>8} {'e2e p99':>8} {'engine':>7} | "
        f"{'pypfopt med':>11} {'p99':>8} {'solver':<8} | {'ratio':>6} | {'obj gap':>9} {'max|dw|':>8} | "
        "target (e2e p99)"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        e2e, ref, engine = summary(row.e2e_ms), summary(row.pypfopt_ms), summary(row.engine_ms)
        target = row.target_ms
        verdict = "-" if target is None else f"< {target:g} ms: {'MET' if row.target_met else 'MISSED'}"
        lines.append(
            f"{row.n:>4} {row.data:<9} {row.objective:<14} {row.repeats:>3} | {e2e['median']:>8.1f} "
            f"{e2e['p99']:>8.1f} {engine['median']:>7.1f} | {ref['median']:>11.1f} {ref['p99']:>8.1f} "
            f"{row.pypfopt_solver:<8} | "
            f"{e2e['median'] / ref['median']:>5.2f}x | {row.gap:>+9.1e} {row.max_abs_weight_diff:>8.1e} | {verdict}"
        )
    lines += [
        "",
        "times in ms. e2e: client-timed Optimize call (serialise, gRPC, validate, estimate + solve in a worker "
        "process, PostgreSQL transaction, response);",
        "engine: server-reported estimation + solve (optimization_metadata.optimization_time_ms, median); pypfopt: "
        "mean_historical_return + sample_cov + EfficientFrontier + max_sharpe/min_volatility in-process;",
        "ratio: e2e median / pypfopt median; p99: numpy percentile 99 of the K samples (linear interpolation: for "
        "K < 100 it lies between the two slowest);",
        "obj gap: (stratopt - pypfopt) / |pypfopt| of the Sharpe ratio (MAX_SHARPE: > 0 = stratopt better) or of the "
        "volatility (MIN_VOLATILITY: < 0 = stratopt better), stratopt's",
        "value from the response, pypfopt's from portfolio_performance on its moments; max|dw|: largest absolute "
        "weight difference.",
        "",
    ]
    for row in rows:
        if row.note:
            lines.append(f"note N={row.n} {row.objective}: {row.note}")
    for n, target in TARGETS_MS.items():
        judged = [r for r in rows if r.n == n]
        if not judged:
            lines.append(f"target N={n}: e2e p99 < {target:g} ms: not measured in this run")
            continue
        worst = max(summary(r.e2e_ms)["p99"] for r in judged)
        verdict = "MET" if all(r.target_met for r in judged) else "MISSED"
        lines.append(f"target N={n}: e2e p99 < {target:g} ms: {verdict} (worst p99 {worst:.1f} ms)")
    broken = [r for r in rows if r.breakdown_ms]
    if broken:
        lines += [
            "",
            "Breakdown, median / p99 ms per stage. Server stages in situ (wrappers around the server's methods, during "
            "the timed calls above);",
            "in-process lines: the same inputs estimated and solved K times in this process; empty gRPC call: health "
            "Check on the same channel.",
        ]
        head = f"{'stage':<32}" + "".join(f" {f'{r.n} {SHORT[r.objective]}':>15}" for r in broken)
        lines += [head, "-" * len(head)]
        for name in BREAKDOWN_STAGES:
            cells = []
            for r in broken:
                median, p99 = r.breakdown_ms.get(f"{name} median"), r.breakdown_ms.get(f"{name} p99")
                cells.append("-" if median is None or p99 is None else f"{median:.1f} / {p99:.1f}")
            lines.append(f"{name:<32}" + "".join(f" {c:>15}" for c in cells))
        lines += [
            "gRPC + (de)serialisation = e2e - server handler (client stub, HTTP/2 over loopback, protobuf, "
            "interceptor, thread hand-offs); hop = worker round trip - engine;",
            "rest of handler = handler - validate - worker round trip - persist (response building, event loop). "
            "Indented lines are parts of the line above them.",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.optimize_latency",
        description="End-to-end Optimize latency (gRPC + persistence) vs in-process PyPortfolioOpt.",
    )
    parser.add_argument("--sizes", default="20,100,500", help="comma-separated N (default 20,100,500)")
    parser.add_argument("--repeats", type=int, default=None, help="K timed calls per row (default 30; 15 for N > 100)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up calls per row (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="server solver processes (default the CPU count)")
    parser.add_argument("--blas-threads", type=int, default=None, help="BLAS/OpenMP threads (default: libraries')")
    parser.add_argument("--pypfopt-solver", default=None, help="solver for PyPortfolioOpt (default: its own)")
    parser.add_argument("--breakdown", action="store_true", help="also time each stage of the server's path")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    if not args.sizes or any(n < 2 for n in args.sizes):
        parser.error("--sizes needs at least one N >= 2")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.blas_threads is not None and args.blas_threads < 1:
        parser.error("--blas-threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["uv run python -m benchmarks.optimize_latency", *([shlex.join(given)] if given else [])])
    run_tag = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    limits = limit_blas_threads(args.blas_threads)  # noqa: F841 - keeps the limits for the whole run
    info: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "load_before": load_average(),
        "warmup": args.warmup,
        "workers": args.workers or os.cpu_count(),
        "blas_threads": blas_threads(),
        "pypfopt_solver": args.pypfopt_solver,
        "started_at": datetime.now(UTC).isoformat(),
    }
    datasets = {n: dataset_for(n) for n in args.sizes}
    rows: list[Row] = []
    requests: list[tuple[Row, cmd_pb.OptimizeRequest]] = []
    probe = Probe()
    if args.breakdown:
        probe.install()
    started = time.perf_counter()
    try:
        with benchmark_server(args.workers) as (dsn, thread):
            info["versions"] = versions(dsn)
            with client.channel(thread.target) as channel:
                stub = client.command_stub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                health.Check(health_pb2.HealthCheckRequest(), timeout=30)  # connect before timing
                for n in args.sizes:
                    repeats = args.repeats or (30 if n <= 100 else 15)
                    for objective in OBJECTIVES:
                        row, request = measure(
                            stub, n, datasets[n], objective, repeats, args.warmup, run_tag, args.pypfopt_solver, probe
                        )
                        rows.append(row)
                        requests.append((row, request))
                if args.breakdown:
                    in_process_breakdown(requests, health, args.repeats)
            info["load_after"] = load_average()
    except KeyboardInterrupt:
        progress("interrupted; the server and the database were stopped and the directory removed")
        return 130
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(render(rows, info), flush=True)
    progress(f"done in {info['elapsed_s']:.0f} s")
    if args.json is not None:
        payload = {**info, "periods": PERIODS, "risk_free_rate": RISK_FREE_RATE, "seed": SEED}
        payload["results"] = [r.as_json() for r in rows]
        args.json.write_text(json.dumps(payload, indent=2))
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
