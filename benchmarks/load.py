"""Closed-loop load on a stratopt server: throughput, latency per RPC, errors by status code, RSS and CPU.

What is measured
----------------
``--concurrency C`` clients run for ``--duration`` seconds (after ``--warmup`` seconds whose calls are not
counted). Each client is an asyncio task that picks an RPC by the weights of ``--mix``, sends it with the client
deadline ``--deadline`` and, as soon as it is answered, sends the next one (a closed loop: no think time). The
clients share ``ceil(C / 16)`` ``grpc.aio`` channels (HTTP/2 allows about 100 streams per connection). Requests are
serialised once before the run and sent as bytes; responses are not parsed, only error trailers are (to count
``google.rpc.RetryInfo`` details of RESOURCE_EXHAUSTED answers), so the load generator stays light: it runs in
this process, on one core of the machine it measures.

The generator freezes its startup objects out of the garbage collector's reach before the run (``gc.freeze``),
so that its own full collections do not count as server latency.

A client answered RESOURCE_EXHAUSTED waits the ``RetryInfo`` delay times a random factor in [0.5, 1.5] before its
next call, as a well-behaved client would.

RPCs of the mix (weights are relative):

- ``optimize20``: ``Optimize`` of the 20 real S&P 500 stocks of ``data/sp500_dataset.csv.gz`` with inline returns
  (T = 756 days, max Sharpe, rf = 2 %), no ``request_id``: every call estimates, solves and stores; each client
  has its own ``portfolio_id``;
- ``get_latest``: the query side's ``GetLatest`` of a portfolio optimized before the run;
- ``ingest``: ``IngestMarketData``, one message of 5 daily bars of one symbol per client (the same bars each
  time: upserts);
- ``allocate``: ``AllocateShares`` of 10 targets with a 100 000 budget, ``bypass_cache`` so that the MILP runs.

Printed: the configuration, calls per second over the measured window, per RPC the calls, OK, p50 and p99 of the
OK calls (ms, client-side, ``numpy.percentile``), errors by status code (RESOURCE_EXHAUSTED with the count that
carried RetryInfo), and, for a server this script started, the CPU used by the server's main process and by its
children (the solver workers) over the window in % of one core, the main process's CPU time per answered call
(the event loop's cost of a call: the figure to compare between versions on a shared machine, where latency
and throughput follow the other load), and their RSS at the end (``/proc``). With
``--target`` no server is started and the process figures are left out unless ``--server-pid`` is given.

Server
------
Without ``--target`` a throwaway PostgreSQL + TimescaleDB cluster starts in a temporary directory, is migrated,
and ``stratopt serve`` runs as a separate process on it (``--workers``, ``--max-queue``, passed as the
``STRATOPT_WORKERS`` / ``STRATOPT_MAX_QUEUE`` variables), so that the load generator and the server do not share
a GIL. Everything is stopped and removed at the end.

Run
---
::

    uv run python -m benchmarks.load                                      # 32 clients, 30 s, default mix
    uv run python -m benchmarks.load --concurrency 128 --duration 20 --deadline 2
    uv run python -m benchmarks.load --mix optimize20=1 --concurrency 32
    uv run python -m benchmarks.load --target 127.0.0.1:50051 --server-pid 1234

The exit code is 0 when the run completes, whatever the figures. Other load on the machine shows up in the
numbers; the header prints the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2, status_pb2  # type: ignore[attr-defined]

from benchmarks.optimize_latency import build_request, progress, real_dataset
from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import trading_service_pb2 as trading_pb
from stratopt.v1 import types_pb2 as pb
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate

DEFAULT_MIX = "optimize20=6,get_latest=2,ingest=1,allocate=1"
METHODS = {
    "optimize20": "/stratopt.v1.OptimizationCommandService/Optimize",
    "get_latest": "/stratopt.v1.OptimizationQueryService/GetLatest",
    "ingest": "/stratopt.v1.OptimizationCommandService/IngestMarketData",
    "allocate": "/stratopt.v1.TradingCommandService/AllocateShares",
}
CLIENTS_PER_CHANNEL = 16
SEED_PORTFOLIO = "load-seed"


# ------------------------------------------------------------------------------------------------ requests


def requests_for(clients: int) -> dict[str, list[bytes]]:
    """Serialised requests of each RPC, one per client."""
    template = build_request(real_dataset(), pb.OBJECTIVE_MAX_SHARPE, "load-0")
    optimize = []
    for i in range(clients):
        template.portfolio_id = f"load-{i}"
        optimize.append(template.SerializeToString())
    latest = [query_pb.GetLatestRequest(portfolio_id=SEED_PORTFOLIO).SerializeToString()] * clients
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ingest = []
    for i in range(clients):
        message = cmd_pb.IngestMarketDataRequest()
        for day in range(5):
            bar = message.bars.add(symbol=f"LOAD{i:03d}", price=100.0 + day)
            bar.timestamp.FromDatetime(start + timedelta(days=day))
        ingest.append(message.SerializeToString())
    allocation = trading_pb.AllocateSharesRequest(extra_cash=100_000.0, bypass_cache=True)
    for j in range(10):
        allocation.targets.add(symbol=f"ALC{j}", target_weight=0.1, price=17.0 + 13.0 * j)
    allocate = [allocation.SerializeToString()] * clients
    return {"optimize20": optimize, "get_latest": latest, "ingest": ingest, "allocate": allocate}


def parse_mix(text: str) -> dict[str, float]:
    """``name=weight,...`` → weights; names from ``METHODS``."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in METHODS:
            raise argparse.ArgumentTypeError(f"unknown RPC {name!r} in --mix (known: {', '.join(METHODS)})")
        mix[name] = float(weight or 1)
    if not mix or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("--mix needs at least one positive weight")
    return {k: v for k, v in mix.items() if v > 0}


