"""Issue 9, item 3: ``stratopt serve`` as a real process, its start-up, drain and death.

Start-up waits for the database, SIGTERM drains, ``kill -9`` takes the solver workers and the resource tracker
along. Each test starts ``python -m stratopt_cli.main serve`` on a cluster of its own (stopped and started at will),
talks to it over real gRPC channels, and reads the process tree from /proc.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from typer.testing import CliRunner

from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt_cli.client import channel
from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.main import app
from tests.conftest import REPO_ROOT
from tests.stratopt_cli.faults import (
    alive,
    descendants,
    health_status,
    moments_request,
    throwaway_cluster,
    wait_for_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@dataclass
class Served:
    """A running ``stratopt serve`` process and what it printed."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def port(self, pattern: str, timeout: float = 60.0) -> int:
        """The port captured by the first group of ``pattern`` on a line the server printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))

    @property
    def target(self) -> str:
        return "127.0.0.1:" + str(self.port(r"listening for .* on 127\.0\.0\.1:(\d+)"))

    @property
    def health_target(self) -> str:
        return "127.0.0.1:" + str(self.port(r"health only \(plaintext\) on 127\.0\.0\.1:(\d+)"))


@contextmanager
def serve(dsn: str, *extra: str, **env: str) -> Iterator[Served]:
    """Run ``stratopt serve`` (1 solver worker, ports picked by the system) until the block ends."""
    environment = {
        **os.environ,
        "STRATOPT_DATABASE_URL": dsn,
        "STRATOPT_HEALTH_ADDRESS": "127.0.0.1:0",
        "STRATOPT_DB_CONNECT_TIMEOUT_S": "1",
        "STRATOPT_SHUTDOWN_GRACE_S": "1",
        **env,
    }
    command = [sys.executable, "-m", "stratopt_cli.main", "serve", "--address", "127.0.0.1:0", "--workers", "1"]
    process = subprocess.Popen(
        [*command, *extra], cwd=REPO_ROOT, env=environment, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    served = Served(process)
    reader = threading.Thread(target=served._read, daemon=True)
    reader.start()
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        reader.join(5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedPostgres]:
    with throwaway_cluster("stratopt-serve-") as pg:
        yield pg


def _optimize(target: str, portfolio_id: str, request_id: str, timeout: float = 60) -> str:
    with channel(target) as ch:
        response = cmd_grpc.OptimizationCommandServiceStub(ch).Optimize(
            moments_request(portfolio_id, request_id), timeout=timeout
        )
    return str(response.optimization_metadata.event_id)


def test_start_up_waits_for_the_database_then_sigterm_drains(cluster: EmbeddedPostgres) -> None:
    """One server's life: started before its database, served, then drained by SIGTERM mid-call."""
    cluster.stop()
    try:
        with serve(cluster.dsn) as served:
            target, health_target = served.target, served.health_target
            time.sleep(9.0)  # it used to exit after 7.8 s
            assert served.process.poll() is None, "\n".join(served.lines)
            with channel(target) as ch, channel(health_target) as health_ch:
                for check in (ch, health_ch):
                    assert health_status(check) == "NOT_SERVING"
                    assert health_status(check, "stratopt.v1.OptimizationQueryService") == "NOT_SERVING"
                    assert health_status(check, "liveness") == "SERVING"
                with pytest.raises(grpc.RpcError) as refused:
                    _optimize(target, "startup", "startup-early", timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                with pytest.raises(grpc.RpcError) as health_port_only:  # the plaintext port carries health only
                    _optimize(health_target, "startup", "startup-health-port", timeout=10)
                assert health_port_only.value.code() == grpc.StatusCode.UNIMPLEMENTED
                cluster.start()
                took = wait_for_status(health_ch, "SERVING", timeout=120)
                print(f"start-up: SERVING {took:.1f} s after the database came up")  # the figure, for `pytest -s`
                assert health_status(ch) == "SERVING"
            assert _optimize(target, "startup", "startup-1")
            attempts = [line for line in served.lines if "could not connect to the database (attempt" in line]
            assert len(attempts) >= 3
            assert not any(str(cluster.data_dir) in line or "5432" in line for line in attempts)
            _drain(served, cluster, target, health_target)
    finally:
        cluster.start()


def _drain(served: Served, cluster: EmbeddedPostgres, target: str, health_target: str) -> None:
    """SIGTERM during a call: health NOT_SERVING at once, the call still completes and is stored, exit 0."""
    # Hold the portfolio's advisory lock: the call in flight waits for it inside its storage transaction.
    with psycopg.connect(cluster.dsn, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(hashtext('drain'))")
        result: dict[str, object] = {}

        def call() -> None:
            try:
                result["event_id"] = _optimize(target, "drain", "drain-1")
            except grpc.RpcError as error:
                result["error"] = error.code()

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 30
        waiting = 0
        while waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            row = blocker.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            waiting = row.fetchone()[0]  # type: ignore[index]
        assert waiting == 1, "the call never reached its storage transaction"
        served.process.send_signal(signal.SIGTERM)
        with channel(health_target) as health_ch:
            took = wait_for_status(health_ch, "NOT_SERVING", timeout=5)
            print(f"drain: NOT_SERVING {took:.2f} s after SIGTERM")  # the figure, for `pytest -s`
            assert health_status(health_ch, "stratopt.v1.OptimizationCommandService") == "NOT_SERVING"
        assert caller.is_alive()
        blocker.execute("SELECT pg_advisory_unlock(hashtext('drain'))")
        caller.join(30)
    assert "error" not in result, result
    assert served.process.wait(60) == 0, "\n".join(served.lines)
    with psycopg.connect(cluster.dsn) as conn:
        stored = conn.execute("SELECT event_id::text FROM optimization_results WHERE request_id = 'drain-1'").fetchall()
    assert stored == [(result["event_id"],)]


def test_start_up_gives_up_after_the_configured_limit(cluster: EmbeddedPostgres) -> None:
    """In process (the CLI's own code path): STRATOPT_DB_WAIT_LIMIT_S=2 and no database: exit 1, no traceback."""
    cluster.stop()
    try:
        start = time.monotonic()
        result = CliRunner().invoke(
            app,
            ["serve", "--address", "127.0.0.1:0", "--workers", "1", "--jax-cache-dir", "off"],
            env={"STRATOPT_DATABASE_URL": cluster.dsn, "STRATOPT_DB_WAIT_LIMIT_S": "2"},
        )
        elapsed = time.monotonic() - start
        migrated = CliRunner().invoke(
            app, ["migrate"], env={"STRATOPT_DATABASE_URL": cluster.dsn, "STRATOPT_DB_WAIT_LIMIT_S": "1"}
        )
    finally:
        cluster.start()
    assert result.exit_code == 1, result.output
    assert "could not start: could not connect to the database within 2 s" in result.output
    assert elapsed < 30
    assert migrated.exit_code == 1, migrated.output
    assert "could not migrate the database within 1 s" in migrated.output
    assert str(cluster.data_dir) not in migrated.output
    current = CliRunner().invoke(app, ["migrate"], env={"STRATOPT_DATABASE_URL": cluster.dsn})
    assert current.exit_code == 0, current.output
    assert "nothing (schema is current)" in current.output


def test_kill_9_of_the_server_takes_its_workers_and_resource_tracker_along(cluster: EmbeddedPostgres) -> None:
    with serve(cluster.dsn, "--workers", "2", "--heavy-workers", "1") as served:
        with channel(served.health_target) as health_ch:
            wait_for_status(health_ch, "SERVING", timeout=120)
        children = descendants(served.process.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in children]
        assert sum(b"spawn_main" in c for c in commands) == 3, commands  # two main workers and the heavy one
        assert any(b"resource_tracker" in c for c in commands), commands
        served.process.kill()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in children if alive(pid)]
        print(f"kill -9: {len(children)} children gone after {time.monotonic() - deadline + 5:.2f} s")
        assert not left, f"still running after kill -9 of the server: {left}"
