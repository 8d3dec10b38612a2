"""Authentication and roles over real TLS: a real server on the test database, certificates and tokens made here.

The CA, the server certificate (127.0.0.1, localhost) and the client certificates are generated with
``cryptography``; tokens are signed with PyJWT (ES256, and RS256/EdDSA keys for the key loader). The server runs
with mTLS and JWT bearer tokens; a second, query-only server takes its principal from the client certificate.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from typer.testing import CliRunner

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import execution_service_pb2 as ex_pb
from stratopt.v1 import query_service_pb2 as query_pb
from stratopt.v1 import query_service_pb2_grpc as query_grpc
from stratopt.v1 import rotation_service_pb2 as rot_pb
from stratopt.v1 import trading_service_pb2 as tpb
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc
from stratopt.v1 import types_pb2 as pb
from stratopt_cli import client
from stratopt_cli.demo import _redacted
from stratopt_cli.dev_credentials import LOCAL_NAMES, DevCertificateAuthority, DevTokenIssuer, write_files
from stratopt_cli.main import app
from stratopt_cli.runtime import configured_database_url
from stratopt_cli.security import METHOD_ROLES, PUBLIC_PREFIXES, InsecureAddressError, SecurityConfig
from stratopt_cli.server import ServerThread, StratoptServer
from tests.command_side.test_rebalancing import unique

AUDIENCE = "stratopt-test"
ISSUER = "https://issuer.test"


class Pki:
    """The test's CA, server certificate, client certificates and token issuer, written to a directory."""

    def __init__(self, directory: Path) -> None:
        self.ca = DevCertificateAuthority("test CA")
        server = self.ca.issue("localhost", server_names=LOCAL_NAMES)
        self.client = self.ca.issue("client-app", client=True)
        self.issuer = DevTokenIssuer(issuer=ISSUER, audience=AUDIENCE)
        self.files = write_files(
            directory,
            {
                "ca.pem": self.ca.certificate,
                "server.pem": server.certificate,
                "server.key": server.private_key,
                "jwt.pem": self.issuer.public_key_pem,
                "client.pem": self.client.certificate,
                "client.key": self.client.private_key,
            },
        )

    def channel(self, target: str, *, client_cert: bool = True, token: str | None = None) -> grpc.Channel:
        return client.channel(
            target,
            client.ChannelSecurity(
                root_certificates=self.ca.certificate,
                certificate_chain=self.client.certificate if client_cert else None,
                private_key=self.client.private_key if client_cert else None,
                token=token,
            ),
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_target(pg_dsn: str, pki: Pki) -> Iterator[str]:
    """A full server (both sides, one solver worker) with mTLS and JWT bearer tokens."""
    security = SecurityConfig(
        tls_cert_file=pki.files["server.pem"],
        tls_key_file=pki.files["server.key"],
        tls_client_ca_file=pki.files["ca.pem"],
        jwt_public_keys_file=pki.files["jwt.pem"],
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    assert not security.self_approval_allowed  # the default with authentication
    thread = ServerThread(StratoptServer(pg_dsn, address="127.0.0.1:0", workers=1, security=security))
    thread.start()
    try:
        yield thread.target
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def channel(secure_target: str, pki: Pki) -> Iterator[grpc.Channel]:
    """A channel with a client certificate (mTLS) and no call credentials: each call passes its own token."""
    with pki.channel(secure_target) as ch:
        yield ch


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def code_of(call: Any, request: Any, metadata: list[tuple[str, str]] | None = None) -> grpc.StatusCode:
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]  # a grpc.Call
        return code
    return grpc.StatusCode.OK


def details_of(call: Any, request: Any, metadata: list[tuple[str, str]]) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=30)
    return caught.value.details() or ""  # type: ignore[attr-defined]


# --- the role table ---------------------------------------------------------------------------------------------


