"""Transport security and authorization of the gRPC server: TLS, mTLS, JWT bearer tokens, roles per RPC.

* TLS: ``grpc.ssl_server_credentials`` from ``STRATOPT_TLS_CERT_FILE`` / ``STRATOPT_TLS_KEY_FILE`` (PEM); with
  ``STRATOPT_TLS_CLIENT_CA_FILE`` the server requires and verifies a client certificate (mTLS).
* Bearer tokens: with ``STRATOPT_JWT_PUBLIC_KEYS_FILE`` (PEM public keys or certificates, or a JWKS document)
  every call but health and reflection needs ``authorization: Bearer <JWT>``, verified with PyJWT (RS256, ES256
  or EdDSA by the key's type; ``exp`` and ``sub`` required, ``nbf``, issuer and audience checked when configured,
  ``LEEWAY_S`` of clock skew). The ``roles`` claim (a list, or a space-separated string) grants roles.
* Client certificates as identity: with mTLS, no JWT keys and ``STRATOPT_TLS_CLIENT_ROLES_FILE`` (JSON: subject
  common name → list of roles), the principal is the certificate's common name.
* Neither: the loopback development mode; every call runs as ``stratopt.identity.LOCAL_PRINCIPAL`` (all roles).

:data:`METHOD_ROLES` is the role each RPC requires (``admin`` implies all); a method missing from it is refused.
:class:`AuthInterceptor` checks it and runs the handler with ``stratopt.identity.CURRENT_PRINCIPAL`` set.
Serving beyond loopback without TLS and authentication is refused unless ``insecure`` (``STRATOPT_INSECURE``).
See docs/security.md.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf.message import DecodeError

from stratopt.identity import CURRENT_PRINCIPAL, LOCAL_PRINCIPAL, ROLES, Principal
from stratopt.request_limits import MAX_ID_LENGTH

if TYPE_CHECKING:  # the grpc.aio classes are generic only in the stubs
    ServicerContext = grpc.aio.ServicerContext[Any, Any]
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

log = logging.getLogger(__name__)

LEEWAY_S: Final = 30.0
"""Clock skew tolerated on ``exp`` and ``nbf`` (seconds)."""

_CMD: Final = "/stratopt.v1.OptimizationCommandService/"
_TRADING: Final = "/stratopt.v1.TradingCommandService/"
_ROTATION: Final = "/stratopt.v1.RotationCommandService/"
_EXECUTION: Final = "/stratopt.v1.ExecutionCommandService/"
_QUERY: Final = "/stratopt.v1.OptimizationQueryService/"

METHOD_ROLES: Final[Mapping[str, str]] = {
    # optimization: runs and configuration writes need optimize; configuration reads need read
    _CMD + "Optimize": "optimize",
    _CMD + "BatchOptimize": "optimize",
    _CMD + "BatchOptimizeStream": "optimize",
    _CMD + "ComputeEfficientFrontier": "optimize",
    _CMD + "UpsertConfiguration": "optimize",
    _CMD + "RunConfiguration": "optimize",
    _CMD + "Backtest": "optimize",
    _CMD + "GetConfiguration": "read",
    _CMD + "ListConfigurations": "read",
    # market data feeds every optimization's inputs: only an operator (admin) may write it
    _CMD + "IngestMarketData": "admin",
    # trading
    _TRADING + "AllocateShares": "trade",
    _TRADING + "GetCachedAllocation": "read",
    _TRADING + "ClearAllocationCache": "admin",
    _TRADING + "UpsertHoldings": "trade",
    _TRADING + "UpsertRebalancePolicy": "trade",
    _TRADING + "CheckDrift": "trade",
    _TRADING + "GenerateRebalance": "trade",
    _TRADING + "ApproveRebalance": "approve",
    _TRADING + "RejectRebalance": "approve",
    # rotation
    _ROTATION + "IngestSignals": "admin",
    _ROTATION + "IngestQuotes": "admin",
    _ROTATION + "UpsertRotationConfiguration": "trade",
    _ROTATION + "RunRotationCycle": "trade",
    _ROTATION + "SetKillSwitch": "approve",
    _ROTATION + "PauseRotationScheduler": "admin",
    # execution: sending orders and booking fills change holdings
    _EXECUTION + "ExecuteOrders": "trade",
    _EXECUTION + "ReportFills": "trade",
    _EXECUTION + "Reconcile": "read",
    _EXECUTION + "ClaimOrders": "trade",
    _EXECUTION + "CancelOrders": "trade",
    # query side: read-only
    _QUERY + "GetLatest": "read",
    _QUERY + "GetHistory": "read",
    _QUERY + "WatchEvents": "read",
    _QUERY + "GetRealisedPerformance": "read",
    _QUERY + "GetWeightHistory": "read",
    _QUERY + "ComparePortfolios": "read",
    _QUERY + "GetRebalanceStatistics": "read",
    _QUERY + "ExportData": "read",
    _QUERY + "GetPortfolioAnalytics": "read",
    _QUERY + "GetRebalance": "read",
    _QUERY + "ListRebalanceEvents": "read",
    _QUERY + "GetLatestRotationDecision": "read",
    _QUERY + "ListRotationDecisions": "read",
    _QUERY + "CountRotationReasons": "read",
    _QUERY + "GetBacktest": "read",
    _QUERY + "GetSectorExposure": "read",
    _QUERY + "ListBacktests": "read",
    _QUERY + "ListRecomputeJobs": "read",
}
"""The role each RPC requires; a principal holding ``admin`` may call every one."""

PUBLIC_PREFIXES: Final = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Services callable without a token (health probes and reflection; they reveal no data)."""


