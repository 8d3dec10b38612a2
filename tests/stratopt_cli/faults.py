"""Helpers of the lifecycle and fault tests: a throwaway cluster to kill and freeze, processes read from /proc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate
from tests.conftest import REPO_ROOT


@contextmanager
def throwaway_cluster(prefix: str) -> Iterator[EmbeddedPostgres]:
    """A migrated cluster of its own (the session's cluster is shared by every test: never kill that one)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)  # the postgres user must traverse it when the tests run as root
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_fault")
    try:
        migrate(cluster.start())
        yield cluster
    finally:
        for pid in cluster_pids(cluster):  # a frozen cluster must be thawed before it can stop
            _signal(pid, signal.SIGCONT)
        try:
            cluster.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, grandchildren...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                parents[int(entry.name)] = stat[1]
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def cluster_pids(cluster: EmbeddedPostgres) -> list[int]:
    """The postmaster and its processes (empty when it is not running)."""
    pid_file = cluster.data_dir / "postmaster.pid"
    try:
        postmaster = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return []
    return [postmaster, *descendants(postmaster)] if alive(postmaster) else []


def kill_cluster(cluster: EmbeddedPostgres) -> None:
    """``kill -9`` the postmaster and every backend (a crash), and wait until they are gone."""
    pids = cluster_pids(cluster)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    # A killed postmaster leaves its lock file; its PID may live on as a zombie for a while.
    (cluster.data_dir / "postmaster.pid").unlink(missing_ok=True)


def freeze_cluster(cluster: EmbeddedPostgres, *, thaw: bool = False) -> None:
    """SIGSTOP (or, with ``thaw``, SIGCONT) the postmaster and every backend: a frozen database."""
    for pid in cluster_pids(cluster):
        _signal(pid, signal.SIGCONT if thaw else signal.SIGSTOP)


def health_status(ch: grpc.Channel, service: str = "", timeout: float = 2.0) -> str:
    """The health status name of ``service`` (or the error code's name when the check fails)."""
    stub = health_pb2_grpc.HealthStub(ch)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as error:
        return error.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def wait_for_status(ch: grpc.Channel, wanted: str, *, timeout: float, service: str = "") -> float:
    """Poll the health service until ``service`` reports ``wanted``; return the seconds it took."""
    start = time.monotonic()
    while True:
        status = health_status(ch, service)
        if status == wanted:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"health of {service!r} stayed {status}, not {wanted}, for {timeout} s")
        time.sleep(0.05)


def moments_request(portfolio_id: str, request_id: str) -> cmd_pb.OptimizeRequest:
    """The README's three-asset moments example (no market data needed) under a portfolio and request id."""
    request = json_format.Parse(
        (REPO_ROOT / "examples/min_volatility_moments.json").read_text(), cmd_pb.OptimizeRequest()
    )
    request.portfolio_id = portfolio_id
    request.request_id = request_id
    return request


def large_moments_request(portfolio_id: str, n: int) -> cmd_pb.OptimizeRequest:
    """A max-Sharpe problem on ``n`` synthetic assets (a solve that takes a noticeable time)."""
    symbols = [f"S{i:04d}" for i in range(n)]
    covariance = [
        (0.04 + 0.001 * (i % 7)) if i == j else 0.01 * (1 + ((i * 31 + j * 17) % 5) / 10)
        for i in range(n)
        for j in range(n)
    ]
    # Symmetrise the off-diagonal pattern.
    for i in range(n):
        for j in range(i):
            covariance[i * n + j] = covariance[j * n + i]
    body = {
        "portfolioId": portfolio_id,
        "strategies": [{"symbol": s} for s in symbols],
        "moments": {"expectedReturns": [0.05 + 0.0001 * i for i in range(n)], "covariance": covariance},
        "objective": "OBJECTIVE_MAX_SHARPE",
    }
    return json_format.Parse(json.dumps(body), cmd_pb.OptimizeRequest())
