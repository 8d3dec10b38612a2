"""Apply the SQL migrations in ``migrations/`` with yoyo-migrations."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _yoyo_url(dsn: str) -> str:
    """Yoyo names the driver in the URL scheme; stratopt uses psycopg 3 for migrations."""
    parts = urlsplit(dsn)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


def migrate(dsn: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration, each in its own transaction, under yoyo's lock.

    Parameters
    ----------
    dsn : str
        libpq connection URL (``postgresql://...``).
    migrations_dir : Path
        Folder of ordered ``NNNN_name.sql`` files.

    Returns
    -------
    list of str
        Identifiers of the migrations applied by this call (empty when the schema was current).
    """
    backend = get_backend(_yoyo_url(dsn))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]