def test_every_rpc_of_every_service_has_a_role() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (cmd_pb, tpb, rot_pb, ex_pb, query_pb)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(METHOD_ROLES) == methods
    assert set(METHOD_ROLES.values()) <= {"read", "optimize", "trade", "approve", "admin"}
    assert all(method.startswith("/stratopt.v1.") for method in METHOD_ROLES)
    assert not any(method.startswith(PUBLIC_PREFIXES) for method in METHOD_ROLES)


# --- tokens -----------------------------------------------------------------------------------------------------


def test_missing_and_invalid_tokens_are_unauthenticated(channel: grpc.Channel, pki: Pki) -> None:
    queries = query_grpc.OptimizationQueryServiceStub(channel)
    request = query_pb.GetLatestRequest(portfolio_id="nobody-has-this")
    other_issuer = DevTokenIssuer(issuer=ISSUER, audience=AUDIENCE)  # same claims, another key
    now = int(time.time())
    cases = {
        "none": None,
        "not a JWT": "not-a-jwt",
        "expired": pki.issuer.token("ana", ["read"], exp=now - 120, iat=now - 3600, nbf=now - 3600),
        "not yet valid": pki.issuer.token("ana", ["read"], nbf=now + 600),
        "wrong key": other_issuer.token("ana", ["read"]),
        "wrong audience": pki.issuer.token("ana", ["read"], aud="another-service"),
        "wrong issuer": pki.issuer.token("ana", ["read"], iss="https://evil.test"),
        "no subject": pki.issuer.token("", ["read"]),
        "subject too long to store": pki.issuer.token("a" * 129, ["read"]),
        "subject with NUL": pki.issuer.token("a\x00b", ["read"]),
        "unsigned": jwt.encode({"sub": "ana", "roles": ["admin"], "exp": now + 60}, key=None, algorithm="none"),
    }
    for name, token in cases.items():
        metadata = None if token is None else bearer(token)
        assert code_of(queries.GetLatest, request, metadata) == grpc.StatusCode.UNAUTHENTICATED, name
    message = details_of(queries.GetLatest, request, bearer(cases["expired"] or ""))
    assert message == "token expired"
    assert details_of(queries.GetLatest, request, [("authorization", "Basic abc")]) == "missing bearer token"


def test_roles_decide_per_rpc(channel: grpc.Channel, pki: Pki, db: psycopg.Connection[Any]) -> None:
    queries = query_grpc.OptimizationQueryServiceStub(channel)
    commands = cmd_grpc.OptimizationCommandServiceStub(channel)
    trading = trading_grpc.TradingCommandServiceStub(channel)
    portfolio_id = unique("roles")
    holdings = tpb.UpsertHoldingsRequest(
        portfolio_id=portfolio_id, positions=[tpb.Position(symbol="AAPL", shares=1)], cash=10.0
    )
    # Wrong role: PERMISSION_DENIED, nothing stored.
    reader = bearer(pki.issuer.token("ana", ["read"]))
    assert code_of(trading.UpsertHoldings, holdings, reader) == grpc.StatusCode.PERMISSION_DENIED
    assert details_of(trading.UpsertHoldings, holdings, reader) == "requires role trade"
    count = db.execute("SELECT count(*) FROM portfolio_holdings WHERE portfolio_id = %s", [portfolio_id]).fetchone()
    assert count == (0,)
    # A token without roles, and unknown role names, grant nothing.
    nobody = bearer(pki.issuer.token("ana", ["superuser"]))
    assert code_of(queries.GetLatest, query_pb.GetLatestRequest(portfolio_id="x"), nobody) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # Right role: the call runs (and is stored).
    trader = bearer(pki.issuer.token("tom", ["trade"]))
    assert code_of(trading.UpsertHoldings, holdings, trader) == grpc.StatusCode.OK
    count = db.execute("SELECT count(*) FROM portfolio_holdings WHERE portfolio_id = %s", [portfolio_id]).fetchone()
    assert count == (1,)
    # Market data is written by an operator only; admin implies every role (roles as a space-separated string).
    bar = cmd_pb.IngestMarketDataRequest(bars=[cmd_pb.PriceBar(symbol=unique("SEC"), price=1.0)])
    bar.bars[0].timestamp.GetCurrentTime()
    optimizer = bearer(pki.issuer.token("olga", ["optimize", "read"]))
    assert code_of(commands.IngestMarketData, iter([bar]), optimizer) == grpc.StatusCode.PERMISSION_DENIED
    admin = bearer(pki.issuer.token("root", "admin"))
    assert code_of(commands.IngestMarketData, iter([bar]), admin) == grpc.StatusCode.OK
    assert code_of(trading.UpsertHoldings, holdings, admin) == grpc.StatusCode.OK
    assert code_of(trading.ClearAllocationCache, tpb.ClearAllocationCacheRequest(cache_key="x"), trader) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_read_only_token_can_query_but_not_optimize(channel: grpc.Channel, pki: Pki) -> None:
    analyst = bearer(pki.issuer.token("analyst", ["read"]))
    queries = query_grpc.OptimizationQueryServiceStub(channel)
    commands = cmd_grpc.OptimizationCommandServiceStub(channel)
    optimize = cmd_pb.OptimizeRequest(portfolio_id=unique("ro"), objective=pb.OBJECTIVE_MIN_VOLATILITY)
    assert code_of(commands.Optimize, optimize, analyst) == grpc.StatusCode.PERMISSION_DENIED
    # The query side answers the analyst (NOT_FOUND: authorized, and nothing is stored for this portfolio).
    assert code_of(queries.GetLatest, query_pb.GetLatestRequest(portfolio_id=optimize.portfolio_id), analyst) == (
        grpc.StatusCode.NOT_FOUND
    )
    page = queries.GetHistory(
        query_pb.GetHistoryRequest(portfolio_id=optimize.portfolio_id), metadata=analyst, timeout=30
    )
    assert list(page.events) == []
    listed = commands.ListConfigurations(cmd_pb.ListConfigurationsRequest(), metadata=analyst, timeout=30)
    assert listed is not None