# ------------------------------------------------------------------------------------------------- clients


@dataclass
class Tally:
    """Outcomes of one RPC over the measured window."""

    ok_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retry_info: int = 0


def _retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay of an error, in seconds; None without one."""
    pairs: Any = error.trailing_metadata() or ()  # a sequence of (key, value) pairs at run time
    for key, value in pairs:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


async def drive(
    target: str,
    concurrency: int,
    mix: dict[str, float],
    deadline_s: float,
    warmup_s: float,
    duration_s: float,
    pid: int | None,
) -> tuple[dict[str, Tally], dict[str, Any] | None]:
    """Run the closed loop; return the tallies of the measured window and the server's process figures."""
    requests = requests_for(concurrency)
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        for _ in range(math.ceil(concurrency / CLIENTS_PER_CHANNEL))
    ]
    # Bytes in and out: no serialiser, no parsing of responses.
    unary = [
        {name: ch.unary_unary(METHODS[name], None, None) for name in METHODS if name != "ingest"} for ch in channels
    ]
    streams = [ch.stream_unary(METHODS["ingest"], None, None) for ch in channels]
    # One optimized portfolio for GetLatest.
    seed = build_request(real_dataset(), pb.OBJECTIVE_MAX_SHARPE, SEED_PORTFOLIO).SerializeToString()
    await unary[0]["optimize20"](seed, timeout=120)
    tallies: dict[str, Tally] = defaultdict(Tally)
    # The generator's own full garbage collections (~100 ms over the imported libraries) would show up as
    # server latency: keep what exists now out of their reach (the server does the same).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    stop = start + duration_s
    names, weights = list(mix), list(mix.values())
    procs: dict[str, Any] | None = None if pid is None else {}
    if procs is not None and pid is not None:
        loop.call_at(start, lambda: procs.__setitem__("before", process_tree(pid)))
        loop.call_at(stop, lambda: procs.__setitem__("after", process_tree(pid)))

    async def client(index: int) -> None:
        rng = random.Random(index)
        calls, stream = unary[index // CLIENTS_PER_CHANNEL], streams[index // CLIENTS_PER_CHANNEL]
        while (now := loop.time()) < stop:
            name = rng.choices(names, weights)[0]
            body = requests[name][index]
            began = time.perf_counter()
            code = "OK"
            retry: float | None = None
            try:
                if name == "ingest":
                    await stream(iter((body,)), timeout=deadline_s)
                else:
                    await calls[name](body, timeout=deadline_s)
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                retry = _retry_delay_s(error) if code == "RESOURCE_EXHAUSTED" else None
            elapsed_ms = (time.perf_counter() - began) * 1000.0
            if now < start or loop.time() > stop:
                continue  # started in the warm-up or ended after the window
            tally = tallies[name]
            if code == "OK":
                tally.ok_ms.append(elapsed_ms)
            else:
                tally.errors[code] += 1
                tally.retry_info += retry is not None
            if code == "RESOURCE_EXHAUSTED":  # wait as told, with jitter, as a well-behaved client does
                await asyncio.sleep((retry or 0.05) * rng.uniform(0.5, 1.5))

    try:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    finally:
        gc.unfreeze()  # let the interpreter's exit collect everything (else native modules report leaks)
        for ch in channels:
            await ch.close(None)
    return tallies, procs


# ------------------------------------------------------------------------------------------------- process


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in task.read_text().split()]
    return out


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def process_tree(pid: int) -> dict[str, Any]:
    """CPU seconds and RSS (MB) of the server process and of its children."""
    kids = _children(pid)
    return {
        "main_cpu_s": _cpu_s(pid),
        "children_cpu_s": {k: _cpu_s(k) for k in kids},
        "main_rss_mb": _rss_mb(pid),
        "children_rss_mb": {k: _rss_mb(k) for k in kids},
    }


