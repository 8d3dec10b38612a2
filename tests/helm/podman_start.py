"""A real start of the Helm chart with podman: images, migration Job, both Deployments, gRPC calls, tear-down.

Run by tests/helm/test_podman_start.py and by scripts/podman_smoke.sh (``python -m tests.helm.podman_start``).
What it does, in order:

1. ``scripts/build_images.sh`` builds (or finds, by content-hash tag) the stratopt image and the PostgreSQL +
   TimescaleDB image from a debootstrap-made Debian base; no registry is involved.
2. The TimescaleDB image runs as the "external" database (``podman run``, host network, a free loopback port,
   a random password).
3. ``helm template`` renders the chart with the database URL, the image, ``bindHost=127.0.0.1`` and free ports.
   The pods share the host's network (``podman kube play --network host``: no bridge, no iptables rules on the
   machine), so the command and the query Deployment need different ports: the chart is rendered twice with
   the same values except the ports, and the command Deployment is taken from the first rendering, the query
   Deployment from the second. Nothing in a rendered object is edited except as said in 4.
4. Two podman 4.3 (Debian bookworm) limits are worked around in the pod specs, and nothing else is changed:
   podman writes a Kubernetes Secret volume's data base64-encoded and ignores ``stringData``, so each Secret
   volume is replaced by a ``hostPath`` directory holding the same items (key -> path) decoded, as the kubelet
   would write them; and podman refuses declared ``containerPort``s on the host network ("PortMappings can
   only be used with Bridge or slirp4netns networking"), so the containers' ``ports`` lists are dropped (they
   are informational in Kubernetes too; the listening addresses come from the rendered args and env).
5. The migration Job (a Helm pre-install hook) runs as a Pod built from the Job's own pod template
   (``podman kube play``; podman has no Jobs), and must exit 0 having applied the migrations.
6. Both Deployments start with ``podman kube play`` (one replica each; the serving pods do not migrate), and
   the caller gets the two gRPC targets. Afterwards ``podman kube down`` removes the pods and the database
   container is removed.

Everything goes through the project's containers.conf (``CONTAINERS_CONF``) and storage under
``.cache/podman`` (``--root``/``--runroot``), as scripts/podman_env.sh does; the machine's own container
configuration is not used.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "stratopt"
HELM = REPO / "node_modules" / ".bin" / "helm"
PODMAN_DIR = Path(os.environ.get("STRATOPT_PODMAN_DIR", REPO / ".cache" / "podman"))
CONTAINER_USER = 10001


def podman_cmd(*args: str) -> list[str]:
    """Podman with the project's own configuration and storage (mirrors scripts/podman_env.sh)."""
    return [
        "podman",
        "--root",
        str(PODMAN_DIR / "storage"),
        "--runroot",
        str(PODMAN_DIR / "run"),
        "--runtime",
        "runc",
        "--storage-driver",
        "overlay",
        *args,
    ]


def podman_env() -> dict[str, str]:
    """Environment for podman: the project's containers.conf."""
    return {**os.environ, "CONTAINERS_CONF": str(REPO / "containers" / "containers.conf")}