def test_health_and_reflection_need_no_token(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "stratopt.v1.TradingCommandService" in services


def test_client_channel_sends_the_token_over_tls(secure_target: str, pki: Pki) -> None:
    token = pki.issuer.token("ana", ["read"])
    with pki.channel(secure_target, token=token) as ch:
        stub = query_grpc.OptimizationQueryServiceStub(ch)
        assert code_of(stub.GetLatest, query_pb.GetLatestRequest(portfolio_id="absent")) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError, match="needs TLS"):
        client.channel(secure_target, client.ChannelSecurity(token=token))


def test_cli_connects_with_tls_client_certificate_and_token_file(secure_target: str, pki: Pki, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(pki.issuer.token("ana", ["read"]) + "\n")
    connection = ["--tls-ca", str(pki.files["ca.pem"]), "--tls-cert", str(pki.files["client.pem"])]
    connection += ["--tls-key", str(pki.files["client.key"]), "--token-file", str(token_file)]
    runner = CliRunner()
    result = runner.invoke(app, [*connection, "latest", "absent", "--target", secure_target])
    assert result.exit_code == 1 and "NOT_FOUND" in result.output  # authenticated and authorized: no such portfolio
    approve = [*connection, "approve", "00000000-0000-0000-0000-000000000000", "--target", secure_target]
    result = runner.invoke(app, approve)
    assert result.exit_code == 1 and "PERMISSION_DENIED: requires role approve" in result.output
    result = runner.invoke(app, ["latest", "absent", "--target", secure_target], env={"STRATOPT_TOKEN": "x"})
    assert result.exit_code == 2 and "needs TLS" in result.output


def test_mtls_without_a_client_certificate_fails_the_handshake(secure_target: str, pki: Pki) -> None:
    token = pki.issuer.token("ana", ["admin"])
    with pki.channel(secure_target, client_cert=False, token=token) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    # A certificate from another CA is refused as well; plaintext gets no answer.
    stranger = DevCertificateAuthority("stranger CA").issue("client-app", client=True)
    security = client.ChannelSecurity(pki.ca.certificate, stranger.certificate, stranger.private_key)
    with client.channel(secure_target, security) as ch, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    with client.channel(secure_target) as ch, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)


