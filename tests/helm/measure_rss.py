"""Measure the resident memory of ``stratopt serve --side command`` and ``--side query`` (Helm resource sizing).

Run: ``uv run --frozen python -m tests.helm.measure_rss [--workers 2]``. It starts a throwaway PostgreSQL +
TimescaleDB cluster, serves each side in its own process on it (``--no-migrate``, the schema applied first as
the chart's migration Job does), runs the smoke client's calls (ingest, max-Sharpe ``Optimize`` three times,
``GetLatest``) and prints the RSS of each server's process tree (server + solver workers + resource tracker),
after start-up and after the calls, in MiB. PostgreSQL's own processes are not counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate
from tests.helm import smoke_client


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_mib(pid: int) -> tuple[float, list[float]]:
    """RSS of a process and all its descendants (MiB), and each process's RSS (the root's first)."""
    root = psutil.Process(pid)
    each: list[float] = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            each.append(proc.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            continue
    return sum(each), each


def serve(side: str, dsn: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``stratopt serve --side SIDE --no-migrate`` on a free port; return the process and its target."""
    target = f"127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "stratopt_cli.main", "serve", "--side", side, "--address", target, "--no-migrate"]
    if side == "command":
        args += ["--workers", str(workers)]
    env = {**os.environ, "STRATOPT_DATABASE_URL": dsn}
    return subprocess.Popen(args, env=env), target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="stratopt-rss-"))
    os.chmod(base, 0o755)
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_rss")
    dsn = cluster.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate(dsn)
        command, command_target = serve("command", dsn, args.workers)
        query, query_target = serve("query", dsn, args.workers)
        procs += [command, query]
        smoke_client.wait_serving(command_target)
        smoke_client.wait_serving(query_target)
        time.sleep(2.0)
        idle = {name: tree_rss_mib(p.pid) for name, p in (("command", command), ("query", query))}
        smoke_client.exercise(command_target, query_target)
        for _ in range(2):
            smoke_client.exercise(command_target, query_target, ingest=False)
        busy = {name: tree_rss_mib(p.pid) for name, p in (("command", command), ("query", query))}
        for name in ("command", "query"):
            per_process = " + ".join(f"{m:.0f}" for m in busy[name][1])
            print(
                f"{name:8s} after start {idle[name][0]:5.0f} MiB; after ingest + 3 Optimize + GetLatest "
                f"{busy[name][0]:5.0f} MiB = {per_process} (server first, then its child processes)"
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
