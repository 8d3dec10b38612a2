"""A real start of the Helm chart with podman (see tests/helm/podman_start.py for every step).

Builds the images on a fresh machine (several minutes; cached by content-hash tags afterwards), runs the
migration Job's pod and both Deployments, optimizes through the command pod and reads the result through the
query pod over real gRPC, checks the pods' users and that the serving pods did not migrate, and tears down.
Deselect locally with ``-m "not podman"``; the test command runs it.
"""

from __future__ import annotations

import math
import os
import shutil

import psycopg
import pytest

from tests.helm import podman_start, smoke_client

pytestmark = [pytest.mark.podman, pytest.mark.timeout(3600)]


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman missing: run scripts/setup.sh")
@pytest.mark.skipif(os.geteuid() != 0, reason="the podman start runs as root (as the test command does in CI)")
def test_chart_starts_under_podman_and_serves_both_sides() -> None:
    with podman_start.start(workers=2) as started:
        smoke_client.wait_serving(started.command_target, "stratopt.v1.OptimizationCommandService")
        smoke_client.wait_serving(started.query_target, "stratopt.v1.OptimizationQueryService")
        if podman_start.cli_serves_health_port():
            smoke_client.wait_serving(started.command_health_target)
            smoke_client.wait_serving(started.query_health_target)

        # The migration pod applied the whole schema; the serving pods (--no-migrate) found it there.
        (applied,) = [line for line in started.migration_log.splitlines() if line.startswith("applied: ")]
        migrations = sorted(p.stem for p in (podman_start.REPO / "migrations").iterdir() if p.suffix in {".sql", ".py"})
        assert applied.removeprefix("applied: ").split(", ") == migrations

        outcome = smoke_client.exercise(started.command_target, started.query_target)

        # The command pod's answer: weights over the requested symbols, a full budget, the cap respected.
        weights = dict(outcome.optimized.optimal_weights)
        assert set(weights) <= {smoke_client.PREFIX + s for s in smoke_client.SYMBOLS}
        assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6)
        assert max(weights.values()) <= smoke_client.MAX_WEIGHT + 1e-6
        # The query pod reads the same result back.
        event = outcome.latest.event
        assert event.portfolio_id == outcome.portfolio_id
        assert dict(event.weights) == weights
        assert math.isclose(event.sharpe_ratio, outcome.optimized.sharpe_ratio, rel_tol=1e-9)
        # Independent of both pods: the database holds the ingested bars and the one event.
        with psycopg.connect(started.database_url) as conn:
            bars = conn.execute(
                "SELECT count(*) FROM market_data WHERE symbol LIKE %s", (smoke_client.PREFIX + "%",)
            ).fetchone()
            events = conn.execute(
                "SELECT count(*) FROM portfolio_optimized WHERE portfolio_id = %s", (outcome.portfolio_id,)
            ).fetchone()
        assert bars is not None and bars[0] == outcome.bars_written > 0
        assert events is not None and events[0] == 1

        # The pods run as the image's unprivileged user.
        for name in started.containers.values():
            assert podman_start.podman("exec", name, "id", "-u").stdout.strip() == "10001"
        release = next(iter(started.containers.values())).split("-stratopt-")[0]
        # The image: unprivileged by default, and the build's CA bundle (a build secret) left no trace in it.
        image = started.images["STRATOPT_IMAGE"]
        assert podman_start.podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == (
            "10001:10001"
        )
        leftovers = podman_start.podman(
            "run", "--rm", "--network", "none", "--entrypoint", "ls", image, "-A", "/run"
        ).stdout.split()
        assert "build-ca" not in leftovers

    # Torn down: no pod of this release is left.
    assert podman_start.pods_of(release) == []
