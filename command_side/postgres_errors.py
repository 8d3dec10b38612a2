"""asyncpg's errors as the domain's persistence errors: the command side's one translation.

Every PostgreSQL store of the command side runs its database work inside :func:`postgres_errors`, so callers
only ever see ``services.errors``:

* a unique-key violation (a ``request_id`` already used) becomes :class:`~services.errors.IntegrityError`;
* a refused, lost or closed connection, a server shutting down or out of connection slots, the driver's
  ``InternalClientError`` after a crash, or a timed-out connect, acquire, statement or lock wait becomes
  :class:`~services.errors.OperationalError` (an ``UnavailableError``: retry the call);
* any other database error (a bug or a schema mismatch) is logged with its detail and becomes
  :class:`~services.errors.PersistenceError` (INTERNAL).

Messages name the kind of failure only: no host, port, user, SQL or row values reach a caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg

from services.errors import IntegrityError, OperationalError, PersistenceError

if TYPE_CHECKING:  # asyncpg's classes are generic only in its stubs
    Connection = asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

log = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused or reset sockets; TimeoutError (pool acquire, connect, command_timeout) is an OSError too
    asyncpg.exceptions.PostgresConnectionError,  # class 08: connection does not exist, failure, ...
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    asyncpg.exceptions.InterfaceError,  # pool closed, closing or not yet connected, connection closed
    asyncpg.exceptions.InternalClientError,  # the driver's state broken by a connection lost mid-protocol
    asyncpg.exceptions.QueryCanceledError,  # 57014: statement_timeout (or an operator's cancel)
    asyncpg.exceptions.LockNotAvailableError,  # 55P03: lock_timeout
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,  # 25P03: the server ended a stalled transaction
    asyncpg.exceptions.DeadlockDetectedError,  # 40P01: two transactions waited on each other; one was rolled back
    asyncpg.exceptions.SerializationError,  # 40001: a serializable transaction lost a conflict; rolled back
)
"""Errors that mean the database cannot be reached or did not answer in time (retry the call).

asyncpg's client-side ``DataError`` (an ``InterfaceError`` and a ``ValueError``) is excluded: a bad argument.
A connection lost during ``COMMIT`` leaves the outcome unknown (the transaction may have committed): the call is
answered UNAVAILABLE all the same, and a retry with the same ``request_id`` returns the stored result.
"""
_DATABASE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.exceptions.PostgresError)


def _is_connection_error(exc: BaseException) -> bool:
    # asyncpg's client-side DataError (an InterfaceError and a ValueError) is a bad argument: a bug.
    return isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, ValueError)


def unavailable(exc: BaseException) -> OperationalError:
    """The ``OperationalError`` of a connection error, naming its kind but not the host or port."""
    return OperationalError(f"the database is unavailable ({type(exc).__name__}); retry the call")


@asynccontextmanager
async def postgres_errors() -> AsyncIterator[None]:
    """Translate asyncpg's errors raised inside the block into ``services.errors`` persistence errors.

    Raises
    ------
    IntegrityError
        For a unique-key violation.
    OperationalError
        When the database cannot be reached or dropped the connection.
    PersistenceError
        For any other database error (logged with its detail).
    """
    try:
        yield
    except asyncpg.exceptions.UniqueViolationError as exc:
        raise IntegrityError(f"a stored row already has this key ({exc.constraint_name or 'unique key'})") from exc
    except _DATABASE_ERRORS as exc:
        if _is_connection_error(exc):
            raise unavailable(exc) from exc
        log.error("database error: %s: %s", type(exc).__name__, exc)
        raise PersistenceError(f"the database rejected the operation ({type(exc).__name__})") from exc


@asynccontextmanager
async def operational_errors() -> AsyncIterator[None]:
    """Translate only lost or refused connections into ``OperationalError``; other errors pass through.

    For the stores that still let callers catch asyncpg's own errors (``rebalancing_repository``: its service
    catches ``asyncpg.UniqueViolationError``); new code uses :func:`postgres_errors`.
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        if not _is_connection_error(exc):
            raise
        raise unavailable(exc) from exc