def podman(*args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run podman; on failure raise with its output."""
    done = subprocess.run(
        podman_cmd(*args), env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def build_images() -> dict[str, str]:
    """Run scripts/build_images.sh; return its ``NAME=image`` lines (BASE_IMAGE, STRATOPT_IMAGE, ...)."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_images.sh")],
        env={**os.environ, "STRATOPT_PODMAN_DIR": str(PODMAN_DIR)},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build_images.sh failed ({done.returncode}):\n{done.stderr}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on the loopback interface right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def helm_template(release: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values`` (as a values file); the rendered objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
        values_file = f.name
    try:
        done = subprocess.run(
            [str(HELM), "template", release, str(CHART), "--values", values_file],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.unlink(values_file)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    """The one rendered object of ``kind`` whose name ends with ``name_suffix``."""
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    if len(hits) != 1:
        raise LookupError(f"expected one {kind} *{name_suffix}, found {len(hits)}")
    return hits[0]


def secret_items(secret: dict[str, Any]) -> dict[str, bytes]:
    """A Secret's keys and decoded values (``data`` base64, ``stringData`` text)."""
    items = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    items.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return items


def materialise_secret_volumes(
    pod_spec: dict[str, Any], secrets_by_name: dict[str, dict[str, Any]], root: Path
) -> None:
    """Replace each Secret volume of ``pod_spec`` by a hostPath directory with the same files (see step 4)."""
    for volume in pod_spec.get("volumes", []):
        source = volume.pop("secret", None)
        if source is None:
            continue
        data = secret_items(secrets_by_name[source["secretName"]])
        directory = root / f"{source['secretName']}-{volume['name']}"
        directory.mkdir(parents=True, exist_ok=True)
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            path = directory / item["path"]
            path.write_bytes(data[item["key"]])
            os.chown(path, CONTAINER_USER, CONTAINER_USER)
            path.chmod(source.get("defaultMode", 0o440))
        os.chown(directory, CONTAINER_USER, CONTAINER_USER)
        volume["hostPath"] = {"path": str(directory), "type": "Directory"}


def adapt_for_podman(pod_spec: dict[str, Any], secrets_by_name: dict[str, dict[str, Any]], root: Path) -> None:
    """The two podman 4.3 work-arounds of step 4: Secret volumes as files, no declared container ports."""
    materialise_secret_volumes(pod_spec, secrets_by_name, root)
    for c in pod_spec["containers"]:
        c.pop("ports", None)


def pod_from_job(job: dict[str, Any]) -> dict[str, Any]:
    """A Pod with the Job's own pod template (podman kube play has no Jobs)."""
    template = copy.deepcopy(job["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": job["metadata"]["name"], "labels": template["metadata"].get("labels", {})},
        "spec": template["spec"],
    }


def wait_postgres(url: str, timeout_s: float = 120.0) -> None:
    """Poll until PostgreSQL at ``url`` accepts a connection with timescaledb available."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                row = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
                if row and row[0] == 1:
                    return
        except Exception as error:  # not up yet; the last error is reported on timeout
            last = error
        time.sleep(1.0)
    raise TimeoutError(f"PostgreSQL did not come up within {timeout_s:.0f} s: {last}")


def cli_serves_health_port() -> bool:
    """Whether this checkout's server implements STRATOPT_HEALTH_ADDRESS (the probes' plaintext port)."""
    return any("STRATOPT_HEALTH_ADDRESS" in p.read_text() for p in (REPO / "stratopt_cli").glob("*.py"))


@dataclass
class Started:
    """A running deployment: gRPC targets, ports, what the migration printed, the pods' container names."""

    command_target: str
    query_target: str
    command_health_target: str
    query_health_target: str
    database_url: str
    migration_log: str
    containers: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def start(workers: int = 2, log: Any = print) -> Iterator[Started]:
    """Build the images, start the database, run the migration pod and both Deployments; tear all down after."""
    started_at = time.monotonic()
    images = build_images()
    log(f"podman_start: images ready in {time.monotonic() - started_at:.0f} s: {images}")
    run_id = secrets.token_hex(3)
    release = f"smoke{run_id}"
    password = secrets.token_urlsafe(16)
    pg_port, c_grpc, c_health, c_metrics, q_grpc, q_health, q_metrics = free_ports(7)
    url = f"postgresql://stratopt:{password}@127.0.0.1:{pg_port}/stratopt"
    workdir = Path(tempfile.mkdtemp(prefix=f"stratopt-{release}-"))
    os.chmod(workdir, 0o755)
    db_name = f"{release}-db"
    played: list[Path] = []
    try:
        podman(
            "run", "-d", "--name", db_name, "--network", "host",
            "-e", f"POSTGRES_PASSWORD={password}", "-e", f"PGPORT={pg_port}", "-e", "LISTEN_ADDRESSES=127.0.0.1",
            images["TIMESCALEDB_IMAGE"],
        )  # fmt: skip
        wait_postgres(url)
        log(f"podman_start: database up at 127.0.0.1:{pg_port} after {time.monotonic() - started_at:.0f} s")

        repository, tag = images["STRATOPT_IMAGE"].rsplit(":", 1)
        base_values: dict[str, Any] = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "bindHost": "127.0.0.1",
            "database": {"url": url},
            "command": {"replicas": 1, "workers": workers, "autoscaling": {"enabled": False}},
            "query": {"replicas": 1},
            "logging": {"format": "text"},
        }

        def render(grpc: int, health: int, metrics: int) -> list[dict[str, Any]]:
            values = copy.deepcopy(base_values)
            values["ports"] = {"grpc": grpc, "health": health}
            values["metrics"] = {"enabled": True, "port": metrics}
            return helm_template(release, values)

        first = render(c_grpc, c_health, c_metrics)
        second = render(q_grpc, q_health, q_metrics)
        secrets_by_name = {o["metadata"]["name"]: o for o in first if o["kind"] == "Secret"}

        # The migration Job's pod.
        migrate_pod = pod_from_job(find(first, "Job", "-migrate"))
        adapt_for_podman(migrate_pod["spec"], secrets_by_name, workdir / "secrets")
        migrate_file = workdir / "migrate.yaml"
        migrate_file.write_text(yaml.safe_dump(migrate_pod))
        played.append(migrate_file)
        podman("kube", "play", "--network", "host", str(migrate_file))
        container = f"{migrate_pod['metadata']['name']}-migrate"
        code = podman("wait", container, timeout=600).stdout.strip()
        logs = podman("logs", container)
        migration_log = logs.stdout + logs.stderr
        if code != "0":
            raise RuntimeError(f"migration pod exited {code}:\n{migration_log}")
        podman("kube", "down", str(migrate_file))
        played.remove(migrate_file)
        log(f"podman_start: migration pod done after {time.monotonic() - started_at:.0f} s: {migration_log.strip()}")

        # The two Deployments.
        deployments = [find(first, "Deployment", "-command"), find(second, "Deployment", "-query")]
        for deployment in deployments:
            adapt_for_podman(deployment["spec"]["template"]["spec"], secrets_by_name, workdir / "secrets")
        serve_file = workdir / "deployments.yaml"
        serve_file.write_text(yaml.safe_dump_all(deployments))
        played.append(serve_file)
        podman("kube", "play", "--network", "host", str(serve_file))
        containers = {
            side: f"{d['metadata']['name']}-pod-0-stratopt"
            for side, d in zip(("command", "query"), deployments, strict=True)
        }
        yield Started(
            command_target=f"127.0.0.1:{c_grpc}",
            query_target=f"127.0.0.1:{q_grpc}",
            command_health_target=f"127.0.0.1:{c_health}",
            query_health_target=f"127.0.0.1:{q_health}",
            database_url=url,
            migration_log=migration_log,
            containers=containers,
            images=images,
        )
    finally:
        for side_file in reversed(played):
            for name in ("command", "query"):
                with contextlib.suppress(Exception):
                    logs = podman("logs", "--tail", "30", f"{release}-stratopt-{name}-pod-0-stratopt", check=False)
                    if logs.returncode == 0:
                        log(f"--- {name} pod log (tail) ---\n{logs.stdout}{logs.stderr}")
            podman("kube", "down", str(side_file), check=False)
        podman("rm", "-f", "-t", "5", db_name, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"podman_start: torn down after {time.monotonic() - started_at:.0f} s")


def pods_of(release_prefix: str) -> list[str]:
    """Names of the pods podman knows whose name starts with ``release_prefix``."""
    out = podman("pod", "ps", "--format", "json").stdout
    return [p["Name"] for p in json.loads(out or "[]") if p["Name"].startswith(release_prefix)]


def main() -> int:
    """Start the chart, optimize through the command pod, read through the query pod, tear down."""
    from tests.helm import smoke_client

    with start() as started:
        smoke_client.wait_serving(started.command_target)
        smoke_client.wait_serving(started.query_target)
        outcome = smoke_client.exercise(started.command_target, started.query_target)
        weights = dict(outcome.latest.event.weights)
        print(f"podman_smoke: {outcome.bars_written} bars ingested; {outcome.portfolio_id} weights {weights}")
        if weights != dict(outcome.optimized.optimal_weights):
            print("podman_smoke: FAILED: the query side's latest result differs from the command side's answer")
            return 1
    print("podman_smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