# --- the approver is the principal; no self-approval ------------------------------------------------------------


def test_neither_an_own_limit_nor_low_given_prices_approve_a_trade(
    channel: grpc.Channel, pki: Pki, db: psycopg.Connection[Any], stored_prices: dict[str, str]
) -> None:
    """A trader who stored the policy, or priced the trades itself, is held for an approver like any other.

    1. A trade-only principal sets an approval limit of $10^15 and sells $15,000 of AAPL: PENDING, not
       AUTO_APPROVED (``POLICY_SET_BY_GENERATOR``); with the same limit set by someone else, it auto-approves.
    2. With the default $10,000 limit and AAPL priced at $0.0001 in the request, the sale of 100 shares is worth
       $0.01 at the given price but 100 × the stored close (above $100) at the stored one: PENDING
       (``PRICES_BELOW_STORED``). Nothing reaches the order outbox while pending.
    """
    assert "AAPL" in stored_prices
    trading = trading_grpc.TradingCommandServiceStub(channel)
    tom = bearer(pki.issuer.token("trader-tom", ["trade"]))
    head = bearer(pki.issuer.token("desk-head", ["trade"]))

    def book(shares: float) -> str:
        portfolio_id = unique("limit")
        holdings = tpb.UpsertHoldingsRequest(
            portfolio_id=portfolio_id, positions=[tpb.Position(symbol="AAPL", shares=shares)]
        )
        trading.UpsertHoldings(holdings, metadata=tom, timeout=30)
        return portfolio_id

    def sell_all(portfolio_id: str, price: float) -> tpb.RebalanceRecommendation:
        generate = tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.0})
        generate.prices["AAPL"] = price
        recommendation: tpb.RebalanceRecommendation = trading.GenerateRebalance(
            generate, metadata=tom, timeout=30
        ).recommendation
        return recommendation

    def outbox(portfolio_id: str) -> int:
        row = db.execute("SELECT count(*) FROM order_outbox WHERE portfolio_id = %s", (portfolio_id,)).fetchone()
        assert row is not None
        return int(row[0])

    policy = tpb.RebalancePolicy(approval_limit=1e15)
    own, other = book(100), book(100)
    trading.UpsertRebalancePolicy(tpb.UpsertRebalancePolicyRequest(portfolio_id=own, policy=policy), metadata=tom)
    trading.UpsertRebalancePolicy(tpb.UpsertRebalancePolicyRequest(portfolio_id=other, policy=policy), metadata=head)
    held = sell_all(own, 150.0)
    assert held.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL and held.total_trade_value == 15_000.0
    assert held.hold_reason.startswith("POLICY_SET_BY_GENERATOR: the approval limit was set by trader-tom")
    assert outbox(own) == 0
    approved = sell_all(other, 150.0)
    assert (approved.status, approved.hold_reason) == (tpb.RECOMMENDATION_STATUS_AUTO_APPROVED, "")
    assert outbox(other) == 1

    cheap = book(100)
    low = sell_all(cheap, 0.0001)
    assert low.total_trade_value == pytest.approx(0.01) and low.approval_limit == 10_000.0
    assert low.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL
    assert low.hold_reason.startswith("PRICES_BELOW_STORED: at the stored prices")
    assert outbox(cheap) == 0