class AuthError(Exception):
    """A call refused by authentication (UNAUTHENTICATED) or authorization (PERMISSION_DENIED)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unauthenticated(message: str) -> AuthError:
    return AuthError(grpc.StatusCode.UNAUTHENTICATED, message)


# --- tokens -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One configured public key with the JWT algorithm its type implies."""

    key: Any
    """A ``cryptography`` public key object."""
    algorithm: str
    """``RS256``, ``ES256`` or ``EdDSA``."""
    key_id: str | None = None
    """The JWKS ``kid``, when given."""


def _algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported JWT key type {type(key).__name__} (use RSA, EC P-256 or Ed25519)")


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def load_verification_keys(path: Path) -> list[VerificationKey]:
    """Read JWT verification keys: PEM public keys or certificates (one or more), or a JWKS JSON document.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    list of VerificationKey
        At least one key.

    Raises
    ------
    ValueError
        When the file holds no usable key or a key of an unsupported type.
    """
    data = path.read_bytes()
    keys: list[VerificationKey] = []
    if data.lstrip().startswith(b"{"):
        for jwk in jwt.PyJWKSet.from_json(data.decode()).keys:
            keys.append(VerificationKey(jwk.key, _algorithm(jwk.key), jwk.key_id))
    else:
        for block in _PEM_BLOCK.finditer(data):
            pem = block.group(0)
            if block.group(1) == b"CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(pem).public_key()
            else:
                key = serialization.load_pem_public_key(pem)
            keys.append(VerificationKey(key, _algorithm(key)))
    if not keys:
        raise ValueError(f"no public key in {path}")
    return keys


def _roles(claim: Any) -> frozenset[str]:
    values = claim.split() if isinstance(claim, str) else claim if isinstance(claim, list) else []
    return frozenset(v for v in values if isinstance(v, str) and v in ROLES)


@dataclass(frozen=True)
class TokenVerifier:
    """Verify JWT bearer tokens against configured public keys.

    Parameters
    ----------
    keys : list of VerificationKey
        Accepted signing keys.
    issuer, audience : str or None
        Required ``iss`` / ``aud`` when set.
    roles_claim : str
        Claim holding the roles.
    leeway_s : float
        Clock skew tolerated on ``exp`` and ``nbf`` (seconds).
    """

    keys: list[VerificationKey]
    issuer: str | None = None
    audience: str | None = None
    roles_claim: str = "roles"
    leeway_s: float = LEEWAY_S

    def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Raises
        ------
        AuthError
            UNAUTHENTICATED for a malformed, unsigned-by-us, expired, not-yet-valid, wrong-issuer or
            wrong-audience token (the message says which, briefly).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthenticated("malformed token") from None
        kid = header.get("kid")
        candidates = [
            k for k in self.keys if k.algorithm == header.get("alg") and (kid is None or k.key_id in (None, kid))
        ]
        for candidate in candidates:
            try:
                claims = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[candidate.algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway_s,
                    options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise _unauthenticated("token expired") from None
            except jwt.ImmatureSignatureError:
                raise _unauthenticated("token not yet valid") from None
            except jwt.InvalidAudienceError:
                raise _unauthenticated("token audience not accepted") from None
            except jwt.InvalidIssuerError:
                raise _unauthenticated("token issuer not accepted") from None
            except jwt.PyJWTError:
                raise _unauthenticated("invalid token") from None
            subject = claims["sub"]
            if not isinstance(subject, str) or not subject.strip() or "\x00" in subject or len(subject) > MAX_ID_LENGTH:
                # the subject is stored as the actor of decisions: the same rules as any id of a request
                raise _unauthenticated("invalid token subject")
            return Principal(subject, _roles(claims.get(self.roles_claim)))
        raise _unauthenticated("token signature not accepted")


# --- authentication of a call -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authenticator:
    """Find the principal of a call: bearer token, else client certificate, else the local development identity.

    Parameters
    ----------
    tokens : TokenVerifier or None
        When set, every call needs a valid bearer token.
    client_roles : mapping or None
        When set (and no ``tokens``), the principal is the client certificate's common name with these roles.
    """

    tokens: TokenVerifier | None = None
    client_roles: Mapping[str, frozenset[str]] | None = None

    @property
    def enabled(self) -> bool:
        """Whether callers are authenticated (False: the development mode)."""
        return self.tokens is not None or self.client_roles is not None

    def authenticate(self, metadata: Iterable[Any], auth_context: Mapping[str, Iterable[bytes]]) -> Principal:
        """The principal of a call from its metadata and its transport's auth context.

        Raises
        ------
        AuthError
            UNAUTHENTICATED when a token is needed and missing or invalid, or no client certificate names one.
        """
        if self.tokens is not None:
            values = [value for key, value in metadata if key == "authorization"]
            if len(values) != 1 or not isinstance(values[0], str):
                raise _unauthenticated("missing bearer token")
            scheme, _, token = values[0].partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthenticated("missing bearer token")
            return self.tokens.verify(token.strip())
        if self.client_roles is not None:
            names = list(auth_context.get("x509_common_name", ()))
            if len(names) != 1:
                raise _unauthenticated("no client certificate")
            name = names[0].decode()
            return Principal(name, self.client_roles.get(name, frozenset()))
        return LOCAL_PRINCIPAL


def _admit(authenticator: Authenticator, role: str | None, context: ServicerContext) -> Principal:
    metadata = context.invocation_metadata() or ()
    principal = authenticator.authenticate(metadata, context.auth_context())
    if role is None or not principal.has_role(role):
        raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"requires role {role}" if role else "not permitted")
    return principal


