"""Where the database comes from: a configured URL, or the embedded cluster this process owns.

The URL holds a password, so it comes from the environment (``STRATOPT_DATABASE_URL``) or a file
(``STRATOPT_DATABASE_URL_FILE``, e.g. a mounted Kubernetes Secret), never from the command line, where every
user of the machine could read it in ``/proc/PID/cmdline``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stratopt_cli.embedded_postgres import EmbeddedPostgres, default_data_dir
from stratopt_cli.migrate import migrate

DATABASE_URL_ENV = "STRATOPT_DATABASE_URL"
"""Environment variable naming the PostgreSQL + TimescaleDB server to use (libpq URL)."""
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


@contextmanager
def database(url: str | None = None, *, data_dir: Path | None = None, run_migrations: bool = True) -> Iterator[str]:
    """Yield a migrated database URL; start (and afterwards stop) the embedded cluster when none is given.

    Parameters
    ----------
    url : str, optional
        Database URL; default :func:`configured_database_url`. When neither is set, the embedded cluster in
        ``data_dir`` (default ``$STRATOPT_DATA_DIR``/pgdata, or a per-user directory) is used. A configured
        server's settings are never changed; only the migrations are applied to it.
    data_dir : Path, optional
        Data directory of the embedded cluster.
    run_migrations : bool
        Apply pending migrations before yielding.
    """
    url = url or configured_database_url()
    cluster: EmbeddedPostgres | None = None
    if not url:
        cluster = EmbeddedPostgres(data_dir or default_data_dir())
        log.info("starting the embedded PostgreSQL cluster in %s", cluster.data_dir)
        url = cluster.start()
    try:
        if run_migrations:
            applied = migrate(url)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        yield url
    finally:
        if cluster is not None:
            log.info("stopping the embedded PostgreSQL cluster")
            cluster.stop()
