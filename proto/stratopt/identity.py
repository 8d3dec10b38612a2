"""Who is calling: the authenticated principal of the current call, shared by both sides.

The server's authentication interceptor (``stratopt_cli.security``) verifies the caller (a JWT bearer token, or
a client certificate) and runs the method's handler with :data:`CURRENT_PRINCIPAL` set to a :class:`Principal`;
servicers read it with :func:`current_principal` and pass its ``name`` into their commands (the approver of a
rebalance, the creator of a recommendation). Identity never comes from a request field.

Without authentication configured (the loopback development mode) every call runs as :data:`LOCAL_PRINCIPAL`.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final

from services.errors import PermissionDeniedError

ROLES: Final = ("read", "optimize", "trade", "approve", "admin")
"""The roles a principal may hold; ``admin`` implies every other role."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Parameters
    ----------
    name : str
        Stable identity: the token's ``sub`` claim, the client certificate's subject common name, or ``local``.
    roles : frozenset of str
        Roles granted (subset of :data:`ROLES`).
    authenticated : bool
        False only for :data:`LOCAL_PRINCIPAL` (no authentication configured).
    """

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    authenticated: bool = True

    def has_role(self, role: str) -> bool:
        """Whether the principal holds ``role`` (``admin`` holds every role)."""
        return role in self.roles or "admin" in self.roles


LOCAL_PRINCIPAL: Final = Principal("local", frozenset(ROLES), authenticated=False)
"""The caller of every call when the server runs without authentication (loopback development mode)."""

CURRENT_PRINCIPAL: ContextVar[Principal | None] = ContextVar("stratopt_principal", default=None)
"""The principal of the call being handled; set by the server's authentication interceptor."""


def current_principal() -> Principal:
    """The principal of the current call.

    Returns
    -------
    Principal
        As set by the authentication interceptor.

    Raises
    ------
    PermissionDeniedError
        When no principal is set (a handler reached without the interceptor): fail closed.
    """
    principal = CURRENT_PRINCIPAL.get()
    if principal is None:
        raise PermissionDeniedError("no authenticated caller")
    return principal
