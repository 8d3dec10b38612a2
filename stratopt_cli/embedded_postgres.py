"""A PostgreSQL + TimescaleDB cluster owned by this process (the embedded default).

With no database URL configured, ``stratopt`` creates a cluster in a data directory (``initdb``), starts it
with ``shared_preload_libraries = 'timescaledb'`` listening on a Unix socket only (no TCP port to collide
with), and stops it on exit. PostgreSQL refuses to run as root, so when this process is root the cluster is
created and run as the unprivileged ``postgres`` user through ``runuser``, in a data directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PG_MAJOR = "15"
_SERVICE_USER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be created, started or stopped."""


def _pg_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (``initdb``, ``pg_ctl``)."""
    configured = os.environ.get("STRATOPT_PG_BINDIR")
    if configured:
        return Path(configured)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for major in (DEFAULT_PG_MAJOR, "16", "17"):
        candidate = Path(f"/usr/lib/postgresql/{major}/bin")
        if (candidate / "initdb").exists():
            return candidate
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries not found: install postgresql-15 (scripts/setup.sh does) or set STRATOPT_PG_BINDIR"
    )


def default_data_dir() -> Path:
    """Data directory of the embedded cluster: ``$STRATOPT_DATA_DIR``, else a per-user default.

    Root's home is not traversable by the ``postgres`` user, so as root the default is
    ``/var/lib/stratopt/pgdata``; otherwise ``$XDG_DATA_HOME/stratopt/pgdata``.
    """
    configured = os.environ.get("STRATOPT_DATA_DIR")
    if configured:
        return Path(configured) / "pgdata"
    if os.geteuid() == 0:
        return Path("/var/lib/stratopt/pgdata")
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "stratopt" / "pgdata"


@dataclass
class EmbeddedPostgres:
    """A local cluster in ``data_dir``, reachable over a Unix socket in ``data_dir``.

    Parameters
    ----------
    data_dir : Path
        Cluster directory; created with ``initdb`` when it holds no cluster yet.
    database : str
        Database created for stratopt inside the cluster.
    """

    data_dir: Path
    database: str = "stratopt"
    _run_as: str | None = field(default=None, init=False, repr=False)
    _started_here: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(_SERVICE_USER)
            except KeyError as exc:
                raise EmbeddedPostgresError(
                    f"running as root needs the unprivileged '{_SERVICE_USER}' user (apt-get install postgresql)"
                ) from exc
            self._run_as = _SERVICE_USER

    @property
    def socket_dir(self) -> Path:
        """Directory holding the cluster's Unix socket."""
        return self.data_dir

    @property
    def dsn(self) -> str:
        """Libpq connection URL of the stratopt database (Unix socket, trust authentication)."""
        return f"postgresql://{_SERVICE_USER}@/{self.database}?host={self.socket_dir}&port=5432"

    def _run(self, args: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", self._run_as, "--", *args] if self._run_as else args
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise EmbeddedPostgresError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def _prepare_directory(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            # The service user must reach the directory: every ancestor needs the search bit for others.
            for parent in reversed(self.data_dir.parents):
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise EmbeddedPostgresError(
                        f"{parent} is not searchable by the '{self._run_as}' user; "
                        "set STRATOPT_DATA_DIR to a directory it can reach (e.g. under /var/lib or /tmp)"
                    )
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.data_dir, 0o700)

    def _initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        """Whether the cluster's postmaster answers ``pg_ctl status``."""
        if not self._initialised():
            return False
        return (
            self._run([str(_pg_bindir() / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False).returncode == 0
        )

    def start(self) -> str:
        """Create the cluster if needed, start it if stopped, create the database; return its DSN.

        Raises
        ------
        EmbeddedPostgresError
            When ``initdb`` or ``pg_ctl start`` fails (missing binaries, missing TimescaleDB, permissions).
        """
        bindir = _pg_bindir()
        if not self._initialised():
            self._prepare_directory()
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    _SERVICE_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# stratopt embedded cluster\n"
                    "shared_preload_libraries = 'timescaledb'\n"
                    "listen_addresses = ''\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "timescaledb.telemetry_level = off\n"
                    "max_connections = 100\n"
                    "fsync = on\n"
                )
        if not self.running():
            log = self.data_dir / "server.log"
            proc = self._run(
                [str(bindir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60"],
                check=False,
            )
            if proc.returncode != 0:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise EmbeddedPostgresError(f"PostgreSQL did not start: {proc.stderr.strip()}\n{tail}")
            self._started_here = True
        self._ensure_database(bindir)
        return self.dsn

    def _ensure_database(self, bindir: Path) -> None:
        psql = [
            str(bindir / "psql"),
            "-h",
            str(self.socket_dir),
            "-U",
            _SERVICE_USER,
            "-d",
            "postgres",
            "-tAc",
        ]
        deadline = time.monotonic() + 30
        while True:
            found = self._run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"], check=False)
            if found.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"cannot connect to the embedded cluster: {found.stderr.strip()}")
            time.sleep(0.2)
        if found.stdout.strip() != "1":
            self._run([*psql, f'CREATE DATABASE "{self.database}"'])

    def stop(self, *, only_if_started_here: bool = True) -> None:
        """Stop the cluster (fast shutdown: open sessions are rolled back).

        Parameters
        ----------
        only_if_started_here : bool
            When true (the default), a cluster that was already running before ``start`` is left running.
        """
        if only_if_started_here and not self._started_here:
            return
        if self.running():
            self._run(
                [
                    str(_pg_bindir() / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                ]
            )
        self._started_here = False
