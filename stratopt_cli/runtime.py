"""Where the database comes from, how long to wait for it, and how long any one database call may take.

The database is a configured URL, or the embedded cluster this process owns. A configured server may be
down when stratopt starts (a pod scheduled before PostgreSQL is ready): :func:`retry` waits for it with
exponential back-off and jitter, logging each attempt by the kind of failure only (never the URL, host or
password). :class:`DatabaseTimeouts` bounds every call on a slow or frozen database, so a client sees
UNAVAILABLE after a known time instead of waiting for its own deadline.

The URL holds a password, so it comes from the environment (``STRATOPT_DATABASE_URL``) or a file
(``STRATOPT_DATABASE_URL_FILE``, e.g. a mounted Kubernetes Secret), never from the command line, where every
user of the machine could read it in ``/proc/PID/cmdline``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg

from stratopt_cli.embedded_postgres import EmbeddedPostgres, default_data_dir
from stratopt_cli.migrate import migrate

DATABASE_URL_ENV = "STRATOPT_DATABASE_URL"
"""Environment variable naming the PostgreSQL + TimescaleDB server to use (libpq URL)."""
STATEMENT_TIMEOUT_ENV = "STRATOPT_DB_STATEMENT_TIMEOUT_S"
CONNECT_TIMEOUT_ENV = "STRATOPT_DB_CONNECT_TIMEOUT_S"
STARTUP_LIMIT_ENV = "STRATOPT_DB_WAIT_LIMIT_S"
DATABASE_URL_FILE_ENV = "STRATOPT_DATABASE_URL_FILE"
"""Environment variable naming a file that holds the database URL (surrounding whitespace is stripped)."""


def configured_database_url() -> str | None:
    """The database URL from ``STRATOPT_DATABASE_URL`` or the file ``STRATOPT_DATABASE_URL_FILE`` names.

    Returns
    -------
    str or None
        None when neither is set (the embedded cluster is used).

    Raises
    ------
    ValueError
        When both are set, or the file is empty.
    OSError
        When the file cannot be read.
    """
    url = os.environ.get(DATABASE_URL_ENV) or None
    path = os.environ.get(DATABASE_URL_FILE_ENV) or None
    if url and path:
        raise ValueError(f"set {DATABASE_URL_ENV} or {DATABASE_URL_FILE_ENV}, not both")
    if path:
        url = Path(path).read_text().strip()
        if not url:
            raise ValueError(f"{DATABASE_URL_FILE_ENV} names an empty file")
    return url


log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError is an OSError too
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up, shutting down, in recovery
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    psycopg.OperationalError,  # the migration's driver: refused, unreachable, starting up
)
"""Errors that mean "the database is not reachable yet": waited out at start-up."""


@dataclass(frozen=True)
class DatabaseTimeouts:
    """Bounds on one database call, sent to the server and enforced by the client.

    Parameters
    ----------
    statement_s : float
        Longest statement, in seconds: PostgreSQL's ``statement_timeout`` and ``lock_timeout``. The client gives
        up one second later (asyncpg's ``command_timeout``), which covers a frozen server that never answers.
    connect_s : float
        Longest connection attempt, in seconds (also the health probe's timeout).
    """

    statement_s: float = 10.0
    connect_s: float = 5.0

    @classmethod
    def from_env(cls) -> DatabaseTimeouts:
        """Read ``STRATOPT_DB_STATEMENT_TIMEOUT_S`` and ``STRATOPT_DB_CONNECT_TIMEOUT_S`` (defaults 10 and 5 s).

        Raises
        ------
        ValueError
            When a value is not a positive number.
        """
        return cls(
            statement_s=positive_seconds(STATEMENT_TIMEOUT_ENV, cls.statement_s),
            connect_s=positive_seconds(CONNECT_TIMEOUT_ENV, cls.connect_s),
        )

    @property
    def command_s(self) -> float:
        """Client-side limit of one query in seconds: the server's limit plus one second for its answer."""
        return self.statement_s + 1.0

    @property
    def idle_in_transaction_s(self) -> float:
        """Seconds a session may sit idle inside a transaction before PostgreSQL ends it (a vanished client)."""
        return max(60.0, 3 * self.statement_s)

    def server_settings(self) -> dict[str, str]:
        """PostgreSQL session settings (milliseconds) for every connection of the pool."""
        ms = str(round(self.statement_s * 1000))
        return {
            "statement_timeout": ms,
            "lock_timeout": ms,
            "idle_in_transaction_session_timeout": str(round(self.idle_in_transaction_s * 1000)),
        }

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` and ``asyncpg.create_pool``."""
        return {"timeout": self.connect_s, "command_timeout": self.command_s, "server_settings": self.server_settings()}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own (roll back an open transaction, drop listeners).

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release, one more round trip per call. stratopt leaves no session state on pooled connections: advisory locks
    are transaction-scoped (``pg_advisory_xact_lock``), settings are the pool's ``server_settings``, there are no
    cursors outside transactions and no LISTEN on pooled connections.
    """


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose ``acquire`` waits at most ``acquire_timeout_s`` unless told otherwise.

    The repositories call ``pool.acquire()`` without a timeout; on a frozen database every connection can be
    busy timing out, and a call queued behind them would wait for each in turn.
    """

    def __init__(self, dsn: str, *, acquire_timeout_s: float, min_size: int, max_size: int, **kwargs: Any) -> None:
        super().__init__(
            dsn,
            min_size=min_size,
            max_size=max_size,
            max_queries=50000,
            max_inactive_connection_lifetime=300.0,
            loop=None,
            connection_class=asyncpg.Connection,
            record_class=asyncpg.Record,
            reset=_keep_session,
            **kwargs,
        )
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> Any:
        """Acquire a connection, waiting at most ``timeout`` (default ``acquire_timeout_s``) seconds.

        Raises
        ------
        TimeoutError
            When no connection became free in time (the stores answer UNAVAILABLE).
        """
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


def create_pool(url: str, timeouts: DatabaseTimeouts, *, min_size: int = 1, max_size: int = 10) -> BoundedPool:
    """A not yet connected pool with the statement, lock, connect and acquire timeouts (``await`` it to connect).

    The acquire timeout is the client-side statement limit (``timeouts.command_s``).
    """
    return BoundedPool(
        url, acquire_timeout_s=timeouts.command_s, min_size=min_size, max_size=max_size, **timeouts.connect_kwargs()
    )


def positive_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name``, else ``default``.

    Raises
    ------
    ValueError
        When the variable is set to something that is not a positive number.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def startup_limit_from_env(default: float | None = 600.0) -> float | None:
    """``STRATOPT_DB_WAIT_LIMIT_S``: how long start-up waits for the database (``0`` waits without limit).

    Raises
    ------
    ValueError
        When the value is not a number or is negative.
    """
    raw = os.environ.get(STARTUP_LIMIT_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{STARTUP_LIMIT_ENV} must be a number of seconds, got {raw!r}") from None
    if value < 0 or value != value:
        raise ValueError(f"{STARTUP_LIMIT_ENV} must be 0 (no limit) or a positive number of seconds, got {raw!r}")
    return None if value == 0 else value


def backoff_delays(initial_s: float = 0.5, cap_s: float = 10.0, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential back-off with jitter: attempt n waits between half and all of ``min(cap_s, initial_s * 2**n)``.

    The jitter keeps replicas restarted together from reconnecting in lock-step.
    """
    draw = rng or random.Random()
    attempt = 0
    while True:
        ceiling = min(cap_s, initial_s * 2**attempt)
        yield ceiling / 2 + draw.uniform(0, ceiling / 2)
        attempt = min(attempt + 1, 32)


class DatabaseWaitTimeoutError(TimeoutError):
    """The database did not become reachable within the start-up limit."""


def _describe(exc: BaseException) -> str:
    """The kind of a failure, without its message (which may name the host, port or socket path)."""
    return type(exc).__name__


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    limit_s: float | None,
    delays: Iterator[float] | None = None,
) -> T:
    """Call ``attempt`` until it does not raise a transient error, waiting with back-off between tries.

    Parameters
    ----------
    attempt : callable
        Coroutine function doing one try (connect, migrate in a thread...).
    what : str
        Short description for the log, e.g. ``"connect to the database"``.
    limit_s : float or None
        Give up after this many seconds (None: never).
    delays : iterator of float, optional
        Waits between tries in seconds; default :func:`backoff_delays`.

    Returns
    -------
    object
        What the first successful try returned.

    Raises
    ------
    DatabaseWaitTimeoutError
        When ``limit_s`` passed without a successful try.
    Exception
        A non-transient error of a try, at once.
    """
    waits = delays or backoff_delays()
    deadline = None if limit_s is None else time.monotonic() + limit_s
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except TRANSIENT_ERRORS as exc:
            delay = next(waits)
            if deadline is not None and time.monotonic() + delay > deadline:
                log.error("could not %s after %d attempts (%s); giving up", what, tries, _describe(exc))
                raise DatabaseWaitTimeoutError(f"could not {what} within {limit_s:g} s") from None
            log.warning("could not %s (attempt %d: %s); retrying in %.1f s", what, tries, _describe(exc), delay)
            await asyncio.sleep(delay)


async def probe_database(url: str, timeouts: DatabaseTimeouts) -> None:
    """Open one connection, run ``SELECT 1`` and close it, within the connect timeout (raises what asyncpg raises)."""
    connection = await asyncpg.connect(url, **timeouts.connect_kwargs())
    try:
        await connection.fetchval("SELECT 1", timeout=timeouts.connect_s)
    finally:
        connection.terminate()


def migrate_when_reachable(url: str, *, limit_s: float | None, timeouts: DatabaseTimeouts | None = None) -> list[str]:
    """Wait for the database with back-off, then apply pending migrations (retried while it is unreachable).

    Parameters
    ----------
    url : str
        libpq URL of the database.
    limit_s : float or None
        Seconds to keep trying (None: no limit).
    timeouts : DatabaseTimeouts, optional
        Connect timeout of each try.

    Returns
    -------
    list of str
        Identifiers of the migrations applied.

    Raises
    ------
    DatabaseWaitTimeoutError
        When the database stayed unreachable for ``limit_s``.
    """
    bounds = timeouts or DatabaseTimeouts()

    async def once() -> list[str]:
        await probe_database(url, bounds)
        return await asyncio.to_thread(migrate, url)

    return asyncio.run(retry(once, what="migrate the database", limit_s=limit_s))


@contextmanager
def database(url: str | None = None, *, data_dir: Path | None = None, run_migrations: bool = True) -> Iterator[str]:
    """Yield a migrated database URL; start (and afterwards stop) the embedded cluster when none is given.

    Parameters
    ----------
    url : str, optional
        Database URL; default :func:`configured_database_url`. When neither is set, the embedded cluster in
        ``data_dir`` (default ``$STRATOPT_DATA_DIR``/pgdata, or a per-user directory) is used. A configured
        server's settings are never changed; only the migrations are applied to it, after waiting for it
        (``STRATOPT_DB_WAIT_LIMIT_S``, default 600 s) with back-off.
    data_dir : Path, optional
        Data directory of the embedded cluster.
    run_migrations : bool
        Apply pending migrations before yielding.

    Raises
    ------
    DatabaseWaitTimeoutError
        When the configured database stayed unreachable for the start-up limit.
    """
    url = url or configured_database_url()
    cluster: EmbeddedPostgres | None = None
    if not url:
        cluster = EmbeddedPostgres(data_dir or default_data_dir())
        log.info("starting the embedded PostgreSQL cluster in %s", cluster.data_dir)
        url = cluster.start()
    try:
        if run_migrations:
            applied = migrate_when_reachable(
                url, limit_s=startup_limit_from_env(), timeouts=DatabaseTimeouts.from_env()
            )
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        yield url
    finally:
        if cluster is not None:
            log.info("stopping the embedded PostgreSQL cluster")
            cluster.stop()