def test_generator_cannot_approve_its_own_recommendation(
    channel: grpc.Channel, pki: Pki, db: psycopg.Connection[Any]
) -> None:
    trading = trading_grpc.TradingCommandServiceStub(channel)
    queries = query_grpc.OptimizationQueryServiceStub(channel)
    trader = bearer(pki.issuer.token("trader-tom", ["trade", "approve", "read"]))
    risk = bearer(pki.issuer.token("risk-rita", ["approve"]))
    portfolio_id = unique("four-eyes")
    trading.UpsertHoldings(
        tpb.UpsertHoldingsRequest(portfolio_id=portfolio_id, positions=[tpb.Position(symbol="AAPL", shares=10)]),
        metadata=trader,
    )
    trading.UpsertRebalancePolicy(
        tpb.UpsertRebalancePolicyRequest(portfolio_id=portfolio_id, policy=tpb.RebalancePolicy(approval_limit=100.0)),
        metadata=trader,
    )
    generate = tpb.GenerateRebalanceRequest(portfolio_id=portfolio_id, target_weights={"AAPL": 0.0})
    generate.prices["AAPL"] = 150.0
    # The approver may not generate (no trade role).
    assert code_of(trading.GenerateRebalance, generate, risk) == grpc.StatusCode.PERMISSION_DENIED
    pending = trading.GenerateRebalance(generate, metadata=trader, timeout=30).recommendation
    assert pending.status == tpb.RECOMMENDATION_STATUS_PENDING_APPROVAL

    def stored() -> tuple[Any, ...]:
        row = db.execute(
            "SELECT status, decided_by FROM rebalance_recommendations WHERE recommendation_id = %s",
            [pending.recommendation_id],
        ).fetchone()
        actors = db.execute(
            'SELECT event_type, actor FROM rebalance_events WHERE recommendation_id = %s ORDER BY "timestamp"',
            [pending.recommendation_id],
        ).fetchall()
        return row, actors

    # The deprecated request field names someone else: ignored. The generator is refused; nothing is written.
    approve = tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id, approver="risk-rita")
    assert details_of(trading.ApproveRebalance, approve, trader) == "cannot approve a recommendation you generated"
    assert code_of(trading.ApproveRebalance, approve, trader) == grpc.StatusCode.PERMISSION_DENIED
    assert stored() == (("PENDING_APPROVAL", None), [("CREATED", "trader-tom")])

    approved = trading.ApproveRebalance(
        tpb.ApproveRebalanceRequest(recommendation_id=pending.recommendation_id, approver="trader-tom"),
        metadata=risk,
        timeout=30,
    ).recommendation
    assert (approved.status, approved.decided_by) == (tpb.RECOMMENDATION_STATUS_APPROVED, "risk-rita")
    assert stored() == (("APPROVED", "risk-rita"), [("CREATED", "trader-tom"), ("APPROVED", "risk-rita")])
    reader = bearer(pki.issuer.token("ana", ["read"]))
    events = queries.ListRebalanceEvents(
        query_pb.ListRebalanceEventsRequest(portfolio_id=portfolio_id), metadata=reader, timeout=30
    ).events
    assert [(e.event_type, e.actor) for e in events] == [("APPROVED", "risk-rita"), ("CREATED", "trader-tom")]


# --- client certificates as identity ----------------------------------------------------------------------------


def test_client_certificate_names_the_principal_without_jwt(pg_dsn: str, pki: Pki, tmp_path: Path) -> None:
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"analyst-box": ["read"], "client-app": []}))
    security = SecurityConfig(
        tls_cert_file=pki.files["server.pem"],
        tls_key_file=pki.files["server.key"],
        tls_client_ca_file=pki.files["ca.pem"],
        client_roles_file=roles,
    )
    thread = ServerThread(StratoptServer(pg_dsn, address="127.0.0.1:0", sides=("query",), security=security))
    thread.start()
    try:
        request = query_pb.GetLatestRequest(portfolio_id="absent")
        analyst = pki.ca.issue("analyst-box", client=True)
        with client.channel(
            thread.target, client.ChannelSecurity(pki.ca.certificate, analyst.certificate, analyst.private_key)
        ) as ch:
            stub = query_grpc.OptimizationQueryServiceStub(ch)
            assert code_of(stub.GetLatest, request) == grpc.StatusCode.NOT_FOUND
        with pki.channel(thread.target) as ch:  # "client-app": no roles
            stub = query_grpc.OptimizationQueryServiceStub(ch)
            assert code_of(stub.GetLatest, request) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        thread.stop()


# --- configuration ----------------------------------------------------------------------------------------------


