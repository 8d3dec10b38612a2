"""Session fixtures: a throwaway PostgreSQL + TimescaleDB cluster and the stratopt gRPC server on it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratopt_cli.embedded_postgres import EmbeddedPostgres
from stratopt_cli.migrate import migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a migrated database in a cluster created for this test session and removed after it."""
    base = Path(tempfile.mkdtemp(prefix="stratopt-test-"))
    os.chmod(base, 0o755)  # the postgres user must traverse it when the tests run as root
    cluster = EmbeddedPostgres(base / "pgdata", database="stratopt_test")
    dsn = cluster.start()
    try:
        migrate(dsn)
        yield dsn
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
