"""JAX's persistent compilation cache: the settings reach a child process, which writes its executables there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stratopt_cli.jax_cache import configure_jax_cache, default_jax_cache_dir

_CHILD = """
import time
import jax
import numpy as np
from services.optimization import BatchKind, solve_batch

print(jax.config.jax_compilation_cache_dir)
started = time.perf_counter()
solution = solve_batch([np.diag([0.04, 0.09, 0.16])], [np.array([0.1, 0.2, 0.3])], [np.zeros(3)], [np.ones(3)],
                       kind=BatchKind.TANGENCY)
assert solution.certified.all()
print(time.perf_counter() - started)
"""


@pytest.fixture
def restore_environment():
    """The environment and, where this process has imported JAX, its cache settings as they were."""
    saved = dict(os.environ)
    jax = sys.modules.get("jax")
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    settings = {name: getattr(jax.config, name) for name in names} if jax is not None else {}
    yield
    os.environ.clear()
    os.environ.update(saved)
    for name, value in settings.items():
        jax.config.update(name, value)


def _child() -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=300)
    directory, seconds = out.stdout.split()
    return directory, float(seconds)


def test_children_write_and_reuse_the_cache(tmp_path: Path, restore_environment: None) -> None:
    """A child started after configure_jax_cache compiles into the directory; the next child loads from it."""
    cache = tmp_path / "jax"
    assert configure_jax_cache(cache) == cache and cache.is_dir()
    directory, first = _child()
    assert directory == str(cache)
    written = sorted(p.name for p in cache.iterdir())
    assert written  # the executables of the first child
    _, second = _child()
    assert sorted(p.name for p in cache.iterdir()) == written  # loaded, nothing compiled again
    assert second < first


def test_no_directory_changes_nothing(tmp_path: Path, restore_environment: None) -> None:
    before = dict(os.environ)
    assert configure_jax_cache(None) is None
    assert dict(os.environ) == before
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert configure_jax_cache(blocked / "jax") is None  # cannot be created: the cache stays off
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ or os.environ["JAX_COMPILATION_CACHE_DIR"] != str(
        blocked / "jax"
    )


def test_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_jax_cache_dir() == tmp_path / "stratopt" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_jax_cache_dir() == Path.home() / ".cache" / "stratopt" / "jax"


def test_serve_sets_up_the_cache_before_anything_else(tmp_path: Path) -> None:
    """``stratopt serve`` creates the default directory (XDG), a given one, and none with ``off``."""
    repo = Path(__file__).resolve().parents[2]
    environment = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "STRATOPT_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "STRATOPT_DB_WAIT_LIMIT_S": "0.5",
    }
    environment.pop("STRATOPT_JAX_CACHE_DIR", None)

    def serve(*extra: str) -> None:
        command = [sys.executable, "-m", "stratopt_cli.main", "serve", "--address", "127.0.0.1:0", *extra]
        done = subprocess.run(command, cwd=repo, env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1  # no database: gives up after the wait limit

    serve("--jax-cache-dir", "off")
    assert not (tmp_path / "xdg").exists()
    serve()
    assert (tmp_path / "xdg" / "stratopt" / "jax").is_dir()
    serve("--jax-cache-dir", str(tmp_path / "given"))
    assert (tmp_path / "given").is_dir()