@dataclass(frozen=True)
class _Malformed:
    """A request whose bytes are no message of the method's type (what :func:`_tolerant` gives for them)."""

    detail: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, answering bytes it cannot parse with :class:`_Malformed` instead of raising.

    grpc answers a deserializer's exception with UNKNOWN and the exception's class name; the handler wrapped by
    :class:`AuthInterceptor` answers a ``_Malformed`` request with INVALID_ARGUMENT instead.
    """
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Malformed(str(error))

    return deserialize


async def _refuse_malformed(request: Any, context: ServicerContext) -> None:
    if isinstance(request, _Malformed):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: the bytes are no such message ({request.detail})"
        )


async def _checked(requests: AsyncIterator[Any], context: ServicerContext) -> AsyncIterator[Any]:
    """A client stream's messages, the call refused at the first malformed one."""
    async for request in requests:
        await _refuse_malformed(request, context)
        yield request


class AuthInterceptor(_ServerInterceptor):
    """Authenticate each call, check the method's role and run its handler with the principal set.

    Parameters
    ----------
    authenticator : Authenticator
        How callers are identified.
    method_roles : mapping
        Full method name → required role (default :data:`METHOD_ROLES`); other methods, except the
        :data:`PUBLIC_PREFIXES` ones, are refused with PERMISSION_DENIED.
    """

    def __init__(self, authenticator: Authenticator, method_roles: Mapping[str, str] = METHOD_ROLES) -> None:
        self._authenticator = authenticator
        self._method_roles = method_roles

    def _unary(
        self, behaviour: Callable[..., Any], role: str | None, *, streamed: bool = False
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: ServicerContext) -> Any:
            try:
                principal = _admit(self._authenticator, role, context)
            except AuthError as error:
                await context.abort(error.code, error.message)
            if streamed:
                request = _checked(request, context)
            else:
                await _refuse_malformed(request, context)
            token = CURRENT_PRINCIPAL.set(principal)
            try:
                response = behaviour(request, context)
                return await response if inspect.isawaitable(response) else response
            finally:
                CURRENT_PRINCIPAL.reset(token)

        return wrapped

    def _streaming(
        self, behaviour: Callable[..., Any], role: str | None, *, streamed: bool = False
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            try:
                principal = _admit(self._authenticator, role, context)
            except AuthError as error:
                await context.abort(error.code, error.message)
            if streamed:
                request = _checked(request, context)
            else:
                await _refuse_malformed(request, context)
            token = CURRENT_PRINCIPAL.set(principal)
            try:
                responses = behaviour(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                elif inspect.isawaitable(responses):
                    await responses
                else:
                    for response in responses:
                        yield response
            finally:
                CURRENT_PRINCIPAL.reset(token)

        return wrapped

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        """Return the method's handler wrapped in authentication and the role check.

        Parameters
        ----------
        continuation : callable
            Resolves the handler of the call.
        handler_call_details : grpc.HandlerCallDetails
            Method name and invocation metadata.

        Returns
        -------
        grpc.RpcMethodHandler
            The guarded handler; the original one for health and reflection (None for an unknown method).
        """
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        role = self._method_roles.get(method)
        serializers = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, role), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, role, streamed=True), **serializers
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream, role), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, role, streamed=True), **serializers
            )
        return handler