def _serving_target(server: subprocess.Popen[bytes], log_path: Path, offset: int, limit_s: float = 300.0) -> str:
    """Wait for the server's "serving on" line in its log file (written from ``offset`` on); its address."""
    deadline = time.monotonic() + limit_s
    with log_path.open() as log:
        log.seek(offset)
        while time.monotonic() < deadline:
            line = log.readline()
            if match := re.search(r"stratopt serving .* on (\S+:\d+)", line):
                return match.group(1)
            if not line:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited with {server.returncode} before serving (log: {log_path})")
                time.sleep(0.05)
    raise RuntimeError(f"the server did not serve within {limit_s:.0f} s (log: {log_path})")


@contextlib.contextmanager
def embedded_database(prepare: Callable[[str], None] | None = None) -> Iterator[tuple[str, Path]]:
    """Yield ``(dsn, directory)`` of a fresh embedded, migrated PostgreSQL + TimescaleDB, removed afterwards.

    ``prepare(dsn)``, when given, runs after the migrations (e.g. to seed data).
    """
    base = Path(tempfile.mkdtemp(prefix="stratopt-load-"))
    os.chmod(base, 0o755)  # the postgres user must traverse it when this runs as root
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_load")
    try:
        progress(f"starting PostgreSQL + TimescaleDB in {base}")
        dsn = cluster.start()
        with contextlib.redirect_stdout(sys.stderr):
            migrate(dsn)
        if prepare is not None:
            prepare(dsn)
        yield dsn, base
    finally:
        progress("stopping the database and removing its directory")
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def serving(
    dsn: str,
    log_path: Path,
    *,
    workers: int = 1,
    max_queue: int | None = None,
    side: str = "both",
    heavy_workers: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """Yield ``(target, pid)`` of ``stratopt serve`` on the database at ``dsn``, stopped (SIGTERM) afterwards.

    The server logs to ``log_path``, as a container runtime takes a pod's stderr: nothing in this process spends
    CPU reading it, and it never blocks on a full pipe. ``side`` is ``stratopt serve --side``: both, command or
    query (a query replica, as Helm deploys it); ``heavy_workers`` its ``STRATOPT_HEAVY_WORKERS`` (0: no heavy
    pool); ``env`` adds to this process's environment.
    """
    environment = dict(
        os.environ,
        STRATOPT_DATABASE_URL=dsn,
        STRATOPT_WORKERS=str(workers),
        STRATOPT_HEAVY_WORKERS=str(heavy_workers),
        **(env or {}),
    )
    if max_queue is not None:
        environment["STRATOPT_MAX_QUEUE"] = str(max_queue)
    command = [sys.executable, "-m", "stratopt_cli.main", "serve", "--address", "127.0.0.1:0", "--side", side]
    with log_path.open("ab") as log_file:
        offset = log_file.tell()
        server = subprocess.Popen([*command, "--workers", str(workers)], env=environment, stderr=log_file)
        try:
            target = _serving_target(server, log_path, offset)
            progress(f"server pid {server.pid} on {target} (--side {side})")
            yield target, server.pid
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()


@contextlib.contextmanager
def started_server(
    workers: int,
    max_queue: int | None,
    log: Path | None = None,
    prepare: Callable[[str], None] | None = None,
    side: str = "both",
    heavy_workers: int = 0,
) -> Iterator[tuple[str, int]]:
    """Yield ``(target, pid)`` of ``stratopt serve`` on a fresh embedded, migrated database (:func:`serving`).

    ``prepare(dsn)``, when given, runs after the migrations and before the server starts (e.g. to seed data);
    the server's log goes to ``log`` when given. ``heavy_workers`` is its ``STRATOPT_HEAVY_WORKERS`` (default 0: no
    heavy pool, the server these benchmarks measured before it existed; their problems are small).
    """
    with embedded_database(prepare) as (dsn, base):
        log_path = log or base / "server.log"
        log_path.write_bytes(b"")
        with serving(
            dsn, log_path, workers=workers, max_queue=max_queue, side=side, heavy_workers=heavy_workers
        ) as served:
            yield served


# ------------------------------------------------------------------------------------------------- report


def render(tallies: dict[str, Tally], window_s: float, procs: dict[str, Any] | None, info: dict[str, Any]) -> str:
    """The printed report."""
    lines = [
        f"stratopt load: {info['concurrency']} clients, {window_s:.0f} s measured, deadline {info['deadline']} s, "
        f"mix {info['mix']}",
        f"server: {info['server']}; load average before {info['load_before']}, after {info['load_after']}",
    ]
    total_calls = sum(len(t.ok_ms) + sum(t.errors.values()) for t in tallies.values())
    total_ok = sum(len(t.ok_ms) for t in tallies.values())
    lines.append(f"throughput: {total_calls / window_s:.1f} calls/s answered, {total_ok / window_s:.1f} OK/s")
    lines.append(f"{'rpc':<12} {'calls':>7} {'ok':>7} {'p50 ms':>9} {'p99 ms':>9}  errors")
    for name in sorted(tallies):
        t = tallies[name]
        calls = len(t.ok_ms) + sum(t.errors.values())
        p50, p99 = np.percentile(t.ok_ms, [50, 99]) if t.ok_ms else (math.nan, math.nan)
        errors = ", ".join(
            f"{code} {n}" + (f" ({t.retry_info} with RetryInfo)" if code == "RESOURCE_EXHAUSTED" else "")
            for code, n in sorted(t.errors.items())
        )
        lines.append(f"{name:<12} {calls:>7} {len(t.ok_ms):>7} {p50:>9.1f} {p99:>9.1f}  {errors or '-'}")
    if procs is not None:
        before, after = procs["before"], procs["after"]
        main_pct = 100.0 * (after["main_cpu_s"] - before["main_cpu_s"]) / window_s
        kids = ", ".join(
            f"{100.0 * (cpu - before['children_cpu_s'].get(pid, 0.0)) / window_s:.0f} %"
            for pid, cpu in sorted(after["children_cpu_s"].items())
        )
        lines.append(f"CPU over the window (% of one core): main process {main_pct:.0f} %; children {kids or '-'}")
        main_ms = 1000.0 * (after["main_cpu_s"] - before["main_cpu_s"]) / max(1, total_calls)
        lines.append(f"main process CPU per answered call: {main_ms:.2f} ms (less sensitive to other load)")
        rss = ", ".join(f"{mb:.0f}" for _, mb in sorted(after["children_rss_mb"].items()))
        lines.append(f"RSS at the end (MB): main process {after['main_rss_mb']:.0f}; children {rss or '-'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX), help=f"default {DEFAULT_MIX}")
    parser.add_argument("--deadline", type=float, default=5.0, help="client deadline per call, s (default 5)")
    parser.add_argument("--target", help="host:port of a running server (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --target: the server's pid, for CPU and RSS")
    parser.add_argument("--workers", type=int, default=2, help="solver workers of a started server (default 2)")
    parser.add_argument("--max-queue", type=int, help="STRATOPT_MAX_QUEUE of a started server (default: its own)")
    parser.add_argument(
        "--heavy-workers", type=int, default=0, help="STRATOPT_HEAVY_WORKERS of a started server (default 0)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    parser.add_argument("--server-log", type=Path, help="write a started server's log (stderr) to this path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.target:
            target, pid = args.target, args.server_pid
        else:
            target, pid = stack.enter_context(
                started_server(args.workers, args.max_queue, args.server_log, heavy_workers=args.heavy_workers)
            )
        info = {
            "concurrency": args.concurrency,
            "deadline": args.deadline,
            "mix": ",".join(f"{k}={v:g}" for k, v in args.mix.items()),
            "server": target if args.target else f"started, {args.workers} workers, max queue {args.max_queue}",
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        progress(f"{args.concurrency} clients for {args.warmup:g} + {args.duration:g} s")

        tallies, procs = asyncio.run(
            drive(target, args.concurrency, args.mix, args.deadline, args.warmup, args.duration, pid)
        )
        window = args.duration
        info["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(render(tallies, window, procs, info))
    if args.json:
        payload = {
            "info": info,
            "window_s": window,
            "rpcs": {
                name: {"ok_ms": t.ok_ms, "errors": dict(t.errors), "retry_info": t.retry_info}
                for name, t in tallies.items()
            },
            "processes": procs,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