def test_non_loopback_address_without_tls_and_auth_is_refused(pg_dsn: str, pki: Pki) -> None:
    for address in ("0.0.0.0:0", "[::]:0", "example.com:50051", "10.1.2.3:50051"):
        with pytest.raises(InsecureAddressError, match="without TLS and authentication"):
            asyncio.run(StratoptServer(pg_dsn, address=address).start())
    tls_only = SecurityConfig(tls_cert_file=pki.files["server.pem"], tls_key_file=pki.files["server.key"])
    with pytest.raises(InsecureAddressError, match="without authentication"):
        tls_only.check_address("0.0.0.0:50051")
    for address in ("127.0.0.1:1", "localhost:1", "[::1]:1", "unix:/tmp/s"):
        SecurityConfig().check_address(address)
    SecurityConfig(insecure=True).check_address("0.0.0.0:50051")
    SecurityConfig(
        tls_cert_file=pki.files["server.pem"],
        tls_key_file=pki.files["server.key"],
        jwt_public_keys_file=pki.files["jwt.pem"],
    ).check_address("0.0.0.0:50051")
    # The CLI refuses before it starts a database, with the message and exit code 2.
    result = CliRunner().invoke(app, ["serve", "--address", "0.0.0.0:50051"], env={"STRATOPT_INSECURE": "false"})
    assert result.exit_code == 2
    assert "refusing to serve on non-loopback address 0.0.0.0:50051" in result.output
    assert "--insecure" in result.output


def test_database_url_is_not_a_command_line_option() -> None:
    result = CliRunner().invoke(app, ["serve", "--database-url", "postgresql://u:secret@h/db"])
    assert result.exit_code != 0 and "No such option" in result.output


def test_key_files_pem_bundle_and_jwks(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pem = b"".join(
        k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in (rsa_key, ed_key)
    )
    (tmp_path / "keys.pem").write_bytes(pem)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    now = int(time.time())
    claims = {"sub": "svc", "roles": ["read", "trade"], "exp": now + 60}
    for keys, tokens in (
        ("keys.pem", [jwt.encode(claims, rsa_key, "RS256"), jwt.encode(claims, ed_key, "EdDSA")]),
        ("keys.json", [jwt.encode(claims, rsa_key, "RS256", headers={"kid": "k1"})]),
    ):
        verifier = SecurityConfig(jwt_public_keys_file=tmp_path / keys).authenticator.tokens
        assert verifier is not None
        for token in tokens:
            principal = verifier.verify(token)
            assert (principal.name, principal.roles) == ("svc", frozenset({"read", "trade"}))
    # No exp: refused (tokens must expire).
    verifier = SecurityConfig(jwt_public_keys_file=tmp_path / "keys.pem").authenticator.tokens
    assert verifier is not None
    with pytest.raises(Exception, match="invalid token"):
        verifier.verify(jwt.encode({"sub": "svc"}, rsa_key, "RS256"))


def test_database_url_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATOPT_DATABASE_URL", raising=False)
    monkeypatch.delenv("STRATOPT_DATABASE_URL_FILE", raising=False)
    assert configured_database_url() is None
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:secret@db:5432/stratopt\n")
    monkeypatch.setenv("STRATOPT_DATABASE_URL_FILE", str(secret))
    assert configured_database_url() == "postgresql://u:secret@db:5432/stratopt"
    monkeypatch.setenv("STRATOPT_DATABASE_URL", "postgresql://other/db")
    with pytest.raises(ValueError, match="not both"):
        configured_database_url()
    monkeypatch.delenv("STRATOPT_DATABASE_URL_FILE")
    assert configured_database_url() == "postgresql://other/db"
    secret.write_text("  \n")
    monkeypatch.delenv("STRATOPT_DATABASE_URL")
    monkeypatch.setenv("STRATOPT_DATABASE_URL_FILE", str(secret))
    with pytest.raises(ValueError, match="empty"):
        configured_database_url()
    # The demo prints the URL it uses without the password.
    assert _redacted("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert _redacted("postgresql://postgres@/x?host=/tmp") == "postgresql://postgres@/x?host=/tmp"