# --- configuration ----------------------------------------------------------------------------------------------


class InsecureAddressError(ValueError):
    """Refusal to serve beyond loopback without TLS and authentication."""


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` (or a ``unix:`` socket) is reachable from this machine only."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or a wildcard


def _read_roles_file(path: Path) -> dict[str, frozenset[str]]:
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or not all(isinstance(v, list) for v in document.values()):
        raise ValueError(f"{path}: expected a JSON object of common name → list of roles")
    unknown = sorted({r for roles in document.values() for r in roles if r not in ROLES})
    if unknown:
        raise ValueError(f"{path}: unknown roles {unknown} (known: {', '.join(ROLES)})")
    return {str(name): frozenset(roles) for name, roles in document.items()}


@dataclass(frozen=True)
class SecurityConfig:
    """How the server secures its port (every field off: the loopback development mode).

    Parameters
    ----------
    tls_cert_file, tls_key_file : Path or None
        Server certificate chain and private key (PEM); both or neither.
    tls_client_ca_file : Path or None
        CA bundle (PEM) of client certificates; set: client certificates are required (mTLS).
    jwt_public_keys_file : Path or None
        JWT verification keys (PEM or JWKS); set: bearer tokens are required.
    jwt_issuer, jwt_audience : str or None
        Required ``iss`` / ``aud`` claims.
    jwt_roles_claim : str
        Claim holding the roles (default ``roles``).
    client_roles_file : Path or None
        JSON common name → roles; with mTLS and no JWT keys, the client certificate names the principal.
    insecure : bool
        Allow serving beyond loopback without TLS and authentication.
    allow_self_approval : bool or None
        Whether the principal that generated a recommendation may approve or reject it; None: only in the
        development mode (where every caller is the same local identity).
    """

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    jwt_public_keys_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_roles_claim: str = "roles"
    client_roles_file: Path | None = None
    insecure: bool = False
    allow_self_approval: bool | None = None
    _authenticator: Authenticator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("STRATOPT_TLS_CERT_FILE and STRATOPT_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("STRATOPT_TLS_CLIENT_CA_FILE needs STRATOPT_TLS_CERT_FILE and STRATOPT_TLS_KEY_FILE")
        if self.client_roles_file is not None and self.tls_client_ca_file is None:
            raise ValueError("STRATOPT_TLS_CLIENT_ROLES_FILE needs STRATOPT_TLS_CLIENT_CA_FILE (mTLS)")
        tokens = None
        if self.jwt_public_keys_file is not None:
            tokens = TokenVerifier(
                load_verification_keys(self.jwt_public_keys_file),
                issuer=self.jwt_issuer or None,
                audience=self.jwt_audience or None,
                roles_claim=self.jwt_roles_claim,
            )
        client_roles = None
        if tokens is None and self.client_roles_file is not None:
            client_roles = _read_roles_file(self.client_roles_file)
        object.__setattr__(self, "_authenticator", Authenticator(tokens, client_roles))

    @property
    def authenticator(self) -> Authenticator:
        """The configured authenticator."""
        assert self._authenticator is not None
        return self._authenticator

    @property
    def tls(self) -> bool:
        """Whether the port speaks TLS."""
        return self.tls_cert_file is not None

    @property
    def self_approval_allowed(self) -> bool:
        """Whether a recommendation's creator may decide it (see ``allow_self_approval``)."""
        if self.allow_self_approval is None:
            return not self.authenticator.enabled
        return self.allow_self_approval

    def check_address(self, address: str) -> None:
        """Refuse a non-loopback ``address`` without TLS and authentication, unless ``insecure``.

        Raises
        ------
        InsecureAddressError
            With the reason and the settings that fix it.
        """
        if is_loopback(address) or (self.tls and self.authenticator.enabled):
            return
        if self.insecure:
            log.warning("serving on %s without TLS and authentication (insecure mode)", address)
            return
        missing = " and ".join(
            what for what, ok in (("TLS", self.tls), ("authentication", self.authenticator.enabled)) if not ok
        )
        raise InsecureAddressError(
            f"refusing to serve on non-loopback address {address} without {missing}: set STRATOPT_TLS_CERT_FILE/"
            "STRATOPT_TLS_KEY_FILE and STRATOPT_JWT_PUBLIC_KEYS_FILE (see docs/security.md), or pass --insecure"
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """``grpc.ssl_server_credentials`` for the port, or None without TLS."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        root = None if self.tls_client_ca_file is None else self.tls_client_ca_file.read_bytes()
        return grpc.ssl_server_credentials(
            [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())],
            root_certificates=root,
            require_client_auth=root is not None,
        )

    def interceptor(self) -> AuthInterceptor:
        """The authentication interceptor to install first on the server."""
        return AuthInterceptor(self.authenticator)
