"""Throwaway credentials for the demo, tests and local trials: a CA, TLS certificates and signed JWTs.

Everything is generated with ``cryptography`` (EC P-256 keys, SHA-256) and PyJWT (ES256 tokens), lives in memory
or in a directory the caller owns, and is valid for a day. Never use these in production: a real deployment gets
its certificates from its PKI and its tokens from its identity provider (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
"""Subject alternative names of a loopback server certificate."""


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate with its PEM private key."""

    certificate: bytes
    private_key: bytes


@dataclass
class DevCertificateAuthority:
    """A self-signed CA that issues server and client certificates (valid one day).

    Parameters
    ----------
    common_name : str
        The CA's subject common name.
    """

    common_name: str = "stratopt dev CA"
    _key: ec.EllipticCurvePrivateKey = field(init=False, repr=False)
    _cert: x509.Certificate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.common_name))
            .issuer_name(_name(self.common_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def certificate(self) -> bytes:
        """The CA certificate (PEM): the trust root of clients (server CA) or of the server (client CA)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server_names: Iterable[str] = (), client: bool = False) -> Certificate:
        """Issue a leaf certificate.

        Parameters
        ----------
        common_name : str
            Subject common name (a client certificate's principal name).
        server_names : iterable of str
            DNS names and IP addresses of a server certificate (subject alternative names).
        client : bool
            Issue a client certificate (extended key usage clientAuth) instead of a server one.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = []
        for name in server_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Certificate(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass
class DevTokenIssuer:
    """Sign ES256 JWTs with a fresh key pair; ``public_key_pem`` is what the server verifies them with.

    Parameters
    ----------
    issuer, audience : str
        The ``iss`` and ``aud`` claims of every token.
    """

    issuer: str = "stratopt-dev"
    audience: str = "stratopt"
    _key: ec.EllipticCurvePrivateKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key_pem(self) -> bytes:
        """The verification key (PEM SubjectPublicKeyInfo), for ``STRATOPT_JWT_PUBLIC_KEYS_FILE``."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, subject: str, roles: Iterable[str] | str, *, ttl_s: float = 3600.0, **claims: Any) -> str:
        """A signed token for ``subject`` with ``roles`` (a list, or a space-separated string).

        Valid from now for ``ttl_s`` seconds.

        Extra ``claims`` override the defaults (e.g. ``aud``, ``exp``, ``nbf``).
        """
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": subject,
            "roles": roles if isinstance(roles, str) else list(roles),
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_s),
            "jti": str(uuid.uuid4()),
        }
        payload.update(claims)
        return jwt.encode(payload, self._key, algorithm="ES256")


def write_files(directory: Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Write ``files`` (name → content) into ``directory`` readable by the owner only; return their paths."""
    paths = {}
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content)
        path.chmod(0o600)
        paths[name] = path
    return paths
