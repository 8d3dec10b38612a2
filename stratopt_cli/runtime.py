"""Where the database comes from: a configured URL, or the embedded cluster this process owns."""

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

log = logging.getLogger(__name__)


@contextmanager
def database(url: str | None = None, *, data_dir: Path | None = None, run_migrations: bool = True) -> Iterator[str]:
    """Yield a migrated database URL; start (and afterwards stop) the embedded cluster when none is given.

    Parameters
    ----------
    url : str, optional
        Database URL; default ``$STRATOPT_DATABASE_URL``. When neither is set, the embedded cluster in
        ``data_dir`` (default ``$STRATOPT_DATA_DIR``/pgdata, or a per-user directory) is used. A configured
        server's settings are never changed; only the migrations are applied to it.
    data_dir : Path, optional
        Data directory of the embedded cluster.
    run_migrations : bool
        Apply pending migrations before yielding.
    """
    url = url or os.environ.get(DATABASE_URL_ENV)
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
