"""The metrics endpoint's address rules and its HTTPS serving, with a certificate made here."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from stratopt_cli.main import app
from stratopt_cli.metrics import MetricsEndpoint, ServerMetrics, insecure_allowed, is_loopback, split_address


def self_signed(directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


def test_address_rules() -> None:
    assert split_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert split_address("[::1]:0") == ("::1", 0)
    for bad in ("9100", "host:", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="host:port"):
            split_address(bad)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "", "::", "10.0.0.1", "metrics.example"))
    MetricsEndpoint("127.0.0.1:9100").check()
    MetricsEndpoint("localhost:9100").check()
    with pytest.raises(ValueError, match="non-loopback"):
        MetricsEndpoint("0.0.0.0:9100").check()
    MetricsEndpoint("0.0.0.0:9100", insecure=True).check()
    MetricsEndpoint("0.0.0.0:9100", certfile="c.pem", keyfile="k.pem").check()
    with pytest.raises(ValueError, match="both"):
        MetricsEndpoint("127.0.0.1:9100", certfile="c.pem").check()


def test_settings_from_environment() -> None:
    env = {
        "STRATOPT_TLS_CERT_FILE": "/tls/cert.pem",
        "STRATOPT_TLS_KEY_FILE": "/tls/key.pem",
        "STRATOPT_TLS_CLIENT_CA_FILE": "/tls/ca.pem",
        "STRATOPT_INSECURE": "TRUE",
    }
    assert MetricsEndpoint.from_env("0.0.0.0:9100", env) == MetricsEndpoint(
        "0.0.0.0:9100", "/tls/cert.pem", "/tls/key.pem", "/tls/ca.pem", insecure=True
    )
    assert MetricsEndpoint.from_env("127.0.0.1:9100", {}) == MetricsEndpoint("127.0.0.1:9100")
    assert not insecure_allowed({"STRATOPT_INSECURE": "no"})
    assert not insecure_allowed({})


def test_serve_refuses_plaintext_beyond_loopback_and_the_cli_exits_before_starting() -> None:
    metrics = ServerMetrics()
    with pytest.raises(ValueError, match="non-loopback"):
        metrics.serve(MetricsEndpoint("0.0.0.0:0"))
    result = CliRunner().invoke(
        app, ["serve", "--metrics-address", "0.0.0.0:9100"], env={"STRATOPT_INSECURE": "", "STRATOPT_TLS_CERT_FILE": ""}
    )
    assert result.exit_code == 2
    assert "non-loopback" in result.output


def test_https_endpoint_serves_the_registry(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    metrics = ServerMetrics()
    port = metrics.serve(MetricsEndpoint("127.0.0.1:0", certfile=cert, keyfile=key))
    try:
        context = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10) as response:
            text = response.read().decode()
        assert "grpc_server_handled_total" in text  # the family is declared before any call
        assert "process_resident_memory_bytes" in text  # the default registry is exposed too
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        metrics.close()
