"""Small-problem ``Optimize`` latency alone, then beside a stream of heavy problems, with the heavy pool on and off.

What is measured
----------------
The small problem is max Sharpe on the last 756 daily returns of the 20 S&P 500 stocks of
``data/sp500_dataset.csv.gz`` (inline returns, rf = 2 %): one closed-loop client sends it K times (after W
warm-up calls) and times each call on the client (``time.perf_counter``), the whole path: gRPC, parsing in a
worker, estimation and solve, the PostgreSQL transaction, the response. Three phases, each on a fresh server
(``ServerThread``, in this process) over one throwaway embedded PostgreSQL + TimescaleDB cluster:

1. ``alone``: the small calls only (heavy pool on; it idles);
2. ``heavy load, pool on``: the same small calls while ``--heavy-clients`` closed-loop clients keep sending
   heavy problems, the server with ``--heavy-workers`` heavy processes (default 1) beside its main workers;
3. ``heavy load, pool off``: the same with ``heavy_workers = 0``: every job shares the main pool (the server
   before issue 12's point 3).

The heavy problem (``--heavy``): ``cvar`` (default), min CVaR_95 on all 8,312 daily returns of the same 20
stocks (a scenario risk measure: heavy; about 2 s of solver time), or ``minvol``, min volatility at N = 1000 on
756 days of a seeded 5-factor model (heavy by size). A heavy call refused with RESOURCE_EXHAUSTED (the heavy
queue is full) is retried after 0.5 s and counted apart.

Printed (stdout): machine, load averages before and after, then per phase the small calls' p50 and p99
(``numpy.percentile``, linear; with K < 100 the p99 lies between the two slowest calls) in milliseconds, their
count, the heavy calls completed and refused during the phase, and each phase's p50 and p99 as a ratio of the
``alone`` figures. A loaded phase measures from the moment every heavy client has had one answer (a steady
heavy stream) and goes on past K small calls until ``MIN_HEAVY_DURING`` (3) heavy calls have completed within
it; the heavy counts are those of the measured window. The client shares the process (and the GIL) with the
server's event loop, in every phase alike.

Run
---
::

    uv run python -m benchmarks.heavy_isolation                       # K = 60 small calls per phase
    uv run python -m benchmarks.heavy_isolation --heavy minvol --repeats 100 --heavy-clients 2

Options: ``--repeats K`` (60), ``--warmup W`` (5), ``--workers`` (main pool, default the CPU count),
``--heavy-workers`` (1), ``--heavy-clients`` (2), ``--heavy`` (``cvar`` or ``minvol``), ``--phase-limit-s``
(stop a phase's small calls after this many seconds, default 300). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from benchmarks.optimize_latency import (
    REAL_DATA,
    Dataset,
    build_request,
    load_average,
    machine,
    progress,
    real_dataset,
    synthetic_dataset,
)
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate
from stratopt_cli.server import ServerThread, StratoptServer

CALL_TIMEOUT_S = 600.0
MIN_HEAVY_DURING = 3
"""Heavy calls that must complete while the small calls of a loaded phase are timed (the phase runs on)."""


def heavy_request(kind: str) -> cmd_pb.OptimizeRequest:
    """The heavy problem: min CVaR on the whole real history, or min volatility at N = 1000 (synthetic)."""
    if kind == "minvol":
        return build_request(synthetic_dataset(1000), pb.OBJECTIVE_MIN_VOLATILITY, "heavy-minvol")
    prices = pd.read_csv(REAL_DATA, index_col=0, parse_dates=True).sort_index()
    returns = prices.pct_change().iloc[1:].dropna()
    returns.index = pd.DatetimeIndex(returns.index).tz_localize("UTC")
    request = build_request(Dataset("real", returns.astype(np.float64)), pb.OBJECTIVE_MIN_VOLATILITY, "heavy-cvar")
    request.risk_parameters.risk_measure = pb.RISK_MEASURE_CVAR
    return request


@dataclass
class Phase:
    """One phase's small-call samples and the heavy calls around them."""

    name: str
    small_ms: list[float] = field(default_factory=list)
    heavy_done: int = 0
    heavy_refused: int = 0
    seconds: float = 0.0

    def p(self, q: float) -> float:
        """The ``q``-th percentile of the small calls' latency (milliseconds; NaN without samples)."""
        return float(np.percentile(self.small_ms, q)) if self.small_ms else float("nan")


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A throwaway migrated embedded cluster (removed at the end)."""
    base = Path(tempfile.mkdtemp(prefix="stratopt-heavy-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_bench")
    try:
        dsn = cluster.start()
        with contextlib.redirect_stdout(sys.stderr):
            migrate(dsn)
        yield dsn
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


async def run_phase(
    target: str,
    phase: Phase,
    small: bytes,
    heavy: bytes | None,
    *,
    heavy_clients: int,
    repeats: int,
    warmup: int,
    limit_s: float,
) -> None:
    """Warm up, start the heavy clients (if any), time the small calls, stop the heavy clients."""
    identity = lambda payload: payload  # noqa: E731 - the requests are serialised once, up front
    async with grpc.aio.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    ) as channel:
        optimize = channel.unary_unary(
            "/stratopt.v1.OptimizationCommandService/Optimize",
            request_serializer=identity,
            response_deserializer=cmd_pb.OptimizeResponse.FromString,
        )
        for _ in range(warmup):
            await optimize(small, timeout=CALL_TIMEOUT_S)
        stop, steady = asyncio.Event(), asyncio.Event()

        async def heavy_client() -> None:
            while not stop.is_set():
                try:
                    await optimize(heavy, timeout=CALL_TIMEOUT_S)
                    phase.heavy_done += 1
                    if phase.heavy_done >= heavy_clients:
                        steady.set()
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    phase.heavy_refused += 1
                    await asyncio.sleep(0.5)

        loaders = [asyncio.ensure_future(heavy_client()) for _ in range(heavy_clients if heavy else 0)]
        if loaders:  # steady state: every heavy client has had an answer and sent its next call
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(steady.wait(), limit_s)
        phase.heavy_done = phase.heavy_refused = 0
        started = time.monotonic()
        # K small calls, and on for as long as the heavy clients need to finish MIN_HEAVY_DURING more calls.
        while len(phase.small_ms) < repeats or (loaders and phase.heavy_done < MIN_HEAVY_DURING):
            begun = time.perf_counter()
            await optimize(small, timeout=CALL_TIMEOUT_S)
            phase.small_ms.append((time.perf_counter() - begun) * 1e3)
            if time.monotonic() - started > limit_s:
                progress(f"{phase.name}: phase limit reached after {len(phase.small_ms)} small calls")
                break
        phase.seconds = time.monotonic() - started
        stop.set()
        for loader in loaders:
            loader.cancel()
        await asyncio.gather(*loaders, return_exceptions=True)


def measure(
    dsn: str, phase: Phase, heavy_workers: int, args: argparse.Namespace, small: bytes, heavy: bytes | None
) -> None:
    progress(f"{phase.name}: starting a server (workers {args.workers or 'CPU count'}, heavy workers {heavy_workers})")
    thread = ServerThread(
        StratoptServer(
            dsn, address="127.0.0.1:0", sides=("command",), workers=args.workers, heavy_workers=heavy_workers
        )
    )
    thread.start()
    try:
        asyncio.run(
            run_phase(
                thread.target,
                phase,
                small,
                heavy,
                heavy_clients=args.heavy_clients,
                repeats=args.repeats,
                warmup=args.warmup,
                limit_s=args.phase_limit_s,
            )
        )
    finally:
        thread.stop()
    progress(f"{phase.name}: p50 {phase.p(50):.1f} ms, p99 {phase.p(99):.1f} ms over {len(phase.small_ms)} calls")


def render(phases: list[Phase], args: argparse.Namespace, before: str, after: str) -> str:
    info = machine()
    alone = phases[0]
    lines = [
        "Small-problem Optimize latency (N = 20 max Sharpe, 756 days, real data) alone and beside heavy load",
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB; shared with other work",
        f"load average before {before}, after {after}",
        f"heavy load: {args.heavy_clients} closed-loop clients of '{args.heavy}'; main workers "
        f"{args.workers or os.cpu_count()}, heavy workers {args.heavy_workers} when on",
        "",
        f"{'phase':<26}{'p50 ms':>9}{'p99 ms':>10}{'calls':>7}{'s':>6}{'heavy ok':>10}{'refused':>9}{'p50/alone':>11}"
        f"{'p99/alone':>11}",
    ]
    for phase in phases:
        lines.append(
            f"{phase.name:<26}{phase.p(50):>9.1f}{phase.p(99):>10.1f}{len(phase.small_ms):>7}{phase.seconds:>6.0f}"
            f"{phase.heavy_done:>10}"
            f"{phase.heavy_refused:>9}{phase.p(50) / alone.p(50):>11.2f}{phase.p(99) / alone.p(99):>11.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--heavy-workers", type=int, default=1)
    parser.add_argument("--heavy-clients", type=int, default=2)
    parser.add_argument("--heavy", choices=("cvar", "minvol"), default="cvar")
    parser.add_argument("--phase-limit-s", type=float, default=300.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the three phases and print the table."""
    args = parse_args(argv)
    small = build_request(real_dataset(), pb.OBJECTIVE_MAX_SHARPE, "small-max-sharpe").SerializeToString()
    heavy = heavy_request(args.heavy).SerializeToString()
    phases = [Phase("alone"), Phase("heavy load, pool on"), Phase("heavy load, pool off")]
    before = load_average()
    with database() as dsn:
        measure(dsn, phases[0], args.heavy_workers, args, small, None)
        measure(dsn, phases[1], args.heavy_workers, args, small, heavy)
        measure(dsn, phases[2], 0, args, small, heavy)
    print(render(phases, args, before, load_average()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
